//! One TCP connection on loopback, both ends in hand: what the tests of the stages that run on
//! a client's connection start from.

use tokio::net::{TcpListener, TcpStream};

/// The server's end of a fresh connection on 127.0.0.1, as `accept` hands it to the daemon,
/// and the client's end.
pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener on 127.0.0.1");
    let client = TcpStream::connect(listener.local_addr().expect("the listener's address"))
        .await
        .expect("a connection to the listener");
    let (server, _) = listener.accept().await.expect("the accepted connection");
    (server, client)
}
