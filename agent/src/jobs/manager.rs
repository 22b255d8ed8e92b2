//! `JobManager`: the job engine's front door (start, get, list, watch, cancel,
//! shutdown). It checks the caller's role, audits, and admits jobs into the registry;
//! the detached task (`task.rs`) does the rest.

use std::sync::Arc;
use std::time::Duration;

use ops_proto::identity::PeerIdentity;
use ops_proto::v1::{Job, JobEvent, JobState, StartJobRequest};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use super::config::JobSettings;
use super::kinds;
use super::output::Progress;
use super::registry::{live, new_job_id, now_ms, Entry, Shared};
use super::runner::StopReason;
use super::spec::{is_finished, kind_name, spec_json, state_name};
use super::{limits, task, watch as watcher, JobError, DEFAULT_LIST_LIMIT, MAX_LIST_PAGE, MAX_LIST_PAGE_BYTES};

/// Extra time, beyond the kill grace period, that cancel and shutdown wait for a job to end.
const END_WAIT_SLACK: Duration = Duration::from_secs(5);

/// Runs and remembers jobs. Cheap to share: hand out the `Arc`.
pub struct JobManager {
    shared: Arc<Shared>,
}

fn may_change_hosts(caller: &PeerIdentity) -> bool {
    caller.role.is_some_and(|r| r.may_change_hosts())
}

/// What the slot decision under the lock came to.
enum Admission {
    Existing(Job),
    Conflict {
        job_id: String,
    },
    Busy {
        running: String,
    },
    QueueFull {
        queued: usize,
        limit: usize,
    },
    ShuttingDown,
    Admitted {
        job: Job,
        stop: watch::Receiver<Option<StopReason>>,
        go: Option<oneshot::Receiver<()>>,
    },
}

impl JobManager {
    /// Opens (or creates) `<state_dir>/jobs`, loads the jobs there, turns those that were
    /// queued or running into `interrupted` (the agent stopped under them), prunes old ones.
    pub async fn open(settings: JobSettings) -> Result<Arc<JobManager>, JobError> {
        Ok(Arc::new(JobManager {
            shared: Shared::load(settings).await?,
        }))
    }

    /// The audit log, shared with the other services that change the host (enrolment).
    pub fn audit(&self) -> &super::audit::Audit {
        &self.shared.audit
    }

    /// Starts a job (or returns the one its idempotency key already started).
    pub async fn start(
        &self,
        req: StartJobRequest,
        caller: &PeerIdentity,
    ) -> Result<Job, JobError> {
        let sh = &self.shared;
        let spec_value = match limits::check_request(&req) {
            Ok(()) => req.spec.as_ref().map(spec_json).unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        };
        if !may_change_hosts(caller) {
            warn!(caller = %caller.describe(), "job start denied: the caller's role may not change hosts");
            let line = json!({ "spec": spec_value, "reason": "role may not start jobs" });
            if let Err(e) = sh.audit.record("start_denied", Some(caller), line).await {
                warn!(error = %e, "cannot audit a denied job start");
            }
            return Err(JobError::PermissionDenied {
                caller: caller.describe(),
                action: "start jobs",
            });
        }
        let refuse = |reason: String| {
            let line = json!({ "spec": spec_value, "reason": reason });
            async move {
                warn!(caller = %caller.describe(), %reason, "job start refused");
                // A refusal changes nothing, so an audit failure must not hide the reason.
                if let Err(e) = sh.audit.record("start_refused", Some(caller), line).await {
                    warn!(error = %e, "cannot audit a refused job start");
                }
            }
        };
        if let Err(msg) = limits::check_request(&req) {
            // Not the spec itself: an oversized field must not reach the audit log either.
            let line = json!({ "reason": msg });
            warn!(caller = %caller.describe(), reason = %msg, "job start refused");
            if let Err(e) = sh.audit.record("start_refused", Some(caller), line).await {
                warn!(error = %e, "cannot audit a refused job start");
            }
            return Err(JobError::InvalidSpec(msg));
        }
        let Some(spec) = req.spec.clone() else {
            let msg = "the request has no job spec".to_string();
            refuse(msg.clone()).await;
            return Err(JobError::InvalidSpec(msg));
        };
        // A retry must get its job back even when the request would no longer pass its
        // checks (the process it killed is gone, say): keys first.
        match self.by_key(&req.idempotency_key, &spec) {
            Some(Ok(job)) => return Ok(job),
            Some(Err(job_id)) => {
                return Err(JobError::IdempotencyConflict {
                    key: req.idempotency_key,
                    job_id,
                })
            }
            None => {}
        }
        let check = {
            let (sh, spec) = (self.shared.clone(), spec.clone());
            crate::pools::JOB_STORAGE.spawn(move || kinds::prepare(&spec, &sh.settings, &sh.cleanup_roots))
                .await
                .map_err(|e| JobError::Internal(e.to_string()))?
        };
        let prepared = match check {
            Ok(p) => p,
            Err(msg) => {
                refuse(msg.clone()).await;
                return Err(JobError::InvalidSpec(msg));
            }
        };
        if let Err(msg) = sh.room_for_jobs().await {
            refuse(msg.clone()).await;
            return Err(JobError::NoSpace(msg));
        }
        let timeout_seconds =
            prepared.timeout_seconds(req.timeout_seconds, sh.settings.jobs.default_timeout_seconds);
        let admission = self.admit(&req, spec, caller, timeout_seconds);
        let (job, stop, go) = match admission {
            Admission::Existing(job) => {
                info!(job_id = %job.id, key = %req.idempotency_key, "idempotency key matched an existing job");
                return Ok(job);
            }
            Admission::Conflict { job_id } => {
                return Err(JobError::IdempotencyConflict {
                    key: req.idempotency_key,
                    job_id,
                });
            }
            Admission::ShuttingDown => return Err(JobError::ShuttingDown),
            Admission::Busy { running } => {
                refuse(format!("busy: job {running} is running")).await;
                return Err(JobError::Busy { running });
            }
            Admission::QueueFull { queued, limit } => {
                refuse(format!("the queue is full ([jobs] max_queued = {limit})")).await;
                return Err(JobError::QueueFull { queued, limit });
            }
            Admission::Admitted { job, stop, go } => (job, stop, go),
        };
        // On disk and in the audit log before anything runs; undone if either fails.
        let store = sh.store.clone();
        let record = job.clone();
        let created = crate::pools::JOB_STORAGE.spawn(move || store.create(&record))
            .await
            .map_err(|e| JobError::Internal(e.to_string()))
            .and_then(|r| r.map_err(JobError::from));
        let audited = match created {
            Ok(()) => {
                let line = json!({
                    "job_id": job.id,
                    "spec": spec_value,
                    "idempotency_key": job.idempotency_key,
                    "timeout_seconds": job.timeout_seconds,
                    "queued": go.is_some(),
                });
                sh.audit
                    .record("start", Some(caller), line)
                    .await
                    .map_err(JobError::from)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = audited {
            self.unadmit(&job);
            return Err(e);
        }
        info!(job_id = %job.id, kind = kind_name(job.spec.as_ref().unwrap_or(&Default::default())),
              caller = %caller.describe(), queued = go.is_some(), "job started");
        let timeout = Duration::from_secs(timeout_seconds);
        tokio::spawn(task::run_job(
            sh.clone(),
            job.id.clone(),
            prepared,
            stop,
            go,
            timeout,
        ));
        Ok(job)
    }

    /// The job an idempotency key already names: Ok when the spec is the same, Err(id)
    /// when it differs; None for an empty or unused key.
    fn by_key(&self, key: &str, spec: &ops_proto::v1::JobSpec) -> Option<Result<Job, String>> {
        if key.is_empty() {
            return None;
        }
        let inner = self.shared.lock();
        let e = inner.by_key.get(key).and_then(|id| inner.jobs.get(id))?;
        Some(if e.job.spec.as_ref() == Some(spec) {
            Ok(live(e))
        } else {
            Err(e.job.id.clone())
        })
    }

    /// The idempotency and one-at-a-time decisions, atomically.
    fn admit(
        &self,
        req: &StartJobRequest,
        spec: ops_proto::v1::JobSpec,
        caller: &PeerIdentity,
        timeout: u64,
    ) -> Admission {
        let sh = &self.shared;
        let mut inner = sh.lock();
        if inner.shutting_down {
            return Admission::ShuttingDown;
        }
        let key = &req.idempotency_key;
        if !key.is_empty() {
            if let Some(e) = inner.by_key.get(key).and_then(|id| inner.jobs.get(id)) {
                return if e.job.spec.as_ref() == Some(&spec) {
                    Admission::Existing(live(e))
                } else {
                    Admission::Conflict {
                        job_id: e.job.id.clone(),
                    }
                };
            }
        }
        let exclusive = !sh.settings.jobs.allow_concurrent;
        let holder = inner
            .running
            .clone()
            .or_else(|| inner.queue.front().cloned());
        let queued = match (exclusive, holder) {
            (false, _) | (true, None) => false,
            (true, Some(_)) if req.queue_if_busy => {
                let limit = sh.settings.jobs.max_queued;
                if inner.queue.len() >= limit {
                    return Admission::QueueFull {
                        queued: inner.queue.len(),
                        limit,
                    };
                }
                true
            }
            (true, Some(running)) => return Admission::Busy { running },
        };
        let mut id = new_job_id();
        while inner.jobs.contains_key(&id) {
            id = new_job_id();
        }
        let now = now_ms();
        let job = Job {
            id: id.clone(),
            spec: Some(spec),
            state: if queued {
                JobState::Queued
            } else {
                JobState::Running
            } as i32,
            idempotency_key: key.clone(),
            created_unix_ms: now,
            started_unix_ms: if queued { 0 } else { now },
            requested_by: caller.name.clone(),
            requested_role: caller.role_claim.clone(),
            timeout_seconds: u32::try_from(timeout).unwrap_or(u32::MAX),
            ..Default::default()
        };
        let (stop_tx, stop_rx) = watch::channel(None);
        let (go_tx, go_rx) = if queued {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        if queued {
            inner.queue.push_back(id.clone());
        } else if exclusive {
            inner.running = Some(id.clone());
        }
        if !key.is_empty() {
            inner.by_key.insert(key.clone(), id.clone());
        }
        let progress = watch::Sender::new(Progress::default());
        inner.jobs.insert(
            id,
            Entry {
                job: job.clone(),
                progress,
                stop: Some(stop_tx),
                go: go_tx,
            },
        );
        Admission::Admitted {
            job,
            stop: stop_rx,
            go: go_rx,
        }
    }

    /// Forgets a job whose start could not be made durable.
    fn unadmit(&self, job: &Job) {
        let mut inner = self.shared.lock();
        inner.jobs.remove(&job.id);
        if !job.idempotency_key.is_empty() {
            inner.by_key.remove(&job.idempotency_key);
        }
        inner.queue.retain(|q| q != &job.id);
        if inner.running.as_deref() == Some(job.id.as_str()) {
            inner.running = None;
        }
        drop(inner);
        let store = self.shared.store.clone();
        let id = job.id.clone();
        tokio::spawn(crate::pools::JOB_STORAGE.spawn(move || store.remove(&id)));
    }

    /// The current record of one job.
    pub async fn get(&self, job_id: &str) -> Result<Job, JobError> {
        let inner = self.shared.lock();
        inner
            .jobs
            .get(job_id)
            .map(live)
            .ok_or_else(|| JobError::NotFound {
                job_id: job_id.into(),
            })
    }

    /// Recent jobs, newest first; `limit` 0 means `DEFAULT_LIST_LIMIT`. The first page only.
    pub async fn list(&self, limit: usize) -> Vec<Job> {
        self.list_page(limit, "").await.map(|(jobs, _)| jobs).unwrap_or_default()
    }

    /// One page of jobs, newest first, after the job `page_token` names (empty: from the
    /// newest), and the token of the next page (empty when this is the last). A page holds
    /// at most `page_size` jobs (0: `DEFAULT_LIST_LIMIT`; capped at `MAX_LIST_PAGE`) and
    /// ends early rather than pass `MAX_LIST_PAGE_BYTES` encoded.
    pub async fn list_page(
        &self,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<Job>, String), JobError> {
        let size = match page_size {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_PAGE),
        };
        let after = match page_token {
            "" => None,
            t => Some(parse_page_token(t).ok_or_else(|| JobError::BadPageToken(t.into()))?),
        };
        let mut keys: Vec<(i64, String)> = {
            let inner = self.shared.lock();
            inner.jobs.values().map(|e| (e.job.created_unix_ms, e.job.id.clone())).collect()
        };
        keys.sort_by(|a, b| b.cmp(a));
        if let Some(after) = &after {
            keys.retain(|k| k < after);
        }
        let mut jobs = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        {
            let inner = self.shared.lock();
            for (_, id) in &keys {
                let Some(job) = inner.jobs.get(id).map(live) else {
                    continue;
                };
                let len = prost::Message::encoded_len(&job) + 8;
                if jobs.len() == size || (!jobs.is_empty() && bytes + len > MAX_LIST_PAGE_BYTES) {
                    more = true;
                    break;
                }
                bytes += len;
                jobs.push(job);
            }
        }
        let next = match (more, jobs.last()) {
            (true, Some(last)) => format!("{}.{}", last.created_unix_ms, last.id),
            _ => String::new(),
        };
        Ok((jobs, next))
    }

    /// Output from `from_offset` (streamed from the on-disk log in bounded chunks,
    /// following while the job runs), then a final `JobEvent::Finished`, then the end.
    pub fn watch(
        &self,
        job_id: &str,
        from_offset: u64,
    ) -> Result<ReceiverStream<Result<JobEvent, tonic::Status>>, JobError> {
        let rx = {
            let inner = self.shared.lock();
            let e = inner.jobs.get(job_id).ok_or_else(|| JobError::NotFound {
                job_id: job_id.into(),
            })?;
            e.progress.subscribe()
        };
        let len = rx.borrow().written;
        if from_offset > len {
            return Err(JobError::OffsetOutOfRange {
                job_id: job_id.into(),
                offset: from_offset,
                len,
            });
        }
        Ok(watcher::spawn(
            self.shared.store.output_path(job_id),
            rx,
            from_offset,
        ))
    }

    /// Asks a queued or running job to stop (SIGTERM, then SIGKILL after the grace
    /// period) and returns its record once it ended (or after the grace period and a
    /// little more). A job that has already ended is returned as it is.
    pub async fn cancel(&self, job_id: &str, caller: &PeerIdentity) -> Result<Job, JobError> {
        let sh = &self.shared;
        if !may_change_hosts(caller) {
            warn!(caller = %caller.describe(), job_id, "job cancel denied: the caller's role may not change hosts");
            let line = json!({ "job_id": job_id, "reason": "role may not cancel jobs" });
            if let Err(e) = sh.audit.record("cancel_denied", Some(caller), line).await {
                warn!(error = %e, "cannot audit a denied cancel");
            }
            return Err(JobError::PermissionDenied {
                caller: caller.describe(),
                action: "cancel jobs",
            });
        }
        let job = self.get(job_id).await?;
        if is_finished(job.state) {
            return Ok(job);
        }
        let line = json!({ "job_id": job_id, "state": state_name(job.state) });
        if let Err(e) = sh.audit.record("cancel", Some(caller), line).await {
            // Stopping a job is always allowed to proceed: a full disk that refuses the
            // audit line is exactly when a runaway job must still be stoppable.
            warn!(error = %e, job_id, "cannot audit a cancel; cancelling anyway");
        }
        let mut rx = {
            let mut inner = sh.lock();
            inner.queue.retain(|q| q != job_id);
            let e = inner
                .jobs
                .get_mut(job_id)
                .ok_or_else(|| JobError::NotFound {
                    job_id: job_id.into(),
                })?;
            if let Some(stop) = &e.stop {
                stop.send_replace(Some(StopReason::Cancelled {
                    by: caller.describe(),
                }));
            }
            e.progress.subscribe()
        };
        info!(job_id, caller = %caller.describe(), "job cancel requested");
        let bound = sh.grace() + END_WAIT_SLACK;
        if tokio::time::timeout(bound, rx.wait_for(|p| p.finished.is_some()))
            .await
            .is_err()
        {
            warn!(
                job_id,
                "job did not end within {} s of its cancel",
                bound.as_secs()
            );
        }
        self.get(job_id).await
    }

    /// Agent shutdown: stops every queued and running job (SIGTERM, SIGKILL after the
    /// grace period), marks them interrupted and persists them. New starts are refused.
    pub async fn shutdown(&self) {
        let sh = &self.shared;
        let waits: Vec<(String, watch::Receiver<Progress>)> = {
            let mut inner = sh.lock();
            inner.shutting_down = true;
            inner.queue.clear();
            inner
                .jobs
                .values()
                .filter_map(|e| {
                    let stop = e.stop.as_ref()?;
                    stop.send_replace(Some(StopReason::Shutdown));
                    Some((e.job.id.clone(), e.progress.subscribe()))
                })
                .collect()
        };
        let deadline = tokio::time::Instant::now() + sh.grace() + END_WAIT_SLACK;
        for (id, mut rx) in waits {
            if tokio::time::timeout_at(deadline, rx.wait_for(|p| p.finished.is_some()))
                .await
                .is_err()
            {
                warn!(job_id = %id, "job did not stop before the shutdown deadline");
            }
        }
    }
}

/// (created ms, id) from a `ListJobs` page token: "<created ms>.<job id>".
fn parse_page_token(t: &str) -> Option<(i64, String)> {
    let (ms, id) = t.split_once('.')?;
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    ok.then(|| Some((ms.parse().ok()?, id.to_string())))?
}
