//! Where failed logins come from, in a fixed order: the configured files (the first that
//! exists, with its rotated siblings), then the systemd journal when no file exists and
//! the journal is enabled. Switching source starts that source's counting afresh. Never
//! reads both for one answer, so nothing is counted twice.

use std::sync::{Arc, Mutex};

use ops_proto::v1::AuthFailures;

use std::path::Path;

use crate::config::AuthLogConfig;

use super::journal::{Journal, JournalSettings, JournalSource};
use super::{AuthLog, AuthLogError, Programs};

/// The journal cursor's file, under the agent's state dir.
pub const CURSOR_FILE: &str = "authlog/journal.cursor";

/// The auth log files and the journal fallback, shared by the RPC handlers.
#[derive(Clone)]
pub struct AuthSources {
    files: Arc<Mutex<AuthLog>>,
    journal: Option<Arc<tokio::sync::Mutex<Journal>>>,
}

impl AuthSources {
    pub fn new(files: AuthLog, journal: Option<Journal>) -> AuthSources {
        AuthSources {
            files: Arc::new(Mutex::new(files)),
            journal: journal.map(|j| Arc::new(tokio::sync::Mutex::new(j))),
        }
    }

    /// Both sources as `[auth_log]` describes them; the journal cursor lives in `state_dir`.
    pub fn from_config(cfg: &AuthLogConfig, state_dir: &Path) -> AuthSources {
        let programs = Programs::new(&cfg.programs);
        let files = AuthLog::new(cfg.paths.clone(), cfg.max_events).with_programs(programs.clone());
        let journal = cfg.journal.then(|| {
            let source = match (&cfg.journal_directory, &cfg.journal_file) {
                (Some(dir), _) => JournalSource::Directory(dir.clone()),
                (None, Some(file)) => JournalSource::File(file.clone()),
                (None, None) => JournalSource::System,
            };
            Journal::new(JournalSettings {
                journalctl: cfg.journalctl.clone(),
                source,
                cursor_file: state_dir.join(CURSOR_FILE),
                programs,
                max_events: cfg.max_events,
            })
        });
        AuthSources::new(files, journal)
    }

    /// Answers from the first configured file that exists, else from the journal.
    pub async fn query(
        &self,
        since_unix_ms: i64,
        top_n: usize,
        rescan: bool,
    ) -> Result<AuthFailures, AuthLogError> {
        let files = self.files.clone();
        let from_files = crate::pools::AUTH_LOG.spawn(move || {
            let mut log = files.lock().map_err(|_| poisoned())?;
            if log.has_file() {
                log.query(since_unix_ms, top_n, rescan).map(Some)
            } else {
                Ok(None)
            }
        })
        .await
        .map_err(|e| AuthLogError::Task(e.to_string()))??;
        if let Some(answer) = from_files {
            return Ok(answer);
        }
        let Some(journal) = &self.journal else {
            // No file and no journal: the file reader's own error names every path tried.
            let files = self.files.clone();
            return crate::pools::AUTH_LOG.spawn(move || {
                files.lock().map_err(|_| poisoned())?.query(since_unix_ms, top_n, rescan)
            })
            .await
            .map_err(|e| AuthLogError::Task(e.to_string()))?;
        };
        let mut journal = journal.lock().await;
        let dirs = journal.journal_locations();
        if !dirs.iter().any(|d| has_journal_files(d)) {
            // journalctl says nothing and exits 0 when there is no journal at all: that is
            // not "no failed logins", it is nothing checked.
            let tried = self.files.lock().map_err(|_| poisoned())?.paths().to_vec();
            return Err(AuthLogError::NoSource { tried, journal_dirs: dirs });
        }
        Ok(journal.query(since_unix_ms, top_n, rescan).await?)
    }
}

/// True when `loc` is a journal file, or a folder holding one (one machine-id level down).
fn has_journal_files(loc: &Path) -> bool {
    let is_journal = |p: &Path| p.extension().is_some_and(|e| e == "journal" || e == "journal~");
    if is_journal(loc) {
        return loc.is_file();
    }
    std::fs::read_dir(loc).into_iter().flatten().flatten().any(|e| {
        let p = e.path();
        is_journal(&p) || std::fs::read_dir(&p).into_iter().flatten().flatten().any(|f| is_journal(&f.path()))
    })
}

fn poisoned() -> AuthLogError {
    AuthLogError::Task("auth log state poisoned by an earlier failure".to_owned())
}
