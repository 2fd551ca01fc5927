//! smtp-screen: a postscreen-style SMTP screening daemon with an XDP fast path.
//!
//! The library holds everything the `smtp-screen` binary does, so that tests and benchmarks
//! drive the same code.

pub mod address;
pub mod allowlist;
pub mod cidr_table;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dnsbl;
pub mod duration;
pub mod escape;
pub mod handoff;
pub mod import_postfix;
pub mod kernel;
pub mod limits;
#[cfg(test)]
mod loopback;
pub mod maillog;
pub mod paths;
pub mod prefixes;
pub mod privileges;
pub mod proxy_protocol;
pub mod screen;
pub mod settings;
pub mod smtpd;
pub mod test_state;
