//! Benchmark: `controller top` over 200 agents at 1 Hz. The agents run inside this process
//! (real listeners on loopback, real mTLS, each its own job store); the controller is the
//! real binary as a child, `top --interval 1s --count 60 --output json`, and its CPU time
//! (from /proc/PID/stat) and resident set (VmRSS, sampled every second; the peak and the
//! last) are what is measured, with how many hosts the last frame saw answering.
//!
//! `cargo bench -p e2e --profile dev --bench top` (TOP_BENCH_AGENTS, TOP_BENCH_SECS to
//! change 200 and 60). Needs the controller binary: `cargo build --bins`.
#![allow(clippy::unwrap_used)] // a benchmark: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::support::agent::{config_text, write_config};
use e2e::support::certs::TestPki;
use e2e::support::controller::ControllerConfig;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Clock ticks per second, from `getconf` (no unsafe sysconf call).
fn ticks_per_second() -> f64 {
    Command::new("getconf").arg("CLK_TCK").output().ok().and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok()).unwrap_or(100.0)
}

fn main() {
    let agents = knob("TOP_BENCH_AGENTS", 200) as usize;
    let secs = knob("TOP_BENCH_SECS", 60);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let pki = TestPki::new();
    let mut running = Vec::new();
    let mut cfg = ControllerConfig::new(&pki).connect_timeout("5s");
    rt.block_on(async {
        for i in 0..agents {
            let state = pki.path().join(format!("state-{i}"));
            let text = config_text(&pki, &pki.agent, "127.0.0.1:0", &format!("state_dir = \"{}\"\n", state.display()), "");
            let path = write_config(&pki, &format!("agent-{i}"), &text);
            let a = agent::server::start(agent::config::AgentConfig::load(&path).unwrap()).await.unwrap();
            cfg = std::mem::replace(&mut cfg, ControllerConfig::new(&pki)).host(&format!("host-{i:03}"), a.local_addr());
            running.push(a);
        }
    });
    let config = cfg.fleet_key(&format!("concurrency = {agents}")).write();
    println!("{agents} agents in this process; controller top --interval 1s --count {secs}");
    let controller = e2e::support::binary("controller");
    let mut child = Command::new(&controller)
        .arg("--config")
        .arg(&config)
        .args(["--output", "json", "top", "--interval", "1s", "--count", &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    let reader = std::thread::spawn({
        let out = child.stdout.take().unwrap();
        move || BufReader::new(out).lines().map_while(Result::ok).last()
    });
    let mut peak = 0;
    let mut last_rss = 0;
    let mut ticks = 0;
    while child.try_wait().unwrap().is_none() {
        let now = rss_kb(pid);
        if now > 0 {
            last_rss = now;
            peak = peak.max(now);
        }
        ticks = cpu_ticks(pid).max(ticks);
        std::thread::sleep(Duration::from_secs(1));
    }
    let wall = started.elapsed();
    let last = reader.join().unwrap().unwrap_or_default();
    let frame: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
    let answering = frame["answering"].as_u64().unwrap_or(0);
    let silent = frame["not_answering"].as_array().map(Vec::len).unwrap_or(0);
    println!(
        "controller over {:.0} s: CPU {:.2} s ({:.1} % of a core), RSS peak {:.1} MiB, last {:.1} MiB; last frame: {answering} hosts answering, {silent} not",
        wall.as_secs_f64(),
        ticks as f64 / ticks_per_second(),
        100.0 * ticks as f64 / ticks_per_second() / wall.as_secs_f64(),
        peak as f64 / 1024.0,
        last_rss as f64 / 1024.0
    );
    rt.block_on(async {
        for a in running {
            let _ = a.shutdown().await;
        }
    });
}
