//! `smtp-screen`: the binary's edge, where errors become one clear line and an exit code.

use std::io::IsTerminal as _;

use clap::Parser as _;
use screen_user::cli::{Cli, dispatch};

/// mimalloc rather than glibc's malloc: under a flood of first contacts every connection
/// allocates and frees task state, DNS messages and log lines across the runtime's threads,
/// and glibc's allocator spent 18% of the daemon's time there, much of it consolidating and
/// unlinking chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Through a queue: a stalled stderr must not stall the thread that logs.
        .with_writer(screen_user::maillog::queued_stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let outcome = dispatch(cli);
    // The messages still queued for stderr, before the process ends and takes them along.
    screen_user::maillog::flush_stderr(std::time::Duration::from_secs(2));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            let mut msg = format!("{err}");
            let mut source = err.source();
            while let Some(cause) = source {
                let text = cause.to_string();
                if !msg.contains(&text) {
                    msg.push_str(": ");
                    msg.push_str(&text);
                }
                source = cause.source();
            }
            let denied = err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
            }) || msg.contains("Operation not permitted")
                || msg.contains("Permission denied");
            if denied {
                msg.push_str(" (smtp-screen needs root, or CAP_BPF and CAP_NET_ADMIN)");
            }
            eprintln!("smtp-screen: error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}
