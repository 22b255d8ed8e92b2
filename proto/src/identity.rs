//! Who is calling: the identity and role carried inside an mTLS client certificate.
//!
//! The role travels as a URI subject-alternative name `urn:ops:role:<role>` in the
//! certificate the fleet CA signed, so it cannot be claimed by a caller without a
//! certificate that says so. A certificate without a known role gets no rights.

use std::fmt;
use std::net::SocketAddr;

use sha2::{Digest, Sha256};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Prefix of the URI SAN that names a certificate's role.
pub const ROLE_URI_PREFIX: &str = "urn:ops:role:";

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Read-only RPCs and watching jobs.
    Viewer,
    /// Everything a viewer may do, plus starting and cancelling jobs.
    Operator,
}

impl Role {
    /// The role's name as written in certificates and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }

    /// Parses a role name; `None` for anything unknown.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    /// The URI SAN that carries this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }

    /// Whether this role may change hosts (start or cancel jobs).
    pub fn may_change_hosts(self) -> bool {
        matches!(self, Role::Operator)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller as the agent saw it in the verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's subject common name (or "unknown" when it has none).
    pub name: String,
    /// The role, when the certificate names a known one.
    pub role: Option<Role>,
    /// The role string the certificate carried, even if unknown (for the audit log).
    pub role_claim: String,
    /// The certificate's serial number, lowercase hex with colons (as `openssl x509` shows it).
    pub serial: String,
    /// SHA-256 of the certificate's DER, lowercase hex: names one exact certificate.
    pub fingerprint_sha256: String,
    /// Where the connection came from, when the transport knows it.
    pub remote_addr: Option<SocketAddr>,
}

impl PeerIdentity {
    /// Reads identity and role from a DER certificate. The certificate must already have
    /// been verified against the fleet CA by the TLS layer.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let name = common_name(&cert);
        let mut role_claim = String::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for gn in &san.value.general_names {
                if let GeneralName::URI(uri) = gn {
                    if let Some(r) = uri.strip_prefix(ROLE_URI_PREFIX) {
                        role_claim = r.to_string();
                        break;
                    }
                }
            }
        }
        let serial = cert.raw_serial_as_string();
        let fingerprint_sha256 = Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect();
        Ok(PeerIdentity {
            name,
            role: Role::parse(&role_claim),
            role_claim,
            serial,
            fingerprint_sha256,
            remote_addr: None,
        })
    }

    /// "name (role)" for logs and audit lines.
    pub fn describe(&self) -> String {
        let role = if self.role_claim.is_empty() { "no role" } else { &self.role_claim };
        format!("{} ({role})", self.name)
    }
}

/// A client certificate that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot parse the client certificate: {0}")]
    Parse(String),
}
/// The subject's common name, or "unknown" when it has none.
pub(crate) fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or("unknown").to_string()
}

