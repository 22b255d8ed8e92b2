//! Benchmark: the maintenance archive against Percona's `pt-archiver` on the same data, on
//! a private MariaDB: 1,000,000 `audit_log` rows over a year, everything older than 90 days
//! moved to `audit_log_archive`, while a concurrent writer keeps inserting. Prints rows per
//! second for each and the writer's insert rate and latency (p99, p99.9, worst) during each.
//!
//! `cargo bench -p e2e --profile dev --bench archive`. Needs Debian's `percona-toolkit`
//! (scripts/setup installs it). Environment:
//! - `ARCHIVE_BENCH_ROWS`: rows per copy of the table (1,000,000).
//! - `ARCHIVE_BENCH_ROUNDS`: rounds of four passes (1), ours, pt, pt, ours, then pt, ours,
//!   ours, pt, and so on, after one unmeasured warm-up pass; each pass on its own fresh copy
//!   of the same data, so that neither tool always goes first.
//! - `ARCHIVE_BENCH_WAITS=1`: the server runs with the performance schema on, and each pass
//!   prints where the writer's inserts spent their time inside the server (stages and waits,
//!   sum and worst). It slows the server down; compare passes within one such run only.
//!
//! One pass's worst insert is a single sample: on a shared machine it moves with whatever
//! else runs there, so each pass also prints the machine's CPU and I/O pressure
//! (`/proc/pressure`: the share of the pass during which some task waited for CPU or disk).
#![allow(clippy::unwrap_used)] // a benchmark: a panic is the failure report

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::db::archive::{self, ArchiveSpec};
use controller::db::ident::Ident;
use e2e::support::mariadb::{seed_techhealth, MariaDb, Options};
use mysql_async::prelude::*;

/// The unmeasured first pass (ours), run on its own copy of the data.
const WARM_UP: &str = "warm-up";

/// How long to wait before a pass for the previous pass's purge to finish.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Duration>, mysql_async::Conn)>,
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
        (lat, c)
    });
    Writer { stop, task }
}

/// The writer's figures for one pass.
struct Inserts {
    n: usize,
    p99: Duration,
    p999: Duration,
    worst: Duration,
}

impl Writer {
    /// Stops the writer; its connection is returned open so that its server-side
    /// statistics can still be read.
    async fn finish(self) -> (Inserts, mysql_async::Conn) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut lat, conn) = self.task.await.unwrap();
        lat.sort_unstable();
        let at = |p: usize| lat.get((lat.len() * p / 1000).min(lat.len().saturating_sub(1))).copied().unwrap_or_default();
        (Inserts { n: lat.len(), p99: at(990), p999: at(999), worst: lat.last().copied().unwrap_or_default() }, conn)
    }
}

/// `/proc/pressure/<kind>`'s "some" total (microseconds), when the kernel has it.
fn pressure(kind: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/pressure/{kind}")).ok()?;
    text.lines().next()?.rsplit("total=").next()?.trim().parse().ok()
}

async fn count(url: &str, sql: &str) -> u64 {
    let mut c = mysql_async::Conn::from_url(url).await.unwrap();
    c.query_first(sql).await.unwrap().unwrap()
}

/// Waits until purge has caught up with the previous pass's deletes (or the seeding), so
/// that a pass does not pay for what went before it. (Dirty pages are not waited for: this
/// server leaves a few hundred kilobytes of them unflushed while idle, indefinitely.)
async fn settle(root: &mut mysql_async::Conn) {
    let start = Instant::now();
    while start.elapsed() < SETTLE_LIMIT {
        let history: Option<(String, u64)> =
            root.query_first("SHOW GLOBAL STATUS LIKE 'Innodb_history_list_length'").await.unwrap();
        if history.is_some_and(|(_, n)| n < 100) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("  (purge still behind after {SETTLE_LIMIT:?}; measuring anyway)");
}

/// Where the writer's inserts spent their time inside the server (performance schema).
async fn print_waits(root: &mut mysql_async::Conn, writer: &mysql_async::Conn) {
    let thread: u64 = root
        .exec_first("SELECT THREAD_ID FROM performance_schema.threads WHERE PROCESSLIST_ID = ?", (writer.id(),))
        .await
        .unwrap()
        .unwrap();
    for (table, what) in [("events_stages_summary_by_thread_by_event_name", "stages"), ("events_waits_summary_by_thread_by_event_name", "waits")] {
        let rows: Vec<(String, u64, f64, f64)> = root
            .exec(
                format!(
                    "SELECT EVENT_NAME, COUNT_STAR, SUM_TIMER_WAIT / 1e9, MAX_TIMER_WAIT / 1e9 FROM performance_schema.{table} \
                     WHERE THREAD_ID = ? AND COUNT_STAR > 0 AND EVENT_NAME <> 'idle' ORDER BY MAX_TIMER_WAIT DESC LIMIT 6"
                ),
                (thread,),
            )
            .await
            .unwrap();
        println!("  writer's {what} in the server (sum, worst):");
        for (event, n, sum, max) in rows {
            println!("    {event:<48} {n:>7} x  {sum:>8.0} ms  {max:>6.1} ms");
        }
    }
}

struct Pass {
    tool: &'static str,
    rows: u64,
    secs: f64,
    inserts: Inserts,
    cpu: Option<f64>,
    io: Option<f64>,
}

impl Pass {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.secs
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let rows = env("ARCHIVE_BENCH_ROWS", 1_000_000);
    let rounds = env("ARCHIVE_BENCH_ROUNDS", 1).max(1);
    let waits = std::env::var("ARCHIVE_BENCH_WAITS").is_ok_and(|v| v == "1");
    assert!(
        std::path::Path::new("/usr/bin/pt-archiver").is_file(),
        "pt-archiver not found: install Debian's percona-toolkit (scripts/setup does)"
    );
    let db = tokio::task::spawn_blocking(move || {
        if waits {
            let extra = [
                "--performance-schema=ON",
                "--performance-schema-instrument=stage/%=ON",
                "--performance-schema-instrument=wait/io/file/%=ON",
                "--performance-schema-instrument=wait/synch/%=ON",
                "--performance-schema-instrument=wait/lock/%=ON",
            ];
            MariaDb::start_with(&Options { extra: extra.iter().map(|s| s.to_string()).collect(), ..Options::default() })
        } else {
            MariaDb::start()
        }
    })
    .await
    .unwrap();
    let mut root = mysql_async::Conn::from_url(db.url("mysql").as_str()).await.unwrap();
    let settings: Vec<(String, String)> = root
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('version', 'innodb_autoinc_lock_mode', \
             'innodb_flush_log_at_trx_commit', 'innodb_buffer_pool_size')",
        )
        .await
        .unwrap();
    // A warm-up pass first, so that no measured pass is the fresh server's first move. A
    // precaution: no first-pass effect has been measured (the system tablespace, where the
    // undo logs live, grew by 0 MB in every pass, the first included).
    let order: Vec<&'static str> = std::iter::once(WARM_UP)
        .chain((0..rounds).flat_map(|r| {
            if r % 2 == 0 { ["ours", "pt-archiver", "pt-archiver", "ours"] } else { ["pt-archiver", "ours", "ours", "pt-archiver"] }
        }))
        .collect();
    for (i, &tool) in order.iter().enumerate() {
        let name = format!("bench_{i}");
        seed_techhealth(&mut root, &name, 1000, 0, rows, 365).await.unwrap();
        if tool == "pt-archiver" {
            root.query_drop(format!("CREATE TABLE {name}.audit_log_archive LIKE {name}.audit_log")).await.unwrap();
        }
    }
    let cutoff = (chrono::Utc::now() - chrono::Duration::days(90)).format("%Y-%m-%d %H:%M:%S").to_string();
    let old = count(&db.url("bench_0"), &format!("SELECT COUNT(*) FROM audit_log WHERE created_at < '{cutoff}'")).await;
    println!("archive bench: {rows} rows per pass, {old} older than {cutoff} to move, batches of 1000; server {settings:?}");
    println!("passes: {}", order.join(", "));

    let mut passes = Vec::new();
    for (i, &tool) in order.iter().enumerate() {
        settle(&mut root).await;
        let url = db.url(&format!("bench_{i}"));
        let (cpu0, io0) = (pressure("cpu"), pressure("io"));
        let w = writer(url.clone());
        let t = Instant::now();
        let moved = if tool == "ours" || tool == WARM_UP {
            let mut c = mysql_async::Conn::from_url(url.as_str()).await.unwrap();
            c.query_drop("SET time_zone = '+00:00'").await.unwrap();
            let spec = ArchiveSpec {
                live: Ident::new("table", "audit_log").unwrap(),
                archive: Ident::new("table", "audit_log_archive").unwrap(),
                time_column: Ident::new("column", "created_at").unwrap(),
                cutoff: cutoff.clone(),
                batch: 1000,
            };
            let start = archive::prepare(&mut c, &spec).await.unwrap();
            let (moved, batches) = archive::run(&mut c, &spec, &start, |_| true).await.unwrap();
            let secs = t.elapsed();
            let out = archive::verify(&mut c, &spec, &start, moved, batches).await.unwrap();
            assert!(out.verified, "{}", out.detail);
            (moved, secs)
        } else {
            // The options the issue names, on the same data.
            let st = tokio::process::Command::new("/usr/bin/pt-archiver")
                .arg("--source")
                .arg(format!("h=127.0.0.1,P={},u=root,D=bench_{i},t=audit_log,L=1", db.port))
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
            let secs = t.elapsed();
            assert!(st.success(), "pt-archiver failed: {st}");
            (count(&url, "SELECT COUNT(*) FROM audit_log_archive").await, secs)
        };
        let (inserts, wconn) = w.finish().await;
        let (rows, secs) = (moved.0, moved.1.as_secs_f64());
        let share = |a: Option<u64>, b: Option<u64>| Some((b? - a?) as f64 / 1e4 / secs);
        let pass = Pass { tool, rows, secs, inserts, cpu: share(cpu0, pressure("cpu")), io: share(io0, pressure("io")) };
        let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}%"));
        println!(
            "{i}. {tool:<11} {rows} rows in {secs:.1} s = {:>6.0} rows/s; writer {} inserts = {:.0}/s, p99 {:.1} ms, p99.9 {:.1} ms, worst {:.1} ms; \
             pressure cpu {} io {}",
            pass.rate(),
            pass.inserts.n,
            pass.inserts.n as f64 / secs,
            ms(pass.inserts.p99),
            ms(pass.inserts.p999),
            ms(pass.inserts.worst),
            pct(pass.cpu),
            pct(pass.io),
        );
        if tool == "pt-archiver" {
            let left = count(&url, &format!("SELECT COUNT(*) FROM audit_log WHERE created_at < '{cutoff}'")).await;
            if left > 0 {
                println!("   (pt-archiver left {left} old rows behind: it never archives the newest matching row by default)");
            }
        }
        if waits {
            print_waits(&mut root, &wconn).await;
        }
        drop(wconn);
        // Disk space: four copies of the table would otherwise stay until the end.
        root.query_drop(format!("DROP DATABASE bench_{i}")).await.unwrap();
        passes.push(pass);
    }

    println!("\n| pass | tool | rows/s | writer inserts/s | p99 insert | p99.9 insert | worst insert | cpu / io pressure |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, p) in passes.iter().enumerate().skip(1) {
        let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}%"));
        println!(
            "| {i} | {} | {:.0} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {} / {} |",
            p.tool,
            p.rate(),
            p.inserts.n as f64 / p.secs,
            ms(p.inserts.p99),
            ms(p.inserts.p999),
            ms(p.inserts.worst),
            pct(p.cpu),
            pct(p.io)
        );
    }
    let of = |tool: &str, f: fn(&Pass) -> f64| -> Vec<f64> { passes.iter().filter(|p| p.tool == tool).map(f).collect() };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
    };
    let rate = |tool: &str| median(of(tool, Pass::rate));
    let worst = |tool: &str| of(tool, |p| ms(p.inserts.worst)).into_iter().fold(0.0, f64::max);
    let p999 = |tool: &str| median(of(tool, |p| ms(p.inserts.p999)));
    println!(
        "\nours/pt-archiver: median throughput {:.2}x; worst insert over all passes {:.1} vs {:.1} ms ({:.2}x); median p99.9 {:.1} vs {:.1} ms",
        rate("ours") / rate("pt-archiver"),
        worst("ours"),
        worst("pt-archiver"),
        worst("ours") / worst("pt-archiver"),
        p999("ours"),
        p999("pt-archiver"),
    );
}
