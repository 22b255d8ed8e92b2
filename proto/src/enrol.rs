//! What both sides of an enrolment must agree on: the bytes the pending key signs over
//! the controller's nonce, the agent's TLS configuration while it waits for a certificate,
//! and the controller's one dial that does not verify the agent against the fleet CA.
//!
//! That dial is the only exception to "verify against the fleet CA" in this crate, and it
//! is not a weaker mode of the normal one: it trusts nothing. The TLS 1.3 handshake still
//! proves that the agent holds the private key of the certificate it presents; the
//! presented certificate is kept (`PresentedCertificate`) so that the caller can refuse
//! the connection unless that key is the key of the CSR it was offered, and the CSR is
//! signed only after the host's identity has been proven another way (the EC2
//! instance-identity document, or a join token). Nothing read over such a connection may
//! be trusted before that comparison, and no other RPC may be made over it.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::tls::{self, PartsError, ServerOptions, TlsError, TlsPaths};

/// What the pending key signs before the nonce, so that the signature cannot be passed off
/// as anything else.
pub const NONCE_CONTEXT: &[u8] = b"ops.v1 enrolment nonce\n";
/// Bounds on the controller's nonce.
pub const NONCE_MIN: usize = 16;
pub const NONCE_MAX: usize = 64;

/// The bytes the pending key signs for `nonce`.
pub fn nonce_message(nonce: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(NONCE_CONTEXT.len() + nonce.len());
    m.extend_from_slice(NONCE_CONTEXT);
    m.extend_from_slice(nonce);
    m
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
pub fn certificate_spki(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| format!("certificate does not parse: {e}"))?;
    Ok(cert.public_key().raw.to_vec())
}

/// The agent's TLS configuration before it is enrolled: a self-signed certificate for its
/// pending key, and the same client verification as ever (fleet CA, CRL).
pub fn waiting_server_config(
    ca: &Path,
    options: &ServerOptions,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    tls::server_config_from_parts(ca, options, vec![cert], key).map_err(|e| match e {
        PartsError::Tls(e) => e,
        PartsError::Identity(e) => TlsError::BadCa { path: ca.to_path_buf(), reason: tls::identity_reason(&e) },
    })
}

/// The certificate an agent presented on an enrolment dial, once the handshake is over.
#[derive(Clone, Default)]
pub struct PresentedCertificate(Arc<Mutex<Option<CertificateDer<'static>>>>);

impl PresentedCertificate {
    /// The end-entity certificate the agent proved it holds the key of, if a handshake
    /// has completed.
    pub fn get(&self) -> Option<CertificateDer<'static>> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

impl fmt::Debug for PresentedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedCertificate").field("seen", &self.get().is_some()).finish()
    }
}

/// The controller's configuration for one enrolment dial: its own client certificate, TLS
/// 1.3 only, and a server verifier that keeps the agent's certificate for the caller to
/// compare with the CSR (see the module comment). One configuration per dial.
pub fn pinning_client_config(paths: &TlsPaths) -> Result<(Arc<ClientConfig>, PresentedCertificate), TlsError> {
    keeping_client_config(paths, None)
}

/// The controller's configuration for a rotation dial: the agent verified against the
/// fleet CA (and the CRL) as on every normal dial, and its certificate kept so that the
/// new CSR can be held to the names of the certificate it replaces.
pub fn verifying_keeping_client_config(
    paths: &TlsPaths,
    crl: Option<&Path>,
) -> Result<(Arc<ClientConfig>, PresentedCertificate), TlsError> {
    let roots = tls::load_roots(&paths.ca)?;
    let mut builder = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, tls::provider());
    if let Some(crl_path) = crl {
        let crls = tls::load_crls(crl_path)?;
        let cas = tls::load_certs(&paths.ca, "CA")?;
        tls::check_crls(crl_path, &crls, &paths.ca, &cas)?;
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    let webpki = builder.build().map_err(|e| TlsError::BadCa { path: paths.ca.clone(), reason: e.to_string() })?;
    keeping_client_config(paths, Some(webpki))
}

fn keeping_client_config(
    paths: &TlsPaths,
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
) -> Result<(Arc<ClientConfig>, PresentedCertificate), TlsError> {
    let certs = tls::load_certs(&paths.cert, "certificate")?;
    let key = tls::load_key(&paths.key)?;
    let presented = PresentedCertificate::default();
    let verifier = Arc::new(KeepPresented { provider: tls::provider(), seen: presented.clone(), inner });
    let bad = |e: rustls::Error| TlsError::BadIdentity { cert: paths.cert.clone(), key: paths.key.clone(), reason: e.to_string() };
    let mut config = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(bad)?;
    config.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
    Ok((Arc::new(config), presented))
}

/// Keeps the presented certificate; the handshake signature is still verified with its
/// key, which is what proves possession. With `inner`, the certificate must also pass the
/// fleet CA's verification first.
#[derive(Debug)]
struct KeepPresented {
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: PresentedCertificate,
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl ServerCertVerifier for KeepPresented {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(inner) = &self.inner {
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        }
        let mut g = self.seen.0.lock().map_err(|_| rustls::Error::General("presented-certificate slot poisoned".into()))?;
        *g = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("enrolment speaks TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
