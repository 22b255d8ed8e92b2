//! IAM adapter: the account's credential report (each user's password, MFA and access
//! keys with their last use), generated when needed. Read-only.

use aws_sdk_iam::Client;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::classify;
use super::AwsError;

const SERVICE: &str = "IAM";

/// An active access key: when it was last rotated and last used (None: never / unknown).
pub type KeyUse = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// One row of the IAM credential report: a user (or `<root_account>`) with the state and
/// last use of each credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialRow {
    pub user: String,
    pub arn: String,
    pub password_enabled: bool,
    pub password_last_used: Option<DateTime<Utc>>,
    pub mfa_active: bool,
    /// Active access keys: (last rotated, last used).
    pub active_keys: Vec<KeyUse>,
}

impl CredentialRow {
    pub fn is_root(&self) -> bool {
        self.user == "<root_account>"
    }
}

/// How many times GetCredentialReport is asked while IAM is still generating it.
const REPORT_POLLS: u32 = 10;
const REPORT_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// The account's credential report, generated if needed (IAM makes a new one at most
/// every four hours and answers at once with the last one otherwise).
pub async fn credential_report(client: &Client) -> Result<Vec<CredentialRow>, AwsError> {
    for _ in 0..REPORT_POLLS {
        let state = client
            .generate_credential_report()
            .send()
            .await
            .map_err(|e| classify(SERVICE, "GenerateCredentialReport", e))?;
        if state.state().map(|s| s.as_str()) == Some("COMPLETE") {
            break;
        }
        tokio::time::sleep(REPORT_POLL_INTERVAL).await;
    }
    let out = client
        .get_credential_report()
        .send()
        .await
        .map_err(|e| classify(SERVICE, "GetCredentialReport", e))?;
    let text = out.content().map(|b| String::from_utf8_lossy(b.as_ref()).into_owned()).unwrap_or_default();
    parse_credential_report(&text).map_err(|why| AwsError {
        service: SERVICE,
        call: "GetCredentialReport",
        cause: super::AwsCause::Other(format!("unreadable credential report: {why}")),
    })
}

/// The report's CSV, columns found by their header names (the report has no quoted
/// fields: names, ARNs and timestamps never contain commas). Pure.
pub fn parse_credential_report(csv: &str) -> Result<Vec<CredentialRow>, String> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().ok_or("empty report")?.split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).ok_or_else(|| format!("no column {name}"));
    let (user, arn, pw, pw_used, mfa) = (col("user")?, col("arn")?, col("password_enabled")?, col("password_last_used")?, col("mfa_active")?);
    let keys = [
        (col("access_key_1_active")?, col("access_key_1_last_rotated")?, col("access_key_1_last_used_date")?),
        (col("access_key_2_active")?, col("access_key_2_last_rotated")?, col("access_key_2_last_used_date")?),
    ];
    let time = |v: &str| DateTime::parse_from_rfc3339(v).ok().map(|t| t.with_timezone(&Utc));
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < header.len() {
            return Err(format!("line {} has {} fields, the header {}", n + 2, f.len(), header.len()));
        }
        rows.push(CredentialRow {
            user: f[user].to_string(),
            arn: f[arn].to_string(),
            password_enabled: f[pw] == "true",
            password_last_used: time(f[pw_used]),
            mfa_active: f[mfa] == "true",
            active_keys: keys.iter().filter(|(a, _, _)| f[*a] == "true").map(|(_, r, u)| (time(f[*r]), time(f[*u]))).collect(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_report_is_read_by_column_name() {
        let csv = "user,arn,user_creation_time,password_enabled,password_last_used,password_last_changed,password_next_rotation,mfa_active,access_key_1_active,access_key_1_last_rotated,access_key_1_last_used_date,access_key_1_last_used_region,access_key_1_last_used_service,access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date,access_key_2_last_used_region,access_key_2_last_used_service,cert_1_active,cert_1_last_rotated,cert_2_active,cert_2_last_rotated\n\
<root_account>,arn:aws:iam::1:root,2020-01-01T00:00:00+00:00,not_supported,2026-11-29T10:00:00+00:00,not_supported,not_supported,false,true,2020-01-02T00:00:00+00:00,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A\n\
alice,arn:aws:iam::1:user/alice,2025-01-01T00:00:00+00:00,true,no_information,N/A,N/A,true,false,N/A,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A\n";
        let rows = parse_credential_report(csv).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].is_root() && !rows[0].mfa_active && rows[0].active_keys.len() == 1 && rows[0].password_last_used.is_some());
        assert!(rows[1].password_enabled && rows[1].mfa_active && rows[1].password_last_used.is_none() && rows[1].active_keys.is_empty());
        assert!(parse_credential_report("user,arn\nx").unwrap_err().contains("no column"));
    }
}
