//! `cargo xtask fuzz`: builds the fuzz targets of `screen-user/fuzz/` with cargo-fuzz
//! (libFuzzer without a sanitizer, so on the stable toolchain) and runs each for a while from
//! its committed seed corpus. New inputs go to `target/fuzz/corpus/TARGET`, never into the
//! committed corpus; a crash stops the run and names the input that caused it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo, run_cmd, step, toolchain};

/// The targets, each a file in `screen-user/fuzz/fuzz_targets/`.
pub const TARGETS: &[&str] = &[
    "proxy_protocol",
    "smtp_session",
    "postfix_attributes",
    "cidr_table",
    "config",
    "dnsbl_sites",
    "postfix_import",
    "xdp_parser",
];

/// Targets that load the XDP program (BPF_PROG_TEST_RUN) and so need root.
const ROOT_ONLY: &[&str] = &["xdp_parser"];

/// Seconds per target in `cargo xtask test`: about a minute for all of them.
pub const CI_SECONDS: u64 = 7;

/// One input taking longer than this counts as a crash (a hang).
const INPUT_TIME_LIMIT_SECS: u64 = 10;

/// The cargo-fuzz release known to work (`--sanitizer none` on stable).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages the fuzz build needs besides the eBPF toolchain: libfuzzer-sys compiles
/// libFuzzer's C++.
const FUZZ_PACKAGES: &[&str] = &["g++"];

/// Builds every target, then runs `only` (or all) for `seconds` each.
pub fn run(root: &Path, only: Option<&str>, seconds: u64) -> anyhow::Result<()> {
    let targets: Vec<&str> = match only {
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!("no fuzz target {name:?}; known: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    toolchain::ensure(toolchain::BUILD_PACKAGES)?;
    toolchain::ensure_packages(FUZZ_PACKAGES)?;
    ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("screen-user/fuzz");
    let target_dir = root.join("target/fuzz");
    step("building the fuzz targets (cargo fuzz build --sanitizer none)");
    run_cmd(
        cargo()
            .current_dir(&fuzz_dir)
            .args(["fuzz", "build", "--sanitizer", "none", "--target-dir"])
            .arg(&target_dir),
    )?;
    let binaries = target_dir.join(host_triple()?).join("release");
    let mut summary = Vec::new();
    for target in targets {
        if ROOT_ONLY.contains(&target) && !toolchain::is_root() {
            eprintln!(
                "\n*** SKIPPED fuzz target {target}: it loads the XDP program \
                 (BPF_PROG_TEST_RUN) and needs root; run `cargo xtask fuzz` as root ***\n"
            );
            summary.push(format!("{target}: SKIPPED (needs root)"));
            continue;
        }
        summary.push(run_target(
            &binaries,
            &fuzz_dir,
            &target_dir,
            target,
            seconds,
        )?);
    }
    step("fuzzing done, nothing crashed:");
    for line in summary {
        eprintln!("  {line}");
    }
    Ok(())
}

/// Runs one target for `seconds`; returns its line of the summary (runs, time, corpus).
fn run_target(
    binaries: &Path,
    fuzz_dir: &Path,
    target_dir: &Path,
    target: &str,
    seconds: u64,
) -> anyhow::Result<String> {
    let seeds = fuzz_dir.join("corpus").join(target);
    let corpus = target_dir.join("corpus").join(target);
    let artifacts = target_dir.join("artifacts").join(target);
    let log = target_dir.join("logs").join(format!("{target}.log"));
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::create_dir_all(log.parent().context("log has a parent")?)?;
    step(&format!(
        "fuzzing {target} for {seconds} s (log: {})",
        log.display()
    ));
    let mut artifact_prefix = artifacts.display().to_string();
    artifact_prefix.push('/');
    let status = Command::new(binaries.join(target))
        .arg(&corpus)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIME_LIMIT_SECS}"))
        .arg(format!("-artifact_prefix={artifact_prefix}"))
        .arg("-print_final_stats=1")
        .stderr(fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
        .status()
        .with_context(|| format!("running the fuzz target {target}"))?;
    let output = fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = output.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
        bail!(
            "fuzz target {target} crashed ({status}); the input is in {} (replay: {} \
             INPUT); make it a regression test in the normal test suite",
            artifacts.display(),
            binaries.join(target).display()
        );
    }
    let done = output
        .lines()
        .find(|line| line.starts_with("Done "))
        .unwrap_or("(no final line)")
        .to_string();
    let inputs = fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    Ok(format!("{target}: {done}; corpus {inputs} inputs"))
}

/// The host's target triple, the directory cargo-fuzz builds into.
fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV names no host")
}

/// Installs cargo-fuzz unless the known version is there (a few minutes, once).
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let binary: PathBuf = toolchain::cargo_bin_dir()?.join("cargo-fuzz");
    let installed = Command::new(&binary)
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
    let wanted = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    if installed.as_deref() == Some(wanted.as_str()) {
        step(&format!("{wanted} present"));
        return Ok(());
    }
    step(&format!(
        "installing {wanted} (a few minutes, once); found: {}",
        installed.as_deref().unwrap_or("none")
    ));
    run_cmd(cargo().args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
        "--force",
    ]))
}
