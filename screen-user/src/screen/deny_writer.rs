//! The one writer of the kernel's dynamic deny entries. A thread of its own takes the denies
//! the policy decided, the revocations and the periodic sweep from a bounded channel: no
//! connection task waits on a map's system calls, and the sweep, which walks whole maps (up to
//! 1.3M entries), holds no lock the connection tasks take. Since every write goes through it,
//! a sweep never deletes an entry refreshed while it ran.

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread,
    time::Duration,
};

use ipnet::IpNet;
use screen_common::Origin;

use crate::{
    kernel::{Maps, dynamic::DynamicSweep},
    maillog::MailLog,
};

/// Writes waiting for the writer. Denies are rate-limited (`kernel_deny_rate_limit`) long
/// before this fills; a write it has no room for is logged and not made.
const DENY_WRITE_QUEUE: usize = 1024;

/// A decision to deny a client in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelDeny {
    /// The address or IPv6 prefix the entry covers.
    pub(crate) net: IpNet,
    pub(crate) ttl: Duration,
    /// Failures seen within the window, this one included.
    pub(crate) failures: u32,
    pub(crate) reason: String,
}

impl KernelDeny {
    /// The log line: `KERNEL DENY [a] for 3600s after N failures: reason`.
    pub(crate) fn log_line(&self, client: IpAddr) -> String {
        format!(
            "KERNEL DENY [{client}] for {}s after {} failure{}: {}",
            self.ttl.as_secs(),
            self.failures,
            if self.failures == 1 { "" } else { "s" },
            self.reason
        )
    }
}

/// One change to the dynamic deny maps.
enum DenyWrite {
    /// A deny the policy decided, for `client`.
    Install { deny: KernelDeny, client: IpAddr },
    /// A deny that no longer stands (its list was suspended), removed if the policy still
    /// owns the entry; `line` is logged when it goes.
    Revoke { net: IpNet, line: String },
    /// Removes the entries expired at `now_ns`.
    Sweep { now_ns: u64 },
}

/// The channel to the writer thread.
pub(crate) struct DenyWriter {
    writes: SyncSender<DenyWrite>,
    log: Arc<MailLog>,
}

impl DenyWriter {
    /// Starts the writer on `kernel`; the sweep gets descriptors of its own.
    pub(crate) fn start(kernel: Arc<Mutex<Maps>>, log: Arc<MailLog>) -> anyhow::Result<Self> {
        let sweep = lock(&kernel).dynamic_sweep()?;
        let (writes, queue) = mpsc::sync_channel(DENY_WRITE_QUEUE);
        let writer_log = Arc::clone(&log);
        thread::Builder::new()
            .name("kernel-deny".into())
            .spawn(move || run(&kernel, &sweep, &writer_log, queue))?;
        Ok(Self { writes, log })
    }

    /// Installs `deny` for `client`; logged once it is in the map.
    pub(crate) fn install(&self, deny: KernelDeny, client: IpAddr) {
        let net = deny.net;
        if !self.send(DenyWrite::Install { deny, client }) {
            self.log.warning(format_args!(
                "kernel deny of {net} not made: the kernel deny writer is behind"
            ));
        }
    }

    /// Removes the policy's entry for `net`, logging `line`.
    pub(crate) fn revoke(&self, net: IpNet, line: String) {
        if !self.send(DenyWrite::Revoke { net, line }) {
            self.log.warning(format_args!(
                "revoking the kernel deny of {net}: the kernel deny writer is behind"
            ));
        }
    }

    /// Asks for a sweep of the entries expired at `now_ns`; skipped while one is queued or
    /// running with the queue full (the next one catches up).
    pub(crate) fn sweep(&self, now_ns: u64) {
        self.send(DenyWrite::Sweep { now_ns });
    }

    fn send(&self, write: DenyWrite) -> bool {
        match self.writes.try_send(write) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

fn lock(kernel: &Mutex<Maps>) -> std::sync::MutexGuard<'_, Maps> {
    kernel.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer thread. The maps' lock is held for one map operation at a time; the sweep
/// takes none.
fn run(kernel: &Mutex<Maps>, sweep: &DynamicSweep, log: &MailLog, writes: Receiver<DenyWrite>) {
    while let Ok(write) = writes.recv() {
        match write {
            DenyWrite::Install { deny, client } => {
                let added =
                    lock(kernel).add_dynamic(deny.net, deny.ttl, Origin::Policy, deny.failures);
                match added {
                    Ok(_) => log.info(deny.log_line(client)),
                    Err(e) => log.warning(format_args!("kernel deny of {}: {e}", deny.net)),
                }
            }
            DenyWrite::Revoke { net, line } => {
                let mut maps = lock(kernel);
                let owned = match maps.dynamic_entry(net) {
                    Ok(Some(entry)) => entry.entry.origin == Origin::Policy as u32,
                    Ok(None) => false,
                    Err(e) => {
                        log.warning(format_args!("revoking the kernel deny of {net}: {e}"));
                        false
                    }
                };
                if !owned {
                    continue;
                }
                let removed = maps.remove_dynamic(net);
                drop(maps);
                match removed {
                    Ok(()) => log.info(line),
                    Err(e) => log.warning(format_args!("revoking the kernel deny of {net}: {e}")),
                }
            }
            DenyWrite::Sweep { now_ns } => match sweep.run(now_ns) {
                Ok(0) => {}
                Ok(swept) => tracing::info!(swept, "expired dynamic deny entries removed"),
                Err(e) => tracing::warn!("sweeping dynamic deny entries: {e}"),
            },
        }
    }
}
