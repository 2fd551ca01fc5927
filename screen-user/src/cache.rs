//! The temporary allowlist: postscreen's cache of per-test pass times, kept in memory for the
//! connection path and persisted in an embedded database under `state_dir`.
//!
//! A record holds one expiry time per test (Unix seconds) in postscreen's own text form,
//! `pregreet;dnsbl;pipelining;non_smtp_command;bare_newline`, keyed by the client's address
//! text, so a record reads the same here as in `postmap -s` of postscreen's cache. Two values
//! are not times: `0`, the test never passed (the client is still "new"), and `1`, the test
//! never passed and was disabled when the record was written (`postscreen_tests.c`).
//!
//! Policy is pure: [`start`] decides at connect time whether a cached client is `PASS OLD` at
//! once or which tests are due, [`conclude`] decides at the end of a session whether to log
//! `PASS NEW` or `PASS OLD` and which record to write, and [`retain`] is the cleanup rule.
//!
//! Storage is [`AllowlistCache`]. Lookups read an in-memory map loaded at open, so a connection
//! never waits on the disk. Updates change the map at once and go to a writer task over a
//! bounded queue; the writer commits them in batches (postscreen syncs the file on every
//! update, which it calls a cost "on LINUX file systems"). When the queue is full an update is
//! kept in memory but not written, and counted, rather than making a connection wait.
//!
//! One process at a time: redb's default mode locks the whole file, so the daemon holds the
//! database for as long as it runs. A second opener, such as `smtp-screen cache list|del|flush`
//! run beside the daemon, gets [`CacheError::InUse`]; those commands work on the file while the
//! daemon is down, and a running daemon's cache is changed through the daemon itself, which
//! owns the in-memory copy. (redb's shared multi-process modes would let another process
//! write the file, but the daemon would not see it: its lookups never read the file.)

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redb::{Database, DatabaseError, ReadableTable, StorageError, TableDefinition};
use tokio::{
    sync::{
        mpsc::{self, error::TrySendError},
        oneshot,
    },
    task::JoinHandle,
    time::Instant,
};

/// The database file inside `state_dir`.
pub const FILE_NAME: &str = "allowlist.redb";

/// The longest record text: five 20-digit numbers and four separators.
pub const MAX_RECORD_LEN: usize = 5 * 20 + 4;

/// The longest key: an address in text form (`INET6_ADDRSTRLEN` less the NUL).
pub const MAX_KEY_LEN: usize = 45;

/// Expiry value of a test the client never passed: it is still "new".
pub const NEVER_PASSED: u64 = 0;

/// Expiry value of a test the client never passed that was disabled when the record was
/// written, so that enabling it later does not make every cached client "new" again.
pub const DISABLED_WHEN_WRITTEN: u64 = 1;

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("allowlist");
const META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");
/// When the last full cleanup finished, so a restart does not postpone the next one
/// (postscreen keeps `_LAST_CACHE_CLEANUP_COMPLETED_` in its cache for the same reason).
const LAST_CLEANUP_KEY: &[u8] = b"last_cleanup_completed";

/// redb's page cache. Lookups are served from the in-memory map, so the database is only
/// written and scanned: a small cache is enough (redb's default is 1 GiB).
const DB_CACHE_BYTES: usize = 16 << 20;

/// Corrupt records named one by one in the log at open; the rest are only counted.
const MAX_CORRUPT_WARNINGS: u64 = 10;

/// The warning about updates dropped on a full queue comes at most this often.
const DROP_WARNING_INTERVAL_SECS: u64 = 60;

/// What went wrong with a record, the database or the writer.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("allowlist record is {len} bytes long; a record is at most {MAX_RECORD_LEN}")]
    RecordTooLong { len: usize },
    #[error(
        "allowlist record has {found} fields, not the 5 of \
         pregreet;dnsbl;pipelining;non_smtp_command;bare_newline"
    )]
    RecordFieldCount { found: usize },
    #[error("allowlist record field {position} of 5 ({test}) is {value:?}: {why}")]
    RecordField {
        test: &'static str,
        position: usize,
        value: String,
        why: &'static str,
    },
    #[error("allowlist key {key:?} {why}")]
    RecordKey { key: String, why: &'static str },
    #[error("allowlist record of {key}: {error}")]
    StoredRecord { key: IpAddr, error: Box<CacheError> },
    #[error(
        "{path}: in use by another process (the daemon holds the allowlist while it runs: \
         stop it first, or change the cache through the daemon)"
    )]
    InUse { path: PathBuf },
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot {action}: {source}")]
    Database {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("{path}: the allowlist writer has stopped")]
    WriterStopped { path: PathBuf },
}

/// One of the five tests whose passes are cached, in record order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Test {
    Pregreet,
    Dnsbl,
    Pipelining,
    NonSmtpCommand,
    BareNewline,
}

impl Test {
    /// Every test, in the order of the record's fields.
    pub const ALL: [Test; 5] = [
        Test::Pregreet,
        Test::Dnsbl,
        Test::Pipelining,
        Test::NonSmtpCommand,
        Test::BareNewline,
    ];

    /// The test's name in messages (its field name).
    pub fn name(self) -> &'static str {
        match self {
            Test::Pregreet => "pregreet",
            Test::Dnsbl => "dnsbl",
            Test::Pipelining => "pipelining",
            Test::NonSmtpCommand => "non_smtp_command",
            Test::BareNewline => "bare_newline",
        }
    }

    /// Whether the test runs after the 220 greeting, in the dummy SMTP engine.
    pub fn is_deep(self) -> bool {
        matches!(
            self,
            Test::Pipelining | Test::NonSmtpCommand | Test::BareNewline
        )
    }
}

/// A client's cached pass times: when each test's pass expires, in Unix seconds, or
/// [`NEVER_PASSED`] or [`DISABLED_WHEN_WRITTEN`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestTimes {
    pub pregreet: u64,
    pub dnsbl: u64,
    pub pipelining: u64,
    pub non_smtp_command: u64,
    pub bare_newline: u64,
}

impl TestTimes {
    /// A client seen for the first time: no test ever passed.
    pub const NEW: TestTimes = TestTimes {
        pregreet: NEVER_PASSED,
        dnsbl: NEVER_PASSED,
        pipelining: NEVER_PASSED,
        non_smtp_command: NEVER_PASSED,
        bare_newline: NEVER_PASSED,
    };

    pub fn get(&self, test: Test) -> u64 {
        match test {
            Test::Pregreet => self.pregreet,
            Test::Dnsbl => self.dnsbl,
            Test::Pipelining => self.pipelining,
            Test::NonSmtpCommand => self.non_smtp_command,
            Test::BareNewline => self.bare_newline,
        }
    }

    pub fn set(&mut self, test: Test, value: u64) {
        match test {
            Test::Pregreet => self.pregreet = value,
            Test::Dnsbl => self.dnsbl = value,
            Test::Pipelining => self.pipelining = value,
            Test::NonSmtpCommand => self.non_smtp_command = value,
            Test::BareNewline => self.bare_newline = value,
        }
    }

    /// The latest of the five values: until then some pass is still valid.
    pub fn latest_expiry(&self) -> u64 {
        Test::ALL.iter().map(|&t| self.get(t)).max().unwrap_or(0)
    }

    /// Parses postscreen's record text, `pregreet;dnsbl;pipelining;non_smtp_command;bare_newline`:
    /// exactly five decimal numbers, nothing around them. (postscreen itself reads fewer
    /// fields as disabled tests, for records of older versions; this parser does not guess.)
    pub fn parse(text: &[u8]) -> Result<Self, CacheError> {
        if text.len() > MAX_RECORD_LEN {
            return Err(CacheError::RecordTooLong { len: text.len() });
        }
        let found = text.iter().filter(|&&b| b == b';').count() + 1;
        if found != Test::ALL.len() {
            return Err(CacheError::RecordFieldCount { found });
        }
        let mut times = TestTimes::NEW;
        for (position, (test, field)) in
            Test::ALL.iter().zip(text.split(|&b| b == b';')).enumerate()
        {
            times.set(*test, parse_field(*test, position + 1, field)?);
        }
        Ok(times)
    }
}

fn parse_field(test: Test, position: usize, field: &[u8]) -> Result<u64, CacheError> {
    let err = |why| CacheError::RecordField {
        test: test.name(),
        position,
        value: String::from_utf8_lossy(field).into_owned(),
        why,
    };
    if field.is_empty() {
        return Err(err("it is empty"));
    }
    if !field.iter().all(u8::is_ascii_digit) {
        return Err(err("it is not a decimal number"));
    }
    // Only ASCII digits remain, so the text is valid UTF-8 and the one failure left is overflow.
    std::str::from_utf8(field)
        .ok()
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| err("it is larger than any time"))
}

impl FromStr for TestTimes {
    type Err = CacheError;

    fn from_str(text: &str) -> Result<Self, CacheError> {
        Self::parse(text.as_bytes())
    }
}

/// postscreen's record text.
impl fmt::Display for TestTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{};{};{};{};{}",
            self.pregreet, self.dnsbl, self.pipelining, self.non_smtp_command, self.bare_newline
        )
    }
}

/// Which tests the configuration turns on: pregreet when `greet_banner` is not empty, DNSBL
/// when `dnsbl_sites` is not empty, each deep test by its `*_enable` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnabledTests {
    pub pregreet: bool,
    pub dnsbl: bool,
    pub pipelining: bool,
    pub non_smtp_command: bool,
    pub bare_newline: bool,
}

impl EnabledTests {
    pub fn get(&self, test: Test) -> bool {
        match test {
            Test::Pregreet => self.pregreet,
            Test::Dnsbl => self.dnsbl,
            Test::Pipelining => self.pipelining,
            Test::NonSmtpCommand => self.non_smtp_command,
            Test::BareNewline => self.bare_newline,
        }
    }
}

/// The tests a client must take in this session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DueTests {
    pub pregreet: bool,
    pub dnsbl: bool,
    pub pipelining: bool,
    pub non_smtp_command: bool,
    pub bare_newline: bool,
}

impl DueTests {
    pub fn get(&self, test: Test) -> bool {
        match test {
            Test::Pregreet => self.pregreet,
            Test::Dnsbl => self.dnsbl,
            Test::Pipelining => self.pipelining,
            Test::NonSmtpCommand => self.non_smtp_command,
            Test::BareNewline => self.bare_newline,
        }
    }

    fn set(&mut self, test: Test) {
        match test {
            Test::Pregreet => self.pregreet = true,
            Test::Dnsbl => self.dnsbl = true,
            Test::Pipelining => self.pipelining = true,
            Test::NonSmtpCommand => self.non_smtp_command = true,
            Test::BareNewline => self.bare_newline = true,
        }
    }

    /// No test is due.
    pub fn is_empty(&self) -> bool {
        !Test::ALL.iter().any(|&t| self.get(t))
    }

    /// Whether a deep test (after 220) is due, so the session goes to the dummy SMTP engine.
    pub fn any_deep(&self) -> bool {
        Test::ALL.iter().any(|&t| t.is_deep() && self.get(t))
    }
}

/// How long a pass of each test is valid (postscreen's `*_ttl` options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestTtls {
    /// `greet_ttl`.
    pub pregreet: Duration,
    /// `dnsbl_min_ttl`: the least a DNSBL pass lasts, whatever the DNS TTL.
    pub dnsbl_min: Duration,
    /// `dnsbl_max_ttl`: the most a DNSBL pass lasts.
    pub dnsbl_max: Duration,
    /// `pipelining_ttl`.
    pub pipelining: Duration,
    /// `non_smtp_command_ttl`.
    pub non_smtp_command: Duration,
    /// `bare_newline_ttl`.
    pub bare_newline: Duration,
}

impl Default for TestTtls {
    /// postscreen's defaults: 1d, 60s…1h, 30d, 30d, 30d.
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            pregreet: Duration::from_secs(DAY),
            dnsbl_min: Duration::from_secs(60),
            dnsbl_max: Duration::from_secs(3_600),
            pipelining: Duration::from_secs(30 * DAY),
            non_smtp_command: Duration::from_secs(30 * DAY),
            bare_newline: Duration::from_secs(30 * DAY),
        }
    }
}

impl TestTtls {
    /// The shortest configured TTL (postscreen's `psc_min_ttl`: `greet_ttl`, `dnsbl_min_ttl`
    /// and the three deep-test TTLs, enabled or not). A deep test whose action is `ignore`
    /// counts as passed until then, so it is tried again soon.
    pub fn shortest(&self) -> Duration {
        [
            self.pregreet,
            self.dnsbl_min,
            self.pipelining,
            self.non_smtp_command,
            self.bare_newline,
        ]
        .into_iter()
        .min()
        .unwrap_or(Duration::ZERO)
    }

    /// A DNS reply's TTL clamped to `dnsbl_min_ttl`…`dnsbl_max_ttl`; no TTL means the minimum
    /// (postscreen_dnsbl.c).
    pub fn dnsbl(&self, dns_ttl: Option<Duration>) -> Duration {
        dns_ttl
            .unwrap_or(self.dnsbl_min)
            .max(self.dnsbl_min)
            .min(self.dnsbl_max)
    }

    fn pass(&self, test: Test, dns_ttl: Option<Duration>) -> Duration {
        match test {
            Test::Pregreet => self.pregreet,
            Test::Dnsbl => self.dnsbl(dns_ttl),
            Test::Pipelining => self.pipelining,
            Test::NonSmtpCommand => self.non_smtp_command,
            Test::BareNewline => self.bare_newline,
        }
    }
}

/// How a client's eventual pass is logged: `PASS NEW` or `PASS OLD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassKind {
    New,
    Old,
}

impl fmt::Display for PassKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PassKind::New => "NEW",
            PassKind::Old => "OLD",
        })
    }
}

/// The tests due for a client and the state they start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Screening {
    /// The record at connect time ([`TestTimes::NEW`] for an unknown client).
    pub times: TestTimes,
    pub due: DueTests,
    /// How a pass of every due test will be logged.
    pub pass_kind: PassKind,
}

/// What the cache says about a client at connect time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Every enabled test is unexpired: log `PASS OLD [a]:p` and hand the client off at once.
    PassOld,
    /// Screen the client.
    Screen(Screening),
}

/// The tests whose pass of the record at `now` has expired, or that never passed, among the
/// enabled ones (a disabled test is never due: nothing could make it go away).
pub fn due_tests(times: &TestTimes, enabled: &EnabledTests, now: u64) -> DueTests {
    let mut due = DueTests::default();
    for test in Test::ALL {
        if enabled.get(test) && now > times.get(test) {
            due.set(test);
        }
    }
    due
}

/// Whether a cached client passes at once: no enabled test is due.
pub fn is_pass_old(times: &TestTimes, enabled: &EnabledTests, now: u64) -> bool {
    due_tests(times, enabled, now).is_empty()
}

/// How a pass will be logged: `NEW` while some enabled test has never passed (`0`), `OLD`
/// otherwise. A client that re-passes expired tests is `OLD`, and so is one that passes a test
/// enabled since its record was written (`1`, not `0`).
pub fn pass_kind(times: &TestTimes, enabled: &EnabledTests) -> PassKind {
    let new = Test::ALL
        .iter()
        .any(|&t| enabled.get(t) && times.get(t) == NEVER_PASSED);
    if new { PassKind::New } else { PassKind::Old }
}

/// Decides at connect time, from the cached record if there is one. The daemon looks the
/// cache up only when nothing has failed yet and the client has no other session in progress
/// (postscreen shares the other session's state instead).
pub fn start(cached: Option<&TestTimes>, enabled: &EnabledTests, now: u64) -> Start {
    match cached {
        Some(times) => {
            let due = due_tests(times, enabled, now);
            if due.is_empty() {
                Start::PassOld
            } else {
                Start::Screen(Screening {
                    times: *times,
                    due,
                    pass_kind: pass_kind(times, enabled),
                })
            }
        }
        None => Start::Screen(Screening {
            times: TestTimes::NEW,
            due: due_tests(&TestTimes::NEW, enabled, now),
            pass_kind: PassKind::New,
        }),
    }
}

/// What became of one test in a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Not run, or not finished: a deep test passes only when the client reaches RCPT TO.
    #[default]
    NotCompleted,
    Passed,
    /// The client failed the test and the action is `ignore`. Before 220 this passes nothing
    /// (the test is repeated next time); after 220 the test counts as passed until the
    /// shortest TTL.
    Ignored,
    /// The client failed the test and the action is `enforce` or `drop`.
    Failed,
}

/// Everything a session found out about a client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionResults {
    pub pregreet: Outcome,
    pub dnsbl: Outcome,
    pub pipelining: Outcome,
    pub non_smtp_command: Outcome,
    pub bare_newline: Outcome,
    /// The TTL of the DNS replies that decided the DNSBL pass (the negative reply's SOA, or
    /// the DNSWL record's); `None` when there was none. Clamped with [`TestTtls::dnsbl`].
    pub dns_ttl: Option<Duration>,
    /// The DNSBL score reached the allowlist threshold without failing anything: every other
    /// test, pending or disabled, counts as passed until the DNS TTL.
    pub dnswl_allowlisted: bool,
    /// The permanent access list rejected the client and the denylist action is `enforce` or
    /// `drop` (with `ignore` postscreen takes the failure back; leave this false).
    pub denylisted: bool,
    /// The client connected to an address outside `allowlist_interfaces` (`ALLOWLIST VETO`).
    pub allowlist_veto: bool,
}

impl SessionResults {
    pub fn set_outcome(&mut self, test: Test, outcome: Outcome) {
        match test {
            Test::Pregreet => self.pregreet = outcome,
            Test::Dnsbl => self.dnsbl = outcome,
            Test::Pipelining => self.pipelining = outcome,
            Test::NonSmtpCommand => self.non_smtp_command = outcome,
            Test::BareNewline => self.bare_newline = outcome,
        }
    }

    pub fn outcome(&self, test: Test) -> Outcome {
        match test {
            Test::Pregreet => self.pregreet,
            Test::Dnsbl => self.dnsbl,
            Test::Pipelining => self.pipelining,
            Test::NonSmtpCommand => self.non_smtp_command,
            Test::BareNewline => self.bare_newline,
        }
    }

    /// Any failure: no pass of this session counts, and nothing is cached.
    pub fn failed(&self) -> bool {
        self.denylisted
            || self.allowlist_veto
            || Test::ALL
                .iter()
                .any(|&t| self.outcome(t) == Outcome::Failed)
    }
}

/// What to do when a session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conclusion {
    /// Log `PASS NEW [a]:p` or `PASS OLD [a]:p`: every due test passed.
    pub pass: Option<PassKind>,
    /// The record to store with [`AllowlistCache::record`]; `None`: store nothing.
    pub update: Option<TestTimes>,
}

/// Decides at the end of a session, as postscreen's `psc_conclude` does:
///
/// - any failure: no pass counts, nothing is logged or cached (failures are never cached, so a
///   listed client is tested again on every connection);
/// - a passed test expires at `now` + its TTL; a deep test ignored at `now` + the shortest TTL;
/// - a DNSWL allowlisting passes DNSBL until `now` + the DNS TTL and moves every other test,
///   disabled ones too, to at least that time (an existing later expiry is kept);
/// - the record is written when anything passed, even if some due test is still pending (a
///   client may pass over several sessions); tests that are disabled and never passed are
///   written as [`DISABLED_WHEN_WRITTEN`];
/// - the pass is logged once every due test passed.
pub fn conclude(
    screening: &Screening,
    results: &SessionResults,
    enabled: &EnabledTests,
    ttls: &TestTtls,
    now: u64,
) -> Conclusion {
    const NOTHING: Conclusion = Conclusion {
        pass: None,
        update: None,
    };
    if results.failed() {
        return NOTHING;
    }
    let mut times = screening.times;
    let mut passed = DueTests::default();
    for test in Test::ALL {
        let ttl = match results.outcome(test) {
            Outcome::Passed => ttls.pass(test, results.dns_ttl),
            Outcome::Ignored if test.is_deep() => ttls.shortest(),
            _ => continue,
        };
        times.set(test, now.saturating_add(ttl.as_secs()));
        passed.set(test);
    }
    if results.dnswl_allowlisted {
        let until = now.saturating_add(ttls.dnsbl(results.dns_ttl).as_secs());
        for test in Test::ALL {
            let expiry = match test {
                Test::Dnsbl => until,
                _ => times.get(test).max(until),
            };
            times.set(test, expiry);
            passed.set(test);
        }
    }
    if passed.is_empty() {
        return NOTHING;
    }
    for test in Test::ALL {
        if !enabled.get(test) && times.get(test) == NEVER_PASSED {
            times.set(test, DISABLED_WHEN_WRITTEN);
        }
    }
    let every_due_passed = Test::ALL
        .iter()
        .all(|&t| !screening.due.get(t) || passed.get(t));
    Conclusion {
        pass: every_due_passed.then_some(screening.pass_kind),
        update: Some(times),
    }
}

/// The cleanup rule: a record is kept until every one of its tests expired more than
/// `retention` (`cache_retention_time`) ago, so a client that comes back soon is not logged
/// `NEW` again.
pub fn retain(times: &TestTimes, now: u64, retention: Duration) -> bool {
    times.latest_expiry().saturating_add(retention.as_secs()) >= now
}

/// How long until the next cleanup, given when the last one finished: at once if it never
/// ran or is overdue, never later than `interval`. `None`: `interval` 0 disables the cleanup.
pub fn next_cleanup_in(
    last_completed: Option<u64>,
    interval: Duration,
    now: u64,
) -> Option<Duration> {
    if interval.is_zero() {
        return None;
    }
    let wait = match last_completed {
        None => 0,
        Some(last) => last.saturating_add(interval.as_secs()).saturating_sub(now),
    };
    Some(Duration::from_secs(wait).min(interval))
}

/// The current time in Unix seconds, the unit of [`TestTimes`].
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Limits and batching of an [`AllowlistCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheOptions {
    /// Most records kept. Past it, the record whose latest expiry is earliest goes first, from
    /// memory and from the file: it is the one whose client would be tested again soonest
    /// anyway. About 150 bytes of memory each.
    pub max_entries: usize,
    /// Updates waiting for the writer. A full queue drops updates (kept in memory, counted).
    pub queue_capacity: usize,
    /// A batch is committed once it holds this many changes…
    pub batch_max_entries: usize,
    /// …or this long after its first change.
    pub batch_interval: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            queue_capacity: 8_192,
            batch_max_entries: 1_024,
            batch_interval: Duration::from_secs(1),
        }
    }
}

impl CacheOptions {
    fn sane(self) -> Self {
        Self {
            max_entries: self.max_entries.max(1),
            queue_capacity: self.queue_capacity.max(1),
            batch_max_entries: self.batch_max_entries.max(1),
            batch_interval: self.batch_interval,
        }
    }
}

/// The result of one cleanup scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanupCounts {
    pub retained: usize,
    pub dropped: usize,
}

impl CleanupCounts {
    /// postscreen's line: `cache <name> full cleanup: retained=N dropped=M entries`.
    pub fn log_line(&self, cache_name: &str) -> String {
        format!(
            "cache {cache_name} full cleanup: retained={} dropped={} entries",
            self.retained, self.dropped
        )
    }
}

/// Counters for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Records in memory.
    pub entries: usize,
    /// Updates not written because the queue was full or the writer had stopped.
    pub dropped_writes: u64,
    /// Batches that failed to commit (their changes are lost from the file).
    pub write_errors: u64,
    /// Records evicted by `max_entries`.
    pub evictions: u64,
    /// Batches committed.
    pub batches_committed: u64,
    /// Corrupt records found in the file at open (skipped and removed).
    pub corrupt_records: u64,
}

#[derive(Debug, Default)]
struct Counters {
    dropped_writes: AtomicU64,
    write_errors: AtomicU64,
    evictions: AtomicU64,
    batches_committed: AtomicU64,
    corrupt_records: AtomicU64,
}

/// The in-memory records, bounded, with an index by latest expiry for eviction and cleanup.
#[derive(Debug)]
struct Records {
    map: HashMap<IpAddr, TestTimes>,
    by_expiry: BTreeSet<(u64, IpAddr)>,
    max: usize,
}

impl Records {
    fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            by_expiry: BTreeSet::new(),
            max,
        }
    }

    /// Stores a record; returns the address evicted to make room, which may be `addr` itself
    /// when its record expires before every other one.
    fn insert(&mut self, addr: IpAddr, times: TestTimes) -> Option<IpAddr> {
        if let Some(old) = self.map.insert(addr, times) {
            self.by_expiry.remove(&(old.latest_expiry(), addr));
        }
        self.by_expiry.insert((times.latest_expiry(), addr));
        if self.map.len() <= self.max {
            return None;
        }
        let (_, victim) = self.by_expiry.pop_first()?;
        self.map.remove(&victim);
        Some(victim)
    }

    fn remove(&mut self, addr: &IpAddr) -> bool {
        match self.map.remove(addr) {
            Some(old) => self.by_expiry.remove(&(old.latest_expiry(), *addr)),
            None => false,
        }
    }

    /// Removes every record [`retain`] lets go: a prefix of the expiry index.
    fn remove_expired(&mut self, now: u64, retention: Duration) -> Vec<IpAddr> {
        let mut dropped = Vec::new();
        while let Some(&(latest, addr)) = self.by_expiry.first() {
            if latest.saturating_add(retention.as_secs()) >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.map.remove(&addr);
            dropped.push(addr);
        }
        dropped
    }

    fn clear(&mut self) -> usize {
        let count = self.map.len();
        self.map.clear();
        self.by_expiry.clear();
        count
    }
}

/// A change for the writer task.
#[derive(Debug)]
enum WriteOp {
    Put(IpAddr, TestTimes),
    Delete(IpAddr),
    DeleteMany(Vec<IpAddr>),
    Clear,
    CleanupCompleted(u64),
    /// Commit what is pending and answer.
    Flush(oneshot::Sender<Result<(), CacheError>>),
    /// Commit what is pending, answer, and stop (releasing the file).
    Close(oneshot::Sender<Result<(), CacheError>>),
}

/// Changes waiting to be committed; later changes to an address replace earlier ones.
#[derive(Debug, Default)]
struct Batch {
    clear: bool,
    changes: HashMap<IpAddr, Option<TestTimes>>,
    cleanup_completed: Option<u64>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        !self.clear && self.changes.is_empty() && self.cleanup_completed.is_none()
    }

    fn add(&mut self, op: WriteOp) {
        match op {
            WriteOp::Put(addr, times) => {
                self.changes.insert(addr, Some(times));
            }
            WriteOp::Delete(addr) => {
                self.changes.insert(addr, None);
            }
            WriteOp::DeleteMany(addrs) => {
                self.changes.extend(addrs.into_iter().map(|a| (a, None)));
            }
            WriteOp::Clear => {
                self.clear = true;
                self.changes.clear();
            }
            WriteOp::CleanupCompleted(at) => self.cleanup_completed = Some(at),
            WriteOp::Flush(_) | WriteOp::Close(_) => {}
        }
    }
}

/// The persistent temporary allowlist. Share it between connections behind an `Arc`.
///
/// ```no_run
/// # async fn example(state_dir: &std::path::Path, client: std::net::IpAddr) -> Result<(), screen_user::cache::CacheError> {
/// use screen_user::cache::{self, AllowlistCache, CacheOptions, EnabledTests, Start};
///
/// let cache = AllowlistCache::open(state_dir, CacheOptions::default()).await?;
/// let enabled = EnabledTests { pregreet: true, dnsbl: true, ..Default::default() };
/// match cache::start(cache.get(client).as_ref(), &enabled, cache::unix_now()) {
///     Start::PassOld => { /* log PASS OLD, hand off */ }
///     Start::Screen(screening) => { /* run screening.due, then cache::conclude(…) */ }
/// }
/// cache.close().await
/// # }
/// ```
#[derive(Debug)]
pub struct AllowlistCache {
    path: PathBuf,
    name: String,
    records: RwLock<Records>,
    queue: mpsc::Sender<WriteOp>,
    writer: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    last_cleanup: Mutex<Option<u64>>,
    last_drop_warning: AtomicU64,
}

impl AllowlistCache {
    /// Opens (or creates) `state_dir/allowlist.redb`, loads every valid record into memory and
    /// starts the writer task. Corrupt records are skipped with a warning and removed; a file
    /// that is not a readable database is renamed `allowlist.redb.corrupt-<time>` with a
    /// warning and a new one is started: losing the cache costs a re-test, not mail.
    /// [`CacheError::InUse`] when another process (or another `AllowlistCache`) holds it.
    pub async fn open(state_dir: &Path, options: CacheOptions) -> Result<Self, CacheError> {
        let options = options.sane();
        let path = state_dir.join(FILE_NAME);
        let name = format!("redb:{}", path.display());
        let loaded = {
            let (file, log_name) = (path.clone(), name.clone());
            tokio::task::spawn_blocking(move || {
                open_and_load(&file, &log_name, options.max_entries)
            })
            .await
            .map_err(|_| CacheError::WriterStopped { path: path.clone() })??
        };
        let counters = Arc::new(Counters::default());
        counters
            .corrupt_records
            .store(loaded.corrupt, Ordering::Relaxed);
        counters.evictions.store(loaded.evicted, Ordering::Relaxed);
        let (queue, receiver) = mpsc::channel(options.queue_capacity);
        let writer = tokio::spawn(write_loop(
            Arc::new(loaded.db),
            path.clone(),
            receiver,
            options,
            Arc::clone(&counters),
        ));
        Ok(Self {
            path,
            name,
            records: RwLock::new(loaded.records),
            queue,
            writer: Mutex::new(Some(writer)),
            counters,
            last_cleanup: Mutex::new(loaded.last_cleanup),
            last_drop_warning: AtomicU64::new(0),
        })
    }

    /// The cache's name in log lines, `redb:<path>` (postscreen logs `btree:<path>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A client's record, from memory. IPv4-mapped IPv6 addresses are their IPv4 address.
    pub fn get(&self, addr: IpAddr) -> Option<TestTimes> {
        self.read().map.get(&addr.to_canonical()).copied()
    }

    /// Stores a client's record: in memory at once, on disk with the next batch. Never waits:
    /// when the writer's queue is full the update is counted and not written.
    pub fn record(&self, addr: IpAddr, times: TestTimes) {
        let addr = addr.to_canonical();
        // Queued under the lock, so the file sees updates of one address in memory's order.
        let mut records = self.write();
        let evicted = records.insert(addr, times);
        if let Some(victim) = evicted {
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            self.queue(WriteOp::Delete(victim));
        }
        if evicted != Some(addr) {
            self.queue(WriteOp::Put(addr, times));
        }
    }

    /// Every record, ordered by address (for `smtp-screen cache list`).
    pub fn list(&self) -> Vec<(IpAddr, TestTimes)> {
        let mut all: Vec<_> = self.read().map.iter().map(|(a, t)| (*a, *t)).collect();
        all.sort_unstable_by_key(|(addr, _)| *addr);
        all
    }

    /// Records in memory.
    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes a client's record and waits until the file no longer has it. Whether there was
    /// one.
    pub async fn delete(&self, addr: IpAddr) -> Result<bool, CacheError> {
        let addr = addr.to_canonical();
        let existed = self.write().remove(&addr);
        self.send(WriteOp::Delete(addr)).await?;
        self.flush().await?;
        Ok(existed)
    }

    /// Empties the cache, memory and file. How many records there were.
    pub async fn flush_all(&self) -> Result<usize, CacheError> {
        let count = self.write().clear();
        self.send(WriteOp::Clear).await?;
        self.flush().await?;
        Ok(count)
    }

    /// Commits every change queued so far, and waits for it.
    pub async fn flush(&self) -> Result<(), CacheError> {
        let (reply, answer) = oneshot::channel();
        self.send(WriteOp::Flush(reply)).await?;
        answer.await.map_err(|_| self.writer_stopped())?
    }

    /// Commits what is queued, stops the writer and releases the file. Later updates stay in
    /// memory only (and are counted as dropped).
    pub async fn close(&self) -> Result<(), CacheError> {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(writer) = writer else {
            return Ok(());
        };
        let (reply, answer) = oneshot::channel();
        let committed = match self.queue.send(WriteOp::Close(reply)).await {
            Ok(()) => answer.await.map_err(|_| self.writer_stopped())?,
            Err(_) => Err(self.writer_stopped()),
        };
        // The writer drops the database as it ends: once it has, the file is free.
        writer.await.map_err(|_| self.writer_stopped())?;
        committed
    }

    /// One cleanup scan (`cache_cleanup_interval`): drops the records [`retain`] lets go, from
    /// memory at once and from the file with the next batch, and remembers when it ran.
    pub async fn cleanup(
        &self,
        now: u64,
        retention: Duration,
    ) -> Result<CleanupCounts, CacheError> {
        let (dropped, retained) = {
            let mut records = self.write();
            let dropped = records.remove_expired(now, retention);
            (dropped, records.map.len())
        };
        let counts = CleanupCounts {
            retained,
            dropped: dropped.len(),
        };
        if !dropped.is_empty() {
            self.send(WriteOp::DeleteMany(dropped)).await?;
        }
        self.send(WriteOp::CleanupCompleted(now)).await?;
        *self
            .last_cleanup
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(now);
        Ok(counts)
    }

    /// When the last cleanup finished, in Unix seconds, kept across restarts.
    pub fn last_cleanup(&self) -> Option<u64> {
        *self
            .last_cleanup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs [`cleanup`](Self::cleanup) every `interval` and logs postscreen's line. The first
    /// run comes `interval` after the last one finished, at once if that is past (or never
    /// was). `None` when `interval` is 0 (disabled). Stops when the writer has stopped.
    pub fn spawn_cleanup(
        self: &Arc<Self>,
        interval: Duration,
        retention: Duration,
    ) -> Option<JoinHandle<()>> {
        if interval.is_zero() {
            return None;
        }
        let cache = Arc::clone(self);
        Some(tokio::spawn(async move {
            loop {
                let wait =
                    next_cleanup_in(cache.last_cleanup(), interval, unix_now()).unwrap_or(interval);
                tokio::time::sleep(wait).await;
                match cache.cleanup(unix_now(), retention).await {
                    Ok(counts) => tracing::info!("{}", counts.log_line(cache.name())),
                    Err(e) => {
                        tracing::warn!("cache {} cleanup stopped: {e}", cache.name());
                        return;
                    }
                }
            }
        }))
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            entries: self.len(),
            dropped_writes: c.dropped_writes.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            batches_committed: c.batches_committed.load(Ordering::Relaxed),
            corrupt_records: c.corrupt_records.load(Ordering::Relaxed),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Records> {
        self.records.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Records> {
        self.records.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn writer_stopped(&self) -> CacheError {
        CacheError::WriterStopped {
            path: self.path.clone(),
        }
    }

    /// Queues a change without waiting (the connection path).
    fn queue(&self, op: WriteOp) {
        let why = match self.queue.try_send(op) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "the write queue is full",
            Err(TrySendError::Closed(_)) => "the writer has stopped",
        };
        let dropped = self.counters.dropped_writes.fetch_add(1, Ordering::Relaxed) + 1;
        let now = unix_now();
        let last = self.last_drop_warning.load(Ordering::Relaxed);
        if now >= last.saturating_add(DROP_WARNING_INTERVAL_SECS)
            && self
                .last_drop_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                "cache {}: {why}: an allowlist update was kept in memory only \
                 ({dropped} so far); it will not survive a restart",
                self.name
            );
        }
    }

    /// Queues a change, waiting for room (administrative calls, not the connection path).
    async fn send(&self, op: WriteOp) -> Result<(), CacheError> {
        self.queue.send(op).await.map_err(|_| self.writer_stopped())
    }
}

/// What [`open_and_load`] found.
struct Loaded {
    db: Database,
    records: Records,
    last_cleanup: Option<u64>,
    corrupt: u64,
    evicted: u64,
}

fn db_error(path: &Path, action: &'static str, source: impl Into<redb::Error>) -> CacheError {
    CacheError::Database {
        path: path.to_path_buf(),
        action,
        source: Box::new(source.into()),
    }
}

fn open_db(path: &Path) -> Result<Database, DatabaseError> {
    let mut builder = Database::builder();
    // A plain open trusts the file and may panic on one damaged outside redb; the check turns
    // that into an error.
    builder
        .set_cache_size(DB_CACHE_BYTES)
        .set_check_integrity_on_open(true);
    builder.create(path)
}

/// A file that is damaged or not a redb database at all (as opposed to locked, unreadable
/// for lack of permission, or of a newer format).
fn is_unreadable(err: &DatabaseError) -> bool {
    match err {
        DatabaseError::Storage(StorageError::Corrupted(_)) => true,
        DatabaseError::Storage(StorageError::Io(io)) => {
            io.kind() == std::io::ErrorKind::InvalidData
        }
        _ => false,
    }
}

fn open_file(path: &Path, name: &str) -> Result<Database, CacheError> {
    let fail = |err: DatabaseError| match err {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            CacheError::InUse {
                path: path.to_path_buf(),
            }
        }
        other => db_error(path, "open the database", other),
    };
    match open_db(path) {
        Ok(db) => Ok(db),
        Err(err) if is_unreadable(&err) => {
            let aside = path.with_file_name(format!("{FILE_NAME}.corrupt-{}", unix_now()));
            std::fs::rename(path, &aside).map_err(|source| CacheError::Io {
                path: path.to_path_buf(),
                action: "move the unreadable database aside",
                source,
            })?;
            tracing::warn!(
                "cache {name}: unreadable ({err}); moved to {} and starting empty",
                aside.display()
            );
            open_db(path).map_err(fail)
        }
        Err(err) => Err(fail(err)),
    }
}

/// Opens the file and loads it, keeping at most `max` records; corrupt records and records
/// beyond `max` are removed from the file in the same transaction.
fn open_and_load(path: &Path, name: &str, max: usize) -> Result<Loaded, CacheError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| CacheError::Io {
            path: dir.to_path_buf(),
            action: "create the state directory",
            source,
        })?;
    }
    let db = open_file(path, name)?;
    let load_err = |e: redb::Error| db_error(path, "load the allowlist", e);
    let mut records = Records::new(max);
    let (mut corrupt, mut evicted) = (0u64, 0u64);
    let last_cleanup;
    let txn = db.begin_write().map_err(|e| load_err(e.into()))?;
    {
        let mut table = txn.open_table(RECORDS).map_err(|e| load_err(e.into()))?;
        for entry in table.iter().map_err(|e| load_err(e.into()))? {
            let (key, value) = entry.map_err(|e| load_err(e.into()))?;
            match parse_entry(key.value(), value.value()) {
                Ok((addr, times)) => {
                    if records.insert(addr, times).is_some() {
                        evicted += 1;
                    }
                }
                Err(err) => {
                    corrupt += 1;
                    if corrupt <= MAX_CORRUPT_WARNINGS {
                        tracing::warn!("cache {name}: skipping a corrupt record: {err}");
                    }
                }
            }
        }
        if corrupt > 0 || evicted > 0 {
            table
                .retain(|key, value| {
                    parse_entry(key, value)
                        .is_ok_and(|(addr, times)| records.map.get(&addr) == Some(&times))
                })
                .map_err(|e| load_err(e.into()))?;
        }
        let meta = txn.open_table(META).map_err(|e| load_err(e.into()))?;
        last_cleanup = meta
            .get(LAST_CLEANUP_KEY)
            .map_err(|e| load_err(e.into()))?
            .and_then(|v| parse_timestamp(v.value()));
    }
    txn.commit().map_err(|e| load_err(e.into()))?;
    if corrupt > MAX_CORRUPT_WARNINGS {
        tracing::warn!("cache {name}: {corrupt} corrupt records skipped and removed");
    }
    if evicted > 0 {
        tracing::warn!("cache {name}: {evicted} records over max_entries={max} removed");
    }
    Ok(Loaded {
        db,
        records,
        last_cleanup,
        corrupt,
        evicted,
    })
}

/// A stored key and value, checked: the key is an address in the text form this cache writes
/// (canonical, IPv4-mapped addresses as IPv4), the value a record.
fn parse_entry(key: &[u8], value: &[u8]) -> Result<(IpAddr, TestTimes), CacheError> {
    let addr = parse_key(key)?;
    let times = TestTimes::parse(value).map_err(|error| CacheError::StoredRecord {
        key: addr,
        error: Box::new(error),
    })?;
    Ok((addr, times))
}

fn parse_key(key: &[u8]) -> Result<IpAddr, CacheError> {
    let err = |why| CacheError::RecordKey {
        key: String::from_utf8_lossy(&key[..key.len().min(MAX_KEY_LEN)]).into_owned(),
        why,
    };
    if key.len() > MAX_KEY_LEN {
        return Err(err("is too long for an address"));
    }
    let text = std::str::from_utf8(key).map_err(|_| err("is not text"))?;
    let addr: IpAddr = text.parse().map_err(|_| err("is not an IP address"))?;
    if addr.to_canonical() != addr || addr.to_string() != text {
        return Err(err("is not in canonical form"));
    }
    Ok(addr)
}

fn parse_timestamp(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

async fn write_loop(
    db: Arc<Database>,
    path: PathBuf,
    mut queue: mpsc::Receiver<WriteOp>,
    options: CacheOptions,
    counters: Arc<Counters>,
) {
    let mut batch = Batch::default();
    let mut deadline: Option<Instant> = None;
    loop {
        let op = tokio::select! {
            op = queue.recv() => op,
            () = wait_until(deadline) => {
                // A failure is logged and counted inside; the next batch tries again.
                let _ = commit(&db, &path, &mut batch, &counters).await;
                deadline = None;
                continue;
            }
        };
        match op {
            Some(WriteOp::Flush(reply)) => {
                let _ = reply.send(commit(&db, &path, &mut batch, &counters).await);
                deadline = None;
            }
            Some(WriteOp::Close(reply)) => {
                let _ = reply.send(commit(&db, &path, &mut batch, &counters).await);
                break;
            }
            None => {
                let _ = commit(&db, &path, &mut batch, &counters).await;
                break;
            }
            Some(op) => {
                batch.add(op);
                if batch.changes.len() >= options.batch_max_entries {
                    let _ = commit(&db, &path, &mut batch, &counters).await;
                    deadline = None;
                } else if deadline.is_none() {
                    deadline = Some(Instant::now() + options.batch_interval);
                }
            }
        }
    }
    queue.close();
    // Closing the database syncs the file: off the async threads, like every write.
    let _ = tokio::task::spawn_blocking(move || drop(db)).await;
}

async fn wait_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn commit(
    db: &Arc<Database>,
    path: &Path,
    batch: &mut Batch,
    counters: &Counters,
) -> Result<(), CacheError> {
    if batch.is_empty() {
        return Ok(());
    }
    let work = std::mem::take(batch);
    let db = Arc::clone(db);
    let result = match tokio::task::spawn_blocking(move || write_batch(&db, work)).await {
        Ok(result) => result.map_err(|e| db_error(path, "write the allowlist", e)),
        Err(_) => Err(CacheError::WriterStopped {
            path: path.to_path_buf(),
        }),
    };
    match &result {
        Ok(()) => counters.batches_committed.fetch_add(1, Ordering::Relaxed),
        Err(err) => {
            tracing::warn!("{err}");
            counters.write_errors.fetch_add(1, Ordering::Relaxed)
        }
    };
    result
}

fn write_batch(db: &Database, batch: Batch) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        if batch.clear {
            txn.delete_table(RECORDS)?;
        }
        let mut table = txn.open_table(RECORDS)?;
        for (addr, change) in batch.changes {
            let key = addr.to_string();
            match change {
                Some(times) => {
                    table.insert(key.as_bytes(), times.to_string().as_bytes())?;
                }
                None => {
                    table.remove(key.as_bytes())?;
                }
            }
        }
        if let Some(at) = batch.cleanup_completed {
            let mut meta = txn.open_table(META)?;
            meta.insert(LAST_CLEANUP_KEY, at.to_string().as_bytes())?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr};

    const DAY: u64 = 86_400;
    /// The lab's clock when 127.0.0.11 passed (reference §2.2).
    const NOW: u64 = 1_795_313_732;

    fn all_enabled() -> EnabledTests {
        EnabledTests {
            pregreet: true,
            dnsbl: true,
            pipelining: true,
            non_smtp_command: true,
            bare_newline: true,
        }
    }

    fn early_only() -> EnabledTests {
        EnabledTests {
            pregreet: true,
            dnsbl: true,
            ..Default::default()
        }
    }

    fn times(text: &str) -> TestTimes {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn screening(start: Start) -> Screening {
        match start {
            Start::Screen(s) => s,
            Start::PassOld => panic!("expected tests to be due"),
        }
    }

    // --- Record text ---

    #[test]
    fn record_text_round_trips_postscreen_format() {
        let lab = "1795400132;1795313852;1797905732;1797905732;1797905732";
        let t = times(lab);
        assert_eq!(t.pregreet, 1_795_400_132);
        assert_eq!(t.dnsbl, 1_795_313_852);
        assert_eq!(t.bare_newline, 1_797_905_732);
        assert_eq!(t.to_string(), lab);
        assert_eq!(TestTimes::NEW.to_string(), "0;0;0;0;0");
        assert_eq!(times("1;1;1;1;1").pipelining, DISABLED_WHEN_WRITTEN);
        let max = format!("{0};{0};{0};{0};{0}", u64::MAX);
        assert_eq!(max.len(), MAX_RECORD_LEN);
        assert_eq!(times(&max).to_string(), max);
    }

    #[test]
    fn record_with_wrong_field_count_is_rejected() {
        for (text, found) in [
            ("", 1),
            ("1", 1),
            ("1;2;3;4", 4),
            ("1;2;3;4;5;6", 6),
            ("1;2;3;4;5;", 6),
            (";;;;;;;;", 9),
        ] {
            match TestTimes::parse(text.as_bytes()) {
                Err(CacheError::RecordFieldCount { found: f }) => assert_eq!(f, found, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn record_field_errors_name_the_field() {
        for (text, test, position, why) in [
            ("1;;3;4;5", "dnsbl", 2, "empty"),
            (";2;3;4;5", "pregreet", 1, "empty"),
            ("1;2;x;4;5", "pipelining", 3, "not a decimal"),
            ("1;2;3;-4;5", "non_smtp_command", 4, "not a decimal"),
            ("+1;2;3;4;5", "pregreet", 1, "not a decimal"),
            (" 1;2;3;4;5", "pregreet", 1, "not a decimal"),
            ("1;2;3;4;5\n", "bare_newline", 5, "not a decimal"),
            ("1;2;3;4;5 ", "bare_newline", 5, "not a decimal"),
            ("1;2;3;4;0x10", "bare_newline", 5, "not a decimal"),
            ("1;2;3;4;18446744073709551616", "bare_newline", 5, "larger"),
            ("1;2;3;4;99999999999999999999", "bare_newline", 5, "larger"),
        ] {
            let err = TestTimes::parse(text.as_bytes()).unwrap_err();
            match &err {
                CacheError::RecordField {
                    test: t,
                    position: p,
                    ..
                } => {
                    assert_eq!((*t, *p), (test, position), "{text:?}");
                    assert!(err.to_string().contains(why), "{text:?}: {err}");
                    assert!(err.to_string().contains(test), "{err}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn non_utf8_record_is_rejected() {
        let err = TestTimes::parse(b"1;2;\xff\xfe;4;5").unwrap_err();
        assert!(
            matches!(err, CacheError::RecordField { position: 3, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn oversized_record_is_rejected_before_parsing() {
        let long = format!("{};2;3;4;5", "1".repeat(200));
        assert!(matches!(
            TestTimes::parse(long.as_bytes()),
            Err(CacheError::RecordTooLong { len: 208 })
        ));
        let huge = vec![b';'; 1 << 20];
        assert!(matches!(
            TestTimes::parse(&huge),
            Err(CacheError::RecordTooLong { .. })
        ));
        // One byte past the longest valid record.
        let over = format!("{0};{0};{0};{0};1{0}", u64::MAX);
        assert!(matches!(
            TestTimes::parse(over.as_bytes()),
            Err(CacheError::RecordTooLong { .. })
        ));
    }

    #[test]
    fn garbage_never_panics_and_valid_parses_round_trip() {
        // A small deterministic generator biased towards digits and separators.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"0123456789;;;; x-\xff\n";
        let mut parsed = 0;
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let text: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if let Ok(t) = TestTimes::parse(&text) {
                parsed += 1;
                assert_eq!(TestTimes::parse(t.to_string().as_bytes()).unwrap(), t);
            }
        }
        assert!(parsed > 0, "the generator never made a valid record");
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

    // --- Policy ---

    #[test]
    fn due_tests_are_the_enabled_expired_or_never_passed_ones() {
        let record = TestTimes {
            pregreet: NOW + 10,
            dnsbl: NOW - 1,
            pipelining: NEVER_PASSED,
            non_smtp_command: DISABLED_WHEN_WRITTEN,
            bare_newline: NOW,
        };
        let due = due_tests(&record, &all_enabled(), NOW);
        assert_eq!(
            due,
            DueTests {
                pregreet: false,
                dnsbl: true,
                pipelining: true,
                non_smtp_command: true,
                // Expiring this very second is still valid: due only when now > expiry.
                bare_newline: false,
            }
        );
        assert!(due.any_deep());
        // Disabled tests are never due, whatever their time.
        let due = due_tests(&record, &early_only(), NOW);
        assert_eq!(
            due,
            DueTests {
                dnsbl: true,
                ..Default::default()
            }
        );
        assert!(!due.any_deep());
    }

    #[test]
    fn pass_old_at_once_when_every_enabled_test_is_unexpired() {
        let record = TestTimes {
            pregreet: NOW + DAY,
            dnsbl: NOW + 60,
            pipelining: NEVER_PASSED,
            non_smtp_command: DISABLED_WHEN_WRITTEN,
            bare_newline: NOW - DAY,
        };
        assert!(is_pass_old(&record, &early_only(), NOW));
        assert_eq!(start(Some(&record), &early_only(), NOW), Start::PassOld);
        // One second later DNSBL has expired: only it is due, and a pass will be OLD.
        let s = screening(start(Some(&record), &early_only(), NOW + 61));
        assert_eq!(
            s.due,
            DueTests {
                dnsbl: true,
                ..Default::default()
            }
        );
        assert_eq!(s.pass_kind, PassKind::Old);
        // With the deep tests enabled the same record is not a pass.
        assert!(!is_pass_old(&record, &all_enabled(), NOW));
    }

    #[test]
    fn unknown_client_is_new_with_every_enabled_test_due() {
        let s = screening(start(None, &early_only(), NOW));
        assert_eq!(s.times, TestTimes::NEW);
        assert_eq!(s.pass_kind, PassKind::New);
        assert_eq!(
            s.due,
            DueTests {
                pregreet: true,
                dnsbl: true,
                ..Default::default()
            }
        );
        // Nothing enabled: screened (not PASS OLD), nothing due; the session passes nothing.
        let s = screening(start(None, &EnabledTests::default(), NOW));
        assert!(s.due.is_empty());
    }

    #[test]
    fn new_only_while_an_enabled_test_never_passed() {
        let mut record = times("0;1795313852;1;1;1");
        assert_eq!(pass_kind(&record, &early_only()), PassKind::New);
        // A 0 of a test that is disabled now does not make the client new.
        assert_eq!(
            pass_kind(
                &record,
                &EnabledTests {
                    dnsbl: true,
                    ..Default::default()
                }
            ),
            PassKind::Old
        );
        // A test disabled when the record was written (1) and enabled since is due, but a pass
        // of it is OLD: the client is not new.
        record.pregreet = NOW + DAY;
        let s = screening(start(Some(&record), &all_enabled(), NOW));
        assert!(s.due.pipelining && s.due.non_smtp_command && s.due.bare_newline);
        assert_eq!(s.pass_kind, PassKind::Old);
    }

    #[test]
    fn first_pass_writes_the_lab_record() {
        // 127.0.0.11 in the lab: every test enabled, the early tests passed (negative SOA TTL
        // 120 s), then the deep tests at RCPT; PASS NEW and this exact record.
        let s = screening(start(None, &all_enabled(), NOW));
        let results = SessionResults {
            pregreet: Outcome::Passed,
            dnsbl: Outcome::Passed,
            pipelining: Outcome::Passed,
            non_smtp_command: Outcome::Passed,
            bare_newline: Outcome::Passed,
            dns_ttl: Some(Duration::from_secs(120)),
            ..Default::default()
        };
        let c = conclude(&s, &results, &all_enabled(), &TestTtls::default(), NOW);
        assert_eq!(c.pass, Some(PassKind::New));
        assert_eq!(
            c.update.unwrap().to_string(),
            "1795400132;1795313852;1797905732;1797905732;1797905732"
        );
        // The second connection, 0.1 s later, is PASS OLD at once.
        assert_eq!(
            start(c.update.as_ref(), &all_enabled(), NOW + 1),
            Start::PassOld
        );
    }

    #[test]
    fn disabled_tests_are_written_as_one() {
        let s = screening(start(None, &early_only(), NOW));
        let results = SessionResults {
            pregreet: Outcome::Passed,
            dnsbl: Outcome::Passed,
            dns_ttl: Some(Duration::from_secs(120)),
            ..Default::default()
        };
        let c = conclude(&s, &results, &early_only(), &TestTtls::default(), NOW);
        assert_eq!(c.pass, Some(PassKind::New));
        assert_eq!(
            c.update,
            Some(TestTimes {
                pregreet: NOW + DAY,
                dnsbl: NOW + 120,
                pipelining: DISABLED_WHEN_WRITTEN,
                non_smtp_command: DISABLED_WHEN_WRITTEN,
                bare_newline: DISABLED_WHEN_WRITTEN,
            })
        );
    }

    #[test]
    fn partial_pass_is_cached_without_a_pass_line_and_completes_as_new() {
        let ttls = TestTtls::default();
        // Session 1: early tests pass, the client quits before RCPT.
        let s = screening(start(None, &all_enabled(), NOW));
        let results = SessionResults {
            pregreet: Outcome::Passed,
            dnsbl: Outcome::Passed,
            ..Default::default()
        };
        let c = conclude(&s, &results, &all_enabled(), &ttls, NOW);
        assert_eq!(c.pass, None);
        let record = c.update.unwrap();
        // No DNS TTL: the minimum.
        assert_eq!(record, times(&format!("{};{};0;0;0", NOW + DAY, NOW + 60)));
        // Session 2: only the deep tests are due, and passing them is PASS NEW.
        let s = screening(start(Some(&record), &all_enabled(), NOW + 5));
        assert_eq!(s.pass_kind, PassKind::New);
        assert!(!s.due.pregreet && !s.due.dnsbl && s.due.any_deep());
        let results = SessionResults {
            pipelining: Outcome::Passed,
            non_smtp_command: Outcome::Passed,
            bare_newline: Outcome::Passed,
            ..Default::default()
        };
        let c = conclude(&s, &results, &all_enabled(), &ttls, NOW + 5);
        assert_eq!(c.pass, Some(PassKind::New));
        let deep = NOW + 5 + 30 * DAY;
        assert_eq!(
            c.update.unwrap(),
            times(&format!("{};{};{deep};{deep};{deep}", NOW + DAY, NOW + 60))
        );
    }

    #[test]
    fn expired_test_re_passed_is_old_and_only_it_moves() {
        let record = times(&format!(
            "{};{};{};{};{}",
            NOW + 3_600,
            NOW - 10,
            NOW + DAY,
            NOW + DAY,
            NOW + DAY
        ));
        let s = screening(start(Some(&record), &all_enabled(), NOW));
        assert_eq!(
            s.due,
            DueTests {
                dnsbl: true,
                ..Default::default()
            }
        );
        let results = SessionResults {
            dnsbl: Outcome::Passed,
            dns_ttl: Some(Duration::from_secs(300)),
            ..Default::default()
        };
        let c = conclude(&s, &results, &all_enabled(), &TestTtls::default(), NOW);
        assert_eq!(c.pass, Some(PassKind::Old));
        let mut expected = record;
        expected.dnsbl = NOW + 300;
        assert_eq!(c.update, Some(expected));
    }

    #[test]
    fn dns_ttl_is_clamped_to_min_and_max() {
        let ttls = TestTtls::default();
        assert_eq!(
            ttls.dnsbl(Some(Duration::from_secs(5))),
            Duration::from_secs(60)
        );
        assert_eq!(
            ttls.dnsbl(Some(Duration::from_secs(7_200))),
            Duration::from_secs(3_600)
        );
        assert_eq!(
            ttls.dnsbl(Some(Duration::from_secs(300))),
            Duration::from_secs(300)
        );
        assert_eq!(ttls.dnsbl(None), Duration::from_secs(60));
        let s = screening(start(None, &early_only(), NOW));
        let results = SessionResults {
            dnsbl: Outcome::Passed,
            dns_ttl: Some(Duration::from_secs(86_400)),
            ..Default::default()
        };
        let c = conclude(&s, &results, &early_only(), &ttls, NOW);
        assert_eq!(c.update.unwrap().dnsbl, NOW + 3_600);
        // Pregreet is still due: no pass line yet.
        assert_eq!(c.pass, None);
    }

    #[test]
    fn dnswl_marks_every_test_passed_disabled_ones_too() {
        // 127.0.0.30 in the lab: all five fields set to now + 300 s (the DNSWL A TTL).
        let s = screening(start(None, &early_only(), NOW));
        let results = SessionResults {
            dnsbl: Outcome::Passed,
            dns_ttl: Some(Duration::from_secs(300)),
            dnswl_allowlisted: true,
            ..Default::default()
        };
        let c = conclude(&s, &results, &early_only(), &TestTtls::default(), NOW);
        assert_eq!(c.pass, Some(PassKind::New));
        let until = NOW + 300;
        assert_eq!(
            c.update.unwrap().to_string(),
            format!("{until};{until};{until};{until};{until}")
        );
        // Deep tests enabled later are not due for this client until its DNSWL pass expires.
        assert_eq!(
            start(c.update.as_ref(), &all_enabled(), NOW + 300),
            Start::PassOld
        );
        let s = screening(start(c.update.as_ref(), &all_enabled(), NOW + 301));
        assert_eq!(s.pass_kind, PassKind::Old);
        assert!(s.due.dnsbl && s.due.pregreet && s.due.any_deep());
    }

    #[test]
    fn dnswl_never_shortens_a_later_expiry_and_skips_pending_deep_tests() {
        let record = times(&format!("{};{};0;0;0", NOW + DAY, NOW - 1));
        let s = screening(start(Some(&record), &all_enabled(), NOW));
        assert_eq!(s.pass_kind, PassKind::New);
        let results = SessionResults {
            dnsbl: Outcome::Passed,
            dns_ttl: None,
            dnswl_allowlisted: true,
            ..Default::default()
        };
        let c = conclude(&s, &results, &all_enabled(), &TestTtls::default(), NOW);
        // The deep tests were due and never ran: the allowlisting passes them.
        assert_eq!(c.pass, Some(PassKind::New));
        let until = NOW + 60;
        assert_eq!(
            c.update.unwrap(),
            times(&format!("{};{until};{until};{until};{until}", NOW + DAY))
        );
    }

    #[test]
    fn ignored_deep_test_passes_until_the_shortest_ttl() {
        let ttls = TestTtls::default();
        assert_eq!(ttls.shortest(), Duration::from_secs(60));
        let record = times(&format!("{};{};0;0;0", NOW + DAY, NOW + 3_600));
        let s = screening(start(Some(&record), &all_enabled(), NOW));
        let results = SessionResults {
            pipelining: Outcome::Ignored,
            non_smtp_command: Outcome::Passed,
            bare_newline: Outcome::Ignored,
            ..Default::default()
        };
        let c = conclude(&s, &results, &all_enabled(), &ttls, NOW);
        assert_eq!(c.pass, Some(PassKind::New));
        let record = c.update.unwrap();
        assert_eq!(record.pipelining, NOW + 60);
        assert_eq!(record.non_smtp_command, NOW + 30 * DAY);
        assert_eq!(record.bare_newline, NOW + 60);
        // The shortest TTL counts every configured TTL, enabled or not.
        let ttls = TestTtls {
            pregreet: Duration::from_secs(7_200),
            dnsbl_min: Duration::from_secs(600),
            dnsbl_max: Duration::from_secs(900),
            pipelining: Duration::from_secs(86_400),
            non_smtp_command: Duration::from_secs(300),
            bare_newline: Duration::from_secs(86_400),
        };
        assert_eq!(ttls.shortest(), Duration::from_secs(300));
    }

    #[test]
    fn ignored_early_test_passes_nothing() {
        let s = screening(start(None, &early_only(), NOW));
        let results = SessionResults {
            pregreet: Outcome::Ignored,
            dnsbl: Outcome::Passed,
            ..Default::default()
        };
        let c = conclude(&s, &results, &early_only(), &TestTtls::default(), NOW);
        // DNSBL is cached, pregreet stays "never passed" and is tested again next time.
        assert_eq!(c.pass, None);
        let record = c.update.unwrap();
        assert_eq!(record.pregreet, NEVER_PASSED);
        assert_eq!(record.dnsbl, NOW + 60);
        // Only ignored early tests: nothing to write at all.
        let results = SessionResults {
            pregreet: Outcome::Ignored,
            dnsbl: Outcome::Ignored,
            ..Default::default()
        };
        let c = conclude(&s, &results, &early_only(), &TestTtls::default(), NOW);
        assert_eq!(
            c,
            Conclusion {
                pass: None,
                update: None
            }
        );
    }

    #[test]
    fn any_failure_caches_nothing() {
        let record = times(&format!("{};{};0;0;0", NOW + DAY, NOW - 1));
        let s = screening(start(Some(&record), &all_enabled(), NOW));
        let passing = SessionResults {
            pregreet: Outcome::Passed,
            dnsbl: Outcome::Passed,
            pipelining: Outcome::Passed,
            non_smtp_command: Outcome::Passed,
            bare_newline: Outcome::Passed,
            dns_ttl: Some(Duration::from_secs(300)),
            dnswl_allowlisted: true,
            ..Default::default()
        };
        let nothing = Conclusion {
            pass: None,
            update: None,
        };
        // The passing session itself does update (so each case below is a real change).
        assert!(
            conclude(&s, &passing, &all_enabled(), &TestTtls::default(), NOW)
                .update
                .is_some()
        );
        let mut failures = Vec::new();
        for test in Test::ALL {
            let mut r = passing;
            match test {
                Test::Pregreet => r.pregreet = Outcome::Failed,
                Test::Dnsbl => r.dnsbl = Outcome::Failed,
                Test::Pipelining => r.pipelining = Outcome::Failed,
                Test::NonSmtpCommand => r.non_smtp_command = Outcome::Failed,
                Test::BareNewline => r.bare_newline = Outcome::Failed,
            }
            failures.push(r);
        }
        failures.push(SessionResults {
            denylisted: true,
            ..passing
        });
        failures.push(SessionResults {
            allowlist_veto: true,
            ..passing
        });
        for r in failures {
            assert!(r.failed());
            assert_eq!(
                conclude(&s, &r, &all_enabled(), &TestTtls::default(), NOW),
                nothing,
                "{r:?}"
            );
        }
    }

    #[test]
    fn times_saturate_instead_of_wrapping() {
        let s = screening(start(None, &early_only(), u64::MAX - 5));
        let results = SessionResults {
            pregreet: Outcome::Passed,
            dnsbl: Outcome::Passed,
            ..Default::default()
        };
        let c = conclude(
            &s,
            &results,
            &early_only(),
            &TestTtls::default(),
            u64::MAX - 5,
        );
        assert_eq!(c.update.unwrap().pregreet, u64::MAX);
        assert!(retain(
            &c.update.unwrap(),
            u64::MAX,
            Duration::from_secs(u64::MAX)
        ));
    }

    #[test]
    fn retention_waits_until_every_test_expired_long_enough() {
        let week = Duration::from_secs(7 * DAY);
        let latest = NOW - 7 * DAY;
        let record = times(&format!(
            "{};{latest};0;1;{}",
            NOW - 30 * DAY,
            NOW - 8 * DAY
        ));
        assert!(retain(&record, NOW, week), "expired exactly a week ago");
        assert!(!retain(&record, NOW + 1, week), "a week and a second ago");
        // One unexpired test keeps the record, however old the others are.
        let record = times(&format!("1;{};0;0;{}", NOW - 100 * DAY, NOW + 10));
        assert!(retain(&record, NOW, week));
        assert!(!retain(&record, NOW + 10 + 7 * DAY + 1, week));
        // Nothing ever passed: nothing to keep.
        assert!(!retain(&TestTimes::NEW, NOW, week));
        assert!(retain(&record, NOW, Duration::ZERO));
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
        let db = Database::create(dir.join(FILE_NAME)).unwrap();
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
        std::fs::write(dir.0.join(FILE_NAME), vec![0x5a; 10_000]).unwrap();
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
            message.contains(FILE_NAME) && message.contains("in use"),
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
        assert_eq!(cache.path(), nested.join(FILE_NAME));
        assert_eq!(
            cache.name(),
            format!("redb:{}", nested.join(FILE_NAME).display())
        );
        cache.close().await.unwrap();
        assert!(nested.join(FILE_NAME).is_file());
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
}
