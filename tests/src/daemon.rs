//! The screening daemon under test, end to end: a client and a server network namespace joined
//! by a veth pair ([`Bed`]), `smtp-screen run` in the server namespace ([`Daemon`]) with its
//! configuration file ([`DaemonConfig`]), a private Postfix behind it as the real MTA, and
//! scripted SMTP clients ([`Client`]) or swaks ([`Swaks`]) in the client namespace. Sessions
//! are checked against the daemon's postscreen log lines, all of a session's lines in order
//! ([`Daemon::expect_session`]) or one at a time.
//!
//! The times are short (greet wait 2s, command time limit 3s) so that the suites stay fast.
//! The daemon binary is the one cargo built next to the test (`cargo build -p screen-user`
//! first), or the one named in `SMTP_SCREEN_BIN`.

use std::{
    fs::File,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns::{
        ChildGuard, Netns, PinDir, ScratchDir, VethPair, output_within, run_within,
        smtp_screen_bin, stream_from, subnet_index,
    },
    postfix::{MAIL_DOMAIN, Postfix, PostfixConfig},
};

/// The port the daemon listens on.
pub const SMTP_PORT: u16 = 25;
/// The name the daemon and its Postfix backend greet with.
pub const MYHOSTNAME: &str = "mx.example.test";
/// `greet_wait` and `command_time_limit` as configured, and their values without stress.
pub const GREET_WAIT_SETTING: &str = "${stress?{1}:{2}}s";
pub const GREET_WAIT: Duration = Duration::from_secs(2);
pub const COMMAND_TIME_LIMIT_SETTING: &str = "${stress?{2}:{3}}s";
pub const COMMAND_TIME_LIMIT: Duration = Duration::from_secs(3);

/// The first line of a greeting while the pregreet test runs.
pub const TEASER: &str = "220-mx.example.test ESMTP";
/// The greeting of the daemon's own SMTP engine.
pub const ENGINE_GREETING: &str = "220 mx.example.test ESMTP";
/// The greeting of the Postfix backend.
pub const BACKEND_GREETING: &str = "220 mx.example.test ESMTP Postfix";

/// The envelope sender and HELO name of the clients' mail transactions.
pub const SENDER: &str = "sender@client.example";
pub const CLIENT_HELO: &str = "client.example";
/// swaks' exit status when every recipient was refused.
const SWAKS_NO_RECIPIENTS: i32 = 24;

/// Upper bound for a reply that is due at once.
pub const REPLY_WAIT: Duration = Duration::from_secs(5);
/// A greeting that skips the greet wait must arrive well within it.
pub const PROMPT: Duration = Duration::from_millis(1000);
/// Upper bound for the daemon to log a line once the client saw the reply it goes with.
pub const LOG_WAIT: Duration = Duration::from_secs(5);
/// How long a connect waits before it counts as dropped: the SYN and its first retransmission
/// (one second later) both go unanswered.
pub const DROP_WAIT: Duration = Duration::from_millis(1500);
pub const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// Upper bound for the daemon to start, the kernel layer attached when configured.
pub const START_WAIT: Duration = Duration::from_secs(20);
/// Upper bound for one CLI command or swaks run.
pub const TOOL_LIMIT: Duration = Duration::from_secs(30);
/// Upper bound for Postfix to deliver an accepted message.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(15);

/// The TTL of a kernel deny entry (`deny_ttl`, default).
pub const DENY_TTL_SECS: u64 = 3600;

/// Client and server namespaces joined by a veth pair. The server has 10.251.N.1/24 and
/// fd00:251:N::1/64; the client has 10.251.N.H and fd00:251:N::H for each host number H it was
/// given, one per role. Fields drop in order: files, link, namespaces.
pub struct Bed {
    /// The N of the bed's networks.
    pub n: u8,
    pub scratch: ScratchDir,
    veth: VethPair,
    pub server: Netns,
    pub client: Netns,
}

impl Bed {
    pub fn new(tag: &str, hosts: &[u8]) -> Self {
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

    pub fn v4(&self, host: u8) -> IpAddr {
        Ipv4Addr::new(10, 251, self.n, host).into()
    }

    pub fn v6(&self, host: u8) -> IpAddr {
        Ipv6Addr::new(0xfd00, 0x251, self.n.into(), 0, 0, 0, 0, host.into()).into()
    }

    pub fn server_v4(&self) -> IpAddr {
        self.v4(1)
    }

    pub fn server_v6(&self) -> IpAddr {
        self.v6(1)
    }

    /// The daemon's listening address in the family of `client`.
    pub fn smtp_addr(&self, client: IpAddr) -> SocketAddr {
        let server = match client {
            IpAddr::V4(_) => self.server_v4(),
            IpAddr::V6(_) => self.server_v6(),
        };
        SocketAddr::new(server, SMTP_PORT)
    }

    pub fn server_iface(&self) -> &str {
        self.veth.b()
    }

    /// Where the backend listens: loopback of the server namespace, which clients cannot
    /// reach past the daemon.
    pub fn backend_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 10025))
    }

    /// Postfix on [`Bed::backend_addr`], reading the PROXY header the daemon sends.
    pub fn start_backend(&self) -> Postfix {
        Postfix::start(&self.server, &self.backend_config()).expect("starting the Postfix backend")
    }

    /// The configuration of [`Bed::start_backend`], for a test that adds to it.
    pub fn backend_config(&self) -> PostfixConfig {
        PostfixConfig::new(self.backend_addr())
            .myhostname(MYHOSTNAME)
            .upstream_proxy_protocol()
    }

    pub fn connect(&self, src: IpAddr) -> Client {
        Client::connect(self, src)
    }

    /// Runs swaks in the client namespace from `src` against the daemon.
    pub fn swaks(&self, src: IpAddr, args: &[&str]) -> Swaks {
        let server = self.smtp_addr(src);
        let mut cmd = self.client.command("swaks");
        cmd.arg("--server")
            .arg(server.ip().to_string())
            .arg("--port")
            .arg(server.port().to_string())
            .arg("--local-interface")
            .arg(src.to_string())
            .args(["--ehlo", CLIENT_HELO, "--timeout", "15"])
            .args(args);
        let output = output_within(&mut cmd, TOOL_LIMIT).expect("running swaks");
        Swaks(output)
    }

    /// Runs swaks from `src` for one message from [`SENDER`] to the backend's mail domain
    /// whose body is `body`, with swaks options `extra`.
    pub fn swaks_message(&self, src: IpAddr, body: &str, extra: &[&str]) -> Swaks {
        let to = format!("user@{MAIL_DOMAIN}");
        let mut args = vec!["--from", SENDER, "--to", &to, "--body", body];
        args.extend_from_slice(extra);
        self.swaks(src, &args)
    }

    /// Writes a CIDR access table and returns its path.
    pub fn write_table(&self, name: &str, rules: &[(IpAddr, &str)]) -> PathBuf {
        let mut text = String::from("# smtp-screen end-to-end access table\n");
        for (addr, action) in rules {
            text.push_str(&format!("{addr} {action}\n"));
        }
        self.scratch.write(name, text).expect("CIDR table")
    }
}

/// The daemon's configuration file, built from the settings every test shares; a test
/// replaces or adds options with [`DaemonConfig::set`].
pub struct DaemonConfig {
    options: Vec<(&'static str, String)>,
}

impl DaemonConfig {
    /// The shared settings; the daemon runs as its default account, created when missing.
    pub fn new(bed: &Bed) -> Self {
        crate::ensure_service_account().expect("the daemon's account");
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
            ("user", quoted(screen_user::privileges::DEFAULT_USER)),
            ("myhostname", quoted(MYHOSTNAME)),
            ("log_to", quoted("stderr")),
            ("greet_wait", quoted(GREET_WAIT_SETTING)),
            ("command_time_limit", quoted(COMMAND_TIME_LIMIT_SETTING)),
        ];
        Self { options }
    }

    /// Sets `key` to `value`, a TOML value as written in the file.
    pub fn set(mut self, key: &'static str, value: impl Into<String>) -> Self {
        let value = value.into();
        match self.options.iter_mut().find(|(k, _)| *k == key) {
            Some(option) => option.1 = value,
            None => self.options.push((key, value)),
        }
        self
    }

    /// The kernel layer on the server's end of the link, in generic mode, for port 25.
    pub fn with_kernel_layer(self, bed: &Bed) -> Self {
        self.set("interfaces", format!("[{}]", quoted(bed.server_iface())))
            .set("xdp_mode", quoted("generic"))
            .set("protected_ports", format!("[{SMTP_PORT}]"))
    }

    /// STARTTLS in the engine with `certificate`.
    pub fn with_tls(self, certificate: &TestCertificate) -> Self {
        self.set("tls_cert_file", quoted(certificate.cert.display()))
            .set("tls_key_file", quoted(certificate.key.display()))
    }

    pub fn write(&self, bed: &Bed, name: &str) -> PathBuf {
        let text: String = self
            .options
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        bed.scratch.write(name, text).expect("daemon configuration")
    }
}

/// A TOML basic string.
pub fn quoted(value: impl std::fmt::Display) -> String {
    format!("{:?}", value.to_string())
}

/// A self-signed certificate for [`MYHOSTNAME`] and its key, made by openssl in the bed's
/// scratch directory (removed with it). P-256: quick to make, and every TLS stack involved
/// (rustls, OpenSSL in Postfix and in swaks) takes it.
pub struct TestCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCertificate {
    pub fn create(bed: &Bed) -> Self {
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
        run_within(&mut cmd, TOOL_LIMIT).unwrap_or_else(|e| panic!("openssl req: {e}"));
        Self { cert, key }
    }
}

/// `smtp-screen run` in a namespace, its stderr (tracing and the mail log) in a file.
pub struct Daemon {
    process: ChildGuard,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits until it accepts connections.
    pub fn start(bed: &Bed, pin: &PinDir, config: &Path, log_name: &str) -> Self {
        let bin = smtp_screen_bin().expect("the smtp-screen binary");
        Self::start_binary(bed, pin, &bin, config, log_name)
    }

    /// Starts the daemon binary `bin` rather than the one under test, such as an earlier
    /// build to compare with.
    pub fn start_binary(
        bed: &Bed,
        pin: &PinDir,
        bin: &Path,
        config: &Path,
        log_name: &str,
    ) -> Self {
        let log = bed.scratch.path().join(log_name);
        let mut daemon = Self::spawn(&bed.server, bin, pin.path(), config, log);
        daemon.wait_screening();
        daemon
    }

    /// Starts `bin run --config CONFIG` in `netns`, with its pins under `pin_dir` and its
    /// stderr in `log`, and returns at once: for a test that is not built on a [`Bed`], or
    /// that waits for something else than [`Daemon::wait_screening`].
    pub fn spawn(netns: &Netns, bin: &Path, pin_dir: &Path, config: &Path, log: PathBuf) -> Self {
        // A configuration without `user` runs the daemon as its default account.
        crate::ensure_service_account().expect("the daemon's account");
        let log_file = File::create(&log).expect("daemon log file");
        let mut cmd = netns.command(bin);
        cmd.arg("--pin-dir")
            .arg(pin_dir)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let process = ChildGuard::spawn(&mut cmd).expect("starting smtp-screen run");
        Self { process, log }
    }

    /// Waits until the daemon accepts connections.
    pub fn wait_screening(&mut self) {
        let deadline = Instant::now() + START_WAIT;
        while !self.log().contains("smtp-screen screening connections") {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "the daemon is not accepting connections after {START_WAIT:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The mail log's lines without their `smtp-screen[pid]: ` prefix; the operational
    /// (tracing) lines are left out.
    pub fn lines(&self) -> Vec<String> {
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

    pub fn has_line(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }

    /// Waits for a log line matching `matches`; returns it.
    pub fn wait_for(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        self.wait_until(what, || self.lines().into_iter().find(|l| matches(l)))
    }

    /// Polls `logged` until it finds what the daemon was to log, `what`, for up to
    /// [`LOG_WAIT`].
    fn wait_until<T>(&self, what: &str, logged: impl Fn() -> Option<T>) -> T {
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            if let Some(found) = logged() {
                return found;
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
    pub fn expect_line(&self, line: &str) {
        self.wait_for(&format!("{line:?}"), |l| l == line);
    }

    /// Every line of one session, in order: the lines that name the client `tag`
    /// (`[address]:port`) followed by anything but another digit of a longer port.
    pub fn session(&self, tag: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| names_client(line, tag))
            .collect()
    }

    /// Waits until `line` is logged, then returns the session of `tag` as it stands.
    pub fn session_after(&self, tag: &str, line: &str) -> Vec<String> {
        self.wait_until(&format!("{line:?}"), || {
            let session = self.session(tag);
            session.iter().any(|l| l == line).then_some(session)
        })
    }

    /// Waits for the session of `tag` to end (`DISCONNECT`) and checks all its lines.
    pub fn expect_session(&self, tag: &str, expected: &[String]) {
        let session = self.session_after(tag, &format!("DISCONNECT {tag}"));
        assert_eq!(
            session,
            expected,
            "the session of {tag} logged otherwise; the daemon's log:\n{}",
            self.log()
        );
    }

    /// The tag of the one session of `ip` the daemon logged a `CONNECT` for that is not in
    /// `known`, for clients such as swaks whose port the test does not see.
    pub fn new_session_tag(&self, ip: IpAddr, known: &[String]) -> String {
        let tags: Vec<String> = self
            .connect_ports(ip)
            .into_iter()
            .map(|port| tag_of(SocketAddr::new(ip, port)))
            .filter(|tag| !known.contains(tag))
            .collect();
        let [tag] = &tags[..] else {
            panic!(
                "expected one new session from {ip}, got {tags:?}:\n{}",
                self.log()
            );
        };
        tag.clone()
    }

    /// The client ports of every `CONNECT from [ip]:port` line.
    pub fn connect_ports(&self, ip: IpAddr) -> Vec<u16> {
        let prefix = format!("CONNECT from [{ip}]:");
        self.lines()
            .iter()
            .filter_map(|line| line.strip_prefix(&prefix)?.split_once(' ')?.0.parse().ok())
            .collect()
    }

    /// The daemon's pid: nsenter execs the daemon, so the child's pid is the daemon's.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.process.try_wait().expect("daemon state") {
            panic!("smtp-screen run exited ({status}):\n{}", self.log());
        }
    }

    /// Kills the daemon (SIGKILL), as a crash would, and returns how it ended.
    pub fn kill(&mut self) -> ExitStatus {
        self.process.kill().expect("SIGKILL the daemon")
    }

    /// Resident memory in KiB (`VmRSS`). nsenter execs the daemon, so the child's pid is the
    /// daemon's.
    pub fn rss_kib(&self) -> u64 {
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
    pub fn stop(self) {
        self.stop_within(Duration::from_secs(10));
    }

    /// Stops the daemon with SIGTERM; it must exit cleanly within `grace`.
    pub fn stop_within(mut self, grace: Duration) {
        let stopped = self.process.terminate(grace).expect("SIGTERM the daemon");
        assert!(
            stopped.is_some_and(|status| status.success()),
            "the daemon must stop cleanly on SIGTERM ({stopped:?}):\n{}",
            self.log()
        );
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

/// A socket address as postscreen writes a client: `[address]:port`.
pub fn tag_of(addr: SocketAddr) -> String {
    format!("[{}]:{}", addr.ip(), addr.port())
}

/// `CONNECT from [a]:p to [s]:25`, the first line of every session.
pub fn connect_line(bed: &Bed, client: &Client) -> String {
    let server = bed.smtp_addr(client.local.ip());
    format!("CONNECT from {} to {}", client.tag(), tag_of(server))
}

/// `NOQUEUE: reject: RCPT …`, as the engine logs a refused recipient of the backend's mail
/// domain.
pub fn rcpt_rejected(tag: &str, reply: &str, from: &str, helo: &str) -> String {
    format!(
        "NOQUEUE: reject: RCPT from {tag}: {reply}; from=<{from}>, to=<user@{MAIL_DOMAIN}>, \
         proto=ESMTP, helo=<{helo}>"
    )
}

/// The first whole line of what a client has received, taken out of `pending` and returned
/// without its line ending (CRLF or a bare LF); `None` until a line is complete.
pub fn take_line(pending: &mut Vec<u8>) -> Option<String> {
    let end = pending.iter().position(|&b| b == b'\n')?;
    let mut line: Vec<u8> = pending.drain(..=end).collect();
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}

/// Whether the server kept the connection open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    Open,
    /// The server closed the connection, or reset it.
    Closed,
}

/// Waits up to `limit` for what the server sends on `stream` and adds it to `pending`, which
/// is unchanged when nothing came in time.
pub fn receive(mut stream: &TcpStream, pending: &mut Vec<u8>, limit: Duration) -> Connection {
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => Connection::Closed,
        Ok(n) => {
            pending.extend_from_slice(&buf[..n]);
            Connection::Open
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) =>
        {
            Connection::Open
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) =>
        {
            Connection::Closed
        }
        Err(e) => {
            let local = stream.local_addr().map_or_else(|_| "?".into(), tag_of);
            panic!("reading from the server at {local}: {e}")
        }
    }
}

/// How reading from the server ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Line(String),
    /// The server closed the connection (or reset it) before a whole line arrived.
    Closed,
    /// Nothing more within the time allowed.
    Silent,
}

/// One scripted SMTP client: a connection from one of the client's addresses, read line by
/// line with deadlines, and a transcript for the failure messages.
pub struct Client {
    stream: TcpStream,
    local: SocketAddr,
    pending: Vec<u8>,
    transcript: Vec<String>,
}

impl Client {
    pub fn connect(bed: &Bed, src: IpAddr) -> Self {
        Self::connect_in(&bed.client, src, bed.smtp_addr(src))
    }

    /// A connection from `src` to `dst` in the client namespace rather than to the daemon: to
    /// a load balancer in front of it, say.
    pub fn connect_to(bed: &Bed, src: IpAddr, dst: SocketAddr) -> Self {
        Self::connect_in(&bed.client, src, dst)
    }

    /// A client in `netns` (the server's, to reach the daemon without crossing the veth).
    pub fn connect_in(netns: &Netns, src: IpAddr, dst: SocketAddr) -> Self {
        let stream = stream_from(netns, src, dst, CONNECT_LIMIT)
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
    pub fn tag(&self) -> String {
        tag_of(self.local)
    }

    /// The connection, for a second writer or reader alongside the line reader.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// What was sent (`-> `) and received (`<- `) so far, line by line.
    pub fn transcript(&self) -> &[String] {
        &self.transcript
    }

    /// The next line from the server (without its line ending), waiting up to `limit`.
    pub fn next(&mut self, limit: Duration) -> Received {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = take_line(&mut self.pending) {
                self.transcript.push(format!("<- {line}"));
                return Received::Line(line);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Received::Silent;
            }
            if receive(&self.stream, &mut self.pending, left) == Connection::Closed {
                return Received::Closed;
            }
        }
    }

    /// The next line, which must arrive within `limit`.
    pub fn line(&mut self, limit: Duration) -> String {
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
    pub fn reply(&mut self, limit: Duration) -> Vec<String> {
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

    pub fn send(&mut self, bytes: &[u8]) {
        self.transcript
            .push(format!("-> {}", String::from_utf8_lossy(bytes).trim_end()));
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing to the server from {}: {e}", self.tag()));
    }

    /// Sends one command line and returns the reply.
    pub fn command(&mut self, command: &str) -> Vec<String> {
        self.send(format!("{command}\r\n").as_bytes());
        self.reply(REPLY_WAIT)
    }

    /// Every line until the server closes the connection, which it must do within `limit`.
    pub fn until_closed(&mut self, limit: Duration) -> Vec<String> {
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
    pub fn engine_greeting(&mut self) {
        assert_eq!(self.line(REPLY_WAIT), TEASER, "{}", self.tag());
        assert_eq!(
            self.line(GREET_WAIT + REPLY_WAIT),
            ENGINE_GREETING,
            "{}",
            self.tag()
        );
    }

    /// Ends the session politely.
    pub fn quit(mut self) {
        assert_eq!(self.command("QUIT"), ["221 2.0.0 Bye"], "{}", self.tag());
        assert_eq!(self.next(REPLY_WAIT), Received::Closed, "{}", self.tag());
    }
}

/// What swaks printed.
pub struct Swaks(Output);

impl Swaks {
    pub fn transcript(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.0.stdout),
            String::from_utf8_lossy(&self.0.stderr)
        )
    }

    /// The server's lines that came in plaintext, as swaks shows them (`<-  ` for replies,
    /// `<** ` for the ones it takes as errors).
    pub fn received(&self) -> Vec<String> {
        self.lines_with(&["<-  ", "<** "])
    }

    /// The server's lines that came over TLS (`<~  `, `<~* `).
    pub fn received_over_tls(&self) -> Vec<String> {
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
    pub fn tls_session(&self) -> Option<String> {
        self.transcript()
            .lines()
            .find_map(|line| line.strip_prefix("=== TLS started with cipher "))
            .map(str::to_string)
    }

    pub fn assert_success(&self) {
        assert!(
            self.0.status.success(),
            "swaks failed ({}):\n{}",
            self.0.status,
            self.transcript()
        );
    }

    /// swaks gave up because every recipient was refused (and said QUIT first).
    pub fn assert_recipients_refused(&self) {
        assert_eq!(
            self.0.status.code(),
            Some(SWAKS_NO_RECIPIENTS),
            "swaks must end with its no-recipients status:\n{}",
            self.transcript()
        );
    }
}

/// `smtp-screen --pin-dir DIR deny list`, in the server namespace.
pub fn deny_list(bed: &Bed, pin: &PinDir) -> String {
    screen_cli(bed, pin, &["deny", "list"])
}

/// `smtp-screen --pin-dir DIR ARGS…` in the server namespace; its output, or a panic naming
/// the command.
pub fn screen_cli(bed: &Bed, pin: &PinDir, args: &[&str]) -> String {
    let bin = smtp_screen_bin().expect("the smtp-screen binary");
    let mut cmd = bed.server.command(bin);
    cmd.arg("--pin-dir").arg(pin.path()).args(args);
    run_within(&mut cmd, TOOL_LIMIT)
        .unwrap_or_else(|e| panic!("smtp-screen {}: {e}", args.join(" ")))
}

/// The `deny list` line of the dynamic entry for the IPv4 address `addr`, if there is one.
pub fn dynamic_deny(list: &str, addr: IpAddr) -> Option<String> {
    dynamic_deny_of(list, format!("{addr}/32"))
}

/// The `deny list` line of the dynamic entry for `net` (`fd00:251:7::10/124`), if there is one.
pub fn dynamic_deny_of(list: &str, net: impl std::fmt::Display) -> Option<String> {
    let prefix = format!("{net} dynamic ");
    list.lines()
        .find(|line| line.starts_with(&prefix))
        .map(str::to_string)
}

/// A first-time client passed the greet wait and its message, marked with `marker`, reached
/// the mailbox; the daemon logged the connection and the pass, and Postfix saw the client's
/// own address through the PROXY header.
pub fn expect_delivered_and_passed(
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
    let tag = daemon.new_session_tag(client, &[]);
    let server = bed.smtp_addr(client).ip();
    daemon.expect_line(&format!("CONNECT from {tag} to [{server}]:{SMTP_PORT}"));
    daemon.expect_line(&format!("PASS NEW {tag}"));
    expect_backend_log(postfix, &format!("connect from unknown[{client}]"));
}

/// Waits until Postfix has logged a line containing `text`.
pub fn expect_backend_log(postfix: &Postfix, text: &str) {
    assert!(
        postfix.wait_for_log(text, LOG_WAIT).is_some(),
        "Postfix did not log {text:?}:\n{}",
        postfix.log()
    );
}
