//! `controller runs list` and `controller runs show RUN_ID`: the runs' journals, read back.
//! `show` rebuilds the same report the run wrote, from the journal alone, so a run that
//! was killed before it could write its report can still be read.

use serde_json::json;

use super::report;
use crate::output::{OutputFormat, Table};
use crate::rollout::journal::{self, Event};

fn at(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "?".into())
}

/// `runs list`: newest first, with how each ended (or that it has not).
pub fn list(output: OutputFormat) -> anyhow::Result<i32> {
    let root = journal::state_root()?;
    let mut rows = Vec::new();
    for id in journal::list_runs(&root)? {
        let entry = match journal::read_run(&root, &id) {
            Ok(c) => {
                let started = c.events.iter().find_map(|e| match e {
                    Event::RunStarted { command, fleet, hosts, at_unix_ms, params, .. } => {
                        Some((command.clone(), fleet.clone(), hosts.len(), *at_unix_ms, params["dry_run"].as_bool().unwrap_or(false)))
                    }
                    _ => None,
                });
                let ended = c.events.iter().rev().find_map(|e| match e {
                    Event::RunEnded { outcome, .. } => Some(outcome.clone()),
                    _ => None,
                });
                let (command, fleet, hosts, started, dry) = started.unwrap_or_default();
                json!({"run_id": id, "command": command, "fleet": fleet, "hosts": hosts, "started": at(started),
                       "dry_run": dry, "state": ended.unwrap_or_else(|| "not ended (running, or killed: resume it)".into())})
            }
            Err(e) => json!({"run_id": id, "state": format!("unreadable journal: {e}")}),
        };
        rows.push(entry);
    }
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        OutputFormat::Table => {
            let mut t = Table::new(["RUN", "COMMAND", "FLEET", "HOSTS", "STARTED", "STATE"]);
            for r in &rows {
                let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
                let cmd = if r["dry_run"].as_bool() == Some(true) { format!("{} (dry run)", s("command")) } else { s("command") };
                t.row([s("run_id"), cmd, s("fleet"), r["hosts"].to_string(), s("started"), s("state")]);
            }
            if rows.is_empty() {
                println!("no runs under {}", root.join("runs").display());
            } else {
                print!("{}", t.render());
            }
        }
    }
    Ok(0)
}

/// `runs show RUN_ID`: the run's report as its journal has it; exit code as the run's.
pub fn show(id: &str, output: OutputFormat) -> anyhow::Result<i32> {
    let root = journal::state_root()?;
    let contents = journal::read_run(&root, id)?;
    let path = root.join("runs").join(id).join("journal.jsonl");
    let mut r = report::build(&contents, &[], &path, None);
    if !contents.ended() {
        r.stopped = Some("the run has not ended: it is still running, or was killed (resume it with --resume)".into());
    }
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        OutputFormat::Table => print!("{}", r.render_text()),
    }
    Ok(r.exit_code)
}
