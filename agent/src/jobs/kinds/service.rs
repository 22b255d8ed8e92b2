//! `RestartService`: `systemctl restart UNIT` for units in the agent's allow-list, then
//! `systemctl is-active UNIT`; the result carries the unit's state after the restart.
//! The job succeeds only when the unit is `active` afterwards.

use std::path::PathBuf;

use ops_proto::v1::{job_result, ServiceResult};

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

pub async fn execute(unit: &str, cfg: &ServicesConfig, ctx: &mut JobCtx) -> Result<Report, Report> {
    let systemctl = cfg
        .systemctl
        .clone()
        .unwrap_or_else(|| PathBuf::from("systemctl"));
    let restart = run(ctx, &Cmd::new(&systemctl).args(["restart", unit])).await?;
    // Ask for the state even when the restart failed: it is what the operator needs next.
    let state = run(
        ctx,
        &Cmd::new(&systemctl).args(["is-active", unit]).capture(),
    )
    .await?;
    let active_state = String::from_utf8_lossy(&state.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let active_state = if active_state.is_empty() {
        "unknown".to_string()
    } else {
        active_state
    };
    note(ctx, &format!("{unit} is {active_state}")).await?;
    let result = job_result::Kind::Service(ServiceResult {
        unit: unit.to_string(),
        active_state: active_state.clone(),
    });
    let outcome = if !restart.success() {
        Outcome::Failed(format!(
            "systemctl restart {unit} failed: {}; the unit is {active_state}",
            restart.describe()
        ))
    } else if active_state != "active" {
        Outcome::Failed(format!("{unit} is {active_state} after the restart"))
    } else {
        Outcome::Succeeded
    };
    Ok(Report {
        outcome,
        exit_code: restart.status.code(),
        result: Some(result),
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
}
