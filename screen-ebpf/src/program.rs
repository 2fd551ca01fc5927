//! Maps and the verdict: parse to the TCP header, screen SYNs to protected ports.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    btf_maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use screen_common::{
    DYN_V4_MAX_ENTRIES, DYN_V6_MAX_ENTRIES, DenyAction, DenyEntry, DynKeyV4, DynKeyV6,
    IPV6_EXT_MAX, PrefixEntry, STATIC_MAX_ENTRIES, ScreenConfig, Stat, VLAN_MAX, mask_v6,
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
static STATS: PerCpuArray<u64, { Stat::COUNT as usize }> = PerCpuArray::new();

#[xdp]
pub fn smtp_screen(ctx: XdpContext) -> u32 {
    count(Stat::Frames);
    match screen(&ctx) {
        Ok(action) => action,
        Err(Unparsed) => {
            count(Stat::ParseFailed);
            XDP_PASS
        }
    }
}

/// A header was truncated or invalid: the frame passes.
struct Unparsed;

/// Which list denied a SYN.
#[derive(Clone, Copy)]
enum DenyReason {
    Static,
    Dynamic,
}

/// The network layer of a screened SYN, as the RST builder needs it.
#[derive(Clone, Copy)]
pub enum Network {
    V4 { l3: usize, hdr: Ipv4Hdr },
    V6 { l3: usize, hdr: Ipv6Hdr },
}

#[inline(always)]
fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other writer runs on this CPU while XDP does.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn screen(ctx: &XdpContext) -> Result<u32, Unparsed> {
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
        ETH_P_IPV4 => screen_v4(ctx, config, off),
        ETH_P_IPV6 => screen_v6(ctx, config, off),
        // A third tag is more than the parser reads.
        ETH_P_8021Q | ETH_P_8021AD => Err(Unparsed),
        _ => Ok(XDP_PASS),
    }
}

#[inline(always)]
fn screen_v4(ctx: &XdpContext, config: &ScreenConfig, l3: usize) -> Result<u32, Unparsed> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, l3).ok_or(Unparsed)?;
    let hdr = unsafe { *ip };
    if hdr.version_ihl >> 4 != 4 {
        return Err(Unparsed);
    }
    let ihl = (hdr.version_ihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(Unparsed);
    }
    let hdr_len = ihl * 4;
    if !has_bytes(ctx, l3, hdr_len) {
        return Err(Unparsed);
    }
    // A non-first fragment carries no TCP header; the stack reassembles it.
    if be16(hdr.frag_off) & 0x1fff != 0 {
        count(Stat::Fragments);
        return Ok(XDP_PASS);
    }
    if hdr.protocol != IPPROTO_TCP {
        return Ok(XDP_PASS);
    }
    let l4 = l3 + hdr_len;
    let Some(tcp) = syn_to_protected_port(ctx, config, l4)? else {
        return Ok(XDP_PASS);
    };
    count(Stat::SynScreened);

    let key = Key::new(32, hdr.src);
    let allowed = if config.allow_slot == 0 {
        ALLOW_V4_0.get(&key).is_some()
    } else {
        ALLOW_V4_1.get(&key).is_some()
    };
    if allowed {
        count(Stat::PassedAllow);
        return Ok(XDP_PASS);
    }
    let denied = if config.deny_slot == 0 {
        DENY_V4_0.get(&key).is_some()
    } else {
        DENY_V4_1.get(&key).is_some()
    };
    let net = Network::V4 { l3, hdr };
    if denied {
        return Ok(deny(ctx, config, DenyReason::Static, net, l4, &tcp));
    }
    let entry = unsafe { DYN_V4.get(DynKeyV4 { addr: hdr.src }) };
    Ok(dynamic_verdict(ctx, config, entry.copied(), net, l4, &tcp))
}

#[inline(always)]
fn screen_v6(ctx: &XdpContext, config: &ScreenConfig, l3: usize) -> Result<u32, Unparsed> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, l3).ok_or(Unparsed)?;
    let hdr = unsafe { *ip };
    if hdr.version_class_flow[0] >> 4 != 6 {
        return Err(Unparsed);
    }
    let mut next = hdr.next_header;
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
                    count(Stat::Fragments);
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
    count(Stat::SynScreened);

    let key = Key::new(128, hdr.src);
    let allowed = if config.allow_slot == 0 {
        ALLOW_V6_0.get(&key).is_some()
    } else {
        ALLOW_V6_1.get(&key).is_some()
    };
    if allowed {
        count(Stat::PassedAllow);
        return Ok(XDP_PASS);
    }
    let denied = if config.deny_slot == 0 {
        DENY_V6_0.get(&key).is_some()
    } else {
        DENY_V6_1.get(&key).is_some()
    };
    let net = Network::V6 { l3, hdr };
    if denied {
        return Ok(deny(ctx, config, DenyReason::Static, net, l4, &tcp));
    }
    let dyn_key = DynKeyV6 {
        addr: mask_v6(hdr.src, config.v6_prefix_len),
    };
    let entry = unsafe { DYN_V6.get(dyn_key) };
    Ok(dynamic_verdict(ctx, config, entry.copied(), net, l4, &tcp))
}

/// Reads the TCP header at `l4`; `Some` only for a SYN without ACK to a protected port.
#[inline(always)]
fn syn_to_protected_port(
    ctx: &XdpContext,
    config: &ScreenConfig,
    l4: usize,
) -> Result<Option<TcpHdr>, Unparsed> {
    let tcp = ptr_at::<TcpHdr>(ctx, l4).ok_or(Unparsed)?;
    let tcp = unsafe { *tcp };
    let doff = (tcp.doff >> 4) as usize;
    if doff < 5 || !has_bytes(ctx, l4, doff * 4) {
        return Err(Unparsed);
    }
    if tcp.flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Ok(None);
    }
    Ok(config.protects(be16(tcp.dest)).then_some(tcp))
}

#[inline(always)]
fn dynamic_verdict(
    ctx: &XdpContext,
    config: &ScreenConfig,
    entry: Option<DenyEntry>,
    net: Network,
    l4: usize,
    tcp: &TcpHdr,
) -> u32 {
    match entry {
        // The coarse clock reads the time of the last tick (CLOCK_MONOTONIC_COARSE): a tenth of
        // the precise clock's cost, and an entry outlives its expiry by at most one tick.
        Some(entry) if unsafe { bpf_ktime_get_coarse_ns() } < entry.expires_ns => {
            deny(ctx, config, DenyReason::Dynamic, net, l4, tcp)
        }
        Some(_) => {
            count(Stat::Expired);
            count(Stat::Passed);
            XDP_PASS
        }
        None => {
            count(Stat::Passed);
            XDP_PASS
        }
    }
}

#[inline(always)]
fn deny(
    ctx: &XdpContext,
    config: &ScreenConfig,
    reason: DenyReason,
    net: Network,
    l4: usize,
    tcp: &TcpHdr,
) -> u32 {
    if config.action == DenyAction::Rst as u32 && rst::reply(ctx, net, l4, tcp) {
        count(match reason {
            DenyReason::Static => Stat::RstStatic,
            DenyReason::Dynamic => Stat::RstDynamic,
        });
        return XDP_TX;
    }
    count(match reason {
        DenyReason::Static => Stat::DropStatic,
        DenyReason::Dynamic => Stat::DropDynamic,
    });
    XDP_DROP
}
