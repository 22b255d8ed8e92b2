//! Dialling agents: one mTLS client configuration for the whole run, per-host
//! connections with deadlines, and a bounded fan-out over the fleet that keeps the
//! fleet's order in its results.

use std::future::Future;
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use ops_proto::tls::{self, ConnectError, DialTimeouts, FailureKind, TlsError};
use ops_proto::v1::agent_client::AgentClient;
use ops_proto::rustls::ClientConfig;
use tonic::transport::Channel;

use crate::config::{ConfigError, ControllerConfig};
use crate::fleet::Host;

/// The agent credentials could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DialerSetupError {
    #[error(transparent)]
    NoTls(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}


/// Connects to agents with this operator's certificate.
#[derive(Clone)]
pub struct Dialer {
    config: Arc<ClientConfig>,
    timeouts: DialTimeouts,
    concurrency: usize,
}

impl Dialer {
    /// Loads the CA and the operator certificate named in the config.
    pub fn from_config(cfg: &ControllerConfig) -> Result<Dialer, DialerSetupError> {
        Ok(Dialer {
            config: tls::client_config(&cfg.tls()?.paths())?,
            timeouts: DialTimeouts {
                connect: cfg.fleet.connect_timeout,
                request: Some(cfg.fleet.request_timeout),
            },
            concurrency: cfg.fleet.concurrency,
        })
    }

    /// A dialer from parts (tests build their own TLS configs).
    pub fn new(config: Arc<ClientConfig>, timeouts: DialTimeouts, concurrency: usize) -> Dialer {
        Dialer { config, timeouts, concurrency: concurrency.max(1) }
    }

    /// Opens a connection to one host's agent.
    pub async fn connect(&self, host: &Host) -> Result<AgentClient<Channel>, ConnectError> {
        let channel = tls::connect(&host.target(), self.config.clone(), self.timeouts).await?;
        Ok(AgentClient::new(channel))
    }

    /// A connection whose unary calls have no deadline (for long streams).
    pub async fn connect_streaming(&self, host: &Host) -> Result<AgentClient<Channel>, ConnectError> {
        let timeouts = DialTimeouts { request: None, ..self.timeouts };
        let channel = tls::connect(&host.target(), self.config.clone(), timeouts).await?;
        Ok(AgentClient::new(channel))
    }

    /// Runs `f` against every host, at most `concurrency` at a time; results come back
    /// in the order of `hosts`.
    pub async fn fan_out<'a, T, F, Fut>(&self, hosts: &'a [Host], f: F) -> Vec<(&'a Host, T)>
    where
        F: Fn(Dialer, &'a Host) -> Fut,
        Fut: Future<Output = T> + 'a,
    {
        let mut out: Vec<(usize, &'a Host, T)> = stream::iter(hosts.iter().enumerate())
            .map(|(i, h)| {
                let fut = f(self.clone(), h);
                async move { (i, h, fut.await) }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        out.sort_by_key(|(i, _, _)| *i);
        out.into_iter().map(|(_, h, t)| (h, t)).collect()
    }
}

/// Names the cause of a failed call: a transport failure is classified like a failed
/// connection; an error status from the agent keeps its code and message.
pub fn call_error(status: &tonic::Status) -> ConnectError {
    use tonic::Code;
    let transport_failure = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled if transport_failure => {
            ConnectError::classify(status)
        }
        Code::DeadlineExceeded => ConnectError::new(FailureKind::TimedOut, status.message().to_string()),
        code => ConnectError::new(FailureKind::Agent, format!("{}: {}", code_name(code), status.message())),
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown error",
        InvalidArgument => "invalid argument",
        DeadlineExceeded => "deadline exceeded",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        ResourceExhausted => "resource exhausted",
        FailedPrecondition => "failed precondition",
        Aborted => "aborted",
        OutOfRange => "out of range",
        Unimplemented => "not implemented by this agent",
        Internal => "agent internal error",
        Unavailable => "unavailable",
        DataLoss => "data loss",
        Unauthenticated => "unauthenticated",
    }
}
