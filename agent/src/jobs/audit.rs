//! The audit log: one JSON object per line for every request that changes (or tried to
//! change) the host: job starts, refusals, denials, cancels, and each job's outcome.
//!
//! A line is written and fsynced before the change it records begins; if that fails the
//! change does not happen. Lines are only ever appended, never rewritten. The file is
//! reopened for every line so that an external rotation of it is harmless.
//!
//! Each line names the caller by certificate (common name, role, serial, SHA-256
//! fingerprint) and by remote address. A last line cut short by a crash is found when the
//! log is opened: it is named in the agent's log and the next line starts on a fresh line,
//! so one torn line never makes the next one unreadable.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ops_proto::identity::PeerIdentity;
use serde_json::{Map, Value};

/// Appends audit lines to one file.
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    // Serialises appends so that lines never interleave and fsyncs are not racing.
    lock: tokio::sync::Mutex<()>,
    // Set when the file ends inside a line: the next append starts with a newline.
    torn: AtomicBool,
}

/// What opening the log found at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornLine {
    /// Byte offset where the unfinished line starts.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// An audit line that could not be made durable.
#[derive(Debug, thiserror::Error)]
#[error("cannot append to the audit log {}: {source}", path.display())]
pub struct AuditError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl Audit {
    pub fn new(path: PathBuf) -> Audit {
        Audit {
            path,
            lock: tokio::sync::Mutex::new(()),
            torn: AtomicBool::new(false),
        }
    }

    /// Blocking: an audit log on `path`, checking whether its last line was cut short
    /// (a crash mid-write). A missing file is an empty log; an unreadable one is reported
    /// when the first line is appended.
    pub fn open(path: PathBuf) -> (Audit, Option<TornLine>) {
        let torn = torn_tail(&path).ok().flatten();
        let audit = Audit::new(path);
        audit.torn.store(torn.is_some(), Ordering::SeqCst);
        (audit, torn)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` with the current time and the caller, then fsyncs.
    pub async fn record(
        &self,
        event: &str,
        caller: Option<&PeerIdentity>,
        fields: Value,
    ) -> Result<(), AuditError> {
        let mut line = Map::new();
        line.insert(
            "time".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        line.insert("event".into(), Value::String(event.into()));
        if let Some(c) = caller {
            line.insert("caller".into(), Value::String(c.name.clone()));
            line.insert("role".into(), Value::String(c.role_claim.clone()));
            line.insert("caller_serial".into(), Value::String(c.serial.clone()));
            line.insert("caller_sha256".into(), Value::String(c.fingerprint_sha256.clone()));
            let addr = c.remote_addr.map_or(Value::Null, |a| Value::String(a.to_string()));
            line.insert("caller_addr".into(), addr);
        }
        if let Value::Object(extra) = fields {
            line.extend(extra);
        }
        let _guard = self.lock.lock().await;
        let torn = self.torn.load(Ordering::SeqCst);
        let mut text = if torn { String::from("\n") } else { String::new() };
        text.push_str(&Value::Object(line).to_string());
        text.push('\n');
        let path = self.path.clone();
        let res = crate::pools::JOB_STORAGE.spawn(move || append_line(&path, text.as_bytes())).await;
        if matches!(res, Ok(Ok(()))) && torn {
            self.torn.store(false, Ordering::SeqCst);
        }
        match res {
            Ok(r) => r.map_err(|source| AuditError {
                path: self.path.clone(),
                source,
            }),
            Err(join) => Err(AuditError {
                path: self.path.clone(),
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }
}

/// Blocking: the last `finished` line of each of `ids` in the log at `path` (read line
/// by line, so memory stays one line). Used only after a crash, for jobs whose record
/// says they never ended, so that an outcome already audited is not audited twice.
pub fn finished_lines(path: &Path, ids: &[String]) -> std::collections::HashMap<String, Value> {
    use std::io::BufRead;
    let mut found = std::collections::HashMap::new();
    let Ok(f) = std::fs::File::open(path) else {
        return found;
    };
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    for line in std::io::BufReader::new(f).split(b'\n').map_while(Result::ok) {
        if memchr::memmem::find(&line, b"\"event\":\"finished\"").is_none() {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        if let Some(id) = v["job_id"].as_str().filter(|id| wanted.contains(id)) {
            found.insert(id.to_string(), v);
        }
    }
    found
}

/// Longest tail read to find where a torn last line starts; a longer one is reported
/// from this many bytes before the end.
const TAIL_SCAN: u64 = 1024 * 1024;

/// The unfinished last line of the file, if it does not end with a newline.
fn torn_tail(path: &Path) -> std::io::Result<Option<TornLine>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(TAIL_SCAN);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.take(TAIL_SCAN).read_to_end(&mut tail)?;
    if tail.last() == Some(&b'\n') {
        return Ok(None);
    }
    let from = memchr::memrchr(b'\n', &tail).map_or(0, |i| i + 1) as u64;
    Ok(Some(TornLine {
        offset: start + from,
        len: len - start - from,
    }))
}

fn append_line(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(line)?;
    f.sync_data()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ops_proto::identity::Role;

    #[tokio::test]
    async fn lines_carry_time_event_caller_and_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let audit = Audit::new(tmp.path().join("audit.log"));
        let who = PeerIdentity {
            name: "ci".into(),
            role: Some(Role::Operator),
            role_claim: "operator".into(),
            serial: "01:02".into(),
            fingerprint_sha256: "ab".repeat(32),
            remote_addr: "127.0.0.1:4000".parse().ok(),
        };
        audit
            .record("start", Some(&who), serde_json::json!({"job_id": "j1"}))
            .await
            .unwrap();
        audit
            .record(
                "finished",
                None,
                serde_json::json!({"job_id": "j1", "state": "succeeded"}),
            )
            .await
            .unwrap();
        let text = std::fs::read_to_string(audit.path()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["caller"], "ci");
        assert_eq!(lines[0]["role"], "operator");
        assert_eq!(lines[0]["event"], "start");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[0]["caller_serial"], "01:02");
        assert_eq!(lines[0]["caller_addr"], "127.0.0.1:4000");
        assert_eq!(lines[1]["state"], "succeeded");
    }

    #[tokio::test]
    async fn a_torn_last_line_is_found_and_the_next_line_starts_fresh() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.log");
        std::fs::write(&path, b"{\"event\":\"start\"}\n{\"event\":\"fin").unwrap();
        let (audit, torn) = Audit::open(path.clone());
        assert_eq!(torn, Some(TornLine { offset: 18, len: 13 }));
        audit.record("finished", None, serde_json::json!({"job_id": "j2"})).await.unwrap();
        audit.record("finished", None, serde_json::json!({"job_id": "j3"})).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[1], "{\"event\":\"fin");
        for l in [lines[0], lines[2], lines[3]] {
            serde_json::from_str::<Value>(l).unwrap();
        }
        let (_, torn) = Audit::open(path);
        assert_eq!(torn, None);
    }
}
