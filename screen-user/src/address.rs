//! Client addresses in the one form smtp-screen names them by: an IPv4-mapped IPv6 address
//! (`::ffff:192.0.2.1`, how a dual-stack socket or a PROXY header may carry an IPv4 client) is
//! the IPv4 address it stands for. postscreen logs, caches and looks such clients up as IPv4,
//! and XDP only ever sees the IPv4 packet, so every stage compares, keys and prints this form.

use std::net::{IpAddr, SocketAddr};

/// The canonical form of a client or server address.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The canonical form of an endpoint: its address canonical, its port kept.
pub(crate) fn canonical_endpoint(endpoint: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(endpoint.ip()), endpoint.port())
}
