//! The watch hub: routes each change event to the watchers it concerns.
//!
//! One feeder task reads the store's change events, appends each to the [`EventWindow`] (which
//! serves resumes), converts it to its wire `WatchEvent` **once**, and hands an `Arc` of it to
//! every watcher that matches. Watchers are indexed by (namespace, name), by name alone (a name
//! selector without a namespace), by namespace, and a short list of cluster-wide watchers, so an
//! event costs work proportional to its own receivers, not to the number of open watches.
//!
//! Every watcher has a bounded queue ([`WATCH_QUEUE`] events). The feeder never waits: it
//! `try_send`s, and a watcher whose queue is full is removed from the index and told so through
//! its `overflow` token; it then ends with a resumable status carrying the last
//! resource_version it delivered (see [`super::watch`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::convert::secret_to_proto;
use super::watch::{EventWindow, WatchSpec};
use crate::model::Secret;
use crate::proto::v1 as pb;
use crate::proto::v1::watch_event::Type as EventType;
use crate::store::{ChangeEvent, EventKind, Store};

/// Events queued per watcher before it is ended as too slow. A tokio channel allocates its slots
/// in blocks of 32 as they fill, so an idle watcher costs one block whatever this is.
pub(crate) const WATCH_QUEUE: usize = 128;

/// One change, converted once and shared by every receiver.
#[derive(Debug)]
pub(crate) struct HubEvent {
    /// The store revision of the change.
    pub(crate) revision: u64,
    /// The wire event (the full Secret, or its last state for DELETED).
    pub(crate) event: pb::WatchEvent,
}

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
    tx: mpsc::Sender<Arc<HubEvent>>,
    overflow: CancellationToken,
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
    Some(v.swap_remove(pos))
}

impl Index {
    fn insert(&mut self, key: &Key, e: Entry) {
        match key {
            Key::Object(ns, n) => self
                .objects
                .entry(ns.clone())
                .or_default()
                .entry(n.clone())
                .or_default()
                .push(e),
            Key::Name(n) => self.names.entry(n.clone()).or_default().push(e),
            Key::Namespace(ns) => self.namespaces.entry(ns.clone()).or_default().push(e),
            Key::Cluster => self.cluster.push(e),
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
    window: Arc<EventWindow>,
    index: RwLock<Index>,
    /// The newest revision handed to every watcher registered at the time.
    dispatched: AtomicU64,
    next_id: AtomicU64,
}

/// A watcher's place in the hub; dropping it unregisters the watcher.
#[derive(Debug)]
pub(crate) struct Registration {
    hub: Arc<Hub>,
    id: u64,
    key: Key,
    /// Every change up to this revision was dispatched before the watcher was registered (read
    /// those from the window); every later one reaches its queue.
    pub(crate) registered_at: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let removed = self.hub.write().remove(&self.key, self.id);
        drop(removed);
    }
}

impl Hub {
    /// Subscribes to `store` and starts the feeder; it stops with `shutdown` (or when the
    /// store's event channel closes).
    pub(crate) fn start(
        store: &Arc<Store>,
        max_events: usize,
        max_bytes: usize,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let mut rx = store.subscribe();
        // Subscribed first: every change after `floor` reaches the feeder.
        let floor = store.revision();
        let hub = Arc::new(Self {
            window: Arc::new(EventWindow::new(floor, max_events, max_bytes)),
            index: RwLock::new(Index::default()),
            dispatched: AtomicU64::new(floor),
            next_id: AtomicU64::new(1),
        });
        let h = hub.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = rx.recv() => ev,
                };
                match ev {
                    Ok(ev) => h.publish(&ev),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "watch hub fell behind the store's events; ending every watch"
                        );
                        h.evict_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        hub
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

    /// Registers a watcher: matching events go to `tx`; `overflow` is cancelled if the queue
    /// is ever full (the watcher is then already unregistered).
    pub(crate) fn register(
        self: &Arc<Self>,
        spec: Arc<WatchSpec>,
        tx: mpsc::Sender<Arc<HubEvent>>,
        overflow: CancellationToken,
    ) -> Registration {
        let key = Key::of(&spec);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut index = self.write();
        // Under the write lock no dispatch is in progress: `dispatched` is exact.
        let registered_at = self.dispatched.load(Ordering::Acquire);
        index.insert(
            &key,
            Entry {
                id,
                spec,
                tx,
                overflow,
            },
        );
        drop(index);
        Registration {
            hub: self.clone(),
            id,
            key,
            registered_at,
        }
    }

    fn publish(&self, ev: &Arc<ChangeEvent>) {
        self.window.push(ev.clone());
        let mut full = Vec::new();
        {
            let index = self.read();
            let mut shared: Option<Arc<HubEvent>> = None;
            for e in index.candidates(&ev.object) {
                if !e.spec.matches(&ev.object) {
                    continue;
                }
                let item = shared.get_or_insert_with(|| Arc::new(convert(ev))).clone();
                match e.tx.try_send(item) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => full.push((Key::of(&e.spec), e.id)),
                    // The watcher is going away; its registration removes it.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            // Still under the read lock: a registration sees every event up to here dispatched.
            self.dispatched.store(ev.revision, Ordering::Release);
        }
        if !full.is_empty() {
            let mut index = self.write();
            for (key, id) in full {
                if let Some(e) = index.remove(&key, id) {
                    e.overflow.cancel();
                }
            }
        }
    }

    /// Ends every registered watcher (the hub missed events, so none of them can go on).
    fn evict_all(&self) {
        let all = self.write().drain_all();
        for e in all {
            e.overflow.cancel();
        }
    }
}

fn convert(ev: &ChangeEvent) -> HubEvent {
    let kind = match ev.kind {
        EventKind::Added => EventType::Added,
        EventKind::Modified => EventType::Modified,
        EventKind::Deleted => EventType::Deleted,
    };
    HubEvent {
        revision: ev.revision,
        event: pb::WatchEvent {
            r#type: kind as i32,
            object: Some(secret_to_proto(&ev.object)),
        },
    }
}
