//! The two switches a fleet runbook leans on to leave hosts alone: `RestartService`
//! with `if_running` never starts a unit the host does not run (against a stand-in
//! `systemctl`, the only fake: systemd does not run on these machines), and an agent
//! with `[jobs] patch_mode = "simulate"` never installs, whatever a `Patch` asks (against
//! the real apt-get and the fixture archive).
#![allow(clippy::unwrap_used)]

mod jobs_support;

use std::fs;

use agent::jobs::PatchMode;
use jobs_support::*;
use ops_proto::v1::{job_result, job_spec, Job, JobSpec, JobState, Patch, RestartService};

async fn run_to_end(mgr: &agent::jobs::JobManager, s: JobSpec) -> (String, Job) {
    let job = start(mgr, s).await;
    let (out, done) = follow(mgr, &job.id, 0).await;
    (String::from_utf8_lossy(&out).into_owned(), done)
}

/// An agent whose only allowed service is httpd, with the systemctl stand-in answering
/// `is-active` with `state` and `restart` with `restart_exit`.
async fn httpd_only(state: &str, restart_exit: i32) -> (TestEnv, std::sync::Arc<agent::jobs::JobManager>) {
    let mut env = TestEnv::new();
    env.settings.services.systemctl = Some(fake_systemctl(env.path(), state, restart_exit));
    env.settings.services.allowed = vec!["httpd".into()];
    let mgr = env.open().await;
    (env, mgr)
}

fn restart_if_running(unit: &str) -> JobSpec {
    JobSpec {
        kind: Some(job_spec::Kind::RestartService(RestartService {
            unit: unit.into(),
            if_running: true,
        })),
    }
}

fn service_result(job: &Job) -> ops_proto::v1::ServiceResult {
    match job.result.clone().and_then(|r| r.kind) {
        Some(job_result::Kind::Service(s)) => s,
        other => panic!("no service result: {other:?}"),
    }
}

#[tokio::test]
async fn restart_if_running_leaves_a_unit_the_host_does_not_run_alone_and_succeeds() {
    within_test_limit(async {
        for unit_state in ["inactive", "failed"] {
            let (env, mgr) = httpd_only(unit_state, 0).await;
            let (out, done) = run_to_end(&mgr, restart_if_running("httpd.service")).await;
            assert_eq!(
                JobState::try_from(done.state).unwrap(),
                JobState::Succeeded,
                "{out}"
            );
            assert!(done.error.is_empty(), "{}", done.error);
            let s = service_result(&done);
            assert_eq!(
                (s.unit.as_str(), s.active_state.as_str(), s.restarted),
                ("httpd", unit_state, false)
            );
            assert!(
                out.contains(&format!(
                    "httpd is {unit_state}: not running here, not restarted"
                )),
                "{out}"
            );
            let calls = fs::read_to_string(env.path().join("systemctl.args")).unwrap();
            assert_eq!(calls, "is-active httpd\n", "asked, never restarted");
        }
    })
    .await
}

#[tokio::test]
async fn restart_if_running_restarts_a_running_unit_and_checks_it_came_back() {
    within_test_limit(async {
        let (env, mgr) = httpd_only("active", 0).await;
        let (out, done) = run_to_end(&mgr, restart_if_running("httpd")).await;
        assert_eq!(
            JobState::try_from(done.state).unwrap(),
            JobState::Succeeded,
            "{out}"
        );
        let s = service_result(&done);
        assert_eq!((s.active_state.as_str(), s.restarted), ("active", true));
        assert_eq!(
            fs::read_to_string(env.path().join("systemctl.args")).unwrap(),
            "is-active httpd\nrestart httpd\nis-active httpd\n"
        );
        assert_eq!(done.exit_code, Some(0));
    })
    .await
}

#[tokio::test]
async fn restart_if_running_of_a_running_unit_whose_restart_fails_fails() {
    within_test_limit(async {
        let (_env, mgr) = httpd_only("active", 1).await;
        let (out, done) = run_to_end(&mgr, restart_if_running("httpd")).await;
        assert_eq!(
            JobState::try_from(done.state).unwrap(),
            JobState::Failed,
            "{out}"
        );
        assert!(
            done.error.contains("systemctl restart httpd failed"),
            "{}",
            done.error
        );
        assert!(service_result(&done).restarted, "the restart ran");
    })
    .await
}

#[tokio::test]
async fn restart_if_running_still_refuses_a_unit_outside_the_allow_list() {
    within_test_limit(async {
        let (env, mgr) = httpd_only("active", 0).await;
        let err = mgr
            .start(req(restart_if_running("sshd")), &operator())
            .await
            .unwrap_err();
        assert_unit_not_allowed(err);
        assert!(
            !env.path().join("systemctl.args").exists(),
            "systemctl was never called"
        );
        assert!(mgr.list(0).await.is_empty(), "a refusal creates no job");
    })
    .await
}

/// Every `[agent] $ ...` line: the commands the job ran.
fn commands(out: &str) -> Vec<&str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("[agent] $ "))
        .collect()
}

#[tokio::test]
async fn patch_mode_simulate_turns_a_patch_that_asks_to_install_into_a_simulation() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        let conf = fixture_apt(env.path()).await;
        env.settings.jobs.apt_config = Some(conf);
        env.settings.jobs.patch_mode = PatchMode::Simulate;
        let status = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jobs/apt-archive/status");
        let status_before = fs::read(&status).unwrap();
        let lists = env.path().join("apt-root/var/lib/apt/lists");
        let lists_before = listing(&lists);
        let mgr = env.open().await;
        let (out, done) = run_to_end(
            &mgr,
            JobSpec {
                kind: Some(job_spec::Kind::Patch(Patch {
                    simulate: false,
                    ..Default::default()
                })),
            },
        )
        .await;
        assert_eq!(
            JobState::try_from(done.state).unwrap(),
            JobState::Succeeded,
            "{out}"
        );
        let Some(job_result::Kind::Patch(p)) = done.result.clone().and_then(|r| r.kind) else {
            panic!("no patch result: {done:?}")
        };
        assert!(p.simulated, "a forced simulation is reported as one");
        let mut names: Vec<_> = p.packages.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["base-files", "bash", "libexpat1", "libssl3", "openssl"],
            "the fixture's whole plan, as a simulation lists it"
        );
        assert!(
            out.contains("patch_mode = simulate: nothing installed")
                && out.contains("though the request asked to install"),
            "{out}"
        );
        // Ignoring patch_mode would run `apt-get -q update` first, then the upgrade.
        let ran = commands(&out);
        assert_eq!(ran.len(), 1, "only the simulation ran: {ran:?}");
        assert!(ran[0].ends_with("apt-get -s upgrade"), "{ran:?}");
        assert_eq!(
            fs::read(&status).unwrap(),
            status_before,
            "dpkg status untouched"
        );
        assert_eq!(
            listing(&lists),
            lists_before,
            "the package index was not refreshed"
        );
    })
    .await
}

/// Names, sizes and modification times of the files in a folder.
fn listing(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}
