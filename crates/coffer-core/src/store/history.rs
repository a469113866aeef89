//! History: what the store keeps of superseded versions, and what it serves from them.
//!
//! - [`Store::get_at`] and lists with a `resource_version` read the keyspace as it was at a
//!   revision (see [`super::Store::list`]).
//! - [`Store::history`]: a Secret's kept versions, newest first; a delete is a version of its own
//!   whose object is the state it removed.
//! - [`Store::changes_after`]: every change after a revision, decrypted, in order: what a watch
//!   resuming from storage replays (also after a restart).
//! - [`Store::compact`] raises the compaction revision (the etcd door's Compact calls it), and
//!   [`Store::run_retention`] does so in the background for versions superseded longer ago than
//!   the retention.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::{
    ChangeEvent, EventKind, SECRET_PREFIX, Store, StoreError, backend_key, check_key_parts,
};
use crate::model::{ObjectMeta, Secret};
use crate::storage::mvcc::{Change, HistoryStats, Version};

/// The most versions one History call returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// How often a shared keyspace's revision is published when no change arrives.
const FEED_TICK: Duration = Duration::from_millis(50);
/// The longest [`Store::await_revision`] waits.
const AWAIT_REVISION: Duration = Duration::from_secs(10);

/// One kept version of a Secret.
#[derive(Debug)]
pub struct HistoryEntry {
    /// The revision that wrote this version (for a delete: the delete's).
    pub revision: u64,
    /// Whether this version is a delete.
    pub deleted: bool,
    /// Whether this version created the Secret (its first, or the first after a delete).
    pub created: bool,
    /// When it was written, in milliseconds since the Unix epoch (`None`: not known, as for
    /// versions from before history was kept).
    pub written_ms: Option<u64>,
    /// The object as this version left it; for a delete, the state it removed (`None` only if
    /// that state is no longer kept).
    pub secret: Option<Secret>,
}

/// A Secret's history.
#[derive(Debug)]
pub struct HistoryPage {
    /// Newest first.
    pub versions: Vec<HistoryEntry>,
    /// Reads below this revision are refused; older versions are gone.
    pub compact_revision: u64,
}

impl Store {
    /// Up to `limit` kept versions of a Secret (0: up to [`MAX_HISTORY_LIMIT`]), newest first;
    /// [`StoreError::NotFound`] when nothing of it is kept.
    pub async fn history(
        &self,
        namespace: &str,
        name: &str,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        check_key_parts(namespace, name)?;
        let limit = match limit {
            0 => MAX_HISTORY_LIMIT,
            n => n.min(MAX_HISTORY_LIMIT),
        };
        let key = crate::model::storage_key(namespace, name);
        self.mvcc.read_barrier().await?;
        // One more than asked: a delete's object is the version just below it.
        let versions = self.mvcc.history(backend_key(&key).as_bytes(), limit + 1)?;
        self.mvcc.wait_durable(self.mvcc.applied()).await?;
        if versions.is_empty() {
            return Err(StoreError::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        }
        let mut out = Vec::with_capacity(limit);
        for (i, v) in versions.iter().enumerate().take(limit) {
            if v.is_delete() {
                let removed = match versions.get(i + 1) {
                    Some(p) if p.mod_revision == v.prev_revision && !p.is_delete() => {
                        match self.open_version(&key, p).await? {
                            Some(s) => Some(s),
                            // A value only the etcd door serves: its delete is not shown.
                            None => continue,
                        }
                    }
                    _ => None,
                };
                out.push(HistoryEntry {
                    revision: v.mod_revision,
                    deleted: true,
                    created: false,
                    written_ms: (v.written_ms != 0).then_some(v.written_ms),
                    secret: removed.map(|mut s| {
                        s.metadata.resource_version = v.mod_revision;
                        s
                    }),
                });
            } else {
                // A value only the etcd door serves is not a version the Secret service shows.
                let Some(secret) = self.open_version(&key, v).await? else {
                    continue;
                };
                out.push(HistoryEntry {
                    revision: v.mod_revision,
                    deleted: false,
                    created: v.version == 1,
                    written_ms: (v.written_ms != 0).then_some(v.written_ms),
                    secret: Some(secret),
                });
            }
        }
        Ok(HistoryPage {
            versions: out,
            compact_revision: self.mvcc.compact_revision(),
        })
    }

    /// Up to `limit` changes after revision `after` and at or below `until`, decrypted, in
    /// revision order, as a watch shows them: an object's first version is `Added`, later ones
    /// `Modified`, a delete `Deleted` with the state it removed. [`StoreError::TooOld`] below
    /// the compaction revision.
    pub async fn changes_after(
        &self,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<ChangeEvent>, StoreError> {
        let changes = self.mvcc.changes(after, limit)?;
        self.mvcc.wait_durable(self.mvcc.applied()).await?;
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            if change.kv.mod_revision > until {
                break;
            }
            if let Some(event) = self.change_event(&change).await? {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// A stored change as a watch shows it (`None` for keys that are not Secrets, and for
    /// changes the Secret service does not show).
    async fn change_event(&self, change: &Change) -> Result<Option<ChangeEvent>, StoreError> {
        let revision = change.kv.mod_revision;
        let Some(key) = secret_key(&change.kv) else {
            return Ok(None);
        };
        // What the version before showed (`None`: nothing, or a value only the etcd door
        // serves, such as one the API server encrypted itself).
        let shown_before = match &change.prev {
            Some(prev) if !prev.is_delete() => self.open_version(&key, prev).await?,
            _ => None,
        };
        let (kind, mut object) = if change.kv.is_delete() {
            match (shown_before, &change.prev) {
                (Some(last), _) => (EventKind::Deleted, last),
                // The removed state is compacted away.
                (None, None) => (EventKind::Deleted, bare_object(&key)),
                // A value only the etcd door served: its delete is not shown.
                (None, Some(_)) => return Ok(None),
            }
        } else {
            match (self.open_version(&key, &change.kv).await?, shown_before) {
                (Some(now), Some(_)) => (EventKind::Modified, now),
                (Some(now), None) if change.kv.version == 1 || change.prev.is_some() => {
                    (EventKind::Added, now)
                }
                // The version before is compacted away: judge by the version number.
                (Some(now), None) => (EventKind::Modified, now),
                // Now a value only the door serves: gone from the Secret service's view.
                (None, Some(last)) => (EventKind::Deleted, last),
                (None, None) => return Ok(None),
            }
        };
        object.metadata.resource_version = revision;
        Ok(Some(ChangeEvent {
            kind,
            object,
            revision,
        }))
    }

    /// On a shared keyspace (replicas over one etcd), publishes every committed change, this
    /// process's and the others', in revision order, each decrypted once, until `shutdown`:
    /// what feeds the watch hub and the etcd door's watches. Returns at once on a keyspace
    /// this store alone writes (its writes publish themselves). A change that cannot be opened
    /// (its seed unknown to the KMS, say) is logged and skipped.
    pub async fn run_feed(&self, shutdown: CancellationToken) {
        let Some(mut feed) = self.feed.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        // Writes to keys that are not Secrets (seeds, the election, other programs' keys)
        // move the storage's revision without a change here: the published revision follows
        // it on a short tick, so that a watch from such a revision is not refused as too large.
        let mut tick = tokio::time::interval(FEED_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                c = feed.recv() => match c {
                    Some(c) => self.publish_change(c).await,
                    None => return,
                },
                _ = tick.tick() => {}
            }
            // Every change at or below the storage's revision read here is already in the
            // feed (the storage queues changes before it advances): drain them, then publish
            // the revision.
            let reached = self.mvcc.revision();
            while let Ok(c) = feed.try_recv() {
                self.publish_change(c).await;
            }
            self.publish_revision(reached);
        }
    }

    async fn publish_change(&self, change: Change) {
        let revision = change.kv.mod_revision;
        match self.change_event(&change).await {
            Ok(Some(event)) => {
                // No subscribers is fine: the event simply has no audience.
                let _ = self.events.send(std::sync::Arc::new(event));
            }
            Ok(None) => {}
            Err(e) => tracing::error!(revision, error = %e,
                "a change from the shared storage cannot be opened; watchers miss it"),
        }
        self.publish_revision(revision);
    }

    fn publish_revision(&self, revision: u64) {
        self.published.send_if_modified(|r| {
            let newer = revision > *r;
            if newer {
                *r = revision;
            }
            newer
        });
    }

    /// On a shared keyspace, waits until this store has published every change up to
    /// `revision`, when the storage has reached it (a client that wrote on one replica and
    /// watches on another from the revision it got is not refused as too large while this
    /// replica catches up). At once on a keyspace this store alone writes.
    pub async fn await_revision(&self, revision: u64) -> Result<(), StoreError> {
        if !self.shared || revision <= *self.published.borrow() {
            return Ok(());
        }
        self.mvcc.read_barrier().await?;
        let target = revision.min(self.mvcc.revision());
        let mut rx = self.published.subscribe();
        match tokio::time::timeout(AWAIT_REVISION, rx.wait_for(|r| *r >= target)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::Unavailable(format!(
                "this replica has not caught up to revision {target} yet"
            ))),
        }
    }

    /// Raises the compaction revision to `revision` and removes the versions it makes
    /// unreadable. [`StoreError::TooOld`] when it is below the compaction revision already,
    /// [`StoreError::TooLarge`] above the current revision.
    pub async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        Ok(self.mvcc.compact(revision).await?)
    }

    /// How much history is kept (for metrics).
    pub fn history_stats(&self) -> HistoryStats {
        self.mvcc.stats()
    }

    /// The retention set at open ([`super::StoreConfig::history_retention`]).
    pub fn history_retention(&self) -> Duration {
        self.retention
    }

    /// Compacts away, every `interval` until `shutdown`, the versions superseded longer ago than
    /// the retention (with zero retention, whatever an earlier run kept). Errors are logged and
    /// retried at the next round.
    pub async fn run_retention(&self, interval: Duration, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.retain_once().await {
                tracing::warn!(error = %e, "history compaction failed; retrying later");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One round of [`Store::run_retention`]: returns the compaction revision after it. On a
    /// shared keyspace only the elected replica compacts ([`Store::is_leader`]).
    pub async fn retain_once(&self) -> Result<u64, StoreError> {
        if !self.mvcc.is_leader() {
            return Ok(self.mvcc.compact_revision());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let cutoff = now.saturating_sub(self.retention).as_millis() as u64;
        if self.retention.is_zero() {
            if self.mvcc.stats().versions > 0 {
                self.compact(self.mvcc.revision()).await?;
            }
            return Ok(self.mvcc.compact_revision());
        }
        let target = self.mvcc.revision_at_time(cutoff)?;
        if target > self.mvcc.compact_revision() {
            self.compact(target).await?;
        }
        Ok(self.mvcc.compact_revision())
    }
}

/// The storage key `namespace/name` of a Secret's version (`None` for keys that are not
/// Secrets).
fn secret_key(v: &Version) -> Option<String> {
    let key = std::str::from_utf8(&v.key).ok()?;
    key.strip_prefix(SECRET_PREFIX).map(str::to_owned)
}

/// An object carrying only its namespace and name (a delete whose removed state is gone).
fn bare_object(key: &str) -> Secret {
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    Secret {
        metadata: ObjectMeta {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    }
}
