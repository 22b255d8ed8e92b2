//! Offline checks of TLS files, for `agent --check`: does the key match the certificate,
//! does the certificate chain to the CA for the use it is meant for, is it within its
//! validity, and how long until it expires. Each failure names the file at fault.
//!
//! These checks only report; they never replace the verification rustls does on every
//! handshake, and nothing here may weaken it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls::{self, TlsError, TlsPaths};

/// What a certificate is for; decides which extended key usage the chain must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// An agent's server certificate.
    Server,
    /// An operator's or viewer's client certificate.
    Client,
}

/// A certificate that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertReport {
    pub path: PathBuf,
    /// Subject common name ("unknown" when it has none).
    pub name: String,
    /// The notAfter date as the certificate states it.
    pub not_after: String,
    /// Time left before it expires.
    pub expires_in: Duration,
}

/// The identity (certificate and key) and the CA it chains to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityReport {
    pub cert: CertReport,
    pub cas: Vec<CertReport>,
}

/// Checks a CA file, a certificate and its key as one identity at time `now`.
pub fn check_identity(paths: &TlsPaths, usage: Usage, now: SystemTime) -> Result<IdentityReport, TlsError> {
    let cas = tls::load_certs(&paths.ca, "CA")?;
    let mut ca_reports = Vec::new();
    for ca in &cas {
        ca_reports.push(validity(&paths.ca, "CA certificate", ca, now)?);
    }
    let certs = tls::load_certs(&paths.cert, "certificate")?;
    let key = tls::load_key(&paths.key)?;
    let provider = rustls::crypto::ring::default_provider();
    let mismatch = |reason: String| TlsError::BadIdentity { cert: paths.cert.clone(), key: paths.key.clone(), reason };
    let certified =
        rustls::sign::CertifiedKey::from_der(certs.clone(), key, &provider).map_err(|e| mismatch(tls::identity_reason(&e)))?;
    // from_der lets "cannot tell" through; for a check, only a proven match is a pass.
    certified.keys_match().map_err(|e| mismatch(tls::identity_reason(&e)))?;
    let leaf = validity(&paths.cert, "certificate", &certs[0], now)?;
    chains_to(&paths.cert, &certs, &paths.ca, &cas, usage, now)?;
    Ok(IdentityReport { cert: leaf, cas: ca_reports })
}

/// The certificate's validity at `now`; an error when it has expired or is not valid yet.
fn validity(path: &Path, what: &str, der: &CertificateDer<'_>, now: SystemTime) -> Result<CertReport, TlsError> {
    let bad = |reason: String| TlsError::BadCertificate { path: path.to_path_buf(), reason };
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| bad(format!("{what} does not parse: {e}")))?;
    let name = crate::identity::common_name(&cert);
    let now_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let v = cert.validity();
    if v.not_after.timestamp() < now_secs {
        return Err(bad(format!("{what} '{name}' expired on {}", v.not_after)));
    }
    if v.not_before.timestamp() > now_secs {
        return Err(bad(format!("{what} '{name}' is not valid before {}", v.not_before)));
    }
    let left = (v.not_after.timestamp() - now_secs).max(0) as u64;
    Ok(CertReport { path: path.to_path_buf(), name, not_after: v.not_after.to_string(), expires_in: Duration::from_secs(left) })
}

/// Builds the chain from the certificate (and any intermediates after it in its file)
/// to a CA of the CA file, for the given use.
fn chains_to(
    cert_path: &Path,
    certs: &[CertificateDer<'static>],
    ca_path: &Path,
    cas: &[CertificateDer<'static>],
    usage: Usage,
    now: SystemTime,
) -> Result<(), TlsError> {
    let mut anchors = Vec::new();
    for ca in cas {
        let anchor = webpki::anchor_from_trusted_cert(ca)
            .map_err(|e| TlsError::BadCa { path: ca_path.to_path_buf(), reason: format!("{e:?}") })?;
        anchors.push(anchor);
    }
    let bad = |reason: String| TlsError::BadCertificate { path: cert_path.to_path_buf(), reason };
    let leaf = webpki::EndEntityCert::try_from(&certs[0]).map_err(|e| bad(format!("does not parse: {e:?}")))?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms.all;
    let usage = match usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    leaf.verify_for_usage(algs, &anchors, &certs[1..], time, usage, None, None)
        .map_err(|e| {
            let why = match e {
                webpki::Error::UnknownIssuer => format!("is not signed by the CA in {}", ca_path.display()),
                other => format!("does not chain to the CA in {}: {other:?}", ca_path.display()),
            };
            bad(why)
        })?;
    Ok(())
}

/// "824 days", "5 hours": how long until a certificate expires, for a summary line.
pub fn describe_remaining(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3_600 => format!("{} hours", s / 3_600),
        s => format!("{} minutes", s / 60),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn remaining_time_is_said_in_the_largest_fitting_unit() {
        assert_eq!(describe_remaining(Duration::from_secs(90 * 86_400)), "90 days");
        assert_eq!(describe_remaining(Duration::from_secs(30 * 3_600)), "30 hours");
        assert_eq!(describe_remaining(Duration::from_secs(600)), "10 minutes");
    }
}
