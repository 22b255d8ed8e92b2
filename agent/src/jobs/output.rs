//! A job's output log: appended to a file as output arrives and announced to watchers by
//! its length, never held in memory.
//!
//! The `Progress` value (bytes written so far, and the final record once the job ended)
//! is the only thing watchers wait on. Both change in one update at the end, so a
//! watcher that sees the final record also knows the exact final length of the log.

use std::path::Path;
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

/// The writing end of a job's output log. One per running job.
pub struct OutputLog {
    file: tokio::fs::File,
    written: u64,
    progress: watch::Sender<Progress>,
}

impl OutputLog {
    /// Opens the log for appending; `progress` is the job's watch channel.
    pub async fn open(
        path: &Path,
        progress: watch::Sender<Progress>,
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
        })
    }

    /// Appends bytes and tells watchers. An empty slice is a no-op.
    pub async fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.file.write_all(data).await?;
        // tokio's File completes writes in the background: flush so that readers find the
        // bytes before we announce them.
        self.file.flush().await?;
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
