//! Benchmark behind the dependency decision in docs/architecture.md: the agent's /proc
//! collector against the `sysinfo` crate doing the equivalent refresh, in one run.
//!
//! Time: rounds 100 ms apart; in each, one snapshot by the agent's collector
//! (`collect::sample` + `build_snapshot_with`, socket tables left out since sysinfo has no
//! equivalent: per-process CPU over the window, RSS, command lines, memory and swap, load,
//! filesystems, plus per-device I/O rates that sysinfo would not replace) and then
//! sysinfo's refresh of the same (processes with CPU, memory, command line and user,
//! memory, CPU usage, load, disks) with both top-10 lists sorted out of it. The ratio is
//! taken pair by pair.
//!
//! RSS: this binary re-runs itself as a child doing only one of the two for 20 snapshots,
//! and reports the child's peak and final resident set (VmHWM, VmRSS); children of the two
//! kinds alternate, three of each.
//!
//! `cargo bench -p agent --bench sysinfo_vs_proc`. It measures; it checks nothing.
#![allow(clippy::unwrap_used)] // benches: a panic is the failure report

use std::process::Command;
use std::time::{Duration, Instant};

use agent::collect::{self, NetView};
use sysinfo::{Disks, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

const ROUNDS: usize = 30;
const CHILD_SNAPSHOTS: usize = 20;
const CHILDREN: usize = 3;
const GAP: Duration = Duration::from_millis(100);
/// The threshold: sysinfo is used only if it costs less than 25% more.
const THRESHOLD: f64 = 1.25;
const CHILD_ENV: &str = "SYSINFO_BENCH_CHILD";

/// The agent's collector: one snapshot against the previous sample.
struct Ours {
    prev: collect::RawSample,
}

impl Ours {
    fn new() -> Ours {
        Ours { prev: collect::sample().unwrap() }
    }

    fn snapshot(&mut self) -> usize {
        let cur = collect::sample().unwrap();
        let snap = collect::build_snapshot_with(&self.prev, &cur, 10, Some(NetView::default())).unwrap();
        self.prev = cur;
        snap.top_by_cpu.len() + snap.top_by_memory.len() + snap.filesystems.len()
    }
}

/// sysinfo's equivalent: the same figures, top lists sorted the same way.
struct Theirs {
    sys: System,
    disks: Disks,
}

impl Theirs {
    fn new() -> Theirs {
        let mut t = Theirs { sys: System::new(), disks: Disks::new() };
        t.snapshot();
        t
    }

    fn snapshot(&mut self) -> usize {
        let kind = ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory()
            .with_cmd(UpdateKind::OnlyIfNotSet)
            .with_user(UpdateKind::OnlyIfNotSet);
        self.sys.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
        self.sys.refresh_memory();
        self.sys.refresh_cpu_usage();
        let load = System::load_average();
        self.disks.refresh(true);
        let mut by_cpu: Vec<_> = self.sys.processes().values().map(|p| (p.cpu_usage(), p.pid())).collect();
        by_cpu.sort_by(|a, b| b.0.total_cmp(&a.0));
        by_cpu.truncate(10);
        let mut by_mem: Vec<_> = self.sys.processes().values().map(|p| (p.memory(), p.pid())).collect();
        by_mem.sort_by_key(|b| std::cmp::Reverse(b.0));
        by_mem.truncate(10);
        let listed: usize = by_cpu
            .iter()
            .chain(by_mem.iter().map(|(_, pid)| (0.0, *pid)).collect::<Vec<_>>().iter())
            .filter_map(|(_, pid)| self.sys.process(*pid))
            .map(|p| p.cmd().len())
            .sum();
        listed + self.disks.list().len() + usize::from(load.one >= 0.0) + usize::from(self.sys.total_memory() > 0)
    }
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The child: `CHILD_SNAPSHOTS` snapshots by one collector, then its own RSS on stdout.
fn child(kind: &str) {
    let mut sink = 0;
    match kind {
        "proc" => {
            let mut ours = Ours::new();
            for _ in 0..CHILD_SNAPSHOTS {
                std::thread::sleep(GAP);
                sink += ours.snapshot();
            }
        }
        _ => {
            let mut theirs = Theirs::new();
            for _ in 0..CHILD_SNAPSHOTS {
                std::thread::sleep(GAP);
                sink += theirs.snapshot();
            }
        }
    }
    println!("{} {} {sink}", status_kb("VmHWM:"), status_kb("VmRSS:"));
}

/// (VmHWM, VmRSS) in KiB of a child doing `kind`.
fn child_rss(kind: &str) -> (u64, u64) {
    let out = Command::new(std::env::current_exe().unwrap()).env(CHILD_ENV, kind).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (f.next().unwrap(), f.next().unwrap())
}

fn main() {
    if let Ok(kind) = std::env::var(CHILD_ENV) {
        child(&kind);
        return;
    }
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())))
        .count();
    println!("host: {processes} processes; {ROUNDS} paired rounds {} ms apart", GAP.as_millis());
    let (mut ours, mut theirs) = (Ours::new(), Theirs::new());
    let (mut ours_ms, mut theirs_ms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        std::thread::sleep(GAP);
        let t = Instant::now();
        std::hint::black_box(ours.snapshot());
        let a = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        std::hint::black_box(theirs.snapshot());
        let b = t.elapsed().as_secs_f64() * 1000.0;
        ours_ms.push(a);
        theirs_ms.push(b);
        ratios.push(b / a);
    }
    let time_ratio = median(ratios);
    println!(
        "time per snapshot: /proc collector median {:.2} ms, sysinfo median {:.2} ms; sysinfo/ours = {time_ratio:.2} (median of pair ratios)",
        median(ours_ms),
        median(theirs_ms)
    );

    let (mut ours_rss, mut theirs_rss) = (Vec::new(), Vec::new());
    for _ in 0..CHILDREN {
        ours_rss.push(child_rss("proc"));
        theirs_rss.push(child_rss("sysinfo"));
    }
    let hwm = |v: &[(u64, u64)]| median(v.iter().map(|x| x.0 as f64).collect());
    let rss = |v: &[(u64, u64)]| median(v.iter().map(|x| x.1 as f64).collect());
    let rss_ratio = hwm(&theirs_rss) / hwm(&ours_rss);
    println!(
        "RSS of a child taking {CHILD_SNAPSHOTS} snapshots: /proc collector peak {:.0} KiB (end {:.0}), sysinfo peak {:.0} KiB (end {:.0}); sysinfo/ours peak = {rss_ratio:.2}",
        hwm(&ours_rss),
        rss(&ours_rss),
        hwm(&theirs_rss),
        rss(&theirs_rss)
    );
    let verdict = if time_ratio >= THRESHOLD || rss_ratio >= THRESHOLD {
        "keep the /proc readers"
    } else {
        "sysinfo is within the threshold"
    };
    println!("threshold {THRESHOLD:.2} (25% slower or larger): {verdict}");
}
