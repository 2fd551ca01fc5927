//! smtp-screen as a drop-in for postscreen in front of Postfix (`handoff = "postfix"`), end to
//! end: a private Postfix in the server namespace with smtpd's `pass` service and no smtpd
//! listening on a port, as in a postscreen setup; `smtp-screen run` in the same namespace on
//! port 25, handing every passed client's socket to `private/smtpd` as the mail owner
//! (`user = "postfix"`); clients in the client namespace, each role from an address of its
//! own.
//!
//! What the tests look at is what a client received, word for word, the daemon's postscreen
//! log lines, what smtpd logged (its `connect from unknown[address]` names the client smtpd
//! learned from the hand-off) and what Postfix delivered. smtpd is reachable only through the
//! hand-off, so every smtpd `connect from` line is a client smtp-screen let through.
//!
//! The harness is `screen_tests::daemon` and `screen_tests::postfix`; the daemon binary is the
//! one cargo built next to the test (`cargo build -p screen-user` first), or the one named in
//! `SMTP_SCREEN_BIN`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use screen_tests::{
    daemon::{
        BACKEND_GREETING, Bed, CLIENT_HELO, DELIVERY_WAIT, Daemon, DaemonConfig, ENGINE_GREETING,
        GREET_WAIT, LOG_WAIT, MYHOSTNAME, PROMPT, REPLY_WAIT, Received, SENDER, TEASER, quoted,
        rcpt_rejected,
    },
    ensure_packages,
    netns::{Netns, PinDir, command_in, output_within},
    postfix::{MAIL_DOMAIN, Postfix, PostfixConfig},
    require_root,
};

/// The account the daemon runs as: Postfix's mail owner, the only one besides root that may
/// reach `private/smtpd`.
const MAIL_OWNER: &str = "postfix";

/// The program behind the one `inet` listener every harness instance has. smtpd must be
/// reachable only through its pass service, so the listener runs something that is not smtpd,
/// on the server namespace's loopback, out of the clients' reach; nothing connects to it.
const IDLE_INET_COMMAND: &str = "discard";
const IDLE_INET_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10025);

/// How long master may take to create the pass service's socket once Postfix runs.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// Upper bound for one `postfix` command run by the tests themselves.
const POSTFIX_LIMIT: Duration = Duration::from_secs(30);

/// Replies to a client whose hand-off failed: before any teaser, and after one (X21 mode).
const SERVER_PORTS_BUSY: &str = "421 4.3.2 All server ports are busy";
const NO_SYSTEM_RESOURCES: &str = "421 4.3.2 No system resources";
/// What a pregreeter hears at RCPT with `greet_action = "enforce"`.
const PROTOCOL_ERROR: &str = "550 5.5.1 Protocol error";

/// A bed whose server namespace runs Postfix with smtpd's pass service, and smtp-screen in
/// front of it handing clients over. Fields drop in order: daemon, pins, Postfix, namespaces.
struct PassBed {
    daemon: Daemon,
    _pin: PinDir,
    postfix: Postfix,
    bed: Bed,
}

impl PassBed {
    fn start(tag: &str, hosts: &[u8]) -> Self {
        ensure_packages(&["postfix", "swaks"]).expect("postfix and swaks");
        let bed = Bed::new(tag, hosts);
        let config = PostfixConfig::new(IDLE_INET_ADDR)
            .myhostname(MYHOSTNAME)
            .inet_service("1", IDLE_INET_COMMAND)
            .smtpd_pass_service();
        let postfix = Postfix::start(&bed.server, &config).expect("starting Postfix");
        let socket = postfix
            .wait_for_pass_socket("smtpd", SOCKET_WAIT)
            .expect("smtpd's pass service socket");
        let pin = PinDir::new(tag);
        let config = DaemonConfig::new(&bed)
            .set("handoff", quoted("postfix"))
            .set("postfix_pass_socket", quoted(socket.display()))
            .set("user", quoted(MAIL_OWNER))
            .set("greet_action", quoted("enforce"))
            .write(&bed, "smtp-screen.toml");
        let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
        Self {
            daemon,
            _pin: pin,
            postfix,
            bed,
        }
    }

    /// A whole mail transaction with swaks from `src`; returns the lines it received.
    fn send_mail(&self, src: IpAddr, marker: &str) -> Vec<String> {
        let swaks = self.bed.swaks_message(src, marker, &[]);
        swaks.assert_success();
        let received = swaks.received();
        assert!(
            received
                .iter()
                .any(|line| line.starts_with("250 2.0.0 Ok: queued as ")),
            "smtpd did not queue the message from {src}:\n{}",
            swaks.transcript()
        );
        assert!(
            self.postfix.wait_for_mail(marker, DELIVERY_WAIT),
            "the message from {src} was not delivered; Postfix log:\n{}",
            self.postfix.log()
        );
        received
    }

    /// How many sessions smtpd logged for `client`.
    fn smtpd_connects(&self, client: IpAddr) -> usize {
        self.postfix
            .log()
            .lines()
            .filter(|line| {
                line.contains("postfix/smtpd[")
                    && line.ends_with(&format!("]: connect from unknown[{client}]"))
            })
            .count()
    }

    /// Waits until smtpd has logged `count` sessions for `client`.
    fn expect_smtpd_connects(&self, client: IpAddr, count: usize) {
        let deadline = Instant::now() + LOG_WAIT;
        while self.smtpd_connects(client) < count {
            assert!(
                Instant::now() < deadline,
                "smtpd logged {} of {count} sessions from {client}:\n{}",
                self.smtpd_connects(client),
                self.postfix.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(self.smtpd_connects(client), count, "{}", self.postfix.log());
    }
}

/// Postfix started again by hand after the harness stopped it: the harness's guard no longer
/// stops an instance it stopped once, so this one does, before that guard removes its files.
struct Restarted {
    netns: PathBuf,
    config_dir: PathBuf,
}

impl Restarted {
    fn start(netns: &Netns, postfix: &Postfix) -> Self {
        let restarted = Self {
            netns: netns.path(),
            config_dir: postfix.config_dir(),
        };
        // `postfix start` returns once master is up and listening on every service.
        restarted.postfix("start").expect("restarting Postfix");
        restarted
    }

    fn postfix(&self, verb: &str) -> Result<(), String> {
        let mut cmd = command_in(&self.netns, "postfix");
        cmd.arg("-c").arg(&self.config_dir).arg(verb);
        let out = output_within(&mut cmd, POSTFIX_LIMIT).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "postfix {verb} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        // `postfix stop` waits for master to exit; anything left dies with the namespace.
        if let Err(e) = self.postfix("stop") {
            eprintln!("warning: stopping the restarted Postfix: {e}");
        }
    }
}

/// The credentials line `name` (`Uid` or `Gid`) of `/proc/PID/status`: real, effective,
/// saved and file-system ids.
fn credentials(pid: u32, name: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    assert!(
        status.lines().next() == Some("Name:\tsmtp-screen"),
        "process {pid} is not the daemon:\n{status}"
    );
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} line in /proc/{pid}/status"))
        .split_whitespace()
        .map(|id| id.parse().expect("a numeric id"))
        .collect()
}

#[test]
fn passed_clients_are_handed_to_smtpd_and_pregreeters_never_reach_it() {
    if !require_root("passed_clients_are_handed_to_smtpd_and_pregreeters_never_reach_it") {
        return;
    }
    let site = PassBed::start("handoff", &[10, 11]);
    let (good, pregreeter) = (site.bed.v4(10), site.bed.v4(11));

    // The daemon opened its sockets as root and serves as the mail owner.
    let owner = screen_user::privileges::lookup(MAIL_OWNER).expect("the postfix account");
    let pid = site.daemon.pid();
    assert_eq!(credentials(pid, "Uid"), [owner.uid; 4], "the daemon's uids");
    assert_eq!(credentials(pid, "Gid"), [owner.gid; 4], "the daemon's gids");

    // First contact: the teaser and smtpd's own 220 form one greeting, smtpd takes the mail
    // and knows the client by its real address.
    let marker = format!("handed to smtpd from {good}");
    let received = site.send_mail(good, &marker);
    assert_eq!(
        received.get(..2),
        Some(&[TEASER.to_string(), BACKEND_GREETING.to_string()][..]),
        "the teaser and smtpd's 220 must form one greeting: {received:?}"
    );
    let tag = site.daemon.new_session_tag(good, &[]);
    site.daemon.expect_line(&format!("PASS NEW {tag}"));
    site.expect_smtpd_connects(good, 1);
    let header = format!("from {CLIENT_HELO} (unknown [{good}])");
    assert!(
        site.postfix.mailbox().contains(&header),
        "no Received: header {header:?} in:\n{}",
        site.postfix.mailbox()
    );

    // Back again: the temporary allowlist hands it over at once, no teaser, no wait.
    let mut again = site.bed.connect(good);
    let connected = Instant::now();
    assert_eq!(again.line(REPLY_WAIT), BACKEND_GREETING, "no teaser");
    let waited = connected.elapsed();
    assert!(waited < PROMPT, "smtpd's 220 took {waited:?}");
    let tag = again.tag();
    again.quit();
    site.daemon.expect_line(&format!("PASS OLD {tag}"));
    site.expect_smtpd_connects(good, 2);

    // A bot that talks first stays in the dummy engine: no 220 for it, its recipient refused.
    let mut bot = site.bed.connect(pregreeter);
    assert_eq!(bot.line(REPLY_WAIT), TEASER);
    bot.send(b"EHLO zombie.example\r\n");
    let ehlo = bot.reply(GREET_WAIT + REPLY_WAIT);
    assert_eq!(
        ehlo.first().map(String::as_str),
        Some(format!("250-{MYHOSTNAME}").as_str()),
        "the engine answers the early EHLO, without a 220 first: {ehlo:?}"
    );
    assert_eq!(
        bot.command(&format!("MAIL FROM:<{SENDER}>")),
        ["250 2.1.0 Ok"]
    );
    assert_eq!(
        bot.command(&format!("RCPT TO:<user@{MAIL_DOMAIN}>")),
        [PROTOCOL_ERROR]
    );
    let tag = bot.tag();
    bot.quit();
    site.daemon.wait_for("the PREGREET line", |line| {
        line.starts_with("PREGREET 21 after ")
            && line.ends_with(&format!(" from {tag}: EHLO zombie.example\\r\\n"))
    });
    site.daemon.expect_line(&rcpt_rejected(
        &tag,
        PROTOCOL_ERROR,
        SENDER,
        "zombie.example",
    ));
    site.daemon.expect_line(&format!("DISCONNECT {tag}"));
    assert!(!site.daemon.has_line(&format!("PASS NEW {tag}")));
    assert_eq!(
        site.smtpd_connects(pregreeter),
        0,
        "the pregreeter reached smtpd:\n{}",
        site.postfix.log()
    );
    assert!(
        !site.postfix.log().contains(&format!("[{pregreeter}]")),
        "Postfix saw the pregreeter:\n{}",
        site.postfix.log()
    );
}

#[test]
fn while_smtpd_is_down_clients_hear_postscreens_421_and_get_through_once_it_is_back() {
    if !require_root(
        "while_smtpd_is_down_clients_hear_postscreens_421_and_get_through_once_it_is_back",
    ) {
        return;
    }
    let mut site = PassBed::start("outage", &[10, 12]);
    let (known, newcomer) = (site.bed.v4(10), site.bed.v4(12));

    // `known` is on the temporary allowlist before the outage.
    let mut client = site.bed.connect(known);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    assert_eq!(client.line(GREET_WAIT + REPLY_WAIT), BACKEND_GREETING);
    let tag = client.tag();
    client.quit();
    site.daemon.expect_line(&format!("PASS NEW {tag}"));

    // Postfix goes down; master leaves private/smtpd behind, with nobody listening.
    site.postfix.stop().expect("stopping Postfix");
    let refused = "warning: cannot connect to service private/smtpd: Connection refused";

    // A PASS OLD client gets no teaser, so the 421 is its whole greeting.
    let mut client = site.bed.connect(known);
    let connected = Instant::now();
    assert_eq!(client.line(REPLY_WAIT), SERVER_PORTS_BUSY);
    assert!(connected.elapsed() < PROMPT, "{:?}", connected.elapsed());
    assert_eq!(client.next(REPLY_WAIT), Received::Closed);
    site.daemon
        .expect_line(&format!("PASS OLD {}", client.tag()));

    // A new client already has the teaser: the engine completes the greeting and answers its
    // next command with the 421, never `220-` followed by `421`.
    let mut client = site.bed.connect(newcomer);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    assert_eq!(client.line(GREET_WAIT + REPLY_WAIT), ENGINE_GREETING);
    assert_eq!(
        client.command(&format!("EHLO {CLIENT_HELO}")),
        [NO_SYSTEM_RESOURCES]
    );
    assert_eq!(client.next(REPLY_WAIT), Received::Closed);
    let tag = client.tag();
    site.daemon.expect_line(&format!("PASS NEW {tag}"));
    site.daemon.expect_line(&format!("DISCONNECT {tag}"));
    let warnings = site
        .daemon
        .lines()
        .into_iter()
        .filter(|line| line == refused)
        .count();
    assert_eq!(
        warnings,
        2,
        "one warning per failed hand-off:\n{}",
        site.daemon.log()
    );
    assert_eq!(site.smtpd_connects(known), 1);
    assert_eq!(site.smtpd_connects(newcomer), 0);

    // Postfix is back: both clients passed before, so both go straight to smtpd, and their
    // mail gets through.
    let _restarted = Restarted::start(&site.bed.server, &site.postfix);
    for (client, old_passes, sessions) in [(known, 2, 2), (newcomer, 1, 1)] {
        let marker = format!("after the outage, from {client}");
        let received = site.send_mail(client, &marker);
        assert_eq!(
            received.first().map(String::as_str),
            Some(BACKEND_GREETING),
            "{received:?}"
        );
        let old = site
            .daemon
            .lines()
            .into_iter()
            .filter(|line| line.starts_with(&format!("PASS OLD [{client}]:")))
            .count();
        assert_eq!(
            old,
            old_passes,
            "PASS OLD for {client}:\n{}",
            site.daemon.log()
        );
        site.expect_smtpd_connects(client, sessions);
    }
    let warnings = site
        .daemon
        .lines()
        .into_iter()
        .filter(|line| line.starts_with("warning: "))
        .count();
    assert_eq!(
        warnings,
        2,
        "no new warnings once Postfix is back:\n{}",
        site.daemon.log()
    );
    site.daemon.assert_running();
}
