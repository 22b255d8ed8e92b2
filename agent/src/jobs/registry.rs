//! The in-memory index of jobs shared by the manager and the job tasks: records, the
//! one-at-a-time slot, the queue, idempotency keys; loading at start-up, persisting and
//! pruning.
//!
//! Decisions that must be atomic (idempotency key, slot, queue) are taken under one
//! short std mutex that is never held across an await. Disk and audit I/O happen
//! outside it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ops_proto::v1::{Job, JobState};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tracing::warn;

use super::audit::Audit;
use super::config::JobSettings;
use super::kinds::cleanup_roots::AllowedRoots;
use super::output::Progress;
use super::runner::StopReason;
use super::spec::{is_finished, state_from_name, state_name};
use super::store::Store;
use super::JobError;

pub(super) struct Shared {
    pub(super) settings: JobSettings,
    /// `[cleanup] allowed_roots`, resolved once when the engine opened.
    pub(super) cleanup_roots: AllowedRoots,
    pub(super) store: Store,
    pub(super) audit: Audit,
    pub(super) inner: Mutex<Inner>,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) jobs: HashMap<String, Entry>,
    pub(super) by_key: HashMap<String, String>,
    /// The job holding the one-at-a-time slot.
    pub(super) running: Option<String>,
    /// Jobs waiting for the slot, first come first served.
    pub(super) queue: VecDeque<String>,
    pub(super) shutting_down: bool,
    /// Jobs whose latest record could not be written (a full disk): retried before any
    /// new job is admitted, and until then no new job starts.
    pub(super) unpersisted: HashSet<String>,
}

pub(super) struct Entry {
    pub(super) job: Job,
    pub(super) progress: watch::Sender<Progress>,
    /// Present while the job is queued or running.
    pub(super) stop: Option<watch::Sender<Option<StopReason>>>,
    /// Present while the job waits in the queue.
    pub(super) go: Option<oneshot::Sender<()>>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn grace(&self) -> Duration {
        Duration::from_secs(self.settings.jobs.kill_grace_seconds)
    }

    /// Writes a record on the blocking pool.
    pub(super) async fn persist(&self, job: Job) -> Result<(), JobError> {
        let store = self.store.clone();
        crate::pools::JOB_STORAGE.spawn(move || store.write(&job))
            .await
            .map_err(|e| JobError::Internal(e.to_string()))?
            .map_err(JobError::from)
    }

    /// Writes a record; on failure remembers the job so that its record is written again
    /// before the next job is admitted. Never fails: the record stays right in memory.
    pub(super) async fn persist_or_remember(&self, job: Job) {
        let id = job.id.clone();
        match self.persist(job).await {
            Ok(()) => {
                self.lock().unpersisted.remove(&id);
            }
            Err(e) => {
                warn!(job_id = %id, error = %e, "cannot write a job's record; it is kept in memory and written again before the next job starts");
                self.lock().unpersisted.insert(id);
            }
        }
    }

    /// Ok when a new job may start: every record is on disk and the state directory's
    /// filesystem is above its free-space floor. Else the reason, for the caller.
    pub(super) async fn room_for_jobs(&self) -> Result<(), String> {
        let pending: Vec<Job> = {
            let inner = self.lock();
            inner.unpersisted.iter().filter_map(|id| inner.jobs.get(id)).map(|e| e.job.clone()).collect()
        };
        for job in pending {
            self.persist_or_remember(job).await;
        }
        let stuck = self.lock().unpersisted.len();
        if stuck > 0 {
            return Err(format!(
                "{stuck} job record(s) could not be written to {}",
                self.settings.state_dir.display()
            ));
        }
        let dir = self.settings.state_dir.clone();
        let floor = self.settings.jobs.min_free_bytes;
        match crate::pools::JOB_STORAGE.spawn(move || super::output::free_bytes(&dir)).await {
            Ok(Ok(free)) if free < floor => Err(format!(
                "free space on {} is {free} bytes, below the floor of {floor} bytes ([jobs] min_free_bytes)",
                self.settings.state_dir.display()
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "cannot read the free space of {}: {e}",
                self.settings.state_dir.display()
            )),
            Err(e) => Err(format!("free space check failed: {e}")),
        }
    }

    /// Removes finished jobs beyond the configured age and count.
    pub(super) async fn prune(&self) {
        let now = now_ms();
        let cfg = &self.settings.jobs;
        let victims = {
            let mut inner = self.lock();
            let finished: Vec<(String, i64)> = inner
                .jobs
                .values()
                .filter(|e| is_finished(e.job.state) && !inner.unpersisted.contains(&e.job.id))
                .map(|e| (e.job.id.clone(), e.job.created_unix_ms))
                .collect();
            let max_age_ms =
                i64::try_from(cfg.keep_max_age_days.saturating_mul(86_400_000)).unwrap_or(i64::MAX);
            let victims = prune_plan(finished, now, cfg.keep_max_jobs, max_age_ms);
            for id in &victims {
                if let Some(e) = inner.jobs.remove(id) {
                    if !e.job.idempotency_key.is_empty() {
                        inner.by_key.remove(&e.job.idempotency_key);
                    }
                }
            }
            victims
        };
        if victims.is_empty() {
            return;
        }
        let store = self.store.clone();
        let res = crate::pools::JOB_STORAGE.spawn(move || {
            victims
                .iter()
                .filter_map(|id| store.remove(id).err())
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        })
        .await;
        match res {
            Ok(errors) => errors
                .iter()
                .for_each(|e| warn!(error = %e, "cannot prune an old job")),
            Err(e) => warn!(error = %e, "pruning old jobs failed"),
        }
    }
}

/// Which finished jobs to delete: older than `max_age_ms`, then all but the newest
/// `keep_max`. Input: (id, created ms).
pub fn prune_plan(
    mut finished: Vec<(String, i64)>,
    now_ms: i64,
    keep_max: usize,
    max_age_ms: i64,
) -> Vec<String> {
    finished.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    finished
        .into_iter()
        .enumerate()
        .filter(|(i, (_, created))| *i >= keep_max || now_ms.saturating_sub(*created) > max_age_ms)
        .map(|(_, (id, _))| id)
        .collect()
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Time-ordered, unique enough to never collide on one host: `20250101T120000123Z-1a2b3c`.
pub(super) fn new_job_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!(
        "{}-{:06x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"),
        h.finish() & 0xff_ffff
    )
}

/// A job's record with its output length as of now (the record on disk has it only
/// once the job ended).
pub(super) fn live(e: &Entry) -> Job {
    let mut job = e.job.clone();
    if e.stop.is_some() {
        job.output_bytes = e.progress.borrow().written;
    }
    job
}

impl Shared {
    /// Opens (or creates) the store, loads its jobs, turns those that were queued or
    /// running into `interrupted` (the agent stopped under them), prunes old ones.
    pub(super) async fn load(settings: JobSettings) -> Result<Arc<Shared>, JobError> {
        settings.validate().map_err(JobError::Config)?;
        let cleanup_roots = AllowedRoots::resolve(&settings.cleanup).map_err(JobError::Config)?;
        for root in cleanup_roots.absent() {
            warn!(root = %root.display(), "a [cleanup] allowed root does not exist; cleanups under it are refused until the agent restarts");
        }
        let state_dir = settings.state_dir.clone();
        let audit_path = settings.audit_log_path();
        let audit_dir = audit_path.parent().map(|p| p.to_path_buf());
        let (store, loaded, unreadable, (audit, torn)) = crate::pools::JOB_STORAGE.spawn(move || {
            if let Some(dir) = audit_dir {
                std::fs::create_dir_all(&dir).map_err(|source| {
                    JobError::Store(super::store::StoreError {
                        op: "create the audit log's directory",
                        path: dir,
                        source,
                    })
                })?;
            }
            let store = Store::open(&state_dir)?;
            for (dir, why) in store.remove_leftovers() {
                warn!(dir = %dir.display(), "{why}");
            }
            let (jobs, bad) = store.load_all()?;
            Ok::<_, JobError>((store, jobs, bad, Audit::open(audit_path)))
        })
        .await
        .map_err(|e| JobError::Internal(e.to_string()))??;
        if let Some(t) = &torn {
            warn!(path = %audit.path().display(), offset = t.offset, len = t.len,
                  "the audit log's last line is cut short (a crash mid-write?); the next line starts on a fresh line");
        }
        for u in &unreadable {
            warn!(dir = %u.dir.display(), reason = %u.reason, "skipping a job directory whose record cannot be read");
        }
        let shared = Arc::new(Shared {
            settings,
            cleanup_roots,
            store,
            audit,
            inner: Mutex::default(),
        });
        let now = now_ms();
        let mut inner = Inner::default();
        let open: Vec<String> = loaded.iter().filter(|j| !is_finished(j.state)).map(|j| j.id.clone()).collect();
        let already = if open.is_empty() {
            HashMap::new()
        } else {
            let path = shared.audit.path().to_path_buf();
            crate::pools::JOB_STORAGE.spawn(move || super::audit::finished_lines(&path, &open))
                .await
                .map_err(|e| JobError::Internal(e.to_string()))?
        };
        let mut unpersisted = HashSet::new();
        for mut job in loaded {
            if let Some(line) = already.get(&job.id) {
                // The outcome was audited but its record never reached the disk (it was
                // full): take the outcome from the audit line, write no second one.
                adopt_outcome(&mut job, line, now);
                if let Err(e) = shared.persist(job.clone()).await {
                    warn!(job_id = %job.id, error = %e, "cannot write a job's recovered record");
                    unpersisted.insert(job.id.clone());
                }
                warn!(job_id = %job.id, state = state_name(job.state), "recovered a job's outcome from the audit log");
            } else if !is_finished(job.state) {
                let was = state_name(job.state);
                job.error = if job.started_unix_ms == 0 {
                    "the agent stopped (restart, crash or reboot) before this job started; it never ran".into()
                } else {
                    "the agent stopped (restart, crash or reboot) while this job was running; it did not finish \
                     and its effect on the host is unknown: check the host and the job's output"
                        .into()
                };
                job.state = JobState::Interrupted as i32;
                job.finished_unix_ms = now;
                job.output_bytes = shared.store.output_len(&job.id);
                // A full disk must not keep the agent down: the record stays right in
                // memory and is written again before any new job starts.
                if let Err(e) = shared.persist(job.clone()).await {
                    warn!(job_id = %job.id, error = %e, "cannot write an interrupted job's record");
                    unpersisted.insert(job.id.clone());
                }
                warn!(job_id = %job.id, was, "marked a job interrupted: the agent stopped while it was {was}");
                let line = json!({ "job_id": job.id, "state": "interrupted", "was": was, "error": job.error });
                if let Err(e) = shared.audit.record("finished", None, line).await {
                    warn!(error = %e, "cannot audit an interrupted job");
                }
            }
            let progress = watch::Sender::new(Progress {
                written: job.output_bytes,
                finished: Some(Arc::new(job.clone())),
            });
            if !job.idempotency_key.is_empty() {
                inner
                    .by_key
                    .insert(job.idempotency_key.clone(), job.id.clone());
            }
            inner.jobs.insert(
                job.id.clone(),
                Entry {
                    job,
                    progress,
                    stop: None,
                    go: None,
                },
            );
        }
        inner.unpersisted = unpersisted;
        *shared.lock() = inner;
        shared.prune().await;
        Ok(shared)
    }
}

/// Takes a job's outcome from its `finished` audit line.
fn adopt_outcome(job: &mut Job, line: &serde_json::Value, now: i64) {
    let name = line["state"].as_str().unwrap_or("");
    job.state = state_from_name(name).unwrap_or(JobState::Interrupted) as i32;
    job.error = line["error"].as_str().unwrap_or("").to_string();
    job.exit_code = line["exit_code"].as_i64().and_then(|c| i32::try_from(c).ok());
    job.output_bytes = line["output_bytes"].as_u64().unwrap_or(job.output_bytes);
    job.finished_unix_ms = chrono::DateTime::parse_from_rfc3339(line["time"].as_str().unwrap_or(""))
        .map(|t| t.timestamp_millis())
        .unwrap_or(now);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest_and_drops_the_old() {
        let day = 86_400_000;
        let now = 100 * day;
        let jobs = vec![
            ("a".to_string(), now - 40 * day),
            ("b".to_string(), now - 2 * day),
            ("c".to_string(), now - day),
            ("d".to_string(), now),
        ];
        let mut v = prune_plan(jobs.clone(), now, 10, 30 * day);
        v.sort();
        assert_eq!(v, ["a"]);
        let mut v = prune_plan(jobs, now, 2, 30 * day);
        v.sort();
        assert_eq!(v, ["a", "b"]);
    }

    #[test]
    fn job_ids_sort_by_time_and_differ() {
        let a = new_job_id();
        let b = new_job_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), "20250101T120000123Z-1a2b3c".len());
    }
}
