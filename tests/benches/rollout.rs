//! Benchmark: the rollout engine's own overhead. 50 real agent processes on loopback, each
//! with an action `noop` (`true`); a rollout over all of them through the engine every
//! fleet-wide command uses (`rollout::plan`, `executor::execute`), each host's work the
//! `noop` job run by `agent_step::run_job_step` over mTLS. Within each run it compares the
//! run's wall time with its slowest host's own time (start of that host's work to its
//! outcome): 1.0 would be an engine that adds nothing.
//!
//! At `max_concurrency` 50 (all at once, the main figure) and 10, each over several runs
//! after one warm-up, every run with a fresh run id so that the agents start new jobs
//! rather than hand back the ones they have; and a one-host rollout for scale. One more
//! row runs each host's work as its own task instead of inside the executor's, to see
//! whether polling all hosts from one task costs anything. With each run, the CPU time
//! used by this process (the controller's side) and by the agents, since here they share
//! the machine's cores, as the hosts of a real fleet do not. Prints the medians and writes
//! them to `target/bench-rollout.json`.
//!
//! `cargo bench -p e2e --profile dev --bench rollout` (ROLLOUT_BENCH_HOSTS, ROLLOUT_BENCH_RUNS
//! to change the 50 hosts and 5 runs). Needs the `agent` binary: `cargo build --bins`.
#![allow(clippy::unwrap_used)] // a benchmark: a panic is the failure report

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use controller::client::Dialer;
use controller::fleet::Host;
use controller::rollout::agent_step::{run_job_step, StepOutcome};
use controller::rollout::executor::{execute, Signals};
use controller::rollout::journal::{new_run_id, StepState};
use controller::rollout::{plan, HostState, Limit, Policy};
use e2e::support::agent::{config_text, dialer, host, write_config, AgentProcess};
use e2e::support::certs::TestPki;
use ops_proto::v1::{job_spec, JobSpec, RunAction};
use serde_json::json;
use tokio::sync::watch;

const ACTIONS: &str = "[[actions]]\nname = \"noop\"\nargv = [\"true\"]\n";
/// Each host's bound in the engine; a no-op that takes this long is a failure, not a figure.
const HOST_TIMEOUT: Duration = Duration::from_secs(60);
/// The job's own deadline, carried to the agent.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Descriptors the bench holds per agent at most: its stdout pipe and, while its step
/// runs, the start and watch connections; plus a margin for the process itself.
const FDS_PER_AGENT: u64 = 4;
const FDS_MARGIN: u64 = 64;

/// One rollout's timings.
struct Run {
    wall: Duration,
    /// Per host: when its work began (from the run's start) and how long it took.
    hosts: Vec<(Duration, Duration)>,
    /// CPU ms used meanwhile by this process (the controller's side) and by the agents.
    cpu: (f64, f64),
}

impl Run {
    fn slowest(&self) -> Duration {
        self.hosts.iter().map(|h| h.1).max().unwrap()
    }
    fn ratio(&self) -> f64 {
        self.wall.as_secs_f64() / self.slowest().as_secs_f64()
    }
    fn median_host(&self) -> Duration {
        median(self.hosts.iter().map(|h| h.1).collect())
    }
    fn last_start(&self) -> Duration {
        self.hosts.iter().map(|h| h.0).max().unwrap()
    }
    /// From a host's outcome to the start of the host the plan let in for it, for every
    /// host beyond the first `concurrency` (each outcome frees one slot, and the n-th
    /// outcome lets in the n-th waiting host): the executor's dispatch latency. None when
    /// every host started at once.
    fn refill(&self, concurrency: usize) -> Option<Duration> {
        let mut starts: Vec<Duration> = self.hosts.iter().map(|h| h.0).collect();
        let mut ends: Vec<Duration> = self.hosts.iter().map(|h| h.0 + h.1).collect();
        starts.sort_unstable();
        ends.sort_unstable();
        let gaps: Vec<Duration> = starts.iter().skip(concurrency).zip(&ends).map(|(s, e)| s.saturating_sub(*e)).collect();
        (!gaps.is_empty()).then(|| median(gaps))
    }
    /// The share of the concurrency slots holding a host's work over the wall time.
    fn busy(&self, concurrency: usize) -> f64 {
        let work: f64 = self.hosts.iter().map(|h| h.1.as_secs_f64()).sum();
        work / (concurrency.min(self.hosts.len()) as f64 * self.wall.as_secs_f64())
    }
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn noop() -> JobSpec {
    JobSpec { kind: Some(job_spec::Kind::RunAction(RunAction { name: "noop".into() })) }
}

/// CPU time (user + system, its waited-for children included) of process `pid` so far,
/// in ms (clock ticks of 10 ms from /proc/PID/stat).
fn cpu_ms(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    // Fields 14 to 17 of stat (utime, stime, cutime, cstime) are 11 to 14 after the name.
    let f: Vec<u64> = after.split_whitespace().skip(11).take(4).filter_map(|v| v.parse().ok()).collect();
    f.iter().sum::<u64>() as f64 * 10.0
}

/// One host's work: the `noop` step as an agent job, timed from its start to its outcome.
async fn host_work(d: Dialer, host: Host, run_id: String, cancel: watch::Receiver<bool>) -> (StepOutcome, Instant, Duration) {
    let began = Instant::now();
    let out = run_job_step(&d, &host, &run_id, "noop", noop(), Some(STEP_TIMEOUT), cancel, &mut std::io::sink()).await;
    (out, began, began.elapsed())
}

/// One rollout of the `noop` step over `hosts`; asserts that every host ran a new job.
/// `spawned`: each host's work runs as its own task rather than inside the executor's.
async fn rollout(
    d: &Dialer,
    hosts: &[Host],
    concurrency: usize,
    spawned: bool,
    label: &str,
    seen: &mut HashSet<String>,
    agents: &[String],
) -> Run {
    let run_id = format!("{}-{label}", new_run_id(chrono::Utc::now()));
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let policy = Policy {
        max_concurrency: Limit::Count(concurrency),
        max_errors: Limit::Count(0),
        canary: 0,
        host_timeout: HOST_TIMEOUT,
    };
    let timings: Mutex<Vec<Option<(Duration, Duration, String)>>> = Mutex::new(vec![None; hosts.len()]);
    let (_stop, signals) = Signals::none();
    let cpu_agents = || agents.iter().map(|p| cpu_ms(p)).sum::<f64>();
    let (self_before, agents_before) = (cpu_ms("self"), cpu_agents());
    let t0 = Instant::now();
    let (ended, stop) = execute(plan(&names, &[], &policy), policy.host_timeout, signals, |_| {}, |i, _, cancel| {
        let work = host_work(d.clone(), hosts[i].clone(), run_id.clone(), cancel);
        let timings = &timings;
        async move {
            let (out, began, took) = if spawned { tokio::spawn(work).await.unwrap() } else { work.await };
            timings.lock().unwrap()[i] = Some((began - t0, took, out.job_id.clone().unwrap_or_default()));
            let state = match out.state {
                StepState::Succeeded => HostState::Succeeded,
                _ if out.unreachable => HostState::Unreachable,
                _ => HostState::Failed,
            };
            (state, out.detail)
        }
    })
    .await;
    let wall = t0.elapsed();
    let cpu = (cpu_ms("self") - self_before, cpu_agents() - agents_before);
    assert!(stop.is_none(), "the rollout stopped: {stop:?}");
    for h in &ended {
        assert_eq!(h.state, HostState::Succeeded, "{}: {}", h.name, h.reason);
    }
    let hosts = timings
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|t| {
            let (began, took, job) = t.unwrap();
            assert!(seen.insert(job.clone()), "job {job} came back from an earlier run: the run id was not fresh");
            (began, took)
        })
        .collect();
    Run { wall, hosts, cpu }
}

/// Medians over runs: wall, slowest host, wall/slowest, median host, last start, busy,
/// CPU of each side.
struct Summary {
    concurrency: usize,
    spawned: bool,
    wall: Duration,
    slowest: Duration,
    ratio: f64,
    median_host: Duration,
    last_start: Duration,
    busy: f64,
    refill: Option<Duration>,
    ratios: Vec<f64>,
    cpu_bench_ms: f64,
    cpu_agents_ms: f64,
}

fn summary(concurrency: usize, spawned: bool, runs: &[Run]) -> Summary {
    Summary {
        concurrency,
        spawned,
        wall: median(runs.iter().map(|r| r.wall).collect()),
        slowest: median(runs.iter().map(Run::slowest).collect()),
        ratio: median(runs.iter().map(Run::ratio).collect()),
        median_host: median(runs.iter().map(Run::median_host).collect()),
        last_start: median(runs.iter().map(Run::last_start).collect()),
        busy: median(runs.iter().map(|r| r.busy(concurrency)).collect()),
        refill: runs.iter().map(|r| r.refill(concurrency)).collect::<Option<Vec<_>>>().map(median),
        ratios: runs.iter().map(Run::ratio).collect(),
        cpu_bench_ms: median(runs.iter().map(|r| r.cpu.0).collect()),
        cpu_agents_ms: median(runs.iter().map(|r| r.cpu.1).collect()),
    }
}

/// The 1, 5 and 15-minute load averages, as /proc/loadavg gives them.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_row(hosts: usize, s: &Summary) {
    println!(
        "{hosts:>5} {:>11}{} {:>8.1} {:>12.1} {:>12.2} {:>11.1} {:>10.1} {:>6} {:>8.0} {:>10.0}",
        s.concurrency,
        if s.spawned { "*" } else { " " },
        ms(s.wall),
        ms(s.slowest),
        s.ratio,
        ms(s.median_host),
        ms(s.last_start),
        s.refill.map_or("-".to_string(), |r| format!("{:.2}", ms(r))),
        s.cpu_bench_ms,
        s.cpu_agents_ms
    );
}

fn summary_json(hosts: usize, s: &Summary) -> serde_json::Value {
    json!({
        "hosts": hosts,
        "max_concurrency": s.concurrency,
        "work_spawned_per_host": s.spawned,
        "wall_ms": ms(s.wall),
        "slowest_host_ms": ms(s.slowest),
        "wall_over_slowest": s.ratio,
        "median_host_ms": ms(s.median_host),
        "last_host_started_ms": ms(s.last_start),
        "slots_busy": s.busy,
        "refill_ms": s.refill.map(ms),
        "wall_over_slowest_each_run": s.ratios,
        "cpu_controller_side_ms": s.cpu_bench_ms,
        "cpu_agents_ms": s.cpu_agents_ms,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let n_hosts = env("ROLLOUT_BENCH_HOSTS", 50).max(1);
    let n_runs = env("ROLLOUT_BENCH_RUNS", 5).max(1);
    // Fails with the command to run when the binary has not been built.
    e2e::support::binary("agent");
    let need = n_hosts as u64 * FDS_PER_AGENT + FDS_MARGIN;
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if let Some(have) = nofile.filter(|have| *have < need) {
        panic!("ulimit -n is {have}; {n_hosts} agents need about {need} descriptors here: run `ulimit -n {need}` first");
    }

    let pki = TestPki::new();
    let started = Instant::now();
    // Each agent keeps its jobs in a folder of its own.
    let configs: Vec<_> = (0..n_hosts)
        .map(|i| {
            let state = format!("state_dir = \"{}\"\n", pki.path().join(format!("state-{i}")).display());
            write_config(&pki, &format!("agent-{i}"), &config_text(&pki, &pki.agent, "127.0.0.1:0", &state, ACTIONS))
        })
        .collect();
    let agents: Vec<AgentProcess> =
        tokio::task::spawn_blocking(move || configs.iter().map(|p| AgentProcess::start(p)).collect()).await.unwrap();
    let hosts: Vec<Host> = agents.iter().enumerate().map(|(i, a)| host(&format!("web-{}", i + 1), a.addr)).collect();
    let d = dialer(pki.operator_config());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = load_average();
    println!(
        "rollout bench: {n_hosts} agents (real processes, mTLS on loopback) up in {:.1} s; step = action `noop` (`true`); \
         medians of {n_runs} runs of each after one warm-up; {cores} cores, load average {load_before}; nofile limit {}",
        started.elapsed().as_secs_f64(),
        nofile.map_or("unlimited".to_string(), |n| n.to_string())
    );

    let mut seen = HashSet::new();
    let pids: Vec<String> = agents.iter().map(|a| a.pid().to_string()).collect();
    // (hosts, max_concurrency, each host's work spawned as its own task). The runs take
    // turns, one of each in every round, so that the machine's drifting load falls on all.
    let ten = 10.min(n_hosts);
    let setups = [(1, 1, false), (n_hosts, n_hosts, false), (n_hosts, ten, false), (n_hosts, n_hosts, true), (n_hosts, ten, true)];
    let mut runs: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
    for round in 0..=n_runs {
        for (i, &(count, concurrency, spawned)) in setups.iter().enumerate() {
            let tag = format!("c{concurrency}{}-{round}", if spawned { "s" } else { "" });
            let run = rollout(&d, &hosts[..count], concurrency, spawned, &tag, &mut seen, &pids[..count]).await;
            // Round 0 is the warm-up.
            if round > 0 {
                runs[i].push(run);
            }
        }
    }
    let summaries: Vec<(usize, Summary)> =
        setups.iter().zip(&runs).map(|(&(count, concurrency, spawned), runs)| (count, summary(concurrency, spawned, runs))).collect();

    let load_after = load_average();
    println!("hosts concurrency  wall ms  slowest host  wall/slowest  median host  last start  refill  CPU ours  CPU agents");
    for (count, s) in &summaries {
        print_row(*count, s);
    }
    println!(
        "times in ms, medians over runs; wall/slowest: the engine's overhead within a run when all hosts start at once \
         (1.00 is none; at concurrency 10 the hosts run in about {} waves, and refill is the engine's figure); last start: \
         when the last host's work began; refill: from a host's outcome to the start of the next host; CPU: ms used by \
         this process (the controller's side) and by the agents; *: each host's work spawned as its own task, for \
         comparison; load average after: {load_after}",
        n_hosts.div_ceil(10.min(n_hosts))
    );

    let out = e2e::support::target_bin_dir().parent().unwrap().join("bench-rollout.json");
    let doc = json!({
        "bench": "rollout",
        "step": "action noop (true) as an agent job",
        "runs": n_runs,
        "cores": cores,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": summaries.iter().map(|(count, s)| summary_json(*count, s)).collect::<Vec<_>>(),
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("summary written to {}", out.display());
    drop(agents);
}
