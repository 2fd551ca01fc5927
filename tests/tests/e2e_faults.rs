//! Faults the daemon survives, end to end: it runs in a server namespace in front of a real
//! Postfix, and the test breaks what it depends on while clients keep coming.

use std::{
    fs,
    io::{ErrorKind, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use screen_tests::{
    daemon::{
        BACKEND_GREETING, Bed, DROP_WAIT, Daemon, DaemonConfig, GREET_WAIT, LOG_WAIT, PROMPT,
        REPLY_WAIT, TEASER, quoted, screen_cli,
    },
    netns::{ConnectOutcome, PinDir, connect_from},
    require_root,
};

/// A small tmpfs the test mounts for the daemon's state, unmounted when dropped.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    fn mount(at: PathBuf, size: &str) -> Self {
        fs::create_dir_all(&at).expect("the mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&at)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs at {}", at.display());
        Self { mount: at }
    }

    /// Writes a file until the disk is full; its path.
    fn fill(&self) -> PathBuf {
        let path = self.mount.join("filler");
        let mut file = fs::File::create(&path).expect("the filler file");
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::StorageFull => return path,
                Err(e) => panic!("filling {}: {e}", self.mount.display()),
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Connects from `client`: a newcomer waits out the greet wait and reaches the MTA; a client
/// on the temporary allowlist gets the MTA's greeting at once. Returns whether it was known.
fn known(bed: &Bed, client: IpAddr) -> bool {
    let mut session = bed.connect(client);
    let started = Instant::now();
    let first = session.line(REPLY_WAIT);
    let was_known = first == BACKEND_GREETING && started.elapsed() < PROMPT;
    if !was_known {
        assert_eq!(first, TEASER);
        assert_eq!(session.line(GREET_WAIT + REPLY_WAIT), BACKEND_GREETING);
    }
    session.quit();
    was_known
}

fn wait_for_text(daemon: &Daemon, text: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !daemon.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the daemon did not log {text:?} within {limit:?}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The state directory's disk fills up while the daemon runs: it goes on screening, says so
/// once, keeps the new passes in memory, writes them when space returns, and after a
/// restart every client that passed is still on the temporary allowlist.
#[test]
fn a_full_state_disk_loses_no_pass_and_stops_no_screening() {
    if !require_root("a_full_state_disk_loses_no_pass_and_stops_no_screening") {
        return;
    }
    let bed = Bed::new("disk-full", &[10, 11, 12, 13]);
    let (before, during, other, newcomer) = (bed.v4(10), bed.v4(11), bed.v4(12), bed.v4(13));
    let _postfix = bed.start_backend();
    let disk = SmallDisk::mount(bed.scratch.path().join("disk"), "4m");
    let state: &Path = &disk.mount.join("state");
    let pin = PinDir::new("disk-full");
    let config = DaemonConfig::new(&bed)
        .set("state_dir", quoted(state.display()))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon-1.log");

    assert!(!known(&bed, before));
    // One batch interval (1s) and the pass is in the file.
    std::thread::sleep(Duration::from_millis(1500));

    let filler = disk.fill();
    assert!(!known(&bed, during));
    assert!(!known(&bed, other));
    let failed = "screening goes on, and the changes are kept in memory";
    wait_for_text(&daemon, failed, LOG_WAIT);
    // Screening goes on, and the passes made meanwhile count at once.
    assert!(known(&bed, during));
    assert!(!known(&bed, newcomer));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        daemon.log().matches(failed).count(),
        1,
        "the failure is said once:\n{}",
        daemon.log()
    );

    fs::remove_file(filler).expect("removing the filler");
    // The retries back off from 1s; a few of them fit in this.
    wait_for_text(&daemon, "written again after", Duration::from_secs(20));
    daemon.stop();

    let daemon = Daemon::start(&bed, &pin, &config, "daemon-2.log");
    for client in [before, during, other, newcomer] {
        assert!(
            known(&bed, client),
            "{client} passed but was forgotten:\n{}",
            daemon.log()
        );
    }
}

/// The daemon is killed (SIGKILL) while passes are being written: the XDP program keeps
/// dropping the denied source while no daemon runs, and the restarted daemon finds a
/// consistent allowlist (no damaged record), with every pass of the batches it committed.
#[test]
fn a_daemon_killed_mid_write_leaves_a_consistent_allowlist_and_xdp_dropping() {
    if !require_root("a_daemon_killed_mid_write_leaves_a_consistent_allowlist_and_xdp_dropping") {
        return;
    }
    const CLIENTS: u8 = 40;
    let hosts: Vec<u8> = (20..20 + CLIENTS).chain([200, 201]).collect();
    let bed = Bed::new("killed", &hosts);
    let (denied, probe) = (bed.v4(200), bed.v4(201));
    let clients: Vec<IpAddr> = (20..20 + CLIENTS).map(|h| bed.v4(h)).collect();
    let _postfix = bed.start_backend();
    let pin = PinDir::new("killed");
    let config = DaemonConfig::new(&bed)
        .with_kernel_layer(&bed)
        .write(&bed, "smtp-screen.toml");
    let mut daemon = Daemon::start(&bed, &pin, &config, "daemon-1.log");
    screen_cli(&bed, &pin, &["deny", "add", &denied.to_string()]);

    // A first wave passes and is written; the second passes and the daemon dies as its batch
    // is due (one batch interval, 1s, after the passes).
    let (first, second) = clients.split_at(clients.len() / 2);
    pass_all(&bed, first);
    std::thread::sleep(Duration::from_millis(1500));
    pass_all(&bed, second);
    std::thread::sleep(Duration::from_millis(900));
    daemon.kill();

    // No daemon: the kernel still drops the denied source; others find no listener.
    let outcome = connect_from(&bed.client, denied, bed.smtp_addr(denied), DROP_WAIT)
        .expect("a connection attempt");
    assert_eq!(outcome, ConnectOutcome::TimedOut);
    let outcome = connect_from(&bed.client, probe, bed.smtp_addr(probe), DROP_WAIT)
        .expect("a connection attempt");
    assert_eq!(outcome, ConnectOutcome::Refused);

    let daemon = Daemon::start(&bed, &pin, &config, "daemon-2.log");
    let log = daemon.log();
    assert!(
        !log.contains("corrupt") && !log.contains("unreadable"),
        "the allowlist was damaged:\n{log}"
    );
    for &client in first {
        assert!(
            known(&bed, client),
            "{client} was written before the kill:\n{log}"
        );
    }
    // The second wave is there or not as a whole batch would be: never half a record.
    let kept = std::thread::scope(|scope| {
        let checks: Vec<_> = second
            .iter()
            .map(|&client| {
                scope.spawn({
                    let bed = &bed;
                    move || known(bed, client)
                })
            })
            .collect();
        checks
            .into_iter()
            .map(|check| check.join().expect("a client thread"))
            .filter(|&was_known| was_known)
            .count()
    });
    assert!(
        kept == 0 || kept == second.len(),
        "{kept} of {} kept",
        second.len()
    );
    let outcome = connect_from(&bed.client, denied, bed.smtp_addr(denied), DROP_WAIT)
        .expect("a connection attempt");
    assert_eq!(outcome, ConnectOutcome::TimedOut);
}

/// Every client of `clients` passes at once (each waits out the greet wait in its thread).
fn pass_all(bed: &Bed, clients: &[IpAddr]) {
    std::thread::scope(|scope| {
        for &client in clients {
            scope.spawn(move || assert!(!known(bed, client), "{client} was already known"));
        }
    });
}

/// The backend accepts connections and then never says a word (a hung MTA): a passed client
/// gets postscreen's 421 after `backend_greeting_timeout` instead of waiting on silence, the
/// backend connections are closed, and the daemon holds no more descriptors than before.
#[test]
fn a_backend_that_accepts_and_never_greets_gets_the_client_a_421_and_leaks_nothing() {
    if !require_root(
        "a_backend_that_accepts_and_never_greets_gets_the_client_a_421_and_leaks_nothing",
    ) {
        return;
    }
    let bed = Bed::new("hung-mta", &[30]);
    let newcomer = bed.v4(30);
    // The hung MTA: it accepts, holds every connection, and reads nothing.
    let listener = bed
        .server
        .run(|| std::net::TcpListener::bind(bed.backend_addr()))
        .expect("entering the server namespace")
        .expect("the hung backend's listener");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let held = std::sync::Mutex::new(Vec::new());
    let pin = PinDir::new("hung-mta");
    let config = DaemonConfig::new(&bed)
        .set("backend_greeting_timeout", quoted("1s"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let accept = || {
        while let Ok((stream, _)) = listener.accept() {
            held.lock().unwrap().push(stream);
        }
    };
    let descriptors = || {
        fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
            .unwrap()
            .count()
    };
    let before = descriptors();

    // After the teaser: the engine completes the greeting, then a 421 to the first command.
    let mut client = bed.connect(newcomer);
    assert_eq!(client.line(REPLY_WAIT), TEASER);
    let started = Instant::now();
    assert_eq!(
        client.line(GREET_WAIT + Duration::from_secs(1) + REPLY_WAIT),
        "220 mx.example.test ESMTP"
    );
    assert!(started.elapsed() >= GREET_WAIT + Duration::from_millis(900));
    accept();
    assert_eq!(
        client.command("EHLO client.example"),
        ["421 4.3.2 No system resources"]
    );
    let tag = client.tag();
    drop(client);
    daemon.expect_line(&format!("PASS NEW {tag}"));
    let warning = format!(
        "warning: backend {} sent no greeting within 1s (backend_greeting_timeout)",
        bed.backend_addr()
    );
    daemon.expect_line(&warning);

    // Now on the temporary allowlist, it gets the 421 at once after the limit.
    let mut client = bed.connect(newcomer);
    let connected = Instant::now();
    assert_eq!(
        client.until_closed(Duration::from_secs(1) + REPLY_WAIT),
        ["421 4.3.2 All server ports are busy"]
    );
    assert!(connected.elapsed() >= Duration::from_millis(900));
    accept();
    assert_eq!(
        held.lock().unwrap().len(),
        2,
        "the daemon reached the backend twice"
    );

    // The daemon closed its side of both backend connections and holds nothing more.
    for stream in held.lock().unwrap().iter_mut() {
        use std::io::Read as _;
        stream
            .set_read_timeout(Some(REPLY_WAIT))
            .expect("a read timeout");
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest);
        assert!(
            read.is_ok(),
            "the daemon kept a backend connection open: {read:?}"
        );
    }
    let deadline = Instant::now() + REPLY_WAIT;
    while descriptors() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(descriptors() <= before, "descriptors left open");
}

/// The DNS server the lists are asked through is gone (nothing listens where it was): clients
/// are decided on time, as if no list had listed them (fail open), and a warning names the
/// list.
#[test]
fn with_the_dns_server_gone_clients_pass_on_time_and_a_warning_names_the_list() {
    if !require_root("with_the_dns_server_gone_clients_pass_on_time_and_a_warning_names_the_list") {
        return;
    }
    let bed = Bed::new("dns-gone", &[40]);
    let client = bed.v4(40);
    let _postfix = bed.start_backend();
    let pin = PinDir::new("dns-gone");
    let config = DaemonConfig::new(&bed)
        .set("dnsbl_sites", quoted("gone.test*5"))
        .set("dnsbl_threshold", "3")
        .set("dnsbl_action", quoted("enforce"))
        .set("dns_servers", format!("[{}]", quoted("127.0.0.1:5399")))
        .set("dnsbl_timeout", quoted("1s"))
        .write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon.log");

    let mut session = bed.connect(client);
    let started = Instant::now();
    assert_eq!(session.line(REPLY_WAIT), TEASER);
    // Decided at the end of the greet wait, not later: the list does not hold it up.
    assert_eq!(session.line(GREET_WAIT + REPLY_WAIT), BACKEND_GREETING);
    assert!(started.elapsed() < GREET_WAIT + Duration::from_secs(1));
    let tag = session.tag();
    session.quit();
    daemon.expect_line(&format!("PASS NEW {tag}"));
    daemon.wait_for("a warning naming gone.test", |line| {
        line.starts_with("warning: ") && line.contains("gone.test")
    });
    assert!(
        !daemon.lines().iter().any(|l| l.starts_with("DNSBL rank")),
        "{}",
        daemon.log()
    );
}

/// Something overwrites the allowlist database while the daemon runs: the daemon goes on
/// screening and recording, and at its stop writes the file anew from memory, so that the
/// next start finds every pass instead of a damaged file it would have to set aside.
#[test]
fn a_database_damaged_while_the_daemon_runs_loses_no_pass() {
    if !require_root("a_database_damaged_while_the_daemon_runs_loses_no_pass") {
        return;
    }
    let bed = Bed::new("db-damage", &[50, 51]);
    let (before, after) = (bed.v4(50), bed.v4(51));
    let _postfix = bed.start_backend();
    let pin = PinDir::new("db-damage");
    let config = DaemonConfig::new(&bed).write(&bed, "smtp-screen.toml");
    let daemon = Daemon::start(&bed, &pin, &config, "daemon-1.log");
    assert!(!known(&bed, before));
    std::thread::sleep(Duration::from_millis(1500));

    // Everything past the first page becomes noise.
    let file = bed.scratch.path().join("state/allowlist.redb");
    let len = fs::metadata(&file).expect("the database file").len();
    assert!(len > 4096, "{len} bytes");
    {
        use std::io::{Seek as _, SeekFrom};
        let mut f = fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(&vec![0xa5; (len - 4096) as usize]).unwrap();
        f.sync_all().unwrap();
    }
    assert!(!known(&bed, after));
    assert!(known(&bed, before), "screening from memory goes on");
    std::thread::sleep(Duration::from_millis(1500));
    daemon.stop();

    let daemon = Daemon::start(&bed, &pin, &config, "daemon-2.log");
    for client in [before, after] {
        assert!(
            known(&bed, client),
            "{client} passed but was forgotten:\n{}",
            daemon.log()
        );
    }
}
