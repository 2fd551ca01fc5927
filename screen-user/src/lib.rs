//! smtp-screen: a postscreen-style SMTP screening daemon with an XDP fast path.
//!
//! The library holds everything the `smtp-screen` binary does, so that tests and benchmarks
//! drive the same code. The modules, in the order one connection meets them:
//!
//! - [`kernel`]: the XDP program's kernel objects (pinned maps, links, the configuration
//!   record, counters) that drop known-bad SYNs before the daemon sees them, and the hand-off
//!   relay's sockhash;
//! - [`screen`]: one connection's stages in postscreen's order (endpoint, access list,
//!   temporary allowlist, the tests before the greeting, the dummy engine after it, the kernel
//!   deny policy);
//! - [`test_state`]: postscreen's per-test state: which tests are due, what a session earned;
//! - [`allowlist`]: where the temporary allowlist is kept, behind a small trait;
//! - [`dnsbl`]: the DNSBL/DNSWL lists, their lookups, scores and health;
//! - [`smtpd`]: the dummy SMTP engine (postscreen's `postscreen_smtpd.c`): replies, deep
//!   tests, the session state machine, STARTTLS;
//! - [`handoff`]: a passed client to the real MTA: proxied and relayed, or its socket passed
//!   to Postfix's smtpd;
//! - [`limits`]: connection counts, the screening and hand-off limits, stress mode;
//! - [`proxy_protocol`]: the PROXY protocol, read from a load balancer and written to the MTA;
//! - [`maillog`]: postscreen's log lines to stderr or syslog;
//! - [`address`], [`escape`], [`duration`], [`prefixes`], [`cidr_table`]: client addresses,
//!   client text in log lines, Postfix time values, prefixes and list files, Postfix CIDR
//!   tables;
//! - [`config`] (the TOML file) and [`settings`] (what the stages get from it); [`daemon`]
//!   (opens everything, drops privileges with [`privileges`], runs); [`paths`] (every runtime
//!   path); [`cli`] (one file per `smtp-screen` verb) and [`import_postfix`] (a postscreen
//!   configuration turned into this one);
//! - `fuzzing` (only with the `fuzzing` feature): the parsers as the fuzz targets in
//!   `screen-user/fuzz/` call them.

// The library's public surface is what the binary and the tests use; the rest of it is read
// with `cargo doc --document-private-items`, where these links resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod access_list;
pub(crate) mod address;
pub mod allowlist;
pub(crate) mod cidr_table;
pub mod cli;
pub(crate) mod config;
pub(crate) mod daemon;
pub(crate) mod dnsbl;
pub(crate) mod duration;
pub(crate) mod escape;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod handoff;
pub(crate) mod import_postfix;
pub mod kernel;
pub(crate) mod limits;
#[cfg(test)]
mod loopback;
pub mod maillog;
pub mod paths;
pub(crate) mod prefixes;
pub mod privileges;
pub(crate) mod proxy_protocol;
pub(crate) mod screen;
pub(crate) mod settings;
pub(crate) mod smtpd;
pub mod test_state;
