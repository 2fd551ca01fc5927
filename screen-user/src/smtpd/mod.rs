//! postscreen's dummy SMTP engine (`postscreen_smtpd.c`): the SMTP server that screened
//! clients talk to after the 220 greeting, for the deep protocol tests and for the enforce
//! actions. It never accepts mail: every RCPT is refused with the session's `rcpt_reply`
//! (`450 4.3.2 Service currently unavailable` unless an enforce action chose a 550), and the
//! client that passed gets its mail through on its next connection.
//!
//! One file per concern, each using only those listed before it:
//!
//! - `error.rs`: [`EngineError`], a reply, a setting or a footer that cannot be used.
//! - `reply.rs`: [`Reply`] and every reply text postscreen sends as a named constructor, the
//!   connection-level ones included, so the whole daemon answers with the same words;
//!   `soft_bounce` of one reply; the reply limits.
//! - `reply_style.rs`: [`ReplyStyle`] and [`ReplyFooter`]: `soft_bounce` and
//!   `reject_footer` applied to everything sent, as postscreen does.
//! - `deep_tests.rs`: the three deep protocol tests (command pipelining, non-SMTP commands,
//!   bare newlines): [`DeepTests`], each with its own
//!   [`TestAction`](crate::test_state::TestAction); [`ForbiddenCommand`] and its Postfix
//!   list syntax; a session's state of the tests and what it earned in each
//!   ([`DeepTestResults`](deep_tests::DeepTestResults)), for `test_state`.
//! - `line.rs`: [`LineReader`](line::LineReader), command lines from a bounded buffer, with
//!   the evidence the bare newline and pipelining tests need.
//! - `settings.rs`: [`EngineSettings`], postscreen's defaults and the checks of every value.
//! - `tls.rs`: the STARTTLS certificate and key, and tlsproxy's words for a TLS session.
//! - `event.rs`: [`Event`](event::Event), what a session logs, with postscreen's exact log text
//!   ([`Event::line`](event::Event::line)); how client text is bounded
//!   and escaped for a log line.
//! - `command.rs`: postscreen's command table, and how a command line is split and an
//!   address read.
//! - `session.rs`: [`Engine`], one session as a state machine without I/O: a command line
//!   in, a [`Step`](session::Step) out (the reply, the events, whether the session goes on).
//! - `driver.rs`: [`serve`] and [`serve_with_tls`], the engine over a tokio stream: the
//!   greeting, the per-command time limit, end of input, and STARTTLS with its handshake.
//! - `close.rs`: the end of a connection after a final reply, so that the reply reaches the
//!   client ([`close::reply_and_close`]).
//!
//! Their unit tests share one client, one host name and the engines built from them
//! (`test_support.rs`).
//!
//! Logging is the caller's: each event renders postscreen's exact log text through
//! [`Event::line`](event::Event::line). A deep test's violation is an [`Event`](event::Event); its action `drop` answers at
//! once, `enforce` refuses every later RCPT, and a test passes only when the client reaches
//! RCPT TO cleanly.
//!
//! Where this engine parts from postscreen, it says so next to the code: logged fields are
//! bounded and escaped, and a run of CRs cannot stretch a line past the length limit.

pub(crate) mod close;
mod command;
mod deep_tests;
mod driver;
mod error;
mod event;
pub(crate) mod line;
mod reply;
mod reply_style;
mod session;
mod settings;
#[cfg(test)]
mod test_support;
pub(crate) mod tls;

pub(crate) use self::{
    deep_tests::{DeepTest, DeepTests, ForbiddenCommand, MAX_FORBIDDEN_COMMANDS},
    driver::{StartTls, TimeLimits, serve, serve_with_tls},
    error::EngineError,
    reply::Reply,
    reply_style::{ReplyFooter, ReplyStyle},
    session::Engine,
    settings::{DEFAULT_COMMAND_COUNT_LIMIT, EngineSettings},
};
