//! The AWS side of the controller: one `aws-config` loader that honours the standard AWS
//! environment (profile, region, credentials chain, `AWS_ENDPOINT_URL`) with the `[aws]`
//! overrides, and one thin adapter module per service that returns this project's own
//! types, follows pagination to the end and names the service, call and cause of every
//! failure. Adapters only read and translate: decisions belong to the runbooks.

pub mod cloudformation;
pub mod cloudtrail;
pub mod cloudwatch;
pub mod ec2;
pub mod error;
pub mod iam;
pub mod instances;
pub mod logs;
pub mod rds;
pub mod secrets;
pub mod snapshots;

use std::time::Duration;

use aws_config::environment::{EnvironmentVariableCredentialsProvider, EnvironmentVariableRegionProvider};
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::credentials::ProfileFileCredentialsProvider;
use aws_config::profile::region::ProfileFileRegionProvider;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use chrono::{DateTime, TimeZone, Utc};

use crate::config::AwsConfig;
pub use error::{AwsCause, AwsError};

/// Attempts per call (the first try included) when the SDK's standard retry strategy
/// sees throttling or a transient error; it backs off exponentially with jitter.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// First retry delay of the standard strategy (it doubles per attempt, up to 20 s).
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// TCP connect deadline towards an AWS endpoint: an unreachable endpoint is named quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one attempt of one call.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the loader retries; tests shorten the backoff.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: DEFAULT_MAX_ATTEMPTS, initial_backoff: DEFAULT_INITIAL_BACKOFF }
    }
}

impl RetryPolicy {
    fn sdk(self) -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(self.max_attempts.max(1))
            .with_initial_backoff(self.initial_backoff)
    }
}

/// The AWS clients could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AwsSetupError {
    #[error("no AWS region: set [aws] region in the controller config, or AWS_REGION / AWS_PROFILE in the environment")]
    NoRegion,
}

/// One client per service, all built from the same SDK configuration.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub ec2: aws_sdk_ec2::Client,
    pub rds: aws_sdk_rds::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub cloudformation: aws_sdk_cloudformation::Client,
    pub iam: aws_sdk_iam::Client,
    pub cloudtrail: aws_sdk_cloudtrail::Client,
    pub region: String,
    /// The endpoint is a local AWS emulator (loopback): the addresses it reports for
    /// instances are invented, so nothing may be dialled at them (`fleet::ec2::may_dial`).
    pub local_emulator: bool,
}

impl AwsClients {
    /// Loads the standard AWS environment with the `[aws]` overrides on top.
    pub async fn load(cfg: &AwsConfig) -> Result<AwsClients, AwsSetupError> {
        AwsClients::from_sdk_config(&sdk_config(cfg, RetryPolicy::default()).await)
    }

    /// Clients from an already built SDK configuration (tests build theirs with static
    /// credentials so that no credentials chain is consulted).
    pub fn from_sdk_config(sdk: &SdkConfig) -> Result<AwsClients, AwsSetupError> {
        let region = sdk.region().ok_or(AwsSetupError::NoRegion)?.to_string();
        Ok(AwsClients {
            ec2: aws_sdk_ec2::Client::new(sdk),
            rds: aws_sdk_rds::Client::new(sdk),
            cloudwatch: aws_sdk_cloudwatch::Client::new(sdk),
            logs: aws_sdk_cloudwatchlogs::Client::new(sdk),
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            cloudformation: aws_sdk_cloudformation::Client::new(sdk),
            iam: aws_sdk_iam::Client::new(sdk),
            cloudtrail: aws_sdk_cloudtrail::Client::new(sdk),
            region,
            local_emulator: sdk.endpoint_url().is_some_and(is_loopback_url) || env_endpoint_is_loopback(),
        })
    }
}

/// The SDK configuration: the default provider chains (environment, profile files,
/// container and instance credentials), then the `[aws]` settings, which win.
pub async fn sdk_config(cfg: &AwsConfig, retry: RetryPolicy) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry.sdk())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        );
    if let Some(profile) = &cfg.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &cfg.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if cfg.endpoint_url.as_deref().is_some_and(is_loopback_url) || env_endpoint_is_loopback() {
        // A local emulator: credentials and region come from the environment or the
        // profile files only, never from the container or instance metadata services,
        // which are off this machine.
        let mut creds = ProfileFileCredentialsProvider::builder();
        let mut region = ProfileFileRegionProvider::builder();
        if let Some(p) = &cfg.profile {
            creds = creds.profile_name(p);
            region = region.profile_name(p);
        }
        loader = loader.credentials_provider(
            CredentialsProviderChain::first_try("Environment", EnvironmentVariableCredentialsProvider::new()).or_else("Profile", creds.build()),
        );
        if cfg.region.is_none() {
            loader = loader.region(RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new()).or_else(region.build()));
        }
    }
    if let Some(url) = &cfg.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

fn env_endpoint_is_loopback() -> bool {
    std::env::vars().any(|(k, v)| k.starts_with("AWS_ENDPOINT_URL") && is_loopback_url(&v))
}

/// Whether `url`'s host is a loopback address or `localhost`. Pure.
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    is_loopback_host(ops_proto::tls::host_part(authority))
}

/// Whether `host` (no port) is a loopback address or `localhost`. Pure.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The SDK's timestamp as a chrono time (None when out of chrono's range).
pub fn to_utc(t: &aws_sdk_ec2::primitives::DateTime) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t.secs(), t.subsec_nanos()).single()
}

/// A chrono time as the SDK's timestamp.
pub fn from_utc(t: DateTime<Utc>) -> aws_sdk_ec2::primitives::DateTime {
    aws_sdk_ec2::primitives::DateTime::from_millis(t.timestamp_millis())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_endpoint_is_a_local_emulator() {
        assert!(is_loopback_url("http://127.0.0.1:5000"));
        assert!(is_loopback_url("http://localhost:5000/"));
        assert!(is_loopback_url("http://[::1]:5000"));
        assert!(!is_loopback_url("https://ec2.us-east-1.amazonaws.com"));
    }
}
