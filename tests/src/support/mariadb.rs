//! A throwaway MariaDB server for tests: its own data directory, socket and loopback
//! port, initialised with `mariadb-install-db` and stopped when dropped, optionally
//! serving TLS with a certificate from the test PKI (and then optionally refusing any
//! client not on TLS). Nothing is shared with the machine's own server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::{Files, TestPki};

/// A running private MariaDB server.
pub struct MariaDb {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

fn find(names: &[&str]) -> Option<PathBuf> {
    for n in names {
        for d in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
            let p = PathBuf::from(d).join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The certificate a TLS server presents, and the CA it names as its own (`--ssl-ca`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: Files,
}

/// How to start the server; the default is plaintext only, as [`MariaDb::start`] does.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve TLS with this certificate (`--ssl-cert`, `--ssl-key`, `--ssl-ca`).
    pub tls: Option<ServerTls>,
    /// `--require-secure-transport`: refuse every TCP client that is not on TLS (the Unix
    /// socket still counts as secure, so [`MariaDb::socket_url`] keeps working).
    pub require_secure_transport: bool,
    /// More server options (`--innodb-autoinc-lock-mode=2`, say), given after the
    /// launcher's own so that they win.
    pub extra: Vec<String>,
}

impl Options {
    /// TLS with a server certificate from `pki`'s CA naming `127.0.0.1` and `localhost`,
    /// what a client on this machine connects to.
    pub fn tls(pki: &TestPki) -> Options {
        let cert = pki.server_cert("mariadb", &[std::net::Ipv4Addr::LOCALHOST.into()], &["localhost"]);
        Options { tls: Some(ServerTls { ca: pki.ca_file.clone(), cert }), ..Options::default() }
    }

    /// Refuses plaintext TCP clients.
    pub fn require_secure_transport(mut self) -> Options {
        self.require_secure_transport = true;
        self
    }
}

impl MariaDb {
    /// Initialises a data directory and starts a plaintext server on a free loopback port.
    /// Root may log in over TCP without a password (it is a throwaway on loopback).
    pub fn start() -> MariaDb {
        MariaDb::start_with(&Options::default())
    }

    /// [`start`](Self::start), also serving TLS with a certificate from `pki` for
    /// `127.0.0.1` and `localhost` ([`Options::tls`]); plaintext clients are still let in.
    pub fn start_tls(pki: &TestPki) -> MariaDb {
        MariaDb::start_with(&Options::tls(pki))
    }

    /// Initialises a data directory and starts a server as `options` say.
    pub fn start_with(options: &Options) -> MariaDb {
        let install = find(&["mariadb-install-db", "mysql_install_db"]).expect("mariadb-install-db not found: run scripts/setup");
        let server = find(&["mariadbd", "mysqld"]).expect("mariadbd not found: run scripts/setup");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        // A private tmpdir: with the default /tmp, the bootstrap's temporary tables sit in a
        // folder that other tests (cleanup jobs, tempdir removal) may empty under it, and
        // `mariadb-install-db` then aborts with "Could not remove temporary table".
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mariadb tmpdir");
        let out = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--user=root")
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb-install-db");
        assert!(out.status.success(), "mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = super::free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let mut tls_args = Vec::new();
        if let Some(tls) = &options.tls {
            tls_args.push(format!("--ssl-ca={}", tls.ca.display()));
            tls_args.push(format!("--ssl-cert={}", tls.cert.cert.display()));
            tls_args.push(format!("--ssl-key={}", tls.cert.key.display()));
        }
        if options.require_secure_transport {
            tls_args.push("--require-secure-transport=ON".into());
        }
        let child = Command::new(&server)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", dir.path().join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("mysqld.pid").display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--user=root")
            .arg("--innodb-buffer-pool-size=16M")
            .arg("--skip-log-bin")
            .args(&tls_args)
            .args(&options.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start mariadbd");
        let mut db = MariaDb { child, port, dir };
        db.wait_ready(Duration::from_secs(60));
        db
    }

    fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mariadbd exited early ({status}): {}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("mariadbd did not listen on port {} within {limit:?}: {}", self.port, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A connection URL for root on this server, over TCP (plaintext).
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// A connection URL for root over the server's Unix socket, which a server requiring
    /// secure transport still lets in: for setting up users and data.
    pub fn socket_url(&self, database: &str) -> String {
        format!("mysql://root@localhost/{database}?socket={}", self.dir.path().join("mysqld.sock").display())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TechHealth application's tables as the maintenance runbook knows them: `users`,
/// `sessions` and `audit_log`, each with an auto-increment key and `created_at`.
pub const TECHHEALTH_SCHEMA: &[&str] = &[
    "CREATE TABLE users (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, email VARCHAR(190) NOT NULL, \
     created_at DATETIME NOT NULL, UNIQUE KEY (email)) ENGINE=InnoDB",
    "CREATE TABLE sessions (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, user_id BIGINT UNSIGNED NOT NULL, \
     token CHAR(32) NOT NULL, created_at DATETIME NOT NULL, KEY (created_at)) ENGINE=InnoDB",
    "CREATE TABLE audit_log (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, user_id BIGINT UNSIGNED NOT NULL, \
     action VARCHAR(64) NOT NULL, detail VARCHAR(255) NOT NULL, created_at DATETIME NOT NULL, KEY (created_at)) ENGINE=InnoDB",
];

/// Creates database `db` with the TechHealth tables and fills them: `users` users,
/// `sessions` sessions and `audit` audit rows, spread evenly over the last `days` days
/// (oldest first, so keys grow with time as in a real application). Uses MariaDB's
/// sequence engine, so a million rows take seconds.
pub async fn seed_techhealth(
    conn: &mut mysql_async::Conn,
    db: &str,
    users: u64,
    sessions: u64,
    audit: u64,
    days: u64,
) -> Result<(), mysql_async::Error> {
    use mysql_async::prelude::*;
    conn.query_drop(format!("CREATE DATABASE `{db}`")).await?;
    conn.query_drop(format!("USE `{db}`")).await?;
    conn.query_drop("SET time_zone = '+00:00'").await?;
    for stmt in TECHHEALTH_SCHEMA {
        conn.query_drop(*stmt).await?;
    }
    let span = days * 86_400;
    conn.query_drop(format!(
        "INSERT INTO users (email, created_at) SELECT CONCAT('user', seq, '@example.test'), \
         UTC_TIMESTAMP() - INTERVAL {span} SECOND + INTERVAL (seq * {span} DIV {users}) SECOND FROM seq_1_to_{users}"
    ))
    .await?;
    if sessions > 0 {
        conn.query_drop(format!(
            "INSERT INTO sessions (user_id, token, created_at) SELECT 1 + seq % {users}, MD5(seq), \
             UTC_TIMESTAMP() - INTERVAL {span} SECOND + INTERVAL (seq * {span} DIV {sessions}) SECOND FROM seq_1_to_{sessions}"
        ))
        .await?;
    }
    // In chunks: one huge INSERT ... SELECT would hold its locks for the whole fill.
    let chunk = 100_000u64;
    let mut from = 1u64;
    while from <= audit {
        let to = (from + chunk - 1).min(audit);
        conn.query_drop(format!(
            "INSERT INTO audit_log (user_id, action, detail, created_at) SELECT 1 + seq % {users}, \
             ELT(1 + seq % 4, 'login', 'view_record', 'update_record', 'logout'), CONCAT('record ', seq), \
             UTC_TIMESTAMP() - INTERVAL {span} SECOND + INTERVAL (seq * {span} DIV {audit}) SECOND FROM seq_{from}_to_{to}"
        ))
        .await?;
        from = to + 1;
    }
    Ok(())
}
