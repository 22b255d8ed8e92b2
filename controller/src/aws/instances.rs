//! Changing EC2 instances for incident mitigations: what an instance is launched from and
//! runs on (`facts`), stopping, resizing and starting it, waiting for a state, and
//! launching another like it. Like `snapshots`, this adapter changes AWS; it decides
//! nothing (the incident's plan says what may be done, and the operator confirms it).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{AttributeValue, Filter, IamInstanceProfileSpecification, LaunchTemplateSpecification, ResourceType, Tag, TagSpecification};
use serde::Serialize;

use super::error::classify;
use super::{AwsCause, AwsError};

const SERVICE: &str = "EC2";
/// The tag EC2 Auto Scaling puts on the instances of a group.
pub const ASG_TAG: &str = "aws:autoscaling:groupName";

/// What a mitigation needs to know of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceFacts {
    pub id: String,
    pub state: String,
    pub instance_type: String,
    /// `ebs` or `instance-store`.
    pub root_device_type: String,
    /// The Auto Scaling group it belongs to, if any.
    pub auto_scaling_group: Option<String>,
    pub image_id: Option<String>,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub instance_profile_arn: Option<String>,
    pub key_name: Option<String>,
    /// (launch template id, version) it was launched from.
    pub launch_template: Option<(String, String)>,
    pub tags: BTreeMap<String, String>,
}

fn other(call: &'static str, msg: String) -> AwsError {
    AwsError { service: SERVICE, call, cause: AwsCause::Other(msg) }
}

/// The instance's facts, or an error naming it when EC2 does not know it.
pub async fn facts(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<InstanceFacts, AwsError> {
    let out = ec2
        .describe_instances()
        .filters(Filter::builder().name("instance-id").values(id).build())
        .send()
        .await
        .map_err(|e| classify(SERVICE, "DescribeInstances", e))?;
    let i = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(id))
        .ok_or_else(|| other("DescribeInstances", format!("instance {id} does not exist")))?;
    let tags: BTreeMap<String, String> =
        i.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect();
    let launch_template = match (tags.get("aws:ec2launchtemplate:id"), tags.get("aws:ec2launchtemplate:version")) {
        (Some(lt), Some(v)) => Some((lt.clone(), v.clone())),
        (Some(lt), None) => Some((lt.clone(), "$Default".into())),
        _ => None,
    };
    Ok(InstanceFacts {
        id: id.to_string(),
        state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_else(|| "unknown".into()),
        instance_type: i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
        root_device_type: i.root_device_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
        auto_scaling_group: tags.get(ASG_TAG).cloned(),
        image_id: i.image_id().map(str::to_string),
        subnet_id: i.subnet_id().map(str::to_string),
        security_group_ids: i.security_groups().iter().filter_map(|g| g.group_id().map(str::to_string)).collect(),
        instance_profile_arn: i.iam_instance_profile().and_then(|p| p.arn()).map(str::to_string),
        key_name: i.key_name().map(str::to_string),
        launch_template,
        tags,
    })
}

pub async fn stop(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<(), AwsError> {
    ec2.stop_instances().instance_ids(id).send().await.map_err(|e| classify(SERVICE, "StopInstances", e))?;
    Ok(())
}

pub async fn start(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<(), AwsError> {
    ec2.start_instances().instance_ids(id).send().await.map_err(|e| classify(SERVICE, "StartInstances", e))?;
    Ok(())
}

/// Changes a stopped instance's type.
pub async fn set_type(ec2: &aws_sdk_ec2::Client, id: &str, instance_type: &str) -> Result<(), AwsError> {
    ec2.modify_instance_attribute()
        .instance_id(id)
        .instance_type(AttributeValue::builder().value(instance_type).build())
        .send()
        .await
        .map_err(|e| classify(SERVICE, "ModifyInstanceAttribute", e))?;
    Ok(())
}

/// Polls until the instance is in `want`; an error names the state it was left in.
pub async fn wait_state(ec2: &aws_sdk_ec2::Client, id: &str, want: &str, deadline: Duration, poll: Duration) -> Result<(), AwsError> {
    let started = Instant::now();
    loop {
        let f = facts(ec2, id).await?;
        if f.state == want {
            return Ok(());
        }
        if started.elapsed() + poll > deadline {
            return Err(other(
                "DescribeInstances",
                format!("instance {id} is still {} after {} s (waiting for {want})", f.state, deadline.as_secs()),
            ));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Launches one instance like `like`: from its launch template when it has one, else from
/// its AMI, type, subnet, security groups, key and instance profile; with `tags` and
/// `user_data` (base64). Returns the new instance's id.
pub async fn launch_like(ec2: &aws_sdk_ec2::Client, like: &InstanceFacts, tags: &BTreeMap<String, String>, user_data_b64: &str) -> Result<String, AwsError> {
    let spec = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
        .build();
    let mut req = ec2.run_instances().min_count(1).max_count(1).tag_specifications(spec).user_data(user_data_b64);
    match &like.launch_template {
        Some((lt, version)) => {
            req = req.launch_template(LaunchTemplateSpecification::builder().launch_template_id(lt).version(version).build());
        }
        None => {
            let image = like.image_id.as_deref().ok_or_else(|| other("RunInstances", format!("{} has no AMI to launch from", like.id)))?;
            req = req
                .image_id(image)
                .instance_type(like.instance_type.as_str().into())
                .set_subnet_id(like.subnet_id.clone())
                .set_security_group_ids((!like.security_group_ids.is_empty()).then(|| like.security_group_ids.clone()))
                .set_key_name(like.key_name.clone())
                .set_iam_instance_profile(like.instance_profile_arn.as_ref().map(|a| IamInstanceProfileSpecification::builder().arn(a).build()));
        }
    }
    let out = req.send().await.map_err(|e| classify(SERVICE, "RunInstances", e))?;
    out.instances()
        .first()
        .and_then(|i| i.instance_id())
        .map(str::to_string)
        .ok_or_else(|| other("RunInstances", "no instance id returned".into()))
}
