//! Connection accounting: simultaneous connections per client, the screening (pre-queue) and
//! hand-off (post-queue) limits, and stress mode — each with postscreen's numbers — and the
//! relayed connections (`handoff = "proxy"`), which postscreen does not have: a relayed
//! connection keeps its place in its client's count, and takes one of `relay_max_connections`.
//!
//! Every count is held by an RAII slot, so a connection that ends in any way gives its place
//! back. Stress mode is entered when the screening count reaches 90% of
//! `pre_queue_limit` and left when it falls to 70% (`postscreen.c`, the hysteresis keeps it
//! from flapping).

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::address::canonical;

/// A time value that depends on stress, as `${stress?{2}:{6}}s` (postscreen evaluates it
/// twice at start-up and switches between the two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StressDuration {
    pub(crate) normal: Duration,
    pub(crate) stress: Duration,
}

impl StressDuration {
    pub(crate) const fn fixed(value: Duration) -> Self {
        Self {
            normal: value,
            stress: value,
        }
    }

    /// The value in force.
    pub(crate) fn get(&self, stressed: bool) -> Duration {
        if stressed { self.stress } else { self.normal }
    }
}

/// postscreen's connection limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LimitSettings {
    pub(crate) client_connection_count_limit: u32,
    pub(crate) pre_queue_limit: u32,
    pub(crate) post_queue_limit: u32,
}

/// A change of stress mode, to be logged as postscreen logs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StressChange {
    /// `entering STRESS mode with N connections`
    Entered(u32),
    /// `leaving STRESS mode with N connections`
    Left(u32),
}

impl std::fmt::Display for StressChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Entered(n) => write!(f, "entering STRESS mode with {n} connections"),
            Self::Left(n) => write!(f, "leaving STRESS mode with {n} connections"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    per_client: HashMap<IpAddr, u32>,
    screening: u32,
    handoff: u32,
    /// Connections in a relay (`handoff = "proxy"`), both relays together.
    relayed: u32,
    stressed: bool,
    /// Stress changes not yet picked up for logging.
    changes: Vec<StressChange>,
}

/// The limits, shared by every connection.
#[derive(Debug)]
pub(crate) struct Limits {
    per_client_limit: u32,
    pre_queue_limit: u32,
    post_queue_limit: u32,
    relay_limit: u32,
    hiwat: u32,
    lowat: u32,
    state: Mutex<State>,
}

/// What a new connection is told when a limit is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `421 4.7.0 Error: too many connections`
    TooManyFromClient,
    /// `421 4.3.2 All server ports are busy`
    HandoffFull,
    /// `421 4.3.2 All screening ports are busy`
    ScreeningFull,
}

impl Limits {
    /// `per_client_limit` 0 means no limit (Postfix's convention); `relay_limit` is how many
    /// connections may be relayed at once (`relay_max_connections` with `handoff = "proxy"`;
    /// 0: no bound, nothing is relayed with `handoff = "postfix"`).
    pub(crate) fn new(
        per_client_limit: u32,
        pre_queue_limit: u32,
        post_queue_limit: u32,
        relay_limit: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            per_client_limit,
            pre_queue_limit,
            post_queue_limit,
            relay_limit,
            hiwat: (pre_queue_limit * 9).div_ceil(10),
            lowat: pre_queue_limit * 7 / 10,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not take connection accounting down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `client`. Returns the slot and the client's connection
    /// count including this one; the slot is held even when the count is over the limit,
    /// so that the refusal itself is accounted for until the connection closes. A client's
    /// relayed connections count; when the hand-off queue or the relay is full, no client
    /// could be handed off, and the new one is told the server ports are busy.
    pub(crate) fn connect(self: &Arc<Self>, client: IpAddr) -> (ClientSlot, Result<u32, Refusal>) {
        let client = canonical(client);
        let mut state = self.lock();
        let count = state.per_client.entry(client).or_insert(0);
        *count += 1;
        let n = *count;
        let handoff_full = state.handoff >= self.post_queue_limit || self.relay_full(&state);
        drop(state);
        let slot = ClientSlot {
            limits: Arc::clone(self),
            client,
        };
        let verdict = if self.per_client_limit > 0 && n > self.per_client_limit {
            Err(Refusal::TooManyFromClient)
        } else if handoff_full {
            Err(Refusal::HandoffFull)
        } else {
            Ok(n)
        };
        (slot, verdict)
    }

    /// Takes a screening place, or refuses when `pre_queue_limit` are taken.
    pub(crate) fn screen(self: &Arc<Self>) -> Result<ScreeningSlot, Refusal> {
        let mut state = self.lock();
        if state.screening >= self.pre_queue_limit {
            return Err(Refusal::ScreeningFull);
        }
        state.screening += 1;
        if !state.stressed && state.screening >= self.hiwat {
            state.stressed = true;
            let n = state.screening;
            state.changes.push(StressChange::Entered(n));
        }
        Ok(ScreeningSlot {
            limits: Arc::clone(self),
        })
    }

    /// Takes a hand-off place while a passed client is being connected to the backend.
    pub(crate) fn hand_off(self: &Arc<Self>) -> Result<HandoffSlot, Refusal> {
        let mut state = self.lock();
        if state.handoff >= self.post_queue_limit {
            return Err(Refusal::HandoffFull);
        }
        state.handoff += 1;
        Ok(HandoffSlot {
            limits: Arc::clone(self),
        })
    }

    /// Takes a place among the relayed connections for the connection `client` holds, which
    /// keeps its place in its client's count for as long as it is relayed; or gives the slot
    /// back with the refusal when `relay_max_connections` are relayed already.
    pub(crate) fn relay(
        self: &Arc<Self>,
        client: ClientSlot,
    ) -> Result<RelaySlot, (ClientSlot, Refusal)> {
        let mut state = self.lock();
        if self.relay_full(&state) {
            return Err((client, Refusal::HandoffFull));
        }
        state.relayed += 1;
        Ok(RelaySlot {
            limits: Arc::clone(self),
            _client: client,
        })
    }

    fn relay_full(&self, state: &State) -> bool {
        self.relay_limit > 0 && state.relayed >= self.relay_limit
    }

    /// Connections in a relay now.
    #[cfg(test)]
    pub(crate) fn relayed(&self) -> u32 {
        self.lock().relayed
    }

    /// Whether stress mode is on: read once by each new connection for its greet wait, and at
    /// every command deadline by the dummy engine (postscreen's `PSC_EFF_CMD_TIME_LIMIT`).
    pub(crate) fn stressed(&self) -> bool {
        self.lock().stressed
    }

    /// Stress changes since the last call, oldest first.
    pub(crate) fn take_stress_changes(&self) -> Vec<StressChange> {
        std::mem::take(&mut self.lock().changes)
    }

    /// Connections from `client` now.
    #[cfg(test)]
    pub(crate) fn connections_of(&self, client: IpAddr) -> u32 {
        self.lock()
            .per_client
            .get(&canonical(client))
            .copied()
            .unwrap_or(0)
    }
}

/// Descriptors the daemon keeps besides its clients': listeners, the log, the allowlist
/// database, the BPF maps, DNS sockets, a backend connection being set up.
const RESERVED_DESCRIPTORS: u64 = 256;

/// The descriptors the connection limits let the daemon hold at once: one per client in
/// screening, two per client being handed off (the client's and the backend's), and the
/// daemon's own. Relayed connections come on top, two each.
pub(crate) fn descriptors_needed(pre_queue_limit: u32, post_queue_limit: u32) -> u64 {
    u64::from(pre_queue_limit) + 2 * u64::from(post_queue_limit) + RESERVED_DESCRIPTORS
}

/// Raises the soft open-files limit (`RLIMIT_NOFILE`) to the hard one and returns it, as
/// Postfix's servers do when they start (`open_limit`): every client held in the greet wait
/// is a descriptor, and init systems start services with a soft limit of 1024 whatever the
/// hard one allows.
pub(crate) fn raise_open_files() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a valid one.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one valid rlimit; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// One connection of one client.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    limits: Arc<Limits>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut state = self.limits.lock();
        if let Some(count) = state.per_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                state.per_client.remove(&self.client);
            }
        }
    }
}

/// A place in screening.
#[derive(Debug)]
pub(crate) struct ScreeningSlot {
    limits: Arc<Limits>,
}

impl Drop for ScreeningSlot {
    fn drop(&mut self) {
        let lowat = self.limits.lowat;
        let mut state = self.limits.lock();
        state.screening -= 1;
        if state.stressed && state.screening <= lowat {
            state.stressed = false;
            let n = state.screening;
            state.changes.push(StressChange::Left(n));
        }
    }
}

/// A relayed connection: its place among the relayed ones and in its client's count.
#[derive(Debug)]
pub(crate) struct RelaySlot {
    limits: Arc<Limits>,
    _client: ClientSlot,
}

impl Drop for RelaySlot {
    fn drop(&mut self) {
        self.limits.lock().relayed -= 1;
    }
}

/// A place in the hand-off queue.
#[derive(Debug)]
pub(crate) struct HandoffSlot {
    limits: Arc<Limits>,
}

impl Drop for HandoffSlot {
    fn drop(&mut self) {
        self.limits.lock().handoff -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_client_limit_counts_simultaneous_connections() {
        let limits = Limits::new(2, 100, 100, 0);
        let (a, ra) = limits.connect(ip("192.0.2.1"));
        let (b, rb) = limits.connect(ip("192.0.2.1"));
        let (c, rc) = limits.connect(ip("192.0.2.1"));
        assert_eq!(
            (ra, rb, rc),
            (Ok(1), Ok(2), Err(Refusal::TooManyFromClient))
        );
        let (_, other) = limits.connect(ip("192.0.2.2"));
        assert_eq!(other, Ok(1));
        drop((a, c));
        let (_d, rd) = limits.connect(ip("192.0.2.1"));
        assert_eq!(rd, Ok(2));
        drop(b);
        assert_eq!(limits.connections_of(ip("192.0.2.1")), 1);
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let limits = Limits::new(1, 100, 100, 0);
        let (_a, _) = limits.connect(ip("192.0.2.1"));
        let (_b, r) = limits.connect(ip("::ffff:192.0.2.1"));
        assert_eq!(r, Err(Refusal::TooManyFromClient));
    }

    #[test]
    fn zero_means_no_per_client_limit() {
        let limits = Limits::new(0, 100, 100, 0);
        let slots: Vec<_> = (0..500).map(|_| limits.connect(ip("192.0.2.1"))).collect();
        assert!(slots.iter().all(|(_, r)| r.is_ok()));
    }

    #[test]
    fn screening_limit_and_stress_follow_postscreen() {
        // The lab: limit 10 → STRESS at 9 connections, left at 7; the 11th is refused.
        let limits = Limits::new(0, 10, 100, 0);
        let mut slots = Vec::new();
        for _ in 0..8 {
            slots.push(limits.screen().unwrap());
        }
        assert!(!limits.stressed());
        slots.push(limits.screen().unwrap());
        assert!(limits.stressed());
        assert_eq!(limits.take_stress_changes(), vec![StressChange::Entered(9)]);
        slots.push(limits.screen().unwrap());
        assert_eq!(limits.screen().unwrap_err(), Refusal::ScreeningFull);
        slots.truncate(8);
        assert!(limits.stressed(), "8 is above the low-water mark");
        slots.truncate(7);
        assert!(!limits.stressed());
        let changes = limits.take_stress_changes();
        assert_eq!(changes, vec![StressChange::Left(7)]);
        assert_eq!(
            changes[0].to_string(),
            "leaving STRESS mode with 7 connections"
        );
        assert_eq!(
            StressChange::Entered(9).to_string(),
            "entering STRESS mode with 9 connections"
        );
    }

    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        let raised = raise_open_files().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into a valid one.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!((raised, limit.rlim_cur), (limit.rlim_max, limit.rlim_max));
    }

    #[test]
    fn descriptors_cover_screening_hand_off_and_the_daemon() {
        // postscreen's defaults: 100 in screening, 100 being handed off.
        assert_eq!(
            descriptors_needed(100, 100),
            100 + 200 + RESERVED_DESCRIPTORS
        );
    }

    #[test]
    fn relayed_connections_count_for_their_client_and_against_the_relay_limit() {
        let limits = Limits::new(2, 100, 100, 3);
        let relay = |client| {
            let (slot, admitted) = limits.connect(ip(client));
            assert!(admitted.is_ok(), "{client}: {admitted:?}");
            limits.relay(slot).unwrap()
        };
        // The client's place stays taken while its connection is relayed.
        let first = relay("192.0.2.1");
        let _second = relay("192.0.2.1");
        assert_eq!(limits.connections_of(ip("192.0.2.1")), 2);
        let (_third, r) = limits.connect(ip("192.0.2.1"));
        assert_eq!(r, Err(Refusal::TooManyFromClient));
        // The relay holds 3: a fourth is refused at the hand-off with its client slot back,
        // and a new connection is told the server ports are busy.
        let _other = relay("192.0.2.2");
        assert_eq!(limits.relayed(), 3);
        let (slot, admitted) = limits.connect(ip("192.0.2.3"));
        assert_eq!(admitted, Err(Refusal::HandoffFull));
        let (slot, refusal) = limits.relay(slot).unwrap_err();
        assert_eq!(refusal, Refusal::HandoffFull);
        drop(slot);
        assert_eq!(limits.connections_of(ip("192.0.2.3")), 0);
        // A relayed connection that ends gives both places back.
        drop(first);
        assert_eq!(
            (limits.relayed(), limits.connections_of(ip("192.0.2.1"))),
            (2, 2)
        );
        let (slot, admitted) = limits.connect(ip("192.0.2.3"));
        assert!(admitted.is_ok());
        assert!(limits.relay(slot).is_ok());
    }

    #[test]
    fn handoff_limit_refuses_new_clients_when_full() {
        let limits = Limits::new(0, 100, 5, 0);
        let held: Vec<_> = (0..5).map(|_| limits.hand_off().unwrap()).collect();
        assert_eq!(limits.hand_off().unwrap_err(), Refusal::HandoffFull);
        let (_slot, r) = limits.connect(ip("192.0.2.9"));
        assert_eq!(r, Err(Refusal::HandoffFull));
        drop(held);
        let (_slot, r) = limits.connect(ip("192.0.2.9"));
        assert!(r.is_ok());
    }
}
