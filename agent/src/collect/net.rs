//! TCP connection counts by state and listening sockets (TCP LISTEN, unconnected UDP) from
//! /proc/net/{tcp,tcp6,udp,udp6}, what `netstat -tan` and `netstat -tuln` showed. The owner of
//! a listening socket is found by matching its inode against the /proc/<pid>/fd links.
//!
//! The socket tables are streamed line by line: a host with 100 000 connections costs no
//! more memory than one with ten. Only the agent's network namespace is visible; fds the
//! agent may not read leave the owner unknown (pid 0), never an error.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ops_proto::v1::{ConnectionStateCount, ListeningSocket};

/// TCP states by their kernel number (1-based), named as netstat prints them.
const TCP_STATES: [&str; 12] = [
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];
const TCP_LISTEN: u8 = 0x0A;
/// A UDP socket that is bound but not connected reports TCP_CLOSE.
const UDP_UNCONNECTED: u8 = 0x07;

/// The socket tables: protocol name, path, whether it is TCP.
const TABLES: [(&str, &str, bool); 4] = [
    ("tcp", "/proc/net/tcp", true),
    ("tcp6", "/proc/net/tcp6", true),
    ("udp", "/proc/net/udp", false),
    ("udp6", "/proc/net/udp6", false),
];

/// The fields of one socket table line the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketLine {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote_port: u16,
    pub state: u8,
    pub inode: u64,
}

/// Parses one line of /proc/net/{tcp,tcp6,udp,udp6}:
/// `0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000 107 0 10260 ...`.
/// The header line gives `None`.
pub(crate) fn parse_socket_line(line: &str) -> Option<SocketLine> {
    let mut fields = line.split_ascii_whitespace().skip(1);
    let (local, local_port) = parse_endpoint(fields.next()?)?;
    let (_, remote_port) = parse_endpoint(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    let inode = fields.nth(5)?.parse().ok()?;
    Some(SocketLine {
        local,
        local_port,
        remote_port,
        state,
        inode,
    })
}

/// "0100007F:0CEA": the address as the kernel's in-memory words in hex, the port in hex.
fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (address, port) = text.split_once(':')?;
    Some((
        parse_hex_address(address)?,
        u16::from_str_radix(port, 16).ok()?,
    ))
}

/// The kernel prints each 32-bit word of the address in native byte order.
pub(crate) fn parse_hex_address(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let digits = hex.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(digits, 16).ok()?.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

/// The inode of an fd link target such as "socket:[10260]".
pub(crate) fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Counts TCP sockets by state, in kernel state order; states with no socket are left out.
#[derive(Debug, Default)]
pub(crate) struct StateCounts([u32; TCP_STATES.len()]);

impl StateCounts {
    pub(crate) fn add(&mut self, state: u8) {
        if let Some(count) = self.0.get_mut(usize::from(state).wrapping_sub(1)) {
            *count = count.saturating_add(1);
        }
    }

    pub(crate) fn to_proto(&self) -> Vec<ConnectionStateCount> {
        TCP_STATES
            .iter()
            .zip(self.0)
            .filter(|(_, count)| *count > 0)
            .map(|(state, count)| ConnectionStateCount {
                state: (*state).to_owned(),
                count,
            })
            .collect()
    }
}

/// A listening socket before its owner is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listener {
    pub protocol: &'static str,
    pub address: IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// Folds one socket line into the counts and the listeners.
pub(crate) fn classify(
    protocol: &'static str,
    is_tcp: bool,
    s: &SocketLine,
    counts: &mut StateCounts,
    listeners: &mut Vec<Listener>,
) {
    let listening = if is_tcp {
        counts.add(s.state);
        s.state == TCP_LISTEN
    } else {
        s.state == UDP_UNCONNECTED && s.remote_port == 0
    };
    if listening {
        listeners.push(Listener {
            protocol,
            address: s.local,
            port: s.local_port,
            inode: s.inode,
        });
    }
}

/// Connection counts and listening sockets with their owners. `pids` in ascending order:
/// a socket shared by a server and its workers is reported as the lowest pid's (the
/// parent's).
pub(crate) fn collect(
    pids: impl Iterator<Item = i32>,
) -> (Vec<ConnectionStateCount>, Vec<ListeningSocket>) {
    let mut counts = StateCounts::default();
    let mut listeners = Vec::new();
    let mut line = String::new();
    for (protocol, path, is_tcp) in TABLES {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) => {
                tracing::debug!(path, %error, "socket table unavailable");
                continue;
            }
        };
        let mut reader = BufReader::with_capacity(16 * 1024, file);
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if let Some(s) = parse_socket_line(&line) {
                        classify(protocol, is_tcp, &s, &mut counts, &mut listeners);
                    }
                }
                Err(error) => {
                    tracing::debug!(path, %error, "socket table read failed");
                    break;
                }
            }
        }
    }

    let owners = find_owners(pids, listeners.iter().map(|l| l.inode));
    let mut names: Vec<(i32, String)> = Vec::new();
    let mut listening: Vec<ListeningSocket> = listeners
        .iter()
        .map(|l| {
            let pid = owners.get(&l.inode).copied().unwrap_or(0);
            let process = match names.iter().find(|(p, _)| *p == pid) {
                Some((_, name)) => name.clone(),
                None if pid == 0 => String::new(),
                None => {
                    let name = super::processes::name_of(pid);
                    names.push((pid, name.clone()));
                    name
                }
            };
            ListeningSocket {
                protocol: l.protocol.to_owned(),
                address: l.address.to_string(),
                port: u32::from(l.port),
                pid,
                process,
            }
        })
        .collect();
    sort_and_dedup(&mut listening);
    (counts.to_proto(), listening)
}

/// Orders by protocol and port; SO_REUSEPORT sockets of one process on one address and
/// port are reported once.
pub(crate) fn sort_and_dedup(listening: &mut Vec<ListeningSocket>) {
    listening.sort_by(|a, b| {
        (&a.protocol, a.port, &a.address, a.pid).cmp(&(&b.protocol, b.port, &b.address, b.pid))
    });
    listening.dedup();
}

/// Maps each socket inode to the first pid (in `pids` order) holding an fd on it. Stops
/// as soon as every inode has an owner; unreadable fd directories are skipped.
fn find_owners(
    pids: impl Iterator<Item = i32>,
    inodes: impl Iterator<Item = u64>,
) -> HashMap<u64, i32> {
    let mut owners: HashMap<u64, i32> = inodes.filter(|i| *i != 0).map(|i| (i, 0)).collect();
    let mut missing = owners.len();
    for pid in pids {
        if missing == 0 {
            break;
        }
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in dir.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let Some(inode) = target.to_str().and_then(socket_inode) else {
                continue;
            };
            if let Some(owner) = owners.get_mut(&inode).filter(|o| **o == 0) {
                *owner = pid;
                missing -= 1;
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 10260 1 00000000acff36b8 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4914 1 0000000013c66dc5 100 0 0 10 0
   2: 0F02000A:0016 0202000A:C7A2 01 00000000:00000000 02:0009A2D1 00000000     0        0 51234 4 0000000088c5aa11 20 4 31 10 -1
   3: 0F02000A:0016 0302000A:C7A4 01 00000000:00000000 02:0009A2D1 00000000     0        0 51240 4 0000000088c5aa12 20 4 31 10 -1
   4: 0F02000A:A2F0 2A00A8C0:01BB 06 00000000:00000000 03:00000F2E 00000000     0        0 0 3 0000000000000000
";
    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1111 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 6610 1 000000004d6dab03 100 0 0 10 0
   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7001 1 000000004d6dab04 100 0 0 10 0
";
    const UDP: &str = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  120: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 9001 2 0000000055aa55aa 0
  121: 0F02000A:9C40 08080808:0035 01 00000000:00000000 00:00000000 00000000  1000        0 9002 2 0000000055aa55ab 0
";

    #[test]
    fn socket_line_fields_are_decoded() {
        let s = parse_socket_line(TCP.lines().nth(1).unwrap()).unwrap();
        assert_eq!(s.local_port, 0x0CEA);
        assert_eq!(s.remote_port, 0);
        assert_eq!(s.state, TCP_LISTEN);
        assert_eq!(s.inode, 10260);
        assert_eq!(parse_socket_line(TCP.lines().next().unwrap()), None);
        assert_eq!(parse_socket_line("   0: 0100007F:0CEA"), None);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn addresses_are_decoded_from_native_order_words() {
        assert_eq!(
            parse_hex_address("0100007F").unwrap().to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            parse_hex_address("0F02000A").unwrap().to_string(),
            "10.0.2.15"
        );
        assert_eq!(
            parse_hex_address("00000000000000000000000001000000")
                .unwrap()
                .to_string(),
            "::1"
        );
        assert_eq!(
            parse_hex_address("0000000000000000FFFF00000100007F")
                .unwrap()
                .to_string(),
            "::ffff:127.0.0.1"
        );
        assert_eq!(
            parse_hex_address("B80D0120000000000000000001000000")
                .unwrap()
                .to_string(),
            "2001:db8::1"
        );
        assert_eq!(parse_hex_address("0100"), None);
        assert_eq!(parse_hex_address("zz00007F"), None);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn tables_give_state_counts_and_listeners() {
        let mut counts = StateCounts::default();
        let mut listeners = Vec::new();
        for (protocol, text, is_tcp) in [
            ("tcp", TCP, true),
            ("tcp6", TCP6, true),
            ("udp", UDP, false),
        ] {
            for s in text.lines().filter_map(parse_socket_line) {
                classify(protocol, is_tcp, &s, &mut counts, &mut listeners);
            }
        }
        let counts: Vec<(String, u32)> = counts
            .to_proto()
            .into_iter()
            .map(|c| (c.state, c.count))
            .collect();
        assert_eq!(
            counts,
            [
                ("ESTABLISHED".to_owned(), 2),
                ("TIME_WAIT".to_owned(), 1),
                ("LISTEN".to_owned(), 4),
            ]
        );
        let listeners: Vec<String> = listeners
            .iter()
            .map(|l| format!("{} {}:{} #{}", l.protocol, l.address, l.port, l.inode))
            .collect();
        assert_eq!(
            listeners,
            [
                "tcp 127.0.0.1:3306 #10260",
                "tcp 0.0.0.0:22 #4914",
                "tcp6 ::1:4369 #6610",
                "tcp6 :::80 #7001",
                "udp 127.0.0.53:53 #9001",
            ]
        );
    }

    #[test]
    fn socket_inode_comes_from_the_fd_link() {
        assert_eq!(socket_inode("socket:[10260]"), Some(10260));
        assert_eq!(socket_inode("pipe:[10260]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[]"), None);
    }

    #[test]
    fn reuseport_duplicates_are_reported_once() {
        let socket = |port, pid| ListeningSocket {
            protocol: "tcp".into(),
            address: "0.0.0.0".into(),
            port,
            pid,
            process: "nginx".into(),
        };
        let mut listening = vec![
            socket(443, 10),
            socket(80, 10),
            socket(443, 10),
            socket(443, 11),
        ];
        sort_and_dedup(&mut listening);
        let seen: Vec<(u32, i32)> = listening.iter().map(|l| (l.port, l.pid)).collect();
        assert_eq!(seen, [(80, 10), (443, 10), (443, 11)]);
    }
}
