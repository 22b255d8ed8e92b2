//! Fleet discovery from EC2 (running instances matching the configured tags).

use crate::config::ControllerConfig;
use crate::fleet::{FleetError, Host};

/// Lists running instances matching `[fleet] tag_filters` as hosts.
pub async fn discover(_cfg: &ControllerConfig) -> Result<Vec<Host>, FleetError> {
    Err(FleetError::Ec2("this build has no EC2 support yet: use [fleet] source = \"static\"".into()))
}
