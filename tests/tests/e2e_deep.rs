//! postscreen's deep protocol tests and STARTTLS end to end: `smtp-screen run` in a server
//! network namespace with all three tests after the greeting enabled (pipelining, non-SMTP
//! command, bare newline with action `enforce`, as in postscreen's lab), a private Postfix
//! behind it where a test hands clients off (with a PROXY v2 header first), and real clients in
//! a client namespace: swaks for whole mail transactions, plaintext and over STARTTLS, and
//! scripted sessions for the bots, whose misbehaviour has to be byte-exact.
//!
//! Every check is on what a client received, word for word, and on the daemon's postscreen
//! log lines: each session's lines (every line naming the client's address and port) are
//! compared in full and in order, so that a missing line, an extra one or one out of place
//! all fail.
//!
//! The cost of the deep tests is the one postscreen has: a new client that passes them is
//! still refused at RCPT with `450 4.3.2` and must come back, from the same address, to be
//! handed to the real MTA as `PASS OLD`. The tests show that, and that nothing short of
//! reaching RCPT cleanly earns the pass. A sender that a DNS allow list vouches for is
//! spared all that (`deep_tests_skip_dnswl`); that list is served by rbldnsd on loopback of the
//! server namespace.
//!
//! The engine's time limits are held the same way: stress mode, entered while a session waits
//! for its next command, shortens that wait (postscreen's `PSC_EFF_CMD_TIME_LIMIT`), and a
//! client that keeps talking is still cut off at `engine_session_time_limit`.
//!
//! The binary is the one cargo built next to this test (`cargo build -p screen-user` first), or
//! the one named in `SMTP_SCREEN_BIN`.
//!
//! The harness is `screen_tests::daemon` and `screen_tests::rbldnsd`; each test sets up its own
//! namespaces, daemon and, when a client is handed off or a list is asked, Postfix and rbldnsd.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use screen_tests::{
    daemon::{
        BACKEND_GREETING, Bed, CLIENT_HELO, Client, DELIVERY_WAIT, Daemon, DaemonConfig,
        ENGINE_GREETING, PROMPT, REPLY_WAIT, Received, SENDER, SMTP_PORT, TEASER, TestCertificate,
        connect_line, expect_backend_log, quoted, rcpt_rejected,
    },
    ensure_packages,
    netns::PinDir,
    postfix::{MAIL_DOMAIN, Postfix},
    rbldnsd::{Dataset, LOCAL_DNS, Rbldnsd, Zone},
    require_root,
};

/// The engine's EHLO reply as postscreen's lab captured it: no PIPELINING (the pipelining
/// test depends on that), no AUTH, and no STARTTLS without a certificate.
const ENGINE_EHLO: [&str; 9] = [
    "250-mx.example.test",
    "250-SIZE 10240000",
    "250-VRFY",
    "250-ETRN",
    "250-ENHANCEDSTATUSCODES",
    "250-8BITMIME",
    "250-DSN",
    "250-SMTPUTF8",
    "250 CHUNKING",
];

/// What a new client that passed every deep test gets at RCPT: come back later.
const DEFERRED: &str = "450 4.3.2 Service currently unavailable";
/// What a client that failed a deep test with action `enforce` gets at RCPT.
const PROTOCOL_ERROR: &str = "550 5.5.1 Protocol error";
/// The non-SMTP command test's `drop` reply, the same words as smtpd's forbidden commands.
const NON_SMTP_DROP: &str = "521 5.7.0 Error: I can break rules, too. Goodbye.";

/// The zone of the DNS allow list.
const DNSWL: &str = "wl.test";

/// The daemon's configuration: the settings every test shares, with all three deep tests on
/// as in postscreen's lab (pipelining `enforce` and non-SMTP `drop` are the defaults; bare
/// newline is `enforce` there).
fn deep_config(bed: &Bed) -> DaemonConfig {
    DaemonConfig::new(bed)
        .set("pipelining_enable", quoted("yes"))
        .set("non_smtp_command_enable", quoted("yes"))
        .set("bare_newline_enable", quoted("yes"))
        .set("bare_newline_action", quoted("enforce"))
}

/// The DNS allow list of [`start_dnswl`] with weight -1: a listed client scores below zero,
/// yet above `dnsbl_allowlist_threshold` (0: off), so it is not allowlisted outright and only
/// `deep_tests_skip_dnswl` decides whether it takes the deep tests.
fn with_dnswl(config: DaemonConfig, server: &Rbldnsd) -> DaemonConfig {
    config
        .set("dnsbl_sites", quoted(format!("{DNSWL}*-1")))
        .set("dns_servers", format!("[{}]", quoted(server.addr())))
}

/// A DNS allow list, `wl.test`, on loopback of the server namespace, listing `listed` as
/// 127.0.0.3 (a DNSWL's usual answer for a known-good sender).
fn start_dnswl(bed: &Bed, listed: IpAddr) -> Rbldnsd {
    let zone = Zone::new(DNSWL, Dataset::Ip4Set)
        .with_test_point()
        .list(listed, Ipv4Addr::new(127, 0, 0, 3));
    Rbldnsd::start(&bed.server, LOCAL_DNS, &[zone]).expect("starting rbldnsd")
}

/// EHLO, MAIL and RCPT one at a time, each after the reply to the last, as a well-behaved
/// client talks; returns the reply to RCPT.
fn clean_transaction(client: &mut Client) -> Vec<String> {
    assert_eq!(client.command(&format!("EHLO {CLIENT_HELO}")), ENGINE_EHLO);
    assert_eq!(
        client.command(&format!("MAIL FROM:<{SENDER}>")),
        ["250 2.1.0 Ok"]
    );
    client.command(&format!("RCPT TO:<user@{MAIL_DOMAIN}>"))
}

/// The engine's EHLO reply with STARTTLS offered.
fn engine_ehlo_with_starttls() -> Vec<String> {
    let mut lines: Vec<String> = ENGINE_EHLO.iter().map(|l| l.to_string()).collect();
    let after_etrn = lines.iter().position(|l| l == "250-ETRN").expect("ETRN") + 1;
    lines.insert(after_etrn, "250-STARTTLS".into());
    lines
}

#[test]
fn a_clean_client_is_deferred_once_then_passed_old_to_postfix() {
    if !require_root("a_clean_client_is_deferred_once_then_passed_old_to_postfix") {
        return;
    }
    ensure_packages(&["postfix", "swaks"]).expect("postfix and swaks");
    let bed = Bed::new("deep-good", &[11]);
    let good = bed.v4(11);
    let postfix = bed.start_backend();
    let pin = PinDir::new("deep-good");
    let config = deep_config(&bed).write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let marker = format!("delivered after the deep tests from {good}");

    // First contact: the engine speaks, never announces PIPELINING, and defers at RCPT.
    let first = bed.swaks_message(good, &marker, &[]);
    first.assert_recipients_refused();
    let mut expected = vec![TEASER.to_string(), ENGINE_GREETING.to_string()];
    expected.extend(ENGINE_EHLO.map(String::from));
    expected.extend([
        "250 2.1.0 Ok".to_string(),
        DEFERRED.to_string(),
        "221 2.0.0 Bye".to_string(),
    ]);
    assert_eq!(first.received(), expected, "{}", first.transcript());
    let tag = daemon.new_session_tag(good, &[]);
    daemon.expect_session(
        &tag,
        &[
            format!("CONNECT from {tag} to [{}]:{SMTP_PORT}", bed.server_v4()),
            rcpt_rejected(&tag, DEFERRED, SENDER, CLIENT_HELO),
            format!("PASS NEW {tag}"),
            format!("DISCONNECT {tag}"),
        ],
    );
    assert!(
        !postfix.log().contains(&format!("[{good}]")),
        "the engine's session reached Postfix:\n{}",
        postfix.log()
    );

    // Back from the same address: straight to Postfix, which takes the message.
    let second = bed.swaks_message(good, &marker, &[]);
    second.assert_success();
    let received = second.received();
    assert_eq!(
        received.first().map(String::as_str),
        Some(BACKEND_GREETING),
        "no teaser for a PASS OLD client:\n{}",
        second.transcript()
    );
    assert!(
        received.iter().any(|line| line == "250-PIPELINING"),
        "the real MTA announces PIPELINING:\n{}",
        second.transcript()
    );
    assert!(
        received
            .iter()
            .any(|line| line.starts_with("250 2.0.0 Ok: queued as ")),
        "{}",
        second.transcript()
    );
    let again = daemon.new_session_tag(good, std::slice::from_ref(&tag));
    let session = daemon.session_after(&again, &format!("PASS OLD {again}"));
    assert_eq!(
        session,
        [
            format!("CONNECT from {again} to [{}]:{SMTP_PORT}", bed.server_v4()),
            format!("PASS OLD {again}"),
        ],
        "{}",
        daemon.log()
    );
    assert!(
        postfix.wait_for_mail(&marker, DELIVERY_WAIT),
        "the message from {good} was not delivered; Postfix log:\n{}",
        postfix.log()
    );
    expect_backend_log(&postfix, &format!("connect from unknown[{good}]"));
}

#[test]
fn a_pipelining_bot_is_logged_and_refused_at_rcpt() {
    if !require_root("a_pipelining_bot_is_logged_and_refused_at_rcpt") {
        return;
    }
    let bed = Bed::new("deep-pipe", &[12]);
    let bot = bed.v4(12);
    let pin = PinDir::new("deep-pipe");
    let config = deep_config(&bed).write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    let mut client = bed.connect(bot);
    client.engine_greeting();
    // EHLO and MAIL in one write, although the server never offered PIPELINING.
    client.send(b"EHLO bot.example\r\nMAIL FROM:<p@example.org>\r\n");
    assert_eq!(client.reply(REPLY_WAIT), ENGINE_EHLO);
    assert_eq!(client.reply(REPLY_WAIT), ["250 2.1.0 Ok"]);
    assert_eq!(
        client.command(&format!("RCPT TO:<user@{MAIL_DOMAIN}>")),
        [PROTOCOL_ERROR]
    );
    let tag = client.tag();
    let connect = connect_line(&bed, &client);
    client.quit();
    daemon.expect_session(
        &tag,
        &[
            connect,
            format!("COMMAND PIPELINING from {tag} after EHLO: MAIL FROM:<p@example.org>\\r\\n"),
            rcpt_rejected(&tag, PROTOCOL_ERROR, "p@example.org", "bot.example"),
            format!("DISCONNECT {tag}"),
        ],
    );

    // Failures are never remembered as passes: the next connection is screened again.
    let mut next = bed.connect(bot);
    assert_eq!(next.line(REPLY_WAIT), TEASER);
}

#[test]
fn non_smtp_commands_are_dropped_with_521() {
    if !require_root("non_smtp_commands_are_dropped_with_521") {
        return;
    }
    let bed = Bed::new("deep-nsmtp", &[13, 23, 33]);
    let pin = PinDir::new("deep-nsmtp");
    let config = deep_config(&bed).write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    // An HTTP request (over IPv6) and an HTTP proxy request as the first command: the log
    // says what came before them, the connection itself (postscreen's "after CONNECT"). The
    // empty line that ends each request is not taken for pipelining: the session is over.
    for (src, request, logged) in [
        (
            bed.v6(13),
            "GET / HTTP/1.0\r\n\r\n",
            "after CONNECT: GET / HTTP/1.0",
        ),
        (
            bed.v4(23),
            "CONNECT mx.example.test:25 HTTP/1.0\r\n\r\n",
            "after CONNECT: CONNECT mx.example.test:25 HTTP/1.0",
        ),
    ] {
        let mut client = bed.connect(src);
        client.engine_greeting();
        client.send(request.as_bytes());
        assert_eq!(client.until_closed(REPLY_WAIT), [NON_SMTP_DROP]);
        let tag = client.tag();
        daemon.expect_session(
            &tag,
            &[
                connect_line(&bed, &client),
                format!("NON-SMTP COMMAND from {tag} {logged}"),
                format!("DISCONNECT {tag}"),
            ],
        );
    }

    // A message header sent as a command, after a proper EHLO: the log names EHLO.
    let mut client = bed.connect(bed.v4(33));
    client.engine_greeting();
    assert_eq!(client.command("EHLO h.example"), ENGINE_EHLO);
    client.send(b"Subject: hello\r\n");
    assert_eq!(client.until_closed(REPLY_WAIT), [NON_SMTP_DROP]);
    let tag = client.tag();
    daemon.expect_session(
        &tag,
        &[
            connect_line(&bed, &client),
            format!("NON-SMTP COMMAND from {tag} after EHLO: Subject: hello"),
            format!("DISCONNECT {tag}"),
        ],
    );
}

#[test]
fn a_bare_newline_is_logged_and_refused_at_rcpt() {
    if !require_root("a_bare_newline_is_logged_and_refused_at_rcpt") {
        return;
    }
    let bed = Bed::new("deep-barelf", &[14]);
    let bot = bed.v6(14);
    let pin = PinDir::new("deep-barelf");
    let config = deep_config(&bed).write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    let mut client = bed.connect(bot);
    client.engine_greeting();
    // The line is still accepted and answered, as smtpd would.
    client.send(b"EHLO b.example\n");
    assert_eq!(client.reply(REPLY_WAIT), ENGINE_EHLO);
    assert_eq!(
        client.command("MAIL FROM:<b@example.org>"),
        ["250 2.1.0 Ok"]
    );
    assert_eq!(
        client.command(&format!("RCPT TO:<user@{MAIL_DOMAIN}>")),
        [PROTOCOL_ERROR]
    );
    let tag = client.tag();
    let connect = connect_line(&bed, &client);
    client.quit();
    daemon.expect_session(
        &tag,
        &[
            connect,
            format!("BARE NEWLINE from {tag} after EHLO b.example"),
            rcpt_rejected(&tag, PROTOCOL_ERROR, "b@example.org", "b.example"),
            format!("DISCONNECT {tag}"),
        ],
    );
}

#[test]
fn starttls_in_the_engine_then_passed_old_to_postfix_over_tls() {
    if !require_root("starttls_in_the_engine_then_passed_old_to_postfix_over_tls") {
        return;
    }
    ensure_packages(&["postfix", "swaks", "libnet-ssleay-perl", "openssl"])
        .expect("postfix, swaks with TLS, openssl");
    let bed = Bed::new("deep-tls", &[71]);
    let client = bed.v4(71);
    let certificate = TestCertificate::create(&bed);
    // The backend offers STARTTLS with the same certificate, so that `swaks --tls` is
    // satisfied by Postfix too once the client is passed; tlsmgr serves smtpd's TLS state.
    let backend = bed
        .backend_config()
        .main_cf("smtpd_tls_security_level", "may")
        .main_cf(
            "smtpd_tls_cert_file",
            &certificate.cert.display().to_string(),
        )
        .main_cf("smtpd_tls_key_file", &certificate.key.display().to_string())
        .main_cf("smtpd_tls_loglevel", "1")
        .master_cf("tlsmgr    unix  -       -       n       1000?   1       tlsmgr");
    let postfix = Postfix::start(&bed.server, &backend).expect("starting the Postfix backend");
    let pin = PinDir::new("deep-tls");
    let config = deep_config(&bed)
        .with_tls(&certificate)
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let marker = format!("delivered over TLS from {client}");

    let first = bed.swaks_message(client, &marker, &["--tls"]);
    first.assert_recipients_refused();
    let mut plaintext = vec![TEASER.to_string(), ENGINE_GREETING.to_string()];
    plaintext.extend(engine_ehlo_with_starttls());
    plaintext.push("220 2.0.0 Ready to start TLS".into());
    assert_eq!(first.received(), plaintext, "{}", first.transcript());
    // Over TLS: no second greeting, and STARTTLS is no longer offered.
    let mut over_tls: Vec<String> = ENGINE_EHLO.map(String::from).to_vec();
    over_tls.extend([
        "250 2.1.0 Ok".to_string(),
        DEFERRED.to_string(),
        "221 2.0.0 Bye".to_string(),
    ]);
    assert_eq!(
        first.received_over_tls(),
        over_tls,
        "{}",
        first.transcript()
    );
    let session = first
        .tls_session()
        .unwrap_or_else(|| panic!("swaks reports no TLS session:\n{}", first.transcript()));
    // swaks' `TLSv1.3:TLS_AES_256_GCM_SHA384:256` is tlsproxy's `TLSv1.3 with cipher
    // TLS_AES_256_GCM_SHA384 (256/256 bits)`: both ends must agree on what was negotiated.
    let (established, bits) = match session.split(':').collect::<Vec<_>>()[..] {
        [protocol, cipher, bits] => (format!("{protocol} with cipher {cipher}"), bits),
        _ => panic!("unexpected TLS session report {session:?}"),
    };
    let tag = daemon.new_session_tag(client, &[]);
    daemon.expect_session(
        &tag,
        &[
            format!("CONNECT from {tag} to [{}]:{SMTP_PORT}", bed.server_v4()),
            format!(
                "Anonymous TLS connection established from {tag}: {established} \
                 ({bits}/{bits} bits)"
            ),
            rcpt_rejected(&tag, DEFERRED, SENDER, CLIENT_HELO),
            format!("PASS NEW {tag}"),
            format!("DISCONNECT {tag}"),
        ],
    );

    // The pass holds for the TLS client too: Postfix greets it at once and does the TLS.
    let second = bed.swaks_message(client, &marker, &["--tls"]);
    second.assert_success();
    let received = second.received();
    assert_eq!(
        received.first().map(String::as_str),
        Some(BACKEND_GREETING),
        "no teaser for a PASS OLD client:\n{}",
        second.transcript()
    );
    assert!(
        received.iter().any(|line| line == "250-STARTTLS"),
        "{}",
        second.transcript()
    );
    assert!(second.tls_session().is_some(), "{}", second.transcript());
    assert!(
        second
            .received_over_tls()
            .iter()
            .any(|line| line.starts_with("250 2.0.0 Ok: queued as ")),
        "{}",
        second.transcript()
    );
    let again = daemon.new_session_tag(client, std::slice::from_ref(&tag));
    let session = daemon.session_after(&again, &format!("PASS OLD {again}"));
    assert_eq!(
        session,
        [
            format!("CONNECT from {again} to [{}]:{SMTP_PORT}", bed.server_v4()),
            format!("PASS OLD {again}"),
        ],
        "{}",
        daemon.log()
    );
    assert!(
        postfix.wait_for_mail(&marker, DELIVERY_WAIT),
        "the message from {client} was not delivered; Postfix log:\n{}",
        postfix.log()
    );
    expect_backend_log(
        &postfix,
        &format!("Anonymous TLS connection established from unknown[{client}]"),
    );
}

#[test]
fn without_a_certificate_starttls_is_neither_offered_nor_accepted() {
    if !require_root("without_a_certificate_starttls_is_neither_offered_nor_accepted") {
        return;
    }
    let bed = Bed::new("deep-notls", &[18]);
    let pin = PinDir::new("deep-notls");
    let config = deep_config(&bed).write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    let mut client = bed.connect(bed.v4(18));
    client.engine_greeting();
    assert_eq!(client.command("EHLO t.example"), ENGINE_EHLO);
    assert_eq!(
        client.command("STARTTLS"),
        ["502 5.5.1 Error: command not implemented"]
    );
    // Still in plaintext, still the same session.
    assert_eq!(client.command("NOOP"), ["250 2.0.0 Ok"]);
    let tag = client.tag();
    let connect = connect_line(&bed, &client);
    client.quit();
    daemon.expect_session(&tag, &[connect, format!("DISCONNECT {tag}")]);
    assert!(
        !daemon.log().contains("TLS connection established"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_client_that_quits_before_rcpt_earns_nothing() {
    if !require_root("a_client_that_quits_before_rcpt_earns_nothing") {
        return;
    }
    let bed = Bed::new("deep-quit", &[19]);
    let quitter = bed.v4(19);
    let pin = PinDir::new("deep-quit");
    let config = deep_config(&bed).write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    let mut client = bed.connect(quitter);
    client.engine_greeting();
    assert_eq!(client.command("EHLO q.example"), ENGINE_EHLO);
    assert_eq!(
        client.command("MAIL FROM:<q@example.org>"),
        ["250 2.1.0 Ok"]
    );
    let tag = client.tag();
    let connect = connect_line(&bed, &client);
    client.quit();
    daemon.expect_session(&tag, &[connect, format!("DISCONNECT {tag}")]);

    // The pregreet pass is remembered, so there is no teaser and no greet wait this time;
    // the deep tests are still due, and so is the 450.
    let mut client = bed.connect(quitter);
    let connected = Instant::now();
    assert_eq!(client.line(REPLY_WAIT), ENGINE_GREETING);
    assert!(
        connected.elapsed() < PROMPT,
        "the greeting took {:?}; only the greet wait is skipped",
        connected.elapsed()
    );
    assert_eq!(clean_transaction(&mut client), [DEFERRED]);
    let tag = client.tag();
    let connect = connect_line(&bed, &client);
    client.quit();
    daemon.expect_session(
        &tag,
        &[
            connect,
            rcpt_rejected(&tag, DEFERRED, SENDER, CLIENT_HELO),
            format!("PASS NEW {tag}"),
            format!("DISCONNECT {tag}"),
        ],
    );
}

#[test]
fn an_allowlist_veto_keeps_a_client_from_ever_passing() {
    if !require_root("an_allowlist_veto_keeps_a_client_from_ever_passing") {
        return;
    }
    let bed = Bed::new("deep-veto", &[20]);
    let vetoed = bed.v4(20);
    let pin = PinDir::new("deep-veto");
    // Clients earn the allowlist only on another address of the server, not the one they use.
    let elsewhere = bed.v4(2);
    let config = deep_config(&bed)
        .set("allowlist_interfaces", quoted(elsewhere))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    for _ in 0..2 {
        // Screened in full each time: the teaser, the greet wait, the 450 at RCPT.
        let mut client = bed.connect(vetoed);
        client.engine_greeting();
        assert_eq!(clean_transaction(&mut client), [DEFERRED]);
        let tag = client.tag();
        let connect = connect_line(&bed, &client);
        client.quit();
        daemon.expect_session(
            &tag,
            &[
                connect,
                format!("ALLOWLIST VETO {tag}"),
                rcpt_rejected(&tag, DEFERRED, SENDER, CLIENT_HELO),
                format!("DISCONNECT {tag}"),
            ],
        );
    }
}

#[test]
fn a_dnswl_listed_client_skips_the_deep_tests() {
    if !require_root("a_dnswl_listed_client_skips_the_deep_tests") {
        return;
    }
    ensure_packages(&["postfix", "swaks"]).expect("postfix and swaks");
    let bed = Bed::new("deep-dnswl", &[30, 31]);
    let (vouched, unknown) = (bed.v4(30), bed.v4(31));
    let dnswl = start_dnswl(&bed, vouched);
    let postfix = bed.start_backend();
    let pin = PinDir::new("deep-dnswl");
    // deep_tests_skip_dnswl is on by default.
    let config = with_dnswl(deep_config(&bed), &dnswl).write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    // Vouched for: the greet wait still runs, then straight to Postfix, no 450 and no reconnect.
    let marker = format!("delivered on the word of a DNSWL from {vouched}");
    let swaks = bed.swaks_message(vouched, &marker, &[]);
    swaks.assert_success();
    assert_eq!(
        swaks.received().get(..2),
        Some(&[TEASER.to_string(), BACKEND_GREETING.to_string()][..]),
        "{}",
        swaks.transcript()
    );
    let tag = daemon.new_session_tag(vouched, &[]);
    let session = daemon.session_after(&tag, &format!("PASS NEW {tag}"));
    assert_eq!(
        session,
        [
            format!("CONNECT from {tag} to [{}]:{SMTP_PORT}", bed.server_v4()),
            format!("PASS NEW {tag}"),
        ],
        "{}",
        daemon.log()
    );
    let listed = format!("addr {vouched} listed by domain {DNSWL} as 127.0.0.3");
    assert!(
        daemon.lines().contains(&listed),
        "no {listed:?}:\n{}",
        daemon.log()
    );
    assert!(
        postfix.wait_for_mail(&marker, DELIVERY_WAIT),
        "the message from {vouched} was not delivered; Postfix log:\n{}",
        postfix.log()
    );

    // A client no list knows takes the deep tests as usual.
    let mut client = bed.connect(unknown);
    client.engine_greeting();
    assert_eq!(clean_transaction(&mut client), [DEFERRED]);
    let tag = client.tag();
    let connect = connect_line(&bed, &client);
    client.quit();
    daemon.expect_session(
        &tag,
        &[
            connect,
            rcpt_rejected(&tag, DEFERRED, SENDER, CLIENT_HELO),
            format!("PASS NEW {tag}"),
            format!("DISCONNECT {tag}"),
        ],
    );
    // The list was asked about it, and does not know it.
    let query = format!("31.{}.251.10.{DNSWL}", bed.n);
    assert!(dnswl.count(&query) >= 1, "{query} was never asked");
    assert!(
        !daemon.log().contains(&format!("addr {unknown} listed")),
        "{}",
        daemon.log()
    );
}

#[test]
fn with_deep_tests_skip_dnswl_off_a_dnswl_listed_client_is_tested() {
    if !require_root("with_deep_tests_skip_dnswl_off_a_dnswl_listed_client_is_tested") {
        return;
    }
    let bed = Bed::new("deep-nodnswl", &[32]);
    let vouched = bed.v4(32);
    let dnswl = start_dnswl(&bed, vouched);
    let pin = PinDir::new("deep-nodnswl");
    let config = with_dnswl(deep_config(&bed), &dnswl)
        .set("deep_tests_skip_dnswl", quoted("no"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    let mut client = bed.connect(vouched);
    client.engine_greeting();
    assert_eq!(clean_transaction(&mut client), [DEFERRED]);
    let tag = client.tag();
    let connect = connect_line(&bed, &client);
    client.quit();
    daemon.expect_session(
        &tag,
        &[
            connect,
            rcpt_rejected(&tag, DEFERRED, SENDER, CLIENT_HELO),
            format!("PASS NEW {tag}"),
            format!("DISCONNECT {tag}"),
        ],
    );
    let listed = format!("addr {vouched} listed by domain {DNSWL} as 127.0.0.3");
    assert!(
        daemon.lines().contains(&listed),
        "the list was asked and answered:\n{}",
        daemon.log()
    );
}

/// postscreen's reply when a command takes too long, sent also when the whole session does.
const TIMEOUT_EXCEEDED: &str = "421 4.4.2 mx.example.test Error: timeout exceeded";

#[test]
fn stress_shortens_the_wait_of_a_session_already_in_the_engine() {
    if !require_root("stress_shortens_the_wait_of_a_session_already_in_the_engine") {
        return;
    }
    let bed = Bed::new("deep-stress", &[15, 16]);
    let (idle, crowd) = (bed.v4(15), bed.v4(16));
    let pin = PinDir::new("deep-stress");
    // Stress comes at 9 connections in screening (90% of 10). A command may take a minute
    // normally and 2 s under stress.
    let config = deep_config(&bed)
        .set("pre_queue_limit", "10")
        .set("command_time_limit", quoted("${stress?{2}:{60}}s"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    let mut client = bed.connect(idle);
    client.engine_greeting();
    assert_eq!(client.command(&format!("EHLO {CLIENT_HELO}")), ENGINE_EHLO);
    let answered = Instant::now();
    // The session waits for its next command, under the normal limit of a minute. Eight
    // more connections bring the daemon under stress.
    let crowd: Vec<_> = (0..8).map(|_| bed.connect(crowd)).collect();
    daemon.wait_for("entering STRESS mode", |line| {
        line.contains("entering STRESS mode with 9 connections")
    });
    assert_eq!(client.reply(Duration::from_secs(30)), [TIMEOUT_EXCEEDED]);
    let waited = answered.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the session waited {waited:?}: stress did not reach it"
    );
    let tag = client.tag();
    assert_eq!(client.next(REPLY_WAIT), Received::Closed);
    daemon.wait_for("the idle session's end", |line| {
        line.contains(&format!("COMMAND TIME LIMIT from {tag} after EHLO"))
    });
    drop(crowd);
}

#[test]
fn a_busy_engine_session_ends_at_engine_session_time_limit() {
    if !require_root("a_busy_engine_session_ends_at_engine_session_time_limit") {
        return;
    }
    let bed = Bed::new("deep-session", &[17]);
    let bot = bed.v4(17);
    let pin = PinDir::new("deep-session");
    let config = deep_config(&bed)
        .set("command_count_limit", "1000")
        .set("engine_session_time_limit", quoted("5s"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    let mut client = bed.connect(bot);
    client.engine_greeting();
    let greeted = Instant::now();
    // A NOOP every half second, each well inside the command time limit, for as long as the
    // daemon answers: it must stop at 5 s, not at a thousand commands.
    let end = loop {
        std::thread::sleep(Duration::from_millis(500));
        let reply = client.command("NOOP");
        if reply != ["250 2.0.0 Ok"] {
            break reply;
        }
        assert!(
            greeted.elapsed() < Duration::from_secs(15),
            "the session outlived engine_session_time_limit"
        );
    };
    assert_eq!(end, [TIMEOUT_EXCEEDED]);
    let lasted = greeted.elapsed();
    assert!(
        lasted >= Duration::from_secs(4) && lasted < Duration::from_secs(8),
        "{lasted:?}"
    );
    assert_eq!(client.next(REPLY_WAIT), Received::Closed);
    let tag = client.tag();
    daemon.wait_for("the session's end", |line| {
        line.contains(&format!("COMMAND TIME LIMIT from {tag} after NOOP"))
    });
}
