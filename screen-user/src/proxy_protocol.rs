//! The PROXY protocol (HAProxy's specification, versions 1 and 2): reading the header a load
//! balancer puts in front of each client connection (`upstream_proxy_protocol = haproxy`,
//! postscreen's `postscreen_upstream_proxy_protocol`), and writing one in front of the
//! connection to the backend MTA (`backend_proxy_protocol = v1|v2`) so that it sees the
//! client's real address.
//!
//! [`parse`] is pure: it says whether some bytes are a complete header, a valid beginning of
//! one, or never can be. [`read_header`] and [`read_header_from_tcp`] read a header off a
//! connection without taking a byte past it, since what follows belongs to SMTP (and the
//! pregreet test looks at it). Failures render as postscreen's warnings, for the daemon to log
//! as `warning: {error}` before it answers `421 4.3.2 No system resources`:
//!
//! ```text
//! haproxy read: short protocol header: EHLO notproxy\r\n
//! haproxy read: time limit exceeded
//! haproxy read: EOF
//! ```
//!
//! Addresses are returned in canonical form: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
//! becomes the IPv4 address, as postscreen converts it, so that access lists, the cache and
//! the kernel maps see one client as one address.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::TcpStream,
};

use crate::address::{canonical, canonical_endpoint};
use crate::escape::c_escape;

/// The longest version 1 header, CRLF included (the specification's limit).
pub const V1_MAX_LEN: usize = 107;

/// The longest address block plus TLVs accepted after the 16 fixed bytes of a version 2
/// header. The largest address block is 216 bytes (UNIX sockets; TCP over IPv6 needs 36), and
/// the TLVs that load balancers add (ALPN, SNI, a unique ID of at most 128 bytes, TLS details,
/// a cloud endpoint ID) fit well within the rest. postscreen stops at 536 bytes in all; we take
/// a little more so a balancer that adds TLVs still works. The bound is what each connection
/// may make us buffer before it has said who it is: a 64 KiB length field is either an attack
/// or a broken balancer.
pub const V2_MAX_PAYLOAD: usize = 1024;

/// The longest header of either version; the readers never hold more than this.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + V2_MAX_PAYLOAD;

/// How much of the offending input a warning shows, after escaping. postscreen shows all it
/// peeked (up to 535 bytes); this keeps every v1 line whole even when each byte needs a
/// four-character escape (4 × 107 = 428), and the first hundred-odd bytes of anything else.
const LOGGED_INPUT_MAX: usize = 512;

const V1_PREFIX: &[u8] = b"PROXY ";
/// `PROXY UNKNOWN\r\n`: no header of either version is shorter (a v2 header has 16 bytes).
const SHORTEST_HEADER: usize = 15;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;
const V2_VERSION: u8 = 0x2;
const V2_CMD_LOCAL: u8 = 0x0;
const V2_CMD_PROXY: u8 = 0x1;
const V2_FAM_UNSPEC: u8 = 0x00;
const V2_FAM_TCP4: u8 = 0x11;
const V2_FAM_TCP6: u8 = 0x21;
const V2_ADDR_LEN_TCP4: usize = 4 + 4 + 2 + 2;
const V2_ADDR_LEN_TCP6: usize = 16 + 16 + 2 + 2;

/// What a PROXY header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The balancer relayed a client: `source` is the client, `destination` the address the
    /// client connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// A v2 `LOCAL` command (the balancer's own health check), a v2 `PROXY` command with an
    /// unspecified family, or v1 `PROXY UNKNOWN`: use the real socket endpoints.
    ///
    /// postscreen accepts only the first of these and refuses the other two, because the
    /// session then appears to come from the balancer itself and could pass an access list
    /// entry meant for the balancer; keep the balancer out of `permit` entries.
    Local,
}

impl ProxyHeader {
    /// The client and server endpoints of the session: the proxied ones, or for [`Local`]
    /// the socket's own `peer` and `local` addresses. Both are in canonical form.
    ///
    /// [`Local`]: ProxyHeader::Local
    pub fn endpoints(self, peer: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
        match self {
            ProxyHeader::Proxied {
                source,
                destination,
            } => (source, destination),
            ProxyHeader::Local => (canonical_endpoint(peer), canonical_endpoint(local)),
        }
    }
}

/// The result of looking at the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes are a valid beginning of a header; more are needed.
    Incomplete,
    /// A whole header. It took the first `len` bytes; the rest belong to SMTP.
    Complete { header: ProxyHeader, len: usize },
}

/// Why no header could be read. The messages are postscreen's (`postscreen_haproxy.c`,
/// `haproxy_srvr.c`) where it has one, with the offending input C-escaped; log them as
/// `warning: {error}`.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Neither a v1 line nor a v2 signature, and fewer than 16 bytes: too short to be a v2
    /// header (the lab's `EHLO notproxy\r\n`). Also a header cut short by EOF before 16 bytes.
    #[error("haproxy read: short protocol header: {0}")]
    ShortHeader(String),
    /// Neither a v1 line nor a v2 signature.
    #[error("haproxy read: unrecognized protocol header: {0}")]
    UnrecognizedHeader(String),
    /// A v2 header whose version is not 2.
    #[error("haproxy read: unrecognized protocol version: {0}")]
    UnrecognizedVersion(String),
    /// A v2 command other than `LOCAL` and `PROXY`.
    #[error("haproxy read: bad command in proxy header: {0}")]
    BadCommand(String),
    /// A v2 `PROXY` command for anything but TCP over IPv4 or IPv6 (or an unspecified family).
    #[error("haproxy read: unsupported network protocol: {0}")]
    UnsupportedProtocol(String),
    /// A v2 header cut short by EOF before its announced length.
    #[error("haproxy read: short version 2 protocol header: {0}")]
    ShortV2Header(String),
    /// A v2 length field above [`V2_MAX_PAYLOAD`].
    #[error("haproxy read: version 2 protocol header too long: {0}")]
    V2TooLong(String),
    /// A v2 length too short for the address family.
    #[error("haproxy read: short address field: {0}")]
    ShortAddressField(String),
    /// A v1 line without CRLF within [`V1_MAX_LEN`] bytes, or cut short by EOF.
    #[error("haproxy read: missing protocol header terminator: {0}")]
    MissingTerminator(String),
    /// A v1 line that ends in LF without CR.
    #[error("haproxy read: protocol header ends in a bare newline: {0}")]
    BareNewline(String),
    /// A v1 protocol other than `TCP4`, `TCP6` and `UNKNOWN`.
    #[error("haproxy read: bad or missing protocol type: {0}")]
    BadProtocolType(String),
    #[error("haproxy read: bad or missing client address: {0}")]
    BadClientAddress(String),
    #[error("haproxy read: bad or missing server address: {0}")]
    BadServerAddress(String),
    #[error("haproxy read: bad or missing client port: {0}")]
    BadClientPort(String),
    #[error("haproxy read: bad or missing server port: {0}")]
    BadServerPort(String),
    /// A v1 line with more after the server port.
    #[error("haproxy read: unexpected text after server port: {0}")]
    TrailingText(String),
    /// No header within `upstream_proxy_timeout`.
    #[error("haproxy read: time limit exceeded")]
    TimeLimit,
    /// The connection closed before sending a byte.
    #[error("haproxy read: EOF")]
    Eof,
    #[error("haproxy read: {0}")]
    Io(#[from] io::Error),
}

/// A kind of malformed header; applied to the escaped input, it makes the error.
type Fault = fn(String) -> ProxyError;

fn malformed(fault: Fault, input: &[u8]) -> ProxyError {
    fault(c_escape(input, LOGGED_INPUT_MAX))
}

/// Looks at the bytes received so far. [`Parsed::Incomplete`] only while they can still become
/// a valid header; anything that cannot is an error at once, whatever follows.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    classify(buf).map_err(|fault| malformed(fault, buf))
}

fn classify(buf: &[u8]) -> Result<Parsed, Fault> {
    if buf.starts_with(V1_PREFIX) {
        parse_v1(buf)
    } else if buf.starts_with(&V2_SIGNATURE) {
        parse_v2(buf)
    } else if V1_PREFIX.starts_with(buf) || V2_SIGNATURE.starts_with(buf) {
        Ok(Parsed::Incomplete)
    } else if buf.len() < V2_FIXED_LEN {
        // postscreen's wording: input that is not `PROXY ` is taken for v2, and is short.
        Err(ProxyError::ShortHeader)
    } else {
        Err(ProxyError::UnrecognizedHeader)
    }
}

/// The error for a valid beginning of a header that the connection ended after.
fn truncated(buf: &[u8]) -> ProxyError {
    if buf.is_empty() {
        ProxyError::Eof
    } else if buf.starts_with(V1_PREFIX) {
        malformed(ProxyError::MissingTerminator, buf)
    } else if buf.len() < V2_FIXED_LEN {
        malformed(ProxyError::ShortHeader, buf)
    } else {
        malformed(ProxyError::ShortV2Header, buf)
    }
}

// ---- version 1: `PROXY TCP4 192.0.2.1 198.51.100.25 40000 25\r\n` ----

fn parse_v1(buf: &[u8]) -> Result<Parsed, Fault> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    if let Some(lf) = window.iter().position(|&b| b == b'\n') {
        let line = window[..lf]
            .strip_suffix(b"\r")
            .ok_or(ProxyError::BareNewline as Fault)?;
        // A whole line yields a header or a fault, never `None`.
        let header = v1_line(line, Extent::Whole)?.ok_or(ProxyError::BadProtocolType as Fault)?;
        return Ok(Parsed::Complete {
            header,
            len: lf + 1,
        });
    }
    if buf.len() >= V1_MAX_LEN {
        return Err(ProxyError::MissingTerminator);
    }
    // A CR can only be the last byte before the LF, so the line before it must be whole.
    match buf.strip_suffix(b"\r") {
        Some(line) => v1_line(line, Extent::Whole)?,
        None => v1_line(buf, Extent::Prefix)?,
    };
    Ok(Parsed::Incomplete)
}

/// Whether a v1 line is all there (CRLF stripped) or only its beginning has arrived.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extent {
    Whole,
    Prefix,
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// Checks a v1 line (without CRLF). For a whole line, returns the header; for a beginning,
/// `None` while it is still valid. The fields are separated by exactly one space.
fn v1_line(line: &[u8], extent: Extent) -> Result<Option<ProxyHeader>, Fault> {
    let rest = &line[V1_PREFIX.len()..];
    let (protocol, after) = match rest.iter().position(|&b| b == b' ') {
        Some(space) => (&rest[..space], Some(&rest[space + 1..])),
        None => (rest, None),
    };
    let family = match protocol {
        // Whatever follows UNKNOWN up to CRLF is to be ignored (the specification).
        b"UNKNOWN" => return Ok(Some(ProxyHeader::Local)),
        b"TCP4" => Family::V4,
        b"TCP6" => Family::V6,
        partial
            if extent == Extent::Prefix
                && after.is_none()
                && [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
                    .iter()
                    .any(|p| p.starts_with(partial)) =>
        {
            return Ok(None);
        }
        _ => return Err(ProxyError::BadProtocolType),
    };

    // Four fields, and one more slot to notice a fifth.
    let mut fields: [&[u8]; 5] = [&[]; 5];
    let mut count = 0;
    for field in after.into_iter().flat_map(|a| a.split(|&b| b == b' ')) {
        if count == fields.len() {
            break;
        }
        fields[count] = field;
        count += 1;
    }
    let faults: [Fault; 4] = [
        ProxyError::BadClientAddress,
        ProxyError::BadServerAddress,
        ProxyError::BadClientPort,
        ProxyError::BadServerPort,
    ];
    let mut addrs = [IpAddr::V4(Ipv4Addr::UNSPECIFIED); 2];
    let mut ports = [0u16; 2];
    for (index, fault) in faults.into_iter().enumerate() {
        if index >= count {
            return match extent {
                Extent::Whole => Err(fault),
                Extent::Prefix => Ok(None),
            };
        }
        let field = fields[index];
        if extent == Extent::Prefix && index + 1 == count {
            let valid = match index {
                0 | 1 => address_prefix(field, family),
                _ => port_prefix(field),
            };
            return if valid { Ok(None) } else { Err(fault) };
        }
        match index {
            0 | 1 => addrs[index] = v1_address(field, family).ok_or(fault)?,
            _ => ports[index - 2] = v1_port(field).ok_or(fault)?,
        }
    }
    if count > 4 {
        return Err(ProxyError::TrailingText);
    }
    Ok(Some(ProxyHeader::Proxied {
        source: SocketAddr::new(addrs[0], ports[0]),
        destination: SocketAddr::new(addrs[1], ports[1]),
    }))
}

/// A whole v1 address of the line's family. IPv4 must be dotted quad without leading zeros
/// (`010.1.1.1` is octal to some parsers and decimal to others); a TCP6 line may carry an
/// IPv4-mapped address, which becomes IPv4.
fn v1_address(field: &[u8], family: Family) -> Option<IpAddr> {
    let text = std::str::from_utf8(field).ok()?;
    match family {
        Family::V4 => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        Family::V6 => text
            .parse::<Ipv6Addr>()
            .ok()
            .map(|v6| canonical(IpAddr::V6(v6))),
    }
}

/// A whole v1 port: decimal 0 to 65535 without leading zeros (postscreen's `valid_hostport`).
fn v1_port(field: &[u8]) -> Option<u16> {
    if field.is_empty()
        || field.len() > 5
        || !field.iter().all(u8::is_ascii_digit)
        || (field[0] == b'0' && field.len() > 1)
    {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Whether `field` can still grow into a valid port. Every beginning of a valid port is empty
/// or itself a valid port, so this is exact.
fn port_prefix(field: &[u8]) -> bool {
    field.is_empty() || v1_port(field).is_some()
}

/// Whether `field` can still grow into a valid address of the family. Exact for IPv4 (every
/// beginning of a valid octet is empty or a valid octet); for IPv6 a check of characters,
/// length and `::` that every valid address passes, the rest being judged once it is whole.
fn address_prefix(field: &[u8], family: Family) -> bool {
    match family {
        Family::V4 => {
            let mut parts = 0;
            let mut octets = field.split(|&b| b == b'.').peekable();
            while let Some(octet) = octets.next() {
                parts += 1;
                let last = octets.peek().is_none();
                if parts > 4 || !(v1_octet(octet) || (last && octet.is_empty())) {
                    return false;
                }
            }
            true
        }
        Family::V6 => {
            // The longest textual form: eight groups, or six and a dotted quad (45 characters).
            field.len() <= 45
                && field
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                && !field.windows(3).any(|w| w == b":::")
                && field.windows(2).filter(|w| *w == b"::").count() <= 1
        }
    }
}

fn v1_octet(octet: &[u8]) -> bool {
    !octet.is_empty()
        && octet.len() <= 3
        && octet.iter().all(u8::is_ascii_digit)
        && !(octet[0] == b'0' && octet.len() > 1)
        && octet
            .iter()
            .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'))
            <= 255
}

// ---- version 2: signature, version/command, family, length, addresses, TLVs ----

fn parse_v2(buf: &[u8]) -> Result<Parsed, Fault> {
    let Some(&version_command) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if version_command >> 4 != V2_VERSION {
        return Err(ProxyError::UnrecognizedVersion);
    }
    let command = version_command & 0x0f;
    if command != V2_CMD_LOCAL && command != V2_CMD_PROXY {
        return Err(ProxyError::BadCommand);
    }
    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // A LOCAL header's family is to be ignored; for PROXY only TCP is of use to SMTP.
    if command == V2_CMD_PROXY && ![V2_FAM_UNSPEC, V2_FAM_TCP4, V2_FAM_TCP6].contains(&family) {
        return Err(ProxyError::UnsupportedProtocol);
    }
    let Some(&[high, low]) = buf.get(14..16) else {
        return Ok(Parsed::Incomplete);
    };
    let payload_len = usize::from(u16::from_be_bytes([high, low]));
    if payload_len > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong);
    }
    if command == V2_CMD_PROXY
        && ((family == V2_FAM_TCP4 && payload_len < V2_ADDR_LEN_TCP4)
            || (family == V2_FAM_TCP6 && payload_len < V2_ADDR_LEN_TCP6))
    {
        return Err(ProxyError::ShortAddressField);
    }
    let len = V2_FIXED_LEN + payload_len;
    let Some(payload) = buf.get(V2_FIXED_LEN..len) else {
        return Ok(Parsed::Incomplete);
    };
    // TLVs after the addresses are skipped: nothing in them changes how a client is screened.
    let header = match (command, family) {
        (V2_CMD_PROXY, V2_FAM_TCP4) => {
            let ip = |at: usize| {
                Ipv4Addr::new(
                    payload[at],
                    payload[at + 1],
                    payload[at + 2],
                    payload[at + 3],
                )
            };
            let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                destination: SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            }
        }
        (V2_CMD_PROXY, V2_FAM_TCP6) => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&payload[at..at + 16]);
                canonical(IpAddr::V6(Ipv6Addr::from(octets)))
            };
            let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        _ => ProxyHeader::Local,
    };
    Ok(Parsed::Complete { header, len })
}

// ---- reading from a connection ----

/// How many more bytes can be read without passing the end of any header that `buf` (a valid
/// beginning) may turn into: a lower bound on what is still missing, at least 1.
fn safe_read_len(buf: &[u8]) -> usize {
    let have = buf.len();
    if have < SHORTEST_HEADER {
        return SHORTEST_HEADER - have;
    }
    if buf.starts_with(&V2_SIGNATURE) {
        let total = match buf.get(14..16) {
            Some(&[high, low]) => V2_FIXED_LEN + usize::from(u16::from_be_bytes([high, low])),
            _ => V2_FIXED_LEN,
        };
        return total.saturating_sub(have).max(1);
    }
    if buf.ends_with(b"\r") {
        return 1;
    }
    let rest = &buf[V1_PREFIX.len()..];
    let Some(space) = rest.iter().position(|&b| b == b' ') else {
        return 1;
    };
    // The shortest text of each field: `0.0.0.0`, `::`, `0`.
    let shortest: [usize; 4] = match &rest[..space] {
        b"TCP4" => [7, 7, 1, 1],
        b"TCP6" => [2, 2, 1, 1],
        // UNKNOWN: the line may end with the next CRLF.
        _ => return 2,
    };
    let after = &rest[space + 1..];
    let started = after.iter().filter(|&&b| b == b' ').count() + 1;
    let current = after.len() - after.iter().rposition(|&b| b == b' ').map_or(0, |p| p + 1);
    let mut missing = b"\r\n".len();
    if let Some(&least) = shortest.get(started - 1) {
        missing += least.saturating_sub(current);
    }
    for &least in shortest.iter().skip(started) {
        missing += 1 + least;
    }
    missing
}

/// Reads one header from `stream` within `limit`, reading no byte past it: short exact reads
/// (the first at most 15 bytes, since no header is shorter; a v2 header's fixed part, then
/// exactly its announced length; a v1 line a lower bound of what it still lacks at a time).
/// An error's input is what was read, which may be less than postscreen would show; prefer
/// [`read_header_from_tcp`] on a TCP socket.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<ProxyHeader, ProxyError> {
    tokio::time::timeout(limit, read_stepwise(stream))
        .await
        .unwrap_or(Err(ProxyError::TimeLimit))
}

async fn read_stepwise<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyHeader, ProxyError> {
    let mut buf = [0u8; MAX_HEADER_LEN];
    let mut have = 0;
    loop {
        if let Parsed::Complete { header, len } = parse(&buf[..have])? {
            debug_assert_eq!(len, have, "read past the end of a PROXY header");
            return Ok(header);
        }
        // parse() never finds MAX_HEADER_LEN bytes incomplete; this keeps the read in bounds
        // should that ever change.
        let room = MAX_HEADER_LEN - have;
        if room == 0 {
            return Err(malformed(ProxyError::V2TooLong, &buf[..have]));
        }
        let want = safe_read_len(&buf[..have]).clamp(1, room);
        let read = stream.read(&mut buf[have..have + want]).await?;
        if read == 0 {
            return Err(truncated(&buf[..have]));
        }
        have += read;
    }
}

/// Reads one header from a TCP connection within `limit`, as postscreen does: it peeks at what
/// has arrived, parses it, and then reads exactly the header, so what follows stays queued in
/// the socket. A header split across segments is read in parts (postscreen would refuse it).
/// An error shows all the input peeked, as postscreen's warning does.
pub async fn read_header_from_tcp(
    stream: &mut TcpStream,
    limit: Duration,
) -> Result<ProxyHeader, ProxyError> {
    tokio::time::timeout(limit, peek_and_read(stream))
        .await
        .unwrap_or(Err(ProxyError::TimeLimit))
}

async fn peek_and_read(stream: &mut TcpStream) -> Result<ProxyHeader, ProxyError> {
    let mut buf = [0u8; MAX_HEADER_LEN];
    // Bytes already taken off the socket: a valid beginning of the header.
    let mut have = 0;
    loop {
        if have == MAX_HEADER_LEN {
            return Err(malformed(ProxyError::V2TooLong, &buf));
        }
        // peek() waits until the socket is readable, and everything before `have` has been
        // consumed, so this sees only new bytes and never spins on old ones.
        let peeked = stream.peek(&mut buf[have..]).await?;
        if peeked == 0 {
            return Err(truncated(&buf[..have]));
        }
        let seen = have + peeked;
        match parse(&buf[..seen])? {
            Parsed::Complete { header, len } => {
                // The same bytes again, now taken off the socket. `len` is past `have`, since
                // the bytes before `have` were incomplete.
                let take = len.saturating_sub(have);
                stream.read_exact(&mut buf[have..have + take]).await?;
                return Ok(header);
            }
            Parsed::Incomplete => {
                // All of it is header, so taking it is safe; the next peek then waits for more.
                stream.read_exact(&mut buf[have..seen]).await?;
                have = seen;
            }
        }
    }
}

// ---- writing to the backend ----

/// The two endpoints in one family: IPv4 when both are IPv4 (IPv4-mapped IPv6 counts as IPv4),
/// otherwise both as IPv6, an IPv4 address as IPv4-mapped.
enum FamilyPair {
    V4(SocketAddrV4, SocketAddrV4),
    V6(SocketAddrV6, SocketAddrV6),
}

fn same_family(source: SocketAddr, destination: SocketAddr) -> FamilyPair {
    let (source, destination) = (canonical_endpoint(source), canonical_endpoint(destination));
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => FamilyPair::V4(s, d),
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => SocketAddrV6::new(v4.to_ipv6_mapped(), a.port(), 0, 0),
                IpAddr::V6(v6) => SocketAddrV6::new(v6, a.port(), 0, 0),
            };
            FamilyPair::V6(v6(source), v6(destination))
        }
    }
}

/// A v1 header for a connection from `source` to `destination`:
/// `PROXY TCP4 192.0.2.1 198.51.100.25 40000 25\r\n` (at most 104 bytes).
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let line = match same_family(source, destination) {
        FamilyPair::V4(s, d) => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        FamilyPair::V6(s, d) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
    };
    line.into_bytes()
}

/// A v2 `PROXY` header for a TCP connection from `source` to `destination`, without TLVs
/// (28 bytes for IPv4, 52 for IPv6).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_FIXED_LEN + V2_ADDR_LEN_TCP6);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push((V2_VERSION << 4) | V2_CMD_PROXY);
    match same_family(source, destination) {
        FamilyPair::V4(s, d) => {
            out.push(V2_FAM_TCP4);
            out.extend_from_slice(&(V2_ADDR_LEN_TCP4 as u16).to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        FamilyPair::V6(s, d) => {
            out.push(V2_FAM_TCP6);
            out.extend_from_slice(&(V2_ADDR_LEN_TCP6 as u16).to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncWriteExt, duplex};

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
}
