//! `RestartService`: `systemctl restart UNIT` for units in the agent's allow-list, then
//! `systemctl is-active UNIT`; the result carries the unit's state after the restart.
//! The job succeeds only when the unit is `active` afterwards.
//!
//! `if_running` is systemd's try-restart as a runbook needs it: `systemctl is-active
//! UNIT` first, and a unit the host does not run is never restarted (a restart would
//! start it); that job succeeds with `restarted` false. The allow-list applies either way.

use std::path::{Path, PathBuf};

use ops_proto::v1::{job_result, RestartService, ServiceResult};

use super::{note, run, Outcome, Report};
use crate::jobs::config::{valid_unit_name, ServicesConfig};
use crate::jobs::runner::{Cmd, JobCtx};

/// `httpd` and `httpd.service` name the same unit.
pub fn normalize_unit(unit: &str) -> String {
    const SUFFIXES: &[&str] = &[
        ".service",
        ".socket",
        ".timer",
        ".target",
        ".mount",
        ".path",
        ".slice",
        ".scope",
        ".device",
        ".swap",
        ".automount",
    ];
    if SUFFIXES.iter().any(|s| unit.ends_with(s)) {
        unit.to_string()
    } else {
        format!("{unit}.service")
    }
}

/// A checked restart request.
#[derive(Debug)]
pub struct RestartPlan {
    /// The unit as the allow-list spells it.
    pub unit: String,
    /// Restart only when the unit is running.
    pub if_running: bool,
}

/// The unit to restart, as the allow-list spells it.
pub fn prepare(unit: &str, cfg: &ServicesConfig) -> Result<String, String> {
    if !valid_unit_name(unit) {
        return Err(format!("{unit:?} is not a valid systemd unit name"));
    }
    let wanted = normalize_unit(unit);
    cfg.allowed
        .iter()
        .find(|a| normalize_unit(a) == wanted)
        .cloned()
        .ok_or_else(|| {
            format!(
                "unit {unit} is not in this agent's [services] allowed list ({})",
                if cfg.allowed.is_empty() {
                    "empty".to_string()
                } else {
                    cfg.allowed.join(", ")
                }
            )
        })
}

/// Checks a request: the allow-list decides, whatever `if_running` says.
pub fn prepare_request(req: &RestartService, cfg: &ServicesConfig) -> Result<RestartPlan, String> {
    Ok(RestartPlan {
        unit: prepare(&req.unit, cfg)?,
        if_running: req.if_running,
    })
}

/// Whether an `is-active` answer means the host runs the unit: the states for which
/// `systemctl is-active` itself exits 0. `activating`, `deactivating`, `inactive`,
/// `failed` and anything unknown are not running.
pub fn is_running(active_state: &str) -> bool {
    matches!(active_state, "active" | "reloading")
}

pub async fn execute(
    plan: &RestartPlan,
    cfg: &ServicesConfig,
    ctx: &mut JobCtx,
) -> Result<Report, Report> {
    let systemctl = cfg
        .systemctl
        .clone()
        .unwrap_or_else(|| PathBuf::from("systemctl"));
    let unit = plan.unit.as_str();
    if plan.if_running {
        let before = active_state(&systemctl, unit, ctx).await?;
        if !is_running(&before) {
            note(
                ctx,
                &format!("{unit} is {before}: not running here, not restarted"),
            )
            .await?;
            return Ok(Report::succeeded(None, Some(result(unit, before, false))));
        }
    }
    let restart = run(ctx, &Cmd::new(&systemctl).args(["restart", unit])).await?;
    // Ask for the state even when the restart failed: it is what the operator needs next.
    let after = active_state(&systemctl, unit, ctx).await?;
    note(ctx, &format!("{unit} is {after}")).await?;
    let outcome = if !restart.success() {
        Outcome::Failed(format!(
            "systemctl restart {unit} failed: {}; the unit is {after}",
            restart.describe()
        ))
    } else if after != "active" {
        Outcome::Failed(format!("{unit} is {after} after the restart"))
    } else {
        Outcome::Succeeded
    };
    Ok(Report {
        outcome,
        exit_code: restart.status.code(),
        result: Some(result(unit, after, true)),
    })
}

/// The first line of `systemctl is-active UNIT`, or `unknown` when it printed nothing.
/// Its exit code is not a failure: it is non-zero for every state but a running one.
async fn active_state(systemctl: &Path, unit: &str, ctx: &mut JobCtx) -> Result<String, Report> {
    let state = run(
        ctx,
        &Cmd::new(systemctl).args(["is-active", unit]).capture(),
    )
    .await?;
    let first = String::from_utf8_lossy(&state.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    Ok(if first.is_empty() {
        "unknown".to_string()
    } else {
        first
    })
}

fn result(unit: &str, active_state: String, restarted: bool) -> job_result::Kind {
    job_result::Kind::Service(ServiceResult {
        unit: unit.to_string(),
        active_state,
        restarted,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_with_or_without_the_service_suffix() {
        let cfg = ServicesConfig {
            allowed: vec!["httpd".into(), "nginx.service".into()],
            systemctl: None,
        };
        assert_eq!(prepare("httpd.service", &cfg).unwrap(), "httpd");
        assert_eq!(prepare("nginx", &cfg).unwrap(), "nginx.service");
        assert!(prepare("sshd", &cfg)
            .unwrap_err()
            .contains("not in this agent's"));
        assert!(prepare("--now", &cfg).unwrap_err().contains("not a valid"));
        assert!(prepare("httpd.socket", &cfg).is_err());
    }

    #[test]
    fn if_running_does_not_widen_the_allow_list() {
        let cfg = ServicesConfig {
            allowed: vec!["httpd".into()],
            systemctl: None,
        };
        let req = |unit: &str| RestartService {
            unit: unit.into(),
            if_running: true,
        };
        let plan = prepare_request(&req("httpd.service"), &cfg).unwrap();
        assert_eq!((plan.unit.as_str(), plan.if_running), ("httpd", true));
        assert!(prepare_request(&req("sshd"), &cfg)
            .unwrap_err()
            .contains("not in this agent's"));
    }

    #[test]
    fn only_the_states_is_active_calls_running_count_as_running() {
        for s in ["active", "reloading"] {
            assert!(is_running(s), "{s}");
        }
        for s in [
            "inactive",
            "failed",
            "activating",
            "deactivating",
            "unknown",
            "",
        ] {
            assert!(!is_running(s), "{s}");
        }
    }
}
