use std::time::Instant;

use tokio::io::{AsyncWriteExt, duplex};

use tokio::io::AsyncRead;

use super::*;

fn sa(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn proxied(source: &str, destination: &str) -> ProxyHeader {
    ProxyHeader::Proxied {
        source: sa(source),
        destination: sa(destination),
    }
}

fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
    match parse(buf) {
        Ok(Parsed::Complete { header, len }) => (header, len),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

fn error(buf: &[u8]) -> String {
    match parse(buf) {
        Err(err) => err.to_string(),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

/// A v2 header with the given version/command and family bytes, announced payload length
/// and payload (which may be shorter or longer than announced).
fn v2(version_command: u8, family: u8, announced: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(version_command);
    out.push(family);
    out.extend_from_slice(&announced.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// TLVs a balancer may add: ALPN `smtp`, authority `mx.example`, NOOP padding.
const TLVS: &[u8] = b"\x01\x00\x04smtp\x02\x00\x0amx.example\x04\x00\x03\0\0\0";

fn v2_tcp4_with_tlvs() -> Vec<u8> {
    let mut payload = vec![192, 0, 2, 1, 198, 51, 100, 25, 0x9c, 0x40, 0, 25];
    payload.extend_from_slice(TLVS);
    v2(0x21, 0x11, payload.len() as u16, &payload)
}

/// Valid headers of every shape, each with what it says.
fn valid_headers() -> Vec<(Vec<u8>, ProxyHeader)> {
    let local = ProxyHeader::Local;
    let v4 = proxied("192.0.2.1:40000", "198.51.100.25:25");
    let v6 = proxied("[2001:db8::1]:40000", "[2001:db8::25]:25");
    let max_v6 = proxied(
        "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535",
    );
    vec![
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.25 40000 25\r\n".to_vec(),
            v4,
        ),
        (
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n".to_vec(),
            proxied("0.0.0.0:0", "255.255.255.255:65535"),
        ),
        (
            b"PROXY TCP6 2001:db8::1 2001:db8::25 40000 25\r\n".to_vec(),
            v6,
        ),
        (
            b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 2001:0db8::25 40000 25\r\n".to_vec(),
            v6,
        ),
        (
            b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:198.51.100.25 40000 25\r\n".to_vec(),
            v4,
        ),
        (
            b"PROXY TCP6 :: ::1 1 2\r\n".to_vec(),
            proxied("[::]:1", "[::1]:2"),
        ),
        (
            encode_v1(
                sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
                sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"),
            ),
            max_v6,
        ),
        // The longest textual IPv6 address (45 characters).
        (
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.254 ::1 1 2\r\n".to_vec(),
            proxied("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:1", "[::1]:2"),
        ),
        (b"PROXY UNKNOWN\r\n".to_vec(), local),
        (
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".to_vec(),
            local,
        ),
        (encode_v2(sa("192.0.2.1:40000"), sa("198.51.100.25:25")), v4),
        (
            encode_v2(sa("[2001:db8::1]:40000"), sa("[2001:db8::25]:25")),
            v6,
        ),
        (v2_tcp4_with_tlvs(), v4),
        (v2(0x20, 0x00, 0, b""), local),
        (
            v2(0x20, 0x11, 12, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]),
            local,
        ),
        (v2(0x20, 0x31, 3, b"abc"), local),
        (v2(0x21, 0x00, 0, b""), local),
        (v2(0x21, 0x00, 4, b"\x04\x00\x01\x00"), local),
        (
            v2(0x21, 0x11, 1024, &[7; 1024]),
            proxied("7.7.7.7:1799", "7.7.7.7:1799"),
        ),
    ]
}

#[test]
fn parses_every_valid_shape() {
    for (bytes, expected) in valid_headers() {
        assert_eq!(complete(&bytes), (expected, bytes.len()), "{bytes:?}");
    }
}

#[test]
fn leaves_the_bytes_after_the_header_to_smtp() {
    for (bytes, expected) in valid_headers() {
        let mut with_smtp = bytes.clone();
        with_smtp.extend_from_slice(b"EHLO pregreet.example\r\n");
        assert_eq!(complete(&with_smtp), (expected, bytes.len()), "{bytes:?}");
        // Even when what follows looks like another header.
        let mut doubled = bytes.clone();
        doubled.extend_from_slice(&bytes);
        assert_eq!(complete(&doubled), (expected, bytes.len()), "{bytes:?}");
    }
}

#[test]
fn every_truncation_of_a_valid_header_is_incomplete() {
    for (bytes, _) in valid_headers() {
        for cut in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..cut]).unwrap(),
                Parsed::Incomplete,
                "{:?}",
                String::from_utf8_lossy(&bytes[..cut])
            );
        }
    }
}

/// The shortest prefix of `input` that parse() refuses; shorter ones must be incomplete
/// and longer ones refused too.
fn first_error_at(input: &[u8]) -> usize {
    let at = (0..=input.len())
        .find(|&n| parse(&input[..n]).is_err())
        .unwrap_or_else(|| panic!("never refused: {input:?}"));
    for n in 0..at {
        assert_eq!(parse(&input[..n]).unwrap(), Parsed::Incomplete, "{n}");
    }
    for n in at..=input.len() {
        assert!(
            parse(&input[..n]).is_err(),
            "accepted {n} bytes of {input:?}"
        );
    }
    at
}

#[test]
fn refuses_as_soon_as_a_byte_makes_it_invalid() {
    let cases: &[(&[u8], usize)] = &[
        (b"EHLO notproxy\r\n", 1),
        (b"PROXZ TCP4", 5),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", 7),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", 10),
        (b"PROXY UNKNOWNX\r\n", 14),
        (b"PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n", 14),
        (b"PROXY TCP4 01.1.1.1 5.6.7.8 1 2\r\n", 13),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", 17),
        (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", 19),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 65536\r\n", 35),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 0123\r\n", 32),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 25 \r\n", 33),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 80 25\r\n", 20),
        (b"PROXY TCP4 1.2.3.4\r5.6.7.8 80 25\r\n", 19),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 25\n", 33),
        (b"PROXY TCP6 1.2.3.4 ::1 80 25\r\n", 19),
        (b"PROXY TCP6 2001:db8:::1 ::1 80 25\r\n", 22),
        (b"PROXY TCP6 1::2::3 ::1 80 25\r\n", 17),
        (b"\r\n\r\n\0\r\nQUIX\n", 11),
    ];
    for &(input, at) in cases {
        assert_eq!(
            first_error_at(input),
            at,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(200, b'x');
    assert_eq!(first_error_at(&long), V1_MAX_LEN);
    // v2: the version/command byte, the family byte, the length bytes.
    assert_eq!(first_error_at(&v2(0x11, 0x11, 12, &[0; 12])), 13);
    assert_eq!(first_error_at(&v2(0x23, 0x11, 12, &[0; 12])), 13);
    assert_eq!(first_error_at(&v2(0x21, 0x12, 12, &[0; 12])), 14);
    assert_eq!(first_error_at(&v2(0x21, 0x11, 0xffff, &[0; 64])), 16);
    assert_eq!(first_error_at(&v2(0x21, 0x21, 12, &[0; 12])), 16);
}

#[test]
fn v1_field_errors_use_postscreen_wording() {
    let cases: &[(&str, &str)] = &[
        (
            "PROXY TCP4 1.2.3.4 4.3.2.1 123456 321",
            "bad or missing client port",
        ),
        (
            "PROXY TCP4 1.2.3.4 4.3.2.1 123 654321",
            "bad or missing server port",
        ),
        (
            "PROXY TCP4 1.2.3.4 4.3.2.1 0123 321",
            "bad or missing client port",
        ),
        (
            "PROXY TCP4 1.2.3.4 4.3.2.1 123 0321",
            "bad or missing server port",
        ),
        (
            "PROXY TCP4 1.2.3.4 4.3.2.1 65536 25",
            "bad or missing client port",
        ),
        (
            "PROXY TCP4 1.2.3.4 4.3.2.1 +1 25",
            "bad or missing client port",
        ),
        (
            "PROXY TCP4 1.2.3.4 4.3.2.1 25 -1",
            "bad or missing server port",
        ),
        (
            "PROXY TCP4 1.2.3.4 4.3.2.1 25 2\r",
            "bad or missing server port",
        ),
        (
            "PROXY TCP4 01.02.03.04 04.03.02.01 123 321",
            "bad or missing client address",
        ),
        (
            "PROXY TCP4 ::ffff:1.2.3.4 ::ffff:4.3.2.1 123 321",
            "bad or missing client address",
        ),
        (
            "PROXY TCP4 1.2.3.4 ::ffff:4.3.2.1 123 321",
            "bad or missing server address",
        ),
        (
            "PROXY TCP4 2001:db8::1 1.2.3.4 1 2",
            "bad or missing client address",
        ),
        (
            "PROXY TCP4 1.2.3.\u{e9} 1.2.3.4 1 2",
            "bad or missing client address",
        ),
        (
            "PROXY TCP6 1.2.3.4 4.3.2.1 123 321",
            "bad or missing client address",
        ),
        (
            "PROXY TCP6 fc:00:00:00:1:2:3:4 4.3.2.1 123 321",
            "bad or missing server address",
        ),
        (
            "PROXY TCP6 fe80::1%eth0 ::1 1 2",
            "bad or missing client address",
        ),
        ("PROXY TCP6 [::1] ::1 1 2", "bad or missing client address"),
        (
            "PROXY TCP6 fc:00:00:00:1:2:3:4 fc:00:00:00:4:3:2:1 123",
            "bad or missing server port",
        ),
        (
            "PROXY TCP6 fc:00:00:00:1:2:3:4 fc:00:00:00:4:3:2:1",
            "bad or missing client port",
        ),
        (
            "PROXY TCP6 fc:00:00:00:1:2:3:4",
            "bad or missing server address",
        ),
        ("PROXY TCP6", "bad or missing client address"),
        (
            "PROXY TCP4 1.2.3.4 4.3.2.1 123",
            "bad or missing server port",
        ),
        ("PROXY TCP4 1.2.3.4 4.3.2.1", "bad or missing client port"),
        ("PROXY TCP4 1.2.3.4", "bad or missing server address"),
        ("PROXY TCP4", "bad or missing client address"),
        (
            "PROXY TCP4  1.2.3.4 4.3.2.1 1 2",
            "bad or missing client address",
        ),
        ("PROXY BLAH", "bad or missing protocol type"),
        (
            "PROXY tcp4 1.2.3.4 4.3.2.1 1 2",
            "bad or missing protocol type",
        ),
        ("PROXY ", "bad or missing protocol type"),
        ("PROXY UNKNOWN4", "bad or missing protocol type"),
        (
            "PROXY TCP4 1.2.3.4 4.3.2.1 1 2 ",
            "unexpected text after server port",
        ),
        (
            "PROXY TCP4 1.2.3.4 4.3.2.1 1 2 3",
            "unexpected text after server port",
        ),
    ];
    for &(line, reason) in cases {
        let input = format!("{line}\r\n");
        let expected = format!(
            "haproxy read: {reason}: {}",
            c_escape(input.as_bytes(), 1000)
        );
        assert_eq!(error(input.as_bytes()), expected);
    }
    assert_eq!(
        error(b"PROXY TCP4 1.2.3.4 4.3.2.1 1 2\n"),
        "haproxy read: protocol header ends in a bare newline: \
         PROXY TCP4 1.2.3.4 4.3.2.1 1 2\\n"
    );
}

#[test]
fn v1_lines_stop_at_107_bytes() {
    let line = |len: usize| {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(len - 2, b'x');
        line.extend_from_slice(b"\r\n");
        line
    };
    assert_eq!(
        complete(&line(V1_MAX_LEN)),
        (ProxyHeader::Local, V1_MAX_LEN)
    );
    assert!(
        error(&line(V1_MAX_LEN + 1))
            .starts_with("haproxy read: missing protocol header terminator: PROXY UNKNOWN xxx")
    );
    // 106 bytes and a CR: the LF would be the 107th byte, so wait for it.
    assert_eq!(
        parse(&line(V1_MAX_LEN)[..V1_MAX_LEN - 1]).unwrap(),
        Parsed::Incomplete
    );
    // The encoder's longest line fits.
    let longest = encode_v1(
        sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
        sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
    );
    assert_eq!(longest.len(), 104);
}

#[test]
fn non_proxy_input_reads_as_postscreen_logs_it() {
    // The lab's line, byte for byte.
    assert_eq!(
        error(b"EHLO notproxy\r\n"),
        "haproxy read: short protocol header: EHLO notproxy\\r\\n"
    );
    assert_eq!(
        error(b"EHLO zombie.example\r\n"),
        "haproxy read: unrecognized protocol header: EHLO zombie.example\\r\\n"
    );
    assert_eq!(
        error(b"\x16\x03\x01"),
        "haproxy read: short protocol header: \\026\\003\\001"
    );
    assert_eq!(
        error(b"\r\n\r\n\0\r\nQUIT!"),
        "haproxy read: short protocol header: \\r\\n\\r\\n\\000\\r\\nQUIT!"
    );
    assert!(
        error(b"GET / HTTP/1.1\r\nHost: mx\r\n\r\n")
            .starts_with("haproxy read: unrecognized protocol header: GET / HTTP/1.1\\r\\n")
    );
}

#[test]
fn v2_errors() {
    let cases: &[(Vec<u8>, &str)] = &[
        (
            v2(0x11, 0x11, 12, &[0; 12]),
            "unrecognized protocol version",
        ),
        (
            v2(0x31, 0x11, 12, &[0; 12]),
            "unrecognized protocol version",
        ),
        (
            v2(0x01, 0x11, 12, &[0; 12]),
            "unrecognized protocol version",
        ),
        (v2(0x22, 0x11, 12, &[0; 12]), "bad command in proxy header"),
        (v2(0x2f, 0x11, 12, &[0; 12]), "bad command in proxy header"),
        (v2(0x21, 0x12, 12, &[0; 12]), "unsupported network protocol"),
        (v2(0x21, 0x22, 36, &[0; 36]), "unsupported network protocol"),
        (
            v2(0x21, 0x31, 216, &[0; 216]),
            "unsupported network protocol",
        ),
        (v2(0x21, 0x10, 12, &[0; 12]), "unsupported network protocol"),
        (v2(0x21, 0x11, 0, b""), "short address field"),
        (v2(0x21, 0x11, 11, &[0; 11]), "short address field"),
        (v2(0x21, 0x21, 12, &[0; 12]), "short address field"),
        (v2(0x21, 0x21, 35, &[0; 35]), "short address field"),
        (
            v2(0x21, 0x11, 0xffff, &[0; 64]),
            "version 2 protocol header too long",
        ),
        (
            v2(0x20, 0x00, 1025, &[0; 64]),
            "version 2 protocol header too long",
        ),
    ];
    for (input, reason) in cases {
        let message = error(input);
        assert!(
            message.starts_with(&format!(
                "haproxy read: {reason}: \\r\\n\\r\\n\\000\\r\\nQUIT\\n"
            )),
            "{message}"
        );
    }
    let mut bad_signature = v2_tcp4_with_tlvs();
    bad_signature[10] = b'X';
    assert!(error(&bad_signature).starts_with("haproxy read: unrecognized protocol header: "));
}

#[test]
fn v2_takes_ipv4_mapped_ipv6_as_ipv4() {
    let mut payload = Vec::new();
    payload.extend_from_slice(&Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets());
    payload.extend_from_slice(&"2001:db8::25".parse::<Ipv6Addr>().unwrap().octets());
    payload.extend_from_slice(&[0x9c, 0x40, 0, 25]);
    let header = v2(0x21, 0x21, 36, &payload);
    assert_eq!(
        complete(&header),
        (proxied("192.0.2.1:40000", "[2001:db8::25]:25"), 52)
    );
}

#[test]
fn error_input_is_bounded() {
    let mut garbage = vec![0u8; MAX_HEADER_LEN];
    garbage[0] = b'X';
    let message = error(&garbage);
    let prefix = "haproxy read: unrecognized protocol header: ";
    assert_eq!(message.len(), prefix.len() + LOGGED_INPUT_MAX, "{message}");
    assert!(message.starts_with(&format!("{prefix}X\\000\\000")));
}

#[test]
fn truncation_by_eof_is_named_as_postscreen_names_it() {
    assert!(matches!(truncated(b""), ProxyError::Eof));
    assert_eq!(
        truncated(b"PROXY TCP4 1.2").to_string(),
        "haproxy read: missing protocol header terminator: PROXY TCP4 1.2"
    );
    assert_eq!(
        truncated(b"PROX").to_string(),
        "haproxy read: short protocol header: PROX"
    );
    assert_eq!(
        truncated(&V2_SIGNATURE).to_string(),
        "haproxy read: short protocol header: \\r\\n\\r\\n\\000\\r\\nQUIT\\n"
    );
    let header = v2_tcp4_with_tlvs();
    assert!(
        truncated(&header[..20])
            .to_string()
            .starts_with("haproxy read: short version 2 protocol header: ")
    );
}

#[test]
fn safe_reads_never_pass_the_end_of_a_header() {
    for (bytes, _) in valid_headers() {
        for cut in 0..bytes.len() {
            let step = safe_read_len(&bytes[..cut]);
            assert!(step >= 1);
            assert!(
                cut + step <= bytes.len(),
                "{cut}+{step} > {} for {:?}",
                bytes.len(),
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    // A typical v1 line takes a handful of reads, not one per byte.
    let line = b"PROXY TCP4 203.0.113.5 198.51.100.25 40000 25\r\n";
    let mut have = 0;
    let mut reads = 0;
    while have < line.len() {
        have += safe_read_len(&line[..have]);
        reads += 1;
    }
    assert_eq!(have, line.len());
    assert!(reads <= 10, "{reads} reads");
}

#[test]
fn encodes_v1_text() {
    assert_eq!(
        encode_v1(sa("192.0.2.1:40000"), sa("198.51.100.25:25")),
        b"PROXY TCP4 192.0.2.1 198.51.100.25 40000 25\r\n"
    );
    assert_eq!(
        encode_v1(sa("[2001:db8::1]:40000"), sa("[2001:db8::25]:25")),
        b"PROXY TCP6 2001:db8::1 2001:db8::25 40000 25\r\n"
    );
    // IPv4-mapped addresses (a dual-stack socket's view of IPv4 clients) are IPv4.
    assert_eq!(
        encode_v1(sa("[::ffff:192.0.2.1]:40000"), sa("198.51.100.25:25")),
        b"PROXY TCP4 192.0.2.1 198.51.100.25 40000 25\r\n"
    );
    // Mixed families: both as IPv6.
    assert_eq!(
        encode_v1(sa("192.0.2.1:40000"), sa("[2001:db8::25]:25")),
        b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::25 40000 25\r\n"
    );
}

#[test]
fn encodes_v2_bytes() {
    assert_eq!(
        encode_v2(sa("192.0.2.1:40000"), sa("198.51.100.25:25")),
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\
          \xc0\x00\x02\x01\xc6\x33\x64\x19\x9c\x40\x00\x19"
    );
    let v6 = encode_v2(sa("[2001:db8::1]:40000"), sa("[::ffff:192.0.2.1]:25"));
    assert_eq!(v6.len(), 52);
    assert_eq!(&v6[12..16], b"\x21\x21\x00\x24");
    assert_eq!(&v6[16..20], b"\x20\x01\x0d\xb8");
    assert_eq!(
        &v6[32..48],
        &Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets()
    );
    assert_eq!(&v6[48..], b"\x9c\x40\x00\x19");
}

#[test]
fn round_trips() {
    let pairs = [
        ("192.0.2.1:40000", "198.51.100.25:25"),
        ("0.0.0.0:0", "255.255.255.255:65535"),
        ("[2001:db8::1]:40000", "[2001:db8::25]:25"),
        ("[::]:0", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
        ("[fe80::1]:1", "[::1]:587"),
    ];
    for (source, destination) in pairs {
        let expected = proxied(source, destination);
        for encoded in [
            encode_v1(sa(source), sa(destination)),
            encode_v2(sa(source), sa(destination)),
        ] {
            assert_eq!(complete(&encoded), (expected, encoded.len()));
        }
    }
    // Mixed families come back as they went in: the mapped address is IPv4 again.
    let expected = proxied("192.0.2.1:40000", "[2001:db8::25]:25");
    for encoded in [
        encode_v1(sa("192.0.2.1:40000"), sa("[2001:db8::25]:25")),
        encode_v2(sa("192.0.2.1:40000"), sa("[2001:db8::25]:25")),
    ] {
        assert_eq!(complete(&encoded).0, expected);
    }
}

#[test]
fn local_means_the_socket_endpoints() {
    let peer = sa("[::ffff:10.0.0.7]:51000");
    let local = sa("[2001:db8::25]:25");
    assert_eq!(
        ProxyHeader::Local.endpoints(peer, local),
        (sa("10.0.0.7:51000"), local)
    );
    let header = proxied("192.0.2.1:40000", "198.51.100.25:25");
    assert_eq!(
        header.endpoints(peer, local),
        (sa("192.0.2.1:40000"), sa("198.51.100.25:25"))
    );
}

// ---- reading from streams ----

const LIMIT: Duration = Duration::from_secs(5);
const SMTP: &[u8] = b"EHLO pregreet.example\r\n";

/// Reads what is left on `reader` after the header, once the writer is gone.
async fn rest<S: AsyncRead + Unpin>(reader: &mut S) -> Vec<u8> {
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).await.unwrap();
    rest
}

#[tokio::test]
async fn reads_each_header_and_nothing_after_it() {
    for (bytes, expected) in valid_headers() {
        let (mut client, mut server) = duplex(4096);
        // Everything is queued before the first read, so any read past the header would
        // take SMTP bytes with it.
        client.write_all(&bytes).await.unwrap();
        client.write_all(SMTP).await.unwrap();
        drop(client);
        assert_eq!(read_header(&mut server, LIMIT).await.unwrap(), expected);
        assert_eq!(rest(&mut server).await, SMTP, "{bytes:?}");
    }
}

#[tokio::test]
async fn reads_headers_split_across_writes() {
    for (bytes, expected) in valid_headers() {
        for chunk in [1, 2, 7, 16] {
            let (mut client, mut server) = duplex(4096);
            let writer = tokio::spawn({
                let bytes = bytes.clone();
                async move {
                    for piece in bytes.chunks(chunk) {
                        client.write_all(piece).await.unwrap();
                        tokio::task::yield_now().await;
                    }
                    client.write_all(SMTP).await.unwrap();
                }
            });
            assert_eq!(read_header(&mut server, LIMIT).await.unwrap(), expected);
            writer.await.unwrap();
            assert_eq!(rest(&mut server).await, SMTP);
        }
    }
}

#[tokio::test]
async fn gives_up_at_the_time_limit() {
    let limit = Duration::from_millis(50);
    // Nothing at all, and half a header: both wait for bytes that never come.
    for sent in [&b""[..], b"PROXY TCP4 192.0.2.1 "] {
        let (mut client, mut server) = duplex(4096);
        client.write_all(sent).await.unwrap();
        let started = Instant::now();
        let err = read_header(&mut server, limit).await.unwrap_err();
        assert!(matches!(err, ProxyError::TimeLimit), "{err}");
        assert_eq!(err.to_string(), "haproxy read: time limit exceeded");
        assert!(started.elapsed() >= limit);
        drop(client);
    }
}

#[tokio::test]
async fn reports_eof() {
    let (client, mut server) = duplex(64);
    drop(client);
    let err = read_header(&mut server, LIMIT).await.unwrap_err();
    assert_eq!(err.to_string(), "haproxy read: EOF");

    let (mut client, mut server) = duplex(64);
    client.write_all(b"PROXY TCP4 192.0.2.1").await.unwrap();
    drop(client);
    let err = read_header(&mut server, LIMIT).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "haproxy read: missing protocol header terminator: PROXY TCP4 192.0.2.1"
    );
}

#[tokio::test]
async fn refuses_smtp_instead_of_a_header() {
    let (mut client, mut server) = duplex(64);
    client.write_all(b"EHLO notproxy\r\n").await.unwrap();
    let err = read_header(&mut server, LIMIT).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "haproxy read: short protocol header: EHLO notproxy\\r\\n"
    );
}

#[tokio::test]
async fn refuses_an_oversized_v2_header_without_reading_it() {
    let (mut client, mut server) = duplex(1 << 17);
    client
        .write_all(&v2(0x21, 0x11, 0xffff, &[0; 0xffff]))
        .await
        .unwrap();
    let err = read_header(&mut server, LIMIT).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("haproxy read: version 2 protocol header too long")
    );
}

/// The client's end first, with Nagle off so that each write goes out on its own.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let (server, client) = crate::loopback::tcp_pair().await;
    client.set_nodelay(true).unwrap();
    (client, server)
}

#[tokio::test]
async fn tcp_reads_each_header_and_nothing_after_it() {
    for (bytes, expected) in valid_headers() {
        let (mut client, mut server) = tcp_pair().await;
        let mut sent = bytes.clone();
        sent.extend_from_slice(SMTP);
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(
            read_header_from_tcp(&mut server, LIMIT).await.unwrap(),
            expected
        );
        assert_eq!(rest(&mut server).await, SMTP, "{bytes:?}");
    }
}

#[tokio::test]
async fn tcp_reads_a_header_split_across_segments() {
    let header = b"PROXY TCP6 2001:db8::1 2001:db8::25 40000 25\r\n";
    for split in [1, 6, 20, header.len() - 1] {
        let (mut client, mut server) = tcp_pair().await;
        let writer = tokio::spawn(async move {
            client.write_all(&header[..split]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&header[split..]).await.unwrap();
            client.write_all(SMTP).await.unwrap();
            client.shutdown().await.unwrap();
        });
        assert_eq!(
            read_header_from_tcp(&mut server, LIMIT).await.unwrap(),
            proxied("[2001:db8::1]:40000", "[2001:db8::25]:25")
        );
        writer.await.unwrap();
        assert_eq!(rest(&mut server).await, SMTP);
    }
}

#[tokio::test]
async fn tcp_logs_all_the_input_it_peeked() {
    let (mut client, mut server) = tcp_pair().await;
    client.write_all(b"EHLO zombie.example\r\n").await.unwrap();
    client.shutdown().await.unwrap();
    let err = read_header_from_tcp(&mut server, LIMIT).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "haproxy read: unrecognized protocol header: EHLO zombie.example\\r\\n"
    );
}

#[tokio::test]
async fn tcp_time_limit_and_eof() {
    let (client, mut server) = tcp_pair().await;
    let err = read_header_from_tcp(&mut server, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "haproxy read: time limit exceeded");
    drop(client);

    let (mut client, mut server) = tcp_pair().await;
    client.shutdown().await.unwrap();
    let err = read_header_from_tcp(&mut server, LIMIT).await.unwrap_err();
    assert_eq!(err.to_string(), "haproxy read: EOF");

    let (mut client, mut server) = tcp_pair().await;
    client.write_all(&V2_SIGNATURE).await.unwrap();
    client.shutdown().await.unwrap();
    let err = read_header_from_tcp(&mut server, LIMIT).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "haproxy read: short protocol header: \\r\\n\\r\\n\\000\\r\\nQUIT\\n"
    );
}
