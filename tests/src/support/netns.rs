//! Test hosts with their own network stacks: Linux network namespaces made and removed
//! by the test itself, joined to a "controller" namespace by veth pairs.
//!
//! Everything, controller included, runs inside namespaces that have no default route,
//! so no packet can leave this machine whatever a test does; the root namespace's
//! routing is never touched. Needs root and iproute2 (`scripts/setup` installs it).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A small lab: one controller namespace and `hosts` host namespaces, each host on its
/// own /30 link to the controller. Removed when dropped.
pub struct Lab {
    pub controller_ns: String,
    pub hosts: Vec<LabHost>,
}

/// One host of the lab.
pub struct LabHost {
    pub ns: String,
    /// The host's address as the controller sees it.
    pub addr: Ipv4Addr,
    /// The host side of its veth link.
    pub link: String,
}

impl Lab {
    /// Makes the namespaces and links. Each run uses its own names, so parallel tests
    /// and leftovers of a crashed run do not collide.
    pub fn new(hosts: usize) -> Result<Lab, String> {
        let id = format!("{}{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::SeqCst));
        let controller_ns = format!("opsc{id}");
        ip(&["netns", "add", &controller_ns])?;
        let mut lab = Lab { controller_ns, hosts: Vec::new() };
        ip(&["-n", &lab.controller_ns, "link", "set", "lo", "up"])?;
        for i in 0..hosts {
            let ns = format!("opsh{id}x{i}");
            ip(&["netns", "add", &ns])?;
            let link = format!("oh{id}x{i}");
            let peer = format!("oc{id}x{i}");
            lab.hosts.push(LabHost { ns: ns.clone(), addr: Ipv4Addr::new(10, 213, i as u8, 2), link: link.clone() });
            ip(&["link", "add", &link, "netns", &ns, "type", "veth", "peer", "name", &peer, "netns", &lab.controller_ns])?;
            let host_cidr = format!("10.213.{i}.2/30");
            let ctl_cidr = format!("10.213.{i}.1/30");
            ip(&["-n", &ns, "addr", "add", &host_cidr, "dev", &link])?;
            ip(&["-n", &ns, "link", "set", &link, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &lab.controller_ns, "addr", "add", &ctl_cidr, "dev", &peer])?;
            ip(&["-n", &lab.controller_ns, "link", "set", &peer, "up"])?;
        }
        Ok(lab)
    }

    /// A command run inside namespace `ns`.
    pub fn command_in(ns: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Takes a host's link down: the controller's packets to it go nowhere.
    pub fn cut(&self, host: usize) -> Result<(), String> {
        let h = &self.hosts[host];
        ip(&["-n", &h.ns, "link", "set", &h.link, "down"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace removes its veth ends (and so their peers).
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.controller_ns]);
    }
}
