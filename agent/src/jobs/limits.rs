//! Field-by-field bounds on job requests, checked before anything is stored or audited
//! in full: a request is refused with INVALID_ARGUMENT naming the field and its limit.
//!
//! Without them one request could make the agent hold and persist megabytes (a 3.9 MB
//! idempotency key, 20,000 cleanup rules) and every later `ListJobs` answer outgrow the
//! 4 MB message limit. This module must never accept a field it does not bound.

use ops_proto::v1::job_spec::Kind;
use ops_proto::v1::StartJobRequest;

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Most rules in one cleanup job.
pub const MAX_CLEANUP_RULES: usize = 64;
/// Longest cleanup root, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest cleanup file-name pattern, in bytes (a file name is at most 255).
pub const MAX_PATTERN_BYTES: usize = 255;
/// Longest action name, in bytes.
pub const MAX_ACTION_NAME_BYTES: usize = 128;
/// Longest unit name, in bytes (systemd's own limit).
pub const MAX_UNIT_NAME_BYTES: usize = 255;
/// Most package names a patch job may exclude.
pub const MAX_EXCLUDES: usize = 256;
/// Longest excluded package name or glob, in bytes.
pub const MAX_PACKAGE_NAME_BYTES: usize = 255;
/// Longest signal name, in bytes (`SIGRTMIN+15` fits).
pub const MAX_SIGNAL_NAME_BYTES: usize = 16;
/// Longest expected process name, in bytes.
pub const MAX_PROCESS_NAME_BYTES: usize = 255;

fn too_long(field: &str, len: usize, max: usize) -> String {
    format!("{field} is {len} bytes long; the limit is {max} bytes")
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(too_long(field, value.len(), max));
    }
    Ok(())
}

/// Ok when every field of the request is within its bound; else which one is not.
pub fn check_request(req: &StartJobRequest) -> Result<(), String> {
    check_len("idempotency_key", &req.idempotency_key, MAX_IDEMPOTENCY_KEY_BYTES)?;
    let Some(kind) = req.spec.as_ref().and_then(|s| s.kind.as_ref()) else {
        return Ok(());
    };
    match kind {
        Kind::Patch(p) => {
            if p.exclude.len() > MAX_EXCLUDES {
                return Err(format!(
                    "patch.exclude has {} entries; the limit is {MAX_EXCLUDES}",
                    p.exclude.len()
                ));
            }
            for (i, e) in p.exclude.iter().enumerate() {
                check_len(&format!("patch.exclude[{i}]"), e, MAX_PACKAGE_NAME_BYTES)?;
            }
        }
        Kind::Cleanup(c) => {
            if c.rules.len() > MAX_CLEANUP_RULES {
                return Err(format!(
                    "cleanup.rules has {} rules; the limit is {MAX_CLEANUP_RULES}",
                    c.rules.len()
                ));
            }
            for (i, r) in c.rules.iter().enumerate() {
                check_len(&format!("cleanup.rules[{i}].root"), &r.root, MAX_PATH_BYTES)?;
                check_len(&format!("cleanup.rules[{i}].pattern"), &r.pattern, MAX_PATTERN_BYTES)?;
            }
        }
        Kind::RotateLogs(_) => {}
        Kind::RestartService(r) => check_len("restart_service.unit", &r.unit, MAX_UNIT_NAME_BYTES)?,
        Kind::KillProcess(k) => {
            check_len("kill_process.signal", &k.signal, MAX_SIGNAL_NAME_BYTES)?;
            check_len("kill_process.expected_name", &k.expected_name, MAX_PROCESS_NAME_BYTES)?;
        }
        Kind::RunAction(a) => check_len("run_action.name", &a.name, MAX_ACTION_NAME_BYTES)?,
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ops_proto::v1::{job_spec, Cleanup, CleanupRule, JobSpec, RunAction};

    fn with(kind: job_spec::Kind) -> StartJobRequest {
        StartJobRequest {
            spec: Some(JobSpec { kind: Some(kind) }),
            ..Default::default()
        }
    }

    #[test]
    fn each_oversized_field_is_named_with_its_limit() {
        let mut r = with(job_spec::Kind::RunAction(RunAction { name: "x".into() }));
        assert!(check_request(&r).is_ok());
        r.idempotency_key = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
        let e = check_request(&r).unwrap_err();
        assert!(e.contains("idempotency_key") && e.contains("128"), "{e}");
        let r = with(job_spec::Kind::RunAction(RunAction { name: "a".repeat(200) }));
        assert!(check_request(&r).unwrap_err().contains("run_action.name"));
        let rule = CleanupRule { root: "/tmp".into(), pattern: "*".into(), ..Default::default() };
        let r = with(job_spec::Kind::Cleanup(Cleanup { rules: vec![rule.clone(); 65], dry_run: true }));
        assert!(check_request(&r).unwrap_err().contains("limit is 64"));
        let long = CleanupRule { pattern: "p".repeat(300), ..rule };
        let r = with(job_spec::Kind::Cleanup(Cleanup { rules: vec![long], dry_run: true }));
        assert!(check_request(&r).unwrap_err().contains("cleanup.rules[0].pattern"));
    }
}
