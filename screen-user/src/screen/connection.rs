//! One client connection as the stages hand it on: the stream, the client's and the server's
//! endpoints, and what the session has learned so far (postscreen's per-session flags), with
//! the ways a stage ends a connection: a final reply and close, and the `DISCONNECT` line.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::Screen;
use crate::{
    smtpd::{ClientAddr, Reply, close},
    test_state::{Outcome, SessionResults, Test},
};

/// A client's connection between the stages.
pub(crate) struct Connection {
    pub(crate) stream: TcpStream,
    /// The client, as the PROXY header names it when a load balancer sends one.
    pub(crate) client: SocketAddr,
    /// The local end the client reached.
    pub(crate) server: SocketAddr,
    pub(crate) session: Session,
}

/// What one session learned, as postscreen's per-session flags.
#[derive(Default)]
pub(crate) struct Session {
    pub(crate) results: SessionResults,
    /// A test failed with `enforce`: the session goes to the dummy engine, RCPT is refused.
    pub(crate) rcpt_reply: Option<Reply>,
    /// The session can never be handed off (`ALLOWLIST VETO`, or an `enforce` failure).
    pub(crate) noforward: bool,
    /// The `220-` teaser went out: a final reply must continue the multi-line greeting.
    pub(crate) teaser_sent: bool,
    pub(crate) pregreeted: bool,
    /// What the failures were, for the kernel deny policy's log line.
    pub(crate) failures: Vec<&'static str>,
    /// The DNSBL score was negative: a DNSWL lists the client.
    pub(crate) dnswl_listed: bool,
}

impl Session {
    /// A test failed with action `enforce` (postscreen's `PSC_FAIL_ACTION_ENFORCE`): the
    /// other tests go on, every RCPT is refused with `rcpt_reply`, and the client is never
    /// handed off. `test` is `None` for the access list, which has no test record.
    pub(crate) fn enforce(
        &mut self,
        test: Option<Test>,
        name: &'static str,
        rcpt_reply: Option<Reply>,
    ) {
        match test {
            Some(test) => self.results.set_outcome(test, Outcome::Failed),
            None => self.results.denylisted = true,
        }
        self.rcpt_reply = rcpt_reply;
        self.noforward = true;
        self.failures.push(name);
    }
}

impl Screen {
    /// Sends a final reply, as `soft_bounce` and `reject_footer` make it, and closes.
    pub(super) async fn reply_and_close(
        &self,
        stream: &mut TcpStream,
        reply: &Reply,
        client: SocketAddr,
    ) {
        close::reply_and_close(stream, reply, &self.style, client, &self.engine.myhostname).await;
    }

    /// postscreen's `DISCONNECT [a]:p`, the last line of a screened session.
    pub(super) fn disconnect(&self, client: SocketAddr) {
        self.log
            .info(format_args!("DISCONNECT {}", ClientAddr(client)));
    }
}
