use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::test_state::{DISABLED_WHEN_WRITTEN, PassKind};

const DAY: u64 = 86_400;
/// The lab's clock when 127.0.0.11 passed (reference §2.2).
const NOW: u64 = 1_795_313_732;

fn times(text: &str) -> TestTimes {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn keys_must_be_canonical_addresses() {
    assert_eq!(parse_key(b"127.0.0.11").unwrap(), ip("127.0.0.11"));
    assert_eq!(parse_key(b"2001:db8::1").unwrap(), ip("2001:db8::1"));
    for bad in [
        &b""[..],
        b"not-an-ip",
        b"2001:DB8::1",
        b"2001:db8:0::1",
        b"::ffff:10.0.0.1",
        b"010.0.0.1",
        b"10.0.0.1 ",
        b"[10.0.0.1]",
        b"10.0.0.1\xff",
        &[b'1'; 100],
    ] {
        assert!(
            parse_key(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn a_stored_record_error_names_the_key_and_the_field() {
    let err = parse_entry(b"10.0.0.1", b"1;2;x;4;5").unwrap_err();
    assert_eq!(
        err.to_string(),
        "allowlist record of 10.0.0.1: allowlist record field 3 of 5 (pipelining) is \"x\": \
         it is not a decimal number"
    );
    let err = parse_entry(b"10.0.0.1 ", b"1;2;3;4;5").unwrap_err();
    assert_eq!(
        err.to_string(),
        "allowlist key \"10.0.0.1 \" is not an IP address"
    );
    assert_eq!(
        parse_entry(b"10.0.0.1", b"1;2;3;4;5").unwrap(),
        (ip("10.0.0.1"), times("1;2;3;4;5"))
    );
}

#[test]
fn next_cleanup_follows_the_last_completed_one() {
    let h = |n: u64| Duration::from_secs(n * 3_600);
    assert_eq!(next_cleanup_in(None, Duration::ZERO, NOW), None);
    assert_eq!(next_cleanup_in(Some(NOW), Duration::ZERO, NOW), None);
    assert_eq!(next_cleanup_in(None, h(12), NOW), Some(Duration::ZERO));
    assert_eq!(next_cleanup_in(Some(NOW - 3_600), h(12), NOW), Some(h(11)));
    assert_eq!(
        next_cleanup_in(Some(NOW - 13 * 3_600), h(12), NOW),
        Some(Duration::ZERO)
    );
    // A last run in the future (the clock went back) waits one interval, no more.
    assert_eq!(
        next_cleanup_in(Some(NOW + 100 * 3_600), h(12), NOW),
        Some(h(12))
    );
}

#[test]
fn pass_kind_and_cleanup_lines_match_postscreen() {
    assert_eq!(
        format!("PASS {} [127.0.0.11]:58529", PassKind::New),
        "PASS NEW [127.0.0.11]:58529"
    );
    assert_eq!(PassKind::Old.to_string(), "OLD");
    let counts = CleanupCounts {
        retained: 2,
        dropped: 1,
    };
    assert_eq!(
        counts.log_line("redb:/var/lib/smtp-screen/allowlist.redb"),
        "cache redb:/var/lib/smtp-screen/allowlist.redb full cleanup: retained=2 dropped=1 entries"
    );
}

// --- In-memory bound ---

#[test]
fn records_evict_the_earliest_latest_expiry() {
    let mut r = Records::new(3);
    let at = |t: u64| TestTimes {
        dnsbl: t,
        ..TestTimes::NEW
    };
    assert_eq!(r.insert(ip("10.0.0.1"), at(100)), None);
    assert_eq!(r.insert(ip("10.0.0.2"), at(200)), None);
    assert_eq!(r.insert(ip("10.0.0.3"), at(300)), None);
    // An update of a present address never evicts, and moves it in the index.
    assert_eq!(r.insert(ip("10.0.0.1"), at(400)), None);
    assert_eq!(r.insert(ip("10.0.0.4"), at(250)), Some(ip("10.0.0.2")));
    // A newcomer that expires before everyone else is the one that goes.
    assert_eq!(r.insert(ip("10.0.0.5"), at(50)), Some(ip("10.0.0.5")));
    assert_eq!(r.map.len(), 3);
    assert_eq!(r.by_expiry.len(), 3);
    let mut kept: Vec<_> = r.map.keys().copied().collect();
    kept.sort();
    assert_eq!(kept, [ip("10.0.0.1"), ip("10.0.0.3"), ip("10.0.0.4")]);
}

#[test]
fn passes_within_a_prefix_count_only_unexpired_records_inside_it() {
    let mut r = Records::new(10);
    let at = |t: u64| TestTimes {
        pregreet: t,
        ..TestTimes::NEW
    };
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    r.insert(ip("2001:db8:1:2::25"), at(NOW + 60));
    r.insert(ip("2001:db8:1:3::25"), at(NOW - 1));
    r.insert(ip("192.0.2.25"), at(NOW + 60));
    assert!(r.passes_within(net("2001:db8:1:2::/64"), NOW));
    // An expired pass does not count, nor does a record outside the prefix.
    assert!(!r.passes_within(net("2001:db8:1:3::/64"), NOW));
    assert!(!r.passes_within(net("2001:db8:1:4::/64"), NOW));
    assert!(r.passes_within(net("2001:db8::/32"), NOW));
    assert!(r.passes_within(net("192.0.2.25/32"), NOW));
    assert!(!r.passes_within(net("192.0.2.26/32"), NOW));
    assert!(r.passes_within(net("192.0.2.0/24"), NOW));
    // Removed, evicted and cleared records leave the address index too.
    assert!(r.remove(&ip("2001:db8:1:2::25")));
    assert!(!r.passes_within(net("2001:db8:1:2::/64"), NOW));
    assert_eq!(r.v6.len(), 1);
    r.clear();
    assert!(r.v6.is_empty());
    let mut small = Records::new(1);
    small.insert(ip("2001:db8::1"), at(NOW + 1));
    small.insert(ip("2001:db8::2"), at(NOW + 2));
    assert_eq!(
        small.v6.iter().copied().collect::<Vec<_>>(),
        ["2001:db8::2".parse::<Ipv6Addr>().unwrap()]
    );
}

#[test]
fn a_crowded_prefix_counts_as_holding_a_pass() {
    let mut r = Records::new(MAX_PREFIX_SCAN + 10);
    for i in 0..=MAX_PREFIX_SCAN as u16 {
        let addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i);
        r.insert(IpAddr::V6(addr), TestTimes::NEW);
    }
    // Every record has expired, but past the scan bound the answer is the cautious one.
    assert!(r.passes_within("2001:db8::/64".parse().unwrap(), NOW));
    assert!(!r.passes_within("2001:db8::/116".parse().unwrap(), NOW));
}

// --- Storage ---

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh directory, removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "smtp-screen-cache-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn small(max_entries: usize) -> CacheOptions {
    CacheOptions {
        max_entries,
        ..CacheOptions::default()
    }
}

fn passed_until(t: u64) -> TestTimes {
    TestTimes {
        pregreet: t,
        dnsbl: t,
        pipelining: DISABLED_WHEN_WRITTEN,
        non_smtp_command: DISABLED_WHEN_WRITTEN,
        bare_newline: DISABLED_WHEN_WRITTEN,
    }
}

/// Writes raw entries into the file, as damage or another writer would leave them.
fn put_raw(dir: &Path, entries: &[(&[u8], &[u8])]) {
    let db = Database::create(dir.join(ALLOWLIST_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(RECORDS).unwrap();
        for (k, v) in entries {
            table.insert(*k, *v).unwrap();
        }
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn records_survive_close_and_reopen() {
    let dir = TempDir::new();
    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    assert!(cache.is_empty());
    assert_eq!(cache.last_cleanup(), None);
    let lab = times("1795400132;1795313852;1797905732;1797905732;1797905732");
    cache.record(ip("127.0.0.11"), lab);
    cache.record(ip("2001:db8::25"), passed_until(NOW));
    // An IPv4-mapped address is its IPv4 address, as in postscreen's log and cache.
    cache.record(
        IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()),
        passed_until(NOW + 1),
    );
    assert_eq!(cache.get(ip("10.1.2.3")), Some(passed_until(NOW + 1)));
    assert_eq!(
        cache.get(ip("::ffff:10.1.2.3")),
        Some(passed_until(NOW + 1))
    );
    cache.close().await.unwrap();
    // Closing twice is harmless; updates after close stay in memory and are counted.
    cache.close().await.unwrap();
    cache.record(ip("192.0.2.9"), passed_until(NOW));
    assert_eq!(cache.stats().dropped_writes, 1);
    drop(cache);

    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    assert_eq!(
        cache.list(),
        vec![
            (ip("10.1.2.3"), passed_until(NOW + 1)),
            (ip("127.0.0.11"), lab),
            (
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x25)),
                passed_until(NOW)
            ),
        ]
    );
    assert_eq!(cache.stats().corrupt_records, 0);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn many_records_one_flush_all_there_in_few_commits() {
    let dir = TempDir::new();
    let options = CacheOptions {
        max_entries: 10_000,
        queue_capacity: 4_096,
        batch_max_entries: 64,
        batch_interval: Duration::from_secs(3_600),
    };
    let cache = AllowlistCache::open(&dir.0, options).await.unwrap();
    for i in 0..1_000u32 {
        cache.record(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            passed_until(NOW + u64::from(i)),
        );
    }
    // Nothing is written on the connection path.
    assert_eq!(cache.stats().batches_committed, 0);
    cache.flush().await.unwrap();
    let stats = cache.stats();
    // 15 full batches of 64, then the remaining 40 on flush.
    assert_eq!(stats.batches_committed, 16);
    assert_eq!((stats.dropped_writes, stats.write_errors), (0, 0));
    cache.close().await.unwrap();

    let cache = AllowlistCache::open(&dir.0, options).await.unwrap();
    assert_eq!(cache.len(), 1_000);
    assert_eq!(cache.get(ip("10.0.3.231")), Some(passed_until(NOW + 999)));
    cache.close().await.unwrap();
}

#[tokio::test]
async fn a_batch_is_committed_after_the_interval_without_a_flush() {
    let dir = TempDir::new();
    let options = CacheOptions {
        batch_interval: Duration::from_millis(20),
        ..small(100)
    };
    let cache = AllowlistCache::open(&dir.0, options).await.unwrap();
    cache.record(ip("192.0.2.1"), passed_until(NOW));
    assert_eq!(cache.stats().batches_committed, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.stats().batches_committed == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cache.stats().batches_committed, 1);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_drops_writes_but_never_blocks() {
    let dir = TempDir::new();
    let options = CacheOptions {
        queue_capacity: 4,
        ..small(100)
    };
    let cache = AllowlistCache::open(&dir.0, options).await.unwrap();
    // The test runtime has one thread: the writer cannot run until this task yields, so
    // the first four updates fill the queue and the other six are dropped.
    for i in 0..10u8 {
        cache.record(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)), passed_until(NOW));
    }
    assert_eq!(cache.stats().dropped_writes, 6);
    assert_eq!(cache.len(), 10, "memory keeps every update");
    cache.close().await.unwrap();
    let cache = AllowlistCache::open(&dir.0, options).await.unwrap();
    assert_eq!(cache.len(), 4);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn the_bound_evicts_from_memory_and_file() {
    let dir = TempDir::new();
    let cache = AllowlistCache::open(&dir.0, small(3)).await.unwrap();
    cache.record(ip("10.0.0.1"), passed_until(NOW + 100));
    cache.record(ip("10.0.0.2"), passed_until(NOW + 300));
    cache.record(ip("10.0.0.3"), passed_until(NOW + 200));
    cache.flush().await.unwrap();
    cache.record(ip("10.0.0.4"), passed_until(NOW + 400));
    cache.record(ip("10.0.0.5"), passed_until(NOW + 50));
    assert_eq!(cache.get(ip("10.0.0.1")), None);
    assert_eq!(cache.get(ip("10.0.0.5")), None);
    assert_eq!(cache.stats().evictions, 2);
    cache.close().await.unwrap();
    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    let kept: Vec<_> = cache.list().into_iter().map(|(a, _)| a).collect();
    assert_eq!(kept, [ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.4")]);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn a_smaller_bound_at_open_keeps_the_latest_and_prunes_the_file() {
    let dir = TempDir::new();
    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    for i in 1..=10u8 {
        cache.record(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)),
            passed_until(NOW + u64::from(i)),
        );
    }
    cache.close().await.unwrap();
    let cache = AllowlistCache::open(&dir.0, small(4)).await.unwrap();
    let kept: Vec<_> = cache.list().into_iter().map(|(a, _)| a).collect();
    assert_eq!(
        kept,
        [
            ip("10.0.0.7"),
            ip("10.0.0.8"),
            ip("10.0.0.9"),
            ip("10.0.0.10")
        ]
    );
    assert_eq!(cache.stats().evictions, 6);
    cache.close().await.unwrap();
    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    assert_eq!(cache.len(), 4);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn corrupt_records_are_skipped_and_removed() {
    let dir = TempDir::new();
    let good = passed_until(NOW);
    let good_text = good.to_string();
    let long_value = vec![b'1'; 10_000];
    let long_key = vec![b'1'; 10_000];
    put_raw(
        &dir.0,
        &[
            (b"10.0.0.1", b"1;2;x;4;5"),
            (b"10.0.0.2", b""),
            (b"10.0.0.3", &long_value),
            (b"10.0.0.4", b"1;2;3;4"),
            (b"not-an-ip", good_text.as_bytes()),
            (b"2001:DB8::1", good_text.as_bytes()),
            (b"10.0.0.5\xff", good_text.as_bytes()),
            (&long_key, good_text.as_bytes()),
            (b"10.0.0.9", good_text.as_bytes()),
        ],
    );
    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    assert_eq!(cache.list(), vec![(ip("10.0.0.9"), good)]);
    assert_eq!(cache.stats().corrupt_records, 8);
    cache.close().await.unwrap();
    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    assert_eq!(
        cache.stats().corrupt_records,
        0,
        "removed at the first open"
    );
    assert_eq!(cache.len(), 1);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn an_unreadable_file_is_moved_aside() {
    let dir = TempDir::new();
    std::fs::write(dir.0.join(ALLOWLIST_FILE), vec![0x5a; 10_000]).unwrap();
    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    assert!(cache.is_empty());
    cache.record(ip("10.0.0.1"), passed_until(NOW));
    cache.close().await.unwrap();
    let aside: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("allowlist.redb.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    assert_eq!(cache.len(), 1);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn a_second_opener_gets_in_use_until_the_first_closes() {
    let dir = TempDir::new();
    let first = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    let err = AllowlistCache::open(&dir.0, small(100)).await.unwrap_err();
    assert!(matches!(err, CacheError::InUse { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(ALLOWLIST_FILE) && message.contains("in use"),
        "{message}"
    );
    first.close().await.unwrap();
    let second = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    second.close().await.unwrap();
}

#[tokio::test]
async fn a_missing_state_directory_is_created() {
    let dir = TempDir::new();
    let nested = dir.0.join("a/b");
    let cache = AllowlistCache::open(&nested, small(10)).await.unwrap();
    assert_eq!(cache.path(), nested.join(ALLOWLIST_FILE));
    assert_eq!(
        cache.name(),
        format!("redb:{}", nested.join(ALLOWLIST_FILE).display())
    );
    cache.close().await.unwrap();
    assert!(nested.join(ALLOWLIST_FILE).is_file());
}

#[tokio::test]
async fn the_state_directory_and_the_database_are_the_owners_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new();
    let state = dir.0.join("state");
    let cache = AllowlistCache::open(&state, small(10)).await.unwrap();
    cache.close().await.unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "the state directory");
    assert_eq!(mode(&state.join(ALLOWLIST_FILE)), 0o600, "the database");
    // An existing database of an earlier version, world-readable, is tightened at open.
    std::fs::set_permissions(
        state.join(ALLOWLIST_FILE),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let again = AllowlistCache::open(&state, small(10)).await.unwrap();
    again.close().await.unwrap();
    assert_eq!(mode(&state.join(ALLOWLIST_FILE)), 0o600);
}

#[tokio::test]
async fn an_unusable_state_directory_is_an_error() {
    let dir = TempDir::new();
    let file = dir.0.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = AllowlistCache::open(&file, small(10)).await.unwrap_err();
    assert!(matches!(err, CacheError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[tokio::test]
async fn delete_and_flush_all_reach_the_file() {
    let dir = TempDir::new();
    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    for last in 1..=3u8 {
        cache.record(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), passed_until(NOW));
    }
    assert!(cache.delete(ip("10.0.0.2")).await.unwrap());
    assert!(!cache.delete(ip("10.0.0.2")).await.unwrap());
    cache.close().await.unwrap();

    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    let kept: Vec<_> = cache.list().into_iter().map(|(a, _)| a).collect();
    assert_eq!(kept, [ip("10.0.0.1"), ip("10.0.0.3")]);
    // Changes queued before the flush are wiped too; ones after it stay.
    cache.record(ip("10.0.0.4"), passed_until(NOW));
    assert_eq!(cache.flush_all().await.unwrap(), 3);
    cache.record(ip("10.0.0.5"), passed_until(NOW));
    cache.close().await.unwrap();

    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    assert_eq!(cache.list(), vec![(ip("10.0.0.5"), passed_until(NOW))]);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn cleanup_counts_drops_and_remembers_when_it_ran() {
    let dir = TempDir::new();
    let week = Duration::from_secs(7 * DAY);
    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    cache.record(ip("10.0.0.1"), passed_until(NOW - 8 * DAY));
    cache.record(ip("10.0.0.2"), passed_until(NOW - 7 * DAY));
    cache.record(ip("10.0.0.3"), passed_until(NOW + DAY));
    cache.record(
        ip("10.0.0.4"),
        times(&format!("1;{};0;0;0", NOW - 30 * DAY)),
    );
    let counts = cache.cleanup(NOW, week).await.unwrap();
    assert_eq!(
        counts,
        CleanupCounts {
            retained: 2,
            dropped: 2
        }
    );
    assert_eq!(cache.last_cleanup(), Some(NOW));
    // A second scan finds nothing more to drop.
    assert_eq!(cache.cleanup(NOW, week).await.unwrap().dropped, 0);
    cache.close().await.unwrap();

    let cache = AllowlistCache::open(&dir.0, small(100)).await.unwrap();
    let kept: Vec<_> = cache.list().into_iter().map(|(a, _)| a).collect();
    assert_eq!(kept, [ip("10.0.0.2"), ip("10.0.0.3")]);
    assert_eq!(cache.last_cleanup(), Some(NOW));
    cache.close().await.unwrap();
}

#[tokio::test]
async fn periodic_cleanup_is_off_at_zero_and_runs_at_once_when_overdue() {
    let dir = TempDir::new();
    let cache = Arc::new(AllowlistCache::open(&dir.0, small(100)).await.unwrap());
    assert!(
        cache
            .spawn_cleanup(Duration::ZERO, Duration::ZERO)
            .is_none()
    );
    cache.record(ip("10.0.0.1"), passed_until(1_000));
    cache.record(ip("10.0.0.2"), passed_until(unix_now() + DAY));
    // Never ran before: the first scan starts at once.
    let task = cache
        .spawn_cleanup(Duration::from_secs(3_600), Duration::from_secs(DAY))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.last_cleanup().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    assert!(cache.last_cleanup().is_some());
    let kept: Vec<_> = cache.list().into_iter().map(|(a, _)| a).collect();
    assert_eq!(kept, [ip("10.0.0.2")]);
    cache.close().await.unwrap();
}

#[test]
fn a_failed_batch_goes_back_under_the_newer_changes() {
    let at = |t: u64| TestTimes {
        pregreet: t,
        ..TestTimes::NEW
    };
    let mut failed = Batch::default();
    failed.add(WriteOp::Put(ip("192.0.2.1"), at(1)));
    failed.add(WriteOp::Put(ip("192.0.2.2"), at(1)));
    failed.add(WriteOp::CleanupCompleted(7));
    let mut newer = Batch::default();
    newer.add(WriteOp::Delete(ip("192.0.2.2")));
    newer.add(WriteOp::Put(ip("192.0.2.3"), at(2)));
    newer.requeue(failed);
    assert_eq!(newer.changes.len(), 3);
    assert_eq!(newer.changes[&ip("192.0.2.1")], Some(at(1)));
    // The newer change wins.
    assert_eq!(newer.changes[&ip("192.0.2.2")], None);
    assert_eq!(newer.changes[&ip("192.0.2.3")], Some(at(2)));
    assert_eq!(newer.cleanup_completed, Some(7));
    assert!(!newer.clear);

    // A clear made since supersedes everything that failed before it.
    let mut failed = Batch::default();
    failed.add(WriteOp::Put(ip("192.0.2.1"), at(1)));
    let mut cleared = Batch::default();
    cleared.add(WriteOp::Clear);
    cleared.requeue(failed);
    assert!(cleared.clear && cleared.changes.is_empty());

    // A clear that failed stays ahead of the changes made since.
    let mut failed = Batch::default();
    failed.add(WriteOp::Clear);
    failed.add(WriteOp::Put(ip("192.0.2.9"), at(1)));
    let mut newer = Batch::default();
    newer.add(WriteOp::Put(ip("192.0.2.8"), at(2)));
    newer.requeue(failed);
    assert!(newer.clear);
    assert_eq!(newer.changes.len(), 2);
}

#[test]
fn a_rewrite_from_memory_replaces_the_file_with_every_record() {
    let mut records = Records::new(10);
    records.insert(ip("192.0.2.1"), passed_until(NOW));
    records.insert(ip("2001:db8::1"), passed_until(NOW + 1));
    let batch = Batch::rewrite_from(&records);
    assert!(batch.clear);
    assert_eq!(batch.changes.len(), 2);
    assert_eq!(
        batch.changes[&ip("2001:db8::1")],
        Some(passed_until(NOW + 1))
    );
}
