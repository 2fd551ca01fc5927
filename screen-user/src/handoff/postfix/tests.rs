use std::{
    io::{Read as _, Write as _},
    net::TcpStream as StdTcpStream,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream},
    },
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Instant,
};

use tokio::net::{TcpListener, TcpStream};

use super::*;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// The stream attr_print0() writes for the four attributes, spelled out byte by byte.
fn expected_stream(client: &str, client_port: &str, server: &str, port: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for part in [
        "client_address",
        client,
        "client_port",
        client_port,
        "server_address",
        server,
        "server_port",
        port,
    ] {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(b'\0');
    }
    bytes.push(b'\0');
    bytes
}

fn endpoints(client: &str, server: &str) -> PassEndpoints {
    PassEndpoints {
        client: addr(client),
        server: addr(server),
    }
}

#[test]
fn encodes_the_attributes_as_attr_print0_does() {
    let ipv4 = endpoints("192.0.2.10:40000", "198.51.100.25:25");
    assert_eq!(
        ipv4.encode(),
        b"client_address\x00192.0.2.10\x00client_port\x0040000\x00\
          server_address\x00198.51.100.25\x00server_port\x0025\x00\x00"
    );
    let ipv6 = endpoints("[2001:db8::5]:1", "[2001:db8:0:0:0:0:0:25]:25");
    assert_eq!(
        ipv6.encode(),
        expected_stream("2001:db8::5", "1", "2001:db8::25", "25")
    );
}

#[test]
fn ipv4_mapped_addresses_go_as_plain_ipv4() {
    let mapped = endpoints("[::ffff:192.0.2.10]:40000", "[::ffff:198.51.100.25]:25");
    assert_eq!(
        mapped.encode(),
        expected_stream("192.0.2.10", "40000", "198.51.100.25", "25")
    );
}

#[test]
fn decodes_what_it_encodes_and_reports_the_length() {
    for (client, server) in [
        ("192.0.2.10:40000", "198.51.100.25:25"),
        ("0.0.0.0:0", "255.255.255.255:65535"),
        ("[2001:db8::5]:1", "[fd00:251:1::1]:25"),
        ("192.0.2.1:65535", "[::1]:587"),
    ] {
        let sent = endpoints(client, server);
        let mut stream = sent.encode();
        let len = stream.len();
        stream.extend_from_slice(b"trailing bytes belong to the next reader");
        assert_eq!(PassEndpoints::decode(&stream).unwrap(), (sent, len));
    }
}

#[test]
fn skips_other_attributes_and_keeps_the_first_of_repeated_ones() {
    let mut stream = b"protocol\x00smtp\x00client_address\x00192.0.2.1\x00".to_vec();
    stream.extend_from_slice(b"client_address\x00192.0.2.99\x00");
    stream.extend_from_slice(&expected_stream("192.0.2.2", "25", "192.0.2.3", "26"));
    let (decoded, used) = PassEndpoints::decode(&stream).unwrap();
    assert_eq!(decoded, endpoints("192.0.2.1:25", "192.0.2.3:26"));
    assert_eq!(used, stream.len());
}

#[test]
fn a_stream_that_has_not_ended_is_truncated_at_every_cut() {
    let stream = endpoints("192.0.2.10:40000", "[2001:db8::25]:25").encode();
    for cut in 0..stream.len() {
        let err = PassEndpoints::decode(&stream[..cut]).unwrap_err();
        match err {
            PassError::Truncated { offset, .. } => assert_eq!(offset, cut),
            other => panic!("cut at {cut}: {other}"),
        }
    }
    let err = PassEndpoints::decode(b"client_address\x00192.0").unwrap_err();
    assert_eq!(
        err.to_string(),
        "premature end-of-input at byte 20 while reading attribute value"
    );
}

#[test]
fn missing_attributes_are_named_as_smtpd_names_them() {
    let full = [
        "client_address",
        "client_port",
        "server_address",
        "server_port",
    ];
    let values = ["192.0.2.1", "4000", "192.0.2.2", "25"];
    let words = [
        "missing client address from proxy",
        "missing client port from proxy",
        "missing server address from proxy",
        "missing server port from proxy",
    ];
    for (left_out, expected) in words.iter().enumerate() {
        let mut stream = Vec::new();
        for (i, (name, value)) in full.iter().zip(values).enumerate() {
            if i != left_out {
                stream.extend_from_slice(format!("{name}\0{value}\0").as_bytes());
            }
        }
        stream.push(0);
        let err = PassEndpoints::decode(&stream).unwrap_err();
        assert_eq!(err.to_string(), *expected);
    }
    // An empty list: smtpd would fall back to the socket's own addresses; we refuse it.
    let err = PassEndpoints::decode(b"\0").unwrap_err();
    assert_eq!(err.to_string(), "missing client address from proxy");
}

/// Decodes a list of the four attributes with these values and returns the error text.
fn refusal(values: [&[u8]; 4]) -> String {
    let names = [
        "client_address",
        "client_port",
        "server_address",
        "server_port",
    ];
    let mut stream = Vec::new();
    for (name, value) in names.into_iter().zip(values) {
        stream.extend_from_slice(name.as_bytes());
        stream.push(0);
        stream.extend_from_slice(value);
        stream.push(0);
    }
    stream.push(0);
    PassEndpoints::decode(&stream).unwrap_err().to_string()
}

#[test]
fn bad_addresses_are_refused_in_smtpds_words() {
    let client = |value: &[u8]| refusal([value, b"1", b"192.0.2.2", b"25"]);
    let bad = "bad IPv4 client address syntax from proxy";
    assert_eq!(client(b"192.0.2.256"), format!("{bad}: 192.0.2.256"));
    assert_eq!(client(b"host.example"), format!("{bad}: host.example"));
    assert_eq!(client(b"01.2.3.4"), format!("{bad}: 01.2.3.4"));
    assert_eq!(client(b""), format!("{bad}: "));
    let bad = "bad IPv6 client address syntax from proxy";
    assert_eq!(client(b"[2001:db8::1]"), format!("{bad}: [2001:db8::1]"));
    assert_eq!(
        client(b"IPv6:2001:db8::1"),
        format!("{bad}: IPv6:2001:db8::1")
    );
    assert_eq!(client(b"192.0.2.1:25"), format!("{bad}: 192.0.2.1:25"));
    // Unprintable bytes are escaped and the text cut, as in postscreen's log lines.
    assert_eq!(
        refusal([b"192.0.2.1", b"25", b"\xff\x01", b"25"]),
        "bad IPv4 server address syntax from proxy: \\377\\001"
    );
    let long = vec![b'\n'; 500];
    let text = refusal([&long, b"1", b"192.0.2.2", b"25"]);
    assert_eq!(
        text.len(),
        "bad IPv4 client address syntax from proxy: ".len() + 100
    );
}

#[test]
fn bad_ports_are_refused_in_smtpds_words() {
    let client = |value: &[u8]| refusal([b"192.0.2.1", value, b"192.0.2.2", b"25"]);
    let bad = "bad TCP client port number syntax from proxy";
    for value in [
        "", "025", "00", "65536", "+25", "-1", "1000000", "2 5", "0x19",
    ] {
        assert_eq!(client(value.as_bytes()), format!("{bad}: {value}"));
    }
    assert_eq!(
        refusal([b"192.0.2.1", b"25", b"192.0.2.2", b"99999"]),
        "bad TCP server port number syntax from proxy: 99999"
    );
    // The edges that are fine.
    let stream = b"client_address\x00192.0.2.1\x00client_port\x000\x00\
                   server_address\x00192.0.2.2\x00server_port\x0065535\x00\x00";
    let (decoded, _) = PassEndpoints::decode(stream).unwrap();
    assert_eq!(decoded, endpoints("192.0.2.1:0", "192.0.2.2:65535"));
}

#[test]
fn oversized_strings_and_endless_lists_are_refused() {
    // A name without a NUL in the first MAX_STRING bytes.
    let long_name = vec![b'a'; MAX_STRING + 10];
    let err = PassEndpoints::decode(&long_name).unwrap_err();
    assert!(
        matches!(
            err,
            PassError::TooLong {
                offset: 0,
                reading: "attribute name"
            }
        ),
        "{err}"
    );
    // The longest value that fits, and one byte more.
    for (len, fits) in [(MAX_STRING - 1, true), (MAX_STRING, false)] {
        let mut stream = b"x\0".to_vec();
        stream.extend(std::iter::repeat_n(b'v', len));
        stream.push(0);
        stream.extend_from_slice(&endpoints("192.0.2.1:1", "192.0.2.2:2").encode());
        let result = PassEndpoints::decode(&stream);
        assert_eq!(result.is_ok(), fits, "value of {len} bytes: {result:?}");
    }
    // More distinct names than attr_scan0() keeps.
    let mut stream = Vec::new();
    for i in 0..=MAX_ATTRIBUTES {
        stream.extend_from_slice(format!("name{i}\0value\0").as_bytes());
    }
    stream.push(0);
    let err = PassEndpoints::decode(&stream).unwrap_err();
    assert_eq!(err.to_string(), "attribute count exceeds limit 1024");
    // Repeats of one name do not count against the limit.
    let mut stream = Vec::new();
    for _ in 0..(2 * MAX_ATTRIBUTES) {
        stream.extend_from_slice(b"client_port\x001\x00");
    }
    stream.extend_from_slice(&endpoints("192.0.2.1:7", "192.0.2.2:8").encode());
    let (decoded, _) = PassEndpoints::decode(&stream).unwrap();
    assert_eq!(decoded.client.port(), 1);
}

#[test]
fn garbage_never_panics_and_errors_stay_short() {
    // Mostly NULs, digits, dots and colons, so that some lists parse far.
    const ALPHABET: &[u8] = b"\0\0\0.:0123456789abcdef\xff";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..2000 {
        let len = (round * 7) % 300;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ALPHABET[(state % ALPHABET.len() as u64) as usize]
            })
            .collect();
        if let Err(err) = PassEndpoints::decode(&bytes) {
            assert!(err.to_string().len() < 200, "{err}");
        }
    }
}

#[test]
fn errors_read_as_postscreens_warnings() {
    let service = "private/smtpd".to_string();
    let missing = PassError::Connect {
        service: service.clone(),
        source: io::Error::from_raw_os_error(libc::ENOENT),
    };
    assert_eq!(
        missing.to_string(),
        "cannot connect to service private/smtpd: No such file or directory"
    );
    let timed_out = PassError::Connect {
        service: service.clone(),
        source: io::Error::from_raw_os_error(libc::ETIMEDOUT),
    };
    assert_eq!(
        timed_out.to_string(),
        "cannot connect to service private/smtpd: Connection timed out"
    );
    let send = PassError::Send {
        service: service.clone(),
        source: io::Error::from_raw_os_error(libc::EPIPE),
    };
    assert_eq!(
        send.to_string(),
        "cannot pass connection to service private/smtpd: Broken pipe"
    );
    let other = PassError::Send {
        service: service.clone(),
        source: io::ErrorKind::WriteZero.into(),
    };
    assert_eq!(
        other.to_string(),
        format!(
            "cannot pass connection to service private/smtpd: {}",
            io::Error::from(io::ErrorKind::WriteZero)
        )
    );
    let late = PassError::NotifyTimeout { service };
    assert_eq!(
        late.to_string(),
        "timeout sending connection to service private/smtpd"
    );
}

#[test]
fn the_client_hears_what_postscreen_says() {
    let service = String::from("private/smtpd");
    let connect = PassError::Connect {
        service: service.clone(),
        source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
    };
    let send = PassError::Send {
        service: service.clone(),
        source: io::Error::from_raw_os_error(libc::EPIPE),
    };
    let late = PassError::NotifyTimeout { service };
    let busy = b"421 4.3.2 All server ports are busy\r\n".to_vec();
    let no_resources = b"421 4.3.2 No system resources\r\n".to_vec();
    let bytes = |reply: Option<Reply>| reply.map(|r| r.to_bytes());
    assert_eq!(bytes(connect.client_reply(false)), Some(busy));
    assert_eq!(
        bytes(connect.client_reply(true)),
        Some(no_resources.clone())
    );
    assert_eq!(bytes(send.client_reply(false)), Some(no_resources.clone()));
    assert_eq!(bytes(send.client_reply(true)), Some(no_resources));
    assert_eq!(late.client_reply(false), None);
    assert_eq!(late.client_reply(true), None);
    assert_eq!(PassError::TooManyAttributes.client_reply(false), None);
}

#[test]
fn names_the_service_as_postscreen_does() {
    let name = |path: &str| service_name(Path::new(path));
    assert_eq!(name("/var/spool/postfix/private/smtpd"), "private/smtpd");
    assert_eq!(
        name("/var/spool/postfix/public/smtpd-pass"),
        "public/smtpd-pass"
    );
    assert_eq!(name("/run/smtpd.sock"), "/run/smtpd.sock");
    assert_eq!(name("smtpd"), "smtpd");
    assert_eq!(name("/"), "/");
}

// ---- The hand-off against a fake pass service. ----

/// A directory of its own with a `private/` inside, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "postfix-pass-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("private")).unwrap();
        Self(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("private/smtpd")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Receives what unix_recv_fd() receives: one data byte and the descriptors that came with
/// it (room for several, to see if more than one was sent).
fn recv_fd(channel: &StdUnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: plain arithmetic.
    let space = unsafe { libc::CMSG_SPACE(4 * size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: all-zero is a valid empty msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(channel.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control; the CMSG macros walk it within msg_controllen,
    // and every SCM_RIGHTS descriptor is new and ours to own.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                for i in 0..payload / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    Ok((data[..n as usize].to_vec(), fds))
}

/// What the fake pass service received from one sender.
struct Received {
    data: Vec<u8>,
    fds: Vec<OwnedFd>,
    endpoints: PassEndpoints,
    extra: usize,
    channel: StdUnixStream,
}

/// Accepts one connection and reads it as pass_accept_attr() does: the descriptor, then
/// the attribute list, read a little at a time until it ends.
fn receive_one(listener: &StdUnixListener) -> Received {
    let (mut channel, _) = listener.accept().unwrap();
    channel
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (data, fds) = recv_fd(&channel).unwrap();
    let mut stream = Vec::new();
    let mut chunk = [0u8; 7];
    let (endpoints, used) = loop {
        match PassEndpoints::decode(&stream) {
            Ok(done) => break done,
            Err(PassError::Truncated { .. }) => {}
            Err(e) => panic!("bad attributes: {e}"),
        }
        let n = channel.read(&mut chunk).unwrap();
        assert!(n > 0, "the sender closed before the list ended");
        assert!(stream.len() < 4096, "endless attribute stream");
        stream.extend_from_slice(&chunk[..n]);
    };
    Received {
        data,
        fds,
        endpoints,
        extra: stream.len() - used,
        channel,
    }
}

/// A connected client and the server side of it, as the daemon holds it.
async fn tcp_pair() -> (StdTcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = StdTcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (client, accepted)
}

async fn pass(
    socket: &Path,
    accepted: TcpStream,
    notify_timeout: Duration,
) -> Result<PassHandle<TcpStream>, PassFailure<TcpStream>> {
    let client_addr = accepted.peer_addr().unwrap();
    let server_addr = accepted.local_addr().unwrap();
    pass_to_smtpd(
        socket,
        accepted,
        client_addr,
        server_addr,
        CONNECT_TIMEOUT,
        notify_timeout,
    )
    .await
}

#[tokio::test]
async fn the_client_socket_itself_reaches_the_pass_service() {
    let dir = SocketDir::new();
    let listener = StdUnixListener::bind(dir.socket()).unwrap();
    let (mut client, accepted) = tcp_pair().await;
    let client_addr = accepted.peer_addr().unwrap();
    let server_addr = accepted.local_addr().unwrap();
    let service = thread::spawn(move || {
        let received = receive_one(&listener);
        // Speak through the received socket, as smtpd would, then close the channel.
        let [fd] = <[OwnedFd; 1]>::try_from(received.fds).expect("exactly one descriptor");
        let mut smtpd = StdTcpStream::from(fd);
        let seen = (smtpd.peer_addr().unwrap(), smtpd.local_addr().unwrap());
        smtpd.write_all(b"220 smtpd.example ESMTP\r\n").unwrap();
        drop(received.channel);
        (
            received.data,
            received.endpoints,
            received.extra,
            seen,
            smtpd,
        )
    });

    let handle = pass(&dir.socket(), accepted, NOTIFY_TIMEOUT).await.unwrap();
    let started = Instant::now();
    handle.taken_over().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));

    let (data, endpoints, extra, seen, mut smtpd) = service.join().unwrap();
    assert_eq!(data, [0], "the descriptor rides on one NUL byte");
    assert_eq!(endpoints.client, client_addr);
    assert_eq!(endpoints.server, server_addr);
    assert_eq!(extra, 0, "nothing follows the attribute list");
    assert_eq!(seen, (client_addr, server_addr), "the very same connection");

    // The client talks to the receiver directly, both ways.
    let mut greeting = [0u8; 25];
    client.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220 smtpd.example ESMTP\r\n");
    client.write_all(b"QUIT\r\n").unwrap();
    let mut command = [0u8; 6];
    smtpd.read_exact(&mut command).unwrap();
    assert_eq!(&command, b"QUIT\r\n");
}

#[tokio::test]
async fn the_client_stays_open_until_the_channel_closes() {
    let dir = SocketDir::new();
    let listener = StdUnixListener::bind(dir.socket()).unwrap();
    let (mut client, accepted) = tcp_pair().await;
    let (close_channel, close_requested) = std::sync::mpsc::channel::<()>();
    let service = thread::spawn(move || {
        let received = receive_one(&listener);
        // A receiver that lets go of the client at once, and of the channel only when told.
        drop(received.fds);
        close_requested.recv().unwrap();
        drop(received.channel);
    });

    let handle = pass(&dir.socket(), accepted, NOTIFY_TIMEOUT).await.unwrap();
    // Only the handle's copy keeps the connection open now: no EOF for the client.
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let err = client.read(&mut byte).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");

    close_channel.send(()).unwrap();
    handle.taken_over().await.unwrap();
    service.join().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(client.read(&mut byte).unwrap(), 0, "closed once taken over");
}

#[tokio::test]
async fn a_service_that_never_closes_the_channel_times_out() {
    let dir = SocketDir::new();
    let listener = StdUnixListener::bind(dir.socket()).unwrap();
    let (_client, accepted) = tcp_pair().await;
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let service = thread::spawn(move || {
        let received = receive_one(&listener);
        // Hold everything until the test is over.
        finished.recv().unwrap();
        drop(received);
    });

    let notify = Duration::from_millis(200);
    let handle = pass(&dir.socket(), accepted, notify).await.unwrap();
    let started = Instant::now();
    let err = handle.taken_over().await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= notify && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(
        err.to_string(),
        "timeout sending connection to service private/smtpd"
    );
    assert!(err.client_reply(true).is_none());
    done.send(()).unwrap();
    service.join().unwrap();
}

#[tokio::test]
async fn a_missing_socket_fails_at_once_and_returns_the_client() {
    let dir = SocketDir::new();
    let (mut client, accepted) = tcp_pair().await;
    let started = Instant::now();
    let failure = pass(&dir.socket(), accepted, NOTIFY_TIMEOUT)
        .await
        .unwrap_err();
    assert!(started.elapsed() < CONNECT_TIMEOUT);
    assert!(
        matches!(&failure.error, PassError::Connect { source, .. }
            if source.kind() == io::ErrorKind::NotFound),
        "{failure:?}"
    );
    assert_eq!(
        failure.to_string(),
        "cannot connect to service private/smtpd: No such file or directory"
    );
    // The client is still ours to answer.
    let reply = failure.error.client_reply(false).unwrap().to_bytes();
    let mut back = failure.client;
    back.write_all(&reply).await.unwrap();
    drop(back);
    let mut heard = Vec::new();
    client.read_to_end(&mut heard).unwrap();
    assert_eq!(heard, b"421 4.3.2 All server ports are busy\r\n");
}

#[tokio::test]
async fn a_stale_socket_is_refused() {
    let dir = SocketDir::new();
    drop(StdUnixListener::bind(dir.socket()).unwrap());
    let (_client, accepted) = tcp_pair().await;
    let failure = pass(&dir.socket(), accepted, NOTIFY_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        failure.to_string(),
        "cannot connect to service private/smtpd: Connection refused"
    );
}

#[tokio::test]
async fn a_full_listen_queue_fails_at_once() {
    let dir = SocketDir::new();
    // A listener with a backlog of zero takes one pending connection; the next connect
    // finds the queue full, which a non-blocking connect reports at once (EAGAIN), as it
    // does to postscreen.
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&socket2::SockAddr::unix(dir.socket()).unwrap())
        .unwrap();
    socket.listen(0).unwrap();
    let _pending = StdUnixStream::connect(dir.socket()).unwrap();
    let (_client, accepted) = tcp_pair().await;
    let started = Instant::now();
    let failure = pass(&dir.socket(), accepted, NOTIFY_TIMEOUT)
        .await
        .unwrap_err();
    assert!(started.elapsed() < CONNECT_TIMEOUT);
    assert!(
        matches!(failure.error, PassError::Connect { .. }),
        "{failure}"
    );
    assert_eq!(
        failure.to_string(),
        "cannot connect to service private/smtpd: Resource temporarily unavailable"
    );
}

#[test]
fn sending_to_a_closed_peer_is_an_error_not_a_signal() {
    let (ours, theirs) = StdUnixStream::pair().unwrap();
    drop(theirs);
    let file = std::fs::File::open("/dev/null").unwrap();
    let err = send_fd(ours.as_fd(), file.as_fd()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPIPE), "{err}");
}

#[test]
fn sends_exactly_one_descriptor_on_one_nul_byte() {
    let (ours, theirs) = StdUnixStream::pair().unwrap();
    let (mut a, b) = StdUnixStream::pair().unwrap();
    send_fd(ours.as_fd(), b.as_fd()).unwrap();
    drop(b);
    let (data, fds) = recv_fd(&theirs).unwrap();
    assert_eq!(data, [0]);
    let [fd] = <[OwnedFd; 1]>::try_from(fds).expect("one descriptor");
    // The descriptor received is the other end of `a`.
    let mut b = StdUnixStream::from(fd);
    a.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}
