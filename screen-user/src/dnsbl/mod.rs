//! DNS allow/deny lists: postscreen's DNSBL/DNSWL test (`postscreen_dnsbl.c`, and the
//! `dnsblog(8)` lookups it hands out), one file per concern:
//!
//! - `site.rs`: the `dnsbl_sites` syntax ([`DnsblSites`], [`DnsblSite`], [`ScoreFilter`](site::ScoreFilter)),
//!   `dnsbl_reply_map` ([`ReplyMap`]) and query names ([`query_name`]). Pure.
//! - `score.rs`: scoring ([`DnsblSites::score`]) and the verdict
//!   ([`Score::verdict`](score::Score::verdict), with the [`Thresholds`] that clamp a pass's
//!   TTL). Pure. The `DNSBL rank` line is the early stage's (`screen/early.rs`). Beside
//!   postscreen's rank, the [`SoundScore`] counts only answers inside 127.0.0.0/8: the one
//!   the kernel deny policy reads.
//! - `resolver.rs`: hickory-resolver against the host's resolver or explicit servers
//!   ([`DnsServers`]); its cache keeps answers for their TTL (negative ones for the SOA's).
//! - `lookup.rs`: [`Dnsbl::start`] sends every list's query for a client at once and returns
//!   a [`DnsblQuery`]; the greet wait reads its partial score when it ends
//!   ([`DnsblQuery::score_now`]), and answers that come later are ignored for that connection,
//!   as postscreen ignores them. Connections from one address share one set of queries. A
//!   failed lookup counts as "not listed" with a warning: DNS trouble never blocks a client.
//!   At most `dnsbl_lookup_limit` lookups are in flight (a new client beyond it is scored as
//!   DNS failed, with a warning), and a client gone before its score was read leaves none
//!   running. The lines go to a [`DnsblLog`].
//! - `health.rs`: beyond postscreen, [`Dnsbl::health_check`] asks every list for its test
//!   points and suspends a list that lists the world or does not answer, until it recovers;
//!   every suspension is published to [`Suspensions`] subscribers (the kernel deny policy
//!   revokes the denies the list's answers caused);
//!   [`Dnsbl::stats`] gives each list's counters and health, which the daemon writes to the
//!   `dnsbl.status` file for `smtp-screen status`.
//!
//! The site, score and health rules are tested without a network; the lookups and the health
//! check also against real DNS servers, rbldnsd and a forwarder that counts and swallows
//! queries, from the tests' one harness (`screen_tests::rbldnsd`); `lab.rs` holds the zones
//! they serve and a [`Dnsbl`] asking them.

mod health;
mod lookup;
mod resolver;
mod score;
mod site;

#[cfg(test)]
mod lab;

pub(crate) use self::{
    health::{HEALTH_CHECK_INTERVAL, Suspensions, create_status_file},
    lookup::{DEFAULT_TIMEOUT, Dnsbl, DnsblConfig, DnsblLog, DnsblQuery},
    resolver::DnsServers,
    score::{ListResult, SoundScore, Thresholds, Verdict},
    site::{DnsblSite, DnsblSites, MAX_REPLY_MAP, MAX_SITES, ReplyMap, SiteProblem, query_name},
};

/// A DNSBL setting or resolver that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DnsblError {
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
