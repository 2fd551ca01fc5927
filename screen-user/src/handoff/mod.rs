//! The hand-off of a passed client to the real MTA (postscreen's `postscreen_send.c`): over
//! a proxied TCP connection ([`proxy`], with the bytes moved by a [`relay`]), or by passing
//! the client's socket to Postfix's smtpd ([`postfix`]).

pub mod postfix;
pub mod proxy;
pub mod relay;

use serde::Deserialize;

/// How passed clients reach the real MTA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handoff {
    /// smtp-screen connects to `backend` and relays the bytes both ways.
    Proxy,
    /// The client's socket is given to Postfix's smtpd `pass` service, as postscreen does:
    /// smtpd talks to the client directly.
    Postfix,
}
