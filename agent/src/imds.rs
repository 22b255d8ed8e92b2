//! The instance metadata service (IMDSv2: a session token, then the answers): the EC2
//! instance id, asked once at start, and the identity an un-enrolled agent proves itself
//! with (the signed instance-identity document and the addresses its CSR names). Every
//! lookup has a short deadline: off EC2 nothing answers and the agent must say so rather
//! than hang. Only plain HTTP to the configured address; responses are size-capped.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest metadata response read; an instance id is 19 characters.
const MAX_RESPONSE: usize = 16 * 1024;

/// Asks the metadata service at `base_url` (http://host[:port]) for the instance id.
pub async fn instance_id(base_url: &str, timeout: Duration) -> Result<String, String> {
    match tokio::time::timeout(timeout, lookup(base_url)).await {
        Ok(r) => r,
        Err(_) => Err(format!("instance metadata service at {base_url} did not answer within {} ms", timeout.as_millis())),
    }
}

async fn lookup(base_url: &str) -> Result<String, String> {
    let session = Session::open(base_url).await?;
    checked_instance_id(session.get("meta-data/instance-id").await?)
}

fn checked_instance_id(id: String) -> Result<String, String> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("instance metadata service returned an unexpected instance id {id:?}"));
    }
    Ok(id)
}

/// What an un-enrolled agent proves itself with and names in its CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Identity {
    pub instance_id: String,
    pub private_ip: std::net::IpAddr,
    /// The private DNS name (`local-hostname`).
    pub private_dns: String,
    /// The instance-identity document exactly as served (the signature covers these bytes).
    pub document: String,
    /// Its PKCS#7 signature, base64 (`rsa2048`).
    pub pkcs7: String,
}

/// Asks the metadata service for the instance's signed identity and its addresses.
pub async fn ec2_identity(base_url: &str, timeout: Duration) -> Result<Ec2Identity, String> {
    let work = async {
        let s = Session::open(base_url).await?;
        let instance_id = checked_instance_id(s.get("meta-data/instance-id").await?)?;
        let ip = s.get("meta-data/local-ipv4").await?;
        let private_ip = ip.parse().map_err(|_| format!("instance metadata service returned an unexpected local-ipv4 {ip:?}"))?;
        let private_dns = s.get("meta-data/local-hostname").await?;
        if private_dns.is_empty() || private_dns.len() > 253 || !private_dns.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            return Err(format!("instance metadata service returned an unexpected local-hostname {private_dns:?}"));
        }
        // Served as is: the signature covers exactly these bytes.
        let document = s.get_raw("dynamic/instance-identity/document").await?;
        let pkcs7 = s.get("dynamic/instance-identity/rsa2048").await?;
        Ok(Ec2Identity { instance_id, private_ip, private_dns, document, pkcs7 })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("instance metadata service at {base_url} did not answer within {} ms", timeout.as_millis())),
    }
}

/// An IMDSv2 session: the address and a token.
struct Session {
    addr: String,
    authority: String,
    token: String,
}

impl Session {
    async fn open(base_url: &str) -> Result<Session, String> {
        let authority = base_url
            .strip_prefix("http://")
            .ok_or_else(|| format!("metadata URL {base_url:?} is not http://"))?
            .trim_end_matches('/')
            .to_string();
        let addr = if authority.contains(':') { authority.clone() } else { format!("{authority}:80") };
        let token = request(
            &addr,
            &format!("PUT /latest/api/token HTTP/1.1\r\nHost: {authority}\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .await?
        .trim()
        .to_string();
        if token.is_empty() || !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err("instance metadata service returned an unusable session token".into());
        }
        Ok(Session { addr, authority, token })
    }

    /// A metadata value, trimmed.
    async fn get(&self, path: &str) -> Result<String, String> {
        Ok(self.get_raw(path).await?.trim().to_string())
    }

    /// A metadata value exactly as served.
    async fn get_raw(&self, path: &str) -> Result<String, String> {
        let (authority, token) = (&self.authority, &self.token);
        request(
            &self.addr,
            &format!("GET /latest/{path} HTTP/1.1\r\nHost: {authority}\r\nX-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"),
        )
        .await
        .map_err(|e| format!("{e} (for /latest/{path})"))
    }
}

/// One HTTP/1.1 exchange; returns the body of a 200 response.
async fn request(addr: &str, req: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("instance metadata service at {addr} unreachable: {e}"))?;
    s.write_all(req.as_bytes()).await.map_err(|e| format!("instance metadata request failed: {e}"))?;
    let mut buf = Vec::new();
    s.take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("instance metadata response unreadable: {e}"))?;
    if buf.len() > MAX_RESPONSE {
        return Err(format!("instance metadata response is larger than {MAX_RESPONSE} bytes"));
    }
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("instance metadata response malformed")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("instance metadata service answered {status:?}"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_200_body() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\ni-0123456789abcdef0").unwrap(), "i-0123456789abcdef0");
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n{\n  \"a\" : 1\n}\n").unwrap(), "{\n  \"a\" : 1\n}\n", "bodies are kept byte for byte");
        assert!(parse_response(b"HTTP/1.1 401 Unauthorized\r\n\r\n").unwrap_err().contains("401"));
    }

    #[tokio::test]
    async fn a_silent_endpoint_times_out_quickly() {
        // A listener that accepts nothing useful: connection succeeds, no answer ever comes.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = std::time::Instant::now();
        let err = instance_id(&url, Duration::from_millis(200)).await.unwrap_err();
        assert!(err.contains("did not answer within 200 ms"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(l);
    }

    #[tokio::test]
    async fn answers_from_a_local_metadata_endpoint() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            for body in ["tok", "i-0abc"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let id = tokio::time::timeout(Duration::from_secs(5), instance_id(&url, Duration::from_secs(2))).await.unwrap();
        assert_eq!(id.unwrap(), "i-0abc");
    }
}
