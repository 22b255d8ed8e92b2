//! `KillProcess`: sends one signal to one process, guarded against mistakes: never pid 1
//! or below (init, process groups, everything), never the agent itself, and only when the
//! process's name (`/proc/PID/comm`) is the one the caller expected, checked when the job
//! is requested and again right before the signal (pids get reused).

use ops_proto::v1::{job_result, KillProcess, KillResult};
use rustix::process::{getpid, kill_process, Pid, Signal};

use super::{note, Report};
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
}

/// Signals a caller may name (with or without `SIG`, any case); empty means TERM.
pub fn parse_signal(name: &str) -> Option<(&'static str, Signal)> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match bare {
        "" | "TERM" => ("TERM", Signal::TERM),
        "KILL" => ("KILL", Signal::KILL),
        "HUP" => ("HUP", Signal::HUP),
        "INT" => ("INT", Signal::INT),
        "QUIT" => ("QUIT", Signal::QUIT),
        "USR1" => ("USR1", Signal::USR1),
        "USR2" => ("USR2", Signal::USR2),
        "STOP" => ("STOP", Signal::STOP),
        "CONT" => ("CONT", Signal::CONT),
        _ => return None,
    })
}

/// Whether the kernel's (possibly truncated) name is the expected one.
pub fn name_matches(comm: &str, expected: &str) -> bool {
    comm == expected
        || (expected.len() > COMM_MAX
            && comm.len() == COMM_MAX
            && expected.as_bytes().starts_with(comm.as_bytes()))
}

fn read_comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// Checks that may refuse a request: pid range, the agent itself, the name.
pub fn check_target(
    pid: i32,
    expected_name: &str,
    own_pid: i32,
    comm: Option<String>,
) -> Result<String, String> {
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
    let comm = comm.ok_or_else(|| format!("no process with pid {pid} on this host"))?;
    if !name_matches(&comm, expected_name) {
        return Err(format!(
            "refusing to signal pid {pid}: it is named {comm:?}, not {expected_name:?} (the pid may have been reused)"
        ));
    }
    Ok(comm)
}

pub fn prepare(spec: &KillProcess) -> Result<KillPlan, String> {
    let (signal_name, signal) = parse_signal(&spec.signal).ok_or_else(|| {
        format!(
            "unknown signal {:?}: use TERM, KILL, HUP, INT, QUIT, USR1, USR2, STOP or CONT",
            spec.signal
        )
    })?;
    let own = getpid().as_raw_nonzero().get();
    check_target(spec.pid, &spec.expected_name, own, read_comm(spec.pid))?;
    Ok(KillPlan {
        pid: spec.pid,
        expected_name: spec.expected_name.clone(),
        signal_name,
        signal,
    })
}

pub async fn execute(plan: KillPlan, ctx: &mut JobCtx) -> Result<Report, Report> {
    let own = getpid().as_raw_nonzero().get();
    // Again: the job may have waited in the queue, and the pid may have changed hands.
    let comm = check_target(plan.pid, &plan.expected_name, own, read_comm(plan.pid))
        .map_err(Report::failed)?;
    let pid = Pid::from_raw(plan.pid)
        .ok_or_else(|| Report::failed(format!("invalid pid {}", plan.pid)))?;
    kill_process(pid, plan.signal).map_err(|e| {
        Report::failed(format!(
            "cannot send SIG{} to pid {} ({comm}): {e}",
            plan.signal_name, plan.pid
        ))
    })?;
    note(
        ctx,
        &format!("sent SIG{} to pid {} ({comm})", plan.signal_name, plan.pid),
    )
    .await?;
    Ok(Report::succeeded(
        None,
        Some(job_result::Kind::Kill(KillResult {
            pid: plan.pid,
            name: comm,
            signal: plan.signal_name.into(),
        })),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_reason() {
        let comm = || Some("stress".to_string());
        assert!(check_target(1, "init", 99, comm())
            .unwrap_err()
            .contains("pid 1"));
        assert!(check_target(-5, "x", 99, comm())
            .unwrap_err()
            .contains("never signalled"));
        assert!(check_target(99, "stress", 99, comm())
            .unwrap_err()
            .contains("agent itself"));
        assert!(check_target(42, "", 99, comm())
            .unwrap_err()
            .contains("expected_name is required"));
        assert!(check_target(42, "stress", 99, None)
            .unwrap_err()
            .contains("no process"));
        assert!(check_target(42, "nginx", 99, comm())
            .unwrap_err()
            .contains("reused"));
        assert_eq!(check_target(42, "stress", 99, comm()).unwrap(), "stress");
    }

    #[test]
    fn truncated_kernel_names_match_long_expected_names() {
        assert!(name_matches("very-long-proce", "very-long-process-name"));
        assert!(!name_matches("very-long-proce", "very-long-proc"));
        assert!(!name_matches("other", "very-long-process-name"));
    }

    #[test]
    fn signals_parse_with_or_without_prefix() {
        assert_eq!(parse_signal("").map(|s| s.0), Some("TERM"));
        assert_eq!(parse_signal("sigkill").map(|s| s.0), Some("KILL"));
        assert_eq!(parse_signal("HUP").map(|s| s.0), Some("HUP"));
        assert!(parse_signal("SEGV").is_none());
    }
}
