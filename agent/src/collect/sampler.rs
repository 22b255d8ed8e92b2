//! The sampler: the CPU-baseline cache behind unary snapshots, and the shared newest
//! sample that snapshot streams (`streams`) measure against. Both take their samples on the collectors' lane of the blocking pool
//! (`crate::pools::COLLECTORS`), so a burst of snapshots cannot take the threads that
//! job storage and auth-log scans need.
//!
//! It keeps only a couple of raw samples (the baselines, and the newest sample streams
//! share) and never buffers more than STREAM_BUFFER snapshots for a stream; it never reads anything but what `collect` reads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ops_proto::v1::Snapshot;
use tonic::Status;

use super::RawSample;

/// Snapshots buffered per stream; when the caller reads slower, samples are dropped and
/// counted. One waiting snapshot is enough for a reader that keeps up (the next tick is
/// 100 ms or more away, and the HTTP/2 layer holds the one being sent); each extra one is
/// a decoded snapshot held per stream, which fifty never-reading streams multiply (4 per
/// stream measured 20.1 MB under the hostile-load bench, 2 measured 16.8 MB).
pub const STREAM_BUFFER: usize = 1;
/// Shortest stream interval.
pub const MIN_STREAM_INTERVAL: Duration = Duration::from_millis(100);
/// A CPU baseline must be at least this old to measure against...
const MIN_CPU_WINDOW: Duration = Duration::from_millis(100);
/// ...and at most this old, or the figures would describe the past.
const MAX_CPU_WINDOW: Duration = Duration::from_secs(10);
/// CPU window when no baseline is available and the caller did not choose one.
pub const DEFAULT_CPU_WINDOW: Duration = Duration::from_millis(250);
/// How long a stream reuses its connection counts and listening sockets: reading the
/// kernel's socket tables is most of a snapshot's cost, and a 10 Hz incident view must
/// not add 10 table walks a second to a struggling host.
const NET_REFRESH: Duration = Duration::from_secs(1);
/// Baselines kept for the unary snapshot.
const BASELINES: usize = 2;

/// The CPU-baseline cache shared by all unary snapshot calls.
#[derive(Default)]
pub struct Sampler {
    baselines: Mutex<Vec<Arc<RawSample>>>,
}

impl Sampler {
    pub fn new() -> Sampler {
        Sampler::default()
    }

    /// A snapshot measured against a recent baseline when there is one, else over a
    /// fresh window of `interval`.
    pub async fn snapshot(&self, top_n: usize, interval: Duration) -> Result<Snapshot, Status> {
        let baseline = self.pick_baseline();
        let (prev, cur) = match baseline {
            Some(prev) => (prev, Arc::new(blocking(super::sample).await?)),
            None => {
                let first = Arc::new(blocking(super::sample).await?);
                tokio::time::sleep(interval).await;
                let cur = Arc::new(blocking(super::sample).await?);
                self.remember(first.clone());
                (first, cur)
            }
        };
        self.remember(cur.clone());
        let (p, c) = (prev.clone(), cur.clone());
        blocking(move || super::build_snapshot(&p, &c, top_n)).await
    }

    /// The newest baseline old enough to measure against.
    fn pick_baseline(&self) -> Option<Arc<RawSample>> {
        let g = self.baselines.lock().ok()?;
        g.iter()
            .rev()
            .find(|s| s.age() >= MIN_CPU_WINDOW && s.age() <= MAX_CPU_WINDOW)
            .cloned()
    }

    /// Keeps a sample as a future baseline if it is spaced from the newest one, so that
    /// back-to-back calls always find a baseline of at least MIN_CPU_WINDOW.
    fn remember(&self, s: Arc<RawSample>) {
        if let Ok(mut g) = self.baselines.lock() {
            g.retain(|b| b.age() <= MAX_CPU_WINDOW);
            let spaced = g.last().is_none_or(|last| last.age() >= MIN_CPU_WINDOW + s.age());
            if spaced {
                g.push(s);
                if g.len() > BASELINES {
                    g.remove(0);
                }
            }
        }
    }
}

/// Runs blocking collection work on the collectors' lane.
pub(super) async fn blocking<T, E, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match crate::pools::COLLECTORS.spawn(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Status::internal(e.to_string())),
        Err(e) => Err(Status::internal(format!("collector task failed: {e}"))),
    }
}

/// The newest sample a stream took. Streams whose ticks fall within SHARED_SAMPLE_AGE of
/// each other read /proc once between them: fifty streams at 100 ms cost one process walk
/// per 50 ms, not five hundred a second, and hold the same sample instead of fifty copies.
static LATEST_SAMPLE: Mutex<Option<Arc<RawSample>>> = Mutex::new(None);
/// Under half the shortest stream interval, so that a stream never gets the same sample
/// as its previous one.
const SHARED_SAMPLE_AGE: Duration = Duration::from_millis(40);
const _: () = assert!(2 * SHARED_SAMPLE_AGE.as_millis() < MIN_STREAM_INTERVAL.as_millis());

/// A sample at most SHARED_SAMPLE_AGE old: the one another stream just took, or a new one.
pub(super) async fn shared_sample() -> Result<Arc<RawSample>, Status> {
    let recent = LATEST_SAMPLE.lock().ok().and_then(|g| g.clone()).filter(|s| s.age() < SHARED_SAMPLE_AGE);
    if let Some(sample) = recent {
        return Ok(sample);
    }
    let sample = Arc::new(blocking(super::sample).await?);
    if let Ok(mut g) = LATEST_SAMPLE.lock() {
        *g = Some(sample.clone());
    }
    Ok(sample)
}

/// Whether a stream may reuse socket tables read `age` ago: only while they would still
/// be under NET_REFRESH old halfway to the next tick, so a 1 Hz stream always reads fresh.
pub(super) fn net_view_still_fresh(age: Duration, interval: Duration) -> bool {
    age + interval / 2 < NET_REFRESH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_streams_reuse_socket_tables_for_under_a_second_and_slow_ones_never() {
        let ms = Duration::from_millis;
        assert!(net_view_still_fresh(ms(100), ms(100)));
        assert!(net_view_still_fresh(ms(900), ms(100)));
        assert!(!net_view_still_fresh(ms(950), ms(100)));
        // At 1 Hz or slower every snapshot reads the tables.
        assert!(!net_view_still_fresh(ms(1000), ms(1000)));
        assert!(!net_view_still_fresh(ms(500), ms(1000)));
    }
}
