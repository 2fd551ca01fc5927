//! A private Postfix instance for the end-to-end tests: the real MTA behind smtp-screen, or
//! the postscreen that smtp-screen is measured against.
//!
//! Everything the instance owns lives under one scratch directory: its configuration
//! (`etc/`), queue (`spool/`), data directory, the mailboxes of the test domain (`mail/`) and
//! its log (`maillog`, written by postlogd, so no syslog daemon is needed). Mail to
//! [`MAIL_DOMAIN`] is delivered by the virtual delivery agent into one mbox file, `mail/mailbox`,
//! owned by `nobody`. chroot is off for every service, so that the instance needs nothing
//! outside its directory but the installed Postfix.
//!
//! The master process is started inside a network namespace (`nsenter --net`), so it and every
//! service it spawns listen and connect only there. Dropping the guard stops the instance and
//! makes sure that no process of it is left, then removes its directory.

use std::{
    fmt::Write as _,
    fs,
    io::{self, ErrorKind},
    net::SocketAddr,
    os::unix::fs::{PermissionsExt as _, chown},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use crate::netns::{Netns, ScratchDir, command_in, output_within};

/// The domain whose mail the instance accepts and delivers to [`Postfix::mailbox`].
pub const MAIL_DOMAIN: &str = "example.test";

/// The `master.cf` line of smtpd's `pass` service, the one postscreen hands clients to: its
/// socket is `private/smtpd` in the queue directory ([`Postfix::pass_socket`]).
pub const SMTPD_PASS_SERVICE: &str =
    "smtpd     pass  -       -       n       -       -       smtpd";

/// postscreen's services besides its `inet` listener (Debian's master.cf, chroot off): the DNS
/// list lookups and the STARTTLS proxy.
pub const DNSBLOG_SERVICE: &str = "dnsblog   unix  -       -       n       -       0       dnsblog";
pub const TLSPROXY_SERVICE: &str =
    "tlsproxy  unix  -       -       n       -       0       tlsproxy";

/// Upper bound for one `postfix` command (`check`, `start`, `stop`).
const COMMAND_LIMIT: Duration = Duration::from_secs(30);
/// How long the listener may take to appear once `postfix start` returned.
const LISTEN_WAIT: Duration = Duration::from_secs(10);
/// How long the processes may take to exit once told to stop, before they are killed.
const STOP_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// The services every instance runs besides its `inet` listener: the queue manager and the
/// delivery path to the virtual mailbox, without local delivery (nothing is delivered to the
/// machine's own users).
const MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// What to run: the listening address and what `main.cf` and `master.cf` add to the base
/// configuration.
#[derive(Clone, Debug)]
pub struct PostfixConfig {
    listen: SocketAddr,
    myhostname: String,
    inet_maxproc: String,
    inet_command: String,
    main: Vec<(String, String)>,
    master: Vec<String>,
}

impl PostfixConfig {
    /// Plain `smtpd` on `listen` (an address of the namespace the instance runs in).
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            myhostname: format!("mx.{MAIL_DOMAIN}"),
            inet_maxproc: "-".into(),
            inet_command: "smtpd".into(),
            main: Vec::new(),
            master: Vec::new(),
        }
    }

    /// The name in the greeting and in `Received:` headers.
    pub fn myhostname(mut self, name: &str) -> Self {
        self.myhostname = name.into();
        self
    }

    /// Every connection starts with a PROXY header (v1 or v2), which names the real client.
    pub fn upstream_proxy_protocol(self) -> Self {
        self.main_cf("smtpd_upstream_proxy_protocol", "haproxy")
    }

    /// Sets a `main.cf` parameter, replacing the base configuration's value.
    pub fn main_cf(mut self, name: &str, value: &str) -> Self {
        self.main.retain(|(n, _)| n != name);
        self.main.push((name.into(), value.into()));
        self
    }

    /// What listens on the port (`master.cf` maxproc and command), such as `"1", "postscreen"`
    /// instead of `"-", "smtpd"`.
    pub fn inet_service(mut self, maxproc: &str, command: &str) -> Self {
        self.inet_maxproc = maxproc.into();
        self.inet_command = command.into();
        self
    }

    /// Adds another `inet` listener, on `listen` alone (`HOST:PORT` in `master.cf` binds that
    /// address whatever `inet_interfaces` says), running `command` with at most `maxproc`
    /// processes: such as postscreen on one port beside a plain smtpd on another.
    pub fn inet_listener(self, listen: SocketAddr, maxproc: &str, command: &str) -> Self {
        let line = inet_line(&listen.to_string(), maxproc, command);
        self.master_cf(&line)
    }

    /// Adds smtpd's `pass` service ([`SMTPD_PASS_SERVICE`]), which takes clients handed over as
    /// sockets, as postscreen hands them over.
    pub fn smtpd_pass_service(self) -> Self {
        self.master_cf(SMTPD_PASS_SERVICE)
    }

    /// Adds a `master.cf` line, such as `smtpd pass - - n - - smtpd`.
    pub fn master_cf(mut self, line: &str) -> Self {
        self.master.push(line.into());
        self
    }

    fn main_cf_text(&self, root: &Path, mailbox_owner: (u32, u32)) -> String {
        let dir = |sub: &str| root.join(sub).display().to_string();
        let mut base: Vec<(String, String)> = [
            ("compatibility_level", "3.6".to_string()),
            ("queue_directory", dir("spool")),
            ("data_directory", dir("data")),
            ("mail_owner", "postfix".into()),
            ("setgid_group", "postdrop".into()),
            ("myhostname", self.myhostname.clone()),
            ("myorigin", "$myhostname".into()),
            ("mydestination", String::new()),
            ("inet_interfaces", self.listen.ip().to_string()),
            // Both families whatever the listening address: a PROXY header may name a client
            // of either, and smtpd refuses one of a family it does not support.
            ("inet_protocols", "all".into()),
            ("mynetworks", "127.0.0.0/8 [::1]/128".into()),
            ("smtpd_banner", "$myhostname ESMTP Postfix".into()),
            // No DNS in a test namespace: a reverse lookup would only add a timeout, and the
            // client is logged as unknown[address] either way.
            ("smtpd_peername_lookup", "no".into()),
            ("smtp_dns_support_level", "disabled".into()),
            ("alias_maps", String::new()),
            ("alias_database", String::new()),
            ("biff", "no".into()),
            ("maillog_file", dir("maillog")),
            ("maillog_file_prefixes", root.display().to_string()),
            ("virtual_mailbox_domains", MAIL_DOMAIN.into()),
            ("virtual_mailbox_base", dir("mail")),
            ("virtual_mailbox_maps", "static:mailbox".into()),
            ("virtual_uid_maps", format!("static:{}", mailbox_owner.0)),
            ("virtual_gid_maps", format!("static:{}", mailbox_owner.1)),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        for (name, value) in &self.main {
            match base.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1.clone_from(value),
                None => base.push((name.clone(), value.clone())),
            }
        }
        base.iter().fold(String::new(), |mut text, (name, value)| {
            let _ = writeln!(text, "{name} = {value}");
            text
        })
    }

    fn master_cf_text(&self) -> String {
        let mut text = inet_line(
            &self.listen.port().to_string(),
            &self.inet_maxproc,
            &self.inet_command,
        );
        text.push('\n');
        text.push_str(MASTER_CF);
        for line in &self.master {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// The `master.cf` line of an `inet` service named `service` (a port, or `HOST:PORT`), chroot
/// off like every other service of the instance.
fn inet_line(service: &str, maxproc: &str, command: &str) -> String {
    format!("{service:<9} inet  n       -       n       -       {maxproc:<7} {command}")
}

/// A running Postfix instance. Dropping it stops the instance, kills whatever of it is still
/// running, and removes its directory.
#[derive(Debug)]
pub struct Postfix {
    netns: PathBuf,
    listen: SocketAddr,
    running: bool,
    root: ScratchDir,
}

impl Postfix {
    /// Writes the configuration, checks it (`postfix check`, which also creates the queue
    /// directories with Postfix's own ownership and modes), starts the instance in `netns` and
    /// waits until its port listens.
    pub fn start(netns: &Netns, config: &PostfixConfig) -> io::Result<Self> {
        crate::ensure_packages(&["postfix"])?;
        let root = ScratchDir::create("postfix")?;
        let mut postfix = Self {
            netns: netns.path(),
            listen: config.listen,
            running: false,
            root,
        };
        postfix.prepare(config)?;
        postfix.postfix(&["check"])?;
        // Set before starting: a start that fails half way must still be cleaned up.
        postfix.running = true;
        postfix.postfix(&["start"])?;
        postfix.wait_listening()?;
        Ok(postfix)
    }

    fn prepare(&self, config: &PostfixConfig) -> io::Result<()> {
        let root = self.root.path();
        let nobody = screen_user::privileges::lookup("nobody").map_err(io::Error::other)?;
        // The virtual delivery agent writes the mailbox as this user.
        let mail = root.join("mail");
        fs::create_dir(&mail)?;
        chown(&mail, Some(nobody.uid), Some(nobody.gid))?;
        // postfix check creates the queue's subdirectories, but the queue directory itself
        // must exist and belong to root. The configuration lives beside it, not above it, so
        // that postfix check does not warn about every queue file.
        let spool = root.join("spool");
        fs::create_dir(&spool)?;
        fs::set_permissions(&spool, fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
        let etc = self.config_dir();
        fs::create_dir(&etc)?;
        fs::write(
            etc.join("main.cf"),
            config.main_cf_text(root, (nobody.uid, nobody.gid)),
        )?;
        fs::write(etc.join("master.cf"), config.master_cf_text())
    }

    /// Runs `postfix -c DIR ARGS…` in the namespace. Postfix writes its errors to its log
    /// rather than to a stderr that is not a terminal, so a failure carries the log's tail.
    fn postfix(&self, args: &[&str]) -> io::Result<()> {
        let mut cmd = command_in(&self.netns, "postfix");
        cmd.arg("-c").arg(self.config_dir()).args(args);
        let out = output_within(&mut cmd, COMMAND_LIMIT)?;
        if out.status.success() {
            return Ok(());
        }
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        Err(io::Error::other(format!(
            "postfix {} failed ({}): {}{}\nlog:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )))
    }

    /// The address and port smtpd (or whatever [`PostfixConfig::inet_service`] named) listens
    /// on.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The directory holding `main.cf` and `master.cf` (`postfix -c`, `postconf -c`).
    pub fn config_dir(&self) -> PathBuf {
        self.root.path().join("etc")
    }

    /// Where `data_directory` points (postscreen's cache lives here).
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The socket of the private `unix` or `pass` service `service`: `private/SERVICE` in the
    /// queue directory.
    pub fn pass_socket(&self, service: &str) -> PathBuf {
        self.root.path().join("spool/private").join(service)
    }

    /// Waits up to `limit` for master to create the socket of the private service `service`;
    /// returns its path.
    pub fn wait_for_pass_socket(&self, service: &str, limit: Duration) -> io::Result<PathBuf> {
        let path = self.pass_socket(service);
        wait_for(limit, || path.exists().then_some(())).ok_or_else(|| {
            io::Error::new(
                ErrorKind::TimedOut,
                format!(
                    "{} does not exist after {limit:?}; log:\n{}",
                    path.display(),
                    self.log()
                ),
            )
        })?;
        Ok(path)
    }

    /// Everything the instance logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.root.path().join("maillog")).unwrap_or_default()
    }

    /// The lines program `program` (`postscreen`, `smtpd`, …) logged so far, without the
    /// maillog's time, host and `postfix/PROGRAM[pid]: `.
    pub fn program_lines(&self, program: &str) -> Vec<String> {
        let ident = format!("postfix/{program}[");
        self.log()
            .lines()
            .filter_map(|line| {
                let (_, rest) = line.split_once(&ident)?;
                Some(rest.split_once("]: ")?.1.to_string())
            })
            .collect()
    }

    /// Everything delivered so far to [`MAIL_DOMAIN`], as mbox text; empty when nothing was.
    pub fn mailbox(&self) -> String {
        fs::read_to_string(self.root.path().join("mail/mailbox")).unwrap_or_default()
    }

    /// Waits up to `limit` for a log line that contains `text`; returns that line.
    pub fn wait_for_log(&self, text: &str, limit: Duration) -> Option<String> {
        wait_for(limit, || {
            self.log()
                .lines()
                .find(|line| line.contains(text))
                .map(str::to_string)
        })
    }

    /// Waits up to `limit` for `text` to be delivered into the mailbox.
    pub fn wait_for_mail(&self, text: &str, limit: Duration) -> bool {
        wait_for(limit, || self.mailbox().contains(text).then_some(())).is_some()
    }

    /// The master process, from its pid file: the parent of every service process.
    pub fn master_pid(&self) -> Option<u32> {
        let path = self.root.path().join("spool/pid/master.pid");
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// The running processes of the service program `program` (`postscreen`, `dnsblog`, …):
    /// the master's children of that name. Empty while master has not started one.
    pub fn service_pids(&self, program: &str) -> Vec<u32> {
        let Some(master) = self.master_pid() else {
            return Vec::new();
        };
        children_of(master)
            .into_iter()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim_end() == program)
            })
            .filter(|&pid| alive(pid))
            .collect()
    }

    /// Waits until the master process has a listening socket on the instance's port. The
    /// socket tables under `/proc/PID/net` are those of the process's network namespace, so
    /// nothing has to connect (which smtpd would log as a client).
    fn wait_listening(&self) -> io::Result<()> {
        let listening = || {
            let pid = self.master_pid()?;
            let table = if self.listen.is_ipv4() { "tcp" } else { "tcp6" };
            let sockets = fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
            sockets
                .lines()
                .skip(1)
                .any(|line| listens_on(line, self.listen.port()))
                .then_some(())
        };
        wait_for(LISTEN_WAIT, listening).ok_or_else(|| {
            io::Error::new(
                ErrorKind::TimedOut,
                format!(
                    "Postfix does not listen on {} after {LISTEN_WAIT:?}; log:\n{}",
                    self.listen,
                    self.log()
                ),
            )
        })
    }

    /// Stops the instance (`postfix stop`) and waits until the master process and every
    /// service it started have exited, killing whatever is left after a grace period.
    pub fn stop(&mut self) -> io::Result<()> {
        if !self.running {
            return Ok(());
        }
        let master = self.master_pid();
        let mut processes: Vec<u32> = master.into_iter().collect();
        if let Some(master) = master {
            processes.extend(children_of(master));
        }
        let stopped = self.postfix(&["stop"]);
        let deadline = Instant::now() + STOP_WAIT;
        while processes.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        for pid in processes.into_iter().filter(|&pid| alive(pid)) {
            eprintln!("warning: Postfix process {pid} still running after stop; killing it");
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        self.running = false;
        stopped
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "warning: stopping Postfix in {}: {e}",
                self.root.path().display()
            );
        }
    }
}

/// The installed Postfix as `Postfix <mail_version>` (`postconf -d`), for reports.
pub fn postfix_version() -> String {
    let mut postconf = std::process::Command::new("postconf");
    postconf.args(["-d", "-h", "mail_version"]);
    let version = output_within(&mut postconf, Duration::from_secs(10))
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|version| !version.is_empty());
    format!(
        "Postfix {}",
        version.as_deref().unwrap_or("(version unknown)")
    )
}

/// Whether a line of `/proc/net/tcp{,6}` is a listening socket on `port`.
fn listens_on(line: &str, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let mut fields = line.split_whitespace();
    let local = fields.nth(1);
    let state = fields.nth(1);
    let local_port = local
        .and_then(|addr| addr.rsplit_once(':'))
        .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
    local_port == Some(port) && state == Some(LISTEN)
}

/// Whether `pid` is a process that has not exited (a zombie has).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_fields(&stat).map(|(state, _)| state != 'Z'))
        .unwrap_or(false)
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat_fields(&stat))
                .is_some_and(|(_, ppid)| ppid == parent)
        })
        .collect()
}

/// State and parent pid from `/proc/PID/stat`; the command name before them is in
/// parentheses and may itself contain spaces and parentheses.
fn stat_fields(stat: &str) -> Option<(char, u32)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_sockets_from_proc() {
        let listen =
            "   1: 0100007F:2729 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0";
        assert!(listens_on(listen, 10025));
        assert!(!listens_on(listen, 25));
        let established =
            "   2: 0100007F:2729 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0";
        assert!(!listens_on(established, 10025));
    }

    #[test]
    fn parses_stat_with_odd_command_names() {
        assert_eq!(stat_fields("42 (smtpd) S 7 42 42 0 -1"), Some(('S', 7)));
        assert_eq!(stat_fields("43 (a) b (c)) Z 1 43 43 0 -1"), Some(('Z', 1)));
    }

    #[test]
    fn later_parameters_replace_the_base_ones() {
        let config = PostfixConfig::new("127.0.0.1:10025".parse().unwrap())
            .upstream_proxy_protocol()
            .main_cf("smtpd_banner", "$myhostname ready")
            .inet_service("1", "postscreen")
            .master_cf("smtpd     pass  -       -       n       -       -       smtpd");
        let main = config.main_cf_text(Path::new("/scratch"), (65534, 65534));
        assert_eq!(main.matches("smtpd_banner =").count(), 1);
        assert!(main.contains("smtpd_banner = $myhostname ready\n"));
        assert!(main.contains("smtpd_upstream_proxy_protocol = haproxy\n"));
        assert!(main.contains("inet_interfaces = 127.0.0.1\n"));
        assert!(main.contains("queue_directory = /scratch/spool\n"));
        assert!(main.contains("virtual_uid_maps = static:65534\n"));
        let master = config.master_cf_text();
        assert!(
            master.starts_with(
                "10025     inet  n       -       n       -       1       postscreen\n"
            )
        );
        assert!(
            master.ends_with("smtpd     pass  -       -       n       -       -       smtpd\n")
        );
    }

    #[test]
    fn a_second_listener_binds_its_own_address() {
        let config = PostfixConfig::new("127.0.0.1:10025".parse().unwrap()).inet_listener(
            "10.251.3.1:28".parse().unwrap(),
            "1",
            "postscreen",
        );
        let master = config.master_cf_text();
        assert!(
            master.starts_with("10025     inet  n       -       n       -       -       smtpd\n")
        );
        assert!(
            master.ends_with(
                "10.251.3.1:28 inet  n       -       n       -       1       postscreen\n"
            )
        );
    }
}
