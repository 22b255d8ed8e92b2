//! Streams a job's output log from a byte offset, following it while the job runs, then
//! the job's final record.
//!
//! Reads from disk in `WATCH_CHUNK_BYTES` pieces into a channel of
//! `WATCH_CHANNEL_CAPACITY` events, so a watcher costs at most a couple of chunks
//! whatever the output's size, and a slow watcher slows only itself. Each chunk carries
//! its offset: a watcher that reconnects from `offset + data.len()` of the last chunk it
//! got misses nothing and sees nothing twice.

use std::io::SeekFrom;
use std::path::PathBuf;

use ops_proto::v1::{job_event, JobEvent, OutputChunk};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::output::Progress;
use super::{WATCH_CHANNEL_CAPACITY, WATCH_CHUNK_BYTES};

type Event = Result<JobEvent, Status>;

/// Starts the producer task and returns the stream the RPC handler hands to tonic.
pub(super) fn spawn(
    path: PathBuf,
    progress: watch::Receiver<Progress>,
    from: u64,
) -> ReceiverStream<Event> {
    let (tx, rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
    tokio::spawn(async move {
        if let Err(status) = produce(&path, progress, from, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    ReceiverStream::new(rx)
}

/// Ok when the stream ended normally or the watcher went away.
async fn produce(
    path: &PathBuf,
    mut progress: watch::Receiver<Progress>,
    mut offset: u64,
    tx: &mpsc::Sender<Event>,
) -> Result<(), Status> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| {
        Status::internal(format!(
            "cannot open the job's output log {}: {e}",
            path.display()
        ))
    })?;
    file.seek(SeekFrom::Start(offset))
        .await
        .map_err(|e| Status::internal(format!("cannot seek in the job's output log: {e}")))?;
    loop {
        let (written, finished) = {
            let p = progress.borrow_and_update();
            (p.written, p.finished.clone())
        };
        while offset < written {
            let want = usize::try_from(written - offset)
                .unwrap_or(usize::MAX)
                .min(WATCH_CHUNK_BYTES);
            let mut data = vec![0u8; want];
            let mut got = 0;
            while got < want {
                let n = file.read(&mut data[got..]).await.map_err(|e| {
                    Status::internal(format!("cannot read the job's output log: {e}"))
                })?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            if got == 0 {
                return Err(Status::data_loss(format!(
                    "the job's output log ends at {offset} bytes but {written} were recorded"
                )));
            }
            data.truncate(got);
            let event = JobEvent {
                event: Some(job_event::Event::Output(OutputChunk { offset, data })),
            };
            if tx.send(Ok(event)).await.is_err() {
                return Ok(());
            }
            offset += got as u64;
        }
        if let Some(job) = finished {
            let _ = tx
                .send(Ok(JobEvent {
                    event: Some(job_event::Event::Finished((*job).clone())),
                }))
                .await;
            return Ok(());
        }
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    return Err(Status::unavailable("the agent stopped tracking this job; watch it again"));
                }
            }
            _ = tx.closed() => return Ok(()),
        }
    }
}
