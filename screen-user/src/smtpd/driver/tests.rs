use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{DuplexStream, duplex},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsConnector;

use super::*;
use crate::{
    smtpd::{
        DeepTest,
        test_support::{HOST, PIPELINED, deep_engine, engine, engine_with, lines},
    },
    test_state::{Outcome as TestOutcome, TestAction},
};

const LIMIT: Duration = Duration::from_secs(5);

/// Runs `serve` in a task that closes its end when done.
fn spawn_serve(
    mut engine: Engine,
    limit: Duration,
) -> (DuplexStream, tokio::task::JoinHandle<(Outcome, Vec<Event>)>) {
    let (client, mut server) = duplex(64 * 1024);
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        let outcome = serve(
            &mut server,
            &mut engine,
            TimeLimits::fixed(limit, 20),
            |e| seen.push(e.clone()),
        )
        .await;
        drop(server);
        (outcome, seen)
    });
    (client, task)
}

/// Reads one complete reply (up to a line with a space after the code).
async fn read_reply<S: AsyncRead + Unpin>(client: &mut S) -> String {
    let mut text = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        if client.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        text.push(byte[0]);
        if text.ends_with(b"\r\n") {
            let line_start = text[..text.len() - 2]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            if text.get(line_start + 3) == Some(&b' ') {
                break;
            }
        }
    }
    String::from_utf8(text).unwrap()
}

#[tokio::test]
async fn a_full_session_over_a_stream() {
    let (mut client, task) = spawn_serve(engine(), LIMIT);
    assert_eq!(
        read_reply(&mut client).await,
        "220 mx.example.test ESMTP Postfix\r\n"
    );
    client.write_all(b"EHLO h.example\r\n").await.unwrap();
    assert!(read_reply(&mut client).await.ends_with("250 CHUNKING\r\n"));
    client
        .write_all(b"MAIL FROM:<s@example.org>\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut client).await, "250 2.1.0 Ok\r\n");
    // A command split across writes is still one command.
    client.write_all(b"RCPT TO:<r@exa").await.unwrap();
    tokio::task::yield_now().await;
    client.write_all(b"mple.test>\r\n").await.unwrap();
    assert_eq!(
        read_reply(&mut client).await,
        "450 4.3.2 Service currently unavailable\r\n"
    );
    client.write_all(b"QUIT\n").await.unwrap();
    assert_eq!(read_reply(&mut client).await, "221 2.0.0 Bye\r\n");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    let (outcome, seen) = task.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::Quit);
    assert!(outcome.rcpt_reached);
    assert_eq!(
        lines(&outcome.events),
        [
            "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
          unavailable; from=<s@example.org>, to=<r@example.test>, proto=ESMTP, \
          helo=<h.example>"
        ]
    );
    assert_eq!(seen, outcome.events);
}

#[tokio::test]
async fn a_session_sent_in_one_write_ends_at_data() {
    let (mut client, task) = spawn_serve(engine(), LIMIT);
    client
        .write_all(b"HELO h\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nNOOP\r\n")
        .await
        .unwrap();
    let mut transcript = Vec::new();
    client.read_to_end(&mut transcript).await.unwrap();
    assert_eq!(
        String::from_utf8(transcript).unwrap(),
        "220 mx.example.test ESMTP Postfix\r\n\
         250 mx.example.test\r\n\
         250 2.1.0 Ok\r\n\
         450 4.3.2 Service currently unavailable\r\n\
         554 5.5.1 Error: no valid recipients\r\n"
    );
    let (outcome, _) = task.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::DataRefused);
    assert_eq!(outcome.events.len(), 2);
    assert_eq!(outcome.events[1], Event::DataWithoutRcpt);
}

#[tokio::test(start_paused = true)]
async fn the_time_limit_covers_the_whole_line_against_a_trickling_client() {
    let started = Instant::now();
    let (mut client, task) = spawn_serve(engine(), LIMIT);
    assert_eq!(
        read_reply(&mut client).await,
        "220 mx.example.test ESMTP Postfix\r\n"
    );
    let writer = tokio::spawn(async move {
        // One byte a second, never a full line.
        for b in b"NOOP NOOP NOOP" {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if client.write_all(&[*b]).await.is_err() {
                break;
            }
        }
        client
    });
    let (outcome, _) = task.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(outcome.end, SessionEnd::CommandTimeLimit);
    assert!(
        elapsed >= LIMIT && elapsed < LIMIT + Duration::from_secs(1),
        "{elapsed:?}"
    );
    assert_eq!(
        lines(&outcome.events),
        ["COMMAND TIME LIMIT from [127.0.0.11]:58529 after CONNECT"]
    );
    let mut client = writer.await.unwrap();
    assert_eq!(
        read_reply(&mut client).await,
        "421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_times_out_after_the_last_command() {
    let started = Instant::now();
    let (mut client, task) = spawn_serve(engine(), LIMIT);
    read_reply(&mut client).await;
    // Commands every four seconds keep the session alive...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        client.write_all(b"NOOP\r\n").await.unwrap();
        assert_eq!(read_reply(&mut client).await, "250 2.0.0 Ok\r\n");
    }
    // ...then silence ends it five seconds after the last one.
    let (outcome, _) = task.await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(17));
    assert_eq!(outcome.end, SessionEnd::CommandTimeLimit);
    assert_eq!(
        lines(&outcome.events),
        ["COMMAND TIME LIMIT from [127.0.0.11]:58529 after NOOP"]
    );
}

#[tokio::test(start_paused = true)]
async fn end_of_input_is_a_hangup() {
    let (mut client, task) = spawn_serve(engine(), LIMIT);
    read_reply(&mut client).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // Half a command, then gone.
    client.write_all(b"EHLO ha").await.unwrap();
    drop(client);
    let (outcome, seen) = task.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::Hangup);
    assert!(!outcome.rcpt_reached);
    assert_eq!(
        lines(&outcome.events),
        ["HANGUP after 1.2 from [127.0.0.11]:58529 in tests after SMTP handshake"]
    );
    assert_eq!(seen, outcome.events);
}

#[tokio::test]
async fn a_hangup_after_rcpt_still_reached_rcpt() {
    let (mut client, task) = spawn_serve(engine(), LIMIT);
    client
        .write_all(b"EHLO h\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        .await
        .unwrap();
    let mut transcript = Vec::new();
    // Read the four replies, then hang up.
    while !String::from_utf8_lossy(&transcript).contains("450 4.3.2") {
        let mut buf = [0u8; 1024];
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0);
        transcript.extend_from_slice(&buf[..n]);
    }
    drop(client);
    let (outcome, _) = task.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::Hangup);
    assert!(outcome.rcpt_reached);
    assert!(matches!(outcome.events[1], Event::Hangup { .. }));
}

#[tokio::test]
async fn an_overlong_line_gets_421_without_being_buffered() {
    let (mut client, task) = spawn_serve(engine(), LIMIT);
    read_reply(&mut client).await;
    client.write_all(b"EHLO h\r\n").await.unwrap();
    read_reply(&mut client).await;
    let writer = tokio::spawn(async move {
        let junk = vec![b'A'; 1 << 20];
        // The server stops reading long before the end; the write then fails.
        let _ = client.write_all(&junk).await;
        client
    });
    let (outcome, _) = task.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::CommandLengthLimit);
    assert_eq!(
        lines(&outcome.events),
        ["COMMAND LENGTH LIMIT from [127.0.0.11]:58529 after EHLO"]
    );
    let mut client = writer.await.unwrap();
    assert_eq!(
        read_reply(&mut client).await,
        "421 mx.example.test Service unavailable - try again later\r\n"
    );
}

#[tokio::test]
async fn a_pregreeter_gets_no_greeting() {
    let mut engine = engine();
    engine.set_pregreeted();
    let (mut client, task) = spawn_serve(engine, LIMIT);
    client.write_all(b"QUIT\r\n").await.unwrap();
    let mut transcript = Vec::new();
    client.read_to_end(&mut transcript).await.unwrap();
    assert_eq!(transcript, b"221 2.0.0 Bye\r\n");
    assert_eq!(task.await.unwrap().0.end, SessionEnd::Quit);
}

#[tokio::test]
async fn starttls_hands_the_stream_back_and_drops_buffered_input() {
    let (mut client, mut server) = duplex(4096);
    let mut engine = engine_with(|s| s.starttls_offered = true);
    // A command injected behind STARTTLS must not be answered.
    client
        .write_all(b"EHLO h\r\nSTARTTLS\r\nMAIL FROM:<injected@x>\r\n")
        .await
        .unwrap();
    let outcome = serve(
        &mut server,
        &mut engine,
        TimeLimits::fixed(LIMIT, 20),
        |_| {},
    )
    .await;
    assert_eq!(outcome.end, SessionEnd::StartTls);
    assert_eq!(engine.sender(), None);
    // Here the caller would send Reply::starttls_ready() and do the handshake.
    engine.tls_established();
    client.write_all(b"QUIT\r\n").await.unwrap();
    let outcome = serve(
        &mut server,
        &mut engine,
        TimeLimits::fixed(LIMIT, 20),
        |_| {},
    )
    .await;
    assert_eq!(outcome.end, SessionEnd::Quit);
    drop(server);
    let mut transcript = Vec::new();
    client.read_to_end(&mut transcript).await.unwrap();
    let transcript = String::from_utf8(transcript).unwrap();
    assert!(transcript.starts_with("220 mx.example.test ESMTP Postfix\r\n250-"));
    // No second greeting, no reply to the injected MAIL.
    assert!(
        transcript.ends_with("250 CHUNKING\r\n221 2.0.0 Bye\r\n"),
        "{transcript}"
    );
}

#[tokio::test]
async fn a_client_that_is_gone_before_the_reply_is_a_hangup() {
    let (mut client, task) = spawn_serve(engine(), LIMIT);
    client.write_all(b"NOOP\r\n").await.unwrap();
    drop(client);
    let (outcome, _) = task.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::Hangup);
    assert!(matches!(outcome.events[..], [Event::Hangup { .. }]));
}

// Deep tests over a stream

/// The lab's deep test settings: pipelining enforce, non-SMTP drop, bare newline enforce.
fn lab_engine() -> Engine {
    deep_engine(|d| {
        d.pipelining = Some(TestAction::Enforce);
        d.non_smtp_command = Some(TestAction::Drop);
        d.bare_newline = Some(TestAction::Enforce);
    })
}

#[tokio::test]
async fn lab_pipelined_ehlo_and_mail_get_550_at_rcpt() {
    let (mut client, task) = spawn_serve(lab_engine(), LIMIT);
    read_reply(&mut client).await;
    client.write_all(PIPELINED).await.unwrap();
    assert!(read_reply(&mut client).await.ends_with("250 CHUNKING\r\n"));
    assert_eq!(read_reply(&mut client).await, "250 2.1.0 Ok\r\n");
    client
        .write_all(b"RCPT TO:<r@example.test>\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_reply(&mut client).await,
        "550 5.5.1 Protocol error\r\n"
    );
    client.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(read_reply(&mut client).await, "221 2.0.0 Bye\r\n");
    let (outcome, seen) = task.await.unwrap();
    assert_eq!(
        lines(&outcome.events)[0],
        "COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: MAIL FROM:<p@example.org>\\r\\n"
    );
    assert_eq!(seen, outcome.events);
    assert_eq!(
        outcome.deep_tests,
        DeepTestResults {
            pipelining: TestOutcome::Failed,
            non_smtp_command: TestOutcome::Passed,
            bare_newline: TestOutcome::Passed,
        }
    );
}

#[tokio::test]
async fn lab_http_request_gets_521_and_the_connection_closes() {
    let (mut client, task) = spawn_serve(lab_engine(), LIMIT);
    read_reply(&mut client).await;
    client.write_all(b"EHLO h.example\r\n").await.unwrap();
    read_reply(&mut client).await;
    client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        rest,
        b"521 5.7.0 Error: I can break rules, too. Goodbye.\r\n"
    );
    let (outcome, _) = task.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::Dropped(DeepTest::NonSmtpCommand));
    assert_eq!(
        lines(&outcome.events),
        ["NON-SMTP COMMAND from [127.0.0.11]:58529 after EHLO: GET / HTTP/1.0"]
    );
    assert!(!outcome.rcpt_reached);
    assert_eq!(outcome.deep_tests.non_smtp_command, TestOutcome::Failed);
    assert_eq!(outcome.deep_tests.pipelining, TestOutcome::NotCompleted);
}

#[tokio::test]
async fn a_clean_client_passes_the_deep_tests_over_a_stream() {
    let (mut client, task) = spawn_serve(lab_engine(), LIMIT);
    read_reply(&mut client).await;
    for (command, reply_end) in [
        (&b"EHLO h.example\r\n"[..], "250 CHUNKING\r\n"),
        (b"MAIL FROM:<s@example.org>\r\n", "250 2.1.0 Ok\r\n"),
        (
            b"RCPT TO:<r@example.test>\r\n",
            "450 4.3.2 Service currently unavailable\r\n",
        ),
    ] {
        // One byte at a time, each command after the last reply: never pipelining.
        for byte in command {
            client.write_all(&[*byte]).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert!(read_reply(&mut client).await.ends_with(reply_end));
    }
    drop(client);
    let (outcome, _) = task.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::Hangup);
    assert_eq!(
        outcome.deep_tests,
        DeepTestResults {
            pipelining: TestOutcome::Passed,
            non_smtp_command: TestOutcome::Passed,
            bare_newline: TestOutcome::Passed,
        }
    );
}

// STARTTLS

/// An acceptor for `mx.example.test` and the PEM of the CA that signed it.
fn test_tls() -> (TlsAcceptor, String) {
    let (ca, cert, key) = crate::smtpd::tls::tests::test_pki(HOST);
    let acceptor = crate::smtpd::tls::acceptor_from_pem(
        cert.as_bytes(),
        Path::new("cert.pem"),
        key.as_bytes(),
        Path::new("key.pem"),
    )
    .unwrap();
    (acceptor, ca)
}

fn tls_connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

fn tls_engine() -> Engine {
    engine_with(|s| s.starttls_offered = true)
}

/// Runs `serve_with_tls` over `stream` in a task.
fn spawn_serve_with_tls<S>(
    stream: S,
    engine: Engine,
    acceptor: Option<TlsAcceptor>,
    handshake_time_limit: Duration,
) -> tokio::task::JoinHandle<(Outcome, Vec<Event>, u32)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = TimeLimits::fixed(LIMIT, 20);
    spawn_serve_with_limits(stream, engine, acceptor, handshake_time_limit, limits)
}

/// [`spawn_serve_with_tls`] under `limits`.
fn spawn_serve_with_limits<S>(
    stream: S,
    mut engine: Engine,
    acceptor: Option<TlsAcceptor>,
    handshake_time_limit: Duration,
    limits: TimeLimits<'static>,
) -> tokio::task::JoinHandle<(Outcome, Vec<Event>, u32)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let starttls = acceptor.as_ref().map(|acceptor| StartTls {
            acceptor,
            handshake_time_limit,
        });
        let mut seen = Vec::new();
        let outcome = serve_with_tls(stream, &mut engine, limits, starttls, |e| {
            seen.push(e.clone())
        })
        .await;
        (outcome, seen, engine.command_count())
    })
}

/// A stress flag the test turns on and off, and time limits that read it: 300 s for a
/// command normally, 10 s under stress (postscreen's defaults), `session` in all.
fn stress_limits(session: Duration) -> (&'static AtomicBool, TimeLimits<'static>) {
    let flag: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let stressed: &'static (dyn Fn() -> bool + Sync) =
        Box::leak(Box::new(move || flag.load(Ordering::Relaxed)));
    let limits = TimeLimits {
        command: StressDuration {
            normal: Duration::from_secs(300),
            stress: Duration::from_secs(10),
        },
        stressed,
        session,
    };
    (flag, limits)
}

#[tokio::test(start_paused = true)]
async fn stress_reaches_a_session_waiting_for_its_command() {
    let (stress, limits) = stress_limits(Duration::from_secs(3_600));
    let (mut client, server) = duplex(64 * 1024);
    let task = spawn_serve_with_limits(server, engine(), None, LIMIT, limits);
    read_reply(&mut client).await;
    client.write_all(b"EHLO c\r\n").await.unwrap();
    read_reply(&mut client).await;
    let asked = Instant::now();
    // Normal mode: the next command may take 300 s; after 30 s the daemon comes under
    // stress, whose limit of 10 s has passed already.
    tokio::time::sleep(Duration::from_secs(30)).await;
    stress.store(true, Ordering::Relaxed);
    let (outcome, _, _) = task.await.unwrap();
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_secs(31),
        "{waited:?}"
    );
    assert_eq!(outcome.end, SessionEnd::CommandTimeLimit);
    assert_eq!(
        lines(&outcome.events),
        ["COMMAND TIME LIMIT from [127.0.0.11]:58529 after EHLO"]
    );
    assert_eq!(
        read_reply(&mut client).await,
        "421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
    );
}

#[tokio::test(start_paused = true)]
async fn each_command_gets_the_limit_in_force_when_it_is_awaited() {
    let (stress, limits) = stress_limits(Duration::from_secs(3_600));
    stress.store(true, Ordering::Relaxed);
    let (mut client, server) = duplex(64 * 1024);
    let task = spawn_serve_with_limits(server, engine(), None, LIMIT, limits);
    read_reply(&mut client).await;
    // Under stress a command has 10 s; once stress is over, 300 s again.
    tokio::time::sleep(Duration::from_secs(9)).await;
    client.write_all(b"NOOP\r\n").await.unwrap();
    assert_eq!(read_reply(&mut client).await, "250 2.0.0 Ok\r\n");
    stress.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(200)).await;
    client.write_all(b"NOOP\r\n").await.unwrap();
    assert_eq!(read_reply(&mut client).await, "250 2.0.0 Ok\r\n");
    assert!(!task.is_finished());
    drop(client);
    let (outcome, _, _) = task.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::Hangup);
}

#[tokio::test(start_paused = true)]
async fn a_busy_session_ends_at_the_session_time_limit() {
    let started = Instant::now();
    let (_, limits) = stress_limits(Duration::from_secs(20));
    let (mut client, server) = duplex(64 * 1024);
    let task = spawn_serve_with_limits(server, engine(), None, LIMIT, limits);
    read_reply(&mut client).await;
    // A command every three seconds, each well inside the command time limit.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        client.write_all(b"NOOP\r\n").await.unwrap();
        assert_eq!(read_reply(&mut client).await, "250 2.0.0 Ok\r\n");
    }
    // The seventh would come at 21 s: the session is over at 20 s.
    let (outcome, _, _) = task.await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    assert_eq!(
        read_reply(&mut client).await,
        "421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
    );
    assert_eq!(outcome.end, SessionEnd::CommandTimeLimit);
    assert_eq!(
        lines(&outcome.events),
        ["COMMAND TIME LIMIT from [127.0.0.11]:58529 after NOOP"]
    );
}

#[tokio::test(start_paused = true)]
async fn the_session_time_limit_covers_the_tls_handshake() {
    let (acceptor, _) = test_tls();
    let (mut client, server) = duplex(64 * 1024);
    let started = Instant::now();
    let (_, limits) = stress_limits(Duration::from_secs(20));
    let handshake_limit = Duration::from_secs(300);
    let task = spawn_serve_with_limits(
        server,
        tls_engine(),
        Some(acceptor),
        handshake_limit,
        limits,
    );
    read_reply(&mut client).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    client.write_all(b"STARTTLS\r\n").await.unwrap();
    read_reply(&mut client).await;
    // Silence: no ClientHello. The handshake alone may take 300 s; the session 20 s.
    let (outcome, _, _) = task.await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    assert_eq!(
        lines(&outcome.events)[0],
        "SSL_accept error from [127.0.0.11]:58529: handshake timed out"
    );
    assert_eq!(outcome.end, SessionEnd::Hangup);
    drop(client);
}

#[tokio::test]
async fn starttls_over_loopback_tcp() {
    let (acceptor, ca) = test_tls();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        spawn_serve_with_tls(stream, tls_engine(), Some(acceptor), LIMIT)
            .await
            .unwrap()
    });

    let mut tcp = TcpStream::connect(address).await.unwrap();
    assert_eq!(
        read_reply(&mut tcp).await,
        "220 mx.example.test ESMTP Postfix\r\n"
    );
    tcp.write_all(b"EHLO c.example\r\n").await.unwrap();
    assert!(read_reply(&mut tcp).await.contains("\r\n250-STARTTLS\r\n"));
    // Commands injected behind STARTTLS, in the same segment: never to be run.
    tcp.write_all(
        b"STARTTLS\r\nMAIL FROM:<injected@example.net>\r\nRCPT TO:<injected@example.test>\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        read_reply(&mut tcp).await,
        "220 2.0.0 Ready to start TLS\r\n"
    );
    let mut tls = tls_connector(&ca)
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();

    // No second greeting; EHLO no longer offers STARTTLS.
    tls.write_all(b"EHLO c.example\r\n").await.unwrap();
    let ehlo = read_reply(&mut tls).await;
    assert!(ehlo.starts_with("250-mx.example.test\r\n"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    for (command, reply) in [
        ("STARTTLS", "554 5.5.1 Error: TLS already active"),
        // Not "nested MAIL": the injected MAIL was never run.
        ("MAIL FROM:<s@example.org>", "250 2.1.0 Ok"),
        (
            "RCPT TO:<r@example.test>",
            "450 4.3.2 Service currently unavailable",
        ),
        ("QUIT", "221 2.0.0 Bye"),
    ] {
        tls.write_all(format!("{command}\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_reply(&mut tls).await, format!("{reply}\r\n"));
    }
    // The server ends the TLS session properly: a clean end of input.
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    let (outcome, seen, commands) = server.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::Quit);
    assert!(outcome.rcpt_reached);
    let logged = lines(&outcome.events);
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(
        logged[0].starts_with(
            "Anonymous TLS connection established from [127.0.0.11]:58529: TLSv1.3 with \
             cipher TLS_"
        ),
        "{logged:?}"
    );
    assert!(logged[0].ends_with(" bits)"), "{logged:?}");
    assert_eq!(
        logged[1],
        "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
         unavailable; from=<s@example.org>, to=<r@example.test>, proto=ESMTP, \
         helo=<c.example>"
    );
    assert_eq!(seen, outcome.events);
    // EHLO, STARTTLS, EHLO, STARTTLS, MAIL, RCPT, QUIT: the injected commands were never
    // read, and the count goes on across the upgrade.
    assert_eq!(commands, 7);
}

#[tokio::test]
async fn a_pipelined_starttls_is_logged_and_its_followers_dropped() {
    let (acceptor, ca) = test_tls();
    let (mut client, server) = duplex(64 * 1024);
    let mut engine = tls_engine();
    engine.set_deep_test(DeepTest::Pipelining, Some(TestAction::Enforce));
    let task = spawn_serve_with_tls(server, engine, Some(acceptor), LIMIT);
    read_reply(&mut client).await;
    client
        .write_all(b"STARTTLS\r\nRCPT TO:<injected@example.test>\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_reply(&mut client).await,
        "220 2.0.0 Ready to start TLS\r\n"
    );
    let mut tls = tls_connector(&ca)
        .connect(ServerName::try_from(HOST).unwrap(), client)
        .await
        .unwrap();
    tls.write_all(b"MAIL FROM:<s@x>\r\n").await.unwrap();
    assert_eq!(read_reply(&mut tls).await, "250 2.1.0 Ok\r\n");
    tls.write_all(b"RCPT TO:<r@y>\r\n").await.unwrap();
    // The pipelining failure still holds over TLS.
    assert_eq!(read_reply(&mut tls).await, "550 5.5.1 Protocol error\r\n");
    drop(tls);
    let (outcome, _, _) = task.await.unwrap();
    let logged = lines(&outcome.events);
    assert_eq!(
        logged[0],
        "COMMAND PIPELINING from [127.0.0.11]:58529 after STARTTLS: RCPT \
         TO:<injected@example.test>\\r\\n"
    );
    assert!(logged[1].starts_with("Anonymous TLS connection established"));
    // One RCPT logged: the one sent over TLS.
    assert_eq!(
        logged.iter().filter(|l| l.starts_with("NOQUEUE")).count(),
        1
    );
    assert!(logged[2].contains("to=<r@y>"), "{logged:?}");
    assert_eq!(outcome.end, SessionEnd::Hangup);
    assert_eq!(outcome.deep_tests.pipelining, TestOutcome::Failed);
}

#[tokio::test]
async fn a_failed_handshake_ends_the_session_with_tlsproxys_line() {
    let (acceptor, _) = test_tls();
    let (mut client, server) = duplex(64 * 1024);
    let task = spawn_serve_with_tls(server, tls_engine(), Some(acceptor), LIMIT);
    read_reply(&mut client).await;
    client.write_all(b"STARTTLS\r\n").await.unwrap();
    assert_eq!(
        read_reply(&mut client).await,
        "220 2.0.0 Ready to start TLS\r\n"
    );
    // Not a ClientHello.
    client
        .write_all(b"EHLO plaintext.example\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    // Nothing was answered in plaintext: at most a TLS alert record (type 21).
    assert!(rest.is_empty() || rest[0] == 21, "{rest:?}");
    let (outcome, _, _) = task.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::Hangup);
    let logged = lines(&outcome.events);
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(
        logged[0].starts_with("SSL_accept error from [127.0.0.11]:58529: "),
        "{logged:?}"
    );
    assert!(!logged[0].contains("lost connection"), "{logged:?}");
    assert!(logged[1].starts_with("HANGUP after "), "{logged:?}");
}

#[tokio::test]
async fn a_client_gone_during_the_handshake_lost_the_connection() {
    let (acceptor, _) = test_tls();
    let (mut client, server) = duplex(64 * 1024);
    let task = spawn_serve_with_tls(server, tls_engine(), Some(acceptor), LIMIT);
    read_reply(&mut client).await;
    client.write_all(b"STARTTLS\r\n").await.unwrap();
    read_reply(&mut client).await;
    drop(client);
    let (outcome, _, _) = task.await.unwrap();
    assert_eq!(
        lines(&outcome.events)[0],
        "SSL_accept error from [127.0.0.11]:58529: lost connection"
    );
    assert_eq!(outcome.end, SessionEnd::Hangup);
}

#[tokio::test(start_paused = true)]
async fn the_handshake_has_a_time_limit() {
    let (acceptor, _) = test_tls();
    let (mut client, server) = duplex(64 * 1024);
    let handshake_limit = Duration::from_secs(30);
    let task = spawn_serve_with_tls(server, tls_engine(), Some(acceptor), handshake_limit);
    read_reply(&mut client).await;
    client.write_all(b"STARTTLS\r\n").await.unwrap();
    read_reply(&mut client).await;
    let asked = Instant::now();
    // Silence: no ClientHello.
    let (outcome, _, _) = task.await.unwrap();
    assert_eq!(asked.elapsed(), handshake_limit);
    assert_eq!(
        lines(&outcome.events)[0],
        "SSL_accept error from [127.0.0.11]:58529: handshake timed out"
    );
    assert_eq!(outcome.end, SessionEnd::Hangup);
    drop(client);
}

#[tokio::test]
async fn without_a_certificate_starttls_gets_454_and_plaintext_goes_on() {
    let (mut client, server) = duplex(64 * 1024);
    let task = spawn_serve_with_tls(server, tls_engine(), None, LIMIT);
    client
        .write_all(b"EHLO c\r\nSTARTTLS\r\nNOOP\r\nQUIT\r\n")
        .await
        .unwrap();
    let mut transcript = Vec::new();
    client.read_to_end(&mut transcript).await.unwrap();
    let transcript = String::from_utf8(transcript).unwrap();
    // One greeting; the command after STARTTLS is still answered, in plaintext.
    assert_eq!(transcript.matches("220 mx.example.test").count(), 1);
    assert!(
        transcript.ends_with(
            "250 CHUNKING\r\n454 4.7.0 TLS not available due to local problem\r\n\
             250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"
        ),
        "{transcript}"
    );
    let (outcome, _, _) = task.await.unwrap();
    assert_eq!(outcome.end, SessionEnd::Quit);
}

#[tokio::test]
async fn starttls_not_offered_is_not_implemented_even_with_a_certificate() {
    let (acceptor, _) = test_tls();
    let (mut client, server) = duplex(64 * 1024);
    let task = spawn_serve_with_tls(server, engine(), Some(acceptor), LIMIT);
    client
        .write_all(b"EHLO c\r\nSTARTTLS\r\nQUIT\r\n")
        .await
        .unwrap();
    let mut transcript = Vec::new();
    client.read_to_end(&mut transcript).await.unwrap();
    let transcript = String::from_utf8(transcript).unwrap();
    assert!(!transcript.contains("250-STARTTLS"));
    assert!(
        transcript.ends_with(
            "250 CHUNKING\r\n502 5.5.1 Error: command not implemented\r\n221 2.0.0 Bye\r\n"
        ),
        "{transcript}"
    );
    assert_eq!(task.await.unwrap().0.end, SessionEnd::Quit);
}
