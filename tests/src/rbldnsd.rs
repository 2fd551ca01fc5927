//! DNS lists for the tests and benchmarks: Debian's rbldnsd serving zones that a test writes
//! ([`Rbldnsd`]), and a UDP forwarder in front of a DNS server that counts queries and leaves
//! chosen ones unanswered ([`DnsForwarder`]), for a list that times out. Both run inside a test
//! network namespace, or on the loopback of the caller's own (`start_on_loopback`), which needs
//! neither root nor a namespace: for unit tests of a DNS client.
//!
//! The lists of the lab in the postscreen reference (Appendix A) are named here once
//! ([`LAB_SITES`] and the answers that go with it), as is where the tests run rbldnsd
//! ([`LOCAL_DNS`]) and the name a list is asked for an address ([`query_name`]).
//!
//! Every zone has an SOA whose negative TTL is [`NEGATIVE_TTL`] and answers with a TTL of
//! [`ANSWER_TTL`], as the DNS responder of the lab in the postscreen reference did. rbldnsd logs
//! every query it receives (`-l`), so a test can count what reached the server; the query log is
//! the server's own account, with no probe of ours in it.

use std::{
    collections::HashMap,
    fmt::{self, Write as _},
    fs,
    io::{self, ErrorKind},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::unix::fs::{PermissionsExt as _, chown},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns::{ChildGuard, Netns, ScratchDir};

/// The lab's `postscreen_dnsbl_sites`: `bl.test` weighs 3 for answers 127.0.0.2 to .11,
/// `bl2.test` 1, and the allowlist `wl.test` -5.
pub const LAB_SITES: &str =
    "bl.test=127.0.0.[2..11]*3, bl2.test*1, wl.test=127.0.[0..255].[1..3]*-5";
/// The name the lab's replies show for `bl.test` (`postscreen_dnsbl_reply_map`).
pub const BL_SHOWN: &str = "public-bl.example";
/// What `bl.test` answers for a listed client: inside its filter.
pub const BL_ANSWER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// What `bl.test` answers for the filter miss: outside `127.0.0.[2..11]`.
pub const BL_MISS_ANSWER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 99);
pub const BL2_ANSWER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
pub const WL_ANSWER: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);

/// Where the tests and benchmarks run rbldnsd: port 53 on the loopback of the server
/// namespace, which the daemon and Postfix there reach and the clients cannot.
pub const LOCAL_DNS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);

/// The TTL of every answer.
pub const ANSWER_TTL: Duration = Duration::from_secs(300);
/// The negative TTL (the SOA's minimum) of every zone.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(120);
/// The RFC 5782 test point every list must list (the lists' health check asks for it).
pub const TEST_POINT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Debian's rbldnsd, which [`crate::ensure_packages`] installs.
const RBLDNSD: &str = "/usr/sbin/rbldnsd";
/// How long rbldnsd may take to load its zones and start answering.
const START_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// Tries at a free loopback port: another process may take the one found before rbldnsd binds it.
const LOOPBACK_TRIES: usize = 5;
/// The user rbldnsd switches to when started as root; it writes the query log.
const RBLDNSD_USER: &str = "rbldns";

/// How a zone stores its entries (rbldnsd's dataset types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataset {
    /// IPv4 addresses and ranges.
    Ip4Set,
    /// IPv4 CIDR prefixes, longest match wins.
    Ip4Trie,
    /// IPv6 CIDR prefixes, longest match wins; queried by reversed nibbles.
    Ip6Trie,
}

impl Dataset {
    fn as_str(self) -> &'static str {
        match self {
            Dataset::Ip4Set => "ip4set",
            Dataset::Ip4Trie => "ip4trie",
            Dataset::Ip6Trie => "ip6trie",
        }
    }
}

/// One dataset of a DNS list: its zone name, how it stores entries, and each entry with the A
/// record it answers. rbldnsd serves several datasets of the same name as one zone, so an
/// IPv4 and an IPv6 dataset make one list for both families.
#[derive(Clone, Debug)]
pub struct Zone {
    name: String,
    dataset: Dataset,
    entries: Vec<(String, Ipv4Addr)>,
}

impl Zone {
    pub fn new(name: &str, dataset: Dataset) -> Self {
        Self {
            name: name.to_string(),
            dataset,
            entries: Vec::new(),
        }
    }

    /// Lists `entry` (an address, or a prefix such as `10.251.0.0/16`) as `answer`.
    pub fn list(mut self, entry: impl fmt::Display, answer: Ipv4Addr) -> Self {
        self.entries.push((entry.to_string(), answer));
        self
    }

    /// Lists the test point 127.0.0.2 as itself, as every well-run IPv4 list does.
    pub fn with_test_point(self) -> Self {
        self.list(TEST_POINT, TEST_POINT)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The data file: SOA and TTL first, then one `entry :A:` line per entry.
    fn file_text(&self) -> String {
        let mut text = format!(
            "$SOA 0 ns.{zone}. hostmaster.{zone}. 1 1h 1h 1d {negative}\n$TTL {ttl}\n",
            zone = self.name,
            negative = NEGATIVE_TTL.as_secs(),
            ttl = ANSWER_TTL.as_secs()
        );
        for (entry, answer) in &self.entries {
            let _ = writeln!(text, "{entry} :{answer}:");
        }
        text
    }
}

/// rbldnsd serving the zones it was started with on one address and port. Dropping it kills the
/// server and removes its files.
#[derive(Debug)]
pub struct Rbldnsd {
    process: ChildGuard,
    addr: SocketAddr,
    query_log: PathBuf,
    output: PathBuf,
    _dir: ScratchDir,
}

impl Rbldnsd {
    /// Starts rbldnsd in `netns` on `addr` (an address of that namespace; port 53 or any other)
    /// and waits until it has loaded every zone.
    pub fn start(netns: &Netns, addr: SocketAddr, zones: &[Zone]) -> io::Result<Self> {
        Self::launch(netns.command(RBLDNSD), addr, zones)
    }

    /// Starts rbldnsd in the caller's network namespace on a free port of 127.0.0.1 and waits
    /// until it has loaded every zone.
    pub fn start_on_loopback(zones: &[Zone]) -> io::Result<Self> {
        let mut tries = 1;
        loop {
            let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            match Self::launch(Command::new(RBLDNSD), addr, zones) {
                Err(_) if tries < LOOPBACK_TRIES => tries += 1,
                started => return started,
            }
        }
    }

    /// Writes the zones and runs `cmd`, which runs rbldnsd, on `addr`.
    fn launch(mut cmd: Command, addr: SocketAddr, zones: &[Zone]) -> io::Result<Self> {
        crate::ensure_packages(&["rbldnsd"])?;
        let dir = ScratchDir::create("rbldnsd")?;
        // rbldnsd drops root before it reads a zone or opens its query log.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let mut specs = Vec::with_capacity(zones.len());
        for (index, zone) in zones.iter().enumerate() {
            let file = format!("{index}-{}.{}", zone.name, zone.dataset.as_str());
            let path = dir.write(&file, zone.file_text())?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
            specs.push(format!("{}:{}:{file}", zone.name, zone.dataset.as_str()));
        }
        let query_log = dir.write("queries.log", "")?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let user = screen_user::privileges::lookup(RBLDNSD_USER)
                .map_err(|e| io::Error::other(e.to_string()))?;
            chown(&query_log, Some(user.uid), Some(user.gid))?;
        }
        let output = dir.path().join("rbldnsd.out");
        let output_file = fs::File::create(&output)?;
        cmd.arg("-n")
            .arg("-b")
            .arg(format!("{}/{}", addr.ip(), addr.port()))
            .arg("-w")
            .arg(dir.path())
            // No reloads: the zones are fixed for the server's life.
            .args(["-c", "0"])
            // `+`: unbuffered, so that every query is in the log once it has been answered.
            .arg("-l")
            .arg(format!("+{}", query_log.display()))
            .args(&specs)
            .stdin(Stdio::null())
            .stdout(output_file.try_clone()?)
            .stderr(output_file);
        let process = ChildGuard::spawn(&mut cmd)?;
        let mut server = Self {
            process,
            addr,
            query_log,
            output,
            _dir: dir,
        };
        server.wait_started()?;
        Ok(server)
    }

    /// Waits for rbldnsd's "started" line, which it prints once every zone is loaded and its
    /// socket is bound.
    fn wait_started(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            let output = fs::read_to_string(&self.output).unwrap_or_default();
            if output.lines().any(|line| line.contains(") started (")) {
                return Ok(());
            }
            if let Some(status) = self.process.try_wait()? {
                return Err(io::Error::other(format!(
                    "rbldnsd exited ({status}):\n{output}"
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("rbldnsd did not start within {START_WAIT:?}:\n{output}"),
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Where the server answers.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's pid: rbldnsd stays in the foreground (`-n`), and nsenter, where it runs
    /// in a namespace, execs it.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The question name of every query received so far, lower case, in order of arrival.
    pub fn queries(&self) -> Vec<String> {
        // A line: `<time> <client> <name> <type> <class>: <rcode>/<answers>/<size>`.
        fs::read_to_string(&self.query_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_whitespace().nth(2))
            .map(str::to_ascii_lowercase)
            .collect()
    }

    /// How many queries for `name` were received.
    pub fn count(&self, name: &str) -> usize {
        let name = name.to_ascii_lowercase();
        self.queries().iter().filter(|q| **q == name).count()
    }

    /// What rbldnsd printed: its zone loading and start lines, and any error.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.output).unwrap_or_default()
    }
}

/// A UDP DNS forwarder: relays each query to an upstream server and the answer back, counting queries by name; queries for a swallowed name, or any name under it,
/// are counted and never answered, as a list server that has gone silent. Dropping it stops
/// its threads and closes its sockets.
pub struct DnsForwarder {
    addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    swallowed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

/// The client and the ID of each query relayed upstream, by the ID it was relayed with.
type Pending = Arc<Mutex<HashMap<u16, (SocketAddr, u16)>>>;

impl DnsForwarder {
    /// Listens on `listen` (an address of `netns`) and relays to `upstream`.
    pub fn start(netns: &Netns, listen: SocketAddr, upstream: SocketAddr) -> io::Result<Self> {
        let (front, back) = netns.run(|| Self::bind(listen, upstream))??;
        Self::relay(front, back)
    }

    /// Listens on a free port of 127.0.0.1 in the caller's network namespace and relays to
    /// `upstream`.
    pub fn start_on_loopback(upstream: SocketAddr) -> io::Result<Self> {
        let (front, back) = Self::bind((Ipv4Addr::LOCALHOST, 0).into(), upstream)?;
        Self::relay(front, back)
    }

    /// The socket the clients ask, on `listen`, and the one that asks `upstream`.
    fn bind(listen: SocketAddr, upstream: SocketAddr) -> io::Result<(UdpSocket, UdpSocket)> {
        let unspecified: IpAddr = match upstream {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let front = UdpSocket::bind(listen)?;
        let back = UdpSocket::bind(SocketAddr::new(unspecified, 0))?;
        back.connect(upstream)?;
        Ok((front, back))
    }

    /// Starts the threads that relay between the two sockets.
    fn relay(front: UdpSocket, back: UdpSocket) -> io::Result<Self> {
        // Short read timeouts, so that the threads notice the stop flag.
        front.set_read_timeout(Some(POLL))?;
        back.set_read_timeout(Some(POLL))?;
        let addr = front.local_addr()?;
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let swallowed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let queries = {
            let (front, back) = (front.try_clone()?, back.try_clone()?);
            let (counts, swallowed) = (Arc::clone(&counts), Arc::clone(&swallowed));
            let (stop, pending) = (Arc::clone(&stop), Arc::clone(&pending));
            thread::spawn(move || {
                relay_queries(&front, &back, &counts, &swallowed, &pending, &stop);
            })
        };
        let answers = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || relay_answers(&back, &front, &pending, &stop))
        };
        Ok(Self {
            addr,
            counts,
            swallowed,
            stop,
            workers: vec![queries, answers],
        })
    }

    /// Where clients send their queries.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, queries for `name` or any name under it go unanswered.
    pub fn swallow(&self, name: &str) {
        lock(&self.swallowed).push(name.to_ascii_lowercase());
    }

    /// From now on, every query is relayed again, as when the silent lists come back.
    pub fn swallow_nothing(&self) {
        lock(&self.swallowed).clear();
    }

    /// Queries received for exactly `name`, answered or not.
    pub fn count(&self, name: &str) -> usize {
        lock(&self.counts)
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Queries received in all.
    pub fn total(&self) -> usize {
        lock(&self.counts).values().sum()
    }
}

impl Drop for DnsForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn relay_queries(
    front: &UdpSocket,
    back: &UdpSocket,
    counts: &Mutex<HashMap<String, usize>>,
    swallowed: &Mutex<Vec<String>>,
    pending: &Mutex<HashMap<u16, (SocketAddr, u16)>>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 4096];
    let mut next_id: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, client)) = front.recv_from(&mut buf) else {
            continue;
        };
        let query = &mut buf[..len];
        let Some(name) = question_name(query) else {
            continue;
        };
        *lock(counts).entry(name.clone()).or_default() += 1;
        if lock(swallowed)
            .iter()
            .any(|zone| name == *zone || name.ends_with(&format!(".{zone}")))
        {
            continue;
        }
        // Clients pick their IDs independently; upstream sees IDs of ours, so that two
        // clients' queries with the same ID get their own answers. The map holds at most one
        // entry per ID.
        next_id = next_id.wrapping_add(1);
        let client_id = u16::from_be_bytes([query[0], query[1]]);
        lock(pending).insert(next_id, (client, client_id));
        query[..2].copy_from_slice(&next_id.to_be_bytes());
        let _ = back.send(query);
    }
}

fn relay_answers(
    back: &UdpSocket,
    front: &UdpSocket,
    pending: &Mutex<HashMap<u16, (SocketAddr, u16)>>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok(len) = back.recv(&mut buf) else {
            continue;
        };
        if len < 12 {
            continue;
        }
        let answer = &mut buf[..len];
        let id = u16::from_be_bytes([answer[0], answer[1]]);
        let Some((client, client_id)) = lock(pending).remove(&id) else {
            continue;
        };
        answer[..2].copy_from_slice(&client_id.to_be_bytes());
        let _ = front.send_to(answer, client);
    }
}

/// The question name of a DNS message, lower case, without the final dot; `None` when the
/// message is too short or its first question does not parse as uncompressed labels.
fn question_name(message: &[u8]) -> Option<String> {
    const HEADER_LEN: usize = 12;
    const MAX_LABELS: usize = 128;
    let mut at = HEADER_LEN;
    let mut labels = Vec::new();
    for _ in 0..MAX_LABELS {
        let len = usize::from(*message.get(at)?);
        if len == 0 {
            return Some(labels.join(".").to_ascii_lowercase());
        }
        if len > 63 {
            return None;
        }
        let label = message.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + len;
    }
    None
}

/// The name a DNS list is asked for `addr` in `zone` (RFC 5782): the IPv4 octets or the IPv6
/// nibbles, least significant first, then the zone.
pub fn query_name(addr: IpAddr, zone: &str) -> String {
    let labels: Vec<String> = match addr {
        IpAddr::V4(v4) => v4.octets().iter().rev().map(u8::to_string).collect(),
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .rev()
            .flat_map(|byte| [byte & 0xf, byte >> 4])
            .map(|nibble| format!("{nibble:x}"))
            .collect(),
    };
    format!("{}.{zone}", labels.join("."))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_files_carry_the_soa_the_ttl_and_each_answer() {
        let zone = Zone::new("bl.test", Dataset::Ip4Set)
            .with_test_point()
            .list("10.251.7.40", Ipv4Addr::new(127, 0, 0, 4));
        assert_eq!(
            zone.file_text(),
            "$SOA 0 ns.bl.test. hostmaster.bl.test. 1 1h 1h 1d 120\n$TTL 300\n\
             127.0.0.2 :127.0.0.2:\n10.251.7.40 :127.0.0.4:\n"
        );
    }

    #[test]
    fn reads_the_question_name() {
        let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["2", "0", "0", "127", "BL", "test"] {
            query.push(label.len() as u8);
            query.extend(label.as_bytes());
        }
        query.extend([0, 0, 1, 0, 1]);
        assert_eq!(question_name(&query).as_deref(), Some("2.0.0.127.bl.test"));
        assert_eq!(question_name(&query[..14]), None);
        assert_eq!(question_name(&[0; 4]), None);
    }
}
