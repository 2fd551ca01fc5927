use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/smtp-screen.toml"), text)
}

#[test]
fn empty_file_gives_postscreen_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.greet_wait.normal, Duration::from_secs(6));
    assert_eq!(config.greet_wait.stress, Duration::from_secs(2));
    assert_eq!(config.command_time_limit.normal, Duration::from_secs(300));
    assert_eq!(config.command_time_limit.stress, Duration::from_secs(10));
    assert_eq!(config.greet_ttl, Duration::from_secs(86_400));
    assert_eq!(config.cache_retention_time, Duration::from_secs(7 * 86_400));
    assert_eq!(
        config.cache_cleanup_interval,
        Duration::from_secs(12 * 3_600)
    );
    assert_eq!(config.command_count_limit, 20);
    assert_eq!(config.client_connection_count_limit, 50);
    assert_eq!(config.pre_queue_limit, 100);
    assert_eq!(config.post_queue_limit, 100);
    assert_eq!(config.upstream_proxy_timeout, Duration::from_secs(5));
    assert_eq!(config.access_list, "permit_mynetworks");
    assert_eq!(config.denylist_action, TestAction::Ignore);
    assert_eq!(config.greet_action, TestAction::Ignore);
    assert_eq!(config.allowlist_interfaces, "static:all");
    assert_eq!(config.line_length_limit, 2048);
    assert!(!config.soft_bounce);
    assert_eq!(config.dnsbl_threshold, 1);
    assert_eq!(config.dnsbl_action, TestAction::Ignore);
    assert_eq!(config.dnsbl_allowlist_threshold, 0);
    assert_eq!(config.dnsbl_timeout, Duration::from_secs(10));
    assert_eq!(config.dnsbl_min_ttl, Duration::from_secs(60));
    assert_eq!(config.dnsbl_max_ttl, Duration::from_secs(3600));
    assert!(
        !config.pipelining_enable && !config.non_smtp_command_enable && !config.bare_newline_enable
    );
    assert_eq!(config.pipelining_action, TestAction::Enforce);
    assert_eq!(config.non_smtp_command_action, TestAction::Drop);
    assert_eq!(config.bare_newline_action, TestAction::Ignore);
    assert_eq!(config.pipelining_ttl, Duration::from_secs(30 * 86_400));
    assert_eq!(
        config.forbidden_commands,
        ["CONNECT", "GET", "POST", "regexp:{{/^[^A-Z]/ Bogus}}"]
    );
    assert_eq!(config.deny_window, Duration::from_secs(600));
    assert_eq!(config.deny_ttl, Duration::from_secs(3600));
}

#[test]
fn reads_postscreen_values() {
    let config = parse(
        r#"
            listen = ["127.0.0.1:2525", "[::1]:2525"]
            backend = "127.0.0.1:10026"
            backend_proxy_protocol = "v2"
            myhostname = "mx.example.test"
            greet_wait = "${stress?{1}:{3}}s"
            command_time_limit = "${stress?2:5}s"
            greet_action = "enforce"
            denylist_action = "drop"
            greet_ttl = "2d"
            soft_bounce = "yes"
            upstream_proxy_protocol = "haproxy"
            client_connection_count_limit = 2
            pre_queue_limit = 10
            post_queue_limit = 10
            deny_ttl = 0
            interfaces = ["eth0", "eth1"]
            xdp_mode = "generic"
            protected_ports = [25, 587]
            kernel_action = "rst"
            deny_v6_prefix = 56
            deny_sweep_interval = "5m"
            "#,
    )
    .unwrap();
    assert_eq!(config.listen.len(), 2);
    assert_eq!(config.backend, "127.0.0.1:10026".parse().unwrap());
    assert_eq!(config.backend_proxy_protocol, BackendProxyProtocol::V2);
    assert_eq!(config.greet_wait.get(false), Duration::from_secs(3));
    assert_eq!(config.greet_wait.get(true), Duration::from_secs(1));
    assert_eq!(config.command_time_limit.get(false), Duration::from_secs(5));
    assert_eq!(config.command_time_limit.get(true), Duration::from_secs(2));
    assert_eq!(config.greet_action, TestAction::Enforce);
    assert_eq!(config.denylist_action, TestAction::Drop);
    assert_eq!(config.greet_ttl, Duration::from_secs(2 * 86_400));
    assert!(config.soft_bounce);
    assert_eq!(
        config.upstream_proxy_protocol,
        UpstreamProxyProtocol::Haproxy
    );
    assert_eq!(config.deny_ttl, Duration::ZERO);
    assert_eq!(config.interfaces, ["eth0", "eth1"]);
    assert_eq!(config.xdp_mode, AttachMode::Generic);
    assert_eq!(config.protected_ports, [25, 587]);
    assert_eq!(config.kernel_action, KernelAction::Rst);
    assert_eq!(config.deny_v6_prefix, 56);
    assert_eq!(config.deny_sweep_interval, Duration::from_secs(300));
}

#[test]
fn expands_banners_like_postfix() {
    let config = parse("myhostname = \"mx.example.test\"\n").unwrap();
    assert_eq!(config.smtpd_banner(), "mx.example.test ESMTP");
    assert_eq!(config.greet_banner(), "mx.example.test ESMTP");
    let config = parse(
        "myhostname = \"mx.example.test\"\nsmtpd_banner = \"${myhostname} ready $unknown\"\ngreet_banner = \"\"\n",
    )
    .unwrap();
    assert_eq!(config.smtpd_banner(), "mx.example.test ready $unknown");
    assert_eq!(
        config.greet_banner(),
        "",
        "empty disables the pregreet test"
    );
}

#[test]
fn stress_values_parse_in_every_form() {
    let v = parse_stress_duration("${stress?{2}:{6}}s").unwrap();
    assert_eq!((v.stress.as_secs(), v.normal.as_secs()), (2, 6));
    let v = parse_stress_duration("${stress?10:300}s").unwrap();
    assert_eq!((v.stress.as_secs(), v.normal.as_secs()), (10, 300));
    let v = parse_stress_duration("${stress?{1}:{2}}m").unwrap();
    assert_eq!((v.stress.as_secs(), v.normal.as_secs()), (60, 120));
    let v = parse_stress_duration("7s").unwrap();
    assert_eq!((v.stress.as_secs(), v.normal.as_secs()), (7, 7));
    for bad in [
        "${stress?{2}}s",
        "${stress?{x}:{6}}s",
        "${stress?{2}:{6}s",
        "soon",
    ] {
        assert!(parse_stress_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn errors_name_file_line_and_problem() {
    let cases = [
        (
            "interfaces = []\nbogus_option = 1\n",
            2,
            "unknown field `bogus_option`",
        ),
        (
            "\n\ndeny_sweep_interval = \"5 minutes\"\n",
            3,
            "invalid time value",
        ),
        ("xdp_mode = \"fast\"\n", 1, "unknown variant `fast`"),
        ("protected_ports = []\n", 1, "at least one port"),
        ("protected_ports = [1,2,3,4,5,6,7,8,9]\n", 1, "at most 8"),
        ("protected_ports = [70000]\n", 1, ""),
        ("deny_v6_prefix = 8\n", 1, "outside /48../128"),
        ("deny_v6_prefix = 32\n", 1, "outside /48../128"),
        (
            "kernel_action = \"reject\"\n",
            1,
            "unknown variant `reject`",
        ),
        ("interfaces = [\n", 2, ""),
        (
            "\ngreet_action = \"reject\"\n",
            2,
            "unknown variant `reject`",
        ),
        (
            "greet_wait = \"${stress?{2}}s\"\n",
            1,
            "invalid stress-dependent value",
        ),
        ("pre_queue_limit = 5\n", 1, "below the minimum of 10"),
        ("post_queue_limit = 1\n", 1, "below the minimum of 5"),
        ("command_count_limit = 0\n", 1, "below the minimum of 1"),
        ("line_length_limit = 100\n", 1, "below the minimum of 512"),
        ("soft_bounce = \"maybe\"\n", 1, "expected yes or no"),
        (
            "upstream_proxy_protocol = \"nginx\"\n",
            1,
            "unsupported upstream proxy",
        ),
        ("listen = [\"nonsense\"]\n", 1, ""),
        ("myhostname = \"\"\n", 1, "must not be empty"),
        (
            "\n\nlisten = [\"127.0.0.1:25\"]\nbackend = \"127.0.0.1:25\"\n",
            4,
            "a loop",
        ),
        ("\nlisten = []\n", 2, "at least one listen address"),
        ("dnsbl_min_ttl = \"2h\"\n", 1, "longer than dnsbl_max_ttl"),
        ("\ntls_cert_file = \"/etc/cert.pem\"\n", 2, "go together"),
        ("pipelining_enable = \"perhaps\"\n", 1, "expected yes or no"),
        ("dnsbl_reply_map = \"x\"\n", 1, ""),
        (
            "\nrelay = \"ebpf\"\n",
            2,
            "expected one of `auto`, `kernel`, `userspace`",
        ),
        ("relay_max_connections = 0\n", 1, ""),
        ("dnsbl_lookup_limit = 0\n", 1, "below the minimum of 1"),
        (
            "\ndnsbl_lookup_limit = 100001\n",
            2,
            "dnsbl_lookup_limit is at most 100000",
        ),
        ("relay_max_connections = 2000000\n", 1, "at most 1000000"),
        (
            "\nrelay_idle_timeout = \"0s\"\n",
            2,
            "between 1s and 86400s",
        ),
        ("relay_idle_timeout = \"2d\"\n", 1, "between 1s and 86400s"),
        (
            "backend_greeting_timeout = \"0s\"\n",
            1,
            "between 1s and 3600s",
        ),
        (
            "\nengine_session_time_limit = \"0s\"\n",
            2,
            "engine_session_time_limit is between 1s and 86400s",
        ),
        (
            "engine_session_time_limit = \"2d\"\n",
            1,
            "between 1s and 86400s",
        ),
    ];
    for (text, line, what) in cases {
        let err = parse(text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("/etc/smtp-screen.toml:{line}: ")),
            "{text:?}: {msg}"
        );
        assert!(msg.contains(what), "{text:?}: {msg}");
    }
}

#[test]
fn example_config_matches_the_defaults_it_documents() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../smtp-screen.example.toml");
    let config = Config::load(&path).unwrap();
    let defaults = Config::default();
    // What the example changes so that it runs on any machine.
    assert_eq!(config.listen.len(), 2);
    assert_eq!(config.interfaces, ["lo"]);
    assert_eq!(config.xdp_mode, AttachMode::Generic);
    assert_eq!(config.protected_ports, [2525]);
    // Everything else it shows is the default.
    let same = Config {
        listen: defaults.listen.clone(),
        interfaces: defaults.interfaces.clone(),
        xdp_mode: defaults.xdp_mode,
        protected_ports: defaults.protected_ports.clone(),
        myhostname: defaults.myhostname.clone(),
        ..config
    };
    assert_eq!(same, defaults);
}

#[test]
fn every_integer_option_is_refused_outside_its_range_with_file_line_option_and_range() {
    let cases = [
        ("command_count_limit", COMMAND_COUNT_LIMIT_RANGE),
        (
            "client_connection_count_limit",
            CLIENT_CONNECTION_COUNT_LIMIT_RANGE,
        ),
        ("pre_queue_limit", PRE_QUEUE_LIMIT_RANGE),
        ("post_queue_limit", POST_QUEUE_LIMIT_RANGE),
        ("line_length_limit", LINE_LENGTH_LIMIT_RANGE),
        ("dnsbl_threshold", SCORE_RANGE),
        ("dnsbl_allowlist_threshold", SCORE_RANGE),
        ("kernel_dnsbl_threshold", SCORE_RANGE),
        ("kernel_deny_rate_limit", KERNEL_DENY_RATE_LIMIT_RANGE),
    ];
    for (key, IntRange { min, max }) in cases {
        for (value, bound, side) in [
            (min - 1, min, "below the minimum"),
            (max + 1, max, "above the maximum"),
            (i64::MAX, max, "above the maximum"),
        ] {
            let text = format!("# the limits\n{key} = {value}\n");
            let msg = parse(&text).unwrap_err().to_string();
            assert_eq!(
                msg,
                format!(
                    "/etc/smtp-screen.toml:2: {key}: {value} is {side} of {bound} (the range \
                     is {min} to {max})"
                )
            );
        }
        for value in [min, max] {
            parse(&format!("{key} = {value}\n")).unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
        }
    }
}

#[test]
fn the_largest_pre_queue_limit_sets_stress_thresholds_without_overflow() {
    let limit = u32::try_from(PRE_QUEUE_LIMIT_RANGE.max).unwrap();
    let config = parse(&format!("pre_queue_limit = {limit}\n")).unwrap();
    assert_eq!(config.pre_queue_limit, limit);
    // The stress thresholds are nine and seven tenths of it.
    crate::limits::Limits::new(0, config.pre_queue_limit, config.post_queue_limit, 0);
}

#[test]
fn stress_values_given_as_integers_keep_the_ten_year_cap() {
    for key in ["greet_wait", "command_time_limit"] {
        let text = format!("{key} = {}\n", i64::MAX);
        let msg = parse(&text).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("/etc/smtp-screen.toml:1: {key}: ")),
            "{msg}"
        );
        assert!(msg.contains("longer than ten years"), "{msg}");
        let ten_years = 10 * 365 * 86_400u64;
        let config = parse(&format!("{key} = {ten_years}\n")).unwrap();
        let value = if key == "greet_wait" {
            config.greet_wait
        } else {
            config.command_time_limit
        };
        assert_eq!(value.normal, Duration::from_secs(ten_years));
        assert!(parse(&format!("{key} = {}\n", ten_years + 1)).is_err());
    }
}

#[test]
fn reply_texts_refuse_cr_and_lf() {
    for key in [
        "myhostname",
        "smtpd_banner",
        "greet_banner",
        "reject_footer",
    ] {
        for bad in ["a\\r\\n250 injected", "a\\nb", "a\\rb"] {
            let text = format!("\n{key} = \"{bad}\"\n");
            let msg = parse(&text).unwrap_err().to_string();
            assert_eq!(
                msg,
                format!(
                    "/etc/smtp-screen.toml:2: {key} must not contain CR or LF (it is sent in a \
                     reply line)"
                )
            );
        }
    }
    let msg = parse("[dnsbl_reply_map]\n\"bl.example\" = \"x\\r\\n\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("dnsbl_reply_map must not contain CR or LF"),
        "{msg}"
    );
    // A tab is not a line break.
    parse("reject_footer = \"see\\thttps://example.org\"\n").unwrap();
}
