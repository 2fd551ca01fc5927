//! Network namespaces and the rest of the scaffolding of the end-to-end tests and benchmarks:
//! veth pairs and other devices, TCP endpoints inside a namespace, the counters a namespace
//! keeps, child processes, pin directories and scratch files.
//!
//! Every piece undoes itself on `Drop`, so a failing test leaves no namespace, interface,
//! process or pin behind. Names start with [`NAME_PREFIX`] and carry the pid and a
//! per-process counter, so that concurrent tests and test processes never collide and a
//! leftover is easy to attribute; [`remove_stale`] removes those of processes that were killed
//! before they could clean up.
//!
//! Namespaces are entered per thread: `setns(2)` with `CLONE_NEWNET` moves only the calling
//! thread, and a socket stays in the namespace it was created in, so [`Netns::run`] creates
//! sockets on a short-lived thread and hands them back to any thread. Child processes enter a
//! namespace with `nsenter --net` ([`Netns::command`]), which, unlike `ip netns exec`, keeps
//! the mount namespace and with it the pins under `/sys/fs/bpf`.

use std::{
    collections::HashMap,
    ffi::{CString, OsStr},
    fs::{self, File},
    io::{self, ErrorKind, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// First letters of every namespace, interface, pin and scratch directory the tests create.
pub const NAME_PREFIX: &str = "sse";

/// Where `ip netns add` mounts named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// How long one `ip` invocation may take.
const IP_LIMIT: Duration = Duration::from_secs(10);

/// Longest interface name the kernel takes (`IFNAMSIZ` less the NUL).
const IFNAME_MAX: usize = 15;

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn unique_name(tag: &str) -> String {
    format!("{NAME_PREFIX}{}-{tag}{}", std::process::id(), next_id())
}

/// A name for a new interface: short, as the kernel wants it, and unique like the others.
/// `suffix` tells the devices of one call apart.
fn interface_name(id: u32, suffix: char) -> String {
    let name = format!("{NAME_PREFIX}{}-{id:x}{suffix}", std::process::id());
    assert!(
        name.len() <= IFNAME_MAX,
        "interface name {name} is longer than {IFNAME_MAX} bytes"
    );
    name
}

/// Removes the namespaces and pin directories that a test or benchmark process left behind
/// when it was killed before it could clean up (its pid, in the name, is gone); those of live
/// processes are left alone.
pub fn remove_stale() {
    let stale = |name: &str| owner_pid(name).is_some_and(|pid| !pid_alive(pid));
    if let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                eprintln!("removing network namespace {name} left by an earlier run");
                let _ = run_within(Command::new("ip").args(["netns", "del", &name]), IP_LIMIT);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(screen_user::paths::BPFFS_ROOT) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) && entry.path().is_dir() {
                eprintln!("removing pin directory {name} left by an earlier run");
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The pid in a name made here (`sse<pid>-...`), if any.
fn owner_pid(name: &str) -> Option<u32> {
    let digits: String = name
        .strip_prefix(NAME_PREFIX)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Whether `pid` is a running process; a zombie has already let go of everything.
fn pid_alive(pid: u32) -> bool {
    crate::bench::ProcStat::read(pid).is_ok_and(|stat| !matches!(stat.state, 'Z' | 'X'))
}

/// A number for this test's networks, 10.251.N.0/24 and fd00:251:N::/48, in 1..=127 so that
/// N + 128 is free for a second IPv4 network. Taken from the pid and a counter, so that tests
/// running at the same time pick different networks.
pub fn subnet_index() -> u8 {
    let spread = std::process::id().wrapping_add(37u32.wrapping_mul(next_id()));
    (1 + spread % 127) as u8
}

/// The `smtp-screen` binary under test: `$SMTP_SCREEN_BIN`, else the one cargo built next to
/// this test executable (`target/<profile>/smtp-screen`, the parent of its `deps`).
///
/// `cargo test -p screen-tests` does not build another package's binary; build it first with
/// `cargo build -p screen-user` in the same profile.
pub fn smtp_screen_bin() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SMTP_SCREEN_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).ok_or_else(|| {
        io::Error::new(
            ErrorKind::NotFound,
            format!("{} has no grandparent directory", exe.display()),
        )
    })?;
    let bin = profile_dir.join("smtp-screen");
    if !bin.is_file() {
        return Err(io::Error::new(
            ErrorKind::NotFound,
            format!(
                "{} does not exist: build it with `cargo build -p screen-user` (same profile as \
                 the tests) or name it in SMTP_SCREEN_BIN",
                bin.display()
            ),
        ));
    }
    Ok(bin)
}

/// Runs `cmd` to completion with its output captured; kills it if it is still running after
/// `limit`, so that a hung tool fails the test instead of stalling it.
pub fn output_within(cmd: &mut Command, limit: Duration) -> io::Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    // The pipes are drained while the command runs, so no output size can block it.
    thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => {
            // Not reaped yet (the waiting thread has not returned), so the pid is still ours.
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = finished.recv();
            Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("{cmd:?} still running after {limit:?}; killed"),
            ))
        }
    }
}

/// Runs `cmd` within `limit` and returns its stdout; a failure carries the command and its
/// stderr.
pub fn run_within(cmd: &mut Command, limit: Duration) -> io::Result<String> {
    let output = output_within(cmd, limit).map_err(|e| match e.kind() {
        // The time-out names the command already.
        ErrorKind::TimedOut => e,
        kind => io::Error::new(kind, format!("{cmd:?}: {e}")),
    })?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A command that runs `program` in the network namespace bound at `netns` (a path under
/// `/run/netns`), keeping the caller's mount namespace: for guards that outlive the borrow of
/// their [`Netns`] and still have to run something in it.
pub fn command_in(netns: &Path, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program);
    cmd
}

/// A named network namespace (`ip netns add`). Dropping it kills every process left in it and
/// deletes it; the kernel then destroys its interfaces once the last socket in it is closed.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named after `tag` with its loopback up.
    pub fn create(tag: &str) -> io::Result<Self> {
        let name = unique_name(tag);
        run_within(Command::new("ip").args(["netns", "add", &name]), IP_LIMIT)?;
        let netns = Self { name };
        netns.ip(["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, as `setns(2)` and `nsenter --net` take it.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// Runs `ip -n NAME ARGS…` and returns its stdout.
    pub fn ip<I, S>(&self, args: I) -> io::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_within(
            Command::new("ip").arg("-n").arg(&self.name).args(args),
            IP_LIMIT,
        )
    }

    /// Adds `addr/prefix_len` to `iface`. IPv6 addresses skip duplicate address detection, so
    /// that they can be bound at once instead of after a second or more as "tentative".
    pub fn add_address(&self, iface: &str, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
        let cidr = format!("{addr}/{prefix_len}");
        let mut args = vec!["addr", "add", &cidr, "dev", iface];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        self.ip(args).map(drop)
    }

    /// Turns IPv6 off on every interface of the namespace, present and future, so that no
    /// autoconfiguration traffic moves the counters a measurement reads.
    pub fn disable_ipv6(&self) -> io::Result<()> {
        self.run(|| {
            for conf in ["all", "default"] {
                fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")?;
            }
            Ok(())
        })?
    }

    /// Creates a device of `kind` (`dummy`, `ifb`, …) in the namespace, up, and returns its
    /// name. It goes away with the namespace.
    pub fn add_device(&self, kind: &str) -> io::Result<String> {
        let name = interface_name(next_id(), 'd');
        self.ip(["link", "add", &name, "type", kind])?;
        self.ip(["link", "set", &name, "up"])?;
        Ok(name)
    }

    /// The packet counters of the namespace.
    pub fn counters(&self) -> io::Result<NetCounters> {
        self.run(|| {
            // `thread-self`: `/proc/self/net` would show the main thread's namespace.
            let dev = fs::read_to_string("/proc/thread-self/net/dev")?;
            let snmp = fs::read_to_string("/proc/thread-self/net/snmp")?;
            Ok(NetCounters {
                devices: parse_dev(&dev),
                snmp: parse_snmp(&snmp),
            })
        })?
    }

    /// A command that runs `program` in this network namespace (and the caller's mount
    /// namespace) through `nsenter --net`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.path(), program)
    }

    /// Runs `f` on a thread that has entered this namespace and returns its result. Sockets
    /// created by `f` stay in the namespace wherever they are used afterwards.
    pub fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let netns = File::open(self.path())?;
        thread::scope(|scope| {
            let worker = scope.spawn(move || {
                // SAFETY: a valid namespace descriptor; CLONE_NEWNET moves this thread only.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            });
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The processes whose network namespace this is (`ip netns pids`).
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        let out = run_within(
            Command::new("ip").args(["netns", "pids", &self.name]),
            IP_LIMIT,
        )?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let this_process = std::process::id();
        match self.pids() {
            Ok(pids) => {
                for pid in pids.into_iter().filter(|&pid| pid != this_process) {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
            Err(e) => eprintln!("warning: listing processes in netns {}: {e}", self.name),
        }
        if let Err(e) = run_within(
            Command::new("ip").args(["netns", "del", &self.name]),
            IP_LIMIT,
        ) {
            eprintln!("warning: deleting netns {}: {e}", self.name);
        }
    }
}

/// A veth pair with one end in each of two namespaces, both ends up. Dropping it deletes the
/// pair (deleting a namespace does too, so this only matters while both outlive it).
#[derive(Debug)]
pub struct VethPair {
    a: (String, String),
    b: (String, String),
}

impl VethPair {
    /// Creates the pair directly inside `a` and `b`, so that its names never meet the names of
    /// the host's own interfaces. `a` and `b` may be the same namespace.
    pub fn create(a: &Netns, b: &Netns) -> io::Result<Self> {
        Self::create_with_macs(a, b, None)
    }

    /// As [`VethPair::create`], with the ends' MAC addresses `macs`, for frames built to
    /// reach them; otherwise the kernel picks random ones.
    pub fn create_with_macs(a: &Netns, b: &Netns, macs: Option<[[u8; 6]; 2]>) -> io::Result<Self> {
        let id = next_id();
        let (a_end, b_end) = (interface_name(id, 'a'), interface_name(id, 'b'));
        let mut cmd = Command::new("ip");
        cmd.args(["link", "add", &a_end]);
        if let Some([a_mac, _]) = macs {
            cmd.args(["address", &mac_text(a_mac)]);
        }
        cmd.args(["netns", a.name(), "type", "veth", "peer", "name", &b_end]);
        if let Some([_, b_mac]) = macs {
            cmd.args(["address", &mac_text(b_mac)]);
        }
        cmd.args(["netns", b.name()]);
        run_within(&mut cmd, IP_LIMIT)?;
        let pair = Self {
            a: (a.name().to_string(), a_end),
            b: (b.name().to_string(), b_end),
        };
        a.ip(["link", "set", &pair.a.1, "up"])?;
        b.ip(["link", "set", &pair.b.1, "up"])?;
        Ok(pair)
    }

    /// The end in the first namespace given to [`VethPair::create`].
    pub fn a(&self) -> &str {
        &self.a.1
    }

    /// The end in the second namespace.
    pub fn b(&self) -> &str {
        &self.b.1
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let (netns, iface) = &self.a;
        if !Path::new(NETNS_RUN_DIR).join(netns).exists() {
            return;
        }
        // Either end takes the other with it; one already gone with its namespace is fine.
        let _ = output_within(
            Command::new("ip").args(["-n", netns, "link", "del", iface]),
            IP_LIMIT,
        );
    }
}

/// `02:00:0a:…` as `ip` writes a MAC address.
fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name)?;
    // SAFETY: a valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => {
            let e = io::Error::last_os_error();
            Err(io::Error::new(
                e.kind(),
                format!("no interface {name}: {e}"),
            ))
        }
        index => Ok(index),
    }
}

/// Packet counters of one interface, from `/proc/net/dev`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DevCounters {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// The counters of one namespace that tell where a frame ended ([`Netns::counters`]).
#[derive(Clone, Debug, Default)]
pub struct NetCounters {
    pub devices: HashMap<String, DevCounters>,
    /// `/proc/net/snmp`, keyed `Ip.InReceives`, `Tcp.InSegs` and so on.
    pub snmp: HashMap<String, u64>,
}

impl NetCounters {
    pub fn device(&self, name: &str) -> DevCounters {
        self.devices.get(name).copied().unwrap_or_default()
    }

    pub fn snmp(&self, key: &str) -> u64 {
        self.snmp.get(key).copied().unwrap_or(0)
    }
}

fn parse_dev(text: &str) -> HashMap<String, DevCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let fields: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            (fields.len() >= 16).then(|| {
                (
                    name.trim().to_string(),
                    DevCounters {
                        rx_packets: fields[1],
                        rx_dropped: fields[3],
                        tx_packets: fields[9],
                        tx_dropped: fields[11],
                    },
                )
            })
        })
        .collect()
}

/// `/proc/net/snmp`: pairs of lines, a group's field names, then its values.
fn parse_snmp(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((group, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse() {
                out.insert(format!("{group}.{name}"), value);
            }
        }
    }
    out
}

/// How a TCP connection attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    Connected,
    /// A RST answered the SYN (`ECONNREFUSED`).
    Refused,
    /// Nothing answered within the time limit.
    TimedOut,
}

/// Connects from `src` (an address of `netns`) to `dst`, giving up after `limit`. The socket
/// is closed before returning, so an unanswered attempt sends no further SYNs.
pub fn connect_from(
    netns: &Netns,
    src: IpAddr,
    dst: SocketAddr,
    limit: Duration,
) -> io::Result<ConnectOutcome> {
    match stream_from(netns, src, dst, limit) {
        Ok(_) => Ok(ConnectOutcome::Connected),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(ConnectOutcome::Refused),
        Err(e) if e.kind() == ErrorKind::TimedOut => Ok(ConnectOutcome::TimedOut),
        Err(e) => Err(e),
    }
}

/// Opens a TCP connection from `src` (an address of `netns`) to `dst` and hands it over
/// connected, for a client that talks; a connect that takes longer than `limit` fails with
/// [`ErrorKind::TimedOut`].
pub fn stream_from(
    netns: &Netns,
    src: IpAddr,
    dst: SocketAddr,
    limit: Duration,
) -> io::Result<TcpStream> {
    let socket = netns
        .run(|| Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP)))??;
    socket.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    socket.connect_timeout(&SockAddr::from(dst), limit)?;
    Ok(socket.into())
}

/// A TCP listener in a namespace that accepts every connection, closes it at once (after a
/// greeting line, for one that stands in for an MTA) and remembers the peer's address: the
/// proof that a SYN reached the server's stack.
pub struct TcpAcceptor {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<IpAddr>>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl TcpAcceptor {
    /// How often the accepting thread looks for connections and for the stop flag.
    const POLL: Duration = Duration::from_millis(5);

    /// Listens on `addr` inside `netns`.
    pub fn start(netns: &Netns, addr: SocketAddr) -> io::Result<Self> {
        Self::greeting(netns, addr, b"")
    }

    /// Listens on `addr` inside `netns`, and writes `greeting` to every connection before it
    /// closes it: the cheapest MTA there is.
    pub fn greeting(netns: &Netns, addr: SocketAddr, greeting: &'static [u8]) -> io::Result<Self> {
        let listener = netns.run(|| TcpListener::bind(addr))??;
        // Non-blocking, so that the thread notices the stop flag without a wake-up connection.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let peers = Arc::clone(&peers);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, peer)) => {
                            if !greeting.is_empty() {
                                let _ = stream.write_all(greeting);
                            }
                            drop(stream);
                            peers
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(peer.ip().to_canonical());
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Self::POLL),
                        Err(e) => {
                            eprintln!("warning: accepting on {addr}: {e}");
                            thread::sleep(Self::POLL);
                        }
                    }
                }
            })
        };
        Ok(Self {
            addr,
            peers,
            stop,
            worker: Some(worker),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, Vec<IpAddr>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every peer accepted so far.
    pub fn clear(&self) {
        self.peers().clear();
    }

    /// Whether a connection from `ip` was accepted since the last [`TcpAcceptor::clear`].
    pub fn has_accepted(&self, ip: IpAddr) -> bool {
        self.peers().contains(&ip)
    }

    /// Waits up to `limit` for a connection from `ip` to be accepted.
    pub fn wait_for(&self, ip: IpAddr, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.has_accepted(ip) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Self::POLL);
        }
    }
}

impl Drop for TcpAcceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// A child process that is killed (SIGKILL) and reaped on drop unless it has already exited.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        Ok(Self {
            child: cmd.spawn()?,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.child.kill()?;
        self.child.wait()
    }

    /// Asks the process to stop with SIGTERM; kills it if it has not exited after `grace`.
    /// `Ok(None)` means it had to be killed.
    pub fn terminate(&mut self, grace: Duration) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(Some(status));
        }
        // SAFETY: kill(2) on our own child, which has not been reaped.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.kill()?;
        Ok(None)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("warning: killing child {}: {e}", self.child.id());
        }
    }
}

/// A pin directory of its own under `/sys/fs/bpf`, for one test. It is not created here
/// (`smtp-screen load` and `run` create it); if it exists on drop, it is removed as
/// `smtp-screen unload` does: every pinned link detached, every pin and the directory removed.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new(tag: &str) -> Self {
        Self {
            path: Path::new(screen_user::paths::BPFFS_ROOT).join(unique_name(tag)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory, for pins made by other tools (bpftool).
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir(&self.path)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        if let Err(e) = screen_user::kernel::link::unload(&self.path) {
            eprintln!(
                "warning: removing pin directory {}: {e}",
                self.path.display()
            );
        }
    }
}

/// A directory for a test's files (configuration, lists, logs), removed with its contents on
/// drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn create(tag: &str) -> io::Result<Self> {
        let path = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to the file `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> io::Result<PathBuf> {
        let path = self.path.join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}

/// Runs `f` on a thread with a mount namespace of its own in which `/etc/resolv.conf` is
/// `resolv_conf`, as `ip netns exec` gives a namespace's programs `/etc/netns/NAME/resolv.conf`:
/// every process started from that thread, and everything those start (Postfix's master and
/// its dnsblog processes, the daemon), looks names up there. The namespace is a slave of the
/// host's, so nothing mounted in it reaches the host; it goes away with its last process.
pub fn with_resolv_conf<T: Send>(resolv_conf: &Path, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                private_resolv_conf(resolv_conf).expect("a mount namespace with its resolv.conf");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn private_resolv_conf(resolv_conf: &Path) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let source = CString::new(resolv_conf.as_os_str().as_bytes())?;
    let root = c"/";
    let target = c"/etc/resolv.conf";
    // SAFETY: CLONE_NEWNS moves only this thread (it implies CLONE_FS, which a thread of a
    // multi-threaded process may unshare); the mount calls get valid C strings, and the first
    // one stops mounts in the new namespace from propagating to the host's.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ))
    }
}
