//! The controller as the end-to-end tests run it: one builder for its config file (the
//! test PKI's operator certificate, a static fleet or an EC2 fleet addressed by the
//! `Agent` tag, then any extra TOML) and one runner for the binary that returns
//! (exit code, stdout, stderr). Every CLI test writes its config here, so a change to the
//! config format is made once.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::binary;
use super::certs::TestPki;

fn tls_section(pki: &TestPki) -> String {
    format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.ca_file.display(),
        pki.operator.cert.display(),
        pki.operator.key.display()
    )
}

fn write(pki: &TestPki, text: &str) -> PathBuf {
    let p = pki.path().join("controller.toml");
    std::fs::write(&p, text).expect("write controller.toml");
    p
}

/// A static fleet of `hosts` (name, host:port; certificates name `localhost`), a 2 s
/// connect timeout, then `extra` sections.
pub fn static_config(pki: &TestPki, hosts: &[(&str, String)], extra: &str) -> PathBuf {
    let mut text = format!("{}{extra}\n[fleet]\nsource = \"static\"\nconnect_timeout = \"2s\"\n", tls_section(pki));
    for (name, addr) in hosts {
        text.push_str(&format!("[[fleet.hosts]]\nname = \"{name}\"\naddress = \"{addr}\"\nserver_name = \"localhost\"\n"));
    }
    write(pki, &text)
}

/// The TechHealth EC2 fleet (tag Project=TechHealth), each agent dialled at its `Agent`
/// tag, then `extra` sections.
pub fn ec2_config(pki: &TestPki, extra: &str) -> PathBuf {
    let text = format!(
        "{}[fleet]\nsource = \"ec2\"\ntag_filters = {{ Project = \"TechHealth\" }}\naddress = \"tag:Agent\"\n{extra}",
        tls_section(pki)
    );
    write(pki, &text)
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
    let mut cmd = Command::new(binary("controller"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("HOME", "/nonexistent");
    cmd.envs(env.iter().cloned());
    output(cmd, config, args)
}
