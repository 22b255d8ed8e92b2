//! Benchmark: the maintenance archive against Percona's `pt-archiver` on the same data, on
//! a private MariaDB: 1,000,000 `audit_log` rows over a year, everything older than 90 days
//! moved to `audit_log_archive`, while a concurrent writer keeps inserting. Prints rows per
//! second for each and the writer's worst and 99th-percentile insert latency during each.
//!
//! `cargo bench -p e2e --bench archive` (ARCHIVE_BENCH_ROWS to change the row count).
//! Needs Debian's `percona-toolkit` (scripts/setup installs it).
#![allow(clippy::unwrap_used)] // a benchmark: a panic is the failure report

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::db::archive::{self, ArchiveSpec};
use controller::db::ident::Ident;
use e2e::support::mariadb::{seed_techhealth, MariaDb};
use mysql_async::prelude::*;

struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Duration>>,
}

fn writer(url: String) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut c = mysql_async::Conn::from_url(url.as_str()).await.unwrap();
        let mut lat = Vec::new();
        while !s.load(Ordering::SeqCst) {
            let t = Instant::now();
            c.query_drop("INSERT INTO audit_log (user_id, action, detail, created_at) VALUES (1, 'login', 'writer', UTC_TIMESTAMP())")
                .await
                .unwrap();
            lat.push(t.elapsed());
        }
        lat
    });
    Writer { stop, task }
}

impl Writer {
    async fn finish(self) -> (usize, Duration, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let mut lat = self.task.await.unwrap();
        lat.sort_unstable();
        let worst = lat.last().copied().unwrap_or_default();
        let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or_default();
        (lat.len(), worst, p99)
    }
}

async fn count(url: &str, sql: &str) -> u64 {
    let mut c = mysql_async::Conn::from_url(url).await.unwrap();
    c.query_first(sql).await.unwrap().unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: u64 = std::env::var("ARCHIVE_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    assert!(
        std::path::Path::new("/usr/bin/pt-archiver").is_file(),
        "pt-archiver not found: install Debian's percona-toolkit (scripts/setup does)"
    );
    let db = tokio::task::spawn_blocking(MariaDb::start).await.unwrap();
    let mut root = mysql_async::Conn::from_url(db.url("mysql").as_str()).await.unwrap();
    for name in ["bench_ours", "bench_pt"] {
        seed_techhealth(&mut root, name, 1000, 0, rows, 365).await.unwrap();
    }
    root.query_drop("CREATE TABLE bench_pt.audit_log_archive LIKE bench_pt.audit_log").await.unwrap();
    let cutoff = (chrono::Utc::now() - chrono::Duration::days(90)).format("%Y-%m-%d %H:%M:%S").to_string();
    let old = count(&db.url("bench_ours"), &format!("SELECT COUNT(*) FROM audit_log WHERE created_at < '{cutoff}'")).await;
    println!("archive bench: {rows} rows, {old} older than {cutoff} to move, batches of 1000");

    // Ours.
    let url = db.url("bench_ours");
    let mut c = mysql_async::Conn::from_url(url.as_str()).await.unwrap();
    c.query_drop("SET time_zone = '+00:00'").await.unwrap();
    let spec = ArchiveSpec {
        live: Ident::new("table", "audit_log").unwrap(),
        archive: Ident::new("table", "audit_log_archive").unwrap(),
        time_column: Ident::new("column", "created_at").unwrap(),
        cutoff: cutoff.clone(),
        batch: 1000,
    };
    let w = writer(url.clone());
    let t = Instant::now();
    let start = archive::prepare(&mut c, &spec).await.unwrap();
    let (moved, batches) = archive::run(&mut c, &spec, &start, |_| true).await.unwrap();
    let ours = t.elapsed();
    let (n_ours, worst_ours, p99_ours) = w.finish().await;
    let out = archive::verify(&mut c, &spec, &start, moved, batches).await.unwrap();
    assert!(out.verified, "{}", out.detail);

    // pt-archiver, the options the issue names, on the same data.
    let w = writer(db.url("bench_pt"));
    let t = Instant::now();
    let st = tokio::process::Command::new("/usr/bin/pt-archiver")
        .arg("--source")
        .arg(format!("h=127.0.0.1,P={},u=root,D=bench_pt,t=audit_log,L=1", db.port))
        .arg("--dest")
        .arg("t=audit_log_archive")
        .arg("--where")
        .arg(format!("created_at < '{cutoff}'"))
        .args(["--limit", "1000", "--commit-each", "--bulk-insert", "--bulk-delete", "--no-check-charset"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .unwrap();
    let pt = t.elapsed();
    let (n_pt, worst_pt, p99_pt) = w.finish().await;
    assert!(st.success(), "pt-archiver failed: {st}");
    let pt_moved = count(&db.url("bench_pt"), "SELECT COUNT(*) FROM audit_log_archive").await;
    let pt_left =
        count(&db.url("bench_pt"), &format!("SELECT COUNT(*) FROM audit_log WHERE created_at < '{cutoff}'")).await;

    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "ours:        {moved} rows in {:.2} s = {:>9.0} rows/s; writer {n_ours} inserts, worst {:.1} ms, p99 {:.2} ms",
        ours.as_secs_f64(),
        rate(moved, ours),
        worst_ours.as_secs_f64() * 1e3,
        p99_ours.as_secs_f64() * 1e3
    );
    println!(
        "pt-archiver: {pt_moved} rows in {:.2} s = {:>9.0} rows/s; writer {n_pt} inserts, worst {:.1} ms, p99 {:.2} ms ({pt_left} old rows left)",
        pt.as_secs_f64(),
        rate(pt_moved, pt),
        worst_pt.as_secs_f64() * 1e3,
        p99_pt.as_secs_f64() * 1e3
    );
    println!(
        "ratio ours/pt-archiver: throughput {:.2}x, worst insert {:.2}x",
        rate(moved, ours) / rate(pt_moved, pt),
        worst_ours.as_secs_f64() / worst_pt.as_secs_f64()
    );
}
