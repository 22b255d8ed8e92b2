//! Jobs end to end: the controller starts a typed job and follows it, a watch whose
//! connection is cut mid-way reattaches and resumes from its offset with every line
//! exactly once, an agent killed mid-job brings the job back `interrupted` after a
//! restart, a viewer may not start jobs (and the refusal is audited), every audit line
//! names the caller by certificate serial, SHA-256 fingerprint, name, role and address,
//! and `restart-service --if-running` restarts only a unit the host runs.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;
use std::time::Duration;

use controller::commands::job;
use e2e::support::agent::{config_text, dialer, host, spawn_in_process, write_config, AgentProcess};
use e2e::support::certs::TestPki;
use e2e::support::controller as controller_cli;
use e2e::support::systemctl::FakeSystemctl;
use e2e::support::proxy::Proxy;
use e2e::support::{binary, LineCounter};
use ops_proto::v1::{job_spec, JobSpec, JobState, RunAction, StartJobRequest};

const T: Duration = Duration::from_secs(90);

fn actions(lines: u32, pause: &str) -> String {
    format!(
        "[[actions]]\nname = \"count\"\nargv = [\"sh\", \"-c\", \"for i in $(seq 1 {lines}); do echo line $i; sleep {pause}; done\"]\n\
         [[actions]]\nname = \"hello\"\nargv = [\"echo\", \"hello\"]\n"
    )
}

fn run_action(name: &str) -> StartJobRequest {
    StartJobRequest {
        spec: Some(JobSpec { kind: Some(job_spec::Kind::RunAction(RunAction { name: name.into() })) }),
        idempotency_key: String::new(),
        timeout_seconds: 0,
        queue_if_busy: false,
    }
}

/// The job's own lines (the agent prefixes its notes, such as the command it ran, with "[agent]").
fn expect_lines(out: &str, n: u32) {
    let got: Vec<&str> = out.lines().filter(|l| !l.starts_with("[agent]")).collect();
    let want: Vec<String> = (1..=n).map(|i| format!("line {i}")).collect();
    assert_eq!(got, want, "every line exactly once, in order");
}

#[test]
fn controller_job_start_follows_output_and_ends_with_json_state() {
    let pki = TestPki::new();
    let text = config_text(&pki, &pki.agent, "127.0.0.1:0", "", &actions(5, "0.01"));
    let agent = AgentProcess::start(&write_config(&pki, "agent", &text));
    let cfg = controller_cli::static_config(&pki, &[("web-1", agent.addr.to_string())], "");
    let out = Command::new(binary("controller"))
        .args(["--config", cfg.to_str().unwrap(), "--output", "json", "job", "start", "web-1", "action", "count"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout {stdout} stderr {}", String::from_utf8_lossy(&out.stderr));
    let mut lines: Vec<&str> = stdout.lines().collect();
    let last: serde_json::Value = serde_json::from_str(lines.pop().unwrap()).unwrap();
    assert_eq!(last["state"], "succeeded");
    assert_eq!(last["exit_code"], 0);
    let id = last["job_id"].as_str().unwrap().to_string();
    expect_lines(&(lines.join("\n") + "\n"), 5);

    // An unknown action is refused by the agent, named, and exits non-zero.
    let out = Command::new(binary("controller"))
        .args(["--config", cfg.to_str().unwrap(), "job", "start", "web-1", "action", "rm-rf"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rm-rf"), "{}", String::from_utf8_lossy(&out.stderr));

    // The job shows in the list.
    let out = Command::new(binary("controller"))
        .args(["--config", cfg.to_str().unwrap(), "job", "list", "web-1"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&id) && listed.contains("succeeded"), "{listed}");
}

/// `controller job start HOST restart-service UNIT --if-running` through a real agent
/// process, with a `systemctl` stand-in as the agent's `[services] systemctl` (systemd
/// does not run on the test machines).
#[test]
fn restart_service_if_running_restarts_only_a_unit_the_host_runs() {
    let pki = TestPki::new();
    let bin = pki.path().join("bin");
    let systemctl = FakeSystemctl::new(&bin, "inactive", 0);
    let services = format!("[services]\nallowed = [\"httpd\"]\nsystemctl = \"{}\"\n", systemctl.path().display());
    let text = config_text(&pki, &pki.agent, "127.0.0.1:0", "", &services);
    let agent = AgentProcess::start(&write_config(&pki, "agent", &text));
    let cfg = controller_cli::static_config(&pki, &[("web-1", agent.addr.to_string())], "");
    let restart = || {
        let (code, stdout, stderr) = controller_cli::run(
            &cfg,
            &[],
            &["--output", "json", "job", "start", "web-1", "restart-service", "httpd", "--if-running"],
        );
        assert_eq!(code, 0, "stdout {stdout} stderr {stderr}");
        let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(last["state"], "succeeded", "{stdout}");
        (stdout, last["result"].clone())
    };

    let (out, result) = restart();
    assert_eq!(result["restarted"], false, "{out}");
    assert_eq!(result["active_state"], "inactive");
    assert!(out.contains("httpd is inactive: not running here, not restarted"), "{out}");
    assert_eq!(systemctl.calls(), ["is-active httpd"], "never restarted");

    // The same unit once the host runs it.
    FakeSystemctl::new(&bin, "active", 0);
    let (out, result) = restart();
    assert_eq!(result["restarted"], true, "{out}");
    assert_eq!(result["active_state"], "active");
    assert_eq!(
        systemctl.calls(),
        ["is-active httpd", "is-active httpd", "restart httpd", "is-active httpd"]
    );
}

#[tokio::test]
async fn watch_cut_mid_way_reattaches_and_gets_every_line_once() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", &actions(40, "0.05")).await;
        let proxy = Proxy::start(agent.local_addr()).await;
        let h = host("web-1", proxy.addr);
        let d = dialer(pki.operator_config());
        let started = job::start(&d, &h, run_action("count")).await.unwrap();

        let (mut w, mut rx) = LineCounter::new();
        let cutter = tokio::spawn(async move {
            rx.wait_for(|n| *n >= 10).await.unwrap();
            proxy.cut_all();
            rx.wait_for(|n| *n >= 25).await.unwrap();
            proxy.cut_all();
            proxy
        });
        let done = job::watch(&d, &h, &started.id, 0, &mut w).await.unwrap();
        let _proxy = cutter.await.unwrap();
        assert_eq!(done.state, JobState::Succeeded as i32);
        let out = w.text();
        expect_lines(&out, 40);
        assert_eq!(done.output_bytes, out.len() as u64);
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn agent_killed_mid_job_reports_it_interrupted_after_restart_and_runs_new_jobs() {
    let pki = TestPki::new();
    let text = config_text(&pki, &pki.agent, "127.0.0.1:0", "", &actions(600, "0.1"));
    let cfg = write_config(&pki, "agent", &text);
    let mut first = AgentProcess::start(&cfg);
    let d = dialer(pki.operator_config());
    tokio::time::timeout(T, async {
        let started = job::start(&d, &host("a", first.addr), run_action("count")).await.unwrap();
        // Wait for real output so the job is surely running, then crash the agent.
        let mut client = d.connect_streaming(&host("a", first.addr)).await.unwrap();
        let mut stream = client
            .watch_job(ops_proto::v1::WatchJobRequest { job_id: started.id.clone(), from_offset: 0 })
            .await
            .unwrap()
            .into_inner();
        let first_event = tokio_stream::StreamExt::next(&mut stream).await.unwrap().unwrap();
        assert!(matches!(first_event.event, Some(ops_proto::v1::job_event::Event::Output(_))));
        first.kill();

        let second = AgentProcess::start(&cfg);
        let job_after = job::get(&d, &host("a", second.addr), &started.id).await.unwrap();
        assert_eq!(job_after.state, JobState::Interrupted as i32, "{job_after:?}");
        assert!(!job_after.error.is_empty());
        let mut out = Vec::new();
        let fresh = job::start(&d, &host("a", second.addr), run_action("hello")).await.unwrap();
        let fresh = job::watch(&d, &host("a", second.addr), &fresh.id, 0, &mut out).await.unwrap();
        assert_eq!(fresh.state, JobState::Succeeded as i32);
        // The agent logs the program it found in its own PATH ("$ /usr/bin/echo hello").
        let out = String::from_utf8(out).unwrap();
        assert!(out.ends_with("/echo hello\nhello\n"), "{out}");
        drop(second);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn viewer_may_watch_but_not_start_and_the_refusal_is_audited() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", &actions(1, "0")).await;
        let h = host("web-1", agent.local_addr());
        let viewer = dialer(pki.client_config(&pki.viewer));
        let mut vc = viewer.connect(&h).await.unwrap();
        let err = vc.start_job(run_action("hello")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        // An operator's job can be watched by the viewer.
        let op = dialer(pki.operator_config());
        let j = job::start(&op, &h, run_action("hello")).await.unwrap();
        let mut out = Vec::new();
        let done = job::watch(&viewer, &h, &j.id, 0, &mut out).await.unwrap();
        assert_eq!(done.state, JobState::Succeeded as i32);
        let audit = std::fs::read_to_string(pki.path().join("state").join("audit.log")).unwrap();
        let events: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(events.iter().any(|e| e.to_string().contains("start_denied") && e.to_string().contains("viewer-test")), "{audit}");
        assert!(events.iter().any(|e| e.to_string().contains("\"start\"") && e.to_string().contains(&j.id)), "{audit}");
        assert!(events.iter().any(|e| e.to_string().contains("finished") && e.to_string().contains(&j.id)), "{audit}");
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

/// `openssl x509 -noout OPTIONS` of a certificate file: the value after the '=', as bare
/// lowercase hex.
fn openssl_field(cert: &std::path::Path, options: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout"])
        .args(options)
        .arg("-in")
        .arg(cert)
        .output()
        .expect("openssl is needed (scripts/setup installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase()
}

#[tokio::test]
async fn audit_lines_name_the_callers_certificate_serial_fingerprint_role_and_address() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", &actions(1, "0")).await;
        let h = host("web-1", agent.local_addr());
        let op = dialer(pki.operator_config());
        let j = job::start(&op, &h, run_action("hello")).await.unwrap();
        let viewer = dialer(pki.client_config(&pki.viewer));
        let denied = viewer.connect(&h).await.unwrap().start_job(run_action("hello")).await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let mut out = Vec::new();
        job::watch(&op, &h, &j.id, 0, &mut out).await.unwrap();

        let audit = std::fs::read_to_string(pki.path().join("state").join("audit.log")).unwrap();
        let lines: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        for (event, who) in [("start", &pki.operator), ("start_denied", &pki.viewer)] {
            let line = lines.iter().find(|l| l["event"] == event).unwrap_or_else(|| panic!("no {event} line: {audit}"));
            let fingerprint = openssl_field(&who.cert, &["-fingerprint", "-sha256"]);
            assert_eq!(fingerprint.len(), 64);
            assert_eq!(line["caller_sha256"], fingerprint, "{line}");
            let serial = openssl_field(&who.cert, &["-serial"]);
            let ours = line["caller_serial"].as_str().unwrap().replace(':', "");
            assert_eq!(ours.trim_start_matches('0'), serial.trim_start_matches('0'), "{line}");
            assert!(line["caller_addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{line}");
            assert!(!line["caller"].as_str().unwrap().is_empty());
        }
        let start = lines.iter().find(|l| l["event"] == "start").unwrap();
        assert_eq!(start["role"], "operator");
        let denied = lines.iter().find(|l| l["event"] == "start_denied").unwrap();
        assert_eq!(denied["role"], "viewer");
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}


#[tokio::test]
async fn controller_job_list_follows_the_agents_pages_past_the_first() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let jobs = "[jobs]\nallow_concurrent = true\nkeep_max_jobs = 1000\n";
        let agent = spawn_in_process(&pki, "", &format!("{jobs}{}", actions(1, "0"))).await;
        let h = host("web-1", agent.local_addr());
        let op = dialer(pki.operator_config());
        let mut started = Vec::new();
        for _ in 0..130 {
            started.push(job::start(&op, &h, run_action("hello")).await.unwrap().id);
        }
        started.reverse();
        // 130 jobs take two pages of the controller's 100.
        let listed: Vec<String> = job::list(&op, &h, 500).await.unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(listed.len(), 130);
        let distinct: std::collections::HashSet<&String> = listed.iter().collect();
        assert_eq!(distinct.len(), 130, "no job twice");
        let mut want = started.clone();
        want.sort_by(|a, b| b.cmp(a));
        assert_eq!(listed, want, "newest first across pages");
        assert_eq!(job::list(&op, &h, 120).await.unwrap().len(), 120);
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

/// A tmpfs of `size` on `dir` while the value lives (the test runs as root, as CI does).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        assert!(rustix::process::geteuid().is_root(), "this test mounts a tmpfs: run it as root (CI does)");
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status().unwrap();
        assert!(st.success(), "mount -t tmpfs: {st}");
        Tmpfs(dir.to_path_buf())
    }

    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        while f.write_all(&[0u8; 65536]).is_ok() {}
        while f.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn an_agent_on_a_full_state_disk_starts_serves_reads_refuses_jobs_and_resumes_when_space_returns() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let state = pki.path().join("state");
        let fs = Tmpfs::mount(&state, "2m");
        let extra = format!("[jobs]\nmin_free_bytes = 262144\n{}", actions(1, "0"));
        let agent = spawn_in_process(&pki, "", &extra).await;
        let h = host("web-1", agent.local_addr());
        let op = dialer(pki.operator_config());
        let first = job::start(&op, &h, run_action("hello")).await.unwrap();
        job::watch(&op, &h, &first.id, 0, &mut Vec::new()).await.unwrap();
        agent.shutdown().await.unwrap();
        let filler = fs.fill();

        let agent = spawn_in_process(&pki, "", &extra).await;
        let h = host("web-1", agent.local_addr());
        let mut c = op.connect(&h).await.unwrap();
        c.get_host_info(ops_proto::v1::HostInfoRequest {}).await.unwrap();
        c.get_snapshot(ops_proto::v1::SnapshotRequest::default()).await.unwrap();
        let got = job::get(&op, &h, &first.id).await.unwrap();
        assert_eq!(got.state, JobState::Succeeded as i32);
        assert_eq!(job::list(&op, &h, 0).await.unwrap().len(), 1);
        let mut out = Vec::new();
        job::watch(&op, &h, &first.id, 0, &mut out).await.unwrap();
        assert!(String::from_utf8_lossy(&out).contains("hello"));
        let refused = c.start_job(run_action("hello")).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("min_free_bytes"), "{}", refused.message());

        std::fs::remove_file(filler).unwrap();
        let next = job::start(&op, &h, run_action("hello")).await.unwrap();
        let done = job::watch(&op, &h, &next.id, 0, &mut Vec::new()).await.unwrap();
        assert_eq!(done.state, JobState::Succeeded as i32);
        agent.shutdown().await.unwrap();
        drop(fs);
    })
    .await
    .unwrap();
}

/// Descriptors a process has open now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn a_cleanup_of_five_thousand_sibling_folders_keeps_the_agents_descriptors_bounded() {
    use agent::jobs::kinds::cleanup::MAX_WALK_FDS;
    use ops_proto::v1::{Cleanup, CleanupRule, TimeField};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const FOLDERS: usize = 5_000;
    /// What the job around the walk may hold besides it: the job's output log, a record
    /// being written, the start and watch connections.
    const ENGINE_FDS: usize = 16;

    let pki = TestPki::new();
    let root = pki.path().join("wide");
    let old = std::time::SystemTime::now() - Duration::from_secs(10 * 86_400);
    for i in 0..FOLDERS {
        let dir = root.join(format!("d{i:04}"));
        std::fs::create_dir_all(&dir).unwrap();
        let f = std::fs::File::create(dir.join("old.log")).unwrap();
        f.set_times(std::fs::FileTimes::new().set_modified(old).set_accessed(old)).unwrap();
    }
    let sections = format!("[cleanup]\nallowed_roots = [\"{}\"]\n", root.display());
    let text = config_text(&pki, &pki.agent, "127.0.0.1:0", "", &sections);
    let agent = AgentProcess::start(&write_config(&pki, "agent", &text));
    let pid = agent.pid();
    let baseline = open_fds(pid);
    assert!(baseline > 0, "cannot read /proc/{pid}/fd");
    let bound = baseline + MAX_WALK_FDS + ENGINE_FDS;

    let done_flag = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done_flag = done_flag.clone();
        std::thread::spawn(move || {
            let (mut most, mut samples) = (0, 0u32);
            while !done_flag.load(Ordering::Relaxed) {
                most = most.max(open_fds(pid));
                samples += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (most, samples)
        })
    };
    let d = dialer(pki.operator_config());
    let h = host("a", agent.addr);
    let req = StartJobRequest {
        spec: Some(JobSpec {
            kind: Some(job_spec::Kind::Cleanup(Cleanup {
                rules: vec![CleanupRule {
                    root: root.display().to_string(),
                    pattern: "*.log".into(),
                    older_than_seconds: 86_400,
                    by: TimeField::Mtime as i32,
                }],
                dry_run: false,
            })),
        }),
        ..Default::default()
    };
    let done = tokio::time::timeout(T, async {
        let started = job::start(&d, &h, req).await.unwrap();
        let mut out = Vec::new();
        job::watch(&d, &h, &started.id, 0, &mut out).await.unwrap()
    })
    .await
    .unwrap();
    done_flag.store(true, Ordering::Relaxed);
    let (most, samples) = sampler.join().unwrap();
    eprintln!("agent descriptors: {baseline} before, at most {most} during the cleanup ({samples} samples)");
    assert_eq!(done.state, JobState::Succeeded as i32, "{}", done.error);
    let left = (0..FOLDERS).filter(|i| root.join(format!("d{i:04}/old.log")).exists()).count();
    assert_eq!(left, 0, "every old file is removed");
    assert!(samples >= 10, "too few samples ({samples}) to say anything");
    assert!(
        most <= bound,
        "the agent held {most} descriptors; the bound is {bound} ({baseline} before + {MAX_WALK_FDS} walk + {ENGINE_FDS})"
    );
    drop(agent);
}
