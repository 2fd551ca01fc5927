//! `smtp-screen import-postfix`: a Postfix site's postscreen settings, as `postconf -n`
//! prints them, turned into an smtp-screen configuration file, with the master.cf edits that
//! hand port 25 from postscreen to smtp-screen.
//!
//! Everything here is pure: [`Postconf::parse`] and [`MasterCf::parse`] read text, and
//! [`import`] translates. The only files it asks for are the `texthash:` reply map and the
//! `cidr:` tables it checks, through a [`TableFiles`] the caller passes.
//!
//! What a setting's value is follows Postfix: a parameter `postconf -n` does not show has
//! Postfix 3.7's default (`postconf -d`), and defaults that refer to other parameters are
//! followed (`postscreen_client_connection_count_limit = $smtpd_client_connection_count_limit`),
//! so a site that only set `smtpd_client_connection_count_limit` gets the same limit.
//! `$name` and `${name}` references are expanded, except the ones smtp-screen expands itself
//! (`$myhostname` and `$smtpd_banner` in banners, footer macros in `reject_footer`) and
//! `${stress?{a}:{b}}` in `greet_wait` and `command_time_limit`. An option is written when
//! its value comes from the input; the others keep smtp-screen's defaults, which are
//! postscreen's.
//!
//! Whatever cannot be carried over is reported, each with its reason: in a comment block at
//! the top of the generated file, and to the operator by the CLI. The result always loads
//! with [`Config::parse`](crate::config::Config::parse): a value it would refuse is left out
//! and reported instead.
//!
//! The parsers read text into values: `postconf.rs` (`postconf -n` output), `master_cf.rs` and
//! `texthash.rs`, each over the bounded lines of `lines.rs`. `expand.rs` follows `$name`
//! references with Postfix's defaults; `translate/` makes smtp-screen's options section by
//! section; `render.rs` writes the configuration file with its comment block, and
//! `advice.rs` the master.cf edits.

mod advice;
mod expand;
#[cfg(test)]
mod fixtures;
mod lines;
mod master_cf;
mod postconf;
mod render;
mod texthash;
mod translate;

use std::fmt;

pub(crate) use lines::MAX_INPUT_BYTES;
pub(crate) use master_cf::MasterCf;
pub(crate) use postconf::Postconf;

use crate::access_list::TableFiles;
use crate::escape;
use translate::Translation;

/// How much of a value is shown in comments and reports.
const SHOWN_VALUE_CHARS: usize = 300;

/// A setting, or one entry of a list setting, that the operator must look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    /// The Postfix parameter.
    pub(crate) parameter: String,
    /// What is meant: `name = value`, or `name: entry` for one entry of a list.
    pub(crate) subject: String,
    /// Why it is reported.
    pub(crate) reason: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.reason)
    }
}

/// What [`import`] makes of a Postfix configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Import {
    /// The smtp-screen configuration file (TOML); it loads with `Config::parse`.
    pub(crate) toml: String,
    /// Settings (or list entries) left out, each with the reason.
    pub(crate) untranslated: Vec<Finding>,
    /// Settings translated with a difference the operator should know about.
    pub(crate) caveats: Vec<Finding>,
    /// The master.cf edits that hand port 25 from postscreen to smtp-screen, and how to
    /// roll back.
    pub(crate) master_cf_advice: String,
}

/// Translates `postconf` (with the `-o` settings of master.cf's postscreen service, when
/// `master_cf` is given) into an smtp-screen configuration. `files` reads `texthash:` reply
/// maps and the `cidr:` tables that are checked.
pub(crate) fn import(
    postconf: &Postconf,
    master_cf: Option<&MasterCf>,
    files: &dyn TableFiles,
) -> Import {
    let mut merged = postconf.clone();
    let mut translation = Translation::new();
    for (line, warning) in &postconf.warnings {
        translation.caveat(
            "postconf",
            format!("line {line}"),
            format!("postconf said: {}", shorten(warning)),
        );
    }
    if let Some(master) = master_cf {
        translation.apply_overrides(&mut merged, master);
    }
    for (name, parameter) in &merged.parameters {
        if parameter.value.contains(" #") || parameter.value.contains("\t#") {
            translation.caveat(
                name,
                format!("{name} = {}", shorten(&parameter.value)),
                "main.cf has no end-of-line comments: Postfix takes the text from `#` on as \
                 part of the value, and so does the importer",
            );
        }
    }
    translation.context_postconf = merged;
    translation.run(master_cf, files);
    let master_cf_advice = translation.master_cf_advice(master_cf);
    Import {
        toml: translation.render(),
        untranslated: translation.untranslated,
        caveats: translation.caveats,
        master_cf_advice,
    }
}

/// At most [`SHOWN_VALUE_CHARS`] characters of a value, for messages.
fn shorten(text: &str) -> String {
    escape::shorten(text, SHOWN_VALUE_CHARS)
}
