//! The record of issued certificates (`issued.jsonl`: name, role, serial, expiry) and the
//! CA's revocation list (`crl.pem`) that `pki revoke` extends.
//!
//! The CRL is the only record of what was revoked: it is read back, extended, signed
//! again with the next CRL number and replaced whole by a rename, so an agent reloading it
//! sees either the old list or the new one, and no revocation is ever dropped.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::{Ca, PkiError};

/// The CA's revocation list, next to `ca.pem`.
pub const CRL_FILE: &str = "crl.pem";
/// One JSON object per issued certificate, appended by `pki init` and `pki issue-*`.
pub const INDEX_FILE: &str = "issued.jsonl";
/// How far ahead a CRL's nextUpdate is set. Agents do not refuse a CRL past it (they
/// keep the last one they loaded); it is there because the format requires one.
const CRL_DAYS: i64 = 365;

/// One line of `issued.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub name: String,
    /// "operator", "viewer" or "agent".
    pub kind: String,
    /// Lowercase hex with colons, as the agent's audit log and `openssl x509 -serial` show it.
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
}

/// What `revoke` looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    Serial(String),
    /// Every certificate issued under this name (a re-issued name has several).
    Name(String),
}

/// What `revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Serials added to the CRL by this call.
    pub added: Vec<String>,
    /// Serials asked for that the CRL already listed.
    pub already: Vec<String>,
    /// Every serial the CRL now lists.
    pub total: usize,
    pub crl: PathBuf,
}

/// Appends a certificate to the record of issued certificates.
pub(crate) fn record(dir: &Path, name: &str, kind: &str, cert_pem: &str) -> Result<(), PkiError> {
    let path = dir.join(INDEX_FILE);
    let (serial, not_after) = serial_of_pem(&path, cert_pem)?;
    let line = serde_json::to_string(&Issued { name: name.into(), kind: kind.into(), serial, not_after })
        .map_err(|e| PkiError::BadFile { path: path.clone(), reason: e.to_string() })?;
    let wrap = |source| PkiError::Write { path: path.clone(), source };
    let mut f = std::fs::OpenOptions::new().append(true).create(true).mode(0o644).open(&path).map_err(wrap)?;
    writeln!(f, "{line}").map_err(wrap)?;
    f.sync_all().map_err(wrap)
}

/// Everything `issued.jsonl` records (nothing when it does not exist yet).
pub fn issued(dir: &Path) -> Result<Vec<Issued>, PkiError> {
    let path = dir.join(INDEX_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(PkiError::Read { path, source }),
    };
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| PkiError::Read { path: path.clone(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str(&line)
            .map_err(|e| PkiError::BadFile { path: path.clone(), reason: format!("line {}: {e}", n + 1) })?;
        out.push(entry);
    }
    Ok(out)
}

/// A certificate's serial (colon hex, as the agents' audit logs and `fleet ping` show it).
pub fn serial_of(cert_pem: &str) -> Result<String, PkiError> {
    serial_of_pem(Path::new("(certificate)"), cert_pem).map(|(s, _)| s)
}

/// A certificate's serial (colon hex) and notAfter (RFC 3339).
fn serial_of_pem(path: &Path, cert_pem: &str) -> Result<(String, String), PkiError> {
    let bad = |reason: String| PkiError::BadFile { path: path.to_path_buf(), reason };
    let der = rustls_pemfile_cert(cert_pem).ok_or_else(|| bad("holds no PEM CERTIFICATE".into()))?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad(format!("certificate does not parse: {e}")))?;
    let end = cert.validity().not_after;
    let not_after = chrono::DateTime::from_timestamp(end.timestamp(), 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| end.to_string());
    Ok((cert.raw_serial_as_string(), not_after))
}

fn rustls_pemfile_cert(pem: &str) -> Option<Vec<u8>> {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (der.label == "CERTIFICATE").then_some(der.contents)
}

/// "0A:1b:..." or "0a1b..." to the serial's bytes.
pub fn parse_serial(s: &str) -> Result<Vec<u8>, PkiError> {
    let hex: String = s.trim().chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    let hex = hex.strip_prefix("0x").unwrap_or(&hex).to_string();
    if hex.is_empty() || hex.len() > 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(PkiError::BadSerial(s.to_string()));
    }
    let hex = if hex.len() % 2 == 1 { format!("0{hex}") } else { hex };
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| PkiError::BadSerial(s.to_string())))
        .collect()
}

/// The serial in canonical form: the bytes of a positive DER INTEGER, as a CRL holds them.
fn canonical(bytes: &[u8]) -> Vec<u8> {
    let mut b: &[u8] = bytes;
    while b.len() > 1 && b[0] == 0 {
        b = &b[1..];
    }
    let mut out = Vec::with_capacity(b.len() + 1);
    if b.first().is_some_and(|x| x & 0x80 != 0) {
        out.push(0);
    }
    out.extend_from_slice(b);
    out
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// One entry already on the CRL.
struct Entry {
    serial: Vec<u8>,
    at: time::OffsetDateTime,
}

/// The entries and number of an existing CRL, after checking it is this CA's.
fn read_crl(path: &Path, ca: &Ca) -> Result<(Vec<Entry>, u64), PkiError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(source) => return Err(PkiError::Read { path: path.to_path_buf(), source }),
    };
    let bad = |reason: String| PkiError::BadFile { path: path.to_path_buf(), reason };
    let now = time::OffsetDateTime::now_utc();
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes()).map_err(|e| bad(format!("not a PEM CRL: {e}")))?;
    if pem.label != "X509 CRL" {
        return Err(bad(format!("holds a {} where an X509 CRL was expected", pem.label)));
    }
    let (_, crl) = CertificateRevocationList::from_der(&pem.contents).map_err(|e| bad(format!("CRL does not parse: {e}")))?;
    let ca_der = rustls_pemfile_cert(&ca.pem.cert).ok_or_else(|| bad("the CA certificate does not parse".into()))?;
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).map_err(|e| bad(format!("the CA certificate does not parse: {e}")))?;
    crl.verify_signature(ca_cert.public_key())
        .map_err(|e| bad(format!("not signed by this CA ({e}); move it aside to start a new list")))?;
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| Entry {
            serial: canonical(r.raw_serial()),
            at: time::OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp()).unwrap_or(now),
        })
        .collect();
    let number = crl.crl_number().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    Ok((entries, number))
}

/// Signs a CRL listing `entries` and replaces `dir/crl.pem` with it atomically.
fn write_entries(dir: &Path, ca: &Ca, entries: &[Entry], number: u64) -> Result<PathBuf, PkiError> {
    let now = time::OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(CRL_DAYS),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: entries
            .iter()
            .map(|e| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&e.serial),
                revocation_time: e.at,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let pem = params.signed_by(&ca.issuer)?.pem()?;
    let path = dir.join(CRL_FILE);
    replace_file(&path, &pem)?;
    Ok(path)
}

/// A CRL listing nothing (or `revoked`, already canonical), numbered `number`.
pub(super) fn write_crl(dir: &Path, ca: &Ca, revoked: &[Vec<u8>], number: u64) -> Result<PathBuf, PkiError> {
    let now = time::OffsetDateTime::now_utc();
    let entries: Vec<Entry> = revoked.iter().map(|s| Entry { serial: canonical(s), at: now }).collect();
    write_entries(dir, ca, &entries, number)
}

/// Writes beside the target, syncs, renames over it and syncs the folder: a reader sees
/// the old file or the new one, never half of one.
fn replace_file(path: &Path, contents: &str) -> Result<(), PkiError> {
    let wrap = |source| PkiError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(wrap)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(wrap)
}

/// The serials a target names: a serial itself, or every certificate issued under a name
/// (from the record, else from the certificate file the name points to).
fn serials_for(dir: &Path, target: &RevokeTarget) -> Result<Vec<Vec<u8>>, PkiError> {
    match target {
        RevokeTarget::Serial(s) => Ok(vec![canonical(&parse_serial(s)?)]),
        RevokeTarget::Name(name) => {
            super::check_name(name)?;
            let mut out: Vec<Vec<u8>> = Vec::new();
            for e in issued(dir)?.into_iter().filter(|e| &e.name == name) {
                let s = canonical(&parse_serial(&e.serial)?);
                if !out.contains(&s) {
                    out.push(s);
                }
            }
            if out.is_empty() {
                // Certificates made before the record existed: read the files.
                for file in [dir.join(format!("{name}.pem")), dir.join("clients").join(format!("{name}.pem")), dir.join("agents").join(format!("{name}.pem"))] {
                    if let Ok(pem) = std::fs::read_to_string(&file) {
                        let (serial, _) = serial_of_pem(&file, &pem)?;
                        out.push(canonical(&parse_serial(&serial)?));
                    }
                }
            }
            if out.is_empty() {
                return Err(PkiError::UnknownName { name: name.clone(), dir: dir.to_path_buf(), index: INDEX_FILE });
            }
            Ok(out)
        }
    }
}

/// `controller pki revoke`: adds the target's certificates to `dir/crl.pem`, keeping
/// every earlier entry, and signs it with the next CRL number.
pub fn revoke(dir: &Path, target: &RevokeTarget) -> Result<Revocation, PkiError> {
    let ca = Ca::load(dir)?;
    let path = dir.join(CRL_FILE);
    let (mut entries, number) = read_crl(&path, &ca)?;
    let now = time::OffsetDateTime::now_utc();
    let mut added = Vec::new();
    let mut already = Vec::new();
    for serial in serials_for(dir, target)? {
        if entries.iter().any(|e| e.serial == serial) {
            already.push(colon_hex(&serial));
        } else {
            added.push(colon_hex(&serial));
            entries.push(Entry { serial, at: now });
        }
    }
    let crl = if added.is_empty() && path.exists() { path } else { write_entries(dir, &ca, &entries, number + 1)? };
    Ok(Revocation { added, already, total: entries.len(), crl })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ops_proto::identity::Role;

    fn crl_serials(dir: &Path) -> Vec<String> {
        let crls = ops_proto::tls::load_crls(&dir.join(CRL_FILE)).unwrap();
        let cas = ops_proto::tls::load_certs(&dir.join("ca.pem"), "CA").unwrap();
        ops_proto::tls::check_crls(&dir.join(CRL_FILE), &crls, &dir.join("ca.pem"), &cas).unwrap().serials
    }

    #[test]
    fn serials_parse_with_or_without_colons_and_match_the_audit_form() {
        assert_eq!(parse_serial("0a:1B").unwrap(), vec![0x0a, 0x1b]);
        assert_eq!(parse_serial("a1b").unwrap(), vec![0x0a, 0x1b]);
        assert!(parse_serial("zz").is_err());
        assert!(parse_serial("").is_err());
        assert_eq!(canonical(&[0x00, 0x00, 0x7f]), vec![0x7f]);
        assert_eq!(canonical(&[0x80]), vec![0x00, 0x80]);
    }

    #[test]
    fn revoking_by_name_adds_to_the_crl_and_keeps_earlier_entries() {
        let dir = tempfile::tempdir().unwrap();
        super::super::init(dir.path(), false, 90).unwrap();
        assert!(crl_serials(dir.path()).is_empty(), "init writes an empty CRL");
        super::super::issue_client(dir.path(), "alice", Role::Operator, 90, false).unwrap();
        super::super::issue_client(dir.path(), "bob", Role::Operator, 90, false).unwrap();
        let alice = issued(dir.path()).unwrap().into_iter().find(|e| e.name == "alice").unwrap();
        let first = revoke(dir.path(), &RevokeTarget::Name("alice".into())).unwrap();
        assert_eq!(first.added, vec![alice.serial.clone()]);
        let bob = issued(dir.path()).unwrap().into_iter().find(|e| e.name == "bob").unwrap();
        let second = revoke(dir.path(), &RevokeTarget::Serial(bob.serial.to_uppercase())).unwrap();
        assert_eq!(second.added, vec![bob.serial.clone()]);
        assert_eq!(second.total, 2);
        let listed = crl_serials(dir.path());
        assert!(listed.contains(&alice.serial) && listed.contains(&bob.serial), "{listed:?}");
        let again = revoke(dir.path(), &RevokeTarget::Name("alice".into())).unwrap();
        assert!(again.added.is_empty() && again.already == vec![alice.serial], "{again:?}");
        let err = revoke(dir.path(), &RevokeTarget::Name("carol".into())).unwrap_err().to_string();
        assert!(err.contains("carol") && err.contains(INDEX_FILE), "{err}");
    }

    #[test]
    fn a_name_without_a_record_is_found_through_its_certificate_file() {
        let dir = tempfile::tempdir().unwrap();
        super::super::init(dir.path(), false, 90).unwrap();
        std::fs::remove_file(dir.path().join(INDEX_FILE)).unwrap();
        let r = revoke(dir.path(), &RevokeTarget::Name("viewer".into())).unwrap();
        assert_eq!(r.added.len(), 1);
        assert_eq!(crl_serials(dir.path()), r.added);
    }
}
