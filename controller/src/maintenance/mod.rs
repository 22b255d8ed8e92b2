//! `controller weekly-maintenance`: the weekly runbook across the whole fleet, in its
//! order, every step recorded with its real outcome:
//!
//! - 1: EBS snapshot of every volume of every instance; 2: the RDS snapshot;
//! - 3–4: per host, rolling (the rollout engine's limits): full patch, application
//!   dependencies, restarts where the service runs, cleanup, security patch, certificate
//!   renewal, security services;
//! - 5: the database (`database.rs`);
//! - 6: per host, logrotate and log cleanup;
//! - 7–9: the security review, the performance baseline, the backup verification;
//! - 10: after a settle time, the daily health check until it passes, and every agent
//!   answering.
//!
//! Everything goes through the run's journal (`recorder.rs`), so `--resume RUN_ID`
//! skips what is done and reattaches to agent jobs (idempotency keys from run, host and
//! step), and the report (`report.rs`) is made from the journal alone. If the
//! pre-maintenance snapshots fail, nothing on the hosts or in the database changes.

pub mod config;
pub mod database;
pub mod events;
pub mod recorder;
pub mod report;
pub mod runs;
pub mod steps;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use chrono::{DateTime, Local, Utc};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::aws::snapshots::{self, WaitOutcome};
use crate::client::Dialer;
use crate::config::{ControllerConfig, FleetSource};
use crate::fleet::{self, Host};
use crate::output::OutputFormat;
use crate::rollout::agent_step::run_job_step;
use crate::rollout::executor::{self, Progress, Signals};
use crate::rollout::journal::{self, Event, Journal, StepState};
use crate::rollout::lock::{this_holder, FleetLock, LockError};
use crate::rollout::plan::{plan, HostState};
use crate::rollout::policy::{Limit, Policy};
use crate::runbooks::{self, Which};
use config::MaintenanceConfig;
use database::Cutoffs;
use recorder::Recorder;
use steps::{host_steps, phase_steps, Phase};

pub const COMMAND: &str = "weekly-maintenance";

/// The command line's choices.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub dry_run: bool,
    pub yes: bool,
    pub hosts: Vec<String>,
    pub resume: Option<String>,
    pub break_lock: bool,
    pub max_concurrency: Option<Limit>,
    pub max_errors: Option<Limit>,
    pub canary: Option<usize>,
    pub host_timeout: Option<Duration>,
    pub settle: Option<Duration>,
    pub report_dir: Option<PathBuf>,
}

/// The fleet's key for its lock and journal: the source and what selects it.
pub fn fleet_key(cfg: &ControllerConfig) -> String {
    match cfg.fleet.source {
        FleetSource::Ec2 if cfg.fleet.all_instances => format!("ec2:{}:all", cfg.aws.region.clone().unwrap_or_default()),
        FleetSource::Ec2 => {
            let tags: Vec<String> = cfg.fleet.tag_filters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("ec2:{}", tags.join(","))
        }
        FleetSource::Static => {
            let src = cfg.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "inline".into());
            format!("static:{src}")
        }
    }
}

/// The parameters fixed when a run starts, kept in its journal; a resumed run reuses them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Params {
    dry_run: bool,
    started_unix_ms: i64,
    sessions_cutoff: String,
    archive_cutoff: String,
    rds_snapshot: String,
    max_concurrency: String,
    max_errors: String,
    canary: usize,
    host_timeout_secs: u64,
    settle_secs: u64,
}

impl Params {
    /// The limits recorded when the run started.
    fn policy(&self) -> anyhow::Result<Policy> {
        let limit = |what: &str, v: &str| v.parse::<Limit>().map_err(|e| anyhow!("the run's recorded {what}: {e}"));
        Ok(Policy {
            max_concurrency: limit("max_concurrency", &self.max_concurrency)?,
            max_errors: limit("max_errors", &self.max_errors)?,
            canary: self.canary,
            host_timeout: Duration::from_secs(self.host_timeout_secs),
        })
    }
}

/// One run, set up.
struct Run {
    id: String,
    cfg: ControllerConfig,
    m: MaintenanceConfig,
    params: Params,
    /// The run's limits, read once from `params`.
    policy: Policy,
    ctx: runbooks::Context,
    dialer: Dialer,
    hosts: Vec<Host>,
    rec: Recorder,
    run_dir: PathBuf,
    stop: watch::Receiver<u32>,
    /// Turns true on the second Ctrl-C (cancel running work).
    cancel: watch::Receiver<bool>,
}

/// `controller weekly-maintenance`. Returns the exit code; an error is "could not run" (2).
pub async fn cli(cfg: &ControllerConfig, output: OutputFormat, opts: Options) -> anyhow::Result<i32> {
    let m = cfg.maintenance.clone();
    m.validate().map_err(|e| anyhow!("invalid config: {e}"))?;
    let names = m.database.names().map_err(|e| anyhow!("invalid config: {e}"))?;
    let root = journal::state_root()?;
    let dialer = Dialer::from_config(cfg)?;
    let mut ctx = runbooks::Context::from_config(cfg).await?;
    ctx.dialer = Some(dialer.clone());

    // The run: a new one, or the one being resumed with its journal and parameters.
    let (id, params, journal, prior, host_names) = match &opts.resume {
        Some(id) => {
            let (mut journal, contents) = Journal::reopen(&root, id)?;
            if contents.ended() {
                bail!("run {id} has already ended; nothing to resume (see `controller runs show {id}`)");
            }
            let params: Params = contents
                .params()
                .cloned()
                .and_then(|p| serde_json::from_value(p).ok())
                .ok_or_else(|| anyhow!("run {id}: its journal has no readable parameters; it cannot be resumed"))?;
            let hosts = contents
                .events
                .iter()
                .find_map(|e| match e {
                    Event::RunStarted { hosts, command, .. } if command == COMMAND => Some(hosts.clone()),
                    _ => None,
                })
                .ok_or_else(|| anyhow!("run {id} is not a {COMMAND} run"))?;
            journal.append(&Event::RunResumed { at_unix_ms: Utc::now().timestamp_millis(), by_pid: std::process::id() })?;
            (id.clone(), params, Some(journal), Some(contents), hosts)
        }
        None => {
            let now = Utc::now();
            let policy = policy(&m, &opts)?;
            let cut = Cutoffs::at(now, &m.database);
            let params = Params {
                dry_run: opts.dry_run,
                started_unix_ms: now.timestamp_millis(),
                sessions_cutoff: cut.sessions,
                archive_cutoff: cut.archive,
                rds_snapshot: steps::rds_snapshot_name(&m.rds_snapshot_prefix, now),
                max_concurrency: policy.max_concurrency.to_string(),
                max_errors: policy.max_errors.to_string(),
                canary: policy.canary,
                host_timeout_secs: policy.host_timeout.as_secs(),
                settle_secs: opts.settle.unwrap_or(m.settle).as_secs(),
            };
            (journal::new_run_id(now), params, None::<Journal>, None, Vec::new())
        }
    };
    let policy = params.policy()?;
    if opts.resume.is_some() && opts.dry_run != params.dry_run {
        bail!("run {id} was {}a dry run; resume it without changing --dry-run", if params.dry_run { "" } else { "not " });
    }

    // The fleet: discovered now; a resumed run keeps the hosts it started with.
    let discovered = fleet::discover(cfg).await?;
    let hosts = select_hosts(&discovered, &opts.hosts, &host_names)?;
    if hosts.is_empty() {
        bail!("the fleet has no hosts ({}): nothing to maintain", fleet_key(cfg));
    }

    // One run per fleet at a time (a dry run changes nothing and takes no lock).
    let fleet = fleet_key(cfg);
    let _lock = if params.dry_run {
        None
    } else {
        let lock = match FleetLock::acquire(&root, &fleet, this_holder(&id, COMMAND), opts.break_lock) {
            // The stale lock of the very run being resumed is this run's own: take it back.
            Err(LockError::Stale { holder, .. }) if opts.resume.as_deref() == Some(holder.run_id.as_str()) => {
                FleetLock::acquire(&root, &fleet, this_holder(&id, COMMAND), true)?
            }
            other => other?,
        };
        if let Some(old) = &lock.broke {
            eprintln!("note: took over the stale lock of {old}");
        }
        Some(lock)
    };

    let planned = planned_steps(&m, &hosts, params.dry_run);
    let plan_text = render_plan(&id, &fleet, &hosts, &params, &m, &planned, opts.resume.is_some());
    match output {
        OutputFormat::Json => println!("{}", json!({"event": "plan", "run_id": id, "fleet": fleet, "dry_run": params.dry_run, "hosts": hosts.iter().map(|h| &h.name).collect::<Vec<_>>(), "steps": planned.iter().map(|(s, h)| json!({"step": s, "host": h})).collect::<Vec<_>>()})),
        OutputFormat::Table => eprint!("{plan_text}"),
    }
    if !params.dry_run && !opts.yes {
        confirm()?;
    }

    let journal = match journal {
        Some(j) => j,
        None => {
            let mut j = Journal::create(&root, &id)?;
            j.append(&Event::RunStarted {
                run_id: id.clone(),
                command: COMMAND.into(),
                fleet: fleet.clone(),
                hosts: hosts.iter().map(|h| h.name.clone()).collect(),
                at_unix_ms: params.started_unix_ms,
                params: serde_json::to_value(&params)?,
            })?;
            j
        }
    };
    let journal_path = journal.path().to_path_buf();
    let run_dir = journal_path.parent().map(Path::to_path_buf).unwrap_or_else(|| root.clone());

    // Ctrl-C (or SIGTERM, which is how a service manager stops a run): the first stops
    // new work, the second cancels running work.
    let (stop_tx, stop_rx) = watch::channel(0u32);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let signal_task = tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut n = 0;
        loop {
            let terminated = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { break },
                () = terminated => {}
            }
            n += 1;
            let _ = stop_tx.send(n);
            if n >= 2 {
                let _ = cancel_tx.send(true);
            }
        }
    });

    let events = events::Events::new(output, planned.len());
    let run = Run {
        id: id.clone(),
        cfg: cfg.clone(),
        m,
        policy,
        params,
        ctx,
        dialer,
        hosts,
        rec: Recorder::new(journal, prior, events),
        run_dir,
        stop: stop_rx,
        cancel: cancel_rx,
    };
    let stopped = run.execute(&names).await;
    signal_task.abort();

    let outcome = match &stopped {
        Some(why) => format!("stopped: {why}"),
        None => "finished".to_string(),
    };
    run.rec.append(&Event::RunEnded { outcome, at_unix_ms: Utc::now().timestamp_millis() });
    let contents = journal::read_run(&root, &id)?;
    let next = run.m.schedule().ok().and_then(|s| s.next_after(&Local::now()));
    let report = report::build(&contents, &planned, &journal_path, next);
    match output {
        OutputFormat::Json => {}
        OutputFormat::Table => print!("{}", report.render_text()),
    }
    run.rec.events.finished(report.outcome.label(), report.exit_code, serde_json::to_value(&report).unwrap_or(Value::Null));
    let dir = match &opts.report_dir {
        Some(d) => d.clone(),
        None => runbooks::default_report_dir()?,
    };
    let (txt, json_path) = report.write(&dir).with_context(|| format!("cannot write the report into {}", dir.display()))?;
    match output {
        OutputFormat::Json => eprintln!("Report saved to: {} and {}", txt.display(), json_path.display()),
        OutputFormat::Table => println!("\nReport saved to: {} and {}", txt.display(), json_path.display()),
    }
    Ok(report.exit_code)
}

fn policy(m: &MaintenanceConfig, opts: &Options) -> anyhow::Result<Policy> {
    let mut p = m.policy().map_err(|e| anyhow!("invalid config: {e}"))?;
    if let Some(l) = opts.max_concurrency {
        p.max_concurrency = l;
    }
    if let Some(l) = opts.max_errors {
        p.max_errors = l;
    }
    if let Some(c) = opts.canary {
        p.canary = c;
    }
    if let Some(t) = opts.host_timeout {
        p.host_timeout = t;
    }
    Ok(p)
}

/// The hosts of this run: `--hosts` narrows the fleet (every name must exist); a resumed
/// run keeps its own list, and a host that left the fleet since stays in it, undialable.
fn select_hosts(discovered: &[Host], wanted: &[String], resumed: &[String]) -> anyhow::Result<Vec<Host>> {
    if !resumed.is_empty() {
        return Ok(resumed
            .iter()
            .map(|name| match discovered.iter().find(|h| &h.name == name) {
                Some(h) => h.clone(),
                None => Host {
                    name: name.clone(),
                    address: String::new(),
                    server_name: String::new(),
                    instance_id: None,
                    instance_type: None,
                    private_ip: None,
                    public_ip: None,
                    url: None,
                    undialable: Some(fleet::Undialable::LeftFleet),
                },
            })
            .collect());
    }
    if wanted.is_empty() {
        return Ok(discovered.to_vec());
    }
    wanted.iter().map(|n| fleet::find(discovered, n).cloned().map_err(anyhow::Error::from)).collect()
}

/// Every (step, host) the run means to do, in order.
fn planned_steps(m: &MaintenanceConfig, hosts: &[Host], dry_run: bool) -> Vec<(String, Option<String>)> {
    let mut v: Vec<(String, Option<String>)> = vec![(steps::EBS_SNAPSHOTS.into(), None), (steps::RDS_SNAPSHOT.into(), None)];
    let host_part = |phase: Phase, v: &mut Vec<(String, Option<String>)>| {
        for h in hosts {
            for s in phase_steps(m, &h.name, dry_run, phase) {
                v.push((s.name, Some(h.name.clone())));
            }
        }
    };
    host_part(Phase::Updates, &mut v);
    if m.database.enabled {
        v.extend(database::STEPS.iter().map(|s| (s.to_string(), None)));
    } else {
        v.push((steps::DATABASE.into(), None));
    }
    host_part(Phase::Logs, &mut v);
    for s in [steps::SECURITY_REVIEW, steps::PERFORMANCE_BASELINE, steps::BACKUP_VERIFY, steps::VERIFY] {
        v.push((s.into(), None));
    }
    v
}

fn render_plan(
    id: &str,
    fleet: &str,
    hosts: &[Host],
    p: &Params,
    m: &MaintenanceConfig,
    planned: &[(String, Option<String>)],
    resumed: bool,
) -> String {
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "{} {COMMAND} run {id} on {fleet}{}",
        if p.dry_run { "DRY RUN:" } else { "Plan:" },
        if resumed { " (resumed: steps already done are skipped)" } else { "" }
    );
    let _ = writeln!(s, "  hosts ({}): {}", hosts.len(), hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", "));
    let _ = writeln!(
        s,
        "  limits: max-concurrency {}, max-errors {}, canary {}, host timeout {}, step timeout {}",
        p.max_concurrency,
        p.max_errors,
        p.canary,
        humantime::format_duration(Duration::from_secs(p.host_timeout_secs)),
        humantime::format_duration(m.step_timeout)
    );
    let _ = writeln!(s, "  RDS snapshot: {}; audit rows before {} archived; sessions before {} deleted", p.rds_snapshot, p.archive_cutoff, p.sessions_cutoff);
    let _ = writeln!(s, "  settle before verification: {}", humantime::format_duration(Duration::from_secs(p.settle_secs)));
    let first_host = hosts.first().map(|h| h.name.as_str()).unwrap_or("");
    let _ = writeln!(s, "  steps ({} in all), per host as on {first_host}:", planned.len());
    for st in host_steps(m, first_host, p.dry_run) {
        let _ = writeln!(s, "    {:<28} {}{}", st.name, st.what, if st.spec.is_none() { " (named only: a dry run does not ask for it)" } else { "" });
    }
    s
}

/// Asks on the terminal; without one, `--yes` is required.
fn confirm() -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("this changes hosts, AWS and the database and there is no terminal to confirm on: pass --yes (or --dry-run to only look)");
    }
    eprint!("Proceed? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("not confirmed; nothing was changed")
    }
}

fn aws_detail(e: &crate::aws::AwsError) -> (StepState, String, Value) {
    (StepState::Failed, e.to_string(), Value::Null)
}

impl Run {
    /// The runbook context with its clock and deadline starting now: a run lasts far
    /// longer than one runbook's deadline (and may have waited for confirmation).
    fn fresh_ctx(&self) -> runbooks::Context {
        let mut ctx = self.ctx.clone();
        ctx.now = Utc::now();
        ctx.deadline = tokio::time::Instant::now() + self.cfg.runbooks.deadline;
        ctx
    }

    fn stopped_by_operator(&self) -> bool {
        *self.stop.borrow() > 0
    }

    /// Why no new step may start, if one may not.
    fn halt(&self) -> Option<String> {
        if self.stopped_by_operator() {
            return Some("interrupted by the operator (Ctrl-C or SIGTERM)".into());
        }
        if !self.rec.healthy() {
            return Some("the journal cannot be written".into());
        }
        None
    }

    /// Runs the steps in order. Returns why the run stopped early, if it did.
    async fn execute(&self, names: &config::DbNames) -> Option<String> {
        // 1–2: the safety net first. Without it nothing changes.
        let ebs = self.fleet_step(steps::EBS_SNAPSHOTS, self.ebs_snapshots()).await;
        let rds = self.fleet_step(steps::RDS_SNAPSHOT, self.rds_snapshot()).await;
        if !self.params.dry_run && (ebs.is_bad() || rds.is_bad()) {
            return Some(format!("no pre-maintenance snapshot (ebs {}, rds {}): nothing on the hosts or in the database was changed", ebs.label(), rds.label()));
        }
        let mut stopped = None;
        // 3–4: host by host.
        let updates = self.rollout(Phase::Updates, &[]).await;
        if let Some(s) = &updates.1 {
            stopped = Some(s.clone());
        }
        // 5: the database, unless the rollout was stopped.
        let halt = stopped.clone().or_else(|| self.halt());
        if !self.m.database.enabled {
            self.rec.ended(steps::DATABASE, None, StepState::Skipped, "[maintenance.database] enabled = false", Instant::now(), Value::Null);
        } else if let Some(why) = &halt {
            for s in database::STEPS {
                self.rec.not_run(s, None, why);
            }
        } else {
            let db = &self.m.database;
            let secret = db.secret_id.clone().unwrap_or_else(|| self.cfg.runbooks.db_secret_id.clone());
            let instance = db.instance_id.clone().unwrap_or_else(|| self.cfg.runbooks.db_instance_id.clone());
            let cut = Cutoffs { sessions: self.params.sessions_cutoff.clone(), archive: self.params.archive_cutoff.clone() };
            database::run(&self.rec, &self.ctx.aws, db, names, &secret, &instance, &cut, self.params.dry_run, self.cancel.clone()).await;
        }
        // 6: logs, on the hosts whose updates did not fail.
        let not_ok: Vec<(String, String)> = updates
            .0
            .iter()
            .filter(|(_, s)| *s != HostState::Succeeded && *s != HostState::Skipped)
            .map(|(h, s)| (h.clone(), format!("steps 3-4 ended {} on this host", s.label())))
            .collect();
        if let Some(why) = stopped.clone().or_else(|| self.halt()) {
            for h in &self.hosts {
                for st in phase_steps(&self.m, &h.name, self.params.dry_run, Phase::Logs) {
                    self.rec.not_run(&st.name, Some(&h.name), &why);
                }
            }
        } else {
            let logs = self.rollout(Phase::Logs, &not_ok).await;
            if let Some(s) = logs.1 {
                stopped.get_or_insert(s);
            }
        }
        // 7–9: read-only runbooks; 10: verification. Read-only: they run after a stopped
        // rollout too (the report then says what state the fleet is in), but not after
        // the operator's Ctrl-C.
        for (step, which) in [
            (steps::SECURITY_REVIEW, Which::SecurityReview),
            (steps::PERFORMANCE_BASELINE, Which::PerformanceMonitoring { hours: 24 }),
            (steps::BACKUP_VERIFY, Which::BackupVerify),
        ] {
            match self.halt() {
                Some(why) => self.rec.not_run(step, None, &why),
                None if self.params.dry_run => self.rec.ended(step, None, StepState::Planned, "would run (read only)", Instant::now(), Value::Null),
                None => {
                    self.rec.step(step, self.runbook(step, which)).await;
                }
            }
        }
        match self.halt() {
            Some(why) => self.rec.not_run(steps::VERIFY, None, &why),
            None if self.params.dry_run => {
                let what = format!("would wait {} then run the daily health check until it passes", humantime::format_duration(Duration::from_secs(self.params.settle_secs)));
                self.rec.ended(steps::VERIFY, None, StepState::Planned, &what, Instant::now(), Value::Null)
            }
            None => {
                self.rec.step(steps::VERIFY, self.verify()).await;
            }
        }
        stopped.or_else(|| self.halt())
    }

    /// A fleet step that is not run once the operator stopped the run.
    async fn fleet_step(&self, name: &str, f: impl std::future::Future<Output = (StepState, String, Value)>) -> StepState {
        if let Some(why) = self.halt() {
            self.rec.not_run(name, None, &why);
            return StepState::NotRun;
        }
        self.rec.step(name, f).await.0
    }

    fn snapshot_tags(&self) -> BTreeMap<String, String> {
        let day = DateTime::from_timestamp_millis(self.params.started_unix_ms).unwrap_or_default().format("%Y%m%d").to_string();
        BTreeMap::from([("Purpose".to_string(), "Maintenance".to_string()), ("Date".to_string(), day), ("RunId".to_string(), self.id.clone())])
    }

    /// Step 1: every volume of every instance of this run's hosts.
    async fn ebs_snapshots(&self) -> (StepState, String, Value) {
        if self.cfg.fleet.source == FleetSource::Static {
            return (StepState::Skipped, "a static inventory has no EC2 instances: no EBS volume to snapshot".into(), Value::Null);
        }
        let instances = match self.fresh_ctx().tagged_instances().await {
            Ok(i) => i,
            Err(e) => return aws_detail(&e),
        };
        let ours: Vec<&crate::aws::ec2::Instance> =
            instances.iter().filter(|i| self.hosts.iter().any(|h| h.instance_id.as_deref() == Some(i.id.as_str()))).collect();
        let volumes: Vec<(String, String)> = ours.iter().flat_map(|i| i.volume_ids.iter().map(|v| (i.id.clone(), v.clone()))).collect();
        let missing: Vec<&str> = self.hosts.iter().filter(|h| !ours.iter().any(|i| Some(i.id.as_str()) == h.instance_id.as_deref())).map(|h| h.name.as_str()).collect();
        if volumes.is_empty() {
            return (StepState::Failed, "no EBS volume found on the fleet's instances: nothing to snapshot".into(), Value::Null);
        }
        if self.params.dry_run {
            let list: Vec<String> = volumes.iter().map(|(i, v)| format!("{v} ({i})")).collect();
            return (StepState::Planned, format!("would snapshot {} volumes: {}", volumes.len(), list.join(", ")), json!(volumes));
        }
        let tags = self.snapshot_tags();
        let mut made = Vec::new();
        for (instance, volume) in &volumes {
            let desc = format!("Pre-maintenance snapshot of {volume} ({instance}), run {}", self.id);
            match snapshots::ensure_ebs_snapshot(&self.ctx.aws.ec2, volume, &desc, &tags).await {
                Ok((id, created)) => made.push(json!({"instance": instance, "volume": volume, "snapshot": id, "created_now": created})),
                Err(e) => return (StepState::Failed, format!("volume {volume} ({instance}): {e}"), json!(made)),
            }
        }
        let ids: Vec<String> = made.iter().filter_map(|m| m["snapshot"].as_str().map(str::to_string)).collect();
        let waited = snapshots::wait_ebs_snapshots(&self.ctx.aws.ec2, &ids, self.m.snapshot_deadline, self.m.snapshot_poll).await;
        let data = json!(made);
        match waited {
            Ok(WaitOutcome::Ready) => {
                let mut detail = format!("{} snapshots completed, tagged Purpose=Maintenance and RunId={}", ids.len(), self.id);
                if !missing.is_empty() {
                    detail.push_str(&format!("; no instance found for {}", missing.join(", ")));
                    return (StepState::Failed, detail, data);
                }
                (StepState::Succeeded, detail, data)
            }
            Ok(WaitOutcome::Failed(id, st)) => (StepState::Failed, format!("snapshot {id} is {st}"), data),
            Ok(WaitOutcome::DeadlineExceeded(left)) => (
                StepState::TimedOut,
                format!(
                    "not completed within {}: {}",
                    humantime::format_duration(self.m.snapshot_deadline),
                    left.iter().map(|(i, s)| format!("{i} {s}")).collect::<Vec<_>>().join(", ")
                ),
                data,
            ),
            Err(e) => aws_detail(&e),
        }
    }

    /// Step 2: the database snapshot, named from the run.
    async fn rds_snapshot(&self) -> (StepState, String, Value) {
        let instance = self.m.database.instance_id.clone().unwrap_or_else(|| self.cfg.runbooks.db_instance_id.clone());
        let name = &self.params.rds_snapshot;
        if self.params.dry_run {
            return match crate::aws::rds::describe_db_instances(&self.ctx.aws.rds).await {
                Ok(dbs) if dbs.iter().any(|d| d.id == instance) => (StepState::Planned, format!("would snapshot {instance} as {name}"), Value::Null),
                Ok(_) => (StepState::Failed, format!("RDS has no instance {instance:?} to snapshot"), Value::Null),
                Err(e) => aws_detail(&e),
            };
        }
        let created = match snapshots::ensure_db_snapshot(&self.ctx.aws.rds, &instance, name, &self.snapshot_tags()).await {
            Ok(c) => c,
            Err(e) => return aws_detail(&e),
        };
        let data = json!({"instance": instance, "snapshot": name, "created_now": created});
        match snapshots::wait_db_snapshot(&self.ctx.aws.rds, name, self.m.snapshot_deadline, self.m.snapshot_poll).await {
            Ok(WaitOutcome::Ready) => (StepState::Succeeded, format!("{name} of {instance} available"), data),
            Ok(WaitOutcome::Failed(id, st)) => (StepState::Failed, format!("snapshot {id} is {st}"), data),
            Ok(WaitOutcome::DeadlineExceeded(_)) => {
                (StepState::TimedOut, format!("{name} not available within {}", humantime::format_duration(self.m.snapshot_deadline)), data)
            }
            Err(e) => aws_detail(&e),
        }
    }

    /// One host phase over the fleet with the rollout engine. `skip` are hosts that
    /// must not take part (with why). Returns each host's end and why the rollout
    /// stopped, if it did.
    async fn rollout(&self, phase: Phase, skip: &[(String, String)]) -> (Vec<(String, HostState)>, Option<String>) {
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        let mut skip = skip.to_vec();
        for h in &self.hosts {
            let all_done = phase_steps(&self.m, &h.name, self.params.dry_run, phase)
                .iter()
                .all(|s| self.rec.done(&s.name, Some(&h.name)).is_some());
            if all_done && !skip.iter().any(|(n, _)| n == &h.name) {
                skip.push((h.name.clone(), "done in the run being resumed".into()));
            }
        }
        let policy = self.policy.clone();
        // The executor's own timeout is a backstop: each step's job carries the host's
        // remaining time to the agent, which ends it there.
        let backstop = policy.host_timeout + Duration::from_secs(60);
        let rollout = plan(&names, &skip, &policy);
        let signals = Signals { stop: self.stop.clone() };
        let (hosts, stop) = executor::execute(
            rollout,
            backstop,
            signals,
            |p| match p {
                Progress::Ended { host, state, reason, .. } => {
                    self.rec.append(&Event::HostEnded {
                        host: host.to_string(),
                        state,
                        reason: reason.to_string(),
                        at_unix_ms: Utc::now().timestamp_millis(),
                    });
                    self.rec.events.host_ended(host, state.label(), reason);
                }
                Progress::Stopping { reason } => self.rec.events.note("stopping", &reason),
                Progress::Started { .. } => {}
            },
            |_, name, cancel| self.host_phase(phase, name, cancel, policy.host_timeout),
        )
        .await;
        // Hosts that never started get their ending recorded too, and their steps not run.
        for h in &hosts {
            if matches!(h.state, HostState::NotStarted | HostState::Skipped) {
                self.rec.append(&Event::HostEnded {
                    host: h.name.clone(),
                    state: h.state,
                    reason: h.reason.clone(),
                    at_unix_ms: Utc::now().timestamp_millis(),
                });
                self.rec.events.host_ended(&h.name, h.state.label(), &h.reason);
                if h.state == HostState::NotStarted {
                    for st in phase_steps(&self.m, &h.name, self.params.dry_run, phase) {
                        self.rec.not_run(&st.name, Some(&h.name), &h.reason);
                    }
                }
            }
        }
        (hosts.iter().map(|h| (h.name.clone(), h.state)).collect(), stop.map(|s| s.to_string()))
    }

    /// One host's steps of a phase, in order; the first that does not succeed ends the
    /// host, and the steps after it are recorded as not run.
    async fn host_phase(&self, phase: Phase, name: String, cancel: watch::Receiver<bool>, host_timeout: Duration) -> (HostState, String) {
        let Some(host) = self.hosts.iter().find(|h| h.name == name) else {
            return (HostState::Failed, "not in the fleet".into());
        };
        let steps = phase_steps(&self.m, &name, self.params.dry_run, phase);
        if let Some(why) = &host.undialable {
            let why = why.to_string();
            for s in &steps {
                self.rec.not_run(&s.name, Some(&name), &why);
            }
            return (HostState::Unreachable, why);
        }
        let deadline = Instant::now() + host_timeout;
        let log_path = self.run_dir.join(format!("{name}.log"));
        let mut log: Box<dyn std::io::Write + Send> = match std::fs::OpenOptions::new().create(true).append(true).open(&log_path) {
            Ok(f) => Box::new(f),
            Err(_) => Box::new(std::io::sink()),
        };
        let mut warnings = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            if self.rec.done(&step.name, Some(&name)).is_some() {
                continue;
            }
            let Some(spec) = step.spec.clone() else {
                self.rec.ended(&step.name, Some(&name), StepState::Planned, &format!("would {}", step.what), Instant::now(), Value::Null);
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let ended = |state: HostState, why: String| {
                for later in &steps[i + 1..] {
                    self.rec.not_run(&later.name, Some(&name), &format!("an earlier step on this host ended {}", state.label()));
                }
                (state, why)
            };
            if left.is_zero() || !self.rec.healthy() {
                self.rec.not_run(&step.name, Some(&name), "the host's time ran out");
                return ended(HostState::TimedOut, format!("host timeout of {} ran out", humantime::format_duration(host_timeout)));
            }
            let key_step = step.name.replace(' ', "-");
            let since = self.rec.started(&step.name, Some(&name), Some(journal::idempotency_key(&self.id, &name, &key_step)));
            let timeout = self.m.step_timeout.min(left);
            let out = run_job_step(&self.dialer, host, &self.id, &key_step, spec, Some(timeout), cancel.clone(), &mut *log).await;
            let (state, detail) = (out.state, out.detail.clone());
            self.rec.ended(&step.name, Some(&name), state, &detail, since, out.data.clone());
            let why = format!("{}: {detail}", step.name);
            match state {
                StepState::Succeeded | StepState::Skipped | StepState::Planned => {}
                StepState::Warning => warnings.push(why),
                StepState::TimedOut => return ended(HostState::TimedOut, why),
                StepState::Cancelled => return ended(HostState::Cancelled, why),
                StepState::Failed | StepState::NotRun if out.unreachable => return ended(HostState::Unreachable, why),
                StepState::Failed | StepState::NotRun => return ended(HostState::Failed, why),
            }
        }
        (HostState::Succeeded, warnings.join("; "))
    }

    /// Steps 7–9: a read-only runbook with a fresh deadline; its full report is kept in
    /// the run's folder. The performance baseline is compared with the last run's.
    async fn runbook(&self, step: &str, which: Which) -> (StepState, String, Value) {
        let report = runbooks::run(which, &self.fresh_ctx()).await;
        let stem = runbooks::report_stem(&report);
        let written = report.write(&self.run_dir, &stem);
        let outcome = report.outcome();
        let failed: Vec<&str> = report.checks.iter().filter(|c| c.status == runbooks::report::Status::Fail).map(|c| c.name.as_str()).collect();
        let skipped: Vec<&str> = report.checks.iter().filter(|c| c.status == runbooks::report::Status::Skipped).map(|c| c.name.as_str()).collect();
        let mut detail = format!("{} checks: {} ok, {} warnings", report.checks.len(), report.count(runbooks::report::Status::Ok), report.count(runbooks::report::Status::Warn));
        if !failed.is_empty() {
            detail.push_str(&format!("; failed: {}", failed.join(", ")));
        }
        if !skipped.is_empty() {
            detail.push_str(&format!("; not checked: {}", skipped.join(", ")));
        }
        let mut data = json!({"outcome": outcome, "failed": failed, "not_checked": skipped});
        match &written {
            Ok((txt, _)) => data["report"] = json!(txt),
            Err(e) => detail.push_str(&format!("; its report could not be kept: {e}")),
        }
        if step == steps::PERFORMANCE_BASELINE {
            detail.push_str(&self.keep_baseline(&report));
        }
        let state = match outcome {
            runbooks::report::Outcome::Passed => StepState::Succeeded,
            runbooks::report::Outcome::Incomplete => StepState::Warning,
            runbooks::report::Outcome::Failed | runbooks::report::Outcome::CouldNotRun => StepState::Failed,
        };
        (state, detail, data)
    }

    /// Keeps the performance figures with the run and compares them with the previous
    /// run's; returns a note for the step's detail.
    fn keep_baseline(&self, report: &runbooks::report::Report) -> String {
        let path = self.run_dir.join("performance-baseline.json");
        let now = report.to_json();
        if let Err(e) = std::fs::write(&path, serde_json::to_vec_pretty(&now).unwrap_or_default()) {
            return format!("; the baseline could not be kept: {e}");
        }
        let runs_dir = match self.run_dir.parent() {
            Some(d) => d,
            None => return String::new(),
        };
        let previous = journal::list_runs(runs_dir.parent().unwrap_or(runs_dir)).unwrap_or_default().into_iter().filter(|r| *r != self.id).find_map(|r| {
            let text = std::fs::read(runs_dir.join(&r).join("performance-baseline.json")).ok()?;
            Some((r, serde_json::from_slice::<Value>(&text).ok()?))
        });
        let Some((prev_id, prev)) = previous else {
            return "; baseline kept (no earlier run to compare with)".into();
        };
        let status = |v: &Value| -> BTreeMap<String, String> {
            v["checks"].as_array().into_iter().flatten().filter_map(|c| Some((c["name"].as_str()?.to_string(), c["status"].as_str()?.to_string()))).collect()
        };
        let (a, b) = (status(&prev), status(&now));
        let changed: Vec<String> = b.iter().filter(|(k, v)| a.get(*k).is_some_and(|old| old != *v)).map(|(k, v)| format!("{k} {} -> {v}", a[k])).collect();
        if changed.is_empty() {
            format!("; baseline kept, no check changed since run {prev_id}")
        } else {
            format!("; baseline kept, changed since run {prev_id}: {}", changed.join(", "))
        }
    }

    /// Step 10: wait for the services to settle, then the daily health check until it
    /// passes (or the deadline), and every agent answering.
    async fn verify(&self) -> (StepState, String, Value) {
        let settle = Duration::from_secs(self.params.settle_secs);
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(settle) => {}
            _ = stop.wait_for(|n| *n > 0) => return (StepState::NotRun, "interrupted by the operator during the settle time".into(), Value::Null),
        }
        let deadline = Instant::now() + self.m.verify_deadline;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let health = runbooks::run(Which::DailyHealthCheck, &self.fresh_ctx()).await;
            let rows = crate::commands::ping::ping(&self.dialer, &self.hosts, false).await;
            let silent: Vec<String> = rows.iter().filter(|r| !r.reachable).map(|r| r.name.clone()).collect();
            let failed: Vec<String> = health
                .checks
                .iter()
                .filter(|c| matches!(c.status, runbooks::report::Status::Fail | runbooks::report::Status::Skipped))
                .map(|c| format!("{} ({})", c.name, c.status.label()))
                .collect();
            let passed = health.outcome() == runbooks::report::Outcome::Passed && silent.is_empty();
            let summary = if passed {
                format!("daily health check passed on attempt {attempts}; all {} agents answering", rows.len())
            } else {
                format!(
                    "after {attempts} attempt(s): health check {}{}; agents not answering: {}",
                    health.outcome().exit_code(),
                    if failed.is_empty() { String::new() } else { format!(", not passing: {}", failed.join(", ")) },
                    if silent.is_empty() { "none".into() } else { silent.join(", ") }
                )
            };
            let stem = format!("verification-{}", runbooks::report_stem(&health));
            let _ = health.write(&self.run_dir, &stem);
            let data = json!({"summary": summary, "attempts": attempts, "health_passed": health.outcome() == runbooks::report::Outcome::Passed, "not_passing": failed, "agents_not_answering": silent});
            if passed {
                return (StepState::Succeeded, summary, data);
            }
            if Instant::now() + self.m.verify_interval > deadline || self.stopped_by_operator() {
                return (StepState::Failed, summary, data);
            }
            tokio::time::sleep(self.m.verify_interval).await;
        }
    }
}
