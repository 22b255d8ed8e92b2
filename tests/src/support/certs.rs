//! Certificates generated per test run with the controller's own PKI code: a fleet CA,
//! an agent server certificate for 127.0.0.1/localhost, operator and viewer clients,
//! and the bad ones for negative tests (another CA, expired, no role).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use controller::pki::{Ca, Pem, Validity};
use ops_proto::identity::Role;
use ops_proto::rustls::ClientConfig;
use ops_proto::tls::{self, TlsPaths};

/// A PEM pair written to disk.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One test's PKI, in its own temporary folder.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub ca_file: PathBuf,
    pub agent: Files,
    pub operator: Files,
    pub viewer: Files,
}

fn write(dir: &Path, name: &str, pem: &Pem) -> Files {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    controller::pki::write_file(&cert, &pem.cert, false, true).expect("write cert");
    controller::pki::write_file(&key, &pem.key, true, true).expect("write key");
    Files { cert, key }
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate("test fleet CA", None).expect("CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem.cert).expect("write CA");
        let agent = write(
            dir.path(),
            "agent",
            &ca.agent("agent", &["127.0.0.1".parse().expect("ip")], &["localhost".into()], None).expect("agent cert"),
        );
        let operator = write(dir.path(), "operator", &ca.client("operator-test", Role::Operator, None).expect("operator"));
        let viewer = write(dir.path(), "viewer", &ca.client("viewer-test", Role::Viewer, None).expect("viewer"));
        TestPki { dir, ca, ca_file, agent, operator, viewer }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an extra client certificate signed by this CA.
    pub fn client(&self, name: &str, role_uri: &str, validity: Option<Validity>) -> Files {
        write(self.path(), name, &self.ca.client_with_role_claim(name, role_uri, validity).expect("client cert"))
    }

    /// Writes an extra agent certificate signed by this CA.
    pub fn agent_cert(&self, name: &str, dns: &[&str], validity: Option<Validity>) -> Files {
        let dns: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
        write(self.path(), name, &self.ca.agent(name, &["127.0.0.1".parse().expect("ip")], &dns, validity).expect("agent cert"))
    }

    /// Writes a server certificate signed by this CA for exactly these addresses and names
    /// (a database's, say; [`agent_cert`](Self::agent_cert) always adds 127.0.0.1).
    pub fn server_cert(&self, name: &str, ips: &[std::net::IpAddr], dns: &[&str]) -> Files {
        let dns: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
        write(self.path(), name, &self.ca.agent(name, ips, &dns, None).expect("server cert"))
    }

    /// A client certificate and key from a different CA, and that CA's file.
    pub fn foreign_client(&self) -> (PathBuf, Files) {
        let other = Ca::generate("some other CA", None).expect("other CA");
        let ca_file = self.path().join("other-ca.pem");
        std::fs::write(&ca_file, &other.pem.cert).expect("write other CA");
        let files = write(self.path(), "foreign", &other.client("intruder", Role::Operator, None).expect("foreign cert"));
        (ca_file, files)
    }

    pub fn client_paths(&self, files: &Files) -> TlsPaths {
        TlsPaths { ca: self.ca_file.clone(), cert: files.cert.clone(), key: files.key.clone() }
    }

    /// A client TLS config presenting `files`.
    pub fn client_config(&self, files: &Files) -> Arc<ClientConfig> {
        tls::client_config(&self.client_paths(files), None).expect("client config")
    }

    pub fn operator_config(&self) -> Arc<ClientConfig> {
        self.client_config(&self.operator)
    }

    /// A validity window entirely in the past.
    /// Valid since yesterday for `days` more days.
    pub fn valid_for(days: i64) -> Validity {
        let now = time::OffsetDateTime::now_utc();
        Validity { not_before: now - time::Duration::days(1), not_after: now + time::Duration::days(days) }
    }

    pub fn expired() -> Validity {
        let now = time::OffsetDateTime::now_utc();
        Validity { not_before: now - time::Duration::days(30), not_after: now - time::Duration::days(1) }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
