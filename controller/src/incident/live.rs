//! The live view of one host during a CPU incident: the agent's snapshot stream in a
//! full-screen terminal view (ratatui) showing processes by CPU (or memory) with their
//! change since the last sample, per-core load, memory and swap, disk I/O and connection
//! counts. Keys: `c`/`m` sort by CPU or memory, up/down pick a process, `k` asks to kill
//! the picked one (the incident confirms it), `q` or Esc quits.
//!
//! What is shown is computed by `view` from plain snapshots, so it is tested without a
//! terminal; long lists are cut to what fits and say how many were left out. The view
//! never changes the host itself: a kill picked here goes back to the incident, which
//! shows it, asks, and runs it as an audited agent job.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use ops_proto::v1::{Process, Snapshot};
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};

use crate::client::Dialer;
use crate::commands::diag::{self, DiagOptions};
use crate::fleet::Host;
use crate::output::OutputFormat;

/// What the processes are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Cpu,
    Memory,
}

/// One process line.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcRow {
    pub pid: i32,
    pub user: String,
    pub cpu: f64,
    /// CPU change since the previous sample; None for a process not seen then.
    pub cpu_change: Option<f64>,
    pub memory: f64,
    pub rss_mib: f64,
    /// The process's short name (comm): what a kill is checked against.
    pub name: String,
    /// Its command line, or the name for a kernel thread.
    pub command: String,
}

/// Everything the screen shows, from the newest snapshot and the one before.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub header: Vec<String>,
    pub cores: Vec<f64>,
    pub rows: Vec<ProcRow>,
    /// Processes the agent sent that did not fit.
    pub hidden_rows: usize,
    pub footer: Vec<String>,
}

/// The process list of a snapshot, merged from its two top lists (each process once).
fn processes(s: &Snapshot) -> Vec<&Process> {
    let mut seen = std::collections::HashSet::new();
    s.top_by_cpu.iter().chain(&s.top_by_memory).filter(|p| seen.insert(p.pid)).collect()
}

/// The screen's content; `room` is how many process lines fit, `listening_room` how many
/// listening sockets.
pub fn view(cur: &Snapshot, prev: Option<&Snapshot>, sort: SortBy, room: usize, listening_room: usize) -> View {
    let before: HashMap<i32, f64> = prev.map(|p| processes(p).iter().map(|x| (x.pid, x.cpu_percent)).collect()).unwrap_or_default();
    let mut rows: Vec<ProcRow> = processes(cur)
        .into_iter()
        .map(|p| ProcRow {
            pid: p.pid,
            user: p.user.clone(),
            cpu: p.cpu_percent,
            cpu_change: before.get(&p.pid).map(|b| p.cpu_percent - b),
            memory: p.memory_percent,
            rss_mib: p.rss_bytes as f64 / 1_048_576.0,
            name: p.name.clone(),
            command: if p.command_line.is_empty() { p.name.clone() } else { p.command_line.clone() },
        })
        .collect();
    match sort {
        SortBy::Cpu => rows.sort_by(|a, b| b.cpu.total_cmp(&a.cpu).then(a.pid.cmp(&b.pid))),
        SortBy::Memory => rows.sort_by(|a, b| b.memory.total_cmp(&a.memory).then(a.pid.cmp(&b.pid))),
    }
    // The host's whole process count: the agent sends only its top lists.
    let total = (cur.process_count as usize).max(rows.len());
    rows.truncate(room);
    let hidden_rows = total - rows.len();
    let mem = cur.memory.clone().unwrap_or_default();
    let load = cur.load.clone().unwrap_or_default();
    let gib = |b: u64| b as f64 / 1_073_741_824.0;
    let header = vec![
        format!(
            "{}  CPU {:.1} % of {} cores  load {:.2} {:.2} {:.2}  {} processes  (window {} ms)",
            cur.hostname, cur.cpu_percent, cur.cpu_count, load.one, load.five, load.fifteen, cur.process_count, cur.cpu_window_ms
        ),
        format!(
            "memory {:.1}/{:.1} GiB ({:.0} %)  swap {:.1}/{:.1} GiB",
            gib(mem.used_bytes),
            gib(mem.total_bytes),
            mem.used_percent,
            gib(mem.swap_used_bytes),
            gib(mem.swap_total_bytes)
        ),
    ];
    let mut footer = Vec::new();
    let io: Vec<String> = cur
        .disk_io
        .iter()
        .map(|d| format!("{} r {:.1} w {:.1} MiB/s", d.device, d.read_bytes_per_sec / 1_048_576.0, d.write_bytes_per_sec / 1_048_576.0))
        .collect();
    footer.push(format!("disk I/O: {}", if io.is_empty() { "none".into() } else { io.join("  ") }));
    let conns: Vec<String> = cur.connections.iter().map(|c| format!("{} {}", c.state, c.count)).collect();
    footer.push(format!("TCP: {}", if conns.is_empty() { "none".into() } else { conns.join("  ") }));
    let mut listening: Vec<String> = cur.listening.iter().map(|l| format!("{}:{} {}", l.address, l.port, l.process)).collect();
    let hidden_listening = listening.len().saturating_sub(listening_room);
    listening.truncate(listening_room);
    let more = if hidden_listening > 0 { format!("  (+{hidden_listening} more)") } else { String::new() };
    footer.push(format!("listening: {}{more}", listening.join("  ")));
    if cur.dropped_snapshots > 0 {
        footer.push(format!("{} snapshot(s) dropped: this view read too slowly", cur.dropped_snapshots));
    }
    View { header, cores: cur.per_core_percent.clone(), rows, hidden_rows, footer }
}

/// What the operator asked for when leaving the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Quit,
    Kill { pid: i32, name: String },
}

/// Runs the full-screen view until `q` (or a kill request). Needs a terminal.
pub async fn interactive(dialer: &Dialer, host: &Host, interval: Duration) -> std::io::Result<Exit> {
    if !std::io::stdout().is_terminal() {
        return Err(std::io::Error::other("the live view needs a terminal; use --count N (and --output json) instead"));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Snapshot>(4);
    let opts = DiagOptions { follow: true, interval, top: 50, count: None, output: OutputFormat::Table };
    let (d, h) = (dialer.clone(), host.clone());
    let feed = tokio::spawn(async move {
        let mut sink = |s: &Snapshot| {
            // A full queue means the screen is behind: this sample is skipped, the next comes.
            let _ = tx.try_send(s.clone());
            Ok(())
        };
        diag::follow(&d, &h, &opts, &mut sink).await.map_err(|e| e.to_string())
    });
    let name = host.name.clone();
    let screen = tokio::task::spawn_blocking(move || run_screen(&name, rx));
    let exit = screen.await.map_err(std::io::Error::other)?;
    feed.abort();
    exit
}

fn run_screen(host: &str, rx: std::sync::mpsc::Receiver<Snapshot>) -> std::io::Result<Exit> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
    let mut terminal = ratatui::init();
    let mut cur: Option<Snapshot> = None;
    let mut prev: Option<Snapshot> = None;
    let mut sort = SortBy::Cpu;
    let mut selected = 0usize;
    let mut note = String::from("waiting for the first snapshot...");
    let result = loop {
        while let Ok(s) = rx.try_recv() {
            prev = cur.replace(s);
            note.clear();
        }
        let mut shown: Vec<ProcRow> = Vec::new();
        if let Err(e) = terminal.draw(|f| {
            let area = f.area();
            let room = usize::from(area.height.saturating_sub(12)).max(3);
            let Some(c) = &cur else {
                f.render_widget(Paragraph::new(format!("{host}: {note}  (q quits)")), area);
                return;
            };
            let v = view(c, prev.as_ref(), sort, room, 6);
            selected = selected.min(v.rows.len().saturating_sub(1));
            shown = v.rows.clone();
            draw(f, &v, sort, selected);
        }) {
            break Err(e);
        }
        if event::poll(Duration::from_millis(100))? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => break Ok(Exit::Quit),
                    KeyCode::Char('c') => sort = SortBy::Cpu,
                    KeyCode::Char('m') => sort = SortBy::Memory,
                    KeyCode::Up => selected = selected.saturating_sub(1),
                    KeyCode::Down => selected += 1,
                    KeyCode::Char('k') => {
                        if let Some(r) = shown.get(selected) {
                            break Ok(Exit::Kill { pid: r.pid, name: r.name.clone() });
                        }
                    }
                    _ => {}
                }
            }
        }
    };
    ratatui::restore();
    result
}

fn draw(f: &mut ratatui::Frame<'_>, v: &View, sort: SortBy, selected: usize) {
    let area = f.area();
    let parts = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Length(4), Constraint::Min(5), Constraint::Length(v.footer.len() as u16 + 2)])
        .split(area);
    let cores: String = v.cores.iter().enumerate().map(|(i, c)| format!("cpu{i} {c:5.1} %  ")).collect();
    let mut head: Vec<Line> = v.header.iter().map(|h| Line::from(h.as_str())).collect();
    head.push(Line::from(cores));
    f.render_widget(Paragraph::new(head).block(Block::default().borders(Borders::BOTTOM)), parts[0]);
    let rows = v.rows.iter().enumerate().map(|(i, r)| {
        let change = r.cpu_change.map(|d| format!("{d:+6.1}")).unwrap_or_else(|| "   new".into());
        let row = Row::new(vec![
            r.pid.to_string(),
            r.user.clone(),
            format!("{:6.1}", r.cpu),
            change,
            format!("{:5.1}", r.memory),
            format!("{:8.1}", r.rss_mib),
            r.command.clone(),
        ]);
        if i == selected {
            row.style(Style::default().add_modifier(Modifier::REVERSED))
        } else {
            row
        }
    });
    let title = format!(
        " processes by {} ({} more not shown)  c/m sort  up/down pick  k kill  q quit ",
        if sort == SortBy::Cpu { "CPU" } else { "memory" },
        v.hidden_rows
    );
    let table = Table::new(
        rows,
        [Constraint::Length(8), Constraint::Length(10), Constraint::Length(7), Constraint::Length(7), Constraint::Length(6), Constraint::Length(9), Constraint::Min(10)],
    )
    .header(Row::new(vec!["PID", "USER", "CPU %", "CHANGE", "MEM %", "RSS MiB", "COMMAND"]).style(Style::default().add_modifier(Modifier::BOLD)))
    .block(Block::default().title(title).borders(Borders::ALL));
    f.render_widget(table, parts[1]);
    let foot: Vec<Line> = v.footer.iter().map(|l| Line::from(l.as_str())).collect();
    f.render_widget(Paragraph::new(foot).block(Block::default().borders(Borders::TOP)), parts[2]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ops_proto::v1::{ListeningSocket, Memory};

    fn p(pid: i32, cpu: f64, mem: f64) -> Process {
        Process { pid, name: format!("p{pid}"), cpu_percent: cpu, memory_percent: mem, user: "root".into(), ..Process::default() }
    }

    fn snap(procs: Vec<Process>, count: u32) -> Snapshot {
        Snapshot {
            hostname: "web-1".into(),
            top_by_cpu: procs,
            process_count: count,
            memory: Some(Memory::default()),
            per_core_percent: vec![99.0, 3.0],
            listening: (0..9).map(|i| ListeningSocket { address: "0.0.0.0".into(), port: 8000 + i, ..ListeningSocket::default() }).collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_busiest_process_comes_first_with_its_change_since_the_last_sample() {
        let before = snap(vec![p(1, 10.0, 1.0), p(2, 50.0, 2.0)], 2);
        let now = snap(vec![p(1, 97.0, 1.0), p(2, 40.0, 9.0), p(3, 5.0, 0.5)], 3);
        let v = view(&now, Some(&before), SortBy::Cpu, 10, 6);
        assert_eq!(v.rows.iter().map(|r| r.pid).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(v.rows[0].cpu_change, Some(87.0));
        assert_eq!(v.rows[2].cpu_change, None, "a process not seen before is new");
        let by_mem = view(&now, Some(&before), SortBy::Memory, 10, 6);
        assert_eq!(by_mem.rows[0].pid, 2);
        assert_eq!(v.cores, vec![99.0, 3.0]);
    }

    #[test]
    fn long_lists_are_cut_and_say_how_much_is_hidden() {
        let now = snap((1..=20).map(|i| p(i, f64::from(i), 0.0)).collect(), 120);
        let v = view(&now, None, SortBy::Cpu, 5, 6);
        assert_eq!(v.rows.len(), 5);
        assert_eq!(v.rows[0].pid, 20);
        assert_eq!(v.hidden_rows, 115, "120 processes on the host, 5 shown");
        assert!(v.footer.iter().any(|l| l.ends_with("(+3 more)")), "{:?}", v.footer);
    }
}
