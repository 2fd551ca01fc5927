//! The mail log: postscreen's log lines, word for word, to stderr or to syslog (facility
//! `mail`), under a configurable identity so that pflogsumm, fail2ban and log exporters keep
//! working (`postfix/postscreen` makes the lines indistinguishable from postscreen's).
//!
//! Operational messages (start-up, kernel attachment) go through `tracing` instead.
//!
//! Delays in the lines are written as Postfix writes them ([`DelayDisplay`]); clients as
//! [`crate::address::ClientAddr`] writes them.

use std::{
    fmt::{self, Write as _},
    io::{self, Write as _},
    os::unix::net::UnixDatagram,
    time::Duration,
};

use serde::Deserialize;

use crate::{escape::truncate_at_char, paths::SYSLOG_SOCKET};

/// Where the postscreen-style log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogTarget {
    Stderr,
    Syslog,
}

/// Facility `mail` (RFC 5424 §6.2.1).
const FACILITY_MAIL: u8 = 2;
const SEVERITY_WARNING: u8 = 4;
const SEVERITY_INFO: u8 = 6;
/// Longest line sent; syslog daemons truncate around here anyway and a client's text must
/// not make a line unbounded.
const MAX_LINE: usize = 2048;
/// Room for a usual line with its syslog header (postscreen's lines are under 200 bytes but
/// for a client's quoted text), so that writing one seldom grows the buffer.
const LINE_CAPACITY: usize = 256;

enum Sink {
    Stderr,
    Syslog(UnixDatagram),
}

/// The mail log.
pub(crate) struct MailLog {
    ident: String,
    pid: u32,
    sink: Sink,
}

impl MailLog {
    /// Opens the log. The syslog socket is connected now, so the log keeps working after the
    /// daemon drops privileges.
    pub(crate) fn open(target: LogTarget, ident: &str) -> io::Result<Self> {
        let sink = match target {
            LogTarget::Stderr => Sink::Stderr,
            LogTarget::Syslog => {
                let socket = UnixDatagram::unbound()?;
                socket.connect(SYSLOG_SOCKET)?;
                // A stalled syslog daemon must not stall the connections that log.
                socket.set_nonblocking(true)?;
                Sink::Syslog(socket)
            }
        };
        Ok(Self {
            ident: ident.to_string(),
            pid: std::process::id(),
            sink,
        })
    }

    /// A log that writes to stderr under `ident` (tests, foreground runs).
    #[cfg(test)]
    pub(crate) fn stderr(ident: &str) -> Self {
        Self {
            ident: ident.to_string(),
            pid: std::process::id(),
            sink: Sink::Stderr,
        }
    }

    /// An informational line, such as `CONNECT from [a]:p to [b]:q`.
    pub(crate) fn info(&self, message: impl fmt::Display) {
        self.write(SEVERITY_INFO, "", message);
    }

    /// A warning, prefixed `warning: ` as Postfix does.
    pub(crate) fn warning(&self, message: impl fmt::Display) {
        self.write(SEVERITY_WARNING, "warning: ", message);
    }

    fn write(&self, severity: u8, prefix: &str, message: impl fmt::Display) {
        // The whole line is written into one buffer sized for the usual line: every
        // connection logs several, and building each in strings that grew and were copied
        // took 4% of the daemon's time in a flood of first contacts.
        let mut line = String::with_capacity(LINE_CAPACITY);
        if let Sink::Syslog(_) = self.sink {
            // RFC 3164 without timestamp and host name: the local syslog daemon adds them.
            let _ = write!(line, "<{}>", FACILITY_MAIL * 8 + severity);
        }
        let _ = write!(line, "{}[{}]: ", self.ident, self.pid);
        let text_start = line.len();
        line.push_str(prefix);
        let _ = write!(line, "{message}");
        truncate_at_char(&mut line, text_start + MAX_LINE);
        match &self.sink {
            Sink::Stderr => {
                line.push('\n');
                let _ = io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Syslog(socket) => {
                // A line syslog cannot take is lost; the daemon goes on.
                let _ = socket.send(line.as_bytes());
            }
        }
    }
}

/// An elapsed time as Postfix logs delays (`format_tv` with two significant digits and at
/// most two decimals): `0.24`, `1.2`, `3`, `17`.
pub(crate) struct DelayDisplay(pub(crate) Duration);

impl fmt::Display for DelayDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MILLION: u64 = 1_000_000;
        const SIGNIFICANT: u64 = 100; // 10^2 significant digits
        let mut sec = self.0.as_secs();
        let mut usec = u64::from(self.0.subsec_micros());
        // Resolution in microseconds: 0.01 s below one second, fewer decimals above.
        let mut resolution = MILLION / 100;
        if sec > 0 {
            let mut n = 1;
            while sec >= n && n <= SIGNIFICANT / 10 {
                n *= 10;
            }
            resolution = (MILLION / SIGNIFICANT) * n;
        }
        usec += resolution / 2;
        if usec >= MILLION {
            sec += 1;
            usec -= MILLION;
        }
        write!(f, "{sec}")?;
        if usec >= resolution {
            f.write_str(".")?;
            let (mut rem, mut n) = (usec, MILLION / 10);
            while rem >= resolution && n > 0 {
                write!(f, "{}", rem / n)?;
                rem %= n;
                n /= 10;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log that sends to a datagram socket of the test's own, as to syslog, and that
    /// socket's receiving end; the directory holding the socket goes when it drops.
    struct Syslog {
        log: MailLog,
        server: UnixDatagram,
        dir: std::path::PathBuf,
    }

    impl Syslog {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("maillog-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("log.sock");
            let _ = std::fs::remove_file(&path);
            let server = UnixDatagram::bind(&path).unwrap();
            let client = UnixDatagram::unbound().unwrap();
            client.connect(&path).unwrap();
            let log = MailLog {
                ident: "postfix/postscreen".into(),
                pid: 42,
                sink: Sink::Syslog(client),
            };
            Self { log, server, dir }
        }

        /// The next datagram the log sent.
        fn next_line(&self) -> String {
            let mut buf = vec![0u8; 4 * MAX_LINE];
            let n = self.server.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    impl Drop for Syslog {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn syslog_lines_carry_facility_mail_and_the_identity() {
        let syslog = Syslog::new("test");
        syslog
            .log
            .info("CONNECT from [192.0.2.1]:4000 to [192.0.2.25]:25");
        syslog.log.warning("haproxy read: time limit exceeded");
        assert_eq!(
            syslog.next_line(),
            "<22>postfix/postscreen[42]: CONNECT from [192.0.2.1]:4000 to [192.0.2.25]:25"
        );
        assert_eq!(
            syslog.next_line(),
            "<20>postfix/postscreen[42]: warning: haproxy read: time limit exceeded"
        );
    }

    #[test]
    fn a_long_message_is_cut_after_the_identity() {
        let syslog = Syslog::new("long");
        syslog.log.warning("x".repeat(3 * MAX_LINE));
        let header = "<20>postfix/postscreen[42]: ";
        let line = syslog.next_line();
        assert_eq!(line.len(), header.len() + MAX_LINE);
        assert!(line.starts_with(&format!("{header}warning: xxx")));
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let mut text = "é".repeat(2000);
        truncate_at_char(&mut text, MAX_LINE);
        assert!(text.len() <= MAX_LINE);
        assert!(text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn delays_are_formatted_like_postfix() {
        for (millis, text) in [
            (0, "0"),
            (4, "0"),
            (5, "0.01"),
            (240, "0.24"),
            (105, "0.11"),
            (100, "0.1"),
            (999, "1"),
            (1_200, "1.2"),
            (1_000, "1"),
            (3_000, "3"),
            (5_040, "5"),
            (9_960, "10"),
            (12_600, "13"),
            (300_000, "300"),
        ] {
            assert_eq!(
                DelayDisplay(Duration::from_millis(millis)).to_string(),
                text,
                "{millis} ms"
            );
        }
    }
}
