//! The watch hub: routes each change event to the watchers it concerns.
//!
//! One feeder task reads the store's change events, appends each to the [`EventWindow`] (which
//! serves resumes), converts it to its wire `WatchEvent` **once** ([`HubEvent`]), and pushes an
//! `Arc` of it straight into the [`StreamQueue`] of every live watcher that matches: a live
//! watcher has no task of its own, only its entry here. Watchers are indexed by (namespace, name), by name
//! alone (a name selector without a namespace), by namespace, and a short list of cluster-wide
//! watchers, so an event costs work proportional to its own receivers, not to the number of
//! open watches.
//!
//! The feeder never waits: a watcher whose queue is full is removed from the index and its
//! stream told so (ABORTED, with the revision it can resume from). The same task sends the
//! periodic bookmarks of the watchers that asked for them, and ends every Watch stream at
//! shutdown.
//!
//! Ownership runs one way: the hub's index holds each watcher's [`Sink`] (its queue); the
//! stream owns the watcher's [`Registration`], which holds only a `Weak` to the hub. So the hub
//! never keeps itself alive through a watcher, and dropping a stream unregisters its watcher.
//!
//! [`StreamQueue`]: super::queue::StreamQueue

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::event::{HubEvent, fell_behind, wire_event};
use super::queue::{Item, Sink};
use super::spec::{SpecCache, SpecKey, WatchSpec};
use super::window::{EventWindow, WindowLimits};
use crate::server::metrics::Metrics;
use crate::server::status;
use coffer_core::model::Secret;
use coffer_core::store::{ChangeEvent, Store};

/// Where a watcher is indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    /// One object: namespace and name.
    Object(String, String),
    /// One name in every namespace.
    Name(String),
    /// One namespace.
    Namespace(String),
    /// Everything.
    Cluster,
}

impl Key {
    fn of(spec: &WatchSpec) -> Self {
        let ns = if spec.namespace().is_empty() {
            spec.fields().exact_namespace()
        } else {
            Some(spec.namespace())
        };
        match (ns, spec.fields().exact_name()) {
            (Some(ns), Some(n)) => Key::Object(ns.to_owned(), n.to_owned()),
            (None, Some(n)) => Key::Name(n.to_owned()),
            (Some(ns), None) => Key::Namespace(ns.to_owned()),
            (None, None) => Key::Cluster,
        }
    }
}

#[derive(Debug)]
struct Entry {
    id: u64,
    spec: Arc<WatchSpec>,
    sink: Sink,
    /// Changes up to this revision were sent already (while catching up).
    after: u64,
}

#[derive(Debug, Default)]
struct Index {
    /// namespace -> name -> watchers.
    objects: HashMap<String, HashMap<String, Vec<Entry>>>,
    names: HashMap<String, Vec<Entry>>,
    namespaces: HashMap<String, Vec<Entry>>,
    cluster: Vec<Entry>,
}

fn remove_from(v: &mut Vec<Entry>, id: u64) -> Option<Entry> {
    let pos = v.iter().position(|e| e.id == id)?;
    let e = v.swap_remove(pos);
    if v.capacity() > 4 && v.len() < v.capacity() / 4 {
        v.shrink_to_fit();
    }
    Some(e)
}

impl Index {
    fn slot(&mut self, key: Key) -> &mut Vec<Entry> {
        match key {
            Key::Object(ns, n) => self.objects.entry(ns).or_default().entry(n).or_default(),
            Key::Name(n) => self.names.entry(n).or_default(),
            Key::Namespace(ns) => self.namespaces.entry(ns).or_default(),
            Key::Cluster => &mut self.cluster,
        }
    }

    fn remove(&mut self, key: &Key, id: u64) -> Option<Entry> {
        match key {
            Key::Object(ns, n) => {
                let names = self.objects.get_mut(ns)?;
                let v = names.get_mut(n)?;
                let e = remove_from(v, id);
                if v.is_empty() {
                    names.remove(n);
                    if names.is_empty() {
                        self.objects.remove(ns);
                    }
                }
                e
            }
            Key::Name(n) => {
                let v = self.names.get_mut(n)?;
                let e = remove_from(v, id);
                if v.is_empty() {
                    self.names.remove(n);
                }
                e
            }
            Key::Namespace(ns) => {
                let v = self.namespaces.get_mut(ns)?;
                let e = remove_from(v, id);
                if v.is_empty() {
                    self.namespaces.remove(ns);
                }
                e
            }
            Key::Cluster => remove_from(&mut self.cluster, id),
        }
    }

    fn contains(&self, key: &Key, id: u64) -> bool {
        let v = match key {
            Key::Object(ns, n) => self.objects.get(ns).and_then(|m| m.get(n)),
            Key::Name(n) => self.names.get(n),
            Key::Namespace(ns) => self.namespaces.get(ns),
            Key::Cluster => Some(&self.cluster),
        };
        v.is_some_and(|v| v.iter().any(|e| e.id == id))
    }

    /// Every watcher that may want an event about `s` (each must still check its selectors).
    fn candidates<'a>(&'a self, s: &Secret) -> impl Iterator<Item = &'a Entry> + 'a {
        let ns = s.metadata.namespace.as_str();
        let name = s.metadata.name.as_str();
        let objects = self
            .objects
            .get(ns)
            .and_then(|m| m.get(name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let names = self.names.get(name).map(Vec::as_slice).unwrap_or_default();
        let namespaces = self
            .namespaces
            .get(ns)
            .map(Vec::as_slice)
            .unwrap_or_default();
        objects
            .iter()
            .chain(names)
            .chain(namespaces)
            .chain(&self.cluster)
    }

    fn all(&self) -> impl Iterator<Item = &Entry> {
        self.objects
            .values()
            .flat_map(HashMap::values)
            .chain(self.names.values())
            .chain(self.namespaces.values())
            .flatten()
            .chain(&self.cluster)
    }

    fn drain_all(&mut self) -> Vec<Entry> {
        let mut all = std::mem::take(&mut self.cluster);
        for (_, m) in self.objects.drain() {
            for (_, v) in m {
                all.extend(v);
            }
        }
        for (_, v) in self.names.drain() {
            all.extend(v);
        }
        for (_, v) in self.namespaces.drain() {
            all.extend(v);
        }
        all
    }
}

/// The hub (see the module doc).
#[derive(Debug)]
pub(crate) struct Hub {
    /// Counts the live watchers (a catching-up one counts itself).
    metrics: Arc<Metrics>,
    specs: SpecCache,
    window: Arc<EventWindow>,
    index: RwLock<Index>,
    /// The newest revision handed to every watcher registered at the time.
    dispatched: AtomicU64,
    next_id: AtomicU64,
    /// Set when the feeder stops: nothing registers after that.
    stopped: AtomicBool,
}

/// A live watcher's place in the hub; dropping it unregisters the watcher. Owned by the
/// watcher's stream (a WatchMany stream's task holds one per watch); it holds the hub weakly:
/// the hub's index reaches the watcher's queue, never this.
#[derive(Debug)]
pub(crate) struct Registration {
    hub: Weak<Hub>,
    id: u64,
    spec: Arc<WatchSpec>,
}

impl Registration {
    /// Whether the hub still routes events to this watcher (it drops one that fell behind).
    pub(crate) fn is_live(&self) -> bool {
        self.hub
            .upgrade()
            .is_some_and(|hub| hub.read().contains(&Key::of(&self.spec), self.id))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A hub that is gone has dropped its index, and this watcher with it.
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let removed = hub.write().remove(&Key::of(&self.spec), self.id);
        if removed.is_some() {
            hub.metrics.add_watches(-1);
        }
    }
}

/// Why a watcher could not be registered.
#[derive(Debug)]
pub(crate) enum RegisterError {
    /// The changes it still needed have left the window.
    TooOld(Status),
    /// Its queue filled while the last changes were added to it: they are queued up to
    /// `after`; retry from there once there is room.
    Full { after: u64 },
    /// Its stream is gone.
    Gone,
    /// The server is stopping.
    ShuttingDown,
}

impl Hub {
    /// Subscribes to `store` and starts the feeder; it stops with `shutdown` (ending every
    /// Watch stream) or when the store's event channel closes.
    pub(crate) fn start(
        store: &Arc<Store>,
        metrics: Arc<Metrics>,
        window: WindowLimits,
        bookmark_interval: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let mut rx = store.subscribe();
        // Subscribed first: every change after `floor` reaches the feeder.
        let floor = store.revision();
        let hub = Arc::new(Self {
            metrics,
            specs: SpecCache::default(),
            window: Arc::new(EventWindow::new(floor, window)),
            index: RwLock::new(Index::default()),
            dispatched: AtomicU64::new(floor),
            next_id: AtomicU64::new(1),
            stopped: AtomicBool::new(false),
        });
        let h = hub.clone();
        let period = bookmark_interval.max(Duration::from_millis(1));
        // The window ages even when nothing is written.
        let expiry = window.age.map_or(Duration::from_secs(60), |a| {
            (a / 4).max(Duration::from_millis(10))
        });
        tokio::spawn(async move {
            let mut bookmarks = tokio::time::interval_at(Instant::now() + period, period);
            bookmarks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut expire = tokio::time::interval_at(Instant::now() + expiry, expiry);
            expire.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = bookmarks.tick() => {
                        h.send_bookmarks();
                        continue;
                    }
                    _ = expire.tick() => {
                        h.window.expire();
                        continue;
                    }
                    ev = rx.recv() => ev,
                };
                match ev {
                    Ok(ev) => h.publish(&ev),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "watch hub fell behind the store's events; ending every watch"
                        );
                        let rv = h.dispatched();
                        h.end_all(&fell_behind(rv), false);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            h.end_all(&status::shutting_down(), true);
        });
        hub
    }

    /// The spec for `key`: one already in use by another watch, or a new one from `parse`.
    pub(crate) fn spec<E>(
        &self,
        key: SpecKey,
        parse: impl FnOnce(&SpecKey) -> Result<WatchSpec, E>,
    ) -> Result<Arc<WatchSpec>, E> {
        self.specs.get(key, parse)
    }

    /// The window of recent events.
    pub(crate) fn window(&self) -> &EventWindow {
        &self.window
    }

    /// The newest revision dispatched.
    pub(crate) fn dispatched(&self) -> u64 {
        self.dispatched.load(Ordering::Acquire)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a watcher live: every matching change after `cursor` reaches `sink`. The changes
    /// after `cursor` that were dispatched already (a few, when the caller caught up from the
    /// window while they happened) are queued first, from the window.
    pub(crate) fn register(
        self: &Arc<Self>,
        spec: Arc<WatchSpec>,
        sink: Sink,
        cursor: u64,
    ) -> Result<Registration, RegisterError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut index = self.write();
        if self.stopped.load(Ordering::Acquire) {
            return Err(RegisterError::ShuttingDown);
        }
        if sink.queue().is_gone() {
            return Err(RegisterError::Gone);
        }
        // Under the write lock no dispatch is in progress: `dispatched` is exact, and the
        // window holds every change up to it.
        let dispatched = self.dispatched.load(Ordering::Acquire);
        let mut after = cursor;
        while after < dispatched {
            let batch = self
                .window
                .read_after(after, 128)
                .map_err(|t| RegisterError::TooOld(status::too_old(after, t.floor)))?;
            let Some(last) = batch.last().map(|e| e.revision) else {
                break;
            };
            for ev in batch.iter().filter(|e| e.revision <= dispatched) {
                if spec.matches(&ev.object) {
                    let item = Item::Owned(sink.watch_id(), Box::new(wire_event(ev)));
                    if sink.queue().try_push(item).is_err() {
                        return Err(RegisterError::Full { after });
                    }
                }
                after = ev.revision;
            }
            if last >= dispatched {
                break;
            }
        }
        let key = Key::of(&spec);
        index.slot(key).push(Entry {
            id,
            spec: spec.clone(),
            sink,
            after: cursor.max(dispatched),
        });
        drop(index);
        self.metrics.add_watches(1);
        Ok(Registration {
            hub: Arc::downgrade(self),
            id,
            spec,
        })
    }

    fn publish(&self, ev: &Arc<ChangeEvent>) {
        self.window.push(ev.clone());
        let mut full = Vec::new();
        {
            let index = self.read();
            let mut shared: Option<Arc<HubEvent>> = None;
            for e in index.candidates(&ev.object) {
                if ev.revision <= e.after || !e.spec.matches(&ev.object) {
                    continue;
                }
                let item = shared
                    .get_or_insert_with(|| Arc::new(HubEvent::of(ev)))
                    .clone();
                if e.sink
                    .queue()
                    .try_push(Item::Shared(e.sink.watch_id(), item))
                    .is_err()
                {
                    full.push((Key::of(&e.spec), e.id));
                }
            }
            // Still under the read lock: a registration sees every event up to here dispatched.
            self.dispatched.store(ev.revision, Ordering::Release);
        }
        if !full.is_empty() {
            let mut index = self.write();
            for (key, id) in full {
                if let Some(e) = index.remove(&key, id) {
                    self.metrics.add_watches(-1);
                    // Every matching change before this one is in its queue.
                    e.sink.end(&fell_behind(ev.revision - 1));
                }
            }
        }
    }

    /// Queues a bookmark for every live watcher that asked for them (skipping one whose queue
    /// is full: it is behind anyway). Under the write lock, so that no change is being queued
    /// at the same time: the bookmark follows every change up to its revision.
    fn send_bookmarks(&self) {
        let index = self.write();
        let dispatched = self.dispatched.load(Ordering::Acquire);
        let mut shared: Option<Arc<HubEvent>> = None;
        for e in index.all().filter(|e| e.spec.wants_bookmarks()) {
            let item = if e.after > dispatched {
                Arc::new(HubEvent::bookmark(e.after))
            } else {
                shared
                    .get_or_insert_with(|| Arc::new(HubEvent::bookmark(dispatched)))
                    .clone()
            };
            let _ = e
                .sink
                .queue()
                .try_push(Item::Shared(e.sink.watch_id(), item));
        }
    }

    /// Ends every live watcher with `s` (the hub missed events), or every Watch stream at
    /// shutdown (`stop`: a WatchMany stream's own task ends it as a whole).
    fn end_all(&self, s: &Status, stop: bool) {
        let all = {
            let mut index = self.write();
            if stop {
                self.stopped.store(true, Ordering::Release);
            }
            index.drain_all()
        };
        self.metrics
            .add_watches(-i64::try_from(all.len()).unwrap_or(i64::MAX));
        for e in all {
            if !(stop && matches!(e.sink, Sink::Many(..))) {
                e.sink.end(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::watch::queue::StreamQueue;
    use coffer_core::store::StoreConfig;
    use coffer_testkit::engine::{TestKms, open_store};

    /// The Arc cycle of old (registration -> hub -> index -> queue -> registration) is gone: a
    /// live registration does not keep a stopped hub alive, and dropping it afterwards is a
    /// no-op.
    #[tokio::test]
    async fn a_registration_does_not_keep_the_hub_alive() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, _) = open_store(
            dir.path(),
            TestKms::open(dir.path(), 1),
            StoreConfig::default(),
        )
        .await;
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();
        let limits = WindowLimits {
            events: 16,
            bytes: 1 << 20,
            age: None,
        };
        let hub = Hub::start(
            &Arc::new(store),
            metrics.clone(),
            limits,
            Duration::from_secs(60),
            shutdown.clone(),
        );
        let key = SpecKey {
            namespace: "ns".into(),
            label_selector: String::new(),
            field_selector: String::new(),
            bookmarks: false,
        };
        let spec = hub.spec(key, WatchSpec::parse).expect("spec");
        let queue = StreamQueue::new(4);
        let registration = hub
            .register(spec, Sink::Single(queue.clone()), hub.dispatched())
            .expect("registered");
        assert!(registration.is_live());
        // Stopping the feeder ends the watcher and drops the feeder's reference to the hub.
        shutdown.cancel();
        let weak = Arc::downgrade(&hub);
        drop(hub);
        for _ in 0..200 {
            if weak.strong_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            weak.strong_count(),
            0,
            "the registration kept the hub alive"
        );
        assert!(!registration.is_live());
        drop(registration);
    }
}
