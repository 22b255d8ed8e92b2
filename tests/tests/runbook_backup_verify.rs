//! `backup verify` against moto: retention, the newest automated snapshot (made three
//! days old by running moto under faketime, since moto cannot backdate one), the last
//! automated EBS snapshots and the size history.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test

use std::time::Duration;

use controller::runbooks::backup_verify as backup;
use controller::runbooks::report::{Outcome, Status};
use controller::runbooks::{self, Which};
use e2e::support::aws_seed as seed;
use e2e::support::moto::Moto;

const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn fresh_backups_kept_a_week_pass() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;
        for _ in 0..5 {
            seed::ebs_snapshot(&aws, &[("Purpose", "Automated")], true).await;
        }
        seed::ebs_snapshot(&aws, &[("Purpose", "Maintenance")], true).await;
        let web = seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-1")], true).await;
        let vols = seed::volumes_of(&aws, &web).await;
        assert_eq!(vols.len(), 1);
        seed::snapshot_of(&aws, &vols[0], &[("Purpose", "Automated")]).await;

        let report = runbooks::run(Which::BackupVerify, &seed::context(aws, "", None)).await;
        let text = report.render_text();
        assert_eq!(report.outcome(), Outcome::Passed, "{text}");
        for c in &report.checks {
            assert_eq!(c.status, Status::Ok, "{}: {}\n{text}", c.name, c.summary);
        }
        let retention = report.check(backup::RETENTION).unwrap();
        assert_eq!(retention.details, vec!["techhealth-database  retention 7 days  window 03:00-04:00".to_string()]);
        let newest = report.check(backup::NEWEST).unwrap();
        assert!(newest.summary.starts_with("rds:techhealth-database-") && newest.summary.contains(" available, "), "{}", newest.summary);
        let ebs = report.check(backup::EBS).unwrap();
        assert_eq!(ebs.summary, "last 5 of 6 EBS snapshots: all completed");
        assert_eq!(ebs.details.len(), 5);
        assert!(ebs.details.iter().all(|d| d.contains("  completed  ") && d.contains("  8 GiB  ")), "{:?}", ebs.details);
        let age = report.check(backup::EBS_AGE).unwrap();
        assert_eq!(age.summary, "0 of 1 fleet volumes without an automated snapshot in the last 1day 2h");
        assert!(age.details[0].starts_with(&format!("ok  {} (web-1 ({web}))  newest snap-", vols[0])), "{:?}", age.details);
        let sizes = report.check(backup::SIZES).unwrap();
        assert_eq!(sizes.summary, "1 snapshots, 20 GiB to 20 GiB (under a day apart: no trend yet)");
        assert_eq!(report.runbook, "backup-verify");
        assert!(runbooks::report_stem(&report).starts_with("backup-report-"));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn an_old_snapshot_short_retention_and_no_ebs_snapshots_are_reported() {
    tokio::time::timeout(LIMIT, async {
        // Everything moto creates is stamped three days ago.
        let moto = Moto::start_in_the_past("-3d");
        let aws = moto.clients().await;
        seed::database(&aws, "techhealth-database", 3, true, false).await;
        seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-1")], true).await;

        let report = runbooks::run(Which::BackupVerify, &seed::context(aws, "", None)).await;
        let text = report.render_text();
        assert_eq!(report.outcome(), Outcome::Failed, "{text}");
        let newest = report.check(backup::NEWEST).unwrap();
        assert_eq!(newest.status, Status::Fail, "{text}");
        assert!(newest.summary.ends_with(" old (limit 26 h)"), "{}", newest.summary);
        assert!(["2 d 23 h", "3 d 0 h"].iter().any(|age| newest.summary.contains(age)), "three days old: {}", newest.summary);
        let retention = report.check(backup::RETENTION).unwrap();
        assert_eq!(retention.status, Status::Warn);
        assert!(retention.details[0].ends_with("retention 3 days  window 03:00-04:00  (under 7 days)"), "{:?}", retention.details);
        let ebs = report.check(backup::EBS).unwrap();
        assert_eq!((ebs.status, ebs.summary.as_str()), (Status::Warn, "no EBS snapshots with the automated-backup tags"));
        let age = report.check(backup::EBS_AGE).unwrap();
        assert_eq!(age.status, Status::Fail);
        assert!(age.details.iter().all(|d| d.starts_with("FAIL") && d.contains("no automated snapshot")), "{:?}", age.details);
        assert!(report.action_items.iter().any(|a| a.starts_with("Fix rds automated snapshot: newest snapshot rds:techhealth-database-")), "{:?}", report.action_items);
        assert!(text.contains("[FAIL] rds automated snapshot"), "{text}");
    })
    .await
    .expect("test timed out");
}

/// Two automated snapshots of the same database made at different times (the instance
/// deleted with its automated backups kept, then made again later on moto's moved clock),
/// in both orders: the check judges the newest, wherever it is in the list.
#[tokio::test]
async fn the_newest_of_two_automated_snapshots_is_judged_whichever_was_made_first() {
    tokio::time::timeout(LIMIT, async {
        for (first, second) in [("-3d", "+0"), ("+0", "-3d")] {
            let (moto, clock) = Moto::start_with_clock(first);
            let aws = moto.clients().await;
            seed::database(&aws, "techhealth-database", 7, true, false).await;
            aws.rds
                .delete_db_instance()
                .db_instance_identifier("techhealth-database")
                .skip_final_snapshot(true)
                .delete_automated_backups(false)
                .send()
                .await
                .unwrap();
            clock.set(second);
            seed::database(&aws, "techhealth-database", 7, true, false).await;
            let snaps = controller::aws::rds::describe_db_snapshots(&aws.rds, "techhealth-database", "automated").await.unwrap();
            assert_eq!(snaps.len(), 2, "{snaps:?}");
            let ages: Vec<i64> = snaps.iter().map(|s| (chrono::Utc::now() - s.created.unwrap()).num_hours()).collect();
            assert!(ages.iter().any(|h| *h < 1) && ages.iter().any(|h| *h >= 70), "one fresh, one three days old: {ages:?}");
            let fresh = snaps.iter().find(|s| (chrono::Utc::now() - s.created.unwrap()).num_hours() < 1).unwrap().id.clone();

            let report = runbooks::run(Which::BackupVerify, &seed::context(aws, "", None)).await;
            let newest = report.check(backup::NEWEST).unwrap();
            assert_eq!(newest.status, Status::Ok, "made {first} then {second}: {}", report.render_text());
            assert!(newest.summary.contains(&fresh), "names the newest, {fresh}: {}", newest.summary);
        }
    })
    .await
    .expect("test timed out");
}
