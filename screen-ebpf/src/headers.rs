//! Wire headers as byte arrays (no alignment assumptions) and a bounds-checked cursor over the
//! frame, one small step per header in the manner of xdp-tools' `parsing_helpers.h`.

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

/// A pointer to a `T` at `offset` bytes into the frame, if the whole `T` lies inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
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
pub fn has_bytes(ctx: &XdpContext, offset: usize, len: usize) -> bool {
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
