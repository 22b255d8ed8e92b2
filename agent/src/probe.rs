//! Probing a service this host depends on (`ProbeTarget`): a TCP connection to a target
//! named in the agent's own config and, for MySQL, a read of the server's greeting, so that
//! "port closed", "port open but no MySQL answer" and "MySQL answers" are told apart (the
//! seed's `telnet db 3306`).
//!
//! It must never connect anywhere but a configured target (the caller names one, it never
//! gives an address), never send anything (a greeting is what the server says first), and
//! never read more than GREETING_MAX bytes or wait past its deadlines.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Largest greeting read: MySQL's is well under 200 bytes.
const GREETING_MAX: usize = 1024;
/// TCP connect deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the server has to greet after the connection.
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(3);

/// What a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A connection is all that is checked.
    Tcp,
    /// The server must greet with a MySQL handshake (or a MySQL error packet).
    Mysql,
}

/// `[[probe_targets]]` in the agent's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeTarget {
    pub name: String,
    /// host:port.
    pub address: String,
    pub protocol: Protocol,
}

impl ProbeTarget {
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("probe_targets: name {:?}: use letters, digits, '-', '_' and '.'", self.name));
        }
        let port_ok = self.address.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(format!("probe_targets {:?}: address {:?} must be host:port", self.name, self.address));
        }
        Ok(())
    }
}

/// What a probe found (the wire's `ProbeTargetResult`, without the name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub outcome: &'static str,
    pub detail: String,
    pub connect_ms: u32,
}

/// Probes one configured target.
pub async fn probe(t: &ProbeTarget) -> Finding {
    let started = Instant::now();
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&t.address)).await {
        Err(_) => return Finding { outcome: "timed-out", detail: format!("no TCP answer within {} ms", CONNECT_TIMEOUT.as_millis()), connect_ms: 0 },
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Finding { outcome: "refused", detail: format!("connection refused: {e}"), connect_ms: 0 }
        }
        Ok(Err(e)) => return Finding { outcome: "unreachable", detail: e.to_string(), connect_ms: 0 },
        Ok(Ok(s)) => s,
    };
    let connect_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
    if t.protocol == Protocol::Tcp {
        return Finding { outcome: "answers", detail: "TCP connection accepted".into(), connect_ms };
    }
    let mut buf = Vec::with_capacity(256);
    let read = tokio::time::timeout(GREETING_TIMEOUT, read_packet(tcp, &mut buf)).await;
    let (outcome, detail) = match read {
        Err(_) if buf.is_empty() => ("open-no-greeting", format!("connected, but the server said nothing within {} ms", GREETING_TIMEOUT.as_millis())),
        Err(_) | Ok(Err(_)) | Ok(Ok(())) => match parse_greeting(&buf) {
            Ok(g) => ("answers", g),
            Err(why) => ("open-no-greeting", why),
        },
    };
    Finding { outcome, detail, connect_ms }
}

/// Reads one MySQL packet (4-byte header, then its payload) or up to GREETING_MAX bytes.
async fn read_packet(mut tcp: TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 256];
    loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n.min(GREETING_MAX - buf.len())]);
        if buf.len() >= GREETING_MAX {
            return Ok(());
        }
        if buf.len() >= 4 {
            let len = usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16;
            if buf.len() >= 4 + len {
                return Ok(());
            }
        }
    }
}

/// A MySQL server greeting: protocol 10 and the server version, or an error packet (the
/// server answered, and refused this host: still a MySQL answer). Pure.
pub fn parse_greeting(buf: &[u8]) -> Result<String, String> {
    if buf.len() < 5 {
        return Err(format!("connected, but {} byte(s) are not a MySQL greeting", buf.len()));
    }
    let len = usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16;
    let payload = &buf[4..buf.len().min(4 + len)];
    match payload.first() {
        Some(10) => {
            let version: Vec<u8> = payload[1..].iter().take_while(|b| **b != 0).copied().take(64).collect();
            if version.is_empty() || !version.iter().all(|b| b.is_ascii_graphic()) {
                return Err("connected, but the greeting names no server version".into());
            }
            Ok(format!("MySQL protocol 10, server {}", String::from_utf8_lossy(&version)))
        }
        Some(0xff) if payload.len() >= 3 => {
            let code = u16::from(payload[1]) | u16::from(payload[2]) << 8;
            let text: String = String::from_utf8_lossy(&payload[3..]).chars().filter(|c| !c.is_control()).take(200).collect();
            Ok(format!("MySQL answered with error {code}: {}", text.trim_start_matches('#')))
        }
        _ => Err("connected, but what the server sent is not a MySQL greeting".into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn packet(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![payload.len() as u8, 0, 0, 0];
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn a_greeting_names_the_server_and_an_error_packet_is_still_mysql() {
        let mut hello = vec![10u8];
        hello.extend_from_slice(b"10.11.19-MariaDB\0");
        hello.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(parse_greeting(&packet(&hello)).unwrap(), "MySQL protocol 10, server 10.11.19-MariaDB");
        let mut err = vec![0xff, 0x6a, 0x04];
        err.extend_from_slice(b"Host '10.0.0.5' is not allowed to connect");
        assert!(parse_greeting(&packet(&err)).unwrap().contains("error 1130: Host '10.0.0.5'"));
        assert!(parse_greeting(b"SSH-2.0-OpenSSH_9.2\r\n").is_err());
        assert!(parse_greeting(b"").is_err());
    }

    #[test]
    fn a_target_must_be_host_and_port() {
        let t = |a: &str| ProbeTarget { name: "db".into(), address: a.into(), protocol: Protocol::Mysql };
        assert!(t("db.internal:3306").validate().is_ok());
        assert!(t("db.internal").validate().is_err());
        assert!(t(":3306").validate().is_err());
        assert!(t("db:0").validate().is_err());
    }

    #[tokio::test]
    async fn a_listener_that_never_greets_is_open_but_not_mysql() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(s);
        });
        let f = probe(&ProbeTarget { name: "db".into(), address: addr, protocol: Protocol::Mysql }).await;
        assert_eq!(f.outcome, "open-no-greeting", "{f:?}");
        hold.abort();
    }
}
