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
