//! What the runbooks ask of the agents: failed logins since a time and a live snapshot
//! (CPU, memory, disks, listening sockets), from every host at once within the dialer's
//! concurrency. A host that does not answer is reported with the reason, never skipped.

use std::future::Future;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use ops_proto::v1::agent_client::AgentClient;
use ops_proto::v1::{AuthFailuresRequest, SnapshotRequest};
use tonic::transport::Channel;
use serde::Serialize;

use crate::client::{call_error, Dialer};
use crate::fleet::Host;

/// Entries in the top users / top sources lists asked of each agent.
const TOP_N: u32 = 5;

/// One host's answer, or why there was none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostAnswer<T> {
    pub host: String,
    pub instance_id: Option<String>,
    pub answer: Result<T, String>,
}

/// Failed logins on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthSummary {
    pub total: u64,
    pub failed_password: u64,
    pub invalid_user: u64,
    pub failed_publickey: u64,
    /// sudo, su and login failures (no remote source).
    pub failed_local: u64,
    pub top_users: Vec<(String, u64)>,
    pub top_sources: Vec<(String, u64)>,
    /// The agent no longer holds events from the start of the window: counts are a floor.
    pub incomplete: bool,
}

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listening {
    pub protocol: String,
    pub address: String,
    pub port: u32,
    pub process: String,
}

/// Live figures of one host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Live {
    pub cpu_percent: f64,
    pub memory_used_percent: f64,
    /// (mount point, used percent).
    pub filesystems: Vec<(String, f64)>,
    pub listening: Vec<Listening>,
}

/// Failed logins since `since` from every host's agent.
pub async fn auth_failures(dialer: &Dialer, hosts: &[Host], since: DateTime<Utc>, deadline: Instant) -> Vec<HostAnswer<AuthSummary>> {
    let since_ms = since.timestamp_millis();
    ask_each(dialer, hosts, deadline, move |mut c| async move {
        let a = c
            .get_auth_failures(AuthFailuresRequest { since_unix_ms: since_ms, top_n: TOP_N, rescan: false })
            .await?
            .into_inner();
        Ok(AuthSummary {
            total: a.total,
            failed_password: a.failed_password,
            invalid_user: a.invalid_user,
            failed_publickey: a.failed_publickey,
            failed_local: a.failed_local,
            top_users: a.top_users.into_iter().map(|n| (n.name, n.count)).collect(),
            top_sources: a.top_sources.into_iter().map(|n| (n.name, n.count)).collect(),
            // The agent says so itself when it evicted events of the window (`lower_bound`);
            // an older agent only shows it by holding nothing that old.
            incomplete: a.lower_bound || a.oldest_event_unix_ms > since_ms,
        })
    })
    .await
}

/// Every host's agent certificate: its expiry (Unix ms) and serial.
pub async fn certificates(dialer: &Dialer, hosts: &[Host], deadline: Instant) -> Vec<HostAnswer<(i64, String)>> {
    ask_each(dialer, hosts, deadline, |mut c| async move {
        let info = c.get_host_info(ops_proto::v1::HostInfoRequest {}).await?.into_inner();
        Ok((info.certificate_not_after_unix_ms, info.certificate_serial))
    })
    .await
}

/// A live snapshot from every host's agent.
pub async fn live(dialer: &Dialer, hosts: &[Host], deadline: Instant) -> Vec<HostAnswer<Live>> {
    ask_each(dialer, hosts, deadline, |mut c| async move {
        let s = c.get_snapshot(SnapshotRequest { top_n: 1, cpu_interval_ms: 0 }).await?.into_inner();
        Ok(Live {
            cpu_percent: s.cpu_percent,
            memory_used_percent: s.memory.map(|m| m.used_percent).unwrap_or_default(),
            filesystems: s.filesystems.into_iter().map(|f| (f.mount_point, f.used_percent)).collect(),
            listening: s
                .listening
                .into_iter()
                .map(|l| Listening { protocol: l.protocol, address: l.address, port: l.port, process: l.process })
                .collect(),
        })
    })
    .await
}

/// Connects to every host (never to one marked undialable) and asks it one thing; each
/// host's answer or the named reason there was none, in fleet order. A host still
/// unanswered at `deadline` is named as such.
async fn ask_each<T, F, Fut>(dialer: &Dialer, hosts: &[Host], deadline: Instant, ask: F) -> Vec<HostAnswer<T>>
where
    F: Fn(AgentClient<Channel>) -> Fut + Clone,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    dialer
        .fan_out(hosts, "hosts asked", |d, h| {
            let ask = ask.clone();
            async move {
                let answer = async {
                    if let Some(why) = &h.undialable {
                        return Err(why.to_string());
                    }
                    let c = d.connect(h).await.map_err(|e| e.to_string())?;
                    ask(c).await.map_err(|s| call_error(&s).to_string())
                };
                let answer = tokio::time::timeout_at(deadline, answer)
                    .await
                    .unwrap_or_else(|_| Err("no answer before the run's deadline".to_string()));
                HostAnswer { host: h.name.clone(), instance_id: h.instance_id.clone(), answer }
            }
        })
        .await
        .into_iter()
        .map(|(_, a)| a)
        .collect()
}
