//! `[enrol]` in the controller's config: the fleet CA folder that signs agents' CSRs (and
//! holds the record of enrolments, the used join tokens and the CRL), AWS's public
//! certificate per region for the instance-identity signature, and the certificate
//! lifetimes. Validated before anything is dialled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `[enrol]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolConfig {
    /// The fleet CA folder (`ca.pem`, `ca.key` owner-only, `issued.jsonl`, `crl.pem`), as
    /// `controller pki init` makes it. Enrolments and used join tokens are recorded there.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
    /// AWS's public certificate for the instance-identity `rsa2048` signature, per region
    /// (`{ "us-east-1" = "aws-iid-us-east-1.pem" }`). A region without one cannot enrol.
    #[serde(default)]
    pub aws_certificates: BTreeMap<String, PathBuf>,
    /// Fleet commands that meet an agent waiting for enrolment enrol it (EC2 hosts only).
    #[serde(default)]
    pub auto: bool,
    /// Lifetime of the certificates signed for agents.
    #[serde(default = "default_certificate_days")]
    pub certificate_days: u32,
    /// Certificates expiring within this window are renewed by `fleet rotate-certs` and
    /// warned about by the daily health check.
    #[serde(default = "default_rotate_before", with = "crate::duration_text")]
    pub rotate_before: Duration,
    /// Lifetime of a join token (`fleet join-token`); at most a day.
    #[serde(default = "default_token_ttl", with = "crate::duration_text")]
    pub join_token_ttl: Duration,
}

impl Default for EnrolConfig {
    fn default() -> Self {
        EnrolConfig {
            pki_dir: None,
            aws_certificates: BTreeMap::new(),
            auto: false,
            certificate_days: default_certificate_days(),
            rotate_before: default_rotate_before(),
            join_token_ttl: default_token_ttl(),
        }
    }
}

fn default_certificate_days() -> u32 {
    90
}

fn default_rotate_before() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_token_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// The longest a join token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(86_400);

impl EnrolConfig {
    pub(crate) fn resolve_relative(&mut self, base: &Path) {
        for p in self.pki_dir.iter_mut().chain(self.aws_certificates.values_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(1..=825).contains(&self.certificate_days) {
            return Err(format!("[enrol] certificate_days = {}: must be between 1 and 825", self.certificate_days));
        }
        if Duration::from_secs(u64::from(self.certificate_days) * 86_400) <= self.rotate_before {
            return Err(format!(
                "[enrol] rotate_before ({} days) must be shorter than certificate_days ({}): every new certificate would be due at once",
                self.rotate_before.as_secs() / 86_400,
                self.certificate_days
            ));
        }
        if self.join_token_ttl.is_zero() || self.join_token_ttl > MAX_TOKEN_TTL {
            return Err("[enrol] join_token_ttl must be between 1s and 24h: a join token is a short-lived secret".into());
        }
        for region in self.aws_certificates.keys() {
            if region.is_empty() || !region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                return Err(format!("[enrol] aws_certificates: {region:?} is not a region name (e.g. \"us-east-1\")"));
            }
        }
        if self.auto && self.pki_dir.is_none() {
            return Err("[enrol] auto = true needs pki_dir (the fleet CA that signs the new agents)".into());
        }
        Ok(())
    }

    /// The fleet CA folder, or what to configure.
    pub fn pki_dir(&self) -> Result<&Path, String> {
        self.pki_dir
            .as_deref()
            .ok_or_else(|| "[enrol] pki_dir is not set: name the fleet CA folder made by `controller pki init`".into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_window_as_long_as_the_certificate_is_refused() {
        let c = EnrolConfig { certificate_days: 30, ..EnrolConfig::default() };
        assert!(c.validate().unwrap_err().contains("rotate_before"));
        assert!(EnrolConfig::default().validate().is_ok());
    }

    #[test]
    fn a_long_lived_join_token_is_refused() {
        let c = EnrolConfig { join_token_ttl: Duration::from_secs(2 * 86_400), ..EnrolConfig::default() };
        assert!(c.validate().unwrap_err().contains("join_token_ttl"));
    }
}
