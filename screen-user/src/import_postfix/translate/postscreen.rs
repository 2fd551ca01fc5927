//! postscreen's settings before and around the greeting: the permanent access list and its
//! action, the allowlist interfaces, the pregreet test, the cache times, the limits of the
//! dummy engine and of the queues, the upstream proxy and the reply footer.

use super::{Kind, Section, Translation, parameter_for, table_spec};
use crate::{
    access_list::TableFiles,
    cidr_table::CidrTable,
    import_postfix::{expand::Expansion, render::toml_string, shorten},
    smtpd::ReplyFooter,
};

impl Translation {
    pub(super) fn postscreen_settings(&mut self, files: &dyn TableFiles) {
        self.access_list(files);
        self.plain(Section::Postscreen, "denylist_action", Kind::Action);
        let names = parameter_for("allowlist_interfaces");
        let value = self.effective(names);
        if value.explicit
            && let Some(list) = self.address_list(&value)
        {
            let mut comments = vec![value.origin()];
            if value.parameter != names.name {
                comments.push(format!(
                    "({} is the name before Postfix 3.6 of {})",
                    value.parameter, names.name
                ));
            }
            self.set(
                Section::Postscreen,
                "allowlist_interfaces",
                toml_string(&list),
                comments,
            );
        }
        self.greet_banner();
        self.plain(Section::Postscreen, "greet_wait", Kind::StressTime);
        for (key, kind) in [
            ("greet_action", Kind::Action),
            ("greet_ttl", Kind::Time),
            ("cache_retention_time", Kind::Time),
            ("cache_cleanup_interval", Kind::Time),
            ("command_count_limit", Kind::Count(1)),
            ("command_time_limit", Kind::StressTime),
            ("client_connection_count_limit", Kind::Count(0)),
            ("pre_queue_limit", Kind::Count(10)),
            ("post_queue_limit", Kind::Count(5)),
        ] {
            self.plain(Section::Postscreen, key, kind);
        }
        self.upstream_proxy();
        self.plain(Section::Postscreen, "upstream_proxy_timeout", Kind::Time);
        self.reject_footer();
    }

    fn access_list(&mut self, files: &dyn TableFiles) {
        let value = self.effective(parameter_for("access_list"));
        if !value.explicit {
            return;
        }
        let Some(entries) = self.list_entries(&value) else {
            return;
        };
        let mut kept = Vec::new();
        let mut entries = entries.into_iter();
        while let Some(entry) = entries.next() {
            let lower = entry.to_ascii_lowercase();
            if ["permit_mynetworks", "permit", "reject", "dunno"].contains(&lower.as_str()) {
                kept.push(entry);
                continue;
            }
            let subject = format!("{}: {}", value.parameter, shorten(&entry));
            match table_spec(&entry) {
                Some(("cidr", path)) => {
                    if let Err(reason) = check_cidr(files, path) {
                        self.caveat(value.parameter, subject, reason);
                    }
                    kept.push(entry);
                }
                Some(("static", _)) => kept.push(entry),
                Some((kind, _)) => self.skip(
                    value.parameter,
                    subject,
                    format!(
                        "smtp-screen reads cidr: tables only; turn this {kind}: table into a \
                         cidr: table (an address becomes address/32 or address/128)"
                    ),
                ),
                None => {
                    // Postfix ignores the rest of the list after an unknown command
                    // (server_acl.c); smtp-screen would refuse it, so the list ends here.
                    let rest: Vec<String> = entries.by_ref().collect();
                    let mut reason = "not an access list command; Postfix ignores the rest of \
                                      the list from here, so the list ends before it"
                        .to_string();
                    if !rest.is_empty() {
                        reason.push_str(&format!(" (also left out: {})", shorten(&rest.join(" "))));
                    }
                    self.skip(value.parameter, subject, reason);
                }
            }
        }
        self.set(
            Section::Postscreen,
            "access_list",
            toml_string(&kept.join(", ")),
            vec![value.origin()],
        );
    }

    fn greet_banner(&mut self) {
        let value = self.effective(parameter_for("greet_banner"));
        if !value.explicit {
            return;
        }
        let keep = [
            ("myhostname", "$myhostname"),
            ("smtpd_banner", "$smtpd_banner"),
        ];
        let how = Expansion {
            keep: &keep,
            ..Expansion::default()
        };
        if let Some(expanded) = self.expand(&value, how) {
            let mut comments = vec![value.origin()];
            if expanded.text.is_empty() {
                comments.push("Empty: no pregreet test.".into());
            }
            self.set(
                Section::Postscreen,
                "greet_banner",
                toml_string(&expanded.text),
                comments,
            );
        }
    }

    fn upstream_proxy(&mut self) {
        let value = self.effective(parameter_for("upstream_proxy_protocol"));
        if !value.explicit {
            return;
        }
        let Some(expanded) = self.expand(&value, Expansion::default()) else {
            return;
        };
        match expanded.text.trim() {
            text @ ("" | "haproxy") => self.set(
                Section::Postscreen,
                "upstream_proxy_protocol",
                toml_string(text),
                vec![value.origin()],
            ),
            _ => self.skip(
                value.parameter,
                value.subject(),
                "only haproxy (or nothing) is supported, as in postscreen",
            ),
        }
    }

    fn reject_footer(&mut self) {
        let value = self.effective(parameter_for("reject_footer"));
        let server_name = if self.context_postconf.get("myhostname").is_some() {
            None
        } else {
            Some(("myhostname", "${server_name}"))
        };
        let mut keep = vec![
            ("client_address", "${client_address}"),
            ("client_port", "${client_port}"),
            ("server_name", "${server_name}"),
            ("localtime", "${localtime}"),
        ];
        keep.extend(server_name);
        let how = Expansion {
            keep: &keep,
            double_dollar: true,
            ..Expansion::default()
        };
        let Some(expanded) = self.expand(&value, how) else {
            return;
        };
        if !expanded.from_input {
            return;
        }
        match ReplyFooter::parse(&expanded.text) {
            Ok(_) => self.set(
                Section::Postscreen,
                "reject_footer",
                toml_string(&expanded.text),
                vec![value.described(&expanded.text)],
            ),
            Err(err) => self.skip(value.parameter, value.subject(), err.to_string()),
        }
    }
}

/// Checks that smtp-screen can read a CIDR table; the reason when it cannot.
fn check_cidr(files: &dyn TableFiles, path: &str) -> Result<(), String> {
    let text = files
        .read(path)
        .map_err(|e| format!("kept, but it could not be checked here: {e}"))?;
    CidrTable::parse(path, &text)
        .map(|_| ())
        .map_err(|e| format!("kept, but smtp-screen will refuse it as it is: {e}"))
}

#[cfg(test)]
mod tests {
    use crate::{
        import_postfix::fixtures::{import_text, skipped},
        smtpd::ReplyFooter,
    };

    #[test]
    fn footer_keeps_its_macros() {
        let (import, c) = import_text(
            "smtpd_reject_footer = \\n$client_address:$client_port $localtime cost $$5 at \
             $myhostname\n",
        );
        // Without myhostname in the input, $myhostname becomes the footer's $server_name.
        assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
        assert_eq!(
            c.reject_footer,
            "\\n${client_address}:${client_port} ${localtime} cost $$5 at ${server_name}"
        );
        assert!(ReplyFooter::parse(&c.reject_footer).unwrap().is_some());
        let (import, c) =
            import_text("smtpd_reject_footer = $server_name $server_name $server_name\n");
        assert_eq!(c.reject_footer, "");
        assert!(
            skipped(&import, "postscreen_reject_footer")[0]
                .reason
                .contains("can expand to")
        );
        let (import, c) = import_text("smtpd_reject_footer = x\ty\n");
        assert_eq!(c.reject_footer, "");
        assert!(
            skipped(&import, "postscreen_reject_footer")[0]
                .reason
                .contains("control character")
        );
    }
}
