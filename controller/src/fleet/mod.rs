//! The fleet: which hosts exist and how to dial their agents, from the static inventory
//! in the config file (`inventory`) or from EC2 tags (`ec2`). Discovery only lists; it
//! never contacts agents. Nothing here knows the runbooks: what a runbook probes on a
//! host (its application URL, its HTTPS endpoint) is chosen by `runbooks::targets`.

pub mod ec2;
pub mod inventory;

use ops_proto::tls::AgentTarget;
use serde::Serialize;

use crate::aws::{AwsError, AwsSetupError};
use crate::config::{ControllerConfig, FleetSource};

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
    /// The application URL the static inventory gives for this host (`[[fleet.hosts]]
    /// url`). EC2 hosts have none here: the runbooks derive theirs from tags and
    /// templates (`runbooks::targets`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Why this host must not or cannot be dialled (no address of the configured kind, or
    /// an address invented by a local AWS emulator: `ec2::AddressError`,
    /// `ec2::EmulatorAddress`), as the sentence reports show. Such a host is still listed,
    /// so that the runbooks name it instead of dropping it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undialable: Option<Undialable>,
}

/// Why a host of the fleet must not or cannot be dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undialable {
    #[error("cannot be dialled: {0}")]
    NoAddress(#[from] ec2::AddressError),
    #[error("{0}")]
    Emulator(#[from] ec2::EmulatorAddress),
    /// A resumed run's host that discovery no longer finds.
    #[error("no longer in the fleet")]
    LeftFleet,
}

impl Serialize for Undialable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Host {
    pub fn target(&self) -> AgentTarget {
        AgentTarget { address: self.address.clone(), server_name: self.server_name.clone() }
    }
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

/// Fleet discovery failed, or a host asked for is not in the fleet.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no host named {name:?} in the fleet (known: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownHost { name: String, known: Vec<String> },
    /// The AWS clients could not be built.
    #[error("fleet discovery from EC2 failed: {0}")]
    AwsSetup(#[from] AwsSetupError),
    /// EC2 DescribeInstances failed.
    #[error("fleet discovery from EC2 failed: {0}")]
    Ec2(#[from] AwsError),
}

/// Lists the fleet from the configured source.
pub async fn discover(cfg: &ControllerConfig) -> Result<Vec<Host>, FleetError> {
    match cfg.fleet.source {
        FleetSource::Static => Ok(inventory::static_hosts(&cfg.fleet)),
        FleetSource::Ec2 => ec2::discover(cfg).await,
    }
}
