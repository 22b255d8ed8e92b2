//! Parsers for what package managers print (run with `LC_ALL=C`): the plan of
//! `apt-get -s upgrade`, `dnf/yum check-update`, `rpm -q --qf`, `needs-restarting -r`.
//! Pure functions over text, tested on captured outputs in `tests/fixtures/jobs/`.

use std::collections::BTreeMap;

/// One package update found in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedUpdate {
    pub name: String,
    /// Empty when the package is newly installed or the installed version is unknown.
    pub from: String,
    pub to: String,
    /// Where the new version comes from (apt origins, or the dnf/yum repository).
    pub origin: String,
    /// From the distribution's security archive (apt only; dnf/yum filter with `--security`).
    pub security: bool,
}

/// The `Inst` lines of `apt-get -s upgrade`:
/// `Inst NAME [FROM] (TO ORIGIN[, ORIGIN...] [ARCH]) [...]`.
pub fn parse_apt_simulation(text: &str) -> Vec<PlannedUpdate> {
    text.lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(parse_apt_inst)
        .collect()
}

fn parse_apt_inst(rest: &str) -> Option<PlannedUpdate> {
    let (name, mut rest) = rest.split_once(' ')?;
    let mut from = String::new();
    if let Some(r) = rest.strip_prefix('[') {
        let (f, r) = r.split_once(']')?;
        from = f.to_string();
        rest = r.trim_start();
    }
    let inner = rest.strip_prefix('(')?;
    let inner = &inner[..inner.find(')')?];
    let (to, origins) = inner.split_once(' ').unwrap_or((inner, ""));
    // Drop the trailing " [arch]".
    let origins = match origins.rfind(" [") {
        Some(i) => &origins[..i],
        None if origins.starts_with('[') => "",
        None => origins,
    };
    let security = origins.split(", ").any(is_security_origin);
    Some(PlannedUpdate {
        name: name.to_string(),
        from,
        to: to.to_string(),
        origin: origins.to_string(),
        security,
    })
}

/// Debian's `Debian-Security:12/stable-security`, Ubuntu's `Ubuntu:22.04/jammy-security`.
fn is_security_origin(origin: &str) -> bool {
    let archive = origin.rsplit('/').next().unwrap_or(origin);
    archive.ends_with("-security") || origin.starts_with("Debian-Security:")
}

/// Architectures that end a `name.arch` token in dnf/yum listings.
const RPM_ARCHES: &[&str] = &[
    "x86_64", "noarch", "i686", "i586", "i386", "aarch64", "ppc64le", "ppc64", "s390x", "armv7hl",
    "src",
];

fn split_name_arch(token: &str) -> Option<(&str, &str)> {
    let (name, arch) = token.rsplit_once('.')?;
    (!name.is_empty() && RPM_ARCHES.contains(&arch)).then_some((name, arch))
}

/// `dnf check-update` / `yum check-update`: `name.arch  version  repo` lines, where yum
/// wraps a long name onto a line of its own. Headers, notices and the "Obsoleting
/// Packages" section are ignored. Returns `name.arch` keys with version and repository.
pub fn parse_check_update(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut pending: Option<&str> = None;
    for line in text.lines() {
        if line.starts_with("Obsoleting Packages") {
            break;
        }
        let tokens: Vec<&str> = line.split_whitespace().collect();
        match (pending.take(), tokens.as_slice()) {
            (Some(name), [version, repo]) if looks_like_version(version) => {
                out.push((name.to_string(), version.to_string(), repo.to_string()));
            }
            (_, [name]) if split_name_arch(name).is_some() && !line.starts_with(' ') => {
                pending = Some(name)
            }
            (_, [name, version, repo])
                if split_name_arch(name).is_some() && looks_like_version(version) =>
            {
                out.push((name.to_string(), version.to_string(), repo.to_string()));
            }
            _ => {}
        }
    }
    out
}

fn looks_like_version(v: &str) -> bool {
    v.chars().next().is_some_and(|c| c.is_ascii_digit()) && v.contains(['-', '.'])
}

/// `rpm -q --qf '%{NAME}.%{ARCH} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n'`:
/// installed version by `name.arch` (the last line wins for multi-version packages such
/// as kernels, rpm lists them oldest first).
pub fn parse_rpm_query(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, v)| split_name_arch(k).is_some() && !v.contains(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Joins a check-update listing with installed versions into updates named without arch.
pub fn rpm_updates(
    listing: &[(String, String, String)],
    installed: &BTreeMap<String, String>,
) -> Vec<PlannedUpdate> {
    listing
        .iter()
        .map(|(name_arch, to, repo)| PlannedUpdate {
            name: split_name_arch(name_arch)
                .map(|(n, _)| n)
                .unwrap_or(name_arch)
                .to_string(),
            from: installed.get(name_arch).cloned().unwrap_or_default(),
            to: to.clone(),
            origin: repo.clone(),
            security: false,
        })
        .collect()
}

/// `needs-restarting -r`: exit code 1 and its message mean a reboot is needed. Exit code
/// 1 alone is not enough: a missing dnf plugin also exits 1.
pub fn reboot_required_from_needs_restarting(exit_code: Option<i32>, output: &str) -> bool {
    exit_code == Some(1) && output.contains("Reboot is required")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jobs/");
        std::fs::read_to_string(format!("{path}{name}")).unwrap()
    }

    #[test]
    fn apt_simulation_of_debian_12_lists_every_upgrade() {
        let plan = parse_apt_simulation(&fixture("apt-get-s-upgrade.debian12.txt"));
        assert_eq!(plan.len(), 125, "the capture says 125 upgraded");
        let bash = plan.iter().find(|p| p.name == "bash").unwrap();
        assert_eq!(
            (bash.from.as_str(), bash.to.as_str()),
            ("5.2.15-2+b8", "5.2.15-2+b13")
        );
        assert_eq!(bash.origin, "Debian:12.15/oldstable");
        assert!(!bash.security);
        let lzma = plan.iter().find(|p| p.name == "liblzma-dev").unwrap();
        assert!(lzma.security, "{lzma:?}");
        assert_eq!(lzma.to, "5.4.1-1+deb12u2");
        let both = plan.iter().find(|p| p.name == "libgcrypt20").unwrap();
        assert!(
            both.security,
            "security when any origin is the security archive"
        );
        assert_eq!(plan.iter().filter(|p| p.security).count(), 78);
    }

    #[test]
    fn apt_simulation_of_ubuntu_security_only() {
        let plan = parse_apt_simulation(&fixture("apt-get-s-upgrade.ubuntu2204.txt"));
        let names: Vec<_> = plan
            .iter()
            .filter(|p| p.security)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["libc6", "libc-bin", "openssl", "libssl3"]);
        let new = plan
            .iter()
            .find(|p| p.name == "linux-image-5.15.0-91-generic")
            .unwrap();
        assert_eq!(new.from, "", "a new install has no from version");
        assert_eq!(plan.len(), 6);
    }

    #[test]
    fn dnf_check_update_with_epochs_and_obsoletes() {
        let listing = parse_check_update(&fixture("dnf-check-update.el9.txt"));
        let names: Vec<_> = listing.iter().map(|l| l.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bash.x86_64",
                "kernel.x86_64",
                "kernel-core.x86_64",
                "openssl-libs.x86_64",
                "tzdata.noarch"
            ]
        );
        assert_eq!(listing[3].1, "1:3.0.7-25.el9_3");
        assert_eq!(listing[3].2, "baseos");
    }

    #[test]
    fn dnf_security_check_update_skips_notices() {
        let listing = parse_check_update(&fixture("dnf-check-update-security.al2023.txt"));
        let names: Vec<_> = listing.iter().map(|l| l.0.as_str()).collect();
        assert_eq!(names, ["curl-minimal.x86_64", "libcurl-minimal.x86_64"]);
    }

    #[test]
    fn yum_check_update_with_wrapped_names() {
        let listing = parse_check_update(&fixture("yum-check-update.el7.txt"));
        assert_eq!(listing.len(), 4);
        let jdk = listing
            .iter()
            .find(|l| l.0 == "java-1.8.0-openjdk-headless.x86_64")
            .unwrap();
        assert_eq!(jdk.1, "1:1.8.0.412.b08-1.el7_9");
        assert_eq!(jdk.2, "updates");
    }

    #[test]
    fn rpm_query_joins_into_updates() {
        let installed = parse_rpm_query(&fixture("rpm-q.el9.txt"));
        assert_eq!(
            installed.get("kernel.x86_64").map(String::as_str),
            Some("5.14.0-362.8.1.el9_3")
        );
        let listing = parse_check_update(&fixture("dnf-check-update.el9.txt"));
        let ups = rpm_updates(&listing, &installed);
        let bash = ups.iter().find(|u| u.name == "bash").unwrap();
        assert_eq!(
            (bash.from.as_str(), bash.to.as_str()),
            ("5.1.8-6.el9_1", "5.1.8-9.el9")
        );
        let ssl = ups.iter().find(|u| u.name == "openssl-libs").unwrap();
        assert_eq!(ssl.from, "1:3.0.7-24.el9");
    }

    #[test]
    fn needs_restarting_needs_both_exit_code_and_message() {
        let yes = fixture("needs-restarting-r.reboot.txt");
        assert!(reboot_required_from_needs_restarting(Some(1), &yes));
        assert!(!reboot_required_from_needs_restarting(Some(0), &yes));
        assert!(!reboot_required_from_needs_restarting(
            Some(1),
            "No such command: needs-restarting."
        ));
    }
}
