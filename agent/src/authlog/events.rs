//! The failure events the agent remembers between queries, kept compact (24 bytes each,
//! an IPv4 source inline, user names and IPv6 sources interned, display strings made only
//! for what an answer shows, a repeated message one record with its count) and bounded: the oldest
//! are evicted first and counted, the newest time evicted is kept so that an answer can
//! say whether its window lost anything, and the name tables are rebuilt when evictions
//! leave them mostly unused. Answers a query from memory;
//! never touches files.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;

use super::parse::Kind;

/// Name tables are compacted when they hold more than this many entries beyond twice the
/// number of retained events: cheap amortised, and bounds memory under user-name spraying.
const INTERN_SLACK: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct Event {
    unix_ms: i64,
    user: u32,
    /// What `source_kind` says: nothing, an IPv4 address's bits, or an IPv6 source's id.
    source: u32,
    /// Attempts this record stands for (rsyslog's `message repeated N times`).
    count: u32,
    kind: u8,
    source_kind: SourceKind,
}

/// How an event's source is stored. An IPv4 address is kept in the event itself: interning
/// it would cost a hash table lookup per failure line, and with the hundreds of thousands of
/// distinct addresses of a sprayed log each lookup is a cache miss (it was the single most
/// expensive step of a scan after the marker search). Fitting in the padding of [`Event`],
/// this costs no memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SourceKind {
    /// A local failure: no remote address.
    None,
    V4,
    /// An id in [`EventStore::sources`].
    V6,
}

/// A source as counted by [`EventStore::summarize`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum SourceRef {
    V4(u32),
    V6(u32),
}

/// Interns names: each distinct key is stored once and numbered. Its display form is made
/// only when an answer shows it: a log sprayed from a quarter of a million addresses would
/// otherwise format and allocate a string for each, of which an answer shows ten.
struct Interner<K> {
    ids: HashMap<K, u32>,
    keys: Vec<K>,
}

impl<K: Hash + Eq + Clone> Interner<K> {
    fn new() -> Self {
        Interner {
            ids: HashMap::new(),
            keys: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn intern<Q>(&mut self, key: &Q) -> u32
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized,
        Q::Owned: Into<K>,
    {
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        // Compaction keeps the tables within a few times `max_events`, far below u32::MAX.
        let id = u32::try_from(self.keys.len()).unwrap_or(u32::MAX);
        let owned: K = key.to_owned().into();
        self.keys.push(owned.clone());
        self.ids.insert(owned, id);
        id
    }

    fn key(&self, id: u32) -> Option<&K> {
        self.keys.get(id as usize)
    }
}

/// Counts over the events at or after a time.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub failed_password: u64,
    pub invalid_user: u64,
    pub failed_publickey: u64,
    pub local_auth: u64,
    pub total: u64,
    pub top_users: Vec<(String, u64)>,
    pub top_sources: Vec<(String, u64)>,
    /// Oldest retained event (whatever `since`), 0 when none is retained.
    pub oldest_event_unix_ms: i64,
}

pub(crate) struct EventStore {
    events: VecDeque<Event>,
    users: Interner<Box<[u8]>>,
    /// IPv6 sources only (IPv4 ones are kept in the events).
    sources: Interner<u128>,
    max_events: usize,
    evicted: u64,
    /// Latest time of an event that is not retained (evicted, or before a journal cursor
    /// the agent resumed from); `i64::MIN` when nothing was lost.
    incomplete_until_ms: i64,
}

impl EventStore {
    pub(crate) fn new(max_events: usize) -> EventStore {
        EventStore {
            events: VecDeque::new(),
            users: Interner::new(),
            sources: Interner::new(),
            max_events,
            evicted: 0,
            incomplete_until_ms: i64::MIN,
        }
    }

    /// Whether counts at or after `since_unix_ms` may miss events this store dropped or
    /// never saw.
    pub(crate) fn incomplete_since(&self, since_unix_ms: i64) -> bool {
        since_unix_ms <= self.incomplete_until_ms
    }

    /// Records that events up to `unix_ms` were never read (reading resumed after them).
    pub(crate) fn mark_unread_until(&mut self, unix_ms: i64) {
        self.incomplete_until_ms = self.incomplete_until_ms.max(unix_ms);
    }

    /// Events evicted since the store was created.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// Remembers `count` attempts (one record); the oldest record goes when full.
    pub(crate) fn push(
        &mut self,
        unix_ms: i64,
        kind: Kind,
        user: &[u8],
        source: Option<IpAddr>,
        count: u32,
    ) {
        if self.max_events == 0 {
            self.evicted += u64::from(count);
            self.mark_unread_until(unix_ms);
            return;
        }
        if self.events.len() >= self.max_events {
            if let Some(old) = self.events.pop_front() {
                self.evicted += u64::from(old.count);
                self.mark_unread_until(old.unix_ms);
            }
        }
        let user = self.users.intern(user);
        let (source_kind, source) = match source {
            None => (SourceKind::None, 0),
            Some(IpAddr::V4(v4)) => (SourceKind::V4, u32::from(v4)),
            Some(IpAddr::V6(v6)) => (SourceKind::V6, self.sources.intern(&u128::from(v6))),
        };
        self.events.push_back(Event {
            unix_ms,
            user,
            source,
            count,
            kind: kind as u8,
            source_kind,
        });
        let limit = 2 * self.events.len() + INTERN_SLACK;
        if self.users.len() > limit || self.sources.len() > limit {
            self.compact();
        }
    }

    /// Rebuilds the name tables from the retained events, dropping evicted names.
    fn compact(&mut self) {
        let old_users = std::mem::replace(&mut self.users, Interner::new());
        let old_sources = std::mem::replace(&mut self.sources, Interner::new());
        for event in &mut self.events {
            if let Some(key) = old_users.key(event.user) {
                event.user = self.users.intern::<[u8]>(key);
            }
            if event.source_kind != SourceKind::V6 {
                continue;
            }
            if let Some(key) = old_sources.key(event.source) {
                event.source = self.sources.intern(key);
            }
        }
    }

    /// Counts events at or after `since_unix_ms`, with the `top_n` most frequent users and
    /// sources (ties broken by name).
    pub(crate) fn summarize(&self, since_unix_ms: i64, top_n: usize) -> Summary {
        let mut summary = Summary::default();
        let mut per_user = vec![0u64; self.users.len()];
        let mut per_v6 = vec![0u64; self.sources.len()];
        // (address, attempts) of each IPv4 event in the window, summed per address below.
        let mut v4: Vec<(u32, u32)> = Vec::new();
        let mut oldest = i64::MAX;
        for event in &self.events {
            oldest = oldest.min(event.unix_ms);
            if event.unix_ms < since_unix_ms {
                continue;
            }
            let n = u64::from(event.count);
            match Kind::from_u8(event.kind) {
                Some(Kind::FailedPassword) => summary.failed_password += n,
                Some(Kind::InvalidUser) => summary.invalid_user += n,
                Some(Kind::FailedPublickey) => summary.failed_publickey += n,
                Some(Kind::LocalAuth) => summary.local_auth += n,
                None => continue,
            }
            summary.total += n;
            if let Some(count) = per_user.get_mut(event.user as usize) {
                *count += n;
            }
            match event.source_kind {
                SourceKind::None => {}
                SourceKind::V4 => v4.push((event.source, event.count)),
                SourceKind::V6 => {
                    if let Some(count) = per_v6.get_mut(event.source as usize) {
                        *count += n;
                    }
                }
            }
        }
        summary.oldest_event_unix_ms = if oldest == i64::MAX { 0 } else { oldest };
        let users = per_user
            .iter()
            .zip(0u32..)
            .filter(|(count, _)| **count > 0)
            .map(|(count, id)| (*count, id))
            .collect();
        summary.top_users = top(users, top_n, |id| {
            self.users
                .key(id)
                .map_or_else(String::new, |u| String::from_utf8_lossy(u).into_owned())
        });
        v4.sort_unstable_by_key(|(address, _)| *address);
        let mut sources: Vec<(u64, SourceRef)> = Vec::new();
        for group in v4.chunk_by(|a, b| a.0 == b.0) {
            let count = group.iter().map(|(_, n)| u64::from(*n)).sum();
            sources.push((count, SourceRef::V4(group[0].0)));
        }
        sources.extend(
            per_v6
                .iter()
                .zip(0u32..)
                .filter(|(count, _)| **count > 0)
                .map(|(count, id)| (*count, SourceRef::V6(id))),
        );
        summary.top_sources = top(sources, top_n, |source| match source {
            SourceRef::V4(bits) => std::net::Ipv4Addr::from(bits).to_string(),
            SourceRef::V6(id) => self
                .sources
                .key(id)
                .map_or_else(String::new, |bits| std::net::Ipv6Addr::from(*bits).to_string()),
        });
        summary
    }
}

/// The `n` largest of `ranked` (non-zero counts), most frequent first, ties by name. Only
/// the names that can make the cut are formatted: those whose count reaches the `n`-th
/// largest.
fn top<T: Copy>(
    mut ranked: Vec<(u64, T)>,
    n: usize,
    name: impl Fn(T) -> String,
) -> Vec<(String, u64)> {
    if n == 0 {
        return Vec::new();
    }
    if ranked.len() > n {
        ranked.select_nth_unstable_by(n - 1, |a, b| b.0.cmp(&a.0));
        let cut = ranked[n - 1].0;
        ranked.retain(|(count, _)| *count >= cut);
    }
    let mut named: Vec<(String, u64)> = ranked
        .into_iter()
        .map(|(count, id)| (name(id), count))
        .collect();
    named.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    named.truncate(n);
    named
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn summary_counts_kinds_since_and_ranks_ties_by_name() {
        let mut store = EventStore::new(100);
        store.push(1_000, Kind::FailedPassword, b"root", Some(ip("192.0.2.2")), 1);
        store.push(2_000, Kind::FailedPassword, b"root", Some(ip("192.0.2.1")), 1);
        store.push(3_000, Kind::InvalidUser, b"admin", Some(ip("192.0.2.1")), 1);
        store.push(4_000, Kind::FailedPublickey, b"git", Some(ip("2001:db8::1")), 1);
        store.push(5_000, Kind::InvalidUser, b"bob", Some(ip("192.0.2.2")), 1);

        let all = store.summarize(0, 2);
        assert_eq!(
            (
                all.failed_password,
                all.invalid_user,
                all.failed_publickey,
                all.total
            ),
            (2, 2, 1, 5)
        );
        assert_eq!(
            all.top_users,
            vec![("root".to_owned(), 2), ("admin".to_owned(), 1)]
        );
        assert_eq!(
            all.top_sources,
            vec![("192.0.2.1".to_owned(), 2), ("192.0.2.2".to_owned(), 2)]
        );
        assert_eq!(all.oldest_event_unix_ms, 1_000);

        let recent = store.summarize(3_000, 10);
        assert_eq!(recent.total, 3);
        assert_eq!(recent.top_users.len(), 3);
        assert_eq!(recent.oldest_event_unix_ms, 1_000);
    }

    #[test]
    fn inline_ipv4_and_interned_ipv6_sources_rank_together_by_count_then_name() {
        let mut store = EventStore::new(100);
        for (ms, source) in [
            (1, "2001:db8::1"),
            (2, "192.0.2.10"),
            (3, "2001:db8::1"),
            (4, "192.0.2.10"),
            (5, "192.0.2.9"),
            (6, "::ffff:192.0.2.9"),
        ] {
            store.push(ms, Kind::InvalidUser, b"x", Some(ip(source).to_canonical()), 1);
        }
        store.push(7, Kind::LocalAuth, b"x", None, 1);
        let summary = store.summarize(0, 3);
        assert_eq!(
            summary.top_sources,
            vec![
                ("192.0.2.10".to_owned(), 2),
                ("192.0.2.9".to_owned(), 2),
                ("2001:db8::1".to_owned(), 2),
            ]
        );
        assert_eq!(store.summarize(0, 2).top_sources.len(), 2);
        assert_eq!(store.summarize(5, 10).top_sources, vec![("192.0.2.9".to_owned(), 2)]);
    }

    #[test]
    fn oldest_events_are_evicted_and_counted() {
        let mut store = EventStore::new(2);
        for ms in 1..=5 {
            store.push(ms, Kind::FailedPassword, b"root", Some(ip("192.0.2.1")), 1);
        }
        assert_eq!((store.len(), store.evicted()), (2, 3));
        assert_eq!(store.summarize(0, 10).oldest_event_unix_ms, 4);
    }

    #[test]
    fn name_tables_shrink_after_many_distinct_names_are_evicted() {
        let mut store = EventStore::new(10);
        for i in 0..10_000u32 {
            let user = format!("spray{i}");
            let source = IpAddr::from(i.to_be_bytes());
            store.push(i64::from(i), Kind::InvalidUser, user.as_bytes(), Some(source), 1);
        }
        assert!(
            store.users.len() <= 2 * 10 + INTERN_SLACK + 1,
            "{}",
            store.users.len()
        );
        let summary = store.summarize(0, 1);
        assert_eq!(summary.total, 10);
        assert_eq!(summary.top_users, vec![("spray9990".to_owned(), 1)]);
        assert_eq!(summary.top_sources, vec![("0.0.39.10".to_owned(), 1)]);
    }

    #[test]
    fn a_repeated_record_counts_its_attempts_and_evicting_it_says_the_window_is_incomplete() {
        let mut store = EventStore::new(2);
        store.push(1_000, Kind::FailedPassword, b"root", Some(ip("192.0.2.1")), 40);
        store.push(2_000, Kind::LocalAuth, b"bob", None, 1);
        let both = store.summarize(0, 10);
        assert_eq!((both.total, both.failed_password, both.local_auth), (41, 40, 1));
        assert_eq!(both.top_users[0], ("root".to_owned(), 40));
        assert_eq!(both.top_sources, vec![("192.0.2.1".to_owned(), 40)]);
        assert!(!store.incomplete_since(0));

        store.push(3_000, Kind::InvalidUser, b"x", Some(ip("192.0.2.2")), 1);
        assert_eq!(store.evicted(), 40);
        assert!(store.incomplete_since(0) && store.incomplete_since(1_000));
        assert!(!store.incomplete_since(1_001), "nothing after the evicted record was lost");
    }
}
