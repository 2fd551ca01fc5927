//! What every benchmark binary shares: its command line (`--quick`), the root check, Ctrl-C
//! handling that lets every guard clean up, the report's header, place, number format and
//! writing, the clients' address pool, their connections and SMTP sessions, counts of the
//! screeners' log lines, small statistics, and CPU times.

use std::{
    error::Error,
    fmt::{self, Write as _},
    fs,
    io::{self, ErrorKind, Read, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{
    daemon::{Bed, take_line},
    netns::smtp_screen_bin,
};

/// The error type of the benchmarks.
pub type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C ends the benchmark between two steps, so that every guard still cleans up.
fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether the benchmark has been asked to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Fails once the benchmark has been asked to stop.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        return Err("interrupted".into());
    }
    Ok(())
}

/// The benchmark binary's `main`: parses `--quick` (`cargo bench` also passes `--bench`;
/// anything else is a mistake worth stopping for), skips loudly without root, runs `run` and
/// reports where the Markdown report went.
pub fn main(name: &str, run: impl FnOnce(bool) -> Result<PathBuf>) -> ExitCode {
    let mut quick = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "--bench" => {}
            other => {
                eprintln!("unknown argument {other:?}; usage: {name} [--quick]");
                return ExitCode::from(2);
            }
        }
    }
    if !crate::require_root(&format!("{name} benchmark")) {
        return ExitCode::SUCCESS;
    }
    catch_signals();
    match run(quick) {
        Ok(path) => {
            eprintln!("report written to {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name} benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The median of `values` (NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The smallest and the largest of `values` (infinities for none).
pub fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// The `q`-quantile (0..=1) of `values`, nearest rank (zero for none).
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// User plus system CPU time of process `pid` so far, threads that have exited included.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = ProcStat::read(pid)?;
    Ok(Duration::from_secs_f64(ticks_to_seconds(
        stat.user + stat.system,
    )))
}

/// What `/proc/PID/stat` says of a process: its name, state, parent and CPU times, the times
/// in ticks of [`clock_ticks_per_second`].
#[derive(Clone, Debug)]
pub struct ProcStat {
    pub name: String,
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead) and so on.
    pub state: char,
    pub ppid: u32,
    pub user: u64,
    pub system: u64,
    /// What the children it has reaped used.
    pub children_user: u64,
    pub children_system: u64,
}

impl ProcStat {
    pub fn read(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/stat");
        let stat = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        Self::parse(&stat).ok_or_else(|| format!("unexpected {path}: {stat}").into())
    }

    fn parse(stat: &str) -> Option<Self> {
        // The command name is in parentheses and may hold anything; the fields follow it.
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1.to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields.first()?.chars().next()?;
        let ppid = fields.get(1)?.parse().ok()?;
        // utime, stime, cutime and cstime are fields 14 to 17 of the line, 12 to 15 after the
        // name.
        let mut times = [0u64; 4];
        for (time, field) in times.iter_mut().zip(fields.get(11..15)?) {
            *time = field.parse().ok()?;
        }
        let [user, system, children_user, children_system] = times;
        Some(Self {
            name,
            state,
            ppid,
            user,
            system,
            children_user,
            children_system,
        })
    }
}

/// The whole machine's CPU time from the first line of /proc/stat, in ticks of
/// [`clock_ticks_per_second`]: user (with nice), and kernel (system, irq, softirq).
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    pub user: u64,
    pub kernel: u64,
}

impl MachineCpu {
    pub fn now() -> Result<Self> {
        let stat = fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().unwrap_or_default();
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()?;
        let [user, nice, system, _idle, _iowait, irq, softirq, ..] = fields[..] else {
            return Err(format!("unexpected /proc/stat line: {line}").into());
        };
        Ok(Self {
            user: user + nice,
            kernel: system + irq + softirq,
        })
    }
}

/// `ticks` of /proc's CPU clock in seconds.
pub fn ticks_to_seconds(ticks: u64) -> f64 {
    ticks as f64 / clock_ticks_per_second() as f64
}

/// The running thread's CPU time, which on this kernel includes the softirq work (such as a
/// veth receive) that ran on top of it.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The unit of the CPU times in /proc (`USER_HZ`).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// Where benchmark `name` writes its report: `$SMTP_SCREEN_BENCH_REPORT`, or
/// `target/bench/NAME.md` of the workspace the benchmark binary was built in.
pub fn report_path(name: &str) -> PathBuf {
    std::env::var_os("SMTP_SCREEN_BENCH_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("bench").join(format!("{name}.md")))
}

/// Prints the report and writes it to [`report_path`] of benchmark `name`, which it returns.
pub fn write_report(name: &str, report: &str) -> Result<PathBuf> {
    println!("{report}");
    let path = report_path(name);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    fs::write(&path, report).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// The Markdown report's opening: its title, then the date, the command that made it and the
/// machine, as every benchmark's report starts.
pub fn report_header(title: &str, name: &str, quick: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {title}\n");
    let _ = writeln!(out, "- Date: {}", utc_now());
    let _ = writeln!(
        out,
        "- Command: `{}`{}",
        command(name, quick),
        if quick { " (quick run)" } else { "" }
    );
    let _ = writeln!(out, "- Machine: {}", Machine::describe());
    out
}

/// The command that runs benchmark `name`.
pub fn command(name: &str, quick: bool) -> String {
    let command = format!("cargo bench -p screen-tests --bench {name}");
    if quick {
        command + " -- --quick"
    } else {
        command
    }
}

/// The smtp-screen binary the benchmark runs, for the report; or why there is none.
pub fn daemon_bin() -> String {
    smtp_screen_bin().map_or_else(|e| e.to_string(), |bin| bin.display().to_string())
}

/// The workspace's target directory: the bench binary lives in `<target>/<profile>/deps/`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// `n` with thousands separators, as the reports write counts: `1,000,000`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The machine the figures come from.
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| {
                line.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cores, {}, Linux {}",
            self.cores, self.cpu_model, self.kernel
        )
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`, from `date`.
pub fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|date| !date.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The clients' addresses, 10.251.128.0/17: the client namespace holds all of them as local
/// addresses ([`take_client_network`]), so that any of them can be bound without configuring
/// thousands.
pub const CLIENT_NETWORK: &str = "10.251.128.0/17";
/// Addresses in [`CLIENT_NETWORK`], leaving out each /24's .0 and .255.
pub const POOL_SIZE: usize = 128 * 254;

/// The client address with pool index `index` (below [`POOL_SIZE`]): 10.251.128.1 onwards,
/// each /24's .1 to .254.
pub fn client_addr(index: usize) -> Ipv4Addr {
    assert!(index < POOL_SIZE, "no address {index} in {CLIENT_NETWORK}");
    let [third, fourth] = [128 + index / 254, 1 + index % 254].map(|octet| octet as u8);
    Ipv4Addr::new(10, 251, third, fourth)
}

/// Makes every address of `network` local to the client namespace of `bed` (`ip route add
/// local`) and routes it from the server namespace through the client's host `host`.
pub fn take_client_network(bed: &Bed, network: &str, host: u8) -> Result<()> {
    bed.client
        .ip(["route", "add", "local", network, "dev", "lo"])
        .map_err(|e| format!("client namespace: taking {network} as local: {e}"))?;
    bed.server
        .ip(["route", "add", network, "via", &bed.v4(host).to_string()])
        .map_err(|e| format!("server namespace: routing {network}: {e}"))?;
    Ok(())
}

/// A TCP connection from `src` to `dst`, made in the calling thread's network namespace; a
/// connect that takes longer than `limit` fails with [`ErrorKind::TimedOut`].
pub fn connect_from(src: Ipv4Addr, dst: SocketAddr, limit: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SockAddr::from(SocketAddr::new(src.into(), 0)))?;
    socket.connect_timeout(&SockAddr::from(dst), limit)?;
    Ok(socket.into())
}

/// Reads until the peer closes (a reset is a close too) and returns what came; more than `max`
/// bytes is an error, as no screener has that much to say to these clients.
pub fn read_to_close(stream: &mut impl Read, max: usize) -> io::Result<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(received),
            Ok(n) if received.len() + n <= max => received.extend_from_slice(&buf[..n]),
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "the server sent more than {max} bytes before closing"
                )));
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(received),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The client's side of a benchmark's SMTP session: whole replies read off the connection,
/// with errors as values, so that a benchmark stops with what went wrong.
pub struct SmtpSession {
    pub stream: TcpStream,
    pending: Vec<u8>,
}

impl SmtpSession {
    /// The most one reply may take, continuation lines included.
    const REPLY_MAX: usize = 16 * 1024;

    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// The last line of the next whole reply, its continuation lines read and dropped.
    pub fn reply(&mut self) -> io::Result<String> {
        loop {
            while let Some(line) = take_line(&mut self.pending) {
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(line);
                }
            }
            if self.pending.len() > Self::REPLY_MAX {
                return Err(io::Error::other(format!(
                    "a reply longer than {} bytes",
                    Self::REPLY_MAX
                )));
            }
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ));
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `command` and CRLF; returns the last line of the reply.
    pub fn command(&mut self, command: &str) -> io::Result<String> {
        self.stream.write_all(format!("{command}\r\n").as_bytes())?;
        self.reply()
    }
}

/// How many of a screener's log `lines` start with each of `prefixes`.
pub fn count_prefixed(lines: &[String], prefixes: &[&str]) -> Vec<usize> {
    prefixes
        .iter()
        .map(|prefix| lines.iter().filter(|l| l.starts_with(prefix)).count())
        .collect()
}

/// Waits up to `limit` until `screener`'s log `lines` hold `expected` lines starting with each
/// of `prefixes`, which the screener's clients have already seen the outcome of; more lines
/// than expected fail at once.
pub fn wait_for_counts(
    screener: &str,
    lines: impl Fn() -> Vec<String>,
    prefixes: &[&str],
    expected: &[usize],
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let counted = count_prefixed(&lines(), prefixes);
        if counted == expected {
            return Ok(());
        }
        if Instant::now() >= deadline || counted.iter().zip(expected).any(|(c, e)| c > e) {
            return Err(format!(
                "{screener} logged {counted:?} lines starting with {prefixes:?}, expected \
                 {expected:?}"
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_skips_each_networks_first_and_last_address() {
        assert_eq!(client_addr(0), Ipv4Addr::new(10, 251, 128, 1));
        assert_eq!(client_addr(253), Ipv4Addr::new(10, 251, 128, 254));
        assert_eq!(client_addr(254), Ipv4Addr::new(10, 251, 129, 1));
        assert_eq!(client_addr(POOL_SIZE - 1), Ipv4Addr::new(10, 251, 255, 254));
    }

    #[test]
    fn a_stat_line_gives_name_state_parent_and_times() {
        let line = "4242 (a (odd) name) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    31 7 5 3 20 0 1 0 99 1000 200";
        let stat = ProcStat::parse(line).expect("a stat line");
        assert_eq!(stat.name, "a (odd) name");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 17);
        assert_eq!(
            [
                stat.user,
                stat.system,
                stat.children_user,
                stat.children_system
            ],
            [31, 7, 5, 3]
        );
    }

    #[test]
    fn the_command_names_the_benchmark_and_quick_mode() {
        assert_eq!(
            command("dnsbl", true),
            "cargo bench -p screen-tests --bench dnsbl -- --quick"
        );
        assert_eq!(
            command("held", false),
            "cargo bench -p screen-tests --bench held"
        );
    }
}

/// What the benchmarks that run smtp-screen and Debian's postscreen side by side under the
/// same load (`postscreen`, `held`, `flood`) share: the screener a site runs, and the site's
/// settings and clients' limits, the same for both screeners.
pub mod side_by_side {
    use std::{fmt, time::Duration};

    /// Which screener a site runs.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Screener {
        SmtpScreen,
        Postscreen,
    }

    impl fmt::Display for Screener {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(match self {
                Screener::SmtpScreen => "smtp-screen",
                Screener::Postscreen => "postscreen",
            })
        }
    }

    /// The port both screeners listen on.
    pub const SMTP_PORT: u16 = 25;

    /// The lists and the rank that fails a client: a listed bot is in both (rank 4).
    pub const SITES: &str = "bl.test=127.0.0.[2..11]*3, bl2.test*1";

    /// The DNSBL rank that fails a client.
    pub const THRESHOLD: &str = "3";

    /// The greet wait of both screeners: short, so that a listed bot's decision comes quickly, yet
    /// long enough that a pregreet is seen before it ends on a machine the clients keep busy.
    pub const GREET_WAIT: &str = "2s";

    /// Untimed messages before the timed ones, so that smtpd processes are running.
    pub const LEGIT_WARM_UP: usize = 5;

    /// The legitimate client's host number in the bed, permitted by both access lists.
    pub const LEGIT_HOST: u8 = 2;

    /// What a pregreeting bot says before its turn.
    pub const PREGREET: &[u8] = b"EHLO bot.example\r\n";

    /// One connection may take this long to connect, and as long again to be answered.
    pub const CONNECT_LIMIT: Duration = Duration::from_secs(5);

    /// How long a client waits for a reply.
    pub const REPLY_WAIT: Duration = Duration::from_secs(10);

    /// The most a bot reads before the screener's close.
    pub const BOT_REPLY_MAX: usize = 4096;
}
