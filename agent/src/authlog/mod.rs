//! Failed logins from the host's auth log (RHEL `/var/log/secure`, Debian
//! `/var/log/auth.log`), read incrementally: each query reads only bytes it has not read
//! before, follows rotation, and answers from a bounded, compact memory of failure events.
//! Only ever reads the configured files and their rotated siblings; never writes, never
//! holds more than one read chunk. Blocking file I/O: call it from `spawn_blocking`.

mod events;
mod files;
mod parse;
mod scan;
#[cfg(test)]
mod tests;
mod timestamp;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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
    #[error("reading auth log {} failed: {source}; the next query resumes where reading stopped", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("building the failure-marker search failed: {0}")]
    Matcher(#[from] aho_corasick::BuildError),
}

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
            max_events,
            store: EventStore::new(max_events),
            live: None,
            malformed_lines: 0,
        }
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
        let mut scanner = Scanner::new()?;
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
        let open_error = |source| AuthLogError::Open {
            path: path.clone(),
            source,
        };
        let read_error = |source| AuthLogError::Read {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(open_error)?;
        let meta = file.metadata().map_err(read_error)?;
        let id = FileId::of(&meta);

        if let Some(old) = live.id.filter(|old| *old != id) {
            let offset = live.offset;
            live.offset = 0;
            live.pending = 0;
            self.finish_rotated(scanner, call, &path, old, offset);
        }
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        live.id = Some(id);
        let len = meta.len();
        // Truncated in place (copytruncate): shorter than our offset, or no longer a line
        // boundary there because it has been refilled since.
        if live.offset > len
            || (live.offset > 0 && !ends_line_before(&file, live.offset).map_err(read_error)?)
        {
            live.offset = 0;
            live.pending = 0;
        }
        if len == live.offset + live.pending {
            return Ok(());
        }
        file.seek(SeekFrom::Start(live.offset))
            .map_err(read_error)?;
        let to_read = len - live.offset;
        let mut reader = CountingReader {
            inner: file.take(to_read),
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
        match outcome.error {
            Some(source) => {
                live.pending = 0;
                Err(read_error(source))
            }
            None => Ok(()),
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
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
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
        let top_n = if top_n == 0 { DEFAULT_TOP_N } else { top_n };
        let summary = self.store.summarize(since_unix_ms, top_n);
        let name_counts = |list: Vec<(String, u64)>| -> Vec<NameCount> {
            list.into_iter()
                .map(|(name, count)| NameCount { name, count })
                .collect()
        };
        AuthFailures {
            source: self
                .live
                .as_ref()
                .map(|live| live.path.display().to_string())
                .unwrap_or_default(),
            failed_password: summary.failed_password,
            invalid_user: summary.invalid_user,
            failed_publickey: summary.failed_publickey,
            total: summary.total,
            top_users: name_counts(summary.top_users),
            top_sources: name_counts(summary.top_sources),
            malformed_lines: self.malformed_lines,
            bytes_read: call.bytes_read,
            files_read: call.files_read,
            oldest_event_unix_ms: summary.oldest_event_unix_ms,
            evicted_events: self.store.evicted(),
        }
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
        &mut |unix_ms, kind, user, source| {
            store.push(unix_ms, kind, user, source);
        },
    )
}

/// Whether the byte before `offset` is a newline, i.e. `offset` still starts a line.
fn ends_line_before(file: &File, offset: u64) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset - 1)?;
    Ok(byte[0] == b'\n')
}
