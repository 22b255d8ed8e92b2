//! The command line: clap definitions (doc comments are the help text) and the
//! dispatch from a parsed command to the library. Exit codes: 0 all good, 1 something
//! checked failed or a host did not answer, 2 the command could not run.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::Dialer;
use crate::commands::{diag, ping};
use crate::config::ControllerConfig;
use crate::fleet;
use crate::output::OutputFormat;
use crate::runbooks::{self, Which};

/// Drives the fleet's agents over mutual TLS and runs the operational runbooks.
#[derive(Debug, Parser)]
#[command(
    name = "controller",
    version,
    about,
    after_help = "Exit codes: 0 all good; 1 a check failed, a job did not succeed or a host did not answer; 2 the command could not run (configuration, AWS unreachable, unknown host)."
)]
pub struct Cli {
    /// Controller configuration file (TOML). Without it: ./controller.toml,
    /// $XDG_CONFIG_HOME/ops/controller.toml, /etc/ops/controller.toml, the first that exists.
    #[arg(long, global = true, env = "OPS_CONTROLLER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// AWS named profile (flag, then AWS_PROFILE, then [aws] profile).
    #[arg(long, global = true, env = "AWS_PROFILE")]
    pub profile: Option<String>,
    /// AWS region (flag, then AWS_REGION, then [aws] region).
    #[arg(long, global = true, env = "AWS_REGION")]
    pub region: Option<String>,
    /// AWS endpoint URL, e.g. a local emulator (flag, then AWS_ENDPOINT_URL, then [aws] endpoint_url).
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Where the config comes from and the AWS flags to lay over it.
    pub fn config_source(&self) -> ConfigSource {
        ConfigSource { config: self.config.clone(), profile: self.profile.clone(), region: self.region.clone(), endpoint_url: self.endpoint_url.clone() }
    }

    pub fn load_config(&self) -> Result<ControllerConfig, crate::config::ConfigError> {
        self.config_source().load()
    }
}

/// The global flags that decide the configuration.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    config: Option<PathBuf>,
    profile: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
}

impl ConfigSource {
    /// Finds, loads and validates the config file, then lays the global AWS flags (or
    /// their environment variables) over its `[aws]` section: the aws CLI's precedence.
    pub fn load(&self) -> Result<ControllerConfig, crate::config::ConfigError> {
        let path = crate::config::locate(self.config.as_deref())?;
        let mut cfg = ControllerConfig::load(&path)?;
        if let Some(p) = &self.profile {
            cfg.aws.profile = Some(p.clone());
        }
        if let Some(r) = &self.region {
            cfg.aws.region = Some(r.clone());
        }
        if let Some(e) = &self.endpoint_url {
            cfg.aws.endpoint_url = Some(e.clone());
        }
        Ok(cfg)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fleet-wide operations.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Live diagnostics of one host (processes, memory, disks, load, connections).
    Diag {
        /// Host name (from the inventory) or EC2 instance id.
        host: String,
        /// Keep refreshing until interrupted (or until --count snapshots).
        #[arg(long)]
        follow: bool,
        /// Time between snapshots when following (minimum 100ms).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Processes to show.
        #[arg(long, default_value_t = 10)]
        top: u32,
        /// Stop after this many snapshots (implies following).
        #[arg(long)]
        count: Option<u32>,
    },
    /// Typed jobs on one host: the only way to change a host.
    #[command(subcommand)]
    Job(JobCommand),
    /// Development PKI: fleet CA and certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Morning check: stack, instances, databases, application HTTP, alarms, overnight
    /// errors, newest database backup, failed logins (log group and agents).
    DailyHealthCheck(ReportArgs),
    /// CPU, memory, disk and network per instance, database CPU and connections, from
    /// CloudWatch, with the agents' live figures beside them.
    PerformanceMonitoring {
        /// Hours to look back (1 to 1440).
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=1440))]
        hours: u32,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Backups.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Weekly review: IAM users, open security groups, failed logins, CloudTrail denials,
    /// certificate expiry, listening ports, compliance.
    SecurityReview(ReportArgs),
    /// Installing agents on hosts.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// The weekly maintenance across the fleet: snapshots, rolling patches and cleanup,
    /// database upkeep with no row lost, log rotation, security review, performance
    /// baseline, backup verification, post-maintenance verification; a journal to resume
    /// from and a report of what really happened (exit 1 if any step failed or did not run).
    WeeklyMaintenance(MaintenanceArgs),
    /// The journals of fleet-wide runs (weekly-maintenance).
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Print a shell completion script: `controller completions bash > /etc/bash_completion.d/controller`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Every agent's live figures in one refreshing table, busiest host first, with the
    /// hosts that stopped answering (exit 1 if any host was not answering at the end).
    Top {
        /// Time between refreshes (minimum 100ms).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Print this many frames and exit (default on a terminal: until Ctrl-C).
        #[arg(long)]
        count: Option<u32>,
    },
    /// Incident response runbooks.
    #[command(subcommand)]
    Incident(IncidentCommand),
}

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Database connection issues: RDS status, pending maintenance and events, queries
    /// running longer than [incident] long_query, whether the hosts' security groups may
    /// reach the database, a connection and MySQL greeting from every host's agent,
    /// DatabaseConnections; then the mitigations asked for, each confirmed (or --yes).
    DbConnection {
        /// Reboot the RDS instance.
        #[arg(long)]
        reboot: bool,
        /// Kill this long-running query (its processlist id; repeatable). Never the
        /// controller's own session, only queries the incident listed.
        #[arg(long = "kill-query")]
        kill_query: Vec<u64>,
        /// Change the instance class to [incident] db_scale_up_class, applied now.
        #[arg(long)]
        scale_up: bool,
        /// Confirm every mitigation asked for (required without a terminal).
        #[arg(long)]
        yes: bool,
        /// Folder for the report (default $XDG_STATE_HOME/ops/reports).
        #[arg(long)]
        report_dir: Option<PathBuf>,
    },
    /// High CPU: CloudWatch CPU of the last hour, the host's live view from its agent
    /// (full screen on a terminal: c/m sort, up/down pick, k kill, q quit), the
    /// application's ERROR events, then the mitigations asked for, each confirmed (on a
    /// terminal, or --yes) and recorded in the incident's timeline report. Without --host,
    /// the hosts whose CloudWatch CPU has stayed above [incident] cpu_threshold.
    HighCpu {
        /// A host name or EC2 instance id (default: the hosts in the trigger).
        #[arg(long, alias = "instance")]
        host: Option<String>,
        /// Time between live snapshots (minimum 100ms).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Show this many snapshots instead of the full-screen view (default without a terminal: 3).
        #[arg(long)]
        count: Option<u32>,
        /// Restart the services of [incident] services (agent jobs).
        #[arg(long)]
        restart_services: bool,
        /// Stop the instance, change it to [incident] scale_up_type, start it, wait for its agent.
        #[arg(long)]
        scale_up: bool,
        /// Launch one more instance like this one, tagged into the fleet, with the agent's user-data.
        #[arg(long)]
        add_instance: bool,
        /// Send SIGTERM to this process (agent job; its name is checked before the signal).
        #[arg(long)]
        kill: Option<i32>,
        /// Confirm every mitigation asked for (required without a terminal).
        #[arg(long)]
        yes: bool,
        /// Folder for the report (default $XDG_STATE_HOME/ops/reports).
        #[arg(long)]
        report_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Every run with a journal, newest first, and how it ended.
    List,
    /// One run's report, rebuilt from its journal (exit code as the run's).
    Show { run_id: String },
}

/// `weekly-maintenance`'s options; the defaults come from `[maintenance]`.
#[derive(Debug, Clone, clap::Args)]
pub struct MaintenanceArgs {
    /// Show the plan and what each step would do, read from the real systems; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Only these hosts (comma-separated names or instance ids).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Continue an interrupted run: done steps are skipped, running agent jobs reattached.
    #[arg(long, value_name = "RUN_ID")]
    pub resume: Option<String>,
    /// Take over a lock whose holder is gone.
    #[arg(long)]
    pub break_lock: bool,
    /// Hosts in flight at once: N or N%.
    #[arg(long, value_parser = parse_limit)]
    pub max_concurrency: Option<crate::rollout::Limit>,
    /// Failed hosts tolerated before no new host starts: N or N%.
    #[arg(long, value_parser = parse_limit)]
    pub max_errors: Option<crate::rollout::Limit>,
    /// The first N hosts alone, then the rest.
    #[arg(long)]
    pub canary: Option<usize>,
    /// The most one host may take over all its steps, e.g. 1h.
    #[arg(long, value_parser = parse_duration)]
    pub host_timeout: Option<Duration>,
    /// Wait before the post-maintenance verification, e.g. 300s.
    #[arg(long, value_parser = parse_duration)]
    pub settle: Option<Duration>,
    /// Folder for the report files; default $XDG_STATE_HOME/ops/reports.
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
}

fn parse_limit(s: &str) -> Result<crate::rollout::Limit, String> {
    s.parse().map_err(|e: crate::rollout::LimitError| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Print (or write) the cloud-init user-data that installs the agent on a new EC2
    /// instance: download, SHA-256 check, config, fleet CA certificate, systemd unit. It
    /// carries no secret (user-data is readable on the instance).
    UserData {
        /// Where the host downloads the agent: https://... (e.g. a presigned S3 URL) or
        /// s3://bucket/key (through the instance role and the aws CLI).
        #[arg(long)]
        agent_url: String,
        /// SHA-256 of the agent binary (`sha256sum ops-agent`); any other binary is refused.
        #[arg(long)]
        agent_sha256: String,
        /// The fleet CA certificate (PEM); default: [tls] ca of the controller config.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The agent's port.
        #[arg(long, default_value_t = ops_proto::DEFAULT_AGENT_PORT)]
        port: u16,
        /// Write the document to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Where a runbook writes its text and JSON reports, and how long it may take.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Folder for the report files (created if missing); default
    /// $XDG_STATE_HOME/ops/reports (~/.local/state/ops/reports).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// The whole run's deadline, e.g. 2m (default: [runbooks] deadline, 120s). What has not
    /// answered by then is named and fails its check.
    #[arg(long, value_parser = parse_duration)]
    pub deadline: Option<Duration>,
}

impl From<ReportArgs> for runbooks::RunOptions {
    fn from(a: ReportArgs) -> Self {
        runbooks::RunOptions { report_dir: a.report_dir, deadline: a.deadline }
    }
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Retention and window per database, newest automated snapshot, last EBS
    /// snapshots, snapshot sizes over time.
    Verify(ReportArgs),
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Start a job and follow its output until it ends (exit 1 if it did not succeed).
    Start {
        /// Host name (from the inventory) or EC2 instance id.
        host: String,
        #[command(subcommand)]
        kind: crate::commands::job::KindArgs,
        /// Return once the agent has accepted the job instead of following it.
        #[arg(long, global = true)]
        detach: bool,
        /// The same key returns the same job instead of starting another (default: a fresh key).
        #[arg(long, global = true)]
        idempotency_key: Option<String>,
        /// Override the agent's default timeout for this job, e.g. 30m.
        #[arg(long, global = true, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Queue behind a running job instead of failing.
        #[arg(long, global = true)]
        queue: bool,
    },
    /// Follow a job's output (reattaches by itself after a dropped connection).
    Watch {
        host: String,
        job_id: String,
        /// Byte offset of the output to start from.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Recent jobs on a host, newest first.
    List {
        host: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One job's record.
    Get { host: String, job_id: String },
    /// Cancel a queued or running job (SIGTERM, then SIGKILL).
    Cancel { host: String, job_id: String },
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Contact every agent: reachable, identity, version, uptime, round trip.
    Ping {
        /// Also read each agent's own counters (handshakes refused, streams open,
        /// samples dropped, jobs by state, limits hit).
        #[arg(long)]
        stats: bool,
    },
    /// List the fleet as discovered (no agent is contacted).
    List,
    /// Enrol agents waiting for a certificate (installed through user-data): each proves
    /// its EC2 identity (or a join token) and gets a certificate signed by the fleet CA
    /// for the key it made itself. Hosts that already have one are left alone.
    Enroll {
        /// Only these hosts (names or instance ids, comma-separated); default: the whole fleet.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Allow an instance (or host name) that enrolled before to enrol again (a
        /// reinstalled host); its earlier certificates stay valid until removed.
        #[arg(long)]
        re_enrol: bool,
    },
    /// Print a one-time join token for a host outside EC2 (weaker than EC2's identity:
    /// whoever holds it can enrol once under that name before it expires).
    JoinToken {
        /// The host name the token is bound to (its [[fleet.hosts]] name).
        #[arg(long)]
        host: String,
        /// Lifetime (default `[enrol] join_token_ttl`, at most 24h).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Renew agent certificates that expire within the window: the agent makes a new key
    /// and CSR, the fleet CA signs, the agent switches without a restart.
    RotateCerts {
        /// The window (default `[enrol] rotate_before`, 30 days).
        #[arg(long, value_parser = parse_duration)]
        before: Option<Duration>,
        /// Only these hosts (comma-separated); default: the whole fleet.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Renew even certificates that are not due.
        #[arg(long)]
        force: bool,
    },
    /// Revoke every certificate enrolled for a host (a terminated or compromised
    /// instance), through the fleet CA's CRL.
    Remove {
        /// The host name or instance id it enrolled under.
        host: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Write a fleet CA, an operator and a viewer client certificate, an empty CRL
    /// (crl.pem) and the record of issued certificates (issued.jsonl) into DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Days the operator and viewer certificates stay valid.
        #[arg(long, default_value_t = crate::pki::CLIENT_DAYS)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue an operator or viewer client certificate: DIR/clients/NAME.pem and NAME.key.
    IssueClient {
        #[arg(long)]
        dir: PathBuf,
        /// The certificate's common name, shown in every agent's audit log.
        #[arg(long)]
        name: String,
        /// operator (may start and cancel jobs) or viewer (read-only).
        #[arg(long, value_parser = parse_role)]
        role: ops_proto::identity::Role,
        /// Days the certificate stays valid.
        #[arg(long, default_value_t = crate::pki::CLIENT_DAYS)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
    /// Revoke certificates: add them to DIR/crl.pem (earlier entries are kept). Agents
    /// whose [tls] crl names a copy of it refuse them at the handshake once reloaded.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["serial", "name"])))]
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        /// The certificate's serial in hex, with or without colons (as the audit log shows it).
        #[arg(long)]
        serial: Option<String>,
        /// Every certificate issued under this name (from DIR/issued.jsonl, else NAME.pem).
        #[arg(long)]
        name: Option<String>,
    },
    /// Issue an agent server certificate: DIR/agents/NAME.pem and NAME.key.
    IssueAgent {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// IP address SAN (repeatable).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// DNS name SAN (repeatable); default: NAME when no --ip or --dns is given.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Days the certificate stays valid.
        #[arg(long, default_value_t = crate::pki::AGENT_DAYS)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
}

fn parse_role(s: &str) -> Result<ops_proto::identity::Role, String> {
    ops_proto::identity::Role::parse(s).ok_or_else(|| format!("{s:?}: expected operator or viewer"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (examples: 500ms, 2s, 1m)"))
}

/// The exit code of a command that did run.
pub type ExitCode = i32;

/// Runs a parsed command. Errors (exit 2) are returned for the caller to print.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let output = cli.output;
    let source = cli.config_source();
    match cli.command {
        Command::Pki(cmd) => run_pki(cmd),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "controller", &mut std::io::stdout());
            Ok(0)
        }
        Command::Fleet(FleetCommand::Ping { stats }) => {
            let cfg = source.load()?;
            let hosts = fleet::discover(&cfg).await?;
            let dialer = Dialer::from_config(&cfg)?.with_progress(crate::progress::wanted(output));
            let rows = ping::ping(&dialer, &hosts, stats).await;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                OutputFormat::Table if stats => print!("{}{}", ping::render(&rows), ping::render_stats(&rows)),
                OutputFormat::Table => print!("{}", ping::render(&rows)),
            }
            Ok(if rows.iter().all(|r| r.reachable) { 0 } else { 1 })
        }
        Command::Fleet(FleetCommand::Enroll { hosts: names, re_enrol }) => {
            let cfg = source.load()?;
            let hosts = fleet::discover(&cfg).await?;
            let chosen = crate::commands::enrol::pick(&hosts, &names)?;
            let enroller = crate::commands::enrol::enroller(&cfg).await?;
            let rows = crate::commands::enrol::enrol_hosts(&enroller, &chosen, re_enrol).await;
            crate::commands::enrol::report(&rows, output)
        }
        Command::Fleet(FleetCommand::JoinToken { host, ttl }) => crate::commands::enrol::join_token(&source.load()?, &host, ttl),
        Command::Fleet(FleetCommand::RotateCerts { before, hosts: names, force }) => {
            let cfg = source.load()?;
            let hosts = fleet::discover(&cfg).await?;
            let chosen = crate::commands::enrol::pick(&hosts, &names)?;
            let enroller = crate::commands::enrol::enroller(&cfg).await?;
            let window = before.unwrap_or(cfg.enrol.rotate_before);
            let rows = crate::commands::enrol::rotate_hosts(&enroller, &chosen, window, force).await;
            crate::commands::enrol::report(&rows, output)
        }
        Command::Fleet(FleetCommand::Remove { host }) => crate::commands::enrol::remove(&source.load()?, &host, output),
        Command::Fleet(FleetCommand::List) => {
            let cfg = source.load()?;
            let hosts = fleet::discover(&cfg).await?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&hosts)?),
                OutputFormat::Table => {
                    let mut t = crate::output::Table::new(["HOST", "ADDRESS", "SERVER NAME", "INSTANCE", "TYPE"]);
                    for h in &hosts {
                        t.row([
                            h.name.clone(), h.address.clone(), h.server_name.clone(),
                            h.instance_id.clone().unwrap_or_else(|| "-".into()),
                            h.instance_type.clone().unwrap_or_else(|| "-".into()),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
            Ok(0)
        }
        Command::DailyHealthCheck(r) => Ok(runbooks::cli(Which::DailyHealthCheck, &source.load()?, output, &r.into()).await?),
        Command::PerformanceMonitoring { hours, report } => {
            Ok(runbooks::cli(Which::PerformanceMonitoring { hours }, &source.load()?, output, &report.into()).await?)
        }
        Command::Backup(BackupCommand::Verify(r)) => Ok(runbooks::cli(Which::BackupVerify, &source.load()?, output, &r.into()).await?),
        Command::SecurityReview(r) => Ok(runbooks::cli(Which::SecurityReview, &source.load()?, output, &r.into()).await?),
        Command::Job(cmd) => run_job(cmd, &source.load()?, output).await,
        Command::WeeklyMaintenance(a) => {
            let opts = crate::maintenance::Options {
                dry_run: a.dry_run,
                yes: a.yes,
                hosts: a.hosts,
                resume: a.resume,
                break_lock: a.break_lock,
                max_concurrency: a.max_concurrency,
                max_errors: a.max_errors,
                canary: a.canary,
                host_timeout: a.host_timeout,
                settle: a.settle,
                report_dir: a.report_dir,
            };
            crate::maintenance::cli(&source.load()?, output, opts).await
        }
        Command::Runs(RunsCommand::List) => crate::maintenance::runs::list(output),
        Command::Runs(RunsCommand::Show { run_id }) => crate::maintenance::runs::show(&run_id, output),
        Command::Incident(IncidentCommand::DbConnection { reboot, kill_query, scale_up, yes, report_dir }) => {
            let opts = crate::incident::db::DbOptions { reboot, kill_queries: kill_query, scale_up, yes, report_dir };
            crate::incident::db::db_connection(&source.load()?, &opts, output).await
        }
        Command::Incident(IncidentCommand::HighCpu { host, interval, count, restart_services, scale_up, add_instance, kill, yes, report_dir }) => {
            let opts = crate::incident::HighCpuOptions {
                host,
                interval: interval.max(Duration::from_millis(100)),
                count,
                yes,
                restart_services,
                scale_up,
                add_instance,
                kill,
                report_dir,
            };
            crate::incident::high_cpu(&source.load()?, &opts, output).await
        }
        Command::Top { interval, count } => {
            let cfg = source.load()?;
            let hosts = fleet::discover(&cfg).await?;
            let dialer = Dialer::from_config(&cfg)?;
            let refresh = count.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) && output == OutputFormat::Table;
            let opts = crate::commands::top::TopOptions { interval: interval.max(Duration::from_millis(100)), count, output, refresh };
            let mut stdout = std::io::stdout().lock();
            match crate::commands::top::run(&dialer, &hosts, &opts, &mut stdout).await {
                Ok(code) => Ok(code),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
                Err(e) => Err(e.into()),
            }
        }
        Command::Agent(AgentCommand::UserData { agent_url, agent_sha256, ca, port, out }) => {
            let ca = match ca {
                Some(p) => p,
                None => source.load()?.tls()?.ca.clone(),
            };
            let ca_pem = std::fs::read_to_string(&ca)
                .map_err(|e| anyhow::anyhow!("cannot read the fleet CA certificate {}: {e}", ca.display()))?;
            let params = crate::install::user_data::UserDataParams { agent_url, agent_sha256, ca_pem, agent_port: port };
            let doc = crate::install::user_data::render(&params)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, doc).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{doc}"),
            }
            Ok(0)
        }
        Command::Diag { host, follow, interval, top, count } => {
            let cfg = source.load()?;
            let hosts = fleet::discover(&cfg).await?;
            let host = fleet::find(&hosts, &host)?;
            let dialer = Dialer::from_config(&cfg)?;
            let opts = diag::DiagOptions { follow: follow || count.is_some_and(|c| c > 1), interval, top, count, output };
            let mut stdout = std::io::stdout().lock();
            match diag::run(&dialer, host, &opts, &mut stdout).await {
                Ok(_) => Ok(0),
                Err(diag::DiagError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(1)
                }
            }
        }
    }
}

async fn run_job(cmd: JobCommand, cfg: &ControllerConfig, output: OutputFormat) -> anyhow::Result<ExitCode> {
    use crate::commands::job;
    let hosts = fleet::discover(cfg).await?;
    let dialer = Dialer::from_config(cfg)?;
    let mut stdout = std::io::stdout().lock();
    let host_of = |name: &str| fleet::find(&hosts, name).cloned();
    let code = match cmd {
        JobCommand::Start { host, kind, detach, idempotency_key, timeout, queue } => {
            let host = host_of(&host)?;
            let req = ops_proto::v1::StartJobRequest {
                spec: Some(job::spec(&kind)),
                idempotency_key: idempotency_key.unwrap_or_else(job::new_idempotency_key),
                timeout_seconds: timeout.map(|t| u32::try_from(t.as_secs()).unwrap_or(u32::MAX).max(1)).unwrap_or(0),
                queue_if_busy: queue,
            };
            let started = job::start(&dialer, &host, req).await?;
            eprintln!("{}: started job {} ({})", host.name, started.id, job::state_name(started.state));
            let done = if detach || job::is_final(started.state) {
                started
            } else {
                job::watch(&dialer, &host, &started.id, 0, &mut stdout).await?
            };
            if detach && !job::is_final(done.state) {
                match output {
                    OutputFormat::Json => writeln!(stdout, "{}", job::job_json(&done))?,
                    OutputFormat::Table => writeln!(stdout, "{}", job::job_line(&done))?,
                }
                0
            } else {
                job::finish(&done, output, &mut stdout)?
            }
        }
        JobCommand::Watch { host, job_id, from } => {
            let host = host_of(&host)?;
            let done = job::watch(&dialer, &host, &job_id, from, &mut stdout).await?;
            job::finish(&done, output, &mut stdout)?
        }
        JobCommand::List { host, limit } => {
            let jobs = job::list(&dialer, &host_of(&host)?, limit).await?;
            match output {
                OutputFormat::Json => {
                    let v: Vec<_> = jobs.iter().map(job::job_json).collect();
                    writeln!(stdout, "{}", serde_json::to_string_pretty(&v)?)?;
                }
                OutputFormat::Table => write!(stdout, "{}", job::render_list(&jobs))?,
            }
            0
        }
        JobCommand::Get { host, job_id } => {
            let j = job::get(&dialer, &host_of(&host)?, &job_id).await?;
            match output {
                OutputFormat::Json => writeln!(stdout, "{}", job::job_json(&j))?,
                OutputFormat::Table => writeln!(stdout, "{}", job::job_line(&j))?,
            }
            0
        }
        JobCommand::Cancel { host, job_id } => {
            let j = job::cancel(&dialer, &host_of(&host)?, &job_id).await?;
            match output {
                OutputFormat::Json => writeln!(stdout, "{}", job::job_json(&j))?,
                OutputFormat::Table => writeln!(stdout, "{}", job::job_line(&j))?,
            }
            0
        }
    };
    Ok(code)
}

fn run_pki(cmd: PkiCommand) -> anyhow::Result<ExitCode> {
    let written = match cmd {
        PkiCommand::Init { dir, days, force } => crate::pki::init(&dir, force, days)?,
        PkiCommand::IssueClient { dir, name, role, days, force } => crate::pki::issue_client(&dir, &name, role, days, force)?,
        PkiCommand::IssueAgent { dir, name, ips, dns, days, force } => {
            crate::pki::issue_agent(&dir, &name, &ips, &dns, days, force)?
        }
        PkiCommand::Revoke { dir, serial, name } => {
            let target = match (serial, name) {
                (Some(s), _) => crate::pki::RevokeTarget::Serial(s),
                (None, Some(n)) => crate::pki::RevokeTarget::Name(n),
                (None, None) => anyhow::bail!("pki revoke: give --serial or --name"),
            };
            let r = crate::pki::revoke(&dir, &target)?;
            for s in &r.added {
                println!("revoked {s}");
            }
            for s in &r.already {
                println!("already revoked {s}");
            }
            println!("{} lists {} revoked certificate(s); copy it to each agent's [tls] crl path", r.crl.display(), r.total);
            return Ok(0);
        }
    };
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn global_aws_flags_win_over_the_config_file() {
        let (_d, path) = config_file("[aws]\nregion = \"eu-west-1\"\nprofile = \"file\"\nendpoint_url = \"http://127.0.0.1:1\"\n");
        let p = path.to_str().unwrap();
        let cli = Cli::try_parse_from(["controller", "--config", p, "--region", "us-west-2", "--profile", "flag", "--endpoint-url", "http://127.0.0.1:2", "fleet", "list"]).unwrap();
        let cfg = cli.load_config().unwrap();
        assert_eq!(cfg.aws.region.as_deref(), Some("us-west-2"));
        assert_eq!(cfg.aws.profile.as_deref(), Some("flag"));
        assert_eq!(cfg.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:2"));
        // Global flags go anywhere on the line, and -o is --output.
        let cli = Cli::try_parse_from(["controller", "fleet", "list", "--config", p, "-o", "json"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        if std::env::var_os("AWS_REGION").is_none() {
            assert_eq!(cli.load_config().unwrap().aws.region.as_deref(), Some("eu-west-1"), "without a flag the file's value stands");
        }
    }

    #[test]
    fn completions_are_generated_for_bash_zsh_and_fish() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "controller", &mut out);
            let text = String::from_utf8(out).unwrap();
            for sub in ["daily-health-check", "security-review", "fleet", "completions"] {
                assert!(text.contains(sub), "{shell}: {sub} missing");
            }
        }
    }

    #[test]
    fn every_command_states_the_exit_codes_in_its_help() {
        let help = <Cli as clap::CommandFactory>::command().render_long_help().to_string();
        assert!(help.contains("Exit codes: 0") && help.contains("1 a check failed") && help.contains("2 the command could not run"), "{help}");
    }
}
