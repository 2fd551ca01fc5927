//! One client connection as the stages hand it on: the stream, the client's and the server's
//! endpoints, and what the session has learned so far (postscreen's per-session flags); what
//! a failed test's action does, in one place for every stage ([`Screen::fail`]: `drop`,
//! `enforce`, `ignore`); and the ways a stage ends a connection: a final reply and close, and
//! the `DISCONNECT` line.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

use super::{
    Next, Screen,
    deny_causes::{DNSBL_FAILURE, DnsblGround},
};
use crate::{
    address::ClientAddr,
    smtpd::{Reply, close},
    test_state::{Outcome, SessionResults, Test, TestAction},
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
    /// The PROXY header named no client (v1 `UNKNOWN`, v2 `LOCAL`), so the client address is
    /// the load balancer's own: the session is screened as postscreen screens it, but no
    /// kernel deny is ever made for it, whatever the settings, since that would stop all mail.
    pub(crate) client_is_balancer: bool,
    /// The DNSBL failure's ground, when its sound score (answers inside 127.0.0.0/8) reached
    /// `dnsbl_threshold`: only then does the failure count toward a kernel deny.
    pub(crate) dnsbl_ground: Option<DnsblGround>,
}

impl Connection {
    /// The address a kernel deny for this session's failures may name; `None` when the client
    /// is the load balancer itself.
    pub(crate) fn deniable_client(&self) -> Option<IpAddr> {
        (!self.session.client_is_balancer).then(|| self.client.ip())
    }
}

impl Session {
    /// The failures the kernel deny policy counts: all but a DNSBL failure that rests on
    /// answers outside 127.0.0.0/8.
    pub(crate) fn kernel_failures(&self) -> Vec<&'static str> {
        self.failures
            .iter()
            .copied()
            .filter(|&failure| failure != DNSBL_FAILURE || self.dnsbl_ground.is_some())
            .collect()
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

    /// A client failed `test` (`None`: the access list rejected it) and `action` applies, as
    /// postscreen's actions do: `drop` sends `drop_reply` and hangs up, and the failure
    /// counts toward a kernel deny (a denylisted client is denied at once; a DNSBL failure only
    /// on answers inside 127.0.0.0/8), unless the client is a load balancer
    /// ([`Connection::deniable_client`]); `enforce` lets the
    /// other tests finish, then refuses every RCPT with `enforce_reply` and never hands the
    /// client off; `ignore` only logs (postscreen takes the failure back).
    pub(super) async fn fail(
        &self,
        conn: &mut Connection,
        test: Option<Test>,
        name: &'static str,
        action: TestAction,
        drop_reply: Option<Reply>,
        enforce_reply: Option<Reply>,
    ) -> Next {
        let session = &mut conn.session;
        match action {
            TestAction::Drop => {
                let client = conn.client;
                if let Some(reply) = drop_reply {
                    self.reply_and_close(&mut conn.stream, &reply, client).await;
                }
                self.disconnect(client);
                if let Some(denied) = conn.deniable_client() {
                    match test {
                        Some(Test::Dnsbl) => {
                            if let Some(ground) = conn.session.dnsbl_ground.take() {
                                self.deny.failed_on(denied, name, Some(ground));
                            }
                        }
                        Some(_) => self.deny.failed(denied, name),
                        None => self.deny.denylist_drop(denied),
                    }
                }
                return Next::Done;
            }
            TestAction::Enforce => {
                match test {
                    Some(test) => session.results.set_outcome(test, Outcome::Failed),
                    None => session.results.denylisted = true,
                }
                session.rcpt_reply = enforce_reply;
                session.noforward = true;
                session.failures.push(name);
            }
            TestAction::Ignore => {
                if let Some(test) = test {
                    session.results.set_outcome(test, Outcome::Ignored);
                }
            }
        }
        Next::Continue
    }

    /// postscreen's `DISCONNECT [a]:p`, the last line of a screened session.
    pub(super) fn disconnect(&self, client: SocketAddr) {
        self.log
            .info(format_args!("DISCONNECT {}", ClientAddr(client)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dnsbl::SoundScore, loopback::tcp_pair};

    async fn connection(session: Session) -> (Connection, TcpStream) {
        let (server_end, client_end) = tcp_pair().await;
        let conn = Connection {
            client: server_end.peer_addr().unwrap(),
            server: server_end.local_addr().unwrap(),
            stream: server_end,
            session,
        };
        (conn, client_end)
    }

    #[tokio::test]
    async fn a_client_is_deniable_unless_it_is_the_balancer() {
        let (client, _peer) = connection(Session::default()).await;
        assert_eq!(client.deniable_client(), Some(client.client.ip()));
        // A PROXY header that named no client: the address is the balancer's own.
        let balancer = Session {
            client_is_balancer: true,
            ..Session::default()
        };
        let (balancer, _peer) = connection(balancer).await;
        assert_eq!(balancer.deniable_client(), None);
    }

    #[test]
    fn a_dnsbl_failure_outside_127_8_is_not_counted_in_the_kernel() {
        let mut session = Session {
            failures: vec!["PREGREET", DNSBL_FAILURE],
            ..Session::default()
        };
        assert_eq!(session.kernel_failures(), ["PREGREET"]);
        session.dnsbl_ground = DnsblGround::new(
            SoundScore {
                rank: 3,
                weights: vec![("zen.test".into(), 3)],
            },
            3,
        );
        assert_eq!(session.kernel_failures(), ["PREGREET", DNSBL_FAILURE]);
        session.failures = vec![DNSBL_FAILURE];
        session.dnsbl_ground = None;
        assert!(session.kernel_failures().is_empty());
    }
}
