//! `controller agent user-data`: the cloud-init document that installs the agent on a new
//! EC2 instance from its launch template.
//!
//! User-data is readable by every process on the instance through the metadata service,
//! and often by anyone who may describe the instance, so this document must never carry
//! a secret: it holds the agent's download location and checksum, the fleet CA's
//! *certificate* (public), the agent's config and its systemd unit. The agent makes its
//! own key on the host and enrols with the instance's signed identity. A CA bundle that
//! contains a private key is refused.

use std::fmt::Write as _;

use super::unit::{agent_unit, AGENT_BIN, AGENT_ETC, UNIT_PATH};

/// What the document is made from.
#[derive(Debug, Clone)]
pub struct UserDataParams {
    /// `https://...` (e.g. a presigned S3 URL), `s3://bucket/key` (fetched with the instance
    /// role through the aws CLI), or `http://` to a loopback address (local labs only).
    pub agent_url: String,
    /// The agent binary's SHA-256, 64 hex digits.
    pub agent_sha256: String,
    /// The fleet CA certificate(s), PEM.
    pub ca_pem: String,
    pub agent_port: u16,
}

/// A document that could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserDataError {
    #[error("--agent-url {0:?}: expected https://..., s3://bucket/key, or http:// to a loopback address (labs only)")]
    Url(String),
    #[error("--agent-url {0:?}: contains characters that cannot appear in a URL (quotes, spaces, control characters)")]
    UrlCharacters(String),
    #[error("--agent-sha256 {0:?}: expected 64 hexadecimal digits (sha256sum of the agent binary)")]
    Sha256(String),
    #[error("the fleet CA file contains a private key: user-data is readable on the instance and must carry no secret; give the CA certificate only")]
    SecretInCa,
    #[error("the fleet CA file holds no PEM certificate")]
    NoCertificate,
}

fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// Checks the parameters: what reaches a shell line is only ever a validated URL inside
/// single quotes and a hex digest.
pub fn validate(p: &UserDataParams) -> Result<(), UserDataError> {
    let url = p.agent_url.as_str();
    if url.chars().any(|c| c.is_control() || c.is_whitespace() || matches!(c, '\'' | '"' | '\\' | '`' | '$')) {
        return Err(UserDataError::UrlCharacters(url.to_string()));
    }
    let ok = (url.starts_with("https://") && url.len() > 8)
        || (url.strip_prefix("s3://").is_some_and(|r| r.contains('/') && !r.starts_with('/')))
        || is_loopback_http(url);
    if !ok {
        return Err(UserDataError::Url(url.to_string()));
    }
    let sha = p.agent_sha256.trim();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UserDataError::Sha256(p.agent_sha256.clone()));
    }
    if p.ca_pem.contains("PRIVATE KEY") {
        return Err(UserDataError::SecretInCa);
    }
    if !p.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(UserDataError::NoCertificate);
    }
    Ok(())
}

/// The agent config written to the host: the listener, the fleet CA, and where the key and
/// certificate that enrolment produces live.
pub fn agent_config(port: u16) -> String {
    format!(
        "\
# Written by `controller agent user-data`. The key and certificate are made on this host.
listen = \"0.0.0.0:{port}\"
state_dir = \"/var/lib/ops-agent\"

[tls]
ca = \"ca.pem\"
cert = \"agent.pem\"
key = \"agent.key\"

# No certificate yet: the agent makes its key, serves only ops.v1.Enroll, and proves which
# instance it is with the signed identity document from the metadata service.
[enrol]
method = \"ec2\"
"
    )
}

/// The install script run once by cloud-init: download, check the SHA-256 (a mismatch
/// installs nothing), install, enable and start the unit. `OPS_INSTALL_ROOT` prefixes
/// every path; it is empty on a host and set only by the sandboxed test.
pub fn install_script(p: &UserDataParams) -> String {
    let url = &p.agent_url;
    let sha = p.agent_sha256.trim().to_ascii_lowercase();
    let fetch = if url.starts_with("s3://") {
        "aws s3 cp --only-show-errors \"$URL\" \"$tmp\"".to_string()
    } else {
        let proto = if url.starts_with("https://") { "=https" } else { "=http" };
        format!("curl --fail --silent --show-error --location --proto '{proto}' --retry 5 --retry-delay 2 --max-time 300 -o \"$tmp\" \"$URL\"")
    };
    format!(
        "\
#!/bin/sh
# Installs the ops agent; written by `controller agent user-data`. Holds no secret.
set -eu
umask 022
ROOT=\"${{OPS_INSTALL_ROOT:-}}\"
URL='{url}'
SHA256='{sha}'
mkdir -p \"$ROOT/usr/local/bin\"
tmp=\"$(mktemp \"$ROOT/usr/local/bin/.ops-agent.XXXXXX\")\"
trap 'rm -f \"$tmp\"' EXIT
{fetch}
got=\"$(sha256sum \"$tmp\" | cut -d ' ' -f 1)\"
if [ \"$got\" != \"$SHA256\" ]; then
  echo \"ops-agent install: checksum mismatch for $URL: expected $SHA256, got $got; nothing installed\" >&2
  exit 1
fi
chmod 0755 \"$tmp\"
mv -f \"$tmp\" \"$ROOT{AGENT_BIN}\"
trap - EXIT
systemctl daemon-reload
systemctl enable --now ops-agent.service
echo \"ops-agent installed ($SHA256) and started\"
"
    )
}

fn block(out: &mut String, text: &str) {
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "      {line}");
        }
    }
}

fn file(out: &mut String, path: &str, mode: &str, content: &str) {
    let _ = writeln!(out, "  - path: {path}\n    owner: root:root\n    permissions: '{mode}'\n    content: |");
    block(out, content);
}

/// Renders the `#cloud-config` document.
pub fn render(p: &UserDataParams) -> Result<String, UserDataError> {
    validate(p)?;
    let mut out = String::from(
        "#cloud-config\n# ops fleet agent: written by `controller agent user-data`. No secret in here: the agent\n# makes its key on the host and enrols with the instance's signed identity.\nwrite_files:\n",
    );
    file(&mut out, &format!("{AGENT_ETC}/ca.pem"), "0644", p.ca_pem.trim_end());
    file(&mut out, &format!("{AGENT_ETC}/agent.toml"), "0644", &agent_config(p.agent_port));
    file(&mut out, UNIT_PATH, "0644", &agent_unit());
    file(&mut out, "/usr/local/sbin/ops-agent-install", "0700", &install_script(p));
    out.push_str("runcmd:\n  - [/usr/local/sbin/ops-agent-install]\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> UserDataParams {
        UserDataParams {
            agent_url: "https://artifacts.example.com/ops-agent-0.1.0".into(),
            agent_sha256: "a".repeat(64),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            agent_port: 7443,
        }
    }

    #[test]
    fn a_private_key_never_goes_into_user_data() {
        let mut p = params();
        p.ca_pem.push_str("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n");
        assert_eq!(render(&p), Err(UserDataError::SecretInCa));
    }

    #[test]
    fn urls_are_https_s3_or_loopback_http_and_cannot_break_out_of_quotes() {
        let mut p = params();
        for good in ["https://x.example/a", "s3://bucket/ops-agent", "http://127.0.0.1:5000/b/k?X-Amz-Signature=ab"] {
            p.agent_url = good.into();
            assert!(validate(&p).is_ok(), "{good}");
        }
        for bad in ["http://artifacts.example.com/a", "ftp://x/y", "s3://bucket", "file:///tmp/a"] {
            p.agent_url = bad.into();
            assert!(matches!(validate(&p), Err(UserDataError::Url(_))), "{bad}");
        }
        for bad in ["https://x/a'; rm -rf /; '", "https://x/$(id)", "https://x/a b"] {
            p.agent_url = bad.into();
            assert!(matches!(validate(&p), Err(UserDataError::UrlCharacters(_))), "{bad}");
        }
    }

    #[test]
    fn the_checksum_must_be_a_sha256() {
        let mut p = params();
        p.agent_sha256 = "abc".into();
        assert!(matches!(render(&p), Err(UserDataError::Sha256(_))));
        p.agent_sha256 = format!("{}g", "a".repeat(63));
        assert!(matches!(render(&p), Err(UserDataError::Sha256(_))));
    }

    #[test]
    fn the_document_carries_the_files_and_runs_the_installer() {
        let doc = render(&params()).unwrap();
        assert!(doc.starts_with("#cloud-config\n"));
        for path in ["/etc/ops-agent/ca.pem", "/etc/ops-agent/agent.toml", UNIT_PATH, "/usr/local/sbin/ops-agent-install"] {
            assert!(doc.contains(&format!("- path: {path}")), "{path}");
        }
        assert!(doc.contains(&format!("SHA256='{}'", "a".repeat(64))));
        assert!(doc.contains("--proto '=https'"));
        assert!(doc.contains("runcmd:\n  - [/usr/local/sbin/ops-agent-install]"));
    }
}
