//! Moving old rows from a live table to its archive table without ever losing or
//! duplicating one, the fix for the seed's `INSERT ... SELECT` then `DELETE` with `NOW()`
//! evaluated twice (rows that crossed the line between the two were deleted unarchived).
//!
//! - One cutoff, fixed by the caller at the start of a run and kept in its journal, so a
//!   resumed run moves exactly the same set.
//! - Batches by primary key; each batch is locked, copied and deleted in one transaction
//!   (READ COMMITTED, so no gap locks stall a concurrent writer's inserts), and committed
//!   only when the copied and the deleted counts agree with the rows locked.
//! - Batches never reach past the newest key that was old when the run started, so the
//!   move never scans or locks the young end of the table, where the application inserts.
//! - Safe to run again after a crash at any point: a batch is all or nothing, and the next
//!   run simply finds the rows still older than the cutoff.
//! - Verified at the end: nothing older than the cutoff left, no key in both tables, and
//!   the archive grew by exactly what left the live table.

use mysql_async::prelude::*;
use mysql_async::{Conn, IsolationLevel, TxOpts, Value};
use serde::{Deserialize, Serialize};

use super::ident::Ident;
use super::DbError;

/// What to move.
#[derive(Debug, Clone)]
pub struct ArchiveSpec {
    pub live: Ident,
    pub archive: Ident,
    /// The row's time column (`created_at`).
    pub time_column: Ident,
    /// Rows with a time strictly before this (UTC, `YYYY-MM-DD HH:MM:SS`) are moved.
    pub cutoff: String,
    /// Rows per transaction.
    pub batch: u32,
}

/// Counts taken when the move first started; kept in the run's journal so that the
/// verification of a resumed run compares against the state before any row moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveStart {
    pub primary_key: String,
    pub old_rows: u64,
    pub archive_rows: u64,
    /// The archive table was created by this run (`CREATE TABLE ... LIKE`).
    pub created_archive: bool,
}

/// What a move did and what the verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveOutcome {
    /// Rows moved by this call (a resumed run counts only its own).
    pub moved: u64,
    pub batches: u64,
    pub old_rows_left: u64,
    pub archive_rows: u64,
    /// Keys present in both tables (must be 0).
    pub in_both: u64,
    /// The archive grew by exactly the old rows that left the live table.
    pub verified: bool,
    pub detail: String,
}

async fn count(conn: &mut Conn, sql: String, params: impl Into<mysql_async::Params> + Send) -> Result<u64, DbError> {
    let n: Option<u64> = conn.exec_first(sql.as_str(), params).await.map_err(DbError::query(sql.clone()))?;
    Ok(n.unwrap_or(0))
}

/// The single-column primary key of `table`, refused otherwise (batches need one).
async fn primary_key(conn: &mut Conn, table: &Ident) -> Result<Ident, DbError> {
    let cols: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
            (table.name(),),
        )
        .await
        .map_err(DbError::query(format!("primary key of {table}")))?;
    match cols.as_slice() {
        [one] => Ok(Ident::new("primary key column", one)?),
        [] => Err(DbError::Invalid(format!("table {table} has no primary key (or does not exist); archiving needs one"))),
        _ => Err(DbError::Invalid(format!("table {table} has a composite primary key ({}); archiving needs a single column", cols.join(", ")))),
    }
}

async fn columns(conn: &mut Conn, table: &Ident) -> Result<Vec<(String, String)>, DbError> {
    conn.exec(
        "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        (table.name(),),
    )
    .await
    .map_err(DbError::query(format!("columns of {table}")))
}

/// Rows the move would take now (for `--dry-run`).
pub async fn old_rows(conn: &mut Conn, spec: &ArchiveSpec) -> Result<u64, DbError> {
    count(conn, format!("SELECT COUNT(*) FROM {} WHERE {} < ?", spec.live, spec.time_column), (spec.cutoff.as_str(),)).await
}

/// Makes sure the archive table exists with the live table's columns, and takes the
/// starting counts.
pub async fn prepare(conn: &mut Conn, spec: &ArchiveSpec) -> Result<ArchiveStart, DbError> {
    let pk = primary_key(conn, &spec.live).await?;
    let live_cols = columns(conn, &spec.live).await?;
    let mut created_archive = false;
    let mut archive_cols = columns(conn, &spec.archive).await?;
    if archive_cols.is_empty() {
        let sql = format!("CREATE TABLE IF NOT EXISTS {} LIKE {}", spec.archive, spec.live);
        conn.query_drop(sql.as_str()).await.map_err(DbError::query(sql.clone()))?;
        created_archive = true;
        archive_cols = columns(conn, &spec.archive).await?;
    }
    if archive_cols != live_cols {
        return Err(DbError::Invalid(format!(
            "archive table {} does not have the columns of {} in the same order and types; refusing to copy rows into it",
            spec.archive, spec.live
        )));
    }
    let old_rows = old_rows(conn, spec).await?;
    let archive_rows = count(conn, format!("SELECT COUNT(*) FROM {}", spec.archive), ()).await?;
    Ok(ArchiveStart { primary_key: pk.name().to_string(), old_rows, archive_rows, created_archive })
}

/// Moves every row older than the cutoff, batch by batch. `on_batch(moved_so_far)` is
/// called after each commit (progress, journal); when it returns false the move stops
/// there (an operator's cancel), between two whole batches.
pub async fn run(
    conn: &mut Conn,
    spec: &ArchiveSpec,
    start: &ArchiveStart,
    mut on_batch: impl FnMut(u64) -> bool + Send,
) -> Result<(u64, u64), DbError> {
    let pk = Ident::new("primary key column", &start.primary_key)?;
    let (live, archive, t) = (&spec.live, &spec.archive, &spec.time_column);
    // Without this bound the last batches' `FOR UPDATE` scan walked every row younger than
    // the newest old one (a quarter of a million in the benchmark, 0.5 to 1.2 s), locking
    // and releasing each up to the page the application was inserting into. A plain read,
    // no lock: rows written from now on are younger than the cutoff (it lies in the past),
    // and one written with an older time anyway is left live, which `verify` reports.
    let newest = format!("SELECT MAX({pk}) FROM {live} WHERE {t} < ?");
    let newest: Option<Value> =
        conn.exec_first(newest.as_str(), (spec.cutoff.as_str(),)).await.map_err(DbError::query(newest.clone()))?;
    let Some(newest) = newest.filter(|v| *v != Value::NULL) else {
        return Ok((0, 0));
    };
    let select_first = format!("SELECT {pk} FROM {live} WHERE {pk} <= ? AND {t} < ? ORDER BY {pk} LIMIT ? FOR UPDATE");
    let select_next =
        format!("SELECT {pk} FROM {live} WHERE {pk} > ? AND {pk} <= ? AND {t} < ? ORDER BY {pk} LIMIT ? FOR UPDATE");
    let copy = format!("INSERT INTO {archive} SELECT * FROM {live} WHERE {pk} >= ? AND {pk} <= ? AND {t} < ?");
    let delete = format!("DELETE FROM {live} WHERE {pk} >= ? AND {pk} <= ? AND {t} < ?");
    let mut last: Option<Value> = None;
    let (mut moved, mut batches) = (0u64, 0u64);
    loop {
        let mut opts = TxOpts::default();
        opts.with_isolation_level(IsolationLevel::ReadCommitted);
        let mut tx = conn.start_transaction(opts).await.map_err(DbError::query("start a batch transaction"))?;
        let keys: Vec<Value> = match &last {
            None => tx.exec(select_first.as_str(), (newest.clone(), spec.cutoff.as_str(), spec.batch)).await,
            Some(after) => tx.exec(select_next.as_str(), (after.clone(), newest.clone(), spec.cutoff.as_str(), spec.batch)).await,
        }
        .map_err(DbError::query(format!("select a batch of {live}")))?;
        let (Some(lo), Some(hi)) = (keys.first().cloned(), keys.last().cloned()) else {
            tx.rollback().await.map_err(DbError::query("end the last batch"))?;
            break;
        };
        tx.exec_drop(copy.as_str(), (lo.clone(), hi.clone(), spec.cutoff.as_str()))
            .await
            .map_err(DbError::query(format!("copy a batch into {archive}")))?;
        let copied = tx.affected_rows();
        tx.exec_drop(delete.as_str(), (lo, hi.clone(), spec.cutoff.as_str()))
            .await
            .map_err(DbError::query(format!("delete a batch from {live}")))?;
        let deleted = tx.affected_rows();
        let locked = keys.len() as u64;
        if copied != locked || deleted != locked {
            tx.rollback().await.map_err(DbError::query("roll back a mismatched batch"))?;
            return Err(DbError::Invalid(format!(
                "batch ending at key {hi:?}: {locked} rows locked, {copied} copied, {deleted} deleted; rolled back, nothing lost"
            )));
        }
        tx.commit().await.map_err(DbError::query("commit a batch"))?;
        moved += locked;
        batches += 1;
        last = Some(hi);
        if !on_batch(moved) {
            break;
        }
    }
    Ok((moved, batches))
}

/// Checks the outcome against the counts taken when the move first started.
pub async fn verify(conn: &mut Conn, spec: &ArchiveSpec, start: &ArchiveStart, moved: u64, batches: u64) -> Result<ArchiveOutcome, DbError> {
    let pk = Ident::new("primary key column", &start.primary_key)?;
    let old_rows_left = old_rows(conn, spec).await?;
    let archive_rows = count(conn, format!("SELECT COUNT(*) FROM {}", spec.archive), ()).await?;
    let in_both = count(
        conn,
        format!("SELECT COUNT(*) FROM {} l JOIN {} a ON a.{pk} = l.{pk}", spec.live, spec.archive),
        (),
    )
    .await?;
    let grew = archive_rows.saturating_sub(start.archive_rows);
    let left = start.old_rows.saturating_sub(old_rows_left);
    let verified = old_rows_left == 0 && in_both == 0 && grew == left && archive_rows >= start.archive_rows;
    let detail = if verified {
        format!("{left} rows older than {} moved to {} ({moved} by this run, {batches} batches); none left, none in both", spec.cutoff, spec.archive)
    } else {
        format!(
            "verification failed: {old_rows_left} rows older than the cutoff still in {}, {in_both} keys in both tables, \
             archive grew by {grew} while {left} old rows left the live table",
            spec.live
        )
    };
    Ok(ArchiveOutcome { moved, batches, old_rows_left, archive_rows, in_both, verified, detail })
}
