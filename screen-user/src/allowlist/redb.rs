//! The temporary allowlist kept on local disk: postscreen's cache of per-test pass times
//! ([`TestTimes`], keyed by the client's address text), held in memory for the connection path
//! and persisted in an embedded database (redb) under `state_dir`.
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
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ipnet::IpNet;
use redb::{Database, DatabaseError, ReadableTable, StorageError, TableDefinition};
use tokio::{
    sync::{
        mpsc::{self, error::TrySendError},
        oneshot,
    },
    task::JoinHandle,
    time::Instant,
};

use crate::{
    address::canonical,
    paths::{self, ALLOWLIST_FILE},
    test_state::{RecordError, TestTimes, retain, unix_now},
};

/// The longest key: an address in text form (`INET6_ADDRSTRLEN` less the NUL).
pub(crate) const MAX_KEY_LEN: usize = 45;

/// The most records [`AllowlistCache::passes_within`] looks at for one prefix.
const MAX_PREFIX_SCAN: usize = 4096;

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
    #[error(transparent)]
    Record(#[from] RecordError),
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

/// How long until the next cleanup, given when the last one finished: at once if it never
/// ran or is overdue, never later than `interval`. `None`: `interval` 0 disables the cleanup.
pub(crate) fn next_cleanup_in(
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

/// Limits and batching of an [`AllowlistCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheOptions {
    /// Most records kept. Past it, the record whose latest expiry is earliest goes first, from
    /// memory and from the file: it is the one whose client would be tested again soonest
    /// anyway. About 150 bytes of memory each.
    pub(crate) max_entries: usize,
    /// Updates waiting for the writer. A full queue drops updates (kept in memory, counted).
    pub(crate) queue_capacity: usize,
    /// A batch is committed once it holds this many changes…
    pub(crate) batch_max_entries: usize,
    /// …or this long after its first change.
    pub(crate) batch_interval: Duration,
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
pub(crate) struct CleanupCounts {
    pub(crate) retained: usize,
    pub(crate) dropped: usize,
}

impl CleanupCounts {
    /// postscreen's line: `cache <name> full cleanup: retained=N dropped=M entries`.
    pub(crate) fn log_line(&self, cache_name: &str) -> String {
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
    pub(crate) entries: usize,
    /// Updates not written because the queue was full or the writer had stopped.
    pub(crate) dropped_writes: u64,
    /// Writes that failed (their changes are kept, and written once the file can be).
    pub(crate) write_errors: u64,
    /// Records evicted by `max_entries`.
    pub(crate) evictions: u64,
    /// Batches committed.
    pub(crate) batches_committed: u64,
    /// Corrupt records found in the file at open (skipped and removed).
    pub(crate) corrupt_records: u64,
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
    /// The IPv6 addresses in order, for the records inside a prefix.
    v6: BTreeSet<Ipv6Addr>,
    max: usize,
}

impl Records {
    fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            by_expiry: BTreeSet::new(),
            v6: BTreeSet::new(),
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
        if let IpAddr::V6(v6) = addr {
            self.v6.insert(v6);
        }
        if self.map.len() <= self.max {
            return None;
        }
        let (_, victim) = self.by_expiry.pop_first()?;
        self.forget(&victim);
        Some(victim)
    }

    /// Takes `addr` out of the map and the address index (not the expiry index).
    fn forget(&mut self, addr: &IpAddr) -> Option<TestTimes> {
        if let IpAddr::V6(v6) = addr {
            self.v6.remove(v6);
        }
        self.map.remove(addr)
    }

    fn remove(&mut self, addr: &IpAddr) -> bool {
        match self.forget(addr) {
            Some(old) => self.by_expiry.remove(&(old.latest_expiry(), *addr)),
            None => false,
        }
    }

    /// Whether a record inside `net` still holds a pass at `now`. Looks at no more than
    /// [`MAX_PREFIX_SCAN`] records of an IPv6 prefix, and answers yes past that: a guard
    /// asks, and an unsure guard keeps its hands off.
    fn passes_within(&self, net: IpNet, now: u64) -> bool {
        let valid = |times: &TestTimes| times.latest_expiry() > now;
        match net {
            IpNet::V4(v4) => {
                let (first, last) = (u32::from(v4.network()), u32::from(v4.broadcast()));
                if last - first < MAX_PREFIX_SCAN as u32 {
                    (first..=last).any(|a| {
                        self.map
                            .get(&IpAddr::V4(Ipv4Addr::from(a)))
                            .is_some_and(valid)
                    })
                } else {
                    self.map
                        .iter()
                        .any(|(addr, times)| net.contains(addr) && valid(times))
                }
            }
            IpNet::V6(v6) => {
                let mut inside = self.v6.range(v6.network()..=v6.broadcast());
                let mut seen = 0;
                inside.any(|addr| {
                    seen += 1;
                    seen > MAX_PREFIX_SCAN || self.map.get(&IpAddr::V6(*addr)).is_some_and(valid)
                })
            }
        }
    }

    /// Removes every record [`retain`] lets go: a prefix of the expiry index.
    fn remove_expired(&mut self, now: u64, retention: Duration) -> Vec<IpAddr> {
        let mut dropped = Vec::new();
        while let Some(&(_, addr)) = self.by_expiry.first() {
            if self
                .map
                .get(&addr)
                .is_some_and(|times| retain(times, now, retention))
            {
                break;
            }
            self.by_expiry.pop_first();
            self.forget(&addr);
            dropped.push(addr);
        }
        dropped
    }

    fn clear(&mut self) -> usize {
        let count = self.map.len();
        self.map.clear();
        self.by_expiry.clear();
        self.v6.clear();
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

    /// Puts back a batch that failed to commit, under the changes made since: they are newer,
    /// so they win; a clear made since supersedes it all.
    fn requeue(&mut self, failed: Batch) {
        if self.clear {
            return;
        }
        self.clear = failed.clear;
        for (addr, change) in failed.changes {
            self.changes.entry(addr).or_insert(change);
        }
        if self.cleanup_completed.is_none() {
            self.cleanup_completed = failed.cleanup_completed;
        }
    }

    /// Every record in memory, replacing whatever the file holds.
    fn rewrite_from(records: &Records) -> Batch {
        Batch {
            clear: true,
            changes: records.map.iter().map(|(a, t)| (*a, Some(*t))).collect(),
            cleanup_completed: None,
        }
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
/// # async fn example(state_dir: &std::path::Path, client: std::net::IpAddr, passed: screen_user::test_state::TestTimes) -> Result<(), screen_user::allowlist::CacheError> {
/// use screen_user::allowlist::{AllowlistCache, CacheOptions};
///
/// let cache = AllowlistCache::open(state_dir, CacheOptions::default()).await?;
/// // A session ended: its record goes into memory at once, to the file in the next batch.
/// cache.record(client, passed);
/// cache.close().await
/// # }
/// ```
#[derive(Debug)]
pub struct AllowlistCache {
    path: PathBuf,
    name: String,
    /// Shared with the writer, which rewrites the file from it after an outage.
    records: Arc<RwLock<Records>>,
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
        let path = paths::allowlist_db(state_dir);
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
        let records = Arc::new(RwLock::new(loaded.records));
        let writer = tokio::spawn(write_loop(
            Writer {
                db: Some(Arc::new(loaded.db)),
                path: path.clone(),
                name: name.clone(),
                records: Arc::clone(&records),
                counters: Arc::clone(&counters),
                failing: None,
                max_batch: options.max_entries.saturating_mul(2),
            },
            receiver,
            options,
        ));
        Ok(Self {
            path,
            name,
            records,
            queue,
            writer: Mutex::new(Some(writer)),
            counters,
            last_cleanup: Mutex::new(loaded.last_cleanup),
            last_drop_warning: AtomicU64::new(0),
        })
    }

    /// The cache's name in log lines, `redb:<path>` (postscreen logs `btree:<path>`).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A client's record, from memory. IPv4-mapped IPv6 addresses are their IPv4 address.
    pub(crate) fn get(&self, addr: IpAddr) -> Option<TestTimes> {
        self.read().map.get(&canonical(addr)).copied()
    }

    /// Whether a client inside `net` holds an unexpired pass at Unix time `now`.
    pub(crate) fn passes_within(&self, net: IpNet, now: u64) -> bool {
        self.read().passes_within(net, now)
    }

    /// Stores a client's record: in memory at once, on disk with the next batch. Never waits:
    /// when the writer's queue is full the update is counted and not written.
    pub fn record(&self, addr: IpAddr, times: TestTimes) {
        let addr = canonical(addr);
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
    pub(crate) fn list(&self) -> Vec<(IpAddr, TestTimes)> {
        let mut all: Vec<_> = self.read().map.iter().map(|(a, t)| (*a, *t)).collect();
        all.sort_unstable_by_key(|(addr, _)| *addr);
        all
    }

    /// Records in memory.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.read().map.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes a client's record and waits until the file no longer has it. Whether there was
    /// one.
    pub(crate) async fn delete(&self, addr: IpAddr) -> Result<bool, CacheError> {
        let addr = canonical(addr);
        let existed = self.write().remove(&addr);
        self.send(WriteOp::Delete(addr)).await?;
        self.flush().await?;
        Ok(existed)
    }

    /// Empties the cache, memory and file. How many records there were.
    pub(crate) async fn flush_all(&self) -> Result<usize, CacheError> {
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
    pub(crate) async fn cleanup(
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
    pub(crate) fn last_cleanup(&self) -> Option<u64> {
        *self
            .last_cleanup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs [`cleanup`](Self::cleanup) every `interval` and logs postscreen's line. The first
    /// run comes `interval` after the last one finished, at once if that is past (or never
    /// was). `None` when `interval` is 0 (disabled). Stops when the writer has stopped.
    pub(crate) fn spawn_cleanup(
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

    #[cfg(test)]
    pub(crate) fn stats(&self) -> CacheStats {
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
            move_aside(path, name, &format!("unreadable ({err})"))?;
            open_db(path).map_err(fail)
        }
        Err(err) => Err(fail(err)),
    }
}

/// Renames a damaged file `allowlist.redb.corrupt-<time>`, saying why, so that a new one can
/// start in its place.
fn move_aside(path: &Path, name: &str, why: &str) -> Result<(), CacheError> {
    let aside = path.with_file_name(format!("{ALLOWLIST_FILE}.corrupt-{}", unix_now()));
    std::fs::rename(path, &aside).map_err(|source| CacheError::Io {
        path: path.to_path_buf(),
        action: "move the unreadable database aside",
        source,
    })?;
    tracing::warn!("cache {name}: {why}; moved to {}", aside.display());
    Ok(())
}

/// Opens the file and loads it, keeping at most `max` records; corrupt records and records
/// beyond `max` are removed from the file in the same transaction.
fn open_and_load(path: &Path, name: &str, max: usize) -> Result<Loaded, CacheError> {
    if let Some(dir) = path.parent() {
        // The records name every client that passed: the state directory is the service's
        // alone (a directory that exists keeps the mode its owner gave it).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CacheError::Io {
                path: dir.to_path_buf(),
                action: "create the state directory",
                source,
            })?;
    }
    let db = open_file(path, name)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        CacheError::Io {
            path: path.to_path_buf(),
            action: "make the database readable by its owner only",
            source,
        }
    })?;
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
        error: Box::new(error.into()),
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
    if canonical(addr) != addr || addr.to_string() != text {
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

/// The first retry after a failed write comes this soon; each further one twice as late, up
/// to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// A writer whose writes fail (a full disk, a damaged file): since when, how often.
#[derive(Debug)]
struct Failing {
    attempts: u32,
    retry_in: Duration,
}

/// The writer task's side of the file.
struct Writer {
    /// `None` after an I/O error closed it: the next attempt opens the file again.
    db: Option<Arc<Database>>,
    path: PathBuf,
    name: String,
    records: Arc<RwLock<Records>>,
    counters: Arc<Counters>,
    failing: Option<Failing>,
    /// Past this many pending changes during an outage, the file is rewritten from memory
    /// when it can be written again (the pending changes stay bounded).
    max_batch: usize,
}

impl Writer {
    /// Commits `batch`. A batch that fails goes back into `batch` (under newer changes) for
    /// the next attempt, so no change is lost while the daemon runs: the first failure is
    /// logged, and so is the recovery. After an I/O error the file is closed and opened
    /// again, and then rewritten from memory, which holds every record.
    async fn commit(&mut self, batch: &mut Batch) -> Result<(), CacheError> {
        if batch.is_empty() {
            return Ok(());
        }
        let db = match self.db.clone() {
            Some(db) => db,
            None => match self.reopen().await {
                Ok(db) => {
                    // The file may have been replaced: memory is the truth.
                    let rewrite = Batch::rewrite_from(
                        &self.records.read().unwrap_or_else(PoisonError::into_inner),
                    );
                    let newer = std::mem::replace(batch, rewrite);
                    batch.changes.extend(newer.changes);
                    batch.cleanup_completed = newer.cleanup_completed.or(batch.cleanup_completed);
                    db
                }
                Err(err) => return Err(self.failed(err)),
            },
        };
        let work = std::mem::take(batch);
        let written = tokio::task::spawn_blocking(move || {
            let result = write_batch(&db, &work);
            (work, result)
        })
        .await;
        match written {
            Ok((_, Ok(()))) => {
                self.counters
                    .batches_committed
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(failing) = self.failing.take() {
                    tracing::info!(
                        "cache {}: written again after {} failed attempt{}; no change was lost",
                        self.name,
                        failing.attempts,
                        if failing.attempts == 1 { "" } else { "s" }
                    );
                }
                Ok(())
            }
            Ok((work, Err(e))) => {
                // redb refuses every write after an I/O error until it is opened again, and a
                // damaged file is moved aside when it is: the next attempt opens it anew and
                // writes every record from memory.
                self.db = None;
                if batch.changes.len() + work.changes.len() > self.max_batch {
                    // Too much pending: the rewrite from memory covers it.
                    *batch = Batch::default();
                } else {
                    batch.requeue(work);
                }
                Err(self.failed(db_error(&self.path, "write the allowlist", e)))
            }
            Err(_) => Err(self.failed(CacheError::WriterStopped {
                path: self.path.clone(),
            })),
        }
    }

    /// Opens the file again (moving a damaged one aside, as at start).
    async fn reopen(&mut self) -> Result<Arc<Database>, CacheError> {
        let (path, name) = (self.path.clone(), self.name.clone());
        let opened = tokio::task::spawn_blocking(move || open_file(&path, &name))
            .await
            .map_err(|_| CacheError::WriterStopped {
                path: self.path.clone(),
            })??;
        let db = Arc::new(opened);
        self.db = Some(Arc::clone(&db));
        Ok(db)
    }

    /// Counts a failure and says so the first time; returns the error.
    fn failed(&mut self, err: CacheError) -> CacheError {
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        match &mut self.failing {
            None => {
                tracing::warn!(
                    "cache {}: {err}; screening goes on, and the changes are kept in memory \
                     and written when the file can be written again",
                    self.name
                );
                self.failing = Some(Failing {
                    attempts: 1,
                    retry_in: RETRY_FIRST,
                });
            }
            Some(failing) => {
                tracing::debug!("cache {}: {err}", self.name);
                failing.attempts += 1;
                failing.retry_in = (failing.retry_in * 2).min(RETRY_MAX);
            }
        }
        err
    }

    /// When to try again after a failure, if failing.
    fn retry_at(&self) -> Option<Instant> {
        self.failing
            .as_ref()
            .map(|failing| Instant::now() + failing.retry_in)
    }
}

async fn write_loop(mut writer: Writer, mut queue: mpsc::Receiver<WriteOp>, options: CacheOptions) {
    let mut batch = Batch::default();
    let mut deadline: Option<Instant> = None;
    loop {
        let op = tokio::select! {
            op = queue.recv() => op,
            () = wait_until(deadline) => {
                // A failure is logged and counted inside; the batch is tried again.
                let _ = writer.commit(&mut batch).await;
                deadline = writer.retry_at();
                continue;
            }
        };
        match op {
            Some(WriteOp::Flush(reply)) => {
                let _ = reply.send(writer.commit(&mut batch).await);
                deadline = writer.retry_at();
            }
            Some(WriteOp::Close(reply)) => {
                let _ = reply.send(writer.commit(&mut batch).await);
                break;
            }
            None => {
                let _ = writer.commit(&mut batch).await;
                break;
            }
            Some(op) => {
                batch.add(op);
                if writer.failing.is_some() {
                    // Waiting for the retry: the changes gather meanwhile.
                } else if batch.changes.len() >= options.batch_max_entries {
                    let _ = writer.commit(&mut batch).await;
                    deadline = writer.retry_at();
                } else if deadline.is_none() {
                    deadline = Some(Instant::now() + options.batch_interval);
                }
            }
        }
    }
    queue.close();
    writer.close().await;
}

impl Writer {
    /// Closes the file for good, after checking it whole: a file damaged while the daemon ran
    /// (something else wrote into it) would be moved aside at the next start and its records
    /// lost, so it is moved aside now and written anew from memory. Off the async threads,
    /// like every write; closing the database syncs the file.
    async fn close(mut self) {
        let Some(db) = self.db.take() else {
            return;
        };
        let (path, name, records) = (
            self.path.clone(),
            self.name.clone(),
            Arc::clone(&self.records),
        );
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(mut db) = Arc::try_unwrap(db) else {
                return;
            };
            let damage = match db.check_integrity() {
                Ok(true) => return,
                Ok(false) => "repaired by dropping what it could not read".to_string(),
                Err(e) => e.to_string(),
            };
            drop(db);
            let rewrite = Batch::rewrite_from(&records.read().unwrap_or_else(PoisonError::into_inner));
            let written = move_aside(&path, &name, &damage)
                .and_then(|()| open_file(&path, &name))
                .and_then(|db| write_batch(&db, &rewrite).map_err(|e| db_error(&path, "write the allowlist", e)));
            match written {
                Ok(()) => tracing::warn!(
                    "cache {name}: the file was damaged while the daemon ran ({damage}); \
                     written anew from memory, {} records",
                    rewrite.changes.len()
                ),
                Err(e) => tracing::warn!("cache {name}: the file was damaged ({damage}) and could not be written anew: {e}"),
            }
        })
        .await;
    }
}

async fn wait_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn write_batch(db: &Database, batch: &Batch) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        if batch.clear {
            txn.delete_table(RECORDS)?;
        }
        let mut table = txn.open_table(RECORDS)?;
        for (addr, change) in &batch.changes {
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
mod tests;
