//! The screen: the `#[xdp]` entry, the verdict on a SYN to a protected port (static lists,
//! dynamic deny entries, the deny action) and the counters it keeps on the way. It drives the
//! parser's cursor (`parse`), reads the maps (`maps`), and has a denied SYN answered by `rst`
//! when the configured action is RST.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    btf_maps::lpm_trie::Key,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns},
    macros::xdp,
    programs::XdpContext,
};
use screen_common::{
    Counters, DenyAction, DenyEntry, DynKeyV4, DynKeyV6, IPV6_EXT_MAX, ScreenConfig, VLAN_MAX,
    mask_v6, v4_table,
};

use crate::{
    maps::{
        ALLOW_V4_0, ALLOW_V4_1, ALLOW_V6_0, ALLOW_V6_1, DENY_V4_0, DENY_V4_1, DENY_V6_0, DENY_V6_1,
        DYN_V4, DYN_V6, SCREEN_CONFIG, SCREEN_STATS, StaticTrie, TABLE_V4_0, TABLE_V4_1,
    },
    parse::{
        Cursor, ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, Family, IPPROTO_TCP,
        IPV6_AH, IPV6_DSTOPTS, IPV6_FRAGMENT, IPV6_FRAGMENT_LEN, IPV6_HOPOPTS, IPV6_ROUTING,
        Ipv4Hdr, PLAIN_L4, PlainV4, Syn, TCP_ACK, TCP_SYN, TcpHdr, Unparsed, be16, parse_ethhdr,
        parse_ip6exthdr, parse_ip6hdr, parse_iphdr, parse_plain_v4, parse_tcphdr, parse_vlanhdr,
        tcp_hdr_len,
    },
    rst,
};

#[xdp]
pub fn smtp_screen(ctx: XdpContext) -> u32 {
    // SAFETY: the helper only reads the CPU number (inlined by the verifier from Linux 6.10 on
    // x86-64 and 6.11 on arm64; a helper call before).
    let cpu = unsafe { bpf_get_smp_processor_id() } as usize;
    // SAFETY: each CPU writes its own slot, and XDP does not nest on a CPU: no other program
    // writes this slot meanwhile. Userspace writes the record only while loading a new
    // program, which starts from the pinned counts: what this one counts in that moment is
    // lost, and nothing else.
    let Some(slot) = (unsafe { (*(&raw mut SCREEN_STATS)).cpus.get_mut(cpu) }) else {
        // The loader refuses machines with more CPUs than the record has slots.
        return XDP_PASS;
    };
    let counters = &mut slot.counters;
    counters.frames += 1;
    match screen(&ctx, counters) {
        Ok(action) => action,
        Err(Unparsed) => {
            counters.parse_failed += 1;
            XDP_PASS
        }
    }
}

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

/// The action for one frame. The untagged IPv4 frame without options takes the fast path;
/// every other frame is read header by header with the cursor.
#[inline(always)]
fn screen(ctx: &XdpContext, counters: &mut Counters) -> Result<u32, Unparsed> {
    // SAFETY: the program only reads the record. Userspace rewrites it in place (an array
    // update is a copy), so a frame may meet a mix of the old and the new record; every field
    // is valid on its own, and a list's previous slot stays intact until the next change.
    // Unconfigured, the record protects no port, and every frame passes.
    let config = unsafe { &*(&raw const SCREEN_CONFIG) };
    if let Some(plain) = parse_plain_v4(ctx) {
        return screen_plain_v4(ctx, config, counters, plain);
    }
    let mut nh = Cursor::START;
    let mut proto = be16(parse_ethhdr(ctx, &mut nh)?);
    for _ in 0..VLAN_MAX {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = be16(parse_vlanhdr(ctx, &mut nh)?);
    }
    match proto {
        ETH_P_IPV4 => screen_v4(ctx, config, counters, nh),
        ETH_P_IPV6 => screen_v6(ctx, config, counters, nh),
        // A third tag is more than the parser reads.
        ETH_P_8021Q | ETH_P_8021AD => Err(Unparsed),
        _ => Ok(XDP_PASS),
    }
}

/// An untagged IPv4 frame without options: every header it needs was bounds-checked at once,
/// at offsets that are constants. `plain` is a pointer, not a reference, because the verdict
/// may rewrite these bytes into an RST.
#[inline(always)]
fn screen_plain_v4(
    ctx: &XdpContext,
    config: &ScreenConfig,
    counters: &mut Counters,
    plain: *const PlainV4,
) -> Result<u32, Unparsed> {
    // SAFETY: `parse_plain_v4` checked that the headers lie inside the frame; the references
    // end before the verdict.
    let (ip, tcp) = unsafe { (&(*plain).ip, &(*plain).tcp) };
    if !carries_tcp_v4(ip, counters) {
        return Ok(XDP_PASS);
    }
    // The options must lie inside the frame too.
    tcp_hdr_len(ctx, tcp, PLAIN_L4)?;
    if !syn_to_protected_port(config, tcp) {
        return Ok(XDP_PASS);
    }
    let src = ip.src;
    let syn = Syn {
        family: Family::V4,
        l3: ETH_LEN,
        l4: PLAIN_L4,
    };
    Ok(verdict_v4(ctx, config, counters, src, syn))
}

/// Any other IPv4 frame: behind VLAN tags, or with IP options.
#[inline(always)]
fn screen_v4(
    ctx: &XdpContext,
    config: &ScreenConfig,
    counters: &mut Counters,
    mut nh: Cursor,
) -> Result<u32, Unparsed> {
    let l3 = nh.off;
    let ip = parse_iphdr(ctx, &mut nh)?;
    if !carries_tcp_v4(ip, counters) {
        return Ok(XDP_PASS);
    }
    let l4 = nh.off;
    if !syn_to_protected_port(config, parse_tcphdr(ctx, &mut nh)?) {
        return Ok(XDP_PASS);
    }
    let syn = Syn {
        family: Family::V4,
        l3,
        l4,
    };
    Ok(verdict_v4(ctx, config, counters, ip.src, syn))
}

/// Whether an IPv4 packet starts a TCP segment. A non-first fragment carries no TCP header (the
/// stack reassembles it) and is counted.
#[inline(always)]
fn carries_tcp_v4(ip: &Ipv4Hdr, counters: &mut Counters) -> bool {
    if be16(ip.frag_off) & 0x1fff != 0 {
        core::hint::cold_path();
        counters.fragments += 1;
        return false;
    }
    ip.protocol == IPPROTO_TCP
}

/// The verdict on a screened SYN from IPv4 source `src`.
#[inline(always)]
fn verdict_v4(
    ctx: &XdpContext,
    config: &ScreenConfig,
    counters: &mut Counters,
    src: [u8; 4],
    syn: Syn,
) -> u32 {
    counters.syn_screened += 1;
    match static_v4(config, src) {
        Listed::Allow => {
            counters.passed_allow += 1;
            XDP_PASS
        }
        Listed::Deny => deny(ctx, config, counters, DenyReason::Static, syn),
        Listed::Unlisted => {
            // SAFETY: the program never inserts or removes entries, and the entry is copied at
            // once: no reference outlives the lookup.
            let entry = unsafe { DYN_V4.get(DynKeyV4 { addr: src }) };
            dynamic_verdict(ctx, config, counters, entry.copied(), syn)
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
        _ => {
            // A bucket that holds a prefix longer than /24: rare, and two trie walks.
            core::hint::cold_path();
            static_v4_tries(config, src)
        }
    }
}

/// The static lists' verdict from the IPv4 tries.
#[inline(always)]
fn static_v4_tries(config: &ScreenConfig, src: [u8; 4]) -> Listed {
    tries_verdict(
        config,
        src,
        [&ALLOW_V4_0, &ALLOW_V4_1],
        [&DENY_V4_0, &DENY_V4_1],
    )
}

/// The static lists' verdict from the IPv6 tries.
#[inline(always)]
fn static_v6(config: &ScreenConfig, src: [u8; 16]) -> Listed {
    tries_verdict(
        config,
        src,
        [&ALLOW_V6_0, &ALLOW_V6_1],
        [&DENY_V6_0, &DENY_V6_1],
    )
}

/// The verdict of one family's tries on `src`, each list read in its live slot: allow beats
/// static deny.
#[inline(always)]
fn tries_verdict<const N: usize>(
    config: &ScreenConfig,
    src: [u8; N],
    allow: [&StaticTrie<N>; 2],
    deny: [&StaticTrie<N>; 2],
) -> Listed {
    let key = Key::new(N as u32 * 8, src);
    let allowed = if config.allow_slot == 0 {
        allow[0].get(&key).is_some()
    } else {
        allow[1].get(&key).is_some()
    };
    if allowed {
        return Listed::Allow;
    }
    let denied = if config.deny_slot == 0 {
        deny[0].get(&key).is_some()
    } else {
        deny[1].get(&key).is_some()
    };
    if denied {
        Listed::Deny
    } else {
        Listed::Unlisted
    }
}

/// Any IPv6 frame: the extension headers are walked to the TCP header.
#[inline(always)]
fn screen_v6(
    ctx: &XdpContext,
    config: &ScreenConfig,
    counters: &mut Counters,
    mut nh: Cursor,
) -> Result<u32, Unparsed> {
    let l3 = nh.off;
    let ip = parse_ip6hdr(ctx, &mut nh)?;
    // SAFETY: `parse_ip6hdr` checked that the header lies inside the frame.
    let mut next = unsafe { (*ip).next_header };
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
        let ext = parse_ip6exthdr(ctx, &nh)?;
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => nh.off += ext.options_len(),
            IPV6_AH => nh.off += ext.ah_len(),
            IPV6_FRAGMENT => {
                if ext.later_fragment() {
                    counters.fragments += 1;
                    return Ok(XDP_PASS);
                }
                nh.off += IPV6_FRAGMENT_LEN;
            }
            // Ruled out above.
            _ => return Ok(XDP_PASS),
        }
        next = ext.next_header;
    }
    if next != IPPROTO_TCP {
        // More extension headers than the parser walks.
        return Err(Unparsed);
    }
    let l4 = nh.off;
    if !syn_to_protected_port(config, parse_tcphdr(ctx, &mut nh)?) {
        return Ok(XDP_PASS);
    }
    // SAFETY: as above; nothing has rewritten the frame since.
    let src = unsafe { (*ip).src };
    let syn = Syn {
        family: Family::V6,
        l3,
        l4,
    };
    Ok(verdict_v6(ctx, config, counters, src, syn))
}

/// The verdict on a screened SYN from IPv6 source `src`.
#[inline(always)]
fn verdict_v6(
    ctx: &XdpContext,
    config: &ScreenConfig,
    counters: &mut Counters,
    src: [u8; 16],
    syn: Syn,
) -> u32 {
    counters.syn_screened += 1;
    match static_v6(config, src) {
        Listed::Allow => {
            counters.passed_allow += 1;
            XDP_PASS
        }
        Listed::Deny => deny(ctx, config, counters, DenyReason::Static, syn),
        Listed::Unlisted => {
            let dyn_key = DynKeyV6 {
                addr: mask_v6(src, config.v6_prefix_len),
            };
            // SAFETY: as for IPv4.
            let entry = unsafe { DYN_V6.get(dyn_key) };
            dynamic_verdict(ctx, config, counters, entry.copied(), syn)
        }
    }
}

/// Whether `tcp` is a SYN without ACK to a protected port.
#[inline(always)]
fn syn_to_protected_port(config: &ScreenConfig, tcp: &TcpHdr) -> bool {
    tcp.flags & (TCP_SYN | TCP_ACK) == TCP_SYN && config.protects(be16(tcp.dest))
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
        // SAFETY: the helper takes no argument and only reads the clock.
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
    if config.action == DenyAction::Rst as u32 {
        // Out of line: the drop, the default action, falls through without a jump.
        core::hint::cold_path();
        if rst::reply(ctx, syn) {
            match reason {
                DenyReason::Static => counters.rst_static += 1,
                DenyReason::Dynamic => counters.rst_dynamic += 1,
            }
            return XDP_TX;
        }
    }
    match reason {
        DenyReason::Static => counters.drop_static += 1,
        DenyReason::Dynamic => counters.drop_dynamic += 1,
    }
    XDP_DROP
}
