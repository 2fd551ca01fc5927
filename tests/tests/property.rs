//! The XDP program against an independent reference parser, on hundreds of thousands of random
//! and mutated frames: for every frame the kernel's verdict must be the reference's, and over
//! the run the program's counters must add up to the reference's tally of branches.
//!
//! The reference below is plain slice code written from the documented rules (screen-ebpf/src/screen.rs and parse.rs):
//! up to two VLAN tags (0x8100, 0x88a8); IPv4 with version 4, IHL >= 5 and the whole header
//! present, non-first fragments passed; IPv6 with version 6 and at most six extension headers
//! (0, 43, 60: `(len + 1) * 8` bytes; 51: `(len + 2) * 4`; 44: 8 bytes, non-first fragments
//! passed); a TCP header of at least 20 bytes, data offset >= 5 and all `doff * 4` bytes
//! present; SYN without ACK to a protected port; then allow over static deny over an
//! unexpired dynamic entry.
//!
//! The run is deterministic for a seed. The seed is printed; `SCREEN_PROPERTY_SEED=<n>` (decimal
//! or 0x-hex) replays a run.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use screen_common::{Origin, Stat};
use screen_tests::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, ExtHeader, Fragment, FrameSpec},
    require_root,
    rng::SplitMix64,
    xdp::{
        Counters, ScreenUnderTest, XDP_DROP, XDP_PASS, XDP_TX, action_name, check_rst_reply, hex,
    },
};
use screen_user::kernel::{self, KernelAction, StaticList};

/// Frames run with the drop action, then with the RST action.
const DROP_PHASE_FRAMES: usize = 400_000;
const RST_PHASE_FRAMES: usize = 100_000;

const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x251, 0, 0, 0, 0, 0, 1);
const PROTECTED_PORTS: [u16; 2] = [25, 587];

fn seed() -> u64 {
    match std::env::var("SCREEN_PROPERTY_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("SCREEN_PROPERTY_SEED={text}: {e}"))
        }
        Err(_) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970");
            now.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
        }
    }
}

/// A dynamic deny entry as the reference sees it.
#[derive(Clone, Copy, Debug)]
struct DynamicEntry {
    net: IpNet,
    live: bool,
}

/// The lists loaded into the program, and the pools that sources are drawn from.
struct World {
    v6_prefix: u8,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    dynamic: Vec<DynamicEntry>,
}

impl World {
    fn new(rng: &mut SplitMix64) -> Self {
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
    fn source(&self, rng: &mut SplitMix64, family_v6: bool) -> IpAddr {
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
fn v6(subnet: u16, iid: u64) -> Ipv6Addr {
    Ipv6Addr::from((0xfd00_0251_0000_u128 << 80) | (u128::from(subnet) << 64) | u128::from(iid))
}

/// A random address inside `net`.
fn inside(rng: &mut SplitMix64, net: &IpNet) -> IpAddr {
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

// ---- The reference parser ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum List {
    Static,
    Dynamic,
}

/// Where the reference says a frame ends up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
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
    const KINDS: [&str; 8] = [
        "not_ip",
        "unparsed",
        "fragment",
        "not_screened",
        "allowed",
        "unlisted",
        "expired",
        "denied",
    ];

    fn kind(self) -> usize {
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
    fn expected(self, rst: bool) -> (u32, &'static [Stat]) {
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

struct Reference<'a> {
    world: &'a World,
    frame: &'a [u8],
}

impl Reference<'_> {
    fn has(&self, offset: usize, len: usize) -> bool {
        offset + len <= self.frame.len()
    }

    fn be16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.frame[at], self.frame[at + 1]])
    }

    fn path(&self) -> Path {
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

// ---- Frame generation ----

fn random_frame(rng: &mut SplitMix64) -> Vec<u8> {
    let len = rng.range(14, 199);
    let mut frame = rng.bytes(len);
    // Half get a plausible ethertype and IP version, so that random bytes reach the IP and
    // TCP parsers and not only the ethertype switch.
    if rng.percent(50) {
        let ethertype = rng.pick(&[ETH_P_IPV4, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD]);
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        if len > 14 {
            frame[14] = match ethertype {
                ETH_P_IPV4 => 0x40 | (frame[14] & 0x0f),
                ETH_P_IPV6 => 0x60 | (frame[14] & 0x0f),
                _ => frame[14],
            };
        }
    }
    frame
}

fn ext_header(rng: &mut SplitMix64) -> ExtHeader {
    match rng.below(5) {
        0..=2 => ExtHeader::Options {
            kind: rng.pick(&[0, 43, 60]),
            len8: rng.range(0, 3) as u8,
        },
        3 => ExtHeader::Auth {
            len4: rng.range(0, 6) as u8,
        },
        _ => ExtHeader::Fragment {
            offset: if rng.percent(60) {
                0
            } else {
                rng.range(1, 0x1fff) as u16
            },
            more: rng.percent(50),
        },
    }
}

fn valid_frame(rng: &mut SplitMix64, world: &World) -> Vec<u8> {
    let family_v6 = rng.percent(50);
    let src = world.source(rng, family_v6);
    let dst = if family_v6 {
        IpAddr::from(SERVER_V6)
    } else {
        IpAddr::from(SERVER_V4)
    };
    let dport = match rng.below(10) {
        0..=4 => 25,
        5 | 6 => 587,
        7 => rng.pick(&[80, 465, 24, 26, 2525]),
        _ => rng.next_u64() as u16,
    };
    let mut spec = FrameSpec::syn(src, dst, dport);
    spec.src_port = rng.next_u64() as u16;
    spec.seq = rng.next_u64() as u32;
    let tags = match rng.below(20) {
        0..=9 => 0,
        10..=14 => 1,
        15..=18 => 2,
        _ => 3,
    };
    for _ in 0..tags {
        spec = spec.vlan(
            rng.pick(&[ETH_P_8021Q, ETH_P_8021AD]),
            rng.next_u64() as u16,
        );
    }
    if rng.percent(25) {
        spec.flags = rng.byte();
    }
    if rng.percent(5) {
        let any = rng.byte();
        spec.protocol = rng.pick(&[17, 1, 58, 132, any]);
    }
    let options = rng.range(0, 40);
    spec.tcp_options = if rng.percent(50) {
        rng.bytes(options)
    } else {
        vec![2, 4, 0x05, 0xb4]
    };
    if rng.percent(30) {
        let len = rng.range(1, 32);
        spec.payload = rng.bytes(len);
    }
    if family_v6 {
        if rng.percent(40) {
            let count = rng.range(1, 8);
            spec.ipv6_ext = (0..count).map(|_| ext_header(rng)).collect();
        }
    } else {
        if rng.percent(20) {
            let len = rng.range(1, 40);
            spec.ipv4_options = rng.bytes(len);
        }
        if rng.percent(10) {
            spec.ipv4_fragment = Some(Fragment {
                offset: if rng.percent(50) {
                    0
                } else {
                    rng.range(1, 0x1fff) as u16
                },
                more: rng.percent(50),
            });
        }
    }
    spec.build()
}

/// No damage (40%), or one to three: a flipped bit or a replaced byte among the first 96 bytes,
/// where the headers are, a cut, or garbage appended.
fn mutate(rng: &mut SplitMix64, frame: &mut Vec<u8>) {
    let damages = if rng.percent(40) { 0 } else { rng.range(1, 3) };
    for _ in 0..damages {
        let headers = frame.len().min(96);
        match rng.below(4) {
            0 => {
                let at = rng.below(headers);
                frame[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(headers);
                frame[at] = rng.byte();
            }
            2 => {
                let len = rng.range(14, frame.len());
                frame.truncate(len);
            }
            _ => {
                let len = rng.range(1, 40);
                frame.extend(rng.bytes(len));
            }
        }
    }
}

fn next_frame(rng: &mut SplitMix64, world: &World) -> Vec<u8> {
    match rng.below(10) {
        0 | 1 => {
            let len = rng.range(14, 199);
            rng.bytes(len)
        }
        2 => random_frame(rng),
        _ => {
            let mut frame = valid_frame(rng, world);
            mutate(rng, &mut frame);
            frame
        }
    }
}

// ---- The property ----

struct Tally {
    paths: [usize; Path::KINDS.len()],
    actions: [usize; 4],
    counters: Counters,
}

impl Tally {
    fn new() -> Self {
        Self {
            paths: [0; Path::KINDS.len()],
            actions: [0; 4],
            counters: Counters::default(),
        }
    }
}

fn run_phase(
    screen: &ScreenUnderTest,
    world: &World,
    rng: &mut SplitMix64,
    seed: u64,
    rst: bool,
    frames: usize,
) -> Tally {
    let mut tally = Tally::new();
    for index in 0..frames {
        let frame = next_frame(rng, world);
        let path = Reference {
            world,
            frame: &frame,
        }
        .path();
        let (action, moved) = path.expected(rst);
        let outcome = screen.verdict(&frame);
        let phase = if rst { "rst" } else { "drop" };
        if outcome.action != action {
            panic!(
                "seed {seed:#x}, {phase} phase, frame {index}: the program returned {}, the \
                 reference expects {} ({path:?})\n  frame {}\n  replay: \
                 SCREEN_PROPERTY_SEED={seed:#x} cargo test -p screen-tests --test property",
                action_name(outcome.action),
                action_name(action),
                hex(&frame),
            );
        }
        match path {
            Path::Denied { l3, .. } if action == XDP_TX => {
                if let Err(wrong) = check_rst_reply(&frame, l3, &outcome.frame) {
                    panic!(
                        "seed {seed:#x}, {phase} phase, frame {index}: bad RST reply: {wrong}\n  \
                         SYN   {}\n  reply {}",
                        hex(&frame),
                        hex(&outcome.frame)
                    );
                }
            }
            _ => assert!(
                outcome.frame == frame,
                "seed {seed:#x}, {phase} phase, frame {index}: {} changed the frame\n  in  \
                 {}\n  out {}",
                action_name(action),
                hex(&frame),
                hex(&outcome.frame)
            ),
        }
        tally.paths[path.kind()] += 1;
        tally.actions[action as usize] += 1;
        tally.counters.0[Stat::Frames as usize] += 1;
        for &stat in moved {
            tally.counters.0[stat as usize] += 1;
        }
    }
    tally
}

fn report(phase: &str, tally: &Tally) {
    let paths: Vec<String> = Path::KINDS
        .iter()
        .zip(tally.paths)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    println!(
        "{phase}: pass {}, drop {}, tx {}; paths: {}",
        tally.actions[XDP_PASS as usize],
        tally.actions[XDP_DROP as usize],
        tally.actions[XDP_TX as usize],
        paths.join(", ")
    );
}

#[test]
fn verdicts_match_the_reference_parser() {
    if !require_root("verdicts_match_the_reference_parser") {
        return;
    }
    let started = Instant::now();
    let seed = seed();
    println!("seed {seed:#x} (replay with SCREEN_PROPERTY_SEED={seed:#x})");
    let mut rng = SplitMix64::seeded(seed);
    let world = World::new(&mut rng);
    println!("IPv6 dynamic prefix /{}", world.v6_prefix);

    let mut screen = ScreenUnderTest::load().expect("loading the XDP program");
    kernel::configure(
        &mut screen.maps,
        &PROTECTED_PORTS,
        KernelAction::Drop,
        u32::from(world.v6_prefix),
    )
    .expect("configuring");
    for (list, nets) in [
        (StaticList::Allow, &world.allow),
        (StaticList::Deny, &world.deny),
    ] {
        for &net in nets {
            screen
                .maps
                .add_static(list, net, Origin::ListFile)
                .expect("adding a static entry");
        }
    }
    for entry in &world.dynamic {
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

    let drop_phase = run_phase(&screen, &world, &mut rng, seed, false, DROP_PHASE_FRAMES);
    report("drop action", &drop_phase);
    kernel::configure(
        &mut screen.maps,
        &PROTECTED_PORTS,
        KernelAction::Rst,
        u32::from(world.v6_prefix),
    )
    .expect("configuring");
    let rst_phase = run_phase(&screen, &world, &mut rng, seed, true, RST_PHASE_FRAMES);
    report("rst action", &rst_phase);

    let mut expected = drop_phase.counters;
    for stat in Stat::ALL {
        expected.0[stat as usize] += rst_phase.counters[stat];
    }
    assert_eq!(
        screen.counters(),
        expected,
        "seed {seed:#x}: the program's counters against the reference's tally"
    );

    // Not vacuous: every branch was taken, and many frames were denied.
    for (name, n) in Path::KINDS
        .iter()
        .zip(drop_phase.paths)
        .chain(Path::KINDS.iter().zip(rst_phase.paths))
    {
        assert!(
            n >= 50,
            "seed {seed:#x}: only {n} frames took the {name} path"
        );
    }
    let dropped = drop_phase.actions[XDP_DROP as usize];
    assert!(
        dropped >= DROP_PHASE_FRAMES / 20,
        "seed {seed:#x}: only {dropped} of {DROP_PHASE_FRAMES} frames dropped"
    );
    let answered = rst_phase.actions[XDP_TX as usize];
    assert!(
        answered >= RST_PHASE_FRAMES / 40,
        "seed {seed:#x}: only {answered} of {RST_PHASE_FRAMES} frames answered with RST"
    );
    println!(
        "{} frames in {:.1?}",
        DROP_PHASE_FRAMES + RST_PHASE_FRAMES,
        started.elapsed()
    );
}
