//! `daily-health-check` against moto, real in-process agents over mTLS and loopback web
//! servers: a healthy world passes every check; a broken one names each problem (missing
//! stack, an alarm in ALARM, an HTTP 500, an unreachable agent, 120 error events over
//! several pages, failed logins over the threshold) and its action items; app URLs over
//! https, redirects, bad URLs and hosts outside loopback are each reported as such.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test

use std::time::Duration;

use chrono::Utc;
use controller::runbooks::daily_health_check as daily;
use controller::runbooks::report::{Outcome, Status};
use controller::runbooks::{self, Which};
use e2e::support::agent::{dialer, spawn_in_process};
use e2e::support::aws_seed as seed;
use e2e::support::certs::TestPki;
use e2e::support::moto::Moto;
use e2e::support::{free_port, web};

const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn a_healthy_stack_passes_every_daily_check_and_the_report_says_so() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let pki = TestPki::new();
        let log = seed::auth_log(pki.path(), 2);
        let agent = spawn_in_process(&pki, "", &format!("[auth_log]\npaths = [\"{}\"]\n", log.display())).await;
        let site = web::http(200).await;
        let agent_addr = agent.local_addr().to_string();
        let site_url = site.url();
        for name in ["web-1", "web-2"] {
            seed::instance(&aws, &[("Project", "TechHealth"), ("Name", name), ("Agent", &agent_addr), ("AppUrl", &site_url)], true).await;
        }
        seed::stack(&aws, "TechHealthInfrastructureStack").await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;
        let now = Utc::now();
        seed::log_events(&aws, "/aws/ec2/techhealth", "web-1", &[
            (now - chrono::Duration::minutes(5), "INFO GET /patients 200".into()),
            (now - chrono::Duration::days(3), "ERROR from long before last evening".into()),
        ]).await;
        seed::log_events(&aws, "/aws/ec2/auth", "web-1", &[(now - chrono::Duration::minutes(9), "sshd[1]: Failed password for root from 192.0.2.1".into())]).await;

        let ctx = seed::context(aws, "", Some(dialer(pki.operator_config())));
        let report = runbooks::run(Which::DailyHealthCheck, &ctx).await;
        let text = report.render_text();
        assert_eq!(report.outcome(), Outcome::Passed, "{text}");
        for c in &report.checks {
            assert_eq!(c.status, Status::Ok, "{}: {}\n{text}", c.name, c.summary);
        }
        let summary = |name: &str| report.check(name).unwrap_or_else(|| panic!("no check {name}")).summary.clone();
        assert_eq!(summary(daily::STACK), "TechHealthInfrastructureStack: CREATE_COMPLETE");
        assert_eq!(summary(daily::INSTANCES), "2 of 2 tagged instances running");
        assert_eq!(summary(daily::CONNECTIVITY), "2 of 2 instances answer HTTP 200");
        assert!(summary(daily::ERRORS).starts_with("0 ERROR events in /aws/ec2/techhealth since"), "{text}");
        assert!(summary(daily::BACKUP).starts_with("rds:techhealth-database-"), "{text}");
        assert!(summary(daily::LOGINS).starts_with("1 failed logins"), "{text}");
        // The agents report a lower bound here (see the closing note of the session that merged the
        // journal reader: whether a fully read log should say "at least" is still open).
        assert!(summary(daily::AGENT_LOGINS).ends_with("4 failed logins on 2 of 2 hosts"), "{text}");
        assert!(text.contains("2 failed (password 2, invalid user 0, public key 0, local 0); users: root 2"), "{text}");
        assert_eq!(summary(daily::AGENT_CERTS), "2 agent certificate(s), none expiring within 30 days", "{text}");
        assert!(text.contains("Action items:\n- none"), "{text}");
        assert!(text.contains("Next check: "), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let (txt, json) = report.write(dir.path(), &runbooks::report_stem(&report)).unwrap();
        let day = chrono::Local::now().format("%Y%m%d").to_string();
        assert_eq!(txt.file_name().unwrap().to_str().unwrap(), format!("daily-report-{day}.txt"));
        assert!(std::fs::read_to_string(&txt).unwrap().contains("Result: PASSED"));
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        assert_eq!(v["exit_code"], 0);
        assert_eq!(v["checks"].as_array().unwrap().len(), 10);
        agent.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_broken_stack_fails_and_each_problem_is_named_with_its_action_item() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let pki = TestPki::new();
        let log = seed::auth_log(pki.path(), 1);
        let agent = spawn_in_process(&pki, "", &format!("[auth_log]\npaths = [\"{}\"]\n", log.display())).await;
        let broken = web::http(500).await;
        let fine = web::http(200).await;
        let dead_agent = format!("127.0.0.1:{}", free_port());
        let agent_addr = agent.local_addr().to_string();
        let (broken_url, fine_url) = (broken.url(), fine.url());
        seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-1"), ("Agent", &agent_addr), ("AppUrl", &broken_url)], true).await;
        seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-2"), ("Agent", &dead_agent), ("AppUrl", &fine_url)], true).await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;
        seed::alarm_in_alarm(&aws, "techhealth-high-cpu", "Threshold Crossed: 2 datapoints were greater than 80").await;
        let now = Utc::now();
        let errors: Vec<_> = (0..120).map(|i| (now - chrono::Duration::seconds(30 * i), format!("ERROR upstream timeout #{i}"))).collect();
        seed::log_events(&aws, "/aws/ec2/techhealth", "web-1", &errors).await;
        let logins: Vec<_> = (0..8).map(|i| (now - chrono::Duration::minutes(i), format!("sshd[{i}]: Failed password for admin from 203.0.113.9"))).collect();
        seed::log_events(&aws, "/aws/ec2/auth", "web-1", &logins).await;

        let ctx = seed::context(aws, "log_page_limit = 50\nhttp_timeout = \"3s\"", Some(dialer(pki.operator_config())));
        let report = runbooks::run(Which::DailyHealthCheck, &ctx).await;
        let text = report.render_text();
        assert_eq!(report.outcome(), Outcome::Failed, "{text}");
        assert_eq!(report.outcome().exit_code(), 1);
        let check = |name: &str| report.check(name).unwrap_or_else(|| panic!("no check {name}")).clone();

        let stack = check(daily::STACK);
        assert_eq!((stack.status, stack.summary.as_str()), (Status::Fail, "stack TechHealthInfrastructureStack does not exist"));
        let alarms = check(daily::ALARMS);
        assert_eq!(alarms.status, Status::Fail);
        assert!(alarms.details[0].starts_with("techhealth-high-cpu  (AWS/EC2/CPUUtilization)"), "{:?}", alarms.details);
        let conn = check(daily::CONNECTIVITY);
        assert_eq!(conn.status, Status::Fail);
        assert_eq!(conn.summary, "1 of 2 instances answer HTTP 200");
        assert!(conn.details.iter().any(|d| d.starts_with("web-1 (i-") && d.ends_with(&format!("{broken_url}  HTTP 500"))), "{:?}", conn.details);
        let errs = check(daily::ERRORS);
        assert_eq!(errs.status, Status::Warn);
        assert!(errs.summary.starts_with("120 ERROR events"), "{}", errs.summary);
        assert!(errs.data["pages"].as_u64().unwrap() >= 3, "{}", errs.data);
        let logins = check(daily::LOGINS);
        assert_eq!(logins.status, Status::Warn);
        assert!(logins.summary.starts_with("8 failed logins"), "{}", logins.summary);
        let agents = check(daily::AGENT_LOGINS);
        // A host whose agent did not answer fails the check ([runbooks] unreachable = "fail").
        assert_eq!(agents.status, Status::Fail);
        assert!(agents.summary.contains("1 agent(s) unreachable"), "{}", agents.summary);
        assert!(agents.details.iter().any(|d| d.starts_with("web-2: agent unreachable: ") && d.contains("refused")), "{:?}", agents.details);
        assert_eq!(check(daily::BACKUP).status, Status::Ok);
        // The silent agent's certificate is unknown, never taken as fine.
        let certs = check(daily::AGENT_CERTS);
        assert_eq!(certs.status, Status::Fail, "{certs:?}");
        assert!(certs.details.iter().any(|d| d.starts_with("web-2: agent unreachable: ")), "{:?}", certs.details);

        assert!(report.action_items.iter().any(|a| a.starts_with("Review the active alarms")), "{:?}", report.action_items);
        assert!(report.action_items.iter().any(|a| a == "Investigate the 120 error events in the application log"), "{:?}", report.action_items);
        assert!(report.action_items.iter().any(|a| a.starts_with("Follow up on the 8 failed login attempts")), "{:?}", report.action_items);
        assert!(text.contains("Result: FAILED (5 failed, 2 warnings"), "{text}");
        agent.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_static_fleet_counts_no_ec2_instances_and_fills_app_url_with_each_hosts_address() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        // An instance of the account that is not in the static fleet: never counted.
        seed::instance(&aws, &[("Project", "Other"), ("Name", "elsewhere")], true).await;
        let pki = TestPki::new();
        let log = seed::auth_log(pki.path(), 1);
        let agent = spawn_in_process(&pki, "", &format!("[auth_log]\npaths = [\"{}\"]\n", log.display())).await;
        let site = web::http(200).await;
        let fleet = format!(
            "[fleet]\nsource = \"static\"\n[[fleet.hosts]]\nname = \"web-1\"\naddress = \"{}\"\nserver_name = \"localhost\"\n",
            agent.local_addr()
        );
        let runbooks_toml = format!("app_url = \"http://{{host}}:{}/health\"", site.addr.port());
        let ctx = seed::context_with_fleet(aws, &fleet, &runbooks_toml, Some(dialer(pki.operator_config())));
        let report = runbooks::run(Which::DailyHealthCheck, &ctx).await;
        let text = report.render_text();
        assert!(report.check(daily::INSTANCES).is_none(), "no EC2 count for a static fleet: {text}");
        assert!(!text.contains("elsewhere"), "{text}");
        let conn = report.check(daily::CONNECTIVITY).unwrap();
        assert_eq!(conn.status, Status::Ok, "{text}");
        assert!(conn.details.iter().any(|d| d.contains(&format!("http://127.0.0.1:{}/health", site.addr.port()))), "{:?}", conn.details);
        agent.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn app_urls_over_https_verify_against_tls_ca_file_redirects_are_reported_and_only_loopback_is_dialled() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let pki = TestPki::new();
        let cert = pki.agent_cert("app", &["techhealth.com"], Some(TestPki::valid_for(90)));
        let site = web::https(&cert.cert, &cert.key).await;
        let moved = web::http(301).await;
        let (https_url, moved_url) = (format!("https://{}/", site.addr), moved.url());
        for (name, url) in [("web-1", https_url.as_str()), ("web-2", moved_url.as_str()), ("web-3", "http://203.0.113.7/"), ("web-4", "http//web-4/")] {
            seed::instance(&aws, &[("Project", "TechHealth"), ("Name", name), ("AppUrl", url)], true).await;
        }
        let line = |c: &controller::runbooks::report::Check, name: &str| {
            c.details.iter().find(|d| d.starts_with(&format!("{name} (i-"))).cloned().unwrap_or_else(|| panic!("{name}: {:?}", c.details))
        };

        // The site's certificate chains to the test CA, which the probe is told to trust.
        let trusted = format!("tls_ca_file = \"{}\"\nhttp_timeout = \"3s\"", pki.ca_file.display());
        let report = runbooks::run(Which::DailyHealthCheck, &seed::context(aws.clone(), &trusted, None)).await;
        let conn = report.check(daily::CONNECTIVITY).unwrap_or_else(|| panic!("{}", report.render_text())).clone();
        assert_eq!(conn.status, Status::Fail, "{:?}", conn.details);
        assert_eq!(conn.summary, "1 of 4 instances answer HTTP 200; 1 without a URL");
        assert!(line(&conn, "web-1").ends_with(&format!("{https_url}  HTTP 200")), "{:?}", conn.details);
        // A redirect is the answer, not followed (web::http sends no Location to follow anyway).
        assert!(line(&conn, "web-2").ends_with(&format!("{moved_url}  HTTP 301")), "{:?}", conn.details);
        // moto's AWS is a local emulator: a host outside loopback is never dialled.
        assert!(line(&conn, "web-3").contains("not contacted: the AWS endpoint is a local emulator"), "{:?}", conn.details);
        let bad = line(&conn, "web-4");
        assert!(bad.contains("bad URL \"http//web-4/\": relative URL without a base"), "{bad}");

        // Without it the same certificate chains to nothing the probe trusts.
        let report = runbooks::run(Which::DailyHealthCheck, &seed::context(aws, "http_timeout = \"3s\"", None)).await;
        let conn = report.check(daily::CONNECTIVITY).unwrap().clone();
        let web1 = line(&conn, "web-1");
        assert!(
            web1.contains(&format!("TLS handshake with {} failed: certificate not trusted: issued by an unknown CA", site.addr)),
            "{web1}"
        );
        assert_eq!(conn.summary, "0 of 4 instances answer HTTP 200; 1 without a URL");
    })
    .await
    .expect("test timed out");
}
