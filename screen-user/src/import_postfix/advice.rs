//! The master.cf edits that hand port 25 from postscreen to smtp-screen: which services to
//! comment out, the `pass` service to keep or add, the helpers postscreen alone used, and
//! how to roll back. With the input's master.cf the lines are named; without it, the
//! standard ones are shown.

use super::{
    expand::{Context, Expansion},
    master_cf::{MasterCf, MasterService, command_name, service_endpoint},
    shorten,
    translate::Translation,
};

impl Translation {
    /// What to change in master.cf, and how to go back.
    pub(super) fn master_cf_advice(&self, master_cf: Option<&MasterCf>) -> String {
        let mut out = String::new();
        let pass_name = Context {
            postconf: &self.context_postconf,
        }
        .expand("$smtpd_service_name", Expansion::default())
        .map(|e| e.text)
        .unwrap_or_else(|_| "smtpd".into());
        let Some(master) = master_cf else {
            out.push_str(&format!(
                "master.cf: smtp-screen takes port 25 from postscreen. In master.cf:\n\
                 \x20 1. comment out the postscreen line:\n\
                 \x20      #smtp      inet  n       -       y       -       1       postscreen\n\
                 \x20 2. keep the smtpd pass service; smtp-screen hands passed clients to it:\n\
                 \x20      {pass_name:<9} pass  -       -       y       -       -       smtpd\n\
                 \x20 3. the dnsblog and tlsproxy services served postscreen only; they may be\n\
                 \x20    commented out (keep tlsproxy if smtp_tls_connection_reuse = yes).\n\
                 Check the new configuration first: smtp-screen check-config FILE. Then run\n\
                 `postfix reload` and start smtp-screen.\n\
                 (Run with --master-cf /etc/postfix/master.cf to have the exact lines named.)\n"
            ));
            out.push_str(ROLLBACK_GENERIC);
            return out;
        };
        let name = master.input();
        let postscreen: Vec<&MasterService> = master.postscreen().collect();
        let direct: Vec<&MasterService> = master
            .services
            .iter()
            .filter(|s| {
                s.kind == "inet"
                    && command_name(&s.command) == "smtpd"
                    && matches!(service_endpoint(&s.service), Ok((_, 25)))
            })
            .collect();
        let pass = master
            .services
            .iter()
            .find(|s| s.kind == "pass" && s.service == pass_name);
        let helpers: Vec<&MasterService> = master
            .services
            .iter()
            .filter(|s| {
                s.kind == "unix" && matches!(command_name(&s.command), "dnsblog" | "tlsproxy")
            })
            .collect();
        out.push_str(&format!(
            "{name}: smtp-screen takes over from postscreen. Make these edits:\n"
        ));
        let mut step = 1;
        let mut commented = Vec::new();
        if !postscreen.is_empty() {
            out.push_str(&format!(
                "  {step}. Comment out postscreen, so that its port is free for smtp-screen:\n"
            ));
            for s in &postscreen {
                out.push_str(&service_lines(s));
                commented.push(s);
            }
            if postscreen.iter().any(|s| !s.overrides().is_empty()) {
                out.push_str(
                    "     (its -o settings are translated into the smtp-screen configuration)\n",
                );
            }
            step += 1;
        } else if !direct.is_empty() {
            out.push_str(&format!(
                "  {step}. No postscreen service: smtpd itself answers on port 25. Comment out:\n"
            ));
            for s in &direct {
                out.push_str(&service_lines(s));
                commented.push(s);
            }
            step += 1;
        } else {
            out.push_str(&format!(
                "  {step}. No postscreen service and no smtpd on port 25 found: make sure nothing \
                 else listens on smtp-screen's addresses.\n"
            ));
            step += 1;
        }
        match pass {
            Some(s) => {
                out.push_str(&format!(
                    "  {step}. Keep the {pass_name} pass service; smtp-screen hands passed \
                     clients to it:\n"
                ));
                out.push_str(&service_lines(s));
            }
            None => {
                out.push_str(&format!(
                    "  {step}. Add the pass service smtp-screen hands passed clients to:\n\
                     \x20      {pass_name:<9} pass  -       -       y       -       -       smtpd\n"
                ));
                if let Some(s) = direct.first()
                    && !s.args.is_empty()
                {
                    out.push_str(&format!(
                        "     with the options of line {}: {}\n",
                        s.first_line,
                        s.args.join(" ")
                    ));
                }
            }
        }
        step += 1;
        if !helpers.is_empty() {
            out.push_str(&format!(
                "  {step}. No longer needed (they served postscreen); comment out or keep:\n"
            ));
            for s in &helpers {
                out.push_str(&service_lines(s));
                if command_name(&s.command) == "tlsproxy" {
                    let reuse = self
                        .context_postconf
                        .get("smtp_tls_connection_reuse")
                        .is_some_and(|v| v.trim().eq_ignore_ascii_case("yes"));
                    if reuse {
                        out.push_str(
                            "     keep tlsproxy: smtp_tls_connection_reuse = yes makes the SMTP \
                             client use it.\n",
                        );
                    }
                }
            }
        }
        out.push_str(
            "Check the new configuration first: smtp-screen check-config FILE. Then run \
             `postfix reload` (postscreen's port is free once it returns) and start \
             smtp-screen (smtp-screen run --config FILE, or its systemd unit).\n",
        );
        out.push_str("To roll back: stop smtp-screen, remove the `#` from ");
        let mut lines: Vec<String> = commented.iter().map(|s| line_range(s)).collect();
        lines.extend(
            helpers
                .iter()
                .map(|s| format!("{} (if commented out)", line_range(s))),
        );
        if lines.is_empty() {
            out.push_str("the lines you commented out");
        } else {
            out.push_str(&format!("{name} {}", lines.join(", ")));
        }
        out.push_str(", and run `postfix reload`; postscreen answers on port 25 again.\n");
        out
    }
}

const ROLLBACK_GENERIC: &str = "To roll back: stop smtp-screen, remove the `#` from the \
                                postscreen line (and dnsblog, tlsproxy), and run `postfix \
                                reload`; postscreen answers on port 25 again.\n";

fn service_lines(service: &MasterService) -> String {
    format!(
        "       {}: {}\n",
        line_range(service),
        shorten(&service.text)
    )
}

fn line_range(service: &MasterService) -> String {
    if service.first_line == service.last_line {
        format!("line {}", service.first_line)
    } else {
        format!("lines {}-{}", service.first_line, service.last_line)
    }
}

#[cfg(test)]
mod tests {
    use crate::import_postfix::fixtures::{DEBIAN_MASTER_CF, Files, import_text, import_with};

    #[test]
    fn master_cf_advice_names_the_lines() {
        let (import, c) = import_with(
            "smtp_tls_connection_reuse = yes\n",
            Some(DEBIAN_MASTER_CF),
            &Files::default(),
        );
        let advice = &import.master_cf_advice;
        assert!(
            advice.contains("line 6: smtp inet n - y - 1 postscreen"),
            "{advice}"
        );
        assert!(
            advice.contains("line 7: smtpd pass - - y - - smtpd"),
            "{advice}"
        );
        assert!(
            advice.contains("line 8: dnsblog unix - - y - 0 dnsblog"),
            "{advice}"
        );
        assert!(
            advice.contains("line 9: tlsproxy unix - - y - 0 tlsproxy"),
            "{advice}"
        );
        assert!(advice.contains("keep tlsproxy: smtp_tls_connection_reuse = yes"));
        assert!(advice.contains("postfix reload"));
        assert!(advice.contains(
            "To roll back: stop smtp-screen, remove the `#` from master.cf line 6, line 8 (if \
             commented out), line 9 (if commented out)"
        ));
        // Not the submission line.
        assert!(!advice.contains("line 10"));
        assert_eq!(c.listen.len(), 2);
        assert!(c.listen.iter().all(|a| a.port() == 25));
    }

    #[test]
    fn master_cf_without_postscreen() {
        let master = "smtp inet n - y - - smtpd\n  -o smtpd_sasl_auth_enable=no\n\
                      pickup unix n - y 60 1 pickup\n";
        let (import, _) = import_with("", Some(master), &Files::default());
        let advice = &import.master_cf_advice;
        assert!(
            advice.contains("smtpd itself answers on port 25"),
            "{advice}"
        );
        assert!(
            advice.contains("lines 1-2: smtp inet n - y - - smtpd"),
            "{advice}"
        );
        assert!(advice.contains("Add the pass service"), "{advice}");
        assert!(advice.contains("with the options of line 1: -o smtpd_sasl_auth_enable=no"));
        let (import, _) = import_with(
            "",
            Some("pickup unix n - y 60 1 pickup\n"),
            &Files::default(),
        );
        assert!(
            import
                .master_cf_advice
                .contains("No postscreen service and no smtpd")
        );
        assert!(
            import
                .master_cf_advice
                .contains("the lines you commented out")
        );
    }

    #[test]
    fn advice_without_master_cf_shows_the_standard_lines() {
        let (import, _) = import_text("smtpd_service_name = smtpd-pass\n");
        let advice = &import.master_cf_advice;
        assert!(
            advice.contains("#smtp      inet  n       -       y       -       1       postscreen")
        );
        assert!(advice.contains("smtpd-pass pass"), "{advice}");
        assert!(advice.contains("--master-cf"));
        assert!(advice.contains("To roll back"));
    }
}
