//! `agent --config FILE`: load and validate the config, serve until SIGTERM or SIGINT,
//! then shut down gracefully.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;

/// The fleet host agent: serves ops.v1.Agent over mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "agent", version, about)]
struct Args {
    /// Agent configuration file (TOML).
    #[arg(long, env = "OPS_AGENT_CONFIG", default_value = "/etc/ops-agent/agent.toml")]
    config: PathBuf,
    /// Check everything the agent would load (config, CA, certificate and key, CRL,
    /// cleanup roots) and exit: 0 when all is well, 2 naming each file at fault.
    #[arg(long)]
    check: bool,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match agent::config::AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if args.check {
        let report = agent::check::check(&cfg, std::time::SystemTime::now());
        for line in &report.passed {
            println!("ok: {line}");
        }
        for failure in &report.failures {
            eprintln!("error: {failure}");
        }
        if !report.ok() {
            eprintln!("{}: {} problem(s) found", args.config.display(), report.failures.len());
            std::process::exit(2);
        }
        println!("{}: ok", args.config.display());
        return;
    }
    // Two workers are plenty for an agent; every extra thread can bring its own malloc
    // arena, so fewer threads keep the RSS small. Blocking work is split into lanes
    // (agent::pools) whose permits together stay below this limit, so no kind of it can
    // take every blocking thread.
    let blocking = agent::pools::MAX_BLOCKING_THREADS;
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(blocking).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async {
        // Signal handlers exist before the address is announced, so a SIGTERM sent right
        // after start-up is a graceful shutdown, not the default kill.
        let signals = Signals::install();
        let running = match agent::server::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        };
        // Tests and scripts read this line to learn the bound port.
        println!("listening on {}", running.local_addr());
        signals.wait().await;
        tracing::info!("shutting down");
        match running.shutdown().await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    });
    std::process::exit(code);
}

/// SIGTERM and SIGINT, registered once.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).map_err(|e| tracing::warn!("cannot watch SIGTERM: {e}")).ok();
        let int = signal(SignalKind::interrupt()).map_err(|e| tracing::warn!("cannot watch SIGINT: {e}")).ok();
        Signals { term, int }
    }

    async fn wait(mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
    }
}
