//! `controller incident high-cpu`: the seed's "High CPU Utilization" runbook, done from the
//! fleet's own data. Without a host it takes the hosts in the runbook's trigger
//! (CloudWatch CPU average above `[incident] cpu_threshold` for `cpu_trigger`) instead of
//! the first instance. For each: the last hour of CloudWatch CPU, the live view from the
//! agent (full screen on a terminal, or `--count N` snapshots), the application's ERROR
//! events of the last hour, then the mitigations asked for, each shown, confirmed and
//! recorded. The report is a timeline: what was seen, what was done, when, by whom.
//!
//! Nothing changes without a confirmation on a terminal or `--yes`; a mitigation that
//! could not run is reported as not done, never as done.

pub mod config;
pub mod cpu;
pub mod db;
pub mod live;
pub mod mitigate;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::aws::cloudwatch::{self, StatsQuery};
use crate::aws::instances::{self, InstanceFacts};
use crate::aws::logs::{self, LogQuery};
use crate::aws::AwsClients;
use crate::client::Dialer;
use crate::commands::diag::{self, DiagOptions};
use crate::config::ControllerConfig;
use crate::fleet::Host;
use crate::output::OutputFormat;
use mitigate::{Mitigation, Planned};

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct HighCpuOptions {
    /// A host name or instance id; None: the hosts in the trigger.
    pub host: Option<String>,
    pub interval: Duration,
    /// Snapshots to show without the full-screen view (the default without a terminal: 3).
    pub count: Option<u32>,
    pub yes: bool,
    pub restart_services: bool,
    pub scale_up: bool,
    pub add_instance: bool,
    pub kill: Option<i32>,
    pub report_dir: Option<PathBuf>,
}

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub time: DateTime<Utc>,
    /// `seen`, `done`, `not-done`, `refused`, `declined`.
    pub kind: &'static str,
    pub what: String,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

/// The incident's record.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    pub incident: &'static str,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The operator certificate's name.
    pub by: String,
    pub hosts: Vec<String>,
    pub timeline: Vec<Event>,
    /// 0: everything was seen and every mitigation asked for was done; 1: something could
    /// not be read, or a mitigation was refused, declined or failed.
    pub exit_code: i32,
    /// Where the reports and the audit log go.
    #[serde(skip)]
    dir: PathBuf,
}

/// The audit log of changes made by incidents, beside their reports: one JSON line per
/// confirmed change, written and fsynced before the change starts and again with its end.
pub const AUDIT_FILE: &str = "incident-audit.jsonl";

impl Incident {
    /// An incident whose reports and audit lines go to `report_dir` (default
    /// `$XDG_STATE_HOME/ops/reports`), which is made now so that a change is never started
    /// that could not be audited.
    pub(crate) fn new(kind: &'static str, by: String, report_dir: Option<&std::path::Path>) -> anyhow::Result<Incident> {
        let dir = match report_dir {
            Some(d) => d.to_path_buf(),
            None => crate::runbooks::default_report_dir()?,
        };
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot create the report folder {}: {e}", dir.display()))?;
        Ok(Incident { incident: kind, started_at: Utc::now(), finished_at: Utc::now(), by, hosts: Vec::new(), timeline: Vec::new(), exit_code: 0, dir })
    }

    /// Appends one audit line (fsynced).
    fn audit(&self, event: &str, what: &str) -> std::io::Result<()> {
        use std::io::Write;
        let line = json!({"time": Utc::now(), "incident": self.incident, "started_at": self.started_at, "by": self.by, "event": event, "what": what});
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(AUDIT_FILE))?;
        writeln!(f, "{line}")?;
        f.sync_all()
    }

    /// Before a confirmed change: its audit line, or (when that cannot be written) a
    /// not-done event and false, so that the change does not happen unaudited.
    pub(crate) fn begin_change(&mut self, what: &str) -> bool {
        match self.audit("start", what) {
            Ok(()) => true,
            Err(e) => {
                self.note("not-done", format!("{what}: not started: cannot write the audit log {}: {e}", self.dir.join(AUDIT_FILE).display()), json!(null));
                false
            }
        }
    }

    /// After a change: how it ended, in the audit log too.
    pub(crate) fn end_change(&mut self, ok: bool, what: String, data: serde_json::Value) {
        if let Err(e) = self.audit(if ok { "done" } else { "failed" }, &what) {
            eprintln!("warning: cannot append to the audit log {}: {e}", self.dir.join(AUDIT_FILE).display());
        }
        self.note(if ok { "done" } else { "not-done" }, what, data);
    }

    /// Writes the report (text and JSON) and says where; returns the exit code.
    pub(crate) fn finish(mut self, output: OutputFormat) -> anyhow::Result<i32> {
        self.finished_at = Utc::now();
        let dir = self.dir.clone();
        let stem = format!("incident-{}-{}", self.incident, self.started_at.format("%Y%m%d-%H%M%S"));
        std::fs::write(dir.join(format!("{stem}.txt")), self.render())?;
        std::fs::write(dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&self)?)?;
        match output {
            OutputFormat::Json => eprintln!("Report saved to: {}", dir.join(format!("{stem}.txt")).display()),
            OutputFormat::Table => println!("\n{}Report saved to: {}", self.render(), dir.join(format!("{stem}.txt")).display()),
        }
        Ok(self.exit_code)
    }

    /// Records one event; anything not seen or done (refused, declined, not done) makes the
    /// incident's exit code 1: it did not do or could not see all it was asked to.
    fn note(&mut self, kind: &'static str, what: impl Into<String>, data: serde_json::Value) {
        let what = what.into();
        if !matches!(kind, "seen" | "done") {
            self.exit_code = self.exit_code.max(1);
        }
        eprintln!("[{}] {kind}: {what}", Utc::now().format("%H:%M:%S"));
        self.timeline.push(Event { time: Utc::now(), kind, what, data });
    }

    /// The text report.
    pub fn render(&self) -> String {
        let mut s = format!(
            "Incident {}, {} to {} UTC, by {}\nHosts: {}\n\nTimeline:\n",
            self.incident,
            self.started_at.format("%Y-%m-%d %H:%M:%S"),
            self.finished_at.format("%H:%M:%S"),
            self.by,
            if self.hosts.is_empty() { "none in the trigger".into() } else { self.hosts.join(", ") }
        );
        for e in &self.timeline {
            s.push_str(&format!("  {}  {:<8} {}\n", e.time.format("%H:%M:%S"), e.kind, e.what));
        }
        s
    }
}

/// The top processes of a snapshot, as the timeline keeps them.
fn top_json(s: &ops_proto::v1::Snapshot) -> serde_json::Value {
    json!({
        "cpu_percent": s.cpu_percent,
        "per_core_percent": s.per_core_percent,
        "top": s.top_by_cpu.iter().take(5).map(|p| json!({"pid": p.pid, "name": p.name, "user": p.user, "cpu_percent": p.cpu_percent})).collect::<Vec<_>>(),
    })
}

fn top_line(s: &ops_proto::v1::Snapshot) -> String {
    let tops: Vec<String> = s.top_by_cpu.iter().take(3).map(|p| format!("{} {} {:.0} %", p.pid, p.name, p.cpu_percent)).collect();
    format!("CPU {:.1} %; top: {}", s.cpu_percent, tops.join(", "))
}

/// `controller incident high-cpu`.
pub async fn high_cpu(cfg: &ControllerConfig, opts: &HighCpuOptions, output: OutputFormat) -> anyhow::Result<i32> {
    let ic = &cfg.incident;
    let aws = AwsClients::load(&cfg.aws).await?;
    let dialer = Dialer::from_config(cfg).ok();
    let by = operator_name(cfg);
    let mut inc = Incident::new("high-cpu", by, opts.report_dir.as_deref())?;
    let fleet = crate::fleet::discover(cfg).await?;
    let now = Utc::now();
    let hour_ago = now - chrono::Duration::hours(1);
    // The hosts: the one named, or those in the trigger.
    let mut targets: Vec<(Host, Vec<cpu::Period>)> = Vec::new();
    let window = (ic.cpu_trigger.as_secs() / 300) as usize;
    for h in &fleet {
        let named = opts.host.as_deref().is_some_and(|n| n == h.name || h.instance_id.as_deref() == Some(n));
        if opts.host.is_some() && !named {
            continue;
        }
        let periods = match &h.instance_id {
            Some(id) => {
                let dims = BTreeMap::from([("InstanceId".to_string(), id.clone())]);
                let q = StatsQuery { namespace: "AWS/EC2", metric: "CPUUtilization", dimensions: &dims, start: hour_ago, end: now, period_secs: 300 };
                match cloudwatch::metric_statistics(&aws.cloudwatch, &q).await {
                    Ok(points) => cpu::periods(&points, hour_ago, now),
                    Err(e) => {
                        inc.note("not-done", format!("{}: CloudWatch CPU not read: {e}", h.name), json!(null));
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        if named || cpu::triggered(&periods, window, ic.cpu_threshold) {
            targets.push((h.clone(), periods));
        }
    }
    if let Some(n) = &opts.host {
        if targets.is_empty() {
            anyhow::bail!("no host {n:?} in the fleet ({} hosts discovered)", fleet.len());
        }
    }
    inc.hosts = targets.iter().map(|(h, _)| h.name.clone()).collect();
    if targets.is_empty() {
        inc.note(
            "seen",
            format!("no host has averaged above {:.0} % CPU for {} minutes (CloudWatch); name one with --host", ic.cpu_threshold, ic.cpu_trigger.as_secs() / 60),
            json!(null),
        );
    }
    let asked = asked_mitigations(opts, ic);
    if !asked.is_empty() && targets.len() > 1 {
        anyhow::bail!("{} hosts are in the trigger ({}); mitigations need one: name it with --host", targets.len(), inc.hosts.join(", "));
    }
    for (host, periods) in &targets {
        if output == OutputFormat::Table {
            print!("{}", cpu::render(&host.name, periods));
        }
        let avgs: Vec<Option<f64>> = periods.iter().map(|p| p.average).collect();
        inc.note("seen", format!("{}: CloudWatch CPU per 5 min, last hour: {}", host.name, cpu::sparkline(&avgs)), json!(periods));
        let picked_kill = look(&mut inc, dialer.as_ref(), host, opts, output).await;
        errors(&mut inc, &aws, &cfg.runbooks.app_log_group, hour_ago, now, output).await;
        let mut asked = asked.clone();
        if let Some((pid, name)) = picked_kill {
            asked.push(Mitigation::Kill { pid, expected_name: name });
        }
        if !asked.is_empty() {
            mitigate(&mut inc, cfg, &aws, dialer.as_ref(), host, &asked, opts.yes).await;
        }
        // How the host looks at the end.
        if let Some(d) = &dialer {
            if let Ok(mut c) = d.connect(host).await {
                if let Ok(s) = c.get_snapshot(ops_proto::v1::SnapshotRequest { top_n: 5, cpu_interval_ms: 0 }).await {
                    let s = s.into_inner();
                    inc.note("seen", format!("{} at the end: {}", host.name, top_line(&s)), top_json(&s));
                }
            }
        }
    }
    inc.finish(output)
}

pub(crate) fn operator_name(cfg: &ControllerConfig) -> String {
    cfg.tls()
        .ok()
        .and_then(|t| ops_proto::tls::load_certs(&t.cert, "certificate").ok())
        .and_then(|c| c.first().and_then(|c| ops_proto::identity::PeerIdentity::from_der(c.as_ref()).ok()))
        .map(|id| id.name)
        .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

fn asked_mitigations(opts: &HighCpuOptions, ic: &config::IncidentConfig) -> Vec<Mitigation> {
    let mut m = Vec::new();
    if opts.restart_services {
        m.push(Mitigation::RestartServices { services: ic.services.clone() });
    }
    if let Some(pid) = opts.kill {
        m.push(Mitigation::Kill { pid, expected_name: String::new() });
    }
    if opts.scale_up {
        m.push(Mitigation::ScaleUp { to: ic.scale_up_type.clone().unwrap_or_default() });
    }
    if opts.add_instance {
        m.push(Mitigation::AddInstance);
    }
    m
}

/// The live view; returns a process the operator picked to kill in the full-screen view.
async fn look(inc: &mut Incident, dialer: Option<&Dialer>, host: &Host, opts: &HighCpuOptions, output: OutputFormat) -> Option<(i32, String)> {
    let Some(d) = dialer else {
        inc.note("not-done", format!("{}: live view not shown: no agent credentials ([tls])", host.name), json!(null));
        return None;
    };
    let full_screen = opts.count.is_none() && output == OutputFormat::Table && std::io::stdout().is_terminal();
    if full_screen {
        return match live::interactive(d, host, opts.interval).await {
            Ok(live::Exit::Quit) => None,
            Ok(live::Exit::Kill { pid, name }) => Some((pid, name)),
            Err(e) => {
                inc.note("not-done", format!("{}: live view failed: {e}", host.name), json!(null));
                None
            }
        };
    }
    let dopts = DiagOptions { follow: true, interval: opts.interval, top: 10, count: Some(opts.count.unwrap_or(3)), output };
    let mut first: Option<ops_proto::v1::Snapshot> = None;
    let mut stdout = std::io::stdout();
    let mut sink = |s: &ops_proto::v1::Snapshot| {
        if first.is_none() {
            first = Some(s.clone());
        }
        match output {
            OutputFormat::Json => {
                use std::io::Write;
                writeln!(stdout, "{}", json!({"host": host.name, "snapshot": diag::snapshot_json(s)}))?;
                stdout.flush()
            }
            OutputFormat::Table => {
                use std::io::Write;
                writeln!(stdout, "{}", diag::render(s, &host.name))
            }
        }
    };
    match diag::follow(d, host, &dopts, &mut sink).await {
        Ok(_) => {
            if let Some(s) = &first {
                inc.note("seen", format!("{} at the start: {}", host.name, top_line(s)), top_json(s));
            }
        }
        Err(e) => {
            inc.exit_code = inc.exit_code.max(1);
            inc.note("not-done", format!("{}: the agent did not answer: {e}", host.name), json!(null));
        }
    }
    None
}

/// The application's ERROR events of the last hour, newest first.
async fn errors(inc: &mut Incident, aws: &AwsClients, group: &str, start: DateTime<Utc>, end: DateTime<Utc>, output: OutputFormat) {
    const SHOWN: usize = 20;
    let q = LogQuery { group, start, end, pattern: Some("ERROR"), page_limit: None };
    let mut events = Vec::new();
    match logs::scan_events(&aws.logs, &q, |e| events.push(e)).await {
        Ok(_) => {
            events.sort_by(|a, b| b.timestamp_ms.cmp(&a.timestamp_ms));
            if output == OutputFormat::Table {
                println!("ERROR events in {group}, last hour: {}", events.len());
                for e in events.iter().take(SHOWN) {
                    let t = DateTime::from_timestamp_millis(e.timestamp_ms).map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_default();
                    println!("  {t}  {}  {}", e.stream, e.message.trim_end());
                }
                if events.len() > SHOWN {
                    println!("  ({} older not shown)", events.len() - SHOWN);
                }
            }
            let newest: Vec<_> = events.iter().take(SHOWN).collect();
            inc.note("seen", format!("{} ERROR event(s) in {group} in the last hour", events.len()), json!(newest));
        }
        Err(e) => inc.note("not-done", format!("ERROR events of {group} not read: {e}"), json!(null)),
    }
}

async fn mitigate(inc: &mut Incident, cfg: &ControllerConfig, aws: &AwsClients, dialer: Option<&Dialer>, host: &Host, asked: &[Mitigation], yes: bool) {
    let ic = &cfg.incident;
    let facts: Option<InstanceFacts> = match &host.instance_id {
        Some(id) => instances::facts(&aws.ec2, id).await.ok(),
        None => None,
    };
    let mut asked = asked.to_vec();
    // A kill by pid names the process it expects, so that a reused pid is never hit: the
    // name comes from the host's own process list now.
    for m in &mut asked {
        if let Mitigation::Kill { pid, expected_name } = m {
            if expected_name.is_empty() {
                if let Some(name) = process_name(dialer, host, *pid).await {
                    *expected_name = name;
                }
            }
        }
    }
    for m in &mut asked {
        if let Mitigation::ScaleUp { to } = m {
            if to.is_empty() {
                inc.exit_code = inc.exit_code.max(1);
                inc.note("refused", "scale up: no target type configured ([incident] scale_up_type)", json!(null));
            }
        }
    }
    asked.retain(|m| !matches!(m, Mitigation::ScaleUp { to } if to.is_empty()));
    let planned: Vec<Planned> = mitigate::plan(&asked, &host.name, facts.as_ref(), ic);
    let user_data = match (&ic.agent_url, &ic.agent_sha256, cfg.tls()) {
        (Some(url), Some(sha), Ok(tls)) => std::fs::read_to_string(&tls.ca).ok().and_then(|ca_pem| {
            let p = crate::install::user_data::UserDataParams { agent_url: url.clone(), agent_sha256: sha.clone(), ca_pem, agent_port: cfg.fleet.agent_port };
            crate::install::user_data::render(&p).ok().map(|doc| base64_encode(doc.as_bytes()))
        }),
        _ => None,
    };
    for p in planned {
        if let Some(why) = &p.refused {
            inc.exit_code = inc.exit_code.max(1);
            inc.note("refused", format!("{}: {why}", p.what), json!(p.mitigation));
            continue;
        }
        println!("Mitigation: {}", p.what);
        if !confirmed(yes) {
            inc.exit_code = inc.exit_code.max(1);
            inc.note("declined", format!("{} (not confirmed; nothing changed)", p.what), json!(p.mitigation));
            continue;
        }
        let ctx = mitigate::Ctx {
            dialer,
            ec2: Some(&aws.ec2),
            cfg: ic,
            host,
            facts: facts.as_ref(),
            fleet_tags: &cfg.fleet.tag_filters,
            user_data_b64: user_data.clone(),
        };
        if !inc.begin_change(&p.what) {
            continue;
        }
        let done = mitigate::run(&p.mitigation, &ctx).await;
        inc.end_change(done.ok, format!("{}: {}", p.what, done.steps.join("; ")), json!({"mitigation": p.mitigation, "steps": done.steps}));
    }
}

/// The name of process `pid` in the host's top lists (CPU and memory, 200 each), if there.
async fn process_name(dialer: Option<&Dialer>, host: &Host, pid: i32) -> Option<String> {
    let mut c = dialer?.connect(host).await.ok()?;
    let s = c.get_snapshot(ops_proto::v1::SnapshotRequest { top_n: 200, cpu_interval_ms: 0 }).await.ok()?.into_inner();
    s.top_by_cpu.iter().chain(&s.top_by_memory).find(|p| p.pid == pid).map(|p| p.name.clone())
}

/// On a terminal, asks; without one, only `--yes` confirms.
pub(crate) fn confirmed(yes: bool) -> bool {
    if yes {
        return true;
    }
    if !std::io::stdin().is_terminal() {
        eprintln!("not confirmed: there is no terminal to ask on; pass --yes");
        return false;
    }
    eprint!("Proceed? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
