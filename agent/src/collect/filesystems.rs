//! Mounted real filesystems (block-device or network) with their usage, what `df` shows.
//! Mounts come from /proc/self/mountinfo (else /proc/mounts); pseudo filesystems are
//! skipped and a device mounted twice is reported once. Usage comes from statvfs.
//!
//! A statvfs on a hung network mount blocks until the server answers; callers run this on
//! a blocking thread for that reason.

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
    }
}

/// Every real filesystem with its usage; empty when no mount table is readable. Mount
/// points the agent may not stat are left out.
pub(crate) fn collect() -> Vec<Filesystem> {
    let entries: Vec<MountEntry> = if let Some(text) = super::read_optional(MOUNTINFO) {
        text.lines().filter_map(parse_mountinfo_line).collect()
    } else if let Some(text) = super::read_optional(MOUNTS) {
        text.lines().filter_map(parse_mounts_line).collect()
    } else {
        return Vec::new();
    };
    select_real(entries)
        .into_iter()
        .filter_map(|entry| {
            let stats = match rustix::fs::statvfs(entry.mount_point.as_str()) {
                Ok(stats) => stats,
                Err(error) => {
                    tracing::debug!(mount_point = %entry.mount_point, %error, "statvfs failed");
                    return None;
                }
            };
            let usage = Usage {
                block_size: if stats.f_frsize > 0 {
                    stats.f_frsize
                } else {
                    stats.f_bsize
                },
                blocks: stats.f_blocks,
                blocks_free: stats.f_bfree,
                blocks_available: stats.f_bavail,
                inodes: stats.f_files,
                inodes_free: stats.f_ffree,
            };
            // No blocks at all: a placeholder such as an automount point, as `df` hides.
            (usage.blocks > 0).then(|| to_filesystem(entry, &usage))
        })
        .collect()
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
