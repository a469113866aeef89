//! The door's change feed: one task reads every published revision's changes from the store
//! once, decrypts the door's keys once, and routes each batch, in revision order and whole
//! revisions at a time, to the watch streams that hold a watch on one of its keys. A stream
//! whose inbox is full loses the batch and is told so; it reads what it missed from the store's
//! history instead ([`read_changes`]).
//!
//! Routing, not broadcasting: with 10,000 streams each watching its own key, a broadcast woke
//! all 10,000 stream tasks for every revision to find the one that cared, and an update behind
//! it waited for them (a door update took 35 ms at 100 updates a second, etcd's 3.6 ms). Single
//! keys are looked up in a map; the other ranges (prefixes, intervals: kube-apiserver holds a
//! few) are scanned per event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use coffer_core::storage::mvcc::Revision;
use coffer_core::store::raw::{KeyRange, RawKv};
use coffer_core::store::{Store, StoreError};
use zeroize::Zeroizing;

/// Changes read from the store per round.
const CHUNK: usize = 512;

/// One change of a door key.
#[derive(Debug)]
pub(super) struct DoorEvent {
    /// A delete (the key's tombstone) rather than a put.
    pub delete: bool,
    /// The new version (for a delete: the key and the delete's revision only).
    pub kv: RawKv,
    /// The version it replaced, when kept.
    pub prev: Option<RawKv>,
}

/// What the feed routes.
#[derive(Debug)]
pub(super) struct Batch {
    /// Every change up to this revision has been routed.
    pub through: Revision,
    /// The changes of the door's keys after the previous batch, in revision order.
    pub events: Vec<DoorEvent>,
    /// Set when the changes could not be read because history was compacted past them: the
    /// watches cannot go on (sent to every stream).
    pub compacted: Option<Revision>,
}

/// Which stream.
type StreamId = u64;

#[derive(Debug)]
struct Mailbox {
    tx: mpsc::Sender<Arc<Batch>>,
    /// Set when a batch did not fit.
    lagged: Arc<AtomicBool>,
}

/// Who receives what. Routing a batch and moving `through`, registering a watch and reading
/// `through`, happen under one lock: a watch either receives a batch or starts after it.
#[derive(Debug, Default)]
struct Routes {
    /// The `through` of the latest batch routed (or of revisions skipped while nobody watched).
    through: Revision,
    next_stream: StreamId,
    mailboxes: HashMap<StreamId, Mailbox>,
    /// Single-key watches: for each key, each stream's number of watches on it.
    keys: HashMap<Vec<u8>, HashMap<StreamId, u32>>,
    /// Every other watch, by stream and watch id.
    ranges: HashMap<(StreamId, i64), KeyRange>,
}

impl Routes {
    fn watching(&self) -> bool {
        !self.keys.is_empty() || !self.ranges.is_empty()
    }

    fn add(&mut self, stream: StreamId, watch: i64, range: &KeyRange) {
        match range {
            KeyRange::Single(k) => {
                *self
                    .keys
                    .entry(k.clone())
                    .or_default()
                    .entry(stream)
                    .or_default() += 1;
            }
            r => {
                self.ranges.insert((stream, watch), r.clone());
            }
        }
    }

    fn remove(&mut self, stream: StreamId, watch: i64, range: &KeyRange) {
        match range {
            KeyRange::Single(k) => {
                if let Some(streams) = self.keys.get_mut(k.as_slice()) {
                    if let Some(n) = streams.get_mut(&stream) {
                        *n -= 1;
                        if *n == 0 {
                            streams.remove(&stream);
                        }
                    }
                    if streams.is_empty() {
                        self.keys.remove(k.as_slice());
                    }
                }
            }
            _ => {
                self.ranges.remove(&(stream, watch));
            }
        }
    }

    /// The streams `batch` concerns, each once.
    fn recipients(&self, batch: &Batch) -> Vec<StreamId> {
        if batch.compacted.is_some() {
            return self.mailboxes.keys().copied().collect();
        }
        let mut to = Vec::new();
        for e in &batch.events {
            let key = e.kv.key.as_slice();
            if let Some(streams) = self.keys.get(key) {
                to.extend(streams.keys().copied());
            }
            to.extend(
                self.ranges
                    .iter()
                    .filter(|(_, r)| r.contains(key))
                    .map(|((s, _), _)| *s),
            );
        }
        to.sort_unstable();
        to.dedup();
        to
    }

    /// Hands `batch` to the streams it concerns; one whose inbox is full is marked lagged.
    fn route(&mut self, batch: Batch) {
        self.through = batch.through;
        let to = self.recipients(&batch);
        if to.is_empty() {
            return;
        }
        let batch = Arc::new(batch);
        for id in to {
            if let Some(m) = self.mailboxes.get(&id)
                && let Err(mpsc::error::TrySendError::Full(_)) = m.tx.try_send(batch.clone())
            {
                m.lagged.store(true, Ordering::Release);
            }
        }
    }
}

/// The feed's handle: open an inbox for a watch stream.
#[derive(Debug, Clone)]
pub struct Feed {
    routes: Arc<Mutex<Routes>>,
    /// How many batches a stream may have waiting before it reads from history instead.
    inbox_capacity: usize,
}

fn lock(m: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Feed {
    /// Starts the feed task over `store`.
    pub(super) fn start(
        store: Arc<Store>,
        shutdown: CancellationToken,
        inbox_capacity: usize,
    ) -> Self {
        let mut published = store.published();
        let start = *published.borrow_and_update();
        let routes = Arc::new(Mutex::new(Routes {
            through: start,
            ..Routes::default()
        }));
        let feed = Self {
            routes: routes.clone(),
            inbox_capacity,
        };
        tokio::spawn(async move {
            let mut cursor = start;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = published.changed() => if changed.is_err() { return },
                }
                let target = *published.borrow_and_update();
                {
                    let mut r = lock(&routes);
                    if !r.watching() {
                        // No watch: nothing to read or decrypt (a watch created later starts
                        // from `through`).
                        cursor = target;
                        r.through = cursor;
                        continue;
                    }
                }
                while cursor < target {
                    let batch = match read_changes(&store, cursor, target, |_| true).await {
                        Ok((events, reached)) => Batch {
                            through: reached,
                            events,
                            compacted: None,
                        },
                        Err(StoreError::TooOld { compacted, .. }) => Batch {
                            through: target,
                            events: Vec::new(),
                            compacted: Some(compacted),
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "etcd door: cannot read changes; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    cursor = batch.through;
                    lock(&routes).route(batch);
                }
            }
        });
        feed
    }

    /// A new stream's inbox; it receives every batch routed after the revision it starts at.
    pub(super) fn open(&self) -> Inbox {
        let (tx, rx) = mpsc::channel(self.inbox_capacity);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut r = lock(&self.routes);
        let id = r.next_stream;
        r.next_stream += 1;
        r.mailboxes.insert(
            id,
            Mailbox {
                tx,
                lagged: lagged.clone(),
            },
        );
        Inbox {
            id,
            rx,
            lagged,
            start: r.through,
            routes: self.routes.clone(),
        }
    }
}

/// One watch stream's side of the feed: the batches routed to it, and its watches' ranges
/// registered for routing. Dropping it unregisters the stream, not its watches: the owner
/// passes them to [`Inbox::close`].
#[derive(Debug)]
pub(super) struct Inbox {
    id: StreamId,
    rx: mpsc::Receiver<Arc<Batch>>,
    lagged: Arc<AtomicBool>,
    /// The feed's `through` when the inbox was opened.
    pub(super) start: Revision,
    routes: Arc<Mutex<Routes>>,
}

impl Inbox {
    /// The next batch routed here (`None` once the feed is gone).
    pub(super) async fn recv(&mut self) -> Option<Arc<Batch>> {
        self.rx.recv().await
    }

    /// A batch already waiting.
    pub(super) fn try_recv(&mut self) -> Option<Arc<Batch>> {
        self.rx.try_recv().ok()
    }

    /// Routes `range`'s changes here from now on; returns the revision routing starts after.
    pub(super) fn watch(&self, watch: i64, range: &KeyRange) -> Revision {
        let mut r = lock(&self.routes);
        r.add(self.id, watch, range);
        r.through
    }

    /// Stops routing a watch's changes here.
    pub(super) fn unwatch(&self, watch: i64, range: &KeyRange) {
        lock(&self.routes).remove(self.id, watch, range);
    }

    /// The revision every batch routed so far reached: each batch for this stream at or below
    /// it is waiting in the inbox already (or it lagged).
    pub(super) fn through(&self) -> Revision {
        lock(&self.routes).through
    }

    /// Whether a batch was lost because the inbox was full.
    pub(super) fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }

    /// After a lag: empties the inbox and returns the revision a read of history must reach;
    /// every later batch for this stream will be routed here again.
    pub(super) fn resync(&mut self) -> Revision {
        let r = lock(&self.routes);
        self.lagged.store(false, Ordering::Release);
        while self.rx.try_recv().is_ok() {}
        r.through
    }

    /// Unregisters the stream and its watches.
    pub(super) fn close<'a>(&self, watches: impl Iterator<Item = (i64, &'a KeyRange)>) {
        let mut r = lock(&self.routes);
        for (id, range) in watches {
            r.remove(self.id, id, range);
        }
        r.mailboxes.remove(&self.id);
    }
}

/// Reads the changes after `after` up to `until` (whole revisions only), decrypting the door
/// keys that `wanted` selects (others are skipped). Returns the events and the revision it
/// reached (`until` unless a revision had to wait for the next call).
pub(super) async fn read_changes(
    store: &Store,
    after: Revision,
    until: Revision,
    wanted: impl Fn(&[u8]) -> bool,
) -> Result<(Vec<DoorEvent>, Revision), StoreError> {
    let mut limit = CHUNK;
    loop {
        let mut changes = store.raw_changes(after, limit)?;
        store.raw_settle().await?;
        let full = changes.len() >= limit;
        let beyond = changes.last().is_some_and(|c| c.kv.mod_revision > until);
        changes.retain(|c| c.kv.mod_revision <= until);
        let mut reached = until;
        if full
            && !beyond
            && let Some(last) = changes.last().map(|c| c.kv.mod_revision)
        {
            let first = changes.first().map_or(last, |c| c.kv.mod_revision);
            if first == last {
                // One revision fills the chunk: read more at once (a delete of a whole range
                // is one revision).
                limit = limit.saturating_mul(4);
                continue;
            }
            // The last revision may go on past the chunk: leave it for the next call.
            changes.retain(|c| c.kv.mod_revision < last);
            reached = last - 1;
        }
        let mut events = Vec::new();
        for c in changes {
            let key = c.kv.key.as_slice();
            if !wanted(key) {
                continue;
            }
            let delete = c.kv.is_delete();
            let kv = if delete {
                RawKv {
                    key: key.to_vec(),
                    create_revision: 0,
                    mod_revision: c.kv.mod_revision,
                    version: 0,
                    lease: 0,
                    value: Zeroizing::new(Vec::new()),
                }
            } else {
                store.open_raw(&c.kv, true).await?
            };
            let prev = match &c.prev {
                Some(p) => Some(store.open_raw(p, true).await?),
                None => None,
            };
            events.push(DoorEvent { delete, kv, prev });
        }
        return Ok((events, reached));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8], revision: Revision) -> DoorEvent {
        DoorEvent {
            delete: false,
            kv: RawKv {
                key: key.to_vec(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
                value: Zeroizing::new(b"v".to_vec()),
            },
            prev: None,
        }
    }

    fn batch(through: Revision, keys: &[&[u8]]) -> Batch {
        Batch {
            through,
            events: keys.iter().map(|k| put(k, through)).collect(),
            compacted: None,
        }
    }

    const CAPACITY: usize = 16;

    fn feed() -> Feed {
        Feed {
            routes: Arc::new(Mutex::new(Routes::default())),
            inbox_capacity: CAPACITY,
        }
    }

    fn route(f: &Feed, b: Batch) {
        lock(&f.routes).route(b);
    }

    fn received(inbox: &mut Inbox) -> Vec<Revision> {
        std::iter::from_fn(|| inbox.try_recv())
            .map(|b| b.through)
            .collect()
    }

    #[test]
    fn a_batch_reaches_only_the_streams_watching_one_of_its_keys_once_each() {
        let f = feed();
        let (mut a, mut b, mut c) = (f.open(), f.open(), f.open());
        a.watch(0, &KeyRange::from_etcd(b"/k/1", b""));
        a.watch(1, &KeyRange::from_etcd(b"/k/1", b""));
        a.watch(2, &KeyRange::from_etcd(b"/k/", b"/k0"));
        b.watch(0, &KeyRange::from_etcd(b"/k/2", b""));
        c.watch(0, &KeyRange::from_etcd(b"/other/", b"/other0"));
        route(&f, batch(1, &[b"/k/1"]));
        route(&f, batch(2, &[b"/k/2", b"/k/1"]));
        route(&f, batch(3, &[b"/elsewhere"]));
        assert_eq!(
            received(&mut a),
            [1, 2],
            "one copy per batch, not per watch"
        );
        assert_eq!(received(&mut b), [2]);
        assert_eq!(received(&mut c), Vec::<Revision>::new());
        assert_eq!(
            a.through(),
            3,
            "a batch nobody wants still moves the revision"
        );

        // A compaction reaches every stream.
        lock(&f.routes).route(Batch {
            through: 4,
            events: Vec::new(),
            compacted: Some(4),
        });
        assert_eq!(received(&mut c), [4]);
    }

    #[test]
    fn unwatching_and_closing_remove_the_routes() {
        let f = feed();
        let (mut a, b) = (f.open(), f.open());
        let one = KeyRange::from_etcd(b"/k/1", b"");
        let all = KeyRange::from_etcd(b"/k/", b"/k0");
        a.watch(0, &one);
        a.watch(1, &one);
        a.watch(2, &all);
        b.watch(0, &one);
        a.unwatch(1, &one);
        route(&f, batch(1, &[b"/k/1"]));
        assert_eq!(
            received(&mut a),
            [1],
            "a's other watch on the key still routes"
        );
        a.unwatch(0, &one);
        a.unwatch(2, &all);
        route(&f, batch(2, &[b"/k/1"]));
        assert_eq!(received(&mut a), Vec::<Revision>::new());
        b.close([(0, &one)].into_iter());
        let r = lock(&f.routes);
        assert!(!r.watching() && r.mailboxes.len() == 1, "{r:?}");
    }

    #[test]
    fn a_full_inbox_marks_the_stream_lagged_and_a_resync_empties_it() {
        let f = feed();
        let (mut a, mut b) = (f.open(), f.open());
        let key = KeyRange::from_etcd(b"/k", b"");
        a.watch(0, &key);
        b.watch(0, &key);
        for rev in 1..=CAPACITY as Revision + 1 {
            route(&f, batch(rev, &[b"/k"]));
            // b keeps up.
            assert_eq!(received(&mut b), [rev]);
        }
        assert!(a.lagged() && !b.lagged());
        assert_eq!(a.resync(), CAPACITY as Revision + 1);
        assert!(!a.lagged());
        assert_eq!(received(&mut a), Vec::<Revision>::new());
        route(&f, batch(2000, &[b"/k"]));
        assert_eq!(received(&mut a), [2000], "routed again after the resync");
    }
}
