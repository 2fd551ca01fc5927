//! After the greeting (postscreen's `postscreen_smtpd.c` as a stage): the dummy engine runs
//! the deep protocol tests when they are due, and serves every client that already failed
//! (postscreen runs the deep tests opportunistically then), refusing each RCPT with the
//! failed test's reply. It never accepts mail; a client that passed reconnects and is handed
//! off then.

use std::sync::Arc;

use super::{Screen, connection::Connection};
use crate::{
    smtpd::{self, DeepTest, Engine, StartTls, TimeLimits, close},
    test_state::{Outcome, Screening, Test},
};

impl Screen {
    /// Whether the session goes to the dummy engine: it failed with `enforce` or reached an
    /// address outside `allowlist_interfaces`, or a deep test is due. A sender a DNSWL vouches
    /// for (`deep_tests_skip_dnswl`) is spared the 450 and the reconnect: its due deep tests
    /// count as passed until the shortest TTL, so the lists are asked again soon.
    pub(super) fn after_greeting_due(&self, conn: &mut Connection, screening: &Screening) -> bool {
        let session = &mut conn.session;
        let mut deep_due = screening.due.any_deep() && !session.results.dnswl_allowlisted;
        if deep_due && session.dnswl_listed && self.settings.deep_tests_skip_dnswl {
            for test in DeepTest::ALL {
                if screening.due.get(Test::from(test)) {
                    session
                        .results
                        .set_outcome(Test::from(test), Outcome::Ignored);
                }
            }
            deep_due = false;
        }
        session.noforward || deep_due
    }

    /// Serves a client in the dummy engine: a client that failed a test (RCPT refused with
    /// the action's reply) or one whose deep tests are due (RCPT refused with `450 4.3.2`;
    /// reaching it passes them, and the client must reconnect).
    pub(super) async fn after_greeting(
        &self,
        mut conn: Connection,
        screening: &Screening,
        now: u64,
    ) {
        let client = conn.client;
        let session = &mut conn.session;
        let mut engine =
            match Engine::for_client(Arc::clone(&self.engine), client, session.pregreeted) {
                Ok(engine) => engine,
                Err(e) => {
                    self.log.warning(format_args!("dummy engine: {e}"));
                    close::close(&mut conn.stream).await;
                    self.disconnect(client);
                    return;
                }
            };
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
            handshake_time_limit: self.settings.command_time_limit.normal,
        });
        // The stress state is read again at every command deadline, as postscreen's
        // PSC_EFF_CMD_TIME_LIMIT does: stress reaches a session already running.
        let stressed = || self.limits.stressed();
        let limits = TimeLimits {
            command: self.settings.command_time_limit,
            stressed: &stressed,
            session: self.settings.engine_session_time_limit,
        };
        let outcome =
            smtpd::serve_with_tls(&mut conn.stream, &mut engine, limits, starttls, |event| {
                self.log.info(event.line(client));
            })
            .await;
        outcome.deep_tests.record_into(&mut session.results);
        for test in DeepTest::ALL {
            if outcome.deep_tests.get(test) == Outcome::Failed {
                session.failures.push(test.log_name());
            }
        }

        self.conclude(&conn, screening, now);
        close::close(&mut conn.stream).await;
        self.disconnect(client);
        if conn.session.failures.is_empty() {
            self.deny.forget(client.ip());
        } else if let Some(denied) = conn.deniable_client() {
            let counted = conn.session.kernel_failures();
            if !counted.is_empty() {
                self.deny.failed_on(
                    denied,
                    &counted.join(", "),
                    conn.session.dnsbl_ground.take(),
                );
            }
        }
    }
}
