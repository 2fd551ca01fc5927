//! Client bytes made safe for a log line, the way Postfix's `escape()` writes them: printable
//! ASCII as it is (a backslash doubled), the seven C control escapes (`\a \b \f \n \r \t \v`),
//! and every other byte as a three-digit octal escape (`\000`, `\377`).
//!
//! postscreen logs client input this way in `PREGREET`, `COMMAND PIPELINING`, `BARE NEWLINE`
//! and the haproxy warnings, so log parsers that read those lines see the same text from us.
//!
//! Fields a client may write in UTF-8 (a HELO name, an address) keep their characters and
//! escape the rest ([`printable_utf8`]). Text that goes into a line of bounded length is cut
//! here too, always at a character boundary ([`truncate_at_char`], [`shorten`]).

use std::fmt::Write as _;

/// How much escaped text postscreen puts in a log line for client input (`%.100s` in its
/// format strings).
pub(crate) const LOG_TEXT_MAX: usize = 100;

/// Escapes `bytes` and keeps the first `max` characters of the result, as printf's `%.*s`
/// keeps them: the cut may fall inside an escape sequence. Work stops at `max`, so a huge
/// input costs no more than a short one.
pub(crate) fn c_escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(max.min(bytes.len().saturating_mul(4)));
    for &byte in bytes {
        if out.len() >= max {
            break;
        }
        match byte {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(byte)),
            0x07 => out.push_str("\\a"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x0b => out.push_str("\\v"),
            _ => {
                let _ = write!(out, "\\{byte:03o}");
            }
        }
    }
    // Every character pushed is ASCII, so any length is a character boundary.
    out.truncate(max);
    out
}

/// Client text that may be UTF-8 made safe for a log line and bounded: valid UTF-8 is kept,
/// control characters and invalid bytes become C-style escapes (`\r`, `\n`, `\t`, `\ooo`,
/// `\u{…}`), and the result stops before `max` bytes, never inside an escape.
pub(crate) fn printable_utf8(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    let mut push = |piece: &str| {
        if out.len() + piece.len() > max {
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

/// Cuts `text` to at most `max` bytes, at a character boundary.
pub(crate) fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

/// `text` cut after `max_chars` characters, with `...` to show the cut: how an error message
/// quotes a value that may be long.
pub(crate) fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_line_endings_like_postscreen() {
        // The lab's PREGREET line: `PREGREET 21 after 0.3 from [...]: EHLO zombie.example\r\n`.
        assert_eq!(
            c_escape(b"EHLO zombie.example\r\n", LOG_TEXT_MAX),
            "EHLO zombie.example\\r\\n"
        );
        assert_eq!(
            c_escape(b"EHLO notproxy\r\n", LOG_TEXT_MAX),
            "EHLO notproxy\\r\\n"
        );
    }

    #[test]
    fn escapes_every_control_character() {
        assert_eq!(
            c_escape(b"\x07\x08\x0c\n\r\t\x0b", 100),
            "\\a\\b\\f\\n\\r\\t\\v"
        );
        assert_eq!(c_escape(b"\0", 100), "\\000");
        assert_eq!(c_escape(b"\x1b[0m", 100), "\\033[0m");
        assert_eq!(c_escape(b"\x7f", 100), "\\177");
        assert_eq!(c_escape(b"\x80\xff", 100), "\\200\\377");
        // Three digits always, so a following digit cannot be read as part of the escape.
        assert_eq!(c_escape(b"\x011", 100), "\\0011");
    }

    #[test]
    fn keeps_printable_ascii_and_doubles_backslashes() {
        let printable: Vec<u8> = (0x20..=0x7e).collect();
        let escaped = c_escape(&printable, 1000);
        assert_eq!(escaped.len(), printable.len() + 1, "{escaped}");
        assert!(escaped.contains("[\\\\]"), "{escaped}");
        assert_eq!(c_escape(b"a\\b", 100), "a\\\\b");
    }

    #[test]
    fn utf8_is_escaped_bytewise() {
        assert_eq!(c_escape("é".as_bytes(), 100), "\\303\\251");
    }

    #[test]
    fn truncates_the_escaped_text_like_printf_precision() {
        let long = [b'x'; 500];
        assert_eq!(c_escape(&long, LOG_TEXT_MAX).len(), LOG_TEXT_MAX);
        // The cut falls inside `\r`, as `%.5s` of "abcd\r\n" escaped would.
        assert_eq!(c_escape(b"abcd\r\n", 5), "abcd\\");
        assert_eq!(c_escape(b"ab\xff", 4), "ab\\3");
        assert_eq!(c_escape(b"anything", 0), "");
        assert_eq!(c_escape(b"", 100), "");
    }

    #[test]
    fn huge_input_is_bounded_by_max() {
        let garbage = vec![0u8; 1 << 20];
        let escaped = c_escape(&garbage, 40);
        assert_eq!(escaped, "\\000".repeat(10));
    }
}
