//! The agent's own counters (handshakes refused, streams open, samples dropped, limits
//! hit), the rate limiter that keeps repeated warnings from flooding the journal, and the
//! permit-holding stream wrapper that keeps the open-stream gauges honest.
//!
//! Counters are plain atomics, written on hot paths without locks; this module must never
//! block, allocate per event, or log unboundedly.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use ops_proto::v1::{AgentStats, LimitHit, Snapshot};
use tokio::sync::OwnedSemaphorePermit;

/// The agent's counters as one shared value: the listener and the service both write
/// here, so it lives beside them rather than in either (which would make them import
/// each other).
#[derive(Debug, Default)]
pub struct Stats {
    /// Snapshot streams whose producer task is alive.
    pub active_streams: AtomicUsize,
    /// Connections refused during the TLS handshake.
    pub refused_handshakes: AtomicU64,
    /// Successful certificate reloads.
    pub tls_reloads: AtomicU64,
    /// The counters served by GetAgentStats.
    pub metrics: Arc<Metrics>,
}

/// Counters since start (`_total`-like) and gauges (current values).
#[derive(Debug, Default)]
pub struct Metrics {
    pub handshakes_refused: AtomicU64,
    pub handshakes_timed_out: AtomicU64,
    pub handshakes_evicted: AtomicU64,
    pub handshakes_pending: AtomicU64,
    pub snapshot_streams_open: AtomicU64,
    pub job_watches_open: AtomicU64,
    pub samples_dropped: AtomicU64,
    pub warnings_suppressed: AtomicU64,
    /// Hits of each limit, indexed by [`Limit`].
    limit_hits: [AtomicU64; Limit::ALL.len()],
}

/// The limits whose refusals are counted; the name is the config key an operator changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    PendingHandshakes,
    PendingHandshakesPerSource,
    HandshakeTimeout,
    SnapshotStreams,
    JobWatches,
}

impl Limit {
    pub const ALL: [Limit; 5] = [
        Limit::PendingHandshakes,
        Limit::PendingHandshakesPerSource,
        Limit::HandshakeTimeout,
        Limit::SnapshotStreams,
        Limit::JobWatches,
    ];

    /// The config key of the limit, as it appears in refusals and stats.
    pub fn key(self) -> &'static str {
        match self {
            Limit::PendingHandshakes => "limits.max_pending_handshakes",
            Limit::PendingHandshakesPerSource => "limits.max_pending_handshakes_per_source",
            Limit::HandshakeTimeout => "limits.handshake_timeout_ms",
            Limit::SnapshotStreams => "limits.max_snapshot_streams",
            Limit::JobWatches => "limits.max_job_watches",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl Metrics {
    pub fn hit(&self, limit: Limit) {
        self.limit_hits[limit.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn hits(&self, limit: Limit) -> u64 {
        self.limit_hits[limit.index()].load(Ordering::Relaxed)
    }

    /// The wire form, without the job counts and uptime (the service adds those).
    pub fn to_proto(&self) -> AgentStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AgentStats {
            handshakes_refused: get(&self.handshakes_refused),
            handshakes_timed_out: get(&self.handshakes_timed_out),
            handshakes_evicted: get(&self.handshakes_evicted),
            handshakes_pending: get(&self.handshakes_pending),
            snapshot_streams_open: get(&self.snapshot_streams_open),
            job_watches_open: get(&self.job_watches_open),
            samples_dropped: get(&self.samples_dropped),
            warnings_suppressed: get(&self.warnings_suppressed),
            limits_hit: Limit::ALL
                .iter()
                .map(|l| LimitHit { limit: l.key().to_string(), hits: self.hits(*l) })
                .collect(),
            ..AgentStats::default()
        }
    }
}

/// Which gauge a [`Held`] stream keeps raised while it is open.
#[derive(Debug, Clone, Copy)]
pub enum Gauge {
    SnapshotStreams,
    JobWatches,
}

/// A response stream holding a permit of its limit: the permit (and the open gauge) are
/// released when the stream is dropped, which is when the caller goes away or the stream
/// ends. Snapshot streams also add each snapshot's newly dropped samples to the counter.
pub struct Held<S> {
    inner: S,
    metrics: Arc<Metrics>,
    gauge: Gauge,
    _permit: OwnedSemaphorePermit,
    dropped_seen: u64,
}

impl<S> Held<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>, gauge: Gauge, permit: OwnedSemaphorePermit) -> Held<S> {
        metrics.gauge(gauge).fetch_add(1, Ordering::Relaxed);
        Held { inner, metrics, gauge, _permit: permit, dropped_seen: 0 }
    }
}

impl Metrics {
    fn gauge(&self, g: Gauge) -> &AtomicU64 {
        match g {
            Gauge::SnapshotStreams => &self.snapshot_streams_open,
            Gauge::JobWatches => &self.job_watches_open,
        }
    }
}

impl<S> Drop for Held<S> {
    fn drop(&mut self) {
        self.metrics.gauge(self.gauge).fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a stream item may report as dropped so far (cumulative per stream).
pub trait DropCount {
    fn dropped_so_far(&self) -> u64;
}

impl DropCount for Snapshot {
    fn dropped_so_far(&self) -> u64 {
        self.dropped_snapshots
    }
}

impl DropCount for ops_proto::v1::JobEvent {
    fn dropped_so_far(&self) -> u64 {
        0
    }
}

impl<S, T, E> Stream for Held<S>
where
    S: Stream<Item = Result<T, E>> + Unpin,
    T: DropCount,
{
    type Item = Result<T, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(v))) = &item {
            let total = v.dropped_so_far();
            if total > self.dropped_seen {
                self.metrics.samples_dropped.fetch_add(total - self.dropped_seen, Ordering::Relaxed);
                self.dropped_seen = total;
            }
        }
        item
    }
}

/// How long one window of the warning limiter lasts.
pub const WARN_WINDOW: Duration = Duration::from_secs(60);
/// Distinct warning kinds tracked; more kinds share one overflow slot so that an attacker
/// cannot grow the table.
const WARN_KINDS: usize = 64;

/// Rate-limits warnings per kind: at most `per_window` in each window; the rest are
/// counted, and the first warning of the next window says how many were held back.
#[derive(Debug)]
pub struct WarnLimiter {
    per_window: u32,
    window: Duration,
    kinds: Mutex<HashMap<&'static str, WarnWindow>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy)]
struct WarnWindow {
    started: Instant,
    written: u32,
    suppressed: u64,
}

/// What the limiter decided about one warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed_before` earlier ones of this kind were held back.
    Write { suppressed_before: u64 },
    /// Hold it back (counted).
    Suppress,
}

impl WarnLimiter {
    pub fn new(per_window: u32, window: Duration, metrics: Arc<Metrics>) -> WarnLimiter {
        WarnLimiter { per_window: per_window.max(1), window, kinds: Mutex::new(HashMap::new()), metrics }
    }

    /// Decides about a warning of `kind` at `now` (a parameter so tests need no clock).
    pub fn check_at(&self, kind: &'static str, now: Instant) -> Verdict {
        let Ok(mut kinds) = self.kinds.lock() else { return Verdict::Write { suppressed_before: 0 } };
        let key = if kinds.len() >= WARN_KINDS && !kinds.contains_key(kind) { "other" } else { kind };
        let w = kinds.entry(key).or_insert(WarnWindow { started: now, written: 0, suppressed: 0 });
        let mut carried = 0;
        if now.saturating_duration_since(w.started) >= self.window {
            carried = w.suppressed;
            *w = WarnWindow { started: now, written: 0, suppressed: 0 };
        }
        if w.written < self.per_window {
            w.written += 1;
            Verdict::Write { suppressed_before: carried }
        } else {
            w.suppressed += 1;
            self.metrics.warnings_suppressed.fetch_add(1, Ordering::Relaxed);
            Verdict::Suppress
        }
    }

    /// Writes `msg` as a warning unless too many of `kind` were written this window.
    pub fn warn(&self, kind: &'static str, msg: impl FnOnce() -> String) {
        match self.check_at(kind, Instant::now()) {
            Verdict::Write { suppressed_before: 0 } => tracing::warn!("{}", msg()),
            Verdict::Write { suppressed_before: n } => {
                tracing::warn!("{} ({n} more like it suppressed in the last {} s)", msg(), self.window.as_secs())
            }
            Verdict::Suppress => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_flood_writes_the_quota_then_counts_and_reports_the_rest() {
        let metrics = Arc::new(Metrics::default());
        let lim = WarnLimiter::new(3, Duration::from_secs(60), metrics.clone());
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..1000).map(|i| lim.check_at("refused", t0 + Duration::from_millis(i))).collect();
        assert_eq!(verdicts.iter().filter(|v| matches!(v, Verdict::Write { .. })).count(), 3);
        assert_eq!(metrics.warnings_suppressed.load(Ordering::Relaxed), 997);
        // Another kind has its own quota.
        assert_eq!(lim.check_at("timed out", t0), Verdict::Write { suppressed_before: 0 });
        // The next window's first warning carries the count, once.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(lim.check_at("refused", later), Verdict::Write { suppressed_before: 997 });
        assert_eq!(lim.check_at("refused", later), Verdict::Write { suppressed_before: 0 });
    }

    #[test]
    fn warning_kinds_beyond_the_table_share_one_slot() {
        let lim = WarnLimiter::new(1, Duration::from_secs(60), Arc::new(Metrics::default()));
        let t0 = Instant::now();
        let names: Vec<&'static str> =
            (0..WARN_KINDS + 10).map(|i| &*Box::leak(format!("k{i}").into_boxed_str())).collect();
        for n in &names {
            lim.check_at(n, t0);
        }
        assert_eq!(lim.kinds.lock().unwrap().len(), WARN_KINDS + 1);
    }

    #[test]
    fn stats_name_every_limit_by_its_config_key() {
        let m = Metrics::default();
        m.hit(Limit::SnapshotStreams);
        m.hit(Limit::SnapshotStreams);
        let s = m.to_proto();
        let hit = s.limits_hit.iter().find(|h| h.limit == "limits.max_snapshot_streams").unwrap();
        assert_eq!(hit.hits, 2);
        assert_eq!(s.limits_hit.len(), Limit::ALL.len());
    }
}
