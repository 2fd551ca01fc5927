//! DNSBL/DNSWL scoring end to end: `smtp-screen run` in a server namespace with a private
//! Postfix behind it, rbldnsd in the same namespace serving the lists, and clients in a client
//! namespace, each listed (or not) as its role needs. The lists are the lab's of the postscreen
//! reference (Appendix A): `bl.test` (weight 3 for answers 127.0.0.2 to .11), `bl2.test`
//! (weight 1), the allowlist `wl.test` (weight -5), threshold 3, allowlist threshold -1, replies
//! naming `bl.test` as `public-bl.example`. Every check is on what a client received, word for
//! word, on the daemon's log lines and, where it matters, on what rbldnsd was asked.
//!
//! The lookups are bounded: a flood of clients that hang up in the greet wait, from rotating
//! addresses, leaves no lookup running (the daemon's UDP sockets and the `in_flight` of its
//! `dnsbl.status` fall back to zero, its RSS stays where it was), and past
//! `dnsbl_lookup_limit` a new client is scored as if the lists had failed, with a warning.
//!
//! The harness is `screen_tests::daemon` and `screen_tests::rbldnsd`; each test sets up its own
//! namespaces, lists, daemon and, when a client must reach it, Postfix.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use screen_tests::{
    daemon::{
        BACKEND_GREETING, Bed, Client, DENY_TTL_SECS, DROP_WAIT, Daemon, DaemonConfig, GREET_WAIT,
        PROMPT, REPLY_WAIT, TEASER, TOOL_LIMIT, deny_list, dynamic_deny,
        expect_delivered_and_passed, quoted,
    },
    ensure_packages,
    netns::{ConnectOutcome, PinDir, connect_from, run_within, smtp_screen_bin},
    postfix::MAIL_DOMAIN,
    rbldnsd::{
        BL_ANSWER, BL_MISS_ANSWER, BL_SHOWN, BL2_ANSWER, Dataset, DnsForwarder, LAB_SITES,
        LOCAL_DNS, Rbldnsd, WL_ANSWER, Zone, query_name,
    },
    require_root,
};

/// A second rbldnsd, for a list of a test's own beside the lab's.
const ERROR_DNS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 54);

/// A forwarder in front of rbldnsd, where a test needs a list to go silent.
const DNS_FORWARDER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)), 53);

// Client host numbers, one per role, as in the lab.
/// In `bl.test` and `bl2.test`: rank 4. Its IPv6 address is listed in both as well.
const RANK_4: u8 = 40;
/// In `bl2.test` only: rank 1, below the threshold.
const RANK_1: u8 = 41;
/// In `bl.test` with an answer no filter accepts.
const FILTER_MISS: u8 = 42;
/// In `wl.test`: rank -5, allowlisted.
const DNSWL: u8 = 30;
/// In no list but the one that goes silent or lists everything.
const CLEAN: u8 = 11;

/// How long after the greet wait the backend's greeting may take: the decision, the hand-off
/// and the start of a Postfix smtpd, on a busy machine.
const DECISION_SLACK: Duration = Duration::from_secs(1);

/// A bed with rbldnsd in the server namespace serving the lab's lists for the bed's
/// addresses, and whatever `extra` zones a test adds. Fields drop in order: the server first,
/// then the namespaces it runs in.
struct DnsBed {
    rbldnsd: Rbldnsd,
    bed: Bed,
}

impl DnsBed {
    fn new(tag: &str, hosts: &[u8], extra: &[Zone]) -> Self {
        ensure_packages(&["rbldnsd"]).expect("rbldnsd");
        let bed = Bed::new(tag, hosts);
        let mut zones = lab_zones(&bed);
        zones.extend_from_slice(extra);
        let rbldnsd = Rbldnsd::start(&bed.server, LOCAL_DNS, &zones).expect("starting rbldnsd");
        Self { rbldnsd, bed }
    }

    /// The lab's DNSBL settings on top of the shared daemon settings, asking `dns`.
    fn config(&self, sites: &str, dns: SocketAddr) -> DaemonConfig {
        DaemonConfig::new(&self.bed)
            .set("dnsbl_sites", quoted(sites))
            .set("dnsbl_threshold", "3")
            .set("dnsbl_allowlist_threshold", "-1")
            .set("dnsbl_action", quoted("enforce"))
            .set(
                "dnsbl_reply_map",
                format!("{{ \"bl.test\" = {} }}", quoted(BL_SHOWN)),
            )
            .set("dns_servers", format!("[{}]", quoted(dns)))
    }
}

/// The lab's lists for the bed's clients, every IPv4 zone with its test point.
fn lab_zones(bed: &Bed) -> Vec<Zone> {
    vec![
        Zone::new("bl.test", Dataset::Ip4Set)
            .with_test_point()
            .list(bed.v4(RANK_4), BL_ANSWER)
            .list(bed.v4(FILTER_MISS), BL_MISS_ANSWER),
        Zone::new("bl.test", Dataset::Ip6Trie).list(bed.v6(RANK_4), BL_ANSWER),
        Zone::new("bl2.test", Dataset::Ip4Set)
            .with_test_point()
            .list(bed.v4(RANK_4), BL2_ANSWER)
            .list(bed.v4(RANK_1), BL2_ANSWER),
        Zone::new("bl2.test", Dataset::Ip6Trie).list(bed.v6(RANK_4), BL2_ANSWER),
        Zone::new("wl.test", Dataset::Ip4Set)
            .with_test_point()
            .list(bed.v4(DNSWL), WL_ANSWER),
    ]
}

/// What a client blocked by `bl.test` is told: `550` at RCPT (enforce), `521` at once (drop).
fn blocked_reply(code: u16, client: IpAddr) -> String {
    format!("{code} 5.7.1 Service unavailable; client [{client}] blocked using {BL_SHOWN}")
}

/// Goes through EHLO and MAIL to the RCPT of a client in the dummy engine, and returns its
/// reply; the NOQUEUE line the daemon must log for it is the second value.
fn refused_rcpt(client: &mut Client) -> (Vec<String>, String) {
    let ehlo = client.command("EHLO client.example");
    assert_eq!(
        ehlo.first().map(String::as_str),
        Some("250-mx.example.test"),
        "{ehlo:?}"
    );
    assert_eq!(
        client.command("MAIL FROM:<sender@client.example>"),
        ["250 2.1.0 Ok"]
    );
    let to = format!("user@{MAIL_DOMAIN}");
    let reply = client.command(&format!("RCPT TO:<{to}>"));
    let noqueue = format!(
        "NOQUEUE: reject: RCPT from {}: {}; from=<sender@client.example>, to=<{to}>, \
         proto=ESMTP, helo=<client.example>",
        client.tag(),
        reply.join(" ")
    );
    (reply, noqueue)
}

/// Asserts that the daemon logged no `DNSBL rank` line for the client `tag`.
fn assert_not_ranked(daemon: &Daemon, tag: &str) {
    let ranked: Vec<String> = daemon
        .lines()
        .into_iter()
        .filter(|line| line.starts_with("DNSBL rank ") && line.ends_with(&format!(" for {tag}")))
        .collect();
    assert!(ranked.is_empty(), "{tag} was ranked: {ranked:?}");
}

/// Connects, expects the teaser at once and the backend's greeting when the greet wait ends,
/// and quits; returns the client's tag.
fn passes_after_the_greet_wait(bed: &Bed, src: IpAddr) -> String {
    let mut client = bed.connect(src);
    let connected = Instant::now();
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    assert_eq!(client.line(GREET_WAIT + REPLY_WAIT), BACKEND_GREETING);
    let greeted = connected.elapsed();
    assert!(
        greeted >= GREET_WAIT - Duration::from_millis(100) && greeted < GREET_WAIT + DECISION_SLACK,
        "{}: greeted after {greeted:?}; the greet wait is {GREET_WAIT:?}",
        client.tag()
    );
    let tag = client.tag();
    client.quit();
    tag
}

#[test]
fn the_lab_lists_rank_refuse_pass_and_allowlist_as_postscreen_does() {
    if !require_root("the_lab_lists_rank_refuse_pass_and_allowlist_as_postscreen_does") {
        return;
    }
    ensure_packages(&["postfix", "swaks"]).expect("postfix and swaks");
    let dns = DnsBed::new("lab", &[RANK_4, RANK_1, FILTER_MISS, DNSWL], &[]);
    let bed = &dns.bed;
    let postfix = bed.start_backend();
    let pin = PinDir::new("lab");
    let config = dns
        .config(LAB_SITES, LOCAL_DNS)
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    // Rank 4 (3 + 1): the dummy engine greets it, and refuses its recipient in the name the
    // reply map gives bl.test.
    let listed = bed.v4(RANK_4);
    let mut client = bed.connect(listed);
    client.engine_greeting();
    let (reply, noqueue) = refused_rcpt(&mut client);
    assert_eq!(reply, [blocked_reply(550, listed)]);
    let tag = client.tag();
    client.quit();
    daemon.expect_line(&format!(
        "addr {listed} listed by domain bl.test as {BL_ANSWER}"
    ));
    daemon.expect_line(&format!(
        "addr {listed} listed by domain bl2.test as {BL2_ANSWER}"
    ));
    daemon.expect_line(&format!("DNSBL rank 4 for {tag}"));
    daemon.expect_line(&noqueue);
    daemon.expect_line(&format!("DISCONNECT {tag}"));
    assert!(!daemon.has_line(&format!("PASS NEW {tag}")));
    assert!(
        !postfix.log().contains(&format!("[{listed}]")),
        "a listed client reached Postfix:\n{}",
        postfix.log()
    );

    // Rank 1, below the threshold: passes, and its mail is delivered by the backend.
    let low = bed.v4(RANK_1);
    let marker = format!("rank 1 is below the threshold, from {low}");
    let swaks = bed.swaks_message(low, &marker, &[]);
    swaks.assert_success();
    assert_eq!(
        swaks.received().get(..2),
        Some(&[TEASER.to_string(), BACKEND_GREETING.to_string()][..]),
        "{}",
        swaks.transcript()
    );
    expect_delivered_and_passed(bed, &daemon, &postfix, low, &marker);
    daemon.expect_line(&format!(
        "addr {low} listed by domain bl2.test as {BL2_ANSWER}"
    ));
    let [port] = daemon.connect_ports(low)[..] else {
        panic!("one connection from {low} expected:\n{}", daemon.log());
    };
    assert_not_ranked(&daemon, &format!("[{low}]:{port}"));

    // Listed as 127.0.0.99, which the filter does not accept: logged, not counted.
    let missed = bed.v4(FILTER_MISS);
    let tag = passes_after_the_greet_wait(bed, missed);
    daemon.expect_line(&format!(
        "addr {missed} listed by domain bl.test as {BL_MISS_ANSWER}"
    ));
    daemon.expect_line(&format!("PASS NEW {tag}"));
    assert_not_ranked(&daemon, &tag);

    // The DNSWL answer ends the greet wait at once: the backend's greeting follows the teaser
    // well before the greet wait would have ended.
    let vouched = bed.v4(DNSWL);
    let mut client = bed.connect(vouched);
    let connected = Instant::now();
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    assert_eq!(client.line(REPLY_WAIT), BACKEND_GREETING);
    let greeted = connected.elapsed();
    assert!(
        greeted < PROMPT,
        "the allowlisted client was greeted after {greeted:?}; the greet wait is {GREET_WAIT:?}"
    );
    let tag = client.tag();
    client.quit();
    daemon.expect_line(&format!(
        "addr {vouched} listed by domain wl.test as {WL_ANSWER}"
    ));
    daemon.expect_line(&format!("PASS NEW {tag}"));
    assert!(
        postfix
            .wait_for_log(&format!("connect from unknown[{vouched}]"), REPLY_WAIT)
            .is_some(),
        "{}",
        postfix.log()
    );
}

#[test]
fn dnsbl_drop_answers_521_as_soon_as_the_lists_have_answered() {
    if !require_root("dnsbl_drop_answers_521_as_soon_as_the_lists_have_answered") {
        return;
    }
    let dns = DnsBed::new("drop", &[RANK_4, RANK_1], &[]);
    let bed = &dns.bed;
    let _postfix = bed.start_backend();
    let pin = PinDir::new("drop");
    // Without the pregreet test only the DNSBL test is due: no teaser, and the wait ends when
    // every list has answered.
    let config = dns
        .config(LAB_SITES, LOCAL_DNS)
        .set("dnsbl_action", quoted("drop"))
        .set("greet_banner", quoted(""))
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    let listed = bed.v4(RANK_4);
    let mut client = bed.connect(listed);
    let connected = Instant::now();
    assert_eq!(
        client.until_closed(REPLY_WAIT),
        [blocked_reply(521, listed)]
    );
    let refused = connected.elapsed();
    assert!(refused < PROMPT, "refused after {refused:?}");
    let tag = client.tag();
    daemon.expect_line(&format!("DNSBL rank 4 for {tag}"));
    daemon.expect_line(&format!("DISCONNECT {tag}"));
    assert!(
        !daemon
            .lines()
            .iter()
            .any(|line| line.starts_with("NOQUEUE")),
        "{}",
        daemon.log()
    );

    let low = bed.v4(RANK_1);
    let mut client = bed.connect(low);
    let connected = Instant::now();
    assert_eq!(client.line(REPLY_WAIT), BACKEND_GREETING);
    let greeted = connected.elapsed();
    assert!(
        greeted < PROMPT,
        "greeted after {greeted:?}; the greet wait is {GREET_WAIT:?}"
    );
    let tag = client.tag();
    client.quit();
    daemon.expect_line(&format!("PASS NEW {tag}"));
    assert_not_ranked(&daemon, &tag);
}

#[test]
fn a_list_that_times_out_is_logged_and_neither_delays_nor_blocks_the_client() {
    if !require_root("a_list_that_times_out_is_logged_and_neither_delays_nor_blocks_the_client") {
        return;
    }
    // dead.test would rank the client 5; its test points answer, so the health check keeps it.
    let dns = DnsBed::new(
        "silent",
        &[CLEAN],
        &[Zone::new("dead.test", Dataset::Ip4Set)
            .with_test_point()
            .list("10.251.0.0/16", BL_ANSWER)],
    );
    let bed = &dns.bed;
    let forwarder = DnsForwarder::start(&bed.server, DNS_FORWARDER, LOCAL_DNS)
        .expect("starting the DNS forwarder");
    let client = bed.v4(CLEAN);
    let silent = query_name(client, "dead.test");
    forwarder.swallow(&silent);
    let _postfix = bed.start_backend();
    let pin = PinDir::new("silent");
    let config = dns
        .config(&format!("{LAB_SITES}, dead.test*5"), DNS_FORWARDER)
        .set("dnsbl_timeout", quoted("1s"))
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    let tag = passes_after_the_greet_wait(bed, client);
    daemon.expect_line("warning: dnsblog reply timeout 1s for dead.test");
    daemon.expect_line(&format!("PASS NEW {tag}"));
    assert_not_ranked(&daemon, &tag);
    assert!(
        forwarder.count(&silent) >= 1,
        "the daemon never asked for {silent}"
    );
    assert_eq!(
        dns.rbldnsd.count(&silent),
        0,
        "the forwarder let {silent} through"
    );
}

#[test]
fn a_list_slower_than_the_greet_wait_is_left_behind() {
    if !require_root("a_list_slower_than_the_greet_wait_is_left_behind") {
        return;
    }
    let dns = DnsBed::new(
        "slow",
        &[CLEAN],
        &[Zone::new("dead.test", Dataset::Ip4Set)
            .with_test_point()
            .list("10.251.0.0/16", BL_ANSWER)],
    );
    let bed = &dns.bed;
    let forwarder = DnsForwarder::start(&bed.server, DNS_FORWARDER, LOCAL_DNS)
        .expect("starting the DNS forwarder");
    let client = bed.v4(CLEAN);
    forwarder.swallow(&query_name(client, "dead.test"));
    let _postfix = bed.start_backend();
    let pin = PinDir::new("slow");
    // postscreen's default: the list may take longer than the greet wait.
    let config = dns
        .config(&format!("{LAB_SITES}, dead.test*5"), DNS_FORWARDER)
        .set("dnsbl_timeout", quoted("10s"))
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    // The score is read when the greet wait ends, with dead.test still pending.
    let tag = passes_after_the_greet_wait(bed, client);
    daemon.expect_line(&format!("PASS NEW {tag}"));
    assert_not_ranked(&daemon, &tag);
}

#[test]
fn a_list_that_times_out_after_the_greet_wait_is_still_reported() {
    if !require_root("a_list_that_times_out_after_the_greet_wait_is_still_reported") {
        return;
    }
    let dns = DnsBed::new(
        "late",
        &[CLEAN],
        &[Zone::new("dead.test", Dataset::Ip4Set)
            .with_test_point()
            .list("10.251.0.0/16", BL_ANSWER)],
    );
    let bed = &dns.bed;
    let forwarder = DnsForwarder::start(&bed.server, DNS_FORWARDER, LOCAL_DNS)
        .expect("starting the DNS forwarder");
    let client = bed.v4(CLEAN);
    forwarder.swallow(&query_name(client, "dead.test"));
    let _postfix = bed.start_backend();
    let pin = PinDir::new("late");
    // Longer than the greet wait, as postscreen's defaults are (10s against 6s).
    let config = dns
        .config(&format!("{LAB_SITES}, dead.test*5"), DNS_FORWARDER)
        .set("dnsbl_timeout", quoted("4s"))
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    let tag = passes_after_the_greet_wait(bed, client);
    daemon.expect_line(&format!("PASS NEW {tag}"));
    // postscreen's dnsblog request runs on after the score was read, and its timer still
    // fires: the operator learns that the list is not answering.
    daemon.expect_line("warning: dnsblog reply timeout 4s for dead.test");
}

#[test]
fn a_list_that_lists_everything_is_suspended_at_start() {
    if !require_root("a_list_that_lists_everything_is_suspended_at_start") {
        return;
    }
    let world = Zone::new("world.test", Dataset::Ip4Trie)
        .list("0.0.0.0/1", BL_ANSWER)
        .list("128.0.0.0/1", BL_ANSWER);
    let dns = DnsBed::new("world", &[CLEAN], &[world]);
    let bed = &dns.bed;
    let _postfix = bed.start_backend();
    let pin = PinDir::new("world");
    let config = dns
        .config(&format!("{LAB_SITES}, world.test*5"), LOCAL_DNS)
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");
    daemon.expect_line(
        "warning: dnsbl world.test suspended: it lists the test point 127.0.0.1 \
         (as 127.0.0.2), so it would list every client",
    );

    let client = bed.v4(CLEAN);
    let tag = passes_after_the_greet_wait(bed, client);
    daemon.expect_line(&format!("PASS NEW {tag}"));
    assert_not_ranked(&daemon, &tag);
    let asked = query_name(client, "world.test");
    assert_eq!(
        dns.rbldnsd.count(&asked),
        0,
        "a suspended list was asked about the client"
    );
    // The other lists were asked as usual.
    assert_eq!(dns.rbldnsd.count(&query_name(client, "bl.test")), 1);
}

#[test]
fn an_ipv6_client_is_looked_up_by_reversed_nibbles_and_refused() {
    if !require_root("an_ipv6_client_is_looked_up_by_reversed_nibbles_and_refused") {
        return;
    }
    let dns = DnsBed::new("v6", &[RANK_4], &[]);
    let bed = &dns.bed;
    let pin = PinDir::new("v6");
    let config = dns
        .config(LAB_SITES, LOCAL_DNS)
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    let listed = bed.v6(RANK_4);
    let mut client = bed.connect(listed);
    client.engine_greeting();
    let (reply, noqueue) = refused_rcpt(&mut client);
    assert_eq!(reply, [blocked_reply(550, listed)]);
    let tag = client.tag();
    client.quit();
    daemon.expect_line(&format!("DNSBL rank 4 for {tag}"));
    daemon.expect_line(&format!(
        "addr {listed} listed by domain bl.test as {BL_ANSWER}"
    ));
    daemon.expect_line(&noqueue);

    // One query per list, each for the 32 nibbles of the address, least significant first.
    for zone in ["bl.test", "bl2.test", "wl.test"] {
        let name = query_name(listed, zone);
        assert_eq!(
            dns.rbldnsd.count(&name),
            1,
            "rbldnsd was not asked for {name}; it got {:?}",
            dns.rbldnsd.queries()
        );
    }
}

#[test]
fn a_rank_at_the_kernel_threshold_is_denied_in_the_kernel_at_first_contact() {
    if !require_root("a_rank_at_the_kernel_threshold_is_denied_in_the_kernel_at_first_contact") {
        return;
    }
    let dns = DnsBed::new("kernel", &[RANK_4, RANK_1], &[]);
    let bed = &dns.bed;
    let pin = PinDir::new("kernel");
    let config = dns
        .config(LAB_SITES, LOCAL_DNS)
        .with_kernel_layer(bed)
        .set("kernel_dnsbl_threshold", "4")
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    let listed = bed.v4(RANK_4);
    let mut client = bed.connect(listed);
    client.engine_greeting();
    let tag = client.tag();
    daemon.expect_line(&format!("DNSBL rank 4 for {tag}"));
    daemon.expect_line(&format!(
        "KERNEL DENY [{listed}] for {DENY_TTL_SECS}s after 1 failure: DNSBL rank 4"
    ));
    // The session under way goes on; only new SYNs are dropped.
    let (reply, _) = refused_rcpt(&mut client);
    assert_eq!(reply, [blocked_reply(550, listed)]);
    client.quit();
    let list = deny_list(bed, &pin);
    assert!(
        dynamic_deny(&list, listed).is_some_and(|entry| entry.contains("failures=1")),
        "{listed} is not in the deny list:\n{list}"
    );
    let next = connect_from(&bed.client, listed, bed.smtp_addr(listed), DROP_WAIT)
        .expect("second connection attempt");
    assert_eq!(next, ConnectOutcome::TimedOut);
    assert_eq!(daemon.connect_ports(listed).len(), 1, "{}", daemon.log());

    // Rank 1 is far below the kernel threshold: screened as usual.
    let low = bed.v4(RANK_1);
    let mut client = bed.connect(low);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    assert_eq!(dynamic_deny(&deny_list(bed, &pin), low), None);
    drop(client);
}

/// A list that starts answering an error code (Spamhaus's 127.255.255.254, given to queries
/// through a public resolver) after its health check passed: the answer lists no one, the
/// list is suspended at the first such answer, and the kernel denies no one, though the
/// list's weight and the kernel threshold would have denied the client at first contact.
#[test]
fn an_error_answer_refuses_no_one_and_denies_no_one_in_the_kernel() {
    if !require_root("an_error_answer_refuses_no_one_and_denies_no_one_in_the_kernel") {
        return;
    }
    let error: Ipv4Addr = "127.255.255.254".parse().unwrap();
    let dns = DnsBed::new("errans", &[CLEAN], &[]);
    let bed = &dns.bed;
    // The test points answer as they should, so the list is in use when the client comes.
    let zone = Zone::new("err.test", Dataset::Ip4Set)
        .with_test_point()
        .list(bed.v4(CLEAN), error);
    let rbldnsd = Rbldnsd::start(&bed.server, SocketAddr::new(ERROR_DNS.into(), 53), &[zone])
        .expect("starting rbldnsd for err.test");
    let pin = PinDir::new("errans");
    let config = dns
        .config("err.test*5", rbldnsd.addr())
        .with_kernel_layer(bed)
        .set("dnsbl_action", quoted("drop"))
        .set("kernel_dnsbl_threshold", "4")
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    let _postfix = bed.start_backend();
    let clean = bed.v4(CLEAN);
    let tag = passes_after_the_greet_wait(bed, clean);
    daemon.wait_for("the list's suspension", |line| {
        line.starts_with("warning: dnsbl err.test suspended: it answers 127.255.255.254")
    });
    assert_not_ranked(&daemon, &tag);
    assert!(
        !daemon.lines().iter().any(|l| l.starts_with("KERNEL DENY")),
        "{}",
        daemon.log()
    );
    assert_eq!(dynamic_deny(&deny_list(bed, &pin), clean), None);
    // It passed: its next connection goes straight to the MTA.
    let mut client = bed.connect(clean);
    assert_eq!(client.line(REPLY_WAIT), BACKEND_GREETING);
    client.quit();
}

/// A list of a test's own, served by an rbldnsd that the test restarts with other zones.
const OWN_DNS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 55);

/// In `odd.test`, answered 10.0.0.2, which the operator's filter accepts.
const OUTSIDE: u8 = 43;

/// `odd.test`'s answer: outside 127.0.0.0/8, a listing only through the filter.
const OUTSIDE_ANSWER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// A kernel deny on DNSBL answers lasts only while the answers hold. `zen.test` (weight 4,
/// at `kernel_dnsbl_threshold`) lists the bot as 127.0.0.2: it is denied in the kernel at
/// first contact. `odd.test` (weight 5, filter `10.0.0.[1..3]`) lists another client as
/// 10.0.0.2: postscreen fails it in SMTP, and so does the daemon, twice, but an answer
/// outside 127.0.0.0/8 never makes a kernel entry, at first contact or as a repeat. Then
/// `zen.test` starts answering 127.255.255.254 for everyone: the next lookup suspends it,
/// and the bot's entry leaves the dynamic deny map, logged, so its next SYN reaches the
/// daemon.
#[test]
fn a_suspended_list_revokes_its_kernel_denies_and_answers_outside_127_8_deny_no_one() {
    if !require_root(
        "a_suspended_list_revokes_its_kernel_denies_and_answers_outside_127_8_deny_no_one",
    ) {
        return;
    }
    let error: Ipv4Addr = "127.255.255.254".parse().unwrap();
    let dns = DnsBed::new("revoke", &[RANK_4, OUTSIDE, CLEAN], &[]);
    let bed = &dns.bed;
    let bot = bed.v4(RANK_4);
    let outside = bed.v4(OUTSIDE);
    let odd = Zone::new("odd.test", Dataset::Ip4Set)
        .with_test_point()
        .list(outside, OUTSIDE_ANSWER);
    let zen = Zone::new("zen.test", Dataset::Ip4Set)
        .with_test_point()
        .list(bot, BL_ANSWER);
    let own = SocketAddr::new(OWN_DNS.into(), 53);
    let lists = Rbldnsd::start(&bed.server, own, &[zen, odd.clone()])
        .expect("starting rbldnsd for zen.test and odd.test");
    let pin = PinDir::new("revoke");
    let config = dns
        .config("zen.test=127.0.0.[2..11]*4, odd.test=10.0.0.[1..3]*5", own)
        .with_kernel_layer(bed)
        .set("kernel_dnsbl_threshold", "4")
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    // The bot: rank 4 on an answer inside 127/8, denied in the kernel at first contact.
    let mut client = bed.connect(bot);
    client.engine_greeting();
    let tag = client.tag();
    daemon.expect_line(&format!("DNSBL rank 4 for {tag}"));
    daemon.expect_line(&format!(
        "KERNEL DENY [{bot}] for {DENY_TTL_SECS}s after 1 failure: DNSBL rank 4"
    ));
    client.quit();
    let list = deny_list(bed, &pin);
    assert!(
        dynamic_deny(&list, bot).is_some(),
        "{bot} is not in the deny list:\n{list}"
    );

    // The client listed outside 127/8: rank 5 and refused in SMTP as postscreen would, on
    // each of two connections; the kernel never denies it, and a third SYN still gets in.
    for _ in 0..2 {
        let mut client = bed.connect(outside);
        client.engine_greeting();
        let (reply, noqueue) = refused_rcpt(&mut client);
        assert_eq!(
            reply,
            [format!(
                "550 5.7.1 Service unavailable; client [{outside}] blocked using odd.test"
            )]
        );
        let tag = client.tag();
        client.quit();
        daemon.expect_line(&format!(
            "addr {outside} listed by domain odd.test as {OUTSIDE_ANSWER}"
        ));
        daemon.expect_line(&format!("DNSBL rank 5 for {tag}"));
        daemon.expect_line(&noqueue);
        daemon.expect_line(&format!("DISCONNECT {tag}"));
    }
    let next = connect_from(&bed.client, outside, bed.smtp_addr(outside), DROP_WAIT)
        .expect("a third connection attempt");
    assert_eq!(next, ConnectOutcome::Connected, "{}", daemon.log());
    assert_eq!(dynamic_deny(&deny_list(bed, &pin), outside), None);
    assert!(
        !daemon
            .lines()
            .iter()
            .any(|line| line.starts_with(&format!("KERNEL DENY [{outside}]"))),
        "{}",
        daemon.log()
    );

    // zen.test goes bad: the same address now answers 127.255.255.254 for everyone.
    drop(lists);
    let zen = Zone::new("zen.test", Dataset::Ip4Trie)
        .list("0.0.0.0/1", error)
        .list("128.0.0.0/1", error);
    let _lists = Rbldnsd::start(&bed.server, own, &[zen, odd])
        .expect("restarting rbldnsd with zen.test answering an error code");
    // The next client's lookup suspends the list, and the bot's deny goes with it.
    let clean = bed.v4(CLEAN);
    let mut client = bed.connect(clean);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    daemon.wait_for("zen.test's suspension", |line| {
        line.starts_with("warning: dnsbl zen.test suspended: it answers 127.255.255.254")
    });
    daemon.expect_line(&format!(
        "KERNEL DENY revoked [{bot}]: list zen.test suspended"
    ));
    drop(client);
    let list = deny_list(bed, &pin);
    assert_eq!(dynamic_deny(&list, bot), None, "{list}");
    // Its next SYN reaches the daemon again.
    let mut client = bed.connect(bot);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    let connected = format!("CONNECT from {} ", client.tag());
    drop(client);
    daemon.wait_for(&connected, |line| line.starts_with(&connected));
    assert_eq!(daemon.connect_ports(bot).len(), 2, "{}", daemon.log());
    let revoked = daemon
        .lines()
        .into_iter()
        .filter(|line| line.starts_with("KERNEL DENY revoked"))
        .count();
    assert_eq!(revoked, 1, "{}", daemon.log());
}

/// The repeat rule on DNSBL failures alone: a client `zen.test` lists (weight 3, at
/// `dnsbl_threshold`, no `kernel_dnsbl_threshold`) fails twice and is denied in the kernel
/// after 2 failures. When `zen.test` starts answering 127.255.255.254, both failures lose
/// their ground, and the deny is revoked.
#[test]
fn a_repeat_deny_on_a_lists_answers_is_revoked_when_the_list_is_suspended() {
    if !require_root("a_repeat_deny_on_a_lists_answers_is_revoked_when_the_list_is_suspended") {
        return;
    }
    let error: Ipv4Addr = "127.255.255.254".parse().unwrap();
    let dns = DnsBed::new("repeatrev", &[RANK_4, CLEAN], &[]);
    let bed = &dns.bed;
    let bot = bed.v4(RANK_4);
    let zen = Zone::new("zen.test", Dataset::Ip4Set)
        .with_test_point()
        .list(bot, BL_ANSWER);
    let own = SocketAddr::new(OWN_DNS.into(), 53);
    let lists = Rbldnsd::start(&bed.server, own, &[zen]).expect("starting rbldnsd for zen.test");
    let pin = PinDir::new("repeatrev");
    let config = dns
        .config("zen.test=127.0.0.[2..11]*3", own)
        .with_kernel_layer(bed)
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    for _ in 0..2 {
        let mut client = bed.connect(bot);
        client.engine_greeting();
        let (reply, _) = refused_rcpt(&mut client);
        assert_eq!(
            reply,
            [format!(
                "550 5.7.1 Service unavailable; client [{bot}] blocked using zen.test"
            )]
        );
        let tag = client.tag();
        client.quit();
        daemon.expect_line(&format!("DNSBL rank 3 for {tag}"));
    }
    daemon.expect_line(&format!(
        "KERNEL DENY [{bot}] for {DENY_TTL_SECS}s after 2 failures: DNSBL"
    ));
    let list = deny_list(bed, &pin);
    assert!(
        dynamic_deny(&list, bot).is_some_and(|entry| entry.contains("failures=2")),
        "{bot} is not in the deny list:\n{list}"
    );

    drop(lists);
    let zen = Zone::new("zen.test", Dataset::Ip4Trie)
        .list("0.0.0.0/1", error)
        .list("128.0.0.0/1", error);
    let _lists = Rbldnsd::start(&bed.server, own, &[zen])
        .expect("restarting rbldnsd with zen.test answering an error code");
    let mut client = bed.connect(bed.v4(CLEAN));
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    daemon.expect_line(&format!(
        "KERNEL DENY revoked [{bot}]: list zen.test suspended"
    ));
    drop(client);
    let list = deny_list(bed, &pin);
    assert_eq!(dynamic_deny(&list, bot), None, "{list}");
    let next = connect_from(&bed.client, bot, bed.smtp_addr(bot), DROP_WAIT)
        .expect("a connection attempt after the revocation");
    assert_eq!(next, ConnectOutcome::Connected, "{}", daemon.log());
}

#[test]
fn dnsbl_check_shows_each_answer_the_score_and_the_verdict() {
    if !require_root("dnsbl_check_shows_each_answer_the_score_and_the_verdict") {
        return;
    }
    let dns = DnsBed::new("check", &[], &[]);
    let bed = &dns.bed;
    let config = dns
        .config(LAB_SITES, LOCAL_DNS)
        .write(bed, "smtp-screen.toml");
    let check = |addr: IpAddr| dnsbl_check(bed, &config, addr);

    let listed = bed.v4(RANK_4);
    assert_eq!(
        check(listed),
        [
            format!(
                "{}: listed as 127.0.0.2 (ttl 5m)",
                query_name(listed, "bl.test")
            ),
            "  bl.test=127.0.0.[2..11]*3: matches, weight 3".to_string(),
            format!(
                "{}: listed as 127.0.0.4 (ttl 5m)",
                query_name(listed, "bl2.test")
            ),
            "  bl2.test: matches, weight 1".to_string(),
            format!("{}: not listed", query_name(listed, "wl.test")),
            "  wl.test=127.0.[0..255].[1..3]*-5: no match".to_string(),
            format!(
                "score 4 for {listed}: listed (rank 4 >= dnsbl_threshold 3), reply names \
                 {BL_SHOWN}"
            ),
        ]
    );

    let vouched = bed.v4(DNSWL);
    assert_eq!(
        check(vouched),
        [
            format!("{}: not listed", query_name(vouched, "bl.test")),
            "  bl.test=127.0.0.[2..11]*3: no match".to_string(),
            format!("{}: not listed", query_name(vouched, "bl2.test")),
            "  bl2.test: no match".to_string(),
            format!(
                "{}: listed as 127.0.1.2 (ttl 5m)",
                query_name(vouched, "wl.test")
            ),
            "  wl.test=127.0.[0..255].[1..3]*-5: matches, weight -5".to_string(),
            format!("score -5 for {vouched}: allowlisted by DNSWL (rank <= -1), for 2m"),
        ]
    );

    let clean = bed.v4(CLEAN);
    assert_eq!(
        check(clean),
        [
            format!("{}: not listed", query_name(clean, "bl.test")),
            "  bl.test=127.0.0.[2..11]*3: no match".to_string(),
            format!("{}: not listed", query_name(clean, "bl2.test")),
            "  bl2.test: no match".to_string(),
            format!("{}: not listed", query_name(clean, "wl.test")),
            "  wl.test=127.0.[0..255].[1..3]*-5: no match".to_string(),
            format!("score 0 for {clean}: passes (rank below dnsbl_threshold 3), for 2m"),
        ]
    );
}

/// `smtp-screen dnsbl check ADDR --config FILE` in the server namespace; its stdout lines.
fn dnsbl_check(bed: &Bed, config: &Path, addr: IpAddr) -> Vec<String> {
    let bin = smtp_screen_bin().expect("the smtp-screen binary");
    let mut cmd = bed.server.command(bin);
    cmd.args(["dnsbl", "check"])
        .arg(addr.to_string())
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1");
    run_within(&mut cmd, TOOL_LIMIT)
        .unwrap_or_else(|e| panic!("smtp-screen dnsbl check {addr}: {e}"))
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn reversed_names_are_written_as_dnsbls_expect_them() {
    assert_eq!(
        query_name("192.0.2.40".parse().unwrap(), "bl.test"),
        "40.2.0.192.bl.test"
    );
    let v6: Ipv6Addr = "2001:db8::25".parse().unwrap();
    assert_eq!(
        query_name(v6.into(), "bl.test"),
        "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
    );
}

/// The daemon's UDP sockets: a DNS lookup in flight holds one (hickory asks each query from a
/// socket of its own), so they count the lookups the kernel sees.
fn udp_sockets(daemon: &Daemon) -> usize {
    let pid = daemon.pid();
    let mut inodes = std::collections::HashSet::new();
    for table in ["udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/net/{table}: {e}"));
        // The tenth field of each socket's line is its inode.
        inodes.extend(
            text.lines()
                .skip(1)
                .filter_map(|line| line.split_whitespace().nth(9))
                .map(str::to_owned),
        );
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .filter(|inode| inodes.contains(inode))
        .count()
}

/// The `in_flight=N` of `list` in the daemon's `dnsbl.status`, once written.
fn status_in_flight(bed: &Bed, list: &str) -> Option<u64> {
    let text = std::fs::read_to_string(bed.scratch.path().join("state/dnsbl.status")).ok()?;
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(list))?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("in_flight="))?
        .parse()
        .ok()
}

/// Polls `what` for up to `limit` until it holds.
fn within(limit: Duration, mut what: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !what() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The flood's client addresses: host numbers 100 to 249 of the bed's network.
const FLOOD_HOSTS: std::ops::RangeInclusive<u8> = 100..=249;

#[test]
fn a_hang_up_flood_from_rotating_addresses_leaves_no_lookup_running() {
    if !require_root("a_hang_up_flood_from_rotating_addresses_leaves_no_lookup_running") {
        return;
    }
    let hosts: Vec<u8> = FLOOD_HOSTS.collect();
    let dns = DnsBed::new(
        "hangup-flood",
        &hosts,
        &[Zone::new("dead.test", Dataset::Ip4Set).with_test_point()],
    );
    let bed = &dns.bed;
    let forwarder = DnsForwarder::start(&bed.server, DNS_FORWARDER, LOCAL_DNS)
        .expect("starting the DNS forwarder");
    // The list answers its test points (the health check keeps it) and never a client.
    for &host in &hosts {
        forwarder.swallow(&query_name(bed.v4(host), "dead.test"));
    }
    let pin = PinDir::new("hangup-flood");
    // Lookups that would each hold their socket for half a minute; the status file written
    // every second.
    let config = dns
        .config("dead.test*5", DNS_FORWARDER)
        .set("dnsbl_timeout", quoted("30s"))
        .set("deny_sweep_interval", quoted("1s"))
        .write(bed, "smtp-screen.toml");
    let mut daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    // Each client gets the teaser, waits until its query has reached the DNS server (the
    // lookup is in flight), and hangs up.
    let flood = |round: usize| {
        for &host in &hosts {
            let name = query_name(bed.v4(host), "dead.test");
            let asked = forwarder.count(&name);
            let mut client = bed.connect(bed.v4(host));
            assert_eq!(client.line(REPLY_WAIT), TEASER, "round {round}");
            assert!(
                within(REPLY_WAIT, || forwarder.count(&name) > asked),
                "round {round}: {name} was never asked"
            );
        }
    };
    let settled = |daemon: &Daemon| {
        within(Duration::from_secs(5), || {
            udp_sockets(daemon) == 0 && status_in_flight(bed, "dead.test") == Some(0)
        })
    };
    flood(0);
    assert!(
        settled(&daemon),
        "after the first round: {} UDP sockets, status in_flight={:?}",
        udp_sockets(&daemon),
        status_in_flight(bed, "dead.test")
    );
    let before = daemon.rss_kib();
    let rounds = 3;
    for round in 1..=rounds {
        flood(round);
    }
    let asked = hosts
        .iter()
        .map(|&host| forwarder.count(&query_name(bed.v4(host), "dead.test")))
        .sum::<usize>();
    let clients = hosts.len() * (rounds + 1);
    assert!(
        asked >= clients,
        "{asked} queries for {clients} clients: not every client's lookup was made"
    );
    // Every lookup ended with its connection, long before dnsbl_timeout.
    assert!(
        settled(&daemon),
        "{} UDP sockets and status in_flight={:?} five seconds after {clients} hang-ups",
        udp_sockets(&daemon),
        status_in_flight(bed, "dead.test")
    );
    let after = daemon.rss_kib();
    eprintln!(
        "RSS {before} KiB before {} hang-ups, {after} KiB after",
        clients - hosts.len()
    );
    assert!(
        after <= before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert!(
        !daemon.log().contains("dnsblog reply timeout"),
        "a cancelled lookup was reported:\n{}",
        daemon.log()
    );
    daemon.assert_running();
}

#[test]
fn beyond_dnsbl_lookup_limit_a_new_client_is_scored_as_dns_failed() {
    if !require_root("beyond_dnsbl_lookup_limit_a_new_client_is_scored_as_dns_failed") {
        return;
    }
    let hosts = [110, 111, 112, 113];
    let dns = DnsBed::new(
        "lookup-limit",
        &hosts,
        &[Zone::new("dead.test", Dataset::Ip4Set).with_test_point()],
    );
    let bed = &dns.bed;
    let forwarder = DnsForwarder::start(&bed.server, DNS_FORWARDER, LOCAL_DNS)
        .expect("starting the DNS forwarder");
    let names: Vec<String> = hosts
        .iter()
        .map(|&host| query_name(bed.v4(host), "dead.test"))
        .collect();
    for name in &names {
        forwarder.swallow(name);
    }
    let pin = PinDir::new("lookup-limit");
    let config = dns
        .config("dead.test*5", DNS_FORWARDER)
        .set("dnsbl_timeout", quoted("30s"))
        .set("dnsbl_lookup_limit", "2")
        .set("deny_sweep_interval", quoted("1s"))
        .set("greet_wait", quoted("${stress?{5}:{5}}s"))
        .write(bed, "smtp-screen.toml");
    let daemon = Daemon::start(bed, &pin, &config, "daemon.log");

    // Two clients in the greet wait hold the two lookups the limit allows.
    let holders: Vec<Client> = hosts[..2]
        .iter()
        .zip(&names)
        .map(|(&host, name)| {
            let mut client = bed.connect(bed.v4(host));
            assert_eq!(client.line(REPLY_WAIT), TEASER);
            assert!(within(REPLY_WAIT, || forwarder.count(name) == 1), "{name}");
            client
        })
        .collect();
    // The third is scored at once as if the list had failed: never asked, not listed.
    let third = bed.v4(hosts[2]);
    let mut client = bed.connect(third);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    daemon.expect_line(&format!(
        "warning: psc_dnsbl_request: 2 lookups in flight, the dnsbl_lookup_limit: \
         DNS lookups for {third} count as failed"
    ));
    drop(client);
    assert_eq!(forwarder.count(&names[2]), 0, "{} was asked", names[2]);
    // The status shows the two lookups (so that the fall to 0 below is news, not an old
    // file), then the holders hang up: their lookups end, and the next client is asked for.
    assert!(
        within(Duration::from_secs(5), || status_in_flight(
            bed,
            "dead.test"
        ) == Some(2)),
        "status in_flight={:?}",
        status_in_flight(bed, "dead.test")
    );
    drop(holders);
    assert!(
        within(Duration::from_secs(5), || status_in_flight(
            bed,
            "dead.test"
        ) == Some(0)),
        "status in_flight={:?}",
        status_in_flight(bed, "dead.test")
    );
    let mut client = bed.connect(bed.v4(hosts[3]));
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    assert!(
        within(REPLY_WAIT, || forwarder.count(&names[3]) == 1),
        "{} was not asked",
        names[3]
    );
    drop(client);
}
