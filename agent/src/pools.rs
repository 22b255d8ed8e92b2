//! Lanes for blocking work: each kind of blocking work (host collectors, auth-log scans, job
//! storage and audit writes) waits for a permit of its own lane before it takes a thread
//! of the runtime's blocking pool, so one kind can never hold every blocking thread.
//!
//! Eight concurrent full rescans of a large auth log take one blocking thread between
//! them, not all of them, and the cancel of a running job still gets its record written
//! and audited at once. The permits of all lanes together stay below the runtime's
//! blocking-thread limit (`MAX_BLOCKING_THREADS`), which leaves threads for the work that
//! uses the pool without a lane (tokio's file I/O for job output, the cleanup walker).
//! Waiting for a permit is asynchronous: a queued call parks no thread.
//!
//! Never run work here that waits on another lane: a lane's permit is held until the
//! closure returns.

use tokio::sync::Semaphore;
use tokio::task::JoinError;

/// Blocking threads the agent's runtime may start; more than all lanes' permits together.
pub const MAX_BLOCKING_THREADS: usize = 8;

/// A bounded share of the blocking pool for one kind of work.
#[derive(Debug)]
pub struct Lane {
    name: &'static str,
    permits: Semaphore,
}

/// /proc readers, statvfs and the snapshot build. Two, so that a stream and a unary
/// snapshot do not wait on each other.
pub static COLLECTORS: Lane = Lane::new("collectors", 2);
/// Auth-log scans. The log's state is behind one lock, so a second permit would only
/// park a second thread on that lock.
pub static AUTH_LOG: Lane = Lane::new("auth log", 1);
/// Job records, audit lines and job preparation: small, latency-sensitive writes.
pub static JOB_STORAGE: Lane = Lane::new("job storage", 2);

// The lanes must leave threads for the work without a lane.
const _: () = assert!(2 + 1 + 2 < MAX_BLOCKING_THREADS);

impl Lane {
    const fn new(name: &'static str, permits: usize) -> Lane {
        Lane { name, permits: Semaphore::const_new(permits) }
    }

    /// The lane's name, for messages.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs `f` on the blocking pool once a permit of this lane is free. The same result
    /// as `tokio::task::spawn_blocking(f).await`.
    pub async fn spawn<T, F>(&'static self, f: F) -> Result<T, JoinError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // The lanes are statics that are never closed, so acquire cannot fail; if it
        // ever did, running without a permit beats refusing the work.
        let permit = self.permits.acquire().await.ok();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
    }

    /// Permits free now (for tests and counters).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    static TEST_LANE: Lane = Lane::new("test", 1);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_lane_queues_its_own_work_and_leaves_other_lanes_alone() {
        tokio::time::timeout(Duration::from_secs(30), async {
            let (release, hold) = std::sync::mpsc::channel::<()>();
            let running = Arc::new(AtomicUsize::new(0));
            let r = running.clone();
            let first = tokio::spawn(TEST_LANE.spawn(move || {
                r.fetch_add(1, Ordering::SeqCst);
                let _ = hold.recv();
            }));
            // The first call holds the only permit and is running (the permit is taken
            // before the blocking thread starts the closure: wait for the closure itself)...
            while TEST_LANE.available() != 0 || running.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
            let r = running.clone();
            let second = tokio::spawn(TEST_LANE.spawn(move || r.fetch_add(1, Ordering::SeqCst)));
            // ...so work on another lane runs while the second call of this one waits.
            let other = JOB_STORAGE.spawn(|| 7).await.unwrap();
            assert_eq!(other, 7);
            assert_eq!(running.load(Ordering::SeqCst), 1, "the second call ran without a permit");
            release.send(()).unwrap();
            first.await.unwrap().unwrap();
            assert_eq!(second.await.unwrap().unwrap(), 1);
            assert_eq!(TEST_LANE.available(), 1);
        })
        .await
        .unwrap();
    }
}
