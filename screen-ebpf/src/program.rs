//! Maps and the verdict: parse to the TCP header, screen SYNs to protected ports.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    btf_maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use screen_common::{
    Counters, DYN_V4_MAX_ENTRIES, DYN_V6_MAX_ENTRIES, DenyAction, DenyEntry, DynKeyV4, DynKeyV6,
    IPV6_EXT_MAX, PrefixEntry, STATIC_MAX_ENTRIES, ScreenConfig, VLAN_MAX, mask_v6, v4_table,
};

use crate::{headers::*, rst};

const STATIC_MAX: usize = STATIC_MAX_ENTRIES as usize;

// Two slots per static list: `deny load` fills the idle slot and then flips
// `ScreenConfig::deny_slot`, so a whole list is replaced in one step.
#[btf_map(name = "scr_allow_v4_0")]
static ALLOW_V4_0: LpmTrie<[u8; 4], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_allow_v4_1")]
static ALLOW_V4_1: LpmTrie<[u8; 4], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_allow_v6_0")]
static ALLOW_V6_0: LpmTrie<[u8; 16], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_allow_v6_1")]
static ALLOW_V6_1: LpmTrie<[u8; 16], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_deny_v4_0")]
static DENY_V4_0: LpmTrie<[u8; 4], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_deny_v4_1")]
static DENY_V4_1: LpmTrie<[u8; 4], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_deny_v6_0")]
static DENY_V6_0: LpmTrie<[u8; 16], PrefixEntry, STATIC_MAX> = LpmTrie::new();
#[btf_map(name = "scr_deny_v6_1")]
static DENY_V6_1: LpmTrie<[u8; 16], PrefixEntry, STATIC_MAX> = LpmTrie::new();

#[btf_map(name = "scr_dyn_v4")]
static DYN_V4: LruHashMap<DynKeyV4, DenyEntry, { DYN_V4_MAX_ENTRIES as usize }> = LruHashMap::new();
#[btf_map(name = "scr_dyn_v6")]
static DYN_V6: LruHashMap<DynKeyV6, DenyEntry, { DYN_V6_MAX_ENTRIES as usize }> = LruHashMap::new();

#[btf_map(name = "scr_config")]
static CONFIG: Array<ScreenConfig, 1> = Array::new();
#[btf_map(name = "scr_stats")]
static STATS: PerCpuArray<Counters, 1> = PerCpuArray::new();

// The IPv4 direct table of both static lists, two slots like the lists: a change builds the
// idle one and flips `ScreenConfig::v4_table_slot` in the same write as the list's slot. Array
// lookups are inlined by the verifier: one load and a bounds check.
const TABLE_WORDS: usize = v4_table::WORDS as usize;
const TABLE_FLAGS: usize = v4_table::MAP_FLAGS as usize;
#[btf_map(name = "scr_table_v4_0")]
static TABLE_V4_0: Array<u64, TABLE_WORDS, TABLE_FLAGS> = Array::new();
#[btf_map(name = "scr_table_v4_1")]
static TABLE_V4_1: Array<u64, TABLE_WORDS, TABLE_FLAGS> = Array::new();

#[xdp]
pub fn smtp_screen(ctx: XdpContext) -> u32 {
    // Element 0 of a per-CPU array always exists; the check is for the verifier.
    let Some(counters) = STATS.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // Per-CPU record: no other writer runs on this CPU while XDP does.
    let counters = unsafe { &mut *counters };
    counters.frames += 1;
    match screen(&ctx, counters) {
        Ok(action) => action,
        Err(Unparsed) => {
            counters.parse_failed += 1;
            XDP_PASS
        }
    }
}

/// A header was truncated or invalid: the frame passes.
struct Unparsed;

/// What the static lists say about a source.
#[derive(Clone, Copy)]
enum Listed {
    Allow,
    Deny,
    Unlisted,
}

/// Which list denied a SYN.
#[derive(Clone, Copy)]
enum DenyReason {
    Static,
    Dynamic,
}

/// The headers of a screened SYN, as pointers into the frame that the parser checked. The RST
/// builder copies what it needs: copying the headers for every SYN cost dozens of single-byte
/// loads and stack stores that only the RST path uses.
#[derive(Clone, Copy)]
pub struct Syn {
    pub net: Network,
    /// Offset of the TCP header.
    pub l4: usize,
    pub tcp: *const TcpHdr,
}

/// The network header of a screened SYN: its offset and where it is.
#[derive(Clone, Copy)]
pub enum Network {
    V4 { l3: usize, ip: *const Ipv4Hdr },
    V6 { l3: usize, ip: *const Ipv6Hdr },
}

#[inline(always)]
fn screen(ctx: &XdpContext, counters: &mut Counters) -> Result<u32, Unparsed> {
    // Unconfigured (the daemon has not written the record): protect nothing.
    let Some(config) = CONFIG.get(0) else {
        return Ok(XDP_PASS);
    };
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Unparsed)?;
    let mut proto = be16(unsafe { (*eth).proto });
    let mut off = ETH_LEN;
    for _ in 0..VLAN_MAX {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let vlan = ptr_at::<VlanHdr>(ctx, off).ok_or(Unparsed)?;
        proto = be16(unsafe { (*vlan).proto });
        off += 4;
    }
    match proto {
        ETH_P_IPV4 => screen_v4(ctx, config, counters, off),
        ETH_P_IPV6 => screen_v6(ctx, config, counters, off),
        // A third tag is more than the parser reads.
        ETH_P_8021Q | ETH_P_8021AD => Err(Unparsed),
        _ => Ok(XDP_PASS),
    }
}

#[inline(always)]
fn screen_v4(
    ctx: &XdpContext,
    config: &ScreenConfig,
    counters: &mut Counters,
    l3: usize,
) -> Result<u32, Unparsed> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, l3).ok_or(Unparsed)?;
    let version_ihl = unsafe { (*ip).version_ihl };
    if version_ihl >> 4 != 4 {
        return Err(Unparsed);
    }
    let ihl = (version_ihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(Unparsed);
    }
    let hdr_len = ihl * 4;
    if !has_bytes(ctx, l3, hdr_len) {
        return Err(Unparsed);
    }
    // A non-first fragment carries no TCP header; the stack reassembles it.
    if be16(unsafe { (*ip).frag_off }) & 0x1fff != 0 {
        counters.fragments += 1;
        return Ok(XDP_PASS);
    }
    if unsafe { (*ip).protocol } != IPPROTO_TCP {
        return Ok(XDP_PASS);
    }
    let l4 = l3 + hdr_len;
    let Some(tcp) = syn_to_protected_port(ctx, config, l4)? else {
        return Ok(XDP_PASS);
    };
    counters.syn_screened += 1;

    let src = unsafe { (*ip).src };
    let syn = Syn {
        net: Network::V4 { l3, ip },
        l4,
        tcp,
    };
    match static_v4(config, src) {
        Listed::Allow => {
            counters.passed_allow += 1;
            Ok(XDP_PASS)
        }
        Listed::Deny => Ok(deny(ctx, config, counters, DenyReason::Static, syn)),
        Listed::Unlisted => {
            let entry = unsafe { DYN_V4.get(DynKeyV4 { addr: src }) };
            Ok(dynamic_verdict(ctx, config, counters, entry.copied(), syn))
        }
    }
}

/// The static lists' verdict on an IPv4 source: the direct table's bucket, and the tries only
/// when a prefix longer than /24 lies in the bucket.
#[inline(always)]
fn static_v4(config: &ScreenConfig, src: [u8; 4]) -> Listed {
    let bucket = v4_table::bucket(src);
    let index = v4_table::word_index(bucket);
    let word = if config.v4_table_slot == 0 {
        TABLE_V4_0.get(index)
    } else {
        TABLE_V4_1.get(index)
    };
    // Every index below 2^19 exists; a missing word would only send the source to the tries.
    match word.map(|&word| v4_table::state(word, bucket)) {
        Some(v4_table::UNLISTED) => Listed::Unlisted,
        Some(v4_table::DENY) => Listed::Deny,
        Some(v4_table::ALLOW) => Listed::Allow,
        _ => static_v4_tries(config, src),
    }
}

/// The static lists' verdict from the IPv4 tries: allow beats static deny.
#[inline(always)]
fn static_v4_tries(config: &ScreenConfig, src: [u8; 4]) -> Listed {
    let key = Key::new(32, src);
    let allowed = if config.allow_slot == 0 {
        ALLOW_V4_0.get(&key).is_some()
    } else {
        ALLOW_V4_1.get(&key).is_some()
    };
    if allowed {
        return Listed::Allow;
    }
    let denied = if config.deny_slot == 0 {
        DENY_V4_0.get(&key).is_some()
    } else {
        DENY_V4_1.get(&key).is_some()
    };
    if denied {
        Listed::Deny
    } else {
        Listed::Unlisted
    }
}

/// The static lists' verdict from the IPv6 tries: allow beats static deny.
#[inline(always)]
fn static_v6(config: &ScreenConfig, src: [u8; 16]) -> Listed {
    let key = Key::new(128, src);
    let allowed = if config.allow_slot == 0 {
        ALLOW_V6_0.get(&key).is_some()
    } else {
        ALLOW_V6_1.get(&key).is_some()
    };
    if allowed {
        return Listed::Allow;
    }
    let denied = if config.deny_slot == 0 {
        DENY_V6_0.get(&key).is_some()
    } else {
        DENY_V6_1.get(&key).is_some()
    };
    if denied {
        Listed::Deny
    } else {
        Listed::Unlisted
    }
}

#[inline(always)]
fn screen_v6(
    ctx: &XdpContext,
    config: &ScreenConfig,
    counters: &mut Counters,
    l3: usize,
) -> Result<u32, Unparsed> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, l3).ok_or(Unparsed)?;
    if unsafe { (*ip).version_class_flow[0] } >> 4 != 6 {
        return Err(Unparsed);
    }
    let mut next = unsafe { (*ip).next_header };
    let mut l4 = l3 + IPV6_LEN;
    for _ in 0..IPV6_EXT_MAX {
        if next == IPPROTO_TCP {
            break;
        }
        if !matches!(
            next,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT
        ) {
            // Not TCP (or no next header): nothing to screen.
            return Ok(XDP_PASS);
        }
        let ext = ptr_at::<Ipv6ExtHdr>(ctx, l4).ok_or(Unparsed)?;
        let (ext_next, ext_len, frag_off) =
            unsafe { ((*ext).next_header, (*ext).len as usize, (*ext).frag_off) };
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => l4 += (ext_len + 1) * 8,
            IPV6_AH => l4 += (ext_len + 2) * 4,
            IPV6_FRAGMENT => {
                if be16(frag_off) & 0xfff8 != 0 {
                    counters.fragments += 1;
                    return Ok(XDP_PASS);
                }
                l4 += 8;
            }
            // Ruled out above.
            _ => return Ok(XDP_PASS),
        }
        next = ext_next;
    }
    if next != IPPROTO_TCP {
        // More extension headers than the parser walks.
        return Err(Unparsed);
    }
    let Some(tcp) = syn_to_protected_port(ctx, config, l4)? else {
        return Ok(XDP_PASS);
    };
    counters.syn_screened += 1;

    let src = unsafe { (*ip).src };
    let syn = Syn {
        net: Network::V6 { l3, ip },
        l4,
        tcp,
    };
    match static_v6(config, src) {
        Listed::Allow => {
            counters.passed_allow += 1;
            Ok(XDP_PASS)
        }
        Listed::Deny => Ok(deny(ctx, config, counters, DenyReason::Static, syn)),
        Listed::Unlisted => {
            let dyn_key = DynKeyV6 {
                addr: mask_v6(src, config.v6_prefix_len),
            };
            let entry = unsafe { DYN_V6.get(dyn_key) };
            Ok(dynamic_verdict(ctx, config, counters, entry.copied(), syn))
        }
    }
}

/// Reads the TCP header at `l4`; `Some` only for a SYN without ACK to a protected port.
#[inline(always)]
fn syn_to_protected_port(
    ctx: &XdpContext,
    config: &ScreenConfig,
    l4: usize,
) -> Result<Option<*const TcpHdr>, Unparsed> {
    let tcp = ptr_at::<TcpHdr>(ctx, l4).ok_or(Unparsed)?;
    let (doff, flags) = unsafe { ((*tcp).doff, (*tcp).flags) };
    let doff = (doff >> 4) as usize;
    if doff < 5 || !has_bytes(ctx, l4, doff * 4) {
        return Err(Unparsed);
    }
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Ok(None);
    }
    Ok(config.protects(be16(unsafe { (*tcp).dest })).then_some(tcp))
}

#[inline(always)]
fn dynamic_verdict(
    ctx: &XdpContext,
    config: &ScreenConfig,
    counters: &mut Counters,
    entry: Option<DenyEntry>,
    syn: Syn,
) -> u32 {
    match entry {
        // The coarse clock reads the time of the last tick (CLOCK_MONOTONIC_COARSE): a tenth of
        // the precise clock's cost, and an entry outlives its expiry by at most one tick.
        Some(entry) if unsafe { bpf_ktime_get_coarse_ns() } < entry.expires_ns => {
            deny(ctx, config, counters, DenyReason::Dynamic, syn)
        }
        Some(_) => {
            counters.expired += 1;
            counters.passed += 1;
            XDP_PASS
        }
        None => {
            counters.passed += 1;
            XDP_PASS
        }
    }
}

#[inline(always)]
fn deny(
    ctx: &XdpContext,
    config: &ScreenConfig,
    counters: &mut Counters,
    reason: DenyReason,
    syn: Syn,
) -> u32 {
    if config.action == DenyAction::Rst as u32 && rst::reply(ctx, syn) {
        match reason {
            DenyReason::Static => counters.rst_static += 1,
            DenyReason::Dynamic => counters.rst_dynamic += 1,
        }
        return XDP_TX;
    }
    match reason {
        DenyReason::Static => counters.drop_static += 1,
        DenyReason::Dynamic => counters.drop_dynamic += 1,
    }
    XDP_DROP
}
