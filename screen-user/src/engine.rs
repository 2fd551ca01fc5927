//! postscreen's dummy SMTP engine (`postscreen_smtpd.c`): the SMTP server that screened
//! clients talk to after the 220 greeting, for the deep protocol tests and for the enforce
//! actions. It never accepts mail: every RCPT is refused with the session's `rcpt_reply`
//! (`450 4.3.2 Service currently unavailable` unless an enforce action chose a 550), and the
//! client that passed gets its mail through on its next connection.
//!
//! The engine is a state machine without I/O: [`Engine::on_command`] takes one command line
//! and returns a [`Step`] (the reply to send, the [`Event`]s to log and whether the session
//! goes on). [`serve`] drives it over any tokio stream with a [`LineReader`], the per-command
//! time limit and end-of-input handling. Logging is the caller's: each event renders
//! postscreen's exact log text through [`Event::line`].
//!
//! Every reply text postscreen sends lives here as a named [`Reply`] constructor, the
//! connection-level ones included, so the whole daemon answers with the same words.
//! [`ReplyStyle`] applies `soft_bounce` and `reject_footer` to a reply, as postscreen does
//! to everything it sends.
//!
//! Where this engine parts from postscreen, it says so next to the code: logged fields are
//! bounded and escaped, and a run of CRs cannot stretch a line past the length limit.

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

use crate::smtp_line::{DEFAULT_LINE_LENGTH_LIMIT, LineError, LineReader};

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
        let mut text: String = text
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        truncate_at_char(&mut text, MAX_REPLY_TEXT);
        Self {
            code,
            lines: vec![text],
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
                client.to_canonical()
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
        let mut lines = reply.lines.clone();
        for (i, pieces) in self.lines.iter().enumerate() {
            let text = expand_footer_line(pieces, client, server_name);
            if i == 0 && self.join_first {
                if let Some(last) = lines.last_mut() {
                    last.push_str(&text);
                    truncate_at_char(last, MAX_REPLY_TEXT);
                }
            } else {
                lines.push(match &status {
                    Some(status) => format!("{status} {text}"),
                    None => text,
                });
            }
        }
        Reply {
            code: reply.code,
            lines,
        }
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
            FooterPiece::ClientAddress => client.ip().to_canonical().to_string(),
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
        let max_line = crate::smtp_line::MAX_LINE_LENGTH_LIMIT;
        if !(MIN_LINE_LENGTH_LIMIT..=max_line).contains(&self.line_length_limit) {
            return Err(err(
                "line_length_limit",
                &self.line_length_limit,
                &format!("must be {MIN_LINE_LENGTH_LIMIT}..={max_line}"),
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
        }
    }
}

/// `[address]:port`, as postscreen writes a client; an IPv4-mapped IPv6 address is shown
/// as IPv4, as Postfix does.
pub struct ClientAddr(pub SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]:{}", self.0.ip().to_canonical(), self.0.port())
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
    /// [`Engine::tls_unavailable`]; then it runs [`serve`] again.
    StartTls,
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
}

impl Engine {
    /// An engine for one client, or the first setting that is wrong.
    pub fn new(
        settings: impl Into<Arc<EngineSettings>>,
        client: SocketAddr,
    ) -> Result<Self, EngineError> {
        let settings = settings.into();
        let style = settings.style()?;
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
    /// `220-` followed by `421`.
    pub fn set_final_reply(&mut self, reply: Reply) {
        self.final_reply = Some(reply);
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

    /// Handles one command line (without its line ending).
    pub fn on_command(&mut self, line: &[u8]) -> Step {
        if let Some(end) = self.stopped {
            return Step {
                reply: None,
                events: Vec::new(),
                next: Next::Stop(end),
            };
        }
        // The command line is a C string in postscreen: a NUL ends it.
        let line = match line.iter().position(|&b| b == 0) {
            Some(nul) => &line[..nul],
            None => line,
        };
        let (name, args) = split_command(line);
        let command = COMMANDS
            .iter()
            .find(|(known, _)| name.eq_ignore_ascii_case(known.as_bytes()));
        let previous = self.last_command;
        self.last_command = command.map_or(AFTER_UNKNOWN, |(known, _)| known);
        let command = command.map(|&(_, command)| command);

        if command != Some(Command::Quit)
            && let Some(reply) = self.final_reply.clone()
        {
            return self.stop(reply, Vec::new(), SessionEnd::FinalReply);
        }
        // Reaching RCPT is what passes the deep tests, whatever this RCPT's fate.
        if command == Some(Command::Rcpt) {
            self.rcpt_reached = true;
        }
        self.command_count = self.command_count.saturating_add(1);
        if self.command_count > self.settings.command_count_limit && command != Some(Command::Quit)
        {
            return self.stop(
                Reply::service_unavailable_421(&self.settings.myhostname),
                vec![Event::CommandCountLimit { after: previous }],
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
        let mut lines = vec![s.myhostname.clone()];
        lines.push(match s.message_size_limit {
            0 => "SIZE".to_string(),
            limit => format!("SIZE {limit}"),
        });
        if !s.disable_vrfy {
            lines.push("VRFY".into());
        }
        lines.push("ETRN".into());
        if s.starttls_offered && !self.tls_active {
            lines.push("STARTTLS".into());
        }
        lines.extend([
            "ENHANCEDSTATUSCODES".into(),
            "8BITMIME".into(),
            "DSN".into(),
        ]);
        if s.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        lines.push("CHUNKING".into());
        Reply { code: 250, lines }
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
/// After any other end the caller closes the connection.
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
    let started = *engine.started.get_or_insert_with(Instant::now);
    let mut events = Vec::new();
    let mut reader = LineReader::new(engine.settings.line_length_limit);

    if let Some(greeting) = engine.greeting()
        && send(stream, &greeting, command_time_limit).await.is_err()
    {
        let step = engine.on_hangup(started.elapsed());
        return conclude(engine, events, step, &mut on_event);
    }
    let mut deadline = Instant::now() + command_time_limit;
    loop {
        let step = match reader.next_line() {
            Ok(Some(line)) => engine.on_command(line.text),
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
            return conclude(engine, events, step, &mut on_event);
        }
        match step.next {
            Next::Continue => deadline = Instant::now() + command_time_limit,
            Next::Stop(end) => {
                return Outcome {
                    events,
                    rcpt_reached: engine.rcpt_reached,
                    end,
                };
            }
        }
    }
}

/// Ends a run with `step`, which carries no reply.
fn conclude(
    engine: &Engine,
    mut events: Vec<Event>,
    step: Step,
    on_event: &mut impl FnMut(&Event),
) -> Outcome {
    for event in &step.events {
        on_event(event);
    }
    events.extend(step.events);
    let end = match step.next {
        Next::Stop(end) => end,
        Next::Continue => SessionEnd::Hangup,
    };
    Outcome {
        events,
        rcpt_reached: engine.rcpt_reached,
        end,
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
    use std::net::{Ipv4Addr, Ipv6Addr};

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

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
    async fn read_reply(client: &mut DuplexStream) -> String {
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
}
