//! The agent's one reader of /etc/passwd: user names for uids (parsed once and kept for
//! the life of the agent) and accounts by name for jobs that run as another user (read
//! afresh each time, so an account added after start is found).
//! Users known only to NSS (LDAP, sssd) are not found; the agent never calls into NSS,
//! which may block on the network, and never writes the file.

use std::collections::HashMap;
use std::sync::OnceLock;

const PASSWD: &str = "/etc/passwd";

static USERS: OnceLock<HashMap<u32, String>> = OnceLock::new();

/// A local account, from one passwd(5) line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// The user name of `uid`, or the number as text when /etc/passwd does not know it.
pub(crate) fn name_of(uid: u32) -> String {
    USERS
        .get_or_init(|| {
            super::read_optional(PASSWD)
                .map(|text| parse_passwd(&text))
                .unwrap_or_default()
        })
        .get(&uid)
        .cloned()
        .unwrap_or_else(|| uid.to_string())
}

/// The local account named `name`, read from /etc/passwd now; `Ok(None)` when there is
/// none.
pub fn account_named(name: &str) -> std::io::Result<Option<Account>> {
    let text = std::fs::read_to_string(PASSWD)?;
    Ok(find_account(&text, name))
}

/// The account named exactly `name` in passwd(5) text; the first line wins.
pub fn find_account(passwd: &str, name: &str) -> Option<Account> {
    accounts(passwd).find(|a| a.name == name)
}

/// Each well-formed line (`name:password:uid:gid:gecos:home:shell`); comments, NIS
/// `+`/`-` entries and broken lines are skipped.
fn accounts(text: &str) -> impl Iterator<Item = Account> + '_ {
    text.lines().filter_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0].is_empty() {
            return None;
        }
        Some(Account {
            name: f[0].to_owned(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_owned(),
        })
    })
}

/// Maps uids to names; the first name of a uid wins, as with getpwuid.
pub(crate) fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut users = HashMap::new();
    for a in accounts(text) {
        users.entry(a.uid).or_insert(a.name);
    }
    users.shrink_to_fit();
    users
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/bash\n\
             # comment\n\
             daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
             toor:x:0:0:second root:/root:/bin/sh\n\
             +nis::::::\n\
             broken line\n\
             www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn passwd_maps_uids_to_the_first_name() {
        let users = parse_passwd(PASSWD_TEXT);
        assert_eq!(users.get(&0).unwrap(), "root");
        assert_eq!(users.get(&1).unwrap(), "daemon");
        assert_eq!(users.get(&33).unwrap(), "www-data");
        assert_eq!(users.len(), 4);
    }

    #[test]
    fn accounts_are_found_by_exact_name() {
        let n = find_account(PASSWD_TEXT, "nobody").unwrap();
        assert_eq!(
            (n.uid, n.gid, n.home.as_str()),
            (65534, 65534, "/nonexistent")
        );
        assert!(find_account(PASSWD_TEXT, "nob").is_none());
        assert!(find_account(PASSWD_TEXT, "+nis").is_none());
    }

    #[test]
    fn unknown_uid_falls_back_to_the_number() {
        assert_eq!(name_of(4_000_000_000), "4000000000");
    }
}
