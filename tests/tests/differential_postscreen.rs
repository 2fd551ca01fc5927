//! smtp-screen against the real postscreen: the same scenarios, played by the same scripted
//! clients against both, must get the same decisions.
//!
//! Two sites, built alike and run side by side, each a client and a server network namespace
//! joined by a veth pair, with the same addresses (10.251.N.1 for the server, 10.251.N.H for
//! each client role), so that replies and log lines naming a client are comparable as they
//! are:
//!
//! - **postscreen**: Debian's Postfix 3.7 in its own private instance, master.cf as postscreen
//!   wants it (`smtp inet … 1 postscreen`, `smtpd pass`, `dnsblog unix … 0`, `tlsproxy`), and
//!   the postscreen settings of the lab in the postscreen reference (Appendix A) in main.cf;
//! - **smtp-screen**: `smtp-screen run` in front of a Postfix instance with the same main.cf and
//!   smtpd's pass service (`handoff = "postfix"`), its configuration made from the postscreen
//!   instance's `postconf -n` by `smtp-screen import-postfix`, with only what must differ
//!   between the two adjusted (see [`site_adjustments`]).
//!
//! Each server namespace has rbldnsd on its loopback serving the lab's DNS lists, and its own
//! `/etc/resolv.conf` naming it, as `ip netns exec` would give it: postscreen's dnsblog and
//! smtp-screen both use the system resolver, so both look the lists up the same way.
//!
//! For each scenario the test compares, per session, what the client received (every reply
//! line, and whether it came at once or only after a wait as long as most of the greet wait),
//! every line the screener logged about the session (`[address]:port`), in order (CONNECT, the
//! verdicts PASS NEW/OLD, PREGREET, DNSBL rank, DENYLISTED/ALLOWLISTED, NOQUEUE: reject,
//! COMMAND PIPELINING, NON-SMTP COMMAND, BARE NEWLINE, and DISCONNECT), and whether smtpd got
//! the client. Client ports and measured delays are the only things normalised away. Lines
//! that name no session are not compared: they differ by design (postscreen leaves `addr …
//! listed by domain …` to dnsblog, smtp-screen logs it itself; start-up and cache lines).
//! postscreen's own results are also held against what each scenario is about, so that the
//! two cannot agree on nothing.

use std::{
    fmt,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use screen_tests::{
    daemon::{Connection, Daemon, quoted, receive, tag_of, take_line},
    ensure_packages,
    netns::{
        Netns, PinDir, ScratchDir, VethPair, run_within, smtp_screen_bin, stream_from,
        subnet_index, with_resolv_conf,
    },
    postfix::{
        DNSBLOG_SERVICE, MAIL_DOMAIN, Postfix, PostfixConfig, SMTPD_PASS_SERVICE, TLSPROXY_SERVICE,
    },
    rbldnsd::{
        BL_ANSWER, BL_MISS_ANSWER, BL_SHOWN, BL2_ANSWER, Dataset, LAB_SITES, LOCAL_DNS, Rbldnsd,
        WL_ANSWER, Zone,
    },
    require_root,
};

const SMTP_PORT: u16 = 25;
/// Where the Postfix behind smtp-screen has its one `inet` listener, which the harness
/// requires: not port 25, which is smtp-screen's, and running a program that is not smtpd, so
/// that smtpd is reachable only through the hand-off, as behind postscreen. Nothing connects
/// to it.
const IDLE_INET_PORT: u16 = 10025;
const IDLE_INET_COMMAND: &str = "discard";

/// The lab's stress-dependent times, shortened: a greet wait of 2s (1s under stress).
const GREET_WAIT_SETTING: &str = "${stress?{1}:{2}}s";
const GREET_WAIT: Duration = Duration::from_secs(2);
const COMMAND_TIME_LIMIT_SETTING: &str = "${stress?{2}:{5}}s";

// Client host numbers, one per role, as in the lab.
const PREGREETER: u8 = 10;
/// Passes every test: 450 at RCPT the first time, PASS OLD the next.
const CLEAN: u8 = 11;
const PIPELINER: u8 = 12;
const NON_SMTP: u8 = 13;
const BARE_NEWLINE: u8 = 14;
/// Sends more commands than `postscreen_command_count_limit` allows.
const CHATTY: u8 = 15;
/// Says nothing after the greeting.
const IDLE: u8 = 16;
/// Hangs up during the greet wait.
const HANGUP: u8 = 17;
/// Tries the commands the dummy engine does not serve.
const PROBER: u8 = 18;
/// Opens more connections at once than `postscreen_client_connection_count_limit` allows.
const CROWD: u8 = 19;
/// `permit` in the access list.
const PERMITTED: u8 = 20;
/// `reject` in the access list (denylist action `drop`).
const REJECTED: u8 = 21;
/// `dunno` in the access list: the tests run as for anyone.
const DUNNO: u8 = 22;
/// In `wl.test`: rank -5, allowlisted.
const DNSWL: u8 = 30;
/// In `wl.test` too, first seen while smtpd is gone.
const DNSWL_LATE: u8 = 31;
/// In `bl.test` and `bl2.test`: rank 4, over the threshold.
const RANK_4: u8 = 40;
/// In `bl2.test` only: rank 1, under the threshold.
const RANK_1: u8 = 41;
/// In `bl.test` with an answer outside its filter: rank 0.
const FILTER_MISS: u8 = 42;
/// In `bl.test` and `bl2.test` (rank 4) and talks before its turn: two enforced failures.
const LISTED_PREGREETER: u8 = 43;
const HOSTS: [u8; 19] = [
    PREGREETER,
    CLEAN,
    PIPELINER,
    NON_SMTP,
    BARE_NEWLINE,
    CHATTY,
    IDLE,
    HANGUP,
    PROBER,
    CROWD,
    PERMITTED,
    REJECTED,
    DUNNO,
    DNSWL,
    DNSWL_LATE,
    RANK_4,
    RANK_1,
    FILTER_MISS,
    LISTED_PREGREETER,
];

const SENDER: &str = "sender@client.example";
const CLIENT_HELO: &str = "client.example";

const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// The lab's command time limit without stress.
const COMMAND_TIME_LIMIT: Duration = Duration::from_secs(5);
/// When the hanging-up client hangs up, well within the greet wait.
const HANGUP_AFTER: Duration = Duration::from_secs(1);
/// Upper bound for a reply that is due at once.
const REPLY_WAIT: Duration = Duration::from_secs(5);
/// A reply that took this long since the client's last move waited for a timer (the greet
/// wait, the command time limit): half the greet wait, as far from a prompt reply as from
/// one at the end of the wait, so that a busy machine does not blur the two.
const WAITED: Duration = Duration::from_secs(1);
/// Upper bound for a screener to log the end of a session the client has finished.
const LOG_WAIT: Duration = Duration::from_secs(5);
/// Upper bound for smtp-screen to start.
const START_WAIT: Duration = Duration::from_secs(20);
/// Upper bound for one postconf or import run.
const TOOL_LIMIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// Which screener a site runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Postscreen,
    SmtpScreen,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Postscreen => "postscreen",
            Kind::SmtpScreen => "smtp-screen",
        })
    }
}

/// `smtp-screen run` in a site's server namespace and its pins. Fields drop in order: the
/// daemon, then the pins.
struct ScreenDaemon {
    run: Daemon,
    _pin: PinDir,
}

/// One site: clients, a screener on 10.251.N.1:25, Postfix, and the DNS lists. Fields drop in
/// order: the daemon, Postfix, rbldnsd, the link, the namespaces.
struct Site {
    kind: Kind,
    n: u8,
    daemon: Option<ScreenDaemon>,
    postfix: Postfix,
    _rbldnsd: Rbldnsd,
    _veth: VethPair,
    server: Netns,
    client: Netns,
}

/// The files both sites share: the access table, the reply map, the resolv.conf naming
/// rbldnsd, and what the import made.
struct LabFiles {
    dir: ScratchDir,
    access_table: PathBuf,
    reply_map: PathBuf,
    resolv_conf: PathBuf,
}

impl LabFiles {
    fn create(n: u8) -> Self {
        let dir = ScratchDir::create("lab").expect("scratch directory");
        let host = |h: u8| Ipv4Addr::new(10, 251, n, h);
        let access_table = dir
            .write(
                "psacl.cidr",
                format!(
                    "# The lab's access list\n{}/32 permit\n{}/32 reject\n{}/32 dunno\n\
                     10.251.{n}.0/24 dunno\n",
                    host(PERMITTED),
                    host(REJECTED),
                    host(DUNNO)
                ),
            )
            .expect("access table");
        let reply_map = dir
            .write("dnsbl_reply", format!("bl.test {BL_SHOWN}\n"))
            .expect("reply map");
        let resolv_conf = dir
            .write("resolv.conf", format!("nameserver {}\n", LOCAL_DNS.ip()))
            .expect("resolv.conf");
        Self {
            dir,
            access_table,
            reply_map,
            resolv_conf,
        }
    }

    /// The lab's main.cf (Appendix A of the postscreen reference), for an instance on `listen`
    /// (the address is the same for both sites).
    fn main_cf(&self, listen: SocketAddr) -> PostfixConfig {
        let settings = [
            ("default_process_limit", "20".to_string()),
            (
                "postscreen_access_list",
                format!("permit_mynetworks, cidr:{}", self.access_table.display()),
            ),
            ("postscreen_denylist_action", "drop".into()),
            ("postscreen_greet_action", "enforce".into()),
            ("postscreen_greet_wait", GREET_WAIT_SETTING.into()),
            ("postscreen_dnsbl_sites", LAB_SITES.into()),
            ("postscreen_dnsbl_threshold", "3".into()),
            ("postscreen_dnsbl_allowlist_threshold", "-1".into()),
            ("postscreen_dnsbl_action", "enforce".into()),
            (
                "postscreen_dnsbl_reply_map",
                format!("texthash:{}", self.reply_map.display()),
            ),
            ("postscreen_pipelining_enable", "yes".into()),
            ("postscreen_non_smtp_command_enable", "yes".into()),
            ("postscreen_bare_newline_enable", "yes".into()),
            ("postscreen_bare_newline_action", "enforce".into()),
            ("postscreen_command_count_limit", "6".into()),
            (
                "postscreen_command_time_limit",
                COMMAND_TIME_LIMIT_SETTING.into(),
            ),
            ("postscreen_client_connection_count_limit", "2".into()),
            ("postscreen_pre_queue_limit", "10".into()),
            ("postscreen_post_queue_limit", "10".into()),
        ];
        settings
            .iter()
            .fold(PostfixConfig::new(listen), |config, (name, value)| {
                config.main_cf(name, value)
            })
    }
}

/// The lab's lists for the site's clients, every zone with its test point.
fn lab_zones(n: u8) -> Vec<Zone> {
    let host = |h: u8| Ipv4Addr::new(10, 251, n, h);
    vec![
        Zone::new("bl.test", Dataset::Ip4Set)
            .with_test_point()
            .list(host(RANK_4), BL_ANSWER)
            .list(host(LISTED_PREGREETER), BL_ANSWER)
            .list(host(FILTER_MISS), BL_MISS_ANSWER),
        Zone::new("bl2.test", Dataset::Ip4Set)
            .with_test_point()
            .list(host(RANK_4), BL2_ANSWER)
            .list(host(LISTED_PREGREETER), BL2_ANSWER)
            .list(host(RANK_1), BL2_ANSWER),
        Zone::new("wl.test", Dataset::Ip4Set)
            .with_test_point()
            .list(host(DNSWL), WL_ANSWER)
            .list(host(DNSWL_LATE), WL_ANSWER),
    ]
}

impl Site {
    /// Namespaces, link, addresses and rbldnsd, then Postfix with `postfix` settings, started
    /// under the lab's resolv.conf.
    fn build(kind: Kind, n: u8, files: &LabFiles, postfix: PostfixConfig) -> Self {
        let client = Netns::create("c").expect("client netns");
        let server = Netns::create("s").expect("server netns");
        let veth = VethPair::create(&client, &server).expect("veth pair");
        let server_addr = Ipv4Addr::new(10, 251, n, 1);
        server
            .add_address(veth.b(), server_addr.into(), 24)
            .expect("server address");
        for host in HOSTS {
            client
                .add_address(veth.a(), Ipv4Addr::new(10, 251, n, host).into(), 24)
                .expect("client address");
        }
        let rbldnsd = Rbldnsd::start(&server, LOCAL_DNS, &lab_zones(n)).expect("rbldnsd");
        let postfix = with_resolv_conf(&files.resolv_conf, || {
            Postfix::start(&server, &postfix).expect("starting Postfix")
        });
        Self {
            kind,
            n,
            daemon: None,
            postfix,
            _rbldnsd: rbldnsd,
            _veth: veth,
            server,
            client,
        }
    }

    /// postscreen on port 25, as Debian's master.cf runs it.
    fn postscreen(n: u8, files: &LabFiles) -> Self {
        let config = files
            .main_cf(SocketAddr::new(server_v4(n), SMTP_PORT))
            .inet_service("1", "postscreen")
            .smtpd_pass_service()
            .master_cf(DNSBLOG_SERVICE)
            .master_cf(TLSPROXY_SERVICE);
        Self::build(Kind::Postscreen, n, files, config)
    }

    /// smtp-screen in front of Postfix with the same main.cf, configured by importing what
    /// `postconf -n` says about `reference`'s instance.
    fn smtp_screen(n: u8, files: &LabFiles, reference: &Site) -> Self {
        let config = files
            .main_cf(SocketAddr::new(server_v4(n), IDLE_INET_PORT))
            .inet_service("1", IDLE_INET_COMMAND)
            .master_cf(SMTPD_PASS_SERVICE);
        let mut site = Self::build(Kind::SmtpScreen, n, files, config);
        let imported = import_postfix(files, &reference.postfix);
        let socket = site
            .postfix
            .wait_for_pass_socket("smtpd", START_WAIT)
            .expect("smtpd's pass service socket");
        let adjusted = adjust(&imported, &site_adjustments(files, &socket));
        let config = files
            .dir
            .write("smtp-screen.toml", adjusted)
            .expect("smtp-screen.toml");
        let daemon = with_resolv_conf(&files.resolv_conf, || {
            ScreenDaemon::start(&site.server, &config, &files.dir.path().join("daemon.log"))
        });
        site.daemon = Some(daemon);
        site
    }

    fn v4(&self, host: u8) -> IpAddr {
        Ipv4Addr::new(10, 251, self.n, host).into()
    }

    /// The screener's log lines, without syslog's time, host and `postfix/postscreen[pid]: `.
    fn screener_lines(&self) -> Vec<String> {
        let log = match &self.daemon {
            Some(daemon) => daemon.run.log(),
            None => self.postfix.log(),
        };
        log.lines()
            .filter_map(|line| {
                let (_, rest) = line.split_once("postfix/postscreen[")?;
                let (_, text) = rest.split_once("]: ")?;
                Some(text.to_string())
            })
            .collect()
    }

    /// How many sessions smtpd logged for `client`.
    fn smtpd_sessions(&self, client: IpAddr) -> usize {
        let connect = format!("]: connect from unknown[{client}]");
        self.postfix
            .log()
            .lines()
            .filter(|line| line.contains("postfix/smtpd[") && line.ends_with(&connect))
            .count()
    }

    /// Takes smtpd's pass service socket away, as when Postfix is not running: the hand-off
    /// finds no `private/smtpd`.
    fn remove_smtpd_socket(&self) {
        let socket = self.postfix.pass_socket("smtpd");
        std::fs::remove_file(&socket)
            .unwrap_or_else(|e| panic!("{}: removing {}: {e}", self.kind, socket.display()));
    }

    /// The warnings and fatal errors the site logged, screener and Postfix, for the report.
    fn warnings(&self) -> Vec<String> {
        let mut log = self.postfix.log();
        if let Some(daemon) = &self.daemon {
            log.push_str(&daemon.run.log());
        }
        log.lines()
            .filter(|line| line.contains("warning: ") || line.contains("fatal: "))
            .map(str::to_string)
            .collect()
    }
}

/// What smtp-screen's configuration must say differently from what the import made of
/// postscreen's settings; nothing else is touched.
fn site_adjustments(files: &LabFiles, pass_socket: &Path) -> Vec<(&'static str, String)> {
    vec![
        // The Postfix instance behind smtp-screen is this site's, not postscreen's.
        ("postfix_pass_socket", quoted(pass_socket.display())),
        // The import names the machine's state directory.
        (
            "state_dir",
            quoted(files.dir.path().join("state").display()),
        ),
        // postscreen logs to the instance's maillog through postlogd; smtp-screen has no log
        // file of its own, and there is no syslog daemon here: stderr, which the test reads.
        ("log_to", quoted("stderr")),
        // smtp-screen's kernel deny policy goes beyond postscreen. The import attaches no XDP
        // program, so it could not act anyway; this says so.
        ("deny_ttl", quoted("0")),
    ]
}

fn server_v4(n: u8) -> IpAddr {
    Ipv4Addr::new(10, 251, n, 1).into()
}

/// `postconf -c DIR -n` of `reference`'s instance into a file, then `smtp-screen
/// import-postfix --postconf-output FILE`; returns the configuration it wrote.
fn import_postfix(files: &LabFiles, reference: &Postfix) -> String {
    let mut postconf = Command::new("postconf");
    postconf.arg("-c").arg(reference.config_dir()).arg("-n");
    let settings =
        run_within(&mut postconf, TOOL_LIMIT).unwrap_or_else(|e| panic!("postconf -n: {e}"));
    let saved = files
        .dir
        .write("postconf-n.txt", settings.as_bytes())
        .expect("postconf -n output");
    let imported = files.dir.path().join("imported.toml");
    let mut import = Command::new(smtp_screen_bin().expect("the smtp-screen binary"));
    import
        .arg("import-postfix")
        .arg("--postconf-output")
        .arg(&saved)
        .arg("--output")
        .arg(&imported);
    run_within(&mut import, TOOL_LIMIT)
        .unwrap_or_else(|e| panic!("smtp-screen import-postfix: {e}"));
    std::fs::read_to_string(&imported).expect("the imported configuration")
}

/// Sets each top-level `key = value` of `overrides` in the TOML text `config`: in place where
/// the key is set, before the first table otherwise.
fn adjust(config: &str, overrides: &[(&str, String)]) -> String {
    let mut lines: Vec<String> = config.lines().map(str::to_string).collect();
    let first_table = lines
        .iter()
        .position(|line| line.starts_with('['))
        .unwrap_or(lines.len());
    let mut added = Vec::new();
    for (key, value) in overrides {
        let assignment = format!("{key} = {value}");
        let prefix = format!("{key} = ");
        match lines[..first_table]
            .iter()
            .position(|line| line.starts_with(&prefix))
        {
            Some(at) => lines[at] = assignment,
            None => added.push(assignment),
        }
    }
    if !added.is_empty() {
        added.insert(0, "# Adjusted for this site:".into());
        added.push(String::new());
    }
    lines.splice(first_table..first_table, added);
    lines.join("\n") + "\n"
}

impl ScreenDaemon {
    /// Starts `smtp-screen run` in `server` and waits until it accepts connections.
    fn start(server: &Netns, config: &Path, log: &Path) -> Self {
        let pin = PinDir::new("diff");
        let bin = smtp_screen_bin().expect("the smtp-screen binary");
        let mut run = Daemon::spawn(server, &bin, pin.path(), config, log.to_path_buf());
        run.wait_screening();
        Self { run, _pin: pin }
    }
}

/// The two sites, postscreen's first, and the files they share. Fields drop in order: the
/// sites, then the files their configurations name.
struct Lab {
    postscreen: Site,
    smtp_screen: Site,
    _files: LabFiles,
}

impl Lab {
    fn start() -> Self {
        ensure_packages(&["postfix", "rbldnsd"]).expect("postfix and rbldnsd");
        let n = subnet_index();
        let files = LabFiles::create(n);
        let postscreen = Site::postscreen(n, &files);
        let smtp_screen = Site::smtp_screen(n, &files, &postscreen);
        Self {
            postscreen,
            smtp_screen,
            _files: files,
        }
    }

    /// Plays every scenario against both sites at once and compares. Every difference is
    /// reported, not only the first.
    fn compare(&mut self, scenarios: &[Scenario]) {
        let (reference, candidate) = thread::scope(|scope| {
            let postscreen = scope.spawn(|| play_all(&self.postscreen, scenarios));
            let smtp_screen = scope.spawn(|| play_all(&self.smtp_screen, scenarios));
            (
                postscreen
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
                smtp_screen
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            )
        });
        if let Some(daemon) = &mut self.smtp_screen.daemon {
            daemon.run.assert_running();
        }
        let mut problems = Vec::new();
        for ((scenario, expected), actual) in scenarios.iter().zip(&reference).zip(&candidate) {
            let missing: Vec<&str> = scenario
                .shows
                .iter()
                .copied()
                .filter(|text| !expected.mentions(text))
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "scenario {:?}: postscreen's result does not show {missing:?}; the \
                     scenario does not test what it says:\n{expected}",
                    scenario.name
                ));
            }
            if expected != actual {
                problems.push(format!(
                    "scenario {:?} differs.\n--- postscreen:\n{expected}--- smtp-screen:\n{actual}",
                    scenario.name
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "{}\n\nwarnings, postscreen site:\n{}\nwarnings, smtp-screen site:\n{}\n",
            problems.join("\n\n"),
            self.postscreen.warnings().join("\n"),
            self.smtp_screen.warnings().join("\n")
        );
    }
}

/// What one session came to, as far as the comparison goes.
#[derive(Debug, PartialEq, Eq)]
struct SessionOutcome {
    /// `-> ` what the client sent, `<- ` what it received.
    transcript: Vec<String>,
    /// Every screener line about the session, in order, its port and delays normalised.
    log: Vec<String>,
    end: SessionEnd,
}

/// How the screener was done with a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionEnd {
    /// It logged the DISCONNECT.
    Disconnect,
    /// smtpd has the client.
    Smtpd,
    /// Neither, within [`LOG_WAIT`] of the client's last move.
    NotLogged,
}

/// What a scenario came to on one site: its sessions in order.
#[derive(Debug, PartialEq, Eq)]
struct Outcome(Vec<SessionOutcome>);

impl Outcome {
    fn mentions(&self, text: &str) -> bool {
        self.0.iter().any(|session| {
            session
                .transcript
                .iter()
                .chain(&session.log)
                .any(|line| line.contains(text))
        })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (number, session) in self.0.iter().enumerate() {
            writeln!(f, "  session {}:", number + 1)?;
            for line in &session.transcript {
                writeln!(f, "    {line}")?;
            }
            for line in &session.log {
                writeln!(f, "    log: {line}")?;
            }
            let end = match session.end {
                SessionEnd::Disconnect => "the screener disconnected",
                SessionEnd::Smtpd => "handed to smtpd",
                SessionEnd::NotLogged => "no DISCONNECT logged, not handed to smtpd",
            };
            writeln!(f, "    end: {end}")?;
        }
        Ok(())
    }
}

/// A client's behaviour and what postscreen must show for it.
struct Scenario {
    name: &'static str,
    host: u8,
    /// Texts postscreen's outcome must contain (a reply, a log word).
    shows: &'static [&'static str],
    sessions: Sessions,
}

/// How a scenario's client connects.
enum Sessions {
    /// One connection after the other, each driven by its script.
    InTurn(&'static [fn(&mut Session)]),
    /// Connections open at the same time, opened and driven by the function.
    AtOnce(fn(&Site, IpAddr) -> Vec<Session>),
}

fn play_all(site: &Site, scenarios: &[Scenario]) -> Vec<Outcome> {
    scenarios
        .iter()
        .map(|scenario| {
            let client = site.v4(scenario.host);
            let sessions = match scenario.sessions {
                Sessions::InTurn(scripts) => scripts
                    .iter()
                    .map(|script| {
                        let smtpd_before = site.smtpd_sessions(client);
                        let mut session = Session::connect(site, client);
                        script(&mut session);
                        settle(site, client, session, smtpd_before)
                    })
                    .collect(),
                Sessions::AtOnce(play) => {
                    let smtpd_before = site.smtpd_sessions(client);
                    play(site, client)
                        .into_iter()
                        .map(|session| settle(site, client, session, smtpd_before))
                        .collect()
                }
            };
            Outcome(sessions)
        })
        .collect()
}

/// What a finished session of `client` came to, once the screener is done with it: it
/// logged the DISCONNECT, or smtpd has the client.
fn settle(site: &Site, client: IpAddr, session: Session, smtpd_before: usize) -> SessionOutcome {
    let tag = session.tag();
    let disconnect = format!("DISCONNECT {tag}");
    let deadline = Instant::now() + LOG_WAIT;
    let end = loop {
        if site.screener_lines().contains(&disconnect) {
            break SessionEnd::Disconnect;
        }
        if site.smtpd_sessions(client) > smtpd_before {
            break SessionEnd::Smtpd;
        }
        // A difference to report, not a reason to stop.
        if Instant::now() >= deadline {
            break SessionEnd::NotLogged;
        }
        thread::sleep(POLL);
    };
    let log = site
        .screener_lines()
        .iter()
        .filter(|line| line.contains(&tag))
        .map(|line| normalise(line, &tag, client))
        .collect();
    SessionOutcome {
        transcript: session.transcript,
        log,
        end,
    }
}

/// Replaces what may differ between the sites without a difference in behaviour: the
/// client's port, which each site's kernel picks, and measured delays (`after 0.01`).
fn normalise(line: &str, tag: &str, client: IpAddr) -> String {
    let line = line.replace(tag, &format!("[{client}]:PORT"));
    let mut words: Vec<&str> = line.split(' ').collect();
    for at in 1..words.len() {
        if words[at - 1] == "after" && words[at].parse::<f64>().is_ok() {
            words[at] = "T";
        }
    }
    words.join(" ")
}

/// A scripted SMTP client that writes down everything it sends and receives, and whether
/// each line came at once or only after a wait ([`WAITED`]).
struct Session {
    stream: TcpStream,
    pending: Vec<u8>,
    /// When the client last sent something or received a line.
    last: Instant,
    closed: bool,
    transcript: Vec<String>,
}

impl Session {
    fn connect(site: &Site, client: IpAddr) -> Self {
        let server = SocketAddr::new(server_v4(site.n), SMTP_PORT);
        let stream = stream_from(&site.client, client, server, CONNECT_LIMIT)
            .unwrap_or_else(|e| panic!("{}: connecting from {client}: {e}", site.kind));
        Self {
            stream,
            pending: Vec::new(),
            last: Instant::now(),
            closed: false,
            transcript: Vec::new(),
        }
    }

    /// The client as screeners log it: `[address]:port`.
    fn tag(&self) -> String {
        tag_of(self.stream.local_addr().expect("local address"))
    }

    /// The next line (without its line ending), or `None` when the server closed the
    /// connection or said nothing more within `limit`; the transcript tells which.
    fn line(&mut self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = take_line(&mut self.pending) {
                let waited = if self.last.elapsed() >= WAITED {
                    "  [after a wait]"
                } else {
                    ""
                };
                self.transcript.push(format!("<- {line}{waited}"));
                self.last = Instant::now();
                return Some(line);
            }
            if self.closed {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.transcript
                    .push(format!("<- (nothing more within {limit:?})"));
                return None;
            }
            if receive(&self.stream, &mut self.pending, left) == Connection::Closed {
                self.close_seen();
            }
        }
    }

    fn close_seen(&mut self) {
        self.closed = true;
        self.transcript.push("<- (connection closed)".into());
    }

    /// A whole reply, continuation lines included, waiting up to `limit` for each line.
    fn reply(&mut self, limit: Duration) {
        while let Some(line) = self.line(limit) {
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let shown = String::from_utf8_lossy(bytes)
            .replace('\r', "\\r")
            .replace('\n', "\\n");
        if self.closed {
            self.transcript
                .push(format!("-> {shown}  (not sent: closed)"));
            return;
        }
        self.transcript.push(format!("-> {shown}"));
        // A server that already hung up shows as a closed connection at the next read.
        let _ = self.stream.write_all(bytes);
        self.last = Instant::now();
    }

    /// Sends one command line and reads its reply.
    fn command(&mut self, command: &str) {
        self.send(format!("{command}\r\n").as_bytes());
        self.reply(REPLY_WAIT);
    }

    /// The whole greeting: the teaser, if any, and the 220 after the greet wait.
    fn greeting(&mut self) {
        self.reply(GREET_WAIT + REPLY_WAIT);
    }

    /// Closes the connection.
    fn hang_up(&mut self) {
        self.transcript.push("-> (hang up)".into());
        let _ = self.stream.shutdown(Shutdown::Both);
        self.closed = true;
    }

    /// QUIT, and the server closes the connection.
    fn quit(&mut self) {
        self.command("QUIT");
        self.until_closed();
    }

    /// Whatever else the server says until it closes the connection.
    fn until_closed(&mut self) {
        while self.line(REPLY_WAIT).is_some() {}
    }
}

// --- The client scripts ---

fn mail_and_rcpt(session: &mut Session) {
    session.command(&format!("MAIL FROM:<{SENDER}>"));
    session.command(&format!("RCPT TO:<user@{MAIL_DOMAIN}>"));
}

/// Waits for the greeting and goes as far as RCPT, then quits.
fn polite_to_rcpt(session: &mut Session) {
    session.greeting();
    session.command(&format!("EHLO {CLIENT_HELO}"));
    mail_and_rcpt(session);
    session.quit();
}

/// Waits for the greeting, says EHLO and quits.
fn polite_ehlo(session: &mut Session) {
    session.greeting();
    session.command(&format!("EHLO {CLIENT_HELO}"));
    session.quit();
}

/// Takes whatever the server says until it hangs up.
fn listen_only(session: &mut Session) {
    session.greeting();
    session.until_closed();
}

/// Talks as soon as the teaser is in, before the greeting is complete.
fn pregreet(session: &mut Session) {
    session.line(REPLY_WAIT);
    session.send(b"EHLO zombie.example\r\n");
    session.reply(GREET_WAIT + REPLY_WAIT);
    mail_and_rcpt(session);
    session.quit();
}

/// Sends MAIL in the same packet as EHLO, without waiting for EHLO's reply.
fn pipeline(session: &mut Session) {
    session.greeting();
    session.send(format!("EHLO {CLIENT_HELO}\r\nMAIL FROM:<{SENDER}>\r\n").as_bytes());
    session.reply(REPLY_WAIT);
    session.reply(REPLY_WAIT);
    session.command(&format!("RCPT TO:<user@{MAIL_DOMAIN}>"));
    session.quit();
}

/// An HTTP request where an SMTP command belongs.
fn http_request(session: &mut Session) {
    session.greeting();
    session.command(&format!("EHLO {CLIENT_HELO}"));
    session.command("GET / HTTP/1.0");
    session.until_closed();
}

/// Ends its EHLO line with a bare LF.
fn bare_newline(session: &mut Session) {
    session.greeting();
    session.send(b"EHLO b.example\n");
    session.reply(REPLY_WAIT);
    mail_and_rcpt(session);
    session.quit();
}

/// A new client that passes every test: the deep tests still cost it a 450 at RCPT, and its
/// DATA ends the session.
fn first_contact_to_data(session: &mut Session) {
    session.greeting();
    session.command(&format!("EHLO {CLIENT_HELO}"));
    mail_and_rcpt(session);
    session.command("DATA");
    session.until_closed();
}

/// The commands the dummy engine answers without serving them, within the command count
/// limit.
fn probe_commands(session: &mut Session) {
    session.greeting();
    for command in [
        "VRFY user",
        "ETRN example.test",
        "AUTH PLAIN",
        "XCLIENT ADDR=192.0.2.1",
        "STARTTLS",
    ] {
        session.command(command);
    }
    session.quit();
}

/// One command more than the count limit allows.
fn too_many_commands(session: &mut Session) {
    session.greeting();
    session.command("HELO");
    session.command(&format!("HELO {CLIENT_HELO}"));
    for _ in 0..4 {
        session.command("NOOP");
    }
    session.command("RSET");
    session.until_closed();
}

/// Says nothing once greeted, until the server gives up.
fn idle(session: &mut Session) {
    session.greeting();
    while session.line(COMMAND_TIME_LIMIT + REPLY_WAIT).is_some() {}
}

/// Hangs up while the server is still waiting to greet.
fn hang_up_early(session: &mut Session) {
    session.line(REPLY_WAIT);
    thread::sleep(HANGUP_AFTER);
    session.hang_up();
}

/// Two connections in the greet wait, then a third while they are still there; the two then
/// finish politely.
fn three_at_once(site: &Site, client: IpAddr) -> Vec<Session> {
    let mut waiting: Vec<Session> = (0..2)
        .map(|_| {
            let mut session = Session::connect(site, client);
            // The teaser shows that the screener counted the connection.
            session.line(REPLY_WAIT);
            session
        })
        .collect();
    let mut third = Session::connect(site, client);
    third.until_closed();
    for session in &mut waiting {
        session.reply(GREET_WAIT + REPLY_WAIT);
        session.quit();
    }
    waiting.push(third);
    waiting
}

/// The DNSBL lists and the access list, the pregreet test, all before the greeting.
const BEFORE_THE_GREETING: [Scenario; 8] = [
    Scenario {
        name: "pregreet",
        host: PREGREETER,
        shows: &["PREGREET 21 after T", "550 5.5.1 Protocol error"],
        sessions: Sessions::InTurn(&[pregreet]),
    },
    Scenario {
        name: "DNSBL rank over the threshold",
        host: RANK_4,
        shows: &[
            "DNSBL rank 4 for",
            "550 5.7.1 Service unavailable; client [10.251.",
            BL_SHOWN,
        ],
        sessions: Sessions::InTurn(&[polite_to_rcpt]),
    },
    Scenario {
        name: "DNSBL rank under the threshold",
        host: RANK_1,
        shows: &["450 4.3.2 Service currently unavailable", "PASS NEW"],
        sessions: Sessions::InTurn(&[polite_to_rcpt]),
    },
    Scenario {
        name: "DNSBL answer outside the filter",
        host: FILTER_MISS,
        shows: &["450 4.3.2 Service currently unavailable", "PASS NEW"],
        sessions: Sessions::InTurn(&[polite_to_rcpt]),
    },
    Scenario {
        name: "DNSWL allowlisting",
        host: DNSWL,
        shows: &["PASS NEW", "250-PIPELINING"],
        sessions: Sessions::InTurn(&[polite_ehlo]),
    },
    Scenario {
        name: "access list permit",
        host: PERMITTED,
        shows: &["ALLOWLISTED", "250-PIPELINING"],
        sessions: Sessions::InTurn(&[polite_ehlo]),
    },
    Scenario {
        name: "access list dunno",
        host: DUNNO,
        shows: &["450 4.3.2 Service currently unavailable", "PASS NEW"],
        sessions: Sessions::InTurn(&[polite_to_rcpt]),
    },
    Scenario {
        name: "access list reject",
        host: REJECTED,
        shows: &["DENYLISTED", "521 5.3.2 Service currently unavailable"],
        sessions: Sessions::InTurn(&[listen_only]),
    },
];

/// The tests after the greeting, and the reconnection they cost a good client.
const AFTER_THE_GREETING: [Scenario; 4] = [
    Scenario {
        name: "command pipelining",
        host: PIPELINER,
        shows: &["COMMAND PIPELINING from", "550 5.5.1 Protocol error"],
        sessions: Sessions::InTurn(&[pipeline]),
    },
    Scenario {
        name: "non-SMTP command",
        host: NON_SMTP,
        shows: &[
            "NON-SMTP COMMAND from",
            "521 5.7.0 Error: I can break rules, too. Goodbye.",
        ],
        sessions: Sessions::InTurn(&[http_request]),
    },
    Scenario {
        name: "bare newline",
        host: BARE_NEWLINE,
        shows: &["BARE NEWLINE from", "550 5.5.1 Protocol error"],
        sessions: Sessions::InTurn(&[bare_newline]),
    },
    Scenario {
        name: "450 at first contact, then PASS OLD",
        host: CLEAN,
        shows: &[
            "450 4.3.2 Service currently unavailable",
            "554 5.5.1 Error: no valid recipients",
            "PASS NEW",
            "PASS OLD",
        ],
        sessions: Sessions::InTurn(&[first_contact_to_data, polite_ehlo]),
    },
];

/// The dummy engine's answers to what it does not serve, the limits, and a hang-up.
const ENGINE_LIMITS: [Scenario; 4] = [
    Scenario {
        name: "commands the engine does not serve",
        host: PROBER,
        shows: &[
            "450 4.3.2 Service currently unavailable",
            "458 Unable to queue messages",
            "502 5.5.2 Error: command not recognized",
            "502 5.5.1 Error: command not implemented",
        ],
        sessions: Sessions::InTurn(&[probe_commands]),
    },
    Scenario {
        name: "command count limit",
        host: CHATTY,
        shows: &[
            "501 Syntax: HELO hostname",
            "421 mx.example.test Service unavailable - try again later",
            "COMMAND COUNT LIMIT from",
        ],
        sessions: Sessions::InTurn(&[too_many_commands]),
    },
    Scenario {
        name: "command time limit",
        host: IDLE,
        shows: &[
            "421 4.4.2 mx.example.test Error: timeout exceeded",
            "COMMAND TIME LIMIT from",
        ],
        sessions: Sessions::InTurn(&[idle]),
    },
    Scenario {
        name: "hang-up during the greet wait",
        host: HANGUP,
        shows: &["HANGUP after T from", "in tests before SMTP handshake"],
        sessions: Sessions::InTurn(&[hang_up_early]),
    },
];

/// A client that fails two tests before the greeting, each with `enforce`: it talks first,
/// and the lists rank it over the threshold. postscreen keeps waiting for the DNS answers
/// after the pregreet, and the DNSBL reply, set last, is the one RCPT gets.
const LISTED_PREGREETER_SCENARIO: [Scenario; 1] = [Scenario {
    name: "DNSBL rank over the threshold, and pregreet",
    host: LISTED_PREGREETER,
    shows: &[
        "PREGREET 21 after T",
        "DNSBL rank 4 for",
        "550 5.7.1 Service unavailable; client [10.251.",
    ],
    sessions: Sessions::InTurn(&[pregreet]),
}];

/// More connections at once from one client than `client_connection_count_limit` allows.
const CROWD_SCENARIO: [Scenario; 1] = [Scenario {
    name: "client connection count limit",
    host: CROWD,
    shows: &[
        "421 4.7.0 Error: too many connections",
        "NOQUEUE: reject: CONNECT from",
    ],
    sessions: Sessions::AtOnce(three_at_once),
}];

#[test]
fn decisions_before_the_greeting_match_postscreen() {
    if !require_root("decisions_before_the_greeting_match_postscreen") {
        return;
    }
    let mut lab = Lab::start();
    lab.compare(&BEFORE_THE_GREETING);
}

#[test]
fn deep_protocol_tests_match_postscreen() {
    if !require_root("deep_protocol_tests_match_postscreen") {
        return;
    }
    let mut lab = Lab::start();
    lab.compare(&AFTER_THE_GREETING);
}

#[test]
fn engine_replies_and_limits_match_postscreen() {
    if !require_root("engine_replies_and_limits_match_postscreen") {
        return;
    }
    let mut lab = Lab::start();
    lab.compare(&ENGINE_LIMITS);
}

#[test]
fn a_listed_pregreeter_gets_the_dnsbl_verdict_as_from_postscreen() {
    if !require_root("a_listed_pregreeter_gets_the_dnsbl_verdict_as_from_postscreen") {
        return;
    }
    let mut lab = Lab::start();
    lab.compare(&LISTED_PREGREETER_SCENARIO);
}

#[test]
fn a_client_over_its_connection_limit_is_refused_as_by_postscreen() {
    if !require_root("a_client_over_its_connection_limit_is_refused_as_by_postscreen") {
        return;
    }
    let mut lab = Lab::start();
    lab.compare(&CROWD_SCENARIO);
}

/// Hands a DNSWL-allowlisted client to smtpd, so that it is PASS OLD next time.
const BEFORE_SMTPD_GOES: [Scenario; 1] = [Scenario {
    name: "DNSWL allowlisting, smtpd there",
    host: DNSWL,
    shows: &["PASS NEW", "250-PIPELINING"],
    sessions: Sessions::InTurn(&[polite_ehlo]),
}];

/// Clients that pass before any teaser while smtpd's socket is gone: the 421 is the whole
/// greeting.
const WITHOUT_SMTPD_BEFORE_ANY_TEASER: [Scenario; 2] = [
    Scenario {
        name: "PASS OLD, smtpd gone",
        host: DNSWL,
        shows: &["PASS OLD", "421 4.3.2 All server ports are busy"],
        sessions: Sessions::InTurn(&[listen_only]),
    },
    Scenario {
        name: "access list permit, smtpd gone",
        host: PERMITTED,
        shows: &["ALLOWLISTED", "421 4.3.2 All server ports are busy"],
        sessions: Sessions::InTurn(&[listen_only]),
    },
];

/// A client that passes after the teaser while smtpd's socket is gone: the dummy engine
/// completes the greeting and answers the next command with the 421 (X21 mode).
const WITHOUT_SMTPD_AFTER_THE_TEASER: [Scenario; 1] = [Scenario {
    name: "DNSWL allowlisting after the teaser, smtpd gone",
    host: DNSWL_LATE,
    shows: &["PASS NEW", "421 4.3.2 No system resources"],
    sessions: Sessions::InTurn(&[polite_ehlo]),
}];

#[test]
fn a_lost_smtpd_after_the_teaser_is_reported_as_by_postscreen() {
    if !require_root("a_lost_smtpd_after_the_teaser_is_reported_as_by_postscreen") {
        return;
    }
    let mut lab = Lab::start();
    lab.postscreen.remove_smtpd_socket();
    lab.smtp_screen.remove_smtpd_socket();
    lab.compare(&WITHOUT_SMTPD_AFTER_THE_TEASER);
}

#[test]
fn a_lost_smtpd_before_any_teaser_is_reported_as_by_postscreen() {
    if !require_root("a_lost_smtpd_before_any_teaser_is_reported_as_by_postscreen") {
        return;
    }
    let mut lab = Lab::start();
    lab.compare(&BEFORE_SMTPD_GOES);
    lab.postscreen.remove_smtpd_socket();
    lab.smtp_screen.remove_smtpd_socket();
    lab.compare(&WITHOUT_SMTPD_BEFORE_ANY_TEASER);
}

#[test]
fn adjustments_keep_the_imported_configuration_and_land_before_its_tables() {
    let imported = "# comment\nlisten = [\"10.251.1.1:25\"]\nstate_dir = \"/var/lib/smtp-screen\"\n\n[dnsbl_reply_map]\n\"bl.test\" = \"x\"\n";
    let adjusted = adjust(
        imported,
        &[
            ("state_dir", quoted("/tmp/state")),
            ("log_to", quoted("stderr")),
        ],
    );
    assert_eq!(
        adjusted,
        "# comment\nlisten = [\"10.251.1.1:25\"]\nstate_dir = \"/tmp/state\"\n\n\
         # Adjusted for this site:\nlog_to = \"stderr\"\n\n[dnsbl_reply_map]\n\"bl.test\" = \"x\"\n"
    );
}
