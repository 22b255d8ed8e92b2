//! `[maintenance]` in the controller config: what `weekly-maintenance` does and within
//! which limits. Every key has a default taken from the weekly runbook it replaces, so an
//! empty section (or none) runs the TechHealth maintenance:
//!
//! ```toml
//! [maintenance]
//! max_concurrency = "1"                 # hosts patched at once: N or N%
//! max_errors = "0"                      # failed hosts tolerated before no new host starts
//! canary = 0                            # the first N hosts alone, then the rest
//! host_timeout = "1h"                   # all of one host's steps
//! step_timeout = "30m"                  # one agent job (never longer than the host's time left)
//! snapshot_deadline = "30m"             # EBS and RDS snapshots must be completed by then
//! snapshot_poll = "15s"
//! rds_snapshot_prefix = "techhealth-maintenance"
//! app_dependency_action = "npm-audit-fix"       # an agent [[actions]] name; "" for none
//! cert_renewal_action = "certbot-renew-dry-run" # an agent [[actions]] name; "" for none
//! services = ["httpd"]                  # restarted in step 3 where they run
//! security_services = ["fail2ban"]      # restarted in step 4 where they run
//! settle = "300s"                       # wait before the post-maintenance verification
//! verify_deadline = "15m"               # the health check is repeated until it passes or this runs out
//! verify_interval = "60s"
//! schedule = "Sun 02:00"                # for the report's next maintenance date (local time)
//! [[maintenance.cleanup]]               # step 3; `{name}` is replaced by the host's name
//! root = "/tmp"
//! pattern = "*"
//! older_than = "7d"
//! by = "atime"
//! [maintenance.database]
//! secret_id = "TechHealth-DB-Credentials"
//! tables = ["users", "sessions", "audit_log"]
//! ```
//!
//! Database names are validated as identifiers when the config is loaded, so that a typo
//! is an error naming the key before anything runs, and never text spliced into SQL.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::duration_text;
use crate::db::ident::Ident;
use crate::rollout::policy::{Limit, Policy};

/// `[maintenance]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    pub max_concurrency: String,
    pub max_errors: String,
    pub canary: usize,
    #[serde(with = "duration_text")]
    pub host_timeout: Duration,
    #[serde(with = "duration_text")]
    pub step_timeout: Duration,
    #[serde(with = "duration_text")]
    pub snapshot_deadline: Duration,
    #[serde(with = "duration_text")]
    pub snapshot_poll: Duration,
    pub rds_snapshot_prefix: String,
    pub app_dependency_action: String,
    pub cert_renewal_action: String,
    pub services: Vec<String>,
    pub security_services: Vec<String>,
    #[serde(with = "duration_text")]
    pub settle: Duration,
    #[serde(with = "duration_text")]
    pub verify_deadline: Duration,
    #[serde(with = "duration_text")]
    pub verify_interval: Duration,
    pub schedule: String,
    /// Step 3: `/tmp` files not accessed for 7 days, `/var/log/*.log` older than 30 days.
    pub cleanup: Vec<CleanupRuleConfig>,
    /// Step 6, after `logrotate -f`: rotated logs older than 30 days, application logs
    /// older than 7 days.
    pub log_cleanup: Vec<CleanupRuleConfig>,
    pub database: DatabaseConfig,
}

impl Default for MaintenanceConfig {
    fn default() -> MaintenanceConfig {
        let rule = |root: &str, pattern: &str, days: u64, by: TimeBy| CleanupRuleConfig {
            root: root.into(),
            pattern: pattern.into(),
            older_than: Duration::from_secs(days * 86_400),
            by,
        };
        MaintenanceConfig {
            max_concurrency: "1".into(),
            max_errors: "0".into(),
            canary: 0,
            host_timeout: Duration::from_secs(3600),
            step_timeout: Duration::from_secs(1800),
            snapshot_deadline: Duration::from_secs(1800),
            snapshot_poll: Duration::from_secs(15),
            rds_snapshot_prefix: "techhealth-maintenance".into(),
            app_dependency_action: "npm-audit-fix".into(),
            cert_renewal_action: "certbot-renew-dry-run".into(),
            services: vec!["httpd".into()],
            security_services: vec!["fail2ban".into()],
            settle: Duration::from_secs(300),
            verify_deadline: Duration::from_secs(900),
            verify_interval: Duration::from_secs(60),
            schedule: "Sun 02:00".into(),
            cleanup: vec![rule("/tmp", "*", 7, TimeBy::Atime), rule("/var/log", "*.log", 30, TimeBy::Mtime)],
            log_cleanup: vec![
                rule("/var/log", "*.log.*", 30, TimeBy::Mtime),
                rule("/var/www/html/logs", "*.log", 7, TimeBy::Mtime),
            ],
            database: DatabaseConfig::default(),
        }
    }
}

/// Which file time a cleanup rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeBy {
    Mtime,
    Atime,
}

/// One cleanup rule; the agent checks `root` against its own allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupRuleConfig {
    /// `{name}` is replaced by the host's name (a lab where every agent has its folder).
    pub root: String,
    #[serde(default = "any_file")]
    pub pattern: String,
    #[serde(with = "duration_text")]
    pub older_than: Duration,
    #[serde(default = "mtime")]
    pub by: TimeBy,
}

fn any_file() -> String {
    "*".into()
}
fn mtime() -> TimeBy {
    TimeBy::Mtime
}

/// `[maintenance.database]`: step 5.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `false` skips step 5 (said so in the report).
    pub enabled: bool,
    /// Default: `[runbooks] db_secret_id`.
    pub secret_id: Option<String>,
    /// The RDS instance whose endpoint is used when the secret has none, and which is
    /// snapshotted in step 2. Default: `[runbooks] db_instance_id`.
    pub instance_id: Option<String>,
    /// PEM bundle the server certificate must chain to (RDS's regional bundle). Without
    /// it, only a loopback database is accepted (plaintext).
    pub ca_bundle: Option<PathBuf>,
    /// The database when the secret names none.
    pub dbname: Option<String>,
    /// OPTIMIZE and ANALYZE these.
    pub tables: Vec<String>,
    pub sessions_table: String,
    pub sessions_time_column: String,
    #[serde(with = "duration_text")]
    pub sessions_retention: Duration,
    pub archive_table: String,
    pub archive_to: String,
    pub archive_time_column: String,
    #[serde(with = "duration_text")]
    pub archive_retention: Duration,
    /// Rows per transaction (archive) or statement (sessions purge).
    pub batch: u32,
}

impl Default for DatabaseConfig {
    fn default() -> DatabaseConfig {
        DatabaseConfig {
            enabled: true,
            secret_id: None,
            instance_id: None,
            ca_bundle: None,
            dbname: None,
            tables: vec!["users".into(), "sessions".into(), "audit_log".into()],
            sessions_table: "sessions".into(),
            sessions_time_column: "created_at".into(),
            sessions_retention: Duration::from_secs(30 * 86_400),
            archive_table: "audit_log".into(),
            archive_to: "audit_log_archive".into(),
            archive_time_column: "created_at".into(),
            archive_retention: Duration::from_secs(90 * 86_400),
            batch: 1000,
        }
    }
}

/// The database names, validated.
#[derive(Debug, Clone)]
pub struct DbNames {
    pub tables: Vec<Ident>,
    pub sessions: Ident,
    pub sessions_time: Ident,
    pub live: Ident,
    pub archive: Ident,
    pub archive_time: Ident,
}

impl DatabaseConfig {
    pub fn names(&self) -> Result<DbNames, String> {
        let id = |key: &'static str, v: &str| Ident::new(key, v).map_err(|e| format!("[maintenance.database] {e}"));
        Ok(DbNames {
            tables: self.tables.iter().map(|t| id("tables", t)).collect::<Result<_, _>>()?,
            sessions: id("sessions_table", &self.sessions_table)?,
            sessions_time: id("sessions_time_column", &self.sessions_time_column)?,
            live: id("archive_table", &self.archive_table)?,
            archive: id("archive_to", &self.archive_to)?,
            archive_time: id("archive_time_column", &self.archive_time_column)?,
        })
    }
}

/// A weekday and a local time, `Sun 02:00`: when the next maintenance is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub weekday: chrono::Weekday,
    pub hour: u32,
    pub minute: u32,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Schedule, String> {
        let bad = || format!("schedule {s:?}: expected a weekday and a time, e.g. \"Sun 02:00\"");
        let (day, time) = s.trim().split_once(' ').ok_or_else(bad)?;
        let weekday: chrono::Weekday = day.trim().parse().map_err(|_| bad())?;
        let (h, m) = time.trim().split_once(':').ok_or_else(bad)?;
        let (hour, minute): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if hour > 23 || minute > 59 {
            return Err(bad());
        }
        Ok(Schedule { weekday, hour, minute })
    }
}

impl Schedule {
    /// The first scheduled time strictly after `now`.
    pub fn next_after<Tz: chrono::TimeZone>(&self, now: &chrono::DateTime<Tz>) -> Option<chrono::DateTime<Tz>> {
        use chrono::{Datelike, Duration as D, NaiveTime};
        let time = NaiveTime::from_hms_opt(self.hour, self.minute, 0)?;
        let today = now.date_naive();
        (0..=7).find_map(|d| {
            let day = today + D::days(d);
            if day.weekday() != self.weekday {
                return None;
            }
            let at = now.timezone().from_local_datetime(&day.and_time(time)).earliest()?;
            (at > *now).then_some(at)
        })
    }
}

impl MaintenanceConfig {
    /// Checks every value that can be wrong before anything runs.
    pub fn validate(&self) -> Result<(), String> {
        self.policy()?;
        self.schedule()?;
        if self.database.enabled {
            self.database.names()?;
            if self.database.batch == 0 || self.database.batch > 100_000 {
                return Err("[maintenance.database] batch must be from 1 to 100000".into());
            }
        }
        let prefix_ok = !self.rds_snapshot_prefix.is_empty()
            && self.rds_snapshot_prefix.len() <= 40
            && self.rds_snapshot_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && self.rds_snapshot_prefix.as_bytes()[0].is_ascii_alphabetic();
        if !prefix_ok {
            return Err(format!(
                "[maintenance] rds_snapshot_prefix {:?}: letters, digits and '-', starting with a letter, at most 40",
                self.rds_snapshot_prefix
            ));
        }
        for r in self.cleanup.iter().chain(&self.log_cleanup) {
            if !r.root.starts_with('/') {
                return Err(format!("[maintenance] cleanup root {:?} must be an absolute path", r.root));
            }
        }
        Ok(())
    }

    pub fn policy(&self) -> Result<Policy, String> {
        let limit = |what: &'static str, v: &str| {
            v.parse::<Limit>().map_err(|mut e| {
                e.what = what;
                format!("[maintenance] {e}")
            })
        };
        Ok(Policy {
            max_concurrency: limit("max_concurrency", &self.max_concurrency)?,
            max_errors: limit("max_errors", &self.max_errors)?,
            canary: self.canary,
            host_timeout: self.host_timeout,
        })
    }

    pub fn schedule(&self) -> Result<Schedule, String> {
        self.schedule.parse().map_err(|e| format!("[maintenance] {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn defaults_are_the_weekly_runbook() {
        let c = MaintenanceConfig::default();
        c.validate().unwrap();
        assert_eq!(c.cleanup[0].root, "/tmp");
        assert_eq!(c.cleanup[0].by, TimeBy::Atime);
        assert_eq!(c.database.archive_retention, Duration::from_secs(90 * 86_400));
        assert_eq!(c.policy().unwrap().max_errors, Limit::Count(0));
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let mut c = MaintenanceConfig { max_errors: "ten".into(), ..MaintenanceConfig::default() };
        assert!(c.validate().unwrap_err().contains("max_errors"));
        c.max_errors = "10%".into();
        c.database.archive_table = "audit_log; DROP TABLE users".into();
        assert!(c.validate().unwrap_err().contains("archive_table"));
        c.database.archive_table = "audit_log".into();
        c.rds_snapshot_prefix = "bad_prefix".into();
        assert!(c.validate().unwrap_err().contains("rds_snapshot_prefix"));
        c.rds_snapshot_prefix = "ok".into();
        c.schedule = "Sunday at two".into();
        assert!(c.validate().unwrap_err().contains("schedule"));
    }

    #[test]
    fn the_next_date_is_the_next_scheduled_weekday() {
        let s: Schedule = "Sun 02:00".parse().unwrap();
        // Thursday 2026-12-03 17:00 UTC -> Sunday 2026-12-06 02:00.
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 17, 0, 0).unwrap();
        assert_eq!(s.next_after(&now).unwrap(), chrono::Utc.with_ymd_and_hms(2026, 12, 6, 2, 0, 0).unwrap());
        // On Sunday at 02:00 itself, the next is a week later.
        let at = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 2, 0, 0).unwrap();
        assert_eq!(s.next_after(&at).unwrap(), chrono::Utc.with_ymd_and_hms(2026, 12, 13, 2, 0, 0).unwrap());
    }
}
