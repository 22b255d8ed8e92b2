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
    /// Whether `fan_out` draws a progress bar (a person at a terminal; `progress::wanted`).
    progress: bool,
    /// `[enrol] auto = true`: an EC2 agent waiting for enrolment is enrolled, then dialled again.
    auto_enrol: Option<Arc<crate::enrol::auto::AutoEnrol>>,
}

impl Dialer {
    /// Loads the CA and the operator certificate named in the config.
    pub fn from_config(cfg: &ControllerConfig) -> Result<Dialer, DialerSetupError> {
        Ok(Dialer {
            config: tls::client_config(&cfg.tls()?.paths(), cfg.tls()?.crl.as_deref())?,
            timeouts: DialTimeouts {
                connect: cfg.fleet.connect_timeout,
                request: Some(cfg.fleet.request_timeout),
            },
            concurrency: cfg.fleet.concurrency,
            progress: false,
            auto_enrol: cfg.enrol.auto.then(|| Arc::new(crate::enrol::auto::AutoEnrol::new(cfg))),
        })
    }

    /// A dialer from parts (tests build their own TLS configs).
    pub fn new(config: Arc<ClientConfig>, timeouts: DialTimeouts, concurrency: usize) -> Dialer {
        Dialer { config, timeouts, concurrency: concurrency.max(1), progress: false, auto_enrol: None }
    }

    /// The same dialer, drawing a progress bar over its fan-outs when `on`.
    pub fn with_progress(mut self, on: bool) -> Dialer {
        self.progress = on;
        self
    }

    /// Opens a connection to one host's agent.
    pub async fn connect(&self, host: &Host) -> Result<AgentClient<Channel>, ConnectError> {
        self.dial(host, self.timeouts).await
    }

    /// A connection whose unary calls have no deadline (for long streams).
    pub async fn connect_streaming(&self, host: &Host) -> Result<AgentClient<Channel>, ConnectError> {
        self.dial(host, DialTimeouts { request: None, ..self.timeouts }).await
    }

    async fn dial(&self, host: &Host, timeouts: DialTimeouts) -> Result<AgentClient<Channel>, ConnectError> {
        match tls::connect(&host.target(), self.config.clone(), timeouts).await {
            Ok(channel) => Ok(AgentClient::new(channel)),
            Err(e) if e.kind == FailureKind::ServerCertificateInvalid => match &self.auto_enrol {
                Some(auto) if auto.enrol(host).await => {
                    Ok(AgentClient::new(tls::connect(&host.target(), self.config.clone(), timeouts).await?))
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Runs `f` against every host, at most `concurrency` at a time; results come back
    /// in the order of `hosts`. With progress on, a bar counts the hosts done as `what`
    /// ("hosts answered"); it is cleared before this returns.
    pub async fn fan_out<'a, T, F, Fut>(&self, hosts: &'a [Host], what: &'static str, f: F) -> Vec<(&'a Host, T)>
    where
        F: Fn(Dialer, &'a Host) -> Fut,
        Fut: Future<Output = T> + 'a,
    {
        let bar = crate::progress::HostProgress::new(self.progress, hosts.len(), what);
        let mut out: Vec<(usize, &'a Host, T)> = stream::iter(hosts.iter().enumerate())
            .map(|(i, h)| {
                let fut = f(self.clone(), h);
                async move { (i, h, fut.await) }
            })
            .buffer_unordered(self.concurrency)
            .inspect(|_| bar.inc())
            .collect()
            .await;
        drop(bar);
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
        // tonic's own wording of the code, so that it stays in step with the gRPC spec.
        code => ConnectError::new(FailureKind::Agent, format!("{}: {}", code.description(), status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_refusal_keeps_its_message_after_tonics_description_of_the_code() {
        let e = call_error(&tonic::Status::permission_denied("viewer may not start jobs"));
        assert_eq!(e.kind, FailureKind::Agent);
        assert_eq!(e.detail, format!("{}: viewer may not start jobs", tonic::Code::PermissionDenied.description()));
        assert_eq!(e.to_string(), format!("agent error: {}", e.detail));
        let e = call_error(&tonic::Status::not_found("no job j-1"));
        assert_eq!(e.detail, format!("{}: no job j-1", tonic::Code::NotFound.description()));
    }

    #[test]
    fn a_deadline_is_a_timeout_not_an_agent_refusal() {
        let e = call_error(&tonic::Status::deadline_exceeded("slow"));
        assert_eq!(e.kind, FailureKind::TimedOut);
    }
}
