//! The weekly database upkeep around the archive: OPTIMIZE and ANALYZE with each table's
//! duration and the server's own verdict, the size and free-space report, and purging old
//! sessions in bounded batches. Table names come from config as validated identifiers.

use std::time::Instant;

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::Serialize;

use super::ident::Ident;
use super::DbError;

/// One table's OPTIMIZE or ANALYZE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableOp {
    pub table: String,
    pub op: String,
    pub duration_ms: u64,
    /// The server said `status` (not `error`) in its last message.
    pub ok: bool,
    /// The server's messages, joined (InnoDB's "doing recreate + analyze instead" note too).
    pub messages: String,
}

/// Runs `OPTIMIZE TABLE` or `ANALYZE TABLE` on each table, one at a time.
pub async fn table_op(conn: &mut Conn, op: &str, tables: &[Ident]) -> Result<Vec<TableOp>, DbError> {
    let verb = match op {
        "optimize" => "OPTIMIZE TABLE",
        "analyze" => "ANALYZE TABLE",
        other => return Err(DbError::Invalid(format!("unknown table operation {other:?}"))),
    };
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let sql = format!("{verb} {t}");
        let started = Instant::now();
        let rows: Vec<(String, String, String, String)> =
            conn.query(sql.as_str()).await.map_err(DbError::query(sql.clone()))?;
        let ok = rows.last().is_some_and(|r| r.2.eq_ignore_ascii_case("status") && r.3.eq_ignore_ascii_case("OK"));
        let messages = rows.iter().map(|r| format!("{}: {}", r.2, r.3)).collect::<Vec<_>>().join("; ");
        out.push(TableOp {
            table: t.name().to_string(),
            op: op.to_string(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ok,
            messages,
        });
    }
    Ok(out)
}

/// One table's size, as the seed's fragmentation query reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableSize {
    pub table: String,
    pub size_bytes: u64,
    pub free_bytes: u64,
    pub rows_estimate: u64,
}

/// A row of information_schema.TABLES: name, data, index, free, rows.
type TablesRow = (String, Option<u64>, Option<u64>, Option<u64>, Option<u64>);

/// Size and free space of every table of the connected database.
pub async fn sizes(conn: &mut Conn) -> Result<Vec<TableSize>, DbError> {
    let rows: Vec<TablesRow> = conn
        .query(
            "SELECT TABLE_NAME, DATA_LENGTH, INDEX_LENGTH, DATA_FREE, TABLE_ROWS FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME",
        )
        .await
        .map_err(DbError::query("table sizes"))?;
    Ok(rows
        .into_iter()
        .map(|(table, data, index, free, n)| TableSize {
            table,
            size_bytes: data.unwrap_or(0) + index.unwrap_or(0),
            free_bytes: free.unwrap_or(0),
            rows_estimate: n.unwrap_or(0),
        })
        .collect())
}

/// Rows a purge would delete now (for `--dry-run`).
pub async fn purge_count(conn: &mut Conn, table: &Ident, time_column: &Ident, cutoff: &str) -> Result<u64, DbError> {
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE {time_column} < ?");
    let n: Option<u64> = conn.exec_first(sql.as_str(), (cutoff,)).await.map_err(DbError::query(sql.clone()))?;
    Ok(n.unwrap_or(0))
}

/// Deletes rows older than the cutoff in batches of `batch`, each its own short
/// statement, so the table is never held for long. Returns the rows deleted.
pub async fn purge(conn: &mut Conn, table: &Ident, time_column: &Ident, cutoff: &str, batch: u32) -> Result<u64, DbError> {
    let sql = format!("DELETE FROM {table} WHERE {time_column} < ? LIMIT ?");
    let mut total = 0;
    loop {
        conn.exec_drop(sql.as_str(), (cutoff, batch)).await.map_err(DbError::query(sql.clone()))?;
        let n = conn.affected_rows();
        total += n;
        if n < u64::from(batch) {
            return Ok(total);
        }
    }
}
