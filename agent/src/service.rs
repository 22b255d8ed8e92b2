//! The `ops.v1.Agent` gRPC service: checks the caller's role, runs the collectors off
//! the async threads, and maps errors to deliberate status codes.
//!
//! Read-only RPCs need any known role; changing the host needs `operator`. A caller
//! with no known role gets PERMISSION_DENIED, and the refusal is logged.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ops_proto::identity::{PeerIdentity, Role};
use ops_proto::tls::PeerInfo;
use ops_proto::v1::agent_server::Agent;
use ops_proto::v1::*;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::authlog::AuthLog;
use crate::collect::sampler::{self, Sampler, DEFAULT_CPU_WINDOW, STREAM_BUFFER};
pub use crate::collect::sampler::MIN_STREAM_INTERVAL;
use crate::collect::{self, top_n};
use crate::config::AgentConfig;
use crate::jobs::JobManager;
use crate::server::Stats;

/// The service state shared by all connections.
#[derive(Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
}

struct Inner {
    auth: Arc<Mutex<AuthLog>>,
    sampler: Sampler,
    instance: Arc<Mutex<Result<String, String>>>,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<bool>,
    jobs: Arc<JobManager>,
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
        let auth = AuthLog::new(cfg.auth_log.paths.clone(), cfg.auth_log.max_events);
        let jobs = JobManager::open(cfg.job_settings()).await.map_err(|e| format!("job engine: {e}"))?;
        Ok(AgentService {
            inner: Arc::new(Inner {
                auth: Arc::new(Mutex::new(auth)),
                sampler: Sampler::new(),
                instance,
                stats,
                shutdown,
                jobs,
            }),
        })
    }

    /// The job engine, for shutdown.
    pub fn jobs(&self) -> Arc<JobManager> {
        self.inner.jobs.clone()
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
        let mut info = crate::pools::COLLECTORS
            .spawn(collect::host_info)
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
        Ok(Response::new(self.inner.sampler.snapshot(top_n(r.top_n), interval).await?))
    }

    type StreamSnapshotsStream = ReceiverStream<Result<Snapshot, Status>>;

    async fn stream_snapshots(&self, req: Request<StreamSnapshotsRequest>) -> Result<Response<Self::StreamSnapshotsStream>, Status> {
        authorize(&req, Role::Viewer, "stream snapshots")?;
        let r = req.into_inner();
        let interval = Duration::from_millis(u64::from(r.interval_ms));
        if interval < MIN_STREAM_INTERVAL {
            return Err(Status::invalid_argument(format!("interval_ms = {}: the minimum is {}", r.interval_ms, MIN_STREAM_INTERVAL.as_millis())));
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stats = self.inner.stats.clone();
        let shutdown = self.inner.shutdown.clone();
        stats.active_streams.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            sampler::produce_snapshots(tx, interval, top_n(r.top_n), r.max_count, shutdown).await;
            stats.active_streams.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_auth_failures(&self, req: Request<AuthFailuresRequest>) -> Result<Response<AuthFailures>, Status> {
        authorize(&req, Role::Viewer, "read auth failures")?;
        let r = req.into_inner();
        let auth = self.inner.auth.clone();
        // One lane for every scan: eight callers rescanning a large log queue here without
        // parking a blocking thread each behind the log's lock.
        let out = crate::pools::AUTH_LOG
            .spawn(move || {
                let mut log = auth.lock().map_err(|_| Status::internal("auth log state poisoned by an earlier failure"))?;
                log.query(r.since_unix_ms, top_n(r.top_n), r.rescan).map_err(|e| Status::failed_precondition(e.to_string()))
            })
            .await
            .map_err(|e| Status::internal(format!("auth log task failed: {e}")))??;
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
        let limit = req.into_inner().limit as usize;
        Ok(Response::new(ListJobsResponse { jobs: self.inner.jobs.list(limit).await }))
    }

    type WatchJobStream = ReceiverStream<Result<JobEvent, Status>>;

    async fn watch_job(&self, req: Request<WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        authorize(&req, Role::Viewer, "watch jobs")?;
        let r = req.into_inner();
        Ok(Response::new(self.inner.jobs.watch(&r.job_id, r.from_offset)?))
    }

    async fn cancel_job(&self, req: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        let who = caller(&req)?;
        Ok(Response::new(self.inner.jobs.cancel(&req.into_inner().job_id, &who).await?))
    }
}

