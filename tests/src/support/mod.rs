//! Launchers and fixtures shared by every end-to-end test. Each launcher binds
//! loopback only and cleans up after itself when dropped.

pub mod agent;
pub mod aws_seed;
pub mod certs;
pub mod controller;
pub mod imds;
pub mod maintenance;
pub mod mariadb;
pub mod proxy;
pub mod systemctl;
pub mod moto;
pub mod netns;
pub mod web;

use std::net::TcpListener;
use std::path::PathBuf;

/// A free TCP port on 127.0.0.1 (bound then released; fine for test servers that
/// cannot bind port 0 themselves).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The workspace root (the folder holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The folder cargo writes binaries to for this build (target/debug).
pub fn target_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test>-hash -> target/debug
    exe.parent().and_then(|p| p.parent()).expect("test binary lives in target/<profile>/deps").to_path_buf()
}

/// A workspace binary built by cargo (`agent`, `controller`). Panics with the command
/// to run when it has not been built.
pub fn binary(name: &str) -> PathBuf {
    let p = target_bin_dir().join(name);
    assert!(p.is_file(), "{} is missing: run `cargo build --bins` first (scripts/test does)", p.display());
    p
}

/// A writer that keeps what it is given and publishes how many lines it has so far, so
/// that a test can act (cut a connection, say) once output has reached a given point.
pub struct LineCounter {
    pub buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    lines: tokio::sync::watch::Sender<usize>,
}

impl LineCounter {
    /// The writer and a receiver of its line count.
    pub fn new() -> (LineCounter, tokio::sync::watch::Receiver<usize>) {
        let (lines, rx) = tokio::sync::watch::channel(0);
        (LineCounter { buf: Default::default(), lines }, rx)
    }

    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().expect("buffer lock")).into_owned()
    }
}

impl std::io::Write for LineCounter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut b = self.buf.lock().expect("buffer lock");
        b.extend_from_slice(data);
        let _ = self.lines.send(b.iter().filter(|c| **c == b'\n').count());
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
