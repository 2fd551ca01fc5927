//! The screening server: one tokio task per connection, taking each client through
//! postscreen's stages in postscreen's order (`postscreen.c`, `psc_endpt_lookup_done`):
//! endpoints, per-client and hand-off limits, the permanent access list, the temporary
//! allowlist, the MX policy, the screening limit, the tests before the greeting, then either
//! the dummy engine (a failed client) or the hand-off to the real MTA (a passed one).
//!
//! Beyond postscreen, a client that fails again within `deny_window` (or a denylisted client
//! whose action is `drop`) is denied in the kernel, so its next SYNs never get here.

pub mod access;
pub mod deny_policy;
pub mod early;
pub mod endpoint;

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use screen_common::Origin;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use self::{
    access::{AccessList, AccessVerdict, AddressList, AllowlistInterfaces},
    deny_policy::{DenyPolicy, KernelDeny},
    early::GreetOutcome,
    endpoint::UpstreamProxyProtocol,
};
use crate::address::canonical_endpoint;
use crate::{
    allowlist::AllowlistCache,
    config::Config,
    dnsbl::{self, Dnsbl, DnsblQuery, Thresholds, Verdict},
    escape::{LOG_TEXT_MAX, c_escape},
    handoff::{
        Handoff,
        postfix::{self, PassFailure},
        proxy::Backend,
        relay::Relay,
    },
    kernel::Maps,
    limits::{Limits, Refusal},
    maillog::MailLog,
    proxy_protocol,
    smtpd::{
        self, ClientAddr, DeepTest, DelayDisplay, Engine, EngineSettings, Reply, ReplyStyle,
        StartTls, tls::TlsAcceptor,
    },
    test_state::{self, EnabledTests, Outcome, SessionResults, Start, Test, TestAction, TestTtls},
};

/// Everything the connections share, built once from the configuration.
pub struct Screen {
    pub config: Config,
    pub settings: Arc<EngineSettings>,
    pub style: ReplyStyle,
    pub access: AccessList,
    pub mynetworks: AddressList,
    pub allowlist_interfaces: AllowlistInterfaces,
    pub greet_banner: String,
    pub enabled: EnabledTests,
    pub ttls: TestTtls,
    pub limits: Arc<Limits>,
    pub cache: Arc<AllowlistCache>,
    pub policy: Mutex<DenyPolicy>,
    /// The kernel maps, when the XDP layer is attached somewhere.
    pub kernel: Option<Mutex<Maps>>,
    pub backend: Backend,
    /// Who moves the bytes of handed-off connections (`handoff = "proxy"`).
    pub relay: Relay,
    pub log: Arc<MailLog>,
    /// The DNSBL/DNSWL lists, when `dnsbl_sites` names any.
    pub dnsbl: Option<Dnsbl>,
    pub thresholds: Thresholds,
    /// STARTTLS in the dummy engine, when a certificate is configured.
    pub tls: Option<TlsAcceptor>,
}

/// What one session learned, as postscreen's per-session flags.
#[derive(Default)]
struct Session {
    results: SessionResults,
    /// A test failed with `enforce`: the session goes to the dummy engine, RCPT is refused.
    rcpt_reply: Option<Reply>,
    /// The session can never be handed off (`ALLOWLIST VETO`, or an `enforce` failure).
    noforward: bool,
    /// The `220-` teaser went out: a final reply must continue the multi-line greeting.
    teaser_sent: bool,
    pregreeted: bool,
    /// What the failures were, for the kernel deny policy's log line.
    failures: Vec<&'static str>,
    /// The DNSBL score was negative: a DNSWL lists the client.
    dnswl_listed: bool,
}

impl Screen {
    /// Accepts connections on `listener` until the task is dropped.
    pub async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let screen = Arc::clone(&self);
                    tokio::spawn(async move { screen.handle(stream).await });
                }
                Err(e) => {
                    // Out of descriptors or memory: back off rather than spin.
                    self.log.warning(format_args!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn stress_log(&self) {
        for change in self.limits.take_stress_changes() {
            self.log.info(change);
        }
    }

    /// Sends a final reply and closes the connection.
    async fn reply_and_close(&self, stream: &mut TcpStream, reply: &Reply, client: SocketAddr) {
        let reply = self.style.apply(reply, client, &self.settings.myhostname);
        // The client may be gone; there is nothing else to tell it.
        let _ = stream.write_all(&reply.to_bytes()).await;
        close(stream).await;
    }

    /// One connection's task. A task takes the size of its largest state for its whole life,
    /// and most of a screener's connections only ever wait in the greet wait: the later
    /// stages (the PROXY header, the dummy engine, the hand-off) are boxed, so they take
    /// their memory when they start instead of from every connection.
    async fn handle(self: Arc<Self>, mut stream: TcpStream) {
        // Replies are single small writes; waiting to coalesce them only delays the client.
        let _ = stream.set_nodelay(true);
        let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
            let _ = stream
                .write_all(&Reply::no_system_resources().to_bytes())
                .await;
            return;
        };
        let (client, server) = match self.config.upstream_proxy_protocol {
            UpstreamProxyProtocol::None => (canonical_endpoint(peer), canonical_endpoint(local)),
            UpstreamProxyProtocol::Haproxy => {
                match Box::pin(proxy_protocol::read_header_from_tcp(
                    &mut stream,
                    self.config.upstream_proxy_timeout,
                ))
                .await
                {
                    Ok(header) => {
                        let (c, s) = header.endpoints(peer, local);
                        (canonical_endpoint(c), canonical_endpoint(s))
                    }
                    Err(e) => {
                        self.log.warning(&e);
                        let _ = stream
                            .write_all(&Reply::no_system_resources().to_bytes())
                            .await;
                        return;
                    }
                }
            }
        };
        self.log.info(format_args!(
            "CONNECT from {} to {}",
            ClientAddr(client),
            ClientAddr(server)
        ));

        let (client_slot, admitted) = self.limits.connect(client.ip());
        match admitted {
            Ok(_) => {}
            Err(Refusal::TooManyFromClient) => {
                self.log.info(format_args!(
                    "NOQUEUE: reject: CONNECT from {}: too many connections",
                    ClientAddr(client)
                ));
                self.reply_and_close(&mut stream, &Reply::too_many_connections(), client)
                    .await;
                self.disconnect(client);
                return;
            }
            Err(_) => {
                self.log.info(format_args!(
                    "NOQUEUE: reject: CONNECT from {}: all server ports busy",
                    ClientAddr(client)
                ));
                self.reply_and_close(&mut stream, &Reply::all_server_ports_busy(), client)
                    .await;
                self.disconnect(client);
                return;
            }
        };

        let mut session = Session::default();
        let decision = self.access.evaluate(client.ip(), &self.mynetworks);
        for warning in &decision.warnings {
            self.log.warning(warning);
        }
        match decision.verdict {
            AccessVerdict::Permit => {
                self.log
                    .info(format_args!("ALLOWLISTED {}", ClientAddr(client)));
                self.forget_failures(client.ip());
                drop(client_slot);
                Box::pin(self.hand_off(stream, client, server, &session)).await;
                return;
            }
            AccessVerdict::Reject => {
                self.log
                    .info(format_args!("DENYLISTED {}", ClientAddr(client)));
                match self.config.denylist_action {
                    TestAction::Drop => {
                        self.reply_and_close(&mut stream, &Reply::denylist_drop(), client)
                            .await;
                        self.disconnect(client);
                        let deny = self.lock_policy().on_denylist_drop(client.ip());
                        self.kernel_deny(client.ip(), deny);
                        return;
                    }
                    TestAction::Enforce => {
                        session.results.denylisted = true;
                        session.rcpt_reply = Some(Reply::denylist_enforce());
                        session.noforward = true;
                        session.failures.push("DENYLISTED");
                    }
                    TestAction::Ignore => {}
                }
            }
            AccessVerdict::Dunno => {}
        }

        // The temporary allowlist; a client that already failed is tested in full.
        let now = test_state::unix_now();
        let cached = if session.noforward {
            None
        } else {
            self.cache.get(client.ip())
        };
        // postscreen consults the cache only for a client's first concurrent session and
        // shares in-memory state between the others; here every session reads the same
        // record, which comes to the same thing.
        let screening = match test_state::start(cached.as_ref(), &self.enabled, now) {
            Start::PassOld => {
                self.log
                    .info(format_args!("PASS OLD {}", ClientAddr(client)));
                self.forget_failures(client.ip());
                drop(client_slot);
                Box::pin(self.hand_off(stream, client, server, &session)).await;
                return;
            }
            Start::Screen(s) => s,
        };

        if !self.allowlist_interfaces.permits(server.ip()) {
            self.log
                .info(format_args!("ALLOWLIST VETO {}", ClientAddr(client)));
            session.results.allowlist_veto = true;
            session.noforward = true;
        }

        let screening_slot = match self.limits.screen() {
            Ok(slot) => slot,
            Err(_) => {
                self.log.info(format_args!(
                    "reject: connect from {}: all screening ports busy",
                    ClientAddr(client)
                ));
                self.reply_and_close(&mut stream, &Reply::all_screening_ports_busy(), client)
                    .await;
                self.disconnect(client);
                return;
            }
        };
        self.stress_log();
        let stressed = self.limits.stressed();

        // Before the greeting: the pregreet test and the DNSBL lookups, side by side.
        let query = match (&self.dnsbl, screening.due.dnsbl) {
            (Some(dnsbl), true) => Some(dnsbl.start(client.ip())),
            _ => None,
        };
        let start = std::time::Instant::now();
        let wait = self.config.greet_wait.get(stressed);
        let deadline = tokio::time::Instant::from_std(start + wait);
        if screening.due.pregreet && !self.greet_banner.is_empty() {
            if early::send_teaser(&mut stream, &self.greet_banner)
                .await
                .is_err()
            {
                self.hangup_before_greeting(client, start.elapsed());
                return;
            }
            session.teaser_sent = true;
            let outcome = self.greet_wait(&stream, start, wait, query.as_ref()).await;
            match outcome {
                Ok(GreetOutcome::Quiet) => session.results.pregreet = Outcome::Passed,
                Ok(GreetOutcome::Pregreet {
                    bytes,
                    after,
                    input,
                }) => {
                    self.log.info(format_args!(
                        "PREGREET {bytes} after {} from {}: {}",
                        DelayDisplay(after),
                        ClientAddr(client),
                        c_escape(&input, LOG_TEXT_MAX)
                    ));
                    session.pregreeted = true;
                    match self.config.greet_action {
                        TestAction::Drop => {
                            self.reply_and_close(
                                &mut stream,
                                &Reply::protocol_error_drop(),
                                client,
                            )
                            .await;
                            self.disconnect(client);
                            self.failed(client.ip(), "PREGREET");
                            return;
                        }
                        TestAction::Enforce => {
                            session.results.pregreet = Outcome::Failed;
                            session.rcpt_reply = Some(Reply::protocol_error_enforce());
                            session.noforward = true;
                            session.failures.push("PREGREET");
                        }
                        TestAction::Ignore => session.results.pregreet = Outcome::Ignored,
                    }
                    // postscreen goes on waiting for the DNS answers after a pregreet: a
                    // listed pregreeter gets the DNSBL verdict too.
                    if let Some(query) = &query {
                        Box::pin(query.wait_all(deadline)).await;
                    }
                }
                Ok(GreetOutcome::Hangup { after }) => {
                    self.hangup_before_greeting(client, after);
                    return;
                }
                Err(_) => {
                    self.hangup_before_greeting(client, start.elapsed());
                    return;
                }
            }
        } else if let Some(query) = &query {
            // Only the DNSBL test is due: wait no longer than the answers take.
            Box::pin(query.wait_all(deadline)).await;
        }

        // The score as it stands when the wait ends; later answers do not count.
        if let Some(query) = query {
            let score = query.score_now();
            session.dnswl_listed = score.rank < 0;
            match score.verdict(&self.thresholds, !session.failures.is_empty()) {
                Verdict::Listed { rank, name } => {
                    self.log.info(dnsbl::rank_log_line(rank, client));
                    if self
                        .config
                        .kernel_dnsbl_threshold
                        .is_some_and(|kernel| rank >= kernel)
                    {
                        let deny = self
                            .lock_policy()
                            .on_severe(client.ip(), &format!("DNSBL rank {rank}"));
                        self.kernel_deny(client.ip(), deny);
                    }
                    let (drop_reply, enforce_reply) = (
                        Reply::dnsbl_drop(client.ip(), &name),
                        Reply::dnsbl_enforce(client.ip(), &name),
                    );
                    match self.config.dnsbl_action {
                        TestAction::Drop => {
                            if let Ok(reply) = drop_reply {
                                self.reply_and_close(&mut stream, &reply, client).await;
                            }
                            self.disconnect(client);
                            self.failed(client.ip(), "DNSBL");
                            return;
                        }
                        TestAction::Enforce => {
                            session.results.dnsbl = Outcome::Failed;
                            session.rcpt_reply = enforce_reply.ok();
                            session.noforward = true;
                            session.failures.push("DNSBL");
                        }
                        TestAction::Ignore => session.results.dnsbl = Outcome::Ignored,
                    }
                }
                Verdict::Allowlisted { ttl } => {
                    session.results.dnsbl = Outcome::Passed;
                    session.results.dnswl_allowlisted = true;
                    session.results.dns_ttl = Some(ttl);
                }
                Verdict::Clean { ttl } => {
                    session.results.dnsbl = Outcome::Passed;
                    session.results.dns_ttl = Some(ttl);
                }
            }
        }

        // After the greeting: the deep tests run in the dummy engine when they are due, and
        // for every client that already failed (postscreen runs them opportunistically then).
        let mut deep_due = screening.due.any_deep() && !session.results.dnswl_allowlisted;
        if deep_due && session.dnswl_listed && self.config.deep_tests_skip_dnswl {
            // A sender a DNSWL vouches for is spared the 450 and the reconnect: its deep tests
            // count as passed until the shortest TTL, so the lists are asked again soon.
            for test in DeepTest::ALL {
                if screening.due.get(Test::from(test)) {
                    session
                        .results
                        .set_outcome(Test::from(test), Outcome::Ignored);
                }
            }
            deep_due = false;
        }
        if session.noforward || deep_due {
            Box::pin(self.engine_session(stream, client, &mut session, &screening, stressed, now))
                .await;
            drop(screening_slot);
            self.stress_log();
            return;
        }

        let conclusion =
            test_state::conclude(&screening, &session.results, &self.enabled, &self.ttls, now);
        if let Some(kind) = conclusion.pass {
            self.log
                .info(format_args!("PASS {kind} {}", ClientAddr(client)));
        }
        if let Some(times) = conclusion.update {
            self.cache.record(client.ip(), times);
        }
        self.forget_failures(client.ip());
        drop(screening_slot);
        drop(client_slot);
        self.stress_log();
        Box::pin(self.hand_off(stream, client, server, &session)).await;
    }

    /// Waits out the greet wait: ends early when the client talks or hangs up, or when a
    /// DNSWL answer allowlists it (postscreen's `postscreen_dnsbl_allowlist_threshold`).
    async fn greet_wait(
        &self,
        stream: &TcpStream,
        start: std::time::Instant,
        wait: Duration,
        query: Option<&DnsblQuery>,
    ) -> io::Result<GreetOutcome> {
        let deadline = tokio::time::Instant::from_std(start + wait);
        let allowlisted = async {
            if let Some(query) = query {
                // Boxed, as the later stages: only a screen with DNS lists waits for them.
                let score = Box::pin(query.wait_all(deadline)).await;
                if matches!(
                    score.verdict(&self.thresholds, false),
                    Verdict::Allowlisted { .. }
                ) {
                    return;
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            outcome = early::watch(stream, start, wait) => outcome,
            () = allowlisted => Ok(GreetOutcome::Quiet),
        }
    }

    fn hangup_before_greeting(&self, client: SocketAddr, after: Duration) {
        self.log.info(format_args!(
            "HANGUP after {} from {} in tests before SMTP handshake",
            DelayDisplay(after),
            ClientAddr(client)
        ));
        self.disconnect(client);
    }

    fn disconnect(&self, client: SocketAddr) {
        self.log
            .info(format_args!("DISCONNECT {}", ClientAddr(client)));
    }

    /// Serves a client in the dummy engine, which never accepts mail: a client that failed a
    /// test (RCPT refused with the action's reply) or one whose deep tests are due (RCPT
    /// refused with `450 4.3.2`; reaching it passes them, and the client must reconnect).
    async fn engine_session(
        &self,
        mut stream: TcpStream,
        client: SocketAddr,
        session: &mut Session,
        screening: &test_state::Screening,
        stressed: bool,
        now: u64,
    ) {
        let mut engine = match Engine::new(Arc::clone(&self.settings), client) {
            Ok(engine) => engine,
            Err(e) => {
                self.log.warning(format_args!("dummy engine: {e}"));
                close(&mut stream).await;
                self.disconnect(client);
                return;
            }
        };
        if session.pregreeted {
            engine.set_pregreeted();
        }
        if let Some(reply) = &session.rcpt_reply {
            // Every action reply is a 5xx, which set_rcpt_reply accepts.
            let _ = engine.set_rcpt_reply(reply.clone());
        }
        // Deep tests that are not due this time stay off, unless the client already failed.
        let failed_before = !session.failures.is_empty();
        for test in DeepTest::ALL {
            if !failed_before && !screening.due.get(Test::from(test)) {
                engine.set_deep_test(test, None);
            }
        }
        let starttls = self.tls.as_ref().map(|acceptor| StartTls {
            acceptor,
            // As postscreen's tlsproxy: the normal command time limit, stressed or not.
            handshake_time_limit: self.config.command_time_limit.normal,
        });
        let limit = self.config.command_time_limit.get(stressed);
        let outcome = smtpd::serve_with_tls(&mut stream, &mut engine, limit, starttls, |event| {
            self.log.info(event.line(client));
        })
        .await;
        outcome.deep_tests.record_into(&mut session.results);
        for test in DeepTest::ALL {
            if outcome.deep_tests.get(test) == Outcome::Failed {
                session.failures.push(match test {
                    DeepTest::Pipelining => "COMMAND PIPELINING",
                    DeepTest::NonSmtpCommand => "NON-SMTP COMMAND",
                    DeepTest::BareNewline => "BARE NEWLINE",
                });
            }
        }

        let conclusion =
            test_state::conclude(screening, &session.results, &self.enabled, &self.ttls, now);
        if let Some(kind) = conclusion.pass {
            self.log
                .info(format_args!("PASS {kind} {}", ClientAddr(client)));
        }
        if let Some(times) = conclusion.update {
            self.cache.record(client.ip(), times);
        }
        close(&mut stream).await;
        self.disconnect(client);
        if session.failures.is_empty() {
            self.forget_failures(client.ip());
        } else {
            self.failed(client.ip(), &session.failures.join(", "));
        }
    }

    /// Connects the client to the backend and relays until either side closes. When the
    /// backend cannot be reached the client is told so in postscreen's words: a bare 421
    /// before any teaser; after a teaser, the 421 answers its next command (X21 mode) so the
    /// greeting is never a `220-` followed by a `421`.
    async fn hand_off(
        &self,
        stream: TcpStream,
        client: SocketAddr,
        server: SocketAddr,
        session: &Session,
    ) {
        let slot = match self.limits.hand_off() {
            Ok(slot) => slot,
            Err(_) => {
                self.backend_unavailable(stream, client, session, &Reply::all_server_ports_busy())
                    .await;
                return;
            }
        };
        match self.config.handoff {
            Handoff::Proxy => {
                let backend = match self.backend.connect(client, server).await {
                    Ok(backend) => backend,
                    Err(e) => {
                        drop(slot);
                        self.log.warning(&e);
                        self.backend_unavailable(
                            stream,
                            client,
                            session,
                            &Reply::all_server_ports_busy(),
                        )
                        .await;
                        return;
                    }
                };
                drop(slot);
                match self.relay.run(stream, backend).await {
                    Ok(relayed) => tracing::debug!(
                        client = %client,
                        up = relayed.up,
                        down = relayed.down,
                        in_kernel = relayed.in_kernel,
                        "relay ended"
                    ),
                    Err(e) => tracing::debug!(client = %client, "relay ended: {e}"),
                }
            }
            Handoff::Postfix => {
                let passed = postfix::pass_to_smtpd(
                    &self.config.postfix_pass_socket,
                    stream,
                    client,
                    server,
                    postfix::CONNECT_TIMEOUT,
                    postfix::NOTIFY_TIMEOUT,
                )
                .await;
                match passed {
                    // postscreen keeps its copy of the socket, and the hand-off place, until
                    // smtpd has taken the connection over.
                    Ok(handle) => {
                        if let Err(e) = handle.taken_over().await {
                            self.log.warning(&e);
                        }
                        drop(slot);
                    }
                    Err(PassFailure {
                        error,
                        client: stream,
                    }) => {
                        drop(slot);
                        self.log.warning(&error);
                        match error.client_reply(false) {
                            Some(reply) => {
                                self.backend_unavailable(stream, client, session, &reply)
                                    .await;
                            }
                            // smtpd may have the client already: say nothing more to it.
                            None => drop(stream),
                        }
                    }
                }
            }
        }
    }

    /// The MTA cannot take the client. Before any teaser, `reply` (postscreen's 421) and
    /// close; after a teaser, the 421 `No system resources` answers the client's next command
    /// (postscreen's X21 mode), so the greeting is never a `220-` followed by a `421`.
    async fn backend_unavailable(
        &self,
        mut stream: TcpStream,
        client: SocketAddr,
        session: &Session,
        reply: &Reply,
    ) {
        if !session.teaser_sent {
            // postscreen sends the reply and frees the session without a DISCONNECT line.
            self.reply_and_close(&mut stream, reply, client).await;
            return;
        }
        match Engine::new(Arc::clone(&self.settings), client) {
            Ok(mut engine) => {
                if session.pregreeted {
                    engine.set_pregreeted();
                }
                engine.set_final_reply(Reply::no_system_resources());
                let limit = self.config.command_time_limit.normal;
                smtpd::serve(&mut stream, &mut engine, limit, |event| {
                    self.log.info(event.line(client));
                })
                .await;
            }
            Err(e) => self.log.warning(format_args!("dummy engine: {e}")),
        }
        close(&mut stream).await;
        self.disconnect(client);
    }

    fn lock_policy(&self) -> std::sync::MutexGuard<'_, DenyPolicy> {
        self.policy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops remembered failures older than the deny window (called periodically).
    pub fn lock_policy_expire(&self) {
        self.lock_policy().expire(Instant::now());
    }

    fn forget_failures(&self, client: IpAddr) {
        self.lock_policy().forget(client);
    }

    /// A client failed a test: a repeat within the window is denied in the kernel.
    fn failed(&self, client: IpAddr, reason: &str) {
        let deny = self
            .lock_policy()
            .on_failure(client, Instant::now(), reason);
        self.kernel_deny(client, deny);
    }

    fn kernel_deny(&self, client: IpAddr, deny: Option<KernelDeny>) {
        let (Some(deny), Some(kernel)) = (deny, &self.kernel) else {
            return;
        };
        let mut maps = kernel.lock().unwrap_or_else(|e| e.into_inner());
        match maps.add_dynamic(deny.net, deny.ttl, Origin::Policy, deny.failures) {
            Ok(_) => self.log.info(deny.log_line(client)),
            Err(e) => self
                .log
                .warning(format_args!("kernel deny of {}: {e}", deny.net)),
        }
    }
}

/// Closes a connection so that the last reply reaches the client: the write side is shut
/// first, then input still arriving is read and discarded for a moment (bounded), because
/// closing a socket with unread input makes the kernel reset the connection and the client
/// may lose the reply.
async fn close(stream: &mut TcpStream) {
    const LINGER: Duration = Duration::from_secs(1);
    const DRAIN_LIMIT: usize = 64 * 1024;
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    // On the heap: a buffer here would be part of every connection's task for its whole life.
    let mut buf = vec![0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// Binds a listening socket; IPv6 sockets are IPv6-only so `0.0.0.0:25` and `[::]:25` can
/// both be bound.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // A large backlog: a burst of bots must not make the kernel drop good clients' SYNs.
    socket.listen(4096)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{daemon::build_screen, loopback::tcp_pair};

    /// The screen of a default configuration, its allowlist in a directory of its own.
    async fn screen(tag: &str) -> (Arc<Screen>, std::path::PathBuf) {
        let state =
            std::env::temp_dir().join(format!("smtp-screen-server-{tag}-{}", std::process::id()));
        let config = Config {
            state_dir: state.clone(),
            ..Config::default()
        };
        let log = MailLog::stderr("smtp-screen");
        let screen = build_screen(config, Path::new("/"), None, Relay::userspace(), log)
            .await
            .expect("a screen from the default configuration");
        (Arc::new(screen), state)
    }

    /// What a held connection's task may take, the future alone: most connections spend
    /// their life in the greet wait, and a task is as large as its largest state.
    const TASK_LIMIT: usize = 2048;

    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let (screen, state) = screen("size").await;
        let (server, _client) = tcp_pair().await;
        let task = Arc::clone(&screen).handle(server);
        let size = std::mem::size_of_val(&task);
        eprintln!("a connection's task: {size} bytes");
        drop(task);
        let _ = std::fs::remove_dir_all(state);
        assert!(
            size <= TASK_LIMIT,
            "a connection's task takes {size} bytes, more than {TASK_LIMIT}: box the state \
             that grew it"
        );
    }
}
