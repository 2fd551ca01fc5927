//! The kernel layer end to end: the real `smtp-screen` binary drives the real XDP program on a
//! veth pair between a client and a server network namespace, and real TCP connections show
//! what it does. A denied source's connect times out (drop) or is refused at once (RST), and the
//! server's listener never sees it; every other source connects.
//!
//! The binary is the one cargo built next to this test (`cargo build -p screen-user` first), or
//! the one named in `SMTP_SCREEN_BIN`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use screen_common::Stat;
use screen_tests::{
    daemon::Daemon,
    netns::{
        ConnectOutcome, Netns, PinDir, ScratchDir, TcpAcceptor, VethPair, connect_from,
        output_within, run_within, smtp_screen_bin, subnet_index,
    },
    require_root,
};

const SMTP_PORT: u16 = 25;
/// How long a connect waits before it counts as dropped: the SYN and its first retransmission
/// (one second later) both go unanswered.
const DROP_WAIT: Duration = Duration::from_millis(1500);
/// A refused connect must fail faster than any retransmission.
const REFUSED_WITHIN: Duration = Duration::from_millis(500);
/// How long the listener may lag behind a client that connected.
const ACCEPT_WAIT: Duration = Duration::from_secs(2);
/// Upper bound for one CLI command.
const CLI_LIMIT: Duration = Duration::from_secs(30);
/// Upper bound for the daemon to load, attach and report it in `status`.
const ATTACH_WAIT: Duration = Duration::from_secs(20);
/// Upper bound for a `--ttl 2s` entry to stop dropping, counted from when it was added.
const EXPIRY_WAIT: Duration = Duration::from_secs(6);
/// Upper bound for the daemon's one-second sweep to remove an expired entry.
const SWEEP_WAIT: Duration = Duration::from_secs(5);

/// What a connection attempt from a source must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Connects,
    /// Times out, and the listener never sees it.
    Dropped,
    /// Refused at once, and the listener never sees it (so the RST came from XDP).
    Refused,
}

use Expect::{Connects, Dropped, Refused};

fn v4(third: u8, host: u8) -> IpAddr {
    Ipv4Addr::new(10, 251, third, host).into()
}

/// An address in fd00:251:N::/48; `subnet` picks the /64 inside it.
fn v6(n: u8, subnet: u16, host: u16) -> IpAddr {
    Ipv6Addr::new(0xfd00, 0x251, n.into(), subnet, 0, 0, 0, host).into()
}

/// The client's source addresses in the native-mode test, one per role.
struct Sources {
    /// Never denied.
    allowed: IpAddr,
    /// Denied by a static /32.
    static_host: IpAddr,
    /// Denied by a static /24 that covers no other source (a /24 of its own).
    static_net: IpAddr,
    /// Denied by a dynamic entry with a long TTL.
    dynamic: IpAddr,
    /// Denied by a dynamic entry that expires within the test.
    short_lived: IpAddr,
    /// Denied by the list file that replaces the static set.
    listed: IpAddr,
    allowed6: IpAddr,
    /// Denied by a static /64.
    static6: IpAddr,
    /// Denied by a dynamic entry, which covers its /64.
    dynamic6: IpAddr,
    /// Denied by the list file.
    listed6: IpAddr,
}

impl Sources {
    fn new(n: u8) -> Self {
        Self {
            allowed: v4(n, 10),
            static_host: v4(n, 11),
            static_net: v4(n + 128, 20),
            dynamic: v4(n, 12),
            short_lived: v4(n, 13),
            listed: v4(n, 14),
            // Each in a /64 of its own: an IPv6 dynamic entry denies a whole /64.
            allowed6: v6(n, 0x10, 2),
            static6: v6(n, 0x11, 2),
            dynamic6: v6(n, 0x12, 2),
            listed6: v6(n, 0x13, 2),
        }
    }

    fn all(&self) -> Vec<IpAddr> {
        vec![
            self.allowed,
            self.static_host,
            self.static_net,
            self.dynamic,
            self.short_lived,
            self.listed,
            self.allowed6,
            self.static6,
            self.dynamic6,
            self.listed6,
        ]
    }
}

/// Client and server namespaces joined by a veth pair, with a port-25 listener for each
/// address family in the server. Fields drop in order: listeners, link, namespaces.
struct Testbed {
    listener_v4: TcpAcceptor,
    listener_v6: TcpAcceptor,
    veth: VethPair,
    server: Netns,
    client: Netns,
}

impl Testbed {
    /// The server has 10.251.N.1/24 and fd00:251:N::1/48; the client has `sources`. A client
    /// IPv4 address outside 10.251.N.0/24 gets an on-link route in the server, so that a /24
    /// can deny it alone.
    fn new(n: u8, sources: &[IpAddr]) -> Self {
        let client = Netns::create("c").expect("client netns");
        let server = Netns::create("s").expect("server netns");
        let veth = VethPair::create(&client, &server).expect("veth pair");
        let server_v4 = v4(n, 1);
        let server_v6 = v6(n, 0, 1);
        server
            .add_address(veth.b(), server_v4, 24)
            .expect("server IPv4 address");
        server
            .add_address(veth.b(), server_v6, 48)
            .expect("server IPv6 address");
        for &src in sources {
            match src {
                IpAddr::V4(addr) => {
                    client
                        .add_address(veth.a(), src, 24)
                        .expect("client IPv4 address");
                    let third = addr.octets()[2];
                    if third != n {
                        server
                            .ip([
                                "route",
                                "add",
                                &format!("10.251.{third}.0/24"),
                                "dev",
                                veth.b(),
                            ])
                            .expect("server route to a second client network");
                    }
                }
                IpAddr::V6(_) => client
                    .add_address(veth.a(), src, 48)
                    .expect("client IPv6 address"),
            }
        }
        let listener_v4 = TcpAcceptor::start(&server, SocketAddr::new(server_v4, SMTP_PORT))
            .expect("IPv4 listener");
        let listener_v6 = TcpAcceptor::start(&server, SocketAddr::new(server_v6, SMTP_PORT))
            .expect("IPv6 listener");
        Self {
            listener_v4,
            listener_v6,
            veth,
            server,
            client,
        }
    }

    fn client_iface(&self) -> &str {
        self.veth.a()
    }

    fn server_iface(&self) -> &str {
        self.veth.b()
    }

    fn listener_for(&self, src: IpAddr) -> &TcpAcceptor {
        match src {
            IpAddr::V4(_) => &self.listener_v4,
            IpAddr::V6(_) => &self.listener_v6,
        }
    }

    /// Connects from every source at once and checks each outcome, then reports every
    /// mismatch together.
    fn check(&self, cases: &[(IpAddr, Expect)]) {
        self.listener_v4.clear();
        self.listener_v6.clear();
        let results: Vec<_> = thread::scope(|scope| {
            let probes: Vec<_> = cases
                .iter()
                .map(|&(src, _)| {
                    scope.spawn(move || {
                        let started = Instant::now();
                        let dst = self.listener_for(src).addr();
                        let outcome = connect_from(&self.client, src, dst, DROP_WAIT);
                        (outcome, started.elapsed())
                    })
                })
                .collect();
            probes
                .into_iter()
                .map(|probe| probe.join().expect("connect thread"))
                .collect()
        });
        let mut wrong = Vec::new();
        for (&(src, expect), (outcome, elapsed)) in cases.iter().zip(results) {
            let outcome = outcome.unwrap_or_else(|e| panic!("connecting from {src}: {e}"));
            let listener = self.listener_for(src);
            let reached = match expect {
                Connects => listener.wait_for(src, ACCEPT_WAIT),
                Dropped | Refused => listener.has_accepted(src),
            };
            let as_expected = match expect {
                Connects => outcome == ConnectOutcome::Connected && reached,
                Dropped => outcome == ConnectOutcome::TimedOut && !reached,
                Refused => {
                    outcome == ConnectOutcome::Refused && elapsed < REFUSED_WITHIN && !reached
                }
            };
            if !as_expected {
                wrong.push(format!(
                    "{src}: expected {expect:?}, got {outcome:?} after {elapsed:.2?}; the listener {} it",
                    if reached { "saw" } else { "never saw" }
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "connection checks failed:\n{}",
            wrong.join("\n")
        );
    }

    /// Retries a connect from `src` until it succeeds, for at most `limit` from `since`.
    fn connects_again_before(&self, src: IpAddr, since: Instant, limit: Duration) -> bool {
        let dst = self.listener_for(src).addr();
        while since.elapsed() < limit {
            let attempt = connect_from(&self.client, src, dst, Duration::from_millis(1200))
                .unwrap_or_else(|e| panic!("connecting from {src}: {e}"));
            if attempt == ConnectOutcome::Connected {
                return true;
            }
        }
        false
    }

    /// `ip -d link show` of the server's end.
    fn server_link(&self) -> String {
        self.server
            .ip(["-d", "link", "show", "dev", self.server_iface()])
            .expect("ip link show")
    }
}

/// `smtp-screen --pin-dir DIR …` run inside a namespace.
struct SmtpScreen<'a> {
    bin: &'a Path,
    netns: &'a Netns,
    pin_dir: &'a Path,
}

impl<'a> SmtpScreen<'a> {
    fn new(bin: &'a Path, netns: &'a Netns, pin_dir: &'a PinDir) -> Self {
        Self {
            bin,
            netns,
            pin_dir: pin_dir.path(),
        }
    }

    fn output(&self, args: &[&str]) -> Output {
        let mut cmd = self.netns.command(self.bin);
        cmd.arg("--pin-dir")
            .arg(self.pin_dir)
            .args(args)
            .env("NO_COLOR", "1");
        output_within(&mut cmd, CLI_LIMIT)
            .unwrap_or_else(|e| panic!("running smtp-screen {args:?}: {e}"))
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "smtp-screen {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail with one error line; returns that line.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "smtp-screen {args:?} succeeded but must fail:\n{}{stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(
            errors.len(),
            1,
            "smtp-screen {args:?} must print one error line:\n{stderr}"
        );
        errors[0].to_string()
    }

    fn status(&self) -> Status {
        Status(self.ok(&["status"]))
    }

    /// `deny list` as `(prefix, "static" | "dynamic")`.
    fn deny_list(&self) -> Vec<(String, String)> {
        self.ok(&["deny", "list"])
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((words.next()?.to_string(), words.next()?.to_string()))
            })
            .collect()
    }

    fn denies(&self, prefix: &str, kind: &str) -> bool {
        self.deny_list()
            .iter()
            .any(|(p, k)| p == prefix && k == kind)
    }

    fn static_denies(&self) -> Vec<String> {
        let mut nets: Vec<String> = self
            .deny_list()
            .into_iter()
            .filter(|(_, kind)| kind == "static")
            .map(|(net, _)| net)
            .collect();
        nets.sort();
        nets
    }
}

/// The text of `smtp-screen status`.
struct Status(String);

/// One line of the `interfaces:` section.
#[derive(Debug, PartialEq, Eq)]
struct Attached {
    mode: String,
    prog_id: u32,
    link_id: u32,
}

impl Status {
    fn attachment(&self, iface: &str) -> Option<Attached> {
        let line = self
            .0
            .lines()
            .find(|line| line.split_whitespace().next() == Some(iface))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &[&str]| {
            words
                .windows(key.len() + 1)
                .find(|w| &w[..key.len()] == key)
                .map(|w| w[key.len()])
        };
        Some(Attached {
            mode: after(&["mode"])?.to_string(),
            prog_id: after(&["program", "id"])?.parse().ok()?,
            link_id: after(&["link", "id"])?.parse().ok()?,
        })
    }

    fn counter(&self, stat: Stat) -> u64 {
        self.0
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((words.next()?, words.next()?))
            })
            .find(|(name, _)| *name == stat.name())
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or_else(|| panic!("no counter {} in status:\n{}", stat.name(), self.0))
    }

    fn action(&self) -> &str {
        self.0
            .split(", ")
            .find_map(|part| part.strip_prefix("action "))
            .unwrap_or_else(|| panic!("no action in status:\n{}", self.0))
    }
}

/// `smtp-screen run` as the CLI of the test starts and watches it.
impl SmtpScreen<'_> {
    /// `smtp-screen run` with `config` in the server namespace, its log in `log`.
    fn run(&self, config: &Path, log: PathBuf) -> Daemon {
        Daemon::spawn(self.netns, self.bin, self.pin_dir, config, log)
    }

    /// Waits until `status` shows `iface` attached in `mode`.
    fn wait_attached(&self, daemon: &mut Daemon, iface: &str, mode: &str) -> Attached {
        let deadline = Instant::now() + ATTACH_WAIT;
        loop {
            daemon.assert_running();
            let out = self.output(&["status"]);
            if out.status.success() {
                let status = Status(String::from_utf8_lossy(&out.stdout).into_owned());
                if let Some(attached) = status.attachment(iface).filter(|a| a.mode == mode) {
                    return attached;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{iface} not attached in {mode} mode after {ATTACH_WAIT:?}; daemon log:\n{}",
                daemon.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn host_prefix(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(_) => format!("{addr}/32"),
        IpAddr::V6(_) => format!("{addr}/128"),
    }
}

/// The /64 of an IPv6 address, as the CLI prints it.
fn net64(addr: IpAddr) -> String {
    let IpAddr::V6(addr) = addr else {
        panic!("{addr} is not IPv6");
    };
    let s = addr.segments();
    format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
}

#[test]
fn daemon_cli_and_xdp_screen_real_connections_in_native_mode() {
    if !require_root("daemon_cli_and_xdp_screen_real_connections_in_native_mode") {
        return;
    }
    let bin = smtp_screen_bin().expect("the smtp-screen binary");
    let n = subnet_index();
    let src = Sources::new(n);
    let scratch = ScratchDir::create("native").expect("scratch directory");
    let bed = Testbed::new(n, &src.all());
    let pin = PinDir::new("native");
    let cli = SmtpScreen::new(&bin, &bed.server, &pin);
    let iface = bed.server_iface();

    let config = scratch
        .write(
            "smtp-screen.toml",
            format!(
                "interfaces = [\"{iface}\"]\nxdp_mode = \"native\"\nprotected_ports = [{SMTP_PORT}]\n\
                 kernel_action = \"drop\"\ndeny_sweep_interval = \"1s\"\n\
                 # The test's own listeners own port 25; the daemon's SMTP side is not under test.\n\
                 listen = [\"127.0.0.1:2525\"]\nstate_dir = \"{}\"\n",
                scratch.path().join("state").display()
            ),
        )
        .expect("config file");
    let mut daemon = cli.run(&config, scratch.path().join("daemon-1.log"));
    let first = cli.wait_attached(&mut daemon, iface, "native");

    // Attached, but nothing denied yet.
    let everyone: Vec<_> = src.all().into_iter().map(|a| (a, Connects)).collect();
    bed.check(&everyone);

    // One entry of each kind.
    let before = cli.status();
    let static_net = format!("10.251.{}.0/24", n + 128);
    let static6_net = net64(src.static6);
    cli.ok(&["deny", "add", &src.static_host.to_string()]);
    cli.ok(&["deny", "add", &static_net]);
    cli.ok(&["deny", "add", &static6_net]);
    cli.ok(&["deny", "add", &src.dynamic.to_string(), "--ttl", "10m"]);
    cli.ok(&["deny", "add", &src.dynamic6.to_string(), "--ttl", "10m"]);
    bed.check(&[
        (src.static_host, Dropped),
        (src.static_net, Dropped),
        (src.static6, Dropped),
        (src.dynamic, Dropped),
        (src.dynamic6, Dropped),
        (src.allowed, Connects),
        (src.short_lived, Connects),
        (src.listed, Connects),
        (src.allowed6, Connects),
        (src.listed6, Connects),
    ]);
    let after = cli.status();
    let moved = |stat| after.counter(stat) - before.counter(stat);
    assert!(
        moved(Stat::DropStatic) >= 3,
        "drop_static moved by {}",
        moved(Stat::DropStatic)
    );
    assert!(
        moved(Stat::DropDynamic) >= 2,
        "drop_dynamic moved by {}",
        moved(Stat::DropDynamic)
    );
    assert!(
        moved(Stat::Passed) >= 5,
        "passed moved by {}",
        moved(Stat::Passed)
    );
    assert_eq!(moved(Stat::RstStatic) + moved(Stat::RstDynamic), 0);
    let dynamic_host = host_prefix(src.dynamic);
    let dynamic6_net = net64(src.dynamic6);
    assert!(cli.denies(&host_prefix(src.static_host), "static"));
    assert!(cli.denies(&static_net, "static"));
    assert!(cli.denies(&static6_net, "static"));
    assert!(cli.denies(&dynamic_host, "dynamic"));
    assert!(cli.denies(&dynamic6_net, "dynamic"));

    // A short TTL: dropped at first, passed once expired, then swept from the map.
    let added = Instant::now();
    cli.ok(&["deny", "add", &src.short_lived.to_string(), "--ttl", "2s"]);
    let short_lived = host_prefix(src.short_lived);
    assert!(cli.denies(&short_lived, "dynamic"));
    bed.check(&[(src.short_lived, Dropped)]);
    assert!(
        bed.connects_again_before(src.short_lived, added, EXPIRY_WAIT),
        "{} still cannot connect {EXPIRY_WAIT:?} after a 2s entry was added",
        src.short_lived
    );
    let swept_by = Instant::now() + SWEEP_WAIT;
    while cli.denies(&short_lived, "dynamic") {
        assert!(
            Instant::now() < swept_by,
            "the daemon did not sweep the expired {short_lived}; daemon log:\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(200));
    }

    // The filter and its entries live in the kernel, not in the daemon.
    let killed = daemon.kill();
    assert!(!killed.success());
    bed.check(&[
        (src.static_host, Dropped),
        (src.dynamic, Dropped),
        (src.dynamic6, Dropped),
        (src.allowed, Connects),
    ]);
    assert!(cli.denies(&dynamic_host, "dynamic"));
    assert!(cli.denies(&dynamic6_net, "dynamic"));
    let mut daemon = cli.run(&config, scratch.path().join("daemon-2.log"));
    let second = cli.wait_attached(&mut daemon, iface, "native");
    assert_eq!(
        second.link_id, first.link_id,
        "the restarted daemon must reuse the pinned link"
    );
    bed.check(&[
        (src.static_host, Dropped),
        (src.dynamic, Dropped),
        (src.dynamic6, Dropped),
        (src.allowed, Connects),
    ]);
    assert!(cli.denies(&dynamic_host, "dynamic"));
    assert!(cli.denies(&dynamic6_net, "dynamic"));

    // Lifting entries.
    cli.ok(&["deny", "del", &src.static_host.to_string()]);
    cli.ok(&["deny", "del", &src.dynamic.to_string()]);
    bed.check(&[(src.static_host, Connects), (src.dynamic, Connects)]);
    assert!(!cli.denies(&host_prefix(src.static_host), "static"));
    assert!(!cli.denies(&dynamic_host, "dynamic"));

    // A list file replaces the static set in one step; dynamic entries stay.
    let listed6_net = net64(src.listed6);
    let list = scratch
        .write(
            "deny.list",
            format!(
                "# replacement\n{}/32 ; one host\n\n{listed6_net}\n",
                src.listed
            ),
        )
        .expect("list file");
    cli.ok(&["deny", "load", list.to_str().expect("UTF-8 path")]);
    let mut expected_static = vec![host_prefix(src.listed), listed6_net.clone()];
    expected_static.sort();
    assert_eq!(cli.static_denies(), expected_static);
    bed.check(&[
        (src.listed, Dropped),
        (src.listed6, Dropped),
        (src.dynamic6, Dropped),
        (src.static_net, Connects),
        (src.static6, Connects),
        (src.allowed, Connects),
    ]);

    // A bad line refuses the whole file and changes nothing.
    let bad = scratch
        .write(
            "bad.list",
            format!("{}\n{}/32\n10.251.{n}.300\n", src.static_host, src.dynamic),
        )
        .expect("bad list file");
    let error = cli.fails(&["deny", "load", bad.to_str().expect("UTF-8 path")]);
    assert!(error.contains(&format!("{}:3:", bad.display())), "{error}");
    assert!(error.contains(&format!("10.251.{n}.300")), "{error}");
    assert_eq!(cli.static_denies(), expected_static);
    bed.check(&[(src.static_host, Connects), (src.dynamic, Connects)]);

    // RST instead of drop. veth passes XDP_TX frames on to its peer only when the peer runs an
    // XDP program of its own (the kernel's veth_xdp_flush), as a NIC's TX ring would not
    // require; smtp-screen with empty lists on the client's end is such a pass-through program.
    let peer_pin = PinDir::new("peer");
    let peer_cli = SmtpScreen::new(&bin, &bed.client, &peer_pin);
    peer_cli.ok(&["load", "--iface", bed.client_iface(), "--mode", "native"]);
    let before = cli.status();
    cli.ok(&[
        "load", "--iface", iface, "--mode", "native", "--action", "rst",
    ]);
    let switched = cli.status();
    assert_eq!(switched.action(), "rst");
    assert_eq!(
        switched.attachment(iface).map(|a| a.link_id),
        Some(first.link_id),
        "load must swap the program into the pinned link"
    );
    bed.check(&[
        (src.listed, Refused),
        (src.listed6, Refused),
        (src.dynamic6, Refused),
        (src.allowed, Connects),
        (src.allowed6, Connects),
    ]);
    let after = cli.status();
    let moved = |stat| after.counter(stat) - before.counter(stat);
    assert!(
        moved(Stat::RstStatic) >= 2,
        "rst_static moved by {}",
        moved(Stat::RstStatic)
    );
    assert!(
        moved(Stat::RstDynamic) >= 1,
        "rst_dynamic moved by {}",
        moved(Stat::RstDynamic)
    );
    assert_eq!(moved(Stat::DropStatic) + moved(Stat::DropDynamic), 0);

    // Unload leaves nothing behind.
    daemon.stop_within(Duration::from_secs(5));
    assert!(bed.server_link().contains("xdp"), "attached until unloaded");
    cli.ok(&["unload"]);
    assert!(
        !pin.path().exists(),
        "{} survived unload",
        pin.path().display()
    );
    let link = bed.server_link();
    assert!(
        !link.contains("xdp"),
        "XDP still attached after unload:\n{link}"
    );
    peer_cli.ok(&["unload"]);
    assert!(!peer_pin.path().exists());
    bed.check(&[(src.listed, Connects), (src.dynamic6, Connects)]);

    // Bad input: a non-zero exit and one line that names the problem.
    let error = cli.fails(&["deny", "add", "10.0.0.1/8"]);
    assert!(error.contains("host bits"), "{error}");
    let nowhere = PinDir::new("nowhere");
    let nowhere_cli = SmtpScreen::new(&bin, &bed.server, &nowhere);
    let error = nowhere_cli.fails(&["load", "--iface", "nosuchif0"]);
    assert!(
        error.contains("no such network interface: nosuchif0"),
        "{error}"
    );
    let error = nowhere_cli.fails(&["status"]);
    assert!(
        error.contains(&format!("{} does not exist", nowhere.path().display())),
        "{error}"
    );
    assert!(!nowhere.path().exists());
}

/// The id in the first line of `bpftool prog show` (`42: xdp  name …`).
fn bpftool_prog_id(show: &str) -> u32 {
    show.split(':')
        .next()
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("no program id in {show:?}"))
}

#[test]
fn generic_mode_and_programs_attached_by_others() {
    if !require_root("generic_mode_and_programs_attached_by_others") {
        return;
    }
    let bin = smtp_screen_bin().expect("the smtp-screen binary");
    let n = subnet_index();
    let allowed = v4(n, 10);
    let denied = v4(n, 11);
    let scratch = ScratchDir::create("generic").expect("scratch directory");
    let bed = Testbed::new(n, &[allowed, denied]);
    let iface = bed.server_iface();
    let cli_for = |pin| SmtpScreen::new(&bin, &bed.server, pin);

    let first_pin = PinDir::new("gen1");
    let first = cli_for(&first_pin);
    first.ok(&["load", "--iface", iface, "--mode", "generic"]);
    first.ok(&["deny", "add", &denied.to_string()]);
    bed.check(&[(denied, Dropped), (allowed, Connects)]);
    let ours = first
        .status()
        .attachment(iface)
        .expect("attached after load");
    assert_eq!(ours.mode, "generic");

    // (a) Another pin directory must not take the interface over. --force cannot either: the
    // program is held by a BPF link, which the kernel will not detach through netlink.
    let second_pin = PinDir::new("gen2");
    let second = cli_for(&second_pin);
    let error = second.fails(&["load", "--iface", iface, "--mode", "generic"]);
    assert!(error.contains("refusing to replace"), "{error}");
    assert!(
        error.contains(&format!("program id {}", ours.prog_id)),
        "{error}"
    );
    let error = second.fails(&["load", "--iface", iface, "--mode", "generic", "--force"]);
    assert!(error.contains(iface), "{error}");
    assert_eq!(first.status().attachment(iface), Some(ours));
    bed.check(&[(denied, Dropped), (allowed, Connects)]);
    second.ok(&["unload"]);
    first.ok(&["unload"]);
    assert!(!bed.server_link().contains("xdp"));

    // (b) A program attached the legacy netlink way (here by bpftool) is replaced only with
    // --force.
    let foreign_pin = PinDir::new("foreign");
    foreign_pin.create().expect("foreign pin directory");
    let object = scratch
        .write("screen-ebpf.o", screen_user::kernel::OBJECT)
        .expect("eBPF object");
    let prog_pin = foreign_pin.path().join("prog");
    // No `type xdp`: it would apply to every program of the object, the relay's sk_skb
    // program too. The section names give each its type, and bpftool pins the first program,
    // the XDP one.
    let mut load = std::process::Command::new("bpftool");
    load.arg("prog").arg("load").arg(&object).arg(&prog_pin);
    run_within(&mut load, CLI_LIMIT).unwrap_or_else(|e| panic!("bpftool prog load: {e}"));
    let mut show = std::process::Command::new("bpftool");
    show.args(["prog", "show", "pinned"]).arg(&prog_pin);
    let out = output_within(&mut show, CLI_LIMIT).expect("bpftool prog show");
    let foreign_id = bpftool_prog_id(&String::from_utf8_lossy(&out.stdout));
    let mut attach = bed.server.command("bpftool");
    attach
        .args(["net", "attach", "xdpgeneric", "pinned"])
        .arg(&prog_pin)
        .args(["dev", iface]);
    run_within(&mut attach, CLI_LIMIT).unwrap_or_else(|e| panic!("bpftool net attach: {e}"));
    assert!(
        bed.server_link()
            .contains(&format!("prog/xdp id {foreign_id} ")),
        "{}",
        bed.server_link()
    );

    let third_pin = PinDir::new("gen3");
    let third = cli_for(&third_pin);
    let error = third.fails(&["load", "--iface", iface, "--mode", "generic"]);
    assert!(error.contains("refusing to replace"), "{error}");
    assert!(
        error.contains(&format!("program id {foreign_id}")),
        "{error}"
    );
    assert!(
        bed.server_link()
            .contains(&format!("prog/xdp id {foreign_id} "))
    );
    third.ok(&["load", "--iface", iface, "--mode", "generic", "--force"]);
    let replaced = third
        .status()
        .attachment(iface)
        .expect("attached after --force");
    assert_eq!(replaced.mode, "generic");
    assert_ne!(replaced.prog_id, foreign_id);
    assert!(
        bed.server_link()
            .contains(&format!("prog/xdp id {} ", replaced.prog_id)),
        "{}",
        bed.server_link()
    );
    third.ok(&["deny", "add", &denied.to_string()]);
    bed.check(&[(denied, Dropped), (allowed, Connects)]);
    third.ok(&["unload"]);
    assert!(!bed.server_link().contains("xdp"));
    drop(foreign_pin);
    assert!(!prog_pin.exists(), "the foreign program's pin survived");
}
