use std::{collections::BTreeMap, net::SocketAddr};

use crate::{
    config::{
        Config,
        parameters::{OPTIONS, POSTFIX_ONLY},
    },
    handoff::Handoff,
    import_postfix::fixtures::{
        EVERY_PARAMETER, Files, caveat, import_text, import_with, secs, skipped,
    },
    screen::endpoint::UpstreamProxyProtocol,
    test_state::TestAction,
};

#[test]
fn translates_every_postscreen_parameter() {
    let files = Files::with(&[
        (
            "/etc/postfix/postscreen_access.cidr",
            "192.0.2.0/24 reject\n",
        ),
        (
            "/etc/postfix/dnsbl_reply",
            "zen.example   zen.spamhaus.example\n",
        ),
    ]);
    let (import, c) = import_with(EVERY_PARAMETER, None, &files);
    assert_eq!(c.myhostname, "mx.example.test");
    assert_eq!(
        c.access_list,
        "permit_mynetworks, cidr:/etc/postfix/postscreen_access.cidr"
    );
    assert_eq!(c.allowlist_interfaces, "!198.51.100.2 static:all");
    assert_eq!(c.bare_newline_action, TestAction::Enforce);
    assert!(c.bare_newline_enable);
    assert_eq!(c.bare_newline_ttl, secs(20 * 86_400));
    assert_eq!(c.cache_cleanup_interval, secs(6 * 3_600));
    assert_eq!(c.cache_retention_time, secs(3 * 86_400));
    assert_eq!(c.client_connection_count_limit, 7);
    assert_eq!(c.command_count_limit, 9);
    assert_eq!(
        (c.command_time_limit.normal, c.command_time_limit.stress),
        (secs(40), secs(4))
    );
    assert_eq!(c.denylist_action, TestAction::Drop);
    assert_eq!(c.dnsbl_action, TestAction::Enforce);
    assert_eq!(c.dnsbl_allowlist_threshold, -2);
    assert_eq!(c.dnsbl_max_ttl, secs(7_200));
    assert_eq!(c.dnsbl_min_ttl, secs(120));
    assert_eq!(
        c.dnsbl_reply_map,
        BTreeMap::from([("zen.example".into(), "zen.spamhaus.example".into())])
    );
    assert_eq!(
        c.dnsbl_sites,
        "zen.example=127.0.0.[2..11]*3, bl.example*2, wl.example=127.0.[0..255].[1..3]*-3"
    );
    assert_eq!(c.dnsbl_threshold, 3);
    assert_eq!(c.dnsbl_timeout, secs(7));
    assert_eq!(
        c.forbidden_commands,
        [
            "CONNECT",
            "GET",
            "POST",
            "PUT",
            "regexp:{{/^[^A-Z]/ Bogus}}"
        ]
    );
    assert_eq!(c.greet_action, TestAction::Enforce);
    assert_eq!(c.greet_banner, "$myhostname pregreet check");
    assert_eq!(c.greet_ttl, secs(2 * 86_400));
    assert_eq!(
        (c.greet_wait.normal, c.greet_wait.stress),
        (secs(3), secs(1))
    );
    assert_eq!(c.non_smtp_command_action, TestAction::Enforce);
    assert!(c.non_smtp_command_enable);
    assert_eq!(c.non_smtp_command_ttl, secs(10 * 86_400));
    assert_eq!(c.pipelining_action, TestAction::Drop);
    assert!(c.pipelining_enable);
    assert_eq!(c.pipelining_ttl, secs(15 * 86_400));
    assert_eq!(c.post_queue_limit, 30);
    assert_eq!(c.pre_queue_limit, 40);
    // $myhostname is set, so it is expanded; the footer macro stays.
    assert_eq!(
        c.reject_footer,
        "\\c For help, call 555-0101 about ${client_address} at mx.example.test"
    );
    assert_eq!(c.upstream_proxy_protocol, UpstreamProxyProtocol::Haproxy);
    assert_eq!(c.upstream_proxy_timeout, secs(8));
    assert_eq!(c.tls_cert_file, "/etc/ssl/certs/mx.pem");
    assert_eq!(c.tls_key_file, "/etc/ssl/private/mx.key");
    assert!(c.helo_required);
    assert!(c.disable_vrfy_command);
    // What smtp-screen has no option for, each with its reason.
    let expect = [
        ("postscreen_cache_map", "own database"),
        ("postscreen_command_filter", "does not rewrite"),
        (
            "postscreen_discard_ehlo_keyword_address_maps",
            "EHLO keywords",
        ),
        ("postscreen_discard_ehlo_keywords", "EHLO keywords"),
        ("postscreen_expansion_filter", "need no filter"),
        ("postscreen_reject_footer_maps", "no per-client tables"),
        ("postscreen_watchdog_timeout", "no watchdog"),
    ];
    for (parameter, reason) in expect {
        let found = skipped(&import, parameter);
        assert_eq!(found.len(), 1, "{parameter}: {:?}", import.untranslated);
        assert!(found[0].reason.contains(reason), "{}", found[0]);
        assert!(
            import.toml.contains(&format!("#   {parameter} = ")),
            "{parameter} in the comment block"
        );
    }
    assert_eq!(
        import.untranslated.len(),
        expect.len(),
        "{:#?}",
        import.untranslated
    );
    // postscreen_enforce_tls = no and postscreen_use_tls = yes are dealt with by the
    // security level; nothing is reported about them.
    assert!(
        import
            .untranslated
            .iter()
            .chain(&import.caveats)
            .all(|f| !f.parameter.contains("use_tls") && !f.parameter.contains("enforce_tls"))
    );
    // Every translated option names its source.
    assert!(
        import
            .toml
            .contains("# postscreen_greet_wait = ${stress?{1}:{3}}s\n")
    );
    assert!(
        import
            .toml
            .contains("greet_wait = \"${stress?{1}:{3}}s\"\n")
    );
}

#[test]
fn defaults_alone_write_no_postscreen_option() {
    let every_default = "\
postscreen_access_list = permit_mynetworks
postscreen_greet_wait = ${stress?{2}:{6}}s
postscreen_command_time_limit = ${stress?{10}:{300}}s
postscreen_dnsbl_threshold = 1
";
    let (import, c) = import_text(every_default);
    let defaults = Config::default();
    assert_eq!(c.greet_wait, defaults.greet_wait);
    assert_eq!(c.command_time_limit, defaults.command_time_limit);
    assert_eq!(c.dnsbl_threshold, 1);
    assert_eq!(c.access_list, "permit_mynetworks");
    // Not set at all: not written.
    let (import_empty, _) = import_text("");
    for key in [
        "greet_wait",
        "pre_queue_limit",
        "forbidden_commands",
        "reject_footer",
    ] {
        assert!(
            !import_empty.toml.contains(&format!("\n{key} = ")),
            "{key}:\n{}",
            import_empty.toml
        );
    }
    assert!(import.toml.contains("\ngreet_wait = "));
    // smtpd_banner is always written: Postfix's names Postfix, smtp-screen's default
    // does not, and the client sees both greetings.
    assert!(
        import_empty
            .toml
            .contains("smtpd_banner = \"$myhostname ESMTP Postfix\"\n")
    );
}

#[test]
fn translates_the_names_before_postfix_3_6() {
    let (import, c) = import_text(
        "postscreen_blacklist_action = enforce\n\
         postscreen_whitelist_interfaces = 192.0.2.25 static:all\n\
         postscreen_dnsbl_whitelist_threshold = -1\n\
         postscreen_dnsbl_ttl = 2h\n",
    );
    assert_eq!(c.denylist_action, TestAction::Enforce);
    assert_eq!(c.allowlist_interfaces, "192.0.2.25 static:all");
    assert_eq!(c.dnsbl_allowlist_threshold, -1);
    assert_eq!(c.dnsbl_max_ttl, secs(7_200));
    assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
    assert!(import.toml.contains(
        "(postscreen_blacklist_action is the name before Postfix 3.6 of \
         postscreen_denylist_action)"
    ));
    // Both names: the new one wins, as Postfix's default expression makes it.
    let (import, c) =
        import_text("postscreen_blacklist_action = enforce\npostscreen_denylist_action = drop\n");
    assert_eq!(c.denylist_action, TestAction::Drop);
    assert!(
        caveat(&import, "postscreen_blacklist_action")[0]
            .reason
            .contains("wins")
    );
}

#[test]
fn follows_postfix_defaults_that_name_other_parameters() {
    let (import, c) = import_text(
        "default_process_limit = 30\n\
         smtpd_client_connection_count_limit = 4\n\
         smtpd_forbidden_commands = CONNECT GET POST\n\
         smtpd_reject_footer = Contact postmaster@$mydomain\n\
         myhostname = mx.example.org\n\
         soft_bounce = yes\n\
         line_length_limit = 4096\n",
    );
    assert_eq!(c.pre_queue_limit, 30);
    assert_eq!(c.post_queue_limit, 30);
    assert_eq!(c.client_connection_count_limit, 4);
    assert_eq!(c.forbidden_commands, ["CONNECT", "GET", "POST"]);
    assert_eq!(c.reject_footer, "Contact postmaster@example.org");
    assert!(c.soft_bounce);
    assert_eq!(c.line_length_limit, 4096);
    assert!(import.toml.contains(
        "# postscreen_pre_queue_limit = $default_process_limit: Postfix's default, here 30\n"
    ));
    // postscreen_reject_footer wins over smtpd_reject_footer.
    let (_, c) =
        import_text("smtpd_reject_footer = smtpd's\npostscreen_reject_footer = postscreen's\n");
    assert_eq!(c.reject_footer, "postscreen's");
    // A default process limit below postscreen's minimum is reported, not written.
    let (import, c) = import_text("default_process_limit = 8\n");
    assert_eq!(c.pre_queue_limit, 100);
    assert_eq!(c.post_queue_limit, 8);
    let found = skipped(&import, "postscreen_pre_queue_limit");
    assert!(found[0].reason.contains("minimum of 10"), "{}", found[0]);
}

#[test]
fn stress_values() {
    let (import, c) = import_text(
        "postscreen_greet_wait = ${stress?2:8}s\n\
         postscreen_command_time_limit = ${stress?{1}:{2}}m\n\
         postscreen_dnsbl_timeout = ${stress?{3}:{9}}s\n\
         postscreen_greet_ttl = ${stress}x\n",
    );
    assert_eq!(
        (c.greet_wait.normal, c.greet_wait.stress),
        (secs(8), secs(2))
    );
    assert_eq!(
        (c.command_time_limit.normal, c.command_time_limit.stress),
        (secs(120), secs(60))
    );
    assert!(import.toml.contains("greet_wait = \"${stress?2:8}s\""));
    // Elsewhere the normal value is taken, and said so.
    assert_eq!(c.dnsbl_timeout, secs(9));
    assert!(
        caveat(&import, "postscreen_dnsbl_timeout")[0]
            .reason
            .contains("normal value 9s")
    );
    let found = skipped(&import, "postscreen_greet_ttl");
    assert!(
        found[0].reason.contains("invalid time value"),
        "{}",
        found[0]
    );
    let (import, c) = import_text("postscreen_greet_wait = ${stress?{2}}s\n");
    assert_eq!(c.greet_wait, Config::default().greet_wait);
    assert!(
        skipped(&import, "postscreen_greet_wait")[0]
            .reason
            .contains("stress")
    );
}

#[test]
fn bad_values_are_reported_not_written() {
    let (import, c) = import_text(
        "postscreen_greet_action = reject\n\
         postscreen_pipelining_enable = maybe\n\
         postscreen_command_count_limit = 0\n\
         postscreen_dnsbl_threshold = three\n\
         postscreen_client_connection_count_limit = -1\n\
         postscreen_greet_ttl = 1 day\n\
         postscreen_upstream_proxy_protocol = nginx\n\
         line_length_limit = 100\n\
         postscreen_dnsbl_min_ttl = 3h\n\
         myhostname =\n",
    );
    let defaults = Config::default();
    assert_eq!(c.greet_action, defaults.greet_action);
    assert_eq!(c.command_count_limit, 20);
    assert_eq!(c.dnsbl_min_ttl, defaults.dnsbl_min_ttl);
    for (parameter, reason) in [
        (
            "postscreen_greet_action",
            "expected ignore, enforce or drop",
        ),
        ("postscreen_pipelining_enable", "expected yes or no"),
        (
            "postscreen_command_count_limit",
            "below smtp-screen's minimum of 1",
        ),
        ("postscreen_dnsbl_threshold", "not a whole number"),
        (
            "postscreen_client_connection_count_limit",
            "not a whole number",
        ),
        ("postscreen_greet_ttl", "invalid time value"),
        ("postscreen_upstream_proxy_protocol", "only haproxy"),
        ("line_length_limit", "minimum of 512"),
        (
            "postscreen_dnsbl_min_ttl",
            "longer than postscreen_dnsbl_max_ttl",
        ),
        ("myhostname", "empty host name"),
    ] {
        let found = skipped(&import, parameter);
        assert_eq!(found.len(), 1, "{parameter}: {:?}", import.untranslated);
        assert!(found[0].reason.contains(reason), "{}", found[0]);
    }
}

/// Found by the `postfix_import` fuzz target: with `dnsbl_min_ttl` left out, its default
/// (1m) is still longer than a `dnsbl_max_ttl` below it, and the import did not load.
#[test]
fn a_max_ttl_below_the_default_min_ttl_is_left_out_too() {
    let (import, c) = import_text(
        "postscreen_dnsbl_min_ttl = 2m\n\
         postscreen_dnsbl_max_ttl = 24s\n",
    );
    let defaults = Config::default();
    assert_eq!(c.dnsbl_min_ttl, defaults.dnsbl_min_ttl);
    assert_eq!(c.dnsbl_max_ttl, defaults.dnsbl_max_ttl);
    for parameter in ["postscreen_dnsbl_min_ttl", "postscreen_dnsbl_max_ttl"] {
        let found = skipped(&import, parameter);
        assert_eq!(found.len(), 1, "{parameter}: {:?}", import.untranslated);
        assert!(
            found[0]
                .reason
                .contains("longer than postscreen_dnsbl_max_ttl"),
            "{}",
            found[0]
        );
    }
}

#[test]
fn postscreen_service_addresses_and_overrides() {
    let master = "\
127.0.0.1:10025 inet n - n - 1 postscreen
  -o postscreen_upstream_proxy_protocol=haproxy
  -o { postscreen_greet_banner = $myhostname greets }
[::1]:10025 inet n - n - 1 postscreen -o postscreen_greet_action=drop
2525 inet n - n - 1 postscreen
mx.example:25 inet n - n - 1 postscreen
smtpd pass - - n - - smtpd
";
    let (import, c) = import_with(
        "inet_interfaces = 192.0.2.1\npostscreen_upstream_proxy_protocol =\n",
        Some(master),
        &Files::default(),
    );
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(
        c.listen,
        [
            addr("127.0.0.1:10025"),
            addr("[::1]:10025"),
            addr("192.0.2.1:2525")
        ]
    );
    // The first service's -o settings override main.cf.
    assert_eq!(c.upstream_proxy_protocol, UpstreamProxyProtocol::Haproxy);
    assert_eq!(c.greet_banner, "$myhostname greets");
    assert_eq!(c.greet_action, TestAction::Ignore);
    assert_ne!(c.backend, addr("127.0.0.1:10025"));
    let found = skipped(&import, "master.cf");
    assert_eq!(found.len(), 1);
    assert!(found[0].reason.contains("host names are not resolved"));
    assert_eq!(
        caveat(&import, "master.cf").len(),
        3,
        "{:?}",
        import.caveats
    );
    assert!(
        import
            .master_cf_advice
            .contains("-o settings are translated")
    );
}

/// The lab configuration of the reference's Appendix A: main.cf as `postconf -n` prints
/// it (with the lab directory in place of `$LAB`), its master.cf and its tables.
#[test]
fn translates_the_lab_configuration() {
    let main_cf = "\
compatibility_level = 3.6
default_process_limit = 20
inet_interfaces = 127.0.0.1
mynetworks = 127.0.0.2/32
postscreen_access_list = permit_mynetworks, cidr:/srv/lab/etc/psacl.cidr
postscreen_bare_newline_action = enforce
postscreen_bare_newline_enable = yes
postscreen_client_connection_count_limit = 2
postscreen_command_count_limit = 6
postscreen_command_time_limit = ${stress?{2}:{5}}s
postscreen_denylist_action = drop
postscreen_dnsbl_action = enforce
postscreen_dnsbl_allowlist_threshold = -1
postscreen_dnsbl_reply_map = texthash:/srv/lab/etc/dnsbl_reply
postscreen_dnsbl_sites = bl.test=127.0.0.[2..11]*3, bl2.test*1, wl.test=127.0.[0..255].[1..3]*-5
postscreen_dnsbl_threshold = 3
postscreen_greet_action = enforce
postscreen_greet_wait = ${stress?{1}:{3}}s
postscreen_non_smtp_command_enable = yes
postscreen_pipelining_enable = yes
postscreen_post_queue_limit = 10
postscreen_pre_queue_limit = 10
";
    let master_cf = "\
127.0.0.1:10025 inet n - n - 1 postscreen
smtpd     pass  -       -       n       -       -       smtpd
dnsblog   unix  -       -       n       -       0       dnsblog
tlsproxy  unix  -       -       n       -       0       tlsproxy
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
postlog   unix-dgram n  -       n       -       1       postlogd
anvil     unix  -       -       n       -       1       anvil
cleanup   unix  n       -       n       -       0       cleanup
rewrite   unix  -       -       n       -       -       trivial-rewrite
proxymap  unix  -       -       n       -       -       proxymap
";
    let files = Files::with(&[
        (
            "/srv/lab/etc/psacl.cidr",
            "127.0.0.20/32 permit\n127.0.0.21/32 reject\n127.0.0.22/32 dunno\n\
             127.0.0.0/24 dunno\n",
        ),
        ("/srv/lab/etc/dnsbl_reply", "bl.test public-bl.example\n"),
    ]);
    let (import, c) = import_with(main_cf, Some(master_cf), &files);
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(c.listen, [addr("127.0.0.1:10025")]);
    assert_ne!(c.backend, addr("127.0.0.1:10025"));
    assert_eq!(c.mynetworks, "127.0.0.2/32");
    assert_eq!(
        c.access_list,
        "permit_mynetworks, cidr:/srv/lab/etc/psacl.cidr"
    );
    assert_eq!(c.denylist_action, TestAction::Drop);
    assert_eq!(c.greet_action, TestAction::Enforce);
    assert_eq!(
        (c.greet_wait.normal, c.greet_wait.stress),
        (secs(3), secs(1))
    );
    assert_eq!(
        c.dnsbl_sites,
        "bl.test=127.0.0.[2..11]*3, bl2.test*1, wl.test=127.0.[0..255].[1..3]*-5"
    );
    assert_eq!(c.dnsbl_threshold, 3);
    assert_eq!(c.dnsbl_allowlist_threshold, -1);
    assert_eq!(c.dnsbl_action, TestAction::Enforce);
    assert_eq!(
        c.dnsbl_reply_map,
        BTreeMap::from([("bl.test".into(), "public-bl.example".into())])
    );
    assert!(c.pipelining_enable && c.non_smtp_command_enable && c.bare_newline_enable);
    assert_eq!(c.bare_newline_action, TestAction::Enforce);
    assert_eq!(c.command_count_limit, 6);
    assert_eq!(
        (c.command_time_limit.normal, c.command_time_limit.stress),
        (secs(5), secs(2))
    );
    assert_eq!(c.client_connection_count_limit, 2);
    assert_eq!((c.pre_queue_limit, c.post_queue_limit), (10, 10));
    assert_eq!(c.handoff, Handoff::Postfix);
    assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
    assert!(import.caveats.is_empty(), "{:?}", import.caveats);
    let advice = &import.master_cf_advice;
    assert!(advice.contains("line 1: 127.0.0.1:10025 inet n - n - 1 postscreen"));
    assert!(advice.contains("line 2: smtpd pass"));
    assert!(advice.contains("line 3: dnsblog") && advice.contains("line 4: tlsproxy"));
    assert!(!advice.contains("keep tlsproxy"));
}

/// The lab's main.cf lines exactly as the reference prints them: `$LAB` is not a
/// parameter, and main.cf has no end-of-line comments, so the annotations are part of
/// the values; the import says so and still loads.
#[test]
fn the_lab_lines_as_printed() {
    let main_cf = "\
mynetworks = 127.0.0.2/32            # so 127.0.0.x test clients are NOT in mynetworks
postscreen_access_list = permit_mynetworks, cidr:$LAB/etc/psacl.cidr
postscreen_dnsbl_reply_map = texthash:$LAB/etc/dnsbl_reply     # bl.test -> public-bl.example
";
    let (import, c) = import_text(main_cf);
    assert_eq!(c.mynetworks, "127.0.0.2/32");
    assert!(
        caveat(&import, "mynetworks")[0]
            .reason
            .contains("no end-of-line comments")
    );
    assert!(!skipped(&import, "mynetworks").is_empty());
    assert_eq!(c.access_list, "permit_mynetworks");
    assert!(
        skipped(&import, "postscreen_access_list")[0]
            .reason
            .contains("$LAB")
    );
    assert!(
        skipped(&import, "postscreen_dnsbl_reply_map")
            .iter()
            .any(|f| f.reason.contains("$LAB"))
    );
}

/// Every option's Postfix parameter written out with Postfix's default, as `postconf -n`
/// shows a site that set them so: the import comes to smtp-screen's defaults, which are
/// postscreen's.
#[test]
fn postscreen_defaults_import_to_smtp_screen_defaults() {
    let input: String = OPTIONS
        .iter()
        .filter_map(|option| option.postfix)
        .filter_map(|parameter| Some(format!("{} = {}\n", parameter.name, parameter.default?)))
        .collect();
    assert!(input.lines().count() > 40, "{input}");
    let (import, c) = import_text(&input);
    assert!(import.untranslated.is_empty(), "{:?}", import.untranslated);
    let expected = Config {
        // smtp-screen's own options, which the import always sets.
        listen: c.listen.clone(),
        handoff: c.handoff,
        backend: c.backend,
        postfix_pass_socket: c.postfix_pass_socket.clone(),
        state_dir: c.state_dir.clone(),
        log_to: c.log_to,
        syslog_name: c.syslog_name.clone(),
        user: c.user.clone(),
        // Postfix's banner names Postfix.
        smtpd_banner: c.smtpd_banner.clone(),
        ..Config::default()
    };
    assert_eq!(c, expected, "{}", import.toml);
    assert_eq!(c.smtpd_banner, "$myhostname ESMTP Postfix");
}

/// No postscreen parameter of the configuration's table, under its current or its old
/// name, is reported as one the importer does not know.
#[test]
fn every_postscreen_parameter_of_the_table_is_known() {
    let parameters = OPTIONS
        .iter()
        .filter_map(|option| option.postfix.as_ref())
        .chain(POSTFIX_ONLY);
    let mut names = Vec::new();
    for parameter in parameters {
        names.push(parameter.name);
        names.extend(parameter.old_name);
    }
    names.retain(|name| name.starts_with("postscreen_"));
    assert!(names.len() > 50, "{names:?}");
    for name in names {
        let (import, _) = import_text(&format!("{name} = 1\n"));
        assert!(
            import
                .untranslated
                .iter()
                .all(|f| !f.reason.contains("smtp-screen knows")),
            "{name}: {:?}",
            import.untranslated
        );
    }
}
