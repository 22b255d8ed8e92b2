//! A job's output log: appended to a file as output arrives and announced to watchers by
//! its length, never held in memory.
//!
//! The `Progress` value (bytes written so far, and the final record once the job ended)
//! is the only thing watchers wait on. Both change in one update at the end, so a
//! watcher that sees the final record also knows the exact final length of the log.
//!
//! Two bounds hold for every append: the job's output never passes its cap, and the
//! state directory's filesystem keeps its free-space floor (room for the job's record and
//! audit line). A write that would break either is refused, and the log remembers which
//! bound was hit so that the job ends `failed` saying so, whatever its kind made of the
//! write error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ops_proto::v1::Job;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// What watchers of one job see.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Bytes in the output log that are complete and readable.
    pub written: u64,
    /// The job's final record, once it has ended.
    pub finished: Option<Arc<Job>>,
}

/// The bounds on one job's output.
#[derive(Debug, Clone)]
pub struct OutputLimits {
    /// Most bytes the log may hold.
    pub max_bytes: u64,
    /// Free bytes to keep on the filesystem holding `state_dir`.
    pub min_free_bytes: u64,
    pub state_dir: PathBuf,
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`. Root may write
/// into the reserved blocks, but the floor is kept below what anyone else sees.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The writing end of a job's output log. One per running job.
pub struct OutputLog {
    file: tokio::fs::File,
    written: u64,
    progress: watch::Sender<Progress>,
    limits: OutputLimits,
    limit_hit: Option<String>,
}

impl OutputLog {
    /// Opens the log for appending; `progress` is the job's watch channel.
    pub async fn open(
        path: &Path,
        progress: watch::Sender<Progress>,
        limits: OutputLimits,
    ) -> std::io::Result<OutputLog> {
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .await?;
        let written = file.metadata().await?.len();
        progress.send_modify(|p| p.written = written);
        Ok(OutputLog {
            file,
            written,
            progress,
            limits,
            limit_hit: None,
        })
    }

    /// Which bound, if any, a write of `len` more bytes would break.
    async fn over_limit(&self, len: u64) -> Option<String> {
        let l = &self.limits;
        if self.written.saturating_add(len) > l.max_bytes {
            return Some(format!(
                "the job's output reached its cap of {} bytes ([jobs] max_output_bytes); the job was stopped",
                l.max_bytes
            ));
        }
        let dir = l.state_dir.clone();
        let free = crate::pools::JOB_STORAGE.spawn(move || free_bytes(&dir)).await;
        match free {
            Ok(Ok(free)) if free.saturating_sub(len) >= l.min_free_bytes => None,
            Ok(Ok(free)) => Some(format!(
                "free space on {} fell to {free} bytes, below the floor of {} bytes ([jobs] min_free_bytes); \
                 the job was stopped",
                l.state_dir.display(),
                l.min_free_bytes
            )),
            // Unknown free space: the write itself will tell.
            _ => None,
        }
    }

    /// The bound this log hit, once it refused a write.
    pub fn limit_hit(&self) -> Option<&str> {
        self.limit_hit.as_deref()
    }

    /// Appends bytes and tells watchers. An empty slice is a no-op.
    pub async fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(hit) = &self.limit_hit {
            return Err(std::io::Error::other(hit.clone()));
        }
        if let Some(hit) = self.over_limit(data.len() as u64).await {
            self.limit_hit = Some(hit.clone());
            return Err(std::io::Error::other(hit));
        }
        // tokio's File completes writes in the background: flush so that readers find the
        // bytes before we announce them.
        let res = match self.file.write_all(data).await {
            Ok(()) => self.file.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            // Part of the data may have landed: count what the file holds, so the record
            // and watchers agree with the disk.
            if let Ok(m) = self.file.metadata().await {
                self.written = m.len();
                let written = self.written;
                self.progress.send_modify(|p| p.written = written);
            }
            self.limit_hit = Some(format!("cannot write the job's output log: {e}; the job was stopped"));
            return Err(e);
        }
        self.written += data.len() as u64;
        let written = self.written;
        self.progress.send_modify(|p| p.written = written);
        Ok(())
    }

    /// Appends one line written by the agent itself, marked so it cannot be mistaken for
    /// the job's own output.
    pub async fn note(&mut self, line: &str) -> std::io::Result<()> {
        let mut text = String::with_capacity(line.len() + 9);
        text.push_str("[agent] ");
        text.push_str(line);
        text.push('\n');
        self.append(text.as_bytes()).await
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the log durable; called once when the job ends.
    pub async fn sync(&mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        self.file.sync_data().await
    }
}
