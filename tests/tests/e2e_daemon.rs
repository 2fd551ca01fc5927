//! The screening daemon end to end: `smtp-screen run` in a server network namespace, a
//! private Postfix behind it as the real MTA (with a PROXY v2 header first, so that Postfix
//! logs each client's own address), and real clients in a client namespace, each role from an
//! address of its own: swaks for a whole mail transaction, scripted sessions where timing or
//! misbehaviour matters. Every check is on what a client received, word for word, on the
//! daemon's postscreen log lines, and where it matters on what Postfix logged and delivered.
//!
//! The harness is `screen_tests::daemon`; each test sets up its own namespaces, daemon and,
//! when it needs one, Postfix.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::Output,
    thread,
    time::{Duration, Instant},
};

use screen_tests::{
    daemon::{
        BACKEND_GREETING, Bed, COMMAND_TIME_LIMIT, Client, DENY_TTL_SECS, DROP_WAIT, Daemon,
        DaemonConfig, GREET_WAIT, LOG_WAIT, MYHOSTNAME, PROMPT, REPLY_WAIT, Received, SMTP_PORT,
        TEASER, TOOL_LIMIT, deny_list, dynamic_deny, expect_backend_log,
        expect_delivered_and_passed, quoted,
    },
    ensure_packages,
    haproxy::{self, Haproxy},
    netns::{ConnectOutcome, PinDir, ScratchDir, connect_from, output_within, smtp_screen_bin},
    postfix::MAIL_DOMAIN,
    require_root,
};

/// How far the daemon's resident memory may grow while it refuses floods of junk.
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;

/// The line-length and command-count limits answer with this.
const SERVICE_UNAVAILABLE: &str = "421 mx.example.test Service unavailable - try again later";

/// Sends `bytes` from another thread, so that the client keeps reading while the server
/// stops taking input; a server that hangs up mid-way makes the write fail, as it may.
fn send_in_background(client: &Client, bytes: Vec<u8>) -> thread::JoinHandle<()> {
    let mut writer = client.stream().try_clone().expect("clone the connection");
    thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    })
}

/// Reproducible noise: xorshift64, so that a failure can be replayed byte for byte.
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn a_good_client_is_greeted_once_delivered_and_then_passed_old() {
    if !require_root("a_good_client_is_greeted_once_delivered_and_then_passed_old") {
        return;
    }
    ensure_packages(&["postfix", "swaks"]).expect("postfix and swaks");
    let bed = Bed::new("good", &[10]);
    let postfix = bed.start_backend();
    let pin = PinDir::new("good");
    let config = DaemonConfig::new(&bed).write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let to = format!("user@{MAIL_DOMAIN}");

    // IPv4 with swaks, whose transcript shows the greeting as any client sees it.
    let good = bed.v4(10);
    let marker = format!("delivered through smtp-screen from {good}");
    let swaks = bed.swaks_message(good, &marker, &[]);
    swaks.assert_success();
    let received = swaks.received();
    assert_eq!(
        received.get(..2),
        Some(&[TEASER.to_string(), BACKEND_GREETING.to_string()][..]),
        "the teaser and the backend's 220 must form one greeting:\n{}",
        swaks.transcript()
    );
    assert!(
        received
            .iter()
            .any(|line| line.starts_with("250 2.0.0 Ok: queued as ")),
        "{}",
        swaks.transcript()
    );
    expect_delivered_and_passed(&bed, &daemon, &postfix, good, &marker);

    // IPv6 with a scripted session (swaks needs an extra Perl module for IPv6).
    let good6 = bed.v6(10);
    let marker6 = format!("delivered through smtp-screen from {good6}");
    let mut client = bed.connect(good6);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    assert_eq!(client.line(GREET_WAIT + REPLY_WAIT), BACKEND_GREETING);
    let ehlo = client.command("EHLO client.example");
    assert_eq!(
        ehlo.first().map(String::as_str),
        Some("250-mx.example.test")
    );
    assert_eq!(
        client.command("MAIL FROM:<sender@client.example>"),
        ["250 2.1.0 Ok"]
    );
    assert_eq!(client.command(&format!("RCPT TO:<{to}>")), ["250 2.1.5 Ok"]);
    assert_eq!(
        client.command("DATA"),
        ["354 End data with <CR><LF>.<CR><LF>"]
    );
    client.send(format!("Subject: over IPv6\r\n\r\n{marker6}\r\n.\r\n").as_bytes());
    let queued = client.reply(REPLY_WAIT);
    assert!(
        queued[0].starts_with("250 2.0.0 Ok: queued as "),
        "{queued:?}"
    );
    client.quit();
    expect_delivered_and_passed(&bed, &daemon, &postfix, good6, &marker6);

    let backend_log = postfix.log();
    assert!(
        !backend_log.contains("[127.0.0.1]"),
        "Postfix saw the daemon's own address:\n{backend_log}"
    );

    // Back again: the temporary allowlist hands it to Postfix at once, without a teaser.
    let mut again = bed.connect(good);
    let connected = Instant::now();
    let first = again.line(REPLY_WAIT);
    let waited = connected.elapsed();
    assert_eq!(first, BACKEND_GREETING, "no teaser for a PASS OLD client");
    assert!(
        waited < PROMPT,
        "the backend's greeting took {waited:?}; the greet wait is {GREET_WAIT:?}"
    );
    let tag = again.tag();
    again.quit();
    daemon.expect_line(&format!("PASS OLD {tag}"));
    assert!(!daemon.has_line(&format!("PASS NEW {tag}")));
    let seen = format!("connect from unknown[{good}]");
    let deadline = Instant::now() + LOG_WAIT;
    while postfix.log().matches(&seen).count() < 2 {
        assert!(
            Instant::now() < deadline,
            "Postfix did not see the returning client:\n{}",
            postfix.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_restarted_daemon_keeps_its_temporary_allowlist() {
    if !require_root("a_restarted_daemon_keeps_its_temporary_allowlist") {
        return;
    }
    let bed = Bed::new("restart", &[20, 21]);
    let (returning, newcomer) = (bed.v4(20), bed.v4(21));
    let _postfix = bed.start_backend();
    let pin = PinDir::new("restart");
    let config = DaemonConfig::new(&bed).write(&bed, "smtp-screen.toml");

    let first = Daemon::start(&bed, &pin, &config, "daemon-1.log");
    let mut client = bed.connect(returning);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    assert_eq!(client.line(GREET_WAIT + REPLY_WAIT), BACKEND_GREETING);
    let tag = client.tag();
    client.quit();
    first.expect_line(&format!("PASS NEW {tag}"));
    first.stop();

    let second = Daemon::start(&bed, &pin, &config, "daemon-2.log");
    let mut client = bed.connect(returning);
    let connected = Instant::now();
    assert_eq!(client.line(REPLY_WAIT), BACKEND_GREETING);
    assert!(connected.elapsed() < PROMPT);
    let tag = client.tag();
    client.quit();
    second.expect_line(&format!("PASS OLD {tag}"));

    // The allowlist remembers clients, it does not open the door for everyone.
    let mut other = bed.connect(newcomer);
    assert_eq!(other.line(REPLY_WAIT), TEASER);
}

/// `soft_bounce = yes` is the operator's trial: every refusal is temporary, so the kernel,
/// whose refusal is a silent drop, denies no one, however often a client fails.
#[test]
fn under_soft_bounce_a_repeat_pregreeter_is_never_denied_in_the_kernel() {
    if !require_root("under_soft_bounce_a_repeat_pregreeter_is_never_denied_in_the_kernel") {
        return;
    }
    let bed = Bed::new("softbounce", &[32]);
    let zombie = bed.v4(32);
    let pin = PinDir::new("softbounce");
    let config = DaemonConfig::new(&bed)
        .with_kernel_layer(&bed)
        .set("greet_action", quoted("drop"))
        .set("soft_bounce", quoted("yes"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    for _ in 0..3 {
        let mut client = bed.connect(zombie);
        client.send(b"EHLO zombie.example\r\n");
        assert_eq!(client.line(REPLY_WAIT), TEASER);
        // postscreen's 521 for a dropped pregreeter, soft-bounced.
        assert_eq!(client.line(REPLY_WAIT), "421 4.5.1 Protocol error");
        let tag = client.tag();
        daemon.expect_line(&format!("DISCONNECT {tag}"));
    }
    thread::sleep(Duration::from_millis(300));
    assert!(
        !daemon.lines().iter().any(|l| l.starts_with("KERNEL DENY")),
        "denied under soft_bounce:\n{}",
        daemon.log()
    );
    assert_eq!(dynamic_deny(&deny_list(&bed, &pin), zombie), None);
    // The fourth connection still reaches the daemon and gets an answer.
    let mut client = bed.connect(zombie);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
}

#[test]
fn a_pregreeter_is_refused_then_denied_in_the_kernel() {
    if !require_root("a_pregreeter_is_refused_then_denied_in_the_kernel") {
        return;
    }
    let bed = Bed::new("pregreet", &[30, 31]);
    let (zombie, good) = (bed.v4(30), bed.v4(31));
    let pin = PinDir::new("pregreet");
    let config = DaemonConfig::new(&bed)
        .with_kernel_layer(&bed)
        .set("greet_action", quoted("enforce"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    for round in 1..=2 {
        let mut client = bed.connect(zombie);
        client.send(b"EHLO zombie.example\r\n");
        assert_eq!(client.line(REPLY_WAIT), TEASER);
        let ehlo = client.reply(REPLY_WAIT);
        assert_eq!(
            ehlo.first().map(String::as_str),
            Some("250-mx.example.test")
        );
        assert!(
            !ehlo.iter().any(|line| line.contains("PIPELINING")),
            "{ehlo:?}"
        );
        assert_eq!(
            client.command("MAIL FROM:<zombie@bots.example>"),
            ["250 2.1.0 Ok"]
        );
        assert_eq!(
            client.command(&format!("RCPT TO:<user@{MAIL_DOMAIN}>")),
            ["550 5.5.1 Protocol error"]
        );
        let tag = client.tag();
        assert!(
            !client
                .transcript()
                .iter()
                .any(|line| line.starts_with("<- 220 ")),
            "a pregreeter must never get the final 220:\n{}",
            client.transcript().join("\n")
        );
        client.quit();

        let pregreet = daemon.wait_for("the PREGREET line", |line| {
            line.starts_with("PREGREET 21 after ")
                && line.ends_with(&format!(" from {tag}: EHLO zombie.example\\r\\n"))
        });
        let after = pregreet["PREGREET 21 after ".len()..]
            .split(' ')
            .next()
            .and_then(|secs| secs.parse::<f64>().ok());
        assert!(
            after.is_some_and(|secs| secs < GREET_WAIT.as_secs_f64()),
            "{pregreet}"
        );
        daemon.expect_line(&format!(
            "NOQUEUE: reject: RCPT from {tag}: 550 5.5.1 Protocol error; \
             from=<zombie@bots.example>, to=<user@{MAIL_DOMAIN}>, proto=ESMTP, \
             helo=<zombie.example>"
        ));
        daemon.expect_line(&format!("DISCONNECT {tag}"));
        if round == 1 {
            // One failure is answered in SMTP only.
            thread::sleep(Duration::from_millis(300));
            assert!(
                !daemon.lines().iter().any(|l| l.starts_with("KERNEL DENY")),
                "denied after one failure:\n{}",
                daemon.log()
            );
            assert_eq!(dynamic_deny(&deny_list(&bed, &pin), zombie), None);
        }
    }

    daemon.expect_line(&format!(
        "KERNEL DENY [{zombie}] for {DENY_TTL_SECS}s after 2 failures: PREGREET"
    ));
    let list = deny_list(&bed, &pin);
    let entry = dynamic_deny(&list, zombie)
        .unwrap_or_else(|| panic!("{zombie} is not in the deny list:\n{list}"));
    assert!(
        entry.contains("origin=policy") && entry.contains("failures=2"),
        "{entry}"
    );

    // The third SYN never reaches the daemon; other clients still do.
    let third = connect_from(&bed.client, zombie, bed.smtp_addr(zombie), DROP_WAIT)
        .expect("third connection attempt");
    assert_eq!(third, ConnectOutcome::TimedOut);
    let mut other = bed.connect(good);
    assert_eq!(other.line(REPLY_WAIT), TEASER);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        daemon.connect_ports(zombie).len(),
        2,
        "the daemon saw a connection the kernel should have dropped:\n{}",
        daemon.log()
    );
}

#[test]
fn the_access_list_permits_and_drops_by_cidr_table() {
    if !require_root("the_access_list_permits_and_drops_by_cidr_table") {
        return;
    }
    let bed = Bed::new("access", &[40, 41]);
    let (permitted, rejected) = (bed.v4(40), bed.v4(41));
    let postfix = bed.start_backend();
    let table = bed.write_table(
        "access.cidr",
        &[(permitted, "permit"), (rejected, "reject")],
    );
    let pin = PinDir::new("access");
    let config = DaemonConfig::new(&bed)
        .with_kernel_layer(&bed)
        .set(
            "access_list",
            quoted(format!("permit_mynetworks, cidr:{}", table.display())),
        )
        .set("denylist_action", quoted("drop"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    // Permitted: no tests, the backend's greeting at once.
    let mut client = bed.connect(permitted);
    let connected = Instant::now();
    assert_eq!(client.line(REPLY_WAIT), BACKEND_GREETING);
    assert!(connected.elapsed() < PROMPT);
    let tag = client.tag();
    client.quit();
    daemon.expect_line(&format!("ALLOWLISTED {tag}"));
    assert!(
        postfix
            .wait_for_log(&format!("connect from unknown[{permitted}]"), LOG_WAIT)
            .is_some(),
        "{}",
        postfix.log()
    );

    // Rejected with drop: refused, then denied in the kernel on first contact.
    let mut client = bed.connect(rejected);
    assert_eq!(
        client.until_closed(REPLY_WAIT),
        ["521 5.3.2 Service currently unavailable"]
    );
    let tag = client.tag();
    daemon.expect_line(&format!("DENYLISTED {tag}"));
    daemon.expect_line(&format!("DISCONNECT {tag}"));
    daemon.expect_line(&format!(
        "KERNEL DENY [{rejected}] for {DENY_TTL_SECS}s after 1 failure: denylisted"
    ));
    let list = deny_list(&bed, &pin);
    assert!(
        dynamic_deny(&list, rejected).is_some_and(|entry| entry.contains("failures=1")),
        "{rejected} is not in the deny list:\n{list}"
    );
    let next = connect_from(&bed.client, rejected, bed.smtp_addr(rejected), DROP_WAIT)
        .expect("second connection attempt");
    assert_eq!(next, ConnectOutcome::TimedOut);
    assert!(
        !postfix.log().contains(&format!("[{rejected}]")),
        "a denylisted client reached Postfix:\n{}",
        postfix.log()
    );
}

#[test]
fn an_idle_client_in_the_engine_hits_the_command_time_limit() {
    if !require_root("an_idle_client_in_the_engine_hits_the_command_time_limit") {
        return;
    }
    let bed = Bed::new("idle", &[50]);
    let idle = bed.v4(50);
    let table = bed.write_table("access.cidr", &[(idle, "reject")]);
    let pin = PinDir::new("idle");
    let config = DaemonConfig::new(&bed)
        .set("access_list", quoted(format!("cidr:{}", table.display())))
        .set("denylist_action", quoted("enforce"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    let mut client = bed.connect(idle);
    client.engine_greeting();
    let greeted = Instant::now();
    assert_eq!(
        client.until_closed(COMMAND_TIME_LIMIT + REPLY_WAIT),
        ["421 4.4.2 mx.example.test Error: timeout exceeded"]
    );
    let idled = greeted.elapsed();
    assert!(
        idled >= COMMAND_TIME_LIMIT - Duration::from_millis(100)
            && idled < COMMAND_TIME_LIMIT + Duration::from_secs(2),
        "cut off after {idled:?}; the command time limit is {COMMAND_TIME_LIMIT:?}"
    );
    let tag = client.tag();
    daemon.expect_line(&format!("DENYLISTED {tag}"));
    daemon.expect_line(&format!("COMMAND TIME LIMIT from {tag} after CONNECT"));
    daemon.expect_line(&format!("DISCONNECT {tag}"));
}

#[test]
fn a_third_simultaneous_connection_is_refused() {
    if !require_root("a_third_simultaneous_connection_is_refused") {
        return;
    }
    let bed = Bed::new("count", &[60, 61]);
    let (busy, other) = (bed.v4(60), bed.v4(61));
    let pin = PinDir::new("count");
    let config = DaemonConfig::new(&bed)
        .set("client_connection_count_limit", "2")
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    // Both stay in the greet wait while the third arrives.
    let mut first = bed.connect(busy);
    assert_eq!(first.line(REPLY_WAIT), TEASER);
    let mut second = bed.connect(busy);
    assert_eq!(second.line(REPLY_WAIT), TEASER);
    let mut third = bed.connect(busy);
    let connected = Instant::now();
    assert_eq!(
        third.until_closed(REPLY_WAIT),
        ["421 4.7.0 Error: too many connections"]
    );
    assert!(connected.elapsed() < PROMPT);
    daemon.expect_line(&format!(
        "NOQUEUE: reject: CONNECT from {}: too many connections",
        third.tag()
    ));
    for admitted in [&first, &second] {
        assert!(!daemon.has_line(&format!(
            "NOQUEUE: reject: CONNECT from {}: too many connections",
            admitted.tag()
        )));
    }
    // The limit is per client address.
    let mut elsewhere = bed.connect(other);
    assert_eq!(elsewhere.line(REPLY_WAIT), TEASER);
    drop((first, second));
}

#[test]
fn junk_and_an_endless_line_leave_the_daemon_serving_in_bounded_memory() {
    if !require_root("junk_and_an_endless_line_leave_the_daemon_serving_in_bounded_memory") {
        return;
    }
    const WARM_UP: u8 = 70;
    const NEXT: u8 = 71;
    const JUNK: [u8; 4] = [72, 73, 74, 75];
    const ENDLESS: [u8; 4] = [76, 77, 78, 79];
    let hosts: Vec<u8> = [WARM_UP, NEXT]
        .into_iter()
        .chain(JUNK)
        .chain(ENDLESS)
        .collect();
    let bed = Bed::new("junk", &hosts);
    // Every client of the test network is served by the engine.
    let network: IpAddr = Ipv4Addr::new(10, 251, bed.n, 0).into();
    let table = bed
        .scratch
        .write("access.cidr", format!("{network}/24 reject\n"));
    let table = table.expect("CIDR table");
    let pin = PinDir::new("junk");
    let config = DaemonConfig::new(&bed)
        .set("access_list", quoted(format!("cidr:{}", table.display())))
        .set("denylist_action", quoted("enforce"))
        .write(&bed, "smtp-screen.toml");
    let mut daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    let mut client = bed.connect(bed.v4(WARM_UP));
    client.engine_greeting();
    client.quit();
    let rss_before = daemon.rss_kib();

    let sessions: Vec<(String, bool, Vec<String>)> = thread::scope(|scope| {
        let junk = JUNK.iter().map(|&host| (host, true));
        let endless = ENDLESS.iter().map(|&host| (host, false));
        let workers: Vec<_> = junk
            .chain(endless)
            .map(|(host, is_junk)| {
                let bed = &bed;
                scope.spawn(move || {
                    let mut client = bed.connect(bed.v4(host));
                    client.engine_greeting();
                    let flood = if is_junk {
                        noise(64 * 1024, 0x5eed_0000 + u64::from(host))
                    } else {
                        vec![b'x'; 1024 * 1024]
                    };
                    let writer = send_in_background(&client, flood);
                    let lines = client.until_closed(REPLY_WAIT);
                    writer.join().expect("writer thread");
                    (client.tag(), is_junk, lines)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("client thread"))
            .collect()
    });
    for (tag, is_junk, lines) in &sessions {
        if *is_junk {
            // The engine answers what it could read as commands and then gives up with a
            // 421, which reaches the client although it is still sending (the daemon shuts
            // its side and drains before closing, so the kernel sends no reset).
            assert!(
                lines.last().map(String::as_str) == Some(SERVICE_UNAVAILABLE)
                    && lines.iter().all(|line| {
                        line == "502 5.5.2 Error: command not recognized"
                            || line == SERVICE_UNAVAILABLE
                    }),
                "{tag}: {lines:?}"
            );
            daemon.wait_for("a COMMAND COUNT or LENGTH LIMIT line", |line| {
                line.starts_with(&format!("COMMAND COUNT LIMIT from {tag} after "))
                    || line.starts_with(&format!("COMMAND LENGTH LIMIT from {tag} after "))
            });
        } else {
            assert_eq!(lines, &[SERVICE_UNAVAILABLE], "{tag}");
            daemon.expect_line(&format!("COMMAND LENGTH LIMIT from {tag} after CONNECT"));
        }
        daemon.expect_line(&format!("DISCONNECT {tag}"));
    }

    daemon.assert_running();
    let mut next = bed.connect(bed.v4(NEXT));
    next.engine_greeting();
    assert_eq!(next.command("NOOP"), ["250 2.0.0 Ok"]);
    next.quit();
    let rss_after = daemon.rss_kib();
    assert!(
        rss_after < rss_before + RSS_GROWTH_LIMIT_KIB,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    eprintln!("daemon VmRSS: {rss_before} KiB before the floods, {rss_after} KiB after");
}

#[test]
fn a_backend_that_is_down_is_reported_in_postscreen_words() {
    if !require_root("a_backend_that_is_down_is_reported_in_postscreen_words") {
        return;
    }
    let bed = Bed::new("down", &[80, 81]);
    let (old, new) = (bed.v4(80), bed.v4(81));
    let mut postfix = bed.start_backend();
    let pin = PinDir::new("down");
    let config = DaemonConfig::new(&bed).write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    let mut client = bed.connect(old);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    assert_eq!(client.line(GREET_WAIT + REPLY_WAIT), BACKEND_GREETING);
    let tag = client.tag();
    client.quit();
    daemon.expect_line(&format!("PASS NEW {tag}"));

    postfix.stop().expect("stopping Postfix");

    // After the teaser the client gets a complete greeting and then a 421 to its first
    // command, never a 220- followed by a 421.
    let mut client = bed.connect(new);
    client.engine_greeting();
    assert_eq!(
        client.command("EHLO client.example"),
        ["421 4.3.2 No system resources"]
    );
    assert_eq!(client.next(REPLY_WAIT), Received::Closed);
    let tag = client.tag();
    daemon.expect_line(&format!("PASS NEW {tag}"));
    daemon.expect_line(&format!("DISCONNECT {tag}"));

    // Without a teaser there is no greeting to complete: a 421 at once.
    let mut client = bed.connect(old);
    let connected = Instant::now();
    assert_eq!(
        client.until_closed(REPLY_WAIT),
        ["421 4.3.2 All server ports are busy"]
    );
    assert!(connected.elapsed() < PROMPT);
    let tag = client.tag();
    daemon.expect_line(&format!("PASS OLD {tag}"));
    // As postscreen (postscreen_send.c): the reply, and no DISCONNECT line. The daemon
    // lingers up to a second on the closed connection before it would log one.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let disconnect = format!("DISCONNECT {tag}");
    assert!(!daemon.lines().contains(&disconnect), "{disconnect} logged");

    let backend = bed.backend_addr().to_string();
    let warnings: Vec<String> = daemon
        .lines()
        .into_iter()
        .filter(|line| line.starts_with("warning: ") && line.contains(&backend))
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "one warning naming the backend per failed hand-off:\n{}",
        daemon.log()
    );
    assert_eq!(postfix.mailbox(), "", "nothing may be delivered");
}

#[test]
fn upstream_proxy_headers_are_read_and_other_input_refused() {
    if !require_root("upstream_proxy_headers_are_read_and_other_input_refused") {
        return;
    }
    let bed = Bed::new("proxy", &[90, 91]);
    let pin = PinDir::new("proxy");
    let config = DaemonConfig::new(&bed)
        .set("upstream_proxy_protocol", quoted("haproxy"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    // postscreen's behaviour, any peer's header believed, is the default, and is warned about.
    let open_to_all: Vec<String> = daemon
        .lines()
        .into_iter()
        .filter(|line| {
            line.starts_with("warning: ")
                && line.contains("anyone who reaches the port can claim any client address")
        })
        .collect();
    assert_eq!(open_to_all.len(), 1, "{}", daemon.log());

    let mut v1 = bed.connect(bed.v4(90));
    v1.send(b"PROXY TCP4 203.0.113.5 198.51.100.25 40000 25\r\n");
    assert_eq!(v1.line(REPLY_WAIT), TEASER);
    daemon.expect_line("CONNECT from [203.0.113.5]:40000 to [198.51.100.25]:25");

    // PROXY v2 (binary), IPv6 client behind an IPv6 front end.
    let mut v2 = bed.connect(bed.v6(90));
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x21, 0x21, 0, 36]);
    header.extend("2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
    header.extend("2001:db8::25".parse::<Ipv6Addr>().unwrap().octets());
    header.extend(40001u16.to_be_bytes());
    header.extend(25u16.to_be_bytes());
    v2.send(&header);
    assert_eq!(v2.line(REPLY_WAIT), TEASER);
    daemon.expect_line("CONNECT from [2001:db8::5]:40001 to [2001:db8::25]:25");

    let not_proxied = bed.v4(91);
    let mut client = bed.connect(not_proxied);
    client.send(b"EHLO notproxy\r\n");
    assert_eq!(
        client.until_closed(REPLY_WAIT),
        ["421 4.3.2 No system resources"]
    );
    let warning = daemon.wait_for("a haproxy read warning", |line| {
        line.starts_with("warning: haproxy read: ")
    });
    assert_eq!(
        warning,
        "warning: haproxy read: short protocol header: EHLO notproxy\\r\\n"
    );
    assert!(daemon.connect_ports(not_proxied).is_empty());
}

/// A PROXY v2 `LOCAL` header, as a balancer sends for its own health checks: it names no
/// client.
fn proxy_v2_local() -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x20, 0x00, 0, 0]);
    header
}

/// Behind a load balancer the kernel sees only the balancer's address, so the kernel deny
/// policy is off (and says so at start): repeat pregreeters that come through a real HAProxy
/// (`send-proxy-v2`, XDP on the daemon's interface) are refused in SMTP every time under their
/// own addresses, and no dynamic entry is made for them or for the balancer, which goes on
/// relaying good clients. A v2 `LOCAL` header from the balancer's address leaves that address
/// as the client's (postscreen's fallback), and its failures never deny the balancer either.
#[test]
fn behind_haproxy_repeat_pregreeters_are_refused_in_smtp_and_the_balancer_is_never_denied() {
    if !require_root(
        "behind_haproxy_repeat_pregreeters_are_refused_in_smtp_and_the_balancer_is_never_denied",
    ) {
        return;
    }
    ensure_packages(&["postfix", haproxy::PACKAGE]).expect("postfix and haproxy");
    let bed = Bed::new("balancer", &[100, 101, 102]);
    let (balancer, zombie, good) = (bed.v4(100), bed.v4(101), bed.v4(102));
    let postfix = bed.start_backend();
    let pin = PinDir::new("balancer");
    let config = DaemonConfig::new(&bed)
        .with_kernel_layer(&bed)
        .set("greet_action", quoted("drop"))
        .set("upstream_proxy_protocol", quoted("haproxy"))
        .set("upstream_proxy_networks", quoted(balancer))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let haproxy = Haproxy::start(
        &bed.client,
        &bed.scratch,
        "haproxy",
        SocketAddr::new(balancer, SMTP_PORT),
        bed.smtp_addr(balancer),
    )
    .expect("starting HAProxy");
    daemon.wait_for("the kernel deny policy's line", |line| {
        line.starts_with("kernel deny policy off: behind a load balancer")
    });
    assert!(
        !daemon.log().contains("anyone who reaches the port"),
        "upstream_proxy_networks names the balancer:\n{}",
        daemon.log()
    );
    let no_dynamic_entry = |when: &str| {
        thread::sleep(Duration::from_millis(300));
        assert!(
            !daemon.lines().iter().any(|l| l.starts_with("KERNEL DENY")),
            "{when}: a kernel deny behind the balancer:\n{}",
            daemon.log()
        );
        let list = deny_list(&bed, &pin);
        for addr in [balancer, zombie] {
            assert_eq!(dynamic_deny(&list, addr), None, "{when}: {addr}:\n{list}");
        }
        assert!(
            !list.lines().any(|line| line.contains(" dynamic ")),
            "{when}: no dynamic entry at all:\n{list}"
        );
    };

    // Four rounds: two would deny the client without a balancer.
    for round in 1..=4 {
        let mut client = Client::connect_to(&bed, zombie, haproxy.frontend());
        client.send(b"EHLO zombie.example\r\n");
        assert_eq!(client.line(REPLY_WAIT), TEASER, "round {round}");
        assert_eq!(
            client.until_closed(REPLY_WAIT),
            ["521 5.5.1 Protocol error"],
            "round {round}"
        );
        // The header's client, with its own port, and the balancer's address it reached.
        let tag = client.tag();
        daemon.expect_line(&format!("CONNECT from {tag} to [{balancer}]:{SMTP_PORT}"));
        daemon.wait_for("the PREGREET line", |line| {
            line.starts_with("PREGREET 21 after ")
                && line.ends_with(&format!(" from {tag}: EHLO zombie.example\\r\\n"))
        });
        daemon.expect_line(&format!("DISCONNECT {tag}"));
    }
    no_dynamic_entry("after four pregreets through the balancer");

    // A good client still comes through, to the backend, under its own address.
    let mut client = Client::connect_to(&bed, good, haproxy.frontend());
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    assert_eq!(client.line(GREET_WAIT + REPLY_WAIT), BACKEND_GREETING);
    let tag = client.tag();
    client.quit();
    daemon.expect_line(&format!("PASS NEW {tag}"));
    expect_backend_log(&postfix, &format!("connect from unknown[{good}]"));

    // The balancer's own LOCAL header, then a pregreet, again and again.
    for round in 1..=3 {
        let mut local = bed.connect(balancer);
        let mut bytes = proxy_v2_local();
        bytes.extend_from_slice(b"EHLO balancer.example\r\n");
        local.send(&bytes);
        assert_eq!(local.line(REPLY_WAIT), TEASER, "round {round}");
        assert_eq!(
            local.until_closed(REPLY_WAIT),
            ["521 5.5.1 Protocol error"],
            "round {round}"
        );
        let tag = local.tag();
        daemon.wait_for("the balancer's PREGREET line", |line| {
            line.starts_with("PREGREET ")
                && line.ends_with(&format!(" from {tag}: EHLO balancer.example\\r\\n"))
        });
        daemon.expect_line(&format!("DISCONNECT {tag}"));
    }
    no_dynamic_entry("after three LOCAL pregreets from the balancer's address");

    // XDP still lets the balancer through: the good client is back, PASS OLD.
    let mut again = Client::connect_to(&bed, good, haproxy.frontend());
    assert_eq!(again.line(REPLY_WAIT), BACKEND_GREETING);
    let tag = again.tag();
    again.quit();
    daemon.expect_line(&format!("PASS OLD {tag}"));
    haproxy.stop();
}

/// Only the load balancers' PROXY headers are believed: a client that reaches the port itself
/// and claims a `mynetworks` address in a header is refused as a broken header is, with a
/// warning naming it, and is neither screened nor allowlisted; the balancer's own header is
/// read as before.
#[test]
fn a_proxy_header_from_outside_upstream_proxy_networks_is_refused_and_never_allowlisted() {
    if !require_root(
        "a_proxy_header_from_outside_upstream_proxy_networks_is_refused_and_never_allowlisted",
    ) {
        return;
    }
    let bed = Bed::new("outsider", &[110, 111]);
    let (balancer, outsider) = (bed.v4(110), bed.v4(111));
    let pin = PinDir::new("outsider");
    let config = DaemonConfig::new(&bed)
        .with_kernel_layer(&bed)
        .set("upstream_proxy_protocol", quoted("haproxy"))
        .set("upstream_proxy_networks", quoted(balancer))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let server = bed.smtp_addr(outsider).ip();

    for header in [
        format!("PROXY TCP4 127.0.0.1 {server} 40000 25\r\n").into_bytes(),
        // A header that names no client would make the outsider its own client.
        proxy_v2_local(),
    ] {
        let mut client = bed.connect(outsider);
        client.send(&header);
        assert_eq!(
            client.until_closed(REPLY_WAIT),
            ["421 4.3.2 No system resources"]
        );
        let tag = client.tag();
        daemon.expect_line(&format!(
            "warning: haproxy read: PROXY header from {tag} outside upstream_proxy_networks"
        ));
    }
    thread::sleep(Duration::from_millis(300));
    assert!(
        !daemon
            .lines()
            .iter()
            .any(|l| l.starts_with("CONNECT from") || l.starts_with("ALLOWLISTED")),
        "a header from outside upstream_proxy_networks was believed:\n{}",
        daemon.log()
    );

    let mut inside = bed.connect(balancer);
    inside.send(format!("PROXY TCP4 203.0.113.5 {server} 40000 25\r\n").as_bytes());
    assert_eq!(inside.line(REPLY_WAIT), TEASER);
    daemon.expect_line(&format!(
        "CONNECT from [203.0.113.5]:40000 to [{server}]:25"
    ));
    assert_eq!(dynamic_deny(&deny_list(&bed, &pin), outsider), None);
}

#[test]
fn check_config_names_the_unknown_key_and_the_missing_table() {
    let bin = smtp_screen_bin().expect("the smtp-screen binary");
    let scratch = ScratchDir::create("check").expect("scratch directory");
    let check = |config: &Path| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("check-config").arg(config).env("NO_COLOR", "1");
        output_within(&mut cmd, TOOL_LIMIT).expect("smtp-screen check-config")
    };
    let only_error = |out: &Output| {
        assert!(
            !out.status.success(),
            "check-config accepted a broken file:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
        errors[0].to_string()
    };

    let table = scratch
        .write("access.cidr", "192.0.2.0/24 reject\n")
        .expect("CIDR table");
    let good = scratch
        .write(
            "good.toml",
            format!(
                "myhostname = \"{MYHOSTNAME}\"\naccess_list = \"permit_mynetworks, cidr:{}\"\n",
                table.display()
            ),
        )
        .expect("configuration");
    let out = check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}: ok", good.display())
    );

    let unknown = scratch
        .write(
            "unknown.toml",
            format!(
                "myhostname = \"{MYHOSTNAME}\"\ngreet_action = \"enforce\"\ngreet_wiat = \"6s\"\n"
            ),
        )
        .expect("configuration");
    let error = only_error(&check(&unknown));
    assert!(
        error.contains(&format!("{}:3:", unknown.display())),
        "{error}"
    );
    assert!(error.contains("unknown field `greet_wiat`"), "{error}");

    let missing = scratch.path().join("missing.cidr");
    let absent = scratch
        .write(
            "absent.toml",
            format!(
                "myhostname = \"{MYHOSTNAME}\"\naccess_list = \"permit_mynetworks, cidr:{}\"\n",
                missing.display()
            ),
        )
        .expect("configuration");
    let error = only_error(&check(&absent));
    assert!(
        error.contains(&missing.display().to_string()),
        "the error must name the table: {error}"
    );
}

/// The DNS lists' health check waits up to `dnsbl_timeout` on a server that never answers;
/// it runs on its own, so SIGTERM stops the daemon at once all the same.
#[test]
fn sigterm_is_honoured_while_a_health_check_waits_on_a_silent_dns_server() {
    if !require_root("sigterm_is_honoured_while_a_health_check_waits_on_a_silent_dns_server") {
        return;
    }
    let bed = Bed::new("healthterm", &[]);
    // A DNS server that takes every query and answers none.
    let silent = SocketAddr::new(bed.server_v4(), 5353);
    let _silent = bed
        .server
        .run(|| std::net::UdpSocket::bind(silent))
        .expect("entering the server namespace")
        .expect("binding the silent DNS server");
    let pin = PinDir::new("healthterm");
    let config = DaemonConfig::new(&bed)
        .set("dnsbl_sites", quoted("silent.test"))
        .set("dns_servers", format!("[{}]", quoted(silent)))
        .set("dnsbl_timeout", quoted("60s"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    // The first check starts with the daemon and is now waiting for its answers.
    thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    daemon.stop_within(Duration::from_secs(5));
    assert!(asked.elapsed() < Duration::from_secs(5));
}

/// A pipe whose reader the test holds, shrunk to one page, for the daemon's stderr.
fn small_pipe() -> (std::fs::File, std::os::fd::OwnedFd) {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned here alone.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this function owns.
    assert!(unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096) } >= 4096);
    (std::fs::File::from(reader), writer)
}

/// Reads `pipe` until `text` appears in what was read, within `limit`; returns all of it.
fn read_until(pipe: &mut std::fs::File, seen: &mut String, text: &str, limit: Duration) {
    use std::{io::Read as _, os::fd::AsRawFd as _};
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while !seen.contains(text) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {text:?} within {limit:?}:\n{seen}");
        let mut poll = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, left.as_millis().min(1000) as i32) } <= 0 {
            continue;
        }
        let n = pipe.read(&mut buf).expect("reading the daemon's stderr");
        assert!(n > 0, "the daemon closed its stderr:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// The daemon's stderr is a pipe nobody reads: the log stalls, connections do not. The lines
/// the log could not hold are counted and reported once the pipe is read again.
#[test]
fn a_stalled_log_pipe_does_not_stop_the_daemon_answering_clients() {
    if !require_root("a_stalled_log_pipe_does_not_stop_the_daemon_answering_clients") {
        return;
    }
    let bed = Bed::new("logstall", &[10]);
    let pin = PinDir::new("logstall");
    let config = DaemonConfig::new(&bed).write(&bed, "smtp-screen.toml");
    let (mut pipe, stderr) = small_pipe();
    let mut cmd = bed
        .server
        .command(smtp_screen_bin().expect("the smtp-screen binary"));
    cmd.arg("--pin-dir")
        .arg(pin.path())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(stderr));
    let mut daemon = screen_tests::netns::ChildGuard::spawn(&mut cmd).expect("smtp-screen run");
    let mut seen = String::new();
    read_until(
        &mut pipe,
        &mut seen,
        "smtp-screen screening connections",
        Duration::from_secs(20),
    );

    // Nobody reads the pipe now. Each client logs CONNECT, HANGUP and DISCONNECT: the page
    // fills after a dozen, the log's queue after a few hundred.
    let client = bed.v4(10);
    for i in 0..600 {
        let mut c = bed.connect(client);
        let teaser = c.line(REPLY_WAIT);
        assert_eq!(teaser, TEASER, "client {i} while the log pipe is full");
    }

    // The pipe is read again: the writer catches up and says what it lost; a client after
    // that is logged whole.
    read_until(
        &mut pipe,
        &mut seen,
        "lines dropped: the log writer fell behind",
        LOG_WAIT,
    );
    let tag = {
        let mut c = bed.connect(client);
        assert_eq!(c.line(REPLY_WAIT), TEASER);
        c.tag()
    };
    read_until(&mut pipe, &mut seen, &format!("DISCONNECT {tag}"), LOG_WAIT);
    assert!(daemon.try_wait().expect("the daemon's status").is_none());
    let stopped = daemon.terminate(Duration::from_secs(10)).expect("SIGTERM");
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
}

/// A sweep of a full dynamic deny map runs beside the connections, not in their way: clients
/// are greeted at once while a million expired entries are removed.
#[test]
fn clients_are_served_while_a_full_deny_map_is_swept() {
    use screen_common::{DenyEntry, DynKeyV4, Origin, map_name};
    if !require_root("clients_are_served_while_a_full_deny_map_is_swept") {
        return;
    }
    const ENTRIES: usize = 1_000_000;
    let bed = Bed::new("sweep", &[10]);
    let pin = PinDir::new("sweep");
    let config = DaemonConfig::new(&bed)
        .with_kernel_layer(&bed)
        .set("deny_sweep_interval", quoted("1s"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    // A million entries, every one expired (the clock's first nanosecond); none is this
    // bed's client, whose addresses start with 10.
    let map = aya::maps::MapData::from_pin(pin.path().join(map_name::DYN_DENY_V4))
        .expect("the pinned IPv4 dynamic deny map");
    let keys: Vec<DynKeyV4> = (0u32..)
        .map(|i| i.wrapping_mul(0x9e37_79b1).wrapping_add(0x0102_0304))
        .map(u32::to_be_bytes)
        .filter(|addr| addr[0] != 10 && addr[0] != 0)
        .take(ENTRIES)
        .map(|addr| DynKeyV4 { addr })
        .collect();
    let expired = DenyEntry {
        expires_ns: 1,
        origin: Origin::Policy as u32,
        failures: 2,
    };
    let values = vec![expired; 1 << 16];
    for chunk in keys.chunks(1 << 16) {
        screen_tests::bpf_sys::update_batch(
            std::os::fd::AsFd::as_fd(map.fd()),
            chunk,
            &values[..chunk.len()],
        )
        .expect("BPF_MAP_UPDATE_BATCH");
    }

    // Clients for as long as the sweeps take, each timed from connect to teaser.
    let client = bed.v4(10);
    let swept = |log: &str| -> usize {
        log.lines()
            .filter(|line| line.contains("expired dynamic deny entries removed"))
            .filter_map(|line| line.split("swept=").nth(1))
            .filter_map(|n| n.split_whitespace().next()?.parse::<usize>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut slowest = Duration::ZERO;
    let mut clients = 0;
    while swept(&daemon.log()) < ENTRIES * 9 / 10 {
        assert!(
            Instant::now() < deadline,
            "the sweeps removed {} of {ENTRIES} entries in 30s:\n{}",
            swept(&daemon.log()),
            daemon.log()
        );
        let started = Instant::now();
        let mut c = bed.connect(client);
        assert_eq!(c.line(REPLY_WAIT), TEASER);
        slowest = slowest.max(started.elapsed());
        clients += 1;
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        slowest < Duration::from_millis(500),
        "the slowest of {clients} teasers during the sweep took {slowest:?}"
    );
}

/// A syslog daemon of the test's own, on the socket the configuration names.
fn bind_syslog(path: &Path) -> std::os::unix::net::UnixDatagram {
    use std::os::unix::fs::PermissionsExt as _;
    let socket = std::os::unix::net::UnixDatagram::bind(path).expect("binding the syslog socket");
    // The daemon writes to it, and connects again, as its own account.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .expect("opening the syslog socket to the daemon's account");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a read timeout");
    socket
}

/// Receives from `syslog` until a line contains `text`, within `LOG_WAIT`; keeps every line.
fn syslog_until(syslog: &std::os::unix::net::UnixDatagram, lines: &mut Vec<String>, text: &str) {
    let deadline = Instant::now() + LOG_WAIT;
    let mut buf = vec![0u8; 8192];
    while !lines.iter().any(|line| line.contains(text)) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} from the daemon within {LOG_WAIT:?}; received:\n{}",
            lines.join("\n")
        );
        if let Ok(n) = syslog.recv(&mut buf) {
            lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

/// The syslog daemon restarts while clients come and go: once it is back, every line logged
/// while it was away, and after, reaches it.
#[test]
fn after_syslog_restarts_no_log_line_is_lost() {
    if !require_root("after_syslog_restarts_no_log_line_is_lost") {
        return;
    }
    let bed = Bed::new("syslog", &[10]);
    let path = bed.scratch.path().join("log.sock");
    let syslog = bind_syslog(&path);
    let pin = PinDir::new("syslog");
    let config = DaemonConfig::new(&bed)
        .set("log_to", quoted("syslog"))
        .set("syslog_socket", quoted(path.display()))
        .set("syslog_name", quoted("postfix/postscreen"))
        .write(&bed, "smtp-screen.toml");
    let _daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let client = bed.v4(10);
    let visit = || {
        let mut c = bed.connect(client);
        assert_eq!(c.line(REPLY_WAIT), TEASER);
        c.tag()
    };
    let mut lines = Vec::new();
    let first = visit();
    syslog_until(&syslog, &mut lines, &format!("DISCONNECT {first}"));

    // The syslog daemon stops; clients keep coming.
    drop(syslog);
    std::fs::remove_file(&path).expect("removing the syslog socket");
    let mut tags: Vec<String> = (0..5).map(|_| visit()).collect();
    thread::sleep(Duration::from_millis(300));

    // It is back, on a new socket at the same path.
    let syslog = bind_syslog(&path);
    tags.push(visit());
    let mut lines = Vec::new();
    syslog_until(&syslog, &mut lines, &format!("DISCONNECT {}", tags[5]));
    for tag in &tags {
        for what in ["CONNECT from", "DISCONNECT"] {
            assert!(
                lines
                    .iter()
                    .any(|line| line.contains(&format!("{what} {tag}"))),
                "no \"{what} {tag}\" after syslog came back:\n{}",
                lines.join("\n")
            );
        }
    }
    assert!(
        lines
            .iter()
            .all(|line| line.starts_with("<22>postfix/postscreen[") || line.starts_with("<20>")),
        "{}",
        lines.join("\n")
    );
}
