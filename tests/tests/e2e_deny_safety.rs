//! What the kernel layer will never do, end to end: the daemon with the XDP program attached
//! in a server namespace, clients in a client namespace, and the kernel's deny state read with
//! `smtp-screen deny list`. Each test shows one guarantee of README's "What the kernel layer
//! will never do": a deny never covers a permitted neighbour; a flood of denies pauses the
//! policy; a source the kernel denies gets no service where it slips past the program.

use std::{net::IpAddr, path::Path, thread, time::Duration};

use screen_tests::{
    daemon::{
        BACKEND_GREETING, Bed, Client, DROP_WAIT, Daemon, DaemonConfig, REPLY_WAIT, SMTP_PORT,
        TEASER, TOOL_LIMIT, deny_list, dynamic_deny, dynamic_deny_of, quoted, screen_cli,
    },
    netns::{ConnectOutcome, PinDir, connect_from, run_within},
    require_root,
};

/// What a client the access list rejects gets with `denylist_action = drop`.
const DENYLIST_DROP: &str = "521 5.3.2 Service currently unavailable";

/// The kernel layer attached, the access table `table` after `permit_mynetworks`, and its
/// rejected clients dropped (and denied in the kernel at first contact).
fn dropping(bed: &Bed, table: &Path) -> DaemonConfig {
    DaemonConfig::new(bed)
        .with_kernel_layer(bed)
        .set(
            "access_list",
            quoted(format!("permit_mynetworks, cidr:{}", table.display())),
        )
        .set("denylist_action", quoted("drop"))
}

/// Connects from `src` and expects the denylist refusal, then the hang-up.
fn refused(bed: &Bed, daemon: &Daemon, src: IpAddr) {
    let mut client = bed.connect(src);
    assert_eq!(client.until_closed(REPLY_WAIT), [DENYLIST_DROP]);
    let tag = client.tag();
    daemon.expect_line(&format!("DENYLISTED {tag}"));
    daemon.expect_line(&format!("DISCONNECT {tag}"));
}

/// An IPv6 deny covers a prefix (`deny_v6_prefix`); it is never made when the prefix holds an
/// address the operator permits. The bed's clients share one /64 with the server, so the
/// prefix here is /124: ::10-::1f holds the bot and its permitted neighbour, ::30-::3f a bot
/// alone, which is denied as usual.
#[test]
fn a_permitted_ipv6_neighbour_still_connects_after_the_bot_beside_it_is_refused() {
    if !require_root("a_permitted_ipv6_neighbour_still_connects_after_the_bot_beside_it_is_refused")
    {
        return;
    }
    let bed = Bed::new("guard-v6", &[0x1d, 0x1e, 0x32]);
    let (neighbour, bot, lone_bot) = (bed.v6(0x1d), bed.v6(0x1e), bed.v6(0x32));
    let _postfix = bed.start_backend();
    let table = bed.write_table(
        "access.cidr",
        &[(neighbour, "permit"), (bot, "reject"), (lone_bot, "reject")],
    );
    let pin = PinDir::new("guard-v6");
    let config = dropping(&bed, &table)
        .set("deny_v6_prefix", "124")
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let prefix = |addr: IpAddr| {
        let IpAddr::V6(v6) = addr else { unreachable!() };
        let masked = u128::from(v6) & !0xf;
        format!("{}/124", std::net::Ipv6Addr::from(masked))
    };

    // The bot is refused in SMTP; the deny its /124 would need is not made.
    refused(&bed, &daemon, bot);
    daemon.expect_line(&format!(
        "KERNEL DENY refused for [{bot}] ({}): it covers {neighbour}/128, permitted by \
         mynetworks or access_list",
        prefix(bot)
    ));
    let list = deny_list(&bed, &pin);
    assert_eq!(dynamic_deny_of(&list, prefix(bot)), None, "{list}");

    // The permitted neighbour still connects, and gets the MTA at once.
    let mut client = bed.connect(neighbour);
    assert_eq!(client.line(REPLY_WAIT), BACKEND_GREETING);
    let tag = client.tag();
    client.quit();
    daemon.expect_line(&format!("ALLOWLISTED {tag}"));

    // The bot keeps its SMTP answer: its SYNs still reach the daemon.
    refused(&bed, &daemon, bot);

    // A bot whose prefix holds no one the operator permits is denied in the kernel.
    refused(&bed, &daemon, lone_bot);
    daemon.expect_line(&format!(
        "KERNEL DENY [{lone_bot}] for 3600s after 1 failure: denylisted"
    ));
    let list = deny_list(&bed, &pin);
    assert!(
        dynamic_deny_of(&list, prefix(lone_bot)).is_some(),
        "{} is not in the deny list:\n{list}",
        prefix(lone_bot)
    );
    let next = connect_from(&bed.client, lone_bot, bed.smtp_addr(lone_bot), DROP_WAIT)
        .expect("connection attempt");
    assert_eq!(next, ConnectOutcome::TimedOut);
}

/// `kernel_deny_rate_limit`: past that many new denies in a minute the kernel policy pauses
/// with one warning; the clients past the limit are refused in SMTP only, and reach the
/// daemon again.
#[test]
fn a_flood_of_denies_past_the_rate_limit_pauses_the_kernel_policy() {
    if !require_root("a_flood_of_denies_past_the_rate_limit_pauses_the_kernel_policy") {
        return;
    }
    const LIMIT: u8 = 3;
    let hosts: Vec<u8> = (60..66).collect();
    let bed = Bed::new("breaker", &hosts);
    let bots: Vec<IpAddr> = hosts.iter().map(|&h| bed.v4(h)).collect();
    let rules: Vec<(IpAddr, &str)> = bots.iter().map(|&b| (b, "reject")).collect();
    let table = bed.write_table("access.cidr", &rules);
    let pin = PinDir::new("breaker");
    let config = dropping(&bed, &table)
        .set("kernel_deny_rate_limit", LIMIT.to_string())
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    for &bot in &bots {
        refused(&bed, &daemon, bot);
    }
    let (denied, held) = bots.split_at(LIMIT.into());
    for &bot in denied {
        daemon.expect_line(&format!(
            "KERNEL DENY [{bot}] for 3600s after 1 failure: denylisted"
        ));
    }
    let paused = format!(
        "warning: kernel deny policy paused: more than {LIMIT} new kernel denies in a minute \
         (kernel_deny_rate_limit); clients are refused in SMTP only until the rate falls"
    );
    daemon.expect_line(&paused);
    thread::sleep(Duration::from_millis(300));
    let lines = daemon.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("kernel deny policy paused"))
            .count(),
        1,
        "the pause is announced once:\n{}",
        daemon.log()
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("KERNEL DENY ["))
            .count(),
        LIMIT as usize,
        "{}",
        daemon.log()
    );
    let list = deny_list(&bed, &pin);
    for &bot in denied {
        assert!(
            dynamic_deny(&list, bot).is_some(),
            "{bot} not denied:\n{list}"
        );
    }
    for &bot in held {
        assert_eq!(dynamic_deny(&list, bot), None, "{list}");
        // Still answered in SMTP: the SYN reached the daemon.
        refused(&bed, &daemon, bot);
    }
}

/// The program passes what it cannot see (here: a source arriving on loopback, where it is
/// not attached). The daemon reads the kernel's deny state itself at accept, so a source the
/// operator denied in the kernel is refused all the same, with `denylist_action`.
#[test]
fn a_source_the_kernel_denies_is_refused_at_accept_when_it_arrives_past_the_program() {
    if !require_root(
        "a_source_the_kernel_denies_is_refused_at_accept_when_it_arrives_past_the_program",
    ) {
        return;
    }
    let bed = Bed::new("past-xdp", &[70]);
    let (denied, clean) = (bed.v4(200), bed.v4(201));
    for addr in [denied, clean] {
        bed.server
            .add_address("lo", addr, 32)
            .expect("a loopback address in the server namespace");
    }
    let pin = PinDir::new("past-xdp");
    let config = DaemonConfig::new(&bed)
        .with_kernel_layer(&bed)
        .set("denylist_action", quoted("drop"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    screen_cli(&bed, &pin, &["deny", "add", &denied.to_string()]);
    let server = std::net::SocketAddr::new(bed.server_v4(), SMTP_PORT);

    let mut client = Client::connect_in(&bed.server, denied, server);
    assert_eq!(client.until_closed(REPLY_WAIT), [DENYLIST_DROP]);
    let tag = client.tag();
    daemon.expect_line(&format!("DENYLISTED {tag}"));

    // Another source on the same path is screened as usual.
    let mut other = Client::connect_in(&bed.server, clean, server);
    assert_eq!(other.line(REPLY_WAIT), TEASER);
}

/// The program screens SYNs to every destination on the interfaces it is attached to; where
/// one of them forwards other hosts' traffic, the daemon says so at start.
#[test]
fn an_attached_interface_that_forwards_is_named_in_a_warning_at_start() {
    if !require_root("an_attached_interface_that_forwards_is_named_in_a_warning_at_start") {
        return;
    }
    let bed = Bed::new("forwarding", &[80]);
    let iface = bed.server_iface().to_string();
    let setting = format!("net.ipv4.conf.{iface}.forwarding");
    let mut sysctl = bed.server.command("sysctl");
    sysctl.args(["-w", &format!("{setting}=1")]);
    run_within(&mut sysctl, TOOL_LIMIT).expect("sysctl in the server namespace");
    let pin = PinDir::new("forwarding");
    let config = DaemonConfig::new(&bed)
        .with_kernel_layer(&bed)
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let expected = format!("interface {iface} carries other hosts' traffic ({setting} = 1)");
    // Logged while the program is attached, before the daemon screens.
    assert!(daemon.log().contains(&expected), "{}", daemon.log());
}
