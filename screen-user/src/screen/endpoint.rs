//! Where a connection starts (postscreen's `postscreen_endpt.c` and the start of
//! `psc_endpt_lookup_done`): who the client is — the socket's peer, or the client a load
//! balancer names in a PROXY header — the `CONNECT` line, and postscreen's connection limits
//! with their 421 replies: connections per client and the hand-off queue
//! (`post_queue_limit`) when it connects, the screening queue (`pre_queue_limit`) once the
//! permanent and temporary allowlists have not let it through.

use std::time::Duration;

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::{
    Screen,
    connection::{Connection, Session},
};
use crate::{
    address::ClientAddr,
    address::canonical_endpoint,
    limits::{ClientSlot, Refusal, ScreeningSlot},
    proxy_protocol,
    smtpd::Reply,
};

/// The PROXY protocol expected from a load balancer in front of smtp-screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpstreamProxyProtocol {
    /// Clients connect directly (postscreen's empty value).
    None,
    /// Every connection starts with a PROXY v1 or v2 header (postscreen's `haproxy`).
    Haproxy,
}

/// How clients reach the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EndpointSettings {
    /// `postscreen_upstream_proxy_protocol`.
    pub(crate) upstream_proxy_protocol: UpstreamProxyProtocol,
    /// `postscreen_upstream_proxy_timeout`: time allowed for the PROXY header.
    pub(crate) upstream_proxy_timeout: Duration,
}

/// This stage's replies, in postscreen's words.
impl Reply {
    /// More than `client_connection_count_limit` connections from one address.
    pub(crate) fn too_many_connections() -> Self {
        Self::fixed(421, "4.7.0 Error: too many connections")
    }

    /// The screening queue (`pre_queue_limit`) is full.
    pub(crate) fn all_screening_ports_busy() -> Self {
        Self::fixed(421, "4.3.2 All screening ports are busy")
    }
}

impl Screen {
    /// Learns the client's and the server's endpoints, logs `CONNECT` and takes the client's
    /// place among its simultaneous connections. `None`: the connection was refused and is
    /// done with.
    pub(super) async fn connect(&self, mut stream: TcpStream) -> Option<(Connection, ClientSlot)> {
        // Replies are single small writes; waiting to coalesce them only delays the client.
        let _ = stream.set_nodelay(true);
        let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
            let _ = stream
                .write_all(&Reply::no_system_resources().to_bytes())
                .await;
            return None;
        };
        let settings = &self.settings.endpoint;
        let (client, server) = match settings.upstream_proxy_protocol {
            UpstreamProxyProtocol::None => (canonical_endpoint(peer), canonical_endpoint(local)),
            UpstreamProxyProtocol::Haproxy => {
                match Box::pin(proxy_protocol::read_header_from_tcp(
                    &mut stream,
                    settings.upstream_proxy_timeout,
                ))
                .await
                {
                    Ok(header) => {
                        let (c, s) = header.endpoints(peer, local);
                        (canonical_endpoint(c), canonical_endpoint(s))
                    }
                    Err(e) => {
                        self.log.warning(&e);
                        let _ = stream
                            .write_all(&Reply::no_system_resources().to_bytes())
                            .await;
                        return None;
                    }
                }
            }
        };
        self.log.info(format_args!(
            "CONNECT from {} to {}",
            ClientAddr(client),
            ClientAddr(server)
        ));

        let (client_slot, admitted) = self.limits.connect(client.ip());
        let (reason, reply) = match admitted {
            Ok(_) => {
                let conn = Connection {
                    stream,
                    client,
                    server,
                    session: Session::default(),
                };
                return Some((conn, client_slot));
            }
            Err(Refusal::TooManyFromClient) => {
                ("too many connections", Reply::too_many_connections())
            }
            Err(_) => ("all server ports busy", Reply::all_server_ports_busy()),
        };
        self.log.info(format_args!(
            "NOQUEUE: reject: CONNECT from {}: {reason}",
            ClientAddr(client)
        ));
        self.reply_and_close(&mut stream, &reply, client).await;
        self.disconnect(client);
        None
    }

    /// Takes a place among the connections in screening (`postscreen_pre_queue_limit`);
    /// `None` when they are all taken: the client got postscreen's 421.
    pub(super) async fn screening_slot(&self, conn: &mut Connection) -> Option<ScreeningSlot> {
        match self.limits.screen() {
            Ok(slot) => {
                self.stress_log();
                Some(slot)
            }
            Err(_) => {
                let client = conn.client;
                self.log.info(format_args!(
                    "reject: connect from {}: all screening ports busy",
                    ClientAddr(client)
                ));
                self.reply_and_close(&mut conn.stream, &Reply::all_screening_ports_busy(), client)
                    .await;
                self.disconnect(client);
                None
            }
        }
    }
}
