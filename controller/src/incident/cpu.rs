//! The CloudWatch side of a high-CPU incident, pure: the last hour per 5 minutes (average
//! and maximum) as a table with a sparkline, and whether a host is in the trigger (every
//! 5-minute average of the trigger window above the threshold). A period CloudWatch has no
//! figure for is shown as missing, never as zero, and a window with a missing period is
//! not in the trigger.

use chrono::{DateTime, Local, Utc};
use serde::Serialize;

use crate::aws::cloudwatch::Datapoint;

/// One 5-minute period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub average: Option<f64>,
    pub maximum: Option<f64>,
}

/// Seconds per period.
pub const PERIOD_SECS: i64 = 300;

/// The periods from `start` to `end`, each with CloudWatch's figures when it has them.
/// Each datapoint goes to the period its timestamp falls in (CloudWatch aligns them to the
/// query's start, which need not be a 5-minute boundary).
pub fn periods(points: &[Datapoint], start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<Period> {
    let first = start.timestamp() - start.timestamp().rem_euclid(PERIOD_SECS);
    let count = usize::try_from((end.timestamp() - first + PERIOD_SECS - 1) / PERIOD_SECS).unwrap_or(0);
    let mut out: Vec<Period> = (0..count)
        .map(|i| Period {
            start: DateTime::from_timestamp(first + i as i64 * PERIOD_SECS, 0).unwrap_or(start),
            average: None,
            maximum: None,
        })
        .collect();
    for d in points {
        let Some(ts) = d.timestamp else { continue };
        let offset = ts.timestamp() - first;
        if offset < 0 {
            continue;
        }
        if let Some(p) = out.get_mut((offset / PERIOD_SECS) as usize) {
            p.average = d.average;
            p.maximum = d.maximum;
        }
    }
    out
}

/// Whether the last `window_periods` periods (the newest complete ones) all average above
/// `threshold`.
pub fn triggered(periods: &[Period], window_periods: usize, threshold: f64) -> bool {
    if window_periods == 0 || periods.len() < window_periods {
        return false;
    }
    // The newest period may still be filling; the window is the complete ones before it
    // when it has no figure yet.
    let usable: Vec<&Period> = match periods.last() {
        Some(p) if p.average.is_none() => periods[..periods.len() - 1].iter().collect(),
        _ => periods.iter().collect(),
    };
    if usable.len() < window_periods {
        return false;
    }
    usable[usable.len() - window_periods..].iter().all(|p| p.average.is_some_and(|a| a > threshold))
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One character per value on a 0..100 scale; a missing value is a space.
pub fn sparkline(values: &[Option<f64>]) -> String {
    values
        .iter()
        .map(|v| match v {
            Some(x) => BARS[((x.clamp(0.0, 100.0) / 100.0) * 7.0).round() as usize],
            None => ' ',
        })
        .collect()
}

/// The table a person reads: one line per period, then the sparkline of the averages.
pub fn render(host: &str, periods: &[Period]) -> String {
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:5.1} %")).unwrap_or_else(|| "    -  ".into());
    let mut out = format!("CPU of {host}, last hour (CloudWatch CPUUtilization per 5 minutes)\n  PERIOD   AVERAGE  MAXIMUM\n");
    for p in periods {
        out.push_str(&format!("  {}  {}  {}\n", p.start.with_timezone(&Local).format("%H:%M"), fmt(p.average), fmt(p.maximum)));
    }
    let avgs: Vec<Option<f64>> = periods.iter().map(|p| p.average).collect();
    out.push_str(&format!("  average  {}  (0-100 %)\n", sparkline(&avgs)));
    if avgs.iter().all(Option::is_none) {
        out.push_str("  CloudWatch has no CPU figures for this instance in the last hour\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 - 1_800_000_000 % 300 + min * 60, 0).unwrap()
    }

    fn dp(min: i64, avg: f64) -> Datapoint {
        Datapoint { timestamp: Some(at(min)), average: Some(avg), maximum: Some(avg + 5.0), sum: None, sample_count: None }
    }

    #[test]
    fn missing_periods_stay_missing_and_break_the_trigger() {
        let points = [dp(0, 90.0), dp(5, 95.0), dp(15, 97.0)];
        let p = periods(&points, at(0), at(20));
        assert_eq!(p.len(), 4);
        assert_eq!(p[2].average, None);
        assert!(!triggered(&p, 2, 80.0), "the period at 10 has no figure");
        assert!(triggered(&p[..2], 2, 80.0));
        assert!(!triggered(&p[..2], 2, 92.0), "one period at 90 is not above 92");
    }

    #[test]
    fn a_newest_period_still_filling_is_not_counted_against_the_trigger() {
        let points = [dp(0, 90.0), dp(5, 95.0)];
        let p = periods(&points, at(0), at(14));
        assert_eq!(p.len(), 3);
        assert!(triggered(&p, 2, 80.0));
    }

    #[test]
    fn the_sparkline_has_one_bar_per_period_and_a_gap_for_a_missing_one() {
        assert_eq!(sparkline(&[Some(0.0), Some(100.0), None, Some(50.0)]), "▁█ ▅");
        let text = render("web-1", &periods(&[dp(0, 90.0)], at(0), at(10)));
        assert!(text.contains(" 90.0 %   95.0 %"), "{text}");
        assert!(text.contains("average  ▇ "), "{text}");
    }
}
