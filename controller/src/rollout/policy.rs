//! How much of the fleet a rollout may touch at once and how many failures it tolerates,
//! with AWS Systems Manager's semantics: a limit is a count (`10`) or a share of the
//! fleet (`10%`); once the errors *exceed* the error limit no new host starts, and the
//! hosts already in flight finish. Pure: parsing and arithmetic only.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A count of hosts or a percentage of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Count(usize),
    /// 0..=100.
    Percent(u8),
}

/// A limit that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?}: expected a whole number (e.g. 10) or a percentage from 0% to 100% (e.g. 10%)")]
pub struct LimitError {
    pub what: &'static str,
    pub value: String,
}

impl FromStr for Limit {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Limit, LimitError> {
        let err = || LimitError { what: "limit", value: s.to_string() };
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| err())?;
            if p > 100 {
                return Err(err());
            }
            Ok(Limit::Percent(p))
        } else {
            t.parse().map(Limit::Count).map_err(|_| err())
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Limit {
    /// The share of `total` hosts, rounded down (10% of 50 is 5, 10% of 15 is 1).
    fn share(self, total: usize) -> usize {
        match self {
            Limit::Count(n) => n,
            Limit::Percent(p) => total * usize::from(p) / 100,
        }
    }

    /// Hosts in flight at once: at least one, at most the fleet.
    pub fn concurrency(self, total: usize) -> usize {
        self.share(total).clamp(1, total.max(1))
    }

    /// Errors tolerated: the rollout stops starting hosts when errors exceed this.
    /// `0` stops after the first error; `10%` of 50 hosts stops at the sixth.
    pub fn error_threshold(self, total: usize) -> usize {
        self.share(total)
    }
}

/// The rollout's limits, fixed for a run (and kept in its journal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub max_concurrency: Limit,
    pub max_errors: Limit,
    /// The first N hosts run alone; the rest start only when all of them have ended.
    pub canary: usize,
    /// The most one host may take over all its steps.
    pub host_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            max_concurrency: Limit::Count(1),
            max_errors: Limit::Count(0),
            canary: 0,
            host_timeout: Duration::from_secs(3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_counts_and_percentages() {
        assert_eq!("10".parse(), Ok(Limit::Count(10)));
        assert_eq!(" 25% ".parse(), Ok(Limit::Percent(25)));
        assert_eq!("0".parse(), Ok(Limit::Count(0)));
        for bad in ["", "-1", "101%", "ten", "5.5", "%"] {
            assert!(bad.parse::<Limit>().is_err(), "{bad:?} must be refused");
        }
        assert_eq!(Limit::Percent(10).to_string(), "10%");
    }

    #[test]
    fn error_threshold_follows_systems_manager() {
        // "If you run on 50 resources and set max-errors to 10%, the system stops when the
        // sixth error is received": errors > 5 stop it.
        assert_eq!(Limit::Percent(10).error_threshold(50), 5);
        assert_eq!(Limit::Percent(40).error_threshold(10), 4);
        assert_eq!(Limit::Count(0).error_threshold(50), 0);
        assert_eq!(Limit::Percent(10).error_threshold(15), 1);
        assert_eq!(Limit::Percent(10).error_threshold(5), 0);
    }

    #[test]
    fn concurrency_is_at_least_one_and_at_most_the_fleet() {
        assert_eq!(Limit::Percent(10).concurrency(5), 1);
        assert_eq!(Limit::Percent(50).concurrency(10), 5);
        assert_eq!(Limit::Count(100).concurrency(3), 3);
        assert_eq!(Limit::Count(0).concurrency(3), 1);
        assert_eq!(Limit::Percent(100).concurrency(0), 1);
    }
}
