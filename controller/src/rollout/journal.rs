//! A run's journal: one JSON event per line, appended and fsynced as the run goes, under
//! `$XDG_STATE_HOME/ops/runs/RUN_ID/journal.jsonl`. It is what `--resume RUN_ID` reads to
//! skip finished work and reattach to agent jobs, and what `runs list|show` print.
//!
//! It must never rewrite what was written: a line is only ever appended, and a last line
//! cut short by a crash is detected on reopening and ended before anything new is added.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::HostState;

/// The controller's state folder: `$XDG_STATE_HOME/ops`, else `~/.local/state/ops`.
pub fn state_root() -> Result<PathBuf, JournalError> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir).join("ops"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/ops")),
        None => Err(JournalError::NoStateDir),
    }
}

/// A run id: `YYYYMMDD-HHMMSS-` and four hex digits, readable and sortable by time.
pub fn new_run_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let nanos = now.timestamp_subsec_nanos() ^ std::process::id().rotate_left(16);
    format!("{}-{:04x}", now.format("%Y%m%d-%H%M%S"), nanos & 0xffff)
}

/// Checks a run id given on the command line before it becomes part of a path.
pub fn validate_run_id(id: &str) -> Result<(), JournalError> {
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok { Ok(()) } else { Err(JournalError::BadRunId(id.to_string())) }
}

/// The idempotency key of one step on one host in one run: the same in a resumed run, so
/// an agent returns the job it already has instead of starting a second one.
pub fn idempotency_key(run_id: &str, host: &str, step: &str) -> String {
    format!("run:{run_id}:{host}:{step}")
}

/// What a step ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Succeeded,
    /// Done, with something a person should read (e.g. a reboot is required).
    Warning,
    Failed,
    TimedOut,
    Skipped,
    Cancelled,
    /// Only planned (`--dry-run`): nothing was changed.
    Planned,
    /// Never started, with why (an earlier step failed, the run was stopped); a resumed
    /// run runs it.
    NotRun,
}

impl StepState {
    pub fn label(self) -> &'static str {
        match self {
            StepState::Succeeded => "succeeded",
            StepState::Warning => "warning",
            StepState::Failed => "failed",
            StepState::TimedOut => "timed out",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
            StepState::Planned => "planned",
            StepState::NotRun => "not run",
        }
    }

    /// Counts as done for `--resume` (it is not run again).
    pub fn is_done(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Warning | StepState::Skipped)
    }

    /// Makes the run's outcome not good: it failed, or did not do what it should have.
    pub fn is_bad(self) -> bool {
        matches!(self, StepState::Failed | StepState::TimedOut | StepState::Cancelled | StepState::NotRun)
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        command: String,
        fleet: String,
        hosts: Vec<String>,
        at_unix_ms: i64,
        /// The run's fixed parameters (limits, cutoffs, names): a resumed run reuses them.
        params: serde_json::Value,
    },
    RunResumed { at_unix_ms: i64, by_pid: u32 },
    StepStarted {
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        at_unix_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    StepEnded {
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        state: StepState,
        detail: String,
        at_unix_ms: i64,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        data: serde_json::Value,
    },
    HostEnded { host: String, state: HostState, reason: String, at_unix_ms: i64 },
    RunEnded { outcome: String, at_unix_ms: i64 },
    /// Written when a journal is reopened after a crash cut its last line short: the line
    /// before this one is that fragment, ended so that this event starts a line of its own.
    TailRepaired { at_unix_ms: i64 },
}

/// The journal could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("no state folder: neither XDG_STATE_HOME nor HOME is set")]
    NoStateDir,
    #[error("run id {0:?} is not a run id (letters, digits and '-', at most 64)")]
    BadRunId(String),
    #[error("run {run_id} already has a journal at {path}")]
    Exists { run_id: String, path: PathBuf },
    #[error("no run {run_id}: no journal at {path}")]
    NoSuchRun { run_id: String, path: PathBuf },
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("journal {path} line {line}: not a journal event: {reason}")]
    Corrupt { path: PathBuf, line: usize, reason: String },
}

/// An open journal, appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

/// What reading a journal found.
#[derive(Debug, Clone, PartialEq)]
pub struct Contents {
    pub events: Vec<Event>,
    /// A last line cut short by a crash (not an event; left as it was).
    pub truncated_tail: bool,
}

fn run_dir(root: &Path, run_id: &str) -> PathBuf {
    root.join("runs").join(run_id)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

impl Journal {
    /// Starts the journal of a new run; refuses an id that already has one.
    pub fn create(root: &Path, run_id: &str) -> Result<Journal, JournalError> {
        validate_run_id(run_id)?;
        let dir = run_dir(root, run_id);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join("journal.jsonl");
        let file = OpenOptions::new().append(true).create_new(true).open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                JournalError::Exists { run_id: run_id.to_string(), path: path.clone() }
            } else {
                JournalError::Io { path: path.clone(), source: e }
            }
        })?;
        // The new entry in the folder must survive a crash too.
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))?;
        Ok(Journal { path, file })
    }

    /// Reopens a run's journal to continue it: reads what is there, ends a cut-short last
    /// line with a newline so that the next event starts on a line of its own.
    pub fn reopen(root: &Path, run_id: &str) -> Result<(Journal, Contents), JournalError> {
        validate_run_id(run_id)?;
        let path = run_dir(root, run_id).join("journal.jsonl");
        let contents = read(&path, run_id)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io(&path))?;
        let mut journal = Journal { path, file };
        if contents.truncated_tail {
            journal.file.write_all(b"\n").map_err(io(&journal.path))?;
            journal.append(&Event::TailRepaired { at_unix_ms: chrono::Utc::now().timestamp_millis() })?;
        }
        Ok((journal, contents))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event and waits until it is on disk.
    pub fn append(&mut self, event: &Event) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(event).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        self.file.write_all(&line).and_then(|()| self.file.sync_data()).map_err(io(&self.path))
    }
}

/// Reads a run's journal (for `runs show` and `--resume`).
pub fn read_run(root: &Path, run_id: &str) -> Result<Contents, JournalError> {
    validate_run_id(run_id)?;
    read(&run_dir(root, run_id).join("journal.jsonl"), run_id)
}

/// The ids of the runs with a journal, newest first.
pub fn list_runs(root: &Path) -> Result<Vec<String>, JournalError> {
    let dir = root.join("runs");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(JournalError::Io { path: dir, source: e }),
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("journal.jsonl").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| validate_run_id(id).is_ok())
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    Ok(ids)
}

fn read(path: &Path, run_id: &str) -> Result<Contents, JournalError> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            JournalError::NoSuchRun { run_id: run_id.to_string(), path: path.to_path_buf() }
        } else {
            JournalError::Io { path: path.to_path_buf(), source: e }
        }
    })?;
    let mut events = Vec::new();
    let mut truncated_tail = false;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0;
    // A line that is not an event, allowed only when the next one says it was repaired.
    let mut damaged: Option<(usize, String)> = None;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let complete = buf.last() == Some(&b'\n');
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(text) {
            Ok(ev) => {
                if let Some((line, reason)) = damaged.take() {
                    if !matches!(ev, Event::TailRepaired { .. }) {
                        return Err(JournalError::Corrupt { path: path.to_path_buf(), line, reason });
                    }
                }
                events.push(ev);
            }
            // A crash mid-write leaves at most the last line unfinished.
            Err(_) if !complete => truncated_tail = true,
            Err(e) => {
                if let Some((line, reason)) = damaged.replace((line_no, e.to_string())) {
                    return Err(JournalError::Corrupt { path: path.to_path_buf(), line, reason });
                }
            }
        }
    }
    if let Some((line, reason)) = damaged {
        return Err(JournalError::Corrupt { path: path.to_path_buf(), line, reason });
    }
    Ok(Contents { events, truncated_tail })
}

impl Contents {
    /// The step outcomes already recorded, (step, host) -> last end event's state.
    pub fn step_state(&self, step: &str, host: Option<&str>) -> Option<StepState> {
        self.events.iter().rev().find_map(|e| match e {
            Event::StepEnded { step: s, host: h, state, .. } if s == step && h.as_deref() == host => Some(*state),
            _ => None,
        })
    }

    /// The job id an unfinished step was running, to reattach to.
    pub fn started_job(&self, step: &str, host: Option<&str>) -> Option<String> {
        self.events.iter().rev().find_map(|e| match e {
            Event::StepStarted { step: s, host: h, job_id, .. } if s == step && h.as_deref() == host => job_id.clone(),
            _ => None,
        })
    }

    /// The run's parameters as first recorded.
    pub fn params(&self) -> Option<&serde_json::Value> {
        self.events.iter().find_map(|e| match e {
            Event::RunStarted { params, .. } => Some(params),
            _ => None,
        })
    }

    pub fn ended(&self) -> bool {
        self.events.iter().any(|e| matches!(e, Event::RunEnded { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(run: &str) -> Event {
        Event::RunStarted {
            run_id: run.into(),
            command: "weekly-maintenance".into(),
            fleet: "ec2:Project=TechHealth".into(),
            hosts: vec!["web-1".into()],
            at_unix_ms: 1,
            params: serde_json::json!({"cutoff": "2026-09-03T02:00:00Z"}),
        }
    }

    fn ended(step: &str, host: Option<&str>, state: StepState) -> Event {
        Event::StepEnded {
            step: step.into(),
            host: host.map(str::to_string),
            state,
            detail: String::new(),
            at_unix_ms: 2,
            duration_ms: 1,
            data: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_journal_reads_back_what_was_appended() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::create(root.path(), "20261202-020000-ab12").unwrap();
        j.append(&started("20261202-020000-ab12")).unwrap();
        j.append(&ended("patch", Some("web-1"), StepState::Succeeded)).unwrap();
        let c = read_run(root.path(), "20261202-020000-ab12").unwrap();
        assert_eq!(c.events.len(), 2);
        assert_eq!(c.step_state("patch", Some("web-1")), Some(StepState::Succeeded));
        assert_eq!(c.step_state("patch", Some("web-2")), None);
        assert_eq!(c.params().unwrap()["cutoff"], "2026-09-03T02:00:00Z");
        assert_eq!(list_runs(root.path()).unwrap(), ["20261202-020000-ab12"]);
    }

    #[test]
    fn a_second_journal_for_the_same_run_is_refused() {
        let root = tempfile::tempdir().unwrap();
        Journal::create(root.path(), "r-1").unwrap();
        assert!(matches!(Journal::create(root.path(), "r-1"), Err(JournalError::Exists { .. })));
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_ended_before_the_next_event() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::create(root.path(), "r-2").unwrap();
        j.append(&started("r-2")).unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"event":"step_ended","step":"pa"#).unwrap();
        drop(f);
        let (mut j, c) = Journal::reopen(root.path(), "r-2").unwrap();
        assert!(c.truncated_tail);
        assert_eq!(c.events.len(), 1);
        j.append(&ended("patch", None, StepState::Failed)).unwrap();
        let c = read_run(root.path(), "r-2").unwrap();
        assert_eq!(c.events.len(), 3, "the repair note and the new event are on lines of their own");
        assert!(matches!(c.events[1], Event::TailRepaired { .. }));
        assert_eq!(c.step_state("patch", None), Some(StepState::Failed));
    }

    #[test]
    fn a_corrupt_line_in_the_middle_is_an_error_naming_the_line() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("runs/r-3");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("journal.jsonl"), "not json\n{\"event\":\"run_ended\",\"outcome\":\"ok\",\"at_unix_ms\":1}\n").unwrap();
        let err = read_run(root.path(), "r-3").unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { line: 1, .. }), "{err}");
    }

    #[test]
    fn run_ids_that_could_escape_the_folder_are_refused() {
        for bad in ["../x", "a/b", "", ".", "x y"] {
            assert!(validate_run_id(bad).is_err(), "{bad:?}");
        }
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(read_run(root.path(), "../../etc"), Err(JournalError::BadRunId(_))));
        assert!(matches!(read_run(root.path(), "nope"), Err(JournalError::NoSuchRun { .. })));
    }

    #[test]
    fn idempotency_keys_are_stable_per_run_host_and_step() {
        assert_eq!(idempotency_key("r-1", "web-1", "patch"), idempotency_key("r-1", "web-1", "patch"));
        assert_ne!(idempotency_key("r-1", "web-1", "patch"), idempotency_key("r-2", "web-1", "patch"));
        let id = new_run_id(chrono::Utc::now());
        validate_run_id(&id).unwrap();
    }
}
