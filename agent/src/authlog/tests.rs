//! Tests of `AuthLog` against real files in a temporary directory: the fixtures in
//! `agent/tests/fixtures/authlog/` (RHEL secure, Debian 12 auth.log and its `.1`), gzip
//! siblings written here, appends, rotation by rename, truncation and partial lines.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use tempfile::TempDir;

use super::timestamp::tests::local_ms;
use super::{AuthLog, AuthLogError};

/// 2026-11-30T00:00:00Z.
const NOV_30_UTC_MS: i64 = 1_795_996_800_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/authlog")
        .join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn set_mtime(path: &Path, unix_ms: i64) {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap());
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

fn append(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn write_gz(path: &Path, text: &[u8]) {
    let mut encoder = GzEncoder::new(File::create(path).unwrap(), Compression::default());
    encoder.write_all(text).unwrap();
    encoder.finish().unwrap();
}

fn size(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// A failed-password line at `second` seconds after 2026-11-30T07:00:00Z.
fn failed(second: u32, user: &str) -> String {
    format!(
        "2026-11-30T07:{:02}:{:02}.000000+00:00 h sshd[9]: Failed password for {user} from 192.0.2.{} port 22 ssh2\n",
        second / 60,
        second % 60,
        second % 250 + 1
    )
}

fn at_second(second: u32) -> i64 {
    NOV_30_UTC_MS + (7 * 3600 + i64::from(second)) * 1000
}

fn names(list: &[ops_proto::v1::NameCount]) -> Vec<(&str, u64)> {
    list.iter().map(|nc| (nc.name.as_str(), nc.count)).collect()
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

fn live_file(dir: &TempDir, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, content).unwrap();
    path
}

#[test]
fn rhel_secure_fixture_counts_each_kind_since_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_file(&dir, "secure", &fixture("secure"));
    // Syslog timestamps have no year: the file's mtime says it is late 2026.
    set_mtime(&live, local_ms(2026, 12, 1, 0, 0, 0));
    let mut log = AuthLog::new(vec![dir.path().join("auth.log"), live.clone()], 1000);

    let got = log
        .query(local_ms(2026, 11, 30, 0, 0, 0), 3, false)
        .unwrap();
    assert_eq!(got.source, shown(&live));
    assert_eq!(
        (
            got.failed_password,
            got.invalid_user,
            got.failed_publickey,
            got.total
        ),
        (6, 1, 1, 8),
        "`message repeated 2 times` counts twice"
    );
    assert_eq!(
        names(&got.top_users),
        [("root", 4), ("oracle", 2), ("git", 1)]
    );
    assert_eq!(
        names(&got.top_sources),
        [("203.0.113.5", 4), ("2001:db8::7", 2), ("192.0.2.77", 1)]
    );
    // Truncated, unstamped and bad address; binary garbage names no accepted program.
    assert_eq!(got.malformed_lines, 3);
    assert_eq!(got.bytes_read, size(&live));
    assert_eq!(got.files_read, [shown(&live)]);
    assert_eq!(got.oldest_event_unix_ms, local_ms(2026, 11, 29, 23, 59, 59));
    assert_eq!(got.evicted_events, 0);

    let all = log.query(0, 10, false).unwrap();
    assert_eq!(all.total, 9);
    assert!(
        names(&all.top_users).contains(&("\u{fffd}t\u{fffd}", 1)),
        "{:?}",
        all.top_users
    );
    assert_eq!(all.bytes_read, 0);
    assert!(all.files_read.is_empty());
}

#[test]
fn debian_rfc3339_auth_log_fixture_counts_each_kind_since_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_file(&dir, "auth.log", &fixture("auth.log"));
    let mut log = AuthLog::new(vec![dir.path().join("secure"), live.clone()], 1000);

    let got = log.query(NOV_30_UTC_MS, 2, false).unwrap();
    assert_eq!(
        (
            got.failed_password,
            got.invalid_user,
            got.failed_publickey,
            got.total
        ),
        (3, 2, 1, 6)
    );
    assert_eq!(names(&got.top_users), [("admin", 3), ("deploy", 1)]);
    assert_eq!(
        names(&got.top_sources),
        [("198.51.100.7", 3), ("192.0.2.1", 1)]
    );
    // Truncated before `from`, a bad IPv6 address, and a timestamp without an offset.
    assert_eq!(got.malformed_lines, 3);
    assert_eq!(got.oldest_event_unix_ms, NOV_30_UTC_MS - 3600 * 1000);

    let everything = log.query(0, 0, false).unwrap();
    assert_eq!(everything.total, 7);
    assert_eq!(
        everything.top_sources.len(),
        4,
        "top_n 0 means the default of 10, not none"
    );
}

#[test]
fn first_query_reads_rotated_siblings_oldest_first_including_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_file(&dir, "auth.log", &fixture("auth.log"));
    let plain = live_file(&dir, "auth.log.1", &fixture("auth.log.1"));
    let gz = dir.path().join("auth.log.2.gz");
    let older =
        format!("{}{}", failed(0, "old1"), failed(1, "old2")).replace("2026-11-30", "2026-11-28");
    write_gz(&gz, older.as_bytes());
    let mut log = AuthLog::new(vec![live.clone()], 1000);

    let got = log.query(0, 10, false).unwrap();
    assert_eq!(got.files_read, [shown(&gz), shown(&plain), shown(&live)]);
    assert_eq!(got.bytes_read, size(&gz) + size(&plain) + size(&live));
    assert_eq!(got.total, 2 + 2 + 7);
    assert_eq!(got.oldest_event_unix_ms, at_second(0) - 2 * 86_400_000);
    assert!(names(&got.top_users).contains(&("pi", 2)));

    let again = log.query(0, 10, false).unwrap();
    assert_eq!((again.total, again.bytes_read), (11, 0));
}

#[test]
fn incremental_query_reads_only_the_appended_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_file(&dir, "auth.log", &fixture("auth.log"));
    let mut log = AuthLog::new(vec![live.clone()], 1000);
    assert_eq!(log.query(0, 10, false).unwrap().total, 7);

    let appended = format!(
        "{}2026-11-30T07:00:05.000000+00:00 h CRON[3]: session opened\n{}",
        failed(3, "late"),
        failed(4, "late")
    );
    append(&live, appended.as_bytes());
    let got = log.query(at_second(0), 10, false).unwrap();
    assert_eq!(got.bytes_read, appended.len() as u64);
    assert_eq!(got.files_read, [shown(&live)]);
    assert_eq!(got.total, 2);
    assert_eq!(names(&got.top_users), [("late", 2)]);
    assert_eq!(log.query(0, 10, false).unwrap().total, 9);
}

#[test]
fn rescan_reads_everything_again_without_double_counting() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_file(&dir, "auth.log", &fixture("auth.log"));
    live_file(&dir, "auth.log.1", &fixture("auth.log.1"));
    let mut log = AuthLog::new(vec![live.clone()], 1000);
    let first = log.query(0, 10, false).unwrap();
    append(&live, failed(0, "new").as_bytes());
    assert_eq!(log.query(0, 10, false).unwrap().total, first.total + 1);

    let rescanned = log.query(0, 10, true).unwrap();
    assert_eq!(rescanned.total, first.total + 1);
    assert_eq!(
        rescanned.bytes_read,
        first.bytes_read + failed(0, "new").len() as u64
    );
    assert_eq!(rescanned.files_read.len(), 2);
    assert_eq!(rescanned.malformed_lines, first.malformed_lines);
}

#[test]
fn rotation_by_rename_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_file(
        &dir,
        "secure",
        format!("{}{}", failed(0, "a"), failed(1, "a")).as_bytes(),
    );
    let mut log = AuthLog::new(vec![live.clone()], 1000);
    assert_eq!(log.query(0, 10, false).unwrap().total, 2);

    // Written after the last query, just before logrotate renames the file.
    let unread = failed(2, "b");
    append(&live, unread.as_bytes());
    let rotated = dir.path().join("secure-20261130");
    fs::rename(&live, &rotated).unwrap();
    let fresh = format!("{}{}", failed(3, "c"), failed(4, "c"));
    fs::write(&live, &fresh).unwrap();

    let got = log.query(0, 10, false).unwrap();
    assert_eq!(got.total, 5);
    assert_eq!(names(&got.top_users), [("a", 2), ("c", 2), ("b", 1)]);
    assert_eq!(got.files_read, [shown(&rotated), shown(&live)]);
    assert_eq!(got.bytes_read, (unread.len() + fresh.len()) as u64);

    append(&live, failed(5, "d").as_bytes());
    let next = log.query(0, 10, false).unwrap();
    assert_eq!(
        (next.total, next.bytes_read),
        (6, failed(5, "d").len() as u64)
    );
}

#[test]
fn live_file_missing_mid_rotation_finishes_the_old_file_then_follows_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_file(&dir, "auth.log", failed(0, "a").as_bytes());
    let mut log = AuthLog::new(vec![live.clone()], 1000);
    assert_eq!(log.query(0, 10, false).unwrap().total, 1);

    append(&live, failed(1, "b").as_bytes());
    let rotated = dir.path().join("auth.log.1");
    fs::rename(&live, &rotated).unwrap();
    let between = log.query(0, 10, false).unwrap();
    assert_eq!(
        (between.total, between.source.as_str()),
        (2, shown(&live).as_str())
    );
    assert_eq!(between.files_read, [shown(&rotated)]);

    fs::write(&live, failed(2, "c")).unwrap();
    let after = log.query(0, 10, false).unwrap();
    assert_eq!(after.total, 3);
    assert_eq!(after.files_read, [shown(&live)]);
}

#[test]
fn truncation_in_place_starts_over_from_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_file(
        &dir,
        "auth.log",
        format!("{}{}", failed(0, "a"), failed(1, "a")).as_bytes(),
    );
    let mut log = AuthLog::new(vec![live.clone()], 1000);
    assert_eq!(log.query(0, 10, false).unwrap().total, 2);

    // copytruncate, then a shorter file.
    fs::write(&live, failed(2, "b")).unwrap();
    let shorter = log.query(0, 10, false).unwrap();
    assert_eq!((shorter.total, shorter.bytes_read), (3, size(&live)));

    // copytruncate, then refilled past the old offset before the next query.
    let long_user = "c".repeat(200);
    fs::write(&live, failed(3, &long_user)).unwrap();
    let refilled = log.query(0, 10, false).unwrap();
    assert_eq!(refilled.total, 4);
    assert_eq!(refilled.malformed_lines, 0);
}

#[test]
fn a_partial_last_line_is_counted_once_it_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let complete = failed(0, "a");
    let line = failed(1, "b");
    let (head, rest) = line.split_at(line.find(" for ").unwrap() + 7);
    let live = live_file(&dir, "auth.log", format!("{complete}{head}").as_bytes());
    let mut log = AuthLog::new(vec![live.clone()], 1000);

    let first = log.query(0, 10, false).unwrap();
    assert_eq!((first.total, first.malformed_lines), (1, 0));
    let unchanged = log.query(0, 10, false).unwrap();
    assert_eq!(
        unchanged.bytes_read, 0,
        "a partial line is not re-read until the file grows"
    );

    append(&live, rest.as_bytes());
    let got = log.query(0, 10, false).unwrap();
    assert_eq!((got.total, got.malformed_lines), (2, 0));
    assert_eq!(names(&got.top_users), [("a", 1), ("b", 1)]);
    assert_eq!(got.bytes_read, line.len() as u64);
}

#[test]
fn max_events_evicts_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..5).map(|s| failed(s, "u")).collect();
    let live = live_file(&dir, "auth.log", lines.as_bytes());
    let mut log = AuthLog::new(vec![live.clone()], 3);

    let got = log.query(0, 10, false).unwrap();
    assert_eq!(
        (got.total, got.evicted_events, got.oldest_event_unix_ms),
        (3, 2, at_second(2))
    );

    append(
        &live,
        format!("{}{}", failed(5, "u"), failed(6, "u")).as_bytes(),
    );
    let more = log.query(0, 10, false).unwrap();
    assert_eq!(
        (more.total, more.evicted_events, more.oldest_event_unix_ms),
        (3, 4, at_second(4))
    );
}

#[test]
fn no_existing_candidate_is_an_error_naming_every_path_tried() {
    let dir = tempfile::tempdir().unwrap();
    let tried = vec![dir.path().join("secure"), dir.path().join("auth.log")];
    let mut log = AuthLog::new(tried.clone(), 10);
    let error = log.query(0, 10, false).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(&error, AuthLogError::NoLogFile { tried: t } if *t == tried),
        "{error:?}"
    );
    assert!(
        message.contains(&shown(&tried[0])) && message.contains(&shown(&tried[1])),
        "{message}"
    );
}

#[test]
fn a_symlinked_live_file_is_refused_and_named_and_its_target_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let secret = live_file(&dir, "shadow", failed(0, "secret-content").as_bytes());
    let live = dir.path().join("auth.log");
    std::os::unix::fs::symlink(&secret, &live).unwrap();
    let mut log = AuthLog::new(vec![live.clone()], 100);
    let error = log.query(0, 10, false).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, AuthLogError::Refused { .. }), "{error:?}");
    assert!(message.contains(&shown(&live)) && message.contains("symbolic link"), "{message}");
    assert!(!message.contains("secret-content"), "{message}");
}

#[test]
fn a_live_file_not_owned_by_the_required_owner_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_file(&dir, "auth.log", failed(0, "a").as_bytes());
    let other = rustix::process::geteuid().as_raw().wrapping_add(1);
    let mut log = AuthLog::new(vec![live.clone()], 100).with_required_owner(other);
    let message = log.query(0, 10, false).unwrap_err().to_string();
    assert!(message.contains(&shown(&live)) && message.contains("owned by uid"), "{message}");
}

#[test]
fn a_timestamp_beyond_the_clock_skew_allowance_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    let soon = chrono::Utc::now() + chrono::Duration::minutes(1);
    let line = |at: chrono::DateTime<chrono::Utc>| {
        format!(
            "{} h sshd[9]: Failed password for root from 192.0.2.1 port 22 ssh2\n",
            at.format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        )
    };
    let live = live_file(&dir, "auth.log", format!("{}{}", line(future), line(soon)).as_bytes());
    let got = AuthLog::new(vec![live], 100).query(0, 10, false).unwrap();
    assert_eq!((got.total, got.malformed_lines), (1, 1));
}

#[test]
fn after_evictions_every_answer_whose_window_lost_events_is_a_lower_bound() {
    let dir = tempfile::tempdir().unwrap();
    // One line standing for a million attempts, then a few single ones.
    let repeated = failed(0, "spray").replace(
        "Failed password",
        "message repeated 1000000 times: [ Failed password",
    );
    let repeated = repeated.replace(" ssh2\n", " ssh2]\n");
    let singles: String = (1..=3).map(|s| failed(s, "u")).collect();
    let live = live_file(&dir, "auth.log", format!("{repeated}{singles}").as_bytes());
    let mut log = AuthLog::new(vec![live], 3);
    let all = log.query(0, 10, false).unwrap();
    assert_eq!((all.total, all.evicted_events, all.lower_bound), (3, 1_000_000, true));
    let later = log.query(at_second(1), 10, false).unwrap();
    assert!(!later.lower_bound, "nothing at or after the window's start was evicted");
    assert_eq!(later.evicted_events, 1_000_000, "every answer still says events were evicted");

    let mut roomy = AuthLog::new(vec![dir.path().join("auth.log")], 10);
    let counted = roomy.query(0, 10, false).unwrap();
    assert_eq!((counted.total, counted.lower_bound), (1_000_003, false));
}

/// One failure line with a unique port, so every line's bytes differ.
fn numbered(n: u64) -> String {
    format!(
        "2026-11-30T07:00:00.000000+00:00 h sshd[9]: Failed password for u{} from 192.0.2.1 port {n} ssh2\n",
        n % 50
    )
}

/// logrotate's copytruncate with `rotate 5`: shift the numbered copies, copy the live file
/// to `.1`, truncate it. The writer is held off meanwhile (the lock), which leaves out
/// copytruncate's own window (lines written between copy and truncate are lost by
/// logrotate itself); what is tested is that the reader loses nothing.
fn copytruncate(live: &Path) {
    for n in (1..5).rev() {
        let from = PathBuf::from(format!("{}.{n}", live.display()));
        if from.exists() {
            fs::rename(&from, format!("{}.{}", live.display(), n + 1)).unwrap();
        }
    }
    fs::copy(live, format!("{}.1", live.display())).unwrap();
    OpenOptions::new().write(true).open(live).unwrap().set_len(0).unwrap();
}

#[test]
fn copytruncate_rotation_every_quarter_second_under_a_query_loop_loses_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    const ROTATIONS: u32 = 12;

    let dir = tempfile::tempdir().unwrap();
    let live = live_file(&dir, "auth.log", b"");
    let mut log = AuthLog::new(vec![live.clone()], 1 << 20);
    assert_eq!(log.query(0, 10, false).unwrap().total, 0);

    let lock = Arc::new(Mutex::new(()));
    let rotations = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (lock, rotations, live) = (lock.clone(), rotations.clone(), live.clone());
        std::thread::spawn(move || {
            let mut file = OpenOptions::new().append(true).open(&live).unwrap();
            let mut written = 0u64;
            while rotations.load(Ordering::SeqCst) < ROTATIONS {
                let batch: String = (written..written + 16).map(numbered).collect();
                {
                    let _held = lock.lock().unwrap();
                    file.write_all(batch.as_bytes()).unwrap();
                }
                written += 16;
                // Paces the writer near a busy sshd (~16k lines/s); no synchronisation.
                std::thread::sleep(Duration::from_millis(1));
            }
            written
        })
    };
    let rotator = {
        let (lock, rotations, done, live) = (lock.clone(), rotations.clone(), done.clone(), live.clone());
        std::thread::spawn(move || {
            while rotations.load(Ordering::SeqCst) < ROTATIONS {
                std::thread::sleep(Duration::from_millis(250));
                let _held = lock.lock().unwrap();
                copytruncate(&live);
                rotations.fetch_add(1, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut queries = 0u64;
    while !done.load(Ordering::SeqCst) {
        log.query(0, 10, false).unwrap();
        queries += 1;
    }
    rotator.join().unwrap();
    let written = writer.join().unwrap();
    let last = log.query(0, 10, false).unwrap();
    assert!(written > 1000 && queries > 10, "written {written}, queries {queries}");
    assert_eq!(
        (last.total, last.malformed_lines),
        (written, 0),
        "{queries} queries over {ROTATIONS} rotations"
    );
}
