//! The fleet: which hosts exist and how to dial their agents, from the static inventory
//! in the config file or from EC2 tags. Discovery only lists; it never contacts agents.

use ops_proto::tls::AgentTarget;
use serde::Serialize;

use crate::config::{FleetConfig, FleetSource};

/// One host of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// Inventory name (static) or the Name tag, falling back to the instance id (EC2).
    pub name: String,
    /// host:port of the agent.
    pub address: String,
    /// The name the agent's certificate must carry.
    pub server_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Application URL for connectivity checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Why this host must not or cannot be dialled (no address of the configured kind, or
    /// an address invented by a local AWS emulator). Such a host is still listed, so that
    /// the runbooks name it instead of dropping it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undialable: Option<String>,
}

impl Host {
    pub fn target(&self) -> AgentTarget {
        AgentTarget { address: self.address.clone(), server_name: self.server_name.clone() }
    }
}

/// The hosts of the static inventory, in file order.
pub fn static_hosts(cfg: &FleetConfig) -> Vec<Host> {
    cfg.hosts
        .iter()
        .map(|h| {
            let target = AgentTarget::new(h.address.clone(), h.server_name.clone());
            Host {
                name: h.name.clone(),
                address: target.address,
                server_name: target.server_name,
                instance_id: None,
                instance_type: None,
                private_ip: None,
                public_ip: None,
                url: h.url.clone(),
                undialable: None,
            }
        })
        .collect()
}

/// Picks one host by name (or instance id) from a fleet.
pub fn find<'a>(hosts: &'a [Host], name: &str) -> Result<&'a Host, FleetError> {
    hosts
        .iter()
        .find(|h| h.name == name || h.instance_id.as_deref() == Some(name))
        .ok_or_else(|| FleetError::UnknownHost {
            name: name.to_string(),
            known: hosts.iter().map(|h| h.name.clone()).collect(),
        })
}

/// Fleet discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no host named {name:?} in the fleet (known: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownHost { name: String, known: Vec<String> },
    #[error("fleet discovery from EC2 failed: {0}")]
    Ec2(String),
}

/// Lists the fleet from the configured source.
pub async fn discover(cfg: &crate::config::ControllerConfig) -> Result<Vec<Host>, FleetError> {
    match cfg.fleet.source {
        FleetSource::Static => Ok(static_hosts(&cfg.fleet)),
        FleetSource::Ec2 => crate::aws_fleet::discover(cfg).await,
    }
}
