//! The daemon: opens everything that needs root (the kernel layer, the hand-off relay's BPF
//! maps, the listening sockets, the allowlist database, the log), gives the state directory to
//! its account, drops privileges, then screens connections until SIGTERM or SIGINT, sweeping
//! expired kernel deny entries as it goes. Of the XDP program's maps it keeps write access to
//! the dynamic deny entries only.
//!
//! Everything the XDP layer sets up in the kernel is pinned, so stopping or restarting the
//! daemon leaves the filter and every dynamic entry in place; `smtp-screen unload` removes
//! them. The hand-off relay is not: its maps and program go with the daemon.

use std::{
    os::fd::AsFd as _,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    allowlist::{AllowlistCache, CacheOptions},
    config::Config,
    dnsbl::{self, Dnsbl, DnsblLog, HEALTH_CHECK_INTERVAL},
    handoff::{
        HandOff, Handoff, HandoffSettings,
        relay::{Relay, RelayMode},
    },
    kernel::{self, MapAccess, Maps, clock},
    limits::{self, LimitSettings, Limits},
    maillog::MailLog,
    paths,
    privileges::ServiceAccount,
    screen::{self, Screen, deny_guard::DenyGuard, deny_policy::DenyEnforcer},
    settings::Settings,
};

/// The DNS lists log through the mail log, as postscreen's dnsblog does.
impl DnsblLog for MailLog {
    fn info(&self, line: &str) {
        MailLog::info(self, line);
    }

    fn warning(&self, line: &str) {
        MailLog::warning(self, line);
    }
}

/// How long the daemon, stopping, waits for the mail log's queued lines to be written.
const LOG_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Loads, configures and attaches the XDP program; returns its maps as the daemon holds them:
/// the dynamic deny maps writable, every other map read-only.
fn start_kernel_layer(config: &Config, pin_dir: &Path) -> anyhow::Result<Maps> {
    let request = kernel::LoadRequest {
        ifaces: &config.interfaces,
        mode: config.xdp_mode,
        force: false,
        ports: &config.protected_ports,
        action: config.kernel_action,
        v6_prefix_len: config.deny_v6_prefix,
    };
    let loaded = kernel::load_and_attach(pin_dir, &request, |_, _| {})?;
    tracing::info!(
        prog_id = loaded.prog_id,
        pin_dir = %pin_dir.display(),
        interfaces = ?config.interfaces,
        mode = config.xdp_mode.as_str(),
        ports = ?config.protected_ports,
        action = ?config.kernel_action,
        "XDP SYN screen attached"
    );
    // The program itself stays loaded through its pinned links, and it holds its maps: the
    // read-write descriptors of the load are closed already.
    let maps = Maps::from_pins_with(pin_dir, MapAccess::DynamicDeny)
        .context("opening the XDP program's maps for screening")?;
    Ok(maps)
}

/// Sets up the relay for `handoff = "proxy"` while the daemon can still create BPF objects,
/// and says which relay runs and why.
fn start_relay(handoff: &HandoffSettings) -> anyhow::Result<Relay> {
    if handoff.method != Handoff::Proxy {
        return Ok(Relay::userspace());
    }
    let (relay, line) = Relay::start(handoff.relay, handoff.relay_max_connections)
        .context("relay = \"kernel\" (use \"auto\" to fall back to the userspace relay)")?;
    if handoff.relay == RelayMode::Auto && !relay.is_kernel() {
        tracing::warn!("{line}");
    } else {
        tracing::info!("{line}");
    }
    Ok(relay)
}

/// Opens what the settings name (the temporary allowlist, the DNS lists) and builds the
/// shared screening state around the kernel maps, the relay and the log already opened.
/// Returns the allowlist's store too, which the daemon closes at the end.
pub(crate) async fn build_screen(
    settings: Settings,
    kernel: Option<Maps>,
    relay: Relay,
    log: MailLog,
) -> anyhow::Result<(Screen, Arc<AllowlistCache>)> {
    let Settings {
        screen,
        access,
        engine,
        style,
        tls,
        dnsbl,
        handoff,
        limits,
        deny,
        allowlist,
        warnings,
    } = settings;
    let log = Arc::new(log);
    for warning in &warnings {
        log.warning(warning);
    }
    let dnsbl = match dnsbl {
        Some(config) => {
            let dnsbl_log: Arc<dyn DnsblLog> = log.clone();
            Some(Dnsbl::new(config, dnsbl_log)?)
        }
        None => None,
    };
    let cache = AllowlistCache::open(&allowlist.state_dir, CacheOptions::default())
        .await
        .with_context(|| format!("temporary allowlist in {}", allowlist.state_dir.display()))?;
    let cache = Arc::new(cache);
    cache.spawn_cleanup(allowlist.cleanup_interval, allowlist.retention);

    let policy = deny.policy(kernel.is_some());
    let guard = DenyGuard::new(&access, cache.clone());
    if let Some(line) = deny.off_behind_balancer(kernel.is_some()) {
        log.info(line);
    }
    // Both relays together hold at most relay_max_connections, the size of the sockhash.
    let relay_limit = match handoff.method {
        Handoff::Proxy => handoff.relay_max_connections,
        Handoff::Postfix => 0,
    };
    let limits = Limits::new(
        limits.client_connection_count_limit,
        limits.pre_queue_limit,
        limits.post_queue_limit,
        relay_limit,
    );
    let engine = Arc::new(engine);
    let handoff = HandOff {
        settings: handoff,
        relay,
        limits: Arc::clone(&limits),
        engine: Arc::clone(&engine),
        style: style.clone(),
        command_time_limit: screen.command_time_limit.normal,
        log: Arc::clone(&log),
    };
    let screen = Screen {
        settings: screen,
        access,
        limits,
        allowlist: cache.clone(),
        deny: DenyEnforcer::new(
            policy,
            guard,
            kernel.map(|maps| Arc::new(Mutex::new(maps))),
            Arc::clone(&log),
        )?,
        dnsbl,
        engine,
        style,
        tls,
        handoff,
        log,
    };
    Ok((screen, cache))
}

/// Raises the open-files limit as far as the hard limit allows and warns when the connection
/// limits can take more descriptors than that: the clients beyond it would wait in the
/// listen queue while the daemon retries `accept`.
fn check_open_files(limits: &LimitSettings) -> anyhow::Result<()> {
    let open_files = limits::raise_open_files().context("raising the open-files limit")?;
    let needed = limits::descriptors_needed(limits.pre_queue_limit, limits.post_queue_limit);
    if open_files < needed {
        tracing::warn!(
            open_files,
            needed,
            "the open-files limit (RLIMIT_NOFILE) is below what pre_queue_limit and \
             post_queue_limit can take; raise the hard limit (systemd: LimitNOFILE=)"
        );
    } else {
        tracing::info!(open_files, "open-files limit");
    }
    Ok(())
}

/// Runs until SIGTERM or SIGINT.
pub(crate) async fn run(config: Config, config_path: &Path, pin_dir: &Path) -> anyhow::Result<()> {
    let config_dir = config_path.parent().unwrap_or(Path::new("/"));
    let settings = Settings::new(&config, config_dir)?;
    // A missing account stops the daemon before it opens anything.
    let account = ServiceAccount::for_root(&config.user)?;
    check_open_files(&settings.limits)?;
    let kernel = if config.interfaces.is_empty() {
        None
    } else {
        Some(start_kernel_layer(&config, pin_dir)?)
    };
    let relay = start_relay(&settings.handoff)?;
    let mut listeners = Vec::new();
    for addr in &config.listen {
        let listener = screen::bind(*addr).with_context(|| format!("listen on {addr}"))?;
        listeners.push(tokio::net::TcpListener::from_std(listener)?);
    }
    let log = MailLog::open(config.log_to, &config.syslog_name, &config.syslog_socket)
        .context("opening the mail log")?;
    let sweep_interval = config.deny_sweep_interval.max(Duration::from_secs(1));
    let (screen, cache) = build_screen(settings, kernel, relay, log).await?;
    let screen = Arc::new(screen);

    let mut dnsbl_status = match screen.dnsbl() {
        Some(_) => {
            let path = paths::dnsbl_status(&config.state_dir);
            Some(
                dnsbl::create_status_file(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            )
        }
        None => None,
    };
    if let Some(account) = account {
        // Whose the state is, for the operator to see; the daemon writes it as that account.
        account.give_path(&config.state_dir)?;
        account.give_path(&paths::allowlist_db(&config.state_dir))?;
        if let Some(file) = &dnsbl_status {
            account.give_fd(file.as_fd(), &paths::dnsbl_status(&config.state_dir))?;
        }
        account.switch()?;
    }
    tracing::info!(listen = ?config.listen, user = config.user, "smtp-screen screening connections");

    let mut accept_tasks = Vec::new();
    for listener in listeners {
        accept_tasks.push(tokio::spawn(Arc::clone(&screen).accept_loop(listener)));
    }
    // A suspended list's answers no longer hold: the kernel denies made on them are revoked.
    if let Some(dnsbl) = screen.dnsbl() {
        let suspensions = dnsbl.suspensions();
        accept_tasks.push(tokio::spawn(
            Arc::clone(&screen).revoke_on_suspension(suspensions),
        ));
    }

    // List health: at start and then every few minutes, each DNSBL is asked for its test
    // points, and a list that lists everything or stops answering is suspended. A check waits
    // up to `dnsbl_timeout` on a list's servers: it runs on its own, so that neither the sweep
    // nor SIGTERM waits for it.
    if screen.dnsbl().is_some() {
        accept_tasks.push(tokio::spawn(check_list_health(Arc::clone(&screen))));
    }

    let mut sweep = tokio::time::interval(sweep_interval);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                screen.deny().sweep_kernel(clock::monotonic_ns());
                screen.deny().expire();
                if let (Some(dnsbl), Some(file)) = (screen.dnsbl(), dnsbl_status.as_mut()) {
                    dnsbl.write_status(file);
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    for task in accept_tasks {
        task.abort();
    }
    if let Err(e) = cache.close().await {
        tracing::warn!("closing the temporary allowlist: {e}");
    }
    // The lines still queued are written, unless the log is stuck (a full pipe).
    screen.log.flush(LOG_FLUSH_LIMIT);
    let dropped = screen.log.dropped();
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "mail log lines dropped since the start (the log fell behind)"
        );
    }
    tracing::info!("stopping; the XDP filter stays attached (smtp-screen unload removes it)");
    Ok(())
}

/// The DNS lists' health check, at start and every [`HEALTH_CHECK_INTERVAL`], for as long as
/// the daemon runs.
async fn check_list_health(screen: Arc<Screen>) {
    let Some(dnsbl) = screen.dnsbl() else {
        return;
    };
    let mut health = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        health.tick().await;
        dnsbl.health_check().await;
    }
}
