//! The PROXY protocol (HAProxy's specification, versions 1 and 2): reading the header a load
//! balancer puts in front of each client connection (`upstream_proxy_protocol = haproxy`,
//! postscreen's `postscreen_upstream_proxy_protocol`), and writing one in front of the
//! connection to the backend MTA (`backend_proxy_protocol = v1|v2`) so that it sees the
//! client's real address.
//!
//! [`parse`] is pure: it says whether some bytes are a complete header, a valid beginning of
//! one, or never can be. `read_header` and [`read_header_from_tcp`] read a header off a
//! connection without taking a byte past it, since what follows belongs to SMTP (and the
//! pregreet test looks at it). Failures render as postscreen's warnings, for the daemon to log
//! as `warning: {error}` before it answers `421 4.3.2 No system resources`:
//!
//! ```text
//! haproxy read: short protocol header: EHLO notproxy\r\n
//! haproxy read: time limit exceeded
//! haproxy read: EOF
//! haproxy read: PROXY header from [192.0.2.7]:40000 outside upstream_proxy_networks
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

use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::{
    address::{canonical, canonical_endpoint},
    escape::c_escape,
};

/// The longest version 1 header, CRLF included (the specification's limit).
pub(crate) const V1_MAX_LEN: usize = 107;

/// The longest address block plus TLVs accepted after the 16 fixed bytes of a version 2
/// header. The largest address block is 216 bytes (UNIX sockets; TCP over IPv6 needs 36), and
/// the TLVs that load balancers add (ALPN, SNI, a unique ID of at most 128 bytes, TLS details,
/// a cloud endpoint ID) fit well within the rest. postscreen stops at 536 bytes in all; we take
/// a little more so a balancer that adds TLVs still works. The bound is what each connection
/// may make us buffer before it has said who it is: a 64 KiB length field is either an attack
/// or a broken balancer.
pub(crate) const V2_MAX_PAYLOAD: usize = 1024;

/// The longest header of either version; the readers never hold more than this.
pub(crate) const MAX_HEADER_LEN: usize = V2_FIXED_LEN + V2_MAX_PAYLOAD;

/// How much of the offending input a warning shows, after escaping. postscreen shows all it
/// peeked (up to 535 bytes); this keeps every v1 line whole even when each byte needs a
/// four-character escape (4 × 107 = 428), and the first hundred-odd bytes of anything else.
const LOGGED_INPUT_MAX: usize = 512;

const V1_PREFIX: &[u8] = b"PROXY ";
/// `PROXY UNKNOWN\r\n`: no header of either version is shorter (a v2 header has 16 bytes).
#[cfg(test)]
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
pub(crate) enum ProxyHeader {
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
    /// entry meant for the balancer; keep the balancer out of `permit` entries. Such a session
    /// is never denied in the kernel, which would stop all mail (`screen/endpoint.rs`).
    Local,
}

impl ProxyHeader {
    /// The client and server endpoints of the session: the proxied ones, or for [`Local`]
    /// the socket's own `peer` and `local` addresses. Both are in canonical form.
    ///
    /// [`Local`]: ProxyHeader::Local
    pub(crate) fn endpoints(self, peer: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
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
pub(crate) enum Parsed {
    /// The bytes are a valid beginning of a header; more are needed.
    Incomplete,
    /// A whole header. It took the first `len` bytes; the rest belong to SMTP.
    Complete { header: ProxyHeader, len: usize },
}

/// Why no header could be read. The messages are postscreen's (`postscreen_haproxy.c`,
/// `haproxy_srvr.c`) where it has one, with the offending input C-escaped; log them as
/// `warning: {error}`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
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
    /// A header from a peer outside `upstream_proxy_networks` (smtp-screen's own check, worded
    /// as postscreen's warnings are): anyone may claim any client address in a header, so only
    /// the load balancers' are believed. The peer as postscreen writes a client, `[a]:p`.
    #[error("haproxy read: PROXY header from {0} outside upstream_proxy_networks")]
    OutsideNetworks(String),
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
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
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
#[cfg(test)]
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
#[cfg(test)]
pub(crate) async fn read_header<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<ProxyHeader, ProxyError> {
    tokio::time::timeout(limit, read_stepwise(stream))
        .await
        .unwrap_or(Err(ProxyError::TimeLimit))
}

#[cfg(test)]
async fn read_stepwise<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ProxyHeader, ProxyError> {
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
pub(crate) async fn read_header_from_tcp(
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
pub(crate) fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
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
pub(crate) fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
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
mod tests;
