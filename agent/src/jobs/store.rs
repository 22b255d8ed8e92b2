//! Jobs on disk: `<state_dir>/jobs/<job id>/job.pb` (a `record::JobRecord`, protobuf
//! encoded; the wire `Job` is converted at this boundary only, and old agents' records,
//! which were wire `Job`s, stay readable) and `output.log` (the complete, untruncated
//! output).
//!
//! Records are replaced atomically (temp file, fsync, rename, fsync of the directory) so
//! that a crash leaves either the old record or the new one, never half of one. This
//! module is blocking I/O only; callers run it on the blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ops_proto::v1::Job;
use prost::Message;

use super::record::JobRecord;

const RECORD_FILE: &str = "job.pb";
const RECORD_TMP: &str = "job.pb.tmp";
const OUTPUT_FILE: &str = "output.log";

/// A jobs directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A failed store operation, naming what and where.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct StoreError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A job record found on disk that could not be read.
#[derive(Debug)]
pub struct Unreadable {
    pub dir: PathBuf,
    pub reason: String,
}

impl Store {
    /// Opens (creating, mode 0700: outputs may hold sensitive data) `<state_dir>/jobs`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let dir = state_dir.join("jobs");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err("create the jobs directory", &dir))?;
        Ok(Store { dir })
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn output_path(&self, id: &str) -> PathBuf {
        self.job_dir(id).join(OUTPUT_FILE)
    }

    /// Creates a new job's directory and its empty output log, then writes its record.
    pub fn create(&self, job: &Job) -> Result<(), StoreError> {
        let dir = self.job_dir(&job.id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(err("create the job directory", &dir))?;
        let out = self.output_path(&job.id);
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&out)
            .map_err(err("create the output log", &out))?;
        sync_dir(&self.dir)?;
        self.write(job)
    }

    /// Replaces a job's record atomically.
    pub fn write(&self, job: &Job) -> Result<(), StoreError> {
        let dir = self.job_dir(&job.id);
        let tmp = dir.join(RECORD_TMP);
        let dst = dir.join(RECORD_FILE);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        f.write_all(&JobRecord::from(job).encode_to_vec())
            .map_err(err("write", &tmp))?;
        f.sync_all().map_err(err("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &dst).map_err(err("rename into place", &dst))?;
        sync_dir(&dir)
    }

    /// Every readable job record, plus the directories whose record could not be read
    /// (left in place for a human: they may be the only trace of a job).
    pub fn load_all(&self) -> Result<(Vec<Job>, Vec<Unreadable>), StoreError> {
        let mut jobs = Vec::new();
        let mut bad = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(err("list", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(err("list", &self.dir))?;
            let dir = entry.path();
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let record = dir.join(RECORD_FILE);
            match fs::read(&record) {
                Ok(bytes) => match JobRecord::decode(bytes.as_slice()).map(Job::from) {
                    Ok(job) if Some(job.id.as_str()) == entry.file_name().to_str() => {
                        jobs.push(job)
                    }
                    Ok(job) => bad.push(Unreadable {
                        reason: format!("record names job {:?}, not its directory", job.id),
                        dir,
                    }),
                    Err(e) => bad.push(Unreadable {
                        reason: format!("corrupt record: {e}"),
                        dir,
                    }),
                },
                Err(e) => bad.push(Unreadable {
                    reason: format!("cannot read {}: {e}", record.display()),
                    dir,
                }),
            }
        }
        Ok((jobs, bad))
    }

    /// Blocking: removes what a crash can leave behind, and returns each removal with
    /// why: a job directory holding nothing but a temporary record and an empty output log
    /// (the crash came before its first record was in place), and temporary records beside
    /// a complete one. A directory with anything else in it is left for `load_all`.
    pub fn remove_leftovers(&self) -> Vec<(PathBuf, String)> {
        let mut removed = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return removed;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let tmp = dir.join(RECORD_TMP);
            let has_record = dir.join(RECORD_FILE).exists();
            if has_record {
                if tmp.exists() && fs::remove_file(&tmp).is_ok() {
                    removed.push((tmp, "removed a temporary record left by a crash".into()));
                }
                continue;
            }
            let Ok(names) = fs::read_dir(&dir) else {
                continue;
            };
            let only_leftovers = names.flatten().all(|f| {
                let name = f.file_name();
                name == RECORD_TMP
                    || (name == OUTPUT_FILE && f.metadata().map(|m| m.len() == 0).unwrap_or(false))
            });
            if only_leftovers && fs::remove_dir_all(&dir).is_ok() {
                removed.push((dir, "removed a job directory left by a crash before its first record".into()));
            }
        }
        removed
    }

    /// Length of a job's output log (0 when it is missing).
    pub fn output_len(&self, id: &str) -> u64 {
        fs::metadata(self.output_path(id))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Deletes a job's directory.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.job_dir(id);
        fs::remove_dir_all(&dir).map_err(err("remove", &dir))
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync directory", dir))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ops_proto::v1::JobState;

    #[test]
    fn records_round_trip_and_replace_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut job = Job {
            id: "j1".into(),
            state: JobState::Running as i32,
            ..Default::default()
        };
        store.create(&job).unwrap();
        job.state = JobState::Succeeded as i32;
        store.write(&job).unwrap();
        let (jobs, bad) = store.load_all().unwrap();
        assert_eq!(jobs, vec![job]);
        assert!(bad.is_empty());
        assert!(!store.job_dir("j1").join(RECORD_TMP).exists());
        assert_eq!(store.output_len("j1"), 0);
    }

    #[test]
    fn unreadable_records_are_reported_not_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        fs::create_dir(store.job_dir("broken")).unwrap();
        fs::write(store.job_dir("broken").join(RECORD_FILE), b"\xff\xff\xff").unwrap();
        let (jobs, bad) = store.load_all().unwrap();
        assert!(jobs.is_empty());
        assert_eq!(bad.len(), 1);
        assert!(store.job_dir("broken").exists());
    }
}
