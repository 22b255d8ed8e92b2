//! The rollout's decisions as a pure state machine: which host starts next, when the
//! error threshold stops the rollout, and the final state of every host. No I/O: the
//! executor feeds it outcomes and asks it what to do, so every rule here is unit-tested
//! without agents, AWS or a clock.
//!
//! It must never leave a host without a final state: `finish` closes the run and turns
//! every host that did not start into `not started`, with the reason.

use serde::{Deserialize, Serialize};

use super::policy::Policy;

/// Where one host ends (or is, while the run goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Unreachable,
    NotStarted,
    Skipped,
    Cancelled,
}

impl HostState {
    /// Counts toward `--max-errors`.
    pub fn is_error(self) -> bool {
        matches!(self, HostState::Failed | HostState::TimedOut | HostState::Unreachable)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, HostState::Pending | HostState::Running)
    }

    pub fn label(self) -> &'static str {
        match self {
            HostState::Pending => "pending",
            HostState::Running => "running",
            HostState::Succeeded => "succeeded",
            HostState::Failed => "failed",
            HostState::TimedOut => "timed out",
            HostState::Unreachable => "unreachable",
            HostState::NotStarted => "not started",
            HostState::Skipped => "skipped",
            HostState::Cancelled => "cancelled",
        }
    }
}

/// One host of the plan with its state and why it is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedHost {
    pub name: String,
    pub canary: bool,
    pub state: HostState,
    pub reason: String,
}

/// What the executor should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Start this host (index into `hosts()`); it is now `running`.
    Start(usize),
    /// Nothing may start now; wait for a running host to end.
    Wait,
    /// Nothing runs and nothing more will start: call `finish`.
    Done,
}

/// Why the rollout stopped starting hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// Errors exceeded the threshold.
    ErrorThreshold { errors: usize, threshold: usize },
    /// The operator interrupted the run (Ctrl-C) or a deadline ran out.
    Interrupted(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::ErrorThreshold { errors, threshold } => {
                write!(f, "stopped: {errors} host(s) failed, more than --max-errors allows ({threshold})")
            }
            StopReason::Interrupted(why) => write!(f, "stopped: {why}"),
        }
    }
}

/// A rollout over a fixed list of hosts.
#[derive(Debug, Clone)]
pub struct Rollout {
    hosts: Vec<PlannedHost>,
    concurrency: usize,
    threshold: usize,
    running: usize,
    errors: usize,
    stopped: Option<StopReason>,
}

/// Plans a rollout: hosts in the given order, the first `policy.canary` of those that will
/// run marked as canaries, `skip` (host name, reason) already final as `skipped` (hosts a
/// resumed run finished before, or hosts narrowed out).
pub fn plan(hosts: &[String], skip: &[(String, String)], policy: &Policy) -> Rollout {
    let total = hosts.len();
    let mut canaries_left = policy.canary;
    let planned = hosts
        .iter()
        .map(|name| match skip.iter().find(|(s, _)| s == name) {
            Some((_, why)) => PlannedHost {
                name: name.clone(),
                canary: false,
                state: HostState::Skipped,
                reason: why.clone(),
            },
            None => {
                let canary = canaries_left > 0;
                canaries_left = canaries_left.saturating_sub(1);
                PlannedHost { name: name.clone(), canary, state: HostState::Pending, reason: String::new() }
            }
        })
        .collect();
    Rollout {
        hosts: planned,
        concurrency: policy.max_concurrency.concurrency(total),
        threshold: policy.max_errors.error_threshold(total),
        running: 0,
        errors: 0,
        stopped: None,
    }
}

impl Rollout {
    pub fn hosts(&self) -> &[PlannedHost] {
        &self.hosts
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    pub fn error_threshold(&self) -> usize {
        self.threshold
    }

    pub fn stopped(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    fn canaries_pending(&self) -> bool {
        self.hosts.iter().any(|h| h.canary && !h.state.is_final())
    }

    /// The next thing to do. Starting a host marks it `running`.
    pub fn next_action(&mut self) -> Next {
        if self.stopped.is_none() && self.running < self.concurrency {
            let canary_phase = self.canaries_pending();
            if let Some(i) = self
                .hosts
                .iter()
                .position(|h| h.state == HostState::Pending && (h.canary || !canary_phase))
            {
                self.hosts[i].state = HostState::Running;
                self.running += 1;
                return Next::Start(i);
            }
        }
        if self.running > 0 {
            return Next::Wait;
        }
        if self.stopped.is_none() && self.hosts.iter().any(|h| h.state == HostState::Pending) {
            // Unreachable with a concurrency of at least one; kept so that `Done` is only
            // ever said when nothing is left.
            return Next::Wait;
        }
        Next::Done
    }

    /// A running host ended. `state` must be final; an error may stop the rollout.
    pub fn host_ended(&mut self, index: usize, state: HostState, reason: impl Into<String>) {
        let Some(h) = self.hosts.get_mut(index) else { return };
        if h.state != HostState::Running || !state.is_final() {
            return;
        }
        h.state = state;
        h.reason = reason.into();
        self.running -= 1;
        if state.is_error() {
            self.errors += 1;
            if self.errors > self.threshold && self.stopped.is_none() {
                self.stopped = Some(StopReason::ErrorThreshold { errors: self.errors, threshold: self.threshold });
            }
        }
    }

    /// Stop starting hosts (Ctrl-C, a run deadline); those in flight finish.
    pub fn interrupt(&mut self, why: impl Into<String>) {
        if self.stopped.is_none() {
            self.stopped = Some(StopReason::Interrupted(why.into()));
        }
    }

    /// Closes the run: every host that never started becomes `not started` with the
    /// reason. Returns the hosts, each in a final state.
    pub fn finish(mut self) -> (Vec<PlannedHost>, Option<StopReason>) {
        let why = match &self.stopped {
            Some(stop) => stop.to_string(),
            None => "the run ended before this host started".to_string(),
        };
        for h in &mut self.hosts {
            if !h.state.is_final() {
                // A host still `running` here was never reported back: say so rather than
                // pretend it finished.
                let was_running = h.state == HostState::Running;
                h.state = if was_running { HostState::Failed } else { HostState::NotStarted };
                h.reason = if was_running { "no outcome was recorded for this host".to_string() } else { why.clone() };
            }
        }
        (self.hosts, self.stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::policy::Limit;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("web-{i}")).collect()
    }

    fn policy(conc: Limit, errs: Limit, canary: usize) -> Policy {
        Policy { max_concurrency: conc, max_errors: errs, canary, ..Policy::default() }
    }

    fn start(r: &mut Rollout) -> usize {
        match r.next_action() {
            Next::Start(i) => i,
            other => panic!("expected a start, got {other:?}"),
        }
    }

    #[test]
    fn concurrency_bounds_hosts_in_flight() {
        let mut r = plan(&names(5), &[], &policy(Limit::Count(2), Limit::Count(5), 0));
        let a = start(&mut r);
        let b = start(&mut r);
        assert_eq!((a, b), (0, 1));
        assert_eq!(r.next_action(), Next::Wait);
        r.host_ended(a, HostState::Succeeded, "");
        assert_eq!(start(&mut r), 2);
    }

    #[test]
    fn zero_max_errors_stops_after_first_error_and_in_flight_hosts_finish() {
        let mut r = plan(&names(4), &[], &policy(Limit::Count(2), Limit::Count(0), 0));
        let a = start(&mut r);
        let b = start(&mut r);
        r.host_ended(a, HostState::Unreachable, "connection refused");
        assert_eq!(r.next_action(), Next::Wait, "b is still in flight");
        r.host_ended(b, HostState::Succeeded, "");
        assert_eq!(r.next_action(), Next::Done);
        let (hosts, stop) = r.finish();
        assert!(matches!(stop, Some(StopReason::ErrorThreshold { errors: 1, threshold: 0 })));
        let states: Vec<_> = hosts.iter().map(|h| h.state).collect();
        assert_eq!(
            states,
            [HostState::Unreachable, HostState::Succeeded, HostState::NotStarted, HostState::NotStarted]
        );
        assert!(hosts[2].reason.contains("--max-errors"), "{}", hosts[2].reason);
    }

    #[test]
    fn one_max_error_tolerates_one_failure() {
        let mut r = plan(&names(3), &[], &policy(Limit::Count(1), Limit::Count(1), 0));
        let a = start(&mut r);
        r.host_ended(a, HostState::Failed, "patch failed");
        let b = start(&mut r);
        r.host_ended(b, HostState::Succeeded, "");
        let c = start(&mut r);
        r.host_ended(c, HostState::TimedOut, "host timeout 1h");
        assert_eq!(r.next_action(), Next::Done);
        let (hosts, stop) = r.finish();
        assert!(hosts.iter().all(|h| h.state.is_final()));
        assert!(matches!(stop, Some(StopReason::ErrorThreshold { errors: 2, threshold: 1 })));
    }

    #[test]
    fn canaries_run_alone_before_the_rest() {
        let mut r = plan(&names(4), &[], &policy(Limit::Count(4), Limit::Count(4), 1));
        let a = start(&mut r);
        assert!(r.hosts()[a].canary);
        assert_eq!(r.next_action(), Next::Wait, "nothing else starts while the canary runs");
        r.host_ended(a, HostState::Succeeded, "");
        assert_eq!([start(&mut r), start(&mut r), start(&mut r)], [1, 2, 3]);
    }

    #[test]
    fn a_failed_canary_stops_the_rollout_under_zero_max_errors() {
        let mut r = plan(&names(3), &[], &policy(Limit::Count(3), Limit::Count(0), 1));
        let a = start(&mut r);
        r.host_ended(a, HostState::Failed, "verification failed");
        assert_eq!(r.next_action(), Next::Done);
        let (hosts, _) = r.finish();
        assert_eq!(hosts[1].state, HostState::NotStarted);
    }

    #[test]
    fn skipped_hosts_are_final_and_never_started() {
        let skip = vec![("web-2".to_string(), "done in the run being resumed".to_string())];
        let mut r = plan(&names(3), &skip, &policy(Limit::Count(3), Limit::Count(0), 0));
        assert_eq!([start(&mut r), start(&mut r)], [0, 2]);
        r.host_ended(0, HostState::Succeeded, "");
        r.host_ended(2, HostState::Succeeded, "");
        assert_eq!(r.next_action(), Next::Done);
        let (hosts, stop) = r.finish();
        assert_eq!(hosts[1].state, HostState::Skipped);
        assert!(stop.is_none());
    }

    #[test]
    fn interrupt_lets_in_flight_finish_and_names_the_rest() {
        let mut r = plan(&names(3), &[], &policy(Limit::Count(1), Limit::Count(3), 0));
        let a = start(&mut r);
        r.interrupt("interrupted by the operator (Ctrl-C)");
        assert_eq!(r.next_action(), Next::Wait);
        r.host_ended(a, HostState::Succeeded, "");
        assert_eq!(r.next_action(), Next::Done);
        let (hosts, _) = r.finish();
        assert_eq!(hosts[2].state, HostState::NotStarted);
        assert!(hosts[2].reason.contains("Ctrl-C"));
    }

    #[test]
    fn a_host_never_reported_back_is_not_left_running() {
        let mut r = plan(&names(1), &[], &Policy::default());
        start(&mut r);
        let (hosts, _) = r.finish();
        assert_eq!(hosts[0].state, HostState::Failed);
    }

    #[test]
    fn outcomes_for_hosts_not_running_are_ignored() {
        let mut r = plan(&names(2), &[], &Policy::default());
        r.host_ended(1, HostState::Failed, "not started yet");
        r.host_ended(9, HostState::Failed, "no such host");
        assert_eq!(start(&mut r), 0);
    }

    #[test]
    fn percent_limits_resolve_against_the_fleet_size() {
        let r = plan(&names(50), &[], &policy(Limit::Percent(20), Limit::Percent(10), 0));
        assert_eq!((r.concurrency(), r.error_threshold()), (10, 5));
    }
}
