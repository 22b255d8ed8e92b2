//! CloudTrail adapter: the trail the compliance check asks about (does it exist, is it
//! multi-region, does it validate its log files) and its status (is it logging, when did
//! it last deliver). Read-only: nothing here starts or stops a trail.

use aws_sdk_cloudtrail::Client;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::classify;
use super::{to_utc, AwsError};

const SERVICE: &str = "CloudTrail";

/// One trail with its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trail {
    pub name: String,
    pub arn: Option<String>,
    pub multi_region: bool,
    pub log_file_validation: bool,
    pub is_logging: bool,
    /// When the trail last delivered log files (None: never).
    pub latest_delivery: Option<DateTime<Utc>>,
    /// The last delivery error CloudTrail reports, if any.
    pub latest_delivery_error: Option<String>,
}

/// The trail named `name` (or whose ARN is `name`), with its status; None when the account
/// has no such trail in this region's view.
pub async fn trail(client: &Client, name: &str) -> Result<Option<Trail>, AwsError> {
    let out = client
        .describe_trails()
        .include_shadow_trails(true)
        .send()
        .await
        .map_err(|e| classify(SERVICE, "DescribeTrails", e))?;
    let Some(t) = out
        .trail_list()
        .iter()
        .find(|t| t.name() == Some(name) || t.trail_arn() == Some(name))
    else {
        return Ok(None);
    };
    let id = t.trail_arn().or(t.name()).unwrap_or(name).to_string();
    let status = client
        .get_trail_status()
        .name(&id)
        .send()
        .await
        .map_err(|e| classify(SERVICE, "GetTrailStatus", e))?;
    Ok(Some(Trail {
        name: t.name().unwrap_or(name).to_string(),
        arn: t.trail_arn().map(str::to_string),
        multi_region: t.is_multi_region_trail().unwrap_or(false),
        log_file_validation: t.log_file_validation_enabled().unwrap_or(false),
        is_logging: status.is_logging().unwrap_or(false),
        latest_delivery: status.latest_delivery_time().and_then(to_utc),
        latest_delivery_error: status.latest_delivery_error().filter(|e| !e.is_empty()).map(str::to_string),
    }))
}
