//! Runs one child process for a job: stdout and stderr interleaved line by line into the
//! job's output log, stdin null, in its own process group, bounded by the job's deadline
//! and its stop signal (cancel or agent shutdown): SIGTERM to the group, then SIGKILL
//! after the grace period.
//!
//! A command ends when its process has exited and its output pipes are closed: a
//! background process that keeps them open keeps the job running until it exits, the
//! job times out or is cancelled (which kills the whole group), so no output is lost.
//!
//! Never a shell: the program and its arguments are passed as they are. Output is
//! never held in memory beyond one partial line per stream (at most `LINE_MAX` bytes),
//! except stdout that a job kind asked to capture for parsing (bounded by `CAPTURE_MAX`).

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::output::OutputLog;

/// Longest partial line held back before it is written anyway.
const LINE_MAX: usize = 64 * 1024;
/// Most stdout a kind may capture for parsing (package manager plans are far smaller).
const CAPTURE_MAX: usize = 16 * 1024 * 1024;
/// How long to collect the last output of a killed process group.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);

/// Why a job is asked to stop before it ends by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Cancelled { by: String },
    Shutdown,
}

/// Why a job did not run to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupt {
    Stopped(StopReason),
    TimedOut,
}

/// What a running job kind has to work with.
pub struct JobCtx {
    pub log: OutputLog,
    stop: watch::Receiver<Option<StopReason>>,
    deadline: Instant,
    grace: Duration,
}

impl JobCtx {
    pub fn new(
        log: OutputLog,
        stop: watch::Receiver<Option<StopReason>>,
        deadline: Instant,
        grace: Duration,
    ) -> Self {
        JobCtx {
            log,
            stop,
            deadline,
            grace,
        }
    }

    /// Resolves when the job must stop: asked to, or out of time.
    pub async fn interrupted(&mut self) -> Interrupt {
        let deadline = self.deadline;
        tokio::select! {
            r = self.stop.wait_for(|s| s.is_some()) => match r {
                Ok(s) => Interrupt::Stopped(s.clone().unwrap_or(StopReason::Shutdown)),
                // The manager is gone: nobody can see this job end, treat it as shutdown.
                Err(_) => Interrupt::Stopped(StopReason::Shutdown),
            },
            _ = tokio::time::sleep_until(deadline) => Interrupt::TimedOut,
        }
    }

    /// The interrupt already due, if any, without waiting.
    pub fn check(&self) -> Option<Interrupt> {
        if let Some(s) = self.stop.borrow().clone() {
            return Some(Interrupt::Stopped(s));
        }
        (Instant::now() >= self.deadline).then_some(Interrupt::TimedOut)
    }
}

/// One command to run.
#[derive(Debug, Clone, Default)]
pub struct Cmd {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    /// Start from an empty environment instead of the agent's.
    pub env_clear: bool,
    pub env: Vec<(OsString, OsString)>,
    /// Keep stdout (up to `CAPTURE_MAX`) for the kind to parse; it is logged as well.
    pub capture_stdout: bool,
    /// Run as this user instead of the agent's: the child sets its gid and uid between
    /// fork and exec (and, as root, clears its supplementary groups), so no helper
    /// program is looked up anywhere.
    pub run_as: Option<RunAs>,
}

/// The ids a command switches to before it executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl Cmd {
    pub fn new(program: impl Into<OsString>) -> Cmd {
        Cmd {
            program: program.into(),
            ..Cmd::default()
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Cmd {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Cmd {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn capture(mut self) -> Cmd {
        self.capture_stdout = true;
        self
    }

    /// The command as a human reads it in the log.
    pub fn display(&self) -> String {
        let line = std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        match self.run_as {
            Some(u) => format!("(uid {} gid {}) {line}", u.uid, u.gid),
            None => line,
        }
    }
}

/// A command that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// "exit code 3" or "killed by signal 9".
    pub fn describe(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "unknown exit status".into(),
        }
    }
}

/// A command that did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("interrupted")]
    Interrupted(Interrupt),
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot write the job's output log: {0}")]
    Log(std::io::Error),
}

/// Pending bytes of one output stream, written out at line ends.
struct LineBuf {
    pending: Vec<u8>,
}

impl LineBuf {
    fn new() -> Self {
        LineBuf {
            pending: Vec::new(),
        }
    }

    /// Takes new bytes; returns what is ready to be written (whole lines, or a full buffer).
    fn push(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.pending.extend_from_slice(data);
        if self.pending.len() >= LINE_MAX {
            return Some(std::mem::take(&mut self.pending));
        }
        let end = memchr::memrchr(b'\n', &self.pending)? + 1;
        let rest = self.pending.split_off(end);
        Some(std::mem::replace(&mut self.pending, rest))
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// One output pipe of the child with its read buffer.
struct Stream<R> {
    pipe: Option<R>,
    buf: Vec<u8>,
    lines: LineBuf,
}

impl<R: AsyncRead + Unpin> Stream<R> {
    fn new(pipe: Option<R>) -> Self {
        Stream {
            pipe,
            buf: vec![0; 64 * 1024],
            lines: LineBuf::new(),
        }
    }

    async fn read(&mut self) -> std::io::Result<usize> {
        match self.pipe.as_mut() {
            Some(p) => p.read(&mut self.buf).await,
            None => std::future::pending().await,
        }
    }
}

/// Runs `cmd` to its end, or until the job is interrupted (then the process group is
/// terminated before this returns).
pub async fn run(ctx: &mut JobCtx, cmd: &Cmd) -> Result<Finished, RunError> {
    if let Some(i) = ctx.check() {
        return Err(RunError::Interrupted(i));
    }
    let mut command = tokio::process::Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own group, so that cancel reaches the grandchildren too.
        .process_group(0);
    if cmd.env_clear {
        command.env_clear();
    }
    command.envs(cmd.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &cmd.cwd {
        command.current_dir(cwd);
    }
    if let Some(u) = cmd.run_as {
        // The standard library calls setgid, setgroups(0) (as root), then setuid in the
        // child, before chdir and exec: the order that leaves no way back to root.
        command.gid(u.gid).uid(u.uid);
    }
    ctx.log
        .note(&format!("$ {}", cmd.display()))
        .await
        .map_err(RunError::Log)?;
    let mut child = command.spawn().map_err(|source| RunError::Spawn {
        program: cmd.program.to_string_lossy().into_owned(),
        source,
    })?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    let mut out = Stream::new(child.stdout.take());
    let mut err = Stream::new(child.stderr.take());
    let mut status: Option<ExitStatus> = None;
    let res = pump(ctx, cmd, &mut child, pgid, &mut out, &mut err, &mut status).await;
    if let Err(RunError::Log(_)) = &res {
        // The output cannot be kept (cap, free-space floor, write error): the job must
        // not go on changing the host unrecorded. Kill the whole group now, no grace.
        terminate(&mut child, pgid, status.is_some(), Duration::ZERO).await;
    }
    res
}

/// Moves output from the pipes to the log until the command ended or was interrupted.
async fn pump<R1, R2>(
    ctx: &mut JobCtx,
    cmd: &Cmd,
    child: &mut tokio::process::Child,
    pgid: Option<Pid>,
    out: &mut Stream<R1>,
    err: &mut Stream<R2>,
    status: &mut Option<ExitStatus>,
) -> Result<Finished, RunError>
where
    R1: AsyncRead + Unpin,
    R2: AsyncRead + Unpin,
{
    let mut captured = Vec::new();
    loop {
        if out.pipe.is_none() && err.pipe.is_none() && status.is_some() {
            break;
        }
        tokio::select! {
            r = out.read() => {
                let n = r.unwrap_or(0);
                if n == 0 {
                    out.pipe = None;
                    let rest = out.lines.take();
                    if cmd.capture_stdout { capture(&mut captured, &rest); }
                    ctx.log.append(&rest).await.map_err(RunError::Log)?;
                } else {
                    if cmd.capture_stdout { capture(&mut captured, &out.buf[..n]); }
                    if let Some(ready) = out.lines.push(&out.buf[..n]) {
                        ctx.log.append(&ready).await.map_err(RunError::Log)?;
                    }
                }
            }
            r = err.read() => {
                let n = r.unwrap_or(0);
                if n == 0 {
                    err.pipe = None;
                    ctx.log.append(&err.lines.take()).await.map_err(RunError::Log)?;
                } else if let Some(ready) = err.lines.push(&err.buf[..n]) {
                    ctx.log.append(&ready).await.map_err(RunError::Log)?;
                }
            }
            s = child.wait(), if status.is_none() => {
                match s {
                    Ok(s) => *status = Some(s),
                    Err(e) => {
                        *status = Some(ExitStatus::from_raw(0x7f00));
                        ctx.log.note(&format!("cannot wait for {}: {e}", cmd.display())).await.map_err(RunError::Log)?;
                    }
                }
            }
            i = ctx.interrupted() => {
                let why = match &i {
                    Interrupt::TimedOut => "job timed out".to_string(),
                    Interrupt::Stopped(StopReason::Cancelled { by }) => format!("job cancelled by {by}"),
                    Interrupt::Stopped(StopReason::Shutdown) => "agent shutting down".to_string(),
                };
                ctx.log.note(&format!("{why}: stopping {} (SIGTERM, SIGKILL after {} s)", cmd.display(), ctx.grace.as_secs())).await.map_err(RunError::Log)?;
                let grace = ctx.grace;
                terminate(child, pgid, status.is_some(), grace).await;
                drain(ctx, out, err).await?;
                return Err(RunError::Interrupted(i));
            }
        }
    }
    Ok(Finished {
        status: status.unwrap_or_else(|| ExitStatus::from_raw(0x7f00)),
        stdout: captured,
    })
}

fn capture(into: &mut Vec<u8>, data: &[u8]) {
    let room = CAPTURE_MAX.saturating_sub(into.len());
    into.extend_from_slice(&data[..data.len().min(room)]);
}

/// SIGTERM to the group, SIGKILL after `grace` if the child has not exited, then SIGKILL
/// to whatever is left of the group.
async fn terminate(
    child: &mut tokio::process::Child,
    pgid: Option<Pid>,
    exited: bool,
    grace: Duration,
) {
    let Some(pgid) = pgid else {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return;
    };
    if !exited {
        let _ = kill_process_group(pgid, Signal::TERM);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = kill_process_group(pgid, Signal::KILL);
            let _ = child.wait().await;
        }
    }
    // Grandchildren that outlived the child; ESRCH when there are none.
    let _ = kill_process_group(pgid, Signal::KILL);
}

/// Collects what the stopped processes had still written, for a bounded time.
async fn drain<R1, R2>(
    ctx: &mut JobCtx,
    out: &mut Stream<R1>,
    err: &mut Stream<R2>,
) -> Result<(), RunError>
where
    R1: AsyncRead + Unpin,
    R2: AsyncRead + Unpin,
{
    let until = Instant::now() + DRAIN_AFTER_KILL;
    while out.pipe.is_some() || err.pipe.is_some() {
        tokio::select! {
            r = out.read() => match r {
                Ok(n) if n > 0 => {
                    if let Some(ready) = out.lines.push(&out.buf[..n]) {
                        ctx.log.append(&ready).await.map_err(RunError::Log)?;
                    }
                }
                _ => out.pipe = None,
            },
            r = err.read() => match r {
                Ok(n) if n > 0 => {
                    if let Some(ready) = err.lines.push(&err.buf[..n]) {
                        ctx.log.append(&ready).await.map_err(RunError::Log)?;
                    }
                }
                _ => err.pipe = None,
            },
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    let rest = out.lines.take();
    ctx.log.append(&rest).await.map_err(RunError::Log)?;
    let rest = err.lines.take();
    ctx.log.append(&rest).await.map_err(RunError::Log)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn line_buffer_releases_whole_lines_only() {
        let mut b = LineBuf::new();
        assert_eq!(b.push(b"abc"), None);
        assert_eq!(b.push(b"def\ngh"), Some(b"abcdef\n".to_vec()));
        assert_eq!(b.push(b"\n"), Some(b"gh\n".to_vec()));
        assert_eq!(b.take(), Vec::<u8>::new());
    }

    #[test]
    fn line_buffer_releases_an_overlong_line() {
        let mut b = LineBuf::new();
        let big = vec![b'x'; LINE_MAX];
        assert_eq!(b.push(&big).map(|v| v.len()), Some(LINE_MAX));
    }
}
