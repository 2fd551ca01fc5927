use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::loopback::tcp_pair;

const LIMITS: RelayLimits = RelayLimits {
    idle: Duration::from_millis(300),
    half_close: Duration::from_millis(600),
};

/// A relay between a client and a backend, each end of which the test holds.
async fn relayed(
    limits: RelayLimits,
) -> (
    TcpStream,
    TcpStream,
    tokio::task::JoinHandle<io::Result<Relayed>>,
) {
    let (client, client_side) = tcp_pair().await;
    let (backend_side, backend) = tcp_pair().await;
    let relay = tokio::spawn(run(client_side, backend_side, limits));
    (client, backend, relay)
}

/// Reads until the end of input; what was read.
async fn until_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
        .await
        .expect("the relay closed the connection in time")
        .unwrap();
    got
}

#[tokio::test]
async fn bytes_and_ends_pass_both_ways() {
    let (mut client, mut backend, relay) = relayed(LIMITS).await;
    backend.write_all(b"220 mx ESMTP\r\n").await.unwrap();
    let mut greeting = [0u8; 14];
    client.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"220 mx ESMTP\r\n");
    client.write_all(b"QUIT\r\n").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(until_end(&mut backend).await, b"QUIT\r\n");
    backend.write_all(b"221 Bye\r\n").await.unwrap();
    backend.shutdown().await.unwrap();
    assert_eq!(until_end(&mut client).await, b"221 Bye\r\n");
    let relayed = relay.await.unwrap().unwrap();
    assert_eq!((relayed.up, relayed.down), (6, 23));
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_limit() {
    let started = Instant::now();
    let (mut client, mut backend, relay) = relayed(LIMITS).await;
    // Neither side says anything: both see their end, and the relay says why.
    assert_eq!(until_end(&mut client).await, b"");
    assert_eq!(until_end(&mut backend).await, b"");
    let err = relay.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("relay_idle_timeout"), "{err}");
    assert!(started.elapsed() >= LIMITS.idle);
}

#[tokio::test]
async fn bytes_either_way_keep_a_connection_open() {
    let (mut client, mut backend, relay) = relayed(LIMITS).await;
    let started = Instant::now();
    let mut byte = [0u8; 1];
    // Three idle limits long, a byte every half limit, each way in turn.
    for round in 0..6 {
        tokio::time::sleep(LIMITS.idle / 2).await;
        if round % 2 == 0 {
            client.write_all(b".").await.unwrap();
            backend.read_exact(&mut byte).await.unwrap();
        } else {
            backend.write_all(b".").await.unwrap();
            client.read_exact(&mut byte).await.unwrap();
        }
    }
    assert!(started.elapsed() >= LIMITS.idle * 3);
    assert!(!relay.is_finished(), "closed while bytes moved");
    // Then silence ends it.
    assert_eq!(until_end(&mut client).await, b"");
    assert!(relay.await.unwrap().is_err());
}

#[tokio::test]
async fn one_direction_open_past_the_half_close_limit_is_closed() {
    let limits = RelayLimits {
        idle: Duration::from_secs(60),
        half_close: Duration::from_millis(300),
    };
    let (mut client, mut backend, relay) = relayed(limits).await;
    // The client ends its side; the backend never does, and never says a word.
    client.shutdown().await.unwrap();
    assert_eq!(until_end(&mut backend).await, b"");
    assert_eq!(until_end(&mut client).await, b"");
    let err = relay.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("after the other ended"), "{err}");
}
