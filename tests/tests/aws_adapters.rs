//! The AWS adapters against a local moto (one fresh server per test): the project's own
//! types come back, every page is read, and failures name the service, the call and a
//! cause a person can act on. Throttling is what moto cannot do: that test uses a
//! hand-written loopback stand-in that answers with the service's error format. (Missing
//! credentials are tested through the CLI, in runbook_cli.rs.)
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use controller::aws::logs::LogQuery;
use controller::aws::{self, AwsCause, AwsClients};
use controller::config::ControllerConfig;
use e2e::support::aws_seed as seed;
use e2e::support::moto::{sdk_config_for, Moto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(120);

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn ec2_adapter_lists_running_tagged_instances_with_addresses_and_volumes() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let c = moto.clients().await;
        let a = seed::instance(&c, &[("Project", "TechHealth"), ("Name", "web-1")], true).await;
        let b = seed::instance(&c, &[("Project", "TechHealth")], true).await;
        let stopped = seed::instance(&c, &[("Project", "TechHealth"), ("Name", "old")], true).await;
        seed::instance(&c, &[("Project", "Other")], true).await;
        seed::stop(&c, &stopped).await;

        let running = aws::ec2::describe_instances(&c.ec2, &tags(&[("Project", "TechHealth")]), &["running"]).await.unwrap();
        let mut ids: Vec<&str> = running.iter().map(|i| i.id.as_str()).collect();
        ids.sort();
        let mut want = vec![a.as_str(), b.as_str()];
        want.sort();
        assert_eq!(ids, want);
        let web1 = running.iter().find(|i| i.id == a).unwrap();
        assert_eq!(web1.name.as_deref(), Some("web-1"));
        assert_eq!(web1.state, "running");
        assert_eq!(web1.instance_type.as_deref(), Some("t3.micro"));
        assert!(web1.private_ip.is_some() && web1.public_ip.is_some());
        assert_eq!(web1.volume_ids.len(), 1);

        let all = aws::ec2::describe_instances(&c.ec2, &tags(&[("Project", "TechHealth")]), &[]).await.unwrap();
        assert_eq!(all.len(), 3);
        assert!(all.iter().any(|i| i.id == stopped && i.state != "running"));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn fleet_discovery_dials_the_agent_tag_and_never_an_emulator_address() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let c = moto.clients().await;
        let tagged = seed::instance(&c, &[("Project", "TechHealth"), ("Name", "web-1"), ("Agent", "127.0.0.1:7443")], true).await;
        let untagged = seed::instance(&c, &[("Project", "TechHealth"), ("Name", "web-2")], true).await;
        let base = "[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n[fleet]\nsource = \"ec2\"\ntag_filters = { Project = \"TechHealth\" }\n";

        let cfg = ControllerConfig::parse(&format!("{base}address = \"tag:Agent\"\n")).unwrap();
        let hosts = controller::fleet::ec2::discover_with(&c, &cfg).await.unwrap();
        assert_eq!(hosts.len(), 1, "{hosts:?}");
        assert_eq!(hosts[0].name, "web-1");
        assert_eq!(hosts[0].address, "127.0.0.1:7443");
        assert_eq!(hosts[0].instance_id.as_deref(), Some(tagged.as_str()));

        // moto invents private addresses; against a local emulator they are never dialled.
        let cfg = ControllerConfig::parse(base).unwrap();
        let hosts = controller::fleet::ec2::discover_with(&c, &cfg).await.unwrap();
        assert!(hosts.is_empty(), "{hosts:?} (would dial {untagged}'s invented address)");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn log_events_are_counted_across_every_page() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let c = moto.clients().await;
        let now = Utc::now();
        let mut events: Vec<_> = (0..120).map(|i| (now - ChronoDuration::minutes(i), format!("ERROR request {i} failed"))).collect();
        events.extend((0..30).map(|i| (now - ChronoDuration::minutes(i), format!("INFO request {i} ok"))));
        seed::log_events(&c, "/aws/ec2/techhealth", "web-1", &events).await;

        let q = LogQuery {
            group: "/aws/ec2/techhealth",
            start: now - ChronoDuration::hours(3),
            end: now + ChronoDuration::minutes(1),
            pattern: Some("ERROR"),
            page_limit: Some(50),
        };
        let stats = aws::logs::count_events(&c.logs, &q).await.unwrap();
        assert_eq!(stats.events, 120, "every page counted");
        assert!(stats.pages >= 3, "120 events in pages of 50: {stats:?}");

        let mut seen = Vec::new();
        aws::logs::scan_events(&c.logs, &LogQuery { pattern: None, page_limit: None, ..q.clone() }, |e| seen.push(e)).await.unwrap();
        assert_eq!(seen.len(), 150);
        assert_eq!(seen[0].stream, "web-1");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_missing_log_group_stack_or_database_is_named_as_missing() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let c = moto.clients().await;
        let now = Utc::now();
        let q = LogQuery { group: "/aws/ec2/nothing", start: now - ChronoDuration::hours(1), end: now, pattern: None, page_limit: None };
        let err = aws::logs::count_events(&c.logs, &q).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().starts_with("CloudWatch Logs FilterLogEvents: not found"), "{err}");
        assert!(!aws::logs::log_group_exists(&c.logs, "/aws/ec2/nothing").await.unwrap());

        assert_eq!(aws::cloudformation::describe_stack(&c.cloudformation, "NoSuchStack").await.unwrap(), None);
        assert!(aws::rds::describe_db_snapshots(&c.rds, "no-such-db", "automated").await.unwrap().is_empty());
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn cloudwatch_statistics_and_alarms_work_through_the_pinned_sdk() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let c = moto.clients().await;
        let now = Utc::now();
        let dims = BTreeMap::from([("InstanceId", "i-1")]);
        seed::metric(&c, "AWS/EC2", "CPUUtilization", &dims, &[(now - ChronoDuration::minutes(30), 20.0), (now - ChronoDuration::minutes(20), 60.0)]).await;
        seed::alarm_in_alarm(&c, "techhealth-high-cpu", "Threshold Crossed: 2 datapoints > 80").await;

        let d = tags(&[("InstanceId", "i-1")]);
        let q = aws::cloudwatch::StatsQuery { namespace: "AWS/EC2", metric: "CPUUtilization", dimensions: &d, start: now - ChronoDuration::hours(1), end: now, period_secs: 3600 };
        let points = aws::cloudwatch::metric_statistics(&c.cloudwatch, &q).await.unwrap();
        let max = points.iter().filter_map(|p| p.maximum).fold(0.0, f64::max);
        assert_eq!(max, 60.0, "{points:?}");
        let alarms = aws::cloudwatch::alarms_in_alarm(&c.cloudwatch).await.unwrap();
        assert_eq!(alarms.len(), 1);
        assert_eq!(alarms[0].name, "techhealth-high-cpu");
        assert!(alarms[0].reason.contains("Threshold Crossed"));
        let metrics = aws::cloudwatch::list_metrics(&c.cloudwatch, "AWS/EC2", "CPUUtilization", &d).await.unwrap();
        assert_eq!(metrics.len(), 1);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_named_with_service_and_call() {
    tokio::time::timeout(LIMIT, async {
        let closed = e2e::support::free_port();
        let c = AwsClients::from_sdk_config(&sdk_config_for(&format!("http://127.0.0.1:{closed}")).await).unwrap();
        let err = aws::rds::describe_db_instances(&c.rds).await.unwrap_err();
        assert!(matches!(err.cause, AwsCause::Unreachable(_)), "{err}");
        assert!(err.is_environmental());
        let text = err.to_string();
        assert!(text.starts_with("RDS DescribeDBInstances: endpoint unreachable"), "{text}");
        assert!(text.contains("AWS_ENDPOINT_URL"), "says what to check: {text}");
    })
    .await
    .expect("test timed out");
}

const THROTTLED: &str = r#"<ErrorResponse xmlns="http://cloudformation.amazonaws.com/doc/2010-05-15/"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>1</RequestId></ErrorResponse>"#;
const STACKS: &str = r#"<DescribeStacksResponse xmlns="http://cloudformation.amazonaws.com/doc/2010-05-15/"><DescribeStacksResult><Stacks><member><StackName>TechHealthInfrastructureStack</StackName><StackId>arn:aws:cloudformation:us-east-1:123456789012:stack/T/1</StackId><StackStatus>CREATE_COMPLETE</StackStatus><CreationTime>2026-11-30T00:00:00Z</CreationTime></member></Stacks></DescribeStacksResult><ResponseMetadata><RequestId>2</RequestId></ResponseMetadata></DescribeStacksResponse>"#;

/// Stand-in for CloudFormation that throttles the first `throttle` requests.
async fn throttling_endpoint(throttle: usize) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0;
                // Read the whole request (headers + form body) before answering.
                loop {
                    let n = s.read(&mut buf[got..]).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got += n;
                    let text = String::from_utf8_lossy(&buf[..got]).to_string();
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len = text[..h]
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                            .unwrap_or(0);
                        if got >= h + 4 + len {
                            break;
                        }
                    }
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let (status, body) = if n < throttle { ("400 Bad Request", THROTTLED) } else { ("200 OK", STACKS) };
                let resp = format!("HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

/// Clients built by the controller's own loader (`aws::sdk_config`), with its retry
/// strategy and timeouts; only the backoff is shortened and static credentials given.
async fn clients_from_the_loader(url: &str, retry: aws::RetryPolicy) -> AwsClients {
    let cfg = controller::config::AwsConfig { region: Some("us-east-1".into()), endpoint_url: Some(url.into()), profile: None };
    let sdk = aws::sdk_config(&cfg, retry)
        .await
        .into_builder()
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "tests")))
        .build();
    AwsClients::from_sdk_config(&sdk).unwrap()
}

#[tokio::test]
async fn throttling_is_retried_with_backoff_and_named_when_it_persists() {
    tokio::time::timeout(LIMIT, async {
        let quick = aws::RetryPolicy { initial_backoff: Duration::from_millis(10), ..aws::RetryPolicy::default() };
        let (url, seen) = throttling_endpoint(2).await;
        let c = clients_from_the_loader(&url, quick).await;
        let stack = aws::cloudformation::describe_stack(&c.cloudformation, "TechHealthInfrastructureStack").await.unwrap().unwrap();
        assert_eq!(stack.status, "CREATE_COMPLETE");
        assert_eq!(seen.load(Ordering::SeqCst), 3, "two throttled attempts, then success");

        let (url, seen) = throttling_endpoint(usize::MAX).await;
        let c = clients_from_the_loader(&url, quick).await;
        let err = aws::cloudformation::describe_stack(&c.cloudformation, "TechHealthInfrastructureStack").await.unwrap_err();
        assert!(matches!(err.cause, AwsCause::Throttled { .. }), "{err}");
        assert!(err.to_string().starts_with("CloudFormation DescribeStacks: throttled and still throttled after retrying"), "{err}");
        let attempts = usize::try_from(aws::DEFAULT_MAX_ATTEMPTS).unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), attempts, "every attempt of the loader's policy used");
    })
    .await
    .expect("test timed out");
}
