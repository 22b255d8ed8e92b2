//! `RotateLogs`: `logrotate -f` with the config file named in the agent's config (never
//! one from the request), and its state file when one is configured.

use super::{find_in_path, require_success, run, Report};
use crate::jobs::config::JobsConfig;
use crate::jobs::runner::{Cmd, JobCtx};

pub fn prepare(cfg: &JobsConfig) -> Result<(), String> {
    if !cfg.logrotate_config.is_file() {
        return Err(format!(
            "the logrotate config {} does not exist on this host (set [jobs] logrotate_config)",
            cfg.logrotate_config.display()
        ));
    }
    if find_in_path("logrotate").is_none() {
        return Err("logrotate is not installed on this host".into());
    }
    Ok(())
}

pub async fn execute(cfg: &JobsConfig, ctx: &mut JobCtx) -> Result<Report, Report> {
    let mut cmd = Cmd::new("logrotate").arg("-f");
    if let Some(state) = &cfg.logrotate_state_file {
        cmd = cmd.arg("-s").arg(state);
    }
    let f = run(ctx, &cmd.arg(&cfg.logrotate_config)).await?;
    require_success(&f, "logrotate")?;
    Ok(Report::succeeded(f.status.code(), None))
}
