//! The RDS MySQL database of the maintenance and recovery runbooks: credentials from
//! Secrets Manager, a TLS connection verified against the configured CA bundle (RDS's),
//! and the database work itself in submodules.
//!
//! It must never put the password on a command line, in a log, in an error or in a
//! report, and never connect in plaintext to anything but a loopback address.

pub mod archive;
pub mod ident;
pub mod upkeep;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use mysql_async::{Opts, OptsBuilder, SslOpts};
use serde::Deserialize;

/// The credentials in the database secret (the RDS-managed JSON shape).
#[derive(Clone, Deserialize)]
pub struct Credentials {
    pub username: String,
    password: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub dbname: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .finish()
    }
}

/// Database access failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database secret {secret}: not the expected JSON (username, password, and optionally host, port, dbname): {reason}")]
    BadSecret { secret: String, reason: String },
    #[error("database endpoint unknown: the secret has no host and RDS reported none for the instance")]
    NoEndpoint,
    #[error("database {host}: refusing a plaintext connection to a non-loopback host; set [maintenance.database] ca_bundle to the RDS CA bundle")]
    PlaintextRefused { host: String },
    #[error("database CA bundle {path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
    #[error("database {host}:{port}: {source}")]
    Connect { host: String, port: u16, source: mysql_async::Error },
    #[error("database {host}:{port}: its TLS certificate was refused ({reason}); it must chain to the CA bundle {bundle} ([maintenance.database] ca_bundle) and name {host}")]
    Certificate { host: String, port: u16, bundle: PathBuf, reason: String },
    #[error("database {what}: {source}")]
    Query { what: String, source: mysql_async::Error },
    #[error("{0}")]
    Ident(#[from] ident::IdentError),
    #[error("{0}")]
    Invalid(String),
}

impl DbError {
    pub fn query(what: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> DbError {
        let what = what.into();
        move |source| DbError::Query { what, source }
    }
}

impl Credentials {
    /// Parses the secret's string; the error never repeats the secret's text.
    pub fn from_secret(secret_id: &str, text: &str) -> Result<Credentials, DbError> {
        serde_json::from_str(text).map_err(|e| DbError::BadSecret {
            secret: secret_id.to_string(),
            // serde's message names the field and position, not the value.
            reason: format!("{} at line {} column {}", classify_json_error(&e), e.line(), e.column()),
        })
    }
}

fn classify_json_error(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not JSON",
        Category::Data => "a field is missing or has the wrong type",
        Category::Eof => "cut short",
    }
}

/// Where and how to connect, once the endpoint is known.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub database: String,
    /// PEM bundle to verify the server certificate; `None` means plaintext (loopback only).
    pub ca_bundle: Option<PathBuf>,
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

/// Builds the connection options: TLS verified against the bundle (with the host name),
/// or plaintext only to a loopback address.
pub fn options(endpoint: &Endpoint, creds: &Credentials) -> Result<Opts, DbError> {
    let mut b = OptsBuilder::default()
        .ip_or_hostname(endpoint.host.clone())
        .tcp_port(endpoint.port)
        .user(Some(creds.username.clone()))
        .pass(Some(creds.password.clone()))
        .db_name(Some(endpoint.database.clone()))
        .prefer_socket(false)
        .wait_timeout(Some(28_800));
    match &endpoint.ca_bundle {
        Some(path) => {
            check_bundle(path)?;
            install_tls_provider();
            let ssl = SslOpts::default().with_root_certs(vec![path.clone().into()]);
            b = b.ssl_opts(Some(ssl));
        }
        None if is_loopback(&endpoint.host) => {}
        None => return Err(DbError::PlaintextRefused { host: endpoint.host.clone() }),
    }
    Ok(b.into())
}

/// mysql_async builds its rustls client config with the process-wide default crypto
/// provider, and rustls cannot pick one by itself when both `ring` (ours) and `aws-lc-rs`
/// (the AWS SDK's) are compiled in: without a default, the first TLS connection panics.
/// Installs ring, as the rest of the controller uses; a default already chosen is kept.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn check_bundle(path: &Path) -> Result<(), DbError> {
    let text = std::fs::read(path).map_err(|e| DbError::CaBundle { path: path.to_path_buf(), reason: e.to_string() })?;
    if !text.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(DbError::CaBundle { path: path.to_path_buf(), reason: "no PEM certificate in it".into() });
    }
    Ok(())
}

/// Opens one connection (maintenance works on a single session so that its own
/// statements are easy to tell apart in the processlist).
pub async fn connect(endpoint: &Endpoint, creds: &Credentials) -> Result<mysql_async::Conn, DbError> {
    use mysql_async::prelude::Queryable;
    let opts = options(endpoint, creds)?;
    let mut conn = mysql_async::Conn::new(opts).await.map_err(|source| {
        let text = source.to_string();
        match (&endpoint.ca_bundle, text.find("invalid peer certificate")) {
            // The server's certificate, not the network: say which file it must chain to.
            (Some(bundle), Some(at)) => DbError::Certificate {
                host: endpoint.host.clone(),
                port: endpoint.port,
                bundle: bundle.clone(),
                reason: text[at..].to_string(),
            },
            _ => DbError::Connect { host: endpoint.host.clone(), port: endpoint.port, source },
        }
    })?;
    // Cutoffs are UTC; TIMESTAMP columns compare in the session's zone.
    conn.query_drop("SET time_zone = '+00:00'").await.map_err(DbError::query("set the session time zone to UTC"))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_errors_never_repeat_the_password() {
        let err = Credentials::from_secret("TechHealth-DB-Credentials", r#"{"username":"admin","password":"hunter2""#)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("TechHealth-DB-Credentials"));
        let c = Credentials::from_secret("s", r#"{"username":"admin","password":"hunter2","port":3306}"#).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.port, Some(3306));
    }

    #[test]
    fn plaintext_is_only_for_loopback() {
        let c = Credentials::from_secret("s", r#"{"username":"u","password":"p"}"#).unwrap();
        let ep = |host: &str| Endpoint { host: host.into(), port: 3306, database: "app".into(), ca_bundle: None };
        assert!(options(&ep("127.0.0.1"), &c).is_ok());
        assert!(options(&ep("localhost"), &c).is_ok());
        let err = options(&ep("techhealth-database.abc.us-east-1.rds.amazonaws.com"), &c).unwrap_err();
        assert!(matches!(err, DbError::PlaintextRefused { .. }), "{err}");
    }

    #[test]
    fn a_ca_bundle_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rds.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        let c = Credentials::from_secret("s", r#"{"username":"u","password":"p"}"#).unwrap();
        let ep = Endpoint { host: "db.example".into(), port: 3306, database: "app".into(), ca_bundle: Some(p) };
        assert!(matches!(options(&ep, &c), Err(DbError::CaBundle { .. })));
    }
}
