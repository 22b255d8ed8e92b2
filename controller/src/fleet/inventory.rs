//! The static inventory: `[[fleet.hosts]]` of the controller config, in file order. Pure;
//! it never contacts a host.

use ops_proto::tls::AgentTarget;

use super::Host;
use crate::config::FleetConfig;

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
