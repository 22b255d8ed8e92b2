//! User names for uids, from /etc/passwd parsed once and kept for the life of the agent.
//! Users known only to NSS (LDAP, sssd) or added after start show as their number; the
//! agent never calls into NSS, which may block on the network.

use std::collections::HashMap;
use std::sync::OnceLock;

const PASSWD: &str = "/etc/passwd";

static USERS: OnceLock<HashMap<u32, String>> = OnceLock::new();

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

/// Parses passwd lines (`name:password:uid:gid:gecos:home:shell`); the first name of a
/// uid wins, as with getpwuid.
pub(crate) fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut users = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(name), Some(_password), Some(uid)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if let (false, Ok(uid)) = (name.is_empty(), uid.parse::<u32>()) {
            users.entry(uid).or_insert_with(|| name.to_owned());
        }
    }
    users.shrink_to_fit();
    users
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn passwd_maps_uids_to_the_first_name() {
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n\
             # comment\n\
             daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
             toor:x:0:0:second root:/root:/bin/sh\n\
             +nis::::::\n\
             broken line\n\
             www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n",
        );
        assert_eq!(users.get(&0).unwrap(), "root");
        assert_eq!(users.get(&1).unwrap(), "daemon");
        assert_eq!(users.get(&33).unwrap(), "www-data");
        assert_eq!(users.len(), 3);
    }

    #[test]
    fn unknown_uid_falls_back_to_the_number() {
        assert_eq!(name_of(4_000_000_000), "4000000000");
    }
}
