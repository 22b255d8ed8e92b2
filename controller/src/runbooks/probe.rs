//! Network probes of a host's application: an HTTP(S) GET that reports the status code
//! (what `curl -w %{http_code}` was used for) and a TLS handshake that reads the server
//! certificate's validity (what `openssl s_client | openssl x509 -dates` was used for).
//!
//! The TLS probes accept any certificate on purpose: they inspect, they do not trust.
//! An expired or self-signed certificate must still be read to be reported; the
//! handshake signature is still verified, and no data but a GET is ever sent.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
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
            let (mut tls, _) = handshake(tcp, &addr, &u.host).await?;
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
}

/// Connects to `endpoint` (host:port), sends `server_name` in the handshake and reads
/// the server certificate's validity.
pub async fn fetch_certificate(endpoint: &str, server_name: &str, timeout: Duration) -> Result<CertInfo, ProbeError> {
    let work = async {
        let tcp = connect(endpoint, timeout).await?;
        let (_, der) = handshake(tcp, endpoint, server_name).await?;
        parse_certificate(&der).map_err(|reason| ProbeError::Certificate { addr: endpoint.to_string(), reason })
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
    })
}

async fn handshake(
    tcp: TcpStream,
    addr: &str,
    server_name: &str,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>), ProbeError> {
    let tls_err = |reason: String| ProbeError::Tls { addr: addr.to_string(), reason };
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| tls_err(format!("server name {server_name:?}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(InspectOnly(provider)))
        .with_no_client_auth();
    let stream = TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| tls_err(e.to_string()))?;
    let der = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| tls_err("the server sent no certificate".into()))?;
    Ok((stream, der))
}

/// Accepts any certificate chain so that it can be inspected (see the module comment);
/// the handshake signatures are still checked against the presented key.
#[derive(Debug)]
struct InspectOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for InspectOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
