//! How the engine reads a command line, as `postscreen_smtpd.c` does: postscreen's command
//! table ([`Command`]), the split into command word and arguments (its `mystrtok`), and the
//! address of a MAIL FROM or RCPT TO argument. Pure functions of the line's bytes.

/// A command the engine knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Command {
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
    pub(super) fn lookup(word: &[u8]) -> Option<(&'static str, Command)> {
        COMMANDS
            .iter()
            .find(|(known, _)| word.eq_ignore_ascii_case(known.as_bytes()))
            .copied()
    }
}

/// Splits a command line into the command word and the rest, as postscreen's `mystrtok`
/// with a space separator: leading spaces are skipped, one space after the word is eaten.
pub(super) fn split_command(line: &[u8]) -> (&[u8], &[u8]) {
    let line = skip_spaces(line);
    match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[]),
    }
}

/// The first space-separated word of `args`, if any.
pub(super) fn next_token(args: &[u8]) -> Option<&[u8]> {
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
pub(super) fn extract_address(arg: &[u8]) -> Vec<u8> {
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
