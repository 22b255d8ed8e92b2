//! The EC2 instance metadata service (IMDSv2) for one moto instance, through the loopback
//! stand-in `tests/imds/imds_standin.py`: the metadata service cannot run on the test
//! machines, and this is one of the two stand-ins the test world allows (beside
//! `systemctl`). It serves the instance's id, addresses and an instance-identity
//! document signed by an `AwsSigner`, a throwaway RSA-2048 key standing for AWS's
//! regional one. Test code: panics with the cause when something cannot start; the
//! stand-in binds 127.0.0.1 only and is killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::moto::{moto_server_path, Moto};
use super::workspace_root;

/// How long the stand-in may take to start (Python imports and one moto call on a busy
/// 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A certificate and key standing for "AWS's regional RSA-2048 certificate": what the
/// controller is configured with and what the stand-in signs identity documents with.
pub struct AwsSigner {
    pub cert_pem: String,
    pub cert_file: PathBuf,
    key_file: PathBuf,
    _dir: TempDir,
}

impl AwsSigner {
    /// A fresh self-signed RSA-2048 certificate (subject like AWS's), made with the
    /// `openssl` CLI: rcgen on ring cannot generate RSA keys.
    pub fn generate() -> AwsSigner {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "30",
            ])
            .args([
                "-subj",
                "/C=US/ST=Washington State/L=Seattle/O=Amazon Web Services LLC",
            ])
            .args(["-keyout", "signer.key", "-out", "signer.pem"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl ({e}): install openssl (scripts/setup does)")
            });
        assert!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cert_file = dir.path().join("signer.pem");
        let cert_pem = std::fs::read_to_string(&cert_file).expect("read the signer certificate");
        AwsSigner {
            cert_pem,
            cert_file,
            key_file: dir.path().join("signer.key"),
            _dir: dir,
        }
    }

    /// The private key (PEM), for tests that sign something themselves.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }
}

/// A running IMDSv2 stand-in for one instance.
pub struct Imds {
    child: Child,
    /// http://127.0.0.1:PORT
    pub url: String,
    pub port: u16,
    dir: TempDir,
}

impl Imds {
    /// The stand-in for `instance_id` in `moto`, signing with `signer`.
    pub fn start(moto: &Moto, instance_id: &str, signer: &AwsSigner) -> Imds {
        Imds::start_with(moto, instance_id, signer, &[])
    }

    /// The same with extra flags for negative tests: `--tamper-document`,
    /// `--document-instance-id ID`.
    pub fn start_with(
        moto: &Moto,
        instance_id: &str,
        signer: &AwsSigner,
        extra_args: &[&str],
    ) -> Imds {
        let python = moto_server_path().with_file_name("python");
        assert!(
            python.is_file(),
            "no python in the moto venv ({}): run scripts/setup",
            python.display()
        );
        let script = workspace_root().join("tests/imds/imds_standin.py");
        let dir = tempfile::tempdir().expect("tempdir");
        let port_file = dir.path().join("port");
        let child = Command::new(&python)
            .arg(&script)
            .args([
                "--moto",
                &moto.endpoint(),
                "--instance-id",
                instance_id,
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
            ])
            .arg("--key")
            .arg(&signer.key_file)
            .arg("--cert")
            .arg(&signer.cert_file)
            .arg("--port-file")
            .arg(&port_file)
            .args(extra_args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(dir.path().join("imds.out")).expect("imds log"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("imds.err")).expect("imds log"),
            ))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} {}: {e}",
                    python.display(),
                    script.display()
                )
            });
        let mut imds = Imds {
            child,
            url: String::new(),
            port: 0,
            dir,
        };
        imds.port = imds.wait_ready(&port_file);
        imds.url = format!("http://127.0.0.1:{}", imds.port);
        imds
    }

    /// The port, once the stand-in has written it (it binds before it writes, and writes
    /// the file whole by a rename).
    fn wait_ready(&mut self, port_file: &Path) -> u16 {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the IMDS stand-in exited with {status} before listening; log:\n{}",
                    self.log_text()
                );
            }
            if let Some(port) = std::fs::read_to_string(port_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "the IMDS stand-in did not listen within {START_TIMEOUT:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the stand-in has printed and logged so far.
    pub fn log_text(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("imds.out"), read("imds.err"))
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
