//! The kernel deny policy: which failing clients earn a dynamic deny entry in the XDP maps.
//!
//! The first failure of a client is answered in SMTP, exactly as postscreen answers it, so a
//! wrongly listed sender sees the reason in its bounce. A client that fails again within
//! `deny_window`, or a denylisted client whose action is `drop`, is denied in the kernel for
//! `deny_ttl`: its next SYNs never reach userspace. IPv6 clients are tracked by the same
//! prefix the kernel map uses, so a bot cannot walk its /64.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use ipnet::IpNet;

use super::deny_causes::{DenyCause, DenyCauses, DnsblGround};
use super::deny_guard::DenyGuard;
use super::deny_writer::{DenyWriter, KernelDeny};
use crate::{
    address::canonical,
    kernel::{Maps, clock},
    maillog::MailLog,
};

/// How many clients with a recent failure are remembered. Past this, the oldest go first:
/// memory stays bounded under a flood of distinct addresses.
pub(crate) const MAX_TRACKED: usize = 100_000;

/// The kernel deny policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DenySettings {
    pub(crate) window: Duration,
    pub(crate) ttl: Duration,
    pub(crate) v6_prefix: u32,
    /// `soft_bounce = yes`: the operator's trial mode, in which every refusal is temporary.
    pub(crate) soft_bounce: bool,
    /// `kernel_deny_rate_limit`: the most new entries a minute.
    pub(crate) rate_limit: u32,
    /// `upstream_proxy_protocol = "haproxy"`: clients come through a load balancer, and the
    /// kernel sees only its address.
    pub(crate) behind_balancer: bool,
}

impl DenySettings {
    /// The policy these settings make. It denies nothing without the kernel layer, and
    /// nothing under `soft_bounce`: a trial must not drop a single SYN, since a kernel deny is
    /// silent where a 4xx is retried. Nor behind a load balancer: an entry names the client of
    /// the PROXY header, which XDP never sees, and an entry for the balancer stops all mail.
    pub(crate) fn policy(&self, kernel_attached: bool) -> DenyPolicy {
        let ttl = if kernel_attached && !self.soft_bounce && !self.behind_balancer {
            self.ttl
        } else {
            Duration::ZERO
        };
        DenyPolicy::new(self.window, ttl, self.v6_prefix).with_rate_limit(self.rate_limit)
    }

    /// The line to log at start when a load balancer keeps the policy off.
    pub(crate) fn off_behind_balancer(&self, kernel_attached: bool) -> Option<&'static str> {
        (kernel_attached && self.behind_balancer).then_some(
            "kernel deny policy off: behind a load balancer (upstream_proxy_protocol = haproxy) \
             the kernel sees only the balancer's address; clients are refused in SMTP only, \
             and the static deny lists still apply",
        )
    }
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    first: Instant,
    last: Instant,
    count: u32,
}

/// Tracks failures per client and decides kernel denies.
#[derive(Debug)]
pub(crate) struct DenyPolicy {
    window: Duration,
    ttl: Duration,
    v6_prefix: u8,
    max_tracked: usize,
    recent: HashMap<IpNet, Failures>,
    /// When each of the last minute's denies was made, at most `rate_limit` of them.
    made: VecDeque<Instant>,
    rate_limit: u32,
    paused: bool,
}

/// Whether a deny the policy decided may go into the kernel now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Admitted {
        /// The policy was paused and this deny resumes it.
        resumed: bool,
    },
    /// Past `kernel_deny_rate_limit` in the last minute.
    Paused {
        /// This deny is the first the pause holds back.
        started: bool,
    },
}

/// The span `kernel_deny_rate_limit` counts over.
const RATE_WINDOW: Duration = Duration::from_secs(60);

impl DenyPolicy {
    /// `ttl` zero turns the policy off.
    pub(crate) fn new(window: Duration, ttl: Duration, v6_prefix: u32) -> Self {
        Self {
            window,
            ttl,
            v6_prefix: v6_prefix.min(128) as u8,
            max_tracked: MAX_TRACKED,
            recent: HashMap::new(),
            made: VecDeque::new(),
            rate_limit: u32::MAX,
            paused: false,
        }
    }

    /// At most `per_minute` denies a minute (`kernel_deny_rate_limit`).
    pub(crate) fn with_rate_limit(mut self, per_minute: u32) -> Self {
        self.rate_limit = per_minute.max(1);
        self
    }

    /// The circuit breaker: a deny the policy decided goes into the kernel only while fewer
    /// than `kernel_deny_rate_limit` were made in the last minute. A deny held back is
    /// dropped, not queued; the client's failures are answered in SMTP as always.
    pub(crate) fn admit(&mut self, now: Instant) -> Admission {
        while self
            .made
            .front()
            .is_some_and(|&made| now.saturating_duration_since(made) >= RATE_WINDOW)
        {
            self.made.pop_front();
        }
        if self.made.len() >= self.rate_limit as usize {
            let started = !self.paused;
            self.paused = true;
            return Admission::Paused { started };
        }
        self.made.push_back(now);
        let resumed = self.paused;
        self.paused = false;
        Admission::Admitted { resumed }
    }

    #[cfg(test)]
    fn with_capacity(mut self, max: usize) -> Self {
        self.max_tracked = max;
        self
    }

    /// Whether the policy denies anything at all.
    pub(crate) fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// The key a client is tracked and denied under.
    pub(crate) fn key(&self, client: IpAddr) -> IpNet {
        match canonical(client) {
            IpAddr::V4(v4) => IpNet::from(ipnet::Ipv4Net::from(v4)),
            IpAddr::V6(v6) => IpNet::new(IpAddr::V6(v6), self.v6_prefix)
                .expect("prefix within 128")
                .trunc(),
        }
    }

    /// Records a failed test; returns a deny decision when this is a repeat within the window.
    pub(crate) fn on_failure(
        &mut self,
        client: IpAddr,
        now: Instant,
        reason: &str,
    ) -> Option<KernelDeny> {
        if !self.enabled() {
            return None;
        }
        let key = self.key(client);
        let window = self.window;
        let failures = match self.recent.get_mut(&key) {
            Some(f) if now.saturating_duration_since(f.last) <= window => {
                f.count = f.count.saturating_add(1);
                f.last = now;
                *f
            }
            _ => {
                self.make_room(now);
                let f = Failures {
                    first: now,
                    last: now,
                    count: 1,
                };
                self.recent.insert(key, f);
                f
            }
        };
        if failures.count < 2 {
            return None;
        }
        self.recent.remove(&key);
        Some(KernelDeny {
            net: key,
            ttl: self.ttl,
            failures: failures.count,
            reason: reason.to_string(),
        })
    }

    /// A client whose first failure is already conclusive (a DNSBL score at or above
    /// `kernel_dnsbl_threshold`) is denied on first contact.
    pub(crate) fn on_severe(&mut self, client: IpAddr, reason: &str) -> Option<KernelDeny> {
        if !self.enabled() {
            return None;
        }
        let key = self.key(client);
        self.recent.remove(&key);
        Some(KernelDeny {
            net: key,
            ttl: self.ttl,
            failures: 1,
            reason: reason.to_string(),
        })
    }

    /// A permanently denylisted client whose action is `drop` is denied on first contact.
    pub(crate) fn on_denylist_drop(&mut self, client: IpAddr) -> Option<KernelDeny> {
        self.on_severe(client, "denylisted")
    }

    /// Forgets a client that passed or was allowlisted: its earlier failure no longer counts.
    pub(crate) fn forget(&mut self, client: IpAddr) {
        let key = self.key(client);
        self.recent.remove(&key);
    }

    /// Drops failures older than the window; called before inserting and periodically.
    pub(crate) fn expire(&mut self, now: Instant) {
        let window = self.window;
        self.recent
            .retain(|_, f| now.saturating_duration_since(f.last) <= window);
    }

    fn make_room(&mut self, now: Instant) {
        if self.recent.len() < self.max_tracked {
            return;
        }
        self.expire(now);
        if self.recent.len() < self.max_tracked {
            return;
        }
        // Still full of live entries: forget the oldest tenth in one pass, so that a flood of
        // distinct addresses costs amortised constant time per insert.
        let mut firsts: Vec<Instant> = self.recent.values().map(|f| f.first).collect();
        let cut = (firsts.len() / 10).max(1) - 1;
        let (_, cutoff, _) = firsts.select_nth_unstable(cut);
        let cutoff = *cutoff;
        self.recent.retain(|_, f| f.first > cutoff);
    }

    /// Clients currently tracked (for status and tests).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.recent.len()
    }
}

/// The policy at work: failures counted, denies installed in the kernel maps and logged.
pub(crate) struct DenyEnforcer {
    policy: Mutex<DenyPolicy>,
    /// What no deny may cover.
    guard: DenyGuard,
    /// The kernel maps, when the XDP layer is attached somewhere: read here, written by
    /// `writer` alone.
    kernel: Option<Arc<Mutex<Maps>>>,
    writer: Option<DenyWriter>,
    log: Arc<MailLog>,
    /// Which lists the denies made on DNSBL answers rest on.
    causes: Mutex<DenyCauses>,
}

impl DenyEnforcer {
    pub(crate) fn new(
        policy: DenyPolicy,
        guard: DenyGuard,
        kernel: Option<Arc<Mutex<Maps>>>,
        log: Arc<MailLog>,
    ) -> anyhow::Result<Self> {
        let writer = match &kernel {
            Some(maps) => Some(DenyWriter::start(Arc::clone(maps), Arc::clone(&log))?),
            None => None,
        };
        Ok(Self {
            policy: Mutex::new(policy),
            guard,
            kernel,
            writer,
            log,
            causes: Mutex::new(DenyCauses::with_capacity(MAX_TRACKED)),
        })
    }

    fn policy(&self) -> MutexGuard<'_, DenyPolicy> {
        self.policy.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn causes(&self) -> MutexGuard<'_, DenyCauses> {
        self.causes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client failed a test: a repeat within the window is denied in the kernel.
    pub(crate) fn failed(&self, client: IpAddr, reason: &str) {
        self.failed_on(client, reason, None);
    }

    /// A client failed; `dnsbl` is the ground of its DNSBL failure when that is one of them
    /// (a DNSBL failure on answers outside 127.0.0.0/8 alone is not counted at all).
    pub(crate) fn failed_on(&self, client: IpAddr, reason: &str, dnsbl: Option<DnsblGround>) {
        let now = Instant::now();
        let (deny, key, enabled) = {
            let mut policy = self.policy();
            let deny = policy.on_failure(client, now, reason);
            (deny, policy.key(client), policy.enabled())
        };
        if !enabled || self.kernel.is_none() {
            return;
        }
        let Some(deny) = deny else {
            self.causes().first_failure(key, dnsbl, now);
            return;
        };
        let earlier = self.causes().take_earlier(key);
        let cause = DenyCause::repeat(earlier, dnsbl);
        if !cause.stands() {
            // The earlier failure rested on a list suspended since.
            tracing::info!(%client, "no kernel deny: an earlier failure's list was suspended");
            return;
        }
        self.install(client, Some(deny), cause);
    }

    /// A failure conclusive on its own (a DNSBL score at `kernel_dnsbl_threshold`), on the
    /// lists of `ground`.
    pub(crate) fn severe(&self, client: IpAddr, reason: &str, ground: DnsblGround) {
        let deny = self.policy().on_severe(client, reason);
        self.install(client, deny, DenyCause::severe(ground));
    }

    /// A denylisted client whose action is `drop`.
    pub(crate) fn denylist_drop(&self, client: IpAddr) {
        let deny = self.policy().on_denylist_drop(client);
        self.install(client, deny, DenyCause::on_no_list());
    }

    /// A list was suspended: the kernel denies that no longer stand without its answers are
    /// removed from the maps, one log line each. An entry the policy no longer owns (the
    /// operator replaced it) stays.
    pub(crate) fn list_suspended(&self, list: &str) {
        let revoked = self.causes().suspended(list, Instant::now());
        let Some(writer) = &self.writer else {
            return;
        };
        for revocation in revoked {
            writer.revoke(revocation.net, revocation.log_line(list));
        }
    }

    /// Remembers what an installed deny rests on.
    fn remember(&self, deny: &KernelDeny, client: IpAddr, cause: DenyCause) {
        self.causes()
            .installed(deny.net, client, cause, deny.ttl, Instant::now());
    }

    /// A client that passed or is allowlisted: its earlier failure no longer counts.
    pub(crate) fn forget(&self, client: IpAddr) {
        self.policy().forget(client);
    }

    /// Whether the kernel denies `client` now (its deny lists and entries, read from the maps):
    /// for a client that reached the daemon past the program. A map that cannot be read
    /// denies nothing.
    pub fn kernel_denies(&self, client: IpAddr) -> bool {
        let Some(kernel) = &self.kernel else {
            return false;
        };
        let maps = kernel.lock().unwrap_or_else(|e| e.into_inner());
        match maps.kernel_denies(client, clock::monotonic_ns()) {
            Ok(denied) => denied,
            Err(e) => {
                tracing::warn!("reading the kernel deny state of {client}: {e}");
                false
            }
        }
    }

    /// Drops remembered failures older than the deny window (called periodically).
    pub(crate) fn expire(&self) {
        let now = Instant::now();
        self.policy().expire(now);
        self.causes().expire(now);
    }

    /// Removes expired dynamic deny entries from the kernel maps (called periodically; the
    /// program ignores them already, this gives their room back). The writer sweeps; this
    /// returns at once.
    pub(crate) fn sweep_kernel(&self, now_ns: u64) {
        if let Some(writer) = &self.writer {
            writer.sweep(now_ns);
        }
    }

    fn install(&self, client: IpAddr, deny: Option<KernelDeny>, cause: DenyCause) {
        let (Some(deny), Some(writer)) = (deny, &self.writer) else {
            return;
        };
        if let Some(protected) = self.guard.protects(deny.net) {
            self.log.info(format_args!(
                "KERNEL DENY refused for [{client}] ({}): {protected}",
                deny.net
            ));
            return;
        }
        let limit = {
            let mut policy = self.policy();
            match policy.admit(Instant::now()) {
                Admission::Admitted { resumed } => resumed.then_some(policy.rate_limit),
                Admission::Paused { started } => {
                    if started {
                        self.log.warning(format_args!(
                            "kernel deny policy paused: more than {} new kernel denies in a \
                             minute (kernel_deny_rate_limit); clients are refused in SMTP only \
                             until the rate falls",
                            policy.rate_limit
                        ));
                    }
                    return;
                }
            }
        };
        if let Some(limit) = limit {
            self.log.info(format_args!(
                "kernel deny policy resumed: fewer than {limit} new kernel denies in the last \
                 minute"
            ));
        }
        // Remembered now, before the writer makes the entry: a revocation that finds no
        // entry does nothing.
        self.remember(&deny, client, cause);
        writer.install(deny, client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(600);
    const TTL: Duration = Duration::from_secs(3600);
    /// The defaults, on a host clients reach directly.
    const DIRECT: DenySettings = DenySettings {
        window: WINDOW,
        ttl: TTL,
        v6_prefix: 64,
        soft_bounce: false,
        rate_limit: 300,
        behind_balancer: false,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_failure_is_answered_in_smtp_only() {
        let mut policy = DenyPolicy::new(WINDOW, TTL, 64);
        let now = Instant::now();
        assert_eq!(policy.on_failure(ip("192.0.2.1"), now, "PREGREET"), None);
        assert_eq!(policy.tracked(), 1);
    }

    #[test]
    fn second_failure_within_the_window_denies() {
        let mut policy = DenyPolicy::new(WINDOW, TTL, 64);
        let now = Instant::now();
        policy.on_failure(ip("192.0.2.1"), now, "PREGREET");
        let deny = policy
            .on_failure(ip("192.0.2.1"), now + Duration::from_secs(599), "PREGREET")
            .unwrap();
        assert_eq!(deny.net, "192.0.2.1/32".parse::<IpNet>().unwrap());
        assert_eq!(deny.ttl, TTL);
        assert_eq!(deny.failures, 2);
        assert_eq!(
            deny.log_line(ip("192.0.2.1")),
            "KERNEL DENY [192.0.2.1] for 3600s after 2 failures: PREGREET"
        );
        assert_eq!(policy.tracked(), 0, "denied clients are no longer tracked");
    }

    #[test]
    fn a_failure_after_the_window_starts_over() {
        let mut policy = DenyPolicy::new(WINDOW, TTL, 64);
        let now = Instant::now();
        policy.on_failure(ip("192.0.2.1"), now, "PREGREET");
        assert_eq!(
            policy.on_failure(
                ip("192.0.2.1"),
                now + WINDOW + Duration::from_secs(1),
                "PREGREET"
            ),
            None
        );
    }

    #[test]
    fn other_clients_do_not_count() {
        let mut policy = DenyPolicy::new(WINDOW, TTL, 64);
        let now = Instant::now();
        policy.on_failure(ip("192.0.2.1"), now, "x");
        assert_eq!(policy.on_failure(ip("192.0.2.2"), now, "x"), None);
    }

    #[test]
    fn ipv6_clients_share_their_prefix() {
        let mut policy = DenyPolicy::new(WINDOW, TTL, 64);
        let now = Instant::now();
        policy.on_failure(ip("2001:db8:1:2::1"), now, "x");
        let deny = policy
            .on_failure(ip("2001:db8:1:2::ffff"), now, "x")
            .unwrap();
        assert_eq!(deny.net, "2001:db8:1:2::/64".parse::<IpNet>().unwrap());
        assert_eq!(policy.on_failure(ip("2001:db8:1:3::1"), now, "x"), None);
    }

    #[test]
    fn ipv4_mapped_clients_are_ipv4() {
        let policy = DenyPolicy::new(WINDOW, TTL, 64);
        assert_eq!(
            policy.key(ip("::ffff:192.0.2.9")),
            "192.0.2.9/32".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn denylist_drop_denies_at_once() {
        let mut policy = DenyPolicy::new(WINDOW, TTL, 64);
        let deny = policy.on_denylist_drop(ip("192.0.2.3")).unwrap();
        assert_eq!(deny.failures, 1);
        assert_eq!(
            deny.log_line(ip("192.0.2.3")),
            "KERNEL DENY [192.0.2.3] for 3600s after 1 failure: denylisted"
        );
    }

    #[test]
    fn zero_ttl_turns_the_policy_off() {
        let mut policy = DenyPolicy::new(WINDOW, Duration::ZERO, 64);
        let now = Instant::now();
        assert!(!policy.enabled());
        assert_eq!(policy.on_failure(ip("192.0.2.1"), now, "x"), None);
        assert_eq!(policy.on_failure(ip("192.0.2.1"), now, "x"), None);
        assert_eq!(policy.on_denylist_drop(ip("192.0.2.1")), None);
        assert_eq!(policy.tracked(), 0);
    }

    #[test]
    fn forgetting_a_client_resets_its_count() {
        let mut policy = DenyPolicy::new(WINDOW, TTL, 64);
        let now = Instant::now();
        policy.on_failure(ip("192.0.2.1"), now, "x");
        policy.forget(ip("192.0.2.1"));
        assert_eq!(policy.on_failure(ip("192.0.2.1"), now, "x"), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut policy = DenyPolicy::new(WINDOW, TTL, 64).with_capacity(100);
        let now = Instant::now();
        for i in 0..1000u32 {
            let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            policy.on_failure(client, now + Duration::from_millis(i.into()), "x");
        }
        assert!(policy.tracked() <= 100);
        // The newest client is still tracked; the oldest went first.
        let newest = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + 999));
        assert!(
            policy
                .on_failure(newest, now + Duration::from_secs(1), "x")
                .is_some()
        );
    }

    #[test]
    fn soft_bounce_and_a_missing_kernel_layer_deny_nothing() {
        let settings = DIRECT;
        assert!(settings.policy(true).enabled());
        assert!(!settings.policy(false).enabled());
        let trial = DenySettings {
            soft_bounce: true,
            ..settings
        };
        let mut policy = trial.policy(true);
        assert!(!policy.enabled());
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(policy.on_failure(ip("192.0.2.7"), now, "PREGREET"), None);
        }
        assert_eq!(policy.on_severe(ip("192.0.2.8"), "DNSBL rank 9"), None);
        assert_eq!(policy.on_denylist_drop(ip("192.0.2.9")), None);
    }

    #[test]
    fn behind_a_load_balancer_the_policy_denies_nothing_and_says_so() {
        let direct = DIRECT;
        assert!(direct.policy(true).enabled());
        assert_eq!(direct.off_behind_balancer(true), None);
        let balanced = DenySettings {
            behind_balancer: true,
            ..direct
        };
        let mut policy = balanced.policy(true);
        assert!(!policy.enabled());
        let now = Instant::now();
        // Two PROXY clients and the balancer itself (a `LOCAL` header), failing again and again.
        for client in ["203.0.113.5", "2001:db8::5", "192.0.2.10"] {
            for round in 0..5 {
                let at = now + Duration::from_secs(round);
                assert_eq!(policy.on_failure(ip(client), at, "PREGREET"), None);
            }
            assert_eq!(policy.on_severe(ip(client), "DNSBL rank 9"), None);
            assert_eq!(policy.on_denylist_drop(ip(client)), None);
        }
        assert_eq!(policy.tracked(), 0);
        let line = balanced.off_behind_balancer(true).unwrap();
        assert!(
            line.starts_with("kernel deny policy off: behind a load balancer")
                && line.contains("the kernel sees only the balancer's address"),
            "{line}"
        );
        // Without the kernel layer there is nothing to say.
        assert_eq!(balanced.off_behind_balancer(false), None);
    }

    #[test]
    fn the_circuit_breaker_pauses_past_the_rate_and_resumes_when_it_falls() {
        let mut policy = DenyPolicy::new(Duration::from_secs(600), Duration::from_secs(3_600), 64)
            .with_rate_limit(3);
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        for second in 0..3 {
            assert_eq!(
                policy.admit(at(second)),
                Admission::Admitted { resumed: false }
            );
        }
        // The fourth deny in a minute is held back; the pause is announced once.
        assert_eq!(policy.admit(at(10)), Admission::Paused { started: true });
        assert_eq!(policy.admit(at(30)), Admission::Paused { started: false });
        assert_eq!(policy.admit(at(59)), Admission::Paused { started: false });
        // A minute after the first deny, there is room again.
        assert_eq!(policy.admit(at(60)), Admission::Admitted { resumed: true });
        assert_eq!(policy.admit(at(61)), Admission::Admitted { resumed: false });
        assert_eq!(policy.admit(at(61)), Admission::Paused { started: true });
        // What is remembered stays within the limit.
        assert!(policy.made.len() <= 3);
    }
}
