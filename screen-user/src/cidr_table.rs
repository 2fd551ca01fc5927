//! Postfix CIDR tables (`cidr_table(5)`), as `postscreen_access_list` and `mynetworks` use
//! them: each rule is `pattern result`, rules are tried in file order and the first match
//! wins.
//!
//! The syntax is Postfix 3.2's:
//!
//! - a pattern is an address (`192.0.2.1`, `2001:db8::1`, a host) or a network
//!   (`192.0.2.0/24`, `2001:db8::/32`); brackets are optional (`[2001:db8::]/32`,
//!   `[2001:db8::1]`, `[192.0.2.0/24]`);
//! - `!pattern result` matches the addresses of the pattern's family that the pattern does
//!   not (an IPv4 pattern, negated or not, never matches an IPv6 client, and the reverse);
//! - `if pattern` … `endif` (also `if !pattern`, nested, keywords in any case) applies the
//!   rules inside only to addresses that match the pattern;
//! - the result is the rest of the line after the whitespace that follows the pattern;
//! - blank lines and lines whose first non-blank character is `#` are ignored; a line that
//!   starts with whitespace continues the logical line before it (comment lines in between
//!   do not end it).
//!
//! As in Postfix, a rule whose network has host bits set is skipped with a warning worded as
//! Postfix words it. Every other mistake (a pattern that does not parse, a rule without a
//! result, an `endif` without `if`, an `if` without `endif`, a line that is too long) is an
//! error that names the file and the line, and nothing of the table is used: Postfix skips
//! most such lines and runs on, smtp-screen refuses to start with them.
//!
//! IPv4-mapped IPv6 addresses are looked up as the IPv4 addresses they carry, the way
//! Postfix sees such clients; an IPv4-mapped pattern (`::ffff:192.0.2.0/120`) is read as
//! the IPv4 network it stands for.

use std::{
    collections::HashMap,
    fmt,
    fs::OpenOptions,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{address::canonical, escape::shorten};

/// The largest table file read (Postfix has no limit; a table this size is already slow to
/// search, since every connection walks the rules in order).
pub(crate) const MAX_TABLE_BYTES: usize = 16 << 20;
/// The longest physical or logical line.
pub(crate) const MAX_LINE_BYTES: usize = 64 << 10;
/// The most rules (`if` lines included) one table may hold.
pub(crate) const MAX_RULES: usize = 1_000_000;

/// How many bad lines an error names before it summarises.
const MAX_REPORTED_ERRORS: usize = 10;
/// How many warnings a table keeps before it summarises.
const MAX_WARNINGS: usize = 100;
/// How much of a bad pattern an error quotes.
const MAX_QUOTED: usize = 100;
/// How much of a misplaced continuation line a warning quotes (as Postfix does).
const MAX_QUOTED_CONTINUATION: usize = 30;

/// A pattern that does not parse. The texts are Postfix's (`cidr_match.c`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PatternError {
    #[error("no address pattern")]
    Empty,
    #[error("missing ']' character after \"[{0}\"")]
    MissingBracket(String),
    #[error("garbage after \"[{0}]\"")]
    AfterBracket(String),
    #[error("bad net/mask pattern: \"{address}/{mask}\"")]
    NetMask { address: String, mask: String },
    #[error("bad address pattern: \"{0}\"")]
    Address(String),
    #[error(
        "non-null host address bits in \"{given}\", perhaps you should use \"{network}\" instead"
    )]
    HostBits { given: String, network: IpNet },
}

/// One address pattern: a network or a host, possibly negated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    pub(crate) net: IpNet,
    pub(crate) negated: bool,
}

impl Pattern {
    /// Parses `192.0.2.0/24`, `2001:db8::1`, `[2001:db8::]/32`, `[192.0.2.0/24]`, each
    /// optionally preceded by `!` (every `!` flips the sense, as in Postfix). A bare address
    /// is a host. Host bits must be zero.
    pub(crate) fn parse(text: &str) -> Result<Self, PatternError> {
        let mut negated = false;
        let mut rest = text;
        while let Some(after) = rest.strip_prefix('!') {
            negated = !negated;
            rest = after;
        }
        if rest.is_empty() {
            return Err(PatternError::Empty);
        }
        let (address, mask) = match rest.strip_prefix('[') {
            Some(inner) => {
                let Some((inside, after)) = inner.split_once(']') else {
                    return Err(PatternError::MissingBracket(quote(inner)));
                };
                if after.is_empty() {
                    split_mask(inside)
                } else if let Some(mask) = after.strip_prefix('/') {
                    (inside, Some(mask))
                } else {
                    return Err(PatternError::AfterBracket(quote(inside)));
                }
            }
            None => split_mask(rest),
        };
        // Postfix tells the family by the colon, so `1.2.3.4/24` never reads as IPv6.
        let v6 = address.contains(':');
        let net = match mask {
            None => IpNet::from(
                parse_address(address, v6).ok_or_else(|| PatternError::Address(quote(address)))?,
            ),
            Some(mask) => {
                let bad = || PatternError::NetMask {
                    address: quote(address),
                    mask: quote(mask),
                };
                let max = if v6 { 128 } else { 32 };
                let len = Some(mask)
                    .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|m| m.parse::<u8>().ok())
                    .filter(|&len| len <= max)
                    .ok_or_else(bad)?;
                let ip = parse_address(address, v6).ok_or_else(bad)?;
                let net = IpNet::new(ip, len).map_err(|_| bad())?;
                if net.network() != ip {
                    return Err(PatternError::HostBits {
                        given: format!("{address}/{}", quote(mask)),
                        network: net.trunc(),
                    });
                }
                net
            }
        };
        Ok(Self {
            net: unmap(net),
            negated,
        })
    }

    fn matches_canonical(&self, addr: IpAddr) -> bool {
        match (self.net, addr) {
            (IpNet::V4(net), IpAddr::V4(a)) => net.contains(&a) != self.negated,
            (IpNet::V6(net), IpAddr::V6(a)) => net.contains(&a) != self.negated,
            _ => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_str("!")?;
        }
        write!(f, "{}", self.net)
    }
}

fn split_mask(text: &str) -> (&str, Option<&str>) {
    match text.split_once('/') {
        Some((address, mask)) => (address, Some(mask)),
        None => (text, None),
    }
}

fn parse_address(text: &str, v6: bool) -> Option<IpAddr> {
    if v6 {
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// `::ffff:a.b.c.d/96+n` is the IPv4 network `a.b.c.d/n`: clients never appear in that form.
/// Both address families whole: what a pattern or table that may match anything covers.
pub(crate) fn every_address() -> Vec<IpNet> {
    vec![IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())]
}

fn unmap(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// At most [`MAX_QUOTED`] characters of `text`, for messages.
fn quote(text: &str) -> String {
    shorten(text, MAX_QUOTED)
}

/// Postfix's `ISSPACE`: the C locale's white space.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// A table that cannot be used; nothing of it is.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CidrError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{table}: more than {max} bytes")]
    TooLarge { table: String, max: usize },
    #[error("{path}, line {line}: not UTF-8 text")]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("cidr map {table}: more than {max} rules")]
    TooManyRules { table: String, max: usize },
    #[error("{}", render_lines(table, errors, *more))]
    Lines {
        table: String,
        /// Line number and what is wrong there, for the first bad lines.
        errors: Vec<(usize, String)>,
        /// Bad lines beyond those.
        more: usize,
    },
}

fn render_lines(table: &str, errors: &[(usize, String)], more: usize) -> String {
    let mut lines: Vec<String> = errors
        .iter()
        .map(|(line, why)| format!("cidr map {table}, line {line}: {why}"))
        .collect();
    if more > 0 {
        lines.push(format!("cidr map {table}: {more} more bad lines"));
    }
    lines.join("\n")
}

/// A rule that was skipped; the table is used without it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CidrWarning {
    /// `cidr map /etc/postfix/x.cidr, line 5: non-null host address bits in "…", perhaps
    /// you should use "…" instead: skipping this rule` (Postfix's text).
    HostBits {
        table: String,
        line: usize,
        error: PatternError,
    },
    /// A continuation line with nothing before it to continue; Postfix ignores it too.
    LeadingWhitespace {
        table: String,
        line: usize,
        text: String,
    },
    /// Warnings beyond the first ones, not kept.
    More { table: String, count: usize },
}

impl fmt::Display for CidrWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HostBits { table, line, error } => {
                write!(
                    f,
                    "cidr map {table}, line {line}: {error}: skipping this rule"
                )
            }
            Self::LeadingWhitespace { table, line, text } => write!(
                f,
                "cidr map {table}, line {line}: logical line must not start with whitespace: \
                 \"{text}\": skipping it"
            ),
            Self::More { table, count } => {
                write!(f, "cidr map {table}: {count} more rules skipped")
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Action {
    /// Return the result with this index.
    Result(u32),
    /// Go on with the next rule on a match, else with the rule at `end` (after the `endif`).
    If { end: u32 },
}

#[derive(Clone, Copy, Debug)]
struct Rule {
    pattern: Pattern,
    action: Action,
}

/// A parsed CIDR table. `V` is what a match yields: the result text as written, or what the
/// user of the table made of it with [`CidrTable::map_results`].
#[derive(Clone, Debug)]
pub(crate) struct CidrTable<V = Box<str>> {
    name: Box<str>,
    rules: Vec<Rule>,
    /// Each distinct result once; rules refer to them by index.
    results: Vec<V>,
}

impl CidrTable {
    /// Reads and parses the table file at `path`. The file must be a regular file of at most
    /// [`MAX_TABLE_BYTES`] bytes of UTF-8 text.
    #[cfg(test)]
    pub(crate) fn load(path: &Path) -> Result<(Self, Vec<CidrWarning>), CidrError> {
        let text = read_table_file(path)?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses table text. `name` names the table in messages as Postfix does
    /// (`cidr map NAME, line N: …`): the file's path as configured.
    ///
    /// An error means the table must not be used (the daemon refuses to start with it);
    /// warnings name rules that were skipped and should be logged.
    pub(crate) fn parse(name: &str, text: &str) -> Result<(Self, Vec<CidrWarning>), CidrError> {
        Self::parse_with_limit(name, text, MAX_RULES)
    }

    fn parse_with_limit(
        name: &str,
        text: &str,
        max_rules: usize,
    ) -> Result<(Self, Vec<CidrWarning>), CidrError> {
        if text.len() > MAX_TABLE_BYTES {
            return Err(CidrError::TooLarge {
                table: name.to_string(),
                max: MAX_TABLE_BYTES,
            });
        }
        let mut builder = Builder::new(name, max_rules);
        // The logical line being gathered: its first line number and its text so far.
        let mut current: Option<(usize, String)> = None;
        // Continuation lines of a logical line already given up on are dropped silently.
        let mut dropping = false;
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            if raw.len() > MAX_LINE_BYTES {
                // A continuation breaks the logical line it belongs to; any other line ends
                // the one before it, which is judged on its own.
                if raw.starts_with(is_space) {
                    current = None;
                } else if let Some((first, logical)) = current.take() {
                    builder.rule(first, &logical)?;
                }
                builder.error(line, format!("line longer than {MAX_LINE_BYTES} bytes"));
                dropping = true;
                continue;
            }
            let content = raw.trim_start_matches(is_space);
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            if content.len() != raw.len() {
                if dropping {
                    continue;
                }
                match current.as_mut() {
                    Some((first, logical)) if logical.len() + raw.len() > MAX_LINE_BYTES => {
                        let first = *first;
                        builder.error(
                            first,
                            format!("logical line longer than {MAX_LINE_BYTES} bytes"),
                        );
                        current = None;
                        dropping = true;
                    }
                    Some((_, logical)) => logical.push_str(raw),
                    None => {
                        builder.warn(CidrWarning::LeadingWhitespace {
                            table: name.to_string(),
                            line,
                            text: shorten(raw, MAX_QUOTED_CONTINUATION),
                        });
                        dropping = true;
                    }
                }
                continue;
            }
            if let Some((first, logical)) = current.take() {
                builder.rule(first, &logical)?;
            }
            current = Some((line, raw.to_string()));
            dropping = false;
        }
        if let Some((first, logical)) = current.take() {
            builder.rule(first, &logical)?;
        }
        builder.finish()
    }
}

impl<V> CidrTable<V> {
    /// The table's name as given to [`CidrTable::parse`].
    #[cfg(test)]
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The number of rules (`if` lines included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The result of the first rule that matches `addr`, if any.
    pub(crate) fn lookup(&self, addr: IpAddr) -> Option<&V> {
        let addr = canonical(addr);
        let mut next = 0;
        while let Some(rule) = self.rules.get(next) {
            let hit = rule.pattern.matches_canonical(addr);
            next = match rule.action {
                Action::Result(index) if hit => return self.results.get(index as usize),
                Action::Result(_) => next + 1,
                Action::If { .. } if hit => next + 1,
                // The block's end always lies past the `if`, so the walk always advances.
                Action::If { end } => (end as usize).max(next + 1),
            };
        }
        None
    }

    /// Every network a rule yielding a result `wanted` accepts may match: a superset of the
    /// addresses for which [`CidrTable::lookup`] returns such a result. An `if` block only
    /// narrows its rules, so each rule's own pattern bounds it; a negated pattern may match
    /// anything.
    pub(crate) fn networks_yielding(&self, wanted: impl Fn(&V) -> bool) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for rule in &self.rules {
            let Action::Result(index) = rule.action else {
                continue;
            };
            if !self.results.get(index as usize).is_some_and(&wanted) {
                continue;
            }
            if rule.pattern.negated {
                return every_address();
            }
            nets.push(rule.pattern.net);
        }
        nets
    }

    /// The same table with every distinct result turned into `f(result)`, so that results
    /// are parsed once, at load time.
    pub(crate) fn map_results<W>(self, f: impl FnMut(V) -> W) -> CidrTable<W> {
        CidrTable {
            name: self.name,
            rules: self.rules,
            results: self.results.into_iter().map(f).collect(),
        }
    }
}

/// Collects rules, errors and warnings while a table is parsed.
struct Builder<'a> {
    name: &'a str,
    max_rules: usize,
    rules: Vec<Rule>,
    results: HashMap<Box<str>, u32>,
    /// Open `if` blocks: the rule index and line of each.
    open: Vec<(usize, usize)>,
    errors: Vec<(usize, String)>,
    more_errors: usize,
    warnings: Vec<CidrWarning>,
    more_warnings: usize,
}

impl<'a> Builder<'a> {
    fn new(name: &'a str, max_rules: usize) -> Self {
        Self {
            name,
            max_rules,
            rules: Vec::new(),
            results: HashMap::new(),
            open: Vec::new(),
            errors: Vec::new(),
            more_errors: 0,
            warnings: Vec::new(),
            more_warnings: 0,
        }
    }

    fn error(&mut self, line: usize, why: String) {
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push((line, why));
        } else {
            self.more_errors += 1;
        }
    }

    fn warn(&mut self, warning: CidrWarning) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(warning);
        } else {
            self.more_warnings += 1;
        }
    }

    /// Takes one logical line (which starts with non-blank text).
    fn rule(&mut self, line: usize, logical: &str) -> Result<(), CidrError> {
        let logical = logical.trim_end_matches(is_space);
        let (head, rest) = match logical.split_once(is_space) {
            Some((head, rest)) => (head, rest.trim_start_matches(is_space)),
            None => (logical, ""),
        };
        if head.eq_ignore_ascii_case("if") {
            self.if_rule(line, rest);
        } else if head.eq_ignore_ascii_case("endif") {
            if !rest.is_empty() {
                self.error(
                    line,
                    format!("garbage after \"endif\": \"{}\"", quote(rest)),
                );
            } else if let Some((index, _)) = self.open.pop() {
                let end = self.rules.len() as u32;
                if let Some(rule) = self.rules.get_mut(index) {
                    rule.action = Action::If { end };
                }
            } else {
                self.error(line, "\"endif\" without matching \"if\"".into());
            }
        } else if rest.is_empty() {
            self.error(line, "no lookup result".into());
        } else {
            match Pattern::parse(head) {
                Ok(pattern) => {
                    let next = self.results.len() as u32;
                    let index = *self.results.entry(rest.into()).or_insert(next);
                    self.rules.push(Rule {
                        pattern,
                        action: Action::Result(index),
                    });
                }
                Err(error @ PatternError::HostBits { .. }) => {
                    self.warn(CidrWarning::HostBits {
                        table: self.name.to_string(),
                        line,
                        error,
                    });
                }
                Err(error) => self.error(line, error.to_string()),
            }
        }
        if self.rules.len() > self.max_rules {
            return Err(CidrError::TooManyRules {
                table: self.name.to_string(),
                max: self.max_rules,
            });
        }
        Ok(())
    }

    fn if_rule(&mut self, line: usize, rest: &str) {
        let (pattern, extra) = match rest.split_once(is_space) {
            Some((pattern, extra)) => (pattern, extra.trim_start_matches(is_space)),
            None => (rest, ""),
        };
        if pattern.is_empty() {
            return self.error(line, "no address pattern after \"if\"".into());
        }
        if !extra.is_empty() {
            return self.error(
                line,
                format!(
                    "garbage after \"if {}\": \"{}\"",
                    quote(pattern),
                    quote(extra)
                ),
            );
        }
        match Pattern::parse(pattern) {
            Ok(pattern) => {
                // `end` is set at the matching `endif`.
                self.open.push((self.rules.len(), line));
                self.rules.push(Rule {
                    pattern,
                    action: Action::If { end: 0 },
                });
            }
            // Skipping an `if` as Postfix does would apply its block to every address.
            Err(error @ PatternError::HostBits { .. }) => {
                self.error(line, format!("{error} (an \"if\" cannot be skipped)"))
            }
            Err(error) => self.error(line, error.to_string()),
        }
    }

    fn finish(mut self) -> Result<(CidrTable, Vec<CidrWarning>), CidrError> {
        for (_, line) in std::mem::take(&mut self.open) {
            self.error(line, "\"if\" without matching \"endif\"".into());
        }
        if !self.errors.is_empty() {
            self.errors.sort_by_key(|&(line, _)| line);
            return Err(CidrError::Lines {
                table: self.name.to_string(),
                errors: self.errors,
                more: self.more_errors,
            });
        }
        if self.more_warnings > 0 {
            self.warnings.push(CidrWarning::More {
                table: self.name.to_string(),
                count: self.more_warnings,
            });
        }
        let mut results: Vec<Box<str>> = vec![Box::from(""); self.results.len()];
        for (text, index) in self.results {
            results[index as usize] = text;
        }
        let table = CidrTable {
            name: self.name.into(),
            rules: self.rules,
            results,
        };
        Ok((table, self.warnings))
    }
}

/// Reads a table file: a regular file (so a FIFO cannot stall start-up) of at most
/// [`MAX_TABLE_BYTES`] bytes of UTF-8 text.
pub(crate) fn read_table_file(path: &Path) -> Result<String, CidrError> {
    let read_error = |source| CidrError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(CidrError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let too_large = || CidrError::TooLarge {
        table: path.display().to_string(),
        max: MAX_TABLE_BYTES,
    };
    if metadata.len() > MAX_TABLE_BYTES as u64 {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(MAX_TABLE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > MAX_TABLE_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        CidrError::NotUtf8 {
            path: path.to_path_buf(),
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
        }
    })
}

#[cfg(test)]
mod tests;
