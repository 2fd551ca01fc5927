//! How many silent clients each screener holds in the greet wait, and what each one costs:
//! smtp-screen against Debian's postscreen.
//!
//! `cargo bench -p screen-tests --bench held` (append `-- --quick` for a short run).
//!
//! Each screener runs in a server network namespace of its own, with a long greet wait and its
//! limits raised to match: the screening limit (`pre_queue_limit`, postscreen's
//! `postscreen_pre_queue_limit`) and the hand-off limit at twice the clients, so that neither
//! refuses nor enters stress mode; the per-client limit at twice the connections one address
//! opens; the listen backlog at 4096 (postscreen's is `default_process_limit`, 100 by
//! default). smtp-screen runs as `smtp-screen run`; postscreen as Debian's master.cf runs it
//! (`smtp inet … 1 postscreen`, `smtpd pass`, `dnsblog`, `tlsproxy`) in a private Postfix
//! instance. Neither has DNS lists, so the greet wait is the pregreet test alone.
//!
//! The clients connect from a client namespace that takes all of 10.251.128.0/17 as local
//! (`ip route add local`), a few dozen connections per address, so that no address runs out
//! of ephemeral ports. Each client connects and then says nothing; it is held when it has
//! received the `220-` teaser, or nothing yet, and its connection is still open. Anything else
//! (a `421`, a final `220 `, a close) is counted apart, with the first reply shown.
//!
//! For each screener: its processes' resident memory (`VmRSS`: smtp-screen's one process;
//! postscreen's process and its dnsblog and tlsproxy, when master has started any) after a
//! first probe connection has come and gone, and again with every client held; the sockets it
//! holds open (its /proc/PID/fd) and the `CONNECT` lines it logged; for context, the kernel's
//! TCP sockets and buffer memory (/proc/net/sockstat) and its socket slabs (/proc/slabinfo).
//! Then the clients hang up, and the screener must recover: its sockets back to where they
//! were, its `HANGUP` lines logged, and a new client greeted at once.
//!
//! The benchmark raises its own open-files limit (`RLIMIT_NOFILE`, inherited by both
//! screeners, which raise their soft limit to the hard one themselves) and restores it at the
//! end, and `fs.nr_open` when that is too low for the limit (restored too). Without
//! `CAP_SYS_RESOURCE` the hard limit cannot rise: the run then sends as many clients as it
//! leaves room for, and the report says so. The server namespace gets a larger `somaxconn`
//! and SYN backlog, which go with it.
//!
//! A run in which smtp-screen holds fewer clients than it was sent, or does not recover, stops
//! with an error; postscreen's limits are what the benchmark reports. The Markdown report goes
//! to `$SMTP_SCREEN_BENCH_REPORT` (default `target/bench/held.md`).

use std::{
    fmt::Write as _,
    fs,
    io::{ErrorKind, Read as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use screen_tests::bench::side_by_side::Screener as Kind;
use screen_tests::{
    bench::{
        self, CLIENT_NETWORK, POOL_SIZE, Result, check_interrupted, client_addr, connect_from,
        count_prefixed, rss_kib, take_client_network,
    },
    client_pool::ClientPool,
    daemon::{Bed, Daemon, DaemonConfig, MYHOSTNAME, SMTP_PORT, quoted},
    netns::{PinDir, run_within},
    postfix::{Postfix, PostfixConfig, postfix_version},
};

/// Connections from one address. The per-client limit is twice this.
const PER_SOURCE: usize = 50;

/// Threads opening connections at the same time: a handshake can take a SYN-ACK
/// retransmission (one second) on a busy machine, so many run side by side.
const OPENERS: usize = 64;
/// One connect may take this long: a SYN dropped by a full backlog is sent again after one
/// second, and again two seconds later.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// Opening stops after this many failed connects: the screener has stopped taking clients.
const FAILURE_LIMIT: usize = 200;
/// How long the clients may take to see their teasers once all are connected.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);
/// How long the screener may take to notice that every client hung up.
const RELEASE_LIMIT: Duration = Duration::from_secs(30);
/// A probe client must see the teaser within this.
const PROBE_LIMIT: Duration = Duration::from_secs(5);
/// How long the screener's log may lag behind what the clients saw.
const LOG_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
/// The most a held client keeps of what it received.
const RECEIVED_MAX: usize = 1024;

/// Descriptors besides the clients' that the benchmark and each screener may need.
const FILE_RESERVE: usize = 1024;

/// The server namespace's listen and SYN backlogs.
const NAMESPACE_SYSCTLS: [&str; 2] = [
    "net.core.somaxconn=65535",
    "net.ipv4.tcp_max_syn_backlog=65535",
];
const NR_OPEN: &str = "/proc/sys/fs/nr_open";

/// What postscreen's master starts for it: the screener and its helpers.
const POSTSCREEN_PROGRAMS: [&str; 3] = ["postscreen", "dnsblog", "tlsproxy"];
/// The smtp-screen target: this many held, each costing no more than this.
const TARGET_HELD: usize = 50_000;
const TARGET_BYTES: f64 = 8.0 * 1024.0;

/// What the profile of smtp-screen's per-connection memory showed and what changed, with the
/// figures measured before and after (this benchmark, full run, and the unit test that prints
/// the size of a connection's task).
const PROFILE: &str = "\
A connection's task is one future, and a future takes the size of its largest state for its \
whole life. `server::tests::a_connection_task_stays_small` prints that size \
(`std::mem::size_of_val` of `Screen::handle`'s future): 5,792 bytes (debug build) before. The \
largest states were the stages after the greet wait — the dummy engine, the hand-off, the PROXY \
header reader — and the 4 KiB drain buffer of the close, none of which a held client reaches. \
The pregreet test also kept a 1,023-byte peek buffer on the heap for the whole wait.\n\n\
Changed, behaviour unchanged: those later stages and the DNS-list wait are boxed, so they take \
their memory when they start; the close drains into a heap buffer; the peek buffer is taken \
only once the client has sent something or hung up. The future is now 1,320 bytes (debug \
build; 1,304 in release).\n\n\
heaptrack of the release daemon holding 4,000 silent clients on loopback (after the change) \
finds two allocations per held connection: tokio's task (the future and its header), 1,536 \
bytes, and its I/O registration, 256 bytes; the peek buffer appears only when the clients hang \
up. The rest of the RSS growth, about 1.3 KB \
a connection, belongs to no allocation site (allocator overhead; not broken down further).\n\n\
RSS per held connection, this benchmark, release build, on a busy 2-core machine \
(2026-11-22): 7,573 → 3,093 bytes with 5,000 clients (quick run); 7,573 → 3,091 bytes with \
18,976 clients (full run, capped by the open-files limit).";

/// How much work a run does.
#[derive(Clone, Copy, Debug)]
struct Budget {
    quick: bool,
    /// Clients each screener is sent.
    connections: usize,
    /// The screeners' greet wait: longer than opening and measuring take.
    greet_wait: Duration,
    /// Longest opening the clients may take.
    open_limit: Duration,
    /// The clients asked for, when the open-files limit allowed fewer.
    capped_from: Option<usize>,
}

impl Budget {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                connections: 5_000,
                greet_wait: Duration::from_secs(60),
                open_limit: Duration::from_secs(30),
                capped_from: None,
            }
        } else {
            Self {
                quick,
                connections: TARGET_HELD,
                greet_wait: Duration::from_secs(300),
                open_limit: Duration::from_secs(180),
                capped_from: None,
            }
        }
    }

    fn sources(&self) -> usize {
        self.connections.div_ceil(PER_SOURCE)
    }

    /// The open-files limit both the benchmark (its clients) and the screeners need.
    fn file_limit(&self) -> u64 {
        (self.connections + FILE_RESERVE) as u64
    }

    /// As many clients as an open-files limit of `limit` leaves room for.
    fn within_file_limit(self, limit: u64) -> Self {
        let room = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(FILE_RESERVE);
        if room >= self.connections {
            return self;
        }
        Self {
            connections: room,
            capped_from: Some(self.connections),
            ..self
        }
    }
}

fn main() -> std::process::ExitCode {
    bench::main("held", |quick| run(Budget::new(quick)))
}

fn run(asked: Budget) -> Result<PathBuf> {
    let started = Instant::now();
    // Two probes beside the clients' addresses.
    assert!(
        asked.sources() + 2 <= POOL_SIZE,
        "the budget needs more addresses than {CLIENT_NETWORK} holds"
    );
    screen_tests::ensure_packages(&["postfix"])?;
    let _nr_open = Sysctl::at_least(NR_OPEN, asked.file_limit())?;
    let _files = FileLimit::raise(asked.file_limit())?;
    let budget = asked.within_file_limit(FileLimit::soft()?);
    if let Some(asked) = budget.capped_from {
        eprintln!(
            "warning: the open-files limit leaves room for {} clients, not {asked}",
            budget.connections
        );
    }

    let mut results = Vec::new();
    for kind in [Kind::SmtpScreen, Kind::Postscreen] {
        eprintln!("{kind}: {} silent clients", budget.connections);
        let site = Site::start(kind, &budget)?;
        let result = measure(&site, &budget)?;
        eprintln!("  {}", result.summary());
        if kind == Kind::SmtpScreen {
            result.check_complete(&budget)?;
        }
        results.push(result);
        check_interrupted()?;
    }

    let report = report::render(&budget, &results, started.elapsed());
    bench::write_report("held", &report)
}

/// This process's open-files limit, raised for the run and restored on drop. The screeners
/// inherit it.
struct FileLimit {
    saved: libc::rlimit,
}

impl FileLimit {
    /// Raises soft and hard limit to `to`. Without `CAP_SYS_RESOURCE` the hard limit cannot
    /// rise: the soft one goes up to it instead, and [`FileLimit::soft`] says what was had.
    fn raise(to: u64) -> Result<Self> {
        let saved = get_file_limit()?;
        let wanted = libc::rlimit {
            rlim_cur: to.max(saved.rlim_cur),
            rlim_max: to.max(saved.rlim_max),
        };
        if let Err(e) = set_file_limit(&wanted) {
            let within_hard = libc::rlimit {
                rlim_cur: saved.rlim_max,
                rlim_max: saved.rlim_max,
            };
            set_file_limit(&within_hard).map_err(|e| {
                format!(
                    "raising RLIMIT_NOFILE to its hard limit {}: {e}",
                    saved.rlim_max
                )
            })?;
            eprintln!(
                "warning: RLIMIT_NOFILE cannot be raised to {to} ({e}); using the hard limit {}",
                saved.rlim_max
            );
        }
        Ok(Self { saved })
    }

    /// The limit in force.
    fn soft() -> Result<u64> {
        Ok(get_file_limit()?.rlim_cur)
    }
}

fn get_file_limit() -> Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a valid one.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!("reading RLIMIT_NOFILE: {}", std::io::Error::last_os_error()).into());
    }
    Ok(limit)
}

impl Drop for FileLimit {
    fn drop(&mut self) {
        if let Err(e) = set_file_limit(&self.saved) {
            eprintln!("warning: restoring RLIMIT_NOFILE: {e}");
        }
    }
}

fn set_file_limit(limit: &libc::rlimit) -> std::io::Result<()> {
    // SAFETY: setrlimit reads one valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A numeric sysctl raised to at least a value for the run, and set back on drop; left alone
/// when it is high enough already.
struct Sysctl {
    path: &'static str,
    saved: Option<String>,
}

impl Sysctl {
    fn at_least(path: &'static str, value: u64) -> Result<Self> {
        let current = fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
        let number: u64 = current
            .trim()
            .parse()
            .map_err(|e| format!("{path}: {current:?}: {e}"))?;
        if number >= value {
            return Ok(Self { path, saved: None });
        }
        fs::write(path, value.to_string()).map_err(|e| format!("writing {path}: {e}"))?;
        Ok(Self {
            path,
            saved: Some(current),
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved
            && let Err(e) = fs::write(self.path, saved)
        {
            eprintln!("warning: restoring {}: {e}", self.path);
        }
    }
}

enum Screener {
    SmtpScreen { daemon: Daemon, _pin: PinDir },
    Postscreen { postfix: Postfix },
}

/// A screener on 10.251.N.1:25 and the client namespace holding [`CLIENT_NETWORK`]. Fields
/// drop in order: the screener, then the namespaces.
struct Site {
    kind: Kind,
    screener: Screener,
    bed: Bed,
}

impl Site {
    fn start(kind: Kind, budget: &Budget) -> Result<Self> {
        let bed = Bed::new("held-bench", &[2]);
        take_client_network(&bed, CLIENT_NETWORK, 2)?;
        let mut sysctl = bed.server.command("sysctl");
        sysctl.arg("-q").arg("-w").args(NAMESPACE_SYSCTLS);
        run_within(&mut sysctl, Duration::from_secs(10))
            .map_err(|e| format!("sysctl in the server namespace: {e}"))?;
        let screener = match kind {
            Kind::SmtpScreen => smtp_screen(&bed, budget),
            Kind::Postscreen => postscreen(&bed, budget)?,
        };
        Ok(Self {
            kind,
            screener,
            bed,
        })
    }

    fn smtp_addr(&self) -> SocketAddr {
        self.bed.smtp_addr(self.bed.server_v4())
    }

    /// The screener's processes, by program name.
    fn processes(&self) -> Vec<(&'static str, u32)> {
        match &self.screener {
            Screener::SmtpScreen { daemon, .. } => vec![("smtp-screen", daemon.pid())],
            Screener::Postscreen { postfix } => POSTSCREEN_PROGRAMS
                .iter()
                .flat_map(|&program| {
                    postfix
                        .service_pids(program)
                        .into_iter()
                        .map(move |pid| (program, pid))
                })
                .collect(),
        }
    }

    /// The process that holds the clients' connections.
    fn holder(&self) -> Result<u32> {
        self.processes()
            .first()
            .map(|&(_, pid)| pid)
            .ok_or_else(|| format!("{}: no screener process is running", self.kind).into())
    }

    /// The screener's log lines, without their `name[pid]: ` prefix.
    fn log_lines(&self) -> Vec<String> {
        match &self.screener {
            Screener::SmtpScreen { daemon, .. } => daemon.lines(),
            Screener::Postscreen { postfix } => postfix.program_lines("postscreen"),
        }
    }

    /// Log lines starting with `prefix`.
    fn count_lines(&self, prefix: &str) -> usize {
        count_prefixed(&self.log_lines(), &[prefix])[0]
    }

    /// The warnings and fatal errors the screener (or Postfix around it) logged.
    fn warnings(&self) -> Vec<String> {
        let log = match &self.screener {
            Screener::SmtpScreen { daemon, .. } => daemon.log(),
            Screener::Postscreen { postfix } => postfix.log(),
        };
        log.lines()
            .filter(|line| {
                ["warning: ", "fatal: ", "panic: ", " WARN ", " ERROR "]
                    .iter()
                    .any(|marker| line.contains(marker))
            })
            .map(str::to_string)
            .collect()
    }
}

fn smtp_screen(bed: &Bed, budget: &Budget) -> Screener {
    let pin = PinDir::new("held");
    let limit = (budget.connections * 2).to_string();
    let config = DaemonConfig::new(bed)
        .set(
            "greet_wait",
            quoted(format!("{}s", budget.greet_wait.as_secs())),
        )
        .set("pre_queue_limit", limit.clone())
        .set("post_queue_limit", limit)
        .set(
            "client_connection_count_limit",
            (PER_SOURCE * 2).to_string(),
        )
        .write(bed, "held.toml");
    let daemon = Daemon::start(bed, &pin, &config, "held.log");
    Screener::SmtpScreen { daemon, _pin: pin }
}

fn postscreen(bed: &Bed, budget: &Budget) -> Result<Screener> {
    let limit = (budget.connections * 2).to_string();
    let config = PostfixConfig::new(SocketAddr::new(bed.server_v4(), SMTP_PORT))
        .myhostname(MYHOSTNAME)
        .inet_service("1", "postscreen")
        .smtpd_pass_service()
        .master_cf("dnsblog   unix  -       -       n       -       0       dnsblog")
        .master_cf("tlsproxy  unix  -       -       n       -       0       tlsproxy")
        .main_cf(
            "postscreen_greet_wait",
            &format!("{}s", budget.greet_wait.as_secs()),
        )
        // master listens for postscreen with a backlog of default_process_limit (100 by
        // default): a burst of clients then waits for SYN-ACK retransmissions, a second
        // apart. 4096 is smtp-screen's backlog.
        .main_cf("default_process_limit", "4096")
        .main_cf("postscreen_pre_queue_limit", &limit)
        .main_cf("postscreen_post_queue_limit", &limit)
        .main_cf(
            "postscreen_client_connection_count_limit",
            &(PER_SOURCE * 2).to_string(),
        );
    let postfix = Postfix::start(&bed.server, &config)?;
    Ok(Screener::Postscreen { postfix })
}

/// The sockets `pid` has open.
fn open_sockets(pid: u32) -> usize {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// The `Max open files` line of `/proc/PID/limits`: soft and hard.
fn file_limit_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|limits| {
            let line = limits
                .lines()
                .find(|line| line.starts_with("Max open files"))?
                .to_string();
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(format!("{} / {}", fields.get(3)?, fields.get(4)?))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The kernel's TCP figures from `/proc/PID/net/sockstat`: sockets in use in the namespace of
/// `pid`, and pages of TCP memory in the whole kernel (both ends of every connection).
#[derive(Clone, Copy, Debug, Default)]
struct Sockstat {
    inuse: u64,
    mem_pages: u64,
}

impl Sockstat {
    fn read(pid: u32) -> Self {
        let text = fs::read_to_string(format!("/proc/{pid}/net/sockstat")).unwrap_or_default();
        let mut stat = Self::default();
        if let Some(line) = text.lines().find_map(|line| line.strip_prefix("TCP:")) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            for pair in fields.chunks(2) {
                match pair {
                    ["inuse", n] => stat.inuse = n.parse().unwrap_or(0),
                    ["mem", n] => stat.mem_pages = n.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        stat
    }
}

/// The kernel's slab caches that grow with each TCP connection: the socket, its inode, its
/// file, and the epoll entry of the side that polls it.
const SOCKET_SLABS: [&str; 4] = ["TCP", "sock_inode_cache", "filp", "eventpoll_epi"];

/// Bytes in use in [`SOCKET_SLABS`], the whole kernel (`/proc/slabinfo`: active objects times
/// object size).
fn socket_slab_bytes() -> u64 {
    let text = fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !SOCKET_SLABS.contains(fields.first()?) {
                return None;
            }
            let active: u64 = fields.get(1)?.parse().ok()?;
            let size: u64 = fields.get(3)?.parse().ok()?;
            Some(active * size)
        })
        .sum()
}

/// The resident memory of the screener's processes, in KiB, by program.
fn screener_rss(site: &Site) -> Result<Vec<(&'static str, u64)>> {
    site.processes()
        .into_iter()
        .map(|(program, pid)| Ok((program, rss_kib(pid)?)))
        .collect()
}

fn total_kib(rss: &[(&'static str, u64)]) -> u64 {
    rss.iter().map(|(_, kib)| kib).sum()
}

/// One client connection, silent, and what it has received.
struct Client {
    stream: TcpStream,
    received: Vec<u8>,
    closed: bool,
}

/// Where a client stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// Connected, nothing received yet.
    Nothing,
    /// The `220-` teaser and nothing else, connection open.
    Teaser,
    /// A line that is not the teaser, such as a `421`.
    Reply(String),
    /// The screener closed the connection.
    Closed,
}

impl Client {
    /// Reads what has arrived, without waiting.
    fn poll(&mut self) {
        let mut buf = [0u8; 512];
        while !self.closed {
            match self.stream.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    let room = RECEIVED_MAX.saturating_sub(self.received.len());
                    self.received.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    fn seen(&self) -> Seen {
        let text = String::from_utf8_lossy(&self.received);
        let mut lines = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
        if let Some(other) = lines.clone().find(|line| !line.starts_with("220-")) {
            return Seen::Reply(other.trim_end().to_string());
        }
        match (self.closed, lines.next()) {
            (true, _) => Seen::Closed,
            (false, Some(_)) => Seen::Teaser,
            (false, None) => Seen::Nothing,
        }
    }

    fn held(&self) -> bool {
        matches!(self.seen(), Seen::Nothing | Seen::Teaser)
    }
}

/// Connects from `src` to `dst`, non-blocking once connected. Runs in the client namespace.
fn connect(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = connect_from(src, dst, CONNECT_LIMIT)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// What opening the clients came to.
struct Opening {
    clients: Vec<Client>,
    failures: usize,
    first_failure: Option<String>,
    wall: Duration,
}

/// Opens `budget.connections` clients, [`PER_SOURCE`] from each address after the first
/// (the probe's), [`OPENERS`] at a time; stops early when the screener stops taking them.
fn open_clients(site: &Site, budget: &Budget) -> Result<Opening> {
    let dst = site.smtp_addr();
    let failures = AtomicUsize::new(0);
    let first_failure: Mutex<Option<String>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let opened = ClientPool::new(&site.bed.client, OPENERS, budget.open_limit)
        .until(&stop)
        .run(budget.connections, |index| {
            let src = client_addr(1 + index / PER_SOURCE);
            match connect(src, dst) {
                Ok(stream) => Ok(Some(Client {
                    stream,
                    received: Vec::new(),
                    closed: false,
                })),
                Err(e) => {
                    if failures.fetch_add(1, Ordering::Relaxed) + 1 >= FAILURE_LIMIT {
                        stop.store(true, Ordering::Relaxed);
                    }
                    first_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(|| format!("from {src}: {e}"));
                    Ok(None)
                }
            }
        })?;
    Ok(Opening {
        wall: opened.wall(),
        clients: opened.results.into_iter().flatten().collect(),
        failures: failures.into_inner(),
        first_failure: first_failure
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
    })
}

/// Reads every client until each has received something or closed, or until `limit`.
fn settle(clients: &mut [Client], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        clients.iter_mut().for_each(Client::poll);
        let waiting = clients.iter().filter(|c| c.seen() == Seen::Nothing).count();
        if waiting == 0 || Instant::now() >= deadline || bench::interrupted() {
            return;
        }
        thread::sleep(POLL);
    }
}

/// How the clients stand, by kind, with the first reply that was not a teaser.
#[derive(Clone, Debug, Default)]
struct Tally {
    teaser: usize,
    nothing: usize,
    replied: usize,
    closed: usize,
    first_reply: Option<String>,
}

impl Tally {
    fn of(clients: &[Client]) -> Self {
        let mut tally = Self::default();
        for client in clients {
            match client.seen() {
                Seen::Teaser => tally.teaser += 1,
                Seen::Nothing => tally.nothing += 1,
                Seen::Reply(line) => {
                    tally.replied += 1;
                    tally.first_reply.get_or_insert(line);
                }
                Seen::Closed => tally.closed += 1,
            }
        }
        tally
    }

    fn held(&self) -> usize {
        self.teaser + self.nothing
    }
}

/// A new client from `src` must get the teaser within [`PROBE_LIMIT`]; it hangs up then.
/// Returns how long the teaser took.
fn probe(site: &Site, src: Ipv4Addr) -> Result<Duration> {
    let dst = site.smtp_addr();
    let started = Instant::now();
    let mut stream = site
        .bed
        .client
        .run(|| connect(src, dst))?
        .map_err(|e| format!("probe from {src}: {e}"))?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(PROBE_LIMIT))?;
    let mut received = Vec::new();
    let mut buf = [0u8; 512];
    while !received.contains(&b'\n') {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("probe from {src}: reading: {e}").into()),
        }
        if received.len() > RECEIVED_MAX {
            break;
        }
    }
    let elapsed = started.elapsed();
    let line = String::from_utf8_lossy(&received);
    if !line.starts_with("220-") {
        return Err(format!(
            "{}: a probe from {src} got {:?} instead of the teaser",
            site.kind,
            line.trim_end()
        )
        .into());
    }
    Ok(elapsed)
}

/// Waits until `done` holds or `limit` passes; returns how long it took, or `None`.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if done() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit || bench::interrupted() {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Everything measured for one screener.
struct Held {
    kind: Kind,
    opening_wall: Duration,
    connected: usize,
    failures: usize,
    first_failure: Option<String>,
    tally: Tally,
    /// Clients still held just before they hung up.
    held_at_release: usize,
    sockets_before: usize,
    sockets_held: usize,
    connects_logged: usize,
    rss_before: Vec<(&'static str, u64)>,
    rss_held: Vec<(&'static str, u64)>,
    rss_after: Vec<(&'static str, u64)>,
    sockstat_before: Sockstat,
    sockstat_held: Sockstat,
    slab_before: u64,
    slab_held: u64,
    /// How long the screener took to let go of every socket, if it did.
    released_in: Option<Duration>,
    hangups_logged: usize,
    probe_after: Result<Duration>,
    file_limit: String,
    warnings: Vec<String>,
}

impl Held {
    fn held(&self) -> usize {
        self.tally.held()
    }

    fn rss_before_kib(&self) -> u64 {
        total_kib(&self.rss_before)
    }

    fn rss_held_kib(&self) -> u64 {
        total_kib(&self.rss_held)
    }

    /// Resident bytes each held connection added.
    fn bytes_per_held(&self) -> f64 {
        let grown = self.rss_held_kib().saturating_sub(self.rss_before_kib());
        grown as f64 * 1024.0 / self.held().max(1) as f64
    }

    /// Kernel TCP memory each held connection added, both ends together.
    fn kernel_bytes_per_held(&self) -> f64 {
        let pages = self
            .sockstat_held
            .mem_pages
            .saturating_sub(self.sockstat_before.mem_pages);
        pages as f64 * page_size() as f64 / self.held().max(1) as f64
    }

    /// Kernel slab memory each held connection added, both ends together.
    fn slab_bytes_per_held(&self) -> f64 {
        self.slab_held.saturating_sub(self.slab_before) as f64 / self.held().max(1) as f64
    }

    fn recovered(&self) -> bool {
        self.released_in.is_some() && self.probe_after.is_ok()
    }

    fn summary(&self) -> String {
        format!(
            "{} of {} connected clients held ({} answered otherwise, {} closed, {} connect \
             failures); RSS {} → {} KiB, {:.0} bytes per held connection; {}",
            self.held(),
            self.connected,
            self.tally.replied,
            self.tally.closed,
            self.failures,
            self.rss_before_kib(),
            self.rss_held_kib(),
            self.bytes_per_held(),
            if self.recovered() {
                "recovered"
            } else {
                "did not recover"
            }
        )
    }

    /// smtp-screen must hold every client it was sent, and recover.
    fn check_complete(&self, budget: &Budget) -> Result<()> {
        if self.held() < budget.connections || self.held_at_release < budget.connections {
            return Err(format!(
                "{} held {} of {} clients ({} at release): {}; warnings: {:?}",
                self.kind,
                self.held(),
                budget.connections,
                self.held_at_release,
                self.summary(),
                self.warnings.iter().take(5).collect::<Vec<_>>()
            )
            .into());
        }
        if let Err(e) = &self.probe_after {
            return Err(format!("{} did not recover: {e}", self.kind).into());
        }
        if self.released_in.is_none() {
            return Err(format!(
                "{} still holds sockets {RELEASE_LIMIT:?} after the clients hung up",
                self.kind
            )
            .into());
        }
        Ok(())
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Holds the clients at one screener, measures, lets them go and checks the recovery.
fn measure(site: &Site, budget: &Budget) -> Result<Held> {
    // A first client starts postscreen (master spawns it on demand) and warms up both.
    probe(site, client_addr(0))?;
    let holder = site.holder()?;
    wait_until(RELEASE_LIMIT, || site.count_lines("HANGUP ") >= 1);
    let sockets_before = open_sockets(holder);
    let rss_before = screener_rss(site)?;
    let sockstat_before = Sockstat::read(holder);
    let slab_before = socket_slab_bytes();
    let connects_before = site.count_lines("CONNECT from ");

    let mut opening = open_clients(site, budget)?;
    eprintln!(
        "  {} connected in {:.1} s ({} failures)",
        opening.clients.len(),
        opening.wall.as_secs_f64(),
        opening.failures
    );
    settle(&mut opening.clients, SETTLE_LIMIT);
    let tally = Tally::of(&opening.clients);
    let connected = opening.clients.len();
    // Both have written the teaser to every client; the log may lag a little.
    wait_until(LOG_WAIT, || {
        site.count_lines("CONNECT from ") - connects_before >= tally.held()
    });
    let connects_logged = site.count_lines("CONNECT from ") - connects_before;
    let sockets_held = open_sockets(holder);
    let rss_held = screener_rss(site)?;
    let sockstat_held = Sockstat::read(holder);
    let slab_held = socket_slab_bytes();
    check_interrupted()?;

    opening.clients.iter_mut().for_each(Client::poll);
    let held_at_release = opening.clients.iter().filter(|c| c.held()).count();
    let hangups_before = site.count_lines("HANGUP ");
    drop(opening.clients);
    let released_in = wait_until(RELEASE_LIMIT, || open_sockets(holder) <= sockets_before);
    wait_until(LOG_WAIT, || {
        site.count_lines("HANGUP ") - hangups_before >= held_at_release
    });
    let hangups_logged = site.count_lines("HANGUP ") - hangups_before;
    let rss_after = screener_rss(site)?;
    let probe_after = probe(site, client_addr(budget.sources() + 1));
    Ok(Held {
        kind: site.kind,
        opening_wall: opening.wall,
        connected,
        failures: opening.failures,
        first_failure: opening.first_failure,
        tally,
        held_at_release,
        sockets_before,
        sockets_held,
        connects_logged,
        rss_before,
        rss_held,
        rss_after,
        sockstat_before,
        sockstat_held,
        slab_before,
        slab_held,
        released_in,
        hangups_logged,
        probe_after,
        file_limit: file_limit_of(holder),
        warnings: site.warnings(),
    })
}

mod report {
    use super::*;

    fn kib_list(rss: &[(&'static str, u64)]) -> String {
        if rss.is_empty() {
            return "none running".into();
        }
        rss.iter()
            .map(|(program, kib)| format!("{program} {kib}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn render(budget: &Budget, results: &[Held], elapsed: Duration) -> String {
        let mut out = bench::report_header(
            "Held connections: smtp-screen and postscreen",
            "held",
            budget.quick,
        );
        let _ = writeln!(
            out,
            "- smtp-screen: `{}`; postscreen: {}",
            bench::daemon_bin(),
            postfix_version()
        );
        let _ = writeln!(out, "- Duration: {:.0} s", elapsed.as_secs_f64());
        let _ = writeln!(
            out,
            "- {} silent clients per screener, {PER_SOURCE} from each of {} addresses, \
             {OPENERS} connecting at a time; greet wait {} s; screening and hand-off limits \
             {}, per-client limit {}; no DNS lists.\n",
            budget.connections,
            budget.sources(),
            budget.greet_wait.as_secs(),
            budget.connections * 2,
            PER_SOURCE * 2
        );
        if let Some(asked) = budget.capped_from {
            let _ = writeln!(
                out,
                "**Capped: {asked} clients were asked for, but the open-files limit \
                 (RLIMIT_NOFILE, hard limit {}) could not be raised — this machine withholds \
                 CAP_SYS_RESOURCE — and leaves room for {} in one process, the screener's as \
                 the clients'.**\n",
                FileLimit::soft().unwrap_or(0),
                budget.connections
            );
        }
        render_table(&mut out, results);
        render_verdict(&mut out, budget, results);
        render_notes(&mut out, results);
        let _ = writeln!(out, "## Where smtp-screen's memory per connection goes\n");
        let _ = writeln!(out, "{PROFILE}");
        out
    }

    fn render_table(out: &mut String, results: &[Held]) {
        let header: Vec<String> = results.iter().map(|r| r.kind.to_string()).collect();
        let _ = writeln!(out, "| | {} |", header.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(results.len()));
        let row = |out: &mut String, name: &str, cell: &dyn Fn(&Held) -> String| {
            let cells: Vec<String> = results.iter().map(cell).collect();
            let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
        };
        row(out, "clients connected", &|r| r.connected.to_string());
        row(out, "connect failures", &|r| r.failures.to_string());
        row(
            out,
            "**held** (teaser or nothing yet, connection open)",
            &|r| format!("**{}**", r.held()),
        );
        row(out, "of which received the teaser", &|r| {
            r.tally.teaser.to_string()
        });
        row(out, "answered otherwise", &|r| r.tally.replied.to_string());
        row(out, "closed by the screener", &|r| {
            r.tally.closed.to_string()
        });
        row(out, "still held when they hung up", &|r| {
            r.held_at_release.to_string()
        });
        row(out, "time to connect them all", &|r| {
            format!("{:.1} s", r.opening_wall.as_secs_f64())
        });
        row(out, "sockets the screener holds, before → held", &|r| {
            format!("{} → {}", r.sockets_before, r.sockets_held)
        });
        row(out, "`CONNECT` lines it logged", &|r| {
            r.connects_logged.to_string()
        });
        row(out, "RSS before, KiB", &|r| r.rss_before_kib().to_string());
        row(out, "RSS with all held, KiB", &|r| {
            r.rss_held_kib().to_string()
        });
        row(out, "**RSS per held connection**", &|r| {
            format!("**{:.0} bytes**", r.bytes_per_held())
        });
        row(out, "RSS after release, KiB", &|r| {
            total_kib(&r.rss_after).to_string()
        });
        row(out, "processes with all held, KiB", &|r| {
            kib_list(&r.rss_held)
        });
        row(out, "kernel TCP sockets in the server namespace", &|r| {
            format!("{} → {}", r.sockstat_before.inuse, r.sockstat_held.inuse)
        });
        row(
            out,
            "kernel TCP buffer memory per held connection (both ends)",
            &|r| format!("{:.0} bytes", r.kernel_bytes_per_held()),
        );
        row(
            out,
            "kernel socket slabs per held connection (both ends)",
            &|r| format!("{:.0} bytes", r.slab_bytes_per_held()),
        );
        row(out, "released: sockets back in", &|r| {
            r.released_in.map_or_else(
                || format!("not within {} s", RELEASE_LIMIT.as_secs()),
                |d| format!("{:.1} s", d.as_secs_f64()),
            )
        });
        row(out, "`HANGUP` lines logged", &|r| {
            r.hangups_logged.to_string()
        });
        row(
            out,
            "a new client's teaser after release",
            &|r| match &r.probe_after {
                Ok(d) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
                Err(e) => format!("failed: {e}"),
            },
        );
        row(out, "open-files limit (soft / hard)", &|r| {
            r.file_limit.clone()
        });
        let _ = writeln!(out);
    }

    fn render_verdict(out: &mut String, budget: &Budget, results: &[Held]) {
        let Some(screen) = results.iter().find(|r| r.kind == Kind::SmtpScreen) else {
            return;
        };
        let per = screen.bytes_per_held();
        let within = per <= TARGET_BYTES;
        let verdict = match (screen.held() >= TARGET_HELD, within) {
            (true, true) => "met".to_string(),
            (true, false) | (false, false) => "not met: more memory per connection".to_string(),
            (false, true) => format!(
                "memory within it; the count is tried at {TARGET_HELD} only by a full run with \
                 an open-files limit that leaves room (this one sent {})",
                budget.connections
            ),
        };
        let _ = writeln!(
            out,
            "**smtp-screen held {} of {} clients at {per:.0} bytes of RSS each (target: \
             {TARGET_HELD} at no more than {TARGET_BYTES:.0} bytes): {verdict}.**\n",
            screen.held(),
            budget.connections,
        );
    }

    fn render_notes(out: &mut String, results: &[Held]) {
        let _ = writeln!(
            out,
            "RSS is `VmRSS` from /proc, summed over the screener's processes, before the \
             clients (after one probe client came and went) and with all of them held; the \
             growth is divided by the clients held. Sockets are the entries of the holding \
             process's /proc/PID/fd. Kernel TCP buffer memory is the `mem` pages of \
             /proc/net/sockstat (data queued in socket buffers, next to nothing for silent \
             clients); the socket slabs are the objects in use in the kernel's {} caches \
             (/proc/slabinfo). Both count both ends of every connection, clients and screener \
             sharing this one kernel, and anything else the machine did meanwhile.\n",
            SOCKET_SLABS.join(", ")
        );
        for result in results {
            if let Some(failure) = &result.first_failure {
                let _ = writeln!(out, "- {}: first connect failure: {failure}", result.kind);
            }
            if let Some(reply) = &result.tally.first_reply {
                let _ = writeln!(
                    out,
                    "- {}: first reply other than the teaser: `{reply}`",
                    result.kind
                );
            }
            for warning in result.warnings.iter().take(5) {
                let _ = writeln!(out, "- {} logged: `{warning}`", result.kind);
            }
            if result.warnings.len() > 5 {
                let _ = writeln!(
                    out,
                    "- {}: {} more warnings",
                    result.kind,
                    result.warnings.len() - 5
                );
            }
        }
        let _ = writeln!(out);
    }
}
