//! What every benchmark binary shares: its command line (`--quick`), the root check, Ctrl-C
//! handling that lets every guard clean up, the report line, and small statistics.

use std::{
    error::Error,
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
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
