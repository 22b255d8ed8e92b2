//! `performance-monitoring` against moto with seeded CloudWatch datapoints and real
//! in-process agents: averages and maxima per instance and database, "no data" for an
//! instance without datapoints, the agents' live figures beside CloudWatch's, and a
//! sustained high CPU failing the run.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use controller::runbooks::performance_monitoring as perf;
use controller::runbooks::report::{Outcome, Status};
use controller::runbooks::{self, Which};
use e2e::support::agent::{dialer, spawn_in_process};
use e2e::support::aws_seed as seed;
use e2e::support::certs::TestPki;
use e2e::support::free_port;
use e2e::support::moto::Moto;

const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn figures_are_summarised_per_instance_and_database_with_live_ones_beside() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let agent_addr = agent.local_addr().to_string();
        let dead = format!("127.0.0.1:{}", free_port());
        let busy = seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-1"), ("Agent", &agent_addr)], true).await;
        let quiet = seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-2"), ("Agent", &dead)], true).await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;
        let now = Utc::now();
        let ago = |m: i64| now - chrono::Duration::minutes(m);
        let id = BTreeMap::from([("InstanceId", busy.as_str())]);
        seed::metric(&aws, "AWS/EC2", "CPUUtilization", &id, &[(ago(200), 20.0), (ago(100), 40.0)]).await;
        seed::metric(&aws, "CWAgent", "mem_used_percent", &id, &[(ago(90), 50.0)]).await;
        let disk = BTreeMap::from([("InstanceId", busy.as_str()), ("path", "/"), ("device", "xvda1"), ("fstype", "xfs")]);
        seed::metric(&aws, "CWAgent", "disk_used_percent", &disk, &[(ago(90), 61.0)]).await;
        seed::metric(&aws, "AWS/EC2", "NetworkIn", &id, &[(ago(90), 1048576.0), (ago(30), 1048576.0)]).await;
        let db = BTreeMap::from([("DBInstanceIdentifier", "techhealth-database")]);
        seed::metric(&aws, "AWS/RDS", "CPUUtilization", &db, &[(ago(60), 10.0)]).await;
        seed::metric(&aws, "AWS/RDS", "DatabaseConnections", &db, &[(ago(60), 4.0), (ago(20), 6.0)]).await;

        let ctx = seed::context(aws, "", Some(dialer(pki.operator_config())));
        let report = runbooks::run(Which::PerformanceMonitoring { hours: 24 }, &ctx).await;
        let text = report.render_text();
        // web-2's agent does not answer: that fails the live-figures check, and the run.
        assert_eq!(report.outcome(), Outcome::Failed, "{text}");
        let live = report.check(perf::AGENTS).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(live.status, Status::Fail, "{text}");
        assert_eq!(live.summary, "1 of 2 agents answered; 1 agent(s) unreachable (web-2)");
        let web1 = report.check(&format!("instance web-1 ({busy})")).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(web1.status, Status::Ok, "{text}");
        assert_eq!(web1.summary, "cpu avg 30.0% max 40.0%; memory avg 50.0%; disk max 61.0%; network in 2.0M");
        assert!(web1.details.iter().any(|d| d == "cloudwatch: disk / avg 61.0% max 61.0%"), "{:?}", web1.details);
        assert!(web1.details.iter().any(|d| d.starts_with("live (agent): cpu ")), "{:?}", web1.details);
        let web2 = report.check(&format!("instance web-2 ({quiet})")).unwrap();
        assert_eq!(web2.status, Status::Warn);
        assert_eq!(web2.summary, "cpu avg no data max no data; memory avg no data; disk max no data; network in no data");
        assert!(web2.details.iter().any(|d| d.starts_with("live (agent): unreachable: ")), "{:?}", web2.details);
        assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
        let dbc = report.check("database techhealth-database").unwrap();
        assert_eq!(dbc.summary, "cpu avg 10.0% max 10.0%; connections avg 5 max 6");
        agent.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn sustained_high_cpu_fails_the_run() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let hot = seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-1")], true).await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;
        let now = Utc::now();
        let id = BTreeMap::from([("InstanceId", hot.as_str())]);
        let points: Vec<_> = (1..=6).map(|i| (now - chrono::Duration::minutes(10 * i), 92.0)).collect();
        seed::metric(&aws, "AWS/EC2", "CPUUtilization", &id, &points).await;

        let report = runbooks::run(Which::PerformanceMonitoring { hours: 1 }, &seed::context(aws, "", None)).await;
        let text = report.render_text();
        assert_eq!(report.outcome(), Outcome::Failed, "{text}");
        let c = report.check(&format!("instance web-1 ({hot})")).unwrap();
        assert_eq!(c.status, Status::Fail);
        assert!(c.summary.starts_with("cpu avg 92.0% max 92.0%"), "{}", c.summary);
        assert_eq!(report.check(perf::AGENTS).unwrap().status, Status::Skipped);
        assert!(report.action_items.iter().any(|a| a.starts_with(&format!("Look into instance web-1 ({hot})"))), "{:?}", report.action_items);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn agent_metrics_with_extra_dimensions_are_found_and_a_listed_metric_without_data_warns() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let web = seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-1")], true).await;
        let quiet = seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-2")], true).await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;
        let now = Utc::now();
        let ago = |m: i64| now - chrono::Duration::minutes(m);
        for id in [&web, &quiet] {
            seed::metric(&aws, "AWS/EC2", "CPUUtilization", &BTreeMap::from([("InstanceId", id.as_str())]), &[(ago(30), 12.0)]).await;
        }
        // The CloudWatch agent appends ImageId and InstanceType to every metric.
        let mem = BTreeMap::from([("InstanceId", web.as_str()), ("ImageId", "ami-12345678"), ("InstanceType", "t3.micro")]);
        seed::metric(&aws, "CWAgent", "mem_used_percent", &mem, &[(ago(30), 64.0), (ago(20), 66.0)]).await;
        // web-2's memory metric exists, but its only datapoint is two days old.
        let old = BTreeMap::from([("InstanceId", quiet.as_str()), ("ImageId", "ami-12345678"), ("InstanceType", "t3.micro")]);
        seed::metric(&aws, "CWAgent", "mem_used_percent", &old, &[(now - chrono::Duration::days(2), 50.0)]).await;

        let report = runbooks::run(Which::PerformanceMonitoring { hours: 1 }, &seed::context(aws, "", None)).await;
        let text = report.render_text();
        let w = report.check(&format!("instance web-1 ({web})")).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(w.status, Status::Ok, "{text}");
        assert!(w.summary.contains("memory avg 65.0%"), "{}", w.summary);
        let q = report.check(&format!("instance web-2 ({quiet})")).unwrap();
        assert_eq!(q.status, Status::Warn, "{text}");
        assert!(q.details.iter().any(|d| d.contains("mem_used_percent exists but has no data in the window")), "{:?}", q.details);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_static_host_shows_its_live_figures_and_a_silent_one_fails() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let fleet = format!(
            "[fleet]\nsource = \"static\"\n[[fleet.hosts]]\nname = \"db-proxy\"\naddress = \"{}\"\nserver_name = \"localhost\"\n[[fleet.hosts]]\nname = \"gone\"\naddress = \"127.0.0.1:{}\"\nserver_name = \"localhost\"\n",
            agent.local_addr(),
            free_port()
        );
        let report = runbooks::run(Which::PerformanceMonitoring { hours: 1 }, &seed::context_with_fleet(aws, &fleet, "", Some(dialer(pki.operator_config())))).await;
        let text = report.render_text();
        let live = report.check("host db-proxy").unwrap_or_else(|| panic!("{text}"));
        assert!(live.summary.starts_with("live (agent): cpu "), "{}", live.summary);
        let gone = report.check("host gone").unwrap_or_else(|| panic!("{text}"));
        assert_eq!(gone.status, Status::Fail);
        assert!(report.check("ec2 instances").is_none(), "a static fleet has no EC2 instances to demand: {text}");
        agent.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}
