//! rtnetlink queries for an interface's XDP attachment, and the forced detach of a foreign
//! program (`load --force`). aya attaches; only these two operations are missing from it.

use std::{ffi::CString, io, mem::size_of};

/// How a program is attached to an interface, as the kernel reports it (`IFLA_XDP_ATTACHED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum XdpAttachMode {
    Native,
    Generic,
    Offload,
    /// Several programs in different modes.
    Multi,
}

impl XdpAttachMode {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Offload => "offload",
            Self::Multi => "multi",
        }
    }

    /// The `XDP_FLAGS_*_MODE` bit for a detach request.
    const fn flags(self) -> u32 {
        match self {
            Self::Native => 1 << 2,
            Self::Generic => 1 << 1,
            Self::Offload => 1 << 3,
            Self::Multi => 0,
        }
    }
}

/// The XDP program attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct XdpAttachment {
    pub(crate) mode: XdpAttachMode,
    pub(crate) prog_id: u32,
}

/// An error talking rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("no such network interface: {0}")]
    UnknownInterface(String),
    #[error("rtnetlink {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("rtnetlink {what}: malformed reply")]
    Malformed { what: &'static str },
}

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

/// The interface index of `name`.
pub(crate) fn if_index(name: &str) -> Result<u32, NetlinkError> {
    let c_name =
        CString::new(name).map_err(|_| NetlinkError::UnknownInterface(name.to_string()))?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(NetlinkError::UnknownInterface(name.to_string()));
    }
    Ok(index)
}

struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn open() -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Io {
                what: "socket",
                source: io::Error::last_os_error(),
            });
        }
        let socket = Self(fd);
        // Replies larger than this buffer are truncated by the kernel; bound the wait too.
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: valid fd and option buffer.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        Ok(socket)
    }

    fn request(&self, what: &'static str, msg: &[u8]) -> Result<Vec<u8>, NetlinkError> {
        // SAFETY: `msg` is a valid buffer; the kernel is the default destination.
        let sent = unsafe { libc::send(self.0, msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(NetlinkError::Io {
                what,
                source: io::Error::last_os_error(),
            });
        }
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(NetlinkError::Io {
                what,
                source: io::Error::last_os_error(),
            });
        }
        buf.truncate(n as usize);
        Ok(buf)
    }
}

/// Builds `nlmsghdr + ifinfomsg + attrs`.
fn link_message(msg_type: u16, flags: u16, index: u32, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 16 + attrs.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id
    // ifinfomsg: family, pad, type, index, flags, change
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(index as i32).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(attrs);
    msg
}

fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(len.next_multiple_of(4), 0);
    out
}

/// Iterates `(type, payload)` over a run of netlink attributes; stops at the first malformed one.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, payload))
    })
}

/// Checks a reply for an `NLMSG_ERROR`; returns the first message's payload otherwise.
fn reply_payload<'a>(what: &'static str, reply: &'a [u8]) -> Result<(u16, &'a [u8]), NetlinkError> {
    if reply.len() < 16 {
        return Err(NetlinkError::Malformed { what });
    }
    let len = u32::from_ne_bytes(reply[0..4].try_into().expect("4 bytes")) as usize;
    let msg_type = u16::from_ne_bytes([reply[4], reply[5]]);
    if len < 16 || len > reply.len() {
        return Err(NetlinkError::Malformed { what });
    }
    let payload = &reply[16..len];
    if msg_type == libc::NLMSG_ERROR as u16 {
        if payload.len() < 4 {
            return Err(NetlinkError::Malformed { what });
        }
        let errno = i32::from_ne_bytes(payload[0..4].try_into().expect("4 bytes"));
        if errno != 0 {
            return Err(NetlinkError::Io {
                what,
                source: io::Error::from_raw_os_error(-errno),
            });
        }
    }
    Ok((msg_type, payload))
}

/// The XDP program attached to interface `index`, if any.
pub(crate) fn xdp_attachment(index: u32) -> Result<Option<XdpAttachment>, NetlinkError> {
    const WHAT: &str = "RTM_GETLINK";
    let socket = Socket::open()?;
    let msg = link_message(libc::RTM_GETLINK, libc::NLM_F_REQUEST as u16, index, &[]);
    let reply = socket.request(WHAT, &msg)?;
    let (msg_type, payload) = reply_payload(WHAT, &reply)?;
    if msg_type != libc::RTM_NEWLINK || payload.len() < 16 {
        return Err(NetlinkError::Malformed { what: WHAT });
    }
    let Some((_, xdp)) = attrs(&payload[16..]).find(|(kind, _)| *kind == IFLA_XDP) else {
        return Ok(None);
    };
    let mut mode = None;
    let mut prog_id = 0;
    for (kind, value) in attrs(xdp) {
        match (kind, value) {
            (IFLA_XDP_ATTACHED, [attached, ..]) => {
                mode = match attached {
                    1 => Some(XdpAttachMode::Native),
                    2 => Some(XdpAttachMode::Generic),
                    3 => Some(XdpAttachMode::Offload),
                    4 => Some(XdpAttachMode::Multi),
                    _ => None,
                }
            }
            (IFLA_XDP_PROG_ID, [a, b, c, d, ..]) => prog_id = u32::from_ne_bytes([*a, *b, *c, *d]),
            _ => {}
        }
    }
    Ok(mode.map(|mode| XdpAttachment { mode, prog_id }))
}

/// Detaches whatever program is attached in `mode` to interface `index` (the legacy netlink
/// way; a program held by another tool's BPF link cannot be removed like this).
pub(crate) fn detach_xdp(index: u32, mode: XdpAttachMode) -> Result<(), NetlinkError> {
    const WHAT: &str = "RTM_SETLINK (detach XDP)";
    let socket = Socket::open()?;
    let mut nested = attr(IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    nested.extend(attr(IFLA_XDP_FLAGS, &mode.flags().to_ne_bytes()));
    let xdp = attr(IFLA_XDP | NLA_F_NESTED, &nested);
    let msg = link_message(
        libc::RTM_SETLINK,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
        index,
        &xdp,
    );
    let reply = socket.request(WHAT, &msg)?;
    reply_payload(WHAT, &reply).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let a = attr(7, &[1, 2, 3, 4, 5]);
        assert_eq!(a.len(), 12);
        assert_eq!(u16::from_ne_bytes([a[0], a[1]]), 9);
        let parsed: Vec<_> = attrs(&a).collect();
        assert_eq!(parsed, vec![(7, &[1u8, 2, 3, 4, 5][..])]);
    }

    #[test]
    fn malformed_attributes_stop_the_walk() {
        // Length runs past the buffer.
        let mut a = attr(1, &[0; 4]);
        a[0] = 200;
        assert_eq!(attrs(&a).count(), 0);
        // Length shorter than the header.
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
    }

    #[test]
    fn error_replies_become_errors() {
        let mut reply = Vec::new();
        reply.extend_from_slice(&20u32.to_ne_bytes());
        reply.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        reply.extend_from_slice(&[0; 10]);
        reply.extend_from_slice(&(-libc::EBUSY).to_ne_bytes());
        let err = reply_payload("test", &reply).unwrap_err();
        assert!(err.to_string().contains("busy"), "{err}");
        assert!(reply_payload("test", &reply[..8]).is_err());
    }

    #[test]
    fn loopback_exists() {
        assert_eq!(if_index("lo").unwrap(), 1);
        assert!(matches!(
            if_index("no-such-if0"),
            Err(NetlinkError::UnknownInterface(_))
        ));
    }
}
