//! `Patch`: package updates with the host's own package manager (apt-get, dnf or yum).
//!
//! Every run first asks the package manager for its plan (`apt-get -s upgrade`,
//! `dnf/yum check-update`), which is what the result lists. `simulate` stops there and
//! changes nothing (not even the package index). A real run refreshes the index, then
//! upgrades. Security-only: dnf/yum `--security`; on apt, the plan's packages whose
//! origin is the distribution's security archive, upgraded with
//! `apt-get install --only-upgrade` (apt-get has no security switch). Excludes go to
//! dnf/yum as `--exclude`; on apt they are left out of an `--only-upgrade` list (holds
//! would outlive the job). `[jobs] apt_config` points apt-get at another apt layout
//! through `APT_CONFIG`.
//!
//! `[jobs] patch_mode = "simulate"` turns every request into a simulation here, in
//! `prepare`, before anything runs: such an agent must never install a package, whatever
//! a caller asks. The result's `simulated` says so either way.

use std::path::{Path, PathBuf};

use ops_proto::v1::{job_result, PackageChange, Patch, PatchResult};

use super::glob::Glob;
use super::patch_parse::{self, PlannedUpdate};
use super::{find_in_path, note, require_success, run, Report};
use crate::jobs::config::{JobsConfig, PatchMode};
use crate::jobs::runner::{Cmd, JobCtx};

/// rpm query format: `name.arch [epoch:]version-release`.
const RPM_QF: &str = "%{NAME}.%{ARCH} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Apt,
    Dnf,
    Yum,
}

impl PackageManager {
    pub fn name(self) -> &'static str {
        match self {
            PackageManager::Apt => "apt",
            PackageManager::Dnf => "dnf",
            PackageManager::Yum => "yum",
        }
    }
}

/// A checked patch request.
#[derive(Debug)]
pub struct PatchPlan {
    pm: PackageManager,
    program: PathBuf,
    /// The request, with `simulate` forced on under `patch_mode = "simulate"`.
    spec: Patch,
    /// `[jobs] patch_mode`.
    mode: PatchMode,
    /// The request asked to install and `patch_mode = "simulate"` made it a simulation.
    forced_simulation: bool,
    excludes: Vec<Glob>,
    /// `[jobs] apt_config`, given to apt-get as `APT_CONFIG`.
    apt_config: Option<PathBuf>,
}

/// The host's package manager: apt-get, else dnf, else yum (where yum is dnf's alias).
pub fn detect() -> Option<(PackageManager, PathBuf)> {
    [
        ("apt-get", PackageManager::Apt),
        ("dnf", PackageManager::Dnf),
        ("yum", PackageManager::Yum),
    ]
    .into_iter()
    .find_map(|(bin, pm)| find_in_path(bin).map(|p| (pm, p)))
}

pub fn prepare(spec: &Patch, cfg: &JobsConfig) -> Result<PatchPlan, String> {
    let mut excludes = Vec::new();
    for e in &spec.exclude {
        if e.starts_with('-')
            || !e
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-:*?[]~^!".contains(c))
        {
            return Err(format!("patch exclude {e:?} is not a package name or glob"));
        }
        excludes.push(Glob::new(e).map_err(|m| format!("patch exclude: {m}"))?);
    }
    let (pm, program) = detect()
        .ok_or("no supported package manager (apt-get, dnf or yum) is installed on this host")?;
    let (spec, forced_simulation) = effective_request(spec, cfg.patch_mode);
    Ok(PatchPlan {
        pm,
        program,
        spec,
        mode: cfg.patch_mode,
        forced_simulation,
        excludes,
        apt_config: cfg.apt_config.clone(),
    })
}

/// The request as this agent runs it, and whether `patch_mode` turned an install into a
/// simulation.
pub fn effective_request(spec: &Patch, mode: PatchMode) -> (Patch, bool) {
    let forced = mode == PatchMode::Simulate && !spec.simulate;
    let spec = Patch {
        simulate: spec.simulate || mode == PatchMode::Simulate,
        ..spec.clone()
    };
    (spec, forced)
}

pub async fn execute(plan: PatchPlan, ctx: &mut JobCtx) -> Result<Report, Report> {
    if plan.mode == PatchMode::Simulate {
        note(
            ctx,
            &format!(
                "patch_mode = simulate: nothing installed; this agent only runs the package \
                 manager's simulation{}",
                if plan.forced_simulation {
                    ", though the request asked to install"
                } else {
                    ""
                }
            ),
        )
        .await?;
    }
    note(
        ctx,
        &format!(
            "patch with {} ({}){}{}",
            plan.pm.name(),
            plan.program.display(),
            if plan.spec.security_only {
                ", security updates only"
            } else {
                ""
            },
            if plan.spec.simulate {
                ", simulation: nothing will change"
            } else {
                ""
            },
        ),
    )
    .await?;
    match plan.pm {
        PackageManager::Apt => apt(&plan, ctx).await,
        PackageManager::Dnf | PackageManager::Yum => rpm_family(&plan, ctx).await,
    }
}

/// A package manager command with an environment that keeps output parseable and
/// prompts away, and the configured apt layout when there is one.
fn pm_cmd(plan: &PatchPlan) -> Cmd {
    let cmd = match &plan.apt_config {
        Some(conf) if plan.pm == PackageManager::Apt => {
            Cmd::new(&plan.program).env("APT_CONFIG", conf)
        }
        _ => Cmd::new(&plan.program),
    };
    cmd
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("APT_LISTCHANGES_FRONTEND", "none")
        .env("NEEDRESTART_MODE", "a")
}

/// Keeps the updates the request asks for.
pub fn select(
    plan: &[PlannedUpdate],
    security_only: bool,
    excludes: &[Glob],
) -> Vec<PlannedUpdate> {
    plan.iter()
        .filter(|u| !security_only || u.security)
        .filter(|u| !excludes.iter().any(|g| g.matches(&u.name)))
        .cloned()
        .collect()
}

fn result(plan: &PatchPlan, updates: &[PlannedUpdate], reboot_required: bool) -> job_result::Kind {
    let pm = plan.pm;
    job_result::Kind::Patch(PatchResult {
        package_manager: pm.name().into(),
        packages: updates
            .iter()
            .map(|u| PackageChange {
                name: u.name.clone(),
                from_version: u.from.clone(),
                to_version: u.to.clone(),
            })
            .collect(),
        reboot_required,
        simulated: plan.spec.simulate,
    })
}

async fn apt(plan: &PatchPlan, ctx: &mut JobCtx) -> Result<Report, Report> {
    if !plan.spec.simulate {
        let f = run(ctx, &pm_cmd(plan).args(["-q", "update"])).await?;
        require_success(&f, "apt-get update")?;
    }
    let f = run(ctx, &pm_cmd(plan).args(["-s", "upgrade"]).capture()).await?;
    require_success(&f, "apt-get -s upgrade")?;
    let all = patch_parse::parse_apt_simulation(&String::from_utf8_lossy(&f.stdout));
    let selected = select(&all, plan.spec.security_only, &plan.excludes);
    note(
        ctx,
        &format!(
            "{} of {} available upgrades selected",
            selected.len(),
            all.len()
        ),
    )
    .await?;
    if plan.spec.simulate || selected.is_empty() {
        return Ok(Report::succeeded(
            f.status.code(),
            Some(result(plan, &selected, apt_reboot_required())),
        ));
    }
    let mut cmd = pm_cmd(plan).args([
        "-y",
        "-q",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]);
    cmd = if selected.len() == all.len() {
        cmd.arg("upgrade")
    } else {
        cmd.args(["install", "--only-upgrade"])
            .args(selected.iter().map(|u| u.name.clone()))
    };
    let f = run(ctx, &cmd).await?;
    let r = result(plan, &selected, apt_reboot_required());
    require_success(&f, "apt-get upgrade").map_err(|rep| rep.with_result(r.clone()))?;
    Ok(Report::succeeded(f.status.code(), Some(r)))
}

/// Debian and Ubuntu packages that need a reboot touch this file.
fn apt_reboot_required() -> bool {
    Path::new("/run/reboot-required").exists() || Path::new("/var/run/reboot-required").exists()
}

async fn rpm_family(plan: &PatchPlan, ctx: &mut JobCtx) -> Result<Report, Report> {
    let mut filters: Vec<String> = Vec::new();
    if plan.spec.security_only {
        filters.push("--security".into());
    }
    filters.extend(plan.spec.exclude.iter().map(|e| format!("--exclude={e}")));

    // check-update: exit 100 = updates available, 0 = none, anything else = error.
    let f = run(
        ctx,
        &pm_cmd(plan)
            .arg("check-update")
            .args(filters.clone())
            .capture(),
    )
    .await?;
    if !matches!(f.status.code(), Some(0 | 100)) {
        require_success(&f, &format!("{} check-update", plan.pm.name()))?;
    }
    let listing: Vec<_> = patch_parse::parse_check_update(&String::from_utf8_lossy(&f.stdout))
        .into_iter()
        .filter(|(name_arch, _, _)| {
            let name = name_arch
                .rsplit_once('.')
                .map(|(n, _)| n)
                .unwrap_or(name_arch);
            !plan.excludes.iter().any(|g| g.matches(name))
        })
        .collect();
    let installed = if listing.is_empty() {
        Default::default()
    } else {
        let q = Cmd::new("rpm")
            .env("LC_ALL", "C")
            .args(["-q", "--qf", RPM_QF])
            .args(listing.iter().map(|l| l.0.clone()))
            .capture();
        patch_parse::parse_rpm_query(&String::from_utf8_lossy(&run(ctx, &q).await?.stdout))
    };
    let updates = patch_parse::rpm_updates(&listing, &installed);
    note(ctx, &format!("{} updates selected", updates.len())).await?;
    if plan.spec.simulate || updates.is_empty() {
        let reboot = rpm_reboot_required(plan, ctx).await?;
        return Ok(Report::succeeded(
            f.status.code(),
            Some(result(plan, &updates, reboot)),
        ));
    }
    let verb = if plan.pm == PackageManager::Yum {
        "update"
    } else {
        "upgrade"
    };
    let f = run(ctx, &pm_cmd(plan).arg("-y").arg(verb).args(filters)).await?;
    let reboot = rpm_reboot_required(plan, ctx).await?;
    let r = result(plan, &updates, reboot);
    require_success(&f, &format!("{} {verb}", plan.pm.name()))
        .map_err(|rep| rep.with_result(r.clone()))?;
    Ok(Report::succeeded(f.status.code(), Some(r)))
}

/// `needs-restarting -r` (yum-utils / dnf-utils), else `dnf needs-restarting -r`.
async fn rpm_reboot_required(plan: &PatchPlan, ctx: &mut JobCtx) -> Result<bool, Report> {
    let cmd = match (find_in_path("needs-restarting"), plan.pm) {
        (Some(nr), _) => Cmd::new(nr).arg("-r"),
        (None, PackageManager::Dnf) => Cmd::new(&plan.program).args(["needs-restarting", "-r"]),
        (None, _) => {
            note(
                ctx,
                "needs-restarting is not installed: cannot tell whether a reboot is required",
            )
            .await?;
            return Ok(false);
        }
    };
    let f = run(ctx, &cmd.env("LC_ALL", "C").capture()).await?;
    Ok(patch_parse::reboot_required_from_needs_restarting(
        f.status.code(),
        &String::from_utf8_lossy(&f.stdout),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn up(name: &str, security: bool) -> PlannedUpdate {
        PlannedUpdate {
            name: name.into(),
            from: "1".into(),
            to: "2".into(),
            origin: String::new(),
            security,
        }
    }

    #[test]
    fn selection_applies_security_only_and_excludes() {
        let plan = [up("openssl", true), up("kernel", true), up("tzdata", false)];
        let names = |v: Vec<PlannedUpdate>| v.into_iter().map(|u| u.name).collect::<Vec<_>>();
        assert_eq!(names(select(&plan, true, &[])), ["openssl", "kernel"]);
        assert_eq!(
            names(select(&plan, false, &[Glob::new("kern*").unwrap()])),
            ["openssl", "tzdata"]
        );
        assert_eq!(
            names(select(&plan, true, &[Glob::new("openssl").unwrap()])),
            ["kernel"]
        );
    }

    #[test]
    fn patch_mode_simulate_turns_every_request_into_a_simulation() {
        let install = Patch {
            security_only: true,
            exclude: vec!["kernel*".into()],
            ..Default::default()
        };
        let simulate = Patch {
            simulate: true,
            ..install.clone()
        };
        let (run, forced) = effective_request(&install, PatchMode::Simulate);
        assert!(run.simulate && forced);
        assert_eq!(
            (run.security_only, run.exclude.clone()),
            (true, install.exclude.clone())
        );
        let (run, forced) = effective_request(&simulate, PatchMode::Simulate);
        assert!(run.simulate && !forced, "asked for: not forced");
        let (run, forced) = effective_request(&install, PatchMode::Apply);
        assert!(!run.simulate && !forced);
        let (run, forced) = effective_request(&simulate, PatchMode::Apply);
        assert!(run.simulate && !forced);
    }

    #[test]
    fn excludes_that_look_like_options_are_refused() {
        let bad = Patch {
            exclude: vec!["--all".into()],
            ..Default::default()
        };
        assert!(prepare(&bad, &JobsConfig::default()).unwrap_err().contains("not a package name"));
    }
}
