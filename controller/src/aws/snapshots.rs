//! Taking and waiting on snapshots: EBS snapshots of volumes and RDS snapshots of a
//! database instance, the pre-maintenance safety net. Unlike the other adapters this one
//! changes AWS (it creates snapshots), and it is written so that a resumed run never
//! takes a second one: an EBS snapshot is looked up by its run tags before it is created,
//! and an RDS snapshot's name comes from the run, so "already exists" means "ours".

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

use super::ec2::{describe_snapshots_tagged, EbsSnapshot};
use super::error::classify;
use super::AwsError;

/// Creates an EBS snapshot of `volume_id` with `tags`, unless a snapshot of that volume
/// carrying all of `tags` already exists (a resumed run): then that one is returned.
/// Returns (snapshot id, created now).
pub async fn ensure_ebs_snapshot(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    description: &str,
    tags: &BTreeMap<String, String>,
) -> Result<(String, bool), AwsError> {
    let existing = describe_snapshots_tagged(ec2, tags).await?;
    if let Some(s) = existing.iter().find(|s| s.volume_id.as_deref() == Some(volume_id) && s.state != "error") {
        return Ok((s.id.clone(), false));
    }
    let spec = TagSpecification::builder()
        .resource_type(ResourceType::Snapshot)
        .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
        .build();
    let out = ec2
        .create_snapshot()
        .volume_id(volume_id)
        .description(description)
        .tag_specifications(spec)
        .send()
        .await
        .map_err(|e| classify("EC2", "CreateSnapshot", e))?;
    match out.snapshot_id() {
        Some(id) => Ok((id.to_string(), true)),
        None => Err(AwsError {
            service: "EC2",
            call: "CreateSnapshot",
            cause: super::AwsCause::Other(format!("no snapshot id returned for volume {volume_id}")),
        }),
    }
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Every resource reached its ready state.
    Ready,
    /// One failed: (id, its state).
    Failed(String, String),
    /// The deadline ran out: the ids still not ready, with their states.
    DeadlineExceeded(Vec<(String, String)>),
}

/// Polls the snapshots `ids` until all are `completed`, one is `error`, or `deadline`.
pub async fn wait_ebs_snapshots(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
    deadline: Duration,
    poll: Duration,
) -> Result<WaitOutcome, AwsError> {
    let started = Instant::now();
    loop {
        let out = ec2
            .describe_snapshots()
            .set_snapshot_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| classify("EC2", "DescribeSnapshots", e))?;
        let states: Vec<(String, String)> = out
            .snapshots()
            .iter()
            .map(|s| {
                let st = s.state().map(|x| x.as_str().to_string()).unwrap_or_else(|| "unknown".into());
                (s.snapshot_id().unwrap_or_default().to_string(), st)
            })
            .collect();
        if let Some((id, st)) = states.iter().find(|(_, st)| st == "error") {
            return Ok(WaitOutcome::Failed(id.clone(), st.clone()));
        }
        let missing: Vec<(String, String)> = ids
            .iter()
            .filter_map(|id| match states.iter().find(|(s, _)| s == id) {
                Some((_, st)) if st == "completed" => None,
                Some((_, st)) => Some((id.clone(), st.clone())),
                None => Some((id.clone(), "not found".to_string())),
            })
            .collect();
        if missing.is_empty() {
            return Ok(WaitOutcome::Ready);
        }
        if started.elapsed() + poll > deadline {
            return Ok(WaitOutcome::DeadlineExceeded(missing));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Creates RDS snapshot `snapshot_id` of `instance_id`; a snapshot that already has that
/// id (the same run, resumed) is taken as ours. Returns true when created now.
pub async fn ensure_db_snapshot(
    rds: &aws_sdk_rds::Client,
    instance_id: &str,
    snapshot_id: &str,
    tags: &BTreeMap<String, String>,
) -> Result<bool, AwsError> {
    let res = rds
        .create_db_snapshot()
        .db_instance_identifier(instance_id)
        .db_snapshot_identifier(snapshot_id)
        .set_tags(Some(
            tags.iter().map(|(k, v)| aws_sdk_rds::types::Tag::builder().key(k).value(v).build()).collect(),
        ))
        .send()
        .await;
    match res {
        Ok(_) => Ok(true),
        Err(e) => {
            let err = classify("RDS", "CreateDBSnapshot", e);
            if err.code() == Some("DBSnapshotAlreadyExists") {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}

/// Polls RDS snapshot `snapshot_id` until `available`, a failure state, or `deadline`.
pub async fn wait_db_snapshot(
    rds: &aws_sdk_rds::Client,
    snapshot_id: &str,
    deadline: Duration,
    poll: Duration,
) -> Result<WaitOutcome, AwsError> {
    let started = Instant::now();
    loop {
        let out = rds
            .describe_db_snapshots()
            .db_snapshot_identifier(snapshot_id)
            .send()
            .await
            .map_err(|e| classify("RDS", "DescribeDBSnapshots", e))?;
        let status = out
            .db_snapshots()
            .first()
            .and_then(|s| s.status())
            .unwrap_or("not found")
            .to_string();
        match status.as_str() {
            "available" => return Ok(WaitOutcome::Ready),
            "failed" | "deleted" | "deleting" | "incompatible-restore" | "not found" => {
                return Ok(WaitOutcome::Failed(snapshot_id.to_string(), status))
            }
            _ => {}
        }
        if started.elapsed() + poll > deadline {
            return Ok(WaitOutcome::DeadlineExceeded(vec![(snapshot_id.to_string(), status)]));
        }
        tokio::time::sleep(poll).await;
    }
}

/// The EBS snapshots of a run (by its `RunId` tag), for reports and verification.
pub async fn run_snapshots(ec2: &aws_sdk_ec2::Client, run_id: &str) -> Result<Vec<EbsSnapshot>, AwsError> {
    describe_snapshots_tagged(ec2, &BTreeMap::from([("RunId".to_string(), run_id.to_string())])).await
}
