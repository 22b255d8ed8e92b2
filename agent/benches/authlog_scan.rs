//! Throughput of a full auth log scan (`AuthLog::query(0, 10, true)`) over a synthetic
//! auth log of ~1 GiB (`AUTHLOG_BENCH_BYTES` to change it), next to `grep -c` and `rg -c`
//! on the same file. Run with `cargo bench -p agent --bench authlog_scan`. It measures
//! only; it checks nothing but that the scan counted exactly the failures it wrote.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::error::Error;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::authlog::AuthLog;

const DEFAULT_BYTES: u64 = 1 << 30;
const RUNS: usize = 3;
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
struct Written {
    bytes: u64,
    lines: u64,
    failures: u64,
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
fn generate(path: &Path, target: u64) -> Result<Written, Box<dyn Error>> {
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

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn gb_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e9
}

/// Median time of `program args.. path` over `RUNS`, or `None` when it is not installed.
fn time_tool(program: &str, args: &[&str], path: &Path) -> Option<(Duration, String)> {
    let mut samples = Vec::new();
    let mut output = String::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let out = Command::new(program)
            .args(args)
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        samples.push(started.elapsed());
        output = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    Some((median(samples), output))
}

fn main() -> Result<(), Box<dyn Error>> {
    let target = match std::env::var("AUTHLOG_BENCH_BYTES") {
        Ok(value) => value
            .parse::<u64>()
            .map_err(|e| format!("AUTHLOG_BENCH_BYTES={value:?}: {e}"))?,
        Err(_) => DEFAULT_BYTES,
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("auth.log");
    let started = Instant::now();
    let written = generate(&path, target)?;
    println!(
        "generated {} bytes, {} lines, {} failure lines ({:.1}%) in {:.1?}",
        written.bytes,
        written.lines,
        written.failures,
        100.0 * written.failures as f64 / written.lines as f64,
        started.elapsed()
    );

    let mut samples = Vec::new();
    for run in 1..=RUNS {
        let mut log = AuthLog::new(vec![path.clone()], 1 << 20);
        let started = Instant::now();
        let result = log.query(0, 10, true)?;
        let elapsed = started.elapsed();
        println!(
            "authlog run {run}: {:.3?}, {:.2} GB/s, total {} (password {}, invalid user {}, publickey {}), malformed {}, evicted {}",
            elapsed,
            gb_per_s(result.bytes_read, elapsed),
            result.total,
            result.failed_password,
            result.invalid_user,
            result.failed_publickey,
            result.malformed_lines,
            result.evicted_events,
        );
        if result.total + result.evicted_events != written.failures || result.malformed_lines != 0 {
            return Err(format!(
                "scan counted {} (+{} evicted) of {} failures written",
                result.total, result.evicted_events, written.failures
            )
            .into());
        }
        samples.push(elapsed);
    }
    let ours = median(samples);
    println!(
        "authlog median: {:.3?}, {:.2} GB/s",
        ours,
        gb_per_s(written.bytes, ours)
    );

    for (program, args) in [
        ("grep", vec!["-c", "Failed password"]),
        ("rg", vec!["-c", "Failed password"]),
    ] {
        match time_tool(program, &args, &path) {
            Some((time, count)) => println!(
                "{program} {}: {:.3?}, {:.2} GB/s (count {count}); authlog is {:.2}x its speed",
                args.join(" "),
                time,
                gb_per_s(written.bytes, time),
                time.as_secs_f64() / ours.as_secs_f64(),
            ),
            None => println!("{program}: not installed, skipped"),
        }
    }
    Ok(())
}
