//! The kernel relay: both sockets of a pair in the sockhash whose stream verdict program
//! moves each one's input straight out of the other, while the daemon watches only for the
//! end and drains what the kernel redirected before shutting a write half.
//!
//! The redirect has no backpressure: the program takes the data off the sending socket, whose
//! window reopens, and queues it for the target, charged to no socket, so a sender before a
//! peer that stopped reading would make the kernel queue without bound. So each socket has a
//! credit, the bytes the program may redirect from it in all, which the daemon keeps at what
//! the target took plus [`BACKLOG_LIMIT`] (while bytes move the watch wakes it for input, at
//! most every [`BACKLOG_CHECK`]). Data past the credit stays on its socket, and so does
//! everything after it; the daemon then waits until the targets took what was queued for
//! them, and relays the rest of the connection in userspace, where each socket's receive
//! buffer holds its sender back.

use std::{
    io::{self, Read as _, Write as _},
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    time::Duration,
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpStream,
    time::Instant,
};

use super::{RelayLimits, Relayed, half_close_error, idle_error, userspace};
use crate::kernel::relay::KernelRelay;

/// How long the daemon waits for bytes the kernel redirected to reach a socket before it
/// shuts that socket's write half anyway (a peer that stopped reading holds them back).
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How often the daemon yields its CPU to the kernel's sending thread before it waits for
/// bytes in steps of a millisecond (each yield is a few microseconds when nobody else runs).
const DRAIN_YIELDS: u32 = 32;
/// How often, at most, the daemon looks whether bytes moved (a tenth of the idle limit,
/// within these bounds): the kernel moves them without telling it.
const IDLE_CHECK_MIN: Duration = Duration::from_millis(50);
const IDLE_CHECK_MAX: Duration = Duration::from_secs(10);
/// Bytes read at once from a socket that still holds data of its own.
const FORWARD_CHUNK: usize = 16 * 1024;
/// Bytes the kernel may hold redirected to a socket that has not taken them (its send buffer
/// is full: its peer reads slower than the sender sends, or not at all). Past it the
/// connection goes on in userspace.
pub(crate) const BACKLOG_LIMIT: u64 = 4 * 1024 * 1024;
/// While bytes move, how often at most the daemon renews the credits: a pair whose targets
/// keep up but take more than [`BACKLOG_LIMIT`] in this time goes to userspace too.
const BACKLOG_CHECK: Duration = Duration::from_millis(10);

/// What the relay needs to know of a socket when it enters the maps.
#[derive(Clone, Copy)]
struct SocketId {
    cookie: u64,
    /// What the socket had taken (sent and queued) by then.
    base: u64,
}

impl SocketId {
    fn of(fd: RawFd) -> Option<Self> {
        Some(Self {
            cookie: socket_cookie(fd).ok()?,
            base: taken(fd)?,
        })
    }
}

/// Takes a pair's peer entries out of the map however its relay ends (cancelled included).
/// Its sockets leave the sockhash by themselves when they are closed, before this runs.
struct PairGuard<'a> {
    kernel: &'a KernelRelay,
    cookies: [u64; 2],
}

impl Drop for PairGuard<'_> {
    fn drop(&mut self) {
        self.kernel.forget_pair(self.cookies[0], self.cookies[1]);
    }
}

/// One socket of a pair in the kernel relay, out of the runtime's reach: [`Watch`] says when
/// it needs the daemon.
struct Side {
    socket: std::net::TcpStream,
    id: SocketId,
    /// Bytes the daemon forwarded out of this socket since it entered the map (what the
    /// other one held).
    written: u64,
    /// Bytes the daemon read from this socket and forwarded to the other.
    forwarded: u64,
    /// Bytes the program redirected from this socket, counted when its input ended.
    redirected: u64,
    /// Its input has not ended.
    reading: bool,
}

impl Side {
    fn new(stream: TcpStream, id: SocketId) -> io::Result<Self> {
        // Leaves the runtime's watch (which includes input); the socket stays non-blocking.
        let socket = stream.into_std()?;
        Ok(Self {
            socket,
            id,
            written: 0,
            forwarded: 0,
            redirected: 0,
            reading: true,
        })
    }

    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// Which side an event of the [`Watch`] is about.
const CLIENT: u64 = 0;
const BACKEND: u64 = 1;

/// An epoll instance that watches both sockets of a pair for their end and for errors, and
/// not for input: it becomes readable, and wakes the daemon, only when a side ends or fails.
struct Watch {
    epoll: AsyncFd<OwnedFd>,
}

impl Watch {
    fn new(client: &Side, backend: &Side) -> io::Result<Self> {
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just created, owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        watch_end(&epoll, client.fd(), CLIENT)?;
        watch_end(&epoll, backend.fd(), BACKEND)?;
        // SAFETY: the AsyncFd owns the epoll instance, whose descriptor stays open and the
        // same for as long as it does.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { epoll })
    }

    /// Waits until a side ended or failed, or a socket was signalled for input; returns which
    /// sides ended (client, backend), neither for input.
    async fn ended(&self) -> io::Result<(bool, bool)> {
        const END: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        loop {
            let mut ready = self.epoll.readable().await?;
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
            // SAFETY: room for two events, as the call is told; a timeout of 0 never blocks.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 2, 0) };
            match usize::try_from(n) {
                // The kernel wakes a socket's readers for data the program took away: no
                // event is left, but bytes moved.
                Ok(0) => {
                    ready.clear_ready();
                    return Ok((false, false));
                }
                Ok(n) => {
                    let got = |side| {
                        events[..n]
                            .iter()
                            .any(|e| e.u64 == side && e.events & END != 0)
                    };
                    return Ok((got(CLIENT), got(BACKEND)));
                }
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// Adds `fd` to `epoll`, edge-triggered, for its end of input (errors and hang-ups are
/// always reported) and for input, which wakes the daemon at each segment that arrives (the
/// relay then leaves the watch alone for [`BACKLOG_CHECK`]): being edge-triggered, it costs
/// nothing while no byte moves.
fn watch_end(epoll: &OwnedFd, fd: RawFd, side: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLRDHUP | libc::EPOLLET | libc::EPOLLIN) as u32,
        u64: side,
    };
    // SAFETY: both descriptors are open and the event outlives the call.
    let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A connection whose bytes the kernel moves; the daemon forwards what the sockets held
/// before, and ends the pair.
struct KernelPair<'a> {
    kernel: &'a KernelRelay,
    client: Side,
    backend: Side,
}

/// How a pair's time in the kernel ended.
enum Kernel {
    /// Both directions ended.
    Ended,
    /// A target stopped taking what the program redirected to it: the rest goes through
    /// userspace.
    Backlogged,
}

impl KernelPair<'_> {
    /// Forwards what the sockets held at the hand-off, then sleeps until a side ends or
    /// fails, and passes each end on; every tenth of the idle limit it looks whether bytes
    /// moved, and ends the pair when none did for the whole limit. While bytes move it looks,
    /// at most every [`BACKLOG_CHECK`], whether a target is [`BACKLOG_LIMIT`] behind.
    async fn relay(&mut self, watch: &Watch, limits: RelayLimits) -> io::Result<Kernel> {
        let mut buf = vec![0u8; FORWARD_CHUNK];
        let kernel = self.kernel;
        let (client, backend) = (&mut self.client, &mut self.backend);
        drain(kernel, client, backend, &mut buf).await?;
        drain(kernel, backend, client, &mut buf).await?;
        let check_every = (limits.idle / 10).clamp(IDLE_CHECK_MIN, IDLE_CHECK_MAX);
        let mut moved = (traffic(client.fd(), backend.fd()), Instant::now());
        let mut half_closed: Option<Instant> = None;
        // After a wake for input, the watch is left alone until this.
        let mut input_again: Option<Instant> = None;
        while client.reading || backend.reading {
            if half_closed.is_none() && (client.reading != backend.reading) {
                half_closed = Some(Instant::now() + limits.half_close);
            }
            let check = (Instant::now() + check_every)
                .min(half_closed.unwrap_or(moved.1 + limits.idle))
                .min(input_again.unwrap_or(moved.1 + limits.idle));
            tokio::select! {
                ended = watch.ended(), if input_again.is_none() => {
                    let (client_ended, backend_ended) = ended?;
                    if stopped(kernel, client) || stopped(kernel, backend) {
                        return Ok(Kernel::Backlogged);
                    }
                    if client_ended {
                        drain(kernel, client, backend, &mut buf).await?;
                    }
                    if backend_ended {
                        drain(kernel, backend, client, &mut buf).await?;
                    }
                    if !client_ended && !backend_ended {
                        renew_credits(kernel, client, backend);
                        input_again = Some(Instant::now() + BACKLOG_CHECK);
                    }
                }
                () = tokio::time::sleep_until(check) => {
                    let now = Instant::now();
                    if half_closed.is_some_and(|at| now >= at) {
                        return Err(half_close_error(limits));
                    }
                    if stopped(kernel, client) || stopped(kernel, backend) {
                        return Ok(Kernel::Backlogged);
                    }
                    renew_credits(kernel, client, backend);
                    if input_again.is_some_and(|at| now >= at) {
                        input_again = None;
                    }
                    let seen = traffic(client.fd(), backend.fd());
                    if seen != moved.0 {
                        moved = (seen, now);
                    } else if now >= moved.1 + limits.idle {
                        return Err(idle_error(limits));
                    }
                }
            }
        }
        Ok(Kernel::Ended)
    }

    /// The pair is paused: waits until each target took every byte the program redirected
    /// to it, so that what the daemon copies from now on comes after them. The idle limit
    /// runs meanwhile: a target that never reads again ends the connection.
    async fn drain_backlog(&self, limits: RelayLimits) -> io::Result<()> {
        // A run of the program that read a credit before it was taken away may still be
        // redirecting: it is over within microseconds, and its count is read after it.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (client, backend) = (&self.client, &self.backend);
        let mut moved = (traffic(client.fd(), backend.fd()), Instant::now());
        let mut wait = Duration::from_millis(1);
        loop {
            let behind = [
                behind(self.kernel, client, backend),
                behind(self.kernel, backend, client),
            ];
            if behind.contains(&None) {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "a relayed socket closed while the kernel held bytes for it",
                ));
            }
            if behind == [Some(0), Some(0)] {
                return Ok(());
            }
            let now = Instant::now();
            let seen = traffic(client.fd(), backend.fd());
            if seen != moved.0 {
                moved = (seen, now);
            } else if now >= moved.1 + limits.idle {
                return Err(idle_error(limits));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(IDLE_CHECK_MAX.min(limits.idle / 10).max(IDLE_CHECK_MIN));
        }
    }
}

/// Bytes the program redirected from `from` that `to` has not taken yet; `None` when `to`
/// is closed.
fn behind(kernel: &KernelRelay, from: &Side, to: &Side) -> Option<u64> {
    let due = to.id.base + to.written + kernel.redirected(from.id.cookie);
    taken(to.fd()).map(|now| due.saturating_sub(now))
}

/// Whether the program stopped redirecting `side`'s input: it would have passed its credit.
fn stopped(kernel: &KernelRelay, side: &Side) -> bool {
    kernel
        .peer(side.id.cookie)
        .is_some_and(|peer| peer.stopped != 0)
}

/// Lets the program redirect from each socket what its target took plus [`BACKLOG_LIMIT`].
fn renew_credits(kernel: &KernelRelay, client: &Side, backend: &Side) {
    for (from, to) in [(client, backend), (backend, client)] {
        if let Some(now) = taken(to.fd()) {
            let took = now.saturating_sub(to.id.base + to.written);
            // A failed update leaves the credit lower, never higher: the pair goes to
            // userspace sooner.
            let _ = kernel.set_credit(from.id.cookie, took + BACKLOG_LIMIT);
        }
    }
}

/// What the pair's sockets have received and had acknowledged so far: it changes whenever a
/// byte moves either way, whoever moved it.
fn traffic(client: RawFd, backend: RawFd) -> Option<[u64; 4]> {
    let (c, b) = (tcp_info(client)?, tcp_info(backend)?);
    Some([
        c.tcpi_bytes_received,
        c.tcpi_bytes_acked,
        b.tcpi_bytes_received,
        b.tcpi_bytes_acked,
    ])
}

/// Reads what the kernel left on `from` (data of its own, or its end) and passes it on to
/// `to`, until nothing more is there.
///
/// A read can fail with `EPIPE` although the input is fine: that is the kernel reporting
/// that it could not send into `from` (it tries so for the empty segment that carries the
/// peer's end, too, after the bytes, which the redirect count covers). Reading takes the
/// report away, so the socket is read once more; a real failure shows again.
async fn drain(
    kernel: &KernelRelay,
    from: &mut Side,
    to: &mut Side,
    buf: &mut [u8],
) -> io::Result<()> {
    let mut send_failure_seen = false;
    while from.reading {
        match from.socket.read(buf) {
            Ok(0) => {
                from.reading = false;
                end_output(kernel, from, to).await;
            }
            Ok(n) => {
                caught_up(kernel, from, to).await?;
                forward(from, to, &buf[..n]).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe && !send_failure_seen => {
                send_failure_seen = true;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Data the program left on `from` because it stopped (its credit ran out) comes after what
/// it redirected: waits, at most [`DRAIN_LIMIT`], until `to` took all of that.
async fn caught_up(kernel: &KernelRelay, from: &Side, to: &Side) -> io::Result<()> {
    if !stopped(kernel, from) {
        return Ok(());
    }
    let deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        match behind(kernel, from, to) {
            Some(0) => return Ok(()),
            Some(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a relayed socket stopped taking the bytes the kernel holds for it",
                ));
            }
        }
    }
}

/// Writes bytes the `from` socket held to `to`. Only the bytes queued at the hand-off take
/// this way (the MTA's greeting), so the socket is not watched for room: when it has none,
/// the daemon retries every millisecond, for at most [`DRAIN_LIMIT`].
async fn forward(from: &mut Side, to: &mut Side, bytes: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut rest = bytes;
    while !rest.is_empty() {
        match (&to.socket).write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    from.forwarded += bytes.len() as u64;
    to.written += bytes.len() as u64;
    Ok(())
}

/// `from` ended its output: once `to` has taken every byte of `from`, `to`'s write half is
/// shut, passing the end on.
///
/// The kernel sends redirected bytes from a worker thread of the CPU that received them,
/// usually within microseconds, and tells no one when it is done. So the daemon first gives
/// up its CPU a few times (the worker may be waiting for it), and only then checks every
/// millisecond.
async fn end_output(kernel: &KernelRelay, from: &mut Side, to: &mut Side) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut yields = 0;
    // The program saw every byte before the end it passed on, so the count is final.
    from.redirected = kernel.redirected(from.id.cookie);
    let due = to.id.base + to.written + from.redirected;
    loop {
        match taken(to.fd()) {
            Some(now) if now < due && Instant::now() < deadline => {}
            Some(now) if now < due => {
                tracing::debug!(
                    missing = due - now,
                    "relay: shutting a socket that has not taken every byte"
                );
                break;
            }
            _ => break,
        }
        if yields < DRAIN_YIELDS {
            yields += 1;
            std::thread::yield_now();
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // The peer may be gone already; the end is passed on as far as it can be.
    let _ = to.socket.shutdown(std::net::Shutdown::Write);
}

/// Whether the socket has input waiting (without taking it).
fn input_pending(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer that outlives the call.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// `SO_COOKIE`: the socket's cookie, the relay maps' key (Linux 4.19; not in every libc).
const SO_COOKIE: libc::c_int = 57;

/// The socket's cookie, the key the program finds it by.
pub(crate) fn socket_cookie(fd: RawFd) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the option value is a u64 and `len` says so.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Every byte a TCP socket has taken for sending so far: acknowledged by the peer, or still
/// in its send queue. `None` when the socket is closed or cannot be asked.
pub(crate) fn taken(fd: RawFd) -> Option<u64> {
    // An acknowledgement between the two calls would make the sum wrong; the count of
    // acknowledged bytes read before and after tells.
    for _ in 0..16 {
        let (state, before) = acked(fd)?;
        if state == TCP_CLOSE {
            return None;
        }
        let queued = send_queue(fd)?;
        let (_, after) = acked(fd)?;
        if before == after {
            return Some(before + queued);
        }
    }
    None
}

/// `TCP_CLOSE` of the kernel's TCP states (`tcpi_state`): the socket is gone.
const TCP_CLOSE: u8 = 7;

/// The socket's state and `tcpi_bytes_acked`.
fn acked(fd: RawFd) -> Option<(u8, u64)> {
    tcp_info(fd).map(|info| (info.tcpi_state, info.tcpi_bytes_acked))
}

/// The socket's `TCP_INFO`, when the kernel gives it whole (up to `tcpi_bytes_received`).
fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the option value is a tcp_info of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    let complete = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + size_of::<u64>();
    (rc == 0 && len as usize >= complete).then_some(info)
}

/// Bytes in the socket's send queue, sent or not, not yet acknowledged (`SIOCOUTQ`).
fn send_queue(fd: RawFd) -> Option<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut queued) };
    (rc == 0).then(|| u64::try_from(queued).unwrap_or(0))
}

/// Relays through the kernel: falls back to the userspace copy for a client that already
/// sent something, when the relay is full, or when the kernel refuses the pair.
pub(crate) async fn run(
    kernel: &KernelRelay,
    client: TcpStream,
    backend: TcpStream,
    limits: RelayLimits,
) -> io::Result<Relayed> {
    if input_pending(client.as_raw_fd()) {
        return userspace::run(client, backend, limits).await;
    }
    let Some(slot) = kernel.reserve() else {
        // Full: this one is copied in userspace, the relay stays bounded.
        return userspace::run(client, backend, limits).await;
    };
    let (Some(client_id), Some(backend_id)) = (
        SocketId::of(client.as_raw_fd()),
        SocketId::of(backend.as_raw_fd()),
    ) else {
        // Not sockets the kernel can describe: nothing to relay in the kernel.
        return userspace::run(client, backend, limits).await;
    };
    if let Err(e) = kernel.insert_pair(
        &slot,
        (client_id.cookie, &client),
        (backend_id.cookie, &backend),
        BACKLOG_LIMIT,
    ) {
        tracing::debug!("kernel relay refused a connection, relaying in userspace: {e}");
        return userspace::run(client, backend, limits).await;
    }
    // Declared before the pair, so dropped after it: the sockets are closed by then.
    let _in_maps = PairGuard {
        kernel,
        cookies: [client_id.cookie, backend_id.cookie],
    };
    let mut pair = KernelPair {
        kernel,
        client: Side::new(client, client_id)?,
        backend: Side::new(backend, backend_id)?,
    };
    let watch = Watch::new(&pair.client, &pair.backend)?;
    match pair.relay(&watch, limits).await? {
        Kernel::Ended => Ok(Relayed {
            up: pair.client.forwarded + pair.client.redirected,
            down: pair.backend.forwarded + pair.backend.redirected,
            in_kernel: true,
        }),
        Kernel::Backlogged => {
            drop(watch);
            // The other direction stops too: from now on the daemon moves every byte.
            for cookie in [client_id.cookie, backend_id.cookie] {
                kernel.set_credit(cookie, 0).map_err(io::Error::other)?;
            }
            tracing::debug!("relay: a target fell behind, relaying the rest in userspace");
            pair.drain_backlog(limits).await?;
            let KernelPair {
                client, backend, ..
            } = pair;
            let kernel_up = client.forwarded + kernel.redirected(client.id.cookie);
            let kernel_down = backend.forwarded + kernel.redirected(backend.id.cookie);
            // The sockets stay in the sockhash, paused: leaving it would drop what the
            // program left on them.
            let rest = userspace::run(
                TcpStream::from_std(client.socket)?,
                TcpStream::from_std(backend.socket)?,
                limits,
            )
            .await?;
            Ok(Relayed {
                up: kernel_up + rest.up,
                down: kernel_down + rest.down,
                in_kernel: true,
            })
        }
    }
}
#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::loopback::tcp_pair;

    #[tokio::test]
    async fn a_socket_counts_what_it_took_whether_acknowledged_or_queued() {
        let (mut a, mut b) = tcp_pair().await;
        let before = taken(a.as_raw_fd()).unwrap();
        a.write_all(&[7u8; 100_000]).await.unwrap();
        // Queued or acknowledged, it is counted at once.
        assert_eq!(taken(a.as_raw_fd()).unwrap(), before + 100_000);
        let mut got = vec![0u8; 100_000];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(taken(a.as_raw_fd()).unwrap(), before + 100_000);
    }

    #[tokio::test]
    async fn sockets_have_distinct_cookies() {
        let (a, b) = tcp_pair().await;
        let (ca, cb) = (
            socket_cookie(a.as_raw_fd()).unwrap(),
            socket_cookie(b.as_raw_fd()).unwrap(),
        );
        assert_ne!(ca, 0);
        assert_ne!(ca, cb);
        assert_eq!(socket_cookie(a.as_raw_fd()).unwrap(), ca);
    }

    #[tokio::test]
    async fn pending_input_is_seen_and_left_in_place() {
        let (mut a, mut b) = tcp_pair().await;
        assert!(!input_pending(b.as_raw_fd()));
        a.write_all(b"EHLO early\r\n").await.unwrap();
        b.readable().await.unwrap();
        assert!(input_pending(b.as_raw_fd()));
        let mut got = [0u8; 12];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"EHLO early\r\n");
    }
}
