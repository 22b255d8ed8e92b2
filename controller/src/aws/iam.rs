//! IAM adapter: the account's users with when they were created and last used a
//! password. Follows pagination to the end. Read-only.

use aws_sdk_iam::Client;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::classify;
use super::{to_utc, AwsError};

const SERVICE: &str = "IAM";

/// One IAM user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IamUser {
    pub name: String,
    pub arn: String,
    pub created: Option<DateTime<Utc>>,
    /// None: the password was never used (or the user has none).
    pub password_last_used: Option<DateTime<Utc>>,
}

/// Every IAM user of the account.
pub async fn list_users(client: &Client) -> Result<Vec<IamUser>, AwsError> {
    let pages = client
        .list_users()
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| classify(SERVICE, "ListUsers", e))?;
    Ok(pages
        .iter()
        .flat_map(|p| p.users())
        .map(|u| IamUser {
            name: u.user_name().to_string(),
            arn: u.arn().to_string(),
            created: to_utc(u.create_date()),
            password_last_used: u.password_last_used().and_then(to_utc),
        })
        .collect())
}
