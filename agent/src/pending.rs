//! The table of TLS handshakes in progress, with a cap per source address and a global
//! cap. When a cap is full the OLDEST pending handshake under it is closed to make room,
//! never the newcomer: a peer holding idle connections without a ClientHello cannot lock
//! a real client out, because the real client's fresh connection always gets a slot and
//! needs only milliseconds to finish. The per-source cap means a flood from one address
//! evicts only its own connections while other sources are left alone.
//!
//! This module must never block the accept loop or grow beyond its caps.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::metrics::Limit;

/// A slot in the table. Dropping it (the handshake ended) frees the slot; the paired
/// `evicted` receiver resolves when the table closes this handshake to make room.
pub struct Slot {
    id: u64,
    table: Arc<Mutex<Table>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.remove(self.id);
        }
    }
}

/// The evicted notice: resolves (with Ok or Err) when the handshake must be abandoned.
pub type Evicted = oneshot::Receiver<Limit>;

#[derive(Default)]
struct Table {
    next_id: u64,
    /// By id, so iteration is oldest first.
    pending: BTreeMap<u64, (IpAddr, oneshot::Sender<Limit>)>,
    per_source: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<oneshot::Sender<Limit>> {
        let (ip, tx) = self.pending.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
        Some(tx)
    }
}

/// The pending-handshake table shared by the accept loop and the handshake tasks.
#[derive(Clone)]
pub struct Pending {
    table: Arc<Mutex<Table>>,
    global_cap: usize,
    per_source_cap: usize,
}

impl Pending {
    pub fn new(global_cap: usize, per_source_cap: usize) -> Pending {
        Pending { table: Arc::default(), global_cap: global_cap.max(1), per_source_cap: per_source_cap.max(1) }
    }

    /// Registers a new handshake from `ip`, first evicting the oldest one from the same
    /// source if that source is at its cap, else the oldest overall if the table is full.
    /// Returns the new slot, its eviction notice, and the limit that evicted another
    /// handshake to make room, if any.
    pub fn admit(&self, ip: IpAddr) -> (Slot, Evicted, Option<Limit>) {
        let (tx, rx) = oneshot::channel();
        let mut t = match self.table.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        let mut evicted = None;
        if t.per_source.get(&ip).copied().unwrap_or(0) >= self.per_source_cap {
            let oldest = t.pending.iter().find(|(_, (src, _))| *src == ip).map(|(id, _)| *id);
            if let Some(id) = oldest {
                if let Some(old) = t.remove(id) {
                    let _ = old.send(Limit::PendingHandshakesPerSource);
                }
                evicted = Some(Limit::PendingHandshakesPerSource);
            }
        } else if t.pending.len() >= self.global_cap {
            let oldest = t.pending.keys().next().copied();
            if let Some(id) = oldest {
                if let Some(old) = t.remove(id) {
                    let _ = old.send(Limit::PendingHandshakes);
                }
                evicted = Some(Limit::PendingHandshakes);
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        t.pending.insert(id, (ip, tx));
        *t.per_source.entry(ip).or_insert(0) += 1;
        drop(t);
        (Slot { id, table: self.table.clone() }, rx, evicted)
    }

    /// Handshakes in progress now.
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.pending.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_flood_from_one_source_evicts_only_its_own_oldest() {
        let p = Pending::new(10, 3);
        let (_other, mut other_rx, _) = p.admit(ip(2));
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(p.admit(ip(1)));
        }
        assert_eq!(p.len(), 4, "3 from the flooder plus the other source");
        assert!(other_rx.try_recv().is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        let evictions = held.iter().filter(|(_, _, e)| *e == Some(Limit::PendingHandshakesPerSource)).count();
        assert_eq!(evictions, 97);
        // The newest three of the flood are still pending.
        for (_, rx, _) in held.iter_mut().rev().take(3) {
            assert!(rx.try_recv().is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        }
    }

    #[test]
    fn when_the_table_is_full_the_oldest_goes_and_the_newcomer_stays() {
        let p = Pending::new(4, 4);
        let mut held: Vec<_> = (1..=4).map(|i| p.admit(ip(i))).collect();
        let (_new, mut new_rx, why) = p.admit(ip(9));
        assert_eq!(why, Some(Limit::PendingHandshakes));
        assert_eq!(held[0].1.try_recv().unwrap(), Limit::PendingHandshakes);
        assert!(held[1].1.try_recv().is_err());
        assert!(new_rx.try_recv().is_err());
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn a_finished_handshake_frees_its_slot() {
        let p = Pending::new(2, 1);
        let (slot, _rx, _) = p.admit(ip(1));
        drop(slot);
        assert!(p.is_empty());
        let (_s, _rx, why) = p.admit(ip(1));
        assert_eq!(why, None);
    }
}
