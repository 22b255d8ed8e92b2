//! The systemd timer and service that run weekly maintenance on a controller host pass
//! `systemd-analyze verify` with no warning (systemd ignores a bad setting with only a
//! warning, so warnings fail the test too), and the timer fires on Sundays at 02:00.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::process::Command;

use e2e::support::binary;

fn units_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd")
}

fn analyze() -> Command {
    let p = Path::new("/usr/bin/systemd-analyze");
    assert!(p.is_file(), "systemd-analyze not found: install Debian's systemd package (scripts/setup does)");
    Command::new(p)
}

#[test]
fn weekly_maintenance_units_verify_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let controller = binary("controller");
    assert!(controller.is_file(), "build the binaries first: cargo build --workspace --bins");
    let service = std::fs::read_to_string(units_dir().join("ops-weekly-maintenance.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/local/bin/controller weekly-maintenance --yes"));
    // verify checks that ExecStart is executable: point it at the binary built here.
    let service = service.replace("/usr/local/bin/controller", controller.to_str().unwrap());
    std::fs::write(dir.path().join("ops-weekly-maintenance.service"), service).unwrap();
    std::fs::copy(units_dir().join("ops-weekly-maintenance.timer"), dir.path().join("ops-weekly-maintenance.timer")).unwrap();
    let out = analyze()
        .arg("verify")
        .arg("--man=no")
        .arg(dir.path().join("ops-weekly-maintenance.timer"))
        .arg(dir.path().join("ops-weekly-maintenance.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze verify warned: {stderr}");
}

#[test]
fn the_timer_fires_on_sundays_at_two_and_catches_up_after_downtime() {
    let timer = std::fs::read_to_string(units_dir().join("ops-weekly-maintenance.timer")).unwrap();
    let spec = timer.lines().find_map(|l| l.strip_prefix("OnCalendar=")).unwrap();
    assert!(timer.lines().any(|l| l == "Persistent=true"));
    let out = analyze().args(["calendar", "--iterations=3", spec]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let elapses: Vec<&str> = text.lines().filter(|l| l.contains("elapse:") || l.contains("Iter.")).collect();
    assert_eq!(elapses.len(), 3, "{text}");
    for e in elapses {
        assert!(e.contains(": Sun ") && e.contains(" 02:00:00"), "not Sunday 02:00: {e}");
    }
}
