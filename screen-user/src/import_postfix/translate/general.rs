//! Postfix's general settings that postscreen uses: `myhostname`, `smtpd_banner`,
//! `mynetworks`, `soft_bounce`, `line_length_limit`, and the HELO and VRFY settings of
//! postscreen's dummy engine.

use super::{Effective, Kind, Section, Translation, parameter_for};
use crate::{
    config::Config,
    import_postfix::{expand::Expansion, render::toml_string, shorten},
};

impl Translation {
    pub(super) fn main_settings(&mut self) {
        if let Some(raw) = self.context_postconf.get("myhostname").map(str::to_string) {
            let value = Effective {
                parameter: "myhostname",
                raw,
                explicit: true,
            };
            if let Some(expanded) = self.expand(&value, Expansion::default()) {
                let host = expanded.text.trim();
                if host.is_empty() {
                    self.skip(
                        "myhostname",
                        value.subject(),
                        "an empty host name; smtp-screen takes the system's, as Postfix does",
                    );
                } else {
                    self.set(
                        Section::Main,
                        "myhostname",
                        toml_string(host),
                        vec![value.origin()],
                    );
                }
            }
        }
        // smtp-screen's default names no program; Postfix's names Postfix, and smtpd says the
        // same after the hand-off, so the banner is always written and the two greetings agree.
        let value = self.effective(parameter_for("smtpd_banner"));
        let keep = [("myhostname", "$myhostname")];
        if let Some(expanded) = self.expand(
            &value,
            Expansion {
                keep: &keep,
                ..Expansion::default()
            },
        ) {
            self.set(
                Section::Main,
                "smtpd_banner",
                toml_string(&expanded.text),
                vec![value.described(&expanded.text)],
            );
        }
        self.mynetworks();
        for (key, kind) in [
            ("soft_bounce", Kind::YesNo),
            ("line_length_limit", Kind::Count(512)),
            ("helo_required", Kind::YesNo),
            ("disable_vrfy_command", Kind::YesNo),
        ] {
            self.plain(Section::Main, key, kind);
        }
    }

    fn mynetworks(&mut self) {
        let Some(raw) = self.context_postconf.get("mynetworks").map(str::to_string) else {
            let style = self
                .context_postconf
                .get("mynetworks_style")
                .unwrap_or("host")
                .trim()
                .to_string();
            self.caveat(
                "mynetworks",
                format!("mynetworks_style = {}", shorten(&style)),
                format!(
                    "mynetworks is not set, so Postfix derives it from the server's own \
                     addresses (mynetworks_style); smtp-screen's default is {}: write mynetworks \
                     out if permit_mynetworks must match more",
                    Config::default().mynetworks
                ),
            );
            return;
        };
        let value = Effective {
            parameter: "mynetworks",
            raw,
            explicit: true,
        };
        if let Some(list) = self.address_list(&value) {
            self.set(
                Section::Main,
                "mynetworks",
                toml_string(&list),
                vec![value.origin()],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        config::Config,
        import_postfix::fixtures::{caveat, import_text, skipped},
    };

    #[test]
    fn expands_banners_with_the_inputs_values() {
        let (import, c) = import_text(
            "myhostname = mx.example.test\n\
             mail_name = ExampleMTA\n\
             smtpd_banner = $myhostname ESMTP $mail_name ($mail_version)\n\
             mail_version = 3.7.11\n\
             postscreen_greet_banner = $smtpd_banner\n",
        );
        assert_eq!(c.smtpd_banner, "$myhostname ESMTP ExampleMTA (3.7.11)");
        assert_eq!(
            c.smtpd_banner(),
            "mx.example.test ESMTP ExampleMTA (3.7.11)"
        );
        assert_eq!(c.greet_banner, "$smtpd_banner");
        assert_eq!(
            c.greet_banner(),
            "mx.example.test ESMTP ExampleMTA (3.7.11)"
        );
        assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
        // Without myhostname, smtp-screen takes the host name as Postfix does.
        let (import, c) = import_text("smtpd_banner = $myhostname ready\n");
        assert_eq!(c.smtpd_banner, "$myhostname ready");
        assert!(!import.toml.contains("\nmyhostname ="));
        // A reference nobody can resolve costs that setting only.
        let (import, c) = import_text("smtpd_banner = $myhostname $undefined_thing\n");
        assert_eq!(c.smtpd_banner, Config::default().smtpd_banner);
        let found = skipped(&import, "smtpd_banner");
        assert!(found[0].reason.contains("$undefined_thing"), "{}", found[0]);
        // Empty greet banner: no pregreet test.
        let (import, c) = import_text("postscreen_greet_banner =\n");
        assert_eq!(c.greet_banner, "");
        assert!(import.toml.contains("# Empty: no pregreet test."));
    }

    #[test]
    fn helo_and_vrfy_settings_reach_the_engine() {
        // smtpd's settings reach postscreen through its defaults.
        let (import, config) = import_text(
            "smtpd_helo_required = yes\ndisable_vrfy_command = yes\n\
             smtpd_expansion_filter = abc\ndata_directory = /srv/postfix\n",
        );
        assert!(config.helo_required);
        assert!(config.disable_vrfy_command);
        assert_eq!(skipped(&import, "postscreen_expansion_filter").len(), 1);
        assert!(skipped(&import, "postscreen_cache_map").is_empty());
        assert!(skipped(&import, "postscreen_helo_required").is_empty());
        let (import, config) = import_text(
            "postscreen_helo_required = no\ndisable_vrfy_command = no\n\
             postscreen_command_filter =\n",
        );
        assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
        assert!(!config.helo_required);
        assert!(!config.disable_vrfy_command);
    }

    #[test]
    fn mynetworks_style_caveat() {
        let (import, _) = import_text("");
        assert!(
            caveat(&import, "mynetworks")[0]
                .reason
                .contains("127.0.0.0/8")
        );
        let (import, _) = import_text("mynetworks = 127.0.0.0/8\n");
        assert!(caveat(&import, "mynetworks").is_empty());
    }
}
