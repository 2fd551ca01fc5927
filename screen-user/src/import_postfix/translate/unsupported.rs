//! postscreen parameters smtp-screen has no option for, each reported with the reason when
//! it matters (set, or set to something else than what smtp-screen does anyway), and
//! `postscreen_` parameters the importer does not know.

use super::{Translation, parameter};
use crate::import_postfix::{
    expand::{Expanded, Expansion},
    shorten,
};

/// When a postscreen setting smtp-screen has no option for is worth reporting.
#[derive(Clone, Copy)]
enum ReportWhen {
    /// Reported when the input sets it.
    Explicit,
    /// Reported when the input sets it, or the smtpd parameter its default names.
    Set,
    /// Reported when its value is not empty.
    NotEmpty,
}

/// postscreen parameters smtp-screen has no option for: name, when to report it, and why it
/// is left out. Their defaults are in the configuration's table.
const UNSUPPORTED: &[(&str, ReportWhen, &str)] = &[
    (
        "postscreen_cache_map",
        ReportWhen::Explicit,
        "smtp-screen keeps its temporary allowlist in its own database under state_dir; \
         postscreen's records are not carried over, so each client is screened once more",
    ),
    (
        "postscreen_command_filter",
        ReportWhen::NotEmpty,
        "smtp-screen does not rewrite client commands",
    ),
    (
        "postscreen_discard_ehlo_keyword_address_maps",
        ReportWhen::NotEmpty,
        "smtp-screen's engine always announces the same EHLO keywords",
    ),
    (
        "postscreen_discard_ehlo_keywords",
        ReportWhen::NotEmpty,
        "smtp-screen's engine always announces the same EHLO keywords",
    ),
    (
        "postscreen_expansion_filter",
        ReportWhen::Set,
        "smtp-screen's footer macros expand to addresses, ports, the host name and the time, \
         which need no filter",
    ),
    (
        "postscreen_reject_footer_maps",
        ReportWhen::NotEmpty,
        "smtp-screen has one footer for all clients (reject_footer), no per-client tables",
    ),
    (
        "postscreen_watchdog_timeout",
        ReportWhen::Set,
        "smtp-screen has no watchdog: each step of a session has its own time limit",
    ),
    (
        "postscreen_starttls_timeout",
        ReportWhen::Set,
        "the STARTTLS handshake in smtp-screen runs under command_time_limit",
    ),
];

impl Translation {
    /// postscreen parameters smtp-screen has no option for.
    pub(super) fn unsupported(&mut self) {
        for &(name, when, reason) in UNSUPPORTED {
            let value = self.effective(parameter(name));
            let expanded = match self.context().expand(&value.raw, Expansion::default()) {
                Ok(mut expanded) => {
                    expanded.from_input |= value.explicit;
                    expanded
                }
                Err(_) if value.explicit => Expanded {
                    text: value.raw.clone(),
                    from_input: true,
                    ..Expanded::default()
                },
                Err(_) => continue,
            };
            let text = expanded.text.trim();
            let report = match when {
                ReportWhen::Explicit => value.explicit,
                ReportWhen::Set => expanded.from_input,
                ReportWhen::NotEmpty => !text.is_empty(),
            };
            if report {
                let subject = if value.explicit {
                    value.subject()
                } else {
                    format!("{} = {} (= {})", name, value.raw, shorten(text))
                };
                self.skip(name, subject, reason);
            } else if value.explicit {
                self.matched.push((
                    value.subject(),
                    "what smtp-screen does; there is no option for it".into(),
                ));
            }
        }
    }

    pub(super) fn unknown_postscreen_parameters(&mut self) {
        let unknown: Vec<(String, String)> = self
            .context_postconf
            .parameters
            .iter()
            .filter(|(name, _)| name.starts_with("postscreen_"))
            .filter(|(name, _)| !self.handled.contains(name.as_str()))
            .filter(|(name, _)| !UNSUPPORTED.iter().any(|(n, ..)| n == name))
            .map(|(name, p)| (name.clone(), p.value.clone()))
            .collect();
        for (name, value) in unknown {
            let reason = if name.starts_with("postscreen_tls_") {
                "smtp-screen's STARTTLS uses rustls's protocol versions and ciphers (TLS 1.2 and \
                 1.3); only the certificate and key are set"
            } else {
                "not a postscreen parameter smtp-screen knows"
            };
            self.skip(&name, format!("{name} = {}", shorten(&value)), reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::import_postfix::fixtures::import_text;

    #[test]
    fn unknown_postscreen_parameters_are_reported() {
        let (import, _) = import_text(
            "postscreen_made_up = 1\npostscreen_dnsblog_reply_delay = 1s\nsmtpd_whatever = 1\n",
        );
        assert_eq!(import.untranslated.len(), 2, "{:?}", import.untranslated);
        assert!(
            import
                .untranslated
                .iter()
                .all(|f| f.reason == "not a postscreen parameter smtp-screen knows")
        );
    }
}
