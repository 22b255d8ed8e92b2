//! Plain-data views of wire job types for logs and the audit log: a job spec as JSON,
//! kind and state names. The generated prost types have no serde, and the audit log must
//! not depend on their Debug formatting.

use ops_proto::v1::job_result;
use ops_proto::v1::job_spec::Kind;
use ops_proto::v1::{JobResult, JobSpec, JobState, TimeField};
use serde_json::{json, Value};

/// The kind's name as users type it (`patch`, `cleanup`, ...).
pub fn kind_name(spec: &JobSpec) -> &'static str {
    match &spec.kind {
        Some(Kind::Patch(_)) => "patch",
        Some(Kind::Cleanup(_)) => "cleanup",
        Some(Kind::RotateLogs(_)) => "rotate-logs",
        Some(Kind::RestartService(_)) => "restart-service",
        Some(Kind::KillProcess(_)) => "kill",
        Some(Kind::RunAction(_)) => "action",
        None => "none",
    }
}

/// The spec as a JSON object with a `kind` field.
pub fn spec_json(spec: &JobSpec) -> Value {
    match &spec.kind {
        Some(Kind::Patch(p)) => json!({
            "kind": "patch",
            "security_only": p.security_only,
            "simulate": p.simulate,
            "exclude": p.exclude,
        }),
        Some(Kind::Cleanup(c)) => json!({
            "kind": "cleanup",
            "dry_run": c.dry_run,
            "rules": c.rules.iter().map(|r| json!({
                "root": r.root,
                "pattern": r.pattern,
                "older_than_seconds": r.older_than_seconds,
                "by": time_field_name(r.by),
            })).collect::<Vec<_>>(),
        }),
        Some(Kind::RotateLogs(_)) => json!({ "kind": "rotate-logs" }),
        Some(Kind::RestartService(r)) => json!({
            "kind": "restart-service",
            "unit": r.unit,
            "if_running": r.if_running,
        }),
        Some(Kind::KillProcess(k)) => json!({
            "kind": "kill",
            "pid": k.pid,
            "signal": k.signal,
            "expected_name": k.expected_name,
        }),
        Some(Kind::RunAction(a)) => json!({ "kind": "action", "name": a.name }),
        None => json!({ "kind": "none" }),
    }
}

/// A job's result as a JSON object with a `kind` field (`null` when there is none).
pub fn result_json(result: Option<&JobResult>) -> Value {
    match result.and_then(|r| r.kind.as_ref()) {
        Some(job_result::Kind::Patch(p)) => json!({
            "kind": "patch",
            "package_manager": p.package_manager,
            "reboot_required": p.reboot_required,
            "simulated": p.simulated,
            "packages": p.packages.iter().map(|c| json!({
                "name": c.name, "from": c.from_version, "to": c.to_version,
            })).collect::<Vec<_>>(),
        }),
        Some(job_result::Kind::Cleanup(c)) => json!({
            "kind": "cleanup",
            "files": c.files,
            "bytes": c.bytes,
            "skipped": c.skipped,
            "sample_paths": c.sample_paths,
        }),
        Some(job_result::Kind::Service(s)) => {
            json!({
                "kind": "service",
                "unit": s.unit,
                "active_state": s.active_state,
                "restarted": s.restarted,
            })
        }
        Some(job_result::Kind::Kill(k)) => {
            json!({ "kind": "kill", "pid": k.pid, "name": k.name, "signal": k.signal })
        }
        None => Value::Null,
    }
}

fn time_field_name(v: i32) -> &'static str {
    match TimeField::try_from(v) {
        Ok(TimeField::Atime) => "atime",
        Ok(TimeField::Mtime) => "mtime",
        _ => "unspecified",
    }
}

/// A state's name as users read it.
pub fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state) {
        Ok(JobState::Queued) => "queued",
        Ok(JobState::Running) => "running",
        Ok(JobState::Succeeded) => "succeeded",
        Ok(JobState::Failed) => "failed",
        Ok(JobState::Cancelled) => "cancelled",
        Ok(JobState::TimedOut) => "timed_out",
        Ok(JobState::Interrupted) => "interrupted",
        _ => "unspecified",
    }
}

/// The state a name from `state_name` stands for.
pub fn state_from_name(name: &str) -> Option<JobState> {
    [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::TimedOut,
        JobState::Interrupted,
    ]
    .into_iter()
    .find(|s| state_name(*s as i32) == name)
}

/// Whether a state is final.
pub fn is_finished(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Succeeded
            | JobState::Failed
            | JobState::Cancelled
            | JobState::TimedOut
            | JobState::Interrupted)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ops_proto::v1::{Cleanup, CleanupRule};

    #[test]
    fn cleanup_spec_renders_every_field() {
        let spec = JobSpec {
            kind: Some(Kind::Cleanup(Cleanup {
                rules: vec![CleanupRule {
                    root: "/tmp".into(),
                    pattern: "*.log".into(),
                    older_than_seconds: 60,
                    by: TimeField::Atime as i32,
                }],
                dry_run: true,
            })),
        };
        let v = spec_json(&spec);
        assert_eq!(v["kind"], "cleanup");
        assert_eq!(v["dry_run"], true);
        assert_eq!(v["rules"][0]["by"], "atime");
        assert_eq!(v["rules"][0]["older_than_seconds"], 60);
    }

    #[test]
    fn restart_and_patch_flags_are_in_the_json() {
        let spec = JobSpec {
            kind: Some(Kind::RestartService(ops_proto::v1::RestartService {
                unit: "httpd".into(),
                if_running: true,
            })),
        };
        assert_eq!(spec_json(&spec)["if_running"], true);
        let service = JobResult {
            kind: Some(job_result::Kind::Service(ops_proto::v1::ServiceResult {
                unit: "httpd".into(),
                active_state: "inactive".into(),
                restarted: false,
            })),
        };
        assert_eq!(result_json(Some(&service))["restarted"], false);
        let patch = JobResult {
            kind: Some(job_result::Kind::Patch(ops_proto::v1::PatchResult {
                simulated: true,
                ..Default::default()
            })),
        };
        assert_eq!(result_json(Some(&patch))["simulated"], true);
    }

    #[test]
    fn final_states_are_recognised() {
        assert!(is_finished(JobState::Interrupted as i32));
        assert!(!is_finished(JobState::Running as i32));
        assert_eq!(state_name(JobState::TimedOut as i32), "timed_out");
    }
}
