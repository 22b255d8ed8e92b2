//! The snapshot adapters against moto: an EBS snapshot per volume with the run's tags,
//! never a second one for the same run and volume; an RDS snapshot named from the run,
//! taken once even when asked twice; waits that end ready, failed or at their deadline.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::time::Duration;

use controller::aws::snapshots::{self, WaitOutcome};
use e2e::support::aws_seed as seed;
use e2e::support::moto::Moto;

const LIMIT: Duration = Duration::from_secs(120);

fn run_tags(run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("Purpose".to_string(), "Maintenance".to_string()),
        ("Date".to_string(), "20261206".to_string()),
        ("RunId".to_string(), run.to_string()),
    ])
}

#[tokio::test]
async fn ebs_snapshot_per_volume_is_tagged_and_not_taken_twice_for_one_run() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let c = moto.clients().await;
        let id = seed::instance(&c, &[("Project", "TechHealth")], true).await;
        let inst = controller::aws::ec2::describe_instances(&c.ec2, &BTreeMap::new(), &["running"]).await.unwrap();
        let vol = inst.iter().find(|i| i.id == id).unwrap().volume_ids[0].clone();

        let (snap, created) =
            snapshots::ensure_ebs_snapshot(&c.ec2, &vol, "Pre-maintenance snapshot", &run_tags("r-1")).await.unwrap();
        assert!(created);
        let (again, created_again) =
            snapshots::ensure_ebs_snapshot(&c.ec2, &vol, "Pre-maintenance snapshot", &run_tags("r-1")).await.unwrap();
        assert_eq!((again.as_str(), created_again), (snap.as_str(), false), "a resumed run reuses its snapshot");
        let (other, created_other) =
            snapshots::ensure_ebs_snapshot(&c.ec2, &vol, "Pre-maintenance snapshot", &run_tags("r-2")).await.unwrap();
        assert!(created_other && other != snap, "another run takes its own");

        let of_run = snapshots::run_snapshots(&c.ec2, "r-1").await.unwrap();
        assert_eq!(of_run.len(), 1);
        assert_eq!(of_run[0].volume_id.as_deref(), Some(vol.as_str()));
        let tagged = controller::aws::ec2::describe_snapshots_tagged(
            &c.ec2,
            &BTreeMap::from([("Purpose".to_string(), "Maintenance".to_string())]),
        )
        .await
        .unwrap();
        assert_eq!(tagged.len(), 2);

        let done = snapshots::wait_ebs_snapshots(&c.ec2, std::slice::from_ref(&snap), Duration::from_secs(30), Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(done, WaitOutcome::Ready);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn waiting_on_a_snapshot_that_does_not_exist_fails_naming_it() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let c = moto.clients().await;
        let err = snapshots::wait_ebs_snapshots(&c.ec2, &["snap-0123456789abcdef0".to_string()], Duration::from_secs(2), Duration::from_millis(200)).await;
        // moto answers an unknown id with an error (as EC2 does): the call's failure names it.
        let text = match err {
            Err(e) => e.to_string(),
            Ok(outcome) => format!("{outcome:?}"),
        };
        assert!(text.contains("snap-0123456789abcdef0") || text.contains("InvalidSnapshot"), "{text}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn rds_snapshot_named_from_the_run_is_taken_once_and_waited_on() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let c = moto.clients().await;
        seed::database(&c, "techhealth-database", 7, true, false).await;
        let name = "techhealth-maintenance-20261206-020000";
        assert!(snapshots::ensure_db_snapshot(&c.rds, "techhealth-database", name, &run_tags("r-1")).await.unwrap());
        assert!(!snapshots::ensure_db_snapshot(&c.rds, "techhealth-database", name, &run_tags("r-1")).await.unwrap());
        let manual = controller::aws::rds::describe_db_snapshots(&c.rds, "techhealth-database", "manual").await.unwrap();
        assert_eq!(manual.iter().filter(|s| s.id == name).count(), 1);
        let w = snapshots::wait_db_snapshot(&c.rds, name, Duration::from_secs(30), Duration::from_millis(200)).await.unwrap();
        assert_eq!(w, WaitOutcome::Ready);
        let missing =
            snapshots::wait_db_snapshot(&c.rds, "no-such-snapshot", Duration::from_secs(2), Duration::from_millis(200)).await;
        match missing {
            Ok(WaitOutcome::Failed(id, _)) => assert_eq!(id, "no-such-snapshot"),
            Err(e) => assert!(e.to_string().contains("DBSnapshotNotFound") || e.is_not_found(), "{e}"),
            other => panic!("a missing snapshot must not be ready: {other:?}"),
        }
        let err = snapshots::ensure_db_snapshot(&c.rds, "no-such-db", "x-1", &run_tags("r-1")).await.unwrap_err();
        assert!(err.to_string().contains("CreateDBSnapshot"), "{err}");
    })
    .await
    .unwrap();
}
