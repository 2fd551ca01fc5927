use std::path::{Path, PathBuf};

use super::*;
use crate::{
    access_list::{AccessList, AddressList, AllowlistInterfaces, DiskFiles},
    allowlist::{AllowlistCache, CacheOptions},
    test_state::TestTimes,
};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A directory of the test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("smtp-screen-guard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn access(dir: &Path, list: &str, mynetworks: &str) -> Access {
    let files = DiskFiles::new(dir);
    Access {
        list: AccessList::parse(list, &files).unwrap().0,
        mynetworks: AddressList::parse("mynetworks", mynetworks, &files)
            .unwrap()
            .0,
        allowlist_interfaces: AllowlistInterfaces::default(),
    }
}

async fn allowlist(dir: &Path) -> Arc<AllowlistCache> {
    Arc::new(
        AllowlistCache::open(&dir.join("state"), CacheOptions::default())
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn a_deny_never_covers_a_permitted_network() {
    let dir = TempDir::new("permitted");
    std::fs::write(
        dir.0.join("access.cidr"),
        "[2001:db8:1:2::1d] permit\n192.0.2.0/24 reject\n",
    )
    .unwrap();
    let guard = DenyGuard::new(
        &access(
            &dir.0,
            "permit_mynetworks, cidr:access.cidr",
            "10.0.0.0/8 [2001:db8:7::]/48",
        ),
        allowlist(&dir.0).await,
    );
    // The bot's /64 holds an address the access list permits.
    assert_eq!(
        guard.protects(net("2001:db8:1:2::/64")),
        Some(Protected::Permitted(net("2001:db8:1:2::1d/128")))
    );
    assert_eq!(guard.protects(net("2001:db8:1:3::/64")), None);
    // mynetworks, from inside and from around.
    assert_eq!(
        guard.protects(net("10.1.2.3/32")),
        Some(Protected::Permitted(net("10.0.0.0/8")))
    );
    assert_eq!(
        guard.protects(net("2001:db8:7:1::/64")),
        Some(Protected::Permitted(net("2001:db8:7::/48")))
    );
    assert_eq!(guard.protects(net("192.0.2.7/32")), None);
    let refused = Protected::Permitted(net("2001:db8:1:2::1d/128")).to_string();
    assert_eq!(
        refused,
        "it covers 2001:db8:1:2::1d/128, permitted by mynetworks or access_list"
    );
}

#[tokio::test]
async fn a_deny_never_covers_a_client_with_an_unexpired_pass() {
    let dir = TempDir::new("allowlisted");
    let cache = allowlist(&dir.0).await;
    let guard = DenyGuard::new(
        &access(&dir.0, "permit_mynetworks", "127.0.0.0/8"),
        cache.clone(),
    );
    assert_eq!(guard.protects(net("2001:db8:9:9::/64")), None);
    let passed = TestTimes {
        pregreet: unix_now() + 3600,
        ..TestTimes::NEW
    };
    cache.record(ip("2001:db8:9:9::25"), passed);
    assert_eq!(
        guard.protects(net("2001:db8:9:9::/64")),
        Some(Protected::Allowlisted)
    );
    // A pass that has run out protects no one.
    let expired = TestTimes {
        pregreet: unix_now() - 1,
        ..TestTimes::NEW
    };
    cache.record(ip("192.0.2.25"), expired);
    assert_eq!(guard.protects(net("192.0.2.25/32")), None);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn a_deny_never_covers_an_address_of_this_host() {
    let dir = TempDir::new("host");
    let guard = DenyGuard::new(&access(&dir.0, "dunno", ""), allowlist(&dir.0).await);
    // Every host has its loopback addresses; the kernel's list is the truth.
    let own = host_addresses().unwrap();
    assert!(own.contains(&ip("127.0.0.1")), "{own:?}");
    assert_eq!(
        guard.protects(net("127.0.0.1/32")),
        Some(Protected::HostAddress(ip("127.0.0.1")))
    );
    for addr in own {
        assert!(guard.protects(IpNet::from(addr)).is_some(), "{addr}");
    }
    assert_eq!(guard.protects(net("192.0.2.99/32")), None);
}
