//! Postfix's configuration text as the importer reads it: input of bounded size split into
//! numbered UTF-8 lines, values split into words as Postfix splits lists and master.cf
//! fields, and the errors that name the input and the line.

/// The largest `postconf -n` output or master.cf accepted. Real ones are a few kilobytes.
pub(crate) const MAX_INPUT_BYTES: usize = 1 << 20;
/// The most parameters (or master.cf services) accepted from one input.
pub(super) const MAX_ENTRIES: usize = 10_000;

/// Input that cannot be read as `postconf -n` output, master.cf or a `texthash:` table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ImportError {
    #[error("{input}: {len} bytes, more than the {max} accepted")]
    TooLarge {
        input: String,
        len: usize,
        max: usize,
    },
    #[error("{input}: more than {max} entries")]
    TooManyEntries { input: String, max: usize },
    #[error("{input}, line {line}: {problem}")]
    Line {
        input: String,
        line: usize,
        problem: LineProblem,
    },
}

/// What is wrong with one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LineProblem {
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("control character {0:?}")]
    ControlCharacter(char),
    #[error("expected `name = value`")]
    NoEquals,
    #[error("invalid parameter name {0:?}")]
    BadName(String),
    #[error("a continuation line (it starts with white space) with nothing before it")]
    OrphanContinuation,
    #[error(
        "a service needs 8 fields (service type private unpriv chroot wakeup maxproc \
         command), found {0}"
    )]
    TooFewFields(usize),
    #[error("expected `key value`")]
    NoValue,
}

/// Splits bounded input into numbered UTF-8 lines without their line ends; tabs are the
/// only control characters allowed.
pub(super) fn text_lines<'a>(
    input: &str,
    bytes: &'a [u8],
) -> Result<Vec<(usize, &'a str)>, ImportError> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(ImportError::TooLarge {
            input: input.to_string(),
            len: bytes.len(),
            max: MAX_INPUT_BYTES,
        });
    }
    let mut lines = Vec::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let error = |problem| ImportError::Line {
            input: input.to_string(),
            line: number,
            problem,
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|_| error(LineProblem::NotUtf8))?;
        if let Some(c) = line.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(error(LineProblem::ControlCharacter(c)));
        }
        lines.push((number, line));
    }
    Ok(lines)
}

/// One logical line of main.cf, master.cf or a postmap source file: a line and the lines
/// after it that start with white space (its continuation), joined with a space.
pub(super) struct LogicalLine {
    /// Where it starts and ends in the input.
    pub(crate) first: usize,
    pub(crate) last: usize,
    pub(crate) text: String,
}

/// Reads `bytes` as Postfix reads its configuration files: empty and `#` comment lines are
/// skipped (also between continuation lines), a line that starts with white space continues
/// the one before, and there are at most `max` logical lines.
pub(super) fn logical_lines(
    input: &str,
    bytes: &[u8],
    max: usize,
) -> Result<Vec<LogicalLine>, ImportError> {
    let mut logical: Vec<LogicalLine> = Vec::new();
    for (number, line) in text_lines(input, bytes)? {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            let continued = logical.last_mut().ok_or(ImportError::Line {
                input: input.to_string(),
                line: number,
                problem: LineProblem::OrphanContinuation,
            })?;
            continued.last = number;
            continued.text.push(' ');
            continued.text.push_str(trimmed);
            continue;
        }
        if logical.len() == max {
            return Err(ImportError::TooManyEntries {
                input: input.to_string(),
                max,
            });
        }
        logical.push(LogicalLine {
            first: number,
            last: number,
            text: trimmed.to_string(),
        });
    }
    Ok(logical)
}

/// Splits at white space (and commas when `commas`), keeping `{…}` groups whole, as
/// Postfix splits lists and master.cf fields. An unbalanced `{` takes the rest.
pub(super) fn split_words(text: &str, commas: bool) -> Vec<&str> {
    let is_separator = |c: char| c.is_whitespace() || (commas && c == ',');
    let mut words = Vec::new();
    let mut depth = 0usize;
    let mut start = None;
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            c if depth == 0 && is_separator(c) => {
                if let Some(begin) = start.take() {
                    words.push(&text[begin..at]);
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(at);
    }
    if let Some(begin) = start {
        words.push(&text[begin..]);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_lines_join_continuations_across_comments() {
        let text = b"a = 1\n  2\n# a comment\n\n  3\nb x\n";
        let lines = logical_lines("main.cf", text, 10).unwrap();
        let got: Vec<_> = lines
            .iter()
            .map(|l| (l.first, l.last, l.text.as_str()))
            .collect();
        assert_eq!(got, [(1, 5, "a = 1 2 3"), (6, 6, "b x")]);
        assert_eq!(
            logical_lines("main.cf", b"  lonely\n", 10)
                .err()
                .map(|e| e.to_string()),
            Some(
                "main.cf, line 1: a continuation line (it starts with white space) with nothing \
                 before it"
                    .to_string()
            )
        );
        assert!(matches!(
            logical_lines("master.cf", b"a\nb\nc\n", 2),
            Err(ImportError::TooManyEntries { max: 2, .. })
        ));
    }
}
