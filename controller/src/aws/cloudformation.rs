//! CloudFormation adapter: the status of one stack. Read-only.

use aws_sdk_cloudformation::Client;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::classify;
use super::{to_utc, AwsError};

const SERVICE: &str = "CloudFormation";

/// One stack's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stack {
    pub name: String,
    /// e.g. CREATE_COMPLETE, UPDATE_ROLLBACK_COMPLETE.
    pub status: String,
    pub reason: Option<String>,
    pub last_updated: Option<DateTime<Utc>>,
}

/// The named stack, or None when no such stack exists.
pub async fn describe_stack(client: &Client, name: &str) -> Result<Option<Stack>, AwsError> {
    let out = match client.describe_stacks().stack_name(name).send().await {
        Ok(out) => out,
        Err(e) => {
            let err = classify(SERVICE, "DescribeStacks", e);
            // The service reports a missing stack as a ValidationError.
            if err.code() == Some("ValidationError") && err.to_string().contains("does not exist") {
                return Ok(None);
            }
            return Err(err);
        }
    };
    Ok(out.stacks().first().map(|s| Stack {
        name: s.stack_name().unwrap_or(name).to_string(),
        status: s.stack_status().map(|st| st.as_str().to_string()).unwrap_or_else(|| "UNKNOWN".into()),
        reason: s.stack_status_reason().map(str::to_string),
        last_updated: s.last_updated_time().or(s.creation_time()).and_then(to_utc),
    }))
}
