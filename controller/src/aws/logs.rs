//! CloudWatch Logs adapter: log events matching a filter over a time range, visited page
//! by page to the very end (a single page, as the old `length(events)` counted, is not
//! the answer), and whether a log group exists. Read-only.
//!
//! Note for callers: the service evaluates plain-word and quoted patterns; JSON patterns
//! such as `{ $.errorCode = "AccessDenied*" }` are better evaluated by the caller on the
//! parsed events (the local AWS API of the test world returns every event for them).

use aws_sdk_cloudwatchlogs::Client;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::classify;
use super::AwsError;

const SERVICE: &str = "CloudWatch Logs";

/// One log event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEvent {
    pub timestamp_ms: i64,
    pub stream: String,
    pub message: String,
}

/// Which events to read.
#[derive(Debug, Clone)]
pub struct LogQuery<'a> {
    pub group: &'a str,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// A CloudWatch Logs filter pattern; None reads every event.
    pub pattern: Option<&'a str>,
    /// Events per page; None lets the service choose (up to 10,000).
    pub page_limit: Option<i32>,
}

/// What a scan went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanStats {
    pub events: u64,
    pub pages: u32,
}

/// Calls `visit` for every matching event, page after page until the service has no
/// next page. A missing log group is an error whose cause is `NotFound`.
pub async fn scan_events(client: &Client, q: &LogQuery<'_>, mut visit: impl FnMut(LogEvent)) -> Result<ScanStats, AwsError> {
    let mut req = client
        .filter_log_events()
        .log_group_name(q.group)
        .start_time(q.start.timestamp_millis())
        .end_time(q.end.timestamp_millis());
    if let Some(p) = q.pattern {
        req = req.filter_pattern(p);
    }
    if let Some(limit) = q.page_limit {
        req = req.limit(limit.clamp(1, 10_000));
    }
    let mut pages = req.into_paginator().send();
    let mut stats = ScanStats::default();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(SERVICE, "FilterLogEvents", e))?;
        stats.pages += 1;
        for e in page.events() {
            stats.events += 1;
            visit(LogEvent {
                timestamp_ms: e.timestamp().unwrap_or_default(),
                stream: e.log_stream_name().unwrap_or_default().to_string(),
                message: e.message().unwrap_or_default().to_string(),
            });
        }
    }
    Ok(stats)
}

/// How many events match (every page counted).
pub async fn count_events(client: &Client, q: &LogQuery<'_>) -> Result<ScanStats, AwsError> {
    scan_events(client, q, |_| {}).await
}

/// Whether a log group of exactly this name exists.
pub async fn log_group_exists(client: &Client, name: &str) -> Result<bool, AwsError> {
    let mut pages = client.describe_log_groups().log_group_name_prefix(name).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(SERVICE, "DescribeLogGroups", e))?;
        if page.log_groups().iter().any(|g| g.log_group_name() == Some(name)) {
            return Ok(true);
        }
    }
    Ok(false)
}
