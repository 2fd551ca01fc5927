//! Every option of the configuration file, with its default and the Postfix parameter
//! postscreen reads for the same setting, in one table; beside it, the Postfix parameters
//! smtp-screen has no option for whose defaults still matter: postscreen's parameters that
//! smtp-screen leaves out, and the general ones postscreen's defaults name.
//!
//! Postfix's defaults are Postfix 3.7's as `postconf -d` prints them (Debian 12), word for
//! word: a default that names another parameter, or an old name, says so
//! (`postscreen_pre_queue_limit = $default_process_limit`). `postscreen_tls_cert_file`,
//! `postscreen_tls_key_file` and `postscreen_starttls_timeout` are Postfix 3.12's.
//!
//! Who reads it: `Config::default()` is checked against it (every field of `Config` is a row,
//! and a file that sets every option to the table's default loads to `Config::default()`);
//! `smtp-screen.example.toml` is checked against `Config::default()`; `import-postfix` takes
//! the Postfix name of each option, and Postfix's defaults, from here.

/// A Postfix parameter and its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PostfixParameter {
    pub(crate) name: &'static str,
    /// Its older name, which Postfix still reads: `postscreen_blacklist_action` and the other
    /// "blacklist" and "whitelist" names before Postfix 3.6, `postscreen_dnsbl_ttl` before
    /// 3.1.
    pub(crate) old_name: Option<&'static str>,
    /// Its default as `postconf -d` prints it; `None` where Postfix computes it from the
    /// host (`myhostname`, `mynetworks`).
    pub(crate) default: Option<&'static str>,
}

impl PostfixParameter {
    const fn new(name: &'static str, default: &'static str) -> Self {
        Self {
            name,
            old_name: None,
            default: Some(default),
        }
    }

    const fn renamed(name: &'static str, old_name: &'static str, default: &'static str) -> Self {
        Self {
            name,
            old_name: Some(old_name),
            default: Some(default),
        }
    }

    const fn computed(name: &'static str) -> Self {
        Self {
            name,
            old_name: None,
            default: None,
        }
    }
}

/// One option of smtp-screen's configuration file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConfigOption {
    /// Its key in the file: the name of its `Config` field.
    pub(crate) key: &'static str,
    /// smtp-screen's default as a TOML value; `None` where TOML cannot write it: the host
    /// name, which is found at start, and an unset `kernel_dnsbl_threshold`. The tests hold
    /// `Config::default()` to it; the daemon builds its defaults as typed values.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) default: Option<&'static str>,
    /// The Postfix parameter postscreen reads for the same setting; `None` for smtp-screen's
    /// own options.
    pub(crate) postfix: Option<PostfixParameter>,
}

impl ConfigOption {
    /// smtp-screen's own option.
    const fn own(key: &'static str, default: &'static str) -> Self {
        Self {
            key,
            default: Some(default),
            postfix: None,
        }
    }

    /// An option that stands for a Postfix parameter (postscreen's, mostly, whose name the
    /// option takes without the `postscreen_` prefix).
    const fn postfix(key: &'static str, default: &'static str, postfix: PostfixParameter) -> Self {
        Self {
            key,
            default: Some(default),
            postfix: Some(postfix),
        }
    }
}

use PostfixParameter as P;

/// Every option of the configuration file, in `Config`'s order.
pub(crate) const OPTIONS: &[ConfigOption] = &[
    // --- Listening, hand-off, logging (smtp-screen's own) ---
    ConfigOption::own("listen", r#"["0.0.0.0:25", "[::]:25"]"#),
    ConfigOption::own("handoff", r#""proxy""#),
    ConfigOption::own("backend", r#""127.0.0.1:10025""#),
    ConfigOption::own(
        "postfix_pass_socket",
        r#""/var/spool/postfix/private/smtpd""#,
    ),
    ConfigOption::own("backend_proxy_protocol", r#""none""#),
    ConfigOption::own("relay", r#""auto""#),
    ConfigOption::own("relay_max_connections", "10000"),
    ConfigOption::own("relay_idle_timeout", r#""300s""#),
    ConfigOption::own("backend_greeting_timeout", r#""10s""#),
    ConfigOption::own("state_dir", r#""/var/lib/smtp-screen""#),
    ConfigOption::own("log_to", r#""stderr""#),
    ConfigOption::own("syslog_name", r#""smtp-screen""#),
    ConfigOption::own("syslog_socket", r#""/dev/log""#),
    ConfigOption::own("user", r#""smtp-screen""#),
    // --- postscreen's options ---
    ConfigOption {
        key: "myhostname",
        default: None,
        postfix: Some(P::computed("myhostname")),
    },
    // Postfix's banner names Postfix ($mail_name); smtp-screen's names no program.
    ConfigOption::postfix(
        "smtpd_banner",
        r#""$myhostname ESMTP""#,
        P::new("smtpd_banner", "$myhostname ESMTP $mail_name"),
    ),
    // Postfix derives its default from the host's own networks (mynetworks_style).
    ConfigOption::postfix(
        "mynetworks",
        r#""127.0.0.0/8 [::1]/128""#,
        P::computed("mynetworks"),
    ),
    ConfigOption::postfix(
        "access_list",
        r#""permit_mynetworks""#,
        P::new("postscreen_access_list", "permit_mynetworks"),
    ),
    ConfigOption::postfix(
        "denylist_action",
        r#""ignore""#,
        P::renamed(
            "postscreen_denylist_action",
            "postscreen_blacklist_action",
            "${postscreen_blacklist_action?{$postscreen_blacklist_action}:{ignore}}",
        ),
    ),
    ConfigOption::postfix(
        "greet_banner",
        r#""$smtpd_banner""#,
        P::new("postscreen_greet_banner", "$smtpd_banner"),
    ),
    ConfigOption::postfix(
        "greet_wait",
        r#""${stress?{2}:{6}}s""#,
        P::new("postscreen_greet_wait", "${stress?{2}:{6}}s"),
    ),
    ConfigOption::postfix(
        "greet_action",
        r#""ignore""#,
        P::new("postscreen_greet_action", "ignore"),
    ),
    ConfigOption::postfix("greet_ttl", r#""1d""#, P::new("postscreen_greet_ttl", "1d")),
    ConfigOption::postfix(
        "cache_retention_time",
        r#""7d""#,
        P::new("postscreen_cache_retention_time", "7d"),
    ),
    ConfigOption::postfix(
        "cache_cleanup_interval",
        r#""12h""#,
        P::new("postscreen_cache_cleanup_interval", "12h"),
    ),
    ConfigOption::postfix(
        "command_count_limit",
        "20",
        P::new("postscreen_command_count_limit", "20"),
    ),
    ConfigOption::postfix(
        "command_time_limit",
        r#""${stress?{10}:{300}}s""#,
        P::new("postscreen_command_time_limit", "${stress?{10}:{300}}s"),
    ),
    // Beyond postscreen, which allows command_count_limit × command_time_limit (100 minutes):
    // one normal command time limit (Postfix's DEF_SMTPD_TMOUT) for the whole session.
    ConfigOption::own("engine_session_time_limit", r#""300s""#),
    ConfigOption::postfix(
        "client_connection_count_limit",
        "50",
        P::new(
            "postscreen_client_connection_count_limit",
            "$smtpd_client_connection_count_limit",
        ),
    ),
    ConfigOption::postfix(
        "pre_queue_limit",
        "100",
        P::new("postscreen_pre_queue_limit", "$default_process_limit"),
    ),
    ConfigOption::postfix(
        "post_queue_limit",
        "100",
        P::new("postscreen_post_queue_limit", "$default_process_limit"),
    ),
    ConfigOption::postfix(
        "upstream_proxy_protocol",
        r#""""#,
        P::new("postscreen_upstream_proxy_protocol", ""),
    ),
    ConfigOption::postfix(
        "upstream_proxy_timeout",
        r#""5s""#,
        P::new("postscreen_upstream_proxy_timeout", "5s"),
    ),
    // postscreen takes a PROXY header from any address, which this default keeps.
    ConfigOption::own("upstream_proxy_networks", r#""static:all""#),
    ConfigOption::postfix(
        "allowlist_interfaces",
        r#""static:all""#,
        P::renamed(
            "postscreen_allowlist_interfaces",
            "postscreen_whitelist_interfaces",
            "${postscreen_whitelist_interfaces?{$postscreen_whitelist_interfaces}:{static:all}}",
        ),
    ),
    ConfigOption::postfix(
        "reject_footer",
        r#""""#,
        P::new("postscreen_reject_footer", "$smtpd_reject_footer"),
    ),
    ConfigOption::postfix(
        "line_length_limit",
        "2048",
        P::new("line_length_limit", "2048"),
    ),
    ConfigOption::postfix("soft_bounce", r#""no""#, P::new("soft_bounce", "no")),
    ConfigOption::postfix(
        "helo_required",
        r#""no""#,
        P::new("postscreen_helo_required", "$smtpd_helo_required"),
    ),
    ConfigOption::postfix(
        "disable_vrfy_command",
        r#""no""#,
        P::new("postscreen_disable_vrfy_command", "$disable_vrfy_command"),
    ),
    // --- DNSBL and DNSWL scoring ---
    ConfigOption::postfix("dnsbl_sites", r#""""#, P::new("postscreen_dnsbl_sites", "")),
    ConfigOption::postfix(
        "dnsbl_threshold",
        "1",
        P::new("postscreen_dnsbl_threshold", "1"),
    ),
    ConfigOption::postfix(
        "dnsbl_action",
        r#""ignore""#,
        P::new("postscreen_dnsbl_action", "ignore"),
    ),
    ConfigOption::postfix(
        "dnsbl_allowlist_threshold",
        "0",
        P::renamed(
            "postscreen_dnsbl_allowlist_threshold",
            "postscreen_dnsbl_whitelist_threshold",
            "${postscreen_dnsbl_whitelist_threshold?{$postscreen_dnsbl_whitelist_threshold}:{0}}",
        ),
    ),
    ConfigOption::postfix(
        "dnsbl_timeout",
        r#""10s""#,
        P::new("postscreen_dnsbl_timeout", "10s"),
    ),
    // Beyond postscreen, whose dnsblog processes are bounded only by the master's limits.
    ConfigOption::own("dnsbl_lookup_limit", "1000"),
    ConfigOption::postfix(
        "dnsbl_min_ttl",
        r#""60s""#,
        P::new("postscreen_dnsbl_min_ttl", "60s"),
    ),
    // Before Postfix 3.1 one TTL, postscreen_dnsbl_ttl, held every DNSBL pass.
    ConfigOption::postfix(
        "dnsbl_max_ttl",
        r#""1h""#,
        P::renamed(
            "postscreen_dnsbl_max_ttl",
            "postscreen_dnsbl_ttl",
            "${postscreen_dnsbl_ttl?{$postscreen_dnsbl_ttl}:{1}}h",
        ),
    ),
    // A TOML table here; a lookup table (type:name) in Postfix.
    ConfigOption::postfix(
        "dnsbl_reply_map",
        "{}",
        P::new("postscreen_dnsbl_reply_map", ""),
    ),
    ConfigOption::own("dns_servers", "[]"),
    // Unset: the kernel never denies on a DNSBL score alone.
    ConfigOption {
        key: "kernel_dnsbl_threshold",
        default: None,
        postfix: None,
    },
    // --- Deep protocol tests (after the greeting) ---
    ConfigOption::postfix(
        "pipelining_enable",
        r#""no""#,
        P::new("postscreen_pipelining_enable", "no"),
    ),
    ConfigOption::postfix(
        "pipelining_action",
        r#""enforce""#,
        P::new("postscreen_pipelining_action", "enforce"),
    ),
    ConfigOption::postfix(
        "pipelining_ttl",
        r#""30d""#,
        P::new("postscreen_pipelining_ttl", "30d"),
    ),
    ConfigOption::postfix(
        "non_smtp_command_enable",
        r#""no""#,
        P::new("postscreen_non_smtp_command_enable", "no"),
    ),
    ConfigOption::postfix(
        "non_smtp_command_action",
        r#""drop""#,
        P::new("postscreen_non_smtp_command_action", "drop"),
    ),
    ConfigOption::postfix(
        "non_smtp_command_ttl",
        r#""30d""#,
        P::new("postscreen_non_smtp_command_ttl", "30d"),
    ),
    ConfigOption::postfix(
        "forbidden_commands",
        r#"["CONNECT", "GET", "POST", "regexp:{{/^[^A-Z]/ Bogus}}"]"#,
        P::new("postscreen_forbidden_commands", "$smtpd_forbidden_commands"),
    ),
    ConfigOption::postfix(
        "bare_newline_enable",
        r#""no""#,
        P::new("postscreen_bare_newline_enable", "no"),
    ),
    ConfigOption::postfix(
        "bare_newline_action",
        r#""ignore""#,
        P::new("postscreen_bare_newline_action", "ignore"),
    ),
    ConfigOption::postfix(
        "bare_newline_ttl",
        r#""30d""#,
        P::new("postscreen_bare_newline_ttl", "30d"),
    ),
    ConfigOption::own("deep_tests_skip_dnswl", r#""yes""#),
    // Postfix 3.12's names; before it postscreen's tlsproxy used smtpd's files.
    ConfigOption::postfix(
        "tls_cert_file",
        r#""""#,
        P::new("postscreen_tls_cert_file", "$smtpd_tls_cert_file"),
    ),
    ConfigOption::postfix(
        "tls_key_file",
        r#""""#,
        P::new("postscreen_tls_key_file", "$smtpd_tls_key_file"),
    ),
    // --- The kernel layer (smtp-screen's own) ---
    ConfigOption::own("interfaces", "[]"),
    ConfigOption::own("xdp_mode", r#""native""#),
    ConfigOption::own("protected_ports", "[25]"),
    ConfigOption::own("kernel_action", r#""drop""#),
    ConfigOption::own("deny_v6_prefix", "64"),
    ConfigOption::own("deny_sweep_interval", r#""60s""#),
    ConfigOption::own("deny_window", r#""10m""#),
    ConfigOption::own("deny_ttl", r#""1h""#),
    ConfigOption::own("kernel_deny_rate_limit", "300"),
];

/// Postfix parameters smtp-screen has no option for, whose defaults matter all the same.
pub(crate) const POSTFIX_ONLY: &[PostfixParameter] = &[
    // postscreen's parameters that smtp-screen leaves out.
    P::new(
        "postscreen_cache_map",
        "btree:$data_directory/postscreen_cache",
    ),
    P::new("postscreen_command_filter", ""),
    P::new(
        "postscreen_discard_ehlo_keyword_address_maps",
        "$smtpd_discard_ehlo_keyword_address_maps",
    ),
    P::new(
        "postscreen_discard_ehlo_keywords",
        "$smtpd_discard_ehlo_keywords",
    ),
    P::new("postscreen_enforce_tls", "$smtpd_enforce_tls"),
    P::new("postscreen_expansion_filter", "$smtpd_expansion_filter"),
    P::new("postscreen_reject_footer_maps", "$smtpd_reject_footer_maps"),
    // Postfix 3.12's; taken as empty here, so that it counts only where the input sets it.
    P::new("postscreen_starttls_timeout", ""),
    P::new("postscreen_tls_security_level", "$smtpd_tls_security_level"),
    P::new("postscreen_use_tls", "$smtpd_use_tls"),
    P::new("postscreen_watchdog_timeout", "10s"),
    // Postfix's general parameters that postscreen's defaults, or the hand-off, name.
    P::new("compatibility_level", "0"),
    P::new("config_directory", "/etc/postfix"),
    P::new("daemon_directory", "/usr/lib/postfix/sbin"),
    P::new("data_directory", "/var/lib/postfix"),
    P::new("default_process_limit", "100"),
    P::new("disable_vrfy_command", "no"),
    P::new("dnsblog_service_name", "dnsblog"),
    P::new("inet_interfaces", "all"),
    P::new("inet_protocols", "all"),
    P::new("mail_name", "Postfix"),
    P::new("mail_owner", "postfix"),
    P::new("maillog_file", ""),
    P::new("multi_instance_name", ""),
    P::new("queue_directory", "/var/spool/postfix"),
    P::new("smtp_tls_connection_reuse", "no"),
    P::new("smtpd_client_connection_count_limit", "50"),
    P::new("smtpd_command_filter", ""),
    P::new("smtpd_discard_ehlo_keyword_address_maps", ""),
    P::new("smtpd_discard_ehlo_keywords", ""),
    P::new("smtpd_enforce_tls", "no"),
    P::new(
        "smtpd_forbidden_commands",
        "CONNECT GET POST regexp:{{/^[^A-Z]/ Bogus}}",
    ),
    P::new("smtpd_helo_required", "no"),
    P::new("smtpd_reject_footer", ""),
    P::new("smtpd_reject_footer_maps", ""),
    P::new("smtpd_service_name", "smtpd"),
    P::new("smtpd_tls_cert_file", ""),
    P::new("smtpd_tls_chain_files", ""),
    P::new("smtpd_tls_dcert_file", ""),
    P::new("smtpd_tls_eccert_file", ""),
    P::new("smtpd_tls_key_file", ""),
    P::new("smtpd_tls_security_level", ""),
    P::new("smtpd_use_tls", "no"),
    // Set only while postscreen is under stress; empty is the normal case.
    P::new("stress", ""),
    P::new(
        "syslog_name",
        "${multi_instance_name?{$multi_instance_name}:{postfix}}",
    ),
    P::new("tlsproxy_service_name", "tlsproxy"),
];

/// The option whose key is `key`.
pub(crate) fn option(key: &str) -> Option<&'static ConfigOption> {
    OPTIONS.iter().find(|option| option.key == key)
}

/// The Postfix parameter called `name` (its current name), whether an option stands for it
/// or not.
pub(crate) fn postfix_parameter(name: &str) -> Option<&'static PostfixParameter> {
    OPTIONS
        .iter()
        .filter_map(|option| option.postfix.as_ref())
        .chain(POSTFIX_ONLY)
        .find(|parameter| parameter.name == name)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, path::Path};

    use serde::{
        Deserialize, Deserializer,
        de::{self, Visitor},
    };

    use super::*;
    use crate::config::Config;

    /// `postconf -d | grep postscreen` on Debian 12 (Postfix 3.7.11), and the general
    /// parameters its defaults name, as the reference (§2.14) has them.
    const POSTCONF_D: &str = "\
postscreen_access_list = permit_mynetworks
postscreen_allowlist_interfaces = ${postscreen_whitelist_interfaces?{$postscreen_whitelist_interfaces}:{static:all}}
postscreen_bare_newline_action = ignore
postscreen_bare_newline_enable = no
postscreen_bare_newline_ttl = 30d
postscreen_cache_cleanup_interval = 12h
postscreen_cache_map = btree:$data_directory/postscreen_cache
postscreen_cache_retention_time = 7d
postscreen_client_connection_count_limit = $smtpd_client_connection_count_limit
postscreen_command_count_limit = 20
postscreen_command_filter =
postscreen_command_time_limit = ${stress?{10}:{300}}s
postscreen_denylist_action = ${postscreen_blacklist_action?{$postscreen_blacklist_action}:{ignore}}
postscreen_disable_vrfy_command = $disable_vrfy_command
postscreen_discard_ehlo_keyword_address_maps = $smtpd_discard_ehlo_keyword_address_maps
postscreen_discard_ehlo_keywords = $smtpd_discard_ehlo_keywords
postscreen_dnsbl_action = ignore
postscreen_dnsbl_allowlist_threshold = ${postscreen_dnsbl_whitelist_threshold?{$postscreen_dnsbl_whitelist_threshold}:{0}}
postscreen_dnsbl_max_ttl = ${postscreen_dnsbl_ttl?{$postscreen_dnsbl_ttl}:{1}}h
postscreen_dnsbl_min_ttl = 60s
postscreen_dnsbl_reply_map =
postscreen_dnsbl_sites =
postscreen_dnsbl_threshold = 1
postscreen_dnsbl_timeout = 10s
postscreen_enforce_tls = $smtpd_enforce_tls
postscreen_expansion_filter = $smtpd_expansion_filter
postscreen_forbidden_commands = $smtpd_forbidden_commands
postscreen_greet_action = ignore
postscreen_greet_banner = $smtpd_banner
postscreen_greet_ttl = 1d
postscreen_greet_wait = ${stress?{2}:{6}}s
postscreen_helo_required = $smtpd_helo_required
postscreen_non_smtp_command_action = drop
postscreen_non_smtp_command_enable = no
postscreen_non_smtp_command_ttl = 30d
postscreen_pipelining_action = enforce
postscreen_pipelining_enable = no
postscreen_pipelining_ttl = 30d
postscreen_post_queue_limit = $default_process_limit
postscreen_pre_queue_limit = $default_process_limit
postscreen_reject_footer = $smtpd_reject_footer
postscreen_reject_footer_maps = $smtpd_reject_footer_maps
postscreen_tls_security_level = $smtpd_tls_security_level
postscreen_upstream_proxy_protocol =
postscreen_upstream_proxy_timeout = 5s
postscreen_use_tls = $smtpd_use_tls
postscreen_watchdog_timeout = 10s
default_process_limit = 100
smtpd_client_connection_count_limit = 50
smtpd_banner = $myhostname ESMTP $mail_name
line_length_limit = 2048
smtpd_forbidden_commands = CONNECT GET POST regexp:{{/^[^A-Z]/ Bogus}}
dnsblog_service_name = dnsblog
tlsproxy_service_name = tlsproxy
smtpd_service_name = smtpd
soft_bounce = no
";

    /// The postscreen parameters of Postfix 3.12 that 3.7 does not have.
    const POSTFIX_3_12: &[&str] = &[
        "postscreen_starttls_timeout",
        "postscreen_tls_cert_file",
        "postscreen_tls_key_file",
    ];

    /// The names of `Config`'s fields, as its derived `Deserialize` hands them to the
    /// deserializer.
    fn config_fields() -> &'static [&'static str] {
        struct FieldNames<'a>(&'a mut &'static [&'static str]);

        impl<'de> Deserializer<'de> for FieldNames<'_> {
            type Error = de::value::Error;

            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("Config is a struct"))
            }

            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(de::Error::custom("only the field names are wanted"))
            }

            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
                enum identifier ignored_any
            }
        }

        let mut fields: &'static [&'static str] = &[];
        let _ = Config::deserialize(FieldNames(&mut fields));
        fields
    }

    #[test]
    fn every_field_of_config_is_an_option_of_the_table() {
        let fields = config_fields();
        assert!(fields.len() > 50, "{fields:?}");
        let keys: Vec<&str> = OPTIONS.iter().map(|option| option.key).collect();
        assert_eq!(
            keys, fields,
            "the table lists Config's fields in Config's order"
        );
    }

    #[test]
    fn the_tables_defaults_are_config_default() {
        let file: String = OPTIONS
            .iter()
            .filter_map(|option| Some(format!("{} = {}\n", option.key, option.default?)))
            .collect();
        let config = Config::parse(Path::new("defaults.toml"), &file)
            .unwrap_or_else(|e| panic!("{e}\n{file}"));
        assert_eq!(config, Config::default(), "{file}");
        // The two the table cannot write in TOML.
        let unwritten: Vec<&str> = OPTIONS
            .iter()
            .filter(|option| option.default.is_none())
            .map(|option| option.key)
            .collect();
        assert_eq!(unwritten, ["myhostname", "kernel_dnsbl_threshold"]);
        assert_eq!(Config::default().kernel_dnsbl_threshold, None);
    }

    #[test]
    fn postfix_defaults_are_what_postconf_d_prints() {
        for line in POSTCONF_D.lines() {
            let (name, default) = line.split_once(" =").unwrap();
            let parameter = postfix_parameter(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(parameter.default, Some(default.trim_start()), "{name}");
        }
        let shown: BTreeSet<&str> = POSTCONF_D
            .lines()
            .map(|line| line.split_once(" =").unwrap().0)
            .collect();
        let postscreen = OPTIONS
            .iter()
            .filter_map(|option| option.postfix.as_ref())
            .chain(POSTFIX_ONLY)
            .filter(|parameter| parameter.name.starts_with("postscreen_"));
        for parameter in postscreen {
            assert!(
                shown.contains(parameter.name) || POSTFIX_3_12.contains(&parameter.name),
                "{} is not a parameter of Postfix 3.7",
                parameter.name
            );
        }
    }

    #[test]
    fn every_name_is_in_the_table_once() {
        let mut keys = BTreeSet::new();
        assert!(OPTIONS.iter().all(|option| keys.insert(option.key)));
        let mut names = BTreeSet::new();
        let parameters = OPTIONS
            .iter()
            .filter_map(|option| option.postfix.as_ref())
            .chain(POSTFIX_ONLY);
        for parameter in parameters {
            assert!(names.insert(parameter.name), "{}", parameter.name);
            if let Some(old) = parameter.old_name {
                assert!(names.insert(old), "{old}");
            }
        }
        assert_eq!(option("greet_wait").unwrap().key, "greet_wait");
        assert_eq!(option("postscreen_greet_wait").map(|o| o.key), None);
        assert_eq!(
            postfix_parameter("postscreen_greet_wait").unwrap().default,
            Some("${stress?{2}:{6}}s")
        );
        assert_eq!(postfix_parameter("postscreen_blacklist_action"), None);
    }
}
