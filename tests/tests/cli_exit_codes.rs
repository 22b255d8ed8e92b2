//! The exit-code contract, one test per command not covered elsewhere: the `controller`
//! binary as a script runs it (pipes, no terminal) against real agent processes and moto.
//! 0 all good; 1 a check failed, a host did not answer, a job did not succeed; 2 the
//! command could not run (bad configuration, unknown host, AWS unreachable, files in the
//! way). The runbooks' other codes are in `runbook_cli.rs`, `fleet ping` in `fleet_cli.rs`,
//! `top` in `fleet_top.rs`.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::process::Command;

use chrono::Utc;
use e2e::support::agent::{config_text, write_config, AgentProcess};
use e2e::support::aws_seed as seed;
use e2e::support::certs::TestPki;
use e2e::support::controller::{run_clean as controller, static_config as controller_config};
use e2e::support::moto::{Moto, REGION};
use e2e::support::{binary, free_port};



/// An agent process with three actions: one that succeeds, one that fails, one that runs long.
fn agent_with_actions(pki: &TestPki) -> AgentProcess {
    let actions = "[[actions]]\nname = \"hello\"\nargv = [\"echo\", \"hello\"]\n\
                   [[actions]]\nname = \"fails\"\nargv = [\"false\"]\n\
                   [[actions]]\nname = \"long\"\nargv = [\"sleep\", \"60\"]\n";
    let text = config_text(pki, &pki.agent, "127.0.0.1:0", "", actions);
    AgentProcess::start(&write_config(pki, "agent", &text))
}

fn job_id(json_line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json_line.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {json_line}"));
    v["job_id"].as_str().unwrap().to_string()
}

#[test]
fn fleet_list_exits_0_and_2_on_a_bad_config() {
    let pki = TestPki::new();
    let cfg = controller_config(&pki, &[("web-1", "127.0.0.1:1".into())], "");
    let (code, out, err) = controller(&[], &cfg, &["fleet", "list"]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert!(out.contains("web-1"), "{out}");

    let bad = pki.path().join("bad.toml");
    std::fs::write(&bad, "[fleet]\nsourse = \"static\"\n").unwrap();
    let (code, out, err) = controller(&[], &bad, &["fleet", "list"]);
    assert_eq!(code, 2, "stdout {out} stderr {err}");
    assert!(err.contains("sourse"), "the error names the key: {err}");
}

#[test]
fn job_start_exits_1_when_the_job_runs_and_fails_and_0_when_it_succeeds() {
    let pki = TestPki::new();
    let agent = agent_with_actions(&pki);
    let cfg = controller_config(&pki, &[("web-1", agent.addr.to_string())], "");
    let (code, out, err) = controller(&[], &cfg, &["-o", "json", "job", "start", "web-1", "action", "hello"]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    let (code, out, err) = controller(&[], &cfg, &["-o", "json", "job", "start", "web-1", "action", "fails"]);
    assert_eq!(code, 1, "a job that ran and failed is exit 1; stdout {out} stderr {err}");
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "failed", "{out}");
    assert_eq!(last["exit_code"], 1, "{out}");
    let (code, _, err) = controller(&[], &cfg, &["job", "start", "web-9", "action", "hello"]);
    assert_eq!(code, 2, "an unknown host: {err}");
}

#[test]
fn job_watch_exits_0_on_a_succeeded_job_1_on_a_failed_one_and_2_on_an_unknown_host() {
    let pki = TestPki::new();
    let agent = agent_with_actions(&pki);
    let cfg = controller_config(&pki, &[("web-1", agent.addr.to_string())], "");
    let (_, ok, _) = controller(&[], &cfg, &["-o", "json", "job", "start", "web-1", "action", "hello"]);
    let (_, failed, _) = controller(&[], &cfg, &["-o", "json", "job", "start", "web-1", "action", "fails"]);
    let (code, out, err) = controller(&[], &cfg, &["job", "watch", "web-1", &job_id(&ok)]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert!(out.contains("hello") && out.contains("succeeded"), "{out}");
    let (code, out, err) = controller(&[], &cfg, &["job", "watch", "web-1", &job_id(&failed)]);
    assert_eq!(code, 1, "stdout {out} stderr {err}");
    let (code, _, err) = controller(&[], &cfg, &["job", "watch", "web-9", &job_id(&ok)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("web-9"), "{err}");
}

#[test]
fn job_list_exits_0_and_2_on_an_unknown_host() {
    let pki = TestPki::new();
    let agent = agent_with_actions(&pki);
    let cfg = controller_config(&pki, &[("web-1", agent.addr.to_string())], "");
    let (_, started, _) = controller(&[], &cfg, &["-o", "json", "job", "start", "web-1", "action", "hello"]);
    let (code, out, err) = controller(&[], &cfg, &["job", "list", "web-1"]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert!(out.contains(&job_id(&started)), "{out}");
    let (code, _, err) = controller(&[], &cfg, &["job", "list", "web-9"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("web-9"), "{err}");
}

#[test]
fn job_get_exits_0_and_2_on_an_unknown_host_or_job() {
    let pki = TestPki::new();
    let agent = agent_with_actions(&pki);
    let cfg = controller_config(&pki, &[("web-1", agent.addr.to_string())], "");
    let (_, started, _) = controller(&[], &cfg, &["-o", "json", "job", "start", "web-1", "action", "hello"]);
    let id = job_id(&started);
    let (code, out, err) = controller(&[], &cfg, &["-o", "json", "job", "get", "web-1", &id]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert!(out.contains(&id), "{out}");
    let (code, _, err) = controller(&[], &cfg, &["job", "get", "web-9", &id]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = controller(&[], &cfg, &["job", "get", "web-1", "no-such-job"]);
    assert_eq!(code, 2, "an unknown job: {err}");
}

#[test]
fn job_cancel_exits_0_and_the_cancelled_job_watches_as_1_and_2_on_an_unknown_host() {
    let pki = TestPki::new();
    let agent = agent_with_actions(&pki);
    let cfg = controller_config(&pki, &[("web-1", agent.addr.to_string())], "");
    let (code, started, err) = controller(&[], &cfg, &["-o", "json", "job", "start", "web-1", "action", "long", "--detach"]);
    assert_eq!(code, 0, "a detached start that was accepted: stdout {started} stderr {err}");
    let id = job_id(&started);
    let (code, out, err) = controller(&[], &cfg, &["job", "cancel", "web-1", &id]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    let (code, out, err) = controller(&[], &cfg, &["-o", "json", "job", "watch", "web-1", &id]);
    assert_eq!(code, 1, "a cancelled job did not succeed: stdout {out} stderr {err}");
    assert!(out.contains("\"cancelled\""), "{out}");
    let (code, _, err) = controller(&[], &cfg, &["job", "cancel", "web-9", &id]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn pki_init_exits_0_then_2_when_the_files_exist_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    std::fs::create_dir(&pki_dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(binary("controller")).args(["pki", "init", "--dir"]).arg(&pki_dir).args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(pki_dir.join("ca.pem").is_file());
    let before = std::fs::read(pki_dir.join("ca.pem")).unwrap();
    let (code, err) = run(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ca.pem") && err.contains("--force"), "names the file and the way out: {err}");
    assert_eq!(std::fs::read(pki_dir.join("ca.pem")).unwrap(), before, "nothing overwritten");
    let (code, err) = run(&["--force"]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read(pki_dir.join("ca.pem")).unwrap(), before, "--force writes a new CA");
}

#[tokio::test]
async fn performance_monitoring_exits_0_when_all_is_well_1_when_a_host_is_silent_and_2_without_aws() {
    tokio::time::timeout(std::time::Duration::from_secs(240), async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let pki = TestPki::new();
        let agent = agent_with_actions(&pki);
        seed::database(&aws, "techhealth-database", 7, true, false).await;
        let now = Utc::now();
        let db = BTreeMap::from([("DBInstanceIdentifier", "techhealth-database")]);
        seed::metric(&aws, "AWS/RDS", "CPUUtilization", &db, &[(now - chrono::Duration::minutes(20), 10.0)]).await;
        seed::metric(&aws, "AWS/RDS", "DatabaseConnections", &db, &[(now - chrono::Duration::minutes(20), 4.0)]).await;
        let reports = pki.path().join("reports");
        let args = ["performance-monitoring", "--hours", "1", "--report-dir", reports.to_str().unwrap()];

        // A static host whose agent answers and a quiet database: exit 0.
        let cfg = controller_config(&pki, &[("db-proxy", agent.addr.to_string())], "");
        let (code, out, err) = controller(&moto.env(), &cfg, &args);
        assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
        assert!(out.contains("db-proxy"), "{out}");

        // The same fleet with a host that does not answer: exit 1, and it is named.
        let cfg = controller_config(&pki, &[("db-proxy", agent.addr.to_string()), ("gone", format!("127.0.0.1:{}", free_port()))], "");
        let (code, out, err) = controller(&moto.env(), &cfg, &args);
        assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
        assert!(out.contains("gone"), "{out}");

        // AWS not reachable at all: the command could not run.
        let env = vec![
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", free_port())),
        ];
        let (code, out, err) = controller(&env, &cfg, &args);
        assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    })
    .await
    .expect("test timed out");
}
