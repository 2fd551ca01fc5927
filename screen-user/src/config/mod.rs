//! The daemon's configuration file (TOML).
//!
//! Option names are postscreen's without the `postscreen_` prefix, with postscreen's defaults
//! and value syntax: time values such as `6s` or `1d`, `yes`/`no` as well as `true`/`false`,
//! `$name` references to other options, and the `${stress?{a}:{b}}` form for `greet_wait` and
//! `command_time_limit`. smtp-screen's own options (listening, hand-off, the kernel layer) sit
//! beside them. Each option is documented once, here, next to its field. Its default, and
//! the Postfix parameter postscreen reads for it, are in the table of `parameters.rs`:
//! `Config::default()` is checked against that table, `smtp-screen.example.toml` against
//! `Config::default()`, and `import-postfix` takes its names and Postfix's defaults from it.

pub(crate) mod parameters;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, de};

use crate::{
    access_list,
    dnsbl::DEFAULT_TIMEOUT as DNSBL_TIMEOUT,
    duration,
    handoff::{
        Handoff,
        proxy::BackendProxyProtocol,
        relay::{RelayLimits, RelayMode},
    },
    kernel::{AttachMode, KernelAction},
    limits::StressDuration,
    maillog::LogTarget,
    screen::endpoint::{DEFAULT_UPSTREAM_PROXY_NETWORKS, UpstreamProxyProtocol},
    smtpd::{DEFAULT_COMMAND_COUNT_LIMIT, ForbiddenCommand, line::DEFAULT_LINE_LENGTH_LIMIT},
    test_state::TestAction,
};

/// A configuration file that cannot be used, with the place of the mistake.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The most connections the kernel relay may be sized for: two sockets each, and each map
/// entry is kernel memory.
pub(crate) const RELAY_MAX_CONNECTIONS_LIMIT: u32 = 1_000_000;
/// `dnsbl_lookup_limit`'s default: `pre_queue_limit`'s 100 clients, ten lists each.
pub(crate) const DNSBL_LOOKUP_LIMIT_DEFAULT: u32 = 1_000;
/// The most `dnsbl_lookup_limit` accepts: a lookup holds a task and a socket.
pub(crate) const DNSBL_LOOKUP_LIMIT_MAX: u32 = 100_000;
/// `engine_session_time_limit`'s range: a second at least, a day at most.
pub(crate) const ENGINE_SESSION_TIME_LIMIT_MIN: Duration = Duration::from_secs(1);
pub(crate) const ENGINE_SESSION_TIME_LIMIT_MAX: Duration = Duration::from_secs(86_400);
/// `relay_idle_timeout`'s range: a second at least (a relay that closes idle connections at
/// once relays nothing), a day at most (a connection idle for a day is gone).
pub(crate) const RELAY_IDLE_TIMEOUT_MIN: Duration = Duration::from_secs(1);
pub(crate) const RELAY_IDLE_TIMEOUT_MAX: Duration = Duration::from_secs(86_400);

/// The daemon's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    // --- Listening, hand-off, logging (smtp-screen's own) ---
    /// Addresses the daemon accepts SMTP connections on (IPv6 sockets are IPv6-only).
    pub(crate) listen: Vec<SocketAddr>,
    /// How passed clients reach the real MTA: `proxy`.
    pub(crate) handoff: Handoff,
    /// Address of the real MTA that passed clients are relayed to (`handoff = "proxy"`).
    pub(crate) backend: SocketAddr,
    /// Postfix's smtpd `pass` service socket (`handoff = "postfix"`).
    pub(crate) postfix_pass_socket: PathBuf,
    /// PROXY protocol header sent to the backend first, so it sees the client's real
    /// address: `none`, `v1` or `v2`.
    pub(crate) backend_proxy_protocol: BackendProxyProtocol,
    /// Who relays the bytes between a handed-off client and the backend: `auto` (the kernel
    /// when it can, else userspace), `kernel` or `userspace`.
    pub(crate) relay: RelayMode,
    /// How many connections both relays hold at once (the kernel relay is sized to it); while
    /// that many are relayed, new clients get postscreen's `All server ports are busy`.
    #[serde(deserialize_with = "positive")]
    pub(crate) relay_max_connections: u32,
    /// A handed-off connection on which no byte moved either way for this long is closed
    /// (the relay's `smtpd_timeout`).
    #[serde(deserialize_with = "time_value")]
    pub(crate) relay_idle_timeout: Duration,
    /// How long the backend may take to begin its greeting to a handed-off client; past it
    /// the client gets postscreen's 421 (1s to 1h).
    #[serde(deserialize_with = "time_value")]
    pub(crate) backend_greeting_timeout: Duration,
    /// Directory for the temporary allowlist database.
    pub(crate) state_dir: PathBuf,
    /// Where log lines go: `stderr` or `syslog`.
    pub(crate) log_to: LogTarget,
    /// Syslog identity; `postfix/postscreen` keeps existing log parsers working.
    pub(crate) syslog_name: String,
    /// The syslog daemon's socket (`log_to = "syslog"`); the log reconnects to it after the
    /// syslog daemon restarts.
    pub(crate) syslog_socket: PathBuf,
    /// After the sockets and BPF objects are open, the daemon runs as this user, with its
    /// groups; the account must exist (the default, `smtp-screen`, is a system account of its
    /// own) and must not be root.
    pub(crate) user: String,

    // --- postscreen's options ---
    /// The server's host name, used in replies (`$myhostname`).
    #[serde(deserialize_with = "non_empty")]
    pub(crate) myhostname: String,
    /// The text of the `220` greeting (`$smtpd_banner`).
    pub(crate) smtpd_banner: String,
    /// Networks `permit_mynetworks` allows, in Postfix syntax.
    pub(crate) mynetworks: String,
    /// Permanent allow/deny list: `permit_mynetworks`, `permit`, `reject`, `dunno`,
    /// `cidr:/path` (postscreen_access_list).
    pub(crate) access_list: String,
    /// What happens to a client the access list rejects: `ignore`, `enforce`, `drop`.
    pub(crate) denylist_action: TestAction,
    /// Text of the `220-` teaser sent before the greet wait; empty disables the pregreet test.
    pub(crate) greet_banner: String,
    /// How long to wait for a client that talks before its turn.
    #[serde(deserialize_with = "stress_time_value")]
    pub(crate) greet_wait: StressDuration,
    /// What happens to a client that talks before its turn.
    pub(crate) greet_action: TestAction,
    /// How long a passed pregreet test is remembered.
    #[serde(deserialize_with = "time_value")]
    pub(crate) greet_ttl: Duration,
    /// How long an expired allowlist record is kept so a returning client is not "new".
    #[serde(deserialize_with = "time_value")]
    pub(crate) cache_retention_time: Duration,
    /// How often expired allowlist records are removed; 0 disables the cleanup.
    #[serde(deserialize_with = "time_value")]
    pub(crate) cache_cleanup_interval: Duration,
    /// Commands allowed per session in the dummy SMTP engine (1 to 10,000).
    #[serde(deserialize_with = "command_count_limit")]
    pub(crate) command_count_limit: u32,
    /// Time allowed to send one whole command line.
    #[serde(deserialize_with = "stress_time_value")]
    pub(crate) command_time_limit: StressDuration,
    /// Time allowed for a whole dummy-engine session, the STARTTLS handshake included; then
    /// the client gets postscreen's timeout reply. postscreen allows `command_count_limit`
    /// times `command_time_limit` (100 minutes by default); a real MTA needs seconds.
    #[serde(deserialize_with = "time_value")]
    pub(crate) engine_session_time_limit: Duration,
    /// Simultaneous connections allowed from one client address; 0 means no limit (0 to
    /// 1,000,000).
    #[serde(deserialize_with = "client_connection_count_limit")]
    pub(crate) client_connection_count_limit: u32,
    /// Connections allowed in screening at once (also sets the stress thresholds; 10 to
    /// 1,000,000).
    #[serde(deserialize_with = "pre_queue_limit")]
    pub(crate) pre_queue_limit: u32,
    /// Connections allowed between passing and being taken over by the backend (5 to
    /// 1,000,000).
    #[serde(deserialize_with = "post_queue_limit")]
    pub(crate) post_queue_limit: u32,
    /// `haproxy` when a load balancer sends a PROXY header first; empty otherwise.
    #[serde(deserialize_with = "upstream_proxy")]
    pub(crate) upstream_proxy_protocol: UpstreamProxyProtocol,
    /// Time allowed for that header.
    #[serde(deserialize_with = "time_value")]
    pub(crate) upstream_proxy_timeout: Duration,
    /// The load balancers allowed to send that header, as an address list (`mynetworks`
    /// syntax); a connection from any other address is refused with `421` (smtp-screen's own).
    /// The default, `static:all`, is postscreen's behaviour: anyone who reaches the port can
    /// claim any client address, `mynetworks` included.
    pub(crate) upstream_proxy_networks: String,
    /// Local addresses where clients may earn the temporary allowlist (`static:all`: all).
    pub(crate) allowlist_interfaces: String,
    /// Text appended to 4xx and 5xx replies.
    pub(crate) reject_footer: String,
    /// Longest command line accepted, in bytes (512 to 65,536: every connection in the
    /// engine may hold one).
    #[serde(deserialize_with = "line_length_limit")]
    pub(crate) line_length_limit: u32,
    /// Turn every 5xx reply into 4xx, for testing a new configuration safely.
    #[serde(deserialize_with = "yes_no")]
    pub(crate) soft_bounce: bool,
    /// The dummy engine requires HELO or EHLO before MAIL and ETRN.
    #[serde(deserialize_with = "yes_no")]
    pub(crate) helo_required: bool,
    /// The dummy engine refuses VRFY with 502 and does not announce it.
    #[serde(deserialize_with = "yes_no")]
    pub(crate) disable_vrfy_command: bool,

    // --- DNSBL and DNSWL scoring ---
    /// `domain[=filter][*weight]` entries, comma or space separated; empty disables the test.
    pub(crate) dnsbl_sites: String,
    /// A client whose score reaches this fails the DNSBL test (-1,000,000 to 1,000,000, as
    /// every score).
    #[serde(deserialize_with = "score")]
    pub(crate) dnsbl_threshold: i32,
    /// What happens to a client that fails the DNSBL test.
    pub(crate) dnsbl_action: TestAction,
    /// A client at or below this score (when negative) is allowlisted by DNSWL: it skips the
    /// greet wait and every other test until the DNS TTL.
    #[serde(deserialize_with = "score")]
    pub(crate) dnsbl_allowlist_threshold: i32,
    /// Time allowed for the DNSBL answers.
    #[serde(deserialize_with = "time_value")]
    pub(crate) dnsbl_timeout: Duration,
    /// The most DNSBL lookups in flight at once (one per client and list); a new client
    /// beyond it is scored as if every list failed, with a warning.
    #[serde(deserialize_with = "positive")]
    pub(crate) dnsbl_lookup_limit: u32,
    /// Shortest time a DNSBL pass is remembered, whatever the DNS TTL.
    #[serde(deserialize_with = "time_value")]
    pub(crate) dnsbl_min_ttl: Duration,
    /// Longest time a DNSBL pass is remembered.
    #[serde(deserialize_with = "time_value")]
    pub(crate) dnsbl_max_ttl: Duration,
    /// The name shown in replies for each list domain (hides keyed query domains).
    pub(crate) dnsbl_reply_map: std::collections::BTreeMap<String, String>,
    /// DNS servers to ask instead of the host's resolver configuration.
    pub(crate) dns_servers: Vec<SocketAddr>,
    /// A DNSBL score at or above this denies the client in the kernel on first contact
    /// (beyond postscreen; unset: never).
    #[serde(deserialize_with = "some_score")]
    pub(crate) kernel_dnsbl_threshold: Option<i32>,

    // --- Deep protocol tests (after the greeting) ---
    /// Fail clients that send commands before the reply to the previous one.
    #[serde(deserialize_with = "yes_no")]
    pub(crate) pipelining_enable: bool,
    pub(crate) pipelining_action: TestAction,
    #[serde(deserialize_with = "time_value")]
    pub(crate) pipelining_ttl: Duration,
    /// Fail clients that send header lines, HTTP or other non-SMTP commands.
    #[serde(deserialize_with = "yes_no")]
    pub(crate) non_smtp_command_enable: bool,
    pub(crate) non_smtp_command_action: TestAction,
    #[serde(deserialize_with = "time_value")]
    pub(crate) non_smtp_command_ttl: Duration,
    /// Commands that count as non-SMTP besides `Word:` header labels: command words, and
    /// postscreen's `regexp:{{/^[^A-Z]/ Bogus}}` for commands that do not start with a letter.
    pub(crate) forbidden_commands: Vec<String>,
    /// Fail clients that end lines with a bare LF.
    #[serde(deserialize_with = "yes_no")]
    pub(crate) bare_newline_enable: bool,
    pub(crate) bare_newline_action: TestAction,
    #[serde(deserialize_with = "time_value")]
    pub(crate) bare_newline_ttl: Duration,
    /// Clients allowlisted by DNSWL score skip the deep tests (and their 450 at RCPT).
    #[serde(deserialize_with = "yes_no")]
    pub(crate) deep_tests_skip_dnswl: bool,
    /// Certificate (PEM, with its chain) for STARTTLS in the dummy engine; empty: no STARTTLS.
    pub(crate) tls_cert_file: String,
    /// Private key (PEM) for `tls_cert_file`.
    pub(crate) tls_key_file: String,

    // --- The kernel layer (smtp-screen's own) ---
    /// Interfaces the XDP SYN screen is attached to. Empty: no kernel screening.
    pub(crate) interfaces: Vec<String>,
    /// `native` (in the driver, fastest) or `generic` (any interface). Never guessed.
    pub(crate) xdp_mode: AttachMode,
    /// Destination ports whose SYNs XDP screens (at most 8).
    #[serde(deserialize_with = "ports")]
    pub(crate) protected_ports: Vec<u16>,
    /// `drop` (silent) or `rst` (refuse at once) for SYNs from denied sources.
    pub(crate) kernel_action: KernelAction,
    /// Prefix length that IPv6 dynamic deny entries cover (one customer is usually a /64; at
    /// most a /48, one site).
    #[serde(deserialize_with = "v6_prefix")]
    pub(crate) deny_v6_prefix: u32,
    /// How often expired dynamic deny entries are removed from the kernel maps.
    #[serde(deserialize_with = "time_value")]
    pub(crate) deny_sweep_interval: Duration,
    /// A client that fails again within this window is denied in the kernel.
    #[serde(deserialize_with = "time_value")]
    pub(crate) deny_window: Duration,
    /// How long a kernel deny entry lasts; 0 turns the kernel deny policy off.
    #[serde(deserialize_with = "time_value")]
    pub(crate) deny_ttl: Duration,
    /// The most new kernel deny entries a minute. Past it the kernel policy pauses (SMTP
    /// answers go on as postscreen's) until the rate falls: a fault that makes everyone fail
    /// (a broken list, a load balancer's address) cannot deny thousands of hosts in a minute
    /// (1 to 1,000,000).
    #[serde(deserialize_with = "kernel_deny_rate_limit")]
    pub(crate) kernel_deny_rate_limit: u32,
}

impl Default for Config {
    /// Typed values here; the tests hold them to the table of defaults in `parameters.rs`.
    fn default() -> Self {
        Self {
            listen: vec![
                SocketAddr::from(([0, 0, 0, 0], 25)),
                SocketAddr::from(([0u16; 8], 25)),
            ],
            handoff: Handoff::Proxy,
            backend: SocketAddr::from(([127, 0, 0, 1], 10025)),
            postfix_pass_socket: PathBuf::from(crate::paths::DEFAULT_POSTFIX_PASS_SOCKET),
            backend_proxy_protocol: BackendProxyProtocol::None,
            relay: RelayMode::Auto,
            relay_max_connections: 10_000,
            relay_idle_timeout: RelayLimits::DEFAULT.idle,
            backend_greeting_timeout: Duration::from_secs(10),
            state_dir: PathBuf::from(crate::paths::DEFAULT_STATE_DIR),
            log_to: LogTarget::Stderr,
            syslog_name: "smtp-screen".into(),
            syslog_socket: PathBuf::from(crate::paths::SYSLOG_SOCKET),
            user: crate::privileges::DEFAULT_USER.into(),
            myhostname: system_hostname(),
            smtpd_banner: "$myhostname ESMTP".into(),
            mynetworks: "127.0.0.0/8 [::1]/128".into(),
            access_list: access_list::DEFAULT_ACCESS_LIST.into(),
            denylist_action: TestAction::Ignore,
            greet_banner: "$smtpd_banner".into(),
            greet_wait: StressDuration {
                normal: Duration::from_secs(6),
                stress: Duration::from_secs(2),
            },
            greet_action: TestAction::Ignore,
            greet_ttl: Duration::from_secs(86_400),
            cache_retention_time: Duration::from_secs(7 * 86_400),
            cache_cleanup_interval: Duration::from_secs(12 * 3_600),
            command_count_limit: DEFAULT_COMMAND_COUNT_LIMIT,
            command_time_limit: StressDuration {
                normal: Duration::from_secs(300),
                stress: Duration::from_secs(10),
            },
            engine_session_time_limit: Duration::from_secs(300),
            client_connection_count_limit: 50,
            pre_queue_limit: 100,
            post_queue_limit: 100,
            upstream_proxy_protocol: UpstreamProxyProtocol::None,
            upstream_proxy_timeout: Duration::from_secs(5),
            upstream_proxy_networks: DEFAULT_UPSTREAM_PROXY_NETWORKS.into(),
            allowlist_interfaces: access_list::DEFAULT_ALLOWLIST_INTERFACES.into(),
            reject_footer: String::new(),
            line_length_limit: DEFAULT_LINE_LENGTH_LIMIT as u32,
            soft_bounce: false,
            helo_required: false,
            disable_vrfy_command: false,
            dnsbl_sites: String::new(),
            dnsbl_threshold: 1,
            dnsbl_action: TestAction::Ignore,
            dnsbl_allowlist_threshold: 0,
            dnsbl_timeout: DNSBL_TIMEOUT,
            dnsbl_lookup_limit: DNSBL_LOOKUP_LIMIT_DEFAULT,
            dnsbl_min_ttl: Duration::from_secs(60),
            dnsbl_max_ttl: Duration::from_secs(3_600),
            dnsbl_reply_map: Default::default(),
            dns_servers: Vec::new(),
            kernel_dnsbl_threshold: None,
            pipelining_enable: false,
            pipelining_action: TestAction::Enforce,
            pipelining_ttl: Duration::from_secs(30 * 86_400),
            non_smtp_command_enable: false,
            non_smtp_command_action: TestAction::Drop,
            non_smtp_command_ttl: Duration::from_secs(30 * 86_400),
            forbidden_commands: ForbiddenCommand::defaults()
                .iter()
                .map(ToString::to_string)
                .collect(),
            bare_newline_enable: false,
            bare_newline_action: TestAction::Ignore,
            bare_newline_ttl: Duration::from_secs(30 * 86_400),
            deep_tests_skip_dnswl: true,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            interfaces: Vec::new(),
            xdp_mode: AttachMode::Native,
            protected_ports: vec![screen_common::ScreenConfig::SMTP_PORT],
            kernel_action: KernelAction::Drop,
            deny_v6_prefix: screen_common::ScreenConfig::DEFAULT_V6_PREFIX_LEN,
            deny_sweep_interval: Duration::from_secs(60),
            deny_window: Duration::from_secs(600),
            deny_ttl: Duration::from_secs(3_600),
            kernel_deny_rate_limit: 300,
        }
    }
}

/// The host name, as Postfix's `myhostname` default takes it (`gethostname`).
fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// A time value or a whole number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum TimeText {
    Text(String),
    Seconds(u64),
}

fn time_value<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match TimeText::deserialize(d)? {
        TimeText::Text(text) => duration::parse(&text).map_err(de::Error::custom),
        TimeText::Seconds(secs) => duration::parse(&secs.to_string()).map_err(de::Error::custom),
    }
}

fn stress_time_value<'de, D: Deserializer<'de>>(d: D) -> Result<StressDuration, D::Error> {
    match TimeText::deserialize(d)? {
        TimeText::Text(text) => parse_stress_duration(&text).map_err(de::Error::custom),
        // Through the parser, so that the ten-year cap holds for a bare number too.
        TimeText::Seconds(secs) => duration::parse(&secs.to_string())
            .map(StressDuration::fixed)
            .map_err(de::Error::custom),
    }
}

/// Parses `6s`, or `${stress?{2}:{6}}s` / `${stress?2:6}s` (stress value first, then the
/// normal one, then an optional unit that applies to both).
pub(crate) fn parse_stress_duration(text: &str) -> Result<StressDuration, String> {
    let text = text.trim();
    let Some(rest) = text.strip_prefix("${stress?") else {
        return duration::parse(text)
            .map(StressDuration::fixed)
            .map_err(|e| e.to_string());
    };
    let bad =
        || format!("invalid stress-dependent value {text:?} (expected ${{stress?{{2}}:{{6}}}}s)");
    let close = rest.rfind('}').ok_or_else(bad)?;
    let (body, unit) = (&rest[..close], &rest[close + 1..]);
    let (stress, normal) = body.split_once(':').ok_or_else(bad)?;
    let strip = |v: &str| {
        let v = v.trim();
        v.strip_prefix('{')
            .and_then(|v| v.strip_suffix('}'))
            .unwrap_or(v)
            .trim()
            .to_string()
    };
    let stress = duration::parse(&format!("{}{unit}", strip(stress))).map_err(|e| e.to_string())?;
    let normal = duration::parse(&format!("{}{unit}", strip(normal))).map_err(|e| e.to_string())?;
    Ok(StressDuration { normal, stress })
}

fn yes_no<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum YesNo {
        Bool(bool),
        Text(String),
    }
    match YesNo::deserialize(d)? {
        YesNo::Bool(b) => Ok(b),
        YesNo::Text(t) => match t.to_ascii_lowercase().as_str() {
            "yes" | "true" => Ok(true),
            "no" | "false" => Ok(false),
            _ => Err(de::Error::custom(format!(
                "expected yes or no, found {t:?}"
            ))),
        },
    }
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    Ok(text)
}

/// An integer option's range, both ends included. Each is documented beside its option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IntRange {
    pub(crate) min: i64,
    pub(crate) max: i64,
}

/// postscreen's own minimum is 1; past 10,000 commands a session is no longer a test.
pub(crate) const COMMAND_COUNT_LIMIT_RANGE: IntRange = IntRange {
    min: 1,
    max: 10_000,
};
pub(crate) const CLIENT_CONNECTION_COUNT_LIMIT_RANGE: IntRange = IntRange {
    min: 0,
    max: 1_000_000,
};
/// postscreen enforces a minimum of 10 (`postscreen.c`); the maximum keeps the stress
/// thresholds (nine tenths of it) far from overflow, and is more descriptors than a host has.
pub(crate) const PRE_QUEUE_LIMIT_RANGE: IntRange = IntRange {
    min: 10,
    max: 1_000_000,
};
/// postscreen enforces a minimum of 5 (`postscreen.c`).
pub(crate) const POST_QUEUE_LIMIT_RANGE: IntRange = IntRange {
    min: 5,
    max: 1_000_000,
};
/// RFC 5321 §4.5.3.1.4: a command line is at least 512 octets; every connection in the
/// engine may buffer one, so it stays small.
pub(crate) const LINE_LENGTH_LIMIT_RANGE: IntRange = IntRange {
    min: 512,
    max: 65_536,
};
/// DNSBL scores and thresholds: far beyond any sum of weights, far from `i32` overflow.
pub(crate) const SCORE_RANGE: IntRange = IntRange {
    min: -1_000_000,
    max: 1_000_000,
};
/// At most the IPv4 dynamic deny map's size in a minute.
pub(crate) const KERNEL_DENY_RATE_LIMIT_RANGE: IntRange = IntRange {
    min: 1,
    max: 1_000_000,
};

/// An integer within `range`; a value outside it, or not an integer, is refused with the
/// range in the message.
fn in_range<'de, D, T>(d: D, range: IntRange) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    let IntRange { min, max } = range;
    let value = i64::deserialize(d)?;
    let problem = if value < min {
        "below the minimum"
    } else if value > max {
        "above the maximum"
    } else {
        return T::try_from(value)
            .map_err(|_| de::Error::custom(format!("{value} is out of range")));
    };
    let bound = if value < min { min } else { max };
    Err(de::Error::custom(format!(
        "{value} is {problem} of {bound} (the range is {min} to {max})"
    )))
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(
        d,
        IntRange {
            min: 1,
            max: u32::MAX.into(),
        },
    )
}

fn command_count_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, COMMAND_COUNT_LIMIT_RANGE)
}

fn client_connection_count_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, CLIENT_CONNECTION_COUNT_LIMIT_RANGE)
}

fn pre_queue_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, PRE_QUEUE_LIMIT_RANGE)
}

fn post_queue_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, POST_QUEUE_LIMIT_RANGE)
}

fn line_length_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, LINE_LENGTH_LIMIT_RANGE)
}

fn score<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    in_range(d, SCORE_RANGE)
}

fn some_score<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    score(d).map(Some)
}

fn kernel_deny_rate_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, KERNEL_DENY_RATE_LIMIT_RANGE)
}

fn upstream_proxy<'de, D: Deserializer<'de>>(d: D) -> Result<UpstreamProxyProtocol, D::Error> {
    let text = String::deserialize(d)?;
    match text.trim() {
        "" => Ok(UpstreamProxyProtocol::None),
        "haproxy" => Ok(UpstreamProxyProtocol::Haproxy),
        other => Err(de::Error::custom(format!(
            "unsupported upstream proxy protocol {other:?} (only \"haproxy\" or empty)"
        ))),
    }
}

fn ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    let ports = Vec::<u16>::deserialize(d)?;
    check_ports(&ports).map_err(de::Error::custom)?;
    Ok(ports)
}

/// Ports must be 1..=65535, at most [`screen_common::MAX_PORTS`], at least one.
pub(crate) fn check_ports(ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() {
        return Err("at least one port must be protected".into());
    }
    if ports.len() > screen_common::MAX_PORTS {
        return Err(format!(
            "{} ports given; XDP protects at most {}",
            ports.len(),
            screen_common::MAX_PORTS
        ));
    }
    if ports.contains(&0) {
        return Err("port 0 is not a port".into());
    }
    Ok(())
}

fn v6_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let len = u32::deserialize(d)?;
    check_v6_prefix(len).map_err(de::Error::custom)?;
    Ok(len)
}

/// IPv6 dynamic deny prefixes from /16 (a whole provider) to /128 (one address).
pub(crate) fn check_v6_prefix(len: u32) -> Result<(), String> {
    if !(MIN_V6_DENY_PREFIX..=128).contains(&len) {
        return Err(format!(
            "IPv6 deny prefix /{len} is outside /{MIN_V6_DENY_PREFIX}../128 (a shorter prefix \
             would deny every customer of a provider for one bot)"
        ));
    }
    Ok(())
}

/// The widest IPv6 deny: a /48 is one site, the most one end customer is given (RFC 6177); a
/// shorter prefix spans other customers of the provider, whom one bot must not cost their
/// mail.
pub(crate) const MIN_V6_DENY_PREFIX: u32 = 48;

/// Replaces `$name` and `${name}` references to the string options Postfix admins refer to
/// in banners and footers. Unknown names are left as they are.
pub(crate) fn expand(text: &str, config: &Config) -> String {
    let lookup = |name: &str| -> Option<String> {
        match name {
            "myhostname" => Some(config.myhostname.clone()),
            "smtpd_banner" => Some(expand_once(&config.smtpd_banner, config)),
            "mail_name" => Some("smtp-screen".into()),
            _ => None,
        }
    };
    substitute(text, &lookup)
}

fn expand_once(text: &str, config: &Config) -> String {
    substitute(text, &|name: &str| match name {
        "myhostname" => Some(config.myhostname.clone()),
        "mail_name" => Some("smtp-screen".into()),
        _ => None,
    })
}

fn substitute(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, consumed) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match (consumed, lookup(name)) {
            (c, Some(value)) if c > 0 => {
                out.push_str(&value);
                rest = &after[consumed..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

impl Config {
    /// Reads and checks a configuration file.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses configuration text; `path` only names it in errors.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| line_at(text, span.start)).unwrap_or(1);
            let message = match option_at(text, line) {
                Some(key) => format!("{key}: {}", e.message()),
                None => e.message().to_string(),
            };
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                message,
            }
        })?;
        config
            .check()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_of_key(text, key),
                message,
            })?;
        Ok(config)
    }

    /// Checks that concern several options at once; returns the option to blame.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.listen.is_empty() {
            return Err(("listen", "at least one listen address is needed".into()));
        }
        if self.listen.contains(&self.backend) {
            return Err((
                "backend",
                format!(
                    "backend {} is one of the listen addresses (a loop)",
                    self.backend
                ),
            ));
        }
        if self.dnsbl_min_ttl > self.dnsbl_max_ttl {
            return Err((
                "dnsbl_min_ttl",
                "dnsbl_min_ttl is longer than dnsbl_max_ttl".into(),
            ));
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err((
                if self.tls_cert_file.is_empty() {
                    "tls_key_file"
                } else {
                    "tls_cert_file"
                },
                "tls_cert_file and tls_key_file go together".into(),
            ));
        }
        if self.relay_max_connections > RELAY_MAX_CONNECTIONS_LIMIT {
            return Err((
                "relay_max_connections",
                format!("relay_max_connections is at most {RELAY_MAX_CONNECTIONS_LIMIT}"),
            ));
        }
        if self.dnsbl_lookup_limit > DNSBL_LOOKUP_LIMIT_MAX {
            return Err((
                "dnsbl_lookup_limit",
                format!("dnsbl_lookup_limit is at most {DNSBL_LOOKUP_LIMIT_MAX}"),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600))
            .contains(&self.backend_greeting_timeout)
        {
            return Err((
                "backend_greeting_timeout",
                "backend_greeting_timeout is between 1s and 3600s".into(),
            ));
        }
        if !(RELAY_IDLE_TIMEOUT_MIN..=RELAY_IDLE_TIMEOUT_MAX).contains(&self.relay_idle_timeout) {
            return Err((
                "relay_idle_timeout",
                format!(
                    "relay_idle_timeout is between {}s and {}s",
                    RELAY_IDLE_TIMEOUT_MIN.as_secs(),
                    RELAY_IDLE_TIMEOUT_MAX.as_secs()
                ),
            ));
        }
        let session = ENGINE_SESSION_TIME_LIMIT_MIN..=ENGINE_SESSION_TIME_LIMIT_MAX;
        if !session.contains(&self.engine_session_time_limit) {
            return Err((
                "engine_session_time_limit",
                format!(
                    "engine_session_time_limit is between {}s and {}s",
                    ENGINE_SESSION_TIME_LIMIT_MIN.as_secs(),
                    ENGINE_SESSION_TIME_LIMIT_MAX.as_secs()
                ),
            ));
        }
        if self.syslog_name.trim().is_empty() {
            return Err(("syslog_name", "must not be empty".into()));
        }
        // A reply line ends at CR LF: one inside a text would let the configuration end a
        // reply early and start another.
        let reply_texts = [
            ("myhostname", &self.myhostname),
            ("smtpd_banner", &self.smtpd_banner),
            ("greet_banner", &self.greet_banner),
            ("reject_footer", &self.reject_footer),
        ];
        let replies = reply_texts.into_iter().chain(
            self.dnsbl_reply_map
                .values()
                .map(|text| ("dnsbl_reply_map", text)),
        );
        for (key, text) in replies {
            if text.contains(['\r', '\n']) {
                return Err((
                    key,
                    format!("{key} must not contain CR or LF (it is sent in a reply line)"),
                ));
            }
        }
        Ok(())
    }

    /// The `220-` teaser text; empty when the pregreet test is off.
    pub(crate) fn greet_banner(&self) -> String {
        expand(&self.greet_banner, self)
    }

    /// The `220` greeting text of the dummy engine.
    pub(crate) fn smtpd_banner(&self) -> String {
        expand(&self.smtpd_banner, self)
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The option set on line `line` (1-based), if that line sets one.
fn option_at(text: &str, line: usize) -> Option<&'static str> {
    let (key, _) = text.lines().nth(line.checked_sub(1)?)?.split_once('=')?;
    parameters::option(key.trim()).map(|option| option.key)
}

/// The line where `key` is set, or 1 when it is not set (a default is at fault).
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests;
