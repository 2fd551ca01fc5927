//! The engine's log lines, in postscreen's words: an [`Event`] is something a session logs,
//! and [`Event::line`] renders its text for a client (`NOQUEUE: reject: RCPT from …`,
//! `COMMAND PIPELINING from …`, tlsproxy's TLS lines). `ClientAddr` and `DelayDisplay`
//! write a client and an elapsed time as Postfix does, for these lines and the daemon's.
//!
//! Client text reaches a log line only through the functions here, which bound it and make
//! it printable: a command word as postscreen prints it, a deep test's input C-escaped, and
//! helo names, senders and recipients escaped where postscreen logs them raw.

use std::{fmt, net::SocketAddr, time::Duration};

use super::{reply::Reply, tls};
use crate::{
    address::ClientAddr,
    escape::{c_escape, printable_utf8, truncate_at_char},
    maillog::DelayDisplay,
};

/// Helo names, senders and recipients are kept (and logged) up to this many bytes.
pub const MAX_LOGGED_FIELD: usize = 512;

/// How many bytes of client input postscreen escapes into a deep test's log line (its
/// `PSC_SMTPD_ESCAPE_TEXT(…, 100)`); escaped, they take at most four times as many.
pub const LOGGED_INPUT_BYTES: usize = 100;

/// postscreen prints at most this much of a command name (`%.100s`).
const LOGGED_COMMAND_BYTES: usize = 100;

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
    pub(crate) fn line(&self, client: SocketAddr) -> EventLine<'_> {
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

/// A command word as postscreen prints it (`printable(command, '?')`, `%.100s`): printable
/// ASCII kept, other printable characters kept when SMTPUTF8 is on, every other byte `?`.
pub(super) fn printable_command(command: &[u8], utf8: bool) -> String {
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
pub(super) fn escape_input(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(LOGGED_INPUT_BYTES)];
    c_escape(bytes, 4 * LOGGED_INPUT_BYTES)
}

/// A client's field (HELO name, sender, recipient) for a log line: [`printable_utf8`] up to
/// [`MAX_LOGGED_FIELD`] bytes. postscreen logs these fields raw.
pub(super) fn log_field(bytes: &[u8]) -> String {
    printable_utf8(bytes, MAX_LOGGED_FIELD)
}
