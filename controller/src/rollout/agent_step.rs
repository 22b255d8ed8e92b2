//! One step of a rollout carried out as an agent job: started with the idempotency key of
//! (run, host, step), so that a resumed run gets back the job the agent already has
//! instead of starting a second one; followed to its end (reattaching after dropped
//! connections), its output appended to the host's log in the run folder; cancelled on
//! the agent when the operator cancels the run. Its outcome is the job's real final
//! state: a job that did not succeed is never reported as done.

use std::io::Write;
use std::time::Duration;

use ops_proto::tls::FailureKind;
use ops_proto::v1::{job_result, job_spec, Job, JobSpec, JobState, StartJobRequest};
use tokio::sync::watch;

use super::journal::{idempotency_key, StepState};
use crate::client::Dialer;
use crate::commands::job::{self, JobCmdError};
use crate::fleet::Host;

/// What a job step ended as.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub state: StepState,
    pub detail: String,
    pub job_id: Option<String>,
    /// The agent could not be reached at all (the host is `unreachable`, not `failed`).
    pub unreachable: bool,
    /// The patch found that the host needs a reboot.
    pub reboot_required: bool,
    /// The job's result as JSON (packages, files removed, unit state), for the report.
    pub data: serde_json::Value,
}

impl StepOutcome {
    fn error(state: StepState, detail: String, job_id: Option<String>, unreachable: bool) -> StepOutcome {
        StepOutcome { state, detail, job_id, unreachable, reboot_required: false, data: serde_json::Value::Null }
    }
}

/// The outcome a finished job record means.
pub fn outcome_of(job: &Job) -> StepOutcome {
    let state = JobState::try_from(job.state).unwrap_or(JobState::Unspecified);
    let reboot = matches!(
        job.result.as_ref().and_then(|r| r.kind.as_ref()),
        Some(job_result::Kind::Patch(p)) if p.reboot_required
    );
    let result = job.result.as_ref().and_then(|r| r.kind.as_ref());
    // A service the host does not run was left alone: not done, and not a failure.
    let not_restarted = matches!(result, Some(job_result::Kind::Service(s)) if !s.restarted);
    // A real patch was asked for and the agent only simulated it (its patch_mode).
    let only_simulated = matches!(
        (result, job.spec.as_ref().and_then(|s| s.kind.as_ref())),
        (Some(job_result::Kind::Patch(r)), Some(job_spec::Kind::Patch(p))) if r.simulated && !p.simulate
    );
    let (state, detail) = match state {
        JobState::Succeeded if not_restarted => (StepState::Skipped, format!("{}: the host does not run it", job::job_line(job))),
        JobState::Succeeded if only_simulated => {
            (StepState::Warning, format!("{} (the agent's patch_mode is simulate)", job::job_line(job)))
        }
        JobState::Succeeded if reboot => (StepState::Warning, format!("{}; the host needs a reboot", job::job_line(job))),
        JobState::Succeeded => (StepState::Succeeded, job::job_line(job)),
        JobState::TimedOut => (StepState::TimedOut, job::job_line(job)),
        JobState::Cancelled => (StepState::Cancelled, job::job_line(job)),
        JobState::Interrupted => (StepState::Failed, format!("{} (the agent stopped while it ran)", job::job_line(job))),
        _ => (StepState::Failed, job::job_line(job)),
    };
    StepOutcome {
        state,
        detail,
        job_id: Some(job.id.clone()),
        unreachable: false,
        reboot_required: reboot,
        data: job::job_json(job),
    }
}

fn is_unreachable(e: &JobCmdError) -> bool {
    matches!(
        e,
        JobCmdError::Call { source, .. }
            if matches!(source.kind, FailureKind::Refused | FailureKind::TimedOut | FailureKind::Unreachable)
    )
}

/// Runs `spec` on `host` as step `step` of run `run_id`, writing the job's output to
/// `log`. `cancel` turning true cancels the job on the agent (and the outcome says so).
#[allow(clippy::too_many_arguments)]
pub async fn run_job_step(
    dialer: &Dialer,
    host: &Host,
    run_id: &str,
    step: &str,
    spec: JobSpec,
    timeout: Option<Duration>,
    mut cancel: watch::Receiver<bool>,
    log: &mut (dyn Write + Send),
) -> StepOutcome {
    let req = StartJobRequest {
        spec: Some(spec),
        idempotency_key: idempotency_key(run_id, &host.name, step),
        timeout_seconds: timeout.map(|t| u32::try_from(t.as_secs()).unwrap_or(u32::MAX).max(1)).unwrap_or(0),
        // Another job on the host (someone's manual patch) is waited for, not failed.
        queue_if_busy: true,
    };
    let started = match job::start(dialer, host, req).await {
        Ok(j) => j,
        Err(e) => {
            let unreachable = is_unreachable(&e);
            return StepOutcome::error(StepState::Failed, e.to_string(), None, unreachable);
        }
    };
    let _ = writeln!(log, "--- {step}: job {} on {}", started.id, host.name);
    if job::is_final(started.state) {
        // A resumed run: the agent already finished this step's job.
        return outcome_of(&started);
    }
    let watched = {
        let watch_fut = job::watch(dialer, host, &started.id, 0, log);
        tokio::pin!(watch_fut);
        tokio::select! {
            r = &mut watch_fut => Some(r),
            _ = cancel.wait_for(|c| *c) => None,
        }
    };
    let result = match watched {
        Some(r) => r,
        None => {
            if let Err(e) = job::cancel(dialer, host, &started.id).await {
                return StepOutcome::error(
                    StepState::Failed,
                    format!("cancel of job {} failed: {e}; it may still be running", started.id),
                    Some(started.id.clone()),
                    false,
                );
            }
            job::watch(dialer, host, &started.id, 0, &mut std::io::sink()).await
        }
    };
    match result {
        Ok(done) => outcome_of(&done),
        Err(e) => StepOutcome::error(StepState::Failed, e.to_string(), Some(started.id.clone()), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ops_proto::v1::{JobResult, PatchResult};

    fn job(state: JobState, reboot: bool) -> Job {
        Job {
            id: "j-1".into(),
            state: state as i32,
            result: Some(JobResult {
                kind: Some(job_result::Kind::Patch(PatchResult {
                    package_manager: "dnf".into(),
                    packages: vec![],
                    reboot_required: reboot,
                    simulated: false,
                })),
            }),
            ..Job::default()
        }
    }

    #[test]
    fn only_a_succeeded_job_is_a_succeeded_step() {
        assert_eq!(outcome_of(&job(JobState::Succeeded, false)).state, StepState::Succeeded);
        for s in [JobState::Failed, JobState::Interrupted, JobState::Unspecified, JobState::Running] {
            assert_eq!(outcome_of(&job(s, false)).state, StepState::Failed, "{s:?}");
        }
        assert_eq!(outcome_of(&job(JobState::TimedOut, false)).state, StepState::TimedOut);
        assert_eq!(outcome_of(&job(JobState::Cancelled, false)).state, StepState::Cancelled);
    }

    #[test]
    fn a_patch_that_needs_a_reboot_is_done_with_a_warning() {
        let o = outcome_of(&job(JobState::Succeeded, true));
        assert_eq!(o.state, StepState::Warning);
        assert!(o.reboot_required && o.detail.contains("reboot"), "{}", o.detail);
    }
}
