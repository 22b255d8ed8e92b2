//! `RunAction`: a named argv list from the agent's own config (`[[actions]]`), never a
//! command from the request. Runs with a minimal environment (PATH, HOME, USER, LOGNAME,
//! LANG, then the action's `env`), not the agent's, in the action's `cwd`.
//!
//! `run_as` switches user with util-linux `setpriv --reuid --regid --init-groups`: no PAM
//! session and no shell in between, the same pid (so cancel reaches it). It needs the
//! agent to run as root; otherwise such an action is refused rather than run as the
//! agent's own user. Users are looked up in `/etc/passwd` (local accounts only).

use std::collections::BTreeMap;

use ops_proto::v1::job_result;

use super::{run, Outcome, Report};
use crate::jobs::config::ActionConfig;
use crate::jobs::runner::{Cmd, JobCtx};

/// The PATH actions start with (an action's `env` may replace it).
const ACTION_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A local account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Finds `name` in passwd(5) text.
pub fn lookup_account(passwd: &str, name: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(Account {
            name: name.to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
        })
    })
}

/// A checked action request.
#[derive(Debug)]
pub struct ActionPlan {
    action: ActionConfig,
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
            let passwd = std::fs::read_to_string("/etc/passwd")
                .map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
            Some(lookup_account(&passwd, user).ok_or_else(|| {
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
    Ok(ActionPlan { action, account })
}

/// The action's command: its argv, behind `setpriv` when it runs as another user.
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

    let mut argv = a.argv.iter();
    let mut cmd = match &plan.account {
        Some(acc) => Cmd::new("setpriv")
            .arg(format!("--reuid={}", acc.uid))
            .arg(format!("--regid={}", acc.gid))
            .arg("--init-groups")
            .arg("--")
            .args(argv.by_ref()),
        None => {
            let program = argv.next().cloned().unwrap_or_default();
            Cmd::new(program).args(argv.by_ref())
        }
    };
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

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn accounts_are_found_by_exact_name() {
        let n = lookup_account(PASSWD, "nobody").unwrap();
        assert_eq!(
            (n.uid, n.gid, n.home.as_str()),
            (65534, 65534, "/nonexistent")
        );
        assert!(lookup_account(PASSWD, "nob").is_none());
    }

    #[test]
    fn run_as_goes_through_setpriv_with_a_minimal_environment() {
        let action = ActionConfig {
            name: "who".into(),
            argv: vec!["id".into(), "-u".into()],
            cwd: None,
            env: BTreeMap::from([("EXTRA".into(), "1".into())]),
            timeout_seconds: None,
            run_as: Some("nobody".into()),
        };
        let plan = ActionPlan {
            action,
            account: lookup_account(PASSWD, "nobody"),
        };
        let cmd = command(&plan);
        assert_eq!(
            cmd.display(),
            "setpriv --reuid=65534 --regid=65534 --init-groups -- id -u"
        );
        assert!(cmd.env_clear);
        let keys: Vec<_> = cmd
            .env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(keys, ["EXTRA", "HOME", "LANG", "LOGNAME", "PATH", "USER"]);
    }
}
