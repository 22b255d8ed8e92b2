//! The agent's side of enrolment under attack, over the network as any caller would reach
//! it: a waiting agent answers nothing of `ops.v1.Agent`, installs only a certificate from
//! the fleet CA for its own key, refuses an oversized one, and writes nothing when it
//! refuses. Every refusal leaves the agent waiting, still able to enrol properly.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::support::agent::AgentProcess;
use e2e::support::certs::TestPki;
use ops_proto::tls::{self, AgentTarget, DialTimeouts};
use ops_proto::v1::agent_client::AgentClient;
use ops_proto::v1::enroll_client::EnrollClient;
use ops_proto::v1::{BeginEnrolmentRequest, CompleteEnrolmentRequest, HostInfoRequest};
use tonic::transport::Channel;

const LIMIT: Duration = Duration::from_secs(60);

/// A waiting agent enrolling by join token (no metadata service needed here).
fn waiting(pki: &TestPki) -> (AgentProcess, PathBuf) {
    let dir = pki.path().join("waiting");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("join-token"), "ops1.x.y").unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[tls]\nca = \"{}\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n[metadata]\nenabled = false\n[enrol]\nmethod = \"join-token\"\njoin_token_file = \"join-token\"\nhost_name = \"build-1\"\n",
        dir.join("state").display(),
        pki.ca_file.display()
    );
    std::fs::write(dir.join("agent.toml"), text).unwrap();
    (AgentProcess::start(&dir.join("agent.toml")), dir)
}

async fn pinned(pki: &TestPki, agent: &AgentProcess) -> (Channel, ops_proto::enrol::PresentedCertificate) {
    let (config, presented) = ops_proto::enrol::pinning_client_config(&pki.client_paths(&pki.operator)).unwrap();
    let target = AgentTarget::new(agent.addr.to_string(), Some("build-1".into()));
    (tls::connect(&target, config, DialTimeouts::default()).await.unwrap(), presented)
}

/// A certificate for `key_pem`'s key, signed by `ca`.
fn cert_for(ca: &controller::pki::Ca, key_pem: &str) -> String {
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let csr = rcgen::CertificateParams::new(vec!["build-1".to_string()]).unwrap().serialize_request(&key).unwrap();
    ca.agent_for_csr(csr.der(), &["build-1".into()], controller::pki::validity_days(30)).unwrap()
}

fn key_pem(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.key")).unwrap()
}

#[tokio::test]
async fn a_waiting_agent_installs_only_a_fleet_certificate_for_its_own_key_and_writes_nothing_else() {
    tokio::time::timeout(LIMIT, async {
        let pki = TestPki::new();
        let (agent, dir) = waiting(&pki);
        let (channel, presented) = pinned(&pki, &agent).await;

        // Nothing of ops.v1.Agent while waiting.
        let err = AgentClient::new(channel.clone()).get_host_info(HostInfoRequest {}).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("not enrolled yet"), "{err:?}");

        // The key it presents is the key its CSR is for.
        let mut enroll = EnrollClient::new(channel);
        let offer = enroll.begin_enrolment(BeginEnrolmentRequest { nonce: vec![9; 32], rotate: false }).await.unwrap().into_inner();
        let csr = rcgen::CertificateSigningRequestParams::from_der(&offer.csr_der.as_slice().into()).unwrap();
        let presented_spki = ops_proto::enrol::certificate_spki(presented.get().unwrap().as_ref()).unwrap();
        assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&csr.public_key), presented_spki);
        assert_eq!(offer.join_token, "ops1.x.y");
        let short = enroll.begin_enrolment(BeginEnrolmentRequest { nonce: vec![1; 4], rotate: false }).await.unwrap_err();
        assert_eq!(short.code(), tonic::Code::InvalidArgument, "{short:?}");

        // Another CA's certificate for its key; the fleet CA's certificate for another key;
        // an oversized one: each refused, nothing written.
        let other_ca = controller::pki::Ca::generate("someone else", None).unwrap();
        let foreign = cert_for(&other_ca, &key_pem(&dir));
        let stranger = cert_for(&pki.ca, &rcgen::KeyPair::generate().unwrap().serialize_pem());
        let huge = "A".repeat(70 * 1024);
        for (what, pem, code) in [
            ("another CA", foreign, tonic::Code::FailedPrecondition),
            ("another key", stranger, tonic::Code::FailedPrecondition),
            ("oversized", huge, tonic::Code::InvalidArgument),
        ] {
            let err = enroll
                .complete_enrolment(CompleteEnrolmentRequest { certificate_pem: pem, refused: String::new() })
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{what}: {err:?}");
            assert!(!dir.join("agent.pem").exists(), "{what}: a refused certificate was installed");
            let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".next")).collect();
            assert!(leftovers.is_empty(), "{what}: temporary files left: {leftovers:?}");
        }

        // Still waiting, and still able to enrol with the right certificate.
        let good = cert_for(&pki.ca, &key_pem(&dir));
        let done = enroll.complete_enrolment(CompleteEnrolmentRequest { certificate_pem: good, refused: String::new() }).await.unwrap().into_inner();
        assert!(!done.serial.is_empty());
        assert!(dir.join("agent.pem").exists());
        assert!(!dir.join("join-token").exists(), "the token file goes once enrolled");
        let audit = std::fs::read_to_string(dir.join("state/audit.log")).unwrap();
        assert_eq!(audit.matches("\"event\":\"enrol_install_failed\"").count(), 2, "{audit}");
        assert!(audit.contains("\"event\":\"enrol_installed\""), "{audit}");

        // A new connection gets full mTLS under the fleet CA, and Agent answers.
        let config = pki.operator_config();
        let target = AgentTarget::new(agent.addr.to_string(), Some("build-1".into()));
        let channel = tls::connect(&target, config, DialTimeouts::default()).await.unwrap();
        let info = AgentClient::new(channel).get_host_info(HostInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.certificate_serial, done.serial);
    })
    .await
    .expect("test timed out");
}
