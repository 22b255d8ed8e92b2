//! A synthetic auth log for the benchmarks: traditional syslog and RFC 3339 lines mixed,
//! about 5% counted failures among the everyday noise of sshd, cron, sudo and logind,
//! deterministic (the same file every run). Shared by `authlog_scan` and `agent_rpc`
//! through `#[path]`; it only writes the file it is given.

use std::error::Error;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// 2026-11-01T00:00:00Z: the synthetic log covers November 2026.
const START_UNIX_S: i64 = 1_793_491_200;

/// A small deterministic generator (xorshift64*): no dependency, same file every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
pub struct Written {
    pub bytes: u64,
    pub lines: u64,
    pub failures: u64,
}

const USERS: [&str; 8] = [
    "root", "admin", "oracle", "ubuntu", "test", "pi", "postgres", "git",
];

fn source(rng: &mut Rng) -> String {
    if rng.below(10) == 0 {
        format!("2001:db8:{:x}::{:x}", rng.below(4096), rng.below(65536))
    } else {
        format!("203.0.{}.{}", rng.below(256), rng.below(256))
    }
}

/// One message after `host program[pid]: `; true when it is a counted failure.
fn message(rng: &mut Rng, out: &mut Vec<u8>) -> Result<bool, std::io::Error> {
    let pid = 1000 + rng.below(60_000);
    let port = 1024 + rng.below(64_000);
    let user = USERS[rng.below(USERS.len() as u64) as usize];
    // About 5% failure lines, the rest the everyday noise of an auth log.
    let failure = rng.below(100) < 5;
    if failure {
        let ip = source(rng);
        match rng.below(4) {
            0 => write!(out, "sshd[{pid}]: Failed password for {user} from {ip} port {port} ssh2"),
            1 => write!(out, "sshd[{pid}]: Invalid user {user} from {ip} port {port}"),
            2 => write!(out, "sshd[{pid}]: Failed password for invalid user {user} from {ip} port {port} ssh2"),
            _ => write!(out, "sshd[{pid}]: Failed publickey for {user} from {ip} port {port} ssh2: RSA SHA256:q83vEjRQ4oq8d2Yb1n8Zk"),
        }?;
        return Ok(true);
    }
    let inner = format!("10.0.{}.{}", rng.below(256), rng.below(256));
    match rng.below(10) {
        0 => write!(out, "sshd[{pid}]: Accepted publickey for deploy from {inner} port {port} ssh2: ED25519 SHA256:n3Vb2Q0k9x4W1mPq"),
        1 => write!(out, "sshd[{pid}]: pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)"),
        2 => write!(out, "sshd[{pid}]: Received disconnect from {inner} port {port}:11: disconnected by user"),
        3 => write!(out, "sshd[{pid}]: Disconnected from user deploy {inner} port {port}"),
        4 => write!(out, "sshd[{pid}]: Connection closed by {} port {port} [preauth]", source(rng)),
        5 => write!(out, "CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"),
        6 => write!(out, "CRON[{pid}]: pam_unix(cron:session): session closed for user root"),
        7 => write!(out, "sudo:      ops : TTY=pts/0 ; PWD=/home/ops ; USER=root ; COMMAND=/usr/bin/systemctl status nginx"),
        8 => write!(out, "sudo: pam_unix(sudo:session): session opened for user root(uid=0) by ops(uid=1000)"),
        _ => write!(out, "systemd-logind[{pid}]: New session {port} of user deploy."),
    }?;
    Ok(false)
}

/// Writes `target` bytes of log: traditional syslog lines and RFC 3339 lines mixed.
pub fn generate(path: &Path, target: u64) -> Result<Written, Box<dyn Error>> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut file = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut written = Written::default();
    let mut line = Vec::with_capacity(256);
    // Spread the lines over 28 days whatever the size.
    let step_ms = (28 * 86_400_000 / (target / 110).max(1)).max(1) as i64;
    let mut now_ms = START_UNIX_S * 1000;
    while written.bytes < target {
        line.clear();
        now_ms += step_ms;
        let (secs, ms) = (now_ms / 1000, now_ms % 1000);
        let day = secs.div_euclid(86_400) - START_UNIX_S / 86_400 + 1;
        let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
        if rng.below(2) == 0 {
            write!(line, "{} {day:>2} {h:02}:{m:02}:{s:02} web-1 ", MONTHS[10])?;
        } else {
            write!(
                line,
                "2026-11-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}412+00:00 web-1 "
            )?;
        }
        written.failures += u64::from(message(&mut rng, &mut line)?);
        line.push(b'\n');
        file.write_all(&line)?;
        written.bytes += line.len() as u64;
        written.lines += 1;
    }
    file.flush()?;
    Ok(written)
}
