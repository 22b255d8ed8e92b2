//! `controller job ...`: start a typed job on one host and follow its output, watch a
//! job (reattaching by itself after a dropped connection, resuming from the byte offset
//! it had reached), list and cancel jobs.

use std::io::Write;
use std::time::Duration;

use ops_proto::v1::agent_client::AgentClient;
use ops_proto::v1::{
    job_event, job_result, job_spec, CancelJobRequest, Cleanup, CleanupRule, GetJobRequest, Job, JobSpec, JobState,
    KillProcess, ListJobsRequest, Patch, RestartService, RotateLogs, RunAction, StartJobRequest, TimeField,
    WatchJobRequest,
};
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::client::{call_error, Dialer};
use crate::commands::backoff::retry_delay;
use crate::fleet::Host;
use crate::output::{human_bytes, OutputFormat, Table};

/// Reconnection attempts in a row without progress before a watch gives up.
pub const MAX_WATCH_RETRIES: u32 = 8;

/// A job kind as the user typed it.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KindArgs {
    /// A named action from the agent's own config (e.g. npm-audit-fix).
    Action { name: String },
    /// Package updates with the host's package manager.
    Patch {
        /// Security updates only.
        #[arg(long)]
        security_only: bool,
        /// Let the package manager simulate; change nothing.
        #[arg(long)]
        simulate: bool,
        /// Package to leave alone (repeatable).
        #[arg(long)]
        exclude: Vec<String>,
    },
    /// Delete old files under a root the agent allows.
    Cleanup {
        #[arg(long)]
        root: String,
        /// Glob on the file name, e.g. '*.log'.
        #[arg(long, default_value = "*")]
        pattern: String,
        /// Age, e.g. 7d, 30d, 12h.
        #[arg(long, value_parser = parse_age)]
        older_than: Duration,
        /// Which file time to compare.
        #[arg(long, value_enum, default_value_t = TimeBy::Mtime)]
        by: TimeBy,
        /// Report what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// `systemctl restart` of a unit in the agent's allow-list.
    RestartService {
        unit: String,
        /// Only if the host runs it (systemd's try-restart): a unit that is not active
        /// (or reloading) is left alone and the job succeeds, reporting it not restarted.
        #[arg(long)]
        if_running: bool,
    },
    /// Signal one process, checking its name first (pid reuse).
    Kill {
        #[arg(long)]
        pid: i32,
        #[arg(long = "expect-name")]
        expect_name: String,
        #[arg(long, default_value = "TERM")]
        signal: String,
    },
    /// `logrotate -f` with the agent's configured config.
    RotateLogs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TimeBy {
    Atime,
    Mtime,
}

fn parse_age(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (examples: 7d, 30d, 12h)"))
}

/// The wire spec of a kind.
pub fn spec(kind: &KindArgs) -> JobSpec {
    let k = match kind.clone() {
        KindArgs::Action { name } => job_spec::Kind::RunAction(RunAction { name }),
        KindArgs::Patch { security_only, simulate, exclude } => job_spec::Kind::Patch(Patch { security_only, simulate, exclude }),
        KindArgs::Cleanup { root, pattern, older_than, by, dry_run } => job_spec::Kind::Cleanup(Cleanup {
            rules: vec![CleanupRule {
                root,
                pattern,
                older_than_seconds: older_than.as_secs(),
                by: match by {
                    TimeBy::Atime => TimeField::Atime as i32,
                    TimeBy::Mtime => TimeField::Mtime as i32,
                },
            }],
            dry_run,
        }),
        KindArgs::RestartService { unit, if_running } => {
            job_spec::Kind::RestartService(RestartService { unit, if_running })
        }
        KindArgs::Kill { pid, expect_name, signal } => {
            job_spec::Kind::KillProcess(KillProcess { pid, signal, expected_name: expect_name })
        }
        KindArgs::RotateLogs => job_spec::Kind::RotateLogs(RotateLogs {}),
    };
    JobSpec { kind: Some(k) }
}

/// A fresh idempotency key, so that retrying a start after a lost answer cannot start
/// the job twice.
pub fn new_idempotency_key() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("ctl-{}-{}-{:09}", std::process::id(), now.as_secs(), now.subsec_nanos())
}

/// The state's short name.
pub fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state).unwrap_or(JobState::Unspecified) {
        JobState::Unspecified => "unknown",
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::TimedOut => "timed_out",
        JobState::Interrupted => "interrupted",
    }
}

/// Whether a job has ended.
pub fn is_final(state: i32) -> bool {
    !matches!(JobState::try_from(state), Ok(JobState::Queued | JobState::Running) | Err(_))
}

/// The job as JSON for scripts.
pub fn job_json(j: &Job) -> Value {
    let kind = j.spec.as_ref().and_then(|s| s.kind.as_ref()).map(|k| match k {
        job_spec::Kind::Patch(_) => "patch",
        job_spec::Kind::Cleanup(_) => "cleanup",
        job_spec::Kind::RotateLogs(_) => "rotate-logs",
        job_spec::Kind::RestartService(_) => "restart-service",
        job_spec::Kind::KillProcess(_) => "kill",
        job_spec::Kind::RunAction(_) => "action",
    });
    let result = j.result.as_ref().and_then(|r| r.kind.as_ref()).map(|r| match r {
        job_result::Kind::Patch(p) => json!({
            "package_manager": p.package_manager,
            "reboot_required": p.reboot_required,
            "simulated": p.simulated,
            "packages": p.packages.iter().map(|c| json!({"name": c.name, "from": c.from_version, "to": c.to_version})).collect::<Vec<_>>(),
        }),
        job_result::Kind::Cleanup(c) => json!({"files": c.files, "bytes": c.bytes, "skipped": c.skipped, "sample_paths": c.sample_paths}),
        job_result::Kind::Service(s) => {
            json!({"unit": s.unit, "active_state": s.active_state, "restarted": s.restarted})
        }
        job_result::Kind::Kill(k) => json!({"pid": k.pid, "name": k.name, "signal": k.signal}),
    });
    json!({
        "job_id": j.id,
        "kind": kind,
        "state": state_name(j.state),
        "exit_code": j.exit_code,
        "error": if j.error.is_empty() { Value::Null } else { Value::from(j.error.clone()) },
        "output_bytes": j.output_bytes,
        "created_unix_ms": j.created_unix_ms,
        "started_unix_ms": j.started_unix_ms,
        "finished_unix_ms": j.finished_unix_ms,
        "requested_by": j.requested_by,
        "requested_role": j.requested_role,
        "idempotency_key": j.idempotency_key,
        "result": result,
    })
}

/// One line about a job for people.
pub fn job_line(j: &Job) -> String {
    let mut s = format!("job {} {}", j.id, state_name(j.state));
    if let Some(code) = j.exit_code {
        s.push_str(&format!(" (exit code {code})"));
    }
    if !j.error.is_empty() {
        s.push_str(&format!(": {}", j.error));
    }
    if let Some(r) = j.result.as_ref().and_then(|r| r.kind.as_ref()) {
        match r {
            job_result::Kind::Patch(p) => s.push_str(&format!(
                "; {} package(s) via {}{}{}",
                p.packages.len(),
                p.package_manager,
                if p.simulated { ", simulated: nothing installed" } else { "" },
                if p.reboot_required { ", reboot required" } else { "" }
            )),
            job_result::Kind::Cleanup(c) => {
                s.push_str(&format!("; {} file(s), {}, {} skipped", c.files, human_bytes(c.bytes), c.skipped))
            }
            job_result::Kind::Service(v) => s.push_str(&format!(
                "; {} is {}{}",
                v.unit,
                v.active_state,
                if v.restarted { "" } else { ", not restarted" }
            )),
            job_result::Kind::Kill(k) => s.push_str(&format!("; sent SIG{} to {} ({})", k.signal, k.pid, k.name)),
        }
    }
    s
}

/// Failure of a job command.
#[derive(Debug, thiserror::Error)]
pub enum JobCmdError {
    #[error("{host}: {source}")]
    Call { host: String, source: ops_proto::tls::ConnectError },
    #[error("{host}: lost the connection {retries} times in a row while watching job {job}; it may still be running: `controller job watch {host} {job} --from {offset}` resumes")]
    GaveUp { host: String, job: String, retries: u32, offset: u64 },
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

/// Starts a job; retries once with the same idempotency key if the answer was lost.
pub async fn start(dialer: &Dialer, host: &Host, req: StartJobRequest) -> Result<Job, JobCmdError> {
    let wrap = |source| JobCmdError::Call { host: host.name.clone(), source };
    let mut last = None;
    for attempt in 1..=2 {
        let mut client = match dialer.connect(host).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(retry_delay(attempt)).await;
                continue;
            }
        };
        match client.start_job(req.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            // Only transport failures are retried: the agent's own refusals are final.
            Err(s) if s.code() == tonic::Code::Unavailable => last = Some(call_error(&s)),
            Err(s) => return Err(wrap(call_error(&s))),
        }
        tokio::time::sleep(retry_delay(attempt)).await;
    }
    Err(wrap(last.unwrap_or_else(|| ops_proto::tls::ConnectError::new(ops_proto::tls::FailureKind::Protocol, "no answer from the agent"))))
}

/// Follows a job's output from `offset` to its end, writing output to `out`;
/// reconnects after a dropped connection and resumes exactly where it was.
pub async fn watch<W: Write + ?Sized>(
    dialer: &Dialer,
    host: &Host,
    job_id: &str,
    mut offset: u64,
    out: &mut W,
) -> Result<Job, JobCmdError> {
    let mut retries = 0u32;
    let mut client: Option<AgentClient<Channel>> = None;
    loop {
        if client.is_none() {
            match dialer.connect_streaming(host).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    retries += 1;
                    if retries > MAX_WATCH_RETRIES {
                        return Err(JobCmdError::Call { host: host.name.clone(), source: e });
                    }
                    let pause = retry_delay(retries);
                    tracing::warn!("{}: {e}; reconnecting in {pause:?}", host.name);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let stream = c.watch_job(WatchJobRequest { job_id: job_id.to_string(), from_offset: offset }).await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                client = None;
                retries += 1;
                if retries > MAX_WATCH_RETRIES {
                    return Err(JobCmdError::GaveUp { host: host.name.clone(), job: job_id.into(), retries, offset });
                }
                tokio::time::sleep(retry_delay(retries)).await;
                continue;
            }
            Err(s) => return Err(JobCmdError::Call { host: host.name.clone(), source: call_error(&s) }),
        };
        loop {
            match stream.next().await {
                Some(Ok(ev)) => match ev.event {
                    Some(job_event::Event::Output(chunk)) => {
                        // Skip anything before our offset, in case the agent resent it.
                        let skip = offset.saturating_sub(chunk.offset) as usize;
                        if chunk.offset > offset {
                            tracing::warn!("agent skipped output from {offset} to {}", chunk.offset);
                        }
                        if skip < chunk.data.len() {
                            out.write_all(&chunk.data[skip..])?;
                            out.flush()?;
                        }
                        offset = offset.max(chunk.offset + chunk.data.len() as u64);
                        retries = 0;
                    }
                    Some(job_event::Event::Finished(job)) => return Ok(job),
                    None => {}
                },
                Some(Err(s)) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled) => {
                    tracing::warn!("{}: watch of job {job_id} interrupted ({}); resuming from byte {offset}", host.name, call_error(&s));
                    break;
                }
                Some(Err(s)) => return Err(JobCmdError::Call { host: host.name.clone(), source: call_error(&s) }),
                None => {
                    tracing::warn!("{}: watch of job {job_id} ended without a final state; resuming from byte {offset}", host.name);
                    break;
                }
            }
        }
        client = None;
        retries += 1;
        if retries > MAX_WATCH_RETRIES {
            return Err(JobCmdError::GaveUp { host: host.name.clone(), job: job_id.into(), retries, offset });
        }
        tokio::time::sleep(retry_delay(retries)).await;
    }
}

/// Prints a finished job's summary in the chosen format; returns the exit code.
pub fn finish(job: &Job, output: OutputFormat, out: &mut dyn Write) -> std::io::Result<i32> {
    match output {
        OutputFormat::Json => writeln!(out, "{}", job_json(job))?,
        OutputFormat::Table => writeln!(out, "{}", job_line(job))?,
    }
    Ok(if job.state == JobState::Succeeded as i32 { 0 } else { 1 })
}

/// Jobs `job list` shows when no limit is given.
const DEFAULT_LIST_JOBS: u32 = 50;
/// Jobs asked for per `ListJobs` page; the agent may send fewer and say more follow.
const LIST_PAGE_SIZE: usize = 100;

/// `job list`: the newest `limit` jobs (0: `DEFAULT_LIST_JOBS`), following the agent's
/// pages, which it keeps small enough for any answer to fit in a gRPC message.
pub async fn list(dialer: &Dialer, host: &Host, limit: u32) -> Result<Vec<Job>, JobCmdError> {
    let wrap = |source| JobCmdError::Call { host: host.name.clone(), source };
    let want = if limit == 0 { DEFAULT_LIST_JOBS } else { limit } as usize;
    let mut c = dialer.connect(host).await.map_err(wrap)?;
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    while jobs.len() < want {
        let page_size = u32::try_from((want - jobs.len()).min(LIST_PAGE_SIZE)).unwrap_or(u32::MAX);
        let req = ListJobsRequest { limit: page_size, page_size, page_token };
        let page = c.list_jobs(req).await.map_err(|s| wrap(call_error(&s)))?.into_inner();
        // An empty page ends the walk even with a token, so a confused agent cannot loop us.
        let empty = page.jobs.is_empty();
        jobs.extend(page.jobs);
        if empty || page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    jobs.truncate(want);
    Ok(jobs)
}

/// `job get`.
pub async fn get(dialer: &Dialer, host: &Host, job_id: &str) -> Result<Job, JobCmdError> {
    let wrap = |source| JobCmdError::Call { host: host.name.clone(), source };
    let mut c = dialer.connect(host).await.map_err(wrap)?;
    Ok(c.get_job(GetJobRequest { job_id: job_id.into() }).await.map_err(|s| wrap(call_error(&s)))?.into_inner())
}

/// `job cancel`.
pub async fn cancel(dialer: &Dialer, host: &Host, job_id: &str) -> Result<Job, JobCmdError> {
    let wrap = |source| JobCmdError::Call { host: host.name.clone(), source };
    let mut c = dialer.connect(host).await.map_err(wrap)?;
    Ok(c.cancel_job(CancelJobRequest { job_id: job_id.into() }).await.map_err(|s| wrap(call_error(&s)))?.into_inner())
}

/// The table of `job list`.
pub fn render_list(jobs: &[Job]) -> String {
    let mut t = Table::new(["JOB", "KIND", "STATE", "EXIT", "OUTPUT", "BY", "CREATED"]);
    for j in jobs {
        let v = job_json(j);
        let created = chrono::DateTime::from_timestamp_millis(j.created_unix_ms)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        t.row([
            j.id.clone(),
            v["kind"].as_str().unwrap_or("-").to_string(),
            state_name(j.state).to_string(),
            j.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            human_bytes(j.output_bytes),
            j.requested_by.clone(),
            created,
        ]);
    }
    t.render()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_args_become_one_rule() {
        let s = spec(&KindArgs::Cleanup {
            root: "/tmp".into(),
            pattern: "*".into(),
            older_than: parse_age("7d").unwrap(),
            by: TimeBy::Atime,
            dry_run: true,
        });
        let Some(job_spec::Kind::Cleanup(c)) = s.kind else { panic!() };
        assert!(c.dry_run);
        assert_eq!(c.rules[0].older_than_seconds, 7 * 86400);
        assert_eq!(c.rules[0].by, TimeField::Atime as i32);
    }

    #[test]
    fn final_states() {
        assert!(!is_final(JobState::Running as i32));
        assert!(is_final(JobState::Interrupted as i32));
        assert_eq!(state_name(JobState::TimedOut as i32), "timed_out");
    }
}
