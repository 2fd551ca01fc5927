//! The hand-off relay (`handoff = "proxy"`): the kernel relay (sockhash stream verdict) and
//! the userspace one, first on loopback sockets in this process, then end to end through the
//! daemon to a real Postfix.

use std::time::{Duration, Instant};

use screen_tests::{
    daemon::{
        BACKEND_GREETING, Bed, CLIENT_HELO, DELIVERY_WAIT, Daemon, DaemonConfig, ENGINE_GREETING,
        GREET_WAIT, REPLY_WAIT, TEASER, expect_backend_log, quoted,
    },
    ensure_packages,
    netns::PinDir,
    postfix::Postfix,
    relay::RelayMaps,
    require_root,
};
use screen_user::handoff::relay::{Relay, RelayLimits, RelayMode};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

const MIB: usize = 1024 * 1024;

/// The kernel relay's maps of this process are found by their names among its descriptors:
/// the tests that load one take turns, so that each finds its own (and so do the floods,
/// which would upset the others' timing).
static KERNEL_RELAY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until this process's relay maps are empty (a closed socket leaves the sockhash as it
/// closes, which may finish just after the relay returned); what they hold then.
async fn relay_maps_emptied() -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let maps = RelayMaps::of_process(std::process::id()).unwrap().unwrap();
        let entries = maps.entries();
        if entries == (0, 0) || Instant::now() > deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client connected to the relay's front socket, and the MTA end of the backend
/// connection, with the two sockets the relay gets.
struct Loopback {
    client: TcpStream,
    front: TcpStream,
    to_backend: TcpStream,
    mta: TcpStream,
}

async fn loopback() -> Loopback {
    let front_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(front_listener.local_addr().unwrap())
        .await
        .unwrap();
    let (front, _) = front_listener.accept().await.unwrap();
    let to_backend = TcpStream::connect(backend_listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mta, _) = backend_listener.accept().await.unwrap();
    Loopback {
        client,
        front,
        to_backend,
        mta,
    }
}

/// A pattern that shows any byte lost, doubled or moved.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Drives an SMTP-like exchange through a relay: the MTA's greeting is already queued when
/// the relay starts (as it is in the daemon), then a mebibyte each way, then the MTA closes
/// first and the client after it, as after QUIT.
async fn exchange(relay: &Relay) -> (screen_user::handoff::relay::Relayed, Option<(usize, usize)>) {
    let Loopback {
        mut client,
        front,
        to_backend,
        mut mta,
    } = loopback().await;
    mta.write_all(b"220 mta.example ESMTP\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let up = pattern(MIB, 1);
    let down = pattern(MIB, 2);
    let relayed = async {
        relay
            .run(front, to_backend, RelayLimits::DEFAULT)
            .await
            .unwrap()
    };
    let session = async {
        let mut greeting = [0u8; 23];
        client.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"220 mta.example ESMTP\r\n");
        let during = RelayMaps::of_process(std::process::id())
            .unwrap()
            .map(|maps| maps.entries());
        let (mut client_read, mut client_write) = client.split();
        let (mut mta_read, mut mta_write) = mta.split();
        let send_up = async {
            client_write.write_all(&up).await.unwrap();
        };
        let send_down = async {
            mta_write.write_all(&down).await.unwrap();
        };
        let receive_up = async {
            let mut got = vec![0u8; MIB];
            mta_read.read_exact(&mut got).await.unwrap();
            assert!(got == up, "client → MTA bytes differ");
        };
        let receive_down = async {
            let mut got = vec![0u8; MIB];
            client_read.read_exact(&mut got).await.unwrap();
            assert!(got == down, "MTA → client bytes differ");
        };
        tokio::join!(send_up, send_down, receive_up, receive_down);
        // The MTA's last reply, then its close; the client sees both.
        mta.write_all(b"221 bye\r\n").await.unwrap();
        mta.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"221 bye\r\n");
        client.shutdown().await.unwrap();
        let mut nothing = Vec::new();
        mta.read_to_end(&mut nothing).await.unwrap();
        assert!(nothing.is_empty());
        during
    };
    let (relayed, during) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(relayed, session)
    })
    .await
    .expect("the relayed exchange took more than 30s");
    (relayed, during)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_relay_moves_a_mebibyte_each_way_forgets_the_pair_and_stays_bounded() {
    if !require_root(
        "the_kernel_relay_moves_a_mebibyte_each_way_forgets_the_pair_and_stays_bounded",
    ) {
        return;
    }
    let _turn = KERNEL_RELAY.lock().await;
    let (relay, line) = Relay::start(RelayMode::Kernel, 4).expect("loading the kernel relay");
    assert!(line.contains("kernel"), "{line}");
    let (relayed, during) = exchange(&relay).await;
    assert!(relayed.in_kernel);
    assert_eq!(relayed.up, MIB as u64);
    assert_eq!(relayed.down, (MIB + 23 + 9) as u64);
    assert_eq!(
        during,
        Some((2, 2)),
        "both sockets in the maps during the session"
    );
    assert_eq!(relay_maps_emptied().await, (0, 0), "the pair left the maps");
    drop(relay);

    // Room for one connection: a second one at the same time is relayed in userspace, and
    // both arrive intact. (One test, so that no other relay of this process is about.)
    let (relay, _) = Relay::start(RelayMode::Kernel, 1).expect("loading the kernel relay");
    let ((first, _), (second, _)) = tokio::join!(exchange(&relay), exchange(&relay));
    assert_ne!(
        first.in_kernel, second.in_kernel,
        "one connection in the kernel, the other in userspace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_userspace_relay_moves_the_same_exchange() {
    let relay = Relay::userspace();
    let (relayed, _) = exchange(&relay).await;
    assert!(!relayed.in_kernel);
    assert_eq!(relayed.up, MIB as u64);
    assert_eq!(relayed.down, (MIB + 23 + 9) as u64);
}

/// A relayed connection on which bytes stop moving is closed after the idle limit, both
/// sides, by either relay; bytes in either direction (moved by the kernel, unseen by the
/// daemon, in the kernel relay) keep it open until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_goes_silent_is_closed_after_the_idle_limit_in_either_relay() {
    if !require_root("a_connection_that_goes_silent_is_closed_after_the_idle_limit_in_either_relay")
    {
        return;
    }
    const IDLE: Duration = Duration::from_millis(500);
    let limits = RelayLimits {
        idle: IDLE,
        ..RelayLimits::DEFAULT
    };
    let _turn = KERNEL_RELAY.lock().await;
    let (kernel, _) = Relay::start(RelayMode::Kernel, 4).expect("loading the kernel relay");
    for relay in [kernel, Relay::userspace()] {
        let Loopback {
            mut client,
            front,
            to_backend,
            mut mta,
        } = loopback().await;
        mta.write_all(b"220 mta.example ESMTP\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let session = async {
            let mut greeting = [0u8; 23];
            client.read_exact(&mut greeting).await.unwrap();
            // Twice the idle limit of traffic, a command and its reply every half limit.
            let mut got = [0u8; 6];
            for _ in 0..4 {
                tokio::time::sleep(IDLE / 2).await;
                client.write_all(b"NOOP\r\n").await.unwrap();
                mta.read_exact(&mut got).await.unwrap();
                mta.write_all(b"250 Ok\r\n").await.unwrap();
                let mut reply = [0u8; 8];
                client.read_exact(&mut reply).await.unwrap();
            }
            let busy = started.elapsed();
            // Then silence: both ends see the connection end.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            mta.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            (busy, started.elapsed())
        };
        let (relayed, (busy, closed)) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(relay.run(front, to_backend, limits), session)
        })
        .await
        .expect("the silent connection was not closed within 10s");
        let kind = if relay.is_kernel() {
            "kernel"
        } else {
            "userspace"
        };
        let err = relayed.expect_err("the relay must end on the idle limit");
        assert!(
            err.to_string().contains("relay_idle_timeout"),
            "{kind}: {err}"
        );
        assert!(busy >= IDLE * 2, "{kind}: {busy:?}");
        // The client may read the last reply a little after the relay saw it pass.
        assert!(
            closed + Duration::from_millis(50) >= busy + IDLE,
            "{kind}: closed {closed:?} after {busy:?} busy"
        );
        assert!(
            closed < busy + IDLE * 4,
            "{kind}: closed {closed:?} after {busy:?} busy"
        );
        if relay.is_kernel() {
            assert_eq!(relay_maps_emptied().await, (0, 0), "the pair left the maps");
        }
    }
}

/// How many sessions the leak check runs through the daemon.
const SESSIONS: usize = 60;

/// A 1 MiB body of numbered lines, so a lost, doubled or moved line shows.
fn large_body() -> String {
    let mut body = String::with_capacity(MIB + 128);
    let mut n = 0u32;
    while body.len() < MIB {
        body.push_str(&format!(
            "line {n:06} of the large message: abcdefghijklmnopqrstuvwxyz 0123456789\n"
        ));
        n += 1;
    }
    body
}

/// `relay_idle_timeout` in the daemon tests.
const RELAY_IDLE: Duration = Duration::from_secs(2);

/// How many descriptors process `pid` holds.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's descriptors")
        .count()
}

/// Waits until the daemon's relay maps hold `expected` (sockets, peers).
fn wait_for_entries(daemon: &Daemon, expected: (usize, usize)) -> (usize, usize) {
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        let maps = RelayMaps::of_process(daemon.pid())
            .expect("reading the daemon's descriptors")
            .expect("the daemon holds the relay maps");
        let entries = maps.entries();
        if entries == expected || Instant::now() > deadline {
            return entries;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon with `relay = mode` in front of Postfix: an allowlisted client's 1 MiB message
/// arrives intact; a client that waits out the greet wait gets the MTA's greeting after the
/// teaser; QUIT, the client's close and the MTA's close each end a session on both sides;
/// and many sessions leave nothing behind.
fn relay_through_the_daemon(mode: &str) {
    ensure_packages(&["postfix", "swaks"]).expect("postfix and swaks");
    let bed = Bed::new(&format!("relay-{mode}"), &[10, 11]);
    let (permitted, screened) = (bed.v4(10), bed.v4(11));
    // Two bad commands and smtpd hangs up: the MTA's own close.
    let postfix = Postfix::start(
        &bed.server,
        &bed.backend_config().main_cf("smtpd_hard_error_limit", "2"),
    )
    .expect("starting the Postfix backend");
    let table = bed.write_table("access.cidr", &[(permitted, "permit")]);
    let pin = PinDir::new(&format!("relay-{mode}"));
    let config = DaemonConfig::new(&bed)
        .set(
            "access_list",
            quoted(format!("permit_mynetworks, cidr:{}", table.display())),
        )
        .set("relay", quoted(mode))
        .set(
            "relay_idle_timeout",
            quoted(format!("{}s", RELAY_IDLE.as_secs())),
        )
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let kernel = mode == "kernel";
    let said = daemon.log();
    assert!(
        said.contains(&format!("hand-off relay: {mode}")),
        "the daemon does not say which relay runs:\n{said}"
    );
    assert_eq!(
        RelayMaps::of_process(daemon.pid()).unwrap().is_some(),
        kernel,
        "relay maps held by a daemon with relay = {mode}"
    );

    // A large message, with swaks.
    let body = large_body();
    let body_file = bed.scratch.write("body.txt", &body).expect("body file");
    let swaks = bed.swaks_message(permitted, &format!("@{}", body_file.display()), &[]);
    swaks.assert_success();
    // The last line: the mailbox is written while delivery goes on.
    let last_line = body.lines().last().expect("a body");
    assert!(
        postfix.wait_for_mail(last_line, DELIVERY_WAIT),
        "the large message was not delivered; Postfix log:\n{}",
        postfix.log()
    );
    assert!(
        postfix.mailbox().contains(&body),
        "the large message arrived changed"
    );

    // A screened client: the teaser, the greet wait, then the MTA's greeting; QUIT.
    let mut client = bed.connect(screened);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    assert_eq!(client.line(GREET_WAIT + REPLY_WAIT), BACKEND_GREETING);
    let ehlo = client.command(&format!("EHLO {CLIENT_HELO}"));
    assert!(
        ehlo.last().is_some_and(|l| l.starts_with("250 ")),
        "{ehlo:?}"
    );
    if kernel {
        assert_eq!(wait_for_entries(&daemon, (2, 2)), (2, 2));
        // The MTA's EHLO reply came after the hand-off: the program moved it.
        let reply_bytes: usize = ehlo.iter().map(|line| line.len() + 2).sum();
        let maps = RelayMaps::of_process(daemon.pid()).unwrap().unwrap();
        assert!(
            maps.max_redirected() >= reply_bytes as u64,
            "the EHLO reply ({reply_bytes} bytes) did not go through the kernel relay"
        );
    }
    client.quit();
    expect_backend_log(&postfix, &format!("disconnect from unknown[{screened}]"));

    // The client hangs up without QUIT: the MTA loses the connection.
    let mut client = bed.connect(permitted);
    assert_eq!(client.line(REPLY_WAIT), BACKEND_GREETING);
    client.command(&format!("EHLO {CLIENT_HELO}"));
    drop(client);
    expect_backend_log(&postfix, "lost connection after EHLO");

    // The MTA hangs up: the client sees its last reply, then the close.
    let mut client = bed.connect(permitted);
    assert_eq!(client.line(REPLY_WAIT), BACKEND_GREETING);
    client.send(b"XYZZY\r\nXYZZY\r\n");
    let rest = client.until_closed(REPLY_WAIT);
    assert!(
        rest.last().is_some_and(|l| l.starts_with("421 ")),
        "the MTA's last reply did not arrive: {rest:?}"
    );
    drop(client);

    // A passed client that goes silent, before an MTA that would wait 300s: the relay closes
    // both sides after relay_idle_timeout, and the daemon holds no descriptor more than
    // before.
    let before = open_descriptors(daemon.pid());
    let mut client = bed.connect(permitted);
    assert_eq!(client.line(REPLY_WAIT), BACKEND_GREETING);
    let greeted = Instant::now();
    assert_eq!(
        client.until_closed(RELAY_IDLE + REPLY_WAIT),
        Vec::<String>::new()
    );
    let closed = greeted.elapsed();
    assert!(
        closed >= RELAY_IDLE - Duration::from_millis(200) && closed < RELAY_IDLE * 2,
        "closed {closed:?} after the greeting, relay_idle_timeout {RELAY_IDLE:?}"
    );
    expect_backend_log(
        &postfix,
        &format!("lost connection after CONNECT from unknown[{permitted}]"),
    );
    let deadline = Instant::now() + REPLY_WAIT;
    while open_descriptors(daemon.pid()) > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = open_descriptors(daemon.pid());
    assert!(
        after <= before,
        "descriptors left open: {after}, {before} before"
    );
    if kernel {
        assert_eq!(wait_for_entries(&daemon, (0, 0)), (0, 0));
    }

    // Many sessions, then nothing left in the relay.
    for _ in 0..SESSIONS {
        let mut client = bed.connect(permitted);
        assert_eq!(client.line(REPLY_WAIT), BACKEND_GREETING);
        client.quit();
    }
    if kernel {
        assert_eq!(
            wait_for_entries(&daemon, (0, 0)),
            (0, 0),
            "relay map entries left"
        );
    }
    daemon.stop();
}

#[test]
fn the_daemon_relays_in_the_kernel() {
    if !require_root("the_daemon_relays_in_the_kernel") {
        return;
    }
    relay_through_the_daemon("kernel");
}

#[test]
fn the_daemon_relays_in_userspace() {
    if !require_root("the_daemon_relays_in_userspace") {
        return;
    }
    relay_through_the_daemon("userspace");
}

/// Relayed connections keep their place in their client's count
/// (`client_connection_count_limit`) and take one of `relay_max_connections`, which bounds
/// both relays together: a client beyond either gets postscreen's 421 (a client that was in
/// the greet wait when the relay filled gets it in answer to its first command), and a place
/// comes back when a relayed connection ends.
fn relayed_connections_are_counted(mode: &str) {
    ensure_packages(&["postfix"]).expect("postfix");
    let bed = Bed::new(&format!("relay-count-{mode}"), &[20, 21, 22, 23]);
    let (busy, second, late, screened) = (bed.v4(20), bed.v4(21), bed.v4(22), bed.v4(23));
    let postfix = bed.start_backend();
    let table = bed.write_table(
        "access.cidr",
        &[(busy, "permit"), (second, "permit"), (late, "permit")],
    );
    let pin = PinDir::new(&format!("relay-count-{mode}"));
    let config = DaemonConfig::new(&bed)
        .set("access_list", quoted(format!("cidr:{}", table.display())))
        .set("relay", quoted(mode))
        .set("client_connection_count_limit", "2")
        .set("relay_max_connections", "3")
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let kernel = mode == "kernel";

    // A client in the greet wait while the relay fills.
    let mut waiting = bed.connect(screened);
    assert_eq!(waiting.line(REPLY_WAIT), TEASER);
    let waiting_since = Instant::now();

    // Two relayed connections from one client: a third from it is too many.
    let mut relayed = Vec::new();
    for _ in 0..2 {
        let mut client = bed.connect(busy);
        assert_eq!(client.line(REPLY_WAIT), BACKEND_GREETING);
        relayed.push(client);
    }
    if kernel {
        assert_eq!(wait_for_entries(&daemon, (4, 4)), (4, 4));
    }
    let mut third = bed.connect(busy);
    assert_eq!(
        third.until_closed(REPLY_WAIT),
        ["421 4.7.0 Error: too many connections"]
    );
    daemon.expect_line(&format!(
        "NOQUEUE: reject: CONNECT from {}: too many connections",
        third.tag()
    ));

    // A third relayed connection fills the relay: the next client finds the server ports
    // busy, whoever it is.
    let mut other = bed.connect(second);
    assert_eq!(other.line(REPLY_WAIT), BACKEND_GREETING);
    let mut refused = bed.connect(late);
    assert_eq!(
        refused.until_closed(REPLY_WAIT),
        ["421 4.3.2 All server ports are busy"]
    );
    daemon.expect_line(&format!(
        "NOQUEUE: reject: CONNECT from {}: all server ports busy",
        refused.tag()
    ));
    if kernel {
        assert_eq!(wait_for_entries(&daemon, (6, 6)), (6, 6));
    }

    // The client in the greet wait passes into a full relay: a complete greeting, then
    // postscreen's 421 to its first command.
    assert!(
        waiting_since.elapsed() < GREET_WAIT,
        "the relay filled after the greet wait"
    );
    assert_eq!(waiting.line(GREET_WAIT + REPLY_WAIT), ENGINE_GREETING);
    assert_eq!(
        waiting.command(&format!("EHLO {CLIENT_HELO}")),
        ["421 4.3.2 No system resources"]
    );
    daemon.expect_line(&format!(
        "NOQUEUE: reject: CONNECT from {}: all server ports busy",
        waiting.tag()
    ));

    // One relayed connection ends: its place comes back, for its client and for the relay.
    other.quit();
    expect_backend_log(&postfix, &format!("disconnect from unknown[{second}]"));
    let deadline = Instant::now() + REPLY_WAIT;
    let admitted = loop {
        let mut client = bed.connect(late);
        let line = client.line(REPLY_WAIT);
        if line == BACKEND_GREETING {
            break client;
        }
        assert!(Instant::now() < deadline, "no place came back: {line}");
        std::thread::sleep(Duration::from_millis(50));
    };
    admitted.quit();
    for client in relayed {
        client.quit();
    }
    if kernel {
        assert_eq!(wait_for_entries(&daemon, (0, 0)), (0, 0));
    }
    daemon.stop();
}

#[test]
fn relayed_connections_count_for_their_client_and_against_relay_max_connections_in_the_kernel() {
    if !require_root(
        "relayed_connections_count_for_their_client_and_against_relay_max_connections_in_the_kernel",
    ) {
        return;
    }
    relayed_connections_are_counted("kernel");
}

#[test]
fn relayed_connections_count_for_their_client_and_against_relay_max_connections_in_userspace() {
    if !require_root(
        "relayed_connections_count_for_their_client_and_against_relay_max_connections_in_userspace",
    ) {
        return;
    }
    relayed_connections_are_counted("userspace");
}

/// The most a fast client may push into a relay whose backend stops reading.
const PUSH_CAP: usize = 256 * MIB;

/// `ioctl(fd, request)` for a queue length (`SIOCINQ`, `SIOCOUTQ`).
fn queued(fd: std::os::fd::RawFd, request: libc::c_ulong) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: the request writes one int.
    let rc = unsafe { libc::ioctl(fd, request, &raw mut n) };
    assert_eq!(rc, 0, "ioctl: {}", std::io::Error::last_os_error());
    usize::try_from(n).unwrap()
}

/// The memory a socket's received data is charged (`SO_MEMINFO`'s `rmem_alloc`).
fn receive_charge(fd: std::os::fd::RawFd) -> usize {
    let mut info = [0u32; 16];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes of u32 counters.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_MEMINFO: {}", std::io::Error::last_os_error());
    info[0] as usize
}

/// `TCP: … mem N` of /proc/net/sockstat: pages the host's TCP sockets hold.
fn tcp_mem_pages() -> u64 {
    let stat = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let line = stat.lines().find(|l| l.starts_with("TCP:")).unwrap();
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem").unwrap();
    words.next().unwrap().parse().unwrap()
}

/// A field of /proc/meminfo, in KiB.
fn meminfo_kib(field: &str) -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What a client that sends as fast as it can got into `relay` while the MTA read nothing.
#[derive(Debug)]
struct Flooded {
    /// Bytes the client's writes took before they stalled (or the cap).
    pushed: usize,
    /// Of those, still in the client's own send queue.
    client_queue: usize,
    /// In the relay's socket to the MTA, unsent or unacknowledged.
    backend_queue: usize,
    /// In the MTA's receive queue.
    mta_queue: usize,
    /// What the relay's socket from the client holds in its receive queue (its memory
    /// charge, `SO_MEMINFO`, at least the bytes; at most `tcp_rmem`'s maximum).
    front_queue: usize,
    /// The host's TCP memory and unreclaimable slab grew by this much.
    tcp_mem_kib: i64,
    slab_kib: i64,
}

impl Flooded {
    /// Bytes that left the client and are in none of the queues above: held by the relay
    /// (the kernel relay's queue of redirected data, or the daemon's buffer).
    fn elsewhere(&self) -> usize {
        (self.pushed - self.client_queue - self.backend_queue - self.mta_queue)
            .saturating_sub(self.front_queue)
    }

    /// The figures, for the test's output.
    fn report(&self, relay: &str) -> String {
        format!(
            "{relay}: pushed {} KiB, in the client's queue {} KiB, the relay's from the client {} \
             KiB, to the MTA {} KiB, the MTA's {} KiB, elsewhere {} KiB; TCP mem {:+} KiB, \
             unreclaimable slab {:+} KiB",
            self.pushed / 1024,
            self.client_queue / 1024,
            self.front_queue / 1024,
            self.backend_queue / 1024,
            self.mta_queue / 1024,
            self.elsewhere() / 1024,
            self.tcp_mem_kib,
            self.slab_kib
        )
    }
}

/// A client sends as fast as it can through `relay`; the MTA never reads. The client writes
/// until its writes stall for a second, or [`PUSH_CAP`].
async fn flood(relay: &Relay) -> Flooded {
    use std::os::fd::AsRawFd as _;
    let Loopback {
        mut client,
        front,
        to_backend,
        mut mta,
    } = loopback().await;
    mta.write_all(b"220 mta.example ESMTP\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let backend_fd = to_backend.as_raw_fd();
    let front_fd = front.as_raw_fd();
    let limits = RelayLimits {
        idle: Duration::from_secs(60),
        ..RelayLimits::DEFAULT
    };
    let session = async {
        let mut greeting = [0u8; 23];
        client.read_exact(&mut greeting).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (tcp_mem, slab) = (tcp_mem_pages(), meminfo_kib("SUnreclaim"));
        let chunk = vec![b'x'; 64 * 1024];
        let mut pushed = 0;
        while pushed < PUSH_CAP {
            match tokio::time::timeout(Duration::from_secs(1), client.write(&chunk)).await {
                Ok(written) => pushed += written.unwrap(),
                Err(_) => break,
            }
        }
        let page_kib = 4;
        let flooded = Flooded {
            pushed,
            client_queue: queued(client.as_raw_fd(), libc::TIOCOUTQ),
            backend_queue: queued(backend_fd, libc::TIOCOUTQ),
            mta_queue: queued(mta.as_raw_fd(), libc::FIONREAD),
            front_queue: receive_charge(front_fd),
            tcp_mem_kib: (tcp_mem_pages() as i64 - tcp_mem as i64) * page_kib,
            slab_kib: meminfo_kib("SUnreclaim") as i64 - slab as i64,
        };
        drop(client);
        drop(mta);
        flooded
    };
    let (_, flooded) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(relay.run(front, to_backend, limits), session)
    })
    .await
    .expect("the flood took more than 120s");
    flooded
}

/// What a relay may hold of a flood beyond the sockets' own queues: the userspace relay holds
/// one 16 KiB chunk per direction, the kernel relay at most `BACKLOG_LIMIT` (4 MiB) queued
/// for the target, and a segment or two.
const HELD_LIMIT: usize = 5 * MIB;

/// A client that sends fast into the userspace relay while the backend reads nothing is held
/// back: the daemon writes to the backend only as the backend's socket takes bytes, and reads
/// from the client only after, so the client's sends stall once the queues are full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_client_before_a_backend_that_stops_reading_is_held_back_in_userspace() {
    // A flood takes both cores: the tests that time a kernel relay wait for it.
    let _turn = KERNEL_RELAY.lock().await;
    let flooded = flood(&Relay::userspace()).await;
    eprintln!("{}", flooded.report("userspace"));
    assert!(flooded.pushed < PUSH_CAP, "{flooded:?}");
    assert!(flooded.elsewhere() < HELD_LIMIT, "{flooded:?}");
}

/// The same flood into the kernel relay. The redirect itself has no backpressure (measured
/// on Linux 6.18 before the relay watched for it: the client's sends never stalled, 256 MiB
/// pushed, 252 MiB of it queued for the target socket and charged to no socket): the relay
/// pauses a pair whose target falls behind and goes on in userspace, so the client is held
/// back as there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_client_before_a_backend_that_stops_reading_is_held_back_in_the_kernel_relay() {
    if !require_root(
        "a_fast_client_before_a_backend_that_stops_reading_is_held_back_in_the_kernel_relay",
    ) {
        return;
    }
    let _turn = KERNEL_RELAY.lock().await;
    let (relay, _) = Relay::start(RelayMode::Kernel, 4).expect("loading the kernel relay");
    let flooded = flood(&relay).await;
    eprintln!("{}", flooded.report("kernel"));
    assert!(flooded.pushed < PUSH_CAP, "{flooded:?}");
    assert!(flooded.elsewhere() < HELD_LIMIT, "{flooded:?}");
}

/// A backend that stops reading for a while, then reads again: the kernel relay stops
/// redirecting past the credit and goes on in userspace, and every byte arrives, in order,
/// both ways, up to the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_pauses_gets_every_byte_in_order_after_the_relay_moves_to_userspace() {
    if !require_root(
        "a_backend_that_pauses_gets_every_byte_in_order_after_the_relay_moves_to_userspace",
    ) {
        return;
    }
    const LEN: usize = 48 * MIB;
    let _turn = KERNEL_RELAY.lock().await;
    let (relay, _) = Relay::start(RelayMode::Kernel, 4).expect("loading the kernel relay");
    let Loopback {
        mut client,
        front,
        to_backend,
        mut mta,
    } = loopback().await;
    mta.write_all(b"220 mta.example ESMTP\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let up = pattern(LEN, 3);
    let session = async {
        let mut greeting = [0u8; 23];
        client.read_exact(&mut greeting).await.unwrap();
        let (mut client_read, mut client_write) = client.split();
        let send = async {
            client_write.write_all(&up).await.unwrap();
            client_write.shutdown().await.unwrap();
        };
        let receive = async {
            // The MTA reads nothing for a second, then everything.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let stopped = RelayMaps::of_process(std::process::id())
                .unwrap()
                .map(|maps| maps.stopped());
            let mut got = vec![0u8; LEN];
            mta.read_exact(&mut got).await.unwrap();
            assert!(got == up, "client → MTA bytes differ");
            mta.write_all(b"250 2.0.0 Ok: queued\r\n221 bye\r\n")
                .await
                .unwrap();
            mta.shutdown().await.unwrap();
            let mut nothing = Vec::new();
            mta.read_to_end(&mut nothing).await.unwrap();
            assert!(nothing.is_empty());
            stopped
        };
        let reply = async {
            let mut rest = Vec::new();
            client_read.read_to_end(&mut rest).await.unwrap();
            rest
        };
        tokio::join!(send, receive, reply)
    };
    let (relayed, ((), stopped, reply)) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(relay.run(front, to_backend, RelayLimits::DEFAULT), session)
    })
    .await
    .expect("the exchange took more than 60s");
    // The client's socket; the MTA's stops at its next byte, its credit taken away.
    assert_eq!(
        stopped,
        Some(1),
        "the program stopped redirecting the client's socket while the MTA read nothing"
    );
    assert_eq!(reply, b"250 2.0.0 Ok: queued\r\n221 bye\r\n");
    let relayed = relayed.unwrap();
    assert_eq!(relayed.up, LEN as u64);
    assert_eq!(relayed.down, (23 + reply.len()) as u64);
    assert_eq!(relay_maps_emptied().await, (0, 0), "the pair left the maps");
}
