//! What the XDP screen costs, measured against references in the same run.
//!
//! `cargo bench -p screen-tests --bench xdp` (append `-- --quick` for a short smoke run).
//!
//! Part 1 times the program per packet with `BPF_PROG_TEST_RUN`: the deny paths (static list,
//! dynamic entry) and the pass paths (unlisted SYN, ACK), with small and with full maps, next to
//! a do-nothing program (`r0 = XDP_DROP; exit`) loaded through the raw syscall and run with the
//! same frame and repeat count. The ratio to that program is the figure that matters: it takes
//! the test harness's own per-run overhead out of the comparison.
//!
//! Part 2 floods a veth pair between two private network namespaces with SYNs from a denied
//! /24 and measures the CPU each receive-side configuration spends per SYN, with the SYNs fed
//! in two ways:
//!
//! - as a NIC driver delivers them: a live-frames `BPF_PROG_TEST_RUN` in the client namespace
//!   (as xdp-tools' `xdp-trafficgen` does) runs a three-instruction program that redirects each
//!   frame out of the client veth, so the server veth receives xdp_frames and its native XDP
//!   program runs on the buffer before any skb exists. smtp-screen, the do-nothing program and
//!   nftables (behind a do-nothing `XDP_PASS` program, which makes veth build skbs for the
//!   stack as a driver does) are compared there, against the target;
//! - from an AF_PACKET socket: every SYN is an skb from the start, which veth must copy before
//!   native XDP can run on it. Real too (a local sender), but not what a NIC sees.
//!
//! Each feed has its own sender-only baseline (the same sending into a device that throws the
//! frames away at once), so that the receive side can be isolated. Every run checks from
//! counters that the SYNs were really dropped where intended; a configuration that let them
//! through stops the benchmark instead of reporting a figure.
//!
//! Configurations are interleaved round by round and every figure is a median over rounds.
//! The Markdown report goes to `$SMTP_SCREEN_BENCH_REPORT` (default `target/bench/xdp.md`).

use std::{
    collections::{HashMap, HashSet},
    env,
    fmt::Write as _,
    fs, io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    thread,
    time::{Duration, Instant},
};

use aya::{
    TestRun, TestRunOptions,
    maps::{HashMap as BpfHashMap, Map, MapData},
};
use ipnet::{IpNet, Ipv4Net};
use screen_common::{DenyEntry, DynKeyV4, Origin, Stat, map_name};
use screen_tests::{
    bench::{
        self, MachineCpu, Result, check_interrupted, clock_ticks_per_second, grouped, median,
        min_max, thread_cpu_time,
    },
    bpf_sys::{self, RawProgram},
    frames::{FrameSpec, TCP_ACK},
    netns::{self, NetCounters, Netns, PinDir, VethPair, if_index, run_within},
    rng::SplitMix64,
    xdp::{ScreenUnderTest, XDP_DROP, XDP_PASS},
};
use screen_user::kernel::{self, KernelAction, Maps, StaticList, clock};

/// `BPF_PROG_TEST_RUN` refuses XDP input without a whole Ethernet header (EINVAL).
const ETH_HLEN: usize = 14;

/// How much work a run does.
#[derive(Clone, Copy, Debug)]
struct Budget {
    quick: bool,
    /// `repeat` of each `BPF_PROG_TEST_RUN` call.
    test_run_repeat: u32,
    /// Interleaved rounds of part 1.
    test_run_rounds: usize,
    /// Separate loads of the program whose deny paths part 1 also measures: the JIT places
    /// each load's code differently, and the cost moves with it.
    placement_loads: usize,
    /// Interleaved rounds per load.
    placement_rounds: usize,
    /// SYNs per measured flood.
    flood_frames: u64,
    /// Interleaved rounds of part 2.
    flood_rounds: usize,
    /// Longest a single flood may take, whatever its frame count.
    flood_time_limit: Duration,
    /// After this long, part 2 ends with the round under way (at least one round runs).
    flood_deadline: Duration,
}

impl Budget {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                test_run_repeat: 1_000_000,
                test_run_rounds: 3,
                placement_loads: 2,
                placement_rounds: 2,
                flood_frames: 200_000,
                flood_rounds: 3,
                flood_time_limit: Duration::from_secs(10),
                flood_deadline: Duration::from_secs(60),
            }
        } else {
            Self {
                quick,
                test_run_repeat: 5_000_000,
                test_run_rounds: 7,
                placement_loads: 7,
                placement_rounds: 5,
                flood_frames: 2_000_000,
                flood_rounds: 7,
                flood_time_limit: Duration::from_secs(30),
                flood_deadline: Duration::from_secs(240),
            }
        }
    }

    fn warmup_frames(&self) -> u64 {
        self.flood_frames / 10
    }
}

fn main() -> ExitCode {
    bench::main("xdp", |quick| run(Budget::new(quick)))
}

fn run(budget: Budget) -> Result<PathBuf> {
    let started = Instant::now();
    netns::remove_stale();

    let reference = RawProgram::xdp_drop()?;
    eprintln!("part 1: per-packet cost through BPF_PROG_TEST_RUN");
    let per_packet = per_packet::measure(&budget, &reference)?;
    check_interrupted()?;
    eprintln!("part 2: SYN flood over veth");
    let flood = flood::measure(&budget, &reference)?;

    let report = report::render(&budget, &per_packet, &flood, started.elapsed());
    bench::write_report("xdp", &report)
}

/// Part 1: nanoseconds per packet through `BPF_PROG_TEST_RUN`.
mod per_packet {
    use super::*;

    const DST: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
    /// In the static deny list (as 10.251.1.0/24): the IPv4 table decides.
    const STATIC_DENIED: Ipv4Addr = Ipv4Addr::new(10, 251, 1, 10);
    /// In the static deny list as a /32: the table sends its /24 to the tries.
    const STATIC_DENIED_32: Ipv4Addr = Ipv4Addr::new(10, 251, 4, 10);
    /// Has an unexpired dynamic deny entry.
    const DYNAMIC_DENIED: Ipv4Addr = Ipv4Addr::new(10, 251, 2, 10);
    /// In no list.
    const UNLISTED: Ipv4Addr = Ipv4Addr::new(10, 251, 3, 10);
    /// No filler entry lies in this /8, so the test sources meet only their own entries.
    const TEST_FIRST_OCTET: u8 = 10;

    pub const DYNAMIC_FILL: usize = 1_000_000;
    pub const STATIC_FILL: usize = 100_000;

    /// What is timed: the program on one of its paths, or the do-nothing reference.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Subject {
        Reference,
        StaticDeny,
        /// A static deny entry longer than /24: the table lookup, then both tries.
        StaticDenyTries,
        DynamicDeny,
        PassSyn,
        PassAck,
        /// The reference plus one `bpf_ktime_get_ns()`: the precise clock, for comparison.
        ClockReference,
        /// The reference plus one `bpf_ktime_get_coarse_ns()`, which the dynamic path calls.
        CoarseClockReference,
        /// The reference plus one lookup of the dynamic entry in the IPv4 dynamic map: what
        /// the dynamic path cannot do without.
        LookupReference,
    }

    impl Subject {
        pub const ALL: [Subject; 9] = [
            Subject::Reference,
            Subject::StaticDeny,
            Subject::StaticDenyTries,
            Subject::DynamicDeny,
            Subject::PassSyn,
            Subject::PassAck,
            Subject::ClockReference,
            Subject::CoarseClockReference,
            Subject::LookupReference,
        ];

        pub fn label(self) -> &'static str {
            match self {
                Subject::Reference => "do-nothing XDP_DROP program (reference)",
                Subject::StaticDeny => "deny: SYN, source in the static deny list",
                Subject::StaticDenyTries => {
                    "deny: SYN, source a static /32 (its /24 asks the tries)"
                }
                Subject::DynamicDeny => "deny: SYN, source with a dynamic entry",
                Subject::PassSyn => "pass: SYN from an unlisted source",
                Subject::PassAck => "pass: ACK (not screened)",
                Subject::ClockReference => "reference + bpf_ktime_get_ns()",
                Subject::CoarseClockReference => "reference + bpf_ktime_get_coarse_ns()",
                Subject::LookupReference => "reference + one lookup in the dynamic map (a hit)",
            }
        }

        pub fn is_deny(self) -> bool {
            matches!(
                self,
                Subject::StaticDeny | Subject::StaticDenyTries | Subject::DynamicDeny
            )
        }

        fn frame(self) -> Vec<u8> {
            let syn = |src| FrameSpec::syn(IpAddr::V4(src), IpAddr::V4(DST), 25);
            match self {
                // The references read nothing; they get the same bytes as the static deny path.
                Subject::Reference
                | Subject::ClockReference
                | Subject::CoarseClockReference
                | Subject::LookupReference
                | Subject::StaticDeny => syn(STATIC_DENIED).build(),
                Subject::StaticDenyTries => syn(STATIC_DENIED_32).build(),
                Subject::DynamicDeny => syn(DYNAMIC_DENIED).build(),
                Subject::PassSyn => syn(UNLISTED).build(),
                Subject::PassAck => syn(UNLISTED).flags(TCP_ACK).build(),
            }
        }

        fn expected_action(self) -> u32 {
            match self {
                Subject::PassSyn | Subject::PassAck => XDP_PASS,
                _ => XDP_DROP,
            }
        }

        /// The counters one run of the program on this path must move, by one each.
        fn counted(self) -> &'static [Stat] {
            match self {
                Subject::Reference
                | Subject::ClockReference
                | Subject::CoarseClockReference
                | Subject::LookupReference => &[],
                Subject::StaticDeny | Subject::StaticDenyTries => {
                    &[Stat::Frames, Stat::SynScreened, Stat::DropStatic]
                }
                Subject::DynamicDeny => &[Stat::Frames, Stat::SynScreened, Stat::DropDynamic],
                Subject::PassSyn => &[Stat::Frames, Stat::SynScreened, Stat::Passed],
                Subject::PassAck => &[Stat::Frames],
            }
        }
    }

    /// The programs loaded through the raw syscall, by the subject they stand for.
    struct References<'a> {
        noop: &'a RawProgram,
        clock: RawProgram,
        coarse_clock: RawProgram,
        lookup: RawProgram,
    }

    impl References<'_> {
        fn program(&self, subject: Subject) -> Option<&RawProgram> {
            match subject {
                Subject::Reference => Some(self.noop),
                Subject::ClockReference => Some(&self.clock),
                Subject::CoarseClockReference => Some(&self.coarse_clock),
                Subject::LookupReference => Some(&self.lookup),
                _ => None,
            }
        }
    }

    /// One timed `BPF_PROG_TEST_RUN`.
    #[derive(Clone, Copy, Debug)]
    pub struct Sample {
        /// The kernel's figure: whole nanoseconds per run.
        pub kernel_ns: f64,
        /// The calling thread's CPU time over the call divided by the repeat count: the same
        /// loop with sub-nanosecond resolution (the syscall's fixed cost is spread over
        /// millions of runs).
        pub cpu_ns: f64,
    }

    /// Every sample of one subject in one map state.
    #[derive(Clone, Debug)]
    pub struct Series {
        pub subject: Subject,
        pub samples: Vec<Sample>,
    }

    impl Series {
        pub fn kernel_ns(&self) -> Vec<f64> {
            self.samples.iter().map(|s| s.kernel_ns).collect()
        }

        pub fn cpu_ns(&self) -> Vec<f64> {
            self.samples.iter().map(|s| s.cpu_ns).collect()
        }
    }

    /// The measurements with the maps in one state.
    #[derive(Clone, Debug)]
    pub struct StateResult {
        pub label: String,
        pub series: Vec<Series>,
    }

    impl StateResult {
        pub fn series(&self, subject: Subject) -> &Series {
            self.series
                .iter()
                .find(|s| s.subject == subject)
                .expect("every subject is measured in every state")
        }

        /// Median CPU ns per packet of `subject` over the reference's.
        pub fn ratio(&self, subject: Subject) -> f64 {
            median(&self.series(subject).cpu_ns())
                / median(&self.series(Subject::Reference).cpu_ns())
        }
    }

    /// The paths measured again on separate loads of the program.
    pub const PLACED: [Subject; 3] = [
        Subject::Reference,
        Subject::StaticDeny,
        Subject::DynamicDeny,
    ];

    pub struct PerPacket {
        pub repeat: u32,
        pub rounds: usize,
        pub frame_len: usize,
        pub states: Vec<StateResult>,
        /// One [`StateResult`] of the [`PLACED`] paths per separate load (1 dynamic entry, 2
        /// static deny prefixes), and the rounds each.
        pub placements: Vec<StateResult>,
        pub placement_rounds: usize,
        /// How the filler entries went in, for the report.
        pub fill_notes: Vec<String>,
        /// What the kernel said to an input shorter than an Ethernet header.
        pub short_input: String,
    }

    /// The program with its own unpinned maps, configured for port 25 and `drop`.
    fn load_screen() -> Result<ScreenUnderTest> {
        let mut screen = ScreenUnderTest::load().map_err(|e| e.to_string())?;
        kernel::configure(&mut screen.maps, &[25], KernelAction::Drop, 64)?;
        Ok(screen)
    }

    /// The IPv4 dynamic deny map of `screen`, through its second descriptor.
    fn dynamic_map(screen: &ScreenUnderTest) -> Result<BpfHashMap<MapData, DynKeyV4, DenyEntry>> {
        let data = MapData::from_fd(screen.dynamic_v4_fd().try_clone_to_owned()?)?;
        Ok(BpfHashMap::try_from(Map::LruHashMap(data))?)
    }

    fn timed(
        frame: &[u8],
        run: impl FnOnce() -> Result<(u32, u32)>,
        repeat: u32,
    ) -> Result<(u32, Sample)> {
        if frame.len() < ETH_HLEN {
            return Err(format!(
                "BPF_PROG_TEST_RUN needs at least an Ethernet header ({ETH_HLEN} bytes) of XDP input, got {}",
                frame.len()
            )
            .into());
        }
        let before = thread_cpu_time();
        let (retval, duration_ns) = run()?;
        let cpu = thread_cpu_time() - before;
        Ok((
            retval,
            Sample {
                kernel_ns: f64::from(duration_ns),
                cpu_ns: cpu.as_nanos() as f64 / f64::from(repeat),
            },
        ))
    }

    /// Runs one subject once and checks the verdict and, for the program, the counters.
    fn sample(
        screen: &ScreenUnderTest,
        references: &References<'_>,
        subject: Subject,
        frame: &[u8],
        repeat: u32,
    ) -> Result<Sample> {
        let before = screen.maps.counters()?;
        let (retval, sample) = match references.program(subject) {
            Some(reference) => timed(
                frame,
                || {
                    let out = reference.test_run(frame, repeat)?;
                    Ok((out.retval, out.duration_ns))
                },
                repeat,
            )?,
            None => timed(
                frame,
                || {
                    let out = screen.program().test_run(TestRunOptions {
                        data_in: Some(frame),
                        repeat,
                        ..Default::default()
                    })?;
                    Ok((out.return_value, out.duration.as_nanos() as u32))
                },
                repeat,
            )?,
        };
        if retval != subject.expected_action() {
            return Err(format!(
                "{}: returned {retval}, expected {}",
                subject.label(),
                subject.expected_action()
            )
            .into());
        }
        let after = screen.maps.counters()?;
        for stat in Stat::ALL {
            let moved = after[stat as usize] - before[stat as usize];
            let expected = if subject.counted().contains(&stat) {
                u64::from(repeat)
            } else {
                0
            };
            if moved != expected {
                return Err(format!(
                    "{}: counter {} moved by {moved}, expected {expected}",
                    subject.label(),
                    stat.name()
                )
                .into());
            }
        }
        Ok(sample)
    }

    fn measure_state(
        screen: &ScreenUnderTest,
        references: &References<'_>,
        budget: &Budget,
        label: String,
    ) -> Result<StateResult> {
        measure_subjects(
            screen,
            references,
            budget.test_run_repeat,
            budget.test_run_rounds,
            &Subject::ALL,
            label,
        )
    }

    /// `subjects` in `rounds` interleaved rounds of `repeat` runs each, after a warm-up run.
    fn measure_subjects(
        screen: &ScreenUnderTest,
        references: &References<'_>,
        repeat: u32,
        rounds: usize,
        subjects: &[Subject],
        label: String,
    ) -> Result<StateResult> {
        eprintln!("  {label}");
        let frames: Vec<(Subject, Vec<u8>)> = subjects.iter().map(|&s| (s, s.frame())).collect();
        for (subject, frame) in &frames {
            sample(screen, references, *subject, frame, repeat / 10)?;
        }
        let mut series: Vec<Series> = subjects
            .iter()
            .map(|&subject| Series {
                subject,
                samples: Vec::new(),
            })
            .collect();
        for round in 0..rounds {
            check_interrupted()?;
            // A different subject goes first each round, so that drift (frequency, other
            // load) spreads over all of them.
            for i in 0..frames.len() {
                let index = (round + i) % frames.len();
                let (subject, frame) = &frames[index];
                let s = sample(screen, references, *subject, frame, repeat)?;
                series[index].samples.push(s);
            }
        }
        for s in &series {
            eprintln!(
                "    {:<44} {:>7.2} ns/packet",
                s.subject.label(),
                median(&s.cpu_ns())
            );
        }
        Ok(StateResult { label, series })
    }

    /// Adds `count` random /32 dynamic entries outside the test sources' /8.
    fn fill_dynamic(screen: &mut ScreenUnderTest, count: usize) -> Result<String> {
        let started = Instant::now();
        let entry = DenyEntry {
            expires_ns: clock::monotonic_ns() + 3_600_000_000_000,
            origin: Origin::Policy as u32,
            failures: 3,
        };
        // Multiplying by an odd constant permutes u32, so the addresses are distinct.
        let keys: Vec<DynKeyV4> = (0u32..)
            .map(|i| i.wrapping_mul(0x9e37_79b1).wrapping_add(0x0102_0304))
            .map(u32::to_be_bytes)
            .filter(|addr| addr[0] != TEST_FIRST_OCTET && addr[0] != 0)
            .take(count)
            .map(|addr| DynKeyV4 { addr })
            .collect();
        let values = vec![entry; keys.len()];
        const CHUNK: usize = 1 << 16;
        let mut method = "BPF_MAP_UPDATE_BATCH";
        let mut written = 0usize;
        for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
            match bpf_sys::update_batch(screen.dynamic_v4_fd(), k, v) {
                Ok(n) => written += n as usize,
                // Older kernels have no batch operations for hash maps: one update per entry.
                Err(e) if written == 0 && matches!(e.raw_os_error(), Some(libc::EINVAL | 524)) => {
                    method = "one BPF_MAP_UPDATE_ELEM per entry";
                    let mut map = dynamic_map(screen)?;
                    for key in &keys {
                        map.insert(key, entry, 0)?;
                    }
                    written = keys.len();
                    break;
                }
                Err(e) => return Err(format!("BPF_MAP_UPDATE_BATCH: {e}").into()),
            }
        }
        let map = dynamic_map(screen)?;
        let present = map.keys().count();
        let test_key = DynKeyV4 {
            addr: DYNAMIC_DENIED.octets(),
        };
        map.get(&test_key, 0)
            .map_err(|e| format!("the test source's dynamic entry is gone after filling: {e}"))?;
        if present != count + 1 {
            return Err(format!(
                "dynamic map holds {present} entries after writing {written}, expected {}",
                count + 1
            )
            .into());
        }
        Ok(format!(
            "{} dynamic entries written with {method} in {:.2} s; the map holds {}",
            grouped(written as u64),
            started.elapsed().as_secs_f64(),
            grouped(present as u64)
        ))
    }

    /// The test sources' static deny prefixes: one the table decides, one it leaves to the tries.
    fn test_static_deny() -> Result<[IpNet; 2]> {
        Ok([
            IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, 251, 1, 0), 24)?),
            IpNet::V4(Ipv4Net::new(STATIC_DENIED_32, 32)?),
        ])
    }

    /// Replaces the static deny list with `count` random prefixes (/16 to /32) outside the test
    /// sources' /8, plus the test sources' own, the way `smtp-screen deny load` does.
    fn fill_static(screen: &mut ScreenUnderTest, count: usize) -> Result<String> {
        // Seeded, so that every run fills the maps alike.
        let mut rng = SplitMix64::seeded(0x5eed_0000_0000_0001);
        let mut seen = HashSet::new();
        while seen.len() < count {
            let r = rng.next_u64();
            let len = match r % 10 {
                0..=5 => 24,
                6 | 7 => 16 + ((r >> 8) % 8) as u8,
                _ => 25 + ((r >> 8) % 8) as u8,
            };
            let addr = (r >> 32) as u32;
            if (addr >> 24) as u8 == TEST_FIRST_OCTET || addr >> 24 == 0 {
                continue;
            }
            let net = Ipv4Net::new(Ipv4Addr::from(addr), len)?.trunc();
            seen.insert(net);
        }
        let mut nets: Vec<IpNet> = seen.into_iter().map(IpNet::V4).collect();
        nets.extend(test_static_deny()?);
        let started = Instant::now();
        let change = screen
            .maps
            .replace_static(StaticList::Deny, &nets, Origin::ListFile)?;
        let elapsed = started.elapsed();
        let live = screen.maps.config()?.deny_slot as usize;
        let present = screen
            .maps
            .fill_levels()
            .into_iter()
            .find(|(name, _)| *name == map_name::DENY_V4[live])
            .map_or(0, |(_, n)| n);
        if present != nets.len() {
            return Err(format!(
                "static deny trie holds {present} prefixes, expected {}",
                nets.len()
            )
            .into());
        }
        Ok(format!(
            "{} static deny prefixes (/16 to /32) loaded as `smtp-screen deny load` does in {:.2} s \
             ({} trie entries and {} words of the IPv4 table written); the live trie holds {}",
            grouped(count as u64),
            elapsed.as_secs_f64(),
            grouped(change.trie_writes as u64),
            grouped(change.table_words as u64),
            grouped(present as u64)
        ))
    }

    pub fn measure(budget: &Budget, reference: &RawProgram) -> Result<PerPacket> {
        // The kernel's answer to a frame shorter than an Ethernet header, so that the report
        // can state it rather than assume it.
        let short_input = match reference.test_run(&[0u8; ETH_HLEN - 1], 1) {
            Err(e) => format!(
                "a {}-byte frame is refused by BPF_PROG_TEST_RUN: {e}",
                ETH_HLEN - 1
            ),
            Ok(out) => format!(
                "a {}-byte frame was accepted by BPF_PROG_TEST_RUN: {out:?}",
                ETH_HLEN - 1
            ),
        };
        let mut screen = load_screen()?;
        let references = References {
            noop: reference,
            clock: RawProgram::calling(bpf_sys::BPF_FUNC_KTIME_GET_NS, "ssb_ktime")?,
            coarse_clock: RawProgram::calling(
                bpf_sys::BPF_FUNC_KTIME_GET_COARSE_NS,
                "ssb_ktime_coarse",
            )?,
            lookup: RawProgram::looking_up(
                screen.dynamic_v4_fd(),
                DYNAMIC_DENIED.octets(),
                "ssb_lookup",
            )?,
        };

        add_test_entries(&mut screen)?;

        let mut placements = Vec::new();
        for load in 1..=budget.placement_loads {
            let mut placed = load_screen()?;
            add_test_entries(&mut placed)?;
            placements.push(measure_subjects(
                &placed,
                &references,
                budget.test_run_repeat,
                budget.placement_rounds,
                &PLACED,
                format!("load {load} of {}", budget.placement_loads),
            )?);
        }

        let mut states = Vec::new();
        let mut fill_notes = Vec::new();
        states.push(measure_state(
            &screen,
            &references,
            budget,
            "1 dynamic entry, 2 static deny prefixes".into(),
        )?);
        fill_notes.push(fill_dynamic(&mut screen, DYNAMIC_FILL - 1)?);
        states.push(measure_state(
            &screen,
            &references,
            budget,
            "1,000,000 dynamic entries, 2 static deny prefixes".into(),
        )?);
        fill_notes.push(fill_static(&mut screen, STATIC_FILL)?);
        states.push(measure_state(
            &screen,
            &references,
            budget,
            "1,000,000 dynamic entries, 100,002 static deny prefixes".into(),
        )?);
        Ok(PerPacket {
            repeat: budget.test_run_repeat,
            rounds: budget.test_run_rounds,
            frame_len: Subject::StaticDeny.frame().len(),
            states,
            placements,
            placement_rounds: budget.placement_rounds,
            fill_notes,
            short_input,
        })
    }

    /// The test sources' static deny prefixes and dynamic entry.
    fn add_test_entries(screen: &mut ScreenUnderTest) -> Result<()> {
        for net in test_static_deny()? {
            screen
                .maps
                .add_static(StaticList::Deny, net, Origin::Operator)?;
        }
        screen.maps.add_dynamic(
            IpNet::V4(Ipv4Net::new(DYNAMIC_DENIED, 32)?),
            Duration::from_secs(3600),
            Origin::Policy,
            3,
        )?;
        Ok(())
    }
}

/// Part 2: SYN floods over veth, CPU per SYN for each receive-side configuration, with the SYNs
/// fed as a NIC delivers them (xdp_frames) and as a local socket sends them (skbs).
mod flood {
    use super::*;

    const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 251, 200, 1);
    const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 251, 200, 2);
    const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xfb, 0xc8, 0x01];
    const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xfb, 0xc8, 0x02];
    /// The denied /24 as the deny list holds it: two halves, so that the LPM trie and the
    /// nftables interval set both have real work.
    pub const DENIED: [&str; 2] = ["10.251.200.0/25", "10.251.200.128/25"];
    /// Distinct frames the senders cycle through: sources 10.251.200.3-254, varied ports.
    const POOL: usize = 1024;
    /// Frames per `sendmmsg`.
    pub const BATCH: usize = 64;
    /// Frames per live-frames test run. Each run re-sends one buffer, so the source changes
    /// from run to run. Every run also switches the kernel's XDP dispatcher to the sending
    /// program and back (code patching, and an RCU grace period each way), a few tenths of a
    /// millisecond of CPU: a run must be long to make that nothing per frame, yet short enough
    /// to check the time limit between runs.
    pub const LIVE_CHUNK: u64 = 262_144;
    /// Frames a live-frames run puts through its program before it flushes them to the device,
    /// which then schedules the receiver's NAPI: a NAPI budget, as a driver delivers them.
    pub const LIVE_BATCH: u32 = 64;
    const NFT_TABLE: &str = "ssb_bench";
    /// How long one `nft`, `ethtool` or `smtp-screen` invocation may take.
    const COMMAND_LIMIT: Duration = Duration::from_secs(60);

    /// How the SYNs reach the server veth.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Feed {
        /// As a NIC driver hands frames to XDP: a live-frames test run in the client namespace
        /// redirects every frame out of the client veth, which queues it to the server veth as
        /// an xdp_frame. The server's native XDP program runs on that buffer; veth builds an
        /// skb only for what the program passes.
        XdpFrames,
        /// From an AF_PACKET socket: every SYN is an skb before it reaches the server veth.
        Skbs,
    }

    impl Feed {
        pub const ALL: [Feed; 2] = [Feed::XdpFrames, Feed::Skbs];

        /// The receive sides measured with this feed, the sender-only baseline last.
        pub fn receivers(self) -> &'static [Receiver] {
            match self {
                Feed::XdpFrames => &[
                    Receiver::ScreenNative,
                    Receiver::NftNetdev,
                    Receiver::NftInet,
                    Receiver::NoopNative,
                    Receiver::NftNetdevAll,
                    Receiver::SenderOnly,
                ],
                Feed::Skbs => &Receiver::ALL,
            }
        }

        pub fn tag(self) -> &'static str {
            match self {
                Feed::XdpFrames => "xdp_frames",
                Feed::Skbs => "skbs",
            }
        }
    }

    /// Where the receive side stands during a flood.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Receiver {
        ScreenNative,
        ScreenGeneric,
        NftNetdev,
        NftInet,
        NoopNative,
        /// nftables' cheapest drop in the same place as [`Receiver::NftNetdev`]: its floor.
        NftNetdevAll,
        SenderOnly,
    }

    impl Receiver {
        pub const ALL: [Receiver; 7] = [
            Receiver::ScreenNative,
            Receiver::ScreenGeneric,
            Receiver::NftNetdev,
            Receiver::NftInet,
            Receiver::NoopNative,
            Receiver::NftNetdevAll,
            Receiver::SenderOnly,
        ];

        pub fn label(self) -> &'static str {
            match self {
                Receiver::ScreenNative => "smtp-screen XDP, native mode",
                Receiver::ScreenGeneric => "smtp-screen XDP, generic mode",
                Receiver::NftNetdev => "nftables netdev ingress drop",
                Receiver::NftNetdevAll => "nftables netdev ingress, drop all (floor)",
                Receiver::NftInet => "nftables inet prerouting (raw) drop",
                Receiver::NoopNative => "do-nothing XDP_DROP, native (floor)",
                Receiver::SenderOnly => "sender only (sink device)",
            }
        }

        fn is_nft(self) -> bool {
            matches!(
                self,
                Receiver::NftNetdev | Receiver::NftNetdevAll | Receiver::NftInet
            )
        }
    }

    /// One measured configuration: how the SYNs come and what receives them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Config {
        pub feed: Feed,
        pub receiver: Receiver,
    }

    impl Config {
        pub fn all() -> Vec<Config> {
            Feed::ALL
                .iter()
                .flat_map(|&feed| {
                    feed.receivers()
                        .iter()
                        .map(move |&receiver| Config { feed, receiver })
                })
                .collect()
        }

        /// veth takes xdp_frames only into a device whose NAPI is on, which an XDP program
        /// turns on (GRO would too, but would also put the skb feed through NAPI), so nftables
        /// sits behind a program that passes everything, as the stack sits behind a driver.
        fn behind_xdp_pass(self) -> bool {
            self.feed == Feed::XdpFrames && self.receiver.is_nft()
        }

        pub fn label(self) -> String {
            match (self.feed, self.receiver) {
                (Feed::XdpFrames, Receiver::SenderOnly) => {
                    "sender only (redirect refused by a veth whose peer is down)".into()
                }
                _ if self.behind_xdp_pass() => {
                    format!("{}, behind XDP_PASS", self.receiver.label())
                }
                _ => self.receiver.label().into(),
            }
        }
    }

    /// The two namespaces, the veth pair between them, and the sender-only sinks in the client
    /// namespace: a device that frees skbs, and a veth pair whose far end is down, which
    /// refuses xdp_frames. Fields drop in order: the pairs, then the namespaces, and with them
    /// everything inside.
    pub struct Testbed {
        /// The client's end, then the server's.
        link: VethPair,
        /// The first end is up, so that it takes redirects; its peer is down, so it refuses
        /// them one by one.
        refusing: VethPair,
        pub sink: String,
        pub sink_kind: &'static str,
        pub client: Netns,
        pub server: Netns,
    }

    impl Testbed {
        pub fn create() -> Result<Self> {
            let client = Netns::create("c")?;
            let server = Netns::create("s")?;
            // No IPv6 autoconfiguration traffic in the counters.
            client.disable_ipv6()?;
            server.disable_ipv6()?;
            let link =
                VethPair::create_with_macs(&client, &server, Some([CLIENT_MAC, SERVER_MAC]))?;
            client.add_address(link.a(), CLIENT_ADDR.into(), 24)?;
            server.add_address(link.b(), SERVER_ADDR.into(), 24)?;
            // `dummy` frees a frame in its transmit routine; kernels built without it still
            // have `ifb`, which frees every frame that tc did not redirect to it just as fast.
            let (sink, sink_kind) = match client.add_device("dummy") {
                Ok(sink) => (sink, "dummy"),
                Err(_) => (client.add_device("ifb")?, "ifb"),
            };
            let refusing = VethPair::create(&client, &client)?;
            client.ip(["link", "set", refusing.b(), "down"])?;
            Ok(Self {
                link,
                refusing,
                sink,
                sink_kind,
                client,
                server,
            })
        }

        pub fn client_veth(&self) -> &str {
            self.link.a()
        }

        pub fn server_veth(&self) -> &str {
            self.link.b()
        }

        /// Where the sender-only xdp_frames go: up, its peer down.
        pub fn xdp_sink(&self) -> &str {
            self.refusing.a()
        }

        pub fn xdp_sink_peer(&self) -> &str {
            self.refusing.b()
        }
    }

    /// The `smtp-screen` binary, found as the end-to-end tests find it (`$SMTP_SCREEN_BIN`, else
    /// next to this benchmark), which must embed the very object part 1 measured. A missing or
    /// stale binary next to the benchmark is rebuilt with the benchmark's profile.
    pub fn smtp_screen_bin() -> Result<PathBuf> {
        let named = env::var_os("SMTP_SCREEN_BIN").is_some();
        if let Ok(bin) = screen_tests::netns::smtp_screen_bin() {
            if embeds_this_object(&bin)? {
                return Ok(bin);
            }
            if named {
                return Err(format!(
                    "SMTP_SCREEN_BIN={} embeds another XDP object than this benchmark",
                    bin.display()
                )
                .into());
            }
        }
        let exe = env::current_exe()?;
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .ok_or("the bench binary is not in <target>/<profile>/deps")?
            .to_string_lossy()
            .into_owned();
        eprintln!("  building smtp-screen ({profile} profile) to match this benchmark");
        let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "-p",
            "screen-user",
            "--bin",
            "smtp-screen",
        ]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        netns::run_within(&mut cmd, Duration::from_secs(20 * 60))?;
        let bin = screen_tests::netns::smtp_screen_bin()?;
        if !embeds_this_object(&bin)? {
            return Err(format!(
                "{} still embeds another XDP object after a rebuild",
                bin.display()
            )
            .into());
        }
        Ok(bin)
    }

    fn embeds_this_object(bin: &Path) -> Result<bool> {
        let contents = fs::read(bin).map_err(|e| format!("{}: {e}", bin.display()))?;
        Ok(contents
            .windows(kernel::OBJECT.len())
            .any(|w| w == kernel::OBJECT))
    }

    /// What a configuration leaves behind to undo.
    enum Armed<'a> {
        /// Dropping the pin directory detaches the program and removes every pin, as
        /// `smtp-screen unload` does.
        Screen {
            pins: PinDir,
        },
        Nft {
            netns: &'a Netns,
            family: &'static str,
            /// The do-nothing `XDP_PASS` program in front of nftables, held attached.
            _xdp_pass: Option<OwnedFd>,
        },
        /// Holding the link keeps the program attached.
        Link {
            _link: OwnedFd,
        },
        Nothing,
    }

    impl Drop for Armed<'_> {
        fn drop(&mut self) {
            if let Armed::Nft { netns, family, .. } = self {
                let mut cmd = netns.command("nft");
                cmd.args(["delete", "table", family, NFT_TABLE]);
                if let Err(e) = run_within(&mut cmd, COMMAND_LIMIT) {
                    eprintln!("cleanup: {e}");
                }
            }
        }
    }

    fn nft_ruleset(receiver: Receiver, server_veth: &str) -> (&'static str, String) {
        let set = format!(
            "set denied {{ type ipv4_addr; flags interval; elements = {{ {} }} }}",
            DENIED.join(", ")
        );
        // The same test as the XDP program: a SYN without ACK to port 25 from a listed source.
        let rule = if receiver == Receiver::NftNetdevAll {
            "counter drop"
        } else {
            "ip saddr @denied tcp dport 25 tcp flags & (syn | ack) == syn counter drop"
        };
        match receiver {
            Receiver::NftNetdev | Receiver::NftNetdevAll => (
                "netdev",
                format!(
                    "table netdev {NFT_TABLE} {{\n {set}\n chain ingress {{ type filter hook ingress device \"{server_veth}\" priority -500; policy accept;\n  {rule}\n }}\n}}\n"
                ),
            ),
            _ => (
                "inet",
                format!(
                    "table inet {NFT_TABLE} {{\n {set}\n chain prerouting {{ type filter hook prerouting priority raw; policy accept;\n  {rule}\n }}\n}}\n"
                ),
            ),
        }
    }

    fn nft_counter(netns: &Netns, family: &str) -> Result<u64> {
        let mut cmd = netns.command("nft");
        cmd.args(["list", "table", family, NFT_TABLE]);
        let listing = run_within(&mut cmd, COMMAND_LIMIT)?;
        let packets = listing
            .split("counter packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no rule counter in:\n{listing}"))?;
        Ok(packets)
    }

    /// `ethtool -S` of `iface` in `netns`: veth's per-queue XDP counters.
    fn ethtool_stats(netns: &Netns, iface: &str) -> Result<HashMap<String, u64>> {
        let mut cmd = netns.command("ethtool");
        cmd.args(["-S", iface]);
        let listing = run_within(&mut cmd, COMMAND_LIMIT)?;
        Ok(listing
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((name.trim().to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// The sum over queues of veth's `{rx,tx}_queue_<n>_<counter>`.
    fn queue_sum(stats: &HashMap<String, u64>, direction: &str, counter: &str) -> u64 {
        stats
            .iter()
            .filter(|(name, _)| {
                name.strip_prefix(direction)
                    .and_then(|rest| rest.strip_prefix("_queue_"))
                    .and_then(|rest| rest.split_once('_'))
                    .is_some_and(|(queue, rest)| {
                        queue.bytes().all(|b| b.is_ascii_digit()) && rest == counter
                    })
            })
            .map(|(_, value)| value)
            .sum()
    }

    struct Context<'a> {
        bed: &'a Testbed,
        bin: &'a Path,
        reference: &'a RawProgram,
        pass: &'a RawProgram,
    }

    /// Attaches `program` natively to the server veth; dropping the descriptor detaches it.
    fn attach_to_server(ctx: &Context<'_>, program: &RawProgram) -> Result<OwnedFd> {
        let server = &ctx.bed.server;
        Ok(server.run(|| program.attach_native(if_index(ctx.bed.server_veth())?))??)
    }

    fn arm<'a>(ctx: &Context<'a>, config: Config) -> Result<Armed<'a>> {
        let bed = ctx.bed;
        match config.receiver {
            Receiver::ScreenNative | Receiver::ScreenGeneric => {
                let pins = PinDir::new("xdp-bench");
                let mode = if config.receiver == Receiver::ScreenNative {
                    "native"
                } else {
                    "generic"
                };
                let cli = |args: &[&str]| {
                    let mut cmd = bed.server.command(ctx.bin);
                    cmd.arg("--pin-dir").arg(pins.path()).args(args);
                    run_within(&mut cmd, COMMAND_LIMIT)
                };
                cli(&["load", "--iface", bed.server_veth(), "--mode", mode])?;
                for prefix in DENIED {
                    cli(&["deny", "add", prefix])?;
                }
                Ok(Armed::Screen { pins })
            }
            Receiver::NftNetdev | Receiver::NftNetdevAll | Receiver::NftInet => {
                let (family, ruleset) = nft_ruleset(config.receiver, bed.server_veth());
                // On the command line rather than in a file, so that a killed run leaves no
                // scratch file behind.
                let xdp_pass = config
                    .behind_xdp_pass()
                    .then(|| attach_to_server(ctx, ctx.pass))
                    .transpose()?;
                let mut cmd = bed.server.command("nft");
                cmd.arg(ruleset);
                let loaded = run_within(&mut cmd, COMMAND_LIMIT);
                let armed = Armed::Nft {
                    netns: &bed.server,
                    family,
                    _xdp_pass: xdp_pass,
                };
                loaded?;
                Ok(armed)
            }
            Receiver::NoopNative => Ok(Armed::Link {
                _link: attach_to_server(ctx, ctx.reference)?,
            }),
            Receiver::SenderOnly => Ok(Armed::Nothing),
        }
    }

    /// The counters that prove where the flood ended, before or after it.
    struct Evidence {
        client: NetCounters,
        server: NetCounters,
        /// `ethtool -S` of the client veth: what it handed to the server veth as xdp_frames.
        client_veth: HashMap<String, u64>,
        /// `ethtool -S` of the server veth: what its XDP program dropped.
        server_veth: HashMap<String, u64>,
        /// smtp-screen's `drop_static` or the nftables rule's packet count.
        dropped: u64,
    }

    impl Evidence {
        fn read(ctx: &Context<'_>, armed: &Armed<'_>) -> Result<Self> {
            let bed = ctx.bed;
            let dropped = match armed {
                Armed::Screen { pins } => {
                    Maps::from_pins(pins.path())?.counters()?[Stat::DropStatic as usize]
                }
                Armed::Nft { netns, family, .. } => nft_counter(netns, family)?,
                _ => 0,
            };
            Ok(Self {
                client: bed.client.counters()?,
                server: bed.server.counters()?,
                client_veth: ethtool_stats(&bed.client, bed.client_veth())?,
                server_veth: ethtool_stats(&bed.server, bed.server_veth())?,
                dropped,
            })
        }
    }

    /// Checks that all `sent` frames were dropped where `config` should drop them, and says
    /// how that was established.
    fn verify(
        bed: &Testbed,
        config: Config,
        before: &Evidence,
        after: &Evidence,
        sent: u64,
    ) -> Result<String> {
        let dev = |n: &NetCounters, d: &str| n.device(d);
        let delta = |a: u64, b: u64| a.wrapping_sub(b);
        let client_tx = delta(
            dev(&after.client, bed.client_veth()).tx_packets,
            dev(&before.client, bed.client_veth()).tx_packets,
        );
        let server_tx = delta(
            dev(&after.server, bed.server_veth()).tx_packets,
            dev(&before.server, bed.server_veth()).tx_packets,
        );
        let server_rx = delta(
            dev(&after.server, bed.server_veth()).rx_packets,
            dev(&before.server, bed.server_veth()).rx_packets,
        );
        let ip_in = delta(
            after.server.snmp("Ip.InReceives"),
            before.server.snmp("Ip.InReceives"),
        );
        let tcp_in = delta(
            after.server.snmp("Tcp.InSegs"),
            before.server.snmp("Tcp.InSegs"),
        );
        let xdp_frames_in = delta(
            queue_sum(&after.client_veth, "tx", "xdp_xmit"),
            queue_sum(&before.client_veth, "tx", "xdp_xmit"),
        );
        let xdp_frames_refused = delta(
            queue_sum(&after.client_veth, "tx", "xdp_xmit_errors"),
            queue_sum(&before.client_veth, "tx", "xdp_xmit_errors"),
        );
        let xdp_drops = delta(
            queue_sum(&after.server_veth, "rx", "xdp_drops"),
            queue_sum(&before.server_veth, "rx", "xdp_drops"),
        );
        let dropped = delta(after.dropped, before.dropped);
        let mut checks: Vec<(String, bool)> = Vec::new();
        let mut expect = |what: String, ok: bool| checks.push((what, ok));

        match (config.feed, config.receiver) {
            (Feed::Skbs, Receiver::SenderOnly) => {
                let sink_after = dev(&after.client, &bed.sink);
                let sink_before = dev(&before.client, &bed.sink);
                let freed = if bed.sink_kind == "dummy" {
                    delta(sink_after.tx_packets, sink_before.tx_packets)
                } else {
                    delta(sink_after.rx_dropped, sink_before.rx_dropped)
                };
                expect(
                    format!("{} freed {}", bed.sink_kind, grouped(freed)),
                    freed == sent,
                );
            }
            (Feed::XdpFrames, Receiver::SenderOnly) => {
                // veth counts an xdp_frame its peer cannot take as a transmit drop.
                let refused = delta(
                    dev(&after.client, bed.xdp_sink()).tx_dropped,
                    dev(&before.client, bed.xdp_sink()).tx_dropped,
                );
                expect(
                    format!("{} refused {}", bed.xdp_sink(), grouped(refused)),
                    refused == sent,
                );
                expect(
                    format!("server veth xdp_frames in {xdp_frames_in}"),
                    xdp_frames_in == 0,
                );
            }
            (feed, _) => {
                expect(
                    format!("client veth sent {}", grouped(client_tx)),
                    client_tx == sent,
                );
                if feed == Feed::XdpFrames {
                    // Through ndo_xdp_xmit into the server veth's ring: no skb on the way.
                    expect(
                        format!("as xdp_frames {}", grouped(xdp_frames_in)),
                        xdp_frames_in == sent,
                    );
                    expect(
                        format!("refused {xdp_frames_refused}"),
                        xdp_frames_refused == 0,
                    );
                }
                expect(format!("server TCP segments in {tcp_in}"), tcp_in == 0);
                expect(format!("server veth sent {server_tx}"), server_tx == 0);
            }
        }
        match config.receiver {
            Receiver::ScreenNative | Receiver::ScreenGeneric => {
                expect(
                    format!("drop_static +{}", grouped(dropped)),
                    dropped == sent,
                );
                expect(format!("IP in {}", grouped(ip_in)), ip_in == 0);
            }
            Receiver::NftNetdev | Receiver::NftNetdevAll => {
                expect(
                    format!("rule counter +{}", grouped(dropped)),
                    dropped == sent,
                );
                expect(format!("IP in {}", grouped(ip_in)), ip_in == 0);
            }
            Receiver::NftInet => {
                expect(
                    format!("rule counter +{}", grouped(dropped)),
                    dropped == sent,
                );
                // The IP layer counts the frame before the prerouting hook drops it.
                expect(format!("IP in {}", grouped(ip_in)), ip_in == sent);
            }
            Receiver::NoopNative => {
                if config.feed == Feed::Skbs {
                    // veth counts what went through its XDP program as received.
                    expect(
                        format!("server veth XDP frames {}", grouped(server_rx)),
                        server_rx == sent,
                    );
                }
                expect(format!("IP in {}", grouped(ip_in)), ip_in == 0);
            }
            Receiver::SenderOnly => {}
        }
        if config.feed == Feed::XdpFrames && config.receiver != Receiver::SenderOnly {
            let drops_expected = match config.receiver {
                Receiver::ScreenNative | Receiver::NoopNative => sent,
                _ => 0,
            };
            expect(
                format!("server veth XDP drops {}", grouped(xdp_drops)),
                xdp_drops == drops_expected,
            );
        }
        let summary = checks
            .iter()
            .map(|(what, _)| what.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if checks.iter().all(|(_, ok)| *ok) {
            Ok(summary)
        } else {
            Err(format!("{}: {sent} SYNs sent, but: {summary}", config.label()).into())
        }
    }

    /// CPU time the receive path can be charged to besides the sender thread itself.
    struct CpuMeters {
        ksoftirqd: Vec<PathBuf>,
        clock_ticks: u64,
    }

    #[derive(Clone, Debug)]
    struct CpuReading {
        ksoftirqd_ns: u64,
        system_busy_ns: u64,
        /// `NET_RX` softirqs each CPU has run, from `/proc/softirqs`.
        net_rx: Vec<u64>,
    }

    impl CpuMeters {
        fn discover() -> Result<Self> {
            let mut ksoftirqd = Vec::new();
            for entry in fs::read_dir("/proc")?.flatten() {
                let path = entry.path();
                if let Ok(comm) = fs::read_to_string(path.join("comm"))
                    && comm.starts_with("ksoftirqd/")
                {
                    ksoftirqd.push(path.join("schedstat"));
                }
            }
            if ksoftirqd.is_empty() {
                return Err("no ksoftirqd threads found in /proc".into());
            }
            Ok(Self {
                ksoftirqd,
                clock_ticks: clock_ticks_per_second(),
            })
        }

        fn read(&self) -> CpuReading {
            // schedstat's first field is the thread's run time in nanoseconds.
            let ksoftirqd_ns = self
                .ksoftirqd
                .iter()
                .filter_map(|p| fs::read_to_string(p).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum();
            let ticks = MachineCpu::now().map_or(0, |cpu| cpu.user + cpu.kernel);
            let softirqs = fs::read_to_string("/proc/softirqs").unwrap_or_default();
            let net_rx = softirqs
                .lines()
                .find_map(|l| l.trim_start().strip_prefix("NET_RX:"))
                .map(|counts| {
                    counts
                        .split_whitespace()
                        .map(|v| v.parse().unwrap_or(0))
                        .collect()
                })
                .unwrap_or_default();
            CpuReading {
                ksoftirqd_ns,
                system_busy_ns: ticks * 1_000_000_000 / self.clock_ticks,
                net_rx,
            }
        }
    }

    /// One measured flood.
    #[derive(Clone, Copy, Debug)]
    pub struct FloodRun {
        pub sent: u64,
        pub wall: Duration,
        pub thread_cpu: Duration,
        pub ksoftirqd_cpu: Duration,
        pub system_busy: Duration,
        /// `NET_RX` softirqs (receive polls) run on the sending CPU during the flood.
        pub net_rx_sender_cpu: u64,
        /// ... and on every other CPU.
        pub net_rx_other_cpus: u64,
    }

    impl FloodRun {
        /// Sender thread plus ksoftirqd, per SYN.
        pub fn cpu_ns_per_syn(&self) -> f64 {
            (self.thread_cpu + self.ksoftirqd_cpu).as_nanos() as f64 / self.sent as f64
        }

        /// Share of the machine's CPUs busy with something other than this flood, from
        /// /proc/stat: how much other load the figures were taken under.
        pub fn background_load(&self, cpus: usize) -> f64 {
            let ours = (self.thread_cpu + self.ksoftirqd_cpu).as_secs_f64();
            ((self.system_busy.as_secs_f64() - ours) / (self.wall.as_secs_f64() * cpus as f64))
                .max(0.0)
        }

        pub fn ksoftirqd_share(&self) -> f64 {
            self.ksoftirqd_cpu.as_secs_f64() / (self.thread_cpu + self.ksoftirqd_cpu).as_secs_f64()
        }

        pub fn pps(&self) -> f64 {
            self.sent as f64 / self.wall.as_secs_f64()
        }

        /// Receive polls per 1,000 SYNs on the sending CPU and on the others.
        pub fn net_rx_per_1000(&self) -> (f64, f64) {
            let per = |n: u64| n as f64 * 1000.0 / self.sent as f64;
            (per(self.net_rx_sender_cpu), per(self.net_rx_other_cpus))
        }
    }

    fn pin_to_cpu(cpu: usize) -> Result<()> {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it for cpu < 1024.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(format!("sched_setaffinity: {}", io::Error::last_os_error()).into());
            }
        }
        Ok(())
    }

    /// Runs `send` (which returns how many frames it sent) on the calling thread, pinned to
    /// `cpu`, and measures the CPU the sending and everything it set off took.
    fn metered(
        meters: &CpuMeters,
        cpu: usize,
        send: impl FnOnce(Instant) -> Result<u64>,
    ) -> Result<FloodRun> {
        let before = meters.read();
        let cpu_before = thread_cpu_time();
        let started = Instant::now();
        let sent = send(started)?;
        let wall = started.elapsed();
        let thread_cpu = thread_cpu_time() - cpu_before;
        let after = meters.read();
        let net_rx = |on_sender: bool| -> u64 {
            after
                .net_rx
                .iter()
                .zip(&before.net_rx)
                .enumerate()
                .filter(|(index, _)| (*index == cpu) == on_sender)
                .map(|(_, (a, b))| a.saturating_sub(*b))
                .sum()
        };
        Ok(FloodRun {
            sent,
            wall,
            thread_cpu,
            ksoftirqd_cpu: Duration::from_nanos(after.ksoftirqd_ns - before.ksoftirqd_ns),
            system_busy: Duration::from_nanos(
                after.system_busy_ns.saturating_sub(before.system_busy_ns),
            ),
            net_rx_sender_cpu: net_rx(true),
            net_rx_other_cpus: net_rx(false),
        })
    }

    /// How much one flood sends and where the sending thread runs.
    #[derive(Clone, Copy)]
    struct Flood<'a> {
        bed: &'a Testbed,
        pool: &'a [Vec<u8>],
        count: u64,
        limit: Duration,
        cpu: usize,
        meters: &'a CpuMeters,
    }

    impl Flood<'_> {
        /// Runs `send` on a thread in the client namespace, pinned to the flood's CPU.
        fn in_client(self, send: impl FnOnce() -> Result<FloodRun> + Send) -> Result<FloodRun> {
            self.bed.client.run(|| {
                pin_to_cpu(self.cpu)?;
                send()
            })?
        }

        /// [`metered`] on the flood's CPU.
        fn metered(self, send: impl FnOnce(Instant) -> Result<u64>) -> Result<FloodRun> {
            metered(self.meters, self.cpu, send)
        }

        /// Whether a flood that began at `started` must end: its time is up, or the benchmark
        /// was interrupted.
        fn over(self, started: Instant) -> bool {
            started.elapsed() > self.limit || bench::interrupted()
        }
    }

    /// Sends the flood out of `iface` in the client namespace through an AF_PACKET socket.
    fn send_skbs(flood: Flood<'_>, iface: &str) -> Result<FloodRun> {
        flood.in_client(|| {
            // SAFETY: plain socket creation.
            let fd =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(format!("AF_PACKET socket: {}", io::Error::last_os_error()).into());
            }
            // SAFETY: a new descriptor that nothing else owns.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            // Straight to the driver, as a flood tool would: no qdisc on the way.
            let one: libc::c_int = 1;
            // SAFETY: a valid socket and an int option value.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_QDISC_BYPASS,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(format!("PACKET_QDISC_BYPASS: {}", io::Error::last_os_error()).into());
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            addr.sll_ifindex = if_index(iface)? as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&SERVER_MAC);
            let mut iovecs: Vec<libc::iovec> = flood
                .pool
                .iter()
                .map(|f| libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                })
                .collect();
            let mut messages: Vec<libc::mmsghdr> = iovecs
                .iter_mut()
                .map(|iov| {
                    // SAFETY: msghdr is plain data; the pointers set below outlive the sends.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
                    m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();

            flood.metered(|started| {
                let mut sent = 0u64;
                let mut next = 0usize;
                while sent < flood.count && !flood.over(started) {
                    let n = (flood.count - sent).min(BATCH as u64) as usize;
                    let n = n.min(messages.len() - next);
                    // SAFETY: `n` initialised messages starting at `next`, all pointing at live
                    // frames and at `addr`.
                    let rc = unsafe {
                        libc::sendmmsg(
                            socket.as_raw_fd(),
                            messages.as_mut_ptr().add(next),
                            n as u32,
                            0,
                        )
                    };
                    if rc < 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() == Some(libc::ENOBUFS) {
                            thread::yield_now();
                            continue;
                        }
                        return Err(format!("sendmmsg on {iface}: {e}").into());
                    }
                    sent += rc as u64;
                    next = (next + rc as usize) % messages.len();
                }
                Ok(sent)
            })
        })
    }

    /// Sends the flood as xdp_frames: live-frames test runs of `sender` (a redirect program) on
    /// frames taken in turn from the pool, starting at `*next`, as if received on the client
    /// veth.
    fn send_xdp_frames(
        flood: Flood<'_>,
        sender: &RawProgram,
        next: &mut usize,
    ) -> Result<FloodRun> {
        flood.in_client(|| {
            let ingress = if_index(flood.bed.client_veth())?;
            flood.metered(|started| {
                let mut sent = 0u64;
                while sent < flood.count && !flood.over(started) {
                    let n = (flood.count - sent).min(LIVE_CHUNK);
                    let frame = &flood.pool[*next % flood.pool.len()];
                    *next += 1;
                    match sender.test_run_live(frame, ingress, n as u32, LIVE_BATCH) {
                        Ok(()) => sent += n,
                        // A signal cut the run short, leaving its count unknown.
                        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                            return Err("interrupted".into());
                        }
                        Err(e) => {
                            return Err(format!("live-frames BPF_PROG_TEST_RUN: {e}").into());
                        }
                    }
                }
                Ok(sent)
            })
        })
    }

    /// One configuration's runs, in round order.
    #[derive(Clone, Debug)]
    pub struct ConfigResult {
        pub config: Config,
        pub runs: Vec<FloodRun>,
        pub evidence: Vec<String>,
    }

    pub struct FloodResults {
        pub frames_per_run: u64,
        pub rounds: usize,
        pub sender_cpu: usize,
        pub cpus: usize,
        pub sink_kind: &'static str,
        pub frame_len: usize,
        pub results: Vec<ConfigResult>,
    }

    impl FloodResults {
        pub fn result(&self, feed: Feed, receiver: Receiver) -> &ConfigResult {
            self.results
                .iter()
                .find(|r| r.config == Config { feed, receiver })
                .expect("every configuration is measured")
        }

        /// Receive-side ns per SYN of each round: the round's total minus the same round's
        /// sender-only total with the same feed.
        pub fn receive_side(&self, feed: Feed, receiver: Receiver) -> Vec<f64> {
            let baseline = self.result(feed, Receiver::SenderOnly);
            self.result(feed, receiver)
                .runs
                .iter()
                .zip(&baseline.runs)
                .map(|(run, base)| run.cpu_ns_per_syn() - base.cpu_ns_per_syn())
                .collect()
        }

        pub fn median_receive_side(&self, feed: Feed, receiver: Receiver) -> f64 {
            median(&self.receive_side(feed, receiver))
        }

        pub fn median_total(&self, feed: Feed, receiver: Receiver) -> f64 {
            let total: Vec<f64> = self
                .result(feed, receiver)
                .runs
                .iter()
                .map(FloodRun::cpu_ns_per_syn)
                .collect();
            median(&total)
        }
    }

    fn frames(bed_frames: usize) -> Vec<Vec<u8>> {
        (0..bed_frames)
            .map(|i| {
                let host = 3 + (i % 252) as u8;
                let mut spec = FrameSpec::syn(
                    IpAddr::V4(Ipv4Addr::new(10, 251, 200, host)),
                    IpAddr::V4(SERVER_ADDR),
                    25,
                );
                spec.src_mac = CLIENT_MAC;
                spec.dst_mac = SERVER_MAC;
                spec.src_port = 1024 + ((i * 7919) % 60_000) as u16;
                spec.seq = (i as u32).wrapping_mul(2_654_435_761);
                spec.build()
            })
            .collect()
    }

    pub fn measure(budget: &Budget, reference: &RawProgram) -> Result<FloodResults> {
        let bin = smtp_screen_bin()?;
        screen_tests::ensure_packages(&["nftables", "ethtool"])?;
        let bed = Testbed::create()?;
        let pass = RawProgram::xdp_pass()?;
        let (to_server, to_sink, _refusing_sink) = bed.client.run(|| -> Result<_> {
            let to_server = RawProgram::redirect(if_index(bed.client_veth())?)?;
            let to_sink = RawProgram::redirect(if_index(bed.xdp_sink())?)?;
            // A veth advertises ndo_xdp_xmit once its peer has an XDP program; with the peer
            // down, it then refuses every frame in veth_xdp_xmit, before the receive ring.
            let link = reference
                .attach_native(if_index(bed.xdp_sink_peer())?)
                .map_err(|e| format!("XDP on {}: {e}", bed.xdp_sink_peer()))?;
            Ok((to_server, to_sink, link))
        })??;
        let meters = CpuMeters::discover()?;
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        // The last CPU: the first one tends to take the machine's housekeeping interrupts.
        let sender_cpu = cpus - 1;
        let pool = frames(POOL);
        let ctx = Context {
            bed: &bed,
            bin: &bin,
            reference,
            pass: &pass,
        };
        let configs = Config::all();
        let mut results: Vec<ConfigResult> = configs
            .iter()
            .map(|&config| ConfigResult {
                config,
                runs: Vec::new(),
                evidence: Vec::new(),
            })
            .collect();
        let mut next_frame = 0;
        let started = Instant::now();
        let mut rounds = 0;
        for round in 0..budget.flood_rounds {
            if round > 0 && started.elapsed() > budget.flood_deadline {
                eprintln!(
                    "  time budget of {:?} spent: stopping after {round} rounds",
                    budget.flood_deadline
                );
                break;
            }
            rounds += 1;
            for i in 0..configs.len() {
                check_interrupted()?;
                let index = (round + i) % configs.len();
                let config = configs[index];
                let armed = arm(&ctx, config)?;
                let mut flood = |count| {
                    let flood = Flood {
                        bed: &bed,
                        pool: &pool,
                        count,
                        limit: budget.flood_time_limit,
                        cpu: sender_cpu,
                        meters: &meters,
                    };
                    match (config.feed, config.receiver) {
                        (Feed::Skbs, Receiver::SenderOnly) => send_skbs(flood, &bed.sink),
                        (Feed::Skbs, _) => send_skbs(flood, bed.client_veth()),
                        (Feed::XdpFrames, Receiver::SenderOnly) => {
                            send_xdp_frames(flood, &to_sink, &mut next_frame)
                        }
                        (Feed::XdpFrames, _) => send_xdp_frames(flood, &to_server, &mut next_frame),
                    }
                };
                // Warm caches, page pools and the JIT image before the counted flood.
                flood(budget.warmup_frames())?;
                let before = Evidence::read(&ctx, &armed)?;
                let run = flood(budget.flood_frames)?;
                check_interrupted()?;
                if run.sent == 0 {
                    return Err(format!("{}: no frame could be sent", config.label()).into());
                }
                let after = Evidence::read(&ctx, &armed)?;
                let evidence = verify(&bed, config, &before, &after, run.sent)?;
                drop(armed);
                eprintln!(
                    "  round {} {:<10} {:<60} {:>5.0} ns/SYN (sender thread {:.0}, ksoftirqd {:.0}), {:>9.0} SYN/s; {evidence}",
                    round + 1,
                    config.feed.tag(),
                    config.label(),
                    run.cpu_ns_per_syn(),
                    run.thread_cpu.as_nanos() as f64 / run.sent as f64,
                    run.ksoftirqd_cpu.as_nanos() as f64 / run.sent as f64,
                    run.pps(),
                );
                results[index].runs.push(run);
                results[index].evidence.push(evidence);
            }
        }
        Ok(FloodResults {
            frames_per_run: budget.flood_frames,
            rounds,
            sender_cpu,
            cpus,
            sink_kind: bed.sink_kind,
            frame_len: pool[0].len(),
            results,
        })
    }
}

mod report {
    use super::{
        flood::{Config, Feed, FloodResults, FloodRun, Receiver},
        per_packet::{PLACED, PerPacket, Subject},
        *,
    };

    const DENY_TARGET: f64 = 1.5;
    const NFT_TARGET: f64 = 3.0;

    fn verdict(met: bool) -> &'static str {
        if met { "met" } else { "NOT met" }
    }

    pub fn render(
        budget: &Budget,
        per_packet: &PerPacket,
        flood: &FloodResults,
        elapsed: Duration,
    ) -> String {
        let mut out = bench::report_header("smtp-screen XDP benchmark", "xdp", budget.quick);
        let _ = writeln!(out, "- Duration: {:.0} s\n", elapsed.as_secs_f64());

        render_per_packet(&mut out, per_packet);
        render_flood(&mut out, flood);
        out
    }

    fn render_per_packet(out: &mut String, p: &PerPacket) {
        let _ = writeln!(out, "## Part 1: per-packet cost (BPF_PROG_TEST_RUN)\n");
        let _ = writeln!(
            out,
            "Each figure is the median of {} interleaved runs of {} repetitions on a {}-byte IPv4 frame. \
             *CPU ns* is the calling thread's CPU time over the run divided by the repetitions; *kernel ns* is \
             the kernel's own average, which it truncates to whole nanoseconds. Ratios use CPU ns. The reference \
             is a two-instruction program (`r0 = XDP_DROP; exit`) loaded with the raw bpf(2) call and run the same way. \
             Every run checked the verdict and that the program's counters moved by exactly the repetitions. \
             Target: the deny path within {DENY_TARGET}x of the reference.\n",
            p.rounds,
            grouped(u64::from(p.repeat)),
            p.frame_len
        );
        for note in &p.fill_notes {
            let _ = writeln!(out, "- {note}");
        }
        let _ = writeln!(out, "- Input length: {}.", p.short_input);
        let _ = writeln!(out);
        for state in &p.states {
            let _ = writeln!(out, "### {}\n", state.label);
            let _ = writeln!(
                out,
                "| path | CPU ns/packet (median) | min-max | kernel ns/packet (median) | ratio to reference | target |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---|");
            for subject in Subject::ALL {
                let series = state.series(subject);
                let cpu = series.cpu_ns();
                let (lo, hi) = min_max(&cpu);
                let ratio = state.ratio(subject);
                let target = if subject.is_deny() {
                    format!("<= {DENY_TARGET}x: {}", verdict(ratio <= DENY_TARGET))
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "| {} | {:.2} | {lo:.2}-{hi:.2} | {:.0} | {ratio:.2}x | {target} |",
                    subject.label(),
                    median(&cpu),
                    median(&series.kernel_ns()),
                );
            }
            let _ = writeln!(out);
        }
        render_placements(out, p);
        // The dynamic path reads the clock once per SYN to compare with the entry's expiry.
        if let Some(state) = p.states.first() {
            let cpu = |subject| median(&state.series(subject).cpu_ns());
            let reference = cpu(Subject::Reference);
            let _ = writeln!(
                out,
                "The dynamic deny path reads bpf_ktime_get_coarse_ns() once per SYN to compare with the entry's \
                 expiry: {:.1} ns here, against {:.1} ns for the precise bpf_ktime_get_ns(), measured as each clock \
                 program minus the reference in the first map state. With that clock, the dynamic deny path (a hash \
                 lookup after the IPv4 table finds no static entry, plus the clock) costs {:.1} ns more than the static one. \
                 The lookup alone, a do-nothing program that looks the same entry up in the same map, costs {:.1} ns \
                 ({:.2}x the reference): with the clock, {:.2}x is the floor of any dynamic deny path, before it reads \
                 a byte of the frame.\n",
                cpu(Subject::CoarseClockReference) - reference,
                cpu(Subject::ClockReference) - reference,
                cpu(Subject::DynamicDeny) - cpu(Subject::StaticDeny),
                cpu(Subject::LookupReference) - reference,
                cpu(Subject::LookupReference) / reference,
                (cpu(Subject::LookupReference) + cpu(Subject::CoarseClockReference) - reference)
                    / reference,
            );
        }
        render_profile_pass(out, p);
    }

    fn render_placements(out: &mut String, p: &PerPacket) {
        let _ = writeln!(
            out,
            "### The deny paths across loads
"
        );
        let _ = writeln!(
            out,
            "The JIT puts each load of the program at another offset, and the same instructions cost \
             up to a fifth of the reference more or less from one load to the next. So the deny paths \
             were measured again on {} separate loads (1 dynamic entry, 2 static deny prefixes), {} \
             interleaved rounds of {} repetitions each; a load's figure is its median.\n",
            p.placements.len(),
            p.placement_rounds,
            grouped(u64::from(p.repeat)),
        );
        let _ = writeln!(
            out,
            "| load | reference, CPU ns | {} | {} |",
            PLACED[1].label(),
            PLACED[2].label()
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for placed in &p.placements {
            let cpu = |subject| median(&placed.series(subject).cpu_ns());
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.2} ({:.2}x) | {:.2} ({:.2}x) |",
                placed.label,
                cpu(Subject::Reference),
                cpu(PLACED[1]),
                placed.ratio(PLACED[1]),
                cpu(PLACED[2]),
                placed.ratio(PLACED[2]),
            );
        }
        let ratios = |subject| -> Vec<f64> {
            p.placements
                .iter()
                .map(|placed| placed.ratio(subject))
                .collect()
        };
        let (static_ratios, dynamic_ratios) = (ratios(PLACED[1]), ratios(PLACED[2]));
        let (static_lo, static_hi) = min_max(&static_ratios);
        let (dynamic_lo, dynamic_hi) = min_max(&dynamic_ratios);
        let _ = writeln!(
            out,
            "\nStatic deny over the loads: median {:.2}x, {static_lo:.2}x-{static_hi:.2}x; target <= \
             {DENY_TARGET}x in every load: {}. Dynamic deny: median {:.2}x, \
             {dynamic_lo:.2}x-{dynamic_hi:.2}x: {}.\n",
            median(&static_ratios),
            verdict(static_hi <= DENY_TARGET),
            median(&dynamic_ratios),
            verdict(dynamic_hi <= DENY_TARGET),
        );
    }

    /// The paths compared with the program before the profile-guided pass, in the order of
    /// [`PREVIOUS_PROGRAM`]'s figures.
    const COMPARED: [Subject; 5] = [
        Subject::Reference,
        Subject::StaticDeny,
        Subject::DynamicDeny,
        Subject::PassSyn,
        Subject::PassAck,
    ];

    /// CPU ns/packet of the program before the profile-guided pass (two LPM trie lookups per
    /// IPv4 SYN, one per-CPU array lookup per counter), per map state and [`COMPARED`] path:
    /// this benchmark on 2026-11-22 (2 cores, Intel Xeon, Linux 6.18), medians of 7 rounds of
    /// 5,000,000 repetitions. That program is gone from the tree, so its figures are quoted.
    const PREVIOUS_PROGRAM: [[f64; 5]; 3] = [
        [6.61, 22.12, 32.53, 27.18, 9.65],
        [6.64, 22.30, 32.99, 27.45, 9.71],
        [6.62, 57.35, 61.78, 57.60, 9.74],
    ];

    fn render_profile_pass(out: &mut String, p: &PerPacket) {
        let (static_lo, static_hi) = min_max(
            &p.states
                .iter()
                .map(|state| state.ratio(Subject::StaticDeny))
                .collect::<Vec<_>>(),
        );
        let _ = writeln!(
            out,
            "### Profile-guided pass
"
        );
        let _ = writeln!(
            out,
            "What the profile showed: the previous program's translated instructions (`bpftool prog dump \
             xlated`) and its per-path figures. This machine has no hardware performance counters, so \
             `bpftool prog profile` and `perf stat -e cycles` cannot count; the paths were told apart by \
             their BPF_PROG_TEST_RUN figures instead. Every screened IPv4 SYN called trie_lookup_elem twice \
             (allow, then deny) before the dynamic map, the only calls on the static deny path: that path \
             cost 12 ns more than an unscreened ACK with one prefix listed and 48 ns more with 100,000 \
             (the *before* column below), against a target margin of 3 ns. Each counter was its own \
             per-CPU array lookup (inlined, a dozen instructions), three or four per SYN. And every \
             screened SYN copied its IP and TCP headers to the stack for the RST builder, one byte at a \
             time (the header fields are byte arrays): about 80 loads and stores, used only with \
             `--action rst`.\n\n\
             What changed: an IPv4 direct table, 2 bits per /24 in an mmap-able array (4 MiB per slot), \
             decides allow, deny or unlisted with one inlined array lookup; only a /24 holding a prefix \
             longer than /24 falls back to the tries. The daemon rebuilds the table from the tries on every \
             list change and flips it in the same configuration write as the list. The counters became one \
             per-CPU record looked up once per frame, and the RST builder copies the headers itself. \
             A second pass, on the translated instructions of that program (about 180 on the static deny \
             path): the object is now built with LLVM's allows-misaligned-mem-access, so a 16- or 32-bit \
             header field is one load instead of one per byte; an untagged IPv4 frame without options is \
             checked for its 54 bytes of headers at once, at constant offsets; and a screened SYN carries \
             only the offsets of its headers, so nothing is kept alive (spilled to the stack) for the RST \
             builder, which finds the headers again; and the program reads its configuration from global \
             data (an address in the instructions) instead of an array lookup, whose key goes through the \
             stack: 1.92x to 1.46x-1.75x, depending on the load. A third pass on the counters: the \
             per-CPU array lookup that found the counter record (a key through the stack, a bounds \
             check, a jump, two dependent loads) cost a tenth of the reference, and the pointer it gave \
             was spilled to the stack across the verdict. The counters are now global data too, a \
             128-byte slot per CPU found by the CPU number (a helper the verifier inlines), in a \
             register for the whole program; and hints keep the RST reply, the trie fallback and \
             fragments off the fall-through path, so a drop needs no jump. The static deny path now \
             costs {static_lo:.2}x-{static_hi:.2}x in this run's map states (and across loads, \
             above).\n\n\
             What is left, measured with experimental builds in this harness: the same program without \
             any counters measured 1.33x-1.41x over five loads. The dynamic deny path cannot come near \
             the target: one lookup in the dynamic map alone costs about 2x the reference (the \
             *reference + one lookup* row).\n"
        );
        let _ = writeln!(
            out,
            "| map state | path | before: CPU ns (x reference) | now: CPU ns (x reference) | now / before |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|");
        for (state, previous) in p.states.iter().zip(PREVIOUS_PROGRAM) {
            let before_reference = previous[0];
            let now_reference = median(&state.series(Subject::Reference).cpu_ns());
            for (subject, before) in COMPARED.into_iter().zip(previous) {
                let now = median(&state.series(subject).cpu_ns());
                let _ = writeln!(
                    out,
                    "| {} | {} | {before:.2} ({:.2}x) | {now:.2} ({:.2}x) | {:.2} |",
                    state.label,
                    subject.label(),
                    before / before_reference,
                    now / now_reference,
                    (now / now_reference) / (before / before_reference),
                );
            }
        }
        let _ = writeln!(
            out,
            "\n*now / before* compares the ratios to the reference, so that a busier or quieter machine \
             cancels out. The previous program's map states held one static prefix fewer (the /32 \
             that the tries path measures).\n"
        );
    }

    fn render_flood(out: &mut String, f: &FloodResults) {
        let _ = writeln!(out, "## Part 2: SYN floods over veth from denied sources\n");
        let _ = writeln!(
            out,
            "Two network namespaces joined by veth. {}-byte SYNs to port 25 from 10.251.200.3-254 (denied as {}), \
             {} frames per run after a warm-up of a tenth of that, sent from a thread pinned to CPU {}. Two feeds, \
             below, with {} configurations between them, all interleaved and rotated each round; {} rounds; figures \
             are medians over rounds. Every run checked from counters that all its SYNs were dropped where the \
             configuration drops them (last round's evidence in the tables).\n",
            f.frame_len,
            flood::DENIED.join(" + "),
            grouped(f.frames_per_run),
            f.sender_cpu,
            f.results.len(),
            f.rounds,
        );
        let _ = writeln!(
            out,
            "*CPU ns/SYN* is the sender thread's CPU time plus that of every ksoftirqd thread, per SYN. The \
             receive side runs in the NET_RX softirq (veth's NAPI poll, and the stack above it); *NET_RX per \
             1,000 SYNs* (/proc/softirqs) shows on which CPU it ran, *in ksoftirqd* how much of the time went to \
             the ksoftirqd threads. The sending CPU runs the softirq as soon as the sender re-enables softirqs \
             after handing frames over, inside the sender's system call, so unless deferred to ksoftirqd it is \
             charged to the sender thread: this kernel has no IRQ time accounting, and both clocks are exact. \
             *Receive side* is a run's total minus the same round's sender-only total of the same feed. *SYN/s \
             per CPU* is 10^9 / (CPU ns/SYN): what one fully busy CPU sustains, sender included; *SYN/s wall* is \
             what the run achieved on a shared machine.\n"
        );
        let background: Vec<f64> = f
            .results
            .iter()
            .flat_map(|r| r.runs.iter().map(|run| run.background_load(f.cpus) * 100.0))
            .collect();
        let (lo, hi) = min_max(&background);
        let _ = writeln!(
            out,
            "Other load during the floods: median {:.0}% of the {} CPUs (runs ranged {lo:.0}-{hi:.0}%).{}\n",
            median(&background),
            f.cpus,
            if median(&background) < 5.0 {
                " With the machine otherwise idle, /proc/stat confirms that the sender thread and \
                 ksoftirqd account for all the CPU the floods used."
            } else {
                ""
            }
        );
        render_xdp_frames(out, f);
        render_skbs(out, f);
    }

    fn render_table(out: &mut String, f: &FloodResults, feed: Feed) {
        let _ = writeln!(
            out,
            "| configuration | CPU ns/SYN | min-max | receive side ns/SYN | SYN/s per CPU | SYN/s wall | NET_RX per 1,000 SYNs, sending CPU / others | in ksoftirqd | verified (last round) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for r in f.results.iter().filter(|r| r.config.feed == feed) {
            let receiver = r.config.receiver;
            let total: Vec<f64> = r.runs.iter().map(|run| run.cpu_ns_per_syn()).collect();
            let (lo, hi) = min_max(&total);
            let pps: Vec<f64> = r.runs.iter().map(|run| run.pps()).collect();
            let ksoftirqd: Vec<f64> = r
                .runs
                .iter()
                .map(|run| run.ksoftirqd_share() * 100.0)
                .collect();
            let (sender_polls, other_polls): (Vec<f64>, Vec<f64>) =
                r.runs.iter().map(FloodRun::net_rx_per_1000).unzip();
            let polls = format!("{:.1} / {:.1}", median(&sender_polls), median(&other_polls));
            let receive = if receiver == Receiver::SenderOnly {
                "-".to_string()
            } else {
                format!("{:.0}", f.median_receive_side(feed, receiver))
            };
            let _ = writeln!(
                out,
                "| {} | {:.0} | {lo:.0}-{hi:.0} | {receive} | {} | {} | {polls} | {:.0}% | {} |",
                r.config.label(),
                median(&total),
                grouped((1e9 / median(&total)) as u64),
                grouped(median(&pps) as u64),
                median(&ksoftirqd),
                r.evidence.last().map_or("", String::as_str),
            );
        }
        let _ = writeln!(out);
    }

    /// nftables over smtp-screen on the receive side, with the target verdict for the
    /// configurations it applies to.
    fn render_ratios(out: &mut String, f: &FloodResults, feed: Feed, xdp_modes: &[Receiver]) {
        let rx = |r: Receiver| f.median_receive_side(feed, r);
        let total = |r: Receiver| f.median_total(feed, r);
        let label = |receiver| Config { feed, receiver }.label();
        let _ = writeln!(
            out,
            "| comparison | receive side | sender included | target: at least {NFT_TARGET}x |"
        );
        let _ = writeln!(out, "|---|---:|---:|---|");
        for &xdp in xdp_modes {
            for nft in [Receiver::NftNetdev, Receiver::NftInet] {
                let ratio = rx(nft) / rx(xdp);
                let target = match (feed, xdp) {
                    (Feed::XdpFrames, Receiver::ScreenNative) => verdict(ratio >= NFT_TARGET),
                    _ => "(for information)",
                };
                let _ = writeln!(
                    out,
                    "| {} / {} | {ratio:.2}x | {:.2}x | {target} |",
                    label(nft),
                    label(xdp),
                    total(nft) / total(xdp),
                );
            }
        }
        let _ = writeln!(
            out,
            "| {} / {} | {:.2}x | {:.2}x | (how close to the floor) |",
            Receiver::ScreenNative.label(),
            Receiver::NoopNative.label(),
            rx(Receiver::ScreenNative) / rx(Receiver::NoopNative),
            total(Receiver::ScreenNative) / total(Receiver::NoopNative),
        );
        let _ = writeln!(out);
    }

    /// Each filter above the cheapest drop at its own hook: the filtering work alone, without
    /// what the path to the hook costs.
    fn own_work(f: &FloodResults, feed: Feed) -> (f64, f64) {
        let rx = |r: Receiver| f.median_receive_side(feed, r);
        (
            rx(Receiver::ScreenNative) - rx(Receiver::NoopNative),
            rx(Receiver::NftNetdev) - rx(Receiver::NftNetdevAll),
        )
    }

    fn render_xdp_frames(out: &mut String, f: &FloodResults) {
        let feed = Feed::XdpFrames;
        let _ = writeln!(out, "### 2a. As a NIC delivers them: xdp_frames, no skb\n");
        let _ = writeln!(
            out,
            "In the client namespace, a live-frames BPF_PROG_TEST_RUN (BPF_F_TEST_XDP_LIVE_FRAMES, as xdp-tools' \
             xdp-trafficgen sends) runs `r1 = ifindex; r2 = 0; call bpf_redirect; exit` on the SYN, as if received \
             on the client veth, {} frames per batch and {} frames per run, each run re-sending one buffer and the \
             next run taking the next source. Every frame is redirected out of the client veth, whose \
             ndo_xdp_xmit queues the xdp_frame in the server veth's receive ring, the way a NIC's DMA fills its \
             ring; the server veth's NAPI poll then runs the native XDP program on that buffer. Nothing builds an \
             skb for a frame the program drops; for one it passes, veth wraps an skb around the same buffer \
             (no copy) and hands it to GRO and the stack, as a driver does. veth takes xdp_frames only into a \
             device whose NAPI is on, which an attached XDP program (or GRO) turns on: so nftables is measured \
             behind a do-nothing XDP_PASS program, a few nanoseconds of the nftables figures. Each test run \
             also switches the kernel's XDP dispatcher to the sending program and back, waiting for an RCU \
             grace period each way: that lowers SYN/s wall, not the CPU figures.\n",
            flood::LIVE_BATCH,
            grouped(flood::LIVE_CHUNK),
        );
        render_table(out, f, feed);
        let _ = writeln!(
            out,
            "The receive poll ran on the sending CPU, twice per batch of {}: the poll that empties the ring \
             uses its whole budget, so the kernel runs it once more to find the ring empty. The sender-only \
             baseline sends the same frames with the same program, redirected out of a veth whose \
             peer is down but has an XDP program attached: the veth advertises ndo_xdp_xmit, and veth_xdp_xmit, \
             finding no NAPI on the peer, refuses every frame before touching the ring (counted as transmit \
             drops); the redirect code returns them to the test run's page pool. So the baseline holds all the \
             sender's work up to the receiving veth's ring, and the page's return to the pool, which every \
             receive side also ends with. What the subtraction leaves is the receiving veth's work: the ring \
             enqueue and NAPI scheduling (a NIC's DMA and interrupt, charged here to every configuration alike, \
             which narrows the ratios rather than widening them), the poll, the program, and for nftables the \
             skb and the stack up to its hook. Subtracting the do-nothing program instead would remove that \
             per-frame driver work too and leave only the filters' own cost, which is shown separately below.\n",
            flood::LIVE_BATCH,
        );
        let _ = writeln!(
            out,
            "Receive-side ratios; the target is smtp-screen's XDP at least {NFT_TARGET}x cheaper per SYN than nftables \
             on this path:\n"
        );
        render_ratios(out, f, feed, &[Receiver::ScreenNative]);
        let (xdp_own, nft_own) = own_work(f, feed);
        let _ = writeln!(
            out,
            "The filters' own work, each above the cheapest drop at its hook: smtp-screen {xdp_own:.0} ns/SYN \
             (above the do-nothing program), nftables {nft_own:.0} ns/SYN (netdev ingress, above an unconditional \
             drop there). The do-nothing program's receive side ({:.0} ns/SYN) is what veth spends per frame \
             before any program runs; nftables' floor ({:.0} ns/SYN) adds building the skb and the stack up to \
             the ingress hook.\n",
            f.median_receive_side(feed, Receiver::NoopNative),
            f.median_receive_side(feed, Receiver::NftNetdevAll),
        );
    }

    fn render_skbs(out: &mut String, f: &FloodResults) {
        let feed = Feed::Skbs;
        let _ = writeln!(out, "### 2b. From a socket: skbs\n");
        let _ = writeln!(
            out,
            "The same SYNs written through an AF_PACKET socket with PACKET_QDISC_BYPASS in sendmmsg batches of {}: \
             every frame is an skb before it reaches veth, as from a local sender. The sender-only run sends \
             the same frames into a sink device (`{}`), which frees them in its transmit routine. Real figures, \
             but not what a NIC sees: veth must copy each skb into a page of its own before native XDP can run, \
             because the sender's skb lacks the 256 bytes of headroom XDP guarantees, and generic XDP runs on \
             the skb. The target is judged in 2a; the ratios here are for information.\n",
            flood::BATCH,
            f.sink_kind
        );
        render_table(out, f, feed);
        let _ = writeln!(
            out,
            "Here the receive poll runs once per SYN: each frame's transmit re-enables softirqs, and the sending \
             CPU polls for that one frame, so the per-poll work is not shared by a batch either.\n"
        );
        render_ratios(
            out,
            f,
            feed,
            &[Receiver::ScreenNative, Receiver::ScreenGeneric],
        );
        let (xdp_own, nft_own) = own_work(f, feed);
        let _ = writeln!(
            out,
            "The filters' own work, each above the cheapest drop at its hook: smtp-screen {xdp_own:.0} ns/SYN \
             (native, above the do-nothing program), nftables {nft_own:.0} ns/SYN (netdev ingress, above an \
             unconditional drop there). The rest of each receive side is the path to the hook, which for XDP \
             on veth, in either mode, includes that copy of every frame.\n"
        );
    }
}
