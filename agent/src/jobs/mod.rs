//! The job engine: typed host changes (patch, cleanup, log rotation, service restart,
//! kill, named actions) that run detached from the RPC that started them, persist their
//! record and complete output under `state_dir`, and can be watched from any offset.
//!
//! This is the only code in the agent that changes the host. It must never run a command
//! line that came from the network, never act for a caller whose role is not operator,
//! and never start a change before its audit line is on disk.

pub mod audit;
pub mod config;
pub mod kinds;
pub mod limits;
mod manager;
pub mod output;
pub mod record;
mod registry;
pub mod runner;
pub mod spec;
pub mod store;
mod task;
mod watch;

pub use config::{
    ActionConfig, CleanupConfig, JobSettings, JobsConfig, KillConfig, PatchMode, ServicesConfig,
};
pub use manager::JobManager;

use audit::AuditError;
use store::StoreError;

/// Output bytes per `OutputChunk` of a watch.
pub const WATCH_CHUNK_BYTES: usize = 64 * 1024;
/// Events buffered per watcher: a slow watcher holds at most this many chunks in memory.
/// Two keep the next chunk read while the previous one is sent; with eight, fifty watchers
/// that stop reading a job with much output could hold 25 MiB between them.
pub const WATCH_CHANNEL_CAPACITY: usize = 2;
/// Jobs listed when the caller asks for 0.
pub const DEFAULT_LIST_LIMIT: usize = 50;
/// Most jobs in one `ListJobs` page, whatever the caller asks.
pub const MAX_LIST_PAGE: usize = 500;
/// Encoded bytes of jobs in one `ListJobs` page: a page ends before it would pass this,
/// so no answer comes near the 4 MB gRPC message limit (one job is far smaller, its
/// request fields being bounded by `limits`).
pub const MAX_LIST_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// Why a job request was not served. Maps onto deliberate gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no job {job_id} on this agent (it may have been pruned)")]
    NotFound { job_id: String },
    #[error("{0}")]
    InvalidSpec(String),
    #[error("{caller} may not {action}: only the operator role may start or cancel jobs")]
    PermissionDenied {
        caller: String,
        action: &'static str,
    },
    #[error("job {running} is running and only one host change runs at a time; wait for it, cancel it, or ask to queue (queue_if_busy)")]
    Busy { running: String },
    #[error("idempotency key {key:?} was already used for job {job_id} with a different spec; use a new key")]
    IdempotencyConflict { key: String, job_id: String },
    #[error("offset {offset} is past the end of job {job_id}'s output ({len} bytes so far)")]
    OffsetOutOfRange {
        job_id: String,
        offset: u64,
        len: u64,
    },
    #[error("the agent is shutting down and starts no new jobs")]
    ShuttingDown,
    #[error("invalid job settings: {0}")]
    Config(String),
    #[error("the job queue is full: {queued} jobs already wait for the slot ([jobs] max_queued = {limit}); try again later")]
    QueueFull { queued: usize, limit: usize },
    #[error("{0}; no new jobs start until space is freed")]
    NoSpace(String),
    #[error("page_token {0:?} is not one this agent handed out")]
    BadPageToken(String),
    #[error("job store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}; the job was not started")]
    Audit(#[from] AuditError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<JobError> for tonic::Status {
    fn from(e: JobError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            JobError::NotFound { .. } => tonic::Status::not_found(msg),
            JobError::InvalidSpec(_) | JobError::BadPageToken(_) => {
                tonic::Status::invalid_argument(msg)
            }
            JobError::QueueFull { .. } | JobError::NoSpace(_) => {
                tonic::Status::resource_exhausted(msg)
            }
            JobError::PermissionDenied { .. } => tonic::Status::permission_denied(msg),
            JobError::Busy { .. } => tonic::Status::failed_precondition(msg),
            JobError::IdempotencyConflict { .. } => tonic::Status::already_exists(msg),
            JobError::OffsetOutOfRange { .. } => tonic::Status::out_of_range(msg),
            JobError::ShuttingDown => tonic::Status::unavailable(msg),
            JobError::Config(_)
            | JobError::Store(_)
            | JobError::Audit(_)
            | JobError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_deliberate_codes() {
        let code = |e: JobError| tonic::Status::from(e).code();
        assert_eq!(
            code(JobError::NotFound { job_id: "x".into() }),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(JobError::InvalidSpec("bad".into())),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(JobError::PermissionDenied {
                caller: "v".into(),
                action: "start jobs"
            }),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(JobError::Busy {
                running: "j1".into()
            }),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(code(JobError::Internal("io".into())), tonic::Code::Internal);
        let s = tonic::Status::from(JobError::Busy {
            running: "j-42".into(),
        });
        assert!(s.message().contains("j-42"));
    }
}
