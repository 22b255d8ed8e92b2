//! One enrolment or rotation, end to end: dial the agent, send a nonce, check what comes
//! back (the TLS key is the CSR's key, the nonce is signed with it, the identity proof
//! verifies), ask EC2 about the instance, decide under the store's lock, sign, record, and
//! hand the certificate over; or tell the agent why not. Every attempt is audited.
//!
//! The order matters: the enrolment (and a join token's use) is recorded before the
//! certificate leaves the controller, so an agent that takes the certificate and claims
//! failure cannot enrol a second time with the same proof.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use ops_proto::tls::{self, DialTimeouts, TlsPaths};
use ops_proto::v1::agent_client::AgentClient;
use ops_proto::v1::enroll_client::EnrollClient;
use ops_proto::v1::{BeginEnrolmentRequest, CompleteEnrolmentRequest, EnrolmentOffer, HostInfoRequest};
use serde::Serialize;
use serde_json::json;
use tonic::transport::Channel;

use super::config::EnrolConfig;
use super::decide::{self, CheckedOffer, Dialled, Ec2Evidence, Ec2Instance, Grant, Proof, Refusal, TokenEvidence};
use super::store::{EnrolmentRecord, Store};
use super::{identity, token};
use crate::aws::AwsClients;
use crate::fleet::Host;
use crate::pki::Ca;

/// How one host's attempt ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// A certificate was signed and installed.
    Enrolled { identity: String, serial: String, not_after: String },
    /// The agent holds a certificate already.
    AlreadyEnrolled { detail: String },
    /// The offer was refused: `kind` names the check.
    Refused { kind: String, reason: String },
    /// The certificate was renewed.
    Rotated { old_serial: String, serial: String, not_after: String },
    /// The certificate is not due for renewal.
    NotDue { not_after: String },
    /// The attempt could not be completed (unreachable, an AWS error, ...).
    Failed { reason: String },
}

impl Outcome {
    /// The result's word for a table and its detail.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Outcome::Enrolled { identity, serial, not_after } => ("enrolled", format!("{identity}, serial {serial}, expires {not_after}")),
            Outcome::AlreadyEnrolled { .. } => ("already enrolled", String::new()),
            Outcome::Refused { kind, reason } => ("REFUSED", format!("{kind}: {reason}")),
            Outcome::Rotated { old_serial, serial, not_after } => ("rotated", format!("{old_serial} -> {serial}, expires {not_after}")),
            Outcome::NotDue { not_after } => ("not due", format!("expires {not_after}")),
            Outcome::Failed { reason } => ("FAILED", reason.clone()),
        }
    }

    /// Whether the fleet is as the operator asked after this attempt.
    pub fn ok(&self) -> bool {
        matches!(self, Outcome::Enrolled { .. } | Outcome::AlreadyEnrolled { .. } | Outcome::Rotated { .. } | Outcome::NotDue { .. })
    }
}

/// Everything an enrolment needs, loaded once per command.
pub struct Enroller {
    pub config: EnrolConfig,
    pub operator: TlsPaths,
    pub crl: Option<PathBuf>,
    pub operator_name: String,
    pub timeouts: DialTimeouts,
    pub ca: Ca,
    pub pki_dir: PathBuf,
    pub store: Store,
    /// EC2, for the instance behind an identity document (None: EC2 proofs are refused).
    pub aws: Option<AwsClients>,
    pub tag_filters: std::collections::BTreeMap<String, String>,
}

fn nonce() -> Result<Vec<u8>, String> {
    let mut n = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n).map_err(|_| "no randomness available".to_string())?;
    Ok(n)
}

/// The key and names of a CSR, after its own signature verified.
fn csr_facts(der: &[u8]) -> Result<(Vec<u8>, BTreeSet<String>), String> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension};
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(|e| format!("the CSR does not parse: {e}"))?;
    csr.verify_signature().map_err(|e| format!("the CSR's signature does not verify: {e}"))?;
    let info = &csr.certification_request_info;
    let mut names = BTreeSet::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for gn in &san.general_names {
                match gn {
                    GeneralName::DNSName(d) => {
                        names.insert((*d).to_string());
                    }
                    GeneralName::IPAddress(b) => {
                        names.insert(ip_text(b).ok_or("the CSR has a malformed IP address name")?);
                    }
                    other => return Err(format!("the CSR asks for a name of a kind agents never carry: {other:?}")),
                }
            }
        }
    }
    Ok((info.subject_pki.raw.to_vec(), names))
}

fn ip_text(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).to_string()),
        _ => None,
    }
}

/// Whether `sig` over the nonce message verifies with the P-256 key `spki`.
fn nonce_signed(spki: &[u8], nonce: &[u8], sig: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;
    let Ok((_, info)) = SubjectPublicKeyInfo::from_der(spki) else { return false };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &info.subject_public_key.data)
        .verify(&ops_proto::enrol::nonce_message(nonce), sig)
        .is_ok()
}

fn millis_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default()
}

impl Enroller {
    /// Enrols one host that is waiting for a certificate.
    pub async fn enrol(&self, host: &Host, re_enrol: bool) -> Outcome {
        let outcome = self.try_enrol(host, re_enrol).await;
        let line = json!({"host": host.name, "address": host.address, "by": self.operator_name, "re_enrol": re_enrol, "result": outcome});
        if let Err(e) = self.store.audit(line) {
            tracing::error!("cannot record the enrolment attempt for {}: {e}", host.name);
        }
        outcome
    }

    async fn try_enrol(&self, host: &Host, re_enrol: bool) -> Outcome {
        let (config, presented) = match ops_proto::enrol::pinning_client_config(&self.operator) {
            Ok(c) => c,
            Err(e) => return Outcome::Failed { reason: e.to_string() },
        };
        let channel = match tls::connect(&host.target(), config, self.timeouts).await {
            Ok(c) => c,
            Err(e) => return Outcome::Failed { reason: format!("cannot reach the agent at {}: {e}", host.address) },
        };
        let mut client = EnrollClient::new(channel);
        let nonce = match nonce() {
            Ok(n) => n,
            Err(reason) => return Outcome::Failed { reason },
        };
        let offer = match client.begin_enrolment(BeginEnrolmentRequest { nonce: nonce.clone(), rotate: false }).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::FailedPrecondition && s.message().contains("already enrolled") => {
                return Outcome::AlreadyEnrolled { detail: s.message().to_string() }
            }
            Err(s) => return Outcome::Failed { reason: format!("the agent did not make an offer: {}", s.message()) },
        };
        let presented_spki = match presented.get().map(|c| ops_proto::enrol::certificate_spki(c.as_ref())) {
            Some(Ok(spki)) => spki,
            _ => return Outcome::Failed { reason: "the agent presented no usable certificate".into() },
        };
        let decided = match self.check(host, &offer, &nonce, presented_spki, re_enrol).await {
            Ok(d) => d,
            Err(Checked::Refused(r)) => return self.refuse(&mut client, r).await,
            Err(Checked::Failed(reason)) => return Outcome::Failed { reason },
        };
        self.grant(&mut client, host, &offer, decided).await
    }

    /// Everything short of signing; `Ok` carries the grant and how it was proven.
    async fn check(&self, host: &Host, offer: &EnrolmentOffer, nonce: &[u8], presented_spki: Vec<u8>, re_enrol: bool) -> Result<(Grant, String, Option<String>), Checked> {
        let (csr_spki, csr_names) = csr_facts(&offer.csr_der).map_err(|e| Checked::Refused(Refusal::NamesMismatch { expected: vec![], got: vec![e] }))?;
        let nonce_ok = nonce_signed(&csr_spki, nonce, &offer.nonce_signature);
        let proof = if !offer.identity_document.is_empty() {
            Proof::Ec2(self.verify_document(offer).map_err(|e| Checked::Refused(Refusal::BadSignature(e)))?)
        } else if !offer.join_token.is_empty() {
            Proof::Token(token::verify(&offer.join_token, self.ca.cert_pem()).map_err(|e| Checked::Refused(Refusal::BadToken(e.to_string())))?)
        } else {
            return Err(Checked::Refused(Refusal::NoProof));
        };
        let checked = CheckedOffer { csr_spki, csr_names, presented_spki, nonce_signed: nonce_ok, proof: proof.clone() };
        let dialled = Dialled { host: host.name.clone(), instance_id: host.instance_id.clone() };
        match proof {
            Proof::Ec2(doc) => {
                let instance = self.instance(&doc.instance_id).await.map_err(Checked::Failed)?;
                let _lock = self.store.lock().map_err(|e| Checked::Failed(e.to_string()))?;
                let prior = self.store.prior(&doc.instance_id).map_err(|e| Checked::Failed(e.to_string()))?;
                let ev = Ec2Evidence { instance: instance.as_ref(), prior: prior.as_ref(), re_enrol };
                let grant = decide::decide_ec2(&dialled, &checked, &doc, &ev).map_err(Checked::Refused)?;
                Ok((grant, "ec2-instance-identity".into(), None))
            }
            Proof::Token(claims) => {
                let _lock = self.store.lock().map_err(|e| Checked::Failed(e.to_string()))?;
                let used = self.store.token_used(&claims.id).map_err(|e| Checked::Failed(e.to_string()))?;
                let prior = self.store.prior(&claims.host).map_err(|e| Checked::Failed(e.to_string()))?;
                let ev = TokenEvidence { used, prior: prior.as_ref(), re_enrol, now_unix: chrono::Utc::now().timestamp() };
                let grant = decide::decide_token(&dialled, &checked, &claims, &ev).map_err(Checked::Refused)?;
                Ok((grant, "join-token".into(), Some(claims.id)))
            }
        }
    }

    fn verify_document(&self, offer: &EnrolmentOffer) -> Result<identity::InstanceIdentity, String> {
        // The region only picks which configured certificate to verify with; the
        // signature then vouches for it.
        let region = serde_json::from_str::<serde_json::Value>(&offer.identity_document)
            .ok()
            .and_then(|v| v.get("region").and_then(|r| r.as_str()).map(str::to_string))
            .ok_or("the document names no region")?;
        let cert_path = self
            .config
            .aws_certificates
            .get(&region)
            .ok_or_else(|| format!("no AWS certificate is configured for region {region} ([enrol] aws_certificates)"))?;
        let cert = std::fs::read_to_string(cert_path).map_err(|e| format!("cannot read {}: {e}", cert_path.display()))?;
        let doc = identity::verify(&offer.identity_document, &offer.identity_pkcs7, &cert)
            .map_err(|e| format!("{e} (AWS certificate for {region}: {})", cert_path.display()))?;
        if doc.region != region {
            return Err(format!("the document says region {} after verification, not {region}", doc.region));
        }
        Ok(doc)
    }

    async fn instance(&self, id: &str) -> Result<Option<Ec2Instance>, String> {
        let aws = self.aws.as_ref().ok_or("EC2 is not configured, so an instance-identity document cannot be checked")?;
        let found = crate::aws::ec2::describe_instance(&aws.ec2, id).await.map_err(|e| format!("cannot ask EC2 about {id}: {e}"))?;
        Ok(found.map(|i| Ec2Instance {
            in_fleet: self.tag_filters.iter().all(|(k, v)| i.tags.get(k) == Some(v)),
            private_ip: i.private_ip.as_deref().and_then(|ip| ip.parse().ok()),
            private_dns: i.private_dns.clone(),
            state: i.state.clone(),
            id: i.id,
        }))
    }

    async fn refuse(&self, client: &mut EnrollClient<Channel>, r: Refusal) -> Outcome {
        let reason = r.to_string();
        // Best effort: the agent logs and audits the reason; the refusal stands either way.
        let _ = client.complete_enrolment(CompleteEnrolmentRequest { certificate_pem: String::new(), refused: reason.clone() }).await;
        Outcome::Refused { kind: r.kind().to_string(), reason }
    }

    /// Signs the CSR for `names` (the first is the identity) and the record to keep of it.
    fn sign(&self, csr_der: &[u8], names: &[String], host: &Host, event: &str, method: &str) -> Result<(String, EnrolmentRecord), Outcome> {
        let validity = crate::pki::validity_days(self.config.certificate_days);
        let pem = self
            .ca
            .agent_for_csr(csr_der, names, validity)
            .map_err(|e| Outcome::Failed { reason: format!("cannot sign the CSR: {e}") })?;
        let serial = crate::pki::serial_of(&pem).map_err(|e| Outcome::Failed { reason: e.to_string() })?;
        let end = validity.not_after.replace_nanosecond(0).unwrap_or(validity.not_after);
        let record = EnrolmentRecord {
            time: super::store::now(),
            event: event.into(),
            identity: names.first().cloned().unwrap_or_default(),
            host: host.name.clone(),
            method: method.into(),
            serial,
            not_after: end.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            by: self.operator_name.clone(),
        };
        Ok((pem, record))
    }

    async fn grant(&self, client: &mut EnrollClient<Channel>, host: &Host, offer: &EnrolmentOffer, decided: (Grant, String, Option<String>)) -> Outcome {
        let (grant, method, token_id) = decided;
        let (pem, record) = match self.sign(&offer.csr_der, &grant.names, host, "enrolled", &method) {
            Ok(x) => x,
            Err(o) => return o,
        };
        let (serial, not_after) = (record.serial.clone(), record.not_after.clone());
        let recorded = (|| {
            let _lock = self.store.lock()?;
            if let Some(id) = &token_id {
                self.store.spend_token(id, &grant.identity)?;
            }
            self.store.record(&record)
        })();
        if let Err(e) = recorded.map_err(|e| e.to_string()).and_then(|()| crate::pki::record(&self.pki_dir, &grant.identity, "agent", &pem).map_err(|e| e.to_string())) {
            return Outcome::Failed { reason: format!("not handed over: the enrolment could not be recorded: {e}") };
        }
        match client.complete_enrolment(CompleteEnrolmentRequest { certificate_pem: pem, refused: String::new() }).await {
            Ok(r) if r.get_ref().serial == serial => Outcome::Enrolled { identity: grant.identity, serial, not_after },
            Ok(r) => Outcome::Failed { reason: format!("the agent reports serial {:?} installed, not {serial}", r.get_ref().serial) },
            Err(s) => Outcome::Failed {
                reason: format!("signed (serial {serial}) but the agent did not install it: {}; enrolling again needs --re-enrol", s.message()),
            },
        }
    }

    /// Renews one enrolled agent's certificate when it expires within `window` (always
    /// when `force`).
    pub async fn rotate(&self, host: &Host, window: Duration, force: bool) -> Outcome {
        let outcome = self.try_rotate(host, window, force).await;
        if !matches!(outcome, Outcome::NotDue { .. }) {
            let line = json!({"host": host.name, "address": host.address, "by": self.operator_name, "rotate": true, "result": outcome});
            if let Err(e) = self.store.audit(line) {
                tracing::error!("cannot record the rotation for {}: {e}", host.name);
            }
        }
        outcome
    }

    async fn try_rotate(&self, host: &Host, window: Duration, force: bool) -> Outcome {
        let (config, presented) = match ops_proto::enrol::verifying_keeping_client_config(&self.operator, self.crl.as_deref()) {
            Ok(c) => c,
            Err(e) => return Outcome::Failed { reason: e.to_string() },
        };
        let channel = match tls::connect(&host.target(), config, self.timeouts).await {
            Ok(c) => c,
            Err(e) => return Outcome::Failed { reason: format!("cannot reach the agent at {}: {e}", host.address) },
        };
        let info = match AgentClient::new(channel.clone()).get_host_info(HostInfoRequest {}).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Outcome::Failed { reason: format!("host info: {}", s.message()) },
        };
        let due_by = chrono::Utc::now().timestamp_millis() + i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2);
        if !force && info.certificate_not_after_unix_ms > due_by {
            return Outcome::NotDue { not_after: millis_text(info.certificate_not_after_unix_ms) };
        }
        let Some(current) = presented.get() else { return Outcome::Failed { reason: "no certificate seen".into() } };
        let (current_spki, current_names, identity) = match current_names(current.as_ref()) {
            Ok(x) => x,
            Err(reason) => return Outcome::Failed { reason },
        };
        let mut client = EnrollClient::new(channel);
        let nonce = match nonce() {
            Ok(n) => n,
            Err(reason) => return Outcome::Failed { reason },
        };
        let offer = match client.begin_enrolment(BeginEnrolmentRequest { nonce: nonce.clone(), rotate: true }).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Outcome::Failed { reason: format!("the agent did not make an offer: {}", s.message()) },
        };
        let (csr_spki, csr_names) = match csr_facts(&offer.csr_der) {
            Ok(x) => x,
            Err(reason) => return self.refuse(&mut client, Refusal::NamesMismatch { expected: vec![], got: vec![reason] }).await,
        };
        if !nonce_signed(&csr_spki, &nonce, &offer.nonce_signature) {
            return self.refuse(&mut client, Refusal::BadNonceSignature).await;
        }
        if csr_spki == current_spki {
            return Outcome::Failed { reason: "the agent offered its current key again; a rotation needs a new key".into() };
        }
        if csr_names != current_names.iter().cloned().collect::<BTreeSet<_>>() {
            let r = Refusal::NamesMismatch { expected: current_names.clone(), got: csr_names.into_iter().collect() };
            return self.refuse(&mut client, r).await;
        }
        let (pem, record) = match self.sign(&offer.csr_der, &current_names, host, "rotated", "rotation") {
            Ok(x) => x,
            Err(o) => return o,
        };
        debug_assert_eq!(record.identity, identity);
        let (serial, not_after) = (record.serial.clone(), record.not_after.clone());
        if let Err(e) = self.store.record(&record).map_err(|e| e.to_string()).and_then(|()| crate::pki::record(&self.pki_dir, &record.identity, "agent", &pem).map_err(|e| e.to_string())) {
            return Outcome::Failed { reason: format!("not handed over: the rotation could not be recorded: {e}") };
        }
        match client.complete_enrolment(CompleteEnrolmentRequest { certificate_pem: pem, refused: String::new() }).await {
            Ok(r) if r.get_ref().serial == serial => Outcome::Rotated { old_serial: info.certificate_serial, serial, not_after },
            Ok(r) => Outcome::Failed { reason: format!("the agent reports serial {:?} installed, not {serial}", r.get_ref().serial) },
            Err(s) => Outcome::Failed { reason: format!("signed (serial {serial}) but the agent did not install it: {}", s.message()) },
        }
    }
}

/// The key, names (identity first, as issued) and identity (common name) of a certificate.
fn current_names(der: &[u8]) -> Result<(Vec<u8>, Vec<String>, String), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("the agent's certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            match gn {
                GeneralName::DNSName(d) => names.push((*d).to_string()),
                GeneralName::IPAddress(b) => names.extend(ip_text(b)),
                _ => {}
            }
        }
    }
    let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or_default().to_string();
    if let Some(at) = names.iter().position(|n| *n == cn) {
        let first = names.remove(at);
        names.insert(0, first);
    }
    if names.is_empty() {
        return Err("the agent's certificate names no DNS name or IP address".into());
    }
    let identity = names[0].clone();
    Ok((cert.public_key().raw.to_vec(), names, identity))
}

/// A check that refused, or could not be made.
enum Checked {
    Refused(Refusal),
    Failed(String),
}
