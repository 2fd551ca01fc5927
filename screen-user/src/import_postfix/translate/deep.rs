//! postscreen's deep protocol tests after the greeting: pipelining, non-SMTP commands and
//! the forbidden command list, bare newlines; STARTTLS follows in [`super::tls`].

use super::{Kind, Section, Translation, parameter_for};
use crate::{
    import_postfix::{expand::Expansion, lines::split_words, render::toml_array, shorten},
    smtpd::ForbiddenCommand,
};

impl Translation {
    pub(super) fn deep_settings(&mut self) {
        for (key, kind) in [
            ("pipelining_enable", Kind::YesNo),
            ("pipelining_action", Kind::Action),
            ("pipelining_ttl", Kind::Time),
            ("non_smtp_command_enable", Kind::YesNo),
            ("non_smtp_command_action", Kind::Action),
            ("non_smtp_command_ttl", Kind::Time),
        ] {
            self.plain(Section::Deep, key, kind);
        }
        self.forbidden_commands();
        for (key, kind) in [
            ("bare_newline_enable", Kind::YesNo),
            ("bare_newline_action", Kind::Action),
            ("bare_newline_ttl", Kind::Time),
        ] {
            self.plain(Section::Deep, key, kind);
        }
        self.starttls();
    }

    fn forbidden_commands(&mut self) {
        let value = self.effective(parameter_for("forbidden_commands"));
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
