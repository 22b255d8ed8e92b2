//! A throwaway MariaDB server for tests: its own data directory, socket and loopback
//! port, initialised with `mariadb-install-db` and stopped when dropped. Nothing is
//! shared with the machine's own server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

impl MariaDb {
    /// Initialises a data directory and starts a server on a free loopback port.
    /// Root may log in over TCP without a password (it is a throwaway on loopback).
    pub fn start() -> MariaDb {
        let install = find(&["mariadb-install-db", "mysql_install_db"]).expect("mariadb-install-db not found: run scripts/setup");
        let server = find(&["mariadbd", "mysqld"]).expect("mariadbd not found: run scripts/setup");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let out = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--user=root")
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb-install-db");
        assert!(out.status.success(), "mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = super::free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let child = Command::new(&server)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("mysqld.pid").display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--user=root")
            .arg("--innodb-buffer-pool-size=16M")
            .arg("--skip-log-bin")
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

    /// A connection URL for root on this server.
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
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
