//! Development and test PKI: a fleet CA, operator and viewer client certificates (the
//! role travels inside the certificate as a URI SAN), and agent server certificates.
//!
//! Keys are written with mode 0600 and existing files are never overwritten unless the
//! caller says so. This is for development and tests; production CAs live elsewhere.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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
    #[error("invalid agent name {0:?}: use letters, digits, '-', '_' and '.'")]
    BadName(String),
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

    /// Loads a CA written by `pki init`.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert = read(&dir.join("ca.pem"))?;
        let key_pem = read(&dir.join("ca.key"))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key)?;
        Ok(Ca { pem: Pem { cert, key: key_pem }, issuer })
    }

    /// A client certificate for an operator or viewer.
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
        apply_validity(&mut params, validity);
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

    fn sign(&self, params: CertificateParams) -> Result<Pem, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
    }
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

/// One hour ago to 825 days from now.
pub fn default_validity() -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity { not_before: now - time::Duration::hours(1), not_after: now + time::Duration::days(825) }
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

/// Files written by `pki init`.
pub const INIT_FILES: [&str; 6] = ["ca.pem", "ca.key", "controller.pem", "controller.key", "viewer.pem", "viewer.key"];

/// `controller pki init`: a CA plus an operator and a viewer client certificate.
pub fn init(dir: &Path, force: bool) -> Result<Vec<PathBuf>, PkiError> {
    if !force {
        for f in INIT_FILES {
            let p = dir.join(f);
            if p.exists() {
                return Err(PkiError::Exists { path: p });
            }
        }
    }
    let ca = Ca::generate("ops fleet CA", None)?;
    let operator = ca.client("controller", Role::Operator, None)?;
    let viewer = ca.client("viewer", Role::Viewer, None)?;
    let mut written = Vec::new();
    for (name, pem) in [("ca", &ca.pem), ("controller", &operator), ("viewer", &viewer)] {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write_file(&cert, &pem.cert, false, force)?;
        write_file(&key, &pem.key, true, force)?;
        written.extend([cert, key]);
    }
    Ok(written)
}

/// `controller pki issue-agent`: DIR/agents/NAME.pem and NAME.key signed by DIR's CA.
pub fn issue_agent(dir: &Path, name: &str, ips: &[IpAddr], dns: &[String], force: bool) -> Result<Vec<PathBuf>, PkiError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(PkiError::BadName(name.to_string()));
    }
    let ca = Ca::load(dir)?;
    let mut dns = dns.to_vec();
    if dns.is_empty() && ips.is_empty() {
        dns.push(name.to_string());
    }
    let pem = ca.agent(name, ips, &dns, None)?;
    let cert = dir.join("agents").join(format!("{name}.pem"));
    let key = dir.join("agents").join(format!("{name}.key"));
    write_file(&cert, &pem.cert, false, force)?;
    write_file(&key, &pem.key, true, force)?;
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
        let files = init(dir.path(), false).unwrap();
        assert_eq!(files.len(), 6);
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = init(dir.path(), false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        init(dir.path(), true).unwrap();
    }

    #[test]
    fn operator_certificate_carries_its_role() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        for (file, role) in [("controller.pem", Role::Operator), ("viewer.pem", Role::Viewer)] {
            let der = ops_proto::tls::load_certs(&dir.path().join(file), "certificate").unwrap();
            let id = ops_proto::identity::PeerIdentity::from_der(der[0].as_ref()).unwrap();
            assert_eq!(id.role, Some(role));
        }
        let written = issue_agent(dir.path(), "web-1", &["127.0.0.1".parse().unwrap()], &["localhost".into()], false).unwrap();
        assert!(written[0].ends_with("agents/web-1.pem"));
    }
}
