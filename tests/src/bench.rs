//! What every benchmark binary shares: its command line (`--quick`), the root check, Ctrl-C
//! handling that lets every guard clean up, the report's place and header facts (machine,
//! date), small statistics, and a process's CPU time.

use std::{
    error::Error,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
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
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold anything; the fields follow it.
    let (_, rest) = stat
        .rsplit_once(')')
        .ok_or_else(|| format!("unexpected /proc/{pid}/stat: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .ok_or_else(|| format!("short /proc/{pid}/stat: {stat}"))?
        .iter()
        .map(|field| field.parse::<u64>())
        .sum::<std::result::Result<u64, _>>()?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second() as f64,
    ))
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

/// The workspace's target directory: the bench binary lives in `<target>/<profile>/deps/`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
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
