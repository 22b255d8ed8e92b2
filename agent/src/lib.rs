//! The host agent: serves `ops.v1.Agent` over mutual TLS. Read-only host data
//! (host info, snapshots, auth failures) and typed jobs, never a shell from the network.
#![forbid(unsafe_code)]

pub mod authlog;
pub mod check;
pub mod collect;
pub mod jobs;
pub mod config;
pub mod enrol;
pub mod imds;
pub mod metrics;
pub mod pending;
pub mod pools;
pub mod probe;
pub mod server;
pub mod service;
