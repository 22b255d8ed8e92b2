//! `controller fleet enroll | join-token | rotate-certs | remove`: the fleet side of
//! joining, renewing and leaving. Each command prints one row per host and exits 1 when
//! any host did not end as asked (refused, unreachable, not installed).

use std::time::Duration;

use serde::Serialize;

use crate::config::ControllerConfig;
use crate::enrol::exchange::{Enroller, Outcome};
use crate::enrol::store::{EnrolmentRecord, Store};
use crate::fleet::Host;
use crate::output::{OutputFormat, Table};

/// One host's row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub host: String,
    pub address: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Loads what an enrolment or rotation needs from the config.
pub async fn enroller(cfg: &ControllerConfig) -> anyhow::Result<Enroller> {
    Ok(crate::enrol::auto::enroller(cfg).await?)
}

/// The hosts named (all when `names` is empty), or an error naming the unknown one.
pub fn pick<'a>(hosts: &'a [Host], names: &[String]) -> anyhow::Result<Vec<&'a Host>> {
    if names.is_empty() {
        return Ok(hosts.iter().collect());
    }
    names.iter().map(|n| crate::fleet::find(hosts, n).map_err(anyhow::Error::from)).collect()
}

/// Enrols the given hosts one after another (each decision is taken under the store's lock).
pub async fn enrol_hosts(enroller: &Enroller, hosts: &[&Host], re_enrol: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for h in hosts {
        let outcome = enroller.enrol(h, re_enrol).await;
        rows.push(Row { host: h.name.clone(), address: h.address.clone(), outcome });
    }
    rows
}

pub async fn rotate_hosts(enroller: &Enroller, hosts: &[&Host], window: Duration, force: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for h in hosts {
        let outcome = enroller.rotate(h, window, force).await;
        rows.push(Row { host: h.name.clone(), address: h.address.clone(), outcome });
    }
    rows
}

/// Prints the rows and returns the exit code.
pub fn report(rows: &[Row], output: OutputFormat) -> anyhow::Result<i32> {
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        OutputFormat::Table => {
            let mut t = Table::new(["HOST", "ADDRESS", "RESULT", "DETAIL"]);
            for r in rows {
                let (result, detail) = r.outcome.describe();
                t.row([r.host.clone(), r.address.clone(), result.into(), detail]);
            }
            let ok = rows.iter().filter(|r| r.outcome.ok()).count();
            print!("{}\n{ok}/{} hosts as asked\n", t.render(), rows.len());
        }
    }
    Ok(if rows.iter().all(|r| r.outcome.ok()) { 0 } else { 1 })
}

/// `fleet join-token`: a one-time token bound to `host`, printed once on stdout.
pub fn join_token(cfg: &ControllerConfig, host: &str, ttl: Option<Duration>) -> anyhow::Result<i32> {
    let pki_dir = cfg.enrol.pki_dir().map_err(anyhow::Error::msg)?;
    let ttl = ttl.unwrap_or(cfg.enrol.join_token_ttl);
    if ttl.is_zero() || ttl > crate::enrol::config::MAX_TOKEN_TTL {
        anyhow::bail!("--ttl must be between 1s and 24h: a join token is a short-lived secret");
    }
    let ca = crate::pki::Ca::load(pki_dir)?;
    let (token, claims) = crate::enrol::token::issue(&ca, host, chrono::Utc::now().timestamp(), ttl)?;
    Store::new(pki_dir).audit(serde_json::json!({"event": "join-token-issued", "id": claims.id, "host": host, "expires_unix": claims.expires_unix}))?;
    eprintln!(
        "join token {} for {host}, valid until {} and for one enrolment; give it to the host's [enrol] join_token_file (never to user-data)",
        claims.id,
        chrono::DateTime::from_timestamp(claims.expires_unix, 0).map(|t| t.to_rfc3339()).unwrap_or_default()
    );
    println!("{token}");
    Ok(0)
}

/// `fleet remove`: revokes every certificate enrolled or rotated for the host and records
/// the removal. The CRL is rewritten; agents and controllers that load it refuse them.
pub fn remove(cfg: &ControllerConfig, name: &str, output: OutputFormat) -> anyhow::Result<i32> {
    let pki_dir = cfg.enrol.pki_dir().map_err(anyhow::Error::msg)?;
    let store = Store::new(pki_dir);
    let _lock = store.lock()?;
    let records = store.records()?;
    let mine: Vec<&EnrolmentRecord> = records.iter().filter(|r| (r.host == name || r.identity == name) && r.event != "removed").collect();
    let Some(last) = mine.last() else {
        anyhow::bail!("no enrolment of {name:?} is recorded in {}; nothing to revoke", pki_dir.join(crate::enrol::store::ENROLLED_FILE).display());
    };
    let identity = last.identity.clone();
    let removed_serials: Vec<&str> = records.iter().filter(|r| r.event == "removed").map(|r| r.serial.as_str()).collect();
    let serials: Vec<String> = mine.iter().map(|r| r.serial.clone()).filter(|s| !removed_serials.contains(&s.as_str())).collect();
    let mut crl = None;
    for s in &serials {
        let r = crate::pki::revoke(pki_dir, &crate::pki::RevokeTarget::Serial(s.clone()))?;
        crl = Some(r.crl);
    }
    for s in &serials {
        store.record(&EnrolmentRecord {
            time: crate::enrol::store::now(),
            event: "removed".into(),
            identity: identity.clone(),
            host: last.host.clone(),
            method: String::new(),
            serial: s.clone(),
            not_after: String::new(),
            by: "controller".into(),
        })?;
    }
    let crl_text = crl.map(|p| p.display().to_string()).unwrap_or_default();
    match output {
        OutputFormat::Json => println!("{}", serde_json::json!({"host": last.host, "identity": identity, "revoked": serials, "crl": crl_text})),
        OutputFormat::Table => {
            println!("{} ({identity}): revoked {} certificate(s): {}", last.host, serials.len(), serials.join(", "));
            println!("CRL written: {crl_text}; it takes effect where it is loaded ([tls] crl on controllers, tls.crl on agents)");
        }
    }
    Ok(0)
}
