//! The enrolment records beside the fleet CA (`[enrol] pki_dir`): who enrolled and with
//! which certificate (`enrolled.jsonl`), which join tokens have been used
//! (`tokens-used.jsonl`), and every attempt, granted or refused (`enrol-audit.jsonl`).
//! JSON lines, appended and fsynced; a decision and its record happen under one exclusive
//! lock (`enrol.lock`), so two controllers never enrol the same instance twice or spend
//! one token twice.
//!
//! A line that does not parse is an error naming the file and line, never skipped: the
//! replay and single-use checks depend on every line being read.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::decide::Prior;

pub const ENROLLED_FILE: &str = "enrolled.jsonl";
pub const TOKENS_FILE: &str = "tokens-used.jsonl";
pub const AUDIT_FILE: &str = "enrol-audit.jsonl";
const LOCK_FILE: &str = "enrol.lock";

/// Reading or writing the records failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: {reason} (fix or remove the line; enrolment stays refused until then)")]
    BadLine { path: PathBuf, line: usize, reason: String },
}

/// One line of `enrolled.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentRecord {
    pub time: String,
    /// `enrolled`, `rotated` or `removed`.
    pub event: String,
    /// The instance id (EC2) or host name (join token).
    pub identity: String,
    /// The fleet's name for the host.
    pub host: String,
    /// `ec2-instance-identity`, `join-token`, or empty for a removal.
    #[serde(default)]
    pub method: String,
    pub serial: String,
    #[serde(default)]
    pub not_after: String,
    /// The operator certificate that did it.
    pub by: String,
}

/// The records in one folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Held while a decision is made and recorded.
pub struct StoreLock {
    _file: std::fs::File,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store { dir: dir.to_path_buf() }
    }

    /// Blocking: the exclusive lock over decisions.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.dir.join(LOCK_FILE);
        let io = |source| StoreError::Io { what: "lock", path: path.clone(), source };
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path).map_err(io)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| io(e.into()))?;
        Ok(StoreLock { _file: file })
    }

    /// Every enrolment, rotation and removal, oldest first.
    pub fn records(&self) -> Result<Vec<EnrolmentRecord>, StoreError> {
        read_lines(&self.dir.join(ENROLLED_FILE))
    }

    /// The newest enrolment of `identity` (removed or not: an instance id never comes back).
    pub fn prior(&self, identity: &str) -> Result<Option<Prior>, StoreError> {
        Ok(self
            .records()?
            .into_iter()
            .rev()
            .find(|r| r.identity == identity && r.event == "enrolled")
            .map(|r| Prior { when: r.time, serial: r.serial }))
    }

    pub fn record(&self, r: &EnrolmentRecord) -> Result<(), StoreError> {
        append(&self.dir.join(ENROLLED_FILE), &serde_json::to_value(r).unwrap_or_default())
    }

    /// Whether the join token `id` has enrolled a host already.
    pub fn token_used(&self, id: &str) -> Result<bool, StoreError> {
        let used: Vec<serde_json::Value> = read_lines(&self.dir.join(TOKENS_FILE))?;
        Ok(used.iter().any(|v| v.get("id").and_then(|i| i.as_str()) == Some(id)))
    }

    pub fn spend_token(&self, id: &str, host: &str) -> Result<(), StoreError> {
        append(&self.dir.join(TOKENS_FILE), &serde_json::json!({"time": now(), "id": id, "host": host}))
    }

    /// Appends one attempt to the audit record (the time is added here).
    pub fn audit(&self, mut line: serde_json::Value) -> Result<(), StoreError> {
        if let serde_json::Value::Object(m) = &mut line {
            m.insert("time".into(), serde_json::Value::String(now()));
        }
        append(&self.dir.join(AUDIT_FILE), &line)
    }
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, StoreError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Io { what: "read", path: path.to_path_buf(), source }),
    };
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| StoreError::Io { what: "read", path: path.to_path_buf(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| StoreError::BadLine { path: path.to_path_buf(), line: n + 1, reason: e.to_string() })?);
    }
    Ok(out)
}

fn append(path: &Path, value: &serde_json::Value) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { what: "append to", path: path.to_path_buf(), source };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o644).open(path).map_err(io)?;
    let mut text = value.to_string();
    text.push('\n');
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(identity: &str, event: &str, serial: &str) -> EnrolmentRecord {
        EnrolmentRecord {
            time: now(),
            event: event.into(),
            identity: identity.into(),
            host: "web-1".into(),
            method: "ec2-instance-identity".into(),
            serial: serial.into(),
            not_after: String::new(),
            by: "controller".into(),
        }
    }

    #[test]
    fn a_prior_enrolment_is_found_and_a_token_is_spent_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        assert!(s.prior("i-1").unwrap().is_none());
        s.record(&rec("i-1", "enrolled", "01")).unwrap();
        s.record(&rec("i-1", "rotated", "02")).unwrap();
        assert_eq!(s.prior("i-1").unwrap().unwrap().serial, "01");
        assert!(!s.token_used("t").unwrap());
        s.spend_token("t", "build-1").unwrap();
        assert!(s.token_used("t").unwrap());
    }

    #[test]
    fn a_damaged_line_is_an_error_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        s.record(&rec("i-1", "enrolled", "01")).unwrap();
        std::fs::OpenOptions::new().append(true).open(dir.path().join(ENROLLED_FILE)).unwrap().write_all(b"{oops\n").unwrap();
        let e = s.prior("i-1").unwrap_err().to_string();
        assert!(e.contains("enrolled.jsonl line 2"), "{e}");
    }
}
