//! Over the wire: auth failures read incrementally from the configured log, and the
//! standard gRPC health service on the agent's own (mTLS) listener.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::Write;
use std::time::Duration;

use e2e::support::agent::{dialer, host, operator_client, spawn_in_process};
use e2e::support::certs::TestPki;
use ops_proto::v1::AuthFailuresRequest;

const T: Duration = Duration::from_secs(30);

fn line(ts: &str, rest: &str) -> String {
    format!("{ts} web-1 sshd[4242]: {rest}\n")
}

#[tokio::test]
async fn auth_failures_are_counted_and_a_second_call_reads_only_new_lines() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let log = pki.path().join("auth.log");
        let now = chrono::Utc::now();
        let ts = |mins_ago: i64| (now - chrono::Duration::minutes(mins_ago)).format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
        let mut text = String::new();
        text += &line(&ts(300), "Failed password for root from 203.0.113.5 port 50000 ssh2"); // before `since`
        text += &line(&ts(30), "Failed password for root from 203.0.113.5 port 50001 ssh2");
        text += &line(&ts(29), "Failed password for invalid user admin from 198.51.100.7 port 50002 ssh2");
        text += &line(&ts(28), "Invalid user oracle from 198.51.100.7 port 50003");
        text += &line(&ts(27), "Failed publickey for deploy from 2001:db8::1 port 50004 ssh2");
        text += &line(&ts(26), "Accepted publickey for deploy from 2001:db8::1 port 50005 ssh2");
        text += "garbage \u{0} line\n";
        text += &line(&ts(25), "Failed password for"); // truncated: counted as malformed, skipped
        std::fs::write(&log, &text).unwrap();

        let agent = spawn_in_process(&pki, "", &format!("[auth_log]\npaths = [\"{}\"]\n", log.display())).await;
        let mut client = operator_client(&pki, agent.local_addr()).await;
        let since = (now - chrono::Duration::hours(1)).timestamp_millis();
        let a = client
            .get_auth_failures(AuthFailuresRequest { since_unix_ms: since, top_n: 5, rescan: false })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(a.source, log.display().to_string());
        assert_eq!((a.failed_password, a.invalid_user, a.failed_publickey, a.total), (2, 1, 1, 4), "{a:?}");
        assert_eq!(a.malformed_lines, 1);
        assert_eq!(a.bytes_read, text.len() as u64);
        assert_eq!(a.top_sources[0].name, "198.51.100.7");
        assert_eq!(a.top_sources[0].count, 2);

        let appended = line(&ts(1), "Failed password for root from 192.0.2.44 port 50010 ssh2");
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(appended.as_bytes()).unwrap();
        let b = client
            .get_auth_failures(AuthFailuresRequest { since_unix_ms: since, top_n: 5, rescan: false })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(b.bytes_read, appended.len() as u64, "only the new line is read");
        assert_eq!(b.total, 5);
        assert_eq!(b.failed_password, 3);
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_missing_auth_log_is_a_clear_error_not_a_crash() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        // The journal fallback points at an empty folder: no file and no journal either.
        let empty = tempfile::tempdir().unwrap();
        let agent = spawn_in_process(
            &pki,
            "",
            &format!(
                "[auth_log]\npaths = [\"/nonexistent/secure\", \"/nonexistent/auth.log\"]\njournal_directory = \"{}\"\n",
                empty.path().display()
            ),
        )
        .await;
        let mut client = operator_client(&pki, agent.local_addr()).await;
        let err = client
            .get_auth_failures(AuthFailuresRequest { since_unix_ms: 0, top_n: 5, rescan: false })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("/nonexistent/secure"), "{}", err.message());
        // The journal fallback must not turn "nothing to read" into "no failed logins".
        assert!(err.message().contains("no systemd journal files"), "{}", err.message());
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn health_service_answers_on_the_mtls_listener_and_goes_not_serving_on_shutdown() {
    tokio::time::timeout(T, async {
        let pki = TestPki::new();
        let agent = spawn_in_process(&pki, "", "").await;
        let channel = ops_proto::tls::connect(
            &host("a", agent.local_addr()).target(),
            pki.operator_config(),
            ops_proto::tls::DialTimeouts::default(),
        )
        .await
        .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest { service: "ops.v1.Agent".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
        let _ = dialer(pki.operator_config());
        agent.shutdown().await.unwrap();
    })
    .await
    .unwrap();
}
