//! What the importer's tests share: table files held in memory, a Debian master.cf, every
//! postscreen parameter set to something other than its default, and an import that must
//! load.

use std::{collections::HashMap, path::Path, time::Duration};

use super::{Finding, Import, MasterCf, Postconf, import};
use crate::{access_list::TableFiles, cidr_table::CidrError, config::Config};

/// Table files held in memory.
#[derive(Default)]
pub(super) struct Files(HashMap<String, String>);

impl Files {
    pub(super) fn with(entries: &[(&str, &str)]) -> Self {
        Self(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl TableFiles for Files {
    fn read(&self, path: &str) -> Result<String, CidrError> {
        self.0.get(path).cloned().ok_or_else(|| CidrError::Read {
            path: path.into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }
}

pub(super) fn postconf(text: &str) -> Postconf {
    Postconf::parse("postconf -n", text.as_bytes()).unwrap()
}

/// Imports and checks that the result loads.
pub(super) fn import_with(text: &str, master: Option<&str>, files: &Files) -> (Import, Config) {
    let master = master.map(|m| MasterCf::parse("master.cf", m.as_bytes()).unwrap());
    let import = import(&postconf(text), master.as_ref(), files);
    let config = Config::parse(Path::new("imported.toml"), &import.toml)
        .unwrap_or_else(|e| panic!("{e}\n{}", import.toml));
    (import, config)
}

pub(super) fn import_text(text: &str) -> (Import, Config) {
    import_with(text, None, &Files::default())
}

pub(super) fn skipped<'a>(import: &'a Import, parameter: &str) -> Vec<&'a Finding> {
    import
        .untranslated
        .iter()
        .filter(|f| f.parameter == parameter)
        .collect()
}

pub(super) fn caveat<'a>(import: &'a Import, parameter: &str) -> Vec<&'a Finding> {
    import
        .caveats
        .iter()
        .filter(|f| f.parameter == parameter)
        .collect()
}

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(super) const DEBIAN_MASTER_CF: &str = "\
# Postfix master process configuration file.
# ==========================================================================
# service type  private unpriv  chroot  wakeup  maxproc command + args
# ==========================================================================
#smtp      inet  n       -       y       -       -       smtpd
smtp      inet  n       -       y       -       1       postscreen
smtpd     pass  -       -       y       -       -       smtpd
dnsblog   unix  -       -       y       -       0       dnsblog
tlsproxy  unix  -       -       y       -       0       tlsproxy
submission inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
pickup    unix  n       -       y       60      1       pickup
";

/// Every postscreen parameter of Postfix 3.7 (reference §2.14) set to something other
/// than its default.
pub(super) const EVERY_PARAMETER: &str = "\
myhostname = mx.example.test
postscreen_access_list = permit_mynetworks, cidr:/etc/postfix/postscreen_access.cidr
postscreen_allowlist_interfaces = !198.51.100.2 static:all
postscreen_bare_newline_action = enforce
postscreen_bare_newline_enable = yes
postscreen_bare_newline_ttl = 20d
postscreen_cache_cleanup_interval = 6h
postscreen_cache_map = proxy:btree:$data_directory/postscreen_cache
postscreen_cache_retention_time = 3d
postscreen_client_connection_count_limit = 7
postscreen_command_count_limit = 9
postscreen_command_filter = pcre:/etc/postfix/command_filter
postscreen_command_time_limit = ${stress?{4}:{40}}s
postscreen_denylist_action = drop
postscreen_disable_vrfy_command = yes
postscreen_discard_ehlo_keyword_address_maps = cidr:/etc/postfix/esmtp_access
postscreen_discard_ehlo_keywords = silent-discard, dsn
postscreen_dnsbl_action = enforce
postscreen_dnsbl_allowlist_threshold = -2
postscreen_dnsbl_max_ttl = 2h
postscreen_dnsbl_min_ttl = 2m
postscreen_dnsbl_reply_map = texthash:/etc/postfix/dnsbl_reply
postscreen_dnsbl_sites = zen.example=127.0.0.[2..11]*3, bl.example*2 wl.example=127.0.[0..255].[1..3]*-3
postscreen_dnsbl_threshold = 3
postscreen_dnsbl_timeout = 7s
postscreen_enforce_tls = no
postscreen_expansion_filter = abcdefghijklmnopqrstuvwxyz
postscreen_forbidden_commands = CONNECT GET POST PUT regexp:{{/^[^A-Z]/ Bogus}}
postscreen_greet_action = enforce
postscreen_greet_banner = $myhostname pregreet check
postscreen_greet_ttl = 2d
postscreen_greet_wait = ${stress?{1}:{3}}s
postscreen_helo_required = yes
postscreen_non_smtp_command_action = enforce
postscreen_non_smtp_command_enable = yes
postscreen_non_smtp_command_ttl = 10d
postscreen_pipelining_action = drop
postscreen_pipelining_enable = yes
postscreen_pipelining_ttl = 15d
postscreen_post_queue_limit = 30
postscreen_pre_queue_limit = 40
postscreen_reject_footer = \\c For help, call 555-0101 about $client_address at $myhostname
postscreen_reject_footer_maps = cidr:/etc/postfix/footers
postscreen_tls_security_level = may
postscreen_upstream_proxy_protocol = haproxy
postscreen_upstream_proxy_timeout = 8s
postscreen_use_tls = yes
postscreen_watchdog_timeout = 20s
smtpd_tls_cert_file = /etc/ssl/certs/mx.pem
smtpd_tls_key_file = /etc/ssl/private/mx.key
";
