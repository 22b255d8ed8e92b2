//! The world `weekly-maintenance` runs in, for the end-to-end tests: moto seeded like
//! TechHealth (stack, tagged instances whose `Agent` tag points at local agents, the RDS
//! instance, the database secret, log groups, a trail, an HTTPS site), a private MariaDB
//! with `users`, `sessions` and `audit_log`, and real agent processes, each with its own
//! folders to clean, its own logrotate config, the `systemctl` stand-in and patching in
//! simulate mode. The controller runs as the real binary with its own state folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use controller::aws::AwsClients;
use ops_proto::v1::{Job, ListJobsRequest};

use super::agent::{config_text, operator_client, write_config, AgentProcess};
use super::aws_seed as seed;
use super::certs::TestPki;
use super::mariadb::{seed_techhealth, MariaDb};
use super::moto::Moto;
use super::systemctl::FakeSystemctl;
use super::web::{self, WebServer};

/// What to build.
pub struct WorldSpec {
    pub agents: usize,
    /// Hosts whose services are not running (the stand-in answers `inactive`).
    pub inactive: Vec<usize>,
    pub audit_rows: u64,
    pub session_rows: u64,
    /// Extra `[maintenance]` keys.
    pub maintenance: String,
    /// Hosts (1-based) whose application-dependency action takes a minute.
    pub slow: Vec<usize>,
}

impl Default for WorldSpec {
    fn default() -> WorldSpec {
        WorldSpec { agents: 3, inactive: vec![], audit_rows: 20_000, session_rows: 6_000, maintenance: String::new(), slow: vec![] }
    }
}

pub struct World {
    pub pki: TestPki,
    pub moto: Moto,
    pub aws: AwsClients,
    pub db: MariaDb,
    pub agents: Vec<AgentProcess>,
    pub systemctl: Vec<FakeSystemctl>,
    pub site: WebServer,
    pub app: WebServer,
    pub config: PathBuf,
    pub state: PathBuf,
    pub reports: PathBuf,
    pub hosts_dir: PathBuf,
    pub instance_ids: Vec<String>,
}

pub const DB_USER: &str = "maint";
const DB_PASSWORD: &str = "not-a-real-password-7Qx";

/// The host's folder: `tmp`, `var/log`, `app/logs` under it.
pub fn host_dir(base: &Path, name: &str) -> PathBuf {
    base.join(name)
}

fn touch(path: &Path, days_old: u64, atime_only: bool) {
    std::fs::write(path, b"x").expect("write file");
    let t = std::time::SystemTime::now() - Duration::from_secs(days_old * 86_400);
    let f = std::fs::File::options().write(true).open(path).expect("open file");
    let times = std::fs::FileTimes::new().set_accessed(t);
    let times = if atime_only { times } else { times.set_modified(t) };
    f.set_times(times).expect("set file times");
}

/// Fills a host's folders: old and fresh files for each cleanup rule.
fn fill_host(dir: &Path) {
    for sub in ["tmp", "var/log", "app/logs"] {
        std::fs::create_dir_all(dir.join(sub)).expect("host folders");
    }
    touch(&dir.join("tmp/old-upload.tmp"), 10, true);
    touch(&dir.join("tmp/fresh-upload.tmp"), 0, false);
    touch(&dir.join("var/log/old-app.log"), 40, false);
    touch(&dir.join("var/log/current.log"), 0, false);
    touch(&dir.join("var/log/messages.log.3"), 45, false);
    touch(&dir.join("app/logs/old-request.log"), 9, false);
    touch(&dir.join("app/logs/today.log"), 0, false);
    std::fs::write(dir.join("var/log/rotate-me.log"), b"line\n").expect("rotate-me");
}

impl World {
    pub async fn build(spec: WorldSpec) -> World {
        let pki = TestPki::new();
        let moto = Moto::start();
        let aws = moto.clients().await;
        let hosts_dir = pki.path().join("hosts");
        let auth = seed::auth_log(pki.path(), 1);
        let cert = pki.agent_cert("site", &["techhealth.com"], Some(TestPki::valid_for(90)));
        let site = web::https(&cert.cert, &cert.key).await;
        let app = web::http(200).await;
        let mut agents = Vec::new();
        let mut systemctl = Vec::new();
        for i in 1..=spec.agents {
            let name = format!("web-{i}");
            let dir = host_dir(&hosts_dir, &name);
            fill_host(&dir);
            std::fs::write(
                dir.join("logrotate.conf"),
                format!("{}/var/log/rotate-me.log {{\n  rotate 2\n  missingok\n}}\n", dir.display()),
            )
            .expect("logrotate config");
            let state = if spec.inactive.contains(&i) { "inactive" } else { "active" };
            let fake = FakeSystemctl::new(&dir.join("bin"), state, 0);
            let npm = if spec.slow.contains(&i) { "echo npm audit fix: slow registry; sleep 60" } else { "echo npm audit fix: found 0 vulnerabilities" };
            let sections = format!(
                "[auth_log]\npaths = [\"{auth}\"]\n\
                 [jobs]\npatch_mode = \"simulate\"\nlogrotate_config = \"{d}/logrotate.conf\"\nlogrotate_state_file = \"{d}/logrotate.state\"\n\
                 [cleanup]\nallowed_roots = [\"{d}/tmp\", \"{d}/var/log\", \"{d}/app/logs\"]\n\
                 [services]\nallowed = [\"httpd\", \"fail2ban\"]\nsystemctl = \"{sc}\"\n\
                 [[actions]]\nname = \"npm-audit-fix\"\nargv = [\"sh\", \"-c\", \"{npm}\"]\n\
                 [[actions]]\nname = \"certbot-renew-dry-run\"\nargv = [\"sh\", \"-c\", \"echo certbot renew --dry-run: no renewal due\"]\n",
                auth = auth.display(),
                d = dir.display(),
                sc = fake.path().display(),
            );
            let top = format!("state_dir = \"{}\"\n", dir.join("state").display());
            let text = config_text(&pki, &pki.agent, "127.0.0.1:0", &top, &sections);
            agents.push(AgentProcess::start(&write_config(&pki, &name, &text)));
            systemctl.push(fake);
        }
        // AWS: the TechHealth account as the runbooks expect it.
        let site_url = app.url();
        let tls = site.addr.to_string();
        let mut instance_ids = Vec::new();
        for (i, a) in agents.iter().enumerate() {
            let name = format!("web-{}", i + 1);
            let addr = a.addr.to_string();
            let tags = [("Project", "TechHealth"), ("Name", name.as_str()), ("Agent", addr.as_str()), ("AppUrl", site_url.as_str()), ("TlsEndpoint", tls.as_str())];
            let id = seed::instance(&aws, &tags, true).await;
            for v in seed::volumes_of(&aws, &id).await {
                seed::snapshot_of(&aws, &v, &[("Purpose", "Automated")]).await;
            }
            instance_ids.push(id);
        }
        seed::stack(&aws, "TechHealthInfrastructureStack").await;
        seed::database(&aws, "techhealth-database", 7, true, false).await;
        seed::trail(&moto.endpoint(), "TechHealthAuditTrail", true, true, true);
        let now = chrono::Utc::now();
        seed::log_events(&aws, "CloudTrail/TechHealthAuditTrail", "trail", &[(now - chrono::Duration::hours(1), seed::trail_record("DescribeInstances", None, "ops"))]).await;
        seed::log_events(&aws, "/aws/ec2/techhealth", "web-1", &[(now - chrono::Duration::minutes(5), "INFO GET /patients 200".into())]).await;
        seed::log_events(&aws, "/aws/ec2/auth", "web-1", &[(now - chrono::Duration::minutes(9), "sshd[1]: Failed password for root from 192.0.2.1".into())]).await;

        // The database and its secret (a user with a password: the real path).
        let db = MariaDb::start();
        {
            use mysql_async::prelude::*;
            let mut c = mysql_async::Conn::from_url(db.url("mysql")).await.expect("connect MariaDB");
            seed_techhealth(&mut c, "techhealth", 500, spec.session_rows, spec.audit_rows, 365).await.expect("seed techhealth");
            c.query_drop(format!("CREATE USER '{DB_USER}'@'%' IDENTIFIED BY '{DB_PASSWORD}'")).await.expect("create user");
            c.query_drop(format!("GRANT ALL ON techhealth.* TO '{DB_USER}'@'%'")).await.expect("grant");
        }
        let secret = serde_json::json!({"username": DB_USER, "password": DB_PASSWORD, "host": "127.0.0.1", "port": db.port, "dbname": "techhealth"});
        aws.secrets.create_secret().name("TechHealth-DB-Credentials").secret_string(secret.to_string()).send().await.expect("create secret");

        let reports = pki.path().join("reports");
        let state = pki.path().join("state-home");
        let extra = format!(
            "[runbooks]\ntls_ca_file = \"{ca}\"\n\
             [maintenance]\nsettle = \"0s\"\nverify_deadline = \"20s\"\nverify_interval = \"2s\"\nsnapshot_poll = \"1s\"\nsnapshot_deadline = \"60s\"\nstep_timeout = \"60s\"\n{m}\n\
             [[maintenance.cleanup]]\nroot = \"{h}/{{name}}/tmp\"\npattern = \"*\"\nolder_than = \"7d\"\nby = \"atime\"\n\
             [[maintenance.cleanup]]\nroot = \"{h}/{{name}}/var/log\"\npattern = \"*.log\"\nolder_than = \"30d\"\n\
             [[maintenance.log_cleanup]]\nroot = \"{h}/{{name}}/var/log\"\npattern = \"*.log.*\"\nolder_than = \"30d\"\n\
             [[maintenance.log_cleanup]]\nroot = \"{h}/{{name}}/app/logs\"\npattern = \"*.log\"\nolder_than = \"7d\"\n",
            ca = pki.ca_file.display(),
            m = spec.maintenance,
            h = hosts_dir.display(),
        );
        let config = super::controller::ec2_config(&pki, &extra);
        World { pki, moto, aws, db, agents, systemctl, site, app, config, state, reports, hosts_dir, instance_ids }
    }

    /// The controller's environment: moto's, and its own state folder.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.moto.env();
        env.push(("XDG_STATE_HOME", self.state.display().to_string()));
        env
    }

    /// Runs `controller weekly-maintenance ARGS` (with `--report-dir`) on a blocking
    /// thread, so that the test's own servers (the HTTP sites) keep answering meanwhile.
    pub async fn maintenance(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["weekly-maintenance".to_string(), "--report-dir".into(), self.reports.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        self.controller(all).await
    }

    /// Runs `controller ARGS` on a blocking thread.
    pub async fn controller(&self, args: Vec<String>) -> (i32, String, String) {
        let (env, config) = (self.env(), self.config.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            super::controller::run_clean(&env, &config, &args)
        })
        .await
        .expect("controller thread")
    }

    /// The newest JSON report.
    pub fn report(&self) -> serde_json::Value {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.reports)
            .expect("reports folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        let last = files.last().expect("a JSON report");
        serde_json::from_slice(&std::fs::read(last).expect("read report")).expect("report is JSON")
    }

    /// Every job agent `i` (0-based) has, oldest first.
    pub async fn jobs(&self, i: usize) -> Vec<Job> {
        let mut c = operator_client(&self.pki, self.agents[i].addr).await;
        let mut jobs = c.list_jobs(ListJobsRequest { limit: 500, ..Default::default() }).await.expect("list jobs").into_inner().jobs;
        jobs.sort_by_key(|j| j.created_unix_ms);
        jobs
    }

    /// Starts `controller weekly-maintenance ARGS` as a child process (to be killed or
    /// interrupted by the test), with the same clean environment as `controller`.
    pub fn spawn_maintenance(&self, args: &[&str]) -> std::process::Child {
        super::controller::clean_command(&self.env())
            .arg("--config")
            .arg(&self.config)
            .args(["weekly-maintenance", "--report-dir"])
            .arg(&self.reports)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn controller")
    }

    /// The ids of the runs with a journal.
    pub fn runs(&self) -> Vec<String> {
        std::fs::read_dir(self.state.join("ops/runs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// A run's journal events.
    pub fn journal(&self, run_id: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state.join("ops/runs").join(run_id).join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (up to `within`) until the only run's journal has an event for which `f` is true;
    /// returns the run id.
    pub async fn wait_journal(&self, within: Duration, f: impl Fn(&serde_json::Value) -> bool) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(id) = self.runs().first() {
                if self.journal(id).iter().any(&f) {
                    return id.clone();
                }
            }
            assert!(std::time::Instant::now() < deadline, "the journal never showed the awaited event: {:?}", self.runs().first().map(|id| self.journal(id)));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every text report the run kept in its folder (the runbooks of steps 7–10), for
    /// assertion messages.
    pub fn run_reports(&self, run_id: &str) -> String {
        let dir = self.state.join("ops/runs").join(run_id);
        let mut out = String::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "txt") {
                out.push_str(&format!("=== {}\n{}\n", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default()));
            }
        }
        out
    }

    /// A database connection as root.
    pub async fn sql(&self) -> mysql_async::Conn {
        mysql_async::Conn::from_url(self.db.url("techhealth")).await.expect("connect techhealth")
    }
}

/// A report row: (step, host) -> its state.
pub fn state_of<'a>(report: &'a serde_json::Value, step: &str, host: Option<&str>) -> &'a str {
    report["steps"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["step"] == step && r["host"].as_str() == host))
        .and_then(|r| r["state"].as_str())
        .unwrap_or("missing")
}
