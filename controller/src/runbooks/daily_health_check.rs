//! `controller daily-health-check`: the weekday-morning check. Stack status, the tagged
//! instances, the databases, the application's HTTP answer, alarms in ALARM, overnight
//! application errors, the newest automated database snapshot, and failed logins from
//! the auth log group and from the agents. Independent AWS calls run concurrently.

use chrono::{DateTime, Local, Utc};
use futures::stream::{self, StreamExt};
use serde_json::json;

use super::agents;
use super::checks::{agent_auth_check, with_unreachable_policy, log_count_check, newest_snapshot_check, next_weekday_morning, yesterday_evening};
use super::probe;
use super::report::{Check, Report, Status};
use super::targets::{Target, TargetError};
use super::Context;
use crate::aws::cloudformation::{self, Stack};
use crate::aws::cloudwatch::{self, Alarm};
use crate::aws::ec2::Instance;
use crate::aws::logs::{self, LogQuery};
use crate::aws::rds::{self, DbInstance};

/// HTTP probes at once.
const PROBE_CONCURRENCY: usize = 16;

pub const STACK: &str = "stack status";
pub const INSTANCES: &str = "ec2 instances";
pub const DATABASES: &str = "rds instances";
pub const CONNECTIVITY: &str = "application connectivity";
pub const ALARMS: &str = "cloudwatch alarms";
pub const ERRORS: &str = "application errors";
pub const BACKUP: &str = "rds automated backup";
pub const LOGINS: &str = "failed logins (auth log group)";
pub const AGENT_LOGINS: &str = "failed logins (agents)";
pub const AGENT_CERTS: &str = "agent certificates";

/// Runs the daily health check.
pub async fn run(ctx: &Context) -> Report {
    let started = Utc::now();
    let now = ctx.now;
    let since = yesterday_evening(&now.with_timezone(&Local));
    let rb = &ctx.runbooks;
    let app_q = LogQuery { group: &rb.app_log_group, start: since, end: now, pattern: Some(&rb.error_pattern), page_limit: rb.log_page_limit };
    let auth_q = LogQuery { group: &rb.auth_log_group, start: since, end: now, pattern: Some(&rb.failed_login_pattern), page_limit: rb.log_page_limit };
    let (stack, instances, dbs, alarms, errors, snapshots, logins) = tokio::join!(
        ctx.bounded("CloudFormation", "DescribeStacks", cloudformation::describe_stack(&ctx.aws.cloudformation, &rb.stack_name)),
        ctx.tagged_instances(),
        ctx.bounded("RDS", "DescribeDBInstances", rds::describe_db_instances(&ctx.aws.rds)),
        ctx.bounded("CloudWatch", "DescribeAlarms", cloudwatch::alarms_in_alarm(&ctx.aws.cloudwatch)),
        ctx.bounded("CloudWatch Logs", "FilterLogEvents", logs::count_events(&ctx.aws.logs, &app_q)),
        ctx.bounded("RDS", "DescribeDBSnapshots", rds::describe_db_snapshots(&ctx.aws.rds, &rb.db_instance_id, "automated")),
        ctx.bounded("CloudWatch Logs", "FilterLogEvents", logs::count_events(&ctx.aws.logs, &auth_q)),
    );
    let window = format!("since {}", since.with_timezone(&Local).format("%Y-%m-%d %H:%M"));

    let mut report = Report::new("daily-health-check", "TechHealth Daily Health Check", started);
    report.checks.push(match &stack {
        Ok(s) => stack_check(&rb.stack_name, s.as_ref()),
        Err(e) => Check::aws_error(STACK, e),
    });
    // A static inventory is not discovered from EC2: there are no fleet instances to count
    // (its hosts are asked through their agents below).
    if ctx.fleet.source == crate::config::FleetSource::Ec2 {
        report.checks.push(match &instances {
            Ok(i) => instances_check(i),
            Err(e) => Check::aws_error(INSTANCES, e),
        });
    }
    report.checks.push(match &dbs {
        Ok(d) => databases_check(d, &rb.db_instance_id),
        Err(e) => Check::aws_error(DATABASES, e),
    });

    let listed = instances.as_deref().unwrap_or_default();
    let hosts = ctx.targets().agent_hosts(listed);
    let (probes, auth, certs) = tokio::join!(
        probe_all(ctx, listed),
        async {
            match &ctx.dialer {
                Some(d) => Some(agents::auth_failures(d, &hosts, since, ctx.deadline).await),
                None => None,
            }
        },
        async {
            match &ctx.dialer {
                Some(d) => Some(agents::certificates(d, &hosts, ctx.deadline).await),
                None => None,
            }
        }
    );
    report.checks.push(match &instances {
        Ok(_) => connectivity_check(&probes),
        Err(_) => Check::skipped(CONNECTIVITY, "the instances could not be listed"),
    });
    report.checks.push(match &alarms {
        Ok(a) => alarms_check(a),
        Err(e) => Check::aws_error(ALARMS, e),
    });
    report.checks.push(log_count_check(ERRORS, &rb.app_log_group, "ERROR events", &window, &errors, 0));
    report.checks.push(match &snapshots {
        Ok(s) => newest_snapshot_check(BACKUP, &rb.db_instance_id, s, now),
        Err(e) => Check::aws_error(BACKUP, e),
    });
    report.checks.push(log_count_check(LOGINS, &rb.auth_log_group, "failed logins", &window, &logins, rb.failed_login_threshold));
    report.checks.push(match (&auth, ctx.agents_unavailable(AGENT_LOGINS)) {
        (_, Some(skip)) => skip,
        (Some(a), None) => with_unreachable_policy(agent_auth_check(AGENT_LOGINS, a, rb.failed_login_threshold), a, rb.unreachable),
        (None, None) => Check::skipped(AGENT_LOGINS, "no agents asked"),
    });
    report.checks.push(match (&certs, ctx.agents_unavailable(AGENT_CERTS)) {
        (_, Some(skip)) => skip,
        (Some(c), None) => with_unreachable_policy(agent_certificates_check(c, now, ctx.cert_window), c, rb.unreachable),
        (None, None) => Check::skipped(AGENT_CERTS, "no agents asked"),
    });

    report.action_items = action_items(&report, rb.failed_login_threshold);
    report.next_check = next_weekday_morning(&now.with_timezone(&Local));
    report.finished_at = Utc::now();
    report
}

/// Agent certificates: `warn` naming each one that expires within `window` (renew with
/// `controller fleet rotate-certs`), `fail` for one already expired. Pure.
pub fn agent_certificates_check(answers: &[agents::HostAnswer<(i64, String)>], now: DateTime<Utc>, window: std::time::Duration) -> Check {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2);
    let now_ms = now.timestamp_millis();
    let mut details = Vec::new();
    let mut status = Status::Ok;
    let mut due = 0;
    for a in answers {
        let Ok((not_after, serial)) = &a.answer else { continue };
        if *not_after <= 0 {
            continue;
        }
        let days = (not_after - now_ms).div_euclid(86_400_000);
        if *not_after <= now_ms {
            status = Status::Fail;
            due += 1;
            details.push(format!("{}: certificate {serial} expired {} day(s) ago", a.host, -days));
        } else if not_after - now_ms <= window_ms {
            status = status.max(Status::Warn);
            due += 1;
            details.push(format!("{}: certificate {serial} expires in {days} day(s): controller fleet rotate-certs", a.host));
        }
    }
    let answered = answers.iter().filter(|a| a.answer.is_ok()).count();
    let summary = if due == 0 {
        format!("{answered} agent certificate(s), none expiring within {} days", window.as_secs() / 86_400)
    } else {
        format!("{due} of {answered} agent certificate(s) expire within {} days", window.as_secs() / 86_400)
    };
    Check::new(AGENT_CERTS, status, summary).details(details)
}

/// One running instance's application probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub instance: String,
    /// The URL probed, or why there is none or it was not probed.
    pub url: Result<String, TargetError>,
    /// The status code, or why there was none; None when there was no URL.
    pub result: Option<Result<u16, String>>,
}

/// Probes the application URL of every host or running instance (`targets::app_urls`).
async fn probe_all(ctx: &Context, instances: &[Instance]) -> Vec<Probe> {
    let timeout = ctx.runbooks.http_timeout;
    // https URLs verify against the anchors the certificate probe uses.
    let roots = probe::trust_roots(ctx.runbooks.tls_ca_file.as_deref());
    let roots = &roots;
    let mut probes = stream::iter(ctx.targets().app_urls(instances))
        .map(|Target { label, address }| async move {
            let result = match &address {
                // `parse_url` is what the dial guard read the host with (`targets`): the
                // guard and the probe see the same host.
                Ok(u) => Some(match probe::parse_url(u) {
                    Ok(parsed) => tokio::time::timeout_at(ctx.deadline, probe::http_status(&parsed, roots, timeout))
                        .await
                        .unwrap_or(Err(probe::ProbeError::Deadline))
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }),
                Err(_) => None,
            };
            Probe { instance: label, url: address, result }
        })
        .buffer_unordered(PROBE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    // Unordered so that one slow host never holds up the others; sorted for the report.
    probes.sort_by(|a, b| a.instance.cmp(&b.instance));
    probes
}

/// CREATE/UPDATE/IMPORT _COMPLETE is healthy; in progress warns; rollbacks, failures,
/// deletion and a missing stack fail. Pure.
pub fn stack_check(name: &str, stack: Option<&Stack>) -> Check {
    let Some(s) = stack else {
        return Check::fail(STACK, format!("stack {name} does not exist"));
    };
    let st = s.status.as_str();
    let status = if st.contains("ROLLBACK") || st.contains("FAILED") || st.starts_with("DELETE") {
        Status::Fail
    } else if st.ends_with("_IN_PROGRESS") {
        Status::Warn
    } else if st.ends_with("_COMPLETE") {
        Status::Ok
    } else {
        Status::Warn
    };
    let mut c = Check::new(STACK, status, format!("{}: {st}", s.name)).data(json!(s));
    if let Some(r) = &s.reason {
        c.details.push(format!("reason: {r}"));
    }
    c
}

/// No tagged instance, or none running, fails; some not running warns. Pure.
pub fn instances_check(instances: &[Instance]) -> Check {
    let running = instances.iter().filter(|i| i.state == "running").count();
    let details = instances
        .iter()
        .map(|i| {
            format!(
                "{}  {}  {}  private {}  public {}  {}",
                i.id,
                i.name.as_deref().unwrap_or("-"),
                i.state,
                i.private_ip.as_deref().unwrap_or("-"),
                i.public_ip.as_deref().unwrap_or("-"),
                i.instance_type.as_deref().unwrap_or("-")
            )
        })
        .collect();
    let summary = format!("{running} of {} tagged instances running", instances.len());
    let status = if running == 0 {
        Status::Fail
    } else if running < instances.len() {
        Status::Warn
    } else {
        Status::Ok
    };
    Check::new(INSTANCES, status, summary).details(details).data(json!(instances))
}

/// Every database available (or backing up); the configured one must exist. Pure.
pub fn databases_check(dbs: &[DbInstance], expected: &str) -> Check {
    let details: Vec<String> = dbs
        .iter()
        .map(|d| format!("{}  {}  {}", d.id, d.status, d.endpoint.as_deref().unwrap_or("-")))
        .collect();
    let healthy = |s: &str| matches!(s, "available" | "backing-up");
    let transitional = |s: &str| {
        matches!(s, "modifying" | "maintenance" | "upgrading" | "rebooting" | "renaming" | "starting" | "creating" | "storage-optimization")
            || s.starts_with("configuring")
    };
    let bad: Vec<&DbInstance> = dbs.iter().filter(|d| !healthy(&d.status) && !transitional(&d.status)).collect();
    let busy = dbs.iter().filter(|d| transitional(&d.status)).count();
    let (status, summary) = if !dbs.iter().any(|d| d.id == expected) {
        (Status::Fail, format!("database {expected} not found ({} others)", dbs.len()))
    } else if !bad.is_empty() {
        (Status::Fail, format!("{} not available: {}", bad.len(), bad.iter().map(|d| format!("{} {}", d.id, d.status)).collect::<Vec<_>>().join(", ")))
    } else if busy > 0 {
        (Status::Warn, format!("{busy} of {} databases busy (modifying, rebooting, ...)", dbs.len()))
    } else {
        (Status::Ok, format!("{} databases available", dbs.len()))
    };
    Check::new(DATABASES, status, summary).details(details).data(json!(dbs))
}

/// Every running instance must answer its URL with 200. No instance, or none probed
/// (no URL, or not contacted), is skipped with the reason: nothing probed is not ok. Pure.
pub fn connectivity_check(probes: &[Probe]) -> Check {
    if probes.is_empty() {
        return Check::skipped(CONNECTIVITY, "no running instances to probe");
    }
    let mut details = Vec::new();
    let (mut good, mut bad, mut no_url) = (0, 0, 0);
    for p in probes {
        match (&p.url, &p.result) {
            (Ok(u), Some(Ok(200))) => {
                good += 1;
                details.push(format!("{}  {u}  HTTP 200", p.instance));
            }
            (Ok(u), Some(Ok(code))) => {
                bad += 1;
                details.push(format!("{}  {u}  HTTP {code}", p.instance));
            }
            (Ok(u), Some(Err(why))) => {
                bad += 1;
                details.push(format!("{}  {u}  {why}", p.instance));
            }
            (Ok(u), None) => details.push(format!("{}  {u}  not probed", p.instance)),
            (Err(TargetError::NotDialled { address, guard }), _) => {
                no_url += 1;
                details.push(format!("{}  {address}  {guard}", p.instance));
            }
            (Err(why), _) => {
                no_url += 1;
                details.push(format!("{}  no URL: {why}", p.instance));
            }
        }
    }
    if good == 0 && bad == 0 {
        return Check::skipped(CONNECTIVITY, format!("none of {} instances could be probed", probes.len())).details(details);
    }
    let status = if bad > 0 {
        Status::Fail
    } else if no_url > 0 {
        Status::Warn
    } else {
        Status::Ok
    };
    let mut summary = format!("{good} of {} instances answer HTTP 200", probes.len());
    if no_url > 0 {
        summary.push_str(&format!("; {no_url} without a URL"));
    }
    Check::new(CONNECTIVITY, status, summary).details(details)
}

/// Any alarm in ALARM fails. Pure.
pub fn alarms_check(alarms: &[Alarm]) -> Check {
    if alarms.is_empty() {
        return Check::ok(ALARMS, "no alarm in ALARM");
    }
    let details = alarms
        .iter()
        .map(|a| {
            let since = a.since.map(|t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "-".into());
            format!("{}  ({})  since {since}: {}", a.name, a.metric, a.reason)
        })
        .collect();
    Check::fail(ALARMS, format!("{} alarm(s) in ALARM", alarms.len())).details(details).data(json!(alarms))
}

/// The runbook's action items from the checks it made. Pure.
pub fn action_items(report: &Report, login_threshold: u64) -> Vec<String> {
    let mut items = Vec::new();
    let events = |name: &str| report.check(name).and_then(|c| c.data.get("events")).and_then(|v| v.as_u64());
    if let Some(c) = report.check(ALARMS).filter(|c| c.status == Status::Fail && !c.could_not_run && !c.details.is_empty()) {
        items.push(format!("Review the active alarms: {}", c.summary));
    }
    if let Some(n) = events(ERRORS).filter(|n| *n > 0) {
        items.push(format!("Investigate the {n} error events in the application log"));
    }
    if let Some(n) = events(LOGINS).filter(|n| *n > login_threshold) {
        items.push(format!("Follow up on the {n} failed login attempts (more than {login_threshold})"));
    }
    for c in report.checks.iter().filter(|c| c.status == Status::Fail && c.name != ALARMS) {
        items.push(format!("Fix {}: {}", c.name, c.summary));
    }
    items
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fleet::ec2::EmulatorAddress;
    use crate::runbooks::config::TemplateError;

    fn stack(status: &str) -> Stack {
        Stack { name: "S".into(), status: status.into(), reason: None, last_updated: None }
    }

    #[test]
    fn agent_certificates_within_the_window_warn_and_expired_ones_fail() {
        let now = Utc::now();
        let day = 86_400_000i64;
        let at = |host: &str, days: i64| agents::HostAnswer {
            host: host.into(),
            instance_id: None,
            answer: Ok((now.timestamp_millis() + days * day + 1000, format!("{host}-serial"))),
        };
        let window = std::time::Duration::from_secs(30 * 86_400);
        let c = agent_certificates_check(&[at("a", 80), at("b", 89)], now, window);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        let c = agent_certificates_check(&[at("a", 80), at("b", 10)], now, window);
        assert_eq!((c.status, c.details.len()), (Status::Warn, 1), "{c:?}");
        assert!(c.details[0].starts_with("b: certificate b-serial expires in 10 day(s)"), "{c:?}");
        let c = agent_certificates_check(&[at("a", -2)], now, window);
        assert_eq!(c.status, Status::Fail, "{c:?}");
    }

    #[test]
    fn stack_statuses_map_to_check_statuses() {
        assert_eq!(stack_check("S", Some(&stack("CREATE_COMPLETE"))).status, Status::Ok);
        assert_eq!(stack_check("S", Some(&stack("UPDATE_COMPLETE"))).status, Status::Ok);
        assert_eq!(stack_check("S", Some(&stack("UPDATE_IN_PROGRESS"))).status, Status::Warn);
        assert_eq!(stack_check("S", Some(&stack("UPDATE_ROLLBACK_COMPLETE"))).status, Status::Fail);
        assert_eq!(stack_check("S", Some(&stack("CREATE_FAILED"))).status, Status::Fail);
        assert_eq!(stack_check("S", Some(&stack("DELETE_COMPLETE"))).status, Status::Fail);
        assert_eq!(stack_check("S", None).status, Status::Fail);
    }

    #[test]
    fn connectivity_needs_200_from_every_running_instance() {
        let p = |code: Result<u16, String>| Probe { instance: "web".into(), url: Ok("http://x/".into()), result: Some(code) };
        assert_eq!(connectivity_check(&[p(Ok(200))]).status, Status::Ok);
        assert_eq!(connectivity_check(&[p(Ok(200)), p(Ok(500))]).status, Status::Fail);
        assert_eq!(connectivity_check(&[p(Err("connection refused".into()))]).status, Status::Fail);
        assert_eq!(connectivity_check(&[]).status, Status::Skipped);
        let no_ip = TargetError::Template(TemplateError::NoValue { placeholder: "public_ip".into() });
        let no_url = Probe { instance: "web".into(), url: Err(no_ip), result: None };
        assert_eq!(connectivity_check(&[p(Ok(200)), no_url.clone()]).status, Status::Warn);
        assert_eq!(connectivity_check(&[no_url]).status, Status::Skipped, "nothing probed is not ok");
        let refused = TargetError::NotDialled { address: "http://10.0.1.5/".into(), guard: EmulatorAddress };
        let invented = Probe { instance: "db".into(), url: Err(refused), result: None };
        let check = connectivity_check(&[p(Ok(200)), invented]);
        assert_eq!(check.status, Status::Warn, "not contacted counts as no URL: {check:?}");
        assert_eq!(check.details[1], format!("db  http://10.0.1.5/  {EmulatorAddress}"));
    }

    #[test]
    fn databases_must_include_the_configured_one_and_be_available() {
        let db = |id: &str, status: &str| DbInstance {
            id: id.into(),
            status: status.into(),
            endpoint: None,
            port: None,
            engine: None,
            class: None,
            backup_retention_days: 7,
            backup_window: None,
            storage_encrypted: true,
            publicly_accessible: false,
            allocated_storage_gib: None,
            security_group_ids: vec![],
        };
        assert_eq!(databases_check(&[db("d", "available")], "d").status, Status::Ok);
        assert_eq!(databases_check(&[db("d", "modifying")], "d").status, Status::Warn);
        assert_eq!(databases_check(&[db("d", "storage-full")], "d").status, Status::Fail);
        assert_eq!(databases_check(&[db("x", "available")], "d").status, Status::Fail);
    }

    #[test]
    fn action_items_follow_the_runbook() {
        let mut r = Report::new("daily-health-check", "t", Utc::now());
        r.checks.push(Check::fail(ALARMS, "1 alarm(s) in ALARM").details(vec!["HighCPU".into()]));
        r.checks.push(Check::warn(ERRORS, "3").data(json!({"events": 3})));
        r.checks.push(Check::warn(LOGINS, "6").data(json!({"events": 6})));
        let items = action_items(&r, 5);
        assert_eq!(items.len(), 3, "{items:?}");
        assert!(items[0].starts_with("Review the active alarms"));
        assert!(items[1].contains("3 error events"));
        assert!(items[2].contains("6 failed login attempts"));
    }
}
