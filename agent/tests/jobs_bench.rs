//! Measurements the issue asks for, at the `JobManager` level (no gRPC yet): start to
//! first output, watch throughput on a job printing 100 MB, and this process's RSS
//! meanwhile (the output must stream from disk, not sit in memory).
//!
//! Ignored by default (it writes 100 MB); run with
//! `cargo test -p agent --release --test jobs_bench -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

mod jobs_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobs_support::*;
use ops_proto::v1::{job_event, JobState};
use tokio_stream::StreamExt;

const OUTPUT_BYTES: u64 = 100 * 1000 * 1000;

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: writes 100 MB; run explicitly"]
async fn bench_first_output_latency_and_100_mb_watch_throughput() {
    let mut env = TestEnv::new();
    env.settings
        .actions
        .push(action("hello", &["/bin/echo", "hello"]));
    env.settings.actions.push(sh(
        "flood",
        &format!("yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz | head -c {OUTPUT_BYTES}"),
    ));
    let mgr = env.open().await;

    // Start to first output: from the start() call to the first chunk holding the job's
    // own output (the agent's "$ command" note comes before the process exists).
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let job = start(&mgr, run_action("hello")).await;
        let mut stream = mgr.watch(&job.id, 0).unwrap();
        let mut seen = Vec::new();
        let wait = async {
            while let Some(ev) = stream.next().await {
                if let Some(job_event::Event::Output(c)) = ev.unwrap().event {
                    seen.extend_from_slice(&c.data);
                    if seen.windows(6).any(|w| w == b"hello\n") {
                        return t0.elapsed();
                    }
                }
            }
            panic!("no output");
        };
        latencies.push(tokio::time::timeout(STEP, wait).await.unwrap());
        follow(&mgr, &job.id, 0).await;
    }
    latencies.sort();
    eprintln!(
        "start-to-first-output: median {:?}, min {:?}, max {:?} (20 runs)",
        latencies[10], latencies[0], latencies[19]
    );

    let rss_before = rss_kib("VmRSS:");
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib("VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let t0 = Instant::now();
    let job = start(&mgr, run_action("flood")).await;
    let mut stream = mgr.watch(&job.id, 0).unwrap();
    let mut total = 0u64;
    let mut chunks = 0u64;
    let run = async {
        while let Some(ev) = stream.next().await {
            match ev.unwrap().event.unwrap() {
                job_event::Event::Output(c) => {
                    total += c.data.len() as u64;
                    chunks += 1;
                }
                job_event::Event::Finished(j) => return j,
            }
        }
        panic!("watch ended early");
    };
    let done = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .unwrap();
    let elapsed = t0.elapsed();
    sampler.abort();
    assert_eq!(JobState::try_from(done.state).unwrap(), JobState::Succeeded);
    assert!(total >= OUTPUT_BYTES);
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "100 MB job watched live: {total} bytes in {chunks} chunks, {elapsed:?} => {:.1} MB/s",
        total as f64 / elapsed.as_secs_f64() / 1e6
    );
    eprintln!(
        "RSS of the test process: {rss_before} KiB before, {peak} KiB peak while streaming (+{} KiB)",
        peak.saturating_sub(rss_before)
    );

    // Re-reading the finished log from disk (a controller reattaching after the fact).
    let t0 = Instant::now();
    let (out, _) = follow(&mgr, &job.id, 0).await;
    let elapsed = t0.elapsed();
    eprintln!(
        "replay of the finished 100 MB log: {elapsed:?} => {:.1} MB/s",
        out.len() as f64 / elapsed.as_secs_f64() / 1e6
    );
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "output must not be held in memory"
    );
}
