//! `controller incident db-connection`: the seed's "Database Connection Issues" runbook. RDS
//! status, pending maintenance and the last hour's events; the queries running longer than
//! `[incident] long_query` (credentials from Secrets Manager, as in maintenance); whether
//! the database's security groups let the application hosts reach its port; from every
//! application host, through its agent, a connection to the database and its MySQL
//! greeting (the seed's telnet, done from where the application runs); `DatabaseConnections`
//! for the last hour; then the mitigations asked for: reboot, kill chosen long queries
//! (never the controller's own session), scale up to `[incident] db_scale_up_class`.
//!
//! Nothing changes without a confirmation on a terminal or `--yes`; whatever could not be
//! read is in the timeline as such and makes the exit code 1.

use std::collections::BTreeMap;

use chrono::Utc;
use mysql_async::prelude::Queryable;
use serde::Serialize;
use serde_json::json;

use super::{confirmed, cpu, Incident};
use crate::aws::cloudwatch::{self, StatsQuery};
use crate::aws::ec2::SecurityGroup;
use crate::aws::{rds, AwsClients};
use crate::client::Dialer;
use crate::config::ControllerConfig;
use crate::fleet::Host;
use crate::output::OutputFormat;

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct DbOptions {
    pub reboot: bool,
    /// Processlist ids of long queries to kill.
    pub kill_queries: Vec<u64>,
    pub scale_up: bool,
    pub yes: bool,
    pub report_dir: Option<std::path::PathBuf>,
}

/// One session of the processlist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub id: u64,
    pub user: String,
    pub host: String,
    pub command: String,
    pub seconds: u64,
    pub query: String,
}

/// Pure: which of the database's security groups' rules admit `port` from a host with
/// `host_groups` and `host_ip`. Returns the admitting rules, described.
pub fn admitted_by(db_groups: &[SecurityGroup], port: u16, host_groups: &[String], host_ip: Option<std::net::Ipv4Addr>) -> Vec<String> {
    let mut out = Vec::new();
    for g in db_groups {
        for r in &g.ingress {
            let proto_ok = r.protocol == "-1" || r.protocol == "tcp" || r.protocol == "6";
            let port_ok = r.protocol == "-1" || (r.from_port.unwrap_or(0) <= i32::from(port) && i32::from(port) <= r.to_port.unwrap_or(65535));
            if !(proto_ok && port_ok) {
                continue;
            }
            if let Some(src) = r.source_groups.iter().find(|s| host_groups.contains(s)) {
                out.push(format!("{} admits {src}", g.id));
            }
            if let Some(ip) = host_ip {
                if let Some(c) = r.cidrs_v4.iter().find(|c| cidr_contains(c, ip)) {
                    out.push(format!("{} admits {c}", g.id));
                }
            }
        }
    }
    out
}

fn cidr_contains(cidr: &str, ip: std::net::Ipv4Addr) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else { return false };
    let (Ok(net), Ok(bits)) = (net.parse::<std::net::Ipv4Addr>(), bits.parse::<u32>()) else { return false };
    if bits > 32 {
        return false;
    }
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    (u32::from(net) & mask) == (u32::from(ip) & mask)
}

/// Pure: the kills asked for that may be done, and why the others may not: only ids of the
/// long-running list, never the controller's own session.
pub fn checked_kills(asked: &[u64], long: &[Session], own: u64) -> (Vec<u64>, Vec<String>) {
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for id in asked {
        if *id == own {
            refused.push(format!("session {id} is this controller's own"));
        } else if long.iter().any(|s| s.id == *id) {
            ok.push(*id);
        } else {
            refused.push(format!("session {id} is not among the long-running queries listed"));
        }
    }
    (ok, refused)
}

/// `controller incident db-connection`.
pub async fn db_connection(cfg: &ControllerConfig, opts: &DbOptions, output: OutputFormat) -> anyhow::Result<i32> {
    let ic = &cfg.incident;
    let aws = AwsClients::load(&cfg.aws).await?;
    let dialer = Dialer::from_config(cfg).ok();
    let mut inc = Incident::new("db-connection", super::operator_name(cfg), opts.report_dir.as_deref())?;
    let id = cfg.maintenance.database.instance_id.clone().unwrap_or_else(|| cfg.runbooks.db_instance_id.clone());
    inc.hosts = vec![id.clone()];
    let now = Utc::now();
    let hour_ago = now - chrono::Duration::hours(1);

    // 1. RDS.
    let db = match rds::describe_db_instances(&aws.rds).await {
        Ok(all) => all.into_iter().find(|d| d.id == id),
        Err(e) => {
            inc.note("not-done", format!("RDS instances not read: {e}"), json!(null));
            None
        }
    };
    match &db {
        Some(d) => inc.note(
            "seen",
            format!("{id}: {} ({}), endpoint {}:{}", d.status, d.class.as_deref().unwrap_or("?"), d.endpoint.as_deref().unwrap_or("?"), d.port.unwrap_or(0)),
            json!(d),
        ),
        None => inc.note("not-done", format!("RDS has no instance {id}"), json!(null)),
    }
    match rds::pending_maintenance(&aws.rds, &id).await {
        Ok(p) if p.is_empty() => inc.note("seen", format!("{id}: no pending maintenance"), json!(null)),
        Ok(p) => inc.note("seen", format!("{id}: pending maintenance: {}", p.join("; ")), json!(p)),
        Err(e) => inc.note("not-done", format!("{id}: pending maintenance not read: {e}"), json!(null)),
    }
    match rds::events_since(&aws.rds, &id, hour_ago).await {
        Ok(ev) => {
            let lines: Vec<String> = ev.iter().map(|e| format!("{} {}", e.time.map(|t| t.format("%H:%M").to_string()).unwrap_or_default(), e.message)).collect();
            inc.note("seen", format!("{id}: {} event(s) in the last hour{}", ev.len(), if lines.is_empty() { String::new() } else { format!(": {}", lines.join("; ")) }), json!(ev));
        }
        Err(e) => inc.note("not-done", format!("{id}: events not read: {e}"), json!(null)),
    }

    // 2. The processlist.
    let threshold = ic.long_query.as_secs();
    let mut own_id = 0u64;
    let mut long: Vec<Session> = Vec::new();
    let mut conn = None;
    match &cfg.maintenance.database.secret_id {
        None => inc.note("not-done", "processlist not read: no [maintenance.database] secret_id", json!(null)),
        Some(secret) => match crate::maintenance::database::connect(&aws, &cfg.maintenance.database, secret, &id).await {
            Err(e) => inc.note("not-done", format!("processlist not read: cannot connect: {e}"), json!(null)),
            Ok((mut c, ep)) => {
                match processlist(&mut c).await {
                    Ok((own, sessions)) => {
                        own_id = own;
                        long = sessions.into_iter().filter(|s| s.seconds >= threshold && s.id != own).collect();
                        let shown: Vec<String> = long.iter().map(|s| format!("{} {}@{} {} s: {}", s.id, s.user, s.host, s.seconds, s.query)).collect();
                        inc.note(
                            "seen",
                            format!("{}:{}: {} quer(ies) running {threshold} s or longer{}", ep.host, ep.port, long.len(), if shown.is_empty() { String::new() } else { format!(": {}", shown.join("; ")) }),
                            json!(long),
                        );
                    }
                    Err(e) => inc.note("not-done", format!("processlist not read: {e}"), json!(null)),
                }
                conn = Some(c);
            }
        },
    }

    // 3. Security groups, 4. the agents' probes.
    let fleet = crate::fleet::discover(cfg).await.unwrap_or_default();
    if let Some(d) = &db {
        groups(&mut inc, &aws, d, &fleet).await;
    }
    match &dialer {
        Some(dl) => probes(&mut inc, dl, &fleet, &ic.db_probe_target).await,
        None => inc.note("not-done", "database probes from the hosts not run: no agent credentials ([tls])", json!(null)),
    }

    // 5. Connections.
    let dims = BTreeMap::from([("DBInstanceIdentifier".to_string(), id.clone())]);
    let q = StatsQuery { namespace: "AWS/RDS", metric: "DatabaseConnections", dimensions: &dims, start: hour_ago, end: now, period_secs: 300 };
    match cloudwatch::metric_statistics(&aws.cloudwatch, &q).await {
        Ok(points) => {
            let periods = cpu::periods(&points, hour_ago, now);
            let peak = periods.iter().filter_map(|p| p.maximum).fold(0.0, f64::max);
            inc.note("seen", format!("{id}: DatabaseConnections last hour, peak {peak:.0}"), json!(periods));
        }
        Err(e) => inc.note("not-done", format!("DatabaseConnections not read: {e}"), json!(null)),
    }

    // 6. Mitigations.
    if !opts.kill_queries.is_empty() {
        let (ok, refused) = checked_kills(&opts.kill_queries, &long, own_id);
        for r in refused {
            inc.note("refused", format!("kill query: {r}"), json!(null));
        }
        for qid in ok {
            let what = format!("KILL QUERY {qid} on {id}");
            if !ask(&mut inc, &what, opts.yes) {
                continue;
            }
            match conn.as_mut() {
                Some(c) if inc.begin_change(&what) => match c.query_drop(format!("KILL QUERY {qid}")).await {
                    Ok(()) => inc.end_change(true, what, json!({"id": qid})),
                    Err(e) => inc.end_change(false, format!("{what}: {e}"), json!(null)),
                },
                Some(_) => {}
                None => inc.note("not-done", format!("{what}: no database connection"), json!(null)),
            }
        }
    }
    if opts.reboot {
        let what = format!("reboot RDS instance {id}");
        if ask(&mut inc, &what, opts.yes) && inc.begin_change(&what) {
            match rds::reboot(&aws.rds, &id).await {
                Ok(()) => inc.end_change(true, what, json!(null)),
                Err(e) => inc.end_change(false, format!("{what}: {e}"), json!(null)),
            }
        }
    }
    if opts.scale_up {
        match (&ic.db_scale_up_class, db.as_ref().and_then(|d| d.class.clone())) {
            (None, _) => inc.note("refused", "scale up: no target class configured ([incident] db_scale_up_class)", json!(null)),
            (Some(to), Some(from)) if *to == from => inc.note("refused", format!("scale up: {id} is already {to}"), json!(null)),
            (Some(to), from) => {
                let what = format!("change {id} from {} to {to}, applied now", from.as_deref().unwrap_or("?"));
                if ask(&mut inc, &what, opts.yes) && inc.begin_change(&what) {
                    match rds::set_class(&aws.rds, &id, to).await {
                        Ok(()) => inc.end_change(true, what, json!(null)),
                        Err(e) => inc.end_change(false, format!("{what}: {e}"), json!(null)),
                    }
                }
            }
        }
    }
    if let Some(c) = conn {
        let _ = c.disconnect().await;
    }
    inc.finish(output)
}

fn ask(inc: &mut Incident, what: &str, yes: bool) -> bool {
    println!("Mitigation: {what}");
    if confirmed(yes) {
        return true;
    }
    inc.note("declined", format!("{what} (not confirmed; nothing changed)"), json!(null));
    false
}

/// This connection's id and every session that is doing something (not sleeping).
async fn processlist(c: &mut mysql_async::Conn) -> Result<(u64, Vec<Session>), mysql_async::Error> {
    let own: Option<u64> = c.query_first("SELECT CONNECTION_ID()").await?;
    let rows: Vec<(u64, String, String, String, u64, Option<String>)> = c
        .query(
            "SELECT ID, USER, HOST, COMMAND, TIME, LEFT(INFO, 200) FROM information_schema.PROCESSLIST \
             WHERE COMMAND <> 'Sleep' ORDER BY TIME DESC",
        )
        .await?;
    let sessions = rows
        .into_iter()
        .map(|(id, user, host, command, seconds, info)| Session { id, user, host, command, seconds, query: info.unwrap_or_default() })
        .collect();
    Ok((own.unwrap_or(0), sessions))
}

async fn groups(inc: &mut Incident, aws: &AwsClients, db: &rds::DbInstance, fleet: &[Host]) {
    let all = match crate::aws::ec2::describe_security_groups(&aws.ec2).await {
        Ok(g) => g,
        Err(e) => return inc.note("not-done", format!("security groups not read: {e}"), json!(null)),
    };
    let db_groups: Vec<SecurityGroup> = all.into_iter().filter(|g| db.security_group_ids.contains(&g.id)).collect();
    if db_groups.is_empty() {
        return inc.note("not-done", format!("{}: no security groups to check (RDS names none)", db.id), json!(null));
    }
    let port = db.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(3306);
    let instances = crate::aws::ec2::describe_instances(&aws.ec2, &BTreeMap::new(), &["running"]).await.unwrap_or_default();
    for h in fleet {
        let inst = instances.iter().find(|i| Some(&i.id) == h.instance_id.as_ref());
        let (host_groups, ip) = match inst {
            Some(i) => (i.security_group_ids.clone(), i.private_ip.as_deref().and_then(|ip| ip.parse().ok())),
            None => (Vec::new(), None),
        };
        let admits = admitted_by(&db_groups, port, &host_groups, ip);
        if admits.is_empty() {
            inc.note("seen-problem", format!("{}: NOT allowed to reach {}:{port} by the database's security groups", h.name, db.id), json!({"host": h.name, "groups": host_groups}));
        } else {
            inc.note("seen", format!("{}: allowed to reach {}:{port} ({})", h.name, db.id, admits.join(", ")), json!({"host": h.name, "rules": admits}));
        }
    }
}

async fn probes(inc: &mut Incident, dialer: &Dialer, fleet: &[Host], target: &str) {
    let target = target.to_string();
    let answers = dialer
        .fan_out(fleet, "hosts probed", |d, h| {
            let target = target.clone();
            async move {
                let mut c = d.connect(h).await.map_err(|e| e.to_string())?;
                c.probe_target(ops_proto::v1::ProbeTargetRequest { name: target })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| crate::client::call_error(&s).to_string())
            }
        })
        .await;
    for (h, a) in answers {
        match a {
            Ok(r) => {
                let words = match r.outcome.as_str() {
                    "answers" => "MySQL answers",
                    "open-no-greeting" => "port open but no MySQL answer",
                    "refused" => "port closed (connection refused)",
                    "timed-out" => "no answer (timed out: filtered or down)",
                    _ => "unreachable",
                };
                let kind = if r.outcome == "answers" { "seen" } else { "seen-problem" };
                inc.note(kind, format!("{} -> {} ({}): {words}: {}", h.name, r.name, r.address, r.detail), json!(r.outcome));
            }
            Err(e) => inc.note("not-done", format!("{}: probe not run: {e}", h.name), json!(null)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::aws::ec2::IngressRule;

    fn sg(rule: IngressRule) -> SecurityGroup {
        SecurityGroup { id: "sg-db".into(), name: "db".into(), description: String::new(), vpc_id: None, ingress: vec![rule] }
    }

    fn rule(from: i32, to: i32, cidrs: &[&str], groups: &[&str]) -> IngressRule {
        IngressRule {
            protocol: "tcp".into(),
            from_port: Some(from),
            to_port: Some(to),
            cidrs_v4: cidrs.iter().map(|s| s.to_string()).collect(),
            cidrs_v6: vec![],
            source_groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_host_is_admitted_by_its_group_or_its_address_on_the_port_only() {
        let ip = Some("10.0.1.5".parse().unwrap());
        assert_eq!(admitted_by(&[sg(rule(3306, 3306, &[], &["sg-app"]))], 3306, &["sg-app".into()], ip), vec!["sg-db admits sg-app"]);
        assert_eq!(admitted_by(&[sg(rule(3306, 3306, &["10.0.0.0/16"], &[]))], 3306, &[], ip), vec!["sg-db admits 10.0.0.0/16"]);
        assert!(admitted_by(&[sg(rule(5432, 5432, &["0.0.0.0/0"], &["sg-app"]))], 3306, &["sg-app".into()], ip).is_empty());
        assert!(admitted_by(&[sg(rule(3306, 3306, &["10.1.0.0/16"], &["sg-other"]))], 3306, &["sg-app".into()], ip).is_empty());
    }

    #[test]
    fn only_listed_long_queries_are_killed_and_never_our_own_session() {
        let s = |id| Session { id, user: "app".into(), host: "h".into(), command: "Query".into(), seconds: 200, query: "SELECT SLEEP(120)".into() };
        let (ok, refused) = checked_kills(&[7, 8, 9], &[s(7), s(9)], 9);
        assert_eq!(ok, vec![7]);
        assert_eq!(refused.len(), 2);
        assert!(refused[0].contains("not among") && refused[1].contains("own"), "{refused:?}");
    }
}
