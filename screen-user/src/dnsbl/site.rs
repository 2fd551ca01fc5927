//! The `dnsbl_sites` syntax, as `postscreen_dnsbl.c`'s `psc_dnsbl_add_site` reads it: entries
//! `domain[=filter][*weight]` ([`DnsblSite`], [`DnsblSites`]) with reply filters in Postfix's
//! `ip_match` syntax ([`ScoreFilter`]); `dnsbl_reply_map` ([`ReplyMap`]); and the name a list
//! is asked for a client ([`query_name`], as `dnsblog.c` builds it).
//!
//! Pure parsers from text to typed values, tested without a network. Every bound has a name
//! here, and every refusal a [`SiteProblem`] that says which part of the entry is wrong.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
};

use super::DnsblError;
use crate::{address::canonical, escape::truncate_at_char};

/// Most entries `dnsbl_sites` may hold. Real configurations use a handful; every entry costs
/// a query per new client.
pub(crate) const MAX_SITES: usize = 100;
/// Longest entry, in bytes.
pub(crate) const MAX_ENTRY_LEN: usize = 512;
/// Longest list domain: a query name is at most 253 characters, and an IPv6 client's reversed
/// nibbles take 64 of them.
pub(crate) const MAX_DOMAIN_LEN: usize = 253 - 64;
/// Largest weight, either sign. Keeps every possible score far inside an `i32`.
pub(crate) const MAX_WEIGHT: i32 = 1_000_000;
/// Most `dnsbl_reply_map` entries.
pub(crate) const MAX_REPLY_MAP: usize = 1_000;
/// Longest name shown in a reply.
pub(crate) const MAX_SHOWN_LEN: usize = 255;

/// What is wrong with one `dnsbl_sites` entry or `dnsbl_reply_map` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SiteProblem {
    #[error("it is {len} bytes long, more than {max}")]
    EntryTooLong { len: usize, max: usize },
    #[error("the domain is empty")]
    EmptyDomain,
    #[error("the domain is {len} characters long, more than {max}")]
    DomainTooLong { len: usize, max: usize },
    #[error("the domain has an empty label")]
    EmptyLabel,
    #[error("label {label:?} is longer than 63 characters")]
    LabelTooLong { label: String },
    #[error(
        "label {label:?} has the character {ch:?}: only letters, digits, '-' and '_' are allowed"
    )]
    LabelCharacter { label: String, ch: char },
    #[error("label {label:?} starts or ends with '-'")]
    LabelHyphen { label: String },
    #[error("the filter after '=' is empty")]
    EmptyFilter,
    #[error("the filter has {found} octets, not 4")]
    OctetCount { found: usize },
    #[error("octet {octet} of the filter is empty")]
    EmptyOctet { octet: usize },
    #[error("octet {octet} of the filter: {text:?} is not a number")]
    NotANumber { octet: usize, text: String },
    #[error("octet {octet} of the filter: {text} is larger than 255")]
    OctetTooLarge { octet: usize, text: String },
    #[error("octet {octet} of the filter: the range {from}..{to} is reversed")]
    ReversedRange { octet: usize, from: u8, to: u8 },
    #[error("octet {octet} of the filter: the brackets are empty")]
    EmptyBrackets { octet: usize },
    #[error("octet {octet} of the filter: an empty item between ';'")]
    EmptyItem { octet: usize },
    #[error("octet {octet} of the filter: '[' is not closed")]
    UnclosedBracket { octet: usize },
    #[error("octet {octet} of the filter: ']' without '['")]
    UnopenedBracket { octet: usize },
    #[error("octet {octet} of the filter: '[' inside brackets")]
    NestedBracket { octet: usize },
    #[error("octet {octet} of the filter: unexpected {junk:?} after ']'")]
    TrailingJunk { octet: usize, junk: String },
    #[error("the weight after '*' is empty")]
    EmptyWeight,
    #[error("the weight {text:?} is not an integer")]
    BadWeight { text: String },
    #[error("the weight {text} is beyond ±{max}")]
    WeightOutOfRange { text: String, max: i32 },
    #[error("the shown name is empty")]
    EmptyShownName,
    #[error("the shown name is longer than {max} bytes")]
    ShownNameTooLong { max: usize },
    #[error("the shown name has a control or non-ASCII character")]
    ShownNameCharacter,
}

/// The set of values one octet of a filter accepts: a 256-bit map.
#[derive(Clone, Copy, PartialEq, Eq)]
struct OctetSet([u64; 4]);

impl OctetSet {
    const EMPTY: Self = Self([0; 4]);

    fn insert_range(&mut self, from: u8, to: u8) {
        for value in from..=to {
            self.0[usize::from(value / 64)] |= 1 << (value % 64);
        }
    }

    fn contains(&self, value: u8) -> bool {
        self.0[usize::from(value / 64)] & (1 << (value % 64)) != 0
    }
}

/// A reply filter, `d.d.d.d` where each `d` is a number or `[…]` holding `;`-separated numbers
/// and `n..m` ranges (Postfix's `ip_match` syntax): `127.0.0.2`, `127.0.0.[2..11]`,
/// `127.0.[0..255].[1..3]`, `127.0.0.[2;4;6..8]`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ScoreFilter {
    octets: [OctetSet; 4],
    text: String,
}

impl ScoreFilter {
    /// Parses a filter. The text must already be bounded (entries are at most
    /// [`MAX_ENTRY_LEN`] bytes).
    pub(crate) fn parse(text: &str) -> Result<Self, SiteProblem> {
        if text.is_empty() {
            return Err(SiteProblem::EmptyFilter);
        }
        let parts = split_octets(text)?;
        if parts.len() != 4 {
            return Err(SiteProblem::OctetCount { found: parts.len() });
        }
        let mut octets = [OctetSet::EMPTY; 4];
        for (index, part) in parts.iter().enumerate() {
            octets[index] = parse_octet(index + 1, part)?;
        }
        Ok(Self {
            octets,
            text: text.to_string(),
        })
    }

    /// Whether a reply address passes the filter.
    pub(crate) fn matches(&self, addr: Ipv4Addr) -> bool {
        addr.octets()
            .iter()
            .zip(&self.octets)
            .all(|(&value, set)| set.contains(value))
    }
}

impl fmt::Display for ScoreFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ScoreFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScoreFilter({:?})", self.text)
    }
}

/// Splits a filter at the dots outside brackets (a range's `..` is inside them).
fn split_octets(text: &str) -> Result<Vec<&str>, SiteProblem> {
    let mut parts = Vec::with_capacity(4);
    let mut start = 0;
    let mut in_brackets = false;
    for (i, c) in text.char_indices() {
        let octet = parts.len() + 1;
        match c {
            '[' if in_brackets => return Err(SiteProblem::NestedBracket { octet }),
            '[' => in_brackets = true,
            ']' if !in_brackets => return Err(SiteProblem::UnopenedBracket { octet }),
            ']' => in_brackets = false,
            '.' if !in_brackets => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_brackets {
        return Err(SiteProblem::UnclosedBracket {
            octet: parts.len() + 1,
        });
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_octet(octet: usize, text: &str) -> Result<OctetSet, SiteProblem> {
    let mut set = OctetSet::EMPTY;
    if text.is_empty() {
        return Err(SiteProblem::EmptyOctet { octet });
    }
    let Some(rest) = text.strip_prefix('[') else {
        if let Some(at) = text.find(['[', ']']) {
            return Err(SiteProblem::NotANumber {
                octet,
                text: text[..at].to_string(),
            });
        }
        let value = parse_byte(octet, text)?;
        set.insert_range(value, value);
        return Ok(set);
    };
    let close = rest
        .find(']')
        .ok_or(SiteProblem::UnclosedBracket { octet })?;
    let (list, junk) = (&rest[..close], &rest[close + 1..]);
    if !junk.is_empty() {
        return Err(SiteProblem::TrailingJunk {
            octet,
            junk: junk.to_string(),
        });
    }
    if list.is_empty() {
        return Err(SiteProblem::EmptyBrackets { octet });
    }
    for item in list.split(';') {
        if item.is_empty() {
            return Err(SiteProblem::EmptyItem { octet });
        }
        let (from, to) = match item.split_once("..") {
            Some((from, to)) => (parse_byte(octet, from)?, parse_byte(octet, to)?),
            None => {
                let value = parse_byte(octet, item)?;
                (value, value)
            }
        };
        if from > to {
            return Err(SiteProblem::ReversedRange { octet, from, to });
        }
        set.insert_range(from, to);
    }
    Ok(set)
}

fn parse_byte(octet: usize, text: &str) -> Result<u8, SiteProblem> {
    if text.is_empty() {
        return Err(SiteProblem::EmptyOctet { octet });
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SiteProblem::NotANumber {
            octet,
            text: text.to_string(),
        });
    }
    let significant = text.trim_start_matches('0');
    if significant.len() > 3 {
        return Err(SiteProblem::OctetTooLarge {
            octet,
            text: text.to_string(),
        });
    }
    let value: u16 = significant.parse().unwrap_or(0);
    u8::try_from(value).map_err(|_| SiteProblem::OctetTooLarge {
        octet,
        text: text.to_string(),
    })
}

/// One `dnsbl_sites` entry: `domain[=filter][*weight]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DnsblSite {
    /// The list's zone, lower case, without a trailing dot.
    pub(crate) domain: String,
    /// Which answers count; `None`: any A answer.
    pub(crate) filter: Option<ScoreFilter>,
    /// What a matching answer adds to the score; negative for an allowlist (default 1).
    pub(crate) weight: i32,
}

impl DnsblSite {
    /// Parses one entry. As postscreen does, the weight is split off at the first `*`, then the
    /// filter at the first `=`.
    pub(crate) fn parse(entry: &str) -> Result<Self, DnsblError> {
        let err = |problem| DnsblError::Site {
            entry: shorten(entry),
            problem,
        };
        if entry.len() > MAX_ENTRY_LEN {
            return Err(err(SiteProblem::EntryTooLong {
                len: entry.len(),
                max: MAX_ENTRY_LEN,
            }));
        }
        let (rest, weight) = match entry.split_once('*') {
            Some((rest, weight)) => (rest, parse_weight(weight).map_err(err)?),
            None => (entry, 1),
        };
        let (domain, filter) = match rest.split_once('=') {
            Some((domain, filter)) => (domain, Some(ScoreFilter::parse(filter).map_err(err)?)),
            None => (rest, None),
        };
        let domain = parse_domain(domain).map_err(err)?;
        Ok(Self {
            domain,
            filter,
            weight,
        })
    }

    /// Whether any of the answer's addresses passes this entry's filter.
    pub(crate) fn matches(&self, answers: &[Ipv4Addr]) -> bool {
        match &self.filter {
            None => !answers.is_empty(),
            Some(filter) => answers.iter().any(|&a| filter.matches(a)),
        }
    }
}

impl FromStr for DnsblSite {
    type Err = DnsblError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for DnsblSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.domain)?;
        if let Some(filter) = &self.filter {
            write!(f, "={filter}")?;
        }
        if self.weight != 1 {
            write!(f, "*{}", self.weight)?;
        }
        Ok(())
    }
}

/// Error messages quote at most this much of an entry.
const QUOTED_MAX: usize = 80;

fn shorten(text: &str) -> String {
    if text.len() <= QUOTED_MAX {
        return text.to_string();
    }
    let mut quoted = text.to_string();
    truncate_at_char(&mut quoted, QUOTED_MAX);
    quoted.push('…');
    quoted
}

fn parse_weight(text: &str) -> Result<i32, SiteProblem> {
    if text.is_empty() {
        return Err(SiteProblem::EmptyWeight);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SiteProblem::BadWeight {
            text: text.to_string(),
        });
    }
    text.parse::<i32>()
        .ok()
        .filter(|w| (-MAX_WEIGHT..=MAX_WEIGHT).contains(w))
        .ok_or_else(|| SiteProblem::WeightOutOfRange {
            text: text.to_string(),
            max: MAX_WEIGHT,
        })
}

/// Checks a list domain: letters, digits, `-` and `_` in labels of 1 to 63 characters. One
/// trailing dot is dropped; the result is lower case.
fn parse_domain(text: &str) -> Result<String, SiteProblem> {
    let domain = text.strip_suffix('.').unwrap_or(text);
    if domain.is_empty() {
        return Err(SiteProblem::EmptyDomain);
    }
    if domain.len() > MAX_DOMAIN_LEN {
        return Err(SiteProblem::DomainTooLong {
            len: domain.len(),
            max: MAX_DOMAIN_LEN,
        });
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(SiteProblem::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(SiteProblem::LabelTooLong {
                label: label.to_string(),
            });
        }
        if let Some(ch) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(SiteProblem::LabelCharacter {
                label: label.to_string(),
                ch,
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(SiteProblem::LabelHyphen {
                label: label.to_string(),
            });
        }
    }
    Ok(domain.to_ascii_lowercase())
}

/// The parsed `dnsbl_sites`: every entry in order, and the distinct domains, each queried once
/// per client however many entries name it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DnsblSites {
    sites: Vec<DnsblSite>,
    /// For each site, the index of its domain in `domains`.
    site_domain: Vec<usize>,
    domains: Vec<String>,
}

impl DnsblSites {
    /// Parses `dnsbl_sites`: entries separated by commas and/or whitespace. Empty text: no
    /// lists, the test is off.
    pub(crate) fn parse(text: &str) -> Result<Self, DnsblError> {
        let entries = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty());
        let count = entries.clone().count();
        if count > MAX_SITES {
            return Err(DnsblError::TooManySites {
                count,
                max: MAX_SITES,
            });
        }
        let mut sites = Self::default();
        for entry in entries {
            sites.push(DnsblSite::parse(entry)?);
        }
        Ok(sites)
    }

    fn push(&mut self, site: DnsblSite) {
        let index = match self.domains.iter().position(|d| *d == site.domain) {
            Some(index) => index,
            None => {
                self.domains.push(site.domain.clone());
                self.domains.len() - 1
            }
        };
        self.site_domain.push(index);
        self.sites.push(site);
    }

    /// The entries, in configuration order.
    pub(crate) fn sites(&self) -> &[DnsblSite] {
        &self.sites
    }

    /// The distinct domains, in order of first appearance: one query each per client.
    pub(crate) fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Whether no list is configured (the DNSBL test is off).
    pub(crate) fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// Each entry with the index of its domain in [`domains`](Self::domains).
    pub(super) fn indexed_sites(&self) -> impl Iterator<Item = (&DnsblSite, usize)> {
        self.sites.iter().zip(self.site_domain.iter().copied())
    }
}

impl FromStr for DnsblSites {
    type Err = DnsblError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `dnsbl_reply_map`: the name a reply shows for a list, to keep a keyed query domain secret.
/// A plain name map, unlike smtpd's `rbl_reply_maps` templates. Domains match without regard
/// to case or a trailing dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReplyMap(HashMap<String, String>);

impl ReplyMap {
    /// Checks the shown names: printable ASCII, at most [`MAX_SHOWN_LEN`] bytes, since they go
    /// into SMTP replies.
    pub(crate) fn new(map: HashMap<String, String>) -> Result<Self, DnsblError> {
        if map.len() > MAX_REPLY_MAP {
            return Err(DnsblError::TooManyReplyNames {
                count: map.len(),
                max: MAX_REPLY_MAP,
            });
        }
        let mut out = HashMap::with_capacity(map.len());
        for (domain, shown) in map {
            let err = |problem| DnsblError::ReplyMap {
                domain: shorten(&domain),
                problem,
            };
            let shown_trimmed = shown.trim();
            if shown_trimmed.is_empty() {
                return Err(err(SiteProblem::EmptyShownName));
            }
            if shown_trimmed.len() > MAX_SHOWN_LEN {
                return Err(err(SiteProblem::ShownNameTooLong { max: MAX_SHOWN_LEN }));
            }
            if !shown_trimmed.bytes().all(|b| (b' '..=b'~').contains(&b)) {
                return Err(err(SiteProblem::ShownNameCharacter));
            }
            out.insert(map_key(&domain), shown_trimmed.to_string());
        }
        Ok(Self(out))
    }

    /// The name shown for `domain`: its mapped name, or the domain itself.
    pub(crate) fn shown<'a>(&'a self, domain: &'a str) -> &'a str {
        if self.0.is_empty() {
            return domain;
        }
        self.0
            .get(&map_key(domain))
            .map(String::as_str)
            .unwrap_or(domain)
    }
}

fn map_key(domain: &str) -> String {
    let domain = domain.trim();
    domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase()
}

/// The query name for a client in a list's zone: IPv4 octets reversed, IPv6 nibbles reversed,
/// then the zone (`dnsblog.c`). An IPv4-mapped IPv6 client is queried as the IPv4 address it is.
pub(crate) fn query_name(client: IpAddr, domain: &str) -> String {
    match canonical(client) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{domain}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + domain.len());
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    name.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    name.push('.');
                }
            }
            name.push_str(domain);
            name
        }
    }
}

#[cfg(test)]
mod tests;
