//! The controller's configuration file (TOML): where the fleet CA and the operator's
//! certificate are, how to find the fleet, how to reach AWS. Unknown keys are rejected
//! and everything is validated before any connection is made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use ops_proto::tls::TlsPaths;

/// The whole controller configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// `[tls]`: needed only by the commands that talk to agents; AWS-only work runs
    /// without it (agent checks are then `skipped`, saying why).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub aws: AwsConfig,
    /// `[runbooks]`: what the runbooks look at (stack, log groups, database, endpoints).
    #[serde(default)]
    pub runbooks: crate::runbooks::config::RunbooksConfig,
    /// `[maintenance]`: what `weekly-maintenance` does and within which limits.
    #[serde(default)]
    pub maintenance: crate::maintenance::config::MaintenanceConfig,
    /// `[enrol]`: how new agents join the fleet (the fleet CA that signs them, AWS's
    /// instance-identity certificates, join tokens, automatic enrolment).
    #[serde(default)]
    pub enrol: crate::enrol::config::EnrolConfig,
    /// `[incident]`: the high-CPU trigger and what its mitigations may do.
    #[serde(default)]
    pub incident: crate::incident::config::IncidentConfig,
    /// The file this was loaded from (not a key of the file).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[tls]`: the fleet CA and this operator's client certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The fleet CA's revocation list (PEM): an agent whose certificate it lists (a host
    /// removed with `fleet remove`) is refused at the handshake.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

impl TlsSection {
    pub fn paths(&self) -> TlsPaths {
        TlsPaths { ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone() }
    }
}

/// Where the list of hosts comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetSource {
    /// `[[fleet.hosts]]` in this file.
    #[default]
    Static,
    /// Running EC2 instances matching `tag_filters`.
    Ec2,
}

/// Which name an EC2 host's agent certificate is checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerNameMode {
    #[default]
    Address,
    InstanceId,
}

/// `[fleet]`: the hosts to drive and how to dial them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    #[serde(default)]
    pub source: FleetSource,
    #[serde(default)]
    pub hosts: Vec<StaticHost>,
    /// EC2 source: tag key -> value that instances must carry (required, unless
    /// `all_instances = true`).
    #[serde(default)]
    pub tag_filters: BTreeMap<String, String>,
    /// EC2 source: the fleet is every instance of the account and region. Must be said
    /// explicitly: an empty tag filter is otherwise a configuration error.
    #[serde(default)]
    pub all_instances: bool,
    /// EC2 source: "private-ip" (default), "public-ip" or "tag:<Key>" (the tag holds host:port).
    #[serde(default = "default_address_mode")]
    pub address: String,
    /// EC2 source: the name an agent's certificate must carry. "address" (default): the
    /// host part of the address dialled. "instance-id": the instance id, which every
    /// certificate signed at enrolment carries whatever address the fleet is dialled by
    /// (a public IP, or a tag).
    #[serde(default)]
    pub server_name: ServerNameMode,
    #[serde(default = "default_agent_port")]
    pub agent_port: u16,
    /// How many hosts are contacted at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// TCP connect plus TLS handshake deadline, e.g. "3s".
    #[serde(default = "default_connect_timeout", with = "crate::duration_text")]
    pub connect_timeout: std::time::Duration,
    /// Deadline of each unary call to an agent, e.g. "30s".
    #[serde(default = "default_request_timeout", with = "crate::duration_text")]
    pub request_timeout: std::time::Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            source: FleetSource::Static,
            hosts: Vec::new(),
            tag_filters: BTreeMap::new(),
            all_instances: false,
            address: default_address_mode(),
            server_name: ServerNameMode::default(),
            agent_port: default_agent_port(),
            concurrency: default_concurrency(),
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
        }
    }
}

fn default_address_mode() -> String {
    "private-ip".to_string()
}
fn default_agent_port() -> u16 {
    ops_proto::DEFAULT_AGENT_PORT
}
fn default_concurrency() -> usize {
    64
}
fn default_connect_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(3)
}
fn default_request_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

/// One `[[fleet.hosts]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticHost {
    pub name: String,
    /// host:port of the agent.
    pub address: String,
    /// The name to verify in the agent's certificate; default: the address's host part.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Application URL for connectivity checks (optional).
    #[serde(default)]
    pub url: Option<String>,
}

/// `[aws]`: overrides of the standard AWS environment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
}

/// The config file's name in the searched folders.
pub const CONFIG_FILE_NAME: &str = "controller.toml";

/// The places searched for the config file, in order, when neither `--config` nor
/// `OPS_CONTROLLER_CONFIG` names one: `./controller.toml`,
/// `$XDG_CONFIG_HOME/ops/controller.toml` (default `~/.config`), `/etc/ops/controller.toml`.
pub fn search_path() -> Vec<PathBuf> {
    let mut places = vec![PathBuf::from(CONFIG_FILE_NAME)];
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config")));
    if let Some(dir) = xdg {
        places.push(dir.join("ops").join(CONFIG_FILE_NAME));
    }
    places.push(PathBuf::from("/etc/ops").join(CONFIG_FILE_NAME));
    places
}

/// The config file to load: the one named (flag or environment), else the first of
/// `search_path()` that exists; the error lists every place tried.
pub fn locate(named: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = named {
        return Ok(p.to_path_buf());
    }
    let tried = search_path();
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(ConfigError::NotFound { tried }),
    }
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// A configuration that could not be loaded, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no controller config found; tried {}; name one with --config FILE or OPS_CONTROLLER_CONFIG", list_paths(.tried))]
    NotFound { tried: Vec<PathBuf> },
    #[error("cannot read config file {path}: {source} (choose the file with --config FILE or OPS_CONTROLLER_CONFIG)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("this command talks to agents and needs [tls] (ca, cert, key) in the controller config {path}")]
    NoTls { path: PathBuf },
}

impl ControllerConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<ControllerConfig, ConfigError> {
        let mut cfg = Self::load_unchecked_tls(path)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    fn load_unchecked_tls(path: &Path) -> Result<ControllerConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut cfg = Self::parse(&text)
            .map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })?;
        cfg.resolve_relative(path.parent().unwrap_or(Path::new(".")));
        cfg.validate().map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })?;
        Ok(cfg)
    }

    /// Parses TOML text (no validation).
    pub fn parse(text: &str) -> Result<ControllerConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Certificate paths are relative to the config file's folder.
    fn resolve_relative(&mut self, base: &Path) {
        if let Some(tls) = &mut self.tls {
            for p in [&mut tls.ca, &mut tls.cert, &mut tls.key].into_iter().chain(tls.crl.as_mut()) {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        self.enrol.resolve_relative(base);
    }

    /// `[tls]`, or the error naming the file that lacks it.
    pub fn tls(&self) -> Result<&TlsSection, ConfigError> {
        self.tls.as_ref().ok_or_else(|| ConfigError::NoTls { path: self.source.clone().unwrap_or_default() })
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        let f = &self.fleet;
        if f.concurrency == 0 {
            return Err("[fleet] concurrency must be at least 1".into());
        }
        match f.source {
            FleetSource::Static => {
                let mut seen = std::collections::BTreeSet::new();
                for (i, h) in f.hosts.iter().enumerate() {
                    if h.name.trim().is_empty() {
                        return Err(format!("[[fleet.hosts]] entry {} has an empty name", i + 1));
                    }
                    if !seen.insert(h.name.as_str()) {
                        return Err(format!("[[fleet.hosts]] name {:?} appears twice", h.name));
                    }
                    if !h.address.contains(':') {
                        return Err(format!(
                            "[[fleet.hosts]] {:?}: address {:?} must be host:port",
                            h.name, h.address
                        ));
                    }
                }
            }
            FleetSource::Ec2 => {
                if !f.hosts.is_empty() {
                    return Err("[fleet] source = \"ec2\" does not take [[fleet.hosts]]; use source = \"static\"".into());
                }
                if f.tag_filters.is_empty() && !f.all_instances {
                    return Err("[fleet] source = \"ec2\" needs a non-empty tag_filters (e.g. tag_filters = { Project = \"TechHealth\" }), \
                                or all_instances = true to make every instance of the account the fleet"
                        .into());
                }
                if !f.tag_filters.is_empty() && f.all_instances {
                    return Err("[fleet] all_instances = true and tag_filters contradict each other: keep one".into());
                }
            }
        }
        self.runbooks.validate().map_err(|e| e.to_string())?;
        self.maintenance.validate()?;
        self.enrol.validate()?;
        self.incident.validate()?;
        let mode = f.address.as_str();
        if !(mode == "private-ip" || mode == "public-ip" || mode.strip_prefix("tag:").is_some_and(|k| !k.is_empty())) {
            return Err(format!(
                "[fleet] address = {mode:?}: expected \"private-ip\", \"public-ip\" or \"tag:<Key>\""
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BASE: &str = "[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n";

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = ControllerConfig::parse(&format!("{BASE}[fleet]\nsorce = \"static\"\n")).unwrap_err();
        assert!(err.contains("sorce"), "{err}");
    }

    #[test]
    fn duplicate_host_names_are_rejected() {
        let text = format!(
            "{BASE}[[fleet.hosts]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[fleet.hosts]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n"
        );
        let cfg = ControllerConfig::parse(&text).unwrap();
        assert!(cfg.validate().unwrap_err().contains("twice"));
    }

    #[test]
    fn an_ec2_fleet_needs_a_tag_filter_or_an_explicit_all_instances() {
        let cfg = ControllerConfig::parse(&format!("{BASE}[fleet]\nsource = \"ec2\"\n")).unwrap();
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("needs a non-empty tag_filters") && err.contains("all_instances = true"), "{err}");
        let cfg = ControllerConfig::parse(&format!("{BASE}[fleet]\nsource = \"ec2\"\nall_instances = true\n")).unwrap();
        cfg.validate().unwrap();
        let both = format!("{BASE}[fleet]\nsource = \"ec2\"\nall_instances = true\ntag_filters = {{ A = \"b\" }}\n");
        assert!(ControllerConfig::parse(&both).unwrap().validate().unwrap_err().contains("contradict"));
    }

    #[test]
    fn the_example_config_parses_and_validates() {
        let cfg = ControllerConfig::parse(include_str!("../examples/controller.toml")).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.fleet.source, FleetSource::Ec2);
        assert_eq!(cfg.runbooks.deadline, std::time::Duration::from_secs(120));
        assert!(cfg.tls.is_some());
    }

    #[test]
    fn tls_is_optional_until_a_command_needs_agents() {
        let cfg = ControllerConfig::parse("[fleet]\nsource = \"static\"\n").unwrap();
        cfg.validate().unwrap();
        let err = cfg.tls().unwrap_err().to_string();
        assert!(err.contains("needs [tls]"), "{err}");
        assert!(ControllerConfig::parse(BASE).unwrap().tls().is_ok());
    }

    #[test]
    fn the_search_lists_every_place_tried_when_none_exists() {
        let dir = tempfile::tempdir().unwrap();
        let places = search_path();
        assert_eq!(places[0], PathBuf::from("controller.toml"));
        assert_eq!(places.last().unwrap(), &PathBuf::from("/etc/ops/controller.toml"));
        let named = dir.path().join("x.toml");
        assert_eq!(locate(Some(&named)).unwrap(), named);
        let err = ConfigError::NotFound { tried: places.clone() }.to_string();
        for p in &places {
            assert!(err.contains(&p.display().to_string()), "{err}");
        }
    }

    #[test]
    fn address_mode_must_be_known() {
        let cfg = ControllerConfig::parse(&format!("{BASE}[fleet]\nsource = \"ec2\"\ntag_filters = {{ A = \"b\" }}\naddress = \"elastic\"\n")).unwrap();
        assert!(cfg.validate().unwrap_err().contains("elastic"));
        let cfg = ControllerConfig::parse(&format!("{BASE}[fleet]\nsource = \"ec2\"\ntag_filters = {{ A = \"b\" }}\naddress = \"tag:Agent\"\nconnect_timeout = \"250ms\"\n")).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.fleet.connect_timeout, std::time::Duration::from_millis(250));
    }
}
