//! smtp-screen's own options, taken from Postfix: the listen addresses (master.cf's
//! postscreen services, else `inet_interfaces` and `inet_protocols` on port 25), the hand-off
//! to smtpd's `pass` service, the user (`mail_owner`) and the syslog name; and the caveat
//! about postscreen's log words (`respectful_logging`).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{Effective, Section, Translation, postfix_default};
use crate::{
    import_postfix::{
        expand::Expansion,
        lines::split_words,
        master_cf::{MasterCf, MasterService, service_endpoint},
        render::{toml_array, toml_string},
        shorten,
    },
    paths,
};

impl Translation {
    pub(super) fn smtp_screen_own(&mut self, master_cf: Option<&MasterCf>) {
        let listen = self.listen(master_cf);
        let origin = std::mem::take(&mut self.listen_origin);
        self.set(
            Section::Smtp,
            "listen",
            toml_array(listen.iter().map(|a| a.to_string())),
            vec![origin],
        );
        self.set(
            Section::Smtp,
            "handoff",
            toml_string("postfix"),
            vec![
                "Passed clients go to Postfix's smtpd `pass` service, as with postscreen: keep"
                    .into(),
                "the `smtpd pass ... smtpd` line in master.cf.".into(),
            ],
        );
        let socket = self.pass_socket();
        self.set(
            Section::Smtp,
            "postfix_pass_socket",
            toml_string(&socket),
            vec!["$queue_directory/private/$smtpd_service_name".into()],
        );
        let backend = (10025u16..)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .find(|a| !listen.contains(a))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10024)));
        self.set(
            Section::Smtp,
            "backend",
            toml_string(&backend.to_string()),
            vec![
                "Used only with handoff = \"proxy\" (smtp-screen relays to an SMTP server there)."
                    .into(),
            ],
        );
        self.set(
            Section::Smtp,
            "state_dir",
            toml_string(paths::DEFAULT_STATE_DIR),
            vec![
                "The temporary allowlist. postscreen's cache is not carried over: each client is"
                    .into(),
                "screened once more after the switch.".into(),
            ],
        );
        let owner = self.context_value("mail_owner");
        self.set(
            Section::Smtp,
            "user",
            toml_string(&owner),
            vec![
                "mail_owner: the owner of Postfix's private/ sockets, which the hand-off uses."
                    .into(),
            ],
        );
        // Postfix's default, `${multi_instance_name?{$multi_instance_name}:{postfix}}`, without an
        // instance name.
        let syslog_name = self.context_value_or("syslog_name", "postfix");
        self.set(
            Section::Smtp,
            "log_to",
            toml_string("syslog"),
            vec!["postscreen's log lines, word for word, as postscreen logged them.".into()],
        );
        self.set(
            Section::Smtp,
            "syslog_name",
            toml_string(&format!("{syslog_name}/postscreen")),
            vec!["$syslog_name/postscreen keeps log parsers (pflogsumm, fail2ban) working.".into()],
        );
        if let Some(file) = self.context_postconf.get("maillog_file")
            && !file.trim().is_empty()
        {
            let subject = format!("maillog_file = {}", shorten(file));
            self.caveat(
                "maillog_file",
                subject,
                "Postfix logs to this file through postlogd; smtp-screen logs to syslog \
                 (or stderr), so its lines are not in that file",
            );
        }
    }

    /// A parameter's expanded value, or Postfix's default when it cannot be expanded or is
    /// empty.
    fn context_value(&mut self, name: &'static str) -> String {
        self.context_value_or(name, postfix_default(name))
    }

    /// A parameter's expanded value, or `fallback` when it cannot be expanded or is empty.
    fn context_value_or(&mut self, name: &'static str, fallback: &str) -> String {
        let value = match self.context_postconf.get(name) {
            Some(raw) => Effective {
                parameter: name,
                raw: raw.to_string(),
                explicit: true,
            },
            None => Effective {
                parameter: name,
                raw: format!("${name}"),
                explicit: false,
            },
        };
        match self.expand(&value, Expansion::default()) {
            Some(e) if !e.text.trim().is_empty() => e.text.trim().to_string(),
            _ => fallback.to_string(),
        }
    }

    fn pass_socket(&mut self) -> String {
        let queue = self.context_value("queue_directory");
        let service = self.context_value("smtpd_service_name");
        let queue = queue.trim_end_matches('/');
        if queue.is_empty() {
            return paths::DEFAULT_POSTFIX_PASS_SOCKET.to_string();
        }
        format!("{queue}/private/{service}")
    }

    /// The addresses postscreen listened on: its master.cf services, else
    /// `inet_interfaces` on port 25.
    fn listen(&mut self, master_cf: Option<&MasterCf>) -> Vec<SocketAddr> {
        let families = self.families();
        let mut listen = Vec::new();
        let mut origins = Vec::new();
        let services: Vec<MasterService> = master_cf
            .map(|m| m.postscreen().cloned().collect())
            .unwrap_or_default();
        for service in &services {
            match service_endpoint(&service.service) {
                Ok((Some(hosts), port)) => {
                    listen.extend(hosts.into_iter().map(|h| SocketAddr::new(h, port)))
                }
                Ok((None, port)) => listen.extend(
                    self.interfaces(&families)
                        .into_iter()
                        .map(|h| SocketAddr::new(h, port)),
                ),
                Err(reason) => self.skip(
                    "master.cf",
                    format!("line {}: {}", service.first_line, shorten(&service.service)),
                    reason,
                ),
            }
            origins.push(format!(
                "master.cf line {}: {}",
                service.first_line, service.service
            ));
        }
        if services.is_empty() {
            listen = self
                .interfaces(&families)
                .into_iter()
                .map(|h| SocketAddr::new(h, 25))
                .collect();
            let interfaces = match self.context_postconf.get("inet_interfaces") {
                Some(value) => shorten(value),
                None => format!("{} (Postfix's default)", postfix_default("inet_interfaces")),
            };
            origins.push(format!("inet_interfaces = {interfaces}, port 25"));
        }
        let mut seen = BTreeSet::new();
        listen.retain(|a| seen.insert(*a));
        if listen.is_empty() {
            self.caveat(
                "inet_interfaces",
                "listen".into(),
                "no address could be taken from Postfix; smtp-screen listens on every \
                 address, port 25",
            );
            listen = vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 25)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, 25)),
            ];
        }
        self.listen_origin = format!("From {}.", origins.join("; "));
        listen
    }

    /// `inet_protocols`: (IPv4, IPv6).
    fn families(&mut self) -> (bool, bool) {
        let value = self.context_value("inet_protocols");
        let (mut v4, mut v6) = (false, false);
        for word in split_words(&value, true) {
            match word.to_ascii_lowercase().as_str() {
                "all" => (v4, v6) = (true, true),
                "ipv4" => v4 = true,
                "ipv6" => v6 = true,
                _ => {
                    self.caveat(
                        "inet_protocols",
                        format!("inet_protocols = {}", shorten(&value)),
                        format!("unknown protocol {}: IPv4 and IPv6 are used", shorten(word)),
                    );
                    return (true, true);
                }
            }
        }
        if !v4 && !v6 { (true, true) } else { (v4, v6) }
    }

    /// The addresses of `inet_interfaces`.
    fn interfaces(&mut self, &(v4, v6): &(bool, bool)) -> Vec<IpAddr> {
        let value = self.context_value("inet_interfaces");
        let mut out = Vec::new();
        for word in split_words(&value, true) {
            let lower = word.to_ascii_lowercase();
            let addresses: Vec<IpAddr> = match lower.as_str() {
                "all" => vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()],
                "loopback-only" | "localhost" => {
                    vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
                }
                _ => {
                    let bare = word
                        .strip_prefix('[')
                        .and_then(|w| w.strip_suffix(']'))
                        .unwrap_or(word);
                    match bare.parse::<IpAddr>() {
                        Ok(addr) => vec![addr],
                        Err(_) => {
                            self.skip(
                                "inet_interfaces",
                                format!("inet_interfaces: {}", shorten(word)),
                                "host names are not resolved here; write its addresses in \
                                 listen",
                            );
                            continue;
                        }
                    }
                }
            };
            out.extend(
                addresses
                    .into_iter()
                    .filter(|a| if a.is_ipv4() { v4 } else { v6 }),
            );
        }
        out
    }

    /// postscreen's log words depend on `respectful_logging`; smtp-screen's do not.
    pub(super) fn logging_words(&mut self) {
        let respectful = match self.context_postconf.get("respectful_logging") {
            Some(value) => value.trim().eq_ignore_ascii_case("yes"),
            None => match self.context_postconf.get("compatibility_level") {
                Some(level) => compatibility_at_least(level, (3, 6)).unwrap_or(true),
                None => false,
            },
        };
        if !respectful {
            let subject = match self.context_postconf.get("respectful_logging") {
                Some(value) => format!("respectful_logging = {}", shorten(value)),
                None => match self.context_postconf.get("compatibility_level") {
                    Some(level) => format!("compatibility_level = {level}"),
                    None => format!(
                        "compatibility_level = {} (Postfix's default)",
                        postfix_default("compatibility_level")
                    ),
                },
            };
            self.caveat(
                "respectful_logging",
                subject,
                "postscreen logs WHITELISTED and BLACKLISTED here; smtp-screen logs \
                 ALLOWLISTED and DENYLISTED (as postscreen with respectful_logging = yes): \
                 update log parsers that look for the old words",
            );
        }
    }
}

/// Whether a `compatibility_level` value is at least `want` (`None`: not a level).
fn compatibility_at_least(level: &str, want: (u32, u32)) -> Option<bool> {
    let mut parts = level.trim().split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = match parts.next() {
        Some(minor) => minor.parse().ok()?,
        None => 0,
    };
    Some((major, minor) >= want)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        config::Config,
        handoff::Handoff,
        import_postfix::fixtures::{caveat, import_text, skipped},
        maillog::LogTarget,
    };

    #[test]
    fn listen_addresses_come_from_inet_interfaces() {
        let listen = |input: &str| import_text(input).1.listen;
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(listen(""), [addr("0.0.0.0:25"), addr("[::]:25")]);
        assert_eq!(listen("inet_protocols = ipv4\n"), [addr("0.0.0.0:25")]);
        assert_eq!(
            listen("inet_interfaces = loopback-only\ninet_protocols = ipv6\n"),
            [addr("[::1]:25")]
        );
        assert_eq!(
            listen("inet_interfaces = 192.0.2.25, [2001:db8::25] 192.0.2.25\n"),
            [addr("192.0.2.25:25"), addr("[2001:db8::25]:25")]
        );
        let (import, c) = import_text("inet_interfaces = mx.example.com\n");
        assert_eq!(c.listen, Config::default().listen);
        assert_eq!(skipped(&import, "inet_interfaces").len(), 1);
        assert_eq!(caveat(&import, "inet_interfaces").len(), 1);
        let (import, c) = import_text("inet_protocols = ipx\n");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(caveat(&import, "inet_protocols").len(), 1);
    }

    #[test]
    fn smtp_screens_own_options() {
        let (import, c) = import_text(
            "queue_directory = /srv/postfix/spool\nsmtpd_service_name = smtpd-in\n\
             mail_owner = pfx\nmulti_instance_name = postfix-in\nmaillog_file = /var/log/m\n",
        );
        assert_eq!(c.handoff, Handoff::Postfix);
        assert_eq!(
            c.postfix_pass_socket,
            Path::new("/srv/postfix/spool/private/smtpd-in")
        );
        assert_eq!(c.user, "pfx");
        assert_eq!(c.log_to, LogTarget::Syslog);
        assert_eq!(c.syslog_name, "postfix-in/postscreen");
        assert_eq!(c.state_dir, Path::new(paths::DEFAULT_STATE_DIR));
        assert!(c.interfaces.is_empty());
        assert_eq!(caveat(&import, "maillog_file").len(), 1);
        let (_, c) = import_text("");
        assert_eq!(
            c.postfix_pass_socket,
            Path::new(paths::DEFAULT_POSTFIX_PASS_SOCKET)
        );
        assert_eq!(c.syslog_name, "postfix/postscreen");
        assert_eq!(c.user, "postfix");
    }

    #[test]
    fn respectful_logging_caveat() {
        for (input, expected) in [
            ("", true),
            ("compatibility_level = 2\n", true),
            ("compatibility_level = 3.6\n", false),
            ("compatibility_level = 3.10\n", false),
            ("respectful_logging = no\ncompatibility_level = 3.6\n", true),
            ("respectful_logging = yes\n", false),
        ] {
            let (import, _) = import_text(input);
            assert_eq!(
                !caveat(&import, "respectful_logging").is_empty(),
                expected,
                "{input}"
            );
        }
    }
}
