//! Processes: the tick and RSS counters of every process (kept in each sample for the next
//! CPU delta), and the details (name, command line, user, ...) read only for the few
//! processes that make a top list. A process that exits mid-read is skipped silently; a pid
//! reused between two reads is told apart by its start time.

use std::cmp::Reverse;
use std::fmt::Write as _;
use std::io::Read as _;
use std::time::Duration;

use ops_proto::v1::Process;

use super::users;

/// Longest command line reported: enough to recognise a process, while a JVM's
/// 100 KiB classpath does not inflate every snapshot.
const CMDLINE_MAX_BYTES: u64 = 4096;
/// Bound on /proc/<pid>/stat and status, which are a few KiB at most.
const SMALL_FILE_MAX_BYTES: u64 = 64 * 1024;

/// The counters of one process in one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcTicks {
    pub pid: i32,
    /// utime + stime, in clock ticks.
    pub ticks: u64,
    /// Clock ticks after boot at which the process started; tells a reused pid apart.
    pub starttime: u64,
    pub rss_pages: u64,
}

/// The fields of /proc/<pid>/stat the agent uses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StatFields<'a> {
    pub name: &'a str,
    pub state: &'a str,
    pub ticks: u64,
    pub threads: u32,
    pub starttime: u64,
    pub rss_pages: u64,
}

/// Parses /proc/<pid>/stat. The name (comm) may hold spaces and parentheses, so it runs
/// from the first '(' to the LAST ')'; the numbered fields follow it.
pub(crate) fn parse_stat(text: &str) -> Option<StatFields<'_>> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?;
    let mut fields = text.get(close + 1..)?.split_ascii_whitespace();
    let state = fields.next()?; // field 3
    let utime: u64 = fields.nth(10)?.parse().ok()?; // 14
    let stime: u64 = fields.next()?.parse().ok()?; // 15
    let threads = fields.nth(4)?.parse().ok()?; // 20
    let starttime = fields.nth(1)?.parse().ok()?; // 22
    let rss_pages: i64 = fields.nth(1)?.parse().ok()?; // 24, printed signed
    Some(StatFields {
        name,
        state,
        ticks: utime.saturating_add(stime),
        threads,
        starttime,
        rss_pages: u64::try_from(rss_pages).unwrap_or(0),
    })
}

/// The real uid from /proc/<pid>/status ("Uid:\treal\teffective\tsaved\tfs").
pub(crate) fn parse_status_uid(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Joins the NUL-separated arguments of /proc/<pid>/cmdline with spaces.
pub(crate) fn join_cmdline(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches(['\0', ' ']);
    let mut joined = String::with_capacity(text.len());
    for (i, arg) in text.split('\0').enumerate() {
        if i > 0 {
            joined.push(' ');
        }
        joined.push_str(arg);
    }
    joined
}

/// Reads the counters of every process, sorted by pid. Never fails: an unreadable /proc
/// gives an empty list, a process that vanished is left out.
pub(crate) fn read_all() -> Vec<ProcTicks> {
    let dir = match std::fs::read_dir("/proc") {
        Ok(dir) => dir,
        Err(error) => {
            tracing::debug!(%error, "cannot list /proc");
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(512);
    let mut path = String::with_capacity(32);
    let mut buf = Vec::with_capacity(512);
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        path.clear();
        let _ = write!(path, "/proc/{pid}/stat");
        if super::read_into(&path, &mut buf).is_err() {
            continue;
        }
        if let Some(f) = parse_stat(&String::from_utf8_lossy(&buf)) {
            out.push(ProcTicks {
                pid,
                ticks: f.ticks,
                starttime: f.starttime,
                rss_pages: f.rss_pages,
            });
        }
    }
    out.sort_unstable_by_key(|p| p.pid);
    out.shrink_to_fit();
    out
}

/// The measurement window and the units needed to turn ticks into percentages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub duration: Duration,
    pub clock_ticks: u64,
    pub cpu_count: u32,
}

impl Window {
    /// The most ticks all cores together can accrue in the window, rounded up.
    fn max_ticks(&self) -> u64 {
        let per_core = (self.duration.as_millis() * u128::from(self.clock_ticks)).div_ceil(1000);
        u64::try_from(per_core)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(self.cpu_count))
    }

    /// 100 means one core fully busy for the whole window.
    fn percent(&self, ticks: u64) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs <= 0.0 || self.clock_ticks == 0 {
            return 0.0;
        }
        ticks as f64 * 100.0 / (self.clock_ticks as f64 * secs)
    }
}

/// Ticks `cur` used in the window. A process absent from `prev`, or whose pid was reused
/// (another start time), started within the window: all its ticks count, capped at what
/// the window allows.
pub(crate) fn ticks_in_window(prev: &[ProcTicks], cur: &ProcTicks, max_ticks: u64) -> u64 {
    let before = prev
        .binary_search_by_key(&cur.pid, |p| p.pid)
        .ok()
        .and_then(|i| prev.get(i))
        .filter(|p| p.starttime == cur.starttime);
    match before {
        Some(p) => cur.ticks.saturating_sub(p.ticks),
        None => cur.ticks.min(max_ticks),
    }
}

/// One process's place in the rankings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ranked {
    pub pid: i32,
    pub starttime: u64,
    pub ticks: u64,
    pub rss_pages: u64,
}

/// Pure ranking: every process of `cur` with its ticks in the window, highest CPU first,
/// ties broken by pid.
pub(crate) fn rank_by_cpu(prev: &[ProcTicks], cur: &[ProcTicks], max_ticks: u64) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = cur
        .iter()
        .map(|p| Ranked {
            pid: p.pid,
            starttime: p.starttime,
            ticks: ticks_in_window(prev, p, max_ticks),
            rss_pages: p.rss_pages,
        })
        .collect();
    ranked.sort_unstable_by_key(|r| (Reverse(r.ticks), r.pid));
    ranked
}

/// The two top lists of a snapshot.
#[derive(Debug, Default)]
pub(crate) struct TopLists {
    pub by_cpu: Vec<Process>,
    pub by_memory: Vec<Process>,
}

/// Ranks the processes of `cur` and reads the details of the first `top_n` of each list
/// that are still alive.
pub(crate) fn top_lists(
    prev: &[ProcTicks],
    cur: &[ProcTicks],
    window: &Window,
    top_n: usize,
    mem_total_bytes: u64,
) -> TopLists {
    if top_n == 0 {
        return TopLists::default();
    }
    let page_size = rustix::param::page_size() as u64;
    let mut reader = DetailReader::default();
    let mut to_process = |r: &Ranked, known: &[Process]| -> Option<Process> {
        if let Some(p) = known.iter().find(|p| p.pid == r.pid) {
            return Some(p.clone());
        }
        let d = reader.read(r.pid, r.starttime)?;
        let rss_bytes = r.rss_pages.saturating_mul(page_size);
        Some(Process {
            pid: r.pid,
            name: d.name,
            command_line: d.command_line,
            user: users::name_of(d.uid),
            uid: d.uid,
            cpu_percent: window.percent(r.ticks),
            rss_bytes,
            memory_percent: if mem_total_bytes == 0 {
                0.0
            } else {
                rss_bytes as f64 * 100.0 / mem_total_bytes as f64
            },
            state: d.state,
            threads: d.threads,
        })
    };

    let mut ranked = rank_by_cpu(prev, cur, window.max_ticks());
    let mut by_cpu = Vec::with_capacity(top_n);
    for r in &ranked {
        if by_cpu.len() == top_n {
            break;
        }
        if let Some(p) = to_process(r, &[]) {
            by_cpu.push(p);
        }
    }
    ranked.sort_unstable_by_key(|r| (Reverse(r.rss_pages), r.pid));
    let mut by_memory = Vec::with_capacity(top_n);
    for r in &ranked {
        if by_memory.len() == top_n {
            break;
        }
        if let Some(p) = to_process(r, &by_cpu) {
            by_memory.push(p);
        }
    }
    TopLists { by_cpu, by_memory }
}

/// What a top list shows beyond the counters.
struct Details {
    name: String,
    command_line: String,
    uid: u32,
    state: String,
    threads: u32,
}

/// Reads process details with buffers reused across processes.
#[derive(Default)]
struct DetailReader {
    path: String,
    buf: Vec<u8>,
}

impl DetailReader {
    /// `None` when the process is gone or its pid now belongs to another process.
    fn read(&mut self, pid: i32, starttime: u64) -> Option<Details> {
        self.load(pid, "stat", SMALL_FILE_MAX_BYTES).ok()?;
        let (name, state, threads) = {
            let text = String::from_utf8_lossy(&self.buf);
            let f = parse_stat(&text).filter(|f| f.starttime == starttime)?;
            (f.name.to_owned(), f.state.to_owned(), f.threads)
        };
        self.load(pid, "status", SMALL_FILE_MAX_BYTES).ok()?;
        let uid = parse_status_uid(&String::from_utf8_lossy(&self.buf))?;
        // Kernel threads and zombies have an empty command line; so does a read failure.
        let command_line = match self.load(pid, "cmdline", CMDLINE_MAX_BYTES) {
            Ok(()) => join_cmdline(&self.buf),
            Err(_) => String::new(),
        };
        Some(Details {
            name,
            command_line,
            uid,
            state,
            threads,
        })
    }

    fn load(&mut self, pid: i32, file: &str, limit: u64) -> std::io::Result<()> {
        self.path.clear();
        let _ = write!(self.path, "/proc/{pid}/{file}");
        self.buf.clear();
        std::fs::File::open(&self.path)?
            .take(limit)
            .read_to_end(&mut self.buf)?;
        Ok(())
    }
}

/// The short name of a process (its comm), for the listening-socket owners; empty when
/// the process is gone.
pub(crate) fn name_of(pid: i32) -> String {
    name_and_start(pid).map(|(name, _)| name).unwrap_or_default()
}

/// Who a pid names right now: what `KillProcess` checks before it signals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The short name (comm), at most 15 bytes.
    pub name: String,
    /// Field 22 of /proc/<pid>/stat, in clock ticks since boot: with the pid, it names
    /// one process for the life of the host, since a reused pid starts later.
    pub starttime: u64,
    /// The thread group (process) this id belongs to; equal to the id for a process,
    /// different for one of its threads.
    pub tgid: i32,
}

/// The identity of `pid`, or `None` when no process or thread has that id.
pub fn identity(pid: i32) -> Option<Identity> {
    let (name, starttime) = name_and_start(pid)?;
    let status = std::fs::read(format!("/proc/{pid}/status")).ok()?;
    let tgid = parse_status_tgid(&String::from_utf8_lossy(&status))?;
    Some(Identity {
        name,
        starttime,
        tgid,
    })
}

/// The agent's one reader of process names: from /proc/<pid>/stat, with the start time
/// read in the same read so that the two always describe the same process.
fn name_and_start(pid: i32) -> Option<(String, u64)> {
    let raw = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let text = String::from_utf8_lossy(&raw);
    parse_stat(&text).map(|f| (f.name.to_owned(), f.starttime))
}

/// The thread group id from /proc/<pid>/status ("Tgid:\t1234").
pub(crate) fn parse_status_tgid(text: &str) -> Option<i32> {
    text.lines()
        .find_map(|line| line.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const STAT: &str = "1 (process_api) S 0 0 0 0 -1 4194560 31216 5867515 0 954 47 253 11034 \
        3340 10 -10 14 0 24 45010944 3038 18446744073709551615 1 1 0 0 0 0 0 4096 1256 0 0 0 17 \
        0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn stat_fields_are_taken_from_their_positions() {
        let f = parse_stat(STAT).unwrap();
        assert_eq!(
            f,
            StatFields {
                name: "process_api",
                state: "S",
                ticks: 47 + 253,
                threads: 14,
                starttime: 24,
                rss_pages: 3038,
            }
        );
    }

    #[test]
    fn stat_comm_with_spaces_and_parentheses_splits_at_the_last_paren() {
        let text = "4242 (evil) (name ) R 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 \
            3 0 5000 10000000 300 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let f = parse_stat(text).unwrap();
        assert_eq!(f.name, "evil) (name ");
        assert_eq!(f.state, "R");
        assert_eq!(f.ticks, 300);
        assert_eq!(f.threads, 3);
        assert_eq!(f.starttime, 5000);
        assert_eq!(f.rss_pages, 300);
    }

    #[test]
    fn stat_truncated_or_garbled_is_rejected() {
        assert_eq!(parse_stat("12 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("12 x S"), None);
        assert_eq!(parse_stat(")12 (x S 1"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn status_tgid_names_the_thread_group() {
        let text = "Name:\ttokio-runtime-w\nTgid:\t812\nNgid:\t0\nPid:\t815\n";
        assert_eq!(parse_status_tgid(text), Some(812));
        assert_eq!(parse_status_tgid("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_is_its_own_thread_group_and_named() {
        let me = i32::try_from(std::process::id()).unwrap();
        let id = identity(me).unwrap();
        assert_eq!(id.tgid, me);
        assert!(!id.name.is_empty() && id.starttime > 0);
        assert_eq!(name_of(me), id.name);
    }

    #[test]
    fn status_uid_is_the_real_uid() {
        let text = "Name:\tsshd\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t812\nPid:\t812\n\
            Uid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\nVmRSS:\t    1972 kB\n";
        assert_eq!(parse_status_uid(text), Some(1000));
        assert_eq!(parse_status_uid("Name:\tx\n"), None);
    }

    #[test]
    fn cmdline_arguments_are_joined_by_spaces() {
        assert_eq!(
            join_cmdline(b"/usr/bin/python3\0-m\0http.server\0"),
            "/usr/bin/python3 -m http.server"
        );
        assert_eq!(
            join_cmdline(b"nginx: worker process\0\0\0"),
            "nginx: worker process"
        );
        assert_eq!(join_cmdline(b""), "");
        assert_eq!(join_cmdline(b"a\xffb\0c\0"), "a\u{fffd}b c");
    }

    fn ticks(pid: i32, ticks: u64, starttime: u64) -> ProcTicks {
        ProcTicks {
            pid,
            ticks,
            starttime,
            rss_pages: 0,
        }
    }

    #[test]
    fn cpu_ticks_are_deltas_and_new_or_reused_pids_count_from_their_start() {
        let prev = [ticks(1, 100, 10), ticks(5, 500, 50), ticks(9, 900, 90)];
        // Same process: the delta.
        assert_eq!(ticks_in_window(&prev, &ticks(1, 130, 10), 1000), 30);
        // Reused pid (other start time): its own ticks, not 20 - 500.
        assert_eq!(ticks_in_window(&prev, &ticks(5, 20, 77), 1000), 20);
        // New pid: its ticks, capped at what the window allows.
        assert_eq!(ticks_in_window(&prev, &ticks(7, 40, 95), 1000), 40);
        assert_eq!(ticks_in_window(&prev, &ticks(7, 4000, 95), 60), 60);
        // Counters never go backwards into a negative figure.
        assert_eq!(ticks_in_window(&prev, &ticks(9, 800, 90), 1000), 0);
    }

    #[test]
    fn ranking_is_by_cpu_then_pid() {
        let prev = [ticks(1, 0, 1), ticks(2, 0, 2), ticks(3, 0, 3)];
        let cur = [
            ticks(1, 5, 1),
            ticks(2, 9, 2),
            ticks(3, 5, 3),
            ticks(4, 1, 4),
        ];
        let order: Vec<i32> = rank_by_cpu(&prev, &cur, 100)
            .iter()
            .map(|r| r.pid)
            .collect();
        assert_eq!(order, [2, 1, 3, 4]);
    }

    #[test]
    fn window_turns_ticks_into_percent_of_one_core() {
        let w = Window {
            duration: Duration::from_millis(500),
            clock_ticks: 100,
            cpu_count: 4,
        };
        assert_eq!(w.percent(50), 100.0);
        assert_eq!(w.percent(25), 50.0);
        assert_eq!(w.max_ticks(), 200);
        let empty = Window {
            duration: Duration::ZERO,
            ..w
        };
        assert_eq!(empty.percent(10), 0.0);
        assert_eq!(empty.max_ticks(), 0);
    }
}
