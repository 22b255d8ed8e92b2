//! Each job kind doing its real work: patch simulation with this machine's package
//! manager, cleanup in temporary trees, logrotate, kill, and restart against a stand-in
//! `systemctl` (the only fake: systemd does not run on these machines).
#![allow(clippy::unwrap_used)]

mod jobs_support;

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use jobs_support::*;
use ops_proto::v1::{
    job_result, job_spec, Cleanup, CleanupRule, Job, JobSpec, JobState, KillProcess, Patch,
    RestartService, RotateLogs, StartJobRequest, TimeField,
};

const DAY: Duration = Duration::from_secs(86_400);

fn state(job: &Job) -> JobState {
    JobState::try_from(job.state).unwrap()
}

fn spec(kind: job_spec::Kind) -> JobSpec {
    JobSpec { kind: Some(kind) }
}

async fn run_to_end(mgr: &agent::jobs::JobManager, s: JobSpec) -> (String, Job) {
    let job = start(mgr, s).await;
    let (out, done) = follow(mgr, &job.id, 0).await;
    (String::from_utf8_lossy(&out).into_owned(), done)
}

#[tokio::test]
async fn patch_simulation_with_the_real_package_manager_changes_nothing() {
    within_test_limit(async {
        let (pm, _) = agent::jobs::kinds::patch::detect().expect(
            "no apt-get, dnf or yum on this machine: the patch job needs the host's package manager",
        );
        let dpkg_status = Path::new("/var/lib/dpkg/status");
        let before = fs::metadata(dpkg_status).and_then(|m| m.modified()).ok();
        let env = TestEnv::new();
        let mgr = env.open().await;
        let (out, all) = run_to_end(
            &mgr,
            spec(job_spec::Kind::Patch(Patch {
                simulate: true,
                ..Default::default()
            })),
        )
        .await;
        assert_eq!(state(&all), JobState::Succeeded, "{out}");
        let Some(job_result::Kind::Patch(all_res)) = all.result.and_then(|r| r.kind) else {
            panic!("no patch result")
        };
        assert_eq!(all_res.package_manager, pm.name());
        assert!(all_res.simulated, "a requested simulation is reported as one");
        for p in &all_res.packages {
            assert!(!p.name.is_empty() && !p.to_version.is_empty(), "{p:?}");
        }
        let (out, sec) = run_to_end(
            &mgr,
            spec(job_spec::Kind::Patch(Patch {
                simulate: true,
                security_only: true,
                exclude: vec!["libssl*".into()],
            })),
        )
        .await;
        assert_eq!(state(&sec), JobState::Succeeded, "{out}");
        let Some(job_result::Kind::Patch(sec_res)) = sec.result.and_then(|r| r.kind) else {
            panic!("no patch result")
        };
        // The host's own plan may hold no security update at all, so this only checks
        // consistency; `security_only_selects_only_the_security_archive_...` below is the
        // test that fails if security_only were ignored.
        assert!(sec_res.packages.len() <= all_res.packages.len());
        assert!(
            sec_res
                .packages
                .iter()
                .all(|p| !p.name.starts_with("libssl")),
            "excluded"
        );
        assert!(out.contains("simulation: nothing will change"), "{out}");
        let after = fs::metadata(dpkg_status).and_then(|m| m.modified()).ok();
        assert_eq!(before, after, "the package database was not touched");
        eprintln!(
            "{}: {} upgrades available, {} of them security (excluding libssl*)",
            pm.name(),
            all_res.packages.len(),
            sec_res.packages.len()
        );
    })
    .await
}

fn patch_names(job: &Job) -> Vec<String> {
    match job.result.clone().and_then(|r| r.kind) {
        Some(job_result::Kind::Patch(p)) => {
            let mut v: Vec<String> = p.packages.into_iter().map(|p| p.name).collect();
            v.sort();
            v
        }
        other => panic!("no patch result: {other:?}"),
    }
}

#[tokio::test]
async fn security_only_selects_only_the_security_archive_and_excludes_still_apply() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        env.settings.jobs.apt_config = Some(fixture_apt(env.path()).await);
        let mgr = env.open().await;
        let patch = |security_only: bool| {
            spec(job_spec::Kind::Patch(Patch {
                simulate: true,
                security_only,
                exclude: vec!["libssl*".into()],
            }))
        };
        // The fixture plans five upgrades: base-files and bash from the point release,
        // libexpat1, libssl3 and openssl from the security archive.
        let (out, all) = run_to_end(&mgr, patch(false)).await;
        assert_eq!(state(&all), JobState::Succeeded, "{out}");
        assert!(out.contains("4 of 5 available upgrades selected"), "{out}");
        assert_eq!(patch_names(&all), ["base-files", "bash", "libexpat1", "openssl"]);

        let (out, sec) = run_to_end(&mgr, patch(true)).await;
        assert_eq!(state(&sec), JobState::Succeeded, "{out}");
        assert!(out.contains("security updates only"), "{out}");
        assert!(out.contains("2 of 5 available upgrades selected"), "{out}");
        assert_eq!(
            patch_names(&sec),
            ["libexpat1", "openssl"],
            "only the security archive's upgrades, libssl3 still excluded"
        );
    })
    .await
}

fn age(path: &Path, mtime_days: u32, atime_days: u32) {
    let now = SystemTime::now();
    let times = FileTimes::new()
        .set_modified(now - DAY * mtime_days)
        .set_accessed(now - DAY * atime_days);
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(times)
        .unwrap();
}

/// root/{old.log (10 d), new.log, old.txt (10 d), sub/deep.log (10 d), link-dir -> outside,
/// link.log -> outside/victim.log} and outside/victim.log (10 d).
fn tree(base: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = base.join("root");
    let outside = base.join("outside");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    for (p, content) in [
        (root.join("old.log"), "0123456789"),
        (root.join("new.log"), "new"),
        (root.join("old.txt"), "txt"),
        (root.join("sub/deep.log"), "deep"),
        (outside.join("victim.log"), "must survive"),
    ] {
        fs::write(&p, content).unwrap();
        if !p.ends_with("new.log") {
            age(&p, 10, 10);
        }
    }
    std::os::unix::fs::symlink(&outside, root.join("link-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim.log"), root.join("link.log")).unwrap();
    (root, outside)
}

fn cleanup(root: &Path, pattern: &str, days: u64, by: TimeField, dry_run: bool) -> JobSpec {
    spec(job_spec::Kind::Cleanup(Cleanup {
        rules: vec![CleanupRule {
            root: root.display().to_string(),
            pattern: pattern.into(),
            older_than_seconds: days * 86_400,
            by: by as i32,
        }],
        dry_run,
    }))
}

fn cleanup_result(job: &Job) -> ops_proto::v1::CleanupResult {
    match job.result.clone().and_then(|r| r.kind) {
        Some(job_result::Kind::Cleanup(c)) => c,
        other => panic!("no cleanup result: {other:?}"),
    }
}

#[tokio::test]
async fn cleanup_removes_only_old_matching_files_and_never_follows_symlinks() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        let (root, outside) = tree(env.path());
        env.settings.cleanup.allowed_roots = vec![root.clone()];
        let mgr = env.open().await;
        let (out, done) =
            run_to_end(&mgr, cleanup(&root, "*.log", 7, TimeField::Mtime, false)).await;
        assert_eq!(state(&done), JobState::Succeeded, "{out}");
        assert!(!root.join("old.log").exists());
        assert!(!root.join("sub/deep.log").exists());
        assert!(root.join("new.log").exists(), "too young");
        assert!(root.join("old.txt").exists(), "does not match");
        assert!(
            outside.join("victim.log").exists(),
            "symlink targets are never touched"
        );
        assert!(
            fs::symlink_metadata(root.join("link.log")).is_ok(),
            "symlinks are skipped, not removed"
        );
        let r = cleanup_result(&done);
        assert_eq!((r.files, r.bytes), (2, 14));
        assert_eq!(r.skipped, 2, "two symlinks: {out}");
        let mut samples = r.sample_paths.clone();
        samples.sort();
        assert_eq!(
            samples,
            [
                root.join("old.log").display().to_string(),
                root.join("sub/deep.log").display().to_string()
            ]
        );
        assert!(out.contains("symbolic link (never followed)"), "{out}");
    })
    .await
}

#[tokio::test]
async fn cleanup_by_atime_compares_access_times() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        let root = env.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("read-long-ago"), "a").unwrap();
        fs::write(root.join("written-long-ago"), "b").unwrap();
        age(&root.join("read-long-ago"), 0, 30);
        age(&root.join("written-long-ago"), 30, 0);
        env.settings.cleanup.allowed_roots = vec![env.path().to_path_buf()];
        let mgr = env.open().await;
        let (out, done) = run_to_end(&mgr, cleanup(&root, "*", 7, TimeField::Atime, false)).await;
        assert_eq!(state(&done), JobState::Succeeded, "{out}");
        assert!(!root.join("read-long-ago").exists());
        assert!(root.join("written-long-ago").exists());
    })
    .await
}

#[tokio::test]
async fn cleanup_dry_run_reports_but_removes_nothing() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        let (root, _) = tree(env.path());
        env.settings.cleanup.allowed_roots = vec![root.clone()];
        let mgr = env.open().await;
        let (out, done) =
            run_to_end(&mgr, cleanup(&root, "*.log", 7, TimeField::Mtime, true)).await;
        assert_eq!(state(&done), JobState::Succeeded);
        assert_eq!(cleanup_result(&done).files, 2);
        assert!(root.join("old.log").exists() && root.join("sub/deep.log").exists());
        assert!(out.contains("would remove"), "{out}");
    })
    .await
}

#[tokio::test]
async fn cleanup_outside_the_allow_list_or_through_a_symlink_is_refused() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        let (root, outside) = tree(env.path());
        env.settings.cleanup.allowed_roots = vec![root.clone()];
        let mgr = env.open().await;
        let err = mgr
            .start(
                req(cleanup(&outside, "*", 0, TimeField::Mtime, false)),
                &operator(),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("not under a root this agent allows"),
            "{err}"
        );
        assert_eq!(code(err), tonic::Code::InvalidArgument);
        let err = mgr
            .start(
                req(cleanup(
                    &root.join("link-dir"),
                    "*",
                    0,
                    TimeField::Mtime,
                    false,
                )),
                &operator(),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(outside.join("victim.log").exists());
        assert!(mgr.list(0).await.is_empty());
    })
    .await
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test mounts a tmpfs: run it as root (CI does)"
        );
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(at)
            .status()
            .expect("mount(8) is missing: run scripts/setup (Debian package mount)");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn cleanup_never_leaves_the_root_filesystem() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        let root = env.path().join("root");
        let mnt = root.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let _tmpfs = Tmpfs::mount(&mnt);
        fs::write(mnt.join("other-fs.log"), "x").unwrap();
        age(&mnt.join("other-fs.log"), 10, 10);
        env.settings.cleanup.allowed_roots = vec![root.clone()];
        let mgr = env.open().await;
        let (out, done) = run_to_end(&mgr, cleanup(&root, "*", 7, TimeField::Mtime, false)).await;
        assert_eq!(state(&done), JobState::Succeeded, "{out}");
        assert!(
            mnt.join("other-fs.log").exists(),
            "a file on another filesystem was removed: {out}"
        );
        assert!(out.contains("another filesystem"), "{out}");
        assert_eq!(cleanup_result(&done).skipped, 1);
    })
    .await
}

#[tokio::test]
async fn restart_service_restarts_allowed_units_and_reports_their_state() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        let systemctl = fake_systemctl(env.path(), "active", 0);
        env.settings.services.allowed = vec!["httpd".into()];
        env.settings.services.systemctl = Some(systemctl);
        let mgr = env.open().await;
        let restart = |unit: &str| {
            spec(job_spec::Kind::RestartService(RestartService {
                unit: unit.into(),
                ..Default::default()
            }))
        };
        let (out, done) = run_to_end(&mgr, restart("httpd.service")).await;
        assert_eq!(state(&done), JobState::Succeeded, "{out}");
        match done.result.and_then(|r| r.kind) {
            Some(job_result::Kind::Service(s)) => assert_eq!(
                (s.unit.as_str(), s.active_state.as_str(), s.restarted),
                ("httpd", "active", true)
            ),
            other => panic!("no service result: {other:?}"),
        }
        let args = fs::read_to_string(env.path().join("systemctl.args")).unwrap();
        assert_eq!(args, "restart httpd\nis-active httpd\n");

        let err = mgr
            .start(req(restart("sshd")), &operator())
            .await
            .unwrap_err();
        assert_unit_not_allowed(err);
        assert_eq!(
            fs::read_to_string(env.path().join("systemctl.args")).unwrap(),
            args,
            "systemctl not called"
        );
    })
    .await
}

#[tokio::test]
async fn restart_service_fails_when_the_unit_is_not_active_afterwards() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        env.settings.services.systemctl = Some(fake_systemctl(env.path(), "failed", 1));
        env.settings.services.allowed = vec!["httpd".into()];
        let mgr = env.open().await;
        let (_, done) = run_to_end(
            &mgr,
            spec(job_spec::Kind::RestartService(RestartService {
                unit: "httpd".into(),
                ..Default::default()
            })),
        )
        .await;
        assert_eq!(state(&done), JobState::Failed);
        assert_eq!(done.exit_code, Some(1));
        assert!(done.error.contains("the unit is failed"), "{}", done.error);
        match done.result.and_then(|r| r.kind) {
            Some(job_result::Kind::Service(s)) => {
                assert_eq!((s.active_state.as_str(), s.restarted), ("failed", true))
            }
            other => panic!("no service result: {other:?}"),
        }
    })
    .await
}

#[tokio::test]
async fn kill_refuses_init_the_agent_and_wrong_names_then_signals_the_right_process() {
    within_test_limit(async {
        let env = TestEnv::new();
        let mgr = env.open().await;
        let mut victim = tokio::process::Command::new("sleep")
            .arg("300")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = victim.id().unwrap() as i32;
        let kill = |pid: i32, name: &str, signal: &str| {
            spec(job_spec::Kind::KillProcess(KillProcess {
                pid,
                signal: signal.into(),
                expected_name: name.into(),
            }))
        };
        for (pid, name, why) in [
            (1, "init", "pid 1"),
            (0, "x", "never signalled"),
            (std::process::id() as i32, "jobs_kinds", "agent itself"),
            (pid, "stress", "not \"stress\""),
            (pid, "", "expected_name is required"),
        ] {
            let err = mgr
                .start(req(kill(pid, name, "TERM")), &operator())
                .await
                .unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
            assert_eq!(code(err), tonic::Code::InvalidArgument);
        }
        let err = mgr
            .start(req(kill(pid, "sleep", "SEGV")), &operator())
            .await
            .unwrap_err();
        assert_eq!(code(err), tonic::Code::InvalidArgument);
        assert!(mgr.list(0).await.is_empty(), "refusals create no job");
        assert_eq!(
            env.audit()
                .iter()
                .filter(|l| l["event"] == "start_refused")
                .count(),
            6
        );

        let keyed = || StartJobRequest {
            idempotency_key: "incident-42-kill".into(),
            ..req(kill(pid, "sleep", "KILL"))
        };
        let job = mgr.start(keyed(), &operator()).await.unwrap();
        let (out, done) = follow(&mgr, &job.id, 0).await;
        let out = String::from_utf8_lossy(&out);
        assert_eq!(state(&done), JobState::Succeeded, "{out}");
        // A retry after a lost reply gets the job back, though its target is gone by now.
        let retry = mgr.start(keyed(), &operator()).await.unwrap();
        assert_eq!(retry.id, job.id);
        let status = tokio::time::timeout(STEP, victim.wait())
            .await
            .unwrap()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        match done.result.and_then(|r| r.kind) {
            Some(job_result::Kind::Kill(k)) => assert_eq!(
                (k.pid, k.name.as_str(), k.signal.as_str()),
                (pid, "sleep", "KILL")
            ),
            other => panic!("no kill result: {other:?}"),
        }
    })
    .await
}

#[tokio::test]
async fn rotate_logs_runs_logrotate_with_the_configured_file() {
    within_test_limit(async {
        assert!(
            agent::jobs::kinds::find_in_path("logrotate").is_some(),
            "logrotate is not installed: run scripts/setup (Debian package logrotate)"
        );
        let mut env = TestEnv::new();
        let logs = env.path().join("logs");
        fs::create_dir(&logs).unwrap();
        fs::write(logs.join("app.log"), "line\n").unwrap();
        let conf = env.path().join("logrotate.conf");
        fs::write(
            &conf,
            format!(
                "{}/app.log {{\n  rotate 2\n  missingok\n}}\n",
                logs.display()
            ),
        )
        .unwrap();
        env.settings.jobs.logrotate_config = conf;
        env.settings.jobs.logrotate_state_file = Some(env.path().join("logrotate.status"));
        let mgr = env.open().await;
        let (out, done) = run_to_end(&mgr, spec(job_spec::Kind::RotateLogs(RotateLogs {}))).await;
        assert_eq!(state(&done), JobState::Succeeded, "{out}");
        assert!(logs.join("app.log.1").exists(), "{out}");
        assert!(out.contains("logrotate -f -s"), "{out}");
    })
    .await
}

fn kill_spec(pid: i32, name: &str, signal: &str) -> JobSpec {
    spec(job_spec::Kind::KillProcess(KillProcess {
        pid,
        signal: signal.into(),
        expected_name: name.into(),
    }))
}

fn spawn_sleep() -> (tokio::process::Child, i32) {
    let child = tokio::process::Command::new("sleep")
        .arg("300")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;
    (child, pid)
}

/// Whether `child` is still running (not signalled to death).
fn alive(child: &mut tokio::process::Child) -> bool {
    child.try_wait().unwrap().is_none()
}

fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "{what} needs root (CI runs the tests as root); run with sudo"
    );
}

#[tokio::test]
async fn kill_refuses_a_thread_of_the_agent_and_signals_nothing() {
    within_test_limit(async {
        let env = TestEnv::new();
        let mgr = env.open().await;
        // A thread of this process, which is the agent here: the engine runs in it.
        let (hold, wait) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel::<i32>();
        let worker = std::thread::Builder::new()
            .name("held-worker".into())
            .spawn(move || {
                // "/proc/thread-self" links to "<pid>/task/<tid>".
                let link = fs::read_link("/proc/thread-self").unwrap();
                let tid = link.file_name().unwrap().to_string_lossy().parse().unwrap();
                tell.send(tid).unwrap();
                let _ = wait.recv();
            })
            .unwrap();
        let tid = told.recv().unwrap();
        assert_ne!(tid, std::process::id() as i32, "a thread, not the process");
        for signal in ["TERM", "KILL"] {
            let err = mgr
                .start(req(kill_spec(tid, "held-worker", signal)), &operator())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("thread of the agent itself"), "{err}");
            assert_eq!(code(err), tonic::Code::InvalidArgument);
        }
        assert!(mgr.list(0).await.is_empty(), "refusals create no job");
        hold.send(()).unwrap();
        worker.join().unwrap();
    })
    .await
}

#[tokio::test]
async fn kill_refuses_denied_names_and_signals_outside_the_config() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        env.settings.kill.allowed_signals = vec!["KILL".into()];
        env.settings.kill.denied_names.push("sleep".into());
        let mgr = env.open().await;
        let (mut victim, pid) = spawn_sleep();
        for (signal, why) in [
            ("KILL", "denied_names"),
            ("TERM", "not allowed"),
            ("STOP", "not allowed"),
        ] {
            let err = mgr
                .start(req(kill_spec(pid, "sleep", signal)), &operator())
                .await
                .unwrap_err();
            assert!(err.to_string().contains(why), "{signal}: {err}");
            assert_eq!(code(err), tonic::Code::InvalidArgument);
        }
        // With the default config STOP is not allowed either.
        let mgr = TestEnv::new().open().await;
        let err = mgr
            .start(req(kill_spec(pid, "sleep", "STOP")), &operator())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("allowed_signals"), "{err}");
        assert!(alive(&mut victim));
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(!status.contains("(stopped)"), "{status}");
    })
    .await
}

/// A pid is reused for real: while a kill job waits in the queue, its target exits and
/// another `sleep` is made to get the same pid (through `ns_last_pid`, which needs root).
#[tokio::test]
async fn a_reused_pid_is_never_signalled() {
    within_test_limit(async {
        require_root("making the kernel hand out a chosen pid");
        let mut env = TestEnv::new();
        env.settings.actions.push(sh("hold", "echo holding; sleep 300"));
        let mgr = env.open().await;
        let hold = start(&mgr, run_action("hold")).await;
        wait_for_output(&mgr, &hold.id, "holding").await;
        let (mut first, pid) = spawn_sleep();
        let queued = mgr
            .start(
                StartJobRequest {
                    queue_if_busy: true,
                    ..req(kill_spec(pid, "sleep", "KILL"))
                },
                &operator(),
            )
            .await
            .unwrap();
        assert_eq!(state(&queued), JobState::Queued);
        let first_start = agent::collect::processes::identity(pid).unwrap().starttime;
        first.kill().await.unwrap();
        // Start times count 10 ms ticks; a pid comes back only after the whole pid space
        // has gone round, so a real reuse is always ticks later. Here it is made at once,
        // so let at least a few ticks pass first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut second = None;
        for _ in 0..200 {
            fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
            let (child, got) = spawn_sleep();
            if got == pid {
                second = Some(child);
                break;
            }
        }
        let mut second = second.expect("another fork took the pid 200 times in a row");
        let now = agent::collect::processes::identity(pid).unwrap();
        assert_eq!(now.name, "sleep");
        assert_ne!(now.starttime, first_start, "the premise: a later start");

        mgr.cancel(&hold.id, &operator()).await.unwrap();
        let (out, done) = follow(&mgr, &queued.id, 0).await;
        let out = String::from_utf8_lossy(&out);
        assert_eq!(state(&done), JobState::Failed, "{out}");
        assert!(done.error.contains("reused"), "{}", done.error);
        assert!(done.error.contains("nothing was signalled"), "{}", done.error);
        assert!(alive(&mut second), "the new owner of pid {pid} was not signalled");
    })
    .await
}

/// The check right before the signal: a job whose stop is already set (cancelled while
/// it was between its checks and the signal) sends nothing.
#[tokio::test]
async fn a_cancelled_kill_job_does_not_signal_its_target() {
    use agent::jobs::output::{OutputLimits, OutputLog, Progress};
    use agent::jobs::runner::{Interrupt, JobCtx, StopReason};
    within_test_limit(async {
        let env = TestEnv::new();
        let (mut victim, pid) = spawn_sleep();
        let plan = agent::jobs::kinds::kill::prepare(
            &KillProcess {
                pid,
                signal: "KILL".into(),
                expected_name: "sleep".into(),
            },
            &env.settings.kill,
        )
        .unwrap();
        let log_path = env.path().join("output.log");
        fs::write(&log_path, "").unwrap();
        let log = OutputLog::open(
            &log_path,
            tokio::sync::watch::channel(Progress::default()).0,
            OutputLimits {
                max_bytes: 1 << 20,
                min_free_bytes: 0,
                state_dir: env.path().to_path_buf(),
            },
        )
        .await
        .unwrap();
        let cancelled = StopReason::Cancelled { by: "ops-ci".into() };
        let (_stop_tx, stop) = tokio::sync::watch::channel(Some(cancelled.clone()));
        let mut ctx = JobCtx::new(
            log,
            stop,
            tokio::time::Instant::now() + STEP,
            Duration::from_secs(1),
        );
        let report = agent::jobs::kinds::kill::execute(plan, &env.settings.kill, &mut ctx)
            .await
            .unwrap_err();
        assert_eq!(
            report.outcome,
            agent::jobs::kinds::Outcome::Interrupted(Interrupt::Stopped(cancelled))
        );
        assert!(alive(&mut victim), "a cancelled job sent its signal");
    })
    .await
}

/// The action's env names a folder first in PATH that holds a fake `setpriv` and a fake
/// `id`, as an application user could plant them: neither runs, and the real `id` runs
/// as the action's user with no supplementary group.
#[tokio::test]
async fn run_as_never_runs_a_program_planted_in_the_actions_path() {
    within_test_limit(async {
        require_root("run_as");
        let mut env = TestEnv::new();
        let planted = env.path().join("planted");
        let markers = env.path().join("markers");
        fs::create_dir(&planted).unwrap();
        fs::create_dir(&markers).unwrap();
        // Open to everyone, so a fake run as any user could leave its marker.
        fs::set_permissions(env.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&planted, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&markers, fs::Permissions::from_mode(0o777)).unwrap();
        for fake in ["setpriv", "id"] {
            let p = planted.join(fake);
            fs::write(
                &p,
                format!("#!/bin/sh\ntouch {}/{fake}-ran\necho fake-{fake}\n", markers.display()),
            )
            .unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut a = agent::jobs::ActionConfig::new("whoami", &["id"]);
        a.run_as = Some("nobody".into());
        a.env
            .insert("PATH".into(), format!("{}:/usr/bin:/bin", planted.display()));
        env.settings.actions.push(a);
        let mgr = env.open().await;
        let (out, done) = run_to_end(&mgr, run_action("whoami")).await;
        assert_eq!(state(&done), JobState::Succeeded, "{out}");
        let planted_ran: Vec<_> = fs::read_dir(&markers).unwrap().collect();
        assert!(planted_ran.is_empty(), "a planted program ran: {planted_ran:?}\n{out}");
        assert!(!out.contains("fake-"), "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("uid="))
            .unwrap_or_else(|| panic!("no id output: {out}"));
        assert!(line.starts_with("uid=65534("), "ran as nobody: {line}");
        assert!(line.contains(" gid=65534("), "{line}");
        let groups = line.split(" groups=").nth(1).unwrap();
        assert!(
            groups.starts_with("65534(") && !groups.contains(','),
            "supplementary groups are cleared: {line}"
        );
    })
    .await
}
