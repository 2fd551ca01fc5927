//! The translation of Postfix's settings into smtp-screen's options, one file per section
//! of the configuration: [`listen`] (smtp-screen's own options), [`general`] (Postfix's
//! general settings), [`postscreen`], [`dnsbl`], [`deep`] and [`tls`], and [`unsupported`]
//! parameters; [`lists`] takes list values entry by entry. Here: the value of a parameter
//! (the input's, under its current or its old name, else Postfix's default), plain values
//! checked as smtp-screen checks them, and the options made so far with the findings.
//!
//! Which Postfix parameter stands for which option, and Postfix's defaults, come from the
//! configuration's table ([`crate::config::parameters`]).

mod deep;
mod dnsbl;
mod general;
mod listen;
mod lists;
mod postscreen;
#[cfg(test)]
mod tests;
mod tls;
mod unsupported;

use std::collections::BTreeSet;

use super::{
    Finding,
    expand::{Context, Expanded, Expansion},
    master_cf::{MasterCf, MasterService},
    postconf::{Parameter, Postconf, is_parameter_name},
    render::toml_string,
    shorten,
};
use crate::{
    access_list::TableFiles,
    config::{
        self,
        parameters::{self, PostfixParameter},
    },
    duration,
};

/// The smtp-screen option a value goes to, in the order they are written.
pub(super) struct Entry {
    pub(super) section: Section,
    pub(super) key: &'static str,
    /// The value in TOML syntax.
    pub(super) value: String,
    /// Comment lines written above it.
    pub(super) comments: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Section {
    Smtp,
    Main,
    Postscreen,
    Dnsbl,
    Deep,
}

impl Section {
    pub(super) fn title(self) -> &'static str {
        match self {
            Self::Smtp => "Listening, hand-off and logging (smtp-screen's own)",
            Self::Main => "Postfix's general settings that postscreen uses",
            Self::Postscreen => "postscreen's settings",
            Self::Dnsbl => "DNSBL and DNSWL scoring",
            Self::Deep => "Deep protocol tests and STARTTLS",
        }
    }
}

/// Kinds of plain values.
#[derive(Clone, Copy)]
enum Kind {
    Time,
    /// A time that may be `${stress?{a}:{b}}s`.
    StressTime,
    /// A whole number, at least this.
    Count(u32),
    /// A signed score.
    Score,
    YesNo,
    Action,
}

/// A value that is written unless it comes from Postfix's defaults alone.
struct Effective {
    /// The parameter that holds it (an old name, when that is what the input sets).
    parameter: &'static str,
    raw: String,
    explicit: bool,
}

impl Effective {
    fn subject(&self) -> String {
        self.origin()
    }

    /// The comment above the option, with the value the references gave.
    fn described(&self, expanded: &str) -> String {
        let expanded = shorten(expanded.trim());
        match (self.explicit, self.raw.trim() == expanded) {
            (true, true) => self.origin(),
            (true, false) => format!("{} (here: {expanded})", self.origin()),
            (false, _) => format!(
                "{} = {}: Postfix's default, here {expanded}",
                self.parameter,
                shorten(&self.raw)
            ),
        }
    }

    /// The comment above the option.
    fn origin(&self) -> String {
        if self.explicit {
            format!("{} = {}", self.parameter, shorten(&self.raw))
        } else {
            format!(
                "{} = {} (Postfix's default)",
                self.parameter,
                shorten(&self.raw)
            )
        }
    }
}

/// The Postfix parameter (with its older name, if any) that feeds option `key`, from the
/// configuration's table.
fn parameter_for(key: &str) -> &'static PostfixParameter {
    parameters::option(key)
        .and_then(|option| option.postfix.as_ref())
        .unwrap_or_else(|| panic!("option {key} has no Postfix parameter in config::parameters"))
}

/// A Postfix parameter smtp-screen has no option for, from the configuration's table.
fn parameter(name: &str) -> &'static PostfixParameter {
    parameters::postfix_parameter(name)
        .unwrap_or_else(|| panic!("{name} is not in config::parameters"))
}

/// Postfix's default of a parameter smtp-screen has no option for.
fn postfix_default(name: &str) -> &'static str {
    parameter(name).default.unwrap_or_default()
}

pub(super) struct Translation {
    pub(super) context_postconf: Postconf,
    pub(super) entries: Vec<Entry>,
    pub(super) untranslated: Vec<Finding>,
    pub(super) caveats: Vec<Finding>,
    /// Parameters set to what smtp-screen does anyway: subject, why.
    pub(super) matched: Vec<(String, String)>,
    /// postscreen parameters dealt with, so the rest can be reported as unknown.
    handled: BTreeSet<&'static str>,
    pub(super) reply_map: Vec<(String, String)>,
    /// Where the listen addresses came from.
    listen_origin: String,
}

impl Translation {
    pub(super) fn new() -> Self {
        Self {
            context_postconf: Postconf::default(),
            entries: Vec::new(),
            untranslated: Vec::new(),
            caveats: Vec::new(),
            matched: Vec::new(),
            handled: BTreeSet::new(),
            reply_map: Vec::new(),
            listen_origin: String::new(),
        }
    }

    fn context(&self) -> Context<'_> {
        Context {
            postconf: &self.context_postconf,
        }
    }

    fn skip(&mut self, parameter: &str, subject: String, reason: impl Into<String>) {
        self.untranslated.push(Finding {
            parameter: parameter.to_string(),
            subject,
            reason: reason.into(),
        });
    }

    pub(super) fn caveat(&mut self, parameter: &str, subject: String, reason: impl Into<String>) {
        self.caveats.push(Finding {
            parameter: parameter.to_string(),
            subject,
            reason: reason.into(),
        });
    }

    fn set(&mut self, section: Section, key: &'static str, value: String, comments: Vec<String>) {
        self.entries.retain(|e| e.key != key);
        self.entries.push(Entry {
            section,
            key,
            value,
            comments,
        });
    }

    fn get_entry(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// Takes the `-o name=value` settings of master.cf's postscreen services: they override
    /// main.cf for postscreen.
    pub(super) fn apply_overrides(&mut self, merged: &mut Postconf, master: &MasterCf) {
        let services: Vec<&MasterService> = master.postscreen().collect();
        let Some(first) = services.first() else {
            return;
        };
        let overrides = first.overrides();
        for other in &services[1..] {
            if other.overrides() != overrides {
                self.caveat(
                    "master.cf",
                    format!("{}, line {}", master.input, other.first_line),
                    format!(
                        "this postscreen service has other -o settings than the one on line \
                         {}; smtp-screen has one configuration, taken from line {}",
                        first.first_line, first.first_line
                    ),
                );
            }
        }
        for (name, value) in overrides {
            if !is_parameter_name(&name) {
                continue;
            }
            merged.parameters.insert(
                name,
                Parameter {
                    value,
                    line: first.first_line,
                },
            );
        }
    }

    /// The value of `names`: the input's (new name first), else Postfix's default.
    fn effective(&mut self, names: &PostfixParameter) -> Effective {
        self.handled.insert(names.name);
        if let Some(old) = names.old_name {
            self.handled.insert(old);
        }
        let get = |name: &str| self.context_postconf.get(name).map(str::to_string);
        let current = get(names.name);
        let old = names
            .old_name
            .and_then(|old| get(old).map(|value| (old, value)));
        match (current, old) {
            (Some(value), old) => {
                if let Some((old, old_value)) = old {
                    self.caveat(
                        old,
                        format!("{old} = {}", shorten(&old_value)),
                        format!(
                            "the name before Postfix 3.6; {} is set too and wins",
                            names.name
                        ),
                    );
                }
                Effective {
                    parameter: names.name,
                    raw: value,
                    explicit: true,
                }
            }
            (None, Some((old, value))) => Effective {
                parameter: old,
                raw: value,
                explicit: true,
            },
            (None, None) => Effective {
                parameter: names.name,
                raw: names.default.unwrap_or_default().to_string(),
                explicit: false,
            },
        }
    }

    /// Expands a value; a failure is reported and gives `None`.
    fn expand(&mut self, value: &Effective, how: Expansion) -> Option<Expanded> {
        match self.context().expand(&value.raw, how) {
            Ok(mut expanded) => {
                expanded.from_input |= value.explicit;
                if expanded.stress && !how.keep_stress {
                    self.caveat(
                        value.parameter,
                        value.subject(),
                        format!(
                            "smtp-screen varies only greet_wait and command_time_limit with \
                             stress; the normal value {} is used",
                            shorten(&expanded.text)
                        ),
                    );
                }
                Some(expanded)
            }
            Err(problem) => {
                self.skip(value.parameter, value.subject(), problem.to_string());
                None
            }
        }
    }

    /// A plain value: written when the input sets it, in the option's syntax.
    fn plain(&mut self, section: Section, key: &'static str, kind: Kind) {
        let names = parameter_for(key);
        let value = self.effective(names);
        let how = Expansion {
            keep_stress: matches!(kind, Kind::StressTime),
            ..Expansion::default()
        };
        let Some(expanded) = self.expand(&value, how) else {
            return;
        };
        if !expanded.from_input {
            return;
        }
        match plain_value(&expanded.text, kind) {
            Ok(toml) => {
                let mut comments = vec![value.described(&expanded.text)];
                if value.parameter != names.name {
                    comments.push(format!(
                        "({} is the name before Postfix 3.6 of {})",
                        value.parameter, names.name
                    ));
                }
                self.set(section, key, toml, comments);
            }
            Err(reason) => self.skip(value.parameter, value.subject(), reason),
        }
    }

    pub(super) fn run(&mut self, master_cf: Option<&MasterCf>, files: &dyn TableFiles) {
        self.smtp_screen_own(master_cf);
        self.main_settings();
        self.postscreen_settings(files);
        self.dnsbl_settings(files);
        self.deep_settings();
        self.unsupported();
        self.unknown_postscreen_parameters();
        self.logging_words();
    }
}

/// `type:name` → (type, name), for a word that names a table.
fn table_spec(word: &str) -> Option<(&str, &str)> {
    let (kind, name) = word.split_once(':')?;
    (!kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then_some((kind, name))
}

/// A plain value in TOML, checked as smtp-screen checks it.
fn plain_value(text: &str, kind: Kind) -> Result<String, String> {
    let text = text.trim();
    match kind {
        Kind::Time => duration::parse(text)
            .map(|_| toml_string(text))
            .map_err(|e| e.to_string()),
        Kind::StressTime => config::parse_stress_duration(text).map(|_| toml_string(text)),
        Kind::Count(min) => {
            let value: u32 = text
                .parse()
                .map_err(|_| format!("{}: not a whole number", shorten(text)))?;
            if value < min {
                return Err(format!(
                    "{value} is below smtp-screen's minimum of {min} (postscreen's too)"
                ));
            }
            Ok(value.to_string())
        }
        Kind::Score => text
            .parse::<i32>()
            .map(|v| v.to_string())
            .map_err(|_| format!("{}: not a whole number", shorten(text))),
        Kind::YesNo => match text.to_ascii_lowercase().as_str() {
            value @ ("yes" | "no") => Ok(toml_string(value)),
            _ => Err(format!("{}: expected yes or no", shorten(text))),
        },
        Kind::Action => match text.to_ascii_lowercase().as_str() {
            value @ ("ignore" | "enforce" | "drop") => Ok(toml_string(value)),
            _ => Err(format!(
                "{}: expected ignore, enforce or drop",
                shorten(text)
            )),
        },
    }
}
