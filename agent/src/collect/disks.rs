//! Block device I/O from /proc/diskstats: counters per whole device in each sample, and
//! the rates over the window between two samples (what `iostat -x` showed). Loop and RAM
//! disks, partitions (already counted in their disk) and devices that never did I/O are
//! left out. Absent /proc/diskstats (some containers) gives no devices, not an error.

use std::time::Duration;

use ops_proto::v1::DiskIo;

const DISKSTATS: &str = "/proc/diskstats";
/// /proc/diskstats counts sectors of 512 bytes whatever the device's real sector size.
const SECTOR_BYTES: u64 = 512;

/// The cumulative counters of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskCounters {
    pub name: String,
    pub reads: u64,
    pub sectors_read: u64,
    pub writes: u64,
    pub sectors_written: u64,
    /// Milliseconds during which the device had I/O in flight.
    pub busy_ms: u64,
}

/// Parses one /proc/diskstats line:
/// `major minor name reads merged sectors ms writes merged sectors ms in_flight io_ms ...`.
pub(crate) fn parse_line(line: &str) -> Option<DiskCounters> {
    let mut fields = line.split_ascii_whitespace().skip(2);
    let name = fields.next()?;
    let mut numbers = [0u64; 10];
    for slot in &mut numbers {
        *slot = fields.next()?.parse().ok()?;
    }
    let [reads, _, sectors_read, _, writes, _, sectors_written, _, _, busy_ms] = numbers;
    Some(DiskCounters {
        name: name.to_owned(),
        reads,
        sectors_read,
        writes,
        sectors_written,
        busy_ms,
    })
}

/// True when `name` is a partition of another device in `names`. The kernel names
/// partitions `sda1` after a disk ending in a letter and `nvme0n1p1` after one ending in a
/// digit, so `dm-10` is not a partition of `dm-1`.
pub(crate) fn is_partition<'a>(name: &str, names: impl IntoIterator<Item = &'a str>) -> bool {
    names.into_iter().any(|disk| {
        let Some(suffix) = name.strip_prefix(disk).filter(|s| !s.is_empty()) else {
            return false;
        };
        let number = if disk.ends_with(|c: char| c.is_ascii_digit()) {
            match suffix.strip_prefix('p') {
                Some(number) => number,
                None => return false,
            }
        } else {
            suffix
        };
        !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Keeps the whole devices that did any I/O, in their original order.
pub(crate) fn select_devices(all: Vec<DiskCounters>) -> Vec<DiskCounters> {
    let keep: Vec<bool> = all
        .iter()
        .map(|d| {
            !d.name.starts_with("loop")
                && !d.name.starts_with("ram")
                && (d.reads > 0 || d.writes > 0)
                && !is_partition(&d.name, all.iter().map(|o| o.name.as_str()))
        })
        .collect();
    all.into_iter()
        .zip(keep)
        .filter_map(|(d, keep)| keep.then_some(d))
        .collect()
}

/// Reads the counters of every whole device; empty when /proc/diskstats is unreadable.
pub(crate) fn read() -> Vec<DiskCounters> {
    let Some(text) = super::read_optional(DISKSTATS) else {
        return Vec::new();
    };
    let mut devices = select_devices(text.lines().filter_map(parse_line).collect());
    devices.shrink_to_fit();
    devices
}

/// Rates over the window for every device present in both samples. A counter that went
/// backwards (a device re-created) counts as no I/O.
pub(crate) fn rates(prev: &[DiskCounters], cur: &[DiskCounters], window: Duration) -> Vec<DiskIo> {
    let secs = window.as_secs_f64();
    if secs <= 0.0 {
        return Vec::new();
    }
    let per_sec = |delta: u64| delta as f64 / secs;
    cur.iter()
        .filter_map(|c| {
            let p = prev.iter().find(|p| p.name == c.name)?;
            let busy_ms = c.busy_ms.saturating_sub(p.busy_ms) as f64;
            Some(DiskIo {
                device: c.name.clone(),
                reads_per_sec: per_sec(c.reads.saturating_sub(p.reads)),
                writes_per_sec: per_sec(c.writes.saturating_sub(p.writes)),
                read_bytes_per_sec: per_sec(
                    c.sectors_read
                        .saturating_sub(p.sectors_read)
                        .saturating_mul(SECTOR_BYTES),
                ),
                write_bytes_per_sec: per_sec(
                    c.sectors_written
                        .saturating_sub(p.sectors_written)
                        .saturating_mul(SECTOR_BYTES),
                ),
                util_percent: (busy_ms / (secs * 1000.0) * 100.0).min(100.0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const DISKSTATS_SAMPLE: &str = "\
   7       0 loop0 120 0 2400 10 0 0 0 0 0 20 10 0 0 0 0 0 0
   8       0 sda 4825 1209 413462 2235 2006 1620 94808 2617 0 3840 4852 0 0 0 0
   8       1 sda1 4700 1200 410000 2200 2000 1600 94000 2600 0 3800 4800 0 0 0 0
 259       0 nvme0n1 100 0 800 5 50 0 400 3 0 8 8 0 0 0 0
 259       1 nvme0n1p1 90 0 720 5 50 0 400 3 0 8 8 0 0 0 0
 253       0 dm-1 10 0 80 1 10 0 80 1 0 2 2
 253      10 dm-10 10 0 80 1 10 0 80 1 0 2 2
  11       0 sr0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   1       0 ram0 5 0 10 0 0 0 0 0 0 0 0
";

    #[test]
    fn diskstats_line_parses_the_counters() {
        let d =
            parse_line("   8       0 sda 4825 1209 413462 2235 2006 1620 94808 2617 0 3840 4852")
                .unwrap();
        assert_eq!(
            d,
            DiskCounters {
                name: "sda".into(),
                reads: 4825,
                sectors_read: 413_462,
                writes: 2006,
                sectors_written: 94808,
                busy_ms: 3840,
            }
        );
        assert_eq!(parse_line("8 0 sda 1 2 3"), None);
    }

    #[test]
    fn only_whole_devices_that_did_io_are_kept() {
        let all = DISKSTATS_SAMPLE.lines().filter_map(parse_line).collect();
        let names: Vec<String> = select_devices(all).into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["sda", "nvme0n1", "dm-1", "dm-10"]);
    }

    #[test]
    fn partitions_follow_the_kernel_naming_rule() {
        let disks = ["sda", "nvme0n1", "mmcblk0", "dm-1", "md0"];
        assert!(is_partition("sda1", disks));
        assert!(is_partition("nvme0n1p2", disks));
        assert!(is_partition("mmcblk0p1", disks));
        assert!(is_partition("md0p1", disks));
        assert!(!is_partition("sda", disks));
        assert!(!is_partition("sdaa", disks));
        assert!(!is_partition("dm-10", disks));
        assert!(!is_partition("nvme0n10", disks));
    }

    #[test]
    fn rates_are_deltas_over_the_window() {
        let prev = [DiskCounters {
            name: "sda".into(),
            reads: 100,
            sectors_read: 1000,
            writes: 50,
            sectors_written: 800,
            busy_ms: 1000,
        }];
        let cur = [
            DiskCounters {
                name: "sda".into(),
                reads: 300,
                sectors_read: 5000,
                writes: 50,
                sectors_written: 1800,
                busy_ms: 2500,
            },
            DiskCounters {
                name: "sdb".into(),
                reads: 1,
                sectors_read: 8,
                writes: 0,
                sectors_written: 0,
                busy_ms: 1,
            },
        ];
        let io = rates(&prev, &cur, Duration::from_secs(2));
        assert_eq!(io.len(), 1, "a device without a baseline has no rate yet");
        let sda = &io[0];
        assert_eq!(sda.device, "sda");
        assert_eq!(sda.reads_per_sec, 100.0);
        assert_eq!(sda.writes_per_sec, 0.0);
        assert_eq!(sda.read_bytes_per_sec, 4000.0 * 512.0 / 2.0);
        assert_eq!(sda.write_bytes_per_sec, 1000.0 * 512.0 / 2.0);
        assert_eq!(sda.util_percent, 75.0);

        // Counters going backwards give zero, and a zero window gives nothing.
        let back = rates(&cur, &prev, Duration::from_secs(1));
        assert_eq!(back[0].reads_per_sec, 0.0);
        assert!(rates(&prev, &cur, Duration::ZERO).is_empty());
    }
}
