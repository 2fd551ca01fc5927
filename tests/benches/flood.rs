//! A mixed flood of hostile clients while a legitimate client sends its mail, against
//! smtp-screen and, under the same load, against Debian's postscreen.
//!
//! `cargo bench -p screen-tests --bench flood` (append `-- --quick` for a short run).
//!
//! Two sites, built alike, each a client and a server network namespace joined by a veth pair,
//! rbldnsd on the server's loopback and a private Postfix that delivers into a mailbox:
//!
//! - **smtp-screen**: `smtp-screen run` on port 25 relaying passed clients to the Postfix on
//!   127.0.0.1:10025 (`handoff = "proxy"`, PROXY v2);
//! - **postscreen**: Debian's Postfix with `smtp inet … 1 postscreen`, `smtpd pass`, `dnsblog`
//!   and `tlsproxy`, dnsblog asking rbldnsd through a `resolv.conf` of the site's own.
//!
//! Both have the same settings: greet wait 2s, greet and DNSBL action `drop`, two lists, one
//! client permitted by the access list, Postfix's `default_process_limit` 500. The hostile
//! clients each have an address of their own in 10.251.128.0/17 and come in a mix of five:
//! pregreeters, DNSBL-listed bots that wait silently, slowloris clients that take the
//! greeting and trickle a command a byte at a time, garbage senders, and clients that pass,
//! say EHLO and then idle in the relay (or in smtpd). A fixed number run at once. One second
//! into the flood the allowlisted client sends its messages one after another, each a whole
//! SMTP transaction through to Postfix; every one must end up in the mailbox.
//!
//! The full run has two floods one after another against the same screener, each from
//! addresses of its own (a leak grows with each, a high-water mark does not); the quick run
//! one. Before the first flood (after
//! a few warm-up messages) and after each, once every client has gone, the benchmark reads
//! the screener's open descriptors (`/proc/PID/fd`), threads and RSS: the descriptors and
//! threads must come back to where they started, and RSS within 10% (given 15 s to). CPU is that of
//! every process in the server namespace over the flood (reaped children's time included
//! through their parent). The Markdown report goes to `$SMTP_SCREEN_BENCH_REPORT` (default
//! `target/bench/flood.md`); it is written before a failed check stops the benchmark.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use screen_tests::bench::side_by_side::{
    BOT_REPLY_MAX, CONNECT_LIMIT, GREET_WAIT, LEGIT_HOST, LEGIT_WARM_UP, PREGREET, REPLY_WAIT,
    SITES, SMTP_PORT, Screener as Kind, THRESHOLD,
};
use screen_tests::{
    bench::{
        self, CLIENT_NETWORK, POOL_SIZE, ProcStat, Result, SmtpSession, client_addr, connect_from,
        grouped, quantile, rss_kib, take_client_network, ticks_to_seconds,
    },
    client_pool::ClientPool,
    daemon::{Bed, CLIENT_HELO, Daemon, DaemonConfig, MYHOSTNAME, SENDER, quoted},
    netns::{PinDir, smtp_screen_bin, stream_from, with_resolv_conf},
    postfix::{
        DNSBLOG_SERVICE, MAIL_DOMAIN, Postfix, PostfixConfig, SMTPD_PASS_SERVICE, TLSPROXY_SERVICE,
        postfix_version,
    },
    rbldnsd::{BL_ANSWER, BL2_ANSWER, Dataset, LOCAL_DNS, Rbldnsd, Zone},
};

/// Connections in screening (and passed) at once: beyond any load here.
const QUEUE_LIMIT: &str = "1000";
/// Relayed connections at once: beyond the idle and slow clients the flood keeps open.
const RELAY_MAX_CONNECTIONS: &str = "1000";
/// Each hostile client has an address of its own and the legitimate one sends one message at
/// a time, so the default per-client limit holds; set here as the benchmark needs it.
const CLIENT_CONNECTION_COUNT_LIMIT: &str = "50";
/// Postfix's process limit on both sites, so that smtpd processes are not what runs out.
const PROCESS_LIMIT: &str = "500";

/// The legitimate client starts this long into the flood.
const RAMP_UP: Duration = Duration::from_secs(1);
/// How long every message may take to reach the mailbox, and the screener's descriptors and
/// threads to come back, after the flood.
const SETTLE_LIMIT: Duration = Duration::from_secs(40);
/// How long, within [`SETTLE_LIMIT`], RSS is given to come back.
const RSS_WAIT: Duration = Duration::from_secs(15);
/// The most a figure of RSS may grow over the flood.
const RSS_TOLERANCE: f64 = 0.10;

#[derive(Clone, Copy, Debug)]
struct Budget {
    quick: bool,
    clients: usize,
    concurrency: usize,
    messages: usize,
    /// Floods one after another against the same screener, each with its messages and from
    /// addresses of its own: a leak grows with every one, a high-water mark does not.
    rounds: usize,
    /// How long a slowloris client trickles and an idle client idles before hanging up.
    linger: Duration,
    trickle_every: Duration,
    flood_limit: Duration,
}

impl Budget {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                clients: 500,
                concurrency: 100,
                messages: 50,
                rounds: 1,
                linger: Duration::from_secs(2),
                trickle_every: Duration::from_millis(250),
                flood_limit: Duration::from_secs(40),
            }
        } else {
            Self {
                quick,
                clients: 10_000,
                concurrency: 400,
                messages: 500,
                rounds: 2,
                linger: Duration::from_secs(4),
                trickle_every: Duration::from_millis(500),
                flood_limit: Duration::from_secs(240),
            }
        }
    }
}

fn main() -> ExitCode {
    bench::main("flood", |quick| run(Budget::new(quick)))
}

fn run(budget: Budget) -> Result<PathBuf> {
    let started = Instant::now();
    assert!(
        budget.clients * budget.rounds <= POOL_SIZE,
        "more clients than {CLIENT_NETWORK} holds"
    );
    screen_tests::ensure_packages(&["postfix", "rbldnsd"])?;
    let bin = smtp_screen_bin()?;
    let mut results = Vec::new();
    for kind in [Kind::SmtpScreen, Kind::Postscreen] {
        eprintln!("{kind}: starting the site");
        let site = Site::start(kind, &budget, &bin)?;
        eprintln!("{kind}: flood of {} clients", budget.clients);
        results.push(measure(&site, &budget)?);
        bench::check_interrupted()?;
    }
    let failures: Vec<String> = results.iter().flat_map(Outcome::failures).collect();
    let report = render(&budget, &results, &failures, started.elapsed());
    let path = bench::write_report("flood", &report)?;
    if failures.is_empty() {
        Ok(path)
    } else {
        Err(format!("{} (report: {})", failures.join("; "), path.display()).into())
    }
}

/// Fields drop in order: daemon, pins, Postfix, rbldnsd, namespaces.
struct Site {
    kind: Kind,
    daemon: Option<Daemon>,
    _pin: PinDir,
    postfix: Postfix,
    _rbldnsd: Rbldnsd,
    bed: Bed,
}

impl Site {
    fn start(kind: Kind, budget: &Budget, bin: &Path) -> Result<Self> {
        let tag = match kind {
            Kind::SmtpScreen => "ss-flood",
            Kind::Postscreen => "ps-flood",
        };
        let bed = Bed::new(tag, &[LEGIT_HOST]);
        take_client_network(&bed, CLIENT_NETWORK, LEGIT_HOST)?;
        let rbldnsd = Rbldnsd::start(&bed.server, LOCAL_DNS, &zones(budget))?;
        let table = bed.write_table("access.cidr", &[(bed.v4(LEGIT_HOST), "permit")]);
        let access_list = format!("permit_mynetworks, cidr:{}", table.display());
        let pin = PinDir::new(tag);
        let (postfix, daemon) = match kind {
            Kind::SmtpScreen => {
                let postfix = Postfix::start(
                    &bed.server,
                    &bed.backend_config()
                        .main_cf("default_process_limit", PROCESS_LIMIT),
                )?;
                let config = DaemonConfig::new(&bed)
                    .set("handoff", quoted("proxy"))
                    .set("mynetworks", quoted("127.0.0.0/8"))
                    .set("access_list", quoted(&access_list))
                    .set("greet_action", quoted("drop"))
                    .set("greet_wait", quoted(GREET_WAIT))
                    .set("dnsbl_sites", quoted(SITES))
                    .set("dnsbl_threshold", THRESHOLD)
                    .set("dnsbl_action", quoted("drop"))
                    .set("dns_servers", format!("[{}]", quoted(LOCAL_DNS)))
                    .set("pre_queue_limit", QUEUE_LIMIT)
                    .set("post_queue_limit", QUEUE_LIMIT)
                    .set("relay_max_connections", RELAY_MAX_CONNECTIONS)
                    .set(
                        "client_connection_count_limit",
                        CLIENT_CONNECTION_COUNT_LIMIT,
                    )
                    .write(&bed, "smtp-screen.toml");
                let daemon = Daemon::start_binary(&bed, &pin, bin, &config, "daemon.log");
                (postfix, Some(daemon))
            }
            Kind::Postscreen => {
                let settings = [
                    ("default_process_limit", PROCESS_LIMIT),
                    ("mynetworks", "127.0.0.0/8"),
                    ("postscreen_access_list", access_list.as_str()),
                    ("postscreen_greet_action", "drop"),
                    ("postscreen_greet_wait", GREET_WAIT),
                    ("postscreen_dnsbl_sites", SITES),
                    ("postscreen_dnsbl_threshold", THRESHOLD),
                    ("postscreen_dnsbl_action", "drop"),
                    ("postscreen_pre_queue_limit", QUEUE_LIMIT),
                    ("postscreen_post_queue_limit", QUEUE_LIMIT),
                    (
                        "postscreen_client_connection_count_limit",
                        CLIENT_CONNECTION_COUNT_LIMIT,
                    ),
                ];
                let config = settings.iter().fold(
                    PostfixConfig::new(SocketAddr::new(bed.server_v4(), SMTP_PORT))
                        .myhostname(MYHOSTNAME)
                        .inet_service("1", "postscreen")
                        .master_cf(SMTPD_PASS_SERVICE)
                        .master_cf(DNSBLOG_SERVICE)
                        .master_cf(TLSPROXY_SERVICE),
                    |config, (name, value)| config.main_cf(name, value),
                );
                let resolv_conf = bed
                    .scratch
                    .write("resolv.conf", format!("nameserver {}\n", LOCAL_DNS.ip()))?;
                let postfix =
                    with_resolv_conf(&resolv_conf, || Postfix::start(&bed.server, &config))?;
                (postfix, None)
            }
        };
        Ok(Self {
            kind,
            daemon,
            _pin: pin,
            postfix,
            _rbldnsd: rbldnsd,
            bed,
        })
    }

    fn smtp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bed.server_v4(), SMTP_PORT)
    }

    /// The screening process: the daemon, or the postscreen process master runs.
    fn screener_pid(&self) -> Result<u32> {
        match &self.daemon {
            Some(daemon) => Ok(daemon.pid()),
            None => self
                .postfix
                .service_pids("postscreen")
                .first()
                .copied()
                .ok_or_else(|| "postscreen is not running".into()),
        }
    }
}

fn zones(budget: &Budget) -> Vec<Zone> {
    let mut bl = Zone::new("bl.test", Dataset::Ip4Set).with_test_point();
    let mut bl2 = Zone::new("bl2.test", Dataset::Ip4Set).with_test_point();
    for index in (0..budget.clients * budget.rounds).filter(|&i| Bot::of(i) == Bot::Listed) {
        bl = bl.list(client_addr(index), BL_ANSWER);
        bl2 = bl2.list(client_addr(index), BL2_ANSWER);
    }
    vec![bl, bl2]
}

/// The five kinds of hostile client, in turn by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Bot {
    Pregreet,
    Listed,
    Slowloris,
    Garbage,
    Idle,
}

const BOTS: [Bot; 5] = [
    Bot::Pregreet,
    Bot::Listed,
    Bot::Slowloris,
    Bot::Garbage,
    Bot::Idle,
];

impl Bot {
    fn of(index: usize) -> Self {
        BOTS[index % BOTS.len()]
    }

    fn name(self) -> &'static str {
        match self {
            Bot::Pregreet => "pregreeters",
            Bot::Listed => "DNSBL-listed, silent",
            Bot::Slowloris => "slowloris (trickle after the greeting)",
            Bot::Garbage => "garbage senders",
            Bot::Idle => "pass, EHLO, then idle",
        }
    }
}

/// How a hostile client's connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum End {
    /// A 4xx or 5xx reply and the close, or a refused connect: turned away.
    Refused,
    /// Greeted with `220` (and, for the idle client, its EHLO answered): let through.
    Served,
    /// Anything else: a connect or read that timed out, a close without a reply.
    Failed,
}

/// One hostile client's connection.
fn play(bot: Bot, src: Ipv4Addr, dst: SocketAddr, budget: &Budget) -> End {
    let mut stream = match connect_from(src, dst, CONNECT_LIMIT) {
        Ok(stream) => stream,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return End::Refused,
        Err(_) => return End::Failed,
    };
    if stream.set_read_timeout(Some(REPLY_WAIT)).is_err() {
        return End::Failed;
    }
    let ended = |received: &[u8]| {
        let text = String::from_utf8_lossy(received);
        match text.lines().last().map(str::trim_end) {
            Some(line) if line.starts_with('4') || line.starts_with('5') => End::Refused,
            Some(line) if line.starts_with("220") => End::Served,
            _ => End::Failed,
        }
    };
    match bot {
        Bot::Pregreet | Bot::Garbage | Bot::Listed => {
            let said: Vec<u8> = match bot {
                Bot::Pregreet => PREGREET.to_vec(),
                Bot::Garbage => (0..512u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect(),
                _ => Vec::new(),
            };
            if !said.is_empty() && stream.write_all(&said).is_err() {
                return End::Refused;
            }
            match bench::read_to_close(&mut stream, BOT_REPLY_MAX) {
                Ok(received) => ended(&received),
                Err(_) => End::Failed,
            }
        }
        Bot::Slowloris | Bot::Idle => {
            let mut smtp = SmtpSession::new(stream);
            match smtp.reply() {
                Ok(line) if line.starts_with("220") => {}
                Ok(line) => return ended(line.as_bytes()),
                Err(_) => return End::Failed,
            }
            let until = Instant::now() + budget.linger;
            if bot == Bot::Idle {
                match smtp.command("EHLO idle.example") {
                    Ok(line) if line.starts_with("250") => {}
                    Ok(line) => return ended(line.as_bytes()),
                    Err(_) => return End::Failed,
                }
                // Idle, noticing an early close.
                let _ = smtp
                    .stream
                    .set_read_timeout(Some(until.saturating_duration_since(Instant::now())));
                let mut buf = [0u8; 512];
                return match smtp.stream.read(&mut buf) {
                    Ok(0) => End::Failed,
                    Ok(n) => ended(&buf[..n]),
                    Err(_) => End::Served,
                };
            }
            let command = b"EHLO slowloris.example.with.a.long.name\r\n";
            for byte in command.iter().cycle() {
                if Instant::now() >= until {
                    break;
                }
                if smtp.stream.write_all(&[*byte]).is_err() {
                    return End::Refused;
                }
                thread::sleep(budget.trickle_every);
            }
            End::Served
        }
    }
}

/// The screener's open descriptors, threads and RSS.
#[derive(Clone, Copy, Debug)]
struct Footprint {
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

impl Footprint {
    fn of(pid: u32) -> Result<Self> {
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
            .count();
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        let threads = status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| format!("no Threads in /proc/{pid}/status"))?;
        Ok(Self {
            fds,
            threads,
            rss_kib: rss_kib(pid)?,
        })
    }

    /// Descriptors and threads back to `start`'s (RSS is read then, not waited for).
    fn settled(&self, start: &Footprint) -> bool {
        self.fds <= start.fds && self.threads <= start.threads
    }

    fn rss_within(&self, start: &Footprint) -> bool {
        self.rss_kib as f64 <= start.rss_kib as f64 * (1.0 + RSS_TOLERANCE)
    }
}

/// CPU ticks of every process in the server namespace, reaped children's included.
fn namespace_ticks(site: &Site) -> Result<HashMap<u32, u64>> {
    let mut ticks = HashMap::new();
    for pid in site.bed.server.pids()? {
        if let Ok(stat) = ProcStat::read(pid) {
            let total = stat.user + stat.system + stat.children_user + stat.children_system;
            ticks.insert(pid, total);
        }
    }
    Ok(ticks)
}

/// Ticks spent between two readings, by the processes alive at the second.
fn ticks_between(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(pid, &t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum()
}

/// What one site did.
#[derive(Debug)]
struct Outcome {
    kind: Kind,
    ends: HashMap<(Bot, End), usize>,
    flood_wall: Duration,
    latencies: Vec<Duration>,
    legit_wall: Duration,
    legit_errors: Vec<String>,
    messages: usize,
    delivered: usize,
    cpu_seconds: f64,
    pid: u32,
    start: Footprint,
    /// The footprint after each flood, the last one [`Outcome::end`].
    afters: Vec<Footprint>,
    end: Footprint,
    /// The screener process the end footprint was read from, when it is another one.
    end_pid: u32,
    settle: Duration,
}

impl Outcome {
    fn count(&self, end: End) -> usize {
        self.ends
            .iter()
            .filter(|((_, e), _)| *e == end)
            .map(|(_, n)| n)
            .sum()
    }

    /// What this run must not show; every screener is held to it.
    fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.delivered != self.messages {
            out.push(format!(
                "{}: {} of {} legitimate messages in the mailbox",
                self.kind, self.delivered, self.messages
            ));
        }
        if let Some(first) = self.legit_errors.first() {
            out.push(format!(
                "{}: {} legitimate transactions failed, the first: {first}",
                self.kind,
                self.legit_errors.len()
            ));
        }
        if self.pid == self.end_pid && self.kind == Kind::SmtpScreen {
            if self.end.fds > self.start.fds {
                out.push(format!(
                    "{}: {} open descriptors after the flood, {} before",
                    self.kind, self.end.fds, self.start.fds
                ));
            }
            if self.end.threads > self.start.threads {
                out.push(format!(
                    "{}: {} threads after the flood, {} before",
                    self.kind, self.end.threads, self.start.threads
                ));
            }
            if !self.end.rss_within(&self.start) {
                out.push(format!(
                    "{}: RSS {} KiB after the flood, {} KiB before (more than {:.0}% over)",
                    self.kind,
                    self.end.rss_kib,
                    self.start.rss_kib,
                    RSS_TOLERANCE * 100.0
                ));
            }
        }
        out
    }
}

/// A mail transaction of the legitimate client carrying `token`; the time from the connect
/// call to the `250` after DATA.
fn transaction(site: &Site, token: &str) -> Result<Duration> {
    let started = Instant::now();
    let stream = stream_from(
        &site.bed.client,
        site.bed.v4(LEGIT_HOST),
        site.smtp_addr(),
        CONNECT_LIMIT,
    )?;
    stream.set_read_timeout(Some(REPLY_WAIT))?;
    let mut smtp = SmtpSession::new(stream);
    let mut step = |command: &str, want: &str| -> Result<()> {
        if !command.is_empty() {
            smtp.stream.write_all(command.as_bytes())?;
        }
        let reply = smtp.reply()?;
        if reply.starts_with(want) {
            Ok(())
        } else {
            Err(format!(
                "{token}: {reply:?} after {:?}, expected {want}",
                command.lines().next().unwrap_or("connecting")
            )
            .into())
        }
    };
    step("", "220 ")?;
    step(&format!("EHLO {CLIENT_HELO}\r\n"), "250 ")?;
    step(&format!("MAIL FROM:<{SENDER}>\r\n"), "250 ")?;
    step(&format!("RCPT TO:<user@{MAIL_DOMAIN}>\r\n"), "250 ")?;
    step("DATA\r\n", "354 ")?;
    step(
        &format!("Subject: {token}\r\n\r\nOne legitimate message under a flood.\r\n.\r\n"),
        "250 ",
    )?;
    let latency = started.elapsed();
    step("QUIT\r\n", "221 ")?;
    Ok(latency)
}

fn token(n: usize) -> String {
    format!("flood-legit-{n:04}")
}

/// Messages of the mailbox whose subject is a legitimate client's token.
fn delivered(site: &Site) -> usize {
    site.postfix
        .mailbox()
        .lines()
        .filter(|line| {
            line.strip_prefix("Subject: flood-legit-")
                .is_some_and(|n| n.trim_end().parse::<usize>().is_ok())
        })
        .count()
}

fn measure(site: &Site, budget: &Budget) -> Result<Outcome> {
    for n in 0..LEGIT_WARM_UP {
        transaction(site, &format!("warm-up-{n}"))?;
    }
    // Lets the warm-up's connections close and postscreen start, then reads the baseline.
    thread::sleep(Duration::from_secs(2));
    let pid = site.screener_pid()?;
    let start = Footprint::of(pid)?;
    let mut outcome = Outcome {
        kind: site.kind,
        ends: HashMap::new(),
        flood_wall: Duration::ZERO,
        latencies: Vec::new(),
        legit_wall: Duration::ZERO,
        legit_errors: Vec::new(),
        messages: 0,
        delivered: 0,
        cpu_seconds: 0.0,
        pid,
        start,
        afters: Vec::new(),
        end: start,
        end_pid: pid,
        settle: Duration::ZERO,
    };
    for round in 0..budget.rounds {
        flood_once(site, budget, round, &mut outcome)?;
        bench::check_interrupted()?;
    }
    Ok(outcome)
}

/// One flood with the legitimate client's messages, added to `outcome`; then waits until
/// every message so far is in the mailbox and the screener's descriptors and threads are back
/// (RSS too, for a while), and reads its footprint.
fn flood_once(site: &Site, budget: &Budget, round: usize, outcome: &mut Outcome) -> Result<()> {
    let ticks_before = namespace_ticks(site)?;
    let dst = site.smtp_addr();
    let (flood, legit) = thread::scope(|scope| {
        let legit = scope.spawn(|| {
            thread::sleep(RAMP_UP);
            let started = Instant::now();
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            for n in 0..budget.messages {
                if bench::interrupted() {
                    break;
                }
                match transaction(site, &token(round * budget.messages + n)) {
                    Ok(latency) => latencies.push(latency),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (latencies, errors, started.elapsed())
        });
        let pool = ClientPool::new(&site.bed.client, budget.concurrency, budget.flood_limit);
        // Each flood from addresses of its own: state kept per address shows as growth.
        let first = round * budget.clients;
        let flood = pool.run(budget.clients, |i| {
            let bot = Bot::of(first + i);
            Ok((bot, play(bot, client_addr(first + i), dst, budget)))
        });
        (flood, legit.join())
    });
    let flood = flood?;
    let (latencies, legit_errors, legit_wall) =
        legit.map_err(|_| "the legitimate client's thread panicked")?;
    let ticks_after = namespace_ticks(site)?;
    if flood.results.len() < budget.clients {
        return Err(format!(
            "{}: only {} of {} clients within {:?}",
            site.kind,
            flood.results.len(),
            budget.clients,
            budget.flood_limit
        )
        .into());
    }
    for (bot, end) in &flood.results {
        *outcome.ends.entry((*bot, *end)).or_insert(0) += 1;
    }
    outcome.flood_wall += flood.wall();
    outcome.latencies.extend(latencies);
    outcome.legit_wall += legit_wall;
    outcome.legit_errors.extend(legit_errors);
    outcome.messages += budget.messages;
    outcome.cpu_seconds += ticks_to_seconds(ticks_between(&ticks_before, &ticks_after));
    let start = outcome.start;
    let settling = Instant::now();
    loop {
        outcome.delivered = delivered(site);
        outcome.end_pid = site.screener_pid().unwrap_or(0);
        outcome.end = Footprint::of(outcome.end_pid).unwrap_or(start);
        let changed = outcome.end_pid != outcome.pid;
        let settled = changed || outcome.end.settled(&start);
        let rss_back = changed || outcome.end.rss_within(&start) || settling.elapsed() >= RSS_WAIT;
        if (outcome.delivered >= outcome.messages && settled && rss_back)
            || settling.elapsed() >= SETTLE_LIMIT
        {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    outcome.settle = outcome.settle.max(settling.elapsed());
    outcome.afters.push(outcome.end);
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `a / b` as a ratio, or a dash when `b` is zero.
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "–".into()
    }
}

fn render(budget: &Budget, results: &[Outcome], failures: &[String], took: Duration) -> String {
    let mut out = bench::report_header(
        "smtp-screen and postscreen under a mixed flood",
        "flood",
        budget.quick,
    );
    let _ = writeln!(out, "- smtp-screen: {}", bench::daemon_bin());
    let _ = writeln!(out, "- Postfix: {}", postfix_version());
    let _ = writeln!(out, "- The whole run took {:.0} s\n", took.as_secs_f64());
    let _ = writeln!(
        out,
        "{} flood(s) against each screener, one after another, each of {} hostile clients, {} \
         at a time, in equal parts: {}; slow and idle clients hang up after {:?}. During each, \
         the allowlisted client sends {} messages one after another. Figures are over all \
         floods.\n",
        budget.rounds,
        grouped(budget.clients as u64),
        budget.concurrency,
        BOTS.iter().map(|b| b.name()).collect::<Vec<_>>().join(", "),
        budget.linger,
        budget.messages
    );
    let [ss, ps] =
        [Kind::SmtpScreen, Kind::Postscreen].map(|kind| results.iter().find(|r| r.kind == kind));
    let (Some(ss), Some(ps)) = (ss, ps) else {
        return out + "(a site is missing)\n";
    };
    let p = |o: &Outcome, q: f64| quantile(&o.latencies, q);
    let _ = writeln!(
        out,
        "| | smtp-screen | postscreen | ratio |\n|---|---:|---:|---:|"
    );
    let mut row = |name: &str, a: String, b: String, r: String| {
        let _ = writeln!(out, "| {name} | {a} | {b} | {r} |");
    };
    row(
        "legitimate messages in the mailbox",
        format!("{} of {}", ss.delivered, ss.messages),
        format!("{} of {}", ps.delivered, ps.messages),
        String::new(),
    );
    row(
        "time to send them all",
        format!("{:.2} s", ss.legit_wall.as_secs_f64()),
        format!("{:.2} s", ps.legit_wall.as_secs_f64()),
        ratio(ss.legit_wall.as_secs_f64(), ps.legit_wall.as_secs_f64()),
    );
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        row(
            &format!("latency {name} (connect → `250` after DATA)"),
            ms(p(ss, q)),
            ms(p(ps, q)),
            ratio(p(ss, q).as_secs_f64(), p(ps, q).as_secs_f64()),
        );
    }
    row(
        "hostile clients refused / served / failed",
        format!(
            "{} / {} / {}",
            ss.count(End::Refused),
            ss.count(End::Served),
            ss.count(End::Failed)
        ),
        format!(
            "{} / {} / {}",
            ps.count(End::Refused),
            ps.count(End::Served),
            ps.count(End::Failed)
        ),
        String::new(),
    );
    row(
        "flood wall time",
        format!("{:.1} s", ss.flood_wall.as_secs_f64()),
        format!("{:.1} s", ps.flood_wall.as_secs_f64()),
        ratio(ss.flood_wall.as_secs_f64(), ps.flood_wall.as_secs_f64()),
    );
    row(
        "CPU of the server namespace over the flood",
        format!("{:.2} s", ss.cpu_seconds),
        format!("{:.2} s", ps.cpu_seconds),
        ratio(ss.cpu_seconds, ps.cpu_seconds),
    );
    row(
        "screener descriptors before → after",
        format!("{} → {}", ss.start.fds, ss.end.fds),
        format!("{} → {}", ps.start.fds, ps.end.fds),
        String::new(),
    );
    row(
        "screener threads before → after",
        format!("{} → {}", ss.start.threads, ss.end.threads),
        format!("{} → {}", ps.start.threads, ps.end.threads),
        String::new(),
    );
    let rss = |o: &Outcome| {
        let afters: Vec<String> = o.afters.iter().map(|f| mib(f.rss_kib)).collect();
        format!("{} → {}", mib(o.start.rss_kib), afters.join(" → "))
    };
    row(
        "screener RSS before → after each flood",
        rss(ss),
        rss(ps),
        String::new(),
    );
    row(
        "settled after the flood within",
        format!("{:.1} s", ss.settle.as_secs_f64()),
        format!("{:.1} s", ps.settle.as_secs_f64()),
        String::new(),
    );
    let _ = writeln!(
        out,
        "\nHow each kind of client ended (refused / served / failed):\n"
    );
    let _ = writeln!(
        out,
        "| client | smtp-screen | postscreen |\n|---|---:|---:|"
    );
    for bot in BOTS {
        let cell = |o: &Outcome| {
            let n = |end| o.ends.get(&(bot, end)).copied().unwrap_or(0);
            format!(
                "{} / {} / {}",
                n(End::Refused),
                n(End::Served),
                n(End::Failed)
            )
        };
        let _ = writeln!(out, "| {} | {} | {} |", bot.name(), cell(ss), cell(ps));
    }
    if ps.end_pid != ps.pid {
        let _ = writeln!(
            out,
            "\npostscreen's process changed during the run ({} → {}); its after figures are the \
             new process's.",
            ps.pid, ps.end_pid
        );
    }
    let _ = writeln!(
        out,
        "\nChecks (smtp-screen's footprint, both sites' mail):\n"
    );
    if failures.is_empty() {
        let _ = writeln!(out, "- all passed");
    }
    for failure in failures {
        let _ = writeln!(out, "- FAILED: {failure}");
    }
    out
}
