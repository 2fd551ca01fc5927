//! smtp-screen: a postscreen-style SMTP screening daemon with an XDP fast path.
//!
//! The library holds everything the `smtp-screen` binary does, so that tests and benchmarks
//! drive the same code: the kernel layer ([`kernel`]), the operator CLI ([`cli`]), list and
//! duration syntax ([`prefixes`], [`duration`]), the configuration ([`config`]) and the
//! daemon ([`daemon`]).

pub mod access;
pub mod cache;
pub mod cidr_table;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dnsbl;
pub mod duration;
pub mod early;
pub mod engine;
pub mod escape;
pub mod handoff;
pub mod import_postfix;
pub mod kernel;
pub mod limits;
#[cfg(test)]
mod loopback;
pub mod maillog;
pub mod paths;
pub mod policy;
pub mod postfix_pass;
pub mod prefixes;
pub mod privileges;
pub mod proxy_protocol;
pub mod relay;
pub mod server;
pub mod smtp_line;
pub mod tls;
