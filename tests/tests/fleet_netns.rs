//! A fleet of real hosts: agents in their own network namespaces with their own
//! addresses, the controller in another, joined by veth links. `fleet ping` reaches the
//! live ones, names a host with no agent "connection refused" and a host whose link is
//! down "timed out" or "unreachable", all in one concurrent pass.
//!
//! No namespace has a default route, so nothing can leave this machine.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::{Duration, Instant};

use e2e::support::agent::{config_text, write_config, AgentProcess};
use e2e::support::binary;
use e2e::support::certs::TestPki;
use e2e::support::controller::ControllerConfig;
use e2e::support::netns::Lab;

#[test]
fn fleet_ping_across_namespaced_hosts_names_every_failure() {
    // Namespaces need root (CAP_SYS_ADMIN) and a kernel/sandbox that permits them; where they
    // are refused this test fails saying so instead of passing without having run.
    let lab = Lab::new(3).unwrap_or_else(|e| {
        panic!("cannot create network namespaces ({e}): run as root on a host that permits `ip netns add`")
    });
    let pki = TestPki::new();
    let mut agents = Vec::new();
    for i in 0..2 {
        let name = format!("web-{i}");
        let cert = pki.agent_cert(&name, &[name.as_str()], None);
        let listen = format!("{}:7443", lab.hosts[i].addr);
        let mut text = config_text(&pki, &cert, &listen, "", "");
        text = text.replace(
            &format!("state_dir = \"{}\"", pki.path().join("state").display()),
            &format!("state_dir = \"{}\"", pki.path().join(format!("state-{i}")).display()),
        );
        let cfg = write_config(&pki, &format!("agent-{i}"), &text);
        agents.push(AgentProcess::start_in(&cfg, Some(&lab.hosts[i].ns)));
    }
    let cfg = lab
        .hosts
        .iter()
        .enumerate()
        .fold(ControllerConfig::new(&pki).connect_timeout("1s"), |c, (i, h)| {
            let name = format!("web-{i}");
            c.host_named(&name, format!("{}:7443", h.addr), &name)
        })
        .write();
    let ping = || {
        let out = Lab::command_in(&lab.controller_ns, &binary("controller"))
            .args(["--config", cfg.to_str().unwrap(), "--output", "json", "fleet", "ping"])
            .output()
            .unwrap();
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), rows)
    };

    let (code, rows) = ping();
    assert_eq!(code, Some(1));
    assert_eq!(rows[0]["reachable"], true, "{rows}");
    assert_eq!(rows[1]["reachable"], true, "{rows}");
    assert_eq!(rows[2]["reachable"], false);
    assert!(rows[2]["error"].as_str().unwrap().starts_with("connection refused"), "{}", rows[2]);

    lab.cut(1).unwrap();
    let t = Instant::now();
    let (_, rows) = ping();
    assert!(t.elapsed() < Duration::from_secs(6), "one pass, concurrently: {:?}", t.elapsed());
    assert_eq!(rows[0]["reachable"], true, "{rows}");
    let e = rows[1]["error"].as_str().unwrap();
    assert!(e.starts_with("timed out") || e.starts_with("unreachable"), "{e}");
    eprintln!("cut host: {e}");
    drop(agents);
}
