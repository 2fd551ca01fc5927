//! Dynamic deny entries: denials with an expiry, for one IPv4 address (`scr_dyn_v4`) or one IPv6
//! prefix of the configured length (`scr_dyn_v6`), in LRU hashes so that a flood of new sources
//! evicts the oldest entries instead of failing. The program ignores an entry once its time has
//! passed ([`DenyEntry::expires_ns`], on the monotonic clock); the daemon sweeps it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, OwnedFd},
    time::Duration,
};

use aya::maps::{HashMap, IterableMap as _, MapData, MapError};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use screen_common::{DenyEntry, DynKeyV4, DynKeyV6, Origin, map_name, mask_v6};

use super::MapFailure;
use super::batch::{self, BatchError};
use super::clock;

/// An error with a dynamic deny entry.
#[derive(Debug, thiserror::Error)]
pub enum DynamicError {
    #[error(transparent)]
    Map(#[from] MapFailure),
    /// The IPv6 dynamic deny map is keyed by a prefix longer than the one given.
    #[error(
        "{net} is wider than the IPv6 dynamic deny prefix /{configured}; \
         deny it without --ttl (a static entry) or give a /{configured} or longer"
    )]
    TooWide { net: IpNet, configured: u32 },
    /// IPv4 dynamic entries are single addresses.
    #[error(
        "{net}: IPv4 dynamic deny entries are single addresses (/32); deny a prefix without --ttl"
    )]
    V4Prefix { net: IpNet },
    /// The entry to delete is not there.
    #[error("{net} is not in the dynamic deny list")]
    NotListed { net: IpNet },
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// A map's descriptor could not be duplicated for the sweep.
    #[error("duplicating the descriptor of {name}: {source}")]
    Duplicate {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, DynamicError>;

/// A dynamic deny entry as the CLI shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DynamicEntry {
    /// `/32` for IPv4, the configured prefix for IPv6.
    pub net: IpNet,
    pub(crate) entry: DenyEntry,
}

impl DynamicEntry {
    /// Time left before the program ignores the entry; `None` once expired.
    pub(crate) fn remaining(&self, now_ns: u64) -> Option<Duration> {
        self.entry
            .expires_ns
            .checked_sub(now_ns)
            .filter(|&left| left > 0)
            .map(Duration::from_nanos)
    }
}

/// The network a dynamic entry for `net` covers: IPv4 /32, IPv6 masked to the configured
/// prefix `v6_prefix_len`. Rejects prefixes wider than that.
pub(crate) fn key_net(net: IpNet, v6_prefix_len: u32) -> Result<IpNet> {
    match net {
        IpNet::V4(n) if n.prefix_len() != 32 => Err(DynamicError::V4Prefix { net }),
        IpNet::V4(_) => Ok(net),
        IpNet::V6(n) => {
            let configured = v6_prefix_len.min(128);
            if u32::from(n.prefix_len()) < configured {
                return Err(DynamicError::TooWide { net, configured });
            }
            let addr = Ipv6Addr::from(mask_v6(n.addr().octets(), configured));
            Ok(IpNet::V6(
                Ipv6Net::new(addr, configured as u8).expect("prefix length within 128"),
            ))
        }
    }
}

/// The two dynamic deny maps.
pub(crate) struct DynamicDeny {
    v4: HashMap<MapData, DynKeyV4, DenyEntry>,
    v6: HashMap<MapData, DynKeyV6, DenyEntry>,
}

impl DynamicDeny {
    pub(crate) fn new(
        v4: HashMap<MapData, DynKeyV4, DenyEntry>,
        v6: HashMap<MapData, DynKeyV6, DenyEntry>,
    ) -> Self {
        Self { v4, v6 }
    }

    /// Adds or refreshes the entry covering `net` (IPv6 keyed by `v6_prefix_len` bits), to
    /// expire after `ttl`.
    pub(crate) fn add(
        &mut self,
        net: IpNet,
        v6_prefix_len: u32,
        ttl: Duration,
        origin: Origin,
        failures: u32,
    ) -> Result<DynamicEntry> {
        let entry = DenyEntry {
            expires_ns: clock::monotonic_ns().saturating_add(ttl.as_nanos() as u64),
            origin: origin as u32,
            failures,
        };
        let net = key_net(net, v6_prefix_len)?;
        let (result, name) = match net {
            IpNet::V4(n) => (self.v4.insert(v4_key(n), entry, 0), map_name::DYN_DENY_V4),
            IpNet::V6(n) => (self.v6.insert(v6_key(n), entry, 0), map_name::DYN_DENY_V6),
        };
        result.map_err(|source| MapFailure { name, source })?;
        Ok(DynamicEntry { net, entry })
    }

    /// Whether an unexpired entry covers `addr` at `now_ns`.
    pub(crate) fn covers(&self, addr: IpAddr, v6_prefix_len: u32, now_ns: u64) -> Result<bool> {
        let (found, name) = match key_net(IpNet::from(addr), v6_prefix_len)? {
            IpNet::V4(n) => (self.v4.get(&v4_key(n), 0), map_name::DYN_DENY_V4),
            IpNet::V6(n) => (self.v6.get(&v6_key(n), 0), map_name::DYN_DENY_V6),
        };
        match found {
            Ok(entry) => Ok(entry.expires_ns > now_ns),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(MapFailure { name, source }.into()),
        }
    }

    /// The entry covering `net`, expired or not.
    pub(crate) fn get(&self, net: IpNet, v6_prefix_len: u32) -> Result<Option<DynamicEntry>> {
        let net = key_net(net, v6_prefix_len)?;
        let (found, name) = match net {
            IpNet::V4(n) => (self.v4.get(&v4_key(n), 0), map_name::DYN_DENY_V4),
            IpNet::V6(n) => (self.v6.get(&v6_key(n), 0), map_name::DYN_DENY_V6),
        };
        match found {
            Ok(entry) => Ok(Some(DynamicEntry { net, entry })),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(MapFailure { name, source }.into()),
        }
    }

    /// Removes the entry covering `net`.
    pub(crate) fn remove(&mut self, net: IpNet, v6_prefix_len: u32) -> Result<()> {
        let (result, name) = match key_net(net, v6_prefix_len)? {
            IpNet::V4(n) => (self.v4.remove(&v4_key(n)), map_name::DYN_DENY_V4),
            IpNet::V6(n) => (self.v6.remove(&v6_key(n)), map_name::DYN_DENY_V6),
        };
        match result {
            Ok(()) => Ok(()),
            Err(MapError::KeyNotFound) => Err(DynamicError::NotListed { net }),
            Err(source) => Err(MapFailure { name, source }.into()),
        }
    }

    /// Every entry, expired ones included, IPv6 keys shown as `/v6_prefix_len`.
    pub(crate) fn entries(&self, v6_prefix_len: u32) -> Result<Vec<DynamicEntry>> {
        let prefix = v6_prefix_len.min(128) as u8;
        let mut out = Vec::new();
        for item in self.v4.iter() {
            let (key, entry) = item.map_err(|source| MapFailure {
                name: map_name::DYN_DENY_V4,
                source,
            })?;
            let net = Ipv4Net::new(Ipv4Addr::from(key.addr), 32).expect("/32 is valid");
            out.push(DynamicEntry {
                net: IpNet::V4(net),
                entry,
            });
        }
        for item in self.v6.iter() {
            let (key, entry) = item.map_err(|source| MapFailure {
                name: map_name::DYN_DENY_V6,
                source,
            })?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.addr), prefix).expect("prefix within 128");
            out.push(DynamicEntry {
                net: IpNet::V6(net),
                entry,
            });
        }
        out.sort_by_key(|e| e.net);
        Ok(out)
    }

    /// The two maps for a [`DynamicSweep`], through descriptors of its own: the sweep needs
    /// nothing else, and so no lock on these.
    pub(crate) fn sweep(&self) -> Result<DynamicSweep> {
        let dup = |map: &MapData, name| {
            map.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| DynamicError::Duplicate { name, source })
        };
        Ok(DynamicSweep {
            v4: dup(self.v4.map(), map_name::DYN_DENY_V4)?,
            v6: dup(self.v6.map(), map_name::DYN_DENY_V6)?,
        })
    }

    /// Number of entries in each map, by map name.
    pub(crate) fn fill_levels(&self) -> [(&'static str, usize); 2] {
        [
            (map_name::DYN_DENY_V4, self.v4.keys().count()),
            (map_name::DYN_DENY_V6, self.v6.keys().count()),
        ]
    }
}

fn v4_key(net: Ipv4Net) -> DynKeyV4 {
    DynKeyV4 {
        addr: net.addr().octets(),
    }
}

fn v6_key(net: Ipv6Net) -> DynKeyV6 {
    DynKeyV6 {
        addr: net.addr().octets(),
    }
}

/// The removal of expired dynamic deny entries, which only gives their room back: the program
/// ignores an entry once its time has passed. Batch operations walk a full map (1.3M
/// entries) in a few hundred system calls.
pub(crate) struct DynamicSweep {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl DynamicSweep {
    /// Deletes the entries that expired at or before `now_ns`; returns how many went.
    pub(crate) fn run(&self, now_ns: u64) -> Result<usize> {
        let v4 = batch::sweep_expired::<DynKeyV4>(self.v4.as_fd(), map_name::DYN_DENY_V4, now_ns)?;
        let v6 = batch::sweep_expired::<DynKeyV6>(self.v6.as_fd(), map_name::DYN_DENY_V6, now_ns)?;
        Ok(v4 + v6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().expect("a prefix")
    }

    #[test]
    fn ipv4_entries_are_single_addresses() {
        assert_eq!(
            key_net(net("192.0.2.7/32"), 64).unwrap(),
            net("192.0.2.7/32")
        );
        assert!(matches!(
            key_net(net("192.0.2.0/24"), 64),
            Err(DynamicError::V4Prefix { .. })
        ));
    }

    #[test]
    fn ipv6_entries_are_masked_to_the_configured_prefix() {
        assert_eq!(
            key_net(net("2001:db8:1:2:3:4:5:6/128"), 64).unwrap(),
            net("2001:db8:1:2::/64")
        );
        assert_eq!(
            key_net(net("2001:db8:1:2::/56"), 48).unwrap(),
            net("2001:db8:1::/48")
        );
        // A prefix beyond 128 keys whole addresses.
        assert_eq!(
            key_net(net("2001:db8::1/128"), 200).unwrap(),
            net("2001:db8::1/128")
        );
        match key_net(net("2001:db8::/32"), 64) {
            Err(DynamicError::TooWide { configured, .. }) => assert_eq!(configured, 64),
            other => panic!("expected TooWide, got {other:?}"),
        }
    }

    #[test]
    fn an_entry_is_live_until_its_expiry() {
        let entry = DynamicEntry {
            net: net("192.0.2.7/32"),
            entry: DenyEntry {
                expires_ns: 5_000_000_000,
                origin: Origin::Policy as u32,
                failures: 3,
            },
        };
        assert_eq!(entry.remaining(2_000_000_000), Some(Duration::from_secs(3)));
        assert_eq!(entry.remaining(5_000_000_000), None);
        assert_eq!(entry.remaining(6_000_000_000), None);
    }
}
