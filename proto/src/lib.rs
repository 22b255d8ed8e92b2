//! The ops.v1 wire contract (generated from `ops/v1/agent.proto`) and the mutual-TLS
//! helpers that both the agent and the controller use to speak it.
//!
//! Everything that decides how a connection is secured lives here, once, so that the two
//! sides cannot drift apart. This crate must never weaken verification: no "insecure"
//! switches, no plain-text fallback. The one dial that does not check the agent against
//! the fleet CA is enrolment's, which pins the agent's key instead (see `enrol`).
#![forbid(unsafe_code)]

pub mod enrol;
pub mod identity;
/// The rustls version the TLS helpers are built on, for callers that name its types.
pub use rustls;
pub mod tls;
pub mod tls_check;

/// Generated messages, client and server for package `ops.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ops.v1");
}

/// The default port agents listen on.
pub const DEFAULT_AGENT_PORT: u16 = 7443;
