//! What postscreen does to every reply on its way out: `soft_bounce` and `reject_footer`
//! (postscreen's `$smtpd_reject_footer`, Postfix's `smtp_reply_footer()`). [`ReplyStyle`]
//! applies both to a reply for the client and only `soft_bounce` to the reply as it is
//! logged; [`ReplyFooter`] is the parsed footer template with its macros.

use std::net::SocketAddr;

use super::{
    error::EngineError,
    reply::{MAX_HOSTNAME, MAX_REPLY_TEXT, Reply},
};
use crate::address::canonical;

/// The longest `reject_footer` template, and the most lines it may produce.
const MAX_FOOTER_TEMPLATE: usize = 1024;
const MAX_FOOTER_LINES: usize = 16;

/// What postscreen does to every reply on its way out: `soft_bounce` and `reject_footer`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyStyle {
    soft_bounce: bool,
    footer: Option<ReplyFooter>,
}

impl ReplyStyle {
    /// `reject_footer` is checked here; `None` or an empty text means no footer.
    pub(crate) fn new(soft_bounce: bool, reject_footer: Option<&str>) -> Result<Self, EngineError> {
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
    pub(crate) fn apply(&self, reply: &Reply, client: SocketAddr, server_name: &str) -> Reply {
        let reply = self.for_log(reply);
        match &self.footer {
            Some(footer) if reply.is_negative() => footer.apply(&reply, client, server_name),
            _ => reply,
        }
    }

    /// The reply as postscreen logs it: soft-bounced when configured, without the footer.
    pub(crate) fn for_log(&self, reply: &Reply) -> Reply {
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
    pub(crate) fn parse(template: &str) -> Result<Option<Self>, EngineError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtpd::test_support::{HOST, client};

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
}
