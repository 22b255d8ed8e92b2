//! Shared set-up for the job engine tests: a manager on a temporary state directory,
//! callers with roles, and helpers that follow a job through its watch stream (never
//! sleeps) under a timeout.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent::jobs::{
    ActionConfig, CleanupConfig, JobManager, JobSettings, JobsConfig, KillConfig, ServicesConfig,
};
use ops_proto::identity::{PeerIdentity, Role};
use ops_proto::v1::{job_event, job_spec, Job, JobSpec, RunAction, StartJobRequest};
use tokio_stream::StreamExt;

/// Upper bound for any single test step.
pub const STEP: Duration = Duration::from_secs(60);
/// Upper bound for a whole test.
pub const TEST_LIMIT: Duration = Duration::from_secs(180);

/// Runs a test body under `TEST_LIMIT`: a hang fails the test instead of the CI run.
pub async fn within_test_limit<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .expect("the test exceeded its time limit");
}

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub settings: JobSettings,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        let settings = JobSettings {
            state_dir: dir.path().join("state"),
            jobs: JobsConfig {
                kill_grace_seconds: 2,
                ..JobsConfig::default()
            },
            actions: Vec::new(),
            cleanup: CleanupConfig::default(),
            services: ServicesConfig::default(),
            kill: KillConfig::default(),
        };
        TestEnv { dir, settings }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn with_action(mut self, name: &str, argv: &[&str]) -> TestEnv {
        self.settings.actions.push(action(name, argv));
        self
    }

    pub async fn open(&self) -> Arc<JobManager> {
        tokio::time::timeout(STEP, JobManager::open(self.settings.clone()))
            .await
            .unwrap()
            .unwrap()
    }

    pub fn audit_path(&self) -> PathBuf {
        self.settings.audit_log_path()
    }

    /// Every audit line, parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.audit_path()).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn action(name: &str, argv: &[&str]) -> ActionConfig {
    ActionConfig::new(name, argv)
}

/// `sh -c SCRIPT` as an action.
pub fn sh(name: &str, script: &str) -> ActionConfig {
    action(name, &["/bin/sh", "-c", script])
}

pub fn operator() -> PeerIdentity {
    PeerIdentity {
        name: "ops-ci".into(),
        role: Some(Role::Operator),
        role_claim: "operator".into(),
        ..Default::default()
    }
}

pub fn viewer() -> PeerIdentity {
    PeerIdentity {
        name: "dashboard".into(),
        role: Some(Role::Viewer),
        role_claim: "viewer".into(),
        ..Default::default()
    }
}

pub fn run_action(name: &str) -> JobSpec {
    JobSpec {
        kind: Some(job_spec::Kind::RunAction(RunAction { name: name.into() })),
    }
}

pub fn req(spec: JobSpec) -> StartJobRequest {
    StartJobRequest {
        spec: Some(spec),
        ..Default::default()
    }
}

pub async fn start(mgr: &JobManager, spec: JobSpec) -> Job {
    tokio::time::timeout(STEP, mgr.start(req(spec), &operator()))
        .await
        .unwrap()
        .unwrap()
}

/// The gRPC code an engine error maps to.
pub fn code(e: agent::jobs::JobError) -> tonic::Code {
    tonic::Status::from(e).code()
}

/// The refusal of a restart of a unit the agent's allow-list does not name.
pub fn assert_unit_not_allowed(err: agent::jobs::JobError) {
    assert!(err.to_string().contains("not in this agent's [services] allowed list"), "{err}");
    assert_eq!(code(err), tonic::Code::InvalidArgument);
}

/// Follows a job's output from `from` to its end: (output, final record).
pub async fn follow(mgr: &JobManager, id: &str, from: u64) -> (Vec<u8>, Job) {
    let mut stream = mgr.watch(id, from).unwrap();
    let mut out = Vec::new();
    let mut expected = from;
    let run = async {
        while let Some(ev) = stream.next().await {
            match ev.unwrap().event.unwrap() {
                job_event::Event::Output(c) => {
                    assert_eq!(c.offset, expected, "chunks are contiguous");
                    expected += c.data.len() as u64;
                    out.extend_from_slice(&c.data);
                }
                job_event::Event::Finished(job) => return job,
            }
        }
        panic!("the watch ended without a Finished event");
    };
    let job = tokio::time::timeout(STEP, run)
        .await
        .expect("job did not finish in time");
    assert_eq!(
        job.output_bytes, expected,
        "the final record counts every byte"
    );
    (out, job)
}

/// Reads a job's output until a complete line of its own (not an agent note) contains
/// `needle`; returns what was read.
pub async fn wait_for_output(mgr: &JobManager, id: &str, needle: &str) -> String {
    let mut stream = mgr.watch(id, 0).unwrap();
    let mut out = Vec::new();
    let run = async {
        while let Some(ev) = stream.next().await {
            match ev.unwrap().event.unwrap() {
                job_event::Event::Output(c) => {
                    out.extend_from_slice(&c.data);
                    let text = String::from_utf8_lossy(&out).into_owned();
                    // Complete lines of the job's own output, not the agent's notes.
                    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
                    if complete
                        .lines()
                        .any(|l| !l.starts_with("[agent]") && l.contains(needle))
                    {
                        return text;
                    }
                }
                job_event::Event::Finished(job) => {
                    panic!("job ended before printing {needle:?}: {job:?}")
                }
            }
        }
        panic!("watch ended early");
    };
    tokio::time::timeout(STEP, run)
        .await
        .expect("output did not appear in time")
}

/// A private apt world: the real apt-get, reading the fixture archive in
/// `tests/fixtures/jobs/apt-archive` (a Debian 12 point release and its security archive)
/// and the fixture's dpkg status instead of the host's. Returns the `APT_CONFIG` file.
/// The package lists are fetched here, as an operator's `apt-get update` would, because
/// a simulated patch job never updates them.
pub async fn fixture_apt(dir: &Path) -> PathBuf {
    let apt_get = agent::jobs::kinds::find_in_path("apt-get")
        .expect("apt-get is missing: this test needs Debian's apt (CI runs on Debian)");
    let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jobs/apt-archive");
    let root = dir.join("apt-root");
    for d in [
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("etc/apt/sources.list"),
        format!(
            "deb [trusted=yes] file:{0} bookworm main\ndeb [trusted=yes] file:{0} bookworm-security main\n",
            archive.display()
        ),
    )
    .unwrap();
    // The fixture packages are `Architecture: all`; naming the architecture keeps the
    // plan the same on arm64 hosts. No lock: nothing here is the host's package state.
    let conf = dir.join("apt.conf");
    std::fs::write(
        &conf,
        format!(
            "Dir \"{}/\";\nDir::State::status \"{}\";\nAPT::Architecture \"amd64\";\n\
             APT::Architectures {{ \"amd64\"; }};\nDebug::NoLocking \"true\";\nAPT::Sandbox::User \"root\";\n",
            root.display(),
            archive.join("status").display()
        ),
    )
    .unwrap();
    let update = tokio::process::Command::new(apt_get)
        .args(["-q", "update"])
        .env("APT_CONFIG", &conf)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        update.status.success(),
        "apt-get update on the fixture archive: {}",
        String::from_utf8_lossy(&update.stderr)
    );
    conf
}

/// A `systemctl` stand-in in `dir` (the only fake: systemd does not run on these
/// machines): appends each call's arguments to `dir/systemctl.args`, answers `is-active`
/// with `state` (exit 0 only for `active`) and `restart` with `restart_exit`.
pub fn fake_systemctl(dir: &Path, state: &str, restart_exit: i32) -> PathBuf {
    let script = dir.join("systemctl");
    let log = dir.join("systemctl.args");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# Stand-in for systemctl: systemd does not run on test machines.\necho \"$@\" >> '{}'\ncase \"$1\" in\n  is-active) echo {state}; [ {state} = active ];;\n  restart) exit {restart_exit};;\nesac\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}
