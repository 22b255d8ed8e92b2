//! `controller backup verify`: automated backups are on and kept long enough, the
//! newest automated database snapshot is recent and available, the last automated EBS
//! snapshots completed, and how snapshot sizes developed. Read-only.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::checks::newest_snapshot_check;
use super::report::{Check, Report, Status};
use super::Context;
use crate::aws::ec2::{self, EbsSnapshot};
use crate::aws::rds::{self, DbInstance, DbSnapshot};

/// Retention under this many days warns (and is a compliance failure in the review).
pub const MIN_RETENTION_DAYS: i32 = 7;
/// EBS snapshots shown.
const LAST_EBS: usize = 5;

pub const RETENTION: &str = "rds backup retention";
pub const NEWEST: &str = "rds automated snapshot";
pub const EBS: &str = "ebs snapshots";
pub const SIZES: &str = "snapshot sizes";
pub const EBS_AGE: &str = "ebs snapshot age per volume";

/// Runs the backup verification.
pub async fn run(ctx: &Context) -> Report {
    let started = Utc::now();
    let rb = &ctx.runbooks;
    let (dbs, snaps, ebs, instances) = tokio::join!(
        ctx.bounded("RDS", "DescribeDBInstances", rds::describe_db_instances(&ctx.aws.rds)),
        ctx.bounded("RDS", "DescribeDBSnapshots", rds::describe_db_snapshots(&ctx.aws.rds, &rb.db_instance_id, "automated")),
        ctx.bounded("EC2", "DescribeSnapshots", ec2::describe_snapshots_tagged(&ctx.aws.ec2, &rb.ebs_snapshot_tags)),
        ctx.tagged_instances(),
    );
    let mut report = Report::new("backup-verify", "TechHealth Backup Verification", started);
    report.checks.push(match &dbs {
        Ok(d) => retention_check(d),
        Err(e) => Check::aws_error(RETENTION, e),
    });
    report.checks.push(match &snaps {
        Ok(s) => newest_snapshot_check(NEWEST, &rb.db_instance_id, s, ctx.now),
        Err(e) => Check::aws_error(NEWEST, e),
    });
    report.checks.push(match &ebs {
        Ok(s) => ebs_check(s),
        Err(e) => Check::aws_error(EBS, e),
    });
    report.checks.push(match (&instances, &ebs) {
        (Ok(i), Ok(s)) => ebs_age_check(i, s, ctx.now, rb.ebs_snapshot_max_age),
        (Err(e), _) | (_, Err(e)) => Check::aws_error(EBS_AGE, e),
    });
    report.checks.push(match &snaps {
        Ok(s) => sizes_check(s),
        Err(e) => Check::aws_error(SIZES, e),
    });
    report.action_items = report
        .checks
        .iter()
        .filter(|c| c.status >= Status::Warn)
        .map(|c| format!("Fix {}: {}", c.name, c.summary))
        .collect();
    report.finished_at = Utc::now();
    report
}

/// Backups off (retention 0) fails; under `MIN_RETENTION_DAYS` warns; no database fails. Pure.
pub fn retention_check(dbs: &[DbInstance]) -> Check {
    if dbs.is_empty() {
        return Check::fail(RETENTION, "no RDS instances");
    }
    let mut status = Status::Ok;
    let mut details = Vec::new();
    for d in dbs {
        let s = if d.backup_retention_days == 0 {
            Status::Fail
        } else if d.backup_retention_days < MIN_RETENTION_DAYS {
            Status::Warn
        } else {
            Status::Ok
        };
        status = status.max(s);
        details.push(format!(
            "{}  retention {} days  window {}{}",
            d.id,
            d.backup_retention_days,
            d.backup_window.as_deref().unwrap_or("-"),
            match s {
                Status::Fail => "  (automated backups are off)",
                Status::Warn => "  (under 7 days)",
                _ => "",
            }
        ));
    }
    let summary = match status {
        Status::Ok => format!("{} databases keep backups {MIN_RETENTION_DAYS}+ days", dbs.len()),
        _ => format!("{} of {} databases keep backups under {MIN_RETENTION_DAYS} days", details.iter().filter(|d| d.contains("  (")).count(), dbs.len()),
    };
    Check::new(RETENTION, status, summary).details(details)
}

/// The last five automated EBS snapshots: none warns, one in `error` fails, one still
/// pending warns. Pure.
pub fn ebs_check(snaps: &[EbsSnapshot]) -> Check {
    if snaps.is_empty() {
        return Check::warn(EBS, "no EBS snapshots with the automated-backup tags");
    }
    let mut sorted: Vec<&EbsSnapshot> = snaps.iter().collect();
    sorted.sort_by_key(|s| s.start_time);
    let last: Vec<&EbsSnapshot> = sorted.iter().rev().take(LAST_EBS).rev().copied().collect();
    let status = last.iter().fold(Status::Ok, |acc, s| {
        acc.max(match s.state.as_str() {
            "completed" => Status::Ok,
            "error" => Status::Fail,
            _ => Status::Warn,
        })
    });
    let details = last
        .iter()
        .map(|s| {
            format!(
                "{}  {}  {}  {} GiB  {}",
                s.id,
                s.state,
                s.start_time.map(|t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "-".into()),
                s.volume_size_gib.map(|g| g.to_string()).unwrap_or_else(|| "?".into()),
                s.volume_id.as_deref().unwrap_or("-")
            )
        })
        .collect();
    let errors = last.iter().filter(|s| s.state == "error").count();
    let summary = if errors > 0 {
        format!("{errors} of the last {} EBS snapshots in error", last.len())
    } else {
        format!("last {} of {} EBS snapshots: {}", last.len(), snaps.len(), if status == Status::Ok { "all completed" } else { "some not completed yet" })
    };
    Check::new(EBS, status, summary).details(details).data(json!(last))
}

/// The newest automated snapshot of every volume of every fleet instance: older than
/// `max_age`, or none at all, fails, naming the volume and its instance. Pure.
pub fn ebs_age_check(instances: &[crate::aws::ec2::Instance], snaps: &[EbsSnapshot], now: DateTime<Utc>, max_age: std::time::Duration) -> Check {
    let volumes: Vec<(&str, String)> = instances
        .iter()
        .flat_map(|i| i.volume_ids.iter().map(move |v| (v.as_str(), super::checks::instance_label(i))))
        .collect();
    if volumes.is_empty() {
        return Check::skipped(EBS_AGE, "the fleet has no EC2 volumes to look for");
    }
    let limit = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    let mut bad = 0;
    let mut details = Vec::new();
    for (vol, instance) in &volumes {
        let newest = snaps.iter().filter(|s| s.volume_id.as_deref() == Some(*vol)).filter(|s| s.start_time.is_some()).max_by_key(|s| s.start_time);
        let line = match newest.and_then(|s| Some((s, s.start_time?))) {
            None => {
                bad += 1;
                format!("FAIL  {vol} ({instance})  no automated snapshot")
            }
            Some((s, at)) => {
                let age = now - at;
                let old = age > limit;
                if old {
                    bad += 1;
                }
                format!("{}  {vol} ({instance})  newest {} {} ({} h old, {})", if old { "FAIL" } else { "ok" }, s.id, at.format("%Y-%m-%d %H:%M UTC"), age.num_hours(), s.state)
            }
        };
        details.push(line);
    }
    let summary = format!("{} of {} fleet volumes without an automated snapshot in the last {}", bad, volumes.len(), humantime::format_duration(max_age));
    Check::new(EBS_AGE, if bad > 0 { Status::Fail } else { Status::Ok }, summary).details(details)
}

/// Automated snapshot sizes, oldest first, and their trend per day (growth is how storage
/// is planned). Pure.
pub fn sizes_check(snaps: &[DbSnapshot]) -> Check {
    if snaps.is_empty() {
        return Check::skipped(SIZES, "no automated snapshots");
    }
    let mut sorted: Vec<&DbSnapshot> = snaps.iter().collect();
    sorted.sort_by_key(|s| s.created);
    let details: Vec<String> = sorted
        .iter()
        .map(|s| {
            format!(
                "{}  {} GiB  {}",
                s.created.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "-".into()),
                s.allocated_storage_gib.map(|g| g.to_string()).unwrap_or_else(|| "?".into()),
                s.id
            )
        })
        .collect();
    let first = sorted.first().and_then(|s| s.allocated_storage_gib);
    let last = sorted.last().and_then(|s| s.allocated_storage_gib);
    let span_days = match (sorted.first().and_then(|s| s.created), sorted.last().and_then(|s| s.created)) {
        (Some(a), Some(b)) => (b - a).num_minutes() as f64 / (24.0 * 60.0),
        _ => 0.0,
    };
    let summary = match (first, last) {
        (Some(a), Some(b)) if sorted.len() > 1 && span_days >= 1.0 => {
            let per_day = f64::from(b - a) / span_days;
            let trend = if b == a { "flat".to_string() } else { format!("{:+} GiB, {per_day:+.2} GiB/day", b - a) };
            format!("{} snapshots over {span_days:.0} days, {a} GiB to {b} GiB: {trend}", sorted.len())
        }
        (Some(a), Some(b)) => format!("{} snapshots, {a} GiB to {b} GiB (under a day apart: no trend yet)", sorted.len()),
        _ => format!("{} snapshots", sorted.len()),
    };
    Check::ok(SIZES, summary).details(details)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn db(retention: i32) -> DbInstance {
        DbInstance {
            id: "db".into(),
            status: "available".into(),
            endpoint: None,
            port: None,
            engine: None,
            class: None,
            backup_retention_days: retention,
            backup_window: Some("03:00-04:00".into()),
            storage_encrypted: true,
            publicly_accessible: false,
            allocated_storage_gib: Some(20),
            security_group_ids: vec![],
        }
    }

    #[test]
    fn retention_under_seven_days_warns_and_zero_fails() {
        assert_eq!(retention_check(&[db(7)]).status, Status::Ok);
        let c = retention_check(&[db(7), db(3)]);
        assert_eq!(c.status, Status::Warn);
        assert!(c.details[1].contains("retention 3 days  window 03:00-04:00  (under 7 days)"), "{:?}", c.details);
        assert_eq!(retention_check(&[db(0)]).status, Status::Fail);
        assert_eq!(retention_check(&[]).status, Status::Fail);
    }

    #[test]
    fn only_the_last_five_ebs_snapshots_count() {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let snap = |i: i64, state: &str| EbsSnapshot {
            id: format!("snap-{i}"),
            volume_id: Some("vol-1".into()),
            state: state.into(),
            start_time: Some(t0 + Duration::days(i)),
            volume_size_gib: Some(8),
            description: None,
            encrypted: true,
        };
        let mut snaps: Vec<EbsSnapshot> = (1..=5).map(|i| snap(i, "completed")).collect();
        snaps.insert(0, snap(0, "error"));
        let c = ebs_check(&snaps);
        assert_eq!(c.status, Status::Ok, "the old error is not among the last five");
        assert_eq!(c.details.len(), 5);
        assert!(c.details[4].starts_with("snap-5  completed"));
        snaps.push(snap(6, "error"));
        assert_eq!(ebs_check(&snaps).status, Status::Fail);
        assert_eq!(ebs_check(&[]).status, Status::Warn);
    }
}
