//! Checks for, and installs, what building and testing smtp-screen needs on a Debian machine:
//! Debian's rustc-web (a Rust compiler with its own source, so `core` can be built for the BPF
//! target), LLVM 22 and bpf-linker built against it, bpftool, and the tools the tests drive.
//! Each step says what it does; nothing is done when everything is there.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{run_cmd, step};

/// Debian packages the build needs.
pub const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
];

/// Debian packages the tests and benchmarks drive: Postfix as the backend MTA and as the
/// postscreen to compare with, swaks as a real SMTP client, rbldnsd as a DNS blocklist, perf
/// to profile the daemon under a benchmark's load.
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "nftables",
    "bpftool",
    "postfix",
    "swaks",
    // swaks --tls needs Net::SSLeay; the TLS tests make their certificates with openssl.
    "libnet-ssleay-perl",
    "openssl",
    "rbldnsd",
    "linux-perf",
    // The load balancer in front of the daemon (PROXY protocol tests).
    "haproxy",
];

/// Postfix's installer asks what kind of mail system to set up; the tests run private
/// instances, so the machine's own stays unconfigured.
const POSTFIX_PRESEED: &[u8] = b"postfix postfix/main_mailer_type select No configuration\n";

/// The bpf-linker release known to work with LLVM 22 and the aya versions in use.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Installs the build toolchain when any part is missing.
pub fn ensure(packages: &[&str]) -> anyhow::Result<()> {
    ensure_packages(packages)?;
    ensure_bpf_linker()
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.ends_with(b"install ok installed"))
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// Installs the Debian packages that are not installed yet.
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        step(&format!("Debian packages present: {}", packages.join(" ")));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {0}; install them as root: apt-get install -y {0}",
            missing.join(" ")
        );
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    if missing.contains(&"postfix") {
        preseed(POSTFIX_PRESEED)?;
    }
    run_cmd(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The account the daemon runs as by default (`user` in the configuration).
const SERVICE_ACCOUNT: &str = "smtp-screen";

/// Creates the daemon's default account when it is missing: a system account with its own
/// group, no home and no login shell. The daemon refuses to start without its account, and
/// the end-to-end tests run it as that account.
pub fn ensure_service_account() -> anyhow::Result<()> {
    let exists = || {
        Command::new("getent")
            .args(["passwd", SERVICE_ACCOUNT])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if exists() {
        step(&format!("account present: {SERVICE_ACCOUNT}"));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "the daemon's account {SERVICE_ACCOUNT} is missing; create it as root: useradd \
             --system --user-group --no-create-home --home-dir /nonexistent --shell \
             /usr/sbin/nologin {SERVICE_ACCOUNT}"
        );
    }
    step(&format!("creating the system account {SERVICE_ACCOUNT}"));
    run_cmd(
        Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
            .arg(SERVICE_ACCOUNT),
    )
}

/// Answers installer questions ahead of `apt-get install` (`debconf-set-selections`).
fn preseed(selections: &[u8]) -> anyhow::Result<()> {
    let mut child = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()
        .context("running debconf-set-selections")?;
    child
        .stdin
        .take()
        .context("debconf-set-selections has no stdin")?
        .write_all(selections)
        .context("writing to debconf-set-selections")?;
    let status = child.wait().context("waiting for debconf-set-selections")?;
    if !status.success() {
        bail!("debconf-set-selections failed with {status}");
    }
    Ok(())
}

pub fn cargo_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home).join("bin"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cargo/bin"))
}

/// Installs bpf-linker (built against Debian's LLVM 22) unless the right version is there.
pub fn ensure_bpf_linker() -> anyhow::Result<()> {
    let linker = cargo_bin_dir()?.join("bpf-linker");
    let installed = Command::new(&linker)
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    if installed.as_deref() == Some(wanted.as_str()) {
        step(&format!("{wanted} present"));
        return Ok(());
    }
    step(&format!(
        "building {wanted} against LLVM 22 (a few minutes, once); found: {}",
        installed.as_deref().unwrap_or("none")
    ));
    run_cmd(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
    )
}
