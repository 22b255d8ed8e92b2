//! The `ops.v1.Enroll` gRPC service: the operator role only (the caller's fleet-CA
//! certificate is verified by the listener even before this agent is enrolled), every
//! offer, installation and refusal audited, one exchange at a time.
//!
//! It must never install a certificate without the checks of `Enrolment::install`, and
//! never say a certificate is installed before the listener has switched to it.

use std::sync::Arc;

use ops_proto::identity::Role;
use ops_proto::v1::enroll_server::Enroll;
use ops_proto::v1::{BeginEnrolmentRequest, CompleteEnrolmentRequest, EnrolmentOffer, EnrolmentResult};
use serde_json::json;
use tonic::{Request, Response, Status};

use super::{EnrolError, Enrolment};
use crate::jobs::JobManager;
use crate::service::authorize;

/// Swaps the listener to the certificate now on disk; Err says why it could not.
pub type Reload = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Largest certificate PEM accepted.
const MAX_CERT_PEM: usize = 64 * 1024;
/// Largest refusal reason recorded.
const MAX_REASON: usize = 2048;

#[derive(Clone)]
pub struct EnrollService {
    enrolment: Arc<Enrolment>,
    jobs: Arc<JobManager>,
    reload: Reload,
    /// One exchange at a time: an offer and its completion must not interleave with another's.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl EnrollService {
    pub fn new(enrolment: Arc<Enrolment>, jobs: Arc<JobManager>, reload: Reload) -> EnrollService {
        EnrollService { enrolment, jobs, reload, turn: Arc::new(tokio::sync::Mutex::new(())) }
    }
}

fn status(e: &EnrolError) -> Status {
    match e {
        EnrolError::NotConfigured | EnrolError::NothingPending => Status::failed_precondition(e.to_string()),
        EnrolError::Refused(_) => Status::failed_precondition(e.to_string()),
        EnrolError::Csr(_) => Status::invalid_argument(e.to_string()),
        EnrolError::Metadata(_) | EnrolError::Token { .. } => Status::unavailable(e.to_string()),
        EnrolError::CreateKey { .. } | EnrolError::BadKey { .. } | EnrolError::Write { .. } => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl Enroll for EnrollService {
    async fn begin_enrolment(&self, req: Request<BeginEnrolmentRequest>) -> Result<Response<EnrolmentOffer>, Status> {
        let who = authorize(&req, Role::Operator, "enrol or rotate this agent's certificate")?;
        let r = req.into_inner();
        let _turn = self.turn.lock().await;
        let enrolled = self.enrolment.is_enrolled();
        let result = self.enrolment.offer(&r.nonce, r.rotate).await;
        let audit = self.jobs.audit();
        match result {
            Ok(offer) => {
                let line = json!({"enrolled": enrolled, "rotate": r.rotate && enrolled, "proof": proof_kind(&offer)});
                // The offer changes nothing yet; a failed audit line is logged, not fatal.
                if let Err(e) = audit.record("enrol_offer", Some(&who), line).await {
                    tracing::warn!("cannot audit an enrolment offer: {e}");
                }
                let (not_after, serial) = match super::certificate_facts(&self.enrolment.paths().cert) {
                    Some((s, t)) if enrolled => (t, s),
                    _ => (0, String::new()),
                };
                Ok(Response::new(EnrolmentOffer {
                    csr_der: offer.csr_der,
                    nonce_signature: offer.nonce_signature,
                    identity_document: offer.identity_document,
                    identity_pkcs7: offer.identity_pkcs7,
                    join_token: offer.join_token,
                    enrolled,
                    certificate_not_after_unix_ms: not_after,
                    certificate_serial: serial,
                }))
            }
            Err(e) => {
                tracing::warn!("enrolment offer to {} failed: {e}", who.describe());
                if let Err(ae) = audit.record("enrol_offer_failed", Some(&who), json!({"error": e.to_string()})).await {
                    tracing::warn!("cannot audit a failed enrolment offer: {ae}");
                }
                Err(status(&e))
            }
        }
    }

    async fn complete_enrolment(&self, req: Request<CompleteEnrolmentRequest>) -> Result<Response<EnrolmentResult>, Status> {
        let who = authorize(&req, Role::Operator, "enrol or rotate this agent's certificate")?;
        let r = req.into_inner();
        let audit = self.jobs.audit();
        let _turn = self.turn.lock().await;
        if !r.refused.is_empty() {
            let reason: String = r.refused.chars().take(MAX_REASON).collect();
            tracing::error!("the controller ({}) refused this agent's enrolment: {reason}", who.describe());
            if let Err(e) = audit.record("enrol_refused", Some(&who), json!({"reason": reason})).await {
                tracing::warn!("cannot audit a refused enrolment: {e}");
            }
            return Ok(Response::new(EnrolmentResult::default()));
        }
        if r.certificate_pem.len() > MAX_CERT_PEM {
            return Err(Status::invalid_argument(format!("certificate_pem is over {MAX_CERT_PEM} bytes")));
        }
        let rotating = self.enrolment.is_enrolled();
        // The line is on disk before the certificate changes, as for every host change.
        audit
            .record("enrol_install", Some(&who), json!({"rotate": rotating}))
            .await
            .map_err(|e| Status::internal(format!("not installed: {e}")))?;
        let enrolment = self.enrolment.clone();
        let pem = r.certificate_pem;
        let installed = crate::pools::JOB_STORAGE
            .spawn(move || enrolment.install(&pem))
            .await
            .map_err(|e| Status::internal(format!("install task failed: {e}")))?;
        let installed = match installed {
            Ok(i) => i,
            Err(e) => {
                tracing::error!("certificate from {} not installed: {e}", who.describe());
                if let Err(ae) = audit.record("enrol_install_failed", Some(&who), json!({"error": e.to_string()})).await {
                    tracing::warn!("cannot audit a failed installation: {ae}");
                }
                return Err(status(&e));
            }
        };
        if let Err(e) = (self.reload)() {
            // The files are in place; the periodic reload will retry, but say so now.
            tracing::error!("certificate installed but the listener did not switch to it: {e}");
            return Err(Status::internal(format!("certificate written but not in use yet: {e}")));
        }
        let not_after = installed.not_after.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        tracing::info!(
            "{} certificate serial {} (from {}); serving ops.v1.Agent",
            if rotating { "rotated to" } else { "enrolled with" },
            installed.serial,
            who.describe()
        );
        let line = json!({"rotate": rotating, "serial": installed.serial, "not_after_unix_ms": not_after});
        if let Err(e) = audit.record("enrol_installed", Some(&who), line).await {
            tracing::warn!("cannot audit an installed certificate: {e}");
        }
        Ok(Response::new(EnrolmentResult { serial: installed.serial, not_after_unix_ms: not_after }))
    }
}

fn proof_kind(o: &super::Offer) -> &'static str {
    if !o.identity_document.is_empty() {
        "ec2-instance-identity"
    } else if !o.join_token.is_empty() {
        "join-token"
    } else {
        "current-certificate"
    }
}
