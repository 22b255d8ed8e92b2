//! The maintenance report, `maintenance-report-YYYYMMDD-RUNID.txt` and `.json`, made from
//! the run's journal and nothing else: every planned step of every host with the state the
//! journal recorded, a step with no recorded end shown as `not run` with why, the database
//! figures, the hosts that need a reboot, the system status after, the next date. A step
//! that failed or did not run is never shown as done; the seed's report printed ✅ for
//! every step whatever happened.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::database;
use crate::output::Table;
use crate::rollout::journal::{Contents, Event, StepState};
use crate::rollout::plan::HostState;

/// One step (of the fleet, or of one host) as it ended.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub state: StepState,
    pub duration_ms: u64,
    pub detail: String,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// One host's end.
#[derive(Debug, Clone, Serialize)]
pub struct HostRow {
    pub host: String,
    pub state: HostState,
    pub reason: String,
}

/// What the run amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Succeeded,
    /// Every step done; some need a person's attention (a reboot).
    SucceededWithWarnings,
    /// Nothing failed, but not everything ran (interrupted, or not reached).
    Incomplete,
    Failed,
    /// `--dry-run`: everything was read, nothing changed.
    Planned,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Succeeded => "SUCCEEDED",
            Outcome::SucceededWithWarnings => "SUCCEEDED WITH WARNINGS",
            Outcome::Incomplete => "INCOMPLETE",
            Outcome::Failed => "FAILED",
            Outcome::Planned => "DRY RUN (nothing changed)",
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Succeeded | Outcome::SucceededWithWarnings | Outcome::Planned => 0,
            Outcome::Incomplete | Outcome::Failed => 1,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceReport {
    pub run_id: String,
    pub fleet: String,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: Outcome,
    pub exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub steps: Vec<Row>,
    pub hosts: Vec<HostRow>,
    pub reboot_required: Vec<String>,
    pub database: Value,
    pub status_after: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_maintenance: Option<DateTime<Local>>,
    pub journal: PathBuf,
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Where a host ended over all its phases: the first phase that did not succeed wins; a
/// phase skipped because a resumed run had done it does not hide how it went then.
fn host_state(ends: &[(HostState, String)]) -> (HostState, String) {
    let real: Vec<&(HostState, String)> = ends.iter().filter(|(s, _)| *s != HostState::Skipped).collect();
    if let Some(bad) = real.iter().find(|(s, _)| *s != HostState::Succeeded) {
        return (*bad).clone();
    }
    match (real.last(), ends.last()) {
        (Some(last), _) => (*last).clone(),
        (None, Some(last)) => last.clone(),
        (None, None) => (HostState::NotStarted, "no phase of the run reached this host".into()),
    }
}

/// Builds the report from the journal. `planned` lists every (step, host) the run was
/// meant to do, in order; steps the journal has that the plan does not are added after.
pub fn build(contents: &Contents, planned: &[(String, Option<String>)], journal: &Path, next: Option<DateTime<Local>>) -> MaintenanceReport {
    let mut run_id = String::new();
    let mut fleet = String::new();
    let mut started_at = Utc::now();
    let mut finished_at = None;
    let mut dry_run = false;
    let mut stopped = None;
    let mut hosts_order: Vec<String> = Vec::new();
    for e in &contents.events {
        match e {
            Event::RunStarted { run_id: id, fleet: f, hosts, at_unix_ms, params, .. } => {
                run_id = id.clone();
                fleet = f.clone();
                started_at = at(*at_unix_ms);
                dry_run = params["dry_run"].as_bool().unwrap_or(false);
                hosts_order = hosts.clone();
            }
            Event::RunEnded { outcome, at_unix_ms } => {
                finished_at = Some(at(*at_unix_ms));
                if let Some(why) = outcome.strip_prefix("stopped: ") {
                    stopped = Some(why.to_string());
                }
            }
            _ => {}
        }
    }
    let mut keys: Vec<(String, Option<String>)> = planned.to_vec();
    for e in &contents.events {
        if let Event::StepEnded { step, host, .. } | Event::StepStarted { step, host, .. } = e {
            let k = (step.clone(), host.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let stop_note = stopped.clone().unwrap_or_else(|| "the run ended before this step".into());
    let steps: Vec<Row> = keys
        .into_iter()
        .map(|(step, host)| {
            let end = contents.events.iter().rev().find_map(|e| match e {
                Event::StepEnded { step: s, host: h, state, detail, duration_ms, data, .. } if *s == step && *h == host => {
                    Some((*state, detail.clone(), *duration_ms, data.clone()))
                }
                _ => None,
            });
            let began = contents
                .events
                .iter()
                .any(|e| matches!(e, Event::StepStarted { step: s, host: h, .. } if *s == step && *h == host));
            match end {
                Some((state, detail, duration_ms, data)) => Row { step, host, state, duration_ms, detail, data },
                None => {
                    let detail = if began { "started, but no outcome was recorded (the controller stopped)".into() } else { stop_note.clone() };
                    Row { step, host, state: StepState::NotRun, duration_ms: 0, detail, data: Value::Null }
                }
            }
        })
        .collect();
    for e in &contents.events {
        if let Event::HostEnded { host, .. } = e {
            if !hosts_order.contains(host) {
                hosts_order.push(host.clone());
            }
        }
    }
    let hosts: Vec<HostRow> = hosts_order
        .iter()
        .map(|h| {
            let ends: Vec<(HostState, String)> = contents
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::HostEnded { host, state, reason, .. } if host == h => Some((*state, reason.clone())),
                    _ => None,
                })
                .collect();
            let (state, reason) = host_state(&ends);
            HostRow { host: h.clone(), state, reason }
        })
        .collect();
    let reboot_required: Vec<String> = {
        let mut v: Vec<String> = steps
            .iter()
            .filter(|r| r.data["result"]["reboot_required"].as_bool() == Some(true))
            .filter_map(|r| r.host.clone())
            .collect();
        v.dedup();
        v
    };
    let data_of = |name: &str| steps.iter().find(|r| r.step == name && r.host.is_none()).map(|r| r.data.clone()).unwrap_or(Value::Null);
    let database = json!({
        "sessions_deleted": data_of(database::SESSIONS)["deleted"],
        "archive": data_of(database::ARCHIVE),
        "archive_start": data_of(database::ARCHIVE_START),
        "optimize": data_of(database::OPTIMIZE),
        "analyze": data_of(database::ANALYZE),
        "table_sizes": data_of(database::SIZES),
    });
    let status_after = data_of(super::steps::VERIFY);
    let outcome = if dry_run {
        if steps.iter().any(|r| r.state == StepState::Failed) { Outcome::Failed } else { Outcome::Planned }
    } else if steps.iter().any(|r| matches!(r.state, StepState::Failed | StepState::TimedOut | StepState::Cancelled))
        || hosts.iter().any(|h| h.state.is_error() || h.state == HostState::Cancelled)
    {
        Outcome::Failed
    } else if steps.iter().any(|r| r.state.is_bad()) || hosts.iter().any(|h| h.state == HostState::NotStarted) {
        Outcome::Incomplete
    } else if steps.iter().any(|r| r.state == StepState::Warning) || !reboot_required.is_empty() {
        Outcome::SucceededWithWarnings
    } else {
        Outcome::Succeeded
    };
    MaintenanceReport {
        run_id,
        fleet,
        dry_run,
        started_at,
        finished_at: finished_at.unwrap_or_else(Utc::now),
        outcome,
        exit_code: outcome.exit_code(),
        stopped,
        steps,
        hosts,
        reboot_required,
        database,
        status_after,
        next_maintenance: next,
        journal: journal.to_path_buf(),
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

impl MaintenanceReport {
    /// `maintenance-report-YYYYMMDD-RUNID`.
    pub fn stem(&self) -> String {
        format!("maintenance-report-{}-{}", self.started_at.with_timezone(&Local).format("%Y%m%d"), self.run_id)
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let local = self.started_at.with_timezone(&Local);
        let _ = writeln!(out, "Weekly Maintenance Report - run {} - {}", self.run_id, local.format("%Y-%m-%d %H:%M:%S %:z"));
        let _ = writeln!(out, "Fleet: {}", self.fleet);
        let counts = |s: StepState| self.steps.iter().filter(|r| r.state == s).count();
        let _ = writeln!(
            out,
            "Result: {} ({} succeeded, {} warnings, {} failed, {} timed out, {} cancelled, {} skipped, {} not run{}) in {}",
            self.outcome.label(),
            counts(StepState::Succeeded),
            counts(StepState::Warning),
            counts(StepState::Failed),
            counts(StepState::TimedOut),
            counts(StepState::Cancelled),
            counts(StepState::Skipped),
            counts(StepState::NotRun),
            if self.dry_run { format!(", {} planned", counts(StepState::Planned)) } else { String::new() },
            secs(u64::try_from((self.finished_at - self.started_at).num_milliseconds()).unwrap_or(0)),
        );
        if let Some(s) = &self.stopped {
            let _ = writeln!(out, "Stopped: {s}");
        }
        out.push('\n');
        let mut t = Table::new(["STEP", "HOST", "STATUS", "TIME", "DETAIL"]);
        for r in &self.steps {
            t.row([r.step.clone(), r.host.clone().unwrap_or_else(|| "-".into()), r.state.label().to_string(), secs(r.duration_ms), r.detail.clone()]);
        }
        out.push_str(&t.render());
        out.push_str("\nHosts:\n");
        let mut t = Table::new(["HOST", "STATE", "REASON"]);
        for h in &self.hosts {
            t.row([h.host.clone(), h.state.label().to_string(), h.reason.clone()]);
        }
        out.push_str(&t.render());
        if !self.reboot_required.is_empty() {
            let _ = writeln!(out, "\nReboot required: {}", self.reboot_required.join(", "));
        }
        out.push_str("\nDatabase:\n");
        let db = &self.database;
        match db["sessions_deleted"].as_u64() {
            Some(n) => {
                let _ = writeln!(out, "  sessions deleted: {n}");
            }
            None => out.push_str("  sessions deleted: - (the purge did not run)\n"),
        }
        match (db["archive"]["moved"].as_u64(), db["archive"]["verified"].as_bool()) {
            (Some(moved), Some(verified)) => {
                let _ = writeln!(
                    out,
                    "  audit rows archived: {moved} by this run; verified: {} (old rows left {}, keys in both tables {}, archive now {})",
                    if verified { "yes" } else { "NO" },
                    db["archive"]["old_rows_left"],
                    db["archive"]["in_both"],
                    db["archive"]["archive_rows"]
                );
            }
            _ => out.push_str("  audit rows archived: - (the archive did not run to its verification)\n"),
        }
        if let Some(ops) = db["optimize"].as_array() {
            for op in ops {
                let _ = writeln!(out, "  optimize {}: {} ms, {}", op["table"].as_str().unwrap_or("?"), op["duration_ms"], op["messages"].as_str().unwrap_or(""));
            }
        }
        if let Some(sizes) = db["table_sizes"].as_array() {
            for s in sizes {
                let _ = writeln!(
                    out,
                    "  table {}: {} used, {} free, ~{} rows",
                    s["table"].as_str().unwrap_or("?"),
                    crate::output::human_bytes(s["size_bytes"].as_u64().unwrap_or(0)),
                    crate::output::human_bytes(s["free_bytes"].as_u64().unwrap_or(0)),
                    s["rows_estimate"]
                );
            }
        }
        out.push_str("\nSystem status after maintenance:\n");
        match self.status_after.get("summary").and_then(Value::as_str) {
            Some(s) => {
                let _ = writeln!(out, "  {s}");
            }
            None => out.push_str("  not verified (the verification did not run)\n"),
        }
        if let Some(next) = self.next_maintenance {
            let _ = writeln!(out, "\nNext maintenance: {}", next.format("%Y-%m-%d %H:%M %:z"));
        }
        let _ = writeln!(out, "Journal: {}", self.journal.display());
        out
    }

    /// Writes `.txt` and `.json` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let stem = self.stem();
        let txt = dir.join(format!("{stem}.txt"));
        let json = dir.join(format!("{stem}.json"));
        std::fs::write(&txt, self.render_text())?;
        std::fs::write(&json, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        Ok((txt, json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(step: &str, host: Option<&str>, state: StepState) -> Event {
        Event::StepEnded {
            step: step.into(),
            host: host.map(str::to_string),
            state,
            detail: format!("{step} detail"),
            at_unix_ms: 2,
            duration_ms: 5,
            data: Value::Null,
        }
    }

    fn contents(events: Vec<Event>) -> Contents {
        let mut all = vec![Event::RunStarted {
            run_id: "r-1".into(),
            command: "weekly-maintenance".into(),
            fleet: "ec2:Project=TechHealth".into(),
            hosts: vec!["web-1".into(), "web-2".into()],
            at_unix_ms: 1,
            params: json!({"dry_run": false}),
        }];
        all.extend(events);
        Contents { events: all, truncated_tail: false }
    }

    fn planned() -> Vec<(String, Option<String>)> {
        vec![
            ("1 ebs-snapshots".into(), None),
            ("3 patch".into(), Some("web-1".into())),
            ("3 patch".into(), Some("web-2".into())),
        ]
    }

    #[test]
    fn a_step_without_a_recorded_end_is_never_shown_done() {
        let c = contents(vec![
            ended("1 ebs-snapshots", None, StepState::Succeeded),
            ended("3 patch", Some("web-1"), StepState::Succeeded),
            Event::StepStarted { step: "3 patch".into(), host: Some("web-2".into()), at_unix_ms: 3, job_id: None, idempotency_key: None },
        ]);
        let r = build(&c, &planned(), Path::new("/j"), None);
        assert_eq!(r.steps[2].state, StepState::NotRun);
        assert!(r.steps[2].detail.contains("no outcome was recorded"));
        assert_eq!(r.outcome, Outcome::Incomplete);
        assert_eq!(r.exit_code, 1);
        let text = r.render_text();
        assert!(text.contains("INCOMPLETE") && text.contains("not run"), "{text}");
        assert!(!text.contains('✅'));
    }

    #[test]
    fn a_failed_step_fails_the_run_and_a_reboot_is_a_warning() {
        let mut reboot = ended("3 patch", Some("web-1"), StepState::Warning);
        if let Event::StepEnded { data, .. } = &mut reboot {
            *data = json!({"result": {"reboot_required": true}});
        }
        let host_ok = |h: &str| Event::HostEnded { host: h.into(), state: HostState::Succeeded, reason: String::new(), at_unix_ms: 3 };
        let ok = contents(vec![
            ended("1 ebs-snapshots", None, StepState::Succeeded),
            reboot.clone(),
            ended("3 patch", Some("web-2"), StepState::Succeeded),
            host_ok("web-1"),
            host_ok("web-2"),
        ]);
        let r = build(&ok, &planned(), Path::new("/j"), None);
        assert_eq!(r.outcome, Outcome::SucceededWithWarnings);
        assert_eq!(r.reboot_required, ["web-1"]);
        assert!(r.render_text().contains("Reboot required: web-1"));
        let bad = contents(vec![ended("1 ebs-snapshots", None, StepState::Failed), reboot]);
        assert_eq!(build(&bad, &planned(), Path::new("/j"), None).outcome, Outcome::Failed);
    }

    #[test]
    fn a_host_that_failed_once_is_not_hidden_by_a_later_phase() {
        let ends = vec![(HostState::Failed, "3 patch failed".to_string()), (HostState::Skipped, "an earlier phase failed".to_string())];
        assert_eq!(host_state(&ends).0, HostState::Failed);
        let resumed = vec![(HostState::Succeeded, String::new()), (HostState::Skipped, "done in the run being resumed".to_string())];
        assert_eq!(host_state(&resumed).0, HostState::Succeeded);
    }
}
