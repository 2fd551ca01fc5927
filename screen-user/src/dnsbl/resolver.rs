//! hickory-resolver set up for the lists, in the place of `dnsblog(8)`'s resolver calls: the
//! host's resolver or explicit servers ([`DnsServers`]), a shared cache that keeps answers for
//! their TTL (negative ones for the SOA's), and one A lookup bounded by `dnsbl_timeout`, whose
//! [`Answer`] the lookups and the health check read. The one file that calls hickory.

use std::{
    net::{Ipv4Addr, SocketAddr},
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

use super::DnsblError;

/// Most A records of one answer that are looked at.
pub(crate) const MAX_ANSWERS: usize = 32;
/// Most explicit DNS servers.
pub(crate) const MAX_SERVERS: usize = 16;
/// Answers hickory keeps in its cache.
pub(crate) const DNS_CACHE_ENTRIES: u64 = 8_192;
/// The shortest time the resolver waits for one server's answer, however short
/// `dnsbl_timeout` is (which still bounds the lookup as a whole).
const MIN_RESOLVER_TIMEOUT: Duration = Duration::from_millis(100);

/// Which servers answer the queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DnsServers {
    /// The host's resolver configuration (`/etc/resolv.conf`): a local caching resolver is the
    /// norm on MX hosts.
    System,
    /// These servers (UDP, TCP for truncated answers).
    Explicit(Vec<SocketAddr>),
}

/// One answer from the resolver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// A records (at most [`MAX_ANSWERS`]) and their smallest TTL.
    Listed { addrs: Vec<Ipv4Addr>, ttl: Duration },
    /// No A record; the negative answer's TTL (from its SOA), when it had one.
    NotListed { ttl: Option<Duration> },
    /// No answer within `dnsbl_timeout`.
    TimedOut,
    /// The lookup failed; `why` in a few words.
    Failed { why: String },
}

impl Answer {
    /// Whether the lookup got no answer at all.
    pub(super) fn failed(&self) -> bool {
        matches!(self, Answer::TimedOut | Answer::Failed { .. })
    }
}

/// The lists' resolver: hickory's, with its cache, and `dnsbl_timeout`.
pub(super) struct Resolver {
    resolver: TokioResolver,
    /// `dnsbl_timeout`: the most one lookup may take, the resolver's retries included.
    timeout: Duration,
}

impl Resolver {
    /// Sets up the resolver; nothing is sent until the first lookup.
    pub(super) fn new(servers: &DnsServers, timeout: Duration) -> Result<Self, DnsblError> {
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
        Ok(Self {
            resolver: builder.build().map_err(resolver_error)?,
            timeout,
        })
    }

    /// Looks up the A records of `name`, within `dnsbl_timeout`.
    pub(super) async fn resolve(&self, name: &str) -> Answer {
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

    /// Drops the cached answer for `name`, so that the next lookup asks a server.
    pub(super) fn forget(&self, name: &str) {
        if let Ok(query) = Name::from_ascii(format!("{name}.")) {
            self.resolver.clear_lookup_cache(query, RecordType::A);
        }
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
