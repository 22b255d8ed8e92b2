//! The audit log: one JSON object per line for every request that changes (or tried to
//! change) the host: job starts, refusals, denials, cancels, and each job's outcome.
//!
//! A line is written and fsynced before the change it records begins; if that fails the
//! change does not happen. Lines are only ever appended, never rewritten. The file is
//! reopened for every line so that an external rotation of it is harmless.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ops_proto::identity::PeerIdentity;
use serde_json::{Map, Value};

/// Appends audit lines to one file.
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    // Serialises appends so that lines never interleave and fsyncs are not racing.
    lock: tokio::sync::Mutex<()>,
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
        }
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
        }
        if let Value::Object(extra) = fields {
            line.extend(extra);
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let _guard = self.lock.lock().await;
        let path = self.path.clone();
        let res = crate::pools::JOB_STORAGE.spawn(move || append_line(&path, text.as_bytes())).await;
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
        assert_eq!(lines[1]["state"], "succeeded");
    }
}
