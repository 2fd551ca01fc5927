//! What a kernel deny must never cover. A deny entry drops SYNs silently, and an IPv6 entry
//! covers a whole prefix (`deny_v6_prefix`), so before one is installed the guard checks that
//! its network holds none of these:
//!
//! - a network the operator permits: `mynetworks` and every network `access_list` may permit
//!   (taken generously: a `permit` rule behind an earlier `reject` counts all the same);
//! - a client with an unexpired pass in the temporary allowlist;
//! - one of this host's own addresses (read from the kernel with `getifaddrs(3)`, again at
//!   most every [`HOST_ADDRESSES_REFRESH`]).
//!
//! A deny that would cover one is not made; the client is still refused in SMTP, as by
//! postscreen, and the refusal is logged with the reason.

use std::{
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ipnet::IpNet;

use super::access::Access;
use crate::{allowlist::AllowlistStore, test_state::unix_now};

/// How long the host's addresses are trusted before they are read again.
pub(crate) const HOST_ADDRESSES_REFRESH: Duration = Duration::from_secs(10);

/// Why a deny was not made: what its network would have covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Protected {
    /// A network `mynetworks` or `access_list` permits.
    Permitted(IpNet),
    /// A client with an unexpired pass in the temporary allowlist.
    Allowlisted,
    /// An address of this host.
    HostAddress(IpAddr),
}

impl fmt::Display for Protected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Permitted(net) => {
                write!(f, "it covers {net}, permitted by mynetworks or access_list")
            }
            Self::Allowlisted => f.write_str("it covers a client in the temporary allowlist"),
            Self::HostAddress(addr) => write!(f, "it covers {addr}, an address of this host"),
        }
    }
}

/// The host's own addresses, read again when they are older than the refresh interval.
struct HostAddresses {
    read: Option<Instant>,
    addresses: Vec<IpAddr>,
}

/// Checks deny networks against what they must never cover.
pub(crate) struct DenyGuard {
    permitted: Vec<IpNet>,
    allowlist: Arc<dyn AllowlistStore>,
    host: Mutex<HostAddresses>,
}

impl DenyGuard {
    pub(crate) fn new(access: &Access, allowlist: Arc<dyn AllowlistStore>) -> Self {
        let mut permitted = access.list.permitted_networks(&access.mynetworks);
        permitted.extend(access.mynetworks.networks());
        permitted.sort_unstable();
        permitted.dedup();
        Self {
            permitted,
            allowlist,
            host: Mutex::new(HostAddresses {
                read: None,
                addresses: Vec::new(),
            }),
        }
    }

    /// Why a deny of `net` must not be made, if it must not.
    pub(crate) fn protects(&self, net: IpNet) -> Option<Protected> {
        if let Some(permitted) = self.permitted.iter().find(|p| overlap(**p, net)) {
            return Some(Protected::Permitted(*permitted));
        }
        if let Some(own) = self.host_addresses().into_iter().find(|a| net.contains(a)) {
            return Some(Protected::HostAddress(own));
        }
        if self.allowlist.passes_within(net, unix_now()) {
            return Some(Protected::Allowlisted);
        }
        None
    }

    fn host_addresses(&self) -> Vec<IpAddr> {
        let mut host = self.host.lock().unwrap_or_else(|e| e.into_inner());
        let stale = host
            .read
            .is_none_or(|read| read.elapsed() >= HOST_ADDRESSES_REFRESH);
        if stale {
            match host_addresses() {
                Ok(addresses) => {
                    host.addresses = addresses;
                    host.read = Some(Instant::now());
                }
                // Keep the last known addresses; the next deny tries again.
                Err(e) => tracing::warn!("reading this host's addresses: {e}"),
            }
        }
        host.addresses.clone()
    }
}

/// Whether two networks share an address: one contains the other's first address.
fn overlap(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Every address configured on this host's interfaces (in the daemon's network namespace).
fn host_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut next = list;
    while !next.is_null() {
        // SAFETY: `next` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*next };
        next = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        match family {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                addresses.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                addresses.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
            _ => {}
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(addresses)
}

#[cfg(test)]
mod tests;
