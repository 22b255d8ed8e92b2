//! Agents for tests: in-process on 127.0.0.1:0 (fast, with access to its counters) and
//! the real `agent` binary as a child process (for signals, restarts and RSS).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use agent::config::AgentConfig;
use agent::server::RunningAgent;
use controller::client::Dialer;
use controller::fleet::Host;
use ops_proto::rustls::ClientConfig;
use ops_proto::tls::DialTimeouts;
use ops_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use super::certs::{Files, TestPki};

/// The agent config text for a test: loopback, the test PKI, metadata lookup pointed at
/// a closed loopback port (tests never send traffic off this machine), plus `extra` TOML.
pub fn config_text(pki: &TestPki, agent_cert: &Files, listen: &str, extra_top: &str, extra_sections: &str) -> String {
    // Each test's agent keeps its jobs in the test's own folder unless told otherwise.
    let state = if extra_top.contains("state_dir") {
        String::new()
    } else {
        format!("state_dir = \"{}\"\n", pki.path().join("state").display())
    };
    format!(
        "listen = \"{listen}\"\n{state}{extra_top}\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[metadata]\nurl = \"http://127.0.0.1:9\"\ntimeout_ms = 200\n{extra_sections}\n",
        pki.ca_file.display(),
        agent_cert.cert.display(),
        agent_cert.key.display(),
    )
}

/// Writes a config file into the PKI folder and returns its path.
pub fn write_config(pki: &TestPki, name: &str, text: &str) -> PathBuf {
    let p = pki.path().join(format!("{name}.toml"));
    std::fs::write(&p, text).expect("write agent config");
    p
}

/// Starts an agent inside the test process on 127.0.0.1:0.
pub async fn spawn_in_process(pki: &TestPki, extra_top: &str, extra_sections: &str) -> RunningAgent {
    let text = config_text(pki, &pki.agent, "127.0.0.1:0", extra_top, extra_sections);
    let path = write_config(pki, "agent-inproc", &text);
    let cfg = AgentConfig::load(&path).expect("agent config");
    agent::server::start(cfg).await.expect("agent starts")
}

/// A host entry for an agent at `addr` whose certificate names `localhost`.
pub fn host(name: &str, addr: SocketAddr) -> Host {
    Host {
        undialable: None,
        name: name.to_string(),
        address: addr.to_string(),
        server_name: "localhost".into(),
        instance_id: None,
        instance_type: None,
        private_ip: None,
        public_ip: None,
        url: None,
    }
}

/// A dialer with short test deadlines.
pub fn dialer(config: Arc<ClientConfig>) -> Dialer {
    Dialer::new(
        config,
        DialTimeouts { connect: Duration::from_secs(3), request: Some(Duration::from_secs(20)) },
        16,
    )
}

/// Connects as the operator.
pub async fn operator_client(pki: &TestPki, addr: SocketAddr) -> AgentClient<Channel> {
    dialer(pki.operator_config()).connect(&host("test", addr)).await.expect("connect as operator")
}

/// The real agent binary running as a child process; killed when dropped.
pub struct AgentProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub config: PathBuf,
    stderr_log: PathBuf,
}

impl AgentProcess {
    /// Starts `target/<profile>/agent --config PATH` and waits for its "listening on" line.
    pub fn start(config: &Path) -> AgentProcess {
        Self::start_in(config, None)
    }

    /// Like `start`, inside network namespace `ns` when given (see `support::netns`).
    pub fn start_in(config: &Path, ns: Option<&str>) -> AgentProcess {
        let stderr_log = config.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_log).expect("stderr log");
        let mut cmd = match ns {
            Some(ns) => super::netns::Lab::command_in(ns, &super::binary("agent")),
            None => Command::new(super::binary("agent")),
        };
        let mut child = cmd
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn agent binary");
        let stdout = child.stdout.take().expect("agent stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the agent never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("agent did not report its address; stderr:\n{}", std::fs::read_to_string(&stderr_log).unwrap_or_default());
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from agent: {line:?}"));
        AgentProcess { child, addr, config: config.to_path_buf(), stderr_log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agent wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident set size in bytes, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.child.id())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of a process in bytes (0 when it is gone).
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
