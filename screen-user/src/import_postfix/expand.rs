//! `$name`, `${name}`, `$(name)` and `${name?{a}:{b}}` references, followed as Postfix
//! follows them (`mac_expand.c`): a parameter the input does not set has Postfix's default,
//! from the configuration's table ([`crate::config::parameters`]).
//! Every expansion is bounded in depth, size and the references it takes.

use std::fmt;

use super::{postconf::Postconf, shorten};
use crate::config::parameters;

/// The most bytes one value may expand to (a chain of `$a$a` references grows fast).
const MAX_EXPANDED_BYTES: usize = 1 << 20;
/// How deep `$name` references may nest before the importer gives up (a loop, usually).
const MAX_EXPANSION_DEPTH: usize = 20;
/// How many references one value may take to expand (`a = $b$b$b…`, `b = $c$c$c…` fans out
/// even when nothing is written).
const MAX_EXPANSION_STEPS: usize = 100_000;

/// Why a value could not be expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ExpandProblem {
    Unknown(String),
    Unsupported(String),
    Unbalanced,
    TooDeep,
    TooLong,
    TooManySteps,
}

impl fmt::Display for ExpandProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(name) => write!(
                f,
                "it refers to ${name}, which the input does not set and whose value \
                 smtp-screen cannot know"
            ),
            Self::Unsupported(text) => write!(
                f,
                "it uses the expression {}, which the importer does not evaluate",
                shorten(text)
            ),
            Self::Unbalanced => f.write_str("a `${` or `$(` has no closing bracket"),
            Self::TooDeep => write!(
                f,
                "its references nest more than {MAX_EXPANSION_DEPTH} deep (a loop?)"
            ),
            Self::TooLong => write!(f, "it expands to more than {MAX_EXPANDED_BYTES} bytes"),
            Self::TooManySteps => write!(
                f,
                "it takes more than {MAX_EXPANSION_STEPS} references to expand"
            ),
        }
    }
}

/// How one target option treats references.
#[derive(Clone, Copy, Default)]
pub(super) struct Expansion<'a> {
    /// Plain references that stay as written (smtp-screen expands them): name, text.
    pub(super) keep: &'a [(&'a str, &'a str)],
    /// `${stress?…}` stays as written.
    pub(super) keep_stress: bool,
    /// A literal `$` is written `$$` (the footer syntax).
    pub(super) double_dollar: bool,
}

/// An expanded value.
#[derive(Debug, Default)]
pub(super) struct Expanded {
    pub(super) text: String,
    /// Some of it came from the input (not only from Postfix's defaults).
    pub(super) from_input: bool,
    /// It depends on `stress`.
    pub(super) stress: bool,
    /// References followed so far.
    pub(super) steps: usize,
}

/// Where a parameter's value comes from.
enum Source<'a> {
    Input(&'a str),
    /// Computed from the input (`mydomain` from `myhostname`).
    Derived(String),
    Default(&'static str),
    Unknown,
}

/// A parsed reference, after its `$`.
enum Reference<'a> {
    /// `$$`.
    Dollar,
    /// A `$` that starts no reference.
    Literal,
    Name(&'a str),
    /// `${name?{a}:{b}}`, `${name?a}`, `${name:b}`.
    Conditional {
        name: &'a str,
        if_set: &'a str,
        if_unset: &'a str,
    },
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Parses the reference that follows a `$`; returns it and the bytes of `after` it took.
fn parse_reference(after: &str) -> Result<(Reference<'_>, usize), ExpandProblem> {
    let Some(first) = after.chars().next() else {
        return Ok((Reference::Literal, 0));
    };
    if first == '$' {
        return Ok((Reference::Dollar, 1));
    }
    if first == '{' || first == '(' {
        let close = matching_close(after).ok_or(ExpandProblem::Unbalanced)?;
        let inner = &after[1..close];
        let name_len = inner.find(|c| !is_name_char(c)).unwrap_or(inner.len());
        let (name, rest) = inner.split_at(name_len);
        let unsupported = || ExpandProblem::Unsupported(format!("${}", &after[..=close]));
        if name.is_empty() {
            return Err(unsupported());
        }
        let reference = match rest.chars().next() {
            None => Reference::Name(name),
            Some('?') => {
                let body = &rest[1..];
                let (if_set, if_unset) = match brace_group(body.trim_start()) {
                    Some((if_set, tail)) => match tail.trim() {
                        "" => (if_set, ""),
                        tail => {
                            let else_part = tail.strip_prefix(':').ok_or_else(unsupported)?;
                            match brace_group(else_part.trim_start()) {
                                Some((if_unset, end)) if end.trim().is_empty() => {
                                    (if_set, if_unset)
                                }
                                _ => return Err(unsupported()),
                            }
                        }
                    },
                    None => (body, ""),
                };
                Reference::Conditional {
                    name,
                    if_set,
                    if_unset,
                }
            }
            Some(':') => {
                let body = &rest[1..];
                let if_unset = match brace_group(body.trim_start()) {
                    Some((inner, tail)) if tail.trim().is_empty() => inner,
                    _ => body,
                };
                Reference::Conditional {
                    name,
                    if_set: "",
                    if_unset,
                }
            }
            Some(_) => return Err(unsupported()),
        };
        return Ok((reference, close + 1));
    }
    let len = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
    if len == 0 {
        return Ok((Reference::Literal, 0));
    }
    Ok((Reference::Name(&after[..len]), len))
}

/// The position of the bracket that closes the `{` or `(` `text` starts with.
fn matching_close(text: &str) -> Option<usize> {
    let (open, close) = if text.starts_with('{') {
        ('{', '}')
    } else {
        ('(', ')')
    };
    let mut depth = 0usize;
    for (at, c) in text.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Some(at);
            }
        }
    }
    None
}

/// `{inner}rest` → (inner, rest).
fn brace_group(text: &str) -> Option<(&str, &str)> {
    if !text.starts_with('{') {
        return None;
    }
    let close = matching_close(text)?;
    Some((&text[1..close], &text[close + 1..]))
}

/// Parameter values as Postfix sees them: the input's, else Postfix's defaults.
pub(super) struct Context<'a> {
    pub(super) postconf: &'a Postconf,
}

impl<'a> Context<'a> {
    fn lookup(&self, name: &str) -> Source<'a> {
        if let Some(value) = self.postconf.get(name) {
            return Source::Input(value);
        }
        if name == "mydomain" {
            // Postfix's default: myhostname without its first label.
            return match self.postconf.get("myhostname") {
                Some(host) if !host.contains('$') => match host.split_once('.') {
                    Some((_, domain)) if domain.contains('.') => {
                        Source::Derived(domain.to_string())
                    }
                    _ => Source::Derived("localdomain".into()),
                },
                _ => Source::Unknown,
            };
        }
        // Postfix's general parameters only: a `$postscreen_…` reference to a parameter the
        // input does not set is not given its default, and is reported as unknown.
        if name.starts_with("postscreen_") {
            return Source::Unknown;
        }
        parameters::postfix_parameter(name)
            .and_then(|parameter| parameter.default)
            .map_or(Source::Unknown, Source::Default)
    }

    pub(super) fn expand(&self, text: &str, how: Expansion) -> Result<Expanded, ExpandProblem> {
        let mut out = Expanded::default();
        self.expand_into(text, how, 0, &mut out)?;
        Ok(out)
    }

    pub(super) fn expand_into(
        &self,
        text: &str,
        how: Expansion,
        depth: usize,
        out: &mut Expanded,
    ) -> Result<(), ExpandProblem> {
        if depth > MAX_EXPANSION_DEPTH {
            return Err(ExpandProblem::TooDeep);
        }
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            push(out, &rest[..pos])?;
            let after = &rest[pos + 1..];
            let (reference, consumed) = parse_reference(after)?;
            if !matches!(reference, Reference::Dollar | Reference::Literal) {
                out.steps += 1;
                if out.steps > MAX_EXPANSION_STEPS {
                    return Err(ExpandProblem::TooManySteps);
                }
            }
            match reference {
                Reference::Dollar | Reference::Literal => {
                    push(out, if how.double_dollar { "$$" } else { "$" })?
                }
                Reference::Name("stress") | Reference::Conditional { name: "stress", .. }
                    if how.keep_stress =>
                {
                    out.stress = true;
                    push(out, "$")?;
                    push(out, &after[..consumed])?;
                }
                Reference::Name(name) => {
                    if name == "stress" {
                        out.stress = true;
                    }
                    if let Some((_, kept)) = how.keep.iter().find(|(n, _)| *n == name) {
                        push(out, kept)?;
                    } else {
                        match self.lookup(name) {
                            Source::Input(value) => {
                                out.from_input = true;
                                self.expand_into(value, how, depth + 1, out)?;
                            }
                            Source::Derived(value) => {
                                out.from_input = true;
                                push(out, &value)?;
                            }
                            Source::Default(value) => {
                                self.expand_into(value, how, depth + 1, out)?
                            }
                            Source::Unknown => {
                                return Err(ExpandProblem::Unknown(name.to_string()));
                            }
                        }
                    }
                }
                Reference::Conditional {
                    name,
                    if_set,
                    if_unset,
                } => {
                    if name == "stress" {
                        out.stress = true;
                    }
                    let set = match self.lookup(name) {
                        Source::Input(value) => {
                            out.from_input = true;
                            !value.trim().is_empty()
                        }
                        Source::Derived(_) => true,
                        Source::Default(value) => !value.is_empty(),
                        // Postfix treats a parameter without a value as empty.
                        Source::Unknown => false,
                    };
                    let chosen = if set { if_set } else { if_unset };
                    self.expand_into(chosen, how, depth + 1, out)?;
                }
            }
            rest = &after[consumed..];
        }
        push(out, rest)
    }
}

fn push(out: &mut Expanded, text: &str) -> Result<(), ExpandProblem> {
    if out.text.len() + text.len() > MAX_EXPANDED_BYTES {
        return Err(ExpandProblem::TooLong);
    }
    out.text.push_str(text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import_postfix::fixtures::postconf;

    fn expand(text: &str, input: &str) -> Result<Expanded, ExpandProblem> {
        let p = postconf(input);
        Context { postconf: &p }.expand(text, Expansion::default())
    }

    #[test]
    fn expands_references_in_every_form() {
        let input = "a = A\nb = <$a>\nempty =\n";
        let text = |t: &str| expand(t, input).unwrap().text;
        assert_eq!(text("$a ${a} $(a) $b"), "A A A <A>");
        assert_eq!(text("${a?set}|${empty?set}|${none?set}"), "set||");
        assert_eq!(
            text("${a:unset}|${empty:unset}|${none:unset}"),
            "|unset|unset"
        );
        assert_eq!(text("${a?{x}:{y}}|${none?{x}:{y}}"), "x|y");
        assert_eq!(text("${none?{x} : {y}}"), "y");
        assert_eq!(text("${a?{$b}:{no}}"), "<A>");
        assert_eq!(text("$$a costs $ 5, end $"), "$a costs $ 5, end $");
        assert_eq!(text("$mail_name"), "Postfix");
        assert_eq!(text("$default_process_limit"), "100");
        assert!(expand("$a", input).unwrap().from_input);
        assert!(!expand("$mail_name", input).unwrap().from_input);
        assert!(!expand("plain", input).unwrap().from_input);
    }

    #[test]
    fn derives_mydomain_from_myhostname() {
        let text = |input: &str| expand("$mydomain", input).map(|e| e.text);
        assert_eq!(
            text("myhostname = mx.example.org\n").unwrap(),
            "example.org"
        );
        assert_eq!(text("myhostname = mx\n").unwrap(), "localdomain");
        assert_eq!(text("mydomain = example.net\n").unwrap(), "example.net");
        assert_eq!(
            text("").unwrap_err(),
            ExpandProblem::Unknown("mydomain".into())
        );
    }

    #[test]
    fn reports_what_it_cannot_expand() {
        assert_eq!(
            expand("$LAB/etc", "").unwrap_err(),
            ExpandProblem::Unknown("LAB".into())
        );
        assert_eq!(
            expand("$myhostname", "").unwrap_err(),
            ExpandProblem::Unknown("myhostname".into())
        );
        assert_eq!(
            expand("${a", "a = 1").unwrap_err(),
            ExpandProblem::Unbalanced
        );
        assert_eq!(
            expand("$(a", "a = 1").unwrap_err(),
            ExpandProblem::Unbalanced
        );
        assert!(matches!(
            expand("${{$compatibility_level} <level {3.6} ? {no} : {yes}}", ""),
            Err(ExpandProblem::Unsupported(_))
        ));
        assert!(matches!(
            expand("${a!b}", "a = 1"),
            Err(ExpandProblem::Unsupported(_))
        ));
        assert!(matches!(
            expand("${a?{x}junk}", "a = 1"),
            Err(ExpandProblem::Unsupported(_))
        ));
        assert_eq!(
            expand("$a", "a = $b\nb = $a\n").unwrap_err(),
            ExpandProblem::TooDeep
        );
        assert_eq!(
            expand("$a", "a = $a\n").unwrap_err(),
            ExpandProblem::TooDeep
        );
        // Each level doubles: 3 * 2^11 copies of a kilobyte is past the bound.
        let mut doubling = format!("a0 = {}\n", "x".repeat(1000));
        for i in 1..12 {
            doubling.push_str(&format!("a{i} = $a{} $a{}\n", i - 1, i - 1));
        }
        let p = postconf(&doubling);
        let err = Context { postconf: &p }
            .expand("$a11 $a11 $a11", Expansion::default())
            .unwrap_err();
        assert_eq!(err, ExpandProblem::TooLong);
        // Nothing written, but each level multiplies the references by 40.
        let mut fan_out = String::from("b0 =\n");
        for i in 1..20 {
            fan_out.push_str(&format!("b{i} = {}\n", format!("$b{} ", i - 1).repeat(40)));
        }
        let p = postconf(&fan_out);
        let err = Context { postconf: &p }
            .expand("$b19", Expansion::default())
            .unwrap_err();
        assert_eq!(err, ExpandProblem::TooManySteps);
    }

    #[test]
    fn keeps_what_smtp_screen_expands_itself() {
        let p = postconf("");
        let context = Context { postconf: &p };
        let keep = [("myhostname", "$myhostname")];
        let how = Expansion {
            keep: &keep,
            ..Expansion::default()
        };
        assert_eq!(
            context
                .expand("${myhostname} ESMTP $mail_name", how)
                .unwrap()
                .text,
            "$myhostname ESMTP Postfix"
        );
        let how = Expansion {
            keep_stress: true,
            ..Expansion::default()
        };
        let e = context.expand("${stress?{2}:{6}}s", how).unwrap();
        assert_eq!((e.text.as_str(), e.stress), ("${stress?{2}:{6}}s", true));
        let e = context
            .expand("${stress?{2}:{6}}s", Expansion::default())
            .unwrap();
        assert_eq!((e.text.as_str(), e.stress), ("6s", true));
        let how = Expansion {
            double_dollar: true,
            ..Expansion::default()
        };
        assert_eq!(context.expand("$$5 and $", how).unwrap().text, "$$5 and $$");
    }
}
