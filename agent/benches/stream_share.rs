//! Benchmark: what watching one host costs the agent when several people watch it. The
//! `dist` agent serves snapshot streams at 100 ms (10 Hz) to one client, then to five
//! clients on five connections (five people during an incident), in alternating rounds of
//! `STREAM_BENCH_SECS` (default 15) each, in one run; the agent's CPU time over each round
//! as a share of one core, the snapshots delivered, and the ratio five/one. The issue's
//! goal: five clients at 10 Hz cost at most 5 % of a core.
//!
//! Loopback only: `cargo build --profile dist -p agent`, then
//! `cargo bench -p agent --bench stream_share`.
#![allow(clippy::unwrap_used)] // benches: a panic is the failure report

#[path = "support/dist_agent.rs"]
mod dist_agent;

use std::time::{Duration, Instant};

use ops_proto::v1::StreamSnapshotsRequest;

const INTERVAL_MS: u32 = 100;
const ROUNDS: usize = 2;
const GOAL_PERCENT: f64 = 5.0;

/// `clients` streams read as fast as they come for `secs`; (agent CPU % of one core, snapshots read).
async fn round(dir: &std::path::Path, addr: &str, pid: u32, clients: usize, secs: u64) -> (f64, u64) {
    let mut streams = Vec::new();
    for _ in 0..clients {
        let mut c = dist_agent::connect(dir, addr).await;
        let req = StreamSnapshotsRequest { interval_ms: INTERVAL_MS, top_n: 10, max_count: 0 };
        streams.push(c.stream_snapshots(req).await.unwrap().into_inner());
    }
    // Let every stream deliver its first snapshot before the clock starts.
    for s in &mut streams {
        s.message().await.unwrap();
    }
    let (t0, c0) = (Instant::now(), dist_agent::cpu_ticks(pid));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut s in streams {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok(Ok(Some(_))) = tokio::time::timeout_at(deadline, s.message()).await {
                n += 1;
            }
            n
        }));
    }
    let mut read = 0;
    for t in tasks {
        read += t.await.unwrap();
    }
    let cpu = (dist_agent::cpu_ticks(pid) - c0) as f64 / dist_agent::ticks_per_second();
    (100.0 * cpu / t0.elapsed().as_secs_f64(), read)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let secs = std::env::var("STREAM_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let dir = tempfile::tempdir().unwrap();
    dist_agent::make_pki(dir.path());
    let (mut child, addr) = dist_agent::start(dir.path(), "");
    let pid = child.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (one, five) = rt.block_on(async {
        // Warm-up: the first snapshot loads what later ones reuse (user names, baselines).
        round(dir.path(), &addr, pid, 1, 2).await;
        let (mut one, mut five) = (Vec::new(), Vec::new());
        for r in 0..ROUNDS {
            let a = round(dir.path(), &addr, pid, 1, secs).await;
            let b = round(dir.path(), &addr, pid, 5, secs).await;
            println!("round {}: 1 client {:.2} % of a core ({} snapshots), 5 clients {:.2} % ({} snapshots)", r + 1, a.0, a.1, b.0, b.1);
            one.push(a.0);
            five.push(b.0);
        }
        (median(one), median(five))
    });
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "median over {ROUNDS} rounds of {secs} s at {INTERVAL_MS} ms: 1 client {one:.2} %, 5 clients {five:.2} % of a core; 5/1 = {:.2}x; goal <= {GOAL_PERCENT} % for 5: {}",
        five / one,
        if five <= GOAL_PERCENT { "met" } else { "NOT met" }
    );
}
