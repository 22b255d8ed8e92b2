//! `agent --check`: validates, without binding a port or touching a job, everything the
//! agent would load: the CA, its certificate and key (they match, chain to the CA for
//! server use, are within their validity, the key is not readable by others), the CRL
//! when one is configured, and every cleanup root (exists, is a directory, and no
//! component of its path is a symlink).
//!
//! Every failure names its file; all of them are reported, not only the first. It must
//! never change anything on the host.

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use ops_proto::tls;
use ops_proto::tls_check::{self, Usage};

use crate::config::AgentConfig;

/// What the checks found: summary lines for what passed, one line per failure.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub passed: Vec<String>,
    pub failures: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every check of a loaded configuration at time `now`.
pub fn check(cfg: &AgentConfig, now: SystemTime) -> CheckReport {
    let mut report = CheckReport::default();
    if cfg.enrol.is_some() && !cfg.tls.cert.exists() {
        // Waiting for enrolment is a normal state; what it needs is the CA and a usable key.
        match tls::load_certs(&cfg.tls.ca, "CA") {
            Ok(cas) => report.passed.push(format!("CA {} holds {} certificate(s)", cfg.tls.ca.display(), cas.len())),
            Err(e) => report.failures.push(e.to_string()),
        }
        if cfg.tls.key.exists() {
            match tls::load_key(&cfg.tls.key) {
                Ok(_) => report.passed.push(format!("key {} is owner-only and readable", cfg.tls.key.display())),
                Err(e) => report.failures.push(e.to_string()),
            }
        }
        report.passed.push(format!(
            "not enrolled yet: no certificate at {}; the agent will make its key if needed and wait for `controller fleet enroll`",
            cfg.tls.cert.display()
        ));
    } else {
        identity_checks(cfg, now, &mut report);
    }
    crl_and_rest(cfg, &mut report);
    report
}

fn identity_checks(cfg: &AgentConfig, now: SystemTime, report: &mut CheckReport) {
    match tls_check::check_identity(&cfg.tls_paths(), Usage::Server, now) {
        Ok(id) => {
            for ca in &id.cas {
                report.passed.push(format!(
                    "CA {} ('{}') valid until {} ({} left)",
                    ca.path.display(),
                    ca.name,
                    ca.not_after,
                    tls_check::describe_remaining(ca.expires_in)
                ));
            }
            report.passed.push(format!(
                "certificate {} ('{}') matches key {}, chains to {}, expires in {} ({})",
                id.cert.path.display(),
                id.cert.name,
                cfg.tls.key.display(),
                cfg.tls.ca.display(),
                tls_check::describe_remaining(id.cert.expires_in),
                id.cert.not_after
            ));
        }
        Err(e) => report.failures.push(e.to_string()),
    }
}

fn crl_and_rest(cfg: &AgentConfig, report: &mut CheckReport) {
    if let Some(crl) = &cfg.tls.crl {
        let checked = tls::load_crls(crl).and_then(|crls| {
            let cas = tls::load_certs(&cfg.tls.ca, "CA")?;
            tls::check_crls(crl, &crls, &cfg.tls.ca, &cas)
        });
        match checked {
            Ok(s) => report.passed.push(format!("CRL {} lists {} revoked certificate(s)", crl.display(), s.revoked)),
            Err(e) => report.failures.push(e.to_string()),
        }
    }
    for root in &cfg.cleanup.allowed_roots {
        match check_root(root) {
            Ok(()) => report.passed.push(format!("cleanup root {} is a directory reached without symlinks", root.display())),
            Err(why) => report.failures.push(format!("[cleanup] allowed_roots: {}: {why}", root.display())),
        }
    }
}

/// A cleanup root must exist as a directory, and no component of its path may be a
/// symlink: the agent deletes there as root, so the path must mean what it says.
pub fn check_root(root: &Path) -> Result<(), String> {
    let mut at = PathBuf::new();
    for part in root.components() {
        at.push(part);
        if matches!(part, Component::RootDir) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&at).map_err(|e| format!("cannot read {}: {e}", at.display()))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&at).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
            return Err(if at == root {
                format!("is a symlink (to {target}); name the real directory")
            } else {
                format!("{} is a symlink (to {target}); name the real directory", at.display())
            });
        }
    }
    let meta = std::fs::symlink_metadata(root).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_dir() {
        return Err("is not a directory".into());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_cleanup_root_behind_a_symlink_is_named_with_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("uploads")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        check_root(&real.join("uploads")).unwrap();
        let err = check_root(&dir.path().join("link").join("uploads")).unwrap_err();
        assert!(err.contains("link is a symlink"), "{err}");
        let err = check_root(&dir.path().join("link")).unwrap_err();
        assert!(err.starts_with("is a symlink"), "{err}");
        let err = check_root(&dir.path().join("missing")).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
        std::fs::write(dir.path().join("file"), "").unwrap();
        assert_eq!(check_root(&dir.path().join("file")).unwrap_err(), "is not a directory");
    }
}
