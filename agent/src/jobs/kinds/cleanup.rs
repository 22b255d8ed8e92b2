//! `Cleanup`: deletes old regular files whose name matches a glob, under roots the
//! agent's config allows.
//!
//! It must never follow a symbolic link and never leave the root's filesystem. The walk
//! therefore goes by directory file descriptors (`openat` with `O_NOFOLLOW`,
//! `fstatat(AT_SYMLINK_NOFOLLOW)`, `unlinkat`), never by re-resolving path strings, and
//! compares every directory's `st_dev` with the root's. Symbolic links, other
//! filesystems and unreadable entries are counted as skipped; directories are never
//! deleted, nor anything that is not a regular file.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ops_proto::v1::{job_result, Cleanup, CleanupResult, TimeField};
use rustix::fs::{fstat, openat, statat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags, CWD};
use tokio::sync::mpsc;

use super::glob::Glob;
use super::{note, Outcome, Report};
use crate::jobs::config::CleanupConfig;
use crate::jobs::runner::JobCtx;

/// Paths listed in the result; the counts cover all of them.
const MAX_SAMPLES: usize = 20;
/// Directories deeper than this below a root are skipped.
const MAX_DEPTH: usize = 64;
/// Log lines in flight from the walking thread to the job's log.
const LOG_CHANNEL_CAPACITY: usize = 256;

#[derive(Debug, Clone)]
struct Rule {
    root: PathBuf,
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

pub fn prepare(spec: &Cleanup, cfg: &CleanupConfig) -> Result<CleanupPlan, String> {
    if spec.rules.is_empty() {
        return Err("cleanup needs at least one rule (root, pattern, older_than, by)".into());
    }
    if cfg.allowed_roots.is_empty() {
        return Err(
            "cleanup is not enabled on this host: its [cleanup] allowed_roots is empty".into(),
        );
    }
    let allowed: Vec<PathBuf> = cfg
        .allowed_roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    let mut rules = Vec::new();
    for r in &spec.rules {
        let root = PathBuf::from(&r.root);
        if !root.is_absolute()
            || root
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(format!(
                "cleanup root {:?} must be an absolute path without '.' or '..'",
                r.root
            ));
        }
        let real = std::fs::canonicalize(&root)
            .map_err(|e| format!("cleanup root {} cannot be resolved: {e}", root.display()))?;
        if real != root {
            return Err(format!(
                "cleanup root {} leads through a symbolic link to {}; name the real directory",
                root.display(),
                real.display()
            ));
        }
        if !real.is_dir() {
            return Err(format!(
                "cleanup root {} is not a directory",
                root.display()
            ));
        }
        if !allowed.iter().any(|a| real.starts_with(a)) {
            let list: Vec<String> = cfg
                .allowed_roots
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Err(format!(
                "cleanup root {} is not under a root this agent allows ({})",
                root.display(),
                list.join(", ")
            ));
        }
        let glob = Glob::new(&r.pattern)
            .map_err(|m| format!("cleanup rule for {}: {m}", root.display()))?;
        let by_atime = TimeField::try_from(r.by) == Ok(TimeField::Atime);
        rules.push(Rule {
            root: real,
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

pub async fn execute(plan: CleanupPlan, ctx: &mut JobCtx) -> Result<Report, Report> {
    if plan.dry_run {
        note(ctx, "dry run: nothing will be removed").await?;
    }
    let abort = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::channel::<String>(LOG_CHANNEL_CAPACITY);
    let walker_abort = abort.clone();
    let walker = tokio::task::spawn_blocking(move || {
        let mut stats = Stats::default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for rule in &plan.rules {
            let _ = tx.blocking_send(format!(
                "[agent] rule: {} name {:?} {} older than {} s",
                rule.root.display(),
                rule.pattern,
                if rule.by_atime { "atime" } else { "mtime" },
                rule.older_than_seconds
            ));
            walk(rule, plan.dry_run, now, &walker_abort, &tx, &mut stats);
        }
        stats
    });
    let mut interrupted = None;
    loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(mut l) => {
                    l.push('\n');
                    ctx.log.append(l.as_bytes()).await.map_err(|e| Report::failed(format!("cannot write the job's output log: {e}")))?;
                }
                None => break,
            },
            i = ctx.interrupted(), if interrupted.is_none() => {
                abort.store(true, Ordering::Relaxed);
                interrupted = Some(i);
            }
        }
    }
    let stats = walker
        .await
        .map_err(|e| Report::failed(format!("the cleanup walk failed: {e}")))?;
    let verb = if plan.dry_run {
        "would remove"
    } else {
        "removed"
    };
    note(
        ctx,
        &format!(
            "{verb} {} files, {} bytes; skipped {}",
            stats.files, stats.bytes, stats.skipped
        ),
    )
    .await?;
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

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Walks one rule's root depth-first by file descriptors.
fn walk(
    rule: &Rule,
    dry_run: bool,
    now: i64,
    abort: &AtomicBool,
    log: &mpsc::Sender<String>,
    stats: &mut Stats,
) {
    let say = |line: String| {
        let _ = log.blocking_send(line);
    };
    let root_fd = match openat(CWD, &rule.root, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            stats.skipped += 1;
            say(format!("skipped {}: cannot open: {e}", rule.root.display()));
            return;
        }
    };
    let root_dev = match fstat(&root_fd) {
        Ok(st) => st.st_dev,
        Err(e) => {
            stats.skipped += 1;
            say(format!("skipped {}: cannot stat: {e}", rule.root.display()));
            return;
        }
    };
    let mut stack: Vec<(OwnedFd, PathBuf, usize)> = vec![(root_fd, rule.root.clone(), 0)];
    while let Some((fd, dir_path, depth)) = stack.pop() {
        let dir = match Dir::read_from(&fd) {
            Ok(d) => d,
            Err(e) => {
                stats.skipped += 1;
                say(format!("skipped {}: cannot read: {e}", dir_path.display()));
                continue;
            }
        };
        for entry in dir {
            if abort.load(Ordering::Relaxed) {
                return;
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    stats.skipped += 1;
                    say(format!("skipped the rest of {}: {e}", dir_path.display()));
                    break;
                }
            };
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let path = dir_path.join(OsStr::from_bytes(bytes));
            let st = match statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => {
                    stats.skipped += 1;
                    say(format!("skipped {}: cannot stat: {e}", path.display()));
                    continue;
                }
            };
            match FileType::from_raw_mode(st.st_mode as _) {
                FileType::Directory => {
                    if st.st_dev != root_dev {
                        stats.skipped += 1;
                        say(format!("skipped {}: another filesystem", path.display()));
                    } else if depth + 1 > MAX_DEPTH {
                        stats.skipped += 1;
                        say(format!(
                            "skipped {}: deeper than {MAX_DEPTH} levels",
                            path.display()
                        ));
                    } else {
                        match openat(&fd, name, dir_flags(), Mode::empty()) {
                            // Checked again on the open descriptor: the entry may have changed.
                            Ok(sub) if fstat(&sub).map(|s| s.st_dev) == Ok(root_dev) => {
                                stack.push((sub, path, depth + 1));
                            }
                            Ok(_) => {
                                stats.skipped += 1;
                                say(format!("skipped {}: another filesystem", path.display()));
                            }
                            Err(e) => {
                                stats.skipped += 1;
                                say(format!("skipped {}: cannot open: {e}", path.display()));
                            }
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
                        if let Err(e) = unlinkat(&fd, name, AtFlags::empty()) {
                            stats.skipped += 1;
                            say(format!("skipped {}: cannot remove: {e}", path.display()));
                            continue;
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
        let cfg = CleanupConfig {
            allowed_roots: vec![allowed.clone()],
        };
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
        std::os::unix::fs::symlink(&allowed, tmp.path().join("link")).unwrap();
        let err = prepare(&rule(&tmp.path().join("link")), &cfg).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
    }
}
