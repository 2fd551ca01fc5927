//! The hand-off of a passed client to the real MTA (postscreen's `postscreen_send.c`): over
//! a proxied TCP connection ([`proxy`], with the bytes moved by a [`relay`]), or by passing
//! the client's socket to Postfix's smtpd ([`postfix`]). When the MTA cannot take the client,
//! it is told so in postscreen's words ([`HandOff::run`]).

pub mod postfix;
pub(crate) mod proxy;
pub mod relay;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use serde::Deserialize;
use tokio::net::TcpStream;

use self::{
    postfix::PassFailure,
    proxy::Backend,
    relay::{Relay, RelayLimits, RelayMode},
};
use crate::{
    address::ClientAddr,
    limits::{ClientSlot, Limits},
    maillog::MailLog,
    smtpd::{self, Engine, EngineSettings, Reply, ReplyStyle, TimeLimits, close},
};

/// How passed clients reach the real MTA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Handoff {
    /// smtp-screen connects to `backend` and relays the bytes both ways.
    Proxy,
    /// The client's socket is given to Postfix's smtpd `pass` service, as postscreen does:
    /// smtpd talks to the client directly.
    Postfix,
}

/// How passed clients reach the MTA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HandoffSettings {
    pub(crate) method: Handoff,
    pub(crate) backend: Backend,
    /// Postfix's smtpd `pass` service (`handoff = "postfix"`).
    pub(crate) postfix_pass_socket: PathBuf,
    /// Which relay moves the bytes (`handoff = "proxy"`).
    pub(crate) relay: RelayMode,
    pub(crate) relay_max_connections: u32,
    /// No byte either way for this long closes a relayed connection.
    pub(crate) relay_idle_timeout: Duration,
    /// How long the backend may take to begin its greeting.
    pub(crate) backend_greeting_timeout: Duration,
}

/// The hand-off stage: how clients are handed off, and what answers them when the MTA
/// cannot take them.
pub(crate) struct HandOff {
    pub(crate) settings: HandoffSettings,
    /// Who moves the bytes of handed-off connections (`handoff = "proxy"`).
    pub(crate) relay: Relay,
    pub(crate) limits: Arc<Limits>,
    /// The dummy engine's settings and the reply style, for the 421 replies.
    pub(crate) engine: Arc<EngineSettings>,
    pub(crate) style: ReplyStyle,
    /// `command_time_limit` when the 421 answers the client's next command.
    pub(crate) command_time_limit: Duration,
    pub(crate) log: Arc<MailLog>,
}

impl HandOff {
    /// Connects the client to the MTA and relays until either side closes. `greeted` is
    /// `Some(pregreeted)` when the client got the `220-` teaser. When the MTA cannot take the
    /// client it is told so in postscreen's words: a bare 421 before any teaser; after a
    /// teaser, the 421 answers its next command (X21 mode), so the greeting is never a
    /// `220-` followed by a `421`. Returns whether the client was served by the dummy engine
    /// that way, so the session ends with a `DISCONNECT` line.
    ///
    /// `client_slot` is the connection's place in its client's count. Handed to smtpd, the
    /// connection leaves the count (smtpd counts its own, as after postscreen); relayed, it
    /// stays in it, and in the relay's count, until the relay ends. When
    /// `relay_max_connections` are relayed already, the client gets postscreen's reply for a
    /// full hand-off queue.
    pub(crate) async fn run(
        &self,
        stream: TcpStream,
        client: SocketAddr,
        server: SocketAddr,
        greeted: Option<bool>,
        client_slot: ClientSlot,
    ) -> bool {
        let relayed = match self.settings.method {
            Handoff::Proxy => match self.limits.relay(client_slot) {
                Ok(relayed) => Some(relayed),
                Err((client_slot, _)) => {
                    drop(client_slot);
                    self.log.info(format_args!(
                        "NOQUEUE: reject: CONNECT from {}: all server ports busy",
                        ClientAddr(client)
                    ));
                    return self
                        .unavailable(stream, client, greeted, &Reply::all_server_ports_busy())
                        .await;
                }
            },
            Handoff::Postfix => {
                drop(client_slot);
                None
            }
        };
        let slot = match self.limits.hand_off() {
            Ok(slot) => slot,
            Err(_) => {
                drop(relayed);
                return self
                    .unavailable(stream, client, greeted, &Reply::all_server_ports_busy())
                    .await;
            }
        };
        match self.settings.method {
            Handoff::Proxy => {
                let backend = match self.settings.backend.connect(client, server).await {
                    Ok(backend) => backend,
                    Err(e) => {
                        drop((slot, relayed));
                        self.log.warning(&e);
                        return self
                            .unavailable(stream, client, greeted, &Reply::all_server_ports_busy())
                            .await;
                    }
                };
                if let Err(e) = self
                    .settings
                    .backend
                    .greeted(&backend, self.settings.backend_greeting_timeout)
                    .await
                {
                    drop((slot, relayed, backend));
                    self.log.warning(&e);
                    return self
                        .unavailable(stream, client, greeted, &Reply::all_server_ports_busy())
                        .await;
                }
                drop(slot);
                let limits = RelayLimits {
                    idle: self.settings.relay_idle_timeout,
                    half_close: relay::HALF_CLOSE_LIMIT,
                };
                let result = self.relay.run(stream, backend, limits).await;
                drop(relayed);
                match result {
                    Ok(relayed) => tracing::debug!(
                        client = %client,
                        up = relayed.up,
                        down = relayed.down,
                        in_kernel = relayed.in_kernel,
                        "relay ended"
                    ),
                    Err(e) => tracing::debug!(client = %client, "relay ended: {e}"),
                }
                false
            }
            Handoff::Postfix => {
                let passed = postfix::pass_to_smtpd(
                    &self.settings.postfix_pass_socket,
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
                        false
                    }
                    Err(PassFailure {
                        error,
                        client: stream,
                    }) => {
                        drop(slot);
                        self.log.warning(&error);
                        match error.client_reply(false) {
                            Some(reply) => self.unavailable(stream, client, greeted, &reply).await,
                            // smtpd may have the client already: say nothing more to it.
                            None => false,
                        }
                    }
                }
            }
        }
    }

    /// The MTA cannot take the client. Before any teaser, `reply` (postscreen's 421) and
    /// close; after a teaser, the 421 `No system resources` answers the client's next command
    /// (postscreen's X21 mode). Returns whether the dummy engine served the client.
    async fn unavailable(
        &self,
        mut stream: TcpStream,
        client: SocketAddr,
        greeted: Option<bool>,
        reply: &Reply,
    ) -> bool {
        let Some(pregreeted) = greeted else {
            // postscreen sends the reply and frees the session without a DISCONNECT line.
            close::reply_and_close(
                &mut stream,
                reply,
                &self.style,
                client,
                &self.engine.myhostname,
            )
            .await;
            return false;
        };
        match Engine::for_client(Arc::clone(&self.engine), client, pregreeted) {
            Ok(mut engine) => {
                engine.set_final_reply(Reply::no_system_resources());
                // The 421 answers the first command: one command's time is the session's.
                let limits = TimeLimits::fixed(self.command_time_limit, 1);
                smtpd::serve(&mut stream, &mut engine, limits, |event| {
                    self.log.info(event.line(client));
                })
                .await;
            }
            Err(e) => self.log.warning(format_args!("dummy engine: {e}")),
        }
        close::close(&mut stream).await;
        true
    }
}
