//! Memory and swap from /proc/meminfo, computed the way `free` does ("used" is total minus
//! available). A pure parser; the caller reads the file.

use ops_proto::v1::Memory;

/// The /proc/meminfo values the agent reports, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub available: u64,
    pub buffers: u64,
    /// Page cache plus reclaimable slab, as `free` shows "cache".
    pub cached: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

/// Parses /proc/meminfo; `None` without a MemTotal line.
pub(crate) fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let mut total = None;
    let mut m = MemInfo::default();
    let mut available = None;
    let mut cached = 0;
    let mut reclaimable = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let mut parts = value.split_ascii_whitespace();
        let Some(Ok(number)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        // Values are in KiB; the few unitless lines (HugePages_*) are not used.
        let bytes = match parts.next() {
            Some("kB") => number.saturating_mul(1024),
            _ => number,
        };
        match key {
            "MemTotal" => total = Some(bytes),
            "MemFree" => m.free = bytes,
            "MemAvailable" => available = Some(bytes),
            "Buffers" => m.buffers = bytes,
            "Cached" => cached = bytes,
            "SReclaimable" => reclaimable = bytes,
            "SwapTotal" => m.swap_total = bytes,
            "SwapFree" => m.swap_free = bytes,
            _ => {}
        }
    }
    m.total = total?;
    m.cached = cached.saturating_add(reclaimable);
    // Kernels before 3.14 have no MemAvailable; free's old estimate stands in.
    m.available = available
        .unwrap_or_else(|| m.free.saturating_add(m.buffers).saturating_add(cached))
        .min(m.total);
    Some(m)
}

impl MemInfo {
    pub(crate) fn to_proto(self) -> Memory {
        let used = self.total.saturating_sub(self.available);
        Memory {
            total_bytes: self.total,
            used_bytes: used,
            available_bytes: self.available,
            free_bytes: self.free,
            buffers_bytes: self.buffers,
            cached_bytes: self.cached,
            swap_total_bytes: self.swap_total,
            swap_used_bytes: self.swap_total.saturating_sub(self.swap_free),
            used_percent: if self.total == 0 {
                0.0
            } else {
                used as f64 * 100.0 / self.total as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MEMINFO: &str = "\
MemTotal:       24684084 kB
MemFree:        23277440 kB
MemAvailable:   24071744 kB
Buffers:            6364 kB
Cached:           994048 kB
SwapCached:            0 kB
Active:           484364 kB
SwapTotal:       2097148 kB
SwapFree:        1048572 kB
SReclaimable:      98304 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn meminfo_is_reported_in_bytes_like_free() {
        let m = parse_meminfo(MEMINFO).unwrap().to_proto();
        assert_eq!(m.total_bytes, 24_684_084 * 1024);
        assert_eq!(m.available_bytes, 24_071_744 * 1024);
        assert_eq!(m.used_bytes, (24_684_084 - 24_071_744) * 1024);
        assert_eq!(m.free_bytes, 23_277_440 * 1024);
        assert_eq!(m.buffers_bytes, 6364 * 1024);
        assert_eq!(m.cached_bytes, (994_048 + 98_304) * 1024);
        assert_eq!(m.swap_total_bytes, 2_097_148 * 1024);
        assert_eq!(m.swap_used_bytes, (2_097_148 - 1_048_572) * 1024);
        let expected = (24_684_084.0 - 24_071_744.0) * 100.0 / 24_684_084.0;
        assert!((m.used_percent - expected).abs() < 1e-9);
    }

    #[test]
    fn old_kernel_without_memavailable_estimates_it() {
        let m =
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n")
                .unwrap();
        assert_eq!(m.available, 400 * 1024);
    }

    #[test]
    fn meminfo_without_total_is_rejected() {
        assert_eq!(parse_meminfo("MemFree: 100 kB\n"), None);
        assert_eq!(parse_meminfo(""), None);
    }
}
