//! The userspace relay: the daemon copies every byte between client and backend itself, each
//! direction on its own so that neither waits for the other, under one watch that closes
//! both sides when no byte moved for the idle limit or one direction outlives the other by
//! the half-close limit.

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::Notify,
    time::Instant,
};

use super::{RelayLimits, Relayed, half_close_error, idle_error};

/// Bytes read at once in one direction.
const CHUNK: usize = 16 * 1024;

/// When bytes last moved, and when a direction ended: milliseconds since the relay began
/// (0: not yet), shared by the two directions and the watch.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    first_end_ms: AtomicU64,
    /// Wakes the watch when a direction ends, for the half-close limit to start.
    end: Notify,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        // At least 1, so that 0 keeps meaning "not yet".
        (self.start.elapsed().as_millis() as u64).max(1)
    }

    fn moved(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn ended(&self) {
        let _ = self.first_end_ms.compare_exchange(
            0,
            self.now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.end.notify_one();
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + std::time::Duration::from_millis(ms)
    }
}

/// Copies from `from` to `to` until `from` ends, then shuts `to`'s write half.
async fn copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    activity: &Activity,
) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            activity.ended();
            // The peer may be gone already; the end is passed on as far as it can be.
            let _ = to.shutdown().await;
            return Ok(total);
        }
        activity.moved();
        to.write_all(&buf[..n]).await?;
        activity.moved();
        total += n as u64;
    }
}

/// Resolves when a limit ran out, with the error that says which.
async fn watch(activity: &Activity, limits: RelayLimits) -> io::Error {
    loop {
        let idle_at = activity.at(activity.last_ms.load(Ordering::Relaxed)) + limits.idle;
        let first_end = activity.first_end_ms.load(Ordering::Relaxed);
        let half_close_at = (first_end != 0).then(|| activity.at(first_end) + limits.half_close);
        let deadline = half_close_at.map_or(idle_at, |h| h.min(idle_at));
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            // A direction ended: the half-close limit starts.
            () = activity.end.notified() => continue,
        }
        let now = Instant::now();
        if half_close_at.is_some_and(|h| now >= h) {
            return half_close_error(limits);
        }
        // Bytes may have moved meanwhile: only a deadline that still stands ends the relay.
        let last = activity.at(activity.last_ms.load(Ordering::Relaxed));
        if now >= last + limits.idle {
            return idle_error(limits);
        }
    }
}

/// Copies bytes between client and backend until both directions are done, or a limit runs
/// out (both sides are closed then, when the streams drop).
pub(crate) async fn run(
    mut client: TcpStream,
    mut backend: TcpStream,
    limits: RelayLimits,
) -> io::Result<Relayed> {
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
        first_end_ms: AtomicU64::new(0),
        end: Notify::new(),
    };
    let (client_read, client_write) = client.split();
    let (backend_read, backend_write) = backend.split();
    let both = async {
        tokio::try_join!(
            copy(client_read, backend_write, &activity),
            copy(backend_read, client_write, &activity),
        )
    };
    tokio::select! {
        copied = both => {
            let (up, down) = copied?;
            Ok(Relayed { up, down, in_kernel: false })
        }
        e = watch(&activity, limits) => Err(e),
    }
}

#[cfg(test)]
mod tests;
