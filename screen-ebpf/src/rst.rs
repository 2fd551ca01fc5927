//! Turns a screened SYN into a TCP RST+ACK addressed back to its sender, for `XDP_TX`.
//!
//! RFC 9293 §3.10.7.1: a segment without ACK is answered with `<SEQ=0><ACK=SEG.SEQ+SEG.LEN>
//! <CTL=RST,ACK>`, where a SYN counts as one octet of SEG.LEN. The reply is built in place: MAC,
//! addresses and ports are swapped, options and payload are cut with `bpf_xdp_adjust_tail`, and
//! both checksums are computed from scratch. VLAN tags stay as they are. Frames with IPv4
//! options or IPv6 extension headers are not rewritten (the caller drops them instead).

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};

use crate::{
    headers::*,
    program::{Network, Syn},
};

/// Rewrites the frame into the RST reply. `false` leaves the caller to drop the frame.
#[inline(always)]
pub fn reply(ctx: &XdpContext, Syn { net, l4, tcp: syn }: Syn) -> bool {
    // Copied before anything is rewritten.
    let syn = &unsafe { syn.read_unaligned() };
    let doff_len = ((syn.doff >> 4) as usize) * 4;
    let mut tcp = TcpHdr {
        source: syn.dest,
        dest: syn.source,
        seq: [0; 4],
        ack_seq: [0; 4],
        doff: 5 << 4,
        flags: TCP_RST | TCP_ACK,
        window: [0; 2],
        check: [0; 2],
        urg_ptr: [0; 2],
    };
    let sum = match net {
        Network::V4 { l3, ip } => {
            if l4 != l3 + IPV4_LEN {
                return false;
            }
            let hdr = unsafe { ip.read_unaligned() };
            let payload = (be16(hdr.tot_len) as usize).saturating_sub(IPV4_LEN + doff_len);
            tcp.ack_seq = ack_for(syn, payload);
            let mut ip = Ipv4Hdr {
                version_ihl: 0x45,
                tos: 0,
                tot_len: ((IPV4_LEN + TCP_LEN) as u16).to_be_bytes(),
                id: [0; 2],
                // Don't fragment.
                frag_off: [0x40, 0],
                ttl: 64,
                protocol: IPPROTO_TCP,
                check: [0; 2],
                src: hdr.dst,
                dst: hdr.src,
            };
            ip.check = fold(sum_ipv4(&ip)).to_be_bytes();
            let Some(out) = ptr_at_mut::<Ipv4Hdr>(ctx, l3) else {
                return false;
            };
            unsafe { out.write_unaligned(ip) };
            let pseudo = sum_bytes(0, &ip.src) + sum_bytes(0, &ip.dst);
            pseudo + IPPROTO_TCP as u32 + TCP_LEN as u32
        }
        Network::V6 { l3, ip } => {
            if l4 != l3 + IPV6_LEN {
                return false;
            }
            let hdr = unsafe { ip.read_unaligned() };
            let payload = (be16(hdr.payload_len) as usize).saturating_sub(doff_len);
            tcp.ack_seq = ack_for(syn, payload);
            let ip = Ipv6Hdr {
                version_class_flow: [0x60, 0, 0, 0],
                payload_len: (TCP_LEN as u16).to_be_bytes(),
                next_header: IPPROTO_TCP,
                hop_limit: 64,
                src: hdr.dst,
                dst: hdr.src,
            };
            let Some(out) = ptr_at_mut::<Ipv6Hdr>(ctx, l3) else {
                return false;
            };
            unsafe { out.write_unaligned(ip) };
            let pseudo = sum_bytes(0, &ip.src) + sum_bytes(0, &ip.dst);
            pseudo + IPPROTO_TCP as u32 + TCP_LEN as u32
        }
    };
    tcp.check = fold(sum_tcp(sum, &tcp)).to_be_bytes();
    let Some(out) = ptr_at_mut::<TcpHdr>(ctx, l4) else {
        return false;
    };
    unsafe { out.write_unaligned(tcp) };

    let Some(eth) = ptr_at_mut::<EthHdr>(ctx, 0) else {
        return false;
    };
    unsafe {
        let old = eth.read_unaligned();
        eth.write_unaligned(EthHdr {
            dst: old.src,
            src: old.dst,
            proto: old.proto,
        });
    }

    let len = ctx.data_end() - ctx.data();
    let want = l4 + TCP_LEN;
    if len > want {
        let delta = -((len - want) as i32);
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return false;
        }
    }
    true
}

#[inline(always)]
fn ack_for(syn: &TcpHdr, payload: usize) -> [u8; 4] {
    be32(syn.seq)
        .wrapping_add(1)
        .wrapping_add(payload as u32)
        .to_be_bytes()
}

/// Adds the big-endian 16-bit words of `bytes` (even length) to `sum`.
#[inline(always)]
fn sum_bytes<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

#[inline(always)]
fn sum_ipv4(ip: &Ipv4Hdr) -> u32 {
    let mut sum = u16::from_be_bytes([ip.version_ihl, ip.tos]) as u32;
    sum += be16(ip.tot_len) as u32;
    sum += be16(ip.id) as u32;
    sum += be16(ip.frag_off) as u32;
    sum += u16::from_be_bytes([ip.ttl, ip.protocol]) as u32;
    sum += be16(ip.check) as u32;
    sum_bytes(0, &ip.src) + sum_bytes(0, &ip.dst) + sum
}

#[inline(always)]
fn sum_tcp(mut sum: u32, tcp: &TcpHdr) -> u32 {
    sum += be16(tcp.source) as u32;
    sum += be16(tcp.dest) as u32;
    sum = sum_bytes(sum, &tcp.seq);
    sum = sum_bytes(sum, &tcp.ack_seq);
    sum += u16::from_be_bytes([tcp.doff, tcp.flags]) as u32;
    sum += be16(tcp.window) as u32;
    sum += be16(tcp.check) as u32;
    sum + be16(tcp.urg_ptr) as u32
}

/// One's complement of the folded one's complement sum.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
