//! `postconf -n` output (or main.cf itself): `name = value` parameters with main.cf's
//! continuation lines, and the `postconf: warning:` lines a `2>&1` capture mixes in.

use std::collections::BTreeMap;

use super::{
    lines::{ImportError, LineProblem, MAX_ENTRIES, logical_lines},
    shorten,
};

/// The longest parameter name.
const MAX_NAME_BYTES: usize = 256;

/// One parameter as the input sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Parameter {
    pub(crate) value: String,
    /// The line it starts on (or where a master.cf `-o` set it).
    pub(crate) line: usize,
}

/// The parameters of `postconf -n` output (or of main.cf itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Postconf {
    input: String,
    pub(super) parameters: BTreeMap<String, Parameter>,
    /// `postconf: warning: …` lines found among the parameters (2>&1 captures), with
    /// their line numbers.
    pub(super) warnings: Vec<(usize, String)>,
}

impl Postconf {
    /// Parses `name = value` lines. Lines that start with white space continue the previous
    /// value, as in main.cf; empty lines and `#` comments are skipped; a name set twice
    /// keeps its last value, as Postfix does. `input` names the text in errors.
    pub(crate) fn parse(input: &str, bytes: &[u8]) -> Result<Self, ImportError> {
        let mut postconf = Self {
            input: input.to_string(),
            ..Self::default()
        };
        // A name set twice counts once, so the bound is on distinct names, below; the input's
        // size bounds the lines.
        for line in logical_lines(input, bytes, usize::MAX)? {
            let number = line.first;
            let error = |problem| ImportError::Line {
                input: input.to_string(),
                line: number,
                problem,
            };
            if let Some(warning) = line.text.strip_prefix("postconf: ") {
                postconf.warnings.push((number, warning.to_string()));
                continue;
            }
            let (name, value) = line
                .text
                .split_once('=')
                .ok_or_else(|| error(LineProblem::NoEquals))?;
            let name = name.trim();
            if !is_parameter_name(name) {
                return Err(error(LineProblem::BadName(shorten(name))));
            }
            if !postconf.parameters.contains_key(name) && postconf.parameters.len() == MAX_ENTRIES {
                return Err(ImportError::TooManyEntries {
                    input: input.to_string(),
                    max: MAX_ENTRIES,
                });
            }
            postconf.parameters.insert(
                name.to_string(),
                Parameter {
                    value: value.trim().to_string(),
                    line: number,
                },
            );
        }
        Ok(postconf)
    }

    /// The value the input gives `name`, if it sets it.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(|p| p.value.as_str())
    }

    /// Every parameter the input sets, by name.
    #[cfg(test)]
    pub(crate) fn parameters(&self) -> &BTreeMap<String, Parameter> {
        &self.parameters
    }

    /// What the input is called in messages.
    pub(crate) fn input(&self) -> &str {
        &self.input
    }
}

pub(super) fn is_parameter_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        handoff::Handoff,
        import_postfix::{
            fixtures::{caveat, import_text, postconf},
            lines::MAX_INPUT_BYTES,
        },
    };

    #[test]
    fn parses_name_value_lines() {
        let p = postconf(
            "alias_maps = hash:/etc/aliases\nrelayhost =\n  \n# a comment\n\
             smtpd_banner=$myhostname ESMTP\r\nmynetworks = 127.0.0.0/8\n",
        );
        assert_eq!(p.get("alias_maps"), Some("hash:/etc/aliases"));
        assert_eq!(p.get("relayhost"), Some(""));
        assert_eq!(p.get("smtpd_banner"), Some("$myhostname ESMTP"));
        assert_eq!(p.parameters()["mynetworks"].line, 6);
        assert_eq!(p.get("missing"), None);
        assert_eq!(p.parameters().len(), 4);
    }

    #[test]
    fn joins_continuation_lines_as_main_cf_does() {
        let p = postconf(
            "postscreen_dnsbl_sites = zen.example=127.0.0.[2..11]*3\n\
             \x20   bl.example*2,\n\
             \t  # a comment between continuation lines\n\
             \twl.example*-2\n\
             next = 1\n",
        );
        assert_eq!(
            p.get("postscreen_dnsbl_sites"),
            Some("zen.example=127.0.0.[2..11]*3 bl.example*2, wl.example*-2")
        );
        assert_eq!(p.get("next"), Some("1"));
        // A continuation of an empty value does not start with a space.
        let p = postconf("mynetworks =\n  127.0.0.0/8\n");
        assert_eq!(p.get("mynetworks"), Some("127.0.0.0/8"));
    }

    #[test]
    fn later_settings_win_and_postconf_warnings_are_kept() {
        let p = postconf(
            "a = 1\npostconf: warning: /etc/postfix/main.cf: unused parameter: x=y\na = 2\n",
        );
        assert_eq!(p.get("a"), Some("2"));
        assert_eq!(p.warnings.len(), 1);
        assert_eq!(p.warnings[0].0, 2);
        let (import, _) = import_text("postconf: warning: unused parameter: foo=bar\n");
        assert!(
            caveat(&import, "postconf")[0]
                .reason
                .contains("unused parameter: foo=bar")
        );
    }

    #[test]
    fn rejects_garbage_naming_the_line() {
        let cases: &[(&[u8], usize, LineProblem)] = &[
            (b"a = 1\nno equals sign\n", 2, LineProblem::NoEquals),
            (
                b"  leading = continuation\n",
                1,
                LineProblem::OrphanContinuation,
            ),
            (
                b"a = 1\n\nbad name = 2\n",
                3,
                LineProblem::BadName("bad name".into()),
            ),
            (b"= value\n", 1, LineProblem::BadName(String::new())),
            (b"a = 1\nb = \xff\xfe\n", 2, LineProblem::NotUtf8),
            (b"a = x\x00y\n", 1, LineProblem::ControlCharacter('\0')),
            (b"a = \x1b[31m\n", 1, LineProblem::ControlCharacter('\x1b')),
            (b"$a = 1\n", 1, LineProblem::BadName("$a".into())),
        ];
        for (input, line, problem) in cases {
            let err = Postconf::parse("main.cf", input).unwrap_err();
            assert_eq!(
                err,
                ImportError::Line {
                    input: "main.cf".into(),
                    line: *line,
                    problem: problem.clone()
                },
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("main.cf, line {line}: "))
            );
        }
        let long_name = format!("{} = 1\n", "a".repeat(MAX_NAME_BYTES + 1));
        assert!(matches!(
            Postconf::parse("x", long_name.as_bytes()),
            Err(ImportError::Line {
                problem: LineProblem::BadName(_),
                ..
            })
        ));
    }

    #[test]
    fn bounds_the_input() {
        let big = vec![b'#'; MAX_INPUT_BYTES + 1];
        assert_eq!(
            Postconf::parse("postconf -n", &big).unwrap_err(),
            ImportError::TooLarge {
                input: "postconf -n".into(),
                len: MAX_INPUT_BYTES + 1,
                max: MAX_INPUT_BYTES
            }
        );
        let just_fits = vec![b'#'; MAX_INPUT_BYTES];
        assert!(Postconf::parse("x", &just_fits).is_ok());
        let many: String = (0..=MAX_ENTRIES).map(|i| format!("p{i} = 1\n")).collect();
        assert_eq!(
            Postconf::parse("x", many.as_bytes()).unwrap_err(),
            ImportError::TooManyEntries {
                input: "x".into(),
                max: MAX_ENTRIES
            }
        );
        // The same name over and over is one parameter.
        let same: String = (0..=MAX_ENTRIES).map(|i| format!("p = {i}\n")).collect();
        assert_eq!(
            Postconf::parse("x", same.as_bytes()).unwrap().get("p"),
            Some(MAX_ENTRIES.to_string().as_str())
        );
    }

    #[test]
    fn empty_and_truncated_input() {
        assert!(postconf("").parameters().is_empty());
        assert_eq!(postconf("a = 1").get("a"), Some("1"));
        assert_eq!(postconf("a =").get("a"), Some(""));
        let (import, config) = import_text("");
        assert_eq!(config.handoff, Handoff::Postfix);
        assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
    }
}
