//! Network probes of a host's application: an HTTP(S) GET that reports the status code
//! (`http`, what `curl -w %{http_code}` was used for) and a TLS handshake that reads the
//! server certificate's validity (what `openssl s_client | openssl x509 -dates` was used
//! for). Both trust the same anchors: the system's store plus `[runbooks] tls_ca_file`
//! (`trust_roots`).
//!
//! The certificate probe completes the handshake whatever the certificate, on purpose: an
//! expired, self-signed or wrong-name certificate must still be read to be reported. The
//! chain and the name are verified all the same, and a failure is part of the answer
//! (`CertInfo::trust_error`), never silently accepted. The handshake signature is
//! verified, and no application data is ever sent on that connection. The HTTP probe, by
//! contrast, verifies as curl does and fails on a certificate that does not verify.
//! Neither probe decides whether a host may be contacted: the callers do (see
//! `crate::fleet::ec2::may_dial`, applied in `runbooks::targets`), before calling.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::client::WebPkiServerVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

mod http;

pub use http::{http_status, parse_url, Url, UrlProblem};

/// A probe that did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("bad URL {url:?}: {problem}")]
    BadUrl { url: String, problem: UrlProblem },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer from {addr} within {} s", after.as_secs_f64())]
    TimedOut { addr: String, after: Duration },
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("{addr} answered something that is not HTTP: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("{addr} closed the connection without an answer")]
    Closed { addr: String },
    #[error("connection to {addr} failed during the request: {reason}")]
    Io { addr: String, reason: String },
    /// An https URL with no trust anchors to verify it against.
    #[error("not probed: {reason}")]
    NotProbed { reason: String },
    #[error("certificate of {addr} cannot be read: {reason}")]
    Certificate { addr: String, reason: String },
    #[error("no answer before the run's deadline")]
    Deadline,
}

fn addr_of(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, ProbeError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ProbeError::Connect { addr: addr.to_string(), reason: io_reason(&e) }),
        Err(_) => Err(ProbeError::TimedOut { addr: addr.to_string(), after: timeout }),
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// Why the chain or the name did not verify (None: trusted, valid for the name).
    /// Expiry is left to the dates, which are reported on their own.
    pub trust_error: Option<String>,
}

/// The anchors a probed certificate must chain to: the operating system's trust store
/// and, when given, the PEM certificates in `extra` (a private CA).
pub fn trust_roots(extra: Option<&Path>) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read tls_ca_file {}: {e}", path.display()))?;
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("tls_ca_file {}: no certificate in it", path.display()));
        }
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("tls_ca_file {}: no usable CA certificate", path.display()));
        }
    }
    if roots.is_empty() {
        return Err("no trust anchors: the system store is empty (install ca-certificates) and no [runbooks] tls_ca_file is set".into());
    }
    Ok(Arc::new(roots))
}

/// Connects to `endpoint` (host:port), sends `server_name` in the handshake and reads
/// the server certificate's validity.
pub async fn fetch_certificate(endpoint: &str, server_name: &str, roots: Arc<RootCertStore>, timeout: Duration) -> Result<CertInfo, ProbeError> {
    let work = async {
        let tcp = connect(endpoint, timeout).await?;
        let (der, trust_error) = handshake(tcp, endpoint, server_name, roots).await?;
        let mut info = parse_certificate(&der).map_err(|reason| ProbeError::Certificate { addr: endpoint.to_string(), reason })?;
        info.trust_error = trust_error;
        Ok(info)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::TimedOut { addr: endpoint.to_string(), after: timeout }),
    }
}

/// Subject, issuer and validity of a DER certificate. Pure.
pub fn parse_certificate(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let v = cert.validity();
    let at = |t: i64| Utc.timestamp_opt(t, 0).single().ok_or_else(|| format!("time {t} out of range"));
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: at(v.not_before.timestamp())?,
        not_after: at(v.not_after.timestamp())?,
        trust_error: None,
    })
}

/// The TLS handshake of the certificate probe: the certificate comes back with the
/// chain and name verdict (None: verified). The stream is dropped unused.
async fn handshake(tcp: TcpStream, addr: &str, server_name: &str, roots: Arc<RootCertStore>) -> Result<(Vec<u8>, Option<String>), ProbeError> {
    let tls_err = |reason: String| ProbeError::Tls { addr: addr.to_string(), reason };
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| tls_err(format!("server name {server_name:?}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inspect = Arc::new(InspectOnly::new(provider.clone(), roots).map_err(tls_err)?);
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(inspect.clone())
        .with_no_client_auth();
    let stream = TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| tls_err(e.to_string()))?;
    let der = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| tls_err("the server sent no certificate".into()))?;
    let trust_error = inspect.verdict.lock().ok().and_then(|v| v.clone());
    Ok((der, trust_error))
}

/// Completes the handshake whatever the chain so that the certificate can be inspected
/// (see the module comment), and records what the real verification said; the
/// handshake signatures are still checked against the presented key.
#[derive(Debug)]
struct InspectOnly {
    provider: Arc<CryptoProvider>,
    verifier: Arc<WebPkiServerVerifier>,
    verdict: Mutex<Option<String>>,
}

impl InspectOnly {
    fn new(provider: Arc<CryptoProvider>, roots: Arc<RootCertStore>) -> Result<InspectOnly, String> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build().map_err(|e| e.to_string())?;
        Ok(InspectOnly { provider, verifier, verdict: Mutex::new(None) })
    }
}

/// Names a verification failure for a person; expiry is not one (the dates say it).
fn trust_failure(e: &rustls::Error, server_name: &ServerName<'_>) -> Option<String> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::NotValidYet) => None,
        rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. } | CertificateError::NotValidYetContext { .. }) => None,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Some("untrusted: issued by an unknown CA (not in the trust store or tls_ca_file)".into()),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
            Some(format!("wrong name: the certificate is not valid for {}", server_name.to_str()))
        }
        other => Some(format!("untrusted: {other}")),
    }
}

impl ServerCertVerifier for InspectOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Err(e) = self.verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            if let Ok(mut slot) = self.verdict.lock() {
                *slot = trust_failure(&e, server_name);
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
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

