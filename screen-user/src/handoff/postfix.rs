//! Hand-off of a passed client to Postfix's smtpd (`handoff = "postfix"`): the client's TCP
//! socket itself goes to smtpd's `pass` service, the way postscreen(8) sends it, so smtpd talks
//! to the client directly and smtp-screen keeps no byte path.
//!
//! # The protocol
//!
//! As Postfix 3.7 (Debian 12) speaks it; file names are under `postfix/src/`.
//!
//! 1. A new UNIX-domain stream connection to the pass service's socket,
//!    `$queue_directory/private/smtpd` for the `master.cf` line `smtpd pass - - n - - smtpd`.
//!    postscreen connects non-blocking and gives up after one second
//!    (`psc_send_socket()` in `postscreen/postscreen_send.c`: `LOCAL_CONNECT(…, NON_BLOCKING,
//!    PSC_SEND_SOCK_CONNECT_TIMEOUT)`), which is [`CONNECT_TIMEOUT`].
//! 2. The client socket, as one `SCM_RIGHTS` control message riding on one data byte, a NUL
//!    (`unix_send_fd()` in `util/unix_send_fd.c`: `iov_base = ""`, `iov_len = 1`; the receiver,
//!    `unix_recv_fd()`, reads exactly that one byte).
//! 3. The client's and the server's endpoints, in the null-terminated attribute encoding
//!    (`attr_print()` is `attr_print0()`, `util/attr.h`; `util/attr_print0.c`): each attribute
//!    is its name and its value, each followed by a NUL, and one more NUL ends the list. The
//!    names are `client_address`, `client_port`, `server_address` and `server_port`
//!    (`MAIL_ATTR_ACT_CLIENT_ADDR` … `MAIL_ATTR_ACT_SERVER_PORT`, `global/mail_proto.h`), in
//!    that order, so a client 192.0.2.10:40000 that reached 198.51.100.25:25 is sent as
//!    `client_address␀192.0.2.10␀client_port␀40000␀server_address␀198.51.100.25␀server_port␀25␀␀`.
//!    Addresses are bare (no brackets, no `IPv6:`), and an IPv4-mapped IPv6 address goes as
//!    plain IPv4, as postscreen writes it (`psc_sockaddr_to_hostaddr()`,
//!    `postscreen/postscreen_endpt.c`). [`PassEndpoints::encode`] writes this stream.
//! 4. smtpd sends nothing back. Its process skeleton (`single_server_accept_pass()` in
//!    `master/single_server.c`, calling `pass_accept_attr()` in `util/pass_accept.c`) accepts
//!    the connection, waits up to 100 s for the descriptor, reads it, waits up to 100 s for the
//!    attributes, reads them (`recv_pass_attr()`, `util/recv_pass_attr.c`: `attr_scan0()` into a
//!    hash table), and closes the connection. That close is the only signal, and smtpd sends it
//!    on failure too (it then closes the client socket it received as well), so the sender never
//!    learns more than "smtpd is done with the channel".
//!
//! smtpd then takes the client's endpoints from the attributes instead of from the socket
//! (`smtpd_peer_from_pass_attr()` in `smtpd/smtpd_peer.c`): a value with a `:` must be an IPv6
//! address and any other an IPv4 address, ports are decimal without leading zeros, and a missing
//! or bad attribute is logged (`missing client address from proxy`, `bad IPv4 client address
//! syntax from proxy: …`) and ends the session. The tests read what is sent with the same
//! rules (`postfix/decode.rs`).
//!
//! Each connection carries exactly one client: the skeleton accepts one descriptor and one
//! attribute list per connection and then closes it. A connection cannot be kept open for later
//! clients.
//!
//! # Keeping the client open until smtpd has it
//!
//! postscreen keeps its own copy of the client socket until smtpd closes the channel ("some
//! systems will discard information when we close a channel immediately after writing"; closing
//! early lost connections on FreeBSD 7.1), and counts the connection against
//! `postscreen_post_queue_limit` until then. It waits at most 100 s
//! (`PSC_SEND_SOCK_NOTIFY_TIMEOUT`, [`NOTIFY_TIMEOUT`]), then logs
//! `warning: timeout sending connection to service private/smtpd` and lets go; smtpd may still
//! take the client later. That happens when every smtpd process is busy: the connection waits
//! in the pass service's listen queue. [`PassHandle`] owns the client socket and the channel, so
//! the socket stays open exactly until [`PassHandle::taken_over`] returns.
//!
//! # Failures
//!
//! These are postscreen's warnings and replies, in the [`PassError`] texts and
//! [`PassError::client_reply`]:
//!
//! | what failed | warning | client hears |
//! |---|---|---|
//! | connect | `cannot connect to service private/smtpd: %m` | `421 4.3.2 All server ports are busy` |
//! | sending the socket or the attributes | `cannot pass connection to service private/smtpd: %m` | `421 4.3.2 No system resources` |
//! | either, after a `220-` teaser | as above | `421 4.3.2 No system resources`, from the dummy engine at the client's next command (X21 mode) |
//! | no close within 100 s | `timeout sending connection to service private/smtpd` | nothing: the client may be smtpd's by now |
//!
//! # Who may connect
//!
//! master creates the socket as the mail owner with mode 0666 (`master/master_listen.c`,
//! `unix_listen()` in `util/unix_listen.c`), but in `$queue_directory/private`, which is the
//! mail owner's with mode 0700 (`postfix-files`: `$queue_directory/private:d:$mail_owner:-:700`).
//! Only the mail owner (`postfix`) and root can reach it. smtp-screen connects anew for every
//! client, long after it has dropped root (a connection opened before the drop would serve one
//! client only), so its `user` must be able to reach the socket:
//!
//! - run smtp-screen as the mail owner, `user = "postfix"`, the account postscreen itself runs
//!   as; or
//! - name a pass service that lives in `public/` (`master.cf` private column `n`; the directory
//!   is the mail owner's, group `postdrop`, mode 0710) and put smtp-screen's user in group
//!   `postdrop`. Every member of that group can then hand smtpd connections with made-up client
//!   addresses, which defeats access rules on client addresses (`mynetworks`); prefer the first.

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, RawFd},
    path::Path,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, Interest},
    net::UnixStream,
    time::timeout,
};

use crate::{address::canonical, smtpd::Reply};

/// How long connecting to the pass service may take (`PSC_SEND_SOCK_CONNECT_TIMEOUT`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long smtpd may take to close the channel once the client was sent
/// (`PSC_SEND_SOCK_NOTIFY_TIMEOUT`). Sending itself gets the same bound.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(100);

/// Attribute names (`global/mail_proto.h`).
const CLIENT_ADDRESS: &str = "client_address";
const CLIENT_PORT: &str = "client_port";
const SERVER_ADDRESS: &str = "server_address";
const SERVER_PORT: &str = "server_port";

/// Most attributes one list may hold (`ATTR_HASH_LIMIT`, `util/attr.h`).
pub(crate) const MAX_ATTRIBUTES: usize = 1024;

/// Longest attribute name or value, its terminating NUL included: `4 * var_line_limit` with
/// Postfix's default `line_length_limit` of 2048 (`util/attr_scan0.c`).
pub(crate) const MAX_STRING: usize = 4 * 2048;

/// The hand-off did not happen, or smtpd did not confirm it in time; or an attribute stream
/// does not hold what smtpd needs.
///
/// The hand-off texts are postscreen's warnings without the `warning: ` prefix; the attribute
/// texts follow `attr_scan0()` and `smtpd_peer_from_pass_attr()`.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("cannot connect to service {service}: {}", Strerror(.source))]
    Connect {
        service: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot pass connection to service {service}: {}", Strerror(.source))]
    Send {
        service: String,
        #[source]
        source: io::Error,
    },
    #[error("timeout sending connection to service {service}")]
    NotifyTimeout { service: String },
    #[error("premature end-of-input at byte {offset} while reading {reading}")]
    Truncated {
        offset: usize,
        reading: &'static str,
    },
    #[error("{reading} at byte {offset} is longer than {} bytes", MAX_STRING - 1)]
    TooLong {
        offset: usize,
        reading: &'static str,
    },
    #[error("attribute count exceeds limit {MAX_ATTRIBUTES}")]
    TooManyAttributes,
    #[error("missing {what} from proxy")]
    Missing { what: &'static str },
    #[error("bad {family} {what} syntax from proxy: {value}")]
    BadAddress {
        family: &'static str,
        what: &'static str,
        /// The value as received, escaped and cut as postscreen cuts client text in logs.
        value: String,
    },
    #[error("bad TCP {what} number syntax from proxy: {value}")]
    BadPort {
        what: &'static str,
        /// The value as received, escaped and cut as postscreen cuts client text in logs.
        value: String,
    },
}

impl PassError {
    /// What the client is told after a failed hand-off, as postscreen tells it; `None` when the
    /// client must not be told anything (smtpd may have it by now).
    ///
    /// `teaser_sent` is whether the client saw a `220-` teaser. The reply may then not be sent
    /// at once: after `220-` a `421` would break the greeting, so postscreen has its dummy
    /// engine answer the client's next command with it (X21 mode, `PSC_SMTPD_X21`); without a
    /// teaser it is written at once and the connection closed.
    pub fn client_reply(&self, teaser_sent: bool) -> Option<Reply> {
        match self {
            Self::Connect { .. } if !teaser_sent => Some(Reply::all_server_ports_busy()),
            Self::Connect { .. } | Self::Send { .. } => Some(Reply::no_system_resources()),
            _ => None,
        }
    }
}

/// An I/O error as Postfix's `%m` shows it: the system's text without Rust's ` (os error N)`.
struct Strerror<'a>(&'a io::Error);

impl fmt::Display for Strerror<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        let bare = match self.0.raw_os_error() {
            Some(code) => text.strip_suffix(&format!(" (os error {code})")),
            None => None,
        };
        f.write_str(bare.unwrap_or(&text))
    }
}

/// The endpoints smtpd takes from the pass attributes instead of asking the socket: with a
/// PROXY header in front, the ones the header named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PassEndpoints {
    pub(crate) client: SocketAddr,
    pub(crate) server: SocketAddr,
}

impl PassEndpoints {
    /// The attribute stream postscreen writes after the descriptor (see the module docs).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let client_addr = host_addr(self.client.ip());
        let client_port = self.client.port().to_string();
        let server_addr = host_addr(self.server.ip());
        let server_port = self.server.port().to_string();
        let mut stream = Vec::with_capacity(128);
        for (name, value) in [
            (CLIENT_ADDRESS, client_addr.as_str()),
            (CLIENT_PORT, client_port.as_str()),
            (SERVER_ADDRESS, server_addr.as_str()),
            (SERVER_PORT, server_port.as_str()),
        ] {
            // Neither the names nor printed addresses and numbers can hold a NUL.
            stream.extend_from_slice(name.as_bytes());
            stream.push(0);
            stream.extend_from_slice(value.as_bytes());
            stream.push(0);
        }
        stream.push(0);
        stream
    }
}

/// An address as postscreen prints it: IPv4-mapped IPv6 as plain IPv4.
fn host_addr(ip: IpAddr) -> String {
    canonical(ip).to_string()
}

/// How postscreen names the service in its warnings: `private/smtpd` (its
/// `psc_smtpd_service_name`), taken from the socket path when that ends in Postfix's
/// `private/` or `public/` directory; otherwise the whole path.
fn service_name(socket_path: &Path) -> String {
    let dir = socket_path.parent().and_then(Path::file_name);
    match (dir, socket_path.file_name()) {
        (Some(dir), Some(name)) if dir == "private" || dir == "public" => {
            format!("{}/{}", dir.to_string_lossy(), name.to_string_lossy())
        }
        _ => socket_path.display().to_string(),
    }
}

/// A client that smtpd was sent and has not yet confirmed. Holds the client socket open until
/// [`PassHandle::taken_over`] returns (or the handle is dropped), as postscreen does; a daemon
/// counts it against its hand-off limit for as long as it lives.
#[derive(Debug)]
pub struct PassHandle<C> {
    /// Held, never used: reading or writing it would race smtpd.
    _client: C,
    channel: UnixStream,
    service: String,
    notify_timeout: Duration,
}

impl<C> PassHandle<C> {
    /// Waits for smtpd to close the channel, at most the notify timeout, then lets go of the
    /// client socket and the channel.
    ///
    /// Any event on the channel ends the wait, as it ends postscreen's: the close smtpd sends,
    /// but also stray bytes or an error, since smtpd sends nothing else.
    /// [`PassError::NotifyTimeout`] is a warning to log, not a reason to touch the client.
    pub async fn taken_over(mut self) -> Result<(), PassError> {
        let mut byte = [0u8; 1];
        match timeout(self.notify_timeout, self.channel.read(&mut byte)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(PassError::NotifyTimeout {
                service: self.service,
            }),
        }
    }
}

/// A hand-off that failed before the client was sent in full: the error to log and the client
/// socket back, to tell the client ([`PassError::client_reply`]).
pub struct PassFailure<C> {
    pub error: PassError,
    pub client: C,
}

impl<C> fmt::Debug for PassFailure<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassFailure")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<C> fmt::Display for PassFailure<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl<C> std::error::Error for PassFailure<C> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Hands `client` to the smtpd pass service at `socket_path` as postscreen does: connects
/// within `connect_timeout`, sends the socket and then the endpoint attributes (together
/// bounded by `notify_timeout`), and returns the handle that keeps the client open until smtpd
/// has closed the channel ([`PassHandle::taken_over`]).
///
/// `client_addr` and `server_addr` are what smtpd logs and checks the client against: the
/// socket's own peer and local addresses, or the ones a PROXY header named. On failure the
/// client comes back untouched with the error; the socket may by then have reached smtpd (when
/// sending the attributes failed), but smtpd drops a client whose attributes it did not get.
pub async fn pass_to_smtpd<C: AsFd>(
    socket_path: &Path,
    client: C,
    client_addr: SocketAddr,
    server_addr: SocketAddr,
    connect_timeout: Duration,
    notify_timeout: Duration,
) -> Result<PassHandle<C>, PassFailure<C>> {
    let service = service_name(socket_path);
    let mut channel = match timeout(connect_timeout, UnixStream::connect(socket_path)).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(source)) => {
            let error = PassError::Connect { service, source };
            return Err(PassFailure { error, client });
        }
        Err(_) => {
            let source = io::Error::from_raw_os_error(libc::ETIMEDOUT);
            let error = PassError::Connect { service, source };
            return Err(PassFailure { error, client });
        }
    };
    let attributes = PassEndpoints {
        client: client_addr,
        server: server_addr,
    }
    .encode();
    let client_fd = client.as_fd();
    let sending = async {
        // The descriptor first, then the attributes, in two writes, as postscreen sends them.
        channel
            .async_io(Interest::WRITABLE, || send_fd(channel.as_fd(), client_fd))
            .await?;
        channel.write_all(&attributes).await
    };
    let sent = match timeout(notify_timeout, sending).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
    };
    if let Err(source) = sent {
        let error = PassError::Send { service, source };
        return Err(PassFailure { error, client });
    }
    Ok(PassHandle {
        _client: client,
        channel,
        service,
        notify_timeout,
    })
}

/// Room for one control message that carries one descriptor.
// SAFETY: CMSG_SPACE is plain arithmetic on its argument.
const FD_CONTROL_SPACE: usize = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;

/// Sends `fd` over the UNIX stream socket `channel` as `unix_send_fd()` does: one NUL data byte
/// carrying one `SCM_RIGHTS` message. `WouldBlock` comes back as it is, for the caller's
/// readiness loop.
fn send_fd(channel: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // u64 words keep the buffer aligned for cmsghdr.
    let mut control = [0u64; FD_CONTROL_SPACE.div_ceil(size_of::<u64>())];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = FD_CONTROL_SPACE as _;
    // SAFETY: msg_control points at FD_CONTROL_SPACE zeroed, aligned bytes that outlive this
    // block, so CMSG_FIRSTHDR returns a header inside them with room for one descriptor after
    // it; the descriptor is written unaligned because CMSG_DATA promises no alignment.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        libc::CMSG_DATA(header)
            .cast::<RawFd>()
            .write_unaligned(fd.as_raw_fd());
    }
    loop {
        // SAFETY: msg and everything it points to live until the call returns; MSG_NOSIGNAL
        // turns a closed peer into EPIPE instead of SIGPIPE.
        let sent = unsafe { libc::sendmsg(channel.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match sent {
            1 => return Ok(()),
            0 => return Err(io::ErrorKind::WriteZero.into()),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
mod decode;
#[cfg(test)]
mod tests;
