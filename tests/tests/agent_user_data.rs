//! `controller agent user-data`: the document passes Debian's `cloud-init schema`, carries no
//! secret, and its install steps, run in a sandbox (a temporary root, the `systemctl`
//! stand-in first on PATH), download the agent from moto's S3 through a presigned URL,
//! install it only when its SHA-256 matches, and enable and start the unit.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use e2e::support::certs::TestPki;
use e2e::support::moto::Moto;
use e2e::support::systemctl::FakeSystemctl;
use e2e::support::binary;

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// Uploads `file` to moto's S3 with the venv's boto3 (moto's own dependency) and returns a
/// presigned GET URL on moto's loopback endpoint.
fn upload_presigned(moto: &Moto, file: &Path) -> String {
    let py = e2e::support::moto::moto_server_path().with_file_name("python");
    assert!(py.is_file(), "no python in the moto venv ({}): run scripts/setup", py.display());
    let script = r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket="ops-artifacts")
s3.upload_file(sys.argv[2], "ops-artifacts", "ops-agent")
print(s3.generate_presigned_url("get_object", Params={"Bucket": "ops-artifacts", "Key": "ops-agent"}, ExpiresIn=600))
"#;
    let out = Command::new(&py).arg("-c").arg(script).arg(moto.endpoint()).arg(file).output().unwrap();
    assert!(out.status.success(), "upload to moto S3 failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn render(pki: &TestPki, url: &str, sha: &str, out: &Path) -> std::process::Output {
    Command::new(binary("controller"))
        .args(["agent", "user-data", "--agent-url", url, "--agent-sha256", sha, "--ca"])
        .arg(&pki.ca_file)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Writes the document's `write_files` under `root` (parsed with Python's yaml, which
/// cloud-init itself uses) and returns the install script's path there.
fn materialise(doc: &Path, root: &Path) -> PathBuf {
    let script = r#"
import os, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["runcmd"] == [["/usr/local/sbin/ops-agent-install"]], doc["runcmd"]
for f in doc["write_files"]:
    p = sys.argv[2] + f["path"]
    os.makedirs(os.path.dirname(p), exist_ok=True)
    open(p, "w").write(f["content"])
    os.chmod(p, int(f["permissions"], 8))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(doc).arg(root).output().unwrap();
    assert!(out.status.success(), "cannot read the document's files: {}", String::from_utf8_lossy(&out.stderr));
    root.join("usr/local/sbin/ops-agent-install")
}

fn run_install(script: &Path, root: &Path, systemctl: &FakeSystemctl) -> std::process::Output {
    Command::new("/bin/sh")
        .arg(script)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", systemctl.dir.display()))
        .env("OPS_INSTALL_ROOT", root)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn user_data_passes_cloud_init_schema_and_holds_no_secret() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("user-data.yaml");
    let out = render(&pki, "https://artifacts.example.com/ops-agent", &"0".repeat(64), &doc);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ci = Path::new("/usr/bin/cloud-init");
    assert!(ci.is_file(), "cloud-init not found: install Debian's cloud-init (scripts/setup does)");
    let check = Command::new(ci).args(["schema", "--config-file"]).arg(&doc).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success() && said.contains("Valid cloud-config"), "cloud-init schema: {said}");
    let text = std::fs::read_to_string(&doc).unwrap();
    assert!(!text.contains("PRIVATE KEY"));
    assert!(text.contains(std::fs::read_to_string(&pki.ca_file).unwrap().lines().nth(1).unwrap()), "the CA certificate is in it");

    // A CA file with a key in it is refused, and nothing is written.
    let bad = dir.path().join("ca-with-key.pem");
    std::fs::write(&bad, format!("{}{}", std::fs::read_to_string(&pki.ca_file).unwrap(), std::fs::read_to_string(&pki.operator.key).unwrap())).unwrap();
    let refused = Command::new(binary("controller"))
        .args(["agent", "user-data", "--agent-url", "https://x.example/a", "--agent-sha256", &"0".repeat(64), "--ca"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("private key"));
}

#[test]
fn install_steps_fetch_from_s3_check_the_checksum_and_start_the_unit() {
    let pki = TestPki::new();
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let agent = binary("agent");
    let url = upload_presigned(&moto, &agent);
    let sha = sha256_of(&agent);

    let doc = dir.path().join("user-data.yaml");
    let out = render(&pki, &url, &sha, &doc);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = dir.path().join("root");
    let script = materialise(&doc, &root);
    let systemctl = FakeSystemctl::new(&dir.path().join("bin"), "active", 0);
    let run = run_install(&script, &root, &systemctl);
    assert!(run.status.success(), "install failed: {}", String::from_utf8_lossy(&run.stderr));
    let installed = root.join("usr/local/bin/ops-agent");
    assert_eq!(sha256_of(&installed), sha);
    assert_eq!(systemctl.calls(), ["daemon-reload", "enable --now ops-agent.service"]);
    let mode = std::fs::metadata(&installed).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o755);

    // The config it wrote is one the agent accepts as it is, with no key or certificate:
    // it waits for enrolment by its EC2 identity (tests/tests/enrol.rs drives that part).
    let etc = root.join("etc/ops-agent");
    let mut cfg_text = std::fs::read_to_string(etc.join("agent.toml")).unwrap();
    cfg_text = cfg_text.replace("/var/lib/ops-agent", root.join("var/lib/ops-agent").to_str().unwrap());
    std::fs::write(etc.join("agent.toml"), cfg_text).unwrap();
    assert!(!etc.join("agent.key").exists() && !etc.join("agent.pem").exists(), "no key travels in user-data");
    let cfg = agent::config::AgentConfig::load(&etc.join("agent.toml")).unwrap();
    assert_eq!(cfg.enrol.map(|e| e.method), Some(agent::enrol::Method::Ec2));
    // Once enrolment has put a certificate in place, the same config serves with it.
    std::fs::copy(&pki.agent.cert, etc.join("agent.pem")).unwrap();
    std::fs::copy(&pki.agent.key, etc.join("agent.key")).unwrap();
    agent::config::AgentConfig::load(&etc.join("agent.toml")).unwrap();
}

#[test]
fn a_binary_whose_checksum_differs_is_not_installed() {
    let pki = TestPki::new();
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let agent = binary("agent");
    let url = upload_presigned(&moto, &agent);
    let wrong = "f".repeat(64);
    let doc = dir.path().join("user-data.yaml");
    assert!(render(&pki, &url, &wrong, &doc).status.success());
    let root = dir.path().join("root");
    let script = materialise(&doc, &root);
    let systemctl = FakeSystemctl::new(&dir.path().join("bin"), "active", 0);
    let run = run_install(&script, &root, &systemctl);
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("checksum mismatch") && err.contains(&wrong), "{err}");
    let bin = root.join("usr/local/bin");
    let left: Vec<_> = std::fs::read_dir(&bin).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "nothing installed, no temporary file left: {left:?}");
    assert!(systemctl.calls().is_empty(), "the unit is not started");
}
