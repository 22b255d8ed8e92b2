//! Whether an agent's offer earns a certificate, and which names it carries: a pure
//! function over what was verified (the offer's CSR and proofs, the EC2 instance, the
//! record of earlier enrolments). Every refusal names what did not match and what to do.
//!
//! It must never grant a certificate with a name the evidence did not establish: the
//! names come from EC2 (or the join token), never from the CSR alone.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::identity::InstanceIdentity;
use super::token::TokenClaims;

/// The offer, decoded and with its cryptographic checks done by the caller.
#[derive(Debug, Clone)]
pub struct CheckedOffer {
    /// The CSR's key (SubjectPublicKeyInfo DER) and the names it asks for.
    pub csr_spki: Vec<u8>,
    pub csr_names: BTreeSet<String>,
    /// The key of the certificate the agent presented in the TLS handshake (which proved
    /// possession of it).
    pub presented_spki: Vec<u8>,
    /// Whether the nonce signature verified with the CSR's key.
    pub nonce_signed: bool,
    pub proof: Proof,
}

/// How the agent said who it is, after verification of its signature.
#[derive(Debug, Clone)]
pub enum Proof {
    /// The instance-identity document, its PKCS#7 signature verified against AWS's
    /// certificate for its region.
    Ec2(InstanceIdentity),
    /// A join token whose signature and expiry verified.
    Token(TokenClaims),
}

/// What the controller dialled: the fleet's host.
#[derive(Debug, Clone)]
pub struct Dialled {
    pub host: String,
    pub instance_id: Option<String>,
}

/// What EC2 says of the instance the document names.
#[derive(Debug, Clone)]
pub struct Ec2Instance {
    pub id: String,
    pub state: String,
    pub in_fleet: bool,
    pub private_ip: Option<IpAddr>,
    pub private_dns: Option<String>,
}

/// An earlier enrolment of the same instance or host.
#[derive(Debug, Clone)]
pub struct Prior {
    pub when: String,
    pub serial: String,
}

/// Why an offer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the instance-identity document does not verify: {0}")]
    BadSignature(String),
    #[error("the join token does not verify: {0}")]
    BadToken(String),
    #[error("the agent offered no proof of identity (no instance-identity document, no join token)")]
    NoProof,
    #[error("the key of the TLS certificate the agent presented is not the key of its CSR (someone else may be answering at this address)")]
    KeyMismatch,
    #[error("the nonce signature does not verify with the CSR's key")]
    BadNonceSignature,
    #[error("instance {0} does not exist in EC2")]
    UnknownInstance(String),
    #[error("instance {id} is not in the fleet (its tags do not match [fleet] tag_filters)")]
    NotInFleet { id: String },
    #[error("instance {id} is {state}, not running")]
    NotRunning { id: String, state: String },
    #[error("the address dialled for {host} belongs to {expected}, but {answered} answered there")]
    AddressMismatch { host: String, expected: String, answered: String },
    #[error("the document's private IP {document} is not {instance}'s private IP in EC2 ({ec2})")]
    IpMismatch { instance: String, document: String, ec2: String },
    #[error("{id} already enrolled on {when} (certificate serial {serial}); a second enrolment needs --re-enrol")]
    Replayed { id: String, when: String, serial: String },
    #[error("the CSR names {got:?}, but the instance's names are {expected:?}")]
    NamesMismatch { expected: Vec<String>, got: Vec<String> },
    #[error("join token {id} has already been used")]
    TokenReused { id: String },
    #[error("join token {id} expired at {expired}")]
    TokenExpired { id: String, expired: String },
    #[error("join token {id} is bound to host {token_host:?}, not {host:?}")]
    TokenHost { id: String, token_host: String, host: String },
}

impl Refusal {
    /// A short stable name for the audit record and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::BadSignature(_) => "bad-signature",
            Refusal::BadToken(_) => "bad-token",
            Refusal::NoProof => "no-proof",
            Refusal::KeyMismatch => "key-mismatch",
            Refusal::BadNonceSignature => "bad-nonce-signature",
            Refusal::UnknownInstance(_) => "unknown-instance",
            Refusal::NotInFleet { .. } => "not-in-fleet",
            Refusal::NotRunning { .. } => "not-running",
            Refusal::AddressMismatch { .. } => "address-mismatch",
            Refusal::IpMismatch { .. } => "address-mismatch",
            Refusal::Replayed { .. } => "replayed",
            Refusal::NamesMismatch { .. } => "names-mismatch",
            Refusal::TokenReused { .. } => "token-reused",
            Refusal::TokenExpired { .. } => "token-expired",
            Refusal::TokenHost { .. } => "token-host",
        }
    }
}

/// What a granted certificate carries and under which name it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The instance id (EC2) or host name (join token): the enrolment's identity.
    pub identity: String,
    /// The certificate's names, the identity first.
    pub names: Vec<String>,
}

/// The evidence for one EC2 offer.
pub struct Ec2Evidence<'a> {
    pub instance: Option<&'a Ec2Instance>,
    pub prior: Option<&'a Prior>,
    pub re_enrol: bool,
}

/// The evidence for one join-token offer.
pub struct TokenEvidence<'a> {
    pub used: bool,
    pub prior: Option<&'a Prior>,
    pub re_enrol: bool,
    pub now_unix: i64,
}

/// Checks common to every offer: the agent holds the CSR's key.
fn possession(offer: &CheckedOffer) -> Result<(), Refusal> {
    if offer.presented_spki != offer.csr_spki {
        return Err(Refusal::KeyMismatch);
    }
    if !offer.nonce_signed {
        return Err(Refusal::BadNonceSignature);
    }
    Ok(())
}

fn names_match(expected: &BTreeSet<String>, got: &BTreeSet<String>) -> Result<(), Refusal> {
    if expected != got {
        return Err(Refusal::NamesMismatch { expected: expected.iter().cloned().collect(), got: got.iter().cloned().collect() });
    }
    Ok(())
}

fn not_replayed(id: &str, prior: Option<&Prior>, re_enrol: bool) -> Result<(), Refusal> {
    match prior {
        Some(p) if !re_enrol => Err(Refusal::Replayed { id: id.to_string(), when: p.when.clone(), serial: p.serial.clone() }),
        _ => Ok(()),
    }
}

/// An EC2 offer: the document's instance is the one dialled, exists, is in the fleet and
/// running, its private IP matches EC2's, the CSR names exactly that instance, and it has
/// not enrolled before (unless `re_enrol`).
pub fn decide_ec2(dialled: &Dialled, offer: &CheckedOffer, doc: &InstanceIdentity, ev: &Ec2Evidence<'_>) -> Result<Grant, Refusal> {
    possession(offer)?;
    if let Some(expected) = &dialled.instance_id {
        if expected != &doc.instance_id {
            return Err(Refusal::AddressMismatch { host: dialled.host.clone(), expected: expected.clone(), answered: doc.instance_id.clone() });
        }
    }
    let i = ev.instance.ok_or_else(|| Refusal::UnknownInstance(doc.instance_id.clone()))?;
    if !i.in_fleet {
        return Err(Refusal::NotInFleet { id: i.id.clone() });
    }
    if i.state != "running" {
        return Err(Refusal::NotRunning { id: i.id.clone(), state: i.state.clone() });
    }
    let ec2_ip = i.private_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "none".into());
    if i.private_ip != Some(doc.private_ip) {
        return Err(Refusal::IpMismatch { instance: i.id.clone(), document: doc.private_ip.to_string(), ec2: ec2_ip });
    }
    let mut names = vec![i.id.clone(), doc.private_ip.to_string()];
    names.extend(i.private_dns.clone().filter(|d| !d.is_empty()));
    names_match(&names.iter().cloned().collect(), &offer.csr_names)?;
    not_replayed(&i.id, ev.prior, ev.re_enrol)?;
    Ok(Grant { identity: i.id.clone(), names })
}

/// A join-token offer: the token is unused, unexpired, bound to the dialled host's name,
/// and the CSR names exactly that host.
pub fn decide_token(dialled: &Dialled, offer: &CheckedOffer, claims: &TokenClaims, ev: &TokenEvidence<'_>) -> Result<Grant, Refusal> {
    possession(offer)?;
    if claims.expires_unix <= ev.now_unix {
        let expired = chrono::DateTime::from_timestamp(claims.expires_unix, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
        return Err(Refusal::TokenExpired { id: claims.id.clone(), expired });
    }
    if ev.used {
        return Err(Refusal::TokenReused { id: claims.id.clone() });
    }
    if claims.host != dialled.host {
        return Err(Refusal::TokenHost { id: claims.id.clone(), token_host: claims.host.clone(), host: dialled.host.clone() });
    }
    names_match(&BTreeSet::from([claims.host.clone()]), &offer.csr_names)?;
    not_replayed(&claims.host, ev.prior, ev.re_enrol)?;
    Ok(Grant { identity: claims.host.clone(), names: vec![claims.host.clone()] })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn doc() -> InstanceIdentity {
        serde_json::from_value(serde_json::json!({
            "instanceId": "i-0abc", "accountId": "123456789012", "region": "us-east-1",
            "availabilityZone": "us-east-1a", "privateIp": "10.0.0.5", "imageId": "ami-1",
            "instanceType": "t3.micro", "pendingTime": "2026-12-01T00:00:00Z"
        }))
        .unwrap()
    }

    fn offer(names: &[&str]) -> CheckedOffer {
        CheckedOffer {
            csr_spki: vec![1, 2, 3],
            csr_names: names.iter().map(|s| s.to_string()).collect(),
            presented_spki: vec![1, 2, 3],
            nonce_signed: true,
            proof: Proof::Ec2(doc()),
        }
    }

    fn instance() -> Ec2Instance {
        Ec2Instance {
            id: "i-0abc".into(),
            state: "running".into(),
            in_fleet: true,
            private_ip: Some("10.0.0.5".parse().unwrap()),
            private_dns: Some("ip-10-0-0-5.ec2.internal".into()),
        }
    }

    const NAMES: [&str; 3] = ["i-0abc", "10.0.0.5", "ip-10-0-0-5.ec2.internal"];

    fn dialled() -> Dialled {
        Dialled { host: "web-1".into(), instance_id: Some("i-0abc".into()) }
    }

    fn decide(o: &CheckedOffer, i: Option<&Ec2Instance>, prior: Option<&Prior>, re_enrol: bool) -> Result<Grant, Refusal> {
        decide_ec2(&dialled(), o, &doc(), &Ec2Evidence { instance: i, prior, re_enrol })
    }

    #[test]
    fn a_matching_instance_is_granted_its_three_names_with_the_instance_id_first() {
        let g = decide(&offer(&NAMES), Some(&instance()), None, false).unwrap();
        assert_eq!(g.identity, "i-0abc");
        assert_eq!(g.names, NAMES.map(String::from).to_vec());
    }

    #[test]
    fn each_mismatch_is_refused_with_its_own_reason() {
        let i = instance();
        let mut o = offer(&NAMES);
        o.presented_spki = vec![9];
        assert_eq!(decide(&o, Some(&i), None, false).unwrap_err(), Refusal::KeyMismatch);
        let mut o = offer(&NAMES);
        o.nonce_signed = false;
        assert_eq!(decide(&o, Some(&i), None, false).unwrap_err(), Refusal::BadNonceSignature);
        assert_eq!(decide(&offer(&NAMES), None, None, false).unwrap_err().kind(), "unknown-instance");
        let stopped = Ec2Instance { state: "stopped".into(), ..instance() };
        assert_eq!(decide(&offer(&NAMES), Some(&stopped), None, false).unwrap_err().kind(), "not-running");
        let outside = Ec2Instance { in_fleet: false, ..instance() };
        assert_eq!(decide(&offer(&NAMES), Some(&outside), None, false).unwrap_err().kind(), "not-in-fleet");
        let moved = Ec2Instance { private_ip: Some("10.0.0.6".parse().unwrap()), ..instance() };
        assert_eq!(decide(&offer(&NAMES), Some(&moved), None, false).unwrap_err().kind(), "address-mismatch");
        let extra = offer(&["i-0abc", "10.0.0.5", "ip-10-0-0-5.ec2.internal", "bank.example.com"]);
        assert_eq!(decide(&extra, Some(&i), None, false).unwrap_err().kind(), "names-mismatch");
        let other = Dialled { host: "web-2".into(), instance_id: Some("i-0def".into()) };
        let e = decide_ec2(&other, &offer(&NAMES), &doc(), &Ec2Evidence { instance: Some(&i), prior: None, re_enrol: false }).unwrap_err();
        assert_eq!(e.kind(), "address-mismatch");
        assert!(e.to_string().contains("i-0def") && e.to_string().contains("i-0abc"), "{e}");
    }

    #[test]
    fn a_second_enrolment_needs_re_enrol() {
        let prior = Prior { when: "2026-12-01T00:00:00Z".into(), serial: "01:02".into() };
        let e = decide(&offer(&NAMES), Some(&instance()), Some(&prior), false).unwrap_err();
        assert_eq!(e.kind(), "replayed");
        assert!(e.to_string().contains("--re-enrol"), "{e}");
        assert!(decide(&offer(&NAMES), Some(&instance()), Some(&prior), true).is_ok());
    }

    #[test]
    fn a_join_token_is_refused_when_expired_reused_or_for_another_host() {
        let claims = TokenClaims { id: "t1".into(), host: "build-1".into(), expires_unix: 1_000 };
        let d = Dialled { host: "build-1".into(), instance_id: None };
        let mut o = offer(&["build-1"]);
        o.proof = Proof::Token(claims.clone());
        let ev = |used, now| TokenEvidence { used, prior: None, re_enrol: false, now_unix: now };
        assert_eq!(decide_token(&d, &o, &claims, &ev(false, 999)).unwrap().names, vec!["build-1".to_string()]);
        assert_eq!(decide_token(&d, &o, &claims, &ev(false, 1_000)).unwrap_err().kind(), "token-expired");
        assert_eq!(decide_token(&d, &o, &claims, &ev(true, 999)).unwrap_err().kind(), "token-reused");
        let other = Dialled { host: "build-2".into(), instance_id: None };
        assert_eq!(decide_token(&other, &o, &claims, &ev(false, 999)).unwrap_err().kind(), "token-host");
    }
}
