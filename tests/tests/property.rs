//! The XDP program against an independent reference parser, on hundreds of thousands of random
//! and mutated frames: for every frame the kernel's verdict must be the reference's, and over
//! the run the program's counters must add up to the reference's tally of branches.
//!
//! The reference (`screen_tests::reference`) is plain slice code written from the documented
//! rules; the `xdp_parser` fuzz target holds the program to the same reference.
//!
//! The run is deterministic for a seed. The seed is printed; `SCREEN_PROPERTY_SEED=<n>` (decimal
//! or 0x-hex) replays a run.

use std::{
    net::IpAddr,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use screen_common::Stat;
use screen_tests::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, ExtHeader, Fragment, FrameSpec},
    reference::{Path, SERVER_V4, SERVER_V6, World, check_frame},
    require_root,
    rng::SplitMix64,
    xdp::{Counters, ScreenUnderTest, XDP_DROP, XDP_PASS, XDP_TX},
};
use screen_user::kernel::KernelAction;

/// Frames run with the drop action, then with the RST action.
const DROP_PHASE_FRAMES: usize = 400_000;
const RST_PHASE_FRAMES: usize = 100_000;

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
        let (path, action, moved) =
            check_frame(screen, world, &frame, rst).unwrap_or_else(|wrong| {
                let phase = if rst { "rst" } else { "drop" };
                panic!(
                    "seed {seed:#x}, {phase} phase, frame {index}: {wrong}\n  replay: \
                     SCREEN_PROPERTY_SEED={seed:#x} cargo test -p screen-tests --test property"
                )
            });
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
    world.install(&mut screen, KernelAction::Drop);

    let drop_phase = run_phase(&screen, &world, &mut rng, seed, false, DROP_PHASE_FRAMES);
    report("drop action", &drop_phase);
    world.configure(&mut screen, KernelAction::Rst);
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
