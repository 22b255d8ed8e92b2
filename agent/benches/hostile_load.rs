//! Benchmark: the `dist` agent under never-reading clients. 50 snapshot streams at 100 ms
//! and 50 WatchJob streams on one long-running job, none of them ever read, held for 60 s
//! (`HOSTILE_BENCH_SECS`); the agent's RSS (VmRSS and RssAnon from /proc) before (after
//! start, and warm after one short snapshot stream), every 5 s
//! during, and 10 s after the clients are dropped, plus GetHostInfo latency meanwhile.
//! The bound: RSS <= 16 MB during the load and back near baseline afterwards.
//!
//! Runs the real `target/dist/agent` binary over real mTLS on loopback only; it never
//! builds the agent itself: `cargo build --profile dist -p agent` first, then
//! `cargo bench -p agent --bench hostile_load`.
#![allow(clippy::unwrap_used)] // benches: a panic is the failure report

#[path = "support/dist_agent.rs"]
mod dist_agent;
use dist_agent::{connect, dist_agent, make_pki, status_kb};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ops_proto::v1::{HostInfoRequest, StreamSnapshotsRequest, WatchJobRequest};

/// Never-reading snapshot streams and job watches, each.
const STREAMS: usize = 50;
/// Streams opened per HTTP/2 connection (below max_concurrent_streams_per_connection = 32).
const STREAMS_PER_CONNECTION: usize = 10;
/// The bound on the agent's resident set during the load.
const RSS_BOUND_KB: u64 = 16 * 1024;

/// (VmRSS, RssAnon) in KiB; RssAnon is heap and stacks, what a leak or a buffer grows.
fn rss(pid: u32) -> (u64, u64) {
    (status_kb(pid, "VmRSS:"), status_kb(pid, "RssAnon:"))
}

fn main() {
    let knob = |name: &str, default: u64| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let secs = knob("HOSTILE_BENCH_SECS", 60);
    // Fewer of either kind, to see which one the memory goes to.
    let snapshots = knob("HOSTILE_BENCH_SNAPSHOT_STREAMS", STREAMS as u64) as usize;
    let watchers = knob("HOSTILE_BENCH_WATCHES", STREAMS as u64) as usize;
    let bin = dist_agent();
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!("state_dir = \"{}\"\n", dir.path().join("state").display())
            + "listen = \"127.0.0.1:0\"\n[tls]\nca = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n\
               [metadata]\nenabled = false\n[auth_log]\npaths = [\"/nonexistent/auth.log\"]\n\
               [limits]\nmax_snapshot_streams = 64\nmax_job_watches = 64\n\
               [[actions]]\nname = \"sleeper\"\nargv = [\"sleep\", \"120\"]\n",
    )
    .unwrap();
    println!("agent binary: {} ({} bytes)", bin.display(), std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0));
    let mut child =
        Command::new(&bin).arg("--config").arg(&cfg).env("RUST_LOG", "warn").stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap().to_string();
    let pid = child.id();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ping = connect(dir.path(), &addr).await;
        ping.get_host_info(HostInfoRequest {}).await.unwrap();
        // Settle, then the baseline: the agent after start and one served call.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let baseline = rss(pid);
        println!("baseline: VmRSS {} KiB, RssAnon {} KiB", baseline.0, baseline.1);
        // The warm baseline: the same agent after it has served one short snapshot stream
        // that was read to its end, so that what the first snapshot loads once (socket
        // tables, user names, the CPU baselines) is not counted as the load's growth.
        let req = StreamSnapshotsRequest { interval_ms: 100, top_n: 10, max_count: 3 };
        let mut warmup = ping.stream_snapshots(req).await.unwrap().into_inner();
        while warmup.message().await.unwrap().is_some() {}
        tokio::time::sleep(Duration::from_secs(2)).await;
        let warm = rss(pid);
        println!("warm baseline (after one 3-snapshot stream, read): VmRSS {} KiB, RssAnon {} KiB", warm.0, warm.1);

        let job = ping
            .start_job(ops_proto::v1::StartJobRequest {
                spec: Some(ops_proto::v1::JobSpec {
                    kind: Some(ops_proto::v1::job_spec::Kind::RunAction(ops_proto::v1::RunAction {
                        name: "sleeper".into(),
                    })),
                }),
                idempotency_key: String::new(),
                timeout_seconds: 0,
                queue_if_busy: true,
            })
            .await
            .unwrap()
            .into_inner();

        // The hostile clients: streams opened and held, never polled, so nothing is read
        // and the HTTP/2 windows fill up on the agent's side.
        let (mut held, mut watches) = (Vec::new(), Vec::new());
        let mut clients = Vec::new();
        for c in 0..(snapshots + watchers).div_ceil(STREAMS_PER_CONNECTION) {
            let mut client = connect(dir.path(), &addr).await;
            for s in 0..STREAMS_PER_CONNECTION {
                let n = c * STREAMS_PER_CONNECTION + s;
                if n < snapshots {
                    let req = StreamSnapshotsRequest { interval_ms: 100, top_n: 10, max_count: 0 };
                    held.push(client.stream_snapshots(req).await.unwrap().into_inner());
                } else if n < snapshots + watchers {
                    let req = WatchJobRequest { job_id: job.id.clone(), from_offset: 0 };
                    watches.push(client.watch_job(req).await.unwrap().into_inner());
                }
            }
            clients.push(client);
        }
        println!("opened {snapshots} snapshot streams (100 ms) + {watchers} job watches on {} connections", clients.len());

        let start = Instant::now();
        let mut samples = Vec::new();
        let mut pings = Vec::new();
        let mut next_sample = Duration::ZERO;
        while start.elapsed() < Duration::from_secs(secs) {
            if start.elapsed() >= next_sample {
                samples.push((start.elapsed().as_secs(), rss(pid)));
                next_sample += Duration::from_secs(5);
            }
            let t = Instant::now();
            ping.get_host_info(HostInfoRequest {}).await.unwrap();
            pings.push(t.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        samples.push((start.elapsed().as_secs(), rss(pid)));
        drop(held);
        drop(watches);
        drop(clients);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = rss(pid);

        let peak = samples.iter().map(|s| s.1 .0).max().unwrap_or(0);
        let peak_anon = samples.iter().map(|s| s.1 .1).max().unwrap_or(0);
        pings.sort_by(|a, b| a.total_cmp(b));
        println!("samples during the load (s, VmRSS KiB, RssAnon KiB):");
        for (s, (v, a)) in &samples {
            println!("  {s:>3} {v:>7} {a:>7}");
        }
        println!("peak: VmRSS {peak} KiB, RssAnon {peak_anon} KiB (bound {RSS_BOUND_KB} KiB VmRSS)");
        println!(
            "after: VmRSS {} KiB, RssAnon {} KiB, 10 s after the clients were dropped (baseline {} / {}, warm {} / {})",
            after.0, after.1, baseline.0, baseline.1, warm.0, warm.1
        );
        println!(
            "GetHostInfo during the load: {} calls, median {:.2} ms, max {:.2} ms",
            pings.len(),
            pings[pings.len() / 2],
            pings[pings.len() - 1]
        );
        println!(
            "verdict: peak {} the 16 MB bound",
            if peak <= RSS_BOUND_KB { "within" } else { "EXCEEDS" }
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}
