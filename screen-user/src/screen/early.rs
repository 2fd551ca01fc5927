//! The tests before the greeting (postscreen's `postscreen_early.c`): the pregreet test.
//!
//! smtp-screen sends the `220-` teaser and waits `greet_wait`. A client that talks before
//! the final `220 ` is a pregreeter. Its input is only peeked at (at most 1023 bytes, as
//! postscreen does), so the dummy engine or the real MTA still reads it.

use std::{
    io,
    time::{Duration, Instant},
};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

/// How much early input is looked at (postscreen's `PSC_READ_BUF_SIZE` minus one).
pub const PEEK_LIMIT: usize = 1023;

/// What the client did during the greet wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GreetOutcome {
    /// Nothing: the client waited for its turn.
    Quiet,
    /// It talked first: `bytes` were waiting `after` the teaser went out.
    Pregreet {
        bytes: usize,
        after: Duration,
        input: Vec<u8>,
    },
    /// It hung up before the greeting.
    Hangup { after: Duration },
}

/// Sends the `220-<banner>` teaser that starts the greet wait.
pub async fn send_teaser(stream: &mut TcpStream, banner: &str) -> io::Result<()> {
    stream
        .write_all(format!("220-{banner}\r\n").as_bytes())
        .await
}

/// Waits until `start + wait` for input or a hang-up without consuming anything. The peek
/// buffer is taken only once the socket has something to read: a client that stays quiet,
/// as most do, holds none for the whole wait.
pub async fn watch(stream: &TcpStream, start: Instant, wait: Duration) -> io::Result<GreetOutcome> {
    let deadline = tokio::time::Instant::from_std(start + wait);
    let peeked = tokio::time::timeout_at(deadline, async {
        stream.readable().await?;
        let mut buf = vec![0u8; PEEK_LIMIT];
        let n = stream.peek(&mut buf).await?;
        buf.truncate(n);
        Ok::<_, io::Error>(buf)
    })
    .await;
    match peeked {
        Err(_elapsed) => Ok(GreetOutcome::Quiet),
        Ok(Ok(input)) if input.is_empty() => Ok(GreetOutcome::Hangup {
            after: start.elapsed(),
        }),
        Ok(Ok(input)) => Ok(GreetOutcome::Pregreet {
            bytes: input.len(),
            after: start.elapsed(),
            input,
        }),
        Ok(Err(e)) if is_reset(&e) => Ok(GreetOutcome::Hangup {
            after: start.elapsed(),
        }),
        Ok(Err(e)) => Err(e),
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncReadExt as _, net::TcpStream};

    use super::*;
    use crate::loopback::tcp_pair;

    /// The pregreet test as the server runs it: the teaser, then the watch.
    async fn pregreet_test(
        stream: &mut TcpStream,
        banner: &str,
        wait: Duration,
    ) -> io::Result<GreetOutcome> {
        send_teaser(stream, banner).await?;
        watch(stream, Instant::now(), wait).await
    }

    #[tokio::test]
    async fn a_quiet_client_waits_the_whole_time() {
        let (mut server, mut client) = tcp_pair().await;
        let start = Instant::now();
        let outcome = pregreet_test(
            &mut server,
            "mx.example.test ESMTP",
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        assert_eq!(outcome, GreetOutcome::Quiet);
        assert!(start.elapsed() >= Duration::from_millis(300));
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"220-mx.example.test ESMTP\r\n");
    }

    #[tokio::test]
    async fn a_pregreeter_is_caught_and_its_input_is_left_unread() {
        let (mut server, mut client) = tcp_pair().await;
        client.write_all(b"EHLO zombie.example\r\n").await.unwrap();
        let outcome = pregreet_test(&mut server, "mx", Duration::from_secs(5))
            .await
            .unwrap();
        let GreetOutcome::Pregreet {
            bytes,
            after,
            input,
        } = outcome
        else {
            panic!("not a pregreet: {outcome:?}");
        };
        assert_eq!(bytes, 21);
        assert_eq!(input, b"EHLO zombie.example\r\n");
        assert!(after < Duration::from_secs(5));
        // Peeked, not consumed: the next reader still sees it.
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"EHLO zombie.example\r\n");
    }

    #[tokio::test]
    async fn a_hangup_is_told_apart_from_talking() {
        let (mut server, client) = tcp_pair().await;
        drop(client);
        let outcome = pregreet_test(&mut server, "mx", Duration::from_secs(5)).await;
        // The teaser may hit the closed socket first; either way it is a hang-up, not input.
        match outcome {
            Ok(GreetOutcome::Hangup { .. }) => {}
            Err(e) => assert!(is_reset(&e), "{e}"),
            Ok(other) => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn early_input_is_capped() {
        let (mut server, mut client) = tcp_pair().await;
        client.write_all(&[b'x'; 4000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let outcome = pregreet_test(&mut server, "mx", Duration::from_secs(5))
            .await
            .unwrap();
        let GreetOutcome::Pregreet { bytes, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(bytes <= PEEK_LIMIT);
    }
}
