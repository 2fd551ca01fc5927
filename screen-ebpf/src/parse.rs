//! The frame's headers and the cursor that reads them, in the manner of xdp-tools'
//! `parsing_helpers.h`: wire headers as byte arrays (no alignment assumptions), and one small
//! helper per header (`parse_ethhdr`, `parse_vlanhdr`, `parse_iphdr`, `parse_ip6hdr`,
//! `parse_ip6exthdr`, `parse_tcphdr`), each reading the header at the [`Cursor`] behind one
//! bounds check and moving the cursor past it. A truncated or invalid header is [`Unparsed`].
//!
//! The screen drives the cursor and decides what each header means for the frame; the RST
//! builder goes back to the headers of a screened SYN through [`Syn`] and [`Frame`].

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_TCP: u8 = 6;
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_AH: u8 = 51;
pub const IPV6_DSTOPTS: u8 = 60;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

/// An 802.1Q or 802.1AD tag after the MAC addresses.
#[repr(C)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub proto: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The first two bytes of every skippable IPv6 extension header; fragment headers also carry
/// the offset in bytes 2..4.
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub next_header: u8,
    pub len: u8,
    pub frag_off: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    /// Data offset in the high nibble.
    pub doff: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg_ptr: [u8; 2],
}

pub const ETH_LEN: usize = size_of::<EthHdr>();
pub const IPV4_LEN: usize = size_of::<Ipv4Hdr>();
pub const IPV6_LEN: usize = size_of::<Ipv6Hdr>();
pub const TCP_LEN: usize = size_of::<TcpHdr>();
const VLAN_LEN: usize = size_of::<VlanHdr>();
/// The length of an IPv6 fragment header.
pub const IPV6_FRAGMENT_LEN: usize = 8;

/// The first 54 bytes of the frame most SYNs arrive in: no VLAN tag, an IPv4 header without
/// options, and the fixed part of the TCP header.
#[repr(C)]
pub struct PlainV4 {
    pub eth: EthHdr,
    pub ip: Ipv4Hdr,
    pub tcp: TcpHdr,
}

/// Offset of the TCP header in a [`PlainV4`] frame.
pub const PLAIN_L4: usize = ETH_LEN + IPV4_LEN;

/// Where the headers of a screened SYN lie in the frame. Offsets only: the RST builder, the
/// one user, finds the headers again, so the hot path keeps nothing alive for it.
#[derive(Clone, Copy)]
pub struct Syn {
    pub family: Family,
    /// Offset of the network header.
    pub l3: usize,
    /// Offset of the TCP header.
    pub l4: usize,
}

/// The network layer of a screened SYN.
#[derive(Clone, Copy)]
pub enum Family {
    V4,
    V6,
}

/// A header was truncated or invalid: the frame passes.
pub struct Unparsed;

/// Where the parser stands in the frame: the offset of the next header to read.
#[derive(Clone, Copy)]
pub struct Cursor {
    pub off: usize,
}

impl Cursor {
    /// At the Ethernet header.
    pub const START: Self = Self { off: 0 };
}

/// What the walk over IPv6 extension headers reads of one (RFC 8200 §4).
pub struct Ipv6Ext {
    pub next_header: u8,
    /// The length field, in units that depend on the header's kind.
    len: usize,
    /// Fragment offset and flags, in a fragment header.
    frag_off: [u8; 2],
}

impl Ipv6Ext {
    /// The length of a hop-by-hop options, routing or destination options header: 8-octet
    /// units, not counting the first.
    #[inline(always)]
    pub fn options_len(&self) -> usize {
        (self.len + 1) * 8
    }

    /// The length of an authentication header (RFC 4302): 4-octet units, minus 2.
    #[inline(always)]
    pub fn ah_len(&self) -> usize {
        (self.len + 2) * 4
    }

    /// Whether a fragment header belongs to a fragment other than the first, which carries no
    /// upper-layer header.
    #[inline(always)]
    pub fn later_fragment(&self) -> bool {
        be16(self.frag_off) & 0xfff8 != 0
    }
}

/// The frame as a [`PlainV4`], behind one bounds check, if it is one: untagged IPv4 with a
/// 20-byte header. The fast path of most SYNs; every other frame goes through the cursor.
#[inline(always)]
pub fn parse_plain_v4(ctx: &XdpContext) -> Option<*const PlainV4> {
    let plain = ptr_at::<PlainV4>(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the 54 bytes lie inside the frame.
    let (proto, version_ihl) = unsafe { ((*plain).eth.proto, (*plain).ip.version_ihl) };
    if be16(proto) == ETH_P_IPV4 && version_ihl == 0x45 {
        Some(plain)
    } else {
        None
    }
}

/// Reads the Ethernet header at the cursor; returns its EtherType as on the wire. (The caller
/// converts it: a `u16` from here lets LLVM reorder the VLAN tag comparisons that follow.)
#[inline(always)]
pub fn parse_ethhdr(ctx: &XdpContext, nh: &mut Cursor) -> Result<[u8; 2], Unparsed> {
    let eth = ptr_at::<EthHdr>(ctx, nh.off).ok_or(Unparsed)?;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let proto = unsafe { (*eth).proto };
    nh.off += ETH_LEN;
    Ok(proto)
}

/// Reads a VLAN tag at the cursor; returns the EtherType after it as on the wire, like
/// [`parse_ethhdr`].
#[inline(always)]
pub fn parse_vlanhdr(ctx: &XdpContext, nh: &mut Cursor) -> Result<[u8; 2], Unparsed> {
    let vlan = ptr_at::<VlanHdr>(ctx, nh.off).ok_or(Unparsed)?;
    // SAFETY: `ptr_at` checked that the tag lies inside the frame.
    let proto = unsafe { (*vlan).proto };
    nh.off += VLAN_LEN;
    Ok(proto)
}

/// Reads an IPv4 header at the cursor, its options included (version and IHL checked). The
/// reference must end before anything rewrites the frame.
#[inline(always)]
pub fn parse_iphdr<'a>(ctx: &'a XdpContext, nh: &mut Cursor) -> Result<&'a Ipv4Hdr, Unparsed> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, nh.off).ok_or(Unparsed)?;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let ip = unsafe { &*ip };
    if ip.version_ihl >> 4 != 4 {
        return Err(Unparsed);
    }
    let ihl = (ip.version_ihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(Unparsed);
    }
    let hdr_len = ihl * 4;
    if !has_bytes(ctx, nh.off, hdr_len) {
        return Err(Unparsed);
    }
    nh.off += hdr_len;
    Ok(ip)
}

/// Reads the fixed IPv6 header at the cursor (version checked). A pointer: the caller reads
/// each field where it needs it.
#[inline(always)]
pub fn parse_ip6hdr(ctx: &XdpContext, nh: &mut Cursor) -> Result<*const Ipv6Hdr, Unparsed> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, nh.off).ok_or(Unparsed)?;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    if unsafe { (*ip).version_class_flow[0] } >> 4 != 6 {
        return Err(Unparsed);
    }
    nh.off += IPV6_LEN;
    Ok(ip)
}

/// Reads the first four bytes of the IPv6 extension header at the cursor. The cursor stays:
/// the header's length depends on its kind, which the previous header names, and the caller
/// moves past it with [`Ipv6Ext::options_len`], [`Ipv6Ext::ah_len`] or [`IPV6_FRAGMENT_LEN`].
#[inline(always)]
pub fn parse_ip6exthdr(ctx: &XdpContext, nh: &Cursor) -> Result<Ipv6Ext, Unparsed> {
    let ext = ptr_at::<Ipv6ExtHdr>(ctx, nh.off).ok_or(Unparsed)?;
    // SAFETY: `ptr_at` checked that the four bytes lie inside the frame.
    let (next_header, len, frag_off) =
        unsafe { ((*ext).next_header, (*ext).len as usize, (*ext).frag_off) };
    Ok(Ipv6Ext {
        next_header,
        len,
        frag_off,
    })
}

/// Reads a TCP header at the cursor, its options included. The reference must end before
/// anything rewrites the frame.
#[inline(always)]
pub fn parse_tcphdr<'a>(ctx: &'a XdpContext, nh: &mut Cursor) -> Result<&'a TcpHdr, Unparsed> {
    let tcp = ptr_at::<TcpHdr>(ctx, nh.off).ok_or(Unparsed)?;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let tcp = unsafe { &*tcp };
    nh.off += tcp_hdr_len(ctx, tcp, nh.off)?;
    Ok(tcp)
}

/// The length of `tcp`, the TCP header at `l4`, with its options: the data offset is checked,
/// and the options must lie inside the frame too. [`parse_tcphdr`]'s check, for a header found
/// without the cursor.
#[inline(always)]
pub fn tcp_hdr_len(ctx: &XdpContext, tcp: &TcpHdr, l4: usize) -> Result<usize, Unparsed> {
    let doff = (tcp.doff >> 4) as usize;
    if doff < 5 || !has_bytes(ctx, l4, doff * 4) {
        return Err(Unparsed);
    }
    Ok(doff * 4)
}

/// A pointer to a `T` at `offset` bytes into the frame, if the whole `T` lies inside it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// The frame's bounds read afresh, for code that goes back to headers the parser checked (the
/// RST builder). With the bounds the parser used, the compiler drops checks it knows to pass
/// and derives the pointer anew, and the verifier, which tracks the checked range per pointer,
/// then rejects the access; volatile loads keep every check in place.
#[derive(Clone, Copy)]
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    /// The bounds as they are now.
    #[inline(always)]
    pub fn fresh(ctx: &XdpContext) -> Self {
        // SAFETY: `ctx.ctx` is the context the kernel passed to the program.
        let (start, end) = unsafe {
            (
                core::ptr::read_volatile(&(*ctx.ctx).data),
                core::ptr::read_volatile(&(*ctx.ctx).data_end),
            )
        };
        Self {
            start: start as usize,
            end: end as usize,
        }
    }

    /// A pointer to a `T` at `offset` bytes into the frame, if the whole `T` lies inside it.
    #[inline(always)]
    pub fn ptr_at<T>(self, offset: usize) -> Option<*mut T> {
        if self.start + offset + size_of::<T>() > self.end {
            return None;
        }
        Some((self.start + offset) as *mut T)
    }

    /// The frame's length in bytes.
    #[inline(always)]
    pub fn len(self) -> usize {
        self.end - self.start
    }
}

/// Whether `len` bytes starting at `offset` lie inside the frame.
#[inline(always)]
fn has_bytes(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    ctx.data() + offset + len <= ctx.data_end()
}

#[inline(always)]
pub fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

#[inline(always)]
pub fn be32(bytes: [u8; 4]) -> u32 {
    u32::from_be_bytes(bytes)
}
