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
//!
//! The redirect has no backpressure of its own, so the kernel relay gives each socket a
//! credit and goes on in userspace when a target falls behind (see [`kernel`]).
//!
//! Either relay closes both sides of a connection on which no byte moved either way for
//! `relay_idle_timeout` (the relay's `smtpd_timeout`, for an MTA that has no idle limit of its
//! own), and of one whose second direction is still open [`HALF_CLOSE_LIMIT`] after the first
//! ended.
//!
//! While the kernel relays, the daemon mostly sleeps: the pair's sockets are watched through
//! an epoll instance of their own, edge-triggered, for their end (`EPOLLRDHUP`), errors and
//! input. The kernel signals the receiving socket's readers even when the program took the
//! data away, so input wakes the daemon while bytes move, which it needs to renew the
//! sockets' credits; after such a wake it leaves the watch alone for 10 ms, and a quiet pair
//! costs nothing. Data the program leaves on a socket (its peer not yet in the sockhash during
//! the insertion, or closed at the end) is read after the insertion or when that socket ends.

mod kernel;
mod userspace;

use std::{io, time::Duration};

use serde::Deserialize;
use tokio::net::TcpStream;

use crate::kernel::relay::{KernelRelay, RelayError};

/// Which relay moves the bytes of a handed-off connection (`handoff = "proxy"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// The kernel relay when the kernel offers it (5.15 and root at start), userspace
    /// otherwise; the daemon logs which one runs and why.
    Auto,
    /// The kernel relay or nothing: the daemon does not start without it.
    Kernel,
    /// The daemon copies every byte itself.
    Userspace,
}

/// Which relay moves the bytes of handed-off connections.
pub struct Relay {
    kernel: Option<KernelRelay>,
}

/// How long a relayed connection may go without a byte, and one direction after the other
/// ended. Both relays close both sides when either runs out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// `relay_idle_timeout`: no byte either way for this long.
    pub idle: Duration,
    /// One direction still open this long after the other ended.
    pub half_close: Duration,
}

/// How long one direction may go on after the other ended (an SMTP session ends with the
/// MTA's close after QUIT, and the client closes at once).
pub const HALF_CLOSE_LIMIT: Duration = Duration::from_secs(30);

impl RelayLimits {
    /// The defaults: `relay_idle_timeout = "300s"` (Postfix's `smtpd_timeout`), and
    /// [`HALF_CLOSE_LIMIT`].
    pub const DEFAULT: Self = Self {
        idle: Duration::from_secs(300),
        half_close: HALF_CLOSE_LIMIT,
    };
}

/// Why a relay closed a connection before both sides ended.
pub(crate) fn idle_error(limits: RelayLimits) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "no byte either way for {}s (relay_idle_timeout)",
            limits.idle.as_secs_f64()
        ),
    )
}

/// Why a relay closed a connection one side had ended.
pub(crate) fn half_close_error(limits: RelayLimits) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "one direction still open {}s after the other ended",
            limits.half_close.as_secs()
        ),
    )
}

/// Bytes relayed client → backend and backend → client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relayed {
    pub up: u64,
    pub down: u64,
    /// The kernel moved them (apart from what the sockets held at the hand-off, and, when a
    /// side fell [`BACKLOG_LIMIT`](kernel::BACKLOG_LIMIT) behind, the rest of the connection).
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
    /// Relays until both directions are done, one side fails, or a limit runs out.
    pub async fn run(
        &self,
        client: TcpStream,
        backend: TcpStream,
        limits: RelayLimits,
    ) -> io::Result<Relayed> {
        match &self.kernel {
            Some(kernel) => kernel::run(kernel, client, backend, limits).await,
            None => userspace::run(client, backend, limits).await,
        }
    }
}

fn kernel_line(max_pairs: u32) -> String {
    format!("hand-off relay: kernel (sockhash stream verdict, up to {max_pairs} connections)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userspace_is_what_it_says() {
        let (relay, line) = Relay::start(RelayMode::Userspace, 10).unwrap();
        assert!(!relay.is_kernel());
        assert_eq!(line, "hand-off relay: userspace (relay = \"userspace\")");
    }
}
