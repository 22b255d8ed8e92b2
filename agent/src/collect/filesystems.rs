//! Mounted real filesystems (block-device or network) with their usage, what `df` shows.
//! Mounts come from /proc/self/mountinfo (else /proc/mounts); pseudo filesystems are
//! skipped and a device mounted twice is reported once. Usage comes from statvfs.
//!
//! A statvfs on a hung network mount blocks until the server answers: it runs on a worker
//! thread with a deadline ([`StatProbe`]), so a snapshot still answers and names that mount
//! unresponsive. Never calls statvfs on the caller's thread.

use std::collections::HashSet;
use std::io;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use ops_proto::v1::Filesystem;

const MOUNTINFO: &str = "/proc/self/mountinfo";
const MOUNTS: &str = "/proc/mounts";

/// Filesystem types with no storage of their own behind them.
const PSEUDO_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.gvfsd-fuse",
    "fuse.lxcfs",
    "fuse.portal",
    "fuse.snapfuse",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nfsd",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rootfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    // Read-only images (snaps): always 100% full, and not where space runs out.
    "squashfs",
    "sysfs",
    // Memory-backed; their use shows in the memory figures.
    "tmpfs",
    "tracefs",
];

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// What identifies the filesystem: "major:minor" from mountinfo, else the source.
    pub key: String,
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
}

/// Parses a /proc/self/mountinfo line:
/// `36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
/// The optional fields before " - " vary in number.
pub(crate) fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let device = fields.nth(2)?;
    let mount_point = fields.nth(1)?;
    let mut after_separator = fields.skip(1).skip_while(|f| *f != "-").skip(1);
    let fs_type = after_separator.next()?;
    let source = after_separator.next()?;
    Some(MountEntry {
        key: device.to_owned(),
        mount_point: unescape(mount_point),
        fs_type: fs_type.to_owned(),
        source: unescape(source),
    })
}

/// Parses a /proc/mounts line (`/dev/sda1 / ext4 rw,relatime 0 0`).
pub(crate) fn parse_mounts_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let source = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let fs_type = fields.next()?.to_owned();
    Some(MountEntry {
        key: source.clone(),
        mount_point,
        fs_type,
        source,
    })
}

/// Undoes the kernel's octal escapes of space, tab, newline and backslash (`\040`).
pub(crate) fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True for filesystems that hold no data of their own. An overlay is the root of a
/// container and kept there; elsewhere it is a container's view of a disk already listed.
pub(crate) fn is_pseudo(fs_type: &str, mount_point: &str) -> bool {
    match fs_type {
        "overlay" | "aufs" => mount_point != "/",
        _ => PSEUDO_TYPES.contains(&fs_type),
    }
}

/// The real filesystems of a mount table, each device once (at its shortest mount point,
/// as `df` does), sorted by mount point.
pub(crate) fn select_real(mut entries: Vec<MountEntry>) -> Vec<MountEntry> {
    entries.retain(|e| !is_pseudo(&e.fs_type, &e.mount_point));
    entries.sort_by(|a, b| {
        a.key
            .cmp(&b.key)
            .then(a.mount_point.len().cmp(&b.mount_point.len()))
            .then_with(|| a.mount_point.cmp(&b.mount_point))
    });
    entries.dedup_by(|later, first| later.key == first.key);
    entries.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    entries
}

/// The statvfs numbers the report needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// One filesystem's report. Use% is used / (used + available), as `df` computes it:
/// blocks reserved for root count as neither.
pub(crate) fn to_filesystem(entry: MountEntry, usage: &Usage) -> Filesystem {
    let used_blocks = usage.blocks.saturating_sub(usage.blocks_free);
    let used = used_blocks.saturating_mul(usage.block_size);
    let available = usage.blocks_available.saturating_mul(usage.block_size);
    let denominator = used.saturating_add(available);
    Filesystem {
        mount_point: entry.mount_point,
        device: entry.source,
        fs_type: entry.fs_type,
        total_bytes: usage.blocks.saturating_mul(usage.block_size),
        used_bytes: used,
        available_bytes: available,
        used_percent: if denominator == 0 {
            0.0
        } else {
            used as f64 * 100.0 / denominator as f64
        },
        inodes_total: usage.inodes,
        inodes_used: usage.inodes.saturating_sub(usage.inodes_free),
        unresponsive: false,
    }
}

/// Every real filesystem with its usage; empty when no mount table is readable. Mount
/// points the agent may not stat are left out; a mount whose statvfs does not answer
/// within the probe's deadline is listed with `unresponsive` set and no figures.
pub(crate) fn collect(probe: &StatProbe) -> Vec<Filesystem> {
    let entries: Vec<MountEntry> = if let Some(text) = super::read_optional(MOUNTINFO) {
        text.lines().filter_map(parse_mountinfo_line).collect()
    } else if let Some(text) = super::read_optional(MOUNTS) {
        text.lines().filter_map(parse_mounts_line).collect()
    } else {
        return Vec::new();
    };
    report(select_real(entries), probe)
}

/// The reports of `entries`, each measured through `probe`.
pub(crate) fn report(entries: Vec<MountEntry>, probe: &StatProbe) -> Vec<Filesystem> {
    entries
        .into_iter()
        .filter_map(|entry| match probe.stat(&entry.mount_point) {
            Probe::Answered(Ok(usage)) => {
                // No blocks at all: a placeholder such as an automount point, as `df` hides.
                (usage.blocks > 0).then(|| to_filesystem(entry, &usage))
            }
            Probe::Answered(Err(error)) => {
                tracing::debug!(mount_point = %entry.mount_point, %error, "statvfs failed");
                None
            }
            Probe::Unresponsive => Some(Filesystem {
                mount_point: entry.mount_point,
                device: entry.source,
                fs_type: entry.fs_type,
                unresponsive: true,
                ..Filesystem::default()
            }),
        })
        .collect()
}

/// statvfs(2) of one mount point, as the report needs it.
pub(crate) fn statvfs(mount_point: &str) -> io::Result<Usage> {
    let stats = rustix::fs::statvfs(mount_point).map_err(io::Error::from)?;
    Ok(Usage {
        block_size: if stats.f_frsize > 0 { stats.f_frsize } else { stats.f_bsize },
        blocks: stats.f_blocks,
        blocks_free: stats.f_bfree,
        blocks_available: stats.f_bavail,
        inodes: stats.f_files,
        inodes_free: stats.f_ffree,
    })
}

/// How long a statvfs may take before its mount is reported unresponsive.
pub(crate) const STAT_DEADLINE: Duration = Duration::from_millis(500);
/// Threads left stuck in a statvfs (one per hung mount at most) before the probe stops
/// starting new ones and reports every mount it cannot check as unresponsive.
const MAX_STUCK_STATS: usize = 8;

/// The statvfs function, injectable so that tests can stand in a mount that never answers.
pub(crate) type StatFn = fn(&str) -> io::Result<Usage>;

/// What a probe learned about one mount point.
#[derive(Debug)]
pub(crate) enum Probe {
    Answered(io::Result<Usage>),
    /// No answer within the deadline, or still no answer to an earlier call.
    Unresponsive,
}

/// Runs statvfs on worker threads with a deadline, because a statvfs on a hung network
/// mount blocks in the kernel until the server answers, and nothing can interrupt it.
/// A worker that misses its deadline is abandoned (it ends when the call returns) and its
/// mount is marked hung: later snapshots report that mount at once instead of leaving
/// another thread behind, until the stuck call returns.
pub(crate) struct StatProbe {
    stat: StatFn,
    deadline: Duration,
    state: Arc<Mutex<ProbeState>>,
}

#[derive(Default)]
struct ProbeState {
    /// Workers waiting for a request.
    idle: Vec<Worker>,
    /// Mount points whose statvfs is still stuck.
    hung: HashSet<String>,
}

struct Worker {
    requests: mpsc::SyncSender<Request>,
}

struct Request {
    mount_point: String,
    reply: mpsc::SyncSender<io::Result<Usage>>,
}

impl StatProbe {
    pub(crate) fn new(stat: StatFn, deadline: Duration) -> StatProbe {
        StatProbe { stat, deadline, state: Arc::default() }
    }

    /// The agent's probe: the real statvfs, STAT_DEADLINE.
    pub(crate) fn host() -> &'static StatProbe {
        static PROBE: OnceLock<StatProbe> = OnceLock::new();
        PROBE.get_or_init(|| StatProbe::new(statvfs, STAT_DEADLINE))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProbeState> {
        // Plain data: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// statvfs of `mount_point`, or `Unresponsive` when it does not answer in time.
    pub(crate) fn stat(&self, mount_point: &str) -> Probe {
        let worker = {
            let mut state = self.lock();
            if state.hung.contains(mount_point) {
                return Probe::Unresponsive;
            }
            match state.idle.pop() {
                Some(w) => Some(w),
                None if state.hung.len() >= MAX_STUCK_STATS => None,
                None => self.start_worker(),
            }
        };
        let Some(worker) = worker else {
            return Probe::Unresponsive;
        };
        let (reply, answer) = mpsc::sync_channel(1);
        let request = Request { mount_point: mount_point.to_owned(), reply };
        if worker.requests.send(request).is_err() {
            return Probe::Answered(Err(io::Error::other("statvfs worker ended")));
        }
        match answer.recv_timeout(self.deadline) {
            Ok(result) => {
                self.lock().idle.push(worker);
                Probe::Answered(result)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    mount_point,
                    "statvfs gave no answer within {} ms; reporting the mount unresponsive",
                    self.deadline.as_millis()
                );
                // Under the lock the worker also answers under, so that either its answer
                // is seen here or it sees the channel closed and clears the mark itself.
                let mut state = self.lock();
                if let Ok(result) = answer.try_recv() {
                    state.idle.push(worker);
                    return Probe::Answered(result);
                }
                // The worker's thread is stuck in the kernel: it is marked hung and dropped
                // here; it clears the mark and ends when its call returns.
                state.hung.insert(mount_point.to_owned());
                drop(answer);
                Probe::Unresponsive
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Probe::Answered(Err(io::Error::other("statvfs worker ended")))
            }
        }
    }

    fn start_worker(&self) -> Option<Worker> {
        let (requests, incoming) = mpsc::sync_channel::<Request>(1);
        let (stat, state) = (self.stat, Arc::clone(&self.state));
        let spawned = std::thread::Builder::new()
            .name("statvfs".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                while let Ok(req) = incoming.recv() {
                    let result = stat(&req.mount_point);
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    if req.reply.send(result).is_err() {
                        // Abandoned after its deadline: nobody holds this worker any more.
                        state.hung.remove(&req.mount_point);
                        return;
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Worker { requests }),
            Err(error) => {
                tracing::warn!(%error, "cannot start a statvfs worker thread");
                None
            }
        }
    }

    /// Mount points whose statvfs is still stuck (for tests).
    #[cfg(test)]
    pub(crate) fn hung(&self) -> Vec<String> {
        self.lock().hung.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MOUNTINFO_SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334460k,nr_inodes=3083615,mode=755
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684084k
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 27 8:1 / /boot rw,relatime shared:5 master:2 - ext4 /dev/sda1 rw
51 27 8:1 /srv/data /mnt/bind\\040dir rw,relatime shared:5 - ext4 /dev/sda1 rw
52 27 0:45 / /mnt/nfs rw,relatime shared:7 - nfs4 fileserver:/export rw,vers=4.2
53 27 7:0 / /snap/core/1 ro,nodev,relatime shared:9 - squashfs /dev/loop0 ro
54 27 0:50 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=x
";

    #[test]
    fn mountinfo_line_with_optional_fields_parses() {
        let e = parse_mountinfo_line(
            "50 27 8:1 / /boot rw,relatime shared:5 master:2 - ext4 /dev/sda1 rw,errors=remount-ro",
        )
        .unwrap();
        assert_eq!(
            e,
            MountEntry {
                key: "8:1".into(),
                mount_point: "/boot".into(),
                fs_type: "ext4".into(),
                source: "/dev/sda1".into(),
            }
        );
        assert_eq!(parse_mountinfo_line("50 27 8:1 / /boot rw"), None);
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        assert_eq!(unescape("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape("/a\\134b\\011c"), "/a\\b\tc");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/odd\\04"), "/odd\\04");
    }

    #[test]
    fn real_filesystems_are_kept_once_each() {
        let entries = MOUNTINFO_SAMPLE
            .lines()
            .filter_map(parse_mountinfo_line)
            .collect();
        let kept: Vec<(String, String)> = select_real(entries)
            .into_iter()
            .map(|e| (e.mount_point, e.fs_type))
            .collect();
        assert_eq!(
            kept,
            [
                ("/".to_owned(), "ext4".to_owned()),
                ("/boot".to_owned(), "ext4".to_owned()),
                ("/mnt/nfs".to_owned(), "nfs4".to_owned()),
            ]
        );
    }

    #[test]
    fn overlay_is_kept_only_as_the_root() {
        assert!(!is_pseudo("overlay", "/"));
        assert!(is_pseudo("overlay", "/var/lib/docker/overlay2/x/merged"));
        assert!(is_pseudo("tmpfs", "/run"));
        assert!(!is_pseudo("xfs", "/data"));
    }

    #[test]
    fn proc_mounts_fallback_dedupes_by_source() {
        let entries = "/dev/sda1 / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n\
            /dev/sda1 /mnt/again ext4 rw 0 0\n"
            .lines()
            .filter_map(parse_mounts_line)
            .collect();
        let kept = select_real(entries);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].mount_point, "/");
    }

    fn never_answers_for_hung(mount_point: &str) -> io::Result<Usage> {
        if mount_point == "/mnt/hung" {
            // Stands in for a statvfs on a dead NFS server: it never returns.
            loop {
                std::thread::park();
            }
        }
        Ok(Usage { block_size: 4096, blocks: 100, blocks_free: 50, blocks_available: 40, inodes: 10, inodes_free: 5 })
    }

    fn entry(mount_point: &str) -> MountEntry {
        MountEntry {
            key: mount_point.into(),
            mount_point: mount_point.into(),
            fs_type: "nfs4".into(),
            source: format!("server:{mount_point}"),
        }
    }

    #[test]
    fn a_mount_whose_statvfs_never_returns_is_named_unresponsive_within_the_deadline() {
        let probe = StatProbe::new(never_answers_for_hung, Duration::from_millis(200));
        let entries = || vec![entry("/"), entry("/mnt/hung"), entry("/srv")];
        let started = std::time::Instant::now();
        let fs = report(entries(), &probe);
        let took = started.elapsed();
        // One deadline, plus generous slack for a loaded machine.
        assert!(took < Duration::from_secs(5), "took {took:?}");
        let seen: Vec<(&str, bool, u64)> =
            fs.iter().map(|f| (f.mount_point.as_str(), f.unresponsive, f.total_bytes)).collect();
        assert_eq!(seen, [("/", false, 409_600), ("/mnt/hung", true, 0), ("/srv", false, 409_600)]);
        assert_eq!(fs[1].device, "server:/mnt/hung");
        assert_eq!(probe.hung(), ["/mnt/hung"]);

        // The next snapshot does not wait again nor leave another thread behind.
        let started = std::time::Instant::now();
        let fs = report(entries(), &probe);
        assert!(started.elapsed() < Duration::from_millis(200), "waited again: {:?}", started.elapsed());
        assert!(fs[1].unresponsive);
        assert_eq!(probe.hung().len(), 1);
    }

    fn slow_once(mount_point: &str) -> io::Result<Usage> {
        if mount_point == "/mnt/slow" {
            std::thread::sleep(Duration::from_millis(400));
        }
        never_answers_for_hung("/")
    }

    #[test]
    fn a_mount_that_answers_late_is_measured_again_once_its_call_returns() {
        let probe = StatProbe::new(slow_once, Duration::from_millis(50));
        assert!(matches!(probe.stat("/mnt/slow"), Probe::Unresponsive));
        // The abandoned call returns after about 400 ms and clears the mark.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !probe.hung().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the hung mark was never cleared");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(matches!(probe.stat("/"), Probe::Answered(Ok(_))));
    }

    #[test]
    fn the_real_root_filesystem_is_measured_through_the_probe() {
        let fs = collect(StatProbe::host());
        assert!(fs.iter().all(|f| !f.unresponsive), "{fs:#?}");
    }

    #[test]
    fn used_percent_is_computed_like_df() {
        // 1000 blocks of 4 KiB, 300 free of which 250 available to users (50 reserved).
        let usage = Usage {
            block_size: 4096,
            blocks: 1000,
            blocks_free: 300,
            blocks_available: 250,
            inodes: 100,
            inodes_free: 40,
        };
        let entry = parse_mounts_line("/dev/sda1 / ext4 rw 0 0").unwrap();
        let fs = to_filesystem(entry, &usage);
        assert_eq!(fs.total_bytes, 1000 * 4096);
        assert_eq!(fs.used_bytes, 700 * 4096);
        assert_eq!(fs.available_bytes, 250 * 4096);
        assert!((fs.used_percent - 700.0 * 100.0 / 950.0).abs() < 1e-9);
        assert_eq!((fs.inodes_total, fs.inodes_used), (100, 60));
        assert_eq!(fs.device, "/dev/sda1");
    }
}
