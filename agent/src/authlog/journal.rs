//! Failed logins from the systemd journal, for hosts without a syslog file (Amazon Linux
//! 2023 ships without rsyslog). Runs `journalctl -o json --show-cursor` (absolute path,
//! empty environment, stdin closed, killed when dropped, a deadline and a byte budget per
//! query) and reads only what is new since the cursor it stored in the agent's state dir.
//!
//! An entry counts only when its trusted fields say it came from the service: `_COMM`
//! (set by journald from the kernel, not by the sender) names an accepted program and
//! `_UID` is 0. `SYSLOG_IDENTIFIER` is what the sender claims and is never used, so a local
//! user's `logger -t sshd` (`_COMM=logger`) or a binary they named `sshd` (`_UID` not 0)
//! is not counted. Never writes anything but its cursor file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ops_proto::v1::AuthFailures;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::events::EventStore;
use super::parse::{Kind, LineParser, Programs};
use super::timestamp::{now_unix_ms, MAX_CLOCK_SKEW_MS};

/// Longest journal entry (one JSON line) taken; a longer one is skipped as malformed.
const MAX_ENTRY_BYTES: usize = 256 << 10;
/// Most JSON read from `journalctl` per query; the rest is read by the next query.
const MAX_BYTES_PER_QUERY: u64 = 512 << 20;
/// How long one `journalctl` run may take before it is killed (progress is kept).
const QUERY_DEADLINE: Duration = Duration::from_secs(60);
/// Most of `journalctl`'s stderr kept for an error message.
const MAX_STDERR_BYTES: u64 = 4096;

/// Why the journal could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot run {}: {source}; install systemd (journalctl) or configure an auth log file", program.display())]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("{} failed ({status}): {stderr}", program.display())]
    Failed { program: PathBuf, status: String, stderr: String },
    #[error("reading {} output failed: {source}", program.display())]
    Read { program: PathBuf, source: std::io::Error },
    #[error("{} did not finish within {}s; the next query continues where this one stopped", program.display(), QUERY_DEADLINE.as_secs())]
    Timeout { program: PathBuf },
    #[error("cannot store the journal cursor in {}: {source}", path.display())]
    Cursor { path: PathBuf, source: std::io::Error },
    #[error("building the failure-marker search failed: {0}")]
    Matcher(#[from] aho_corasick::BuildError),
}

/// Which journal `journalctl` reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalSource {
    /// The host's journal.
    System,
    /// `--directory DIR` (every journal file in it).
    Directory(PathBuf),
    /// `--file FILE`.
    File(PathBuf),
}

impl JournalSource {
    fn args(&self) -> Vec<String> {
        match self {
            JournalSource::System => Vec::new(),
            JournalSource::Directory(dir) => vec![format!("--directory={}", dir.display())],
            JournalSource::File(file) => vec![format!("--file={}", file.display())],
        }
    }

    fn describe(&self) -> String {
        match self {
            JournalSource::System => "journal".to_owned(),
            JournalSource::Directory(dir) => format!("journal:{}", dir.display()),
            JournalSource::File(file) => format!("journal:{}", file.display()),
        }
    }
}

/// How to reach the journal.
#[derive(Clone, Debug)]
pub struct JournalSettings {
    /// Absolute path of `journalctl`.
    pub journalctl: PathBuf,
    pub source: JournalSource,
    /// Where the cursor is kept between queries and restarts.
    pub cursor_file: PathBuf,
    pub programs: Programs,
    pub max_events: usize,
}

/// What is stored in the cursor file.
#[derive(Debug, Serialize, Deserialize)]
struct StoredCursor {
    source: JournalSource,
    cursor: String,
    /// Time of the entry at the cursor: history up to it was read before a restart.
    realtime_unix_us: i64,
}

/// The fields of a journal entry that are used. `MESSAGE` is a string, or an array of
/// bytes when it is not UTF-8.
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "__CURSOR")]
    cursor: Option<String>,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime: Option<String>,
    #[serde(rename = "_COMM")]
    comm: Option<String>,
    #[serde(rename = "_UID")]
    uid: Option<String>,
    #[serde(rename = "MESSAGE")]
    message: Option<serde_json::Value>,
}

/// The journal reader: its cursor and the retained events.
pub struct Journal {
    settings: JournalSettings,
    store: EventStore,
    /// Where reading continues; `None` before the first read.
    cursor: Option<StoredCursor>,
    /// Whether the stored cursor has been looked at (once, on the first query).
    loaded: bool,
    malformed: u64,
}

/// What one `journalctl` run did.
#[derive(Default)]
struct RunStats {
    bytes: u64,
    /// The run stopped early (deadline or byte budget): its progress is kept.
    cut_short: Option<JournalError>,
}

impl Journal {
    pub fn new(settings: JournalSettings) -> Journal {
        let store = EventStore::new(settings.max_events);
        Journal {
            settings,
            store,
            cursor: None,
            loaded: false,
            malformed: 0,
        }
    }

    /// Reads the entries appended since the stored cursor (everything on `rescan` or when
    /// no cursor is stored) and counts the retained events at or after `since_unix_ms`.
    /// After a restart the stored cursor is honoured: history before it is not read again,
    /// and answers whose window reaches before it say `lower_bound`.
    /// Where this reader's journal files are: journald's folders (persistent, then
    /// volatile) for the host's journal, else the configured folder or file.
    pub fn journal_locations(&self) -> Vec<PathBuf> {
        match &self.settings.source {
            JournalSource::System => vec![PathBuf::from("/var/log/journal"), PathBuf::from("/run/log/journal")],
            JournalSource::Directory(d) => vec![d.clone()],
            JournalSource::File(f) => vec![f.clone()],
        }
    }

    pub async fn query(
        &mut self,
        since_unix_ms: i64,
        top_n: usize,
        rescan: bool,
    ) -> Result<AuthFailures, JournalError> {
        if rescan {
            self.store = EventStore::new(self.settings.max_events);
            self.cursor = None;
            self.malformed = 0;
            self.loaded = true;
        }
        if !self.loaded {
            self.loaded = true;
            self.cursor = self.load_cursor();
            if let Some(stored) = &self.cursor {
                self.store.mark_unread_until(stored.realtime_unix_us / 1000);
            }
        }
        let parser = JournalParser::new(self.settings.programs.clone())?;
        let stats = match self.run(&parser).await {
            // A cursor journalctl cannot seek to (journal vacuumed or replaced): start over.
            Err(JournalError::Failed { stderr, .. }) if self.cursor.is_some() && stderr.contains("cursor") => {
                tracing::warn!(%stderr, "stored journal cursor is no longer valid; reading the journal from its start");
                self.cursor = None;
                self.run(&parser).await?
            }
            other => other?,
        };
        self.save_cursor()?;
        if let Some(error) = stats.cut_short {
            tracing::warn!(%error, "journal read stopped early; the next query continues from the cursor");
        }
        let mut answer = super::answer_from(&self.store, since_unix_ms, top_n);
        answer.source = self.settings.source.describe();
        answer.malformed_lines = self.malformed;
        answer.bytes_read = stats.bytes;
        if stats.bytes > 0 {
            answer.files_read = vec![answer.source.clone()];
        }
        Ok(answer)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.settings.journalctl);
        cmd.env_clear()
            .env("LC_ALL", "C")
            .env("SYSTEMD_COLORS", "0")
            .arg("--no-pager")
            .arg("--output=json")
            .arg("--show-cursor")
            .args(self.settings.source.args());
        if let Some(stored) = &self.cursor {
            cmd.arg(format!("--after-cursor={}", stored.cursor));
        }
        // journalctl ORs matches on one field and ANDs across fields: any accepted program,
        // logged by root. The entries are checked again when read.
        for program in self.settings.programs.names() {
            cmd.arg(format!("_COMM={program}"));
        }
        cmd.arg("_UID=0");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&mut self, parser: &JournalParser) -> Result<RunStats, JournalError> {
        let program = self.settings.journalctl.clone();
        let mut child = self.command().spawn().map_err(|source| JournalError::Spawn {
            program: program.clone(),
            source,
        })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(JournalError::Read {
                program,
                source: std::io::Error::other("journalctl's output pipes were not set up"),
            });
        };
        let mut stats = RunStats::default();
        let errors = async {
            let mut text = Vec::new();
            // Drain it all so journalctl never blocks on a full pipe; keep the start.
            let mut limited = stderr.take(MAX_STDERR_BYTES);
            let _ = limited.read_to_end(&mut text).await;
            let mut rest = limited.into_inner();
            let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
            String::from_utf8_lossy(&text).trim().to_owned()
        };
        let reading = self.read_entries(parser, stdout, &mut stats);
        let finished = tokio::time::timeout(QUERY_DEADLINE, async { tokio::join!(reading, errors) }).await;
        let (read, stderr) = match finished {
            Ok(both) => both,
            Err(_) => {
                let _ = child.kill().await;
                stats.cut_short = Some(JournalError::Timeout { program });
                return Ok(stats);
            }
        };
        read.map_err(|source| JournalError::Read {
            program: program.clone(),
            source,
        })?;
        if stats.cut_short.is_some() {
            let _ = child.kill().await;
            return Ok(stats);
        }
        let status = tokio::time::timeout(QUERY_DEADLINE, child.wait())
            .await
            .map_err(|_| JournalError::Timeout { program: program.clone() })?
            .map_err(|source| JournalError::Read { program: program.clone(), source })?;
        // Exit 1 with "No entries" is not an error; journalctl says nothing then.
        if !status.success() && !stderr.is_empty() {
            return Err(JournalError::Failed {
                program,
                status: status.to_string(),
                stderr,
            });
        }
        Ok(stats)
    }

    async fn read_entries(
        &mut self,
        parser: &JournalParser,
        stdout: tokio::process::ChildStdout,
        stats: &mut RunStats,
    ) -> std::io::Result<()> {
        let mut reader = BufReader::with_capacity(1 << 16, stdout);
        let mut line = Vec::with_capacity(4096);
        let latest_ms = now_unix_ms().saturating_add(MAX_CLOCK_SKEW_MS);
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_ENTRY_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Ok(());
            }
            if line.len() > MAX_ENTRY_BYTES && line.last() != Some(&b'\n') {
                // An oversized entry: skip the rest of it, count it, go on.
                self.malformed += 1;
                stats.bytes += n as u64;
                let mut rest = Vec::new();
                loop {
                    rest.clear();
                    let m = (&mut reader).take(1 << 16).read_until(b'\n', &mut rest).await?;
                    stats.bytes += m as u64;
                    if m == 0 || rest.last() == Some(&b'\n') {
                        break;
                    }
                }
                continue;
            }
            if let Some(cursor) = line.strip_prefix(b"-- cursor: ") {
                let cursor = String::from_utf8_lossy(cursor).trim().to_owned();
                if let Some(stored) = self.cursor.as_mut() {
                    stored.cursor = cursor;
                }
                continue;
            }
            // Entries only: the closing `-- cursor:` line is bookkeeping.
            stats.bytes += n as u64;
            self.take_entry(parser, &line, latest_ms);
            if stats.bytes >= MAX_BYTES_PER_QUERY {
                stats.cut_short = Some(JournalError::Read {
                    program: self.settings.journalctl.clone(),
                    source: std::io::Error::other(format!("read budget of {MAX_BYTES_PER_QUERY} bytes reached")),
                });
                return Ok(());
            }
        }
    }

    /// Counts one JSON entry and moves the cursor past it.
    fn take_entry(&mut self, parser: &JournalParser, line: &[u8], latest_ms: i64) {
        let Ok(entry) = serde_json::from_slice::<Entry>(line) else {
            self.malformed += 1;
            return;
        };
        let realtime_us = entry.realtime.as_deref().and_then(|t| t.parse::<i64>().ok());
        if let (Some(cursor), Some(realtime_unix_us)) = (entry.cursor, realtime_us) {
            self.cursor = Some(StoredCursor {
                source: self.settings.source.clone(),
                cursor,
                realtime_unix_us,
            });
        }
        let (Some(comm), Some(uid)) = (entry.comm.as_deref(), entry.uid.as_deref()) else {
            return;
        };
        if uid != "0" {
            return;
        }
        let message = match &entry.message {
            Some(serde_json::Value::String(text)) => text.as_bytes().to_vec(),
            Some(serde_json::Value::Array(bytes)) => bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect(),
            _ => return,
        };
        let Some((kind, at)) = parser.marker(&message) else {
            return;
        };
        match parser.lines.classify_message(comm.as_bytes(), &message, kind, at) {
            None => {}
            Some(None) => self.malformed += 1,
            Some(Some(attempt)) => match realtime_us.map(|us| us.div_euclid(1000)) {
                Some(ms) if ms <= latest_ms => {
                    self.store
                        .push(ms, attempt.kind, attempt.user, attempt.source, attempt.repeat)
                }
                _ => self.malformed += 1,
            },
        }
    }

    fn load_cursor(&self) -> Option<StoredCursor> {
        let path = &self.settings.cursor_file;
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the stored journal cursor; reading the journal from its start");
                return None;
            }
        };
        match serde_json::from_slice::<StoredCursor>(&text) {
            Ok(stored) if stored.source == self.settings.source => Some(stored),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "stored journal cursor is unreadable; reading the journal from its start");
                None
            }
        }
    }

    /// Writes the cursor atomically (temporary file, then rename).
    fn save_cursor(&self) -> Result<(), JournalError> {
        let Some(stored) = &self.cursor else {
            return Ok(());
        };
        let path = &self.settings.cursor_file;
        let error = |source| JournalError::Cursor { path: path.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        let text = serde_json::to_vec(stored).map_err(|e| error(std::io::Error::other(e)))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(error)?;
        std::fs::rename(&tmp, path).map_err(error)
    }

    /// The cursor file in use.
    pub fn cursor_file(&self) -> &Path {
        &self.settings.cursor_file
    }
}

/// Finds a failure marker in a message and hands the message to the line parser.
struct JournalParser {
    markers: aho_corasick::AhoCorasick,
    lines: LineParser,
}

impl JournalParser {
    fn new(programs: Programs) -> Result<JournalParser, aho_corasick::BuildError> {
        Ok(JournalParser {
            markers: aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                .build(Kind::MARKERS)?,
            lines: LineParser::new(programs),
        })
    }

    fn marker(&self, message: &[u8]) -> Option<(Kind, usize)> {
        let found = self.markers.find(message)?;
        Some((*Kind::ALL.get(found.pattern().as_usize())?, found.start()))
    }
}
