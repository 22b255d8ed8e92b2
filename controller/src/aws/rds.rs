//! RDS adapter: database instances and their snapshots, as this project's own types.
//! Every list follows pagination to the end. Read-only.

use aws_sdk_rds::Client;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::classify;
use super::{to_utc, AwsError};

const SERVICE: &str = "RDS";

/// One RDS database instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbInstance {
    pub id: String,
    /// available, backing-up, modifying, stopped, failed, storage-full, ...
    pub status: String,
    pub endpoint: Option<String>,
    pub port: Option<i32>,
    pub engine: Option<String>,
    pub class: Option<String>,
    /// Days automated backups are kept; 0 means automated backups are off.
    pub backup_retention_days: i32,
    /// e.g. "03:00-04:00" (UTC).
    pub backup_window: Option<String>,
    pub storage_encrypted: bool,
    pub publicly_accessible: bool,
    pub allocated_storage_gib: Option<i32>,
    /// Its VPC security groups.
    pub security_group_ids: Vec<String>,
}

/// One RDS snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbSnapshot {
    pub id: String,
    pub instance_id: String,
    /// available, creating, failed, ...
    pub status: String,
    /// "automated" or "manual".
    pub snapshot_type: String,
    pub created: Option<DateTime<Utc>>,
    pub allocated_storage_gib: Option<i32>,
    pub encrypted: bool,
}

/// Every database instance of the account and region.
pub async fn describe_db_instances(client: &Client) -> Result<Vec<DbInstance>, AwsError> {
    let pages = client
        .describe_db_instances()
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| classify(SERVICE, "DescribeDBInstances", e))?;
    Ok(pages
        .iter()
        .flat_map(|p| p.db_instances())
        .map(|d| DbInstance {
            id: d.db_instance_identifier().unwrap_or_default().to_string(),
            status: d.db_instance_status().unwrap_or("unknown").to_string(),
            endpoint: d.endpoint().and_then(|e| e.address()).map(str::to_string),
            port: d.endpoint().and_then(|e| e.port()),
            engine: d.engine().map(str::to_string),
            class: d.db_instance_class().map(str::to_string),
            backup_retention_days: d.backup_retention_period().unwrap_or(0),
            backup_window: d.preferred_backup_window().map(str::to_string),
            storage_encrypted: d.storage_encrypted().unwrap_or(false),
            publicly_accessible: d.publicly_accessible().unwrap_or(false),
            allocated_storage_gib: d.allocated_storage(),
            security_group_ids: d.vpc_security_groups().iter().filter_map(|g| g.vpc_security_group_id()).map(str::to_string).collect(),
        })
        .collect())
}

/// One event of an instance (RDS keeps them 14 days).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbEvent {
    pub time: Option<DateTime<Utc>>,
    pub message: String,
}

/// The instance's events since `since`, oldest first.
pub async fn events_since(client: &Client, instance_id: &str, since: DateTime<Utc>) -> Result<Vec<DbEvent>, AwsError> {
    let out = client
        .describe_events()
        .source_identifier(instance_id)
        .source_type(aws_sdk_rds::types::SourceType::DbInstance)
        .start_time(super::from_utc(since))
        .send()
        .await
        .map_err(|e| classify(SERVICE, "DescribeEvents", e))?;
    Ok(out.events().iter().map(|e| DbEvent { time: e.date().and_then(super::to_utc), message: e.message().unwrap_or_default().to_string() }).collect())
}

/// The maintenance actions pending on the instance ("system-update: next window", ...).
pub async fn pending_maintenance(client: &Client, instance_id: &str) -> Result<Vec<String>, AwsError> {
    let filter = aws_sdk_rds::types::Filter::builder().name("db-instance-id").values(instance_id).build();
    let out = client
        .describe_pending_maintenance_actions()
        .filters(filter)
        .send()
        .await
        .map_err(|e| classify(SERVICE, "DescribePendingMaintenanceActions", e))?;
    Ok(out
        .pending_maintenance_actions()
        .iter()
        .flat_map(|r| r.pending_maintenance_action_details())
        .map(|a| format!("{}: {}", a.action().unwrap_or("?"), a.description().unwrap_or("")))
        .collect())
}

/// Reboots the instance.
pub async fn reboot(client: &Client, instance_id: &str) -> Result<(), AwsError> {
    client.reboot_db_instance().db_instance_identifier(instance_id).send().await.map_err(|e| classify(SERVICE, "RebootDBInstance", e))?;
    Ok(())
}

/// Changes the instance class now (not at the next maintenance window).
pub async fn set_class(client: &Client, instance_id: &str, class: &str) -> Result<(), AwsError> {
    client
        .modify_db_instance()
        .db_instance_identifier(instance_id)
        .db_instance_class(class)
        .apply_immediately(true)
        .send()
        .await
        .map_err(|e| classify(SERVICE, "ModifyDBInstance", e))?;
    Ok(())
}

/// Snapshots of one instance of one type ("automated" or "manual"), in the order the
/// service returned them (callers sort: the service does not promise an order).
pub async fn describe_db_snapshots(client: &Client, instance_id: &str, snapshot_type: &str) -> Result<Vec<DbSnapshot>, AwsError> {
    let result = client
        .describe_db_snapshots()
        .db_instance_identifier(instance_id)
        .snapshot_type(snapshot_type)
        .into_paginator()
        .send()
        .try_collect()
        .await;
    let pages = match result {
        Ok(p) => p,
        Err(e) => {
            let err = classify(SERVICE, "DescribeDBSnapshots", e);
            // Asking for the snapshots of an instance that does not exist is "none".
            if err.is_not_found() {
                return Ok(Vec::new());
            }
            return Err(err);
        }
    };
    Ok(pages
        .iter()
        .flat_map(|p| p.db_snapshots())
        .map(|s| DbSnapshot {
            id: s.db_snapshot_identifier().unwrap_or_default().to_string(),
            instance_id: s.db_instance_identifier().unwrap_or_default().to_string(),
            status: s.status().unwrap_or("unknown").to_string(),
            snapshot_type: s.snapshot_type().unwrap_or_default().to_string(),
            created: s.snapshot_create_time().and_then(to_utc),
            allocated_storage_gib: s.allocated_storage(),
            encrypted: s.encrypted().unwrap_or(false),
        })
        .collect())
}
