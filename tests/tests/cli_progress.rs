//! Progress bars are for people at a terminal: with standard output and error piped (as
//! scripts and these tests run the controller), `fleet ping` and a runbook's agent
//! fan-out print no bar, no bar text and no escape sequence; JSON output is one clean
//! document. On a terminal (util-linux `script` gives the controller one), the bar is drawn.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::support::agent::{config_text, write_config, AgentProcess};
use e2e::support::certs::TestPki;
use e2e::support::controller::{run, ControllerConfig};
use e2e::support::moto::Moto;
use e2e::support::{binary, free_port};


/// A live agent and two hosts that do not answer.
fn fleet_config(pki: &TestPki) -> (AgentProcess, ControllerConfig<'_>) {
    let agent = AgentProcess::start(&write_config(pki, "agent", &config_text(pki, &pki.agent, "127.0.0.1:0", "", "")));
    let cfg = ControllerConfig::new(pki).hosts(&[
        ("web-1", agent.addr.to_string()),
        ("web-2", format!("127.0.0.1:{}", free_port())),
        ("web-3", format!("127.0.0.1:{}", free_port())),
    ]);
    (agent, cfg)
}

/// [`fleet_config`], written.
fn fleet(pki: &TestPki) -> (AgentProcess, PathBuf) {
    let (agent, cfg) = fleet_config(pki);
    (agent, cfg.write())
}

/// Nothing of a progress bar: no escape sequence, no bar glyphs, not the bar's own words.
fn assert_no_progress(what: &str, text: &str) {
    assert!(!text.contains('\x1b'), "{what}: an escape sequence in piped output:\n{text:?}");
    for glyph in ['█', '░', '▏', '▕', '\r'] {
        assert!(!text.contains(glyph), "{what}: bar glyph {glyph:?} in piped output:\n{text:?}");
    }
    for words in ["hosts answered", "hosts asked"] {
        assert!(!text.contains(words), "{what}: the bar's message {words:?} in piped output:\n{text}");
    }
}


#[test]
fn fleet_ping_with_piped_output_draws_no_progress_in_table_or_json() {
    let pki = TestPki::new();
    let (_agent, cfg) = fleet(&pki);
    let (code, out, err) = run(&cfg, &[], &["fleet", "ping"]);
    assert_eq!(code, 1, "two hosts are down: {out}{err}");
    assert!(out.contains("1/3 agents reachable"), "{out}");
    assert_no_progress("ping table stdout", &out);
    assert_no_progress("ping table stderr", &err);
    let (_, out, err) = run(&cfg, &[], &["-o", "json", "fleet", "ping"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: stdout is one JSON document:\n{out}"));
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert_no_progress("ping json stderr", &err);
}

#[tokio::test]
async fn a_runbooks_agent_fan_out_with_piped_output_draws_no_progress() {
    tokio::time::timeout(std::time::Duration::from_secs(180), async {
        let moto = Moto::start();
        let pki = TestPki::new();
        let (_agent, cfg) = fleet(&pki);
        let reports = pki.path().join("reports");
        for output in ["table", "json"] {
            let (code, out, err) =
                run(&cfg, &moto.env(), &["-o", output, "performance-monitoring", "--hours", "1", "--report-dir", reports.to_str().unwrap()]);
            assert_eq!(code, 1, "two hosts do not answer:\n{out}\n{err}");
            assert!(out.contains("web-2") && out.contains("web-3"), "the silent hosts are named:\n{out}");
            assert_no_progress(&format!("{output} stdout"), &out);
            assert_no_progress(&format!("{output} stderr"), &err);
        }
    })
    .await
    .expect("test timed out");
}

#[test]
fn fleet_ping_on_a_terminal_draws_the_bar_on_stderr() {
    let script = Path::new("/usr/bin/script");
    assert!(script.is_file(), "`script` not found: install Debian's util-linux (scripts/setup does)");
    let pki = TestPki::new();
    // A host that accepts TCP but never answers TLS keeps the ping open until its 2 s connect
    // timeout, so the bar has time to draw.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (_agent, cfg) = fleet_config(&pki);
    let cfg = cfg.host("web-4", silent.local_addr().unwrap()).write();
    let typescript = pki.path().join("typescript");
    let line = format!("{} --config {} fleet ping", binary("controller").display(), cfg.display());
    let out = Command::new(script).args(["-qec", &line]).arg(&typescript).env("TERM", "xterm").output().unwrap();
    let seen = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert_eq!(out.status.code(), Some(1), "{seen}");
    assert!(seen.contains("hosts answered"), "the bar is drawn on a terminal:\n{seen:?}");
    assert!(seen.contains("1/4 agents reachable"), "{seen}");
}
