//! Stand-ins for a host's web application in runbook tests: a loopback HTTP server that
//! answers every request with a status the test can flip while it runs (an application
//! that goes down, or comes back, mid-runbook), and a loopback HTTPS server presenting a
//! given certificate (the certificate-expiry checks read it). Real sockets, real TLS;
//! stopped when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use ops_proto::rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running test web server; aborted when dropped.
pub struct WebServer {
    pub addr: SocketAddr,
    /// The status every response carries from now on; each connection reads it when its
    /// request arrives.
    status: Arc<AtomicU16>,
    task: JoinHandle<()>,
}

impl WebServer {
    /// http://127.0.0.1:PORT/
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Answers every request that arrives from now on with `status`.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// The status the server answers with now.
    pub fn status(&self) -> u16 {
        self.status.load(Ordering::SeqCst)
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn response(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
}

/// Answers every HTTP request on 127.0.0.1 with `status` until
/// [`set_status`](WebServer::set_status) says otherwise.
pub async fn http(status: u16) -> WebServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let status = Arc::new(AtomicU16::new(status));
    let current = status.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let current = current.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let status = current.load(Ordering::SeqCst);
                let _ = s.write_all(response(status).as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    WebServer { addr, status, task }
}

/// Serves TLS on 127.0.0.1 with the certificate and key in these PEM files (no client
/// certificate asked), answering 200 to whatever comes until
/// [`set_status`](WebServer::set_status) says otherwise.
pub async fn https(cert: &Path, key: &Path) -> WebServer {
    let certs = ops_proto::tls::load_certs(cert, "certificate").expect("cert");
    let key = ops_proto::tls::load_key(key).expect("key");
    let config = ServerConfig::builder_with_provider(Arc::new(ops_proto::rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let status = Arc::new(AtomicU16::new(200));
    let current = status.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let current = current.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = [0u8; 2048];
                    let _ = tls.read(&mut buf).await;
                    let status = current.load(Ordering::SeqCst);
                    let _ = tls.write_all(response(status).as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    WebServer { addr, status, task }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use controller::runbooks::probe::{self, parse_url};

    const T: Duration = Duration::from_secs(10);

    async fn http_status(url: &str) -> u16 {
        // Trust anchors are for https URLs only.
        let roots = Err("plain http".to_string());
        probe::http_status(&parse_url(url).unwrap(), &roots, T).await.unwrap()
    }

    /// Through the controller's own probe (the one the runbooks' application checks use):
    /// a server that goes down and comes back is seen doing so, without a restart.
    #[tokio::test]
    async fn a_flipped_status_is_what_the_next_request_sees() {
        tokio::time::timeout(T, async {
            let server = super::http(200).await;
            assert_eq!(http_status(&server.url()).await, 200);
            server.set_status(503);
            assert_eq!(server.status(), 503);
            assert_eq!(http_status(&server.url()).await, 503);
            assert_eq!(http_status(&server.url()).await, 503, "it stays flipped");
            server.set_status(200);
            assert_eq!(http_status(&server.url()).await, 200);
        })
        .await
        .expect("test timed out");
    }
}
