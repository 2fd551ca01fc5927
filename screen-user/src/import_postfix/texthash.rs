//! `texthash:` tables (postmap source files), which the importer reads for
//! `postscreen_dnsbl_reply_map`.

use super::lines::{ImportError, LineProblem, logical_lines};
use crate::dnsbl;

/// The largest `texthash:` file read.
const MAX_TEXTHASH_BYTES: usize = 1 << 20;

/// One entry of a `texthash:` table, with the line it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TexthashEntry {
    pub(crate) line: usize,
    pub(crate) key: String,
    pub(crate) value: String,
}

/// Parses a `texthash:` (postmap source) file: `key value` lines, `#` comments, lines that
/// start with white space continuing the previous value. At most [`dnsbl::MAX_REPLY_MAP`]
/// entries; duplicates are returned as they are (Postfix keeps the first).
pub(super) fn parse_texthash(input: &str, text: &str) -> Result<Vec<TexthashEntry>, ImportError> {
    if text.len() > MAX_TEXTHASH_BYTES {
        return Err(ImportError::TooLarge {
            input: input.to_string(),
            len: text.len(),
            max: MAX_TEXTHASH_BYTES,
        });
    }
    let mut entries = Vec::new();
    for line in logical_lines(input, text.as_bytes(), dnsbl::MAX_REPLY_MAP)? {
        let (key, value) =
            line.text
                .split_once(char::is_whitespace)
                .ok_or_else(|| ImportError::Line {
                    input: input.to_string(),
                    line: line.first,
                    problem: LineProblem::NoValue,
                })?;
        entries.push(TexthashEntry {
            line: line.first,
            key: key.to_string(),
            value: value.trim().to_string(),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_texthash_tables() {
        let entries = parse_texthash(
            "/etc/postfix/dnsbl_reply",
            "# secret keys\nkey.zen.dq.example  zen.example\n\nBL.test\tpublic-bl\n  example\n",
        )
        .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (
                entries[0].line,
                entries[0].key.as_str(),
                entries[0].value.as_str()
            ),
            (2, "key.zen.dq.example", "zen.example")
        );
        assert_eq!(entries[1].value, "public-bl example");
        let err = parse_texthash("t", "a b\nlonely\n").unwrap_err();
        assert_eq!(err.to_string(), "t, line 2: expected `key value`");
        assert!(matches!(
            parse_texthash("t", " x y\n"),
            Err(ImportError::Line {
                problem: LineProblem::OrphanContinuation,
                ..
            })
        ));
        assert!(matches!(
            parse_texthash("t", &"#".repeat(MAX_TEXTHASH_BYTES + 1)),
            Err(ImportError::TooLarge { .. })
        ));
        let many: String = (0..=dnsbl::MAX_REPLY_MAP)
            .map(|i| format!("k{i} v\n"))
            .collect();
        assert!(matches!(
            parse_texthash("t", &many),
            Err(ImportError::TooManyEntries { .. })
        ));
    }
}
