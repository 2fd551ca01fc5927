//! Many clients at once, as the benchmarks send them: [`ClientPool`] runs numbered jobs (one
//! client's connection each, as a benchmark scripts it) on a number of threads inside a
//! network namespace, each thread taking the next job as soon as it has finished one.
//!
//! A pool stops starting jobs once every job has run, its time is up, its stop flag is set,
//! the benchmark is interrupted (Ctrl-C) or a job has failed; the jobs already running finish.
//! The first failure is the pool's error ([`JobFailed`]), so that a wrong outcome stops the
//! benchmark instead of being counted.

use std::{
    error::Error,
    fmt,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    bench::{Result, check_interrupted, interrupted},
    netns::Netns,
};

/// Threads in a namespace running jobs `0..count` in order of their numbers.
pub struct ClientPool<'a> {
    netns: &'a Netns,
    threads: usize,
    limit: Duration,
    rate: Option<f64>,
    stop: Option<&'a AtomicBool>,
}

/// What a pool's run did: each job's result, in the order the jobs finished.
#[derive(Debug)]
pub struct Finished<T> {
    pub results: Vec<T>,
    pub started: Instant,
    /// When the last thread was done.
    pub ended: Instant,
}

impl<T> Finished<T> {
    pub fn wall(&self) -> Duration {
        self.ended - self.started
    }
}

/// The first job that failed, and why.
#[derive(Debug)]
pub struct JobFailed {
    pub job: usize,
    pub problem: String,
}

impl fmt::Display for JobFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem)
    }
}

impl Error for JobFailed {}

impl<'a> ClientPool<'a> {
    /// `threads` threads in `netns`; no job starts once `limit` has passed.
    pub fn new(netns: &'a Netns, threads: usize, limit: Duration) -> Self {
        Self {
            netns,
            threads,
            limit,
            rate: None,
            stop: None,
        }
    }

    /// Job `i` starts no earlier than `i / per_second` after the run's start: a fixed rate,
    /// whatever the server's pace, as long as there are threads enough.
    pub fn paced(self, per_second: f64) -> Self {
        Self {
            rate: Some(per_second),
            ..self
        }
    }

    /// No job starts once `stop` is set.
    pub fn until(self, stop: &'a AtomicBool) -> Self {
        Self {
            stop: Some(stop),
            ..self
        }
    }

    /// Runs `job(0)` to `job(count - 1)`. A job returns its result, or what went wrong; the
    /// first wrong one stops the pool and comes back as [`JobFailed`], boxed. An interruption
    /// is an error too. Jobs left unstarted for the time limit or the stop flag are simply
    /// missing from the results.
    pub fn run<T: Send>(
        &self,
        count: usize,
        job: impl Fn(usize) -> std::result::Result<T, String> + Sync,
    ) -> Result<Finished<T>> {
        let next = AtomicUsize::new(0);
        let failure: Mutex<Option<JobFailed>> = Mutex::new(None);
        let results = Mutex::new(Vec::with_capacity(count));
        let started = Instant::now();
        let deadline = started + self.limit;
        let stopped = || {
            lock(&failure).is_some()
                || self.stop.is_some_and(|stop| stop.load(Ordering::Relaxed))
                || interrupted()
        };
        let worker = || {
            while !stopped() {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                if let Some(rate) = self.rate {
                    let slot = started + Duration::from_secs_f64(i as f64 / rate);
                    thread::sleep(slot.saturating_duration_since(Instant::now()));
                }
                if Instant::now() >= deadline {
                    return;
                }
                match job(i) {
                    Ok(result) => lock(&results).push(result),
                    Err(problem) => {
                        lock(&failure).get_or_insert(JobFailed { job: i, problem });
                    }
                }
            }
        };
        thread::scope(|scope| -> Result<()> {
            let threads: Vec<_> = (0..self.threads)
                .map(|_| scope.spawn(|| self.netns.run(worker)))
                .collect();
            for joined in threads {
                joined
                    .join()
                    .map_err(|_| "a client thread panicked")?
                    .map_err(|e| format!("entering the client namespace: {e}"))?;
            }
            Ok(())
        })?;
        let ended = Instant::now();
        check_interrupted()?;
        if let Some(failed) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(Box::new(failed));
        }
        Ok(Finished {
            results: results.into_inner().unwrap_or_else(|e| e.into_inner()),
            started,
            ended,
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
