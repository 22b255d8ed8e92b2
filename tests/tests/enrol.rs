//! Joining the fleet as a host installed through user-data does: a real `agent` process
//! with only the fleet CA and `[enrol] method = "ec2"` makes its own key, proves its
//! identity with the instance-identity document served by the loopback IMDSv2 stand-in
//! (signed by a test key standing for AWS's regional certificate) for an instance moto
//! created, and `controller fleet enroll` signs its CSR; then `fleet ping` reaches it,
//! `fleet rotate-certs` renews it live and `fleet remove` revokes it. Every refusal the
//! controller makes is tested against a real agent, and so is the agent's side of it.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};

use e2e::support::agent::AgentProcess;
use e2e::support::aws_seed as seed;
use e2e::support::certs::TestPki;
use e2e::support::controller::{run_clean, ControllerConfig};
use e2e::support::imds::{AwsSigner, Imds};
use e2e::support::moto::{Moto, REGION};

/// The test's fleet CA as `[enrol] pki_dir` wants it: ca.pem and an owner-only ca.key.
fn pki_dir(pki: &TestPki) -> PathBuf {
    let dir = pki.path().join("fleet-ca");
    std::fs::create_dir_all(&dir).unwrap();
    controller::pki::write_file(&dir.join("ca.pem"), &pki.ca.pem.cert, false, true).unwrap();
    controller::pki::write_file(&dir.join("ca.key"), &pki.ca.pem.key, true, true).unwrap();
    dir
}

/// An agent as user-data installs it: the CA, no certificate, `[enrol]`.
fn waiting_agent(pki: &TestPki, name: &str, imds: Option<&Imds>, enrol: &str) -> (AgentProcess, PathBuf) {
    let dir = pki.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let metadata = match imds {
        Some(i) => format!("[metadata]\nurl = \"{}\"\ntimeout_ms = 3000\n", i.url),
        None => "[metadata]\nenabled = false\n".into(),
    };
    let text = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"{state}\"\n[tls]\nca = \"{ca}\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\nreload_check_seconds = 1\n{metadata}[enrol]\n{enrol}\n",
        state = dir.join("state").display(),
        ca = pki.ca_file.display(),
    );
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, text).unwrap();
    (AgentProcess::start(&cfg), dir)
}

struct World {
    moto: Moto,
    pki: TestPki,
    signer: AwsSigner,
    ca_dir: PathBuf,
}

impl World {
    async fn new() -> World {
        let moto = Moto::start();
        let pki = TestPki::new();
        let ca_dir = pki_dir(&pki);
        World { moto, pki, signer: AwsSigner::generate(), ca_dir }
    }

    /// The EC2 fleet, dialled at each instance's `Agent` tag and checked by instance id.
    fn ec2_config(&self, aws_cert: &Path, extra: &str) -> PathBuf {
        self.config(ControllerConfig::ec2(&self.pki).fleet_key("server_name = \"instance-id\""), aws_cert, extra)
    }

    fn config(&self, base: ControllerConfig<'_>, aws_cert: &Path, extra: &str) -> PathBuf {
        base.extra(&format!(
            "[aws]\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\n[enrol]\npki_dir = \"{}\"\naws_certificates = {{ \"{REGION}\" = \"{}\" }}\n{extra}",
            self.moto.endpoint(),
            self.ca_dir.display(),
            aws_cert.display()
        ))
        .write()
    }

    fn controller(&self, cfg: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let (code, out, err) = run_clean(&self.moto.env(), cfg, &full);
        let v = serde_json::from_str(&out).unwrap_or_else(|_| serde_json::Value::String(out.clone()));
        (code, v, err)
    }
}

async fn fleet_instance(w: &World, name: &str) -> String {
    seed::instance(&w.moto.clients().await, &[("Project", "TechHealth"), ("Name", name)], true).await
}

async fn tag_agent(w: &World, id: &str, agent: &AgentProcess) {
    let aws = w.moto.clients().await;
    let tag = aws_sdk_ec2::types::Tag::builder().key("Agent").value(agent.addr.to_string()).build();
    aws.ec2.create_tags().resources(id).tags(tag).send().await.unwrap();
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn only_row(v: &serde_json::Value) -> &serde_json::Value {
    let rows = v.as_array().unwrap_or_else(|| panic!("not a JSON array: {v}"));
    assert_eq!(rows.len(), 1, "{v}");
    &rows[0]
}

#[tokio::test]
async fn an_agent_without_a_certificate_enrols_by_its_instance_identity_then_rotates_and_is_revoked_on_removal() {
    let w = World::new().await;
    let id = fleet_instance(&w, "web-new").await;
    let imds = Imds::start(&w.moto, &id, &w.signer);
    let (agent, dir) = waiting_agent(&w.pki, "web-new", Some(&imds), "method = \"ec2\"");
    tag_agent(&w, &id, &agent).await;
    let cfg = w.ec2_config(&w.signer.cert_file, "");

    // Waiting: the key exists (owner-only), the certificate does not, ping cannot verify it.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.join("agent.key")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!dir.join("agent.pem").exists());
    let (code, v, _) = w.controller(&cfg, &["fleet", "ping"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(only_row(&v)["error_kind"], "agent certificate invalid", "{v}");

    let (code, v, err) = w.controller(&cfg, &["fleet", "enroll"]);
    assert_eq!(code, 0, "{v}\n{err}\nagent:\n{}", agent.stderr());
    let row = only_row(&v);
    assert_eq!(row["outcome"], "enrolled", "{v}");
    assert_eq!(row["identity"], id.as_str());
    let serial = row["serial"].as_str().unwrap().to_string();

    // Live switch, no restart: the same process now answers full mTLS under its instance id.
    let (code, v, _) = w.controller(&cfg, &["fleet", "ping"]);
    assert_eq!(code, 0, "{v}\nagent:\n{}", agent.stderr());
    let row = only_row(&v);
    assert_eq!(row["certificate_serial"], serial.as_str());
    assert!(row["certificate_expires"].as_str().unwrap().starts_with(&(chrono::Utc::now() + chrono::Duration::days(90)).format("%Y-%m-%d").to_string()), "{v}");
    assert!(agent.stderr().contains(&format!("enrolled with certificate serial {serial}")), "{}", agent.stderr());

    // Enrolled agents are left alone.
    let (code, v, _) = w.controller(&cfg, &["fleet", "enroll"]);
    assert_eq!((code, only_row(&v)["outcome"].as_str()), (0, Some("already-enrolled")), "{v}");

    // Rotation: not due inside a 90-day certificate's 30-day window; forced, a new key and serial.
    let key_before = std::fs::read(dir.join("agent.key")).unwrap();
    let (code, v, _) = w.controller(&cfg, &["fleet", "rotate-certs"]);
    assert_eq!((code, only_row(&v)["outcome"].as_str()), (0, Some("not-due")), "{v}");
    let (code, v, err) = w.controller(&cfg, &["fleet", "rotate-certs", "--force"]);
    assert_eq!(code, 0, "{v}\n{err}\nagent:\n{}", agent.stderr());
    let row = only_row(&v);
    assert_eq!((row["outcome"].as_str(), row["old_serial"].as_str()), (Some("rotated"), Some(serial.as_str())), "{v}");
    let rotated = row["serial"].as_str().unwrap().to_string();
    assert_ne!(rotated, serial);
    assert_ne!(std::fs::read(dir.join("agent.key")).unwrap(), key_before, "a rotation makes a new key");
    let (code, v, _) = w.controller(&cfg, &["fleet", "ping"]);
    assert_eq!((code, only_row(&v)["certificate_serial"].as_str()), (0, Some(rotated.as_str())), "{v}");

    // The record of attempts, on the controller and on the agent.
    let audit = audit_lines(&w.ca_dir.join("enrol-audit.jsonl"));
    assert!(audit.iter().any(|l| l["result"]["outcome"] == "enrolled" && l["by"] == "operator-test"), "{audit:?}");
    let agent_audit = std::fs::read_to_string(dir.join("state/audit.log")).unwrap_or_default();
    assert!(agent_audit.contains("\"event\":\"enrol_installed\""), "{agent_audit}");

    // Removal revokes both certificates; a controller loading the CRL refuses the agent.
    let (code, v, err) = w.controller(&cfg, &["fleet", "remove", "web-new"]);
    assert_eq!(code, 0, "{v}\n{err}");
    let revoked: Vec<&str> = v["revoked"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(revoked, vec![serial.as_str(), rotated.as_str()]);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[tls]\n", &format!("[tls]\ncrl = \"{}\"\n", w.ca_dir.join("crl.pem").display()));
    std::fs::write(&cfg, text).unwrap();
    let (code, v, _) = w.controller(&cfg, &["fleet", "ping"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(only_row(&v)["error_kind"], "agent certificate invalid", "{v}");
    assert!(only_row(&v)["error"].as_str().unwrap().to_lowercase().contains("revoked"), "{v}");
}

#[tokio::test]
async fn each_identity_that_does_not_hold_up_is_refused_on_both_sides_and_audited() {
    let w = World::new().await;
    let aws = w.moto.clients().await;

    // A document signed by someone other than the configured AWS certificate.
    let forged_id = fleet_instance(&w, "forged").await;
    let other_signer = AwsSigner::generate();
    let forged_imds = Imds::start(&w.moto, &forged_id, &other_signer);
    let (forged, _) = waiting_agent(&w.pki, "forged", Some(&forged_imds), "method = \"ec2\"");
    tag_agent(&w, &forged_id, &forged).await;

    // The agent answering at instance B's address proves it is instance A.
    let a = fleet_instance(&w, "web-a").await;
    let b = fleet_instance(&w, "web-b").await;
    let a_imds = Imds::start(&w.moto, &a, &w.signer);
    let (impostor, _) = waiting_agent(&w.pki, "impostor", Some(&a_imds), "method = \"ec2\"");
    tag_agent(&w, &b, &impostor).await;

    let cfg = w.ec2_config(&w.signer.cert_file, "");
    let (code, v, _) = w.controller(&cfg, &["fleet", "enroll", "--hosts", "forged,web-b"]);
    assert_eq!(code, 1, "{v}");
    let rows = v.as_array().unwrap();
    assert_eq!((rows[0]["outcome"].as_str(), rows[0]["kind"].as_str()), (Some("refused"), Some("bad-signature")), "{v}");
    assert_eq!((rows[1]["outcome"].as_str(), rows[1]["kind"].as_str()), (Some("refused"), Some("address-mismatch")), "{v}");
    assert!(rows[1]["reason"].as_str().unwrap().contains(&a), "{v}");
    assert!(!w.pki.path().join("forged/agent.pem").exists() && !w.pki.path().join("impostor/agent.pem").exists());
    // The agent is told why, logs it and audits it.
    assert!(forged.stderr().contains("refused this agent's enrolment"), "{}", forged.stderr());
    let agent_audit = std::fs::read_to_string(w.pki.path().join("forged/state/audit.log")).unwrap();
    assert!(agent_audit.contains("\"event\":\"enrol_refused\""), "{agent_audit}");

    // The metadata service names a host the instance is not: the CSR asks for a name that
    // EC2 does not give the instance.
    let renamed_id = fleet_instance(&w, "renamed").await;
    let renamed_imds = Imds::start_with(&w.moto, &renamed_id, &w.signer, &["--local-hostname", "bank.example.com"]);
    let (renamed, _) = waiting_agent(&w.pki, "renamed", Some(&renamed_imds), "method = \"ec2\"");
    tag_agent(&w, &renamed_id, &renamed).await;
    let (code, v, _) = w.controller(&cfg, &["fleet", "enroll", "--hosts", "renamed"]);
    assert_eq!((code, only_row(&v)["kind"].as_str()), (1, Some("names-mismatch")), "{v}");
    assert!(only_row(&v)["reason"].as_str().unwrap().contains("bank.example.com"), "{v}");

    // Not in the fleet, and not running: a static host whose agent is such an instance.
    let stray = seed::instance(&aws, &[("Name", "stray")], true).await;
    let stopped = fleet_instance(&w, "stopped").await;
    seed::stop(&aws, &stopped).await;
    let stray_imds = Imds::start(&w.moto, &stray, &w.signer);
    let stopped_imds = Imds::start(&w.moto, &stopped, &w.signer);
    let (stray_agent, _) = waiting_agent(&w.pki, "stray", Some(&stray_imds), "method = \"ec2\"");
    let (stopped_agent, _) = waiting_agent(&w.pki, "stopped", Some(&stopped_imds), "method = \"ec2\"");
    let static_cfg = w.config(
        ControllerConfig::new(&w.pki)
            .host_named("stray", stray_agent.addr, &stray)
            .host_named("stopped", stopped_agent.addr, &stopped)
            .fleet_key("tag_filters = { Project = \"TechHealth\" }"),
        &w.signer.cert_file,
        "",
    );
    let (code, v, _) = w.controller(&static_cfg, &["fleet", "enroll"]);
    assert_eq!(code, 1, "{v}");
    let kinds: Vec<&str> = v.as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap_or("-")).collect();
    assert_eq!(kinds, vec!["not-in-fleet", "not-running"], "{v}");

    // A caller without the operator role gets nothing from a waiting agent.
    let viewer_cfg = w.config(ControllerConfig::ec2(&w.pki).viewer().fleet_key("server_name = \"instance-id\""), &w.signer.cert_file, "");
    let (code, v, _) = w.controller(&viewer_cfg, &["fleet", "enroll", "--hosts", "forged"]);
    assert_eq!(code, 1, "{v}");
    assert!(only_row(&v)["reason"].as_str().unwrap().contains("needs the operator role"), "{v}");

    let audit = audit_lines(&w.ca_dir.join("enrol-audit.jsonl"));
    let refused: Vec<&str> = audit.iter().filter_map(|l| l["result"]["kind"].as_str()).collect();
    for kind in ["bad-signature", "address-mismatch", "names-mismatch", "not-in-fleet", "not-running"] {
        assert!(refused.contains(&kind), "{kind} not audited: {audit:?}");
    }
}

#[tokio::test]
async fn a_reinstalled_instance_needs_re_enrol_and_a_join_token_enrols_once_and_never_after_it_expires() {
    let w = World::new().await;
    let id = fleet_instance(&w, "web-1").await;
    let imds = Imds::start(&w.moto, &id, &w.signer);
    let (mut agent, dir) = waiting_agent(&w.pki, "web-1", Some(&imds), "method = \"ec2\"");
    tag_agent(&w, &id, &agent).await;
    let cfg = w.ec2_config(&w.signer.cert_file, "");
    assert_eq!(w.controller(&cfg, &["fleet", "enroll"]).0, 0);

    // Reinstalled: state wiped, a new key, the same instance id.
    agent.terminate();
    std::fs::remove_file(dir.join("agent.pem")).unwrap();
    std::fs::remove_file(dir.join("agent.key")).unwrap();
    let agent = AgentProcess::start(&dir.join("agent.toml"));
    tag_agent(&w, &id, &agent).await;
    let (code, v, _) = w.controller(&cfg, &["fleet", "enroll"]);
    assert_eq!((code, only_row(&v)["kind"].as_str()), (1, Some("replayed")), "{v}");
    assert!(only_row(&v)["reason"].as_str().unwrap().contains("--re-enrol"), "{v}");
    let (code, v, _) = w.controller(&cfg, &["fleet", "enroll", "--re-enrol"]);
    assert_eq!((code, only_row(&v)["outcome"].as_str()), (0, Some("enrolled")), "{v}");

    // Outside EC2: a join token bound to the host name, used once.
    let token_cfg = |hosts: &[(&str, std::net::SocketAddr)]| {
        let mut c = ControllerConfig::new(&w.pki);
        for (name, addr) in hosts {
            c = c.host_named(name, addr, name);
        }
        w.config(c, &w.signer.cert_file, "")
    };
    let placeholder = token_cfg(&[]);
    let (code, out, err) = run_clean(&w.moto.env(), &placeholder, &["fleet", "join-token", "--host", "build-1"]);
    assert_eq!(code, 0, "{err}");
    let token = out.trim().to_string();
    assert!(err.contains("never to user-data"), "{err}");
    let enrol = |name: &str, token: &str| {
        let d = w.pki.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("join-token"), token).unwrap();
        waiting_agent(&w.pki, name, None, "method = \"join-token\"\njoin_token_file = \"join-token\"\nhost_name = \"build-1\"")
    };
    let (first, first_dir) = enrol("build-1", &token);
    let (code, v, _) = w.controller(&token_cfg(&[("build-1", first.addr)]), &["fleet", "enroll"]);
    assert_eq!((code, only_row(&v)["outcome"].as_str()), (0, Some("enrolled")), "{v}");
    assert!(!first_dir.join("join-token").exists(), "the used token is removed from the host");
    // The same token again, from another install: refused as used.
    let (second, _) = enrol("build-1-again", &token);
    let (code, v, _) = w.controller(&token_cfg(&[("build-1", second.addr)]), &["fleet", "enroll", "--re-enrol"]);
    assert_eq!((code, only_row(&v)["kind"].as_str()), (1, Some("token-reused")), "{v}");
    // A token past its lifetime.
    let (code, out, err) = run_clean(&w.moto.env(), &placeholder, &["fleet", "join-token", "--host", "build-1", "--ttl", "1s"]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (late, _) = enrol("build-1-late", out.trim());
    let (code, v, _) = w.controller(&token_cfg(&[("build-1", late.addr)]), &["fleet", "enroll", "--re-enrol"]);
    assert_eq!((code, only_row(&v)["kind"].as_str()), (1, Some("token-expired")), "{v}");
    // A token for another host name.
    let (_, out, _) = run_clean(&w.moto.env(), &placeholder, &["fleet", "join-token", "--host", "build-9"]);
    let (wrong, _) = enrol("build-1-wrong", out.trim());
    let (code, v, _) = w.controller(&token_cfg(&[("build-1", wrong.addr)]), &["fleet", "enroll", "--re-enrol"]);
    assert_eq!((code, only_row(&v)["kind"].as_str()), (1, Some("token-host")), "{v}");
}

#[tokio::test]
async fn with_auto_enrolment_any_fleet_command_enrols_a_waiting_agent_once_and_reaches_it() {
    let w = World::new().await;
    let mut waiting = Vec::new();
    for name in ["web-a", "web-b"] {
        let id = fleet_instance(&w, name).await;
        let imds = Imds::start(&w.moto, &id, &w.signer);
        let (agent, dir) = waiting_agent(&w.pki, name, Some(&imds), "method = \"ec2\"");
        tag_agent(&w, &id, &agent).await;
        waiting.push((imds, agent, dir));
    }
    let cfg = w.ec2_config(&w.signer.cert_file, "auto = true\n");
    // diag meets web-a waiting: it enrols it and shows the snapshot.
    let (code, out, err) = run_clean(&w.moto.env(), &cfg, &["--output", "json", "diag", "web-a", "--count", "1"]);
    assert_eq!(code, 0, "{out}\n{err}\nagent:\n{}", waiting[0].1.stderr());
    assert!(err.contains("auto-enrolment of web-a: enrolled"), "{err}");
    assert!(out.contains("\"cpu_percent\""), "{out}");
    assert!(waiting[0].2.join("agent.pem").exists() && !waiting[1].2.join("agent.pem").exists());
    // fleet ping enrols the other one and reaches both; web-a is not enrolled again.
    let (code, v, err) = w.controller(&cfg, &["fleet", "ping"]);
    assert_eq!(code, 0, "{v}\n{err}");
    assert!(err.contains("auto-enrolment of web-b: enrolled") && !err.contains("web-a"), "{err}");
    assert!(v.as_array().unwrap().iter().all(|r| r["reachable"] == true), "{v}");
}
