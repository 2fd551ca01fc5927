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
//! The binary is the one cargo built next to this test (`cargo build -p screen-user` first), or
//! the one named in `SMTP_SCREEN_BIN`.

use std::{
    fs::File,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use screen_tests::{
    ensure_packages,
    netns::{
        ChildGuard, Netns, PinDir, ScratchDir, VethPair, output_within, smtp_screen_bin,
        stream_from, subnet_index,
    },
    postfix::{MAIL_DOMAIN, Postfix, PostfixConfig},
    rbldnsd::{Dataset, Rbldnsd, Zone},
    require_root,
};

const SMTP_PORT: u16 = 25;
const MYHOSTNAME: &str = "mx.example.test";
/// `greet_wait` and `command_time_limit` as configured, and their values without stress.
const GREET_WAIT_SETTING: &str = "${stress?{1}:{2}}s";
const GREET_WAIT: Duration = Duration::from_secs(2);
const COMMAND_TIME_LIMIT_SETTING: &str = "${stress?{2}:{3}}s";

/// The first line of a greeting while the pregreet test runs.
const TEASER: &str = "220-mx.example.test ESMTP";
/// The greeting of the daemon's own SMTP engine.
const ENGINE_GREETING: &str = "220 mx.example.test ESMTP";
/// The greeting of the Postfix backend.
const BACKEND_GREETING: &str = "220 mx.example.test ESMTP Postfix";
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

const SENDER: &str = "sender@client.example";
const CLIENT_HELO: &str = "client.example";
/// swaks' exit status when every recipient was refused.
const SWAKS_NO_RECIPIENTS: i32 = 24;

/// Upper bound for a reply that is due at once.
const REPLY_WAIT: Duration = Duration::from_secs(5);
/// A greeting that skips the greet wait must arrive well within it.
const PROMPT: Duration = Duration::from_millis(1000);
/// Upper bound for the daemon to log a line once the client saw the reply it goes with.
const LOG_WAIT: Duration = Duration::from_secs(5);
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// Upper bound for the daemon to start.
const START_WAIT: Duration = Duration::from_secs(20);
/// Upper bound for one swaks or openssl run.
const TOOL_LIMIT: Duration = Duration::from_secs(30);
/// Upper bound for Postfix to deliver an accepted message.
const DELIVERY_WAIT: Duration = Duration::from_secs(15);

/// Client and server namespaces joined by a veth pair. The server has 10.251.N.1/24 and
/// fd00:251:N::1/64; the client has 10.251.N.H and fd00:251:N::H for each host number H it was
/// given, one per role. Fields drop in order: files, link, namespaces.
struct Bed {
    n: u8,
    scratch: ScratchDir,
    veth: VethPair,
    server: Netns,
    client: Netns,
}

impl Bed {
    fn new(tag: &str, hosts: &[u8]) -> Self {
        let n = subnet_index();
        let scratch = ScratchDir::create(tag).expect("scratch directory");
        let client = Netns::create("c").expect("client netns");
        let server = Netns::create("s").expect("server netns");
        let veth = VethPair::create(&client, &server).expect("veth pair");
        let bed = Self {
            n,
            scratch,
            veth,
            server,
            client,
        };
        let server_iface = bed.veth.b();
        bed.server
            .add_address(server_iface, bed.server_v4(), 24)
            .expect("server IPv4 address");
        bed.server
            .add_address(server_iface, bed.server_v6(), 64)
            .expect("server IPv6 address");
        for &host in hosts {
            bed.client
                .add_address(bed.veth.a(), bed.v4(host), 24)
                .expect("client IPv4 address");
            bed.client
                .add_address(bed.veth.a(), bed.v6(host), 64)
                .expect("client IPv6 address");
        }
        bed
    }

    fn v4(&self, host: u8) -> IpAddr {
        Ipv4Addr::new(10, 251, self.n, host).into()
    }

    fn v6(&self, host: u8) -> IpAddr {
        Ipv6Addr::new(0xfd00, 0x251, self.n.into(), 0, 0, 0, 0, host.into()).into()
    }

    fn server_v4(&self) -> IpAddr {
        self.v4(1)
    }

    fn server_v6(&self) -> IpAddr {
        self.v6(1)
    }

    /// The daemon's listening address in the family of `client`.
    fn smtp_addr(&self, client: IpAddr) -> SocketAddr {
        let server = match client {
            IpAddr::V4(_) => self.server_v4(),
            IpAddr::V6(_) => self.server_v6(),
        };
        SocketAddr::new(server, SMTP_PORT)
    }

    /// Where the backend listens: loopback of the server namespace, which clients cannot
    /// reach past the daemon.
    fn backend_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 10025))
    }

    /// Postfix on [`Bed::backend_addr`], reading the PROXY header the daemon sends.
    fn backend_config(&self) -> PostfixConfig {
        PostfixConfig::new(self.backend_addr())
            .myhostname(MYHOSTNAME)
            .upstream_proxy_protocol()
    }

    /// A DNS allow list, `wl.test`, on loopback of the server namespace, listing `listed` as
    /// 127.0.0.3 (a DNSWL's usual answer for a known-good sender).
    fn start_dnswl(&self, listed: IpAddr) -> Rbldnsd {
        let zone = Zone::new(DNSWL, Dataset::Ip4Set)
            .with_test_point()
            .list(listed, Ipv4Addr::new(127, 0, 0, 3));
        Rbldnsd::start(
            &self.server,
            SocketAddr::from(([127, 0, 0, 1], 53)),
            &[zone],
        )
        .expect("starting rbldnsd")
    }

    fn connect(&self, src: IpAddr) -> Client {
        Client::connect(self, src)
    }

    /// Runs swaks in the client namespace from `src` against the daemon, for one message to
    /// the backend's mail domain whose body is `body`.
    fn swaks(&self, src: IpAddr, body: &str, extra: &[&str]) -> Swaks {
        let server = self.smtp_addr(src);
        let to = format!("user@{MAIL_DOMAIN}");
        let mut cmd = self.client.command("swaks");
        cmd.arg("--server")
            .arg(server.ip().to_string())
            .arg("--port")
            .arg(server.port().to_string())
            .arg("--local-interface")
            .arg(src.to_string())
            .args(["--ehlo", CLIENT_HELO, "--timeout", "15"])
            .args(["--from", SENDER, "--to", &to, "--body", body])
            .args(extra);
        Swaks(output_within(&mut cmd, TOOL_LIMIT).expect("running swaks"))
    }
}

/// The daemon's configuration file: the settings every test shares, with all three deep
/// tests on as in postscreen's lab (pipelining `enforce` and non-SMTP `drop` are the
/// defaults; bare newline is `enforce` there). A test replaces or adds options with
/// [`DaemonConfig::set`].
struct DaemonConfig {
    options: Vec<(&'static str, String)>,
}

impl DaemonConfig {
    fn new(bed: &Bed) -> Self {
        let options = vec![
            (
                "listen",
                format!(
                    "[{}, {}]",
                    quoted(SocketAddr::new(bed.server_v4(), SMTP_PORT)),
                    quoted(SocketAddr::new(bed.server_v6(), SMTP_PORT))
                ),
            ),
            ("backend", quoted(bed.backend_addr())),
            ("backend_proxy_protocol", quoted("v2")),
            (
                "state_dir",
                quoted(bed.scratch.path().join("state").display()),
            ),
            ("user", quoted("nobody")),
            ("myhostname", quoted(MYHOSTNAME)),
            ("log_to", quoted("stderr")),
            ("greet_wait", quoted(GREET_WAIT_SETTING)),
            ("command_time_limit", quoted(COMMAND_TIME_LIMIT_SETTING)),
            ("pipelining_enable", quoted("yes")),
            ("non_smtp_command_enable", quoted("yes")),
            ("bare_newline_enable", quoted("yes")),
            ("bare_newline_action", quoted("enforce")),
        ];
        Self { options }
    }

    /// Sets `key` to `value`, a TOML value as written in the file.
    fn set(mut self, key: &'static str, value: impl Into<String>) -> Self {
        let value = value.into();
        match self.options.iter_mut().find(|(k, _)| *k == key) {
            Some(option) => option.1 = value,
            None => self.options.push((key, value)),
        }
        self
    }

    /// The DNS allow list of [`Bed::start_dnswl`] with weight -1: a listed client scores below
    /// zero, yet above `dnsbl_allowlist_threshold` (0: off), so it is not allowlisted outright
    /// and only `deep_tests_skip_dnswl` decides whether it takes the deep tests.
    fn with_dnswl(self, server: &Rbldnsd) -> Self {
        self.set("dnsbl_sites", quoted(format!("{DNSWL}*-1")))
            .set("dns_servers", format!("[{}]", quoted(server.addr())))
    }

    /// STARTTLS in the engine with `certificate`.
    fn with_tls(self, certificate: &TestCertificate) -> Self {
        self.set("tls_cert_file", quoted(certificate.cert.display()))
            .set("tls_key_file", quoted(certificate.key.display()))
    }

    fn write(&self, bed: &Bed) -> PathBuf {
        let text: String = self
            .options
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        bed.scratch
            .write("smtp-screen.toml", text)
            .expect("daemon configuration")
    }
}

/// A TOML basic string.
fn quoted(value: impl std::fmt::Display) -> String {
    format!("{:?}", value.to_string())
}

/// A self-signed certificate for [`MYHOSTNAME`] and its key, made by openssl in the test's
/// scratch directory (removed with it). P-256: quick to make, and every TLS stack involved
/// (rustls, OpenSSL in Postfix and in swaks) takes it.
struct TestCertificate {
    cert: PathBuf,
    key: PathBuf,
}

impl TestCertificate {
    fn create(bed: &Bed) -> Self {
        let cert = bed.scratch.path().join("cert.pem");
        let key = bed.scratch.path().join("key.pem");
        let mut cmd = Command::new("openssl");
        cmd.args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "2", "-subj", &format!("/CN={MYHOSTNAME}")])
            .args(["-addext", &format!("subjectAltName=DNS:{MYHOSTNAME}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert);
        let out = output_within(&mut cmd, TOOL_LIMIT).expect("running openssl");
        assert!(
            out.status.success(),
            "openssl req failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Self { cert, key }
    }
}

/// `smtp-screen run` in the server namespace, its stderr (tracing and the mail log) in a file.
struct Daemon {
    process: ChildGuard,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits until it accepts connections.
    fn start(bed: &Bed, pin: &PinDir, config: &Path) -> Self {
        let bin = smtp_screen_bin().expect("the smtp-screen binary");
        let log = bed.scratch.path().join("daemon.log");
        let log_file = File::create(&log).expect("daemon log file");
        let mut cmd = bed.server.command(bin);
        cmd.arg("--pin-dir")
            .arg(pin.path())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let process = ChildGuard::spawn(&mut cmd).expect("starting smtp-screen run");
        let mut daemon = Self { process, log };
        let deadline = Instant::now() + START_WAIT;
        while !daemon.log().contains("smtp-screen screening connections") {
            daemon.assert_running();
            assert!(
                Instant::now() < deadline,
                "the daemon is not accepting connections after {START_WAIT:?}:\n{}",
                daemon.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The mail log's lines without their `smtp-screen[pid]: ` prefix; the operational
    /// (tracing) lines are left out.
    fn lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("smtp-screen[")?;
                let (pid, text) = rest.split_once("]: ")?;
                pid.parse::<u32>().ok()?;
                Some(text.to_string())
            })
            .collect()
    }

    /// Every line of one session, in order: the lines that name the client `tag`
    /// (`[address]:port`) followed by anything but another digit of a longer port.
    fn session(&self, tag: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| names_client(line, tag))
            .collect()
    }

    /// Waits until `line` is logged, then returns the session of `tag` as it stands.
    fn session_after(&self, tag: &str, line: &str) -> Vec<String> {
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            let session = self.session(tag);
            if session.iter().any(|l| l == line) {
                return session;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not log {line:?} within {LOG_WAIT:?}; its log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the session of `tag` to end (`DISCONNECT`) and checks all its lines.
    fn expect_session(&self, tag: &str, expected: &[String]) {
        let session = self.session_after(tag, &format!("DISCONNECT {tag}"));
        assert_eq!(
            session,
            expected,
            "the session of {tag} logged otherwise; the daemon's log:\n{}",
            self.log()
        );
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.process.try_wait().expect("daemon state") {
            panic!("smtp-screen run exited ({status}):\n{}", self.log());
        }
    }
}

/// Whether the log `line` names the client `tag` rather than one whose port merely starts
/// with the same digits.
fn names_client(line: &str, tag: &str) -> bool {
    line.match_indices(tag).any(|(at, _)| {
        !line[at + tag.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// `CONNECT from [a]:p to [s]:25`, the first line of every session.
fn connect_line(bed: &Bed, client: &Client) -> String {
    let server = bed.smtp_addr(client.local.ip());
    format!("CONNECT from {} to {}", client.tag(), tag_of(server))
}

/// `NOQUEUE: reject: RCPT …`, as the engine logs a refused recipient.
fn rcpt_rejected(tag: &str, reply: &str, from: &str, helo: &str) -> String {
    format!(
        "NOQUEUE: reject: RCPT from {tag}: {reply}; from=<{from}>, to=<user@{MAIL_DOMAIN}>, \
         proto=ESMTP, helo=<{helo}>"
    )
}

/// A socket address as postscreen writes a client: `[address]:port`.
fn tag_of(addr: SocketAddr) -> String {
    format!("[{}]:{}", addr.ip(), addr.port())
}

/// How reading from the server ended.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    Line(String),
    /// The server closed the connection (or reset it) before a whole line arrived.
    Closed,
    /// Nothing more within the time allowed.
    Silent,
}

/// One scripted SMTP client: a connection from one of the client's addresses, read line by
/// line with deadlines, and a transcript for the failure messages.
struct Client {
    stream: TcpStream,
    local: SocketAddr,
    pending: Vec<u8>,
    transcript: Vec<String>,
}

impl Client {
    fn connect(bed: &Bed, src: IpAddr) -> Self {
        let dst = bed.smtp_addr(src);
        let stream = stream_from(&bed.client, src, dst, CONNECT_LIMIT)
            .unwrap_or_else(|e| panic!("connecting from {src} to {dst}: {e}"));
        let local = stream.local_addr().expect("local address");
        Self {
            stream,
            local,
            pending: Vec::new(),
            transcript: Vec::new(),
        }
    }

    /// The client as the daemon logs it: `[address]:port`.
    fn tag(&self) -> String {
        tag_of(self.local)
    }

    /// The next line from the server (without its line ending), waiting up to `limit`.
    fn next(&mut self, limit: Duration) -> Received {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8_lossy(&line).into_owned();
                self.transcript.push(format!("<- {line}"));
                return Received::Line(line);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Received::Silent;
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("read timeout");
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => return Received::Closed,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Received::Closed;
                }
                Err(e) => panic!("reading from {}: {e}", self.tag()),
            }
        }
    }

    /// The next line, which must arrive within `limit`.
    fn line(&mut self, limit: Duration) -> String {
        match self.next(limit) {
            Received::Line(line) => line,
            other => panic!(
                "{}: expected a line within {limit:?}, got {other:?}; transcript:\n{}",
                self.tag(),
                self.transcript.join("\n")
            ),
        }
    }

    /// A whole reply, continuation lines included.
    fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line(REPLY_WAIT);
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    /// Sends `bytes` in one write, as they are.
    fn send(&mut self, bytes: &[u8]) {
        self.transcript
            .push(format!("-> {}", String::from_utf8_lossy(bytes).trim_end()));
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing to the server from {}: {e}", self.tag()));
    }

    /// Sends one command line and returns the reply.
    fn command(&mut self, command: &str) -> Vec<String> {
        self.send(format!("{command}\r\n").as_bytes());
        self.reply()
    }

    /// Every line until the server closes the connection, which it must do within `limit`.
    fn until_closed(&mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut lines = Vec::new();
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Received::Line(line) => lines.push(line),
                Received::Closed => return lines,
                Received::Silent => panic!(
                    "{}: the server kept the connection open past {limit:?}; transcript:\n{}",
                    self.tag(),
                    self.transcript.join("\n")
                ),
            }
        }
    }

    /// Waits for the whole greeting of a new client: the teaser, then the engine's `220`
    /// after the greet wait.
    fn engine_greeting(&mut self) {
        assert_eq!(self.line(REPLY_WAIT), TEASER, "{}", self.tag());
        assert_eq!(
            self.line(GREET_WAIT + REPLY_WAIT),
            ENGINE_GREETING,
            "{}",
            self.tag()
        );
    }

    /// EHLO, MAIL and RCPT one at a time, each after the reply to the last, as a well-behaved
    /// client talks; returns the reply to RCPT.
    fn clean_transaction(&mut self) -> Vec<String> {
        assert_eq!(self.command(&format!("EHLO {CLIENT_HELO}")), ENGINE_EHLO);
        assert_eq!(
            self.command(&format!("MAIL FROM:<{SENDER}>")),
            ["250 2.1.0 Ok"]
        );
        self.command(&format!("RCPT TO:<user@{MAIL_DOMAIN}>"))
    }

    /// Ends the session politely.
    fn quit(mut self) {
        assert_eq!(self.command("QUIT"), ["221 2.0.0 Bye"], "{}", self.tag());
        assert_eq!(self.next(REPLY_WAIT), Received::Closed, "{}", self.tag());
    }
}

/// What swaks printed.
struct Swaks(Output);

impl Swaks {
    fn transcript(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.0.stdout),
            String::from_utf8_lossy(&self.0.stderr)
        )
    }

    /// The server's lines that came in plaintext, as swaks shows them (`<-  ` for replies,
    /// `<** ` for the ones it takes as errors).
    fn received(&self) -> Vec<String> {
        self.lines_with(&["<-  ", "<** "])
    }

    /// The server's lines that came over TLS (`<~  `, `<~* `).
    fn received_over_tls(&self) -> Vec<String> {
        self.lines_with(&["<~  ", "<~* "])
    }

    fn lines_with(&self, prefixes: &[&str]) -> Vec<String> {
        self.transcript()
            .lines()
            .filter_map(|line| prefixes.iter().find_map(|p| line.strip_prefix(p)))
            .map(str::to_string)
            .collect()
    }

    /// The session's protocol, cipher and bits as swaks reports them once STARTTLS is done
    /// (`TLSv1.3:TLS_AES_256_GCM_SHA384:256`).
    fn tls_session(&self) -> Option<String> {
        self.transcript()
            .lines()
            .find_map(|line| line.strip_prefix("=== TLS started with cipher "))
            .map(str::to_string)
    }

    fn assert_success(&self) {
        assert!(
            self.0.status.success(),
            "swaks failed ({}):\n{}",
            self.0.status,
            self.transcript()
        );
    }

    /// swaks gave up because every recipient was refused (and said QUIT first).
    fn assert_recipients_refused(&self) {
        assert_eq!(
            self.0.status.code(),
            Some(SWAKS_NO_RECIPIENTS),
            "swaks must end with its no-recipients status:\n{}",
            self.transcript()
        );
    }
}

/// The engine's EHLO reply with STARTTLS offered.
fn engine_ehlo_with_starttls() -> Vec<String> {
    let mut lines: Vec<String> = ENGINE_EHLO.iter().map(|l| l.to_string()).collect();
    let after_etrn = lines.iter().position(|l| l == "250-ETRN").expect("ETRN") + 1;
    lines.insert(after_etrn, "250-STARTTLS".into());
    lines
}

/// The client port swaks connected from, from the daemon's `CONNECT` lines: the one port of
/// `ip` not in `known`.
fn new_session_tag(daemon: &Daemon, ip: IpAddr, known: &[String]) -> String {
    let prefix = format!("CONNECT from [{ip}]:");
    let tags: Vec<String> = daemon
        .lines()
        .iter()
        .filter_map(|line| {
            let port = line.strip_prefix(&prefix)?.split_once(' ')?.0;
            Some(format!("[{ip}]:{port}"))
        })
        .filter(|tag| !known.contains(tag))
        .collect();
    let [tag] = &tags[..] else {
        panic!(
            "expected one new session from {ip}, got {tags:?}:\n{}",
            daemon.log()
        );
    };
    tag.clone()
}

/// Waits until Postfix has logged a line containing `text`.
fn expect_backend_log(postfix: &Postfix, text: &str) {
    assert!(
        postfix.wait_for_log(text, LOG_WAIT).is_some(),
        "Postfix did not log {text:?}:\n{}",
        postfix.log()
    );
}

#[test]
fn a_clean_client_is_deferred_once_then_passed_old_to_postfix() {
    if !require_root("a_clean_client_is_deferred_once_then_passed_old_to_postfix") {
        return;
    }
    ensure_packages(&["postfix", "swaks"]).expect("postfix and swaks");
    let bed = Bed::new("deep-good", &[11]);
    let good = bed.v4(11);
    let postfix =
        Postfix::start(&bed.server, &bed.backend_config()).expect("starting the Postfix backend");
    let pin = PinDir::new("deep-good");
    let config = DaemonConfig::new(&bed).write(&bed);
    let daemon = Daemon::start(&bed, &pin, &config);
    let marker = format!("delivered after the deep tests from {good}");

    // First contact: the engine speaks, never announces PIPELINING, and defers at RCPT.
    let first = bed.swaks(good, &marker, &[]);
    first.assert_recipients_refused();
    let mut expected = vec![TEASER.to_string(), ENGINE_GREETING.to_string()];
    expected.extend(ENGINE_EHLO.map(String::from));
    expected.extend([
        "250 2.1.0 Ok".to_string(),
        DEFERRED.to_string(),
        "221 2.0.0 Bye".to_string(),
    ]);
    assert_eq!(first.received(), expected, "{}", first.transcript());
    let tag = new_session_tag(&daemon, good, &[]);
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
    let second = bed.swaks(good, &marker, &[]);
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
    let again = new_session_tag(&daemon, good, std::slice::from_ref(&tag));
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
    let config = DaemonConfig::new(&bed).write(&bed);
    let daemon = Daemon::start(&bed, &pin, &config);

    let mut client = bed.connect(bot);
    client.engine_greeting();
    // EHLO and MAIL in one write, although the server never offered PIPELINING.
    client.send(b"EHLO bot.example\r\nMAIL FROM:<p@example.org>\r\n");
    assert_eq!(client.reply(), ENGINE_EHLO);
    assert_eq!(client.reply(), ["250 2.1.0 Ok"]);
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
    let config = DaemonConfig::new(&bed).write(&bed);
    let daemon = Daemon::start(&bed, &pin, &config);

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
    let config = DaemonConfig::new(&bed).write(&bed);
    let daemon = Daemon::start(&bed, &pin, &config);

    let mut client = bed.connect(bot);
    client.engine_greeting();
    // The line is still accepted and answered, as smtpd would.
    client.send(b"EHLO b.example\n");
    assert_eq!(client.reply(), ENGINE_EHLO);
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
    let config = DaemonConfig::new(&bed).with_tls(&certificate).write(&bed);
    let daemon = Daemon::start(&bed, &pin, &config);
    let marker = format!("delivered over TLS from {client}");

    let first = bed.swaks(client, &marker, &["--tls"]);
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
    let tag = new_session_tag(&daemon, client, &[]);
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
    let second = bed.swaks(client, &marker, &["--tls"]);
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
    let again = new_session_tag(&daemon, client, std::slice::from_ref(&tag));
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
    let config = DaemonConfig::new(&bed).write(&bed);
    let daemon = Daemon::start(&bed, &pin, &config);

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
    let config = DaemonConfig::new(&bed).write(&bed);
    let daemon = Daemon::start(&bed, &pin, &config);

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
    assert_eq!(client.clean_transaction(), [DEFERRED]);
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
    let config = DaemonConfig::new(&bed)
        .set("allowlist_interfaces", quoted(elsewhere))
        .write(&bed);
    let daemon = Daemon::start(&bed, &pin, &config);

    for _ in 0..2 {
        // Screened in full each time: the teaser, the greet wait, the 450 at RCPT.
        let mut client = bed.connect(vetoed);
        client.engine_greeting();
        assert_eq!(client.clean_transaction(), [DEFERRED]);
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
    let dnswl = bed.start_dnswl(vouched);
    let postfix =
        Postfix::start(&bed.server, &bed.backend_config()).expect("starting the Postfix backend");
    let pin = PinDir::new("deep-dnswl");
    // deep_tests_skip_dnswl is on by default.
    let config = DaemonConfig::new(&bed).with_dnswl(&dnswl).write(&bed);
    let daemon = Daemon::start(&bed, &pin, &config);

    // Vouched for: the greet wait still runs, then straight to Postfix, no 450 and no reconnect.
    let marker = format!("delivered on the word of a DNSWL from {vouched}");
    let swaks = bed.swaks(vouched, &marker, &[]);
    swaks.assert_success();
    assert_eq!(
        swaks.received().get(..2),
        Some(&[TEASER.to_string(), BACKEND_GREETING.to_string()][..]),
        "{}",
        swaks.transcript()
    );
    let tag = new_session_tag(&daemon, vouched, &[]);
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
    assert_eq!(client.clean_transaction(), [DEFERRED]);
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
    let dnswl = bed.start_dnswl(vouched);
    let pin = PinDir::new("deep-nodnswl");
    let config = DaemonConfig::new(&bed)
        .with_dnswl(&dnswl)
        .set("deep_tests_skip_dnswl", quoted("no"))
        .write(&bed);
    let daemon = Daemon::start(&bed, &pin, &config);

    let mut client = bed.connect(vouched);
    client.engine_greeting();
    assert_eq!(client.clean_transaction(), [DEFERRED]);
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
