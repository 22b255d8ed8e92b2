//! A stand-in for `systemctl`, because systemd does not run on the test machines: a shell
//! script put first on a test's PATH (or named in the agent's config) that appends each
//! call's arguments to a log and answers `is-active` with a chosen state. It is the only
//! fake in the test world besides the metadata service, and it does nothing else.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A `systemctl` stand-in in its own folder.
pub struct FakeSystemctl {
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl FakeSystemctl {
    /// Writes `DIR/systemctl`: `is-active` prints `state` (exit 0 only for "active"),
    /// `restart` exits `restart_exit`, everything else exits 0.
    pub fn new(dir: &Path, state: &str, restart_exit: i32) -> FakeSystemctl {
        std::fs::create_dir_all(dir).expect("systemctl stand-in folder");
        let log = dir.join("systemctl.args");
        let script = dir.join("systemctl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n# Stand-in for systemctl: systemd does not run on test machines.\n\
                 echo \"$@\" >> '{}'\ncase \"$1\" in\n  is-active) echo {state}; [ {state} = active ];;\n  \
                 restart) exit {restart_exit};;\nesac\nexit 0\n",
                log.display()
            ),
        )
        .expect("write systemctl stand-in");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod systemctl stand-in");
        FakeSystemctl { dir: dir.to_path_buf(), log }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("systemctl")
    }

    /// The calls so far, one argument string per line.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(str::to_string).collect()
    }
}
