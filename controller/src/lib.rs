//! The fleet controller: discovers the fleet, drives agents over mutual TLS, runs the
//! runbooks and writes their reports. `main.rs` only wires these together.
#![forbid(unsafe_code)]

pub mod aws;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod db;
pub(crate) mod duration_text;
pub mod enrol;
pub mod fleet;
pub mod incident;
pub mod install;
pub mod maintenance;
pub mod output;
pub mod progress;
pub mod runbooks;
pub mod pki;
pub mod rollout;
