//! Where `Cleanup` may start: the `[cleanup] allowed_roots` resolved once when the agent
//! starts, and each requested root opened from its allowed root's descriptor one
//! component at a time.
//!
//! It must never resolve a path string in one go, nor follow a symbolic link anywhere
//! in a path: a local user who owns a folder in the middle of a path (say under `/tmp`)
//! can swap it for a link to `/etc` between a check and a use, and cleanup deletes as
//! root. Every component is therefore opened without following a link (`open_dir_in`)
//! relative to the descriptor of the one before, and an allowed root must still be the
//! directory (device, inode) that was checked at start-up; the walk then goes by
//! descriptors only.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{fstat, openat, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;
use thiserror::Error;

use crate::jobs::config::CleanupConfig;

/// Why a root cannot be opened. The text goes to the caller: it names the path.
#[derive(Debug, Error)]
pub enum RootError {
    #[error("cleanup root {path} must be an absolute path without '.' or '..'")]
    NotAbsolute { path: PathBuf },
    #[error("{path} is a symbolic link; cleanup never follows one: name the real directory")]
    SymbolicLink { path: PathBuf },
    #[error("{path} is not a directory")]
    NotDirectory { path: PathBuf },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: Errno },
    #[error("cleanup root {root} is not under a root this agent allows ({allowed})")]
    NotAllowed { root: PathBuf, allowed: String },
    #[error(
        "the allowed root {allowed} did not exist when the agent started; restart the agent \
         once it exists"
    )]
    AbsentAtStart { allowed: PathBuf },
    #[error(
        "the allowed root {allowed} is no longer the directory the agent checked when it \
         started (it was replaced); restart the agent if the change is intended"
    )]
    Replaced { allowed: PathBuf },
}

/// A directory's identity: what must not change between the check and the use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirId {
    pub dev: u64,
    pub ino: u64,
}

impl DirId {
    // The field types differ between targets (c_ulong, u64); both fit.
    #[allow(clippy::unnecessary_cast)]
    pub fn of(st: &Stat) -> DirId {
        DirId {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        }
    }
}

/// Flags for every directory cleanup opens: never through a link, never a non-directory.
pub fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Opens the directory `name` inside `dir`, refusing a symbolic link. `shown` is the
/// path for messages only.
///
/// The name is first pinned with `O_PATH | O_NOFOLLOW` (which opens a link itself rather
/// than failing), so what it is can be told from that very inode even while someone
/// renames things around it; a directory is then opened for reading through the pinned
/// descriptor. Two descriptors are open for a moment.
pub fn open_dir_in(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<OwnedFd, RootError> {
    let open_error = |source| RootError::Open {
        path: shown.to_path_buf(),
        source,
    };
    let pinned = openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(open_error)?;
    let st = fstat(&pinned).map_err(open_error)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => openat(&pinned, ".", dir_flags(), Mode::empty()).map_err(open_error),
        FileType::Symlink => Err(RootError::SymbolicLink {
            path: shown.to_path_buf(),
        }),
        _ => Err(RootError::NotDirectory {
            path: shown.to_path_buf(),
        }),
    }
}

/// Opens `rest` (plain names only) below `fd`, one component at a time. At most three
/// descriptors are open at once.
fn open_below(mut fd: OwnedFd, base: &Path, rest: &Path) -> Result<OwnedFd, RootError> {
    let mut shown = base.to_path_buf();
    for c in rest.components() {
        let Component::Normal(name) = c else {
            return Err(RootError::NotAbsolute {
                path: base.join(rest),
            });
        };
        shown.push(name);
        fd = open_dir_in(fd.as_fd(), name, &shown)?;
    }
    Ok(fd)
}

/// Opens an absolute path from `/` without following a link in any component.
fn open_absolute(path: &Path) -> Result<OwnedFd, RootError> {
    let relative = match path.strip_prefix("/") {
        Ok(r) if path.is_absolute() => r,
        _ => {
            return Err(RootError::NotAbsolute {
                path: path.to_path_buf(),
            })
        }
    };
    let root = openat(CWD, "/", dir_flags(), Mode::empty()).map_err(|source| RootError::Open {
        path: PathBuf::from("/"),
        source,
    })?;
    open_below(root, Path::new("/"), relative)
}

fn identity(fd: &OwnedFd, path: &Path) -> Result<DirId, RootError> {
    fstat(fd).map(|st| DirId::of(&st)).map_err(|source| RootError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// One `[cleanup] allowed_roots` entry as the agent found it at start-up.
#[derive(Debug, Clone)]
pub struct AllowedRoot {
    pub path: PathBuf,
    /// `None`: it did not exist at start-up, and requests under it are refused.
    id: Option<DirId>,
}

impl AllowedRoot {
    /// Opens the allowed root again and checks it is the directory found at start-up.
    pub fn open(&self) -> Result<OwnedFd, RootError> {
        let Some(expected) = self.id else {
            return Err(RootError::AbsentAtStart {
                allowed: self.path.clone(),
            });
        };
        let fd = open_absolute(&self.path)?;
        if identity(&fd, &self.path)? != expected {
            return Err(RootError::Replaced {
                allowed: self.path.clone(),
            });
        }
        Ok(fd)
    }
}

/// The allow-list, resolved once.
#[derive(Debug, Clone, Default)]
pub struct AllowedRoots {
    roots: Vec<AllowedRoot>,
}

/// A requested root inside an allowed one: opened again (without links) at each use.
#[derive(Debug, Clone)]
pub struct RootRef {
    /// The root as requested, for messages and output lines.
    pub path: PathBuf,
    allowed: AllowedRoot,
    /// The components below the allowed root.
    rest: PathBuf,
}

impl RootRef {
    /// Opens the root: the allowed root checked against its start-up identity, then each
    /// component below it without following links.
    pub fn open(&self) -> Result<OwnedFd, RootError> {
        let fd = self.allowed.open()?;
        open_below(fd, &self.allowed.path, &self.rest)
    }
}

impl AllowedRoots {
    /// Resolves the allow-list: each root must be reachable from `/` without a symbolic
    /// link in any component (an error: the config is wrong). A root that does not exist
    /// is kept as absent, so an agent on a host without that application still starts.
    pub fn resolve(cfg: &CleanupConfig) -> Result<AllowedRoots, String> {
        let mut roots = Vec::new();
        for path in &cfg.allowed_roots {
            let id = match open_absolute(path) {
                Ok(fd) => Some(identity(&fd, path).map_err(|e| format!("[cleanup] allowed_roots: {e}"))?),
                Err(RootError::Open { source, .. }) if source == Errno::NOENT => None,
                Err(e) => {
                    return Err(format!(
                        "[cleanup] allowed_roots: {}: {e}",
                        path.display()
                    ))
                }
            };
            roots.push(AllowedRoot {
                path: path.clone(),
                id,
            });
        }
        Ok(AllowedRoots { roots })
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Allowed roots that did not exist at start-up.
    pub fn absent(&self) -> impl Iterator<Item = &Path> {
        self.roots.iter().filter(|r| r.id.is_none()).map(|r| r.path.as_path())
    }

    /// Checks a requested root: absolute, no `.` or `..`, under an allowed root, and
    /// openable from it without following a link. The most specific allowed root wins.
    pub fn check(&self, root: &Path) -> Result<RootRef, RootError> {
        if !root.is_absolute()
            || root
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(RootError::NotAbsolute {
                path: root.to_path_buf(),
            });
        }
        let allowed = self
            .roots
            .iter()
            .filter_map(|a| root.strip_prefix(&a.path).ok().map(|rest| (a, rest)))
            .max_by_key(|(a, _)| a.path.components().count());
        let Some((allowed, rest)) = allowed else {
            let list: Vec<String> = self.roots.iter().map(|r| r.path.display().to_string()).collect();
            return Err(RootError::NotAllowed {
                root: root.to_path_buf(),
                allowed: list.join(", "),
            });
        };
        let r = RootRef {
            path: root.to_path_buf(),
            allowed: allowed.clone(),
            rest: rest.to_path_buf(),
        };
        r.open()?;
        Ok(r)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(roots: &[&Path]) -> CleanupConfig {
        CleanupConfig {
            allowed_roots: roots.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    #[test]
    fn an_allowed_root_through_a_symbolic_link_is_refused_at_start_up() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir_all(real.join("inner")).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        let err = AllowedRoots::resolve(&cfg(&[&tmp.path().join("link")])).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        let err = AllowedRoots::resolve(&cfg(&[&tmp.path().join("link/inner")])).unwrap_err();
        assert!(err.contains("symbolic link"), "a link in the middle counts too: {err}");
        assert!(AllowedRoots::resolve(&cfg(&[&real.join("inner")])).is_ok());
    }

    #[test]
    fn an_absent_allowed_root_is_kept_but_refuses_requests() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("not-yet");
        let roots = AllowedRoots::resolve(&cfg(&[&gone])).unwrap();
        assert_eq!(roots.absent().collect::<Vec<_>>(), [gone.as_path()]);
        std::fs::create_dir(&gone).unwrap();
        let err = roots.check(&gone).unwrap_err().to_string();
        assert!(err.contains("did not exist when the agent started"), "{err}");
    }

    #[test]
    fn a_replaced_allowed_root_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let roots = AllowedRoots::resolve(&cfg(&[&root])).unwrap();
        assert!(roots.check(&root).is_ok());
        std::fs::rename(&root, tmp.path().join("old")).unwrap();
        std::fs::create_dir(&root).unwrap();
        let err = roots.check(&root).unwrap_err().to_string();
        assert!(err.contains("replaced"), "{err}");
    }

    #[test]
    fn a_link_anywhere_below_the_allowed_root_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(outside.join("b")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/mid")).unwrap();
        let roots = AllowedRoots::resolve(&cfg(&[&root])).unwrap();
        for requested in [root.join("a/mid"), root.join("a/mid/b")] {
            let err = roots.check(&requested).unwrap_err().to_string();
            assert!(err.contains("symbolic link"), "{requested:?}: {err}");
        }
        assert!(roots.check(&root.join("a")).is_ok());
    }
}
