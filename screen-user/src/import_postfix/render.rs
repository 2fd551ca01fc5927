//! The configuration file the import writes: the comment block of what was not translated
//! and what differs, each option under its section with the Postfix setting it comes from,
//! and the reply map. Values are written as TOML strings and comments stay one line each.

use super::{Finding, translate::Translation};

impl Translation {
    /// The configuration file.
    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# smtp-screen configuration, imported from Postfix's settings (");
        out.push_str(&comment_text(self.context_postconf.input()));
        out.push_str(").\n#\n");
        out.push_str(
            "# Option names are postscreen's without the `postscreen_` prefix; the comment above\n\
             # each option shows the Postfix setting it comes from. Options left out keep their\n\
             # defaults, which are postscreen's.\n",
        );
        if !self.untranslated.is_empty() {
            out.push_str("#\n# NOT TRANSLATED: check each of these by hand.\n");
            for finding in &self.untranslated {
                write_finding(&mut out, finding);
            }
        }
        if !self.caveats.is_empty() {
            out.push_str("#\n# Translated, with a difference to know about:\n");
            for finding in &self.caveats {
                write_finding(&mut out, finding);
            }
        }
        let mut section = None;
        for entry in &self.entries {
            if section != Some(entry.section) {
                section = Some(entry.section);
                out.push_str(&format!("\n# --- {} ---\n", entry.section.title()));
            }
            for comment in &entry.comments {
                out.push_str("# ");
                out.push_str(&comment_text(comment));
                out.push('\n');
            }
            out.push_str(entry.key);
            out.push_str(" = ");
            out.push_str(&entry.value);
            out.push('\n');
        }
        out.push_str(
            "\n# --- The kernel layer (smtp-screen's own; off) ---\n\
             # To drop SYNs from denied clients in XDP, name the Internet-facing interfaces:\n\
             # interfaces = [\"eth0\"]\n\
             # xdp_mode = \"native\"\n",
        );
        if !self.matched.is_empty() {
            out.push_str("\n# Set in Postfix to what smtp-screen does anyway:\n");
            for (subject, why) in &self.matched {
                write_wrapped(&mut out, "#   ", &format!("{subject}: {why}"));
            }
        }
        if !self.reply_map.is_empty() {
            out.push_str("\n# postscreen_dnsbl_reply_map: the list name shown in replies.\n");
            out.push_str("[dnsbl_reply_map]\n");
            for (domain, shown) in &self.reply_map {
                out.push_str(&format!(
                    "{} = {}\n",
                    toml_string(domain),
                    toml_string(shown)
                ));
            }
        }
        out
    }
}

fn write_finding(out: &mut String, finding: &Finding) {
    write_wrapped(out, "#   ", &finding.subject);
    write_wrapped(out, "#       ", &finding.reason);
}

/// The longest comment line worth wrapping for.
pub(super) const COMMENT_WIDTH: usize = 96;

/// `text` as comment lines that start with `prefix`, wrapped at spaces.
fn write_wrapped(out: &mut String, prefix: &str, text: &str) {
    let mut line = String::new();
    for word in comment_text(text).split(' ').filter(|w| !w.is_empty()) {
        if !line.is_empty() && prefix.len() + line.len() + 1 + word.len() > COMMENT_WIDTH {
            out.push_str(prefix);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(prefix);
    out.push_str(&line);
    out.push('\n');
}

/// A TOML basic string.
pub(super) fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn toml_array(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| toml_string(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// Text for a comment: one line, no control characters.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import_postfix::fixtures::{EVERY_PARAMETER, Files, import_text, import_with};

    #[test]
    fn the_output_survives_hostile_values() {
        let (import, c) = import_text(
            "smtpd_banner = a \"quoted\" \\ banner \u{202e} # not a comment\n\
             postscreen_made_up = \"] [table]\n",
        );
        assert_eq!(
            c.smtpd_banner,
            "a \"quoted\" \\ banner \u{202e} # not a comment"
        );
        assert!(import.toml.contains("postscreen_made_up = \"]"));
        // Values in comments are shortened.
        let long = format!("postscreen_made_up = {}\n", "x".repeat(5_000));
        let (import, _) = import_text(&long);
        assert!(import.toml.lines().all(|l| l.len() < 1_000));
    }

    #[test]
    fn toml_strings_escape_everything_toml_needs() {
        assert_eq!(
            toml_string("a\"b\\c\n\t\u{1}"),
            "\"a\\\"b\\\\c\\n\\t\\u0001\""
        );
        let parsed: toml::Value =
            toml::from_str(&format!("k = {}", toml_string("\u{7f}\"\\x\r"))).unwrap();
        assert_eq!(parsed["k"].as_str(), Some("\u{7f}\"\\x\r"));
        assert_eq!(comment_text("a\nb\u{7f}"), "a?b?");
    }

    #[test]
    fn every_finding_is_in_the_comment_block() {
        let (import, _) = import_with(EVERY_PARAMETER, None, &Files::default());
        // The comment block, its wrapped lines joined again.
        let header: Vec<&str> = import
            .toml
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect();
        assert!(
            header.iter().all(|l| l.len() <= COMMENT_WIDTH),
            "{header:#?}"
        );
        let words = |text: &str| -> String {
            text.split_whitespace()
                .filter(|w| *w != "#")
                .collect::<Vec<_>>()
                .join(" ")
        };
        let header = words(&header.join("\n"));
        assert!(!import.untranslated.is_empty() && !import.caveats.is_empty());
        for finding in import.untranslated.iter().chain(&import.caveats) {
            assert!(header.contains(&words(&finding.subject)), "{finding}");
            assert!(header.contains(&words(&finding.reason)), "{finding}");
        }
    }
}
