//! The mail log: postscreen's log lines, word for word, to stderr or to syslog (facility
//! `mail`), under a configurable identity so that pflogsumm, fail2ban and log exporters keep
//! working (`postfix/postscreen` makes the lines indistinguishable from postscreen's).
//!
//! No thread that logs ever waits for the log: a line goes into a bounded queue to one writer
//! thread, which alone blocks on a full pipe or a stalled syslog daemon, and reconnects to a
//! restarted one; a line the queue has no room for is counted, and the count logged once the
//! writer catches up. Operational messages (start-up, kernel attachment) go through `tracing`
//! instead, whose stderr output takes a queue of the same kind ([`queued_stderr`]).
//!
//! Delays in the lines are written as Postfix writes them ([`DelayDisplay`]); clients as
//! [`crate::address::ClientAddr`] writes them.

use std::{
    fmt::{self, Write as _},
    io::{self, Write as _},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::escape::truncate_at_char;

/// Where the postscreen-style log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogTarget {
    Stderr,
    Syslog,
}

/// Facility `mail` (RFC 5424 §6.2.1).
const FACILITY_MAIL: u8 = 2;
const SEVERITY_WARNING: u8 = 4;
const SEVERITY_INFO: u8 = 6;
/// Longest line sent; syslog daemons truncate around here anyway and a client's text must
/// not make a line unbounded.
const MAX_LINE: usize = 2048;
/// Room for a usual line with its syslog header (postscreen's lines are under 200 bytes but
/// for a client's quoted text), so that writing one seldom grows the buffer.
const LINE_CAPACITY: usize = 256;
/// Lines waiting for the log writer. A connection never waits for the log: past this, a line
/// is dropped and counted, and the writer says how many when it catches up. At most
/// `MAX_LINE` bytes each, the queue holds a few megabytes at worst.
pub(crate) const LOG_QUEUE_LINES: usize = 1024;
/// The syslog writer's first wait before it reconnects to a socket that refused a line, and
/// its longest: a restarted syslog daemon is written to again within a second of its return.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How one line looks: the identity and, for syslog, the priority.
#[derive(Clone, Debug)]
struct LineFormat {
    ident: String,
    pid: u32,
    syslog: bool,
}

impl LineFormat {
    fn line(&self, severity: u8, prefix: &str, message: impl fmt::Display) -> String {
        // The whole line is written into one buffer sized for the usual line: every
        // connection logs several, and building each in strings that grew and were copied
        // took 4% of the daemon's time in a flood of first contacts.
        let mut line = String::with_capacity(LINE_CAPACITY);
        if self.syslog {
            // RFC 3164 without timestamp and host name: the local syslog daemon adds them.
            let _ = write!(line, "<{}>", FACILITY_MAIL * 8 + severity);
        }
        let _ = write!(line, "{}[{}]: ", self.ident, self.pid);
        let text_start = line.len();
        line.push_str(prefix);
        let _ = write!(line, "{message}");
        truncate_at_char(&mut line, text_start + MAX_LINE);
        if !self.syslog {
            line.push('\n');
        }
        line
    }
}

/// What the writer is given: a line, or a request to say when every line before it is
/// written.
enum Entry {
    Line(String),
    Flush(mpsc::Sender<()>),
}

/// The one place lines are written: stderr, or the syslog socket, reconnected after a
/// restart of the syslog daemon.
enum Sink {
    Stderr,
    Syslog {
        path: PathBuf,
        socket: Option<UnixDatagram>,
    },
}

impl Sink {
    /// Writes `line`, waiting as long as it takes: only the writer thread waits here. A
    /// syslog socket that refuses the line is reconnected, with a growing pause between
    /// tries, and the line is sent again; the lines behind it wait in the queue meanwhile.
    fn write(&mut self, line: &str) {
        match self {
            // A line stderr cannot take (a closed pipe) is lost; the daemon goes on.
            Sink::Stderr => {
                let _ = io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Syslog { path, socket } => {
                let mut backoff = RECONNECT_BACKOFF_MIN;
                loop {
                    let sent = match socket {
                        Some(s) => s.send(line.as_bytes()),
                        None => Err(io::ErrorKind::NotConnected.into()),
                    };
                    match sent {
                        Ok(_) => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // Too long for this syslog daemon however often it is sent.
                        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return,
                        Err(_) => {}
                    }
                    *socket = None;
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    *socket = connect_syslog(path).ok();
                }
            }
        }
    }
}

/// A datagram socket connected to the syslog daemon's. It blocks: only the writer uses it.
fn connect_syslog(path: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(path)?;
    Ok(socket)
}

/// The writer thread: takes lines off the queue in order and writes them; after a write, the
/// lines dropped since the last one are reported in a warning of their own.
fn run_writer(
    mut sink: Sink,
    entries: Receiver<Entry>,
    queue_lines: usize,
    dropped: Arc<AtomicU64>,
    format: LineFormat,
) {
    while let Ok(entry) = entries.recv() {
        match entry {
            Entry::Line(line) => {
                sink.write(&line);
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    sink.write(&format.line(
                        SEVERITY_WARNING,
                        "warning: ",
                        format_args!(
                            "mail log: {lost} lines dropped: the log writer fell behind (its \
                             queue of {queue_lines} lines was full)"
                        ),
                    ));
                }
            }
            Entry::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// The mail log.
pub(crate) struct MailLog {
    format: LineFormat,
    entries: SyncSender<Entry>,
    /// Lines dropped because the queue was full, not yet reported.
    dropped: Arc<AtomicU64>,
    /// Every line dropped since the log was opened.
    dropped_total: AtomicU64,
}

impl MailLog {
    /// Opens the log and starts its writer. The syslog socket at `syslog_socket` is connected
    /// now, so that a missing syslog daemon stops the start with a clear error; the writer
    /// reconnects to the same path, which needs no privileges, after a restart of the syslog
    /// daemon.
    pub(crate) fn open(target: LogTarget, ident: &str, syslog_socket: &Path) -> io::Result<Self> {
        let (sink, syslog) = match target {
            LogTarget::Stderr => (Sink::Stderr, false),
            LogTarget::Syslog => (
                Sink::Syslog {
                    path: syslog_socket.to_path_buf(),
                    socket: Some(connect_syslog(syslog_socket)?),
                },
                true,
            ),
        };
        let format = LineFormat {
            ident: ident.to_string(),
            pid: std::process::id(),
            syslog,
        };
        Self::start(sink, format, LOG_QUEUE_LINES)
    }

    fn start(sink: Sink, format: LineFormat, queue_lines: usize) -> io::Result<Self> {
        let (entries, queue) = mpsc::sync_channel(queue_lines);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = Arc::clone(&dropped);
        let writer_format = format.clone();
        thread::Builder::new()
            .name("mail-log".into())
            .spawn(move || run_writer(sink, queue, queue_lines, writer_dropped, writer_format))?;
        Ok(Self {
            format,
            entries,
            dropped,
            dropped_total: AtomicU64::new(0),
        })
    }

    /// A log that writes to stderr under `ident` (tests, foreground runs).
    #[cfg(test)]
    pub(crate) fn stderr(ident: &str) -> Self {
        let format = LineFormat {
            ident: ident.to_string(),
            pid: std::process::id(),
            syslog: false,
        };
        Self::start(Sink::Stderr, format, LOG_QUEUE_LINES).expect("starting the log writer")
    }

    /// An informational line, such as `CONNECT from [a]:p to [b]:q`.
    pub(crate) fn info(&self, message: impl fmt::Display) {
        self.write(SEVERITY_INFO, "", message);
    }

    /// A warning, prefixed `warning: ` as Postfix does.
    pub(crate) fn warning(&self, message: impl fmt::Display) {
        self.write(SEVERITY_WARNING, "warning: ", message);
    }

    /// Queues the line; never waits. A line the queue has no room for is counted.
    fn write(&self, severity: u8, prefix: &str, message: impl fmt::Display) {
        let line = self.format.line(severity, prefix, message);
        match self.entries.try_send(Entry::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.dropped_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Every line dropped since the log was opened.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Waits up to `limit` for the lines queued so far to be written (at exit); says whether
    /// they were.
    pub(crate) fn flush(&self, limit: Duration) -> bool {
        flush_queue(&self.entries, limit)
    }
}

/// The process's operational messages (`tracing`) on stderr, through a queue of their own to
/// a writer thread as the mail log's lines go: a pipe nobody reads stalls that thread, never a
/// runtime thread. `tracing_subscriber::fmt().with_writer(queued_stderr)`.
pub fn queued_stderr() -> QueuedStderr {
    QueuedStderr {
        event: Vec::with_capacity(LINE_CAPACITY),
    }
}

/// One message for stderr, queued when it is dropped (see [`queued_stderr`]).
pub struct QueuedStderr {
    event: Vec<u8>,
}

/// The queue of [`queued_stderr`], started with the first message; `None` when its thread
/// could not be started (then messages are written where they are made, as before).
static STDERR_QUEUE: std::sync::OnceLock<Option<(SyncSender<Entry>, Arc<AtomicU64>)>> =
    std::sync::OnceLock::new();

/// Waits up to `limit` for the messages of [`queued_stderr`] queued so far to be written: the
/// binary calls it before it exits, which would lose them.
pub fn flush_stderr(limit: Duration) {
    let Some(Some((entries, _))) = STDERR_QUEUE.get() else {
        return;
    };
    flush_queue(entries, limit);
}

/// Waits up to `limit` for the writer of `entries` to write every line queued before this
/// call; says whether it did.
fn flush_queue(entries: &SyncSender<Entry>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let (done, written) = mpsc::channel();
    let mut request = Entry::Flush(done);
    loop {
        match entries.try_send(request) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                request = back;
                thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return false,
        }
    }
    written
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_ok()
}

impl io::Write for QueuedStderr {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // A message is bounded as a mail log line is; the rest of a longer one is dropped.
        let room = (MAX_LINE * 2).saturating_sub(self.event.len());
        self.event
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedStderr {
    fn drop(&mut self) {
        if self.event.is_empty() {
            return;
        }
        let queue = STDERR_QUEUE.get_or_init(|| {
            let (entries, queue) = mpsc::sync_channel(LOG_QUEUE_LINES);
            let dropped = Arc::new(AtomicU64::new(0));
            let writer_dropped = Arc::clone(&dropped);
            let format = LineFormat {
                ident: "smtp-screen".into(),
                pid: std::process::id(),
                syslog: false,
            };
            thread::Builder::new()
                .name("stderr-log".into())
                .spawn(move || {
                    run_writer(Sink::Stderr, queue, LOG_QUEUE_LINES, writer_dropped, format)
                })
                .ok()
                .map(|_| (entries, dropped))
        });
        let text = String::from_utf8_lossy(&self.event).into_owned();
        match queue {
            Some((entries, dropped)) => {
                if entries.try_send(Entry::Line(text)).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                let _ = io::stderr().lock().write_all(text.as_bytes());
            }
        }
    }
}

/// An elapsed time as Postfix logs delays (`format_tv` with two significant digits and at
/// most two decimals): `0.24`, `1.2`, `3`, `17`.
pub(crate) struct DelayDisplay(pub(crate) Duration);

impl fmt::Display for DelayDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MILLION: u64 = 1_000_000;
        const SIGNIFICANT: u64 = 100; // 10^2 significant digits
        let mut sec = self.0.as_secs();
        let mut usec = u64::from(self.0.subsec_micros());
        // Resolution in microseconds: 0.01 s below one second, fewer decimals above.
        let mut resolution = MILLION / 100;
        if sec > 0 {
            let mut n = 1;
            while sec >= n && n <= SIGNIFICANT / 10 {
                n *= 10;
            }
            resolution = (MILLION / SIGNIFICANT) * n;
        }
        usec += resolution / 2;
        if usec >= MILLION {
            sec += 1;
            usec -= MILLION;
        }
        write!(f, "{sec}")?;
        if usec >= resolution {
            f.write_str(".")?;
            let (mut rem, mut n) = (usec, MILLION / 10);
            while rem >= resolution && n > 0 {
                write!(f, "{}", rem / n)?;
                rem %= n;
                n /= 10;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log that sends to a datagram socket of the test's own, as to syslog, and that
    /// socket's receiving end; the directory holding the socket goes when it drops.
    struct Syslog {
        log: MailLog,
        server: Option<UnixDatagram>,
        path: PathBuf,
        dir: PathBuf,
    }

    impl Syslog {
        fn new(tag: &str) -> Self {
            Self::with_queue(tag, LOG_QUEUE_LINES)
        }

        fn with_queue(tag: &str, queue_lines: usize) -> Self {
            let dir = std::env::temp_dir().join(format!("maillog-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("log.sock");
            let _ = std::fs::remove_file(&path);
            let server = UnixDatagram::bind(&path).unwrap();
            let sink = Sink::Syslog {
                path: path.clone(),
                socket: Some(connect_syslog(&path).unwrap()),
            };
            let format = LineFormat {
                ident: "postfix/postscreen".into(),
                pid: 42,
                syslog: true,
            };
            let log = MailLog::start(sink, format, queue_lines).unwrap();
            Self {
                log,
                server: Some(server),
                path,
                dir,
            }
        }

        /// The syslog daemon stops: its socket is closed and removed.
        fn stop(&mut self) {
            self.server = None;
            std::fs::remove_file(&self.path).unwrap();
        }

        /// The syslog daemon starts again, on a new socket at the same path.
        fn restart(&mut self) {
            self.server = Some(UnixDatagram::bind(&self.path).unwrap());
        }

        /// The next datagram the log sent, within a few seconds.
        fn next_line(&self) -> String {
            let server = self.server.as_ref().expect("a running syslog daemon");
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = vec![0u8; 4 * MAX_LINE];
            let n = server.recv(&mut buf).expect("a line within 5s");
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    impl Drop for Syslog {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The syslog daemon restarts: the lines logged while it was away, and after, reach it
    /// in order once it is back.
    #[test]
    fn the_log_reconnects_after_syslog_restarts_and_loses_no_line() {
        let mut syslog = Syslog::new("restart");
        syslog.log.info("before");
        assert_eq!(syslog.next_line(), "<22>postfix/postscreen[42]: before");
        syslog.stop();
        for i in 0..10 {
            syslog.log.info(format_args!("while away {i}"));
        }
        thread::sleep(Duration::from_millis(200));
        syslog.restart();
        syslog.log.info("after");
        for i in 0..10 {
            assert_eq!(
                syslog.next_line(),
                format!("<22>postfix/postscreen[42]: while away {i}")
            );
        }
        assert_eq!(syslog.next_line(), "<22>postfix/postscreen[42]: after");
        assert_eq!(syslog.log.dropped(), 0);
    }

    /// While syslog is away the queue fills: the lines past it are dropped, counted, and
    /// reported once it is back; every line from then on arrives.
    #[test]
    fn lines_beyond_a_full_queue_are_counted_and_reported() {
        let mut syslog = Syslog::with_queue("full", 4);
        syslog.stop();
        for i in 0..20 {
            syslog.log.info(format_args!("line {i}"));
        }
        let dropped = syslog.log.dropped();
        assert!(
            (10..20).contains(&dropped),
            "{dropped} of 20 dropped by a queue of 4"
        );
        syslog.restart();
        // The count follows the first line written once the writer got going again.
        let warning = format!(
            "<20>postfix/postscreen[42]: warning: mail log: {dropped} lines dropped: the log \
             writer fell behind (its queue of 4 lines was full)"
        );
        let mut warned = false;
        let mut last = None;
        for _ in 0..=20 - dropped {
            let line = syslog.next_line();
            if line == warning {
                assert!(last.is_some() && !warned, "{line}");
                warned = true;
                continue;
            }
            let n: u64 = line
                .strip_prefix("<22>postfix/postscreen[42]: line ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{line:?}"));
            assert!(last.is_none_or(|last| n > last), "out of order: {line}");
            last = Some(n);
        }
        assert!(warned);
        syslog.log.info("back");
        assert_eq!(syslog.next_line(), "<22>postfix/postscreen[42]: back");
    }

    #[test]
    fn syslog_lines_carry_facility_mail_and_the_identity() {
        let syslog = Syslog::new("test");
        syslog
            .log
            .info("CONNECT from [192.0.2.1]:4000 to [192.0.2.25]:25");
        syslog.log.warning("haproxy read: time limit exceeded");
        assert_eq!(
            syslog.next_line(),
            "<22>postfix/postscreen[42]: CONNECT from [192.0.2.1]:4000 to [192.0.2.25]:25"
        );
        assert_eq!(
            syslog.next_line(),
            "<20>postfix/postscreen[42]: warning: haproxy read: time limit exceeded"
        );
    }

    #[test]
    fn a_long_message_is_cut_after_the_identity() {
        let syslog = Syslog::new("long");
        syslog.log.warning("x".repeat(3 * MAX_LINE));
        let header = "<20>postfix/postscreen[42]: ";
        let line = syslog.next_line();
        assert_eq!(line.len(), header.len() + MAX_LINE);
        assert!(line.starts_with(&format!("{header}warning: xxx")));
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let mut text = "é".repeat(2000);
        truncate_at_char(&mut text, MAX_LINE);
        assert!(text.len() <= MAX_LINE);
        assert!(text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn delays_are_formatted_like_postfix() {
        for (millis, text) in [
            (0, "0"),
            (4, "0"),
            (5, "0.01"),
            (240, "0.24"),
            (105, "0.11"),
            (100, "0.1"),
            (999, "1"),
            (1_200, "1.2"),
            (1_000, "1"),
            (3_000, "3"),
            (5_040, "5"),
            (9_960, "10"),
            (12_600, "13"),
            (300_000, "300"),
        ] {
            assert_eq!(
                DelayDisplay(Duration::from_millis(millis)).to_string(),
                text,
                "{millis} ms"
            );
        }
    }
}
