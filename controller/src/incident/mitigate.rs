//! The high-CPU incident's mitigations: restart the configured services, kill one
//! process (both agent jobs, so allow-listed, checked on the host and audited there), scale
//! the instance up, or add an instance like it. `plan` says what each will do, or why it is
//! refused, before anything is asked; `run` carries out one the operator confirmed and
//! says what happened, step by step.
//!
//! Nothing here changes anything unless `run` is called, and the caller calls it only
//! after a confirmation on a terminal or `--yes`.

use std::collections::BTreeMap;

use ops_proto::v1::{job_spec, JobSpec, KillProcess, RestartService, StartJobRequest};
use serde::Serialize;

use super::config::IncidentConfig;
use crate::aws::instances::{self, InstanceFacts};
use crate::client::Dialer;
use crate::commands::job;
use crate::fleet::Host;

/// A mitigation the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Mitigation {
    RestartServices { services: Vec<String> },
    Kill { pid: i32, expected_name: String },
    ScaleUp { to: String },
    AddInstance,
}

/// What a mitigation will do, or why it may not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub mitigation: Mitigation,
    pub what: String,
    pub refused: Option<String>,
}

/// Pure: each asked mitigation with what it will do on `host`, or the reason it is refused
/// (`facts` is None when the host is not an EC2 instance or EC2 could not say).
pub fn plan(asked: &[Mitigation], host: &str, facts: Option<&InstanceFacts>, cfg: &IncidentConfig) -> Vec<Planned> {
    asked
        .iter()
        .map(|m| {
            let (what, refused) = match m {
                Mitigation::RestartServices { services } => (
                    format!("restart {} on {host} (agent job RestartService, allow-listed on the host)", services.join(", ")),
                    services.is_empty().then(|| "no services configured ([incident] services)".to_string()),
                ),
                Mitigation::Kill { pid, expected_name } => (
                    format!("send SIGTERM to process {pid} ({expected_name}) on {host} (agent job KillProcess; the agent checks it is still that process)"),
                    expected_name.is_empty().then(|| format!("process {pid} is not among {host}'s top processes now, so its name cannot be checked")),
                ),
                Mitigation::ScaleUp { to } => {
                    let what = match facts {
                        Some(f) => format!("stop {} ({}), change its type {} -> {to}, start it, wait for its agent", f.id, host, f.instance_type),
                        None => format!("stop {host}, change its type to {to}, start it"),
                    };
                    (what, scale_up_refusal(facts, to))
                }
                Mitigation::AddInstance => {
                    let what = match facts {
                        Some(f) => format!(
                            "launch one instance like {} ({}), tagged into the fleet, installing the agent through user-data",
                            f.id,
                            match &f.launch_template {
                                Some((lt, v)) => format!("from launch template {lt} version {v}"),
                                None => format!("from {} as {} in {}", f.image_id.as_deref().unwrap_or("?"), f.instance_type, f.subnet_id.as_deref().unwrap_or("its subnet")),
                            }
                        ),
                        None => format!("launch an instance like {host}"),
                    };
                    let refused = match (facts, &cfg.agent_url) {
                        (None, _) => Some(format!("{host} is not an EC2 instance EC2 could describe")),
                        (_, None) => Some("no agent download configured ([incident] agent_url and agent_sha256)".into()),
                        (Some(f), _) if f.launch_template.is_none() && f.image_id.is_none() => Some(format!("{} has neither a launch template nor an AMI to copy", f.id)),
                        _ => None,
                    };
                    (what, refused)
                }
            };
            Planned { mitigation: m.clone(), what, refused }
        })
        .collect()
}

fn scale_up_refusal(facts: Option<&InstanceFacts>, to: &str) -> Option<String> {
    let Some(f) = facts else { return Some("the host is not an EC2 instance EC2 could describe".into()) };
    if let Some(asg) = &f.auto_scaling_group {
        return Some(format!("{} belongs to Auto Scaling group {asg}: change the group's launch template instead (a stopped member would be replaced)", f.id));
    }
    if f.root_device_type != "ebs" {
        return Some(format!("{} is not EBS-backed (root device {}): stopping it would lose its disk", f.id, f.root_device_type));
    }
    if f.instance_type == to {
        return Some(format!("{} is already {to}", f.id));
    }
    if f.state != "running" {
        return Some(format!("{} is {}, not running", f.id, f.state));
    }
    None
}

/// What one confirmed mitigation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Done {
    pub ok: bool,
    /// Each step as it happened.
    pub steps: Vec<String>,
}

/// Everything `run` needs.
pub struct Ctx<'a> {
    pub dialer: Option<&'a Dialer>,
    pub ec2: Option<&'a aws_sdk_ec2::Client>,
    pub cfg: &'a IncidentConfig,
    pub host: &'a Host,
    pub facts: Option<&'a InstanceFacts>,
    /// The fleet's tags, for an added instance.
    pub fleet_tags: &'a BTreeMap<String, String>,
    /// User-data for an added instance (base64), made by the caller.
    pub user_data_b64: Option<String>,
}

/// Carries out one mitigation; every step is recorded, a failed one ends it.
pub async fn run(m: &Mitigation, ctx: &Ctx<'_>) -> Done {
    let mut steps = Vec::new();
    let ok = match m {
        Mitigation::RestartServices { services } => {
            let mut all = true;
            for unit in services {
                let spec = job_spec::Kind::RestartService(RestartService { unit: unit.clone(), if_running: false });
                let (ok, line) = agent_job(ctx, spec, &format!("restart {unit}")).await;
                steps.push(line);
                all &= ok;
            }
            all
        }
        Mitigation::Kill { pid, expected_name } => {
            let spec = job_spec::Kind::KillProcess(KillProcess { pid: *pid, signal: "TERM".into(), expected_name: expected_name.clone() });
            let (ok, line) = agent_job(ctx, spec, &format!("kill {pid}")).await;
            steps.push(line);
            ok
        }
        Mitigation::ScaleUp { to } => scale_up(ctx, to, &mut steps).await,
        Mitigation::AddInstance => add_instance(ctx, &mut steps).await,
    };
    Done { ok, steps }
}

async fn agent_job(ctx: &Ctx<'_>, kind: job_spec::Kind, what: &str) -> (bool, String) {
    let Some(dialer) = ctx.dialer else { return (false, format!("{what}: not done: no agent credentials ([tls])")) };
    let req = StartJobRequest {
        spec: Some(JobSpec { kind: Some(kind) }),
        idempotency_key: job::new_idempotency_key(),
        ..StartJobRequest::default()
    };
    let started = match job::start(dialer, ctx.host, req).await {
        Ok(j) => j,
        Err(e) => return (false, format!("{what}: not started: {e}")),
    };
    let mut sink = std::io::sink();
    match job::watch(dialer, ctx.host, &started.id, 0, &mut sink).await {
        Ok(j) => {
            let state = job::state_name(j.state);
            let detail = if j.error.is_empty() { String::new() } else { format!(": {}", j.error) };
            (state == "succeeded", format!("{what}: job {} {state}{detail}", j.id))
        }
        Err(e) => (false, format!("{what}: job {} started, its end unknown: {e}", started.id)),
    }
}

async fn scale_up(ctx: &Ctx<'_>, to: &str, steps: &mut Vec<String>) -> bool {
    let (Some(ec2), Some(f)) = (ctx.ec2, ctx.facts) else {
        steps.push("not done: the host is not an EC2 instance".into());
        return false;
    };
    let (deadline, poll) = (ctx.cfg.state_deadline, ctx.cfg.poll);
    macro_rules! step {
        ($what:expr, $call:expr) => {
            match $call.await {
                Ok(_) => steps.push(format!("{}: done", $what)),
                Err(e) => {
                    steps.push(format!("{}: FAILED: {e}", $what));
                    return false;
                }
            }
        };
    }
    step!(format!("stop {}", f.id), instances::stop(ec2, &f.id));
    step!(format!("wait for {} to stop", f.id), instances::wait_state(ec2, &f.id, "stopped", deadline, poll));
    step!(format!("change {} from {} to {to}", f.id, f.instance_type), instances::set_type(ec2, &f.id, to));
    step!(format!("start {}", f.id), instances::start(ec2, &f.id));
    step!(format!("wait for {} to run", f.id), instances::wait_state(ec2, &f.id, "running", deadline, poll));
    match ctx.dialer {
        Some(d) => {
            let until = tokio::time::Instant::now() + ctx.cfg.agent_deadline;
            loop {
                let answered = match d.connect(ctx.host).await {
                    Ok(mut c) => c.get_host_info(ops_proto::v1::HostInfoRequest {}).await.is_ok(),
                    Err(_) => false,
                };
                if answered {
                    steps.push(format!("its agent answers again at {}", ctx.host.address));
                    return true;
                }
                if tokio::time::Instant::now() + poll >= until {
                    steps.push(format!("its agent did not answer within {} s", ctx.cfg.agent_deadline.as_secs()));
                    return false;
                }
                tokio::time::sleep(poll).await;
            }
        }
        None => {
            steps.push("its agent was not asked (no agent credentials)".into());
            false
        }
    }
}

async fn add_instance(ctx: &Ctx<'_>, steps: &mut Vec<String>) -> bool {
    let (Some(ec2), Some(f), Some(ud)) = (ctx.ec2, ctx.facts, ctx.user_data_b64.as_deref()) else {
        steps.push("not done: no EC2 instance to copy or no user-data".into());
        return false;
    };
    let mut tags = ctx.fleet_tags.clone();
    for (k, v) in &f.tags {
        if !k.starts_with("aws:") && k != "Name" {
            tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let name = f.tags.get("Name").cloned().unwrap_or_else(|| f.id.clone());
    tags.insert("Name".into(), format!("{name}-added"));
    match instances::launch_like(ec2, f, &tags, ud).await {
        Ok(id) => {
            steps.push(format!("launched {id} like {}", f.id));
            match instances::wait_state(ec2, &id, "running", ctx.cfg.state_deadline, ctx.cfg.poll).await {
                Ok(()) => {
                    steps.push(format!("{id} is running; its agent enrols with `controller fleet enroll` (or [enrol] auto)"));
                    true
                }
                Err(e) => {
                    steps.push(format!("{id} did not reach running: {e}"));
                    false
                }
            }
        }
        Err(e) => {
            steps.push(format!("launch FAILED: {e}"));
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn facts() -> InstanceFacts {
        InstanceFacts {
            id: "i-1".into(),
            state: "running".into(),
            instance_type: "t3.micro".into(),
            root_device_type: "ebs".into(),
            auto_scaling_group: None,
            image_id: Some("ami-1".into()),
            subnet_id: Some("subnet-1".into()),
            security_group_ids: vec!["sg-1".into()],
            instance_profile_arn: None,
            key_name: None,
            launch_template: None,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn a_scale_up_is_refused_for_a_group_member_an_instance_store_host_or_the_same_type() {
        let cfg = IncidentConfig::default();
        let up = [Mitigation::ScaleUp { to: "t3.small".into() }];
        assert_eq!(plan(&up, "web-1", Some(&facts()), &cfg)[0].refused, None);
        let asg = InstanceFacts { auto_scaling_group: Some("web-asg".into()), ..facts() };
        assert!(plan(&up, "web-1", Some(&asg), &cfg)[0].refused.as_deref().unwrap().contains("Auto Scaling group web-asg"));
        let store = InstanceFacts { root_device_type: "instance-store".into(), ..facts() };
        assert!(plan(&up, "web-1", Some(&store), &cfg)[0].refused.as_deref().unwrap().contains("not EBS-backed"));
        let same = InstanceFacts { instance_type: "t3.small".into(), ..facts() };
        assert!(plan(&up, "web-1", Some(&same), &cfg)[0].refused.as_deref().unwrap().contains("already"));
        assert!(plan(&up, "web-1", None, &cfg)[0].refused.is_some());
    }

    #[test]
    fn adding_an_instance_needs_an_agent_download_and_something_to_copy() {
        let cfg = IncidentConfig::default();
        let add = [Mitigation::AddInstance];
        assert!(plan(&add, "web-1", Some(&facts()), &cfg)[0].refused.as_deref().unwrap().contains("agent_url"));
        let cfg = IncidentConfig { agent_url: Some("https://x/agent".into()), agent_sha256: Some("ab".into()), ..cfg };
        let p = &plan(&add, "web-1", Some(&facts()), &cfg)[0];
        assert_eq!(p.refused, None);
        assert!(p.what.contains("from ami-1 as t3.micro in subnet-1"), "{}", p.what);
    }
}
