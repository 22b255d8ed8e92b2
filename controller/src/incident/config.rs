//! `[incident]` in the controller's config: the high-CPU trigger, the services a restart
//! mitigation may restart, the instance type a scale-up moves to, where a new instance's
//! agent comes from, and how long mitigations wait. Validated before anything is asked.

use std::time::Duration;

use serde::Deserialize;

/// `[incident]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentConfig {
    /// CPU (CloudWatch CPUUtilization average) above which a host is in the high-CPU
    /// incident's trigger.
    #[serde(default = "default_threshold")]
    pub cpu_threshold: f64,
    /// For how long it must have stayed above (whole 5-minute periods).
    #[serde(default = "default_trigger", with = "crate::duration_text")]
    pub cpu_trigger: Duration,
    /// Services the restart mitigation restarts (each must be in the agent's allow-list).
    #[serde(default = "default_services")]
    pub services: Vec<String>,
    /// The instance type a scale-up changes to (the seed hard-coded t3.small); unset, the
    /// scale-up mitigation is refused saying so.
    #[serde(default)]
    pub scale_up_type: Option<String>,
    /// Where a new instance's agent comes from (`controller agent user-data`); unset, the
    /// add-instance mitigation is refused saying so.
    #[serde(default)]
    pub agent_url: Option<String>,
    #[serde(default)]
    pub agent_sha256: Option<String>,
    /// How long an instance may take to stop or start.
    #[serde(default = "default_state_deadline", with = "crate::duration_text")]
    pub state_deadline: Duration,
    /// How long its agent may take to answer again after a start.
    #[serde(default = "default_agent_deadline", with = "crate::duration_text")]
    pub agent_deadline: Duration,
    /// Between two looks at an instance's state.
    #[serde(default = "default_poll", with = "crate::duration_text")]
    pub poll: Duration,
    /// `db-connection`: queries running at least this long are listed (and may be killed).
    #[serde(default = "default_long_query", with = "crate::duration_text")]
    pub long_query: Duration,
    /// `db-connection`: the `[[probe_targets]]` name the agents know the database by.
    #[serde(default = "default_probe_target")]
    pub db_probe_target: String,
    /// `db-connection --scale-up`: the class to move the database to; unset, refused.
    #[serde(default)]
    pub db_scale_up_class: Option<String>,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        IncidentConfig {
            cpu_threshold: default_threshold(),
            cpu_trigger: default_trigger(),
            services: default_services(),
            scale_up_type: None,
            agent_url: None,
            agent_sha256: None,
            state_deadline: default_state_deadline(),
            agent_deadline: default_agent_deadline(),
            poll: default_poll(),
            long_query: default_long_query(),
            db_probe_target: default_probe_target(),
            db_scale_up_class: None,
        }
    }
}

fn default_threshold() -> f64 {
    80.0
}
fn default_trigger() -> Duration {
    Duration::from_secs(600)
}
fn default_services() -> Vec<String> {
    vec!["httpd".into()]
}
fn default_state_deadline() -> Duration {
    Duration::from_secs(600)
}
fn default_agent_deadline() -> Duration {
    Duration::from_secs(300)
}
fn default_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_long_query() -> Duration {
    Duration::from_secs(60)
}
fn default_probe_target() -> String {
    "database".into()
}

impl IncidentConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1.0..=100.0).contains(&self.cpu_threshold) {
            return Err(format!("[incident] cpu_threshold = {}: must be between 1 and 100", self.cpu_threshold));
        }
        if self.cpu_trigger.as_secs() < 300 || self.cpu_trigger.as_secs() % 300 != 0 {
            return Err("[incident] cpu_trigger must be whole 5-minute periods (\"10m\", \"15m\")".into());
        }
        for s in &self.services {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
                return Err(format!("[incident] services: {s:?} is not a unit name"));
            }
        }
        if let Some(t) = &self.scale_up_type {
            if !t.contains('.') || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
                return Err(format!("[incident] scale_up_type = {t:?} is not an instance type (e.g. \"t3.small\")"));
            }
        }
        if self.agent_url.is_some() != self.agent_sha256.is_some() {
            return Err("[incident] agent_url and agent_sha256 go together".into());
        }
        if let Some(c) = &self.db_scale_up_class {
            if !c.starts_with("db.") {
                return Err(format!("[incident] db_scale_up_class = {c:?} is not a DB instance class (e.g. \"db.t3.small\")"));
            }
        }
        if self.long_query.is_zero() {
            return Err("[incident] long_query must be at least 1s".into());
        }
        if self.poll.is_zero() || self.poll > self.state_deadline {
            return Err("[incident] poll must be between 1s and state_deadline".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_that_is_not_whole_periods_is_refused() {
        assert!(IncidentConfig::default().validate().is_ok());
        let c = IncidentConfig { cpu_trigger: Duration::from_secs(420), ..IncidentConfig::default() };
        assert!(c.validate().unwrap_err().contains("5-minute"));
        let c = IncidentConfig { scale_up_type: Some("big".into()), ..IncidentConfig::default() };
        assert!(c.validate().unwrap_err().contains("instance type"));
    }
}
