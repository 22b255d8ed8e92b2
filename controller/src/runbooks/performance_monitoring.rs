//! `controller performance-monitoring [--hours N]`: per running instance the CPU
//! average and maximum, memory and disk use from the CloudWatch agent's namespace and
//! the network-in total; per database CPU and connections; and, where agents answer,
//! the live figures beside them. A metric without datapoints is "no data", never a
//! division by zero.

use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use serde::Serialize;
use serde_json::json;

use super::agents::{self, HostAnswer, Live};
use super::checks::instance_label;
use super::report::{Check, Report, Status};
use super::Context;
use crate::aws::cloudwatch::{self, Datapoint, Metric, SeriesQuery};
use crate::aws::ec2::Instance;
use crate::aws::rds::{self, DbInstance};
use crate::aws::AwsError;
use crate::output::human_bytes;

/// The longest window accepted: 1440 hourly datapoints is GetMetricStatistics' limit.
pub const MAX_HOURS: u32 = 1440;

pub const AGENTS: &str = "live figures (agents)";

/// CPU average at or over this fails; a maximum at or over it warns.
const CPU_LIMIT: f64 = 80.0;
/// Memory or disk use at or over these warns / fails.
const USE_WARN: f64 = 80.0;
const USE_FAIL: f64 = 90.0;

/// What a series of datapoints amounts to; every field None when there was no data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub average: Option<f64>,
    pub maximum: Option<f64>,
    pub sum: Option<f64>,
    pub datapoints: usize,
}

/// Sample-weighted average, maximum of maxima, sum of sums. Non-finite values are
/// ignored. Pure.
pub fn summarize(points: &[Datapoint]) -> Summary {
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
    let (mut wsum, mut weight, mut plain, mut plain_n) = (0.0, 0.0, 0.0, 0usize);
    let (mut max, mut sum): (Option<f64>, Option<f64>) = (None, None);
    for p in points {
        if let Some(avg) = finite(p.average) {
            if let Some(n) = finite(p.sample_count).filter(|n| *n > 0.0) {
                wsum += avg * n;
                weight += n;
            }
            plain += avg;
            plain_n += 1;
        }
        if let Some(m) = finite(p.maximum) {
            max = Some(max.map_or(m, |x: f64| x.max(m)));
        }
        if let Some(s) = finite(p.sum) {
            sum = Some(sum.unwrap_or(0.0) + s);
        }
    }
    let average = if weight > 0.0 {
        Some(wsum / weight)
    } else if plain_n > 0 {
        Some(plain / plain_n as f64)
    } else {
        None
    };
    Summary { average, maximum: max, sum, datapoints: points.len() }
}

/// Seconds per datapoint: 5 minutes up to a day (basic monitoring's resolution), an
/// hour beyond, as the runbook did. Pure.
pub fn period_for_hours(hours: u32) -> i32 {
    if hours <= 24 {
        300
    } else {
        3600
    }
}

/// "12.3%" or "no data".
pub fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}%")).unwrap_or_else(|| "no data".into())
}

/// One instance's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InstanceFigures {
    pub cpu: Summary,
    pub memory: Summary,
    /// The CloudWatch agent has a memory metric for the instance (with or without data).
    pub memory_listed: bool,
    /// Per CloudWatch-agent disk metric: its path or device, and its summary.
    pub disks: Vec<(String, Summary)>,
    pub network_in: Summary,
}

/// One database's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DbFigures {
    pub cpu: Summary,
    pub connections: Summary,
}

fn level(v: Option<f64>, warn: f64, fail: f64) -> Status {
    match v {
        Some(x) if x >= fail => Status::Fail,
        Some(x) if x >= warn => Status::Warn,
        _ => Status::Ok,
    }
}

/// An instance's check: CPU average ≥ 80% fails, maximum ≥ 80% warns, no CPU data
/// warns; memory or disk ≥ 80% warns, ≥ 90% fails. Pure.
pub fn instance_check(name: &str, f: &InstanceFigures, live: Option<&Result<Live, String>>) -> Check {
    let cpu_status = match (f.cpu.average, f.cpu.maximum) {
        (None, _) => Status::Warn,
        (Some(a), _) if a >= CPU_LIMIT => Status::Fail,
        (_, Some(m)) if m >= CPU_LIMIT => Status::Warn,
        _ => Status::Ok,
    };
    let disk_max = f.disks.iter().filter_map(|(_, s)| s.maximum.or(s.average)).fold(None, |acc: Option<f64>, x| Some(acc.map_or(x, |a| a.max(x))));
    // A metric that exists but has no datapoint in the window was not measured: say so.
    let memory_silent = f.memory_listed && f.memory.datapoints == 0;
    let silent_disks: Vec<&str> = f.disks.iter().filter(|(_, s)| s.datapoints == 0).map(|(p, _)| p.as_str()).collect();
    let silence = if memory_silent || !silent_disks.is_empty() { Status::Warn } else { Status::Ok };
    let status = cpu_status.max(silence).max(level(f.memory.average, USE_WARN, USE_FAIL)).max(level(disk_max, USE_WARN, USE_FAIL));
    let net = f.network_in.sum.map(|b| human_bytes(b.max(0.0) as u64)).unwrap_or_else(|| "no data".into());
    let summary = format!(
        "cpu avg {} max {}; memory avg {}; disk max {}; network in {net}",
        pct(f.cpu.average),
        pct(f.cpu.maximum),
        pct(f.memory.average),
        pct(disk_max)
    );
    let mut details = vec![format!("cloudwatch: cpu avg {} max {} ({} datapoints)", pct(f.cpu.average), pct(f.cpu.maximum), f.cpu.datapoints)];
    details.push(format!(
        "cloudwatch: memory avg {} max {}{}",
        pct(f.memory.average),
        pct(f.memory.maximum),
        if memory_silent {
            " (WARN: mem_used_percent exists but has no data in the window: is the CloudWatch agent running?)"
        } else if f.memory.datapoints == 0 {
            " (the CloudWatch agent reports no mem_used_percent)"
        } else {
            ""
        }
    ));
    if f.cpu.datapoints == 0 {
        details.push("cloudwatch: WARN: CPUUtilization has no data in the window".into());
    }
    for p in &silent_disks {
        details.push(format!("cloudwatch: WARN: disk_used_percent for {p} exists but has no data in the window"));
    }
    if f.disks.is_empty() {
        details.push("cloudwatch: disk no data (the CloudWatch agent reports no disk_used_percent)".into());
    }
    for (path, s) in &f.disks {
        details.push(format!("cloudwatch: disk {path} avg {} max {}", pct(s.average), pct(s.maximum)));
    }
    details.push(format!("cloudwatch: network in {net}"));
    match live {
        Some(Ok(l)) => {
            let fs: Vec<String> = l.filesystems.iter().map(|(m, p)| format!("{m} {p:.1}%")).collect();
            details.push(format!("live (agent): cpu {:.1}%, memory {:.1}%, disks {}", l.cpu_percent, l.memory_used_percent, fs.join(", ")));
        }
        Some(Err(why)) => details.push(format!("live (agent): unreachable: {why}")),
        None => {}
    }
    Check::new(format!("instance {name}"), status, summary).details(details).data(json!({"cloudwatch": f, "live": live.and_then(|l| l.as_ref().ok())}))
}

/// A database's check: CPU as for instances; connections are reported. Pure.
pub fn db_check(id: &str, f: &DbFigures) -> Check {
    let status = match (f.cpu.average, f.cpu.maximum) {
        (Some(a), _) if a >= CPU_LIMIT => Status::Fail,
        (_, Some(m)) if m >= CPU_LIMIT => Status::Warn,
        (None, _) => Status::Warn,
        _ => Status::Ok,
    };
    let conns = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "no data".into());
    let summary = format!(
        "cpu avg {} max {}; connections avg {} max {}",
        pct(f.cpu.average),
        pct(f.cpu.maximum),
        conns(f.connections.average),
        conns(f.connections.maximum)
    );
    Check::new(format!("database {id}"), status, summary).data(json!(f))
}

/// Runs performance monitoring over the last `hours`.
pub async fn run(ctx: &Context, hours: u32) -> Report {
    let started = Utc::now();
    let mut report = Report::new("performance-monitoring", "TechHealth Performance Monitoring", started);
    let hours = hours.clamp(1, MAX_HOURS);
    let end = ctx.now;
    let start = end - Duration::hours(i64::from(hours));
    let period = period_for_hours(hours);
    let (instances, dbs) = tokio::join!(
        ctx.bounded("EC2", "DescribeInstances", crate::aws::ec2::describe_instances(&ctx.aws.ec2, &ctx.fleet.tag_filters, &["running"])),
        ctx.bounded("RDS", "DescribeDBInstances", rds::describe_db_instances(&ctx.aws.rds))
    );
    let instances = match instances {
        Ok(i) if ctx.fleet.source == crate::config::FleetSource::Ec2 => i,
        Ok(_) => Vec::new(),
        Err(e) => {
            report.checks.push(Check::aws_error("ec2 instances", &e));
            Vec::new()
        }
    };
    let db_list: Vec<DbInstance> = match &dbs {
        Ok(d) => d.clone(),
        Err(e) => {
            report.checks.push(Check::aws_error("rds instances", e));
            Vec::new()
        }
    };
    let hosts = ctx.targets().agent_hosts(&instances);
    let live_fut = async {
        match &ctx.dialer {
            Some(d) => agents::live(d, &hosts, ctx.deadline).await,
            None => Vec::new(),
        }
    };
    let figures_fut = fetch_figures(ctx, &instances, &db_list, start, end, period);
    let (figures, live) = tokio::join!(figures_fut, live_fut);

    let live_by_id: BTreeMap<&str, &HostAnswer<Live>> = live.iter().filter_map(|a| Some((a.instance_id.as_deref()?, a))).collect();
    if instances.is_empty() && report.checks.is_empty() && ctx.fleet.source == crate::config::FleetSource::Ec2 {
        report.checks.push(Check::fail("ec2 instances", "no running tagged instances"));
    }
    match figures {
        Ok((inst_figs, db_figs)) => {
            for (i, f) in instances.iter().zip(inst_figs) {
                let live = live_by_id.get(i.id.as_str()).map(|a| &a.answer);
                report.checks.push(instance_check(&instance_label(i), &f, live));
            }
            for (d, f) in db_list.iter().zip(db_figs) {
                report.checks.push(db_check(&d.id, &f));
            }
        }
        Err(e) => {
            for i in &instances {
                report.checks.push(Check::aws_error(format!("instance {}", instance_label(i)), &e));
            }
            for d in &db_list {
                report.checks.push(Check::aws_error(format!("database {}", d.id), &e));
            }
        }
    }
    // Hosts without an EC2 instance (a static inventory) have no CloudWatch figures: their
    // live figures stand on their own.
    for a in live.iter().filter(|a| a.instance_id.is_none()) {
        report.checks.push(live_host_check(a));
    }
    report.checks.push(match ctx.agents_unavailable(AGENTS) {
        Some(skip) => skip,
        None => super::checks::with_unreachable_policy(agents_check(&live), &live, ctx.runbooks.unreachable),
    });
    report.action_items = report
        .checks
        .iter()
        .filter(|c| c.status >= Status::Warn)
        .map(|c| format!("Look into {}: {}", c.name, c.summary))
        .collect();
    report.finished_at = Utc::now();
    report
}

/// Which agents answered (the live figures sit in each instance's details). Pure.
pub fn agents_check(live: &[HostAnswer<Live>]) -> Check {
    if live.is_empty() {
        return Check::skipped(AGENTS, "no hosts to ask");
    }
    let silent: Vec<String> = live.iter().filter_map(|a| a.answer.as_ref().err().map(|e| format!("{}: unreachable: {e}", a.host))).collect();
    let summary = format!("{} of {} agents answered", live.len() - silent.len(), live.len());
    let status = if silent.is_empty() { Status::Ok } else { Status::Warn };
    Check::new(AGENTS, status, summary).details(silent)
}

/// The summary of one series' values (GetMetricData gives one value per period and
/// statistic): the mean of the period averages, the largest maximum, the total. Pure.
pub fn summary_of(avg: &[f64], max: &[f64], sum: &[f64]) -> Summary {
    let finite = |v: &[f64]| v.iter().copied().filter(|x| x.is_finite()).collect::<Vec<f64>>();
    let (avg, max, sum) = (finite(avg), finite(max), finite(sum));
    Summary {
        average: (!avg.is_empty()).then(|| avg.iter().sum::<f64>() / avg.len() as f64),
        maximum: max.iter().copied().fold(None, |acc: Option<f64>, x| Some(acc.map_or(x, |a| a.max(x)))),
        sum: (!sum.is_empty()).then(|| sum.iter().sum()),
        datapoints: avg.len().max(max.len()).max(sum.len()),
    }
}

/// The CloudWatch-agent metrics of `name` per instance, found with ListMetrics over the
/// whole namespace so that whatever extra dimensions the agent appends (image, type,
/// device, path) are kept: one call per metric name, not one per instance.
async fn agent_metrics(ctx: &Context, name: &'static str) -> Result<BTreeMap<String, Vec<Metric>>, AwsError> {
    let all = ctx.bounded("CloudWatch", "ListMetrics", cloudwatch::list_metrics(&ctx.aws.cloudwatch, "CWAgent", name, &BTreeMap::new())).await?;
    let mut by_instance: BTreeMap<String, Vec<Metric>> = BTreeMap::new();
    for m in all {
        if let Some(id) = m.dimensions.get("InstanceId").cloned() {
            by_instance.entry(id).or_default().push(m);
        }
    }
    Ok(by_instance)
}

/// Every instance's and database's figures from one batch of GetMetricData calls.
async fn fetch_figures(
    ctx: &Context,
    instances: &[Instance],
    dbs: &[DbInstance],
    start: chrono::DateTime<Utc>,
    end: chrono::DateTime<Utc>,
    period: i32,
) -> Result<(Vec<InstanceFigures>, Vec<DbFigures>), AwsError> {
    if instances.is_empty() && dbs.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let (memory, disks) = if instances.is_empty() {
        (BTreeMap::new(), BTreeMap::new())
    } else {
        let (m, d) = tokio::join!(agent_metrics(ctx, "mem_used_percent"), agent_metrics(ctx, "disk_used_percent"));
        (m?, d?)
    };
    let mut series: Vec<SeriesQuery> = Vec::new();
    let mut ask = |metric: Metric, stats: &[&'static str]| -> Vec<usize> {
        stats
            .iter()
            .map(|stat| {
                series.push(SeriesQuery { metric: metric.clone(), stat });
                series.len() - 1
            })
            .collect()
    };
    let metric = |ns: &str, name: &str, dims: BTreeMap<String, String>| Metric { namespace: ns.into(), name: name.into(), dimensions: dims };
    // Per instance: (cpu [avg, max], memory [(avg, max)], disks [(label, avg, max)], network [sum]).
    type Plan = (Vec<usize>, Vec<Vec<usize>>, Vec<(String, Vec<usize>)>, Vec<usize>);
    let mut plans: Vec<Plan> = Vec::new();
    for i in instances {
        let id = BTreeMap::from([("InstanceId".to_string(), i.id.clone())]);
        let cpu = ask(metric("AWS/EC2", "CPUUtilization", id.clone()), &["Average", "Maximum"]);
        let mem = memory.get(&i.id).into_iter().flatten().map(|m| ask(m.clone(), &["Average", "Maximum"])).collect();
        let dsk = disks
            .get(&i.id)
            .into_iter()
            .flatten()
            .map(|m| {
                let label = m.dimensions.get("path").or_else(|| m.dimensions.get("device")).cloned().unwrap_or_else(|| "disk".into());
                (label, ask(m.clone(), &["Average", "Maximum"]))
            })
            .collect();
        let net = ask(metric("AWS/EC2", "NetworkIn", id), &["Sum"]);
        plans.push((cpu, mem, dsk, net));
    }
    let mut db_plans = Vec::new();
    for d in dbs {
        let id = BTreeMap::from([("DBInstanceIdentifier".to_string(), d.id.clone())]);
        db_plans.push((
            ask(metric("AWS/RDS", "CPUUtilization", id.clone()), &["Average", "Maximum"]),
            ask(metric("AWS/RDS", "DatabaseConnections", id), &["Average", "Maximum"]),
        ));
    }
    let (values, _calls) = ctx.bounded("CloudWatch", "GetMetricData", cloudwatch::metric_data(&ctx.aws.cloudwatch, &series, start, end, period)).await?;
    let none: Vec<f64> = Vec::new();
    let v = |i: usize| values.get(i).unwrap_or(&none).as_slice();
    let pair = |ix: &[usize]| summary_of(v(ix[0]), v(ix[1]), &[]);
    let inst = plans
        .iter()
        .map(|(cpu, mem, dsk, net)| {
            // Several memory series (extra dimensions): the busiest one speaks for the host.
            let memory = mem.iter().map(|ix| pair(ix)).max_by(|a, b| a.datapoints.cmp(&b.datapoints)).unwrap_or_default();
            InstanceFigures {
                cpu: pair(cpu),
                memory,
                memory_listed: !mem.is_empty(),
                disks: dsk.iter().map(|(label, ix)| (label.clone(), pair(ix))).collect(),
                network_in: summary_of(&[], &[], v(net[0])),
            }
        })
        .collect();
    let dbf = db_plans.iter().map(|(cpu, conns)| DbFigures { cpu: pair(cpu), connections: pair(conns) }).collect();
    Ok((inst, dbf))
}

/// A host with no EC2 instance behind it: its agent's live figures, or why there are none.
/// Pure.
pub fn live_host_check(a: &HostAnswer<Live>) -> Check {
    let name = format!("host {}", a.host);
    match &a.answer {
        Ok(l) => {
            let fs: Vec<String> = l.filesystems.iter().map(|(m, p)| format!("{m} {p:.1}%")).collect();
            let disk_max = l.filesystems.iter().map(|(_, p)| *p).fold(None, |acc: Option<f64>, x| Some(acc.map_or(x, |a| a.max(x))));
            let status = level(Some(l.memory_used_percent), USE_WARN, USE_FAIL).max(level(disk_max, USE_WARN, USE_FAIL));
            Check::new(name, status, format!("live (agent): cpu {:.1}%, memory {:.1}%, disk max {}", l.cpu_percent, l.memory_used_percent, pct(disk_max)))
                .details(vec![format!("live (agent): disks {}", fs.join(", ")), "no CloudWatch figures: not an EC2 instance of the fleet".into()])
                .data(json!({ "live": l }))
        }
        Err(why) => Check::fail(name, format!("agent unreachable: {why}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dp(avg: f64, max: f64, n: f64) -> Datapoint {
        Datapoint { timestamp: None, average: Some(avg), maximum: Some(max), sum: Some(avg * n), sample_count: Some(n) }
    }

    #[test]
    fn no_datapoints_is_no_data_not_nan() {
        let s = summarize(&[]);
        assert_eq!(s, Summary::default());
        assert_eq!(pct(s.average), "no data");
        let nan = Datapoint { timestamp: None, average: Some(f64::NAN), maximum: None, sum: None, sample_count: Some(0.0) };
        assert_eq!(summarize(&[nan]).average, None);
    }

    #[test]
    fn averages_are_weighted_by_samples_and_maxima_are_the_highest() {
        let s = summarize(&[dp(10.0, 20.0, 1.0), dp(40.0, 95.0, 3.0)]);
        assert!((s.average.unwrap() - 32.5).abs() < 1e-9, "{s:?}");
        assert_eq!(s.maximum, Some(95.0));
        assert_eq!(s.sum, Some(130.0));
    }

    #[test]
    fn cpu_memory_and_disk_thresholds() {
        let f = |cpu_avg: f64, cpu_max: f64, mem: f64| InstanceFigures {
            cpu: summarize(&[dp(cpu_avg, cpu_max, 1.0)]),
            memory: summarize(&[dp(mem, mem, 1.0)]),
            memory_listed: true,
            disks: vec![],
            network_in: Summary::default(),
        };
        assert_eq!(instance_check("i", &f(20.0, 50.0, 40.0), None).status, Status::Ok);
        assert_eq!(instance_check("i", &f(20.0, 85.0, 40.0), None).status, Status::Warn);
        assert_eq!(instance_check("i", &f(85.0, 99.0, 40.0), None).status, Status::Fail);
        assert_eq!(instance_check("i", &f(20.0, 50.0, 91.0), None).status, Status::Fail);
        let none = InstanceFigures::default();
        let c = instance_check("i", &none, Some(&Err("connection refused".into())));
        assert_eq!(c.status, Status::Warn);
        assert!(c.summary.contains("cpu avg no data"), "{}", c.summary);
        assert!(c.details.iter().any(|d| d.contains("unreachable: connection refused")));
        let listed_but_silent = InstanceFigures { cpu: f(20.0, 50.0, 40.0).cpu, memory_listed: true, ..InstanceFigures::default() };
        let c = instance_check("i", &listed_but_silent, None);
        assert_eq!(c.status, Status::Warn, "a memory metric with no data is not ok");
        assert!(c.details.iter().any(|d| d.contains("mem_used_percent exists but has no data")), "{:?}", c.details);
        let s = summary_of(&[20.0, 40.0], &[30.0, 55.0], &[]);
        assert_eq!((s.average, s.maximum, s.sum, s.datapoints), (Some(30.0), Some(55.0), None, 2));
    }

    #[test]
    fn periods_follow_the_window() {
        assert_eq!(period_for_hours(1), 300);
        assert_eq!(period_for_hours(24), 300);
        assert_eq!(period_for_hours(168), 3600);
    }
}
