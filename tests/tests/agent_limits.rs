//! The agent under hostile load, over real mTLS: idle unauthenticated connections cannot
//! lock the controller out, stream limits refuse with RESOURCE_EXHAUSTED naming the limit,
//! and the counters reach a viewer through GetAgentStats and `fleet ping --stats`.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use e2e::support::agent::{config_text, dialer, host, operator_client, spawn_in_process, write_config, AgentProcess};
use e2e::support::binary;
use e2e::support::certs::TestPki;
use ops_proto::v1::{AgentStatsRequest, HostInfoRequest, StreamSnapshotsRequest};

const IDLE_CONNECTIONS: usize = 1000;

/// Raises this process's open-file limit to its hard limit if the soft one is too low
/// to hold the idle connections plus the test's own files.
fn ensure_fds(needed: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current.is_some_and(|c| c < needed) {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim).unwrap();
    }
    let now = getrlimit(Resource::Nofile);
    assert!(
        now.current.is_none_or(|c| c >= needed),
        "RLIMIT_NOFILE is {:?}; this test needs {needed}: raise the hard limit (ulimit -Hn)",
        now.current
    );
}

#[test]
fn a_thousand_idle_tcp_connections_do_not_lock_out_fleet_ping() {
    ensure_fds(IDLE_CONNECTIONS as u64 + 256);
    let pki = TestPki::new();
    let text = config_text(&pki, &pki.agent, "127.0.0.1:0", "", "");
    let agent = AgentProcess::start(&write_config(&pki, "agent-idle", &text));
    // Connections that never send a ClientHello, all from the same source as the controller.
    let idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS).map(|_| TcpStream::connect(agent.addr).unwrap()).collect();

    let cfg_text = format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[fleet]\nsource = \"static\"\nconnect_timeout = \"5s\"\n\
         [[fleet.hosts]]\nname = \"web-1\"\naddress = \"{}\"\nserver_name = \"localhost\"\n",
        pki.ca_file.display(),
        pki.viewer.cert.display(),
        pki.viewer.key.display(),
        agent.addr
    );
    let cfg = pki.path().join("controller.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let out = Command::new(binary("controller"))
        .arg("--config")
        .arg(&cfg)
        .args(["--output", "json", "fleet", "ping", "--stats"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let row = &rows[0];
    assert_eq!(row["reachable"], true, "{row}");
    let stats = &row["stats"];
    // The idle flood was evicted oldest first to make room, not allowed to fill the table.
    assert!(stats["handshakes_evicted"].as_u64().unwrap() >= (IDLE_CONNECTIONS - 256) as u64, "{stats}");
    assert!(stats["handshakes_pending"].as_u64().unwrap() <= 256, "{stats}");
    assert!(stats["limits_hit"]["limits.max_pending_handshakes_per_source"].as_u64().unwrap() > 0, "{stats}");

    let table = Command::new(binary("controller")).arg("--config").arg(&cfg).args(["fleet", "ping", "--stats"]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("HS EVICTED") && table.contains("limits.max_pending_handshakes_per_source="), "{table}");
    drop(idle);
}

#[tokio::test]
async fn snapshot_streams_over_the_limit_are_refused_naming_the_limit_and_counted() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "[limits]\nmax_snapshot_streams = 2\n").await;
        let mut client = operator_client(&pki, agent.local_addr()).await;
        let req = || StreamSnapshotsRequest { interval_ms: 100, top_n: 1, max_count: 0 };
        let a = client.stream_snapshots(req()).await.unwrap().into_inner();
        let b = client.stream_snapshots(req()).await.unwrap().into_inner();
        let err = client.stream_snapshots(req()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("limits.max_snapshot_streams = 2"), "{}", err.message());

        // A viewer reads the counters over real mTLS.
        let mut viewer = dialer(pki.client_config(&pki.viewer)).connect(&host("t", agent.local_addr())).await.unwrap();
        let s = viewer.get_agent_stats(AgentStatsRequest {}).await.unwrap().into_inner();
        assert_eq!(s.snapshot_streams_open, 2, "{s:?}");
        let hit = s.limits_hit.iter().find(|h| h.limit == "limits.max_snapshot_streams").unwrap();
        assert_eq!(hit.hits, 1);

        // Closing a stream frees its permit: the next one is accepted.
        drop(a);
        let mut freed = false;
        for _ in 0..100 {
            if viewer.get_agent_stats(AgentStatsRequest {}).await.unwrap().into_inner().snapshot_streams_open == 1 {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(freed, "closing a stream did not release its permit");
        let _c = client.stream_snapshots(req()).await.unwrap().into_inner();
        drop(b);
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

/// Snapshot streams the never-reading viewer holds: the default limit, so all are granted.
const HELD_STREAMS: usize = 32;
/// Connections they are spread over (each below max_concurrent_streams_per_connection).
const HELD_CONNECTIONS: usize = 4;
/// How far the agent's RSS (debug build) may grow over its baseline while the streams are
/// held. Buffers alone (4 snapshots per producer, 64 KiB stream / 256 KiB connection
/// windows) account for about 3 MiB; measured growth is about +24 MiB, reached within 5 s
/// and then flat, not yet explained (allocator arenas of the producing threads is the
/// suspect). The bound is set above that and the plateau is checked separately.
const RSS_GROWTH_BOUND: u64 = 32 * 1024 * 1024;
/// Growth allowed over the last half of the hold: a leak or an unbounded buffer keeps
/// growing while the streams stay unread; bounded buffers have filled by then.
const RSS_LATE_GROWTH_BOUND: u64 = 4 * 1024 * 1024;

#[tokio::test]
#[ignore = "fails today: the agent's RSS steps from ~18 MiB to 37-46 MiB within 10 s of 32 unread snapshot \
            streams (samples_dropped stays 0); see docs/agent-limits.md, Never-reading clients"]
async fn a_viewer_holding_every_snapshot_stream_unread_keeps_agent_memory_bounded_and_pings_answered() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let pki = TestPki::new();
        let text = config_text(&pki, &pki.agent, "127.0.0.1:0", "", "");
        let agent = AgentProcess::start(&write_config(&pki, "agent-unread", &text));
        let viewer_dialer = dialer(pki.client_config(&pki.viewer));
        let mut ping = viewer_dialer.connect(&host("ping", agent.addr)).await.unwrap();
        ping.get_agent_stats(AgentStatsRequest {}).await.unwrap();
        let baseline = agent.rss_bytes();
        assert!(baseline > 0, "could not read the agent's RSS from /proc");

        // Opened and held, never polled: nothing is read, so what the agent produces piles
        // up in its bounded buffers and the HTTP/2 windows.
        let mut held = Vec::new();
        let mut conns = Vec::new();
        for c in 0..HELD_CONNECTIONS {
            let mut client = viewer_dialer.connect(&host(&format!("hostile-{c}"), agent.addr)).await.unwrap();
            for _ in 0..HELD_STREAMS / HELD_CONNECTIONS {
                let req = StreamSnapshotsRequest { interval_ms: 100, top_n: 200, max_count: 0 };
                held.push(client.stream_snapshots(req).await.unwrap().into_inner());
            }
            conns.push(client);
        }
        let open = ping.get_agent_stats(AgentStatsRequest {}).await.unwrap().into_inner();
        assert_eq!(open.snapshot_streams_open, HELD_STREAMS as u64, "{open:?}");

        let start = std::time::Instant::now();
        let mut peak = baseline;
        let mut slowest = Duration::ZERO;
        let mut samples = Vec::new();
        while start.elapsed() < Duration::from_secs(10) {
            let t = std::time::Instant::now();
            let answer = tokio::time::timeout(Duration::from_secs(2), ping.get_host_info(HostInfoRequest {})).await;
            let took = t.elapsed();
            answer
                .unwrap_or_else(|_| panic!("GetHostInfo did not answer within 2 s under {HELD_STREAMS} unread streams"))
                .unwrap();
            slowest = slowest.max(took);
            let now = agent.rss_bytes();
            samples.push(now / 1024);
            peak = peak.max(now);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let stats = ping.get_agent_stats(AgentStatsRequest {}).await.unwrap().into_inner();
        eprintln!(
            "agent RSS baseline {} KiB, peak {} KiB over 10 s of {HELD_STREAMS} unread streams; slowest ping {slowest:?}; \
             samples dropped {}",
            baseline / 1024,
            peak / 1024,
            stats.samples_dropped
        );
        assert!(
            peak <= baseline + RSS_GROWTH_BOUND,
            "agent RSS grew from {} KiB to {} KiB (bound: +{} KiB); samples every 0.5 s (KiB): {samples:?}",
            baseline / 1024,
            peak / 1024,
            RSS_GROWTH_BOUND / 1024
        );
        let mid = samples[samples.len() / 2] * 1024;
        assert!(
            peak <= mid + RSS_LATE_GROWTH_BOUND,
            "agent RSS still growing in the second half: {} KiB at the middle, peak {} KiB; samples (KiB): {samples:?}",
            mid / 1024,
            peak / 1024
        );
        drop(held);
        drop(conns);
    })
    .await
    .unwrap();
}
