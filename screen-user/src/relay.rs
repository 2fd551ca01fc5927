//! The byte path between a handed-off client and the backend MTA (`handoff = "proxy"`).
//!
//! With the kernel relay (`relay = "kernel"`, or `auto` where the kernel allows it) both
//! sockets go into a sockhash whose stream verdict program sends each socket's input straight
//! out of the other: the message never enters userspace and the daemon only watches for the
//! end. Otherwise, or when the kernel relay is full, the daemon copies the bytes itself.
//!
//! The hand-off takes place between two SMTP turns: the client waits for the MTA's greeting
//! and the MTA greets once and then waits. The daemon holds no bytes of either side in
//! userspace at that point (the pregreet test only peeks; the teaser and the PROXY header are
//! already written), but the MTA's greeting may be queued on its socket before that socket
//! enters the map, and the kernel only redirects data that arrives afterwards. So after the
//! insertion the daemon reads whatever either socket still holds and forwards it: in a
//! lock-step protocol nothing newer can overtake it. A client that talked before the greeting
//! breaks the lock step; it is relayed in userspace, where one reader keeps every byte in
//! order.
//!
//! When one side ends its output, the other side's write half is shut only after every byte
//! the kernel redirected to it has entered that socket: the program counts what it
//! redirects, and the socket's sent-and-acknowledged plus queued bytes show what it took.

use std::{
    io::{self, Read as _, Write as _},
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpStream,
    time::Instant,
};

use crate::{
    config::RelayMode,
    handoff,
    kernel::relay::{KernelRelay, RelayError},
};

/// How long the daemon waits for bytes the kernel redirected to reach a socket before it
/// shuts that socket's write half anyway (a peer that stopped reading holds them back).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How often the daemon yields its CPU to the kernel's sending thread before it waits for
/// bytes in steps of a millisecond (each yield is a few microseconds when nobody else runs).
const DRAIN_YIELDS: u32 = 32;
/// How long one direction may go on after the other ended (an SMTP session ends with the
/// MTA's close after QUIT, and the client closes at once).
pub const HALF_CLOSE_LIMIT: Duration = Duration::from_secs(30);
/// Bytes read at once from a socket that still holds data of its own.
const FORWARD_CHUNK: usize = 16 * 1024;

/// Which relay moves the bytes of handed-off connections.
pub struct Relay {
    kernel: Option<KernelRelay>,
}

/// Bytes relayed client → backend and backend → client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relayed {
    pub up: u64,
    pub down: u64,
    /// The kernel moved them (apart from what the sockets held at the hand-off).
    pub in_kernel: bool,
}

impl Relay {
    /// The userspace relay only.
    pub fn userspace() -> Self {
        Self { kernel: None }
    }

    /// Sets up the relay `mode` asks for, with room for `max_pairs` connections in the
    /// kernel. Returns the relay and the line that says which one runs and why. `kernel`
    /// fails when the kernel relay cannot be loaded; `auto` falls back to userspace.
    pub fn start(mode: RelayMode, max_pairs: u32) -> Result<(Self, String), RelayError> {
        match mode {
            RelayMode::Userspace => Ok((
                Self::userspace(),
                "hand-off relay: userspace (relay = \"userspace\")".into(),
            )),
            RelayMode::Kernel => {
                let kernel = KernelRelay::load(max_pairs)?;
                Ok((Self::kernel(kernel), kernel_line(max_pairs)))
            }
            RelayMode::Auto => match KernelRelay::load(max_pairs) {
                Ok(kernel) => Ok((Self::kernel(kernel), kernel_line(max_pairs))),
                Err(e) => Ok((
                    Self::userspace(),
                    format!("hand-off relay: userspace (the kernel relay is unavailable: {e})"),
                )),
            },
        }
    }

    fn kernel(kernel: KernelRelay) -> Self {
        Self {
            kernel: Some(kernel),
        }
    }

    /// Whether connections go through the kernel relay (while it has room).
    pub fn is_kernel(&self) -> bool {
        self.kernel.is_some()
    }

    /// Relays until both directions are done or one side fails.
    pub async fn run(&self, client: TcpStream, backend: TcpStream) -> io::Result<Relayed> {
        let Some(kernel) = &self.kernel else {
            return userspace(client, backend).await;
        };
        if input_pending(client.as_raw_fd()) {
            return userspace(client, backend).await;
        }
        let Some(slot) = kernel.reserve() else {
            // Full: this one is copied in userspace, the relay stays bounded.
            return userspace(client, backend).await;
        };
        let (Some(client_id), Some(backend_id)) = (
            SocketId::of(client.as_raw_fd()),
            SocketId::of(backend.as_raw_fd()),
        ) else {
            // Not sockets the kernel can describe: nothing to relay in the kernel.
            return userspace(client, backend).await;
        };
        if let Err(e) = kernel.insert_pair(
            &slot,
            (client_id.cookie, &client),
            (backend_id.cookie, &backend),
        ) {
            tracing::debug!("kernel relay refused a connection, relaying in userspace: {e}");
            return userspace(client, backend).await;
        }
        let _in_maps = PairGuard {
            kernel,
            cookies: [client_id.cookie, backend_id.cookie],
        };
        let mut pair = KernelPair {
            kernel,
            client: Side::new(client, client_id)?,
            backend: Side::new(backend, backend_id)?,
        };
        pair.relay().await?;
        Ok(Relayed {
            up: pair.client.forwarded + kernel.redirected(client_id.cookie),
            down: pair.backend.forwarded + kernel.redirected(backend_id.cookie),
            in_kernel: true,
        })
    }
}

fn kernel_line(max_pairs: u32) -> String {
    format!("hand-off relay: kernel (sockhash stream verdict, up to {max_pairs} connections)")
}

async fn userspace(client: TcpStream, backend: TcpStream) -> io::Result<Relayed> {
    let (up, down) = handoff::relay(client, backend).await?;
    Ok(Relayed {
        up,
        down,
        in_kernel: false,
    })
}

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

/// Takes a pair out of the maps however its relay ends (cancelled included).
struct PairGuard<'a> {
    kernel: &'a KernelRelay,
    cookies: [u64; 2],
}

impl Drop for PairGuard<'_> {
    fn drop(&mut self) {
        self.kernel.remove_pair(self.cookies[0], self.cookies[1]);
    }
}

/// One socket of a pair in the kernel relay. It is watched for input only: the program's
/// redirects wake the socket's readers, and a watch for writability as well would turn each
/// of those into a wake-up of the daemon.
struct Side {
    socket: AsyncFd<std::net::TcpStream>,
    id: SocketId,
    /// Bytes the daemon forwarded out of this socket since it entered the map (what the
    /// other one held).
    written: u64,
    /// Bytes the daemon read from this socket and forwarded to the other.
    forwarded: u64,
    /// Its input has not ended.
    reading: bool,
}

impl Side {
    fn new(stream: TcpStream, id: SocketId) -> io::Result<Self> {
        // SAFETY: the AsyncFd owns the std socket, whose descriptor stays open and the same
        // for as long as it does.
        let socket =
            unsafe { AsyncFd::register_with_interest(stream.into_std()?, Interest::READABLE) }
                .map_err(io::Error::from)?;
        Ok(Self {
            socket,
            id,
            written: 0,
            forwarded: 0,
            reading: true,
        })
    }

    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// A connection whose bytes the kernel moves; the daemon forwards what the sockets held
/// before, and ends the pair.
struct KernelPair<'a> {
    kernel: &'a KernelRelay,
    client: Side,
    backend: Side,
}

/// What one look at a socket found.
enum Input {
    Data(usize),
    End,
}

impl KernelPair<'_> {
    async fn relay(&mut self) -> io::Result<()> {
        let mut client_buf = vec![0u8; FORWARD_CHUNK];
        let mut backend_buf = vec![0u8; FORWARD_CHUNK];
        let mut half_closed: Option<Instant> = None;
        while self.client.reading || self.backend.reading {
            let deadline = half_closed.unwrap_or_else(far_future);
            tokio::select! {
                input = read_some(&self.client.socket, &mut client_buf), if self.client.reading => {
                    match input? {
                        Input::Data(n) => {
                            forward(&mut self.client, &mut self.backend, &client_buf[..n]).await?
                        }
                        Input::End => {
                            self.client.reading = false;
                            end_output(self.kernel, &self.client, &mut self.backend).await;
                        }
                    }
                }
                input = read_some(&self.backend.socket, &mut backend_buf), if self.backend.reading => {
                    match input? {
                        Input::Data(n) => {
                            forward(&mut self.backend, &mut self.client, &backend_buf[..n]).await?
                        }
                        Input::End => {
                            self.backend.reading = false;
                            end_output(self.kernel, &self.backend, &mut self.client).await;
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline), if half_closed.is_some() => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("one direction still open {}s after the other ended", HALF_CLOSE_LIMIT.as_secs()),
                    ));
                }
            }
            if half_closed.is_none() && (self.client.reading != self.backend.reading) {
                half_closed = Some(Instant::now() + HALF_CLOSE_LIMIT);
            }
        }
        Ok(())
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// Waits for input the kernel left on the socket (or its end) and reads it.
async fn read_some(socket: &AsyncFd<std::net::TcpStream>, buf: &mut [u8]) -> io::Result<Input> {
    loop {
        let mut ready = socket.readable().await?;
        // Woken with nothing here (data the program redirected): wait again.
        if let Ok(read) = ready.try_io(|socket| socket.get_ref().read(buf)) {
            return read.map(|n| if n == 0 { Input::End } else { Input::Data(n) });
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
        match to.socket.get_ref().write(rest) {
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
async fn end_output(kernel: &KernelRelay, from: &Side, to: &mut Side) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut yields = 0;
    loop {
        let due = to.id.base + to.written + kernel.redirected(from.id.cookie);
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
    let _ = to.socket.get_ref().shutdown(std::net::Shutdown::Write);
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
pub fn socket_cookie(fd: RawFd) -> io::Result<u64> {
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
pub fn taken(fd: RawFd) -> Option<u64> {
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
    let complete = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received);
    (rc == 0 && len as usize >= complete).then_some((info.tcpi_state, info.tcpi_bytes_acked))
}

/// Bytes in the socket's send queue, sent or not, not yet acknowledged (`SIOCOUTQ`).
fn send_queue(fd: RawFd) -> Option<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut queued) };
    (rc == 0).then(|| u64::try_from(queued).unwrap_or(0))
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

    #[test]
    fn userspace_is_what_it_says() {
        let (relay, line) = Relay::start(RelayMode::Userspace, 10).unwrap();
        assert!(!relay.is_kernel());
        assert_eq!(line, "hand-off relay: userspace (relay = \"userspace\")");
    }
}
