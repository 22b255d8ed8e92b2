//! The database upkeep of weekly maintenance against a real MariaDB: archiving moves every
//! old row exactly once while a writer keeps inserting, also when the run is killed in the
//! middle and started again; sessions are purged in batches; dry-run counts match.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::db::archive::{self, ArchiveSpec};
use controller::db::ident::Ident;
use controller::db::upkeep;
use e2e::support::mariadb::{seed_techhealth, MariaDb};
use mysql_async::prelude::*;

const AUDIT_ROWS: u64 = 200_000;

async fn conn(db: &MariaDb) -> mysql_async::Conn {
    let mut c = mysql_async::Conn::from_url(db.url("techhealth").as_str()).await.unwrap();
    c.query_drop("SET time_zone = '+00:00'").await.unwrap();
    c
}

fn days_ago(days: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days)).format("%Y-%m-%d %H:%M:%S").to_string()
}

fn spec(cutoff: &str) -> ArchiveSpec {
    ArchiveSpec {
        live: Ident::new("table", "audit_log").unwrap(),
        archive: Ident::new("table", "audit_log_archive").unwrap(),
        time_column: Ident::new("column", "created_at").unwrap(),
        cutoff: cutoff.to_string(),
        batch: 1000,
    }
}

async fn seeded() -> MariaDb {
    let db = tokio::task::spawn_blocking(MariaDb::start).await.unwrap();
    let mut c = mysql_async::Conn::from_url(db.url("mysql").as_str()).await.unwrap();
    seed_techhealth(&mut c, "techhealth", 1000, 20_000, AUDIT_ROWS, 365).await.unwrap();
    db
}

/// Inserts fresh audit rows until stopped; returns (rows inserted, worst insert latency).
fn writer(db: &MariaDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, Duration)> {
    let url = db.url("techhealth");
    tokio::spawn(async move {
        let mut c = mysql_async::Conn::from_url(url.as_str()).await.unwrap();
        let (mut n, mut worst) = (0u64, Duration::ZERO);
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            c.exec_drop(
                "INSERT INTO audit_log (user_id, action, detail, created_at) VALUES (?, 'login', 'writer', UTC_TIMESTAMP())",
                (n % 1000 + 1,),
            )
            .await
            .unwrap();
            worst = worst.max(t.elapsed());
            n += 1;
        }
        (n, worst)
    })
}

/// Every key is in exactly one of the two tables, the total is what was ever written,
/// and nothing older than the cutoff is left live.
async fn assert_exactly_once(c: &mut mysql_async::Conn, cutoff: &str, written: u64) {
    let live: u64 = c.query_first("SELECT COUNT(*) FROM audit_log").await.unwrap().unwrap();
    let arch: u64 = c.query_first("SELECT COUNT(*) FROM audit_log_archive").await.unwrap().unwrap();
    let distinct: u64 = c
        .query_first("SELECT COUNT(*) FROM (SELECT id FROM audit_log UNION SELECT id FROM audit_log_archive) u")
        .await
        .unwrap()
        .unwrap();
    let both: u64 =
        c.query_first("SELECT COUNT(*) FROM audit_log l JOIN audit_log_archive a USING (id)").await.unwrap().unwrap();
    let old_live: u64 = c.exec_first("SELECT COUNT(*) FROM audit_log WHERE created_at < ?", (cutoff,)).await.unwrap().unwrap();
    let young_archived: u64 =
        c.exec_first("SELECT COUNT(*) FROM audit_log_archive WHERE created_at >= ?", (cutoff,)).await.unwrap().unwrap();
    assert_eq!(both, 0, "no row in both tables");
    assert_eq!(live + arch, written, "every row written is in one of the tables (live {live}, archive {arch})");
    assert_eq!(distinct, written, "and exactly once");
    assert_eq!(old_live, 0, "no live row older than the cutoff");
    assert_eq!(young_archived, 0, "no row at or after the cutoff was archived");
}

#[tokio::test]
async fn archive_moves_every_old_row_exactly_once_while_a_writer_inserts() {
    let db = seeded().await;
    tokio::time::timeout(Duration::from_secs(240), async {
        let cutoff = days_ago(90);
        let mut c = conn(&db).await;
        let expected = archive::old_rows(&mut c, &spec(&cutoff)).await.unwrap();
        assert!(expected > 100_000, "a year of rows, 90 days kept: {expected}");
        let stop = Arc::new(AtomicBool::new(false));
        let w = writer(&db, stop.clone());
        let start = archive::prepare(&mut c, &spec(&cutoff)).await.unwrap();
        assert!(start.created_archive);
        assert_eq!(start.old_rows, expected);
        let (moved, batches) = archive::run(&mut c, &spec(&cutoff), &start, |_| true).await.unwrap();
        stop.store(true, Ordering::SeqCst);
        let (inserted, worst) = w.await.unwrap();
        assert!(inserted > 0, "the writer kept inserting during the move");
        let out = archive::verify(&mut c, &spec(&cutoff), &start, moved, batches).await.unwrap();
        assert!(out.verified, "{}", out.detail);
        assert_eq!(moved, expected);
        assert_eq!(batches, expected.div_ceil(1000));
        assert_exactly_once(&mut c, &cutoff, AUDIT_ROWS + inserted).await;
        eprintln!("moved {moved} rows in {batches} batches; writer inserted {inserted}, worst insert {worst:?}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn archive_killed_mid_run_and_run_again_still_moves_each_row_exactly_once() {
    let db = seeded().await;
    tokio::time::timeout(Duration::from_secs(240), async {
        let cutoff = days_ago(90);
        let stop = Arc::new(AtomicBool::new(false));
        let w = writer(&db, stop.clone());
        let mut c = conn(&db).await;
        let start = archive::prepare(&mut c, &spec(&cutoff)).await.unwrap();
        // The first run dies after some batches: its task is dropped mid-transaction,
        // the connection goes away, and the server rolls the open batch back.
        let batches_done = Arc::new(AtomicU64::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (start, cutoff, batches_done) = (start.clone(), cutoff.clone(), batches_done.clone());
            let mut tx = Some(tx);
            tokio::spawn(async move {
                archive::run(&mut c, &spec(&cutoff), &start, move |_| {
                    if batches_done.fetch_add(1, Ordering::SeqCst) + 1 == 20 {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    true
                })
                .await
            })
        };
        rx.await.unwrap();
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        let mut c = conn(&db).await;
        let partial: u64 = c.query_first("SELECT COUNT(*) FROM audit_log_archive").await.unwrap().unwrap();
        assert!(partial >= 20_000 && partial < start.old_rows, "killed part-way: {partial} of {}", start.old_rows);
        // The run again, with the cutoff and starting counts from the journal.
        let (moved, batches) = archive::run(&mut c, &spec(&cutoff), &start, |_| true).await.unwrap();
        stop.store(true, Ordering::SeqCst);
        let (inserted, _) = w.await.unwrap();
        let out = archive::verify(&mut c, &spec(&cutoff), &start, moved, batches).await.unwrap();
        assert!(out.verified, "{}", out.detail);
        assert_eq!(partial + moved, start.old_rows);
        assert_exactly_once(&mut c, &cutoff, AUDIT_ROWS + inserted).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_archive_table_with_other_columns_is_refused_before_any_row_moves() {
    let db = seeded().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut c = conn(&db).await;
        c.query_drop("CREATE TABLE audit_log_archive (id BIGINT UNSIGNED PRIMARY KEY, created_at DATETIME)").await.unwrap();
        let err = archive::prepare(&mut c, &spec(&days_ago(90))).await.unwrap_err().to_string();
        assert!(err.contains("does not have the columns"), "{err}");
        let live: u64 = c.query_first("SELECT COUNT(*) FROM audit_log").await.unwrap().unwrap();
        assert_eq!(live, AUDIT_ROWS);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn sessions_older_than_the_cutoff_are_purged_in_batches_and_dry_run_counts_match() {
    let db = seeded().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut c = conn(&db).await;
        let (t, col) = (Ident::new("table", "sessions").unwrap(), Ident::new("column", "created_at").unwrap());
        let cutoff = days_ago(30);
        let would = upkeep::purge_count(&mut c, &t, &col, &cutoff).await.unwrap();
        assert!(would > 15_000, "{would}");
        let before: u64 = c.query_first("SELECT COUNT(*) FROM sessions").await.unwrap().unwrap();
        let deleted = upkeep::purge(&mut c, &t, &col, &cutoff, 500).await.unwrap();
        assert_eq!(deleted, would);
        let after: u64 = c.query_first("SELECT COUNT(*) FROM sessions").await.unwrap().unwrap();
        assert_eq!(after, before - deleted);
        assert_eq!(upkeep::purge_count(&mut c, &t, &col, &cutoff).await.unwrap(), 0);

        let tables = [Ident::new("table", "sessions").unwrap(), Ident::new("table", "audit_log").unwrap()];
        let ops = upkeep::table_op(&mut c, "optimize", &tables).await.unwrap();
        assert_eq!(ops.len(), 2);
        assert!(ops.iter().all(|o| o.ok), "{ops:?}");
        let ops = upkeep::table_op(&mut c, "analyze", &tables).await.unwrap();
        assert!(ops.iter().all(|o| o.ok), "{ops:?}");
        let sizes = upkeep::sizes(&mut c).await.unwrap();
        let audit = sizes.iter().find(|s| s.table == "audit_log").unwrap();
        assert!(audit.size_bytes > 1_000_000, "{audit:?}");
    })
    .await
    .unwrap();
}
