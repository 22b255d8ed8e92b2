//! `diag --follow` is the view an on-call engineer keeps open during an incident: when
//! its connection drops it reconnects by itself and keeps counting toward `--count`; a
//! host that is down from the start is reported at once.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::{Duration, Instant};

use controller::commands::diag::{self, DiagOptions};
use controller::output::OutputFormat;
use e2e::support::agent::{dialer, host, spawn_in_process};
use e2e::support::certs::TestPki;
use e2e::support::proxy::Proxy;
use e2e::support::LineCounter;

const T: Duration = Duration::from_secs(60);

fn follow(count: u32) -> DiagOptions {
    DiagOptions { follow: true, interval: Duration::from_millis(100), top: 3, count: Some(count), output: OutputFormat::Json }
}

#[tokio::test]
async fn diag_follow_reconnects_after_a_dropped_connection_and_finishes_its_count() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let proxy = Proxy::start(agent.local_addr()).await;
        let h = host("web-1", proxy.addr);
        let d = dialer(pki.operator_config());
        let (mut w, mut rx) = LineCounter::new();
        let cutter = tokio::spawn(async move {
            rx.wait_for(|n| *n >= 4).await.unwrap();
            proxy.cut_all();
            proxy
        });
        let shown = diag::run(&d, &h, &follow(12), &mut w).await.unwrap();
        let _proxy = cutter.await.unwrap();
        assert_eq!(shown, 12);
        let text = w.text();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 12);
        let times: Vec<i64> = lines.iter().map(|l| l["taken_at_unix_ms"].as_i64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[1] > w[0]), "snapshots in order: {times:?}");
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn diag_against_a_host_that_is_down_fails_at_once() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let dead = host("web-2", format!("127.0.0.1:{}", e2e::support::free_port()).parse().unwrap());
        let t = Instant::now();
        let err = diag::run(&dialer(pki.operator_config()), &dead, &follow(5), &mut Vec::new()).await.unwrap_err();
        assert!(err.to_string().contains("connection refused"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    })
    .await
    .unwrap();
}
