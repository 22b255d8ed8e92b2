//! Where the runbooks look: the agents they ask, each host's application URL and each
//! host's HTTPS endpoint, from the static inventory or the EC2 instances and the
//! `[runbooks]` tags and templates. This is the one module that chooses the runbooks'
//! targets, and every target it hands out has passed the fleet's dial guard
//! (`fleet::ec2::may_dial`), so that no runbook contacts an address a local AWS emulator
//! invented. The guard reads each target's host as its probe will: a URL with
//! `probe::parse_url`, a host:port as the socket does. Pure: it never contacts anything.

use super::config::{expand, RunbooksConfig, TemplateError, TemplateVars};
use super::probe;
use crate::aws::ec2::Instance;
use crate::config::{FleetConfig, FleetSource};
use crate::fleet::ec2::{self as fleet_ec2, EmulatorAddress};
use crate::fleet::{inventory, Host};

/// What the runbooks choose their targets from.
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    pub fleet: &'a FleetConfig,
    pub runbooks: &'a RunbooksConfig,
    /// The AWS endpoint is a local emulator (`AwsClients::local_emulator`).
    pub local_emulator: bool,
}

/// One host's probe target, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host (static inventory) or the instance (EC2) as the report names it.
    pub label: String,
    /// The URL or host:port to probe, or why there is none or it must not be probed.
    pub address: Result<String, TargetError>,
}

/// Why a host has no probe target, or one that must not be probed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The template lacks a value for this host, e.g. "no public ip".
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A static host without its own `url`, and `[runbooks] app_url` cannot be filled.
    #[error("no url in [[fleet.hosts]] and [runbooks] app_url cannot be filled: {0}")]
    NoInventoryUrl(#[source] TemplateError),
    /// The address is known but the dial guard refused it: the report names it, nothing
    /// probes it.
    #[error("{address}: {guard}")]
    NotDialled { address: String, guard: EmulatorAddress },
}

impl Targets<'_> {
    /// The agents to ask: the static inventory, or the running instances among
    /// `instances` (EC2 source), addressed as `[fleet] address` says. A host that cannot
    /// or must not be dialled stays in the list with its reason (`Host::undialable`), so
    /// that every check that asks agents names it.
    pub fn agent_hosts(&self, instances: &[Instance]) -> Vec<Host> {
        match self.fleet.source {
            FleetSource::Static => inventory::static_hosts(self.fleet),
            FleetSource::Ec2 => fleet_ec2::hosts_from_instances(&running(instances), self.fleet, self.local_emulator),
        }
    }

    /// The application URL of every host (static) or running instance (EC2): the host's
    /// own `url`, else `[runbooks] app_url` with `{host}` (the host part of its agent
    /// address) and `{name}`; an instance's `app_url_tag` tag, else the template.
    pub fn app_urls(&self, instances: &[Instance]) -> Vec<Target> {
        let rb = self.runbooks;
        match self.fleet.source {
            FleetSource::Static => inventory::static_hosts(self.fleet)
                .into_iter()
                .map(|h| {
                    let url = match &h.url {
                        Some(u) => Ok(u.clone()),
                        None => expand(&rb.app_url, &static_vars(&h)).map_err(TargetError::NoInventoryUrl),
                    };
                    self.target(h.name, url, Kind::Url)
                })
                .collect(),
            FleetSource::Ec2 => self.per_instance(instances, Kind::Url, |i, agent_host| app_url(i, rb, agent_host)),
        }
    }

    /// The HTTPS endpoint (host:port) of every host (static) or running instance (EC2):
    /// `[runbooks] tls_endpoint` with `{host}` and `{name}`; an instance's
    /// `tls_endpoint_tag` tag, else the template.
    pub fn tls_endpoints(&self, instances: &[Instance]) -> Vec<Target> {
        let rb = self.runbooks;
        match self.fleet.source {
            FleetSource::Static => inventory::static_hosts(self.fleet)
                .into_iter()
                .map(|h| {
                    let ep = expand(&rb.tls_endpoint, &static_vars(&h)).map_err(TargetError::from);
                    self.target(h.name, ep, Kind::HostPort)
                })
                .collect(),
            FleetSource::Ec2 => self.per_instance(instances, Kind::HostPort, |i, agent_host| tls_endpoint(i, rb, agent_host)),
        }
    }

    /// One target per running instance, `{host}` being the address discovery resolved for
    /// its agent.
    fn per_instance(&self, instances: &[Instance], kind: Kind, address: impl Fn(&Instance, &str) -> Result<String, TemplateError>) -> Vec<Target> {
        let running = running(instances);
        let hosts = fleet_ec2::hosts_from_instances(&running, self.fleet, self.local_emulator);
        running
            .iter()
            .map(|i| {
                let agent_host = hosts
                    .iter()
                    .find(|h| h.instance_id.as_deref() == Some(i.id.as_str()))
                    .map(|h| ops_proto::tls::host_part(&h.address))
                    .unwrap_or_default();
                self.target(super::checks::instance_label(i), address(i, agent_host).map_err(TargetError::from), kind)
            })
            .collect()
    }

    /// A target, unless the dial guard refuses its host. A URL the probe would not send
    /// (`parse_url` refuses it) is left for the probe to name: it contacts nothing.
    fn target(&self, label: String, address: Result<String, TargetError>, kind: Kind) -> Target {
        let address = address.and_then(|a| {
            let guarded = match kind {
                Kind::Url => match probe::parse_url(&a) {
                    Ok(url) => fleet_ec2::may_dial(self.local_emulator, &url.host),
                    Err(_) => Ok(()),
                },
                Kind::HostPort => fleet_ec2::may_dial(self.local_emulator, ops_proto::tls::host_part(&a)),
            };
            match guarded {
                Ok(()) => Ok(a),
                Err(guard) => Err(TargetError::NotDialled { address: a, guard }),
            }
        });
        Target { label, address }
    }
}

/// How a target's host is read: as the probe that will use it reads it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// An http(s) URL (`probe::parse_url`).
    Url,
    /// host:port, as a socket connects to it.
    HostPort,
}

fn running(instances: &[Instance]) -> Vec<Instance> {
    instances.iter().filter(|i| i.state == "running").cloned().collect()
}

/// The application URL of an instance: its `app_url_tag` tag, else the `app_url`
/// template. Err says what the template lacks (e.g. "no public ip"). Pure.
pub fn app_url(i: &Instance, runbooks: &RunbooksConfig, agent_host: &str) -> Result<String, TemplateError> {
    if let Some(url) = i.tags.get(&runbooks.app_url_tag) {
        return Ok(url.clone());
    }
    expand(&runbooks.app_url, &instance_vars(i, agent_host))
}

/// host:port of an instance's HTTPS endpoint: its `tls_endpoint_tag` tag, else the
/// `tls_endpoint` template. Pure.
pub fn tls_endpoint(i: &Instance, runbooks: &RunbooksConfig, agent_host: &str) -> Result<String, TemplateError> {
    if let Some(ep) = i.tags.get(&runbooks.tls_endpoint_tag) {
        return Ok(ep.clone());
    }
    expand(&runbooks.tls_endpoint, &instance_vars(i, agent_host))
}

/// The template values of an instance; `{host}` is the host part of its agent address.
fn instance_vars<'a>(i: &'a Instance, agent_host: &'a str) -> TemplateVars<'a> {
    TemplateVars {
        public_ip: i.public_ip.as_deref(),
        private_ip: i.private_ip.as_deref(),
        instance_id: Some(&i.id),
        name: i.name.as_deref(),
        host: Some(agent_host).filter(|h| !h.is_empty()),
    }
}

/// The template values of a static host: `{host}` (its agent address's host part) and
/// `{name}`.
fn static_vars(h: &Host) -> TemplateVars<'_> {
    TemplateVars { host: Some(ops_proto::tls::host_part(&h.address)), name: Some(&h.name), ..Default::default() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::StaticHost;

    fn instance(id: &str, state: &str, public_ip: Option<&str>, tags: &[(&str, &str)]) -> Instance {
        Instance {
            id: id.into(),
            name: Some(format!("web-{id}")),
            state: state.into(),
            instance_type: None,
            private_ip: Some("10.0.1.5".into()),
            private_dns: None,
            public_ip: public_ip.map(str::to_string),
            launch_time: None,
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            volume_ids: vec![],
            security_group_ids: vec![],
        }
    }

    #[test]
    fn the_url_tag_wins_over_the_template() {
        let rb = RunbooksConfig::default();
        let mut i = instance("i-1", "running", None, &[("AppUrl", "http://127.0.0.1:8080/")]);
        assert_eq!(app_url(&i, &rb, "").unwrap(), "http://127.0.0.1:8080/");
        i.tags.clear();
        assert_eq!(app_url(&i, &rb, "").unwrap_err().to_string(), "no public ip");
        i.public_ip = Some("203.0.113.9".into());
        assert_eq!(app_url(&i, &rb, "").unwrap(), "http://203.0.113.9/");
        assert_eq!(tls_endpoint(&i, &rb, "").unwrap(), "203.0.113.9:443");
    }

    #[test]
    fn instance_targets_are_the_running_ones_and_an_emulators_addresses_are_named_not_dialled() {
        let fleet = FleetConfig { source: FleetSource::Ec2, address: "tag:Agent".into(), ..Default::default() };
        let rb = RunbooksConfig { app_url: "http://{host}:8080/".into(), ..Default::default() };
        let instances = [
            instance("a", "running", None, &[("Agent", "127.0.0.1:7443")]),
            instance("b", "running", Some("203.0.113.9"), &[("Agent", "127.0.0.1:7444"), ("AppUrl", "http://203.0.113.9/")]),
            instance("c", "stopped", None, &[("Agent", "127.0.0.1:7445")]),
            instance("d", "running", None, &[]),
        ];
        let emulator = Targets { fleet: &fleet, runbooks: &rb, local_emulator: true };
        let urls = emulator.app_urls(&instances);
        assert_eq!(urls.iter().map(|t| t.label.as_str()).collect::<Vec<_>>(), ["web-a (a)", "web-b (b)", "web-d (d)"]);
        assert_eq!(urls[0].address, Ok("http://127.0.0.1:8080/".into()), "{{host}} is the agent's address");
        assert_eq!(urls[1].address, Err(TargetError::NotDialled { address: "http://203.0.113.9/".into(), guard: EmulatorAddress }));
        assert_eq!(urls[2].address.as_ref().unwrap_err().to_string(), "no host", "no agent address, so no {{host}}");
        let endpoints = emulator.tls_endpoints(&instances);
        assert!(matches!(&endpoints[0].address, Err(TargetError::Template(_))), "no public ip: {:?}", endpoints[0]);
        assert_eq!(endpoints[1].address, Err(TargetError::NotDialled { address: "203.0.113.9:443".into(), guard: EmulatorAddress }));
        assert_eq!(emulator.agent_hosts(&instances).len(), 3, "stopped instances are not asked");

        // The guard reads a URL's host as the probe does: `url` normalises it, and a URL
        // with credentials is refused by the probe itself, never dialled.
        let fleet_static = |url: &str| FleetConfig {
            hosts: vec![StaticHost { name: "s".into(), address: "127.0.0.1:7443".into(), server_name: None, url: Some(url.into()) }],
            ..Default::default()
        };
        for (url, dialled) in [("http://LOCALHOST:8080/", true), ("http://0x7f.1/", true), ("http://[::1]/", true), ("http://10.0.1.5/", false)] {
            let f = fleet_static(url);
            let got = Targets { fleet: &f, ..emulator }.app_urls(&[]).remove(0).address;
            assert_eq!(got.is_ok(), dialled, "{url}: {got:?}");
        }
        let f = fleet_static("http://127.0.0.1:80@10.0.0.1/");
        let tricky = Targets { fleet: &f, ..emulator }.app_urls(&[]).remove(0).address.unwrap();
        assert!(probe::parse_url(&tricky).is_err(), "left for the probe, which refuses credentials and contacts nothing");

        let real = Targets { local_emulator: false, ..emulator };
        assert_eq!(real.app_urls(&instances)[1].address, Ok("http://203.0.113.9/".into()));
        assert_eq!(real.tls_endpoints(&instances)[1].address, Ok("203.0.113.9:443".into()));
    }

    #[test]
    fn static_hosts_use_their_own_url_else_the_template_with_their_address() {
        let host = |name: &str, address: &str, url: Option<&str>| StaticHost {
            name: name.into(),
            address: address.into(),
            server_name: None,
            url: url.map(str::to_string),
        };
        let fleet = FleetConfig {
            hosts: vec![host("own", "127.0.0.1:7443", Some("http://127.0.0.1:9/")), host("templated", "127.0.0.2:7443", None)],
            ..Default::default()
        };
        let rb = RunbooksConfig { app_url: "http://{host}/{name}".into(), tls_endpoint: "{host}:8443".into(), ..Default::default() };
        let t = Targets { fleet: &fleet, runbooks: &rb, local_emulator: false };
        let urls = t.app_urls(&[]);
        assert_eq!(urls[0].address, Ok("http://127.0.0.1:9/".into()));
        assert_eq!(urls[1].address, Ok("http://127.0.0.2/templated".into()));
        assert_eq!(t.tls_endpoints(&[])[1].address, Ok("127.0.0.2:8443".into()));
        let unfillable = RunbooksConfig { app_url: "http://{public_ip}/".into(), ..rb.clone() };
        let t = Targets { runbooks: &unfillable, ..t };
        assert_eq!(
            t.app_urls(&[])[1].address.as_ref().unwrap_err().to_string(),
            "no url in [[fleet.hosts]] and [runbooks] app_url cannot be filled: no public ip"
        );
    }
}
