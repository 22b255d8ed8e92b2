//! `controller incident db-connection` against moto, a private MariaDB and a real agent:
//! long queries are listed and only the one chosen is killed (never one not listed); the
//! hosts' probes tell "MySQL answers", "port open but no MySQL answer" (a listener that
//! never greets) and "port closed" (MariaDB stopped) apart; the agent connects only to
//! targets in its own config.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::support::agent::{config_text, write_config, AgentProcess};
use e2e::support::aws_seed as seed;
use e2e::support::certs::TestPki;
use e2e::support::controller::{run_clean, ControllerConfig};
use e2e::support::mariadb::MariaDb;
use e2e::support::moto::Moto;
use mysql_async::prelude::*;

const USER: &str = "oncall";
const PASSWORD: &str = "not-a-real-password-4Rt";

struct World {
    moto: Moto,
    pki: TestPki,
    db: Option<MariaDb>,
    agent: AgentProcess,
    reports: PathBuf,
    _silent: tokio::task::JoinHandle<()>,
}

/// A listener that accepts and never says anything.
async fn silent_listener() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (port, task)
}

async fn world() -> World {
    let moto = Moto::start();
    let pki = TestPki::new();
    let db = MariaDb::start();
    {
        let mut c = mysql_async::Conn::from_url(db.url("mysql")).await.unwrap();
        c.query_drop("CREATE DATABASE techhealth").await.unwrap();
        c.query_drop(format!("CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")).await.unwrap();
        // Seeing and ending other sessions' queries is what the on-call account is for.
        c.query_drop(format!("GRANT PROCESS, SUPER ON *.* TO '{USER}'@'%'")).await.unwrap();
        c.query_drop(format!("GRANT SELECT ON techhealth.* TO '{USER}'@'%'")).await.unwrap();
    }
    let aws = moto.clients().await;
    seed::database(&aws, "techhealth-database", 7, true, false).await;
    let secret = serde_json::json!({"username": USER, "password": PASSWORD, "host": "127.0.0.1", "port": db.port, "dbname": "techhealth"});
    aws.secrets.create_secret().name("TechHealth-DB-Credentials").secret_string(secret.to_string()).send().await.unwrap();
    let (silent, silent_task) = silent_listener().await;
    let closed = e2e::support::free_port();
    let targets = format!(
        "[[probe_targets]]\nname = \"database\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"mysql\"\n\
         [[probe_targets]]\nname = \"silent\"\naddress = \"127.0.0.1:{silent}\"\nprotocol = \"mysql\"\n\
         [[probe_targets]]\nname = \"closed\"\naddress = \"127.0.0.1:{closed}\"\nprotocol = \"mysql\"\n",
        db.port
    );
    let text = config_text(&pki, &pki.agent, "127.0.0.1:0", "", &targets);
    let agent = AgentProcess::start(&write_config(&pki, "agent-db", &text));
    seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-1"), ("Agent", &agent.addr.to_string())], true).await;
    let reports = pki.path().join("reports");
    World { moto, pki, db: Some(db), agent, reports, _silent: silent_task }
}

impl World {
    fn config(&self, incident: &str) -> PathBuf {
        ControllerConfig::ec2(&self.pki)
            .extra(&format!(
                "[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n[maintenance.database]\nsecret_id = \"TechHealth-DB-Credentials\"\n[incident]\nlong_query = \"1s\"\n{incident}",
                self.moto.endpoint()
            ))
            .write()
    }

    fn run(&self, cfg: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
        let mut full = vec!["incident", "db-connection", "--report-dir", self.reports.to_str().unwrap()];
        full.extend_from_slice(args);
        let (code, out, err) = run_clean(&self.moto.env(), cfg, &full);
        let newest = std::fs::read_dir(&self.reports).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).max().unwrap();
        let report = serde_json::from_str(&std::fs::read_to_string(newest).unwrap()).unwrap();
        (code, report, format!("{out}\n{err}"))
    }
}

fn events<'a>(report: &'a serde_json::Value, kind: &str) -> Vec<&'a str> {
    report["timeline"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).map(|e| e["what"].as_str().unwrap()).collect()
}

/// A session running `SELECT SLEEP(120)`; returns its connection id and the task.
async fn sleeper(db: &MariaDb) -> (u64, tokio::task::JoinHandle<Result<Option<i64>, mysql_async::Error>>) {
    let mut c = mysql_async::Conn::from_url(db.url("mysql")).await.unwrap();
    let id: u64 = c.query_first("SELECT CONNECTION_ID()").await.unwrap().unwrap();
    let task = tokio::spawn(async move { c.query_first::<i64, _>("SELECT SLEEP(120)").await });
    (id, task)
}

async fn running_ids(db: &MariaDb) -> Vec<u64> {
    let mut c = mysql_async::Conn::from_url(db.url("mysql")).await.unwrap();
    c.query("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(120)%'").await.unwrap()
}

#[tokio::test]
async fn long_queries_are_listed_and_only_the_chosen_one_is_killed() {
    let w = world().await;
    let db = w.db.as_ref().unwrap();
    let (a, a_task) = sleeper(db).await;
    let (b, b_task) = sleeper(db).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let cfg = w.config("");

    let (_, report, out) = w.run(&cfg, &[]);
    let seen = events(&report, "seen");
    let listed = seen.iter().find(|s| s.contains("running 1 s or longer")).unwrap_or_else(|| panic!("{out}"));
    assert!(listed.contains(&format!("{a} root@")) && listed.contains(&format!("{b} root@")) && listed.contains("SELECT SLEEP(120)"), "{listed}");
    assert!(seen.iter().any(|s| s.starts_with("techhealth-database: available")), "{seen:?}");

    // Not confirmed: nothing killed. A session not listed: refused.
    let (code, report, out) = w.run(&cfg, &["--kill-query", &a.to_string()]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(events(&report, "declined").len(), 1, "{out}");
    let (_, report, out) = w.run(&cfg, &["--kill-query", "999999", "--yes"]);
    assert!(events(&report, "refused").iter().any(|r| r.contains("999999 is not among")), "{out}");
    assert_eq!(running_ids(db).await.len(), 2);

    let (_, report, out) = w.run(&cfg, &["--kill-query", &a.to_string(), "--yes"]);
    assert!(events(&report, "done").contains(&format!("KILL QUERY {a} on techhealth-database").as_str()), "{out}");
    // SLEEP interrupted by KILL QUERY returns 1 (or the query reports it was interrupted).
    let ended = tokio::time::timeout(Duration::from_secs(10), a_task).await.unwrap().unwrap();
    assert!(matches!(ended, Ok(Some(1)) | Err(_)), "{ended:?}");
    assert_eq!(running_ids(db).await, vec![b], "only the chosen query ended");
    b_task.abort();
}

#[tokio::test]
async fn the_hosts_probes_tell_mysql_a_silent_listener_and_a_closed_port_apart() {
    let mut w = world().await;
    let expect = |report: &serde_json::Value, words: &str| {
        let all: Vec<&str> = report["timeline"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap()).collect();
        assert!(all.iter().any(|s| s.starts_with("web-1 -> ") && s.contains(words)), "{words}: {all:?}");
    };
    let (_, report, _) = w.run(&w.config(""), &[]);
    expect(&report, "MySQL answers: MySQL protocol 10, server ");
    let (code, report, _) = w.run(&w.config("db_probe_target = \"silent\"\n"), &[]);
    assert_eq!(code, 1);
    expect(&report, "port open but no MySQL answer");
    // MariaDB stopped: the same target is now a closed port.
    w.db = None;
    let (code, report, _) = w.run(&w.config(""), &[]);
    assert_eq!(code, 1);
    expect(&report, "port closed (connection refused)");
    assert!(events(&report, "not-done").iter().any(|s| s.starts_with("processlist not read: cannot connect")), "{report}");
}

#[tokio::test]
async fn an_agent_probes_only_the_targets_of_its_own_config() {
    let w = world().await;
    let mut client = e2e::support::agent::operator_client(&w.pki, w.agent.addr).await;
    let err = client.probe_target(ops_proto::v1::ProbeTargetRequest { name: "127.0.0.1:22".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("configured: database, silent, closed"), "{err:?}");
    // A viewer may probe (it is read-only), and gets the configured target's answer.
    let viewer = e2e::support::agent::dialer(w.pki.client_config(&w.pki.viewer));
    let mut v = viewer.connect(&e2e::support::agent::host("web-1", w.agent.addr)).await.unwrap();
    let r = v.probe_target(ops_proto::v1::ProbeTargetRequest { name: "database".into() }).await.unwrap().into_inner();
    assert_eq!(r.outcome, "answers", "{r:?}");
}

#[tokio::test]
async fn reboot_and_scale_up_change_rds_only_when_confirmed_and_scale_up_needs_a_class() {
    let w = world().await;
    let aws = w.moto.clients().await;
    let class = |aws: controller::aws::AwsClients| async move {
        let all = controller::aws::rds::describe_db_instances(&aws.rds).await.unwrap();
        all.into_iter().find(|d| d.id == "techhealth-database").unwrap().class.unwrap()
    };
    let (code, report, out) = w.run(&w.config(""), &["--scale-up", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(events(&report, "refused").iter().any(|r| r.contains("db_scale_up_class")), "{out}");
    let cfg = w.config("db_scale_up_class = \"db.t3.small\"\n");
    let (_, report, out) = w.run(&cfg, &["--scale-up"]);
    assert_eq!(events(&report, "declined").len(), 1, "{out}");
    assert_eq!(class(aws.clone()).await, "db.t3.micro");
    let (_, report, out) = w.run(&cfg, &["--scale-up", "--reboot", "--yes"]);
    let done = events(&report, "done");
    assert!(done.contains(&"change techhealth-database from db.t3.micro to db.t3.small, applied now"), "{out}");
    assert!(done.contains(&"reboot RDS instance techhealth-database"), "{out}");
    assert_eq!(class(aws).await, "db.t3.small");
}
