//! STARTTLS in the dummy engine: offered when postscreen's TLS security level (or the
//! older `use_tls`/`enforce_tls`) says so, with smtpd's certificate and key, or Postfix
//! 3.12's `postscreen_tls_cert_file` and key file.

use super::{Effective, Section, Translation, parameter, parameter_for};
use crate::import_postfix::{expand::Expansion, render::toml_string, shorten};

/// Handled through the STARTTLS translation.
const TLS_PARAMETERS: &[&str] = &[
    "postscreen_tls_security_level",
    "postscreen_use_tls",
    "postscreen_enforce_tls",
    "postscreen_tls_cert_file",
    "postscreen_tls_key_file",
];

impl Translation {
    /// postscreen offers STARTTLS when its TLS security level is `may` or `encrypt`; then
    /// smtp-screen gets the same certificate and key.
    pub(super) fn starttls(&mut self) {
        for &name in TLS_PARAMETERS {
            self.handled.insert(name);
        }
        let level_value = self.effective(parameter("postscreen_tls_security_level"));
        let Some(level) = self.expand(&level_value, Expansion::default()) else {
            return;
        };
        let mut level_text = level.text.trim().to_ascii_lowercase();
        let mut level_origin = level_value.described(&level.text);
        if level_text.is_empty() {
            // The settings the security level replaced.
            let enforce = self.effective(parameter("postscreen_enforce_tls"));
            let enforce_on = self
                .expand(&enforce, Expansion::default())
                .is_some_and(|e| e.text.trim().eq_ignore_ascii_case("yes"));
            let use_tls = self.effective(parameter("postscreen_use_tls"));
            let use_on = self
                .expand(&use_tls, Expansion::default())
                .is_some_and(|e| e.text.trim().eq_ignore_ascii_case("yes"));
            if enforce_on {
                level_text = "encrypt".into();
                level_origin = enforce.described("yes");
            } else if use_on {
                level_text = "may".into();
                level_origin = use_tls.described("yes");
            }
        }
        let cert = self.tls_file("tls_cert_file");
        let key = self.tls_file("tls_key_file");
        match level_text.as_str() {
            "" | "none" => {
                if let Some((cert, _)) = &cert {
                    self.matched.push((
                        cert.subject(),
                        "postscreen offers no STARTTLS (no TLS security level), so \
                         tls_cert_file stays empty"
                            .into(),
                    ));
                }
                return;
            }
            "may" => {}
            "encrypt" => self.skip(
                level_value.parameter,
                level_origin.clone(),
                "smtp-screen offers STARTTLS but does not require it (postscreen replies 530 \
                 5.7.0 Must issue a STARTTLS command first)",
            ),
            other => {
                self.skip(
                    level_value.parameter,
                    level_origin.clone(),
                    format!("{other}: not a TLS security level for a server (none, may, encrypt)"),
                );
                return;
            }
        }
        for name in [
            "smtpd_tls_eccert_file",
            "smtpd_tls_dcert_file",
            "smtpd_tls_chain_files",
        ] {
            if let Some(value) = self.context_postconf.get(name)
                && !value.trim().is_empty()
            {
                let subject = format!("{name} = {}", shorten(value));
                let reason = if name == "smtpd_tls_chain_files" && cert.is_none() {
                    "smtp-screen takes one certificate file (with its chain) and one key file: \
                     set tls_cert_file and tls_key_file"
                } else {
                    "smtp-screen offers one certificate: the one of tls_cert_file"
                };
                if name == "smtpd_tls_chain_files" && cert.is_none() {
                    self.skip(name, subject, reason);
                } else {
                    self.caveat(name, subject, reason);
                }
            }
        }
        match (cert, key) {
            (Some((cert_value, cert)), Some((key_value, key))) => {
                self.set(
                    Section::Deep,
                    "tls_cert_file",
                    toml_string(&cert),
                    vec![level_origin.clone(), cert_value.origin()],
                );
                self.set(
                    Section::Deep,
                    "tls_key_file",
                    toml_string(&key),
                    vec![key_value.origin()],
                );
            }
            (Some((value, _)), None) | (None, Some((value, _))) => self.skip(
                value.parameter,
                value.subject(),
                "a certificate needs its key and a key its certificate; smtp-screen offers no \
                 STARTTLS without both",
            ),
            (None, None) => {
                if !self
                    .untranslated
                    .iter()
                    .any(|f| f.parameter == "smtpd_tls_chain_files")
                {
                    self.caveat(
                        level_value.parameter,
                        level_origin,
                        "postscreen offers STARTTLS but no certificate is set \
                         (smtpd_tls_cert_file); smtp-screen offers no STARTTLS",
                    );
                }
            }
        }
    }

    /// A certificate or key file: the 3.12 postscreen_tls_* name first, else smtpd's.
    fn tls_file(&mut self, key: &'static str) -> Option<(Effective, String)> {
        let names = parameter_for(key);
        let value = self.effective(names);
        let expanded = self.expand(&value, Expansion::default())?;
        let path = expanded.text.trim().to_string();
        if path.is_empty() {
            return None;
        }
        let value = if value.explicit {
            value
        } else {
            // Postfix's default names smtpd's parameter (`$smtpd_tls_cert_file`): that is
            // where the file comes from.
            let smtpd = names.default.unwrap_or_default().trim_start_matches('$');
            Effective {
                parameter: smtpd,
                raw: self.context_postconf.get(smtpd).unwrap_or("").to_string(),
                explicit: true,
            }
        };
        Some((value, path))
    }
}

#[cfg(test)]
mod tests {
    use crate::import_postfix::fixtures::{caveat, import_text, skipped};

    #[test]
    fn starttls_follows_the_security_level() {
        let certs = "smtpd_tls_cert_file = /etc/ssl/mx.pem\nsmtpd_tls_key_file = /etc/ssl/mx.key\n";
        // No level: postscreen offers no STARTTLS, so neither does smtp-screen.
        let (import, c) = import_text(certs);
        assert_eq!(c.tls_cert_file, "");
        assert!(import.toml.contains("tls_cert_file stays empty"));
        // smtpd's level is postscreen's default.
        let (_, c) = import_text(&format!("{certs}smtpd_tls_security_level = may\n"));
        assert_eq!(
            (c.tls_cert_file.as_str(), c.tls_key_file.as_str()),
            ("/etc/ssl/mx.pem", "/etc/ssl/mx.key")
        );
        // The settings before security levels.
        let (_, c) = import_text(&format!("{certs}smtpd_use_tls = yes\n"));
        assert_eq!(c.tls_cert_file, "/etc/ssl/mx.pem");
        let (import, c) = import_text(&format!("{certs}smtpd_enforce_tls = yes\n"));
        assert_eq!(c.tls_cert_file, "/etc/ssl/mx.pem");
        assert!(
            skipped(&import, "postscreen_tls_security_level")[0]
                .reason
                .contains("does not require it")
        );
        // postscreen's own level wins over smtpd's.
        let (_, c) = import_text(&format!(
            "{certs}smtpd_tls_security_level = may\npostscreen_tls_security_level = none\n"
        ));
        assert_eq!(c.tls_cert_file, "");
        // Postfix 3.12's postscreen_tls_cert_file and key file.
        let (import, c) = import_text(&format!(
            "{certs}smtpd_tls_security_level = may\n\
             postscreen_tls_cert_file = /etc/ssl/ps.pem\npostscreen_tls_key_file = /etc/ssl/ps.key\n\
             postscreen_tls_protocols = >=TLSv1.2\npostscreen_starttls_timeout = 30s\n"
        ));
        assert_eq!(c.tls_cert_file, "/etc/ssl/ps.pem");
        assert_eq!(c.tls_key_file, "/etc/ssl/ps.key");
        assert!(
            skipped(&import, "postscreen_tls_protocols")[0]
                .reason
                .contains("rustls")
        );
        assert!(
            skipped(&import, "postscreen_starttls_timeout")[0]
                .reason
                .contains("command_time_limit")
        );
        // A certificate without its key.
        let (import, c) = import_text(
            "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = $config_directory/c.pem\n",
        );
        assert_eq!(c.tls_cert_file, "");
        assert!(
            skipped(&import, "smtpd_tls_cert_file")[0]
                .reason
                .contains("needs its key")
        );
        // chain files only.
        let (import, c) =
            import_text("smtpd_tls_security_level = may\nsmtpd_tls_chain_files = /k.pem, /c.pem\n");
        assert_eq!(c.tls_cert_file, "");
        assert_eq!(skipped(&import, "smtpd_tls_chain_files").len(), 1);
        assert!(caveat(&import, "postscreen_tls_security_level").is_empty());
        // An extra ECDSA certificate.
        let (import, _) = import_text(&format!(
            "{certs}smtpd_tls_security_level = may\nsmtpd_tls_eccert_file = /ec.pem\n"
        ));
        assert_eq!(caveat(&import, "smtpd_tls_eccert_file").len(), 1);
        // No certificate at all.
        let (import, _) = import_text("smtpd_tls_security_level = may\n");
        assert!(
            caveat(&import, "postscreen_tls_security_level")[0]
                .reason
                .contains("no certificate")
        );
        let (import, _) = import_text("postscreen_tls_security_level = dane\n");
        assert!(
            skipped(&import, "postscreen_tls_security_level")[0]
                .reason
                .contains("not a TLS security level")
        );
    }
}
