//! The lookups, as postscreen hands them to `dnsblog(8)` (`psc_dnsbl_request`): [`Dnsbl::start`]
//! sends every list's query for a client at once and returns a [`DnsblQuery`]; the greet wait
//! reads its partial score when it ends ([`DnsblQuery::score_now`]), and answers that come
//! later are ignored for that connection, as postscreen ignores them. Connections from one
//! address share one set of queries, as postscreen shares one score. A failed lookup counts as
//! "not listed" with dnsblog's warning: DNS trouble never blocks a client.
//!
//! Lookups are bounded in number and in time. At most `dnsbl_lookup_limit` are in flight at
//! once: a new client beyond it is scored as if every list had failed, with a warning, as
//! postscreen scores a client whose `dnsblog` requests cannot be made. When the last
//! connection of a client goes before its score was read (a hang-up in the greet wait), its
//! lookups are cancelled: a flood of clients that connect and leave leaves nothing running.
//! Once the score was read ([`DnsblQuery::verdict_score`]) they run on to their end, within
//! `dnsbl_timeout`, as postscreen's dnsblog requests do, so a list slower than the greet
//! wait is still reported.
//!
//! Their log lines, and the health check's, go through the [`DnsblLog`] that [`Dnsbl::new`]
//! takes.

use std::{
    collections::{HashMap, hash_map::Entry},
    fmt,
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::AbortHandle};

use super::{
    DnsblError,
    health::{HealthCell, HealthState, SuspendReason, error_answer},
    resolver::{Answer, DnsServers, Resolver},
    score::{ListResult, Score},
    site::{DnsblSites, ReplyMap, query_name},
};
use crate::address::canonical;

/// Most client addresses whose lookups are shared at once; past this, a new client's lookups
/// are not shared (the daemon's connection limits still bound them).
pub(crate) const MAX_SHARED_CLIENTS: usize = 10_000;
/// `dnsbl_timeout`'s default (postscreen: 10s).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `dnsbl_lookup_limit`'s default: `pre_queue_limit`'s default of 100 clients in screening,
/// each asking up to ten lists.
pub(crate) const DEFAULT_LOOKUP_LIMIT: usize = 1_000;
/// The least time between two warnings that `dnsbl_lookup_limit` turned clients away.
const BUSY_WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Where the log lines of [`Dnsbl`] go: dnsblog's `addr … listed by domain …` lines, lookup
/// warnings, health changes. The daemon hands it the mail log; `smtp-screen dnsbl check`
/// prints the lines on stderr, and tests keep them.
pub(crate) trait DnsblLog: Send + Sync {
    /// An informational line.
    fn info(&self, line: &str);
    /// A warning; the log adds Postfix's `warning: ` prefix.
    fn warning(&self, line: &str);
}

/// Everything [`Dnsbl`] is built from.
#[derive(Clone, Debug)]
pub(crate) struct DnsblConfig {
    pub(crate) sites: DnsblSites,
    pub(crate) reply_map: ReplyMap,
    /// `dnsbl_timeout`: the most one list's lookup may take.
    pub(crate) timeout: Duration,
    pub(crate) servers: DnsServers,
    /// `dnsbl_lookup_limit`: the most lookups in flight at once (one per client and list).
    pub(crate) lookup_limit: usize,
}

impl DnsblConfig {
    /// The lists, with no reply map, the default timeout and limit and the host's resolver.
    pub(crate) fn new(sites: DnsblSites) -> Self {
        Self {
            sites,
            reply_map: ReplyMap::default(),
            timeout: DEFAULT_TIMEOUT,
            servers: DnsServers::System,
            lookup_limit: DEFAULT_LOOKUP_LIMIT,
        }
    }
}

/// One list's lookups for clients, counted for the status.
#[derive(Default)]
pub(super) struct ListCounters {
    pub(super) lookups: AtomicU64,
    pub(super) listed: AtomicU64,
    pub(super) not_listed: AtomicU64,
    pub(super) failures: AtomicU64,
    /// Lookups running now.
    pub(super) in_flight: AtomicU64,
}

/// One list: a distinct domain of `dnsbl_sites`, asked once per client, with its counters
/// and health.
pub(super) struct List {
    pub(super) domain: String,
    /// Some `dnsbl_sites` entry of this domain has no filter: any A answer would count.
    pub(super) unfiltered: bool,
    pub(super) counters: ListCounters,
    pub(super) health: HealthCell,
}

/// What every clone of [`Dnsbl`] shares.
pub(super) struct Inner {
    pub(super) resolver: Resolver,
    sites: DnsblSites,
    reply_map: ReplyMap,
    timeout: Duration,
    pub(super) lists: Vec<List>,
    pub(super) log: Arc<dyn DnsblLog>,
    /// Lookups in progress or still held by a connection, by client address.
    shared: Mutex<HashMap<IpAddr, Weak<QueryShare>>>,
    /// `dnsbl_lookup_limit`.
    lookup_limit: usize,
    /// Lookups in flight now, each counted by its [`InFlight`] guard.
    in_flight: AtomicUsize,
    /// Clients turned away by `dnsbl_lookup_limit` and when that was last logged.
    busy: Mutex<BusyWarning>,
    /// Counts suspensions, so that [`Suspensions`](super::health::Suspensions) wake up.
    pub(super) suspensions: watch::Sender<u64>,
}

/// The DNSBL/DNSWL lookups. Cheap to clone; clones share the resolver, its cache, the shared
/// lookups and the counters.
#[derive(Clone)]
pub(crate) struct Dnsbl {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for Dnsbl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dnsbl")
            .field("domains", &self.inner.sites.domains())
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Dnsbl {
    /// Sets up the resolver. Nothing is sent until the first [`start`](Self::start) or
    /// [`health_check`](Self::health_check); both must run inside a tokio runtime.
    pub(crate) fn new(config: DnsblConfig, log: Arc<dyn DnsblLog>) -> Result<Self, DnsblError> {
        let resolver = Resolver::new(&config.servers, config.timeout)?;
        let lists = config
            .sites
            .domains()
            .iter()
            .map(|domain| List {
                domain: domain.clone(),
                unfiltered: config
                    .sites
                    .sites()
                    .iter()
                    .any(|site| &site.domain == domain && site.filter.is_none()),
                counters: ListCounters::default(),
                health: HealthCell::default(),
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                resolver,
                sites: config.sites,
                reply_map: config.reply_map,
                timeout: config.timeout,
                lists,
                log,
                shared: Mutex::new(HashMap::new()),
                lookup_limit: config.lookup_limit,
                in_flight: AtomicUsize::new(0),
                busy: Mutex::new(BusyWarning::default()),
                suspensions: watch::Sender::new(0),
            }),
        })
    }

    /// The configured lists.
    pub(crate) fn sites(&self) -> &DnsblSites {
        &self.inner.sites
    }

    /// Starts every list's query for `client` at once, or joins the queries already running
    /// for that address. Suspended lists are not asked.
    pub(crate) fn start(&self, client: IpAddr) -> DnsblQuery {
        let client = canonical(client);
        let mut shared = lock(&self.inner.shared);
        if let Some(share) = shared.get(&client).and_then(Weak::upgrade) {
            return DnsblQuery { share };
        }
        if shared.len() >= MAX_SHARED_CLIENTS {
            shared.retain(|_, share| share.strong_count() > 0);
        }
        let is_shared = shared.len() < MAX_SHARED_CLIENTS;
        let share = Arc::new(self.inner.launch(client, is_shared));
        if is_shared {
            shared.insert(client, Arc::downgrade(&share));
        }
        DnsblQuery { share }
    }

    /// Lookups in flight now (one per client and list).
    #[cfg(test)]
    fn lookups_in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn shared_clients(&self) -> usize {
        lock(&self.inner.shared).len()
    }
}

/// One lookup in flight, counted while it lives, in all and for its list: dropped when the
/// lookup ends or is cancelled (its task aborted), whichever comes first.
struct InFlight {
    inner: Arc<Inner>,
    list: usize,
}

impl InFlight {
    /// Counts a lookup for `list` whose place [`Inner::reserve`] took.
    fn new(inner: &Arc<Inner>, list: usize) -> Self {
        inner.lists[list]
            .counters
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Self {
            inner: Arc::clone(inner),
            list,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.lists[self.list]
            .counters
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
        self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The rate-limited warning of clients turned away by `dnsbl_lookup_limit`: in a flood, one
/// line a second says how many.
#[derive(Default)]
struct BusyWarning {
    last: Option<Instant>,
    /// Clients turned away since the last line.
    unlogged: u64,
}

impl Inner {
    fn launch(self: &Arc<Self>, client: IpAddr, shared: bool) -> QueryShare {
        // One look at the health flags, so a check running meanwhile cannot leave a list
        // pending with no lookup to answer it.
        let asked: Vec<bool> = self
            .lists
            .iter()
            .map(|list| !list.health.is_suspended())
            .collect();
        let count = asked.iter().filter(|&&asked| asked).count();
        let admitted = self.reserve(count);
        let results = asked
            .iter()
            .enumerate()
            .map(|(index, &asked)| match (asked, admitted) {
                (false, _) => ListResult::Suspended,
                (true, true) => ListResult::Pending,
                (true, false) => {
                    self.lists[index]
                        .counters
                        .failures
                        .fetch_add(1, Ordering::Relaxed);
                    ListResult::Failed
                }
            })
            .collect();
        let settled = if admitted {
            asked.len() - count
        } else {
            asked.len()
        };
        let (done, _) = watch::channel(settled);
        let lookups = Arc::new(Lookups {
            results: Mutex::new(results),
            done,
        });
        let mut tasks = Vec::new();
        if admitted {
            for index in (0..asked.len()).filter(|&index| asked[index]) {
                let inner = Arc::clone(self);
                let lookups = Arc::clone(&lookups);
                let counted = InFlight::new(self, index);
                let task = tokio::spawn(async move {
                    let _counted = counted;
                    let result = inner.lookup(index, client).await;
                    lookups.finish(index, result);
                });
                tasks.push(task.abort_handle());
            }
        } else {
            self.warn_busy(client);
        }
        QueryShare {
            inner: Arc::clone(self),
            client,
            lookups,
            shared,
            tasks,
            scored: AtomicBool::new(false),
        }
    }

    /// Takes `count` places among the lookups in flight, all of them or none.
    fn reserve(&self, count: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                now.checked_add(count)
                    .filter(|&then| then <= self.lookup_limit)
            })
            .is_ok()
    }

    /// postscreen's warning when a `dnsblog` request cannot be made
    /// (`psc_dnsbl_request: connect to … service`), here for the limit, at most one line a
    /// second.
    fn warn_busy(&self, client: IpAddr) {
        let mut busy = lock(&self.busy);
        busy.unlogged += 1;
        let now = Instant::now();
        if busy
            .last
            .is_some_and(|last| now.duration_since(last) < BUSY_WARNING_INTERVAL)
        {
            return;
        }
        let others = busy.unlogged - 1;
        busy.last = Some(now);
        busy.unlogged = 0;
        drop(busy);
        let more = if others > 0 {
            format!(" and {others} more since the last warning")
        } else {
            String::new()
        };
        self.log.warning(&format!(
            "psc_dnsbl_request: {} lookups in flight, the dnsbl_lookup_limit: DNS lookups \
             for {client}{more} count as failed",
            self.lookup_limit
        ));
    }

    /// One list's lookup for a client, as dnsblog does it, with its log lines and counters.
    async fn lookup(&self, index: usize, client: IpAddr) -> ListResult {
        let list = &self.lists[index];
        let name = query_name(client, &list.domain);
        list.counters.lookups.fetch_add(1, Ordering::Relaxed);
        match self.resolver.resolve(&name).await {
            Answer::Listed { addrs, ttl } => {
                if let Some(answer) = error_answer(&addrs, list.unfiltered) {
                    // Never a listing: the list answers this way for everyone.
                    list.counters.failures.fetch_add(1, Ordering::Relaxed);
                    self.change_health(
                        list,
                        HealthState::Suspended(SuspendReason::ErrorAnswer { answer }),
                    );
                    return ListResult::Failed;
                }
                list.counters.listed.fetch_add(1, Ordering::Relaxed);
                for addr in &addrs {
                    self.log.info(&format!(
                        "addr {client} listed by domain {} as {addr}",
                        list.domain
                    ));
                }
                ListResult::Listed { addrs, ttl }
            }
            Answer::NotListed { ttl } => {
                list.counters.not_listed.fetch_add(1, Ordering::Relaxed);
                ListResult::NotListed { ttl }
            }
            Answer::TimedOut => {
                list.counters.failures.fetch_add(1, Ordering::Relaxed);
                self.log.warning(&format!(
                    "dnsblog reply timeout {} for {}",
                    show_timeout(self.timeout),
                    list.domain
                ));
                ListResult::Failed
            }
            Answer::Failed { why } => {
                list.counters.failures.fetch_add(1, Ordering::Relaxed);
                self.log.warning(&format!(
                    "dnsblog_query: lookup error for DNS query {name}: {why}"
                ));
                ListResult::Failed
            }
        }
    }
}

/// `10s` as postscreen writes `dnsbl_timeout`; sub-second values in milliseconds.
fn show_timeout(timeout: Duration) -> String {
    if timeout.subsec_nanos() == 0 {
        format!("{}s", timeout.as_secs())
    } else {
        format!("{}ms", timeout.as_millis())
    }
}

/// Locks a mutex, poisoned or not: no critical section here leaves its value half-changed.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The answers for one client, filled in by the lookup tasks.
struct Lookups {
    results: Mutex<Vec<ListResult>>,
    /// How many lists are done (answered, failed or skipped).
    done: watch::Sender<usize>,
}

impl Lookups {
    fn finish(&self, index: usize, result: ListResult) {
        let mut results = lock(&self.results);
        if let Some(slot @ ListResult::Pending) = results.get_mut(index) {
            *slot = result;
            drop(results);
            self.done.send_modify(|done| *done += 1);
        }
    }
}

/// One client's lookups, shared by its connections. The last connection to let go forgets
/// the address and cancels the lookups still running, unless a verdict read the score.
struct QueryShare {
    inner: Arc<Inner>,
    client: IpAddr,
    lookups: Arc<Lookups>,
    shared: bool,
    /// The lookup tasks, to cancel.
    tasks: Vec<AbortHandle>,
    /// A verdict read the score ([`DnsblQuery::verdict_score`]).
    scored: AtomicBool,
}

impl Drop for QueryShare {
    fn drop(&mut self) {
        // Once a verdict was made, the lookups run on, each bounded by `dnsbl_timeout`, as
        // postscreen's dnsblog requests do: a list slower than the greet wait is still
        // reported when it times out, and its answer still warms the cache. Before that, no
        // one is left to read them: a client that hangs up in the greet wait leaves nothing
        // running.
        if !self.scored.load(Ordering::Relaxed) {
            for task in &self.tasks {
                task.abort();
            }
        }
        if self.shared {
            let mut shared = lock(&self.inner.shared);
            // Our own entry is dead now; a live one belongs to a newer set of lookups.
            if let Entry::Occupied(entry) = shared.entry(self.client)
                && entry.get().strong_count() == 0
            {
                entry.remove();
            }
        }
    }
}

/// A connection's view of its client's lookups.
pub(crate) struct DnsblQuery {
    share: Arc<QueryShare>,
}

impl fmt::Debug for DnsblQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsblQuery")
            .field("client", &self.share.client)
            .finish_non_exhaustive()
    }
}

impl DnsblQuery {
    /// Each list's result so far, indexed like [`DnsblSites::domains`].
    pub(crate) fn results(&self) -> Vec<ListResult> {
        lock(&self.share.lookups.results).clone()
    }

    /// The score from the answers in so far (postscreen reads it when the greet wait ends).
    /// A list suspended since it answered still counts for the SMTP verdict, as postscreen
    /// would count it, but not for the sound score a kernel deny rests on.
    pub(crate) fn score_now(&self) -> Score {
        let inner = &self.share.inner;
        let results = lock(&self.share.lookups.results);
        let mut score = inner.sites.score(&results, &inner.reply_map);
        drop(results);
        let suspended = |domain: &str| {
            inner
                .lists
                .iter()
                .any(|list| list.domain == domain && list.health.is_suspended())
        };
        if score.sound.weights.iter().any(|(list, _)| suspended(list)) {
            score.sound.rank = score.sound.rank_without(suspended);
            score.sound.weights.retain(|(list, _)| !suspended(list));
        }
        score
    }

    /// [`score_now`](Self::score_now) for the verdict: from here on the client's lookups run
    /// to their end (within `dnsbl_timeout`) even when its connections are gone, so that a
    /// list slower than the greet wait is still reported.
    pub(crate) fn verdict_score(&self) -> Score {
        self.share.scored.store(true, Ordering::Relaxed);
        self.score_now()
    }

    /// Waits until every list has answered, failed or timed out, or until `deadline`, and
    /// returns the score then.
    pub(crate) async fn wait_all(&self, deadline: tokio::time::Instant) -> Score {
        let total = self.share.inner.lists.len();
        let mut done = self.share.lookups.done.subscribe();
        let _ = tokio::time::timeout_at(deadline, done.wait_for(|&n| n >= total)).await;
        self.score_now()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{
        super::{
            Thresholds, Verdict,
            health::HealthState,
            lab::{Captured, LAB_SITES, client, dnsbl, forwarder, in_secs, lab},
            resolver::MAX_SERVERS,
        },
        *,
    };

    #[test]
    fn timeouts_are_shown_as_postscreen_writes_them() {
        assert_eq!(show_timeout(Duration::from_secs(10)), "10s");
        assert_eq!(show_timeout(Duration::from_millis(300)), "300ms");
    }

    // --- Lookups against a real DNS server ---

    #[tokio::test]
    async fn a_listed_client_reaches_the_threshold() {
        let server = lab();
        let (dnsbl, log) = dnsbl(LAB_SITES, server.addr(), Duration::from_secs(5));
        let query = dnsbl.start(client("127.0.0.40"));
        let score = query.wait_all(in_secs(10.0)).await;
        assert!(score.is_complete(), "{score:?}");
        assert_eq!(score.rank, 4);
        assert_eq!(score.name.as_deref(), Some("public-bl.example"));
        assert_eq!(
            score.verdict(&Thresholds::default(), false),
            Verdict::Listed {
                rank: 4,
                name: "public-bl.example".into()
            }
        );
        let lines = log.lines();
        assert!(
            lines.contains(&"addr 127.0.0.40 listed by domain bl.test as 127.0.0.2".into()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"addr 127.0.0.40 listed by domain bl2.test as 127.0.0.4".into()),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        let stats = dnsbl.stats();
        assert_eq!(stats[0].domain, "bl.test");
        assert_eq!(
            (stats[0].lookups, stats[0].listed, stats[0].failures),
            (1, 1, 0)
        );
        assert_eq!((stats[2].lookups, stats[2].not_listed), (1, 1));

        // The same score below a higher threshold passes, for the negative answer's TTL.
        let high = Thresholds {
            threshold: 5,
            ..Thresholds::default()
        };
        assert_eq!(
            score.verdict(&high, false),
            Verdict::Clean {
                ttl: Duration::from_secs(120)
            }
        );
    }

    #[tokio::test]
    async fn clean_allowlisted_and_filtered_clients() {
        let server = lab();
        let (dnsbl, log) = dnsbl(LAB_SITES, server.addr(), Duration::from_secs(5));
        let t = Thresholds {
            allowlist_threshold: -1,
            ..Thresholds::default()
        };

        let clean = dnsbl
            .start(client("127.0.0.11"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((clean.rank, clean.failed), (0, 0));
        assert_eq!(
            clean.verdict(&t, false),
            Verdict::Clean {
                ttl: Duration::from_secs(120)
            }
        );

        let dnswl = dnsbl
            .start(client("127.0.0.30"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!(dnswl.rank, -5);
        // The pass lasts as long as the shortest answer: here the negative TTL of 120 s.
        assert_eq!(
            dnswl.verdict(&t, false),
            Verdict::Allowlisted {
                ttl: Duration::from_secs(120)
            }
        );

        // Listed as 127.0.0.99: logged, but the filter does not accept it.
        let filtered = dnsbl
            .start(client("127.0.0.42"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((filtered.rank, filtered.name.clone()), (0, None));
        assert!(matches!(filtered.verdict(&t, false), Verdict::Clean { .. }));
        assert_eq!(
            log.count("addr 127.0.0.42 listed by domain bl.test as 127.0.0.99"),
            1
        );
    }

    #[tokio::test]
    async fn a_dnswl_alone_allowlists_for_its_a_ttl() {
        let server = lab();
        let (dnsbl, _log) = dnsbl(
            "wl.test=127.0.[0..255].[0..3]*-5",
            server.addr(),
            Duration::from_secs(5),
        );
        let score = dnsbl
            .start(client("127.0.0.30"))
            .wait_all(in_secs(10.0))
            .await;
        let t = Thresholds {
            allowlist_threshold: -1,
            ..Thresholds::default()
        };
        assert_eq!(
            score.verdict(&t, false),
            Verdict::Allowlisted {
                ttl: Duration::from_secs(300)
            }
        );
        assert!(matches!(score.verdict(&t, true), Verdict::Clean { .. }));
    }

    #[tokio::test]
    async fn ipv6_clients_are_queried_by_nibbles() {
        let server = lab();
        let (dnsbl, log) = dnsbl(
            "v6.test=127.0.0.3*2 bl.test",
            server.addr(),
            Duration::from_secs(5),
        );
        let score = dnsbl
            .start(client("2001:db8::25"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!(score.rank, 2);
        assert_eq!(score.name.as_deref(), Some("v6.test"));
        assert_eq!(
            log.count("addr 2001:db8::25 listed by domain v6.test as 127.0.0.3"),
            1
        );
        let outside = dnsbl
            .start(client("2001:db9::25"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((outside.rank, outside.failed), (0, 0));

        // An IPv4-mapped client is asked for as IPv4.
        let mapped = dnsbl
            .start(client("::ffff:127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!(mapped.rank, 1);
        assert_eq!(mapped.name.as_deref(), Some("public-bl.example"));
        assert_eq!(
            log.count("addr 127.0.0.40 listed by domain bl.test as 127.0.0.2"),
            1
        );
    }

    #[tokio::test]
    async fn a_silent_list_does_not_hold_the_score_past_its_deadline() {
        let server = lab();
        let forwarder = forwarder(&server, &["dead.test"]);
        let (dnsbl, log) = dnsbl(
            "bl.test*2 dead.test*5",
            forwarder.addr(),
            Duration::from_secs(10),
        );
        let query = dnsbl.start(client("127.0.0.40"));
        let start = Instant::now();
        let score = query.wait_all(in_secs(0.5)).await;
        let waited = start.elapsed();
        assert!(waited < Duration::from_millis(1_500), "{waited:?}");
        assert!(waited >= Duration::from_millis(450), "{waited:?}");
        // The partial score: bl.test answered, dead.test is still pending.
        assert_eq!((score.rank, score.pending), (2, 1));
        assert_eq!(query.score_now(), score);
        // It was asked (and maybe asked again: the resolver retransmits over UDP).
        assert!(forwarder.count("40.0.0.127.dead.test") >= 1);
        assert_eq!(log.count("warning"), 0);
    }

    #[tokio::test]
    async fn a_list_that_times_out_counts_as_not_listed_with_a_warning() {
        let server = lab();
        let forwarder = forwarder(&server, &["dead.test"]);
        let (dnsbl, log) = dnsbl(
            "bl.test*2 dead.test*5",
            forwarder.addr(),
            Duration::from_millis(400),
        );
        let start = Instant::now();
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        let waited = start.elapsed();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        assert!(score.is_complete());
        assert_eq!((score.rank, score.failed), (2, 1));
        assert_eq!(
            log.count("warning: dnsblog reply timeout 400ms for dead.test"),
            1
        );
        let stats = dnsbl.stats();
        assert_eq!(
            (stats[1].domain.as_str(), stats[1].failures),
            ("dead.test", 1)
        );
    }

    #[tokio::test]
    async fn an_error_answer_lists_no_one_and_suspends_the_list_at_once() {
        let server = lab();
        let (dnsbl, log) = dnsbl(
            "error.test*5 bl.test*2",
            server.addr(),
            Duration::from_secs(5),
        );
        // 127.0.0.40 is on bl.test; error.test's answer counts for nothing.
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert!(score.is_complete());
        assert_eq!((score.rank, score.failed), (2, 1));
        assert_eq!(
            log.count(
                "warning: dnsbl error.test suspended: it answers 127.255.255.254, an error code"
            ),
            1,
            "{:?}",
            log.lines()
        );
        assert_eq!(log.count("listed by domain error.test"), 0);
        // The next client's lookups skip the list, with no second warning.
        let score = dnsbl
            .start(client("127.0.0.11"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((score.rank, score.suspended), (0, 1));
        assert_eq!(log.count("dnsbl error.test suspended"), 1);
        let stats = dnsbl.stats();
        assert!(stats[0].health.is_suspended());
        assert_eq!(stats[0].listed, 0);
    }

    #[tokio::test]
    async fn a_suspension_is_published_once_to_each_subscriber() {
        let server = lab();
        let (dnsbl, _log) = dnsbl(
            "bl.test*2 error.test*5",
            server.addr(),
            Duration::from_secs(5),
        );
        let mut early = dnsbl.suspensions();
        let mut late = dnsbl.suspensions();
        // A listing is no suspension.
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!(score.rank, 2);
        assert_eq!(score.sound.weights, [("bl.test".to_string(), 2)]);
        // error.test answered 127.255.255.254 for that client already: suspended.
        let next = tokio::time::timeout(Duration::from_secs(5), early.next())
            .await
            .expect("the suspension of error.test is published");
        assert_eq!(next, ["error.test"]);
        // Seen once: nothing more until another suspension.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), early.next())
                .await
                .is_err()
        );
        assert_eq!(late.next().await, ["error.test"]);
        // A subscriber that comes after the suspension hears nothing of it.
        let mut after = dnsbl.suspensions();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), after.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_dead_server_never_blocks_a_client() {
        // A socket that reads queries and never answers.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (dnsbl, log) = dnsbl(
            "bl.test bl2.test",
            silent.local_addr().unwrap(),
            Duration::from_millis(300),
        );
        let start = Instant::now();
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!((score.rank, score.failed), (0, 2));
        assert!(matches!(
            score.verdict(&Thresholds::default(), false),
            Verdict::Clean { .. }
        ));
        assert_eq!(log.count("warning: dnsblog reply timeout 300ms for"), 2);
    }

    #[tokio::test]
    async fn a_refused_query_is_a_lookup_error() {
        let server = lab();
        // rbldnsd refuses zones it does not serve.
        let (dnsbl, log) = dnsbl(
            "bl.test nozone.test*9",
            server.addr(),
            Duration::from_secs(5),
        );
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((score.rank, score.failed), (1, 1));
        assert_eq!(
            log.count(
                "warning: dnsblog_query: lookup error for DNS query 40.0.0.127.nozone.test: \
                 query refused (REFUSED)"
            ),
            1,
            "{:?}",
            log.lines()
        );
    }

    #[tokio::test]
    async fn concurrent_connections_share_one_query_per_list() {
        let server = lab();
        let forwarder = forwarder(&server, &[]);
        let (dnsbl, _log) = dnsbl(
            "bl.test=127.0.0.2*3 bl.test=127.0.0.4 bl2.test",
            forwarder.addr(),
            Duration::from_secs(5),
        );
        let first = dnsbl.start(client("127.0.0.40"));
        let second = dnsbl.start(client("::ffff:127.0.0.40"));
        assert!(Arc::ptr_eq(&first.share, &second.share));
        let other = dnsbl.start(client("127.0.0.11"));
        assert!(!Arc::ptr_eq(&first.share, &other.share));
        assert_eq!(dnsbl.shared_clients(), 2);
        let (a, b) = tokio::join!(
            first.wait_all(in_secs(10.0)),
            second.wait_all(in_secs(10.0))
        );
        assert_eq!(a, b);
        assert_eq!(a.rank, 4);
        other.wait_all(in_secs(10.0)).await;
        // bl.test appears twice in the list and is asked once.
        assert_eq!(forwarder.count("40.0.0.127.bl.test"), 1);
        assert_eq!(forwarder.count("40.0.0.127.bl2.test"), 1);
        assert_eq!(forwarder.count("11.0.0.127.bl.test"), 1);
        assert_eq!(forwarder.total(), 4);
        // One lookup per list for the shared address, one for the other.
        assert!(dnsbl.stats().iter().all(|list| list.lookups == 2));
        // The address is forgotten when its last connection lets go.
        drop(first);
        assert_eq!(dnsbl.shared_clients(), 2);
        drop(second);
        drop(other);
        assert_eq!(dnsbl.shared_clients(), 0);
    }

    #[tokio::test]
    async fn answers_are_cached_for_their_ttl() {
        let server = lab();
        let forwarder = forwarder(&server, &[]);
        let (dnsbl, log) = dnsbl(LAB_SITES, forwarder.addr(), Duration::from_secs(5));
        for ip in ["127.0.0.40", "127.0.0.11"] {
            let first = dnsbl.start(client(ip)).wait_all(in_secs(10.0)).await;
            let sent = forwarder.total();
            let again = dnsbl.start(client(ip)).wait_all(in_secs(10.0)).await;
            assert_eq!(
                forwarder.total(),
                sent,
                "{ip}: a cached answer was asked again"
            );
            assert_eq!(first.rank, again.rank);
            assert!(again.is_complete());
        }
        // Listed (TTL 300) and negative (SOA 120) answers: three lists, two clients.
        assert_eq!(forwarder.total(), 6);
        // A cached listing is still logged for every new lookup, as dnsblog logs each request.
        assert_eq!(
            log.count("addr 127.0.0.40 listed by domain bl.test as 127.0.0.2"),
            2
        );
        assert_eq!(dnsbl.stats()[0].lookups, 4);
    }

    /// A DNS server that reads queries and never answers, and a [`Dnsbl`] of `bl.test` and
    /// `bl2.test` asking it, with at most `limit` lookups in flight.
    async fn silent_dnsbl(
        timeout: Duration,
        limit: usize,
    ) -> (tokio::net::UdpSocket, Dnsbl, Arc<Captured>) {
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let log = Arc::new(Captured::default());
        let config = DnsblConfig {
            timeout,
            servers: DnsServers::Explicit(vec![silent.local_addr().unwrap()]),
            lookup_limit: limit,
            ..DnsblConfig::new(DnsblSites::parse("bl.test bl2.test").unwrap())
        };
        let dnsbl = Dnsbl::new(config, log.clone()).unwrap();
        (silent, dnsbl, log)
    }

    /// Waits, up to two seconds, for the lookups in flight to fall to `count`.
    async fn in_flight_falls_to(dnsbl: &Dnsbl, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while dnsbl.lookups_in_flight() != count {
            assert!(
                Instant::now() < deadline,
                "{} lookups in flight, not {count}",
                dnsbl.lookups_in_flight()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_client_gone_before_its_score_was_read_leaves_no_lookup_running() {
        let (_silent, dnsbl, log) = silent_dnsbl(Duration::from_millis(600), 100).await;
        let queries: Vec<_> = (1..=10)
            .map(|host| dnsbl.start(client(&format!("192.0.2.{host}"))))
            .collect();
        assert_eq!(dnsbl.lookups_in_flight(), 20);
        assert!(dnsbl.stats().iter().all(|list| list.in_flight == 10));
        // Every client hangs up in the greet wait.
        drop(queries);
        in_flight_falls_to(&dnsbl, 0).await;
        assert!(dnsbl.stats().iter().all(|list| list.in_flight == 0));
        assert_eq!(dnsbl.shared_clients(), 0);
        // Cancelled, not timed out: past dnsbl_timeout nothing reports them.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(log.count("reply timeout"), 0, "{:?}", log.lines());
    }

    #[tokio::test]
    async fn lookups_run_on_once_a_verdict_read_the_score() {
        let (_silent, dnsbl, log) = silent_dnsbl(Duration::from_millis(400), 100).await;
        let query = dnsbl.start(client("192.0.2.1"));
        let score = query.verdict_score();
        assert_eq!(score.pending, 2);
        drop(query);
        assert_eq!(dnsbl.lookups_in_flight(), 2);
        // As postscreen's dnsblog requests: each times out and is reported.
        in_flight_falls_to(&dnsbl, 0).await;
        assert_eq!(
            log.count("warning: dnsblog reply timeout 400ms for"),
            2,
            "{:?}",
            log.lines()
        );
    }

    #[tokio::test]
    async fn beyond_the_lookup_limit_a_new_client_is_scored_as_dns_failed() {
        let (_silent, dnsbl, log) = silent_dnsbl(Duration::from_secs(10), 5).await;
        let first = dnsbl.start(client("192.0.2.1"));
        let second = dnsbl.start(client("192.0.2.2"));
        assert_eq!(dnsbl.lookups_in_flight(), 4);
        // Two more lookups would pass the limit of five: none is made.
        let start = Instant::now();
        let turned_away = dnsbl
            .start(client("192.0.2.3"))
            .wait_all(in_secs(10.0))
            .await;
        assert!(start.elapsed() < Duration::from_millis(100));
        assert!(turned_away.is_complete());
        assert_eq!((turned_away.rank, turned_away.failed), (0, 2));
        assert!(matches!(
            turned_away.verdict(&Thresholds::default(), false),
            Verdict::Clean { .. }
        ));
        assert_eq!(dnsbl.lookups_in_flight(), 4);
        let warning = "warning: psc_dnsbl_request: 5 lookups in flight, the dnsbl_lookup_limit: \
                       DNS lookups for 192.0.2.3 count as failed";
        assert_eq!(log.count(warning), 1, "{:?}", log.lines());
        // In a flood the warning comes once a second at most, with the count.
        for host in 4..=6 {
            drop(dnsbl.start(client(&format!("192.0.2.{host}"))));
        }
        assert_eq!(log.count("psc_dnsbl_request"), 1);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        drop(dnsbl.start(client("192.0.2.7")));
        assert_eq!(
            log.count(
                "DNS lookups for 192.0.2.7 and 3 more since the last warning count as failed"
            ),
            1,
            "{:?}",
            log.lines()
        );
        // Five clients turned away, each counted once per list.
        assert!(dnsbl.stats().iter().all(|list| list.failures == 5));
        // A client that hangs up gives its places back.
        drop(first);
        in_flight_falls_to(&dnsbl, 2).await;
        let admitted = dnsbl.start(client("192.0.2.8"));
        assert_eq!(dnsbl.lookups_in_flight(), 4);
        assert_eq!(admitted.score_now().pending, 2);
        drop((second, admitted));
        in_flight_falls_to(&dnsbl, 0).await;
    }

    #[test]
    fn the_resolver_is_set_up_outside_a_runtime() {
        let config = DnsblConfig {
            servers: DnsServers::Explicit(vec!["127.0.0.1:53".parse().unwrap()]),
            ..DnsblConfig::new(DnsblSites::parse("bl.test").unwrap())
        };
        let dnsbl = Dnsbl::new(config, Arc::new(Captured::default())).unwrap();
        assert_eq!(dnsbl.sites().domains(), ["bl.test"]);
        assert_eq!(dnsbl.stats()[0].health, HealthState::Healthy);
    }

    #[tokio::test]
    async fn explicit_server_lists_are_checked() {
        let log: Arc<dyn DnsblLog> = Arc::new(Captured::default());
        let config = |servers| DnsblConfig {
            servers: DnsServers::Explicit(servers),
            ..DnsblConfig::new(DnsblSites::parse("bl.test").unwrap())
        };
        assert_eq!(
            Dnsbl::new(config(vec![]), log.clone()).unwrap_err(),
            DnsblError::NoServers
        );
        let many = vec!["127.0.0.1:53".parse().unwrap(); MAX_SERVERS + 1];
        assert_eq!(
            Dnsbl::new(config(many), log.clone())
                .unwrap_err()
                .to_string(),
            format!(
                "dns_servers has {} entries, more than the {MAX_SERVERS} allowed",
                MAX_SERVERS + 1
            )
        );
        // No list: nothing to wait for.
        let none = Dnsbl::new(
            DnsblConfig {
                servers: DnsServers::Explicit(vec!["127.0.0.1:9".parse().unwrap()]),
                ..DnsblConfig::new(DnsblSites::default())
            },
            log,
        )
        .unwrap();
        let score = none.start(client("192.0.2.1")).wait_all(in_secs(5.0)).await;
        assert_eq!(score, Score::default());
    }
}
