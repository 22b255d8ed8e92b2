//! The application probe: one HTTP/1.1 GET of a host's app URL, answered by its status
//! code (what `curl -s -o /dev/null -w %{http_code}` was used for). URLs are parsed by
//! `url`, the exchange is hyper's HTTP/1 client over our own TCP (and rustls) stream, one
//! connection per probe, closed when the probe ends.
//!
//! It must never: follow a redirect (a 3xx is the answer, reported as such), send
//! credentials or a body, read more than the status line, the headers (`MAX_HEAD_BYTES`)
//! and `MAX_BODY_BYTES` of body, or outlive its deadline. An https URL is verified against
//! the same anchors as the certificate probe (the system store and `[runbooks]
//! tls_ca_file`); a certificate that does not verify is a failed probe, named.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Buf, Bytes};
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, ACCEPT, CONNECTION, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::{addr_of, connect, io_reason, ProbeError};

/// Most bytes of status line and headers read from a server (hyper's floor is 8 KiB);
/// a longer head is refused as not HTTP.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers accepted (hyper's default, named here for the error message).
const MAX_HEADERS: usize = 100;
/// Most bytes of body read before the connection is dropped. Reading a short answer to
/// its end spares the application a reset connection (and an error in its log) on every
/// health check; a longer or endless one is cut here.
const MAX_BODY_BYTES: usize = 8 * 1024;
/// Longest wait for that body once the status is in: a slow body never delays the answer
/// by more than this (nor past the probe's deadline).
const BODY_GRACE: Duration = Duration::from_millis(500);

/// Why a URL is not probed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    #[error("{0} (expected http://host[:port][/path] or https://...)")]
    Syntax(url::ParseError),
    #[error("scheme {0:?}: only http:// and https:// URLs are probed")]
    Scheme(String),
    #[error("a user name or password in the URL: the probe sends no credentials, remove them")]
    Credentials,
    #[error("{0} (the URL only parses when read leniently; write it out in full)")]
    Lenient(&'static str),
    #[error("the path cannot be sent as a request target: {0}")]
    Target(String),
}

/// The parts of an http(s) URL the probe needs, checked once so that the guard before
/// the probe and the probe itself see the same host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// Host as `url` normalises it: lower-case, IDNA, IPv4 in dotted form, IPv6 without
    /// brackets.
    pub host: String,
    /// The port, or the scheme's default.
    pub port: u16,
    /// Path and query, at least "/".
    pub path: String,
    target: Uri,
    host_header: HeaderValue,
}

/// Parses and checks `http://host[:port][/path]` or `https://...`. Pure.
pub fn parse_url(text: &str) -> Result<Url, ProbeError> {
    let bad = |problem: UrlProblem| ProbeError::BadUrl { url: text.to_string(), problem };
    let lenient = Cell::new(None);
    let report = |v: url::SyntaxViolation| {
        // Surrounding spaces (a tag value pasted with a newline) are harmless; anything
        // else the parser had to forgive means the URL is not what it looks like.
        if v != url::SyntaxViolation::C0SpaceIgnored && lenient.get().is_none() {
            lenient.set(Some(v.description()));
        }
    };
    let u = url::Url::options().syntax_violation_callback(Some(&report)).parse(text).map_err(|e| bad(UrlProblem::Syntax(e)))?;
    let tls = match u.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(bad(UrlProblem::Scheme(other.to_string()))),
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad(UrlProblem::Credentials));
    }
    if let Some(what) = lenient.get() {
        return Err(bad(UrlProblem::Lenient(what)));
    }
    let host = match u.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(bad(UrlProblem::Syntax(url::ParseError::EmptyHost))),
    };
    let port = u.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
    let path = u[url::Position::BeforePath..url::Position::AfterQuery].to_string();
    let target: Uri = path.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(UrlProblem::Target(e.to_string())))?;
    // `url` leaves the port out when it is the scheme's default, as a Host header should.
    let authority = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => host.clone(),
    };
    let host_header = HeaderValue::from_str(&authority).map_err(|e| bad(UrlProblem::Target(e.to_string())))?;
    Ok(Url { tls, host, port, path, target, host_header })
}

/// GETs `url` and returns the HTTP status code, redirects included (never followed).
/// Connect, TLS, request, status line and headers must all come within `timeout`; an
/// https URL must verify against `roots` (from `trust_roots`; an error there is reported
/// for https URLs only).
pub async fn http_status(url: &Url, roots: &Result<Arc<RootCertStore>, String>, timeout: Duration) -> Result<u16, ProbeError> {
    let addr = addr_of(&url.host, url.port);
    let deadline = Instant::now() + timeout;
    let tls = match (url.tls, roots) {
        (false, _) => None,
        (true, Ok(roots)) => Some(client_config(roots.clone()).map_err(|reason| ProbeError::Tls { addr: addr.clone(), reason })?),
        (true, Err(why)) => return Err(ProbeError::NotProbed { reason: why.clone() }),
    };
    let work = async {
        let tcp = connect(&addr, timeout).await?;
        match tls {
            None => get(tcp, url, &addr, deadline).await,
            Some(config) => {
                let name = ServerName::try_from(url.host.clone())
                    .map_err(|e| ProbeError::Tls { addr: addr.clone(), reason: format!("server name {:?}: {e}", url.host) })?;
                let stream = TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ProbeError::Tls { addr: addr.clone(), reason: tls_reason(&e, &url.host) })?;
                get(stream, url, &addr, deadline).await
            }
        }
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::TimedOut { addr, after: timeout }),
    }
}

/// A client that verifies as a browser or curl would: chain to `roots`, name, dates.
fn client_config(roots: Arc<RootCertStore>) -> Result<Arc<ClientConfig>, String> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Names a failed handshake for a person.
fn tls_reason(e: &std::io::Error, host: &str) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "certificate not trusted: issued by an unknown CA (not in the system trust store or [runbooks] tls_ca_file)".into()
        }
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
            format!("the certificate is not valid for {host}")
        }
        Some(other) => other.to_string(),
        None => io_reason(e),
    }
}

/// One request on a fresh HTTP/1 connection over `io`. The connection is driven inside
/// this future, never spawned: when the answer is in, or the deadline drops the future,
/// the socket goes with it.
async fn get<S>(io: S, url: &Url, addr: &str, deadline: Instant) -> Result<u16, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| exchange_error(&e, addr))?;
    let request = Request::get(url.target.clone())
        .header(HOST, url.host_header.clone())
        .header(USER_AGENT, concat!("techhealth-controller/", env!("CARGO_PKG_VERSION")))
        .header(ACCEPT, "*/*")
        .header(CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| ProbeError::Io { addr: addr.to_string(), reason: format!("request not built: {e}") })?;
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|e| exchange_error(&e, addr))?;
        let status = response.status().as_u16();
        // The status is the answer: the body is read only as a courtesy (module comment).
        let _ = tokio::time::timeout_at(deadline.min(Instant::now() + BODY_GRACE), drain(response.into_body(), MAX_BODY_BYTES)).await;
        Ok(status)
    };
    tokio::pin!(exchange);
    tokio::select! {
        biased;
        answer = &mut exchange => answer,
        // The connection ended (the server closed it, or it failed): the request learns
        // why, or already holds its answer; the connection's own error is the fallback.
        ended = conn => match (exchange.await, ended) {
            (Err(_), Err(e)) => Err(exchange_error(&e, addr)),
            (answer, _) => answer,
        },
    }
}

/// Reads and drops at most about `limit` bytes of `body` (whole frames), returning how
/// many were read. Nothing is kept, so an endless body costs no memory.
async fn drain<B>(body: B, limit: usize) -> usize
where
    B: Body + Unpin,
{
    let mut body = body;
    let mut read = 0;
    while read < limit {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.remaining()),
            Some(Err(_)) | None => break,
        }
    }
    read
}

/// Names what went wrong between the request and the status.
fn exchange_error(e: &hyper::Error, addr: &str) -> ProbeError {
    let addr = addr.to_string();
    if e.is_parse_too_large() {
        ProbeError::Protocol { addr, reason: format!("headers too large (more than {} KiB or {MAX_HEADERS} headers)", MAX_HEAD_BYTES / 1024) }
    } else if e.is_parse() || e.is_parse_status() {
        ProbeError::Protocol { addr, reason: e.to_string() }
    } else if e.is_incomplete_message() {
        ProbeError::Closed { addr }
    } else if let Some(io) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>()) {
        ProbeError::Io { addr, reason: io_reason(io) }
    } else {
        ProbeError::Io { addr, reason: e.to_string() }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Every test here is bounded: a probe that hangs fails its test instead.
    const LIMIT: Duration = Duration::from_secs(20);

    fn parts(u: &Url) -> (bool, &str, u16, &str) {
        (u.tls, u.host.as_str(), u.port, u.path.as_str())
    }

    #[test]
    fn urls_are_split_into_scheme_host_port_and_path() {
        assert_eq!(parts(&parse_url("http://203.0.113.5").unwrap()), (false, "203.0.113.5", 80, "/"));
        assert_eq!(parts(&parse_url("https://Example.ORG:8443/health?x=1").unwrap()), (true, "example.org", 8443, "/health?x=1"));
        assert_eq!(parts(&parse_url("http://[::1]:8080/").unwrap()), (false, "::1", 8080, "/"));
        assert_eq!(parts(&parse_url("https://example.org:443/a#frag").unwrap()), (true, "example.org", 443, "/a"));
        assert_eq!(parts(&parse_url("http://h/?q").unwrap()).3, "/?q");
        // The emulator guard and the probe must see the same host: numeric forms are
        // normalised before either looks at it.
        assert_eq!(parse_url("http://0x7f.1/").unwrap().host, "127.0.0.1");
    }

    #[test]
    fn the_host_header_carries_the_port_only_when_it_is_not_the_default() {
        assert_eq!(parse_url("http://example.org:80/").unwrap().host_header, "example.org");
        assert_eq!(parse_url("http://example.org:8080/").unwrap().host_header, "example.org:8080");
        assert_eq!(parse_url("https://[::1]/").unwrap().host_header, "[::1]");
        assert_eq!(parse_url("https://[::1]:8443/").unwrap().host_header, "[::1]:8443");
    }

    #[test]
    fn bad_urls_are_refused_naming_the_url_and_what_is_wrong() {
        let problem = |text: &str| match parse_url(text) {
            Err(ProbeError::BadUrl { url, problem }) => {
                assert_eq!(url, text);
                problem
            }
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(problem("ftp://x/"), UrlProblem::Scheme("ftp".into()));
        assert_eq!(problem("localhost:8080"), UrlProblem::Scheme("localhost".into()));
        assert_eq!(problem("http://:80/"), UrlProblem::Syntax(url::ParseError::EmptyHost));
        assert_eq!(problem("http://h:port/"), UrlProblem::Syntax(url::ParseError::InvalidPort));
        assert_eq!(problem("http://h:70000/"), UrlProblem::Syntax(url::ParseError::InvalidPort));
        assert_eq!(problem("example.org/health"), UrlProblem::Syntax(url::ParseError::RelativeUrlWithoutBase));
        assert_eq!(problem("http://user:pw@h/"), UrlProblem::Credentials);
        assert!(matches!(problem("http:example.org/"), UrlProblem::Lenient(_)));
        assert!(matches!(problem("http://h/a b"), UrlProblem::Lenient(_)));
        let err = parse_url("htp://web-1/").unwrap_err().to_string();
        assert_eq!(err, "bad URL \"htp://web-1/\": scheme \"htp\": only http:// and https:// URLs are probed");
        let err = parse_url("http://web-1:80a/").unwrap_err().to_string();
        assert!(err.starts_with("bad URL \"http://web-1:80a/\": invalid port number"), "{err}");
        // A pasted trailing newline is not worth refusing.
        assert_eq!(parts(&parse_url("http://h/x\n").unwrap()).3, "/x");
    }

    /// A loopback server that runs `answer` on every connection after reading the
    /// request head; returns its address.
    async fn serve<F, Fut>(answer: F) -> std::net::SocketAddr
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::spawn(answer(s));
            }
        });
        addr
    }

    async fn reply(text: &'static str) -> std::net::SocketAddr {
        serve(move |mut s| async move {
            let _ = s.write_all(text.as_bytes()).await;
            let _ = s.shutdown().await;
        })
        .await
    }

    fn no_roots() -> Result<Arc<RootCertStore>, String> {
        Err("no anchors in this test".into())
    }

    async fn status(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
        tokio::time::timeout(LIMIT, http_status(&parse_url(url).unwrap(), &no_roots(), timeout)).await.expect("probe outlived its test")
    }

    #[tokio::test]
    async fn a_200_and_a_500_are_reported_with_their_codes() {
        let ok = reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        assert_eq!(status(&format!("http://{ok}/"), Duration::from_secs(5)).await, Ok(200));
        let broken = reply("HTTP/1.0 500 Internal Server Error\r\n\r\nboom").await;
        assert_eq!(status(&format!("http://{broken}/health"), Duration::from_secs(5)).await, Ok(500));
    }

    #[tokio::test]
    async fn a_redirect_is_the_answer_and_is_not_followed() {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = hits.clone();
        let addr = serve(move |mut s| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s.write_all(b"HTTP/1.1 301 Moved Permanently\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n").await;
                let _ = s.shutdown().await;
            }
        })
        .await;
        assert_eq!(status(&format!("http://{addr}/"), Duration::from_secs(5)).await, Ok(301));
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "one request, the Location not followed");
    }

    #[tokio::test]
    async fn the_request_is_one_plain_get_naming_the_host() {
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the request head ended");
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
            let _ = tx.send(String::from_utf8_lossy(&head).to_lowercase());
        });
        assert_eq!(status(&format!("http://{addr}/health?deep=1"), Duration::from_secs(5)).await, Ok(204));
        let head = rx.await.unwrap();
        assert!(head.starts_with("get /health?deep=1 http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
        assert!(head.contains("connection: close\r\n") && !head.contains("authorization"), "{head}");
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_as_connection_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let err = status(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(err.to_string(), format!("cannot connect to 127.0.0.1:{port}: connection refused"));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_at_the_probes_deadline() {
        // Reads the request, then holds the connection open without a word.
        let addr = serve(|s| async move {
            tokio::time::sleep(LIMIT).await;
            drop(s);
        })
        .await;
        let started = std::time::Instant::now();
        let err = status(&format!("http://{addr}/"), Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(err, ProbeError::TimedOut { addr: addr.to_string(), after: Duration::from_millis(300) });
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_eq!(err.to_string(), format!("no answer from {addr} within 0.3 s"));
    }

    #[tokio::test]
    async fn garbage_and_silence_are_named_not_http() {
        let ssh = reply("SSH-2.0-OpenSSH_9.6\r\n").await;
        let err = status(&format!("http://{ssh}/"), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ProbeError::Protocol { .. }) && err.to_string().contains("not HTTP"), "{err}");
        let mute = reply("").await;
        let err = status(&format!("http://{mute}/"), Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.to_string(), format!("{mute} closed the connection without an answer"));
        // Headers without end: refused once past the head limit, not buffered for ever.
        let endless_head = serve(|mut s| async move {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
            while s.write_all(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n").await.is_ok() {}
        })
        .await;
        let err = status(&format!("http://{endless_head}/"), Duration::from_secs(5)).await.unwrap_err();
        assert!(err.to_string().contains("headers too large"), "{err}");
    }

    #[tokio::test]
    async fn an_endless_body_is_cut_and_the_status_still_counts() {
        // Writes body as fast as the socket takes it until the probe hangs up; how much it
        // got out says whether the probe kept reading.
        let (tx, rx) = tokio::sync::oneshot::channel::<usize>();
        let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
        let addr = serve(move |mut s| {
            let tx = tx.clone();
            async move {
                let mut sent = 0;
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n").await.is_ok() {
                    let chunk = [b'x'; 16 * 1024];
                    while s.write_all(&chunk).await.is_ok() {
                        sent += chunk.len();
                    }
                }
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(sent);
                }
            }
        })
        .await;
        let started = std::time::Instant::now();
        assert_eq!(status(&format!("http://{addr}/"), Duration::from_secs(10)).await, Ok(200));
        assert!(started.elapsed() < Duration::from_secs(2), "the status came after {:?}", started.elapsed());
        let sent = tokio::time::timeout(LIMIT, rx).await.expect("the probe never hung up").unwrap();
        // What fits in the kernel's socket buffers, never the endless rest.
        assert!(sent < 64 << 20, "{sent} bytes sent");
    }

    #[tokio::test]
    async fn a_slow_endless_body_does_not_delay_the_answer() {
        let addr = serve(|mut s| async move {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await;
            while s.write_all(b"1\r\nx\r\n").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let started = std::time::Instant::now();
        assert_eq!(status(&format!("http://{addr}/"), Duration::from_secs(10)).await, Ok(200));
        assert!(started.elapsed() < BODY_GRACE + Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn draining_stops_at_the_limit_however_long_the_body() {
        use futures::StreamExt;
        let frames = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let made = frames.clone();
        let endless = futures::stream::repeat_with(move || {
            made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(&[b'x'; 1000])))
        })
        .boxed();
        let read = tokio::time::timeout(LIMIT, drain(http_body_util::StreamBody::new(endless), MAX_BODY_BYTES)).await.unwrap();
        assert_eq!(read, 9000, "whole frames up to the first past {MAX_BODY_BYTES}");
        assert_eq!(frames.load(std::sync::atomic::Ordering::SeqCst), 9);
    }

    #[tokio::test]
    async fn an_https_url_is_probed_over_tls_verified_against_the_given_roots() {
        let ca = crate::pki::Ca::generate("probe test CA", None).unwrap();
        let leaf = ca.agent("site", &["127.0.0.1".parse().unwrap()], &[], None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem.cert).unwrap();
        let addr = https_server(&leaf).await;
        let url = parse_url(&format!("https://{addr}/")).unwrap();
        let trusted = super::super::trust_roots(Some(&ca_file));
        let url = &url;
        let probe = |roots| async move { tokio::time::timeout(LIMIT, http_status(url, &roots, Duration::from_secs(5))).await.unwrap() };
        assert_eq!(probe(trusted).await, Ok(200));

        // Anchors that do not include the site's CA: the probe fails, saying why.
        let other = crate::pki::Ca::generate("some other CA", None).unwrap();
        let other_file = dir.path().join("other.pem");
        std::fs::write(&other_file, &other.pem.cert).unwrap();
        let err = probe(super::super::trust_roots(Some(&other_file))).await.unwrap_err();
        assert!(err.to_string().starts_with(&format!("TLS handshake with {addr} failed: certificate not trusted: issued by an unknown CA")), "{err}");

        // No anchors at all: https is not probed, and says why.
        let err = probe(no_roots()).await.unwrap_err();
        assert_eq!(err.to_string(), "not probed: no anchors in this test");
        // ...which an http URL does not need.
        let plain = reply("HTTP/1.1 200 OK\r\n\r\n").await;
        assert_eq!(status(&format!("http://{plain}/"), Duration::from_secs(5)).await, Ok(200));
    }

    /// A loopback HTTPS server presenting `leaf` that answers 200 to one request per
    /// connection.
    async fn https_server(leaf: &crate::pki::Pem) -> std::net::SocketAddr {
        let certs = rustls_pemfile::certs(&mut leaf.cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = rustls_pemfile::private_key(&mut leaf.key.as_bytes()).unwrap().unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(s).await {
                        let mut buf = [0u8; 2048];
                        let _ = tls.read(&mut buf).await;
                        let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }
}
