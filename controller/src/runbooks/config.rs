//! `[runbooks]` in the controller config: what the runbooks look at. Every key has a
//! default taken from the TechHealth runbooks they replace, so an empty section (or none)
//! checks the TechHealth stack:
//!
//! ```toml
//! [runbooks]
//! stack_name = "TechHealthInfrastructureStack"
//! app_log_group = "/aws/ec2/techhealth"
//! auth_log_group = "/aws/ec2/auth"
//! cloudtrail_log_group = "CloudTrail/TechHealthAuditTrail"
//! trail_name = "TechHealthAuditTrail"     # asked of CloudTrail: exists, logging, multi-region, validated
//! trail_max_delivery_age = "24h"          # and delivered within this window
//! db_instance_id = "techhealth-database"
//! db_secret_id = "TechHealth-DB-Credentials"
//! error_pattern = "ERROR"
//! failed_login_pattern = "\"Failed password\""
//! app_url = "http://{public_ip}/"          # per instance: tag AppUrl overrides
//! app_url_tag = "AppUrl"
//! tls_endpoint = "{public_ip}:443"         # per instance: tag TlsEndpoint overrides
//! tls_endpoint_tag = "TlsEndpoint"
//! tls_server_name = "techhealth.com"
//! # tls_ca_file = "private-ca.pem"        # extra CAs the HTTPS certificates may chain to
//! http_timeout = "10s"
//! failed_login_threshold = 5
//! ebs_snapshot_tags = { Purpose = "Automated" }
//! ebs_snapshot_max_age = "26h"            # newest snapshot of every fleet volume
//! # log_page_limit = 1000                 # events per FilterLogEvents page
//! unreachable = "fail"                    # a silent agent fails its check ("warn": warns)
//! deadline = "120s"                       # the whole run; what has not answered fails its check
//! ```
//!
//! Templates take `{public_ip}`, `{private_ip}`, `{instance_id}`, `{name}` and `{host}`
//! (the host part of the agent address).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// `[runbooks]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunbooksConfig {
    /// The CloudFormation stack whose status the daily check reports.
    pub stack_name: String,
    /// Application log group searched for `error_pattern`.
    pub app_log_group: String,
    /// Auth log group searched for `failed_login_pattern`.
    pub auth_log_group: String,
    /// CloudTrail's log group (security review).
    pub cloudtrail_log_group: String,
    /// The trail the compliance check asks CloudTrail about (name or ARN).
    pub trail_name: String,
    /// The trail must have delivered log files within this window, e.g. "24h".
    #[serde(with = "crate::duration_text")]
    pub trail_max_delivery_age: Duration,
    /// The database whose automated snapshots are checked.
    pub db_instance_id: String,
    /// The Secrets Manager secret holding the database credentials.
    pub db_secret_id: String,
    /// Filter pattern of application errors.
    pub error_pattern: String,
    /// Filter pattern of failed logins.
    pub failed_login_pattern: String,
    /// Application URL template of a host (HTTP GET, 200 is healthy).
    pub app_url: String,
    /// Instance tag whose value, when present, is the application URL.
    pub app_url_tag: String,
    /// host:port template of a host's HTTPS endpoint (certificate expiry).
    pub tls_endpoint: String,
    /// Instance tag whose value, when present, is the HTTPS host:port.
    pub tls_endpoint_tag: String,
    /// The name sent in the TLS handshake (SNI) to the HTTPS endpoint.
    pub tls_server_name: String,
    /// PEM file of extra CA certificates the probed HTTPS certificates may chain to (a
    /// private CA), beside the system's trust store.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Deadline of each HTTP and TLS probe, e.g. "10s".
    #[serde(with = "crate::duration_text")]
    pub http_timeout: Duration,
    /// More failed logins than this is an action item.
    pub failed_login_threshold: u64,
    /// Tags of the automated EBS snapshots.
    pub ebs_snapshot_tags: BTreeMap<String, String>,
    /// Every volume of the fleet must have an automated snapshot newer than this, e.g. "26h".
    #[serde(with = "crate::duration_text")]
    pub ebs_snapshot_max_age: Duration,
    /// Events per FilterLogEvents page; unset lets the service choose.
    pub log_page_limit: Option<i32>,
    /// What a host that did not answer does to a check that asked it.
    pub unreachable: Unreachable,
    /// The whole run's deadline (`--deadline` overrides): an AWS call, a probe or an agent
    /// that has not answered by then fails its own check, named; the report still comes.
    #[serde(with = "crate::duration_text")]
    pub deadline: Duration,
}

/// `[runbooks] unreachable`: a host that did not answer (or could not be dialled) fails
/// the check that asked it (the default), or only warns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unreachable {
    #[default]
    Fail,
    Warn,
}

impl Default for RunbooksConfig {
    fn default() -> Self {
        RunbooksConfig {
            stack_name: "TechHealthInfrastructureStack".into(),
            app_log_group: "/aws/ec2/techhealth".into(),
            auth_log_group: "/aws/ec2/auth".into(),
            cloudtrail_log_group: "CloudTrail/TechHealthAuditTrail".into(),
            trail_name: "TechHealthAuditTrail".into(),
            trail_max_delivery_age: Duration::from_secs(24 * 3600),
            db_instance_id: "techhealth-database".into(),
            db_secret_id: "TechHealth-DB-Credentials".into(),
            error_pattern: "ERROR".into(),
            failed_login_pattern: "\"Failed password\"".into(),
            app_url: "http://{public_ip}/".into(),
            app_url_tag: "AppUrl".into(),
            tls_endpoint: "{public_ip}:443".into(),
            tls_endpoint_tag: "TlsEndpoint".into(),
            tls_server_name: "techhealth.com".into(),
            tls_ca_file: None,
            http_timeout: Duration::from_secs(10),
            failed_login_threshold: 5,
            ebs_snapshot_tags: BTreeMap::from([("Purpose".to_string(), "Automated".to_string())]),
            ebs_snapshot_max_age: Duration::from_secs(26 * 3600),
            log_page_limit: None,
            unreachable: Unreachable::Fail,
            deadline: Duration::from_secs(120),
        }
    }
}

/// The values a template may use.
#[derive(Debug, Clone, Default)]
pub struct TemplateVars<'a> {
    pub public_ip: Option<&'a str>,
    pub private_ip: Option<&'a str>,
    pub instance_id: Option<&'a str>,
    pub name: Option<&'a str>,
    pub host: Option<&'a str>,
}

/// A template that cannot be filled for a host, or cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed '{{' in {template:?}")]
    Unclosed { template: String },
    #[error("unknown placeholder {{{placeholder}}} in {template:?}")]
    UnknownPlaceholder { placeholder: String, template: String },
    /// The host has no value for this placeholder (e.g. an instance without a public IP):
    /// "no public ip".
    #[error("no {}", .placeholder.replace('_', " "))]
    NoValue { placeholder: String },
}

/// Fills `{placeholders}`. Err names the first placeholder without a value (e.g. an
/// instance without a public IP), or an unknown one.
pub fn expand(template: &str, vars: &TemplateVars<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| TemplateError::Unclosed { template: template.to_string() })?;
        let key = &after[..close];
        let value = match key {
            "public_ip" => vars.public_ip,
            "private_ip" => vars.private_ip,
            "instance_id" => vars.instance_id,
            "name" => vars.name,
            "host" => vars.host,
            other => return Err(TemplateError::UnknownPlaceholder { placeholder: other.to_string(), template: template.to_string() }),
        };
        out.push_str(value.ok_or_else(|| TemplateError::NoValue { placeholder: key.to_string() })?);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A `[runbooks]` value the types accept but the runbooks cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunbooksConfigError {
    #[error("[runbooks] {key}: {source}")]
    Template { key: &'static str, source: TemplateError },
    #[error("[runbooks] app_url = {0:?}: must start with http:// or https://")]
    AppUrlScheme(String),
    #[error("[runbooks] http_timeout must be more than 0")]
    ZeroHttpTimeout,
    #[error("[runbooks] log_page_limit = {0}: must be 1 to 10000")]
    LogPageLimit(i32),
    #[error("[runbooks] {0} must not be empty")]
    Empty(&'static str),
}

impl RunbooksConfig {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), RunbooksConfigError> {
        let all = TemplateVars { public_ip: Some("1"), private_ip: Some("1"), instance_id: Some("i"), name: Some("n"), host: Some("h") };
        for (key, t) in [("app_url", &self.app_url), ("tls_endpoint", &self.tls_endpoint)] {
            expand(t, &all).map_err(|source| RunbooksConfigError::Template { key, source })?;
        }
        if !(self.app_url.starts_with("http://") || self.app_url.starts_with("https://")) {
            return Err(RunbooksConfigError::AppUrlScheme(self.app_url.clone()));
        }
        if self.http_timeout.is_zero() {
            return Err(RunbooksConfigError::ZeroHttpTimeout);
        }
        if let Some(n) = self.log_page_limit {
            if !(1..=10_000).contains(&n) {
                return Err(RunbooksConfigError::LogPageLimit(n));
            }
        }
        for (key, v) in [("stack_name", &self.stack_name), ("db_instance_id", &self.db_instance_id), ("tls_server_name", &self.tls_server_name)] {
            if v.trim().is_empty() {
                return Err(RunbooksConfigError::Empty(key));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_placeholders_and_name_what_is_missing() {
        let v = TemplateVars { public_ip: Some("203.0.113.5"), ..Default::default() };
        assert_eq!(expand("http://{public_ip}/health", &v).unwrap(), "http://203.0.113.5/health");
        assert_eq!(expand("{private_ip}:443", &v).unwrap_err().to_string(), "no private ip");
        assert_eq!(expand("{nope}", &v).unwrap_err().to_string(), "unknown placeholder {nope} in \"{nope}\"");
        assert_eq!(expand("{public_ip", &v).unwrap_err().to_string(), "unclosed '{' in \"{public_ip\"");
    }

    #[test]
    fn defaults_match_the_techhealth_runbooks_and_validate() {
        let c = RunbooksConfig::default();
        assert_eq!(c.stack_name, "TechHealthInfrastructureStack");
        assert_eq!(c.cloudtrail_log_group, "CloudTrail/TechHealthAuditTrail");
        assert_eq!(c.http_timeout, Duration::from_secs(10));
        c.validate().unwrap();
    }

    #[test]
    fn a_partial_section_keeps_the_other_defaults() {
        let c: RunbooksConfig = toml::from_str("stack_name = \"Other\"\nhttp_timeout = \"2s\"\n").unwrap();
        assert_eq!(c.stack_name, "Other");
        assert_eq!(c.app_log_group, "/aws/ec2/techhealth");
        assert_eq!(c.http_timeout, Duration::from_secs(2));
        let bad: RunbooksConfig = toml::from_str("log_page_limit = 0\n").unwrap();
        assert_eq!(bad.validate().unwrap_err().to_string(), "[runbooks] log_page_limit = 0: must be 1 to 10000");
        let bad: RunbooksConfig = toml::from_str("app_url = \"http://{ip}/\"\n").unwrap();
        assert_eq!(bad.validate().unwrap_err().to_string(), "[runbooks] app_url: unknown placeholder {ip} in \"http://{ip}/\"");
    }
}
