//! Where a connection starts: who the client is (the socket's peer, or the PROXY header a
//! load balancer puts first), the `CONNECT` line, and the per-client and global connection
//! limits.

/// The PROXY protocol expected from a load balancer in front of smtp-screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProxyProtocol {
    /// Clients connect directly (postscreen's empty value).
    None,
    /// Every connection starts with a PROXY v1 or v2 header (postscreen's `haproxy`).
    Haproxy,
}
