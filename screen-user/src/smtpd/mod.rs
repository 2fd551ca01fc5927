//! postscreen's dummy SMTP engine (`postscreen_smtpd.c`): the SMTP server that screened
//! clients talk to after the 220 greeting, for the deep protocol tests and for the enforce
//! actions. It never accepts mail: every RCPT is refused with the session's `rcpt_reply`
//! (`450 4.3.2 Service currently unavailable` unless an enforce action chose a 550), and the
//! client that passed gets its mail through on its next connection.
//!
//! The engine is a state machine without I/O: [`Engine::on_line`] takes one command line as
//! the [`LineReader`] yields it ([`Engine::on_command`] takes bare text) and returns a
//! [`Step`] (the reply to send, the [`Event`]s to log and whether the session goes on). [`serve`] drives it over any tokio stream with a [`LineReader`], the per-command
//! time limit and end-of-input handling. Logging is the caller's: each event renders
//! postscreen's exact log text through [`Event::line`].
//!
//! Every reply text postscreen sends lives here as a named [`Reply`] constructor, the
//! connection-level ones included, so the whole daemon answers with the same words.
//! [`ReplyStyle`] applies `soft_bounce` and `reject_footer` to a reply, as postscreen does
//! to everything it sends.
//!
//! The engine runs postscreen's three deep protocol tests ([`DeepTests`], each with its own
//! [`TestAction`]): command pipelining, non-SMTP commands and bare newlines. It reports each
//! violation as an [`Event`] with postscreen's log text, answers `drop` at once, makes
//! `enforce` refuse every later RCPT, and keeps per test what the session earned
//! ([`DeepTestResults`]): a test passes only when the client reaches RCPT TO cleanly.
//!
//! [`serve_with_tls`] adds STARTTLS: it accepts the command with `220 2.0.0 Ready to start
//! TLS`, drops any plaintext sent behind it, runs the handshake under a time limit and goes
//! on with the same session over TLS (postscreen does this through `tlsproxy(8)`).
//!
//! Where this engine parts from postscreen, it says so next to the code: logged fields are
//! bounded and escaped, and a run of CRs cannot stretch a line past the length limit.

mod command;
mod deep_tests;
mod error;
mod event;
pub mod line;
mod reply;
mod reply_style;
mod settings;
#[cfg(test)]
mod test_support;
pub mod tls;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::{Instant, timeout, timeout_at},
};

use self::{
    command::{Command, extract_address, next_token, split_command},
    deep_tests::SessionDeepTests,
    event::{escape_input, log_field, printable_command},
    line::{Line, LineEnding, LineError, LineReader},
    reply::truncate_at_char,
    tls::TlsAcceptor,
};
use crate::test_state::TestAction;

pub use self::{
    deep_tests::{
        DEFAULT_FORBIDDEN_COMMANDS, DeepTest, DeepTestResults, DeepTests, ForbiddenCommand,
        MAX_FORBIDDEN_COMMAND_LEN, MAX_FORBIDDEN_COMMANDS,
    },
    error::EngineError,
    event::{
        AFTER_CONNECT, AFTER_UNKNOWN, ClientAddr, DelayDisplay, Event, EventLine,
        LOGGED_INPUT_BYTES, MAX_LOGGED_FIELD, Proto,
    },
    reply::{MAX_REPLY_TEXT, Reply},
    reply_style::{ReplyFooter, ReplyStyle},
    settings::{
        DEFAULT_COMMAND_COUNT_LIMIT, DEFAULT_MESSAGE_SIZE_LIMIT, EngineSettings,
        MAX_COMMAND_COUNT_LIMIT, MIN_LINE_LENGTH_LIMIT,
    },
};

// ---------------------------------------------------------------------------------------
// The engine

/// What the engine wants after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read the next command.
    Continue,
    /// Stop reading. For [`SessionEnd::StartTls`] the caller answers (see there); otherwise
    /// it closes the connection after the reply.
    Stop(SessionEnd),
}

/// Why the engine stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client sent QUIT.
    Quit,
    /// DATA or BDAT: postscreen refuses and hangs up rather than read a message.
    DataRefused,
    /// The X21 final reply was sent ([`Engine::set_final_reply`]).
    FinalReply,
    CommandCountLimit,
    CommandLengthLimit,
    CommandTimeLimit,
    /// The client closed the connection, or writing to it failed.
    Hangup,
    /// STARTTLS was accepted and nothing was sent: the caller sends [`Engine::tls_ready`],
    /// does the handshake and calls [`Engine::tls_established`], or sends
    /// [`Engine::tls_unavailable`]; then it runs [`serve`] again.
    /// [`serve_with_tls`] does all of this itself and never returns
    /// this.
    StartTls,
    /// A deep test failed with action `drop`: its `521` reply was sent.
    Dropped(DeepTest),
}

/// The engine's answer to one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The reply to send, soft-bounce and footer applied.
    pub reply: Option<Reply>,
    /// What to log, in order.
    pub events: Vec<Event>,
    pub next: Next,
}

impl Step {
    /// The bytes to write to the client (empty when there is no reply).
    pub fn bytes(&self) -> Vec<u8> {
        self.reply.as_ref().map(Reply::to_bytes).unwrap_or_default()
    }

    /// The connection is to be closed once the reply is sent.
    pub fn closes(&self) -> bool {
        matches!(self.next, Next::Stop(end) if end != SessionEnd::StartTls)
    }
}

/// One client's session with the dummy SMTP engine.
#[derive(Debug)]
pub struct Engine {
    settings: Arc<EngineSettings>,
    style: ReplyStyle,
    client: SocketAddr,
    rcpt_reply: Reply,
    final_reply: Option<Reply>,
    pregreeted: bool,
    tls_active: bool,
    helo: Option<String>,
    sender: Option<String>,
    proto: Proto,
    last_command: &'static str,
    command_count: u32,
    rcpt_reached: bool,
    stopped: Option<SessionEnd>,
    /// When [`serve`] first ran: the start of "tests after SMTP handshake".
    started: Option<Instant>,
    /// The driver sent the greeting (or decided not to): never twice in a session.
    greeting_done: bool,
    /// Which deep tests run in this session, which fired, and what each earned.
    deep: SessionDeepTests,
}

impl Engine {
    /// An engine for one client, or the first setting that is wrong.
    pub fn new(
        settings: impl Into<Arc<EngineSettings>>,
        client: SocketAddr,
    ) -> Result<Self, EngineError> {
        let settings = settings.into();
        let style = settings.style()?;
        let deep = SessionDeepTests::new(&settings.deep_tests);
        Ok(Self {
            rcpt_reply: settings.rcpt_reply.clone(),
            settings,
            style,
            client,
            final_reply: None,
            pregreeted: false,
            tls_active: false,
            helo: None,
            sender: None,
            proto: Proto::Smtp,
            last_command: AFTER_CONNECT,
            command_count: 0,
            rcpt_reached: false,
            stopped: None,
            started: None,
            greeting_done: false,
            deep,
        })
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// The client talked before the greeting: it gets no `220` from the engine
    /// (postscreen: fewer NON-SMTP COMMAND events, better sender and recipient logging).
    pub fn set_pregreeted(&mut self) {
        self.pregreeted = true;
    }

    /// Refuse recipients with `reply` from now on (an enforce action; the last one set wins).
    pub fn set_rcpt_reply(&mut self, reply: Reply) -> Result<(), EngineError> {
        if !reply.is_negative() {
            return Err(EngineError::Setting {
                setting: "rcpt_reply",
                value: reply.to_string(),
                why: "must be a 4xx or 5xx reply: the engine never accepts mail".into(),
            });
        }
        self.rcpt_reply = reply;
        Ok(())
    }

    /// postscreen's X21 mode: answer the next command but QUIT with `reply` and hang up.
    /// Used when a hand-off fails after the `220-` teaser, so that the client never sees
    /// `220-` followed by `421`. No deep test runs in this mode.
    pub fn set_final_reply(&mut self, reply: Reply) {
        self.final_reply = Some(reply);
        self.deep.stop_all();
    }

    /// Runs `test` with `action` in this session, or not at all with `None`, whatever the
    /// settings say. postscreen turns every deep test on for a client that already failed a
    /// test before the greeting, for better logging. A test the client already violated
    /// keeps its result.
    pub fn set_deep_test(&mut self, test: DeepTest, action: Option<TestAction>) {
        self.deep.set(test, action);
    }

    /// What the session earned in each deep test so far.
    pub fn deep_test_results(&self) -> DeepTestResults {
        self.deep.results()
    }

    /// The session runs over TLS.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The `220` greeting, or `None` for a client that pregreeted or after STARTTLS.
    pub fn greeting(&self) -> Option<Reply> {
        (!self.pregreeted && !self.tls_active).then(|| Reply::greeting(&self.settings.smtpd_banner))
    }

    /// The client reached RCPT (whatever the reply): the deep tests pass only then.
    pub fn rcpt_reached(&self) -> bool {
        self.rcpt_reached
    }

    /// The last HELO/EHLO name.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// The sender of the current transaction.
    pub fn sender(&self) -> Option<&str> {
        self.sender.as_deref()
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Commands counted so far (QUIT included, as postscreen counts it).
    pub fn command_count(&self) -> u32 {
        self.command_count
    }

    /// The last command seen, as log lines name it (`CONNECT` before the first).
    pub fn last_command(&self) -> &'static str {
        self.last_command
    }

    /// When the driver first ran this session, recorded at its first call: the start of
    /// "tests after SMTP handshake", which a `HANGUP` line counts from.
    fn started_at(&mut self) -> Instant {
        *self.started.get_or_insert_with(Instant::now)
    }

    /// The greeting for the driver to send, the first time it asks: a session is greeted
    /// once, and not at all after a pregreet ([`Engine::greeting`]).
    fn take_greeting(&mut self) -> Option<Reply> {
        if self.greeting_done {
            return None;
        }
        self.greeting_done = true;
        self.greeting()
    }

    /// The reply that accepts STARTTLS, for the caller to send before its TLS handshake.
    pub fn tls_ready(&self) -> Reply {
        self.finish(&Reply::starttls_ready())
    }

    /// TLS is up: reset the session as postscreen does after STARTTLS (helo and sender are
    /// forgotten; EHLO no longer offers STARTTLS) and take commands again.
    pub fn tls_established(&mut self) {
        self.tls_active = true;
        self.helo = None;
        self.sender = None;
        self.stopped = None;
    }

    /// TLS could not be started after all: take plaintext commands again, and return the
    /// `454` for the caller to send.
    pub fn tls_unavailable(&mut self) -> Reply {
        self.stopped = None;
        self.finish(&Reply::tls_unavailable())
    }

    /// `reply` as this client gets it (soft bounce, footer): for replies the caller sends
    /// itself, such as [`Reply::starttls_ready`].
    pub fn finish(&self, reply: &Reply) -> Reply {
        self.style
            .apply(reply, self.client, &self.settings.myhostname)
    }

    /// Handles one command line (without its line ending) that ended in CRLF with nothing
    /// sent after it: the bare newline and pipelining tests see nothing wrong.
    pub fn on_command(&mut self, line: &[u8]) -> Step {
        self.on_line(Line {
            text: line,
            ending: LineEnding::CrLf,
            pending: false,
            following: &[],
        })
    }

    /// Handles one command line from the [`LineReader`], with the
    /// deep tests: its ending for the bare newline test, and the input that followed it for
    /// the pipelining test.
    ///
    /// In postscreen's order: the bare newline test when the line is read, then the
    /// non-SMTP and pipelining tests, then the pass at RCPT, the command count, and the
    /// command itself. A test whose action is `drop` ends the session with its `521` before
    /// the command runs.
    pub fn on_line(&mut self, line: Line<'_>) -> Step {
        if let Some(end) = self.stopped {
            return Step {
                reply: None,
                events: Vec::new(),
                next: Next::Stop(end),
            };
        }
        let mut events = Vec::new();
        if line.ending == LineEnding::BareLf && self.deep.armed(DeepTest::BareNewline) {
            // The whole line, NUL and all, as postscreen escapes its buffer.
            events.push(Event::BareNewline {
                line: escape_input(line.text),
            });
            if let Some(step) = self.violation(DeepTest::BareNewline, &mut events) {
                return step;
            }
        }
        let mut step = self.command(line.text, line.following, &mut events);
        if !events.is_empty() {
            events.append(&mut step.events);
            step.events = events;
        }
        step
    }

    /// Records a violation of an armed `test` (its event is already in `events`) and applies
    /// its action: the step that ends the session for `drop`, `None` otherwise.
    fn violation(&mut self, test: DeepTest, events: &mut Vec<Event>) -> Option<Step> {
        match self.deep.violated(test)? {
            TestAction::Ignore => None,
            // The last enforce action to set the RCPT reply wins, as in postscreen.
            TestAction::Enforce => {
                self.rcpt_reply = Reply::protocol_error_enforce();
                None
            }
            TestAction::Drop => Some(self.stop(
                test.drop_reply(),
                std::mem::take(events),
                SessionEnd::Dropped(test),
            )),
        }
    }

    /// Everything after the bare newline test: `events` holds what the deep tests found.
    fn command(&mut self, line: &[u8], following: &[u8], events: &mut Vec<Event>) -> Step {
        // The command line is a C string in postscreen: a NUL ends it.
        let line = match line.iter().position(|&b| b == 0) {
            Some(nul) => &line[..nul],
            None => line,
        };
        let (name, args) = split_command(line);
        let command = Command::lookup(name);
        let previous = self.last_command;
        self.last_command = command.map_or(AFTER_UNKNOWN, |(known, _)| known);
        let command = command.map(|(_, command)| command);

        if command != Some(Command::Quit)
            && let Some(reply) = self.final_reply.clone()
        {
            return self.stop(reply, std::mem::take(events), SessionEnd::FinalReply);
        }
        // AUTH, XCLIENT and XFORWARD are known commands: only unknown ones are tested.
        if command.is_none()
            && self.deep.armed(DeepTest::NonSmtpCommand)
            && self
                .settings
                .deep_tests
                .is_non_smtp(name, self.settings.smtputf8)
        {
            events.push(Event::NonSmtpCommand {
                after: previous,
                command: printable_command(name, self.settings.smtputf8),
                rest: escape_input(args),
            });
            if let Some(step) = self.violation(DeepTest::NonSmtpCommand, events) {
                return step;
            }
        }
        // BDAT is followed by its chunk, which is not a pipelined command.
        if command != Some(Command::Bdat)
            && !following.is_empty()
            && self.deep.armed(DeepTest::Pipelining)
        {
            events.push(Event::CommandPipelining {
                command: printable_command(name, self.settings.smtputf8),
                pending: escape_input(following),
            });
            if let Some(step) = self.violation(DeepTest::Pipelining, events) {
                return step;
            }
        }
        // Reaching RCPT is what passes the deep tests, whatever this RCPT's fate; a later
        // violation can still fail them.
        if command == Some(Command::Rcpt) {
            self.rcpt_reached = true;
            self.deep.pass_at_rcpt();
        }
        self.command_count = self.command_count.saturating_add(1);
        if self.command_count > self.settings.command_count_limit && command != Some(Command::Quit)
        {
            events.push(Event::CommandCountLimit { after: previous });
            return self.stop(
                Reply::service_unavailable_421(&self.settings.myhostname),
                std::mem::take(events),
                SessionEnd::CommandCountLimit,
            );
        }
        match command {
            None | Some(Command::Auth | Command::Xclient | Command::Xforward) => {
                self.reply(Reply::not_recognized())
            }
            Some(Command::Helo) => self.helo_command(args, false),
            Some(Command::Ehlo) => self.helo_command(args, true),
            Some(Command::StartTls) => self.starttls_command(args),
            Some(Command::Mail) => self.mail_command(args),
            Some(Command::Rcpt) => self.rcpt_command(args),
            Some(Command::Data) => self.data_command(args),
            Some(Command::Bdat) => self.bdat_command(args),
            Some(Command::Rset) => {
                self.sender = None;
                self.reply(Reply::ok())
            }
            Some(Command::Noop) => self.reply(Reply::ok()),
            Some(Command::Vrfy) => self.vrfy_command(args),
            Some(Command::Etrn) => self.etrn_command(args),
            Some(Command::Quit) => self.stop(Reply::bye(), Vec::new(), SessionEnd::Quit),
        }
    }

    /// The line reader refused an over-long line: `421` and close.
    pub fn on_line_too_long(&mut self) -> Step {
        let after = self.last_command;
        self.stop(
            Reply::service_unavailable_421(&self.settings.myhostname),
            vec![Event::CommandLengthLimit { after }],
            SessionEnd::CommandLengthLimit,
        )
    }

    /// No complete command within the command time limit: `421 4.4.2` and close.
    pub fn on_time_limit(&mut self) -> Step {
        let after = self.last_command;
        self.stop(
            Reply::timeout_exceeded(&self.settings.myhostname),
            vec![Event::CommandTimeLimit { after }],
            SessionEnd::CommandTimeLimit,
        )
    }

    /// The client went away `elapsed` after the engine started. Not a test failure.
    pub fn on_hangup(&mut self, elapsed: Duration) -> Step {
        self.stopped = Some(SessionEnd::Hangup);
        Step {
            reply: None,
            events: vec![Event::Hangup { after: elapsed }],
            next: Next::Stop(SessionEnd::Hangup),
        }
    }

    fn reply(&self, reply: Reply) -> Step {
        Step {
            reply: Some(self.finish(&reply)),
            events: Vec::new(),
            next: Next::Continue,
        }
    }

    fn stop(&mut self, reply: Reply, events: Vec<Event>, end: SessionEnd) -> Step {
        self.stopped = Some(end);
        Step {
            reply: Some(self.finish(&reply)),
            events,
            next: Next::Stop(end),
        }
    }

    fn helo_command(&mut self, args: &[u8], extended: bool) -> Step {
        // Like postscreen (unlike smtpd), words after the name are ignored.
        let Some(name) = next_token(args) else {
            return self.reply(if extended {
                Reply::ehlo_syntax()
            } else {
                Reply::helo_syntax()
            });
        };
        self.helo = Some(log_field(name));
        self.sender = None;
        if !extended {
            // HELO does not downgrade a session that already said EHLO.
            return self.reply(Reply::helo(&self.settings.myhostname));
        }
        self.proto = Proto::Esmtp;
        self.reply(self.ehlo_reply())
    }

    /// postscreen's EHLO reply: no PIPELINING (the pipelining test depends on that), no AUTH.
    fn ehlo_reply(&self) -> Reply {
        let s = &self.settings;
        let mut keywords = vec![match s.message_size_limit {
            0 => "SIZE".to_string(),
            limit => format!("SIZE {limit}"),
        }];
        if !s.disable_vrfy {
            keywords.push("VRFY".into());
        }
        keywords.push("ETRN".into());
        if s.starttls_offered && !self.tls_active {
            keywords.push("STARTTLS".into());
        }
        keywords.extend([
            "ENHANCEDSTATUSCODES".into(),
            "8BITMIME".into(),
            "DSN".into(),
        ]);
        if s.smtputf8 {
            keywords.push("SMTPUTF8".into());
        }
        keywords.push("CHUNKING".into());
        Reply::ehlo(&s.myhostname, keywords)
    }

    fn starttls_command(&mut self, args: &[u8]) -> Step {
        if next_token(args).is_some() {
            return self.reply(Reply::starttls_syntax());
        }
        if self.tls_active {
            return self.reply(Reply::tls_already_active());
        }
        if !self.settings.starttls_offered {
            return self.reply(Reply::not_implemented());
        }
        // Input the client sent after STARTTLS must not be read as if it came over TLS;
        // the caller drops its plaintext buffer when it takes over.
        self.stopped = Some(SessionEnd::StartTls);
        Step {
            reply: None,
            events: Vec::new(),
            next: Next::Stop(SessionEnd::StartTls),
        }
    }

    fn mail_command(&mut self, args: &[u8]) -> Step {
        // Like postscreen (unlike smtpd): the sender is never refused, the word before the
        // colon is not checked, and parameters are ignored.
        if self.settings.helo_required && self.helo.is_none() {
            return self.reply(Reply::send_helo_first());
        }
        if self.sender.is_some() {
            return self.reply(Reply::nested_mail());
        }
        let Some(colon) = args.iter().position(|&b| b == b':') else {
            return self.reply(Reply::mail_syntax());
        };
        self.sender = Some(log_field(&extract_address(&args[colon + 1..])));
        self.reply(Reply::sender_ok())
    }

    fn rcpt_command(&mut self, args: &[u8]) -> Step {
        let Some(from) = self.sender.clone() else {
            return self.reply(Reply::need_mail());
        };
        let Some(colon) = args.iter().position(|&b| b == b':') else {
            return self.reply(Reply::rcpt_syntax());
        };
        let event = Event::RcptRejected {
            reply: self.style.for_log(&self.rcpt_reply),
            from,
            to: log_field(&extract_address(&args[colon + 1..])),
            proto: self.proto,
            helo: self.helo.clone().unwrap_or_default(),
        };
        let mut step = self.reply(self.rcpt_reply.clone());
        step.events.push(event);
        step
    }

    fn data_command(&mut self, args: &[u8]) -> Step {
        // Logged before the syntax checks, as postscreen does.
        let reply = if next_token(args).is_some() {
            Reply::data_syntax()
        } else if self.sender.is_none() {
            Reply::need_rcpt()
        } else {
            Reply::no_valid_recipients()
        };
        self.stop(reply, vec![Event::DataWithoutRcpt], SessionEnd::DataRefused)
    }

    fn bdat_command(&mut self, args: &[u8]) -> Step {
        let reply = if next_token(args).is_none() {
            Reply::bdat_syntax()
        } else if self.sender.is_none() {
            Reply::bdat_need_mail()
        } else {
            Reply::no_valid_recipients()
        };
        self.stop(reply, vec![Event::BdatWithoutRcpt], SessionEnd::DataRefused)
    }

    fn vrfy_command(&mut self, args: &[u8]) -> Step {
        if next_token(args).is_none() {
            return self.reply(Reply::vrfy_syntax());
        }
        if self.settings.disable_vrfy {
            return self.reply(Reply::vrfy_disabled());
        }
        // Refused like a recipient, but not logged.
        self.reply(self.rcpt_reply.clone())
    }

    fn etrn_command(&mut self, args: &[u8]) -> Step {
        if self.settings.helo_required && self.helo.is_none() {
            return self.reply(Reply::send_helo_first());
        }
        if next_token(args).is_none() {
            return self.reply(Reply::etrn_syntax());
        }
        self.reply(Reply::etrn_refused())
    }
}

// ---------------------------------------------------------------------------------------
// The driver

/// How long closing a TLS session (its close_notify) may take after the last reply.
const TLS_CLOSE_TIME_LIMIT: Duration = Duration::from_secs(5);

/// The longest handshake error text put in a log line.
const MAX_TLS_ERROR_TEXT: usize = 200;

/// How a [`serve`] run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Every event of the run, in order (also passed to the caller's sink as they happen).
    pub events: Vec<Event>,
    /// The client reached RCPT: the deep tests pass.
    pub rcpt_reached: bool,
    pub end: SessionEnd,
    /// What the session earned in each deep test ([`Engine::deep_test_results`]).
    pub deep_tests: DeepTestResults,
}

impl Outcome {
    /// `engine`'s session as it stands after `events`, ended by `end`.
    fn of(engine: &Engine, events: Vec<Event>, end: SessionEnd) -> Self {
        Self {
            events,
            rcpt_reached: engine.rcpt_reached(),
            end,
            deep_tests: engine.deep_test_results(),
        }
    }
}

/// Runs the engine over `stream` until the session ends.
///
/// Sends the greeting unless the client pregreeted, then reads command lines and answers
/// them. `command_time_limit` is a deadline for each whole command line, reset only when a
/// command has been answered, so a client that trickles one byte at a time gains nothing.
/// A write that does not finish within the same time counts as a hangup. Each event goes to
/// `on_event` when it happens (for logging) and into the [`Outcome`].
///
/// After [`SessionEnd::StartTls`] nothing was sent: the caller answers and runs `serve`
/// again, on the TLS stream after a handshake. Client input buffered behind STARTTLS is
/// dropped with this run's reader, so nothing sent in plaintext is taken as sent over TLS.
/// After any other end the caller closes the connection. [`serve_with_tls`] does the
/// STARTTLS part itself.
pub async fn serve<S, F>(
    stream: &mut S,
    engine: &mut Engine,
    command_time_limit: Duration,
    mut on_event: F,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Event),
{
    let mut reader = LineReader::new(engine.settings().line_length_limit);
    let mut events = Vec::new();
    let end = run(
        stream,
        engine,
        &mut reader,
        command_time_limit,
        &mut on_event,
        &mut events,
    )
    .await;
    Outcome::of(engine, events, end)
}

/// What [`serve_with_tls`] needs for STARTTLS.
#[derive(Clone, Copy)]
pub struct StartTls<'a> {
    /// The server's certificate and settings ([`tls::load_acceptor`]).
    pub acceptor: &'a TlsAcceptor,
    /// How long the handshake may take. postscreen gives tlsproxy the normal command time
    /// limit, never the shorter one of stress mode.
    pub handshake_time_limit: Duration,
}

/// [`serve`] with STARTTLS handled: the whole session, over `stream` and then, once the
/// client asked for it, over TLS.
///
/// When the engine accepts STARTTLS ([`EngineSettings::starttls_offered`]), this sends
/// `220 2.0.0 Ready to start TLS`, forgets every byte the client sent after the command
/// (the defence against STARTTLS command injection: nothing sent in plaintext is read as if
/// it came over TLS), and runs the handshake within `handshake_time_limit`. The session then
/// goes on over TLS, without a second greeting, and its log gets tlsproxy's `Anonymous TLS
/// connection established` line. A failed handshake ends the session with tlsproxy's
/// `SSL_accept error` line and a hangup. Without `starttls` the client is told `454 4.7.0
/// TLS not available due to local problem` and the session goes on in plaintext.
///
/// The connection is closed when this returns (a TLS session with its close_notify).
pub async fn serve_with_tls<S, F>(
    mut stream: S,
    engine: &mut Engine,
    command_time_limit: Duration,
    starttls: Option<StartTls<'_>>,
    mut on_event: F,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Event),
{
    let limit = command_time_limit;
    let mut reader = LineReader::new(engine.settings().line_length_limit);
    let mut events = Vec::new();
    let tls = loop {
        match run(
            &mut stream,
            engine,
            &mut reader,
            limit,
            &mut on_event,
            &mut events,
        )
        .await
        {
            SessionEnd::StartTls => {}
            end => return Outcome::of(engine, events, end),
        }
        if let Some(tls) = starttls {
            break tls;
        }
        // STARTTLS was offered without a certificate. Buffered input stays: it was sent in
        // plaintext and is read in plaintext.
        let reply = engine.tls_unavailable();
        if send(&mut stream, &reply, limit).await.is_err() {
            return hang_up(engine, events, &mut on_event);
        }
    };

    if send(&mut stream, &engine.tls_ready(), limit).await.is_err() {
        return hang_up(engine, events, &mut on_event);
    }
    reader.clear();
    let reason = match timeout(tls.handshake_time_limit, tls.acceptor.accept(stream)).await {
        Ok(Ok(mut stream)) => {
            let event = Event::TlsEstablished {
                summary: tls::Summary::of(stream.get_ref().1),
            };
            on_event(&event);
            events.push(event);
            engine.tls_established();
            let outcome = loop {
                match run(
                    &mut stream,
                    engine,
                    &mut reader,
                    limit,
                    &mut on_event,
                    &mut events,
                )
                .await
                {
                    // The engine refuses a second STARTTLS; answer as if it had not.
                    SessionEnd::StartTls => {
                        let reply = engine.tls_unavailable();
                        if send(&mut stream, &reply, limit).await.is_err() {
                            break hang_up(engine, events, &mut on_event);
                        }
                    }
                    end => break Outcome::of(engine, events, end),
                }
            };
            // close_notify; the client may be gone already.
            let _ = timeout(TLS_CLOSE_TIME_LIMIT, stream.shutdown()).await;
            return outcome;
        }
        Ok(Err(e)) => handshake_error(&e),
        Err(_elapsed) => "handshake timed out".to_string(),
    };
    let event = Event::TlsHandshakeFailed { reason };
    on_event(&event);
    events.push(event);
    hang_up(engine, events, &mut on_event)
}

/// tlsproxy's words for a failed handshake: `lost connection` when the client went away,
/// otherwise the TLS library's reason, bounded and printable.
fn handshake_error(error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        return "lost connection".to_string();
    }
    let mut text: String = error
        .to_string()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    truncate_at_char(&mut text, MAX_TLS_ERROR_TEXT);
    text
}

/// Ends the session as a hangup: the client is gone or cannot be written to.
fn hang_up(
    engine: &mut Engine,
    mut events: Vec<Event>,
    on_event: &mut impl FnMut(&Event),
) -> Outcome {
    let started = engine.started_at();
    let step = engine.on_hangup(started.elapsed());
    for event in &step.events {
        on_event(event);
    }
    events.extend(step.events);
    Outcome::of(engine, events, SessionEnd::Hangup)
}

/// Answers commands from `stream` until the engine stops, and says why. `reader` holds input
/// not yet handled; the greeting goes out once per session.
async fn run<S, F>(
    stream: &mut S,
    engine: &mut Engine,
    reader: &mut LineReader,
    command_time_limit: Duration,
    on_event: &mut F,
    events: &mut Vec<Event>,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Event),
{
    let started = engine.started_at();
    if let Some(greeting) = engine.take_greeting()
        && send(stream, &greeting, command_time_limit).await.is_err()
    {
        let step = engine.on_hangup(started.elapsed());
        return conclude(events, step, on_event);
    }
    let mut deadline = Instant::now() + command_time_limit;
    loop {
        let step = match reader.next_line() {
            Ok(Some(line)) => engine.on_line(line),
            Err(LineError::TooLong { .. }) => engine.on_line_too_long(),
            Ok(None) => {
                let spare = reader.spare();
                if spare.is_empty() {
                    // Cannot happen with a reader that returned Ok(None); refuse anyway
                    // rather than read nothing and take it for end of input.
                    engine.on_line_too_long()
                } else {
                    match timeout_at(deadline, stream.read(spare)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => engine.on_hangup(started.elapsed()),
                        Ok(Ok(n)) => {
                            reader.commit(n);
                            continue;
                        }
                        Err(_elapsed) => engine.on_time_limit(),
                    }
                }
            }
        };
        for event in &step.events {
            on_event(event);
        }
        events.extend(step.events.iter().cloned());
        if let Some(reply) = &step.reply
            && send(stream, reply, command_time_limit).await.is_err()
            && step.next == Next::Continue
        {
            // postscreen treats a failed write like a hangup; after a final reply the
            // session ends anyway.
            let step = engine.on_hangup(started.elapsed());
            return conclude(events, step, on_event);
        }
        match step.next {
            Next::Continue => deadline = Instant::now() + command_time_limit,
            Next::Stop(end) => return end,
        }
    }
}

/// Ends a run with `step`, which carries no reply.
fn conclude(events: &mut Vec<Event>, step: Step, on_event: &mut impl FnMut(&Event)) -> SessionEnd {
    for event in &step.events {
        on_event(event);
    }
    events.extend(step.events);
    match step.next {
        Next::Stop(end) => end,
        Next::Continue => SessionEnd::Hangup,
    }
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reply: &Reply,
    limit: Duration,
) -> io::Result<()> {
    let bytes = reply.to_bytes();
    let write = async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    };
    match timeout(limit, write).await {
        Ok(result) => result,
        Err(_elapsed) => Err(io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio::{
        io::{DuplexStream, duplex},
        net::{TcpListener, TcpStream},
    };
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::{
        escape::c_escape,
        smtpd::{
            event::MAX_LOGGED_FIELD,
            test_support::{HOST, PIPELINED, client, deep_engine, engine, engine_with, lines},
        },
        test_state::Outcome as TestOutcome,
    };

    /// The reply bytes to `line`, which must leave the session open and log nothing.
    fn reply(engine: &mut Engine, line: &str) -> String {
        let step = engine.on_command(line.as_bytes());
        assert_eq!(step.next, Next::Continue, "{line:?} ended the session");
        assert!(step.events.is_empty(), "{line:?} logged {:?}", step.events);
        String::from_utf8(step.bytes()).unwrap()
    }

    // Commands

    #[test]
    fn the_greeting_is_the_banner_unless_the_client_pregreeted() {
        let mut engine = engine();
        assert_eq!(
            engine.greeting().unwrap().to_bytes(),
            b"220 mx.example.test ESMTP Postfix\r\n"
        );
        engine.set_pregreeted();
        assert_eq!(engine.greeting(), None);
    }

    #[test]
    fn helo_and_ehlo() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "HELO client.example"),
            "250 mx.example.test\r\n"
        );
        assert_eq!(e.helo(), Some("client.example"));
        assert_eq!(e.proto(), Proto::Smtp);
        assert_eq!(reply(&mut e, "HELO"), "501 Syntax: HELO hostname\r\n");
        assert_eq!(reply(&mut e, "HELO    "), "501 Syntax: HELO hostname\r\n");
        assert_eq!(reply(&mut e, "EHLO"), "501 Syntax: EHLO hostname\r\n");
        // Extra words are ignored.
        assert_eq!(
            reply(&mut e, "HELO  a.example b c"),
            "250 mx.example.test\r\n"
        );
        assert_eq!(e.helo(), Some("a.example"));
    }

    #[test]
    fn the_ehlo_reply_matches_the_lab_capture() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "EHLO client.example"),
            "250-mx.example.test\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n\
             250 CHUNKING\r\n"
        );
        assert_eq!(e.proto(), Proto::Esmtp);
        // HELO does not downgrade the protocol.
        reply(&mut e, "HELO client.example");
        assert_eq!(e.proto(), Proto::Esmtp);
    }

    #[test]
    fn the_ehlo_reply_follows_the_settings() {
        let mut e = engine_with(|s| {
            s.starttls_offered = true;
            s.disable_vrfy = true;
            s.smtputf8 = false;
            s.message_size_limit = 0;
        });
        assert_eq!(
            reply(&mut e, "EHLO c"),
            "250-mx.example.test\r\n250-SIZE\r\n250-ETRN\r\n250-STARTTLS\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 CHUNKING\r\n"
        );
    }

    #[test]
    fn commands_are_case_insensitive() {
        let mut e = engine();
        assert_eq!(reply(&mut e, "ehlo c"), reply(&mut engine(), "EHLO c"));
        assert_eq!(reply(&mut e, "nOoP"), "250 2.0.0 Ok\r\n");
        assert_eq!(reply(&mut e, "mail from:<a@b>"), "250 2.1.0 Ok\r\n");
        assert_eq!(reply(&mut e, "  rset"), "250 2.0.0 Ok\r\n");
        let step = e.on_command(b"qUiT");
        assert_eq!(step.next, Next::Stop(SessionEnd::Quit));
    }

    #[test]
    fn mail_from() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "MAIL"),
            "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
        );
        assert_eq!(
            reply(&mut e, "MAIL FROM"),
            "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
        );
        assert_eq!(e.sender(), None);
        assert_eq!(
            reply(&mut e, "MAIL FROM:<s@example.org> SIZE=100 BODY=8BITMIME"),
            "250 2.1.0 Ok\r\n"
        );
        assert_eq!(e.sender(), Some("s@example.org"));
        assert_eq!(
            reply(&mut e, "MAIL FROM:<t@example.org>"),
            "503 5.5.1 Error: nested MAIL command\r\n"
        );
        assert_eq!(reply(&mut e, "RSET"), "250 2.0.0 Ok\r\n");
        assert_eq!(e.sender(), None);
        assert_eq!(reply(&mut e, "MAIL FROM:<>"), "250 2.1.0 Ok\r\n");
        assert_eq!(e.sender(), Some(""));
        // EHLO starts a new transaction.
        reply(&mut e, "EHLO c");
        assert_eq!(e.sender(), None);
    }

    #[test]
    fn helo_required() {
        let mut e = engine_with(|s| s.helo_required = true);
        assert_eq!(
            reply(&mut e, "MAIL FROM:<a@b>"),
            "503 5.5.1 Error: send HELO/EHLO first\r\n"
        );
        assert_eq!(
            reply(&mut e, "ETRN example.org"),
            "503 5.5.1 Error: send HELO/EHLO first\r\n"
        );
        reply(&mut e, "HELO c");
        assert_eq!(reply(&mut e, "MAIL FROM:<a@b>"), "250 2.1.0 Ok\r\n");
        assert_eq!(
            reply(&mut e, "ETRN example.org"),
            "458 Unable to queue messages\r\n"
        );
        // Without the setting no HELO is needed.
        assert_eq!(reply(&mut engine(), "MAIL FROM:<a@b>"), "250 2.1.0 Ok\r\n");
    }

    #[test]
    fn addresses_are_read_as_postscreen_reads_them() {
        for (arg, address) in [
            ("FROM:<a@example.org>", "a@example.org"),
            ("FROM: <a@example.org> SIZE=1", "a@example.org"),
            ("FROM:a@example.org SIZE=1", "a@example.org"),
            ("FROM:   bare@example.org", "bare@example.org"),
            ("FROM:<>", ""),
            ("FROM:", ""),
            ("FROM:<\"john doe\"@example.org>", "john doe@example.org"),
            ("FROM:<\"a>b\"@example.org>", "a>b@example.org"),
            ("FROM:<a\\>b@example.org>", "a>b@example.org"),
            ("FROM:<trailing\\", "trailing"),
            (
                "FROM:<@relay1,@relay2:user@example.org>",
                "user@example.org",
            ),
            ("FROM:<unterminated@example.org", "unterminated@example.org"),
            // postscreen does not check the word before the colon.
            ("TO:<odd@example.org>", "odd@example.org"),
        ] {
            let mut e = engine();
            reply(&mut e, &format!("MAIL {arg}"));
            assert_eq!(e.sender(), Some(address), "{arg:?}");
        }
    }

    #[test]
    fn rcpt_is_always_refused_and_logged() {
        let mut e = engine();
        reply(&mut e, "EHLO h.example");
        reply(&mut e, "MAIL FROM:<s@example.org>");
        assert!(!e.rcpt_reached());
        let step = e.on_command(b"RCPT TO:<r@example.test> NOTIFY=NEVER");
        assert_eq!(step.bytes(), b"450 4.3.2 Service currently unavailable\r\n");
        assert_eq!(step.next, Next::Continue);
        assert_eq!(
            lines(&step.events),
            [
                "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
              unavailable; from=<s@example.org>, to=<r@example.test>, proto=ESMTP, \
              helo=<h.example>"
            ]
        );
        assert!(e.rcpt_reached());
        // Every further recipient is refused and logged too.
        let step = e.on_command(b"RCPT TO:<second@example.test>");
        assert_eq!(step.events.len(), 1);
    }

    #[test]
    fn rcpt_errors() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "RCPT TO:<r@example.test>"),
            "503 5.5.1 Error: need MAIL command\r\n"
        );
        // Reaching RCPT is what counts for the deep tests, even when it fails.
        assert!(e.rcpt_reached());
        reply(&mut e, "MAIL FROM:<s@example.org>");
        assert_eq!(
            reply(&mut e, "RCPT"),
            "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
        );
        assert_eq!(
            reply(&mut e, "RCPT TO"),
            "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
        );
    }

    #[test]
    fn the_noqueue_line_without_ehlo() {
        let mut e = engine();
        reply(&mut e, "MAIL FROM:<>");
        let step = e.on_command(b"RCPT TO:postmaster");
        assert_eq!(
            lines(&step.events),
            [
                "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
              unavailable; from=<>, to=<postmaster>, proto=SMTP, helo=<>"
            ]
        );
    }

    #[test]
    fn an_enforce_action_changes_the_rcpt_reply() {
        let mut e = engine();
        let dnsbl =
            Reply::dnsbl_enforce("127.0.0.40".parse().unwrap(), "public-bl.example").unwrap();
        e.set_rcpt_reply(dnsbl).unwrap();
        reply(&mut e, "HELO h.example");
        reply(&mut e, "MAIL FROM:<s@example.org>");
        let step = e.on_command(b"RCPT TO:<r@example.test>");
        assert_eq!(
            step.bytes(),
            b"550 5.7.1 Service unavailable; client [127.0.0.40] blocked using \
              public-bl.example\r\n"
        );
        // The lab's line for this client.
        assert_eq!(
            lines(&step.events),
            [
                "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 550 5.7.1 Service unavailable; \
              client [127.0.0.40] blocked using public-bl.example; from=<s@example.org>, \
              to=<r@example.test>, proto=SMTP, helo=<h.example>"
            ]
        );
        // VRFY gets the same reply.
        assert_eq!(
            reply(&mut e, "VRFY r"),
            String::from_utf8(step.bytes()).unwrap()
        );
        // The last enforce action wins.
        e.set_rcpt_reply(Reply::protocol_error_enforce()).unwrap();
        assert_eq!(
            e.on_command(b"RCPT TO:<x@y>").bytes(),
            b"550 5.5.1 Protocol error\r\n"
        );
        assert!(e.set_rcpt_reply(Reply::ok()).is_err());
    }

    #[test]
    fn data_is_refused_and_ends_the_session() {
        for (setup, line, expected) in [
            (&[][..], "DATA", "503 5.5.1 Error: need RCPT command\r\n"),
            (&[][..], "DATA x", "501 5.5.4 Syntax: DATA\r\n"),
            (
                &["MAIL FROM:<a@b>"][..],
                "data",
                "554 5.5.1 Error: no valid recipients\r\n",
            ),
            (
                &["MAIL FROM:<a@b>", "RCPT TO:<c@d>"][..],
                "DATA",
                "554 5.5.1 Error: no valid recipients\r\n",
            ),
        ] {
            let mut e = engine();
            for command in setup {
                e.on_command(command.as_bytes());
            }
            let step = e.on_command(line.as_bytes());
            assert_eq!(
                String::from_utf8(step.bytes()).unwrap(),
                expected,
                "{setup:?} {line}"
            );
            assert_eq!(
                lines(&step.events),
                ["DATA without valid RCPT from [127.0.0.11]:58529"]
            );
            assert_eq!(step.next, Next::Stop(SessionEnd::DataRefused));
            assert!(step.closes());
            // Nothing more happens after the end.
            let after = e.on_command(b"NOOP");
            assert_eq!(after.reply, None);
            assert!(after.events.is_empty());
            assert_eq!(after.next, Next::Stop(SessionEnd::DataRefused));
        }
    }

    #[test]
    fn bdat_is_refused_and_ends_the_session() {
        for (setup, line, expected) in [
            (&[][..], "BDAT", "501 5.5.4 Syntax: BDAT count [LAST]\r\n"),
            (
                &[][..],
                "BDAT 100 LAST",
                "554 5.5.1 Error: need MAIL command\r\n",
            ),
            (
                &["MAIL FROM:<a@b>"][..],
                "BDAT 100",
                "554 5.5.1 Error: no valid recipients\r\n",
            ),
        ] {
            let mut e = engine();
            for command in setup {
                e.on_command(command.as_bytes());
            }
            let step = e.on_command(line.as_bytes());
            assert_eq!(String::from_utf8(step.bytes()).unwrap(), expected, "{line}");
            assert_eq!(
                lines(&step.events),
                ["BDAT without valid RCPT from [127.0.0.11]:58529"]
            );
            assert_eq!(step.next, Next::Stop(SessionEnd::DataRefused));
        }
    }

    #[test]
    fn vrfy_etrn_and_unsupported_commands_as_in_the_lab() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "VRFY postmaster"),
            "450 4.3.2 Service currently unavailable\r\n"
        );
        assert_eq!(
            reply(&mut e, "ETRN example.org"),
            "458 Unable to queue messages\r\n"
        );
        assert_eq!(
            reply(&mut e, "AUTH PLAIN AGZvbwBiYXI="),
            "502 5.5.2 Error: command not recognized\r\n"
        );
        assert_eq!(
            reply(&mut e, "XCLIENT ADDR=1.2.3.4"),
            "502 5.5.2 Error: command not recognized\r\n"
        );
        assert_eq!(
            reply(&mut e, "STARTTLS"),
            "502 5.5.1 Error: command not implemented\r\n"
        );
        assert_eq!(
            reply(&mut e, "XFORWARD NAME=x"),
            "502 5.5.2 Error: command not recognized\r\n"
        );
        assert_eq!(reply(&mut e, "VRFY"), "501 5.5.4 Syntax: VRFY address\r\n");
        assert_eq!(reply(&mut e, "ETRN"), "500 Syntax: ETRN domain\r\n");
        assert_eq!(reply(&mut e, "ETRN  "), "500 Syntax: ETRN domain\r\n");
    }

    #[test]
    fn vrfy_can_be_disabled() {
        let mut e = engine_with(|s| s.disable_vrfy = true);
        assert_eq!(
            reply(&mut e, "VRFY postmaster"),
            "502 5.5.1 VRFY command is disabled\r\n"
        );
        // The syntax check comes first.
        assert_eq!(reply(&mut e, "VRFY"), "501 5.5.4 Syntax: VRFY address\r\n");
    }

    #[test]
    fn unknown_and_garbage_commands_are_not_recognized() {
        let mut e = engine();
        for line in [
            &b""[..],
            b"   ",
            b"GET / HTTP/1.0",
            b"Subject: hello",
            b"NOOP\tx",
            b"\xff\xfe\x00",
            b"HELOX a",
            b"QUITE",
        ] {
            let step = e.on_command(line);
            assert_eq!(
                step.bytes(),
                b"502 5.5.2 Error: command not recognized\r\n",
                "{line:?}"
            );
            assert_eq!(step.next, Next::Continue);
            assert_eq!(e.last_command(), AFTER_UNKNOWN);
        }
    }

    #[test]
    fn a_nul_ends_the_command_line() {
        let mut e = engine();
        assert_eq!(reply(&mut e, "NOOP\0garbage"), "250 2.0.0 Ok\r\n");
        reply(&mut e, "MAIL FROM:<a\0b@example.org>");
        assert_eq!(e.sender(), Some("a"));
    }

    #[test]
    fn quit() {
        let mut e = engine();
        let step = e.on_command(b"QUIT");
        assert_eq!(step.bytes(), b"221 2.0.0 Bye\r\n");
        assert_eq!(step.next, Next::Stop(SessionEnd::Quit));
        assert!(step.closes());
        assert!(step.events.is_empty());
    }

    #[test]
    fn starttls() {
        let mut e = engine();
        assert_eq!(
            reply(&mut e, "STARTTLS"),
            "502 5.5.1 Error: command not implemented\r\n"
        );

        let mut e = engine_with(|s| s.starttls_offered = true);
        assert_eq!(
            reply(&mut e, "STARTTLS now"),
            "501 5.5.4 Syntax: STARTTLS\r\n"
        );
        reply(&mut e, "EHLO c.example");
        reply(&mut e, "MAIL FROM:<a@b>");
        let step = e.on_command(b"STARTTLS");
        assert_eq!(step.reply, None);
        assert_eq!(step.next, Next::Stop(SessionEnd::StartTls));
        assert!(!step.closes());
        // The caller answers.
        assert_eq!(
            e.tls_ready().to_bytes(),
            b"220 2.0.0 Ready to start TLS\r\n"
        );
        e.tls_established();
        assert_eq!(e.helo(), None);
        assert_eq!(e.sender(), None);
        assert_eq!(e.greeting(), None);
        assert!(!reply(&mut e, "EHLO c.example").contains("STARTTLS"));
        assert_eq!(
            reply(&mut e, "STARTTLS"),
            "554 5.5.1 Error: TLS already active\r\n"
        );
    }

    #[test]
    fn starttls_that_fails_resumes_in_plaintext() {
        let mut e = engine_with(|s| {
            s.starttls_offered = true;
            s.reject_footer = Some("help".into());
        });
        reply(&mut e, "EHLO c.example");
        assert_eq!(
            e.on_command(b"STARTTLS").next,
            Next::Stop(SessionEnd::StartTls)
        );
        // Stopped until the caller says how STARTTLS went.
        assert_eq!(e.on_command(b"NOOP").reply, None);
        assert_eq!(
            e.tls_unavailable().to_bytes(),
            b"454-4.7.0 TLS not available due to local problem\r\n454 4.7.0 help\r\n"
        );
        assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
        // Still plaintext: the greeting rules and the EHLO offer are unchanged.
        assert!(reply(&mut e, "EHLO c.example").contains("250-STARTTLS\r\n"));
        assert_eq!(e.helo(), Some("c.example"));
    }

    #[test]
    fn the_seventh_noop_with_a_limit_of_six_gets_421() {
        let mut e = engine_with(|s| s.command_count_limit = 6);
        for _ in 0..6 {
            assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
        }
        let step = e.on_command(b"NOOP");
        assert_eq!(
            step.bytes(),
            b"421 mx.example.test Service unavailable - try again later\r\n"
        );
        assert_eq!(
            lines(&step.events),
            ["COMMAND COUNT LIMIT from [127.0.0.11]:58529 after NOOP"]
        );
        assert_eq!(step.next, Next::Stop(SessionEnd::CommandCountLimit));
    }

    #[test]
    fn quit_is_exempt_from_the_count_limit() {
        let mut e = engine_with(|s| s.command_count_limit = 2);
        reply(&mut e, "NOOP");
        reply(&mut e, "NOOP");
        let step = e.on_command(b"QUIT");
        assert_eq!(step.bytes(), b"221 2.0.0 Bye\r\n");
        assert_eq!(e.command_count(), 3);
    }

    #[test]
    fn the_count_limit_names_the_previous_command() {
        let mut e = engine_with(|s| s.command_count_limit = 1);
        reply(&mut e, "EHLO c");
        let step = e.on_command(b"MAIL FROM:<a@b>");
        assert_eq!(
            lines(&step.events),
            ["COMMAND COUNT LIMIT from [127.0.0.11]:58529 after EHLO"]
        );
        // ... and RCPT over the limit still counts as reaching RCPT, as in postscreen.
        let mut e = engine_with(|s| s.command_count_limit = 1);
        reply(&mut e, "MAIL FROM:<a@b>");
        let step = e.on_command(b"RCPT TO:<c@d>");
        assert_eq!(step.next, Next::Stop(SessionEnd::CommandCountLimit));
        assert!(e.rcpt_reached());
    }

    #[test]
    fn length_and_time_limits_name_the_last_command() {
        let mut e = engine();
        let step = e.on_time_limit();
        assert_eq!(
            step.bytes(),
            b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
        );
        assert_eq!(
            lines(&step.events),
            ["COMMAND TIME LIMIT from [127.0.0.11]:58529 after CONNECT"]
        );
        assert_eq!(step.next, Next::Stop(SessionEnd::CommandTimeLimit));

        let mut e = engine();
        reply(&mut e, "EHLO c");
        let step = e.on_line_too_long();
        assert_eq!(
            step.bytes(),
            b"421 mx.example.test Service unavailable - try again later\r\n"
        );
        assert_eq!(
            lines(&step.events),
            ["COMMAND LENGTH LIMIT from [127.0.0.11]:58529 after EHLO"]
        );
        assert_eq!(step.next, Next::Stop(SessionEnd::CommandLengthLimit));

        let mut e = engine();
        let step = e.on_hangup(Duration::from_millis(1_200));
        assert_eq!(step.reply, None);
        assert_eq!(
            lines(&step.events),
            ["HANGUP after 1.2 from [127.0.0.11]:58529 in tests after SMTP handshake"]
        );
    }

    #[test]
    fn x21_answers_everything_but_quit_with_the_final_reply() {
        let mut e = engine();
        e.set_final_reply(Reply::no_system_resources());
        let step = e.on_command(b"EHLO c");
        assert_eq!(step.bytes(), b"421 4.3.2 No system resources\r\n");
        assert_eq!(step.next, Next::Stop(SessionEnd::FinalReply));

        let mut e = engine();
        e.set_final_reply(Reply::no_system_resources());
        assert_eq!(e.on_command(b"QUIT").bytes(), b"221 2.0.0 Bye\r\n");
    }

    #[test]
    fn soft_bounce_rewrites_replies_and_logs() {
        let mut e = engine_with(|s| {
            s.soft_bounce = true;
            s.rcpt_reply = Reply::denylist_enforce();
        });
        assert_eq!(reply(&mut e, "HELO"), "401 Syntax: HELO hostname\r\n");
        assert_eq!(
            reply(&mut e, "AUTH x"),
            "402 4.5.2 Error: command not recognized\r\n"
        );
        assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
        reply(&mut e, "EHLO h");
        reply(&mut e, "MAIL FROM:<s@x>");
        let step = e.on_command(b"RCPT TO:<r@y>");
        assert_eq!(step.bytes(), b"450 4.3.2 Service currently unavailable\r\n");
        assert_eq!(
            lines(&step.events),
            [
                "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
              unavailable; from=<s@x>, to=<r@y>, proto=ESMTP, helo=<h>"
            ]
        );
        let step = e.on_command(b"DATA");
        assert_eq!(step.bytes(), b"454 4.5.1 Error: no valid recipients\r\n");
    }

    #[test]
    fn the_footer_is_sent_but_not_logged() {
        let mut e = engine_with(|s| {
            s.reject_footer = Some("Contact postmaster@example.test, client $client_address".into())
        });
        reply(&mut e, "MAIL FROM:<s@x>");
        let step = e.on_command(b"RCPT TO:<r@y>");
        assert_eq!(
            String::from_utf8(step.bytes()).unwrap(),
            "450-4.3.2 Service currently unavailable\r\n\
             450 4.3.2 Contact postmaster@example.test, client 127.0.0.11\r\n"
        );
        assert!(lines(&step.events)[0].contains(": 450 4.3.2 Service currently unavailable; from"));
        assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn logged_fields_are_escaped_and_bounded() {
        let mut e = engine();
        e.on_command(b"HELO bad\rname\x1b\xff\xfe");
        assert_eq!(e.helo(), Some("bad\\rname\\033\\377\\376"));
        reply(&mut e, "HELO grüße.example");
        assert_eq!(e.helo(), Some("grüße.example"));
        let long = "a".repeat(2000);
        reply(&mut e, &format!("MAIL FROM:<{long}>"));
        assert_eq!(e.sender().unwrap().len(), MAX_LOGGED_FIELD);
        // An escape is never cut in half.
        let field = log_field(&[0x01; 400]);
        assert!(field.len() <= MAX_LOGGED_FIELD);
        assert_eq!(field.len() % 4, 0);
        assert_eq!(log_field("é\u{85}".as_bytes()), "é\\u{85}");
    }

    #[test]
    fn nothing_panics_on_random_input() {
        // A deterministic xorshift stream of mostly SMTP-ish bytes.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"HELOEHLOMAILFROMRCPTTODATABDATQUITVRFYETRN:<>@\" \\\x00\xff\r\t.";
        for _ in 0..2_000 {
            let mut e = engine_with(|s| s.command_count_limit = 50);
            for _ in 0..60 {
                let len = (next() % 40) as usize;
                let line: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                let step = e.on_command(&line);
                let bytes = step.bytes();
                // Every reply is well-formed: lines of NNN[- ]text CRLF, nothing else.
                if !bytes.is_empty() {
                    let text = String::from_utf8(bytes).unwrap();
                    for l in text.split_terminator("\r\n") {
                        assert!(l.len() >= 4 && l.as_bytes()[..3].iter().all(u8::is_ascii_digit));
                        assert!(!l.contains(['\r', '\n']));
                    }
                }
                for event in &step.events {
                    let line = event.line(client()).to_string();
                    assert!(!line.contains(['\r', '\n', '\0']), "{line:?}");
                }
            }
        }
    }

    // Deep protocol tests

    /// What the driver would see feeding `chunks` as successive reads.
    #[derive(Debug, Default)]
    struct Fed {
        transcript: String,
        events: Vec<String>,
        end: Option<SessionEnd>,
    }

    fn feed(engine: &mut Engine, chunks: &[&[u8]]) -> Fed {
        let mut reader = LineReader::new(engine.settings().line_length_limit);
        let mut fed = Fed::default();
        for chunk in chunks {
            assert_eq!(reader.extend(chunk), chunk.len(), "chunk does not fit");
            while let Some(line) = reader.next_line().unwrap() {
                let step = engine.on_line(line);
                fed.transcript
                    .push_str(&String::from_utf8(step.bytes()).unwrap());
                fed.events.extend(lines(&step.events));
                if let Next::Stop(end) = step.next {
                    fed.end = Some(end);
                    return fed;
                }
            }
        }
        fed
    }

    #[test]
    fn the_labs_pipelining_line() {
        let mut e = deep_engine(|d| d.pipelining = Some(TestAction::Enforce));
        let fed = feed(&mut e, &[PIPELINED]);
        assert_eq!(
            fed.events,
            [
                "COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: MAIL FROM:<p@example.org>\\r\\n"
            ]
        );
        // Both commands are still answered.
        assert!(fed.transcript.ends_with("250 CHUNKING\r\n250 2.1.0 Ok\r\n"));
    }

    #[test]
    fn two_commands_in_one_read_are_pipelining_at_every_split() {
        let first = b"EHLO h.example\r\n".len();
        for k in 0..=PIPELINED.len() {
            let mut e = deep_engine(|d| d.pipelining = Some(TestAction::Enforce));
            let fed = feed(&mut e, &[&PIPELINED[..k], &PIPELINED[k..]]);
            assert!(fed.transcript.ends_with("250 2.1.0 Ok\r\n"), "split at {k}");
            assert_eq!(fed.end, None);
            if k == first {
                // The reads split exactly between the commands: a client that waited.
                assert!(fed.events.is_empty(), "split at {k}: {:?}", fed.events);
                assert_eq!(e.deep_test_results().pipelining, TestOutcome::NotCompleted);
                continue;
            }
            // What was buffered behind EHLO when it completed.
            let pending = if k > first {
                &PIPELINED[first..k]
            } else {
                &PIPELINED[first..]
            };
            assert_eq!(
                fed.events,
                [format!(
                    "COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: {}",
                    c_escape(pending, 1000)
                )],
                "split at {k}"
            );
            assert_eq!(e.deep_test_results().pipelining, TestOutcome::Failed);
        }
    }

    #[test]
    fn one_command_split_at_every_position_violates_nothing() {
        let input = b"MAIL FROM:<a@example.org>\r\n";
        for k in 0..=input.len() {
            for j in k..=input.len() {
                let mut e = deep_engine(|d| {
                    d.pipelining = Some(TestAction::Drop);
                    d.non_smtp_command = Some(TestAction::Drop);
                    d.bare_newline = Some(TestAction::Drop);
                });
                let fed = feed(&mut e, &[&input[..k], &input[k..j], &input[j..]]);
                assert_eq!(fed.transcript, "250 2.1.0 Ok\r\n", "split at {k}, {j}");
                assert!(fed.events.is_empty());
                assert_eq!(e.deep_test_results(), DeepTestResults::default());
            }
        }
    }

    #[test]
    fn bare_newline_against_crlf_at_every_split() {
        for (input, bare) in [
            (&b"EHLO b.example\n"[..], true),
            (b"EHLO b.example\r\n", false),
        ] {
            for k in 0..=input.len() {
                let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Enforce));
                let fed = feed(&mut e, &[&input[..k], &input[k..]]);
                // The line is answered either way.
                assert!(fed.transcript.ends_with("250 CHUNKING\r\n"), "split at {k}");
                assert_eq!(e.helo(), Some("b.example"));
                if bare {
                    // The lab's line for this client.
                    assert_eq!(
                        fed.events,
                        ["BARE NEWLINE from [127.0.0.11]:58529 after EHLO b.example"],
                        "split at {k}"
                    );
                    assert_eq!(e.deep_test_results().bare_newline, TestOutcome::Failed);
                } else {
                    assert!(fed.events.is_empty(), "split at {k}");
                }
            }
        }
    }

    #[test]
    fn bare_newline_text_is_escaped_and_bounded() {
        for (input, logged) in [
            (&b"NOOP\rX\x01\n"[..], "NOOP\\rX\\001".to_string()),
            (b"\n", String::new()),
            // The text after a NUL is logged too, though the command ends there.
            (b"NOOP\0junk\xff\n", "NOOP\\000junk\\377".to_string()),
            (
                format!("NOOP {}\n", "x".repeat(600)).as_bytes(),
                format!("NOOP {}", "x".repeat(95)),
            ),
        ] {
            let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Ignore));
            let fed = feed(&mut e, &[input]);
            assert_eq!(
                fed.events,
                [format!(
                    "BARE NEWLINE from [127.0.0.11]:58529 after {logged}"
                )]
            );
        }
    }

    /// (test, reads that violate it right after the greeting, the violation's log line,
    /// the reply to the offending line when the action is not drop).
    fn violations() -> [(DeepTest, Vec<&'static [u8]>, &'static str, &'static str); 3] {
        [
            (
                DeepTest::Pipelining,
                vec![b"EHLO h.example\r\nNOOP\r\n"],
                "COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: NOOP\\r\\n",
                "250 CHUNKING\r\n250 2.0.0 Ok\r\n",
            ),
            (
                DeepTest::NonSmtpCommand,
                vec![b"EHLO h.example\r\n", b"GET / HTTP/1.0\r\n"],
                // The lab's line for this client.
                "NON-SMTP COMMAND from [127.0.0.11]:58529 after EHLO: GET / HTTP/1.0",
                "502 5.5.2 Error: command not recognized\r\n",
            ),
            (
                DeepTest::BareNewline,
                vec![b"EHLO h.example\n"],
                "BARE NEWLINE from [127.0.0.11]:58529 after EHLO h.example",
                "250 CHUNKING\r\n",
            ),
        ]
    }

    fn with_action(test: DeepTest, action: TestAction) -> Engine {
        let mut e = engine();
        e.set_deep_test(test, Some(action));
        e
    }

    #[test]
    fn drop_sends_521_at_once_and_runs_nothing_more() {
        for (test, reads, logged, _) in violations() {
            let mut e = with_action(test, TestAction::Drop);
            let fed = feed(&mut e, &reads);
            let expected_reply = match test {
                DeepTest::NonSmtpCommand => "521 5.7.0 Error: I can break rules, too. Goodbye.\r\n",
                _ => "521 5.5.1 Protocol error\r\n",
            };
            assert!(
                fed.transcript.ends_with(expected_reply),
                "{test:?}: {}",
                fed.transcript
            );
            // The offending command itself is not answered: the EHLO reply appears only
            // when the EHLO was a separate read.
            assert_eq!(
                fed.transcript.contains("250-mx.example.test"),
                test == DeepTest::NonSmtpCommand,
                "{test:?}"
            );
            assert_eq!(fed.events, [logged]);
            assert_eq!(fed.end, Some(SessionEnd::Dropped(test)));
            assert_eq!(e.deep_test_results().get(test), TestOutcome::Failed);
            // Nothing after the drop.
            assert_eq!(e.on_command(b"QUIT").reply, None);
        }
    }

    #[test]
    fn enforce_refuses_every_later_rcpt_with_550() {
        for (test, reads, logged, reply) in violations() {
            let mut e = with_action(test, TestAction::Enforce);
            let fed = feed(&mut e, &reads);
            assert!(
                fed.transcript.ends_with(reply),
                "{test:?}: {}",
                fed.transcript
            );
            assert_eq!(fed.events, [logged]);
            assert_eq!(fed.end, None);
            let fed = feed(&mut e, &[b"MAIL FROM:<s@example.org>\r\n"]);
            assert_eq!(fed.transcript, "250 2.1.0 Ok\r\n");
            for to in ["r@example.test", "s@example.test"] {
                let fed = feed(&mut e, &[format!("RCPT TO:<{to}>\r\n").as_bytes()]);
                assert_eq!(fed.transcript, "550 5.5.1 Protocol error\r\n");
                assert_eq!(
                    fed.events,
                    [format!(
                        "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 550 5.5.1 Protocol \
                         error; from=<s@example.org>, to=<{to}>, proto=ESMTP, \
                         helo=<h.example>"
                    )]
                );
            }
            // Reaching RCPT does not undo the failure.
            assert_eq!(
                e.deep_test_results().get(test),
                TestOutcome::Failed,
                "{test:?}"
            );
        }
    }

    #[test]
    fn ignore_logs_only() {
        for (test, reads, logged, reply) in violations() {
            let mut e = with_action(test, TestAction::Ignore);
            let fed = feed(&mut e, &reads);
            assert!(fed.transcript.ends_with(reply), "{test:?}");
            assert_eq!(fed.events, [logged]);
            assert_eq!(e.deep_test_results().get(test), TestOutcome::Ignored);
            feed(&mut e, &[b"MAIL FROM:<s@example.org>\r\n"]);
            let fed = feed(&mut e, &[b"RCPT TO:<r@example.test>\r\n"]);
            assert_eq!(
                fed.transcript,
                "450 4.3.2 Service currently unavailable\r\n"
            );
            assert_eq!(
                e.deep_test_results().get(test),
                TestOutcome::Ignored,
                "{test:?}"
            );
        }
    }

    #[test]
    fn the_labs_bare_newline_client_gets_550_at_rcpt() {
        // Lab 127.0.0.14: `EHLO b.example\n`, bare_newline_action = enforce.
        let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Enforce));
        let fed = feed(
            &mut e,
            &[
                b"EHLO b.example\n",
                b"MAIL FROM:<s@example.org>\n",
                b"RCPT TO:<r@example.test>\n",
            ],
        );
        assert!(
            fed.transcript
                .ends_with("250 2.1.0 Ok\r\n550 5.5.1 Protocol error\r\n")
        );
        // Only the first bare newline is logged.
        assert_eq!(fed.events.len(), 2);
        assert_eq!(
            fed.events[0],
            "BARE NEWLINE from [127.0.0.11]:58529 after EHLO b.example"
        );
    }

    #[test]
    fn the_tests_pass_only_at_rcpt() {
        let all = |d: &mut DeepTests| {
            d.pipelining = Some(TestAction::Enforce);
            d.non_smtp_command = Some(TestAction::Drop);
            d.bare_newline = Some(TestAction::Ignore);
        };
        let passed = DeepTestResults {
            pipelining: TestOutcome::Passed,
            non_smtp_command: TestOutcome::Passed,
            bare_newline: TestOutcome::Passed,
        };
        // A clean client that quits before RCPT earns nothing.
        let mut e = deep_engine(all);
        let fed = feed(
            &mut e,
            &[
                b"EHLO h\r\n",
                b"MAIL FROM:<s@x>\r\n",
                b"NOOP\r\n",
                b"QUIT\r\n",
            ],
        );
        assert_eq!(fed.end, Some(SessionEnd::Quit));
        assert_eq!(e.deep_test_results(), DeepTestResults::default());
        // One that reaches RCPT passes every test that runs.
        let mut e = deep_engine(all);
        feed(&mut e, &[b"EHLO h\r\n", b"MAIL FROM:<s@x>\r\n"]);
        assert_eq!(e.deep_test_results(), DeepTestResults::default());
        feed(&mut e, &[b"RCPT TO:<r@y>\r\n"]);
        assert_eq!(e.deep_test_results(), passed);
        // A violation after RCPT still counts: enforce fails the test...
        let fed = feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]);
        assert_eq!(fed.events.len(), 1);
        assert_eq!(e.deep_test_results().pipelining, TestOutcome::Failed);
        // ...and ignore turns the pass into the short-lived one.
        feed(&mut e, &[b"NOOP\n"]);
        assert_eq!(
            e.deep_test_results(),
            DeepTestResults {
                pipelining: TestOutcome::Failed,
                non_smtp_command: TestOutcome::Passed,
                bare_newline: TestOutcome::Ignored,
            }
        );
        // A refused RCPT counts as reaching RCPT, as in postscreen.
        let mut e = deep_engine(all);
        let fed = feed(&mut e, &[b"RCPT TO:<r@y>\r\n"]);
        assert_eq!(fed.transcript, "503 5.5.1 Error: need MAIL command\r\n");
        assert_eq!(e.deep_test_results(), passed);
        // Tests that do not run never pass.
        let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Enforce));
        feed(&mut e, &[b"MAIL FROM:<s@x>\r\nRCPT TO:<r@y>\r\n"]);
        assert_eq!(
            e.deep_test_results(),
            DeepTestResults {
                bare_newline: TestOutcome::Passed,
                ..DeepTestResults::default()
            }
        );
    }

    #[test]
    fn each_test_fires_once_per_session() {
        let mut e = deep_engine(|d| {
            d.pipelining = Some(TestAction::Ignore);
            d.non_smtp_command = Some(TestAction::Ignore);
            d.bare_newline = Some(TestAction::Ignore);
        });
        let fed = feed(&mut e, &[b"NOOP\r\nNOOP\r\nNOOP\r\n"]);
        assert_eq!(fed.events.len(), 1);
        let fed = feed(&mut e, &[b"GET /\r\n", b"POST /\r\n", b"Subject: x\r\n"]);
        assert_eq!(
            fed.events,
            ["NON-SMTP COMMAND from [127.0.0.11]:58529 after NOOP: GET /"]
        );
        // Still answered like any unknown command.
        assert_eq!(
            fed.transcript,
            "502 5.5.2 Error: command not recognized\r\n".repeat(3)
        );
        let fed = feed(&mut e, &[b"NOOP\n", b"NOOP\n"]);
        assert_eq!(fed.events.len(), 1);
        assert_eq!(fed.transcript, "250 2.0.0 Ok\r\n".repeat(2));
    }

    #[test]
    fn non_smtp_commands() {
        for (line, logged) in [
            (&b"GET / HTTP/1.0"[..], "GET / HTTP/1.0"),
            (b"get /index.html", "get /index.html"),
            (b"POST /cgi-bin/x HTTP/1.1", "POST /cgi-bin/x HTTP/1.1"),
            (
                b"CONNECT mx.example.test:25 HTTP/1.1",
                "CONNECT mx.example.test:25 HTTP/1.1",
            ),
            // Header lines.
            (b"Subject: hello", "Subject: hello"),
            (b"From:<a@example.org>", "From:<a@example.org> "),
            (b"X-Spam\t: yes", "X-Spam?: yes"),
            (b"MAIL: x", "MAIL: x"),
            // Commands that do not start with a letter (postscreen 3.7's regexp).
            (b"\x16\x03\x01\x02\x00\x01", "???? "),
            (b"<html><body>", "<html><body> "),
            (b"123 go", "123 go"),
            (b":x", ":x "),
            (b"\tEHLO x", "?EHLO x"),
            (b"\xc3\x89HLO x", "\u{c9}HLO x"),
            // Invalid UTF-8.
            (b"HEL\xffO x\x01", "HEL?O x\\001"),
            (b"HE\xc3", "HE? "),
        ] {
            let mut e = with_action(DeepTest::NonSmtpCommand, TestAction::Drop);
            let fed = feed(&mut e, &[line, b"\r\n"]);
            assert_eq!(
                fed.events,
                [format!(
                    "NON-SMTP COMMAND from [127.0.0.11]:58529 after CONNECT: {logged}"
                )],
                "{line:?}"
            );
            assert_eq!(
                fed.transcript,
                "521 5.7.0 Error: I can break rules, too. Goodbye.\r\n"
            );
        }
    }

    #[test]
    fn smtp_and_unknown_commands_are_not_non_smtp() {
        for line in [
            &b""[..],
            b"   ",
            b"XYZZY",
            b"HELOX a",
            b"Subject",
            b"a b:c",
            b"AUTH PLAIN AGZvbwBiYXI=",
            b"XCLIENT NAME=x",
            b"XFORWARD ADDR=1.2.3.4",
            b"H\xc3\x89LO x",
            b"NOOP",
            b"noop \x16",
        ] {
            let mut e = with_action(DeepTest::NonSmtpCommand, TestAction::Drop);
            let fed = feed(&mut e, &[line, b"\r\n"]);
            assert!(fed.events.is_empty(), "{line:?}: {:?}", fed.events);
            assert_eq!(fed.end, None);
        }
        // Invalid UTF-8 counts only with SMTPUTF8 on.
        let mut e = engine_with(|s| {
            s.smtputf8 = false;
            s.deep_tests.non_smtp_command = Some(TestAction::Drop);
        });
        let fed = feed(&mut e, &[b"HEL\xffO x\r\n"]);
        assert!(fed.events.is_empty());
        // An empty forbidden list leaves header lines.
        let mut e = engine_with(|s| {
            s.deep_tests.forbidden_commands = Vec::new();
            s.deep_tests.non_smtp_command = Some(TestAction::Drop);
        });
        let fed = feed(&mut e, &[b"GET /\r\n123\r\n"]);
        assert!(fed.events.is_empty());
        let fed = feed(&mut e, &[b"Subject: x\r\n"]);
        assert_eq!(fed.end, Some(SessionEnd::Dropped(DeepTest::NonSmtpCommand)));
    }

    #[test]
    fn pipelining_names_the_command_as_sent_and_bounds_the_input() {
        let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
        let fed = feed(&mut e, &[b"ehlo h\r\n\x01\xff\r\n"]);
        assert_eq!(
            fed.events,
            ["COMMAND PIPELINING from [127.0.0.11]:58529 after ehlo: \\001\\377\\r\\n"]
        );
        // Unknown and garbage command words are printed with `?`.
        let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
        let fed = feed(&mut e, &[b"X\tY\xfe z\r\nNOOP\r\n"]);
        assert_eq!(
            fed.events,
            ["COMMAND PIPELINING from [127.0.0.11]:58529 after X?Y?: NOOP\\r\\n"]
        );
        // At most 100 bytes of the pending input, escaped.
        let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
        let mut input = b"NOOP\r\n".to_vec();
        input.extend([b'A'; 1000]);
        let fed = feed(&mut e, &[&input]);
        assert_eq!(
            fed.events,
            [format!(
                "COMMAND PIPELINING from [127.0.0.11]:58529 after NOOP: {}",
                "A".repeat(100)
            )]
        );
        let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
        let mut input = b"NOOP\r\n".to_vec();
        input.extend([0u8; 1000]);
        let fed = feed(&mut e, &[&input]);
        assert_eq!(
            fed.events[0].len(),
            "COMMAND PIPELINING from [127.0.0.11]:58529 after NOOP: ".len() + 400
        );
        // A command word of 2000 bytes is printed up to 100.
        let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
        let input = format!("{}\r\nNOOP\r\n", "Z".repeat(2000));
        let fed = feed(&mut e, &[input.as_bytes()]);
        assert_eq!(
            fed.events,
            [format!(
                "COMMAND PIPELINING from [127.0.0.11]:58529 after {}: NOOP\\r\\n",
                "Z".repeat(100)
            )]
        );
    }

    #[test]
    fn bdat_is_followed_by_its_chunk_not_by_pipelined_commands() {
        let mut e = with_action(DeepTest::Pipelining, TestAction::Drop);
        let fed = feed(
            &mut e,
            &[b"MAIL FROM:<a@b>\r\n", b"BDAT 10 LAST\r\n0123456789"],
        );
        assert_eq!(
            fed.events,
            ["BDAT without valid RCPT from [127.0.0.11]:58529"]
        );
        assert_eq!(fed.end, Some(SessionEnd::DataRefused));
        // DATA is not exempt.
        let mut e = with_action(DeepTest::Pipelining, TestAction::Drop);
        let fed = feed(&mut e, &[b"DATA\r\nSubject: x\r\n"]);
        assert_eq!(fed.end, Some(SessionEnd::Dropped(DeepTest::Pipelining)));
    }

    #[test]
    fn several_tests_in_one_line_log_in_postscreens_order() {
        let mut e = deep_engine(|d| {
            d.pipelining = Some(TestAction::Enforce);
            d.non_smtp_command = Some(TestAction::Enforce);
            d.bare_newline = Some(TestAction::Enforce);
        });
        let fed = feed(&mut e, &[b"GET /\nNOOP\r\n"]);
        assert_eq!(
            fed.events,
            [
                "BARE NEWLINE from [127.0.0.11]:58529 after GET /",
                "NON-SMTP COMMAND from [127.0.0.11]:58529 after CONNECT: GET /",
                "COMMAND PIPELINING from [127.0.0.11]:58529 after GET: NOOP\\r\\n",
            ]
        );
        assert_eq!(
            fed.transcript,
            "502 5.5.2 Error: command not recognized\r\n250 2.0.0 Ok\r\n"
        );
        let failed = DeepTestResults {
            pipelining: TestOutcome::Failed,
            non_smtp_command: TestOutcome::Failed,
            bare_newline: TestOutcome::Failed,
        };
        assert_eq!(e.deep_test_results(), failed);
        // A drop further down still reports what fired before it.
        let mut e = deep_engine(|d| {
            d.non_smtp_command = Some(TestAction::Enforce);
            d.pipelining = Some(TestAction::Drop);
        });
        let fed = feed(&mut e, &[b"Subject: x\r\nNOOP\r\n"]);
        assert_eq!(fed.events.len(), 2);
        assert_eq!(fed.transcript, "521 5.5.1 Protocol error\r\n");
        assert_eq!(fed.end, Some(SessionEnd::Dropped(DeepTest::Pipelining)));
    }

    #[test]
    fn the_last_reply_set_at_rcpt_wins() {
        let mut e = with_action(DeepTest::Pipelining, TestAction::Enforce);
        let dnsbl = Reply::dnsbl_enforce("127.0.0.40".parse().unwrap(), "bl.example").unwrap();
        e.set_rcpt_reply(dnsbl.clone()).unwrap();
        feed(&mut e, &[b"MAIL FROM:<a@b>\r\nNOOP\r\n"]);
        let fed = feed(&mut e, &[b"RCPT TO:<c@d>\r\n"]);
        assert_eq!(fed.transcript, "550 5.5.1 Protocol error\r\n");
        e.set_rcpt_reply(dnsbl).unwrap();
        let fed = feed(&mut e, &[b"RCPT TO:<c@d>\r\n"]);
        assert!(fed.transcript.starts_with("550 5.7.1 Service unavailable"));
    }

    #[test]
    fn no_deep_test_runs_in_x21_mode() {
        let mut e = deep_engine(|d| {
            d.pipelining = Some(TestAction::Drop);
            d.non_smtp_command = Some(TestAction::Drop);
            d.bare_newline = Some(TestAction::Drop);
        });
        e.set_final_reply(Reply::no_system_resources());
        let fed = feed(&mut e, &[b"GET /\nNOOP\r\n"]);
        assert_eq!(fed.transcript, "421 4.3.2 No system resources\r\n");
        assert!(fed.events.is_empty());
        assert_eq!(fed.end, Some(SessionEnd::FinalReply));
    }

    #[test]
    fn a_drop_comes_before_the_count_limit_and_enforce_after_it() {
        let mut e = engine_with(|s| {
            s.command_count_limit = 1;
            s.deep_tests.non_smtp_command = Some(TestAction::Drop);
        });
        let fed = feed(&mut e, &[b"NOOP\r\n", b"GET /\r\n"]);
        assert!(
            fed.transcript
                .ends_with("521 5.7.0 Error: I can break rules, too. Goodbye.\r\n")
        );
        let mut e = engine_with(|s| {
            s.command_count_limit = 1;
            s.deep_tests.non_smtp_command = Some(TestAction::Enforce);
        });
        let fed = feed(&mut e, &[b"NOOP\r\n", b"GET /\r\n"]);
        assert_eq!(
            fed.events,
            [
                "NON-SMTP COMMAND from [127.0.0.11]:58529 after NOOP: GET /",
                "COMMAND COUNT LIMIT from [127.0.0.11]:58529 after NOOP",
            ]
        );
        assert_eq!(fed.end, Some(SessionEnd::CommandCountLimit));
    }

    #[test]
    fn a_session_can_turn_tests_on_and_off() {
        let mut e = engine();
        assert!(feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]).events.is_empty());
        e.set_deep_test(DeepTest::Pipelining, Some(TestAction::Enforce));
        assert_eq!(feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]).events.len(), 1);
        let mut e = deep_engine(|d| d.pipelining = Some(TestAction::Enforce));
        e.set_deep_test(DeepTest::Pipelining, None);
        assert!(feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]).events.is_empty());
        // A test that fired keeps its result.
        let mut e = with_action(DeepTest::BareNewline, TestAction::Drop);
        feed(&mut e, &[b"NOOP\n"]);
        e.set_deep_test(DeepTest::BareNewline, None);
        assert_eq!(e.deep_test_results().bare_newline, TestOutcome::Failed);
    }

    #[test]
    fn nothing_panics_on_random_streams_with_every_test_on() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"EHLOMAILRCPTQUITGETPOST:<>@ \r\n\n\x00\xff\t\x16Subject:";
        let actions = [
            None,
            Some(TestAction::Ignore),
            Some(TestAction::Enforce),
            Some(TestAction::Drop),
        ];
        for _ in 0..500 {
            let mut pick = || actions[(next() % 4) as usize];
            let (p, n, b) = (pick(), pick(), pick());
            let mut e = engine_with(|s| {
                s.command_count_limit = 100;
                s.deep_tests.pipelining = p;
                s.deep_tests.non_smtp_command = n;
                s.deep_tests.bare_newline = b;
            });
            let mut reader = LineReader::new(e.settings().line_length_limit);
            'session: for _ in 0..20 {
                let len = (next() % 200) as usize;
                let chunk: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                reader.extend(&chunk);
                loop {
                    let step = match reader.next_line() {
                        Ok(Some(line)) => e.on_line(line),
                        Ok(None) => break,
                        Err(_) => break 'session,
                    };
                    for event in &step.events {
                        let line = event.line(client()).to_string();
                        assert!(!line.contains(['\r', '\n', '\0']), "{line:?}");
                        assert!(line.len() < 1200, "{line:?}");
                    }
                    if step.closes() {
                        break 'session;
                    }
                }
            }
            // A test that does not run has no result.
            let results = e.deep_test_results();
            for (action, outcome) in [
                (p, results.pipelining),
                (n, results.non_smtp_command),
                (b, results.bare_newline),
            ] {
                if action.is_none() {
                    assert_eq!(outcome, TestOutcome::NotCompleted);
                }
                if action == Some(TestAction::Ignore) {
                    assert_ne!(outcome, TestOutcome::Failed);
                }
            }
        }
    }

    // The driver

    const LIMIT: Duration = Duration::from_secs(5);

    /// Runs `serve` in a task that closes its end when done.
    fn spawn_serve(
        mut engine: Engine,
        limit: Duration,
    ) -> (DuplexStream, tokio::task::JoinHandle<(Outcome, Vec<Event>)>) {
        let (client, mut server) = duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let outcome = serve(&mut server, &mut engine, limit, |e| seen.push(e.clone())).await;
            drop(server);
            (outcome, seen)
        });
        (client, task)
    }

    /// Reads one complete reply (up to a line with a space after the code).
    async fn read_reply<S: AsyncRead + Unpin>(client: &mut S) -> String {
        let mut text = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            if client.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            text.push(byte[0]);
            if text.ends_with(b"\r\n") {
                let line_start = text[..text.len() - 2]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
                if text.get(line_start + 3) == Some(&b' ') {
                    break;
                }
            }
        }
        String::from_utf8(text).unwrap()
    }

    #[tokio::test]
    async fn a_full_session_over_a_stream() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        assert_eq!(
            read_reply(&mut client).await,
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        client.write_all(b"EHLO h.example\r\n").await.unwrap();
        assert!(read_reply(&mut client).await.ends_with("250 CHUNKING\r\n"));
        client
            .write_all(b"MAIL FROM:<s@example.org>\r\n")
            .await
            .unwrap();
        assert_eq!(read_reply(&mut client).await, "250 2.1.0 Ok\r\n");
        // A command split across writes is still one command.
        client.write_all(b"RCPT TO:<r@exa").await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(b"mple.test>\r\n").await.unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "450 4.3.2 Service currently unavailable\r\n"
        );
        client.write_all(b"QUIT\n").await.unwrap();
        assert_eq!(read_reply(&mut client).await, "221 2.0.0 Bye\r\n");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        let (outcome, seen) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Quit);
        assert!(outcome.rcpt_reached);
        assert_eq!(
            lines(&outcome.events),
            [
                "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
              unavailable; from=<s@example.org>, to=<r@example.test>, proto=ESMTP, \
              helo=<h.example>"
            ]
        );
        assert_eq!(seen, outcome.events);
    }

    #[tokio::test]
    async fn a_session_sent_in_one_write_ends_at_data() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        client
            .write_all(b"HELO h\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nNOOP\r\n")
            .await
            .unwrap();
        let mut transcript = Vec::new();
        client.read_to_end(&mut transcript).await.unwrap();
        assert_eq!(
            String::from_utf8(transcript).unwrap(),
            "220 mx.example.test ESMTP Postfix\r\n\
             250 mx.example.test\r\n\
             250 2.1.0 Ok\r\n\
             450 4.3.2 Service currently unavailable\r\n\
             554 5.5.1 Error: no valid recipients\r\n"
        );
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::DataRefused);
        assert_eq!(outcome.events.len(), 2);
        assert_eq!(outcome.events[1], Event::DataWithoutRcpt);
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_limit_covers_the_whole_line_against_a_trickling_client() {
        let started = Instant::now();
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        assert_eq!(
            read_reply(&mut client).await,
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        let writer = tokio::spawn(async move {
            // One byte a second, never a full line.
            for b in b"NOOP NOOP NOOP" {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
            }
            client
        });
        let (outcome, _) = task.await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(outcome.end, SessionEnd::CommandTimeLimit);
        assert!(
            elapsed >= LIMIT && elapsed < LIMIT + Duration::from_secs(1),
            "{elapsed:?}"
        );
        assert_eq!(
            lines(&outcome.events),
            ["COMMAND TIME LIMIT from [127.0.0.11]:58529 after CONNECT"]
        );
        let mut client = writer.await.unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_times_out_after_the_last_command() {
        let started = Instant::now();
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        read_reply(&mut client).await;
        // Commands every four seconds keep the session alive...
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            client.write_all(b"NOOP\r\n").await.unwrap();
            assert_eq!(read_reply(&mut client).await, "250 2.0.0 Ok\r\n");
        }
        // ...then silence ends it five seconds after the last one.
        let (outcome, _) = task.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(17));
        assert_eq!(outcome.end, SessionEnd::CommandTimeLimit);
        assert_eq!(
            lines(&outcome.events),
            ["COMMAND TIME LIMIT from [127.0.0.11]:58529 after NOOP"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn end_of_input_is_a_hangup() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        read_reply(&mut client).await;
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        // Half a command, then gone.
        client.write_all(b"EHLO ha").await.unwrap();
        drop(client);
        let (outcome, seen) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Hangup);
        assert!(!outcome.rcpt_reached);
        assert_eq!(
            lines(&outcome.events),
            ["HANGUP after 1.2 from [127.0.0.11]:58529 in tests after SMTP handshake"]
        );
        assert_eq!(seen, outcome.events);
    }

    #[tokio::test]
    async fn a_hangup_after_rcpt_still_reached_rcpt() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        client
            .write_all(b"EHLO h\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
            .await
            .unwrap();
        let mut transcript = Vec::new();
        // Read the four replies, then hang up.
        while !String::from_utf8_lossy(&transcript).contains("450 4.3.2") {
            let mut buf = [0u8; 1024];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0);
            transcript.extend_from_slice(&buf[..n]);
        }
        drop(client);
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Hangup);
        assert!(outcome.rcpt_reached);
        assert!(matches!(outcome.events[1], Event::Hangup { .. }));
    }

    #[tokio::test]
    async fn an_overlong_line_gets_421_without_being_buffered() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        read_reply(&mut client).await;
        client.write_all(b"EHLO h\r\n").await.unwrap();
        read_reply(&mut client).await;
        let writer = tokio::spawn(async move {
            let junk = vec![b'A'; 1 << 20];
            // The server stops reading long before the end; the write then fails.
            let _ = client.write_all(&junk).await;
            client
        });
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::CommandLengthLimit);
        assert_eq!(
            lines(&outcome.events),
            ["COMMAND LENGTH LIMIT from [127.0.0.11]:58529 after EHLO"]
        );
        let mut client = writer.await.unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "421 mx.example.test Service unavailable - try again later\r\n"
        );
    }

    #[tokio::test]
    async fn a_pregreeter_gets_no_greeting() {
        let mut engine = engine();
        engine.set_pregreeted();
        let (mut client, task) = spawn_serve(engine, LIMIT);
        client.write_all(b"QUIT\r\n").await.unwrap();
        let mut transcript = Vec::new();
        client.read_to_end(&mut transcript).await.unwrap();
        assert_eq!(transcript, b"221 2.0.0 Bye\r\n");
        assert_eq!(task.await.unwrap().0.end, SessionEnd::Quit);
    }

    #[tokio::test]
    async fn starttls_hands_the_stream_back_and_drops_buffered_input() {
        let (mut client, mut server) = duplex(4096);
        let mut engine = engine_with(|s| s.starttls_offered = true);
        // A command injected behind STARTTLS must not be answered.
        client
            .write_all(b"EHLO h\r\nSTARTTLS\r\nMAIL FROM:<injected@x>\r\n")
            .await
            .unwrap();
        let outcome = serve(&mut server, &mut engine, LIMIT, |_| {}).await;
        assert_eq!(outcome.end, SessionEnd::StartTls);
        assert_eq!(engine.sender(), None);
        // Here the caller would send Reply::starttls_ready() and do the handshake.
        engine.tls_established();
        client.write_all(b"QUIT\r\n").await.unwrap();
        let outcome = serve(&mut server, &mut engine, LIMIT, |_| {}).await;
        assert_eq!(outcome.end, SessionEnd::Quit);
        drop(server);
        let mut transcript = Vec::new();
        client.read_to_end(&mut transcript).await.unwrap();
        let transcript = String::from_utf8(transcript).unwrap();
        assert!(transcript.starts_with("220 mx.example.test ESMTP Postfix\r\n250-"));
        // No second greeting, no reply to the injected MAIL.
        assert!(
            transcript.ends_with("250 CHUNKING\r\n221 2.0.0 Bye\r\n"),
            "{transcript}"
        );
    }

    #[tokio::test]
    async fn a_client_that_is_gone_before_the_reply_is_a_hangup() {
        let (mut client, task) = spawn_serve(engine(), LIMIT);
        client.write_all(b"NOOP\r\n").await.unwrap();
        drop(client);
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Hangup);
        assert!(matches!(outcome.events[..], [Event::Hangup { .. }]));
    }

    // Deep tests over a stream

    /// The lab's deep test settings: pipelining enforce, non-SMTP drop, bare newline enforce.
    fn lab_engine() -> Engine {
        deep_engine(|d| {
            d.pipelining = Some(TestAction::Enforce);
            d.non_smtp_command = Some(TestAction::Drop);
            d.bare_newline = Some(TestAction::Enforce);
        })
    }

    #[tokio::test]
    async fn lab_pipelined_ehlo_and_mail_get_550_at_rcpt() {
        let (mut client, task) = spawn_serve(lab_engine(), LIMIT);
        read_reply(&mut client).await;
        client.write_all(PIPELINED).await.unwrap();
        assert!(read_reply(&mut client).await.ends_with("250 CHUNKING\r\n"));
        assert_eq!(read_reply(&mut client).await, "250 2.1.0 Ok\r\n");
        client
            .write_all(b"RCPT TO:<r@example.test>\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "550 5.5.1 Protocol error\r\n"
        );
        client.write_all(b"QUIT\r\n").await.unwrap();
        assert_eq!(read_reply(&mut client).await, "221 2.0.0 Bye\r\n");
        let (outcome, seen) = task.await.unwrap();
        assert_eq!(
            lines(&outcome.events)[0],
            "COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: MAIL FROM:<p@example.org>\\r\\n"
        );
        assert_eq!(seen, outcome.events);
        assert_eq!(
            outcome.deep_tests,
            DeepTestResults {
                pipelining: TestOutcome::Failed,
                non_smtp_command: TestOutcome::Passed,
                bare_newline: TestOutcome::Passed,
            }
        );
    }

    #[tokio::test]
    async fn lab_http_request_gets_521_and_the_connection_closes() {
        let (mut client, task) = spawn_serve(lab_engine(), LIMIT);
        read_reply(&mut client).await;
        client.write_all(b"EHLO h.example\r\n").await.unwrap();
        read_reply(&mut client).await;
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(
            rest,
            b"521 5.7.0 Error: I can break rules, too. Goodbye.\r\n"
        );
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Dropped(DeepTest::NonSmtpCommand));
        assert_eq!(
            lines(&outcome.events),
            ["NON-SMTP COMMAND from [127.0.0.11]:58529 after EHLO: GET / HTTP/1.0"]
        );
        assert!(!outcome.rcpt_reached);
        assert_eq!(outcome.deep_tests.non_smtp_command, TestOutcome::Failed);
        assert_eq!(outcome.deep_tests.pipelining, TestOutcome::NotCompleted);
    }

    #[tokio::test]
    async fn a_clean_client_passes_the_deep_tests_over_a_stream() {
        let (mut client, task) = spawn_serve(lab_engine(), LIMIT);
        read_reply(&mut client).await;
        for (command, reply_end) in [
            (&b"EHLO h.example\r\n"[..], "250 CHUNKING\r\n"),
            (b"MAIL FROM:<s@example.org>\r\n", "250 2.1.0 Ok\r\n"),
            (
                b"RCPT TO:<r@example.test>\r\n",
                "450 4.3.2 Service currently unavailable\r\n",
            ),
        ] {
            // One byte at a time, each command after the last reply: never pipelining.
            for byte in command {
                client.write_all(&[*byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            assert!(read_reply(&mut client).await.ends_with(reply_end));
        }
        drop(client);
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Hangup);
        assert_eq!(
            outcome.deep_tests,
            DeepTestResults {
                pipelining: TestOutcome::Passed,
                non_smtp_command: TestOutcome::Passed,
                bare_newline: TestOutcome::Passed,
            }
        );
    }

    // STARTTLS

    /// An acceptor for `mx.example.test` and the PEM of the CA that signed it.
    fn test_tls() -> (TlsAcceptor, String) {
        let (ca, cert, key) = crate::smtpd::tls::tests::test_pki(HOST);
        let acceptor = crate::smtpd::tls::acceptor_from_pem(
            cert.as_bytes(),
            Path::new("cert.pem"),
            key.as_bytes(),
            Path::new("key.pem"),
        )
        .unwrap();
        (acceptor, ca)
    }

    fn tls_connector(ca_pem: &str) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    fn tls_engine() -> Engine {
        engine_with(|s| s.starttls_offered = true)
    }

    /// Runs `serve_with_tls` over `stream` in a task.
    fn spawn_serve_with_tls<S>(
        stream: S,
        mut engine: Engine,
        acceptor: Option<TlsAcceptor>,
        handshake_time_limit: Duration,
    ) -> tokio::task::JoinHandle<(Outcome, Vec<Event>, u32)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            let starttls = acceptor.as_ref().map(|acceptor| StartTls {
                acceptor,
                handshake_time_limit,
            });
            let mut seen = Vec::new();
            let outcome = serve_with_tls(stream, &mut engine, LIMIT, starttls, |e| {
                seen.push(e.clone())
            })
            .await;
            (outcome, seen, engine.command_count())
        })
    }

    #[tokio::test]
    async fn starttls_over_loopback_tcp() {
        let (acceptor, ca) = test_tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            spawn_serve_with_tls(stream, tls_engine(), Some(acceptor), LIMIT)
                .await
                .unwrap()
        });

        let mut tcp = TcpStream::connect(address).await.unwrap();
        assert_eq!(
            read_reply(&mut tcp).await,
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        tcp.write_all(b"EHLO c.example\r\n").await.unwrap();
        assert!(read_reply(&mut tcp).await.contains("\r\n250-STARTTLS\r\n"));
        // Commands injected behind STARTTLS, in the same segment: never to be run.
        tcp.write_all(
            b"STARTTLS\r\nMAIL FROM:<injected@example.net>\r\nRCPT TO:<injected@example.test>\r\n",
        )
        .await
        .unwrap();
        assert_eq!(
            read_reply(&mut tcp).await,
            "220 2.0.0 Ready to start TLS\r\n"
        );
        let mut tls = tls_connector(&ca)
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap();

        // No second greeting; EHLO no longer offers STARTTLS.
        tls.write_all(b"EHLO c.example\r\n").await.unwrap();
        let ehlo = read_reply(&mut tls).await;
        assert!(ehlo.starts_with("250-mx.example.test\r\n"), "{ehlo}");
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        for (command, reply) in [
            ("STARTTLS", "554 5.5.1 Error: TLS already active"),
            // Not "nested MAIL": the injected MAIL was never run.
            ("MAIL FROM:<s@example.org>", "250 2.1.0 Ok"),
            (
                "RCPT TO:<r@example.test>",
                "450 4.3.2 Service currently unavailable",
            ),
            ("QUIT", "221 2.0.0 Bye"),
        ] {
            tls.write_all(format!("{command}\r\n").as_bytes())
                .await
                .unwrap();
            assert_eq!(read_reply(&mut tls).await, format!("{reply}\r\n"));
        }
        // The server ends the TLS session properly: a clean end of input.
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        let (outcome, seen, commands) = server.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Quit);
        assert!(outcome.rcpt_reached);
        let logged = lines(&outcome.events);
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert!(
            logged[0].starts_with(
                "Anonymous TLS connection established from [127.0.0.11]:58529: TLSv1.3 with \
                 cipher TLS_"
            ),
            "{logged:?}"
        );
        assert!(logged[0].ends_with(" bits)"), "{logged:?}");
        assert_eq!(
            logged[1],
            "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
             unavailable; from=<s@example.org>, to=<r@example.test>, proto=ESMTP, \
             helo=<c.example>"
        );
        assert_eq!(seen, outcome.events);
        // EHLO, STARTTLS, EHLO, STARTTLS, MAIL, RCPT, QUIT: the injected commands were never
        // read, and the count goes on across the upgrade.
        assert_eq!(commands, 7);
    }

    #[tokio::test]
    async fn a_pipelined_starttls_is_logged_and_its_followers_dropped() {
        let (acceptor, ca) = test_tls();
        let (mut client, server) = duplex(64 * 1024);
        let mut engine = tls_engine();
        engine.set_deep_test(DeepTest::Pipelining, Some(TestAction::Enforce));
        let task = spawn_serve_with_tls(server, engine, Some(acceptor), LIMIT);
        read_reply(&mut client).await;
        client
            .write_all(b"STARTTLS\r\nRCPT TO:<injected@example.test>\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "220 2.0.0 Ready to start TLS\r\n"
        );
        let mut tls = tls_connector(&ca)
            .connect(ServerName::try_from(HOST).unwrap(), client)
            .await
            .unwrap();
        tls.write_all(b"MAIL FROM:<s@x>\r\n").await.unwrap();
        assert_eq!(read_reply(&mut tls).await, "250 2.1.0 Ok\r\n");
        tls.write_all(b"RCPT TO:<r@y>\r\n").await.unwrap();
        // The pipelining failure still holds over TLS.
        assert_eq!(read_reply(&mut tls).await, "550 5.5.1 Protocol error\r\n");
        drop(tls);
        let (outcome, _, _) = task.await.unwrap();
        let logged = lines(&outcome.events);
        assert_eq!(
            logged[0],
            "COMMAND PIPELINING from [127.0.0.11]:58529 after STARTTLS: RCPT \
             TO:<injected@example.test>\\r\\n"
        );
        assert!(logged[1].starts_with("Anonymous TLS connection established"));
        // One RCPT logged: the one sent over TLS.
        assert_eq!(
            logged.iter().filter(|l| l.starts_with("NOQUEUE")).count(),
            1
        );
        assert!(logged[2].contains("to=<r@y>"), "{logged:?}");
        assert_eq!(outcome.end, SessionEnd::Hangup);
        assert_eq!(outcome.deep_tests.pipelining, TestOutcome::Failed);
    }

    #[tokio::test]
    async fn a_failed_handshake_ends_the_session_with_tlsproxys_line() {
        let (acceptor, _) = test_tls();
        let (mut client, server) = duplex(64 * 1024);
        let task = spawn_serve_with_tls(server, tls_engine(), Some(acceptor), LIMIT);
        read_reply(&mut client).await;
        client.write_all(b"STARTTLS\r\n").await.unwrap();
        assert_eq!(
            read_reply(&mut client).await,
            "220 2.0.0 Ready to start TLS\r\n"
        );
        // Not a ClientHello.
        client
            .write_all(b"EHLO plaintext.example\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        // Nothing was answered in plaintext: at most a TLS alert record (type 21).
        assert!(rest.is_empty() || rest[0] == 21, "{rest:?}");
        let (outcome, _, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Hangup);
        let logged = lines(&outcome.events);
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert!(
            logged[0].starts_with("SSL_accept error from [127.0.0.11]:58529: "),
            "{logged:?}"
        );
        assert!(!logged[0].contains("lost connection"), "{logged:?}");
        assert!(logged[1].starts_with("HANGUP after "), "{logged:?}");
    }

    #[tokio::test]
    async fn a_client_gone_during_the_handshake_lost_the_connection() {
        let (acceptor, _) = test_tls();
        let (mut client, server) = duplex(64 * 1024);
        let task = spawn_serve_with_tls(server, tls_engine(), Some(acceptor), LIMIT);
        read_reply(&mut client).await;
        client.write_all(b"STARTTLS\r\n").await.unwrap();
        read_reply(&mut client).await;
        drop(client);
        let (outcome, _, _) = task.await.unwrap();
        assert_eq!(
            lines(&outcome.events)[0],
            "SSL_accept error from [127.0.0.11]:58529: lost connection"
        );
        assert_eq!(outcome.end, SessionEnd::Hangup);
    }

    #[tokio::test(start_paused = true)]
    async fn the_handshake_has_a_time_limit() {
        let (acceptor, _) = test_tls();
        let (mut client, server) = duplex(64 * 1024);
        let handshake_limit = Duration::from_secs(30);
        let task = spawn_serve_with_tls(server, tls_engine(), Some(acceptor), handshake_limit);
        read_reply(&mut client).await;
        client.write_all(b"STARTTLS\r\n").await.unwrap();
        read_reply(&mut client).await;
        let asked = Instant::now();
        // Silence: no ClientHello.
        let (outcome, _, _) = task.await.unwrap();
        assert_eq!(asked.elapsed(), handshake_limit);
        assert_eq!(
            lines(&outcome.events)[0],
            "SSL_accept error from [127.0.0.11]:58529: handshake timed out"
        );
        assert_eq!(outcome.end, SessionEnd::Hangup);
        drop(client);
    }

    #[tokio::test]
    async fn without_a_certificate_starttls_gets_454_and_plaintext_goes_on() {
        let (mut client, server) = duplex(64 * 1024);
        let task = spawn_serve_with_tls(server, tls_engine(), None, LIMIT);
        client
            .write_all(b"EHLO c\r\nSTARTTLS\r\nNOOP\r\nQUIT\r\n")
            .await
            .unwrap();
        let mut transcript = Vec::new();
        client.read_to_end(&mut transcript).await.unwrap();
        let transcript = String::from_utf8(transcript).unwrap();
        // One greeting; the command after STARTTLS is still answered, in plaintext.
        assert_eq!(transcript.matches("220 mx.example.test").count(), 1);
        assert!(
            transcript.ends_with(
                "250 CHUNKING\r\n454 4.7.0 TLS not available due to local problem\r\n\
                 250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"
            ),
            "{transcript}"
        );
        let (outcome, _, _) = task.await.unwrap();
        assert_eq!(outcome.end, SessionEnd::Quit);
    }

    #[tokio::test]
    async fn starttls_not_offered_is_not_implemented_even_with_a_certificate() {
        let (acceptor, _) = test_tls();
        let (mut client, server) = duplex(64 * 1024);
        let task = spawn_serve_with_tls(server, engine(), Some(acceptor), LIMIT);
        client
            .write_all(b"EHLO c\r\nSTARTTLS\r\nQUIT\r\n")
            .await
            .unwrap();
        let mut transcript = Vec::new();
        client.read_to_end(&mut transcript).await.unwrap();
        let transcript = String::from_utf8(transcript).unwrap();
        assert!(!transcript.contains("250-STARTTLS"));
        assert!(
            transcript.ends_with(
                "250 CHUNKING\r\n502 5.5.1 Error: command not implemented\r\n221 2.0.0 Bye\r\n"
            ),
            "{transcript}"
        );
        assert_eq!(task.await.unwrap().0.end, SessionEnd::Quit);
    }
}
