//! `controller security-review`: the weekly review. IAM users and their last password
//! use, security groups open to the world, failed logins over 7 days (log group and
//! agents), CloudTrail access-denied events (parsed here, not left to the service's
//! JSON filter), TLS certificate expiry of each host's HTTPS endpoint, listening ports
//! from the agents in place of `nmap`, and compliance checks. Read-only.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use futures::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};

use super::agents::{self, HostAnswer, Live};
use super::backup_verify::MIN_RETENTION_DAYS;
use super::checks::{agent_auth_check, log_count_check, with_unreachable_policy};
use super::probe::{self, CertInfo};
use super::report::{Check, Report, Status};
use super::targets::{Target, TargetError};
use super::Context;
use crate::aws::cloudtrail::{self, Trail};
use crate::aws::ec2::{self, SecurityGroup, Volume};
use crate::aws::iam::{self, CredentialRow};
use crate::aws::logs::{self, LogQuery};
use crate::aws::rds::{self, DbInstance};
use crate::aws::AwsError;

/// The review looks back this far.
pub const WINDOW_DAYS: i64 = 7;
/// A password unused this long warns.
pub const STALE_DAYS: i64 = 90;
/// Certificate expiry: under 30 days warns, under 7 (or expired) fails.
pub const CERT_WARN_DAYS: i64 = 30;
pub const CERT_FAIL_DAYS: i64 = 7;
/// Ports that must never be open to the world.
pub const CRITICAL_PORTS: [i32; 2] = [22, 3306];
/// Open to the world by design (the web application).
pub const WEB_PORTS: [i32; 2] = [80, 443];
/// Events listed in a report (all are counted).
const MAX_LISTED: usize = 50;
/// TLS probes at once.
const PROBE_CONCURRENCY: usize = 16;

pub const IAM_USERS: &str = "iam users";
pub const SECURITY_GROUPS: &str = "security groups";
pub const LOGINS: &str = "failed logins (auth log group, 7 days)";
pub const AGENT_LOGINS: &str = "failed logins (agents, 7 days)";
pub const CLOUDTRAIL: &str = "cloudtrail access denied";
pub const TLS: &str = "tls certificates";
pub const PORTS: &str = "listening ports (agents)";
pub const C_RDS_ENCRYPTED: &str = "compliance: rds storage encrypted";
pub const C_RDS_PRIVATE: &str = "compliance: rds not publicly accessible";
pub const C_RDS_RETENTION: &str = "compliance: rds backup retention";
pub const C_EBS_ENCRYPTED: &str = "compliance: ebs volumes encrypted";
pub const C_TRAIL_GROUP: &str = "compliance: cloudtrail log group";
pub const C_TRAIL: &str = "compliance: cloudtrail trail";

/// Runs the security review.
pub async fn run(ctx: &Context) -> Report {
    let started = Utc::now();
    let now = ctx.now;
    let since = now - Duration::days(WINDOW_DAYS);
    let rb = &ctx.runbooks;
    let auth_q = LogQuery { group: &rb.auth_log_group, start: since, end: now, pattern: Some(&rb.failed_login_pattern), page_limit: rb.log_page_limit };
    let (users, groups, logins, trail, instances, dbs, volumes, trail_group, trail_status) = tokio::join!(
        ctx.bounded("IAM", "GetCredentialReport", iam::credential_report(&ctx.aws.iam)),
        ctx.bounded("EC2", "DescribeSecurityGroups", ec2::describe_security_groups(&ctx.aws.ec2)),
        ctx.bounded("CloudWatch Logs", "FilterLogEvents", logs::count_events(&ctx.aws.logs, &auth_q)),
        ctx.bounded("CloudWatch Logs", "FilterLogEvents", cloudtrail_denials(ctx, since)),
        ctx.tagged_instances(),
        ctx.bounded("RDS", "DescribeDBInstances", rds::describe_db_instances(&ctx.aws.rds)),
        ctx.bounded("EC2", "DescribeVolumes", ec2::describe_volumes(&ctx.aws.ec2)),
        ctx.bounded("CloudWatch Logs", "DescribeLogGroups", logs::log_group_exists(&ctx.aws.logs, &rb.cloudtrail_log_group)),
        ctx.bounded("CloudTrail", "DescribeTrails", cloudtrail::trail(&ctx.aws.cloudtrail, &rb.trail_name)),
    );
    let hosts = ctx.targets().agent_hosts(instances.as_deref().unwrap_or_default());
    let tls_fut = tls_probes(ctx, instances.as_deref().unwrap_or_default());
    let agents_fut = async {
        match &ctx.dialer {
            Some(d) => Some(tokio::join!(
                agents::auth_failures(d, &hosts, since, ctx.deadline),
                agents::live(d, &hosts, ctx.deadline)
            )),
            None => None,
        }
    };
    let (tls, from_agents) = tokio::join!(tls_fut, agents_fut);

    let mut report = Report::new("security-review", "TechHealth Weekly Security Review", started);
    let c = &mut report.checks;
    c.push(match &users {
        Ok(u) => users_check(u, now),
        Err(e) => Check::aws_error(IAM_USERS, e),
    });
    c.push(match &groups {
        Ok(g) => security_groups_check(g),
        Err(e) => Check::aws_error(SECURITY_GROUPS, e),
    });
    c.push(log_count_check(LOGINS, &rb.auth_log_group, "failed logins", "in the last 7 days", &logins, rb.failed_login_threshold));
    match (ctx.agents_unavailable(AGENT_LOGINS), &from_agents) {
        (Some(skip), _) => {
            c.push(skip);
            c.push(Check::skipped(PORTS, ctx.dialer_error.clone().unwrap_or_default()));
        }
        (None, Some((auth, live))) => {
            c.push(with_unreachable_policy(agent_auth_check(AGENT_LOGINS, auth, rb.failed_login_threshold), auth, rb.unreachable));
            let exposure = Exposure::new(instances.as_deref().unwrap_or_default(), groups.as_deref().unwrap_or_default(), groups.is_ok());
            c.push(with_unreachable_policy(ports_check(live, &exposure), live, rb.unreachable));
        }
        (None, None) => {}
    }
    c.push(match &trail {
        Ok(t) => cloudtrail_check(&rb.cloudtrail_log_group, t),
        Err(e) if e.is_not_found() => Check::skipped(CLOUDTRAIL, format!("log group {} does not exist", rb.cloudtrail_log_group)),
        Err(e) => Check::aws_error(CLOUDTRAIL, e),
    });
    c.push(tls_check(&tls, now));
    match &dbs {
        Ok(d) => c.extend(rds_compliance(d)),
        Err(e) => c.extend([C_RDS_ENCRYPTED, C_RDS_PRIVATE, C_RDS_RETENTION].map(|n| Check::aws_error(n, e))),
    }
    c.push(match &volumes {
        Ok(v) => ebs_compliance(v),
        Err(e) => Check::aws_error(C_EBS_ENCRYPTED, e),
    });
    c.push(match &trail_group {
        Ok(true) => Check::ok(C_TRAIL_GROUP, format!("{} exists", rb.cloudtrail_log_group)),
        Ok(false) => Check::fail(C_TRAIL_GROUP, format!("{} does not exist: API activity is not audited", rb.cloudtrail_log_group)),
        Err(e) => Check::aws_error(C_TRAIL_GROUP, e),
    });
    c.push(match &trail_status {
        Ok(t) => trail_check(&rb.trail_name, t.as_ref(), now, rb.trail_max_delivery_age),
        Err(e) => Check::aws_error(C_TRAIL, e),
    });
    report.action_items = report
        .checks
        .iter()
        .filter(|c| c.status >= Status::Warn)
        .map(|c| format!("Review {}: {}", c.name, c.summary))
        .collect();
    report.finished_at = Utc::now();
    report
}

/// The credential report weighed user by user: a console password without MFA fails; root
/// used (password or keys) within the stale window, or holding an active access key, fails;
/// a password or an active key unused for `STALE_DAYS`, and a key not rotated for
/// `STALE_DAYS`, warns. A user with neither password nor keys is fine. Pure.
pub fn users_check(rows: &[CredentialRow], now: DateTime<Utc>) -> Check {
    let stale = |t: Option<DateTime<Utc>>| t.is_none_or(|t| now - t > Duration::days(STALE_DAYS));
    let day = |t: Option<DateTime<Utc>>| t.map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_else(|| "never".into());
    let mut status = Status::Ok;
    let mut details = Vec::new();
    let (mut failing, mut warning) = (0, 0);
    for r in rows {
        let mut findings: Vec<(Status, String)> = Vec::new();
        if r.is_root() {
            if !stale(r.password_last_used) {
                findings.push((Status::Fail, format!("root signed in {} (use IAM users or roles)", day(r.password_last_used))));
            }
            if !r.active_keys.is_empty() {
                findings.push((Status::Fail, format!("root has {} active access key(s)", r.active_keys.len())));
            }
            if !r.mfa_active {
                findings.push((Status::Fail, "root has no MFA".into()));
            }
        } else {
            if r.password_enabled && !r.mfa_active {
                findings.push((Status::Fail, "console password without MFA".into()));
            }
            if r.password_enabled && stale(r.password_last_used) {
                findings.push((Status::Warn, format!("password last used {} (disable it)", day(r.password_last_used))));
            }
        }
        for (i, (rotated, used)) in r.active_keys.iter().enumerate() {
            if stale(*rotated) {
                findings.push((Status::Warn, format!("access key {} not rotated since {}", i + 1, day(*rotated))));
            }
            if stale(*used) && !r.is_root() {
                findings.push((Status::Warn, format!("access key {} last used {}", i + 1, day(*used))));
            }
        }
        let worst = findings.iter().map(|(s, _)| *s).max().unwrap_or(Status::Ok);
        match worst {
            Status::Fail => failing += 1,
            Status::Warn => warning += 1,
            _ => {}
        }
        status = status.max(worst);
        let what = if findings.is_empty() {
            format!("password {}, MFA {}, {} active key(s)", if r.password_enabled { "on" } else { "off" }, if r.mfa_active { "on" } else { "off" }, r.active_keys.len())
        } else {
            findings.iter().map(|(s, f)| format!("{}: {f}", s.label())).collect::<Vec<_>>().join("; ")
        };
        details.push(format!("{}  {what}", r.user));
    }
    let summary = format!("{} principals in the credential report: {failing} failing, {warning} warning", rows.len());
    Check::new(IAM_USERS, status, summary).details(details).data(json!(rows))
}

/// An inbound rule open to 0.0.0.0/0 or ::/0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenRule {
    pub group_id: String,
    pub group_name: String,
    pub protocol: String,
    pub ports: String,
    pub cidr: String,
    pub status: Status,
}

fn covers(from: Option<i32>, to: Option<i32>, protocol: &str, port: i32) -> bool {
    let all_ports = protocol == "-1" || from.is_none() || (from == Some(-1) && to == Some(-1));
    (protocol == "-1" || protocol == "tcp" || protocol == "6") && (all_ports || (from.unwrap_or(0) <= port && port <= to.unwrap_or(65535)))
}

/// Every world-open inbound rule: to 22 or 3306 fails, only web ports is fine, any
/// other port warns. Pure.
pub fn open_rules(groups: &[SecurityGroup]) -> Vec<OpenRule> {
    let mut out = Vec::new();
    for g in groups {
        for r in &g.ingress {
            for cidr in r.cidrs_v4.iter().filter(|c| *c == "0.0.0.0/0").chain(r.cidrs_v6.iter().filter(|c| *c == "::/0")) {
                let critical = CRITICAL_PORTS.iter().any(|p| covers(r.from_port, r.to_port, &r.protocol, *p));
                let web_only = r.protocol != "-1" && r.from_port == r.to_port && r.from_port.is_some_and(|p| WEB_PORTS.contains(&p));
                let ports = match (r.protocol.as_str(), r.from_port, r.to_port) {
                    ("-1", _, _) => "all".to_string(),
                    (_, Some(a), Some(b)) if a == b => a.to_string(),
                    (_, Some(a), Some(b)) => format!("{a}-{b}"),
                    _ => "all".to_string(),
                };
                out.push(OpenRule {
                    group_id: g.id.clone(),
                    group_name: g.name.clone(),
                    protocol: if r.protocol == "-1" { "all".into() } else { r.protocol.clone() },
                    ports,
                    cidr: cidr.clone(),
                    status: if critical { Status::Fail } else if web_only { Status::Ok } else { Status::Warn },
                });
            }
        }
    }
    out
}

/// The security-group audit. Pure.
pub fn security_groups_check(groups: &[SecurityGroup]) -> Check {
    let open = open_rules(groups);
    let status = open.iter().map(|o| o.status).max().unwrap_or(Status::Ok);
    let details = open
        .iter()
        .map(|o| format!("{}  {} ({})  {} {} from {}", o.status.label(), o.group_id, o.group_name, o.protocol, o.ports, o.cidr))
        .collect();
    let critical = open.iter().filter(|o| o.status == Status::Fail).count();
    let summary = if critical > 0 {
        format!("{critical} rule(s) open SSH or MySQL to the world; {} world-open rules in {} groups", open.len(), groups.len())
    } else {
        format!("{} world-open rules in {} groups", open.len(), groups.len())
    };
    Check::new(SECURITY_GROUPS, status, summary).details(details).data(json!(open))
}

/// A CloudTrail event that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub time: String,
    pub event: String,
    pub error_code: String,
    pub user: String,
    pub source_ip: String,
}

/// What the CloudTrail scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrailScan {
    pub scanned: u64,
    pub denials: u64,
    /// The first `MAX_LISTED` denials.
    pub listed: Vec<Denial>,
    pub malformed: u64,
}

/// What one CloudTrail log event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrailRecord {
    /// Refused with `AccessDenied*` or `*UnauthorizedOperation`.
    Denied(Denial),
    /// Any other call.
    Other,
    /// Not a JSON object: not a CloudTrail record.
    Malformed,
}

/// Classifies one CloudTrail log event. Pure.
pub fn parse_denial(message: &str) -> TrailRecord {
    let v: Value = match serde_json::from_str(message) {
        Ok(v @ Value::Object(_)) => v,
        _ => return TrailRecord::Malformed,
    };
    let code = v.get("errorCode").and_then(Value::as_str).unwrap_or("");
    if !(code.starts_with("AccessDenied") || code.ends_with("UnauthorizedOperation")) {
        return TrailRecord::Other;
    }
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    let user = [s("/userIdentity/arn"), s("/userIdentity/userName"), s("/userIdentity/principalId")]
        .into_iter()
        .find(|u| !u.is_empty())
        .unwrap_or_else(|| "-".into());
    TrailRecord::Denied(Denial {
        time: s("/eventTime"),
        event: format!("{}:{}", s("/eventSource").trim_end_matches(".amazonaws.com"), s("/eventName")),
        error_code: code.to_string(),
        user,
        source_ip: s("/sourceIPAddress"),
    })
}

async fn cloudtrail_denials(ctx: &Context, since: DateTime<Utc>) -> Result<TrailScan, AwsError> {
    // "errorCode" narrows the scan to refused calls on the service side; the
    // AccessDenied / UnauthorizedOperation decision is made here on the parsed JSON.
    let q = LogQuery { group: &ctx.runbooks.cloudtrail_log_group, start: since, end: ctx.now, pattern: Some("errorCode"), page_limit: ctx.runbooks.log_page_limit };
    let mut scan = TrailScan::default();
    let stats = logs::scan_events(&ctx.aws.logs, &q, |e| match parse_denial(&e.message) {
        TrailRecord::Denied(d) => {
            scan.denials += 1;
            if scan.listed.len() < MAX_LISTED {
                scan.listed.push(d);
            }
        }
        TrailRecord::Other => {}
        TrailRecord::Malformed => scan.malformed += 1,
    })
    .await?;
    scan.scanned = stats.events;
    Ok(scan)
}

/// Any refused call in the window fails. Pure.
pub fn cloudtrail_check(group: &str, scan: &TrailScan) -> Check {
    let mut details: Vec<String> = scan
        .listed
        .iter()
        .map(|d| format!("{}  {}  {}  {}  from {}", d.time, d.error_code, d.event, d.user, d.source_ip))
        .collect();
    if scan.denials as usize > scan.listed.len() {
        details.push(format!("... and {} more", scan.denials as usize - scan.listed.len()));
    }
    if scan.malformed > 0 {
        details.push(format!("{} events were not CloudTrail JSON and were skipped", scan.malformed));
    }
    let summary = format!("{} access-denied / unauthorized events in {group} in the last 7 days ({} scanned)", scan.denials, scan.scanned);
    let status = if scan.denials > 0 { Status::Fail } else { Status::Ok };
    Check::new(CLOUDTRAIL, status, summary).details(details).data(json!(scan))
}

/// One host's HTTPS endpoint and what it presented.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsProbe {
    pub host: String,
    /// The endpoint probed, or why there is none or it was not probed.
    pub endpoint: Result<String, TargetError>,
    pub cert: Option<Result<CertInfo, String>>,
}

/// Reads the certificate of every host's or running instance's HTTPS endpoint
/// (`targets::tls_endpoints`).
async fn tls_probes(ctx: &Context, instances: &[crate::aws::ec2::Instance]) -> Vec<TlsProbe> {
    let rb = &ctx.runbooks;
    let (server_name, timeout) = (rb.tls_server_name.as_str(), rb.http_timeout);
    let roots = probe::trust_roots(rb.tls_ca_file.as_deref());
    let roots = &roots;
    stream::iter(ctx.targets().tls_endpoints(instances))
        .map(|Target { label, address }| async move {
            let cert = match &address {
                Ok(ep) => Some(match roots {
                    Ok(roots) => tokio::time::timeout_at(ctx.deadline, probe::fetch_certificate(ep, server_name, roots.clone(), timeout))
                        .await
                        .unwrap_or(Err(probe::ProbeError::Deadline))
                        .map_err(|e| e.to_string()),
                    Err(why) => Err(format!("not probed: {why}")),
                }),
                Err(_) => None,
            };
            TlsProbe { host: label, endpoint: address, cert }
        })
        .buffered(PROBE_CONCURRENCY)
        .collect()
        .await
}

/// Status of a certificate expiring at `not_after`. Pure.
pub fn cert_status(not_after: DateTime<Utc>, now: DateTime<Utc>) -> Status {
    let left = not_after - now;
    if left < Duration::days(CERT_FAIL_DAYS) {
        Status::Fail
    } else if left < Duration::days(CERT_WARN_DAYS) {
        Status::Warn
    } else {
        Status::Ok
    }
}

/// Certificate expiry per host; an unreachable endpoint warns, named as such. Pure.
pub fn tls_check(probes: &[TlsProbe], now: DateTime<Utc>) -> Check {
    if probes.is_empty() {
        return Check::skipped(TLS, "no hosts with an HTTPS endpoint");
    }
    let mut status = Status::Ok;
    let mut details = Vec::new();
    let (mut expiring, mut unreachable, mut untrusted) = (0, 0, 0);
    for p in probes {
        match (&p.endpoint, &p.cert) {
            (Ok(ep), Some(Ok(c))) => {
                let mut s = cert_status(c.not_after, now);
                if s != Status::Ok {
                    expiring += 1;
                }
                if c.trust_error.is_some() {
                    untrusted += 1;
                    s = Status::Fail;
                }
                status = status.max(s);
                let days = (c.not_after - now).num_days();
                let when = if c.not_after < now { format!("EXPIRED {} days ago", -days) } else { format!("expires in {days} days") };
                let trust = c.trust_error.as_ref().map(|t| format!("  {t}")).unwrap_or_default();
                details.push(format!("{}  {ep}  {}  {when} ({})  subject {}{trust}", s.label(), p.host, c.not_after.format("%Y-%m-%d %H:%M UTC"), c.subject));
            }
            (Ok(ep), Some(Err(why))) => {
                // A certificate that could not be read was not checked: never ok.
                unreachable += 1;
                status = Status::Fail;
                details.push(format!("FAIL  {ep}  {}  unreachable: {why}", p.host));
            }
            (Ok(ep), None) => details.push(format!("skipped  {ep}  {}", p.host)),
            (Err(TargetError::NotDialled { address, guard }), _) => {
                // Not read, so not checked: never ok, as for an endpoint that did not answer.
                unreachable += 1;
                status = Status::Fail;
                details.push(format!("FAIL  {address}  {}  unreachable: {guard}", p.host));
            }
            (Err(why), _) => details.push(format!("skipped  {}  no HTTPS endpoint: {why}", p.host)),
        }
    }
    let summary = format!(
        "{} endpoints: {expiring} expiring within {CERT_WARN_DAYS} days or expired, {untrusted} untrusted or wrong name, {unreachable} not probed",
        probes.len()
    );
    Check::new(TLS, status, summary).details(details)
}

/// One world-open inbound rule of an instance: (group id, protocol, from port, to port).
type WorldOpen = (String, String, Option<i32>, Option<i32>);

/// What the security groups open to the whole internet, per instance: the facts the
/// listening-ports check weighs each socket against.
#[derive(Debug, Clone, Default)]
pub struct Exposure {
    /// instance id -> its world-open rules (group id, protocol, from, to).
    open: BTreeMap<String, Vec<WorldOpen>>,
    /// The groups could be read: without them exposure is unknown, never assumed safe.
    known: bool,
}

impl Exposure {
    pub fn new(instances: &[crate::aws::ec2::Instance], groups: &[SecurityGroup], known: bool) -> Exposure {
        let mut open = BTreeMap::new();
        for i in instances {
            let rules = groups
                .iter()
                .filter(|g| i.security_group_ids.contains(&g.id))
                .flat_map(|g| {
                    g.ingress
                        .iter()
                        .filter(|r| r.cidrs_v4.iter().any(|c| c == "0.0.0.0/0") || r.cidrs_v6.iter().any(|c| c == "::/0"))
                        .map(|r| (g.id.clone(), r.protocol.clone(), r.from_port, r.to_port))
                })
                .collect();
            open.insert(i.id.clone(), rules);
        }
        Exposure { open, known }
    }

    /// The group that opens this TCP port of this instance to the world, if any.
    fn opened_by(&self, instance: &str, port: u32) -> Option<&str> {
        let port = i32::try_from(port).ok()?;
        self.open.get(instance)?.iter().find(|(_, proto, from, to)| covers(*from, *to, proto, port)).map(|(g, ..)| g.as_str())
    }
}

fn is_loopback(address: &str) -> bool {
    address.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Listening sockets per host (what `nmap` was run for), weighed against the instance's
/// security groups: a TCP port the host listens on beyond loopback that a group opens to
/// the whole internet fails (SSH on 22 among them); a database port on every interface
/// warns; a host whose groups could not be read warns that exposure is unknown; a host
/// whose agent did not answer is named. Pure.
pub fn ports_check(live: &[HostAnswer<Live>], exposure: &Exposure) -> Check {
    if live.is_empty() {
        return Check::skipped(PORTS, "no hosts to ask");
    }
    let mut status = Status::Ok;
    let mut details = Vec::new();
    for a in live {
        match &a.answer {
            Ok(l) => {
                let mut ports: Vec<String> = l
                    .listening
                    .iter()
                    .map(|s| {
                        let who = if s.process.is_empty() { String::new() } else { format!(" ({})", s.process) };
                        format!("{}/{}:{}{who}", s.protocol, s.address, s.port)
                    })
                    .collect();
                ports.sort();
                ports.dedup();
                let exposed_db = l.listening.iter().any(|s| s.protocol.starts_with("tcp") && matches!(s.port, 3306 | 5432) && matches!(s.address.as_str(), "0.0.0.0" | "::" | "*"));
                if exposed_db {
                    status = status.max(Status::Warn);
                }
                details.push(format!("{}: {}{}", a.host, if ports.is_empty() { "none".into() } else { ports.join(", ") }, if exposed_db { "  (database port on every interface)" } else { "" }));
                match a.instance_id.as_deref() {
                    Some(id) if exposure.known => {
                        let mut exposed: Vec<String> = l
                            .listening
                            .iter()
                            .filter(|s| s.protocol.starts_with("tcp") && !is_loopback(&s.address))
                            .filter_map(|s| {
                                let g = exposure.opened_by(id, s.port)?;
                                let what = if s.port == 22 { " (SSH)".to_string() } else if s.process.is_empty() { String::new() } else { format!(" ({})", s.process) };
                                Some(format!("  FAIL  {}:{}{what} listens and {g} opens it to the internet", s.address, s.port))
                            })
                            .collect();
                        exposed.sort();
                        exposed.dedup();
                        if !exposed.is_empty() {
                            status = Status::Fail;
                        }
                        details.extend(exposed);
                    }
                    Some(_) => {
                        status = status.max(Status::Warn);
                        details.push("  WARN  security groups could not be read: exposure unknown".into());
                    }
                    None => details.push("  (static host: no security groups to weigh the ports against)".into()),
                }
            }
            Err(why) => {
                status = status.max(Status::Warn);
                details.push(format!("{}: agent unreachable: {why}", a.host));
            }
        }
    }
    let answered = live.iter().filter(|a| a.answer.is_ok()).count();
    Check::new(PORTS, status, format!("{answered} of {} agents answered", live.len())).details(details)
}

/// The trail exists, is logging, covers every region, validates its log files and has
/// delivered within `max_age`: each shortfall is named, any one fails. Pure.
pub fn trail_check(name: &str, trail: Option<&Trail>, now: DateTime<Utc>, max_age: std::time::Duration) -> Check {
    let Some(t) = trail else {
        return Check::fail(C_TRAIL, format!("trail {name} does not exist: API activity is not recorded"));
    };
    let mut problems = Vec::new();
    if !t.is_logging {
        problems.push("is not logging (stopped)".to_string());
    }
    if !t.multi_region {
        problems.push("covers one region only (not multi-region)".to_string());
    }
    if !t.log_file_validation {
        problems.push("does not validate its log files (log-file validation off)".to_string());
    }
    let max_age_chrono = Duration::from_std(max_age).unwrap_or(Duration::MAX);
    match t.latest_delivery {
        None => problems.push("has never delivered log files".to_string()),
        Some(at) if now - at > max_age_chrono => problems.push(format!(
            "last delivered log files {} ago (limit {})",
            humantime::format_duration(std::time::Duration::from_secs(u64::try_from((now - at).num_seconds()).unwrap_or(0))),
            humantime::format_duration(max_age)
        )),
        Some(_) => {}
    }
    if let Some(e) = &t.latest_delivery_error {
        problems.push(format!("reports a delivery error: {e}"));
    }
    let data = json!(t);
    if problems.is_empty() {
        let at = t.latest_delivery.map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default();
        Check::ok(C_TRAIL, format!("{} is logging, multi-region, validated; last delivery {at}", t.name)).data(data)
    } else {
        Check::fail(C_TRAIL, format!("trail {} {}", t.name, problems.join("; "))).details(problems).data(data)
    }
}

/// Storage encrypted, not public, retention at least 7 days: one check each. Pure.
pub fn rds_compliance(dbs: &[DbInstance]) -> Vec<Check> {
    let rule = |name: &str, bad: Vec<&DbInstance>, what: &str| {
        if bad.is_empty() {
            Check::ok(name, format!("all {} databases", dbs.len()))
        } else {
            Check::fail(name, format!("{} of {} databases {what}", bad.len(), dbs.len())).details(bad.iter().map(|d| d.id.clone()).collect())
        }
    };
    vec![
        rule(C_RDS_ENCRYPTED, dbs.iter().filter(|d| !d.storage_encrypted).collect(), "store data unencrypted"),
        rule(C_RDS_PRIVATE, dbs.iter().filter(|d| d.publicly_accessible).collect(), "are publicly accessible"),
        rule(C_RDS_RETENTION, dbs.iter().filter(|d| d.backup_retention_days < MIN_RETENTION_DAYS).collect(), "keep backups under 7 days"),
    ]
}

/// Every EBS volume encrypted. Pure.
pub fn ebs_compliance(volumes: &[Volume]) -> Check {
    let bad: Vec<String> = volumes
        .iter()
        .filter(|v| !v.encrypted)
        .map(|v| format!("{}  {} GiB  attached to {}", v.id, v.size_gib.unwrap_or(0), if v.attached_to.is_empty() { "-".into() } else { v.attached_to.join(", ") }))
        .collect();
    if bad.is_empty() {
        Check::ok(C_EBS_ENCRYPTED, format!("all {} volumes encrypted", volumes.len()))
    } else {
        Check::fail(C_EBS_ENCRYPTED, format!("{} of {} volumes unencrypted", bad.len(), volumes.len())).details(bad)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::aws::ec2::IngressRule;
    use chrono::TimeZone;

    fn group(protocol: &str, from: Option<i32>, to: Option<i32>, cidr: &str) -> SecurityGroup {
        let (v4, v6) = if cidr.contains(':') { (vec![], vec![cidr.to_string()]) } else { (vec![cidr.to_string()], vec![]) };
        SecurityGroup {
            id: "sg-1".into(),
            name: "web".into(),
            description: String::new(),
            vpc_id: None,
            ingress: vec![IngressRule { protocol: protocol.into(), from_port: from, to_port: to, cidrs_v4: v4, cidrs_v6: v6, source_groups: vec![] }],
        }
    }

    #[test]
    fn ssh_or_mysql_open_to_the_world_fails_and_web_ports_are_fine() {
        assert_eq!(security_groups_check(&[group("tcp", Some(22), Some(22), "0.0.0.0/0")]).status, Status::Fail);
        assert_eq!(security_groups_check(&[group("tcp", Some(3000), Some(4000), "::/0")]).status, Status::Fail);
        assert_eq!(security_groups_check(&[group("-1", None, None, "0.0.0.0/0")]).status, Status::Fail);
        assert_eq!(security_groups_check(&[group("tcp", Some(443), Some(443), "0.0.0.0/0")]).status, Status::Ok);
        assert_eq!(security_groups_check(&[group("tcp", Some(8080), Some(8080), "0.0.0.0/0")]).status, Status::Warn);
        assert_eq!(security_groups_check(&[group("tcp", Some(22), Some(22), "10.0.0.0/8")]).status, Status::Ok);
        assert_eq!(security_groups_check(&[group("udp", Some(22), Some(22), "0.0.0.0/0")]).status, Status::Warn);
    }

    #[test]
    fn cloudtrail_denials_are_recognised_from_the_json() {
        let denied = r#"{"eventTime":"2026-11-29T10:00:00Z","eventSource":"ec2.amazonaws.com","eventName":"RunInstances","errorCode":"Client.UnauthorizedOperation","userIdentity":{"arn":"arn:aws:iam::1:user/mallory"},"sourceIPAddress":"198.51.100.7"}"#;
        let TrailRecord::Denied(d) = parse_denial(denied) else { panic!("not recognised") };
        assert_eq!((d.event.as_str(), d.user.as_str()), ("ec2:RunInstances", "arn:aws:iam::1:user/mallory"));
        assert!(matches!(parse_denial(r#"{"errorCode":"AccessDeniedException","userIdentity":{"userName":"bob"}}"#), TrailRecord::Denied(_)));
        assert_eq!(parse_denial(r#"{"errorCode":"NoSuchBucket"}"#), TrailRecord::Other);
        assert_eq!(parse_denial(r#"{"eventName":"DescribeInstances"}"#), TrailRecord::Other);
        assert_eq!(parse_denial("not json"), TrailRecord::Malformed);
    }

    #[test]
    fn certificates_warn_under_30_days_and_fail_under_7() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap();
        assert_eq!(cert_status(now + Duration::days(90), now), Status::Ok);
        assert_eq!(cert_status(now + Duration::days(20), now), Status::Warn);
        assert_eq!(cert_status(now + Duration::days(3), now), Status::Fail);
        assert_eq!(cert_status(now - Duration::days(1), now), Status::Fail);
        let unreachable = TlsProbe { host: "web".into(), endpoint: Ok("127.0.0.1:1".into()), cert: Some(Err("connection refused".into())) };
        let c = tls_check(&[unreachable], now);
        assert_eq!(c.status, Status::Fail, "a certificate that could not be read was not checked");
        assert!(c.details[0].contains("unreachable: connection refused"));
        let refused = TargetError::NotDialled { address: "10.0.1.5:443".into(), guard: crate::fleet::ec2::EmulatorAddress };
        let invented = TlsProbe { host: "db".into(), endpoint: Err(refused), cert: None };
        let c = tls_check(&[invented], now);
        assert_eq!(c.status, Status::Fail, "an endpoint the guard refused was not checked");
        assert_eq!(c.details[0], format!("FAIL  10.0.1.5:443  db  unreachable: {}", crate::fleet::ec2::EmulatorAddress));
        let cert = |trust_error: Option<&str>| CertInfo {
            subject: "CN=web".into(),
            issuer: "CN=ca".into(),
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(90),
            trust_error: trust_error.map(str::to_string),
        };
        let probe = |c: CertInfo| TlsProbe { host: "web".into(), endpoint: Ok("127.0.0.1:443".into()), cert: Some(Ok(c)) };
        assert_eq!(tls_check(&[probe(cert(None))], now).status, Status::Ok);
        let wrong = tls_check(&[probe(cert(Some("wrong name: the certificate is not valid for techhealth.com")))], now);
        assert_eq!(wrong.status, Status::Fail);
        assert!(wrong.details[0].contains("wrong name"), "{:?}", wrong.details);
    }

    #[test]
    fn the_credential_report_fails_passwords_without_mfa_and_root_use_and_warns_on_stale_credentials() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap();
        let row = |user: &str, pw: bool, pw_used: Option<i64>, mfa: bool, keys: Vec<(Option<i64>, Option<i64>)>| CredentialRow {
            user: user.into(),
            arn: String::new(),
            password_enabled: pw,
            password_last_used: pw_used.map(|d| now - Duration::days(d)),
            mfa_active: mfa,
            active_keys: keys.into_iter().map(|(r, u)| (r.map(|d| now - Duration::days(d)), u.map(|d| now - Duration::days(d)))).collect(),
        };
        assert_eq!(users_check(&[row("ci", false, None, false, vec![])], now).status, Status::Ok, "no password, no keys: nothing to weigh");
        assert_eq!(users_check(&[row("alice", true, Some(3), true, vec![(Some(10), Some(1))])], now).status, Status::Ok);
        let c = users_check(&[row("bob", true, Some(3), false, vec![])], now);
        assert_eq!(c.status, Status::Fail);
        assert!(c.details[0].contains("console password without MFA"), "{:?}", c.details);
        let c = users_check(&[row("carol", true, None, true, vec![(Some(200), Some(100))])], now);
        assert_eq!(c.status, Status::Warn);
        assert!(c.details[0].contains("password last used never") && c.details[0].contains("not rotated since") && c.details[0].contains("access key 1 last used"), "{:?}", c.details);
        let c = users_check(&[row("<root_account>", false, Some(1), true, vec![])], now);
        assert_eq!(c.status, Status::Fail);
        assert!(c.details[0].contains("root signed in"), "{:?}", c.details);
        assert_eq!(users_check(&[row("<root_account>", false, Some(400), true, vec![])], now).status, Status::Ok);
    }
}
