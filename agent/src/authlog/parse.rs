//! Recognises the failed-login messages sshd writes and extracts when, who and from
//! where. Pure: one line's bytes in, a verdict out; never allocates and never fails on
//! odd bytes (user names are kept as raw bytes, whatever their encoding).
//!
//! Counted kinds, one per line:
//! - `Failed password for [invalid user ]USER from IP` -> failed password;
//! - `Failed publickey for [invalid user ]USER from IP` -> failed publickey;
//! - `Invalid user USER from IP` -> invalid user.
//!
//! sshd logs both `Invalid user X from IP` and `Failed password for invalid user X from IP`
//! for one password attempt by an unknown user; each line counts once, under its own kind.

use std::net::IpAddr;

use memchr::memmem;

use super::timestamp::{parse_stamp, Stamp};

/// What a failure line records. The discriminants are stored in retained events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    FailedPassword = 0,
    InvalidUser = 1,
    FailedPublickey = 2,
}

impl Kind {
    /// The text that marks a line as a candidate, in the order the scanner searches for
    /// them; index `i` is the marker of `Kind::ALL[i]`.
    pub(crate) const MARKERS: [&'static str; 3] =
        ["Failed password", "Invalid user", "Failed publickey"];
    pub(crate) const ALL: [Kind; 3] = [
        Kind::FailedPassword,
        Kind::InvalidUser,
        Kind::FailedPublickey,
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
    pub source: IpAddr,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict<'a> {
    Failure(Failure<'a>),
    /// Has a marker where sshd puts its message but cannot be read: counted, skipped.
    Malformed,
    /// The marker text appears elsewhere (e.g. in a sudo command line): not a failure.
    NotAFailure,
}

/// Finds the last ` from ` of a line: user names may contain spaces and even ` from `, but
/// the source address is always the last field introduced that way.
pub(crate) struct LineParser {
    from: memmem::FinderRev<'static>,
}

impl LineParser {
    pub(crate) fn new() -> LineParser {
        LineParser {
            from: memmem::FinderRev::new(b" from "),
        }
    }

    /// Classifies `line` (without its newline) whose marker for `kind` starts at `marker_at`.
    pub(crate) fn classify<'a>(&self, line: &'a [u8], marker_at: usize, kind: Kind) -> Verdict<'a> {
        if !starts_message(line, marker_at) {
            return Verdict::NotAFailure;
        }
        match self.parse(line, marker_at, kind) {
            Some(failure) => Verdict::Failure(failure),
            None => Verdict::Malformed,
        }
    }

    fn parse<'a>(&self, line: &'a [u8], marker_at: usize, kind: Kind) -> Option<Failure<'a>> {
        let stamp = parse_stamp(line)?;
        let marker_len = Kind::MARKERS[kind as usize].len();
        let after_marker = line.get(marker_at + marker_len..)?;
        let subject = match kind {
            Kind::InvalidUser => after_marker.strip_prefix(b" ")?,
            Kind::FailedPassword | Kind::FailedPublickey => {
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
        // A link-local source carries its zone (`fe80::1%eth0`); the address is what counts.
        let token = token.split(|b| *b == b'%').next().unwrap_or(token);
        let source: IpAddr = std::str::from_utf8(token).ok()?.parse().ok()?;
        Some(Failure {
            stamp,
            kind,
            user,
            source: source.to_canonical(),
        })
    }
}

/// sshd's message follows `program[pid]: `; rsyslog's repeat folding writes
/// `message repeated N times: [ MESSAGE]`. A marker at the very start of a line is a
/// failure line that lost its header, which is malformed rather than innocent.
fn starts_message(line: &[u8], marker_at: usize) -> bool {
    matches!(line[..marker_at], [] | [.., b':' | b'[', b' '] | [.., b'['])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn classify(line: &[u8]) -> Verdict<'_> {
        let parser = LineParser::new();
        for (kind, marker) in Kind::ALL.into_iter().zip(Kind::MARKERS) {
            if let Some(at) = memmem::find(line, marker.as_bytes()) {
                return parser.classify(line, at, kind);
            }
        }
        panic!("no marker in {:?}", String::from_utf8_lossy(line));
    }

    fn failure(line: &[u8]) -> (Kind, Vec<u8>, String) {
        match classify(line) {
            Verdict::Failure(f) => (f.kind, f.user.to_vec(), f.source.to_string()),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(line)),
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
    }
}
