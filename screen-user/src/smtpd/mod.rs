//! postscreen's dummy SMTP engine (`postscreen_smtpd.c`): the SMTP server that screened
//! clients talk to after the 220 greeting, for the deep protocol tests and for the enforce
//! actions. It never accepts mail: every RCPT is refused with the session's `rcpt_reply`
//! (`450 4.3.2 Service currently unavailable` unless an enforce action chose a 550), and the
//! client that passed gets its mail through on its next connection.
//!
//! The engine is a state machine without I/O: [`Engine::on_line`] takes one command line as
//! the [`LineReader`] yields it ([`Engine::on_command`] takes bare text) and returns a
//! [`Step`] (the reply to send, the [`Event`]s to log and whether the session goes on). [`serve`] drives it over any tokio stream with a [`LineReader`], the per-command
//! time limit and end-of-input handling. Logging is the caller's: each event renders
//! postscreen's exact log text through [`Event::line`].
//!
//! Every reply text postscreen sends lives here as a named [`Reply`] constructor, the
//! connection-level ones included, so the whole daemon answers with the same words.
//! [`ReplyStyle`] applies `soft_bounce` and `reject_footer` to a reply, as postscreen does
//! to everything it sends.
//!
//! The engine runs postscreen's three deep protocol tests ([`DeepTests`], each with its own
//! [`TestAction`]): command pipelining, non-SMTP commands and bare newlines. It reports each
//! violation as an [`Event`] with postscreen's log text, answers `drop` at once, makes
//! `enforce` refuse every later RCPT, and keeps per test what the session earned
//! ([`DeepTestResults`]): a test passes only when the client reaches RCPT TO cleanly.
//!
//! [`serve_with_tls`] adds STARTTLS: it accepts the command with `220 2.0.0 Ready to start
//! TLS`, drops any plaintext sent behind it, runs the handshake under a time limit and goes
//! on with the same session over TLS (postscreen does this through `tlsproxy(8)`).
//!
//! Where this engine parts from postscreen, it says so next to the code: logged fields are
//! bounded and escaped, and a run of CRs cannot stretch a line past the length limit.

pub mod line;
pub mod tls;

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::{Instant, timeout, timeout_at},
};

use self::{
    line::{DEFAULT_LINE_LENGTH_LIMIT, Line, LineEnding, LineError, LineReader},
    tls::TlsAcceptor,
};
use crate::address::canonical;
use crate::{
    escape::c_escape,
    test_state::{Outcome as TestOutcome, SessionResults, Test, TestAction},
};

/// A reply, a setting or a footer that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("reply code {code} is not an SMTP reply code (200..=599)")]
    ReplyCode { code: u16 },
    #[error("reply text {text:?}: {why}")]
    ReplyText { text: String, why: String },
    #[error("{setting} = {value:?}: {why}")]
    Setting {
        setting: &'static str,
        value: String,
        why: String,
    },
}

/// The longest reply text after `NNN `: RFC 5321 limits a reply line to 512 bytes with its
/// code and CRLF.
pub const MAX_REPLY_TEXT: usize = 512 - 6;

/// Postfix's `postscreen_command_count_limit` default.
pub const DEFAULT_COMMAND_COUNT_LIMIT: u32 = 20;

/// The largest command count limit accepted; it also bounds the events of one session.
pub const MAX_COMMAND_COUNT_LIMIT: u32 = 10_000;

/// The shortest `line_length_limit` accepted: RFC 5321 lets a command line be 512 bytes.
pub const MIN_LINE_LENGTH_LIMIT: usize = 512;

/// Postfix's `message_size_limit` default, announced in the EHLO reply.
pub const DEFAULT_MESSAGE_SIZE_LIMIT: u64 = 10_240_000;

/// Helo names, senders and recipients are kept (and logged) up to this many bytes.
pub const MAX_LOGGED_FIELD: usize = 512;

/// The longest hostname accepted for `myhostname`.
const MAX_HOSTNAME: usize = 255;

/// The longest `reject_footer` template, and the most lines it may produce.
const MAX_FOOTER_TEMPLATE: usize = 1024;
const MAX_FOOTER_LINES: usize = 16;

/// How many bytes of client input postscreen escapes into a deep test's log line (its
/// `PSC_SMTPD_ESCAPE_TEXT(…, 100)`); escaped, they take at most four times as many.
pub const LOGGED_INPUT_BYTES: usize = 100;

/// postscreen prints at most this much of a command name (`%.100s`).
const LOGGED_COMMAND_BYTES: usize = 100;

/// `postscreen_forbidden_commands` as Postfix 3.7 and later ship it
/// (`$smtpd_forbidden_commands`).
pub const DEFAULT_FORBIDDEN_COMMANDS: &str = "CONNECT GET POST regexp:{{/^[^A-Z]/ Bogus}}";

/// The most entries a forbidden command list may have, and the longest entry.
pub const MAX_FORBIDDEN_COMMANDS: usize = 64;
pub const MAX_FORBIDDEN_COMMAND_LEN: usize = 64;

/// How long closing a TLS session (its close_notify) may take after the last reply.
const TLS_CLOSE_TIME_LIMIT: Duration = Duration::from_secs(5);

/// The longest handshake error text put in a log line.
const MAX_TLS_ERROR_TEXT: usize = 200;

// ---------------------------------------------------------------------------------------
// Replies

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
    pub fn new(code: u16, text: impl Into<String>) -> Result<Self, EngineError> {
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

    fn fixed(code: u16, text: &str) -> Self {
        Self::sanitized(code, text.to_string())
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The text of each line, without code and separator.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The text of the first line.
    pub fn text(&self) -> &str {
        &self.lines[0]
    }

    /// Adds `text` to the end of the last line (a footer's `\c` form), cut where the line
    /// would grow past [`MAX_REPLY_TEXT`].
    fn extend_last_line(&mut self, text: &str) {
        if let Some(last) = self.lines.last_mut() {
            last.push_str(text);
            *last = sanitized_line(std::mem::take(last));
        }
    }

    /// Adds a line after the last one (a footer line, an EHLO keyword), kept to the same
    /// rules as the first.
    fn push_line(&mut self, text: String) {
        self.lines.push(sanitized_line(text));
    }

    /// The enhanced status code (RFC 3463) the first line starts with, such as `4.3.2`.
    pub fn enhanced_status(&self) -> Option<&str> {
        let len = enhanced_status_len(self.text());
        (len > 0).then(|| &self.text()[..len])
    }

    /// A 4xx or 5xx reply: the ones `soft_bounce` and `reject_footer` change.
    pub fn is_negative(&self) -> bool {
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
    pub fn soft_bounced(&self) -> Reply {
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

    // Connection-level replies (postscreen.c, postscreen_send.c).

    /// More than `client_connection_count_limit` connections from one address.
    pub fn too_many_connections() -> Self {
        Self::fixed(421, "4.7.0 Error: too many connections")
    }

    /// The hand-off queue (`post_queue_limit`) is full, or the MTA cannot be reached.
    pub fn all_server_ports_busy() -> Self {
        Self::fixed(421, "4.3.2 All server ports are busy")
    }

    /// The screening queue (`pre_queue_limit`) is full.
    pub fn all_screening_ports_busy() -> Self {
        Self::fixed(421, "4.3.2 All screening ports are busy")
    }

    /// An internal failure: endpoint lookup, PROXY header, hand-off, and the X21 final reply.
    pub fn no_system_resources() -> Self {
        Self::fixed(421, "4.3.2 No system resources")
    }

    /// `postscreen_command_time_limit` expired.
    pub fn timeout_exceeded(myhostname: &str) -> Self {
        Self::sanitized(421, format!("4.4.2 {myhostname} Error: timeout exceeded"))
    }

    /// Command count or line length limit reached.
    pub fn service_unavailable_421(myhostname: &str) -> Self {
        Self::sanitized(
            421,
            format!("{myhostname} Service unavailable - try again later"),
        )
    }

    /// The default `rcpt_reply`: come back later (the deep tests' reconnect).
    pub fn service_unavailable_450() -> Self {
        Self::fixed(450, "4.3.2 Service currently unavailable")
    }

    /// `postscreen_denylist_action = enforce`, at RCPT.
    pub fn denylist_enforce() -> Self {
        Self::fixed(550, "5.3.2 Service currently unavailable")
    }

    /// `postscreen_denylist_action = drop`, at once.
    pub fn denylist_drop() -> Self {
        Self::fixed(521, "5.3.2 Service currently unavailable")
    }

    /// Pregreet, pipelining, bare newline or non-SMTP command with action `enforce`, at RCPT.
    pub fn protocol_error_enforce() -> Self {
        Self::fixed(550, "5.5.1 Protocol error")
    }

    /// Pregreet, pipelining or bare newline with action `drop`, at once.
    pub fn protocol_error_drop() -> Self {
        Self::fixed(521, "5.5.1 Protocol error")
    }

    /// Non-SMTP command with action `drop` (the same words as smtpd's forbidden commands).
    pub fn non_smtp_command_drop() -> Self {
        Self::fixed(521, "5.7.0 Error: I can break rules, too. Goodbye.")
    }

    /// `postscreen_dnsbl_action = enforce`: `list` is the highest-weighted listing's name
    /// after `dnsbl_reply_map`.
    pub fn dnsbl_enforce(client: IpAddr, list: &str) -> Result<Self, EngineError> {
        Self::dnsbl(550, client, list)
    }

    /// `postscreen_dnsbl_action = drop`.
    pub fn dnsbl_drop(client: IpAddr, list: &str) -> Result<Self, EngineError> {
        Self::dnsbl(521, client, list)
    }

    fn dnsbl(code: u16, client: IpAddr, list: &str) -> Result<Self, EngineError> {
        Self::new(
            code,
            format!(
                "5.7.1 Service unavailable; client [{}] blocked using {list}",
                canonical(client)
            ),
        )
    }

    // The engine's replies (postscreen_smtpd.c).

    /// `220 $smtpd_banner`.
    pub fn greeting(smtpd_banner: &str) -> Self {
        Self::sanitized(220, smtpd_banner.to_string())
    }

    /// The reply to HELO: `250 $myhostname`.
    pub fn helo(myhostname: &str) -> Self {
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

    pub fn helo_syntax() -> Self {
        Self::fixed(501, "Syntax: HELO hostname")
    }

    pub fn ehlo_syntax() -> Self {
        Self::fixed(501, "Syntax: EHLO hostname")
    }

    /// RSET and NOOP.
    pub fn ok() -> Self {
        Self::fixed(250, "2.0.0 Ok")
    }

    /// MAIL accepted.
    pub fn sender_ok() -> Self {
        Self::fixed(250, "2.1.0 Ok")
    }

    /// MAIL or ETRN before HELO/EHLO with `helo_required`.
    pub fn send_helo_first() -> Self {
        Self::fixed(503, "5.5.1 Error: send HELO/EHLO first")
    }

    pub fn nested_mail() -> Self {
        Self::fixed(503, "5.5.1 Error: nested MAIL command")
    }

    pub fn mail_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: MAIL FROM:<address>")
    }

    /// postscreen has this text but its address parser never fails, so it is never sent;
    /// kept for completeness.
    pub fn bad_sender_syntax() -> Self {
        Self::fixed(501, "5.1.7 Bad sender address syntax")
    }

    /// RCPT before MAIL, and BDAT before MAIL.
    pub fn need_mail() -> Self {
        Self::fixed(503, "5.5.1 Error: need MAIL command")
    }

    pub fn rcpt_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: RCPT TO:<address>")
    }

    /// Never sent, like [`Reply::bad_sender_syntax`].
    pub fn bad_recipient_syntax() -> Self {
        Self::fixed(501, "5.1.3 Bad recipient address syntax")
    }

    /// DATA or BDAT after MAIL: every recipient was refused.
    pub fn no_valid_recipients() -> Self {
        Self::fixed(554, "5.5.1 Error: no valid recipients")
    }

    /// DATA before MAIL.
    pub fn need_rcpt() -> Self {
        Self::fixed(503, "5.5.1 Error: need RCPT command")
    }

    pub fn data_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: DATA")
    }

    /// BDAT before MAIL.
    pub fn bdat_need_mail() -> Self {
        Self::fixed(554, "5.5.1 Error: need MAIL command")
    }

    pub fn bdat_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: BDAT count [LAST]")
    }

    /// STARTTLS without TLS, and BDAT when CHUNKING is not announced.
    pub fn not_implemented() -> Self {
        Self::fixed(502, "5.5.1 Error: command not implemented")
    }

    /// AUTH, XCLIENT, XFORWARD and every unknown command.
    pub fn not_recognized() -> Self {
        Self::fixed(502, "5.5.2 Error: command not recognized")
    }

    pub fn vrfy_disabled() -> Self {
        Self::fixed(502, "5.5.1 VRFY command is disabled")
    }

    pub fn vrfy_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: VRFY address")
    }

    pub fn etrn_refused() -> Self {
        Self::fixed(458, "Unable to queue messages")
    }

    pub fn etrn_syntax() -> Self {
        Self::fixed(500, "Syntax: ETRN domain")
    }

    /// STARTTLS accepted: the TLS handshake follows.
    pub fn starttls_ready() -> Self {
        Self::fixed(220, "2.0.0 Ready to start TLS")
    }

    /// STARTTLS accepted but TLS cannot be started.
    pub fn tls_unavailable() -> Self {
        Self::fixed(454, "4.7.0 TLS not available due to local problem")
    }

    pub fn tls_already_active() -> Self {
        Self::fixed(554, "5.5.1 Error: TLS already active")
    }

    pub fn starttls_syntax() -> Self {
        Self::fixed(501, "5.5.4 Syntax: STARTTLS")
    }

    /// Any command but HELO, EHLO, STARTTLS, NOOP and QUIT while TLS is mandatory.
    pub fn starttls_first() -> Self {
        Self::fixed(530, "5.7.0 Must issue a STARTTLS command first")
    }

    /// QUIT.
    pub fn bye() -> Self {
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

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

// ---------------------------------------------------------------------------------------
// soft_bounce and reject_footer

/// What postscreen does to every reply on its way out: `soft_bounce` and `reject_footer`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyStyle {
    soft_bounce: bool,
    footer: Option<ReplyFooter>,
}

impl ReplyStyle {
    /// `reject_footer` is checked here; `None` or an empty text means no footer.
    pub fn new(soft_bounce: bool, reject_footer: Option<&str>) -> Result<Self, EngineError> {
        let footer = match reject_footer {
            Some(template) => ReplyFooter::parse(template)?,
            None => None,
        };
        Ok(Self {
            soft_bounce,
            footer,
        })
    }

    /// The reply as the client gets it: soft-bounced when configured, then, if it is a 4xx
    /// or 5xx reply, with the footer, its macros expanded for `client` and `server_name`.
    pub fn apply(&self, reply: &Reply, client: SocketAddr, server_name: &str) -> Reply {
        let reply = self.for_log(reply);
        match &self.footer {
            Some(footer) if reply.is_negative() => footer.apply(&reply, client, server_name),
            _ => reply,
        }
    }

    /// The reply as postscreen logs it: soft-bounced when configured, without the footer.
    pub fn for_log(&self, reply: &Reply) -> Reply {
        if self.soft_bounce {
            reply.soft_bounced()
        } else {
            reply.clone()
        }
    }
}

/// A parsed `reject_footer` (postscreen's `$smtpd_reject_footer`, Postfix's
/// `smtp_reply_footer()` rules).
///
/// The footer becomes extra lines of the reply, each with the reply's code and enhanced
/// status: `550 5.7.1 blocked` with footer `Call 555-0101` is sent as `550-5.7.1 blocked` /
/// `550 5.7.1 Call 555-0101`. The two characters `\n` (or a real newline, which a TOML
/// string makes of `"\n"`) start another line. A template starting with the two characters
/// `\c` appends its first line to the reply's last line instead. Macros: `$client_address`,
/// `$client_port`, `$server_name` (= `myhostname`), `$localtime` (`Mmm dd HH:MM:SS`, local
/// time), in `$name`, `${name}` or `$(name)` form; `$$` is a dollar sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyFooter {
    join_first: bool,
    lines: Vec<Vec<FooterPiece>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum FooterPiece {
    Text(String),
    ClientAddress,
    ClientPort,
    ServerName,
    LocalTime,
}

impl FooterPiece {
    /// The most bytes this piece can expand to.
    fn max_len(&self) -> usize {
        match self {
            FooterPiece::Text(text) => text.len(),
            // "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            FooterPiece::ClientAddress => 45,
            FooterPiece::ClientPort => 5,
            FooterPiece::ServerName => MAX_HOSTNAME,
            FooterPiece::LocalTime => 15,
        }
    }
}

impl ReplyFooter {
    /// Parses a footer template; an empty one is no footer.
    pub fn parse(template: &str) -> Result<Option<Self>, EngineError> {
        let err = |why: String| EngineError::Setting {
            setting: "reject_footer",
            value: template.to_string(),
            why,
        };
        if template.is_empty() {
            return Ok(None);
        }
        if template.len() > MAX_FOOTER_TEMPLATE {
            return Err(err(format!("longer than {MAX_FOOTER_TEMPLATE} bytes")));
        }
        let (join_first, body) = match template.strip_prefix("\\c") {
            Some(rest) => (true, rest),
            None => (false, template),
        };
        let mut lines = Vec::new();
        for (number, segment) in body.split('\n').flat_map(|s| s.split("\\n")).enumerate() {
            if number >= MAX_FOOTER_LINES {
                return Err(err(format!("more than {MAX_FOOTER_LINES} lines")));
            }
            let pieces = parse_footer_line(segment).map_err(&err)?;
            let max: usize = pieces.iter().map(FooterPiece::max_len).sum();
            // Room for the copied enhanced status code and its space.
            if max > MAX_REPLY_TEXT - 10 {
                return Err(err(format!(
                    "line {} can expand to {max} bytes; a reply line holds {}",
                    number + 1,
                    MAX_REPLY_TEXT - 10
                )));
            }
            lines.push(pieces);
        }
        Ok(Some(Self { join_first, lines }))
    }

    fn apply(&self, reply: &Reply, client: SocketAddr, server_name: &str) -> Reply {
        let status = reply.enhanced_status().map(str::to_string);
        let mut footed = reply.clone();
        for (i, pieces) in self.lines.iter().enumerate() {
            let text = expand_footer_line(pieces, client, server_name);
            if i == 0 && self.join_first {
                footed.extend_last_line(&text);
            } else {
                footed.push_line(match &status {
                    Some(status) => format!("{status} {text}"),
                    None => text,
                });
            }
        }
        footed
    }
}

fn parse_footer_line(segment: &str) -> Result<Vec<FooterPiece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = segment.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_control() {
            return Err(format!("control character {c:?}"));
        }
        if c != '$' {
            text.push(c);
            continue;
        }
        let name: String = match chars.peek().copied() {
            Some('$') => {
                chars.next();
                text.push('$');
                continue;
            }
            Some(open @ ('{' | '(')) => {
                chars.next();
                let close = if open == '{' { '}' } else { ')' };
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some(c) if c == close => break,
                        Some(c) if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                        _ => {
                            return Err(format!(
                                "${open}…{close} must hold only a macro name (client_address, \
                                 client_port, server_name, localtime)"
                            ));
                        }
                    }
                }
                name
            }
            _ => {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if !(c.is_ascii_alphanumeric() || c == '_') {
                        break;
                    }
                    name.push(c);
                    chars.next();
                }
                name
            }
        };
        let piece = match name.as_str() {
            "client_address" => FooterPiece::ClientAddress,
            "client_port" => FooterPiece::ClientPort,
            "server_name" => FooterPiece::ServerName,
            "localtime" => FooterPiece::LocalTime,
            "" => return Err("a $ that starts no macro name (write $$ for a dollar sign)".into()),
            other => {
                return Err(format!(
                    "unknown macro ${other} (known: $client_address, $client_port, \
                     $server_name, $localtime)"
                ));
            }
        };
        if !text.is_empty() {
            pieces.push(FooterPiece::Text(std::mem::take(&mut text)));
        }
        pieces.push(piece);
    }
    if !text.is_empty() {
        pieces.push(FooterPiece::Text(text));
    }
    Ok(pieces)
}

fn expand_footer_line(pieces: &[FooterPiece], client: SocketAddr, server_name: &str) -> String {
    let mut out = String::new();
    for piece in pieces {
        let value = match piece {
            FooterPiece::Text(text) => {
                out.push_str(text);
                continue;
            }
            FooterPiece::ClientAddress => canonical(client.ip()).to_string(),
            FooterPiece::ClientPort => client.port().to_string(),
            FooterPiece::ServerName => server_name.to_string(),
            FooterPiece::LocalTime => local_timestamp(),
        };
        // smtpd_expansion_filter's default: printable ASCII; anything else becomes '_'.
        out.extend(value.chars().map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '_'
            }
        }));
    }
    out
}

/// Now in local time as `Mmm dd HH:MM:SS`, the form of postscreen's `$localtime`.
fn local_timestamp() -> String {
    // SAFETY: time(NULL) only reads the clock; localtime_r writes into the `tm` we own and
    // returns NULL on failure, which is checked. A zeroed `tm` is a valid value (its one
    // pointer field may be null).
    let tm = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "Jan 01 00:00:00".to_string();
        }
        tm
    };
    format_timestamp(tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
}

fn format_timestamp(month: i32, day: i32, hour: i32, minute: i32, second: i32) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = usize::try_from(month)
        .ok()
        .and_then(|m| MONTHS.get(m))
        .unwrap_or(&"Jan");
    format!("{month} {day:02} {hour:02}:{minute:02}:{second:02}")
}

// ---------------------------------------------------------------------------------------
// Deep protocol tests

/// One of postscreen's tests after the 220 greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeepTest {
    /// `postscreen_pipelining_enable`: the client sent a command before the reply to the
    /// previous one (the engine never announces PIPELINING).
    Pipelining,
    /// `postscreen_non_smtp_command_enable`: a header line, invalid UTF-8, or a forbidden
    /// command such as `GET` or `CONNECT`.
    NonSmtpCommand,
    /// `postscreen_bare_newline_enable`: a line ended in LF without CR.
    BareNewline,
}

impl DeepTest {
    pub const ALL: [DeepTest; 3] = [
        DeepTest::Pipelining,
        DeepTest::NonSmtpCommand,
        DeepTest::BareNewline,
    ];

    fn index(self) -> usize {
        match self {
            DeepTest::Pipelining => 0,
            DeepTest::NonSmtpCommand => 1,
            DeepTest::BareNewline => 2,
        }
    }

    /// The reply to a violation whose action is `drop`.
    fn drop_reply(self) -> Reply {
        match self {
            DeepTest::NonSmtpCommand => Reply::non_smtp_command_drop(),
            DeepTest::Pipelining | DeepTest::BareNewline => Reply::protocol_error_drop(),
        }
    }
}

impl From<DeepTest> for Test {
    fn from(test: DeepTest) -> Self {
        match test {
            DeepTest::Pipelining => Test::Pipelining,
            DeepTest::NonSmtpCommand => Test::NonSmtpCommand,
            DeepTest::BareNewline => Test::BareNewline,
        }
    }
}

/// One entry of `postscreen_forbidden_commands`: a command word, or postscreen 3.7's
/// `regexp:{{/^[^A-Z]/ Bogus}}` (a command that does not start with a letter), which the
/// engine knows as a built-in rule instead of running a regular expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForbiddenCommand(ForbiddenRule);

#[derive(Clone, Debug, PartialEq, Eq)]
enum ForbiddenRule {
    /// Compared without regard to case, as Postfix's string lists compare.
    Name(String),
    NotStartingWithLetter,
}

impl ForbiddenCommand {
    /// postscreen's default list, [`DEFAULT_FORBIDDEN_COMMANDS`].
    pub fn defaults() -> Vec<Self> {
        vec![
            Self(ForbiddenRule::Name("CONNECT".into())),
            Self(ForbiddenRule::Name("GET".into())),
            Self(ForbiddenRule::Name("POST".into())),
            Self(ForbiddenRule::NotStartingWithLetter),
        ]
    }

    /// A command that does not start with an ASCII letter (such as a TLS ClientHello sent
    /// without STARTTLS).
    pub fn not_starting_with_letter() -> Self {
        Self(ForbiddenRule::NotStartingWithLetter)
    }

    /// Parses a list in Postfix syntax (entries separated by spaces or commas), such as
    /// [`DEFAULT_FORBIDDEN_COMMANDS`]. An empty list forbids nothing. Besides command words,
    /// the one table accepted is an inline `regexp:` or `pcre:` table holding only the rule
    /// `/^[^A-Z]/` (its result text does not matter).
    pub fn parse_list(text: &str) -> Result<Vec<Self>, EngineError> {
        let err = |why: String| forbidden_error(text, why);
        if text.len() > MAX_FORBIDDEN_COMMANDS * (MAX_FORBIDDEN_COMMAND_LEN + 1) {
            return Err(err("the list is too long".into()));
        }
        let entries = split_postfix_list(text).map_err(&err)?;
        if entries.len() > MAX_FORBIDDEN_COMMANDS {
            return Err(err(format!("more than {MAX_FORBIDDEN_COMMANDS} entries")));
        }
        entries
            .into_iter()
            .map(|entry| Self::parse_entry(entry).map_err(|why| err(format!("{entry:?}: {why}"))))
            .collect()
    }

    /// One entry of the list, for a configuration that gives the entries one by one: a
    /// command word, or the inline table described at [`parse_list`](Self::parse_list).
    pub fn parse(entry: &str) -> Result<Self, EngineError> {
        Self::parse_entry(entry.trim()).map_err(|why| forbidden_error(entry, why))
    }

    fn parse_entry(entry: &str) -> Result<Self, String> {
        if let Some((kind, body)) = split_table(entry) {
            if kind != "regexp" && kind != "pcre" {
                return Err(format!(
                    "{kind}: tables are not supported; list command names, or \
                     regexp:{{{{/^[^A-Z]/ Bogus}}}}"
                ));
            }
            return parse_inline_rule(body).map(|()| Self(ForbiddenRule::NotStartingWithLetter));
        }
        if entry.is_empty() {
            return Err("an empty entry".into());
        }
        if entry.starts_with('!') {
            return Err("negated entries are not supported".into());
        }
        if entry.len() > MAX_FORBIDDEN_COMMAND_LEN {
            return Err(format!("longer than {MAX_FORBIDDEN_COMMAND_LEN} bytes"));
        }
        if !entry.bytes().all(|b| b.is_ascii_graphic()) || entry.contains(['{', '}']) {
            return Err("a command name is printable ASCII without braces".into());
        }
        Ok(Self(ForbiddenRule::Name(entry.to_string())))
    }

    /// Whether the command word `command` (as the client sent it) is forbidden.
    pub fn matches(&self, command: &[u8]) -> bool {
        match &self.0 {
            ForbiddenRule::Name(name) => command.eq_ignore_ascii_case(name.as_bytes()),
            ForbiddenRule::NotStartingWithLetter => {
                command.first().is_some_and(|b| !b.is_ascii_alphabetic())
            }
        }
    }
}

/// The entry as it is written in the configuration.
impl fmt::Display for ForbiddenCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ForbiddenRule::Name(name) => f.write_str(name),
            ForbiddenRule::NotStartingWithLetter => f.write_str("regexp:{{/^[^A-Z]/ Bogus}}"),
        }
    }
}

fn forbidden_error(value: &str, why: String) -> EngineError {
    EngineError::Setting {
        setting: "forbidden_commands",
        value: value.to_string(),
        why,
    }
}

/// Splits a Postfix list at spaces and commas outside braces.
fn split_postfix_list(text: &str) -> Result<Vec<&str>, String> {
    let mut entries = Vec::new();
    let mut depth = 0usize;
    let mut start = None;
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("a '}}' without '{{' at byte {at}"))?;
            }
            c if depth == 0 && (c == ',' || c.is_whitespace()) => {
                if let Some(begin) = start.take() {
                    entries.push(&text[begin..at]);
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(at);
    }
    if depth > 0 {
        return Err("a '{' without '}'".into());
    }
    if let Some(begin) = start {
        entries.push(&text[begin..]);
    }
    Ok(entries)
}

/// `type:rest` when `entry` names a table (a type of letters and digits before a colon).
fn split_table(entry: &str) -> Option<(&str, &str)> {
    let (kind, body) = entry.split_once(':')?;
    (!kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric())).then_some((kind, body))
}

/// Accepts an inline table body `{{/^[^A-Z]/ result}}` (spaces allowed inside the braces).
fn parse_inline_rule(body: &str) -> Result<(), String> {
    let unsupported = || {
        "only the inline table {{/^[^A-Z]/ Bogus}} (a command that does not start with a \
         letter) is supported"
            .to_string()
    };
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(unsupported)?
        .trim();
    let rule = inner
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(unsupported)?
        .trim();
    // One rule: another would be in braces of its own.
    if rule.contains(['{', '}']) {
        return Err(unsupported());
    }
    let result = rule.strip_prefix("/^[^A-Z]/").ok_or_else(unsupported)?;
    // A flag after the pattern (`/^[^A-Z]/i`) would change what it matches.
    if !(result.is_empty() || result.starts_with(char::is_whitespace)) {
        return Err(unsupported());
    }
    Ok(())
}

/// Which deep tests run, with what action, and postscreen's forbidden command list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeepTests {
    /// `postscreen_pipelining_enable` and `…_action`; `None`: the test does not run.
    pub pipelining: Option<TestAction>,
    /// `postscreen_non_smtp_command_enable` and `…_action`.
    pub non_smtp_command: Option<TestAction>,
    /// `postscreen_bare_newline_enable` and `…_action`.
    pub bare_newline: Option<TestAction>,
    /// `postscreen_forbidden_commands`: commands the non-SMTP test refuses besides header
    /// lines and invalid UTF-8 (see [`ForbiddenCommand::parse_list`]).
    pub forbidden_commands: Vec<ForbiddenCommand>,
}

impl Default for DeepTests {
    /// postscreen's defaults: no deep test runs; the 3.7 forbidden command list.
    fn default() -> Self {
        Self {
            pipelining: None,
            non_smtp_command: None,
            bare_newline: None,
            forbidden_commands: ForbiddenCommand::defaults(),
        }
    }
}

impl DeepTests {
    pub fn action(&self, test: DeepTest) -> Option<TestAction> {
        match test {
            DeepTest::Pipelining => self.pipelining,
            DeepTest::NonSmtpCommand => self.non_smtp_command,
            DeepTest::BareNewline => self.bare_newline,
        }
    }

    /// The non-SMTP test's verdict on a command word the engine does not know: a header
    /// line, invalid UTF-8 when SMTPUTF8 is on, or a forbidden command.
    fn is_non_smtp(&self, command: &[u8], smtputf8: bool) -> bool {
        is_header(command)
            || (smtputf8 && std::str::from_utf8(command).is_err())
            || self
                .forbidden_commands
                .iter()
                .any(|rule| rule.matches(command))
    }
}

/// What one session earned in each deep test (values of [`crate::test_state::Outcome`]):
/// `NotCompleted` when the test did not run or the client never reached RCPT TO, `Passed`
/// when it reached RCPT TO without violating the test, `Ignored` after a violation whose
/// action is `ignore` (the caller counts it passed until the shortest TTL), `Failed` after
/// one whose action is `enforce` or `drop`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeepTestResults {
    pub pipelining: TestOutcome,
    pub non_smtp_command: TestOutcome,
    pub bare_newline: TestOutcome,
}

impl DeepTestResults {
    pub fn get(&self, test: DeepTest) -> TestOutcome {
        match test {
            DeepTest::Pipelining => self.pipelining,
            DeepTest::NonSmtpCommand => self.non_smtp_command,
            DeepTest::BareNewline => self.bare_newline,
        }
    }

    /// Copies the results into the session's record for [`crate::test_state::conclude`], leaving
    /// a test that did not complete here as it was.
    pub fn record_into(&self, results: &mut SessionResults) {
        for test in DeepTest::ALL {
            let outcome = self.get(test);
            if outcome == TestOutcome::NotCompleted {
                continue;
            }
            results.set_outcome(test.into(), outcome);
        }
    }
}

/// The deep tests in one session: which run with what action, which the client violated,
/// and what each earned so far.
#[derive(Clone, Copy, Debug, Default)]
struct SessionDeepTests([DeepTestState; 3]);

/// One deep test in one session.
#[derive(Clone, Copy, Debug, Default)]
struct DeepTestState {
    action: Option<TestAction>,
    /// The client violated the test: it is not checked again this session.
    fired: bool,
    outcome: TestOutcome,
}

impl SessionDeepTests {
    /// The tests as `tests` configures them.
    fn new(tests: &DeepTests) -> Self {
        let mut session = Self::default();
        for test in DeepTest::ALL {
            session.0[test.index()].action = tests.action(test);
        }
        session
    }

    /// Runs `test` with `action` from now on, or not at all with `None`. A test the client
    /// already violated keeps its result.
    fn set(&mut self, test: DeepTest, action: Option<TestAction>) {
        let state = &mut self.0[test.index()];
        if !state.fired {
            state.action = action;
        }
    }

    /// No test runs from now on; the results so far stay.
    fn stop_all(&mut self) {
        for state in &mut self.0 {
            state.action = None;
        }
    }

    /// Whether `test` runs and has not fired yet.
    fn armed(&self, test: DeepTest) -> bool {
        let state = &self.0[test.index()];
        state.action.is_some() && !state.fired
    }

    /// Records that the client violated `test`: the test is not checked again this session,
    /// and the client earns `Ignored` (action `ignore`) or `Failed`. Returns the action to
    /// apply, or `None` when the test does not run.
    fn violated(&mut self, test: DeepTest) -> Option<TestAction> {
        let state = &mut self.0[test.index()];
        let action = state.action?;
        state.fired = true;
        state.outcome = match action {
            TestAction::Ignore => TestOutcome::Ignored,
            TestAction::Enforce | TestAction::Drop => TestOutcome::Failed,
        };
        Some(action)
    }

    /// The client reached RCPT TO: every test that runs and has not fired passes. A later
    /// violation can still fail it.
    fn pass_at_rcpt(&mut self) {
        for state in &mut self.0 {
            if state.action.is_some() && !state.fired {
                state.outcome = TestOutcome::Passed;
            }
        }
    }

    /// What the session earned in each test so far.
    fn results(&self) -> DeepTestResults {
        let outcome = |test: DeepTest| self.0[test.index()].outcome;
        DeepTestResults {
            pipelining: outcome(DeepTest::Pipelining),
            non_smtp_command: outcome(DeepTest::NonSmtpCommand),
            bare_newline: outcome(DeepTest::BareNewline),
        }
    }
}

/// Postfix's `is_header()`: a label of printable ASCII (no space, no colon), optional
/// spaces or tabs, then a colon.
fn is_header(command: &[u8]) -> bool {
    let label = command
        .iter()
        .take_while(|&&b| b.is_ascii_graphic() && b != b':')
        .count();
    if label == 0 {
        return false;
    }
    let rest = &command[label..];
    let blanks = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    rest.get(blanks) == Some(&b':')
}

/// A command word as postscreen prints it (`printable(command, '?')`, `%.100s`): printable
/// ASCII kept, other printable characters kept when SMTPUTF8 is on, every other byte `?`.
fn printable_command(command: &[u8], utf8: bool) -> String {
    // Every byte yields at least one byte of output, so the first 100 are all that show.
    let command = &command[..command.len().min(LOGGED_COMMAND_BYTES)];
    let mut out = String::new();
    for chunk in command.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == ' ' || c.is_ascii_graphic() || (utf8 && !c.is_ascii() && !c.is_control()) {
                out.push(c);
            } else {
                out.extend(std::iter::repeat_n('?', c.len_utf8()));
            }
        }
        out.extend(std::iter::repeat_n('?', chunk.invalid().len()));
    }
    truncate_at_char(&mut out, LOGGED_COMMAND_BYTES);
    out
}

/// Client input as a deep test logs it: its first [`LOGGED_INPUT_BYTES`] bytes, C-escaped.
fn escape_input(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(LOGGED_INPUT_BYTES)];
    c_escape(bytes, 4 * LOGGED_INPUT_BYTES)
}

// ---------------------------------------------------------------------------------------
// Settings

/// The engine's configuration, with postscreen's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// `myhostname`: the HELO reply, the first EHLO line and the 421 replies.
    pub myhostname: String,
    /// `smtpd_banner`: the text of the `220` greeting.
    pub smtpd_banner: String,
    /// How RCPT (and VRFY) are refused until the caller says otherwise
    /// ([`Engine::set_rcpt_reply`]). Must be 4xx or 5xx.
    pub rcpt_reply: Reply,
    /// `postscreen_command_count_limit`: commands per session, QUIT not counted.
    pub command_count_limit: u32,
    /// `line_length_limit`: a command line must be shorter than this many bytes.
    pub line_length_limit: usize,
    /// `postscreen_helo_required`: MAIL and ETRN need HELO or EHLO first.
    pub helo_required: bool,
    /// `postscreen_disable_vrfy_command`: VRFY is refused with 502 and not announced.
    pub disable_vrfy: bool,
    /// `soft_bounce`: every 5xx reply is sent, and logged, as 4xx.
    pub soft_bounce: bool,
    /// `postscreen_reject_footer`: text added to 4xx and 5xx replies (see [`ReplyFooter`]).
    pub reject_footer: Option<String>,
    /// `smtputf8_enable`: announce SMTPUTF8.
    pub smtputf8: bool,
    /// `message_size_limit`, announced as `SIZE`; 0 announces `SIZE` without a number.
    pub message_size_limit: u64,
    /// STARTTLS is announced and accepted (`postscreen_tls_security_level` may/encrypt).
    pub starttls_offered: bool,
    /// The deep protocol tests: none by default, as in postscreen.
    pub deep_tests: DeepTests,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self::new("localhost")
    }
}

impl EngineSettings {
    /// postscreen's defaults for a host named `myhostname`, with the banner
    /// `<myhostname> ESMTP`.
    pub fn new(myhostname: &str) -> Self {
        Self {
            myhostname: myhostname.to_string(),
            smtpd_banner: format!("{myhostname} ESMTP"),
            rcpt_reply: Reply::service_unavailable_450(),
            command_count_limit: DEFAULT_COMMAND_COUNT_LIMIT,
            line_length_limit: DEFAULT_LINE_LENGTH_LIMIT,
            helo_required: false,
            disable_vrfy: false,
            soft_bounce: false,
            reject_footer: None,
            smtputf8: true,
            message_size_limit: DEFAULT_MESSAGE_SIZE_LIMIT,
            starttls_offered: false,
            deep_tests: DeepTests::default(),
        }
    }

    /// Checks every value; [`Engine::new`] does the same.
    pub fn validate(&self) -> Result<(), EngineError> {
        self.style().map(|_| ())
    }

    fn style(&self) -> Result<ReplyStyle, EngineError> {
        let err = |setting, value: &dyn fmt::Display, why: &str| EngineError::Setting {
            setting,
            value: value.to_string(),
            why: why.to_string(),
        };
        let host = &self.myhostname;
        if host.is_empty() || host.len() > MAX_HOSTNAME {
            return Err(err("myhostname", host, "must be 1 to 255 characters long"));
        }
        if !host.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(
                "myhostname",
                host,
                "must be printable ASCII without spaces",
            ));
        }
        Reply::new(220, self.smtpd_banner.as_str())
            .map_err(|e| err("smtpd_banner", &self.smtpd_banner, &e.to_string()))?;
        if !self.rcpt_reply.is_negative() {
            return Err(err(
                "rcpt_reply",
                &self.rcpt_reply,
                "must be a 4xx or 5xx reply: the engine never accepts mail",
            ));
        }
        if !(1..=MAX_COMMAND_COUNT_LIMIT).contains(&self.command_count_limit) {
            return Err(err(
                "command_count_limit",
                &self.command_count_limit,
                &format!("must be 1..={MAX_COMMAND_COUNT_LIMIT}"),
            ));
        }
        let max_line = crate::smtpd::line::MAX_LINE_LENGTH_LIMIT;
        if !(MIN_LINE_LENGTH_LIMIT..=max_line).contains(&self.line_length_limit) {
            return Err(err(
                "line_length_limit",
                &self.line_length_limit,
                &format!("must be {MIN_LINE_LENGTH_LIMIT}..={max_line}"),
            ));
        }
        if self.deep_tests.forbidden_commands.len() > MAX_FORBIDDEN_COMMANDS {
            return Err(err(
                "forbidden_commands",
                &self.deep_tests.forbidden_commands.len(),
                &format!("more than {MAX_FORBIDDEN_COMMANDS} entries"),
            ));
        }
        ReplyStyle::new(self.soft_bounce, self.reject_footer.as_deref())
    }
}

// ---------------------------------------------------------------------------------------
// Events

/// The protocol a client spoke: ESMTP once it sent EHLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Smtp,
    Esmtp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Smtp => "SMTP",
            Proto::Esmtp => "ESMTP",
        })
    }
}

/// What happened before the first command (postscreen's `where` before any command).
pub const AFTER_CONNECT: &str = "CONNECT";
/// The `where` of a command postscreen does not know (its `PSC_SMTPD_CMD_UNIMPL`).
pub const AFTER_UNKNOWN: &str = "UNIMPL";

/// Something postscreen logs. [`Event::line`] renders the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A recipient was refused: `NOQUEUE: reject: RCPT from [a]:p: <reply>; from=<…>,
    /// to=<…>, proto=ESMTP, helo=<…>`. `reply` is as logged (soft-bounced, no footer).
    RcptRejected {
        reply: Reply,
        from: String,
        to: String,
        proto: Proto,
        helo: String,
    },
    /// `DATA without valid RCPT from [a]:p`
    DataWithoutRcpt,
    /// `BDAT without valid RCPT from [a]:p`
    BdatWithoutRcpt,
    /// `COMMAND COUNT LIMIT from [a]:p after <previous command>`
    CommandCountLimit { after: &'static str },
    /// `COMMAND LENGTH LIMIT from [a]:p after <last command>`
    CommandLengthLimit { after: &'static str },
    /// `COMMAND TIME LIMIT from [a]:p after <last command or CONNECT>`
    CommandTimeLimit { after: &'static str },
    /// `HANGUP after <secs> from [a]:p in tests after SMTP handshake`: the client went away
    /// (or could not be written to) `after` the engine started.
    Hangup { after: Duration },
    /// `COMMAND PIPELINING from [a]:p after <command>: <pending input>`: the command word as
    /// the client sent it (printable), and up to [`LOGGED_INPUT_BYTES`] of the input that
    /// followed it, C-escaped (the lab's `after EHLO: MAIL FROM:<p@example.org>\r\n`).
    CommandPipelining { command: String, pending: String },
    /// `NON-SMTP COMMAND from [a]:p after <previous command or CONNECT>: <command> <rest>`:
    /// the command word (printable) and the rest of its line, C-escaped.
    NonSmtpCommand {
        after: &'static str,
        command: String,
        rest: String,
    },
    /// `BARE NEWLINE from [a]:p after <line>`: the offending line's text, C-escaped (the
    /// lab's `after EHLO b.example`).
    BareNewline { line: String },
    /// `Anonymous TLS connection established from [a]:p: TLSv1.3 with cipher … (256/256
    /// bits)`, tlsproxy's line after STARTTLS.
    TlsEstablished { summary: tls::Summary },
    /// `SSL_accept error from [a]:p: <reason>`, tlsproxy's line for a failed handshake
    /// (`lost connection` when the client went away).
    TlsHandshakeFailed { reason: String },
}

impl Event {
    /// The log line for a client at `client`.
    pub fn line(&self, client: SocketAddr) -> EventLine<'_> {
        EventLine {
            event: self,
            client,
        }
    }
}

/// An [`Event`] with its client: `Display` gives postscreen's log text.
pub struct EventLine<'a> {
    event: &'a Event,
    client: SocketAddr,
}

impl fmt::Display for EventLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client = ClientAddr(self.client);
        match self.event {
            Event::RcptRejected {
                reply,
                from,
                to,
                proto,
                helo,
            } => write!(
                f,
                "NOQUEUE: reject: RCPT from {client}: {reply}; from=<{from}>, to=<{to}>, \
                 proto={proto}, helo=<{helo}>"
            ),
            Event::DataWithoutRcpt => write!(f, "DATA without valid RCPT from {client}"),
            Event::BdatWithoutRcpt => write!(f, "BDAT without valid RCPT from {client}"),
            Event::CommandCountLimit { after } => {
                write!(f, "COMMAND COUNT LIMIT from {client} after {after}")
            }
            Event::CommandLengthLimit { after } => {
                write!(f, "COMMAND LENGTH LIMIT from {client} after {after}")
            }
            Event::CommandTimeLimit { after } => {
                write!(f, "COMMAND TIME LIMIT from {client} after {after}")
            }
            Event::Hangup { after } => write!(
                f,
                "HANGUP after {} from {client} in tests after SMTP handshake",
                DelayDisplay(*after)
            ),
            Event::CommandPipelining { command, pending } => write!(
                f,
                "COMMAND PIPELINING from {client} after {command}: {pending}"
            ),
            Event::NonSmtpCommand {
                after,
                command,
                rest,
            } => write!(
                f,
                "NON-SMTP COMMAND from {client} after {after}: {command} {rest}"
            ),
            Event::BareNewline { line } => write!(f, "BARE NEWLINE from {client} after {line}"),
            Event::TlsEstablished { summary } => write!(
                f,
                "Anonymous TLS connection established from {client}: {summary}"
            ),
            Event::TlsHandshakeFailed { reason } => {
                write!(f, "SSL_accept error from {client}: {reason}")
            }
        }
    }
}

/// `[address]:port`, as postscreen writes a client; an IPv4-mapped IPv6 address is shown
/// as IPv4, as Postfix does.
pub struct ClientAddr(pub SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]:{}", canonical(self.0.ip()), self.0.port())
    }
}

/// An elapsed time as Postfix logs delays (`format_tv` with two significant digits and at
/// most two decimals): `0.24`, `1.2`, `3`, `17`.
pub struct DelayDisplay(pub Duration);

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

// ---------------------------------------------------------------------------------------
// The engine

/// What the engine wants after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read the next command.
    Continue,
    /// Stop reading. For [`SessionEnd::StartTls`] the caller answers (see there); otherwise
    /// it closes the connection after the reply.
    Stop(SessionEnd),
}

/// Why the engine stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client sent QUIT.
    Quit,
    /// DATA or BDAT: postscreen refuses and hangs up rather than read a message.
    DataRefused,
    /// The X21 final reply was sent ([`Engine::set_final_reply`]).
    FinalReply,
    CommandCountLimit,
    CommandLengthLimit,
    CommandTimeLimit,
    /// The client closed the connection, or writing to it failed.
    Hangup,
    /// STARTTLS was accepted and nothing was sent: the caller sends [`Engine::tls_ready`],
    /// does the handshake and calls [`Engine::tls_established`], or sends
    /// [`Engine::tls_unavailable`]; then it runs [`serve`] again. [`serve_with_tls`] does
    /// all of this itself and never returns this.
    StartTls,
    /// A deep test failed with action `drop`: its `521` reply was sent.
    Dropped(DeepTest),
}

/// The engine's answer to one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The reply to send, soft-bounce and footer applied.
    pub reply: Option<Reply>,
    /// What to log, in order.
    pub events: Vec<Event>,
    pub next: Next,
}

impl Step {
    /// The bytes to write to the client (empty when there is no reply).
    pub fn bytes(&self) -> Vec<u8> {
        self.reply.as_ref().map(Reply::to_bytes).unwrap_or_default()
    }

    /// The connection is to be closed once the reply is sent.
    pub fn closes(&self) -> bool {
        matches!(self.next, Next::Stop(end) if end != SessionEnd::StartTls)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Helo,
    Ehlo,
    StartTls,
    Xclient,
    Xforward,
    Auth,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Vrfy,
    Etrn,
    Quit,
}

/// postscreen's command table. AUTH, XCLIENT and XFORWARD are known but disabled.
const COMMANDS: [(&str, Command); 15] = [
    ("HELO", Command::Helo),
    ("EHLO", Command::Ehlo),
    ("STARTTLS", Command::StartTls),
    ("XCLIENT", Command::Xclient),
    ("XFORWARD", Command::Xforward),
    ("AUTH", Command::Auth),
    ("MAIL", Command::Mail),
    ("RCPT", Command::Rcpt),
    ("DATA", Command::Data),
    ("BDAT", Command::Bdat),
    ("RSET", Command::Rset),
    ("NOOP", Command::Noop),
    ("VRFY", Command::Vrfy),
    ("ETRN", Command::Etrn),
    ("QUIT", Command::Quit),
];

impl Command {
    /// The command `word` names, without regard to case, with its name as log lines print
    /// it; `None` for a command postscreen does not know.
    fn lookup(word: &[u8]) -> Option<(&'static str, Command)> {
        COMMANDS
            .iter()
            .find(|(known, _)| word.eq_ignore_ascii_case(known.as_bytes()))
            .copied()
    }
}

/// One client's session with the dummy SMTP engine.
#[derive(Debug)]
pub struct Engine {
    settings: Arc<EngineSettings>,
    style: ReplyStyle,
    client: SocketAddr,
    rcpt_reply: Reply,
    final_reply: Option<Reply>,
    pregreeted: bool,
    tls_active: bool,
    helo: Option<String>,
    sender: Option<String>,
    proto: Proto,
    last_command: &'static str,
    command_count: u32,
    rcpt_reached: bool,
    stopped: Option<SessionEnd>,
    /// When [`serve`] first ran: the start of "tests after SMTP handshake".
    started: Option<Instant>,
    /// The driver sent the greeting (or decided not to): never twice in a session.
    greeting_done: bool,
    /// Which deep tests run in this session, which fired, and what each earned.
    deep: SessionDeepTests,
}

impl Engine {
    /// An engine for one client, or the first setting that is wrong.
    pub fn new(
        settings: impl Into<Arc<EngineSettings>>,
        client: SocketAddr,
    ) -> Result<Self, EngineError> {
        let settings = settings.into();
        let style = settings.style()?;
        let deep = SessionDeepTests::new(&settings.deep_tests);
        Ok(Self {
            rcpt_reply: settings.rcpt_reply.clone(),
            settings,
            style,
            client,
            final_reply: None,
            pregreeted: false,
            tls_active: false,
            helo: None,
            sender: None,
            proto: Proto::Smtp,
            last_command: AFTER_CONNECT,
            command_count: 0,
            rcpt_reached: false,
            stopped: None,
            started: None,
            greeting_done: false,
            deep,
        })
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// The client talked before the greeting: it gets no `220` from the engine
    /// (postscreen: fewer NON-SMTP COMMAND events, better sender and recipient logging).
    pub fn set_pregreeted(&mut self) {
        self.pregreeted = true;
    }

    /// Refuse recipients with `reply` from now on (an enforce action; the last one set wins).
    pub fn set_rcpt_reply(&mut self, reply: Reply) -> Result<(), EngineError> {
        if !reply.is_negative() {
            return Err(EngineError::Setting {
                setting: "rcpt_reply",
                value: reply.to_string(),
                why: "must be a 4xx or 5xx reply: the engine never accepts mail".into(),
            });
        }
        self.rcpt_reply = reply;
        Ok(())
    }

    /// postscreen's X21 mode: answer the next command but QUIT with `reply` and hang up.
    /// Used when a hand-off fails after the `220-` teaser, so that the client never sees
    /// `220-` followed by `421`. No deep test runs in this mode.
    pub fn set_final_reply(&mut self, reply: Reply) {
        self.final_reply = Some(reply);
        self.deep.stop_all();
    }

    /// Runs `test` with `action` in this session, or not at all with `None`, whatever the
    /// settings say. postscreen turns every deep test on for a client that already failed a
    /// test before the greeting, for better logging. A test the client already violated
    /// keeps its result.
    pub fn set_deep_test(&mut self, test: DeepTest, action: Option<TestAction>) {
        self.deep.set(test, action);
    }

    /// What the session earned in each deep test so far.
    pub fn deep_test_results(&self) -> DeepTestResults {
        self.deep.results()
    }

    /// The session runs over TLS.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The `220` greeting, or `None` for a client that pregreeted or after STARTTLS.
    pub fn greeting(&self) -> Option<Reply> {
        (!self.pregreeted && !self.tls_active).then(|| Reply::greeting(&self.settings.smtpd_banner))
    }

    /// The client reached RCPT (whatever the reply): the deep tests pass only then.
    pub fn rcpt_reached(&self) -> bool {
        self.rcpt_reached
    }

    /// The last HELO/EHLO name.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// The sender of the current transaction.
    pub fn sender(&self) -> Option<&str> {
        self.sender.as_deref()
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Commands counted so far (QUIT included, as postscreen counts it).
    pub fn command_count(&self) -> u32 {
        self.command_count
    }

    /// The last command seen, as log lines name it (`CONNECT` before the first).
    pub fn last_command(&self) -> &'static str {
        self.last_command
    }

    /// When the driver first ran this session, recorded at its first call: the start of
    /// "tests after SMTP handshake", which a `HANGUP` line counts from.
    fn started_at(&mut self) -> Instant {
        *self.started.get_or_insert_with(Instant::now)
    }

    /// The greeting for the driver to send, the first time it asks: a session is greeted
    /// once, and not at all after a pregreet ([`Engine::greeting`]).
    fn take_greeting(&mut self) -> Option<Reply> {
        if self.greeting_done {
            return None;
        }
        self.greeting_done = true;
        self.greeting()
    }

    /// The reply that accepts STARTTLS, for the caller to send before its TLS handshake.
    pub fn tls_ready(&self) -> Reply {
        self.finish(&Reply::starttls_ready())
    }

    /// TLS is up: reset the session as postscreen does after STARTTLS (helo and sender are
    /// forgotten; EHLO no longer offers STARTTLS) and take commands again.
    pub fn tls_established(&mut self) {
        self.tls_active = true;
        self.helo = None;
        self.sender = None;
        self.stopped = None;
    }

    /// TLS could not be started after all: take plaintext commands again, and return the
    /// `454` for the caller to send.
    pub fn tls_unavailable(&mut self) -> Reply {
        self.stopped = None;
        self.finish(&Reply::tls_unavailable())
    }

    /// `reply` as this client gets it (soft bounce, footer): for replies the caller sends
    /// itself, such as [`Reply::starttls_ready`].
    pub fn finish(&self, reply: &Reply) -> Reply {
        self.style
            .apply(reply, self.client, &self.settings.myhostname)
    }

    /// Handles one command line (without its line ending) that ended in CRLF with nothing
    /// sent after it: the bare newline and pipelining tests see nothing wrong.
    pub fn on_command(&mut self, line: &[u8]) -> Step {
        self.on_line(Line {
            text: line,
            ending: LineEnding::CrLf,
            pending: false,
            following: &[],
        })
    }

    /// Handles one command line from the [`LineReader`], with the deep tests: its ending
    /// for the bare newline test, and the input that followed it for the pipelining test.
    ///
    /// In postscreen's order: the bare newline test when the line is read, then the
    /// non-SMTP and pipelining tests, then the pass at RCPT, the command count, and the
    /// command itself. A test whose action is `drop` ends the session with its `521` before
    /// the command runs.
    pub fn on_line(&mut self, line: Line<'_>) -> Step {
        if let Some(end) = self.stopped {
            return Step {
                reply: None,
                events: Vec::new(),
                next: Next::Stop(end),
            };
        }
        let mut events = Vec::new();
        if line.ending == LineEnding::BareLf && self.deep.armed(DeepTest::BareNewline) {
            // The whole line, NUL and all, as postscreen escapes its buffer.
            events.push(Event::BareNewline {
                line: escape_input(line.text),
            });
            if let Some(step) = self.violation(DeepTest::BareNewline, &mut events) {
                return step;
            }
        }
        let mut step = self.command(line.text, line.following, &mut events);
        if !events.is_empty() {
            events.append(&mut step.events);
            step.events = events;
        }
        step
    }

    /// Records a violation of an armed `test` (its event is already in `events`) and applies
    /// its action: the step that ends the session for `drop`, `None` otherwise.
    fn violation(&mut self, test: DeepTest, events: &mut Vec<Event>) -> Option<Step> {
        match self.deep.violated(test)? {
            TestAction::Ignore => None,
            // The last enforce action to set the RCPT reply wins, as in postscreen.
            TestAction::Enforce => {
                self.rcpt_reply = Reply::protocol_error_enforce();
                None
            }
            TestAction::Drop => Some(self.stop(
                test.drop_reply(),
                std::mem::take(events),
                SessionEnd::Dropped(test),
            )),
        }
    }

    /// Everything after the bare newline test: `events` holds what the deep tests found.
    fn command(&mut self, line: &[u8], following: &[u8], events: &mut Vec<Event>) -> Step {
        // The command line is a C string in postscreen: a NUL ends it.
        let line = match line.iter().position(|&b| b == 0) {
            Some(nul) => &line[..nul],
            None => line,
        };
        let (name, args) = split_command(line);
        let command = Command::lookup(name);
        let previous = self.last_command;
        self.last_command = command.map_or(AFTER_UNKNOWN, |(known, _)| known);
        let command = command.map(|(_, command)| command);

        if command != Some(Command::Quit)
            && let Some(reply) = self.final_reply.clone()
        {
            return self.stop(reply, std::mem::take(events), SessionEnd::FinalReply);
        }
        // AUTH, XCLIENT and XFORWARD are known commands: only unknown ones are tested.
        if command.is_none()
            && self.deep.armed(DeepTest::NonSmtpCommand)
            && self
                .settings
                .deep_tests
                .is_non_smtp(name, self.settings.smtputf8)
        {
            events.push(Event::NonSmtpCommand {
                after: previous,
                command: printable_command(name, self.settings.smtputf8),
                rest: escape_input(args),
            });
            if let Some(step) = self.violation(DeepTest::NonSmtpCommand, events) {
                return step;
            }
        }
        // BDAT is followed by its chunk, which is not a pipelined command.
        if command != Some(Command::Bdat)
            && !following.is_empty()
            && self.deep.armed(DeepTest::Pipelining)
        {
            events.push(Event::CommandPipelining {
                command: printable_command(name, self.settings.smtputf8),
                pending: escape_input(following),
            });
            if let Some(step) = self.violation(DeepTest::Pipelining, events) {
                return step;
            }
        }
        // Reaching RCPT is what passes the deep tests, whatever this RCPT's fate; a later
        // violation can still fail them.
        if command == Some(Command::Rcpt) {
            self.rcpt_reached = true;
            self.deep.pass_at_rcpt();
        }
        self.command_count = self.command_count.saturating_add(1);
        if self.command_count > self.settings.command_count_limit && command != Some(Command::Quit)
        {
            events.push(Event::CommandCountLimit { after: previous });
            return self.stop(
                Reply::service_unavailable_421(&self.settings.myhostname),
                std::mem::take(events),
                SessionEnd::CommandCountLimit,
            );
        }
        match command {
            None | Some(Command::Auth | Command::Xclient | Command::Xforward) => {
                self.reply(Reply::not_recognized())
            }
            Some(Command::Helo) => self.helo_command(args, false),
            Some(Command::Ehlo) => self.helo_command(args, true),
            Some(Command::StartTls) => self.starttls_command(args),
            Some(Command::Mail) => self.mail_command(args),
            Some(Command::Rcpt) => self.rcpt_command(args),
            Some(Command::Data) => self.data_command(args),
            Some(Command::Bdat) => self.bdat_command(args),
            Some(Command::Rset) => {
                self.sender = None;
                self.reply(Reply::ok())
            }
            Some(Command::Noop) => self.reply(Reply::ok()),
            Some(Command::Vrfy) => self.vrfy_command(args),
            Some(Command::Etrn) => self.etrn_command(args),
            Some(Command::Quit) => self.stop(Reply::bye(), Vec::new(), SessionEnd::Quit),
        }
    }

    /// The line reader refused an over-long line: `421` and close.
    pub fn on_line_too_long(&mut self) -> Step {
        let after = self.last_command;
        self.stop(
            Reply::service_unavailable_421(&self.settings.myhostname),
            vec![Event::CommandLengthLimit { after }],
            SessionEnd::CommandLengthLimit,
        )
    }

    /// No complete command within the command time limit: `421 4.4.2` and close.
    pub fn on_time_limit(&mut self) -> Step {
        let after = self.last_command;
        self.stop(
            Reply::timeout_exceeded(&self.settings.myhostname),
            vec![Event::CommandTimeLimit { after }],
            SessionEnd::CommandTimeLimit,
        )
    }

    /// The client went away `elapsed` after the engine started. Not a test failure.
    pub fn on_hangup(&mut self, elapsed: Duration) -> Step {
        self.stopped = Some(SessionEnd::Hangup);
        Step {
            reply: None,
            events: vec![Event::Hangup { after: elapsed }],
            next: Next::Stop(SessionEnd::Hangup),
        }
    }

    fn reply(&self, reply: Reply) -> Step {
        Step {
            reply: Some(self.finish(&reply)),
            events: Vec::new(),
            next: Next::Continue,
        }
    }

    fn stop(&mut self, reply: Reply, events: Vec<Event>, end: SessionEnd) -> Step {
        self.stopped = Some(end);
        Step {
            reply: Some(self.finish(&reply)),
            events,
            next: Next::Stop(end),
        }
    }

    fn helo_command(&mut self, args: &[u8], extended: bool) -> Step {
        // Like postscreen (unlike smtpd), words after the name are ignored.
        let Some(name) = next_token(args) else {
            return self.reply(if extended {
                Reply::ehlo_syntax()
            } else {
                Reply::helo_syntax()
            });
        };
        self.helo = Some(log_field(name));
        self.sender = None;
        if !extended {
            // HELO does not downgrade a session that already said EHLO.
            return self.reply(Reply::helo(&self.settings.myhostname));
        }
        self.proto = Proto::Esmtp;
        self.reply(self.ehlo_reply())
    }

    /// postscreen's EHLO reply: no PIPELINING (the pipelining test depends on that), no AUTH.
    fn ehlo_reply(&self) -> Reply {
        let s = &self.settings;
        let mut keywords = vec![match s.message_size_limit {
            0 => "SIZE".to_string(),
            limit => format!("SIZE {limit}"),
        }];
        if !s.disable_vrfy {
            keywords.push("VRFY".into());
        }
        keywords.push("ETRN".into());
        if s.starttls_offered && !self.tls_active {
            keywords.push("STARTTLS".into());
        }
        keywords.extend([
            "ENHANCEDSTATUSCODES".into(),
            "8BITMIME".into(),
            "DSN".into(),
        ]);
        if s.smtputf8 {
            keywords.push("SMTPUTF8".into());
        }
        keywords.push("CHUNKING".into());
        Reply::ehlo(&s.myhostname, keywords)
    }

    fn starttls_command(&mut self, args: &[u8]) -> Step {
        if next_token(args).is_some() {
            return self.reply(Reply::starttls_syntax());
        }
        if self.tls_active {
            return self.reply(Reply::tls_already_active());
        }
        if !self.settings.starttls_offered {
            return self.reply(Reply::not_implemented());
        }
        // Input the client sent after STARTTLS must not be read as if it came over TLS;
        // the caller drops its plaintext buffer when it takes over.
        self.stopped = Some(SessionEnd::StartTls);
        Step {
            reply: None,
            events: Vec::new(),
            next: Next::Stop(SessionEnd::StartTls),
        }
    }

    fn mail_command(&mut self, args: &[u8]) -> Step {
        // Like postscreen (unlike smtpd): the sender is never refused, the word before the
        // colon is not checked, and parameters are ignored.
        if self.settings.helo_required && self.helo.is_none() {
            return self.reply(Reply::send_helo_first());
        }
        if self.sender.is_some() {
            return self.reply(Reply::nested_mail());
        }
        let Some(colon) = args.iter().position(|&b| b == b':') else {
            return self.reply(Reply::mail_syntax());
        };
        self.sender = Some(log_field(&extract_address(&args[colon + 1..])));
        self.reply(Reply::sender_ok())
    }

    fn rcpt_command(&mut self, args: &[u8]) -> Step {
        let Some(from) = self.sender.clone() else {
            return self.reply(Reply::need_mail());
        };
        let Some(colon) = args.iter().position(|&b| b == b':') else {
            return self.reply(Reply::rcpt_syntax());
        };
        let event = Event::RcptRejected {
            reply: self.style.for_log(&self.rcpt_reply),
            from,
            to: log_field(&extract_address(&args[colon + 1..])),
            proto: self.proto,
            helo: self.helo.clone().unwrap_or_default(),
        };
        let mut step = self.reply(self.rcpt_reply.clone());
        step.events.push(event);
        step
    }

    fn data_command(&mut self, args: &[u8]) -> Step {
        // Logged before the syntax checks, as postscreen does.
        let reply = if next_token(args).is_some() {
            Reply::data_syntax()
        } else if self.sender.is_none() {
            Reply::need_rcpt()
        } else {
            Reply::no_valid_recipients()
        };
        self.stop(reply, vec![Event::DataWithoutRcpt], SessionEnd::DataRefused)
    }

    fn bdat_command(&mut self, args: &[u8]) -> Step {
        let reply = if next_token(args).is_none() {
            Reply::bdat_syntax()
        } else if self.sender.is_none() {
            Reply::bdat_need_mail()
        } else {
            Reply::no_valid_recipients()
        };
        self.stop(reply, vec![Event::BdatWithoutRcpt], SessionEnd::DataRefused)
    }

    fn vrfy_command(&mut self, args: &[u8]) -> Step {
        if next_token(args).is_none() {
            return self.reply(Reply::vrfy_syntax());
        }
        if self.settings.disable_vrfy {
            return self.reply(Reply::vrfy_disabled());
        }
        // Refused like a recipient, but not logged.
        self.reply(self.rcpt_reply.clone())
    }

    fn etrn_command(&mut self, args: &[u8]) -> Step {
        if self.settings.helo_required && self.helo.is_none() {
            return self.reply(Reply::send_helo_first());
        }
        if next_token(args).is_none() {
            return self.reply(Reply::etrn_syntax());
        }
        self.reply(Reply::etrn_refused())
    }
}

/// Splits a command line into the command word and the rest, as postscreen's `mystrtok`
/// with a space separator: leading spaces are skipped, one space after the word is eaten.
fn split_command(line: &[u8]) -> (&[u8], &[u8]) {
    let line = skip_spaces(line);
    match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[]),
    }
}

/// The first space-separated word of `args`, if any.
fn next_token(args: &[u8]) -> Option<&[u8]> {
    let args = skip_spaces(args);
    let end = args.iter().position(|&b| b == b' ').unwrap_or(args.len());
    (end > 0).then(|| &args[..end])
}

fn skip_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    &bytes[start..]
}

/// The address of a MAIL FROM or RCPT TO argument, as postscreen reads it: `<...>` up to
/// `>`, or a bare word up to a space; quotes are dropped, a backslash takes the next byte
/// literally, and a source route (`@a,@b:user@c`) is cut off.
fn extract_address(arg: &[u8]) -> Vec<u8> {
    let arg = skip_spaces(arg);
    let (stop, arg) = match arg.strip_prefix(b"<") {
        Some(rest) => (b'>', rest),
        None => (b' ', arg),
    };
    let mut address = Vec::new();
    let mut in_quotes = false;
    let mut bytes = arg.iter();
    while let Some(&b) = bytes.next() {
        if !in_quotes && b == stop {
            break;
        }
        match b {
            b'"' => in_quotes = !in_quotes,
            b'\\' => match bytes.next() {
                Some(&escaped) => address.push(escaped),
                None => break,
            },
            _ => address.push(b),
        }
    }
    if address.first() == Some(&b'@')
        && let Some(colon) = address.iter().position(|&b| b == b':')
    {
        address.drain(..=colon);
    }
    address
}

/// Client text made safe for a log line and bounded: valid UTF-8 is kept, control
/// characters and invalid bytes become C-style escapes (`\r`, `\n`, `\t`, `\ooo`), and the
/// result stops before [`MAX_LOGGED_FIELD`] bytes. postscreen logs these fields raw.
fn log_field(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut push = |piece: &str| {
        if out.len() + piece.len() > MAX_LOGGED_FIELD {
            return false;
        }
        out.push_str(piece);
        true
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let escaped;
            let piece = match c {
                '\r' => "\\r",
                '\n' => "\\n",
                '\t' => "\\t",
                c if c.is_control() && c.is_ascii() => {
                    escaped = format!("\\{:03o}", c as u32);
                    &escaped
                }
                c if c.is_control() => {
                    escaped = format!("\\u{{{:x}}}", c as u32);
                    &escaped
                }
                c => {
                    escaped = c.to_string();
                    &escaped
                }
            };
            if !push(piece) {
                return out;
            }
        }
        for &b in chunk.invalid() {
            if !push(&format!("\\{b:03o}")) {
                return out;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The driver

/// How a [`serve`] run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Every event of the run, in order (also passed to the caller's sink as they happen).
    pub events: Vec<Event>,
    /// The client reached RCPT: the deep tests pass.
    pub rcpt_reached: bool,
    pub end: SessionEnd,
    /// What the session earned in each deep test ([`Engine::deep_test_results`]).
    pub deep_tests: DeepTestResults,
}

impl Outcome {
    /// `engine`'s session as it stands after `events`, ended by `end`.
    fn of(engine: &Engine, events: Vec<Event>, end: SessionEnd) -> Self {
        Self {
            events,
            rcpt_reached: engine.rcpt_reached(),
            end,
            deep_tests: engine.deep_test_results(),
        }
    }
}

/// Runs the engine over `stream` until the session ends.
///
/// Sends the greeting unless the client pregreeted, then reads command lines and answers
/// them. `command_time_limit` is a deadline for each whole command line, reset only when a
/// command has been answered, so a client that trickles one byte at a time gains nothing.
/// A write that does not finish within the same time counts as a hangup. Each event goes to
/// `on_event` when it happens (for logging) and into the [`Outcome`].
///
/// After [`SessionEnd::StartTls`] nothing was sent: the caller answers and runs `serve`
/// again, on the TLS stream after a handshake. Client input buffered behind STARTTLS is
/// dropped with this run's reader, so nothing sent in plaintext is taken as sent over TLS.
/// After any other end the caller closes the connection. [`serve_with_tls`] does the
/// STARTTLS part itself.
pub async fn serve<S, F>(
    stream: &mut S,
    engine: &mut Engine,
    command_time_limit: Duration,
    mut on_event: F,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Event),
{
    let mut reader = LineReader::new(engine.settings.line_length_limit);
    let mut events = Vec::new();
    let end = run(
        stream,
        engine,
        &mut reader,
        command_time_limit,
        &mut on_event,
        &mut events,
    )
    .await;
    Outcome::of(engine, events, end)
}

/// What [`serve_with_tls`] needs for STARTTLS.
#[derive(Clone, Copy)]
pub struct StartTls<'a> {
    /// The server's certificate and settings ([`tls::load_acceptor`]).
    pub acceptor: &'a TlsAcceptor,
    /// How long the handshake may take. postscreen gives tlsproxy the normal command time
    /// limit, never the shorter one of stress mode.
    pub handshake_time_limit: Duration,
}

/// [`serve`] with STARTTLS handled: the whole session, over `stream` and then, once the
/// client asked for it, over TLS.
///
/// When the engine accepts STARTTLS ([`EngineSettings::starttls_offered`]), this sends
/// `220 2.0.0 Ready to start TLS`, forgets every byte the client sent after the command
/// (the defence against STARTTLS command injection: nothing sent in plaintext is read as if
/// it came over TLS), and runs the handshake within `handshake_time_limit`. The session then
/// goes on over TLS, without a second greeting, and its log gets tlsproxy's `Anonymous TLS
/// connection established` line. A failed handshake ends the session with tlsproxy's
/// `SSL_accept error` line and a hangup. Without `starttls` the client is told `454 4.7.0
/// TLS not available due to local problem` and the session goes on in plaintext.
///
/// The connection is closed when this returns (a TLS session with its close_notify).
pub async fn serve_with_tls<S, F>(
    mut stream: S,
    engine: &mut Engine,
    command_time_limit: Duration,
    starttls: Option<StartTls<'_>>,
    mut on_event: F,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Event),
{
    let limit = command_time_limit;
    let mut reader = LineReader::new(engine.settings.line_length_limit);
    let mut events = Vec::new();
    let tls = loop {
        match run(
            &mut stream,
            engine,
            &mut reader,
            limit,
            &mut on_event,
            &mut events,
        )
        .await
        {
            SessionEnd::StartTls => {}
            end => return Outcome::of(engine, events, end),
        }
        if let Some(tls) = starttls {
            break tls;
        }
        // STARTTLS was offered without a certificate. Buffered input stays: it was sent in
        // plaintext and is read in plaintext.
        let reply = engine.tls_unavailable();
        if send(&mut stream, &reply, limit).await.is_err() {
            return hang_up(engine, events, &mut on_event);
        }
    };

    if send(&mut stream, &engine.tls_ready(), limit).await.is_err() {
        return hang_up(engine, events, &mut on_event);
    }
    reader.clear();
    let reason = match timeout(tls.handshake_time_limit, tls.acceptor.accept(stream)).await {
        Ok(Ok(mut stream)) => {
            let event = Event::TlsEstablished {
                summary: tls::Summary::of(stream.get_ref().1),
            };
            on_event(&event);
            events.push(event);
            engine.tls_established();
            let outcome = loop {
                match run(
                    &mut stream,
                    engine,
                    &mut reader,
                    limit,
                    &mut on_event,
                    &mut events,
                )
                .await
                {
                    // The engine refuses a second STARTTLS; answer as if it had not.
                    SessionEnd::StartTls => {
                        let reply = engine.tls_unavailable();
                        if send(&mut stream, &reply, limit).await.is_err() {
                            break hang_up(engine, events, &mut on_event);
                        }
                    }
                    end => break Outcome::of(engine, events, end),
                }
            };
            // close_notify; the client may be gone already.
            let _ = timeout(TLS_CLOSE_TIME_LIMIT, stream.shutdown()).await;
            return outcome;
        }
        Ok(Err(e)) => handshake_error(&e),
        Err(_elapsed) => "handshake timed out".to_string(),
    };
    let event = Event::TlsHandshakeFailed { reason };
    on_event(&event);
    events.push(event);
    hang_up(engine, events, &mut on_event)
}

/// tlsproxy's words for a failed handshake: `lost connection` when the client went away,
/// otherwise the TLS library's reason, bounded and printable.
fn handshake_error(error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        return "lost connection".to_string();
    }
    let mut text: String = error
        .to_string()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    truncate_at_char(&mut text, MAX_TLS_ERROR_TEXT);
    text
}

/// Ends the session as a hangup: the client is gone or cannot be written to.
fn hang_up(
    engine: &mut Engine,
    mut events: Vec<Event>,
    on_event: &mut impl FnMut(&Event),
) -> Outcome {
    let started = engine.started_at();
    let step = engine.on_hangup(started.elapsed());
    for event in &step.events {
        on_event(event);
    }
    events.extend(step.events);
    Outcome::of(engine, events, SessionEnd::Hangup)
}

/// Answers commands from `stream` until the engine stops, and says why. `reader` holds input
/// not yet handled; the greeting goes out once per session.
async fn run<S, F>(
    stream: &mut S,
    engine: &mut Engine,
    reader: &mut LineReader,
    command_time_limit: Duration,
    on_event: &mut F,
    events: &mut Vec<Event>,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Event),
{
    let started = engine.started_at();
    if let Some(greeting) = engine.take_greeting()
        && send(stream, &greeting, command_time_limit).await.is_err()
    {
        let step = engine.on_hangup(started.elapsed());
        return conclude(events, step, on_event);
    }
    let mut deadline = Instant::now() + command_time_limit;
    loop {
        let step = match reader.next_line() {
            Ok(Some(line)) => engine.on_line(line),
            Err(LineError::TooLong { .. }) => engine.on_line_too_long(),
            Ok(None) => {
                let spare = reader.spare();
                if spare.is_empty() {
                    // Cannot happen with a reader that returned Ok(None); refuse anyway
                    // rather than read nothing and take it for end of input.
                    engine.on_line_too_long()
                } else {
                    match timeout_at(deadline, stream.read(spare)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => engine.on_hangup(started.elapsed()),
                        Ok(Ok(n)) => {
                            reader.commit(n);
                            continue;
                        }
                        Err(_elapsed) => engine.on_time_limit(),
                    }
                }
            }
        };
        for event in &step.events {
            on_event(event);
        }
        events.extend(step.events.iter().cloned());
        if let Some(reply) = &step.reply
            && send(stream, reply, command_time_limit).await.is_err()
            && step.next == Next::Continue
        {
            // postscreen treats a failed write like a hangup; after a final reply the
            // session ends anyway.
            let step = engine.on_hangup(started.elapsed());
            return conclude(events, step, on_event);
        }
        match step.next {
            Next::Continue => deadline = Instant::now() + command_time_limit,
            Next::Stop(end) => return end,
        }
    }
}

/// Ends a run with `step`, which carries no reply.
fn conclude(events: &mut Vec<Event>, step: Step, on_event: &mut impl FnMut(&Event)) -> SessionEnd {
    for event in &step.events {
        on_event(event);
    }
    events.extend(step.events);
    match step.next {
        Next::Stop(end) => end,
        Next::Continue => SessionEnd::Hangup,
    }
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reply: &Reply,
    limit: Duration,
) -> io::Result<()> {
    let bytes = reply.to_bytes();
    let write = async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    };
    match timeout(limit, write).await {
        Ok(result) => result,
        Err(_elapsed) => Err(io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        path::Path,
    };

    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex},
        net::{TcpListener, TcpStream},
    };
    use tokio_rustls::TlsConnector;

    use super::*;

    const HOST: &str = "mx.example.test";

    fn client() -> SocketAddr {
        "127.0.0.11:58529".parse().unwrap()
    }

    fn settings() -> EngineSettings {
        EngineSettings {
            smtpd_banner: format!("{HOST} ESMTP Postfix"),
            ..EngineSettings::new(HOST)
        }
    }

    fn engine_with(change: impl FnOnce(&mut EngineSettings)) -> Engine {
        let mut s = settings();
        change(&mut s);
        Engine::new(s, client()).unwrap()
    }

    fn engine() -> Engine {
        engine_with(|_| {})
    }

    /// The reply bytes to `line`, which must leave the session open and log nothing.
    fn reply(engine: &mut Engine, line: &str) -> String {
        let step = engine.on_command(line.as_bytes());
        assert_eq!(step.next, Next::Continue, "{line:?} ended the session");
        assert!(step.events.is_empty(), "{line:?} logged {:?}", step.events);
        String::from_utf8(step.bytes()).unwrap()
    }

    fn lines(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| e.line(client()).to_string())
            .collect()
    }

    // Replies

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

    #[test]
    fn clients_are_written_as_postscreen_writes_them() {
        let v6 = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 25);
        assert_eq!(ClientAddr(v6).to_string(), "[::1]:25");
        let mapped = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 9).to_ipv6_mapped().into(), 7);
        assert_eq!(ClientAddr(mapped).to_string(), "[198.51.100.9]:7");
        assert_eq!(ClientAddr(client()).to_string(), "[127.0.0.11]:58529");
    }

    // Footers

    fn footed(template: &str, reply: &Reply) -> String {
        let style = ReplyStyle::new(false, Some(template)).unwrap();
        String::from_utf8(style.apply(reply, client(), HOST).to_bytes()).unwrap()
    }

    #[test]
    fn a_footer_is_a_last_line_with_the_code_and_status() {
        assert_eq!(
            footed("For help call 555-0101", &Reply::service_unavailable_450()),
            "450-4.3.2 Service currently unavailable\r\n\
             450 4.3.2 For help call 555-0101\r\n"
        );
        // Without an enhanced status code only the code is repeated.
        assert_eq!(
            footed("Call us", &Reply::etrn_refused()),
            "458-Unable to queue messages\r\n458 Call us\r\n"
        );
    }

    #[test]
    fn footer_newlines_make_more_lines() {
        let expected = "550-5.5.1 Protocol error\r\n\
                        550-5.5.1 one\r\n\
                        550-5.5.1 two\r\n\
                        550 5.5.1 three\r\n";
        let reply = Reply::protocol_error_enforce();
        assert_eq!(footed("one\\ntwo\\nthree", &reply), expected);
        assert_eq!(footed("one\ntwo\nthree", &reply), expected);
        assert_eq!(footed("one\\ntwo\nthree", &reply), expected);
        // An empty piece is an empty line, as in Postfix.
        assert_eq!(
            footed("\\nx", &Reply::etrn_refused()),
            "458-Unable to queue messages\r\n458-\r\n458 x\r\n"
        );
    }

    #[test]
    fn a_backslash_c_footer_joins_the_last_line() {
        assert_eq!(
            footed("\\c (see https://help.example)", &Reply::denylist_enforce()),
            "550 5.3.2 Service currently unavailable (see https://help.example)\r\n"
        );
        assert_eq!(
            footed("\\c; call\\nus", &Reply::denylist_enforce()),
            "550-5.3.2 Service currently unavailable; call\r\n550 5.3.2 us\r\n"
        );
    }

    #[test]
    fn footer_macros_expand_for_the_client() {
        assert_eq!(
            footed(
                "client $client_address port ${client_port} on $(server_name) costs $$5",
                &Reply::not_recognized()
            ),
            "502-5.5.2 Error: command not recognized\r\n\
             502 5.5.2 client 127.0.0.11 port 58529 on mx.example.test costs $5\r\n"
        );
        let style = ReplyStyle::new(false, Some("[$client_address]:$client_port")).unwrap();
        let v6 = SocketAddr::new("2001:db8::5".parse().unwrap(), 4000);
        assert_eq!(
            style.apply(&Reply::denylist_drop(), v6, HOST).lines()[1],
            "5.3.2 [2001:db8::5]:4000"
        );
    }

    #[test]
    fn localtime_expands_to_a_timestamp() {
        let style = ReplyStyle::new(false, Some("at $localtime")).unwrap();
        let reply = style.apply(&Reply::etrn_refused(), client(), HOST);
        let stamp = reply.lines()[1].strip_prefix("at ").unwrap();
        // Mmm dd HH:MM:SS
        let b = stamp.as_bytes();
        assert_eq!(b.len(), 15, "{stamp}");
        assert!(b[..3].iter().all(u8::is_ascii_alphabetic), "{stamp}");
        for (i, &c) in b.iter().enumerate().skip(3) {
            let want_digit = ![3, 6, 9, 12].contains(&i);
            assert_eq!(c.is_ascii_digit(), want_digit, "{stamp}");
        }
        assert_eq!(format_timestamp(0, 2, 3, 4, 5), "Jan 02 03:04:05");
        assert_eq!(format_timestamp(11, 31, 23, 59, 60), "Dec 31 23:59:60");
        assert_eq!(format_timestamp(12, 1, 0, 0, 0), "Jan 01 00:00:00");
        assert_eq!(format_timestamp(-1, 1, 0, 0, 0), "Jan 01 00:00:00");
    }

    #[test]
    fn footers_leave_positive_replies_alone() {
        for reply in [
            Reply::ok(),
            Reply::greeting("x"),
            Reply::bye(),
            Reply::starttls_ready(),
        ] {
            assert_eq!(footed("footer", &reply).lines().count(), 1, "{reply}");
        }
        assert_eq!(
            footed("footer", &Reply::no_system_resources()),
            "421-4.3.2 No system resources\r\n421 4.3.2 footer\r\n"
        );
    }

    #[test]
    fn soft_bounce_applies_before_the_footer() {
        let style = ReplyStyle::new(true, Some("help")).unwrap();
        let reply = style.apply(&Reply::denylist_enforce(), client(), HOST);
        assert_eq!(
            reply.to_bytes(),
            b"450-4.3.2 Service currently unavailable\r\n450 4.3.2 help\r\n"
        );
        assert_eq!(
            style.for_log(&Reply::denylist_enforce()).to_string(),
            "450 4.3.2 Service currently unavailable"
        );
    }

    #[test]
    fn bad_footers_are_refused_with_the_reason() {
        for (template, why) in [
            ("$nosuch", "unknown macro $nosuch"),
            ("${client_address?x}", "must hold only a macro name"),
            ("${client_address", "must hold only a macro name"),
            ("cost $5", "unknown macro $5"),
            ("cost $ 5", "a $ that starts no macro"),
            ("trailing $", "a $ that starts no macro"),
            ("a\rb", "control character"),
            ("a\tb", "control character"),
            ("nul\0", "control character"),
        ] {
            let err = ReplyFooter::parse(template).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("reject_footer = "), "{text}");
            assert!(text.contains(why), "{template:?}: {text}");
        }
        let err = ReplyFooter::parse(&"x".repeat(MAX_FOOTER_TEMPLATE + 1)).unwrap_err();
        assert!(err.to_string().contains("longer than 1024 bytes"), "{err}");
        let err = ReplyFooter::parse(&"x\\n".repeat(MAX_FOOTER_LINES)).unwrap_err();
        assert!(err.to_string().contains("more than 16 lines"), "{err}");
        let err = ReplyFooter::parse(&"x".repeat(497)).unwrap_err();
        assert!(
            err.to_string().contains("line 1 can expand to 497 bytes"),
            "{err}"
        );
        let err = ReplyFooter::parse(&format!("{}$server_name", "x".repeat(300))).unwrap_err();
        assert!(err.to_string().contains("can expand to 555 bytes"), "{err}");
        assert!(ReplyFooter::parse(&"x".repeat(496)).unwrap().is_some());
        assert_eq!(ReplyFooter::parse(""), Ok(None));
        assert_eq!(ReplyStyle::new(false, Some("")), Ok(ReplyStyle::default()));
    }

    // Settings

    #[test]
    fn settings_are_checked() {
        type Change = fn(&mut EngineSettings);
        let cases: [(Change, &str); 11] = [
            (|s| s.myhostname = String::new(), "myhostname"),
            (|s| s.myhostname = "mx example".into(), "myhostname"),
            (|s| s.myhostname = "mx\r\n250".into(), "myhostname"),
            (|s| s.myhostname = "a".repeat(256), "myhostname"),
            (|s| s.smtpd_banner = "mx\r\n250 ok".into(), "smtpd_banner"),
            (|s| s.rcpt_reply = Reply::ok(), "rcpt_reply"),
            (|s| s.command_count_limit = 0, "command_count_limit"),
            (
                |s| s.command_count_limit = MAX_COMMAND_COUNT_LIMIT + 1,
                "command_count_limit",
            ),
            (|s| s.line_length_limit = 511, "line_length_limit"),
            (|s| s.line_length_limit = 1 << 20, "line_length_limit"),
            (|s| s.reject_footer = Some("$bogus".into()), "reject_footer"),
        ];
        for (change, setting) in cases {
            let mut s = settings();
            change(&mut s);
            let err = s.validate().unwrap_err();
            assert!(matches!(&err, EngineError::Setting { setting: got, .. } if *got == setting));
            assert!(err.to_string().starts_with(setting), "{err}");
            assert_eq!(Engine::new(s, client()).unwrap_err(), err);
        }
        assert!(EngineSettings::default().validate().is_ok());
        assert_eq!(EngineSettings::default().smtpd_banner, "localhost ESMTP");
    }

    // Commands

    #[test]
    fn the_greeting_is_the_banner_unless_the_client_pregreeted() {
        let mut engine = engine();
        assert_eq!(
            engine.greeting().unwrap().to_bytes(),
            b"220 mx.example.test ESMTP Postfix\r\n"
        );
        engine.set_pregreeted();
        assert_eq!(engine.greeting(), None);
    }

    #[test]
    fn helo_and_ehlo() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "HELO client.example"),
            "250 mx.example.test\r\n"
        );
        assert_eq!(e.helo(), Some("client.example"));
        assert_eq!(e.proto(), Proto::Smtp);
        assert_eq!(reply(&mut e, "HELO"), "501 Syntax: HELO hostname\r\n");
        assert_eq!(reply(&mut e, "HELO    "), "501 Syntax: HELO hostname\r\n");
        assert_eq!(reply(&mut e, "EHLO"), "501 Syntax: EHLO hostname\r\n");
        // Extra words are ignored.
        assert_eq!(
            reply(&mut e, "HELO  a.example b c"),
            "250 mx.example.test\r\n"
        );
        assert_eq!(e.helo(), Some("a.example"));
    }

    #[test]
    fn the_ehlo_reply_matches_the_lab_capture() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "EHLO client.example"),
            "250-mx.example.test\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n\
             250 CHUNKING\r\n"
        );
        assert_eq!(e.proto(), Proto::Esmtp);
        // HELO does not downgrade the protocol.
        reply(&mut e, "HELO client.example");
        assert_eq!(e.proto(), Proto::Esmtp);
    }

    #[test]
    fn the_ehlo_reply_follows_the_settings() {
        let mut e = engine_with(|s| {
            s.starttls_offered = true;
            s.disable_vrfy = true;
            s.smtputf8 = false;
            s.message_size_limit = 0;
        });
        assert_eq!(
            reply(&mut e, "EHLO c"),
            "250-mx.example.test\r\n250-SIZE\r\n250-ETRN\r\n250-STARTTLS\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 CHUNKING\r\n"
        );
    }

    #[test]
    fn commands_are_case_insensitive() {
        let mut e = engine();
        assert_eq!(reply(&mut e, "ehlo c"), reply(&mut engine(), "EHLO c"));
        assert_eq!(reply(&mut e, "nOoP"), "250 2.0.0 Ok\r\n");
        assert_eq!(reply(&mut e, "mail from:<a@b>"), "250 2.1.0 Ok\r\n");
        assert_eq!(reply(&mut e, "  rset"), "250 2.0.0 Ok\r\n");
        let step = e.on_command(b"qUiT");
        assert_eq!(step.next, Next::Stop(SessionEnd::Quit));
    }

    #[test]
    fn mail_from() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "MAIL"),
            "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
        );
        assert_eq!(
            reply(&mut e, "MAIL FROM"),
            "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
        );
        assert_eq!(e.sender(), None);
        assert_eq!(
            reply(&mut e, "MAIL FROM:<s@example.org> SIZE=100 BODY=8BITMIME"),
            "250 2.1.0 Ok\r\n"
        );
        assert_eq!(e.sender(), Some("s@example.org"));
        assert_eq!(
            reply(&mut e, "MAIL FROM:<t@example.org>"),
            "503 5.5.1 Error: nested MAIL command\r\n"
        );
        assert_eq!(reply(&mut e, "RSET"), "250 2.0.0 Ok\r\n");
        assert_eq!(e.sender(), None);
        assert_eq!(reply(&mut e, "MAIL FROM:<>"), "250 2.1.0 Ok\r\n");
        assert_eq!(e.sender(), Some(""));
        // EHLO starts a new transaction.
        reply(&mut e, "EHLO c");
        assert_eq!(e.sender(), None);
    }

    #[test]
    fn helo_required() {
        let mut e = engine_with(|s| s.helo_required = true);
        assert_eq!(
            reply(&mut e, "MAIL FROM:<a@b>"),
            "503 5.5.1 Error: send HELO/EHLO first\r\n"
        );
        assert_eq!(
            reply(&mut e, "ETRN example.org"),
            "503 5.5.1 Error: send HELO/EHLO first\r\n"
        );
        reply(&mut e, "HELO c");
        assert_eq!(reply(&mut e, "MAIL FROM:<a@b>"), "250 2.1.0 Ok\r\n");
        assert_eq!(
            reply(&mut e, "ETRN example.org"),
            "458 Unable to queue messages\r\n"
        );
        // Without the setting no HELO is needed.
        assert_eq!(reply(&mut engine(), "MAIL FROM:<a@b>"), "250 2.1.0 Ok\r\n");
    }

    #[test]
    fn addresses_are_read_as_postscreen_reads_them() {
        for (arg, address) in [
            ("FROM:<a@example.org>", "a@example.org"),
            ("FROM: <a@example.org> SIZE=1", "a@example.org"),
            ("FROM:a@example.org SIZE=1", "a@example.org"),
            ("FROM:   bare@example.org", "bare@example.org"),
            ("FROM:<>", ""),
            ("FROM:", ""),
            ("FROM:<\"john doe\"@example.org>", "john doe@example.org"),
            ("FROM:<\"a>b\"@example.org>", "a>b@example.org"),
            ("FROM:<a\\>b@example.org>", "a>b@example.org"),
            ("FROM:<trailing\\", "trailing"),
            (
                "FROM:<@relay1,@relay2:user@example.org>",
                "user@example.org",
            ),
            ("FROM:<unterminated@example.org", "unterminated@example.org"),
            // postscreen does not check the word before the colon.
            ("TO:<odd@example.org>", "odd@example.org"),
        ] {
            let mut e = engine();
            reply(&mut e, &format!("MAIL {arg}"));
            assert_eq!(e.sender(), Some(address), "{arg:?}");
        }
    }

    #[test]
    fn rcpt_is_always_refused_and_logged() {
        let mut e = engine();
        reply(&mut e, "EHLO h.example");
        reply(&mut e, "MAIL FROM:<s@example.org>");
        assert!(!e.rcpt_reached());
        let step = e.on_command(b"RCPT TO:<r@example.test> NOTIFY=NEVER");
        assert_eq!(step.bytes(), b"450 4.3.2 Service currently unavailable\r\n");
        assert_eq!(step.next, Next::Continue);
        assert_eq!(
            lines(&step.events),
            [
                "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
              unavailable; from=<s@example.org>, to=<r@example.test>, proto=ESMTP, \
              helo=<h.example>"
            ]
        );
        assert!(e.rcpt_reached());
        // Every further recipient is refused and logged too.
        let step = e.on_command(b"RCPT TO:<second@example.test>");
        assert_eq!(step.events.len(), 1);
    }

    #[test]
    fn rcpt_errors() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "RCPT TO:<r@example.test>"),
            "503 5.5.1 Error: need MAIL command\r\n"
        );
        // Reaching RCPT is what counts for the deep tests, even when it fails.
        assert!(e.rcpt_reached());
        reply(&mut e, "MAIL FROM:<s@example.org>");
        assert_eq!(
            reply(&mut e, "RCPT"),
            "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
        );
        assert_eq!(
            reply(&mut e, "RCPT TO"),
            "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
        );
    }

    #[test]
    fn the_noqueue_line_without_ehlo() {
        let mut e = engine();
        reply(&mut e, "MAIL FROM:<>");
        let step = e.on_command(b"RCPT TO:postmaster");
        assert_eq!(
            lines(&step.events),
            [
                "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
              unavailable; from=<>, to=<postmaster>, proto=SMTP, helo=<>"
            ]
        );
    }

    #[test]
    fn an_enforce_action_changes_the_rcpt_reply() {
        let mut e = engine();
        let dnsbl =
            Reply::dnsbl_enforce("127.0.0.40".parse().unwrap(), "public-bl.example").unwrap();
        e.set_rcpt_reply(dnsbl).unwrap();
        reply(&mut e, "HELO h.example");
        reply(&mut e, "MAIL FROM:<s@example.org>");
        let step = e.on_command(b"RCPT TO:<r@example.test>");
        assert_eq!(
            step.bytes(),
            b"550 5.7.1 Service unavailable; client [127.0.0.40] blocked using \
              public-bl.example\r\n"
        );
        // The lab's line for this client.
        assert_eq!(
            lines(&step.events),
            [
                "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 550 5.7.1 Service unavailable; \
              client [127.0.0.40] blocked using public-bl.example; from=<s@example.org>, \
              to=<r@example.test>, proto=SMTP, helo=<h.example>"
            ]
        );
        // VRFY gets the same reply.
        assert_eq!(
            reply(&mut e, "VRFY r"),
            String::from_utf8(step.bytes()).unwrap()
        );
        // The last enforce action wins.
        e.set_rcpt_reply(Reply::protocol_error_enforce()).unwrap();
        assert_eq!(
            e.on_command(b"RCPT TO:<x@y>").bytes(),
            b"550 5.5.1 Protocol error\r\n"
        );
        assert!(e.set_rcpt_reply(Reply::ok()).is_err());
    }

    #[test]
    fn data_is_refused_and_ends_the_session() {
        for (setup, line, expected) in [
            (&[][..], "DATA", "503 5.5.1 Error: need RCPT command\r\n"),
            (&[][..], "DATA x", "501 5.5.4 Syntax: DATA\r\n"),
            (
                &["MAIL FROM:<a@b>"][..],
                "data",
                "554 5.5.1 Error: no valid recipients\r\n",
            ),
            (
                &["MAIL FROM:<a@b>", "RCPT TO:<c@d>"][..],
                "DATA",
                "554 5.5.1 Error: no valid recipients\r\n",
            ),
        ] {
            let mut e = engine();
            for command in setup {
                e.on_command(command.as_bytes());
            }
            let step = e.on_command(line.as_bytes());
            assert_eq!(
                String::from_utf8(step.bytes()).unwrap(),
                expected,
                "{setup:?} {line}"
            );
            assert_eq!(
                lines(&step.events),
                ["DATA without valid RCPT from [127.0.0.11]:58529"]
            );
            assert_eq!(step.next, Next::Stop(SessionEnd::DataRefused));
            assert!(step.closes());
            // Nothing more happens after the end.
            let after = e.on_command(b"NOOP");
            assert_eq!(after.reply, None);
            assert!(after.events.is_empty());
            assert_eq!(after.next, Next::Stop(SessionEnd::DataRefused));
        }
    }

    #[test]
    fn bdat_is_refused_and_ends_the_session() {
        for (setup, line, expected) in [
            (&[][..], "BDAT", "501 5.5.4 Syntax: BDAT count [LAST]\r\n"),
            (
                &[][..],
                "BDAT 100 LAST",
                "554 5.5.1 Error: need MAIL command\r\n",
            ),
            (
                &["MAIL FROM:<a@b>"][..],
                "BDAT 100",
                "554 5.5.1 Error: no valid recipients\r\n",
            ),
        ] {
            let mut e = engine();
            for command in setup {
                e.on_command(command.as_bytes());
            }
            let step = e.on_command(line.as_bytes());
            assert_eq!(String::from_utf8(step.bytes()).unwrap(), expected, "{line}");
            assert_eq!(
                lines(&step.events),
                ["BDAT without valid RCPT from [127.0.0.11]:58529"]
            );
            assert_eq!(step.next, Next::Stop(SessionEnd::DataRefused));
        }
    }

    #[test]
    fn vrfy_etrn_and_unsupported_commands_as_in_the_lab() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "VRFY postmaster"),
            "450 4.3.2 Service currently unavailable\r\n"
        );
        assert_eq!(
            reply(&mut e, "ETRN example.org"),
            "458 Unable to queue messages\r\n"
        );
        assert_eq!(
            reply(&mut e, "AUTH PLAIN AGZvbwBiYXI="),
            "502 5.5.2 Error: command not recognized\r\n"
        );
        assert_eq!(
            reply(&mut e, "XCLIENT ADDR=1.2.3.4"),
            "502 5.5.2 Error: command not recognized\r\n"
        );
        assert_eq!(
            reply(&mut e, "STARTTLS"),
            "502 5.5.1 Error: command not implemented\r\n"
        );
        assert_eq!(
            reply(&mut e, "XFORWARD NAME=x"),
            "502 5.5.2 Error: command not recognized\r\n"
        );
        assert_eq!(reply(&mut e, "VRFY"), "501 5.5.4 Syntax: VRFY address\r\n");
        assert_eq!(reply(&mut e, "ETRN"), "500 Syntax: ETRN domain\r\n");
        assert_eq!(reply(&mut e, "ETRN  "), "500 Syntax: ETRN domain\r\n");
    }

    #[test]
    fn vrfy_can_be_disabled() {
        let mut e = engine_with(|s| s.disable_vrfy = true);
        assert_eq!(
            reply(&mut e, "VRFY postmaster"),
            "502 5.5.1 VRFY command is disabled\r\n"
        );
        // The syntax check comes first.
        assert_eq!(reply(&mut e, "VRFY"), "501 5.5.4 Syntax: VRFY address\r\n");
    }

    #[test]
    fn unknown_and_garbage_commands_are_not_recognized() {
        let mut e = engine();
        for line in [
            &b""[..],
            b"   ",
            b"GET / HTTP/1.0",
            b"Subject: hello",
            b"NOOP\tx",
            b"\xff\xfe\x00",
            b"HELOX a",
            b"QUITE",
        ] {
            let step = e.on_command(line);
            assert_eq!(
                step.bytes(),
                b"502 5.5.2 Error: command not recognized\r\n",
                "{line:?}"
            );
            assert_eq!(step.next, Next::Continue);
            assert_eq!(e.last_command(), AFTER_UNKNOWN);
        }
    }

    #[test]
    fn a_nul_ends_the_command_line() {
        let mut e = engine();
        assert_eq!(reply(&mut e, "NOOP\0garbage"), "250 2.0.0 Ok\r\n");
        reply(&mut e, "MAIL FROM:<a\0b@example.org>");
        assert_eq!(e.sender(), Some("a"));
    }

    #[test]
    fn quit() {
        let mut e = engine();
        let step = e.on_command(b"QUIT");
        assert_eq!(step.bytes(), b"221 2.0.0 Bye\r\n");
        assert_eq!(step.next, Next::Stop(SessionEnd::Quit));
        assert!(step.closes());
        assert!(step.events.is_empty());
    }

    #[test]
    fn starttls() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "STARTTLS"),
            "502 5.5.1 Error: command not implemented\r\n"
        );

        let mut e = engine_with(|s| s.starttls_offered = true);
        assert_eq!(
            reply(&mut e, "STARTTLS now"),
            "501 5.5.4 Syntax: STARTTLS\r\n"
        );
        reply(&mut e, "EHLO c.example");
        reply(&mut e, "MAIL FROM:<a@b>");
        let step = e.on_command(b"STARTTLS");
        assert_eq!(step.reply, None);
        assert_eq!(step.next, Next::Stop(SessionEnd::StartTls));
        assert!(!step.closes());
        // The caller answers.
        assert_eq!(
            e.tls_ready().to_bytes(),
            b"220 2.0.0 Ready to start TLS\r\n"
        );
        e.tls_established();
        assert_eq!(e.helo(), None);
        assert_eq!(e.sender(), None);
        assert_eq!(e.greeting(), None);
        assert!(!reply(&mut e, "EHLO c.example").contains("STARTTLS"));
        assert_eq!(
            reply(&mut e, "STARTTLS"),
            "554 5.5.1 Error: TLS already active\r\n"
        );
    }

    #[test]
    fn starttls_that_fails_resumes_in_plaintext() {
        let mut e = engine_with(|s| {
            s.starttls_offered = true;
            s.reject_footer = Some("help".into());
        });
        reply(&mut e, "EHLO c.example");
        assert_eq!(
            e.on_command(b"STARTTLS").next,
            Next::Stop(SessionEnd::StartTls)
        );
        // Stopped until the caller says how STARTTLS went.
        assert_eq!(e.on_command(b"NOOP").reply, None);
        assert_eq!(
            e.tls_unavailable().to_bytes(),
            b"454-4.7.0 TLS not available due to local problem\r\n454 4.7.0 help\r\n"
        );
        assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
        // Still plaintext: the greeting rules and the EHLO offer are unchanged.
        assert!(reply(&mut e, "EHLO c.example").contains("250-STARTTLS\r\n"));
        assert_eq!(e.helo(), Some("c.example"));
    }

    #[test]
    fn the_seventh_noop_with_a_limit_of_six_gets_421() {
        let mut e = engine_with(|s| s.command_count_limit = 6);
        for _ in 0..6 {
            assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
        }
        let step = e.on_command(b"NOOP");
        assert_eq!(
            step.bytes(),
            b"421 mx.example.test Service unavailable - try again later\r\n"
        );
        assert_eq!(
            lines(&step.events),
            ["COMMAND COUNT LIMIT from [127.0.0.11]:58529 after NOOP"]
        );
        assert_eq!(step.next, Next::Stop(SessionEnd::CommandCountLimit));
    }

    #[test]
    fn quit_is_exempt_from_the_count_limit() {
        let mut e = engine_with(|s| s.command_count_limit = 2);
        reply(&mut e, "NOOP");
        reply(&mut e, "NOOP");
        let step = e.on_command(b"QUIT");
        assert_eq!(step.bytes(), b"221 2.0.0 Bye\r\n");
        assert_eq!(e.command_count(), 3);
    }

    #[test]
    fn the_count_limit_names_the_previous_command() {
        let mut e = engine_with(|s| s.command_count_limit = 1);
        reply(&mut e, "EHLO c");
        let step = e.on_command(b"MAIL FROM:<a@b>");
        assert_eq!(
            lines(&step.events),
            ["COMMAND COUNT LIMIT from [127.0.0.11]:58529 after EHLO"]
        );
        // ... and RCPT over the limit still counts as reaching RCPT, as in postscreen.
        let mut e = engine_with(|s| s.command_count_limit = 1);
        reply(&mut e, "MAIL FROM:<a@b>");
        let step = e.on_command(b"RCPT TO:<c@d>");
        assert_eq!(step.next, Next::Stop(SessionEnd::CommandCountLimit));
        assert!(e.rcpt_reached());
    }

    #[test]
    fn length_and_time_limits_name_the_last_command() {
        let mut e = engine();
        let step = e.on_time_limit();
        assert_eq!(
            step.bytes(),
            b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
        );
        assert_eq!(
            lines(&step.events),
            ["COMMAND TIME LIMIT from [127.0.0.11]:58529 after CONNECT"]
        );
        assert_eq!(step.next, Next::Stop(SessionEnd::CommandTimeLimit));

        let mut e = engine();
        reply(&mut e, "EHLO c");
        let step = e.on_line_too_long();
        assert_eq!(
            step.bytes(),
            b"421 mx.example.test Service unavailable - try again later\r\n"
        );
        assert_eq!(
            lines(&step.events),
            ["COMMAND LENGTH LIMIT from [127.0.0.11]:58529 after EHLO"]
        );
        assert_eq!(step.next, Next::Stop(SessionEnd::CommandLengthLimit));

        let mut e = engine();
        let step = e.on_hangup(Duration::from_millis(1_200));
        assert_eq!(step.reply, None);
        assert_eq!(
            lines(&step.events),
            ["HANGUP after 1.2 from [127.0.0.11]:58529 in tests after SMTP handshake"]
        );
    }

    #[test]
    fn x21_answers_everything_but_quit_with_the_final_reply() {
        let mut e = engine();
        e.set_final_reply(Reply::no_system_resources());
        let step = e.on_command(b"EHLO c");
        assert_eq!(step.bytes(), b"421 4.3.2 No system resources\r\n");
        assert_eq!(step.next, Next::Stop(SessionEnd::FinalReply));

        let mut e = engine();
        e.set_final_reply(Reply::no_system_resources());
        assert_eq!(e.on_command(b"QUIT").bytes(), b"221 2.0.0 Bye\r\n");
    }

    #[test]
    fn soft_bounce_rewrites_replies_and_logs() {
        let mut e = engine_with(|s| {
            s.soft_bounce = true;
            s.rcpt_reply = Reply::denylist_enforce();
        });
        assert_eq!(reply(&mut e, "HELO"), "401 Syntax: HELO hostname\r\n");
        assert_eq!(
            reply(&mut e, "AUTH x"),
            "402 4.5.2 Error: command not recognized\r\n"
        );
        assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
        reply(&mut e, "EHLO h");
        reply(&mut e, "MAIL FROM:<s@x>");
        let step = e.on_command(b"RCPT TO:<r@y>");
        assert_eq!(step.bytes(), b"450 4.3.2 Service currently unavailable\r\n");
        assert_eq!(
            lines(&step.events),
            [
                "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
              unavailable; from=<s@x>, to=<r@y>, proto=ESMTP, helo=<h>"
            ]
        );
        let step = e.on_command(b"DATA");
        assert_eq!(step.bytes(), b"454 4.5.1 Error: no valid recipients\r\n");
    }

    #[test]
    fn the_footer_is_sent_but_not_logged() {
        let mut e = engine_with(|s| {
            s.reject_footer = Some("Contact postmaster@example.test, client $client_address".into())
        });
        reply(&mut e, "MAIL FROM:<s@x>");
        let step = e.on_command(b"RCPT TO:<r@y>");
        assert_eq!(
            String::from_utf8(step.bytes()).unwrap(),
            "450-4.3.2 Service currently unavailable\r\n\
             450 4.3.2 Contact postmaster@example.test, client 127.0.0.11\r\n"
        );
        assert!(lines(&step.events)[0].contains(": 450 4.3.2 Service currently unavailable; from"));
        assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn logged_fields_are_escaped_and_bounded() {
        let mut e = engine();
        e.on_command(b"HELO bad\rname\x1b\xff\xfe");
        assert_eq!(e.helo(), Some("bad\\rname\\033\\377\\376"));
        reply(&mut e, "HELO grüße.example");
        assert_eq!(e.helo(), Some("grüße.example"));
        let long = "a".repeat(2000);
        reply(&mut e, &format!("MAIL FROM:<{long}>"));
        assert_eq!(e.sender().unwrap().len(), MAX_LOGGED_FIELD);
        // An escape is never cut in half.
        let field = log_field(&[0x01; 400]);
        assert!(field.len() <= MAX_LOGGED_FIELD);
        assert_eq!(field.len() % 4, 0);
        assert_eq!(log_field("é\u{85}".as_bytes()), "é\\u{85}");
    }

    #[test]
    fn nothing_panics_on_random_input() {
        // A deterministic xorshift stream of mostly SMTP-ish bytes.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"HELOEHLOMAILFROMRCPTTODATABDATQUITVRFYETRN:<>@\" \\\x00\xff\r\t.";
        for _ in 0..2_000 {
            let mut e = engine_with(|s| s.command_count_limit = 50);
            for _ in 0..60 {
                let len = (next() % 40) as usize;
                let line: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                let step = e.on_command(&line);
                let bytes = step.bytes();
                // Every reply is well-formed: lines of NNN[- ]text CRLF, nothing else.
                if !bytes.is_empty() {
                    let text = String::from_utf8(bytes).unwrap();
                    for l in text.split_terminator("\r\n") {
                        assert!(l.len() >= 4 && l.as_bytes()[..3].iter().all(u8::is_ascii_digit));
                        assert!(!l.contains(['\r', '\n']));
                    }
                }
                for event in &step.events {
                    let line = event.line(client()).to_string();
                    assert!(!line.contains(['\r', '\n', '\0']), "{line:?}");
                }
            }
        }
    }

    // The driver

    const LIMIT: Duration = Duration::from_secs(5);

    /// Runs `serve` in a task that closes its end when done.
    fn spawn_serve(
        mut engine: Engine,
        limit: Duration,
    ) -> (DuplexStream, tokio::task::JoinHandle<(Outcome, Vec<Event>)>) {
        let (client, mut server) = duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let outcome = serve(&mut server, &mut engine, limit, |e| seen.push(e.clone())).await;
            drop(server);
            (outcome, seen)
        });
        (client, task)
    }

    /// Reads one complete reply (up to a line with a space after the code).
    async fn read_reply<S: AsyncRead + Unpin>(client: &mut S) -> String {
        let mut text = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            if client.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            text.push(byte[0]);
            if text.ends_with(b"\r\n") {
                let line_start = text[..text.len() - 2]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
                if text.get(line_start + 3) == Some(&b' ') {
                    break;
                }
            }
        }
        String::from_utf8(text).unwrap()
    }

    #[tokio::test]
    async fn a_full_session_over_a_stream() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        assert_eq!(
            read_reply(&mut client).await,
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        client.write_all(b"EHLO h.example\r\n").await.unwrap();
        assert!(read_reply(&mut client).await.ends_with("250 CHUNKING\r\n"));
        client
            .write_all(b"MAIL FROM:<s@example.org>\r\n")
            .await
            .unwrap();
        assert_eq!(read_reply(&mut client).await, "250 2.1.0 Ok\r\n");
        // A command split across writes is still one command.
        client.write_all(b"RCPT TO:<r@exa").await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(b"mple.test>\r\n").await.unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "450 4.3.2 Service currently unavailable\r\n"
        );
        client.write_all(b"QUIT\n").await.unwrap();
        assert_eq!(read_reply(&mut client).await, "221 2.0.0 Bye\r\n");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        let (outcome, seen) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Quit);
        assert!(outcome.rcpt_reached);
        assert_eq!(
            lines(&outcome.events),
            [
                "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
              unavailable; from=<s@example.org>, to=<r@example.test>, proto=ESMTP, \
              helo=<h.example>"
            ]
        );
        assert_eq!(seen, outcome.events);
    }

    #[tokio::test]
    async fn a_session_sent_in_one_write_ends_at_data() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        client
            .write_all(b"HELO h\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nNOOP\r\n")
            .await
            .unwrap();
        let mut transcript = Vec::new();
        client.read_to_end(&mut transcript).await.unwrap();
        assert_eq!(
            String::from_utf8(transcript).unwrap(),
            "220 mx.example.test ESMTP Postfix\r\n\
             250 mx.example.test\r\n\
             250 2.1.0 Ok\r\n\
             450 4.3.2 Service currently unavailable\r\n\
             554 5.5.1 Error: no valid recipients\r\n"
        );
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::DataRefused);
        assert_eq!(outcome.events.len(), 2);
        assert_eq!(outcome.events[1], Event::DataWithoutRcpt);
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_limit_covers_the_whole_line_against_a_trickling_client() {
        let started = Instant::now();
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        assert_eq!(
            read_reply(&mut client).await,
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        let writer = tokio::spawn(async move {
            // One byte a second, never a full line.
            for b in b"NOOP NOOP NOOP" {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
            }
            client
        });
        let (outcome, _) = task.await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(outcome.end, SessionEnd::CommandTimeLimit);
        assert!(
            elapsed >= LIMIT && elapsed < LIMIT + Duration::from_secs(1),
            "{elapsed:?}"
        );
        assert_eq!(
            lines(&outcome.events),
            ["COMMAND TIME LIMIT from [127.0.0.11]:58529 after CONNECT"]
        );
        let mut client = writer.await.unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_times_out_after_the_last_command() {
        let started = Instant::now();
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        read_reply(&mut client).await;
        // Commands every four seconds keep the session alive...
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            client.write_all(b"NOOP\r\n").await.unwrap();
            assert_eq!(read_reply(&mut client).await, "250 2.0.0 Ok\r\n");
        }
        // ...then silence ends it five seconds after the last one.
        let (outcome, _) = task.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(17));
        assert_eq!(outcome.end, SessionEnd::CommandTimeLimit);
        assert_eq!(
            lines(&outcome.events),
            ["COMMAND TIME LIMIT from [127.0.0.11]:58529 after NOOP"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn end_of_input_is_a_hangup() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        read_reply(&mut client).await;
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        // Half a command, then gone.
        client.write_all(b"EHLO ha").await.unwrap();
        drop(client);
        let (outcome, seen) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Hangup);
        assert!(!outcome.rcpt_reached);
        assert_eq!(
            lines(&outcome.events),
            ["HANGUP after 1.2 from [127.0.0.11]:58529 in tests after SMTP handshake"]
        );
        assert_eq!(seen, outcome.events);
    }

    #[tokio::test]
    async fn a_hangup_after_rcpt_still_reached_rcpt() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        client
            .write_all(b"EHLO h\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
            .await
            .unwrap();
        let mut transcript = Vec::new();
        // Read the four replies, then hang up.
        while !String::from_utf8_lossy(&transcript).contains("450 4.3.2") {
            let mut buf = [0u8; 1024];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0);
            transcript.extend_from_slice(&buf[..n]);
        }
        drop(client);
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Hangup);
        assert!(outcome.rcpt_reached);
        assert!(matches!(outcome.events[1], Event::Hangup { .. }));
    }

    #[tokio::test]
    async fn an_overlong_line_gets_421_without_being_buffered() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        read_reply(&mut client).await;
        client.write_all(b"EHLO h\r\n").await.unwrap();
        read_reply(&mut client).await;
        let writer = tokio::spawn(async move {
            let junk = vec![b'A'; 1 << 20];
            // The server stops reading long before the end; the write then fails.
            let _ = client.write_all(&junk).await;
            client
        });
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::CommandLengthLimit);
        assert_eq!(
            lines(&outcome.events),
            ["COMMAND LENGTH LIMIT from [127.0.0.11]:58529 after EHLO"]
        );
        let mut client = writer.await.unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "421 mx.example.test Service unavailable - try again later\r\n"
        );
    }

    #[tokio::test]
    async fn a_pregreeter_gets_no_greeting() {
        let mut engine = engine();
        engine.set_pregreeted();
        let (mut client, task) = spawn_serve(engine, LIMIT);
        client.write_all(b"QUIT\r\n").await.unwrap();
        let mut transcript = Vec::new();
        client.read_to_end(&mut transcript).await.unwrap();
        assert_eq!(transcript, b"221 2.0.0 Bye\r\n");
        assert_eq!(task.await.unwrap().0.end, SessionEnd::Quit);
    }

    #[tokio::test]
    async fn starttls_hands_the_stream_back_and_drops_buffered_input() {
        let (mut client, mut server) = duplex(4096);
        let mut engine = engine_with(|s| s.starttls_offered = true);
        // A command injected behind STARTTLS must not be answered.
        client
            .write_all(b"EHLO h\r\nSTARTTLS\r\nMAIL FROM:<injected@x>\r\n")
            .await
            .unwrap();
        let outcome = serve(&mut server, &mut engine, LIMIT, |_| {}).await;
        assert_eq!(outcome.end, SessionEnd::StartTls);
        assert_eq!(engine.sender(), None);
        // Here the caller would send Reply::starttls_ready() and do the handshake.
        engine.tls_established();
        client.write_all(b"QUIT\r\n").await.unwrap();
        let outcome = serve(&mut server, &mut engine, LIMIT, |_| {}).await;
        assert_eq!(outcome.end, SessionEnd::Quit);
        drop(server);
        let mut transcript = Vec::new();
        client.read_to_end(&mut transcript).await.unwrap();
        let transcript = String::from_utf8(transcript).unwrap();
        assert!(transcript.starts_with("220 mx.example.test ESMTP Postfix\r\n250-"));
        // No second greeting, no reply to the injected MAIL.
        assert!(
            transcript.ends_with("250 CHUNKING\r\n221 2.0.0 Bye\r\n"),
            "{transcript}"
        );
    }

    #[tokio::test]
    async fn a_client_that_is_gone_before_the_reply_is_a_hangup() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        client.write_all(b"NOOP\r\n").await.unwrap();
        drop(client);
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Hangup);
        assert!(matches!(outcome.events[..], [Event::Hangup { .. }]));
    }

    // Deep protocol tests

    fn deep_engine(change: impl FnOnce(&mut DeepTests)) -> Engine {
        engine_with(|s| change(&mut s.deep_tests))
    }

    /// What the driver would see feeding `chunks` as successive reads.
    #[derive(Debug, Default)]
    struct Fed {
        transcript: String,
        events: Vec<String>,
        end: Option<SessionEnd>,
    }

    fn feed(engine: &mut Engine, chunks: &[&[u8]]) -> Fed {
        let mut reader = LineReader::new(engine.settings().line_length_limit);
        let mut fed = Fed::default();
        for chunk in chunks {
            assert_eq!(reader.extend(chunk), chunk.len(), "chunk does not fit");
            while let Some(line) = reader.next_line().unwrap() {
                let step = engine.on_line(line);
                fed.transcript
                    .push_str(&String::from_utf8(step.bytes()).unwrap());
                fed.events.extend(lines(&step.events));
                if let Next::Stop(end) = step.next {
                    fed.end = Some(end);
                    return fed;
                }
            }
        }
        fed
    }

    const PIPELINED: &[u8] = b"EHLO h.example\r\nMAIL FROM:<p@example.org>\r\n";

    #[test]
    fn the_labs_pipelining_line() {
        let mut e = deep_engine(|d| d.pipelining = Some(TestAction::Enforce));
        let fed = feed(&mut e, &[PIPELINED]);
        assert_eq!(
            fed.events,
            [
                "COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: MAIL FROM:<p@example.org>\\r\\n"
            ]
        );
        // Both commands are still answered.
        assert!(fed.transcript.ends_with("250 CHUNKING\r\n250 2.1.0 Ok\r\n"));
    }

    #[test]
    fn two_commands_in_one_read_are_pipelining_at_every_split() {
        let first = b"EHLO h.example\r\n".len();
        for k in 0..=PIPELINED.len() {
            let mut e = deep_engine(|d| d.pipelining = Some(TestAction::Enforce));
            let fed = feed(&mut e, &[&PIPELINED[..k], &PIPELINED[k..]]);
            assert!(fed.transcript.ends_with("250 2.1.0 Ok\r\n"), "split at {k}");
            assert_eq!(fed.end, None);
            if k == first {
                // The reads split exactly between the commands: a client that waited.
                assert!(fed.events.is_empty(), "split at {k}: {:?}", fed.events);
                assert_eq!(e.deep_test_results().pipelining, TestOutcome::NotCompleted);
                continue;
            }
            // What was buffered behind EHLO when it completed.
            let pending = if k > first {
                &PIPELINED[first..k]
            } else {
                &PIPELINED[first..]
            };
            assert_eq!(
                fed.events,
                [format!(
                    "COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: {}",
                    c_escape(pending, 1000)
                )],
                "split at {k}"
            );
            assert_eq!(e.deep_test_results().pipelining, TestOutcome::Failed);
        }
    }

    #[test]
    fn one_command_split_at_every_position_violates_nothing() {
        let input = b"MAIL FROM:<a@example.org>\r\n";
        for k in 0..=input.len() {
            for j in k..=input.len() {
                let mut e = deep_engine(|d| {
                    d.pipelining = Some(TestAction::Drop);
                    d.non_smtp_command = Some(TestAction::Drop);
                    d.bare_newline = Some(TestAction::Drop);
                });
                let fed = feed(&mut e, &[&input[..k], &input[k..j], &input[j..]]);
                assert_eq!(fed.transcript, "250 2.1.0 Ok\r\n", "split at {k}, {j}");
                assert!(fed.events.is_empty());
                assert_eq!(e.deep_test_results(), DeepTestResults::default());
            }
        }
    }

    #[test]
    fn bare_newline_against_crlf_at_every_split() {
        for (input, bare) in [
            (&b"EHLO b.example\n"[..], true),
            (b"EHLO b.example\r\n", false),
        ] {
            for k in 0..=input.len() {
                let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Enforce));
                let fed = feed(&mut e, &[&input[..k], &input[k..]]);
                // The line is answered either way.
                assert!(fed.transcript.ends_with("250 CHUNKING\r\n"), "split at {k}");
                assert_eq!(e.helo(), Some("b.example"));
                if bare {
                    // The lab's line for this client.
                    assert_eq!(
                        fed.events,
                        ["BARE NEWLINE from [127.0.0.11]:58529 after EHLO b.example"],
                        "split at {k}"
                    );
                    assert_eq!(e.deep_test_results().bare_newline, TestOutcome::Failed);
                } else {
                    assert!(fed.events.is_empty(), "split at {k}");
                }
            }
        }
    }

    #[test]
    fn bare_newline_text_is_escaped_and_bounded() {
        for (input, logged) in [
            (&b"NOOP\rX\x01\n"[..], "NOOP\\rX\\001".to_string()),
            (b"\n", String::new()),
            // The text after a NUL is logged too, though the command ends there.
            (b"NOOP\0junk\xff\n", "NOOP\\000junk\\377".to_string()),
            (
                format!("NOOP {}\n", "x".repeat(600)).as_bytes(),
                format!("NOOP {}", "x".repeat(95)),
            ),
        ] {
            let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Ignore));
            let fed = feed(&mut e, &[input]);
            assert_eq!(
                fed.events,
                [format!(
                    "BARE NEWLINE from [127.0.0.11]:58529 after {logged}"
                )]
            );
        }
    }

    /// (test, reads that violate it right after the greeting, the violation's log line,
    /// the reply to the offending line when the action is not drop).
    fn violations() -> [(DeepTest, Vec<&'static [u8]>, &'static str, &'static str); 3] {
        [
            (
                DeepTest::Pipelining,
                vec![b"EHLO h.example\r\nNOOP\r\n"],
                "COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: NOOP\\r\\n",
                "250 CHUNKING\r\n250 2.0.0 Ok\r\n",
            ),
            (
                DeepTest::NonSmtpCommand,
                vec![b"EHLO h.example\r\n", b"GET / HTTP/1.0\r\n"],
                // The lab's line for this client.
                "NON-SMTP COMMAND from [127.0.0.11]:58529 after EHLO: GET / HTTP/1.0",
                "502 5.5.2 Error: command not recognized\r\n",
            ),
            (
                DeepTest::BareNewline,
                vec![b"EHLO h.example\n"],
                "BARE NEWLINE from [127.0.0.11]:58529 after EHLO h.example",
                "250 CHUNKING\r\n",
            ),
        ]
    }

    fn with_action(test: DeepTest, action: TestAction) -> Engine {
        let mut e = engine();
        e.set_deep_test(test, Some(action));
        e
    }

    #[test]
    fn drop_sends_521_at_once_and_runs_nothing_more() {
        for (test, reads, logged, _) in violations() {
            let mut e = with_action(test, TestAction::Drop);
            let fed = feed(&mut e, &reads);
            let expected_reply = match test {
                DeepTest::NonSmtpCommand => "521 5.7.0 Error: I can break rules, too. Goodbye.\r\n",
                _ => "521 5.5.1 Protocol error\r\n",
            };
            assert!(
                fed.transcript.ends_with(expected_reply),
                "{test:?}: {}",
                fed.transcript
            );
            // The offending command itself is not answered: the EHLO reply appears only
            // when the EHLO was a separate read.
            assert_eq!(
                fed.transcript.contains("250-mx.example.test"),
                test == DeepTest::NonSmtpCommand,
                "{test:?}"
            );
            assert_eq!(fed.events, [logged]);
            assert_eq!(fed.end, Some(SessionEnd::Dropped(test)));
            assert_eq!(e.deep_test_results().get(test), TestOutcome::Failed);
            // Nothing after the drop.
            assert_eq!(e.on_command(b"QUIT").reply, None);
        }
    }

    #[test]
    fn enforce_refuses_every_later_rcpt_with_550() {
        for (test, reads, logged, reply) in violations() {
            let mut e = with_action(test, TestAction::Enforce);
            let fed = feed(&mut e, &reads);
            assert!(
                fed.transcript.ends_with(reply),
                "{test:?}: {}",
                fed.transcript
            );
            assert_eq!(fed.events, [logged]);
            assert_eq!(fed.end, None);
            let fed = feed(&mut e, &[b"MAIL FROM:<s@example.org>\r\n"]);
            assert_eq!(fed.transcript, "250 2.1.0 Ok\r\n");
            for to in ["r@example.test", "s@example.test"] {
                let fed = feed(&mut e, &[format!("RCPT TO:<{to}>\r\n").as_bytes()]);
                assert_eq!(fed.transcript, "550 5.5.1 Protocol error\r\n");
                assert_eq!(
                    fed.events,
                    [format!(
                        "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 550 5.5.1 Protocol \
                         error; from=<s@example.org>, to=<{to}>, proto=ESMTP, \
                         helo=<h.example>"
                    )]
                );
            }
            // Reaching RCPT does not undo the failure.
            assert_eq!(
                e.deep_test_results().get(test),
                TestOutcome::Failed,
                "{test:?}"
            );
        }
    }

    #[test]
    fn ignore_logs_only() {
        for (test, reads, logged, reply) in violations() {
            let mut e = with_action(test, TestAction::Ignore);
            let fed = feed(&mut e, &reads);
            assert!(fed.transcript.ends_with(reply), "{test:?}");
            assert_eq!(fed.events, [logged]);
            assert_eq!(e.deep_test_results().get(test), TestOutcome::Ignored);
            feed(&mut e, &[b"MAIL FROM:<s@example.org>\r\n"]);
            let fed = feed(&mut e, &[b"RCPT TO:<r@example.test>\r\n"]);
            assert_eq!(
                fed.transcript,
                "450 4.3.2 Service currently unavailable\r\n"
            );
            assert_eq!(
                e.deep_test_results().get(test),
                TestOutcome::Ignored,
                "{test:?}"
            );
        }
    }

    #[test]
    fn the_labs_bare_newline_client_gets_550_at_rcpt() {
        // Lab 127.0.0.14: `EHLO b.example\n`, bare_newline_action = enforce.
        let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Enforce));
        let fed = feed(
            &mut e,
            &[
                b"EHLO b.example\n",
                b"MAIL FROM:<s@example.org>\n",
                b"RCPT TO:<r@example.test>\n",
            ],
        );
        assert!(
            fed.transcript
                .ends_with("250 2.1.0 Ok\r\n550 5.5.1 Protocol error\r\n")
        );
        // Only the first bare newline is logged.
        assert_eq!(fed.events.len(), 2);
        assert_eq!(
            fed.events[0],
            "BARE NEWLINE from [127.0.0.11]:58529 after EHLO b.example"
        );
    }

    #[test]
    fn the_tests_pass_only_at_rcpt() {
        let all = |d: &mut DeepTests| {
            d.pipelining = Some(TestAction::Enforce);
            d.non_smtp_command = Some(TestAction::Drop);
            d.bare_newline = Some(TestAction::Ignore);
        };
        let passed = DeepTestResults {
            pipelining: TestOutcome::Passed,
            non_smtp_command: TestOutcome::Passed,
            bare_newline: TestOutcome::Passed,
        };
        // A clean client that quits before RCPT earns nothing.
        let mut e = deep_engine(all);
        let fed = feed(
            &mut e,
            &[
                b"EHLO h\r\n",
                b"MAIL FROM:<s@x>\r\n",
                b"NOOP\r\n",
                b"QUIT\r\n",
            ],
        );
        assert_eq!(fed.end, Some(SessionEnd::Quit));
        assert_eq!(e.deep_test_results(), DeepTestResults::default());
        // One that reaches RCPT passes every test that runs.
        let mut e = deep_engine(all);
        feed(&mut e, &[b"EHLO h\r\n", b"MAIL FROM:<s@x>\r\n"]);
        assert_eq!(e.deep_test_results(), DeepTestResults::default());
        feed(&mut e, &[b"RCPT TO:<r@y>\r\n"]);
        assert_eq!(e.deep_test_results(), passed);
        // A violation after RCPT still counts: enforce fails the test...
        let fed = feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]);
        assert_eq!(fed.events.len(), 1);
        assert_eq!(e.deep_test_results().pipelining, TestOutcome::Failed);
        // ...and ignore turns the pass into the short-lived one.
        feed(&mut e, &[b"NOOP\n"]);
        assert_eq!(
            e.deep_test_results(),
            DeepTestResults {
                pipelining: TestOutcome::Failed,
                non_smtp_command: TestOutcome::Passed,
                bare_newline: TestOutcome::Ignored,
            }
        );
        // A refused RCPT counts as reaching RCPT, as in postscreen.
        let mut e = deep_engine(all);
        let fed = feed(&mut e, &[b"RCPT TO:<r@y>\r\n"]);
        assert_eq!(fed.transcript, "503 5.5.1 Error: need MAIL command\r\n");
        assert_eq!(e.deep_test_results(), passed);
        // Tests that do not run never pass.
        let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Enforce));
        feed(&mut e, &[b"MAIL FROM:<s@x>\r\nRCPT TO:<r@y>\r\n"]);
        assert_eq!(
            e.deep_test_results(),
            DeepTestResults {
                bare_newline: TestOutcome::Passed,
                ..DeepTestResults::default()
            }
        );
    }

    #[test]
    fn each_test_fires_once_per_session() {
        let mut e = deep_engine(|d| {
            d.pipelining = Some(TestAction::Ignore);
            d.non_smtp_command = Some(TestAction::Ignore);
            d.bare_newline = Some(TestAction::Ignore);
        });
        let fed = feed(&mut e, &[b"NOOP\r\nNOOP\r\nNOOP\r\n"]);
        assert_eq!(fed.events.len(), 1);
        let fed = feed(&mut e, &[b"GET /\r\n", b"POST /\r\n", b"Subject: x\r\n"]);
        assert_eq!(
            fed.events,
            ["NON-SMTP COMMAND from [127.0.0.11]:58529 after NOOP: GET /"]
        );
        // Still answered like any unknown command.
        assert_eq!(
            fed.transcript,
            "502 5.5.2 Error: command not recognized\r\n".repeat(3)
        );
        let fed = feed(&mut e, &[b"NOOP\n", b"NOOP\n"]);
        assert_eq!(fed.events.len(), 1);
        assert_eq!(fed.transcript, "250 2.0.0 Ok\r\n".repeat(2));
    }

    #[test]
    fn non_smtp_commands() {
        for (line, logged) in [
            (&b"GET / HTTP/1.0"[..], "GET / HTTP/1.0"),
            (b"get /index.html", "get /index.html"),
            (b"POST /cgi-bin/x HTTP/1.1", "POST /cgi-bin/x HTTP/1.1"),
            (
                b"CONNECT mx.example.test:25 HTTP/1.1",
                "CONNECT mx.example.test:25 HTTP/1.1",
            ),
            // Header lines.
            (b"Subject: hello", "Subject: hello"),
            (b"From:<a@example.org>", "From:<a@example.org> "),
            (b"X-Spam\t: yes", "X-Spam?: yes"),
            (b"MAIL: x", "MAIL: x"),
            // Commands that do not start with a letter (postscreen 3.7's regexp).
            (b"\x16\x03\x01\x02\x00\x01", "???? "),
            (b"<html><body>", "<html><body> "),
            (b"123 go", "123 go"),
            (b":x", ":x "),
            (b"\tEHLO x", "?EHLO x"),
            (b"\xc3\x89HLO x", "\u{c9}HLO x"),
            // Invalid UTF-8.
            (b"HEL\xffO x\x01", "HEL?O x\\001"),
            (b"HE\xc3", "HE? "),
        ] {
            let mut e = with_action(DeepTest::NonSmtpCommand, TestAction::Drop);
            let fed = feed(&mut e, &[line, b"\r\n"]);
            assert_eq!(
                fed.events,
                [format!(
                    "NON-SMTP COMMAND from [127.0.0.11]:58529 after CONNECT: {logged}"
                )],
                "{line:?}"
            );
            assert_eq!(
                fed.transcript,
                "521 5.7.0 Error: I can break rules, too. Goodbye.\r\n"
            );
        }
    }

    #[test]
    fn smtp_and_unknown_commands_are_not_non_smtp() {
        for line in [
            &b""[..],
            b"   ",
            b"XYZZY",
            b"HELOX a",
            b"Subject",
            b"a b:c",
            b"AUTH PLAIN AGZvbwBiYXI=",
            b"XCLIENT NAME=x",
            b"XFORWARD ADDR=1.2.3.4",
            b"H\xc3\x89LO x",
            b"NOOP",
            b"noop \x16",
        ] {
            let mut e = with_action(DeepTest::NonSmtpCommand, TestAction::Drop);
            let fed = feed(&mut e, &[line, b"\r\n"]);
            assert!(fed.events.is_empty(), "{line:?}: {:?}", fed.events);
            assert_eq!(fed.end, None);
        }
        // Invalid UTF-8 counts only with SMTPUTF8 on.
        let mut e = engine_with(|s| {
            s.smtputf8 = false;
            s.deep_tests.non_smtp_command = Some(TestAction::Drop);
        });
        let fed = feed(&mut e, &[b"HEL\xffO x\r\n"]);
        assert!(fed.events.is_empty());
        // An empty forbidden list leaves header lines.
        let mut e = engine_with(|s| {
            s.deep_tests.forbidden_commands = Vec::new();
            s.deep_tests.non_smtp_command = Some(TestAction::Drop);
        });
        let fed = feed(&mut e, &[b"GET /\r\n123\r\n"]);
        assert!(fed.events.is_empty());
        let fed = feed(&mut e, &[b"Subject: x\r\n"]);
        assert_eq!(fed.end, Some(SessionEnd::Dropped(DeepTest::NonSmtpCommand)));
    }

    #[test]
    fn pipelining_names_the_command_as_sent_and_bounds_the_input() {
        let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
        let fed = feed(&mut e, &[b"ehlo h\r\n\x01\xff\r\n"]);
        assert_eq!(
            fed.events,
            ["COMMAND PIPELINING from [127.0.0.11]:58529 after ehlo: \\001\\377\\r\\n"]
        );
        // Unknown and garbage command words are printed with `?`.
        let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
        let fed = feed(&mut e, &[b"X\tY\xfe z\r\nNOOP\r\n"]);
        assert_eq!(
            fed.events,
            ["COMMAND PIPELINING from [127.0.0.11]:58529 after X?Y?: NOOP\\r\\n"]
        );
        // At most 100 bytes of the pending input, escaped.
        let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
        let mut input = b"NOOP\r\n".to_vec();
        input.extend([b'A'; 1000]);
        let fed = feed(&mut e, &[&input]);
        assert_eq!(
            fed.events,
            [format!(
                "COMMAND PIPELINING from [127.0.0.11]:58529 after NOOP: {}",
                "A".repeat(100)
            )]
        );
        let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
        let mut input = b"NOOP\r\n".to_vec();
        input.extend([0u8; 1000]);
        let fed = feed(&mut e, &[&input]);
        assert_eq!(
            fed.events[0].len(),
            "COMMAND PIPELINING from [127.0.0.11]:58529 after NOOP: ".len() + 400
        );
        // A command word of 2000 bytes is printed up to 100.
        let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
        let input = format!("{}\r\nNOOP\r\n", "Z".repeat(2000));
        let fed = feed(&mut e, &[input.as_bytes()]);
        assert_eq!(
            fed.events,
            [format!(
                "COMMAND PIPELINING from [127.0.0.11]:58529 after {}: NOOP\\r\\n",
                "Z".repeat(100)
            )]
        );
    }

    #[test]
    fn bdat_is_followed_by_its_chunk_not_by_pipelined_commands() {
        let mut e = with_action(DeepTest::Pipelining, TestAction::Drop);
        let fed = feed(
            &mut e,
            &[b"MAIL FROM:<a@b>\r\n", b"BDAT 10 LAST\r\n0123456789"],
        );
        assert_eq!(
            fed.events,
            ["BDAT without valid RCPT from [127.0.0.11]:58529"]
        );
        assert_eq!(fed.end, Some(SessionEnd::DataRefused));
        // DATA is not exempt.
        let mut e = with_action(DeepTest::Pipelining, TestAction::Drop);
        let fed = feed(&mut e, &[b"DATA\r\nSubject: x\r\n"]);
        assert_eq!(fed.end, Some(SessionEnd::Dropped(DeepTest::Pipelining)));
    }

    #[test]
    fn several_tests_in_one_line_log_in_postscreens_order() {
        let mut e = deep_engine(|d| {
            d.pipelining = Some(TestAction::Enforce);
            d.non_smtp_command = Some(TestAction::Enforce);
            d.bare_newline = Some(TestAction::Enforce);
        });
        let fed = feed(&mut e, &[b"GET /\nNOOP\r\n"]);
        assert_eq!(
            fed.events,
            [
                "BARE NEWLINE from [127.0.0.11]:58529 after GET /",
                "NON-SMTP COMMAND from [127.0.0.11]:58529 after CONNECT: GET /",
                "COMMAND PIPELINING from [127.0.0.11]:58529 after GET: NOOP\\r\\n",
            ]
        );
        assert_eq!(
            fed.transcript,
            "502 5.5.2 Error: command not recognized\r\n250 2.0.0 Ok\r\n"
        );
        let failed = DeepTestResults {
            pipelining: TestOutcome::Failed,
            non_smtp_command: TestOutcome::Failed,
            bare_newline: TestOutcome::Failed,
        };
        assert_eq!(e.deep_test_results(), failed);
        // A drop further down still reports what fired before it.
        let mut e = deep_engine(|d| {
            d.non_smtp_command = Some(TestAction::Enforce);
            d.pipelining = Some(TestAction::Drop);
        });
        let fed = feed(&mut e, &[b"Subject: x\r\nNOOP\r\n"]);
        assert_eq!(fed.events.len(), 2);
        assert_eq!(fed.transcript, "521 5.5.1 Protocol error\r\n");
        assert_eq!(fed.end, Some(SessionEnd::Dropped(DeepTest::Pipelining)));
    }

    #[test]
    fn the_last_reply_set_at_rcpt_wins() {
        let mut e = with_action(DeepTest::Pipelining, TestAction::Enforce);
        let dnsbl = Reply::dnsbl_enforce("127.0.0.40".parse().unwrap(), "bl.example").unwrap();
        e.set_rcpt_reply(dnsbl.clone()).unwrap();
        feed(&mut e, &[b"MAIL FROM:<a@b>\r\nNOOP\r\n"]);
        let fed = feed(&mut e, &[b"RCPT TO:<c@d>\r\n"]);
        assert_eq!(fed.transcript, "550 5.5.1 Protocol error\r\n");
        e.set_rcpt_reply(dnsbl).unwrap();
        let fed = feed(&mut e, &[b"RCPT TO:<c@d>\r\n"]);
        assert!(fed.transcript.starts_with("550 5.7.1 Service unavailable"));
    }

    #[test]
    fn no_deep_test_runs_in_x21_mode() {
        let mut e = deep_engine(|d| {
            d.pipelining = Some(TestAction::Drop);
            d.non_smtp_command = Some(TestAction::Drop);
            d.bare_newline = Some(TestAction::Drop);
        });
        e.set_final_reply(Reply::no_system_resources());
        let fed = feed(&mut e, &[b"GET /\nNOOP\r\n"]);
        assert_eq!(fed.transcript, "421 4.3.2 No system resources\r\n");
        assert!(fed.events.is_empty());
        assert_eq!(fed.end, Some(SessionEnd::FinalReply));
    }

    #[test]
    fn a_drop_comes_before_the_count_limit_and_enforce_after_it() {
        let mut e = engine_with(|s| {
            s.command_count_limit = 1;
            s.deep_tests.non_smtp_command = Some(TestAction::Drop);
        });
        let fed = feed(&mut e, &[b"NOOP\r\n", b"GET /\r\n"]);
        assert!(
            fed.transcript
                .ends_with("521 5.7.0 Error: I can break rules, too. Goodbye.\r\n")
        );
        let mut e = engine_with(|s| {
            s.command_count_limit = 1;
            s.deep_tests.non_smtp_command = Some(TestAction::Enforce);
        });
        let fed = feed(&mut e, &[b"NOOP\r\n", b"GET /\r\n"]);
        assert_eq!(
            fed.events,
            [
                "NON-SMTP COMMAND from [127.0.0.11]:58529 after NOOP: GET /",
                "COMMAND COUNT LIMIT from [127.0.0.11]:58529 after NOOP",
            ]
        );
        assert_eq!(fed.end, Some(SessionEnd::CommandCountLimit));
    }

    #[test]
    fn a_session_can_turn_tests_on_and_off() {
        let mut e = engine();
        assert!(feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]).events.is_empty());
        e.set_deep_test(DeepTest::Pipelining, Some(TestAction::Enforce));
        assert_eq!(feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]).events.len(), 1);
        let mut e = deep_engine(|d| d.pipelining = Some(TestAction::Enforce));
        e.set_deep_test(DeepTest::Pipelining, None);
        assert!(feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]).events.is_empty());
        // A test that fired keeps its result.
        let mut e = with_action(DeepTest::BareNewline, TestAction::Drop);
        feed(&mut e, &[b"NOOP\n"]);
        e.set_deep_test(DeepTest::BareNewline, None);
        assert_eq!(e.deep_test_results().bare_newline, TestOutcome::Failed);
    }

    #[test]
    fn results_go_into_the_session_record() {
        let results = DeepTestResults {
            pipelining: TestOutcome::Passed,
            non_smtp_command: TestOutcome::NotCompleted,
            bare_newline: TestOutcome::Ignored,
        };
        let mut record = SessionResults {
            pregreet: TestOutcome::Passed,
            non_smtp_command: TestOutcome::Failed,
            ..SessionResults::default()
        };
        results.record_into(&mut record);
        assert_eq!(record.pipelining, TestOutcome::Passed);
        assert_eq!(record.non_smtp_command, TestOutcome::Failed);
        assert_eq!(record.bare_newline, TestOutcome::Ignored);
        assert_eq!(record.pregreet, TestOutcome::Passed);
        for test in DeepTest::ALL {
            assert!(Test::from(test).is_deep());
        }
    }

    #[test]
    fn forbidden_command_lists() {
        let defaults = ForbiddenCommand::parse_list(DEFAULT_FORBIDDEN_COMMANDS).unwrap();
        assert_eq!(defaults, ForbiddenCommand::defaults());
        assert_eq!(
            defaults.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["CONNECT", "GET", "POST", "regexp:{{/^[^A-Z]/ Bogus}}"]
        );
        assert_eq!(DeepTests::default().forbidden_commands, defaults);
        for text in [
            "CONNECT, GET,POST\tregexp:{ { /^[^A-Z]/ Bogus } }",
            "  CONNECT GET POST pcre:{{/^[^A-Z]/}}  ",
            "CONNECT\nGET\n POST, regexp:{{/^[^A-Z]/   whatever it says}}",
        ] {
            assert_eq!(
                ForbiddenCommand::parse_list(text).unwrap(),
                defaults,
                "{text:?}"
            );
        }
        assert_eq!(ForbiddenCommand::parse_list("").unwrap(), []);
        assert_eq!(ForbiddenCommand::parse_list(" , ").unwrap(), []);
        let only = ForbiddenCommand::parse_list("EXPN").unwrap();
        assert!(only[0].matches(b"expn") && !only[0].matches(b"EXPN2"));
        // Entries one by one.
        assert_eq!(
            ForbiddenCommand::parse("regexp:{{/^[^A-Z]/ Bogus}}").unwrap(),
            ForbiddenCommand::not_starting_with_letter()
        );
        assert_eq!(ForbiddenCommand::parse(" GET ").unwrap(), defaults[1]);
        for bad in ["", "GET POST", "hash:/x"] {
            let err = ForbiddenCommand::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("forbidden_commands = "), "{err}");
        }
        let rule = ForbiddenCommand::not_starting_with_letter();
        for (command, matches) in [
            (&b"1"[..], true),
            (b"\x16", true),
            (b"\xc3\x89", true),
            (b"_x", true),
            (b"a", false),
            (b"Z9", false),
            (b"", false),
        ] {
            assert_eq!(rule.matches(command), matches, "{command:?}");
        }
    }

    #[test]
    fn bad_forbidden_command_lists_say_why() {
        for (text, why) in [
            (
                "GET hash:/etc/postfix/forbidden",
                "hash: tables are not supported",
            ),
            ("cidr:{{1.2.3.4 x}}", "cidr: tables are not supported"),
            ("regexp:/etc/postfix/forbidden.re", "only the inline table"),
            ("regexp:{{/^[^a-z]/ Bogus}}", "only the inline table"),
            ("regexp:{{/^[^A-Z]/i Bogus}}", "only the inline table"),
            ("regexp:{{/^[^A-Z]/ x} {/^X/ y}}", "only the inline table"),
            ("!GET", "negated entries"),
            ("GET {POST}", "without braces"),
            ("GET }", "a '}' without '{' at byte 4"),
            ("regexp:{{/^[^A-Z]/ x}", "a '{' without '}'"),
            ("G\u{e9}T", "printable ASCII"),
        ] {
            let err = ForbiddenCommand::parse_list(text).unwrap_err().to_string();
            assert!(err.starts_with("forbidden_commands = "), "{err}");
            assert!(err.contains(why), "{text:?}: {err}");
        }
        let long = "X".repeat(MAX_FORBIDDEN_COMMAND_LEN + 1);
        let err = ForbiddenCommand::parse_list(&long).unwrap_err().to_string();
        assert!(err.contains("longer than 64 bytes"), "{err}");
        let many = "GET ".repeat(MAX_FORBIDDEN_COMMANDS + 1);
        let err = ForbiddenCommand::parse_list(&many).unwrap_err().to_string();
        assert!(err.contains("more than 64 entries"), "{err}");
        let huge = " ".repeat(1 << 20);
        assert!(ForbiddenCommand::parse_list(&huge).is_err());
        // Built by hand, the list is still checked.
        let mut s = settings();
        s.deep_tests.forbidden_commands = vec![ForbiddenCommand::not_starting_with_letter(); 65];
        let err = s.validate().unwrap_err();
        assert!(err.to_string().starts_with("forbidden_commands"), "{err}");
    }

    #[test]
    fn headers_are_recognised_like_postfix() {
        for (command, header) in [
            (&b"Subject:"[..], true),
            (b"Subject:x", true),
            (b"X-A \t :", true),
            (b"a:", true),
            (b":", false),
            (b" a:", false),
            (b"a b:", false),
            (b"a\x7f:", false),
            (b"a\xc3\x89:", false),
            (b"Subject", false),
            (b"", false),
        ] {
            assert_eq!(is_header(command), header, "{command:?}");
        }
    }

    #[test]
    fn nothing_panics_on_random_streams_with_every_test_on() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"EHLOMAILRCPTQUITGETPOST:<>@ \r\n\n\x00\xff\t\x16Subject:";
        let actions = [
            None,
            Some(TestAction::Ignore),
            Some(TestAction::Enforce),
            Some(TestAction::Drop),
        ];
        for _ in 0..500 {
            let mut pick = || actions[(next() % 4) as usize];
            let (p, n, b) = (pick(), pick(), pick());
            let mut e = engine_with(|s| {
                s.command_count_limit = 100;
                s.deep_tests.pipelining = p;
                s.deep_tests.non_smtp_command = n;
                s.deep_tests.bare_newline = b;
            });
            let mut reader = LineReader::new(e.settings().line_length_limit);
            'session: for _ in 0..20 {
                let len = (next() % 200) as usize;
                let chunk: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                reader.extend(&chunk);
                loop {
                    let step = match reader.next_line() {
                        Ok(Some(line)) => e.on_line(line),
                        Ok(None) => break,
                        Err(_) => break 'session,
                    };
                    for event in &step.events {
                        let line = event.line(client()).to_string();
                        assert!(!line.contains(['\r', '\n', '\0']), "{line:?}");
                        assert!(line.len() < 1200, "{line:?}");
                    }
                    if step.closes() {
                        break 'session;
                    }
                }
            }
            // A test that does not run has no result.
            let results = e.deep_test_results();
            for (action, outcome) in [
                (p, results.pipelining),
                (n, results.non_smtp_command),
                (b, results.bare_newline),
            ] {
                if action.is_none() {
                    assert_eq!(outcome, TestOutcome::NotCompleted);
                }
                if action == Some(TestAction::Ignore) {
                    assert_ne!(outcome, TestOutcome::Failed);
                }
            }
        }
    }

    // Deep tests over a stream

    /// The lab's deep test settings: pipelining enforce, non-SMTP drop, bare newline enforce.
    fn lab_engine() -> Engine {
        deep_engine(|d| {
            d.pipelining = Some(TestAction::Enforce);
            d.non_smtp_command = Some(TestAction::Drop);
            d.bare_newline = Some(TestAction::Enforce);
        })
    }

    #[tokio::test]
    async fn lab_pipelined_ehlo_and_mail_get_550_at_rcpt() {
        let (mut client, task) = spawn_serve(lab_engine(), LIMIT);
        read_reply(&mut client).await;
        client.write_all(PIPELINED).await.unwrap();
        assert!(read_reply(&mut client).await.ends_with("250 CHUNKING\r\n"));
        assert_eq!(read_reply(&mut client).await, "250 2.1.0 Ok\r\n");
        client
            .write_all(b"RCPT TO:<r@example.test>\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "550 5.5.1 Protocol error\r\n"
        );
        client.write_all(b"QUIT\r\n").await.unwrap();
        assert_eq!(read_reply(&mut client).await, "221 2.0.0 Bye\r\n");
        let (outcome, seen) = task.await.unwrap();
        assert_eq!(
            lines(&outcome.events)[0],
            "COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: MAIL FROM:<p@example.org>\\r\\n"
        );
        assert_eq!(seen, outcome.events);
        assert_eq!(
            outcome.deep_tests,
            DeepTestResults {
                pipelining: TestOutcome::Failed,
                non_smtp_command: TestOutcome::Passed,
                bare_newline: TestOutcome::Passed,
            }
        );
    }

    #[tokio::test]
    async fn lab_http_request_gets_521_and_the_connection_closes() {
        let (mut client, task) = spawn_serve(lab_engine(), LIMIT);
        read_reply(&mut client).await;
        client.write_all(b"EHLO h.example\r\n").await.unwrap();
        read_reply(&mut client).await;
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(
            rest,
            b"521 5.7.0 Error: I can break rules, too. Goodbye.\r\n"
        );
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Dropped(DeepTest::NonSmtpCommand));
        assert_eq!(
            lines(&outcome.events),
            ["NON-SMTP COMMAND from [127.0.0.11]:58529 after EHLO: GET / HTTP/1.0"]
        );
        assert!(!outcome.rcpt_reached);
        assert_eq!(outcome.deep_tests.non_smtp_command, TestOutcome::Failed);
        assert_eq!(outcome.deep_tests.pipelining, TestOutcome::NotCompleted);
    }

    #[tokio::test]
    async fn a_clean_client_passes_the_deep_tests_over_a_stream() {
        let (mut client, task) = spawn_serve(lab_engine(), LIMIT);
        read_reply(&mut client).await;
        for (command, reply_end) in [
            (&b"EHLO h.example\r\n"[..], "250 CHUNKING\r\n"),
            (b"MAIL FROM:<s@example.org>\r\n", "250 2.1.0 Ok\r\n"),
            (
                b"RCPT TO:<r@example.test>\r\n",
                "450 4.3.2 Service currently unavailable\r\n",
            ),
        ] {
            // One byte at a time, each command after the last reply: never pipelining.
            for byte in command {
                client.write_all(&[*byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            assert!(read_reply(&mut client).await.ends_with(reply_end));
        }
        drop(client);
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Hangup);
        assert_eq!(
            outcome.deep_tests,
            DeepTestResults {
                pipelining: TestOutcome::Passed,
                non_smtp_command: TestOutcome::Passed,
                bare_newline: TestOutcome::Passed,
            }
        );
    }

    // STARTTLS

    /// An acceptor for `mx.example.test` and the PEM of the CA that signed it.
    fn test_tls() -> (TlsAcceptor, String) {
        let (ca, cert, key) = crate::smtpd::tls::tests::test_pki(HOST);
        let acceptor = crate::smtpd::tls::acceptor_from_pem(
            cert.as_bytes(),
            Path::new("cert.pem"),
            key.as_bytes(),
            Path::new("key.pem"),
        )
        .unwrap();
        (acceptor, ca)
    }

    fn tls_connector(ca_pem: &str) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    fn tls_engine() -> Engine {
        engine_with(|s| s.starttls_offered = true)
    }

    /// Runs `serve_with_tls` over `stream` in a task.
    fn spawn_serve_with_tls<S>(
        stream: S,
        mut engine: Engine,
        acceptor: Option<TlsAcceptor>,
        handshake_time_limit: Duration,
    ) -> tokio::task::JoinHandle<(Outcome, Vec<Event>, u32)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            let starttls = acceptor.as_ref().map(|acceptor| StartTls {
                acceptor,
                handshake_time_limit,
            });
            let mut seen = Vec::new();
            let outcome = serve_with_tls(stream, &mut engine, LIMIT, starttls, |e| {
                seen.push(e.clone())
            })
            .await;
            (outcome, seen, engine.command_count())
        })
    }

    #[tokio::test]
    async fn starttls_over_loopback_tcp() {
        let (acceptor, ca) = test_tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            spawn_serve_with_tls(stream, tls_engine(), Some(acceptor), LIMIT)
                .await
                .unwrap()
        });

        let mut tcp = TcpStream::connect(address).await.unwrap();
        assert_eq!(
            read_reply(&mut tcp).await,
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        tcp.write_all(b"EHLO c.example\r\n").await.unwrap();
        assert!(read_reply(&mut tcp).await.contains("\r\n250-STARTTLS\r\n"));
        // Commands injected behind STARTTLS, in the same segment: never to be run.
        tcp.write_all(
            b"STARTTLS\r\nMAIL FROM:<injected@example.net>\r\nRCPT TO:<injected@example.test>\r\n",
        )
        .await
        .unwrap();
        assert_eq!(
            read_reply(&mut tcp).await,
            "220 2.0.0 Ready to start TLS\r\n"
        );
        let mut tls = tls_connector(&ca)
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap();

        // No second greeting; EHLO no longer offers STARTTLS.
        tls.write_all(b"EHLO c.example\r\n").await.unwrap();
        let ehlo = read_reply(&mut tls).await;
        assert!(ehlo.starts_with("250-mx.example.test\r\n"), "{ehlo}");
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        for (command, reply) in [
            ("STARTTLS", "554 5.5.1 Error: TLS already active"),
            // Not "nested MAIL": the injected MAIL was never run.
            ("MAIL FROM:<s@example.org>", "250 2.1.0 Ok"),
            (
                "RCPT TO:<r@example.test>",
                "450 4.3.2 Service currently unavailable",
            ),
            ("QUIT", "221 2.0.0 Bye"),
        ] {
            tls.write_all(format!("{command}\r\n").as_bytes())
                .await
                .unwrap();
            assert_eq!(read_reply(&mut tls).await, format!("{reply}\r\n"));
        }
        // The server ends the TLS session properly: a clean end of input.
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        let (outcome, seen, commands) = server.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Quit);
        assert!(outcome.rcpt_reached);
        let logged = lines(&outcome.events);
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert!(
            logged[0].starts_with(
                "Anonymous TLS connection established from [127.0.0.11]:58529: TLSv1.3 with \
                 cipher TLS_"
            ),
            "{logged:?}"
        );
        assert!(logged[0].ends_with(" bits)"), "{logged:?}");
        assert_eq!(
            logged[1],
            "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
             unavailable; from=<s@example.org>, to=<r@example.test>, proto=ESMTP, \
             helo=<c.example>"
        );
        assert_eq!(seen, outcome.events);
        // EHLO, STARTTLS, EHLO, STARTTLS, MAIL, RCPT, QUIT: the injected commands were never
        // read, and the count goes on across the upgrade.
        assert_eq!(commands, 7);
    }

    #[tokio::test]
    async fn a_pipelined_starttls_is_logged_and_its_followers_dropped() {
        let (acceptor, ca) = test_tls();
        let (mut client, server) = duplex(64 * 1024);
        let mut engine = tls_engine();
        engine.set_deep_test(DeepTest::Pipelining, Some(TestAction::Enforce));
        let task = spawn_serve_with_tls(server, engine, Some(acceptor), LIMIT);
        read_reply(&mut client).await;
        client
            .write_all(b"STARTTLS\r\nRCPT TO:<injected@example.test>\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "220 2.0.0 Ready to start TLS\r\n"
        );
        let mut tls = tls_connector(&ca)
            .connect(ServerName::try_from(HOST).unwrap(), client)
            .await
            .unwrap();
        tls.write_all(b"MAIL FROM:<s@x>\r\n").await.unwrap();
        assert_eq!(read_reply(&mut tls).await, "250 2.1.0 Ok\r\n");
        tls.write_all(b"RCPT TO:<r@y>\r\n").await.unwrap();
        // The pipelining failure still holds over TLS.
        assert_eq!(read_reply(&mut tls).await, "550 5.5.1 Protocol error\r\n");
        drop(tls);
        let (outcome, _, _) = task.await.unwrap();
        let logged = lines(&outcome.events);
        assert_eq!(
            logged[0],
            "COMMAND PIPELINING from [127.0.0.11]:58529 after STARTTLS: RCPT \
             TO:<injected@example.test>\\r\\n"
        );
        assert!(logged[1].starts_with("Anonymous TLS connection established"));
        // One RCPT logged: the one sent over TLS.
        assert_eq!(
            logged.iter().filter(|l| l.starts_with("NOQUEUE")).count(),
            1
        );
        assert!(logged[2].contains("to=<r@y>"), "{logged:?}");
        assert_eq!(outcome.end, SessionEnd::Hangup);
        assert_eq!(outcome.deep_tests.pipelining, TestOutcome::Failed);
    }

    #[tokio::test]
    async fn a_failed_handshake_ends_the_session_with_tlsproxys_line() {
        let (acceptor, _) = test_tls();
        let (mut client, server) = duplex(64 * 1024);
        let task = spawn_serve_with_tls(server, tls_engine(), Some(acceptor), LIMIT);
        read_reply(&mut client).await;
        client.write_all(b"STARTTLS\r\n").await.unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "220 2.0.0 Ready to start TLS\r\n"
        );
        // Not a ClientHello.
        client
            .write_all(b"EHLO plaintext.example\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        // Nothing was answered in plaintext: at most a TLS alert record (type 21).
        assert!(rest.is_empty() || rest[0] == 21, "{rest:?}");
        let (outcome, _, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Hangup);
        let logged = lines(&outcome.events);
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert!(
            logged[0].starts_with("SSL_accept error from [127.0.0.11]:58529: "),
            "{logged:?}"
        );
        assert!(!logged[0].contains("lost connection"), "{logged:?}");
        assert!(logged[1].starts_with("HANGUP after "), "{logged:?}");
    }

    #[tokio::test]
    async fn a_client_gone_during_the_handshake_lost_the_connection() {
        let (acceptor, _) = test_tls();
        let (mut client, server) = duplex(64 * 1024);
        let task = spawn_serve_with_tls(server, tls_engine(), Some(acceptor), LIMIT);
        read_reply(&mut client).await;
        client.write_all(b"STARTTLS\r\n").await.unwrap();
        read_reply(&mut client).await;
        drop(client);
        let (outcome, _, _) = task.await.unwrap();
        assert_eq!(
            lines(&outcome.events)[0],
            "SSL_accept error from [127.0.0.11]:58529: lost connection"
        );
        assert_eq!(outcome.end, SessionEnd::Hangup);
    }

    #[tokio::test(start_paused = true)]
    async fn the_handshake_has_a_time_limit() {
        let (acceptor, _) = test_tls();
        let (mut client, server) = duplex(64 * 1024);
        let handshake_limit = Duration::from_secs(30);
        let task = spawn_serve_with_tls(server, tls_engine(), Some(acceptor), handshake_limit);
        read_reply(&mut client).await;
        client.write_all(b"STARTTLS\r\n").await.unwrap();
        read_reply(&mut client).await;
        let asked = Instant::now();
        // Silence: no ClientHello.
        let (outcome, _, _) = task.await.unwrap();
        assert_eq!(asked.elapsed(), handshake_limit);
        assert_eq!(
            lines(&outcome.events)[0],
            "SSL_accept error from [127.0.0.11]:58529: handshake timed out"
        );
        assert_eq!(outcome.end, SessionEnd::Hangup);
        drop(client);
    }

    #[tokio::test]
    async fn without_a_certificate_starttls_gets_454_and_plaintext_goes_on() {
        let (mut client, server) = duplex(64 * 1024);
        let task = spawn_serve_with_tls(server, tls_engine(), None, LIMIT);
        client
            .write_all(b"EHLO c\r\nSTARTTLS\r\nNOOP\r\nQUIT\r\n")
            .await
            .unwrap();
        let mut transcript = Vec::new();
        client.read_to_end(&mut transcript).await.unwrap();
        let transcript = String::from_utf8(transcript).unwrap();
        // One greeting; the command after STARTTLS is still answered, in plaintext.
        assert_eq!(transcript.matches("220 mx.example.test").count(), 1);
        assert!(
            transcript.ends_with(
                "250 CHUNKING\r\n454 4.7.0 TLS not available due to local problem\r\n\
                 250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"
            ),
            "{transcript}"
        );
        let (outcome, _, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Quit);
    }

    #[tokio::test]
    async fn starttls_not_offered_is_not_implemented_even_with_a_certificate() {
        let (acceptor, _) = test_tls();
        let (mut client, server) = duplex(64 * 1024);
        let task = spawn_serve_with_tls(server, engine(), Some(acceptor), LIMIT);
        client
            .write_all(b"EHLO c\r\nSTARTTLS\r\nQUIT\r\n")
            .await
            .unwrap();
        let mut transcript = Vec::new();
        client.read_to_end(&mut transcript).await.unwrap();
        let transcript = String::from_utf8(transcript).unwrap();
        assert!(!transcript.contains("250-STARTTLS"));
        assert!(
            transcript.ends_with(
                "250 CHUNKING\r\n502 5.5.1 Error: command not implemented\r\n221 2.0.0 Bye\r\n"
            ),
            "{transcript}"
        );
        assert_eq!(task.await.unwrap().0.end, SessionEnd::Quit);
    }
}
