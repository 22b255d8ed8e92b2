//! Host data collection from /proc: the raw counters of one instant (`sample`), the
//! snapshot computed from two of them (`build_snapshot`), and the static host facts
//! (`host_info`).
//!
//! Everything here is read-only and blocking; callers in async code run it on a blocking
//! thread. A missing or unreadable optional source (no /proc/diskstats in a container, a
//! process that exits mid-scan, another user's fds) yields an empty section, never an
//! error: only /proc/stat and /proc/meminfo are required. Between samples nothing is
//! kept but the counters needed for the next delta, so that the agent stays small.

mod cpu;
mod disks;
mod filesystems;
mod host;
mod memory;
mod net;
pub mod processes;
pub mod sampler;
pub mod streams;
pub mod users;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ops_proto::v1::Snapshot;

pub use host::host_info;

/// Length of every top list (processes, auth-failure users and sources) when the caller
/// asks for 0, as the wire contract says.
pub const DEFAULT_TOP_N: usize = 10;
/// Upper bound on the length of a top list, whatever the caller asks.
pub const MAX_TOP_N: usize = 500;

/// The length of a top list for a requested `n`: 0 means [`DEFAULT_TOP_N`].
pub fn top_n(n: u32) -> usize {
    if n == 0 {
        DEFAULT_TOP_N
    } else {
        usize::try_from(n).unwrap_or(MAX_TOP_N).min(MAX_TOP_N)
    }
}

const PROC_STAT: &str = "/proc/stat";
const PROC_MEMINFO: &str = "/proc/meminfo";
const PROC_LOADAVG: &str = "/proc/loadavg";

/// Why a sample or snapshot could not be taken at all.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A file the agent cannot work without could not be read.
    #[error("cannot read {path}: {source} (the agent needs /proc mounted and readable)")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A required file was read but was not in the format the kernel documents.
    #[error("unexpected contents in {path}: {reason}")]
    Parse { path: PathBuf, reason: &'static str },
}

/// The counters of one instant. Two of them (`prev`, `cur`) make a snapshot: CPU and disk
/// figures are rates over the time between them.
#[derive(Debug, Clone)]
pub struct RawSample {
    taken: Instant,
    taken_wall: SystemTime,
    cpu: cpu::StatSummary,
    /// One entry per process, sorted by pid.
    processes: Vec<processes::ProcTicks>,
    /// Whole block devices that have done any I/O, in /proc/diskstats order.
    disks: Vec<disks::DiskCounters>,
}

impl RawSample {
    /// Time since this sample was taken.
    pub fn age(&self) -> Duration {
        self.taken.elapsed()
    }
}

/// Reads the counters of this instant from /proc. Blocking; a few milliseconds on a host
/// with a few hundred processes.
pub fn sample() -> Result<RawSample, CollectError> {
    let stat_text = read_required(PROC_STAT)?;
    let taken = Instant::now();
    let taken_wall = SystemTime::now();
    let cpu = cpu::parse_stat(&stat_text).ok_or_else(|| CollectError::Parse {
        path: PathBuf::from(PROC_STAT),
        reason: "no aggregate \"cpu\" line",
    })?;
    drop(stat_text);
    Ok(RawSample {
        taken,
        taken_wall,
        cpu,
        processes: processes::read_all(),
        disks: disks::read(),
    })
}

/// Builds the snapshot of `cur`, with CPU and disk rates measured over the window from
/// `prev` to `cur` (zero when `cur` is not later), and `top_n` processes in each top list.
///
/// Blocking: besides the two samples it reads memory, mounts, socket tables and the
/// details of the listed processes from /proc now. The TCP tables dominate (the kernel
/// walks its whole connection hash: about 10 ms on a 24 GiB host). Fails only when
/// /proc/meminfo cannot be read.
pub fn build_snapshot(
    prev: &RawSample,
    cur: &RawSample,
    top_n: usize,
) -> Result<Snapshot, CollectError> {
    build_snapshot_with(prev, cur, top_n, None)
}

/// Connection counts and listening sockets: the costly part of a snapshot, which a fast
/// stream reuses for up to a second instead of walking the kernel's tables every tick.
#[derive(Debug, Clone, Default)]
pub struct NetView {
    pub connections: Vec<ops_proto::v1::ConnectionStateCount>,
    pub listening: Vec<ops_proto::v1::ListeningSocket>,
}

impl NetView {
    /// The network part of a snapshot already built.
    pub fn of(s: &Snapshot) -> NetView {
        NetView { connections: s.connections.clone(), listening: s.listening.clone() }
    }
}

/// Like [`build_snapshot`], but with `net` given: the socket tables are read only when
/// it is `None`.
pub fn build_snapshot_with(
    prev: &RawSample,
    cur: &RawSample,
    top_n: usize,
    net: Option<NetView>,
) -> Result<Snapshot, CollectError> {
    let meminfo_text = read_required(PROC_MEMINFO)?;
    let mem = memory::parse_meminfo(&meminfo_text).ok_or_else(|| CollectError::Parse {
        path: PathBuf::from(PROC_MEMINFO),
        reason: "no MemTotal line",
    })?;
    drop(meminfo_text);

    let window = cur.taken.saturating_duration_since(prev.taken);
    let cpu_count = cur.cpu.cpu_count.max(1);
    let tops = processes::top_lists(
        &prev.processes,
        &cur.processes,
        &processes::Window {
            duration: window,
            clock_ticks: clock_ticks_per_second(),
            cpu_count,
        },
        top_n,
        mem.total,
    );
    let NetView { connections, listening } = match net {
        Some(view) => view,
        None => {
            let (connections, listening) = net::collect(cur.processes.iter().map(|p| p.pid));
            NetView { connections, listening }
        }
    };

    Ok(Snapshot {
        taken_at_unix_ms: unix_ms(cur.taken_wall),
        cpu_window_ms: u32::try_from(window.as_millis()).unwrap_or(u32::MAX),
        cpu_percent: cpu::busy_percent(&prev.cpu.times, &cur.cpu.times),
        per_core_percent: prev.cpu.per_core.iter().zip(&cur.cpu.per_core).map(|(p, c)| cpu::busy_percent(p, c)).collect(),
        cpu_count,
        top_by_cpu: tops.by_cpu,
        top_by_memory: tops.by_memory,
        memory: Some(mem.to_proto()),
        filesystems: filesystems::collect(filesystems::StatProbe::host()),
        load: read_optional(PROC_LOADAVG).and_then(|text| cpu::parse_loadavg(&text)),
        disk_io: disks::rates(&prev.disks, &cur.disks, window),
        connections,
        listening,
        process_count: u32::try_from(cur.processes.len()).unwrap_or(u32::MAX),
        hostname: host::hostname(),
        dropped_snapshots: 0,
    })
}

/// USER_HZ, the unit of the tick counters in /proc; 100 on every mainstream architecture.
fn clock_ticks_per_second() -> u64 {
    match rustix::param::clock_ticks_per_second() {
        0 => 100,
        ticks => ticks,
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn read_required(path: &str) -> Result<String, CollectError> {
    std::fs::read_to_string(path).map_err(|source| CollectError::Read {
        path: PathBuf::from(path),
        source,
    })
}

/// Reads a file whose absence only empties one section of the snapshot.
fn read_optional(path: impl AsRef<Path>) -> Option<String> {
    let path = path.as_ref();
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "optional source unavailable");
            None
        }
    }
}

/// Reads a small file into a reused buffer: one open and no allocation per process.
/// Bytes, not a String: a process name may be any bytes, and must not hide the process.
fn read_into(path: &str, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    std::fs::File::open(path)?.read_to_end(buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};

    /// Kills the busy child even when an assertion fails, so no test leaves a spinning
    /// process behind.
    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn busy_process_tops_the_cpu_list() {
        let child = KillOnDrop(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = i32::try_from(child.0.id()).unwrap();

        let prev = sample().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let cur = sample().unwrap();
        let snap = build_snapshot(&prev, &cur, 50).unwrap();

        // The machine may be busy with other work (other tests, builds): the busy child must
        // be among the top processes with a busy figure, whatever else competes for the CPU.
        let top = snap
            .top_by_cpu
            .iter()
            .find(|p| p.pid == pid)
            .unwrap_or_else(|| panic!("busy child {pid} not in top_by_cpu: {:#?}", snap.top_by_cpu));
        assert!(top.cpu_percent > 25.0, "busy child at {}%", top.cpu_percent);
        assert_eq!(top.name, "sh");
        assert!(
            snap.cpu_window_ms >= 300,
            "window {} ms",
            snap.cpu_window_ms
        );
        assert!(snap.cpu_percent > 0.0 && snap.cpu_percent <= 100.0);
        assert!(snap.process_count > 1);
        assert_eq!(snap.top_by_memory.len(), 50);
        let rss: Vec<u64> = snap.top_by_memory.iter().map(|p| p.rss_bytes).collect();
        assert!(rss.windows(2).all(|w| w[0] >= w[1]), "not sorted: {rss:?}");
    }

    #[test]
    fn memory_total_matches_meminfo() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();

        let s = sample().unwrap();
        let snap = build_snapshot(&s, &s, 3).unwrap();
        let memory = snap.memory.unwrap();
        assert_eq!(memory.total_bytes, kib * 1024);
        assert_eq!(
            memory.used_bytes,
            memory.total_bytes - memory.available_bytes
        );
        assert_eq!(snap.cpu_window_ms, 0);
        assert_eq!(snap.cpu_percent, 0.0);
    }

    #[test]
    fn own_listener_is_listed_with_port_and_pid() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = u32::from(listener.local_addr().unwrap().port());
        let me = i32::try_from(std::process::id()).unwrap();

        let s = sample().unwrap();
        let snap = build_snapshot(&s, &s, 1).unwrap();
        let found = snap
            .listening
            .iter()
            .find(|l| l.protocol == "tcp" && l.port == port)
            .unwrap_or_else(|| panic!("port {port} not in {:#?}", snap.listening));
        assert_eq!(found.address, "127.0.0.1");
        assert_eq!(found.pid, me);
        assert!(!found.process.is_empty());
        assert!(snap
            .connections
            .iter()
            .any(|c| c.state == "LISTEN" && c.count >= 1));
        drop(listener);
    }

    #[test]
    fn sample_and_snapshot_are_cheap() {
        let prev = sample().unwrap();
        let started = Instant::now();
        let cur = sample().unwrap();
        let sampled = started.elapsed();
        let snap = build_snapshot(&prev, &cur, 10).unwrap();
        let built = started.elapsed() - sampled;
        eprintln!(
            "sample(): {sampled:?}, build_snapshot(): {built:?} ({} processes, {} filesystems, \
             {} disks, {} listening)",
            snap.process_count,
            snap.filesystems.len(),
            snap.disk_io.len(),
            snap.listening.len()
        );
        // A generous bound: this guards against accidental quadratic scans, not timing noise.
        assert!(sampled + built < Duration::from_secs(2));
        assert!(prev.age() >= cur.age());
    }

    #[test]
    fn host_info_has_the_static_facts() {
        let info = host_info();
        assert!(!info.hostname.is_empty());
        assert!(!info.kernel.is_empty());
        assert!(!info.arch.is_empty());
        assert!(info.cpu_count >= 1);
        assert!(info.uptime_seconds > 0);
        assert!(info.boot_time_unix_ms > 0);
        assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
        assert!(info.instance_id.is_empty() && info.caller_role.is_empty());
    }
}
