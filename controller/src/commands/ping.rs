//! `controller fleet ping`: is every agent there, who is it, how fast does it answer.

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
    /// Why the host is unreachable, named ("connection refused", "timed out", ...).
    pub error: Option<String>,
}

/// Pings every host concurrently (bounded by the dialer's concurrency).
pub async fn ping(dialer: &Dialer, hosts: &[Host]) -> Vec<PingRow> {
    dialer
        .fan_out(hosts, |d, h| async move { ping_one(&d, h).await })
        .await
        .into_iter()
        .map(|(_, row)| row)
        .collect()
}

async fn ping_one(dialer: &Dialer, host: &Host) -> PingRow {
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
        error: None,
    };
    let t0 = Instant::now();
    let mut client = match dialer.connect(host).await {
        Ok(c) => c,
        Err(e) => {
            row.error = Some(e.to_string());
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
        }
        Err(status) => row.error = Some(call_error(&status).to_string()),
    }
    row
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// The table a person reads.
pub fn render(rows: &[PingRow]) -> String {
    let mut t = Table::new(["HOST", "ADDRESS", "REACHABLE", "HOSTNAME", "VERSION", "UPTIME", "RTT", "ERROR"]);
    for r in rows {
        t.row([
            r.name.clone(),
            r.address.clone(),
            if r.reachable { "yes".into() } else { "NO".into() },
            r.hostname.clone().unwrap_or_else(|| "-".into()),
            r.agent_version.clone().unwrap_or_else(|| "-".into()),
            r.uptime_seconds.map(human_duration).unwrap_or_else(|| "-".into()),
            r.latency_ms.map(|l| format!("{l:.1} ms")).unwrap_or_else(|| "-".into()),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    let up = rows.iter().filter(|r| r.reachable).count();
    format!("{}\n{up}/{} agents reachable\n", t.render(), rows.len())
}
