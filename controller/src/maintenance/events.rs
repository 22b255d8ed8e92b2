//! What a maintenance run tells its operator while it goes: on a terminal one bar over all
//! the steps and a line per host in flight; piped, one plain log line per event on
//! standard error; with `--output json`, one JSON object per line on standard output.
//! The journal, not this, is the record: these are only the live view.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::output::OutputFormat;
use crate::rollout::journal::StepState;

enum Mode {
    Json,
    Plain,
    Terminal { multi: indicatif::MultiProgress, overall: indicatif::ProgressBar, hosts: Mutex<BTreeMap<String, indicatif::ProgressBar>> },
}

/// The live view of one run.
pub struct Events {
    mode: Mode,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Events {
    /// `total_steps` sizes the overall bar on a terminal.
    pub fn new(output: OutputFormat, total_steps: usize) -> Events {
        let mode = if output == OutputFormat::Json {
            Mode::Json
        } else if crate::progress::wanted(output) {
            let multi = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
            let overall = multi.add(indicatif::ProgressBar::new(total_steps as u64));
            if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps ({elapsed}) {msg}") {
                overall.set_style(style);
            }
            Mode::Terminal { multi, overall, hosts: Mutex::new(BTreeMap::new()) }
        } else {
            Mode::Plain
        };
        Events { mode }
    }

    fn json(&self, v: Value) {
        println!("{v}");
    }

    fn line(&self, text: String) {
        match &self.mode {
            Mode::Terminal { multi, .. } => {
                let _ = multi.println(text);
            }
            _ => eprintln!("{text}"),
        }
    }

    /// A free-form note (the plan, a phase starting, a stop).
    pub fn note(&self, kind: &str, text: &str) {
        match &self.mode {
            Mode::Json => self.json(json!({"event": kind, "message": text, "at_unix_ms": now_ms()})),
            _ => self.line(text.to_string()),
        }
    }

    pub fn step_started(&self, step: &str, host: Option<&str>) {
        match &self.mode {
            Mode::Json => self.json(json!({"event": "step_started", "step": step, "host": host, "at_unix_ms": now_ms()})),
            Mode::Plain => eprintln!("{} {step}: started", host.unwrap_or("fleet")),
            Mode::Terminal { multi, overall, hosts } => match host {
                Some(h) => {
                    let mut hosts = hosts.lock().unwrap_or_else(|p| p.into_inner());
                    let bar = hosts.entry(h.to_string()).or_insert_with(|| {
                        let b = multi.add(indicatif::ProgressBar::new_spinner());
                        b.enable_steady_tick(std::time::Duration::from_millis(200));
                        b
                    });
                    bar.set_message(format!("{h}: {step}"));
                }
                None => overall.set_message(step.to_string()),
            },
        }
    }

    pub fn step_ended(&self, step: &str, host: Option<&str>, state: StepState, detail: &str, duration_ms: u64) {
        match &self.mode {
            Mode::Json => self.json(json!({
                "event": "step_ended", "step": step, "host": host, "state": state,
                "detail": detail, "duration_ms": duration_ms, "at_unix_ms": now_ms(),
            })),
            _ => {
                if let Mode::Terminal { overall, .. } = &self.mode {
                    overall.inc(1);
                }
                self.line(format!("{} {step}: {} ({:.1}s) {detail}", host.unwrap_or("fleet"), state.label(), duration_ms as f64 / 1000.0));
            }
        }
    }

    pub fn host_ended(&self, host: &str, state: &str, reason: &str) {
        match &self.mode {
            Mode::Json => self.json(json!({"event": "host_ended", "host": host, "state": state, "reason": reason, "at_unix_ms": now_ms()})),
            Mode::Plain => eprintln!("{host}: {state} {reason}"),
            Mode::Terminal { multi, hosts, .. } => {
                if let Some(bar) = hosts.lock().unwrap_or_else(|p| p.into_inner()).remove(host) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                self.line(format!("{host}: {state} {reason}"));
            }
        }
    }

    /// The run's last event.
    pub fn finished(&self, outcome: &str, exit_code: i32, report: Value) {
        match &self.mode {
            Mode::Json => self.json(json!({"event": "run_ended", "outcome": outcome, "exit_code": exit_code, "report": report})),
            Mode::Terminal { overall, hosts, .. } => {
                for (_, b) in std::mem::take(&mut *hosts.lock().unwrap_or_else(|p| p.into_inner())) {
                    b.finish_and_clear();
                }
                overall.finish_and_clear();
            }
            Mode::Plain => {}
        }
    }
}
