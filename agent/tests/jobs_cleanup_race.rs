//! Cleanup raced by a local user: the user owns a folder in the middle of a cleanup root
//! and swaps it for a symbolic link to a folder outside, in a tight loop, while cleanups
//! of many files run. Nothing outside may ever be removed. Runs as root (as CI does); the
//! racer runs as `nobody` through `setpriv`.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod jobs_support;

use std::fs::{self, File, FileTimes};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use jobs_support::*;
use ops_proto::v1::{job_result, job_spec, Cleanup, CleanupRule, JobSpec, JobState, TimeField};

/// `nobody` on Debian and Amazon Linux.
const NOBODY: u32 = 65534;
const ITERATIONS: usize = 200;
const FILES_PER_RUN: usize = 10;
const SETPRIV: &str = "/usr/bin/setpriv";
const PERL: &str = "/usr/bin/perl";

/// Swaps `mid` (a real folder) and `mid.link` (a link to the outside) back and forth
/// with rename(2), as fast as it can, until killed.
const RACE: &str = r#"chdir $ARGV[0] or die "chdir: $!";
while (1) {
    rename "mid", "mid.real"; rename "mid.link", "mid";
    rename "mid", "mid.link"; rename "mid.real", "mid";
}"#;

/// The racing process; killed when dropped, also when the test fails.
struct Racer(Child);

impl Drop for Racer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn old_file(path: &Path) {
    let f = File::create(path).unwrap();
    let ten_days_ago = SystemTime::now() - Duration::from_secs(10 * 86_400);
    f.set_times(FileTimes::new().set_modified(ten_days_ago).set_accessed(ten_days_ago))
        .unwrap();
}

fn cleanup(root: &Path) -> JobSpec {
    JobSpec {
        kind: Some(job_spec::Kind::Cleanup(Cleanup {
            rules: vec![CleanupRule {
                root: root.display().to_string(),
                pattern: "*.log".into(),
                older_than_seconds: 86_400,
                by: TimeField::Mtime as i32,
            }],
            dry_run: false,
        })),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_middle_folder_swapped_for_a_link_never_leads_cleanup_outside_its_root() {
    within_test_limit(async {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root: the agent deletes as root and the racer runs as nobody (CI runs as root)"
        );
        for tool in [SETPRIV, PERL] {
            assert!(
                Path::new(tool).is_file(),
                "{tool} is needed: apt-get install util-linux perl-base"
            );
        }
        let mut env = TestEnv::new();
        let base = env.path().to_path_buf();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        // The allowed root is world-writable, like /tmp: nobody may rename inside it.
        let allowed = base.join("allowed");
        fs::create_dir(&allowed).unwrap();
        fs::set_permissions(&allowed, fs::Permissions::from_mode(0o777)).unwrap();
        let mid = allowed.join("mid");
        fs::create_dir_all(mid.join("sub")).unwrap();
        std::os::unix::fs::chown(&mid, Some(NOBODY), Some(NOBODY)).unwrap();
        std::os::unix::fs::chown(mid.join("sub"), Some(NOBODY), Some(NOBODY)).unwrap();
        // Outside: the same layout, with files the cleanup would take if it got there.
        let outside = base.join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        for i in 0..FILES_PER_RUN {
            old_file(&outside.join(format!("sub/victim-{i}.log")));
        }
        let victims = names(&outside.join("sub"));
        let link = allowed.join("mid.link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
        // The real folder whatever its name at the moment: files are made through this.
        let real = File::open(&mid).unwrap();
        let real_sub = PathBuf::from(format!("/proc/self/fd/{}/sub", real.as_raw_fd()));

        env.settings.cleanup.allowed_roots = vec![allowed.clone()];
        let mgr = env.open().await;
        let mut racer = Racer(
            Command::new(SETPRIV)
                .args([
                    &format!("--reuid={NOBODY}"),
                    &format!("--regid={NOBODY}"),
                    "--clear-groups",
                    PERL,
                    "-e",
                    RACE,
                ])
                .arg(&allowed)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );

        let root = mid.join("sub");
        let (mut ran, mut refused_link, mut refused_other, mut removed) = (0, 0, 0, 0u64);
        for i in 0..ITERATIONS {
            for f in 0..FILES_PER_RUN {
                old_file(&real_sub.join(format!("f{i}-{f}.log")));
            }
            match mgr.start(req(cleanup(&root)), &operator()).await {
                Ok(job) => {
                    let (out, done) = follow(&mgr, &job.id, 0).await;
                    let out = String::from_utf8_lossy(&out);
                    assert_eq!(JobState::try_from(done.state).unwrap(), JobState::Succeeded, "{out}");
                    ran += 1;
                    if let Some(job_result::Kind::Cleanup(r)) = done.result.and_then(|r| r.kind) {
                        removed += r.files;
                    }
                }
                Err(e) if e.to_string().contains("symbolic link") => refused_link += 1,
                // The folder is between names at that moment.
                Err(e) if e.to_string().contains("No such file") => refused_other += 1,
                Err(e) => panic!("unexpected refusal: {e}"),
            }
            assert_eq!(
                names(&outside.join("sub")),
                victims,
                "iteration {i}: a file outside the root was removed"
            );
            assert!(
                racer.0.try_wait().unwrap().is_none(),
                "the racer stopped early: the test would prove nothing"
            );
        }
        eprintln!(
            "{ITERATIONS} iterations: {ran} cleanups ran and removed {removed} files; \
             refused {refused_link} through a link, {refused_other} mid-rename"
        );
        // Not vacuous: cleanups did run and delete inside, and the racer was seen.
        assert!(ran > 0 && removed > 0, "no cleanup ever removed a file");
        assert!(refused_link > 0, "the racer's link was never seen");
        let left = names(&real_sub).len() as u64;
        assert_eq!(
            left + removed,
            (ITERATIONS * FILES_PER_RUN) as u64,
            "every file the results count was removed from the real folder"
        );
        drop(racer);
    })
    .await
}
