//! Mutual TLS for ops.v1: rustls configurations for both sides, the client connector
//! that dials an agent, the server-side stream of verified connections, and the
//! classification of connection failures into words an operator understands.
//!
//! Both sides speak TLS 1.3 only and verify the peer against the fleet CA (and, on the
//! agent, against the CA's revocation list when one is configured). Nothing here may ever
//! skip verification, and no private key is read from a file that group or others could
//! read: both binaries load their keys through `load_key`, which refuses it.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::identity::PeerIdentity;

/// The ALPN protocol gRPC runs over.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// Paths of the PEM files one side of a connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The fleet CA certificate(s) that peers must chain to.
    pub ca: PathBuf,
    /// This side's certificate chain.
    pub cert: PathBuf,
    /// This side's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// Reading or building a TLS configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{what} file {path} holds no PEM {expected}")]
    Empty { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("CA file {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("certificate {cert} and key {key} do not form a usable identity: {reason}")]
    BadIdentity { cert: PathBuf, key: PathBuf, reason: String },
    #[error("invalid server name {0:?} for certificate verification")]
    BadServerName(String),
    /// ssh's words, so that whoever has met them knows at once what to do.
    #[error(
        "Permissions {mode:04o} for '{path}' are too open. It is required that your private key files are NOT \
         accessible by others. This private key will be ignored (make it readable by its owner only: chmod 600 '{path}')."
    )]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error("certificate file {path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("CRL file {path}: {reason}")]
    BadCrl { path: PathBuf, reason: String },
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

/// Permission bits a private key file may not have: any access by group or others (the
/// rule ssh applies to `~/.ssh/id_*`).
pub const KEY_FORBIDDEN_MODE: u32 = 0o077;

/// Refuses a key file whose mode lets group or others at it.
pub fn check_key_mode(path: &Path, mode: u32) -> Result<(), TlsError> {
    if mode & KEY_FORBIDDEN_MODE != 0 {
        return Err(TlsError::KeyTooOpen { path: path.to_path_buf(), mode: mode & 0o7777 });
    }
    Ok(())
}

/// Reads a private key file after checking its mode on the opened file itself, so the
/// file checked is the file read.
pub fn read_private_key_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let wrap = |source| TlsError::Read { what: "key", path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(wrap)?;
    let mode = file.metadata().map_err(wrap)?.permissions().mode();
    check_key_mode(path, mode)?;
    let mut pem = Vec::new();
    file.read_to_end(&mut pem).map_err(wrap)?;
    Ok(pem)
}

/// Loads every certificate in a PEM file.
pub fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf(), expected: "CERTIFICATE" });
    }
    Ok(certs)
}

/// Loads the first private key in a PEM file, refusing a file group or others can read.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_private_key_file(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Read { what: "key", path: path.to_path_buf(), source })?
        .ok_or_else(|| TlsError::Empty { what: "key", path: path.to_path_buf(), expected: "PRIVATE KEY" })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(path, "CA")? {
        store
            .add(cert)
            .map_err(|e| TlsError::BadCa { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(Arc::new(store))
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a certificate and key do not go together, in words.
pub fn identity_reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            "the key does not match the certificate (it belongs to another one)".into()
        }
        other => other.to_string(),
    }
}

/// Loads every CRL in a PEM file (`-----BEGIN X509 CRL-----`).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read(path, "CRL")?;
    let crls: Vec<_> = rustls_pemfile::crls(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read { what: "CRL", path: path.to_path_buf(), source })?;
    if crls.is_empty() {
        return Err(TlsError::Empty { what: "CRL", path: path.to_path_buf(), expected: "X509 CRL" });
    }
    Ok(crls)
}

/// What a CRL file says, once checked against the CA file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// Revoked certificates listed, over all CRLs in the file.
    pub revoked: usize,
    /// Serials listed, lowercase hex with colons (as `PeerIdentity::serial`).
    pub serials: Vec<String>,
}

/// Checks that every CRL parses, is signed by a CA of the CA file, and that every CA of
/// the CA file has one. The last rule matters: with a CRL configured, a client of a CA
/// without one would have an unknown revocation status and be refused, which would lock
/// a whole CA's operators out after a CA rotation.
pub fn check_crls(
    crl_path: &Path,
    crls: &[CertificateRevocationListDer<'_>],
    ca_path: &Path,
    cas: &[CertificateDer<'_>],
) -> Result<CrlSummary, TlsError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::revocation_list::CertificateRevocationList;
    let bad = |reason: String| TlsError::BadCrl { path: crl_path.to_path_buf(), reason };
    let mut parsed_cas = Vec::new();
    for der in cas {
        let (_, ca) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| TlsError::BadCa { path: ca_path.to_path_buf(), reason: e.to_string() })?;
        parsed_cas.push(ca);
    }
    let mut covered = vec![false; parsed_cas.len()];
    let mut summary = CrlSummary { revoked: 0, serials: Vec::new() };
    for (i, der) in crls.iter().enumerate() {
        let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
            .map_err(|e| bad(format!("CRL #{} does not parse: {e}", i + 1)))?;
        let issuer = crl.issuer();
        let Some(at) = parsed_cas.iter().position(|ca| ca.subject().as_raw() == issuer.as_raw()) else {
            return Err(bad(format!("CRL #{} is issued by '{issuer}', which is not a CA in {}", i + 1, ca_path.display())));
        };
        crl.verify_signature(parsed_cas[at].public_key())
            .map_err(|e| bad(format!("CRL #{} is not signed by the CA in {}: {e}", i + 1, ca_path.display())))?;
        covered[at] = true;
        for r in crl.iter_revoked_certificates() {
            summary.revoked += 1;
            summary.serials.push(r.raw_serial_as_string());
        }
    }
    if let Some(missing) = covered.iter().position(|c| !c) {
        return Err(bad(format!(
            "has no CRL for CA '{}' of {}; with a CRL configured every CA needs one, or its clients are refused",
            parsed_cas[missing].subject(),
            ca_path.display()
        )));
    }
    Ok(summary)
}

/// Called with the identity of a client certificate refused because it is revoked.
pub type RevokedHook = Arc<dyn Fn(&PeerIdentity) + Send + Sync>;

/// What the agent's TLS configuration adds to its three files.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// The fleet CA's revocation list (PEM); revoked client certificates are refused.
    pub crl: Option<PathBuf>,
    /// Told who was refused as revoked (the handshake error itself carries no name).
    pub on_revoked: Option<RevokedHook>,
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions").field("crl", &self.crl).field("on_revoked", &self.on_revoked.is_some()).finish()
    }
}

/// The agent's TLS configuration: TLS 1.3 only, a client certificate signed by the
/// fleet CA (and not on its CRL, when one is configured) required on every connection.
pub fn server_config(paths: &TlsPaths, options: &ServerOptions) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&paths.cert, "certificate")?;
    let key = load_key(&paths.key)?;
    server_config_from_parts(&paths.ca, options, certs, key).map_err(|e| match e {
        PartsError::Tls(e) => e,
        PartsError::Identity(e) => TlsError::BadIdentity {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
            reason: identity_reason(&e),
        },
    })
}

/// Why a configuration built from parts failed.
#[derive(Debug)]
pub(crate) enum PartsError {
    Tls(TlsError),
    Identity(rustls::Error),
}

/// The agent's TLS configuration with a certificate and key held in memory (the enrolment
/// listener's self-signed certificate): the same client verification as `server_config`.
pub(crate) fn server_config_from_parts(
    ca: &Path,
    options: &ServerOptions,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, PartsError> {
    let roots = roots(ca).map_err(PartsError::Tls)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    if let Some(crl_path) = &options.crl {
        let crls = load_crls(crl_path).map_err(PartsError::Tls)?;
        let cas = load_certs(ca, "CA").map_err(PartsError::Tls)?;
        check_crls(crl_path, &crls, ca, &cas).map_err(PartsError::Tls)?;
        // Only leaves are checked: the CA is the trust anchor, and our CRLs list leaves.
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    let webpki = builder.build().map_err(|e| {
        PartsError::Tls(match &options.crl {
            Some(crl) => TlsError::BadCrl { path: crl.clone(), reason: e.to_string() },
            None => TlsError::BadCa { path: ca.to_path_buf(), reason: e.to_string() },
        })
    })?;
    let verifier: Arc<dyn ClientCertVerifier> = match &options.on_revoked {
        Some(hook) => Arc::new(NoticeRevoked { inner: webpki, hook: hook.clone() }),
        None => webpki,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(PartsError::Identity)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(PartsError::Identity)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The webpki client verifier, plus a word to `hook` naming each revoked certificate it
/// refuses. It decides nothing itself.
struct NoticeRevoked {
    inner: Arc<dyn ClientCertVerifier>,
    hook: RevokedHook,
}

impl fmt::Debug for NoticeRevoked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoticeRevoked").field("inner", &self.inner).finish()
    }
}

impl ClientCertVerifier for NoticeRevoked {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = self.inner.verify_client_cert(end_entity, intermediates, now);
        if let Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) = &verdict {
            if let Ok(id) = PeerIdentity::from_der(end_entity.as_ref()) {
                (self.hook)(&id);
            }
        }
        verdict
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// The controller's TLS configuration: TLS 1.3 only, the agent verified against the
/// fleet CA (and against the CA's revocation list when `crl` names one, so that the
/// certificate of a host removed from the fleet is refused), this side's certificate
/// presented.
pub fn client_config(paths: &TlsPaths, crl: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = roots(&paths.ca)?;
    let certs = load_certs(&paths.cert, "certificate")?;
    let key = load_key(&paths.key)?;
    let verifier = match crl {
        None => None,
        Some(crl_path) => {
            let crls = load_crls(crl_path)?;
            let cas = load_certs(&paths.ca, "CA")?;
            check_crls(crl_path, &crls, &paths.ca, &cas)?;
            let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .build()
                .map_err(|e| TlsError::BadCrl { path: crl_path.to_path_buf(), reason: e.to_string() })?;
            Some(v)
        }
    };
    let bad = |e: rustls::Error| TlsError::BadIdentity { cert: paths.cert.clone(), key: paths.key.clone(), reason: e.to_string() };
    match verifier {
        None => client_config_from_parts(roots, Some((certs, key))).map_err(bad),
        Some(v) => {
            let mut config = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(bad)?
                .with_webpki_verifier(v)
                .with_client_auth_cert(certs, key)
                .map_err(bad)?;
            config.alpn_protocols = vec![ALPN_H2.to_vec()];
            Ok(Arc::new(config))
        }
    }
}

/// A client configuration from parts; `identity` None connects without a client
/// certificate (only useful to show that agents refuse such connections).
pub fn client_config_from_parts(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Loads only the CA roots of a file (for callers assembling their own client config).
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    roots(path)
}

/// Where and how to reach one agent.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    /// host:port to dial.
    pub address: String,
    /// The name the agent's certificate must carry (DNS name or IP address).
    pub server_name: String,
}

impl AgentTarget {
    /// A target whose certificate name defaults to the host part of the address.
    pub fn new(address: impl Into<String>, server_name: Option<String>) -> AgentTarget {
        let address = address.into();
        let server_name = server_name.unwrap_or_else(|| host_part(&address).to_string());
        AgentTarget { address, server_name }
    }
}

/// The host part of "host:port" or "[v6]:port".
pub fn host_part(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, _)) => host,
        None => address,
    }
}

/// Timeouts for dialling an agent.
#[derive(Debug, Clone, Copy)]
pub struct DialTimeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// Each unary request (streams are not bounded by it).
    pub request: Option<Duration>,
}

impl Default for DialTimeouts {
    fn default() -> Self {
        DialTimeouts { connect: Duration::from_secs(5), request: Some(Duration::from_secs(30)) }
    }
}

/// Opens an mTLS channel to an agent. The TCP connection and TLS handshake happen here,
/// so an unreachable agent or a rejected certificate is reported by this call.
pub async fn connect(
    target: &AgentTarget,
    config: Arc<ClientConfig>,
    timeouts: DialTimeouts,
) -> Result<Channel, ConnectError> {
    let server_name = ServerName::try_from(target.server_name.clone())
        .map_err(|_| ConnectError::new(FailureKind::Config, format!("invalid server name {:?}", target.server_name)))?;
    // The URI is only a label for hyper; the connector below decides where to dial.
    let uri = format!("https://{}", target.address);
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| ConnectError::new(FailureKind::Config, format!("invalid agent address {:?}: {e}", target.address)))?
        .connect_timeout(timeouts.connect)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(t) = timeouts.request {
        endpoint = endpoint.timeout(t);
    }
    let address = target.address.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let address = address.clone();
        let config = config.clone();
        let server_name = server_name.clone();
        let deadline = timeouts.connect;
        async move {
            let tcp = tokio::time::timeout(deadline, TcpStream::connect(&address))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config);
            let stream = tokio::time::timeout(deadline, tls.connect(server_name, tcp))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::classify(&e))
}

/// The kind of a connection failure, named for an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Nothing listens at the address.
    Refused,
    /// No answer within the deadline.
    TimedOut,
    /// The agent rejected our client certificate (missing, wrong CA, expired...).
    ClientCertificateRejected,
    /// The agent's certificate failed verification (wrong CA, wrong name, expired...).
    ServerCertificateInvalid,
    /// The host or network cannot be reached.
    Unreachable,
    /// The address or server name is not valid.
    Config,
    /// The connection dropped or the peer misbehaved.
    Protocol,
    /// The agent answered, but refused the call or failed it (the detail says how).
    Agent,
}

impl FailureKind {
    /// A short stable name for tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Refused => "connection refused",
            FailureKind::TimedOut => "timed out",
            FailureKind::ClientCertificateRejected => "client certificate rejected",
            FailureKind::ServerCertificateInvalid => "agent certificate invalid",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Config => "invalid target",
            FailureKind::Protocol => "connection failed",
            FailureKind::Agent => "agent error",
        }
    }
}

/// A connection (or call) failure: its kind and the detail that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    pub kind: FailureKind,
    pub detail: String,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            f.write_str(self.kind.as_str())
        } else {
            write!(f, "{}: {}", self.kind.as_str(), self.detail)
        }
    }
}

impl StdError for ConnectError {}

impl ConnectError {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> ConnectError {
        ConnectError { kind, detail: detail.into() }
    }

    /// Walks an error's sources (through `io::Error` wrappers, which `source()` skips)
    /// and names the first cause it recognises.
    pub fn classify(err: &(dyn StdError + 'static)) -> ConnectError {
        let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
        let mut last = err.to_string();
        while let Some(e) = cur {
            if let Some(r) = e.downcast_ref::<rustls::Error>() {
                return from_rustls(r);
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                if let Some(inner) = io.get_ref() {
                    if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                        return from_rustls(r);
                    }
                }
                let kind = match io.kind() {
                    io::ErrorKind::ConnectionRefused => Some(FailureKind::Refused),
                    io::ErrorKind::TimedOut => Some(FailureKind::TimedOut),
                    io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::AddrNotAvailable => Some(FailureKind::Unreachable),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof => Some(FailureKind::Protocol),
                    _ => None,
                };
                if let Some(kind) = kind {
                    // "connection refused: Connection refused (os error 111)" says it twice.
                    let text = io.to_string();
                    let detail = if text.to_lowercase().starts_with(kind.as_str()) { String::new() } else { text };
                    return ConnectError::new(kind, detail);
                }
                if let Some(inner) = io.get_ref() {
                    cur = Some(inner);
                    last = inner.to_string();
                    continue;
                }
            }
            // h2 keeps only the text of an I/O error it saw, so a TLS alert that arrives
            // after the handshake (TLS 1.3 client-certificate rejection) is known by its words.
            if let Some(alert) = e.to_string().split("received fatal alert: ").nth(1) {
                let name: String = alert.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
                return from_alert_name(&name);
            }
            if e.to_string().contains("timed out") || e.downcast_ref::<tokio::time::error::Elapsed>().is_some() {
                return ConnectError::new(FailureKind::TimedOut, e.to_string());
            }
            last = e.to_string();
            cur = e.source();
        }
        ConnectError::new(FailureKind::Protocol, last)
    }
}

/// Names an alert known only by its Debug name (e.g. "CertificateRequired").
fn from_alert_name(name: &str) -> ConnectError {
    use rustls::AlertDescription as A;
    let alert = [
        A::CertificateRequired, A::UnknownCA, A::CertificateExpired, A::BadCertificate, A::DecryptError,
        A::ProtocolVersion, A::HandshakeFailure, A::AccessDenied, A::CertificateRevoked, A::UnsupportedCertificate,
    ]
    .into_iter()
    .find(|a| format!("{a:?}") == name);
    match alert {
        Some(a) => from_rustls(&rustls::Error::AlertReceived(a)),
        None => ConnectError::new(FailureKind::Protocol, format!("the agent sent a TLS alert ({name})")),
    }
}

/// Names a rustls error: an alert from the agent means it rejected us; a local
/// verification error means we rejected the agent.
fn from_rustls(e: &rustls::Error) -> ConnectError {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::AlertReceived(A::ProtocolVersion) => {
            ConnectError::new(FailureKind::Protocol, "the agent requires TLS 1.3 (ProtocolVersion alert)")
        }
        E::AlertReceived(alert) => {
            let why = match alert {
                A::CertificateRequired => "the agent requires a client certificate and none was sent",
                A::UnknownCA => "the agent does not trust the CA that signed our certificate",
                A::CertificateExpired => "the agent says our certificate has expired",
                A::CertificateRevoked => "the agent says our certificate has been revoked",
                A::BadCertificate => "the agent says our certificate is bad",
                A::DecryptError => "the agent could not verify our certificate's signature",
                _ => "the agent sent a TLS alert",
            };
            ConnectError::new(FailureKind::ClientCertificateRejected, format!("{why} ({alert:?})"))
        }
        E::InvalidCertificate(c) => {
            let why = match c {
                C::Expired | C::ExpiredContext { .. } => "the agent's certificate has expired".to_string(),
                C::NotValidYet | C::NotValidYetContext { .. } => "the agent's certificate is not valid yet".to_string(),
                C::UnknownIssuer => "the agent's certificate is not signed by the fleet CA".to_string(),
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    format!("the agent's certificate does not match the expected name ({c:?})")
                }
                C::BadSignature => "the agent's certificate has a bad signature".to_string(),
                other => format!("{other:?}"),
            };
            ConnectError::new(FailureKind::ServerCertificateInvalid, why)
        }
        other => ConnectError::new(FailureKind::Protocol, format!("TLS: {other}")),
    }
}

/// Information about an accepted, verified connection, available to handlers as a
/// request extension.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// `None` only when the verified certificate could not be parsed.
    pub identity: Option<PeerIdentity>,
}

/// A server-side TLS connection that tells tonic who is on the other end.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl PeerStream {
    /// Wraps an accepted connection, reading the peer's identity from its certificate.
    pub fn new(inner: tokio_rustls::server::TlsStream<TcpStream>) -> PeerStream {
        let remote_addr = inner.get_ref().0.peer_addr().ok();
        let identity = inner
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| PeerIdentity::from_der(der.as_ref()).ok())
            .map(|id| PeerIdentity { remote_addr, ..id });
        PeerStream { inner, info: PeerInfo { remote_addr, identity } }
    }

    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer, KeyIdMethod, KeyPair,
        KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };

    fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(params, key))
    }

    fn crl(issuer: &Issuer<'static, KeyPair>, serials: &[u8]) -> String {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&[*s]),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(issuer).unwrap().pem().unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_key_readable_by_group_or_others_is_refused_in_sshs_words() {
        let dir = tempfile::tempdir().unwrap();
        let pem = KeyPair::generate().unwrap().serialize_pem();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let p = write(dir.path(), "key.pem", &pem, mode);
            let err = load_key(&p).unwrap_err();
            assert!(matches!(err, TlsError::KeyTooOpen { .. }), "{mode:o}: {err}");
            let text = err.to_string();
            let expected = format!("Permissions {mode:04o} for '{}' are too open", p.display());
            assert!(text.starts_with(&expected), "{text}");
            assert!(text.contains("It is required that your private key files are NOT accessible by others"), "{text}");
        }
        let p = write(dir.path(), "key.pem", &pem, 0o600);
        load_key(&p).unwrap();
        let p = write(dir.path(), "key.pem", &pem, 0o400);
        load_key(&p).unwrap();
    }

    #[test]
    fn a_crl_from_the_fleet_ca_is_accepted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, issuer) = ca("fleet CA");
        let ca_path = write(dir.path(), "ca.pem", &ca_pem, 0o644);
        let crl_path = write(dir.path(), "crl.pem", &crl(&issuer, &[7, 9]), 0o644);
        let crls = load_crls(&crl_path).unwrap();
        let cas = load_certs(&ca_path, "CA").unwrap();
        let summary = check_crls(&crl_path, &crls, &ca_path, &cas).unwrap();
        assert_eq!(summary.revoked, 2);
        assert_eq!(summary.serials, vec!["07".to_string(), "09".to_string()]);
    }

    #[test]
    fn a_crl_from_another_ca_or_garbage_is_refused_naming_the_crl_file() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, _) = ca("fleet CA");
        let (_, other) = ca("other CA");
        let ca_path = write(dir.path(), "ca.pem", &ca_pem, 0o644);
        let cas = load_certs(&ca_path, "CA").unwrap();
        let foreign = write(dir.path(), "foreign-crl.pem", &crl(&other, &[1]), 0o644);
        let err = check_crls(&foreign, &load_crls(&foreign).unwrap(), &ca_path, &cas).unwrap_err().to_string();
        assert!(err.contains("foreign-crl.pem") && err.contains("not a CA in"), "{err}");

        let garbage = write(dir.path(), "garbage.pem", "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", 0o644);
        let err = match load_crls(&garbage) {
            Ok(crls) => check_crls(&garbage, &crls, &ca_path, &cas).unwrap_err(),
            Err(e) => e,
        };
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        let empty = write(dir.path(), "empty.pem", "not a pem file\n", 0o644);
        let err = load_crls(&empty).unwrap_err().to_string();
        assert!(err.contains("empty.pem") && err.contains("X509 CRL"), "{err}");
    }

    #[test]
    fn a_server_config_with_a_foreign_crl_is_not_built() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, issuer) = ca("fleet CA");
        let (_, other) = ca("other CA");
        let ca_path = write(dir.path(), "ca.pem", &ca_pem, 0o644);
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let paths = TlsPaths {
            ca: ca_path,
            cert: write(dir.path(), "agent.pem", &cert.pem(), 0o644),
            key: write(dir.path(), "agent.key", &key.serialize_pem(), 0o600),
        };
        let good = write(dir.path(), "crl.pem", &crl(&issuer, &[3]), 0o644);
        server_config(&paths, &ServerOptions { crl: Some(good), on_revoked: None }).unwrap();
        let foreign = write(dir.path(), "foreign.pem", &crl(&other, &[3]), 0o644);
        let err = server_config(&paths, &ServerOptions { crl: Some(foreign), on_revoked: None }).unwrap_err();
        assert!(matches!(err, TlsError::BadCrl { .. }), "{err}");
    }
}
