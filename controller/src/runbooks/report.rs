//! The shared shape of every runbook's result: a list of checks, each `ok`, `warn`,
//! `fail` or `skipped` with a summary and details, plus action items; rendered as text
//! for people and JSON for programs, written to the report directory, and mapped to the
//! exit code (0 every check made and none failed, 1 a check failed or was skipped, 2 the
//! runbook could not run).
//! Rendering and writing only: the checks are decided by the runbooks.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::aws::AwsError;
use crate::output::Table;

/// How one check came out. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One step of a runbook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// One line for the table.
    pub summary: String,
    /// The evidence, one line each (instances, events, hosts, ...).
    pub details: Vec<String>,
    /// The same evidence for programs.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub data: Value,
    /// The check could not be made because AWS could not be asked at all (no
    /// credentials, endpoint unreachable): the runbook did not really run.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub could_not_run: bool,
}

impl Check {
    pub fn new(name: impl Into<String>, status: Status, summary: impl Into<String>) -> Check {
        Check { name: name.into(), status, summary: summary.into(), details: Vec::new(), data: Value::Null, could_not_run: false }
    }
    pub fn ok(name: impl Into<String>, summary: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, summary)
    }
    pub fn warn(name: impl Into<String>, summary: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, summary)
    }
    pub fn fail(name: impl Into<String>, summary: impl Into<String>) -> Check {
        Check::new(name, Status::Fail, summary)
    }
    pub fn skipped(name: impl Into<String>, summary: impl Into<String>) -> Check {
        Check::new(name, Status::Skipped, summary)
    }
    /// A check whose AWS call failed: fail, naming the call and the cause.
    pub fn aws_error(name: impl Into<String>, err: &AwsError) -> Check {
        let mut c = Check::fail(name, format!("could not check: {err}"));
        c.could_not_run = err.is_environmental();
        c
    }
    pub fn details(mut self, details: Vec<String>) -> Check {
        self.details = details;
        self
    }
    pub fn data(mut self, data: Value) -> Check {
        self.data = data;
        self
    }
}

/// What a runbook run amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Passed,
    /// Nothing failed, but a check the runbook needs was skipped: it did not check all it
    /// should have, so it does not pass.
    Incomplete,
    Failed,
    CouldNotRun,
}

impl Outcome {
    /// The documented exit codes.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Passed => 0,
            Outcome::Incomplete | Outcome::Failed => 1,
            Outcome::CouldNotRun => 2,
        }
    }
}

/// A runbook's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The subcommand, e.g. "daily-health-check".
    pub runbook: String,
    pub title: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub checks: Vec<Check>,
    pub action_items: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_check: Option<DateTime<Local>>,
}

/// The report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write report {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl Report {
    pub fn new(runbook: &str, title: &str, started_at: DateTime<Utc>) -> Report {
        Report {
            runbook: runbook.into(),
            title: title.into(),
            started_at,
            finished_at: started_at,
            checks: Vec::new(),
            action_items: Vec::new(),
            next_check: None,
        }
    }

    pub fn outcome(&self) -> Outcome {
        if self.checks.iter().any(|c| c.could_not_run) {
            Outcome::CouldNotRun
        } else if self.checks.iter().any(|c| c.status == Status::Fail) {
            Outcome::Failed
        } else if self.checks.iter().any(|c| c.status == Status::Skipped) {
            Outcome::Incomplete
        } else {
            Outcome::Passed
        }
    }

    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// The check of that name, if the runbook made it.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The report as people read it: a summary table, then each check's details.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let local: DateTime<Local> = self.started_at.with_timezone(&Local);
        let _ = writeln!(out, "{} - {}", self.title, local.format("%Y-%m-%d %H:%M:%S %:z"));
        let outcome = match self.outcome() {
            Outcome::Passed => "PASSED",
            Outcome::Incomplete => "INCOMPLETE",
            Outcome::Failed => "FAILED",
            Outcome::CouldNotRun => "COULD NOT RUN",
        };
        let _ = writeln!(
            out,
            "Result: {outcome} ({} failed, {} warnings, {} ok, {} skipped) in {} ms\n",
            self.count(Status::Fail),
            self.count(Status::Warn),
            self.count(Status::Ok),
            self.count(Status::Skipped),
            (self.finished_at - self.started_at).num_milliseconds()
        );
        let mut t = Table::new(["STATUS", "CHECK", "SUMMARY"]);
        for c in &self.checks {
            t.row([c.status.label().to_string(), c.name.clone(), c.summary.clone()]);
        }
        out.push_str(&t.render());
        for c in self.checks.iter().filter(|c| !c.details.is_empty()) {
            let _ = writeln!(out, "\n[{}] {}", c.status.label(), c.name);
            for d in &c.details {
                let _ = writeln!(out, "  {d}");
            }
        }
        out.push_str("\nAction items:\n");
        if self.action_items.is_empty() {
            out.push_str("- none\n");
        }
        for a in &self.action_items {
            let _ = writeln!(out, "- {a}");
        }
        if let Some(next) = self.next_check {
            let _ = writeln!(out, "\nNext check: {}", next.format("%Y-%m-%d %H:%M"));
        }
        out
    }

    /// The report for programs: every field, plus the outcome and exit code.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.insert("outcome".into(), serde_json::to_value(self.outcome()).unwrap_or(Value::Null));
            map.insert("exit_code".into(), Value::from(self.outcome().exit_code()));
        }
        v
    }

    /// Writes `<dir>/<stem>.txt` and `<dir>/<stem>.json` (creating `dir`), each through a
    /// temporary file so that a reader never sees half a report.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), ReportError> {
        let txt = dir.join(format!("{stem}.txt"));
        let json = dir.join(format!("{stem}.json"));
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Write { path: dir.to_path_buf(), source })?;
        let json_text = serde_json::to_string_pretty(&self.to_json()).unwrap_or_else(|_| "{}".into()) + "\n";
        for (path, body) in [(&txt, self.render_text()), (&json, json_text)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, body)
                .and_then(|_| std::fs::rename(&tmp, path))
                .map_err(|source| ReportError::Write { path: path.clone(), source })?;
        }
        Ok((txt, json))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::aws::{AwsCause, AwsError};

    fn report(checks: Vec<Check>) -> Report {
        let mut r = Report::new("test", "Test", Utc::now());
        r.checks = checks;
        r
    }

    #[test]
    fn exit_code_is_0_without_failures_1_with_one_and_2_when_aws_could_not_be_asked() {
        assert_eq!(report(vec![Check::ok("a", ""), Check::warn("b", "")]).outcome().exit_code(), 0);
        let skipped = report(vec![Check::ok("a", ""), Check::skipped("c", "no hosts to ask")]);
        assert_eq!((skipped.outcome(), skipped.outcome().exit_code()), (Outcome::Incomplete, 1));
        assert!(skipped.render_text().contains("Result: INCOMPLETE (0 failed, 0 warnings, 1 ok, 1 skipped)"), "{}", skipped.render_text());
        assert_eq!(report(vec![Check::ok("a", ""), Check::fail("b", "")]).outcome().exit_code(), 1);
        let unreachable = AwsError { service: "EC2", call: "DescribeInstances", cause: AwsCause::Unreachable("refused".into()) };
        assert_eq!(report(vec![Check::aws_error("a", &unreachable)]).outcome().exit_code(), 2);
        let denied = AwsError { service: "EC2", call: "DescribeInstances", cause: AwsCause::AccessDenied { code: "AccessDenied".into(), message: "".into() } };
        assert_eq!(report(vec![Check::aws_error("a", &denied)]).outcome().exit_code(), 1);
    }

    #[test]
    fn text_report_lists_every_check_its_details_and_the_action_items() {
        let mut r = report(vec![Check::fail("alarms", "1 alarm in ALARM").details(vec!["HighCPU: threshold crossed".into()])]);
        r.action_items.push("Review the active alarms".into());
        let text = r.render_text();
        assert!(text.contains("Result: FAILED (1 failed"), "{text}");
        assert!(text.contains("FAIL    alarms  1 alarm in ALARM"), "{text}");
        assert!(text.contains("  HighCPU: threshold crossed"), "{text}");
        assert!(text.contains("- Review the active alarms"), "{text}");
        let json = r.to_json();
        assert_eq!(json["exit_code"], 1);
        assert_eq!(json["checks"][0]["status"], "fail");
    }

    #[test]
    fn reports_are_written_as_text_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let (txt, json) = report(vec![Check::ok("a", "fine")]).write(&dir.path().join("sub"), "r-1").unwrap();
        assert!(std::fs::read_to_string(txt).unwrap().contains("fine"));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        assert_eq!(v["outcome"], "passed");
    }
}
