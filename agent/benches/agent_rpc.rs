//! Benchmark: snapshot RPC round trip against `top -b -n 1`, and the agent's RSS after
//! start and during a 10 Hz diagnostics stream. Runs the release `agent` binary as a
//! real process over real mTLS on loopback.
//!
//! Then jobs through gRPC: start-to-first-output latency, and the throughput of a watch
//! on a job printing 100 MB, with the agent's RSS meanwhile.
//!
//! `cargo bench -p agent --bench agent_rpc`; `AGENT_BENCH_STREAM_SECS` sets the stream
//! duration (default 600 s, the 10 minutes the issue asks for).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ops_proto::identity::Role;
use ops_proto::tls::{self, AgentTarget, DialTimeouts, TlsPaths};
use ops_proto::v1::agent_client::AgentClient;
use ops_proto::v1::{SnapshotRequest, StreamSnapshotsRequest};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use tokio_stream::StreamExt;

fn write_pair(dir: &std::path::Path, name: &str, cert: &str, key: &str) {
    std::fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key).unwrap();
    // The agent refuses a key that group or others can read, as ssh does.
    std::fs::set_permissions(dir.join(format!("{name}.key")), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

fn make_pki(dir: &std::path::Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut agent = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    agent.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let k = KeyPair::generate().unwrap();
    write_pair(dir, "agent", &agent.signed_by(&k, &issuer).unwrap().pem(), &k.serialize_pem());
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.subject_alt_names = vec![SanType::URI(Role::Operator.uri().try_into().unwrap())];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let k = KeyPair::generate().unwrap();
    write_pair(dir, "client", &client.signed_by(&k, &issuer).unwrap().pem(), &k.serialize_pem());
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time the process has used (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat are 12 and 13 after the command name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// Heap and stacks: what a leak would grow (the rest is the binary's mapped code).
fn anon_kb(pid: u32) -> u64 {
    status_kb(pid, "RssAnon:")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn top_ms() -> Option<f64> {
    let mut runs = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let out = Command::new("top").args(["-b", "-n", "1"]).stdout(Stdio::null()).status().ok()?;
        if !out.success() {
            return None;
        }
        runs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Some(median(runs))
}

fn main() {
    let stream_secs: u64 = std::env::var("AGENT_BENCH_STREAM_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!("state_dir = \"{}\"\n", dir.path().join("state").display()) + "listen = \"127.0.0.1:0\"\n[tls]\nca = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n[metadata]\nenabled = false\n[auth_log]\npaths = [\"/nonexistent/auth.log\"]\n\
         [[actions]]\nname = \"hello\"\nargv = [\"echo\", \"hello\"]\n\
         [[actions]]\nname = \"flood\"\nargv = [\"sh\", \"-c\", \"yes 0123456789012345678901234567890123456789012345678901234567890123456789 | head -c 100000000\"]\n",
    )
    .unwrap();
    // AGENT_BENCH_BIN measures another build of the agent (scripts/bench-agent passes the
    // `dist` profile's, the one hosts run); by default the bench profile's.
    let bin = std::env::var("AGENT_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_agent").to_string());
    println!("agent binary: {bin} ({} bytes)", std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0));
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap().to_string();
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(1));
    let rss_start = rss_kb(pid);
    let anon_start = anon_kb(pid);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let paths = TlsPaths { ca: dir.path().join("ca.pem"), cert: dir.path().join("client.pem"), key: dir.path().join("client.key") };
        let config = tls::client_config(&paths).unwrap();
        let target = AgentTarget { address: addr.clone(), server_name: "localhost".into() };
        let channel = tls::connect(&target, Arc::clone(&config), DialTimeouts::default()).await.unwrap();
        let mut client = AgentClient::new(channel);
        // Warm-up: the first call measures over a fresh CPU window.
        client.get_snapshot(SnapshotRequest { top_n: 10, cpu_interval_ms: 0 }).await.unwrap();
        let mut rtts = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            client.get_snapshot(SnapshotRequest { top_n: 10, cpu_interval_ms: 0 }).await.unwrap();
            rtts.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let snap_ms = median(rtts);
        let rss_after_calls = rss_kb(pid);
        match top_ms() {
            Some(top) => println!(
                "snapshot RPC round trip: median {snap_ms:.2} ms over 100 calls; `top -b -n 1`: median {top:.1} ms; ratio top/snapshot = {:.1}x",
                top / snap_ms
            ),
            None => println!("snapshot RPC round trip: median {snap_ms:.2} ms over 100 calls (top not available)"),
        }
        println!(
            "agent RSS: {} KiB after start ({} KiB anonymous), {} KiB after 100 snapshot calls ({} KiB anonymous)",
            rss_start, anon_start, rss_after_calls, anon_kb(pid)
        );

        let mut stream = client
            .stream_snapshots(StreamSnapshotsRequest { interval_ms: 100, top_n: 10, max_count: 0 })
            .await
            .unwrap()
            .into_inner();
        let start = Instant::now();
        let ticks_start = cpu_ticks(pid);
        let mut received = 0u64;
        let mut samples = Vec::new();
        let mut next_report = Duration::from_secs(10);
        while start.elapsed() < Duration::from_secs(stream_secs) {
            match stream.next().await {
                Some(Ok(_)) => received += 1,
                other => panic!("stream ended: {other:?}"),
            }
            if start.elapsed() >= next_report {
                samples.push((start.elapsed().as_secs(), rss_kb(pid), anon_kb(pid)));
                next_report += Duration::from_secs((stream_secs / 10).max(10));
            }
        }
        let rss_end = rss_kb(pid);
        // USER_HZ is 100 on Linux x86_64 and aarch64.
        let cpu_secs = (cpu_ticks(pid) - ticks_start) as f64 / 100.0;
        println!(
            "agent CPU during the 10 Hz stream: {:.1} % of one core ({cpu_secs:.1} s over {:.0} s)",
            100.0 * cpu_secs / start.elapsed().as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
        let max = samples.iter().map(|s| s.1).max().unwrap_or(rss_end).max(rss_end);
        println!(
            "10 Hz stream for {stream_secs} s: {received} snapshots; RSS {} KiB at 10 s, {} KiB at end, max {} KiB; samples (s, RSS KiB, anonymous KiB): {:?}",
            samples.first().map(|s| s.1).unwrap_or(rss_end),
            rss_end,
            max,
            samples
        );

        // Jobs: start-to-first-output, then a 100 MB output through a watch.
        let start_req = |name: &str| ops_proto::v1::StartJobRequest {
            spec: Some(ops_proto::v1::JobSpec {
                kind: Some(ops_proto::v1::job_spec::Kind::RunAction(ops_proto::v1::RunAction { name: name.into() })),
            }),
            idempotency_key: String::new(),
            timeout_seconds: 0,
            queue_if_busy: true,
        };
        let mut firsts = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let job = client.start_job(start_req("hello")).await.unwrap().into_inner();
            let mut w = client
                .watch_job(ops_proto::v1::WatchJobRequest { job_id: job.id, from_offset: 0 })
                .await
                .unwrap()
                .into_inner();
            // The first chunk carrying the action's own output.
            loop {
                match w.next().await {
                    Some(Ok(ops_proto::v1::JobEvent { event: Some(ops_proto::v1::job_event::Event::Output(c)) }))
                        if c.data.windows(6).any(|x| x == b"hello\n") => break,
                    Some(Ok(ops_proto::v1::JobEvent { event: Some(ops_proto::v1::job_event::Event::Finished(_)) })) | None => break,
                    _ => {}
                }
            }
            firsts.push(t.elapsed().as_secs_f64() * 1000.0);
            while w.next().await.is_some() {}
        }
        println!("job start-to-first-output (start RPC + watch, `echo hello`): median {:.2} ms over 20 jobs", median(firsts));

        let rss_before = rss_kb(pid);
        let t = Instant::now();
        let job = client.start_job(start_req("flood")).await.unwrap().into_inner();
        let mut w = client
            .watch_job(ops_proto::v1::WatchJobRequest { job_id: job.id, from_offset: 0 })
            .await
            .unwrap()
            .into_inner();
        let (mut bytes, mut max_rss) = (0u64, 0u64);
        let mut chunks = 0u64;
        while let Some(ev) = w.next().await {
            if let Some(ops_proto::v1::job_event::Event::Output(c)) = ev.unwrap().event {
                bytes += c.data.len() as u64;
                chunks += 1;
                if chunks.is_multiple_of(64) {
                    max_rss = max_rss.max(rss_kb(pid));
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "100 MB job watched live: {} bytes in {secs:.2} s = {:.0} MB/s; agent RSS {} KiB before, max {} KiB during, {} KiB after",
            bytes,
            bytes as f64 / secs / 1e6,
            rss_before,
            max_rss,
            rss_kb(pid)
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}
