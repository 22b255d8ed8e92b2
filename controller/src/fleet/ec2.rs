//! Fleet discovery from EC2: running instances carrying every `[fleet] tag_filters`
//! tag become hosts, dialled at their private IP, public IP or the host:port held in a
//! tag (`address = "tag:<Key>"`, which also lets tests point instances at loopback
//! agents). Discovery only lists; it never contacts an agent.
//!
//! Here too is the one guard that keeps the addresses a local AWS emulator invents from
//! being dialled (`may_dial`): the agent hosts listed here and every target the runbooks
//! choose (`runbooks::targets`) pass through it, and nothing else decides that.

use std::collections::BTreeMap;

use ops_proto::tls::AgentTarget;

use super::{FleetError, Host, Undialable};
use crate::aws::ec2::{self, Instance};
use crate::aws::AwsClients;
use crate::config::{ControllerConfig, FleetConfig};

/// Lists running instances matching `[fleet] tag_filters` as hosts. Instances that
/// cannot or must not be dialled are left out with a warning.
pub async fn discover(cfg: &ControllerConfig) -> Result<Vec<Host>, FleetError> {
    let clients = AwsClients::load(&cfg.aws).await?;
    discover_with(&clients, cfg).await
}

/// `discover` with clients already built (tests build theirs).
pub async fn discover_with(clients: &AwsClients, cfg: &ControllerConfig) -> Result<Vec<Host>, FleetError> {
    let instances = ec2::describe_instances(&clients.ec2, &cfg.fleet.tag_filters, &["running"]).await?;
    let (hosts, left_out): (Vec<Host>, Vec<Host>) =
        hosts_from_instances(&instances, &cfg.fleet, clients.local_emulator).into_iter().partition(|h| h.undialable.is_none());
    for h in left_out {
        tracing::warn!(instance = %h.instance_id.as_deref().unwrap_or(&h.name), "left out of the fleet: {}", h.undialable.map(|u| u.to_string()).unwrap_or_default());
    }
    Ok(hosts)
}

/// One host per instance. Those that cannot be dialled (no address of the configured
/// kind) or must not be (`may_dial`) carry the reason in `undialable`. Names are the Name
/// tag (or the instance id); a Name shared by several instances gets the instance id
/// appended so that every host name is unique. Pure.
pub fn hosts_from_instances(instances: &[Instance], fleet: &FleetConfig, local_emulator: bool) -> Vec<Host> {
    let mut name_count: BTreeMap<&str, usize> = BTreeMap::new();
    for i in instances {
        *name_count.entry(i.name.as_deref().unwrap_or(&i.id)).or_default() += 1;
    }
    let mut hosts = Vec::new();
    for i in instances {
        let base = i.name.as_deref().unwrap_or(&i.id);
        let name = if name_count.get(base).copied().unwrap_or(0) > 1 && base != i.id { format!("{base}/{}", i.id) } else { base.to_string() };
        let (address, server_name, undialable) = match agent_address(i, fleet) {
            Ok(address) => {
                let name = match fleet.server_name {
                    crate::config::ServerNameMode::Address => None,
                    crate::config::ServerNameMode::InstanceId => Some(i.id.clone()),
                };
                let target = AgentTarget::new(address, name);
                let refused = may_dial(local_emulator, ops_proto::tls::host_part(&target.address)).err().map(Undialable::from);
                (target.address, target.server_name, refused)
            }
            Err(why) => (String::new(), String::new(), Some(Undialable::from(why))),
        };
        hosts.push(Host {
            name,
            address,
            server_name,
            instance_id: Some(i.id.clone()),
            instance_type: i.instance_type.clone(),
            private_ip: i.private_ip.clone(),
            public_ip: i.public_ip.clone(),
            url: None,
            undialable,
        });
    }
    hosts
}

/// An instance has no address of the kind `[fleet] address` names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("no private IP address")]
    NoPrivateIp,
    #[error("no public IP address")]
    NoPublicIp,
    /// `address = "tag:<Key>"` and the instance lacks that tag.
    #[error("no tag {key:?}")]
    NoTag { key: String },
}

/// host:port of the instance's agent as `[fleet] address` says. Pure.
pub fn agent_address(i: &Instance, fleet: &FleetConfig) -> Result<String, AddressError> {
    let ip_port = |ip: &Option<String>, missing: AddressError| {
        ip.as_deref()
            .map(|ip| if ip.contains(':') { format!("[{ip}]:{}", fleet.agent_port) } else { format!("{ip}:{}", fleet.agent_port) })
            .ok_or(missing)
    };
    match fleet.address.as_str() {
        "private-ip" => ip_port(&i.private_ip, AddressError::NoPrivateIp),
        "public-ip" => ip_port(&i.public_ip, AddressError::NoPublicIp),
        mode => {
            let key = mode.strip_prefix("tag:").unwrap_or(mode);
            let value = i.tags.get(key).ok_or_else(|| AddressError::NoTag { key: key.to_string() })?;
            if value.contains(':') {
                Ok(value.clone())
            } else {
                Ok(format!("{value}:{}", fleet.agent_port))
            }
        }
    }
}

/// Why an address was not dialled: the AWS endpoint is a local emulator, which invents
/// the addresses it reports for instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not contacted: the AWS endpoint is a local emulator, whose instance addresses are not real hosts (only loopback targets are contacted; point instances at loopback with tags)")]
pub struct EmulatorAddress;

/// The guard: whether `host` may be dialled. Always against real AWS; against a local
/// emulator only on loopback, because the emulator's instance addresses are invented and
/// may belong to anyone on the internet or the local network. `host` must be the host as
/// the dialler itself will read it (`host_part` of the host:port a socket connects to,
/// `runbooks::probe::parse_url` of a URL), never a second parse, so that the guard and
/// the dial cannot disagree. Every agent and probe target passes through here. Pure.
pub fn may_dial(local_emulator: bool, host: &str) -> Result<(), EmulatorAddress> {
    if !local_emulator || crate::aws::is_loopback_host(host) {
        Ok(())
    } else {
        Err(EmulatorAddress)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn instance(id: &str, name: Option<&str>, tags: &[(&str, &str)]) -> Instance {
        let mut t: BTreeMap<String, String> = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Some(n) = name {
            t.insert("Name".into(), n.into());
        }
        Instance {
            id: id.into(),
            name: name.map(str::to_string),
            state: "running".into(),
            instance_type: Some("t3.micro".into()),
            private_ip: Some("10.0.1.5".into()),
            public_ip: None,
            launch_time: None,
            tags: t,
            volume_ids: vec![],
            security_group_ids: vec![],
            private_dns: None,
        }
    }

    #[test]
    fn hosts_are_dialled_at_the_configured_address_kind() {
        let mut fleet = FleetConfig::default();
        let i = instance("i-1", Some("web-1"), &[("Agent", "127.0.0.1:9443")]);
        assert_eq!(agent_address(&i, &fleet).unwrap(), "10.0.1.5:7443");
        fleet.address = "public-ip".into();
        assert_eq!(agent_address(&i, &fleet).unwrap_err().to_string(), "no public IP address");
        fleet.address = "tag:Agent".into();
        let hosts = hosts_from_instances(std::slice::from_ref(&i), &fleet, false);
        assert_eq!(hosts[0].undialable, None);
        assert_eq!(hosts[0].address, "127.0.0.1:9443");
        assert_eq!(hosts[0].server_name, "127.0.0.1");
        assert_eq!(hosts[0].instance_id.as_deref(), Some("i-1"));
        assert_eq!(hosts[0].url, None, "discovery knows no runbook URL templates");
    }

    #[test]
    fn shared_names_get_the_instance_id_and_undiallable_instances_are_named() {
        let fleet = FleetConfig { address: "tag:Agent".into(), ..Default::default() };
        let a = instance("i-a", Some("web"), &[("Agent", "127.0.0.1:1")]);
        let b = instance("i-b", Some("web"), &[("Agent", "127.0.0.1:2")]);
        let c = instance("i-c", None, &[]);
        let hosts = hosts_from_instances(&[a, b, c], &fleet, false);
        assert_eq!(hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["web/i-a", "web/i-b", "i-c"]);
        assert_eq!(hosts[2].undialable.as_ref().map(ToString::to_string).as_deref(), Some("cannot be dialled: no tag \"Agent\""));
        let invented = instance("i-d", Some("db"), &[("Agent", "10.0.1.5:7443")]);
        let hosts = hosts_from_instances(&[invented], &fleet, true);
        assert_eq!(hosts[0].undialable, Some(Undialable::Emulator(EmulatorAddress)), "an emulator's address is never dialled");
        assert!(EmulatorAddress.to_string().starts_with("not contacted: the AWS endpoint is a local emulator"));
    }

    #[test]
    fn only_loopback_hosts_may_be_dialled_when_aws_is_a_local_emulator() {
        for ok in ["127.0.0.2", "localhost", "::1", "[::1]"] {
            assert_eq!(may_dial(true, ok), Ok(()), "{ok}");
        }
        for refused in ["54.214.77.14", "10.0.1.5", "2001:db8::1", "127.0.0.1.example.com", ""] {
            assert_eq!(may_dial(true, refused), Err(EmulatorAddress), "{refused}");
        }
        assert_eq!(may_dial(false, "10.0.1.5"), Ok(()), "real AWS: every address is real");
    }
}
