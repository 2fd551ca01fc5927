//! The engine over a connection: [`serve`] runs an [`Engine`] over any tokio stream with a
//! [`LineReader`], sending the greeting, answering each command line, and turning the
//! per-command time limit, the session's time limit, an over-long line, end of input and a
//! failed write into the session's end (postscreen's `COMMAND TIME LIMIT`, `COMMAND LENGTH
//! LIMIT` and `HANGUP`). The [`TimeLimits`] read the stress state at every deadline, as
//! postscreen's `PSC_EFF_CMD_TIME_LIMIT` does, so stress reaches sessions already running.
//!
//! [`serve_with_tls`] adds STARTTLS: it accepts the command with `220 2.0.0 Ready to start
//! TLS`, drops any plaintext sent behind it, runs the handshake under a time limit and goes
//! on with the same session over TLS (postscreen does this through `tlsproxy(8)`).

use std::{io, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::{Instant, timeout, timeout_at},
};

use super::{
    deep_tests::DeepTestResults,
    event::Event,
    line::{LineError, LineReader},
    reply::Reply,
    session::{Engine, Next, SessionEnd, Step},
    tls::{self, TlsAcceptor},
};
use crate::{escape::truncate_at_char, limits::StressDuration};

/// How long closing a TLS session (its close_notify) may take after the last reply.
const TLS_CLOSE_TIME_LIMIT: Duration = Duration::from_secs(5);

/// The longest handshake error text put in a log line.
const MAX_TLS_ERROR_TEXT: usize = 200;

/// How often a command's deadline is worked out again while the engine waits for the line:
/// a stress mode that began meanwhile shortens it within this time.
const STRESS_RECHECK: Duration = Duration::from_secs(1);

/// How long the final reply of a session cut off by its time limit may take to write.
const FINAL_REPLY_TIME_LIMIT: Duration = Duration::from_secs(10);

/// The time limits of one engine session.
#[derive(Clone, Copy)]
pub struct TimeLimits<'a> {
    /// `command_time_limit` (postscreen's `postscreen_command_time_limit`): the time to send
    /// one whole command line. Which of its two values is in force is read from `stressed`
    /// at every deadline, as postscreen's `PSC_EFF_CMD_TIME_LIMIT` does.
    pub(crate) command: StressDuration,
    /// Whether the daemon is in stress mode now.
    pub(crate) stressed: &'a (dyn Fn() -> bool + Sync),
    /// `engine_session_time_limit`: the whole session, the TLS handshake included, from the
    /// greeting on. Beyond postscreen, which allows `command_count_limit` times
    /// `command_time_limit` (20 × 300 s by default) and more with a TLS handshake.
    pub(crate) session: Duration,
}

impl TimeLimits<'static> {
    /// `command` for every command whatever the stress, and for the whole session at most
    /// what postscreen allows: one `command` for each of `commands` commands.
    pub(crate) fn fixed(command: Duration, commands: u32) -> Self {
        Self {
            command: StressDuration::fixed(command),
            stressed: &|| false,
            session: command.saturating_mul(commands.max(1)),
        }
    }
}

impl TimeLimits<'_> {
    /// The command time limit in force now.
    fn command_now(&self) -> Duration {
        self.command.get((self.stressed)())
    }
}

/// The deadlines of one session.
#[derive(Clone, Copy)]
struct Deadlines<'a> {
    limits: TimeLimits<'a>,
    /// When the session must be over.
    session: Instant,
}

impl<'a> Deadlines<'a> {
    fn of(engine: &mut Engine, limits: TimeLimits<'a>) -> Self {
        let started = engine.started_at();
        let session = started
            .checked_add(limits.session)
            // Past any time a test or a daemon runs: no limit in effect.
            .unwrap_or_else(|| started + Duration::from_secs(86_400 * 365 * 30));
        Self { limits, session }
    }

    /// When the command begun at `since` must be complete: its command time limit as it
    /// stands now, within the session's.
    fn command(&self, since: Instant) -> Instant {
        self.within_session(since, self.limits.command_now())
    }

    /// When the engine next looks at the deadline of the command begun at `since`: at the
    /// deadline, or sooner when stress can still move it.
    fn wake(&self, since: Instant) -> Instant {
        let deadline = self.command(since);
        if self.limits.command.normal == self.limits.command.stress {
            deadline
        } else {
            deadline.min(Instant::now() + STRESS_RECHECK)
        }
    }

    /// `start + limit`, but no later than the session's end.
    fn within_session(&self, start: Instant, limit: Duration) -> Instant {
        start
            .checked_add(limit)
            .map_or(self.session, |end| end.min(self.session))
    }

    /// When a write begun now must be done: a final reply after the session's time is up
    /// still gets a short while.
    fn write(&self) -> Instant {
        let now = Instant::now();
        let end = if now >= self.session {
            now + FINAL_REPLY_TIME_LIMIT
        } else {
            self.session
        };
        now.checked_add(self.limits.command_now())
            .map_or(end, |limit| limit.min(end))
    }
}

/// How a [`serve`] run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Every event of the run, in order (also passed to the caller's sink as they happen).
    pub(crate) events: Vec<Event>,
    /// The client reached RCPT: the deep tests pass.
    pub(crate) rcpt_reached: bool,
    pub(crate) end: SessionEnd,
    /// What the session earned in each deep test ([`Engine::deep_test_results`]).
    pub(crate) deep_tests: DeepTestResults,
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
/// them. The command time limit is a deadline for each whole command line, reset only when a
/// command has been answered, so a client that trickles one byte at a time gains nothing;
/// it is worked out again while the engine waits, so stress mode shortens it for a session
/// already running. No deadline goes past the session's: when that comes, the session ends
/// as a command that took too long (`421 4.4.2 … Error: timeout exceeded`). A write that
/// does not finish within the command time limit counts as a hangup. Each event goes to
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
    limits: TimeLimits<'_>,
    mut on_event: F,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Event),
{
    let deadlines = Deadlines::of(engine, limits);
    let mut reader = LineReader::new(engine.settings().line_length_limit);
    let mut events = Vec::new();
    let end = run(
        stream,
        engine,
        &mut reader,
        deadlines,
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
    pub(crate) acceptor: &'a TlsAcceptor,
    /// How long the handshake may take. postscreen gives tlsproxy the normal command time
    /// limit, never the shorter one of stress mode. The session's time limit still holds.
    pub(crate) handshake_time_limit: Duration,
}

/// [`serve`] with STARTTLS handled: the whole session, over `stream` and then, once the
/// client asked for it, over TLS, within the session's time limit (the handshake included).
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
///
/// [`EngineSettings::starttls_offered`]: super::EngineSettings::starttls_offered
pub async fn serve_with_tls<S, F>(
    mut stream: S,
    engine: &mut Engine,
    limits: TimeLimits<'_>,
    starttls: Option<StartTls<'_>>,
    mut on_event: F,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Event),
{
    let deadlines = Deadlines::of(engine, limits);
    let mut reader = LineReader::new(engine.settings().line_length_limit);
    let mut events = Vec::new();
    let tls = loop {
        match run(
            &mut stream,
            engine,
            &mut reader,
            deadlines,
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
        if send(&mut stream, &reply, deadlines).await.is_err() {
            return hang_up(engine, events, &mut on_event);
        }
    };

    if send(&mut stream, &engine.tls_ready(), deadlines)
        .await
        .is_err()
    {
        return hang_up(engine, events, &mut on_event);
    }
    reader.clear();
    let handshake_deadline = deadlines.within_session(Instant::now(), tls.handshake_time_limit);
    let handshake = timeout_at(handshake_deadline, tls.acceptor.accept(stream));
    let reason = match handshake.await {
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
                    deadlines,
                    &mut on_event,
                    &mut events,
                )
                .await
                {
                    // The engine refuses a second STARTTLS; answer as if it had not.
                    SessionEnd::StartTls => {
                        let reply = engine.tls_unavailable();
                        if send(&mut stream, &reply, deadlines).await.is_err() {
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
    deadlines: Deadlines<'_>,
    on_event: &mut F,
    events: &mut Vec<Event>,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Event),
{
    let started = engine.started_at();
    if let Some(greeting) = engine.take_greeting()
        && send(stream, &greeting, deadlines).await.is_err()
    {
        let step = engine.on_hangup(started.elapsed());
        return conclude(events, step, on_event);
    }
    let mut command_started = Instant::now();
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
                    let deadline = deadlines.command(command_started);
                    let wake = deadlines.wake(command_started);
                    // A read is cancel-safe: waking to look at the deadline again loses
                    // nothing.
                    match timeout_at(wake, stream.read(spare)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => engine.on_hangup(started.elapsed()),
                        Ok(Ok(n)) => {
                            reader.commit(n);
                            continue;
                        }
                        Err(_elapsed) if Instant::now() >= deadline => engine.on_time_limit(),
                        Err(_elapsed) => continue,
                    }
                }
            }
        };
        for event in &step.events {
            on_event(event);
        }
        events.extend(step.events.iter().cloned());
        if let Some(reply) = &step.reply
            && send(stream, reply, deadlines).await.is_err()
            && step.next == Next::Continue
        {
            // postscreen treats a failed write like a hangup; after a final reply the
            // session ends anyway.
            let step = engine.on_hangup(started.elapsed());
            return conclude(events, step, on_event);
        }
        match step.next {
            Next::Continue => command_started = Instant::now(),
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
    deadlines: Deadlines<'_>,
) -> io::Result<()> {
    let bytes = reply.to_bytes();
    let write = async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    };
    match timeout_at(deadlines.write(), write).await {
        Ok(result) => result,
        Err(_elapsed) => Err(io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests;
