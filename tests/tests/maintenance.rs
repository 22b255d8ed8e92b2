//! `controller weekly-maintenance` end to end: the real controller binary against moto,
//! a private MariaDB and three real agent processes discovered through EC2 tags.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test

use std::time::Duration;

use e2e::support::maintenance::{state_of, World, WorldSpec};
use mysql_async::prelude::*;
use ops_proto::v1::{job_result, job_spec};

const LIMIT: Duration = Duration::from_secs(300);

fn kind(j: &ops_proto::v1::Job) -> String {
    match j.spec.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(job_spec::Kind::Patch(p)) if p.security_only => "security-patch".into(),
        Some(job_spec::Kind::Patch(_)) => "patch".into(),
        Some(job_spec::Kind::RunAction(a)) => format!("action {}", a.name),
        Some(job_spec::Kind::RestartService(r)) => format!("restart {}", r.unit),
        Some(job_spec::Kind::Cleanup(_)) => "cleanup".into(),
        Some(job_spec::Kind::RotateLogs(_)) => "logrotate".into(),
        other => format!("{other:?}"),
    }
}

async fn count(c: &mut mysql_async::Conn, sql: &str) -> u64 {
    c.query_first::<u64, _>(sql).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_over_three_agents_does_every_step_in_order_and_reports_what_happened() {
    tokio::time::timeout(LIMIT, async {
        let w = World::build(WorldSpec { inactive: vec![3], ..WorldSpec::default() }).await;
        let mut c = w.sql().await;
        let total_audit = count(&mut c, "SELECT COUNT(*) FROM audit_log").await;
        let old_audit = count(&mut c, "SELECT COUNT(*) FROM audit_log WHERE created_at < UTC_TIMESTAMP() - INTERVAL 90 DAY").await;
        let old_sessions = count(&mut c, "SELECT COUNT(*) FROM sessions WHERE created_at < UTC_TIMESTAMP() - INTERVAL 30 DAY").await;
        assert!(old_audit > 10_000 && old_sessions > 1_000, "{old_audit} {old_sessions}");

        let (code, out, err) = w.maintenance(&["--yes"]).await;
        let report = w.report();
        let run_id = report["run_id"].as_str().unwrap().to_string();
        assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}\n{}", w.run_reports(&run_id));
        assert_eq!(report["outcome"], "succeeded-with-warnings", "the patches were only simulated: {out}");
        assert!(out.contains("Report saved to:"), "{out}");

        // 1: every volume of every instance, tagged with the run; 2: the RDS snapshot.
        let filter = aws_sdk_ec2::types::Filter::builder().name("tag:RunId").values(&run_id).build();
        let described = w.aws.ec2.describe_snapshots().owner_ids("self").filters(filter).send().await.unwrap();
        let snaps = described.snapshots();
        let mut volumes = Vec::new();
        for id in &w.instance_ids {
            volumes.extend(e2e::support::aws_seed::volumes_of(&w.aws, id).await);
        }
        assert_eq!(snaps.len(), volumes.len(), "one snapshot per volume: {snaps:?}");
        for s in snaps {
            assert!(volumes.iter().any(|v| Some(v.as_str()) == s.volume_id()));
            let tag = |k: &str| s.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(str::to_string);
            assert_eq!(tag("Purpose").as_deref(), Some("Maintenance"));
            assert_eq!(tag("Date").map(|d| d.len()), Some(8));
        }
        let rds = w.aws.rds.describe_db_snapshots().db_instance_identifier("techhealth-database").send().await.unwrap();
        let manual: Vec<&str> = rds.db_snapshots().iter().filter_map(|s| s.db_snapshot_identifier()).filter(|n| n.starts_with("techhealth-maintenance-")).collect();
        assert_eq!(manual.len(), 1, "{manual:?}");

        // 3, 4, 6: every agent ran its jobs, in the runbook's order.
        let expected = ["patch", "action npm-audit-fix", "restart httpd", "cleanup", "security-patch", "action certbot-renew-dry-run", "restart fail2ban", "logrotate", "cleanup"];
        for i in 0..3 {
            let jobs = w.jobs(i).await;
            let kinds: Vec<String> = jobs.iter().map(kind).collect();
            assert_eq!(kinds, expected, "agent web-{}", i + 1);
            assert!(jobs.iter().all(|j| j.idempotency_key.starts_with(&format!("run:{run_id}:web-{}:", i + 1))));
            // Patching was only simulated (the agents' patch_mode) and the report says so.
            let patch = jobs.iter().find(|j| kind(j) == "patch").unwrap();
            assert!(matches!(patch.result.as_ref().and_then(|r| r.kind.as_ref()), Some(job_result::Kind::Patch(p)) if p.simulated));
        }
        assert_eq!(state_of(&report, "3 patch", Some("web-1")), "warning");
        // web-3 does not run its services: left alone, reported skipped, never started.
        assert_eq!(state_of(&report, "3 restart httpd", Some("web-1")), "succeeded");
        assert_eq!(state_of(&report, "3 restart httpd", Some("web-3")), "skipped");
        assert!(!w.systemctl[2].calls().iter().any(|c| c.starts_with("restart")), "{:?}", w.systemctl[2].calls());
        assert!(w.systemctl[0].calls().iter().any(|c| c == "restart httpd"));
        // Cleanup removed the old files and only those.
        for name in ["web-1", "web-2", "web-3"] {
            let d = w.hosts_dir.join(name);
            for gone in ["tmp/old-upload.tmp", "var/log/old-app.log", "var/log/messages.log.3", "app/logs/old-request.log"] {
                assert!(!d.join(gone).exists(), "{name}/{gone} should be gone");
            }
            for kept in ["tmp/fresh-upload.tmp", "var/log/current.log", "app/logs/today.log"] {
                assert!(d.join(kept).exists(), "{name}/{kept} should be kept");
            }
            assert!(d.join("var/log/rotate-me.log.1").exists(), "logrotate -f ran on {name}");
        }

        // 5: the database, every figure verified.
        assert_eq!(report["database"]["sessions_deleted"], old_sessions);
        assert_eq!(report["database"]["archive"]["verified"], true);
        let moved = report["database"]["archive"]["moved"].as_u64().unwrap();
        assert!(moved >= old_audit && moved <= old_audit + 50, "moved {moved}, old at start {old_audit}");
        let live = count(&mut c, "SELECT COUNT(*) FROM audit_log").await;
        let archived = count(&mut c, "SELECT COUNT(*) FROM audit_log_archive").await;
        assert_eq!(live + archived, total_audit, "every row exactly once");
        assert_eq!(count(&mut c, "SELECT COUNT(*) FROM audit_log a JOIN audit_log_archive b USING (id)").await, 0);
        for step in ["5 optimize", "5 analyze", "5 table-sizes", "5 sessions-purge", "5 audit-archive"] {
            assert_eq!(state_of(&report, step, None), "succeeded", "{step}");
        }
        // 7–10 ran and passed; the next date is in the report.
        for step in ["7 security-review", "8 performance-baseline", "9 backup-verify", "10 verification"] {
            assert_eq!(state_of(&report, step, None), "succeeded", "{step}: {out}");
        }
        assert!(report["next_maintenance"].is_string());
        let text = std::fs::read_to_string(w.reports.join(format!("maintenance-report-{}-{run_id}.txt", chrono::Local::now().format("%Y%m%d")))).unwrap();
        assert!(text.contains("SUCCEEDED WITH WARNINGS") || text.contains("SUCCEEDED"), "{text}");
        assert!(text.contains("0 failed") && text.contains("0 not run"), "{text}");
        assert!(report["steps"].as_array().unwrap().iter().all(|r| r["state"] != "not_run" && r["state"] != "failed"), "{text}");

        // The run is listed, and shown from its journal with the same outcome.
        let (code, list, _) = w.controller(vec!["runs".into(), "list".into()]).await;
        assert_eq!(code, 0);
        assert!(list.contains(&run_id) && list.contains("finished"), "{list}");
        let (code, shown, _) = w.controller(vec!["runs".into(), "show".into(), run_id.clone()]).await;
        assert_eq!(code, 0, "{shown}");
    })
    .await
    .unwrap();
}

fn host_state<'a>(report: &'a serde_json::Value, host: &str) -> (&'a str, &'a str) {
    let h = report["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap();
    (h["state"].as_str().unwrap(), h["reason"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_down_stops_the_rollout_under_max_errors_0_and_not_under_1() {
    tokio::time::timeout(LIMIT, async {
        let mut w = World::build(WorldSpec { audit_rows: 2_000, session_rows: 500, ..WorldSpec::default() }).await;
        w.agents[1].kill();

        let (code, out, err) = w.maintenance(&["--yes", "--max-errors", "0"]).await;
        assert_eq!(code, 1, "{out}\n{err}");
        let r = w.report();
        assert_eq!(r["outcome"], "failed");
        assert_eq!(host_state(&r, "web-1").0, "succeeded");
        let (state, reason) = host_state(&r, "web-2");
        assert_eq!(state, "unreachable", "{reason}");
        let (state, reason) = host_state(&r, "web-3");
        assert_eq!(state, "not_started");
        assert!(reason.contains("--max-errors"), "{reason}");
        assert_eq!(state_of(&r, "3 patch", Some("web-3")), "not_run");
        // The database is not touched after the rollout stopped; nothing is shown as done.
        assert_eq!(state_of(&r, "5 audit-archive", None), "not_run");
        assert_eq!(w.jobs(2).await.len(), 0, "web-3 never got a job");
        assert!(out.contains("FAILED") && out.contains("not started"), "{out}");

        let (code, out, err) = w.maintenance(&["--yes", "--max-errors", "1"]).await;
        assert_eq!(code, 1, "web-2 is still down: {out}\n{err}");
        let r = w.report();
        assert_eq!(host_state(&r, "web-2").0, "unreachable");
        assert_eq!(host_state(&r, "web-3").0, "succeeded", "{out}");
        assert_eq!(state_of(&r, "5 audit-archive", None), "succeeded", "{out}");
        assert_eq!(state_of(&r, "6 logrotate", Some("web-3")), "succeeded");
        assert_eq!(state_of(&r, "6 logrotate", Some("web-2")), "not_run", "logs are not rotated on a host whose updates failed");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_over_its_timeout_is_reported_timed_out_and_its_job_ended_on_the_agent() {
    tokio::time::timeout(LIMIT, async {
        let w = World::build(WorldSpec { agents: 2, slow: vec![1], audit_rows: 1_000, session_rows: 100, ..WorldSpec::default() }).await;
        let (code, out, err) = w.maintenance(&["--yes", "--max-errors", "1", "--host-timeout", "30s"]).await;
        assert_eq!(code, 1, "{out}\n{err}");
        let r = w.report();
        let (state, reason) = host_state(&r, "web-1");
        assert_eq!(state, "timed_out", "{out}");
        assert!(reason.contains("3 action npm-audit-fix"), "{reason}");
        assert_eq!(state_of(&r, "3 action npm-audit-fix", Some("web-1")), "timed_out");
        assert_eq!(state_of(&r, "3 restart httpd", Some("web-1")), "not_run");
        assert_eq!(host_state(&r, "web-2").0, "succeeded");
        // The agent itself ended the job at the host's deadline: nothing is left running.
        let slow = w.jobs(0).await.into_iter().find(|j| kind(j) == "action npm-audit-fix").unwrap();
        assert_eq!(ops_proto::v1::JobState::try_from(slow.state).unwrap(), ops_proto::v1::JobState::TimedOut);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reads_everything_and_changes_nothing() {
    tokio::time::timeout(LIMIT, async {
        let w = World::build(WorldSpec { agents: 2, audit_rows: 5_000, session_rows: 1_000, ..WorldSpec::default() }).await;
        let files = |w: &World| {
            let mut v: Vec<String> = walk(&w.hosts_dir).into_iter().filter(|p| !p.contains("/state/")).collect();
            v.sort();
            v
        };
        let before_files = files(&w);
        let mut c = w.sql().await;
        let before_rows = (count(&mut c, "SELECT COUNT(*) FROM audit_log").await, count(&mut c, "SELECT COUNT(*) FROM sessions").await);
        let old = count(&mut c, "SELECT COUNT(*) FROM audit_log WHERE created_at < UTC_TIMESTAMP() - INTERVAL 90 DAY").await;
        let snaps_before = w.aws.ec2.describe_snapshots().owner_ids("self").send().await.unwrap().snapshots().len();
        let rds_before = w.aws.rds.describe_db_snapshots().send().await.unwrap().db_snapshots().len();

        // Without a terminal to confirm on, a real run needs --yes: refused, nothing done.
        let (code, _, err) = w.maintenance(&[]).await;
        assert_eq!(code, 2);
        assert!(err.contains("--yes"), "{err}");
        // --hosts names hosts of the fleet, or nothing runs.
        let (code, _, err) = w.maintenance(&["--dry-run", "--hosts", "web-9"]).await;
        assert_eq!(code, 2);
        assert!(err.contains("web-9") && err.contains("web-1"), "{err}");
        // One JSON event per line with -o json, the report last.
        let (code, out, err) = w.controller(vec!["-o".into(), "json".into(), "weekly-maintenance".into(), "--dry-run".into(), "--hosts".into(), "web-2".into(), "--report-dir".into(), w.reports.display().to_string()]).await;
        assert_eq!(code, 0, "{out}\n{err}");
        let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        assert_eq!(events.first().unwrap()["event"], "plan");
        assert_eq!(events.first().unwrap()["hosts"], serde_json::json!(["web-2"]));
        assert!(events.iter().any(|e| e["event"] == "step_ended" && e["host"] == "web-2"));
        assert_eq!(events.last().unwrap()["event"], "run_ended");
        assert_eq!(events.last().unwrap()["report"]["outcome"], "planned");

        let (code, out, err) = w.maintenance(&["--dry-run"]).await;
        assert_eq!(code, 0, "{out}\n{err}");
        let r = w.report();
        assert_eq!(r["outcome"], "planned");
        assert!(err.contains("DRY RUN"), "the plan is shown: {err}");
        assert!(r["steps"].as_array().unwrap().iter().all(|s| s["state"] != "not_run" && s["state"] != "failed"), "{out}");
        // What it would do, read from the real systems.
        let detail = |step: &str, host: Option<&str>| {
            r["steps"].as_array().unwrap().iter().find(|s| s["step"] == step && s["host"].as_str() == host).unwrap()["detail"].as_str().unwrap().to_string()
        };
        assert!(detail("1 ebs-snapshots", None).contains("would snapshot 2 volumes"));
        assert!(detail("2 rds-snapshot", None).contains("would snapshot techhealth-database"));
        assert!(detail("5 audit-archive", None).contains(&format!("would move {old} rows")) || detail("5 audit-archive", None).contains("would move"), "{}", detail("5 audit-archive", None));
        assert!(detail("3 cleanup", Some("web-1")).contains("2 file(s)"), "{}", detail("3 cleanup", Some("web-1")));
        assert!(detail("3 restart httpd", Some("web-1")).contains("would restart"));

        // Nothing changed: files, rows, snapshots, services.
        assert_eq!(files(&w), before_files);
        let after_rows = (count(&mut c, "SELECT COUNT(*) FROM audit_log").await, count(&mut c, "SELECT COUNT(*) FROM sessions").await);
        assert_eq!(after_rows, before_rows);
        let archive_exists: Option<String> = c.query_first("SHOW TABLES LIKE 'audit_log_archive'").await.unwrap();
        assert!(archive_exists.is_none(), "a dry run creates no archive table");
        assert_eq!(w.aws.ec2.describe_snapshots().owner_ids("self").send().await.unwrap().snapshots().len(), snaps_before);
        assert_eq!(w.aws.rds.describe_db_snapshots().send().await.unwrap().db_snapshots().len(), rds_before);
        assert!(w.systemctl.iter().all(|s| !s.calls().iter().any(|c| c.starts_with("restart"))));
        for i in 0..2 {
            for j in w.jobs(i).await {
                match j.spec.and_then(|s| s.kind) {
                    Some(job_spec::Kind::Patch(p)) => assert!(p.simulate),
                    Some(job_spec::Kind::Cleanup(c)) => assert!(c.dry_run),
                    other => panic!("a dry run asked for {other:?}"),
                }
            }
        }
    })
    .await
    .unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_resumes_without_repeating_done_work_and_a_second_run_is_refused_meanwhile() {
    tokio::time::timeout(LIMIT, async {
        let w = World::build(WorldSpec { audit_rows: 2_000, session_rows: 500, ..WorldSpec::default() }).await;
        let mut first = w.spawn_maintenance(&["--yes"]);
        // Killed once web-2 has started its updates: web-1 is done, web-2 is in flight.
        let run_id = w
            .wait_journal(Duration::from_secs(120), |e| e["event"] == "step_started" && e["host"] == "web-2" && e["step"] == "3 action npm-audit-fix")
            .await;
        // While it holds the lock, a second run on the same fleet is refused, naming it.
        let (code, out, err) = w.maintenance(&["--yes"]).await;
        assert_eq!(code, 2, "{out}\n{err}");
        assert!(err.contains("is locked") && err.contains(&run_id), "{err}");
        first.kill().unwrap();
        first.wait().unwrap();
        let done_before: Vec<serde_json::Value> = w.journal(&run_id).into_iter().filter(|e| e["event"] == "step_ended").collect();

        let (code, out, err) = w.maintenance(&["--yes", "--resume", &run_id]).await;
        assert_eq!(code, 0, "{out}\n{err}\n{}", w.run_reports(&run_id));
        let r = w.report();
        assert_eq!(r["run_id"], run_id.as_str());
        assert!(matches!(r["outcome"].as_str(), Some("succeeded" | "succeeded-with-warnings")), "{out}");
        // Work done before the kill is not started again.
        let journal = w.journal(&run_id);
        for e in &done_before {
            let again = journal.iter().filter(|x| x["event"] == "step_started" && x["step"] == e["step"] && x["host"] == e["host"]).count();
            assert!(again <= 1, "{} on {} was started again after it ended", e["step"], e["host"]);
        }
        // Exactly one agent job per idempotency key, and every step of every host ran once.
        for i in 0..3 {
            let jobs = w.jobs(i).await;
            let mut keys: Vec<&str> = jobs.iter().map(|j| j.idempotency_key.as_str()).collect();
            let n = keys.len();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), n, "web-{}: a key was used twice", i + 1);
            assert_eq!(n, 9, "web-{}: {keys:?}", i + 1);
        }
        // One set of snapshots for the run, even across the two attempts.
        let filter = aws_sdk_ec2::types::Filter::builder().name("tag:RunId").values(&run_id).build();
        assert_eq!(w.aws.ec2.describe_snapshots().owner_ids("self").filters(filter).send().await.unwrap().snapshots().len(), 3);
        // A finished run cannot be resumed again.
        let (code, _, err) = w.maintenance(&["--yes", "--resume", &run_id]).await;
        assert_eq!(code, 2);
        assert!(err.contains("already ended"), "{err}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_killed_mid_archive_and_resumed_moves_every_row_exactly_once_while_a_writer_inserts() {
    tokio::time::timeout(Duration::from_secs(420), async {
        let w = World::build(WorldSpec { agents: 1, audit_rows: 200_000, session_rows: 20_000, ..WorldSpec::default() }).await;
        let mut c = w.sql().await;
        let before = count(&mut c, "SELECT COUNT(*) FROM audit_log").await;
        let old = count(&mut c, "SELECT COUNT(*) FROM audit_log WHERE created_at < UTC_TIMESTAMP() - INTERVAL 90 DAY").await;
        assert!(old > 140_000, "{old}");

        // The application keeps writing throughout.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (stop, url) = (stop.clone(), w.db.url("techhealth"));
            tokio::spawn(async move {
                let mut c = mysql_async::Conn::from_url(url).await.unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    c.query_drop("INSERT INTO audit_log (user_id, action, detail, created_at) VALUES (1, 'login', 'writer', UTC_TIMESTAMP())").await.unwrap();
                    n += 1;
                }
                n
            })
        };

        let mut first = w.spawn_maintenance(&["--yes"]);
        let run_id = w.wait_journal(Duration::from_secs(180), |e| e["event"] == "step_ended" && e["step"] == "5 archive-start").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let moved = count(&mut c, "SELECT COUNT(*) FROM audit_log_archive").await;
            if moved >= 10_000 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the archive never got going ({moved} rows)");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        first.kill().unwrap();
        first.wait().unwrap();
        let at_kill = count(&mut c, "SELECT COUNT(*) FROM audit_log_archive").await;
        assert!(at_kill < old, "the controller was killed mid-archive ({at_kill} of {old} moved)");
        assert!(!w.journal(&run_id).iter().any(|e| e["event"] == "step_ended" && e["step"] == "5 audit-archive"));

        let (code, out, err) = w.maintenance(&["--yes", "--resume", &run_id]).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let inserted = writer.await.unwrap();
        assert_eq!(code, 0, "{out}\n{err}\n{}", w.run_reports(&run_id));
        assert!(inserted > 0);

        let params = w.journal(&run_id).into_iter().find(|e| e["event"] == "run_started").unwrap()["params"].clone();
        let (archive_cutoff, sessions_cutoff) = (params["archive_cutoff"].as_str().unwrap().to_string(), params["sessions_cutoff"].as_str().unwrap().to_string());
        let live = count(&mut c, "SELECT COUNT(*) FROM audit_log").await;
        let archived = count(&mut c, "SELECT COUNT(*) FROM audit_log_archive").await;
        assert_eq!(live + archived, before + inserted, "every row exactly once in the live or the archive table");
        assert_eq!(count(&mut c, "SELECT COUNT(*) FROM audit_log a JOIN audit_log_archive b USING (id)").await, 0, "no row in both");
        assert_eq!(count(&mut c, "SELECT COUNT(DISTINCT id) FROM audit_log_archive").await, archived, "no row archived twice");
        // Exactly the rows older than the run's cutoff moved (rows may have crossed the
        // line between this test's count and the run's start, never the other way).
        assert!(archived >= old, "{archived} moved, {old} were old at the start");
        let young: Option<u64> = c.exec_first("SELECT COUNT(*) FROM audit_log_archive WHERE created_at >= ?", (archive_cutoff.as_str(),)).await.unwrap();
        assert_eq!(young, Some(0), "no row newer than the cutoff was archived");
        let older: Option<u64> = c.exec_first("SELECT COUNT(*) FROM audit_log WHERE created_at < ?", (archive_cutoff.as_str(),)).await.unwrap();
        assert_eq!(older, Some(0), "no live row older than the cutoff");
        let old_sessions: Option<u64> = c.exec_first("SELECT COUNT(*) FROM sessions WHERE created_at < ?", (sessions_cutoff.as_str(),)).await.unwrap();
        assert_eq!(old_sessions, Some(0), "old sessions are gone");
        let r = w.report();
        assert_eq!(r["database"]["archive"]["verified"], true, "{out}");
        assert_eq!(state_of(&r, "5 audit-archive", None), "succeeded");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_ctrl_c_lets_the_host_in_flight_finish_and_starts_nothing_new() {
    tokio::time::timeout(LIMIT, async {
        let w = World::build(WorldSpec { audit_rows: 1_000, session_rows: 100, ..WorldSpec::default() }).await;
        let child = w.spawn_maintenance(&["--yes"]);
        let run_id = w.wait_journal(Duration::from_secs(120), |e| e["event"] == "step_ended" && e["step"] == "3 patch" && e["host"] == "web-1").await;
        rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::INT).unwrap();
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        let r = w.report();
        assert_eq!(r["run_id"], run_id.as_str());
        // web-1 was in flight: it finished all its updates.
        assert_eq!(host_state(&r, "web-1").0, "succeeded", "{stdout}");
        assert_eq!(state_of(&r, "4 restart fail2ban", Some("web-1")), "succeeded");
        for h in ["web-2", "web-3"] {
            let (state, reason) = host_state(&r, h);
            assert_eq!(state, "not_started");
            assert!(reason.contains("Ctrl-C"), "{reason}");
        }
        assert_eq!(state_of(&r, "5 audit-archive", None), "not_run");
        assert_eq!(state_of(&r, "10 verification", None), "not_run");
        assert!(r["stopped"].as_str().unwrap_or("").contains("interrupted"), "{}", r["stopped"]);
        assert_eq!(w.jobs(1).await.len(), 0, "web-2 got no job after the interrupt");
    })
    .await
    .unwrap();
}
