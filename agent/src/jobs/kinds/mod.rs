//! The job kinds: each one first checks a request against the agent's config and the
//! host (`prepare`, which refuses before anything is started or audited as started),
//! then does its work (`execute`) with output going to the job's log.
//!
//! Nothing here takes a command line from the network: programs and arguments come from
//! the kind itself or from the agent's own config.

pub mod action;
pub mod cleanup;
pub mod cleanup_roots;
pub mod glob;
pub mod kill;
pub mod patch;
pub mod patch_parse;
pub mod rotate;
pub mod service;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use ops_proto::v1::job_result;
use ops_proto::v1::job_spec::Kind;
use ops_proto::v1::JobSpec;

use super::config::JobSettings;
use super::runner::{self, Cmd, Finished, Interrupt, JobCtx, RunError};

/// A request that passed its checks, with what the checks resolved.
#[derive(Debug)]
pub enum Prepared {
    Patch(patch::PatchPlan),
    Cleanup(cleanup::CleanupPlan),
    RotateLogs,
    RestartService(service::RestartPlan),
    Kill(kill::KillPlan),
    Action(action::ActionPlan),
}

/// How a job kind ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    Interrupted(Interrupt),
}

/// What a kind reports when it ends.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub result: Option<job_result::Kind>,
}

impl Report {
    pub fn succeeded(exit_code: Option<i32>, result: Option<job_result::Kind>) -> Report {
        Report {
            outcome: Outcome::Succeeded,
            exit_code,
            result,
        }
    }

    pub fn failed(error: impl Into<String>) -> Report {
        Report {
            outcome: Outcome::Failed(error.into()),
            exit_code: None,
            result: None,
        }
    }

    fn from_run_error(e: RunError) -> Report {
        match e {
            RunError::Interrupted(i) => Report {
                outcome: Outcome::Interrupted(i),
                exit_code: None,
                result: None,
            },
            other => Report::failed(other.to_string()),
        }
    }

    pub fn with_result(mut self, result: job_result::Kind) -> Report {
        self.result = Some(result);
        self
    }
}

/// Checks a spec against the config and the host. The error is for the caller
/// (INVALID_ARGUMENT): what is wrong and what to do.
/// `cleanup_roots` is `[cleanup] allowed_roots` as resolved when the engine started.
pub fn prepare(
    spec: &JobSpec,
    settings: &JobSettings,
    cleanup_roots: &cleanup_roots::AllowedRoots,
) -> Result<Prepared, String> {
    match &spec.kind {
        None => Err("the job spec names no kind (patch, cleanup, rotate_logs, restart_service, kill_process, run_action)".into()),
        Some(Kind::Patch(p)) => patch::prepare(p, &settings.jobs).map(Prepared::Patch),
        Some(Kind::Cleanup(c)) => cleanup::prepare(c, cleanup_roots).map(Prepared::Cleanup),
        Some(Kind::RotateLogs(_)) => rotate::prepare(&settings.jobs).map(|()| Prepared::RotateLogs),
        Some(Kind::RestartService(r)) => service::prepare_request(r, &settings.services).map(Prepared::RestartService),
        Some(Kind::KillProcess(k)) => kill::prepare(k, &settings.kill).map(Prepared::Kill),
        Some(Kind::RunAction(a)) => action::prepare(&a.name, &settings.actions).map(Prepared::Action),
    }
}

impl Prepared {
    /// The timeout the kind's own config asks for, if any (actions only).
    pub fn configured_timeout_seconds(&self) -> Option<u64> {
        match self {
            Prepared::Action(a) => a.timeout_seconds(),
            _ => None,
        }
    }

    /// The job's timeout. A request may shorten an action's configured timeout (its own,
    /// or `[jobs] default_timeout_seconds`), never lengthen it: the host's owner set it.
    /// Other kinds have no configured bound and take the request's value; 0 means none
    /// asked, so the configured one applies.
    pub fn timeout_seconds(&self, requested: u32, default: u64) -> u64 {
        let configured = self.configured_timeout_seconds().unwrap_or(default);
        match (requested, self) {
            (0, _) => configured,
            (t, Prepared::Action(_)) => u64::from(t).min(configured),
            (t, _) => u64::from(t),
        }
    }
}

/// Does the work of a prepared job.
pub async fn execute(prepared: Prepared, ctx: &mut JobCtx, settings: &JobSettings) -> Report {
    let r = match prepared {
        Prepared::Patch(p) => patch::execute(p, ctx).await,
        Prepared::Cleanup(c) => cleanup::execute(c, ctx).await,
        Prepared::RotateLogs => rotate::execute(&settings.jobs, ctx).await,
        Prepared::RestartService(r) => service::execute(&r, &settings.services, ctx).await,
        Prepared::Kill(k) => kill::execute(k, &settings.kill, ctx).await,
        Prepared::Action(a) => action::execute(a, ctx).await,
    };
    r.unwrap_or_else(|report| report)
}

/// Runs a command; an interrupt or a start failure becomes the job's report.
async fn run(ctx: &mut JobCtx, cmd: &Cmd) -> Result<Finished, Report> {
    runner::run(ctx, cmd).await.map_err(Report::from_run_error)
}

/// Writes an agent note to the log; a log that cannot be written fails the job.
async fn note(ctx: &mut JobCtx, line: &str) -> Result<(), Report> {
    ctx.log
        .note(line)
        .await
        .map_err(|e| Report::failed(format!("cannot write the job's output log: {e}")))
}

/// Fails unless the command exited 0.
fn require_success(f: &Finished, what: &str) -> Result<(), Report> {
    if f.success() {
        return Ok(());
    }
    Err(Report {
        outcome: Outcome::Failed(format!("{what} failed: {}", f.describe())),
        exit_code: f.status.code(),
        result: None,
    })
}

/// An executable file named `name` in the agent's PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin:/sbin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
