//! Types shared by the smtp-screen XDP program (`screen-ebpf`) and its daemon (`screen-user`).
//!
//! Everything the kernel and userspace must agree on lives here and nowhere else: map names,
//! key and value layouts, counter indices and the limits that size the maps. Every struct is
//! `#[repr(C)]` with explicit padding fields, so that a key built on the stack has no
//! uninitialised bytes (the verifier rejects those) and so that `bpftool map dump` prints the
//! same field names that the code uses. Addresses are kept in network byte order.
#![no_std]

pub mod map_layout;

/// Names of the BPF maps, at most 15 bytes each (`BPF_OBJ_NAME_LEN`), which are also the file
/// names of their pins under the pin directory. The program's global data (its configuration
/// and its counters) lives in [`CONFIG`](map_name::CONFIG) and [`STATS`](map_name::STATS):
/// the loader backs each object section with the pinned BTF map.
pub mod map_name {
    /// Static allow list, IPv4, slot 0 and 1 (LPM trie).
    pub const ALLOW_V4: [&str; 2] = ["scr_allow_v4_0", "scr_allow_v4_1"];
    /// Static allow list, IPv6, slot 0 and 1 (LPM trie).
    pub const ALLOW_V6: [&str; 2] = ["scr_allow_v6_0", "scr_allow_v6_1"];
    /// Static deny list, IPv4, slot 0 and 1 (LPM trie).
    pub const DENY_V4: [&str; 2] = ["scr_deny_v4_0", "scr_deny_v4_1"];
    /// Static deny list, IPv6, slot 0 and 1 (LPM trie).
    pub const DENY_V6: [&str; 2] = ["scr_deny_v6_0", "scr_deny_v6_1"];
    /// Dynamic deny entries with an expiry, IPv4 /32 (LRU hash).
    pub const DYN_DENY_V4: &str = "scr_dyn_v4";
    /// Dynamic deny entries with an expiry, IPv6 prefix (LRU hash).
    pub const DYN_DENY_V6: &str = "scr_dyn_v6";
    /// The single [`ScreenConfig`](super::ScreenConfig) record (array of one). The program
    /// reads it as its global data [`CONFIG_GLOBAL`], which the loader backs with this map.
    pub const CONFIG: &str = "scr_config";
    /// The counters: one [`StatsRecord`](super::StatsRecord) holding a slot per CPU (array
    /// of one). The program writes it as its global data [`STATS_GLOBAL`], which the loader
    /// backs with this map, so `bpftool` shows what the program counts.
    pub const STATS: &str = "scr_stats";
    /// The object section of the program's counters (`.data`, not `.bss`: libbpf, and with it
    /// `bpftool prog load`, takes no section named `.bss.*`).
    pub const STATS_GLOBAL: &str = ".data.stats";
    /// The symbol of [`STATS_GLOBAL`]'s record in the object.
    pub const STATS_SYMBOL: &str = "SCREEN_STATS";
    /// The object section of the program's configuration record, which it reaches through a
    /// direct address instead of a map lookup.
    pub const CONFIG_GLOBAL: &str = ".data.config";
    /// The symbol of [`CONFIG_GLOBAL`]'s record in the object.
    pub const CONFIG_SYMBOL: &str = "SCREEN_CONFIG";
    /// Where the previous layout pinned the section [`CONFIG_GLOBAL`], without BTF, beside a
    /// copy in [`CONFIG`]. Loading takes the record from it; changes are written to it too
    /// until every interface runs the new program, and then it is removed.
    pub const OLD_CONFIG_GLOBAL_PIN: &str = "scr_config_live";
    /// The IPv4 direct table of both static lists, slot 0 and 1 (mmap-able array of `u64`
    /// words, see [`v4_table`](super::v4_table)).
    pub const TABLE_V4: [&str; 2] = ["scr_table_v4_0", "scr_table_v4_1"];

    /// The hand-off relay's sockets, by socket cookie (sockhash; not pinned: the relayed
    /// connections belong to the running daemon).
    pub const RELAY_SOCKS: &str = "scr_relay_socks";
    /// Each relayed socket's peer and byte count, by socket cookie ([`RelayPeer`](super::RelayPeer)).
    pub const RELAY_PEERS: &str = "scr_relay_peers";
    /// How many bytes in all the program may redirect from each relayed socket, by socket
    /// cookie (`u64`): the daemon keeps it at what the peer took plus a margin.
    pub const RELAY_CREDIT: &str = "scr_relay_cred";

    /// Every pinned map of the XDP program, in a stable order.
    pub const ALL: [&str; 14] = [
        ALLOW_V4[0],
        ALLOW_V4[1],
        ALLOW_V6[0],
        ALLOW_V6[1],
        DENY_V4[0],
        DENY_V4[1],
        DENY_V6[0],
        DENY_V6[1],
        DYN_DENY_V4,
        DYN_DENY_V6,
        CONFIG,
        STATS,
        TABLE_V4[0],
        TABLE_V4[1],
    ];
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "smtp_screen";

/// Name of the hand-off relay's stream verdict program in the object file.
pub const RELAY_PROGRAM_NAME: &str = "smtp_screen_relay";

/// The relay maps' capacity as built into the object; the daemon sets the real one at load.
pub const RELAY_DEFAULT_MAX_SOCKETS: u32 = 2048;

/// Capacity of each static LPM trie (per family and slot). Spamhaus DROP plus EDROP is under
/// 2,000 prefixes; operator lists of 100,000 prefixes must still fit.
pub const STATIC_MAX_ENTRIES: u32 = 262_144;
/// Capacity of the IPv4 dynamic deny map. LRU: when full, the least recently used entry goes.
pub const DYN_V4_MAX_ENTRIES: u32 = 1_048_576;
/// Capacity of the IPv6 dynamic deny map.
pub const DYN_V6_MAX_ENTRIES: u32 = 262_144;
/// How many destination ports the program protects at most.
pub const MAX_PORTS: usize = 8;
/// How many IPv6 extension headers the parser walks before it gives up and passes the frame.
pub const IPV6_EXT_MAX: usize = 6;
/// How many VLAN tags (802.1Q or 802.1ad) the parser skips.
pub const VLAN_MAX: usize = 2;

/// The IPv4 direct table: what the static lists say about each /24, two bits per /24, so
/// that the program decides an IPv4 SYN with one array lookup where the LPM tries take one
/// walk per list.
///
/// Bucket `b` is the first 24 bits of the source address; word `b / 32` of the table holds
/// its state at bits `2 * (b % 32)` and `2 * (b % 32) + 1`. The daemon builds the table from
/// the tries, which stay the lists' source of truth; the program falls back to the tries only
/// for a bucket in state [`ASK_TRIES`](v4_table::ASK_TRIES).
pub mod v4_table {
    /// No static prefix covers the /24: the dynamic map decides.
    pub const UNLISTED: u64 = 0;
    /// A static deny prefix of /24 or shorter covers the /24 and no allow prefix does.
    pub const DENY: u64 = 1;
    /// A static allow prefix of /24 or shorter covers the /24 (allow beats static deny).
    pub const ALLOW: u64 = 2;
    /// A prefix longer than /24, in either list, lies inside the /24: its addresses may differ,
    /// so the LPM tries decide.
    pub const ASK_TRIES: u64 = 3;
    /// Bits of one bucket's state.
    pub const BUCKET_BITS: u32 = 2;
    /// Buckets in one `u64` word.
    pub const BUCKETS_PER_WORD: u32 = 64 / BUCKET_BITS;
    /// One bucket per /24.
    pub const BUCKETS: u32 = 1 << 24;
    /// Words of the table: 524,288, 4 MiB.
    pub const WORDS: u32 = BUCKETS / BUCKETS_PER_WORD;
    /// `BPF_F_MMAPABLE`: the daemon writes the table through a shared mapping, one memory
    /// store per changed word instead of one syscall.
    pub const MAP_FLAGS: u32 = 1 << 10;

    /// The bucket of an address (network byte order): its /24.
    #[inline(always)]
    pub const fn bucket(addr: [u8; 4]) -> u32 {
        u32::from_be_bytes(addr) >> 8
    }

    /// The word that holds `bucket`.
    #[inline(always)]
    pub const fn word_index(bucket: u32) -> u32 {
        bucket / BUCKETS_PER_WORD
    }

    /// Where `bucket`'s state starts in its word.
    #[inline(always)]
    pub const fn shift(bucket: u32) -> u32 {
        (bucket % BUCKETS_PER_WORD) * BUCKET_BITS
    }

    /// The state of `bucket` in its word.
    #[inline(always)]
    pub const fn state(word: u64, bucket: u32) -> u64 {
        (word >> shift(bucket)) & ASK_TRIES
    }
}

/// Key of the static LPM tries for IPv4: `prefix_len` in bits, then the address.
///
/// Same layout as `aya::maps::lpm_trie::Key<[u8; 4]>`, which is what both sides use.
pub type LpmKeyV4 = [u8; 4];
/// Key data of the static LPM tries for IPv6.
pub type LpmKeyV6 = [u8; 16];

/// Value of a static list entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixEntry {
    /// Where the entry came from ([`Origin`]).
    pub origin: u32,
}

/// Key of the IPv4 dynamic deny map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DynKeyV4 {
    /// The client address, network byte order.
    pub addr: [u8; 4],
}

/// Key of the IPv6 dynamic deny map: the client address masked to
/// [`ScreenConfig::v6_prefix_len`] bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DynKeyV6 {
    /// The masked client prefix, network byte order.
    pub addr: [u8; 16],
}

/// Value of a dynamic deny entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEntry {
    /// Expiry on the kernel's monotonic clock (`CLOCK_MONOTONIC`), in nanoseconds. The program
    /// compares it with `bpf_ktime_get_coarse_ns` and ignores the entry once this time has
    /// passed (at most one scheduler tick late); the daemon sweeps it.
    pub expires_ns: u64,
    /// Why the address is denied ([`Origin`]).
    pub origin: u32,
    /// How many failures led to the entry (1 for an operator's entry).
    pub failures: u32,
}

/// Value of the relay's peer map, keyed by a relayed socket's cookie: where its data goes and
/// how much has gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayPeer {
    /// The cookie of the socket this one's data is redirected to.
    pub peer: u64,
    /// Bytes the program redirected from this socket to the peer. The daemon compares it with
    /// what the peer socket has taken before it shuts the peer's write side, so that no byte
    /// still queued for the peer is cut off.
    pub redirected: u64,
    /// Not 0 once the program stopped redirecting this socket's data, which it does for good
    /// when the data would pass the socket's credit: the peer stopped taking it. Written by
    /// the program alone.
    pub stopped: u64,
}

/// Where a list entry came from. Stored as `u32` in the maps.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Added by the operator (`smtp-screen deny add`, `allow add`).
    Operator = 1,
    /// Loaded from a list file (`deny load`, `allow load`).
    ListFile = 2,
    /// Added by the daemon after repeated test failures.
    Policy = 3,
}

impl Origin {
    /// Decodes a stored value; unknown values (a newer writer) read as `None`.
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Operator),
            2 => Some(Self::ListFile),
            3 => Some(Self::Policy),
            _ => None,
        }
    }

    /// The word shown by the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::ListFile => "list",
            Self::Policy => "policy",
        }
    }
}

/// What the program does with a denied SYN.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyAction {
    /// `XDP_DROP`: the client sees a timeout.
    Drop = 0,
    /// Answer with a TCP RST+ACK through `XDP_TX`: the client sees "connection refused".
    Rst = 1,
}

/// The program's configuration: element 0 of the [`map_name::CONFIG`] array, which the program
/// reads as its global data [`map_name::CONFIG_GLOBAL`].
///
/// An all-zero record ([`ScreenConfig::UNCONFIGURED`], before the daemon writes one) protects
/// no port, so the program passes everything until it is configured.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScreenConfig {
    /// Protected destination ports in host byte order; 0 marks an unused slot.
    pub ports: [u16; MAX_PORTS],
    /// [`DenyAction`] as `u32`.
    pub action: u32,
    /// Prefix length (0..=128) that IPv6 dynamic deny keys are masked to.
    pub v6_prefix_len: u32,
    /// Which of the two static allow slots (0 or 1) is live.
    pub allow_slot: u32,
    /// Which of the two static deny slots (0 or 1) is live.
    pub deny_slot: u32,
    /// Which of the two IPv4 direct tables (0 or 1) is live. Every change of a static list
    /// flips it in the same write as the list's slot, so the table and the tries agree (a
    /// frame that meets the write halfway may see the new one and the previous one, both
    /// complete).
    pub v4_table_slot: u32,
}

impl ScreenConfig {
    /// Default IPv6 dynamic deny prefix: one customer /64.
    pub const DEFAULT_V6_PREFIX_LEN: u32 = 64;
    /// The port postscreen protects.
    pub const SMTP_PORT: u16 = 25;

    /// The record before the daemon writes one: no port is protected, so the program passes
    /// every frame.
    pub const UNCONFIGURED: Self = Self {
        ports: [0; MAX_PORTS],
        action: 0,
        v6_prefix_len: 0,
        allow_slot: 0,
        deny_slot: 0,
        v4_table_slot: 0,
    };

    /// Port 25, drop, IPv6 /64, slot 0 for both lists and the table.
    pub const fn new() -> Self {
        let mut ports = [0; MAX_PORTS];
        ports[0] = Self::SMTP_PORT;
        Self {
            ports,
            action: DenyAction::Drop as u32,
            v6_prefix_len: Self::DEFAULT_V6_PREFIX_LEN,
            allow_slot: 0,
            deny_slot: 0,
            v4_table_slot: 0,
        }
    }

    /// Whether `port` (host byte order) is protected.
    #[inline(always)]
    pub fn protects(&self, port: u16) -> bool {
        // 0 marks an unused slot, never a protected port.
        if port == 0 {
            return false;
        }
        // Unrolled by the compiler: MAX_PORTS is a constant and small.
        let mut i = 0;
        while i < MAX_PORTS {
            if self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

impl Default for ScreenConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The program's counters on one CPU (a slot of [`StatsRecord`]). Named fields, so that
/// `bpftool map dump` shows each counter by name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub frames: u64,
    pub syn_screened: u64,
    pub passed: u64,
    pub passed_allow: u64,
    pub drop_static: u64,
    pub drop_dynamic: u64,
    pub rst_static: u64,
    pub rst_dynamic: u64,
    pub expired: u64,
    pub parse_failed: u64,
    pub fragments: u64,
}

impl Counters {
    /// Every counter zero.
    pub const ZERO: Self = Self {
        frames: 0,
        syn_screened: 0,
        passed: 0,
        passed_allow: 0,
        drop_static: 0,
        drop_dynamic: 0,
        rst_static: 0,
        rst_dynamic: 0,
        expired: 0,
        parse_failed: 0,
        fragments: 0,
    };

    /// The value of one counter.
    pub const fn get(&self, stat: Stat) -> u64 {
        match stat {
            Stat::Frames => self.frames,
            Stat::SynScreened => self.syn_screened,
            Stat::Passed => self.passed,
            Stat::PassedAllow => self.passed_allow,
            Stat::DropStatic => self.drop_static,
            Stat::DropDynamic => self.drop_dynamic,
            Stat::RstStatic => self.rst_static,
            Stat::RstDynamic => self.rst_dynamic,
            Stat::Expired => self.expired,
            Stat::ParseFailed => self.parse_failed,
            Stat::Fragments => self.fragments,
        }
    }
}

/// CPUs the counters have a slot for. The loader refuses a machine with more possible CPUs.
pub const STATS_MAX_CPUS: usize = 1024;

/// One CPU's [`Counters`], alone in its 128 bytes: no two CPUs write the same cache line, nor
/// the same pair of lines that the adjacent-line prefetcher fetches together.
#[repr(C, align(128))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuCounters {
    pub counters: Counters,
    pub _pad: [u64; 5],
}

/// Every counter of the program, a slot per CPU, indexed by the CPU's number. The program finds
/// its slot with the CPU number (a helper the verifier inlines from Linux 6.10 on x86-64) in its
/// global data, whose address is in its instructions: a per-CPU array lookup passes its key
/// through the stack and costs a tenth of the deny path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsRecord {
    pub cpus: [CpuCounters; STATS_MAX_CPUS],
}

impl StatsRecord {
    /// Every counter zero.
    pub const ZERO: Self = Self {
        cpus: [CpuCounters {
            counters: Counters::ZERO,
            _pad: [0; 5],
        }; STATS_MAX_CPUS],
    };

    /// The counters summed over every CPU, indexed by [`Stat`].
    pub fn totals(&self) -> [u64; Stat::COUNT as usize] {
        let mut out = [0; Stat::COUNT as usize];
        for cpu in &self.cpus {
            for stat in Stat::ALL {
                out[stat as usize] += cpu.counters.get(stat);
            }
        }
        out
    }
}

/// One of the program's [`Counters`]; its value is its place in [`Stat::ALL`] and in the record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Every frame the program saw.
    Frames = 0,
    /// TCP SYNs without ACK to a protected port: the frames that were screened.
    SynScreened = 1,
    /// Screened SYNs passed because no list matched.
    Passed = 2,
    /// Screened SYNs passed because the static allow list matched.
    PassedAllow = 3,
    /// Screened SYNs dropped by the static deny list.
    DropStatic = 4,
    /// Screened SYNs dropped by a dynamic deny entry.
    DropDynamic = 5,
    /// Screened SYNs answered with RST by the static deny list.
    RstStatic = 6,
    /// Screened SYNs answered with RST by a dynamic deny entry.
    RstDynamic = 7,
    /// Screened SYNs whose dynamic deny entry had expired (passed).
    Expired = 8,
    /// Frames passed because a header was truncated or invalid.
    ParseFailed = 9,
    /// IPv4 or IPv6 fragments without a TCP header (passed).
    Fragments = 10,
}

impl Stat {
    /// Number of counters.
    pub const COUNT: u32 = 11;

    /// Every counter, in index order.
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::Frames,
        Stat::SynScreened,
        Stat::Passed,
        Stat::PassedAllow,
        Stat::DropStatic,
        Stat::DropDynamic,
        Stat::RstStatic,
        Stat::RstDynamic,
        Stat::Expired,
        Stat::ParseFailed,
        Stat::Fragments,
    ];

    /// Name used by `smtp-screen status` and the metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Frames => "frames",
            Stat::SynScreened => "syn_screened",
            Stat::Passed => "passed",
            Stat::PassedAllow => "passed_allow",
            Stat::DropStatic => "drop_static",
            Stat::DropDynamic => "drop_dynamic",
            Stat::RstStatic => "rst_static",
            Stat::RstDynamic => "rst_dynamic",
            Stat::Expired => "expired",
            Stat::ParseFailed => "parse_failed",
            Stat::Fragments => "fragments",
        }
    }
}

/// Masks a 16-byte IPv6 address (network byte order) to its first `prefix_len` bits.
///
/// Shared so that the program and the daemon build the same IPv6 dynamic deny key.
#[inline(always)]
pub fn mask_v6(addr: [u8; 16], prefix_len: u32) -> [u8; 16] {
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let (hi, lo) = if prefix_len >= 128 {
        (hi, lo)
    } else if prefix_len >= 64 {
        let keep = prefix_len - 64;
        let lo = if keep == 0 {
            0
        } else {
            lo & (u64::MAX << (64 - keep))
        };
        (hi, lo)
    } else if prefix_len == 0 {
        (0, 0)
    } else {
        (hi & (u64::MAX << (64 - prefix_len)), 0)
    };
    let hi = hi.to_be_bytes();
    let lo = lo.to_be_bytes();
    [
        hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7], lo[0], lo[1], lo[2], lo[3], lo[4],
        lo[5], lo[6], lo[7],
    ]
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, has no padding and is valid for any bit pattern.
    unsafe impl aya::Pod for super::PrefixEntry {}
    unsafe impl aya::Pod for super::DynKeyV4 {}
    unsafe impl aya::Pod for super::DynKeyV6 {}
    unsafe impl aya::Pod for super::DenyEntry {}
    unsafe impl aya::Pod for super::ScreenConfig {}
    unsafe impl aya::Pod for super::RelayPeer {}
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above; the explicit `_pad` fills each slot to its 128-byte alignment.
    unsafe impl aya::Pod for super::StatsRecord {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    // The kernel sees these sizes as the maps' key_size and value_size; a change here must be a
    // deliberate change of the pinned-map schema.
    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<PrefixEntry>(), 4);
        assert_eq!(size_of::<DynKeyV4>(), 4);
        assert_eq!(size_of::<DynKeyV6>(), 16);
        assert_eq!(size_of::<DenyEntry>(), 16);
        assert_eq!(offset_of!(DenyEntry, expires_ns), 0);
        assert_eq!(offset_of!(DenyEntry, origin), 8);
        assert_eq!(offset_of!(DenyEntry, failures), 12);
        assert_eq!(size_of::<ScreenConfig>(), 2 * MAX_PORTS + 20);
        assert_eq!(offset_of!(ScreenConfig, action), 2 * MAX_PORTS);
        assert_eq!(offset_of!(ScreenConfig, v6_prefix_len), 2 * MAX_PORTS + 4);
        assert_eq!(offset_of!(ScreenConfig, allow_slot), 2 * MAX_PORTS + 8);
        assert_eq!(offset_of!(ScreenConfig, deny_slot), 2 * MAX_PORTS + 12);
        assert_eq!(offset_of!(ScreenConfig, v4_table_slot), 2 * MAX_PORTS + 16);
        assert_eq!(size_of::<Counters>(), 8 * Stat::COUNT as usize);
        // One slot per CPU, 128 bytes each with no implicit padding, and the whole record
        // within the kernel's largest array value (KMALLOC_MAX_SIZE, 4 MiB).
        assert_eq!(size_of::<CpuCounters>(), 128);
        assert_eq!(offset_of!(CpuCounters, _pad), size_of::<Counters>());
        assert_eq!(size_of::<StatsRecord>(), 128 * STATS_MAX_CPUS);
        assert!(size_of::<StatsRecord>() <= 4 << 20);
        assert!(align_of::<DenyEntry>() <= 8);
        assert_eq!(size_of::<RelayPeer>(), 24);
        assert_eq!(offset_of!(RelayPeer, redirected), 8);
        assert_eq!(offset_of!(RelayPeer, stopped), 16);
    }

    #[test]
    fn stats_totals_sum_every_cpu_slot_per_counter() {
        let mut record = StatsRecord::ZERO;
        record.cpus[0].counters.frames = 3;
        record.cpus[0].counters.drop_static = 1;
        record.cpus[STATS_MAX_CPUS - 1].counters.frames = 4;
        record.cpus[STATS_MAX_CPUS - 1].counters.fragments = 2;
        let totals = record.totals();
        assert_eq!(totals[Stat::Frames as usize], 7);
        assert_eq!(totals[Stat::DropStatic as usize], 1);
        assert_eq!(totals[Stat::Fragments as usize], 2);
        assert_eq!(totals.iter().sum::<u64>(), 10);
    }

    #[test]
    fn map_names_fit_the_kernel() {
        for name in map_name::ALL {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
        for (i, a) in map_name::ALL.iter().enumerate() {
            for b in &map_name::ALL[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn stats_are_indexed_in_order() {
        for (i, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(*stat as u32, i as u32, "{}", stat.name());
        }
    }

    // The record's fields are in `Stat` order, so a counter's field and its index agree.
    #[test]
    fn counters_are_laid_out_in_stat_order() {
        let mut counters = Counters::default();
        let words = &mut counters as *mut Counters as *mut u64;
        for stat in Stat::ALL {
            // SAFETY: `Counters` is `repr(C)` and made of `Stat::COUNT` u64 fields.
            unsafe { *words.add(stat as usize) = 100 + stat as u64 };
        }
        for stat in Stat::ALL {
            assert_eq!(counters.get(stat), 100 + stat as u64, "{}", stat.name());
        }
    }

    #[test]
    fn v4_table_buckets_are_the_first_24_bits() {
        assert_eq!(v4_table::WORDS, 524_288);
        assert_eq!(v4_table::WORDS as usize * 8, 4 << 20);
        assert_eq!(v4_table::bucket([0, 0, 0, 255]), 0);
        assert_eq!(v4_table::bucket([0, 0, 1, 0]), 1);
        assert_eq!(v4_table::bucket([192, 0, 2, 77]), 0xc0_0002);
        assert_eq!(
            v4_table::bucket([255, 255, 255, 255]),
            v4_table::BUCKETS - 1
        );
        // 192.0.2.0/24: bucket 0xc00002, word 0x60000, bits 4 and 5.
        let bucket = v4_table::bucket([192, 0, 2, 1]);
        assert_eq!(v4_table::word_index(bucket), 0x6_0000);
        assert_eq!(v4_table::shift(bucket), 4);
        assert_eq!(
            v4_table::word_index(v4_table::BUCKETS - 1),
            v4_table::WORDS - 1
        );
        assert_eq!(v4_table::shift(v4_table::BUCKETS - 1), 62);
        let word = v4_table::DENY << 4 | v4_table::ASK_TRIES << 62;
        assert_eq!(v4_table::state(word, bucket), v4_table::DENY);
        assert_eq!(v4_table::state(word, bucket + 1), v4_table::UNLISTED);
        assert_eq!(
            v4_table::state(word, v4_table::BUCKETS - 1),
            v4_table::ASK_TRIES
        );
    }

    #[test]
    fn default_config_protects_smtp_only() {
        let config = ScreenConfig::new();
        assert!(config.protects(25));
        assert!(!config.protects(0));
        assert!(!config.protects(587));
        assert_eq!(config.action, DenyAction::Drop as u32);
    }

    #[test]
    fn origin_round_trips() {
        for origin in [Origin::Operator, Origin::ListFile, Origin::Policy] {
            assert_eq!(Origin::from_u32(origin as u32), Some(origin));
        }
        assert_eq!(Origin::from_u32(0), None);
    }

    #[test]
    fn mask_v6_keeps_prefix_bits() {
        let addr = [0xff; 16];
        assert_eq!(mask_v6(addr, 128), addr);
        assert_eq!(mask_v6(addr, 0), [0; 16]);
        let m64 = mask_v6(addr, 64);
        assert_eq!(&m64[..8], &[0xff; 8]);
        assert_eq!(&m64[8..], &[0; 8]);
        let m48 = mask_v6(addr, 48);
        assert_eq!(&m48[..6], &[0xff; 6]);
        assert_eq!(&m48[6..], &[0; 10]);
        let m65 = mask_v6(addr, 65);
        assert_eq!(m65[8], 0x80);
        assert_eq!(&m65[9..], &[0; 7]);
        let m127 = mask_v6(addr, 127);
        assert_eq!(m127[15], 0xfe);
        let m1 = mask_v6(addr, 1);
        assert_eq!(m1[0], 0x80);
        assert_eq!(&m1[1..], &[0; 15]);
    }
}
