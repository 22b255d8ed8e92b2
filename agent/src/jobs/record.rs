//! The on-disk job record (`job.pb`), a type of its own so that the disk format is not
//! the wire format: the wire `Job` may grow fields for callers that never belong on disk,
//! and the record may carry what callers never see (`format`). `From` both ways is the
//! one conversion between them.
//!
//! The tags match those of the wire `Job` that older agents wrote as their record, so
//! those files stay readable. A field is never renumbered or reused here.

use ops_proto::v1::{Job, JobResult, JobSpec, JobState};

/// The record format this agent writes.
pub const RECORD_FORMAT: u32 = 1;

/// A job as stored under `<state_dir>/jobs/<id>/job.pb` (protobuf encoded).
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub spec: Option<JobSpec>,
    #[prost(enumeration = "JobState", tag = "3")]
    pub state: i32,
    #[prost(string, tag = "4")]
    pub idempotency_key: String,
    #[prost(int64, tag = "5")]
    pub created_unix_ms: i64,
    #[prost(int64, tag = "6")]
    pub started_unix_ms: i64,
    #[prost(int64, tag = "7")]
    pub finished_unix_ms: i64,
    #[prost(int32, optional, tag = "8")]
    pub exit_code: Option<i32>,
    #[prost(string, tag = "9")]
    pub error: String,
    #[prost(uint64, tag = "10")]
    pub output_bytes: u64,
    #[prost(string, tag = "11")]
    pub requested_by: String,
    #[prost(string, tag = "12")]
    pub requested_role: String,
    #[prost(message, optional, tag = "13")]
    pub result: Option<JobResult>,
    #[prost(uint32, tag = "14")]
    pub timeout_seconds: u32,
    /// 0 for records written by agents before this type existed, else `RECORD_FORMAT`.
    #[prost(uint32, tag = "1000")]
    pub format: u32,
}

impl From<&Job> for JobRecord {
    fn from(j: &Job) -> JobRecord {
        JobRecord {
            id: j.id.clone(),
            spec: j.spec.clone(),
            state: j.state,
            idempotency_key: j.idempotency_key.clone(),
            created_unix_ms: j.created_unix_ms,
            started_unix_ms: j.started_unix_ms,
            finished_unix_ms: j.finished_unix_ms,
            exit_code: j.exit_code,
            error: j.error.clone(),
            output_bytes: j.output_bytes,
            requested_by: j.requested_by.clone(),
            requested_role: j.requested_role.clone(),
            result: j.result.clone(),
            timeout_seconds: j.timeout_seconds,
            format: RECORD_FORMAT,
        }
    }
}

impl From<JobRecord> for Job {
    fn from(r: JobRecord) -> Job {
        Job {
            id: r.id,
            spec: r.spec,
            state: r.state,
            idempotency_key: r.idempotency_key,
            created_unix_ms: r.created_unix_ms,
            started_unix_ms: r.started_unix_ms,
            finished_unix_ms: r.finished_unix_ms,
            exit_code: r.exit_code,
            error: r.error,
            output_bytes: r.output_bytes,
            requested_by: r.requested_by,
            requested_role: r.requested_role,
            result: r.result,
            timeout_seconds: r.timeout_seconds,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_record_written_as_a_wire_job_by_an_older_agent_reads_back_the_same() {
        let job = Job {
            id: "j1".into(),
            state: JobState::Failed as i32,
            exit_code: Some(3),
            error: "boom".into(),
            output_bytes: 42,
            requested_by: "ops".into(),
            timeout_seconds: 60,
            ..Default::default()
        };
        let old = JobRecord::decode(job.encode_to_vec().as_slice()).unwrap();
        assert_eq!(old.format, 0);
        assert_eq!(Job::from(old), job);
        let new = JobRecord::from(&job);
        assert_eq!(new.format, RECORD_FORMAT);
        let back = JobRecord::decode(new.encode_to_vec().as_slice()).unwrap();
        assert_eq!(Job::from(back), job);
    }
}
