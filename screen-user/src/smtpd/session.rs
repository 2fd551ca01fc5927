//! One client's session with the dummy SMTP engine (`postscreen_smtpd.c`), as a state
//! machine without I/O: [`Engine::on_line`] takes one command line as the
//! [`LineReader`](super::line::LineReader) yields it (`Engine::on_command` takes bare text)
//! and returns a [`Step`]: the reply to send, soft-bounce and footer applied, the [`Event`]s
//! to log, and whether the session goes on ([`Next`]) or why it ended ([`SessionEnd`]).
//!
//! The engine runs the command handlers (HELO, EHLO, MAIL, RCPT, DATA, BDAT, VRFY, ETRN,
//! STARTTLS, QUIT), the command count limit, the X21 final reply, and the deep tests in
//! postscreen's order: the bare newline test when the line is read, then the non-SMTP and
//! pipelining tests, then the pass at RCPT. It never accepts mail: every RCPT is refused
//! with the session's RCPT reply.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    command::{Command, extract_address, next_token, split_command},
    deep_tests::{DeepTest, DeepTestResults, SessionDeepTests},
    error::EngineError,
    event::{
        AFTER_CONNECT, AFTER_UNKNOWN, Event, Proto, escape_input, log_field, printable_command,
    },
    line::{Line, LineEnding},
    reply::Reply,
    reply_style::ReplyStyle,
    settings::EngineSettings,
};
use crate::test_state::TestAction;

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
    /// [`Engine::tls_unavailable`]; then it runs [`serve`](super::serve) again.
    /// [`serve_with_tls`](super::serve_with_tls) does all of this itself and never returns
    /// this.
    StartTls,
    /// A deep test failed with action `drop`: its `521` reply was sent.
    Dropped(DeepTest),
}

/// The engine's answer to one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The reply to send, soft-bounce and footer applied.
    pub(crate) reply: Option<Reply>,
    /// What to log, in order.
    pub(crate) events: Vec<Event>,
    pub(crate) next: Next,
}

impl Step {
    /// The bytes to write to the client (empty when there is no reply).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.reply.as_ref().map(Reply::to_bytes).unwrap_or_default()
    }

    /// The connection is to be closed once the reply is sent.
    #[cfg(test)]
    pub(crate) fn closes(&self) -> bool {
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
    /// When [`serve`](super::serve) first ran: the start of "tests after SMTP handshake".
    started: Option<Instant>,
    /// The driver sent the greeting (or decided not to): never twice in a session.
    greeting_done: bool,
    /// Which deep tests run in this session, which fired, and what each earned.
    deep: SessionDeepTests,
}

impl Engine {
    /// An engine for one client, or the first setting that is wrong.
    pub(crate) fn new(
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

    pub(crate) fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The engine for a client the screen hands over: one that talked before the greeting
    /// (`pregreeted`) gets no `220` from it.
    pub(crate) fn for_client(
        settings: Arc<EngineSettings>,
        client: SocketAddr,
        pregreeted: bool,
    ) -> Result<Self, EngineError> {
        let mut engine = Self::new(settings, client)?;
        if pregreeted {
            engine.set_pregreeted();
        }
        Ok(engine)
    }

    /// The client talked before the greeting: it gets no `220` from the engine
    /// (postscreen: fewer NON-SMTP COMMAND events, better sender and recipient logging).
    pub(crate) fn set_pregreeted(&mut self) {
        self.pregreeted = true;
    }

    /// Refuse recipients with `reply` from now on (an enforce action; the last one set wins).
    pub(crate) fn set_rcpt_reply(&mut self, reply: Reply) -> Result<(), EngineError> {
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
    pub(crate) fn set_final_reply(&mut self, reply: Reply) {
        self.final_reply = Some(reply);
        self.deep.stop_all();
    }

    /// Runs `test` with `action` in this session, or not at all with `None`, whatever the
    /// settings say. postscreen turns every deep test on for a client that already failed a
    /// test before the greeting, for better logging. A test the client already violated
    /// keeps its result.
    pub(crate) fn set_deep_test(&mut self, test: DeepTest, action: Option<TestAction>) {
        self.deep.set(test, action);
    }

    /// What the session earned in each deep test so far.
    pub(crate) fn deep_test_results(&self) -> DeepTestResults {
        self.deep.results()
    }

    /// The `220` greeting, or `None` for a client that pregreeted or after STARTTLS.
    pub(crate) fn greeting(&self) -> Option<Reply> {
        (!self.pregreeted && !self.tls_active).then(|| Reply::greeting(&self.settings.smtpd_banner))
    }

    /// The client reached RCPT (whatever the reply): the deep tests pass only then.
    pub(crate) fn rcpt_reached(&self) -> bool {
        self.rcpt_reached
    }

    /// The last HELO/EHLO name.
    #[cfg(test)]
    pub(crate) fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// The sender of the current transaction.
    #[cfg(test)]
    pub(crate) fn sender(&self) -> Option<&str> {
        self.sender.as_deref()
    }

    #[cfg(test)]
    pub(crate) fn proto(&self) -> Proto {
        self.proto
    }

    /// Commands counted so far (QUIT included, as postscreen counts it).
    #[cfg(test)]
    pub(crate) fn command_count(&self) -> u32 {
        self.command_count
    }

    /// The last command seen, as log lines name it (`CONNECT` before the first).
    #[cfg(test)]
    pub(crate) fn last_command(&self) -> &'static str {
        self.last_command
    }

    /// When the driver first ran this session, recorded at its first call: the start of
    /// "tests after SMTP handshake", which a `HANGUP` line counts from.
    pub(super) fn started_at(&mut self) -> Instant {
        *self.started.get_or_insert_with(Instant::now)
    }

    /// The greeting for the driver to send, the first time it asks: a session is greeted
    /// once, and not at all after a pregreet ([`Engine::greeting`]).
    pub(super) fn take_greeting(&mut self) -> Option<Reply> {
        if self.greeting_done {
            return None;
        }
        self.greeting_done = true;
        self.greeting()
    }

    /// The reply that accepts STARTTLS, for the caller to send before its TLS handshake.
    pub(crate) fn tls_ready(&self) -> Reply {
        self.finish(&Reply::starttls_ready())
    }

    /// TLS is up: reset the session as postscreen does after STARTTLS (helo and sender are
    /// forgotten; EHLO no longer offers STARTTLS) and take commands again.
    pub(crate) fn tls_established(&mut self) {
        self.tls_active = true;
        self.helo = None;
        self.sender = None;
        self.stopped = None;
    }

    /// TLS could not be started after all: take plaintext commands again, and return the
    /// `454` for the caller to send.
    pub(crate) fn tls_unavailable(&mut self) -> Reply {
        self.stopped = None;
        self.finish(&Reply::tls_unavailable())
    }

    /// `reply` as this client gets it (soft bounce, footer): for replies the caller sends
    /// itself, such as [`Reply::starttls_ready`].
    pub(crate) fn finish(&self, reply: &Reply) -> Reply {
        self.style
            .apply(reply, self.client, &self.settings.myhostname)
    }

    /// Handles one command line (without its line ending) that ended in CRLF with nothing
    /// sent after it: the bare newline and pipelining tests see nothing wrong.
    #[cfg(test)]
    pub(crate) fn on_command(&mut self, line: &[u8]) -> Step {
        self.on_line(Line {
            text: line,
            ending: LineEnding::CrLf,
            pending: false,
            following: &[],
        })
    }

    /// Handles one command line from the [`LineReader`](super::line::LineReader), with the
    /// deep tests: its ending for the bare newline test, and the input that followed it for
    /// the pipelining test.
    ///
    /// In postscreen's order: the bare newline test when the line is read, then the
    /// non-SMTP and pipelining tests, then the pass at RCPT, the command count, and the
    /// command itself. A test whose action is `drop` ends the session with its `521` before
    /// the command runs.
    pub(crate) fn on_line(&mut self, line: Line<'_>) -> Step {
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
    pub(crate) fn on_line_too_long(&mut self) -> Step {
        let after = self.last_command;
        self.stop(
            Reply::service_unavailable_421(&self.settings.myhostname),
            vec![Event::CommandLengthLimit { after }],
            SessionEnd::CommandLengthLimit,
        )
    }

    /// No complete command within the command time limit: `421 4.4.2` and close.
    pub(crate) fn on_time_limit(&mut self) -> Step {
        let after = self.last_command;
        self.stop(
            Reply::timeout_exceeded(&self.settings.myhostname),
            vec![Event::CommandTimeLimit { after }],
            SessionEnd::CommandTimeLimit,
        )
    }

    /// The client went away `elapsed` after the engine started. Not a test failure.
    pub(crate) fn on_hangup(&mut self, elapsed: Duration) -> Step {
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

#[cfg(test)]
mod tests;
