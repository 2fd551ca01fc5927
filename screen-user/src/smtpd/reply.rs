//! Every reply the daemon sends, as postscreen words it: [`Reply`] is an SMTP reply that can
//! be written to a client as it is (codes checked, no control characters, each line within
//! RFC 5321's 512 bytes), and each text postscreen sends is a named constructor, the
//! connection-level ones of `postscreen.c` and `postscreen_send.c` included, so the whole
//! daemon answers with the same words. `soft_bounce` ([`Reply::soft_bounced`]) is here
//! because it rewrites the reply itself; the footer is added in `reply_style`.

use std::fmt;

use super::error::EngineError;
use crate::escape::truncate_at_char;

/// The longest reply text after `NNN `: RFC 5321 limits a reply line to 512 bytes with its
/// code and CRLF.
pub const MAX_REPLY_TEXT: usize = 512 - 6;

/// The longest hostname accepted for `myhostname`, which the greeting, the HELO and EHLO
/// replies, the 421 replies and a footer's `$server_name` carry.
pub(super) const MAX_HOSTNAME: usize = 255;

/// An SMTP reply: a code and one or more lines of text.
///
/// The text never holds CR, LF or another control character, and each line fits RFC 5321's
/// 512 bytes, so a reply can be written to a client as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    /// A one-line reply, checked: `code` in 200..=599, `text` without control characters and
    /// at most [`MAX_REPLY_TEXT`] bytes.
    pub(crate) fn new(code: u16, text: impl Into<String>) -> Result<Self, EngineError> {
        if !(200..=599).contains(&code) {
            return Err(EngineError::ReplyCode { code });
        }
        let text = text.into();
        let why = if text.len() > MAX_REPLY_TEXT {
            Some(format!("longer than {MAX_REPLY_TEXT} bytes"))
        } else {
            text.char_indices()
                .find(|(_, c)| c.is_control())
                .map(|(at, c)| format!("control character {c:?} at byte {at}"))
        };
        match why {
            Some(why) => Err(EngineError::ReplyText { text, why }),
            None => Ok(Self {
                code,
                lines: vec![text],
            }),
        }
    }

    /// A reply whose text is built from values checked elsewhere (a validated hostname, an
    /// address): control characters become `?` and an over-long text is cut, so that even a
    /// mistake cannot put a line break into the reply.
    fn sanitized(code: u16, text: String) -> Self {
        Self {
            code,
            lines: vec![sanitized_line(text)],
        }
    }

    pub(crate) fn fixed(code: u16, text: &str) -> Self {
        Self::sanitized(code, text.to_string())
    }

    /// The three-digit reply code.
    #[cfg(test)]
    pub(crate) fn code(&self) -> u16 {
        self.code
    }

    /// The text of each line, without code and separator.
    #[cfg(test)]
    pub(crate) fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The text of the first line.
    pub(crate) fn text(&self) -> &str {
        &self.lines[0]
    }

    /// Adds `text` to the end of the last line (a footer's `\c` form), cut where the line
    /// would grow past [`MAX_REPLY_TEXT`].
    pub(super) fn extend_last_line(&mut self, text: &str) {
        if let Some(last) = self.lines.last_mut() {
            last.push_str(text);
            *last = sanitized_line(std::mem::take(last));
        }
    }

    /// Adds a line after the last one (a footer line, an EHLO keyword), kept to the same
    /// rules as the first.
    pub(super) fn push_line(&mut self, text: String) {
        self.lines.push(sanitized_line(text));
    }

    /// The enhanced status code (RFC 3463) the first line starts with, such as `4.3.2`.
    pub(crate) fn enhanced_status(&self) -> Option<&str> {
        let len = enhanced_status_len(self.text());
        (len > 0).then(|| &self.text()[..len])
    }

    /// A 4xx or 5xx reply: the ones `soft_bounce` and `reject_footer` change.
    pub(crate) fn is_negative(&self) -> bool {
        self.code >= 400
    }

    /// The reply as sent: `NNN-text` lines and a last `NNN text` line, each ending in CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.lines.iter().map(|l| l.len() + 6).sum());
        for (i, line) in self.lines.iter().enumerate() {
            let separator = if i + 1 == self.lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{separator}{line}\r\n", self.code).as_bytes());
        }
        out
    }

    /// The same reply with a 5xx code made 4xx and every enhanced status `5.x.y` made
    /// `4.x.y` (postscreen's `soft_bounce`). Other replies come back unchanged.
    pub(crate) fn soft_bounced(&self) -> Reply {
        if !(500..600).contains(&self.code) {
            return self.clone();
        }
        let lines = self
            .lines
            .iter()
            .map(|line| {
                if enhanced_status_len(line) > 0 && line.starts_with('5') {
                    format!("4{}", &line[1..])
                } else {
                    line.clone()
                }
            })
            .collect();
        Reply {
            code: self.code - 100,
            lines,
        }
    }

    // Connection-level replies that more than one stage sends (postscreen.c,
    // postscreen_send.c); a stage's own replies live in its file under screen/.

    /// The hand-off queue (`post_queue_limit`) is full, or the MTA cannot be reached.
    pub(crate) fn all_server_ports_busy() -> Self {
        Self::fixed(421, "4.3.2 All server ports are busy")
    }

    /// An internal failure: endpoint lookup, PROXY header, hand-off, and the X21 final reply.
    pub(crate) fn no_system_resources() -> Self {
        Self::fixed(421, "4.3.2 No system resources")
    }

    /// `postscreen_command_time_limit` expired.
    pub(crate) fn timeout_exceeded(myhostname: &str) -> Self {
        Self::sanitized(421, format!("4.4.2 {myhostname} Error: timeout exceeded"))
    }

    /// Command count or line length limit reached.
    pub(crate) fn service_unavailable_421(myhostname: &str) -> Self {
        Self::sanitized(
            421,
            format!("{myhostname} Service unavailable - try again later"),
        )
    }

    /// The default `rcpt_reply`: come back later (the deep tests' reconnect).
    pub(crate) fn service_unavailable_450() -> Self {
        Self::fixed(450, "4.3.2 Service currently unavailable")
    }

    /// Pregreet, pipelining, bare newline or non-SMTP command with action `enforce`, at RCPT.
    pub(crate) fn protocol_error_enforce() -> Self {
        Self::fixed(550, "5.5.1 Protocol error")
    }

    /// Pregreet, pipelining or bare newline with action `drop`, at once.
    pub(crate) fn protocol_error_drop() -> Self {
        Self::fixed(521, "5.5.1 Protocol error")
    }

    /// Non-SMTP command with action `drop` (the same words as smtpd's forbidden commands).
    pub(crate) fn non_smtp_command_drop() -> Self {
        Self::fixed(521, "5.7.0 Error: I can break rules, too. Goodbye.")
    }

    // The engine's replies (postscreen_smtpd.c).

    /// `220 $smtpd_banner`.
    pub(crate) fn greeting(smtpd_banner: &str) -> Self {
        Self::sanitized(220, smtpd_banner.to_string())
    }

    /// The reply to HELO: `250 $myhostname`.
    pub(crate) fn helo(myhostname: &str) -> Self {
        Self::sanitized(250, myhostname.to_string())
    }

    /// The reply to EHLO: `250-$myhostname`, then a line for each extension `keywords`
    /// announces.
    pub(crate) fn ehlo(myhostname: &str, keywords: impl IntoIterator<Item = String>) -> Self {
        let mut reply = Self::sanitized(250, myhostname.to_string());
        for keyword in keywords {
            reply.push_line(keyword);
        }
        reply
    }

    pub(crate) fn helo_syntax() -> Self {
        Self::fixed(501, "Syntax: HELO hostname")
    }

    pub(crate) fn ehlo_syntax() -> Self {
        Self::fixed(501, "Syntax: EHLO hostname")
    }

    /// RSET and NOOP.
    pub(crate) fn ok() -> Self {
        Self::fixed(250, "2.0.0 Ok")
    }

    /// MAIL accepted.
    pub(crate) fn sender_ok() -> Self {
        Self::fixed(250, "2.1.0 Ok")
    }

    /// MAIL or ETRN before HELO/EHLO with `helo_required`.
    pub(crate) fn send_helo_first() -> Self {
        Self::fixed(503, "5.5.1 Error: send HELO/EHLO first")
    }

    pub(crate) fn nested_mail() -> Self {
        Self::fixed(503, "5.5.1 Error: nested MAIL command")
    }

    pub(crate) fn mail_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: MAIL FROM:<address>")
    }

    /// postscreen has this text but its address parser never fails, so it is never sent;
    /// kept for completeness.
    #[cfg(test)]
    pub(crate) fn bad_sender_syntax() -> Self {
        Self::fixed(501, "5.1.7 Bad sender address syntax")
    }

    /// RCPT before MAIL, and BDAT before MAIL.
    pub(crate) fn need_mail() -> Self {
        Self::fixed(503, "5.5.1 Error: need MAIL command")
    }

    pub(crate) fn rcpt_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: RCPT TO:<address>")
    }

    /// Never sent, like [`Reply::bad_sender_syntax`].
    #[cfg(test)]
    pub(crate) fn bad_recipient_syntax() -> Self {
        Self::fixed(501, "5.1.3 Bad recipient address syntax")
    }

    /// DATA or BDAT after MAIL: every recipient was refused.
    pub(crate) fn no_valid_recipients() -> Self {
        Self::fixed(554, "5.5.1 Error: no valid recipients")
    }

    /// DATA before MAIL.
    pub(crate) fn need_rcpt() -> Self {
        Self::fixed(503, "5.5.1 Error: need RCPT command")
    }

    pub(crate) fn data_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: DATA")
    }

    /// BDAT before MAIL.
    pub(crate) fn bdat_need_mail() -> Self {
        Self::fixed(554, "5.5.1 Error: need MAIL command")
    }

    pub(crate) fn bdat_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: BDAT count [LAST]")
    }

    /// STARTTLS without TLS, and BDAT when CHUNKING is not announced.
    pub(crate) fn not_implemented() -> Self {
        Self::fixed(502, "5.5.1 Error: command not implemented")
    }

    /// AUTH, XCLIENT, XFORWARD and every unknown command.
    pub(crate) fn not_recognized() -> Self {
        Self::fixed(502, "5.5.2 Error: command not recognized")
    }

    pub(crate) fn vrfy_disabled() -> Self {
        Self::fixed(502, "5.5.1 VRFY command is disabled")
    }

    pub(crate) fn vrfy_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: VRFY address")
    }

    pub(crate) fn etrn_refused() -> Self {
        Self::fixed(458, "Unable to queue messages")
    }

    pub(crate) fn etrn_syntax() -> Self {
        Self::fixed(500, "Syntax: ETRN domain")
    }

    /// STARTTLS accepted: the TLS handshake follows.
    pub(crate) fn starttls_ready() -> Self {
        Self::fixed(220, "2.0.0 Ready to start TLS")
    }

    /// STARTTLS accepted but TLS cannot be started.
    pub(crate) fn tls_unavailable() -> Self {
        Self::fixed(454, "4.7.0 TLS not available due to local problem")
    }

    pub(crate) fn tls_already_active() -> Self {
        Self::fixed(554, "5.5.1 Error: TLS already active")
    }

    pub(crate) fn starttls_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: STARTTLS")
    }

    /// Any command but HELO, EHLO, STARTTLS, NOOP and QUIT while TLS is mandatory.
    #[cfg(test)]
    pub(crate) fn starttls_first() -> Self {
        Self::fixed(530, "5.7.0 Must issue a STARTTLS command first")
    }

    /// QUIT.
    pub(crate) fn bye() -> Self {
        Self::fixed(221, "2.0.0 Bye")
    }
}

/// How a reply reads in a log line: its lines as sent, without CRLF, separated by a space.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let separator = if i + 1 == self.lines.len() { ' ' } else { '-' };
            write!(f, "{}{separator}{line}", self.code)?;
        }
        Ok(())
    }
}

/// The length of the RFC 3463 status code `c.sss.ddd` that `text` starts with (class 2, 4
/// or 5, one to three digits in each other part, then a space or the end), or 0.
fn enhanced_status_len(text: &str) -> usize {
    let b = text.as_bytes();
    if !matches!(b.first(), Some(b'2' | b'4' | b'5')) || b.get(1) != Some(&b'.') {
        return 0;
    }
    let mut at = 2;
    for part in 0..2 {
        let digits = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=3).contains(&digits) {
            return 0;
        }
        at += digits;
        if part == 0 {
            if b.get(at) != Some(&b'.') {
                return 0;
            }
            at += 1;
        }
    }
    match b.get(at) {
        None | Some(b' ') => at,
        _ => 0,
    }
}

/// `text` as a reply line: control characters become `?`, and a text over
/// [`MAX_REPLY_TEXT`] bytes is cut, so that even a mistake cannot put a line break into a
/// reply.
fn sanitized_line(text: String) -> String {
    let mut text: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    truncate_at_char(&mut text, MAX_REPLY_TEXT);
    text
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::smtpd::test_support::HOST;

    #[test]
    fn named_replies_have_postscreens_exact_text() {
        let cases: [(Reply, &str); 44] = [
            (
                Reply::too_many_connections(),
                "421 4.7.0 Error: too many connections",
            ),
            (
                Reply::all_server_ports_busy(),
                "421 4.3.2 All server ports are busy",
            ),
            (
                Reply::all_screening_ports_busy(),
                "421 4.3.2 All screening ports are busy",
            ),
            (
                Reply::no_system_resources(),
                "421 4.3.2 No system resources",
            ),
            (
                Reply::timeout_exceeded(HOST),
                "421 4.4.2 mx.example.test Error: timeout exceeded",
            ),
            (
                Reply::service_unavailable_421(HOST),
                "421 mx.example.test Service unavailable - try again later",
            ),
            (
                Reply::service_unavailable_450(),
                "450 4.3.2 Service currently unavailable",
            ),
            (
                Reply::denylist_enforce(),
                "550 5.3.2 Service currently unavailable",
            ),
            (
                Reply::denylist_drop(),
                "521 5.3.2 Service currently unavailable",
            ),
            (Reply::protocol_error_enforce(), "550 5.5.1 Protocol error"),
            (Reply::protocol_error_drop(), "521 5.5.1 Protocol error"),
            (
                Reply::non_smtp_command_drop(),
                "521 5.7.0 Error: I can break rules, too. Goodbye.",
            ),
            (
                Reply::dnsbl_enforce("127.0.0.40".parse().unwrap(), "public-bl.example").unwrap(),
                "550 5.7.1 Service unavailable; client [127.0.0.40] blocked using \
                 public-bl.example",
            ),
            (
                Reply::dnsbl_drop("2001:db8::1".parse().unwrap(), "zen.example").unwrap(),
                "521 5.7.1 Service unavailable; client [2001:db8::1] blocked using zen.example",
            ),
            (
                Reply::greeting("mx.example.test ESMTP Postfix"),
                "220 mx.example.test ESMTP Postfix",
            ),
            (Reply::helo(HOST), "250 mx.example.test"),
            (Reply::helo_syntax(), "501 Syntax: HELO hostname"),
            (Reply::ehlo_syntax(), "501 Syntax: EHLO hostname"),
            (Reply::ok(), "250 2.0.0 Ok"),
            (Reply::sender_ok(), "250 2.1.0 Ok"),
            (
                Reply::send_helo_first(),
                "503 5.5.1 Error: send HELO/EHLO first",
            ),
            (Reply::nested_mail(), "503 5.5.1 Error: nested MAIL command"),
            (
                Reply::mail_syntax(),
                "501 5.5.4 Syntax: MAIL FROM:<address>",
            ),
            (
                Reply::bad_sender_syntax(),
                "501 5.1.7 Bad sender address syntax",
            ),
            (Reply::need_mail(), "503 5.5.1 Error: need MAIL command"),
            (Reply::rcpt_syntax(), "501 5.5.4 Syntax: RCPT TO:<address>"),
            (
                Reply::bad_recipient_syntax(),
                "501 5.1.3 Bad recipient address syntax",
            ),
            (
                Reply::no_valid_recipients(),
                "554 5.5.1 Error: no valid recipients",
            ),
            (Reply::need_rcpt(), "503 5.5.1 Error: need RCPT command"),
            (Reply::data_syntax(), "501 5.5.4 Syntax: DATA"),
            (
                Reply::bdat_need_mail(),
                "554 5.5.1 Error: need MAIL command",
            ),
            (Reply::bdat_syntax(), "501 5.5.4 Syntax: BDAT count [LAST]"),
            (
                Reply::not_implemented(),
                "502 5.5.1 Error: command not implemented",
            ),
            (
                Reply::not_recognized(),
                "502 5.5.2 Error: command not recognized",
            ),
            (Reply::vrfy_disabled(), "502 5.5.1 VRFY command is disabled"),
            (Reply::vrfy_syntax(), "501 5.5.4 Syntax: VRFY address"),
            (Reply::etrn_refused(), "458 Unable to queue messages"),
            (Reply::etrn_syntax(), "500 Syntax: ETRN domain"),
            (Reply::starttls_ready(), "220 2.0.0 Ready to start TLS"),
            (
                Reply::tls_unavailable(),
                "454 4.7.0 TLS not available due to local problem",
            ),
            (
                Reply::tls_already_active(),
                "554 5.5.1 Error: TLS already active",
            ),
            (Reply::starttls_syntax(), "501 5.5.4 Syntax: STARTTLS"),
            (
                Reply::starttls_first(),
                "530 5.7.0 Must issue a STARTTLS command first",
            ),
            (Reply::bye(), "221 2.0.0 Bye"),
        ];
        for (reply, text) in cases {
            assert_eq!(reply.to_bytes(), format!("{text}\r\n").into_bytes());
            assert_eq!(reply.to_string(), text);
        }
    }

    #[test]
    fn new_replies_are_checked() {
        let ok = Reply::new(550, "5.7.1 Go away").unwrap();
        assert_eq!(ok.code(), 550);
        assert_eq!(ok.text(), "5.7.1 Go away");
        assert_eq!(ok.lines(), ["5.7.1 Go away"]);
        assert_eq!(ok.enhanced_status(), Some("5.7.1"));
        assert!(Reply::new(450, "4.7.1 Grüße").is_ok());
        assert!(Reply::new(450, "x".repeat(MAX_REPLY_TEXT)).is_ok());
        for code in [0, 199, 600, 999] {
            assert_eq!(
                Reply::new(code, "x"),
                Err(EngineError::ReplyCode { code }),
                "{code}"
            );
        }
        for bad in [
            "a\r\n250 injected",
            "a\nb",
            "a\rb",
            "nul\0",
            "tab\there",
            "esc\x1b",
            "del\x7f",
        ] {
            let err = Reply::new(550, bad).unwrap_err();
            assert!(err.to_string().contains("control character"), "{err}");
        }
        let err = Reply::new(550, "x".repeat(MAX_REPLY_TEXT + 1)).unwrap_err();
        assert!(err.to_string().contains("longer than 506 bytes"), "{err}");
    }

    #[test]
    fn texts_from_elsewhere_cannot_break_a_reply() {
        let reply = Reply::timeout_exceeded("evil\r\n250 ok");
        assert_eq!(
            reply.to_bytes(),
            b"421 4.4.2 evil??250 ok Error: timeout exceeded\r\n"
        );
        let reply = Reply::greeting(&"é".repeat(400));
        assert!(reply.text().len() <= MAX_REPLY_TEXT);
        assert!(reply.text().chars().all(|c| c == 'é'));
        assert!(Reply::dnsbl_enforce("192.0.2.1".parse().unwrap(), "bl\r\nx").is_err());
    }

    #[test]
    fn dnsbl_replies_show_mapped_addresses_as_ipv4() {
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        let reply = Reply::dnsbl_enforce(mapped, "bl.example").unwrap();
        assert_eq!(
            reply.text(),
            "5.7.1 Service unavailable; client [192.0.2.7] blocked using bl.example"
        );
    }

    #[test]
    fn enhanced_status_codes_are_recognised_strictly() {
        for (text, status) in [
            ("4.3.2 Service", Some("4.3.2")),
            ("5.1.7", Some("5.1.7")),
            ("2.0.0 Ok", Some("2.0.0")),
            ("5.123.456 x", Some("5.123.456")),
            ("Syntax: ETRN domain", None),
            ("mx.example.test Service", None),
            ("6.1.1 x", None),
            ("5.1234.1 x", None),
            ("5..1 x", None),
            ("5.1. x", None),
            ("5.1.1x", None),
            ("5.1", None),
            ("5", None),
            ("", None),
        ] {
            let reply = Reply::sanitized(550, text.to_string());
            assert_eq!(reply.enhanced_status(), status, "{text:?}");
        }
    }

    #[test]
    fn soft_bounce_turns_5xx_into_4xx() {
        let cases = [
            (
                Reply::denylist_enforce(),
                "450 4.3.2 Service currently unavailable",
            ),
            (Reply::protocol_error_drop(), "421 4.5.1 Protocol error"),
            (
                Reply::not_recognized(),
                "402 4.5.2 Error: command not recognized",
            ),
            (Reply::helo_syntax(), "401 Syntax: HELO hostname"),
            (Reply::etrn_syntax(), "400 Syntax: ETRN domain"),
            (
                Reply::no_valid_recipients(),
                "454 4.5.1 Error: no valid recipients",
            ),
            // 4xx, 2xx and a 5xx whose text only looks like a status are left alone
            (
                Reply::service_unavailable_450(),
                "450 4.3.2 Service currently unavailable",
            ),
            (Reply::ok(), "250 2.0.0 Ok"),
            (
                Reply::sanitized(554, "5.example.test down".into()),
                "454 5.example.test down",
            ),
        ];
        for (reply, text) in cases {
            assert_eq!(reply.soft_bounced().to_string(), text);
        }
    }
}
