//! Which files make up the auth log: the first configured path that exists is the live
//! file; its rotated siblings (`NAME.1`, `NAME.N.gz`, and RHEL dateext's `NAME-YYYYMMDD`
//! and `NAME-YYYYMMDD.gz`) hold its history. The naming rules are pure; listing the
//! directory, reading metadata and opening files (never through a symlink, only regular
//! files of the required owner) is the only I/O here. Never reads file contents.

use std::cmp::Reverse;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file's identity on the host: survives renames, changes when a new file is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(crate) fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The first candidate that exists as anything: a symlink or a non-regular file is then
/// refused by name when opened, rather than silently passed over for the next candidate.
pub(crate) fn first_existing(candidates: &[PathBuf]) -> Option<&Path> {
    candidates
        .iter()
        .map(PathBuf::as_path)
        .find(|path| fs::symlink_metadata(path).is_ok())
}

/// Why an auth log file was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("is a symbolic link; the agent reads auth logs only through their real path")]
    Symlink,
    #[error("is not a regular file")]
    NotRegular,
    #[error("is owned by uid {found}, not uid {required}; the agent reads only auth logs written by root")]
    WrongOwner { found: u32, required: u32 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Opens `path` for reading without following a symlink in its last component (and
/// without blocking on a FIFO planted there), and only if the opened file is a regular
/// file owned by `owner`. The checks are made on the opened descriptor, so a rename race
/// cannot swap in another file between check and read.
pub(crate) fn open_log(path: &Path, owner: u32) -> Result<(fs::File, Metadata), OpenError> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Err(OpenError::Symlink),
        Err(errno) => return Err(OpenError::Io(errno.into())),
    };
    let file = fs::File::from(fd);
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(OpenError::NotRegular);
    }
    if meta.uid() != owner {
        return Err(OpenError::WrongOwner {
            found: meta.uid(),
            required: owner,
        });
    }
    Ok((file, meta))
}

/// A rotated sibling of the live file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rotated {
    pub path: PathBuf,
    pub gzip: bool,
}

/// How old a rotated file is, by its name. Ordered oldest first: dated names by date,
/// then numbered names from the highest number down to `.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Age {
    Dated(u32),
    Numbered(Reverse<u32>),
}

/// The rotated siblings of `live`, oldest first. When both `NAME.2` and `NAME.2.gz`
/// exist (logrotate caught compressing), only the plain one is taken.
pub(crate) fn rotated_siblings(live: &Path) -> io::Result<Vec<Rotated>> {
    let mut found: Vec<(Age, Rotated)> = list_rotated(live)?
        .into_iter()
        .map(|(age, gzip, path)| (age, Rotated { path, gzip }))
        .collect();
    found.sort_by_key(|(age, rotated)| (*age, rotated.gzip));
    found.dedup_by_key(|(age, _)| *age);
    Ok(found.into_iter().map(|(_, rotated)| rotated).collect())
}

/// The rotated sibling of `live` that is the file `id`: where the live file went when it
/// was rotated by renaming.
pub(crate) fn find_rotated(live: &Path, id: FileId) -> io::Result<Option<PathBuf>> {
    Ok(list_rotated(live)?
        .into_iter()
        .find(|(_, _, path)| fs::symlink_metadata(path).is_ok_and(|meta| FileId::of(&meta) == id))
        .map(|(_, _, path)| path))
}

fn list_rotated(live: &Path) -> io::Result<Vec<(Age, bool, PathBuf)>> {
    let Some(live_name) = live.file_name() else {
        return Ok(Vec::new());
    };
    let dir = match live.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        // An entry that vanished while listing is simply not a sibling any more.
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if let Some((age, gzip)) = rotation_of(live_name.as_bytes(), name.as_bytes()) {
            found.push((age, gzip, entry.path()));
        }
    }
    Ok(found)
}

/// Whether `name` is a rotated form of `live_name`, and how old and whether gzipped.
fn rotation_of(live_name: &[u8], name: &[u8]) -> Option<(Age, bool)> {
    let suffix = name.strip_prefix(live_name)?;
    let (suffix, gzip) = match suffix.strip_suffix(b".gz") {
        Some(stem) => (stem, true),
        None => (suffix, false),
    };
    let all_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let number = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<u32>().ok();
    match suffix {
        [b'.', n @ ..] if all_digits(n) && n.len() <= 9 => {
            Some((Age::Numbered(Reverse(number(n)?)), gzip))
        }
        [b'-', date @ ..] if all_digits(date) && date.len() == 8 => {
            Some((Age::Dated(number(date)?), gzip))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rotated_names_are_recognised_and_others_are_not() {
        let live = b"secure";
        assert_eq!(
            rotation_of(live, b"secure.1"),
            Some((Age::Numbered(Reverse(1)), false))
        );
        assert_eq!(
            rotation_of(live, b"secure.12.gz"),
            Some((Age::Numbered(Reverse(12)), true))
        );
        assert_eq!(
            rotation_of(live, b"secure-20261122"),
            Some((Age::Dated(20_261_122), false))
        );
        assert_eq!(
            rotation_of(live, b"secure-20261122.gz"),
            Some((Age::Dated(20_261_122), true))
        );
        for other in [
            &b"secure"[..],
            b"secure.",
            b"secure.gz",
            b"secure.1.bak",
            b"secure-2026",
            b"secure.x",
            b"auth.log.1",
        ] {
            assert_eq!(
                rotation_of(live, other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn siblings_come_oldest_first_and_prefer_plain_over_a_half_made_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("auth.log");
        for name in [
            "auth.log",
            "auth.log.1",
            "auth.log.2.gz",
            "auth.log.3.gz",
            "auth.log.3",
            "auth.log.bak",
            "other.1",
        ] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        let names: Vec<String> = rotated_siblings(&live)
            .unwrap()
            .into_iter()
            .map(|r| r.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["auth.log.3", "auth.log.2.gz", "auth.log.1"]);
    }

    #[test]
    fn a_symlink_a_fifo_and_a_file_of_another_owner_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("shadow");
        fs::write(&secret, b"root:$6$secret\n").unwrap();
        let owner = rustix::process::geteuid().as_raw();
        let link = dir.path().join("auth.log");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(matches!(open_log(&link, owner), Err(OpenError::Symlink)));
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        assert!(matches!(open_log(&fifo, owner), Err(OpenError::NotRegular)));
        let other = owner.wrapping_add(1);
        assert!(matches!(
            open_log(&secret, other),
            Err(OpenError::WrongOwner { found, required }) if found == owner && required == other
        ));
        assert!(open_log(&secret, owner).is_ok());
    }

    #[test]
    fn a_renamed_live_file_is_found_among_its_siblings_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("secure");
        fs::write(&live, b"x\n").unwrap();
        let id = FileId::of(&fs::metadata(&live).unwrap());
        let rotated = dir.path().join("secure-20261130");
        fs::rename(&live, &rotated).unwrap();
        fs::write(&live, b"").unwrap();
        assert_eq!(find_rotated(&live, id).unwrap(), Some(rotated));
        assert_eq!(
            first_existing(&[dir.path().join("nope"), live.clone()]),
            Some(live.as_path())
        );
    }
}
