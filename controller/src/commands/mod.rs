//! One module per controller subcommand.

pub mod backoff;
pub mod diag;
pub mod enrol;
pub mod ping;
pub mod top;
pub mod job;
