//! Shared pieces of smtp-screen's kernel and end-to-end tests and benchmarks.
//!
//! Tests that need root (BPF, network namespaces) call [`require_root`] first: in CI
//! (`CI=true`) a missing privilege fails the test; elsewhere the test is skipped with a loud
//! message on stderr, never passed silently. Tests that drive installed programs (Postfix,
//! swaks) call [`ensure_packages`] first.

use std::{
    io::{self, Write as _},
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

pub mod bench;
pub mod bpf_sys;
pub mod client_pool;
pub mod daemon;
pub mod frames;
pub mod haproxy;
pub mod netns;
pub mod postfix;
pub mod rbldnsd;
pub mod reference;
pub mod relay;
pub mod rng;
pub mod xdp;

/// Whether the test may use BPF and network namespaces. Prints a loud SKIP line and returns
/// `false` when it may not; panics in CI, where every test must run.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root (BPF, network namespaces), and CI must run every test");
    }
    eprintln!(
        "\n*** SKIPPED {test}: needs root (BPF, network namespaces); run as root or with `cargo xtask test` ***\n"
    );
    false
}

/// How long creating the daemon's account may take.
const USERADD_LIMIT: Duration = Duration::from_secs(60);

/// Creates the daemon's default account ([`screen_user::privileges::DEFAULT_USER`]) when it is
/// missing and this runs as root, as `cargo xtask` does, so that `cargo test` alone works on a
/// fresh machine: a system account with its own group, no home and no login shell.
pub fn ensure_service_account() -> io::Result<()> {
    use screen_user::privileges::{DEFAULT_USER, lookup};
    static USERADD: Mutex<()> = Mutex::new(());
    let _useradd = USERADD.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: geteuid has no preconditions.
    if lookup(DEFAULT_USER).is_ok() || unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    eprintln!("creating the system account {DEFAULT_USER}");
    let mut cmd = Command::new("useradd");
    cmd.args(["--system", "--user-group", "--no-create-home"])
        .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
        .arg(DEFAULT_USER);
    let result = netns::run_within(&mut cmd, USERADD_LIMIT);
    // Another test process may have created it meanwhile.
    match lookup(DEFAULT_USER) {
        Ok(_) => Ok(()),
        Err(missing) => result.and(Err(io::Error::other(missing))),
    }
}

/// How long installing missing packages may take, download included.
const APT_LIMIT: Duration = Duration::from_secs(600);

/// Installs whichever of the Debian `packages` are missing (`apt-get`, non-interactive), so
/// that a fresh CI machine runs the tests that drive real programs such as Postfix and swaks.
/// Postfix is pre-seeded as "No configuration": the tests run private instances and the
/// machine's own mail system stays unconfigured and stopped.
pub fn ensure_packages(packages: &[&str]) -> io::Result<()> {
    // Tests run on parallel threads; one apt-get at a time, and a package installed by
    // another thread meanwhile is not installed twice.
    static APT: Mutex<()> = Mutex::new(());
    let _apt = APT.lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !is_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing missing Debian packages: {}", missing.join(" "));
    if missing.contains(&"postfix") {
        let mut preseed = Command::new("debconf-set-selections");
        preseed.stdin(Stdio::piped());
        let mut child = preseed.spawn()?;
        // Dropping stdin after the write ends debconf's input.
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(b"postfix postfix/main_mailer_type select No configuration\n")?;
        let status = child.wait()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "debconf-set-selections failed ({status})"
            )));
        }
    }
    // Another process's apt-get may hold the dpkg lock: wait for it rather than fail.
    let lock_wait = ["-o", "DPkg::Lock::Timeout=300"];
    apt_get(&["update", "-q"], &lock_wait)?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt_get(&install, &lock_wait)
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.ends_with(b"install ok installed"))
}

fn apt_get(args: &[&str], options: &[&str]) -> io::Result<()> {
    let mut cmd = Command::new("apt-get");
    cmd.args(options)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive");
    netns::run_within(&mut cmd, APT_LIMIT)?;
    Ok(())
}
