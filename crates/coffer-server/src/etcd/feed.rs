//! The door's change feed: one task reads every published revision's changes from the store
//! once, decrypts the door's keys once, and broadcasts them, in revision order and whole
//! revisions at a time, to every watch stream. A stream that falls behind the broadcast's
//! buffer reads what it missed from the store's history instead ([`read_changes`]).

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use coffer_core::storage::mvcc::Revision;
use coffer_core::store::raw::RawKv;
use coffer_core::store::{Store, StoreError};
use zeroize::Zeroizing;

/// How many batches a stream may lag before it reads from history instead.
const BROADCAST_CAPACITY: usize = 1024;
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

/// What the feed broadcasts.
#[derive(Debug)]
pub(super) struct Batch {
    /// Every change up to this revision has been broadcast.
    pub through: Revision,
    /// The changes of the door's keys after the previous batch, in revision order.
    pub events: Vec<DoorEvent>,
    /// Set when the changes could not be read because history was compacted past them: the
    /// watches cannot go on.
    pub compacted: Option<Revision>,
}

/// The feed's handle: subscribe to its batches.
#[derive(Debug, Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<Batch>>,
    /// The `through` of the latest batch sent. Sending a batch and moving this, or skipping
    /// revisions no stream listens to, happen under this lock, and so does subscribing: a new
    /// stream either receives a batch or starts after it, never neither.
    through: Arc<Mutex<Revision>>,
}

fn lock(m: &Mutex<Revision>) -> std::sync::MutexGuard<'_, Revision> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Feed {
    /// Starts the feed task over `store`.
    pub(super) fn start(store: Arc<Store>, shutdown: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let mut published = store.published();
        let start = *published.borrow_and_update();
        let through = Arc::new(Mutex::new(start));
        let feed = Self {
            tx: tx.clone(),
            through: through.clone(),
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
                    let mut t = lock(&through);
                    if tx.receiver_count() == 0 {
                        // No watch stream: nothing to read or decrypt (a stream that subscribes
                        // later starts from `through`).
                        cursor = target;
                        *t = cursor;
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
                    let mut t = lock(&through);
                    // No stream listening is fine.
                    let _ = tx.send(Arc::new(batch));
                    *t = cursor;
                }
            }
        });
        feed
    }

    /// Subscribes, and says up to which revision the feed has already broadcast: the receiver
    /// gets every later batch.
    pub(super) fn subscribe(&self) -> (broadcast::Receiver<Arc<Batch>>, Revision) {
        let t = lock(&self.through);
        let rx = self.tx.subscribe();
        (rx, *t)
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
