//! The end of a connection that got a final reply: the reply must reach the client before
//! the socket goes.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{Reply, ReplyStyle};

/// How long input still arriving is read and discarded after the write side is shut.
const LINGER: Duration = Duration::from_secs(1);
/// The most input discarded that way.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Sends `reply` as `style` makes it for `client` (soft_bounce, the footer with its macros
/// expanded for `server_name`), then closes.
pub(crate) async fn reply_and_close(
    stream: &mut TcpStream,
    reply: &Reply,
    style: &ReplyStyle,
    client: SocketAddr,
    server_name: &str,
) {
    let reply = style.apply(reply, client, server_name);
    // The client may be gone; there is nothing else to tell it.
    let _ = stream.write_all(&reply.to_bytes()).await;
    close(stream).await;
}

/// Closes a connection so that the last reply reaches the client: the write side is shut
/// first, then input still arriving is read and discarded for a moment (bounded), because
/// closing a socket with unread input makes the kernel reset the connection and the client
/// may lose the reply.
pub(crate) async fn close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    // On the heap: a buffer here would be part of every connection's task for its whole life.
    let mut buf = vec![0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}
