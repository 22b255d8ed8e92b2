//! Putting the agent on a host: the cloud-init user-data of a launch template and the
//! systemd unit it installs. Nothing here is secret, and nothing here may become secret:
//! user-data is readable on the instance.

pub mod unit;
pub mod user_data;
