//! The hand-off relay in the kernel: the stream verdict program `smtp_screen_relay` on the
//! sockhash `scr_relay_socks`, with the peer map `scr_relay_peers`. A pair of sockets in the
//! maps has its bytes moved by the kernel, each socket's input sent out of the other, as far
//! as its credit in `scr_relay_cred` goes.
//!
//! The maps and the program belong to the running daemon and are not pinned: when the daemon
//! exits they go, and so do the relayed connections (which are its sockets anyway). They are
//! created while the daemon is still root; inserting and removing sockets later needs no
//! privilege (the kernel checks the capability when the map is created, not on each update).
//!
//! # Minimum kernel version
//!
//! 5.15: stream verdict programs without a stream parser on TCP sockets.

use std::{
    os::fd::AsRawFd,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{HashMap, MapData, MapError, SockHash},
    programs::{ProgramError, SkSkb},
};
use screen_common::{RELAY_PROGRAM_NAME, RelayPeer, map_name};

use super::{
    MapFailure,
    program::{OBJECT, xdp_maps_at_their_smallest},
};

/// The kernel relay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("loading the BPF object for the kernel relay: {0}")]
    Load(#[source] EbpfError),
    #[error("the BPF object has no map {0}")]
    NoMap(&'static str),
    #[error(transparent)]
    Map(#[from] MapFailure),
    #[error("the BPF object has no program {RELAY_PROGRAM_NAME}")]
    NoProgram,
    #[error("loading program {RELAY_PROGRAM_NAME}: {0}")]
    Verify(#[source] ProgramError),
    #[error(
        "attaching program {RELAY_PROGRAM_NAME} to map {}: {source}",
        map_name::RELAY_SOCKS
    )]
    Attach {
        #[source]
        source: ProgramError,
    },
    #[error("relay_max_connections {0} is too large for the relay maps")]
    TooLarge(u32),
}

/// The loaded relay: its maps, its program, and how many pairs it holds.
pub(crate) struct KernelRelay {
    /// Owns the program and its attachment to the sockhash.
    _ebpf: Ebpf,
    socks: Mutex<SockHash<MapData, u64>>,
    peers: Mutex<HashMap<MapData, u64, RelayPeer>>,
    credits: Mutex<HashMap<MapData, u64, u64>>,
    capacity: u32,
    pairs: AtomicU32,
}

/// A pair's place in the relay, taken with [`KernelRelay::reserve`]; dropping it frees it.
pub(crate) struct PairSlot<'a> {
    relay: &'a KernelRelay,
}

impl Drop for PairSlot<'_> {
    fn drop(&mut self) {
        self.relay.pairs.fetch_sub(1, Ordering::AcqRel);
    }
}

impl KernelRelay {
    /// Loads the program and creates its maps, sized for `max_pairs` relayed connections.
    pub(crate) fn load(max_pairs: u32) -> Result<Self, RelayError> {
        let sockets = max_pairs
            .checked_mul(2)
            .ok_or(RelayError::TooLarge(max_pairs))?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map_name::RELAY_SOCKS, sockets)
            .map_max_entries(map_name::RELAY_PEERS, sockets)
            .map_max_entries(map_name::RELAY_CREDIT, sockets);
        // The XDP program's maps are in the same object; this process only relays.
        xdp_maps_at_their_smallest(&mut loader);
        let mut ebpf = loader.load(OBJECT).map_err(RelayError::Load)?;
        for name in map_name::ALL
            .into_iter()
            .chain([map_name::CONFIG_GLOBAL, map_name::STATS_GLOBAL])
        {
            drop(ebpf.take_map(name));
        }
        let socks: SockHash<MapData, u64> = take_map(&mut ebpf, map_name::RELAY_SOCKS)?;
        let peers: HashMap<MapData, u64, RelayPeer> = take_map(&mut ebpf, map_name::RELAY_PEERS)?;
        let credits: HashMap<MapData, u64, u64> = take_map(&mut ebpf, map_name::RELAY_CREDIT)?;
        let program: &mut SkSkb = ebpf
            .program_mut(RELAY_PROGRAM_NAME)
            .ok_or(RelayError::NoProgram)?
            .try_into()
            .map_err(RelayError::Verify)?;
        program.load().map_err(RelayError::Verify)?;
        program
            .attach(socks.fd())
            .map_err(|source| RelayError::Attach { source })?;
        Ok(Self {
            _ebpf: ebpf,
            socks: Mutex::new(socks),
            peers: Mutex::new(peers),
            credits: Mutex::new(credits),
            capacity: max_pairs,
            pairs: AtomicU32::new(0),
        })
    }

    /// Takes a place for one pair, or `None` when every place is taken.
    pub(crate) fn reserve(&self) -> Option<PairSlot<'_>> {
        self.pairs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| PairSlot { relay: self })
    }

    /// Puts both sockets of a pair in the maps, each with `credit` bytes to redirect: the
    /// credits and peer entries first, so the program never sees a socket of the pair without
    /// knowing where its data goes and how much may go. On failure nothing of the pair is
    /// left in the maps.
    pub(crate) fn insert_pair(
        &self,
        _slot: &PairSlot<'_>,
        a: (u64, &impl AsRawFd),
        b: (u64, &impl AsRawFd),
        credit: u64,
    ) -> Result<(), RelayError> {
        let result = self.try_insert_pair(a, b, credit);
        if result.is_err() {
            self.remove_pair(a.0, b.0);
        }
        result
    }

    fn try_insert_pair(
        &self,
        (a, a_fd): (u64, &impl AsRawFd),
        (b, b_fd): (u64, &impl AsRawFd),
        credit: u64,
    ) -> Result<(), RelayError> {
        self.set_credit(a, credit)?;
        self.set_credit(b, credit)?;
        let peer_error = |source| MapFailure {
            name: map_name::RELAY_PEERS,
            source,
        };
        let sock_error = |source| MapFailure {
            name: map_name::RELAY_SOCKS,
            source,
        };
        {
            let mut peers = lock(&self.peers);
            let entry = |peer| RelayPeer {
                peer,
                redirected: 0,
                stopped: 0,
            };
            peers.insert(a, entry(b), 0).map_err(peer_error)?;
            peers.insert(b, entry(a), 0).map_err(peer_error)?;
        }
        let mut socks = lock(&self.socks);
        socks.insert(a, a_fd.as_raw_fd(), 0).map_err(sock_error)?;
        socks.insert(b, b_fd.as_raw_fd(), 0).map_err(sock_error)?;
        Ok(())
    }

    /// Takes both sockets of a pair out of the maps (those that are there).
    pub(crate) fn remove_pair(&self, a: u64, b: u64) {
        {
            let mut socks = lock(&self.socks);
            let _ = socks.remove(&a);
            let _ = socks.remove(&b);
        }
        self.forget_pair(a, b);
    }

    /// Takes the peer and credit entries of a pair whose sockets are closed out of the maps:
    /// closing a socket takes it out of the sockhash, so only those are left.
    pub(crate) fn forget_pair(&self, a: u64, b: u64) {
        {
            let mut peers = lock(&self.peers);
            let _ = peers.remove(&a);
            let _ = peers.remove(&b);
        }
        let mut credits = lock(&self.credits);
        let _ = credits.remove(&a);
        let _ = credits.remove(&b);
    }

    /// Lets the program redirect `credit` bytes in all from the socket with `cookie`.
    pub(crate) fn set_credit(&self, cookie: u64, credit: u64) -> Result<(), RelayError> {
        lock(&self.credits)
            .insert(cookie, credit, 0)
            .map_err(|source| {
                MapFailure {
                    name: map_name::RELAY_CREDIT,
                    source,
                }
                .into()
            })
    }

    /// The peer entry of the socket with `cookie`: what the program redirected from it, and
    /// whether it stopped.
    pub(crate) fn peer(&self, cookie: u64) -> Option<RelayPeer> {
        lock(&self.peers).get(&cookie, 0).ok()
    }

    /// The bytes the program has redirected from the socket with `cookie` to its peer.
    pub(crate) fn redirected(&self, cookie: u64) -> u64 {
        self.peer(cookie).map_or(0, |entry| entry.redirected)
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, RelayError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(RelayError::NoMap(name))?;
    Ok(M::try_from(map).map_err(|source| MapFailure { name, source })?)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
