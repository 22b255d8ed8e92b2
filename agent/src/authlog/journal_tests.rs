//! Tests of the journal source against real journal files: export-format entries are
//! turned into `.journal` files by Debian's `systemd-journal-remote` and read back with
//! the host's `journalctl --directory`/`--file`. journald need not run.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::journal::{Journal, JournalSettings, JournalSource};
use super::sources::AuthSources;
use super::{AuthLog, Programs};

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
const JOURNALCTL: &str = "/usr/bin/journalctl";
const DEADLINE: Duration = Duration::from_secs(60);
/// 2026-11-30T07:00:00Z in microseconds.
const BASE_US: i64 = 1_796_022_000_000_000;

/// One entry: realtime seconds after `BASE_US`, then its fields.
struct Entry<'a>(i64, &'a [(&'a str, &'a str)]);

/// Writes `entries` as journal file `path` through systemd-journal-remote.
fn make_journal(path: &Path, entries: &[Entry<'_>]) {
    assert!(
        Path::new(JOURNAL_REMOTE).exists() && Path::new(JOURNALCTL).exists(),
        "{JOURNAL_REMOTE} and {JOURNALCTL} are needed: apt-get install systemd-journal-remote (scripts/setup)"
    );
    let mut export = String::new();
    for Entry(second, fields) in entries {
        let us = BASE_US + second * 1_000_000;
        // One boot: journalctl orders entries of several files by the monotonic clock.
        export.push_str(&format!(
            "__REALTIME_TIMESTAMP={us}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=h\n",
            (second + 1) * 1_000_000
        ));
        for (key, value) in *fields {
            export.push_str(&format!("{key}={value}\n"));
        }
        export.push('\n');
    }
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", path.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(export.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn sshd_failure(message: &str) -> [(&str, &str); 5] {
    [
        ("_COMM", "sshd"),
        ("_UID", "0"),
        ("_SYSTEMD_UNIT", "sshd.service"),
        ("SYSLOG_IDENTIFIER", "sshd"),
        ("MESSAGE", message),
    ]
}

fn journal(dir: &TempDir, source: JournalSource) -> Journal {
    Journal::new(JournalSettings {
        journalctl: PathBuf::from(JOURNALCTL),
        source,
        cursor_file: dir.path().join("state/authlog/journal.cursor"),
        programs: Programs::default(),
        max_events: 1000,
    })
}

const FAILED: &str = "Failed password for root from 192.0.2.1 port 22 ssh2";

#[tokio::test]
async fn only_entries_whose_trusted_fields_name_the_service_are_counted() {
    tokio::time::timeout(DEADLINE, async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("j.journal");
        let forged = "Failed password for admin from 198.51.100.9 port 22 ssh2";
        make_journal(
            &file,
            &[
                Entry(0, &sshd_failure(FAILED)),
                // `logger -t sshd` by a local user: the identifier is the sender's claim.
                Entry(1, &[("_COMM", "logger"), ("_UID", "1000"), ("SYSLOG_IDENTIFIER", "sshd"), ("MESSAGE", forged)]),
                // The same from root's logger: _COMM still says logger.
                Entry(2, &[("_COMM", "logger"), ("_UID", "0"), ("SYSLOG_IDENTIFIER", "sshd"), ("MESSAGE", forged)]),
                // A binary a user named `sshd`: _COMM matches but it did not run as root.
                Entry(3, &[("_COMM", "sshd"), ("_UID", "1000"), ("MESSAGE", forged)]),
                Entry(4, &[
                    ("_COMM", "sudo"),
                    ("_UID", "0"),
                    ("MESSAGE", "pam_unix(sudo:auth): authentication failure; logname=bob uid=1000 euid=0 tty=/dev/pts/0 ruser=bob rhost=  user=bob"),
                ]),
                Entry(5, &[("_COMM", "sshd"), ("_UID", "0"), ("MESSAGE", "Accepted publickey for ops from 192.0.2.3 port 1 ssh2")]),
            ],
        );
        let mut j = journal(&dir, JournalSource::File(file.clone()));
        let got = j.query(0, 10, false).await.unwrap();
        assert_eq!((got.total, got.failed_password, got.failed_local), (2, 1, 1), "{got:?}");
        assert_eq!(got.source, format!("journal:{}", file.display()));
        let users: Vec<&str> = got.top_users.iter().map(|n| n.name.as_str()).collect();
        assert!(!users.contains(&"admin"), "{users:?}");
        assert_eq!(got.oldest_event_unix_ms, BASE_US / 1000);
        assert!(!got.lower_bound);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn reading_resumes_from_the_stored_cursor_in_the_state_dir_even_after_a_restart() {
    tokio::time::timeout(DEADLINE, async {
        let dir = tempfile::tempdir().unwrap();
        let journals = dir.path().join("journal");
        std::fs::create_dir(&journals).unwrap();
        make_journal(&journals.join("a.journal"), &[Entry(0, &sshd_failure(FAILED)), Entry(1, &sshd_failure(FAILED))]);
        let source = JournalSource::Directory(journals.clone());

        let mut first = journal(&dir, source.clone());
        assert_eq!(first.query(0, 10, false).await.unwrap().total, 2);
        assert!(first.cursor_file().exists(), "the cursor is stored in the state dir");
        let unchanged = first.query(0, 10, false).await.unwrap();
        assert_eq!((unchanged.total, unchanged.bytes_read), (2, 0), "nothing is read twice");

        make_journal(&journals.join("b.journal"), &[Entry(10, &sshd_failure(FAILED))]);
        let more = first.query(0, 10, false).await.unwrap();
        assert_eq!(more.total, 3);
        assert!(more.bytes_read > 0);

        // A restarted agent resumes after the cursor: only the new entry is read, and an
        // answer reaching back before the cursor says its count is a lower bound.
        make_journal(&journals.join("c.journal"), &[Entry(20, &sshd_failure(FAILED))]);
        let mut restarted = journal(&dir, source);
        let resumed = restarted.query(0, 10, false).await.unwrap();
        assert_eq!((resumed.total, resumed.lower_bound), (1, true));
        let recent = restarted.query(BASE_US / 1000 + 11_000, 10, false).await.unwrap();
        assert_eq!((recent.total, recent.lower_bound), (1, false));
        let rescanned = restarted.query(0, 10, true).await.unwrap();
        assert_eq!((rescanned.total, rescanned.lower_bound), (4, false));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn journal_repeats_future_times_and_oversized_or_unreadable_messages_are_handled() {
    tokio::time::timeout(DEADLINE, async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("j.journal");
        let repeated = format!("message repeated 5 times: [ {FAILED}]");
        let future_s = (chrono::Utc::now().timestamp_micros() - BASE_US) / 1_000_000 + 3600;
        make_journal(
            &file,
            &[
                Entry(0, &sshd_failure(&repeated)),
                Entry(1, &sshd_failure("Failed password for root")),
                Entry(future_s, &sshd_failure(FAILED)),
            ],
        );
        let got = journal(&dir, JournalSource::File(file)).query(0, 10, false).await.unwrap();
        assert_eq!((got.total, got.malformed_lines), (5, 2), "{got:?}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_journal_answers_only_when_no_configured_file_exists() {
    tokio::time::timeout(DEADLINE, async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("j.journal");
        make_journal(&file, &[Entry(0, &sshd_failure(FAILED))]);
        let live = dir.path().join("auth.log");
        let owner = rustix::process::geteuid().as_raw();
        let sources = AuthSources::new(
            AuthLog::new(vec![dir.path().join("secure"), live.clone()], 100).with_required_owner(owner),
            Some(journal(&dir, JournalSource::File(file.clone()))),
        );
        let from_journal = sources.query(0, 10, false).await.unwrap();
        assert_eq!((from_journal.source.starts_with("journal:"), from_journal.total), (true, 1));

        let line = "2026-11-30T07:00:00Z h sshd[1]: Invalid user a from 192.0.2.1 port 1\n";
        std::fs::write(&live, format!("{line}{line}")).unwrap();
        let from_file = sources.query(0, 10, false).await.unwrap();
        assert_eq!((from_file.source, from_file.total), (live.display().to_string(), 2));

        let none = AuthSources::new(AuthLog::new(vec![dir.path().join("nope")], 10), None);
        let message = none.query(0, 10, false).await.unwrap_err().to_string();
        assert!(message.contains("nope"), "{message}");
    })
    .await
    .unwrap();
}
