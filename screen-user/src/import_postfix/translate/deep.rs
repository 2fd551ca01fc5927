//! postscreen's deep protocol tests after the greeting: pipelining, non-SMTP commands and
//! the forbidden command list, bare newlines; STARTTLS follows in [`super::tls`].

use super::{Kind, Section, Translation, names};
use crate::{
    import_postfix::{expand::Expansion, lines::split_words, render::toml_array, shorten},
    smtpd::ForbiddenCommand,
};

impl Translation {
    pub(super) fn deep_settings(&mut self) {
        for (parameter, key, default, kind) in [
            (
                "postscreen_pipelining_enable",
                "pipelining_enable",
                "no",
                Kind::YesNo,
            ),
            (
                "postscreen_pipelining_action",
                "pipelining_action",
                "enforce",
                Kind::Action,
            ),
            (
                "postscreen_pipelining_ttl",
                "pipelining_ttl",
                "30d",
                Kind::Time,
            ),
            (
                "postscreen_non_smtp_command_enable",
                "non_smtp_command_enable",
                "no",
                Kind::YesNo,
            ),
            (
                "postscreen_non_smtp_command_action",
                "non_smtp_command_action",
                "drop",
                Kind::Action,
            ),
            (
                "postscreen_non_smtp_command_ttl",
                "non_smtp_command_ttl",
                "30d",
                Kind::Time,
            ),
        ] {
            self.plain(Section::Deep, names(parameter, default), key, kind);
        }
        self.forbidden_commands();
        for (parameter, key, default, kind) in [
            (
                "postscreen_bare_newline_enable",
                "bare_newline_enable",
                "no",
                Kind::YesNo,
            ),
            (
                "postscreen_bare_newline_action",
                "bare_newline_action",
                "ignore",
                Kind::Action,
            ),
            (
                "postscreen_bare_newline_ttl",
                "bare_newline_ttl",
                "30d",
                Kind::Time,
            ),
        ] {
            self.plain(Section::Deep, names(parameter, default), key, kind);
        }
        self.starttls();
    }

    fn forbidden_commands(&mut self) {
        let value = self.effective(&names(
            "postscreen_forbidden_commands",
            "$smtpd_forbidden_commands",
        ));
        let Some(expanded) = self.expand(&value, Expansion::default()) else {
            return;
        };
        if !expanded.from_input {
            return;
        }
        let mut kept = Vec::new();
        for entry in split_words(&expanded.text, true) {
            if kept.len() == crate::smtpd::MAX_FORBIDDEN_COMMANDS {
                self.skip(
                    value.parameter,
                    format!("{}: {}", value.parameter, shorten(entry)),
                    format!(
                        "smtp-screen takes at most {} entries",
                        crate::smtpd::MAX_FORBIDDEN_COMMANDS
                    ),
                );
                continue;
            }
            match ForbiddenCommand::parse(entry) {
                Ok(_) => kept.push(entry.to_string()),
                Err(err) => self.skip(
                    value.parameter,
                    format!("{}: {}", value.parameter, shorten(entry)),
                    err.to_string(),
                ),
            }
        }
        self.set(
            Section::Deep,
            "forbidden_commands",
            toml_array(kept),
            vec![value.described(&expanded.text)],
        );
    }
}
