//! The controller binary against real agent processes: `fleet ping` with a live and a
//! dead host (table and JSON), `diag --count` JSON lines, and the agent's graceful
//! shutdown on SIGTERM.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::process::Command;

use e2e::support::agent::{config_text, write_config, AgentProcess};
use e2e::support::certs::TestPki;
use e2e::support::controller::{run, static_config, ControllerConfig};
use e2e::support::{binary, free_port};



fn controller_config(pki: &TestPki, hosts: &[(&str, String)]) -> PathBuf {
    static_config(pki, hosts, "")
}

fn controller(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    run(config, &[], args)
}

fn start_agent(pki: &TestPki) -> AgentProcess {
    let text = config_text(pki, &pki.agent, "127.0.0.1:0", "", "");
    AgentProcess::start(&write_config(pki, "agent-proc", &text))
}

#[test]
fn fleet_ping_reports_live_and_dead_hosts() {
    let pki = TestPki::new();
    let agent = start_agent(&pki);
    let dead = format!("127.0.0.1:{}", free_port());
    let cfg = controller_config(&pki, &[("web-1", agent.addr.to_string()), ("web-2", dead.clone())]);

    let (code, out, err) = controller(&cfg, &["--output", "json", "fleet", "ping"]);
    assert_eq!(code, 1, "one host is down, so exit 1; stderr: {err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let live = &rows[0];
    assert_eq!(live["name"], "web-1");
    assert_eq!(live["reachable"], true);
    assert_eq!(live["hostname"], rustix::system::uname().nodename().to_str().unwrap());
    assert_eq!(live["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(live["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(live["error"].is_null());
    let down = &rows[1];
    assert_eq!(down["name"], "web-2");
    assert_eq!(down["reachable"], false);
    assert!(down["hostname"].is_null());
    assert!(down["error"].as_str().unwrap().starts_with("connection refused"), "{}", down["error"]);

    let (code, out, _) = controller(&cfg, &["fleet", "ping"]);
    assert_eq!(code, 1);
    assert!(out.contains("web-1") && out.contains("yes"), "{out}");
    assert!(out.contains("web-2") && out.contains("NO") && out.contains("connection refused"), "{out}");
    assert!(out.contains("1/2 agents reachable"), "{out}");
}

#[test]
fn diag_json_prints_one_object_per_snapshot() {
    let pki = TestPki::new();
    let agent = start_agent(&pki);
    let cfg = controller_config(&pki, &[("web-1", agent.addr.to_string())]);
    let (code, out, err) = controller(&cfg, &["--output", "json", "diag", "web-1", "--count", "2", "--interval", "200ms", "--top", "3"]);
    assert_eq!(code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let procs = v["processes"].as_array().unwrap();
        assert!(!procs.is_empty() && procs.len() <= 3);
        for p in procs {
            assert!(p["pid"].as_i64().unwrap() > 0);
            assert!(p["name"].is_string() && p["cpu_percent"].is_number() && p["rss_bytes"].is_number());
        }
        assert!(v["memory"]["total_bytes"].as_u64().unwrap() > v["memory"]["used_bytes"].as_u64().unwrap());
    }
    // A host that is not in the inventory is named in the error.
    let (code, _, err) = controller(&cfg, &["diag", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("no host named \"nope\"") && err.contains("web-1"), "{err}");
}

#[test]
fn agent_exits_cleanly_on_sigterm() {
    let pki = TestPki::new();
    let mut agent = start_agent(&pki);
    assert_eq!(agent.terminate(), Some(0), "stderr: {}", agent.stderr());
    assert!(agent.stderr().contains("shutting down"));
}

#[test]
fn agent_rejects_invalid_config_before_binding() {
    let pki = TestPki::new();
    let port = free_port();
    let text = config_text(&pki, &pki.agent, &format!("127.0.0.1:{port}"), "", "[auth_log]\npaths = []\n");
    let path = write_config(&pki, "bad", &text);
    let out = Command::new(binary("agent")).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("auth_log.paths"), "{err}");
}

#[test]
fn fleet_ping_names_timeouts_and_rejected_certificates() {
    let pki = TestPki::new();
    let agent = start_agent(&pki);
    // A peer that accepts TCP and then says nothing: the TLS handshake never completes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let cfg = ControllerConfig::new(&pki)
        .connect_timeout("1s")
        .host("web-1", agent.addr)
        .host("hung", &silent_addr)
        // The live agent, dialled under a name its certificate does not carry.
        .host_named("impostor", agent.addr, "db-1.internal")
        .write();
    let started = std::time::Instant::now();
    let (code, out, err) = controller(&cfg, &["--output", "json", "fleet", "ping"]);
    assert_eq!(code, 1, "stderr: {err}");
    // Hosts are pinged concurrently: one hung host costs its timeout once, not per host.
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "took {:?}", started.elapsed());
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let by_name = |n: &str| rows.as_array().unwrap().iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(by_name("web-1")["reachable"], true);
    let hung = by_name("hung");
    assert_eq!(hung["reachable"], false);
    assert!(hung["error"].as_str().unwrap().starts_with("timed out"), "{}", hung["error"]);
    let impostor = by_name("impostor");
    assert_eq!(impostor["reachable"], false);
    let e = impostor["error"].as_str().unwrap();
    assert!(e.starts_with("agent certificate invalid") && e.contains("does not match the expected name"), "{e}");
    drop(silent);
}
