//! An independent reference for the XDP program's verdicts: plain slice code written from
//! the documented rules (screen-ebpf/src/screen.rs and parse.rs), and a world of static and
//! dynamic entries to load into the program and to draw sources from. The property test
//! (`tests/property.rs`) and the `xdp_parser` fuzz target (`screen-user/fuzz/`) hold the
//! program to it.
//!
//! The rules: up to two VLAN tags (0x8100, 0x88a8); IPv4 with version 4, IHL >= 5 and the
//! whole header present, non-first fragments passed; IPv6 with version 6 and at most six
//! extension headers (0, 43, 60: `(len + 1) * 8` bytes; 51: `(len + 2) * 4`; 44: 8 bytes,
//! non-first fragments passed); a TCP header of at least 20 bytes, data offset >= 5 and all
//! `doff * 4` bytes present; SYN without ACK to a protected port; then allow over static deny
//! over an unexpired dynamic entry.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use screen_common::{Origin, Stat};
use screen_user::kernel::{self, KernelAction, StaticList};

use crate::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6},
    rng::SplitMix64,
    xdp::{ScreenUnderTest, XDP_DROP, XDP_PASS, XDP_TX, action_name, check_rst_reply, hex},
};

/// The server's addresses and protected ports in the reference's world.
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x251, 0, 0, 0, 0, 0, 1);
pub const PROTECTED_PORTS: [u16; 2] = [25, 587];

/// A dynamic deny entry as the reference sees it.
#[derive(Clone, Copy, Debug)]
pub struct DynamicEntry {
    pub net: IpNet,
    pub live: bool,
}

/// The lists loaded into the program, and the pools that sources are drawn from.
pub struct World {
    pub v6_prefix: u8,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub dynamic: Vec<DynamicEntry>,
}

impl World {
    pub fn new(rng: &mut SplitMix64) -> Self {
        let nets =
            |list: &[&str]| -> Vec<IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
        let v6_prefix = rng.pick(&[56, 64, 80, 128]);
        let mut dynamic = Vec::new();
        let mut add = |addr: IpAddr, live: bool| {
            let net = match addr {
                IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, 32).unwrap()),
                IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, v6_prefix).unwrap().trunc()),
            };
            dynamic.push(DynamicEntry { net, live });
        };
        for i in 1..=16 {
            add(Ipv4Addr::new(10, 251, 200, i).into(), true);
        }
        for i in 1..=4 {
            add(Ipv4Addr::new(10, 251, 201, i).into(), false);
        }
        // Inside the static deny prefix (static wins) and inside an allow prefix (allow wins).
        add(Ipv4Addr::new(10, 251, 65, 5).into(), true);
        add(Ipv4Addr::new(10, 251, 64, 200).into(), true);
        for i in 0..8 {
            add(v6(0xc000 + i * 0x100, rng.next_u64()).into(), true);
        }
        for i in 0..4 {
            add(v6(0xd000 + i * 0x100, rng.next_u64()).into(), false);
        }
        add(v6(0x5000, 1).into(), true);
        add(v6(0x4100, 0x99).into(), true);
        Self {
            v6_prefix,
            allow: nets(&[
                "10.251.64.128/25",
                "10.251.100.7/32",
                "fd00:251:0:4100::/56",
                "fd00:251:0:4242::42/128",
            ]),
            deny: nets(&[
                "10.251.64.0/20",
                "10.251.100.7/32",
                "10.251.101.0/31",
                "fd00:251:0:4000::/50",
                "fd00:251:0:9900::7/128",
                "fd00:251:0:4242::/64",
            ]),
            dynamic,
        }
    }

    /// A source address: denied, allowed, dynamically denied, expired, or nobody in particular.
    pub fn source(&self, rng: &mut SplitMix64, family_v6: bool) -> IpAddr {
        let of_family = |net: &&IpNet| net.addr().is_ipv6() == family_v6;
        let nets: Vec<&IpNet> = match rng.below(5) {
            0 | 1 => self.deny.iter().filter(of_family).collect(),
            2 => self.allow.iter().filter(of_family).collect(),
            3 => self
                .dynamic
                .iter()
                .map(|e| &e.net)
                .filter(of_family)
                .collect(),
            _ => Vec::new(),
        };
        if !nets.is_empty() {
            let net = nets[rng.below(nets.len())];
            return inside(rng, net);
        }
        // Nobody in particular: below every listed prefix.
        if family_v6 {
            v6(rng.below(0x4000) as u16, rng.next_u64()).into()
        } else {
            Ipv4Addr::new(10, 251, rng.below(64) as u8, rng.byte()).into()
        }
    }
}

/// `fd00:251:0:<subnet>::/64` with interface identifier `iid`.
pub fn v6(subnet: u16, iid: u64) -> Ipv6Addr {
    Ipv6Addr::from((0xfd00_0251_0000_u128 << 80) | (u128::from(subnet) << 64) | u128::from(iid))
}

/// A random address inside `net`.
pub fn inside(rng: &mut SplitMix64, net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host = u32::from(n.hostmask()) & rng.next_u64() as u32;
            Ipv4Addr::from(u32::from(n.network()) | host).into()
        }
        IpNet::V6(n) => {
            let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            Ipv6Addr::from(u128::from(n.network()) | (u128::from(n.hostmask()) & random)).into()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    Static,
    Dynamic,
}

/// Where the reference says a frame ends up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Not IPv4 or IPv6.
    NotIp,
    /// A header is cut short or invalid.
    Unparsed,
    /// A non-first fragment.
    Fragment,
    /// IP, but not a TCP SYN without ACK to a protected port.
    NotScreened,
    Allowed,
    Unlisted,
    Expired,
    /// A denied SYN; `plain` when it has no IPv4 options or IPv6 extension headers, the
    /// frames the RST action answers. `l3` is where its network header starts.
    Denied {
        list: List,
        l3: usize,
        plain: bool,
    },
}

impl Path {
    pub const KINDS: [&str; 8] = [
        "not_ip",
        "unparsed",
        "fragment",
        "not_screened",
        "allowed",
        "unlisted",
        "expired",
        "denied",
    ];

    pub fn kind(self) -> usize {
        match self {
            Path::NotIp => 0,
            Path::Unparsed => 1,
            Path::Fragment => 2,
            Path::NotScreened => 3,
            Path::Allowed => 4,
            Path::Unlisted => 5,
            Path::Expired => 6,
            Path::Denied { .. } => 7,
        }
    }

    /// The XDP action this path must end in, and the counters it moves.
    pub fn expected(self, rst: bool) -> (u32, &'static [Stat]) {
        use Stat::*;
        match self {
            Path::NotIp | Path::NotScreened => (XDP_PASS, &[]),
            Path::Unparsed => (XDP_PASS, &[ParseFailed]),
            Path::Fragment => (XDP_PASS, &[Fragments]),
            Path::Allowed => (XDP_PASS, &[SynScreened, PassedAllow]),
            Path::Unlisted => (XDP_PASS, &[SynScreened, Passed]),
            Path::Expired => (XDP_PASS, &[SynScreened, Expired, Passed]),
            Path::Denied { list, plain, .. } => match (list, rst && plain) {
                (List::Static, false) => (XDP_DROP, &[SynScreened, DropStatic]),
                (List::Dynamic, false) => (XDP_DROP, &[SynScreened, DropDynamic]),
                (List::Static, true) => (XDP_TX, &[SynScreened, RstStatic]),
                (List::Dynamic, true) => (XDP_TX, &[SynScreened, RstDynamic]),
            },
        }
    }
}

pub struct Reference<'a> {
    pub world: &'a World,
    pub frame: &'a [u8],
}

impl Reference<'_> {
    fn has(&self, offset: usize, len: usize) -> bool {
        offset + len <= self.frame.len()
    }

    fn be16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.frame[at], self.frame[at + 1]])
    }

    pub fn path(&self) -> Path {
        let mut ethertype = self.be16(12);
        let mut l3 = 14;
        for _ in 0..2 {
            if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
                break;
            }
            if !self.has(l3, 4) {
                return Path::Unparsed;
            }
            ethertype = self.be16(l3 + 2);
            l3 += 4;
        }
        match ethertype {
            ETH_P_IPV4 => self.ipv4(l3),
            ETH_P_IPV6 => self.ipv6(l3),
            ETH_P_8021Q | ETH_P_8021AD => Path::Unparsed,
            _ => Path::NotIp,
        }
    }

    fn ipv4(&self, l3: usize) -> Path {
        if !self.has(l3, 20) || self.frame[l3] >> 4 != 4 {
            return Path::Unparsed;
        }
        let header = usize::from(self.frame[l3] & 0x0f) * 4;
        if header < 20 || !self.has(l3, header) {
            return Path::Unparsed;
        }
        if self.be16(l3 + 6) & 0x1fff != 0 {
            return Path::Fragment;
        }
        if self.frame[l3 + 9] != 6 {
            return Path::NotScreened;
        }
        let src: [u8; 4] = self.frame[l3 + 12..l3 + 16].try_into().unwrap();
        self.tcp(l3, l3 + header, IpAddr::from(src), header == 20)
    }

    fn ipv6(&self, l3: usize) -> Path {
        if !self.has(l3, 40) || self.frame[l3] >> 4 != 6 {
            return Path::Unparsed;
        }
        let mut next = self.frame[l3 + 6];
        let mut l4 = l3 + 40;
        for _ in 0..6 {
            if next == 6 {
                break;
            }
            if !matches!(next, 0 | 43 | 44 | 51 | 60) {
                return Path::NotScreened;
            }
            if !self.has(l4, 4) {
                return Path::Unparsed;
            }
            let ext_next = self.frame[l4];
            let ext_len = usize::from(self.frame[l4 + 1]);
            l4 += match next {
                0 | 43 | 60 => (ext_len + 1) * 8,
                51 => (ext_len + 2) * 4,
                44 if self.be16(l4 + 2) & 0xfff8 != 0 => return Path::Fragment,
                44 => 8,
                _ => return Path::NotScreened,
            };
            next = ext_next;
        }
        if next != 6 {
            return Path::Unparsed;
        }
        let src: [u8; 16] = self.frame[l3 + 8..l3 + 24].try_into().unwrap();
        self.tcp(l3, l4, IpAddr::from(src), l4 == l3 + 40)
    }

    fn tcp(&self, l3: usize, l4: usize, src: IpAddr, plain: bool) -> Path {
        if !self.has(l4, 20) {
            return Path::Unparsed;
        }
        let header = usize::from(self.frame[l4 + 12] >> 4) * 4;
        if header < 20 || !self.has(l4, header) {
            return Path::Unparsed;
        }
        let flags = self.frame[l4 + 13];
        let syn_without_ack = flags & 0x02 != 0 && flags & 0x10 == 0;
        if !syn_without_ack || !PROTECTED_PORTS.contains(&self.be16(l4 + 2)) {
            return Path::NotScreened;
        }
        let world = self.world;
        if world.allow.iter().any(|net| net.contains(&src)) {
            return Path::Allowed;
        }
        if world.deny.iter().any(|net| net.contains(&src)) {
            return Path::Denied {
                list: List::Static,
                l3,
                plain,
            };
        }
        match world.dynamic.iter().find(|e| e.net.contains(&src)) {
            Some(DynamicEntry { live: true, .. }) => Path::Denied {
                list: List::Dynamic,
                l3,
                plain,
            },
            Some(DynamicEntry { live: false, .. }) => Path::Expired,
            None => Path::Unlisted,
        }
    }
}

impl World {
    /// Configures `screen` with `action` and loads this world's lists into it; the dynamic
    /// entries meant to be expired are past their expiry when this returns.
    pub fn install(&self, screen: &mut ScreenUnderTest, action: KernelAction) {
        self.configure(screen, action);
        for (list, nets) in [
            (StaticList::Allow, &self.allow),
            (StaticList::Deny, &self.deny),
        ] {
            for &net in nets {
                screen
                    .maps
                    .add_static(list, net, Origin::ListFile)
                    .expect("adding a static entry");
            }
        }
        for entry in &self.dynamic {
            let ttl = if entry.live {
                Duration::from_secs(3600)
            } else {
                Duration::from_nanos(1)
            };
            screen
                .maps
                .add_dynamic(entry.net, ttl, Origin::Policy, 1)
                .expect("adding a dynamic entry");
        }
        // Past the expiry of the 1 ns entries.
        thread::sleep(Duration::from_millis(20));
    }

    /// Sets the protected ports, `action` and the IPv6 prefix of this world.
    pub fn configure(&self, screen: &mut ScreenUnderTest, action: KernelAction) {
        kernel::configure(
            &mut screen.maps,
            &PROTECTED_PORTS,
            action,
            u32::from(self.v6_prefix),
        )
        .expect("configuring");
    }
}

/// Runs `frame` through the program and holds the verdict to the reference's: the action,
/// and the frame unchanged or, for a RST, a correct reply. Returns the reference's path and
/// the counters it moves; the error says what differs, with the frame in hex.
pub fn check_frame(
    screen: &ScreenUnderTest,
    world: &World,
    frame: &[u8],
    rst: bool,
) -> Result<(Path, u32, &'static [Stat]), String> {
    let path = Reference { world, frame }.path();
    let (action, moved) = path.expected(rst);
    let outcome = screen.verdict(frame);
    if outcome.action != action {
        return Err(format!(
            "the program returned {}, the reference expects {} ({path:?})\n  frame {}",
            action_name(outcome.action),
            action_name(action),
            hex(frame),
        ));
    }
    match path {
        Path::Denied { l3, .. } if action == XDP_TX => {
            check_rst_reply(frame, l3, &outcome.frame).map_err(|wrong| {
                format!(
                    "bad RST reply: {wrong}\n  SYN   {}\n  reply {}",
                    hex(frame),
                    hex(&outcome.frame)
                )
            })?;
        }
        _ if outcome.frame != frame => {
            return Err(format!(
                "{} changed the frame\n  in  {}\n  out {}",
                action_name(action),
                hex(frame),
                hex(&outcome.frame)
            ));
        }
        _ => {}
    }
    Ok((path, action, moved))
}
