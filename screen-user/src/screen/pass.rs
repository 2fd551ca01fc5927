//! The temporary allowlist as a stage: at connect time a client whose every enabled test is
//! unexpired is `PASS OLD` and handed off at once; when a session ends, what it earned is
//! logged (`PASS NEW`, `PASS OLD`) and its record written. The rules are
//! [`crate::test_state`]'s; the store is behind [`crate::allowlist::AllowlistStore`].

use super::{Screen, connection::Connection};
use crate::{
    address::ClientAddr,
    test_state::{self, Screening, Start},
};

impl Screen {
    /// Looks the client up in the temporary allowlist. `None`: `PASS OLD`, hand it off now;
    /// otherwise the tests that are due. A client that already failed (a denylist `enforce`)
    /// is tested in full.
    pub(super) fn pass_old(&self, conn: &Connection, now: u64) -> Option<Screening> {
        let cached = if conn.session.noforward {
            None
        } else {
            self.allowlist.get(conn.client.ip())
        };
        // postscreen consults the cache only for a client's first concurrent session and
        // shares in-memory state between the others; here every session reads the same
        // record, which comes to the same thing.
        match test_state::start(cached.as_ref(), &self.settings.enabled, now) {
            Start::PassOld => {
                self.log
                    .info(format_args!("PASS OLD {}", ClientAddr(conn.client)));
                self.deny.forget(conn.client.ip());
                None
            }
            Start::Screen(screening) => Some(screening),
        }
    }

    /// The end of a session: `PASS NEW` or `PASS OLD` once every due test passed, and the
    /// record written when anything passed (postscreen's `psc_conclude`).
    pub(super) fn conclude(&self, conn: &Connection, screening: &Screening, now: u64) {
        let conclusion = test_state::conclude(
            screening,
            &conn.session.results,
            &self.settings.enabled,
            &self.settings.ttls,
            now,
        );
        if let Some(kind) = conclusion.pass {
            self.log
                .info(format_args!("PASS {kind} {}", ClientAddr(conn.client)));
        }
        if let Some(times) = conclusion.update {
            self.allowlist.record(conn.client.ip(), times);
        }
    }

    /// A session that passed every test it took: concluded, its failures forgotten.
    pub(super) fn pass(&self, conn: &Connection, screening: &Screening, now: u64) {
        self.conclude(conn, screening, now);
        self.deny.forget(conn.client.ip());
    }
}
