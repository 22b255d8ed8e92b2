//! The agent's configuration file (TOML). Unknown keys are rejected, relative paths are
//! resolved against the file's folder, and everything is validated before any port is
//! bound, so a typo fails at start-up with the file and key named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use ops_proto::tls::TlsPaths;

use crate::jobs::{ActionConfig, CleanupConfig, JobSettings, JobsConfig, KillConfig, ServicesConfig};

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address to serve on, e.g. "0.0.0.0:7443".
    pub listen: String,
    pub tls: TlsSection,
    #[serde(default)]
    pub auth_log: AuthLogConfig,
    #[serde(default)]
    pub metadata: MetadataConfig,
    /// Jobs (records and complete output logs) and, by default, the audit log live here.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// `[jobs]`: timeouts, retention, logrotate, audit log, concurrency.
    #[serde(default)]
    pub jobs: JobsConfig,
    /// `[[actions]]`: the named commands operators may run.
    #[serde(default)]
    pub actions: Vec<ActionConfig>,
    /// `[cleanup]`: roots cleanup jobs may touch.
    #[serde(default)]
    pub cleanup: CleanupConfig,
    /// `[services]`: units RestartService may restart.
    #[serde(default)]
    pub services: ServicesConfig,
    /// `[kill]`: names KillProcess never signals, signals it may send.
    #[serde(default)]
    pub kill: KillConfig,
    /// `[limits]`: how much an unauthenticated peer or a connected caller may hold.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[enrol]`: how this agent gets its certificate when it has none (a host installed
    /// through user-data): it makes its key, then waits for `controller fleet enroll`.
    #[serde(default)]
    pub enrol: Option<crate::enrol::EnrolConfig>,
    /// `[[probe_targets]]`: the services this host depends on that `ProbeTarget` may
    /// connect to (the database, say); it connects nowhere else.
    #[serde(default)]
    pub probe_targets: Vec<crate::probe::ProbeTarget>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ops-agent")
}

/// `[tls]`: the fleet CA that client certificates must chain to, this agent's server
/// certificate, and optionally the CA's revocation list. Files are re-read when they change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub ca: PathBuf,
    pub cert: PathBuf,
    /// Must be readable by its owner only (mode 0600 or 0400), as ssh demands of its keys.
    pub key: PathBuf,
    /// The fleet CA's CRL (PEM, written by `controller pki revoke`): client certificates
    /// it lists are refused at the handshake.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// How often the files are checked for changes (a changed set is loaded without a
    /// restart; a broken one is logged and the previous one kept).
    #[serde(default = "default_reload_seconds")]
    pub reload_check_seconds: u64,
}

fn default_reload_seconds() -> u64 {
    10
}

/// `[auth_log]`: where failed logins are read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthLogConfig {
    /// Candidates in order; the first that exists is read, with its rotated siblings.
    #[serde(default = "default_auth_paths")]
    pub paths: Vec<PathBuf>,
    /// Failure events kept in memory to answer "since" queries without rescanning.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Programs whose lines count: the syslog tag in files, the trusted `_COMM` in the journal.
    #[serde(default = "default_auth_programs")]
    pub programs: Vec<String>,
    /// When none of `paths` exists, read the systemd journal instead.
    #[serde(default = "default_true")]
    pub journal: bool,
    /// Read this journal directory (`journalctl --directory`) instead of the host's journal.
    #[serde(default)]
    pub journal_directory: Option<PathBuf>,
    /// Read this one journal file (`journalctl --file`) instead of the host's journal.
    #[serde(default)]
    pub journal_file: Option<PathBuf>,
    /// Absolute path of journalctl (never looked up in PATH).
    #[serde(default = "default_journalctl")]
    pub journalctl: PathBuf,
}

/// Programs whose failures are counted unless `[auth_log] programs` says otherwise.
/// `sshd-session` is the process that logs sshd's failures since OpenSSH 9.8.
pub const DEFAULT_AUTH_PROGRAMS: [&str; 5] = ["sshd", "sshd-session", "sudo", "su", "login"];

impl Default for AuthLogConfig {
    fn default() -> Self {
        AuthLogConfig {
            paths: default_auth_paths(),
            max_events: default_max_events(),
            programs: default_auth_programs(),
            journal: true,
            journal_directory: None,
            journal_file: None,
            journalctl: default_journalctl(),
        }
    }
}

fn default_auth_programs() -> Vec<String> {
    DEFAULT_AUTH_PROGRAMS.iter().map(|p| (*p).to_owned()).collect()
}

fn default_journalctl() -> PathBuf {
    PathBuf::from("/usr/bin/journalctl")
}

impl AuthLogConfig {
    fn validate(&self) -> Result<(), String> {
        if self.paths.is_empty() {
            return Err("auth_log.paths must name at least one file".into());
        }
        if self.max_events == 0 {
            return Err("auth_log.max_events must be at least 1".into());
        }
        if self.programs.is_empty() {
            return Err("auth_log.programs must name at least one program (e.g. \"sshd\")".into());
        }
        for p in &self.programs {
            if p.is_empty() || p.len() > 64 || p.bytes().any(|b| b.is_ascii_whitespace() || b"[]:=".contains(&b)) {
                return Err(format!("auth_log.programs: {p:?} is not a program name (no spaces, brackets, ':' or '=')"));
            }
        }
        if !self.journalctl.is_absolute() {
            return Err(format!("auth_log.journalctl = {}: must be an absolute path", self.journalctl.display()));
        }
        if self.journal_directory.is_some() && self.journal_file.is_some() {
            return Err("auth_log.journal_directory and auth_log.journal_file: set at most one".into());
        }
        Ok(())
    }
}

fn default_auth_paths() -> Vec<PathBuf> {
    vec![PathBuf::from("/var/log/secure"), PathBuf::from("/var/log/auth.log")]
}

fn default_max_events() -> usize {
    100_000
}

/// `[metadata]`: the EC2 instance metadata service, asked once at start for the
/// instance id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// Set false off EC2 to skip the lookup entirely.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Base URL (plain HTTP) of the metadata service.
    #[serde(default = "default_imds_url")]
    pub url: String,
    /// How long to wait for it; it is on the local link, so a short wait is enough.
    #[serde(default = "default_imds_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig { enabled: true, url: default_imds_url(), timeout_ms: default_imds_timeout_ms() }
    }
}

fn default_true() -> bool {
    true
}
fn default_imds_url() -> String {
    "http://169.254.169.254".to_string()
}
fn default_imds_timeout_ms() -> u64 {
    300
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl AgentConfig {
    /// Reads, parses, resolves and validates a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
        let mut cfg: AgentConfig = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        cfg.resolve_relative(path.parent().unwrap_or(Path::new(".")));
        cfg.validate().map_err(invalid)?;
        Ok(cfg)
    }

    fn resolve_relative(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.tls.ca);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        if let Some(crl) = &mut self.tls.crl {
            fix(crl);
        }
        fix(&mut self.state_dir);
        if let Some(token) = self.enrol.as_mut().and_then(|e| e.join_token_file.as_mut()) {
            fix(token);
        }
        for p in [&mut self.auth_log.journal_directory, &mut self.auth_log.journal_file].into_iter().flatten() {
            fix(p);
        }
    }

    /// The job engine's part of the configuration.
    pub fn job_settings(&self) -> JobSettings {
        JobSettings {
            state_dir: self.state_dir.clone(),
            jobs: self.jobs.clone(),
            actions: self.actions.clone(),
            cleanup: self.cleanup.clone(),
            services: self.services.clone(),
            kill: self.kill.clone(),
        }
    }

    /// The address to bind.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|e| format!("listen = {:?} is not an address like \"0.0.0.0:7443\": {e}", self.listen))
    }

    pub fn tls_paths(&self) -> TlsPaths {
        TlsPaths { ca: self.tls.ca.clone(), cert: self.tls.cert.clone(), key: self.tls.key.clone() }
    }

    /// Every file the TLS configuration is built from (the CRL when configured).
    pub fn tls_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.tls.ca.clone(), self.tls.cert.clone(), self.tls.key.clone()];
        files.extend(self.tls.crl.clone());
        files
    }

    pub fn metadata_timeout(&self) -> Duration {
        Duration::from_millis(self.metadata.timeout_ms)
    }

    /// Checks what the types cannot: addresses parse, files exist, bounds are sane.
    pub fn validate(&self) -> Result<(), String> {
        self.listen_addr()?;
        let crl = self.tls.crl.as_ref().map(|p| ("tls.crl", p));
        let mut files = vec![("tls.ca", &self.tls.ca)];
        match &self.enrol {
            // Not enrolled yet is a normal state: the key and certificate come later, into
            // folders that must exist now.
            Some(enrol) => {
                enrol.validate(&self.metadata)?;
                for (key, p) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
                    if !p.parent().is_some_and(Path::is_dir) {
                        return Err(format!("{key} = {}: its folder does not exist", p.display()));
                    }
                }
                if self.tls.cert.is_file() && !self.tls.key.is_file() {
                    return Err(format!(
                        "tls.cert = {} exists but tls.key = {} does not: remove the certificate to enrol again",
                        self.tls.cert.display(),
                        self.tls.key.display()
                    ));
                }
            }
            None => files.extend([("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)]),
        }
        for (key, p) in files.into_iter().chain(crl) {
            if !p.is_file() {
                return Err(format!("{key} = {}: no such file", p.display()));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.probe_targets {
            t.validate()?;
            if !names.insert(t.name.as_str()) {
                return Err(format!("probe_targets: name {:?} appears twice", t.name));
            }
        }
        if self.tls.reload_check_seconds == 0 || self.tls.reload_check_seconds > 86_400 {
            return Err("tls.reload_check_seconds must be between 1 and 86400".into());
        }
        self.auth_log.validate()?;
        if !self.metadata.url.starts_with("http://") {
            return Err(format!("metadata.url = {:?} must be a plain http:// URL", self.metadata.url));
        }
        self.job_settings().validate()?;
        if self.metadata.timeout_ms == 0 || self.metadata.timeout_ms > 10_000 {
            return Err("metadata.timeout_ms must be between 1 and 10000".into());
        }
        self.limits.validate()
    }
}

/// `[limits]`: bounds on what peers may hold, before and after authentication. The
/// defaults keep a small agent small under a flood and still let the controller in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A TLS handshake that has not finished in this time is dropped.
    pub handshake_timeout_ms: u64,
    /// Handshakes in progress at once; when full, the oldest pending one is closed.
    pub max_pending_handshakes: usize,
    /// Handshakes in progress from one source address; when full, that source's oldest
    /// pending one is closed, so a flood from one address only evicts itself.
    pub max_pending_handshakes_per_source: usize,
    /// HTTP/2 streams (calls) one connection may have open at once.
    pub max_concurrent_streams_per_connection: u32,
    /// Snapshot streams open at once over all connections.
    pub max_snapshot_streams: usize,
    /// Job watches open at once over all connections.
    pub max_job_watches: usize,
    /// HTTP/2 receive window the agent grants per stream, in bytes.
    pub stream_window_bytes: u32,
    /// HTTP/2 receive window the agent grants per connection, in bytes.
    pub connection_window_bytes: u32,
    /// Server-side deadline of a unary call (and of a stream's setup), in milliseconds.
    pub unary_timeout_ms: u64,
    /// HTTP/2 PING sent after this much idleness on a connection...
    pub keepalive_interval_ms: u64,
    /// ...and the connection closed if its answer takes longer than this.
    pub keepalive_timeout_ms: u64,
    /// Warnings of one kind written per minute; the rest are counted and summarised.
    pub warnings_per_minute: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            handshake_timeout_ms: 3_000,
            max_pending_handshakes: 256,
            max_pending_handshakes_per_source: 16,
            max_concurrent_streams_per_connection: 32,
            max_snapshot_streams: 32,
            max_job_watches: 32,
            stream_window_bytes: 64 * 1024,
            connection_window_bytes: 256 * 1024,
            unary_timeout_ms: 90_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            warnings_per_minute: 20,
        }
    }
}

impl LimitsConfig {
    /// Each bound within a range that still works: a cap of 0 would lock everyone out.
    pub fn validate(&self) -> Result<(), String> {
        fn range<T: PartialOrd + std::fmt::Display>(key: &str, v: T, lo: T, hi: T) -> Result<(), String> {
            if v < lo || v > hi {
                return Err(format!("limits.{key} = {v}: must be between {lo} and {hi}"));
            }
            Ok(())
        }
        range("handshake_timeout_ms", self.handshake_timeout_ms, 100, 60_000)?;
        range("max_pending_handshakes", self.max_pending_handshakes, 1, 65_536)?;
        range("max_pending_handshakes_per_source", self.max_pending_handshakes_per_source, 1, 65_536)?;
        if self.max_pending_handshakes_per_source > self.max_pending_handshakes {
            return Err(format!(
                "limits.max_pending_handshakes_per_source = {} exceeds limits.max_pending_handshakes = {}",
                self.max_pending_handshakes_per_source, self.max_pending_handshakes
            ));
        }
        range("max_concurrent_streams_per_connection", self.max_concurrent_streams_per_connection, 1, 10_000)?;
        range("max_snapshot_streams", self.max_snapshot_streams, 1, 10_000)?;
        range("max_job_watches", self.max_job_watches, 1, 10_000)?;
        range("stream_window_bytes", self.stream_window_bytes, 16 * 1024, 16 * 1024 * 1024)?;
        range("connection_window_bytes", self.connection_window_bytes, 16 * 1024, 64 * 1024 * 1024)?;
        if self.connection_window_bytes < self.stream_window_bytes {
            return Err("limits.connection_window_bytes must be at least limits.stream_window_bytes".into());
        }
        range("unary_timeout_ms", self.unary_timeout_ms, 1_000, 3_600_000)?;
        range("keepalive_interval_ms", self.keepalive_interval_ms, 1_000, 3_600_000)?;
        range("keepalive_timeout_ms", self.keepalive_timeout_ms, 100, 600_000)?;
        range("warnings_per_minute", self.warnings_per_minute, 1, 100_000)?;
        Ok(())
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        for f in ["ca.pem", "a.pem", "a.key"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let p = dir.join("agent.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const TLS: &str = "[tls]\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n";

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &format!("listen = \"127.0.0.1:0\"\n{TLS}"));
        let cfg = AgentConfig::load(&p).unwrap();
        assert_eq!(cfg.tls.ca, dir.path().join("ca.pem"));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &format!("listen = \"127.0.0.1:0\"\nlistne = 1\n{TLS}"));
        let err = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("agent.toml") && err.contains("listne"), "{err}");
    }

    #[test]
    fn bad_listen_address_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &format!("listen = \"localhost\"\n{TLS}"));
        let err = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("listen = \"localhost\""), "{err}");
    }

    #[test]
    fn a_limit_out_of_range_is_named_with_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &format!("listen = \"127.0.0.1:0\"\n{TLS}[limits]\nmax_snapshot_streams = 0\n"));
        let err = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("limits.max_snapshot_streams = 0") && err.contains("between 1 and"), "{err}");
        let p = write(dir.path(), &format!("listen = \"127.0.0.1:0\"\n{TLS}[limits]\nhandshake_timeout_ms = 2000\n"));
        let cfg = AgentConfig::load(&p).unwrap();
        assert_eq!(cfg.limits.handshake_timeout(), Duration::from_secs(2));
        assert_eq!(cfg.limits.max_job_watches, LimitsConfig::default().max_job_watches);
    }

    #[test]
    fn a_bad_patch_mode_is_refused_at_load_naming_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &format!("listen = \"127.0.0.1:0\"\n{TLS}[jobs]\npatch_mode = \"dry-run\"\n"));
        let err = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml") && err.contains("[jobs] patch_mode must be \"apply\" or \"simulate\", got \"dry-run\""),
            "{err}"
        );
        let p = write(dir.path(), &format!("listen = \"127.0.0.1:0\"\n{TLS}[jobs]\npatch_mode = \"simulate\"\n"));
        assert_eq!(AgentConfig::load(&p).unwrap().jobs.patch_mode, crate::jobs::PatchMode::Simulate);
    }

    #[test]
    fn missing_certificate_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "listen = \"127.0.0.1:0\"\n[tls]\nca = \"nope.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n");
        let err = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("tls.ca") && err.contains("nope.pem"), "{err}");
    }
}
