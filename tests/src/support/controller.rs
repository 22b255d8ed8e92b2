//! The controller as the end-to-end tests run it: one builder for its config file
//! ([`ControllerConfig`]: the client certificate it presents, a static fleet or an EC2
//! fleet addressed by the `Agent` tag, then any extra TOML) and one runner for the binary
//! that returns (exit code, stdout, stderr). Every CLI test writes its config here, so a
//! change to the config format is made once. The only config files written by hand are
//! the deliberately wrong ones (a misspelt key, no `[tls]`); runbook tests that build a
//! context in-process give their `[fleet]` to `aws_seed::context_with_fleet`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::binary;
use super::certs::{Files, TestPki};

/// Where the fleet comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// `[[fleet.hosts]]` listed in the file.
    Static,
    /// EC2 instances tagged `Project=TechHealth`, each dialled at its `Agent` tag.
    Ec2,
}

/// One host of a static fleet: its name, `host:port`, and the name its certificate must carry.
#[derive(Debug, Clone)]
struct Host {
    name: String,
    address: String,
    server_name: String,
}

/// A controller config file under construction. Starts as the operator certificate of the
/// test PKI and an empty static fleet with a 2 s connect timeout; [`write`](Self::write)
/// puts it at `controller.toml` in the PKI's folder. A viewer's fleet of one, say:
/// `ControllerConfig::new(&pki).viewer().host("web-1", agent.addr).write()`.
#[derive(Clone)]
pub struct ControllerConfig<'a> {
    pki: &'a TestPki,
    identity: Files,
    source: Source,
    connect_timeout: Option<String>,
    hosts: Vec<Host>,
    extra: String,
    fleet_keys: String,
}

impl<'a> ControllerConfig<'a> {
    /// A static fleet with no hosts yet, the operator certificate, a 2 s connect timeout.
    pub fn new(pki: &'a TestPki) -> ControllerConfig<'a> {
        ControllerConfig {
            pki,
            identity: pki.operator.clone(),
            source: Source::Static,
            connect_timeout: Some("2s".into()),
            hosts: Vec::new(),
            extra: String::new(),
            fleet_keys: String::new(),
        }
    }

    /// The TechHealth EC2 fleet (tag Project=TechHealth), each agent dialled at its `Agent`
    /// tag, with the controller's default connect timeout.
    pub fn ec2(pki: &'a TestPki) -> ControllerConfig<'a> {
        ControllerConfig { source: Source::Ec2, connect_timeout: None, ..ControllerConfig::new(pki) }
    }

    /// Presents this client certificate (signed by the test CA) instead of the operator's.
    pub fn identity(mut self, files: &Files) -> Self {
        self.identity = files.clone();
        self
    }

    /// Presents the test PKI's viewer certificate.
    pub fn viewer(self) -> Self {
        let viewer = self.pki.viewer.clone();
        self.identity(&viewer)
    }

    /// `[fleet] connect_timeout`, as the config writes it ("1s", "500ms").
    pub fn connect_timeout(mut self, timeout: &str) -> Self {
        self.connect_timeout = Some(timeout.into());
        self
    }

    /// A host of the static fleet whose certificate names `localhost` (the test PKI's agent
    /// certificate does).
    pub fn host(self, name: &str, address: impl std::fmt::Display) -> Self {
        self.host_named(name, address, "localhost")
    }

    /// A host of the static fleet dialled under `server_name`.
    pub fn host_named(mut self, name: &str, address: impl std::fmt::Display, server_name: &str) -> Self {
        self.hosts.push(Host { name: name.into(), address: address.to_string(), server_name: server_name.into() });
        self
    }

    /// Hosts of the static fleet, each with a certificate naming `localhost`.
    pub fn hosts(self, hosts: &[(&str, String)]) -> Self {
        hosts.iter().fold(self, |c, (name, addr)| c.host(name, addr))
    }

    /// Whole TOML sections (`[runbooks]`, `[aws]`, ...) added to the file. Bare keys would
    /// land in whatever table precedes them: give them their section header.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        if !toml.is_empty() && !toml.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// A `key = value` line added to `[fleet]`.
    pub fn fleet_key(mut self, line: &str) -> Self {
        self.fleet_keys.push_str(line);
        self.fleet_keys.push('\n');
        self
    }

    /// The file's text.
    pub fn text(&self) -> String {
        let mut text = format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{}",
            self.pki.ca_file.display(),
            self.identity.cert.display(),
            self.identity.key.display(),
            self.extra
        );
        match self.source {
            Source::Static => text.push_str("[fleet]\nsource = \"static\"\n"),
            Source::Ec2 => {
                text.push_str("[fleet]\nsource = \"ec2\"\ntag_filters = { Project = \"TechHealth\" }\naddress = \"tag:Agent\"\n")
            }
        }
        if let Some(t) = &self.connect_timeout {
            text.push_str(&format!("connect_timeout = \"{t}\"\n"));
        }
        text.push_str(&self.fleet_keys);
        for h in &self.hosts {
            text.push_str(&format!(
                "[[fleet.hosts]]\nname = \"{}\"\naddress = \"{}\"\nserver_name = \"{}\"\n",
                h.name, h.address, h.server_name
            ));
        }
        text
    }

    /// Writes the file and returns its path.
    pub fn write(&self) -> PathBuf {
        let p = self.pki.path().join("controller.toml");
        std::fs::write(&p, self.text()).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

/// A static fleet of `hosts` (name, host:port; certificates name `localhost`), a 2 s
/// connect timeout, then `extra` sections; the operator certificate.
pub fn static_config(pki: &TestPki, hosts: &[(&str, String)], extra: &str) -> PathBuf {
    ControllerConfig::new(pki).hosts(hosts).extra(extra).write()
}

/// The TechHealth EC2 fleet (tag Project=TechHealth), each agent dialled at its `Agent`
/// tag, then `extra` sections; the operator certificate.
pub fn ec2_config(pki: &TestPki, extra: &str) -> PathBuf {
    ControllerConfig::ec2(pki).extra(extra).write()
}

fn output(mut cmd: Command, config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = cmd.arg("--config").arg(config).args(args).output().expect("run controller");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs the controller with this process's environment plus `env`.
pub fn run(config: &Path, env: &[(&str, String)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(binary("controller"));
    cmd.envs(env.iter().cloned());
    output(cmd, config, args)
}

/// Runs the controller with only `PATH`, a `HOME` that does not exist and `env`: no AWS
/// setting of the caller's leaks in.
pub fn run_clean(env: &[(&str, String)], config: &Path, args: &[&str]) -> (i32, String, String) {
    output(clean_command(env), config, args)
}

/// The controller binary with only `PATH`, a `HOME` that does not exist and `env` in its
/// environment (for a test that starts it as a child and stops it itself).
pub fn clean_command(env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(binary("controller"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("HOME", "/nonexistent");
    cmd.envs(env.iter().cloned());
    cmd
}
