//! Snapshots over the wire: a busy process shows at the top with a CPU figure that
//! reflects its load, memory totals match /proc/meminfo, and streams keep their
//! interval and stop producing when the client goes away.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e::support::agent::{operator_client, spawn_in_process};
use e2e::support::certs::TestPki;
use ops_proto::v1::{SnapshotRequest, StreamSnapshotsRequest};
use tokio_stream::StreamExt;

const T: Duration = Duration::from_secs(60);

struct Busy(Child);
impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn busy_process() -> Busy {
    Busy(Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("spawn busy loop"))
}

fn meminfo_total_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn busy_process_tops_the_cpu_list_and_memory_matches_meminfo() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let busy = busy_process();
        // Let it get going, then measure over a real 500 ms window.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut client = operator_client(&pki, agent.local_addr()).await;
        let snap = client
            .get_snapshot(SnapshotRequest { top_n: 5, cpu_interval_ms: 500 })
            .await
            .unwrap()
            .into_inner();
        assert!(snap.cpu_window_ms >= 400, "window {} ms", snap.cpu_window_ms);
        let top = &snap.top_by_cpu[0];
        assert_eq!(top.pid as u32, busy.0.id(), "top by CPU: {:?}", snap.top_by_cpu);
        // One core spinning: close to 100 %, never wildly above (2 cores here).
        assert!(top.cpu_percent > 60.0 && top.cpu_percent <= 205.0, "cpu {}", top.cpu_percent);
        assert_eq!(top.name, "sh");
        let mem = snap.memory.unwrap();
        assert_eq!(mem.total_bytes, meminfo_total_bytes());
        assert!(mem.used_bytes > 0 && mem.used_bytes < mem.total_bytes);
        assert!(!snap.filesystems.is_empty(), "no filesystems");
        assert!(snap.top_by_memory.windows(2).all(|w| w[0].rss_bytes >= w[1].rss_bytes));
        // The agent's own listener shows up among listening sockets.
        assert!(snap.listening.iter().any(|l| l.port == u32::from(agent.local_addr().port())), "{:?}", snap.listening);
        drop(busy);
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn back_to_back_snapshots_reuse_a_recent_baseline() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let mut client = operator_client(&pki, agent.local_addr()).await;
        client.get_snapshot(SnapshotRequest { top_n: 3, cpu_interval_ms: 150 }).await.unwrap();
        let t = Instant::now();
        let s = client.get_snapshot(SnapshotRequest { top_n: 3, cpu_interval_ms: 150 }).await.unwrap().into_inner();
        // The second call measures against the first call's samples instead of sleeping again.
        assert!(s.cpu_window_ms >= 100, "window {}", s.cpu_window_ms);
        assert!(t.elapsed() < Duration::from_millis(150), "took {:?}", t.elapsed());
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn stream_yields_at_the_asked_interval_and_stops_when_client_leaves() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let mut client = operator_client(&pki, agent.local_addr()).await;
        let mut stream = client
            .stream_snapshots(StreamSnapshotsRequest { interval_ms: 200, top_n: 3, max_count: 0 })
            .await
            .unwrap()
            .into_inner();
        let mut times = Vec::new();
        for _ in 0..6 {
            let s = stream.next().await.unwrap().unwrap();
            times.push(s.taken_at_unix_ms);
            assert!((150..=400).contains(&s.cpu_window_ms), "window {}", s.cpu_window_ms);
        }
        let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<i64>() as f64 / gaps.len() as f64;
        assert!((170.0..=260.0).contains(&mean), "gaps {gaps:?}");
        assert_eq!(agent.stats().active_streams.load(Ordering::SeqCst), 1);
        drop(stream);
        drop(client);
        // The producer notices the closed channel within about one interval.
        let deadline = Instant::now() + Duration::from_secs(5);
        while agent.stats().active_streams.load(Ordering::SeqCst) != 0 {
            assert!(Instant::now() < deadline, "producer still running after the client left");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn stream_interval_below_minimum_is_invalid_and_max_count_ends_it() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let mut client = operator_client(&pki, agent.local_addr()).await;
        let err = client
            .stream_snapshots(StreamSnapshotsRequest { interval_ms: 50, top_n: 3, max_count: 0 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("minimum is 100"), "{}", err.message());
        let stream = client
            .stream_snapshots(StreamSnapshotsRequest { interval_ms: 100, top_n: 1, max_count: 3 })
            .await
            .unwrap()
            .into_inner();
        let all: Vec<_> = stream.collect().await;
        assert_eq!(all.len(), 3);
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}
