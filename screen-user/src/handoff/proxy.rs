//! Hand-off of a passed client to the real MTA (`handoff = "proxy"`): connect to the backend,
//! optionally announce the client's real addresses with a PROXY header; the bytes then go
//! both ways through a [`relay`](super::relay) until either side closes.
//!
//! When the client already saw the `220-` teaser, the backend's own `220` completes the
//! multi-line greeting, so the client sees one ordinary greeting.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use serde::Deserialize;

use crate::proxy_protocol;

/// A PROXY protocol header sent to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BackendProxyProtocol {
    None,
    V1,
    V2,
}

/// How long connecting to the backend may take before the client is told the server is busy
/// (postscreen allows one second to reach smtpd's pass service).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The backend could not take the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandoffError {
    #[error("cannot connect to backend {backend}: {source}")]
    Connect {
        backend: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to backend {backend}: timed out after {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout { backend: SocketAddr },
    #[error("cannot send the PROXY header to backend {backend}: {source}")]
    Header {
        backend: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "backend {backend} sent no greeting within {}s (backend_greeting_timeout)",
        limit.as_secs_f64()
    )]
    NoGreeting {
        backend: SocketAddr,
        limit: Duration,
    },
    #[error("backend {backend} closed the connection before its greeting")]
    ClosedBeforeGreeting { backend: SocketAddr },
    #[error("backend {backend} failed before its greeting: {source}")]
    GreetingFailed {
        backend: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Where passed clients go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    pub(crate) proxy_protocol: BackendProxyProtocol,
}

impl Backend {
    /// Connects for one client and sends the PROXY header, if configured, carrying the
    /// client's address and the address it connected to.
    pub(crate) async fn connect(
        &self,
        client: SocketAddr,
        server: SocketAddr,
    ) -> Result<TcpStream, HandoffError> {
        let backend = self.addr;
        let mut stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
                Err(_) => return Err(HandoffError::Timeout { backend }),
                Ok(Err(source)) => return Err(HandoffError::Connect { backend, source }),
                Ok(Ok(stream)) => stream,
            };
        let _ = stream.set_nodelay(true);
        let header = match self.proxy_protocol {
            BackendProxyProtocol::None => None,
            BackendProxyProtocol::V1 => Some(proxy_protocol::encode_v1(client, server)),
            BackendProxyProtocol::V2 => Some(proxy_protocol::encode_v2(client, server)),
        };
        if let Some(header) = header {
            stream
                .write_all(&header)
                .await
                .map_err(|source| HandoffError::Header { backend, source })?;
        }
        Ok(stream)
    }

    /// Waits up to `limit` for the backend's greeting to begin, without taking it (the relay
    /// forwards it). A backend that accepts and then says nothing would hold the client, who
    /// already passed, until the relay's idle limit: this way it gets postscreen's 421 instead.
    pub(crate) async fn greeted(
        &self,
        stream: &TcpStream,
        limit: Duration,
    ) -> Result<(), HandoffError> {
        let backend = self.addr;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(limit, stream.peek(&mut byte)).await {
            Err(_) => Err(HandoffError::NoGreeting { backend, limit }),
            Ok(Ok(0)) => Err(HandoffError::ClosedBeforeGreeting { backend }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(HandoffError::GreetingFailed { backend, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncReadExt as _, net::TcpListener};

    use super::*;

    #[tokio::test]
    async fn a_backend_that_says_nothing_is_caught_and_a_greeting_is_left_for_the_relay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend {
            addr: listener.local_addr().unwrap(),
            proxy_protocol: BackendProxyProtocol::None,
        };
        let (client, server): (SocketAddr, SocketAddr) = (
            "192.0.2.10:40000".parse().unwrap(),
            "198.51.100.25:25".parse().unwrap(),
        );
        // Accepts and says nothing.
        let silent = backend.connect(client, server).await.unwrap();
        let (_mta, _) = listener.accept().await.unwrap();
        let limit = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let err = backend.greeted(&silent, limit).await.unwrap_err();
        assert!(started.elapsed() >= limit);
        assert_eq!(
            err.to_string(),
            format!(
                "backend {} sent no greeting within 0.2s (backend_greeting_timeout)",
                backend.addr
            )
        );
        // Accepts and closes.
        let closing = backend.connect(client, server).await.unwrap();
        drop(listener.accept().await.unwrap());
        assert!(matches!(
            backend.greeted(&closing, limit).await,
            Err(HandoffError::ClosedBeforeGreeting { .. })
        ));
        // Greets: the greeting stays on the socket.
        let mut greeting = backend.connect(client, server).await.unwrap();
        let (mut mta, _) = listener.accept().await.unwrap();
        mta.write_all(b"220 mta ESMTP\r\n").await.unwrap();
        backend.greeted(&greeting, limit).await.unwrap();
        let mut got = [0u8; 15];
        greeting.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"220 mta ESMTP\r\n");
    }
    use crate::handoff::relay::{Relay, RelayLimits};

    #[tokio::test]
    async fn sends_a_proxy_v2_header_then_relays() {
        let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend {
            addr: backend_listener.local_addr().unwrap(),
            proxy_protocol: BackendProxyProtocol::V2,
        };
        let client_addr: SocketAddr = "192.0.2.10:40000".parse().unwrap();
        let server_addr: SocketAddr = "198.51.100.25:25".parse().unwrap();
        let to_backend =
            tokio::spawn(async move { backend.connect(client_addr, server_addr).await });
        let (mut mta, _) = backend_listener.accept().await.unwrap();
        let stream = to_backend.await.unwrap().unwrap();

        let expected = proxy_protocol::encode_v2(client_addr, server_addr);
        let mut header = vec![0u8; expected.len()];
        mta.read_exact(&mut header).await.unwrap();
        assert_eq!(header, expected);

        // Relay a greeting and a command through a real client connection.
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let relay = tokio::spawn(async move {
            Relay::userspace()
                .run(accepted, stream, RelayLimits::DEFAULT)
                .await
        });
        mta.write_all(b"220 mta.example ESMTP\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"220 mta.example ESMTP\r\n");
        client.write_all(b"QUIT\r\n").await.unwrap();
        let n = mta.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"QUIT\r\n");
        drop(client);
        drop(mta);
        let relayed = relay.await.unwrap().unwrap();
        assert_eq!((relayed.up, relayed.down), (6, 23));
    }

    #[tokio::test]
    async fn a_backend_that_is_down_is_reported() {
        // Bind and drop to get a port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let backend = Backend {
            addr: port,
            proxy_protocol: BackendProxyProtocol::None,
        };
        let err = backend
            .connect(
                "192.0.2.1:1".parse().unwrap(),
                "192.0.2.2:25".parse().unwrap(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, HandoffError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&port.to_string()));
    }
}
