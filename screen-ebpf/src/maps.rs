//! Every map of the object, under the names in `screen_common::map_name`: the static lists'
//! tries and IPv4 direct tables, the dynamic deny entries, the configuration and the counters
//! (global data, each backed by a pinned BTF map), and the hand-off relay's two maps.
//!
//! The screen (`screen`) and the relay (`relay`) read and write them; nothing here decides.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, SockHash},
    macros::btf_map,
};
use screen_common::{
    DYN_V4_MAX_ENTRIES, DYN_V6_MAX_ENTRIES, DenyEntry, DynKeyV4, DynKeyV6, PrefixEntry,
    RELAY_DEFAULT_MAX_SOCKETS, RelayPeer, STATIC_MAX_ENTRIES, ScreenConfig, StatsRecord, v4_table,
};

const STATIC_MAX: usize = STATIC_MAX_ENTRIES as usize;

/// A static list's trie for addresses of `N` bytes.
pub type StaticTrie<const N: usize> = LpmTrie<[u8; N], PrefixEntry, STATIC_MAX>;

// Two slots per static list: `deny load` fills the idle slot and then flips
// `ScreenConfig::deny_slot`, so a whole list is replaced in one step.
#[btf_map(name = "scr_allow_v4_0")]
pub static ALLOW_V4_0: LpmTrie<[u8; 4], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_allow_v4_1")]
pub static ALLOW_V4_1: LpmTrie<[u8; 4], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_allow_v6_0")]
pub static ALLOW_V6_0: LpmTrie<[u8; 16], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_allow_v6_1")]
pub static ALLOW_V6_1: LpmTrie<[u8; 16], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_deny_v4_0")]
pub static DENY_V4_0: LpmTrie<[u8; 4], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_deny_v4_1")]
pub static DENY_V4_1: LpmTrie<[u8; 4], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_deny_v6_0")]
pub static DENY_V6_0: LpmTrie<[u8; 16], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_deny_v6_1")]
pub static DENY_V6_1: LpmTrie<[u8; 16], PrefixEntry, STATIC_MAX> = LpmTrie::new();

#[btf_map(name = "scr_dyn_v4")]
pub static DYN_V4: LruHashMap<DynKeyV4, DenyEntry, { DYN_V4_MAX_ENTRIES as usize }> =
    LruHashMap::new();
#[btf_map(name = "scr_dyn_v6")]
pub static DYN_V6: LruHashMap<DynKeyV6, DenyEntry, { DYN_V6_MAX_ENTRIES as usize }> =
    LruHashMap::new();

/// The configuration record with its BTF, for `bpftool`. The loader backs [`SCREEN_CONFIG`]
/// with this map, pinned, so the program reads the record the daemon writes.
#[btf_map(name = "scr_config")]
static CONFIG: Array<ScreenConfig, 1> = Array::new();

/// The configuration (`map_name::CONFIG_GLOBAL`): global data, whose address the verifier
/// puts straight into the instructions. An array lookup, though inlined, passes its key
/// through the stack; on the deny path that was a tenth of the program's cost.
///
/// `no_mangle` does two jobs: the loader finds the record by this name to start it from the
/// pinned configuration, and an exported symbol is one the linker cannot internalize. An
/// internal static the program never writes would be folded into its initial value, and the
/// program would protect nothing whatever userspace writes.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.config")]
pub static mut SCREEN_CONFIG: ScreenConfig = ScreenConfig::UNCONFIGURED;

/// The counters' map as `bpftool` shows it, with BTF. The loader backs [`SCREEN_STATS`] with
/// this map, pinned, so the program writes the record `bpftool` reads.
#[btf_map(name = "scr_stats")]
static STATS: Array<StatsRecord, 1> = Array::new();

/// The counters (`map_name::STATS_GLOBAL`): global data, a slot per CPU, like
/// [`SCREEN_CONFIG`] reached through an address in the instructions. `no_mangle` for the same
/// two reasons.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.stats")]
pub static mut SCREEN_STATS: StatsRecord = StatsRecord::ZERO;

// The IPv4 direct table of both static lists, two slots like the lists: a change builds the
// idle one and flips `ScreenConfig::v4_table_slot` in the same write as the list's slot. Array
// lookups are inlined by the verifier: one load and a bounds check.
const TABLE_WORDS: usize = v4_table::WORDS as usize;
const TABLE_FLAGS: usize = v4_table::MAP_FLAGS as usize;
#[btf_map(name = "scr_table_v4_0")]
pub static TABLE_V4_0: Array<u64, TABLE_WORDS, TABLE_FLAGS> = Array::new();
#[btf_map(name = "scr_table_v4_1")]
pub static TABLE_V4_1: Array<u64, TABLE_WORDS, TABLE_FLAGS> = Array::new();

// The hand-off relay's sockets, their peers and their credits, all keyed by socket cookie.
const MAX_SOCKETS: usize = RELAY_DEFAULT_MAX_SOCKETS as usize;
#[btf_map(name = "scr_relay_socks")]
pub static RELAY_SOCKS: SockHash<u64, MAX_SOCKETS> = SockHash::new();
#[btf_map(name = "scr_relay_peers")]
pub static RELAY_PEERS: HashMap<u64, RelayPeer, MAX_SOCKETS> = HashMap::new();
#[btf_map(name = "scr_relay_cred")]
pub static RELAY_CREDIT: HashMap<u64, u64, MAX_SOCKETS> = HashMap::new();
