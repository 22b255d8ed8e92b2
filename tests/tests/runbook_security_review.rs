//! `security-review` against moto, in-process agents and loopback HTTPS servers with
//! generated certificates: a hardened world passes; an exposed one fails on SSH open to
//! the world, a CloudTrail access-denied event, a certificate expiring in 3 days, an
//! unencrypted volume, a public unencrypted database and a console password without MFA (from
//! the credential report), and names an agent that does not answer.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test

use std::time::Duration;

use chrono::Utc;
use controller::pki::Validity;
use controller::runbooks::report::{Outcome, Status};
use controller::runbooks::security_review as sec;
use controller::runbooks::{self, Which};
use e2e::support::agent::{dialer, spawn_in_process};
use e2e::support::aws_seed as seed;
use e2e::support::certs::TestPki;
use e2e::support::moto::Moto;
use e2e::support::{free_port, web};

const LIMIT: Duration = Duration::from_secs(180);
const TRAIL: &str = "CloudTrail/TechHealthAuditTrail";

fn valid_for(days: i64) -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity { not_before: now - time::Duration::days(1), not_after: now + time::Duration::days(days) }
}

#[tokio::test]
async fn a_hardened_stack_passes_the_security_review() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let pki = TestPki::new();
        let log = seed::auth_log(pki.path(), 1);
        let agent = spawn_in_process(&pki, "", &format!("[auth_log]\npaths = [\"{}\"]\n", log.display())).await;
        let cert = pki.agent_cert("site-90d", &["techhealth.com"], Some(valid_for(90)));
        let site = web::https(&cert.cert, &cert.key).await;
        let (agent_addr, tls_addr) = (agent.local_addr().to_string(), site.addr.to_string());
        seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-1"), ("Agent", &agent_addr), ("TlsEndpoint", &tls_addr)], true).await;
        seed::open_group(&aws, "techhealth-web", 443, "0.0.0.0/0").await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;
        seed::trail(&moto.endpoint(), "TechHealthAuditTrail", true, true, true);
        let now = Utc::now();
        seed::log_events(&aws, TRAIL, "trail", &[
            (now - chrono::Duration::hours(2), seed::trail_record("DescribeInstances", None, "ops")),
            (now - chrono::Duration::hours(1), seed::trail_record("GetUser", Some("NoSuchEntity"), "ops")),
        ]).await;
        seed::log_events(&aws, "/aws/ec2/auth", "web-1", &[(now - chrono::Duration::hours(5), "sshd[1]: Failed password for root from 192.0.2.1".into())]).await;

        // The site's certificate chains to the test CA, which the probe is told to trust.
        let ctx = seed::context(aws, &format!("tls_ca_file = \"{}\"", pki.ca_file.display()), Some(dialer(pki.operator_config())));
        let report = runbooks::run(Which::SecurityReview, &ctx).await;
        let text = report.render_text();
        assert_eq!(report.outcome(), Outcome::Passed, "{text}");
        for name in [sec::IAM_USERS, sec::SECURITY_GROUPS, sec::LOGINS, sec::AGENT_LOGINS, sec::CLOUDTRAIL, sec::TLS, sec::C_RDS_ENCRYPTED, sec::C_RDS_PRIVATE, sec::C_RDS_RETENTION, sec::C_EBS_ENCRYPTED, sec::C_TRAIL_GROUP, sec::C_TRAIL] {
            let c = report.check(name).unwrap_or_else(|| panic!("no check {name}\n{text}"));
            assert_eq!(c.status, Status::Ok, "{name}: {}\n{text}", c.summary);
        }
        let sg = report.check(sec::SECURITY_GROUPS).unwrap();
        assert!(sg.details.iter().any(|d| d.contains("(techhealth-web)  tcp 443 from 0.0.0.0/0")), "{:?}", sg.details);
        assert!(report.check(sec::CLOUDTRAIL).unwrap().summary.starts_with("0 access-denied / unauthorized events"), "{text}");
        let tls = report.check(sec::TLS).unwrap();
        assert!(tls.details[0].contains(&tls_addr), "{:?}", tls.details);
        assert!(["expires in 89 days", "expires in 90 days"].iter().any(|e| tls.details[0].contains(e)), "{:?}", tls.details);
        let ports = report.check(sec::PORTS).unwrap();
        assert_ne!(ports.status, Status::Fail, "no group of web-1 opens a port to the internet: {:?}", ports.details);
        assert!(!ports.details.iter().any(|d| d.contains("opens it to the internet")), "{:?}", ports.details);
        assert!(ports.details[0].contains(&format!(":{}", agent.local_addr().port())), "the agent's own port is listed: {:?}", ports.details);
        agent.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn an_exposed_stack_fails_and_each_finding_is_named() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let pki = TestPki::new();
        let cert = pki.agent_cert("site-3d", &["techhealth.com"], Some(valid_for(3)));
        let site = web::https(&cert.cert, &cert.key).await;
        let (dead, tls_addr) = (format!("127.0.0.1:{}", free_port()), site.addr.to_string());
        let unencrypted = seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-1"), ("Agent", &dead), ("TlsEndpoint", &tls_addr)], false).await;
        let closed_tls = format!("127.0.0.1:{}", free_port());
        seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-2"), ("Agent", &dead), ("TlsEndpoint", &closed_tls)], true).await;
        let ssh = seed::open_group(&aws, "techhealth-ssh", 22, "0.0.0.0/0").await;
        seed::user_with_password(&aws, "contractor").await;
        seed::database(&aws, "techhealth-database", 7, false, true).await;
        let now = Utc::now();
        seed::log_events(&aws, TRAIL, "trail", &[
            (now - chrono::Duration::hours(3), seed::trail_record("RunInstances", Some("Client.UnauthorizedOperation"), "mallory")),
            (now - chrono::Duration::hours(2), seed::trail_record("GetSecretValue", Some("AccessDenied"), "mallory")),
            (now - chrono::Duration::hours(1), seed::trail_record("DescribeInstances", None, "ops")),
        ]).await;

        let ctx = seed::context(aws, "http_timeout = \"3s\"", Some(dialer(pki.operator_config())));
        let report = runbooks::run(Which::SecurityReview, &ctx).await;
        let text = report.render_text();
        assert_eq!(report.outcome(), Outcome::Failed, "{text}");
        let check = |name: &str| report.check(name).unwrap_or_else(|| panic!("no check {name}\n{text}")).clone();

        let users = check(sec::IAM_USERS);
        assert_eq!(users.status, Status::Fail, "from the credential report: a console password without MFA");
        let contractor = users.details.iter().find(|d| d.starts_with("contractor  ")).unwrap_or_else(|| panic!("{:?}", users.details));
        assert!(contractor.contains("FAIL: console password without MFA") && contractor.contains("password last used never"), "{contractor}");
        let sg = check(sec::SECURITY_GROUPS);
        assert_eq!(sg.status, Status::Fail);
        assert!(sg.details.iter().any(|d| d == &format!("FAIL  {ssh} (techhealth-ssh)  tcp 22 from 0.0.0.0/0")), "{:?}", sg.details);
        let trail = check(sec::CLOUDTRAIL);
        assert_eq!(trail.status, Status::Fail);
        assert!(trail.summary.starts_with("2 access-denied / unauthorized events in CloudTrail/TechHealthAuditTrail"), "{}", trail.summary);
        assert!(trail.details.iter().any(|d| d.contains("Client.UnauthorizedOperation  ec2:RunInstances  arn:aws:iam::123456789012:user/mallory  from 198.51.100.7")), "{:?}", trail.details);
        let tls = check(sec::TLS);
        assert_eq!(tls.status, Status::Fail);
        let expiring = tls.details.iter().find(|d| d.starts_with(&format!("FAIL  {tls_addr}"))).unwrap_or_else(|| panic!("{:?}", tls.details));
        assert!(["expires in 2 days", "expires in 3 days"].iter().any(|e| expiring.contains(e)), "{expiring}");
        assert!(tls.details.iter().any(|d| d.contains(&closed_tls) && d.contains("unreachable: cannot connect") && d.contains("connection refused")), "{:?}", tls.details);
        let ebs = check(sec::C_EBS_ENCRYPTED);
        assert_eq!(ebs.status, Status::Fail);
        assert!(ebs.details.iter().any(|d| d.ends_with(&format!("attached to {unencrypted}"))), "{:?}", ebs.details);
        assert_eq!(check(sec::C_RDS_ENCRYPTED).status, Status::Fail);
        assert_eq!(check(sec::C_RDS_PRIVATE).status, Status::Fail);
        assert_eq!(check(sec::C_RDS_RETENTION).status, Status::Ok);
        let ports = check(sec::PORTS);
        // Every agent is unreachable here: that fails the check ([runbooks] unreachable = "fail").
        assert_eq!(ports.status, Status::Fail);
        assert!(ports.details.iter().all(|d| d.contains("agent unreachable")), "{:?}", ports.details);
        assert_eq!(check(sec::LOGINS).status, Status::Warn, "no auth log group: nothing is shipped");
        assert!(report.action_items.iter().any(|a| a.starts_with("Review security groups: 1 rule(s) open SSH or MySQL to the world")), "{:?}", report.action_items);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_missing_cloudtrail_log_group_fails_compliance() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;
        let report = runbooks::run(Which::SecurityReview, &seed::context(aws, "", None)).await;
        let trail = report.check(sec::C_TRAIL_GROUP).unwrap();
        assert_eq!(trail.status, Status::Fail);
        assert_eq!(trail.summary, "CloudTrail/TechHealthAuditTrail does not exist: API activity is not audited");
        assert_eq!(report.check(sec::CLOUDTRAIL).unwrap().status, Status::Skipped);
        assert_eq!(report.check(sec::AGENT_LOGINS).unwrap().status, Status::Skipped);
        assert_eq!(report.check(sec::TLS).unwrap().status, Status::Skipped);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_port_the_host_listens_on_and_its_groups_open_to_the_world_fails_and_is_named() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        // Two sockets on every interface of this host (the agent reports the host's
        // listeners): one whose port the instance's group opens to the internet, one not.
        let exposed = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let private = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let (exposed_port, private_port) = (exposed.local_addr().unwrap().port(), private.local_addr().unwrap().port());
        let group = seed::open_group(&aws, "techhealth-app", i32::from(exposed_port), "0.0.0.0/0").await;
        let agent_addr = agent.local_addr().to_string();
        seed::instance_in_groups(&aws, &[("Project", "TechHealth"), ("Name", "web-1"), ("Agent", &agent_addr)], true, std::slice::from_ref(&group)).await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;

        let ctx = seed::context(aws, "", Some(dialer(pki.operator_config())));
        let report = runbooks::run(Which::SecurityReview, &ctx).await;
        let ports = report.check(sec::PORTS).unwrap_or_else(|| panic!("{}", report.render_text()));
        assert_eq!(ports.status, Status::Fail, "{:?}", ports.details);
        let line = format!("0.0.0.0:{exposed_port}");
        assert!(
            ports.details.iter().any(|d| d.contains("FAIL") && d.contains(&line) && d.contains(&group) && d.contains("opens it to the internet")),
            "{:?}",
            ports.details
        );
        assert!(!ports.details.iter().any(|d| d.contains("FAIL") && d.contains(&format!(":{private_port} "))), "{:?}", ports.details);
        drop((exposed, private));
        agent.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_certificate_for_another_name_or_from_an_unknown_ca_fails_whatever_its_dates() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let pki = TestPki::new();
        let wrong = pki.agent_cert("site-wrong-name", &["other.example"], Some(valid_for(90)));
        let right = pki.agent_cert("site-right-name", &["techhealth.com"], Some(valid_for(90)));
        let (wrong_site, right_site) = (web::https(&wrong.cert, &wrong.key).await, web::https(&right.cert, &right.key).await);
        seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-1"), ("TlsEndpoint", &wrong_site.addr.to_string())], true).await;
        seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-2"), ("TlsEndpoint", &right_site.addr.to_string())], true).await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;

        // Trusting the test CA: the wrong name fails, the right one passes.
        let trusted = format!("tls_ca_file = \"{}\"", pki.ca_file.display());
        let report = runbooks::run(Which::SecurityReview, &seed::context(aws.clone(), &trusted, None)).await;
        let tls = report.check(sec::TLS).unwrap();
        assert_eq!(tls.status, Status::Fail, "{:?}", tls.details);
        let line = |addr: &str| tls.details.iter().find(|d| d.contains(addr)).cloned().unwrap_or_else(|| panic!("{addr}: {:?}", tls.details));
        let w = line(&wrong_site.addr.to_string());
        assert!(w.starts_with("FAIL") && w.contains("wrong name: the certificate is not valid for techhealth.com"), "{w}");
        let r = line(&right_site.addr.to_string());
        assert!(r.starts_with("ok") && r.contains("expires in"), "{r}");

        // Without it the same certificate chains to nothing the probe trusts.
        let report = runbooks::run(Which::SecurityReview, &seed::context(aws, "", None)).await;
        let tls = report.check(sec::TLS).unwrap();
        let r = tls.details.iter().find(|d| d.contains(&right_site.addr.to_string())).unwrap();
        assert!(r.starts_with("FAIL") && r.contains("untrusted: issued by an unknown CA"), "{r}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn compliance_asks_cloudtrail_a_logging_trail_passes_a_stopped_single_region_one_fails_naming_each_gap() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;
        seed::trail(&moto.endpoint(), "TechHealthAuditTrail", true, true, true);
        seed::trail(&moto.endpoint(), "LegacyTrail", false, false, false);

        let report = runbooks::run(Which::SecurityReview, &seed::context(aws.clone(), "", None)).await;
        let t = report.check(sec::C_TRAIL).unwrap_or_else(|| panic!("{}", report.render_text()));
        assert_eq!(t.status, Status::Ok, "{}: {:?}", t.summary, t.details);
        assert!(t.summary.contains("TechHealthAuditTrail is logging, multi-region, validated"), "{}", t.summary);

        let report = runbooks::run(Which::SecurityReview, &seed::context(aws.clone(), "trail_name = \"LegacyTrail\"", None)).await;
        let t = report.check(sec::C_TRAIL).unwrap();
        assert_eq!(t.status, Status::Fail);
        for gap in ["is not logging", "not multi-region", "log-file validation off", "never delivered"] {
            assert!(t.summary.contains(gap), "{gap} not named: {}", t.summary);
        }

        let report = runbooks::run(Which::SecurityReview, &seed::context(aws, "trail_name = \"NoSuchTrail\"", None)).await;
        let t = report.check(sec::C_TRAIL).unwrap();
        assert_eq!((t.status, t.summary.as_str()), (Status::Fail, "trail NoSuchTrail does not exist: API activity is not recorded"));
    })
    .await
    .expect("test timed out");
}
