//! The runbook subcommands as an operator runs them: the `controller` binary against
//! moto with the standard AWS environment variables, reports written to --report-dir,
//! `--output json`, and the documented exit codes (0 passed, 1 a check failed, 2 could
//! not run: no credentials, AWS unreachable, bad configuration).
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test

use std::process::Command;

use e2e::support::aws_seed as seed;
use e2e::support::certs::TestPki;
use e2e::support::controller::{ec2_config as config, run_clean as controller};
use e2e::support::moto::{Moto, REGION};
use e2e::support::{binary, free_port};



/// A fresh moto whose backups are all in order: a database kept a week, and a fleet instance
/// whose volume has a fresh automated snapshot.
async fn backup_world() -> Moto {
    let moto = Moto::start();
    let aws = moto.clients().await;
    seed::database(&aws, "techhealth-database", 7, true, false).await;
    let web = seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-1")], true).await;
    for vol in seed::volumes_of(&aws, &web).await {
        seed::snapshot_of(&aws, &vol, &[("Purpose", "Automated")]).await;
    }
    moto
}

fn day() -> String {
    chrono::Local::now().format("%Y%m%d").to_string()
}

#[tokio::test]
async fn daily_health_check_writes_both_reports_and_exits_1_when_a_check_fails() {
    let moto = Moto::start();
    let aws = moto.clients().await;
    seed::database(&aws, "techhealth-database", 7, true, false).await;
    seed::alarm_in_alarm(&aws, "techhealth-5xx", "Threshold Crossed").await;
    let pki = TestPki::new();
    let cfg = config(&pki, "");
    let reports = pki.path().join("reports");
    let (code, out, err) = controller(&moto.env(), &cfg, &["daily-health-check", "--report-dir", reports.to_str().unwrap()]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("FAIL     cloudwatch alarms               1 alarm(s) in ALARM"), "{out}");
    assert!(out.contains("FAIL     stack status                    stack TechHealthInfrastructureStack does not exist"), "{out}");
    let txt = reports.join(format!("daily-report-{}.txt", day()));
    let json = reports.join(format!("daily-report-{}.json", day()));
    assert!(out.contains(&format!("Report saved to: {}", txt.display())), "{out}");
    let text = std::fs::read_to_string(&txt).unwrap();
    assert!(text.starts_with("TechHealth Daily Health Check - "), "{text}");
    assert!(text.contains("  techhealth-5xx  (AWS/EC2/CPUUtilization)"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["runbook"], "daily-health-check");
}

#[tokio::test]
async fn backup_verify_prints_json_and_exits_0_when_all_is_well() {
    let moto = backup_world().await;
    let pki = TestPki::new();
    let cfg = config(&pki, &format!("[aws]\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\n", moto.endpoint()));
    let env: Vec<(&str, String)> = moto.env().into_iter().filter(|(k, _)| *k != "AWS_ENDPOINT_URL" && *k != "AWS_REGION").collect();
    let (code, out, err) = controller(&env, &cfg, &["--output", "json", "backup", "verify", "--report-dir", pki.path().to_str().unwrap()]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["outcome"], "passed");
    assert_eq!(v["checks"].as_array().unwrap().len(), 5);
    assert!(pki.path().join(format!("backup-report-{}.json", day())).is_file());
}

#[tokio::test]
async fn unreachable_aws_exits_2_and_names_the_cause() {
    let pki = TestPki::new();
    let cfg = config(&pki, "");
    let env = vec![
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", REGION.to_string()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", free_port())),
    ];
    let (code, out, err) = controller(&env, &cfg, &["backup", "verify", "--report-dir", pki.path().to_str().unwrap()]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("Result: COULD NOT RUN"), "{out}");
    assert!(out.contains("could not check: RDS DescribeDBInstances: endpoint unreachable"), "{out}");
}

#[tokio::test]
async fn missing_credentials_exit_2_and_say_what_to_set() {
    let moto = Moto::start();
    let pki = TestPki::new();
    let cfg = config(&pki, "");
    let env = vec![
        ("AWS_REGION", REGION.to_string()),
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_CONFIG_FILE", "/nonexistent/config".to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials".to_string()),
    ];
    let (code, out, err) = controller(&env, &cfg, &["security-review", "--report-dir", pki.path().to_str().unwrap()]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("IAM GenerateCredentialReport: no AWS credentials found"), "{out}");
    assert!(out.contains("set AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"), "{out}");
}

#[test]
fn an_invalid_config_exits_2_naming_the_key() {
    let pki = TestPki::new();
    let cfg = config(&pki, "[runbooks]\nstak_name = \"typo\"\n");
    let (code, out, err) = controller(&[], &cfg, &["daily-health-check"]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("stak_name"), "{err}");
}

#[tokio::test]
async fn an_unwritable_report_folder_loses_nothing_the_results_come_first_then_the_error_and_exit_2() {
    let moto = backup_world().await;
    let pki = TestPki::new();
    let cfg = config(&pki, "");
    // A folder below a regular file cannot be made, even by root.
    let blocker = pki.path().join("not-a-folder");
    std::fs::write(&blocker, "x").unwrap();
    let dir = blocker.join("reports");
    let (code, out, err) = controller(&moto.env(), &cfg, &["backup", "verify", "--report-dir", dir.to_str().unwrap()]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("Result: PASSED"), "the results are printed before the report is written: {out}");
    assert!(err.contains("cannot write report") && err.contains("not-a-folder"), "{err}");
}

#[tokio::test]
async fn reports_go_to_the_state_folder_by_default_and_the_path_is_printed() {
    let moto = backup_world().await;
    let pki = TestPki::new();
    let cfg = config(&pki, "");
    let state = pki.path().join("state");
    let mut env = moto.env();
    env.push(("XDG_STATE_HOME", state.to_str().unwrap().to_string()));
    let (code, out, err) = controller(&env, &cfg, &["-o", "json", "backup", "verify"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("stdout stays one JSON document: {e}: {out}"));
    let json = state.join("ops/reports").join(format!("backup-report-{}.json", day()));
    assert!(json.is_file(), "{}", json.display());
    assert!(err.contains(&json.display().to_string()), "the path is printed (on stderr with JSON): {err}");
}

#[tokio::test]
async fn a_frozen_aws_endpoint_ends_at_the_deadline_naming_each_call_that_did_not_answer() {
    // A listener that accepts connections and never answers: the SDK's own per-attempt
    // deadline is 30 s with retries, far beyond the run's.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = frozen.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for c in frozen.incoming().flatten() {
            keep.lock().unwrap().push(c);
        }
    });
    let pki = TestPki::new();
    let cfg = config(&pki, "");
    let env = vec![
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", REGION.to_string()),
        ("AWS_ENDPOINT_URL", format!("http://{addr}")),
    ];
    let started = std::time::Instant::now();
    let (code, out, err) = controller(&env, &cfg, &["daily-health-check", "--deadline", "3s", "--report-dir", pki.path().to_str().unwrap()]);
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}; stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(code, 1, "a timed-out call fails its check, not the whole run: stdout:\n{out}\nstderr:\n{err}");
    for call in ["CloudFormation DescribeStacks", "EC2 DescribeInstances", "CloudWatch DescribeAlarms", "RDS DescribeDBSnapshots"] {
        assert!(out.contains(&format!("{call}: no answer before the run's deadline of 3s")), "{call} not named: {out}");
    }
    assert!(!held.lock().unwrap().is_empty(), "the controller did reach the frozen endpoint");
}

#[tokio::test]
async fn without_tls_aws_only_work_runs_and_agent_checks_are_skipped_saying_why() {
    let moto = Moto::start();
    let aws = moto.clients().await;
    seed::database(&aws, "techhealth-database", 7, true, false).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("controller.toml");
    std::fs::write(&cfg, "[fleet]\nsource = \"ec2\"\ntag_filters = { Project = \"TechHealth\" }\n").unwrap();
    let (code, out, err) = controller(&moto.env(), &cfg, &["daily-health-check", "--report-dir", dir.path().to_str().unwrap()]);
    assert!(code == 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("skipped") && out.contains("needs [tls]"), "{out}");
    let (code, _, err) = controller(&moto.env(), &cfg, &["fleet", "ping"]);
    assert_eq!(code, 2);
    assert!(err.contains("needs [tls]") && err.contains(cfg.to_str().unwrap()), "{err}");
}

#[test]
fn no_config_anywhere_exits_2_listing_the_places_tried() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("controller"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("xdg"))
        .current_dir(dir.path())
        .args(["fleet", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for place in ["controller.toml", &format!("{}/xdg/ops/controller.toml", dir.path().display()), "/etc/ops/controller.toml"] {
        assert!(err.contains(place), "{place} not listed: {err}");
    }
}
