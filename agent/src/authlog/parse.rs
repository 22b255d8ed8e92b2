//! Recognises the failed-login messages sshd, sudo, su and login write and extracts when,
//! who, from where and how many times. Pure: one line's bytes in, a verdict out; never
//! allocates and never fails on odd bytes (user names are kept as raw bytes, whatever
//! their encoding). Never counts a line whose syslog tag names a program outside the
//! accepted list, nor marker text outside the message position.
//!
//! Counted kinds, one per line (times N for rsyslog's `message repeated N times: [ ... ]`):
//! - `Failed password for [invalid user ]USER from IP` -> failed password;
//! - `Failed publickey for [invalid user ]USER from IP` -> failed publickey;
//! - `Invalid user USER from IP` -> invalid user;
//! - `pam_unix(SERVICE:auth): authentication failure; ... user=USER` from sudo, su, login
//!   (any accepted program but sshd, whose password failures are already counted by its
//!   own `Failed password` line) -> local authentication failure, source `rhost=` when it
//!   is an address.
//!
//! sshd logs both `Invalid user X from IP` and `Failed password for invalid user X from IP`
//! for one password attempt by an unknown user; each line counts once, under its own kind.

use std::net::{IpAddr, Ipv4Addr};

use memchr::memmem;

use super::timestamp::{parse_stamp, Stamp};

pub use crate::config::DEFAULT_AUTH_PROGRAMS as DEFAULT_PROGRAMS;

/// What a failure line records. The discriminants are stored in retained events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    FailedPassword = 0,
    InvalidUser = 1,
    FailedPublickey = 2,
    LocalAuth = 3,
}

impl Kind {
    /// The text that marks a line as a candidate, in the order the scanner searches for
    /// them; index `i` is the marker of `Kind::ALL[i]`.
    pub(crate) const MARKERS: [&'static str; 4] = [
        "Failed password",
        "Invalid user",
        "Failed publickey",
        "authentication failure;",
    ];
    pub(crate) const ALL: [Kind; 4] = [
        Kind::FailedPassword,
        Kind::InvalidUser,
        Kind::FailedPublickey,
        Kind::LocalAuth,
    ];

    pub(crate) fn from_u8(value: u8) -> Option<Kind> {
        Kind::ALL.get(usize::from(value)).copied()
    }
}

/// One failed login as written in the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Failure<'a> {
    pub stamp: Stamp,
    pub kind: Kind,
    pub user: &'a [u8],
    /// `None` for local failures (sudo, su, login) that name no remote host.
    pub source: Option<IpAddr>,
    /// How many attempts the line stands for: N for `message repeated N times`, else 1.
    pub repeat: u32,
}

/// The message of a failure without its line's timestamp (from a file, or a journal
/// entry's `MESSAGE`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Attempt<'a> {
    pub kind: Kind,
    pub user: &'a [u8],
    pub source: Option<IpAddr>,
    pub repeat: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict<'a> {
    Failure(Failure<'a>),
    /// Has a marker where an accepted program puts its message but cannot be read:
    /// counted, skipped.
    Malformed,
    /// The marker text appears elsewhere (e.g. in a sudo command line), or the line comes
    /// from a program that is not accepted: not a failure.
    NotAFailure,
}

/// The accepted program names (the syslog tag without `[pid]`, or a journal `_COMM`).
#[derive(Clone, Debug)]
pub struct Programs {
    names: Vec<Box<[u8]>>,
}

impl Programs {
    pub fn new<S: AsRef<str>>(names: &[S]) -> Programs {
        Programs {
            names: names
                .iter()
                .map(|n| n.as_ref().as_bytes().into())
                .collect(),
        }
    }

    /// The names, for a journal match (`_COMM=NAME`).
    pub(crate) fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.names.iter().map(|n| String::from_utf8_lossy(n).into_owned())
    }

    pub(crate) fn accepts(&self, program: &[u8]) -> bool {
        self.names.iter().any(|n| **n == *program)
    }
}

impl Default for Programs {
    fn default() -> Programs {
        Programs::new(&DEFAULT_PROGRAMS)
    }
}

/// sshd's own password failures are counted from `Failed password`; its PAM line for the
/// same attempt must not count again.
fn is_sshd(program: &[u8]) -> bool {
    program == b"sshd" || program == b"sshd-session"
}

/// Finds the last ` from ` of a line: user names may contain spaces and even ` from `, but
/// the source address is always the last field introduced that way.
pub(crate) struct LineParser {
    from: memmem::FinderRev<'static>,
    tag_end: memmem::Finder<'static>,
    programs: Programs,
}

impl LineParser {
    pub(crate) fn new(programs: Programs) -> LineParser {
        LineParser {
            from: memmem::FinderRev::new(b" from "),
            tag_end: memmem::Finder::new(b": "),
            programs,
        }
    }

    /// Classifies a syslog `line` (without its newline) whose marker for `kind` starts at
    /// `marker_at`: `STAMP HOST PROGRAM[PID]: MESSAGE`.
    pub(crate) fn classify<'a>(&self, line: &'a [u8], marker_at: usize, kind: Kind) -> Verdict<'a> {
        let Some((program, message_at)) = self.header(line, marker_at) else {
            // A marker at the very start of a line is a failure line that lost its header.
            return if marker_at == 0 {
                Verdict::Malformed
            } else {
                Verdict::NotAFailure
            };
        };
        if !self.programs.accepts(program) {
            return Verdict::NotAFailure;
        }
        let Some((repeat, at)) = message_start(&line[message_at..]) else {
            return Verdict::Malformed;
        };
        let message = message_at + at;
        if message > marker_at || !marker_in_place(&line[message..], marker_at - message, kind) {
            return Verdict::NotAFailure;
        }
        let Some(stamp) = parse_stamp(line) else {
            return Verdict::Malformed;
        };
        match self.attempt(program, &line[marker_at..], kind) {
            Some(Some((user, source))) => Verdict::Failure(Failure {
                stamp,
                kind,
                user,
                source,
                repeat,
            }),
            Some(None) => Verdict::NotAFailure,
            None => Verdict::Malformed,
        }
    }

    /// Classifies a journal entry's `MESSAGE` from `program` (its trusted `_COMM`).
    /// `None` when it is no failure; `Some(None)` when it looks like one but cannot be read.
    pub(crate) fn classify_message<'a>(
        &self,
        program: &[u8],
        message: &'a [u8],
        kind: Kind,
        marker_at: usize,
    ) -> Option<Option<Attempt<'a>>> {
        if !self.programs.accepts(program) {
            return None;
        }
        let (repeat, at) = match message_start(message) {
            Some(start) => start,
            None => return Some(None),
        };
        if at > marker_at || !marker_in_place(&message[at..], marker_at - at, kind) {
            return None;
        }
        match self.attempt(program, &message[marker_at..], kind) {
            Some(Some((user, source))) => Some(Some(Attempt {
                kind,
                user,
                source,
                repeat,
            })),
            Some(None) => None,
            None => Some(None),
        }
    }

    /// The program of a syslog line and where its message starts. The tag is the word
    /// before the first `: ` (timestamps and host names hold no `: `), without `[pid]`.
    fn header<'a>(&self, line: &'a [u8], marker_at: usize) -> Option<(&'a [u8], usize)> {
        let colon = self.tag_end.find(&line[..marker_at.min(line.len())])?;
        let tag_start = memchr::memrchr(b' ', &line[..colon]).map_or(0, |i| i + 1);
        let tag = &line[tag_start..colon];
        let program = memchr::memchr(b'[', tag).map_or(tag, |i| &tag[..i]);
        Some((program, colon + 2))
    }

    /// `MESSAGE` (starting at its marker) to (user, source). `None`: unreadable;
    /// `Some(None)`: a line that is not counted (sshd's own PAM line).
    #[allow(clippy::type_complexity)]
    fn attempt<'a>(
        &self,
        program: &[u8],
        message: &'a [u8],
        kind: Kind,
    ) -> Option<Option<(&'a [u8], Option<IpAddr>)>> {
        let marker_len = Kind::MARKERS[kind as usize].len();
        let after_marker = message.get(marker_len..)?;
        if kind == Kind::LocalAuth {
            if is_sshd(program) {
                return Some(None);
            }
            return local_attempt(after_marker).map(Some);
        }
        let subject = match kind {
            Kind::InvalidUser => after_marker.strip_prefix(b" ")?,
            _ => {
                let rest = after_marker.strip_prefix(b" for ")?;
                rest.strip_prefix(b"invalid user ").unwrap_or(rest)
            }
        };
        let at = self.from.rfind(subject)?;
        let (user, address) = (&subject[..at], &subject[at + b" from ".len()..]);
        let token_end = memchr::memchr(b' ', address).unwrap_or(address.len());
        // `message repeated N times: [ ... from IP]` may close right after the address.
        let token = address[..token_end]
            .strip_suffix(b"]")
            .unwrap_or(&address[..token_end]);
        Some(Some((user, Some(parse_address(token)?))))
    }
}

/// An address token, normalised: a link-local source carries its zone (`fe80::1%eth0`);
/// the address is what counts, and IPv4-mapped IPv6 is IPv4.
fn parse_address(token: &[u8]) -> Option<IpAddr> {
    let token = token.split(|b| *b == b'%').next().unwrap_or(token);
    if let Some(v4) = parse_ipv4(token) {
        return Some(IpAddr::V4(v4));
    }
    let source: IpAddr = std::str::from_utf8(token).ok()?.parse().ok()?;
    Some(source.to_canonical())
}

/// A dotted-quad IPv4 address exactly as `Ipv4Addr::from_str` accepts it (four decimal
/// octets of one to three digits, no leading zero, at most 255), without its UTF-8 check
/// and general parser: nearly every source in a log is one, and this runs once per failure
/// line. `None` for anything else, which then goes through the standard parser.
fn parse_ipv4(token: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = token.split(|b| *b == b'.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut value = 0u32;
        for &b in part {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u32::from(b - b'0');
        }
        *octet = u8::try_from(value).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// `pam_unix`'s ` logname=A uid=1 euid=0 tty=T ruser=R rhost=H  user=U`: the user is
/// required, the source is `rhost` when it is an address (local logins have none).
fn local_attempt(fields: &[u8]) -> Option<(&[u8], Option<IpAddr>)> {
    let value = |key: &[u8]| -> Option<&[u8]> {
        let at = memmem::find_iter(fields, key)
            .find(|&i| i > 0 && fields[i - 1] == b' ')?;
        let rest = &fields[at + key.len()..];
        let rest = rest.strip_suffix(b"]").unwrap_or(rest);
        Some(&rest[..memchr::memchr(b' ', rest).unwrap_or(rest.len())])
    };
    let user = value(b"user=")?;
    if user.is_empty() {
        return None;
    }
    let source = value(b"rhost=").and_then(parse_address);
    Some((user, source))
}

/// Whether a marker `at` bytes into `message` is where its kind puts it: at the start, or
/// for PAM's line after its `pam_unix(SERVICE:auth): ` prefix.
fn marker_in_place(message: &[u8], at: usize, kind: Kind) -> bool {
    if at == 0 {
        return true;
    }
    let prefix = &message[..at];
    kind == Kind::LocalAuth
        && prefix.starts_with(b"pam_unix(")
        && prefix.ends_with(b"): ")
        && !prefix[..prefix.len() - 3].contains(&b')')
}

/// Where a failure marker may start in a message, and how many attempts it stands for:
/// at the start (once), or inside rsyslog's `message repeated N times: [ ` (N times).
/// `None` when the repeat prefix is there but its count cannot be read.
fn message_start(message: &[u8]) -> Option<(u32, usize)> {
    let Some(rest) = message.strip_prefix(b"message repeated ") else {
        return Some((1, 0));
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let count: u32 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let after = rest[digits..].strip_prefix(b" times: [ ")?;
    if count == 0 {
        return None;
    }
    Some((count, message.len() - after.len()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn classify(line: &[u8]) -> Verdict<'_> {
        let parser = LineParser::new(Programs::default());
        for (kind, marker) in Kind::ALL.into_iter().zip(Kind::MARKERS) {
            if let Some(at) = memmem::find(line, marker.as_bytes()) {
                return parser.classify(line, at, kind);
            }
        }
        panic!("no marker in {:?}", String::from_utf8_lossy(line));
    }

    fn failure(line: &[u8]) -> (Kind, Vec<u8>, String) {
        match classify(line) {
            Verdict::Failure(f) => (
                f.kind,
                f.user.to_vec(),
                f.source.map(|s| s.to_string()).unwrap_or_default(),
            ),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(line)),
        }
    }

    #[test]
    fn the_ipv4_fast_path_accepts_exactly_what_the_standard_parser_accepts() {
        for token in [
            "203.0.113.5", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3",
            "1.2.3.4.5", "1..3.4", "1.2.3.4 ", "+1.2.3.4", "1.2.3.0x1", "1234.1.1.1", "",
            "::ffff:1.2.3.4", "1.2.3.4]", "100.200.30.040",
        ] {
            assert_eq!(
                parse_ipv4(token.as_bytes()),
                token.parse::<Ipv4Addr>().ok(),
                "{token:?}"
            );
        }
    }

    #[test]
    fn failed_password_for_a_known_user_is_failed_password() {
        let line = b"Nov 30 06:39:17 web-1 sshd[1234]: Failed password for root from 203.0.113.5 port 52211 ssh2";
        assert_eq!(
            failure(line),
            (Kind::FailedPassword, b"root".to_vec(), "203.0.113.5".into())
        );
    }

    #[test]
    fn failed_password_for_an_invalid_user_is_failed_password_for_that_user() {
        let line = b"2026-11-30T06:39:17.123456+00:00 web-1 sshd[1234]: Failed password for invalid user admin from 198.51.100.7 port 4242 ssh2";
        assert_eq!(
            failure(line),
            (
                Kind::FailedPassword,
                b"admin".to_vec(),
                "198.51.100.7".into()
            )
        );
    }

    #[test]
    fn invalid_user_and_publickey_lines_have_their_own_kinds() {
        let invalid = b"Nov 30 06:39:17 h sshd[1]: Invalid user oracle from 2001:db8::7 port 4242";
        assert_eq!(
            failure(invalid),
            (Kind::InvalidUser, b"oracle".to_vec(), "2001:db8::7".into())
        );
        let old = b"Nov 30 06:39:17 h sshd[1]: Invalid user oracle from 192.0.2.1";
        assert_eq!(failure(old).2, "192.0.2.1");
        let key = b"Nov 30 06:39:17 h sshd[1]: Failed publickey for git from 192.0.2.9 port 22 ssh2: ED25519 SHA256:abc";
        assert_eq!(
            failure(key),
            (Kind::FailedPublickey, b"git".to_vec(), "192.0.2.9".into())
        );
    }

    #[test]
    fn user_names_with_spaces_from_and_odd_bytes_are_kept_whole() {
        let line = b"Nov 30 06:39:17 h sshd[1]: Invalid user a from 10.0.0.1 port 1 \xff from 192.0.2.4 port 22";
        assert_eq!(
            failure(line),
            (
                Kind::InvalidUser,
                b"a from 10.0.0.1 port 1 \xff".to_vec(),
                "192.0.2.4".into()
            )
        );
        let empty = b"Nov 30 06:39:17 h sshd[1]: Invalid user  from 192.0.2.4 port 22";
        assert_eq!(
            failure(empty),
            (Kind::InvalidUser, Vec::new(), "192.0.2.4".into())
        );
    }

    #[test]
    fn ipv4_mapped_and_zoned_ipv6_sources_are_normalised() {
        let line = b"Nov 30 06:39:17 h sshd[1]: Failed password for root from ::ffff:192.0.2.8 port 22 ssh2";
        assert_eq!(failure(line).2, "192.0.2.8");
        let zoned =
            b"Nov 30 06:39:17 h sshd[1]: Failed password for root from fe80::1%eth0 port 22 ssh2";
        assert_eq!(failure(zoned).2, "fe80::1");
    }

    #[test]
    fn repeated_message_folding_is_understood() {
        let line = b"Nov 30 06:39:17 h sshd[1]: message repeated 3 times: [ Failed password for root from 192.0.2.3 port 22 ssh2]";
        assert_eq!(
            failure(line),
            (Kind::FailedPassword, b"root".to_vec(), "192.0.2.3".into())
        );
        let old = b"Nov 30 06:39:17 h sshd[1]: message repeated 2 times: [ Invalid user x from 192.0.2.3]";
        assert_eq!(failure(old).2, "192.0.2.3");
    }

    #[test]
    fn a_repeated_message_counts_as_many_times_as_it_says() {
        let line = b"Nov 30 06:39:17 h sshd[1]: message repeated 37 times: [ Failed password for root from 192.0.2.3 port 22 ssh2]";
        match classify(line) {
            Verdict::Failure(f) => assert_eq!(f.repeat, 37),
            other => panic!("{other:?}"),
        }
        let once = b"Nov 30 06:39:17 h sshd[1]: Failed password for root from 192.0.2.3 port 22 ssh2";
        assert!(matches!(classify(once), Verdict::Failure(Failure { repeat: 1, .. })));
        for bad in [
            &b"Nov 30 06:39:17 h sshd[1]: message repeated 0 times: [ Invalid user x from 192.0.2.3]"[..],
            b"Nov 30 06:39:17 h sshd[1]: message repeated 99999999999 times: [ Invalid user x from 192.0.2.3]",
            b"Nov 30 06:39:17 h sshd[1]: message repeated many times: [ Invalid user x from 192.0.2.3]",
        ] {
            assert_eq!(classify(bad), Verdict::Malformed, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn only_the_accepted_programs_are_counted() {
        let forged = b"Nov 30 06:39:17 h myapp[7]: Failed password for root from 192.0.2.3 port 22 ssh2";
        assert_eq!(classify(forged), Verdict::NotAFailure);
        let parser = LineParser::new(Programs::new(&["myapp"]));
        let at = memmem::find(forged, b"Failed password").unwrap();
        assert!(matches!(parser.classify(forged, at, Kind::FailedPassword), Verdict::Failure(_)));
        let sshd = b"Nov 30 06:39:17 h sshd[7]: Failed password for root from 192.0.2.3 port 22 ssh2";
        let at = memmem::find(sshd, b"Failed password").unwrap();
        assert_eq!(parser.classify(sshd, at, Kind::FailedPassword), Verdict::NotAFailure);
    }

    #[test]
    fn sudo_su_and_login_pam_failures_are_local_failures_and_sshd_pam_lines_are_not_counted_twice() {
        let sudo = b"Nov 30 06:39:17 h sudo[9]: pam_unix(sudo:auth): authentication failure; logname=bob uid=1000 euid=0 tty=/dev/pts/0 ruser=bob rhost=  user=bob";
        assert_eq!(failure(sudo), (Kind::LocalAuth, b"bob".to_vec(), String::new()));
        let su = b"2026-11-30T06:39:17+00:00 h su[9]: pam_unix(su:auth): authentication failure; logname=bob uid=1000 euid=0 tty=pts/0 ruser=bob rhost=  user=root";
        assert_eq!(failure(su).1, b"root".to_vec());
        let login = b"Nov 30 06:39:17 h login[9]: pam_unix(login:auth): authentication failure; logname=LOGIN uid=0 euid=0 tty=tty1 ruser= rhost=192.0.2.4  user=ops";
        assert_eq!(failure(login), (Kind::LocalAuth, b"ops".to_vec(), "192.0.2.4".into()));
        let sshd = b"Nov 30 06:39:17 h sshd[9]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=192.0.2.4  user=root";
        assert_eq!(classify(sshd), Verdict::NotAFailure);
        let no_user = b"Nov 30 06:39:17 h su[9]: pam_unix(su:auth): authentication failure; logname=bob uid=1000";
        assert_eq!(classify(no_user), Verdict::Malformed);
    }

    #[test]
    fn a_journal_message_is_judged_by_its_trusted_program() {
        let parser = LineParser::new(Programs::default());
        let message = b"Failed password for root from 192.0.2.3 port 22 ssh2";
        let got = parser.classify_message(b"sshd", message, Kind::FailedPassword, 0);
        assert!(matches!(got, Some(Some(Attempt { repeat: 1, .. }))), "{got:?}");
        assert_eq!(parser.classify_message(b"logger", message, Kind::FailedPassword, 0), None);
        let short = b"Failed password for root";
        assert_eq!(parser.classify_message(b"sshd", short, Kind::FailedPassword, 0), Some(None));
    }

    #[test]
    fn truncated_unstamped_or_bad_address_lines_are_malformed() {
        let cases: [&[u8]; 6] = [
            b"Nov 30 06:39:17 h sshd[1]: Failed password for ro",
            b"Nov 30 06:39:17 h sshd[1]: Failed password",
            b"h sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2",
            b"Failed password for root from 192.0.2.1 port 22 ssh2",
            b"Nov 30 06:39:17 h sshd[1]: Failed password for root from 999.1.1.1 port 22 ssh2",
            b"Nov 30 06:39:17 h sshd[1]: Invalid user bob from host.example.com port 22",
        ];
        for line in cases {
            assert_eq!(
                classify(line),
                Verdict::Malformed,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn marker_text_outside_a_message_is_not_a_failure() {
        let sudo = b"Nov 30 06:39:17 h sudo:  bob : TTY=pts/0 ; PWD=/ ; USER=root ; COMMAND=/usr/bin/grep Failed password /var/log/secure";
        assert_eq!(classify(sudo), Verdict::NotAFailure);
        let echoed = b"Nov 30 06:39:17 h sshd[1]: Connection from x: Failed password for root from 192.0.2.1 port 22";
        assert_eq!(classify(echoed), Verdict::NotAFailure);
    }
}
