//! master.cf: its services as logical lines, their `-o name=value` settings, and the
//! addresses and ports a service name such as `127.0.0.1:10025` stands for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    lines::{ImportError, LineProblem, LogicalLine, MAX_ENTRIES, logical_lines, split_words},
    shorten,
};

/// One service of master.cf: a logical line, continuation lines included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MasterService {
    /// The first and last physical lines it spans.
    pub(crate) first_line: usize,
    pub(crate) last_line: usize,
    /// `smtp`, `127.0.0.1:10025`, `smtpd`, …
    pub(crate) service: String,
    /// `inet`, `unix`, `unix-dgram`, `fifo` or `pass`.
    pub(crate) kind: String,
    /// The private, unpriv, chroot, wakeup and maxproc fields, as written.
    pub(crate) flags: [String; 5],
    /// The program: `postscreen`, `smtpd`, `dnsblog`, …
    pub(crate) command: String,
    /// Its arguments, `{ … }` groups kept whole.
    pub(crate) args: Vec<String>,
    /// The fields as they read on one line, for messages.
    pub(crate) text: String,
}

impl MasterService {
    /// The `-o name=value` settings of its arguments (also `-o { name = value }` and
    /// `-oname=value`), in order.
    pub(crate) fn overrides(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut args = self.args.iter();
        while let Some(arg) = args.next() {
            let setting = match arg.strip_prefix("-o") {
                Some("") => match args.next() {
                    Some(next) => next.as_str(),
                    None => break,
                },
                Some(rest) => rest,
                None => continue,
            };
            let setting = setting
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .unwrap_or(setting);
            if let Some((name, value)) = setting.split_once('=') {
                out.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        out
    }
}

/// The services of a master.cf file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MasterCf {
    pub(super) input: String,
    pub(super) services: Vec<MasterService>,
}

impl MasterCf {
    /// Parses master.cf: a service per logical line (lines that start with white space
    /// continue it; comment and empty lines are skipped, also between continuation lines).
    pub(crate) fn parse(input: &str, bytes: &[u8]) -> Result<Self, ImportError> {
        let logical = logical_lines(input, bytes, MAX_ENTRIES)?;
        let mut services = Vec::with_capacity(logical.len());
        for LogicalLine {
            first: first_line,
            last: last_line,
            text,
        } in logical
        {
            let fields = split_words(&text, false);
            if fields.len() < 8 {
                return Err(ImportError::Line {
                    input: input.to_string(),
                    line: first_line,
                    problem: LineProblem::TooFewFields(fields.len()),
                });
            }
            let own = |i: usize| fields[i].to_string();
            services.push(MasterService {
                first_line,
                last_line,
                service: own(0),
                kind: own(1),
                flags: [own(2), own(3), own(4), own(5), own(6)],
                command: own(7),
                args: fields[8..].iter().map(|s| s.to_string()).collect(),
                text: fields.join(" "),
            });
        }
        Ok(Self {
            input: input.to_string(),
            services,
        })
    }

    /// The services, in file order.
    #[cfg(test)]
    pub(crate) fn services(&self) -> &[MasterService] {
        &self.services
    }

    /// What the file is called in messages.
    pub(crate) fn input(&self) -> &str {
        &self.input
    }

    pub(super) fn postscreen(&self) -> impl Iterator<Item = &MasterService> {
        self.services
            .iter()
            .filter(|s| s.kind == "inet" && command_name(&s.command) == "postscreen")
    }
}

/// `postscreen` of `/usr/lib/postfix/sbin/postscreen`.
pub(super) fn command_name(command: &str) -> &str {
    command.rsplit('/').next().unwrap_or(command)
}

/// `smtp`, `2525`, `127.0.0.1:10025`, `[::1]:25` → (addresses, port).
pub(super) fn service_endpoint(service: &str) -> Result<(Option<Vec<IpAddr>>, u16), String> {
    let (host, port) = if let Some(rest) = service.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{}: a '[' without ']'", shorten(service)))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{}: no port after the address", shorten(service)))?;
        (Some(host), port)
    } else {
        match service.rsplit_once(':') {
            Some((host, port)) => (Some(host), port),
            None => (None, service),
        }
    };
    let port = match port {
        "smtp" => 25,
        "submission" => 587,
        "submissions" | "smtps" => 465,
        digits => digits
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| {
                format!(
                    "{}: unknown port {}; write it as a number in listen",
                    shorten(service),
                    shorten(digits)
                )
            })?,
    };
    let hosts = match host {
        None => None,
        Some("localhost") => Some(vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]),
        Some(host) => Some(vec![host.parse::<IpAddr>().map_err(|_| {
            format!(
                "{}: {} is not an address (host names are not resolved here; write the \
                 address in listen)",
                shorten(service),
                shorten(host)
            )
        })?]),
    };
    Ok((hosts, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import_postfix::{fixtures::DEBIAN_MASTER_CF, lines::MAX_INPUT_BYTES};

    #[test]
    fn parses_master_cf_services() {
        let m = MasterCf::parse("master.cf", DEBIAN_MASTER_CF.as_bytes()).unwrap();
        assert_eq!(m.services().len(), 6);
        let smtp = &m.services()[0];
        assert_eq!(
            (smtp.first_line, smtp.service.as_str(), smtp.kind.as_str()),
            (6, "smtp", "inet")
        );
        assert_eq!(smtp.command, "postscreen");
        assert_eq!(smtp.flags[4], "1");
        let submission = &m.services()[4];
        assert_eq!((submission.first_line, submission.last_line), (10, 12));
        assert_eq!(
            submission.overrides(),
            [
                ("syslog_name".to_string(), "postfix/submission".to_string()),
                ("smtpd_tls_security_level".into(), "encrypt".into())
            ]
        );
        assert_eq!(m.postscreen().count(), 1);
    }

    #[test]
    fn reads_every_override_form() {
        let m = MasterCf::parse(
            "m",
            b"smtp inet n - y - 1 /usr/lib/postfix/sbin/postscreen -o a=1 -ob=2\n\
              \x20 -o { c = three words } -v -o\n",
        )
        .unwrap();
        let service = &m.services()[0];
        assert_eq!(command_name(&service.command), "postscreen");
        assert_eq!(
            service.overrides(),
            [
                ("a".to_string(), "1".to_string()),
                ("b".into(), "2".into()),
                ("c".into(), "three words".into())
            ]
        );
    }

    #[test]
    fn rejects_malformed_master_cf() {
        let err = MasterCf::parse("master.cf", b"# c\nsmtp inet n - y -\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "master.cf, line 2: a service needs 8 fields (service type private unpriv chroot \
             wakeup maxproc command), found 6"
        );
        let err = MasterCf::parse("master.cf", b"  -o a=b\n").unwrap_err();
        assert!(matches!(
            err,
            ImportError::Line {
                line: 1,
                problem: LineProblem::OrphanContinuation,
                ..
            }
        ));
        assert!(MasterCf::parse("m", b"smtp inet n - y - 1 \xc3\x28\n").is_err());
        assert!(matches!(
            MasterCf::parse("m", &vec![b' '; MAX_INPUT_BYTES + 1]),
            Err(ImportError::TooLarge { .. })
        ));
        let many: String = (0..=MAX_ENTRIES)
            .map(|i| format!("s{i} unix - - y - - x\n"))
            .collect();
        assert!(matches!(
            MasterCf::parse("m", many.as_bytes()),
            Err(ImportError::TooManyEntries { .. })
        ));
        assert!(MasterCf::parse("m", b"").unwrap().services().is_empty());
    }

    #[test]
    fn service_endpoints() {
        let v4 = |a: [u8; 4]| IpAddr::from(a);
        assert_eq!(service_endpoint("smtp"), Ok((None, 25)));
        assert_eq!(service_endpoint("2525"), Ok((None, 2525)));
        assert_eq!(
            service_endpoint("127.0.0.1:10025"),
            Ok((Some(vec![v4([127, 0, 0, 1])]), 10025))
        );
        assert_eq!(
            service_endpoint("[::1]:smtp"),
            Ok((Some(vec![IpAddr::from(Ipv6Addr::LOCALHOST)]), 25))
        );
        assert_eq!(
            service_endpoint("localhost:25").unwrap().0.unwrap().len(),
            2
        );
        for bad in ["mx.example:25", "0", "70000", "[::1", "[::1]", "imaps", ""] {
            assert!(service_endpoint(bad).is_err(), "{bad}");
        }
    }
}
