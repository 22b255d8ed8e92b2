//! Every step's start and end goes through here: appended to the run's journal (fsynced
//! before the run goes on) and shown in the live view. A resumed run reads the previous
//! attempt's journal through it to skip what is done.
//!
//! A journal that can no longer be written (a full disk) stops the run from starting
//! anything new: work that is not recorded could be repeated by a resume.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use super::events::Events;
use crate::rollout::journal::{Contents, Event, Journal, StepState};

pub struct Recorder {
    journal: Mutex<Journal>,
    prior: Option<Contents>,
    pub events: Events,
    broken: AtomicBool,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Recorder {
    pub fn new(journal: Journal, prior: Option<Contents>, events: Events) -> Recorder {
        Recorder { journal: Mutex::new(journal), prior, events, broken: AtomicBool::new(false) }
    }

    /// False once a journal write failed.
    pub fn healthy(&self) -> bool {
        !self.broken.load(Ordering::SeqCst)
    }

    pub fn append(&self, event: &Event) {
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = j.append(event) {
            if !self.broken.swap(true, Ordering::SeqCst) {
                self.events.note("journal_error", &format!("error: {e}; no new work starts (unrecorded work could be repeated by a resume)"));
            }
        }
    }

    /// What the run being resumed recorded for a step that is done: (state, detail, data).
    pub fn done(&self, step: &str, host: Option<&str>) -> Option<(StepState, String, Value)> {
        self.prior.as_ref()?.events.iter().rev().find_map(|e| match e {
            Event::StepEnded { step: s, host: h, state, detail, data, .. } if s == step && h.as_deref() == host => {
                Some((*state, detail.clone(), data.clone()))
            }
            _ => None,
        }).filter(|(state, _, _)| state.is_done())
    }

    pub fn started(&self, step: &str, host: Option<&str>, idempotency_key: Option<String>) -> Instant {
        self.append(&Event::StepStarted {
            step: step.to_string(),
            host: host.map(str::to_string),
            at_unix_ms: now_ms(),
            job_id: None,
            idempotency_key,
        });
        self.events.step_started(step, host);
        Instant::now()
    }

    pub fn ended(&self, step: &str, host: Option<&str>, state: StepState, detail: &str, since: Instant, data: Value) {
        let duration_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.append(&Event::StepEnded {
            step: step.to_string(),
            host: host.map(str::to_string),
            state,
            detail: detail.to_string(),
            at_unix_ms: now_ms(),
            duration_ms,
            data,
        });
        self.events.step_ended(step, host, state, detail, duration_ms);
    }

    /// A step that is not started, with why; a resume runs it.
    pub fn not_run(&self, step: &str, host: Option<&str>, why: &str) {
        self.ended(step, host, StepState::NotRun, why, Instant::now(), Value::Null);
    }

    /// Runs `f` as step `step` unless the run being resumed already did it; records the
    /// outcome either way. Returns the step's state and data.
    pub async fn step<F>(&self, step: &str, f: F) -> (StepState, Value)
    where
        F: std::future::Future<Output = (StepState, String, Value)>,
    {
        if let Some((state, detail, data)) = self.done(step, None) {
            self.events.step_ended(step, None, state, &format!("done in the run being resumed: {detail}"), 0);
            return (state, data);
        }
        let since = self.started(step, None, None);
        let (state, detail, data) = f.await;
        self.ended(step, None, state, &detail, since, data.clone());
        (state, data)
    }
}
