//! The pass service's side of an attribute list: read the way smtpd reads it, so the tests
//! can check what the hand-off sends.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::*;
use crate::escape::{LOG_TEXT_MAX, c_escape};

impl PassEndpoints {
    /// Reads one attribute list from the start of `stream` the way smtpd's pass service reads
    /// it, and returns the endpoints and the bytes the list took.
    ///
    /// Like `attr_scan0()` into a hash table, attributes smtpd does not use are skipped and the
    /// first of repeated names counts. Unlike it, a list longer than [`MAX_ATTRIBUTES`] names is
    /// refused rather than cut short, and an empty list is refused (smtpd would fall back to
    /// the socket's own addresses). [`PassError::Truncated`] means the list has not ended yet:
    /// a reader may read more and try again.
    pub(crate) fn decode(stream: &[u8]) -> Result<(Self, usize), PassError> {
        let (attributes, used) = scan_attributes(stream)?;
        let find = |name: &str, what: &'static str| {
            attributes
                .iter()
                .find(|(n, _)| *n == name.as_bytes())
                .map(|&(_, value)| value)
                .ok_or(PassError::Missing { what })
        };
        // The order of smtpd_peer_from_pass_attr(), so that the first problem named is the one
        // smtpd would name.
        let client_ip = parse_host_addr(find(CLIENT_ADDRESS, "client address")?, "client address")?;
        let client_port = parse_port(find(CLIENT_PORT, "client port")?, "client port")?;
        let server_ip = parse_host_addr(find(SERVER_ADDRESS, "server address")?, "server address")?;
        let server_port = parse_port(find(SERVER_PORT, "server port")?, "server port")?;
        Ok((
            Self {
                client: SocketAddr::new(client_ip, client_port),
                server: SocketAddr::new(server_ip, server_port),
            },
            used,
        ))
    }
}

/// One attribute as received: name and value, without their NULs.
type Attribute<'a> = (&'a [u8], &'a [u8]);

/// The attribute list at the start of `stream` (the grammar of `attr_scan0()`:
/// `(name NUL value NUL)* NUL`), the first instance of each name, and the bytes it took.
fn scan_attributes(stream: &[u8]) -> Result<(Vec<Attribute<'_>>, usize), PassError> {
    let mut attributes = Vec::new();
    let mut seen = HashSet::new();
    let mut at = 0;
    loop {
        let (name, next) = scan_string(stream, at, "attribute name")?;
        if name.is_empty() {
            return Ok((attributes, next));
        }
        let (value, next) = scan_string(stream, next, "attribute value")?;
        at = next;
        if seen.contains(name) {
            continue;
        }
        if seen.len() >= MAX_ATTRIBUTES {
            return Err(PassError::TooManyAttributes);
        }
        seen.insert(name);
        attributes.push((name, value));
    }
}

/// The NUL-terminated string that starts at `at`, and where the next one starts. Looks at no
/// more than [`MAX_STRING`] bytes.
fn scan_string<'a>(
    stream: &'a [u8],
    at: usize,
    reading: &'static str,
) -> Result<(&'a [u8], usize), PassError> {
    let rest = stream.get(at..).unwrap_or_default();
    let window = &rest[..rest.len().min(MAX_STRING)];
    match window.iter().position(|&byte| byte == 0) {
        Some(len) => Ok((&rest[..len], at + len + 1)),
        None if rest.len() >= MAX_STRING => Err(PassError::TooLong {
            offset: at,
            reading,
        }),
        None => Err(PassError::Truncated {
            offset: stream.len(),
            reading,
        }),
    }
}

/// An address attribute, checked as smtpd checks it: with a `:` it must be IPv6, else IPv4.
fn parse_host_addr(value: &[u8], what: &'static str) -> Result<IpAddr, PassError> {
    let ipv6 = value.contains(&b':');
    let text = std::str::from_utf8(value).ok();
    let parsed = if ipv6 {
        text.and_then(|t| t.parse::<Ipv6Addr>().ok())
            .map(IpAddr::V6)
    } else {
        text.and_then(|t| t.parse::<Ipv4Addr>().ok())
            .map(IpAddr::V4)
    };
    parsed.ok_or_else(|| PassError::BadAddress {
        family: if ipv6 { "IPv6" } else { "IPv4" },
        what,
        value: c_escape(value, LOG_TEXT_MAX),
    })
}

/// A port attribute, checked as Postfix's `valid_hostport()` checks it: decimal digits only,
/// no leading zero, at most 65535.
fn parse_port(value: &[u8], what: &'static str) -> Result<u16, PassError> {
    let well_formed = matches!(value, [b'0'] | [b'1'..=b'9', ..])
        && value.len() <= 5
        && value.iter().all(u8::is_ascii_digit);
    well_formed
        .then(|| std::str::from_utf8(value).ok()?.parse::<u16>().ok())
        .flatten()
        .ok_or_else(|| PassError::BadPort {
            what,
            value: c_escape(value, LOG_TEXT_MAX),
        })
}
