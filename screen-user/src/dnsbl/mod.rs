//! DNS allow/deny lists: postscreen's DNSBL/DNSWL test (`postscreen_dnsbl.c`, and the
//! `dnsblog(8)` lookups it hands out).
//!
//! The pure parts come first and are tested without a network: the `dnsbl_sites` syntax
//! ([`DnsblSites`], [`DnsblSite`], [`ScoreFilter`]), `dnsbl_reply_map` ([`ReplyMap`]), query
//! names ([`query_name`]), scoring ([`DnsblSites::score`]) and the verdict ([`Score::verdict`]).
//!
//! [`Dnsbl`] does the lookups with hickory-resolver, against the host's resolver or explicit
//! servers. [`Dnsbl::start`] sends every list's query for a client at once and returns a
//! [`DnsblQuery`]; the greet wait reads its partial score when it ends
//! ([`DnsblQuery::score_now`]), and answers that come later are ignored for that connection, as
//! postscreen ignores them. Connections from one address share one set of queries. Answers are
//! cached by hickory for their TTL (negative ones for the SOA's), and a failed lookup counts as
//! "not listed" with a warning: DNS trouble never blocks a client.
//!
//! Beyond postscreen, [`Dnsbl::health_check`] asks every list for its test points and suspends a
//! list that lists the world or does not answer, until it recovers.

use std::{
    collections::{HashMap, hash_map::Entry},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    str::FromStr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::{
        op::ResponseCode,
        rr::{Name, RData, RecordType},
    },
};
use tokio::{sync::watch, task::JoinSet};

use crate::address::canonical;
use crate::maillog::MailLog;

/// Most entries `dnsbl_sites` may hold. Real configurations use a handful; every entry costs
/// a query per new client.
pub const MAX_SITES: usize = 100;
/// Longest entry, in bytes.
pub const MAX_ENTRY_LEN: usize = 512;
/// Longest list domain: a query name is at most 253 characters, and an IPv6 client's reversed
/// nibbles take 64 of them.
pub const MAX_DOMAIN_LEN: usize = 253 - 64;
/// Largest weight, either sign. Keeps every possible score far inside an `i32`.
pub const MAX_WEIGHT: i32 = 1_000_000;
/// Most `dnsbl_reply_map` entries.
pub const MAX_REPLY_MAP: usize = 1_000;
/// Longest name shown in a reply.
pub const MAX_SHOWN_LEN: usize = 255;
/// Most A records of one answer that are looked at.
pub const MAX_ANSWERS: usize = 32;
/// Most explicit DNS servers.
pub const MAX_SERVERS: usize = 16;
/// Most client addresses whose lookups are shared at once; past this, a new client's lookups
/// are not shared (the daemon's connection limits still bound them).
pub const MAX_SHARED_CLIENTS: usize = 10_000;
/// Answers hickory keeps in its cache.
pub const DNS_CACHE_ENTRIES: u64 = 8_192;
/// The shortest time the resolver waits for one server's answer, however short
/// `dnsbl_timeout` is (which still bounds the lookup as a whole).
const MIN_RESOLVER_TIMEOUT: Duration = Duration::from_millis(100);
/// `dnsbl_timeout`'s default (postscreen: 10s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The test point every list must list (RFC 5782 §5).
pub const TEST_POINT_LISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The test point no list may list (RFC 5782 §5).
pub const TEST_POINT_UNLISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// What is wrong with one `dnsbl_sites` entry or `dnsbl_reply_map` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SiteProblem {
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

/// A DNSBL setting or resolver that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsblError {
    #[error("bad dnsbl_sites entry {entry:?}: {problem}")]
    Site { entry: String, problem: SiteProblem },
    #[error("dnsbl_sites has {count} entries, more than the {max} allowed")]
    TooManySites { count: usize, max: usize },
    #[error("bad dnsbl_reply_map entry for {domain:?}: {problem}")]
    ReplyMap {
        domain: String,
        problem: SiteProblem,
    },
    #[error("dnsbl_reply_map has {count} entries, more than the {max} allowed")]
    TooManyReplyNames { count: usize, max: usize },
    #[error("dns_servers has {count} entries, more than the {max} allowed")]
    TooManyServers { count: usize, max: usize },
    #[error("dns_servers is empty")]
    NoServers,
    #[error("cannot set up the DNS resolver: {why}")]
    Resolver { why: String },
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
pub struct ScoreFilter {
    octets: [OctetSet; 4],
    text: String,
}

impl ScoreFilter {
    /// Parses a filter. The text must already be bounded (entries are at most
    /// [`MAX_ENTRY_LEN`] bytes).
    pub fn parse(text: &str) -> Result<Self, SiteProblem> {
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
    pub fn matches(&self, addr: Ipv4Addr) -> bool {
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
pub struct DnsblSite {
    /// The list's zone, lower case, without a trailing dot.
    pub domain: String,
    /// Which answers count; `None`: any A answer.
    pub filter: Option<ScoreFilter>,
    /// What a matching answer adds to the score; negative for an allowlist (default 1).
    pub weight: i32,
}

impl DnsblSite {
    /// Parses one entry. As postscreen does, the weight is split off at the first `*`, then the
    /// filter at the first `=`.
    pub fn parse(entry: &str) -> Result<Self, DnsblError> {
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
    pub fn matches(&self, answers: &[Ipv4Addr]) -> bool {
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
    let mut end = QUOTED_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
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
pub struct DnsblSites {
    sites: Vec<DnsblSite>,
    /// For each site, the index of its domain in `domains`.
    site_domain: Vec<usize>,
    domains: Vec<String>,
}

impl DnsblSites {
    /// Parses `dnsbl_sites`: entries separated by commas and/or whitespace. Empty text: no
    /// lists, the test is off.
    pub fn parse(text: &str) -> Result<Self, DnsblError> {
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
    pub fn sites(&self) -> &[DnsblSite] {
        &self.sites
    }

    /// The distinct domains, in order of first appearance: one query each per client.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Whether no list is configured (the DNSBL test is off).
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// Scores one client from its lists' results, indexed like [`domains`](Self::domains) (a
    /// missing result counts as pending). Each entry adds its weight at most once, when any
    /// address of its domain's answer passes its filter. The name shown is the matching entry's
    /// with the largest weight (the first in configuration order among equals), through the
    /// reply map.
    pub fn score(&self, results: &[ListResult], reply_map: &ReplyMap) -> Score {
        let mut score = Score::default();
        let mut top: Option<(i32, usize)> = None;
        let mut dnswl_ttl: Option<Duration> = None;
        let mut negative_ttl: Option<Duration> = None;
        for (index, _) in self.domains.iter().enumerate() {
            match results.get(index).unwrap_or(&ListResult::Pending) {
                ListResult::Pending => score.pending += 1,
                ListResult::Failed => score.failed += 1,
                ListResult::Suspended => score.suspended += 1,
                ListResult::NotListed { ttl } => negative_ttl = min_ttl(negative_ttl, *ttl),
                ListResult::Listed { .. } => {}
            }
        }
        for (site, &domain) in self.sites.iter().zip(&self.site_domain) {
            let Some(ListResult::Listed { addrs, ttl }) = results.get(domain) else {
                continue;
            };
            if !site.matches(addrs) {
                continue;
            }
            score.rank = score.rank.saturating_add(site.weight);
            if top.is_none_or(|(weight, _)| weight < site.weight) {
                top = Some((site.weight, domain));
            }
            if site.weight < 0 {
                dnswl_ttl = min_ttl(dnswl_ttl, Some(*ttl));
            }
        }
        score.name = top.map(|(_, domain)| reply_map.shown(&self.domains[domain]).to_string());
        score.pass_ttl = min_ttl(negative_ttl, dnswl_ttl);
        score
    }
}

impl FromStr for DnsblSites {
    type Err = DnsblError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn min_ttl(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `dnsbl_reply_map`: the name a reply shows for a list, to keep a keyed query domain secret.
/// A plain name map, unlike smtpd's `rbl_reply_maps` templates. Domains match without regard
/// to case or a trailing dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyMap(HashMap<String, String>);

impl ReplyMap {
    /// Checks the shown names: printable ASCII, at most [`MAX_SHOWN_LEN`] bytes, since they go
    /// into SMTP replies.
    pub fn new(map: HashMap<String, String>) -> Result<Self, DnsblError> {
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
    pub fn shown<'a>(&'a self, domain: &'a str) -> &'a str {
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
pub fn query_name(client: IpAddr, domain: &str) -> String {
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

/// What one list said about a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListResult {
    /// No answer yet.
    Pending,
    /// Not asked: the list is suspended by the health check.
    Suspended,
    /// A records (at most [`MAX_ANSWERS`]) and their smallest TTL.
    Listed { addrs: Vec<Ipv4Addr>, ttl: Duration },
    /// No A record; the TTL of the negative answer (from its SOA), when it had one.
    NotListed { ttl: Option<Duration> },
    /// The lookup failed or timed out: counts as not listed (postscreen's empty reply).
    Failed,
}

/// A client's DNSBL score.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Score {
    /// The sum of the matching entries' weights (postscreen's "rank").
    pub rank: i32,
    /// The name the reply shows: the matching entry with the largest weight, through the reply
    /// map. `None` when no entry matched.
    pub name: Option<String>,
    /// The shortest TTL of the answers a pass rests on: negative answers' SOA TTLs and the A
    /// TTLs of matching allowlist (negative-weight) entries.
    pub pass_ttl: Option<Duration>,
    /// Lists that had not answered when the score was read.
    pub pending: usize,
    /// Lists whose lookup failed.
    pub failed: usize,
    /// Lists not asked because they are suspended.
    pub suspended: usize,
}

/// The DNSBL options that turn a score into a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// `dnsbl_threshold`: a client fails at this rank or above (default 1).
    pub threshold: i32,
    /// `dnsbl_allowlist_threshold`: when negative, a client at or below it that failed
    /// nothing is allowlisted (default 0: off).
    pub allowlist_threshold: i32,
    /// `dnsbl_min_ttl`: the shortest DNSBL pass (default 60s).
    pub min_ttl: Duration,
    /// `dnsbl_max_ttl`: the longest DNSBL pass (default 1h).
    pub max_ttl: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            threshold: 1,
            allowlist_threshold: 0,
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3_600),
        }
    }
}

impl Thresholds {
    /// A DNS TTL clamped to `min_ttl`…`max_ttl`; no TTL gives the minimum. Never panics, even
    /// when the two are the wrong way round (the maximum wins).
    pub fn clamp_ttl(&self, ttl: Option<Duration>) -> Duration {
        ttl.unwrap_or(self.min_ttl)
            .max(self.min_ttl)
            .min(self.max_ttl)
    }
}

/// The outcome of the DNSBL test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The rank reached `dnsbl_threshold`: log `DNSBL rank N for [a]:p` and apply
    /// `dnsbl_action`; `name` goes into the reply.
    Listed { rank: i32, name: String },
    /// Allowlisted by `dnsbl_allowlist_threshold`: the other tests are skipped and marked
    /// passed, for `ttl`.
    Allowlisted { ttl: Duration },
    /// Passed; the pass lasts `ttl`.
    Clean { ttl: Duration },
}

/// What a listed client's reply names when no entry matched, which only a `dnsbl_threshold`
/// of 0 or less allows: postscreen prints a null name, which the C library shows thus.
pub const NO_LIST_NAME: &str = "(null)";

impl Score {
    /// The verdict (`postscreen_early.c`): listed when `rank >= threshold`; allowlisted when
    /// the allowlist threshold is negative, `rank <= allowlist_threshold` and
    /// `other_test_failed` is false; clean otherwise. Pass TTLs are clamped to
    /// `min_ttl`…`max_ttl`.
    pub fn verdict(&self, thresholds: &Thresholds, other_test_failed: bool) -> Verdict {
        if self.rank >= thresholds.threshold {
            return Verdict::Listed {
                rank: self.rank,
                name: self.name.clone().unwrap_or_else(|| NO_LIST_NAME.into()),
            };
        }
        let ttl = thresholds.clamp_ttl(self.pass_ttl);
        if thresholds.allowlist_threshold < 0
            && self.rank <= thresholds.allowlist_threshold
            && !other_test_failed
        {
            Verdict::Allowlisted { ttl }
        } else {
            Verdict::Clean { ttl }
        }
    }

    /// Whether every list has answered (or failed, or was skipped).
    pub fn is_complete(&self) -> bool {
        self.pending == 0
    }
}

/// postscreen's log line for a failed client: `DNSBL rank 4 for [192.0.2.1]:4000`.
pub fn rank_log_line(rank: i32, client: SocketAddr) -> String {
    format!(
        "DNSBL rank {rank} for [{}]:{}",
        canonical(client.ip()),
        client.port()
    )
}

/// Where the lookups' log lines go: dnsblog's `addr … listed by domain …` lines, lookup
/// warnings, health changes.
pub trait DnsblLog: Send + Sync {
    fn info(&self, line: &str);
    fn warning(&self, line: &str);
}

impl DnsblLog for MailLog {
    fn info(&self, line: &str) {
        MailLog::info(self, line);
    }

    fn warning(&self, line: &str) {
        MailLog::warning(self, line);
    }
}

/// Which servers answer the queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsServers {
    /// The host's resolver configuration (`/etc/resolv.conf`): a local caching resolver is the
    /// norm on MX hosts.
    System,
    /// These servers (UDP, TCP for truncated answers).
    Explicit(Vec<SocketAddr>),
}

/// Everything [`Dnsbl`] is built from.
#[derive(Clone, Debug)]
pub struct DnsblConfig {
    pub sites: DnsblSites,
    pub reply_map: ReplyMap,
    /// `dnsbl_timeout`: the most one list's lookup may take.
    pub timeout: Duration,
    pub servers: DnsServers,
}

impl DnsblConfig {
    /// The lists, with no reply map, the default timeout and the host's resolver.
    pub fn new(sites: DnsblSites) -> Self {
        Self {
            sites,
            reply_map: ReplyMap::default(),
            timeout: DEFAULT_TIMEOUT,
            servers: DnsServers::System,
        }
    }
}

/// A list's health, as the last conclusive [`Dnsbl::health_check`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// In use (also before the first check).
    Healthy,
    /// In use, but it does not list its test point 127.0.0.2.
    TestPointMissing,
    /// Not asked and its weight ignored, until a check finds it healthy again.
    Suspended(SuspendReason),
}

impl HealthState {
    pub fn is_suspended(&self) -> bool {
        matches!(self, HealthState::Suspended(_))
    }
}

/// Why a list is suspended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuspendReason {
    /// It lists 127.0.0.1, which no list may: it would list every client.
    ListsTheWorld { answer: Ipv4Addr },
    /// Neither test point got an answer.
    NotAnswering { why: String },
}

impl fmt::Display for SuspendReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuspendReason::ListsTheWorld { answer } => write!(
                f,
                "it lists the test point {TEST_POINT_UNLISTED} (as {answer}), \
                 so it would list every client"
            ),
            SuspendReason::NotAnswering { why } => {
                write!(f, "no answer for its test points: {why}")
            }
        }
    }
}

/// One list's health after a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListHealth {
    pub domain: String,
    pub state: HealthState,
    /// Whether this check changed the state (and logged it).
    pub changed: bool,
}

/// One list's counters, for a status command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListStats {
    pub domain: String,
    /// Lookups for clients (answered from hickory's cache or not).
    pub lookups: u64,
    /// Answers with at least one A record.
    pub listed: u64,
    /// Answers without one.
    pub not_listed: u64,
    /// Lookups that failed or timed out.
    pub failures: u64,
    pub health: HealthState,
}

#[derive(Default)]
struct ListCounters {
    lookups: AtomicU64,
    listed: AtomicU64,
    not_listed: AtomicU64,
    failures: AtomicU64,
}

struct List {
    domain: String,
    counters: ListCounters,
    suspended: AtomicBool,
    health: Mutex<HealthState>,
}

/// One answer from the resolver.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Listed { addrs: Vec<Ipv4Addr>, ttl: Duration },
    NotListed { ttl: Option<Duration> },
    TimedOut,
    Failed { why: String },
}

impl Answer {
    fn failed(&self) -> bool {
        matches!(self, Answer::TimedOut | Answer::Failed { .. })
    }
}

struct Inner {
    resolver: TokioResolver,
    sites: DnsblSites,
    reply_map: ReplyMap,
    timeout: Duration,
    lists: Vec<List>,
    log: Arc<dyn DnsblLog>,
    /// Lookups in progress or still held by a connection, by client address.
    shared: Mutex<HashMap<IpAddr, Weak<QueryShare>>>,
}

/// The DNSBL/DNSWL lookups. Cheap to clone; clones share the resolver, its cache, the shared
/// lookups and the counters.
#[derive(Clone)]
pub struct Dnsbl {
    inner: Arc<Inner>,
}

impl fmt::Debug for Dnsbl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dnsbl")
            .field("domains", &self.inner.sites.domains())
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Dnsbl {
    /// Sets up the resolver. Nothing is sent until the first [`start`](Self::start) or
    /// [`health_check`](Self::health_check); both must run inside a tokio runtime.
    pub fn new(config: DnsblConfig, log: Arc<dyn DnsblLog>) -> Result<Self, DnsblError> {
        let resolver = build_resolver(&config.servers, config.timeout)?;
        let lists = config
            .sites
            .domains()
            .iter()
            .map(|domain| List {
                domain: domain.clone(),
                counters: ListCounters::default(),
                suspended: AtomicBool::new(false),
                health: Mutex::new(HealthState::Healthy),
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                resolver,
                sites: config.sites,
                reply_map: config.reply_map,
                timeout: config.timeout,
                lists,
                log,
                shared: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configured lists.
    pub fn sites(&self) -> &DnsblSites {
        &self.inner.sites
    }

    /// Starts every list's query for `client` at once, or joins the queries already running
    /// for that address. Suspended lists are not asked.
    pub fn start(&self, client: IpAddr) -> DnsblQuery {
        let client = canonical(client);
        let mut shared = lock(&self.inner.shared);
        if let Some(share) = shared.get(&client).and_then(Weak::upgrade) {
            return DnsblQuery { share };
        }
        if shared.len() >= MAX_SHARED_CLIENTS {
            shared.retain(|_, share| share.strong_count() > 0);
        }
        let is_shared = shared.len() < MAX_SHARED_CLIENTS;
        let share = Arc::new(self.inner.launch(client, is_shared));
        if is_shared {
            shared.insert(client, Arc::downgrade(&share));
        }
        DnsblQuery { share }
    }

    /// Each list's counters and health.
    pub fn stats(&self) -> Vec<ListStats> {
        self.inner
            .lists
            .iter()
            .map(|list| ListStats {
                domain: list.domain.clone(),
                lookups: list.counters.lookups.load(Ordering::Relaxed),
                listed: list.counters.listed.load(Ordering::Relaxed),
                not_listed: list.counters.not_listed.load(Ordering::Relaxed),
                failures: list.counters.failures.load(Ordering::Relaxed),
                health: lock(&list.health).clone(),
            })
            .collect()
    }

    /// Asks every list for its test points, bypassing the cache: 127.0.0.2 must be listed,
    /// 127.0.0.1 must not (RFC 5782 §5). A list that lists 127.0.0.1, or answers for neither,
    /// is suspended; one that answers as it should is in use again. When only one of the two
    /// lookups fails, the check is inconclusive and the state stays. A change is logged once.
    pub async fn health_check(&self) -> Vec<ListHealth> {
        let mut probes = JoinSet::new();
        for index in 0..self.inner.lists.len() {
            let inner = Arc::clone(&self.inner);
            probes.spawn(async move { (index, inner.probe(index).await) });
        }
        let mut out: Vec<Option<ListHealth>> = vec![None; self.inner.lists.len()];
        while let Some(joined) = probes.join_next().await {
            if let Ok((index, health)) = joined {
                out[index] = Some(health);
            }
        }
        out.into_iter().flatten().collect()
    }

    #[cfg(test)]
    fn shared_clients(&self) -> usize {
        lock(&self.inner.shared).len()
    }
}

fn build_resolver(servers: &DnsServers, timeout: Duration) -> Result<TokioResolver, DnsblError> {
    let resolver_error = |e: NetError| DnsblError::Resolver { why: e.to_string() };
    let mut builder = match servers {
        DnsServers::System => TokioResolver::builder_tokio().map_err(resolver_error)?,
        DnsServers::Explicit(addrs) => {
            if addrs.is_empty() {
                return Err(DnsblError::NoServers);
            }
            if addrs.len() > MAX_SERVERS {
                return Err(DnsblError::TooManyServers {
                    count: addrs.len(),
                    max: MAX_SERVERS,
                });
            }
            let servers = addrs
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        }
    };
    let options = builder.options_mut();
    // dnsbl_timeout bounds each list's lookup as a whole; the resolver's own retries must fit.
    options.timeout = options.timeout.min(timeout).max(MIN_RESOLVER_TIMEOUT);
    options.cache_size = DNS_CACHE_ENTRIES;
    options.use_hosts_file = ResolveHosts::Never;
    builder.build().map_err(resolver_error)
}

impl Inner {
    fn launch(self: &Arc<Self>, client: IpAddr, shared: bool) -> QueryShare {
        // One look at the health flags, so a check running meanwhile cannot leave a list
        // pending with no lookup to answer it.
        let asked: Vec<bool> = self
            .lists
            .iter()
            .map(|list| !list.suspended.load(Ordering::Relaxed))
            .collect();
        let results = asked
            .iter()
            .map(|&asked| {
                if asked {
                    ListResult::Pending
                } else {
                    ListResult::Suspended
                }
            })
            .collect();
        let (done, _) = watch::channel(asked.iter().filter(|&&asked| !asked).count());
        let lookups = Arc::new(Lookups {
            results: Mutex::new(results),
            done,
        });
        for index in (0..asked.len()).filter(|&index| asked[index]) {
            let inner = Arc::clone(self);
            let lookups = Arc::clone(&lookups);
            tokio::spawn(async move {
                let result = inner.lookup(index, client).await;
                lookups.finish(index, result);
            });
        }
        QueryShare {
            inner: Arc::clone(self),
            client,
            lookups,
            shared,
        }
    }

    /// One list's lookup for a client, as dnsblog does it, with its log lines and counters.
    async fn lookup(&self, index: usize, client: IpAddr) -> ListResult {
        let list = &self.lists[index];
        let name = query_name(client, &list.domain);
        list.counters.lookups.fetch_add(1, Ordering::Relaxed);
        match self.resolve(&name).await {
            Answer::Listed { addrs, ttl } => {
                list.counters.listed.fetch_add(1, Ordering::Relaxed);
                for addr in &addrs {
                    self.log.info(&format!(
                        "addr {client} listed by domain {} as {addr}",
                        list.domain
                    ));
                }
                ListResult::Listed { addrs, ttl }
            }
            Answer::NotListed { ttl } => {
                list.counters.not_listed.fetch_add(1, Ordering::Relaxed);
                ListResult::NotListed { ttl }
            }
            Answer::TimedOut => {
                list.counters.failures.fetch_add(1, Ordering::Relaxed);
                self.log.warning(&format!(
                    "dnsblog reply timeout {} for {}",
                    show_timeout(self.timeout),
                    list.domain
                ));
                ListResult::Failed
            }
            Answer::Failed { why } => {
                list.counters.failures.fetch_add(1, Ordering::Relaxed);
                self.log.warning(&format!(
                    "dnsblog_query: lookup error for DNS query {name}: {why}"
                ));
                ListResult::Failed
            }
        }
    }

    /// Looks up the A records of `name`, within `dnsbl_timeout`.
    async fn resolve(&self, name: &str) -> Answer {
        let query = match Name::from_ascii(format!("{name}.")) {
            Ok(query) => query,
            Err(e) => {
                return Answer::Failed {
                    why: format!("invalid query name: {e}"),
                };
            }
        };
        match tokio::time::timeout(self.timeout, self.resolver.lookup(query, RecordType::A)).await {
            Err(_elapsed) => Answer::TimedOut,
            Ok(Ok(lookup)) => {
                let mut addrs = Vec::new();
                let mut ttl = u32::MAX;
                for record in lookup.answers() {
                    if let RData::A(a) = &record.data
                        && addrs.len() < MAX_ANSWERS
                    {
                        addrs.push(a.0);
                        ttl = ttl.min(record.ttl);
                    }
                }
                if addrs.is_empty() {
                    Answer::NotListed { ttl: None }
                } else {
                    Answer::Listed {
                        addrs,
                        ttl: Duration::from_secs(u64::from(ttl)),
                    }
                }
            }
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(none)))) => Answer::NotListed {
                ttl: none.negative_ttl.map(|t| Duration::from_secs(u64::from(t))),
            },
            Ok(Err(NetError::Timeout)) => Answer::TimedOut,
            Ok(Err(e)) => Answer::Failed { why: describe(&e) },
        }
    }

    /// One list's health check.
    async fn probe(&self, index: usize) -> ListHealth {
        let list = &self.lists[index];
        let listed = query_name(TEST_POINT_LISTED.into(), &list.domain);
        let unlisted = query_name(TEST_POINT_UNLISTED.into(), &list.domain);
        for name in [&listed, &unlisted] {
            if let Ok(query) = Name::from_ascii(format!("{name}.")) {
                self.resolver.clear_lookup_cache(query, RecordType::A);
            }
        }
        let (listed, unlisted) = tokio::join!(self.resolve(&listed), self.resolve(&unlisted));
        let observed = assess(&listed, &unlisted);
        let mut state = lock(&list.health);
        let Some(new) = observed else {
            return ListHealth {
                domain: list.domain.clone(),
                state: state.clone(),
                changed: false,
            };
        };
        // Only a change of kind is news: a suspended list's reason is updated quietly.
        if std::mem::discriminant(&new) == std::mem::discriminant(&*state) {
            *state = new.clone();
            return ListHealth {
                domain: list.domain.clone(),
                state: new,
                changed: false,
            };
        }
        let domain = &list.domain;
        match &new {
            HealthState::Suspended(reason) => self
                .log
                .warning(&format!("dnsbl {domain} suspended: {reason}")),
            HealthState::TestPointMissing => self.log.warning(&format!(
                "dnsbl {domain}: the test point {TEST_POINT_LISTED} is not listed; \
                 the list stays in use"
            )),
            HealthState::Healthy => self.log.info(&format!(
                "dnsbl {domain} in use again: its test points answer as they should"
            )),
        }
        list.suspended.store(new.is_suspended(), Ordering::Relaxed);
        *state = new.clone();
        ListHealth {
            domain: domain.clone(),
            state: new,
            changed: true,
        }
    }
}

/// A list's health from its two test points' answers; `None` when only one lookup failed.
fn assess(listed: &Answer, unlisted: &Answer) -> Option<HealthState> {
    if let Answer::Listed { addrs, .. } = unlisted {
        return Some(HealthState::Suspended(SuspendReason::ListsTheWorld {
            answer: addrs.first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED),
        }));
    }
    match (listed.failed(), unlisted.failed()) {
        (true, true) => Some(HealthState::Suspended(SuspendReason::NotAnswering {
            why: describe_answer(listed),
        })),
        (true, false) | (false, true) => None,
        (false, false) => match listed {
            Answer::Listed { .. } => Some(HealthState::Healthy),
            _ => Some(HealthState::TestPointMissing),
        },
    }
}

fn describe_answer(answer: &Answer) -> String {
    match answer {
        Answer::TimedOut => "timed out".into(),
        Answer::Failed { why } => why.clone(),
        Answer::Listed { .. } | Answer::NotListed { .. } => "answered".into(),
    }
}

/// A resolver error in a few words.
fn describe(e: &NetError) -> String {
    match e {
        NetError::Timeout => "timed out".into(),
        NetError::NoConnections => "no name server could be reached".into(),
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            "server failure (SERVFAIL)".into()
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => {
            "query refused (REFUSED)".into()
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            format!("{code} (rcode {})", u16::from(*code))
        }
        other => other.to_string(),
    }
}

/// `10s` as postscreen writes `dnsbl_timeout`; sub-second values in milliseconds.
fn show_timeout(timeout: Duration) -> String {
    if timeout.subsec_nanos() == 0 {
        format!("{}s", timeout.as_secs())
    } else {
        format!("{}ms", timeout.as_millis())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The answers for one client, filled in by the lookup tasks.
struct Lookups {
    results: Mutex<Vec<ListResult>>,
    /// How many lists are done (answered, failed or skipped).
    done: watch::Sender<usize>,
}

impl Lookups {
    fn finish(&self, index: usize, result: ListResult) {
        let mut results = lock(&self.results);
        if let Some(slot @ ListResult::Pending) = results.get_mut(index) {
            *slot = result;
            drop(results);
            self.done.send_modify(|done| *done += 1);
        }
    }
}

/// One client's lookups, shared by its connections. The last connection to let go forgets
/// the address; lookups still running finish on their own, within `dnsbl_timeout`.
struct QueryShare {
    inner: Arc<Inner>,
    client: IpAddr,
    lookups: Arc<Lookups>,
    shared: bool,
}

impl Drop for QueryShare {
    fn drop(&mut self) {
        // The lookups run on after the last connection lets go, each bounded by
        // `dnsbl_timeout`, as postscreen's dnsblog requests do: a list slower than the greet
        // wait is still reported when it times out, and its answer still warms the cache.
        if self.shared {
            let mut shared = lock(&self.inner.shared);
            // Our own entry is dead now; a live one belongs to a newer set of lookups.
            if let Entry::Occupied(entry) = shared.entry(self.client)
                && entry.get().strong_count() == 0
            {
                entry.remove();
            }
        }
    }
}

/// A connection's view of its client's lookups.
pub struct DnsblQuery {
    share: Arc<QueryShare>,
}

impl fmt::Debug for DnsblQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsblQuery")
            .field("client", &self.share.client)
            .finish_non_exhaustive()
    }
}

impl DnsblQuery {
    /// The client the lookups are for (an IPv4-mapped address as IPv4).
    pub fn client(&self) -> IpAddr {
        self.share.client
    }

    /// Each list's result so far, indexed like [`DnsblSites::domains`].
    pub fn results(&self) -> Vec<ListResult> {
        lock(&self.share.lookups.results).clone()
    }

    /// The score from the answers in so far (postscreen reads it when the greet wait ends).
    pub fn score_now(&self) -> Score {
        let inner = &self.share.inner;
        let results = lock(&self.share.lookups.results);
        inner.sites.score(&results, &inner.reply_map)
    }

    /// Waits until every list has answered, failed or timed out, or until `deadline`, and
    /// returns the score then.
    pub async fn wait_all(&self, deadline: tokio::time::Instant) -> Score {
        let total = self.share.inner.lists.len();
        let mut done = self.share.lookups.done.subscribe();
        let _ = tokio::time::timeout_at(deadline, done.wait_for(|&n| n >= total)).await;
        self.score_now()
    }
}

/// Test helpers that run real DNS servers: rbldnsd, and a UDP forwarder in front of it that
/// counts queries and can swallow a zone's.
#[cfg(test)]
mod testdns {
    use std::{
        collections::{HashMap, HashSet},
        net::SocketAddr,
        os::unix::fs::PermissionsExt as _,
        path::PathBuf,
        process::{Child, Command, Stdio},
        sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        time::{Duration, Instant},
    };

    use tokio::net::UdpSocket;

    const RBLDNSD: &str = "/usr/sbin/rbldnsd";

    /// rbldnsd on 127.0.0.1 with the given zones: `(zone, dataset type, file contents)`.
    pub struct Rbldnsd {
        child: Child,
        dir: PathBuf,
        pub addr: SocketAddr,
    }

    impl Rbldnsd {
        pub fn start(zones: &[(&str, &str, &str)]) -> Self {
            assert!(
                std::path::Path::new(RBLDNSD).exists(),
                "{RBLDNSD} is missing: apt-get install rbldnsd"
            );
            static SEQ: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "smtp-screen-dnsbl-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            // rbldnsd drops root for its own user, which must read the zone files.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let mut args = Vec::new();
            for (zone, kind, data) in zones {
                let file = format!("{zone}.txt");
                let path = dir.join(&file);
                std::fs::write(&path, data).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
                args.push(format!("{zone}:{kind}:{file}"));
            }
            for _ in 0..5 {
                let port = std::net::UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                let mut child = Command::new(RBLDNSD)
                    .arg("-n")
                    .args(["-b", &format!("127.0.0.1/{port}")])
                    .arg("-w")
                    .arg(&dir)
                    .args(["-c", "0"])
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start rbldnsd");
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
                if wait_ready(addr, &mut child) {
                    return Self { child, dir, addr };
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("rbldnsd did not start");
        }
    }

    /// Waits until the server answers a query, for at most 5 s.
    fn wait_ready(addr: SocketAddr, child: &mut Child) -> bool {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let query = build_query(0x4242, "version.bind");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            let _ = socket.send_to(&query, addr);
            let mut buf = [0u8; 512];
            if let Ok((n, _)) = socket.recv_from(&mut buf)
                && n >= 2
                && buf[..2] == [0x42, 0x42]
            {
                return true;
            }
        }
        false
    }

    impl Drop for Rbldnsd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A DNS query packet for `name`, type A.
    pub fn build_query(id: u16, name: &str) -> Vec<u8> {
        let mut packet = Vec::new();
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            packet.push(label.len() as u8);
            packet.extend_from_slice(label.as_bytes());
        }
        packet.extend_from_slice(&[0, 0, 1, 0, 1]);
        packet
    }

    /// The question name of a DNS packet, lower case; `None` when it does not parse.
    pub fn question_name(packet: &[u8]) -> Option<String> {
        let mut at = 12;
        let mut labels = Vec::new();
        for _ in 0..128 {
            let len = usize::from(*packet.get(at)?);
            if len == 0 {
                return Some(labels.join(".").to_ascii_lowercase());
            }
            if len > 63 {
                return None;
            }
            let label = packet.get(at + 1..at + 1 + len)?;
            labels.push(String::from_utf8_lossy(label).into_owned());
            at += 1 + len;
        }
        None
    }

    /// A UDP forwarder on 127.0.0.1 that counts queries by name and drops those for the
    /// zones in `blackhole`.
    pub struct Forwarder {
        pub addr: SocketAddr,
        counts: Arc<Mutex<HashMap<String, usize>>>,
        pub blackhole: Arc<Mutex<HashSet<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Forwarder {
        pub async fn start(upstream: SocketAddr, blackhole: &[&str]) -> Self {
            let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let addr = socket.local_addr().unwrap();
            let counts = Arc::new(Mutex::new(HashMap::new()));
            let blackhole = Arc::new(Mutex::new(
                blackhole
                    .iter()
                    .map(|z| z.to_string())
                    .collect::<HashSet<_>>(),
            ));
            let task = tokio::spawn({
                let counts = Arc::clone(&counts);
                let blackhole = Arc::clone(&blackhole);
                async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                            return;
                        };
                        let packet = buf[..n].to_vec();
                        let Some(name) = question_name(&packet) else {
                            continue;
                        };
                        *counts.lock().unwrap().entry(name.clone()).or_default() += 1;
                        let swallowed = blackhole
                            .lock()
                            .unwrap()
                            .iter()
                            .any(|zone| name == *zone || name.ends_with(&format!(".{zone}")));
                        if swallowed {
                            continue;
                        }
                        let socket = Arc::clone(&socket);
                        tokio::spawn(async move {
                            let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                            relay.send_to(&packet, upstream).await.unwrap();
                            let mut reply = vec![0u8; 4096];
                            if let Ok(Ok(n)) =
                                tokio::time::timeout(Duration::from_secs(2), relay.recv(&mut reply))
                                    .await
                            {
                                let _ = socket.send_to(&reply[..n], from).await;
                            }
                        });
                    }
                }
            });
            Self {
                addr,
                counts,
                blackhole,
                task,
            }
        }

        /// Queries seen for `name`.
        pub fn count(&self, name: &str) -> usize {
            self.counts.lock().unwrap().get(name).copied().unwrap_or(0)
        }

        /// Queries seen in all.
        pub fn total(&self) -> usize {
            self.counts.lock().unwrap().values().sum()
        }
    }

    impl Drop for Forwarder {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv6Addr, time::Instant};

    use super::{
        testdns::{Forwarder, Rbldnsd},
        *,
    };

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn filter(s: &str) -> ScoreFilter {
        ScoreFilter::parse(s).unwrap()
    }

    fn site_error(entry: &str) -> String {
        DnsblSite::parse(entry).unwrap_err().to_string()
    }

    // --- Site syntax ---

    #[test]
    fn parses_every_site_form() {
        let site = DnsblSite::parse("zen.example").unwrap();
        assert_eq!(site.domain, "zen.example");
        assert_eq!(site.filter, None);
        assert_eq!(site.weight, 1);

        let site = DnsblSite::parse("zen.example=127.0.0.[2..11]*3").unwrap();
        assert_eq!(site.domain, "zen.example");
        assert_eq!(site.filter.as_ref().unwrap().to_string(), "127.0.0.[2..11]");
        assert_eq!(site.weight, 3);

        let site = DnsblSite::parse("list.dnswl.example=127.0.[0..255].[1..3]*-4").unwrap();
        assert_eq!(site.weight, -4);
        assert_eq!(
            site.to_string(),
            "list.dnswl.example=127.0.[0..255].[1..3]*-4"
        );

        let site = DnsblSite::parse("bl.example*2").unwrap();
        assert_eq!((site.filter, site.weight), (None, 2));
        assert_eq!(DnsblSite::parse("bl.example*+2").unwrap().weight, 2);
        assert_eq!(DnsblSite::parse("bl.example*0").unwrap().weight, 0);
        assert_eq!(DnsblSite::parse("bl.example=127.0.0.2").unwrap().weight, 1);

        // Case and one trailing dot do not make another domain.
        assert_eq!(
            DnsblSite::parse("ZEN.Example.").unwrap().domain,
            "zen.example"
        );
        // Keyed zones: digits, '_' and '-' in labels.
        assert_eq!(
            DnsblSite::parse("abc_123-key.zen.dq.example")
                .unwrap()
                .domain,
            "abc_123-key.zen.dq.example"
        );
        assert_eq!("bl.example*5".parse::<DnsblSite>().unwrap().weight, 5);
    }

    #[test]
    fn site_list_separators_and_repeated_domains() {
        let sites = DnsblSites::parse(
            " zen.example=127.0.0.[2..11]*3, bl.example\n\tdnswl.example=127.0.[0..255].0*-2 ,,\
             dnswl.example=127.0.[0..255].1*-3 dnswl.example=127.0.[0..255].[2..3]*-4 ",
        )
        .unwrap();
        assert_eq!(sites.sites().len(), 5);
        assert_eq!(
            sites.domains(),
            ["zen.example", "bl.example", "dnswl.example"]
        );
        assert!(!sites.is_empty());
        assert!(DnsblSites::parse("").unwrap().is_empty());
        assert!(DnsblSites::parse(" ,\n, ").unwrap().is_empty());
    }

    #[test]
    fn the_list_is_bounded() {
        let text = (0..MAX_SITES)
            .map(|i| format!("bl{i}.example"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(DnsblSites::parse(&text).unwrap().domains().len(), MAX_SITES);
        let text = format!("{text} one-more.example");
        assert_eq!(
            DnsblSites::parse(&text).unwrap_err().to_string(),
            format!(
                "dnsbl_sites has {} entries, more than the {MAX_SITES} allowed",
                MAX_SITES + 1
            )
        );
    }

    #[test]
    fn malformed_domains_are_named() {
        assert_eq!(
            site_error("=127.0.0.2"),
            "bad dnsbl_sites entry \"=127.0.0.2\": the domain is empty"
        );
        assert_eq!(
            site_error("*3"),
            "bad dnsbl_sites entry \"*3\": the domain is empty"
        );
        assert_eq!(
            site_error("bl..example"),
            "bad dnsbl_sites entry \"bl..example\": the domain has an empty label"
        );
        assert_eq!(
            site_error(".bl.example"),
            "bad dnsbl_sites entry \".bl.example\": the domain has an empty label"
        );
        assert_eq!(
            site_error("bl!.example"),
            "bad dnsbl_sites entry \"bl!.example\": label \"bl!\" has the character '!': \
             only letters, digits, '-' and '_' are allowed"
        );
        assert_eq!(
            site_error("bl.exämple"),
            "bad dnsbl_sites entry \"bl.exämple\": label \"exämple\" has the character 'ä': \
             only letters, digits, '-' and '_' are allowed"
        );
        assert_eq!(
            site_error("-bl.example"),
            "bad dnsbl_sites entry \"-bl.example\": label \"-bl\" starts or ends with '-'"
        );
        let long_label = "a".repeat(64);
        assert_eq!(
            site_error(&format!("{long_label}.example")),
            format!(
                "bad dnsbl_sites entry \"{long_label}.example\": label \"{long_label}\" is \
                 longer than 63 characters"
            )
        );
        let long_domain = ["abcdefghi"; 20].join(".");
        assert!(
            site_error(&long_domain).ends_with(&format!(
                "the domain is 199 characters long, more than {MAX_DOMAIN_LEN}"
            )),
            "{}",
            site_error(&long_domain)
        );
    }

    #[test]
    fn malformed_filters_are_named() {
        let cases = [
            ("bl.example=", "the filter after '=' is empty"),
            ("bl.example=127.0.2", "the filter has 3 octets, not 4"),
            ("bl.example=127.0.0.0.2", "the filter has 5 octets, not 4"),
            ("bl.example=127.0..2", "octet 3 of the filter is empty"),
            ("bl.example=127.0.0.", "octet 4 of the filter is empty"),
            (
                "bl.example=127.0.0.256",
                "octet 4 of the filter: 256 is larger than 255",
            ),
            (
                "bl.example=1270.0.0.2",
                "octet 1 of the filter: 1270 is larger than 255",
            ),
            (
                "bl.example=127.0.0.99999999999999999999",
                "octet 4 of the filter: 99999999999999999999 is larger than 255",
            ),
            (
                "bl.example=127.0.0.x",
                "octet 4 of the filter: \"x\" is not a number",
            ),
            (
                "bl.example=127.0.0.-1",
                "octet 4 of the filter: \"-1\" is not a number",
            ),
            (
                "bl.example=127.0.0.2x",
                "octet 4 of the filter: \"2x\" is not a number",
            ),
            (
                "bl.example=127.0.0.[11..2]",
                "octet 4 of the filter: the range 11..2 is reversed",
            ),
            (
                "bl.example=127.0.0.[]",
                "octet 4 of the filter: the brackets are empty",
            ),
            (
                "bl.example=127.0.0.[2;;3]",
                "octet 4 of the filter: an empty item between ';'",
            ),
            (
                "bl.example=127.0.0.[2;]",
                "octet 4 of the filter: an empty item between ';'",
            ),
            ("bl.example=127.0.0.[2..]", "octet 4 of the filter is empty"),
            ("bl.example=127.0.0.[..2]", "octet 4 of the filter is empty"),
            (
                "bl.example=127.0.0.[2...4]",
                "octet 4 of the filter: \".4\" is not a number",
            ),
            (
                "bl.example=127.0.0.[2..300]",
                "octet 4 of the filter: 300 is larger than 255",
            ),
            (
                "bl.example=127.0.0.[2",
                "octet 4 of the filter: '[' is not closed",
            ),
            (
                "bl.example=127.0.[0.0.2",
                "octet 3 of the filter: '[' is not closed",
            ),
            (
                "bl.example=127.0.0.2]",
                "octet 4 of the filter: ']' without '['",
            ),
            (
                "bl.example=127.0.0.[[2]]",
                "octet 4 of the filter: '[' inside brackets",
            ),
            (
                "bl.example=127.0.0.[2]x",
                "octet 4 of the filter: unexpected \"x\" after ']'",
            ),
            (
                "bl.example=127.0.0.x[2]",
                "octet 4 of the filter: \"x\" is not a number",
            ),
            (
                "bl.example=127.0.0.2=3",
                "octet 4 of the filter: \"2=3\" is not a number",
            ),
        ];
        for (entry, why) in cases {
            assert_eq!(
                site_error(entry),
                format!("bad dnsbl_sites entry {entry:?}: {why}"),
                "{entry}"
            );
        }
    }

    #[test]
    fn malformed_weights_are_named() {
        let cases = [
            ("bl.example*", "the weight after '*' is empty"),
            ("bl.example*x", "the weight \"x\" is not an integer"),
            ("bl.example*3x", "the weight \"3x\" is not an integer"),
            ("bl.example*1.5", "the weight \"1.5\" is not an integer"),
            ("bl.example*-", "the weight \"-\" is not an integer"),
            ("bl.example* 3", "the weight \" 3\" is not an integer"),
            ("bl.example*--3", "the weight \"--3\" is not an integer"),
            ("bl.example*3*4", "the weight \"3*4\" is not an integer"),
            // postscreen splits off the weight first: a filter after it is junk.
            (
                "bl.example*3=127.0.0.2",
                "the weight \"3=127.0.0.2\" is not an integer",
            ),
            (
                "bl.example*1000001",
                "the weight 1000001 is beyond ±1000000",
            ),
            (
                "bl.example*-99999999999",
                "the weight -99999999999 is beyond ±1000000",
            ),
        ];
        for (entry, why) in cases {
            assert_eq!(
                site_error(entry),
                format!("bad dnsbl_sites entry {entry:?}: {why}"),
                "{entry}"
            );
        }
        assert_eq!(
            DnsblSite::parse("bl.example*-1000000").unwrap().weight,
            -MAX_WEIGHT
        );
    }

    #[test]
    fn oversized_and_garbage_entries_are_refused() {
        let long = format!("bl.example={}", "1".repeat(MAX_ENTRY_LEN));
        let err = site_error(&long);
        assert!(
            err.ends_with(&format!(
                "it is {} bytes long, more than {MAX_ENTRY_LEN}",
                long.len()
            )),
            "{err}"
        );
        // The message quotes a bounded part of it.
        assert!(err.len() < 200, "{err}");
        for garbage in [
            "\0",
            "\u{7f}bl.example",
            "bl.example\u{1}",
            "[]",
            "=",
            "*",
            "=*",
            "é",
        ] {
            assert!(DnsblSite::parse(garbage).is_err(), "{garbage:?}");
        }
        // Byte soup never panics.
        let mut seed = 0x2545_f491_u32;
        for _ in 0..2_000 {
            let len = (seed % 24) as usize;
            let entry: String = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    b"0123456789.[];=*-+abc_\xc3"[(seed % 23) as usize] as char
                })
                .collect();
            let _ = DnsblSites::parse(&entry);
        }
    }

    // --- Filters ---

    #[test]
    fn filters_match_numbers_lists_and_ranges() {
        let exact = filter("127.0.0.2");
        assert!(exact.matches(ip4("127.0.0.2")));
        assert!(!exact.matches(ip4("127.0.0.3")));
        assert!(!exact.matches(ip4("127.0.1.2")));

        let range = filter("127.0.0.[2..11]");
        for last in 0..=255u8 {
            assert_eq!(
                range.matches(Ipv4Addr::new(127, 0, 0, last)),
                (2..=11).contains(&last),
                "{last}"
            );
        }
        assert!(!range.matches(ip4("128.0.0.2")));

        let list = filter("127.0.0.[2;4;6..8]");
        let hits: Vec<u8> = (0..=255u8)
            .filter(|&d| list.matches(Ipv4Addr::new(127, 0, 0, d)))
            .collect();
        assert_eq!(hits, [2, 4, 6, 7, 8]);

        let dnswl = filter("127.0.[0..255].[1..3]");
        assert!(dnswl.matches(ip4("127.0.10.1")));
        assert!(dnswl.matches(ip4("127.0.255.3")));
        assert!(!dnswl.matches(ip4("127.0.10.0")));
        assert!(!dnswl.matches(ip4("127.1.10.1")));

        let edges = filter("[0..255].[0;255].000.[0..0]");
        assert!(edges.matches(ip4("9.255.0.0")));
        assert!(edges.matches(ip4("255.0.0.0")));
        assert!(!edges.matches(ip4("9.254.0.0")));
        assert!(!edges.matches(ip4("9.0.0.1")));
        assert_eq!(filter("127.0.0.[1;1;1]").to_string(), "127.0.0.[1;1;1]");
    }

    #[test]
    fn an_entry_matches_any_of_its_answers() {
        let site = DnsblSite::parse("bl.example=127.0.0.4").unwrap();
        assert!(site.matches(&[ip4("127.0.0.2"), ip4("127.0.0.4")]));
        assert!(!site.matches(&[ip4("127.0.0.2")]));
        assert!(!site.matches(&[]));
        let any = DnsblSite::parse("bl.example").unwrap();
        assert!(any.matches(&[ip4("10.9.8.7")]));
        assert!(!any.matches(&[]));
    }

    // --- Scoring ---

    fn listed(addrs: &[&str], ttl: u64) -> ListResult {
        ListResult::Listed {
            addrs: addrs.iter().map(|a| ip4(a)).collect(),
            ttl: Duration::from_secs(ttl),
        }
    }

    fn not_listed(ttl: Option<u64>) -> ListResult {
        ListResult::NotListed {
            ttl: ttl.map(Duration::from_secs),
        }
    }

    #[test]
    fn each_entry_adds_its_weight_once() {
        let sites = DnsblSites::parse("bl.test=127.0.0.[2..11]*3 bl2.test").unwrap();
        let score = sites.score(
            &[
                listed(&["127.0.0.2", "127.0.0.3", "127.0.0.4"], 300),
                listed(&["127.0.0.4"], 300),
            ],
            &ReplyMap::default(),
        );
        assert_eq!(score.rank, 4);
        assert_eq!(score.name.as_deref(), Some("bl.test"));
        assert_eq!((score.pending, score.failed), (0, 0));
    }

    #[test]
    fn repeated_domains_score_per_entry() {
        let sites = DnsblSites::parse(
            "zen.test=127.0.0.[2..3]*3 zen.test=127.0.0.[10..11]*2 zen.test=127.0.0.4 \
             dnswl.test=127.0.[0..255].0*-2 dnswl.test=127.0.[0..255].1*-3 \
             dnswl.test=127.0.[0..255].[2..3]*-4",
        )
        .unwrap();
        assert_eq!(sites.domains(), ["zen.test", "dnswl.test"]);
        let map = ReplyMap::default();
        let score = sites.score(
            &[
                listed(&["127.0.0.2", "127.0.0.10"], 60),
                not_listed(Some(120)),
            ],
            &map,
        );
        assert_eq!(score.rank, 5);
        assert_eq!(score.name.as_deref(), Some("zen.test"));
        let score = sites.score(
            &[listed(&["127.0.0.11"], 60), listed(&["127.0.10.1"], 300)],
            &map,
        );
        assert_eq!(score.rank, 2 - 3);
        let score = sites.score(&[not_listed(None), listed(&["127.0.10.2"], 300)], &map);
        assert_eq!(score.rank, -4);
        // Only an allowlist matched: it names the (unused) reply, as postscreen's first match.
        assert_eq!(score.name.as_deref(), Some("dnswl.test"));
        // A listing no filter accepts scores nothing.
        let score = sites.score(&[listed(&["127.0.0.99"], 60), not_listed(None)], &map);
        assert_eq!((score.rank, score.name), (0, None));
    }

    #[test]
    fn the_largest_weight_names_the_reply_through_the_map() {
        let sites =
            DnsblSites::parse("small.test big.test*5 other.test*5 keyed.secret.test*2").unwrap();
        let mut map = HashMap::new();
        map.insert("BIG.test.".to_string(), "public-bl.example".to_string());
        map.insert("keyed.secret.test".to_string(), " zen.example ".to_string());
        let map = ReplyMap::new(map).unwrap();
        let all = [
            listed(&["127.0.0.2"], 60),
            listed(&["127.0.0.2"], 60),
            listed(&["127.0.0.2"], 60),
            listed(&["127.0.0.2"], 60),
        ];
        let score = sites.score(&all, &map);
        assert_eq!(score.rank, 13);
        // big.test and other.test tie at 5: the first in the configuration wins.
        assert_eq!(score.name.as_deref(), Some("public-bl.example"));
        let score = sites.score(
            &[
                listed(&["127.0.0.2"], 60),
                not_listed(None),
                not_listed(None),
                listed(&["127.0.0.2"], 60),
            ],
            &map,
        );
        assert_eq!(score.rank, 3);
        assert_eq!(score.name.as_deref(), Some("zen.example"));
        assert_eq!(map.shown("unmapped.test"), "unmapped.test");
    }

    #[test]
    fn pending_failed_and_suspended_lists_score_nothing() {
        let sites = DnsblSites::parse("a.test*5 b.test*5 c.test*5 d.test").unwrap();
        let score = sites.score(
            &[
                ListResult::Pending,
                ListResult::Failed,
                ListResult::Suspended,
            ],
            &ReplyMap::default(),
        );
        assert_eq!(score.rank, 0);
        // The fourth result is missing: pending.
        assert_eq!((score.pending, score.failed, score.suspended), (2, 1, 1));
        assert!(!score.is_complete());
        // Extra results are ignored.
        let score = sites.score(&vec![not_listed(None); 9], &ReplyMap::default());
        assert!(score.is_complete());
        assert_eq!(score.rank, 0);
    }

    #[test]
    fn the_pass_ttl_comes_from_negative_answers_and_allowlists() {
        let sites = DnsblSites::parse("bl.test*2 bl2.test wl.test=127.0.10.[0..3]*-5").unwrap();
        let map = ReplyMap::default();
        let score = sites.score(
            &[
                not_listed(Some(120)),
                not_listed(Some(900)),
                listed(&["127.0.10.1"], 300),
            ],
            &map,
        );
        assert_eq!(score.pass_ttl, Some(Duration::from_secs(120)));
        let score = sites.score(
            &[
                not_listed(None),
                not_listed(None),
                listed(&["127.0.10.1"], 300),
            ],
            &map,
        );
        assert_eq!(score.pass_ttl, Some(Duration::from_secs(300)));
        // A DNSBL listing's TTL and an unmatched listing's do not count.
        let score = sites.score(
            &[
                listed(&["127.0.0.2"], 5),
                not_listed(None),
                listed(&["127.0.0.9"], 7),
            ],
            &map,
        );
        assert_eq!(score.pass_ttl, None);
    }

    #[test]
    fn reply_map_values_are_checked() {
        let bad = |value: &str| {
            let mut map = HashMap::new();
            map.insert("bl.test".to_string(), value.to_string());
            ReplyMap::new(map).unwrap_err().to_string()
        };
        assert_eq!(
            bad(""),
            "bad dnsbl_reply_map entry for \"bl.test\": the shown name is empty"
        );
        assert_eq!(
            bad("  "),
            "bad dnsbl_reply_map entry for \"bl.test\": the shown name is empty"
        );
        assert_eq!(
            bad("bl\r\n250 ok"),
            "bad dnsbl_reply_map entry for \"bl.test\": the shown name has a control or \
             non-ASCII character"
        );
        assert_eq!(
            bad("blé"),
            "bad dnsbl_reply_map entry for \"bl.test\": the shown name has a control or \
             non-ASCII character"
        );
        assert_eq!(
            bad(&"x".repeat(256)),
            "bad dnsbl_reply_map entry for \"bl.test\": the shown name is longer than 255 bytes"
        );
        let many: HashMap<String, String> = (0..=MAX_REPLY_MAP)
            .map(|i| (format!("bl{i}.test"), "x".to_string()))
            .collect();
        assert_eq!(
            ReplyMap::new(many).unwrap_err(),
            DnsblError::TooManyReplyNames {
                count: MAX_REPLY_MAP + 1,
                max: MAX_REPLY_MAP
            }
        );
    }

    // --- Verdicts and TTLs ---

    fn score(rank: i32, pass_ttl: Option<u64>) -> Score {
        Score {
            rank,
            name: Some("bl.test".into()),
            pass_ttl: pass_ttl.map(Duration::from_secs),
            ..Score::default()
        }
    }

    #[test]
    fn verdict_thresholds() {
        let defaults = Thresholds::default();
        assert_eq!(
            score(1, None).verdict(&defaults, false),
            Verdict::Listed {
                rank: 1,
                name: "bl.test".into()
            }
        );
        assert_eq!(
            score(0, Some(120)).verdict(&defaults, false),
            Verdict::Clean {
                ttl: Duration::from_secs(120)
            }
        );
        // The allowlist threshold 0 is off, however low the score.
        assert!(matches!(
            score(-100, None).verdict(&defaults, false),
            Verdict::Clean { .. }
        ));

        let t = Thresholds {
            threshold: 3,
            allowlist_threshold: -1,
            ..Thresholds::default()
        };
        assert!(matches!(
            score(3, None).verdict(&t, false),
            Verdict::Listed { rank: 3, .. }
        ));
        assert!(matches!(
            score(2, None).verdict(&t, false),
            Verdict::Clean { .. }
        ));
        assert!(matches!(
            score(0, None).verdict(&t, false),
            Verdict::Clean { .. }
        ));
        assert_eq!(
            score(-1, Some(300)).verdict(&t, false),
            Verdict::Allowlisted {
                ttl: Duration::from_secs(300)
            }
        );
        assert!(matches!(
            score(-5, None).verdict(&t, false),
            Verdict::Allowlisted { .. }
        ));
        // Another failed test rules the allowlist out.
        assert!(matches!(
            score(-5, None).verdict(&t, true),
            Verdict::Clean { .. }
        ));
        // The allowlist never overrides a listing (threshold below the allowlist threshold).
        let odd = Thresholds {
            threshold: -10,
            allowlist_threshold: -1,
            ..Thresholds::default()
        };
        assert!(matches!(
            score(-5, None).verdict(&odd, false),
            Verdict::Listed { .. }
        ));
        // A listing with no matching entry (threshold 0) shows postscreen's null name.
        let zero = Thresholds {
            threshold: 0,
            ..Thresholds::default()
        };
        assert_eq!(
            Score::default().verdict(&zero, false),
            Verdict::Listed {
                rank: 0,
                name: NO_LIST_NAME.into()
            }
        );
    }

    #[test]
    fn pass_ttls_are_clamped() {
        let t = Thresholds::default();
        let ttl = |s: Option<u64>| match score(0, s).verdict(&t, false) {
            Verdict::Clean { ttl } => ttl.as_secs(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ttl(None), 60);
        assert_eq!(ttl(Some(0)), 60);
        assert_eq!(ttl(Some(59)), 60);
        assert_eq!(ttl(Some(61)), 61);
        assert_eq!(ttl(Some(3_600)), 3_600);
        assert_eq!(ttl(Some(86_400)), 3_600);
        let backwards = Thresholds {
            min_ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(60),
            ..t
        };
        assert_eq!(
            backwards.clamp_ttl(Some(Duration::from_secs(300))),
            Duration::from_secs(60)
        );
        assert_eq!(backwards.clamp_ttl(None), Duration::from_secs(60));
    }

    #[test]
    fn rank_log_line_is_postscreens() {
        assert_eq!(
            rank_log_line(4, "127.0.0.40:59139".parse().unwrap()),
            "DNSBL rank 4 for [127.0.0.40]:59139"
        );
        assert_eq!(
            rank_log_line(2, "[2001:db8::1]:25".parse().unwrap()),
            "DNSBL rank 2 for [2001:db8::1]:25"
        );
        assert_eq!(
            rank_log_line(3, "[::ffff:192.0.2.1]:4000".parse().unwrap()),
            "DNSBL rank 3 for [192.0.2.1]:4000"
        );
    }

    // --- Query names ---

    #[test]
    fn query_names_reverse_octets_and_nibbles() {
        assert_eq!(
            query_name("192.0.2.1".parse().unwrap(), "zen.example"),
            "1.2.0.192.zen.example"
        );
        assert_eq!(
            query_name("2001:db8::25".parse().unwrap(), "v6.example"),
            "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.v6.example"
        );
        assert_eq!(
            query_name("2001:db8:abcd:12::ff00:42:8329".parse().unwrap(), "x"),
            "9.2.3.8.2.4.0.0.0.0.f.f.0.0.0.0.2.1.0.0.d.c.b.a.8.b.d.0.1.0.0.2.x"
        );
        assert_eq!(
            query_name("::ffff:127.0.0.40".parse().unwrap(), "bl.test"),
            "40.0.0.127.bl.test"
        );
        assert_eq!(query_name(Ipv6Addr::UNSPECIFIED.into(), "x").len(), 64 + 1);
        // The longest domain still makes a valid name.
        let domain = ["a".repeat(63), "b".repeat(63), "c".repeat(61)].join(".");
        assert_eq!(domain.len(), MAX_DOMAIN_LEN);
        let site = DnsblSite::parse(&domain).unwrap();
        let name = query_name(Ipv6Addr::LOCALHOST.into(), &site.domain);
        assert_eq!(name.len(), 253);
        assert!(Name::from_ascii(format!("{name}.")).is_ok());
    }

    // --- Health assessment ---

    fn answer_listed(a: &str) -> Answer {
        Answer::Listed {
            addrs: vec![ip4(a)],
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn health_from_test_points() {
        let nx = Answer::NotListed { ttl: None };
        let failed = Answer::Failed {
            why: "query refused (REFUSED)".into(),
        };
        assert_eq!(
            assess(&answer_listed("127.0.0.2"), &nx),
            Some(HealthState::Healthy)
        );
        assert_eq!(
            assess(&answer_listed("127.0.0.2"), &answer_listed("127.0.0.2")),
            Some(HealthState::Suspended(SuspendReason::ListsTheWorld {
                answer: ip4("127.0.0.2")
            }))
        );
        assert_eq!(
            assess(&failed, &answer_listed("127.255.255.254")),
            Some(HealthState::Suspended(SuspendReason::ListsTheWorld {
                answer: ip4("127.255.255.254")
            }))
        );
        assert_eq!(
            assess(&Answer::TimedOut, &Answer::TimedOut),
            Some(HealthState::Suspended(SuspendReason::NotAnswering {
                why: "timed out".into()
            }))
        );
        assert_eq!(
            assess(&failed, &Answer::TimedOut),
            Some(HealthState::Suspended(SuspendReason::NotAnswering {
                why: "query refused (REFUSED)".into()
            }))
        );
        assert_eq!(assess(&Answer::TimedOut, &nx), None);
        assert_eq!(assess(&answer_listed("127.0.0.2"), &failed), None);
        assert_eq!(assess(&nx, &nx), Some(HealthState::TestPointMissing));
    }

    #[test]
    fn timeouts_are_shown_as_postscreen_writes_them() {
        assert_eq!(show_timeout(Duration::from_secs(10)), "10s");
        assert_eq!(show_timeout(Duration::from_millis(300)), "300ms");
    }

    // --- Lookups against a real DNS server ---

    /// Collects log lines.
    #[derive(Default)]
    struct Captured(Mutex<Vec<String>>);

    impl DnsblLog for Captured {
        fn info(&self, line: &str) {
            lock(&self.0).push(line.to_string());
        }

        fn warning(&self, line: &str) {
            lock(&self.0).push(format!("warning: {line}"));
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            lock(&self.0).clone()
        }

        fn count(&self, needle: &str) -> usize {
            self.lines().iter().filter(|l| l.contains(needle)).count()
        }
    }

    const SOA: &str = "$SOA 0 ns.test. admin.test. 1 1h 1h 1d 120\n";

    /// The zones of the lab in the reference: bl.test lists 127.0.0.40 as 127.0.0.2 and
    /// 127.0.0.42 as 127.0.0.99 (no filter accepts it), bl2.test lists 127.0.0.40 as
    /// 127.0.0.4, wl.test allowlists 127.0.0.30 as 127.0.10.1 with a TTL of 300 s, v6.test lists
    /// 2001:db8::/32, world.test lists everything, and every zone's negative TTL is 120 s.
    fn lab() -> Rbldnsd {
        let bl =
            format!("{SOA}$TTL 300\n127.0.0.2\n127.0.0.40 :127.0.0.2:\n127.0.0.42 :127.0.0.99:\n");
        let bl2 = format!("{SOA}$TTL 300\n127.0.0.2\n127.0.0.40 :127.0.0.4:\n");
        let wl = format!("{SOA}$TTL 300\n127.0.0.2 :127.0.10.0:\n127.0.0.30 :127.0.10.1:\n");
        let v6 = format!("{SOA}$TTL 300\n2001:db8::/32 :127.0.0.3:\n");
        let world = format!("{SOA}$TTL 300\n0.0.0.0/0 :127.0.0.2:\n");
        let empty = format!("{SOA}$TTL 300\n192.0.2.1\n");
        Rbldnsd::start(&[
            ("bl.test", "ip4set", &bl),
            ("bl2.test", "ip4set", &bl2),
            ("wl.test", "ip4set", &wl),
            ("v6.test", "ip6trie", &v6),
            ("world.test", "ip4trie", &world),
            ("empty.test", "ip4set", &empty),
        ])
    }

    fn dnsbl(sites: &str, server: SocketAddr, timeout: Duration) -> (Dnsbl, Arc<Captured>) {
        let mut map = HashMap::new();
        map.insert("bl.test".to_string(), "public-bl.example".to_string());
        let log = Arc::new(Captured::default());
        let config = DnsblConfig {
            reply_map: ReplyMap::new(map).unwrap(),
            timeout,
            servers: DnsServers::Explicit(vec![server]),
            ..DnsblConfig::new(DnsblSites::parse(sites).unwrap())
        };
        let dnsbl = Dnsbl::new(config, log.clone()).unwrap();
        (dnsbl, log)
    }

    fn in_secs(secs: f64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs_f64(secs)
    }

    fn client(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const LAB_SITES: &str = "bl.test=127.0.0.[2..11]*3 bl2.test wl.test=127.0.[0..255].[0..3]*-5";

    #[tokio::test]
    async fn a_listed_client_reaches_the_threshold() {
        let server = lab();
        let (dnsbl, log) = dnsbl(LAB_SITES, server.addr, Duration::from_secs(5));
        let query = dnsbl.start(client("127.0.0.40"));
        let score = query.wait_all(in_secs(10.0)).await;
        assert!(score.is_complete(), "{score:?}");
        assert_eq!(score.rank, 4);
        assert_eq!(score.name.as_deref(), Some("public-bl.example"));
        assert_eq!(
            score.verdict(&Thresholds::default(), false),
            Verdict::Listed {
                rank: 4,
                name: "public-bl.example".into()
            }
        );
        let lines = log.lines();
        assert!(
            lines.contains(&"addr 127.0.0.40 listed by domain bl.test as 127.0.0.2".into()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"addr 127.0.0.40 listed by domain bl2.test as 127.0.0.4".into()),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        let stats = dnsbl.stats();
        assert_eq!(stats[0].domain, "bl.test");
        assert_eq!(
            (stats[0].lookups, stats[0].listed, stats[0].failures),
            (1, 1, 0)
        );
        assert_eq!((stats[2].lookups, stats[2].not_listed), (1, 1));

        // The same score below a higher threshold passes, for the negative answer's TTL.
        let high = Thresholds {
            threshold: 5,
            ..Thresholds::default()
        };
        assert_eq!(
            score.verdict(&high, false),
            Verdict::Clean {
                ttl: Duration::from_secs(120)
            }
        );
    }

    #[tokio::test]
    async fn clean_allowlisted_and_filtered_clients() {
        let server = lab();
        let (dnsbl, log) = dnsbl(LAB_SITES, server.addr, Duration::from_secs(5));
        let t = Thresholds {
            allowlist_threshold: -1,
            ..Thresholds::default()
        };

        let clean = dnsbl
            .start(client("127.0.0.11"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((clean.rank, clean.failed), (0, 0));
        assert_eq!(
            clean.verdict(&t, false),
            Verdict::Clean {
                ttl: Duration::from_secs(120)
            }
        );

        let dnswl = dnsbl
            .start(client("127.0.0.30"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!(dnswl.rank, -5);
        // The pass lasts as long as the shortest answer: here the negative TTL of 120 s.
        assert_eq!(
            dnswl.verdict(&t, false),
            Verdict::Allowlisted {
                ttl: Duration::from_secs(120)
            }
        );

        // Listed as 127.0.0.99: logged, but the filter does not accept it.
        let filtered = dnsbl
            .start(client("127.0.0.42"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((filtered.rank, filtered.name.clone()), (0, None));
        assert!(matches!(filtered.verdict(&t, false), Verdict::Clean { .. }));
        assert_eq!(
            log.count("addr 127.0.0.42 listed by domain bl.test as 127.0.0.99"),
            1
        );
    }

    #[tokio::test]
    async fn a_dnswl_alone_allowlists_for_its_a_ttl() {
        let server = lab();
        let (dnsbl, _log) = dnsbl(
            "wl.test=127.0.[0..255].[0..3]*-5",
            server.addr,
            Duration::from_secs(5),
        );
        let score = dnsbl
            .start(client("127.0.0.30"))
            .wait_all(in_secs(10.0))
            .await;
        let t = Thresholds {
            allowlist_threshold: -1,
            ..Thresholds::default()
        };
        assert_eq!(
            score.verdict(&t, false),
            Verdict::Allowlisted {
                ttl: Duration::from_secs(300)
            }
        );
        assert!(matches!(score.verdict(&t, true), Verdict::Clean { .. }));
    }

    #[tokio::test]
    async fn ipv6_clients_are_queried_by_nibbles() {
        let server = lab();
        let (dnsbl, log) = dnsbl(
            "v6.test=127.0.0.3*2 bl.test",
            server.addr,
            Duration::from_secs(5),
        );
        let score = dnsbl
            .start(client("2001:db8::25"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!(score.rank, 2);
        assert_eq!(score.name.as_deref(), Some("v6.test"));
        assert_eq!(
            log.count("addr 2001:db8::25 listed by domain v6.test as 127.0.0.3"),
            1
        );
        let outside = dnsbl
            .start(client("2001:db9::25"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((outside.rank, outside.failed), (0, 0));

        // An IPv4-mapped client is asked for as IPv4.
        let mapped = dnsbl
            .start(client("::ffff:127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!(mapped.rank, 1);
        assert_eq!(mapped.name.as_deref(), Some("public-bl.example"));
        assert_eq!(
            log.count("addr 127.0.0.40 listed by domain bl.test as 127.0.0.2"),
            1
        );
    }

    #[tokio::test]
    async fn a_silent_list_does_not_hold_the_score_past_its_deadline() {
        let server = lab();
        let forwarder = Forwarder::start(server.addr, &["dead.test"]).await;
        let (dnsbl, log) = dnsbl(
            "bl.test*2 dead.test*5",
            forwarder.addr,
            Duration::from_secs(10),
        );
        let query = dnsbl.start(client("127.0.0.40"));
        let start = Instant::now();
        let score = query.wait_all(in_secs(0.5)).await;
        let waited = start.elapsed();
        assert!(waited < Duration::from_millis(1_500), "{waited:?}");
        assert!(waited >= Duration::from_millis(450), "{waited:?}");
        // The partial score: bl.test answered, dead.test is still pending.
        assert_eq!((score.rank, score.pending), (2, 1));
        assert_eq!(query.score_now(), score);
        // It was asked (and maybe asked again: the resolver retransmits over UDP).
        assert!(forwarder.count("40.0.0.127.dead.test") >= 1);
        assert_eq!(log.count("warning"), 0);
    }

    #[tokio::test]
    async fn a_list_that_times_out_counts_as_not_listed_with_a_warning() {
        let server = lab();
        let forwarder = Forwarder::start(server.addr, &["dead.test"]).await;
        let (dnsbl, log) = dnsbl(
            "bl.test*2 dead.test*5",
            forwarder.addr,
            Duration::from_millis(400),
        );
        let start = Instant::now();
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        let waited = start.elapsed();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        assert!(score.is_complete());
        assert_eq!((score.rank, score.failed), (2, 1));
        assert_eq!(
            log.count("warning: dnsblog reply timeout 400ms for dead.test"),
            1
        );
        let stats = dnsbl.stats();
        assert_eq!(
            (stats[1].domain.as_str(), stats[1].failures),
            ("dead.test", 1)
        );
    }

    #[tokio::test]
    async fn a_dead_server_never_blocks_a_client() {
        // A socket that reads queries and never answers.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (dnsbl, log) = dnsbl(
            "bl.test bl2.test",
            silent.local_addr().unwrap(),
            Duration::from_millis(300),
        );
        let start = Instant::now();
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!((score.rank, score.failed), (0, 2));
        assert!(matches!(
            score.verdict(&Thresholds::default(), false),
            Verdict::Clean { .. }
        ));
        assert_eq!(log.count("warning: dnsblog reply timeout 300ms for"), 2);
    }

    #[tokio::test]
    async fn a_refused_query_is_a_lookup_error() {
        let server = lab();
        // rbldnsd refuses zones it does not serve.
        let (dnsbl, log) = dnsbl("bl.test nozone.test*9", server.addr, Duration::from_secs(5));
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((score.rank, score.failed), (1, 1));
        assert_eq!(
            log.count(
                "warning: dnsblog_query: lookup error for DNS query 40.0.0.127.nozone.test: \
                 query refused (REFUSED)"
            ),
            1,
            "{:?}",
            log.lines()
        );
    }

    #[tokio::test]
    async fn concurrent_connections_share_one_query_per_list() {
        let server = lab();
        let forwarder = Forwarder::start(server.addr, &[]).await;
        let (dnsbl, _log) = dnsbl(
            "bl.test=127.0.0.2*3 bl.test=127.0.0.4 bl2.test",
            forwarder.addr,
            Duration::from_secs(5),
        );
        let first = dnsbl.start(client("127.0.0.40"));
        let second = dnsbl.start(client("::ffff:127.0.0.40"));
        assert!(Arc::ptr_eq(&first.share, &second.share));
        let other = dnsbl.start(client("127.0.0.11"));
        assert!(!Arc::ptr_eq(&first.share, &other.share));
        assert_eq!(dnsbl.shared_clients(), 2);
        let (a, b) = tokio::join!(
            first.wait_all(in_secs(10.0)),
            second.wait_all(in_secs(10.0))
        );
        assert_eq!(a, b);
        assert_eq!(a.rank, 4);
        other.wait_all(in_secs(10.0)).await;
        // bl.test appears twice in the list and is asked once.
        assert_eq!(forwarder.count("40.0.0.127.bl.test"), 1);
        assert_eq!(forwarder.count("40.0.0.127.bl2.test"), 1);
        assert_eq!(forwarder.count("11.0.0.127.bl.test"), 1);
        assert_eq!(forwarder.total(), 4);
        // One lookup per list for the shared address, one for the other.
        assert!(dnsbl.stats().iter().all(|list| list.lookups == 2));
        // The address is forgotten when its last connection lets go.
        drop(first);
        assert_eq!(dnsbl.shared_clients(), 2);
        drop(second);
        drop(other);
        assert_eq!(dnsbl.shared_clients(), 0);
    }

    #[tokio::test]
    async fn answers_are_cached_for_their_ttl() {
        let server = lab();
        let forwarder = Forwarder::start(server.addr, &[]).await;
        let (dnsbl, log) = dnsbl(LAB_SITES, forwarder.addr, Duration::from_secs(5));
        for ip in ["127.0.0.40", "127.0.0.11"] {
            let first = dnsbl.start(client(ip)).wait_all(in_secs(10.0)).await;
            let sent = forwarder.total();
            let again = dnsbl.start(client(ip)).wait_all(in_secs(10.0)).await;
            assert_eq!(
                forwarder.total(),
                sent,
                "{ip}: a cached answer was asked again"
            );
            assert_eq!(first.rank, again.rank);
            assert!(again.is_complete());
        }
        // Listed (TTL 300) and negative (SOA 120) answers: three lists, two clients.
        assert_eq!(forwarder.total(), 6);
        // A cached listing is still logged for every new lookup, as dnsblog logs each request.
        assert_eq!(
            log.count("addr 127.0.0.40 listed by domain bl.test as 127.0.0.2"),
            2
        );
        assert_eq!(dnsbl.stats()[0].lookups, 4);
    }

    #[tokio::test]
    async fn the_health_check_suspends_bad_lists_and_resumes_them() {
        let server = lab();
        let forwarder = Forwarder::start(server.addr, &["dead.test"]).await;
        let (dnsbl, log) = dnsbl(
            "bl.test world.test*5 dead.test*5 empty.test",
            forwarder.addr,
            Duration::from_millis(500),
        );
        let health = dnsbl.health_check().await;
        let states: Vec<(&str, &HealthState, bool)> = health
            .iter()
            .map(|h| (h.domain.as_str(), &h.state, h.changed))
            .collect();
        assert_eq!(
            states,
            [
                ("bl.test", &HealthState::Healthy, false),
                (
                    "world.test",
                    &HealthState::Suspended(SuspendReason::ListsTheWorld {
                        answer: ip4("127.0.0.2")
                    }),
                    true
                ),
                (
                    "dead.test",
                    &HealthState::Suspended(SuspendReason::NotAnswering {
                        why: "timed out".into()
                    }),
                    true
                ),
                ("empty.test", &HealthState::TestPointMissing, true),
            ]
        );
        assert_eq!(
            log.count(
                "warning: dnsbl world.test suspended: it lists the test point 127.0.0.1 \
                 (as 127.0.0.2), so it would list every client"
            ),
            1,
            "{:?}",
            log.lines()
        );
        assert_eq!(
            log.count(
                "warning: dnsbl dead.test suspended: no answer for its test points: timed out"
            ),
            1
        );
        assert_eq!(
            log.count("warning: dnsbl empty.test: the test point 127.0.0.2 is not listed"),
            1
        );

        // Suspended lists are not asked and their weight is ignored.
        let sent = forwarder.total();
        let score = dnsbl
            .start(client("127.0.0.11"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((score.rank, score.suspended, score.failed), (0, 2, 0));
        assert_eq!(forwarder.total(), sent + 2);
        assert_eq!(forwarder.count("11.0.0.127.world.test"), 0);

        // No change, no new log line.
        let lines = log.lines().len();
        dnsbl.health_check().await;
        assert_eq!(log.lines().len(), lines);

        // A list that answers again but refuses stays suspended; the new reason is not news.
        forwarder.blackhole.lock().unwrap().clear();
        let health = dnsbl.health_check().await;
        assert_eq!(
            (health[2].state.clone(), health[2].changed),
            (
                HealthState::Suspended(SuspendReason::NotAnswering {
                    why: "query refused (REFUSED)".into()
                }),
                false
            )
        );
        assert_eq!(log.lines().len(), lines);
        assert!(dnsbl.stats()[1].health.is_suspended());
        assert!(!dnsbl.stats()[3].health.is_suspended());
    }

    #[tokio::test]
    async fn a_list_that_recovers_is_used_again() {
        let server = lab();
        let forwarder = Forwarder::start(server.addr, &["bl.test"]).await;
        let (dnsbl, log) = dnsbl("bl.test*3", forwarder.addr, Duration::from_millis(400));
        let health = dnsbl.health_check().await;
        assert!(health[0].state.is_suspended());
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((score.rank, score.suspended), (0, 1));

        forwarder.blackhole.lock().unwrap().clear();
        let health = dnsbl.health_check().await;
        assert_eq!(
            (health[0].state.clone(), health[0].changed),
            (HealthState::Healthy, true)
        );
        assert_eq!(
            log.count("dnsbl bl.test in use again: its test points answer as they should"),
            1
        );
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((score.rank, score.suspended), (3, 0));
    }

    #[test]
    fn the_resolver_is_set_up_outside_a_runtime() {
        let config = DnsblConfig {
            servers: DnsServers::Explicit(vec!["127.0.0.1:53".parse().unwrap()]),
            ..DnsblConfig::new(DnsblSites::parse("bl.test").unwrap())
        };
        let dnsbl = Dnsbl::new(config, Arc::new(Captured::default())).unwrap();
        assert_eq!(dnsbl.sites().domains(), ["bl.test"]);
        assert_eq!(dnsbl.stats()[0].health, HealthState::Healthy);
    }

    #[tokio::test]
    async fn explicit_server_lists_are_checked() {
        let log: Arc<dyn DnsblLog> = Arc::new(Captured::default());
        let config = |servers| DnsblConfig {
            servers: DnsServers::Explicit(servers),
            ..DnsblConfig::new(DnsblSites::parse("bl.test").unwrap())
        };
        assert_eq!(
            Dnsbl::new(config(vec![]), log.clone()).unwrap_err(),
            DnsblError::NoServers
        );
        let many = vec!["127.0.0.1:53".parse().unwrap(); MAX_SERVERS + 1];
        assert_eq!(
            Dnsbl::new(config(many), log.clone())
                .unwrap_err()
                .to_string(),
            format!(
                "dns_servers has {} entries, more than the {MAX_SERVERS} allowed",
                MAX_SERVERS + 1
            )
        );
        // No list: nothing to wait for.
        let none = Dnsbl::new(
            DnsblConfig {
                servers: DnsServers::Explicit(vec!["127.0.0.1:9".parse().unwrap()]),
                ..DnsblConfig::new(DnsblSites::default())
            },
            log,
        )
        .unwrap();
        let score = none.start(client("192.0.2.1")).wait_all(in_secs(5.0)).await;
        assert_eq!(score, Score::default());
    }
}
