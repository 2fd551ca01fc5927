//! What the engine's unit tests share: one client and one host name, the settings and
//! engines built from them, and events as their log lines.

use std::net::SocketAddr;

use super::{DeepTests, Engine, EngineSettings, event::Event};

pub(super) const HOST: &str = "mx.example.test";

/// The lab's pipelining client: EHLO and MAIL in one write.
pub(super) const PIPELINED: &[u8] = b"EHLO h.example\r\nMAIL FROM:<p@example.org>\r\n";

pub(super) fn client() -> SocketAddr {
    "127.0.0.11:58529".parse().unwrap()
}

pub(super) fn settings() -> EngineSettings {
    EngineSettings {
        smtpd_banner: format!("{HOST} ESMTP Postfix"),
        ..EngineSettings::new(HOST)
    }
}

pub(super) fn engine_with(change: impl FnOnce(&mut EngineSettings)) -> Engine {
    let mut s = settings();
    change(&mut s);
    Engine::new(s, client()).unwrap()
}

pub(super) fn engine() -> Engine {
    engine_with(|_| {})
}

pub(super) fn deep_engine(change: impl FnOnce(&mut DeepTests)) -> Engine {
    engine_with(|s| change(&mut s.deep_tests))
}

pub(super) fn lines(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.line(client()).to_string())
        .collect()
}
