//! `KillProcess`: sends one signal to one process, and only to the process the caller
//! meant. It never signals pid 1 or below (init, process groups, everything), the agent
//! itself or any of its threads, a thread id of any process (only thread-group leaders),
//! a process whose name is on `[kill] denied_names`, or a signal not on
//! `[kill] allowed_signals`.
//!
//! A pid names a process only until it exits; its number may then be reused. So the
//! process is named by (pid, start time), the start time read when the job is requested;
//! right before the signal the agent opens a pidfd (which then names that process and
//! no other, even if it exits) and reads the start time again: when it differs from the
//! one checked, or the job was cancelled meanwhile, nothing is sent.

use ops_proto::v1::{job_result, KillProcess, KillResult};
use rustix::process::{getpid, pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use super::{note, Outcome, Report};
use crate::collect::processes::{self, Identity};
use crate::jobs::config::{parse_signal, KillConfig, SIGNAL_NAMES};
use crate::jobs::runner::JobCtx;

/// The kernel keeps at most this many bytes of a process name.
const COMM_MAX: usize = 15;

/// A checked kill request.
#[derive(Debug)]
pub struct KillPlan {
    pid: i32,
    expected_name: String,
    signal_name: &'static str,
    signal: Signal,
    /// The start time of the process checked when the job was requested.
    starttime: u64,
}

/// Whether the kernel's (possibly truncated) name is the expected one.
pub fn name_matches(comm: &str, expected: &str) -> bool {
    comm == expected
        || (expected.len() > COMM_MAX
            && comm.len() == COMM_MAX
            && expected.as_bytes().starts_with(comm.as_bytes()))
}

fn own_pid() -> i32 {
    getpid().as_raw_nonzero().get()
}

/// Checks that may refuse a request, over what /proc said about `pid` (`None`: no such
/// process or thread).
pub fn check_target(
    pid: i32,
    expected_name: &str,
    own_pid: i32,
    found: Option<&Identity>,
    denied_names: &[String],
) -> Result<(), String> {
    if pid <= 1 {
        return Err(format!(
            "refusing to signal pid {pid}: pid 1 (init) and lower are never signalled"
        ));
    }
    if pid == own_pid {
        return Err(format!(
            "refusing to signal pid {pid}: it is the agent itself"
        ));
    }
    if expected_name.is_empty() {
        return Err(
            "expected_name is required: the process's name guards against a reused pid".into(),
        );
    }
    let id = found.ok_or_else(|| format!("no process with pid {pid} on this host"))?;
    if id.tgid == own_pid {
        return Err(format!(
            "refusing to signal {pid}: it is a thread of the agent itself"
        ));
    }
    if id.tgid != pid {
        return Err(format!(
            "refusing to signal {pid}: it is a thread of process {}, not a process; \
             only whole processes (thread-group leaders) are signalled",
            id.tgid
        ));
    }
    if !name_matches(&id.name, expected_name) {
        return Err(format!(
            "refusing to signal pid {pid}: it is named {:?}, not {expected_name:?} (the pid may have been reused)",
            id.name
        ));
    }
    if let Some(d) = denied_names.iter().find(|d| name_matches(&id.name, d)) {
        return Err(format!(
            "refusing to signal pid {pid} ({}): {d:?} is on this agent's [kill] denied_names",
            id.name
        ));
    }
    Ok(())
}

pub fn prepare(spec: &KillProcess, cfg: &KillConfig) -> Result<KillPlan, String> {
    let (signal_name, signal) = parse_signal(&spec.signal).ok_or_else(|| {
        format!(
            "unknown signal {:?}: use one of {}",
            spec.signal,
            cfg.allowed_signals.join(", ")
        )
    })?;
    if !cfg.allows_signal(signal_name) {
        return Err(format!(
            "signal {signal_name} is not allowed on this agent; [kill] allowed_signals: {} (known: {})",
            cfg.allowed_signals.join(", "),
            SIGNAL_NAMES.join(", ")
        ));
    }
    let found = processes::identity(spec.pid);
    check_target(
        spec.pid,
        &spec.expected_name,
        own_pid(),
        found.as_ref(),
        &cfg.denied_names,
    )?;
    let starttime = found.map(|id| id.starttime).unwrap_or_default();
    Ok(KillPlan {
        pid: spec.pid,
        expected_name: spec.expected_name.clone(),
        signal_name,
        signal,
        starttime,
    })
}

pub async fn execute(plan: KillPlan, cfg: &KillConfig, ctx: &mut JobCtx) -> Result<Report, Report> {
    let pid = plan.pid;
    let nothing_sent = |why: String| Report::failed(format!("{why}; nothing was signalled"));
    // Again: the job may have waited in the queue, and the pid may have changed hands.
    let before = processes::identity(pid);
    check_target(pid, &plan.expected_name, own_pid(), before.as_ref(), &cfg.denied_names)
        .map_err(nothing_sent)?;
    let before = before.ok_or_else(|| nothing_sent(format!("pid {pid} is gone")))?;
    if before.starttime != plan.starttime {
        return Err(nothing_sent(format!(
            "pid {pid} now belongs to a process started at tick {}, not the one checked when \
             the job was requested (tick {}): the pid was reused",
            before.starttime, plan.starttime
        )));
    }
    let raw = Pid::from_raw(pid).ok_or_else(|| nothing_sent(format!("invalid pid {pid}")))?;
    let fd = pidfd_open(raw, PidfdFlags::empty())
        .map_err(|e| nothing_sent(format!("cannot open pid {pid} ({}): {e}", before.name)))?;
    // From here the pidfd names one process for good; this read tells whether it is the
    // one checked above (an exit and reuse between the check and the open would show).
    let after = processes::identity(pid);
    if after.as_ref() != Some(&before) {
        return Err(nothing_sent(format!(
            "pid {pid} changed while it was being checked (was {before:?}, now {after:?})"
        )));
    }
    if let Some(interrupt) = ctx.check() {
        return Err(Report {
            outcome: Outcome::Interrupted(interrupt),
            exit_code: None,
            result: None,
        });
    }
    pidfd_send_signal(&fd, plan.signal).map_err(|e| {
        Report::failed(format!(
            "cannot send SIG{} to pid {pid} ({}): {e}",
            plan.signal_name, before.name
        ))
    })?;
    note(
        ctx,
        &format!("sent SIG{} to pid {pid} ({})", plan.signal_name, before.name),
    )
    .await?;
    Ok(Report::succeeded(
        None,
        Some(job_result::Kind::Kill(KillResult {
            pid,
            name: before.name,
            signal: plan.signal_name.into(),
        })),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(name: &str, tgid: i32) -> Identity {
        Identity {
            name: name.into(),
            starttime: 1000,
            tgid,
        }
    }

    #[test]
    fn refusals_name_the_reason() {
        let stress = id("stress", 42);
        let c = |pid, name: &str, found: Option<&Identity>| {
            check_target(pid, name, 99, found, &KillConfig::default().denied_names)
        };
        assert!(c(1, "init", Some(&stress)).unwrap_err().contains("pid 1"));
        assert!(c(-5, "x", Some(&stress))
            .unwrap_err()
            .contains("never signalled"));
        assert!(c(99, "stress", Some(&stress))
            .unwrap_err()
            .contains("agent itself"));
        assert!(c(42, "", Some(&stress))
            .unwrap_err()
            .contains("expected_name is required"));
        assert!(c(42, "stress", None).unwrap_err().contains("no process"));
        assert!(c(42, "nginx", Some(&stress))
            .unwrap_err()
            .contains("reused"));
        c(42, "stress", Some(&stress)).unwrap();
    }

    #[test]
    fn threads_are_refused_and_the_agents_own_most_clearly() {
        let denied: &[String] = &[];
        let agent_thread = id("tokio-runtime-w", 99);
        let err = check_target(101, "tokio-runtime-w", 99, Some(&agent_thread), denied);
        assert!(err.unwrap_err().contains("thread of the agent itself"));
        let other_thread = id("worker", 500);
        let err = check_target(501, "worker", 99, Some(&other_thread), denied);
        assert!(err.unwrap_err().contains("thread of process 500"));
    }

    #[test]
    fn denied_names_match_the_kernels_truncated_names() {
        let journald = id("systemd-journal", 300);
        let denied = KillConfig::default().denied_names;
        let err = check_target(300, "systemd-journald", 99, Some(&journald), &denied);
        assert!(err.unwrap_err().contains("denied_names"));
        let sshd = id("sshd", 301);
        assert!(check_target(301, "sshd", 99, Some(&sshd), &denied).is_err());
        assert!(check_target(301, "sshd", 99, Some(&sshd), &[]).is_ok());
    }

    #[test]
    fn truncated_kernel_names_match_long_expected_names() {
        assert!(name_matches("very-long-proce", "very-long-process-name"));
        assert!(!name_matches("very-long-proce", "very-long-proc"));
        assert!(!name_matches("other", "very-long-process-name"));
    }

    #[test]
    fn signals_outside_the_config_are_refused() {
        let spec = |signal: &str| KillProcess {
            pid: 2,
            signal: signal.into(),
            expected_name: "x".into(),
        };
        let cfg = KillConfig::default();
        let err = prepare(&spec("STOP"), &cfg).unwrap_err();
        assert!(err.contains("not allowed") && err.contains("allowed_signals"), "{err}");
        let err = prepare(&spec("SEGV"), &cfg).unwrap_err();
        assert!(err.contains("unknown signal"), "{err}");
    }

    #[test]
    fn signals_parse_with_or_without_prefix() {
        assert_eq!(parse_signal("").map(|s| s.0), Some("TERM"));
        assert_eq!(parse_signal("sigkill").map(|s| s.0), Some("KILL"));
        assert_eq!(parse_signal("HUP").map(|s| s.0), Some("HUP"));
        assert!(parse_signal("SEGV").is_none());
    }
}
