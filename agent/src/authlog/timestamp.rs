//! Timestamps at the start of auth log lines: traditional syslog (`Nov 30 06:39:17`, no
//! year, host local time) and RFC 3339 (`2026-11-30T06:39:17.123456+00:00`, rsyslog's
//! default on Debian 12+). Parsing is pure; [`SyslogClock`] is the one place that asks the
//! host's time zone. Never reads files and never allocates per line.

use std::time::SystemTime;

use chrono::{DateTime, Datelike, Local, NaiveDate, Offset, TimeZone};

/// How far after the reference time a syslog timestamp may lie and still be taken as this
/// year: absorbs clock steps and coarse mtimes without flipping a line a whole year back.
const FUTURE_TOLERANCE_MS: i64 = 24 * 3600 * 1000;

/// How far past the agent's clock a timestamp may lie (the writer's clock running ahead,
/// or ours behind) before the line is counted as malformed rather than as an event.
pub(crate) const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// A timestamp as written at the start of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// Traditional syslog: local wall-clock time without a year.
    Syslog(SyslogStamp),
    /// RFC 3339: an absolute time.
    UnixMs(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SyslogStamp {
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Parses the timestamp that starts `line`; `None` when the line starts with neither format.
pub(crate) fn parse_stamp(line: &[u8]) -> Option<Stamp> {
    match line.first() {
        Some(b'0'..=b'9') => parse_rfc3339(line).map(Stamp::UnixMs),
        Some(_) => parse_syslog(line).map(Stamp::Syslog),
        None => None,
    }
}

/// `Nov 30 06:39:17`, `Nov  3 06:39:17` (space-padded day) or `Nov 3 06:39:17`.
fn parse_syslog(line: &[u8]) -> Option<SyslogStamp> {
    let month = month_number(line.get(..3)?)?;
    let rest = line.get(3..)?.strip_prefix(b" ")?;
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    let (day, rest) = match rest {
        [d1 @ b'0'..=b'9', d2 @ b'0'..=b'9', rest @ ..] => (digit(*d1) * 10 + digit(*d2), rest),
        [d @ b'0'..=b'9', rest @ ..] => (digit(*d), rest),
        _ => return None,
    };
    let rest = rest.strip_prefix(b" ")?;
    let (hour, minute, second) = parse_hms(rest)?;
    if !(1..=31).contains(&day) {
        return None;
    }
    Some(SyslogStamp {
        month,
        day,
        hour,
        minute,
        second,
    })
}

fn month_number(name: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let index = MONTHS.iter().position(|m| m.as_slice() == name)?;
    u32::try_from(index + 1).ok()
}

/// `HH:MM:SS` at the start of `s`; a leap second (60) is folded into 59.
fn parse_hms(s: &[u8]) -> Option<(u32, u32, u32)> {
    let [h1, h2, b':', m1, m2, b':', s1, s2, ..] = *s else {
        return None;
    };
    let hour = two_digits(h1, h2)?;
    let minute = two_digits(m1, m2)?;
    let second = two_digits(s1, s2)?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some((hour, minute, second.min(59)))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` to Unix milliseconds.
fn parse_rfc3339(line: &[u8]) -> Option<i64> {
    let [y1, y2, y3, y4, b'-', mo1, mo2, b'-', d1, d2, b'T' | b't', ref rest @ ..] = *line else {
        return None;
    };
    let year = i64::from(two_digits(y1, y2)? * 100 + two_digits(y3, y4)?);
    let month = two_digits(mo1, mo2)?;
    let day = two_digits(d1, d2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let (hour, minute, second) = parse_hms(rest)?;
    let mut rest = rest.get(8..)?;

    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (b, scale) in fraction[..digits.min(3)].iter().zip([100, 10, 1]) {
            millis += i64::from(digit(*b)) * scale;
        }
        rest = &fraction[digits..];
    }
    let offset_seconds = match *rest {
        [b'Z' | b'z', ..] => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2, ..] => {
            let (oh, om) = (two_digits(oh1, oh2)?, two_digits(om1, om2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let magnitude = i64::from(oh * 3600 + om * 60);
            if sign == b'-' {
                -magnitude
            } else {
                magnitude
            }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400
        + i64::from(hour * 3600 + minute * 60 + second)
        - offset_seconds;
    Some(seconds * 1000 + millis)
}

fn digit(b: u8) -> u32 {
    u32::from(b - b'0')
}

fn two_digits(a: u8, b: u8) -> Option<u32> {
    (a.is_ascii_digit() && b.is_ascii_digit()).then(|| digit(a) * 10 + digit(b))
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Turns year-less syslog timestamps into Unix milliseconds for one file: the year is the
/// one that puts the time not in the future relative to `reference` (the file's mtime),
/// in the host's local time zone. Caches the last minute converted, so the time zone is
/// consulted about once per logged minute rather than once per line.
pub(crate) struct SyslogClock {
    reference_ms: i64,
    reference_year: i32,
    /// (month, day, hour, minute) packed, and the Unix ms at the start of that minute.
    last_minute: Option<(u32, i64)>,
    /// Latest time accepted: the agent's clock when reading began, plus the skew allowance.
    latest_ms: i64,
}

impl SyslogClock {
    pub(crate) fn new(reference: SystemTime) -> SyslogClock {
        SyslogClock::with_now(reference, now_unix_ms())
    }

    /// As [`SyslogClock::new`] with the agent's clock given (for tests).
    pub(crate) fn with_now(reference: SystemTime, now_ms: i64) -> SyslogClock {
        let local = DateTime::<Local>::from(reference);
        SyslogClock {
            reference_ms: local.timestamp_millis(),
            reference_year: local.year(),
            last_minute: None,
            latest_ms: now_ms.saturating_add(MAX_CLOCK_SKEW_MS),
        }
    }

    /// Unix ms of a stamp; `None` when no recent year has that date (e.g. Feb 30) or the
    /// time lies further in the future than [`MAX_CLOCK_SKEW_MS`].
    pub(crate) fn resolve(&mut self, stamp: Stamp) -> Option<i64> {
        self.resolve_any(stamp).filter(|ms| *ms <= self.latest_ms)
    }

    fn resolve_any(&mut self, stamp: Stamp) -> Option<i64> {
        let s = match stamp {
            Stamp::UnixMs(ms) => return Some(ms),
            Stamp::Syslog(s) => s,
        };
        let key = s.month << 24 | s.day << 16 | s.hour << 8 | s.minute;
        let minute_start = match self.last_minute {
            Some((cached, ms)) if cached == key => ms,
            _ => {
                let ms = self.minute_start(&s)?;
                self.last_minute = Some((key, ms));
                ms
            }
        };
        Some(minute_start + i64::from(s.second) * 1000)
    }

    fn minute_start(&self, s: &SyslogStamp) -> Option<i64> {
        // A leap day may be up to four years back (eight across a skipped century year).
        (0..8).find_map(|back| {
            let year = self.reference_year - back;
            let ms = local_minute_to_unix_ms(year, s)?;
            (ms <= self.reference_ms + FUTURE_TOLERANCE_MS).then_some(ms)
        })
    }
}

/// The agent's clock in Unix ms (0 if it is set before 1970).
pub(crate) fn now_unix_ms() -> i64 {
    DateTime::<Local>::from(SystemTime::now()).timestamp_millis()
}

fn local_minute_to_unix_ms(year: i32, s: &SyslogStamp) -> Option<i64> {
    let naive = NaiveDate::from_ymd_opt(year, s.month, s.day)?.and_hms_opt(s.hour, s.minute, 0)?;
    match Local.from_local_datetime(&naive).earliest() {
        Some(at) => Some(at.timestamp_millis()),
        // A wall-clock time skipped by a DST change: use the offset in force around it.
        None => {
            let offset = Local
                .offset_from_utc_datetime(&naive)
                .fix()
                .local_minus_utc();
            Some((naive.and_utc().timestamp() - i64::from(offset)) * 1000)
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// Unix ms of a local wall-clock time (also used by the file-level tests).
    pub(in crate::authlog) fn local_ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        let naive = NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap();
        Local
            .from_local_datetime(&naive)
            .earliest()
            .unwrap()
            .timestamp_millis()
    }

    fn system_time(ms: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap())
    }

    #[test]
    fn rfc3339_with_fraction_and_offset_is_absolute() {
        let utc = parse_stamp(b"2026-11-30T06:39:17.123456+00:00 web-1 sshd").unwrap();
        assert_eq!(utc, Stamp::UnixMs(1_796_020_757_123));
        let east = parse_stamp(b"2026-11-30T07:39:17.123+01:00 web-1").unwrap();
        assert_eq!(east, utc);
        assert_eq!(
            parse_stamp(b"2026-11-30T06:39:17Z x"),
            Some(Stamp::UnixMs(1_796_020_757_000))
        );
        assert_eq!(
            parse_stamp(b"1970-01-01T00:00:00-00:30 x"),
            Some(Stamp::UnixMs(1_800_000))
        );
    }

    #[test]
    fn rfc3339_rejects_impossible_dates_and_truncation() {
        assert_eq!(parse_stamp(b"2026-02-29T00:00:00Z"), None);
        assert_eq!(
            parse_stamp(b"2024-02-29T00:00:00Z"),
            Some(Stamp::UnixMs(1_709_164_800_000))
        );
        assert_eq!(parse_stamp(b"2026-11-30T06:39"), None);
        assert_eq!(parse_stamp(b"2026-11-30T06:39:17."), None);
        assert_eq!(parse_stamp(b"2026-11-30T06:39:17 web-1"), None);
        assert_eq!(parse_stamp(b"2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn syslog_accepts_padded_and_unpadded_days() {
        let want = SyslogStamp {
            month: 11,
            day: 3,
            hour: 6,
            minute: 39,
            second: 17,
        };
        assert_eq!(parse_stamp(b"Nov  3 06:39:17 h"), Some(Stamp::Syslog(want)));
        assert_eq!(parse_stamp(b"Nov 3 06:39:17 h"), Some(Stamp::Syslog(want)));
        assert_eq!(parse_stamp(b"Nov 03 06:39:17 h"), Some(Stamp::Syslog(want)));
        assert_eq!(parse_stamp(b"Nov 30 24:00:00 h"), None);
        assert_eq!(parse_stamp(b"Nox 30 06:39:17 h"), None);
        assert_eq!(parse_stamp(b"Nov 30 06:39"), None);
        assert_eq!(parse_stamp(b"\xff\xfe\x00 30"), None);
    }

    #[test]
    fn syslog_year_is_the_one_not_after_the_reference() {
        let reference = local_ms(2027, 1, 2, 12, 0, 0);
        let mut clock = SyslogClock::with_now(system_time(reference), reference);
        let dec = parse_stamp(b"Dec 31 23:59:58 h").unwrap();
        let jan = parse_stamp(b"Jan  1 00:00:05 h").unwrap();
        assert_eq!(clock.resolve(dec), Some(local_ms(2026, 12, 31, 23, 59, 58)));
        assert_eq!(clock.resolve(jan), Some(local_ms(2027, 1, 1, 0, 0, 5)));
        // Same minute twice goes through the cache and still gets its own second.
        let jan_later = parse_stamp(b"Jan  1 00:00:59 h").unwrap();
        assert_eq!(
            clock.resolve(jan_later),
            Some(local_ms(2027, 1, 1, 0, 0, 59))
        );
    }

    #[test]
    fn syslog_leap_day_goes_back_to_a_leap_year() {
        let at = local_ms(2027, 3, 1, 0, 0, 0);
        let mut clock = SyslogClock::with_now(system_time(at), at);
        let leap = parse_stamp(b"Feb 29 10:00:00 h").unwrap();
        assert_eq!(clock.resolve(leap), Some(local_ms(2024, 2, 29, 10, 0, 0)));
    }

    #[test]
    fn a_time_beyond_the_clock_skew_allowance_is_refused() {
        let now = 1_796_020_757_000;
        let mut clock = SyslogClock::with_now(system_time(now), now);
        let soon = Stamp::UnixMs(now + MAX_CLOCK_SKEW_MS);
        assert_eq!(clock.resolve(soon), Some(now + MAX_CLOCK_SKEW_MS));
        assert_eq!(clock.resolve(Stamp::UnixMs(now + MAX_CLOCK_SKEW_MS + 1)), None);
        assert_eq!(clock.resolve(Stamp::UnixMs(now + 86_400_000)), None);
    }
}
