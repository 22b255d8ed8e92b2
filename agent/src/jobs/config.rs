//! The job engine's part of the agent's TOML config: `[jobs]`, `[[actions]]`, `[cleanup]`,
//! `[services]` and `[kill]`, plus the top-level `state_dir` they are stored under.
//!
//! Everything a job may touch on the host is named here by the host's owner, never by
//! the network: named argv lists, cleanup roots, restartable units. `validate()` runs
//! before the agent binds a port; a config it accepts must never let a job escape it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use rustix::process::Signal;
use serde::Deserialize;

/// Engine settings: `[jobs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Timeout of a job whose request and action name none.
    pub default_timeout_seconds: u64,
    /// Finished jobs kept on disk; the oldest beyond this are pruned.
    pub keep_max_jobs: usize,
    /// Finished jobs older than this are pruned.
    pub keep_max_age_days: u64,
    /// The config file `RotateLogs` passes to `logrotate -f`.
    pub logrotate_config: PathBuf,
    /// `logrotate -s`: its state file; `None` leaves logrotate's own default.
    pub logrotate_state_file: Option<PathBuf>,
    /// An APT configuration file `Patch` gives apt-get as `APT_CONFIG` (a host with its
    /// own apt layout, such as an offline mirror); `None` leaves apt's own default.
    pub apt_config: Option<PathBuf>,
    /// `apply` installs what a `Patch` asks for; `simulate` runs every `Patch` as the
    /// package manager's simulation whatever the request says (a lab or developer
    /// machine that must never be patched).
    pub patch_mode: PatchMode,
    /// Audit log (JSON lines); `None` means `<state_dir>/audit.log`.
    pub audit_log: Option<PathBuf>,
    /// Let several jobs run at once. Off by default: one host change at a time.
    pub allow_concurrent: bool,
    /// Time between SIGTERM and SIGKILL when a job is cancelled, times out or the agent stops.
    pub kill_grace_seconds: u64,
    /// Jobs that may wait for the one-at-a-time slot; one more is refused.
    pub max_queued: usize,
    /// Output one job may write to its log; a job that writes more ends `failed`.
    pub max_output_bytes: u64,
    /// Free space kept on the state directory's filesystem: a job whose output would go
    /// below it ends `failed`, and new jobs are refused until there is room again.
    pub min_free_bytes: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            default_timeout_seconds: 3600,
            keep_max_jobs: 200,
            keep_max_age_days: 30,
            logrotate_config: PathBuf::from("/etc/logrotate.conf"),
            logrotate_state_file: None,
            apt_config: None,
            patch_mode: PatchMode::Apply,
            audit_log: None,
            allow_concurrent: false,
            kill_grace_seconds: 10,
            max_queued: 16,
            max_output_bytes: 256 * 1024 * 1024,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

impl JobsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.default_timeout_seconds == 0 {
            return Err("[jobs] default_timeout_seconds must be at least 1".into());
        }
        if self.keep_max_jobs == 0 {
            return Err("[jobs] keep_max_jobs must be at least 1".into());
        }
        if self.max_output_bytes == 0 {
            return Err("[jobs] max_output_bytes must be at least 1".into());
        }
        if !self.logrotate_config.is_absolute() {
            return Err(format!(
                "[jobs] logrotate_config must be an absolute path, got {}",
                self.logrotate_config.display()
            ));
        }
        for (key, path) in [
            ("logrotate_state_file", &self.logrotate_state_file),
            ("apt_config", &self.apt_config),
            ("audit_log", &self.audit_log),
        ] {
            if let Some(p) = path {
                if !p.is_absolute() {
                    return Err(format!(
                        "[jobs] {key} must be an absolute path, got {}",
                        p.display()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[jobs] patch_mode`: whether this agent ever installs packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum PatchMode {
    /// A `Patch` installs unless it asks to simulate.
    #[default]
    Apply,
    /// Every `Patch` only simulates; nothing is ever installed.
    Simulate,
}

impl PatchMode {
    /// The name as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            PatchMode::Apply => "apply",
            PatchMode::Simulate => "simulate",
        }
    }
}

impl TryFrom<String> for PatchMode {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        [PatchMode::Apply, PatchMode::Simulate]
            .into_iter()
            .find(|m| m.name() == value)
            .ok_or_else(|| {
                format!("[jobs] patch_mode must be \"apply\" or \"simulate\", got {value:?}")
            })
    }
}

/// One named command an operator may run: `[[actions]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// What callers ask for (`RunAction { name }`).
    pub name: String,
    /// Program and arguments, run directly (no shell unless argv names one).
    pub argv: Vec<String>,
    /// Working directory; the agent's own when absent.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment on top of a minimal one (PATH, HOME, USER, LOGNAME, LANG).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Overrides `[jobs] default_timeout_seconds` for this action.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Run as this user (through `setpriv`); needs the agent to run as root.
    #[serde(default)]
    pub run_as: Option<String>,
}

impl ActionConfig {
    /// An action that runs `argv` with the defaults: no cwd, env, timeout or user change.
    pub fn new(name: &str, argv: &[&str]) -> ActionConfig {
        ActionConfig {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            env: BTreeMap::new(),
            timeout_seconds: None,
            run_as: None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "[[actions]] name {name:?} must be non-empty and use only letters, digits, '-', '_' and '.'"
            ));
        }
        match self.argv.first() {
            None => return Err(format!("[[actions]] {name}: argv must not be empty")),
            Some(p) if p.is_empty() => {
                return Err(format!("[[actions]] {name}: argv[0] must not be empty"))
            }
            Some(_) => {}
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.is_absolute() {
                return Err(format!(
                    "[[actions]] {name}: cwd must be absolute, got {}",
                    cwd.display()
                ));
            }
        }
        if self.timeout_seconds == Some(0) {
            return Err(format!(
                "[[actions]] {name}: timeout_seconds must be at least 1"
            ));
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(format!(
                    "[[actions]] {name}: invalid environment variable name {key:?}"
                ));
            }
        }
        if let Some(user) = &self.run_as {
            if user.is_empty() || user.starts_with('-') || user.contains(['/', ':', '\0']) {
                return Err(format!("[[actions]] {name}: invalid run_as user {user:?}"));
            }
        }
        Ok(())
    }
}

/// Validates a list of actions: each one, and names unique.
pub fn validate_actions(actions: &[ActionConfig]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for a in actions {
        a.validate()?;
        if !seen.insert(a.name.as_str()) {
            return Err(format!(
                "[[actions]] name {:?} is defined more than once",
                a.name
            ));
        }
    }
    Ok(())
}

/// Where `Cleanup` may delete: `[cleanup]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// Cleanup rules must name one of these directories or one below it. Empty: no cleanup.
    pub allowed_roots: Vec<PathBuf>,
}

impl CleanupConfig {
    pub fn validate(&self) -> Result<(), String> {
        for root in &self.allowed_roots {
            if !root.is_absolute() {
                return Err(format!(
                    "[cleanup] allowed_roots: {} is not an absolute path",
                    root.display()
                ));
            }
            if root
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            {
                return Err(format!(
                    "[cleanup] allowed_roots: {} must not contain '.' or '..'",
                    root.display()
                ));
            }
            if root == Path::new("/") {
                return Err(
                    "[cleanup] allowed_roots: '/' would allow deleting anywhere; name directories"
                        .into(),
                );
            }
        }
        // A root that is or goes through a symbolic link is refused here, before any port
        // is bound; the engine resolves the list again (and keeps it) when it opens.
        crate::jobs::kinds::cleanup_roots::AllowedRoots::resolve(self).map(|_| ())
    }
}

/// Which units `RestartService` may restart: `[services]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// Unit names (`httpd` means `httpd.service`).
    pub allowed: Vec<String>,
    /// The `systemctl` to run; `systemctl` from PATH when absent.
    pub systemctl: Option<PathBuf>,
}

impl ServicesConfig {
    pub fn validate(&self) -> Result<(), String> {
        for unit in &self.allowed {
            if !valid_unit_name(unit) {
                return Err(format!(
                    "[services] allowed: {unit:?} is not a valid systemd unit name"
                ));
            }
        }
        Ok(())
    }
}

/// systemd unit names: letters, digits and `:-_.@\`, not starting with '-'.
pub fn valid_unit_name(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 255
        && !unit.starts_with('-')
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c))
}

/// What `KillProcess` may signal: `[kill]`. Listing a key replaces its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KillConfig {
    /// Process names (comm) never signalled, whatever the request says: what keeps the
    /// host reachable and its containers running. pid 1 and the agent itself are refused
    /// by id, listed or not.
    pub denied_names: Vec<String>,
    /// Signals a request may name. STOP is left out by default: a stopped process holds
    /// its locks and sockets until someone logs in to continue it.
    pub allowed_signals: Vec<String>,
}

impl Default for KillConfig {
    fn default() -> Self {
        let names = [
            "init",
            "systemd",
            "systemd-journald",
            "systemd-logind",
            "systemd-udevd",
            "sshd",
            "dbus-daemon",
            "dbus-broker",
            "containerd",
            "containerd-shim",
            "dockerd",
            "crio",
            "conmon",
            "amazon-ssm-agent",
        ];
        KillConfig {
            denied_names: names.iter().map(|n| n.to_string()).collect(),
            allowed_signals: ["TERM", "KILL", "HUP", "INT", "QUIT", "USR1", "USR2"]
                .iter()
                .map(|n| n.to_string())
                .collect(),
        }
    }
}

impl KillConfig {
    pub fn validate(&self) -> Result<(), String> {
        for name in &self.denied_names {
            if name.is_empty() || name.contains('/') {
                return Err(format!(
                    "[kill] denied_names: {name:?} is not a process name"
                ));
            }
        }
        for sig in &self.allowed_signals {
            if parse_signal(sig).is_none() {
                return Err(format!(
                    "[kill] allowed_signals: unknown signal {sig:?}; known: {}",
                    SIGNAL_NAMES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Whether `name` (as `parse_signal` spells it) is allowed.
    pub fn allows_signal(&self, name: &str) -> bool {
        self.allowed_signals
            .iter()
            .any(|s| parse_signal(s).is_some_and(|(n, _)| n == name))
    }
}

/// Signal names the agent knows, whether or not config allows them.
pub const SIGNAL_NAMES: [&str; 9] = [
    "TERM", "KILL", "HUP", "INT", "QUIT", "USR1", "USR2", "STOP", "CONT",
];

/// A signal by name (with or without `SIG`, any case); empty means TERM.
pub fn parse_signal(name: &str) -> Option<(&'static str, Signal)> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match bare {
        "" | "TERM" => ("TERM", Signal::TERM),
        "KILL" => ("KILL", Signal::KILL),
        "HUP" => ("HUP", Signal::HUP),
        "INT" => ("INT", Signal::INT),
        "QUIT" => ("QUIT", Signal::QUIT),
        "USR1" => ("USR1", Signal::USR1),
        "USR2" => ("USR2", Signal::USR2),
        "STOP" => ("STOP", Signal::STOP),
        "CONT" => ("CONT", Signal::CONT),
        _ => return None,
    })
}

/// Everything the job engine needs, assembled by the agent's config loader.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Jobs live in `<state_dir>/jobs`; the audit log defaults to `<state_dir>/audit.log`.
    pub state_dir: PathBuf,
    pub jobs: JobsConfig,
    pub actions: Vec<ActionConfig>,
    pub cleanup: CleanupConfig,
    pub services: ServicesConfig,
    pub kill: KillConfig,
}

impl JobSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !self.state_dir.is_absolute() {
            return Err(format!(
                "state_dir must be an absolute path, got {}",
                self.state_dir.display()
            ));
        }
        self.jobs.validate()?;
        validate_actions(&self.actions)?;
        self.cleanup.validate()?;
        self.services.validate()?;
        self.kill.validate()
    }

    /// The audit log's path.
    pub fn audit_log_path(&self) -> PathBuf {
        self.jobs
            .audit_log
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit.log"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The top-level keys as the agent's config embeds them.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Embedded {
        state_dir: PathBuf,
        #[serde(default)]
        jobs: JobsConfig,
        #[serde(default)]
        actions: Vec<ActionConfig>,
        #[serde(default)]
        cleanup: CleanupConfig,
        #[serde(default)]
        services: ServicesConfig,
        #[serde(default)]
        kill: KillConfig,
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../../examples/jobs.toml");
        let e: Embedded = toml::from_str(text).expect("example parses");
        let s = JobSettings {
            state_dir: e.state_dir,
            jobs: e.jobs,
            actions: e.actions,
            cleanup: e.cleanup,
            services: e.services,
            kill: e.kill,
        };
        s.validate().expect("example validates");
        assert!(s.actions.iter().any(|a| a.name == "npm-audit-fix"));
    }

    #[test]
    fn defaults_apply_when_sections_are_empty() {
        let e: Embedded =
            toml::from_str("state_dir = \"/var/lib/ops-agent\"\n[jobs]\n").expect("parses");
        assert_eq!(e.jobs.default_timeout_seconds, 3600);
        assert_eq!(e.jobs.keep_max_jobs, 200);
        assert_eq!(e.jobs.kill_grace_seconds, 10);
        assert!(!e.jobs.allow_concurrent);
        assert!(e.kill.denied_names.iter().any(|n| n == "sshd"));
        assert!(e.kill.allows_signal("TERM") && !e.kill.allows_signal("STOP"));
    }

    #[test]
    fn kill_config_names_unknown_signals() {
        let k: KillConfig = toml::from_str("allowed_signals = [\"TERM\", \"SEGV\"]").unwrap();
        assert!(k.validate().unwrap_err().contains("\"SEGV\""));
        let k: KillConfig = toml::from_str("allowed_signals = [\"sigstop\"]").unwrap();
        k.validate().unwrap();
        assert!(k.allows_signal("STOP") && !k.allows_signal("TERM"));
        assert!(!k.denied_names.is_empty(), "defaults stay for keys not listed");
    }

    #[test]
    fn patch_mode_defaults_to_apply_and_a_bad_value_names_the_key() {
        assert_eq!(JobsConfig::default().patch_mode, PatchMode::Apply);
        let j: JobsConfig = toml::from_str("patch_mode = \"simulate\"").unwrap();
        assert_eq!(j.patch_mode, PatchMode::Simulate);
        let j: JobsConfig = toml::from_str("patch_mode = \"apply\"").unwrap();
        assert_eq!(j.patch_mode, PatchMode::Apply);
        for bad in ["\"Simulate\"", "\"dry-run\"", "\"\""] {
            let err = toml::from_str::<JobsConfig>(&format!("patch_mode = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("[jobs] patch_mode must be \"apply\" or \"simulate\""),
                "{bad}: {err}"
            );
        }
        assert!(toml::from_str::<JobsConfig>("patch_mode = true").is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<JobsConfig>("bogus = 1").is_err());
        assert!(toml::from_str::<ServicesConfig>("allow = [\"x\"]").is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let a = ActionConfig::new;
        assert!(validate_actions(&[a("x", &[])])
            .unwrap_err()
            .contains("argv must not be empty"));
        assert!(validate_actions(&[a("x", &["true"]), a("x", &["false"])])
            .unwrap_err()
            .contains("more than once"));
        let c = CleanupConfig {
            allowed_roots: vec![PathBuf::from("tmp")],
        };
        assert!(c.validate().unwrap_err().contains("not an absolute path"));
        let c = CleanupConfig {
            allowed_roots: vec![PathBuf::from("/")],
        };
        assert!(c.validate().is_err());
        let s = ServicesConfig {
            allowed: vec!["-x".into()],
            systemctl: None,
        };
        assert!(s.validate().is_err());
    }
}
