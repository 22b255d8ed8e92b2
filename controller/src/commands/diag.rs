//! `controller diag HOST`: the live, top-like view of one host that replaces
//! `ssh host top; free; iostat; netstat` during an incident.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use ops_proto::v1::{Snapshot, SnapshotRequest, StreamSnapshotsRequest};
use serde_json::{json, Value};
use tokio_stream::StreamExt;

use crate::client::{call_error, Dialer};
use crate::fleet::Host;
use crate::output::{human_bytes, OutputFormat, Table};

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct DiagOptions {
    pub follow: bool,
    pub interval: Duration,
    pub top: u32,
    pub count: Option<u32>,
    pub output: OutputFormat,
}

/// The snapshot as JSON: stable field names for scripts.
pub fn snapshot_json(s: &Snapshot) -> Value {
    let proc_json = |p: &ops_proto::v1::Process| {
        json!({
            "pid": p.pid, "name": p.name, "command_line": p.command_line, "user": p.user,
            "cpu_percent": round2(p.cpu_percent), "rss_bytes": p.rss_bytes,
            "memory_percent": round2(p.memory_percent), "state": p.state, "threads": p.threads,
        })
    };
    let m = s.memory.unwrap_or_default();
    let l = s.load.unwrap_or_default();
    json!({
        "hostname": s.hostname,
        "taken_at_unix_ms": s.taken_at_unix_ms,
        "cpu_window_ms": s.cpu_window_ms,
        "cpu_percent": round2(s.cpu_percent),
        "per_core_percent": s.per_core_percent.iter().map(|c| round2(*c)).collect::<Vec<_>>(),
        "cpu_count": s.cpu_count,
        "process_count": s.process_count,
        "processes": s.top_by_cpu.iter().map(proc_json).collect::<Vec<_>>(),
        "processes_by_memory": s.top_by_memory.iter().map(proc_json).collect::<Vec<_>>(),
        "memory": {
            "total_bytes": m.total_bytes, "used_bytes": m.used_bytes, "available_bytes": m.available_bytes,
            "free_bytes": m.free_bytes, "buffers_bytes": m.buffers_bytes, "cached_bytes": m.cached_bytes,
            "swap_total_bytes": m.swap_total_bytes, "swap_used_bytes": m.swap_used_bytes,
            "used_percent": round2(m.used_percent),
        },
        "load": {"one": l.one, "five": l.five, "fifteen": l.fifteen},
        "filesystems": s.filesystems.iter().map(|f| json!({
            "mount_point": f.mount_point, "device": f.device, "fs_type": f.fs_type,
            "total_bytes": f.total_bytes, "used_bytes": f.used_bytes, "available_bytes": f.available_bytes,
            "used_percent": round2(f.used_percent),
        })).collect::<Vec<_>>(),
        "disk_io": s.disk_io.iter().map(|d| json!({
            "device": d.device, "reads_per_sec": round2(d.reads_per_sec), "writes_per_sec": round2(d.writes_per_sec),
            "read_bytes_per_sec": round2(d.read_bytes_per_sec), "write_bytes_per_sec": round2(d.write_bytes_per_sec),
            "util_percent": round2(d.util_percent),
        })).collect::<Vec<_>>(),
        "connections": s.connections.iter().map(|c| (c.state.clone(), Value::from(c.count))).collect::<serde_json::Map<_, _>>(),
        "listening": s.listening.iter().map(|l| json!({
            "protocol": l.protocol, "address": l.address, "port": l.port, "pid": l.pid, "process": l.process,
        })).collect::<Vec<_>>(),
        "dropped_snapshots": s.dropped_snapshots,
    })
}

fn round2(v: f64) -> f64 {
    if v.is_finite() {
        (v * 100.0).round() / 100.0
    } else {
        0.0
    }
}

/// The screen a person reads.
pub fn render(s: &Snapshot, host: &str) -> String {
    let m = s.memory.unwrap_or_default();
    let l = s.load.unwrap_or_default();
    let mut out = format!(
        "{host} ({})  cpu {:.1}% of {} cores over {} ms  load {:.2} {:.2} {:.2}  processes {}\n",
        s.hostname, s.cpu_percent, s.cpu_count, s.cpu_window_ms, l.one, l.five, l.fifteen, s.process_count
    );
    out.push_str(&format!(
        "mem {} used of {} ({:.1}%), {} available   swap {} of {}\n\n",
        human_bytes(m.used_bytes), human_bytes(m.total_bytes), m.used_percent, human_bytes(m.available_bytes),
        human_bytes(m.swap_used_bytes), human_bytes(m.swap_total_bytes)
    ));
    let mut t = Table::new(["PID", "USER", "CPU%", "MEM%", "RSS", "S", "COMMAND"]);
    for p in &s.top_by_cpu {
        let cmd = if p.command_line.is_empty() { format!("[{}]", p.name) } else { p.command_line.clone() };
        let cmd: String = cmd.chars().take(80).collect();
        t.row([
            p.pid.to_string(), p.user.clone(), format!("{:.1}", p.cpu_percent), format!("{:.1}", p.memory_percent),
            human_bytes(p.rss_bytes), p.state.clone(), cmd,
        ]);
    }
    out.push_str(&t.render());
    let mut fs = Table::new(["MOUNT", "DEVICE", "TYPE", "SIZE", "USED", "AVAIL", "USE%"]);
    for f in &s.filesystems {
        fs.row([
            f.mount_point.clone(), f.device.clone(), f.fs_type.clone(), human_bytes(f.total_bytes),
            human_bytes(f.used_bytes), human_bytes(f.available_bytes), format!("{:.0}%", f.used_percent),
        ]);
    }
    out.push('\n');
    out.push_str(&fs.render());
    if !s.disk_io.is_empty() {
        let mut io = Table::new(["DEVICE", "R/s", "W/s", "READ/s", "WRITE/s", "UTIL%"]);
        for d in &s.disk_io {
            io.row([
                d.device.clone(), format!("{:.1}", d.reads_per_sec), format!("{:.1}", d.writes_per_sec),
                human_bytes(d.read_bytes_per_sec as u64), human_bytes(d.write_bytes_per_sec as u64),
                format!("{:.1}", d.util_percent),
            ]);
        }
        out.push('\n');
        out.push_str(&io.render());
    }
    let conns: Vec<String> = s.connections.iter().map(|c| format!("{} {}", c.state, c.count)).collect();
    out.push_str(&format!("\nconnections: {}\n", if conns.is_empty() { "none".into() } else { conns.join(", ") }));
    let listen: Vec<String> = s
        .listening
        .iter()
        .map(|l| {
            let who = if l.process.is_empty() { String::new() } else { format!(" ({})", l.process) };
            format!("{}/{}:{}{who}", l.protocol, l.address, l.port)
        })
        .collect();
    out.push_str(&format!("listening: {}\n", if listen.is_empty() { "none".into() } else { listen.join(", ") }));
    if s.dropped_snapshots > 0 {
        out.push_str(&format!("({} snapshots dropped: this terminal read too slowly)\n", s.dropped_snapshots));
    }
    out
}

/// Failure of a diag session.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("{host}: {source}")]
    Connect { host: String, source: ops_proto::tls::ConnectError },
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs diag against one host, writing to `out`. Returns the number of snapshots shown.
pub async fn run(dialer: &Dialer, host: &Host, opts: &DiagOptions, out: &mut dyn Write) -> Result<u32, DiagError> {
    let wrap = |source| DiagError::Connect { host: host.name.clone(), source };
    let interactive = std::io::stdout().is_terminal() && opts.output == OutputFormat::Table;
    if !opts.follow && opts.count.unwrap_or(1) <= 1 {
        let mut client = dialer.connect(host).await.map_err(wrap)?;
        let snap = client
            .get_snapshot(SnapshotRequest { top_n: opts.top, cpu_interval_ms: 0 })
            .await
            .map_err(|s| wrap(call_error(&s)))?
            .into_inner();
        emit(&snap, host, opts.output, false, out)?;
        return Ok(1);
    }
    let mut sink = |snap: &Snapshot| emit(snap, host, opts.output, interactive, &mut *out);
    follow(dialer, host, opts, &mut sink).await
}

/// The snapshot stream of one host, each snapshot handed to `sink`, until `opts.count`
/// snapshots were shown, Ctrl-C, or the stream cannot be had again; it reconnects by itself
/// after an agent restart or a network blip. An error from `sink` ends it.
pub async fn follow<F>(dialer: &Dialer, host: &Host, opts: &DiagOptions, sink: &mut F) -> Result<u32, DiagError>
where
    F: FnMut(&Snapshot) -> std::io::Result<()>,
{
    let wrap = |source| DiagError::Connect { host: host.name.clone(), source };
    let interval_ms = u32::try_from(opts.interval.as_millis()).unwrap_or(u32::MAX).max(100);
    let mut shown = 0u32;
    // Failures in a row without a snapshot in between; the view reconnects by itself (an
    // agent restart or a network blip must not end an incident view) up to this bound.
    let mut failures = 0u32;
    loop {
        let remaining = opts.count.map(|c| c.saturating_sub(shown));
        if remaining == Some(0) {
            return Ok(shown);
        }
        let attempt = async {
            let mut client = dialer.connect_streaming(host).await?;
            let req = StreamSnapshotsRequest { interval_ms, top_n: opts.top, max_count: remaining.unwrap_or(0) };
            client.stream_snapshots(req).await.map(|r| r.into_inner()).map_err(|s| call_error(&s))
        };
        let mut stream = tokio::select! {
            r = attempt => match r {
                Ok(s) => s,
                // Only a view that was already running reconnects; a host that is down
                // from the start is reported at once.
                Err(e) if is_retryable(&e) && shown > 0 && failures < MAX_RECONNECTS => {
                    failures += 1;
                    reconnect_note(host, &e.to_string(), failures);
                    tokio::time::sleep(crate::commands::backoff::retry_delay(failures)).await;
                    continue;
                }
                Err(e) => return Err(wrap(e)),
            },
            _ = tokio::signal::ctrl_c() => return Ok(shown),
        };
        let ended = loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(snap)) => {
                        sink(&snap)?;
                        shown += 1;
                        failures = 0;
                    }
                    Some(Err(status)) => break Some(call_error(&status)),
                    None => break None,
                },
                _ = tokio::signal::ctrl_c() => return Ok(shown),
            }
        };
        match ended {
            // The agent ended the stream: the count was reached (or it is shutting down).
            None if opts.count.is_some_and(|c| shown >= c) => return Ok(shown),
            None => {}
            Some(e) if !is_retryable(&e) => return Err(wrap(e)),
            Some(_) => {}
        }
        failures += 1;
        if failures > MAX_RECONNECTS {
            return Err(wrap(ops_proto::tls::ConnectError::new(
                ops_proto::tls::FailureKind::Protocol,
                format!("the snapshot stream broke {failures} times in a row"),
            )));
        }
        let why = ended.map(|e| e.to_string()).unwrap_or_else(|| "the agent ended the stream".into());
        reconnect_note(host, &why, failures);
        tokio::time::sleep(crate::commands::backoff::retry_delay(failures)).await;
    }
}

/// Reconnect attempts in a row, without a snapshot in between, before diag gives up.
const MAX_RECONNECTS: u32 = 8;

/// Failures that a later attempt may not see: the agent restarting, a dropped link.
fn is_retryable(e: &ops_proto::tls::ConnectError) -> bool {
    use ops_proto::tls::FailureKind as K;
    matches!(e.kind, K::Refused | K::TimedOut | K::Unreachable | K::Protocol)
}

fn reconnect_note(host: &Host, why: &str, failures: u32) {
    eprintln!("{}: {why}; reconnecting ({failures}/{MAX_RECONNECTS})", host.name);
}

fn emit(snap: &Snapshot, host: &Host, format: OutputFormat, clear: bool, out: &mut dyn Write) -> std::io::Result<()> {
    match format {
        OutputFormat::Json => writeln!(out, "{}", snapshot_json(snap))?,
        OutputFormat::Table => {
            if clear {
                // Home the cursor and clear the screen: a refreshing view like top.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            writeln!(out, "{}", render(snap, &host.name))?;
        }
    }
    out.flush()
}
