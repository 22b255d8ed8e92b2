//! `RunAction`: a named argv list from the agent's own config (`[[actions]]`), never a
//! command from the request. Runs with a minimal environment (PATH, HOME, USER, LOGNAME,
//! LANG, then the action's `env`), not the agent's, in the action's `cwd`.
//!
//! Nothing is looked up through a `PATH` the action's `env` can set: a bare argv[0] is
//! resolved with the agent's own PATH when the job is requested, and `run_as` switches
//! user inside the child itself (gid, then uid, supplementary groups cleared) between
//! fork and exec, with no helper program. An application user who can write to a folder
//! the action's PATH names must never get a program of theirs run as root. `run_as`
//! needs the agent to run as root; otherwise such an action is refused rather than run
//! as the agent's own user. Users are looked up in `/etc/passwd` (local accounts only).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ops_proto::v1::job_result;

use super::{find_in_path, run, Outcome, Report};
use crate::collect::users::{self, Account};
use crate::jobs::config::ActionConfig;
use crate::jobs::runner::{Cmd, JobCtx, RunAs};

/// The PATH actions start with (an action's `env` may replace it for what the action
/// itself runs, never for finding the action's program).
const ACTION_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A checked action request.
#[derive(Debug)]
pub struct ActionPlan {
    action: ActionConfig,
    /// argv[0] as it will be executed: absolute when it was a bare name.
    program: PathBuf,
    account: Option<Account>,
}

impl ActionPlan {
    pub fn timeout_seconds(&self) -> Option<u64> {
        self.action.timeout_seconds
    }
}

pub fn prepare(name: &str, actions: &[ActionConfig]) -> Result<ActionPlan, String> {
    let action = actions
        .iter()
        .find(|a| a.name == name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
            format!(
                "unknown action {name:?}; this agent's actions are: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        })?;
    let account = match &action.run_as {
        None => None,
        Some(user) => {
            if !rustix::process::geteuid().is_root() {
                return Err(format!(
                    "action {name} runs as {user}, which needs the agent to run as root; it does not"
                ));
            }
            let found = users::account_named(user)
                .map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
            Some(found.ok_or_else(|| {
                format!("action {name} runs as {user}, who has no local account here")
            })?)
        }
    };
    if let Some(cwd) = &action.cwd {
        if !cwd.is_dir() {
            return Err(format!(
                "action {name}: its cwd {} is not a directory on this host",
                cwd.display()
            ));
        }
    }
    let program = resolve_program(name, action.argv.first().map(String::as_str).unwrap_or(""))?;
    Ok(ActionPlan {
        action,
        program,
        account,
    })
}

/// argv[0] as executed: a path (with a '/') as written, a bare name found in the agent's
/// own PATH now, so that the child's PATH is never searched for it.
fn resolve_program(action: &str, argv0: &str) -> Result<PathBuf, String> {
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    find_in_path(argv0).ok_or_else(|| {
        format!(
            "action {action}: {argv0:?} is not an executable in the agent's PATH; \
             install it or name it by its absolute path in [[actions]] argv"
        )
    })
}

/// The action's command: its resolved program and arguments, switching to the account's
/// uid and gid when it runs as another user.
pub fn command(plan: &ActionPlan) -> Cmd {
    let a = &plan.action;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), ACTION_PATH.into());
    env.insert("LANG".into(), "C.UTF-8".into());
    let (home, user) = match &plan.account {
        Some(acc) => (acc.home.clone(), acc.name.clone()),
        None => (
            std::env::var("HOME").unwrap_or_else(|_| "/".into()),
            std::env::var("USER").unwrap_or_else(|_| "root".into()),
        ),
    };
    env.insert("HOME".into(), home);
    env.insert("LOGNAME".into(), user.clone());
    env.insert("USER".into(), user);
    env.extend(a.env.clone());

    let mut cmd = Cmd::new(plan.program.clone()).args(a.argv.iter().skip(1));
    cmd.run_as = plan.account.as_ref().map(|acc| RunAs {
        uid: acc.uid,
        gid: acc.gid,
    });
    cmd.env_clear = true;
    cmd.env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    cmd.cwd = a.cwd.clone();
    cmd
}

pub async fn execute(plan: ActionPlan, ctx: &mut JobCtx) -> Result<Report, Report> {
    let f = run(ctx, &command(&plan)).await?;
    let outcome = if f.success() {
        Outcome::Succeeded
    } else {
        Outcome::Failed(format!(
            "action {} failed: {}",
            plan.action.name,
            f.describe()
        ))
    };
    Ok(Report {
        outcome,
        exit_code: f.status.code(),
        result: None::<job_result::Kind>,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn run_as_switches_ids_in_the_child_with_a_minimal_environment() {
        let action = ActionConfig {
            name: "who".into(),
            argv: vec!["id".into(), "-u".into()],
            cwd: None,
            env: BTreeMap::from([
                ("EXTRA".into(), "1".into()),
                ("PATH".into(), "/home/app/bin:/usr/bin".into()),
            ]),
            timeout_seconds: None,
            run_as: Some("nobody".into()),
        };
        let plan = ActionPlan {
            program: resolve_program("who", "id").unwrap(),
            action,
            account: users::find_account(PASSWD, "nobody"),
        };
        let cmd = command(&plan);
        assert!(Path::new(&cmd.program).is_absolute(), "{cmd:?}");
        assert_eq!(cmd.args, ["-u"]);
        assert_eq!(cmd.run_as, Some(RunAs { uid: 65534, gid: 65534 }));
        assert!(cmd.display().starts_with("(uid 65534 gid 65534) /"), "{}", cmd.display());
        assert!(cmd.env_clear);
        let keys: Vec<_> = cmd
            .env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(keys, ["EXTRA", "HOME", "LANG", "LOGNAME", "PATH", "USER"]);
    }

    #[test]
    fn a_bare_program_is_found_in_the_agents_path_and_a_missing_one_refused() {
        assert!(resolve_program("a", "sh").unwrap().is_absolute());
        assert_eq!(
            resolve_program("a", "./run.sh").unwrap(),
            PathBuf::from("./run.sh")
        );
        let err = resolve_program("a", "no-such-program-here").unwrap_err();
        assert!(err.contains("absolute path"), "{err}");
    }
}
