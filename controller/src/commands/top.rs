//! `controller top`: every agent's snapshot stream at once, in one refreshing table sorted
//! by CPU (host, CPU, load, memory, the busiest process), with a host count and the hosts
//! that stopped answering. The fleet-wide view of a CPU incident.
//!
//! Each host has one task that keeps a stream open (reconnecting with backoff) and writes
//! only its latest view into its own `watch` channel, so a slow terminal or a fast fleet
//! can never make memory grow: the renderer reads the latest of each host at each tick.
//! A host is never left out of a frame: it is either shown with its figures or named as
//! not answering, with the reason and since when.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use ops_proto::v1::{Snapshot, StreamSnapshotsRequest};
use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::client::{call_error, Dialer};
use crate::commands::backoff::retry_delay;
use crate::fleet::Host;
use crate::output::{OutputFormat, Table};

/// The figures of one host that the table shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostFigures {
    pub cpu_percent: f64,
    pub cpu_count: u32,
    pub load1: f64,
    pub memory_percent: f64,
    pub top_process: String,
    pub top_pid: i32,
    pub top_cpu_percent: f64,
    pub processes: u32,
}

/// What the controller knows of one host at a tick.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    pub figures: Option<HostFigures>,
    pub last_seen: Option<Instant>,
    pub error: Option<String>,
}

pub fn figures(s: &Snapshot) -> HostFigures {
    let top = s.top_by_cpu.first();
    HostFigures {
        cpu_percent: s.cpu_percent,
        cpu_count: s.cpu_count,
        load1: s.load.as_ref().map(|l| l.one).unwrap_or(0.0),
        memory_percent: s.memory.as_ref().map(|m| m.used_percent).unwrap_or(0.0),
        top_process: top.map(|p| p.name.clone()).unwrap_or_default(),
        top_pid: top.map(|p| p.pid).unwrap_or(0),
        top_cpu_percent: top.map(|p| p.cpu_percent).unwrap_or(0.0),
        processes: s.process_count,
    }
}

/// One host's row in a frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub host: String,
    pub answering: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub figures: Option<HostFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds since the last snapshot (none yet: null).
    pub seen_seconds_ago: Option<f64>,
}

/// One refresh of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frame {
    pub hosts: usize,
    pub answering: usize,
    pub not_answering: Vec<String>,
    pub rows: Vec<Row>,
}

/// Builds a frame: answering hosts by CPU, highest first, then the silent ones by name. A
/// host is answering when its latest snapshot is younger than `stale`.
pub fn frame(views: &BTreeMap<String, HostView>, now: Instant, stale: Duration) -> Frame {
    let mut rows: Vec<Row> = views
        .iter()
        .map(|(name, v)| {
            let age = v.last_seen.map(|t| now.saturating_duration_since(t));
            let answering = v.figures.is_some() && age.is_some_and(|a| a <= stale);
            let error = if answering {
                None
            } else {
                Some(v.error.clone().unwrap_or_else(|| match age {
                    Some(a) => format!("no snapshot for {:.0} s", a.as_secs_f64()),
                    None => "no snapshot yet".to_string(),
                }))
            };
            Row { host: name.clone(), answering, figures: v.figures.clone(), error, seen_seconds_ago: age.map(|a| a.as_secs_f64()) }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.answering.cmp(&a.answering).then_with(|| {
            let (x, y) = (a.figures.as_ref().map(|f| f.cpu_percent), b.figures.as_ref().map(|f| f.cpu_percent));
            y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal).then_with(|| a.host.cmp(&b.host))
        })
    });
    let not_answering: Vec<String> = rows.iter().filter(|r| !r.answering).map(|r| r.host.clone()).collect();
    Frame { hosts: rows.len(), answering: rows.len() - not_answering.len(), not_answering, rows }
}

/// The frame as a table with a summary line.
pub fn render(f: &Frame) -> String {
    let mut out = format!("{} hosts, {} answering", f.hosts, f.answering);
    if !f.not_answering.is_empty() {
        out.push_str(&format!(", not answering: {}", f.not_answering.join(", ")));
    }
    out.push('\n');
    let mut t = Table::new(["HOST", "CPU%", "CORES", "LOAD1", "MEM%", "PROCS", "BUSIEST", "ITS CPU%"]);
    for r in &f.rows {
        match (&r.figures, r.answering) {
            (Some(x), true) => t.row([
                r.host.clone(),
                format!("{:.1}", x.cpu_percent),
                x.cpu_count.to_string(),
                format!("{:.2}", x.load1),
                format!("{:.1}", x.memory_percent),
                x.processes.to_string(),
                format!("{} ({})", x.top_process, x.top_pid),
                format!("{:.1}", x.top_cpu_percent),
            ]),
            _ => t.row([
                r.host.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("NOT ANSWERING: {}", r.error.as_deref().unwrap_or("")),
                "-".into(),
            ]),
        }
    }
    out.push_str(&t.render());
    out
}

/// Keeps one host's stream open and publishes its latest view until the receiver goes.
async fn follow(dialer: Dialer, host: Host, interval: Duration, tx: watch::Sender<HostView>) {
    let mut attempt = 0u32;
    let interval_ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
    while !tx.is_closed() {
        let err = match dialer.connect_streaming(&host).await {
            Ok(mut c) => match c.stream_snapshots(StreamSnapshotsRequest { interval_ms, top_n: 1, max_count: 0 }).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    let mut last_err = "the stream ended".to_string();
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(s) => {
                                attempt = 0;
                                let f = figures(&s);
                                tx.send_modify(|v| {
                                    v.figures = Some(f);
                                    v.last_seen = Some(Instant::now());
                                    v.error = None;
                                });
                            }
                            Err(s) => {
                                last_err = call_error(&s).to_string();
                                break;
                            }
                        }
                        if tx.is_closed() {
                            return;
                        }
                    }
                    last_err
                }
                Err(s) => call_error(&s).to_string(),
            },
            Err(e) => e.to_string(),
        };
        tx.send_modify(|v| v.error = Some(err));
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(retry_delay(attempt)).await;
    }
}

/// Options of `controller top`.
#[derive(Debug, Clone)]
pub struct TopOptions {
    pub interval: Duration,
    /// Frames to print before exiting; `None`: until interrupted.
    pub count: Option<u32>,
    pub output: OutputFormat,
    /// Clear the screen between frames (a terminal).
    pub refresh: bool,
}

/// Runs the view. Returns 0 when every host answered in the last frame, 1 otherwise.
pub async fn run(dialer: &Dialer, hosts: &[Host], opts: &TopOptions, out: &mut dyn Write) -> std::io::Result<i32> {
    let mut receivers = Vec::with_capacity(hosts.len());
    let mut tasks = Vec::with_capacity(hosts.len());
    for h in hosts {
        let (tx, rx) = watch::channel(HostView::default());
        tasks.push(tokio::spawn(follow(dialer.clone(), h.clone(), opts.interval, tx)));
        receivers.push((h.name.clone(), rx));
    }
    // A host is silent after missing three samples (and at least the connect deadline).
    let stale = (opts.interval * 3).max(Duration::from_secs(3));
    let mut ticker = tokio::time::interval(opts.interval.max(Duration::from_millis(100)));
    ticker.tick().await;
    let mut printed = 0u32;
    let mut last_ok;
    let result = loop {
        ticker.tick().await;
        let views: BTreeMap<String, HostView> = receivers.iter().map(|(n, rx)| (n.clone(), rx.borrow().clone())).collect();
        let f = frame(&views, Instant::now(), stale);
        last_ok = f.not_answering.is_empty();
        let written = match opts.output {
            OutputFormat::Json => serde_json::to_string(&f).map_err(std::io::Error::other).and_then(|s| writeln!(out, "{s}")),
            OutputFormat::Table if opts.refresh => write!(out, "\x1b[H\x1b[2J{}", render(&f)),
            OutputFormat::Table => writeln!(out, "{}", render(&f)),
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            break Err(e);
        }
        printed += 1;
        if opts.count.is_some_and(|c| printed >= c) {
            break Ok(());
        }
    };
    for t in tasks {
        t.abort();
    }
    result.map(|()| if last_ok { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(cpu: f64) -> HostFigures {
        HostFigures {
            cpu_percent: cpu,
            cpu_count: 2,
            load1: 1.0,
            memory_percent: 40.0,
            top_process: "stress".into(),
            top_pid: 42,
            top_cpu_percent: cpu,
            processes: 100,
        }
    }

    #[test]
    fn answering_hosts_sort_by_cpu_and_silent_ones_are_named() {
        let now = Instant::now();
        let seen = |cpu: f64, ago: u64| HostView {
            figures: Some(fig(cpu)),
            last_seen: Some(now - Duration::from_secs(ago)),
            error: None,
        };
        let views = BTreeMap::from([
            ("a".to_string(), seen(10.0, 0)),
            ("b".to_string(), seen(90.0, 1)),
            ("c".to_string(), seen(50.0, 60)),
            ("d".to_string(), HostView { error: Some("connection refused".into()), ..HostView::default() }),
        ]);
        let f = frame(&views, now, Duration::from_secs(3));
        let order: Vec<&str> = f.rows.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(order, ["b", "a", "c", "d"]);
        assert_eq!(f.not_answering, ["c", "d"]);
        assert_eq!((f.hosts, f.answering), (4, 2));
        assert!(f.rows[2].error.as_deref().unwrap().contains("no snapshot for 60 s"));
        let text = render(&f);
        assert!(text.starts_with("4 hosts, 2 answering, not answering: c, d\n"), "{text}");
        assert!(text.contains("NOT ANSWERING: connection refused"));
    }
}
