//! `smtp-screen import-postfix`: a Postfix site's postscreen settings, as `postconf -n`
//! prints them, turned into an smtp-screen configuration file, with the master.cf edits that
//! hand port 25 from postscreen to smtp-screen.
//!
//! Everything here is pure: [`Postconf::parse`] and [`MasterCf::parse`] read text, and
//! [`import`] translates. The only files it asks for are the `texthash:` reply map and the
//! `cidr:` tables it checks, through an [`access::TableFiles`] the caller passes.
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

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use crate::{
    cidr_table::{CidrTable, Pattern, PatternError},
    config, dnsbl, duration, paths,
    screen::access::{self, TableFiles},
    smtpd::{ForbiddenCommand, ReplyFooter},
};

/// The largest `postconf -n` output or master.cf accepted. Real ones are a few kilobytes.
pub const MAX_INPUT_BYTES: usize = 1 << 20;
/// The most parameters (or master.cf services) accepted from one input.
pub const MAX_ENTRIES: usize = 10_000;
/// The longest parameter name.
pub const MAX_NAME_BYTES: usize = 256;
/// The most bytes one value may expand to (a chain of `$a$a` references grows fast).
pub const MAX_EXPANDED_BYTES: usize = 1 << 20;
/// How deep `$name` references may nest before the importer gives up (a loop, usually).
pub const MAX_EXPANSION_DEPTH: usize = 20;
/// How many references one value may take to expand (`a = $b$b$b…`, `b = $c$c$c…` fans out
/// even when nothing is written).
pub const MAX_EXPANSION_STEPS: usize = 100_000;
/// The largest `texthash:` file read.
pub const MAX_TEXTHASH_BYTES: usize = 1 << 20;
/// How much of a value is shown in comments and reports.
const SHOWN_VALUE_CHARS: usize = 300;

/// Input that cannot be read as `postconf -n` output, master.cf or a `texthash:` table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
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
pub enum LineProblem {
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

// ---------------------------------------------------------------------------------------
// `postconf -n` output
// ---------------------------------------------------------------------------------------

/// One parameter as the input sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parameter {
    pub value: String,
    /// The line it starts on (or where a master.cf `-o` set it).
    pub line: usize,
}

/// The parameters of `postconf -n` output (or of main.cf itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Postconf {
    input: String,
    parameters: BTreeMap<String, Parameter>,
    /// `postconf: warning: …` lines found among the parameters (2>&1 captures), with
    /// their line numbers.
    warnings: Vec<(usize, String)>,
}

impl Postconf {
    /// Parses `name = value` lines. Lines that start with white space continue the previous
    /// value, as in main.cf; empty lines and `#` comments are skipped; a name set twice
    /// keeps its last value, as Postfix does. `input` names the text in errors.
    pub fn parse(input: &str, bytes: &[u8]) -> Result<Self, ImportError> {
        let mut postconf = Self {
            input: input.to_string(),
            ..Self::default()
        };
        let mut current: Option<String> = None;
        for (number, line) in text_lines(input, bytes)? {
            let error = |problem| ImportError::Line {
                input: input.to_string(),
                line: number,
                problem,
            };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                let name = current
                    .as_ref()
                    .ok_or_else(|| error(LineProblem::OrphanContinuation))?;
                let parameter = postconf
                    .parameters
                    .get_mut(name)
                    .expect("the current parameter was inserted");
                if !parameter.value.is_empty() {
                    parameter.value.push(' ');
                }
                parameter.value.push_str(trimmed);
                continue;
            }
            if let Some(warning) = trimmed.strip_prefix("postconf: ") {
                postconf.warnings.push((number, warning.to_string()));
                current = None;
                continue;
            }
            let (name, value) = trimmed
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
            current = Some(name.to_string());
        }
        Ok(postconf)
    }

    /// The value the input gives `name`, if it sets it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(|p| p.value.as_str())
    }

    /// Every parameter the input sets, by name.
    pub fn parameters(&self) -> &BTreeMap<String, Parameter> {
        &self.parameters
    }

    /// What the input is called in messages.
    pub fn input(&self) -> &str {
        &self.input
    }
}

fn is_parameter_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Splits bounded input into numbered UTF-8 lines without their line ends; tabs are the
/// only control characters allowed.
fn text_lines<'a>(input: &str, bytes: &'a [u8]) -> Result<Vec<(usize, &'a str)>, ImportError> {
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

// ---------------------------------------------------------------------------------------
// master.cf
// ---------------------------------------------------------------------------------------

/// One service of master.cf: a logical line, continuation lines included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterService {
    /// The first and last physical lines it spans.
    pub first_line: usize,
    pub last_line: usize,
    /// `smtp`, `127.0.0.1:10025`, `smtpd`, …
    pub service: String,
    /// `inet`, `unix`, `unix-dgram`, `fifo` or `pass`.
    pub kind: String,
    /// The private, unpriv, chroot, wakeup and maxproc fields, as written.
    pub flags: [String; 5],
    /// The program: `postscreen`, `smtpd`, `dnsblog`, …
    pub command: String,
    /// Its arguments, `{ … }` groups kept whole.
    pub args: Vec<String>,
    /// The fields as they read on one line, for messages.
    pub text: String,
}

impl MasterService {
    /// The `-o name=value` settings of its arguments (also `-o { name = value }` and
    /// `-oname=value`), in order.
    pub fn overrides(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut args = self.args.iter();
        while let Some(arg) = args.next() {
            let setting = match arg.strip_prefix("-o") {
                Some("") => match args.next() {
                    Some(next) => next.as_str(),
                    None => break,
                },
                Some(rest) => rest,
                None => continue,
            };
            let setting = setting
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .unwrap_or(setting);
            if let Some((name, value)) = setting.split_once('=') {
                out.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        out
    }
}

/// The services of a master.cf file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasterCf {
    input: String,
    services: Vec<MasterService>,
}

impl MasterCf {
    /// Parses master.cf: a service per logical line (lines that start with white space
    /// continue it; comment and empty lines are skipped, also between continuation lines).
    pub fn parse(input: &str, bytes: &[u8]) -> Result<Self, ImportError> {
        let mut logical: Vec<(usize, usize, String)> = Vec::new();
        for (number, line) in text_lines(input, bytes)? {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                let (_, last, text) = logical.last_mut().ok_or(ImportError::Line {
                    input: input.to_string(),
                    line: number,
                    problem: LineProblem::OrphanContinuation,
                })?;
                *last = number;
                text.push(' ');
                text.push_str(trimmed);
                continue;
            }
            if logical.len() == MAX_ENTRIES {
                return Err(ImportError::TooManyEntries {
                    input: input.to_string(),
                    max: MAX_ENTRIES,
                });
            }
            logical.push((number, number, trimmed.to_string()));
        }
        let mut services = Vec::with_capacity(logical.len());
        for (first_line, last_line, text) in logical {
            let fields = split_words(&text, false);
            if fields.len() < 8 {
                return Err(ImportError::Line {
                    input: input.to_string(),
                    line: first_line,
                    problem: LineProblem::TooFewFields(fields.len()),
                });
            }
            let own = |i: usize| fields[i].to_string();
            services.push(MasterService {
                first_line,
                last_line,
                service: own(0),
                kind: own(1),
                flags: [own(2), own(3), own(4), own(5), own(6)],
                command: own(7),
                args: fields[8..].iter().map(|s| s.to_string()).collect(),
                text: fields.join(" "),
            });
        }
        Ok(Self {
            input: input.to_string(),
            services,
        })
    }

    /// The services, in file order.
    pub fn services(&self) -> &[MasterService] {
        &self.services
    }

    /// What the file is called in messages.
    pub fn input(&self) -> &str {
        &self.input
    }

    fn postscreen(&self) -> impl Iterator<Item = &MasterService> {
        self.services
            .iter()
            .filter(|s| s.kind == "inet" && command_name(&s.command) == "postscreen")
    }
}

/// `postscreen` of `/usr/lib/postfix/sbin/postscreen`.
fn command_name(command: &str) -> &str {
    command.rsplit('/').next().unwrap_or(command)
}

/// Splits at white space (and commas when `commas`), keeping `{…}` groups whole, as
/// Postfix splits lists and master.cf fields. An unbalanced `{` takes the rest.
fn split_words(text: &str, commas: bool) -> Vec<&str> {
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

// ---------------------------------------------------------------------------------------
// `texthash:` tables
// ---------------------------------------------------------------------------------------

/// One entry of a `texthash:` table, with the line it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TexthashEntry {
    pub line: usize,
    pub key: String,
    pub value: String,
}

/// Parses a `texthash:` (postmap source) file: `key value` lines, `#` comments, lines that
/// start with white space continuing the previous value. At most [`dnsbl::MAX_REPLY_MAP`]
/// entries; duplicates are returned as they are (Postfix keeps the first).
pub fn parse_texthash(input: &str, text: &str) -> Result<Vec<TexthashEntry>, ImportError> {
    if text.len() > MAX_TEXTHASH_BYTES {
        return Err(ImportError::TooLarge {
            input: input.to_string(),
            len: text.len(),
            max: MAX_TEXTHASH_BYTES,
        });
    }
    let mut entries: Vec<TexthashEntry> = Vec::new();
    for (number, line) in text_lines(input, text.as_bytes())? {
        let error = |problem| ImportError::Line {
            input: input.to_string(),
            line: number,
            problem,
        };
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            let entry = entries
                .last_mut()
                .ok_or_else(|| error(LineProblem::OrphanContinuation))?;
            entry.value.push(' ');
            entry.value.push_str(trimmed);
            continue;
        }
        let (key, value) = trimmed
            .split_once(char::is_whitespace)
            .ok_or_else(|| error(LineProblem::NoValue))?;
        if entries.len() == dnsbl::MAX_REPLY_MAP {
            return Err(ImportError::TooManyEntries {
                input: input.to_string(),
                max: dnsbl::MAX_REPLY_MAP,
            });
        }
        entries.push(TexthashEntry {
            line: number,
            key: key.to_string(),
            value: value.trim().to_string(),
        });
    }
    Ok(entries)
}

// ---------------------------------------------------------------------------------------
// `$name` expansion
// ---------------------------------------------------------------------------------------

/// Postfix 3.7's defaults (`postconf -d` on Debian 12) of the parameters postscreen's
/// defaults and this importer refer to. `myhostname` and `mydomain` are not here: Postfix
/// computes them from the host name.
const POSTFIX_DEFAULTS: &[(&str, &str)] = &[
    ("compatibility_level", "0"),
    ("config_directory", "/etc/postfix"),
    ("daemon_directory", "/usr/lib/postfix/sbin"),
    ("data_directory", "/var/lib/postfix"),
    ("default_process_limit", "100"),
    ("disable_vrfy_command", "no"),
    ("dnsblog_service_name", "dnsblog"),
    ("inet_interfaces", "all"),
    ("inet_protocols", "all"),
    ("line_length_limit", "2048"),
    ("mail_name", "Postfix"),
    ("mail_owner", "postfix"),
    ("maillog_file", ""),
    ("multi_instance_name", ""),
    ("queue_directory", "/var/spool/postfix"),
    ("smtp_tls_connection_reuse", "no"),
    ("smtpd_banner", "$myhostname ESMTP $mail_name"),
    ("smtpd_client_connection_count_limit", "50"),
    ("smtpd_command_filter", ""),
    ("smtpd_discard_ehlo_keyword_address_maps", ""),
    ("smtpd_discard_ehlo_keywords", ""),
    ("smtpd_enforce_tls", "no"),
    (
        "smtpd_forbidden_commands",
        "CONNECT GET POST regexp:{{/^[^A-Z]/ Bogus}}",
    ),
    ("smtpd_helo_required", "no"),
    ("smtpd_reject_footer", ""),
    ("smtpd_reject_footer_maps", ""),
    ("smtpd_service_name", "smtpd"),
    ("smtpd_tls_cert_file", ""),
    ("smtpd_tls_chain_files", ""),
    ("smtpd_tls_dcert_file", ""),
    ("smtpd_tls_eccert_file", ""),
    ("smtpd_tls_key_file", ""),
    ("smtpd_tls_security_level", ""),
    ("smtpd_use_tls", "no"),
    ("soft_bounce", "no"),
    // Set only while postscreen is under stress; the importer reads the normal case.
    ("stress", ""),
    (
        "syslog_name",
        "${multi_instance_name?{$multi_instance_name}:{postfix}}",
    ),
    ("tlsproxy_service_name", "tlsproxy"),
];

/// Why a value could not be expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ExpandProblem {
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
struct Expansion<'a> {
    /// Plain references that stay as written (smtp-screen expands them): name, text.
    keep: &'a [(&'a str, &'a str)],
    /// `${stress?…}` stays as written.
    keep_stress: bool,
    /// A literal `$` is written `$$` (the footer syntax).
    double_dollar: bool,
}

/// An expanded value.
#[derive(Debug, Default)]
struct Expanded {
    text: String,
    /// Some of it came from the input (not only from Postfix's defaults).
    from_input: bool,
    /// It depends on `stress`.
    stress: bool,
    /// References followed so far.
    steps: usize,
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
struct Context<'a> {
    postconf: &'a Postconf,
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
        POSTFIX_DEFAULTS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(Source::Unknown, |(_, v)| Source::Default(v))
    }

    fn expand(&self, text: &str, how: Expansion) -> Result<Expanded, ExpandProblem> {
        let mut out = Expanded::default();
        self.expand_into(text, how, 0, &mut out)?;
        Ok(out)
    }

    fn expand_into(
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

// ---------------------------------------------------------------------------------------
// The translation
// ---------------------------------------------------------------------------------------

/// A setting, or one entry of a list setting, that the operator must look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The Postfix parameter.
    pub parameter: String,
    /// What is meant: `name = value`, or `name: entry` for one entry of a list.
    pub subject: String,
    /// Why it is reported.
    pub reason: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.reason)
    }
}

/// What [`import`] makes of a Postfix configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    /// The smtp-screen configuration file (TOML); it loads with `Config::parse`.
    pub toml: String,
    /// Settings (or list entries) left out, each with the reason.
    pub untranslated: Vec<Finding>,
    /// Settings translated with a difference the operator should know about.
    pub caveats: Vec<Finding>,
    /// The master.cf edits that hand port 25 from postscreen to smtp-screen, and how to
    /// roll back.
    pub master_cf_advice: String,
}

/// The smtp-screen option a value goes to, in the order they are written.
struct Entry {
    section: Section,
    key: &'static str,
    /// The value in TOML syntax.
    value: String,
    /// Comment lines written above it.
    comments: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Smtp,
    Main,
    Postscreen,
    Dnsbl,
    Deep,
}

impl Section {
    fn title(self) -> &'static str {
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

/// The Postfix parameter (with its old name before Postfix 3.6, if any) that feeds an option.
struct Names {
    parameter: &'static str,
    old: Option<&'static str>,
    /// Postfix 3.7's default for it (§2.14 of the reference).
    default: &'static str,
}

const fn names(parameter: &'static str, default: &'static str) -> Names {
    Names {
        parameter,
        old: None,
        default,
    }
}

const fn renamed(parameter: &'static str, old: &'static str, default: &'static str) -> Names {
    Names {
        parameter,
        old: Some(old),
        default,
    }
}

/// When a postscreen setting smtp-screen has no option for is worth reporting.
#[derive(Clone, Copy)]
enum ReportWhen {
    /// Reported when the input sets it.
    Explicit,
    /// Reported when the input sets it, or the smtpd parameter its default names.
    Set,
    /// Reported when its value is not empty.
    NotEmpty,
}

/// postscreen parameters smtp-screen has no option for: name, Postfix 3.7's default, when to
/// report it, and why it is left out.
const UNSUPPORTED: &[(&str, &str, ReportWhen, &str)] = &[
    (
        "postscreen_cache_map",
        "btree:$data_directory/postscreen_cache",
        ReportWhen::Explicit,
        "smtp-screen keeps its temporary allowlist in its own database under state_dir; \
         postscreen's records are not carried over, so each client is screened once more",
    ),
    (
        "postscreen_command_filter",
        "",
        ReportWhen::NotEmpty,
        "smtp-screen does not rewrite client commands",
    ),
    (
        "postscreen_discard_ehlo_keyword_address_maps",
        "$smtpd_discard_ehlo_keyword_address_maps",
        ReportWhen::NotEmpty,
        "smtp-screen's engine always announces the same EHLO keywords",
    ),
    (
        "postscreen_discard_ehlo_keywords",
        "$smtpd_discard_ehlo_keywords",
        ReportWhen::NotEmpty,
        "smtp-screen's engine always announces the same EHLO keywords",
    ),
    (
        "postscreen_expansion_filter",
        "$smtpd_expansion_filter",
        ReportWhen::Set,
        "smtp-screen's footer macros expand to addresses, ports, the host name and the time, \
         which need no filter",
    ),
    (
        "postscreen_reject_footer_maps",
        "$smtpd_reject_footer_maps",
        ReportWhen::NotEmpty,
        "smtp-screen has one footer for all clients (reject_footer), no per-client tables",
    ),
    (
        "postscreen_watchdog_timeout",
        "10s",
        ReportWhen::Set,
        "smtp-screen has no watchdog: each step of a session has its own time limit",
    ),
    (
        "postscreen_starttls_timeout",
        "",
        ReportWhen::Set,
        "the STARTTLS handshake in smtp-screen runs under command_time_limit",
    ),
];

/// Handled through the STARTTLS translation.
const TLS_PARAMETERS: &[&str] = &[
    "postscreen_tls_security_level",
    "postscreen_use_tls",
    "postscreen_enforce_tls",
    "postscreen_tls_cert_file",
    "postscreen_tls_key_file",
];

/// Translates `postconf` (with the `-o` settings of master.cf's postscreen service, when
/// `master_cf` is given) into an smtp-screen configuration. `files` reads `texthash:` reply
/// maps and the `cidr:` tables that are checked.
pub fn import(postconf: &Postconf, master_cf: Option<&MasterCf>, files: &dyn TableFiles) -> Import {
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

struct Translation {
    context_postconf: Postconf,
    entries: Vec<Entry>,
    untranslated: Vec<Finding>,
    caveats: Vec<Finding>,
    /// Parameters set to what smtp-screen does anyway: subject, why.
    matched: Vec<(String, String)>,
    /// postscreen parameters dealt with, so the rest can be reported as unknown.
    handled: BTreeSet<&'static str>,
    reply_map: Vec<(String, String)>,
    /// Where the listen addresses came from.
    listen_origin: String,
}

impl Translation {
    fn new() -> Self {
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

    fn caveat(&mut self, parameter: &str, subject: String, reason: impl Into<String>) {
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
    fn apply_overrides(&mut self, merged: &mut Postconf, master: &MasterCf) {
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
    fn effective(&mut self, names: &Names) -> Effective {
        self.handled.insert(names.parameter);
        if let Some(old) = names.old {
            self.handled.insert(old);
        }
        let get = |name: &str| self.context_postconf.get(name).map(str::to_string);
        let current = get(names.parameter);
        let old = names.old.and_then(|old| get(old).map(|value| (old, value)));
        match (current, old) {
            (Some(value), old) => {
                if let Some((old, old_value)) = old {
                    self.caveat(
                        old,
                        format!("{old} = {}", shorten(&old_value)),
                        format!(
                            "the name before Postfix 3.6; {} is set too and wins",
                            names.parameter
                        ),
                    );
                }
                Effective {
                    parameter: names.parameter,
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
                parameter: names.parameter,
                raw: names.default.to_string(),
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
    fn plain(&mut self, section: Section, names: Names, key: &'static str, kind: Kind) {
        let value = self.effective(&names);
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
                if value.parameter != names.parameter {
                    comments.push(format!(
                        "({} is the name before Postfix 3.6 of {})",
                        value.parameter, names.parameter
                    ));
                }
                self.set(section, key, toml, comments);
            }
            Err(reason) => self.skip(value.parameter, value.subject(), reason),
        }
    }

    fn run(&mut self, master_cf: Option<&MasterCf>, files: &dyn TableFiles) {
        self.smtp_screen_own(master_cf);
        self.main_settings();
        self.postscreen_settings(files);
        self.dnsbl_settings(files);
        self.deep_settings();
        self.unsupported();
        self.unknown_postscreen_parameters();
        self.logging_words();
    }

    fn smtp_screen_own(&mut self, master_cf: Option<&MasterCf>) {
        let listen = self.listen(master_cf);
        let origin = std::mem::take(&mut self.listen_origin);
        self.set(
            Section::Smtp,
            "listen",
            toml_array(listen.iter().map(|a| a.to_string())),
            vec![origin],
        );
        self.set(
            Section::Smtp,
            "handoff",
            toml_string("postfix"),
            vec![
                "Passed clients go to Postfix's smtpd `pass` service, as with postscreen: keep"
                    .into(),
                "the `smtpd pass ... smtpd` line in master.cf.".into(),
            ],
        );
        let socket = self.pass_socket();
        self.set(
            Section::Smtp,
            "postfix_pass_socket",
            toml_string(&socket),
            vec!["$queue_directory/private/$smtpd_service_name".into()],
        );
        let backend = (10025u16..)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .find(|a| !listen.contains(a))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10024)));
        self.set(
            Section::Smtp,
            "backend",
            toml_string(&backend.to_string()),
            vec![
                "Used only with handoff = \"proxy\" (smtp-screen relays to an SMTP server there)."
                    .into(),
            ],
        );
        self.set(
            Section::Smtp,
            "state_dir",
            toml_string(paths::DEFAULT_STATE_DIR),
            vec![
                "The temporary allowlist. postscreen's cache is not carried over: each client is"
                    .into(),
                "screened once more after the switch.".into(),
            ],
        );
        let owner = self.context_value("mail_owner", "postfix");
        self.set(
            Section::Smtp,
            "user",
            toml_string(&owner),
            vec![
                "mail_owner: the owner of Postfix's private/ sockets, which the hand-off uses."
                    .into(),
            ],
        );
        let syslog_name = self.context_value("syslog_name", "postfix");
        self.set(
            Section::Smtp,
            "log_to",
            toml_string("syslog"),
            vec!["postscreen's log lines, word for word, as postscreen logged them.".into()],
        );
        self.set(
            Section::Smtp,
            "syslog_name",
            toml_string(&format!("{syslog_name}/postscreen")),
            vec!["$syslog_name/postscreen keeps log parsers (pflogsumm, fail2ban) working.".into()],
        );
        if let Some(file) = self.context_postconf.get("maillog_file")
            && !file.trim().is_empty()
        {
            let subject = format!("maillog_file = {}", shorten(file));
            self.caveat(
                "maillog_file",
                subject,
                "Postfix logs to this file through postlogd; smtp-screen logs to syslog \
                 (or stderr), so its lines are not in that file",
            );
        }
    }

    /// A parameter's expanded value, or `fallback` when it cannot be expanded.
    fn context_value(&mut self, name: &'static str, fallback: &str) -> String {
        let value = match self.context_postconf.get(name) {
            Some(raw) => Effective {
                parameter: name,
                raw: raw.to_string(),
                explicit: true,
            },
            None => Effective {
                parameter: name,
                raw: format!("${name}"),
                explicit: false,
            },
        };
        match self.expand(&value, Expansion::default()) {
            Some(e) if !e.text.trim().is_empty() => e.text.trim().to_string(),
            _ => fallback.to_string(),
        }
    }

    fn pass_socket(&mut self) -> String {
        let queue = self.context_value("queue_directory", "/var/spool/postfix");
        let service = self.context_value("smtpd_service_name", "smtpd");
        let queue = queue.trim_end_matches('/');
        if queue.is_empty() {
            return paths::DEFAULT_POSTFIX_PASS_SOCKET.to_string();
        }
        format!("{queue}/private/{service}")
    }

    /// The addresses postscreen listened on: its master.cf services, else
    /// `inet_interfaces` on port 25.
    fn listen(&mut self, master_cf: Option<&MasterCf>) -> Vec<SocketAddr> {
        let families = self.families();
        let mut listen = Vec::new();
        let mut origins = Vec::new();
        let services: Vec<MasterService> = master_cf
            .map(|m| m.postscreen().cloned().collect())
            .unwrap_or_default();
        for service in &services {
            match service_endpoint(&service.service) {
                Ok((Some(hosts), port)) => {
                    listen.extend(hosts.into_iter().map(|h| SocketAddr::new(h, port)))
                }
                Ok((None, port)) => listen.extend(
                    self.interfaces(&families)
                        .into_iter()
                        .map(|h| SocketAddr::new(h, port)),
                ),
                Err(reason) => self.skip(
                    "master.cf",
                    format!("line {}: {}", service.first_line, shorten(&service.service)),
                    reason,
                ),
            }
            origins.push(format!(
                "master.cf line {}: {}",
                service.first_line, service.service
            ));
        }
        if services.is_empty() {
            listen = self
                .interfaces(&families)
                .into_iter()
                .map(|h| SocketAddr::new(h, 25))
                .collect();
            let interfaces = self
                .context_postconf
                .get("inet_interfaces")
                .unwrap_or("all (Postfix's default)");
            origins.push(format!(
                "inet_interfaces = {}, port 25",
                shorten(interfaces)
            ));
        }
        let mut seen = BTreeSet::new();
        listen.retain(|a| seen.insert(*a));
        if listen.is_empty() {
            self.caveat(
                "inet_interfaces",
                "listen".into(),
                "no address could be taken from Postfix; smtp-screen listens on every \
                 address, port 25",
            );
            listen = vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 25)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, 25)),
            ];
        }
        self.listen_origin = format!("From {}.", origins.join("; "));
        listen
    }

    /// `inet_protocols`: (IPv4, IPv6).
    fn families(&mut self) -> (bool, bool) {
        let value = self.context_value("inet_protocols", "all");
        let (mut v4, mut v6) = (false, false);
        for word in split_words(&value, true) {
            match word.to_ascii_lowercase().as_str() {
                "all" => (v4, v6) = (true, true),
                "ipv4" => v4 = true,
                "ipv6" => v6 = true,
                _ => {
                    self.caveat(
                        "inet_protocols",
                        format!("inet_protocols = {}", shorten(&value)),
                        format!("unknown protocol {}: IPv4 and IPv6 are used", shorten(word)),
                    );
                    return (true, true);
                }
            }
        }
        if !v4 && !v6 { (true, true) } else { (v4, v6) }
    }

    /// The addresses of `inet_interfaces`.
    fn interfaces(&mut self, &(v4, v6): &(bool, bool)) -> Vec<IpAddr> {
        let value = self.context_value("inet_interfaces", "all");
        let mut out = Vec::new();
        for word in split_words(&value, true) {
            let lower = word.to_ascii_lowercase();
            let addresses: Vec<IpAddr> = match lower.as_str() {
                "all" => vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()],
                "loopback-only" | "localhost" => {
                    vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
                }
                _ => {
                    let bare = word
                        .strip_prefix('[')
                        .and_then(|w| w.strip_suffix(']'))
                        .unwrap_or(word);
                    match bare.parse::<IpAddr>() {
                        Ok(addr) => vec![addr],
                        Err(_) => {
                            self.skip(
                                "inet_interfaces",
                                format!("inet_interfaces: {}", shorten(word)),
                                "host names are not resolved here; write its addresses in \
                                 listen",
                            );
                            continue;
                        }
                    }
                }
            };
            out.extend(
                addresses
                    .into_iter()
                    .filter(|a| if a.is_ipv4() { v4 } else { v6 }),
            );
        }
        out
    }

    fn main_settings(&mut self) {
        if let Some(raw) = self.context_postconf.get("myhostname").map(str::to_string) {
            let value = Effective {
                parameter: "myhostname",
                raw,
                explicit: true,
            };
            if let Some(expanded) = self.expand(&value, Expansion::default()) {
                let host = expanded.text.trim();
                if host.is_empty() {
                    self.skip(
                        "myhostname",
                        value.subject(),
                        "an empty host name; smtp-screen takes the system's, as Postfix does",
                    );
                } else {
                    self.set(
                        Section::Main,
                        "myhostname",
                        toml_string(host),
                        vec![value.origin()],
                    );
                }
            }
        }
        // smtp-screen's own default names itself; Postfix's names Postfix, and smtpd says
        // the same after the hand-off, so the two greetings agree.
        let value = self.effective(&names("smtpd_banner", "$myhostname ESMTP $mail_name"));
        let keep = [("myhostname", "$myhostname")];
        if let Some(expanded) = self.expand(
            &value,
            Expansion {
                keep: &keep,
                ..Expansion::default()
            },
        ) {
            self.set(
                Section::Main,
                "smtpd_banner",
                toml_string(&expanded.text),
                vec![value.described(&expanded.text)],
            );
        }
        self.mynetworks();
        self.plain(
            Section::Main,
            names("soft_bounce", "no"),
            "soft_bounce",
            Kind::YesNo,
        );
        self.plain(
            Section::Main,
            names("line_length_limit", "2048"),
            "line_length_limit",
            Kind::Count(512),
        );
        self.plain(
            Section::Main,
            names("postscreen_helo_required", "$smtpd_helo_required"),
            "helo_required",
            Kind::YesNo,
        );
        self.plain(
            Section::Main,
            names("postscreen_disable_vrfy_command", "$disable_vrfy_command"),
            "disable_vrfy_command",
            Kind::YesNo,
        );
    }

    fn mynetworks(&mut self) {
        let Some(raw) = self.context_postconf.get("mynetworks").map(str::to_string) else {
            let style = self
                .context_postconf
                .get("mynetworks_style")
                .unwrap_or("host")
                .trim()
                .to_string();
            self.caveat(
                "mynetworks",
                format!("mynetworks_style = {}", shorten(&style)),
                "mynetworks is not set, so Postfix derives it from the server's own addresses \
                 (mynetworks_style); smtp-screen's default is 127.0.0.0/8 [::1]/128: write \
                 mynetworks out if permit_mynetworks must match more",
            );
            return;
        };
        let value = Effective {
            parameter: "mynetworks",
            raw,
            explicit: true,
        };
        if let Some(list) = self.address_list(&value) {
            self.set(
                Section::Main,
                "mynetworks",
                toml_string(&list),
                vec![value.origin()],
            );
        }
    }

    /// An address list (mynetworks, allowlist_interfaces): each entry expanded and checked;
    /// entries smtp-screen would refuse are left out and reported.
    fn address_list(&mut self, value: &Effective) -> Option<String> {
        let entries = self.list_entries(value)?;
        let mut kept = Vec::new();
        for entry in entries {
            let err = match Pattern::parse(&entry) {
                Ok(_) | Err(PatternError::HostBits { .. }) => {
                    kept.push(entry);
                    continue;
                }
                Err(err) => err,
            };
            let positive = entry.trim_start_matches('!');
            if positive.starts_with('/') && !entry.starts_with('!') {
                kept.push(entry);
            } else if let Some((kind, _)) = table_spec(positive) {
                if kind == "cidr" || kind == "static" {
                    kept.push(entry);
                } else {
                    self.skip(
                        value.parameter,
                        format!("{}: {}", value.parameter, shorten(&entry)),
                        format!(
                            "smtp-screen reads cidr: and static: tables only; turn this {kind}: \
                             table into a cidr: table"
                        ),
                    );
                }
            } else {
                self.skip(
                    value.parameter,
                    format!("{}: {}", value.parameter, shorten(&entry)),
                    format!("not an address, network or table: {err}"),
                );
            }
        }
        Some(kept.join(" "))
    }

    /// The entries of a list value, each expanded on its own so that one entry with an
    /// unknown reference costs only that entry.
    /// The whole list shares one budget of expanded bytes and references.
    fn list_entries(&mut self, value: &Effective) -> Option<Vec<String>> {
        let mut entries = Vec::new();
        let mut budget = Expanded::default();
        for word in split_words(&value.raw, true) {
            let start = budget.text.len();
            let result = self
                .context()
                .expand_into(word, Expansion::default(), 0, &mut budget);
            match result {
                Ok(()) => entries.extend(
                    split_words(&budget.text[start..], true)
                        .into_iter()
                        .map(str::to_string),
                ),
                Err(problem @ (ExpandProblem::TooLong | ExpandProblem::TooManySteps)) => {
                    self.skip(value.parameter, value.subject(), problem.to_string());
                    return None;
                }
                Err(problem) => {
                    budget.text.truncate(start);
                    self.skip(
                        value.parameter,
                        format!("{}: {}", value.parameter, shorten(word)),
                        problem.to_string(),
                    );
                }
            }
            if entries.len() > access::MAX_LIST_ITEMS {
                self.skip(
                    value.parameter,
                    value.subject(),
                    format!("more than {} entries", access::MAX_LIST_ITEMS),
                );
                return None;
            }
        }
        Some(entries)
    }

    fn postscreen_settings(&mut self, files: &dyn TableFiles) {
        self.access_list(files);
        self.plain(
            Section::Postscreen,
            renamed(
                "postscreen_denylist_action",
                "postscreen_blacklist_action",
                "ignore",
            ),
            "denylist_action",
            Kind::Action,
        );
        let value = self.effective(&renamed(
            "postscreen_allowlist_interfaces",
            "postscreen_whitelist_interfaces",
            "static:all",
        ));
        if value.explicit
            && let Some(list) = self.address_list(&value)
        {
            let mut comments = vec![value.origin()];
            if value.parameter != "postscreen_allowlist_interfaces" {
                comments.push(format!(
                    "({} is the name before Postfix 3.6 of postscreen_allowlist_interfaces)",
                    value.parameter
                ));
            }
            self.set(
                Section::Postscreen,
                "allowlist_interfaces",
                toml_string(&list),
                comments,
            );
        }
        self.greet_banner();
        self.plain(
            Section::Postscreen,
            names("postscreen_greet_wait", "${stress?{2}:{6}}s"),
            "greet_wait",
            Kind::StressTime,
        );
        for (parameter, key, default, kind) in [
            (
                "postscreen_greet_action",
                "greet_action",
                "ignore",
                Kind::Action,
            ),
            ("postscreen_greet_ttl", "greet_ttl", "1d", Kind::Time),
            (
                "postscreen_cache_retention_time",
                "cache_retention_time",
                "7d",
                Kind::Time,
            ),
            (
                "postscreen_cache_cleanup_interval",
                "cache_cleanup_interval",
                "12h",
                Kind::Time,
            ),
            (
                "postscreen_command_count_limit",
                "command_count_limit",
                "20",
                Kind::Count(1),
            ),
            (
                "postscreen_command_time_limit",
                "command_time_limit",
                "${stress?{10}:{300}}s",
                Kind::StressTime,
            ),
            (
                "postscreen_client_connection_count_limit",
                "client_connection_count_limit",
                "$smtpd_client_connection_count_limit",
                Kind::Count(0),
            ),
            (
                "postscreen_pre_queue_limit",
                "pre_queue_limit",
                "$default_process_limit",
                Kind::Count(10),
            ),
            (
                "postscreen_post_queue_limit",
                "post_queue_limit",
                "$default_process_limit",
                Kind::Count(5),
            ),
        ] {
            self.plain(Section::Postscreen, names(parameter, default), key, kind);
        }
        self.upstream_proxy();
        self.plain(
            Section::Postscreen,
            names("postscreen_upstream_proxy_timeout", "5s"),
            "upstream_proxy_timeout",
            Kind::Time,
        );
        self.reject_footer();
    }

    fn access_list(&mut self, files: &dyn TableFiles) {
        let value = self.effective(&names("postscreen_access_list", "permit_mynetworks"));
        if !value.explicit {
            return;
        }
        let Some(entries) = self.list_entries(&value) else {
            return;
        };
        let mut kept = Vec::new();
        let mut entries = entries.into_iter();
        while let Some(entry) = entries.next() {
            let lower = entry.to_ascii_lowercase();
            if ["permit_mynetworks", "permit", "reject", "dunno"].contains(&lower.as_str()) {
                kept.push(entry);
                continue;
            }
            let subject = format!("postscreen_access_list: {}", shorten(&entry));
            match table_spec(&entry) {
                Some(("cidr", path)) => {
                    if let Err(reason) = check_cidr(files, path) {
                        self.caveat("postscreen_access_list", subject, reason);
                    }
                    kept.push(entry);
                }
                Some(("static", _)) => kept.push(entry),
                Some((kind, _)) => self.skip(
                    "postscreen_access_list",
                    subject,
                    format!(
                        "smtp-screen reads cidr: tables only; turn this {kind}: table into a \
                         cidr: table (an address becomes address/32 or address/128)"
                    ),
                ),
                None => {
                    // Postfix ignores the rest of the list after an unknown command
                    // (server_acl.c); smtp-screen would refuse it, so the list ends here.
                    let rest: Vec<String> = entries.by_ref().collect();
                    let mut reason = "not an access list command; Postfix ignores the rest of \
                                      the list from here, so the list ends before it"
                        .to_string();
                    if !rest.is_empty() {
                        reason.push_str(&format!(" (also left out: {})", shorten(&rest.join(" "))));
                    }
                    self.skip("postscreen_access_list", subject, reason);
                }
            }
        }
        self.set(
            Section::Postscreen,
            "access_list",
            toml_string(&kept.join(", ")),
            vec![value.origin()],
        );
    }

    fn greet_banner(&mut self) {
        let value = self.effective(&names("postscreen_greet_banner", "$smtpd_banner"));
        if !value.explicit {
            return;
        }
        let keep = [
            ("myhostname", "$myhostname"),
            ("smtpd_banner", "$smtpd_banner"),
        ];
        let how = Expansion {
            keep: &keep,
            ..Expansion::default()
        };
        if let Some(expanded) = self.expand(&value, how) {
            let mut comments = vec![value.origin()];
            if expanded.text.is_empty() {
                comments.push("Empty: no pregreet test.".into());
            }
            self.set(
                Section::Postscreen,
                "greet_banner",
                toml_string(&expanded.text),
                comments,
            );
        }
    }

    fn upstream_proxy(&mut self) {
        let value = self.effective(&names("postscreen_upstream_proxy_protocol", ""));
        if !value.explicit {
            return;
        }
        let Some(expanded) = self.expand(&value, Expansion::default()) else {
            return;
        };
        match expanded.text.trim() {
            text @ ("" | "haproxy") => self.set(
                Section::Postscreen,
                "upstream_proxy_protocol",
                toml_string(text),
                vec![value.origin()],
            ),
            _ => self.skip(
                value.parameter,
                value.subject(),
                "only haproxy (or nothing) is supported, as in postscreen",
            ),
        }
    }

    fn reject_footer(&mut self) {
        let value = self.effective(&names("postscreen_reject_footer", "$smtpd_reject_footer"));
        let server_name = if self.context_postconf.get("myhostname").is_some() {
            None
        } else {
            Some(("myhostname", "${server_name}"))
        };
        let mut keep = vec![
            ("client_address", "${client_address}"),
            ("client_port", "${client_port}"),
            ("server_name", "${server_name}"),
            ("localtime", "${localtime}"),
        ];
        keep.extend(server_name);
        let how = Expansion {
            keep: &keep,
            double_dollar: true,
            ..Expansion::default()
        };
        let Some(expanded) = self.expand(&value, how) else {
            return;
        };
        if !expanded.from_input {
            return;
        }
        match ReplyFooter::parse(&expanded.text) {
            Ok(_) => self.set(
                Section::Postscreen,
                "reject_footer",
                toml_string(&expanded.text),
                vec![value.described(&expanded.text)],
            ),
            Err(err) => self.skip(value.parameter, value.subject(), err.to_string()),
        }
    }

    fn dnsbl_settings(&mut self, files: &dyn TableFiles) {
        self.dnsbl_sites();
        for (names, key, kind) in [
            (
                names("postscreen_dnsbl_threshold", "1"),
                "dnsbl_threshold",
                Kind::Score,
            ),
            (
                names("postscreen_dnsbl_action", "ignore"),
                "dnsbl_action",
                Kind::Action,
            ),
            (
                renamed(
                    "postscreen_dnsbl_allowlist_threshold",
                    "postscreen_dnsbl_whitelist_threshold",
                    "0",
                ),
                "dnsbl_allowlist_threshold",
                Kind::Score,
            ),
            (
                names("postscreen_dnsbl_timeout", "10s"),
                "dnsbl_timeout",
                Kind::Time,
            ),
            (
                names("postscreen_dnsbl_min_ttl", "60s"),
                "dnsbl_min_ttl",
                Kind::Time,
            ),
            (
                renamed("postscreen_dnsbl_max_ttl", "postscreen_dnsbl_ttl", "1h"),
                "dnsbl_max_ttl",
                Kind::Time,
            ),
        ] {
            self.plain(Section::Dnsbl, names, key, kind);
        }
        self.check_ttl_order();
        self.reply_map(files);
    }

    fn dnsbl_sites(&mut self) {
        let value = self.effective(&names("postscreen_dnsbl_sites", ""));
        if !value.explicit {
            return;
        }
        let Some(entries) = self.list_entries(&value) else {
            return;
        };
        let mut kept: Vec<String> = Vec::new();
        for entry in entries {
            let subject = format!("postscreen_dnsbl_sites: {}", shorten(&entry));
            if kept.len() == dnsbl::MAX_SITES {
                self.skip(
                    "postscreen_dnsbl_sites",
                    subject,
                    format!("smtp-screen takes at most {} entries", dnsbl::MAX_SITES),
                );
                continue;
            }
            match dnsbl::DnsblSite::parse(&entry) {
                Ok(_) => kept.push(entry),
                Err(err) => self.skip("postscreen_dnsbl_sites", subject, err.to_string()),
            }
        }
        self.set(
            Section::Dnsbl,
            "dnsbl_sites",
            toml_string(&kept.join(", ")),
            vec![value.origin()],
        );
    }

    /// smtp-screen refuses dnsbl_min_ttl > dnsbl_max_ttl; so does postscreen's clamp make
    /// no sense then.
    fn check_ttl_order(&mut self) {
        let time = |this: &Self, key: &str, default: u64| {
            this.get_entry(key)
                .and_then(|e| duration::parse(e.value.trim_matches('"')).ok())
                .unwrap_or(Duration::from_secs(default))
        };
        let min = time(self, "dnsbl_min_ttl", 60);
        let max = time(self, "dnsbl_max_ttl", 3_600);
        if min > max {
            let key = if self.get_entry("dnsbl_min_ttl").is_some() {
                "dnsbl_min_ttl"
            } else {
                "dnsbl_max_ttl"
            };
            let entry = self
                .get_entry(key)
                .map(|e| e.value.clone())
                .unwrap_or_default();
            self.entries.retain(|e| e.key != key);
            let parameter = if key == "dnsbl_min_ttl" {
                "postscreen_dnsbl_min_ttl"
            } else {
                "postscreen_dnsbl_max_ttl"
            };
            self.skip(
                parameter,
                format!("{parameter} = {}", entry.trim_matches('"')),
                format!(
                    "postscreen_dnsbl_min_ttl ({}) is longer than postscreen_dnsbl_max_ttl ({}), \
                     which smtp-screen refuses",
                    duration::Display(min),
                    duration::Display(max)
                ),
            );
        }
    }

    fn reply_map(&mut self, files: &dyn TableFiles) {
        let value = self.effective(&names("postscreen_dnsbl_reply_map", ""));
        if !value.explicit {
            return;
        }
        let Some(entries) = self.list_entries(&value) else {
            return;
        };
        let mut map: BTreeMap<String, (String, String)> = BTreeMap::new();
        for spec in entries {
            let subject = format!("postscreen_dnsbl_reply_map: {}", shorten(&spec));
            let Some((kind, path)) = table_spec(&spec) else {
                self.skip(
                    "postscreen_dnsbl_reply_map",
                    subject,
                    "not a type:name table",
                );
                continue;
            };
            if kind != "texthash" {
                let mut reason = format!(
                    "{kind}: tables are not read by the importer; write dnsbl_reply_map as a TOML \
                     table (list domain = name shown)"
                );
                if matches!(kind, "hash" | "btree" | "lmdb" | "cdb" | "dbm" | "sdbm") {
                    reason.push_str(&format!(
                        ", or import its postmap source file as texthash:{path}"
                    ));
                }
                self.skip("postscreen_dnsbl_reply_map", subject, reason);
                continue;
            }
            let table = files
                .read(path)
                .map_err(|e| format!("cannot read it here: {e}"))
                .and_then(|text| parse_texthash(path, &text).map_err(|e| e.to_string()));
            let table = match table {
                Ok(table) => table,
                Err(reason) => {
                    self.skip("postscreen_dnsbl_reply_map", subject, reason);
                    continue;
                }
            };
            for entry in table {
                let subject = format!("{path}, line {}: {}", entry.line, shorten(&entry.key));
                let single =
                    std::collections::HashMap::from([(entry.key.clone(), entry.value.clone())]);
                if let Err(err) = dnsbl::ReplyMap::new(single) {
                    self.skip("postscreen_dnsbl_reply_map", subject, err.to_string());
                    continue;
                }
                let folded = entry.key.to_ascii_lowercase();
                if map.contains_key(&folded) {
                    self.caveat(
                        "postscreen_dnsbl_reply_map",
                        subject,
                        "a duplicate: the first entry wins, as in Postfix",
                    );
                    continue;
                }
                if map.len() == dnsbl::MAX_REPLY_MAP {
                    self.skip(
                        "postscreen_dnsbl_reply_map",
                        subject,
                        format!("more than {} entries", dnsbl::MAX_REPLY_MAP),
                    );
                    continue;
                }
                map.insert(folded, (entry.key, entry.value));
            }
        }
        self.reply_map = map.into_values().collect();
    }

    fn deep_settings(&mut self) {
        for (parameter, key, default, kind) in [
            (
                "postscreen_pipelining_enable",
                "pipelining_enable",
                "no",
                Kind::YesNo,
            ),
            (
                "postscreen_pipelining_action",
                "pipelining_action",
                "enforce",
                Kind::Action,
            ),
            (
                "postscreen_pipelining_ttl",
                "pipelining_ttl",
                "30d",
                Kind::Time,
            ),
            (
                "postscreen_non_smtp_command_enable",
                "non_smtp_command_enable",
                "no",
                Kind::YesNo,
            ),
            (
                "postscreen_non_smtp_command_action",
                "non_smtp_command_action",
                "drop",
                Kind::Action,
            ),
            (
                "postscreen_non_smtp_command_ttl",
                "non_smtp_command_ttl",
                "30d",
                Kind::Time,
            ),
        ] {
            self.plain(Section::Deep, names(parameter, default), key, kind);
        }
        self.forbidden_commands();
        for (parameter, key, default, kind) in [
            (
                "postscreen_bare_newline_enable",
                "bare_newline_enable",
                "no",
                Kind::YesNo,
            ),
            (
                "postscreen_bare_newline_action",
                "bare_newline_action",
                "ignore",
                Kind::Action,
            ),
            (
                "postscreen_bare_newline_ttl",
                "bare_newline_ttl",
                "30d",
                Kind::Time,
            ),
        ] {
            self.plain(Section::Deep, names(parameter, default), key, kind);
        }
        self.starttls();
    }

    fn forbidden_commands(&mut self) {
        let value = self.effective(&names(
            "postscreen_forbidden_commands",
            "$smtpd_forbidden_commands",
        ));
        let Some(expanded) = self.expand(&value, Expansion::default()) else {
            return;
        };
        if !expanded.from_input {
            return;
        }
        let mut kept = Vec::new();
        for entry in split_words(&expanded.text, true) {
            if kept.len() == crate::smtpd::MAX_FORBIDDEN_COMMANDS {
                self.skip(
                    value.parameter,
                    format!("{}: {}", value.parameter, shorten(entry)),
                    format!(
                        "smtp-screen takes at most {} entries",
                        crate::smtpd::MAX_FORBIDDEN_COMMANDS
                    ),
                );
                continue;
            }
            match ForbiddenCommand::parse(entry) {
                Ok(_) => kept.push(entry.to_string()),
                Err(err) => self.skip(
                    value.parameter,
                    format!("{}: {}", value.parameter, shorten(entry)),
                    err.to_string(),
                ),
            }
        }
        self.set(
            Section::Deep,
            "forbidden_commands",
            toml_array(kept),
            vec![value.described(&expanded.text)],
        );
    }

    /// postscreen offers STARTTLS when its TLS security level is `may` or `encrypt`; then
    /// smtp-screen gets the same certificate and key.
    fn starttls(&mut self) {
        for &name in TLS_PARAMETERS {
            self.handled.insert(name);
        }
        let level_value = self.effective(&names(
            "postscreen_tls_security_level",
            "$smtpd_tls_security_level",
        ));
        let Some(level) = self.expand(&level_value, Expansion::default()) else {
            return;
        };
        let mut level_text = level.text.trim().to_ascii_lowercase();
        let mut level_origin = level_value.described(&level.text);
        if level_text.is_empty() {
            // The settings the security level replaced.
            let enforce = self.effective(&names("postscreen_enforce_tls", "$smtpd_enforce_tls"));
            let enforce_on = self
                .expand(&enforce, Expansion::default())
                .is_some_and(|e| e.text.trim().eq_ignore_ascii_case("yes"));
            let use_tls = self.effective(&names("postscreen_use_tls", "$smtpd_use_tls"));
            let use_on = self
                .expand(&use_tls, Expansion::default())
                .is_some_and(|e| e.text.trim().eq_ignore_ascii_case("yes"));
            if enforce_on {
                level_text = "encrypt".into();
                level_origin = enforce.described("yes");
            } else if use_on {
                level_text = "may".into();
                level_origin = use_tls.described("yes");
            }
        }
        let cert = self.tls_file("postscreen_tls_cert_file", "$smtpd_tls_cert_file");
        let key = self.tls_file("postscreen_tls_key_file", "$smtpd_tls_key_file");
        match level_text.as_str() {
            "" | "none" => {
                if let Some((cert, _)) = &cert {
                    self.matched.push((
                        cert.subject(),
                        "postscreen offers no STARTTLS (no TLS security level), so \
                         tls_cert_file stays empty"
                            .into(),
                    ));
                }
                return;
            }
            "may" => {}
            "encrypt" => self.skip(
                level_value.parameter,
                level_origin.clone(),
                "smtp-screen offers STARTTLS but does not require it (postscreen replies 530 \
                 5.7.0 Must issue a STARTTLS command first)",
            ),
            other => {
                self.skip(
                    level_value.parameter,
                    level_origin.clone(),
                    format!("{other}: not a TLS security level for a server (none, may, encrypt)"),
                );
                return;
            }
        }
        for name in [
            "smtpd_tls_eccert_file",
            "smtpd_tls_dcert_file",
            "smtpd_tls_chain_files",
        ] {
            if let Some(value) = self.context_postconf.get(name)
                && !value.trim().is_empty()
            {
                let subject = format!("{name} = {}", shorten(value));
                let reason = if name == "smtpd_tls_chain_files" && cert.is_none() {
                    "smtp-screen takes one certificate file (with its chain) and one key file: \
                     set tls_cert_file and tls_key_file"
                } else {
                    "smtp-screen offers one certificate: the one of tls_cert_file"
                };
                if name == "smtpd_tls_chain_files" && cert.is_none() {
                    self.skip(name, subject, reason);
                } else {
                    self.caveat(name, subject, reason);
                }
            }
        }
        match (cert, key) {
            (Some((cert_value, cert)), Some((key_value, key))) => {
                self.set(
                    Section::Deep,
                    "tls_cert_file",
                    toml_string(&cert),
                    vec![level_origin.clone(), cert_value.origin()],
                );
                self.set(
                    Section::Deep,
                    "tls_key_file",
                    toml_string(&key),
                    vec![key_value.origin()],
                );
            }
            (Some((value, _)), None) | (None, Some((value, _))) => self.skip(
                value.parameter,
                value.subject(),
                "a certificate needs its key and a key its certificate; smtp-screen offers no \
                 STARTTLS without both",
            ),
            (None, None) => {
                if !self
                    .untranslated
                    .iter()
                    .any(|f| f.parameter == "smtpd_tls_chain_files")
                {
                    self.caveat(
                        level_value.parameter,
                        level_origin,
                        "postscreen offers STARTTLS but no certificate is set \
                         (smtpd_tls_cert_file); smtp-screen offers no STARTTLS",
                    );
                }
            }
        }
    }

    /// A certificate or key file: the 3.12 postscreen_tls_* name first, else smtpd's.
    fn tls_file(
        &mut self,
        parameter: &'static str,
        default: &'static str,
    ) -> Option<(Effective, String)> {
        let value = self.effective(&names(parameter, default));
        let expanded = self.expand(&value, Expansion::default())?;
        let path = expanded.text.trim().to_string();
        if path.is_empty() {
            return None;
        }
        let value = if value.explicit {
            value
        } else {
            let smtpd = &default[1..];
            Effective {
                parameter: if smtpd == "smtpd_tls_cert_file" {
                    "smtpd_tls_cert_file"
                } else {
                    "smtpd_tls_key_file"
                },
                raw: self.context_postconf.get(smtpd).unwrap_or("").to_string(),
                explicit: true,
            }
        };
        Some((value, path))
    }

    /// postscreen parameters smtp-screen has no option for.
    fn unsupported(&mut self) {
        for &(parameter, default, when, reason) in UNSUPPORTED {
            let value = self.effective(&names(parameter, default));
            let expanded = match self.context().expand(&value.raw, Expansion::default()) {
                Ok(mut expanded) => {
                    expanded.from_input |= value.explicit;
                    expanded
                }
                Err(_) if value.explicit => Expanded {
                    text: value.raw.clone(),
                    from_input: true,
                    ..Expanded::default()
                },
                Err(_) => continue,
            };
            let text = expanded.text.trim();
            let report = match when {
                ReportWhen::Explicit => value.explicit,
                ReportWhen::Set => expanded.from_input,
                ReportWhen::NotEmpty => !text.is_empty(),
            };
            if report {
                let subject = if value.explicit {
                    value.subject()
                } else {
                    format!("{} = {} (= {})", parameter, value.raw, shorten(text))
                };
                self.skip(parameter, subject, reason);
            } else if value.explicit {
                self.matched.push((
                    value.subject(),
                    "what smtp-screen does; there is no option for it".into(),
                ));
            }
        }
    }

    fn unknown_postscreen_parameters(&mut self) {
        let unknown: Vec<(String, String)> = self
            .context_postconf
            .parameters
            .iter()
            .filter(|(name, _)| name.starts_with("postscreen_"))
            .filter(|(name, _)| !self.handled.contains(name.as_str()))
            .filter(|(name, _)| !UNSUPPORTED.iter().any(|(n, ..)| n == name))
            .map(|(name, p)| (name.clone(), p.value.clone()))
            .collect();
        for (name, value) in unknown {
            let reason = if name.starts_with("postscreen_tls_") {
                "smtp-screen's STARTTLS uses rustls's protocol versions and ciphers (TLS 1.2 and \
                 1.3); only the certificate and key are set"
            } else {
                "not a postscreen parameter smtp-screen knows"
            };
            self.skip(&name, format!("{name} = {}", shorten(&value)), reason);
        }
    }

    /// postscreen's log words depend on `respectful_logging`; smtp-screen's do not.
    fn logging_words(&mut self) {
        let respectful = match self.context_postconf.get("respectful_logging") {
            Some(value) => value.trim().eq_ignore_ascii_case("yes"),
            None => match self.context_postconf.get("compatibility_level") {
                Some(level) => compatibility_at_least(level, (3, 6)).unwrap_or(true),
                None => false,
            },
        };
        if !respectful {
            let subject = match self.context_postconf.get("respectful_logging") {
                Some(value) => format!("respectful_logging = {}", shorten(value)),
                None => format!(
                    "compatibility_level = {}",
                    self.context_postconf
                        .get("compatibility_level")
                        .unwrap_or("0 (Postfix's default)")
                ),
            };
            self.caveat(
                "respectful_logging",
                subject,
                "postscreen logs WHITELISTED and BLACKLISTED here; smtp-screen logs \
                 ALLOWLISTED and DENYLISTED (as postscreen with respectful_logging = yes): \
                 update log parsers that look for the old words",
            );
        }
    }

    /// The configuration file.
    fn render(&self) -> String {
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

    /// What to change in master.cf, and how to go back.
    fn master_cf_advice(&self, master_cf: Option<&MasterCf>) -> String {
        let mut out = String::new();
        let pass_name = Context {
            postconf: &self.context_postconf,
        }
        .expand("$smtpd_service_name", Expansion::default())
        .map(|e| e.text)
        .unwrap_or_else(|_| "smtpd".into());
        let Some(master) = master_cf else {
            out.push_str(&format!(
                "master.cf: smtp-screen takes port 25 from postscreen. In master.cf:\n\
                 \x20 1. comment out the postscreen line:\n\
                 \x20      #smtp      inet  n       -       y       -       1       postscreen\n\
                 \x20 2. keep the smtpd pass service; smtp-screen hands passed clients to it:\n\
                 \x20      {pass_name:<9} pass  -       -       y       -       -       smtpd\n\
                 \x20 3. the dnsblog and tlsproxy services served postscreen only; they may be\n\
                 \x20    commented out (keep tlsproxy if smtp_tls_connection_reuse = yes).\n\
                 Check the new configuration first: smtp-screen check-config FILE. Then run\n\
                 `postfix reload` and start smtp-screen.\n\
                 (Run with --master-cf /etc/postfix/master.cf to have the exact lines named.)\n"
            ));
            out.push_str(ROLLBACK_GENERIC);
            return out;
        };
        let name = master.input();
        let postscreen: Vec<&MasterService> = master.postscreen().collect();
        let direct: Vec<&MasterService> = master
            .services
            .iter()
            .filter(|s| {
                s.kind == "inet"
                    && command_name(&s.command) == "smtpd"
                    && matches!(service_endpoint(&s.service), Ok((_, 25)))
            })
            .collect();
        let pass = master
            .services
            .iter()
            .find(|s| s.kind == "pass" && s.service == pass_name);
        let helpers: Vec<&MasterService> = master
            .services
            .iter()
            .filter(|s| {
                s.kind == "unix" && matches!(command_name(&s.command), "dnsblog" | "tlsproxy")
            })
            .collect();
        out.push_str(&format!(
            "{name}: smtp-screen takes over from postscreen. Make these edits:\n"
        ));
        let mut step = 1;
        let mut commented = Vec::new();
        if !postscreen.is_empty() {
            out.push_str(&format!(
                "  {step}. Comment out postscreen, so that its port is free for smtp-screen:\n"
            ));
            for s in &postscreen {
                out.push_str(&service_lines(s));
                commented.push(s);
            }
            if postscreen.iter().any(|s| !s.overrides().is_empty()) {
                out.push_str(
                    "     (its -o settings are translated into the smtp-screen configuration)\n",
                );
            }
            step += 1;
        } else if !direct.is_empty() {
            out.push_str(&format!(
                "  {step}. No postscreen service: smtpd itself answers on port 25. Comment out:\n"
            ));
            for s in &direct {
                out.push_str(&service_lines(s));
                commented.push(s);
            }
            step += 1;
        } else {
            out.push_str(&format!(
                "  {step}. No postscreen service and no smtpd on port 25 found: make sure nothing \
                 else listens on smtp-screen's addresses.\n"
            ));
            step += 1;
        }
        match pass {
            Some(s) => {
                out.push_str(&format!(
                    "  {step}. Keep the {pass_name} pass service; smtp-screen hands passed \
                     clients to it:\n"
                ));
                out.push_str(&service_lines(s));
            }
            None => {
                out.push_str(&format!(
                    "  {step}. Add the pass service smtp-screen hands passed clients to:\n\
                     \x20      {pass_name:<9} pass  -       -       y       -       -       smtpd\n"
                ));
                if let Some(s) = direct.first()
                    && !s.args.is_empty()
                {
                    out.push_str(&format!(
                        "     with the options of line {}: {}\n",
                        s.first_line,
                        s.args.join(" ")
                    ));
                }
            }
        }
        step += 1;
        if !helpers.is_empty() {
            out.push_str(&format!(
                "  {step}. No longer needed (they served postscreen); comment out or keep:\n"
            ));
            for s in &helpers {
                out.push_str(&service_lines(s));
                if command_name(&s.command) == "tlsproxy" {
                    let reuse = self
                        .context_postconf
                        .get("smtp_tls_connection_reuse")
                        .is_some_and(|v| v.trim().eq_ignore_ascii_case("yes"));
                    if reuse {
                        out.push_str(
                            "     keep tlsproxy: smtp_tls_connection_reuse = yes makes the SMTP \
                             client use it.\n",
                        );
                    }
                }
            }
        }
        out.push_str(
            "Check the new configuration first: smtp-screen check-config FILE. Then run \
             `postfix reload` (postscreen's port is free once it returns) and start \
             smtp-screen (smtp-screen run --config FILE, or its systemd unit).\n",
        );
        out.push_str("To roll back: stop smtp-screen, remove the `#` from ");
        let mut lines: Vec<String> = commented.iter().map(|s| line_range(s)).collect();
        lines.extend(
            helpers
                .iter()
                .map(|s| format!("{} (if commented out)", line_range(s))),
        );
        if lines.is_empty() {
            out.push_str("the lines you commented out");
        } else {
            out.push_str(&format!("{name} {}", lines.join(", ")));
        }
        out.push_str(", and run `postfix reload`; postscreen answers on port 25 again.\n");
        out
    }
}

const ROLLBACK_GENERIC: &str = "To roll back: stop smtp-screen, remove the `#` from the \
                                postscreen line (and dnsblog, tlsproxy), and run `postfix \
                                reload`; postscreen answers on port 25 again.\n";

fn service_lines(service: &MasterService) -> String {
    format!(
        "       {}: {}\n",
        line_range(service),
        shorten(&service.text)
    )
}

fn line_range(service: &MasterService) -> String {
    if service.first_line == service.last_line {
        format!("line {}", service.first_line)
    } else {
        format!("lines {}-{}", service.first_line, service.last_line)
    }
}

fn write_finding(out: &mut String, finding: &Finding) {
    write_wrapped(out, "#   ", &finding.subject);
    write_wrapped(out, "#       ", &finding.reason);
}

/// The longest comment line worth wrapping for.
const COMMENT_WIDTH: usize = 96;

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

/// Whether a `compatibility_level` value is at least `want` (`None`: not a level).
fn compatibility_at_least(level: &str, want: (u32, u32)) -> Option<bool> {
    let mut parts = level.trim().split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = match parts.next() {
        Some(minor) => minor.parse().ok()?,
        None => 0,
    };
    Some((major, minor) >= want)
}

/// `type:name` → (type, name), for a word that names a table.
fn table_spec(word: &str) -> Option<(&str, &str)> {
    let (kind, name) = word.split_once(':')?;
    (!kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then_some((kind, name))
}

/// Checks that smtp-screen can read a CIDR table; the reason when it cannot.
fn check_cidr(files: &dyn TableFiles, path: &str) -> Result<(), String> {
    let text = files
        .read(path)
        .map_err(|e| format!("kept, but it could not be checked here: {e}"))?;
    CidrTable::parse(path, &text)
        .map(|_| ())
        .map_err(|e| format!("kept, but smtp-screen will refuse it as it is: {e}"))
}

/// `smtp`, `2525`, `127.0.0.1:10025`, `[::1]:25` → (addresses, port).
fn service_endpoint(service: &str) -> Result<(Option<Vec<IpAddr>>, u16), String> {
    let (host, port) = if let Some(rest) = service.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{}: a '[' without ']'", shorten(service)))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{}: no port after the address", shorten(service)))?;
        (Some(host), port)
    } else {
        match service.rsplit_once(':') {
            Some((host, port)) => (Some(host), port),
            None => (None, service),
        }
    };
    let port = match port {
        "smtp" => 25,
        "submission" => 587,
        "submissions" | "smtps" => 465,
        digits => digits
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| {
                format!(
                    "{}: unknown port {}; write it as a number in listen",
                    shorten(service),
                    shorten(digits)
                )
            })?,
    };
    let hosts = match host {
        None => None,
        Some("localhost") => Some(vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]),
        Some(host) => Some(vec![host.parse::<IpAddr>().map_err(|_| {
            format!(
                "{}: {} is not an address (host names are not resolved here; write the \
                 address in listen)",
                shorten(service),
                shorten(host)
            )
        })?]),
    };
    Ok((hosts, port))
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

/// A TOML basic string.
fn toml_string(text: &str) -> String {
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

fn toml_array(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| toml_string(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// Text for a comment: one line, no control characters.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// At most [`SHOWN_VALUE_CHARS`] characters of a value, for messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(SHOWN_VALUE_CHARS) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use super::*;
    use crate::{
        cidr_table::CidrError, config::Config, handoff::Handoff, maillog::LogTarget,
        screen::endpoint::UpstreamProxyProtocol, test_state::TestAction,
    };

    /// Table files held in memory.
    #[derive(Default)]
    struct Files(HashMap<String, String>);

    impl Files {
        fn with(entries: &[(&str, &str)]) -> Self {
            Self(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        }
    }

    impl TableFiles for Files {
        fn read(&self, path: &str) -> Result<String, CidrError> {
            self.0.get(path).cloned().ok_or_else(|| CidrError::Read {
                path: path.into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        }
    }

    fn postconf(text: &str) -> Postconf {
        Postconf::parse("postconf -n", text.as_bytes()).unwrap()
    }

    /// Imports and checks that the result loads.
    fn import_with(text: &str, master: Option<&str>, files: &Files) -> (Import, Config) {
        let master = master.map(|m| MasterCf::parse("master.cf", m.as_bytes()).unwrap());
        let import = import(&postconf(text), master.as_ref(), files);
        let config = Config::parse(Path::new("imported.toml"), &import.toml)
            .unwrap_or_else(|e| panic!("{e}\n{}", import.toml));
        (import, config)
    }

    fn import_text(text: &str) -> (Import, Config) {
        import_with(text, None, &Files::default())
    }

    fn skipped<'a>(import: &'a Import, parameter: &str) -> Vec<&'a Finding> {
        import
            .untranslated
            .iter()
            .filter(|f| f.parameter == parameter)
            .collect()
    }

    fn caveat<'a>(import: &'a Import, parameter: &str) -> Vec<&'a Finding> {
        import
            .caveats
            .iter()
            .filter(|f| f.parameter == parameter)
            .collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    // --- the postconf -n parser ---

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

    // --- expansion ---

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

    // --- master.cf ---

    const DEBIAN_MASTER_CF: &str = "\
# Postfix master process configuration file.
# ==========================================================================
# service type  private unpriv  chroot  wakeup  maxproc command + args
# ==========================================================================
#smtp      inet  n       -       y       -       -       smtpd
smtp      inet  n       -       y       -       1       postscreen
smtpd     pass  -       -       y       -       -       smtpd
dnsblog   unix  -       -       y       -       0       dnsblog
tlsproxy  unix  -       -       y       -       0       tlsproxy
submission inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
pickup    unix  n       -       y       60      1       pickup
";

    #[test]
    fn parses_master_cf_services() {
        let m = MasterCf::parse("master.cf", DEBIAN_MASTER_CF.as_bytes()).unwrap();
        assert_eq!(m.services().len(), 6);
        let smtp = &m.services()[0];
        assert_eq!(
            (smtp.first_line, smtp.service.as_str(), smtp.kind.as_str()),
            (6, "smtp", "inet")
        );
        assert_eq!(smtp.command, "postscreen");
        assert_eq!(smtp.flags[4], "1");
        let submission = &m.services()[4];
        assert_eq!((submission.first_line, submission.last_line), (10, 12));
        assert_eq!(
            submission.overrides(),
            [
                ("syslog_name".to_string(), "postfix/submission".to_string()),
                ("smtpd_tls_security_level".into(), "encrypt".into())
            ]
        );
        assert_eq!(m.postscreen().count(), 1);
    }

    #[test]
    fn reads_every_override_form() {
        let m = MasterCf::parse(
            "m",
            b"smtp inet n - y - 1 /usr/lib/postfix/sbin/postscreen -o a=1 -ob=2\n\
              \x20 -o { c = three words } -v -o\n",
        )
        .unwrap();
        let service = &m.services()[0];
        assert_eq!(command_name(&service.command), "postscreen");
        assert_eq!(
            service.overrides(),
            [
                ("a".to_string(), "1".to_string()),
                ("b".into(), "2".into()),
                ("c".into(), "three words".into())
            ]
        );
    }

    #[test]
    fn rejects_malformed_master_cf() {
        let err = MasterCf::parse("master.cf", b"# c\nsmtp inet n - y -\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "master.cf, line 2: a service needs 8 fields (service type private unpriv chroot \
             wakeup maxproc command), found 6"
        );
        let err = MasterCf::parse("master.cf", b"  -o a=b\n").unwrap_err();
        assert!(matches!(
            err,
            ImportError::Line {
                line: 1,
                problem: LineProblem::OrphanContinuation,
                ..
            }
        ));
        assert!(MasterCf::parse("m", b"smtp inet n - y - 1 \xc3\x28\n").is_err());
        assert!(matches!(
            MasterCf::parse("m", &vec![b' '; MAX_INPUT_BYTES + 1]),
            Err(ImportError::TooLarge { .. })
        ));
        let many: String = (0..=MAX_ENTRIES)
            .map(|i| format!("s{i} unix - - y - - x\n"))
            .collect();
        assert!(matches!(
            MasterCf::parse("m", many.as_bytes()),
            Err(ImportError::TooManyEntries { .. })
        ));
        assert!(MasterCf::parse("m", b"").unwrap().services().is_empty());
    }

    #[test]
    fn service_endpoints() {
        let v4 = |a: [u8; 4]| IpAddr::from(a);
        assert_eq!(service_endpoint("smtp"), Ok((None, 25)));
        assert_eq!(service_endpoint("2525"), Ok((None, 2525)));
        assert_eq!(
            service_endpoint("127.0.0.1:10025"),
            Ok((Some(vec![v4([127, 0, 0, 1])]), 10025))
        );
        assert_eq!(
            service_endpoint("[::1]:smtp"),
            Ok((Some(vec![IpAddr::from(Ipv6Addr::LOCALHOST)]), 25))
        );
        assert_eq!(
            service_endpoint("localhost:25").unwrap().0.unwrap().len(),
            2
        );
        for bad in ["mx.example:25", "0", "70000", "[::1", "[::1]", "imaps", ""] {
            assert!(service_endpoint(bad).is_err(), "{bad}");
        }
    }

    // --- texthash ---

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

    // --- translation ---

    /// Every postscreen parameter of Postfix 3.7 (reference §2.14) set to something other
    /// than its default.
    const EVERY_PARAMETER: &str = "\
myhostname = mx.example.test
postscreen_access_list = permit_mynetworks, cidr:/etc/postfix/postscreen_access.cidr
postscreen_allowlist_interfaces = !198.51.100.2 static:all
postscreen_bare_newline_action = enforce
postscreen_bare_newline_enable = yes
postscreen_bare_newline_ttl = 20d
postscreen_cache_cleanup_interval = 6h
postscreen_cache_map = proxy:btree:$data_directory/postscreen_cache
postscreen_cache_retention_time = 3d
postscreen_client_connection_count_limit = 7
postscreen_command_count_limit = 9
postscreen_command_filter = pcre:/etc/postfix/command_filter
postscreen_command_time_limit = ${stress?{4}:{40}}s
postscreen_denylist_action = drop
postscreen_disable_vrfy_command = yes
postscreen_discard_ehlo_keyword_address_maps = cidr:/etc/postfix/esmtp_access
postscreen_discard_ehlo_keywords = silent-discard, dsn
postscreen_dnsbl_action = enforce
postscreen_dnsbl_allowlist_threshold = -2
postscreen_dnsbl_max_ttl = 2h
postscreen_dnsbl_min_ttl = 2m
postscreen_dnsbl_reply_map = texthash:/etc/postfix/dnsbl_reply
postscreen_dnsbl_sites = zen.example=127.0.0.[2..11]*3, bl.example*2 wl.example=127.0.[0..255].[1..3]*-3
postscreen_dnsbl_threshold = 3
postscreen_dnsbl_timeout = 7s
postscreen_enforce_tls = no
postscreen_expansion_filter = abcdefghijklmnopqrstuvwxyz
postscreen_forbidden_commands = CONNECT GET POST PUT regexp:{{/^[^A-Z]/ Bogus}}
postscreen_greet_action = enforce
postscreen_greet_banner = $myhostname pregreet check
postscreen_greet_ttl = 2d
postscreen_greet_wait = ${stress?{1}:{3}}s
postscreen_helo_required = yes
postscreen_non_smtp_command_action = enforce
postscreen_non_smtp_command_enable = yes
postscreen_non_smtp_command_ttl = 10d
postscreen_pipelining_action = drop
postscreen_pipelining_enable = yes
postscreen_pipelining_ttl = 15d
postscreen_post_queue_limit = 30
postscreen_pre_queue_limit = 40
postscreen_reject_footer = \\c For help, call 555-0101 about $client_address at $myhostname
postscreen_reject_footer_maps = cidr:/etc/postfix/footers
postscreen_tls_security_level = may
postscreen_upstream_proxy_protocol = haproxy
postscreen_upstream_proxy_timeout = 8s
postscreen_use_tls = yes
postscreen_watchdog_timeout = 20s
smtpd_tls_cert_file = /etc/ssl/certs/mx.pem
smtpd_tls_key_file = /etc/ssl/private/mx.key
";

    #[test]
    fn translates_every_postscreen_parameter() {
        let files = Files::with(&[
            (
                "/etc/postfix/postscreen_access.cidr",
                "192.0.2.0/24 reject\n",
            ),
            (
                "/etc/postfix/dnsbl_reply",
                "zen.example   zen.spamhaus.example\n",
            ),
        ]);
        let (import, c) = import_with(EVERY_PARAMETER, None, &files);
        assert_eq!(c.myhostname, "mx.example.test");
        assert_eq!(
            c.access_list,
            "permit_mynetworks, cidr:/etc/postfix/postscreen_access.cidr"
        );
        assert_eq!(c.allowlist_interfaces, "!198.51.100.2 static:all");
        assert_eq!(c.bare_newline_action, TestAction::Enforce);
        assert!(c.bare_newline_enable);
        assert_eq!(c.bare_newline_ttl, secs(20 * 86_400));
        assert_eq!(c.cache_cleanup_interval, secs(6 * 3_600));
        assert_eq!(c.cache_retention_time, secs(3 * 86_400));
        assert_eq!(c.client_connection_count_limit, 7);
        assert_eq!(c.command_count_limit, 9);
        assert_eq!(
            (c.command_time_limit.normal, c.command_time_limit.stress),
            (secs(40), secs(4))
        );
        assert_eq!(c.denylist_action, TestAction::Drop);
        assert_eq!(c.dnsbl_action, TestAction::Enforce);
        assert_eq!(c.dnsbl_allowlist_threshold, -2);
        assert_eq!(c.dnsbl_max_ttl, secs(7_200));
        assert_eq!(c.dnsbl_min_ttl, secs(120));
        assert_eq!(
            c.dnsbl_reply_map,
            BTreeMap::from([("zen.example".into(), "zen.spamhaus.example".into())])
        );
        assert_eq!(
            c.dnsbl_sites,
            "zen.example=127.0.0.[2..11]*3, bl.example*2, wl.example=127.0.[0..255].[1..3]*-3"
        );
        assert_eq!(c.dnsbl_threshold, 3);
        assert_eq!(c.dnsbl_timeout, secs(7));
        assert_eq!(
            c.forbidden_commands,
            [
                "CONNECT",
                "GET",
                "POST",
                "PUT",
                "regexp:{{/^[^A-Z]/ Bogus}}"
            ]
        );
        assert_eq!(c.greet_action, TestAction::Enforce);
        assert_eq!(c.greet_banner, "$myhostname pregreet check");
        assert_eq!(c.greet_ttl, secs(2 * 86_400));
        assert_eq!(
            (c.greet_wait.normal, c.greet_wait.stress),
            (secs(3), secs(1))
        );
        assert_eq!(c.non_smtp_command_action, TestAction::Enforce);
        assert!(c.non_smtp_command_enable);
        assert_eq!(c.non_smtp_command_ttl, secs(10 * 86_400));
        assert_eq!(c.pipelining_action, TestAction::Drop);
        assert!(c.pipelining_enable);
        assert_eq!(c.pipelining_ttl, secs(15 * 86_400));
        assert_eq!(c.post_queue_limit, 30);
        assert_eq!(c.pre_queue_limit, 40);
        // $myhostname is set, so it is expanded; the footer macro stays.
        assert_eq!(
            c.reject_footer,
            "\\c For help, call 555-0101 about ${client_address} at mx.example.test"
        );
        assert_eq!(c.upstream_proxy_protocol, UpstreamProxyProtocol::Haproxy);
        assert_eq!(c.upstream_proxy_timeout, secs(8));
        assert_eq!(c.tls_cert_file, "/etc/ssl/certs/mx.pem");
        assert_eq!(c.tls_key_file, "/etc/ssl/private/mx.key");
        assert!(c.helo_required);
        assert!(c.disable_vrfy_command);
        // What smtp-screen has no option for, each with its reason.
        let expect = [
            ("postscreen_cache_map", "own database"),
            ("postscreen_command_filter", "does not rewrite"),
            (
                "postscreen_discard_ehlo_keyword_address_maps",
                "EHLO keywords",
            ),
            ("postscreen_discard_ehlo_keywords", "EHLO keywords"),
            ("postscreen_expansion_filter", "need no filter"),
            ("postscreen_reject_footer_maps", "no per-client tables"),
            ("postscreen_watchdog_timeout", "no watchdog"),
        ];
        for (parameter, reason) in expect {
            let found = skipped(&import, parameter);
            assert_eq!(found.len(), 1, "{parameter}: {:?}", import.untranslated);
            assert!(found[0].reason.contains(reason), "{}", found[0]);
            assert!(
                import.toml.contains(&format!("#   {parameter} = ")),
                "{parameter} in the comment block"
            );
        }
        assert_eq!(
            import.untranslated.len(),
            expect.len(),
            "{:#?}",
            import.untranslated
        );
        // postscreen_enforce_tls = no and postscreen_use_tls = yes are dealt with by the
        // security level; nothing is reported about them.
        assert!(
            import
                .untranslated
                .iter()
                .chain(&import.caveats)
                .all(|f| !f.parameter.contains("use_tls") && !f.parameter.contains("enforce_tls"))
        );
        // Every translated option names its source.
        assert!(
            import
                .toml
                .contains("# postscreen_greet_wait = ${stress?{1}:{3}}s\n")
        );
        assert!(
            import
                .toml
                .contains("greet_wait = \"${stress?{1}:{3}}s\"\n")
        );
    }

    #[test]
    fn defaults_alone_write_no_postscreen_option() {
        let every_default = "\
postscreen_access_list = permit_mynetworks
postscreen_greet_wait = ${stress?{2}:{6}}s
postscreen_command_time_limit = ${stress?{10}:{300}}s
postscreen_dnsbl_threshold = 1
";
        let (import, c) = import_text(every_default);
        let defaults = Config::default();
        assert_eq!(c.greet_wait, defaults.greet_wait);
        assert_eq!(c.command_time_limit, defaults.command_time_limit);
        assert_eq!(c.dnsbl_threshold, 1);
        assert_eq!(c.access_list, "permit_mynetworks");
        // Not set at all: not written.
        let (import_empty, _) = import_text("");
        for key in [
            "greet_wait",
            "pre_queue_limit",
            "forbidden_commands",
            "reject_footer",
        ] {
            assert!(
                !import_empty.toml.contains(&format!("\n{key} = ")),
                "{key}:\n{}",
                import_empty.toml
            );
        }
        assert!(import.toml.contains("\ngreet_wait = "));
        // smtpd_banner is always written: Postfix's names Postfix, smtp-screen's default
        // does not, and the client sees both greetings.
        assert!(
            import_empty
                .toml
                .contains("smtpd_banner = \"$myhostname ESMTP Postfix\"\n")
        );
    }

    #[test]
    fn translates_the_names_before_postfix_3_6() {
        let (import, c) = import_text(
            "postscreen_blacklist_action = enforce\n\
             postscreen_whitelist_interfaces = 192.0.2.25 static:all\n\
             postscreen_dnsbl_whitelist_threshold = -1\n\
             postscreen_dnsbl_ttl = 2h\n",
        );
        assert_eq!(c.denylist_action, TestAction::Enforce);
        assert_eq!(c.allowlist_interfaces, "192.0.2.25 static:all");
        assert_eq!(c.dnsbl_allowlist_threshold, -1);
        assert_eq!(c.dnsbl_max_ttl, secs(7_200));
        assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
        assert!(import.toml.contains(
            "(postscreen_blacklist_action is the name before Postfix 3.6 of \
             postscreen_denylist_action)"
        ));
        // Both names: the new one wins, as Postfix's default expression makes it.
        let (import, c) = import_text(
            "postscreen_blacklist_action = enforce\npostscreen_denylist_action = drop\n",
        );
        assert_eq!(c.denylist_action, TestAction::Drop);
        assert!(
            caveat(&import, "postscreen_blacklist_action")[0]
                .reason
                .contains("wins")
        );
    }

    #[test]
    fn follows_postfix_defaults_that_name_other_parameters() {
        let (import, c) = import_text(
            "default_process_limit = 30\n\
             smtpd_client_connection_count_limit = 4\n\
             smtpd_forbidden_commands = CONNECT GET POST\n\
             smtpd_reject_footer = Contact postmaster@$mydomain\n\
             myhostname = mx.example.org\n\
             soft_bounce = yes\n\
             line_length_limit = 4096\n",
        );
        assert_eq!(c.pre_queue_limit, 30);
        assert_eq!(c.post_queue_limit, 30);
        assert_eq!(c.client_connection_count_limit, 4);
        assert_eq!(c.forbidden_commands, ["CONNECT", "GET", "POST"]);
        assert_eq!(c.reject_footer, "Contact postmaster@example.org");
        assert!(c.soft_bounce);
        assert_eq!(c.line_length_limit, 4096);
        assert!(import.toml.contains(
            "# postscreen_pre_queue_limit = $default_process_limit: Postfix's default, here 30\n"
        ));
        // postscreen_reject_footer wins over smtpd_reject_footer.
        let (_, c) =
            import_text("smtpd_reject_footer = smtpd's\npostscreen_reject_footer = postscreen's\n");
        assert_eq!(c.reject_footer, "postscreen's");
        // A default process limit below postscreen's minimum is reported, not written.
        let (import, c) = import_text("default_process_limit = 8\n");
        assert_eq!(c.pre_queue_limit, 100);
        assert_eq!(c.post_queue_limit, 8);
        let found = skipped(&import, "postscreen_pre_queue_limit");
        assert!(found[0].reason.contains("minimum of 10"), "{}", found[0]);
    }

    #[test]
    fn expands_banners_with_the_inputs_values() {
        let (import, c) = import_text(
            "myhostname = mx.example.test\n\
             mail_name = ExampleMTA\n\
             smtpd_banner = $myhostname ESMTP $mail_name ($mail_version)\n\
             mail_version = 3.7.11\n\
             postscreen_greet_banner = $smtpd_banner\n",
        );
        assert_eq!(c.smtpd_banner, "$myhostname ESMTP ExampleMTA (3.7.11)");
        assert_eq!(
            c.smtpd_banner(),
            "mx.example.test ESMTP ExampleMTA (3.7.11)"
        );
        assert_eq!(c.greet_banner, "$smtpd_banner");
        assert_eq!(
            c.greet_banner(),
            "mx.example.test ESMTP ExampleMTA (3.7.11)"
        );
        assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
        // Without myhostname, smtp-screen takes the host name as Postfix does.
        let (import, c) = import_text("smtpd_banner = $myhostname ready\n");
        assert_eq!(c.smtpd_banner, "$myhostname ready");
        assert!(!import.toml.contains("\nmyhostname ="));
        // A reference nobody can resolve costs that setting only.
        let (import, c) = import_text("smtpd_banner = $myhostname $undefined_thing\n");
        assert_eq!(c.smtpd_banner, Config::default().smtpd_banner);
        let found = skipped(&import, "smtpd_banner");
        assert!(found[0].reason.contains("$undefined_thing"), "{}", found[0]);
        // Empty greet banner: no pregreet test.
        let (import, c) = import_text("postscreen_greet_banner =\n");
        assert_eq!(c.greet_banner, "");
        assert!(import.toml.contains("# Empty: no pregreet test."));
    }

    #[test]
    fn footer_keeps_its_macros() {
        let (import, c) = import_text(
            "smtpd_reject_footer = \\n$client_address:$client_port $localtime cost $$5 at \
             $myhostname\n",
        );
        // Without myhostname in the input, $myhostname becomes the footer's $server_name.
        assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
        assert_eq!(
            c.reject_footer,
            "\\n${client_address}:${client_port} ${localtime} cost $$5 at ${server_name}"
        );
        assert!(ReplyFooter::parse(&c.reject_footer).unwrap().is_some());
        let (import, c) =
            import_text("smtpd_reject_footer = $server_name $server_name $server_name\n");
        assert_eq!(c.reject_footer, "");
        assert!(
            skipped(&import, "postscreen_reject_footer")[0]
                .reason
                .contains("can expand to")
        );
        let (import, c) = import_text("smtpd_reject_footer = x\ty\n");
        assert_eq!(c.reject_footer, "");
        assert!(
            skipped(&import, "postscreen_reject_footer")[0]
                .reason
                .contains("control character")
        );
    }

    #[test]
    fn stress_values() {
        let (import, c) = import_text(
            "postscreen_greet_wait = ${stress?2:8}s\n\
             postscreen_command_time_limit = ${stress?{1}:{2}}m\n\
             postscreen_dnsbl_timeout = ${stress?{3}:{9}}s\n\
             postscreen_greet_ttl = ${stress}x\n",
        );
        assert_eq!(
            (c.greet_wait.normal, c.greet_wait.stress),
            (secs(8), secs(2))
        );
        assert_eq!(
            (c.command_time_limit.normal, c.command_time_limit.stress),
            (secs(120), secs(60))
        );
        assert!(import.toml.contains("greet_wait = \"${stress?2:8}s\""));
        // Elsewhere the normal value is taken, and said so.
        assert_eq!(c.dnsbl_timeout, secs(9));
        assert!(
            caveat(&import, "postscreen_dnsbl_timeout")[0]
                .reason
                .contains("normal value 9s")
        );
        let found = skipped(&import, "postscreen_greet_ttl");
        assert!(
            found[0].reason.contains("invalid time value"),
            "{}",
            found[0]
        );
        let (import, c) = import_text("postscreen_greet_wait = ${stress?{2}}s\n");
        assert_eq!(c.greet_wait, Config::default().greet_wait);
        assert!(
            skipped(&import, "postscreen_greet_wait")[0]
                .reason
                .contains("stress")
        );
    }

    #[test]
    fn bad_values_are_reported_not_written() {
        let (import, c) = import_text(
            "postscreen_greet_action = reject\n\
             postscreen_pipelining_enable = maybe\n\
             postscreen_command_count_limit = 0\n\
             postscreen_dnsbl_threshold = three\n\
             postscreen_client_connection_count_limit = -1\n\
             postscreen_greet_ttl = 1 day\n\
             postscreen_upstream_proxy_protocol = nginx\n\
             line_length_limit = 100\n\
             postscreen_dnsbl_min_ttl = 3h\n\
             myhostname =\n",
        );
        let defaults = Config::default();
        assert_eq!(c.greet_action, defaults.greet_action);
        assert_eq!(c.command_count_limit, 20);
        assert_eq!(c.dnsbl_min_ttl, defaults.dnsbl_min_ttl);
        for (parameter, reason) in [
            (
                "postscreen_greet_action",
                "expected ignore, enforce or drop",
            ),
            ("postscreen_pipelining_enable", "expected yes or no"),
            (
                "postscreen_command_count_limit",
                "below smtp-screen's minimum of 1",
            ),
            ("postscreen_dnsbl_threshold", "not a whole number"),
            (
                "postscreen_client_connection_count_limit",
                "not a whole number",
            ),
            ("postscreen_greet_ttl", "invalid time value"),
            ("postscreen_upstream_proxy_protocol", "only haproxy"),
            ("line_length_limit", "minimum of 512"),
            (
                "postscreen_dnsbl_min_ttl",
                "longer than postscreen_dnsbl_max_ttl",
            ),
            ("myhostname", "empty host name"),
        ] {
            let found = skipped(&import, parameter);
            assert_eq!(found.len(), 1, "{parameter}: {:?}", import.untranslated);
            assert!(found[0].reason.contains(reason), "{}", found[0]);
        }
    }

    #[test]
    fn list_entries_smtp_screen_cannot_use_are_left_out() {
        let files = Files::with(&[("/etc/postfix/bad.cidr", "not-an-address reject\n")]);
        let (import, c) = import_with(
            "mynetworks = 127.0.0.0/8 [::1]/128, hash:/etc/postfix/network_table \
             192.0.2.7/24 /etc/postfix/mynetworks.txt !192.0.2.8 $extra host.example\n\
             extra = 198.51.100.0/24 203.0.113.0/24\n\
             postscreen_access_list = permit_mynetworks, hash:/etc/postfix/ps_access, \
             cidr:/etc/postfix/bad.cidr, cidr:/etc/postfix/missing.cidr, \
             check_client_access cidr:/etc/postfix/after.cidr reject\n\
             postscreen_dnsbl_sites = zen.example*3 bad..example zen.example=127.0.0.999\n\
             postscreen_forbidden_commands = GET POST hash:/etc/postfix/cmds !CONNECT\n",
            None,
            &files,
        );
        assert_eq!(
            c.mynetworks,
            "127.0.0.0/8 [::1]/128 192.0.2.7/24 /etc/postfix/mynetworks.txt !192.0.2.8 \
             198.51.100.0/24 203.0.113.0/24"
        );
        let found = skipped(&import, "mynetworks");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0]
                .reason
                .contains("turn this hash: table into a cidr: table")
        );
        assert!(found[1].subject.contains("host.example"));
        assert_eq!(
            c.access_list,
            "permit_mynetworks, cidr:/etc/postfix/bad.cidr, cidr:/etc/postfix/missing.cidr"
        );
        let found = skipped(&import, "postscreen_access_list");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].subject.contains("hash:/etc/postfix/ps_access"));
        assert!(found[1].subject.contains("check_client_access"));
        assert!(found[1].reason.contains("ignores the rest of the list"));
        assert!(
            found[1]
                .reason
                .contains("cidr:/etc/postfix/after.cidr reject")
        );
        let checked = caveat(&import, "postscreen_access_list");
        assert_eq!(checked.len(), 2, "{checked:?}");
        assert!(
            checked[0].reason.contains("will refuse it"),
            "{}",
            checked[0]
        );
        assert!(
            checked[1].reason.contains("could not be checked"),
            "{}",
            checked[1]
        );
        assert_eq!(c.dnsbl_sites, "zen.example*3");
        assert_eq!(skipped(&import, "postscreen_dnsbl_sites").len(), 2);
        assert_eq!(c.forbidden_commands, ["GET", "POST"]);
        let found = skipped(&import, "postscreen_forbidden_commands");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[1].reason.contains("negated"));
    }

    #[test]
    fn a_list_shares_one_expansion_budget() {
        // Each entry alone is within the bounds; together they are not.
        let mut input = format!("a0 = {}\n", "x".repeat(4_000));
        for i in 1..=5 {
            input.push_str(&format!("a{i} = $a{} $a{}\n", i - 1, i - 1));
        }
        input.push_str(&format!("mynetworks = {}\n", "$a5 ".repeat(10)));
        let (import, c) = import_text(&input);
        assert_eq!(c.mynetworks, Config::default().mynetworks);
        let found = skipped(&import, "mynetworks");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].reason.contains("bytes"), "{}", found[0]);
        let mut input = String::from("b0 =\n");
        for i in 1..=3 {
            input.push_str(&format!("b{i} = {}\n", format!("$b{} ", i - 1).repeat(30)));
        }
        input.push_str(&format!("postscreen_dnsbl_sites = {}\n", "$b3 ".repeat(10)));
        let (import, _) = import_text(&input);
        let found = skipped(&import, "postscreen_dnsbl_sites");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].reason.contains("references"), "{}", found[0]);
    }

    #[test]
    fn an_unknown_reference_costs_one_list_entry() {
        let (import, c) =
            import_text("postscreen_access_list = permit_mynetworks, cidr:$LAB/etc/psacl.cidr\n");
        assert_eq!(c.access_list, "permit_mynetworks");
        let found = skipped(&import, "postscreen_access_list");
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].to_string(),
            "postscreen_access_list: cidr:$LAB/etc/psacl.cidr: it refers to $LAB, which the \
             input does not set and whose value smtp-screen cannot know"
        );
        // $config_directory has Postfix's default.
        let (_, c) = import_text(
            "postscreen_access_list = permit_mynetworks cidr:$config_directory/ps.cidr\n",
        );
        assert_eq!(
            c.access_list,
            "permit_mynetworks, cidr:/etc/postfix/ps.cidr"
        );
    }

    #[test]
    fn reply_map_tables() {
        let files = Files::with(&[(
            "/etc/postfix/dnsbl_reply",
            "# keyed queries\nKEY123.zen.dq.example zen.spamhaus.example\n\
             key123.ZEN.dq.example duplicate\nbl.example\n",
        )]);
        let (import, c) = import_with(
            "postscreen_dnsbl_reply_map = texthash:/etc/postfix/dnsbl_reply\n",
            None,
            &files,
        );
        // The table has a bad line: it is not used.
        assert!(c.dnsbl_reply_map.is_empty());
        assert!(
            skipped(&import, "postscreen_dnsbl_reply_map")[0]
                .reason
                .contains("/etc/postfix/dnsbl_reply, line 4: expected `key value`")
        );

        let files = Files::with(&[(
            "/etc/postfix/dnsbl_reply",
            "KEY123.zen.dq.example zen.spamhaus.example\nkey123.ZEN.dq.example duplicate\n\
             bl.example shown \u{e9}\n",
        )]);
        let (import, c) = import_with(
            "postscreen_dnsbl_reply_map = texthash:/etc/postfix/dnsbl_reply\n",
            None,
            &files,
        );
        assert_eq!(
            c.dnsbl_reply_map,
            BTreeMap::from([(
                "KEY123.zen.dq.example".into(),
                "zen.spamhaus.example".into()
            )])
        );
        assert!(
            caveat(&import, "postscreen_dnsbl_reply_map")[0]
                .reason
                .contains("first entry wins")
        );
        assert!(
            skipped(&import, "postscreen_dnsbl_reply_map")[0]
                .reason
                .contains("non-ASCII")
        );
        assert!(
            import
                .toml
                .contains("[dnsbl_reply_map]\n\"KEY123.zen.dq.example\" = ")
        );

        for (value, reason) in [
            ("texthash:/nowhere", "cannot read it here"),
            (
                "hash:/etc/postfix/dnsbl_reply",
                "texthash:/etc/postfix/dnsbl_reply",
            ),
            (
                "btree:/etc/postfix/r",
                "write dnsbl_reply_map as a TOML table",
            ),
            ("proxy:hash:/etc/postfix/r", "proxy: tables are not read"),
            ("pcre:/etc/postfix/r.pcre", "pcre: tables are not read"),
            (
                "memcache:/etc/postfix/m.cf",
                "memcache: tables are not read",
            ),
            ("/etc/postfix/plain", "not a type:name table"),
        ] {
            let (import, c) = import_with(
                &format!("postscreen_dnsbl_reply_map = {value}\n"),
                None,
                &files,
            );
            assert!(c.dnsbl_reply_map.is_empty());
            let found = skipped(&import, "postscreen_dnsbl_reply_map");
            assert_eq!(found.len(), 1, "{value}");
            assert!(found[0].reason.contains(reason), "{value}: {}", found[0]);
        }
    }

    #[test]
    fn starttls_follows_the_security_level() {
        let certs = "smtpd_tls_cert_file = /etc/ssl/mx.pem\nsmtpd_tls_key_file = /etc/ssl/mx.key\n";
        // No level: postscreen offers no STARTTLS, so neither does smtp-screen.
        let (import, c) = import_text(certs);
        assert_eq!(c.tls_cert_file, "");
        assert!(import.toml.contains("tls_cert_file stays empty"));
        // smtpd's level is postscreen's default.
        let (_, c) = import_text(&format!("{certs}smtpd_tls_security_level = may\n"));
        assert_eq!(
            (c.tls_cert_file.as_str(), c.tls_key_file.as_str()),
            ("/etc/ssl/mx.pem", "/etc/ssl/mx.key")
        );
        // The settings before security levels.
        let (_, c) = import_text(&format!("{certs}smtpd_use_tls = yes\n"));
        assert_eq!(c.tls_cert_file, "/etc/ssl/mx.pem");
        let (import, c) = import_text(&format!("{certs}smtpd_enforce_tls = yes\n"));
        assert_eq!(c.tls_cert_file, "/etc/ssl/mx.pem");
        assert!(
            skipped(&import, "postscreen_tls_security_level")[0]
                .reason
                .contains("does not require it")
        );
        // postscreen's own level wins over smtpd's.
        let (_, c) = import_text(&format!(
            "{certs}smtpd_tls_security_level = may\npostscreen_tls_security_level = none\n"
        ));
        assert_eq!(c.tls_cert_file, "");
        // Postfix 3.12's postscreen_tls_cert_file and key file.
        let (import, c) = import_text(&format!(
            "{certs}smtpd_tls_security_level = may\n\
             postscreen_tls_cert_file = /etc/ssl/ps.pem\npostscreen_tls_key_file = /etc/ssl/ps.key\n\
             postscreen_tls_protocols = >=TLSv1.2\npostscreen_starttls_timeout = 30s\n"
        ));
        assert_eq!(c.tls_cert_file, "/etc/ssl/ps.pem");
        assert_eq!(c.tls_key_file, "/etc/ssl/ps.key");
        assert!(
            skipped(&import, "postscreen_tls_protocols")[0]
                .reason
                .contains("rustls")
        );
        assert!(
            skipped(&import, "postscreen_starttls_timeout")[0]
                .reason
                .contains("command_time_limit")
        );
        // A certificate without its key.
        let (import, c) = import_text(
            "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = $config_directory/c.pem\n",
        );
        assert_eq!(c.tls_cert_file, "");
        assert!(
            skipped(&import, "smtpd_tls_cert_file")[0]
                .reason
                .contains("needs its key")
        );
        // chain files only.
        let (import, c) =
            import_text("smtpd_tls_security_level = may\nsmtpd_tls_chain_files = /k.pem, /c.pem\n");
        assert_eq!(c.tls_cert_file, "");
        assert_eq!(skipped(&import, "smtpd_tls_chain_files").len(), 1);
        assert!(caveat(&import, "postscreen_tls_security_level").is_empty());
        // An extra ECDSA certificate.
        let (import, _) = import_text(&format!(
            "{certs}smtpd_tls_security_level = may\nsmtpd_tls_eccert_file = /ec.pem\n"
        ));
        assert_eq!(caveat(&import, "smtpd_tls_eccert_file").len(), 1);
        // No certificate at all.
        let (import, _) = import_text("smtpd_tls_security_level = may\n");
        assert!(
            caveat(&import, "postscreen_tls_security_level")[0]
                .reason
                .contains("no certificate")
        );
        let (import, _) = import_text("postscreen_tls_security_level = dane\n");
        assert!(
            skipped(&import, "postscreen_tls_security_level")[0]
                .reason
                .contains("not a TLS security level")
        );
    }

    #[test]
    fn unknown_postscreen_parameters_are_reported() {
        let (import, _) = import_text(
            "postscreen_made_up = 1\npostscreen_dnsblog_reply_delay = 1s\nsmtpd_whatever = 1\n",
        );
        assert_eq!(import.untranslated.len(), 2, "{:?}", import.untranslated);
        assert!(
            import
                .untranslated
                .iter()
                .all(|f| f.reason == "not a postscreen parameter smtp-screen knows")
        );
    }

    #[test]
    fn helo_and_vrfy_settings_reach_the_engine() {
        // smtpd's settings reach postscreen through its defaults.
        let (import, config) = import_text(
            "smtpd_helo_required = yes\ndisable_vrfy_command = yes\n\
             smtpd_expansion_filter = abc\ndata_directory = /srv/postfix\n",
        );
        assert!(config.helo_required);
        assert!(config.disable_vrfy_command);
        assert_eq!(skipped(&import, "postscreen_expansion_filter").len(), 1);
        assert!(skipped(&import, "postscreen_cache_map").is_empty());
        assert!(skipped(&import, "postscreen_helo_required").is_empty());
        let (import, config) = import_text(
            "postscreen_helo_required = no\ndisable_vrfy_command = no\n\
             postscreen_command_filter =\n",
        );
        assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
        assert!(!config.helo_required);
        assert!(!config.disable_vrfy_command);
    }

    #[test]
    fn listen_addresses_come_from_inet_interfaces() {
        let listen = |input: &str| import_text(input).1.listen;
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(listen(""), [addr("0.0.0.0:25"), addr("[::]:25")]);
        assert_eq!(listen("inet_protocols = ipv4\n"), [addr("0.0.0.0:25")]);
        assert_eq!(
            listen("inet_interfaces = loopback-only\ninet_protocols = ipv6\n"),
            [addr("[::1]:25")]
        );
        assert_eq!(
            listen("inet_interfaces = 192.0.2.25, [2001:db8::25] 192.0.2.25\n"),
            [addr("192.0.2.25:25"), addr("[2001:db8::25]:25")]
        );
        let (import, c) = import_text("inet_interfaces = mx.example.com\n");
        assert_eq!(c.listen, Config::default().listen);
        assert_eq!(skipped(&import, "inet_interfaces").len(), 1);
        assert_eq!(caveat(&import, "inet_interfaces").len(), 1);
        let (import, c) = import_text("inet_protocols = ipx\n");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(caveat(&import, "inet_protocols").len(), 1);
    }

    #[test]
    fn smtp_screens_own_options() {
        let (import, c) = import_text(
            "queue_directory = /srv/postfix/spool\nsmtpd_service_name = smtpd-in\n\
             mail_owner = pfx\nmulti_instance_name = postfix-in\nmaillog_file = /var/log/m\n",
        );
        assert_eq!(c.handoff, Handoff::Postfix);
        assert_eq!(
            c.postfix_pass_socket,
            Path::new("/srv/postfix/spool/private/smtpd-in")
        );
        assert_eq!(c.user, "pfx");
        assert_eq!(c.log_to, LogTarget::Syslog);
        assert_eq!(c.syslog_name, "postfix-in/postscreen");
        assert_eq!(c.state_dir, Path::new(paths::DEFAULT_STATE_DIR));
        assert!(c.interfaces.is_empty());
        assert_eq!(caveat(&import, "maillog_file").len(), 1);
        let (_, c) = import_text("");
        assert_eq!(
            c.postfix_pass_socket,
            Path::new(paths::DEFAULT_POSTFIX_PASS_SOCKET)
        );
        assert_eq!(c.syslog_name, "postfix/postscreen");
        assert_eq!(c.user, "postfix");
    }

    #[test]
    fn respectful_logging_caveat() {
        for (input, expected) in [
            ("", true),
            ("compatibility_level = 2\n", true),
            ("compatibility_level = 3.6\n", false),
            ("compatibility_level = 3.10\n", false),
            ("respectful_logging = no\ncompatibility_level = 3.6\n", true),
            ("respectful_logging = yes\n", false),
        ] {
            let (import, _) = import_text(input);
            assert_eq!(
                !caveat(&import, "respectful_logging").is_empty(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn mynetworks_style_caveat() {
        let (import, _) = import_text("");
        assert!(
            caveat(&import, "mynetworks")[0]
                .reason
                .contains("127.0.0.0/8")
        );
        let (import, _) = import_text("mynetworks = 127.0.0.0/8\n");
        assert!(caveat(&import, "mynetworks").is_empty());
    }

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

    // --- master.cf advice and the services' settings ---

    #[test]
    fn master_cf_advice_names_the_lines() {
        let (import, c) = import_with(
            "smtp_tls_connection_reuse = yes\n",
            Some(DEBIAN_MASTER_CF),
            &Files::default(),
        );
        let advice = &import.master_cf_advice;
        assert!(
            advice.contains("line 6: smtp inet n - y - 1 postscreen"),
            "{advice}"
        );
        assert!(
            advice.contains("line 7: smtpd pass - - y - - smtpd"),
            "{advice}"
        );
        assert!(
            advice.contains("line 8: dnsblog unix - - y - 0 dnsblog"),
            "{advice}"
        );
        assert!(
            advice.contains("line 9: tlsproxy unix - - y - 0 tlsproxy"),
            "{advice}"
        );
        assert!(advice.contains("keep tlsproxy: smtp_tls_connection_reuse = yes"));
        assert!(advice.contains("postfix reload"));
        assert!(advice.contains(
            "To roll back: stop smtp-screen, remove the `#` from master.cf line 6, line 8 (if \
             commented out), line 9 (if commented out)"
        ));
        // Not the submission line.
        assert!(!advice.contains("line 10"));
        assert_eq!(c.listen.len(), 2);
        assert!(c.listen.iter().all(|a| a.port() == 25));
    }

    #[test]
    fn master_cf_without_postscreen() {
        let master = "smtp inet n - y - - smtpd\n  -o smtpd_sasl_auth_enable=no\n\
                      pickup unix n - y 60 1 pickup\n";
        let (import, _) = import_with("", Some(master), &Files::default());
        let advice = &import.master_cf_advice;
        assert!(
            advice.contains("smtpd itself answers on port 25"),
            "{advice}"
        );
        assert!(
            advice.contains("lines 1-2: smtp inet n - y - - smtpd"),
            "{advice}"
        );
        assert!(advice.contains("Add the pass service"), "{advice}");
        assert!(advice.contains("with the options of line 1: -o smtpd_sasl_auth_enable=no"));
        let (import, _) = import_with(
            "",
            Some("pickup unix n - y 60 1 pickup\n"),
            &Files::default(),
        );
        assert!(
            import
                .master_cf_advice
                .contains("No postscreen service and no smtpd")
        );
        assert!(
            import
                .master_cf_advice
                .contains("the lines you commented out")
        );
    }

    #[test]
    fn advice_without_master_cf_shows_the_standard_lines() {
        let (import, _) = import_text("smtpd_service_name = smtpd-pass\n");
        let advice = &import.master_cf_advice;
        assert!(
            advice.contains("#smtp      inet  n       -       y       -       1       postscreen")
        );
        assert!(advice.contains("smtpd-pass pass"), "{advice}");
        assert!(advice.contains("--master-cf"));
        assert!(advice.contains("To roll back"));
    }

    #[test]
    fn postscreen_service_addresses_and_overrides() {
        let master = "\
127.0.0.1:10025 inet n - n - 1 postscreen
  -o postscreen_upstream_proxy_protocol=haproxy
  -o { postscreen_greet_banner = $myhostname greets }
[::1]:10025 inet n - n - 1 postscreen -o postscreen_greet_action=drop
2525 inet n - n - 1 postscreen
mx.example:25 inet n - n - 1 postscreen
smtpd pass - - n - - smtpd
";
        let (import, c) = import_with(
            "inet_interfaces = 192.0.2.1\npostscreen_upstream_proxy_protocol =\n",
            Some(master),
            &Files::default(),
        );
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            c.listen,
            [
                addr("127.0.0.1:10025"),
                addr("[::1]:10025"),
                addr("192.0.2.1:2525")
            ]
        );
        // The first service's -o settings override main.cf.
        assert_eq!(c.upstream_proxy_protocol, UpstreamProxyProtocol::Haproxy);
        assert_eq!(c.greet_banner, "$myhostname greets");
        assert_eq!(c.greet_action, TestAction::Ignore);
        assert_ne!(c.backend, addr("127.0.0.1:10025"));
        let found = skipped(&import, "master.cf");
        assert_eq!(found.len(), 1);
        assert!(found[0].reason.contains("host names are not resolved"));
        assert_eq!(
            caveat(&import, "master.cf").len(),
            3,
            "{:?}",
            import.caveats
        );
        assert!(
            import
                .master_cf_advice
                .contains("-o settings are translated")
        );
    }

    /// The lab configuration of the reference's Appendix A: main.cf as `postconf -n` prints
    /// it (with the lab directory in place of `$LAB`), its master.cf and its tables.
    #[test]
    fn translates_the_lab_configuration() {
        let main_cf = "\
compatibility_level = 3.6
default_process_limit = 20
inet_interfaces = 127.0.0.1
mynetworks = 127.0.0.2/32
postscreen_access_list = permit_mynetworks, cidr:/srv/lab/etc/psacl.cidr
postscreen_bare_newline_action = enforce
postscreen_bare_newline_enable = yes
postscreen_client_connection_count_limit = 2
postscreen_command_count_limit = 6
postscreen_command_time_limit = ${stress?{2}:{5}}s
postscreen_denylist_action = drop
postscreen_dnsbl_action = enforce
postscreen_dnsbl_allowlist_threshold = -1
postscreen_dnsbl_reply_map = texthash:/srv/lab/etc/dnsbl_reply
postscreen_dnsbl_sites = bl.test=127.0.0.[2..11]*3, bl2.test*1, wl.test=127.0.[0..255].[1..3]*-5
postscreen_dnsbl_threshold = 3
postscreen_greet_action = enforce
postscreen_greet_wait = ${stress?{1}:{3}}s
postscreen_non_smtp_command_enable = yes
postscreen_pipelining_enable = yes
postscreen_post_queue_limit = 10
postscreen_pre_queue_limit = 10
";
        let master_cf = "\
127.0.0.1:10025 inet n - n - 1 postscreen
smtpd     pass  -       -       n       -       -       smtpd
dnsblog   unix  -       -       n       -       0       dnsblog
tlsproxy  unix  -       -       n       -       0       tlsproxy
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
postlog   unix-dgram n  -       n       -       1       postlogd
anvil     unix  -       -       n       -       1       anvil
cleanup   unix  n       -       n       -       0       cleanup
rewrite   unix  -       -       n       -       -       trivial-rewrite
proxymap  unix  -       -       n       -       -       proxymap
";
        let files = Files::with(&[
            (
                "/srv/lab/etc/psacl.cidr",
                "127.0.0.20/32 permit\n127.0.0.21/32 reject\n127.0.0.22/32 dunno\n\
                 127.0.0.0/24 dunno\n",
            ),
            ("/srv/lab/etc/dnsbl_reply", "bl.test public-bl.example\n"),
        ]);
        let (import, c) = import_with(main_cf, Some(master_cf), &files);
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(c.listen, [addr("127.0.0.1:10025")]);
        assert_ne!(c.backend, addr("127.0.0.1:10025"));
        assert_eq!(c.mynetworks, "127.0.0.2/32");
        assert_eq!(
            c.access_list,
            "permit_mynetworks, cidr:/srv/lab/etc/psacl.cidr"
        );
        assert_eq!(c.denylist_action, TestAction::Drop);
        assert_eq!(c.greet_action, TestAction::Enforce);
        assert_eq!(
            (c.greet_wait.normal, c.greet_wait.stress),
            (secs(3), secs(1))
        );
        assert_eq!(
            c.dnsbl_sites,
            "bl.test=127.0.0.[2..11]*3, bl2.test*1, wl.test=127.0.[0..255].[1..3]*-5"
        );
        assert_eq!(c.dnsbl_threshold, 3);
        assert_eq!(c.dnsbl_allowlist_threshold, -1);
        assert_eq!(c.dnsbl_action, TestAction::Enforce);
        assert_eq!(
            c.dnsbl_reply_map,
            BTreeMap::from([("bl.test".into(), "public-bl.example".into())])
        );
        assert!(c.pipelining_enable && c.non_smtp_command_enable && c.bare_newline_enable);
        assert_eq!(c.bare_newline_action, TestAction::Enforce);
        assert_eq!(c.command_count_limit, 6);
        assert_eq!(
            (c.command_time_limit.normal, c.command_time_limit.stress),
            (secs(5), secs(2))
        );
        assert_eq!(c.client_connection_count_limit, 2);
        assert_eq!((c.pre_queue_limit, c.post_queue_limit), (10, 10));
        assert_eq!(c.handoff, Handoff::Postfix);
        assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
        assert!(import.caveats.is_empty(), "{:?}", import.caveats);
        let advice = &import.master_cf_advice;
        assert!(advice.contains("line 1: 127.0.0.1:10025 inet n - n - 1 postscreen"));
        assert!(advice.contains("line 2: smtpd pass"));
        assert!(advice.contains("line 3: dnsblog") && advice.contains("line 4: tlsproxy"));
        assert!(!advice.contains("keep tlsproxy"));
    }

    /// The lab's main.cf lines exactly as the reference prints them: `$LAB` is not a
    /// parameter, and main.cf has no end-of-line comments, so the annotations are part of
    /// the values; the import says so and still loads.
    #[test]
    fn the_lab_lines_as_printed() {
        let main_cf = "\
mynetworks = 127.0.0.2/32            # so 127.0.0.x test clients are NOT in mynetworks
postscreen_access_list = permit_mynetworks, cidr:$LAB/etc/psacl.cidr
postscreen_dnsbl_reply_map = texthash:$LAB/etc/dnsbl_reply     # bl.test -> public-bl.example
";
        let (import, c) = import_text(main_cf);
        assert_eq!(c.mynetworks, "127.0.0.2/32");
        assert!(
            caveat(&import, "mynetworks")[0]
                .reason
                .contains("no end-of-line comments")
        );
        assert!(!skipped(&import, "mynetworks").is_empty());
        assert_eq!(c.access_list, "permit_mynetworks");
        assert!(
            skipped(&import, "postscreen_access_list")[0]
                .reason
                .contains("$LAB")
        );
        assert!(
            skipped(&import, "postscreen_dnsbl_reply_map")
                .iter()
                .any(|f| f.reason.contains("$LAB"))
        );
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
