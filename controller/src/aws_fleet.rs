//! Fleet discovery from EC2: running instances carrying every `[fleet] tag_filters`
//! tag become hosts, dialled at their private IP, public IP or the host:port held in a
//! tag (`address = "tag:<Key>"`, which also lets tests point instances at loopback
//! agents). Discovery only lists; it never contacts an agent.

use std::collections::BTreeMap;

use ops_proto::tls::AgentTarget;

use crate::aws::ec2::{self, Instance};
use crate::aws::AwsClients;
use crate::config::{ControllerConfig, FleetConfig};
use crate::fleet::{FleetError, Host};
use crate::runbooks::config::{expand, RunbooksConfig, TemplateVars};

/// Lists running instances matching `[fleet] tag_filters` as hosts. Instances that
/// cannot be dialled (no address of the configured kind) are left out with a warning.
pub async fn discover(cfg: &ControllerConfig) -> Result<Vec<Host>, FleetError> {
    let clients = AwsClients::load(&cfg.aws).await.map_err(|e| FleetError::Ec2(e.to_string()))?;
    discover_with(&clients, cfg).await
}

/// `discover` with clients already built (tests build theirs).
pub async fn discover_with(clients: &AwsClients, cfg: &ControllerConfig) -> Result<Vec<Host>, FleetError> {
    let instances = ec2::describe_instances(&clients.ec2, &cfg.fleet.tag_filters, &["running"])
        .await
        .map_err(|e| FleetError::Ec2(e.to_string()))?;
    let (hosts, left_out): (Vec<Host>, Vec<Host>) =
        hosts_from_instances(&instances, &cfg.fleet, &cfg.runbooks, clients.local_emulator).into_iter().partition(|h| h.undialable.is_none());
    for h in left_out {
        tracing::warn!(instance = %h.instance_id.as_deref().unwrap_or(&h.name), "left out of the fleet: {}", h.undialable.unwrap_or_default());
    }
    Ok(hosts)
}

/// One host per instance. Those that cannot be dialled (no address of the configured
/// kind) or must not be (an address a local AWS emulator invented: this is the one place
/// that guard is applied to agents) carry the reason in `undialable`. Names are the Name
/// tag (or the instance id); a Name shared by several instances gets the instance id
/// appended so that every host name is unique. Pure.
pub fn hosts_from_instances(instances: &[Instance], fleet: &FleetConfig, runbooks: &RunbooksConfig, local_emulator: bool) -> Vec<Host> {
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
                let target = AgentTarget::new(address, None);
                let refused = !crate::aws::may_contact(local_emulator, ops_proto::tls::host_part(&target.address));
                (target.address, target.server_name, refused.then(|| crate::aws::NOT_CONTACTED.to_string()))
            }
            Err(why) => (String::new(), String::new(), Some(format!("cannot be dialled: {why}"))),
        };
        hosts.push(Host {
            name,
            url: app_url(i, runbooks, ops_proto::tls::host_part(&address)).ok(),
            address,
            server_name,
            instance_id: Some(i.id.clone()),
            instance_type: i.instance_type.clone(),
            private_ip: i.private_ip.clone(),
            public_ip: i.public_ip.clone(),
            undialable,
        });
    }
    hosts
}

/// host:port of the instance's agent as `[fleet] address` says. Pure.
pub fn agent_address(i: &Instance, fleet: &FleetConfig) -> Result<String, String> {
    let ip_port = |ip: &Option<String>, what: &str| {
        ip.as_deref()
            .map(|ip| if ip.contains(':') { format!("[{ip}]:{}", fleet.agent_port) } else { format!("{ip}:{}", fleet.agent_port) })
            .ok_or_else(|| format!("no {what} IP address"))
    };
    match fleet.address.as_str() {
        "private-ip" => ip_port(&i.private_ip, "private"),
        "public-ip" => ip_port(&i.public_ip, "public"),
        mode => {
            let key = mode.strip_prefix("tag:").unwrap_or(mode);
            let value = i.tags.get(key).ok_or_else(|| format!("no tag {key:?}"))?;
            if value.contains(':') {
                Ok(value.clone())
            } else {
                Ok(format!("{value}:{}", fleet.agent_port))
            }
        }
    }
}

/// The application URL of an instance: its `app_url_tag` tag, else the `app_url`
/// template. Err says what the template lacks (e.g. "no public ip"). Pure.
pub fn app_url(i: &Instance, runbooks: &RunbooksConfig, agent_host: &str) -> Result<String, String> {
    if let Some(url) = i.tags.get(&runbooks.app_url_tag) {
        return Ok(url.clone());
    }
    expand(&runbooks.app_url, &vars(i, agent_host))
}

/// host:port of an instance's HTTPS endpoint: its `tls_endpoint_tag` tag, else the
/// `tls_endpoint` template. Pure.
pub fn tls_endpoint(i: &Instance, runbooks: &RunbooksConfig, agent_host: &str) -> Result<String, String> {
    if let Some(ep) = i.tags.get(&runbooks.tls_endpoint_tag) {
        return Ok(ep.clone());
    }
    expand(&runbooks.tls_endpoint, &vars(i, agent_host))
}

/// The template values of an instance; `{host}` is the host part of its agent address.
fn vars<'a>(i: &'a Instance, agent_host: &'a str) -> TemplateVars<'a> {
    TemplateVars {
        public_ip: i.public_ip.as_deref(),
        private_ip: i.private_ip.as_deref(),
        instance_id: Some(&i.id),
        name: i.name.as_deref(),
        host: Some(agent_host).filter(|h| !h.is_empty()),
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
        }
    }

    #[test]
    fn hosts_are_dialled_at_the_configured_address_kind() {
        let mut fleet = FleetConfig::default();
        let rb = RunbooksConfig::default();
        let i = instance("i-1", Some("web-1"), &[("Agent", "127.0.0.1:9443")]);
        assert_eq!(agent_address(&i, &fleet).unwrap(), "10.0.1.5:7443");
        fleet.address = "public-ip".into();
        assert_eq!(agent_address(&i, &fleet).unwrap_err(), "no public IP address");
        fleet.address = "tag:Agent".into();
        let hosts = hosts_from_instances(std::slice::from_ref(&i), &fleet, &rb, false);
        assert_eq!(hosts[0].undialable, None);
        assert_eq!(hosts[0].address, "127.0.0.1:9443");
        assert_eq!(hosts[0].server_name, "127.0.0.1");
        assert_eq!(hosts[0].instance_id.as_deref(), Some("i-1"));
        assert_eq!(hosts[0].url, None, "no public IP and no AppUrl tag: no URL");
    }

    #[test]
    fn shared_names_get_the_instance_id_and_undiallable_instances_are_named() {
        let fleet = FleetConfig { address: "tag:Agent".into(), ..Default::default() };
        let a = instance("i-a", Some("web"), &[("Agent", "127.0.0.1:1")]);
        let b = instance("i-b", Some("web"), &[("Agent", "127.0.0.1:2")]);
        let c = instance("i-c", None, &[]);
        let hosts = hosts_from_instances(&[a, b, c], &fleet, &RunbooksConfig::default(), false);
        assert_eq!(hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["web/i-a", "web/i-b", "i-c"]);
        assert_eq!(hosts[2].undialable.as_deref(), Some("cannot be dialled: no tag \"Agent\""));
        let invented = instance("i-d", Some("db"), &[("Agent", "10.0.1.5:7443")]);
        let hosts = hosts_from_instances(&[invented], &fleet, &RunbooksConfig::default(), true);
        assert_eq!(hosts[0].undialable.as_deref(), Some(crate::aws::NOT_CONTACTED), "an emulator's address is never dialled");
    }

    #[test]
    fn the_url_tag_wins_over_the_template() {
        let rb = RunbooksConfig::default();
        let mut i = instance("i-1", None, &[("AppUrl", "http://127.0.0.1:8080/")]);
        assert_eq!(app_url(&i, &rb, "").unwrap(), "http://127.0.0.1:8080/");
        i.tags.clear();
        i.public_ip = Some("203.0.113.9".into());
        assert_eq!(app_url(&i, &rb, "").unwrap(), "http://203.0.113.9/");
        assert_eq!(tls_endpoint(&i, &rb, "").unwrap(), "203.0.113.9:443");
    }
}
