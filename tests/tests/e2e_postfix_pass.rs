//! `handoff = "postfix"` end to end: a real Postfix with smtpd's `pass` service in a server
//! network namespace, and a listener in the same namespace that accepts each client and hands
//! its socket to smtpd with [`pass_to_smtpd`], as postscreen does. Clients connect from a
//! client namespace and must end up talking to smtpd directly: smtpd's greeting, a mail
//! transaction that Postfix delivers, and smtpd logging the client's own address, which it can
//! only have learnt from the pass attributes and the socket that was passed.
//!
//! Also: a Postfix without the pass service, and a stopped one, where the hand-off fails at
//! once in postscreen's words and the client hears postscreen's reply; and an smtpd too busy to
//! take the client within the notify timeout, which still serves it once it is free.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use screen_tests::{
    daemon::{Bed, SMTP_PORT},
    netns::stream_from,
    postfix::{MAIL_DOMAIN, Postfix, PostfixConfig},
    require_root,
};
use screen_user::handoff::postfix::{
    CONNECT_TIMEOUT, NOTIFY_TIMEOUT, PassError, PassFailure, pass_to_smtpd,
};

/// Where Postfix's own `inet` smtpd listens, out of the way of the hand-off listener.
const POSTFIX_PORT: u16 = 10025;
/// smtpd's greeting (the harness's `smtpd_banner`).
const SMTPD_GREETING: &str = "220 mx.example.test ESMTP Postfix";

const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// Upper bound for a reply that is due at once.
const REPLY_WAIT: Duration = Duration::from_secs(10);
/// Upper bound for master to create the pass service's socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// Upper bound for one hand-off, smtpd's confirmation included.
const HANDOFF_WAIT: Duration = Duration::from_secs(10);
/// Upper bound for Postfix to deliver an accepted message or log a line.
const DELIVERY_WAIT: Duration = Duration::from_secs(15);

/// Postfix on the server's IPv4 address, port [`POSTFIX_PORT`], with or without smtpd's pass
/// service.
fn start_postfix(bed: &Bed, pass_service: bool) -> Postfix {
    let mut config = PostfixConfig::new(SocketAddr::new(bed.server_v4(), POSTFIX_PORT));
    if pass_service {
        config = config.smtpd_pass_service();
    }
    Postfix::start(&bed.server, &config).expect("starting Postfix")
}

/// Connects from `client`, an address of the client, to the server's address of its family,
/// port 25.
fn connect(bed: &Bed, client: IpAddr) -> Session {
    let stream = stream_from(&bed.client, client, bed.smtp_addr(client), CONNECT_LIMIT)
        .expect("connecting to the hand-off listener");
    Session::new(stream)
}

/// What the hand-off listener did with one client.
#[derive(Debug)]
enum Handoff {
    /// smtpd closed the channel after this long.
    TakenOver(Duration),
    /// smtpd did not close the channel within the notify timeout.
    Unconfirmed { error: String, after: Duration },
    /// The hand-off failed after this long; the client was sent postscreen's reply.
    Failed {
        error: String,
        /// What kind of connect error it was, for a failed connect.
        connect: Option<ErrorKind>,
        after: Duration,
    },
}

/// Accepts one client on `listen` in the server namespace and hands it to the pass service at
/// `socket` on a thread of its own, as the daemon would: on success it waits up to `notify` for
/// smtpd's confirmation; on failure it writes postscreen's reply to the client and closes.
fn hand_off_one(
    bed: &Bed,
    listen: SocketAddr,
    socket: PathBuf,
    notify: Duration,
) -> thread::JoinHandle<Handoff> {
    let listener = bed
        .server
        .run(|| std::net::TcpListener::bind(listen))
        .expect("entering the server netns")
        .expect("binding the hand-off listener");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let (stream, client_addr) = tokio::time::timeout(HANDOFF_WAIT, listener.accept())
                .await
                .expect("no client connected")
                .expect("accept");
            let server_addr = stream.local_addr().expect("local address");
            let started = Instant::now();
            match pass_to_smtpd(
                &socket,
                stream,
                client_addr,
                server_addr,
                CONNECT_TIMEOUT,
                notify,
            )
            .await
            {
                Ok(handle) => match handle.taken_over().await {
                    Ok(()) => Handoff::TakenOver(started.elapsed()),
                    Err(error) => Handoff::Unconfirmed {
                        error: error.to_string(),
                        after: started.elapsed(),
                    },
                },
                Err(PassFailure { error, client }) => {
                    let after = started.elapsed();
                    let reply = error.client_reply(false).expect("a reply for the client");
                    let mut client = client;
                    tokio::io::AsyncWriteExt::write_all(&mut client, &reply.to_bytes())
                        .await
                        .expect("writing the reply");
                    let connect = match &error {
                        PassError::Connect { source, .. } => Some(source.kind()),
                        _ => None,
                    };
                    Handoff::Failed {
                        error: error.to_string(),
                        connect,
                        after,
                    }
                }
            }
        })
    })
}

/// A client's side of an SMTP session.
struct Session {
    reader: BufReader<TcpStream>,
}

impl Session {
    fn new(stream: TcpStream) -> Self {
        stream
            .set_read_timeout(Some(REPLY_WAIT))
            .expect("read timeout");
        Self {
            reader: BufReader::new(stream),
        }
    }

    /// The lines of one reply, CRLF removed; empty when the server closed the connection.
    fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return lines,
                Ok(_) => {}
                Err(e) => panic!("reading a reply after {lines:?}: {e}"),
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    fn send(&mut self, text: &str) {
        self.reader
            .get_mut()
            .write_all(text.as_bytes())
            .expect("sending to the server");
    }

    /// Sends one command line and returns the last line of the reply.
    fn command(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply().pop().unwrap_or_default()
    }
}

fn expect_code(reply: &str, code: &str, after: &str) {
    assert!(
        reply.starts_with(code),
        "expected {code} after {after}, got {reply:?}"
    );
}

#[test]
fn passed_clients_talk_to_smtpd_directly_and_their_mail_is_delivered() {
    if !require_root("passed_clients_talk_to_smtpd_directly_and_their_mail_is_delivered") {
        return;
    }
    let bed = Bed::new("postfix-pass", &[2]);
    let postfix = start_postfix(&bed, true);
    let socket = postfix
        .wait_for_pass_socket("smtpd", SOCKET_WAIT)
        .expect("the pass service's socket");
    // What an unprivileged daemon runs into (see the postfix_pass module docs).
    let private = std::fs::metadata(socket.parent().unwrap()).expect("private/");
    let postfix_uid = screen_user::privileges::lookup("postfix").unwrap().uid;
    assert_eq!(
        (private.mode() & 0o777, private.uid()),
        (0o700, postfix_uid),
        "private/ is the mail owner's alone"
    );

    // IPv4: a whole mail transaction with smtpd, which Postfix delivers.
    let listen = SocketAddr::new(bed.v4(1), SMTP_PORT);
    let acceptor = hand_off_one(&bed, listen, socket.clone(), NOTIFY_TIMEOUT);
    let client = bed.v4(2);
    let mut session = connect(&bed, client);
    assert_eq!(session.reply(), [SMTPD_GREETING]);
    match acceptor.join().expect("hand-off thread") {
        Handoff::TakenOver(after) => assert!(after < HANDOFF_WAIT, "{after:?}"),
        failed => panic!("the hand-off failed: {failed:?}\nlog:\n{}", postfix.log()),
    }
    let marker = format!("pass-{}-{}", std::process::id(), bed.n);
    expect_code(&session.command("EHLO client.example"), "250", "EHLO");
    expect_code(
        &session.command("MAIL FROM:<sender@client.example>"),
        "250",
        "MAIL",
    );
    expect_code(
        &session.command(&format!("RCPT TO:<someone@{MAIL_DOMAIN}>")),
        "250",
        "RCPT",
    );
    expect_code(&session.command("DATA"), "354", "DATA");
    session.send(&format!(
        "Subject: {marker}\r\n\r\nHanded over by file descriptor.\r\n.\r\n"
    ));
    expect_code(
        &session.reply().pop().unwrap_or_default(),
        "250",
        "the message",
    );
    expect_code(&session.command("QUIT"), "221", "QUIT");
    assert!(
        postfix.wait_for_mail(&marker, DELIVERY_WAIT),
        "the message was not delivered; log:\n{}",
        postfix.log()
    );
    let seen = format!("connect from unknown[{client}]");
    assert!(
        postfix.wait_for_log(&seen, DELIVERY_WAIT).is_some(),
        "smtpd did not log {seen:?}:\n{}",
        postfix.log()
    );
    let received = format!("from client.example (unknown [{client}])");
    assert!(
        postfix.mailbox().contains(&received),
        "no Received: header {received:?} in:\n{}",
        postfix.mailbox()
    );

    // IPv6: the address goes bare in the attributes, and smtpd logs it as it is.
    let listen = SocketAddr::new(bed.v6(1), SMTP_PORT);
    let acceptor = hand_off_one(&bed, listen, socket.clone(), NOTIFY_TIMEOUT);
    let client = bed.v6(2);
    let mut session = connect(&bed, client);
    assert_eq!(session.reply(), [SMTPD_GREETING]);
    assert!(matches!(
        acceptor.join().expect("hand-off thread"),
        Handoff::TakenOver(_)
    ));
    expect_code(&session.command("QUIT"), "221", "QUIT");
    let seen = format!("connect from unknown[{client}]");
    assert!(
        postfix.wait_for_log(&seen, DELIVERY_WAIT).is_some(),
        "smtpd did not log {seen:?}:\n{}",
        postfix.log()
    );
    assert!(
        !postfix.log().contains("from proxy"),
        "smtpd complained about the pass attributes:\n{}",
        postfix.log()
    );
}

#[test]
fn without_the_pass_service_the_client_hears_that_all_server_ports_are_busy() {
    if !require_root("without_the_pass_service_the_client_hears_that_all_server_ports_are_busy") {
        return;
    }
    let bed = Bed::new("postfix-pass", &[2]);
    let postfix = start_postfix(&bed, false);
    let socket = postfix.pass_socket("smtpd");
    assert!(!socket.exists(), "{} exists", socket.display());

    let listen = SocketAddr::new(bed.v4(1), SMTP_PORT);
    let acceptor = hand_off_one(&bed, listen, socket, NOTIFY_TIMEOUT);
    let mut session = connect(&bed, bed.v4(2));
    assert_eq!(session.reply(), ["421 4.3.2 All server ports are busy"]);
    assert!(session.reply().is_empty(), "the connection is closed");
    match acceptor.join().expect("hand-off thread") {
        Handoff::Failed {
            error,
            connect,
            after,
        } => {
            assert_eq!(
                error,
                "cannot connect to service private/smtpd: No such file or directory"
            );
            assert_eq!(connect, Some(ErrorKind::NotFound));
            assert!(after < CONNECT_TIMEOUT, "took {after:?}");
        }
        taken => panic!("handed over without a pass service: {taken:?}"),
    }
    assert!(
        !postfix.log().contains("connect from"),
        "smtpd saw a client:\n{}",
        postfix.log()
    );
}

#[test]
fn a_stopped_postfix_refuses_the_hand_off_at_once() {
    if !require_root("a_stopped_postfix_refuses_the_hand_off_at_once") {
        return;
    }
    let bed = Bed::new("postfix-pass", &[2]);
    let mut postfix = start_postfix(&bed, true);
    let socket = postfix
        .wait_for_pass_socket("smtpd", SOCKET_WAIT)
        .expect("the pass service's socket");
    postfix.stop().expect("stopping Postfix");
    let acceptor = hand_off_one(
        &bed,
        SocketAddr::new(bed.v4(1), SMTP_PORT),
        socket,
        NOTIFY_TIMEOUT,
    );
    let mut session = connect(&bed, bed.v4(2));
    assert_eq!(session.reply(), ["421 4.3.2 All server ports are busy"]);
    match acceptor.join().expect("hand-off thread") {
        Handoff::Failed {
            error,
            connect,
            after,
        } => {
            // master leaves its socket behind, with nobody listening.
            assert_eq!(
                error,
                "cannot connect to service private/smtpd: Connection refused"
            );
            assert_eq!(connect, Some(ErrorKind::ConnectionRefused));
            assert!(after < CONNECT_TIMEOUT, "took {after:?}");
        }
        taken => panic!("handed over to a stopped Postfix: {taken:?}"),
    }
}

#[test]
fn a_client_smtpd_is_too_busy_to_confirm_is_still_served_later() {
    if !require_root("a_client_smtpd_is_too_busy_to_confirm_is_still_served_later") {
        return;
    }
    let bed = Bed::new("postfix-pass", &[2]);
    // One smtpd process for the pass service: while it serves one client, the next hand-off
    // waits in the service's listen queue.
    let config = PostfixConfig::new(SocketAddr::new(bed.v4(1), POSTFIX_PORT))
        .master_cf("smtpd     pass  -       -       n       -       1       smtpd");
    let postfix = Postfix::start(&bed.server, &config).expect("starting Postfix");
    let socket = postfix
        .wait_for_pass_socket("smtpd", SOCKET_WAIT)
        .expect("the pass service's socket");
    let listen = SocketAddr::new(bed.v4(1), SMTP_PORT);

    let acceptor = hand_off_one(&bed, listen, socket.clone(), NOTIFY_TIMEOUT);
    let mut first = connect(&bed, bed.v4(2));
    assert_eq!(first.reply(), [SMTPD_GREETING]);
    assert!(matches!(acceptor.join().unwrap(), Handoff::TakenOver(_)));

    let notify = Duration::from_secs(1);
    let acceptor = hand_off_one(&bed, listen, socket, notify);
    let mut second = connect(&bed, bed.v4(2));
    match acceptor.join().expect("hand-off thread") {
        Handoff::Unconfirmed { error, after } => {
            assert_eq!(error, "timeout sending connection to service private/smtpd");
            assert!(after >= notify && after < notify * 3, "{after:?}");
        }
        other => panic!("the busy smtpd confirmed: {other:?}"),
    }
    // The hand-off side has let go of everything; the socket in flight is still smtpd's to
    // take, and it takes it as soon as its one process is free.
    expect_code(&first.command("QUIT"), "221", "QUIT");
    assert_eq!(second.reply(), [SMTPD_GREETING]);
    expect_code(&second.command("QUIT"), "221", "QUIT");
}
