//! Mutual TLS at the agent's door: only clients with a certificate from the fleet CA
//! get in, the controller verifies the agent's name and validity, and the role in the
//! certificate decides what a caller may do.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use e2e::support::agent::{dialer, host, spawn_in_process};
use e2e::support::certs::TestPki;
use ops_proto::tls::{self, ConnectError, FailureKind};
use ops_proto::v1::HostInfoRequest;

const T: Duration = Duration::from_secs(30);

/// Connects and makes one call; returns the classified failure, if any.
async fn try_call(config: std::sync::Arc<ops_proto::rustls::ClientConfig>, h: controller::fleet::Host) -> Result<String, ConnectError> {
    let mut client = dialer(config).connect(&h).await?;
    let info = client
        .get_host_info(HostInfoRequest {})
        .await
        .map_err(|s| controller::client::call_error(&s))?;
    Ok(info.into_inner().caller_role)
}

#[tokio::test]
async fn operator_with_fleet_certificate_is_served_and_sees_its_role() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let role = try_call(pki.operator_config(), host("a", agent.local_addr())).await.unwrap();
        assert_eq!(role, "operator");
        let role = try_call(pki.client_config(&pki.viewer), host("a", agent.local_addr())).await.unwrap();
        assert_eq!(role, "viewer");
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn agent_rejects_client_without_certificate() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let roots = tls::load_roots(&pki.ca_file).unwrap();
        let config = tls::client_config_from_parts(roots, None).unwrap();
        let err = try_call(config, host("a", agent.local_addr())).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::ClientCertificateRejected, "{err}");
        assert!(err.to_string().contains("requires a client certificate"), "{err}");
        assert!(agent.stats().refused_handshakes.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn agent_rejects_client_cert_from_other_ca() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let (_other_ca, foreign) = pki.foreign_client();
        // Trust the real fleet CA for the agent, but present a certificate from another CA.
        let err = try_call(pki.client_config(&foreign), host("a", agent.local_addr())).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::ClientCertificateRejected, "{err}");
        assert!(err.to_string().contains("does not trust the CA"), "{err}");
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn agent_rejects_expired_client_certificate() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let expired = pki.client("expired-op", &ops_proto::identity::Role::Operator.uri(), Some(TestPki::expired()));
        let err = try_call(pki.client_config(&expired), host("a", agent.local_addr())).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::ClientCertificateRejected, "{err}");
        assert!(err.to_string().contains("expired"), "{err}");
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn controller_rejects_agent_with_wrong_server_name() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let mut h = host("a", agent.local_addr());
        h.server_name = "db-7.internal".into();
        let err = try_call(pki.operator_config(), h).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::ServerCertificateInvalid, "{err}");
        assert!(err.to_string().contains("does not match the expected name"), "{err}");
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn controller_rejects_agent_with_expired_certificate() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let expired = pki.agent_cert("old-agent", &["localhost"], Some(TestPki::expired()));
        let text = e2e::support::agent::config_text(&pki, &expired, "127.0.0.1:0", "", "");
        let path = e2e::support::agent::write_config(&pki, "expired-agent", &text);
        let cfg = agent::config::AgentConfig::load(&path).unwrap();
        let agent = agent::server::start(cfg).await.unwrap();
        let err = try_call(pki.operator_config(), host("a", agent.local_addr())).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::ServerCertificateInvalid, "{err}");
        assert!(err.to_string().contains("expired"), "{err}");
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn certificate_without_known_role_is_denied() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let nobody = pki.client("nobody", "urn:ops:role:superuser", None);
        let mut client = dialer(pki.client_config(&nobody)).connect(&host("a", agent.local_addr())).await.unwrap();
        let status = client.get_host_info(HostInfoRequest {}).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("superuser"), "{}", status.message());
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn agent_refuses_tls12_clients() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let roots = tls::load_roots(&pki.ca_file).unwrap();
        let certs = tls::load_certs(&pki.operator.cert, "certificate").unwrap();
        let key = tls::load_key(&pki.operator.key).unwrap();
        let mut cfg = ops_proto::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            ops_proto::rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&ops_proto::rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let err = try_call(std::sync::Arc::new(cfg), host("a", agent.local_addr())).await.unwrap_err();
        assert!(err.to_string().contains("TLS 1.3"), "{err}");
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn agent_loads_a_new_certificate_without_restart() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let live = pki.agent_cert("live", &["localhost"], None);
        let text = e2e::support::agent::config_text(&pki, &live, "127.0.0.1:0", "", "").replace(
            "[metadata]",
            "reload_check_seconds = 1\n[metadata]",
        );
        let path = e2e::support::agent::write_config(&pki, "reloading", &text);
        let agent = agent::server::start(agent::config::AgentConfig::load(&path).unwrap()).await.unwrap();
        let mut renamed = host("a", agent.local_addr());
        renamed.server_name = "reloaded.test".into();
        assert_eq!(
            try_call(pki.operator_config(), renamed.clone()).await.unwrap_err().kind,
            FailureKind::ServerCertificateInvalid
        );
        // Rotate the agent's certificate in place, as a renewal job would.
        let next = pki.agent_cert("next", &["reloaded.test"], None);
        std::fs::copy(&next.cert, &live.cert).unwrap();
        std::fs::copy(&next.key, &live.key).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            match try_call(pki.operator_config(), renamed.clone()).await {
                Ok(role) => {
                    assert_eq!(role, "operator");
                    break;
                }
                Err(e) => assert!(std::time::Instant::now() < deadline, "new certificate never served: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(agent.stats().tls_reloads.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

/// A PKI made with the controller's own `pki` code (CA, CRL, record of issued
/// certificates), an agent certificate for 127.0.0.1/localhost, and two operators.
fn controller_pki(dir: &std::path::Path) {
    controller::pki::init(dir, false, controller::pki::CLIENT_DAYS).unwrap();
    controller::pki::issue_agent(dir, "agent", &["127.0.0.1".parse().unwrap()], &["localhost".into()], 30, false).unwrap();
    for name in ["alice", "bob"] {
        controller::pki::issue_client(dir, name, ops_proto::identity::Role::Operator, 30, false).unwrap();
    }
}

fn client_config(dir: &std::path::Path, name: &str) -> std::sync::Arc<ops_proto::rustls::ClientConfig> {
    let clients = dir.join("clients");
    tls::client_config(&tls::TlsPaths {
        ca: dir.join("ca.pem"),
        cert: clients.join(format!("{name}.pem")),
        key: clients.join(format!("{name}.key")),
    }, None)
    .unwrap()
}

#[tokio::test]
async fn a_revoked_operator_is_refused_after_reload_while_another_operator_still_works() {
    tokio::time::timeout(T, async {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        controller_pki(&pki);
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = \"{state}\"\n[tls]\nca = \"pki/ca.pem\"\ncert = \"pki/agents/agent.pem\"\n\
                 key = \"pki/agents/agent.key\"\ncrl = \"pki/crl.pem\"\nreload_check_seconds = 1\n[metadata]\nenabled = false\n",
                state = dir.path().join("state").display()
            ),
        )
        .unwrap();
        // The real binary, so that what it logs about the refusal can be read.
        let agent = e2e::support::agent::AgentProcess::start(&config);
        let h = host("a", agent.addr);
        assert_eq!(try_call(client_config(&pki, "alice"), h.clone()).await.unwrap(), "operator");

        let revoke = std::process::Command::new(e2e::support::binary("controller"))
            .args(["pki", "revoke", "--dir"])
            .arg(&pki)
            .args(["--name", "alice"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&revoke.stdout).into_owned();
        assert!(revoke.status.success(), "{said}{}", String::from_utf8_lossy(&revoke.stderr));
        let alice = controller::pki::issued(&pki).unwrap().into_iter().find(|e| e.name == "alice").unwrap();
        assert!(said.contains(&format!("revoked {}", alice.serial)), "{said}");

        // No restart: the agent notices the new CRL on its next reload check.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let err = loop {
            match try_call(client_config(&pki, "alice"), h.clone()).await {
                Err(e) => break e,
                Ok(_) => assert!(std::time::Instant::now() < deadline, "the revoked operator was still served"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The refusal comes as a TLS alert after the client has sent its Finished; on a busy
        // machine the client may see the connection close before it reads the alert. Every
        // attempt must be refused, and at least one must carry the alert that names it.
        let mut err = err;
        for _ in 0..5 {
            if err.kind == FailureKind::ClientCertificateRejected {
                break;
            }
            err = try_call(client_config(&pki, "alice"), h.clone()).await.expect_err("the revoked operator must stay refused");
        }
        assert_eq!(err.kind, FailureKind::ClientCertificateRejected, "{err}");
        assert!(err.to_string().contains("revoked"), "{err}");
        assert_eq!(try_call(client_config(&pki, "bob"), h.clone()).await.unwrap(), "operator");

        // The agent writes its second line after the client has its alert: wait for it.
        let named = format!("refused revoked client certificate alice (operator) serial {}", alice.serial);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let log = agent.stderr();
            if log.contains(&named) && log.contains("client certificate revoked") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the agent's log does not name the revoked certificate:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
}
