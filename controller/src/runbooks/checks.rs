//! Decisions shared by several runbooks, as pure functions over plain data: the newest
//! automated database snapshot, failed-login counts from a log group and from the
//! agents, and the time windows of the runbooks ("since 18:00 yesterday", the next
//! weekday morning).

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc, Weekday};
use serde_json::json;

use super::agents::{AuthSummary, HostAnswer};
use super::config::Unreachable;
use super::report::{Check, Status};
use crate::aws::logs::ScanStats;
use crate::aws::rds::DbSnapshot;
use crate::aws::AwsError;

/// The newest automated snapshot older than this fails (a day plus the backup window).
pub const SNAPSHOT_MAX_AGE_HOURS: i64 = 26;

/// 18:00 of the day before `now`, in `now`'s time zone (the overnight window of the
/// daily check). Falls back to 14 hours before `now` where 18:00 does not exist (DST).
pub fn yesterday_evening<Tz: TimeZone>(now: &DateTime<Tz>) -> DateTime<Utc> {
    let six_pm = NaiveTime::from_hms_opt(18, 0, 0).unwrap_or_default();
    now.date_naive()
        .pred_opt()
        .and_then(|d| now.timezone().from_local_datetime(&d.and_time(six_pm)).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| now.with_timezone(&Utc) - Duration::hours(14))
}

/// 08:00 of the next weekday after `now` (the daily check runs on weekdays).
pub fn next_weekday_morning<Tz: TimeZone>(now: &DateTime<Tz>) -> Option<DateTime<Tz>> {
    let eight = NaiveTime::from_hms_opt(8, 0, 0)?;
    let mut day = now.date_naive().succ_opt()?;
    while matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
        day = day.succ_opt()?;
    }
    now.timezone().from_local_datetime(&day.and_time(eight)).earliest()
}

/// "web-1 (i-0abc)" or the bare instance id: names alone can repeat.
pub fn instance_label(i: &crate::aws::ec2::Instance) -> String {
    match &i.name {
        Some(n) => format!("{n} ({})", i.id),
        None => i.id.clone(),
    }
}

/// "3 h 5 min", "2 d 4 h", "12 min".
pub fn age_text(age: Duration) -> String {
    let mins = age.num_minutes().max(0);
    let (d, h, m) = (mins / 1440, mins % 1440 / 60, mins % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else {
        format!("{m} min")
    }
}

/// The newest automated snapshot (by creation time, whatever order the service used):
/// missing, not `available`, or older than `SNAPSHOT_MAX_AGE_HOURS` fails.
pub fn newest_snapshot_check(name: &str, db_id: &str, snapshots: &[DbSnapshot], now: DateTime<Utc>) -> Check {
    let newest = snapshots.iter().filter(|s| s.created.is_some()).max_by_key(|s| s.created);
    let Some(s) = newest else {
        return Check::fail(name, format!("no automated snapshot of {db_id}"));
    };
    let created = s.created.unwrap_or(now);
    let age = now - created;
    let detail = vec![format!(
        "{}  status {}  created {}  {} GiB  ({} automated snapshots in all)",
        s.id,
        s.status,
        created.format("%Y-%m-%d %H:%M UTC"),
        s.allocated_storage_gib.map(|g| g.to_string()).unwrap_or_else(|| "?".into()),
        snapshots.len()
    )];
    let data = json!({"snapshot": s, "age_hours": age.num_minutes() as f64 / 60.0});
    let status = if s.status != "available" || age > Duration::hours(SNAPSHOT_MAX_AGE_HOURS) { Status::Fail } else { Status::Ok };
    let summary = match status {
        Status::Fail if s.status != "available" => format!("newest snapshot {} is {}, not available", s.id, s.status),
        Status::Fail => format!("newest snapshot {} is {} old (limit {SNAPSHOT_MAX_AGE_HOURS} h)", s.id, age_text(age)),
        _ => format!("{} available, {} old", s.id, age_text(age)),
    };
    Check::new(name, status, summary).details(detail).data(data)
}

/// Matching events in a log group: more than `threshold` warns. A missing group warns
/// (nothing is being shipped there).
pub fn log_count_check(name: &str, group: &str, what: &str, window: &str, result: &Result<ScanStats, AwsError>, threshold: u64) -> Check {
    match result {
        Ok(s) => {
            let summary = format!("{} {what} in {group} {window}", s.events);
            let data = json!({"events": s.events, "pages": s.pages, "log_group": group});
            let status = if s.events > threshold { Status::Warn } else { Status::Ok };
            Check::new(name, status, summary).data(data)
        }
        Err(e) if e.is_not_found() => Check::warn(name, format!("log group {group} does not exist: nothing is shipped there")),
        Err(e) => Check::aws_error(name, e),
    }
}

/// Applies `[runbooks] unreachable` to a check that asked agents: when any host did not
/// answer, the check fails (or at least warns, by policy), its summary counts the silent
/// hosts, and each is named with its error in the details (added when the check did not
/// already list it). Pure.
pub fn with_unreachable_policy<T>(mut check: Check, answers: &[HostAnswer<T>], policy: Unreachable) -> Check {
    let silent: Vec<(&str, &str)> = answers.iter().filter_map(|a| a.answer.as_ref().err().map(|e| (a.host.as_str(), e.as_str()))).collect();
    if silent.is_empty() {
        return check;
    }
    let floor = match policy {
        Unreachable::Fail => Status::Fail,
        Unreachable::Warn => Status::Warn,
    };
    check.status = check.status.max(floor);
    for (host, why) in &silent {
        if !check.details.iter().any(|d| d.starts_with(&format!("{host}: ")) && d.contains(why)) {
            check.details.push(format!("{host}: agent unreachable: {why}"));
        }
    }
    let names: Vec<&str> = silent.iter().map(|(h, _)| *h).collect();
    if !check.summary.contains("unreachable") {
        check.summary.push_str(&format!("; {} agent(s) unreachable", silent.len()));
    }
    const NAMED: usize = 10;
    let shown = names.iter().take(NAMED).copied().collect::<Vec<_>>().join(", ");
    let more = if names.len() > NAMED { format!(" and {} more", names.len() - NAMED) } else { String::new() };
    check.summary.push_str(&format!(" ({shown}{more})"));
    check
}

/// Failed logins per host from the agents: a host over `threshold` warns, a host that
/// did not answer warns with the reason (raise it with `with_unreachable_policy`); no
/// hosts is skipped.
pub fn agent_auth_check(name: &str, answers: &[HostAnswer<AuthSummary>], threshold: u64) -> Check {
    if answers.is_empty() {
        return Check::skipped(name, "no hosts to ask");
    }
    let mut details = Vec::new();
    let (mut total, mut over, mut silent) = (0u64, 0usize, 0usize);
    let mut lower_bound = false;
    for a in answers {
        match &a.answer {
            Ok(s) => {
                total += s.total;
                lower_bound |= s.incomplete;
                if s.total > threshold {
                    over += 1;
                }
                let users: Vec<String> = s.top_users.iter().map(|(u, n)| format!("{u} {n}")).collect();
                let sources: Vec<String> = s.top_sources.iter().map(|(u, n)| format!("{u} {n}")).collect();
                details.push(format!(
                    "{}: {}{} failed (password {}, invalid user {}, public key {}, local {}){}{}{}",
                    a.host,
                    if s.incomplete { "at least " } else { "" },
                    s.total,
                    s.failed_password,
                    s.invalid_user,
                    s.failed_publickey,
                    s.failed_local,
                    if users.is_empty() { String::new() } else { format!("; users: {}", users.join(", ")) },
                    if sources.is_empty() { String::new() } else { format!("; sources: {}", sources.join(", ")) },
                    if s.incomplete { " (the agent dropped or never read some of the window's events)" } else { "" },
                ));
            }
            Err(why) => {
                silent += 1;
                details.push(format!("{}: agent unreachable: {why}", a.host));
            }
        }
    }
    let answered = answers.len() - silent;
    let floor = if lower_bound { "at least " } else { "" };
    let mut summary = format!("{floor}{total} failed logins on {answered} of {} hosts", answers.len());
    if silent > 0 {
        summary.push_str(&format!("; {silent} agent(s) unreachable"));
    }
    if over > 0 {
        summary.push_str(&format!("; {over} host(s) over {threshold}"));
    }
    let status = if silent > 0 || over > 0 { Status::Warn } else { Status::Ok };
    Check::new(name, status, summary).details(details).data(serde_json::to_value(answers).unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn snap(id: &str, status: &str, created: DateTime<Utc>) -> DbSnapshot {
        DbSnapshot {
            id: id.into(),
            instance_id: "db".into(),
            status: status.into(),
            snapshot_type: "automated".into(),
            created: Some(created),
            allocated_storage_gib: Some(20),
            encrypted: true,
        }
    }

    #[test]
    fn the_overnight_window_starts_at_18_yesterday_local_time() {
        let tz = FixedOffset::east_opt(3600).unwrap();
        let now = tz.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap();
        assert_eq!(yesterday_evening(&now), Utc.with_ymd_and_hms(2026, 3, 1, 17, 0, 0).unwrap());
    }

    #[test]
    fn the_next_check_skips_the_weekend() {
        let tz = FixedOffset::east_opt(0).unwrap();
        let friday = tz.with_ymd_and_hms(2026, 11, 27, 8, 5, 0).unwrap();
        assert_eq!(next_weekday_morning(&friday).unwrap(), tz.with_ymd_and_hms(2026, 11, 30, 8, 0, 0).unwrap());
        let monday = tz.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap();
        assert_eq!(next_weekday_morning(&monday).unwrap(), tz.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap());
    }

    #[test]
    fn the_newest_snapshot_is_found_by_time_not_by_position() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 8, 0, 0).unwrap();
        let snaps = vec![snap("new", "available", now - Duration::hours(3)), snap("old", "available", now - Duration::hours(50))];
        let reversed: Vec<_> = snaps.iter().rev().cloned().collect();
        for s in [&snaps, &reversed] {
            let c = newest_snapshot_check("backup", "db", s, now);
            assert_eq!(c.status, Status::Ok, "{c:?}");
            assert!(c.summary.starts_with("new available, 3 h 0 min old"), "{}", c.summary);
        }
    }

    #[test]
    fn an_old_missing_or_unavailable_snapshot_fails() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 8, 0, 0).unwrap();
        let old = newest_snapshot_check("b", "db", &[snap("s", "available", now - Duration::hours(27))], now);
        assert_eq!(old.status, Status::Fail);
        assert!(old.summary.contains("1 d 3 h old"), "{}", old.summary);
        assert_eq!(newest_snapshot_check("b", "db", &[], now).status, Status::Fail);
        let creating = newest_snapshot_check("b", "db", &[snap("s", "creating", now)], now);
        assert_eq!(creating.status, Status::Fail);
        assert!(creating.summary.contains("creating"));
        let edge = newest_snapshot_check("b", "db", &[snap("s", "available", now - Duration::hours(26))], now);
        assert_eq!(edge.status, Status::Ok, "exactly 26 h is still within the limit");
    }

    #[test]
    fn failed_logins_over_the_threshold_or_silent_agents_warn() {
        let ok = |n| HostAnswer {
            host: "web-1".into(),
            instance_id: None,
            answer: Ok(AuthSummary { total: n, failed_password: n, invalid_user: 0, failed_publickey: 0, failed_local: 0, top_users: vec![("root".into(), n)], top_sources: vec![], incomplete: false }),
        };
        assert_eq!(agent_auth_check("a", &[ok(5)], 5).status, Status::Ok);
        let c = agent_auth_check("a", &[ok(6)], 5);
        assert_eq!(c.status, Status::Warn);
        assert!(c.details[0].contains("users: root 6"), "{:?}", c.details);
        let down = HostAnswer::<AuthSummary> { host: "web-2".into(), instance_id: None, answer: Err("connection refused".into()) };
        let c = agent_auth_check("a", &[ok(0), down], 5);
        assert_eq!(c.status, Status::Warn);
        assert!(c.summary.contains("1 agent(s) unreachable"), "{}", c.summary);
        assert!(c.details[1].contains("web-2: agent unreachable: connection refused"));
        assert_eq!(agent_auth_check("a", &[], 5).status, Status::Skipped);
    }

    #[test]
    fn a_silent_host_fails_the_check_by_default_and_is_named_with_its_error() {
        let down = |h: &str| HostAnswer::<()> { host: h.into(), instance_id: None, answer: Err("timed out".into()) };
        let up = HostAnswer::<()> { host: "web-1".into(), instance_id: None, answer: Ok(()) };
        let c = with_unreachable_policy(Check::ok("ports", "1 of 2 agents answered"), &[up.clone(), down("web-2")], Unreachable::Fail);
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.summary, "1 of 2 agents answered; 1 agent(s) unreachable (web-2)");
        assert_eq!(c.details, vec!["web-2: agent unreachable: timed out".to_string()]);
        let w = with_unreachable_policy(Check::ok("ports", "x"), &[down("web-2")], Unreachable::Warn);
        assert_eq!(w.status, Status::Warn);
        let f = with_unreachable_policy(Check::fail("ports", "x"), &[down("web-2")], Unreachable::Warn);
        assert_eq!(f.status, Status::Fail, "the policy never lowers a status");
        let quiet = with_unreachable_policy(Check::ok("ports", "x"), std::slice::from_ref(&up), Unreachable::Fail);
        assert_eq!(quiet.status, Status::Ok);
        let many: Vec<_> = (0..12).map(|i| down(&format!("h{i}"))).collect();
        let m = with_unreachable_policy(Check::ok("ports", "x"), &many, Unreachable::Fail);
        assert!(m.summary.ends_with("(h0, h1, h2, h3, h4, h5, h6, h7, h8, h9 and 2 more)"), "{}", m.summary);
        assert_eq!(m.details.len(), 12, "every silent host is in the details");
    }

    #[test]
    fn counts_of_an_agent_that_evicted_events_read_as_a_lower_bound() {
        let evicted = HostAnswer {
            host: "web-1".into(),
            instance_id: None,
            answer: Ok(AuthSummary { total: 100_000, failed_password: 100_000, invalid_user: 0, failed_publickey: 0, failed_local: 0, top_users: vec![], top_sources: vec![], incomplete: true }),
        };
        let c = agent_auth_check("a", &[evicted], 5);
        assert!(c.summary.starts_with("at least 100000 failed logins"), "{}", c.summary);
        assert!(c.details[0].starts_with("web-1: at least 100000 failed"), "{:?}", c.details);
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age_text(Duration::minutes(12)), "12 min");
        assert_eq!(age_text(Duration::minutes(185)), "3 h 5 min");
        assert_eq!(age_text(Duration::hours(52)), "2 d 4 h");
    }
}
