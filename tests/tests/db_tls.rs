//! The controller's database access path (`controller::db::connect`) against a real
//! MariaDB serving TLS with a certificate from the test PKI: with the right CA bundle the
//! session is encrypted; a bundle of another CA, or a server certificate for another
//! name, is refused with a clear error and no plaintext fallback; a server that requires
//! secure transport refuses a plaintext client.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::time::Duration;

use controller::db::{self, Credentials, DbError, Endpoint};
use e2e::support::certs::TestPki;
use e2e::support::mariadb::{MariaDb, Options, ServerTls};
use mysql_async::prelude::*;

const T: Duration = Duration::from_secs(120);
const USER: &str = "app";
const PASSWORD: &str = "not-a-real-password-3Jd";

/// Starts a server as `options` say, with database `app` and user `app` (any host, by
/// password), set up over the Unix socket so that it works when TCP requires TLS.
async fn server(options: Options) -> MariaDb {
    let db = tokio::task::spawn_blocking(move || MariaDb::start_with(&options)).await.unwrap();
    let mut c = mysql_async::Conn::from_url(db.socket_url("mysql").as_str()).await.unwrap();
    c.query_drop("CREATE DATABASE app").await.unwrap();
    c.query_drop(format!("CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")).await.unwrap();
    c.query_drop(format!("GRANT ALL ON app.* TO '{USER}'@'%'")).await.unwrap();
    c.disconnect().await.unwrap();
    db
}

fn creds() -> Credentials {
    Credentials::from_secret("test", &serde_json::json!({"username": USER, "password": PASSWORD}).to_string()).unwrap()
}

fn endpoint(db: &MariaDb, host: &str, ca_bundle: Option<PathBuf>) -> Endpoint {
    Endpoint { host: host.into(), port: db.port, database: "app".into(), ca_bundle }
}

/// The session's status variable `name` (`Ssl_cipher`, `Ssl_version`).
async fn status(conn: &mut mysql_async::Conn, name: &str) -> String {
    let row: Option<(String, String)> = conn.query_first(format!("SHOW SESSION STATUS LIKE '{name}'")).await.unwrap();
    row.unwrap().1
}

#[tokio::test]
async fn the_controller_connects_over_tls_with_the_right_ca_bundle_and_the_session_is_encrypted() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let db = server(Options::tls(&pki)).await;
        // The certificate names both: an IP address SAN and a DNS name SAN are each verified.
        for host in ["127.0.0.1", "localhost"] {
            let mut conn = db::connect(&endpoint(&db, host, Some(pki.ca_file.clone())), &creds())
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}\n{}", db.log()));
            let cipher = status(&mut conn, "Ssl_cipher").await;
            assert!(!cipher.is_empty(), "{host}: the session is not encrypted");
            let version = status(&mut conn, "Ssl_version").await;
            assert!(version.starts_with("TLSv1."), "{host}: {version}");
            let user: String = conn.query_first("SELECT CURRENT_USER()").await.unwrap().unwrap();
            assert!(user.starts_with("app@"), "{user}");
            conn.disconnect().await.unwrap();
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_ca_bundle_of_another_ca_is_refused_without_falling_back_to_plaintext() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        // The server lets plaintext clients in: had the client fallen back to plaintext after
        // the failed verification, it would have been let in.
        let db = server(Options::tls(&pki)).await;
        let (other_ca, _) = pki.foreign_client();
        let other_ca_text = other_ca.display().to_string();
        let err = db::connect(&endpoint(&db, "127.0.0.1", Some(other_ca)), &creds()).await.unwrap_err();
        assert!(matches!(err, DbError::Certificate { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{}", db.port)), "names the server: {msg}");
        assert!(msg.contains("UnknownIssuer"), "says why: {msg}");
        assert!(msg.contains("ca_bundle") && msg.contains(&other_ca_text), "names the bundle to fix: {msg}");
        assert!(!msg.contains(PASSWORD), "{msg}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_server_certificate_for_another_name_is_refused() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        // Signed by the right CA, but for db-1.internal only: not for 127.0.0.1.
        let cert = pki.server_cert("db-1", &[], &["db-1.internal"]);
        let db = server(Options { tls: Some(ServerTls { ca: pki.ca_file.clone(), cert }), ..Options::default() }).await;
        let err = db::connect(&endpoint(&db, "127.0.0.1", Some(pki.ca_file.clone())), &creds()).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DbError::Certificate { .. }), "{msg}");
        assert!(msg.contains("not valid for name \"127.0.0.1\""), "says why: {msg}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_server_requiring_secure_transport_refuses_a_plaintext_client() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let db = server(Options::tls(&pki).require_secure_transport()).await;
        // Loopback without a CA bundle: the controller allows plaintext, the server does not.
        let err = db::connect(&endpoint(&db, "127.0.0.1", None), &creds()).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DbError::Connect { .. }), "{msg}");
        // MariaDB refuses an insecure transport as "Access denied" (1045); MySQL, RDS's
        // engine, says "Connections using insecure transport are prohibited" (3159).
        assert!(msg.contains("Access denied") || msg.contains("insecure transport"), "the server's refusal: {msg}");
        // The same client with the same password on TLS is let in: the refusal was about
        // the transport alone.
        let mut conn = db::connect(&endpoint(&db, "127.0.0.1", Some(pki.ca_file.clone())), &creds()).await.unwrap();
        assert!(!status(&mut conn, "Ssl_cipher").await.is_empty());
        conn.disconnect().await.unwrap();
    })
    .await
    .expect("test timed out");
}
