//! Joining the fleet without a secret travelling anywhere: an agent installed through
//! user-data has the fleet CA's certificate but no certificate of its own. It makes its
//! private key here (mode 0600, never sent), serves only `ops.v1.Enroll` under a
//! self-signed certificate for that key, and offers the controller a CSR, a signature over
//! the controller's nonce and its proof of identity (the EC2 instance-identity document
//! from IMDSv2, or a one-time join token). The certificate the controller signs is checked
//! (it chains to the fleet CA, names this key, is valid now) before it is installed, and
//! the listener switches to it without a restart. Rotation is the same exchange with a
//! new key on an enrolled agent.
//!
//! This module must never send or log the private key, never install a certificate for a
//! key it does not hold, and never replace a working certificate with one that fails the
//! checks above.

pub mod service;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ops_proto::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use ops_proto::tls::{self, TlsPaths};
use ops_proto::tls_check::{self, Usage};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SigningKey};
use serde::Deserialize;

use crate::config::MetadataConfig;

/// Largest join-token file read.
const MAX_TOKEN_BYTES: u64 = 4096;

/// How the agent proves which host it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The EC2 instance-identity document and its signature, from IMDSv2.
    Ec2,
    /// A one-time join token written to a file by whoever set the host up (hosts outside
    /// EC2; weaker: whoever holds the token can enrol once in this host's name).
    JoinToken,
}

/// `[enrol]` in the agent's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolConfig {
    pub method: Method,
    /// `join-token`: the file holding the token (removed once the agent is enrolled).
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
    /// `join-token`: the host name the certificate will carry (the token is bound to it).
    #[serde(default)]
    pub host_name: Option<String>,
}

impl EnrolConfig {
    pub fn validate(&self, metadata: &MetadataConfig) -> Result<(), String> {
        match self.method {
            Method::Ec2 => {
                if !metadata.enabled {
                    return Err("enrol.method = \"ec2\" needs the metadata service: set metadata.enabled = true".into());
                }
                if self.join_token_file.is_some() || self.host_name.is_some() {
                    return Err("enrol.join_token_file and enrol.host_name are for method = \"join-token\" only".into());
                }
            }
            Method::JoinToken => {
                if self.join_token_file.is_none() {
                    return Err("enrol.method = \"join-token\" needs enrol.join_token_file".into());
                }
                match &self.host_name {
                    Some(h) if valid_host_name(h) => {}
                    Some(h) => return Err(format!("enrol.host_name = {h:?}: use letters, digits, '-' and '.'")),
                    None => return Err("enrol.method = \"join-token\" needs enrol.host_name (the name its token is bound to)".into()),
                }
            }
        }
        Ok(())
    }
}

fn valid_host_name(h: &str) -> bool {
    !h.is_empty() && h.len() <= 253 && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Enrolment failed on this side.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("cannot create the private key {path}: {source}")]
    CreateKey { path: PathBuf, source: std::io::Error },
    #[error("cannot use the private key {path}: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("this agent has no [enrol] section in its config, so it cannot enrol; it can only rotate a certificate it already has")]
    NotConfigured,
    #[error("cannot prove this host's EC2 identity: {0}")]
    Metadata(String),
    #[error("cannot read the join token {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("cannot make the CSR: {0}")]
    Csr(String),
    #[error("no enrolment is in progress: ask for an offer (BeginEnrolment) first")]
    NothingPending,
    #[error("the certificate offered cannot be installed: {0}")]
    Refused(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// What the agent offers for a certificate (see `ops.v1.EnrolmentOffer`).
#[derive(Debug, Clone, Default)]
pub struct Offer {
    pub csr_der: Vec<u8>,
    pub nonce_signature: Vec<u8>,
    pub identity_document: String,
    pub identity_pkcs7: String,
    pub join_token: String,
}

/// A certificate that was installed.
#[derive(Debug, Clone)]
pub struct Installed {
    pub serial: String,
    pub not_after: std::time::SystemTime,
}

/// The agent's enrolment state: its key, whether it holds a certificate, and a rotation
/// key while a rotation is under way.
pub struct Enrolment {
    config: Option<EnrolConfig>,
    metadata_url: String,
    metadata_timeout: Duration,
    paths: TlsPaths,
    options: tls::ServerOptions,
    /// The key of `tls.key`, made at start when the agent was not enrolled.
    key: std::sync::Mutex<Option<KeyPair>>,
    /// A new key made for a rotation, installed with its certificate.
    rotation: std::sync::Mutex<Option<KeyPair>>,
    enrolled: AtomicBool,
}

impl Enrolment {
    /// Blocking: reads the state from disk. Without a certificate (and with `[enrol]`),
    /// the key is loaded or made now, so that a restart keeps the same key.
    pub fn open(cfg: &crate::config::AgentConfig, options: tls::ServerOptions) -> Result<Enrolment, EnrolError> {
        let paths = cfg.tls_paths();
        finish_interrupted_install(&paths);
        let enrolled = paths.cert.is_file();
        let key = if !enrolled && cfg.enrol.is_some() { Some(load_or_make_key(&paths.key)?) } else { None };
        Ok(Enrolment {
            config: cfg.enrol.clone(),
            metadata_url: cfg.metadata.url.clone(),
            metadata_timeout: cfg.metadata_timeout().max(Duration::from_secs(2)),
            paths,
            options,
            key: std::sync::Mutex::new(key),
            rotation: std::sync::Mutex::new(None),
            enrolled: AtomicBool::new(enrolled),
        })
    }

    /// Whether the agent holds a certificate (and so serves `ops.v1.Agent`).
    pub fn is_enrolled(&self) -> bool {
        self.enrolled.load(Ordering::SeqCst)
    }

    pub(crate) fn set_enrolled(&self) {
        self.enrolled.store(true, Ordering::SeqCst);
    }

    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// The listener's configuration while waiting: a self-signed certificate for the
    /// pending key (the controller pins it to the CSR) and the usual client verification.
    pub fn waiting_server_config(&self) -> Result<std::sync::Arc<ops_proto::rustls::ServerConfig>, EnrolError> {
        let bad = |reason: String| EnrolError::BadKey { path: self.paths.key.clone(), reason };
        let guard = self.key.lock().map_err(|_| bad("key lock poisoned".into()))?;
        let key = guard.as_ref().ok_or(EnrolError::NotConfigured)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| bad(e.to_string()))?;
        params.distinguished_name = name("ops-agent (not enrolled)");
        let cert = params.self_signed(key).map_err(|e| bad(e.to_string()))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        ops_proto::enrol::waiting_server_config(&self.paths.ca, &self.options, cert.der().clone(), der)
            .map_err(|e| bad(e.to_string()))
    }

    /// The offer for `nonce`: a CSR for the pending key (a new key when `rotate` on an
    /// enrolled agent) and the proofs.
    pub async fn offer(&self, nonce: &[u8], rotate: bool) -> Result<Offer, EnrolError> {
        if self.is_enrolled() {
            if !rotate {
                return Err(EnrolError::Refused(
                    "this agent is already enrolled; a new certificate is a rotation (`controller fleet rotate-certs`)".into(),
                ));
            }
            let key = KeyPair::generate().map_err(|e| EnrolError::Csr(e.to_string()))?;
            let sans = current_sans(&self.paths.cert)?;
            let offer = signed_offer(&key, sans, nonce)?;
            if let Ok(mut g) = self.rotation.lock() {
                *g = Some(key);
            }
            return Ok(offer);
        }
        let config = self.config.as_ref().ok_or(EnrolError::NotConfigured)?;
        let mut offer;
        match config.method {
            Method::Ec2 => {
                let id = crate::imds::ec2_identity(&self.metadata_url, self.metadata_timeout)
                    .await
                    .map_err(EnrolError::Metadata)?;
                let sans = vec![id.instance_id.clone(), id.private_ip.to_string(), id.private_dns.clone()];
                offer = self.pending_offer(sans, nonce)?;
                offer.identity_document = id.document;
                offer.identity_pkcs7 = id.pkcs7;
            }
            Method::JoinToken => {
                let path = config.join_token_file.clone().ok_or(EnrolError::NotConfigured)?;
                let host = config.host_name.clone().ok_or(EnrolError::NotConfigured)?;
                offer = self.pending_offer(vec![host], nonce)?;
                offer.join_token = read_token(&path)?;
            }
        }
        Ok(offer)
    }

    fn pending_offer(&self, sans: Vec<String>, nonce: &[u8]) -> Result<Offer, EnrolError> {
        let guard = self.key.lock().map_err(|_| EnrolError::Csr("key lock poisoned".into()))?;
        let key = guard.as_ref().ok_or(EnrolError::NotConfigured)?;
        signed_offer(key, sans, nonce)
    }

    /// Blocking: checks `cert_pem` (chains to the fleet CA, for the pending or rotation
    /// key, valid now) and installs it (with the rotation key, when rotating). The caller
    /// then reloads the listener.
    pub fn install(&self, cert_pem: &str) -> Result<Installed, EnrolError> {
        let rotation = self.rotation.lock().ok().and_then(|mut g| g.take());
        let rotating = rotation.is_some();
        if !rotating && (self.is_enrolled() || self.key.lock().map(|g| g.is_none()).unwrap_or(true)) {
            return Err(EnrolError::NothingPending);
        }
        let dir = self.paths.cert.parent().unwrap_or(Path::new(".")).to_path_buf();
        let (tmp_cert, tmp_key) = (next_of(&self.paths.cert), next_of(&self.paths.key));
        // Leftovers of an attempt that failed its checks; never of an interrupted install,
        // which `open` finished or undid at start.
        for p in [&tmp_cert, &tmp_key] {
            let _ = std::fs::remove_file(p);
        }
        let _cleanup = RemoveOnDrop(vec![tmp_cert.clone(), tmp_key.clone()]);
        write_new(&tmp_cert, cert_pem.as_bytes(), 0o644)?;
        let key_for_check = match &rotation {
            Some(k) => {
                write_new(&tmp_key, k.serialize_pem().as_bytes(), 0o600)?;
                tmp_key.clone()
            }
            None => self.paths.key.clone(),
        };
        let candidate = TlsPaths { ca: self.paths.ca.clone(), cert: tmp_cert.clone(), key: key_for_check };
        let report = tls_check::check_identity(&candidate, Usage::Server, std::time::SystemTime::now())
            .map_err(|e| EnrolError::Refused(e.to_string()))?;
        tls::server_config(&candidate, &self.options).map_err(|e| EnrolError::Refused(e.to_string()))?;
        let serial = cert_serial(&tmp_cert)?;
        // The order `finish_interrupted_install` relies on: the key first, then the
        // certificate. A crash between the two leaves `cert.next` for the new key.
        if rotating {
            rename(&tmp_key, &self.paths.key)?;
        }
        rename(&tmp_cert, &self.paths.cert)?;
        sync_dir(&dir);
        if !rotating {
            if let Some(Method::JoinToken) = self.config.as_ref().map(|c| c.method) {
                if let Some(token) = self.config.as_ref().and_then(|c| c.join_token_file.as_ref()) {
                    if let Err(e) = std::fs::remove_file(token) {
                        tracing::warn!("enrolled, but cannot remove the used join token {}: {e}", token.display());
                    }
                }
            }
        }
        Ok(Installed { serial, not_after: std::time::SystemTime::now() + report.cert.expires_in })
    }
}

/// `<file>.next`: where a new certificate or key waits for its rename into place.
fn next_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(std::ffi::OsString::from).unwrap_or_default();
    name.push(".next");
    path.with_file_name(name)
}

/// Blocking, at start: finishes or undoes an installation a crash interrupted. With
/// `key.next` still there, nothing was renamed yet: the old pair is intact and the new
/// files go. With only `cert.next`, the new key is in place and its certificate was not:
/// it is put in place if it matches that key and chains to the CA, else removed (then the
/// agent reports the mismatch, and the host enrols again with `--re-enrol`).
fn finish_interrupted_install(paths: &TlsPaths) {
    let (cert_next, key_next) = (next_of(&paths.cert), next_of(&paths.key));
    if key_next.exists() {
        let _ = std::fs::remove_file(&key_next);
        let _ = std::fs::remove_file(&cert_next);
        tracing::warn!("an interrupted certificate rotation was undone: {} and its key kept", paths.cert.display());
        return;
    }
    if !cert_next.exists() {
        return;
    }
    let candidate = TlsPaths { ca: paths.ca.clone(), cert: cert_next.clone(), key: paths.key.clone() };
    match tls_check::check_identity(&candidate, Usage::Server, std::time::SystemTime::now()) {
        Ok(_) => match std::fs::rename(&cert_next, &paths.cert) {
            Ok(()) => {
                sync_dir(paths.cert.parent().unwrap_or(Path::new(".")));
                tracing::warn!("finished an interrupted certificate installation: {} is in place", paths.cert.display());
            }
            Err(e) => tracing::error!("cannot finish an interrupted certificate installation ({}): {e}", cert_next.display()),
        },
        Err(e) => {
            let _ = std::fs::remove_file(&cert_next);
            tracing::error!("removed {}, left by an interrupted installation: {e}", cert_next.display());
        }
    }
}

/// A CSR for `key` naming `sans`, and the signature over the nonce.
fn signed_offer(key: &KeyPair, sans: Vec<String>, nonce: &[u8]) -> Result<Offer, EnrolError> {
    if !(ops_proto::enrol::NONCE_MIN..=ops_proto::enrol::NONCE_MAX).contains(&nonce.len()) {
        return Err(EnrolError::Csr(format!(
            "the nonce is {} bytes; it must be {} to {}",
            nonce.len(),
            ops_proto::enrol::NONCE_MIN,
            ops_proto::enrol::NONCE_MAX
        )));
    }
    let cn = sans.first().cloned().unwrap_or_default();
    let mut params = CertificateParams::new(sans).map_err(|e| EnrolError::Csr(e.to_string()))?;
    params.distinguished_name = name(&cn);
    let csr = params.serialize_request(key).map_err(|e| EnrolError::Csr(e.to_string()))?;
    let nonce_signature = key
        .sign(&ops_proto::enrol::nonce_message(nonce))
        .map_err(|e| EnrolError::Csr(format!("cannot sign the nonce: {e}")))?;
    Ok(Offer { csr_der: csr.der().to_vec(), nonce_signature, ..Offer::default() })
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// The DNS and IP names of the installed certificate, as CSR names for its successor.
fn current_sans(cert: &Path) -> Result<Vec<String>, EnrolError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let der = current_der(cert)?;
    let (_, parsed) = X509Certificate::from_der(der.as_ref()).map_err(|e| EnrolError::Csr(format!("{}: {e}", cert.display())))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for gn in &san.value.general_names {
            match gn {
                GeneralName::DNSName(d) => out.push((*d).to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => out.push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()).to_string()),
                    16 => out.push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if out.is_empty() {
        return Err(EnrolError::Csr(format!("{} names no DNS name or IP address to carry over", cert.display())));
    }
    Ok(out)
}

fn current_der(cert: &Path) -> Result<CertificateDer<'static>, EnrolError> {
    tls::load_certs(cert, "certificate")
        .map_err(|e| EnrolError::Csr(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| EnrolError::Csr(format!("{} holds no certificate", cert.display())))
}

/// The serial (hex with colons) and expiry of the certificate in `path`.
pub fn certificate_facts(path: &Path) -> Option<(String, i64)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = current_der(path).ok()?;
    let (_, c) = X509Certificate::from_der(der.as_ref()).ok()?;
    Some((c.raw_serial_as_string(), c.validity().not_after.timestamp() * 1000))
}

fn cert_serial(path: &Path) -> Result<String, EnrolError> {
    certificate_facts(path).map(|(s, _)| s).ok_or_else(|| EnrolError::Refused(format!("{} does not parse", path.display())))
}

fn read_token(path: &Path) -> Result<String, EnrolError> {
    use std::io::Read;
    let bad = |reason: String| EnrolError::Token { path: path.to_path_buf(), reason };
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut text = String::new();
    f.take(MAX_TOKEN_BYTES + 1).read_to_string(&mut text).map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_TOKEN_BYTES {
        return Err(bad(format!("larger than {MAX_TOKEN_BYTES} bytes")));
    }
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(token)
}

/// Loads the key at `path` (owner-only, as ever) or makes a new one there.
fn load_or_make_key(path: &Path) -> Result<KeyPair, EnrolError> {
    let bad = |reason: String| EnrolError::BadKey { path: path.to_path_buf(), reason };
    if path.exists() {
        let pem = tls::read_private_key_file(path).map_err(|e| bad(e.to_string()))?;
        let pem = String::from_utf8(pem).map_err(|_| bad("not PEM text".into()))?;
        return KeyPair::from_pem(&pem).map_err(|e| bad(e.to_string()));
    }
    let key = KeyPair::generate().map_err(|e| bad(e.to_string()))?;
    write_new(path, key.serialize_pem().as_bytes(), 0o600).map_err(|e| match e {
        EnrolError::Write { path, source } => EnrolError::CreateKey { path, source },
        other => other,
    })?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    tracing::info!("made this agent's private key {} (it never leaves this host)", path.display());
    Ok(key)
}

/// Creates `path` (never through an existing file or link), writes and fsyncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), EnrolError> {
    let wrap = |source| EnrolError::Write { path: path.to_path_buf(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(wrap)?;
    f.write_all(bytes).map_err(wrap)?;
    f.sync_all().map_err(wrap)
}

fn rename(from: &Path, to: &Path) -> Result<(), EnrolError> {
    std::fs::rename(from, to).map_err(|source| EnrolError::Write { path: to.to_path_buf(), source })
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes leftover temporary files, whatever happened.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spki_of(key: &KeyPair) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(key)
    }

    #[test]
    fn a_made_key_is_owner_only_and_is_reused_after_a_restart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        let first = load_or_make_key(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = load_or_make_key(&path).unwrap();
        assert_eq!(spki_of(&first), spki_of(&again));
    }

    #[test]
    fn a_key_is_never_made_through_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let path = dir.path().join("agent.key");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        // A dangling link: `exists()` is false, and creating through it must fail.
        let err = load_or_make_key(&path).unwrap_err();
        assert!(matches!(err, EnrolError::CreateKey { .. }), "{err}");
        assert!(!target.exists(), "the key was written through the link");
    }

    #[test]
    fn the_offer_signs_the_nonce_with_the_key_of_its_csr() {
        let key = KeyPair::generate().unwrap();
        let nonce = [7u8; 32];
        let offer = signed_offer(&key, vec!["i-0abc".into(), "10.0.0.5".into()], &nonce).unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_der(&offer.csr_der.as_slice().into()).unwrap();
        assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&csr.public_key), spki_of(&key));
        let pk = ring_verify_key(&key);
        pk.verify(&ops_proto::enrol::nonce_message(&nonce), &offer.nonce_signature).unwrap();
        assert!(signed_offer(&key, vec!["x".into()], &[0u8; 3]).is_err(), "a short nonce is refused");
    }

    /// A fleet CA and a server certificate for `key` signed by it, written into `dir`.
    fn pair(dir: &Path, key: &KeyPair, serial: u8) -> (PathBuf, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name = name("test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_path = dir.join("ca.pem");
        if !ca_path.exists() {
            std::fs::write(&ca_path, ca_cert.pem()).unwrap();
            std::fs::write(dir.join("ca.key"), ca_key.serialize_pem()).unwrap();
        }
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(&ca_path).unwrap(), ca_key).unwrap();
        let mut params = CertificateParams::new(vec!["i-0abc".to_string()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[serial]));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        (ca_path, params.signed_by(key, &issuer).unwrap().pem())
    }

    #[test]
    fn a_rotation_cut_short_between_its_two_renames_is_finished_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (old_key, new_key) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let (ca, old_cert) = pair(dir.path(), &old_key, 1);
        let (_, new_cert) = pair(dir.path(), &new_key, 2);
        let paths = TlsPaths { ca, cert: dir.path().join("agent.pem"), key: dir.path().join("agent.key") };
        std::fs::write(&paths.cert, &old_cert).unwrap();
        // The crash: the new key is in place, its certificate still waits as cert.next.
        write_new(&paths.key, new_key.serialize_pem().as_bytes(), 0o600).unwrap();
        std::fs::write(next_of(&paths.cert), &new_cert).unwrap();
        finish_interrupted_install(&paths);
        assert_eq!(std::fs::read_to_string(&paths.cert).unwrap(), new_cert);
        assert!(!next_of(&paths.cert).exists());
        tls_check::check_identity(&paths, Usage::Server, std::time::SystemTime::now()).unwrap();
    }

    #[test]
    fn a_rotation_cut_short_before_its_renames_keeps_the_old_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (old_key, new_key) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let (ca, old_cert) = pair(dir.path(), &old_key, 1);
        let (_, new_cert) = pair(dir.path(), &new_key, 2);
        let paths = TlsPaths { ca, cert: dir.path().join("agent.pem"), key: dir.path().join("agent.key") };
        std::fs::write(&paths.cert, &old_cert).unwrap();
        write_new(&paths.key, old_key.serialize_pem().as_bytes(), 0o600).unwrap();
        write_new(&next_of(&paths.key), new_key.serialize_pem().as_bytes(), 0o600).unwrap();
        std::fs::write(next_of(&paths.cert), &new_cert).unwrap();
        finish_interrupted_install(&paths);
        assert_eq!(std::fs::read_to_string(&paths.cert).unwrap(), old_cert);
        assert!(!next_of(&paths.cert).exists() && !next_of(&paths.key).exists());
        tls_check::check_identity(&paths, Usage::Server, std::time::SystemTime::now()).unwrap();
    }

    fn ring_verify_key(key: &KeyPair) -> ring::signature::UnparsedPublicKey<Vec<u8>> {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key.public_key_raw().to_vec())
    }
}
