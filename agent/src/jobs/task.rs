//! The detached life of one job: wait for the slot if queued, run the kind, record the
//! outcome (record, audit line, watchers), hand the slot to the next queued job.
//!
//! Runs in its own tokio task, so a caller that disconnects changes nothing. Whatever
//! happens, the job ends with a final state on disk: this task never returns early
//! without going through `finish`. The kind runs in a task of its own, so that a panic in
//! it ends the job `failed` and frees the slot instead of holding it for ever. The final
//! record is written before the slot goes to the next job, and each job gets exactly
//! one `finished` audit line.

use std::sync::Arc;
use std::time::Duration;

use ops_proto::v1::{Job, JobResult, JobState};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::kinds::{self, Outcome, Prepared, Report};
use super::output::Progress;
use super::output::{OutputLimits, OutputLog};
use super::registry::{now_ms, Shared};
use super::runner::{Interrupt, JobCtx, StopReason};
use super::spec::{result_json, state_name};

pub(super) async fn run_job(
    sh: Arc<Shared>,
    id: String,
    prepared: Prepared,
    mut stop: watch::Receiver<Option<StopReason>>,
    go: Option<oneshot::Receiver<()>>,
    timeout: Duration,
) {
    let Some(progress) = sh.lock().jobs.get(&id).map(|e| e.progress.clone()) else {
        return;
    };
    if let Some(go) = go {
        let waited = tokio::select! {
            r = go => r.map_err(|_| StopReason::Shutdown),
            r = stop.wait_for(|s| s.is_some()) => Err(r.ok().and_then(|s| s.clone()).unwrap_or(StopReason::Shutdown)),
        };
        if let Err(reason) = waited {
            let report = Report {
                outcome: Outcome::Interrupted(Interrupt::Stopped(reason)),
                exit_code: None,
                result: None,
            };
            finish(&sh, &id, report, 0).await;
            return;
        }
        let job = {
            let mut inner = sh.lock();
            inner.jobs.get_mut(&id).map(|e| {
                e.job.state = JobState::Running as i32;
                e.job.started_unix_ms = now_ms();
                e.job.clone()
            })
        };
        if let Some(job) = job {
            info!(job_id = %id, "queued job starts");
            if let Err(e) = sh.persist(job).await {
                warn!(job_id = %id, error = %e, "cannot record that a queued job started");
            }
        }
    }
    let limits = OutputLimits {
        max_bytes: sh.settings.jobs.max_output_bytes,
        min_free_bytes: sh.settings.jobs.min_free_bytes,
        state_dir: sh.settings.state_dir.clone(),
    };
    let log = match OutputLog::open(&sh.store.output_path(&id), progress.clone(), limits).await {
        Ok(log) => log,
        Err(e) => {
            finish(
                &sh,
                &id,
                Report::failed(format!("cannot open the job's output log: {e}")),
                0,
            )
            .await;
            return;
        }
    };
    let ctx = JobCtx::new(log, stop, Instant::now() + timeout, sh.grace());
    let worker = sh.clone();
    let exec = move |mut ctx: JobCtx| async move {
        let report = kinds::execute(prepared, &mut ctx, &worker.settings).await;
        (report, ctx)
    };
    let (report, written) = run_guarded(&id, ctx, exec, &progress).await;
    finish(&sh, &id, report, written).await;
}

/// Runs a job's body in a task of its own: a panic there becomes a `failed` report with
/// the panic's message instead of a task that never records its end. A bound the output
/// log hit (cap, free-space floor) overrides the body's own report, so the job always
/// says which bound stopped it.
pub(super) async fn run_guarded<F, Fut>(
    id: &str,
    ctx: JobCtx,
    exec: F,
    progress: &watch::Sender<Progress>,
) -> (Report, u64)
where
    F: FnOnce(JobCtx) -> Fut,
    Fut: std::future::Future<Output = (Report, JobCtx)> + Send + 'static,
{
    match tokio::spawn(exec(ctx)).await {
        Ok((report, mut ctx)) => {
            if let Err(e) = ctx.log.sync().await {
                warn!(job_id = %id, error = %e, "cannot fsync a job's output log");
            }
            let report = match ctx.log.limit_hit() {
                Some(hit) => Report {
                    outcome: Outcome::Failed(hit.to_string()),
                    ..report
                },
                None => report,
            };
            (report, ctx.log.written())
        }
        Err(e) => {
            let why = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into()),
                Err(e) => e.to_string(),
            };
            warn!(job_id = %id, panic = %why, "a job's task panicked");
            let written = progress.borrow().written;
            (Report::failed(format!("internal error: the job's task panicked ({why}); its process was killed")), written)
        }
    }
}

/// The final state and error text for a report.
fn final_state(report: &Report, started: bool, timeout_seconds: u32) -> (JobState, String) {
    match &report.outcome {
        Outcome::Succeeded => (JobState::Succeeded, String::new()),
        Outcome::Failed(e) => (JobState::Failed, e.clone()),
        Outcome::Interrupted(Interrupt::TimedOut) => (
            JobState::TimedOut,
            format!("timed out after {timeout_seconds} s and was stopped"),
        ),
        Outcome::Interrupted(Interrupt::Stopped(StopReason::Cancelled { by })) if started => {
            (JobState::Cancelled, format!("cancelled by {by}"))
        }
        Outcome::Interrupted(Interrupt::Stopped(StopReason::Cancelled { by })) => (
            JobState::Cancelled,
            format!("cancelled by {by} before it started"),
        ),
        Outcome::Interrupted(Interrupt::Stopped(StopReason::Shutdown)) if started => (
            JobState::Interrupted,
            "the agent shut down while this job was running; it was stopped".into(),
        ),
        Outcome::Interrupted(Interrupt::Stopped(StopReason::Shutdown)) => (
            JobState::Interrupted,
            "the agent shut down before this job started; it never ran".into(),
        ),
    }
}

/// Records the outcome (record first, then the slot goes to the next job, then the
/// audit line), tells watchers, prunes.
async fn finish(sh: &Arc<Shared>, id: &str, report: Report, written: u64) {
    let (job, progress): (Job, _) = {
        let mut inner = sh.lock();
        let Some(e) = inner.jobs.get_mut(id) else {
            return;
        };
        let (state, error) =
            final_state(&report, e.job.started_unix_ms != 0, e.job.timeout_seconds);
        e.job.state = state as i32;
        e.job.error = error;
        e.job.exit_code = report.exit_code;
        e.job.result = report.result.map(|k| JobResult { kind: Some(k) });
        e.job.finished_unix_ms = now_ms();
        e.job.output_bytes = written;
        e.stop = None;
        e.go = None;
        (e.job.clone(), e.progress.clone())
    };
    // On disk before the next job may start; on a full disk it stays right in memory and
    // no new job is admitted until it is written.
    sh.persist_or_remember(job.clone()).await;
    {
        let mut inner = sh.lock();
        if inner.running.as_deref() == Some(id) {
            inner.running = None;
            if !inner.shutting_down {
                while let Some(next) = inner.queue.pop_front() {
                    let go = inner.jobs.get_mut(&next).and_then(|n| n.go.take());
                    if go.is_some_and(|g| g.send(()).is_ok()) {
                        inner.running = Some(next);
                        break;
                    }
                }
            }
        }
    }
    let line = json!({
        "job_id": id,
        "state": state_name(job.state),
        "exit_code": job.exit_code,
        "error": job.error,
        "output_bytes": job.output_bytes,
        "result": result_json(job.result.as_ref()),
    });
    if let Err(e) = sh.audit.record("finished", None, line).await {
        warn!(job_id = %id, error = %e, "cannot audit a job's outcome");
    }
    info!(job_id = %id, state = state_name(job.state), error = %job.error, "job ended");
    progress.send_modify(|p| {
        p.written = written;
        p.finished = Some(Arc::new(job));
    });
    sh.prune().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_body_that_panics_becomes_a_failed_report_naming_the_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("output.log");
        std::fs::write(&path, b"").unwrap();
        let progress = watch::Sender::new(Progress::default());
        let limits = OutputLimits {
            max_bytes: 1 << 20,
            min_free_bytes: 0,
            state_dir: tmp.path().to_path_buf(),
        };
        let log = OutputLog::open(&path, progress.clone(), limits).await.unwrap();
        let (_stop_tx, stop) = watch::channel(None);
        let ctx = JobCtx::new(log, stop, Instant::now() + Duration::from_secs(60), Duration::from_secs(1));
        let exec = |mut ctx: JobCtx| async move {
            ctx.log.append(b"before the bug\n").await.unwrap();
            let bug: Option<()> = None;
            if bug.is_none() {
                panic!("kind bug");
            }
            (Report::failed(String::from("unreachable")), ctx)
        };
        let (report, written) = tokio::time::timeout(Duration::from_secs(30), run_guarded("j1", ctx, exec, &progress))
            .await
            .unwrap();
        match report.outcome {
            Outcome::Failed(e) => assert!(e.contains("panicked (kind bug)"), "{e}"),
            other => panic!("expected failed, got {other:?}"),
        }
        assert_eq!(written, 15);
    }

    #[test]
    fn outcomes_map_to_states_with_reasons() {
        let r = |o: Outcome| Report {
            outcome: o,
            exit_code: None,
            result: None,
        };
        let cancel = Outcome::Interrupted(Interrupt::Stopped(StopReason::Cancelled {
            by: "ops (operator)".into(),
        }));
        assert_eq!(
            final_state(&r(cancel.clone()), true, 5),
            (JobState::Cancelled, "cancelled by ops (operator)".into())
        );
        assert!(final_state(&r(cancel), false, 5)
            .1
            .ends_with("before it started"));
        let (s, e) = final_state(&r(Outcome::Interrupted(Interrupt::TimedOut)), true, 5);
        assert_eq!(s, JobState::TimedOut);
        assert!(e.contains("5 s"));
        let (s, _) = final_state(
            &r(Outcome::Interrupted(Interrupt::Stopped(
                StopReason::Shutdown,
            ))),
            true,
            5,
        );
        assert_eq!(s, JobState::Interrupted);
        assert_eq!(
            final_state(&r(Outcome::Failed("x".into())), true, 5),
            (JobState::Failed, "x".into())
        );
    }
}
