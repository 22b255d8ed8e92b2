//! The `ops.v1.Agent` gRPC service: checks the caller's role, runs the collectors off
//! the async threads, and maps errors to deliberate status codes.
//!
//! Read-only RPCs need any known role; changing the host needs `operator`. A caller
//! with no known role gets PERMISSION_DENIED, and the refusal is logged. Snapshot
//! streams and job watches each hold a permit of a global limit while open; one over the
//! limit gets RESOURCE_EXHAUSTED naming the config key.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ops_proto::identity::{PeerIdentity, Role};
use ops_proto::tls::PeerInfo;
use ops_proto::v1::agent_server::Agent;
use ops_proto::v1::*;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::authlog::sources::AuthSources;
use crate::authlog::AuthLogError;
use crate::collect::{self, RawSample};
use crate::config::AgentConfig;
use crate::jobs::JobManager;
use crate::metrics::{Gauge, Held, Limit};
use crate::server::Stats;

/// Snapshots buffered per stream; when the caller reads slower, samples are dropped and counted.
const STREAM_BUFFER: usize = 4;
/// Shortest stream interval.
pub const MIN_STREAM_INTERVAL: Duration = Duration::from_millis(100);
/// A CPU baseline must be at least this old to measure against...
const MIN_CPU_WINDOW: Duration = Duration::from_millis(100);
/// ...and at most this old, or the figures would describe the past.
const MAX_CPU_WINDOW: Duration = Duration::from_secs(10);
/// CPU window when no baseline is available and the caller did not choose one.
const DEFAULT_CPU_WINDOW: Duration = Duration::from_millis(250);
/// How long a stream reuses its connection counts and listening sockets: reading the
/// kernel's socket tables is most of a snapshot's cost, and a 10 Hz incident view must
/// not add 10 table walks a second to a struggling host.
const NET_REFRESH: Duration = Duration::from_secs(1);
/// Baselines kept for the unary snapshot.
const BASELINES: usize = 2;
const DEFAULT_TOP_N: usize = 10;
/// Upper bound on processes per list, whatever the caller asks.
const MAX_TOP_N: usize = 500;

/// The service state shared by all connections.
#[derive(Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
}

struct Inner {
    auth: AuthSources,
    baselines: Mutex<Vec<Arc<RawSample>>>,
    instance: Arc<Mutex<Result<String, String>>>,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<bool>,
    jobs: Arc<JobManager>,
    snapshot_streams: Arc<Semaphore>,
    job_watches: Arc<Semaphore>,
    limits: crate::config::LimitsConfig,
    started: std::time::Instant,
}

impl AgentService {
    /// Builds the service; starts the one-off instance metadata lookup in the background.
    pub async fn new(cfg: &AgentConfig, stats: Arc<Stats>, shutdown: watch::Receiver<bool>) -> Result<AgentService, String> {
        let instance = Arc::new(Mutex::new(Err("instance metadata lookup still in progress".to_string())));
        if cfg.metadata.enabled {
            let slot = instance.clone();
            let (url, timeout) = (cfg.metadata.url.clone(), cfg.metadata_timeout());
            tokio::spawn(async move {
                let r = crate::imds::instance_id(&url, timeout).await;
                if let Err(e) = &r {
                    tracing::info!("no EC2 instance id: {e}");
                }
                if let Ok(mut g) = slot.lock() {
                    *g = r;
                }
            });
        } else if let Ok(mut g) = instance.lock() {
            *g = Err("instance metadata lookup disabled in the agent's config".into());
        }
        let auth = AuthSources::from_config(&cfg.auth_log, &cfg.state_dir);
        let jobs = JobManager::open(cfg.job_settings()).await.map_err(|e| format!("job engine: {e}"))?;
        Ok(AgentService {
            inner: Arc::new(Inner {
                auth,
                baselines: Mutex::new(Vec::new()),
                instance,
                stats,
                shutdown,
                jobs,
                snapshot_streams: Arc::new(Semaphore::new(cfg.limits.max_snapshot_streams)),
                job_watches: Arc::new(Semaphore::new(cfg.limits.max_job_watches)),
                limits: cfg.limits.clone(),
                started: std::time::Instant::now(),
            }),
        })
    }

    /// A permit of a stream limit, or RESOURCE_EXHAUSTED naming the limit and its value.
    fn permit(&self, limit: Limit) -> Result<OwnedSemaphorePermit, Status> {
        let (sem, max, what) = match limit {
            Limit::JobWatches => (&self.inner.job_watches, self.inner.limits.max_job_watches, "job watches"),
            _ => (&self.inner.snapshot_streams, self.inner.limits.max_snapshot_streams, "snapshot streams"),
        };
        sem.clone().try_acquire_owned().map_err(|_| {
            self.inner.stats.metrics.hit(limit);
            Status::resource_exhausted(format!(
                "{max} {what} are already open on this agent ({} = {max}); close one or raise the limit",
                limit.key()
            ))
        })
    }

    /// The job engine, for shutdown.
    pub fn jobs(&self) -> Arc<JobManager> {
        self.inner.jobs.clone()
    }

    /// A snapshot measured against a recent baseline when there is one, else over a
    /// fresh window of `interval`.
    async fn snapshot(&self, top_n: usize, interval: Duration) -> Result<Snapshot, Status> {
        let baseline = self.pick_baseline();
        let (prev, cur) = match baseline {
            Some(prev) => (prev, Arc::new(blocking(collect::sample).await?)),
            None => {
                let first = Arc::new(blocking(collect::sample).await?);
                tokio::time::sleep(interval).await;
                let cur = Arc::new(blocking(collect::sample).await?);
                self.remember(first.clone());
                (first, cur)
            }
        };
        self.remember(cur.clone());
        let (p, c) = (prev.clone(), cur.clone());
        blocking(move || collect::build_snapshot(&p, &c, top_n)).await
    }

    /// The newest baseline old enough to measure against.
    fn pick_baseline(&self) -> Option<Arc<RawSample>> {
        let g = self.inner.baselines.lock().ok()?;
        g.iter()
            .rev()
            .find(|s| s.age() >= MIN_CPU_WINDOW && s.age() <= MAX_CPU_WINDOW)
            .cloned()
    }

    /// Keeps a sample as a future baseline if it is spaced from the newest one, so that
    /// back-to-back calls always find a baseline of at least MIN_CPU_WINDOW.
    fn remember(&self, s: Arc<RawSample>) {
        if let Ok(mut g) = self.inner.baselines.lock() {
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

/// Runs blocking collection work off the async threads.
async fn blocking<T, E, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Status::internal(e.to_string())),
        Err(e) => Err(Status::internal(format!("collector task failed: {e}"))),
    }
}

/// The verified caller of a request.
pub fn caller<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    req.extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.identity.clone())
        .ok_or_else(|| Status::unauthenticated("no verified client certificate on this connection"))
}

/// The caller, if its role allows at least `needed`.
pub fn authorize<T>(req: &Request<T>, needed: Role, what: &str) -> Result<PeerIdentity, Status> {
    let who = caller(req)?;
    let allowed = matches!((who.role, needed), (Some(Role::Operator), _) | (Some(Role::Viewer), Role::Viewer));
    if allowed {
        Ok(who)
    } else {
        tracing::warn!("permission denied: {} may not {what}", who.describe());
        Err(Status::permission_denied(format!(
            "certificate {:?} has role {:?}; {what} needs the {needed} role",
            who.name,
            if who.role_claim.is_empty() { "none" } else { &who.role_claim }
        )))
    }
}

fn top_n(n: u32) -> usize {
    if n == 0 {
        DEFAULT_TOP_N
    } else {
        (n as usize).min(MAX_TOP_N)
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn get_host_info(&self, req: Request<HostInfoRequest>) -> Result<Response<HostInfo>, Status> {
        let who = authorize(&req, Role::Viewer, "read host info")?;
        let mut info = tokio::task::spawn_blocking(collect::host_info)
            .await
            .map_err(|e| Status::internal(format!("host info task failed: {e}")))?;
        match self.inner.instance.lock().map(|g| g.clone()) {
            Ok(Ok(id)) => info.instance_id = id,
            Ok(Err(why)) => info.instance_id_error = why,
            Err(_) => info.instance_id_error = "instance id unavailable".into(),
        }
        info.caller_identity = who.name;
        info.caller_role = who.role_claim;
        Ok(Response::new(info))
    }

    async fn get_snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<Snapshot>, Status> {
        authorize(&req, Role::Viewer, "read snapshots")?;
        let r = req.into_inner();
        let interval = match r.cpu_interval_ms {
            0 => DEFAULT_CPU_WINDOW,
            ms if ms < 50 => return Err(Status::invalid_argument(format!("cpu_interval_ms = {ms}: the minimum is 50"))),
            ms => Duration::from_millis(u64::from(ms.min(60_000))),
        };
        Ok(Response::new(self.snapshot(top_n(r.top_n), interval).await?))
    }

    type StreamSnapshotsStream = Held<ReceiverStream<Result<Snapshot, Status>>>;

    async fn stream_snapshots(&self, req: Request<StreamSnapshotsRequest>) -> Result<Response<Self::StreamSnapshotsStream>, Status> {
        authorize(&req, Role::Viewer, "stream snapshots")?;
        let r = req.into_inner();
        let interval = Duration::from_millis(u64::from(r.interval_ms));
        if interval < MIN_STREAM_INTERVAL {
            return Err(Status::invalid_argument(format!("interval_ms = {}: the minimum is {}", r.interval_ms, MIN_STREAM_INTERVAL.as_millis())));
        }
        let permit = self.permit(Limit::SnapshotStreams)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stats = self.inner.stats.clone();
        let shutdown = self.inner.shutdown.clone();
        stats.active_streams.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            produce_snapshots(tx, interval, top_n(r.top_n), r.max_count, shutdown).await;
            stats.active_streams.fetch_sub(1, Ordering::SeqCst);
        });
        let metrics = self.inner.stats.metrics.clone();
        Ok(Response::new(Held::new(ReceiverStream::new(rx), metrics, Gauge::SnapshotStreams, permit)))
    }

    async fn get_auth_failures(&self, req: Request<AuthFailuresRequest>) -> Result<Response<AuthFailures>, Status> {
        authorize(&req, Role::Viewer, "read auth failures")?;
        let r = req.into_inner();
        let out = self.inner.auth.query(r.since_unix_ms, top_n(r.top_n), r.rescan).await.map_err(|e| match e {
            AuthLogError::Task(_) => Status::internal(e.to_string()),
            _ => Status::failed_precondition(e.to_string()),
        })?;
        Ok(Response::new(out))
    }

    async fn start_job(&self, req: Request<StartJobRequest>) -> Result<Response<Job>, Status> {
        // The job engine checks the role itself so that a refusal is audited too.
        let who = caller(&req)?;
        Ok(Response::new(self.inner.jobs.start(req.into_inner(), &who).await?))
    }

    async fn get_job(&self, req: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        authorize(&req, Role::Viewer, "read jobs")?;
        Ok(Response::new(self.inner.jobs.get(&req.into_inner().job_id).await?))
    }

    async fn list_jobs(&self, req: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        authorize(&req, Role::Viewer, "list jobs")?;
        let r = req.into_inner();
        let size = if r.page_size == 0 { r.limit } else { r.page_size } as usize;
        let (jobs, next_page_token) = self.inner.jobs.list_page(size, &r.page_token).await?;
        Ok(Response::new(ListJobsResponse { jobs, next_page_token }))
    }

    type WatchJobStream = Held<ReceiverStream<Result<JobEvent, Status>>>;

    async fn watch_job(&self, req: Request<WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        authorize(&req, Role::Viewer, "watch jobs")?;
        let r = req.into_inner();
        let permit = self.permit(Limit::JobWatches)?;
        let events = self.inner.jobs.watch(&r.job_id, r.from_offset)?;
        let metrics = self.inner.stats.metrics.clone();
        Ok(Response::new(Held::new(events, metrics, Gauge::JobWatches, permit)))
    }

    async fn cancel_job(&self, req: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        let who = caller(&req)?;
        Ok(Response::new(self.inner.jobs.cancel(&req.into_inner().job_id, &who).await?))
    }

    async fn get_agent_stats(&self, req: Request<AgentStatsRequest>) -> Result<Response<AgentStats>, Status> {
        authorize(&req, Role::Viewer, "read agent stats")?;
        let mut stats = self.inner.stats.metrics.to_proto();
        let mut by_state = std::collections::BTreeMap::<i32, u64>::new();
        for job in self.inner.jobs.list(usize::MAX).await {
            *by_state.entry(job.state).or_default() += 1;
        }
        stats.jobs_by_state = by_state.into_iter().map(|(state, count)| JobStateCount { state, count }).collect();
        stats.uptime_seconds = self.inner.started.elapsed().as_secs();
        Ok(Response::new(stats))
    }
}

/// Whether a stream may reuse socket tables read `age` ago: only while they would still
/// be under NET_REFRESH old halfway to the next tick, so a 1 Hz stream always reads fresh.
fn net_view_still_fresh(age: Duration, interval: Duration) -> bool {
    age + interval / 2 < NET_REFRESH
}

/// The producer of one snapshot stream. Stops when the caller goes away (send fails or
/// the channel closes), after `max_count`, or on shutdown; never buffers more than
/// STREAM_BUFFER snapshots.
async fn produce_snapshots(
    tx: mpsc::Sender<Result<Snapshot, Status>>,
    interval: Duration,
    top_n: usize,
    max_count: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut prev = match blocking(collect::sample).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u32;
    let mut dropped = 0u64;
    let mut net: Option<(tokio::time::Instant, collect::NetView)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tx.closed() => return,
            _ = shutdown.wait_for(|v| *v) => return,
        }
        let cur = match blocking(collect::sample).await {
            Ok(s) => Arc::new(s),
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
        let snap = blocking(move || collect::build_snapshot_with(&p, &c, top_n, reuse)).await;
        if let (true, Ok(s)) = (fresh, &snap) {
            net = Some((tokio::time::Instant::now(), collect::NetView::of(s)));
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
