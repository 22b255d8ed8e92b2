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
use crate::collect::sampler::{Sampler, DEFAULT_CPU_WINDOW, STREAM_BUFFER};
use crate::collect::streams::StreamHub;
pub use crate::collect::sampler::MIN_STREAM_INTERVAL;
use crate::collect::{self, top_n};
use crate::config::AgentConfig;
use crate::jobs::JobManager;
use crate::metrics::{Gauge, Held, Limit, Stats};

/// The service state shared by all connections.
#[derive(Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
}

struct Inner {
    auth: AuthSources,
    sampler: Sampler,
    streams: StreamHub,
    instance: Arc<Mutex<Result<String, String>>>,
    stats: Arc<Stats>,
    jobs: Arc<JobManager>,
    snapshot_streams: Arc<Semaphore>,
    job_watches: Arc<Semaphore>,
    limits: crate::config::LimitsConfig,
    started: std::time::Instant,
    /// This agent's certificate, for the expiry and serial host info reports.
    cert_path: std::path::PathBuf,
    /// The only places `ProbeTarget` connects to.
    probe_targets: Vec<crate::probe::ProbeTarget>,
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
                sampler: Sampler::new(),
                streams: StreamHub::new(shutdown),
                instance,
                stats,
                jobs,
                snapshot_streams: Arc::new(Semaphore::new(cfg.limits.max_snapshot_streams)),
                job_watches: Arc::new(Semaphore::new(cfg.limits.max_job_watches)),
                limits: cfg.limits.clone(),
                started: std::time::Instant::now(),
                cert_path: cfg.tls.cert.clone(),
                probe_targets: cfg.probe_targets.clone(),
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
}

/// Counts a snapshot stream as ended when the hub lets it go.
struct StreamEnded(Arc<Stats>);

impl Drop for StreamEnded {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::SeqCst);
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


#[tonic::async_trait]
impl Agent for AgentService {
    async fn get_host_info(&self, req: Request<HostInfoRequest>) -> Result<Response<HostInfo>, Status> {
        let who = authorize(&req, Role::Viewer, "read host info")?;
        let cert = self.inner.cert_path.clone();
        let (mut info, cert_facts) = crate::pools::COLLECTORS
            .spawn(move || (collect::host_info(), crate::enrol::certificate_facts(&cert)))
            .await
            .map_err(|e| Status::internal(format!("host info task failed: {e}")))?;
        match self.inner.instance.lock().map(|g| g.clone()) {
            Ok(Ok(id)) => info.instance_id = id,
            Ok(Err(why)) => info.instance_id_error = why,
            Err(_) => info.instance_id_error = "instance id unavailable".into(),
        }
        info.caller_identity = who.name;
        info.caller_role = who.role_claim;
        if let Some((serial, not_after)) = cert_facts {
            info.certificate_serial = serial;
            info.certificate_not_after_unix_ms = not_after;
        }
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
        Ok(Response::new(self.inner.sampler.snapshot(top_n(r.top_n), interval).await?))
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
        stats.active_streams.fetch_add(1, Ordering::SeqCst);
        self.inner.streams.subscribe(tx, interval, top_n(r.top_n), r.max_count, Box::new(StreamEnded(stats)));
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

    async fn probe_target(&self, req: Request<ProbeTargetRequest>) -> Result<Response<ProbeTargetResult>, Status> {
        authorize(&req, Role::Viewer, "probe a target")?;
        let name = req.into_inner().name;
        let Some(t) = self.inner.probe_targets.iter().find(|t| t.name == name) else {
            let known: Vec<&str> = self.inner.probe_targets.iter().map(|t| t.name.as_str()).collect();
            return Err(Status::not_found(format!(
                "no probe target {name:?} in this agent's config (configured: {}); the agent connects only to [[probe_targets]]",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        };
        let f = crate::probe::probe(t).await;
        Ok(Response::new(ProbeTargetResult {
            name: t.name.clone(),
            address: t.address.clone(),
            outcome: f.outcome.to_string(),
            detail: f.detail,
            connect_ms: f.connect_ms,
        }))
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

