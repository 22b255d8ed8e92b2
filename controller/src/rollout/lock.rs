//! One run at a time per fleet: a lock file under `$XDG_STATE_HOME/ops/locks/`, held with
//! an exclusive `flock` for as long as the run lives and naming its holder (run id, pid,
//! user, host, since). The kernel drops the `flock` when the holder dies, so "held" is
//! never guessed from a pid that may have been reused; a holder that died leaves its
//! name in the file, and that stale lock is only taken over with `--break-lock`.
//!
//! The lock guards runs started from this machine's state folder: two controllers on two
//! machines do not see each other's locks (the docs say so).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};

/// Who holds (or last held) a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub run_id: String,
    pub command: String,
    pub pid: u32,
    pub user: String,
    pub host: String,
    pub since_unix_ms: i64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = chrono::DateTime::from_timestamp_millis(self.since_unix_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "an unknown time".to_string());
        write!(f, "run {} ({}) by {} on {}, pid {}, since {since}", self.run_id, self.command, self.user, self.host, self.pid)
    }
}

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("fleet {fleet} is locked: {holder}. Wait for it to end, or stop it")]
    Held { fleet: String, holder: Box<Holder> },
    #[error("fleet {fleet} has a stale lock: {holder}, and that process is gone. Check its run (`controller runs show {}`), then take the lock with --break-lock", holder.run_id)]
    Stale { fleet: String, holder: Box<Holder> },
    #[error("fleet {fleet} is locked by a process whose lock file {path} cannot be read")]
    Unreadable { fleet: String, path: PathBuf },
    #[error("lock file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A held lock; released (and its holder erased) when dropped.
#[derive(Debug)]
pub struct FleetLock {
    path: PathBuf,
    file: File,
    /// The stale holder this lock replaced, when `--break-lock` was used.
    pub broke: Option<Holder>,
}

/// The lock file name for a fleet key: only characters safe in a file name.
fn lock_path(root: &Path, fleet: &str) -> PathBuf {
    let safe: String =
        fleet.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    root.join("locks").join(format!("{safe}.lock"))
}

fn read_holder(file: &mut File) -> std::io::Result<Option<Holder>> {
    let mut text = String::new();
    file.rewind()?;
    file.read_to_string(&mut text)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    Ok(serde_json::from_str(text.trim()).ok())
}

impl FleetLock {
    /// Takes the fleet's lock for `holder`, or says who has it.
    pub fn acquire(root: &Path, fleet: &str, holder: Holder, break_lock: bool) -> Result<FleetLock, LockError> {
        let path = lock_path(root, fleet);
        let io = |source| LockError::Io { path: path.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(match read_holder(&mut file) {
                Ok(Some(h)) => LockError::Held { fleet: fleet.to_string(), holder: Box::new(h) },
                _ => LockError::Unreadable { fleet: fleet.to_string(), path },
            });
        }
        let previous = read_holder(&mut file).map_err(io)?;
        let broke = match previous {
            Some(stale) if !break_lock => return Err(LockError::Stale { fleet: fleet.to_string(), holder: Box::new(stale) }),
            other => other,
        };
        let text = serde_json::to_string(&holder).map_err(|e| io(std::io::Error::other(e)))?;
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_data()).map_err(io)?;
        Ok(FleetLock { path, file, broke })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FleetLock {
    fn drop(&mut self) {
        // Erase the holder while still holding the flock, so the next run sees a clean
        // release and not a stale lock; closing the file then drops the flock.
        if let Err(e) = self.file.set_len(0).and_then(|()| self.file.sync_data()) {
            tracing::warn!(path = %self.path.display(), "could not clear the lock file: {e}");
        }
    }
}

/// Who runs this controller: for the lock file and the journal.
pub fn this_holder(run_id: &str, command: &str) -> Holder {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", rustix::process::getuid().as_raw()));
    let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
    Holder {
        run_id: run_id.to_string(),
        command: command.to_string(),
        pid: std::process::id(),
        user,
        host,
        since_unix_ms: chrono::Utc::now().timestamp_millis(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_on_the_same_fleet_is_refused_naming_the_holder() {
        let root = tempfile::tempdir().unwrap();
        let first = FleetLock::acquire(root.path(), "ec2:Project=TechHealth", this_holder("r-1", "weekly-maintenance"), false)
            .unwrap();
        let err = FleetLock::acquire(root.path(), "ec2:Project=TechHealth", this_holder("r-2", "weekly-maintenance"), false)
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{text}");
        assert!(text.contains("run r-1") && text.contains("since"), "{text}");
        // Another fleet is not affected.
        FleetLock::acquire(root.path(), "static:lab", this_holder("r-3", "weekly-maintenance"), false).unwrap();
        drop(first);
        FleetLock::acquire(root.path(), "ec2:Project=TechHealth", this_holder("r-4", "weekly-maintenance"), false).unwrap();
    }

    #[test]
    fn a_lock_left_by_a_dead_holder_is_stale_and_needs_break_lock() {
        let root = tempfile::tempdir().unwrap();
        let path = lock_path(root.path(), "lab");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // What a controller killed with SIGKILL leaves: its holder record, no flock.
        let dead = Holder { pid: 999_999, ..this_holder("r-dead", "weekly-maintenance") };
        std::fs::write(&path, serde_json::to_string(&dead).unwrap()).unwrap();
        let err = FleetLock::acquire(root.path(), "lab", this_holder("r-5", "weekly-maintenance"), false).unwrap_err();
        assert!(matches!(err, LockError::Stale { .. }), "{err}");
        assert!(err.to_string().contains("--break-lock"));
        let lock = FleetLock::acquire(root.path(), "lab", this_holder("r-5", "weekly-maintenance"), true).unwrap();
        assert_eq!(lock.broke.as_ref().map(|h| h.run_id.as_str()), Some("r-dead"));
    }

    #[test]
    fn fleet_keys_cannot_escape_the_locks_folder() {
        let p = lock_path(Path::new("/s"), "../../etc/passwd");
        assert_eq!(p, Path::new("/s/locks/______etc_passwd.lock"));
    }
}
