//! Static host facts: name, distribution, kernel, architecture, CPUs, boot time and uptime.
//! Infallible: a fact that cannot be read is left empty or zero. The fields only the server
//! knows (instance id, caller identity) are left for it to fill.

use std::time::SystemTime;

use ops_proto::v1::HostInfo;

const OS_RELEASE_PATHS: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];
const PROC_UPTIME: &str = "/proc/uptime";

/// The host's identity and vital facts.
pub fn host_info() -> HostInfo {
    let uname = rustix::system::uname();
    let stat =
        super::read_optional(super::PROC_STAT).and_then(|text| super::cpu::parse_stat(&text));
    let uptime_secs = super::read_optional(PROC_UPTIME).and_then(|text| parse_uptime(&text));
    let cpu_count = stat
        .as_ref()
        .map(|s| s.cpu_count)
        .filter(|n| *n > 0)
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(0);
    let boot_time_unix_ms = match (stat.and_then(|s| s.boot_time_secs), uptime_secs) {
        (Some(btime), _) => i64::try_from(btime.saturating_mul(1000)).unwrap_or(0),
        (None, Some(uptime)) => super::unix_ms(SystemTime::now()) - (uptime * 1000.0) as i64,
        (None, None) => 0,
    };
    HostInfo {
        hostname: uname.nodename().to_string_lossy().into_owned(),
        os: OS_RELEASE_PATHS
            .iter()
            .find_map(super::read_optional)
            .and_then(|text| parse_os_release(&text))
            .unwrap_or_default(),
        kernel: uname.release().to_string_lossy().into_owned(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: uptime_secs.map(|s| s as u64).unwrap_or(0),
        cpu_count,
        arch: uname.machine().to_string_lossy().into_owned(),
        boot_time_unix_ms,
        ..HostInfo::default()
    }
}

/// The host name, for each snapshot (it may change while the agent runs).
pub(crate) fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// PRETTY_NAME from os-release (e.g. "Debian GNU/Linux 12 (bookworm)"), else NAME and
/// VERSION.
pub(crate) fn parse_os_release(text: &str) -> Option<String> {
    let value = |key: &str| -> Option<String> {
        text.lines()
            .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
            .map(unquote)
            .find(|v| !v.is_empty())
    };
    value("PRETTY_NAME").or_else(|| match (value("NAME"), value("VERSION")) {
        (Some(name), Some(version)) => Some(format!("{name} {version}")),
        (name, _) => name,
    })
}

/// Removes shell quoting from an os-release value: `"a \"b\""` becomes `a "b"`.
fn unquote(raw: &str) -> String {
    let raw = raw.trim();
    let inner = ['"', '\'']
        .iter()
        .find_map(|q| raw.strip_prefix(*q)?.strip_suffix(*q))
        .unwrap_or(raw);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Seconds since boot, the first field of /proc/uptime ("420.19 636.34").
pub(crate) fn parse_uptime(text: &str) -> Option<f64> {
    text.split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn os_release_pretty_name_is_unquoted() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
            VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            parse_os_release(text).unwrap(),
            "Debian GNU/Linux 12 (bookworm)"
        );
    }

    #[test]
    fn os_release_without_pretty_name_uses_name_and_version() {
        assert_eq!(
            parse_os_release("NAME='Amazon Linux'\nVERSION=\"2023\"\n").unwrap(),
            "Amazon Linux 2023"
        );
        assert_eq!(parse_os_release("NAME=Alpine\n").unwrap(), "Alpine");
        assert_eq!(parse_os_release("ID=x\n"), None);
        assert_eq!(unquote(r#""say \"hi\"""#), "say \"hi\"");
    }

    #[test]
    fn uptime_is_the_first_field() {
        assert_eq!(parse_uptime("420.19 636.34\n"), Some(420.19));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("nan 1"), None);
    }
}
