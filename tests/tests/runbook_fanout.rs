//! The runbooks' fan-out at fleet scale: a static inventory of 500 hosts, 50 of them
//! silent peers that accept TCP and never answer. The daily health check must take no
//! more than the same fleet without its silent hosts plus one per-host timeout and a small
//! margin (never 50 timeouts one after another), and name every silent host.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test

use std::net::TcpListener;
use std::time::{Duration, Instant};

use controller::client::Dialer;
use controller::runbooks::daily_health_check as daily;
use controller::runbooks::report::Status;
use controller::runbooks::{self, Which};
use e2e::support::agent::spawn_in_process;
use e2e::support::aws_seed as seed;
use e2e::support::certs::TestPki;
use e2e::support::moto::Moto;
use ops_proto::tls::DialTimeouts;

const HOSTS: usize = 500;
const SILENT: usize = 50;
const PER_HOST: Duration = Duration::from_secs(3);
const MARGIN: Duration = Duration::from_secs(3);

#[tokio::test]
async fn five_hundred_hosts_with_fifty_silent_finish_within_one_timeout_and_every_silent_host_is_named() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let moto = Moto::start();
        let aws = moto.clients().await;
        let pki = TestPki::new();
        // A few real agents stand for the 450 live hosts (each takes many names); they take
        // as many concurrent handshakes from one source as the controller sends.
        let log = seed::auth_log(pki.path(), 1);
        let limits = format!("[limits]\nmax_pending_handshakes_per_source = 256\n[auth_log]\npaths = [\"{}\"]\n", log.display());
        let mut agents = Vec::new();
        for _ in 0..3 {
            agents.push(spawn_in_process(&pki, "", &limits).await);
        }
        let silent: Vec<TcpListener> = (0..SILENT).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let mut fleet = String::from("[fleet]\nsource = \"static\"\nconcurrency = 64\n");
        let mut silent_names = Vec::new();
        for i in 0..HOSTS {
            let (name, addr) = if i % (HOSTS / SILENT) == 0 && silent_names.len() < SILENT {
                let l = &silent[silent_names.len()];
                let name = format!("silent-{i:03}");
                silent_names.push(name.clone());
                (name, l.local_addr().unwrap().to_string())
            } else {
                (format!("web-{i:03}"), agents[i % agents.len()].local_addr().to_string())
            };
            fleet.push_str(&format!("[[fleet.hosts]]\nname = \"{name}\"\naddress = \"{addr}\"\nserver_name = \"localhost\"\n"));
        }
        assert_eq!(silent_names.len(), SILENT);
        let dialer = Dialer::new(pki.operator_config(), DialTimeouts { connect: PER_HOST, request: Some(PER_HOST) }, 64);
        // The same live hosts without the silent ones: what the healthy part costs on this
        // machine (debug build, shared cores), so that the bound below is about the silent
        // hosts alone.
        let live_only: String = fleet.split("[[fleet.hosts]]").filter(|h| !h.contains("silent-")).collect::<Vec<_>>().join("[[fleet.hosts]]");
        let ctx = seed::context_with_fleet(aws.clone(), &live_only, "", Some(dialer.clone()));
        let started = Instant::now();
        let healthy = runbooks::run(Which::DailyHealthCheck, &ctx).await;
        let healthy_took = started.elapsed();
        assert_eq!(healthy.check(daily::AGENT_LOGINS).unwrap().status, Status::Ok, "{}", healthy.check(daily::AGENT_LOGINS).unwrap().summary);

        let ctx = seed::context_with_fleet(aws, &fleet, "", Some(dialer));
        let started = Instant::now();
        let report = runbooks::run(Which::DailyHealthCheck, &ctx).await;
        let took = started.elapsed();
        let logins = report.check(daily::AGENT_LOGINS).unwrap_or_else(|| panic!("{}", report.render_text()));
        assert_eq!(logins.status, Status::Fail, "{}", logins.summary);
        for name in &silent_names {
            assert!(logins.details.iter().any(|d| d.starts_with(&format!("{name}:"))), "{name} is not named: {:?}", logins.details);
        }
        let named_silent = logins.details.iter().filter(|d| d.starts_with("silent-")).count();
        assert_eq!(named_silent, SILENT, "{:?}", logins.details);
        let unanswered: Vec<&String> = logins.details.iter().filter(|d| d.starts_with("web-") && d.contains("unreachable")).collect();
        assert!(unanswered.is_empty(), "every live host answers; {} did not, e.g. {:?}", unanswered.len(), unanswered.first());
        // Fifty silent hosts cost one per-host timeout, not fifty (nor one per window of
        // 64: an ordered fan-out would hold each window behind its silent hosts).
        assert!(
            took < healthy_took + PER_HOST + MARGIN,
            "took {took:?} for {HOSTS} hosts with {SILENT} silent; the {} live ones alone took {healthy_took:?} (per-host timeout {PER_HOST:?})",
            HOSTS - SILENT
        );
        drop(silent);
        for a in agents {
            a.shutdown().await.unwrap();
        }
    })
    .await
    .expect("test timed out");
}
