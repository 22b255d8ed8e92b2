//! The steps of a weekly maintenance, in the runbook's order, and the agent jobs each
//! host step is. Pure: what to run is decided here from the config, without I/O, so the
//! order, the dry-run substitutes and the names that key the journal are unit-tested.

use std::time::Duration;

use ops_proto::v1::{job_spec, Cleanup, CleanupRule, JobSpec, Patch, RestartService, RotateLogs, RunAction, TimeField};
use serde::Serialize;

use super::config::{CleanupRuleConfig, MaintenanceConfig, TimeBy};

/// The fleet-level steps, in order. Their names key the journal and the report.
pub const EBS_SNAPSHOTS: &str = "1 ebs-snapshots";
pub const RDS_SNAPSHOT: &str = "2 rds-snapshot";
pub const DATABASE: &str = "5 database";
pub const SECURITY_REVIEW: &str = "7 security-review";
pub const PERFORMANCE_BASELINE: &str = "8 performance-baseline";
pub const BACKUP_VERIFY: &str = "9 backup-verify";
pub const VERIFY: &str = "10 verification";

/// Which rollout a host step belongs to: steps 3 and 4 go host by host before the
/// database, step 6 host by host after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Steps 3 and 4: patches, dependencies, restarts, cleanup.
    Updates,
    /// Step 6: log rotation and log cleanup.
    Logs,
}

/// One step on one host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostStep {
    /// The journal key, e.g. `3 patch`, `3 restart httpd`.
    pub name: String,
    pub phase: Phase,
    /// What it does, for the plan.
    pub what: String,
    /// The agent job; `None` when a dry run only names it (nothing is asked of the agent).
    pub spec: Option<JobSpec>,
}

fn job(kind: job_spec::Kind) -> Option<JobSpec> {
    Some(JobSpec { kind: Some(kind) })
}

fn rules(rules: &[CleanupRuleConfig], host: &str) -> Vec<CleanupRule> {
    rules
        .iter()
        .map(|r| CleanupRule {
            root: r.root.replace("{name}", host),
            pattern: r.pattern.clone(),
            older_than_seconds: r.older_than.as_secs(),
            by: match r.by {
                TimeBy::Atime => TimeField::Atime as i32,
                TimeBy::Mtime => TimeField::Mtime as i32,
            },
        })
        .collect()
}

fn describe_rules(rules: &[CleanupRule]) -> String {
    rules
        .iter()
        .map(|r| {
            let by = if r.by == TimeField::Atime as i32 { "not accessed for" } else { "older than" };
            format!("{}/{} {by} {}", r.root.trim_end_matches('/'), r.pattern, humantime::format_duration(Duration::from_secs(r.older_than_seconds)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A step's configured action (none when empty), then a restart of each unit where the
/// host runs it; neither is asked of an agent in a dry run.
fn action_and_restarts(
    push: &mut impl FnMut(String, Phase, String, Option<JobSpec>, bool),
    step: &str,
    purpose: &str,
    action: &str,
    units: &[String],
) {
    if !action.is_empty() {
        let spec = job(job_spec::Kind::RunAction(RunAction { name: action.to_string() }));
        push(format!("{step} action {action}"), Phase::Updates, format!("{purpose}: action {action}"), spec, false);
    }
    for unit in units {
        let spec = job(job_spec::Kind::RestartService(RestartService { unit: unit.clone(), if_running: true }));
        push(format!("{step} restart {unit}"), Phase::Updates, format!("restart {unit} where it runs"), spec, false);
    }
}

/// The steps of one host in one phase, in order.
pub fn phase_steps(cfg: &MaintenanceConfig, host: &str, dry_run: bool, phase: Phase) -> Vec<HostStep> {
    host_steps(cfg, host, dry_run).into_iter().filter(|s| s.phase == phase).collect()
}

/// The steps of one host, in order. A dry run keeps every step, each turned into what
/// can be asked without changing anything (a simulated patch, a cleanup that only
/// counts) or, when nothing can, left without a job and only named.
pub fn host_steps(cfg: &MaintenanceConfig, host: &str, dry_run: bool) -> Vec<HostStep> {
    let mut steps = Vec::new();
    let mut push = |name: String, phase: Phase, what: String, spec: Option<JobSpec>, safe_in_dry_run: bool| {
        let spec = if dry_run && !safe_in_dry_run { None } else { spec };
        steps.push(HostStep { name, phase, what, spec });
    };
    let patch = |security_only| job(job_spec::Kind::Patch(Patch { security_only, simulate: dry_run, exclude: vec![] }));
    push("3 patch".into(), Phase::Updates, "full package update".into(), patch(false), true);
    action_and_restarts(&mut push, "3", "application dependencies", &cfg.app_dependency_action, &cfg.services);
    if !cfg.cleanup.is_empty() {
        let r = rules(&cfg.cleanup, host);
        let what = format!("remove {}", describe_rules(&r));
        push("3 cleanup".into(), Phase::Updates, what, job(job_spec::Kind::Cleanup(Cleanup { rules: r, dry_run })), true);
    }
    push("4 security-patch".into(), Phase::Updates, "security updates".into(), patch(true), true);
    action_and_restarts(&mut push, "4", "certificate renewal", &cfg.cert_renewal_action, &cfg.security_services);
    push("6 logrotate".into(), Phase::Logs, "logrotate -f".into(), job(job_spec::Kind::RotateLogs(RotateLogs {})), false);
    if !cfg.log_cleanup.is_empty() {
        let r = rules(&cfg.log_cleanup, host);
        let what = format!("remove {}", describe_rules(&r));
        push("6 log-cleanup".into(), Phase::Logs, what, job(job_spec::Kind::Cleanup(Cleanup { rules: r, dry_run })), true);
    }
    steps
}

/// The RDS snapshot's name for a run: the prefix and the run's start time, so a resumed
/// run asks for the same name and never takes a second snapshot.
pub fn rds_snapshot_name(prefix: &str, started: chrono::DateTime<chrono::Utc>) -> String {
    format!("{prefix}-{}", started.format("%Y%m%d-%H%M%S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(steps: &[HostStep]) -> Vec<&str> {
        steps.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn the_host_steps_follow_the_runbook() {
        let steps = host_steps(&MaintenanceConfig::default(), "web-1", false);
        assert_eq!(
            names(&steps),
            [
                "3 patch",
                "3 action npm-audit-fix",
                "3 restart httpd",
                "3 cleanup",
                "4 security-patch",
                "4 action certbot-renew-dry-run",
                "4 restart fail2ban",
                "6 logrotate",
                "6 log-cleanup"
            ]
        );
        assert!(steps.iter().all(|s| s.spec.is_some()));
        // A restart never starts a service the host does not run.
        let Some(job_spec::Kind::RestartService(r)) = steps[2].spec.as_ref().and_then(|s| s.kind.clone()) else { panic!() };
        assert!(r.if_running);
        assert!(steps[3].what.contains("/tmp/* not accessed for 7days"), "{}", steps[3].what);
    }

    #[test]
    fn a_dry_run_changes_nothing() {
        for s in host_steps(&MaintenanceConfig::default(), "web-1", true) {
            match s.spec.and_then(|j| j.kind) {
                None => {}
                Some(job_spec::Kind::Patch(p)) => assert!(p.simulate, "{}", s.name),
                Some(job_spec::Kind::Cleanup(c)) => assert!(c.dry_run, "{}", s.name),
                Some(other) => panic!("{} would run {other:?} in a dry run", s.name),
            }
        }
    }

    #[test]
    fn cleanup_roots_take_the_host_name_and_empty_actions_are_left_out() {
        let mut cfg = MaintenanceConfig { app_dependency_action: String::new(), ..MaintenanceConfig::default() };
        cfg.cleanup[0].root = "/lab/{name}/tmp".into();
        let steps = host_steps(&cfg, "web-2", false);
        assert!(!names(&steps).iter().any(|n| n.contains("npm")));
        let Some(job_spec::Kind::Cleanup(c)) = steps.iter().find(|s| s.name == "3 cleanup").and_then(|s| s.spec.clone()).and_then(|s| s.kind) else {
            panic!()
        };
        assert_eq!(c.rules[0].root, "/lab/web-2/tmp");
    }

    #[test]
    fn the_rds_snapshot_is_named_from_the_run() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-06T02:00:05Z").unwrap().with_timezone(&chrono::Utc);
        assert_eq!(rds_snapshot_name("techhealth-maintenance", t), "techhealth-maintenance-20261206-020005");
    }
}
