//! What DNSBL/DNSWL screening costs the daemon, and how much DNS traffic it makes.
//!
//! `cargo bench -p screen-tests --bench dnsbl` (append `-- --quick` for a short run).
//!
//! Both parts run `smtp-screen run` in a server network namespace with three lists, the lab's of
//! the postscreen reference (`bl.test=127.0.0.[2..11]*3, bl2.test*1,
//! wl.test=127.0.[0..255].[1..3]*-5`, threshold 3, allowlist threshold -1) with action `drop`,
//! served by rbldnsd on the namespace's loopback. Clients connect from a client namespace, each
//! from an address of its own: the client namespace takes all of 10.251.128.0/17 as local
//! (`ip route add local`), so that any address in it can be bound without configuring
//! thousands. Of every four addresses one is listed in bl.test and bl2.test (rank 4: `521` at
//! once), one in wl.test (allowlisted) and two in none. The pregreet test is off
//! (`greet_banner = ""`), so the DNSBL test is the only one due and the wait ends as soon as
//! the three lists have answered. Passed clients are handed to a backend that greets and
//! closes, so each connection is one decision and nothing more.
//!
//! Part 1: decisions per second and the daemon's CPU per decision for first-contact clients
//! (every connection from an address never seen before, so that neither the DNS cache nor the
//! temporary allowlist answers for it), with a fixed number of clients connecting at once.
//! Decisions are counted from the daemon's log (`PASS NEW` and `DNSBL rank` lines); CPU is the
//! daemon's user and system time from /proc, and rbldnsd's beside it.
//!
//! Part 2: the DNS queries rbldnsd received (its own query log) for 1,000 connections from 100
//! addresses, 10 each: first five from each address at the same moment, then five more one
//! after another across all addresses. One query per list and address (300) is the most a
//! daemon that shares lookups between connections and caches answers may send; one that does
//! neither sends 3,000. More than 300 stops the benchmark.
//!
//! Every connection's outcome is checked against its address's role; a wrong one stops the
//! benchmark instead of being counted. The Markdown report goes to `$SMTP_SCREEN_BENCH_REPORT`
//! (default `target/bench/dnsbl.md`).

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use screen_tests::{
    bench::{
        self, CLIENT_NETWORK, POOL_SIZE, Result, check_interrupted, client_addr,
        clock_ticks_per_second, connect_from, count_prefixed, median, process_cpu, quantile,
        read_to_close, take_client_network, wait_for_counts,
    },
    client_pool::ClientPool,
    daemon::{Bed, Daemon, DaemonConfig, quoted},
    netns::{PinDir, TcpAcceptor},
    rbldnsd::{
        BL_ANSWER, BL2_ANSWER, Dataset, LAB_SITES, LOCAL_DNS, Rbldnsd, WL_ANSWER, Zone, query_name,
    },
};

const ZONES: [&str; 3] = ["bl.test", "bl2.test", "wl.test"];

/// Part 2: addresses, connections from each, and how many of those arrive at once.
const QUERY_ADDRESSES: usize = 100;
const CONNECTIONS_PER_ADDRESS: usize = 10;
const AT_ONCE: usize = 5;
/// Clients connecting at the same time in part 2's sequential phase.
const SEQUENTIAL_CONCURRENCY: usize = 10;

/// One connection may take this long to connect, and as long again to be answered.
const CONNECTION_LIMIT: Duration = Duration::from_secs(5);
/// The most a client reads before the daemon's close.
const REPLY_MAX: usize = 4096;
/// How long the daemon may take to log the decisions once the clients have seen them.
const LOG_WAIT: Duration = Duration::from_secs(10);
/// The daemon rewrites its DNSBL status file every second (`deny_sweep_interval`).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// How much work a run does.
#[derive(Clone, Copy, Debug)]
struct Budget {
    quick: bool,
    /// First-contact clients per round of part 1.
    decisions: usize,
    /// Rounds of part 1, each with fresh addresses; figures are medians over rounds.
    rounds: usize,
    /// Clients connecting at once in part 1 and in part 2's first phase.
    concurrency: usize,
    /// Longest a round of part 1 or a phase of part 2 may take.
    phase_limit: Duration,
}

impl Budget {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                decisions: 2_000,
                rounds: 1,
                concurrency: 16,
                phase_limit: Duration::from_secs(20),
            }
        } else {
            Self {
                quick,
                decisions: 6_000,
                rounds: 5,
                concurrency: 32,
                phase_limit: Duration::from_secs(60),
            }
        }
    }

    /// Pool indices of part 1's round `round`.
    fn round_addresses(&self, round: usize) -> std::ops::Range<usize> {
        round * self.decisions..(round + 1) * self.decisions
    }

    /// Pool indices of part 2, after every address part 1 uses.
    fn query_addresses(&self) -> std::ops::Range<usize> {
        let start = self.rounds * self.decisions;
        start..start + QUERY_ADDRESSES
    }
}

fn main() -> ExitCode {
    bench::main("dnsbl", |quick| run(Budget::new(quick)))
}

fn run(budget: Budget) -> Result<PathBuf> {
    let started = Instant::now();
    assert!(
        budget.query_addresses().end <= POOL_SIZE,
        "the budget needs more addresses than {CLIENT_NETWORK} holds"
    );
    screen_tests::ensure_packages(&["rbldnsd"])?;
    let lab = Lab::start(&budget)?;

    eprintln!("part 1: first-contact decisions");
    let decisions = decisions::measure(&lab, &budget)?;
    check_interrupted()?;
    eprintln!("part 2: DNS queries for repeated and simultaneous connections");
    let queries = queries::measure(&lab, &budget)?;

    let report = report::render(&budget, &decisions, &queries, started.elapsed());
    bench::write_report("dnsbl", &report)
}

/// What a client's address is listed as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    /// In bl.test and bl2.test: rank 4, refused with `521` at once.
    Listed,
    /// In wl.test: rank -5, allowlisted and handed off.
    Vouched,
    /// In no list: passed and handed off.
    Clean,
}

impl Role {
    fn of(index: usize) -> Self {
        match index % 4 {
            0 => Role::Listed,
            1 => Role::Vouched,
            _ => Role::Clean,
        }
    }
}

/// The namespaces, rbldnsd and the backend the daemons of both parts share.
struct Lab {
    /// Accepts and closes every handed-off connection for as long as it is held.
    _backend: TcpAcceptor,
    rbldnsd: Rbldnsd,
    bed: Bed,
}

impl Lab {
    fn start(budget: &Budget) -> Result<Self> {
        let bed = Bed::new("dnsbl-bench", &[2]);
        take_client_network(&bed, CLIENT_NETWORK, 2)?;
        let mut bl = Zone::new("bl.test", Dataset::Ip4Set).with_test_point();
        let mut bl2 = Zone::new("bl2.test", Dataset::Ip4Set).with_test_point();
        let mut wl = Zone::new("wl.test", Dataset::Ip4Set).with_test_point();
        for index in 0..budget.query_addresses().end {
            let addr = client_addr(index);
            match Role::of(index) {
                Role::Listed => {
                    bl = bl.list(addr, BL_ANSWER);
                    bl2 = bl2.list(addr, BL2_ANSWER);
                }
                Role::Vouched => wl = wl.list(addr, WL_ANSWER),
                Role::Clean => {}
            }
        }
        let rbldnsd = Rbldnsd::start(&bed.server, LOCAL_DNS, &[bl, bl2, wl])?;
        let backend = TcpAcceptor::greeting(&bed.server, bed.backend_addr(), SINK_GREETING)?;
        Ok(Self {
            _backend: backend,
            rbldnsd,
            bed,
        })
    }

    /// Starts a daemon with its own state directory (so its temporary allowlist starts
    /// empty) and its own log.
    fn daemon(&self, tag: &str, pin: &PinDir) -> Daemon {
        let state = self.bed.scratch.path().join(format!("state-{tag}"));
        let config = DaemonConfig::new(&self.bed)
            .set("state_dir", quoted(state.display()))
            .set("backend_proxy_protocol", quoted("none"))
            .set("greet_banner", quoted(""))
            .set("dnsbl_sites", quoted(LAB_SITES))
            .set("dnsbl_threshold", "3")
            .set("dnsbl_allowlist_threshold", "-1")
            .set("dnsbl_action", quoted("drop"))
            .set("dns_servers", format!("[{}]", quoted(LOCAL_DNS)))
            .set("pre_queue_limit", "1000")
            .set("post_queue_limit", "1000")
            .set("deny_sweep_interval", quoted("1s"))
            .write(&self.bed, &format!("{tag}.toml"));
        Daemon::start(&self.bed, pin, &config, &format!("{tag}.log"))
    }

    fn smtp_addr(&self) -> SocketAddr {
        self.bed.smtp_addr(self.bed.server_v4())
    }
}

/// What the backend says to each connection before it closes it (a real MTA's greeting: the
/// daemon hands a client over only to a backend that greets).
const SINK_GREETING: &[u8] = b"220 sink.example ESMTP\r\n";

/// What one connection got.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// A reply line, then the close.
    Refused(String),
    /// The backend's greeting, then the close: handed to the backend, which closed.
    HandedOff,
}

impl Outcome {
    /// What a client with pool index `index` must get.
    fn expected(index: usize) -> Self {
        match Role::of(index) {
            Role::Listed => Outcome::Refused(format!(
                "521 5.7.1 Service unavailable; client [{}] blocked using bl.test",
                client_addr(index)
            )),
            Role::Vouched | Role::Clean => Outcome::HandedOff,
        }
    }
}

/// One connection from `src`, on a thread inside the client namespace: connect, read until
/// the daemon closes. Returns what it got and how long that took from the connect call.
fn connect_once(src: Ipv4Addr, dst: SocketAddr) -> Result<(Outcome, Duration)> {
    let started = Instant::now();
    let mut stream = connect_from(src, dst, CONNECTION_LIMIT)?;
    stream.set_read_timeout(Some(CONNECTION_LIMIT))?;
    let received =
        read_to_close(&mut stream, REPLY_MAX).map_err(|e| format!("{src}: reading: {e}"))?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&received);
    let outcome = match text.lines().next().map(str::trim_end) {
        Some(line) if line.as_bytes() == SINK_GREETING.trim_ascii_end() => Outcome::HandedOff,
        Some(line) => Outcome::Refused(line.to_string()),
        None => Outcome::Refused(String::new()),
    };
    Ok((outcome, elapsed))
}

/// What a batch of connections did.
struct Batch {
    wall: Duration,
    /// Connect-to-close time of each connection.
    latencies: Vec<Duration>,
}

/// Makes one connection per entry of `jobs` (pool indices), in order, `concurrency` at a
/// time, each checked against its address's role.
fn run_jobs(lab: &Lab, jobs: &[usize], concurrency: usize, limit: Duration) -> Result<Batch> {
    let dst = lab.smtp_addr();
    let finished = ClientPool::new(&lab.bed.client, concurrency, limit).run(jobs.len(), |job| {
        let index = jobs[job];
        let src = client_addr(index);
        match connect_once(src, dst) {
            Ok((outcome, latency)) if outcome == Outcome::expected(index) => Ok(latency),
            Ok((outcome, _)) => Err(format!(
                "{src} ({:?}) got {outcome:?}, expected {:?}",
                Role::of(index),
                Outcome::expected(index)
            )),
            Err(e) => Err(format!("{src}: {e}")),
        }
    })?;
    let wall = finished.wall();
    let latencies = finished.results;
    if latencies.len() < jobs.len() {
        return Err(format!(
            "only {} of {} connections finished within {limit:?}",
            latencies.len(),
            jobs.len()
        )
        .into());
    }
    Ok(Batch { wall, latencies })
}

/// How many of the daemon's log lines start with each of `prefixes`.
fn count_lines(daemon: &Daemon, prefixes: &[&str]) -> Vec<usize> {
    count_prefixed(&daemon.lines(), prefixes)
}

/// Waits until the daemon has logged `expected` lines starting with each prefix.
fn wait_for_lines(daemon: &Daemon, prefixes: &[&str], expected: &[usize]) -> Result<()> {
    wait_for_counts(
        "the daemon",
        || daemon.lines(),
        prefixes,
        expected,
        LOG_WAIT,
    )
}

/// Part 1: first-contact decisions.
mod decisions {
    use super::*;

    /// One round: `decisions` clients from fresh addresses.
    pub struct Round {
        pub decisions: usize,
        pub passed: usize,
        pub ranked: usize,
        pub wall: Duration,
        pub daemon_cpu: Duration,
        pub rbldnsd_cpu: Duration,
        pub p50: Duration,
        pub p99: Duration,
    }

    impl Round {
        pub fn per_second(&self) -> f64 {
            self.decisions as f64 / self.wall.as_secs_f64()
        }

        pub fn daemon_us(&self) -> f64 {
            self.daemon_cpu.as_secs_f64() * 1e6 / self.decisions as f64
        }

        pub fn rbldnsd_us(&self) -> f64 {
            self.rbldnsd_cpu.as_secs_f64() * 1e6 / self.decisions as f64
        }
    }

    pub struct Decisions {
        pub rounds: Vec<Round>,
        pub concurrency: usize,
    }

    const PREFIXES: [&str; 2] = ["PASS NEW ", "DNSBL rank "];

    pub fn measure(lab: &Lab, budget: &Budget) -> Result<Decisions> {
        let pin = PinDir::new("dnsbl-bench");
        let daemon = lab.daemon("decisions", &pin);
        let mut rounds = Vec::with_capacity(budget.rounds);
        let mut logged = count_lines(&daemon, &PREFIXES);
        for round in 0..budget.rounds {
            let jobs: Vec<usize> = budget.round_addresses(round).collect();
            let listed = jobs
                .iter()
                .filter(|&&index| Role::of(index) == Role::Listed)
                .count();
            let expected = [logged[0] + jobs.len() - listed, logged[1] + listed];
            let daemon_before = process_cpu(daemon.pid())?;
            let rbldnsd_before = process_cpu(lab.rbldnsd.pid())?;
            let batch = run_jobs(lab, &jobs, budget.concurrency, budget.phase_limit)?;
            wait_for_lines(&daemon, &PREFIXES, &expected)?;
            let daemon_cpu = process_cpu(daemon.pid())? - daemon_before;
            let rbldnsd_cpu = process_cpu(lab.rbldnsd.pid())? - rbldnsd_before;
            let counted = count_lines(&daemon, &PREFIXES);
            let result = Round {
                decisions: (counted[0] - logged[0]) + (counted[1] - logged[1]),
                passed: counted[0] - logged[0],
                ranked: counted[1] - logged[1],
                wall: batch.wall,
                daemon_cpu,
                rbldnsd_cpu,
                p50: quantile(&batch.latencies, 0.5),
                p99: quantile(&batch.latencies, 0.99),
            };
            eprintln!(
                "  round {}: {} decisions in {:.2} s: {:.0}/s, daemon {:.0} µs CPU each, \
                 latency p50 {:.2} ms p99 {:.2} ms",
                round + 1,
                result.decisions,
                result.wall.as_secs_f64(),
                result.per_second(),
                result.daemon_us(),
                result.p50.as_secs_f64() * 1e3,
                result.p99.as_secs_f64() * 1e3
            );
            logged = counted;
            rounds.push(result);
        }
        daemon.stop();
        Ok(Decisions {
            rounds,
            concurrency: budget.concurrency,
        })
    }
}

/// Part 2: the DNS queries for repeated and simultaneous connections.
mod queries {
    use super::*;

    pub struct Queries {
        pub connections: usize,
        /// Connections the DNSBL test decided (`PASS NEW`, `DNSBL rank`), and those the
        /// temporary allowlist let through without a lookup (`PASS OLD`).
        pub screened: usize,
        pub passed_old: usize,
        /// Lookups the daemon started (its status file), all lists together; `None` when the
        /// daemon wrote none.
        pub lookups: Option<u64>,
        /// Queries rbldnsd received for the clients' names, by list.
        pub received: Vec<(&'static str, usize)>,
        /// Queries for the lists' test points (the daemon's health check).
        pub health_checks: usize,
        pub wall: Duration,
    }

    impl Queries {
        pub fn total(&self) -> usize {
            self.received.iter().map(|(_, n)| n).sum()
        }

        pub fn naive(&self) -> usize {
            self.connections * ZONES.len()
        }

        pub fn bound(&self) -> usize {
            QUERY_ADDRESSES * ZONES.len()
        }
    }

    pub fn measure(lab: &Lab, budget: &Budget) -> Result<Queries> {
        let addresses: Vec<usize> = budget.query_addresses().collect();
        let names: HashMap<String, &'static str> = addresses
            .iter()
            .flat_map(|&index| {
                ZONES.map(|zone| (query_name(client_addr(index).into(), zone), zone))
            })
            .collect();
        let already = lab.rbldnsd.queries().len();
        let pin = PinDir::new("dnsbl-queries");
        let daemon = lab.daemon("queries", &pin);

        // The same address AT_ONCE times in a row: that many workers pick those up together.
        let at_once: Vec<usize> = addresses
            .iter()
            .flat_map(|&index| [index; AT_ONCE])
            .collect();
        // Then address after address, each coming back only after all the others.
        let one_by_one: Vec<usize> = (AT_ONCE..CONNECTIONS_PER_ADDRESS)
            .flat_map(|_| addresses.iter().copied())
            .collect();
        let started = Instant::now();
        run_jobs(
            lab,
            &at_once,
            budget.concurrency.max(AT_ONCE * 10),
            budget.phase_limit,
        )?;
        run_jobs(lab, &one_by_one, SEQUENTIAL_CONCURRENCY, budget.phase_limit)?;
        let wall = started.elapsed();
        let connections = at_once.len() + one_by_one.len();

        let lines = ["PASS NEW ", "DNSBL rank ", "PASS OLD "];
        let deadline = Instant::now() + LOG_WAIT;
        let counted = loop {
            let counted = count_lines(&daemon, &lines);
            if counted.iter().sum::<usize>() >= connections || Instant::now() >= deadline {
                break counted;
            }
            thread::sleep(Duration::from_millis(50));
        };
        if counted.iter().sum::<usize>() != connections {
            return Err(format!(
                "{connections} connections, but the daemon logged {counted:?} lines starting \
                 with {lines:?}"
            )
            .into());
        }
        // Let the daemon write its status file once more after the last connection.
        thread::sleep(STATUS_INTERVAL + STATUS_INTERVAL / 2);
        let lookups = read_lookups(lab);
        daemon.stop();

        let queries = lab.rbldnsd.queries();
        let since = &queries[already.min(queries.len())..];
        let mut received: Vec<(&'static str, usize)> = ZONES.map(|zone| (zone, 0)).to_vec();
        let mut unknown = HashSet::new();
        let mut health_checks = 0;
        for name in since {
            if let Some(zone) = names.get(name) {
                if let Some(entry) = received.iter_mut().find(|(z, _)| z == zone) {
                    entry.1 += 1;
                }
            } else if name.starts_with("1.0.0.127.") || name.starts_with("2.0.0.127.") {
                health_checks += 1;
            } else {
                unknown.insert(name.clone());
            }
        }
        if !unknown.is_empty() {
            return Err(format!("rbldnsd was asked for names of no client: {unknown:?}").into());
        }
        let result = Queries {
            connections,
            screened: counted[0] + counted[1],
            passed_old: counted[2],
            lookups,
            received,
            health_checks,
            wall,
        };
        eprintln!(
            "  {} connections from {QUERY_ADDRESSES} addresses: rbldnsd received {} queries \
             ({:.1}% of the {} a daemon without sharing or caching would send)",
            result.connections,
            result.total(),
            100.0 * result.total() as f64 / result.naive() as f64,
            result.naive()
        );
        if result.total() > result.bound() {
            return Err(format!(
                "rbldnsd received {} queries for {QUERY_ADDRESSES} addresses and {} lists; at \
                 most {} are due",
                result.total(),
                ZONES.len(),
                result.bound()
            )
            .into());
        }
        Ok(result)
    }

    /// The lookups the daemon started, summed over its lists, from the status file it keeps in
    /// its state directory (`<list> lookups=N …` lines).
    fn read_lookups(lab: &Lab) -> Option<u64> {
        let state = lab.bed.scratch.path().join("state-queries");
        let text = fs::read_to_string(state.join("dnsbl.status")).ok()?;
        let mut total = 0;
        for line in text.lines() {
            let field = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("lookups="))?;
            total += field.parse::<u64>().ok()?;
        }
        (total > 0).then_some(total)
    }
}

mod report {
    use super::{decisions::Decisions, queries::Queries, *};

    pub fn render(
        budget: &Budget,
        decisions: &Decisions,
        queries: &Queries,
        elapsed: Duration,
    ) -> String {
        let mut out = bench::report_header("smtp-screen DNSBL benchmark", "dnsbl", budget.quick);
        let _ = writeln!(out, "- Daemon: `{}`", bench::daemon_bin());
        let _ = writeln!(out, "- Duration: {:.0} s", elapsed.as_secs_f64());
        let _ = writeln!(
            out,
            "- Lists: `{LAB_SITES}`, threshold 3, allowlist threshold -1, action `drop`, served by \
             rbldnsd on loopback of the server namespace; pregreet test off, so each decision \
             waits for the three answers.\n"
        );
        render_decisions(&mut out, decisions);
        render_queries(&mut out, queries);
        out
    }

    fn render_decisions(out: &mut String, d: &Decisions) {
        let _ = writeln!(out, "## Part 1: first-contact decisions\n");
        let _ = writeln!(
            out,
            "Each round: clients from addresses never seen before, {} connecting at a time, \
             each refused (`521`, rank 4) or handed to a backend that greets and closes at once. A \
             decision is a `PASS NEW` or `DNSBL rank` line in the daemon's log. CPU is user plus \
             system time from /proc (in ticks of {} ms), divided by the decisions. The clients \
             run on the same cores as the daemon and rbldnsd. Latency is from the client's \
             connect call to the daemon's close.\n",
            d.concurrency,
            1000 / clock_ticks_per_second()
        );
        let _ = writeln!(
            out,
            "| round | decisions | passed | ranked | wall s | decisions/s | daemon CPU µs/decision | rbldnsd CPU µs/decision | latency p50 ms | p99 ms |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
        for (i, r) in d.rounds.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
                i + 1,
                r.decisions,
                r.passed,
                r.ranked,
                r.wall.as_secs_f64(),
                r.per_second(),
                r.daemon_us(),
                r.rbldnsd_us(),
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3
            );
        }
        let per_second: Vec<f64> = d.rounds.iter().map(|r| r.per_second()).collect();
        let daemon_us: Vec<f64> = d.rounds.iter().map(|r| r.daemon_us()).collect();
        let _ = writeln!(
            out,
            "\n**Median over {} round{}: {:.0} decisions/s, {:.0} µs of daemon CPU per decision.**\n",
            d.rounds.len(),
            if d.rounds.len() == 1 { "" } else { "s" },
            median(&per_second),
            median(&daemon_us)
        );
    }

    fn render_queries(out: &mut String, q: &Queries) {
        let _ = writeln!(
            out,
            "## Part 2: DNS queries for {} connections from {QUERY_ADDRESSES} addresses\n",
            q.connections
        );
        let _ = writeln!(
            out,
            "{CONNECTIONS_PER_ADDRESS} connections from each address: {AT_ONCE} at the same \
             moment, then {} one after another across all addresses ({:.1} s in all). A fresh \
             daemon (empty temporary allowlist, empty DNS cache). Queries are what rbldnsd \
             logged receiving for the clients' names.\n",
            CONNECTIONS_PER_ADDRESS - AT_ONCE,
            q.wall.as_secs_f64()
        );
        let _ = writeln!(out, "| | count |");
        let _ = writeln!(out, "|---|---|");
        let _ = writeln!(out, "| connections | {} |", q.connections);
        let _ = writeln!(
            out,
            "| decided by the DNSBL test (`PASS NEW`, `DNSBL rank`) | {} |",
            q.screened
        );
        let _ = writeln!(
            out,
            "| let through by the temporary allowlist (`PASS OLD`) | {} |",
            q.passed_old
        );
        let _ = writeln!(
            out,
            "| list lookups the decided connections would start each on their own (decided × {}) | {} |",
            ZONES.len(),
            q.screened * ZONES.len()
        );
        match q.lookups {
            Some(lookups) => {
                let _ = writeln!(
                    out,
                    "| list lookups the daemon started (its status file; simultaneous connections from one address share them) | {lookups} |"
                );
            }
            None => {
                let _ = writeln!(out, "| lookups the daemon started | not reported |");
            }
        }
        for (zone, count) in &q.received {
            let _ = writeln!(out, "| queries rbldnsd received for {zone} | {count} |");
        }
        let _ = writeln!(
            out,
            "| queries for the test points (health check, not counted) | {} |",
            q.health_checks
        );
        let _ = writeln!(
            out,
            "\n**rbldnsd received {} queries: at most {} were due (one per list and address), \
             and a daemon without sharing or caching would have sent {}; ratio {:.3} \
             ({:.1}%).**",
            q.total(),
            q.bound(),
            q.naive(),
            q.total() as f64 / q.naive() as f64,
            100.0 * q.total() as f64 / q.naive() as f64
        );
    }
}
