//! Runs a `Rollout`: starts hosts as the plan allows, bounds each by the host timeout,
//! and feeds outcomes back, until every host has a final state. The work for one host is
//! a caller-supplied future, so the same executor serves maintenance, certificate rotation
//! and any later fleet-wide change.
//!
//! Interrupts follow the convention operators expect: the first stop signal (Ctrl-C) lets
//! the hosts in flight finish and starts no new one; the second is passed to the running
//! work as a cancel signal, which ends agent jobs rather than abandoning them.

use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;

use super::plan::{HostState, Next, PlannedHost, Rollout, StopReason};

/// What the executor tells its caller as the run goes (journal, progress, JSON events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress<'a> {
    Started { index: usize, host: &'a str },
    Ended { index: usize, host: &'a str, state: HostState, reason: &'a str },
    Stopping { reason: String },
}

/// The operator's signals: `stop` once = start nothing new; `cancel` = end running work.
#[derive(Debug, Clone)]
pub struct Signals {
    pub stop: watch::Receiver<u32>,
}

impl Signals {
    /// Signals that never fire (tests, non-interactive callers with no handler).
    pub fn none() -> (watch::Sender<u32>, Signals) {
        let (tx, rx) = watch::channel(0);
        (tx, Signals { stop: rx })
    }
}

/// The outcome of one host's work.
pub type HostOutcome = (HostState, String);

/// Runs the rollout to the end. `work(index, host, cancel)` does one host; `cancel`
/// turns true when the operator asks a second time to stop.
pub async fn execute<W, Fut>(
    mut rollout: Rollout,
    host_timeout: Duration,
    signals: Signals,
    mut progress: impl FnMut(Progress<'_>),
    work: W,
) -> (Vec<PlannedHost>, Option<StopReason>)
where
    W: Fn(usize, String, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = HostOutcome>,
{
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let mut stop = signals.stop;
    let mut stop_seen = *stop.borrow_and_update();
    let mut stop_open = true;
    let mut in_flight = FuturesUnordered::new();
    loop {
        loop {
            match rollout.next_action() {
                Next::Start(i) => {
                    let host = rollout.hosts()[i].name.clone();
                    progress(Progress::Started { index: i, host: &host });
                    let fut = work(i, host, cancel_rx.clone());
                    in_flight.push(async move {
                        match tokio::time::timeout(host_timeout, fut).await {
                            Ok(outcome) => (i, outcome),
                            Err(_) => (
                                i,
                                (HostState::TimedOut, format!("host timeout of {} ran out", humantime::format_duration(host_timeout))),
                            ),
                        }
                    });
                }
                Next::Wait => break,
                Next::Done => return rollout.finish(),
            }
        }
        tokio::select! {
            Some((i, (state, reason))) = in_flight.next() => {
                let host = rollout.hosts()[i].name.clone();
                progress(Progress::Ended { index: i, host: &host, state, reason: &reason });
                let was_stopped = rollout.stopped().is_some();
                rollout.host_ended(i, state, reason);
                if let (false, Some(stop)) = (was_stopped, rollout.stopped()) {
                    progress(Progress::Stopping { reason: stop.to_string() });
                }
            }
            changed = stop.changed(), if stop_open => {
                if changed.is_err() {
                    stop_open = false;
                    continue;
                }
                let count = *stop.borrow_and_update();
                if count > stop_seen {
                    stop_seen = count;
                    if count == 1 {
                        let why = "interrupted by the operator (Ctrl-C): hosts in flight finish, no new host starts".to_string();
                        progress(Progress::Stopping { reason: why.clone() });
                        rollout.interrupt(why);
                    } else {
                        progress(Progress::Stopping { reason: "interrupted twice: cancelling the running work".into() });
                        rollout.interrupt("interrupted by the operator (Ctrl-C)");
                        let _ = cancel_tx.send(true);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::rollout::plan::plan;
    use crate::rollout::policy::{Limit, Policy};

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("h{i}")).collect()
    }

    fn policy(conc: usize, errs: usize) -> Policy {
        Policy { max_concurrency: Limit::Count(conc), max_errors: Limit::Count(errs), ..Policy::default() }
    }

    #[tokio::test]
    async fn every_host_runs_within_the_concurrency_bound() {
        let live = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (_tx, signals) = Signals::none();
        let (hosts, stop) = tokio::time::timeout(
            Duration::from_secs(10),
            execute(plan(&names(10), &[], &policy(3, 0)), Duration::from_secs(5), signals, |_| {}, |_, _, _| {
                let (live, peak) = (live.clone(), peak.clone());
                async move {
                    let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    live.fetch_sub(1, Ordering::SeqCst);
                    (HostState::Succeeded, String::new())
                }
            }),
        )
        .await
        .unwrap();
        assert!(stop.is_none());
        assert!(hosts.iter().all(|h| h.state == HostState::Succeeded));
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_host_over_its_timeout_is_named_timed_out() {
        let (_tx, signals) = Signals::none();
        let (hosts, _) = execute(plan(&names(2), &[], &policy(2, 5)), Duration::from_millis(100), signals, |_| {}, |i, _, _| async move {
            if i == 0 {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            (HostState::Succeeded, String::new())
        })
        .await;
        assert_eq!(hosts[0].state, HostState::TimedOut);
        assert!(hosts[0].reason.contains("100ms"), "{}", hosts[0].reason);
        assert_eq!(hosts[1].state, HostState::Succeeded);
    }

    #[tokio::test]
    async fn an_unreachable_host_with_zero_max_errors_leaves_the_rest_not_started() {
        let (_tx, signals) = Signals::none();
        let (hosts, stop) = execute(plan(&names(4), &[], &policy(1, 0)), Duration::from_secs(5), signals, |_| {}, |i, _, _| async move {
            if i == 1 { (HostState::Unreachable, "connection refused".into()) } else { (HostState::Succeeded, String::new()) }
        })
        .await;
        let states: Vec<_> = hosts.iter().map(|h| h.state).collect();
        assert_eq!(states, [HostState::Succeeded, HostState::Unreachable, HostState::NotStarted, HostState::NotStarted]);
        assert!(stop.is_some());
    }

    #[tokio::test]
    async fn first_stop_lets_work_finish_second_cancels_it() {
        let (tx, signals) = Signals::none();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
        let run = tokio::spawn(async move {
            execute(
                plan(&names(3), &[], &policy(1, 3)),
                Duration::from_secs(20),
                signals,
                move |p| {
                    if matches!(p, Progress::Started { .. }) {
                        let _ = started_tx.send(());
                    }
                    ev.lock().unwrap().push(format!("{p:?}"));
                },
                |_, _, mut cancel| async move {
                    tokio::select! {
                        _ = cancel.wait_for(|c| *c) => (HostState::Cancelled, "job cancelled".into()),
                        _ = tokio::time::sleep(Duration::from_secs(15)) => (HostState::Succeeded, String::new()),
                    }
                },
            )
            .await
        });
        tokio::time::timeout(Duration::from_secs(5), started_rx.recv()).await.unwrap().unwrap();
        tx.send(1).unwrap();
        // Nothing can end the host now but the second signal (its work takes 15 s).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!run.is_finished(), "the first Ctrl-C lets the host in flight finish");
        tx.send(2).unwrap();
        let (hosts, stop) = tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap();
        assert_eq!(hosts[0].state, HostState::Cancelled);
        assert_eq!(hosts[1].state, HostState::NotStarted);
        assert!(hosts[1].reason.contains("Ctrl-C"));
        assert!(matches!(stop, Some(StopReason::Interrupted(_))));
        assert!(events.lock().unwrap().iter().any(|e| e.contains("Stopping")));
    }
}
