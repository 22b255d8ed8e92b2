//! Step 5, the database upkeep, as journalled sub-steps: optimize, analyze, the size
//! report, the sessions purge and the audit archive. Each is recorded on its own, so a
//! resumed run does not optimize twice, and the archive's starting counts are journalled
//! before the first batch moves, so that its verification after a crash compares against
//! the state before any row moved.
//!
//! The credentials come from Secrets Manager and stay in memory (`db::Credentials`); the
//! endpoint is the secret's, or RDS's when the secret names none.

use serde_json::{json, Value};
use tokio::sync::watch;

use super::config::{DatabaseConfig, DbNames};
use super::recorder::Recorder;
use crate::aws::AwsClients;
use crate::db::archive::{self, ArchiveSpec, ArchiveStart};
use crate::db::{self, upkeep, Credentials, DbError, Endpoint};
use crate::rollout::journal::StepState;

pub const CONNECT: &str = "5 database-connect";
pub const OPTIMIZE: &str = "5 optimize";
pub const ANALYZE: &str = "5 analyze";
pub const SIZES: &str = "5 table-sizes";
pub const SESSIONS: &str = "5 sessions-purge";
pub const ARCHIVE_START: &str = "5 archive-start";
pub const ARCHIVE: &str = "5 audit-archive";

/// The sub-steps, in order (for the plan and the report).
pub const STEPS: [&str; 7] = [CONNECT, OPTIMIZE, ANALYZE, SIZES, SESSIONS, ARCHIVE_START, ARCHIVE];

/// The cutoffs, fixed when the run starts and kept in its journal.
#[derive(Debug, Clone)]
pub struct Cutoffs {
    pub sessions: String,
    pub archive: String,
}

impl Cutoffs {
    pub fn at(now: chrono::DateTime<chrono::Utc>, cfg: &DatabaseConfig) -> Cutoffs {
        let f = |d: std::time::Duration| {
            (now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())).format("%Y-%m-%d %H:%M:%S").to_string()
        };
        Cutoffs { sessions: f(cfg.sessions_retention), archive: f(cfg.archive_retention) }
    }
}

async fn endpoint(aws: &AwsClients, cfg: &DatabaseConfig, instance_id: &str, creds: &Credentials) -> Result<Endpoint, String> {
    let (host, port) = match &creds.host {
        Some(h) if !h.is_empty() => (h.clone(), creds.port.unwrap_or(3306)),
        _ => {
            let dbs = crate::aws::rds::describe_db_instances(&aws.rds).await.map_err(|e| e.to_string())?;
            let db = dbs.iter().find(|d| d.id == instance_id).ok_or_else(|| {
                format!("the secret names no host and RDS has no instance {instance_id:?}")
            })?;
            let host = db.endpoint.clone().ok_or_else(|| DbError::NoEndpoint.to_string())?;
            (host, creds.port.or(db.port.and_then(|p| u16::try_from(p).ok())).unwrap_or(3306))
        }
    };
    let database = creds.dbname.clone().or_else(|| cfg.dbname.clone()).ok_or_else(|| {
        "no database name: the secret has no dbname and [maintenance.database] dbname is not set".to_string()
    })?;
    Ok(Endpoint { host, port, database, ca_bundle: cfg.ca_bundle.clone() })
}

/// Connects with the secret's credentials.
pub async fn connect(aws: &AwsClients, cfg: &DatabaseConfig, secret_id: &str, instance_id: &str) -> Result<(mysql_async::Conn, Endpoint), String> {
    let secret = crate::aws::secrets::get_secret_string(&aws.secrets, secret_id).await.map_err(|e| e.to_string())?;
    let creds = Credentials::from_secret(secret_id, secret.expose()).map_err(|e| e.to_string())?;
    let ep = endpoint(aws, cfg, instance_id, &creds).await?;
    let conn = db::connect(&ep, &creds).await.map_err(|e| e.to_string())?;
    Ok((conn, ep))
}

fn err_step(e: DbError) -> (StepState, String, Value) {
    (StepState::Failed, e.to_string(), Value::Null)
}

/// Everything step 5 does, recorded sub-step by sub-step. `cancel` (the second Ctrl-C)
/// stops the archive between batches; a batch is never cut in half.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    rec: &Recorder,
    aws: &AwsClients,
    cfg: &DatabaseConfig,
    names: &DbNames,
    secret_id: &str,
    instance_id: &str,
    cutoffs: &Cutoffs,
    dry_run: bool,
    cancel: watch::Receiver<bool>,
) {
    let mut conn = None;
    rec.step(CONNECT, async {
        match connect(aws, cfg, secret_id, instance_id).await {
            Ok((c, ep)) => {
                let tls = if ep.ca_bundle.is_some() { "TLS verified against the CA bundle" } else { "plaintext (loopback)" };
                let detail = format!("{}:{} database {} as the secret's user, {tls}", ep.host, ep.port, ep.database);
                conn = Some(c);
                (StepState::Succeeded, detail, json!({"host": ep.host, "port": ep.port, "database": ep.database}))
            }
            Err(e) => (StepState::Failed, e, Value::Null),
        }
    })
    .await;
    // A resumed run whose connect step was done still needs its own connection.
    if conn.is_none() && rec.done(CONNECT, None).is_some() {
        conn = connect(aws, cfg, secret_id, instance_id).await.ok().map(|(c, _)| c);
    }
    let Some(mut conn) = conn else {
        for s in &STEPS[1..] {
            rec.not_run(s, None, "no database connection (see 5 database-connect)");
        }
        return;
    };
    let c = &mut conn;
    if dry_run {
        plan(rec, c, names, cutoffs).await;
        return;
    }
    for (step, op) in [(OPTIMIZE, "optimize"), (ANALYZE, "analyze")] {
        rec.step(step, async {
            match upkeep::table_op(c, op, &names.tables).await {
                Ok(ops) => {
                    let bad: Vec<&str> = ops.iter().filter(|o| !o.ok).map(|o| o.table.as_str()).collect();
                    let each = ops.iter().map(|o| format!("{} {} ms", o.table, o.duration_ms)).collect::<Vec<_>>().join(", ");
                    let state = if bad.is_empty() { StepState::Succeeded } else { StepState::Failed };
                    let detail = if bad.is_empty() { each } else { format!("the server reported an error for {}: {each}", bad.join(", ")) };
                    (state, detail, json!(ops))
                }
                Err(e) => err_step(e),
            }
        })
        .await;
    }
    rec.step(SIZES, async {
        match upkeep::sizes(c).await {
            Ok(sizes) => {
                let total: u64 = sizes.iter().map(|s| s.size_bytes).sum();
                let free: u64 = sizes.iter().map(|s| s.free_bytes).sum();
                let detail = format!(
                    "{} tables, {} in all, {} free",
                    sizes.len(),
                    crate::output::human_bytes(total),
                    crate::output::human_bytes(free)
                );
                (StepState::Succeeded, detail, json!(sizes))
            }
            Err(e) => err_step(e),
        }
    })
    .await;
    rec.step(SESSIONS, async {
        match upkeep::purge(c, &names.sessions, &names.sessions_time, &cutoffs.sessions, cfg.batch).await {
            Ok(n) => (
                StepState::Succeeded,
                format!("{n} rows of {} older than {} deleted", names.sessions, cutoffs.sessions),
                json!({"deleted": n, "cutoff": cutoffs.sessions}),
            ),
            Err(e) => err_step(e),
        }
    })
    .await;
    let spec = ArchiveSpec {
        live: names.live.clone(),
        archive: names.archive.clone(),
        time_column: names.archive_time.clone(),
        cutoff: cutoffs.archive.clone(),
        batch: cfg.batch,
    };
    let (state, data) = rec
        .step(ARCHIVE_START, async {
            match archive::prepare(c, &spec).await {
                Ok(start) => (
                    StepState::Succeeded,
                    format!("{} rows older than {} to move; archive has {}", start.old_rows, spec.cutoff, start.archive_rows),
                    json!(start),
                ),
                Err(e) => err_step(e),
            }
        })
        .await;
    let start: Option<ArchiveStart> = if state.is_done() { serde_json::from_value(data).ok() } else { None };
    let Some(start) = start else {
        rec.not_run(ARCHIVE, None, "the archive could not be prepared (see 5 archive-start)");
        return;
    };
    rec.step(ARCHIVE, async {
        // The archive table exists: `prepare` made it before its start was journalled.
        let moved = archive::run(c, &spec, &start, |_| !*cancel.borrow()).await;
        let (moved, batches) = match moved {
            Ok(m) => m,
            Err(e) => return err_step(e),
        };
        if *cancel.borrow() {
            return (
                StepState::Cancelled,
                format!("cancelled by the operator after {batches} batches ({moved} rows moved, each batch whole); a resume moves the rest"),
                json!({"moved": moved, "batches": batches}),
            );
        }
        match archive::verify(c, &spec, &start, moved, batches).await {
            Ok(out) => {
                let state = if out.verified { StepState::Succeeded } else { StepState::Failed };
                (state, out.detail.clone(), json!(out))
            }
            Err(e) => err_step(e),
        }
    })
    .await;
}

/// `--dry-run`: what step 5 would do, read from the database, nothing changed.
async fn plan(rec: &Recorder, c: &mut mysql_async::Conn, names: &DbNames, cutoffs: &Cutoffs) {
    let tables = names.tables.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ");
    for step in [OPTIMIZE, ANALYZE] {
        rec.ended(step, None, StepState::Planned, &format!("would run on {tables}"), std::time::Instant::now(), Value::Null);
    }
    let since = std::time::Instant::now();
    match upkeep::sizes(c).await {
        Ok(s) => rec.ended(SIZES, None, StepState::Succeeded, &format!("{} tables (read only)", s.len()), since, json!(s)),
        Err(e) => rec.ended(SIZES, None, StepState::Failed, &e.to_string(), since, Value::Null),
    }
    let since = std::time::Instant::now();
    match upkeep::purge_count(c, &names.sessions, &names.sessions_time, &cutoffs.sessions).await {
        Ok(n) => rec.ended(
            SESSIONS,
            None,
            StepState::Planned,
            &format!("would delete {n} rows of {} older than {}", names.sessions, cutoffs.sessions),
            since,
            json!({"would_delete": n, "cutoff": cutoffs.sessions}),
        ),
        Err(e) => rec.ended(SESSIONS, None, StepState::Failed, &e.to_string(), since, Value::Null),
    }
    rec.ended(ARCHIVE_START, None, StepState::Planned, &format!("would create {} LIKE {} if absent and count the rows to move", names.archive, names.live), std::time::Instant::now(), Value::Null);
    let since = std::time::Instant::now();
    let spec = ArchiveSpec {
        live: names.live.clone(),
        archive: names.archive.clone(),
        time_column: names.archive_time.clone(),
        cutoff: cutoffs.archive.clone(),
        batch: 1,
    };
    match archive::old_rows(c, &spec).await {
        Ok(n) => rec.ended(
            ARCHIVE,
            None,
            StepState::Planned,
            &format!("would move {n} rows of {} older than {} to {}", names.live, cutoffs.archive, names.archive),
            since,
            json!({"would_move": n, "cutoff": cutoffs.archive}),
        ),
        Err(e) => rec.ended(ARCHIVE, None, StepState::Failed, &e.to_string(), since, Value::Null),
    }
}
