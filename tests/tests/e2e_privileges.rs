//! The daemon keeps no power it does not need, read from outside as an operator would: its
//! credentials and capability sets in `/proc/PID/status` (every thread's), the access mode of
//! every BPF map descriptor it holds (`/proc/PID/fdinfo`, the map named through its id), its
//! mappings of BPF maps (`/proc/PID/maps`), and the owner of the state it keeps. Then it must
//! still do everything it does after the drop: hand a client to Postfix through the kernel
//! relay, read the kernel's deny state at the access stage, install a kernel deny, sweep it
//! when it expires, and stop cleanly.
//!
//! The harness is `screen_tests::daemon`.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use aya::maps::MapInfo;
use screen_common::map_name;
use screen_tests::{
    daemon::{
        Bed, Daemon, DaemonConfig, GREET_WAIT, LOG_WAIT, REPLY_WAIT, START_WAIT, TEASER,
        TOOL_LIMIT, deny_list, dynamic_deny, expect_delivered_and_passed, quoted,
    },
    ensure_packages, ensure_service_account,
    netns::{PinDir, output_within, run_within, smtp_screen_bin, stream_from},
    postfix::MAIL_DOMAIN,
    rbldnsd::{Dataset, LOCAL_DNS, Rbldnsd, Zone},
    require_root,
};
use screen_user::privileges::{DEFAULT_USER, lookup};

/// The maps the daemon writes after the drop: the dynamic deny entries, and the kernel relay's
/// sockhash, peer map and credits, which it fills as clients are handed off.
const WRITTEN: [&str; 5] = [
    map_name::DYN_DENY_V4,
    map_name::DYN_DENY_V6,
    map_name::RELAY_SOCKS,
    map_name::RELAY_PEERS,
    map_name::RELAY_CREDIT,
];

/// How long a kernel deny lasts here, so that the sweep is seen removing one.
const SHORT_DENY_TTL_SECS: u64 = 3;

/// One BPF map descriptor a process holds.
#[derive(Debug)]
struct HeldMap {
    fd: String,
    /// The open flags' access mode (`O_RDONLY`, `O_WRONLY`, `O_RDWR`).
    access: i32,
    id: u32,
}

/// Every BPF map descriptor of `pid`, by map name (the kernel's, at most 15 characters).
fn held_maps(pid: u32) -> BTreeMap<String, Vec<HeldMap>> {
    let mut held: BTreeMap<String, Vec<HeldMap>> = BTreeMap::new();
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/PID/fd");
    for entry in fds {
        let entry = entry.expect("a descriptor");
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target != Path::new("anon_inode:bpf-map") {
            continue;
        }
        let fd = entry.file_name().to_string_lossy().into_owned();
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {name} in fdinfo of fd {fd}:\n{info}"))
        };
        let flags = i32::from_str_radix(field("flags:"), 8).expect("octal flags");
        let id: u32 = field("map_id:").parse().expect("a map id");
        let name = MapInfo::from_id(id)
            .ok()
            .and_then(|map| map.name_as_str().map(str::to_string))
            .unwrap_or_else(|| format!("<map {id}>"));
        held.entry(name).or_default().push(HeldMap {
            fd,
            access: flags & libc::O_ACCMODE,
            id,
        });
    }
    held
}

/// The maps held, one line each, for a failure message.
fn describe(held: &BTreeMap<String, Vec<HeldMap>>) -> String {
    let mode = |access| match access {
        libc::O_RDONLY => "read-only",
        libc::O_WRONLY => "write-only",
        _ => "read-write",
    };
    held.iter()
        .flat_map(|(name, fds)| {
            fds.iter().map(move |map| {
                format!(
                    "  {name} (id {}) fd {}: {}",
                    map.id,
                    map.fd,
                    mode(map.access)
                )
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of `field` in a `/proc/PID/status` text.
fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {field} in:\n{status}"))
}

/// Group ids as a sorted list.
fn group_set(text: &str) -> Vec<u32> {
    let mut groups: Vec<u32> = text
        .split_whitespace()
        .map(|g| g.parse().expect("a group id"))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// Every thread of `pid` runs as the account with its groups and no capability in any set.
fn assert_unprivileged(pid: u32, account_groups: &[u32]) {
    let account = lookup(DEFAULT_USER).expect("the daemon's account");
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    let mut threads = 0;
    for task in tasks {
        let task = task.expect("a thread").path();
        let Ok(status) = fs::read_to_string(task.join("status")) else {
            continue;
        };
        threads += 1;
        let uid = account.uid.to_string();
        let gid = account.gid.to_string();
        let where_ = format!("{}:\n{status}", task.display());
        assert_eq!(
            status_field(&status, "Uid")
                .split_whitespace()
                .collect::<Vec<_>>(),
            [uid.as_str(); 4],
            "real, effective, saved and filesystem uid must be {DEFAULT_USER}'s in {where_}"
        );
        assert_eq!(
            status_field(&status, "Gid")
                .split_whitespace()
                .collect::<Vec<_>>(),
            [gid.as_str(); 4],
            "every gid must be {DEFAULT_USER}'s in {where_}"
        );
        assert_eq!(
            group_set(status_field(&status, "Groups")),
            account_groups,
            "the groups must be `id -G {DEFAULT_USER}` in {where_}"
        );
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(
                u64::from_str_radix(status_field(&status, set), 16).expect("a capability mask"),
                0,
                "{set} must be empty in {where_}"
            );
        }
        assert_eq!(
            status_field(&status, "NoNewPrivs"),
            "1",
            "no_new_privs in {where_}"
        );
    }
    assert!(threads > 1, "the daemon runs its runtime's threads");
}

/// `id -G user`: the account's primary and supplementary groups.
fn id_groups(user: &str) -> Vec<u32> {
    let out = Command::new("id")
        .args(["-G", user])
        .output()
        .expect("running id");
    assert!(out.status.success(), "id -G {user}: {out:?}");
    group_set(&String::from_utf8_lossy(&out.stdout))
}

/// Exactly the written maps are writable; every other map of the program is held read-only,
/// and every mapping of a BPF map (the IPv4 tables) is read-only.
fn assert_map_access(pid: u32) {
    let held = held_maps(pid);
    let listing = describe(&held);
    let writable: Vec<&str> = held
        .iter()
        .filter(|(_, fds)| fds.iter().any(|map| map.access != libc::O_RDONLY))
        .map(|(name, _)| name.as_str())
        .collect();
    let mut written = WRITTEN.to_vec();
    written.sort_unstable();
    assert_eq!(
        writable, written,
        "the daemon must hold write access to the maps it writes and no other; it holds:\n\
         {listing}"
    );
    // Every map of the XDP program it reads is held, read-only.
    for name in map_name::ALL
        .iter()
        .filter(|name| !WRITTEN.contains(name) && !map_name::TABLE_V4.contains(name))
    {
        assert!(
            held.contains_key(*name),
            "the daemon does not hold {name}, which it reads; it holds:\n{listing}"
        );
    }
    let mappings = fs::read_to_string(format!("/proc/{pid}/maps")).expect("/proc/PID/maps");
    let bpf_mappings: Vec<&str> = mappings
        .lines()
        .filter(|line| line.ends_with("anon_inode:bpf-map"))
        .collect();
    assert_eq!(
        bpf_mappings.len(),
        map_name::TABLE_V4.len(),
        "the IPv4 tables are mapped:\n{mappings}"
    );
    for line in bpf_mappings {
        let perms = line.split_whitespace().nth(1).expect("permissions");
        assert!(!perms.contains('w'), "a BPF map is mapped writable: {line}");
    }
}

/// `path` belongs to the daemon's account, with `mode`.
fn assert_owned(path: &Path, mode: u32) {
    let account = lookup(DEFAULT_USER).expect("the daemon's account");
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        (meta.uid(), meta.gid()),
        (account.uid, account.gid),
        "{} must belong to {DEFAULT_USER}",
        path.display()
    );
    assert_eq!(meta.mode() & 0o777, mode, "{}", path.display());
}

#[test]
fn the_daemon_runs_as_its_account_and_writes_only_the_dynamic_deny_maps() {
    if !require_root("the_daemon_runs_as_its_account_and_writes_only_the_dynamic_deny_maps") {
        return;
    }
    ensure_packages(&["postfix", "swaks", "rbldnsd"]).expect("postfix, swaks and rbldnsd");
    let bed = Bed::new("privileges", &[10, 11]);
    let (good, zombie) = (bed.v4(10), bed.v4(11));
    let postfix = bed.start_backend();
    // A DNS list that lists no one: the daemon keeps dnsbl.status for it.
    let _rbldnsd = Rbldnsd::start(
        &bed.server,
        LOCAL_DNS,
        &[Zone::new("bl.test", Dataset::Ip4Set).with_test_point()],
    )
    .expect("starting rbldnsd");
    let pin = PinDir::new("privileges");
    let state = bed.scratch.path().join("state");
    let config = DaemonConfig::new(&bed)
        .with_kernel_layer(&bed)
        .set("relay", quoted("kernel"))
        .set("greet_action", quoted("enforce"))
        .set("deny_ttl", quoted(format!("{SHORT_DENY_TTL_SECS}s")))
        .set("deny_sweep_interval", quoted("1s"))
        .set("dnsbl_sites", quoted("bl.test"))
        .set("dns_servers", format!("[{}]", quoted(LOCAL_DNS)))
        .write(&bed, "smtp-screen.toml");
    let mut daemon = Daemon::start(&bed, &pin, &config, "daemon.log");
    let pid = daemon.pid();

    assert_unprivileged(pid, &id_groups(DEFAULT_USER));
    assert_map_access(pid);
    assert_owned(&state, 0o700);
    assert_owned(&state.join("allowlist.redb"), 0o600);
    assert_owned(&state.join("dnsbl.status"), 0o600);

    // Everything the daemon does after the drop still works. A good client is handed to
    // Postfix through the kernel relay (the access stage reads the kernel's deny state first).
    let marker = format!("delivered by an unprivileged daemon to {good}");
    bed.swaks_message(good, &marker, &[]).assert_success();
    expect_delivered_and_passed(&bed, &daemon, &postfix, good, &marker);

    // The access stage reads the kernel's deny state through the read-only maps, and sees an
    // operator's change to the static list: a client the kernel denies that reaches the
    // daemon past the program (here the server itself, over loopback) is DENYLISTED.
    let server = bed.server_v4();
    let bin = smtp_screen_bin().expect("the smtp-screen binary");
    let mut deny_add = bed.server.command(bin);
    deny_add
        .arg("--pin-dir")
        .arg(pin.path())
        .args(["deny", "add", &format!("{server}/32")]);
    run_within(&mut deny_add, TOOL_LIMIT).expect("smtp-screen deny add");
    let local = stream_from(&bed.server, server, bed.smtp_addr(server), REPLY_WAIT)
        .expect("connecting over loopback");
    let tag = format!(
        "[{server}]:{}",
        local.local_addr().expect("local address").port()
    );
    daemon.expect_line(&format!("DENYLISTED {tag}"));
    drop(local);

    // A repeat pregreeter is denied in the kernel...
    for _ in 0..2 {
        let mut client = bed.connect(zombie);
        client.send(b"EHLO zombie.example\r\n");
        assert_eq!(client.line(REPLY_WAIT), TEASER);
        client.reply(GREET_WAIT + REPLY_WAIT);
        client.command("MAIL FROM:<zombie@bots.example>");
        client.command(&format!("RCPT TO:<user@{MAIL_DOMAIN}>"));
        client.quit();
    }
    daemon.expect_line(&format!(
        "KERNEL DENY [{zombie}] for {SHORT_DENY_TTL_SECS}s after 2 failures: PREGREET"
    ));
    let list = deny_list(&bed, &pin);
    assert!(
        dynamic_deny(&list, zombie).is_some(),
        "{zombie} is not in the deny list:\n{list}"
    );
    // ...and the sweep deletes the entry from the map once it expires.
    let deadline = Instant::now() + Duration::from_secs(SHORT_DENY_TTL_SECS) + LOG_WAIT;
    while !daemon
        .log()
        .contains("expired dynamic deny entries removed swept=1")
    {
        assert!(
            Instant::now() < deadline,
            "the expired entry of {zombie} was not swept:\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(200));
    }

    daemon.assert_running();
    let log = daemon.log();
    for failure in [
        "reading the kernel deny state",
        "sweeping dynamic deny entries",
        "kernel deny of",
        "Operation not permitted",
        "Permission denied",
    ] {
        assert!(
            !log.contains(failure),
            "the daemon failed at something after the drop ({failure:?}):\n{log}"
        );
    }
    // The access stayed as it was through all of it.
    assert_map_access(pid);
    daemon.stop();
    // The filter stays attached with its maps: the pins hold them, not the daemon.
    let link = pin.path().join(format!("link_{}", bed.server_iface()));
    assert!(link.exists(), "{} is gone after the stop", link.display());
    for name in map_name::ALL {
        let path = pin.path().join(name);
        assert!(path.exists(), "{} is gone after the stop", path.display());
    }
}

#[test]
fn a_missing_account_stops_the_daemon_before_anything_is_loaded() {
    if !require_root("a_missing_account_stops_the_daemon_before_anything_is_loaded") {
        return;
    }
    ensure_service_account().expect("the daemon's account");
    let bed = Bed::new("noaccount", &[]);
    let pin = PinDir::new("noaccount");
    let missing = "smtp-screen-nosuch";
    let config = DaemonConfig::new(&bed)
        .with_kernel_layer(&bed)
        .set("user", quoted(missing))
        .write(&bed, "smtp-screen.toml");
    let bin = smtp_screen_bin().expect("the smtp-screen binary");
    let mut cmd = bed.server.command(bin);
    cmd.arg("--pin-dir")
        .arg(pin.path())
        .arg("run")
        .arg("--config")
        .arg(&config);
    let out = output_within(&mut cmd, START_WAIT).expect("running the daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the daemon started:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "user \"{missing}\" does not exist: create it (adduser --system --group \
             --no-create-home --home /nonexistent {missing}) or set `user`"
        )),
        "the error must name the account and how to create it:\n{stderr}"
    );
    let pins: Vec<_> = fs::read_dir(pin.path())
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        pins.is_empty(),
        "nothing is loaded for a daemon that cannot drop root: {pins:?}"
    );
}
