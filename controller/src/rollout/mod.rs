//! The rollout engine every fleet-wide command that changes hosts goes through: a pure plan
//! and state machine (`plan`), its limits (`policy`), and the executor that feeds it. The
//! decisions never do I/O, so they are tested without agents.

pub mod agent_step;
pub mod executor;
pub mod journal;
pub mod lock;
pub mod plan;
pub mod policy;

pub use plan::{plan, HostState, Next, PlannedHost, Rollout, StopReason};
pub use policy::{Limit, LimitError, Policy};
