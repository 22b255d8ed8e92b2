//! Failed logins from the host's auth log (RHEL `/var/log/secure`, Debian
//! `/var/log/auth.log`), read incrementally: each query reads only bytes it has not read
//! before, follows rotation, and answers from a bounded, compact memory of failure events.
//! Only ever reads the configured files and their rotated siblings, never through a
//! symlink and only regular files owned by root; never writes, never holds more than one
//! read chunk. Blocking file I/O: call it from `spawn_blocking`. When no configured file
//! exists, [`sources::AuthSources`] reads the systemd journal instead ([`journal`]).

mod events;
mod files;
pub mod journal;
#[cfg(test)]
mod journal_tests;
mod parse;
mod scan;
pub mod sources;
#[cfg(test)]
mod tests;
mod timestamp;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use files::OpenError;
pub use parse::{Programs, DEFAULT_PROGRAMS};

use ops_proto::v1::{AuthFailures, NameCount};

use events::EventStore;
use files::FileId;
use scan::{CountingReader, ScanOutcome, Scanner, Tail};
use timestamp::SyslogClock;

/// Length of the top users / top sources lists when the caller asks for 0: the agent's one
/// top-N default.
pub use crate::collect::DEFAULT_TOP_N;

/// Why a query could not read the live auth log.
#[derive(Debug, thiserror::Error)]
pub enum AuthLogError {
    #[error(
        "no auth log found (tried {}); set the agent's auth log paths to where this host's syslog writes sshd messages",
        display_paths(tried)
    )]
    NoLogFile { tried: Vec<PathBuf> },
    #[error("cannot open auth log {}: {source}; the agent must be able to read it (root or the adm group)", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("refusing to read auth log {}: it {reason}", path.display())]
    Refused { path: PathBuf, reason: OpenError },
    #[error("reading auth log {} failed: {source}; the next query resumes where reading stopped", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("building the failure-marker search failed: {0}")]
    Matcher(#[from] aho_corasick::BuildError),
    #[error("no configured auth log file exists, so the journal was read: {0}")]
    Journal(#[from] journal::JournalError),
    #[error(
        "no auth log found (tried {}) and no systemd journal files in {}: nothing to count failed logins from; \
         set the agent's auth log paths, or [auth_log] journal_directory",
        display_paths(tried),
        display_paths(journal_dirs)
    )]
    NoSource { tried: Vec<PathBuf>, journal_dirs: Vec<PathBuf> },
    #[error("auth log task failed: {0}")]
    Task(String),
}

impl AuthLogError {
    fn opening(path: &Path, error: OpenError) -> AuthLogError {
        match error {
            OpenError::Io(source) => AuthLogError::Open {
                path: path.to_path_buf(),
                source,
            },
            reason => AuthLogError::Refused {
                path: path.to_path_buf(),
                reason,
            },
        }
    }
}

/// Bytes before the read offset are remembered ([`MARK_BYTES`]) to recognise the same
/// file content later: a file truncated in place and refilled past the offset no longer has
/// them there, and the copy that `copytruncate` left does.
use scan::MARK_BYTES;

fn display_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    if shown.is_empty() {
        "no paths configured".to_owned()
    } else {
        shown.join(", ")
    }
}

/// The auth log reader: candidate paths, where reading stopped, and the retained events.
pub struct AuthLog {
    candidates: Vec<PathBuf>,
    programs: Programs,
    /// Owner a log file must have to be read: root, except in tests run unprivileged.
    required_owner: u32,
    max_events: usize,
    store: EventStore,
    /// The live file being followed; `None` until a query finds one.
    live: Option<Live>,
    /// Failure-looking lines that could not be parsed, since the last (re)start.
    malformed_lines: u64,
}

struct Live {
    path: PathBuf,
    /// `None` before the first read and while the file is missing after a rotation.
    id: Option<FileId>,
    /// Where the next read starts: always the start of a line.
    offset: u64,
    /// Bytes seen after `offset` without a newline (a line still being written): they are
    /// re-read only once the file has grown past them.
    pending: u64,
    /// The (up to [`MARK_BYTES`]) bytes just before `offset`.
    mark: Vec<u8>,
}

/// What one query read.
#[derive(Default)]
struct CallStats {
    bytes_read: u64,
    files_read: Vec<String>,
}

impl CallStats {
    fn record(&mut self, path: &Path, bytes: u64) {
        self.bytes_read += bytes;
        if bytes > 0 {
            self.files_read.push(path.display().to_string());
        }
    }
}

impl AuthLog {
    /// `paths`: candidates, first existing wins. `max_events`: bound on retained events
    /// (oldest evicted first, counted).
    pub fn new(paths: Vec<PathBuf>, max_events: usize) -> AuthLog {
        AuthLog {
            candidates: paths,
            programs: Programs::default(),
            required_owner: 0,
            max_events,
            store: EventStore::new(max_events),
            live: None,
            malformed_lines: 0,
        }
    }

    /// Accept only lines whose syslog tag names one of `programs` (default
    /// [`DEFAULT_PROGRAMS`]).
    pub fn with_programs(mut self, programs: Programs) -> AuthLog {
        self.programs = programs;
        self
    }

    /// The owner a log file must have (root unless changed; tests run unprivileged).
    pub fn with_required_owner(mut self, uid: u32) -> AuthLog {
        self.required_owner = uid;
        self
    }

    /// The configured paths, in the order they are tried.
    pub fn paths(&self) -> &[PathBuf] {
        &self.candidates
    }

    /// Whether any configured path exists, so that this reader, not the journal, answers.
    pub fn has_file(&self) -> bool {
        files::first_existing(&self.candidates).is_some()
    }

    /// Reads what was appended since the last call (everything, with rotated siblings, on
    /// the first call or with `rescan`), following rotation and truncation, then counts
    /// the retained events at or after `since_unix_ms`. `top_n` 0 means [`DEFAULT_TOP_N`].
    ///
    /// `malformed_lines` and `evicted_events` count everything read since the first query
    /// or the last rescan (an unparseable line has no time to filter by). `bytes_read` is
    /// what this call took from disk: compressed bytes for gzip siblings, and an unfinished
    /// last line once more when it is read complete. A rotated file that cannot be read is
    /// logged and skipped; an unreadable live file is an error, and the next query resumes
    /// where reading stopped.
    pub fn query(
        &mut self,
        since_unix_ms: i64,
        top_n: usize,
        rescan: bool,
    ) -> Result<AuthFailures, AuthLogError> {
        let mut scanner = Scanner::new(self.programs.clone())?;
        let mut call = CallStats::default();
        let found = files::first_existing(&self.candidates).map(Path::to_path_buf);
        let following = self.live.as_ref().map(|live| live.path.as_path());
        match found {
            Some(path) if rescan || following != Some(path.as_path()) => {
                self.reset();
                self.read_history(&mut scanner, &mut call, path)?;
            }
            Some(_) => self.read_new(&mut scanner, &mut call)?,
            // Between logrotate's rename and the new file's creation: finish the old file.
            None if !rescan && self.live.is_some() => self.follow_vanished(&mut scanner, &mut call),
            None => {
                return Err(AuthLogError::NoLogFile {
                    tried: self.candidates.clone(),
                })
            }
        }
        Ok(self.answer(since_unix_ms, top_n, call))
    }

    fn reset(&mut self) {
        self.store = EventStore::new(self.max_events);
        self.live = None;
        self.malformed_lines = 0;
    }

    /// First read of a live file: its rotated siblings oldest first, then the file itself.
    fn read_history(
        &mut self,
        scanner: &mut Scanner,
        call: &mut CallStats,
        path: PathBuf,
    ) -> Result<(), AuthLogError> {
        match files::rotated_siblings(&path) {
            Ok(siblings) => {
                for rotated in siblings {
                    self.read_rotated(scanner, call, &rotated.path, rotated.gzip, 0);
                }
            }
            Err(error) => tracing::warn!(
                path = %path.display(), %error,
                "cannot list rotated auth logs; counting from the live file only"
            ),
        }
        self.live = Some(Live {
            path,
            id: None,
            offset: 0,
            pending: 0,
            mark: Vec::new(),
        });
        self.read_new(scanner, call)
    }

    /// Reads the live file from where the last read stopped.
    fn read_new(
        &mut self,
        scanner: &mut Scanner,
        call: &mut CallStats,
    ) -> Result<(), AuthLogError> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let path = live.path.clone();
        let read_error = |source| AuthLogError::Read {
            path: path.clone(),
            source,
        };
        let (mut file, meta) = files::open_log(&path, self.required_owner)
            .map_err(|e| AuthLogError::opening(&path, e))?;
        let id = FileId::of(&meta);

        if let Some(old) = live.id.filter(|old| *old != id) {
            let offset = live.offset;
            live.offset = 0;
            live.pending = 0;
            live.mark.clear();
            self.finish_rotated(scanner, call, &path, old, offset);
        }
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        live.id = Some(id);
        let len = meta.len();
        // Truncated in place (copytruncate): shorter than our offset, or refilled since so
        // that the bytes before our offset are no longer the ones we read there. What was
        // written after our last read is in the copy logrotate made: finish it from there.
        if live.offset > len || !mark_matches(&file, live.offset, &live.mark).map_err(read_error)? {
            let (offset, mark) = (live.offset, std::mem::take(&mut live.mark));
            live.offset = 0;
            live.pending = 0;
            self.finish_copied(scanner, call, &path, offset, &mark);
        }
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        if len == live.offset + live.pending {
            return Ok(());
        }
        file.seek(SeekFrom::Start(live.offset))
            .map_err(read_error)?;
        let to_read = len - live.offset;
        let mut reader = CountingReader {
            inner: (&file).take(to_read),
            count: 0,
        };
        let outcome = scan_into(
            scanner,
            &mut self.store,
            &mut reader,
            Some(to_read),
            Tail::Keep,
            &meta,
        );
        call.record(&path, reader.count);
        self.malformed_lines += outcome.malformed;
        live.offset += outcome.consumed;
        live.pending = reader.count.saturating_sub(outcome.consumed);
        let mut mark = std::mem::take(&mut live.mark);
        mark.extend_from_slice(&outcome.mark);
        mark.drain(..mark.len().saturating_sub(MARK_BYTES));
        live.mark = mark;
        match outcome.error {
            Some(source) => {
                live.pending = 0;
                Err(read_error(source))
            }
            None => Ok(()),
        }
    }

    /// The live file was truncated in place after `offset` bytes ending in `mark` had been
    /// read: reads the rest of that content from the rotated copy that holds it (the newest
    /// uncompressed sibling with `mark` before `offset`), then any newer copies whole.
    fn finish_copied(
        &mut self,
        scanner: &mut Scanner,
        call: &mut CallStats,
        live: &Path,
        offset: u64,
        mark: &[u8],
    ) {
        if offset == 0 {
            return;
        }
        let plain: Vec<PathBuf> = match files::rotated_siblings(live) {
            Ok(siblings) => siblings
                .into_iter()
                .filter(|r| !r.gzip)
                .map(|r| r.path)
                .collect(),
            Err(error) => {
                tracing::warn!(
                    path = %live.display(), %error,
                    "auth log was truncated and its rotated copies cannot be listed; lines written before the truncation since the last query are not counted"
                );
                return;
            }
        };
        let owner = self.required_owner;
        let holds_mark = |path: &Path| {
            files::open_log(path, owner).is_ok_and(|(file, meta)| {
                meta.len() >= offset && mark_matches(&file, offset, mark).unwrap_or(false)
            })
        };
        let Some(copy) = plain.iter().rposition(|path| holds_mark(path)) else {
            tracing::warn!(
                path = %live.display(),
                "auth log was truncated and no rotated copy holds what was read before; lines written before the truncation since the last query are not counted"
            );
            return;
        };
        for (i, path) in plain.iter().enumerate().skip(copy) {
            let from = if i == copy { offset } else { 0 };
            self.read_rotated(scanner, call, path, false, from);
        }
    }

    /// The live path is gone (mid-rotation): finish the file it was, wait for the new one.
    fn follow_vanished(&mut self, scanner: &mut Scanner, call: &mut CallStats) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let (path, old, offset) = (live.path.clone(), live.id.take(), live.offset);
        live.offset = 0;
        live.pending = 0;
        live.mark.clear();
        if let Some(old) = old {
            self.finish_rotated(scanner, call, &path, old, offset);
        }
    }

    /// Reads the tail (from `offset`) of the file that was the live file before rotation.
    fn finish_rotated(
        &mut self,
        scanner: &mut Scanner,
        call: &mut CallStats,
        live: &Path,
        old: FileId,
        offset: u64,
    ) {
        match files::find_rotated(live, old) {
            Ok(Some(rotated)) => self.read_rotated(scanner, call, &rotated, false, offset),
            Ok(None) => tracing::warn!(
                path = %live.display(),
                "auth log was rotated and the old file is no longer among its siblings; lines written to it since the last query are not counted"
            ),
            Err(error) => tracing::warn!(
                path = %live.display(), %error,
                "cannot list rotated auth logs; lines written before the rotation since the last query are not counted"
            ),
        }
    }

    /// Reads a rotated file from `offset` to its end. Failures are logged, not returned: a
    /// damaged or half-compressed old file must not stop the live file from being counted.
    fn read_rotated(
        &mut self,
        scanner: &mut Scanner,
        call: &mut CallStats,
        path: &Path,
        gzip: bool,
        offset: u64,
    ) {
        if let Err(error) = self.try_read_rotated(scanner, call, path, gzip, offset) {
            tracing::warn!(path = %path.display(), %error, "skipping unreadable rotated auth log");
        }
    }

    fn try_read_rotated(
        &mut self,
        scanner: &mut Scanner,
        call: &mut CallStats,
        path: &Path,
        gzip: bool,
        offset: u64,
    ) -> io::Result<()> {
        let (mut file, meta) = files::open_log(path, self.required_owner).map_err(|e| match e {
            OpenError::Io(e) => e,
            refused => io::Error::other(refused.to_string()),
        })?;
        if meta.len() <= offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(offset))?;
        let counted = CountingReader {
            inner: file,
            count: 0,
        };
        let (outcome, bytes) = if gzip {
            // The decoder buffers its input itself; `get_ref` still reaches the counter.
            let mut reader = flate2::read::MultiGzDecoder::new(counted);
            let outcome = scan_into(
                scanner,
                &mut self.store,
                &mut reader,
                None,
                Tail::Parse,
                &meta,
            );
            (outcome, reader.get_ref().count)
        } else {
            let mut reader = counted;
            let expected = meta.len() - offset;
            let outcome = scan_into(
                scanner,
                &mut self.store,
                &mut reader,
                Some(expected),
                Tail::Parse,
                &meta,
            );
            (outcome, reader.count)
        };
        call.record(path, bytes);
        self.malformed_lines += outcome.malformed;
        outcome.error.map_or(Ok(()), Err)
    }

    fn answer(&self, since_unix_ms: i64, top_n: usize, call: CallStats) -> AuthFailures {
        let mut answer = answer_from(&self.store, since_unix_ms, top_n);
        answer.source = self
            .live
            .as_ref()
            .map(|live| live.path.display().to_string())
            .unwrap_or_default();
        answer.malformed_lines = self.malformed_lines;
        answer.bytes_read = call.bytes_read;
        answer.files_read = call.files_read;
        answer
    }
}

/// The counts part of an answer from retained events; the caller fills in where they came
/// from. `top_n` 0 means [`DEFAULT_TOP_N`].
fn answer_from(store: &EventStore, since_unix_ms: i64, top_n: usize) -> AuthFailures {
    let top_n = if top_n == 0 { DEFAULT_TOP_N } else { top_n };
    let summary = store.summarize(since_unix_ms, top_n);
    let name_counts = |list: Vec<(String, u64)>| -> Vec<NameCount> {
        list.into_iter()
            .map(|(name, count)| NameCount { name, count })
            .collect()
    };
    AuthFailures {
        source: String::new(),
        failed_password: summary.failed_password,
        invalid_user: summary.invalid_user,
        failed_publickey: summary.failed_publickey,
        failed_local: summary.local_auth,
        lower_bound: store.incomplete_since(since_unix_ms),
        total: summary.total,
        top_users: name_counts(summary.top_users),
        top_sources: name_counts(summary.top_sources),
        malformed_lines: 0,
        bytes_read: 0,
        files_read: Vec::new(),
        oldest_event_unix_ms: summary.oldest_event_unix_ms,
        evicted_events: store.evicted(),
    }
}

/// Scans `reader` into `store`; year-less timestamps are dated against the file's mtime.
fn scan_into(
    scanner: &mut Scanner,
    store: &mut EventStore,
    reader: &mut impl Read,
    expected_len: Option<u64>,
    tail: Tail,
    meta: &std::fs::Metadata,
) -> ScanOutcome {
    let mut clock = SyslogClock::new(meta.modified().unwrap_or_else(|_| SystemTime::now()));
    scanner.scan(
        reader,
        expected_len,
        tail,
        &mut clock,
        &mut |unix_ms, kind, user, source, count| {
            store.push(unix_ms, kind, user, source, count);
        },
    )
}

/// Whether `file` holds `mark` just before `offset` (still the content we read), and so
/// `offset` still starts a line there. A file shorter than that does not.
fn mark_matches(file: &File, offset: u64, mark: &[u8]) -> io::Result<bool> {
    let len = mark.len() as u64;
    if len == 0 {
        return Ok(true);
    }
    if len > offset {
        return Ok(false);
    }
    let mut found = vec![0u8; mark.len()];
    match file.read_exact_at(&mut found, offset - len) {
        Ok(()) => Ok(found == mark),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}
