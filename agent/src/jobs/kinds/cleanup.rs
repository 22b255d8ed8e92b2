//! `Cleanup`: deletes old regular files whose name matches a glob, under roots the
//! agent's config allows.
//!
//! It must never follow a symbolic link, never leave the root's filesystem, and never
//! delete after its job has ended. Roots are opened component by component without
//! following links (`cleanup_roots`); the walk then goes by directory file descriptors
//! (`openat` with `O_NOFOLLOW`, `fstatat(AT_SYMLINK_NOFOLLOW)`, `unlinkat`), never by
//! path strings, compares every directory's `st_dev` with the root's, and holds at most
//! one open directory per level (`MAX_WALK_FDS`). Symbolic links, other filesystems and
//! unreadable entries are counted as skipped; directories are never deleted, nor
//! anything that is not a regular file. Every unlink passes a gate that the job closes
//! on each way out (`Gate`), so the walker cannot outlive its job's record.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ops_proto::v1::{job_result, Cleanup, CleanupResult, TimeField};
use rustix::fs::{fstat, statat, unlinkat, AtFlags, Dir, FileType};
use tokio::sync::mpsc;

use super::cleanup_roots::{open_dir_in, AllowedRoots, DirId, RootRef};
use super::glob::Glob;
use super::{note, Outcome, Report};
use crate::jobs::runner::JobCtx;

/// Paths listed in the result; the counts cover all of them.
const MAX_SAMPLES: usize = 20;
/// Directories deeper than this below a root are skipped.
pub const MAX_DEPTH: usize = 64;
/// Directory descriptors one cleanup job holds at most at any moment, however wide the
/// tree: the walk is depth-first and keeps one open directory per level, from the root
/// (level 0) down to `MAX_DEPTH`, plus one for a moment while the next level is opened
/// (`open_dir_in` pins the name before opening it). Opening a root takes three, before
/// the walk holds any.
pub const MAX_WALK_FDS: usize = MAX_DEPTH + 2;
/// Log lines in flight from the walking thread to the job's log.
const LOG_CHANNEL_CAPACITY: usize = 256;

#[derive(Debug, Clone)]
struct Rule {
    root: RootRef,
    pattern: String,
    glob: Glob,
    older_than_seconds: u64,
    by_atime: bool,
}

/// A checked cleanup request.
#[derive(Debug, Clone)]
pub struct CleanupPlan {
    rules: Vec<Rule>,
    dry_run: bool,
}

/// Checks a request against the allow-list resolved at start-up. Each root is opened
/// here, without following links, to refuse a bad one at once; the walk opens it again
/// the same way, since the tree may change while the job waits for its turn.
pub fn prepare(spec: &Cleanup, roots: &AllowedRoots) -> Result<CleanupPlan, String> {
    if spec.rules.is_empty() {
        return Err("cleanup needs at least one rule (root, pattern, older_than, by)".into());
    }
    if roots.is_empty() {
        return Err(
            "cleanup is not enabled on this host: its [cleanup] allowed_roots is empty".into(),
        );
    }
    let mut rules = Vec::new();
    for r in &spec.rules {
        let root = roots.check(Path::new(&r.root)).map_err(|e| e.to_string())?;
        let glob = Glob::new(&r.pattern)
            .map_err(|m| format!("cleanup rule for {}: {m}", root.path.display()))?;
        let by_atime = TimeField::try_from(r.by) == Ok(TimeField::Atime);
        rules.push(Rule {
            root,
            pattern: r.pattern.clone(),
            glob,
            older_than_seconds: r.older_than_seconds,
            by_atime,
        });
    }
    Ok(CleanupPlan {
        rules,
        dry_run: spec.dry_run,
    })
}

/// Counts across all rules.
#[derive(Debug, Default)]
struct Stats {
    files: u64,
    bytes: u64,
    samples: Vec<String>,
    skipped: u64,
}

impl Stats {
    fn result(&self) -> job_result::Kind {
        job_result::Kind::Cleanup(CleanupResult {
            files: self.files,
            bytes: self.bytes,
            sample_paths: self.samples.clone(),
            skipped: self.skipped,
        })
    }
}

/// How the job stops its walker for good. Every unlink happens under `unlinking` after
/// checking `stopped`, and `stop` sets `stopped` under the same lock: once `stop` has
/// returned, the walker removes nothing more, even if it is still running.
#[derive(Debug, Default)]
struct Gate {
    stopped: AtomicBool,
    unlinking: Mutex<()>,
}

impl Gate {
    /// Blocks for at most the one unlink in progress.
    fn stop(&self) {
        let _held = self.unlinking.lock().unwrap_or_else(PoisonError::into_inner);
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Runs `f` (one unlink) unless the gate was stopped: `None` then.
    fn unless_stopped<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        let _held = self.unlinking.lock().unwrap_or_else(PoisonError::into_inner);
        (!self.is_stopped()).then(f)
    }
}

/// Stops the walker on every way out of `execute`, including a panic or the future being
/// dropped: the job's end is recorded only after this ran.
struct StopOnDrop(Arc<Gate>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

pub async fn execute(plan: CleanupPlan, ctx: &mut JobCtx) -> Result<Report, Report> {
    if plan.dry_run {
        note(ctx, "dry run: nothing will be removed").await?;
    }
    let gate = Arc::new(Gate::default());
    let _stop_on_exit = StopOnDrop(gate.clone());
    let (tx, mut rx) = mpsc::channel::<String>(LOG_CHANNEL_CAPACITY);
    let walker_gate = gate.clone();
    let dry_run = plan.dry_run;
    let walker = tokio::task::spawn_blocking(move || {
        let mut stats = Stats::default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for rule in &plan.rules {
            if walker_gate.is_stopped() {
                break;
            }
            let _ = tx.blocking_send(format!(
                "[agent] rule: {} name {:?} {} older than {} s",
                rule.root.path.display(),
                rule.pattern,
                if rule.by_atime { "atime" } else { "mtime" },
                rule.older_than_seconds
            ));
            walk(rule, plan.dry_run, now, &walker_gate, &tx, &mut stats);
        }
        stats
    });
    let mut interrupted = None;
    let mut failure = None;
    loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(mut l) => {
                    l.push('\n');
                    if let Err(e) = ctx.log.append(l.as_bytes()).await {
                        failure = Some(format!("cannot write the job's output log: {e}"));
                        break;
                    }
                }
                None => break,
            },
            i = ctx.interrupted(), if interrupted.is_none() => {
                gate.stop();
                interrupted = Some(i);
            }
        }
    }
    // However the loop ended, nothing is removed from here on; the walker then ends at
    // its next check (its log lines now go nowhere) and hands back what it did.
    gate.stop();
    drop(rx);
    let stats = walker
        .await
        .map_err(|e| Report::failed(format!("the cleanup walk failed: {e}")))?;
    if let Some(why) = failure {
        return Err(Report::failed(why).with_result(stats.result()));
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    note(
        ctx,
        &format!(
            "{verb} {} files, {} bytes; skipped {}",
            stats.files, stats.bytes, stats.skipped
        ),
    )
    .await
    .map_err(|r| r.with_result(stats.result()))?;
    let report = match interrupted {
        Some(i) => Report {
            outcome: Outcome::Interrupted(i),
            exit_code: None,
            result: None,
        },
        None => Report::succeeded(None, None),
    };
    Ok(report.with_result(stats.result()))
}

/// One open directory of the walk.
struct Frame {
    dir: Dir,
    path: PathBuf,
    depth: usize,
}

/// Walks one rule's root depth-first by file descriptors, holding at most one open
/// directory per level (`MAX_WALK_FDS`).
fn walk(
    rule: &Rule,
    dry_run: bool,
    now: i64,
    gate: &Gate,
    log: &mpsc::Sender<String>,
    stats: &mut Stats,
) {
    let say = |line: String| {
        let _ = log.blocking_send(line);
    };
    let root_path = &rule.root.path;
    let root_fd = match rule.root.open() {
        Ok(fd) => fd,
        Err(e) => {
            stats.skipped += 1;
            say(format!("skipped {}: {e}", root_path.display()));
            return;
        }
    };
    let root_dev = match fstat(&root_fd) {
        Ok(st) => DirId::of(&st).dev,
        Err(e) => {
            stats.skipped += 1;
            say(format!("skipped {}: cannot stat: {e}", root_path.display()));
            return;
        }
    };
    let dir = match Dir::new(root_fd) {
        Ok(d) => d,
        Err(e) => {
            stats.skipped += 1;
            say(format!("skipped {}: cannot read: {e}", root_path.display()));
            return;
        }
    };
    let mut stack = vec![Frame {
        dir,
        path: root_path.clone(),
        depth: 0,
    }];
    while let Some(frame) = stack.last_mut() {
        if gate.is_stopped() {
            return;
        }
        let entry = match frame.dir.read() {
            None => {
                stack.pop();
                continue;
            }
            Some(Err(e)) => {
                stats.skipped += 1;
                say(format!("skipped the rest of {}: {e}", frame.path.display()));
                stack.pop();
                continue;
            }
            Some(Ok(e)) => e,
        };
        let fd = match frame.dir.fd() {
            Ok(fd) => fd,
            Err(e) => {
                stats.skipped += 1;
                say(format!("skipped the rest of {}: {e}", frame.path.display()));
                stack.pop();
                continue;
            }
        };
        let name = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let path = frame.path.join(OsStr::from_bytes(bytes));
        let st = match statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => {
                stats.skipped += 1;
                say(format!("skipped {}: cannot stat: {e}", path.display()));
                continue;
            }
        };
        match FileType::from_raw_mode(st.st_mode as _) {
            FileType::Directory => {
                let seen = DirId::of(&st);
                if seen.dev != root_dev {
                    stats.skipped += 1;
                    say(format!("skipped {}: another filesystem", path.display()));
                    continue;
                }
                if frame.depth + 1 > MAX_DEPTH {
                    stats.skipped += 1;
                    say(format!(
                        "skipped {}: deeper than {MAX_DEPTH} levels",
                        path.display()
                    ));
                    continue;
                }
                let depth = frame.depth + 1;
                let sub = match open_dir_in(fd, OsStr::from_bytes(bytes), &path) {
                    Ok(sub) => sub,
                    Err(e) => {
                        stats.skipped += 1;
                        say(format!("skipped {}: {e}", path.display()));
                        continue;
                    }
                };
                // The entry may have been swapped since it was looked at: walk only the
                // directory that was checked (same device, same inode).
                if fstat(&sub).map(|s| DirId::of(&s)) != Ok(seen) {
                    stats.skipped += 1;
                    say(format!("skipped {}: changed while being walked", path.display()));
                    continue;
                }
                match Dir::new(sub) {
                    Ok(dir) => stack.push(Frame { dir, path, depth }),
                    Err(e) => {
                        stats.skipped += 1;
                        say(format!("skipped {}: cannot read: {e}", path.display()));
                    }
                }
            }
            FileType::Symlink => {
                stats.skipped += 1;
                say(format!(
                    "skipped {}: symbolic link (never followed)",
                    path.display()
                ));
            }
            FileType::RegularFile => {
                if !rule.glob.matches(&String::from_utf8_lossy(bytes)) {
                    continue;
                }
                let t = if rule.by_atime {
                    st.st_atime as i64
                } else {
                    st.st_mtime as i64
                };
                if !is_old_enough(now, t, rule.older_than_seconds) {
                    continue;
                }
                let size = st.st_size.max(0) as u64;
                if !dry_run {
                    match gate.unless_stopped(|| unlinkat(fd, name, AtFlags::empty())) {
                        None => return,
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            stats.skipped += 1;
                            say(format!("skipped {}: cannot remove: {e}", path.display()));
                            continue;
                        }
                    }
                }
                stats.files += 1;
                stats.bytes += size;
                let shown = path.display().to_string();
                say(format!(
                    "{} {shown} ({size} bytes)",
                    if dry_run { "would remove" } else { "removed" }
                ));
                if stats.samples.len() < MAX_SAMPLES {
                    stats.samples.push(shown);
                }
            }
            // Sockets, pipes and devices are never cleanup's business.
            _ => {}
        }
    }
}

/// A file qualifies when its time is at least `older_than` seconds before `now`.
fn is_old_enough(now: i64, file_time: i64, older_than: u64) -> bool {
    now.saturating_sub(file_time) >= i64::try_from(older_than).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn age_is_compared_inclusively_and_saturates() {
        assert!(is_old_enough(1000, 400, 600));
        assert!(!is_old_enough(1000, 401, 600));
        assert!(!is_old_enough(0, 0, u64::MAX));
        assert!(
            !is_old_enough(1000, 2000, 0),
            "a file from the future is never old enough"
        );
    }

    #[test]
    fn roots_must_be_allowed_absolute_and_real() {
        let tmp = tempfile::tempdir().unwrap();
        let allowed = tmp.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        let cfg = AllowedRoots::resolve(&crate::jobs::config::CleanupConfig {
            allowed_roots: vec![allowed.clone()],
        })
        .unwrap();
        let rule = |root: &Path| Cleanup {
            rules: vec![ops_proto::v1::CleanupRule {
                root: root.display().to_string(),
                pattern: "*".into(),
                older_than_seconds: 1,
                by: TimeField::Mtime as i32,
            }],
            dry_run: true,
        };
        assert!(prepare(&rule(&allowed), &cfg).is_ok());
        let err = prepare(&rule(tmp.path()), &cfg).unwrap_err();
        assert!(err.contains("not under a root this agent allows"), "{err}");
        assert!(prepare(&rule(Path::new("relative")), &cfg).is_err());
        assert!(prepare(&rule(&allowed.join("..").join("allowed")), &cfg).is_err());
        std::os::unix::fs::symlink(tmp.path(), allowed.join("link")).unwrap();
        let err = prepare(&rule(&allowed.join("link")), &cfg).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
    }
}
