//! The job engine through `JobManager`: detached runs, watch and resume, idempotency,
//! cancel, timeout, one-at-a-time, roles, audit, restart after a dead agent.
//! Real child processes throughout; no fakes.
#![allow(clippy::unwrap_used)]

mod jobs_support;

use std::time::Duration;

use agent::jobs::store::Store;
use jobs_support::*;
use ops_proto::identity::PeerIdentity;
use ops_proto::v1::{job_event, Job, JobState, StartJobRequest};
use tokio_stream::StreamExt;

fn state(job: &Job) -> JobState {
    JobState::try_from(job.state).unwrap()
}

#[tokio::test]
async fn watcher_that_drops_midway_resumes_from_its_offset_and_gets_every_line_once() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        env.settings.actions.push(sh(
            "count",
            "i=1; while [ $i -le 300 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.005; done",
        ));
        let mgr = env.open().await;
        let job = start(&mgr, run_action("count")).await;
        assert_eq!(state(&job), JobState::Running);

        // First attachment: read until line 40 has arrived, remember where we are, hang up.
        let mut stream = mgr.watch(&job.id, 0).unwrap();
        let mut first = Vec::new();
        let mut offset = 0u64;
        let read_part = async {
            while let Some(ev) = stream.next().await {
                match ev.unwrap().event.unwrap() {
                    job_event::Event::Output(c) => {
                        assert_eq!(c.offset, offset);
                        offset += c.data.len() as u64;
                        first.extend_from_slice(&c.data);
                        if String::from_utf8_lossy(&first).contains("line 40\n") {
                            return;
                        }
                    }
                    job_event::Event::Finished(_) => {
                        panic!("the job ended before the watcher hung up")
                    }
                }
            }
        };
        tokio::time::timeout(STEP, read_part).await.unwrap();
        drop(stream);

        // Second attachment from the offset: the rest, then the final record.
        let (rest, done) = follow(&mgr, &job.id, offset).await;
        assert_eq!(state(&done), JobState::Succeeded, "{done:?}");
        let all = [first, rest].concat();
        let text = String::from_utf8(all).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("[agent]")).collect();
        let expected: Vec<String> = (1..=300).map(|i| format!("line {i}")).collect();
        assert_eq!(lines, expected, "every line exactly once, in order");
    })
    .await
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job_and_refuses_another_spec() {
    within_test_limit(async {
        let env = TestEnv::new()
            .with_action("quick", &["/bin/true"])
            .with_action("other", &["/bin/true"]);
        let mgr = env.open().await;
        let request = |name: &str| StartJobRequest {
            idempotency_key: "weekly-2025-01".into(),
            ..req(run_action(name))
        };
        let a = mgr.start(request("quick"), &operator()).await.unwrap();
        let b = mgr.start(request("quick"), &operator()).await.unwrap();
        assert_eq!(a.id, b.id);
        let (_, done) = follow(&mgr, &a.id, 0).await;
        let c = mgr.start(request("quick"), &operator()).await.unwrap();
        assert_eq!(c.id, a.id, "the key still names the job after it ended");
        assert_eq!(state(&c), JobState::Succeeded);
        assert_eq!(done.idempotency_key, "weekly-2025-01");
        let err = mgr.start(request("other"), &operator()).await.unwrap_err();
        assert!(err.to_string().contains(&a.id), "{err}");
        assert_eq!(code(err), tonic::Code::AlreadyExists);
        assert_eq!(mgr.list(0).await.len(), 1);
    })
    .await
}

fn proc_alive(pid: i32) -> bool {
    // A zombie has exited: it only waits to be reaped by its (new) parent.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn cancel_stops_the_job_and_its_grandchildren() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        env.settings
            .actions
            .push(sh("sleeper", "sleep 300 & echo \"child $!\"; wait"));
        let mgr = env.open().await;
        let job = start(&mgr, run_action("sleeper")).await;
        let out = wait_for_output(&mgr, &job.id, "child ").await;
        let pid: i32 = out
            .lines()
            .find_map(|l| l.strip_prefix("child "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(proc_alive(pid));
        let running = mgr.get(&job.id).await.unwrap();
        assert!(
            running.output_bytes as usize >= out.len(),
            "a running job reports its output so far"
        );

        let cancelled = tokio::time::timeout(STEP, mgr.cancel(&job.id, &operator()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state(&cancelled), JobState::Cancelled, "{cancelled:?}");
        assert!(
            cancelled.error.contains("cancelled by ops-ci (operator)"),
            "{}",
            cancelled.error
        );
        assert!(
            !proc_alive(pid),
            "the grandchild {pid} was killed with its process group"
        );
        let again = mgr.cancel(&job.id, &operator()).await.unwrap();
        assert_eq!(again, cancelled, "cancelling an ended job changes nothing");
    })
    .await
}

#[tokio::test]
async fn timeout_escalates_to_sigkill_for_a_job_that_ignores_sigterm() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        env.settings.jobs.kill_grace_seconds = 1;
        env.settings.actions.push(sh(
            "stubborn",
            "trap '' TERM; echo ready; while :; do sleep 1; done",
        ));
        let mgr = env.open().await;
        let began = std::time::Instant::now();
        let job = mgr
            .start(
                StartJobRequest {
                    timeout_seconds: 1,
                    ..req(run_action("stubborn"))
                },
                &operator(),
            )
            .await
            .unwrap();
        assert_eq!(job.timeout_seconds, 1);
        let (out, done) = follow(&mgr, &job.id, 0).await;
        assert_eq!(state(&done), JobState::TimedOut, "{done:?}");
        assert!(done.error.contains("timed out after 1 s"), "{}", done.error);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("ready") && text.contains("job timed out: stopping"),
            "{text}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(15),
            "SIGKILL came after the grace period"
        );
    })
    .await
}

#[tokio::test]
async fn second_job_is_refused_while_one_runs_and_queues_when_asked() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        env.settings
            .actions
            .push(sh("long", "echo started; sleep 300"));
        env.settings
            .actions
            .push(action("quick", &["/bin/echo", "quick ran"]));
        let mgr = env.open().await;
        let first = start(&mgr, run_action("long")).await;
        wait_for_output(&mgr, &first.id, "started").await;

        let err = mgr
            .start(req(run_action("quick")), &operator())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(&first.id),
            "the refusal names the running job: {err}"
        );
        assert_eq!(code(err), tonic::Code::FailedPrecondition);

        let queued = mgr
            .start(
                StartJobRequest {
                    queue_if_busy: true,
                    ..req(run_action("quick"))
                },
                &operator(),
            )
            .await
            .unwrap();
        assert_eq!(state(&queued), JobState::Queued);
        let first_done = mgr.cancel(&first.id, &operator()).await.unwrap();
        let (out, second) = follow(&mgr, &queued.id, 0).await;
        assert_eq!(state(&second), JobState::Succeeded, "{second:?}");
        assert!(String::from_utf8_lossy(&out).contains("quick ran"));
        assert!(
            second.started_unix_ms >= first_done.finished_unix_ms,
            "the queued job waited for the slot"
        );
    })
    .await
}

#[tokio::test]
async fn queued_job_can_be_cancelled_before_it_starts() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        env.settings
            .actions
            .push(sh("long", "echo started; sleep 300"));
        let mgr = env.open().await;
        let first = start(&mgr, run_action("long")).await;
        wait_for_output(&mgr, &first.id, "started").await;
        let queued = mgr
            .start(
                StartJobRequest {
                    queue_if_busy: true,
                    ..req(run_action("long"))
                },
                &operator(),
            )
            .await
            .unwrap();
        let c = tokio::time::timeout(STEP, mgr.cancel(&queued.id, &operator()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state(&c), JobState::Cancelled);
        assert!(c.error.ends_with("before it started"), "{}", c.error);
        assert_eq!(c.started_unix_ms, 0);
        mgr.cancel(&first.id, &operator()).await.unwrap();
    })
    .await
}

#[tokio::test]
async fn viewer_and_unknown_roles_may_not_start_or_cancel_and_are_audited() {
    within_test_limit(async {
        let env = TestEnv::new().with_action("quick", &["/bin/true"]);
        let mgr = env.open().await;
        let err = mgr
            .start(req(run_action("quick")), &viewer())
            .await
            .unwrap_err();
        assert_eq!(code(err), tonic::Code::PermissionDenied);
        let nobody = PeerIdentity {
            name: "stranger".into(),
            role: None,
            role_claim: "admin".into(),
            ..Default::default()
        };
        let err = mgr
            .start(req(run_action("quick")), &nobody)
            .await
            .unwrap_err();
        assert_eq!(code(err), tonic::Code::PermissionDenied);
        let job = start(&mgr, run_action("quick")).await;
        let err = mgr.cancel(&job.id, &viewer()).await.unwrap_err();
        assert_eq!(code(err), tonic::Code::PermissionDenied);
        assert!(
            mgr.list(0).await.len() == 1,
            "no job was created by the denied calls"
        );

        let audit = env.audit();
        let denied: Vec<_> = audit
            .iter()
            .filter(|l| l["event"] == "start_denied")
            .collect();
        assert_eq!(denied.len(), 2);
        assert_eq!(denied[0]["caller"], "dashboard");
        assert_eq!(denied[0]["role"], "viewer");
        assert_eq!(denied[0]["spec"]["name"], "quick");
        assert_eq!(denied[1]["role"], "admin");
        let cancel_denied = audit
            .iter()
            .find(|l| l["event"] == "cancel_denied")
            .unwrap();
        assert_eq!(cancel_denied["job_id"], job.id.as_str());
    })
    .await
}

#[tokio::test]
async fn audit_start_line_is_durable_before_the_job_runs_and_the_outcome_follows() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        env.settings
            .actions
            .push(sh("fails", "echo to-stdout; echo to-stderr >&2; exit 3"));
        let mgr = env.open().await;
        let job = start(&mgr, run_action("fails")).await;
        // By the time any output exists, the start line must already be on disk.
        wait_for_output(&mgr, &job.id, "to-").await;
        let at_first_output = env.audit();
        let start_line = at_first_output
            .iter()
            .find(|l| l["event"] == "start")
            .unwrap();
        assert_eq!(start_line["job_id"], job.id.as_str());
        assert_eq!(start_line["caller"], "ops-ci");
        assert_eq!(start_line["role"], "operator");
        assert_eq!(start_line["spec"]["kind"], "action");
        assert_eq!(start_line["spec"]["name"], "fails");
        assert!(start_line["time"].as_str().unwrap().len() >= 20);

        let (out, done) = follow(&mgr, &job.id, 0).await;
        assert_eq!(state(&done), JobState::Failed);
        assert_eq!(done.exit_code, Some(3));
        assert!(done.error.contains("exit code 3"), "{}", done.error);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("to-stdout\n") && text.contains("to-stderr\n"),
            "stdout and stderr both logged: {text}"
        );
        let audit = env.audit();
        let fin = audit
            .iter()
            .find(|l| l["event"] == "finished" && l["job_id"] == job.id.as_str())
            .unwrap();
        assert_eq!(fin["state"], "failed");
        assert_eq!(fin["exit_code"], 3);
        assert_eq!(fin["output_bytes"], done.output_bytes);
    })
    .await
}

#[tokio::test]
async fn unknown_action_is_invalid_argument_and_audited_as_refused() {
    within_test_limit(async {
        let env = TestEnv::new().with_action("quick", &["/bin/true"]);
        let mgr = env.open().await;
        let err = mgr
            .start(req(run_action("rm-rf")), &operator())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown action \"rm-rf\""),
            "{err}"
        );
        assert!(
            err.to_string().contains("quick"),
            "the error lists what exists: {err}"
        );
        assert_eq!(code(err), tonic::Code::InvalidArgument);
        let audit = env.audit();
        assert!(audit
            .iter()
            .any(|l| l["event"] == "start_refused" && l["spec"]["name"] == "rm-rf"));
        assert_eq!(
            code(mgr.get("no-such-job").await.unwrap_err()),
            tonic::Code::NotFound
        );
        assert!(mgr.watch("no-such-job", 0).is_err());
    })
    .await
}

#[tokio::test]
async fn watch_past_the_end_is_out_of_range() {
    within_test_limit(async {
        let env = TestEnv::new().with_action("hello", &["/bin/echo", "hello"]);
        let mgr = env.open().await;
        let job = start(&mgr, run_action("hello")).await;
        let (_, done) = follow(&mgr, &job.id, 0).await;
        let err = mgr.watch(&job.id, done.output_bytes + 1).unwrap_err();
        assert_eq!(code(err), tonic::Code::OutOfRange);
        let (rest, _) = follow(&mgr, &job.id, done.output_bytes).await;
        assert!(
            rest.is_empty(),
            "watching from the end yields only the final record"
        );
    })
    .await
}

#[tokio::test]
async fn jobs_left_running_by_a_dead_agent_come_back_interrupted_and_new_jobs_run() {
    within_test_limit(async {
        let env = TestEnv::new().with_action("quick", &["/bin/echo", "after restart"]);
        // What a killed agent leaves behind: a record still saying running, partial output.
        let store = Store::open(&env.settings.state_dir).unwrap();
        let orphan = Job {
            id: "20250101T000000000Z-0dead0".into(),
            spec: Some(run_action("quick")),
            state: JobState::Running as i32,
            created_unix_ms: chrono::Utc::now().timestamp_millis() - 1000,
            started_unix_ms: chrono::Utc::now().timestamp_millis() - 1000,
            requested_by: "ops-ci".into(),
            ..Default::default()
        };
        store.create(&orphan).unwrap();
        std::fs::write(store.output_path(&orphan.id), b"partial output\n").unwrap();
        let ancient = Job {
            id: "20200101T000000000Z-01d01d".into(),
            state: JobState::Succeeded as i32,
            created_unix_ms: chrono::Utc::now().timestamp_millis() - 90 * 86_400_000,
            ..Default::default()
        };
        store.create(&ancient).unwrap();

        let mgr = env.open().await;
        let back = mgr.get(&orphan.id).await.unwrap();
        assert_eq!(state(&back), JobState::Interrupted);
        assert!(back.error.contains("agent stopped"), "{}", back.error);
        assert_eq!(back.output_bytes, 15);
        assert!(back.finished_unix_ms > 0);
        let (out, _) = follow(&mgr, &orphan.id, 0).await;
        assert_eq!(out, b"partial output\n");
        assert_eq!(
            code(mgr.get(&ancient.id).await.unwrap_err()),
            tonic::Code::NotFound,
            "old jobs are pruned"
        );
        assert!(!store.job_dir(&ancient.id).exists());
        assert!(env
            .audit()
            .iter()
            .any(|l| l["event"] == "finished" && l["state"] == "interrupted"));

        let job = start(&mgr, run_action("quick")).await;
        let (_, done) = follow(&mgr, &job.id, 0).await;
        assert_eq!(state(&done), JobState::Succeeded);

        // And a second agent start sees what the first one recorded.
        drop(mgr);
        let mgr = env.open().await;
        assert_eq!(state(&mgr.get(&job.id).await.unwrap()), JobState::Succeeded);
        assert_eq!(
            state(&mgr.get(&orphan.id).await.unwrap()),
            JobState::Interrupted
        );
        let ids: Vec<String> = mgr.list(0).await.into_iter().map(|j| j.id).collect();
        assert_eq!(ids, [job.id.clone(), orphan.id.clone()], "newest first");
    })
    .await
}

#[tokio::test]
async fn shutdown_interrupts_running_jobs_and_refuses_new_ones() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        env.settings
            .actions
            .push(sh("long", "echo started; sleep 300"));
        let mgr = env.open().await;
        let job = start(&mgr, run_action("long")).await;
        wait_for_output(&mgr, &job.id, "started").await;
        tokio::time::timeout(STEP, mgr.shutdown()).await.unwrap();
        let after = mgr.get(&job.id).await.unwrap();
        assert_eq!(state(&after), JobState::Interrupted, "{after:?}");
        let err = mgr
            .start(req(run_action("long")), &operator())
            .await
            .unwrap_err();
        assert_eq!(code(err), tonic::Code::Unavailable);
        drop(mgr);
        let reopened = env.open().await;
        assert_eq!(
            state(&reopened.get(&job.id).await.unwrap()),
            JobState::Interrupted,
            "persisted"
        );
    })
    .await
}

#[tokio::test]
async fn action_runs_with_its_cwd_env_and_user() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        let mut a = sh(
            "show",
            "pwd; echo \"greeting=$GREETING\"; id -u; echo \"home=$HOME\"",
        );
        a.cwd = Some(env.path().to_path_buf());
        a.env.insert("GREETING".into(), "hi".into());
        assert!(
            rustix::process::geteuid().is_root(),
            "run_as drops privileges, which needs root: run this test as root (CI does)"
        );
        a.run_as = Some("nobody".into());
        env.settings.actions.push(a);
        let mgr = env.open().await;
        let job = start(&mgr, run_action("show")).await;
        let (out, done) = follow(&mgr, &job.id, 0).await;
        assert_eq!(
            state(&done),
            JobState::Succeeded,
            "{}",
            String::from_utf8_lossy(&out)
        );
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains(&format!("{}\n", env.path().display())),
            "{text}"
        );
        assert!(text.contains("greeting=hi\n"), "{text}");
        assert!(text.contains("\n65534\n"), "ran as nobody: {text}");
        assert!(text.contains("home=/nonexistent"), "{text}");
    })
    .await
}

#[tokio::test]
async fn a_request_may_shorten_an_actions_timeout_but_never_lengthen_it() {
    within_test_limit(async {
        let mut env = TestEnv::new();
        env.settings.jobs.default_timeout_seconds = 120;
        let mut capped = action("capped", &["/bin/true"]);
        capped.timeout_seconds = Some(30);
        env.settings.actions.push(capped);
        env.settings.actions.push(action("plain", &["/bin/true"]));
        let mgr = env.open().await;
        for (name, requested, expected) in [
            ("capped", 0, 30),
            ("capped", 10, 10),
            ("capped", 3600, 30),
            ("plain", 0, 120),
            ("plain", 60, 60),
            ("plain", 86_400, 120),
        ] {
            let job = mgr
                .start(
                    StartJobRequest {
                        timeout_seconds: requested,
                        ..req(run_action(name))
                    },
                    &operator(),
                )
                .await
                .unwrap();
            assert_eq!(job.timeout_seconds, expected, "{name} asked for {requested}");
            let (_, done) = follow(&mgr, &job.id, 0).await;
            assert_eq!(state(&done), JobState::Succeeded);
            assert_eq!(done.timeout_seconds, expected, "the record keeps the bound used");
        }
    })
    .await
}
