//! Whole-machine CPU counters from /proc/stat and load averages from /proc/loadavg.
//! Pure parsers over text the caller has read; no I/O here.

use ops_proto::v1::LoadAverage;

/// Cumulative CPU time of all cores, in clock ticks since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// Every state except guest time, which the kernel already counts in user time.
    pub total: u64,
    /// Idle plus iowait: time in which the CPU could have run something.
    pub idle: u64,
}

/// What one read of /proc/stat tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StatSummary {
    pub times: CpuTimes,
    /// Each online CPU's counters, in `cpuN` order (a line that does not parse counts as
    /// idle-free zero, so that the positions stay right).
    pub per_core: Vec<CpuTimes>,
    /// Online CPUs (the `cpuN` lines).
    pub cpu_count: u32,
    /// Boot time in seconds since the epoch (`btime`).
    pub boot_time_secs: Option<u64>,
}

/// Parses /proc/stat; `None` when the aggregate `cpu` line is missing or malformed.
pub(crate) fn parse_stat(text: &str) -> Option<StatSummary> {
    let mut times = None;
    let mut cpu_count = 0u32;
    let mut per_core = Vec::new();
    let mut boot_time_secs = None;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        match fields.next() {
            Some("cpu") => times = parse_cpu_fields(fields),
            Some(label) if label.starts_with("cpu") => {
                cpu_count += 1;
                per_core.push(parse_cpu_fields(fields).unwrap_or_default());
            }
            Some("btime") => boot_time_secs = fields.next().and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
    Some(StatSummary {
        times: times?,
        per_core,
        cpu_count,
        boot_time_secs,
    })
}

/// user nice system idle iowait irq softirq steal guest guest_nice; kernels before 2.6.33
/// print fewer, so only the first four are required.
fn parse_cpu_fields<'a>(fields: impl Iterator<Item = &'a str>) -> Option<CpuTimes> {
    let mut values = [0u64; 8];
    let mut seen = 0;
    for (slot, field) in values.iter_mut().zip(fields) {
        *slot = field.parse().ok()?;
        seen += 1;
    }
    if seen < 4 {
        return None;
    }
    let [_user, _nice, _system, idle, iowait, ..] = values;
    Some(CpuTimes {
        total: values.iter().fold(0u64, |sum, v| sum.saturating_add(*v)),
        idle: idle.saturating_add(iowait),
    })
}

/// Share of the window in which the CPUs were busy, 0..100 over all cores together.
pub(crate) fn busy_percent(prev: &CpuTimes, cur: &CpuTimes) -> f64 {
    let total = cur.total.saturating_sub(prev.total);
    if total == 0 {
        return 0.0;
    }
    let idle = cur.idle.saturating_sub(prev.idle).min(total);
    (total - idle) as f64 * 100.0 / total as f64
}

/// Parses /proc/loadavg ("0.31 0.45 0.23 1/139 10458").
pub(crate) fn parse_loadavg(text: &str) -> Option<LoadAverage> {
    let mut fields = text.split_ascii_whitespace().map(str::parse::<f64>);
    Some(LoadAverage {
        one: fields.next()?.ok()?,
        five: fields.next()?.ok()?,
        fifteen: fields.next()?.ok()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const STAT: &str = "\
cpu  13744 0 5109 63399 784 0 78 26 40 0
cpu0 6718 0 2132 32614 76 0 9 9 0 0
cpu1 7026 0 2977 30785 708 0 68 17 0 0
intr 1390293 0 9 0 0 0 0 0 0 0 0 0 0 0
ctxt 2653478
btime 1796020682
processes 10659
procs_running 2
procs_blocked 0
softirq 706434 0 96543 4 13282 20097 0 1024 317563 0 257921
";

    #[test]
    fn stat_sums_all_states_but_guest() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.times.total, 13744 + 5109 + 63399 + 784 + 78 + 26);
        assert_eq!(s.times.idle, 63399 + 784);
        assert_eq!(s.cpu_count, 2);
        assert_eq!(s.per_core.len(), 2);
        assert!(s.per_core.iter().all(|c| c.total > 0 && c.idle <= c.total));
        assert_eq!(s.boot_time_secs, Some(1_796_020_682));
    }

    #[test]
    fn stat_from_an_old_kernel_with_four_fields_parses() {
        let s = parse_stat("cpu 10 0 10 80\ncpu0 10 0 10 80\n").unwrap();
        assert_eq!(
            s.times,
            CpuTimes {
                total: 100,
                idle: 80
            }
        );
        assert_eq!(s.boot_time_secs, None);
    }

    #[test]
    fn stat_without_cpu_line_is_rejected() {
        assert_eq!(parse_stat("intr 1 2 3\nbtime 5\n"), None);
        assert_eq!(parse_stat("cpu 1 2\n"), None);
        assert_eq!(parse_stat("cpu 1 2 x 4\n"), None);
    }

    #[test]
    fn busy_percent_is_the_non_idle_share_of_the_window() {
        let prev = CpuTimes {
            total: 1000,
            idle: 800,
        };
        let cur = CpuTimes {
            total: 1200,
            idle: 850,
        };
        assert_eq!(busy_percent(&prev, &cur), 75.0);
        assert_eq!(busy_percent(&cur, &cur), 0.0);
        // Counters going backwards (a different host's sample) never give nonsense.
        assert_eq!(busy_percent(&cur, &prev), 0.0);
    }

    #[test]
    fn loadavg_parses_the_three_averages() {
        let load = parse_loadavg("0.31 0.45 0.23 1/139 10458\n").unwrap();
        assert_eq!((load.one, load.five, load.fifteen), (0.31, 0.45, 0.23));
        assert_eq!(parse_loadavg("0.31 0.45"), None);
    }
}
