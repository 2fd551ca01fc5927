//! The userspace relay: the daemon copies every byte between client and backend itself.

use std::io;

use tokio::net::TcpStream;

use super::Relayed;

/// Copies bytes between client and backend until both directions are done.
pub(crate) async fn run(mut client: TcpStream, mut backend: TcpStream) -> io::Result<Relayed> {
    let (up, down) = tokio::io::copy_bidirectional(&mut client, &mut backend).await?;
    Ok(Relayed {
        up,
        down,
        in_kernel: false,
    })
}
