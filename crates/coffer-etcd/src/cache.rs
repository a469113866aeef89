//! The watch-fed copy of the current versioned keys: what reads at the latest revision are
//! served from, and what hands every committed change, in revision order, to the engine.
//!
//! The watch covers the store's whole prefix (versioned and unversioned keys), so each of
//! Coffer's own writes moves the cache's revision to the write's. Its revision advances with each
//! watch response: to the last event's revision for events, to the header's revision for a
//! periodic progress notification (etcd sends those, with the watch's id, only to a watcher that
//! has been sent every event up to it). A reader that needs a linearizable answer asks etcd for
//! its current revision and waits until the cache has caught up ([`Cache::wait_for`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coffer_core::storage::StorageError;
use coffer_core::storage::mvcc::{Change, Version, VersionKind};
use tokio::sync::{mpsc, watch};

/// How many (time, revision) samples are kept for retention by age (one per
/// [`SAMPLE_EVERY`]: a day's worth).
const MAX_SAMPLES: usize = 8640;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Cache {
    kvs: RwLock<BTreeMap<Vec<u8>, Version>>,
    revision: watch::Sender<u64>,
    feed: mpsc::UnboundedSender<Change>,
    feed_rx: Mutex<Option<mpsc::UnboundedReceiver<Change>>>,
    /// (unix ms, revision) pairs, oldest first.
    samples: Mutex<VecDeque<(u64, u64)>>,
    /// The revision of the newest watch event under the store's prefix: a watch from an older
    /// revision is sure to deliver an event at exactly this one (history and change replays
    /// stop there).
    last_event: std::sync::atomic::AtomicU64,
}

impl Cache {
    /// A cache holding `kvs`, the keyspace at `revision`.
    pub(crate) fn new(kvs: Vec<Version>, revision: u64) -> Self {
        let (feed, feed_rx) = mpsc::unbounded_channel();
        let me = Self {
            kvs: RwLock::new(kvs.into_iter().map(|v| (v.key.clone(), v)).collect()),
            revision: watch::channel(revision).0,
            feed,
            feed_rx: Mutex::new(Some(feed_rx)),
            samples: Mutex::new(VecDeque::new()),
            last_event: std::sync::atomic::AtomicU64::new(0),
        };
        me.sample(revision);
        me
    }

    pub(crate) fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    pub(crate) fn take_feed(&self) -> Option<mpsc::UnboundedReceiver<Change>> {
        self.feed_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Version> {
        self.read().get(key).cloned()
    }

    pub(crate) fn range(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<Version> {
        use std::ops::Bound;
        let kvs = self.read();
        let start = match start_after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        kvs.range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub(crate) fn all(&self) -> Vec<Version> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Version>> {
        self.kvs.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision of the newest event under the prefix (0: none seen yet).
    pub(crate) fn last_event(&self) -> u64 {
        self.last_event.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Applies the changes of one watch response (in revision order; `last` is its newest
    /// event's revision, which may be an unversioned key's) and hands them on.
    pub(crate) fn apply(&self, changes: Vec<Change>, last: u64) {
        {
            let mut kvs = self.kvs.write().unwrap_or_else(|p| p.into_inner());
            for c in &changes {
                match c.kv.kind {
                    VersionKind::Put => {
                        kvs.insert(c.kv.key.clone(), c.kv.clone());
                    }
                    VersionKind::Delete => {
                        kvs.remove(&c.kv.key);
                    }
                }
            }
        }
        for c in changes {
            // Nobody subscribed (a tool opening the store): the changes have no audience.
            let _ = self.feed.send(c);
        }
        self.last_event
            .fetch_max(last, std::sync::atomic::Ordering::AcqRel);
        self.advance(last);
    }

    /// A progress notification: every change up to `revision` has been applied.
    pub(crate) fn advance(&self, revision: u64) {
        self.revision.send_if_modified(|r| {
            let newer = revision > *r;
            if newer {
                *r = revision;
            }
            newer
        });
        self.sample(revision);
    }

    /// Replaces the whole keyspace with `kvs` at `revision` (after the watch fell behind a
    /// compaction), handing on what changed as changes at their own revisions and deletes at
    /// `revision`: the history in between is gone.
    pub(crate) fn replace(&self, kvs: Vec<Version>, revision: u64) {
        let new: BTreeMap<Vec<u8>, Version> = kvs.into_iter().map(|v| (v.key.clone(), v)).collect();
        let mut changes = Vec::new();
        {
            let mut old = self.kvs.write().unwrap_or_else(|p| p.into_inner());
            for (k, v) in &new {
                let prev = old.get(k);
                if prev.is_none_or(|p| p.mod_revision != v.mod_revision) {
                    changes.push(Change {
                        kv: v.clone(),
                        prev: prev.cloned(),
                    });
                }
            }
            changes.sort_by_key(|c| c.kv.mod_revision);
            for (k, v) in old.iter() {
                if !new.contains_key(k) {
                    changes.push(Change {
                        kv: Version {
                            key: k.clone(),
                            kind: VersionKind::Delete,
                            create_revision: 0,
                            mod_revision: revision,
                            version: 0,
                            lease: 0,
                            prev_revision: v.mod_revision,
                            written_ms: 0,
                            value: Vec::new(),
                        },
                        prev: Some(v.clone()),
                    });
                }
            }
            *old = new;
        }
        for c in changes {
            let _ = self.feed.send(c);
        }
        self.advance(revision);
    }

    /// Waits until the cache has applied every change up to `target`; when no event arrives
    /// for a while, `quiet(from, target)` is asked whether nothing under the prefix changed in
    /// `(from, target]` (the newest writes were someone else's keys), and the cache advances to
    /// `target` if so. [`StorageError::Unavailable`] after `timeout`.
    ///
    /// etcd's own progress requests are not used: before etcd 3.4.24/3.5.8 their answer can
    /// overtake the events it claims were sent (Debian ships 3.4.23).
    pub(crate) async fn wait_for<F, Fut>(
        &self,
        target: u64,
        timeout: Duration,
        quiet: F,
    ) -> Result<(), StorageError>
    where
        F: Fn(u64, u64) -> Fut,
        Fut: std::future::Future<Output = Result<bool, StorageError>>,
    {
        let mut rx = self.revision.subscribe();
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            if *rx.borrow_and_update() >= target {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StorageError::Unavailable(format!(
                    "the replica's copy of etcd is at revision {}, behind etcd's {target}, after {timeout:?}",
                    self.revision()
                )));
            }
            if let Ok(Err(_)) = tokio::time::timeout(pause.min(left), rx.changed()).await {
                return Err(StorageError::Unavailable("the etcd watch is closed".into()));
            }
            let now = *rx.borrow();
            if now < target {
                // Nothing arrived in time: the newest writes may be outside the watched keys.
                if quiet(now, target).await? {
                    self.advance(target);
                    return Ok(());
                }
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }

    fn sample(&self, revision: u64) {
        let now = unix_ms();
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.back()
            .is_some_and(|(t, _)| now.saturating_sub(*t) < SAMPLE_EVERY.as_millis() as u64)
        {
            return;
        }
        s.push_back((now, revision));
        if s.len() > MAX_SAMPLES {
            s.pop_front();
        }
    }

    /// The newest sampled revision at or before `unix_ms`.
    pub(crate) fn revision_at(&self, unix_ms: u64) -> Option<u64> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s.iter().rev().find(|(t, _)| *t <= unix_ms).map(|(_, r)| *r)
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
