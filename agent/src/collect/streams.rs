//! Snapshot streams: every stream at the same interval is fed by one producer, which reads
//! /proc and builds the snapshot once per tick for all of them (the widest top-N asked
//! for; each stream gets its own length). During an incident several people watch the
//! same host; five viewers must not cost five times one.
//!
//! A producer lives while its interval has subscribers and ends with the last one. It
//! never buffers more than STREAM_BUFFER snapshots per stream: a stream whose buffer is
//! full gets a dropped count instead, and when no stream has room the tick takes no sample
//! at all (so never-reading streams cost sleeping tasks, not /proc walks). The next
//! snapshot then measures CPU over the longer window since the last sample.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ops_proto::v1::Snapshot;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::sampler::{blocking, net_view_still_fresh, shared_sample};
use super::NetView;

/// Something dropped when its stream ends (the caller's gauges and permits).
pub type EndGuard = Box<dyn Send + Sync>;

/// One stream's place at its interval's producer.
struct Subscriber {
    tx: mpsc::Sender<Result<Snapshot, Status>>,
    top_n: usize,
    /// 0: until the caller goes away.
    max_count: u32,
    sent: u32,
    dropped: u64,
    _end: EndGuard,
}

#[derive(Default)]
struct Group {
    subscribers: Mutex<Vec<Subscriber>>,
}

/// The producers, by interval in milliseconds.
#[derive(Clone)]
pub struct StreamHub {
    groups: Arc<Mutex<HashMap<u64, Arc<Group>>>>,
    shutdown: watch::Receiver<bool>,
}

impl StreamHub {
    /// A hub whose producers stop (ending every stream) when `shutdown` turns true.
    pub fn new(shutdown: watch::Receiver<bool>) -> StreamHub {
        StreamHub { groups: Arc::new(Mutex::new(HashMap::new())), shutdown }
    }

    /// Adds a stream: snapshots every `interval` into `tx` until the caller goes away,
    /// `max_count` were sent (0: no limit), or shutdown. `end` is dropped when it ends.
    pub fn subscribe(
        &self,
        tx: mpsc::Sender<Result<Snapshot, Status>>,
        interval: Duration,
        top_n: usize,
        max_count: u32,
        end: EndGuard,
    ) {
        let key = interval.as_millis() as u64;
        let sub = Subscriber { tx, top_n, max_count, sent: 0, dropped: 0, _end: end };
        let Ok(mut groups) = self.groups.lock() else { return };
        if let Some(g) = groups.get(&key) {
            if let Ok(mut subs) = g.subscribers.lock() {
                subs.push(sub);
                return;
            }
        }
        let group = Arc::new(Group::default());
        if let Ok(mut subs) = group.subscribers.lock() {
            subs.push(sub);
        }
        groups.insert(key, group.clone());
        tokio::spawn(produce(self.clone(), key, interval, group));
    }

    /// Producers running now (one per interval in use).
    pub fn producers(&self) -> usize {
        self.groups.lock().map(|g| g.len()).unwrap_or(0)
    }

    /// Removes the group if it has no subscriber left; true when it was removed. Under the
    /// hub's lock, so a subscriber arriving now either joins before or starts a new group.
    fn retire_if_empty(&self, key: u64, group: &Arc<Group>) -> bool {
        let Ok(mut groups) = self.groups.lock() else { return true };
        let empty = group.subscribers.lock().map(|s| s.is_empty()).unwrap_or(true);
        if empty && groups.get(&key).is_some_and(|g| Arc::ptr_eq(g, group)) {
            groups.remove(&key);
        }
        empty
    }

    fn end_all(&self, key: u64, group: &Arc<Group>, error: Option<Status>) {
        if let Ok(mut groups) = self.groups.lock() {
            if groups.get(&key).is_some_and(|g| Arc::ptr_eq(g, group)) {
                groups.remove(&key);
            }
        }
        let subs = group.subscribers.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
        for s in subs {
            if let Some(e) = &error {
                let _ = s.tx.try_send(Err(e.clone()));
            }
        }
    }
}

/// The producer of one interval.
async fn produce(hub: StreamHub, key: u64, interval: Duration, group: Arc<Group>) {
    let mut shutdown = hub.shutdown.clone();
    let mut prev = match shared_sample().await {
        Ok(s) => s,
        Err(e) => return hub.end_all(key, &group, Some(e)),
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut net: Option<(tokio::time::Instant, NetView)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|v| *v) => return hub.end_all(key, &group, None),
        }
        // Who is still there, and whether anyone has room for a snapshot.
        let widest = {
            let Ok(mut subs) = group.subscribers.lock() else { return hub.end_all(key, &group, None) };
            subs.retain(|s| !s.tx.is_closed());
            let ready = subs.iter().filter(|s| s.tx.capacity() > 0).map(|s| s.top_n).max();
            if ready.is_none() {
                for s in subs.iter_mut() {
                    s.dropped += 1;
                }
            }
            ready
        };
        let Some(top_n) = widest else {
            if hub.retire_if_empty(key, &group) {
                return;
            }
            continue;
        };
        let cur = match shared_sample().await {
            Ok(s) => s,
            Err(e) => return hub.end_all(key, &group, Some(e)),
        };
        let (p, c) = (prev.clone(), cur.clone());
        let reuse = net.as_ref().filter(|(at, _)| net_view_still_fresh(at.elapsed(), interval)).map(|(_, v)| v.clone());
        let fresh = reuse.is_none();
        let snap = match blocking(move || super::build_snapshot_with(&p, &c, top_n, reuse)).await {
            Ok(s) => s,
            Err(e) => return hub.end_all(key, &group, Some(e)),
        };
        if fresh {
            net = Some((tokio::time::Instant::now(), NetView::of(&snap)));
        }
        prev = cur;
        deliver(&group, &snap);
        if hub.retire_if_empty(key, &group) {
            return;
        }
    }
}

/// One snapshot to every stream with room, cut to its own top-N and carrying its own
/// dropped count; streams that reached their count are let go.
fn deliver(group: &Group, snap: &Snapshot) {
    let Ok(mut subs) = group.subscribers.lock() else { return };
    for s in subs.iter_mut() {
        if s.tx.capacity() == 0 {
            s.dropped += 1;
            continue;
        }
        let mut mine = snap.clone();
        mine.top_by_cpu.truncate(s.top_n);
        mine.top_by_memory.truncate(s.top_n);
        mine.dropped_snapshots = s.dropped;
        match s.tx.try_send(Ok(mine)) {
            Ok(()) => s.sent += 1,
            Err(mpsc::error::TrySendError::Full(_)) => s.dropped += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    subs.retain(|s| !s.tx.is_closed() && (s.max_count == 0 || s.sent < s.max_count));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::collect::sampler::{MIN_STREAM_INTERVAL, STREAM_BUFFER};

    fn hub() -> (StreamHub, watch::Sender<bool>) {
        let (stop, shutdown) = watch::channel(false);
        (StreamHub::new(shutdown), stop)
    }

    #[tokio::test]
    async fn a_consumer_that_stops_reading_gets_drops_counted_not_buffered() {
        let (hub, _stop) = hub();
        let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
        hub.subscribe(tx, MIN_STREAM_INTERVAL, 1, 0, Box::new(()));
        // Read nothing while about ten snapshots are produced: only STREAM_BUFFER can wait.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut queued = 0;
        while let Ok(s) = rx.try_recv() {
            s.unwrap();
            queued += 1;
        }
        assert_eq!(queued, STREAM_BUFFER);
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap().unwrap();
        assert!(next.dropped_snapshots >= 3, "dropped {}", next.dropped_snapshots);
        drop(rx);
        // The producer ends with its last stream.
        let t = tokio::time::Instant::now();
        while hub.producers() > 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "the producer outlived its streams");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn streams_at_one_interval_share_one_producer_and_each_gets_its_own_length_and_count() {
        let (hub, _stop) = hub();
        let (wide_tx, mut wide) = mpsc::channel(STREAM_BUFFER);
        let (narrow_tx, mut narrow) = mpsc::channel(STREAM_BUFFER);
        let (other_tx, mut other) = mpsc::channel(STREAM_BUFFER);
        hub.subscribe(wide_tx, MIN_STREAM_INTERVAL, 50, 3, Box::new(()));
        hub.subscribe(narrow_tx, MIN_STREAM_INTERVAL, 1, 2, Box::new(()));
        hub.subscribe(other_tx, Duration::from_millis(150), 1, 1, Box::new(()));
        assert_eq!(hub.producers(), 2, "one producer per interval");
        let recv = |rx: &mut mpsc::Receiver<Result<Snapshot, Status>>| {
            let mut n = Vec::new();
            while let Ok(s) = rx.try_recv() {
                n.push(s.unwrap());
            }
            n
        };
        let mut got = (Vec::new(), Vec::new(), Vec::new());
        let t = tokio::time::Instant::now();
        while got.0.len() < 3 || got.1.len() < 2 || got.2.is_empty() {
            assert!(t.elapsed() < Duration::from_secs(10), "streams did not deliver: {} {} {}", got.0.len(), got.1.len(), got.2.len());
            got.0.extend(recv(&mut wide));
            got.1.extend(recv(&mut narrow));
            got.2.extend(recv(&mut other));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(got.1.iter().all(|s| s.top_by_cpu.len() <= 1 && s.top_by_memory.len() <= 1));
        assert!(got.0.iter().any(|s| s.top_by_memory.len() > 1), "the wide stream keeps its length");
        // Counts reached: each stream ends (its sender is dropped) and so do the producers.
        for rx in [&mut wide, &mut narrow, &mut other] {
            assert!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().is_none());
        }
        let t = tokio::time::Instant::now();
        while hub.producers() > 0 {
            assert!(t.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn shutdown_ends_every_stream() {
        let (hub, stop) = hub();
        let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        hub.subscribe(tx, MIN_STREAM_INTERVAL, 1, 0, Box::new(Flag(ended.clone())));
        rx.recv().await.unwrap().unwrap();
        stop.send(true).unwrap();
        while rx.recv().await.is_some() {}
        assert!(ended.load(std::sync::atomic::Ordering::SeqCst), "the stream's end guard was dropped");
    }
}
