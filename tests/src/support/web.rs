//! Stand-ins for a host's web application in runbook tests: a loopback HTTP server that
//! answers every request with a fixed status, and a loopback HTTPS server presenting a
//! given certificate (the certificate-expiry checks read it). Real sockets, real TLS;
//! stopped when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use ops_proto::rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running test web server; aborted when dropped.
pub struct WebServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl WebServer {
    /// http://127.0.0.1:PORT/
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
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

/// Answers every HTTP request on 127.0.0.1 with `status`.
pub async fn http(status: u16) -> WebServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response(status).as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    WebServer { addr, task }
}

/// Serves TLS on 127.0.0.1 with the certificate and key in these PEM files (no client
/// certificate asked), answering 200 to whatever comes.
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
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = [0u8; 2048];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(response(200).as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    WebServer { addr, task }
}
