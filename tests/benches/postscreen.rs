//! smtp-screen side by side with the real postscreen: the same loads, in the same run, against
//! each.
//!
//! `cargo bench -p screen-tests --bench postscreen` (append `-- --quick` for a short run).
//!
//! Two sites, built alike, each a client and a server network namespace joined by a veth pair,
//! rbldnsd on the server's loopback and a private Postfix whose `virtual_transport` is
//! `discard` (an accepted message costs no delivery):
//!
//! - **postscreen**: Debian's Postfix with `smtp inet … 1 postscreen`, `smtpd pass`, `dnsblog`
//!   and `tlsproxy`, as Debian's master.cf runs it; dnsblog asks rbldnsd through the system
//!   resolver (a `resolv.conf` of the site's own);
//! - **smtp-screen**: `smtp-screen run` on port 25 handing passed clients to the same Postfix's
//!   smtpd `pass` service (`handoff = "postfix"`), with the kernel layer on the server's end of
//!   the link (generic mode) and the kernel deny policy answering denied SYNs with a RST
//!   (`kernel_action = "rst"`).
//!
//! Both have the same screening settings: the access list permits one legitimate client,
//! pregreeters and clients of DNSBL rank 3 or more are dropped with `521`, the greet wait is
//! two seconds. The client namespace takes all of 10.251.128.0/17 as local addresses (`ip route
//! add local`), so every bot has an address of its own. The screeners run one after another,
//! never both at once; rounds interleave them.
//!
//! 1. **Repeat offenders.** A warm-up has every bot address pregreet twice, so both screeners
//!    have seen it fail (smtp-screen's deny policy then denies it in the kernel). Then a flood
//!    of connections from those addresses, each pregreeting. Each connection must end as it
//!    should: refused at once by smtp-screen's XDP program, `521 5.5.1 Protocol error` from
//!    postscreen, which keeps no record of failures.
//! 2. **First contact.** Every connection from an address never seen before: half pregreet,
//!    half are listed in both DNS lists and wait silently for their `521 5.7.1`. A decision is
//!    a `PREGREET` or `DNSBL rank` line in the screener's log; their count must match.
//! 3. **Legitimate mail under attack.** The permitted client sends messages one after another,
//!    each one SMTP transaction through to smtpd: first alone, then while the flood of 1 runs
//!    and while the flood of 2 runs, at the same fixed rate against both screeners.
//!
//! CPU is counted three ways: the screening processes (smtp-screen: the daemon and the whole
//! Postfix behind it; postscreen: the whole Postfix instance, master included, whose
//! reaped children's time lands in master's), from /proc; the machine's system, irq and softirq
//! time from /proc/stat over the same interval, less the load generator's own system time; and
//! the generator's own time. A wrong outcome stops the benchmark instead of being counted. The
//! Markdown report goes to `$SMTP_SCREEN_BENCH_REPORT` (default `target/bench/postscreen.md`).
//!
//! `SMTP_SCREEN_BENCH_PERF=DIR` records a profile of the daemon (`perf record --call-graph
//! dwarf`) during each first-contact flood into DIR; perf's own cost then shows in the daemon's
//! CPU figures. `SMTP_SCREEN_BENCH_BEFORE=BINARY` runs the first-contact flood against an
//! earlier daemon binary too, in the same rounds, and reports the change.

use std::{
    collections::HashMap,
    env,
    fmt::Write as _,
    fs,
    io::{ErrorKind, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use screen_tests::bench::side_by_side::{
    BOT_REPLY_MAX, CONNECT_LIMIT, GREET_WAIT, LEGIT_HOST, LEGIT_WARM_UP, PREGREET, REPLY_WAIT,
    SITES, SMTP_PORT, THRESHOLD,
};
use screen_tests::{
    bench::{
        self, CLIENT_NETWORK, MachineCpu, POOL_SIZE, ProcStat, Result, SmtpSession,
        check_interrupted, client_addr, clock_ticks_per_second, connect_from, count_prefixed,
        median, quantile, read_to_close, take_client_network, ticks_to_seconds,
    },
    client_pool::{ClientPool, JobFailed},
    daemon::{Bed, CLIENT_HELO, Daemon, DaemonConfig, MYHOSTNAME, SENDER, quoted},
    netns::{ChildGuard, PinDir, output_within, smtp_screen_bin, stream_from, with_resolv_conf},
    postfix::{
        DNSBLOG_SERVICE, MAIL_DOMAIN, Postfix, PostfixConfig, SMTPD_PASS_SERVICE, TLSPROXY_SERVICE,
        postfix_version,
    },
    rbldnsd::{BL_ANSWER, BL2_ANSWER, Dataset, LOCAL_DNS, Rbldnsd, Zone},
};

/// Connections in screening at once; stress mode starts at 90% of it, beyond any load here.
const PRE_QUEUE_LIMIT: &str = "1000";

/// postscreen's instance's `default_process_limit` (see [`Site::postscreen`]).
const POSTSCREEN_PROCESS_LIMIT: &str = "500";

/// How long a screener may take to log what its clients have already seen.
const LOG_WAIT: Duration = Duration::from_secs(20);
/// The pause before each measured flood (see [`settle`]).
const SETTLE: Duration = Duration::from_secs(5);
/// The legitimate client starts this long after its flood, once the flood is in full swing.
const RAMP_UP: Duration = Duration::from_secs(1);
/// An earlier smtp-screen binary to compare the first-contact flood with, when set.
const BEFORE_VARIABLE: &str = "SMTP_SCREEN_BENCH_BEFORE";
/// Where `perf record` puts the daemon's profiles, when set.
const PERF_DIR_VARIABLE: &str = "SMTP_SCREEN_BENCH_PERF";
const PERF_ATTACH: Duration = Duration::from_millis(500);
const PERF_STOP: Duration = Duration::from_secs(30);
/// Upper bound for one `smtp-screen status`.
const TOOL_LIMIT: Duration = Duration::from_secs(30);

/// How much work a run does.
#[derive(Clone, Copy, Debug)]
struct Budget {
    quick: bool,
    /// Rounds, each running every part against both screeners; figures are medians.
    rounds: usize,
    /// Bot addresses of part 1, each warmed up with two pregreets.
    offenders: usize,
    /// Connections of part 1's flood, and how many at a time.
    repeat_connections: usize,
    repeat_concurrency: usize,
    /// Decisions of part 2's flood, and how many clients at a time.
    first_contacts: usize,
    first_concurrency: usize,
    /// Messages of the legitimate client in each of part 3's runs.
    messages: usize,
    /// The fixed rate of the floods that run under the legitimate client, connections per
    /// second, and the fresh addresses reserved for part 2's.
    repeat_rate: f64,
    first_rate: f64,
    first_reserve: usize,
    /// Longest one flood or one run of messages may take.
    phase_limit: Duration,
}

impl Budget {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rounds: 1,
                offenders: 400,
                repeat_connections: 3_000,
                repeat_concurrency: 100,
                first_contacts: 1_200,
                first_concurrency: 100,
                messages: 50,
                repeat_rate: 1_000.0,
                first_rate: 200.0,
                first_reserve: 1_500,
                phase_limit: Duration::from_secs(45),
            }
        } else {
            Self {
                quick,
                rounds: 2,
                offenders: 2_000,
                repeat_connections: 20_000,
                repeat_concurrency: 500,
                first_contacts: 4_000,
                first_concurrency: 100,
                messages: 500,
                repeat_rate: 2_000.0,
                first_rate: 300.0,
                first_reserve: 6_000,
                phase_limit: Duration::from_secs(120),
            }
        }
    }

    /// Pool indices of the first-contact addresses of round `round`: part 2's flood, then the
    /// flood under the legitimate client.
    fn first_contact(&self, round: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let start = self.offenders + round * (self.first_contacts + self.first_reserve);
        let middle = start + self.first_contacts;
        (start..middle, middle..middle + self.first_reserve)
    }

    fn pool_used(&self) -> usize {
        self.first_contact(self.rounds - 1).1.end
    }
}

fn main() -> ExitCode {
    bench::main("postscreen", |quick| run(Budget::new(quick)))
}

fn run(budget: Budget) -> Result<PathBuf> {
    let started = Instant::now();
    assert!(
        budget.pool_used() <= POOL_SIZE,
        "the budget needs more addresses than {CLIENT_NETWORK} holds"
    );
    screen_tests::ensure_packages(&["postfix", "rbldnsd"])?;
    eprintln!("starting the sites");
    let bin = smtp_screen_bin()?;
    let mut sites = vec![
        Site::start(Kind::Postscreen, &budget, &bin)?,
        Site::start(Kind::SmtpScreen, &budget, &bin)?,
    ];
    if let Some(before) = env::var_os(BEFORE_VARIABLE) {
        sites.push(Site::start(Kind::Before, &budget, Path::new(&before))?);
    }
    let mut results: Vec<Round> = Vec::new();
    let mut before: Vec<(Part, Part)> = Vec::new();
    for round in 0..budget.rounds {
        // Interleaved, and in the other order each round, so that none always goes first.
        let mut order: Vec<&Site> = sites.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut earlier = None;
        for site in order {
            eprintln!("round {}: {}", round + 1, site.kind);
            if site.kind == Kind::Before {
                earlier = Some(first_contact(site, &budget, round)?.0);
            } else {
                results.push(measure(site, &budget, round)?);
            }
            check_interrupted()?;
        }
        if let Some(earlier) = earlier {
            let current = results
                .iter()
                .rev()
                .find(|r| r.kind == Kind::SmtpScreen)
                .ok_or("no smtp-screen round")?;
            before.push((earlier, current.first.clone()));
        }
    }
    let report = report::render(&budget, &results, &before, started.elapsed());
    bench::write_report("postscreen", &report)
}

/// Which screener a site runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Postscreen,
    SmtpScreen,
    /// An earlier smtp-screen build ([`BEFORE_VARIABLE`]), for the first-contact flood only.
    Before,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Postscreen => "postscreen",
            Kind::SmtpScreen => "smtp-screen",
            Kind::Before => "smtp-screen before",
        })
    }
}

/// One site: namespaces, rbldnsd, Postfix and, for smtp-screen, the daemon. Fields drop in
/// order: daemon, pins, Postfix, rbldnsd, namespaces.
struct Site {
    kind: Kind,
    daemon: Option<Daemon>,
    pin: PinDir,
    postfix: Postfix,
    _rbldnsd: Rbldnsd,
    bed: Bed,
}

impl Site {
    /// The site of `kind`; smtp-screen's run the daemon binary `bin`.
    fn start(kind: Kind, budget: &Budget, bin: &Path) -> Result<Self> {
        let tag = match kind {
            Kind::Postscreen => "ps-bench",
            Kind::SmtpScreen => "ss-bench",
            Kind::Before => "sb-bench",
        };
        let bed = Bed::new(tag, &[LEGIT_HOST]);
        take_client_network(&bed, CLIENT_NETWORK, LEGIT_HOST)?;
        let rbldnsd = Rbldnsd::start(&bed.server, LOCAL_DNS, &zones(budget))?;
        let table = bed.write_table("access.cidr", &[(bed.v4(LEGIT_HOST), "permit")]);
        let access_list = format!("permit_mynetworks, cidr:{}", table.display());
        let pin = PinDir::new(tag);
        let (postfix, daemon) = match kind {
            Kind::Postscreen => (Self::postscreen(&bed, &access_list)?, None),
            Kind::SmtpScreen | Kind::Before => {
                let postfix = Postfix::start(
                    &bed.server,
                    &mta(SocketAddr::from(([127, 0, 0, 1], 10025)))
                        .inet_service("1", "discard")
                        .master_cf(SMTPD_PASS_SERVICE),
                )?;
                let socket = postfix.wait_for_pass_socket("smtpd", LOG_WAIT)?;
                let config = DaemonConfig::new(&bed)
                    .with_kernel_layer(&bed)
                    .set("kernel_action", quoted("rst"))
                    .set("handoff", quoted("postfix"))
                    .set("postfix_pass_socket", quoted(socket.display()))
                    .set("user", quoted("postfix"))
                    .set("mynetworks", quoted("127.0.0.0/8"))
                    .set("access_list", quoted(&access_list))
                    .set("greet_action", quoted("drop"))
                    .set("greet_wait", quoted(GREET_WAIT))
                    .set("dnsbl_sites", quoted(SITES))
                    .set("dnsbl_threshold", THRESHOLD)
                    .set("dnsbl_action", quoted("drop"))
                    .set("dns_servers", format!("[{}]", quoted(LOCAL_DNS)))
                    .set("pre_queue_limit", PRE_QUEUE_LIMIT);
                // The warm-up makes every offender fail twice within seconds, far beyond what
                // the circuit breaker lets through on a real MX. (An earlier build may not
                // know the option; it has no breaker either.)
                let config = match kind {
                    Kind::Before => config,
                    _ => config.set("kernel_deny_rate_limit", "1000000"),
                }
                .write(&bed, "smtp-screen.toml");
                let daemon = Daemon::start_binary(&bed, &pin, bin, &config, "daemon.log");
                (postfix, Some(daemon))
            }
        };
        Ok(Self {
            kind,
            daemon,
            pin,
            postfix,
            _rbldnsd: rbldnsd,
            bed,
        })
    }

    /// postscreen on port 25 with the same settings, its dnsblog asking rbldnsd through the
    /// system resolver.
    fn postscreen(bed: &Bed, access_list: &str) -> Result<Postfix> {
        let settings = [
            // master's listen queue of a unix service such as dnsblog is as long as the
            // process limit: with Debian's 100, a burst of first contacts overflows it, the
            // lookups fail at once (EAGAIN) and listed bots pass. An operator under attack
            // raises it; so does this.
            ("default_process_limit", POSTSCREEN_PROCESS_LIMIT),
            ("mynetworks", "127.0.0.0/8"),
            ("postscreen_access_list", access_list),
            ("postscreen_greet_action", "drop"),
            ("postscreen_greet_wait", GREET_WAIT),
            ("postscreen_dnsbl_sites", SITES),
            ("postscreen_dnsbl_threshold", THRESHOLD),
            ("postscreen_dnsbl_action", "drop"),
            ("postscreen_pre_queue_limit", PRE_QUEUE_LIMIT),
        ];
        let config = settings.iter().fold(
            mta(SocketAddr::new(bed.server_v4(), SMTP_PORT))
                .inet_service("1", "postscreen")
                .master_cf(SMTPD_PASS_SERVICE)
                .master_cf(DNSBLOG_SERVICE)
                .master_cf(TLSPROXY_SERVICE),
            |config, (name, value)| config.main_cf(name, value),
        );
        let resolv_conf = bed
            .scratch
            .write("resolv.conf", format!("nameserver {}\n", LOCAL_DNS.ip()))?;
        Ok(with_resolv_conf(&resolv_conf, || {
            Postfix::start(&bed.server, &config)
        })?)
    }

    fn smtp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bed.server_v4(), SMTP_PORT)
    }

    fn legit_addr(&self) -> IpAddr {
        self.bed.v4(LEGIT_HOST)
    }

    /// The screener's log lines: smtp-screen's without `smtp-screen[pid]: `, postscreen's
    /// without the maillog's time, host and `postfix/postscreen[pid]: `.
    fn lines(&self) -> Vec<String> {
        match &self.daemon {
            Some(daemon) => daemon.lines(),
            None => self.postfix.program_lines("postscreen"),
        }
    }

    /// How many screener lines start with each of `prefixes`.
    fn count(&self, prefixes: &[&str]) -> Vec<usize> {
        count_prefixed(&self.lines(), prefixes)
    }

    /// Waits until the screener has logged `expected` lines starting with each prefix.
    fn wait_for_counts(&self, prefixes: &[&str], expected: &[usize]) -> Result<()> {
        let screener = self.kind.to_string();
        bench::wait_for_counts(&screener, || self.lines(), prefixes, expected, LOG_WAIT)
    }

    /// What the screener logged about `client`, for a failure message.
    fn about(&self, client: Ipv4Addr) -> String {
        let tag = format!("[{client}]");
        let lines: Vec<String> = self
            .lines()
            .into_iter()
            .filter(|line| line.contains(&tag))
            .collect();
        let log = self.postfix.log();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("warning: ") || line.contains("fatal: "))
            .collect();
        format!(
            "{} logged about {client}:\n{}\nPostfix's last warnings:\n{}",
            self.kind,
            lines.join("\n"),
            warnings[warnings.len().saturating_sub(20)..].join("\n")
        )
    }

    /// How many sessions smtpd logged for the legitimate client.
    fn smtpd_sessions(&self) -> usize {
        let connect = format!("]: connect from unknown[{}]", self.legit_addr());
        self.postfix
            .log()
            .lines()
            .filter(|line| line.contains("postfix/smtpd[") && line.ends_with(&connect))
            .count()
    }

    /// CPU time of every process of the site's screening, by pid.
    fn processes(&self) -> Result<cpu::Processes> {
        let master = self
            .postfix
            .master_pid()
            .ok_or("Postfix's master has no pid file")?;
        let mut roots = vec![master];
        roots.extend(self.daemon.as_ref().map(Daemon::pid));
        cpu::Processes::of_trees(&roots)
    }

    /// The XDP program's counter `name`, from `smtp-screen status`; 0 without the kernel layer.
    fn xdp_counter(&self, name: &str) -> Result<u64> {
        if self.daemon.is_none() {
            return Ok(0);
        }
        let mut cmd = Command::new(smtp_screen_bin()?);
        cmd.arg("--pin-dir").arg(self.pin.path()).arg("status");
        let out = output_within(&mut cmd, TOOL_LIMIT)?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(name)).then(|| fields.next()?.parse().ok())?
            })
            .ok_or_else(|| format!("no counter {name} in `smtp-screen status`:\n{text}").into())
    }
}

/// The PostfixConfig both sites share: the greeting's name and a discarding delivery.
fn mta(listen: SocketAddr) -> PostfixConfig {
    PostfixConfig::new(listen)
        .myhostname(MYHOSTNAME)
        .main_cf("virtual_transport", "discard")
}

/// Both lists: every listed bot of every round in both (rank 4).
fn zones(budget: &Budget) -> Vec<Zone> {
    let mut bl = Zone::new("bl.test", Dataset::Ip4Set).with_test_point();
    let mut bl2 = Zone::new("bl2.test", Dataset::Ip4Set).with_test_point();
    for round in 0..budget.rounds {
        let (flood, reserve) = budget.first_contact(round);
        for index in flood.chain(reserve).filter(|&i| is_listed(i)) {
            bl = bl.list(client_addr(index), BL_ANSWER);
            bl2 = bl2.list(client_addr(index), BL2_ANSWER);
        }
    }
    vec![bl, bl2]
}

/// Of first-contact bots, every other one is DNS-listed and silent; the others pregreet.
fn is_listed(index: usize) -> bool {
    index.is_multiple_of(2)
}

/// What a bot does and how its connection must end.
#[derive(Clone, Copy, Debug)]
struct Job {
    index: usize,
    pregreet: bool,
    expect: Expect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A RST answers the SYN.
    Refused,
    /// `521 5.5.1 Protocol error`, then the close.
    ProtocolError,
    /// `521 5.7.1 … blocked using bl.test`, then the close.
    Blocked,
}

impl Job {
    fn offender(index: usize, denied: bool) -> Self {
        let expect = if denied {
            Expect::Refused
        } else {
            Expect::ProtocolError
        };
        Self {
            index,
            pregreet: true,
            expect,
        }
    }

    fn first_contact(index: usize) -> Self {
        let listed = is_listed(index);
        Self {
            index,
            pregreet: !listed,
            expect: if listed {
                Expect::Blocked
            } else {
                Expect::ProtocolError
            },
        }
    }

    /// Runs the connection (on a thread in the client namespace) and checks how it ended.
    fn play(&self, dst: SocketAddr) -> std::result::Result<(), String> {
        let src = client_addr(self.index);
        let got = bot_session(src, dst, self.pregreet).map_err(|e| format!("{src}: {e}"))?;
        let want = match self.expect {
            Expect::Refused => None,
            Expect::ProtocolError => Some("521 5.5.1 Protocol error".to_string()),
            Expect::Blocked => Some(format!(
                "521 5.7.1 Service unavailable; client [{src}] blocked using bl.test"
            )),
        };
        if got == want {
            Ok(())
        } else {
            Err(format!("{src} got {got:?}, expected {want:?}"))
        }
    }
}

/// One bot connection from `src`: connect, say [`PREGREET`] at once if `pregreet`, read until
/// the server closes. `None` when a RST refused the connection; otherwise the last line
/// received.
fn bot_session(src: Ipv4Addr, dst: SocketAddr, pregreet: bool) -> std::io::Result<Option<String>> {
    let mut stream = match connect_from(src, dst, CONNECT_LIMIT) {
        Ok(stream) => stream,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(e),
    };
    if pregreet {
        stream.write_all(PREGREET)?;
    }
    stream.set_read_timeout(Some(REPLY_WAIT))?;
    let received = read_to_close(&mut stream, BOT_REPLY_MAX)?;
    let text = String::from_utf8_lossy(&received);
    Ok(Some(
        text.lines()
            .last()
            .unwrap_or_default()
            .trim_end()
            .to_string(),
    ))
}

/// How a flood is paced: as fast as its clients go, or at a fixed rate.
#[derive(Clone, Copy, Debug)]
enum Pace {
    Closed,
    Rate(f64),
}

/// What a flood did.
#[derive(Debug)]
struct Flood {
    connections: usize,
    wall: Duration,
    ended: Instant,
}

/// Plays `count` jobs (`job(i)` for i in 0..count) against `site`, `concurrency` at a time,
/// paced by `pace`, until they are done, `stop` is set or `limit` has passed. The first wrong
/// outcome stops every client and fails the flood.
fn flood(
    site: &Site,
    count: usize,
    job: &(dyn Fn(usize) -> Job + Sync),
    concurrency: usize,
    pace: Pace,
    stop: &AtomicBool,
    limit: Duration,
) -> Result<Flood> {
    let dst = site.smtp_addr();
    let mut pool = ClientPool::new(&site.bed.client, concurrency, limit).until(stop);
    if let Pace::Rate(rate) = pace {
        pool = pool.paced(rate);
    }
    let finished = pool
        .run(count, |i| {
            job(i)
                .play(dst)
                .map_err(|problem| format!("{}: {problem}", site.kind))
        })
        .map_err(|e| match e.downcast::<JobFailed>() {
            Ok(failed) => {
                let client = client_addr(job(failed.job).index);
                format!("{failed}\n{}", site.about(client)).into()
            }
            Err(e) => e,
        })?;
    Ok(Flood {
        connections: finished.results.len(),
        wall: finished.wall(),
        ended: finished.ended,
    })
}

/// A flood that must get through all of its `count` jobs.
fn flood_all(
    site: &Site,
    count: usize,
    job: &(dyn Fn(usize) -> Job + Sync),
    concurrency: usize,
    limit: Duration,
) -> Result<Flood> {
    let never = AtomicBool::new(false);
    let flood = flood(site, count, job, concurrency, Pace::Closed, &never, limit)?;
    if flood.connections < count {
        return Err(format!(
            "{}: only {} of {count} connections within {limit:?}",
            site.kind, flood.connections
        )
        .into());
    }
    Ok(flood)
}

/// One mail transaction of the legitimate client through to smtpd, which must queue the
/// message. Returns the time from the connect call to the `250` after DATA.
fn transaction(site: &Site) -> Result<Duration> {
    let started = Instant::now();
    let stream = stream_from(
        &site.bed.client,
        site.legit_addr(),
        site.smtp_addr(),
        CONNECT_LIMIT,
    )?;
    stream.set_read_timeout(Some(REPLY_WAIT))?;
    let mut smtp = SmtpSession::new(stream);
    let mut step = |command: &str, want: &str| -> Result<String> {
        if !command.is_empty() {
            smtp.stream.write_all(command.as_bytes())?;
        }
        let reply = smtp.reply()?;
        if !reply.starts_with(want) {
            return Err(format!(
                "{}: the legitimate client got {reply:?} after {:?}, expected {want}",
                site.kind,
                command.lines().next().unwrap_or("connecting")
            )
            .into());
        }
        Ok(reply)
    };
    step("", "220 ")?;
    step(&format!("EHLO {CLIENT_HELO}\r\n"), "250 ")?;
    step(&format!("MAIL FROM:<{SENDER}>\r\n"), "250 ")?;
    step(&format!("RCPT TO:<user@{MAIL_DOMAIN}>\r\n"), "250 ")?;
    step("DATA\r\n", "354 ")?;
    step(
        "Subject: side by side\r\n\r\nOne message of the legitimate client.\r\n.\r\n",
        "250 2.0.0 Ok: queued",
    )?;
    let latency = started.elapsed();
    step("QUIT\r\n", "221 ")?;
    Ok(latency)
}

/// Latencies of the legitimate client.
#[derive(Clone, Debug, Default)]
struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    fn p50(&self) -> Duration {
        quantile(&self.samples, 0.5)
    }

    fn p99(&self) -> Duration {
        quantile(&self.samples, 0.99)
    }
}

/// `count` transactions one after another; each sample with the moment it finished. smtpd
/// must have logged every session.
fn legit_run(site: &Site, count: usize, limit: Duration) -> Result<Vec<(Instant, Duration)>> {
    let before = site.smtpd_sessions();
    let deadline = Instant::now() + limit;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        check_interrupted()?;
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: only {} of {count} messages within {limit:?}",
                site.kind,
                samples.len()
            )
            .into());
        }
        let latency = transaction(site)?;
        samples.push((Instant::now(), latency));
    }
    let deadline = Instant::now() + LOG_WAIT;
    while site.smtpd_sessions() < before + count {
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: smtpd logged {} of the legitimate client's {count} sessions",
                site.kind,
                site.smtpd_sessions() - before
            )
            .into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(samples)
}

/// The legitimate client's run while a flood runs beside it.
struct UnderAttack {
    latencies: Latencies,
    /// Connections the flood made.
    flood_connections: usize,
}

/// Runs the flood of `count` jobs at `rate` and, once it is under way, the legitimate
/// client's `messages`; the flood stops when the client is done. Only transactions finished
/// while the flood still ran count.
fn under_attack(
    site: &Site,
    budget: &Budget,
    count: usize,
    job: &(dyn Fn(usize) -> Job + Sync),
    rate: f64,
) -> Result<UnderAttack> {
    settle();
    let stop = AtomicBool::new(false);
    let (flood, legit) = thread::scope(|scope| {
        let flood = scope.spawn(|| {
            flood(
                site,
                count,
                job,
                budget.repeat_concurrency.max(budget.first_concurrency),
                Pace::Rate(rate),
                &stop,
                budget.phase_limit,
            )
        });
        thread::sleep(RAMP_UP);
        let legit = legit_run(site, budget.messages, budget.phase_limit);
        stop.store(true, Ordering::Relaxed);
        let flood = flood
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (flood, legit)
    });
    let flood = flood?;
    let samples = legit?
        .into_iter()
        .filter(|(finished, _)| *finished <= flood.ended)
        .map(|(_, latency)| latency)
        .collect();
    Ok(UnderAttack {
        latencies: Latencies { samples },
        flood_connections: flood.connections,
    })
}

/// CPU accounting from /proc.
mod cpu {
    use super::*;

    fn seconds(ticks: u64) -> f64 {
        ticks_to_seconds(ticks)
    }

    /// The CPU time, in ticks, of every process in some process trees, with what its reaped
    /// children used.
    #[derive(Clone, Debug, Default)]
    pub struct Processes {
        by_pid: HashMap<u32, (String, u64)>,
    }

    impl Processes {
        /// Every process descending from one of `roots`, the roots included.
        pub fn of_trees(roots: &[u32]) -> Result<Self> {
            let mut parents: HashMap<u32, (String, u32, u64)> = HashMap::new();
            for entry in fs::read_dir("/proc")? {
                let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Ok(stat) = ProcStat::read(pid) {
                    let ticks = stat.user + stat.system + stat.children_user + stat.children_system;
                    parents.insert(pid, (stat.name, stat.ppid, ticks));
                }
            }
            let descends = |mut pid: u32| {
                for _ in 0..16 {
                    if roots.contains(&pid) {
                        return true;
                    }
                    match parents.get(&pid) {
                        Some(&(_, ppid, _)) if ppid > 1 => pid = ppid,
                        _ => return false,
                    }
                }
                false
            };
            for root in roots {
                if !parents.contains_key(root) {
                    return Err(format!("process {root} is gone").into());
                }
            }
            let by_pid = parents
                .iter()
                .filter(|&(&pid, _)| descends(pid))
                .map(|(&pid, (name, _, ticks))| (pid, (name.clone(), *ticks)))
                .collect();
            Ok(Self { by_pid })
        }

        fn total(&self) -> u64 {
            self.by_pid.values().map(|(_, ticks)| ticks).sum()
        }

        /// Seconds used since `earlier`, in all and by process name; what processes used that
        /// exited since is under `exited` (it is in their parent's children's time).
        pub fn since(&self, earlier: &Processes) -> Usage {
            let total = seconds(self.total().saturating_sub(earlier.total()));
            let mut by_name: Vec<(String, f64)> = Vec::new();
            for (pid, (name, ticks)) in &self.by_pid {
                let before = earlier.by_pid.get(pid).map_or(0, |(_, t)| *t);
                let used = seconds(ticks.saturating_sub(before));
                match by_name.iter_mut().find(|(n, _)| n == name) {
                    Some(entry) => entry.1 += used,
                    None => by_name.push((name.clone(), used)),
                }
            }
            let named: f64 = by_name.iter().map(|(_, s)| s).sum();
            if total - named > 0.0 {
                by_name.push(("exited".into(), total - named));
            }
            by_name.retain(|(_, s)| *s > 0.0);
            by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
            Usage { total, by_name }
        }
    }

    /// CPU seconds used over an interval.
    #[derive(Clone, Debug, Default)]
    pub struct Usage {
        pub total: f64,
        pub by_name: Vec<(String, f64)>,
    }

    /// This process's user and system time, in ticks: the load generator's own.
    #[derive(Clone, Copy, Debug)]
    pub struct Generator {
        user: u64,
        system: u64,
    }

    impl Generator {
        pub fn now() -> Result<Self> {
            let stat = ProcStat::read(std::process::id())?;
            Ok(Self {
                user: stat.user,
                system: stat.system,
            })
        }
    }

    /// What a measured interval cost: the screening processes, the machine's kernel time less
    /// the generator's system time, and the generator.
    #[derive(Clone, Debug, Default)]
    pub struct Cost {
        pub screening: Usage,
        pub machine_kernel: f64,
        pub machine_user: f64,
        pub generator_system: f64,
        pub generator_user: f64,
    }

    impl Cost {
        /// The machine's kernel time that is not the generator's own system time.
        pub fn kernel_net(&self) -> f64 {
            (self.machine_kernel - self.generator_system).max(0.0)
        }
    }

    /// A snapshot at the start of an interval.
    pub struct Meter {
        processes: Processes,
        machine: MachineCpu,
        generator: Generator,
    }

    impl Meter {
        pub fn start(site: &Site) -> Result<Self> {
            Ok(Self {
                generator: Generator::now()?,
                machine: MachineCpu::now()?,
                processes: site.processes()?,
            })
        }

        pub fn stop(&self, site: &Site) -> Result<Cost> {
            let processes = site.processes()?;
            let machine = MachineCpu::now()?;
            let generator = Generator::now()?;
            Ok(Cost {
                screening: processes.since(&self.processes),
                machine_kernel: seconds(machine.kernel - self.machine.kernel),
                machine_user: seconds(machine.user - self.machine.user),
                generator_system: seconds(generator.system - self.generator.system),
                generator_user: seconds(generator.user - self.generator.user),
            })
        }
    }
}

/// One screener's figures of one round.
struct Round {
    kind: Kind,
    round: usize,
    repeat: Part,
    /// Connections of the repeat flood that reached userspace (`CONNECT` lines), and SYNs the
    /// XDP program refused.
    repeat_reached: usize,
    repeat_xdp_refused: u64,
    first: Part,
    /// Decisions of the first-contact flood: `PREGREET` and `DNSBL rank` lines.
    first_decisions: [usize; 2],
    alone: Latencies,
    under_repeat: UnderAttack,
    under_first: UnderAttack,
}

/// A flood measured alone.
#[derive(Clone)]
struct Part {
    connections: usize,
    wall: Duration,
    cost: cpu::Cost,
}

impl Part {
    fn per_thousand(&self, seconds: f64) -> f64 {
        seconds * 1000.0 / self.connections as f64
    }

    fn per_second(&self) -> f64 {
        self.connections as f64 / self.wall.as_secs_f64()
    }
}

const CONNECT: &str = "CONNECT from ";
const DECISIONS: [&str; 2] = ["PREGREET ", "DNSBL rank "];

/// Every part against one site.
fn measure(site: &Site, budget: &Budget, round: usize) -> Result<Round> {
    let offenders = budget.offenders;
    if round == 0 {
        warm_up(site, budget)?;
    }

    settle();
    eprintln!(
        "  repeat offenders: {} connections",
        budget.repeat_connections
    );
    let repeat_job = |i: usize| Job::offender(i % offenders, site.kind == Kind::SmtpScreen);
    let connects = site.count(&[CONNECT])[0];
    let refused = site.xdp_counter("rst_dynamic")?;
    let meter = cpu::Meter::start(site)?;
    let repeat_flood = flood_all(
        site,
        budget.repeat_connections,
        &repeat_job,
        budget.repeat_concurrency,
        budget.phase_limit,
    )?;
    let repeat = Part {
        connections: repeat_flood.connections,
        wall: repeat_flood.wall,
        cost: meter.stop(site)?,
    };
    let repeat_xdp_refused = site.xdp_counter("rst_dynamic")? - refused;
    if site.kind == Kind::SmtpScreen && repeat_xdp_refused < repeat.connections as u64 {
        return Err(format!(
            "the XDP program refused {repeat_xdp_refused} SYNs of {} refused connections",
            repeat.connections
        )
        .into());
    }
    if site.kind == Kind::Postscreen {
        site.wait_for_counts(&[CONNECT], &[connects + repeat.connections])?;
    }
    let repeat_reached = site.count(&[CONNECT])[0] - connects;
    report_part("repeat flood", &repeat);

    let (first, first_decisions) = first_contact(site, budget, round)?;
    let reserve = budget.first_contact(round).1;

    eprintln!("  legitimate client: {} messages alone", budget.messages);
    // smtpd processes start on demand; the first messages would time their start.
    legit_run(site, LEGIT_WARM_UP, budget.phase_limit)?;
    let alone = Latencies {
        samples: legit_run(site, budget.messages, budget.phase_limit)?
            .into_iter()
            .map(|(_, latency)| latency)
            .collect(),
    };
    report_latency("alone", &alone);
    eprintln!("  legitimate client under the repeat-offender flood");
    let cap = (budget.repeat_rate * budget.phase_limit.as_secs_f64()) as usize;
    let under_repeat = under_attack(site, budget, cap, &repeat_job, budget.repeat_rate)?;
    report_latency("under repeat offenders", &under_repeat.latencies);
    eprintln!("  legitimate client under the first-contact flood");
    let reserve_job = |i: usize| Job::first_contact(reserve.start + i);
    let under_first = under_attack(site, budget, reserve.len(), &reserve_job, budget.first_rate)?;
    report_latency("under first contact", &under_first.latencies);

    Ok(Round {
        kind: site.kind,
        round,
        repeat,
        repeat_reached,
        repeat_xdp_refused,
        first,
        first_decisions,
        alone,
        under_repeat,
        under_first,
    })
}

/// Lets the screener finish what the previous phase left it: postscreen's dnsblog goes on
/// answering the lookups of bots long gone, and while its listen queue is full, new lookups
/// fail and listed bots pass.
fn settle() {
    thread::sleep(SETTLE);
}

/// Part 2 against `site`: the first-contact flood of round `round`, every decision checked
/// in the log. Returns the flood's figures and its decisions (`PREGREET`, `DNSBL rank`).
fn first_contact(site: &Site, budget: &Budget, round: usize) -> Result<(Part, [usize; 2])> {
    let range = budget.first_contact(round).0;
    eprintln!("  first contact: {} decisions", range.len());
    let job = |i: usize| Job::first_contact(range.start + i);
    settle();
    let before = site.count(&DECISIONS);
    let listed = range.clone().filter(|&i| is_listed(i)).count();
    let decisions = [range.len() - listed, listed];
    let profile = Profile::start(site, round)?;
    let meter = cpu::Meter::start(site)?;
    let flood = flood_all(
        site,
        range.len(),
        &job,
        budget.first_concurrency,
        budget.phase_limit,
    )?;
    let cost = meter.stop(site)?;
    if let Some(profile) = profile {
        profile.stop()?;
    }
    site.wait_for_counts(
        &DECISIONS,
        &[before[0] + decisions[0], before[1] + decisions[1]],
    )?;
    let part = Part {
        connections: flood.connections,
        wall: flood.wall,
        cost,
    };
    report_part("first-contact flood", &part);
    Ok((part, decisions))
}

/// `perf record -g` on the daemon during the first-contact flood, when
/// `$SMTP_SCREEN_BENCH_PERF` names a directory for the profiles (`perf report -i FILE`).
struct Profile {
    perf: ChildGuard,
    output: PathBuf,
}

impl Profile {
    fn start(site: &Site, round: usize) -> Result<Option<Self>> {
        let (Some(dir), Some(daemon)) = (env::var_os(PERF_DIR_VARIABLE), &site.daemon) else {
            return Ok(None);
        };
        screen_tests::ensure_packages(&["linux-perf"])?;
        fs::create_dir_all(&dir)?;
        let name = format!("{}-first-contact-{}.perf.data", site.kind, round + 1);
        let output = Path::new(&dir).join(name.replace(' ', "-"));
        let mut cmd = Command::new("perf");
        // DWARF unwinding: the daemon is built without frame pointers.
        cmd.args(["record", "--call-graph", "dwarf,16384", "-F", "1999", "-o"])
            .arg(&output)
            .args(["-p", &daemon.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let perf = ChildGuard::spawn(&mut cmd)?;
        // perf attaches within a moment; what it misses of the flood's start is not missed
        // by the CPU figures, which come from /proc.
        thread::sleep(PERF_ATTACH);
        Ok(Some(Self { perf, output }))
    }

    /// Stops perf with SIGINT, on which it writes the profile out, as after Ctrl-C.
    fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child, which has not been reaped.
        if unsafe { libc::kill(self.perf.id() as libc::pid_t, libc::SIGINT) } != 0 {
            return Err(format!("stopping perf: {}", std::io::Error::last_os_error()).into());
        }
        let deadline = Instant::now() + PERF_STOP;
        let status = loop {
            if let Some(status) = self.perf.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                return Err(format!("perf record still running {PERF_STOP:?} after SIGINT").into());
            }
            thread::sleep(Duration::from_millis(50));
        };
        // perf ends itself with the signal once the profile is written.
        if !status.success() && status.signal() != Some(libc::SIGINT) {
            return Err(format!("perf record failed ({status})").into());
        }
        eprintln!("    profile: perf report -i {}", self.output.display());
        Ok(())
    }
}

/// Every offender pregreets twice, so that both screeners have seen it fail; smtp-screen must
/// then have denied every one in the kernel.
fn warm_up(site: &Site, budget: &Budget) -> Result<()> {
    eprintln!("  warm-up: {} offenders fail twice", budget.offenders);
    for _ in 0..2 {
        flood_all(
            site,
            budget.offenders,
            &|i| Job::offender(i, false),
            budget.repeat_concurrency,
            budget.phase_limit,
        )?;
    }
    if site.kind == Kind::SmtpScreen {
        site.wait_for_counts(&["KERNEL DENY "], &[budget.offenders])?;
    }
    Ok(())
}

fn report_part(what: &str, part: &Part) {
    eprintln!(
        "    {what}: {} connections in {:.2} s ({:.0}/s), screening CPU {:.3} s, machine kernel \
         less generator {:.3} s, generator {:.3} s",
        part.connections,
        part.wall.as_secs_f64(),
        part.per_second(),
        part.cost.screening.total,
        part.cost.kernel_net(),
        part.cost.generator_user + part.cost.generator_system
    );
}

fn report_latency(what: &str, latencies: &Latencies) {
    eprintln!(
        "    {what}: {} messages, p50 {:.1} ms, p99 {:.1} ms",
        latencies.samples.len(),
        ms(latencies.p50()),
        ms(latencies.p99())
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

mod report {
    use super::*;

    /// The median over rounds of `figure` for screener `kind`.
    fn med(rounds: &[Round], kind: Kind, figure: impl Fn(&Round) -> f64) -> f64 {
        let values: Vec<f64> = rounds
            .iter()
            .filter(|r| r.kind == kind)
            .map(figure)
            .collect();
        median(&values)
    }

    fn verdict(met: bool) -> &'static str {
        if met { "met" } else { "**not met**" }
    }

    pub fn render(
        budget: &Budget,
        rounds: &[Round],
        before: &[(Part, Part)],
        elapsed: Duration,
    ) -> String {
        let mut out = bench::report_header(
            "smtp-screen side by side with postscreen",
            "postscreen",
            budget.quick,
        );
        let _ = writeln!(
            out,
            "- smtp-screen: `{}`; postscreen: `{}`",
            bench::daemon_bin(),
            postfix_version()
        );
        let _ = writeln!(
            out,
            "- Duration: {:.0} s; {} round{}, the screeners one after another, never at once",
            elapsed.as_secs_f64(),
            budget.rounds,
            if budget.rounds == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            out,
            "- Settings of both: greet wait {GREET_WAIT}, greet action `drop`, lists \
             `{SITES}` (threshold {THRESHOLD}, action `drop`) served by rbldnsd, \
             pre-queue limit {PRE_QUEUE_LIMIT}, postscreen's Postfix with \
             `default_process_limit = {POSTSCREEN_PROCESS_LIMIT}` (with Debian's 100, dnsblog's \
             listen queue overflows in a burst and listed bots pass), the legitimate client permitted by the access \
             list; smtp-screen with its kernel deny policy (`kernel_action = \"rst\"`, XDP in \
             generic mode on the server's veth) and `handoff = \"postfix\"`.\n"
        );
        render_summary(&mut out, budget, rounds);
        render_repeat(&mut out, budget, rounds);
        render_first(&mut out, budget, rounds);
        render_latency(&mut out, budget, rounds);
        render_profile(&mut out, before);
        out
    }

    fn render_profile(out: &mut String, before: &[(Part, Part)]) {
        let _ = writeln!(
            out,
            "## The daemon's profile under first contacts\n\n\
             `perf record --call-graph dwarf` on the daemon during the first-contact flood \
             (`{PERF_DIR_VARIABLE}=DIR`) showed half of its time under the DNS list lookups \
             (hickory's resolver: a socket per query, its cache, message encoding and \
             decoding), a fifth in system calls on the clients' sockets, and, \
             spread over all of it, 18% in glibc's malloc and free (much of it consolidating \
             and unlinking free chunks), 5% formatting strings, most of them log lines built \
             in pieces. \
             Changed: the daemon allocates with mimalloc, and writes each log line into one \
             buffer sized for it. The allocator's gain shows under a load that keeps the \
             daemon busy (`cargo xtask bench dnsbl`); this flood, held back by the greet \
             wait, does not.\n"
        );
        if before.is_empty() {
            let _ = writeln!(
                out,
                "Set `{BEFORE_VARIABLE}` to an earlier daemon binary to measure the change \
                 here: the first-contact flood then runs against it too, in the same \
                 rounds.\n"
            );
            return;
        }
        let _ = writeln!(
            out,
            "The same first-contact flood against the earlier binary (`{}`) and this one, \
             one after the other in each round:\n",
            env::var(BEFORE_VARIABLE).unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "| round | before: screening CPU µs per decision | decisions per CPU s | after: screening CPU µs per decision | decisions per CPU s | after / before |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        let per_cpu = |p: &Part| p.connections as f64 / p.cost.screening.total;
        let mut ratios = Vec::new();
        for (round, (earlier, current)) in before.iter().enumerate() {
            let ratio = per_cpu(current) / per_cpu(earlier);
            ratios.push(ratio);
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {ratio:.2}x |",
                round + 1,
                1e6 / per_cpu(earlier),
                per_cpu(earlier),
                1e6 / per_cpu(current),
                per_cpu(current)
            );
        }
        let _ = writeln!(
            out,
            "\n**Decisions per CPU second, after / before: {:.2}x (median over rounds).**\n",
            median(&ratios)
        );
    }

    /// smtp-screen's figure (seconds) beside postscreen's as "how many times less". A figure
    /// under one tick of /proc's clock is shown as less than a tick, and the ratio as at least
    /// what a tick would give.
    struct TimesLess {
        ours: String,
        ratio: String,
        at_least: f64,
    }

    impl TimesLess {
        fn new(ours: f64, theirs: f64, tick: f64) -> Self {
            if ours < tick {
                let at_least = theirs / tick;
                Self {
                    ours: format!("< {:.2}", tick * 1e3),
                    ratio: format!("> {at_least:.0}x less"),
                    at_least,
                }
            } else {
                let at_least = theirs / ours;
                Self {
                    ours: format!("{:.2}", ours * 1e3),
                    ratio: format!("{at_least:.1}x less"),
                    at_least,
                }
            }
        }
    }

    fn render_summary(out: &mut String, budget: &Budget, rounds: &[Round]) {
        let (ps, ss) = (Kind::Postscreen, Kind::SmtpScreen);
        let repeat_cpu = |k| {
            med(rounds, k, |r| {
                r.repeat.per_thousand(r.repeat.cost.screening.total)
            })
        };
        let repeat_all = |k| {
            med(rounds, k, |r| {
                r.repeat
                    .per_thousand(r.repeat.cost.screening.total + r.repeat.cost.kernel_net())
            })
        };
        let first_rate = |k| {
            med(rounds, k, |r| {
                r.first.connections as f64 / r.first.cost.screening.total
            })
        };
        let p99_ratio = |k, under: fn(&Round) -> &UnderAttack| {
            med(rounds, k, |r| {
                ms(under(r).latencies.p99()) / ms(r.alone.p99())
            })
        };
        // One tick of /proc's clock, per 1,000 connections of the repeat flood.
        let tick = med(rounds, ss, |r| {
            r.repeat.per_thousand(1.0 / clock_ticks_per_second() as f64)
        });
        let first_ratio = first_rate(ss) / first_rate(ps);
        let under_repeat = [
            p99_ratio(ss, |r| &r.under_repeat),
            p99_ratio(ps, |r| &r.under_repeat),
        ];
        let under_first = [
            p99_ratio(ss, |r| &r.under_first),
            p99_ratio(ps, |r| &r.under_first),
        ];
        let _ = writeln!(out, "## Summary (medians over rounds)\n");
        let _ = writeln!(
            out,
            "| figure | smtp-screen | postscreen | ratio | target | |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
        for (figure, ours, theirs) in [
            (
                "repeat offenders: screening CPU ms per 1,000 connections",
                repeat_cpu(ss),
                repeat_cpu(ps),
            ),
            (
                "repeat offenders: screening CPU + machine kernel time less the generator's, ms per 1,000",
                repeat_all(ss),
                repeat_all(ps),
            ),
        ] {
            let less = TimesLess::new(ours, theirs, tick);
            let _ = writeln!(
                out,
                "| {figure} | {} | {:.1} | {} | ≥ 20x less | {} |",
                less.ours,
                theirs * 1e3,
                less.ratio,
                verdict(less.at_least >= 20.0)
            );
        }
        let _ = writeln!(
            out,
            "| first contact: decisions per screening CPU second | {:.0} | {:.0} | {:.2}x | ≥ 2x | {} |",
            first_rate(ss),
            first_rate(ps),
            first_ratio,
            verdict(first_ratio >= 2.0)
        );
        let _ = writeln!(
            out,
            "| legitimate p99 under repeat offenders / alone | {:.2} | {:.2} | | ≤ 1.2, below postscreen's | {} |",
            under_repeat[0],
            under_repeat[1],
            verdict(under_repeat[0] <= 1.2 && under_repeat[0] < under_repeat[1])
        );
        let _ = writeln!(
            out,
            "| legitimate p99 under first contact / alone | {:.2} | {:.2} | | ≤ 1.2, below postscreen's | {} |",
            under_first[0],
            under_first[1],
            verdict(under_first[0] <= 1.2 && under_first[0] < under_first[1])
        );
        let _ = writeln!(
            out,
            "\nScreening CPU: smtp-screen is the daemon plus the whole Postfix behind it, \
             postscreen the whole Postfix instance (master, postscreen, dnsblog, tlsproxy, \
             smtpd, and every process that exited meanwhile, through master's children's \
             time), user plus system time from /proc in ticks of {} ms. The machine's kernel \
             time (system, irq and softirq in /proc/stat) less the load generator's own \
             system time adds what the kernel did for the screener outside its processes, the \
             XDP program included. On veth the receiving side's softirq work often runs in \
             the sender's context and is then charged to the generator, so this is a lower \
             bound; the machine is shared with other work, which adds to it. {} messages per \
             latency run.\n",
            1000 / clock_ticks_per_second(),
            budget.messages
        );
    }

    fn render_repeat(out: &mut String, budget: &Budget, rounds: &[Round]) {
        let _ = writeln!(
            out,
            "## 1. Repeat offenders\n\n{} bot addresses, each warmed up with two pregreets; \
             then {} connections from them, {} at a time, each pregreeting. smtp-screen must \
             refuse each in the kernel (RST), postscreen must answer `521 5.5.1 Protocol \
             error`.\n",
            budget.offenders, budget.repeat_connections, budget.repeat_concurrency
        );
        let _ = writeln!(
            out,
            "| round | screener | connections | wall s | conn/s | reached userspace | XDP RSTs | screening CPU s | by process | machine kernel s | generator sys s | generator user s | machine user s |"
        );
        let _ = writeln!(
            out,
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
        );
        for r in rounds {
            part_row(
                out,
                r,
                &r.repeat,
                &format!("{} | {}", r.repeat_reached, r.repeat_xdp_refused),
            );
        }
        let _ = writeln!(out);
    }

    fn render_first(out: &mut String, budget: &Budget, rounds: &[Round]) {
        let _ = writeln!(
            out,
            "## 2. First contact\n\nEvery connection from a new address, {} at a time: half \
             pregreet (`521 5.5.1`), half are listed in both lists and wait for `521 5.7.1` \
             after the greet wait. Decisions are `PREGREET` and `DNSBL rank` lines, which must \
             match the connections.\n",
            budget.first_concurrency
        );
        let _ = writeln!(
            out,
            "| round | screener | decisions | wall s | decisions/s | PREGREET | DNSBL rank | screening CPU s | by process | machine kernel s | generator sys s | generator user s | machine user s | decisions per CPU s |"
        );
        let _ = writeln!(
            out,
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"
        );
        for r in rounds {
            part_row(
                out,
                r,
                &r.first,
                &format!("{} | {}", r.first_decisions[0], r.first_decisions[1]),
            );
            out.pop();
            let _ = writeln!(
                out,
                " {:.0} |",
                r.first.connections as f64 / r.first.cost.screening.total
            );
        }
        let _ = writeln!(out);
    }

    fn part_row(out: &mut String, r: &Round, part: &Part, counts: &str) {
        let by_process: Vec<String> = part
            .cost
            .screening
            .by_name
            .iter()
            .map(|(name, s)| format!("{name} {s:.2}"))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {:.0} | {counts} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.round + 1,
            r.kind,
            part.connections,
            part.wall.as_secs_f64(),
            part.per_second(),
            part.cost.screening.total,
            by_process.join(", "),
            part.cost.machine_kernel,
            part.cost.generator_system,
            part.cost.generator_user,
            part.cost.machine_user
        );
    }

    fn render_latency(out: &mut String, budget: &Budget, rounds: &[Round]) {
        let _ = writeln!(
            out,
            "## 3. Legitimate mail under attack\n\n{} messages one after another from the \
             permitted client, each one transaction (EHLO, MAIL, RCPT, DATA) through to smtpd; \
             latency from the connect call to the `250` after DATA. Under attack, the flood \
             runs at a fixed rate, the same for both screeners: repeat offenders at {:.0}/s, \
             first contacts at {:.0}/s; only messages finished while the flood ran count.\n",
            budget.messages, budget.repeat_rate, budget.first_rate
        );
        let _ = writeln!(
            out,
            "| round | screener | alone p50 ms | p99 ms | under repeat: messages | flood conns | p50 ms | p99 ms | p99 ratio | under first contact: messages | flood conns | p50 ms | p99 ms | p99 ratio |"
        );
        let _ = writeln!(
            out,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in rounds {
            let alone = ms(r.alone.p99());
            let under = |u: &UnderAttack| {
                format!(
                    "{} | {} | {:.1} | {:.1} | {:.2}",
                    u.latencies.samples.len(),
                    u.flood_connections,
                    ms(u.latencies.p50()),
                    ms(u.latencies.p99()),
                    ms(u.latencies.p99()) / alone
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {alone:.1} | {} | {} |",
                r.round + 1,
                r.kind,
                ms(r.alone.p50()),
                under(&r.under_repeat),
                under(&r.under_first)
            );
        }
        let _ = writeln!(out);
    }
}
