//! The permanent access list as a stage (`postscreen_access_list`): a permitted client is
//! `ALLOWLISTED` and handed off at once, a rejected one `DENYLISTED` with its action; and
//! `postscreen_allowlist_interfaces`, which vetoes the temporary allowlist for a client that
//! reached another local address (`ALLOWLIST VETO`). The lists themselves are parsed and
//! evaluated in [`crate::access_list`]. A client the kernel's deny lists or entries cover
//! (it reached the daemon past the XDP program) is denylisted as if the access list had
//! rejected it.

use super::{Next, Screen, connection::Connection};
use crate::{
    access_list::{AccessList, AccessVerdict, AddressList, AllowlistInterfaces},
    address::ClientAddr,
    smtpd::Reply,
};

/// The permanent lists, parsed: the access list and the two address lists it goes with.
#[derive(Debug)]
pub(crate) struct Access {
    pub(crate) list: AccessList,
    pub(crate) mynetworks: AddressList,
    pub(crate) allowlist_interfaces: AllowlistInterfaces,
}

/// This stage's replies, in postscreen's words.
impl Reply {
    /// `postscreen_denylist_action = enforce`, at RCPT.
    pub(crate) fn denylist_enforce() -> Self {
        Self::fixed(550, "5.3.2 Service currently unavailable")
    }

    /// `postscreen_denylist_action = drop`, at once.
    pub(crate) fn denylist_drop() -> Self {
        Self::fixed(521, "5.3.2 Service currently unavailable")
    }
}

impl Screen {
    /// The permanent access list (`postscreen_access_list`): a permitted client is
    /// `ALLOWLISTED` and handed off at once; a rejected one is `DENYLISTED` and its action
    /// applies (`drop`: 521 at once and a kernel deny; `enforce`: every RCPT refused).
    pub(super) async fn access_list(&self, conn: &mut Connection) -> Next {
        let client = conn.client;
        let decision = self
            .access
            .list
            .evaluate(client.ip(), &self.access.mynetworks);
        for warning in &decision.warnings {
            self.log.warning(warning);
        }
        // A client the kernel denies reached the daemon all the same (an interface without
        // the program, a frame the program could not read): the kernel's deny list is the
        // operator's too, so it is denylisted, unless the access list permits it.
        let verdict = match decision.verdict {
            AccessVerdict::Dunno if self.deny.kernel_denies(client.ip()) => AccessVerdict::Reject,
            verdict => verdict,
        };
        match verdict {
            AccessVerdict::Permit => {
                self.log
                    .info(format_args!("ALLOWLISTED {}", ClientAddr(client)));
                self.deny.forget(client.ip());
                Next::HandOff
            }
            AccessVerdict::Reject => {
                self.log
                    .info(format_args!("DENYLISTED {}", ClientAddr(client)));
                self.fail(
                    conn,
                    None,
                    "DENYLISTED",
                    self.settings.denylist_action,
                    Some(Reply::denylist_drop()),
                    Some(Reply::denylist_enforce()),
                )
                .await
            }
            AccessVerdict::Dunno => Next::Continue,
        }
    }

    /// `postscreen_allowlist_interfaces`: a client that reached another local address is
    /// screened but can never pass (`ALLOWLIST VETO`).
    pub(super) fn allowlist_veto(&self, conn: &mut Connection) {
        if !self.access.allowlist_interfaces.permits(conn.server.ip()) {
            self.log
                .info(format_args!("ALLOWLIST VETO {}", ClientAddr(conn.client)));
            conn.session.results.allowlist_veto = true;
            conn.session.noforward = true;
        }
    }
}
