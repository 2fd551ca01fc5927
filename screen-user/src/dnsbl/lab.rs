//! The lab the lookup and health tests run against: rbldnsd serving the zones of the reference's
//! lab, a [`Dnsbl`] that asks it, and a log that keeps the lines.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    DnsServers, Dnsbl, DnsblConfig, DnsblLog, DnsblSites, ReplyMap, lookup::lock, testdns::Rbldnsd,
};

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

const SOA: &str = "$SOA 0 ns.test. admin.test. 1 1h 1h 1d 120\n";

/// The zones of the lab in the reference: bl.test lists 127.0.0.40 as 127.0.0.2 and
/// 127.0.0.42 as 127.0.0.99 (no filter accepts it), bl2.test lists 127.0.0.40 as
/// 127.0.0.4, wl.test allowlists 127.0.0.30 as 127.0.10.1 with a TTL of 300 s, v6.test lists
/// 2001:db8::/32, world.test lists everything, and every zone's negative TTL is 120 s.
pub(super) fn lab() -> Rbldnsd {
    let bl = format!("{SOA}$TTL 300\n127.0.0.2\n127.0.0.40 :127.0.0.2:\n127.0.0.42 :127.0.0.99:\n");
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
