//! The `dist` agent as a child process for benchmarks: a per-run CA with the agent's server
//! certificate and an operator client certificate, the binary built by
//! `cargo build --profile dist -p agent` (never built here), mTLS clients on loopback, and
//! the agent's CPU time and resident set read from /proc.
#![allow(dead_code, clippy::unwrap_used)] // each bench uses part of it; a panic is the report

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ops_proto::identity::Role;
use ops_proto::tls::{self, AgentTarget, DialTimeouts, TlsPaths};
use ops_proto::v1::agent_client::AgentClient;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use tonic::transport::Channel;

fn write_pair(dir: &Path, name: &str, cert: &str, key: &str) {
    std::fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key).unwrap();
    // The agent refuses a key that group or others can read, as ssh does.
    std::fs::set_permissions(dir.join(format!("{name}.key")), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// A per-run CA, the agent's server certificate (localhost) and an operator client one.
pub fn make_pki(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut agent = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    agent.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let k = KeyPair::generate().unwrap();
    write_pair(dir, "agent", &agent.signed_by(&k, &issuer).unwrap().pem(), &k.serialize_pem());
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.subject_alt_names = vec![SanType::URI(Role::Operator.uri().try_into().unwrap())];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let k = KeyPair::generate().unwrap();
    write_pair(dir, "client", &client.signed_by(&k, &issuer).unwrap().pem(), &k.serialize_pem());
}

/// target/dist/agent next to this bench's own target directory.
pub fn dist_agent() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let bin = target.join("dist").join("agent");
    assert!(bin.is_file(), "{} is missing: run `cargo build --profile dist -p agent` first", bin.display());
    bin
}

/// Starts the dist agent on 127.0.0.1:0 with the PKI in `dir` and `extra` config; returns
/// the child and the address it announced.
pub fn start(dir: &Path, extra: &str) -> (Child, String) {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!("state_dir = \"{}\"\n", dir.join("state").display())
            + "listen = \"127.0.0.1:0\"\n[tls]\nca = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n\
               [metadata]\nenabled = false\n[auth_log]\npaths = [\"/nonexistent/auth.log\"]\n"
            + extra,
    )
    .unwrap();
    let mut child = Command::new(dist_agent()).arg("--config").arg(&cfg).env("RUST_LOG", "warn").stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap().to_string();
    (child, addr)
}

/// An operator connection to the agent at `addr`.
pub async fn connect(dir: &Path, addr: &str) -> AgentClient<Channel> {
    let paths = TlsPaths { ca: dir.join("ca.pem"), cert: dir.join("client.pem"), key: dir.join("client.key") };
    let config = tls::client_config(&paths, None).unwrap();
    let target = AgentTarget { address: addr.to_string(), server_name: "localhost".into() };
    AgentClient::new(tls::connect(&target, config, DialTimeouts::default()).await.unwrap())
}

/// User plus system CPU time of `pid`, in clock ticks (utime + stime of /proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Clock ticks per second (sysconf(_SC_CLK_TCK)), from `getconf` so that no unsafe call is needed.
pub fn ticks_per_second() -> f64 {
    Command::new("getconf").arg("CLK_TCK").output().ok().and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok()).unwrap_or(100.0)
}

/// A field of /proc/PID/status in KiB.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
