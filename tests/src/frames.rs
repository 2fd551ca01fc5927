//! Crafted Ethernet frames for the XDP tests and benchmarks: a declarative [`FrameSpec`] that
//! builds a frame with correct lengths and checksums, and checksum verifiers for replies.

use std::net::IpAddr;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// An IPv6 extension header placed before the transport header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    /// Hop-by-hop options (0), routing (43) or destination options (60): `len8` is the length
    /// field, the header is `(len8 + 1) * 8` bytes.
    Options { kind: u8, len8: u8 },
    /// Authentication header (51): `(len4 + 2) * 4` bytes.
    Auth { len4: u8 },
    /// Fragment header (44).
    Fragment { offset: u16, more: bool },
}

/// An IPv4 fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset in 8-byte units.
    pub offset: u16,
    pub more: bool,
}

/// Everything that shapes a test frame.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// `(ethertype, tci)` of each VLAN tag, outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 options (padded to 4 bytes); ignored for IPv6.
    pub ipv4_options: Vec<u8>,
    pub ipv4_fragment: Option<Fragment>,
    /// IPv6 extension headers, in order.
    pub ipv6_ext: Vec<ExtHeader>,
    /// Transport protocol number (TCP unless a test says otherwise).
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// TCP options (padded to 4 bytes).
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl FrameSpec {
    /// A TCP SYN from `src` port 40000 to `dst` port `dport`, with an MSS option as real
    /// stacks send.
    pub fn syn(src: IpAddr, dst: IpAddr, dport: u16) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlans: Vec::new(),
            src,
            dst,
            ipv4_options: Vec::new(),
            ipv4_fragment: None,
            ipv6_ext: Vec::new(),
            protocol: IPPROTO_TCP,
            src_port: 40000,
            dst_port: dport,
            seq: 0x1234_5678,
            ack: 0,
            flags: TCP_SYN,
            tcp_options: vec![2, 4, 0x05, 0xb4],
            payload: Vec::new(),
        }
    }

    pub fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }

    pub fn vlan(mut self, ethertype: u16, tci: u16) -> Self {
        self.vlans.push((ethertype, tci));
        self
    }

    /// Builds the frame.
    pub fn build(&self) -> Vec<u8> {
        let transport = self.transport();
        let mut frame = Vec::with_capacity(128 + transport.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        let ethertype = match self.src {
            IpAddr::V4(_) => ETH_P_IPV4,
            IpAddr::V6(_) => ETH_P_IPV6,
        };
        for (tpid, tci) in &self.vlans {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&tci.to_be_bytes());
        }
        frame.extend_from_slice(&ethertype.to_be_bytes());
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut options = self.ipv4_options.clone();
                options.resize(options.len().next_multiple_of(4), 0);
                let ihl = 5 + options.len() / 4;
                let mut ip = vec![
                    0x40 | ihl as u8,
                    0,
                    0,
                    0, // total length
                    0x12,
                    0x34, // id
                    0,
                    0, // flags + fragment offset
                    64,
                    self.protocol,
                    0,
                    0, // checksum
                ];
                let total = (ihl * 4 + transport.len()) as u16;
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                let frag = match self.ipv4_fragment {
                    Some(f) => (f.offset & 0x1fff) | if f.more { 0x2000 } else { 0 },
                    None => 0x4000, // don't fragment
                };
                ip[6..8].copy_from_slice(&frag.to_be_bytes());
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                ip.extend_from_slice(&options);
                let check = checksum(&ip, 0);
                ip[10..12].copy_from_slice(&check.to_be_bytes());
                frame.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let ext = self.ext_headers();
                let payload_len = (ext.len() + transport.len()) as u16;
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&payload_len.to_be_bytes());
                let first = self.ipv6_ext.first().map_or(self.protocol, ext_kind);
                frame.push(first);
                frame.push(64);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(&ext);
            }
            _ => panic!("source and destination must be the same family"),
        }
        frame.extend_from_slice(&transport);
        frame
    }

    fn ext_headers(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, ext) in self.ipv6_ext.iter().enumerate() {
            let next = self.ipv6_ext.get(i + 1).map_or(self.protocol, ext_kind);
            match *ext {
                ExtHeader::Options { len8, .. } => {
                    let len = (len8 as usize + 1) * 8;
                    let mut h = vec![0u8; len];
                    h[0] = next;
                    h[1] = len8;
                    // PadN filling the rest of the header.
                    h[2] = 1;
                    h[3] = (len - 4) as u8;
                    out.extend_from_slice(&h);
                }
                ExtHeader::Auth { len4 } => {
                    let len = (len4 as usize + 2) * 4;
                    let mut h = vec![0u8; len];
                    h[0] = next;
                    h[1] = len4;
                    out.extend_from_slice(&h);
                }
                ExtHeader::Fragment { offset, more } => {
                    let field = (offset << 3) | u16::from(more);
                    out.extend_from_slice(&[next, 0]);
                    out.extend_from_slice(&field.to_be_bytes());
                    out.extend_from_slice(&[0, 0, 0, 1]);
                }
            }
        }
        out
    }

    fn transport(&self) -> Vec<u8> {
        if self.protocol != IPPROTO_TCP {
            let mut udp = Vec::new();
            udp.extend_from_slice(&self.src_port.to_be_bytes());
            udp.extend_from_slice(&self.dst_port.to_be_bytes());
            udp.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            udp.extend_from_slice(&[0, 0]);
            udp.extend_from_slice(&self.payload);
            return udp;
        }
        let mut options = self.tcp_options.clone();
        options.resize(options.len().next_multiple_of(4), 0);
        let doff = 5 + options.len() / 4;
        let mut tcp = Vec::with_capacity(doff * 4 + self.payload.len());
        tcp.extend_from_slice(&self.src_port.to_be_bytes());
        tcp.extend_from_slice(&self.dst_port.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push((doff as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&64240u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&options);
        tcp.extend_from_slice(&self.payload);
        let pseudo = pseudo_header_sum(self.src, self.dst, IPPROTO_TCP, tcp.len());
        let check = checksum(&tcp, pseudo);
        tcp[16..18].copy_from_slice(&check.to_be_bytes());
        tcp
    }
}

fn ext_kind(ext: &ExtHeader) -> u8 {
    match ext {
        ExtHeader::Options { kind, .. } => *kind,
        ExtHeader::Auth { .. } => 51,
        ExtHeader::Fragment { .. } => 44,
    }
}

/// One's complement sum of the pseudo header (RFC 9293 §3.1, RFC 8200 §8.1), unfolded.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u32 {
    let mut bytes = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&[0, protocol]);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&(len as u32).to_be_bytes());
            bytes.extend_from_slice(&[0, 0, 0, protocol]);
        }
        _ => panic!("mixed families"),
    }
    sum16(&bytes)
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The Internet checksum of `bytes` plus an initial unfolded `sum`.
pub fn checksum(bytes: &[u8], sum: u32) -> u16 {
    let mut sum = sum + sum16(bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether `bytes` (a header with its checksum field filled) checks out: the sum over it,
/// checksum included, folds to zero.
pub fn verifies(bytes: &[u8], pseudo: u32) -> bool {
    checksum(bytes, pseudo) == 0
}

/// Length of the L2 header (Ethernet plus VLAN tags) of a frame built by [`FrameSpec`].
pub fn l2_len(spec: &FrameSpec) -> usize {
    14 + 4 * spec.vlans.len()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn syn_v4_has_valid_checksums_and_lengths() {
        let spec = FrameSpec::syn(
            IpAddr::V4(Ipv4Addr::new(10, 251, 0, 10)),
            IpAddr::V4(Ipv4Addr::new(10, 251, 0, 1)),
            25,
        );
        let f = spec.build();
        assert_eq!(f.len(), 14 + 20 + 24);
        assert!(verifies(&f[14..34], 0));
        let pseudo = pseudo_header_sum(spec.src, spec.dst, IPPROTO_TCP, 24);
        assert!(verifies(&f[34..], pseudo));
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 40000);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 25);
        assert_eq!(f[47], TCP_SYN);
    }

    #[test]
    fn syn_v6_with_extensions_chains_next_headers() {
        let mut spec = FrameSpec::syn(
            IpAddr::V6("fd00:251::10".parse::<Ipv6Addr>().unwrap()),
            IpAddr::V6("fd00:251::1".parse::<Ipv6Addr>().unwrap()),
            25,
        )
        .vlan(ETH_P_8021AD, 100)
        .vlan(ETH_P_8021Q, 200);
        spec.ipv6_ext = vec![
            ExtHeader::Options { kind: 0, len8: 0 },
            ExtHeader::Fragment {
                offset: 0,
                more: false,
            },
        ];
        let f = spec.build();
        let l3 = l2_len(&spec);
        assert_eq!(u16::from_be_bytes([f[l3 - 2], f[l3 - 1]]), ETH_P_IPV6);
        assert_eq!(f[l3 + 6], 0, "first next header is hop-by-hop");
        assert_eq!(f[l3 + 40], 44, "hop-by-hop points at the fragment header");
        assert_eq!(f[l3 + 48], IPPROTO_TCP, "fragment header points at TCP");
        let tcp = &f[l3 + 56..];
        let pseudo = pseudo_header_sum(spec.src, spec.dst, IPPROTO_TCP, tcp.len());
        assert!(verifies(tcp, pseudo));
    }
}
