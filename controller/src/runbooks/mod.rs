//! The read-only runbooks (daily health check, performance monitoring, backup
//! verification, security review): each gathers facts from AWS and the agents, decides
//! checks with pure functions over those facts, and returns a `Report`. Runbooks here
//! never change anything in AWS or on a host.

pub mod agents;
pub mod backup_verify;
pub mod checks;
pub mod config;
pub mod daily_health_check;
pub mod performance_monitoring;
pub mod probe;
pub mod report;
pub mod security_review;
pub mod targets;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Local, Utc};

use crate::aws::ec2::Instance;
use crate::aws::{AwsClients, AwsError};
use crate::client::Dialer;
use crate::config::{ControllerConfig, FleetConfig, FleetSource};
use crate::output::OutputFormat;
use config::RunbooksConfig;
use report::{Check, Report};
use targets::Targets;

/// Everything a runbook needs, built once per run.
#[derive(Clone)]
pub struct Context {
    pub aws: AwsClients,
    pub runbooks: RunbooksConfig,
    pub fleet: FleetConfig,
    /// None when the agent credentials could not be loaded: agent checks are skipped
    /// with `dialer_error` as the reason.
    pub dialer: Option<Dialer>,
    pub dialer_error: Option<String>,
    /// The run's clock: every window is measured from it.
    pub now: DateTime<Utc>,
    /// When the run must end: every AWS call, probe and agent question is bounded by it.
    pub deadline: tokio::time::Instant,
    /// Agent certificates expiring within this window are warned about (`[enrol] rotate_before`).
    pub cert_window: std::time::Duration,
}

/// A runbook could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunbookError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Aws(#[from] crate::aws::AwsSetupError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error("no folder for the reports ({0}); name one with --report-dir")]
    ReportDir(String),
}

impl Context {
    /// Loads the AWS clients and the agent dialer from the controller config.
    pub async fn from_config(cfg: &ControllerConfig) -> Result<Context, RunbookError> {
        let aws = AwsClients::load(&cfg.aws).await?;
        let (dialer, dialer_error) = match Dialer::from_config(cfg) {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(format!("agent credentials not loaded: {e}"))),
        };
        let deadline = tokio::time::Instant::now() + cfg.runbooks.deadline;
        Ok(Context {
            aws,
            runbooks: cfg.runbooks.clone(),
            fleet: cfg.fleet.clone(),
            dialer,
            dialer_error,
            now: Utc::now(),
            deadline,
            cert_window: cfg.enrol.rotate_before,
        })
    }

    /// Runs one AWS call within the run's deadline: a call still unanswered then fails
    /// (its own check only), named by service and call.
    pub async fn bounded<T>(
        &self,
        service: &'static str,
        call: &'static str,
        fut: impl std::future::Future<Output = Result<T, AwsError>>,
    ) -> Result<T, AwsError> {
        match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(AwsError { service, call, cause: crate::aws::AwsCause::DeadlineExceeded(self.runbooks.deadline) }),
        }
    }

    /// The fleet's instances in every state but gone (the daily check shows stopped ones
    /// too; terminated instances are no longer part of the fleet and are never counted).
    /// A static inventory has no EC2 instances: none are listed (an empty tag filter would
    /// otherwise list every instance of the account).
    pub async fn tagged_instances(&self) -> Result<Vec<Instance>, AwsError> {
        const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];
        if self.fleet.source == FleetSource::Static {
            return Ok(Vec::new());
        }
        self.bounded("EC2", "DescribeInstances", crate::aws::ec2::describe_instances(&self.aws.ec2, &self.fleet.tag_filters, &LIVE_STATES)).await
    }

    /// Where this run looks: its agents, URLs and HTTPS endpoints are chosen there, and
    /// only there.
    pub fn targets(&self) -> Targets<'_> {
        Targets { fleet: &self.fleet, runbooks: &self.runbooks, local_emulator: self.aws.local_emulator }
    }

    /// Why agent checks cannot run, when they cannot.
    pub fn agents_unavailable(&self, name: &str) -> Option<Check> {
        match &self.dialer {
            Some(_) => None,
            None => Some(Check::skipped(name, self.dialer_error.clone().unwrap_or_else(|| "no agent credentials".into()))),
        }
    }
}

/// Which runbook to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    DailyHealthCheck,
    PerformanceMonitoring { hours: u32 },
    BackupVerify,
    SecurityReview,
}

/// Runs one runbook against a ready context.
pub async fn run(which: Which, ctx: &Context) -> Report {
    match which {
        Which::DailyHealthCheck => daily_health_check::run(ctx).await,
        Which::PerformanceMonitoring { hours } => performance_monitoring::run(ctx, hours).await,
        Which::BackupVerify => backup_verify::run(ctx).await,
        Which::SecurityReview => security_review::run(ctx).await,
    }
}

/// The report's file name without extension, e.g. `daily-report-20261130`.
pub fn report_stem(report: &Report) -> String {
    let day = report.started_at.with_timezone(&Local).format("%Y%m%d");
    let prefix = match report.runbook.as_str() {
        "daily-health-check" => "daily-report",
        "performance-monitoring" => "performance-report",
        "backup-verify" => "backup-report",
        "security-review" => "security-review",
        other => other,
    };
    format!("{prefix}-{day}")
}

/// Where reports go without `--report-dir`: `$XDG_STATE_HOME/ops/reports`.
pub fn default_report_dir() -> Result<std::path::PathBuf, crate::rollout::journal::JournalError> {
    Ok(crate::rollout::journal::state_root()?.join("reports"))
}

/// What the command line may change about one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Folder for the report files; default `default_report_dir()`.
    pub report_dir: Option<PathBuf>,
    /// The whole run's deadline in place of `[runbooks] deadline`.
    pub deadline: Option<Duration>,
}

/// `controller <runbook>`: run, print (table or JSON), then write the reports, and return
/// the exit code (0 nothing failed, 1 a check failed or was skipped, 2 could not run).
/// The results are printed before any file is written, so a report folder that cannot be
/// written loses nothing: the error follows the printed results and the exit code is 2.
pub async fn cli(which: Which, cfg: &ControllerConfig, output: OutputFormat, args: &RunOptions) -> Result<i32, RunbookError> {
    let mut cfg = cfg.clone();
    if let Some(d) = args.deadline {
        cfg.runbooks.deadline = d;
    }
    let mut ctx = Context::from_config(&cfg).await?;
    // A bar over the agent fan-out for a person at a terminal; never in piped or JSON output.
    ctx.dialer = ctx.dialer.map(|d| d.with_progress(crate::progress::wanted(output)));
    let report = run(which, &ctx).await;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()),
        OutputFormat::Table => print!("{}", report.render_text()),
    }
    let dir = match &args.report_dir {
        Some(d) => d.clone(),
        None => default_report_dir().map_err(|e| RunbookError::ReportDir(e.to_string()))?,
    };
    let (txt, json) = report.write(&dir, &report_stem(&report))?;
    // On stderr with JSON output, so that standard output stays one JSON document.
    match output {
        OutputFormat::Json => eprintln!("Report saved to: {} and {}", txt.display(), json.display()),
        OutputFormat::Table => println!("\nReport saved to: {} and {}", txt.display(), json.display()),
    }
    Ok(report.outcome().exit_code())
}
