//! CloudWatch adapter: alarms, metric statistics and the metrics that exist, as this
//! project's own types. Lists follow pagination to the end. Read-only.
//!
//! The crate is pinned to 1.99.0 (see the workspace Cargo.toml): later versions speak
//! RPCv2 CBOR, which the local AWS API of the test world does not serve.

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::types::{AlarmType, Dimension, DimensionFilter, MetricDataQuery, MetricStat, StateValue, Statistic};
use aws_sdk_cloudwatch::Client;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::classify;
use super::{from_utc, to_utc, AwsError};

const SERVICE: &str = "CloudWatch";

/// An alarm in the ALARM state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alarm {
    pub name: String,
    pub reason: String,
    pub since: Option<DateTime<Utc>>,
    /// Namespace/metric for metric alarms; "composite" for composite alarms.
    pub metric: String,
}

/// One datapoint of a statistics query; each statistic is present when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Datapoint {
    pub timestamp: Option<DateTime<Utc>>,
    pub average: Option<f64>,
    pub maximum: Option<f64>,
    pub sum: Option<f64>,
    pub sample_count: Option<f64>,
}

/// A metric that exists, with its dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metric {
    pub namespace: String,
    pub name: String,
    pub dimensions: BTreeMap<String, String>,
}

/// What to ask GetMetricStatistics.
#[derive(Debug, Clone)]
pub struct StatsQuery<'a> {
    pub namespace: &'a str,
    pub metric: &'a str,
    pub dimensions: &'a BTreeMap<String, String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Seconds per datapoint: a multiple of 60.
    pub period_secs: i32,
}

/// Metric and composite alarms currently in ALARM.
pub async fn alarms_in_alarm(client: &Client) -> Result<Vec<Alarm>, AwsError> {
    let pages = client
        .describe_alarms()
        .state_value(StateValue::Alarm)
        .alarm_types(AlarmType::MetricAlarm)
        .alarm_types(AlarmType::CompositeAlarm)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| classify(SERVICE, "DescribeAlarms", e))?;
    let mut out = Vec::new();
    for page in &pages {
        for a in page.metric_alarms() {
            out.push(Alarm {
                name: a.alarm_name().unwrap_or_default().to_string(),
                reason: a.state_reason().unwrap_or_default().to_string(),
                since: a.state_updated_timestamp().and_then(to_utc),
                metric: format!("{}/{}", a.namespace().unwrap_or("-"), a.metric_name().unwrap_or("-")),
            });
        }
        for a in page.composite_alarms() {
            out.push(Alarm {
                name: a.alarm_name().unwrap_or_default().to_string(),
                reason: a.state_reason().unwrap_or_default().to_string(),
                since: a.state_updated_timestamp().and_then(to_utc),
                metric: "composite".into(),
            });
        }
    }
    Ok(out)
}

/// Average, maximum, sum and sample count per period, oldest first.
pub async fn metric_statistics(client: &Client, q: &StatsQuery<'_>) -> Result<Vec<Datapoint>, AwsError> {
    let dims: Vec<Dimension> = q.dimensions.iter().map(|(k, v)| Dimension::builder().name(k).value(v).build()).collect();
    let out = client
        .get_metric_statistics()
        .namespace(q.namespace)
        .metric_name(q.metric)
        .set_dimensions(Some(dims))
        .start_time(from_utc(q.start))
        .end_time(from_utc(q.end))
        .period(q.period_secs)
        .statistics(Statistic::Average)
        .statistics(Statistic::Maximum)
        .statistics(Statistic::Sum)
        .statistics(Statistic::SampleCount)
        .send()
        .await
        .map_err(|e| classify(SERVICE, "GetMetricStatistics", e))?;
    let mut points: Vec<Datapoint> = out
        .datapoints()
        .iter()
        .map(|d| Datapoint {
            timestamp: d.timestamp().and_then(to_utc),
            average: d.average(),
            maximum: d.maximum(),
            sum: d.sum(),
            sample_count: d.sample_count(),
        })
        .collect();
    points.sort_by_key(|p| p.timestamp);
    Ok(points)
}

/// Metrics of `namespace`/`metric` whose dimensions include all of `dimensions`.
pub async fn list_metrics(client: &Client, namespace: &str, metric: &str, dimensions: &BTreeMap<String, String>) -> Result<Vec<Metric>, AwsError> {
    let filters: Vec<DimensionFilter> = dimensions.iter().map(|(k, v)| DimensionFilter::builder().name(k).value(v).build()).collect();
    let pages = client
        .list_metrics()
        .namespace(namespace)
        .metric_name(metric)
        .set_dimensions(Some(filters))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| classify(SERVICE, "ListMetrics", e))?;
    Ok(pages
        .iter()
        .flat_map(|p| p.metrics())
        .map(|m| Metric {
            namespace: m.namespace().unwrap_or_default().to_string(),
            name: m.metric_name().unwrap_or_default().to_string(),
            dimensions: m
                .dimensions()
                .iter()
                .filter_map(|d| Some((d.name()?.to_string(), d.value().unwrap_or_default().to_string())))
                .collect(),
        })
        .collect())
}

/// One series asked of GetMetricData: a metric (with all its dimensions) and a statistic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesQuery {
    pub metric: Metric,
    /// "Average", "Maximum", "Sum", ...
    pub stat: &'static str,
}

/// The most queries GetMetricData takes in one call.
pub const MAX_QUERIES_PER_CALL: usize = 500;

/// Every series' values (one per period, oldest first), in the order of `series`, asked
/// in as few GetMetricData calls as the service allows (500 series a call, following
/// each call's pages); also returns how many calls were made.
pub async fn metric_data(
    client: &Client,
    series: &[SeriesQuery],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period_secs: i32,
) -> Result<(Vec<Vec<f64>>, usize), AwsError> {
    let mut values: Vec<Vec<(DateTime<Utc>, f64)>> = vec![Vec::new(); series.len()];
    let mut calls = 0;
    for (chunk_no, chunk) in series.chunks(MAX_QUERIES_PER_CALL).enumerate() {
        let base = chunk_no * MAX_QUERIES_PER_CALL;
        let queries: Vec<MetricDataQuery> = chunk
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let dims: Vec<Dimension> = q.metric.dimensions.iter().map(|(k, v)| Dimension::builder().name(k).value(v).build()).collect();
                let metric = aws_sdk_cloudwatch::types::Metric::builder()
                    .namespace(&q.metric.namespace)
                    .metric_name(&q.metric.name)
                    .set_dimensions(Some(dims))
                    .build();
                MetricDataQuery::builder()
                    .id(format!("q{}", base + i))
                    .metric_stat(MetricStat::builder().metric(metric).period(period_secs).stat(q.stat).build())
                    .return_data(true)
                    .build()
            })
            .collect();
        let mut token: Option<String> = None;
        loop {
            calls += 1;
            let out = client
                .get_metric_data()
                .set_metric_data_queries(Some(queries.clone()))
                .start_time(from_utc(start))
                .end_time(from_utc(end))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify(SERVICE, "GetMetricData", e))?;
            for r in out.metric_data_results() {
                let Some(idx) = r.id().and_then(|id| id.strip_prefix('q')).and_then(|n| n.parse::<usize>().ok()) else { continue };
                let Some(slot) = values.get_mut(idx) else { continue };
                for (t, v) in r.timestamps().iter().zip(r.values()) {
                    if let Some(t) = to_utc(t) {
                        slot.push((t, *v));
                    }
                }
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
    }
    Ok((
        values
            .into_iter()
            .map(|mut v| {
                v.sort_by_key(|(t, _)| *t);
                v.into_iter().map(|(_, x)| x).collect()
            })
            .collect(),
        calls,
    ))
}
