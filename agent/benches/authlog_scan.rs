//! Throughput of a full auth log scan (`AuthLog::query(0, 10, true)`) over a synthetic
//! auth log of ~1 GiB (`AUTHLOG_BENCH_BYTES` to change it, `AUTHLOG_BENCH_FILE` to keep
//! it), next to `grep -c` and `rg -c`
//! on the same file, page cache warm, the three run in turn as child processes (the scan is
//! this binary run again with `AUTHLOG_SCAN_CHILD_FILE`), wall and CPU time each. Prints the throughput ratio
//! to `rg -c` against the goal of 0.6. Run with `cargo bench -p agent --bench
//! authlog_scan`. It measures; it checks only that every scan counted exactly the failures
//! written (and that grep and rg are installed).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::error::Error;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::authlog::AuthLog;

const DEFAULT_BYTES: u64 = 1 << 30;
/// Paired runs (authlog, grep, rg in turn); the medians are quoted.
const RUNS: usize = 5;
/// The goal: the agent's full scan reaches at least this share of `rg -c`'s
/// throughput on the same file, page cache warm.
const GOAL_VS_RG: f64 = 0.6;
#[path = "support/authlog_gen.rs"]
mod authlog_gen;

use authlog_gen::generate;

fn median<T: PartialOrd + Copy>(mut samples: Vec<T>) -> T {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    samples[samples.len() / 2]
}

/// CPU time (user + system) of this process's waited-for children so far, in ms (clock
/// ticks of 10 ms from /proc/self/stat).
fn children_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<u64> = after.split_whitespace().skip(13).take(2).filter_map(|v| v.parse().ok()).collect();
    f.iter().sum::<u64>() as f64 * 10.0
}

/// One run of a command as a child process, output discarded: (wall, CPU ms).
fn time_command(command: &mut Command) -> Result<(Duration, f64), Box<dyn Error>> {
    let cpu = children_cpu_ms();
    let started = Instant::now();
    // Output through a pipe, not /dev/null: GNU grep stops at the first match when its
    // output is /dev/null, which would time nothing.
    let status = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).output()?.status;
    let wall = started.elapsed();
    if !status.success() && status.code() != Some(1) {
        return Err(format!("{command:?} failed: {status}").into());
    }
    Ok((wall, children_cpu_ms() - cpu))
}

/// The child: one full scan by the agent's reader; fails unless it counted exactly what
/// was written.
fn scan_once(path: &Path, failures: u64) -> Result<(), Box<dyn Error>> {
    let mut log = AuthLog::new(vec![path.to_path_buf()], 1 << 20);
    let result = log.query(0, 10, true)?;
    if result.total + result.evicted_events != failures || result.malformed_lines != 0 {
        return Err(format!(
            "scan counted {} (+{} evicted, {} malformed) of {failures} failures written",
            result.total, result.evicted_events, result.malformed_lines
        )
        .into());
    }
    Ok(())
}

const CHILD_FILE: &str = "AUTHLOG_SCAN_CHILD_FILE";
const CHILD_FAILURES: &str = "AUTHLOG_SCAN_CHILD_FAILURES";

fn main() -> Result<(), Box<dyn Error>> {
    if let (Ok(file), Ok(failures)) = (std::env::var(CHILD_FILE), std::env::var(CHILD_FAILURES)) {
        return scan_once(Path::new(&file), failures.parse()?);
    }
    let target = match std::env::var("AUTHLOG_BENCH_BYTES") {
        Ok(value) => value
            .parse::<u64>()
            .map_err(|e| format!("AUTHLOG_BENCH_BYTES={value:?}: {e}"))?,
        Err(_) => DEFAULT_BYTES,
    };
    let dir = tempfile::tempdir()?;
    // `AUTHLOG_BENCH_FILE` writes the log there and keeps it, for profiling one scan by
    // hand: `AUTHLOG_SCAN_CHILD_FILE=<file> AUTHLOG_SCAN_CHILD_FAILURES=<n> <bench binary>`.
    let path = match std::env::var_os("AUTHLOG_BENCH_FILE") {
        Some(file) => std::path::PathBuf::from(file),
        None => dir.path().join("auth.log"),
    };
    let started = Instant::now();
    let written = generate(&path, target)?;
    println!(
        "generated {} bytes, {} lines, {} failure lines ({:.1}%) in {:.1?}",
        written.bytes,
        written.lines,
        written.failures,
        100.0 * written.failures as f64 / written.lines as f64,
        started.elapsed()
    );
    let ours = || {
        let mut c = Command::new(std::env::current_exe().unwrap_or_default());
        c.env(CHILD_FILE, &path).env(CHILD_FAILURES, written.failures.to_string());
        c
    };
    let tool = |program: &str| {
        let mut c = Command::new(program);
        c.args(["-c", "Failed password"]).arg(&path);
        c
    };
    for program in ["grep", "rg"] {
        if Command::new(program).arg("--version").stdout(Stdio::null()).status().is_err() {
            return Err(format!("{program} is not installed: run scripts/setup (apt-get install grep ripgrep)").into());
        }
    }

    // All three as child processes timed alike, page cache warm (one untimed pass of each
    // first), run in turn so that a machine whose speed drifts slows all of them alike.
    // CPU time is quoted beside wall time: on a shared machine the wall time of a run is
    // mostly how long it waited for a core.
    time_command(&mut ours())?;
    time_command(&mut tool("grep"))?;
    time_command(&mut tool("rg"))?;
    let names = ["authlog", "grep", "rg"];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let (mut wall_ratio, mut cpu_ratio) = (Vec::new(), Vec::new());
    for run in 1..=RUNS {
        let mut line = format!("run {run}:");
        let mut this = [(Duration::ZERO, 0.0); 3];
        for (i, command) in [ours(), tool("grep"), tool("rg")].iter_mut().enumerate() {
            this[i] = time_command(command)?;
            wall[i].push(this[i].0.as_secs_f64() * 1000.0);
            cpu[i].push(this[i].1);
            line += &format!(" {} {:.0} ms wall / {:.0} ms CPU;", names[i], this[i].0.as_secs_f64() * 1000.0, this[i].1);
        }
        wall_ratio.push(this[2].0.as_secs_f64() / this[0].0.as_secs_f64());
        cpu_ratio.push(this[2].1 / this[0].1.max(1.0));
        println!("{line}");
    }
    for (i, name) in names.iter().enumerate() {
        let (w, c) = (median(wall[i].clone()), median(cpu[i].clone()));
        println!(
            "{name:>8}: median {w:.0} ms wall ({:.2} GB/s), {c:.0} ms CPU ({:.2} GB/s per core)",
            written.bytes as f64 / w / 1e6,
            written.bytes as f64 / c.max(1.0) / 1e6
        );
    }
    let verdict = |r: f64| if r >= GOAL_VS_RG { "goal met" } else { "BELOW the goal" };
    let (w, c) = (median(wall_ratio), median(cpu_ratio));
    println!(
        "authlog throughput / `rg -c` throughput (goal: at least {GOAL_VS_RG:.1}), median of {RUNS} pairs: wall {w:.2} ({}), CPU {c:.2} ({})",
        verdict(w),
        verdict(c)
    );
    Ok(())
}
