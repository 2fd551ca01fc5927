//! The lab the lookup and health tests run against: rbldnsd serving the zones of the reference's
//! lab (the tests' own harness, `screen_tests::rbldnsd`, on loopback), a forwarder that can
//! leave a list unanswered, a [`Dnsbl`] that asks them, and a log that keeps the lines.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use screen_tests::rbldnsd::{Dataset, DnsForwarder, Rbldnsd, Zone};

use super::{DnsServers, Dnsbl, DnsblConfig, DnsblLog, DnsblSites, ReplyMap, lookup::lock};

/// Collects log lines.
#[derive(Default)]
pub(super) struct Captured(Mutex<Vec<String>>);

impl DnsblLog for Captured {
    fn info(&self, line: &str) {
        lock(&self.0).push(line.to_string());
    }

    fn warning(&self, line: &str) {
        lock(&self.0).push(format!("warning: {line}"));
    }
}

impl Captured {
    pub(super) fn lines(&self) -> Vec<String> {
        lock(&self.0).clone()
    }

    pub(super) fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }
}

/// The zones of the lab in the reference: bl.test lists 127.0.0.40 as 127.0.0.2 and
/// 127.0.0.42 as 127.0.0.99 (no filter accepts it), bl2.test lists 127.0.0.40 as
/// 127.0.0.4, wl.test allowlists 127.0.0.30 as 127.0.10.1, v6.test lists 2001:db8::/32,
/// world.test lists everything, error.test answers everyone 127.255.255.254; answers live
/// 300 s and negative answers 120 s.
pub(super) fn lab() -> Rbldnsd {
    let listed = |zone: &str, dataset, entries: &[(&str, [u8; 4])]| {
        entries
            .iter()
            .fold(Zone::new(zone, dataset), |zone, (entry, answer)| {
                zone.list(entry, Ipv4Addr::from(*answer))
            })
    };
    Rbldnsd::start_on_loopback(&[
        listed(
            "bl.test",
            Dataset::Ip4Set,
            &[
                ("127.0.0.2", [127, 0, 0, 2]),
                ("127.0.0.40", [127, 0, 0, 2]),
                ("127.0.0.42", [127, 0, 0, 99]),
            ],
        ),
        listed(
            "bl2.test",
            Dataset::Ip4Set,
            &[
                ("127.0.0.2", [127, 0, 0, 2]),
                ("127.0.0.40", [127, 0, 0, 4]),
            ],
        ),
        listed(
            "wl.test",
            Dataset::Ip4Set,
            &[
                ("127.0.0.2", [127, 0, 10, 0]),
                ("127.0.0.30", [127, 0, 10, 1]),
            ],
        ),
        listed(
            "v6.test",
            Dataset::Ip6Trie,
            &[("2001:db8::/32", [127, 0, 0, 3])],
        ),
        listed(
            "world.test",
            Dataset::Ip4Trie,
            &[("0.0.0.0/0", [127, 0, 0, 2])],
        ),
        listed(
            "empty.test",
            Dataset::Ip4Set,
            &[("192.0.2.1", [127, 0, 0, 2])],
        ),
        // A list that answers an error code for everyone, as Spamhaus answers queries that
        // come through a public resolver.
        listed(
            "error.test",
            Dataset::Ip4Trie,
            &[("0.0.0.0/0", [127, 255, 255, 254])],
        ),
    ])
    .expect("rbldnsd on loopback")
}

/// A forwarder in front of `server` that leaves the queries for the `silent` zones unanswered.
pub(super) fn forwarder(server: &Rbldnsd, silent: &[&str]) -> DnsForwarder {
    let forwarder = DnsForwarder::start_on_loopback(server.addr()).expect("DNS forwarder");
    for zone in silent {
        forwarder.swallow(zone);
    }
    forwarder
}

/// A [`Dnsbl`] asking `server` about `sites`, with `bl.test` shown as `public-bl.example`, and
/// the log it writes to.
pub(super) fn dnsbl(sites: &str, server: SocketAddr, timeout: Duration) -> (Dnsbl, Arc<Captured>) {
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

/// A deadline `secs` from now.
pub(super) fn in_secs(secs: f64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs_f64(secs)
}

/// A client address from text.
pub(super) fn client(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A DNSBL with a filter and a weight, a plain one, and a DNSWL.
pub(super) const LAB_SITES: &str =
    "bl.test=127.0.0.[2..11]*3 bl2.test wl.test=127.0.[0..255].[0..3]*-5";
