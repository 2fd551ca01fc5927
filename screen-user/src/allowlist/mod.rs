//! The temporary allowlist: where clients' per-test pass times ([`TestTimes`]) are kept
//! between connections.
//!
//! The connection path sees a store only through [`AllowlistStore`]: a lookup when a client
//! connects and a record when its session ends, both without waiting on a disk or a network.
//! [`redb::AllowlistCache`] is the store on local disk; the administrative side (listing,
//! deleting, cleanup, closing) is the concrete store's own.

pub(crate) mod redb;

use std::{net::IpAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;

use crate::test_state::TestTimes;

pub use self::redb::{AllowlistCache, CacheError, CacheOptions, CacheStats};

/// Where the temporary allowlist lives and how it is cleaned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AllowlistSettings {
    pub(crate) state_dir: PathBuf,
    pub(crate) cleanup_interval: Duration,
    pub(crate) retention: Duration,
}

/// What the screening stages need of a temporary allowlist.
pub(crate) trait AllowlistStore: Send + Sync {
    /// The client's record, if it has one.
    fn get(&self, client: IpAddr) -> Option<TestTimes>;
    /// Stores the client's record; never waits (a store that cannot keep up counts the loss).
    fn record(&self, client: IpAddr, times: TestTimes);
    /// Whether a client inside `net` holds a pass that has not expired at Unix time `now`
    /// (an unsure store answers yes).
    fn passes_within(&self, net: IpNet, now: u64) -> bool;
}

impl AllowlistStore for AllowlistCache {
    fn get(&self, client: IpAddr) -> Option<TestTimes> {
        AllowlistCache::get(self, client)
    }

    fn record(&self, client: IpAddr, times: TestTimes) {
        AllowlistCache::record(self, client, times);
    }

    fn passes_within(&self, net: IpNet, now: u64) -> bool {
        AllowlistCache::passes_within(self, net, now)
    }
}
