//! Where a connection starts (postscreen's `postscreen_endpt.c` and the start of
//! `psc_endpt_lookup_done`): who the client is — the socket's peer, or the client a load
//! balancer names in a PROXY header — the `CONNECT` line, and postscreen's connection limits
//! with their 421 replies: connections per client and the hand-off queue
//! (`post_queue_limit`) when it connects, the screening queue (`pre_queue_limit`) once the
//! permanent and temporary allowlists have not let it through.
//!
//! Beyond postscreen, a PROXY header is believed only from a peer in
//! `upstream_proxy_networks` (anyone else could claim to be a `mynetworks` address), and a
//! header that names no client (v1 `UNKNOWN`, v2 `LOCAL`) leaves the balancer's own address as
//! the client's, as in postscreen, with the session marked so that no kernel deny names it.

use std::{net::SocketAddr, time::Duration};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::{
    Screen,
    connection::{Connection, Session},
};
use crate::{
    access_list::AddressList,
    address::ClientAddr,
    address::canonical_endpoint,
    limits::{ClientSlot, Refusal, ScreeningSlot},
    proxy_protocol::{self, ProxyError, ProxyHeader},
    smtpd::Reply,
};

/// The default `upstream_proxy_networks`: every address, as postscreen takes a PROXY header
/// from anyone.
pub(crate) const DEFAULT_UPSTREAM_PROXY_NETWORKS: &str = "static:all";

/// The PROXY protocol expected from a load balancer in front of smtp-screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpstreamProxyProtocol {
    /// Clients connect directly (postscreen's empty value).
    None,
    /// Every connection starts with a PROXY v1 or v2 header (postscreen's `haproxy`).
    Haproxy,
}

/// The warning logged at start when PROXY headers are expected from anyone: the default
/// `upstream_proxy_networks` (`networks`, as configured) is in effect.
pub(crate) fn upstream_proxy_warning(
    protocol: UpstreamProxyProtocol,
    networks: &str,
) -> Option<&'static str> {
    (protocol == UpstreamProxyProtocol::Haproxy
        && networks.trim() == DEFAULT_UPSTREAM_PROXY_NETWORKS)
        .then_some(
            "upstream_proxy_protocol = haproxy takes PROXY headers from any address \
             (upstream_proxy_networks = static:all, the default): anyone who reaches the port \
             can claim any client address, mynetworks included; set upstream_proxy_networks to \
             the load balancers' addresses",
        )
}

/// How clients reach the daemon.
#[derive(Clone, Debug)]
pub(crate) struct EndpointSettings {
    /// `postscreen_upstream_proxy_protocol`.
    pub(crate) upstream_proxy_protocol: UpstreamProxyProtocol,
    /// `postscreen_upstream_proxy_timeout`: time allowed for the PROXY header.
    pub(crate) upstream_proxy_timeout: Duration,
    /// `upstream_proxy_networks`: the peers whose PROXY header is believed.
    pub(crate) upstream_proxy_networks: AddressList,
}

/// Who a session is with: the client and the local end it reached, in canonical form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Endpoints {
    pub(crate) client: SocketAddr,
    pub(crate) server: SocketAddr,
    /// The PROXY header named no client (v1 `UNKNOWN`, v2 `LOCAL`): `client` is the load
    /// balancer itself, which the kernel must never deny.
    pub(crate) client_is_balancer: bool,
}

impl EndpointSettings {
    /// The endpoints of a connection from `peer` to `local` that sent `header`: the client it
    /// names, or for a header that names none the socket's own endpoints, marked so.
    /// [`ProxyError::OutsideNetworks`] when `peer` is not in `upstream_proxy_networks`.
    pub(crate) fn behind_balancer(
        &self,
        header: ProxyHeader,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Endpoints, ProxyError> {
        if !self.upstream_proxy_networks.contains(peer.ip()) {
            return Err(ProxyError::OutsideNetworks(ClientAddr(peer).to_string()));
        }
        let (client, server) = header.endpoints(peer, local);
        Ok(Endpoints {
            client: canonical_endpoint(client),
            server: canonical_endpoint(server),
            client_is_balancer: header == ProxyHeader::Local,
        })
    }
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
        let endpoints = match settings.upstream_proxy_protocol {
            UpstreamProxyProtocol::None => Endpoints {
                client: canonical_endpoint(peer),
                server: canonical_endpoint(local),
                client_is_balancer: false,
            },
            UpstreamProxyProtocol::Haproxy => {
                // The header is read whoever sent it, so that the 421 follows what the peer
                // sent, as for a broken header.
                match Box::pin(proxy_protocol::read_header_from_tcp(
                    &mut stream,
                    settings.upstream_proxy_timeout,
                ))
                .await
                .and_then(|header| settings.behind_balancer(header, peer, local))
                {
                    Ok(endpoints) => endpoints,
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
        let Endpoints {
            client,
            server,
            client_is_balancer,
        } = endpoints;
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
                    session: Session {
                        client_is_balancer,
                        ..Session::default()
                    },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{access_list::DiskFiles, proxy_protocol::Parsed};

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn behind(networks: &str) -> EndpointSettings {
        let files = DiskFiles::new(std::path::Path::new("/"));
        let (networks, warnings) =
            AddressList::parse("upstream_proxy_networks", networks, &files).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        EndpointSettings {
            upstream_proxy_protocol: UpstreamProxyProtocol::Haproxy,
            upstream_proxy_timeout: Duration::from_secs(5),
            upstream_proxy_networks: networks,
        }
    }

    fn header(bytes: &[u8]) -> ProxyHeader {
        match proxy_protocol::parse(bytes) {
            Ok(Parsed::Complete { header, .. }) => header,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    const BALANCER: &str = "192.0.2.10:50000";
    const LOCAL: &str = "198.51.100.25:25";

    #[test]
    fn a_balancer_inside_the_networks_names_the_client() {
        let settings = behind("192.0.2.10, [2001:db8::10]");
        let named = header(b"PROXY TCP4 203.0.113.5 198.51.100.25 40000 25\r\n");
        assert_eq!(
            settings
                .behind_balancer(named, sa(BALANCER), sa(LOCAL))
                .unwrap(),
            Endpoints {
                client: sa("203.0.113.5:40000"),
                server: sa("198.51.100.25:25"),
                client_is_balancer: false,
            }
        );
        // An IPv4-mapped peer is the IPv4 address the list names.
        let mapped = sa("[::ffff:192.0.2.10]:50000");
        assert!(settings.behind_balancer(named, mapped, sa(LOCAL)).is_ok());
    }

    #[test]
    fn a_header_from_outside_the_networks_is_refused_with_postscreens_wording() {
        let settings = behind("192.0.2.10");
        // The client it claims to be is in mynetworks: that is the attack.
        let claim = header(b"PROXY TCP4 127.0.0.1 198.51.100.25 40000 25\r\n");
        let error = settings
            .behind_balancer(claim, sa("192.0.2.66:41234"), sa(LOCAL))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "haproxy read: PROXY header from [192.0.2.66]:41234 outside upstream_proxy_networks"
        );
        let v6 = settings
            .behind_balancer(claim, sa("[2001:db8::66]:41234"), sa(LOCAL))
            .unwrap_err();
        assert_eq!(
            v6.to_string(),
            "haproxy read: PROXY header from [2001:db8::66]:41234 outside upstream_proxy_networks"
        );
        // A header that names no client is refused from outside too.
        let local = header(b"PROXY UNKNOWN\r\n");
        assert!(matches!(
            settings.behind_balancer(local, sa("192.0.2.66:41234"), sa(LOCAL)),
            Err(ProxyError::OutsideNetworks(_))
        ));
    }

    #[test]
    fn a_header_that_names_no_client_marks_the_balancer_as_the_client() {
        let settings = behind(DEFAULT_UPSTREAM_PROXY_NETWORKS);
        let mut v2_local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2_local.extend([0x20, 0x00, 0, 0]);
        for bytes in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ff::1 ff::2 1 2\r\n",
            &v2_local,
        ] {
            let endpoints = settings
                .behind_balancer(header(bytes), sa(BALANCER), sa(LOCAL))
                .unwrap();
            assert_eq!(
                endpoints,
                Endpoints {
                    client: sa(BALANCER),
                    server: sa(LOCAL),
                    client_is_balancer: true,
                },
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn the_default_networks_behind_a_balancer_are_warned_about_once() {
        let warning = upstream_proxy_warning(
            UpstreamProxyProtocol::Haproxy,
            DEFAULT_UPSTREAM_PROXY_NETWORKS,
        )
        .unwrap();
        assert!(
            warning.contains("anyone who reaches the port can claim any client address"),
            "{warning}"
        );
        assert_eq!(
            upstream_proxy_warning(UpstreamProxyProtocol::Haproxy, "192.0.2.10"),
            None
        );
        assert_eq!(
            upstream_proxy_warning(UpstreamProxyProtocol::None, DEFAULT_UPSTREAM_PROXY_NETWORKS),
            None
        );
    }
}
