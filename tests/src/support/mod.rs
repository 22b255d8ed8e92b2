//! Launchers and fixtures shared by every end-to-end test. Each launcher binds
//! loopback only and cleans up after itself when dropped.

pub mod agent;
pub mod aws_seed;
pub mod certs;
pub mod mariadb;
pub mod proxy;
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
