//! A local AWS API for tests: `moto_server` (pinned moto[server]==5.2.5 in `.venv`, made
//! by scripts/setup; `MOTO_SERVER` overrides the path) on a free loopback port, one
//! fresh server per test so that no state leaks between tests, killed when dropped.
//! `start_in_the_past` runs it under `faketime` so that what it creates (an automated
//! RDS snapshot, say) carries an old timestamp: moto has no API to backdate them.
//! `start_with_clock` does the same with a clock the test moves while moto runs
//! (libfaketime reading its offset from a file), so one server can hold things made at
//! different times.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::Credentials;
use controller::aws::AwsClients;

use super::{free_port, workspace_root};

/// The region every test uses.
pub const REGION: &str = "us-east-1";
/// How long moto may take to start (Python imports on a busy 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto server.
pub struct Moto {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The moto_server executable.
pub fn moto_server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let p = workspace_root().join(".venv/bin/moto_server");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup (it makes .venv with moto[server]==5.2.5)",
        p.display()
    );
    p
}

impl Moto {
    /// A fresh moto on 127.0.0.1, ready to answer.
    pub fn start() -> Moto {
        Moto::launch(None)
    }

    /// A fresh moto whose clock runs `offset` behind (faketime syntax, e.g. "-3d").
    pub fn start_in_the_past(offset: &str) -> Moto {
        Moto::launch(Some(offset))
    }

    /// A fresh moto whose clock the returned `MotoClock` sets (offsets in faketime
    /// syntax: "-3d", "+0"); it starts at `offset`.
    pub fn start_with_clock(offset: &str) -> (Moto, MotoClock) {
        let lib = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("libfaketime is missing: run scripts/setup (Debian package faketime)");
        let clock_dir = tempfile::tempdir().expect("tempdir");
        let clock = MotoClock { file: clock_dir.path().join("faketime"), _dir: clock_dir };
        clock.set(offset);
        let moto = Moto::launch_with(None, &[
            ("LD_PRELOAD", lib.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", clock.file.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".to_string()),
        ]);
        (moto, clock)
    }

    fn launch(faketime: Option<&str>) -> Moto {
        Moto::launch_with(faketime, &[])
    }

    fn launch_with(faketime: Option<&str>, env: &[(&str, String)]) -> Moto {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("moto.log");
        let port = free_port();
        let server = moto_server_path();
        let mut cmd = match faketime {
            Some(offset) => {
                let ft = which("faketime").expect("faketime is missing: run scripts/setup (Debian package faketime)");
                let mut c = Command::new(ft);
                c.arg("-f").arg(offset).arg(&server);
                c
            }
            None => Command::new(&server),
        };
        // Its own process group: faketime runs moto as a child of its own, and Drop must
        // take down the whole group, not just the process it started.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).expect("moto log")))
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("moto.err")).expect("moto err")))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
        let mut moto = Moto { child, port, log, _dir: dir };
        moto.wait_ready();
        moto
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moto_server exited with {status} before answering; log:\n{}", self.log_text());
            }
            if http(self.port, "GET", "/moto-api/", "").is_some_and(|s| s == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "moto_server did not answer within {START_TIMEOUT:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        let err = self.log.with_file_name("moto.err");
        format!("{}{}", std::fs::read_to_string(&self.log).unwrap_or_default(), std::fs::read_to_string(err).unwrap_or_default())
    }

    /// http://127.0.0.1:PORT
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Forgets every resource (`POST /moto-api/reset`).
    pub fn reset(&self) {
        assert_eq!(http(self.port, "POST", "/moto-api/reset", ""), Some(200), "moto reset");
    }

    /// Makes moto check credentials after `n` more requests (`/moto-api/reset-auth`):
    /// unknown keys are then refused as real AWS would.
    pub fn enforce_auth_after(&self, n: u32) {
        assert_eq!(http(self.port, "POST", "/moto-api/reset-auth", &n.to_string()), Some(200), "moto reset-auth");
    }

    /// An SDK config for this server with dummy static credentials: no credentials
    /// chain or instance metadata is consulted, nothing leaves the machine.
    pub async fn sdk_config(&self) -> SdkConfig {
        sdk_config_for(&self.endpoint()).await
    }

    /// The controller's clients pointed at this server.
    pub async fn clients(&self) -> AwsClients {
        AwsClients::from_sdk_config(&self.sdk_config().await).expect("clients")
    }

    /// Environment for a `controller` child process pointed at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
        ]
    }
}

/// The clock of a moto from `Moto::start_with_clock`.
pub struct MotoClock {
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl MotoClock {
    /// Moves moto's clock to `offset` from the real time (read on moto's next clock call).
    pub fn set(&self, offset: &str) {
        std::fs::write(&self.file, format!("{offset}\n")).expect("write the faketime file");
    }
}

/// An SDK config for any endpoint with dummy static credentials and short retries.
pub async fn sdk_config_for(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .endpoint_url(endpoint)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2).with_initial_backoff(Duration::from_millis(10)))
        .load()
        .await
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(pgid) = i32::try_from(self.child.id()).ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
}

/// A minimal blocking HTTP/1.1 exchange with 127.0.0.1:port; the status code, or None
/// when nothing answered.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}
