//! EC2 adapter: instances, security groups, EBS snapshots and volumes, as this
//! project's own types. Every list follows pagination to the end. Read-only.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::classify;
use super::{to_utc, AwsError};

const SERVICE: &str = "EC2";

/// One EC2 instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instance {
    pub id: String,
    /// The `Name` tag.
    pub name: Option<String>,
    /// pending, running, stopping, stopped, shutting-down, terminated.
    pub state: String,
    pub instance_type: Option<String>,
    pub private_ip: Option<String>,
    /// The private DNS name (what the instance's metadata calls `local-hostname`).
    pub private_dns: Option<String>,
    pub public_ip: Option<String>,
    pub launch_time: Option<DateTime<Utc>>,
    pub tags: BTreeMap<String, String>,
    /// EBS volumes attached through block device mappings.
    pub volume_ids: Vec<String>,
    /// The security groups of the instance (its network interfaces').
    pub security_group_ids: Vec<String>,
}

/// One inbound rule of a security group, with the addresses it admits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngressRule {
    /// "tcp", "udp", "icmp", or "-1" for every protocol.
    pub protocol: String,
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    pub cidrs_v4: Vec<String>,
    pub cidrs_v6: Vec<String>,
    /// Security groups whose members the rule admits.
    pub source_groups: Vec<String>,
}

/// One security group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub vpc_id: Option<String>,
    pub ingress: Vec<IngressRule>,
}

/// One EBS snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EbsSnapshot {
    pub id: String,
    pub volume_id: Option<String>,
    /// pending, completed, error, recoverable, recovering.
    pub state: String,
    pub start_time: Option<DateTime<Utc>>,
    pub volume_size_gib: Option<i32>,
    pub description: Option<String>,
    pub encrypted: bool,
}

/// One EBS volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub id: String,
    pub size_gib: Option<i32>,
    pub encrypted: bool,
    pub state: String,
    /// Instances the volume is attached to.
    pub attached_to: Vec<String>,
}

fn tag_filters(tags: &BTreeMap<String, String>) -> Vec<Filter> {
    tags.iter().map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(v).build()).collect()
}

/// Instances carrying every tag in `tags`, in the given states (all states when empty).
pub async fn describe_instances(client: &Client, tags: &BTreeMap<String, String>, states: &[&str]) -> Result<Vec<Instance>, AwsError> {
    let mut filters = tag_filters(tags);
    if !states.is_empty() {
        filters.push(Filter::builder().name("instance-state-name").set_values(Some(states.iter().map(|s| s.to_string()).collect())).build());
    }
    describe_filtered(client, filters).await
}

/// The instance with this id in any state, or None when EC2 does not know it.
pub async fn describe_instance(client: &Client, id: &str) -> Result<Option<Instance>, AwsError> {
    let filters = vec![Filter::builder().name("instance-id").values(id).build()];
    Ok(describe_filtered(client, filters).await?.into_iter().find(|i| i.id == id))
}

async fn describe_filtered(client: &Client, filters: Vec<Filter>) -> Result<Vec<Instance>, AwsError> {
    let pages = client
        .describe_instances()
        .set_filters(Some(filters))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| classify(SERVICE, "DescribeInstances", e))?;
    let mut out = Vec::new();
    for page in pages {
        for reservation in page.reservations() {
            for i in reservation.instances() {
                let tags: BTreeMap<String, String> = i
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
                    .collect();
                out.push(Instance {
                    id: i.instance_id().unwrap_or_default().to_string(),
                    name: tags.get("Name").cloned(),
                    state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_else(|| "unknown".into()),
                    instance_type: i.instance_type().map(|t| t.as_str().to_string()),
                    private_ip: i.private_ip_address().map(str::to_string),
                    private_dns: i.private_dns_name().filter(|d| !d.is_empty()).map(str::to_string),
                    public_ip: i.public_ip_address().map(str::to_string),
                    launch_time: i.launch_time().and_then(to_utc),
                    tags,
                    volume_ids: i
                        .block_device_mappings()
                        .iter()
                        .filter_map(|m| m.ebs().and_then(|e| e.volume_id()).map(str::to_string))
                        .collect(),
                    security_group_ids: i.security_groups().iter().filter_map(|g| g.group_id().map(str::to_string)).collect(),
                });
            }
        }
    }
    Ok(out)
}

/// Every security group of the account and region.
pub async fn describe_security_groups(client: &Client) -> Result<Vec<SecurityGroup>, AwsError> {
    let pages = client
        .describe_security_groups()
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| classify(SERVICE, "DescribeSecurityGroups", e))?;
    Ok(pages
        .iter()
        .flat_map(|p| p.security_groups())
        .map(|g| SecurityGroup {
            id: g.group_id().unwrap_or_default().to_string(),
            name: g.group_name().unwrap_or_default().to_string(),
            description: g.description().unwrap_or_default().to_string(),
            vpc_id: g.vpc_id().map(str::to_string),
            ingress: g
                .ip_permissions()
                .iter()
                .map(|p| IngressRule {
                    protocol: p.ip_protocol().unwrap_or("-1").to_string(),
                    from_port: p.from_port(),
                    to_port: p.to_port(),
                    cidrs_v4: p.ip_ranges().iter().filter_map(|r| r.cidr_ip()).map(str::to_string).collect(),
                    cidrs_v6: p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()).map(str::to_string).collect(),
                    source_groups: p.user_id_group_pairs().iter().filter_map(|g| g.group_id()).map(str::to_string).collect(),
                })
                .collect(),
        })
        .collect())
}

/// This account's EBS snapshots carrying every tag in `tags`.
pub async fn describe_snapshots_tagged(client: &Client, tags: &BTreeMap<String, String>) -> Result<Vec<EbsSnapshot>, AwsError> {
    let pages = client
        .describe_snapshots()
        .owner_ids("self")
        .set_filters(Some(tag_filters(tags)))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| classify(SERVICE, "DescribeSnapshots", e))?;
    Ok(pages
        .iter()
        .flat_map(|p| p.snapshots())
        .map(|s| EbsSnapshot {
            id: s.snapshot_id().unwrap_or_default().to_string(),
            volume_id: s.volume_id().map(str::to_string),
            state: s.state().map(|st| st.as_str().to_string()).unwrap_or_else(|| "unknown".into()),
            start_time: s.start_time().and_then(to_utc),
            volume_size_gib: s.volume_size(),
            description: s.description().map(str::to_string),
            encrypted: s.encrypted().unwrap_or(false),
        })
        .collect())
}

/// Every EBS volume of the account and region.
pub async fn describe_volumes(client: &Client) -> Result<Vec<Volume>, AwsError> {
    let pages = client
        .describe_volumes()
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| classify(SERVICE, "DescribeVolumes", e))?;
    Ok(pages
        .iter()
        .flat_map(|p| p.volumes())
        .map(|v| Volume {
            id: v.volume_id().unwrap_or_default().to_string(),
            size_gib: v.size(),
            encrypted: v.encrypted().unwrap_or(false),
            state: v.state().map(|s| s.as_str().to_string()).unwrap_or_else(|| "unknown".into()),
            attached_to: v.attachments().iter().filter_map(|a| a.instance_id()).map(str::to_string).collect(),
        })
        .collect())
}
