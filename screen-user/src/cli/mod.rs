//! The `smtp-screen` command line: one file per verb.

mod cache;
mod check_config;
mod dnsbl;
mod import_postfix;
mod list;
mod load;
mod run;
mod status;
mod unload;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::bail;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::{
    duration,
    kernel::{AttachMode, KernelAction},
    paths, prefixes,
};

/// smtp-screen keeps spambots away from a mail server: postscreen's tests in a daemon, and the
/// verdict on known-bad addresses in an XDP program that drops their SYNs.
#[derive(Debug, Parser)]
#[command(name = "smtp-screen", version)]
pub struct Cli {
    /// Directory on the BPF filesystem that holds the pinned maps and links.
    #[arg(long, global = true, env = paths::PIN_DIR_ENV, default_value = paths::DEFAULT_PIN_DIR)]
    pub(crate) pin_dir: PathBuf,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Load the XDP program and attach it to interfaces (maps and links are pinned).
    Load(LoadArgs),
    /// Detach the program from every interface and remove every pin.
    Unload,
    /// Show interfaces, attach modes, program id, counters and map fill levels (and, with
    /// --config, each DNS list's health and hit counts as the running daemon last wrote them).
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage the deny lists: static prefixes, or dynamic entries with --ttl.
    #[command(subcommand)]
    Deny(DenyCommand),
    /// Manage the static allow list (sources that XDP never drops).
    #[command(subcommand)]
    Allow(AllowCommand),
    /// Run the daemon.
    Run(RunArgs),
    /// Check a configuration file and the tables it names, without starting anything.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Inspect or edit the temporary allowlist (while the daemon is stopped).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Query the configured DNS lists.
    #[command(subcommand)]
    Dnsbl(DnsblCommand),
    /// Write an smtp-screen configuration from Postfix's postscreen settings (`postconf -n`),
    /// and print the master.cf edits that hand port 25 over.
    ImportPostfix {
        /// Read this saved `postconf -n` output instead of running `postconf -n`.
        #[arg(long, value_name = "FILE")]
        postconf_output: Option<PathBuf>,
        /// Write the configuration to this new file instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Postfix's master.cf, to name the exact lines to change (and to take postscreen's
        /// listen addresses and -o settings from).
        #[arg(long, value_name = "FILE")]
        master_cf: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DnsblCommand {
    /// Ask every configured list about ADDR: each answer, the matching filters and
    /// weights, and the final score and verdict.
    Check {
        addr: std::net::IpAddr,
        #[command(flatten)]
        args: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// List every record: address, then each test's expiry.
    List(ConfigArgs),
    /// Delete the record of one address.
    Del {
        addr: std::net::IpAddr,
        #[command(flatten)]
        args: ConfigArgs,
    },
    /// Delete every record.
    Flush(ConfigArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// The configuration file.
    #[arg(long, default_value = paths::DEFAULT_CONFIG)]
    pub(crate) config: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// Interface to attach to (repeat for several).
    #[arg(long = "iface", required = true, value_name = "IF")]
    pub(crate) ifaces: Vec<String>,
    /// Attach mode; logged, never guessed.
    #[arg(long, value_enum, default_value = "native")]
    pub(crate) mode: AttachMode,
    /// Replace an XDP program that another tool attached.
    #[arg(long)]
    pub(crate) force: bool,
    /// Destination port to screen (repeat for several, at most 8).
    #[arg(long = "port", value_name = "PORT", default_value = "25", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) ports: Vec<u16>,
    /// What XDP does with a SYN from a denied source.
    #[arg(long, value_enum, default_value = "drop")]
    pub(crate) action: KernelAction,
    /// Prefix length that IPv6 dynamic deny entries cover.
    #[arg(long, default_value_t = screen_common::ScreenConfig::DEFAULT_V6_PREFIX_LEN)]
    pub(crate) v6_prefix: u32,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DenyCommand {
    /// Deny an address or prefix: static without --ttl, dynamic (expiring) with it.
    Add {
        #[arg(value_parser = prefixes::parse_prefix)]
        prefix: IpNet,
        /// Make it a dynamic entry that expires after this time (e.g. 600s, 10m, 1h, 1d).
        #[arg(long, value_parser = duration::parse)]
        ttl: Option<Duration>,
    },
    /// Remove a static prefix or the dynamic entry covering an address.
    Del {
        #[arg(value_parser = prefixes::parse_prefix)]
        prefix: IpNet,
    },
    /// List static and dynamic deny entries.
    List,
    /// Replace the whole static deny list with the prefixes in FILE, in one step.
    Load { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AllowCommand {
    /// Allow an address or prefix.
    Add {
        #[arg(value_parser = prefixes::parse_prefix)]
        prefix: IpNet,
    },
    /// Remove an allowed prefix.
    Del {
        #[arg(value_parser = prefixes::parse_prefix)]
        prefix: IpNet,
    },
    /// List allowed prefixes.
    List,
    /// Replace the whole allow list with the prefixes in FILE, in one step.
    Load { file: PathBuf },
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The configuration file.
    #[arg(long, default_value = paths::DEFAULT_CONFIG)]
    pub(crate) config: PathBuf,
}

/// Runs one command.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Run(_)) {
        // A listing piped into `head` ends quietly, as other CLI tools do. The daemon keeps
        // Rust's default (SIGPIPE ignored) so a client hanging up never kills it.
        // SAFETY: resetting a signal disposition at start-up, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Load(args) => load::run(&cli.pin_dir, &args),
        Command::Unload => unload::run(&cli.pin_dir),
        Command::Status { config } => status::run(&cli.pin_dir, config.as_deref()),
        Command::Deny(cmd) => list::deny(&cli.pin_dir, cmd),
        Command::Allow(cmd) => list::allow(&cli.pin_dir, cmd),
        Command::Run(args) => run::run(&cli.pin_dir, &args),
        Command::CheckConfig { file } => check_config::run(&file),
        Command::Cache(cmd) => cache::run(cmd),
        Command::Dnsbl(DnsblCommand::Check { addr, args }) => dnsbl::check(addr, &args),
        Command::ImportPostfix {
            postconf_output,
            output,
            master_cf,
        } => import_postfix::run(
            postconf_output.as_deref(),
            output.as_deref(),
            master_cf.as_deref(),
        ),
    }
}

/// Fails unless `pin_dir` holds a loaded program, telling "not loaded" apart from "not
/// allowed to look" (bpffs is usually mode 0700).
fn require_loaded(pin_dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(pin_dir) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "nothing loaded: {} does not exist (smtp-screen load --iface IF)",
            pin_dir.display()
        ),
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("cannot access {}", pin_dir.display())))
        }
    }
}

#[cfg(test)]
mod tests;
