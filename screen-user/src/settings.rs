//! What the configuration turns into before anything is opened: the parsed tables, the reply
//! settings and each stage's settings. `smtp-screen check-config` stops here; the daemon then
//! opens what they name (the allowlist, the DNS lists, the kernel maps, the relay, the log) and
//! builds the screen from them. Only this module, the daemon and the CLI read the whole
//! [`Config`] (and `import_postfix`, which writes one); the stages get their part of
//! [`Settings`], which is what a reload swaps.

use std::{net::SocketAddr, path::Path};

use anyhow::Context as _;

use crate::{
    access_list::{AccessList, AddressList, AllowlistInterfaces, DiskFiles},
    allowlist::AllowlistSettings,
    config::Config,
    dnsbl::{DnsServers, DnsblConfig, DnsblSites, ReplyMap, Thresholds},
    handoff::{HandoffSettings, proxy::Backend},
    limits::LimitSettings,
    screen::{
        ScreenSettings,
        access::Access,
        deny_policy::DenySettings,
        early::EarlySettings,
        endpoint::{EndpointSettings, UpstreamProxyProtocol, upstream_proxy_warning},
    },
    smtpd::{
        DeepTests, EngineSettings, ForbiddenCommand, ReplyStyle,
        tls::{self, TlsAcceptor},
    },
    test_state::{EnabledTests, TestTtls},
};

/// Everything the daemon is built from.
pub(crate) struct Settings {
    pub(crate) screen: ScreenSettings,
    pub(crate) access: Access,
    pub(crate) engine: EngineSettings,
    pub(crate) style: ReplyStyle,
    /// STARTTLS for the dummy engine, when a certificate is configured.
    pub(crate) tls: Option<TlsAcceptor>,
    /// The DNSBL/DNSWL lists, when `dnsbl_sites` names any.
    pub(crate) dnsbl: Option<DnsblConfig>,
    pub(crate) handoff: HandoffSettings,
    pub(crate) limits: LimitSettings,
    pub(crate) deny: DenySettings,
    pub(crate) allowlist: AllowlistSettings,
    /// Warnings to log (skipped table rules and the like).
    pub(crate) warnings: Vec<String>,
}

impl Settings {
    /// Reads every table the configuration names and checks the reply settings. Relative
    /// table paths are taken from `config_dir`.
    pub(crate) fn new(config: &Config, config_dir: &Path) -> anyhow::Result<Self> {
        let files = DiskFiles::new(config_dir);
        let (mynetworks, w1) = AddressList::parse("mynetworks", &config.mynetworks, &files)?;
        let (list, w2) = AccessList::parse(&config.access_list, &files)?;
        let (allowlist_interfaces, w3) =
            AllowlistInterfaces::parse(&config.allowlist_interfaces, &files)?;
        let (upstream_proxy_networks, w4) = AddressList::parse(
            "upstream_proxy_networks",
            &config.upstream_proxy_networks,
            &files,
        )?;
        let warnings = w1
            .iter()
            .chain(&w2)
            .chain(&w3)
            .chain(&w4)
            .map(ToString::to_string)
            .chain(
                upstream_proxy_warning(
                    config.upstream_proxy_protocol,
                    &config.upstream_proxy_networks,
                )
                .map(String::from),
            )
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
        let engine = EngineSettings {
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
        engine.validate().context("reply settings")?;
        let style =
            ReplyStyle::new(config.soft_bounce, footer.as_deref()).context("reject_footer")?;
        let dnsbl = (!sites.is_empty()).then(|| DnsblConfig {
            reply_map,
            timeout: config.dnsbl_timeout,
            servers: dns_servers(&config.dns_servers),
            lookup_limit: config.dnsbl_lookup_limit as usize,
            ..DnsblConfig::new(sites)
        });
        let greet_banner = config.greet_banner();
        let screen = ScreenSettings {
            endpoint: EndpointSettings {
                upstream_proxy_protocol: config.upstream_proxy_protocol,
                upstream_proxy_timeout: config.upstream_proxy_timeout,
                upstream_proxy_networks,
            },
            denylist_action: config.denylist_action,
            enabled: EnabledTests {
                pregreet: !greet_banner.is_empty(),
                dnsbl: dnsbl.is_some(),
                pipelining: config.pipelining_enable,
                non_smtp_command: config.non_smtp_command_enable,
                bare_newline: config.bare_newline_enable,
            },
            early: EarlySettings {
                greet_banner,
                greet_wait: config.greet_wait,
                greet_action: config.greet_action,
                dnsbl_action: config.dnsbl_action,
                thresholds: Thresholds {
                    threshold: config.dnsbl_threshold,
                    allowlist_threshold: config.dnsbl_allowlist_threshold,
                    min_ttl: config.dnsbl_min_ttl,
                    max_ttl: config.dnsbl_max_ttl,
                },
                kernel_dnsbl_threshold: config.kernel_dnsbl_threshold,
            },
            ttls: TestTtls {
                pregreet: config.greet_ttl,
                dnsbl_min: config.dnsbl_min_ttl,
                dnsbl_max: config.dnsbl_max_ttl,
                pipelining: config.pipelining_ttl,
                non_smtp_command: config.non_smtp_command_ttl,
                bare_newline: config.bare_newline_ttl,
            },
            deep_tests_skip_dnswl: config.deep_tests_skip_dnswl,
            command_time_limit: config.command_time_limit,
            engine_session_time_limit: config.engine_session_time_limit,
        };
        Ok(Self {
            screen,
            access: Access {
                list,
                mynetworks,
                allowlist_interfaces,
            },
            engine,
            style,
            tls,
            dnsbl,
            handoff: HandoffSettings {
                method: config.handoff,
                backend: Backend {
                    addr: config.backend,
                    proxy_protocol: config.backend_proxy_protocol,
                },
                postfix_pass_socket: config.postfix_pass_socket.clone(),
                relay: config.relay,
                relay_max_connections: config.relay_max_connections,
                relay_idle_timeout: config.relay_idle_timeout,
                backend_greeting_timeout: config.backend_greeting_timeout,
            },
            limits: LimitSettings {
                client_connection_count_limit: config.client_connection_count_limit,
                pre_queue_limit: config.pre_queue_limit,
                post_queue_limit: config.post_queue_limit,
            },
            deny: DenySettings {
                window: config.deny_window,
                ttl: config.deny_ttl,
                v6_prefix: config.deny_v6_prefix,
                soft_bounce: config.soft_bounce,
                rate_limit: config.kernel_deny_rate_limit,
                behind_balancer: config.upstream_proxy_protocol == UpstreamProxyProtocol::Haproxy,
            },
            allowlist: AllowlistSettings {
                state_dir: config.state_dir.clone(),
                cleanup_interval: config.cache_cleanup_interval,
                retention: config.cache_retention_time,
            },
            warnings,
        })
    }
}

/// Where the DNS lists are asked: `dns_servers`, or the host's resolver configuration.
fn dns_servers(servers: &[SocketAddr]) -> DnsServers {
    if servers.is_empty() {
        DnsServers::System
    } else {
        DnsServers::Explicit(servers.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behind_balancer(networks: &str) -> Config {
        Config {
            upstream_proxy_protocol: UpstreamProxyProtocol::Haproxy,
            upstream_proxy_networks: networks.into(),
            ..Config::default()
        }
    }

    #[test]
    fn upstream_proxy_networks_that_cannot_be_read_are_named_with_the_bad_entry() {
        for (networks, what) in [
            (
                "192.0.2.10, 192.0.2.300",
                "bad address pattern: \"192.0.2.300\"",
            ),
            ("[2001:db8::10", "missing ']'"),
            ("192.0.2.0/33", "bad net/mask pattern: \"192.0.2.0/33\""),
            ("hash:/etc/postfix/balancers", "unsupported table \"hash:"),
        ] {
            let error = Settings::new(&behind_balancer(networks), Path::new("/"))
                .err()
                .unwrap_or_else(|| panic!("{networks:?} was accepted"));
            let message = format!("{error:#}");
            assert!(
                message.starts_with("upstream_proxy_networks: ") && message.contains(what),
                "{networks:?}: {message}"
            );
        }
    }

    #[test]
    fn the_default_upstream_proxy_networks_behind_a_balancer_are_warned_about_at_start() {
        let any = |settings: &Settings| {
            settings
                .warnings
                .iter()
                .filter(|w| w.contains("anyone who reaches the port can claim any client address"))
                .count()
        };
        let default = Settings::new(&behind_balancer("static:all"), Path::new("/")).unwrap();
        assert_eq!(any(&default), 1, "{:?}", default.warnings);
        let named = Settings::new(
            &behind_balancer("192.0.2.10 [2001:db8::10]"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(any(&named), 0, "{:?}", named.warnings);
        assert!(
            named
                .screen
                .endpoint
                .upstream_proxy_networks
                .contains("192.0.2.10".parse().unwrap())
        );
        assert!(
            !named
                .screen
                .endpoint
                .upstream_proxy_networks
                .contains("192.0.2.11".parse().unwrap())
        );
        // Without a balancer the list is not used, and nothing is said about it.
        let direct = Settings::new(&Config::default(), Path::new("/")).unwrap();
        assert_eq!(any(&direct), 0, "{:?}", direct.warnings);
    }
}
