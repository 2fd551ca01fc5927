//! `cargo xtask`: installs the toolchain, builds, runs, tests, fuzzes and benchmarks
//! smtp-screen.
//!
//! xtask depends on nothing in the workspace, so it builds on a fresh machine before the eBPF
//! toolchain exists; installing that toolchain is its first job.

mod fuzz;
mod toolchain;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs, build the XDP object and the release daemon
    /// (target/release/smtp-screen).
    Build,
    /// Build, then run smtp-screen with ARGS (default: the daemon on the example config).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install what the tests need, check formatting and lints, run every test.
    Test,
    /// Run the benchmarks (all, or the one named) and write their Markdown reports to target/bench/.
    Bench {
        name: Option<String>,
        /// A short run that checks the benchmark works rather than measuring it.
        #[arg(long)]
        quick: bool,
    },
    /// Run the fuzz targets (all, or the one named) for a while each, from the committed
    /// corpora; any crash fails. Installs cargo-fuzz and a C++ compiler when missing.
    Fuzz {
        target: Option<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

/// The benchmarks `cargo xtask bench` knows, each a `harness = false` bench of screen-tests.
const BENCHES: &[&str] = &["xdp", "dnsbl", "postscreen", "held", "handoff", "flood"];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match cli.command {
        Task::Build => build(&root).map(|_| ()),
        Task::Run { args } => run(&root, args),
        Task::Test => test(&root),
        Task::Bench { name, quick } => bench(&root, name, quick),
        Task::Fuzz { target, seconds } => fuzz::run(&root, target.as_deref(), seconds),
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

fn step(what: &str) {
    eprintln!("xtask: {what}");
}

/// Runs `cmd`, failing with its description when it fails.
fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn build(root: &Path) -> anyhow::Result<PathBuf> {
    toolchain::ensure(toolchain::BUILD_PACKAGES)?;
    step("building the XDP object and the release daemon");
    run_cmd(cargo().args(["build", "--release", "-p", "screen-user"]))?;
    let binary = root.join("target/release/smtp-screen");
    step(&format!("built {}", binary.display()));
    Ok(binary)
}

fn run(root: &Path, args: Vec<String>) -> anyhow::Result<()> {
    let binary = build(root)?;
    toolchain::ensure_service_account()?;
    let args = if args.is_empty() {
        vec![
            "run".to_string(),
            "--config".to_string(),
            root.join("smtp-screen.example.toml").display().to_string(),
        ]
    } else {
        args
    };
    step(&format!("running {} {}", binary.display(), args.join(" ")));
    run_cmd(Command::new(&binary).args(&args))
}

fn test(root: &Path) -> anyhow::Result<()> {
    toolchain::ensure(toolchain::BUILD_PACKAGES)?;
    toolchain::ensure_packages(toolchain::TEST_PACKAGES)?;
    toolchain::ensure_service_account()?;
    step("checking formatting");
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("checking lints");
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_cmd(cargo().args([
        "clippy",
        "-p",
        "screen-user",
        "--features",
        "fuzzing",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("running every fuzz target briefly (about a minute in all)");
    fuzz::run(root, None, fuzz::CI_SECONDS)?;
    step("building the daemon the end-to-end tests run");
    run_cmd(cargo().args(["build", "-p", "screen-user"]))?;
    let binary = root.join("target/debug/smtp-screen");
    step("checking that every benchmark still runs (short runs)");
    for name in BENCHES {
        run_cmd(
            cargo()
                .args([
                    "bench",
                    "-p",
                    "screen-tests",
                    "--bench",
                    name,
                    "--",
                    "--quick",
                ])
                .env("SMTP_SCREEN_BIN", &binary)
                .env(
                    "SMTP_SCREEN_BENCH_REPORT",
                    root.join(format!("target/bench/{name}-quick.md")),
                ),
        )?;
    }
    step("running every test: unit, BPF_PROG_TEST_RUN, end-to-end in network namespaces");
    run_cmd(
        cargo()
            .args(["test", "--workspace"])
            .env("SMTP_SCREEN_BIN", &binary),
    )
}

fn bench(root: &Path, name: Option<String>, quick: bool) -> anyhow::Result<()> {
    let names: Vec<&str> = match &name {
        Some(name) if BENCHES.contains(&name.as_str()) => vec![name.as_str()],
        Some(name) => bail!("no benchmark {name:?}; known: {}", BENCHES.join(", ")),
        None => BENCHES.to_vec(),
    };
    let binary = build(root)?;
    toolchain::ensure_packages(toolchain::TEST_PACKAGES)?;
    toolchain::ensure_service_account()?;
    for name in names {
        let report = root.join(format!("target/bench/{name}.md"));
        step(&format!("benchmark {name} (report: {})", report.display()));
        let mut cmd = cargo();
        cmd.args(["bench", "-p", "screen-tests", "--bench", name])
            .env("SMTP_SCREEN_BIN", &binary)
            .env("SMTP_SCREEN_BENCH_REPORT", &report);
        if quick {
            cmd.args(["--", "--quick"]);
        }
        run_cmd(&mut cmd)?;
    }
    Ok(())
}
