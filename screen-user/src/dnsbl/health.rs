//! List health, beyond postscreen: [`Dnsbl::health_check`] asks every list for its RFC 5782
//! test points and suspends a list that lists the world or does not answer, until it
//! recovers, so a dead or hijacked list cannot block every client ([`assess`] is the pure
//! rule). The lookups skip a suspended list ([`HealthCell`]). [`Dnsbl::stats`] reports each
//! list's counters and health for the daemon's status file. Every suspension, by the check or
//! by an error answer, is published ([`Dnsbl::suspensions`]): whoever acted on a list's
//! answers (the kernel deny policy) learns that they no longer hold.

use std::{
    fmt,
    fs::{File, OpenOptions, Permissions},
    io,
    net::Ipv4Addr,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, task::JoinSet};

use super::{
    lookup::{Dnsbl, Inner, List, lock},
    resolver::Answer,
    site::query_name,
};

/// How often the daemon asks every list for its test points.
pub(crate) const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// The test point every list must list (RFC 5782 §5).
pub(crate) const TEST_POINT_LISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The test point no list may list (RFC 5782 §5).
pub(crate) const TEST_POINT_UNLISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// A list's health, as the last conclusive [`Dnsbl::health_check`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HealthState {
    /// In use (also before the first check).
    Healthy,
    /// In use, but it does not list its test point 127.0.0.2.
    TestPointMissing,
    /// Not asked and its weight ignored, until a check finds it healthy again.
    Suspended(SuspendReason),
}

impl HealthState {
    pub(crate) fn is_suspended(&self) -> bool {
        matches!(self, HealthState::Suspended(_))
    }
}

/// Why a list is suspended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SuspendReason {
    /// It lists 127.0.0.1, which no list may: it would list every client.
    ListsTheWorld { answer: Ipv4Addr },
    /// Neither test point got an answer.
    NotAnswering { why: String },
    /// It answered with an error code instead of a listing (see [`error_answer`]).
    ErrorAnswer { answer: Ipv4Addr },
}

impl fmt::Display for SuspendReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuspendReason::ListsTheWorld { answer } => write!(
                f,
                "it lists the test point {TEST_POINT_UNLISTED} (as {answer}), \
                 so it would list every client"
            ),
            SuspendReason::NotAnswering { why } => {
                write!(f, "no answer for its test points: {why}")
            }
            SuspendReason::ErrorAnswer { answer } => write!(
                f,
                "it answers {answer}, an error code or no list's answer, so every answer \
                 it gives is suspect"
            ),
        }
    }
}

/// One list's health after a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListHealth {
    pub(crate) domain: String,
    pub(crate) state: HealthState,
    /// Whether this check changed the state (and logged it).
    pub(crate) changed: bool,
}

/// One list's counters, for a status command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListStats {
    pub(crate) domain: String,
    /// Lookups for clients (answered from hickory's cache or not).
    pub(crate) lookups: u64,
    /// Answers with at least one A record.
    pub(crate) listed: u64,
    /// Answers without one.
    pub(crate) not_listed: u64,
    /// Lookups that failed or timed out, and clients `dnsbl_lookup_limit` turned away.
    pub(crate) failures: u64,
    /// Lookups running now.
    pub(crate) in_flight: u64,
    pub(crate) health: HealthState,
}

/// One list's health: written by the check, read by every new client's lookups.
pub(super) struct HealthCell {
    /// Whether `state` is a suspension, read without the lock.
    suspended: AtomicBool,
    /// How many times the list was suspended, for [`Suspensions`].
    times_suspended: AtomicU64,
    state: Mutex<HealthState>,
}

impl Default for HealthCell {
    fn default() -> Self {
        Self {
            suspended: AtomicBool::new(false),
            times_suspended: AtomicU64::new(0),
            state: Mutex::new(HealthState::Healthy),
        }
    }
}

/// A subscription to the lists' suspensions ([`Dnsbl::suspensions`]). It holds one counter a
/// list, whatever the number of suspensions: a subscriber that falls behind misses none, it
/// learns of each list once.
pub(crate) struct Suspensions {
    inner: Arc<Inner>,
    changes: watch::Receiver<u64>,
    /// Each list's suspension count when last read.
    seen: Vec<u64>,
}

impl Suspensions {
    /// Waits for the next suspension and returns the domains of the lists suspended since
    /// the last call, in configuration order.
    pub(crate) async fn next(&mut self) -> Vec<String> {
        loop {
            if self.changes.changed().await.is_err() {
                // The sender lives in `inner`, which this subscription holds: never.
                std::future::pending::<()>().await;
            }
            let suspended = self.take();
            if !suspended.is_empty() {
                return suspended;
            }
        }
    }

    /// The lists suspended since the last read.
    fn take(&mut self) -> Vec<String> {
        let mut suspended = Vec::new();
        for (list, seen) in self.inner.lists.iter().zip(self.seen.iter_mut()) {
            let now = list.health.times_suspended.load(Ordering::Acquire);
            if now != *seen {
                *seen = now;
                suspended.push(list.domain.clone());
            }
        }
        suspended
    }
}

impl HealthCell {
    /// Whether the list is suspended: not asked, its weight ignored.
    pub(super) fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Relaxed)
    }
}

impl Dnsbl {
    /// A subscription to every later suspension of a list.
    pub(crate) fn suspensions(&self) -> Suspensions {
        let changes = self.inner.suspensions.subscribe();
        let seen = self
            .inner
            .lists
            .iter()
            .map(|list| list.health.times_suspended.load(Ordering::Acquire))
            .collect();
        Suspensions {
            inner: Arc::clone(&self.inner),
            changes,
            seen,
        }
    }

    /// Each list's counters and health.
    pub(crate) fn stats(&self) -> Vec<ListStats> {
        self.inner
            .lists
            .iter()
            .map(|list| ListStats {
                domain: list.domain.clone(),
                lookups: list.counters.lookups.load(Ordering::Relaxed),
                listed: list.counters.listed.load(Ordering::Relaxed),
                not_listed: list.counters.not_listed.load(Ordering::Relaxed),
                failures: list.counters.failures.load(Ordering::Relaxed),
                in_flight: list.counters.in_flight.load(Ordering::Relaxed),
                health: lock(&list.health.state).clone(),
            })
            .collect()
    }

    /// The daemon's `dnsbl.status` file, which `smtp-screen status` shows: one line a list,
    /// `<domain> lookups=N listed=N not_listed=N failures=N in_flight=N health=<state>`.
    pub(crate) fn status_text(&self) -> String {
        let mut text = String::new();
        for list in self.stats() {
            let health = match &list.health {
                HealthState::Healthy => "healthy".to_string(),
                HealthState::TestPointMissing => "in use, test point 127.0.0.2 not listed".into(),
                HealthState::Suspended(why) => format!("suspended: {why}"),
            };
            text.push_str(&format!(
                "{} lookups={} listed={} not_listed={} failures={} in_flight={} health={health}\n",
                list.domain,
                list.lookups,
                list.listed,
                list.not_listed,
                list.failures,
                list.in_flight
            ));
        }
        text
    }

    /// Rewrites the `dnsbl.status` file in place (opened by [`create_status_file`]).
    pub(crate) fn write_status(&self, file: &mut std::fs::File) {
        use std::io::{Seek as _, Write as _};
        let text = self.status_text();
        let result = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(text.as_bytes()));
        if let Err(e) = result {
            tracing::warn!("writing the DNSBL status: {e}");
        }
    }

    /// Asks every list for its test points, bypassing the cache: 127.0.0.2 must be listed,
    /// 127.0.0.1 must not (RFC 5782 §5). A list that lists 127.0.0.1, or answers for neither,
    /// is suspended; one that answers as it should is in use again. When only one of the two
    /// lookups fails, the check is inconclusive and the state stays. A change is logged once.
    pub(crate) async fn health_check(&self) -> Vec<ListHealth> {
        let mut probes = JoinSet::new();
        for index in 0..self.inner.lists.len() {
            let inner = Arc::clone(&self.inner);
            probes.spawn(async move { (index, inner.probe(index).await) });
        }
        let mut out: Vec<Option<ListHealth>> = vec![None; self.inner.lists.len()];
        while let Some(joined) = probes.join_next().await {
            if let Ok((index, health)) = joined {
                out[index] = Some(health);
            }
        }
        out.into_iter().flatten().collect()
    }
}

impl Inner {
    /// One list's health check.
    async fn probe(&self, index: usize) -> ListHealth {
        let list = &self.lists[index];
        let listed = query_name(TEST_POINT_LISTED.into(), &list.domain);
        let unlisted = query_name(TEST_POINT_UNLISTED.into(), &list.domain);
        for name in [&listed, &unlisted] {
            self.resolver.forget(name);
        }
        let (listed, unlisted) = tokio::join!(
            self.resolver.resolve(&listed),
            self.resolver.resolve(&unlisted)
        );
        let observed = assess(&listed, &unlisted, list.unfiltered);
        let Some(new) = observed else {
            return ListHealth {
                domain: list.domain.clone(),
                state: lock(&list.health.state).clone(),
                changed: false,
            };
        };
        let changed = self.change_health(list, new.clone());
        ListHealth {
            domain: list.domain.clone(),
            state: new,
            changed,
        }
    }

    /// Sets a list's health; a change of kind is logged (once), a suspended list's new reason
    /// is kept quietly. Returns whether the kind changed.
    pub(super) fn change_health(&self, list: &List, new: HealthState) -> bool {
        let mut state = lock(&list.health.state);
        if std::mem::discriminant(&new) == std::mem::discriminant(&*state) {
            *state = new;
            return false;
        }
        let domain = &list.domain;
        match &new {
            HealthState::Suspended(reason) => self
                .log
                .warning(&format!("dnsbl {domain} suspended: {reason}")),
            HealthState::TestPointMissing => self.log.warning(&format!(
                "dnsbl {domain}: the test point {TEST_POINT_LISTED} is not listed; \
                 the list stays in use"
            )),
            HealthState::Healthy => self.log.info(&format!(
                "dnsbl {domain} in use again: its test points answer as they should"
            )),
        }
        list.health
            .suspended
            .store(new.is_suspended(), Ordering::Relaxed);
        let suspended = new.is_suspended();
        *state = new;
        drop(state);
        if suspended {
            list.health.times_suspended.fetch_add(1, Ordering::Release);
            self.suspensions
                .send_modify(|count| *count = count.wrapping_add(1));
        }
        true
    }
}

/// An A answer that is an error rather than a listing: one in 127.255.255.0/24, where
/// Spamhaus and others answer a query they refuse (through a public resolver, over quota),
/// or, for a list some entry of which has no filter (`unfiltered`), one outside
/// 127.0.0.0/8, which no list answers for a listing (a hijacked zone, a wildcard). Counting
/// it would list every client; it suspends the list instead.
pub(super) fn error_answer(addrs: &[Ipv4Addr], unfiltered: bool) -> Option<Ipv4Addr> {
    addrs.iter().copied().find(|addr| {
        let [a, b, c, _] = addr.octets();
        (a, b, c) == (127, 255, 255) || (unfiltered && a != 127)
    })
}

/// A list's health from its two test points' answers; `None` when only one lookup failed.
fn assess(listed: &Answer, unlisted: &Answer, unfiltered: bool) -> Option<HealthState> {
    if let Answer::Listed { addrs, .. } = unlisted {
        return Some(HealthState::Suspended(SuspendReason::ListsTheWorld {
            answer: addrs.first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED),
        }));
    }
    if let Answer::Listed { addrs, .. } = listed
        && let Some(answer) = error_answer(addrs, unfiltered)
    {
        return Some(HealthState::Suspended(SuspendReason::ErrorAnswer {
            answer,
        }));
    }
    match (listed.failed(), unlisted.failed()) {
        (true, true) => Some(HealthState::Suspended(SuspendReason::NotAnswering {
            why: describe_answer(listed),
        })),
        (true, false) | (false, true) => None,
        (false, false) => match listed {
            Answer::Listed { .. } => Some(HealthState::Healthy),
            _ => Some(HealthState::TestPointMissing),
        },
    }
}

fn describe_answer(answer: &Answer) -> String {
    match answer {
        Answer::TimedOut => "timed out".into(),
        Answer::Failed { why } => why.clone(),
        Answer::Listed { .. } | Answer::NotListed { .. } => "answered".into(),
    }
}

/// Creates the `dnsbl.status` file for [`Dnsbl::write_status`]. The daemon opens it as root,
/// before it drops privileges, in a directory others may be able to write: a symlink there
/// is refused rather than followed, and the file is its owner's alone.
pub(crate) fn create_status_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // A file that was there keeps its mode through `open`: set it.
    file.set_permissions(Permissions::from_mode(0o600))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{
        super::{
            DnsServers, DnsblConfig, DnsblSites,
            lab::{Captured, client, dnsbl, forwarder, in_secs, lab},
        },
        *,
    };

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    // --- Health assessment ---

    fn answer_listed(a: &str) -> Answer {
        Answer::Listed {
            addrs: vec![ip4(a)],
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn health_from_test_points() {
        let nx = Answer::NotListed { ttl: None };
        let failed = Answer::Failed {
            why: "query refused (REFUSED)".into(),
        };
        assert_eq!(
            assess(&answer_listed("127.0.0.2"), &nx, false),
            Some(HealthState::Healthy)
        );
        assert_eq!(
            assess(
                &answer_listed("127.0.0.2"),
                &answer_listed("127.0.0.2"),
                false
            ),
            Some(HealthState::Suspended(SuspendReason::ListsTheWorld {
                answer: ip4("127.0.0.2")
            }))
        );
        assert_eq!(
            assess(&failed, &answer_listed("127.255.255.254"), false),
            Some(HealthState::Suspended(SuspendReason::ListsTheWorld {
                answer: ip4("127.255.255.254")
            }))
        );
        assert_eq!(
            assess(&Answer::TimedOut, &Answer::TimedOut, false),
            Some(HealthState::Suspended(SuspendReason::NotAnswering {
                why: "timed out".into()
            }))
        );
        assert_eq!(
            assess(&failed, &Answer::TimedOut, false),
            Some(HealthState::Suspended(SuspendReason::NotAnswering {
                why: "query refused (REFUSED)".into()
            }))
        );
        assert_eq!(assess(&Answer::TimedOut, &nx, false), None);
        assert_eq!(assess(&answer_listed("127.0.0.2"), &failed, false), None);
        assert_eq!(assess(&nx, &nx, false), Some(HealthState::TestPointMissing));
    }

    #[test]
    fn the_status_has_a_line_a_list() {
        let config = DnsblConfig {
            servers: DnsServers::Explicit(vec!["127.0.0.1:53".parse().unwrap()]),
            ..DnsblConfig::new(
                DnsblSites::parse("bl.test*2 wl.test=127.0.10.1*-5 dead.test").unwrap(),
            )
        };
        let dnsbl = Dnsbl::new(config, Arc::new(Captured::default())).unwrap();
        dnsbl.inner.lists[0]
            .counters
            .lookups
            .store(7, Ordering::Relaxed);
        *lock(&dnsbl.inner.lists[1].health.state) = HealthState::TestPointMissing;
        *lock(&dnsbl.inner.lists[2].health.state) =
            HealthState::Suspended(SuspendReason::NotAnswering {
                why: "timed out".into(),
            });
        assert_eq!(
            dnsbl.status_text(),
            "bl.test lookups=7 listed=0 not_listed=0 failures=0 in_flight=0 health=healthy\n\
             wl.test lookups=0 listed=0 not_listed=0 failures=0 in_flight=0 \
             health=in use, test point 127.0.0.2 not listed\n\
             dead.test lookups=0 listed=0 not_listed=0 failures=0 in_flight=0 \
             health=suspended: no answer for its test points: timed out\n"
        );
    }

    #[tokio::test]
    async fn the_health_check_suspends_bad_lists_and_resumes_them() {
        let server = lab();
        let forwarder = forwarder(&server, &["dead.test"]);
        let (dnsbl, log) = dnsbl(
            "bl.test world.test*5 dead.test*5 empty.test",
            forwarder.addr(),
            Duration::from_millis(500),
        );
        let mut suspensions = dnsbl.suspensions();
        let health = dnsbl.health_check().await;
        // Both suspensions are published, whoever reads them late.
        assert_eq!(suspensions.next().await, ["world.test", "dead.test"]);
        let states: Vec<(&str, &HealthState, bool)> = health
            .iter()
            .map(|h| (h.domain.as_str(), &h.state, h.changed))
            .collect();
        assert_eq!(
            states,
            [
                ("bl.test", &HealthState::Healthy, false),
                (
                    "world.test",
                    &HealthState::Suspended(SuspendReason::ListsTheWorld {
                        answer: ip4("127.0.0.2")
                    }),
                    true
                ),
                (
                    "dead.test",
                    &HealthState::Suspended(SuspendReason::NotAnswering {
                        why: "timed out".into()
                    }),
                    true
                ),
                ("empty.test", &HealthState::TestPointMissing, true),
            ]
        );
        assert_eq!(
            log.count(
                "warning: dnsbl world.test suspended: it lists the test point 127.0.0.1 \
                 (as 127.0.0.2), so it would list every client"
            ),
            1,
            "{:?}",
            log.lines()
        );
        assert_eq!(
            log.count(
                "warning: dnsbl dead.test suspended: no answer for its test points: timed out"
            ),
            1
        );
        assert_eq!(
            log.count("warning: dnsbl empty.test: the test point 127.0.0.2 is not listed"),
            1
        );

        // Suspended lists are not asked and their weight is ignored.
        let sent = forwarder.total();
        let score = dnsbl
            .start(client("127.0.0.11"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((score.rank, score.suspended, score.failed), (0, 2, 0));
        assert_eq!(forwarder.total(), sent + 2);
        assert_eq!(forwarder.count("11.0.0.127.world.test"), 0);

        // No change, no new log line.
        let lines = log.lines().len();
        dnsbl.health_check().await;
        assert_eq!(log.lines().len(), lines);

        // A list that answers again but refuses stays suspended; the new reason is not news.
        forwarder.swallow_nothing();
        let health = dnsbl.health_check().await;
        assert_eq!(
            (health[2].state.clone(), health[2].changed),
            (
                HealthState::Suspended(SuspendReason::NotAnswering {
                    why: "query refused (REFUSED)".into()
                }),
                false
            )
        );
        assert_eq!(log.lines().len(), lines);
        assert!(dnsbl.stats()[1].health.is_suspended());
        assert!(!dnsbl.stats()[3].health.is_suspended());
        // A list that stays suspended is not suspended again.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), suspensions.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_list_that_recovers_is_used_again() {
        let server = lab();
        let forwarder = forwarder(&server, &["bl.test"]);
        let (dnsbl, log) = dnsbl("bl.test*3", forwarder.addr(), Duration::from_millis(400));
        let health = dnsbl.health_check().await;
        assert!(health[0].state.is_suspended());
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((score.rank, score.suspended), (0, 1));

        let mut suspensions = dnsbl.suspensions();
        forwarder.swallow_nothing();
        let health = dnsbl.health_check().await;
        assert_eq!(
            (health[0].state.clone(), health[0].changed),
            (HealthState::Healthy, true)
        );
        // Recovering is no suspension.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), suspensions.next())
                .await
                .is_err()
        );
        assert_eq!(
            log.count("dnsbl bl.test in use again: its test points answer as they should"),
            1
        );
        let score = dnsbl
            .start(client("127.0.0.40"))
            .wait_all(in_secs(10.0))
            .await;
        assert_eq!((score.rank, score.suspended), (3, 0));
    }

    #[test]
    fn the_status_file_is_private_and_never_a_symlink() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("smtp-screen-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dnsbl.status");
        std::fs::write(&path, b"old text, readable by all\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_status_file(&path).unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 0, "the file starts empty");
        // A symlink planted where the file goes is refused, and its target left alone.
        let target = dir.join("elsewhere");
        std::fs::write(&target, b"keep me").unwrap();
        let link = dir.join("planted.status");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_status_file(&link).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn error_answers_are_never_listings() {
        let codes = |text: &str| {
            text.split(' ')
                .map(|a| a.parse::<Ipv4Addr>().unwrap())
                .collect::<Vec<_>>()
        };
        // Spamhaus's error codes, with or without a filter.
        for code in ["127.255.255.252", "127.255.255.254", "127.255.255.255"] {
            assert_eq!(error_answer(&codes(code), false), Some(ip4(code)));
            assert_eq!(error_answer(&codes(code), true), Some(ip4(code)));
        }
        // Outside 127.0.0.0/8: an error for a list that counts any answer.
        assert_eq!(
            error_answer(&codes("127.0.0.2 10.0.0.1"), true),
            Some(ip4("10.0.0.1"))
        );
        assert_eq!(error_answer(&codes("10.0.0.1"), false), None);
        assert_eq!(error_answer(&codes("127.0.0.2 127.0.10.1"), true), None);
        // The health check suspends a list whose test point gets an error answer.
        assert_eq!(
            assess(
                &answer_listed("127.255.255.254"),
                &Answer::NotListed { ttl: None },
                true
            ),
            Some(HealthState::Suspended(SuspendReason::ErrorAnswer {
                answer: ip4("127.255.255.254")
            }))
        );
    }
}
