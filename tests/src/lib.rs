//! Shared pieces of smtp-screen's kernel and end-to-end tests and benchmarks.
//!
//! Tests that need root (BPF, network namespaces) call [`require_root`] first: in CI
//! (`CI=true`) a missing privilege fails the test; elsewhere the test is skipped with a loud
//! message on stderr, never passed silently.

pub mod frames;
pub mod netns;
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
