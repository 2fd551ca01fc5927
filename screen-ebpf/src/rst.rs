//! Turns a screened SYN into a TCP RST+ACK addressed back to its sender, for `XDP_TX`.
//!
//! RFC 9293 §3.10.7.1: a segment without ACK is answered with `<SEQ=0><ACK=SEG.SEQ+SEG.LEN>
//! <CTL=RST,ACK>`, where a SYN counts as one octet of SEG.LEN. The reply is built in place: MAC,
//! addresses and ports are swapped, options and payload are cut with `bpf_xdp_adjust_tail`, and
//! both checksums are computed from scratch. VLAN tags stay as they are. Frames with IPv4
//! options or IPv6 extension headers are not rewritten (the caller drops them instead).

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};

use crate::parse::{
    EthHdr, Family, Frame, IPPROTO_TCP, IPV4_LEN, IPV6_LEN, Ipv4Hdr, Ipv6Hdr, Syn, TCP_ACK,
    TCP_LEN, TCP_RST, TcpHdr, be16, be32,
};

/// An IP header directly followed by the TCP header: the part of the frame the reply rewrites,
/// read and written as one piece behind one bounds check.
#[repr(C)]
struct Segment<Ip> {
    ip: Ip,
    tcp: TcpHdr,
}

/// Rewrites the frame into the RST reply. `false` leaves the caller to drop the frame.
#[inline(always)]
pub fn reply(ctx: &XdpContext, Syn { family, l3, l4 }: Syn) -> bool {
    let frame = Frame::fresh(ctx);
    let rewritten = match family {
        Family::V4 => l4 == l3 + IPV4_LEN && reply_v4(frame, l3),
        Family::V6 => l4 == l3 + IPV6_LEN && reply_v6(frame, l3),
    };
    if !rewritten {
        return false;
    }
    let Some(eth) = frame.ptr_at::<EthHdr>(0) else {
        return false;
    };
    // SAFETY: `frame.ptr_at` checked that the header lies inside the frame; nothing else
    // refers to it (the screen keeps no reference across the reply).
    unsafe {
        let old = eth.read_unaligned();
        eth.write_unaligned(EthHdr {
            dst: old.src,
            src: old.dst,
            proto: old.proto,
        });
    }

    let want = l4 + TCP_LEN;
    if frame.len() > want {
        let delta = -((frame.len() - want) as i32);
        // SAFETY: shrinking by what lies beyond the reply; the kernel checks the bounds.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return false;
        }
    }
    true
}

/// Rewrites the IPv4 header at `l3` and the TCP header after it.
#[inline(always)]
fn reply_v4(frame: Frame, l3: usize) -> bool {
    let Some(at) = frame.ptr_at::<Segment<Ipv4Hdr>>(l3) else {
        return false;
    };
    // Copied before anything is rewritten.
    // SAFETY: `frame.ptr_at` checked that both headers lie inside the frame; nothing else
    // refers to them (the screen keeps no reference across the reply).
    let Segment { ip: hdr, tcp: syn } = unsafe { at.read_unaligned() };
    let payload = (be16(hdr.tot_len) as usize).saturating_sub(IPV4_LEN + header_len(&syn));
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
    let tcp = rst_for(&syn, payload, pseudo_header(&ip.src, &ip.dst));
    // SAFETY: as for the read: the same checked bytes, and still nothing else refers to them.
    unsafe { at.write_unaligned(Segment { ip, tcp }) };
    true
}

/// Rewrites the IPv6 header at `l3` and the TCP header after it.
#[inline(always)]
fn reply_v6(frame: Frame, l3: usize) -> bool {
    let Some(at) = frame.ptr_at::<Segment<Ipv6Hdr>>(l3) else {
        return false;
    };
    // SAFETY: `frame.ptr_at` checked that both headers lie inside the frame; nothing else
    // refers to them (the screen keeps no reference across the reply).
    let Segment { ip: hdr, tcp: syn } = unsafe { at.read_unaligned() };
    let payload = (be16(hdr.payload_len) as usize).saturating_sub(header_len(&syn));
    let ip = Ipv6Hdr {
        version_class_flow: [0x60, 0, 0, 0],
        payload_len: (TCP_LEN as u16).to_be_bytes(),
        next_header: IPPROTO_TCP,
        hop_limit: 64,
        src: hdr.dst,
        dst: hdr.src,
    };
    let tcp = rst_for(&syn, payload, pseudo_header(&ip.src, &ip.dst));
    // SAFETY: as for the read: the same checked bytes, and still nothing else refers to them.
    unsafe { at.write_unaligned(Segment { ip, tcp }) };
    true
}

/// The sum of the pseudo-header of a 20-byte TCP segment between `src` and `dst`.
#[inline(always)]
fn pseudo_header<const N: usize>(src: &[u8; N], dst: &[u8; N]) -> u32 {
    sum_bytes(0, src) + sum_bytes(0, dst) + IPPROTO_TCP as u32 + TCP_LEN as u32
}

/// The TCP header length with options, in bytes.
#[inline(always)]
fn header_len(tcp: &TcpHdr) -> usize {
    ((tcp.doff >> 4) as usize) * 4
}

/// The RST+ACK answering `syn`, which carried `payload` bytes of data, with its checksum over
/// the pseudo-header sum `pseudo`.
#[inline(always)]
fn rst_for(syn: &TcpHdr, payload: usize, pseudo: u32) -> TcpHdr {
    let mut tcp = TcpHdr {
        source: syn.dest,
        dest: syn.source,
        seq: [0; 4],
        ack_seq: ack_for(syn, payload),
        doff: 5 << 4,
        flags: TCP_RST | TCP_ACK,
        window: [0; 2],
        check: [0; 2],
        urg_ptr: [0; 2],
    };
    tcp.check = fold(sum_tcp(pseudo, &tcp)).to_be_bytes();
    tcp
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
