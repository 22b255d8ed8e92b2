//! `controller fleet ping`: is every agent there, who is it, how fast does it answer;
//! with `--stats`, the agent's own counters (GetAgentStats) too.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::client::{call_error, Dialer};
use crate::fleet::Host;
use crate::output::{human_duration, Table};

/// One host's answer (or why there was none).
#[derive(Debug, Clone, Serialize)]
pub struct PingRow {
    pub name: String,
    pub address: String,
    pub reachable: bool,
    pub hostname: Option<String>,
    pub agent_version: Option<String>,
    pub uptime_seconds: Option<u64>,
    /// Round trip of the host-info call on the established connection.
    pub latency_ms: Option<f64>,
    /// TCP connect plus TLS handshake.
    pub connect_ms: Option<f64>,
    pub instance_id: Option<String>,
    /// The role the agent saw in our certificate.
    pub role: Option<String>,
    /// When the agent's own certificate expires (RFC 3339), and its serial.
    pub certificate_expires: Option<String>,
    pub certificate_serial: Option<String>,
    /// Why the host is unreachable, named ("connection refused", "timed out", ...).
    pub error: Option<String>,
    /// The kind of that failure (`FailureKind::as_str`), for scripts and auto-enrolment.
    pub error_kind: Option<String>,
    /// The agent's counters, when asked for with `--stats`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<AgentStatsView>,
    /// Why the counters could not be read, when they were asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_error: Option<String>,
}

/// The agent's counters as the controller shows them: job states and limits by name.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatsView {
    pub handshakes_refused: u64,
    pub handshakes_timed_out: u64,
    pub handshakes_evicted: u64,
    pub handshakes_pending: u64,
    pub snapshot_streams_open: u64,
    pub job_watches_open: u64,
    pub samples_dropped: u64,
    pub warnings_suppressed: u64,
    pub uptime_seconds: u64,
    /// Job state name ("running", "failed", ...) to count.
    pub jobs_by_state: BTreeMap<String, u64>,
    /// Limit config key to how often it refused something.
    pub limits_hit: BTreeMap<String, u64>,
}

impl From<ops_proto::v1::AgentStats> for AgentStatsView {
    fn from(s: ops_proto::v1::AgentStats) -> Self {
        let state_name = |v: i32| {
            ops_proto::v1::JobState::try_from(v)
                .map(|st| st.as_str_name().trim_start_matches("JOB_STATE_").to_ascii_lowercase())
                .unwrap_or_else(|_| format!("unknown({v})"))
        };
        AgentStatsView {
            handshakes_refused: s.handshakes_refused,
            handshakes_timed_out: s.handshakes_timed_out,
            handshakes_evicted: s.handshakes_evicted,
            handshakes_pending: s.handshakes_pending,
            snapshot_streams_open: s.snapshot_streams_open,
            job_watches_open: s.job_watches_open,
            samples_dropped: s.samples_dropped,
            warnings_suppressed: s.warnings_suppressed,
            uptime_seconds: s.uptime_seconds,
            jobs_by_state: s.jobs_by_state.into_iter().map(|c| (state_name(c.state), c.count)).collect(),
            limits_hit: s.limits_hit.into_iter().map(|h| (h.limit, h.hits)).collect(),
        }
    }
}

/// Pings every host concurrently (bounded by the dialer's concurrency).
pub async fn ping(dialer: &Dialer, hosts: &[Host], with_stats: bool) -> Vec<PingRow> {
    dialer
        .fan_out(hosts, "hosts answered", |d, h| async move { ping_one(&d, h, with_stats).await })
        .await
        .into_iter()
        .map(|(_, row)| row)
        .collect()
}

async fn ping_one(dialer: &Dialer, host: &Host, with_stats: bool) -> PingRow {
    let mut row = PingRow {
        name: host.name.clone(),
        address: host.address.clone(),
        reachable: false,
        hostname: None,
        agent_version: None,
        uptime_seconds: None,
        latency_ms: None,
        connect_ms: None,
        instance_id: host.instance_id.clone(),
        role: None,
        certificate_expires: None,
        certificate_serial: None,
        error: None,
        error_kind: None,
        stats: None,
        stats_error: None,
    };
    let t0 = Instant::now();
    let mut client = match dialer.connect(host).await {
        Ok(c) => c,
        Err(e) => {
            row.error = Some(e.to_string());
            row.error_kind = Some(e.kind.as_str().to_string());
            return row;
        }
    };
    row.connect_ms = Some(ms(t0));
    let t1 = Instant::now();
    match client.get_host_info(ops_proto::v1::HostInfoRequest {}).await {
        Ok(resp) => {
            let info = resp.into_inner();
            row.latency_ms = Some(ms(t1));
            row.reachable = true;
            row.hostname = Some(info.hostname);
            row.agent_version = Some(info.agent_version);
            row.uptime_seconds = Some(info.uptime_seconds);
            if !info.instance_id.is_empty() {
                row.instance_id = Some(info.instance_id);
            }
            row.role = Some(info.caller_role).filter(|r| !r.is_empty());
            if info.certificate_not_after_unix_ms > 0 {
                row.certificate_expires = chrono::DateTime::from_timestamp_millis(info.certificate_not_after_unix_ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                row.certificate_serial = Some(info.certificate_serial).filter(|s| !s.is_empty());
            }
        }
        Err(status) => row.error = Some(call_error(&status).to_string()),
    }
    if with_stats && row.reachable {
        match client.get_agent_stats(ops_proto::v1::AgentStatsRequest {}).await {
            Ok(resp) => row.stats = Some(resp.into_inner().into()),
            Err(status) => row.stats_error = Some(call_error(&status).to_string()),
        }
    }
    row
}

/// The counters table under the ping table: one row per reachable host.
pub fn render_stats(rows: &[PingRow]) -> String {
    let mut t = Table::new(["HOST", "HS REFUSED", "HS TIMED OUT", "HS EVICTED", "STREAMS", "WATCHES", "DROPPED", "JOBS", "LIMITS HIT"]);
    for r in rows {
        let Some(s) = &r.stats else {
            if let Some(e) = &r.stats_error {
                t.row([r.name.clone(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into(), e.clone()]);
            }
            continue;
        };
        let jobs: Vec<String> = s.jobs_by_state.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let hits: Vec<String> = s.limits_hit.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        t.row([
            r.name.clone(),
            s.handshakes_refused.to_string(),
            s.handshakes_timed_out.to_string(),
            s.handshakes_evicted.to_string(),
            s.snapshot_streams_open.to_string(),
            s.job_watches_open.to_string(),
            s.samples_dropped.to_string(),
            if jobs.is_empty() { "-".into() } else { jobs.join(" ") },
            if hits.is_empty() { "none".into() } else { hits.join(" ") },
        ]);
    }
    format!("\n{}", t.render())
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// The table a person reads.
pub fn render(rows: &[PingRow]) -> String {
    let mut t = Table::new(["HOST", "ADDRESS", "REACHABLE", "HOSTNAME", "VERSION", "UPTIME", "RTT", "CERT EXPIRES", "ERROR"]);
    for r in rows {
        t.row([
            r.name.clone(),
            r.address.clone(),
            if r.reachable { "yes".into() } else { "NO".into() },
            r.hostname.clone().unwrap_or_else(|| "-".into()),
            r.agent_version.clone().unwrap_or_else(|| "-".into()),
            r.uptime_seconds.map(human_duration).unwrap_or_else(|| "-".into()),
            r.latency_ms.map(|l| format!("{l:.1} ms")).unwrap_or_else(|| "-".into()),
            r.certificate_expires.as_deref().map(|t| t.get(..10).unwrap_or(t).to_string()).unwrap_or_else(|| "-".into()),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    let up = rows.iter().filter(|r| r.reachable).count();
    format!("{}\n{up}/{} agents reachable\n", t.render(), rows.len())
}
