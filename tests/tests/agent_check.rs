//! `agent --check` and the key-permission rule, through the real `agent` binary: a good
//! configuration passes with a summary; each broken file (a key that is not the
//! certificate's, a certificate from another CA, an expired one, a garbage CRL, a
//! cleanup root behind a symlink) fails with exit 2 and the file named; an agent whose
//! key others can read refuses to start.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use controller::pki::{self, Ca, Validity};

/// A PKI made by the controller's own code, an agent certificate and a cleanup root.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pki");
        pki::init(&p, false, pki::CLIENT_DAYS).unwrap();
        pki::issue_agent(&p, "agent", &["127.0.0.1".parse().unwrap()], &["localhost".into()], 30, false).unwrap();
        std::fs::create_dir_all(dir.path().join("scratch")).unwrap();
        World { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes agent.toml with these TLS files (relative to the folder) and cleanup root.
    fn config(&self, cert: &str, key: &str, crl: &str, root: &Path) -> PathBuf {
        let text = format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{state}\"\n[tls]\nca = \"pki/ca.pem\"\ncert = \"{cert}\"\nkey = \"{key}\"\ncrl = \"{crl}\"\n\
             [metadata]\nenabled = false\n[cleanup]\nallowed_roots = [\"{root}\"]\n",
            state = self.path("state").display(),
            root = root.display()
        );
        let p = self.path("agent.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn good(&self) -> PathBuf {
        self.config("pki/agents/agent.pem", "pki/agents/agent.key", "pki/crl.pem", &self.path("scratch"))
    }

    /// Writes a certificate and key pair under the world's folder.
    fn write_pair(&self, name: &str, pem: &pki::Pem) {
        pki::write_file(&self.path(&format!("{name}.pem")), &pem.cert, false, true).unwrap();
        pki::write_file(&self.path(&format!("{name}.key")), &pem.key, true, true).unwrap();
    }
}

fn check(config: &Path) -> Output {
    Command::new(e2e::support::binary("agent"))
        .arg("--check")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Asserts exit 2 and that stderr names `file` and says `why`.
fn assert_refused(out: &Output, file: &str, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected exit 2; stderr:\n{stderr}");
    assert!(stderr.contains(file), "stderr does not name {file}:\n{stderr}");
    assert!(stderr.contains(why), "stderr does not say {why:?}:\n{stderr}");
}

#[test]
fn agent_check_passes_a_good_config_and_says_when_the_certificate_expires() {
    let w = World::new();
    let out = check(&w.good());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("agent.pem"), "{stdout}");
    assert!(stdout.contains("expires in 29 days") || stdout.contains("expires in 30 days"), "{stdout}");
    assert!(stdout.contains("crl.pem lists 0 revoked"), "{stdout}");
    assert!(stdout.contains("scratch is a directory"), "{stdout}");
    assert!(stdout.contains("agent.toml: ok"), "{stdout}");
}

#[test]
fn agent_check_refuses_a_key_that_is_not_the_certificates() {
    let w = World::new();
    pki::issue_agent(&w.path("pki"), "other", &[], &["other".into()], 30, false).unwrap();
    let out = check(&w.config("pki/agents/agent.pem", "pki/agents/other.key", "pki/crl.pem", &w.path("scratch")));
    assert_refused(&out, "other.key", "does not match");
}

#[test]
fn agent_check_refuses_a_certificate_from_another_ca() {
    let w = World::new();
    let other = Ca::generate("some other CA", None).unwrap();
    w.write_pair("foreign", &other.agent("agent", &["127.0.0.1".parse().unwrap()], &[], None).unwrap());
    let out = check(&w.config("foreign.pem", "foreign.key", "pki/crl.pem", &w.path("scratch")));
    assert_refused(&out, "foreign.pem", "is not signed by the CA");
}

#[test]
fn agent_check_refuses_an_expired_certificate() {
    let w = World::new();
    let ca = Ca::load(&w.path("pki")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = Validity { not_before: now - time::Duration::days(30), not_after: now - time::Duration::days(1) };
    w.write_pair("old", &ca.agent("agent", &["127.0.0.1".parse().unwrap()], &[], Some(expired)).unwrap());
    let out = check(&w.config("old.pem", "old.key", "pki/crl.pem", &w.path("scratch")));
    assert_refused(&out, "old.pem", "expired on");
}

#[test]
fn agent_check_refuses_a_garbage_crl() {
    let w = World::new();
    std::fs::write(w.path("bad-crl.pem"), "-----BEGIN X509 CRL-----\nZ2FyYmFnZQ==\n-----END X509 CRL-----\n").unwrap();
    let out = check(&w.config("pki/agents/agent.pem", "pki/agents/agent.key", "bad-crl.pem", &w.path("scratch")));
    assert_refused(&out, "bad-crl.pem", "does not parse");
}

#[test]
fn agent_check_refuses_a_cleanup_root_behind_a_symlink() {
    let w = World::new();
    std::fs::create_dir_all(w.path("real/uploads")).unwrap();
    std::os::unix::fs::symlink(w.path("real"), w.path("via-link")).unwrap();
    let root = w.path("via-link/uploads");
    let out = check(&w.config("pki/agents/agent.pem", "pki/agents/agent.key", "pki/crl.pem", &root));
    assert_refused(&out, "via-link", "is a symbolic link");
}

#[test]
fn an_agent_whose_key_others_can_read_exits_2_naming_the_key() {
    let w = World::new();
    let key = w.path("pki/agents/agent.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // Started for real, not --check: the agent itself must refuse to serve with it. An
    // agent that served anyway would never exit: it is killed after a deadline.
    let mut child = Command::new(e2e::support::binary("agent"))
        .arg("--config")
        .arg(w.good())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the agent started with a key others can read");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let expected = format!("Permissions 0644 for '{}' are too open", key.display());
    assert_refused(&out, &expected, "It is required that your private key files are NOT accessible by others");
    // And --check says the same.
    assert_refused(&check(&w.good()), &expected, "too open");
}
