//! A rollout step carried out as an agent job against a real agent: its outcome is the
//! job's real final state, running the same step of the same run again gets the same job
//! back (never a second one), an unreachable agent is named `unreachable`, and cancelling
//! the run cancels the job on the agent.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use controller::rollout::agent_step::run_job_step;
use controller::rollout::journal::StepState;
use e2e::support::agent::{dialer, host, spawn_in_process};
use e2e::support::certs::TestPki;
use ops_proto::v1::{job_spec, JobSpec, ListJobsRequest, RunAction};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(90);

fn action(name: &str) -> JobSpec {
    JobSpec { kind: Some(job_spec::Kind::RunAction(RunAction { name: name.into() })) }
}

const ACTIONS: &str = "[[actions]]\nname = \"hello\"\nargv = [\"echo\", \"hello\"]\n\
[[actions]]\nname = \"broken\"\nargv = [\"sh\", \"-c\", \"echo about to fail; exit 3\"]\n\
[[actions]]\nname = \"slow\"\nargv = [\"sleep\", \"60\"]\n";

#[tokio::test]
async fn a_step_is_its_jobs_real_outcome_and_a_rerun_gets_the_same_job() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", ACTIONS).await;
        let d = dialer(pki.operator_config());
        let h = host("web-1", agent.local_addr());
        let (_tx, rx) = watch::channel(false);
        let mut log = Vec::new();
        let ok = run_job_step(&d, &h, "r-1", "app-deps", action("hello"), None, rx.clone(), &mut log).await;
        assert_eq!(ok.state, StepState::Succeeded, "{}", ok.detail);
        assert!(String::from_utf8_lossy(&log).contains("hello"));
        let again = run_job_step(&d, &h, "r-1", "app-deps", action("hello"), None, rx.clone(), &mut Vec::new()).await;
        assert_eq!(again.job_id, ok.job_id, "a resumed run gets the job the agent already has");
        let failed = run_job_step(&d, &h, "r-1", "cert-renew", action("broken"), None, rx.clone(), &mut Vec::new()).await;
        assert_eq!(failed.state, StepState::Failed);
        let mut c = d.connect(&h).await.unwrap();
        let jobs = c.list_jobs(ListJobsRequest { limit: 50, ..Default::default() }).await.unwrap().into_inner().jobs;
        assert_eq!(jobs.len(), 2, "one job per (run, host, step)");
        let unknown = run_job_step(&d, &h, "r-1", "x", action("no-such-action"), None, rx, &mut Vec::new()).await;
        assert_eq!(unknown.state, StepState::Failed);
        assert!(!unknown.unreachable, "the agent answered: refused, not unreachable");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_agent_that_is_not_there_is_unreachable_and_a_cancel_reaches_the_agent() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let d = dialer(pki.operator_config());
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (_tx, rx) = watch::channel(false);
        let gone = run_job_step(&d, &host("web-9", closed), "r-2", "patch", action("hello"), None, rx, &mut Vec::new()).await;
        assert!(gone.unreachable && gone.state == StepState::Failed, "{gone:?}");

        let agent = spawn_in_process(&pki, "", ACTIONS).await;
        let h = host("web-1", agent.local_addr());
        let (tx, rx) = watch::channel(false);
        let step = tokio::spawn({
            let (d, h) = (d.clone(), h.clone());
            async move { run_job_step(&d, &h, "r-2", "slow", action("slow"), None, rx, &mut Vec::new()).await }
        });
        // Cancel once the agent has the job running.
        let mut c = d.connect(&h).await.unwrap();
        loop {
            let jobs = c.list_jobs(ListJobsRequest { limit: 5, ..Default::default() }).await.unwrap().into_inner().jobs;
            if jobs.iter().any(|j| j.state == ops_proto::v1::JobState::Running as i32) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tx.send(true).unwrap();
        let out = tokio::time::timeout(Duration::from_secs(30), step).await.unwrap().unwrap();
        assert_eq!(out.state, StepState::Cancelled, "{}", out.detail);
    })
    .await
    .unwrap();
}
