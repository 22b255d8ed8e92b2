//! One-time join tokens for hosts outside EC2: `ops1.<claims>.<signature>`, the claims (a
//! random id, the host name the token is bound to, the expiry) signed by the fleet CA's key
//! (ECDSA P-256, SHA-256), both parts base64url. Single use is enforced by the enrolment
//! store, which records every id that enrolled.
//!
//! Weaker than the EC2 identity document and documented so: whoever holds an unused token
//! can enrol once under its host name before it expires. A token must never be logged or
//! recorded whole; only its id is.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::pki::Ca;

const PREFIX: &str = "ops1";
/// Largest token accepted (a real one is about 250 bytes).
const MAX_TOKEN: usize = 2048;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub id: String,
    pub host: String,
    #[serde(rename = "exp")]
    pub expires_unix: i64,
}

/// A token could not be made or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("not a join token (expected ops1.<claims>.<signature>)")]
    Malformed,
    #[error("the token's signature does not verify with the fleet CA's key")]
    BadSignature,
    #[error("the fleet CA's key is not ECDSA P-256, which join tokens need")]
    UnsupportedKey,
    #[error("cannot sign the token: {0}")]
    Sign(String),
    #[error("invalid host name {0:?}: use letters, digits, '-' and '.'")]
    BadHost(String),
}

/// A new token for `host`, valid for `ttl` from `now_unix`.
pub fn issue(ca: &Ca, host: &str, now_unix: i64, ttl: std::time::Duration) -> Result<(String, TokenClaims), TokenError> {
    if host.is_empty() || host.len() > 253 || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err(TokenError::BadHost(host.to_string()));
    }
    let mut id = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).map_err(|_| TokenError::Sign("no randomness".into()))?;
    let claims = TokenClaims {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        host: host.to_string(),
        expires_unix: now_unix + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
    };
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).map_err(|e| TokenError::Sign(e.to_string()))?);
    let signed = format!("{PREFIX}.{body}");
    let sig = ca.sign_bytes(signed.as_bytes()).map_err(|e| TokenError::Sign(e.to_string()))?;
    Ok((format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)), claims))
}

/// The claims of `token` if the fleet CA (`ca_cert_pem`) signed it. Expiry and single use
/// are the caller's to check (they need the clock and the store).
pub fn verify(token: &str, ca_cert_pem: &str) -> Result<TokenClaims, TokenError> {
    if token.len() > MAX_TOKEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.trim().split('.');
    let (Some(PREFIX), Some(body), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
    let key = ca_public_key(ca_cert_pem)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
        .verify(format!("{PREFIX}.{body}").as_bytes(), &sig)
        .map_err(|_| TokenError::BadSignature)?;
    let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
}

/// The id of a token without verifying it (for messages about a token that failed).
pub fn id_of(token: &str) -> Option<String> {
    let body = token.trim().split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(body).ok()?;
    serde_json::from_slice::<TokenClaims>(&json).ok().map(|c| c.id)
}

fn ca_public_key(ca_cert_pem: &str) -> Result<Vec<u8>, TokenError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = rustls_pemfile::certs(&mut ca_cert_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or(TokenError::UnsupportedKey)?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|_| TokenError::UnsupportedKey)?;
    let spki = cert.public_key();
    // id-ecPublicKey with the P-256 curve.
    let ec = spki.algorithm.algorithm.to_id_string() == "1.2.840.10045.2.1";
    let p256 = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .is_some_and(|oid| oid.to_id_string() == "1.2.840.10045.3.1.7");
    if !(ec && p256) {
        return Err(TokenError::UnsupportedKey);
    }
    Ok(spki.subject_public_key.data.to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_token_verifies_with_its_ca_and_not_with_another() {
        let ca = Ca::generate("fleet", None).unwrap();
        let (token, claims) = issue(&ca, "build-1", 1_000, Duration::from_secs(600)).unwrap();
        assert_eq!(claims.expires_unix, 1_600);
        assert_eq!(verify(&token, ca.cert_pem()).unwrap(), claims);
        assert_eq!(id_of(&token).unwrap(), claims.id);
        let other = Ca::generate("other", None).unwrap();
        assert!(matches!(verify(&token, other.cert_pem()), Err(TokenError::BadSignature)));
    }

    #[test]
    fn a_token_with_changed_claims_does_not_verify() {
        let ca = Ca::generate("fleet", None).unwrap();
        let (token, _) = issue(&ca, "build-1", 1_000, Duration::from_secs(600)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"id":"x","host":"db-1","exp":99999999999}"#);
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert!(matches!(verify(&tampered, ca.cert_pem()), Err(TokenError::BadSignature)));
        assert!(matches!(verify("ops1.abc", ca.cert_pem()), Err(TokenError::Malformed)));
        assert!(matches!(verify(&"a".repeat(5000), ca.cert_pem()), Err(TokenError::Malformed)));
    }
}
