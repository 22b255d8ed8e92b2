//! The job engine under hostile or heavy use: oversized requests, a full queue, a job
//! whose output passes its cap or fills the state directory, an agent started on a full
//! disk, a torn audit log, and `ListJobs` pages. The disk tests mount a small tmpfs as the
//! state directory (they need root, as CI runs) and unmount it afterwards.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod jobs_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use agent::jobs::limits::{MAX_CLEANUP_RULES, MAX_IDEMPOTENCY_KEY_BYTES};
use agent::jobs::store::Store;
use jobs_support::*;
use ops_proto::v1::{job_spec, Cleanup, CleanupRule, Job, JobSpec, JobState, StartJobRequest};

fn state(job: &Job) -> JobState {
    JobState::try_from(job.state).unwrap()
}

/// A tmpfs of `size` mounted on `dir` for the life of the value.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test mounts a tmpfs: run it as root (CI does)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount(8) from util-linux is needed");
        assert!(st.success(), "mount -t tmpfs failed: {st}");
        Tmpfs { dir: dir.to_path_buf() }
    }

    /// Fills the filesystem with one file until the kernel says it is full.
    /// Gives the filesystem more room (space returning, as when an operator grows a disk).
    fn grow(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .expect("mount -o remount");
        assert!(st.success(), "remount {} to {size} failed", self.dir.display());
    }

    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
                break;
            }
        }
        // Byte-sized writes take the last partial page.
        while f.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn finished_lines(env: &TestEnv, id: &str) -> usize {
    env.audit().iter().filter(|l| l["event"] == "finished" && l["job_id"] == id).count()
}

fn on_disk(env: &TestEnv, id: &str) -> Job {
    let (jobs, _) = Store::open(&env.settings.state_dir).unwrap().load_all().unwrap();
    jobs.into_iter().find(|j| j.id == id).unwrap()
}

#[tokio::test]
async fn an_oversized_key_or_too_many_cleanup_rules_are_refused_naming_the_field_and_nothing_is_stored() {
    within_test_limit(async {
        let env = TestEnv::new().with_action("quick", &["/bin/true"]);
        let mgr = env.open().await;
        let huge = StartJobRequest {
            idempotency_key: "k".repeat(3_900_000),
            ..req(run_action("quick"))
        };
        let e = mgr.start(huge, &operator()).await.unwrap_err();
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("idempotency_key"), "{}", status.message());
        assert!(status.message().contains(&MAX_IDEMPOTENCY_KEY_BYTES.to_string()));

        let rule = CleanupRule { root: "/tmp".into(), pattern: "*.tmp".into(), ..Default::default() };
        let many = JobSpec {
            kind: Some(job_spec::Kind::Cleanup(Cleanup { rules: vec![rule; 20_000], dry_run: true })),
        };
        let status = tonic::Status::from(mgr.start(req(many), &operator()).await.unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("cleanup.rules"), "{}", status.message());
        assert!(status.message().contains(&MAX_CLEANUP_RULES.to_string()));

        assert!(mgr.list(0).await.is_empty(), "nothing was stored");
        let audit_len = std::fs::metadata(env.audit_path()).unwrap().len();
        assert!(audit_len < 4096, "refusals are audited without the oversized fields: {audit_len} bytes");
        assert_eq!(env.audit().iter().filter(|l| l["event"] == "start_refused").count(), 2);
    })
    .await
}

#[tokio::test]
async fn a_full_queue_refuses_the_next_job_naming_the_limit() {
    within_test_limit(async {
        let mut env = TestEnv::new().with_action("slow", &["/bin/sleep", "60"]);
        env.settings.jobs.max_queued = 2;
        let mgr = env.open().await;
        let running = start(&mgr, run_action("slow")).await;
        let queue = || StartJobRequest { queue_if_busy: true, ..req(run_action("slow")) };
        let q1 = mgr.start(queue(), &operator()).await.unwrap();
        let q2 = mgr.start(queue(), &operator()).await.unwrap();
        assert_eq!(state(&q2), JobState::Queued);
        let status = tonic::Status::from(mgr.start(queue(), &operator()).await.unwrap_err());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("max_queued = 2"), "{}", status.message());
        for id in [&q2.id, &q1.id, &running.id] {
            assert_eq!(state(&mgr.cancel(id, &operator()).await.unwrap()), JobState::Cancelled);
        }
    })
    .await
}

#[tokio::test]
async fn list_pages_cover_every_job_once_newest_first_and_a_forged_token_is_refused() {
    within_test_limit(async {
        let env = TestEnv::new().with_action("quick", &["/bin/true"]);
        let mgr = env.open().await;
        let mut ids = Vec::new();
        for _ in 0..7 {
            let job = start(&mgr, run_action("quick")).await;
            follow(&mgr, &job.id, 0).await;
            ids.push(job.id);
        }
        ids.reverse();
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let (jobs, next) = mgr.list_page(3, &token).await.unwrap();
            assert!(jobs.len() <= 3);
            pages += 1;
            seen.extend(jobs.into_iter().map(|j| j.id));
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ids, "every job once, newest first");
        let e = mgr.list_page(3, "not-a-token").await.unwrap_err();
        assert_eq!(code(e), tonic::Code::InvalidArgument);
    })
    .await
}

/// A job that writes without end and leaves a background writer in its group.
const FLOOD: &str = "(while :; do echo background; sleep 0.01; done) & echo $! > \"$PIDFILE\"; \
                     while :; do echo 0123456789012345678901234567890123456789012345678901234567890123456789; done";

fn flood_env(pidfile: &Path) -> TestEnv {
    let mut a = sh("flood", FLOOD);
    a.env.insert("PIDFILE".into(), pidfile.display().to_string());
    let mut env = TestEnv::new();
    env.settings.actions.push(a);
    env.settings.actions.push(action("quick", &["/bin/echo", "still serving"]));
    env
}

fn assert_dead(pidfile: &Path) {
    let pid: i32 = std::fs::read_to_string(pidfile).unwrap().trim().parse().unwrap();
    // The group was SIGKILLed; the zombie is reaped by init soon, so wait for it boundedly.
    for _ in 0..200 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the job's background process {pid} survived");
}

#[tokio::test]
async fn output_past_its_cap_fails_the_job_saying_so_kills_its_group_and_the_engine_serves_on() {
    within_test_limit(async {
        let pidfile = tempfile::NamedTempFile::new().unwrap();
        let mut env = flood_env(pidfile.path());
        env.settings.jobs.max_output_bytes = 200_000;
        env.settings.jobs.min_free_bytes = 0;
        let mgr = env.open().await;
        let job = start(&mgr, run_action("flood")).await;
        let (out, done) = follow(&mgr, &job.id, 0).await;
        assert_eq!(state(&done), JobState::Failed);
        assert!(done.error.contains("max_output_bytes"), "{}", done.error);
        assert!(out.len() as u64 <= 200_000, "{} bytes", out.len());
        assert_dead(pidfile.path());
        assert_eq!(on_disk(&env, &job.id), done, "the record on disk is the final one");
        assert_eq!(finished_lines(&env, &job.id), 1);
        let next = start(&mgr, run_action("quick")).await;
        assert_eq!(state(&follow(&mgr, &next.id, 0).await.1), JobState::Succeeded);
    })
    .await
}

#[tokio::test]
async fn output_that_would_cross_the_free_space_floor_fails_the_job_and_new_jobs_wait_for_space() {
    within_test_limit(async {
        let pidfile = tempfile::NamedTempFile::new().unwrap();
        let mut env = flood_env(pidfile.path());
        let fs = Tmpfs::mount(&env.settings.state_dir, "2m");
        env.settings.jobs.min_free_bytes = 1024 * 1024;
        let mgr = env.open().await;
        let job = start(&mgr, run_action("flood")).await;
        let (_, done) = follow(&mgr, &job.id, 0).await;
        assert_eq!(state(&done), JobState::Failed);
        assert!(done.error.contains("min_free_bytes"), "{}", done.error);
        assert_dead(pidfile.path());
        assert_eq!(on_disk(&env, &job.id), done);
        assert_eq!(finished_lines(&env, &job.id), 1);
        // The floor held: the job stopped before the disk went below it.
        let free = rustix::fs::statvfs(&env.settings.state_dir).unwrap();
        assert!(free.f_bavail * free.f_frsize >= 1024 * 1024, "the floor is kept");
        // Something else fills the disk below the floor: new jobs are refused with why...
        let filler = fs.fill();
        let status = tonic::Status::from(mgr.start(req(run_action("quick")), &operator()).await.unwrap_err());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("free space"), "{}", status.message());
        // ...and accepted again once space returns.
        // The flood left the disk right at the floor: the filler going away alone gives the
        // next job no room above it, so the disk grows too.
        std::fs::remove_file(filler).unwrap();
        fs.grow("4m");
        let next = start(&mgr, run_action("quick")).await;
        let (out, last) = follow(&mgr, &next.id, 0).await;
        assert_eq!(state(&last), JobState::Succeeded, "{}: {out:?}", last.error);
        drop(fs);
    })
    .await
}

#[tokio::test]
async fn an_agent_started_on_a_full_disk_serves_reads_refuses_jobs_with_the_reason_and_resumes_when_space_returns() {
    within_test_limit(async {
        let mut env = TestEnv::new().with_action("quick", &["/bin/echo", "hello"]);
        env.settings.jobs.min_free_bytes = 256 * 1024;
        let fs = Tmpfs::mount(&env.settings.state_dir, "2m");
        let mgr = env.open().await;
        let first = start(&mgr, run_action("quick")).await;
        follow(&mgr, &first.id, 0).await;
        drop(mgr);
        // What a crash leaves: a job folder with only a temporary record.
        let store = Store::open(&env.settings.state_dir).unwrap();
        let leftover = store.job_dir("20250101T000000000Z-0c0c0c");
        std::fs::create_dir(&leftover).unwrap();
        std::fs::write(leftover.join("job.pb.tmp"), b"\x0a\x03abc").unwrap();
        let filler = fs.fill();

        let mgr = env.open().await;
        assert!(!leftover.exists(), "crash leftovers are cleaned at start");
        assert_eq!(state(&mgr.get(&first.id).await.unwrap()), JobState::Succeeded);
        assert_eq!(mgr.list(0).await.len(), 1);
        let (out, _) = follow(&mgr, &first.id, 0).await;
        assert!(String::from_utf8_lossy(&out).contains("hello"));
        let status = tonic::Status::from(mgr.start(req(run_action("quick")), &operator()).await.unwrap_err());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("min_free_bytes"), "{}", status.message());

        std::fs::remove_file(filler).unwrap();
        let next = start(&mgr, run_action("quick")).await;
        assert_eq!(state(&follow(&mgr, &next.id, 0).await.1), JobState::Succeeded);
        drop(mgr);
        drop(fs);
    })
    .await
}

#[tokio::test]
async fn a_job_whose_record_cannot_be_written_on_a_full_disk_gets_one_finished_line_across_a_restart() {
    within_test_limit(async {
        let pidfile = tempfile::NamedTempFile::new().unwrap();
        let mut env = flood_env(pidfile.path());
        let fs = Tmpfs::mount(&env.settings.state_dir, "1m");
        // No floor, and the audit log elsewhere: the case where the disk fills completely
        // and the record cannot be written while the audit line can.
        env.settings.jobs.min_free_bytes = 0;
        env.settings.jobs.audit_log = Some(env.path().join("audit.log"));
        let mgr = env.open().await;
        let job = start(&mgr, run_action("flood")).await;
        let (_, done) = follow(&mgr, &job.id, 0).await;
        assert_eq!(state(&done), JobState::Failed);
        assert!(done.error.contains("No space left"), "{}", done.error);
        assert_dead(pidfile.path());
        assert_eq!(state(&on_disk(&env, &job.id)), JobState::Running, "premise: the record could not be written");
        drop(mgr);

        // A restart on the still-full disk: the outcome comes from the audit line.
        let mgr = env.open().await;
        let back = mgr.get(&job.id).await.unwrap();
        assert_eq!(state(&back), JobState::Failed, "{back:?}");
        assert!(back.error.contains("No space left"), "{}", back.error);
        drop(mgr);
        let mgr = env.open().await;
        assert_eq!(state(&mgr.get(&job.id).await.unwrap()), JobState::Failed);
        assert_eq!(finished_lines(&env, &job.id), 1, "{:?}", env.audit());
        drop(mgr);
        drop(fs);
    })
    .await
}

#[tokio::test]
async fn a_torn_last_audit_line_is_left_alone_and_the_next_line_starts_fresh() {
    within_test_limit(async {
        let env = TestEnv::new().with_action("quick", &["/bin/true"]);
        std::fs::create_dir_all(&env.settings.state_dir).unwrap();
        std::fs::write(env.audit_path(), b"{\"event\":\"start\",\"job_id\":\"x\"}\n{\"event\":\"fini").unwrap();
        let mgr = env.open().await;
        let job = start(&mgr, run_action("quick")).await;
        follow(&mgr, &job.id, 0).await;
        let text = std::fs::read_to_string(env.audit_path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "{\"event\":\"fini", "the torn line is kept as it was");
        let parsed: Vec<serde_json::Value> =
            lines[2..].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(parsed.len(), 2, "{text}");
        assert_eq!(parsed[0]["event"], "start");
        assert_eq!(parsed[1]["event"], "finished");
    })
    .await
}

/// Files left in `dir`.
fn files_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().count() as u64
}

#[tokio::test]
async fn a_cleanup_that_fills_the_state_disk_removes_nothing_after_it_is_recorded_failed() {
    within_test_limit(async {
        const FILES: u64 = 10_000;
        let mut env = TestEnv::new();
        let fs = Tmpfs::mount(&env.settings.state_dir, "1m");
        // About 250 KiB of output fit above the floor: some 4,000 "removed ..." lines,
        // so the disk fills about half-way through the cleanup.
        env.settings.jobs.min_free_bytes = 768 * 1024;
        let root = env.path().join("root");
        std::fs::create_dir(&root).unwrap();
        for i in 0..FILES {
            std::fs::File::create(root.join(format!("file-{i:05}.tmp"))).unwrap();
        }
        env.settings.cleanup.allowed_roots = vec![root.clone()];
        let mgr = env.open().await;
        let spec = JobSpec {
            kind: Some(job_spec::Kind::Cleanup(Cleanup {
                rules: vec![CleanupRule {
                    root: root.display().to_string(),
                    pattern: "*.tmp".into(),
                    older_than_seconds: 0,
                    ..Default::default()
                }],
                dry_run: false,
            })),
        };
        let job = start(&mgr, spec).await;
        let (_, done) = follow(&mgr, &job.id, 0).await;
        let left_at_end = files_in(&root);
        assert_eq!(state(&done), JobState::Failed);
        assert!(done.error.contains("min_free_bytes"), "{}", done.error);
        assert!(left_at_end > 0, "the disk must fill before the cleanup is done (the test's premise)");
        let removed = match done.result.clone().and_then(|r| r.kind) {
            Some(ops_proto::v1::job_result::Kind::Cleanup(c)) => c.files,
            other => panic!("a failed cleanup still reports what it removed: {other:?}"),
        };
        assert_eq!(left_at_end, FILES - removed, "the record counts every file removed, and only those");
        // Nothing synchronises with a walker that should not exist: give it time to show.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(files_in(&root), left_at_end, "files were removed after the job was recorded failed");
        assert_eq!(on_disk(&env, &job.id), done, "the record on disk is the final one");
        drop(mgr);
        drop(fs);
    })
    .await
}
