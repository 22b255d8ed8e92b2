//! Development and test PKI: a fleet CA, operator and viewer client certificates (the
//! role travels inside the certificate as a URI SAN), agent server certificates, a record
//! of what was issued, and the CA's revocation list (CRL) that agents honour.
//!
//! Keys are written with mode 0600 and existing files are never overwritten unless the
//! caller says so; the CA key is read only if group and others cannot read it. A CRL is
//! only ever replaced whole (written aside, then renamed), and a revocation never drops an
//! earlier one. This is for development and tests; production CAs live elsewhere.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

mod revoke;

pub use revoke::{issued, parse_serial, revoke, serial_of, Issued, RevokeTarget, Revocation, CRL_FILE, INDEX_FILE};
pub(crate) use revoke::record;
use revoke::write_crl;

use ops_proto::identity::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Validity of generated certificates.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

/// PKI generation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path} already exists; pass --force to overwrite")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid name {0:?}: use letters, digits, '-', '_' and '.'")]
    BadName(String),
    #[error("{0}")]
    Tls(#[from] ops_proto::tls::TlsError),
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("invalid serial {0:?}: give it in hex, with or without colons (as in the agent's audit log)")]
    BadSerial(String),
    #[error("no certificate named {name:?} was issued from {dir}: not in {index}, and no {name}.pem in it, clients/ or agents/")]
    UnknownName { name: String, dir: PathBuf, index: &'static str },
    #[error("--days {0}: must be between 1 and 3650")]
    BadDays(u32),
}

/// A generated certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A CA able to sign leaves.
pub struct Ca {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed fleet CA.
    pub fn generate(common_name: &str, validity: Option<Validity>) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        apply_validity(&mut params, validity);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = Pem { cert: cert.pem(), key: key.serialize_pem() };
        Ok(Ca { pem, issuer: Issuer::new(params, key) })
    }

    /// Loads a CA written by `pki init`; its key must be readable by its owner only.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert = read(&dir.join("ca.pem"))?;
        let key_path = dir.join("ca.key");
        let key_pem = String::from_utf8(ops_proto::tls::read_private_key_file(&key_path)?)
            .map_err(|_| PkiError::BadFile { path: key_path.clone(), reason: "not a PEM text file".into() })?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key)?;
        Ok(Ca { pem: Pem { cert, key: key_pem }, issuer })
    }

    /// A client certificate for an operator or viewer (`None`: valid for `CLIENT_DAYS`).
    pub fn client(&self, common_name: &str, role: Role, validity: Option<Validity>) -> Result<Pem, PkiError> {
        self.client_with_role_claim(common_name, &role.uri(), validity)
    }

    /// A client certificate carrying any role URI (tests use it for unknown roles).
    pub fn client_with_role_claim(&self, common_name: &str, role_uri: &str, validity: Option<Validity>) -> Result<Pem, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name);
        params.subject_alt_names = vec![SanType::URI(role_uri.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        apply_validity(&mut params, Some(validity.unwrap_or_else(|| validity_days(CLIENT_DAYS))));
        self.sign(params)
    }

    /// A server certificate for an agent with the given names.
    pub fn agent(&self, name: &str, ips: &[IpAddr], dns: &[String], validity: Option<Validity>) -> Result<Pem, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(name);
        let mut sans = Vec::new();
        for d in dns {
            sans.push(SanType::DnsName(d.as_str().try_into()?));
        }
        for ip in ips {
            sans.push(SanType::IpAddress(*ip));
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        apply_validity(&mut params, validity);
        self.sign(params)
    }

    /// A server certificate for the key of a CSR (enrolment and rotation). The CSR's own
    /// signature is checked; the names are the ones the caller verified, never what the
    /// CSR asked for; the serial is random. Returns the certificate PEM.
    pub fn agent_for_csr(&self, csr_der: &[u8], names: &[String], validity: Validity) -> Result<String, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.into())?;
        let cn = names.first().cloned().unwrap_or_default();
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = dn(&cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()?));
        apply_validity(&mut params, Some(validity));
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }

    /// The CA's certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.pem.cert
    }

    /// Signs `message` with the CA key (ECDSA P-256 with SHA-256, ASN.1 DER), for join tokens.
    pub fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        Ok(rcgen::SigningKey::sign(self.issuer.key(), message)?)
    }

    fn sign(&self, params: CertificateParams) -> Result<Pem, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
    }
}

/// 16 random bytes with the top bit clear (a positive serial of at most 128 bits).
fn random_serial() -> Result<[u8; 16], PkiError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| PkiError::BadFile { path: PathBuf::from("/dev/urandom"), reason: "no randomness available".into() })?;
    b[0] &= 0x7f;
    b[0] |= 0x01;
    Ok(b)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "ops fleet");
    dn
}

fn apply_validity(params: &mut CertificateParams, validity: Option<Validity>) {
    let v = validity.unwrap_or_else(default_validity);
    params.not_before = v.not_before;
    params.not_after = v.not_after;
}

/// How long operator and viewer certificates last unless `--days` says otherwise: a
/// person's access should lapse on its own if nobody renews it.
pub const CLIENT_DAYS: u32 = 90;
/// How long the CA and agent certificates last unless `--days` says otherwise.
pub const AGENT_DAYS: u32 = 825;

/// One hour ago (clock skew) to `days` days from now.
pub fn validity_days(days: u32) -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity { not_before: now - time::Duration::hours(1), not_after: now + time::Duration::days(i64::from(days)) }
}

/// One hour ago to `AGENT_DAYS` from now.
pub fn default_validity() -> Validity {
    validity_days(AGENT_DAYS)
}

fn check_days(days: u32) -> Result<Validity, PkiError> {
    if !(1..=3650).contains(&days) {
        return Err(PkiError::BadDays(days));
    }
    Ok(validity_days(days))
}

fn check_name(name: &str) -> Result<(), PkiError> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || name.starts_with('.') {
        return Err(PkiError::BadName(name.to_string()));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read { path: path.to_path_buf(), source })
}

/// Writes a file, refusing to replace an existing one unless `force`; keys get 0600.
pub fn write_file(path: &Path, contents: &str, secret: bool, force: bool) -> Result<(), PkiError> {
    if path.exists() && !force {
        return Err(PkiError::Exists { path: path.to_path_buf() });
    }
    let wrap = |source| PkiError::Write { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(wrap)?;
    }
    let mode = if secret { 0o600 } else { 0o644 };
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(wrap)?;
    // A pre-existing file keeps its old mode on open: set it explicitly.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(wrap)?;
    f.write_all(contents.as_bytes()).map_err(wrap)?;
    f.sync_all().map_err(wrap)
}

/// Files written by `pki init` (it also starts the record of issued certificates).
pub const INIT_FILES: [&str; 7] = ["ca.pem", "ca.key", "controller.pem", "controller.key", "viewer.pem", "viewer.key", CRL_FILE];

/// `controller pki init`: a CA, an operator and a viewer client certificate valid for
/// `client_days`, and an empty CRL (so agents can name it from the start).
pub fn init(dir: &Path, force: bool, client_days: u32) -> Result<Vec<PathBuf>, PkiError> {
    let client_validity = check_days(client_days)?;
    if !force {
        for f in INIT_FILES {
            let p = dir.join(f);
            if p.exists() {
                return Err(PkiError::Exists { path: p });
            }
        }
    }
    let ca = Ca::generate("ops fleet CA", None)?;
    let operator = ca.client("controller", Role::Operator, Some(client_validity))?;
    let viewer = ca.client("viewer", Role::Viewer, Some(client_validity))?;
    let mut written = Vec::new();
    for (name, pem) in [("ca", &ca.pem), ("controller", &operator), ("viewer", &viewer)] {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write_file(&cert, &pem.cert, false, force)?;
        write_file(&key, &pem.key, true, force)?;
        written.extend([cert, key]);
    }
    // A new CA starts a new record: serials of the old CA mean nothing to it.
    let index = dir.join(INDEX_FILE);
    write_file(&index, "", false, true)?;
    record(dir, "controller", Role::Operator.as_str(), &operator.cert)?;
    record(dir, "viewer", Role::Viewer.as_str(), &viewer.cert)?;
    written.push(index);
    written.push(write_crl(dir, &ca, &[], 1)?);
    Ok(written)
}

/// `controller pki issue-client`: DIR/clients/NAME.pem and NAME.key for an operator or
/// a viewer, valid for `days`.
pub fn issue_client(dir: &Path, name: &str, role: Role, days: u32, force: bool) -> Result<Vec<PathBuf>, PkiError> {
    check_name(name)?;
    let validity = check_days(days)?;
    let ca = Ca::load(dir)?;
    let pem = ca.client(name, role, Some(validity))?;
    let cert = dir.join("clients").join(format!("{name}.pem"));
    let key = dir.join("clients").join(format!("{name}.key"));
    write_file(&cert, &pem.cert, false, force)?;
    write_file(&key, &pem.key, true, force)?;
    record(dir, name, role.as_str(), &pem.cert)?;
    Ok(vec![cert, key])
}

/// `controller pki issue-agent`: DIR/agents/NAME.pem and NAME.key signed by DIR's CA.
pub fn issue_agent(dir: &Path, name: &str, ips: &[IpAddr], dns: &[String], days: u32, force: bool) -> Result<Vec<PathBuf>, PkiError> {
    check_name(name)?;
    let validity = check_days(days)?;
    let ca = Ca::load(dir)?;
    let mut dns = dns.to_vec();
    if dns.is_empty() && ips.is_empty() {
        dns.push(name.to_string());
    }
    let pem = ca.agent(name, ips, &dns, Some(validity))?;
    let cert = dir.join("agents").join(format!("{name}.pem"));
    let key = dir.join("agents").join(format!("{name}.key"));
    write_file(&cert, &pem.cert, false, force)?;
    write_file(&key, &pem.key, true, force)?;
    record(dir, name, "agent", &pem.cert)?;
    Ok(vec![cert, key])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_keys_0600_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(dir.path(), false, CLIENT_DAYS).unwrap();
        assert_eq!(files.len(), 8);
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = init(dir.path(), false, CLIENT_DAYS).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        init(dir.path(), true, CLIENT_DAYS).unwrap();
    }

    #[test]
    fn operator_certificate_carries_its_role() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false, CLIENT_DAYS).unwrap();
        for (file, role) in [("controller.pem", Role::Operator), ("viewer.pem", Role::Viewer)] {
            let der = ops_proto::tls::load_certs(&dir.path().join(file), "certificate").unwrap();
            let id = ops_proto::identity::PeerIdentity::from_der(der[0].as_ref()).unwrap();
            assert_eq!(id.role, Some(role));
        }
        let written = issue_agent(dir.path(), "web-1", &["127.0.0.1".parse().unwrap()], &["localhost".into()], AGENT_DAYS, false).unwrap();
        assert!(written[0].ends_with("agents/web-1.pem"));
    }

    fn days_left(dir: &Path, name: &str) -> i64 {
        let entry = issued(dir).unwrap().into_iter().rfind(|e| e.name == name).unwrap();
        let end = chrono::DateTime::parse_from_rfc3339(&entry.not_after).unwrap();
        (end.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_days()
    }

    #[test]
    fn operator_and_viewer_certificates_last_90_days_unless_told_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false, CLIENT_DAYS).unwrap();
        assert!((89..=90).contains(&days_left(dir.path(), "controller")), "{}", days_left(dir.path(), "controller"));
        assert!((89..=90).contains(&days_left(dir.path(), "viewer")));
        issue_client(dir.path(), "oncall", Role::Operator, 7, false).unwrap();
        assert!((6..=7).contains(&days_left(dir.path(), "oncall")));
        let key_mode = std::fs::metadata(dir.path().join("clients/oncall.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(key_mode, 0o600);
        assert!(matches!(issue_client(dir.path(), "x", Role::Viewer, 0, false), Err(PkiError::BadDays(0))));
        assert!(matches!(issue_client(dir.path(), "../x", Role::Viewer, 9, false), Err(PkiError::BadName(_))));
    }

    #[test]
    fn a_ca_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false, CLIENT_DAYS).unwrap();
        std::fs::set_permissions(dir.path().join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = issue_client(dir.path(), "oncall", Role::Operator, 7, false).unwrap_err().to_string();
        assert!(err.contains("Permissions 0644") && err.contains("ca.key") && err.contains("too open"), "{err}");
    }
}
