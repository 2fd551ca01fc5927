//! The daemon: opens everything that needs root (the kernel layer, the hand-off relay's BPF
//! maps, the listening sockets, the allowlist database, the log), drops privileges, then
//! screens connections until SIGTERM or SIGINT, sweeping expired kernel deny entries as it
//! goes.
//!
//! Everything the XDP layer sets up in the kernel is pinned, so stopping or restarting the
//! daemon leaves the filter and every dynamic entry in place; `smtp-screen unload` removes
//! them. The hand-off relay is not: its maps and program go with the daemon.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    allowlist::{AllowlistCache, CacheOptions},
    config::Config,
    dnsbl::{
        DnsServers, Dnsbl, DnsblConfig, DnsblLog, DnsblSites, HealthState, ReplyMap, Thresholds,
    },
    handoff::{
        Handoff,
        proxy::Backend,
        relay::{Relay, RelayMode},
    },
    kernel::{self, Maps, clock},
    limits::{self, Limits},
    maillog::MailLog,
    privileges,
    screen::{
        self, Screen,
        access::{AccessList, AddressList, AllowlistInterfaces, DiskFiles},
        deny_policy::DenyPolicy,
    },
    smtpd::{
        DeepTests, EngineSettings, ForbiddenCommand, ReplyStyle,
        tls::{self, TlsAcceptor},
    },
    test_state::{EnabledTests, TestTtls},
};

/// The file in `state_dir` where the daemon keeps each DNS list's health and hit counts for
/// `smtp-screen status --config FILE`.
pub const DNSBL_STATUS_FILE: &str = "dnsbl.status";

/// Rewrites the DNSBL status file in place (it was opened before the daemon dropped root).
fn write_dnsbl_status(file: &mut std::fs::File, dnsbl: &Dnsbl) {
    use std::io::{Seek as _, Write as _};
    let mut text = String::new();
    for list in dnsbl.stats() {
        let health = match &list.health {
            HealthState::Healthy => "healthy".to_string(),
            HealthState::TestPointMissing => "in use, test point 127.0.0.2 not listed".into(),
            HealthState::Suspended(why) => format!("suspended: {why}"),
        };
        text.push_str(&format!(
            "{} lookups={} listed={} not_listed={} failures={} health={health}\n",
            list.domain, list.lookups, list.listed, list.not_listed, list.failures
        ));
    }
    let result = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(text.as_bytes()));
    if let Err(e) = result {
        tracing::warn!("writing the DNSBL status: {e}");
    }
}

/// How often the DNSBLs' test points are checked.
const DNSBL_HEALTH_INTERVAL: Duration = Duration::from_secs(300);

/// Loads, configures and attaches the XDP program; returns its maps.
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
    // The program itself stays loaded through its pinned links.
    Ok(loaded.maps)
}

/// Sets up the relay for `handoff = "proxy"` while the daemon can still create BPF objects,
/// and says which relay runs and why.
fn start_relay(config: &Config) -> anyhow::Result<Relay> {
    if config.handoff != Handoff::Proxy {
        return Ok(Relay::userspace());
    }
    let (relay, line) = Relay::start(config.relay, config.relay_max_connections)
        .context("relay = \"kernel\" (use \"auto\" to fall back to the userspace relay)")?;
    if config.relay == RelayMode::Auto && !relay.is_kernel() {
        tracing::warn!("{line}");
    } else {
        tracing::info!("{line}");
    }
    Ok(relay)
}

/// What the configuration turns into before anything is opened: the parsed tables and the
/// reply settings. `check-config` stops here; the daemon goes on.
pub struct Prepared {
    pub access: AccessList,
    pub mynetworks: AddressList,
    pub allowlist_interfaces: AllowlistInterfaces,
    pub settings: EngineSettings,
    pub style: ReplyStyle,
    /// STARTTLS for the dummy engine, when a certificate is configured.
    pub tls: Option<TlsAcceptor>,
    /// The DNSBL/DNSWL lists (possibly none).
    pub sites: DnsblSites,
    pub reply_map: ReplyMap,
    /// Warnings to log (skipped table rules and the like).
    pub warnings: Vec<String>,
}

impl Prepared {
    /// Reads every table the configuration names and checks the reply settings. Relative
    /// table paths are taken from `config_dir`.
    pub fn new(config: &Config, config_dir: &Path) -> anyhow::Result<Self> {
        let files = DiskFiles::new(config_dir);
        let (mynetworks, w1) = AddressList::parse("mynetworks", &config.mynetworks, &files)?;
        let (access, w2) = AccessList::parse(&config.access_list, &files)?;
        let (allowlist_interfaces, w3) =
            AllowlistInterfaces::parse(&config.allowlist_interfaces, &files)?;
        let warnings = w1
            .iter()
            .chain(&w2)
            .chain(&w3)
            .map(ToString::to_string)
            .collect();
        let footer = (!config.reject_footer.is_empty()).then(|| config.reject_footer.clone());
        let forbidden_commands = config
            .forbidden_commands
            .iter()
            .map(|entry| ForbiddenCommand::parse(entry))
            .collect::<Result<Vec<_>, _>>()
            .context("forbidden_commands")?;
        let tls = if config.tls_cert_file.is_empty() {
            None
        } else {
            Some(tls::load_acceptor(
                Path::new(&config.tls_cert_file),
                Path::new(&config.tls_key_file),
            )?)
        };
        let sites = DnsblSites::parse(&config.dnsbl_sites).context("dnsbl_sites")?;
        let reply_map = ReplyMap::new(
            config
                .dnsbl_reply_map
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
        .context("dnsbl_reply_map")?;
        let settings = EngineSettings {
            smtpd_banner: config.smtpd_banner(),
            command_count_limit: config.command_count_limit,
            line_length_limit: config.line_length_limit as usize,
            soft_bounce: config.soft_bounce,
            helo_required: config.helo_required,
            disable_vrfy: config.disable_vrfy_command,
            reject_footer: footer.clone(),
            starttls_offered: tls.is_some(),
            deep_tests: DeepTests {
                pipelining: config.pipelining_enable.then_some(config.pipelining_action),
                non_smtp_command: config
                    .non_smtp_command_enable
                    .then_some(config.non_smtp_command_action),
                bare_newline: config
                    .bare_newline_enable
                    .then_some(config.bare_newline_action),
                forbidden_commands,
            },
            ..EngineSettings::new(&config.myhostname)
        };
        settings.validate().context("reply settings")?;
        let style =
            ReplyStyle::new(config.soft_bounce, footer.as_deref()).context("reject_footer")?;
        Ok(Self {
            access,
            mynetworks,
            allowlist_interfaces,
            settings,
            style,
            tls,
            sites,
            reply_map,
            warnings,
        })
    }
}

/// Where the DNS lists are asked: `dns_servers`, or the host's resolver configuration.
pub fn dns_servers(config: &Config) -> DnsServers {
    if config.dns_servers.is_empty() {
        DnsServers::System
    } else {
        DnsServers::Explicit(config.dns_servers.clone())
    }
}

/// The DNSBL score thresholds and pass lifetimes of the configuration.
pub fn dnsbl_thresholds(config: &Config) -> Thresholds {
    Thresholds {
        threshold: config.dnsbl_threshold,
        allowlist_threshold: config.dnsbl_allowlist_threshold,
        min_ttl: config.dnsbl_min_ttl,
        max_ttl: config.dnsbl_max_ttl,
    }
}

/// Builds the shared screening state from the configuration (tables are read here: a bad
/// table stops the daemon before it accepts anything).
pub(crate) async fn build_screen(
    config: Config,
    config_dir: &Path,
    kernel: Option<Maps>,
    relay: Relay,
    log: MailLog,
) -> anyhow::Result<Screen> {
    let Prepared {
        access,
        mynetworks,
        allowlist_interfaces,
        settings,
        style,
        tls,
        sites,
        reply_map,
        warnings,
    } = Prepared::new(&config, config_dir)?;
    let log = Arc::new(log);
    for warning in &warnings {
        log.warning(warning);
    }
    let dnsbl = if sites.is_empty() {
        None
    } else {
        let servers = dns_servers(&config);
        let dnsbl_log: Arc<dyn DnsblLog> = log.clone();
        Some(Dnsbl::new(
            DnsblConfig {
                reply_map,
                timeout: config.dnsbl_timeout,
                servers,
                ..DnsblConfig::new(sites)
            },
            dnsbl_log,
        )?)
    };

    let greet_banner = config.greet_banner();
    let enabled = EnabledTests {
        pregreet: !greet_banner.is_empty(),
        dnsbl: dnsbl.is_some(),
        pipelining: config.pipelining_enable,
        non_smtp_command: config.non_smtp_command_enable,
        bare_newline: config.bare_newline_enable,
    };
    let ttls = TestTtls {
        pregreet: config.greet_ttl,
        dnsbl_min: config.dnsbl_min_ttl,
        dnsbl_max: config.dnsbl_max_ttl,
        pipelining: config.pipelining_ttl,
        non_smtp_command: config.non_smtp_command_ttl,
        bare_newline: config.bare_newline_ttl,
    };
    let thresholds = dnsbl_thresholds(&config);
    let cache = AllowlistCache::open(&config.state_dir, CacheOptions::default())
        .await
        .with_context(|| format!("temporary allowlist in {}", config.state_dir.display()))?;
    let cache = Arc::new(cache);
    cache.spawn_cleanup(config.cache_cleanup_interval, config.cache_retention_time);

    let kernel_policy = kernel.is_some() && !config.interfaces.is_empty();
    let policy = DenyPolicy::new(
        config.deny_window,
        if kernel_policy {
            config.deny_ttl
        } else {
            Duration::ZERO
        },
        config.deny_v6_prefix,
    );
    Ok(Screen {
        limits: Limits::new(
            config.client_connection_count_limit,
            config.pre_queue_limit,
            config.post_queue_limit,
        ),
        backend: Backend {
            addr: config.backend,
            proxy_protocol: config.backend_proxy_protocol,
        },
        settings: Arc::new(settings),
        style,
        access,
        mynetworks,
        allowlist_interfaces,
        greet_banner,
        enabled,
        ttls,
        cache,
        policy: Mutex::new(policy),
        kernel: kernel.map(Mutex::new),
        relay,
        log,
        dnsbl,
        thresholds,
        tls,
        config,
    })
}

/// Raises the open-files limit as far as the hard limit allows and warns when the connection
/// limits can take more descriptors than that: the clients beyond it would wait in the
/// listen queue while the daemon retries `accept`.
fn check_open_files(config: &Config) -> anyhow::Result<()> {
    let open_files = limits::raise_open_files().context("raising the open-files limit")?;
    let needed = limits::descriptors_needed(config.pre_queue_limit, config.post_queue_limit);
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
pub async fn run(config: Config, config_path: &Path, pin_dir: &Path) -> anyhow::Result<()> {
    check_open_files(&config)?;
    let kernel = if config.interfaces.is_empty() {
        None
    } else {
        Some(start_kernel_layer(&config, pin_dir)?)
    };
    let relay = start_relay(&config)?;
    let mut listeners = Vec::new();
    for addr in &config.listen {
        let listener = screen::bind(*addr).with_context(|| format!("listen on {addr}"))?;
        listeners.push(tokio::net::TcpListener::from_std(listener)?);
    }
    let log = MailLog::open(config.log_to, &config.syslog_name).context("opening the mail log")?;
    let config_dir = config_path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let user = config.user.clone();
    let sweep_interval = config.deny_sweep_interval.max(Duration::from_secs(1));
    let listen = config.listen.clone();
    let screen = Arc::new(build_screen(config, &config_dir, kernel, relay, log).await?);

    let mut dnsbl_status = match &screen.dnsbl {
        Some(_) => {
            let path = screen.config.state_dir.join(DNSBL_STATUS_FILE);
            Some(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            )
        }
        None => None,
    };
    privileges::drop_to(&user)?;
    tracing::info!(?listen, user, "smtp-screen screening connections");

    let mut accept_tasks = Vec::new();
    for listener in listeners {
        accept_tasks.push(tokio::spawn(Arc::clone(&screen).accept_loop(listener)));
    }

    // List health: at start and then every few minutes, each DNSBL is asked for its test
    // points, and a list that lists everything or stops answering is suspended.
    let mut health = tokio::time::interval(DNSBL_HEALTH_INTERVAL);
    let mut sweep = tokio::time::interval(sweep_interval);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                if let Some(kernel) = &screen.kernel {
                    let mut maps = kernel.lock().unwrap_or_else(|e| e.into_inner());
                    match maps.sweep_expired(clock::monotonic_ns()) {
                        Ok(0) => {}
                        Ok(swept) => tracing::info!(swept, "expired dynamic deny entries removed"),
                        Err(e) => tracing::warn!("sweeping dynamic deny entries: {e}"),
                    }
                }
                screen.lock_policy_expire();
                if let (Some(dnsbl), Some(file)) = (&screen.dnsbl, dnsbl_status.as_mut()) {
                    write_dnsbl_status(file, dnsbl);
                }
            }
            _ = health.tick() => {
                if let Some(dnsbl) = &screen.dnsbl {
                    dnsbl.health_check().await;
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    for task in accept_tasks {
        task.abort();
    }
    if let Err(e) = screen.cache.close().await {
        tracing::warn!("closing the temporary allowlist: {e}");
    }
    tracing::info!("stopping; the XDP filter stays attached (smtp-screen unload removes it)");
    Ok(())
}
