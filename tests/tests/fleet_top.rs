//! `controller top` over several real agents: every host is in each frame, one whose
//! agent is stopped is named as not answering, and the exit code says so.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;

use e2e::support::agent::{config_text, write_config, AgentProcess};
use e2e::support::binary;
use e2e::support::certs::TestPki;
use e2e::support::controller::ControllerConfig;

#[test]
fn top_shows_every_host_and_names_the_one_that_stopped() {
    let pki = TestPki::new();
    let mut agents: Vec<AgentProcess> = (0..3)
        .map(|i| {
            let text = config_text(&pki, &pki.agent, "127.0.0.1:0", "", "");
            AgentProcess::start(&write_config(&pki, &format!("agent-{i}"), &text))
        })
        .collect();
    let path = agents
        .iter()
        .enumerate()
        .fold(ControllerConfig::new(&pki).viewer().connect_timeout("1s"), |c, (i, a)| c.host(&format!("web-{}", i + 1), a.addr))
        .write();
    agents[1].kill();

    let out = Command::new(binary("controller"))
        .args(["--config", path.to_str().unwrap(), "--output", "json", "top", "--interval", "300ms", "--count", "8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let frames: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(frames.len(), 8, "{stdout}");
    for f in &frames {
        assert_eq!(f["hosts"], 3, "every host in every frame: {f}");
    }
    let last = frames.last().unwrap();
    assert_eq!(last["answering"], 2, "{last}");
    assert_eq!(last["not_answering"], serde_json::json!(["web-2"]), "{last}");
    let rows = last["rows"].as_array().unwrap();
    let silent = rows.iter().find(|r| r["host"] == "web-2").unwrap();
    assert!(silent["error"].as_str().unwrap().contains("refused"), "{silent}");
    for r in rows.iter().filter(|r| r["answering"] == true) {
        assert!(r["cpu_percent"].as_f64().is_some() && r["top_process"].as_str().is_some_and(|p| !p.is_empty()), "{r}");
    }
    assert_eq!(out.status.code(), Some(1), "a host not answering is exit 1");
}
