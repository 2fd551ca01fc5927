//! Client addresses in the one form smtp-screen names them by: an IPv4-mapped IPv6 address
//! (`::ffff:192.0.2.1`, how a dual-stack socket or a PROXY header may carry an IPv4 client) is
//! the IPv4 address it stands for. postscreen logs, caches and looks such clients up as IPv4,
//! and XDP only ever sees the IPv4 packet, so every stage compares, keys and prints this form.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

/// The canonical form of a client or server address.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The canonical form of an endpoint: its address canonical, its port kept.
pub(crate) fn canonical_endpoint(endpoint: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(endpoint.ip()), endpoint.port())
}

/// `[address]:port`, as postscreen writes a client; an IPv4-mapped IPv6 address is shown
/// as IPv4, as Postfix does.
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]:{}", canonical(self.0.ip()), self.0.port())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn clients_are_written_as_postscreen_writes_them() {
        let v6 = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 25);
        assert_eq!(ClientAddr(v6).to_string(), "[::1]:25");
        let mapped = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 9).to_ipv6_mapped().into(), 7);
        assert_eq!(ClientAddr(mapped).to_string(), "[198.51.100.9]:7");
        assert_eq!(
            ClientAddr("127.0.0.11:58529".parse().unwrap()).to_string(),
            "[127.0.0.11]:58529"
        );
    }
}
