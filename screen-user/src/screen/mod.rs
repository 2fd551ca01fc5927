//! The screening of one connection, one stage after the other in postscreen's order
//! (`postscreen.c`, `psc_endpt_lookup_done`); `Screen::handle` is that order, and each stage
//! lives in its own file with its replies and log lines:
//!
//! 1. [`endpoint`]: who the client is (the socket, or a load balancer's PROXY header), the
//!    `CONNECT` line, the per-client and hand-off limits;
//! 2. [`access`]: the permanent access list (`ALLOWLISTED`, `DENYLISTED` and its action);
//! 3. [`pass`]: the temporary allowlist (`PASS OLD` at once), and at the end `PASS NEW`/`OLD`
//!    with the record written; then `allowlist_interfaces` (`ALLOWLIST VETO`, in [`access`])
//!    and the screening limit (`pre_queue_limit`, in [`endpoint`]);
//! 4. [`early`]: the tests before the greeting: the `220-` teaser, the greet wait, `PREGREET`
//!    and the DNSBL score, and their actions;
//! 5. [`deep`]: after the greeting, the dummy engine ([`crate::smtpd`]) for a client whose deep
//!    tests are due or that failed with `enforce`;
//! 6. the hand-off of a passed client to the real MTA ([`crate::handoff`]).
//!
//! Beyond postscreen, [`deny_policy`] denies a client in the kernel when it fails again within
//! `deny_window` (or a denylisted client whose action is `drop`), so its next SYNs never get
//! here; [`deny_causes`] revokes the denies made on a DNSBL list's answers when the list is
//! suspended. [`connection`] is what the stages hand on: the stream, the endpoints and the session's
//! flags. A connection's settings come from [`ScreenSettings`], built from the configuration.

pub(crate) mod access;
pub(crate) mod connection;
pub(crate) mod deep;
pub(crate) mod deny_causes;
pub(crate) mod deny_guard;
pub(crate) mod deny_policy;
pub(crate) mod deny_writer;
pub(crate) mod early;
pub(crate) mod endpoint;
pub(crate) mod pass;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};

use self::{
    access::Access, connection::Connection, deny_policy::DenyEnforcer, early::EarlySettings,
    endpoint::EndpointSettings,
};
use crate::{
    allowlist::AllowlistStore,
    dnsbl::{Dnsbl, Suspensions},
    handoff::HandOff,
    limits::{ClientSlot, Limits, StressDuration},
    maillog::MailLog,
    smtpd::{EngineSettings, ReplyStyle, tls::TlsAcceptor},
    test_state::{EnabledTests, TestAction, TestTtls},
};

/// The settings of the screening stages: what a reload swaps.
#[derive(Clone, Debug)]
pub(crate) struct ScreenSettings {
    pub(crate) endpoint: EndpointSettings,
    /// What happens to a client the access list rejects (`postscreen_denylist_action`).
    pub(crate) denylist_action: TestAction,
    pub(crate) early: EarlySettings,
    /// Which tests are on, and how long each one's pass lasts.
    pub(crate) enabled: EnabledTests,
    pub(crate) ttls: TestTtls,
    /// Clients a DNSWL vouches for skip the deep tests (`deep_tests_skip_dnswl`).
    pub(crate) deep_tests_skip_dnswl: bool,
    /// `postscreen_command_time_limit`.
    pub(crate) command_time_limit: StressDuration,
    /// `engine_session_time_limit`: a whole dummy-engine session, its TLS handshake included.
    pub(crate) engine_session_time_limit: Duration,
}

/// Everything the connections share.
pub(crate) struct Screen {
    pub(crate) settings: ScreenSettings,
    pub(crate) access: Access,
    pub(crate) limits: Arc<Limits>,
    pub(crate) allowlist: Arc<dyn AllowlistStore>,
    pub(crate) deny: DenyEnforcer,
    /// The DNSBL/DNSWL lists, when `dnsbl_sites` names any.
    pub(crate) dnsbl: Option<Dnsbl>,
    pub(crate) engine: Arc<EngineSettings>,
    pub(crate) style: ReplyStyle,
    /// STARTTLS in the dummy engine, when a certificate is configured.
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) handoff: HandOff,
    pub(crate) log: Arc<MailLog>,
}

/// Where a stage leaves the connection.
pub(crate) enum Next {
    /// On to the next stage.
    Continue,
    /// Straight to the hand-off: the client is allowlisted.
    HandOff,
    /// The stage answered and closed the connection.
    Done,
}

impl Screen {
    /// Accepts connections on `listener` until the task is dropped.
    pub(crate) async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
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

    /// Follows the lists' suspensions for the daemon's life: each one revokes the kernel
    /// denies that rested on the list.
    pub(crate) async fn revoke_on_suspension(self: Arc<Self>, mut suspensions: Suspensions) {
        loop {
            for list in suspensions.next().await {
                self.deny.list_suspended(&list);
            }
        }
    }

    /// The DNSBL lists, for the daemon's health checks and status.
    pub(crate) fn dnsbl(&self) -> Option<&Dnsbl> {
        self.dnsbl.as_ref()
    }

    /// The kernel deny policy, for the daemon's periodic sweep.
    pub(crate) fn deny(&self) -> &DenyEnforcer {
        &self.deny
    }

    /// One connection's task: the stages in postscreen's order. A task takes the size of its
    /// largest state for its whole life, and most of a screener's connections only ever wait
    /// in the greet wait: the later stages (the PROXY header, the dummy engine, the hand-off)
    /// are boxed, so they take their memory when they start instead of from every connection.
    async fn handle(self: Arc<Self>, stream: TcpStream) {
        let Some((mut conn, client_slot)) = self.connect(stream).await else {
            return;
        };
        match self.access_list(&mut conn).await {
            Next::Continue => {}
            Next::HandOff => return Box::pin(self.hand_off(conn, client_slot)).await,
            Next::Done => return,
        }
        let now = crate::test_state::unix_now();
        let Some(screening) = self.pass_old(&conn, now) else {
            return Box::pin(self.hand_off(conn, client_slot)).await;
        };
        self.allowlist_veto(&mut conn);
        let Some(screening_slot) = self.screening_slot(&mut conn).await else {
            return;
        };
        let stressed = self.limits.stressed();
        if let Next::Done = self.before_greeting(&mut conn, &screening, stressed).await {
            return;
        }
        if self.after_greeting_due(&mut conn, &screening) {
            Box::pin(self.after_greeting(conn, &screening, now)).await;
            drop(screening_slot);
            self.stress_log();
            return;
        }
        self.pass(&conn, &screening, now);
        drop(screening_slot);
        self.stress_log();
        Box::pin(self.hand_off(conn, client_slot)).await;
    }

    /// Hands a passed or allowlisted client to the real MTA; its place in its client's count
    /// goes with it (kept while it is relayed).
    async fn hand_off(&self, conn: Connection, client_slot: ClientSlot) {
        let Connection {
            stream,
            client,
            server,
            session,
        } = conn;
        let greeted = session.teaser_sent.then_some(session.pregreeted);
        if self
            .handoff
            .run(stream, client, server, greeted, client_slot)
            .await
        {
            self.disconnect(client);
        }
    }

    /// Logs postscreen's `entering/leaving STRESS mode` lines when the mode changed.
    fn stress_log(&self) {
        for change in self.limits.take_stress_changes() {
            self.log.info(change);
        }
    }
}

/// Binds a listening socket; IPv6 sockets are IPv6-only so `0.0.0.0:25` and `[::]:25` can
/// both be bound.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
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
    use crate::{config::Config, handoff::relay::Relay, loopback::tcp_pair, settings::Settings};

    /// The screen of a default configuration, its allowlist in a directory of its own.
    async fn screen(tag: &str) -> (Arc<Screen>, std::path::PathBuf) {
        let state =
            std::env::temp_dir().join(format!("smtp-screen-server-{tag}-{}", std::process::id()));
        let config = Config {
            state_dir: state.clone(),
            ..Config::default()
        };
        let log = MailLog::stderr("smtp-screen");
        let settings = Settings::new(&config, Path::new("/")).expect("the default settings");
        let (screen, _) = crate::daemon::build_screen(settings, None, Relay::userspace(), log)
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
