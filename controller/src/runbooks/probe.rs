//! Network probes of a host's application: an HTTP(S) GET that reports the status code
//! (what `curl -w %{http_code}` was used for) and a TLS handshake that reads the server
//! certificate's validity (what `openssl s_client | openssl x509 -dates` was used for).
//!
//! The TLS probes complete the handshake whatever the certificate, on purpose: an expired,
//! self-signed or wrong-name certificate must still be read to be reported. The chain and
//! the name are verified all the same (against the system's trust store plus
//! `[runbooks] tls_ca_file`), and a failure is part of the answer (`CertInfo::trust_error`),
//! never silently accepted. The handshake signature is verified, and no data but a GET is
//! ever sent.

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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest status line accepted from a server.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// A probe that did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer from {addr} within {} s", after.as_secs_f64())]
    TimedOut { addr: String, after: Duration },
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("{addr} answered something that is not HTTP: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("certificate of {addr} cannot be read: {reason}")]
    Certificate { addr: String, reason: String },
    #[error("no answer before the run's deadline")]
    Deadline,
}

/// The parts of an http(s) URL the probe needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// Host as written (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, at least "/".
    pub path: String,
}

/// Parses `http://host[:port][/path]` or `https://...`. Pure.
pub fn parse_url(url: &str) -> Result<Url, ProbeError> {
    let bad = |reason: &str| ProbeError::BadUrl { url: url.to_string(), reason: reason.to_string() };
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(bad("credentials in URLs are not supported"));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| bad("unclosed '[' in host"))?;
        let port = match &v6[end + 1..] {
            "" => default_port,
            p => p.strip_prefix(':').and_then(|p| p.parse().ok()).ok_or_else(|| bad("bad port"))?,
        };
        (v6[..end].to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(Url { tls, host, port, path })
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

/// GETs `url` and returns the HTTP status code. The whole exchange (connect, TLS,
/// request, status line) must finish within `timeout`.
pub async fn http_status(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let u = parse_url(url)?;
    let addr = addr_of(&u.host, u.port);
    let work = async {
        let tcp = connect(&addr, timeout).await?;
        let host_header = if u.port == if u.tls { 443 } else { 80 } { u.host.clone() } else { addr.clone() };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: techhealth-controller/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            u.path,
            env!("CARGO_PKG_VERSION")
        );
        if u.tls {
            let (mut tls, _, _) = handshake(tcp, &addr, &u.host, None).await?;
            exchange(&mut tls, &request, &addr).await
        } else {
            let mut tcp = tcp;
            exchange(&mut tcp, &request, &addr).await
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::TimedOut { addr, after: timeout }),
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, request: &str, addr: &str) -> Result<u16, ProbeError> {
    let io = |e: std::io::Error| ProbeError::Connect { addr: addr.to_string(), reason: io_reason(&e) };
    s.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < MAX_STATUS_LINE {
        let n = s.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status_line(&buf).map_err(|reason| ProbeError::Protocol { addr: addr.to_string(), reason })
}

/// The status code of `HTTP/1.x NNN reason`. Pure.
pub fn parse_status_line(bytes: &[u8]) -> Result<u16, String> {
    if bytes.is_empty() {
        return Err("connection closed without an answer".into());
    }
    let line_end = bytes.windows(2).position(|w| w == b"\r\n").unwrap_or(bytes.len());
    let line = String::from_utf8_lossy(&bytes[..line_end]);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code.parse().map_err(|_| format!("bad status line {line:?}")),
        _ => Err(format!("bad status line {:?}", line.chars().take(80).collect::<String>())),
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
        let (_, der, trust_error) = handshake(tcp, endpoint, server_name, Some(roots)).await?;
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

/// The TLS handshake; with `roots`, the chain and name verdict comes back beside the
/// stream and the certificate (None: verified).
async fn handshake(
    tcp: TcpStream,
    addr: &str,
    server_name: &str,
    roots: Option<Arc<RootCertStore>>,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>, Option<String>), ProbeError> {
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
    Ok((stream, der, trust_error))
}

/// Completes the handshake whatever the chain so that the certificate can be inspected
/// (see the module comment), and records what the real verification said; the
/// handshake signatures are still checked against the presented key.
#[derive(Debug)]
struct InspectOnly {
    provider: Arc<CryptoProvider>,
    verifier: Option<Arc<WebPkiServerVerifier>>,
    verdict: Mutex<Option<String>>,
}

impl InspectOnly {
    fn new(provider: Arc<CryptoProvider>, roots: Option<Arc<RootCertStore>>) -> Result<InspectOnly, String> {
        let verifier = match roots {
            Some(r) => Some(WebPkiServerVerifier::builder_with_provider(r, provider.clone()).build().map_err(|e| e.to_string())?),
            None => None,
        };
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
        if let Some(v) = &self.verifier {
            if let Err(e) = v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                if let Ok(mut slot) = self.verdict.lock() {
                    *slot = trust_failure(&e, server_name);
                }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_scheme_host_port_and_path() {
        let u = parse_url("http://203.0.113.5").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.path.as_str()), (false, "203.0.113.5", 80, "/"));
        let u = parse_url("https://example.org:8443/health?x=1").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.path.as_str()), (true, "example.org", 8443, "/health?x=1"));
        let u = parse_url("http://[::1]:8080/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:port/").is_err());
    }

    #[test]
    fn status_lines_are_parsed_and_garbage_is_named() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\nServer: x\r\n"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 500 Internal Server Error\r\n"), Ok(500));
        assert!(parse_status_line(b"").unwrap_err().contains("without an answer"));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").unwrap_err().contains("bad status line"));
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_as_connection_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let err = http_status(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2)).await.unwrap_err();
        assert!(err.to_string().contains("connection refused"), "{err}");
    }
}
