//! The listener: accepts TCP, completes TLS 1.3 with a required client certificate off
//! the accept loop, serves `ops.v1.Agent`, `ops.v1.Enroll` and `grpc.health.v1` on the
//! verified connections, reloads certificates when their files change, and shuts down
//! gracefully. An agent that is not enrolled yet answers every `ops.v1.Agent` call with
//! FAILED_PRECONDITION until enrolment installs its certificate.
//!
//! A connection that fails the handshake (no client certificate, another CA, expired,
//! revoked by the CRL) never reaches a handler: it is logged (rate-limited) and dropped
//! here; a revoked certificate is logged by name and serial. Before
//! authentication a peer gets a short handshake deadline and a slot in the capped
//! pending table (`pending`); after it, HTTP/2 limits (streams per connection, windows,
//! keepalive) and a server-side deadline bound what one caller can hold.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ops_proto::tls::{self, PeerStream, ServerOptions, TlsPaths};
use ops_proto::v1::agent_server::AgentServer;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;

use crate::config::{AgentConfig, LimitsConfig};
use crate::enrol::service::{EnrollService, Reload};
use crate::enrol::Enrolment;
use ops_proto::v1::enroll_server::EnrollServer;
use crate::metrics::{Limit, Stats, WarnLimiter, WARN_WINDOW};
use crate::pending::Pending;
use crate::service::AgentService;

/// Verified connections waiting for the gRPC server to pick them up.
const ACCEPTED_QUEUE: usize = 64;
/// How long in-flight calls may run after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Starting or running the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("service setup failed: {0}")]
    Service(String),
    #[error("server task panicked: {0}")]
    Panicked(String),
}

/// A running agent: its address, counters, and the handle to stop it.
pub struct RunningAgent {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
    health: tonic_health::server::HealthReporter,
    jobs: Arc<crate::jobs::JobManager>,
}

impl RunningAgent {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Marks the agent NOT_SERVING, stops accepting, lets calls drain for a grace
    /// period, then returns. Re-raises a panic of the server task.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.health.set_not_serving::<AgentServer<AgentService>>().await;
        let _ = self.shutdown.send(true);
        // Running jobs are stopped and recorded as interrupted, never silently lost.
        self.jobs.shutdown().await;
        self.join().await
    }

    /// Waits for the server task to end.
    pub async fn join(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ServeError::Panicked(e.to_string())),
        }
    }
}

/// The current TLS configuration, replaced when the certificate or CRL files change (or
/// when enrolment installs the first certificate: until then, the enrolment listener's).
struct TlsState {
    paths: TlsPaths,
    options: ServerOptions,
    files: Vec<std::path::PathBuf>,
    current: RwLock<Arc<ServerConfig>>,
    stamp: RwLock<Vec<Option<(SystemTime, u64, u64)>>>,
    enrolment: Arc<Enrolment>,
}

impl TlsState {
    fn load(cfg: &AgentConfig, warn: Arc<WarnLimiter>) -> Result<TlsState, ServeError> {
        let paths = cfg.tls_paths();
        let on_revoked: tls::RevokedHook = Arc::new(move |id: &ops_proto::identity::PeerIdentity| {
            warn.warn("revoked certificate", || {
                format!("refused revoked client certificate {} serial {} (listed in the CRL)", id.describe(), id.serial)
            });
        });
        let options = ServerOptions { crl: cfg.tls.crl.clone(), on_revoked: Some(on_revoked) };
        let files = cfg.tls_files();
        let enrolment = Arc::new(Enrolment::open(cfg, options.clone()).map_err(|e| ServeError::Service(e.to_string()))?);
        let config = if enrolment.is_enrolled() {
            tls::server_config(&paths, &options)?
        } else {
            tracing::info!(
                "not enrolled yet: serving only ops.v1.Enroll until `controller fleet enroll` installs {}",
                paths.cert.display()
            );
            enrolment.waiting_server_config().map_err(|e| ServeError::Service(e.to_string()))?
        };
        let stamp = stamps(&files);
        Ok(TlsState { paths, options, files, current: RwLock::new(config), stamp: RwLock::new(stamp), enrolment })
    }

    fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds the configuration if any file changed; a broken new file keeps the old
    /// configuration in force and is logged.
    fn reload_if_changed(&self, stats: &Stats) {
        let now = stamps(&self.files);
        let changed = self.stamp.read().map(|s| *s != now).unwrap_or(true);
        // Waiting for enrolment is not a broken set of files: nothing to load yet.
        if !changed || (!self.enrolment.is_enrolled() && !self.paths.cert.is_file()) {
            return;
        }
        if let Err(e) = self.reload(stats, now) {
            tracing::error!("certificate files changed but cannot be used, keeping the previous ones: {e}");
        }
    }

    /// Rebuilds the configuration from the files now (after enrolment installed them).
    fn reload_now(&self, stats: &Stats) -> Result<(), tls::TlsError> {
        self.reload(stats, stamps(&self.files))
    }

    fn reload(&self, stats: &Stats, now: Vec<Option<(SystemTime, u64, u64)>>) -> Result<(), tls::TlsError> {
        match tls::server_config(&self.paths, &self.options) {
            Ok(cfg) => {
                if let Ok(mut g) = self.current.write() {
                    *g = cfg;
                }
                if let Ok(mut s) = self.stamp.write() {
                    *s = now;
                }
                stats.tls_reloads.fetch_add(1, Ordering::Relaxed);
                match &self.options.crl {
                    Some(crl) => tracing::info!("reloaded TLS certificates from {} and the CRL {}", self.paths.cert.display(), crl.display()),
                    None => tracing::info!("reloaded TLS certificates from {}", self.paths.cert.display()),
                }
                self.enrolment.set_enrolled();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Modification time, size and inode of each file: a CRL replaced by a rename within the
/// same second still differs by inode.
fn stamps(files: &[std::path::PathBuf]) -> Vec<Option<(SystemTime, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len(), m.ino()))))
        .collect()
}

/// Binds, starts serving in the background and returns at once.
pub async fn start(cfg: AgentConfig) -> Result<RunningAgent, ServeError> {
    cfg.validate().map_err(ServeError::Config)?;
    let addr = cfg.listen_addr().map_err(ServeError::Config)?;
    let stats = Arc::new(Stats::default());
    let warn = Arc::new(WarnLimiter::new(cfg.limits.warnings_per_minute, WARN_WINDOW, stats.metrics.clone()));
    let tls_state = Arc::new(TlsState::load(&cfg, warn.clone())?);
    let enrolment = tls_state.enrolment.clone();
    let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let service = AgentService::new(&cfg, stats.clone(), shutdown_rx.clone())
        .await
        .map_err(ServeError::Service)?;
    let jobs = service.jobs();
    let (health, health_service) = tonic_health::server::health_reporter();
    if enrolment.is_enrolled() {
        health.set_serving::<AgentServer<AgentService>>().await;
    } else {
        health.set_not_serving::<AgentServer<AgentService>>().await;
    }
    health.set_serving::<EnrollServer<EnrollService>>().await;
    let reload: Reload = {
        let (tls_state, stats, health) = (tls_state.clone(), stats.clone(), health.clone());
        Arc::new(move || {
            tls_state.reload_now(&stats).map_err(|e| e.to_string())?;
            let health = health.clone();
            tokio::spawn(async move { health.set_serving::<AgentServer<AgentService>>().await });
            Ok(())
        })
    };
    let enroll = EnrollService::new(enrolment.clone(), jobs.clone(), reload);
    let gate = enrolment.clone();
    let agent_service = AgentServer::with_interceptor(service, move |req: tonic::Request<()>| {
        if gate.is_enrolled() {
            Ok(req)
        } else {
            Err(tonic::Status::failed_precondition(
                "this agent is not enrolled yet: it serves only ops.v1.Enroll until `controller fleet enroll` gives it a certificate",
            ))
        }
    });

    let (conn_tx, conn_rx) = mpsc::channel::<Result<PeerStream, std::io::Error>>(ACCEPTED_QUEUE);
    let handshakes = Handshakes { tls: tls_state.clone(), limits: cfg.limits.clone(), stats: stats.clone(), warn };
    tokio::spawn(accept_loop(listener, handshakes, conn_tx, shutdown_rx.clone()));
    let reload_every = Duration::from_secs(cfg.tls.reload_check_seconds);
    tokio::spawn(reload_loop(tls_state, reload_every, stats.clone(), health.clone(), shutdown_rx.clone()));

    let limits = cfg.limits.clone();
    let mut drain_rx = shutdown_rx.clone();
    let task = tokio::spawn(async move {
        let server = limited_server(&limits)
            .add_service(health_service)
            .add_service(agent_service)
            .add_service(EnrollServer::new(enroll))
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), wait_for(shutdown_rx));
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => return r.map_err(ServeError::from),
            _ = wait_for(drain_rx.clone()) => {}
        }
        let _ = drain_rx.borrow_and_update();
        match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
            Ok(r) => r.map_err(ServeError::from),
            Err(_) => {
                tracing::warn!("calls still running {} s after shutdown began; closing them", SHUTDOWN_GRACE.as_secs());
                Ok(())
            }
        }
    });
    tracing::info!("agent listening on {addr}");
    Ok(RunningAgent { addr, stats, shutdown: shutdown_tx, task, health, jobs })
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    // An Err means the sender is gone: treat it as shutdown too.
    let _ = rx.wait_for(|v| *v).await;
}

/// The server builder with the post-authentication limits of `[limits]`. The unary
/// deadline covers a streaming call only until its stream is returned.
fn limited_server(l: &LimitsConfig) -> Server {
    Server::builder()
        .max_concurrent_streams(l.max_concurrent_streams_per_connection)
        .initial_stream_window_size(l.stream_window_bytes)
        .initial_connection_window_size(l.connection_window_bytes)
        .http2_adaptive_window(Some(false))
        .http2_keepalive_interval(Some(Duration::from_millis(l.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(l.keepalive_timeout_ms)))
        .timeout(Duration::from_millis(l.unary_timeout_ms))
}

/// What every handshake task needs.
#[derive(Clone)]
struct Handshakes {
    tls: Arc<TlsState>,
    limits: LimitsConfig,
    stats: Arc<Stats>,
    warn: Arc<WarnLimiter>,
}

async fn accept_loop(
    listener: TcpListener,
    hs: Handshakes,
    conns: mpsc::Sender<Result<PeerStream, std::io::Error>>,
    shutdown: watch::Receiver<bool>,
) {
    let pending = Pending::new(hs.limits.max_pending_handshakes, hs.limits.max_pending_handshakes_per_source);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    hs.warn.warn("accept failed", || format!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = wait_for(shutdown.clone()) => return,
        };
        let _ = tcp.set_nodelay(true);
        let (slot, evicted, made_room) = pending.admit(peer.ip());
        let m = &hs.stats.metrics;
        if let Some(limit) = made_room {
            m.hit(limit);
            m.handshakes_evicted.fetch_add(1, Ordering::Relaxed);
        }
        m.handshakes_pending.store(pending.len() as u64, Ordering::Relaxed);
        tokio::spawn(handshake(tcp, peer, hs.clone(), slot, evicted, pending.clone(), conns.clone()));
    }
}

/// One TLS handshake: ends when it completes, fails, overruns its deadline, or is
/// evicted from the pending table to make room for a newer connection.
async fn handshake(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    hs: Handshakes,
    slot: crate::pending::Slot,
    evicted: crate::pending::Evicted,
    pending: Pending,
    conns: mpsc::Sender<Result<PeerStream, std::io::Error>>,
) {
    let m = hs.stats.metrics.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(hs.tls.current());
    let deadline = hs.limits.handshake_timeout();
    let outcome = tokio::select! {
        r = tokio::time::timeout(deadline, acceptor.accept(tcp)) => Some(r),
        why = evicted => {
            if let Ok(limit) = why {
                hs.warn.warn("handshake evicted", || {
                    format!("closed pending TLS handshake from {peer}: {} is full", limit.key())
                });
            }
            None
        }
    };
    drop(slot);
    m.handshakes_pending.store(pending.len() as u64, Ordering::Relaxed);
    match outcome {
        None => {}
        Some(Ok(Ok(stream))) => {
            let stream = PeerStream::new(stream);
            if stream.info().identity.is_none() {
                hs.warn.warn("refused handshake", || {
                    format!("refused connection from {peer}: client certificate unreadable")
                });
                hs.stats.refused_handshakes.fetch_add(1, Ordering::Relaxed);
                m.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let _ = conns.send(Ok(stream)).await;
        }
        Some(Ok(Err(e))) => {
            hs.stats.refused_handshakes.fetch_add(1, Ordering::Relaxed);
            m.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            if is_revoked(&e) {
                // The verifier has named the certificate; this line adds where it came from.
                hs.warn.warn("revoked certificate", || format!("refused TLS connection from {peer}: client certificate revoked"));
            } else {
                hs.warn.warn("refused handshake", || format!("refused TLS connection from {peer}: {e}"));
            }
        }
        Some(Err(_)) => {
            hs.stats.refused_handshakes.fetch_add(1, Ordering::Relaxed);
            m.handshakes_timed_out.fetch_add(1, Ordering::Relaxed);
            m.hit(Limit::HandshakeTimeout);
            hs.warn.warn("handshake timed out", || {
                format!("TLS handshake from {peer} did not finish within {} ms ({})", deadline.as_millis(), Limit::HandshakeTimeout.key())
            });
        }
    }
}

/// Whether a failed handshake was the CRL's doing.
fn is_revoked(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked))
    )
}

async fn reload_loop(
    tls_state: Arc<TlsState>,
    every: Duration,
    stats: Arc<Stats>,
    health: tonic_health::server::HealthReporter,
    shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let was = tls_state.enrolment.is_enrolled();
                tls_state.reload_if_changed(&stats);
                if !was && tls_state.enrolment.is_enrolled() {
                    health.set_serving::<AgentServer<AgentService>>().await;
                }
            }
            _ = wait_for(shutdown.clone()) => return,
        }
    }
}
