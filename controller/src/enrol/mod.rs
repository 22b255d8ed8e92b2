//! Enrolment: how an agent installed through user-data joins the fleet with no secret in
//! its user-data and no private key travelling anywhere, and how its certificate is
//! renewed and revoked. The agent proves which EC2 instance it is with the signed
//! instance-identity document (`identity`), or which host it is with a one-time join token
//! (`token`); `decide` holds the rules, `store` the records, `exchange` the conversation.

pub mod auto;
mod ber;
pub mod config;
pub mod decide;
pub mod exchange;
pub mod identity;
pub mod store;
pub mod token;
