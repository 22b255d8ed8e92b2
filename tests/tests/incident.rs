//! `controller incident high-cpu` as an on-call engineer runs it, against moto, a real agent
//! process and the `systemctl` stand-in: a busy process tops the live JSON stream and the
//! report's timeline; without a host the incident takes the hosts CloudWatch has seen above
//! the threshold, not the first instance; restart-services goes through the stand-in only
//! with --yes; a scale-up changes the type in moto and leaves the instance running, and is
//! refused for an Auto Scaling group member.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use e2e::support::agent::{config_text, write_config, AgentProcess};
use e2e::support::aws_seed as seed;
use e2e::support::certs::TestPki;
use e2e::support::controller::{run_clean, ControllerConfig};
use e2e::support::moto::Moto;
use e2e::support::systemctl::FakeSystemctl;

struct World {
    moto: Moto,
    pki: TestPki,
    agent: AgentProcess,
    systemctl: FakeSystemctl,
    reports: PathBuf,
}

/// A busy loop the test owns, killed when dropped.
struct Busy(Child);

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn busy() -> Busy {
    Busy(Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap())
}

async fn world() -> World {
    let moto = Moto::start();
    let pki = TestPki::new();
    let systemctl = FakeSystemctl::new(&pki.path().join("bin"), "active", 0);
    let services = format!("[services]\nallowed = [\"httpd\"]\nsystemctl = \"{}\"\n", systemctl.path().display());
    let text = config_text(&pki, &pki.agent, "127.0.0.1:0", "", &services);
    let agent = AgentProcess::start(&write_config(&pki, "agent-incident", &text));
    let reports = pki.path().join("reports");
    World { moto, pki, agent, systemctl, reports }
}

impl World {
    fn config(&self, incident: &str) -> PathBuf {
        ControllerConfig::ec2(&self.pki)
            .extra(&format!("[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n[incident]\npoll = \"1s\"\n{incident}", self.moto.endpoint()))
            .write()
    }

    fn incident(&self, cfg: &Path, args: &[&str]) -> (i32, String, String) {
        let mut full = vec!["incident", "high-cpu", "--report-dir", self.reports.to_str().unwrap()];
        full.extend_from_slice(args);
        run_clean(&self.moto.env(), cfg, &full)
    }

    fn report(&self) -> serde_json::Value {
        let newest = std::fs::read_dir(&self.reports)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .max()
            .unwrap();
        serde_json::from_str(&std::fs::read_to_string(newest).unwrap()).unwrap()
    }
}

async fn web(w: &World, name: &str) -> String {
    let aws = w.moto.clients().await;
    // The application's log group exists (an incident that cannot read it says so and exits 1).
    if !matches!(controller::aws::logs::log_group_exists(&aws.logs, "/aws/ec2/techhealth").await, Ok(true)) {
        seed::log_group(&aws, "/aws/ec2/techhealth").await;
    }
    seed::instance(&aws, &[("Project", "TechHealth"), ("Name", name), ("Agent", &w.agent.addr.to_string())], true).await
}

#[tokio::test]
async fn a_busy_process_tops_the_live_json_stream_and_the_timeline() {
    let w = world().await;
    web(&w, "web-1").await;
    let hog = busy();
    let cfg = w.config("");
    let (code, out, err) = w.incident(&cfg, &["--host", "web-1", "--count", "3", "--interval", "500ms", "--output", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{out}");
    let last = &lines[2]["snapshot"];
    assert_eq!(last["processes"][0]["pid"], hog.0.id(), "{last}");
    assert!(last["per_core_percent"].as_array().is_some_and(|c| !c.is_empty()), "{last}");
    let report = w.report();
    assert_eq!(report["hosts"], serde_json::json!(["web-1"]));
    let seen: Vec<&str> = report["timeline"].as_array().unwrap().iter().filter(|e| e["kind"] == "seen").map(|e| e["what"].as_str().unwrap()).collect();
    assert!(seen.iter().any(|s| s.starts_with("web-1: CloudWatch CPU per 5 min")), "{seen:?}");
    assert!(seen.iter().any(|s| s.starts_with("web-1 at the start: CPU") && s.contains(&hog.0.id().to_string())), "{seen:?}");
    assert!(seen.iter().any(|s| s.starts_with("web-1 at the end: CPU")), "{seen:?}");
    assert_eq!(report["by"], "operator-test");
}

#[tokio::test]
async fn without_a_host_the_incident_takes_the_hosts_cloudwatch_saw_above_the_threshold() {
    let w = world().await;
    let hot = web(&w, "web-hot").await;
    let cool = web(&w, "web-cool").await;
    let aws = w.moto.clients().await;
    let now = chrono::Utc::now();
    for (id, cpu) in [(&hot, 95.0), (&cool, 20.0)] {
        let dims = BTreeMap::from([("InstanceId", id.as_str())]);
        let points: Vec<_> = (1..=4).map(|i| (now - chrono::Duration::minutes(5 * i), cpu)).collect();
        seed::metric(&aws, "AWS/EC2", "CPUUtilization", &dims, &points).await;
    }
    let cfg = w.config("");
    let (code, out, err) = w.incident(&cfg, &["--count", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("CPU of web-hot, last hour") && !out.contains("CPU of web-cool"), "{out}");
    assert!(out.contains(" 95.0 %"), "{out}");
    assert_eq!(w.report()["hosts"], serde_json::json!(["web-hot"]));
}

#[tokio::test]
async fn restarting_services_needs_yes_and_goes_through_the_agent() {
    let w = world().await;
    web(&w, "web-1").await;
    let cfg = w.config("services = [\"httpd\"]\n");
    let (code, out, err) = w.incident(&cfg, &["--host", "web-1", "--count", "1", "--restart-services"]);
    assert_eq!(code, 1, "not confirmed is not done\n{out}\n{err}");
    assert!(w.systemctl.calls().is_empty(), "{:?}", w.systemctl.calls());
    assert!(w.report()["timeline"].as_array().unwrap().iter().any(|e| e["kind"] == "declined"), "{}", w.report());

    let (code, out, err) = w.incident(&cfg, &["--host", "web-1", "--count", "1", "--restart-services", "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(w.systemctl.calls(), ["restart httpd", "is-active httpd"]);
    let done = w.report()["timeline"].as_array().unwrap().iter().find(|e| e["kind"] == "done").cloned().unwrap();
    assert!(done["what"].as_str().unwrap().contains("restart httpd: job"), "{done}");
    // The change is in the audit log beside the reports: its start, then its end.
    let audit = std::fs::read_to_string(w.reports.join("incident-audit.jsonl")).unwrap();
    let events: Vec<String> = audit.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(events, ["start", "done"], "{audit}");
}

#[tokio::test]
async fn a_scale_up_changes_the_type_and_leaves_the_instance_running_but_never_for_an_auto_scaling_member() {
    let w = world().await;
    let id = web(&w, "web-1").await;
    let cfg = w.config("scale_up_type = \"t3.small\"\n");
    let (code, out, err) = w.incident(&cfg, &["--host", "web-1", "--count", "1", "--scale-up", "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let aws = w.moto.clients().await;
    let facts = controller::aws::instances::facts(&aws.ec2, &id).await.unwrap();
    assert_eq!((facts.instance_type.as_str(), facts.state.as_str()), ("t3.small", "running"));
    let done = w.report()["timeline"].as_array().unwrap().iter().find(|e| e["kind"] == "done").cloned().unwrap();
    let steps: Vec<&str> = done["data"]["steps"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(steps[0].starts_with(&format!("stop {id}")) && steps.last().unwrap().starts_with("its agent answers again"), "{steps:?}");

    // A member of an Auto Scaling group: refused, nothing stopped or changed.
    let member = seed::instance(&aws, &[("Project", "TechHealth"), ("Name", "web-asg"), ("Agent", &w.agent.addr.to_string()), ("aws:autoscaling:groupName", "web-asg")], true).await;
    let (code, out, err) = w.incident(&cfg, &["--host", "web-asg", "--count", "1", "--scale-up", "--yes"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let refused = w.report()["timeline"].as_array().unwrap().iter().find(|e| e["kind"] == "refused").cloned().unwrap();
    assert!(refused["what"].as_str().unwrap().contains("Auto Scaling group web-asg"), "{refused}");
    let facts = controller::aws::instances::facts(&aws.ec2, &member).await.unwrap();
    assert_eq!((facts.instance_type.as_str(), facts.state.as_str()), ("t3.micro", "running"));
}

/// Runs `args` of the controller in a detached tmux session of 160x45 with `env`; the exit
/// code lands in `exit_file`.
fn in_tmux(session: &str, env: &[(&str, String)], cfg: &Path, args: &[&str], exit_file: &Path) {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut cmd = String::from("env -i PATH=/usr/bin:/bin HOME=/nonexistent TERM=xterm-256color");
    for (k, v) in env {
        cmd.push_str(&format!(" {k}={}", quote(v)));
    }
    cmd.push_str(&format!(" {} --config {}", quote(e2e::support::binary("controller").to_str().unwrap()), quote(cfg.to_str().unwrap())));
    for a in args {
        cmd.push_str(&format!(" {}", quote(a)));
    }
    cmd.push_str(&format!("; echo $? > {}; sleep 30", quote(exit_file.to_str().unwrap())));
    let ok = Command::new("tmux").args(["new-session", "-d", "-s", session, "-x", "160", "-y", "45", &cmd]).status();
    assert!(ok.is_ok_and(|s| s.success()), "cannot start tmux: install tmux (scripts/setup does)");
}

fn screen(session: &str) -> String {
    let out = Command::new("tmux").args(["capture-pane", "-p", "-t", session]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn keys(session: &str, keys: &[&str]) {
    let mut args = vec!["send-keys", "-t", session];
    args.extend_from_slice(keys);
    assert!(Command::new("tmux").args(&args).status().unwrap().success());
}

/// Waits until the screen shows `what`; returns it.
fn wait_screen(session: &str, what: impl Fn(&str) -> bool, label: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let s = screen(session);
        if what(&s) {
            return s;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "the screen never showed {label}:\n{s}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

struct Tmux(String);

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
    }
}

#[tokio::test]
async fn the_full_screen_view_puts_the_busy_process_first_and_kills_the_one_picked_after_confirmation() {
    let w = world().await;
    web(&w, "web-1").await;
    let mut hog = busy();
    let pid = hog.0.id().to_string();
    let cfg = w.config("");
    let session = Tmux(format!("incident-{}", std::process::id()));
    let exit = w.pki.path().join("exit");
    in_tmux(&session.0, &w.moto.env(), &cfg, &["incident", "high-cpu", "--host", "web-1", "--interval", "500ms", "--report-dir", w.reports.to_str().unwrap()], &exit);
    // The first process row is the busy loop.
    let shown = wait_screen(
        &session.0,
        |s| s.lines().skip_while(|l| !l.contains("PID")).nth(1).is_some_and(|row| row.split(|c: char| c.is_whitespace() || c == '│').any(|f| f == pid)),
        "the busy process on the first row",
    );
    assert!(shown.contains("processes by CPU"), "{shown}");
    assert!(shown.contains("cpu0") && shown.contains("cpu1"), "per-core load: {shown}");
    keys(&session.0, &["m"]);
    wait_screen(&session.0, |s| s.contains("processes by memory"), "the memory sort");
    keys(&session.0, &["c"]);
    wait_screen(&session.0, |s| s.contains("processes by CPU"), "the CPU sort again");
    // Pick the first row and ask to kill it: the incident shows what it will do and asks.
    keys(&session.0, &["k"]);
    wait_screen(&session.0, |s| s.contains(&format!("send SIGTERM to process {pid} (sh)")) && s.contains("Proceed? [y/N]"), "the confirmation");
    keys(&session.0, &["y", "Enter"]);
    let start = std::time::Instant::now();
    while !exit.exists() {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "the incident did not end:\n{}", screen(&session.0));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(std::fs::read_to_string(&exit).unwrap().trim(), "0", "{}", screen(&session.0));
    let status = hog.0.wait().unwrap();
    assert!(!status.success(), "the busy loop was signalled: {status:?}");
    let done = w.report()["timeline"].as_array().unwrap().iter().find(|e| e["kind"] == "done").cloned().unwrap();
    assert!(done["what"].as_str().unwrap().contains(&format!("kill {pid}: job")), "{done}");
}

#[tokio::test]
async fn adding_an_instance_launches_one_like_the_host_tagged_into_the_fleet_with_the_agents_user_data() {
    let w = world().await;
    let id = web(&w, "web-1").await;
    let sha = "ab".repeat(32);
    let cfg = w.config(&format!("agent_url = \"https://artifacts.example.com/ops-agent\"\nagent_sha256 = \"{sha}\"\n"));
    let (code, out, err) = w.incident(&cfg, &["--host", "web-1", "--count", "1", "--add-instance", "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let aws = w.moto.clients().await;
    let all = controller::aws::ec2::describe_instances(&aws.ec2, &BTreeMap::from([("Project".to_string(), "TechHealth".to_string())]), &["running"]).await.unwrap();
    let added = all.iter().find(|i| i.id != id).unwrap_or_else(|| panic!("no instance was added: {all:?}"));
    assert_eq!(added.name.as_deref(), Some("web-1-added"));
    let original = all.iter().find(|i| i.id == id).unwrap();
    assert_eq!(added.instance_type, original.instance_type);
    let attr = aws.ec2.describe_instance_attribute().instance_id(&added.id).attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData).send().await.unwrap();
    let encoded = attr.user_data().and_then(|u| u.value()).unwrap_or_default().to_string();
    let out = Command::new("base64").arg("-d").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    out.stdin.as_ref().unwrap().write_all(encoded.as_bytes()).unwrap();
    let text = String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap();
    assert!(text.starts_with("#cloud-config") && text.contains(&sha) && text.contains("method = \"ec2\""), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "no secret in user-data");
    let done = w.report()["timeline"].as_array().unwrap().iter().find(|e| e["kind"] == "done").cloned().unwrap();
    assert!(done["what"].as_str().unwrap().contains(&format!("launched {} like {id}", added.id)), "{done}");
}
