//! The screening daemon end to end: `smtp-screen run` in a server network namespace, a
//! private Postfix behind it as the real MTA (with a PROXY v2 header first, so that Postfix
//! logs each client's own address), and real clients in a client namespace, each role from an
//! address of its own: swaks for a whole mail transaction, scripted sessions where timing or
//! misbehaviour matters. Every check is on what a client received, word for word, on the
//! daemon's postscreen log lines, and where it matters on what Postfix logged and delivered.
//!
//! The times are short (greet wait 2s, command time limit 3s) so that the suite stays fast;
//! each test sets up its own namespaces, daemon and, when it needs one, Postfix.
//!
//! The binary is the one cargo built next to this test (`cargo build -p screen-user` first), or
//! the one named in `SMTP_SCREEN_BIN`.

use std::{
    fs::File,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use screen_tests::{
    ensure_packages,
    netns::{
        ChildGuard, ConnectOutcome, Netns, PinDir, ScratchDir, VethPair, connect_from,
        output_within, smtp_screen_bin, stream_from, subnet_index,
    },
    postfix::{MAIL_DOMAIN, Postfix, PostfixConfig},
    require_root,
};

const SMTP_PORT: u16 = 25;
const MYHOSTNAME: &str = "mx.example.test";
/// `greet_wait` and `command_time_limit` as configured, and their values without stress.
const GREET_WAIT_SETTING: &str = "${stress?{1}:{2}}s";
const GREET_WAIT: Duration = Duration::from_secs(2);
const COMMAND_TIME_LIMIT_SETTING: &str = "${stress?{2}:{3}}s";
const COMMAND_TIME_LIMIT: Duration = Duration::from_secs(3);

/// The first line of a greeting while the pregreet test runs.
const TEASER: &str = "220-mx.example.test ESMTP";
/// The greeting of the daemon's own SMTP engine.
const ENGINE_GREETING: &str = "220 mx.example.test ESMTP";
/// The greeting of the Postfix backend.
const BACKEND_GREETING: &str = "220 mx.example.test ESMTP Postfix";

/// Upper bound for a reply that is due at once.
const REPLY_WAIT: Duration = Duration::from_secs(5);
/// A greeting that skips the greet wait must arrive well within it.
const PROMPT: Duration = Duration::from_millis(1000);
/// Upper bound for the daemon to log a line once the client saw the reply it goes with.
const LOG_WAIT: Duration = Duration::from_secs(5);
/// How long a connect waits before it counts as dropped: the SYN and its first retransmission
/// (one second later) both go unanswered.
const DROP_WAIT: Duration = Duration::from_millis(1500);
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// Upper bound for the daemon to start, the kernel layer attached when configured.
const START_WAIT: Duration = Duration::from_secs(20);
/// Upper bound for one CLI command or swaks run.
const TOOL_LIMIT: Duration = Duration::from_secs(30);
/// Upper bound for Postfix to deliver an accepted message.
const DELIVERY_WAIT: Duration = Duration::from_secs(15);
/// How far the daemon's resident memory may grow while it refuses floods of junk.
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;
/// The TTL of a kernel deny entry (`deny_ttl`, default).
const DENY_TTL_SECS: u64 = 3600;

/// The line-length and command-count limits answer with this.
const SERVICE_UNAVAILABLE: &str = "421 mx.example.test Service unavailable - try again later";

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
        bed.server
            .add_address(bed.server_iface(), bed.server_v4(), 24)
            .expect("server IPv4 address");
        bed.server
            .add_address(bed.server_iface(), bed.server_v6(), 64)
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

    fn server_iface(&self) -> &str {
        self.veth.b()
    }

    /// Where the backend listens: loopback of the server namespace, which clients cannot
    /// reach past the daemon.
    fn backend_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 10025))
    }

    /// Postfix on [`Bed::backend_addr`], reading the PROXY header the daemon sends.
    fn start_backend(&self) -> Postfix {
        let config = PostfixConfig::new(self.backend_addr())
            .myhostname(MYHOSTNAME)
            .upstream_proxy_protocol();
        Postfix::start(&self.server, &config).expect("starting the Postfix backend")
    }

    fn connect(&self, src: IpAddr) -> Client {
        Client::connect(self, src)
    }

    /// Runs swaks in the client namespace from `src` against the daemon.
    fn swaks(&self, src: IpAddr, args: &[&str]) -> Swaks {
        let server = self.smtp_addr(src);
        let mut cmd = self.client.command("swaks");
        cmd.arg("--server")
            .arg(server.ip().to_string())
            .arg("--port")
            .arg(server.port().to_string())
            .arg("--local-interface")
            .arg(src.to_string())
            .args(["--ehlo", "client.example", "--timeout", "15"])
            .args(args);
        let output = output_within(&mut cmd, TOOL_LIMIT).expect("running swaks");
        Swaks(output)
    }

    /// Writes a CIDR access table and returns its path.
    fn write_table(&self, name: &str, rules: &[(IpAddr, &str)]) -> PathBuf {
        let mut text = String::from("# smtp-screen end-to-end access table\n");
        for (addr, action) in rules {
            text.push_str(&format!("{addr} {action}\n"));
        }
        self.scratch.write(name, text).expect("CIDR table")
    }
}

/// The daemon's configuration file, built from the settings every test shares; a test
/// replaces or adds options with [`DaemonConfig::set`].
struct DaemonConfig {
    options: Vec<(&'static str, String)>,
}

impl DaemonConfig {
    fn new(bed: &Bed) -> Self {
        let options = vec![
            (
                "listen",
                format!(
                    "[{:?}, {:?}]",
                    SocketAddr::new(bed.server_v4(), SMTP_PORT).to_string(),
                    SocketAddr::new(bed.server_v6(), SMTP_PORT).to_string()
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

    /// The kernel layer on the server's end of the link, in generic mode, for port 25.
    fn with_kernel_layer(self, bed: &Bed) -> Self {
        self.set("interfaces", format!("[{}]", quoted(bed.server_iface())))
            .set("xdp_mode", quoted("generic"))
            .set("protected_ports", format!("[{SMTP_PORT}]"))
    }

    fn write(&self, bed: &Bed, name: &str) -> PathBuf {
        let text: String = self
            .options
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        bed.scratch.write(name, text).expect("daemon configuration")
    }
}

/// A TOML basic string.
fn quoted(value: impl std::fmt::Display) -> String {
    format!("{:?}", value.to_string())
}

/// `smtp-screen run` in the server namespace, its stderr (tracing and the mail log) in a file.
struct Daemon {
    process: ChildGuard,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits until it accepts connections.
    fn start(bed: &Bed, pin: &PinDir, config: &Path, log_name: &str) -> Self {
        let bin = smtp_screen_bin().expect("the smtp-screen binary");
        let log = bed.scratch.path().join(log_name);
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

    fn has_line(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }

    /// Waits for a log line matching `matches`; returns it.
    fn wait_for(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| matches(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not log {what} within {LOG_WAIT:?}; its log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for exactly `line`.
    fn expect_line(&self, line: &str) {
        self.wait_for(&format!("{line:?}"), |l| l == line);
    }

    /// The client ports of every `CONNECT from [ip]:port` line.
    fn connect_ports(&self, ip: IpAddr) -> Vec<u16> {
        let prefix = format!("CONNECT from [{ip}]:");
        self.lines()
            .iter()
            .filter_map(|line| line.strip_prefix(&prefix)?.split_once(' ')?.0.parse().ok())
            .collect()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.process.try_wait().expect("daemon state") {
            panic!("smtp-screen run exited ({status}):\n{}", self.log());
        }
    }

    /// Resident memory in KiB (`VmRSS`). nsenter execs the daemon, so the child's pid is the
    /// daemon's.
    fn rss_kib(&self) -> u64 {
        let pid = self.process.id();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
        assert!(
            status.lines().next() == Some("Name:\tsmtp-screen"),
            "process {pid} is not the daemon:\n{status}"
        );
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"))
    }

    /// Stops the daemon with SIGTERM, as an init system does; it must exit cleanly.
    fn stop(mut self) {
        let stopped = self
            .process
            .terminate(Duration::from_secs(10))
            .expect("SIGTERM the daemon");
        assert!(
            stopped.is_some_and(|status| status.success()),
            "the daemon must stop cleanly on SIGTERM ({stopped:?}):\n{}",
            self.log()
        );
    }
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
        format!("[{}]:{}", self.local.ip(), self.local.port())
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
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
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
    fn reply(&mut self, limit: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line(limit);
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

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
        self.reply(REPLY_WAIT)
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

    /// Waits for the whole greeting of a client that the daemon screens and serves itself:
    /// the teaser, then the engine's `220` after the greet wait.
    fn engine_greeting(&mut self) {
        assert_eq!(self.line(REPLY_WAIT), TEASER, "{}", self.tag());
        assert_eq!(
            self.line(GREET_WAIT + REPLY_WAIT),
            ENGINE_GREETING,
            "{}",
            self.tag()
        );
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

    /// The server's lines, as swaks shows them (`<-  ` for replies, `<** ` for errors).
    fn received(&self) -> Vec<String> {
        self.transcript()
            .lines()
            .filter_map(|line| {
                line.strip_prefix("<-  ")
                    .or_else(|| line.strip_prefix("<** "))
            })
            .map(str::to_string)
            .collect()
    }

    fn assert_success(&self) {
        assert!(
            self.0.status.success(),
            "swaks failed ({}):\n{}",
            self.0.status,
            self.transcript()
        );
    }
}

/// `smtp-screen --pin-dir DIR deny list`, in the server namespace.
fn deny_list(bed: &Bed, pin: &PinDir) -> String {
    let bin = smtp_screen_bin().expect("the smtp-screen binary");
    let mut cmd = bed.server.command(bin);
    cmd.arg("--pin-dir").arg(pin.path()).args(["deny", "list"]);
    let out = output_within(&mut cmd, TOOL_LIMIT).expect("smtp-screen deny list");
    assert!(
        out.status.success(),
        "smtp-screen deny list failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `deny list` line of the dynamic entry for `addr`, if there is one.
fn dynamic_deny(list: &str, addr: IpAddr) -> Option<String> {
    let prefix = format!("{addr}/32 dynamic ");
    list.lines()
        .find(|line| line.starts_with(&prefix))
        .map(str::to_string)
}

/// Sends `bytes` from another thread, so that the client keeps reading while the server
/// stops taking input; a server that hangs up mid-way makes the write fail, as it may.
fn send_in_background(client: &Client, bytes: Vec<u8>) -> thread::JoinHandle<()> {
    let mut writer = client.stream.try_clone().expect("clone the connection");
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

/// A first-time client passed the greet wait and its message, marked with `marker`, reached
/// the mailbox; the daemon logged the connection and the pass, and Postfix saw the client's
/// own address through the PROXY header.
fn expect_delivered_and_passed(
    bed: &Bed,
    daemon: &Daemon,
    postfix: &Postfix,
    client: IpAddr,
    marker: &str,
) {
    assert!(
        postfix.wait_for_mail(marker, DELIVERY_WAIT),
        "the message from {client} was not delivered; Postfix log:\n{}",
        postfix.log()
    );
    let ports = daemon.connect_ports(client);
    let [port] = ports[..] else {
        panic!(
            "expected one CONNECT from {client}, got ports {ports:?}:\n{}",
            daemon.log()
        );
    };
    let server = bed.smtp_addr(client).ip();
    daemon.expect_line(&format!(
        "CONNECT from [{client}]:{port} to [{server}]:{SMTP_PORT}"
    ));
    daemon.expect_line(&format!("PASS NEW [{client}]:{port}"));
    let seen = format!("connect from unknown[{client}]");
    assert!(
        postfix.wait_for_log(&seen, LOG_WAIT).is_some(),
        "Postfix did not log {seen:?}:\n{}",
        postfix.log()
    );
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
    let swaks = bed.swaks(
        good,
        &[
            "--from",
            "sender@client.example",
            "--to",
            &to,
            "--body",
            &marker,
        ],
    );
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
                .transcript
                .iter()
                .any(|line| line.starts_with("<- 220 ")),
            "a pregreeter must never get the final 220:\n{}",
            client.transcript.join("\n")
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
    daemon.expect_line(&format!("DISCONNECT {tag}"));

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
