//! The sampler: the CPU-baseline cache behind unary snapshots and the producer of snapshot
//! streams. Both take their samples on the collectors' lane of the blocking pool
//! (`crate::pools::COLLECTORS`), so a burst of snapshots cannot take the threads that
//! job storage and auth-log scans need.
//!
//! It keeps only a couple of raw samples (the baselines, and the newest sample streams
//! share) and never buffers more than STREAM_BUFFER snapshots for a stream; it never reads anything but what `collect` reads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ops_proto::v1::Snapshot;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::{NetView, RawSample};

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
async fn blocking<T, E, F>(f: F) -> Result<T, Status>
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
async fn shared_sample() -> Result<Arc<RawSample>, Status> {
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
fn net_view_still_fresh(age: Duration, interval: Duration) -> bool {
    age + interval / 2 < NET_REFRESH
}

/// The producer of one snapshot stream. Stops when the caller goes away (send fails or
/// the channel closes), after `max_count`, or on shutdown; never buffers more than
/// STREAM_BUFFER snapshots, and takes no sample while they wait unread.
pub async fn produce_snapshots(
    tx: mpsc::Sender<Result<Snapshot, Status>>,
    interval: Duration,
    top_n: usize,
    max_count: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut prev = match shared_sample().await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u32;
    let mut dropped = 0u64;
    let mut net: Option<(tokio::time::Instant, NetView)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tx.closed() => return,
            _ = shutdown.wait_for(|v| *v) => return,
        }
        // A caller that does not read gets no work done for it: with its buffer full the
        // tick is counted as dropped without reading /proc, so fifty never-reading
        // streams cost fifty sleeping tasks, not five hundred /proc walks a second and
        // the allocator churn that comes with them. The next snapshot it does read
        // measures CPU over the longer window since the last sample (cpu_window_ms).
        if tx.capacity() == 0 {
            dropped += 1;
            continue;
        }
        let cur = match shared_sample().await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let (p, c) = (prev.clone(), cur.clone());
        // Refresh when the cached view would be a second old by the next tick's midpoint.
        let reuse = net
            .as_ref()
            .filter(|(at, _)| net_view_still_fresh(at.elapsed(), interval))
            .map(|(_, view)| view.clone());
        let fresh = reuse.is_none();
        let snap = blocking(move || super::build_snapshot_with(&p, &c, top_n, reuse)).await;
        if let (true, Ok(s)) = (fresh, &snap) {
            net = Some((tokio::time::Instant::now(), NetView::of(s)));
        }
        prev = cur;
        let snap = snap.map(|mut s| {
            s.dropped_snapshots = dropped;
            s
        });
        match tx.try_send(snap) {
            Ok(()) => sent += 1,
            Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
        if max_count > 0 && sent >= max_count {
            return;
        }
    }
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

    #[tokio::test]
    async fn a_consumer_that_stops_reading_gets_drops_counted_not_buffered() {
        let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
        let (_stop, shutdown) = watch::channel(false);
        let producer = tokio::spawn(produce_snapshots(tx, MIN_STREAM_INTERVAL, 1, 0, shutdown));
        // Read nothing while about ten snapshots are produced: only STREAM_BUFFER can wait.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut queued = 0;
        while let Ok(s) = rx.try_recv() {
            s.unwrap();
            queued += 1;
        }
        assert_eq!(queued, STREAM_BUFFER);
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap().unwrap();
        assert!(next.dropped_snapshots >= 3, "dropped {}", next.dropped_snapshots);
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), producer).await.unwrap().unwrap();
    }
}
