//! Seeding a test's moto through the AWS SDK: tagged instances, a database, a stack,
//! log events, alarms, metrics, snapshots, security groups and users, each the way the
//! TechHealth stack would have them. Test code: panics on failure with the call named.

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, MetricDatum, StateValue, Statistic};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, InstanceType, IpPermission, IpRange, ResourceType, Tag, TagSpecification};
use chrono::{DateTime, Utc};
use controller::aws::AwsClients;

/// Most events one PutLogEvents call takes.
const LOG_BATCH: usize = 5_000;

fn tag_spec(kind: ResourceType, tags: &[(&str, &str)]) -> TagSpecification {
    let mut b = TagSpecification::builder().resource_type(kind);
    for (k, v) in tags {
        b = b.tags(Tag::builder().key(*k).value(*v).build());
    }
    b.build()
}

/// Starts one running instance with these tags and an (un)encrypted root volume;
/// returns its id.
pub async fn instance(aws: &AwsClients, tags: &[(&str, &str)], encrypted_root: bool) -> String {
    instance_in_groups(aws, tags, encrypted_root, &[]).await
}

/// An instance launched into the given security groups (none: the default group).
pub async fn instance_in_groups(aws: &AwsClients, tags: &[(&str, &str)], encrypted_root: bool, groups: &[String]) -> String {
    let out = aws
        .ec2
        .run_instances()
        .set_security_group_ids((!groups.is_empty()).then(|| groups.to_vec()))
        .image_id("ami-12345678")
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(EbsBlockDevice::builder().volume_size(8).encrypted(encrypted_root).build())
                .build(),
        )
        .tag_specifications(tag_spec(ResourceType::Instance, tags))
        .send()
        .await
        .expect("RunInstances");
    out.instances()[0].instance_id().expect("instance id").to_string()
}

/// Stops an instance.
pub async fn stop(aws: &AwsClients, id: &str) {
    aws.ec2.stop_instances().instance_ids(id).send().await.expect("StopInstances");
}

/// A MySQL instance (moto also takes its first automated snapshot).
pub async fn database(aws: &AwsClients, id: &str, retention_days: i32, encrypted: bool, public: bool) {
    aws.rds
        .create_db_instance()
        .db_instance_identifier(id)
        .db_instance_class("db.t3.micro")
        .engine("mysql")
        .master_username("admin")
        .master_user_password("not-a-secret-1")
        .allocated_storage(20)
        .backup_retention_period(retention_days)
        .preferred_backup_window("03:00-04:00")
        .storage_encrypted(encrypted)
        .publicly_accessible(public)
        .send()
        .await
        .expect("CreateDBInstance");
}

/// A stack with one harmless resource (CREATE_COMPLETE).
pub async fn stack(aws: &AwsClients, name: &str) {
    aws.cloudformation
        .create_stack()
        .stack_name(name)
        .template_body(r#"{"Resources":{"Topic":{"Type":"AWS::SNS::Topic"}}}"#)
        .send()
        .await
        .expect("CreateStack");
}

/// Creates the log group if needed, then writes `events` (time, message) to `stream`.
pub async fn log_events(aws: &AwsClients, group: &str, stream: &str, events: &[(DateTime<Utc>, String)]) {
    let _ = aws.logs.create_log_group().log_group_name(group).send().await;
    let _ = aws.logs.create_log_stream().log_group_name(group).log_stream_name(stream).send().await;
    let mut sorted: Vec<&(DateTime<Utc>, String)> = events.iter().collect();
    sorted.sort_by_key(|(t, _)| *t);
    for chunk in sorted.chunks(LOG_BATCH) {
        let batch: Vec<InputLogEvent> = chunk
            .iter()
            .map(|(t, m)| InputLogEvent::builder().timestamp(t.timestamp_millis()).message(m.clone()).build().expect("event"))
            .collect();
        aws.logs
            .put_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .set_log_events(Some(batch))
            .send()
            .await
            .expect("PutLogEvents");
    }
}

/// An empty log group.
pub async fn log_group(aws: &AwsClients, group: &str) {
    aws.logs.create_log_group().log_group_name(group).send().await.expect("CreateLogGroup");
}

/// A metric alarm, forced into ALARM.
pub async fn alarm_in_alarm(aws: &AwsClients, name: &str, reason: &str) {
    aws.cloudwatch
        .put_metric_alarm()
        .alarm_name(name)
        .namespace("AWS/EC2")
        .metric_name("CPUUtilization")
        .statistic(Statistic::Average)
        .period(300)
        .evaluation_periods(2)
        .threshold(80.0)
        .comparison_operator(ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .expect("PutMetricAlarm");
    aws.cloudwatch
        .set_alarm_state()
        .alarm_name(name)
        .state_value(StateValue::Alarm)
        .state_reason(reason)
        .send()
        .await
        .expect("SetAlarmState");
}

/// Datapoints (time, value) of one metric.
pub async fn metric(aws: &AwsClients, namespace: &str, name: &str, dims: &BTreeMap<&str, &str>, points: &[(DateTime<Utc>, f64)]) {
    let data: Vec<MetricDatum> = points
        .iter()
        .map(|(t, v)| {
            let mut b = MetricDatum::builder().metric_name(name).value(*v).timestamp(controller::aws::from_utc(*t));
            for (k, val) in dims {
                b = b.dimensions(Dimension::builder().name(*k).value(*val).build());
            }
            b.build()
        })
        .collect();
    aws.cloudwatch.put_metric_data().namespace(namespace).set_metric_data(Some(data)).send().await.expect("PutMetricData");
}

/// A volume and a snapshot of it carrying `tags`; returns the snapshot id.
pub async fn ebs_snapshot(aws: &AwsClients, tags: &[(&str, &str)], encrypted: bool) -> String {
    let vol = aws
        .ec2
        .create_volume()
        .availability_zone("us-east-1a")
        .size(8)
        .encrypted(encrypted)
        .send()
        .await
        .expect("CreateVolume");
    snapshot_of(aws, vol.volume_id().expect("volume id"), tags).await
}

/// A snapshot of one given volume, with tags.
pub async fn snapshot_of(aws: &AwsClients, volume_id: &str, tags: &[(&str, &str)]) -> String {
    let snap = aws
        .ec2
        .create_snapshot()
        .volume_id(volume_id)
        .description("test")
        .tag_specifications(tag_spec(ResourceType::Snapshot, tags))
        .send()
        .await
        .expect("CreateSnapshot");
    snap.snapshot_id().expect("snapshot id").to_string()
}

/// The EBS volumes attached to an instance.
pub async fn volumes_of(aws: &AwsClients, instance_id: &str) -> Vec<String> {
    let out = aws.ec2.describe_instances().instance_ids(instance_id).send().await.expect("DescribeInstances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.block_device_mappings())
        .filter_map(|m| m.ebs().and_then(|e| e.volume_id()).map(str::to_string))
        .collect()
}

/// A security group admitting `cidr` on TCP `port`.
pub async fn open_group(aws: &AwsClients, name: &str, port: i32, cidr: &str) -> String {
    let g = aws.ec2.create_security_group().group_name(name).description(name).send().await.expect("CreateSecurityGroup");
    let id = g.group_id().expect("group id").to_string();
    aws.ec2
        .authorize_security_group_ingress()
        .group_id(&id)
        .ip_permissions(
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(port)
                .to_port(port)
                .ip_ranges(IpRange::builder().cidr_ip(cidr).build())
                .build(),
        )
        .send()
        .await
        .expect("AuthorizeSecurityGroupIngress");
    id
}

/// An IAM user (moto never records a password use for it).
pub async fn user(aws: &AwsClients, name: &str) {
    aws.iam.create_user().user_name(name).send().await.expect("CreateUser");
}

/// An IAM user with a console password (and no MFA device).
pub async fn user_with_password(aws: &AwsClients, name: &str) {
    user(aws, name).await;
    aws.iam.create_login_profile().user_name(name).password("Correct-Horse-9").send().await.expect("CreateLoginProfile");
}

/// A CloudTrail record as CloudTrail writes it to CloudWatch Logs.
pub fn trail_record(event: &str, error_code: Option<&str>, user: &str) -> String {
    let mut v = serde_json::json!({
        "eventVersion": "1.08",
        "eventTime": Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "eventSource": "ec2.amazonaws.com",
        "eventName": event,
        "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.7",
        "userIdentity": {"type": "IAMUser", "arn": format!("arn:aws:iam::123456789012:user/{user}"), "userName": user},
    });
    if let Some(code) = error_code {
        v["errorCode"] = serde_json::Value::from(code);
        v["errorMessage"] = serde_json::Value::from("You are not authorized to perform this operation.");
    }
    v.to_string()
}

/// A runbook context on these clients: fleet from EC2 tagged `Project=TechHealth`,
/// agents dialled at their `Agent` tag, `runbooks_toml` as the `[runbooks]` section.
pub fn context(aws: AwsClients, runbooks_toml: &str, dialer: Option<controller::client::Dialer>) -> controller::runbooks::Context {
    let fleet = "[fleet]\nsource = \"ec2\"\ntag_filters = { Project = \"TechHealth\" }\naddress = \"tag:Agent\"\n";
    context_with_fleet(aws, fleet, runbooks_toml, dialer)
}

/// A runbook context for the given `[fleet]` section (with its `[[fleet.hosts]]`).
pub fn context_with_fleet(aws: AwsClients, fleet_toml: &str, runbooks_toml: &str, dialer: Option<controller::client::Dialer>) -> controller::runbooks::Context {
    let text = format!("[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n{fleet_toml}\n[runbooks]\n{runbooks_toml}\n");
    let cfg = controller::config::ControllerConfig::parse(&text).expect("config");
    cfg.validate().expect("valid config");
    let deadline = tokio::time::Instant::now() + cfg.runbooks.deadline;
    controller::runbooks::Context {
        aws,
        runbooks: cfg.runbooks,
        fleet: cfg.fleet,
        dialer_error: dialer.is_none().then(|| "no agent credentials in this test".to_string()),
        dialer,
        now: Utc::now(),
        deadline,
        cert_window: cfg.enrol.rotate_before,
    }
}

/// An auth log (RFC 3339 syslog lines) with `n` failed passwords in the last hour.
pub fn auth_log(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let path = dir.join("secure");
    let now = Utc::now();
    let mut text = String::new();
    for i in 0..n {
        let t = now - chrono::Duration::minutes(50) + chrono::Duration::seconds(i as i64);
        text.push_str(&format!(
            "{} web-1 sshd[{}]: Failed password for root from 192.0.2.{} port 22 ssh2\n",
            t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00"),
            100 + i,
            1 + i % 3
        ));
    }
    std::fs::write(&path, text).expect("write auth log");
    path
}

/// A CloudTrail trail in moto, made with the venv's boto3 (moto's own dependency; the
/// controller does not need the S3 SDK, and a trail needs a bucket): `logging` starts
/// it, otherwise it is created and left stopped.
pub fn trail(endpoint: &str, name: &str, multi_region: bool, validation: bool, logging: bool) {
    let py = super::moto::moto_server_path().with_file_name("python");
    assert!(py.is_file(), "no python in the moto venv ({}): run scripts/setup", py.display());
    let script = r#"
import sys, boto3
ep, name, multi, valid, logging = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1", sys.argv[5] == "1"
kw = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
s3 = boto3.client("s3", **kw)
bucket = "trail-" + name.lower()
s3.create_bucket(Bucket=bucket)
ct = boto3.client("cloudtrail", **kw)
ct.create_trail(Name=name, S3BucketName=bucket, IsMultiRegionTrail=multi, EnableLogFileValidation=valid)
if logging:
    ct.start_logging(Name=name)
"#;
    let flag = |b: bool| if b { "1" } else { "0" };
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(script)
        .args([endpoint, name, flag(multi_region), flag(validation), flag(logging)])
        .output()
        .expect("run python");
    assert!(out.status.success(), "seeding the trail in moto failed: {}", String::from_utf8_lossy(&out.stderr));
}
