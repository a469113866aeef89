//! [`KvMvcc`]: the versioned keyspace over an ordered key-value [`Backend`] (the layout is in
//! the `layout` module).
//!
//! The current version of each key is kept in place (`l/<key>`), so that a read at the latest
//! revision is one get, and each write appends a small change row (`r/<rev><idx>`). The write
//! that supersedes a version rewrites that version's change row in place to hold it: a
//! replace of a row that exists, where a copy under its own key (`h/<key><rev>`, as the layout
//! before wrote) was a new key at a random place in key order, two thirds of what an update's
//! rows cost sled (README, "The write path"). An in-memory index (`super::index`, as etcd keeps
//! its key index) says which rows hold a key's versions. A version whose change row is gone
//! (written by the layout before, whose compaction removed every change row below it) is still
//! copied under `h/` when it is superseded.
//!
//! A commit is one backend batch, ordered so that any prefix a crash could keep of an
//! unacknowledged batch is harmless: the revision first, then the change rows (a superseded
//! version's, filled; the new one's) and copies, then the new current versions. A change row
//! whose version never became current is such a batch's leftover: open removes it (and indexes
//! nothing for it), so it is never served; a filled row or a copy of a version that is still
//! current holds what its `l/` row holds.
//!
//! Compaction first raises the compaction revision durably (so no reader relies on what is about
//! to go), then walks the change rows up to it in bounded batches, removing for each key it
//! names every version older than the one that was current at the compaction revision (and that
//! one too when it is a tombstone). The current version's small row stays, for the write that
//! will fill it. Writers only add versions above the current revision and fill the row of a
//! version that is current, which compaction keeps, so compaction needs no writer lock.
//! Resealing (`replace_values`) and compaction exclude each other with the maintenance lock, so
//! a resealed value is never written back over a version compaction just removed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::index::{KeyIndex, Place, Row};
use super::layout::{self, Entry};
use super::{
    Change, Committed, HistoryStats, Mvcc, Revision, StoredValue, Txn, Version, VersionKind, Write,
};
use crate::storage::{Backend, Batch, Lsn, Op, StorageError};

/// Backend rows per scan round.
const CHUNK: usize = 256;
/// Backend ops per compaction batch (bounded, so a writer never waits long behind one).
const COMPACT_BATCH_OPS: usize = 1024;
/// The key recording whether history was kept by the last open (`1`) or not.
const HISTORY_FLAG_KEY: &[u8] = b"m/history";

/// The versioned keyspace over an ordered key-value backend.
#[derive(Debug)]
pub struct KvMvcc {
    raw: Arc<dyn Backend>,
    /// Whether superseded versions are kept (`--history-retention 0` turns it off: then only the
    /// current version exists and the compaction revision follows the current one).
    keep_history: bool,
    /// Serialises commits; holds the last committed revision and the live keys.
    commit: Mutex<Committer>,
    /// Which rows hold each key's versions other than its current one. Written under the
    /// commit lock (after the backend has the rows, before the revision is published).
    index: RwLock<KeyIndex>,
    /// The latest committed revision, for readers.
    revision: AtomicU64,
    compact: AtomicU64,
    /// Kept superseded versions and their bytes.
    versions: AtomicU64,
    bytes: AtomicU64,
    /// Compaction and resealing exclude each other (see the module docs).
    maintenance: Mutex<()>,
    /// The backend keeps a digest of its values: a commit hands it the hash of each current
    /// version it replaces ([`Op::PutOver`]), read once here instead of twice.
    hash_prior: bool,
}

impl KvMvcc {
    /// Opens the keyspace in `raw`. With `keep_history` off, no superseded version is kept (and
    /// any history an earlier run kept is compacted away by the next [`Mvcc::compact`]).
    pub fn open(raw: Arc<dyn Backend>, keep_history: bool) -> Result<Self, StorageError> {
        let stored = raw.get(layout::REVISION_KEY)?;
        let mut revision = layout::parse_u64(stored.clone(), "m/revision")?;
        if stored.is_none() && raw.scan(b"", None, 1)?.is_empty() {
            // A new keyspace starts at revision 1, as etcd's does (clients treat 0 as "no
            // revision"); the first write gets 2.
            revision = 1;
            let mut batch = Batch::new();
            batch.put(layout::REVISION_KEY, revision.to_be_bytes().to_vec());
            batch.put(
                HISTORY_FLAG_KEY,
                if keep_history { &b"1"[..] } else { b"0" },
            );
            raw.apply(batch)?;
        }
        let mut compact = layout::parse_u64(raw.get(layout::COMPACT_KEY)?, "m/compact")?;
        let had_history = raw.get(HISTORY_FLAG_KEY)?.is_some_and(|v| v == b"1");
        if keep_history != had_history {
            let mut batch = Batch::new();
            batch.put(
                HISTORY_FLAG_KEY,
                if keep_history { &b"1"[..] } else { b"0" },
            );
            if keep_history && revision > compact {
                // Writes made while history was off left no older versions: reads below the
                // current revision have nothing to serve.
                compact = revision;
                batch.put(layout::COMPACT_KEY, compact.to_be_bytes().to_vec());
            }
            raw.apply(batch)?;
        }
        let live = live_keys(raw.as_ref())?;
        let (index, versions, bytes) = build_index(raw.as_ref(), &live)?;
        let hash_prior = raw.digests_values();
        Ok(Self {
            raw,
            keep_history,
            commit: Mutex::new(Committer {
                last: revision,
                live,
            }),
            index: RwLock::new(index),
            revision: AtomicU64::new(revision),
            compact: AtomicU64::new(compact),
            versions: AtomicU64::new(versions),
            bytes: AtomicU64::new(bytes),
            maintenance: Mutex::new(()),
            hash_prior,
        })
    }

    /// Whether superseded versions are kept.
    pub fn keeps_history(&self) -> bool {
        self.keep_history
    }

    /// The backend under the keyspace.
    pub fn raw(&self) -> &Arc<dyn Backend> {
        &self.raw
    }

    /// Waits for the backend's durability of `lsn`.
    pub async fn wait_durable_raw(&self, lsn: Lsn) -> Result<(), StorageError> {
        self.raw.wait_durable(lsn).await
    }

    /// Moves a value stored outside the keyspace (at backend key `from`) in as `key`'s current
    /// version, written at `revision`, in one atomic batch: the upgrade from the layout before
    /// history. The compaction revision is raised to the current revision, as nothing older
    /// than what is imported exists.
    pub fn import_current(
        &self,
        from: &[u8],
        key: Vec<u8>,
        revision: Revision,
        value: Vec<u8>,
    ) -> Result<Lsn, StorageError> {
        let mut commit = self.lock_commit();
        let version = Version {
            key,
            kind: VersionKind::Put,
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: 0,
            prev_revision: 0,
            written_ms: 0,
            value,
        };
        let current = self.revision();
        let mut batch = Batch::new();
        batch.put(layout::latest_key(&version.key), Entry::encode(&version));
        if self.keep_history && self.compact.load(Ordering::Acquire) < current {
            batch.put(layout::COMPACT_KEY, current.to_be_bytes().to_vec());
            self.compact.fetch_max(current, Ordering::AcqRel);
        }
        batch.delete(from.to_vec());
        let lsn = self.raw.apply(batch)?;
        commit.live.insert(version.key.into_boxed_slice());
        Ok(lsn)
    }

    fn lock_commit(&self) -> MutexGuard<'_, Committer> {
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_maintenance(&self) -> MutexGuard<'_, ()> {
        self.maintenance.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_index(&self) -> RwLockReadGuard<'_, KeyIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> RwLockWriteGuard<'_, KeyIndex> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The version `row` holds for `key` (`None` when compaction removed it meanwhile).
    fn read_row(&self, key: &[u8], row: Row) -> Result<Option<Version>, StorageError> {
        match row.place {
            Place::History => self
                .raw
                .get(&layout::history_key(key, row.revision))?
                .map(|raw| Entry::decode(key, &raw))
                .transpose(),
            Place::Change(idx) => {
                let Some(raw) = self.raw.get(&layout::change_key(row.revision, idx))? else {
                    return Ok(None);
                };
                let change = layout::parse_change_value(&raw)?;
                if change.key != key {
                    return Err(StorageError::Corrupt(
                        "a change row holds another key than its index says".into(),
                    ));
                }
                match change.version()? {
                    Some(v) => Ok(Some(v)),
                    // A small row: its version is still current.
                    None => Ok(self.latest(key)?.filter(|v| v.mod_revision == row.revision)),
                }
            }
        }
    }

    /// `key`'s version written at exactly `revision`, if one is stored.
    fn version_at(&self, key: &[u8], revision: Revision) -> Result<Option<Version>, StorageError> {
        let row = self.read_index().exact(key, revision);
        match row {
            Some(row) => self.read_row(key, row),
            None => Ok(self.latest(key)?.filter(|v| v.mod_revision == revision)),
        }
    }

    fn latest(&self, key: &[u8]) -> Result<Option<Version>, StorageError> {
        self.raw
            .get(&layout::latest_key(key))?
            .map(|raw| Entry::decode(key, &raw))
            .transpose()
    }

    /// As [`KvMvcc::latest`], with the hash of the stored entry for [`Op::PutOver`] when the
    /// backend wants it (`None` when it does not; `Some(None)` for an absent key).
    fn latest_hashed(&self, key: &[u8]) -> Result<(Option<Version>, Prior), StorageError> {
        let raw = self.raw.get(&layout::latest_key(key))?;
        let prior = self
            .hash_prior
            .then(|| raw.as_deref().map(crate::crypto::integrity::value_hash));
        let version = raw.map(|raw| Entry::decode(key, &raw)).transpose()?;
        Ok((version, prior))
    }

    /// As [`KvMvcc::latest_hashed`], without a backend read for a key `live` does not hold.
    fn current(
        &self,
        live: &HashSet<Box<[u8]>>,
        key: &[u8],
    ) -> Result<(Option<Version>, Prior), StorageError> {
        if live.contains(key) {
            return self.latest_hashed(key);
        }
        debug_assert!(
            self.raw.get(&layout::latest_key(key))?.is_none(),
            "a key with a current version is missing from the live set"
        );
        Ok((None, self.hash_prior.then_some(None)))
    }

    /// The version a stored row `k` holds, for resealing, and whether it is current; `None` for
    /// a small change row (its version is the current one, in `l/`).
    fn stored_at(&self, k: &[u8], raw: &[u8]) -> Result<Option<(Version, bool)>, StorageError> {
        if k.starts_with(layout::HISTORY) {
            let (key, _) = layout::parse_history_key(k)?;
            return Ok(Some((Entry::decode(&key, raw)?, false)));
        }
        if let Some(key) = k.strip_prefix(layout::LATEST) {
            return Ok(Some((Entry::decode(key, raw)?, true)));
        }
        let change = layout::parse_change_value(raw)?;
        Ok(change.version()?.map(|v| (v, false)))
    }

    /// The version of `key` current at `at` (a tombstone when it was deleted then).
    fn floor(&self, key: &[u8], at: Revision) -> Result<Option<Version>, StorageError> {
        if let Some(v) = self.latest(key)?
            && v.mod_revision <= at
        {
            return Ok(Some(v));
        }
        let row = self.read_index().floor(key, at);
        match row {
            Some(row) => self.read_row(key, row),
            None => Ok(None),
        }
    }

    /// Checks that `at` can be read (see [`StorageError::Compacted`] and
    /// [`StorageError::FutureRevision`]).
    fn check_readable(&self, at: Revision) -> Result<(), StorageError> {
        let current = self.revision();
        if at > current {
            return Err(StorageError::FutureRevision {
                requested: at,
                current,
            });
        }
        let compacted = self.compact_revision();
        if at < compacted {
            return Err(StorageError::Compacted {
                requested: at,
                compacted,
            });
        }
        Ok(())
    }

    /// After a read at `at`: compaction may have started under it, and then what it read may be
    /// missing versions.
    fn recheck_compaction(&self, at: Revision) -> Result<(), StorageError> {
        let compacted = self.compact_revision();
        if at < compacted {
            return Err(StorageError::Compacted {
                requested: at,
                compacted,
            });
        }
        Ok(())
    }

    /// The first key after `cursor` (from the start of `prefix` when `None`) that has a current
    /// version or kept history.
    fn next_key(
        &self,
        prefix: &[u8],
        cursor: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let latest_prefix = layout::latest_key(prefix);
        let latest_after = cursor.map(layout::latest_key);
        let live = self
            .raw
            .scan(&latest_prefix, latest_after.as_deref(), 1)?
            .into_iter()
            .next()
            .map(|(k, _)| k[layout::LATEST.len()..].to_vec());
        let old = self.read_index().next_key(prefix, cursor);
        Ok(match (live, old) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Checks `txn`'s conditions against the applied state and turns it into ops, at
    /// `revision` when it changes a key (see the module docs for their order).
    fn stage(
        &self,
        live: &HashSet<Box<[u8]>>,
        txn: Txn,
        revision: Revision,
        now: u64,
    ) -> Result<Staged, StorageError> {
        let mut known: Vec<(&[u8], Option<Version>, Prior)> = Vec::new();
        for c in &txn.conditions {
            let (current, prior) = self.current(live, &c.key)?;
            let mod_revision = current.as_ref().map_or(0, |v| v.mod_revision);
            if mod_revision != c.mod_revision {
                return Err(StorageError::ConditionFailed {
                    key: String::from_utf8_lossy(&c.key).into_owned(),
                    expected: c.mod_revision,
                    current: mod_revision,
                });
            }
            known.push((&c.key, current, prior));
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = txn.writes.iter().find(|w| !seen.insert(w.key())) {
            return Err(StorageError::Invalid(format!(
                "key {:?} is written twice in one transaction",
                String::from_utf8_lossy(dup.key())
            )));
        }
        let mut staged = Staged::default();
        let mut finals = Vec::new();
        for write in &txn.writes {
            let key = write.key();
            // A condition on the key read it already.
            let (old, prior) = match known.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, v, prior)) => (v.take(), prior.take()),
                None => self.current(live, key)?,
            };
            let next = match (write, &old) {
                (Write::Delete { .. }, None) => {
                    staged.prev.push(None);
                    continue;
                }
                (Write::Put { value, lease, .. }, _) => Version {
                    key: key.to_vec(),
                    kind: VersionKind::Put,
                    create_revision: old.as_ref().map_or(revision, |o| o.create_revision),
                    mod_revision: revision,
                    version: old.as_ref().map_or(1, |o| o.version + 1),
                    lease: *lease,
                    prev_revision: old.as_ref().map_or(0, |o| o.mod_revision),
                    written_ms: now,
                    value: value.clone(),
                },
                (Write::Delete { .. }, Some(o)) => Version {
                    key: key.to_vec(),
                    kind: VersionKind::Delete,
                    create_revision: o.create_revision,
                    mod_revision: revision,
                    version: 0,
                    lease: 0,
                    prev_revision: o.mod_revision,
                    written_ms: now,
                    value: Vec::new(),
                },
            };
            let entry = Entry::encode(&next);
            if self.keep_history {
                if let Some(o) = &old {
                    staged.kept += 1;
                    staged.kept_bytes += self.keep_superseded(key, o, &mut staged);
                }
                let (value, bytes) = if next.is_delete() {
                    // The tombstone lives in its change row from the start.
                    staged.kept += 1;
                    staged.kept_bytes += entry.len() as i64;
                    (
                        layout::change_value_with(now, key, &entry),
                        entry.len() as u32,
                    )
                } else {
                    (layout::change_value(now, key), 0)
                };
                staged
                    .history
                    .push(Op::Put(layout::change_key(revision, staged.changed), value));
                staged.indexed.push((
                    key.to_vec(),
                    Row {
                        revision,
                        place: Place::Change(staged.changed),
                        bytes,
                    },
                ));
            }
            staged.changed += 1;
            finals.push((next, prior, entry));
            staged.prev.push(old);
        }
        for (v, prior, entry) in finals {
            staged.live.push((v.key.clone(), !v.is_delete()));
            let key = layout::latest_key(&v.key);
            staged.current.push(match (v.kind, prior) {
                (VersionKind::Put, Some(prior)) => Op::PutOver(key, entry, prior),
                (VersionKind::Put, None) => Op::Put(key, entry),
                (VersionKind::Delete, _) => Op::Delete(key),
            });
        }
        staged.keys = txn
            .conditions
            .into_iter()
            .map(|c| c.key)
            .chain(txn.writes.iter().map(|w| w.key().to_vec()))
            .collect();
        staged.meta = txn.meta;
        Ok(staged)
    }

    /// Keeps `o`, the version of `key` a write supersedes: its change row is rewritten in place
    /// to hold it, or, without one, it is copied under `h/`. Returns the bytes kept.
    fn keep_superseded(&self, key: &[u8], o: &Version, staged: &mut Staged) -> i64 {
        let row = self.read_index().exact(key, o.mod_revision);
        let entry = match row {
            // Copied already (the layout before, or a crash that kept part of a write).
            Some(Row {
                place: Place::History,
                bytes,
                ..
            }) => return i64::from(bytes),
            _ => Entry::encode(o),
        };
        let bytes = entry.len() as u32;
        let (place, op) = match row {
            Some(Row {
                place: Place::Change(idx),
                ..
            }) => (
                Place::Change(idx),
                Op::Put(
                    layout::change_key(o.mod_revision, idx),
                    layout::change_value_with(o.written_ms, key, &entry),
                ),
            ),
            _ => (
                Place::History,
                Op::Put(layout::history_key(key, o.mod_revision), entry),
            ),
        };
        staged.history.push(op);
        staged.indexed.push((
            key.to_vec(),
            Row {
                revision: o.mod_revision,
                place,
                bytes,
            },
        ));
        i64::from(bytes)
    }

    /// Applies the staged group as one backend batch (the revision first, then every
    /// transaction's history and change index entries, then the current versions, then the
    /// unversioned writes) and answers its transactions.
    fn apply_group(
        &self,
        commit: &mut Committer,
        group: &mut Group,
        results: &mut [Option<Result<Committed, StorageError>>],
    ) {
        let group = std::mem::take(group);
        if group.members.is_empty() {
            return;
        }
        let revision = commit.last + group.revisions;
        let mut batch = Batch::new();
        if group.revisions > 0 {
            batch.put(layout::REVISION_KEY, revision.to_be_bytes().to_vec());
        }
        batch.ops.extend(group.history);
        batch.ops.extend(group.current);
        batch.ops.extend(group.meta);
        // The rows go into the index before the batch is applied: a reader that finds the new
        // current version must find the copy of the one it superseded. Until then the old
        // version is still current, read from `l/`, and the new rows are above every
        // published revision, which no read selects.
        if !group.indexed.is_empty() {
            let mut index = self.write_index();
            for (key, row) in &group.indexed {
                index.insert(key, *row);
            }
        }
        let lsn = if batch.ops.is_empty() {
            Ok(self.raw.applied())
        } else {
            self.raw.apply(batch)
        };
        match lsn {
            Ok(lsn) => {
                commit.last = revision;
                for (key, live) in group.live {
                    if live {
                        commit.live.insert(key.into_boxed_slice());
                    } else {
                        commit.live.remove(key.as_slice());
                    }
                }
                self.revision.store(revision, Ordering::Release);
                self.add_history(group.kept, group.kept_bytes);
                for (index, taken, prev) in group.members {
                    results[index] = Some(Ok(Committed {
                        revision: revision - group.revisions + taken,
                        lsn,
                        prev,
                    }));
                }
            }
            Err(e) => {
                self.forget(
                    group
                        .indexed
                        .into_iter()
                        .map(|(key, row)| (key, row.revision))
                        .collect(),
                );
                let message = e.to_string();
                let mut first = Some(e);
                for (index, _, _) in group.members {
                    results[index] = Some(Err(first
                        .take()
                        .unwrap_or_else(|| StorageError::Failed(message.clone()))));
                }
            }
        }
    }

    fn add_history(&self, versions: i64, bytes: i64) {
        if versions >= 0 {
            self.versions.fetch_add(versions as u64, Ordering::Relaxed);
        } else {
            sub_saturating(&self.versions, versions.unsigned_abs());
        }
        if bytes >= 0 {
            self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        } else {
            sub_saturating(&self.bytes, bytes.unsigned_abs());
        }
    }

    /// Removes what compaction to `to` allows for the keys changed in `(from, to]`, one bounded
    /// batch at a time; records progress in `m/compacted`.
    async fn remove_compacted(&self, to: Revision) -> Result<(), StorageError> {
        loop {
            let done = {
                let _maintenance = self.lock_maintenance();
                self.compact_step(to)?
            };
            if done {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
    }

    /// One batch of [`Self::remove_compacted`]; true once nothing is left up to `to`.
    fn compact_step(&self, to: Revision) -> Result<bool, StorageError> {
        let from = layout::parse_u64(self.raw.get(layout::COMPACTED_KEY)?, "m/compacted")?;
        if from >= to {
            return Ok(true);
        }
        // The changes of the compaction revision itself are kept (a watch may start there, as
        // in etcd), so the next compaction starts with them.
        let after = layout::change_key(from.saturating_sub(1), u32::MAX);
        let rows = self.raw.scan(layout::CHANGES, Some(&after), CHUNK)?;
        let mut keys = BTreeSet::new();
        // Change rows below `to`: each goes unless it holds a version a read at `to` needs.
        let mut below = Vec::new();
        let mut reached = from;
        let mut finished = rows.len() < CHUNK;
        for (k, v) in rows {
            let rev = layout::parse_change_key(&k)?;
            if rev > to {
                finished = true;
                break;
            }
            keys.insert(layout::parse_change_value(&v)?.key.to_vec());
            if rev < to {
                below.push(k);
            }
            reached = rev;
        }
        if finished {
            reached = to;
        }
        let mut batch = Batch::new();
        let mut keep = HashSet::new();
        let mut forget = Vec::new();
        let (mut removed, mut removed_bytes) = (0i64, 0i64);
        for key in keys {
            let keep_from = match self.floor(&key, to)? {
                // A key deleted at or before `to` needs none of its versions any more.
                Some(v) if v.is_delete() => v.mod_revision + 1,
                Some(v) => v.mod_revision,
                None => to + 1,
            };
            let rows = self.read_index().newest_first(&key);
            for row in rows {
                if row.revision >= keep_from {
                    // Readable at `to` or later (or, still current, to be filled).
                    if let Place::Change(idx) = row.place {
                        keep.insert(layout::change_key(row.revision, idx));
                    }
                    continue;
                }
                batch.delete(match row.place {
                    Place::Change(idx) => layout::change_key(row.revision, idx),
                    Place::History => layout::history_key(&key, row.revision),
                });
                removed += 1;
                removed_bytes += i64::from(row.bytes);
                forget.push((key.clone(), row.revision));
                if batch.ops.len() >= COMPACT_BATCH_OPS {
                    // A hot key's history: apply what is gathered and go on (the change rows
                    // below `to` and the progress go with the last batch, so a crash redoes
                    // this step).
                    self.raw.apply(std::mem::take(&mut batch))?;
                    self.forget(std::mem::take(&mut forget));
                }
            }
        }
        // What is left below `to`: the removed versions' rows (already in the batch), and
        // change rows of the layout before, whose versions it copied under `h/`.
        for k in below {
            if !keep.contains(&k) {
                batch.delete(k);
            }
        }
        batch.put(layout::COMPACTED_KEY, reached.to_be_bytes().to_vec());
        self.raw.apply(batch)?;
        self.forget(forget);
        self.add_history(-removed, -removed_bytes);
        Ok(reached >= to)
    }

    /// Drops removed rows from the index.
    fn forget(&self, rows: Vec<(Vec<u8>, Revision)>) {
        let mut index = self.write_index();
        for (key, revision) in rows {
            index.remove(&key, revision);
        }
    }
}

#[async_trait]
impl Mvcc for KvMvcc {
    fn revision(&self) -> Revision {
        self.revision.load(Ordering::Acquire)
    }

    fn compact_revision(&self) -> Revision {
        if self.keep_history {
            self.compact.load(Ordering::Acquire)
        } else {
            self.revision()
        }
    }

    fn get(&self, key: &[u8], at: Option<Revision>) -> Result<Option<Version>, StorageError> {
        let Some(at) = at else {
            return self.latest(key);
        };
        self.check_readable(at)?;
        let found = self.floor(key, at)?.filter(|v| !v.is_delete());
        self.recheck_compaction(at)?;
        Ok(found)
    }

    fn range(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        at: Option<Revision>,
        limit: usize,
    ) -> Result<Vec<Version>, StorageError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let Some(at) = at else {
            let latest_prefix = layout::latest_key(prefix);
            let mut cursor = start_after.map(layout::latest_key);
            loop {
                let want = (limit - out.len()).min(CHUNK);
                let rows = self.raw.scan(&latest_prefix, cursor.as_deref(), want)?;
                let last_round = rows.len() < want;
                for (k, raw) in &rows {
                    out.push(Entry::decode(&k[layout::LATEST.len()..], raw)?);
                }
                if last_round || out.len() >= limit {
                    return Ok(out);
                }
                cursor = rows.into_iter().next_back().map(|(k, _)| k);
            }
        };
        self.check_readable(at)?;
        let mut cursor = start_after.map(<[u8]>::to_vec);
        while out.len() < limit {
            let Some(key) = self.next_key(prefix, cursor.as_deref())? else {
                break;
            };
            if let Some(v) = self.floor(&key, at)?
                && !v.is_delete()
            {
                out.push(v);
            }
            cursor = Some(key);
        }
        self.recheck_compaction(at)?;
        Ok(out)
    }

    fn history(&self, key: &[u8], limit: usize) -> Result<Vec<Version>, StorageError> {
        let mut out = Vec::new();
        let current = self.latest(key)?;
        let current_rev = current.as_ref().map(|v| v.mod_revision);
        out.extend(current);
        let rows = self.read_index().newest_first(key);
        for row in rows {
            if out.len() >= limit {
                break;
            }
            // The current version's own change row, or a copy of it a crash left.
            if Some(row.revision) == current_rev {
                continue;
            }
            // `None`: compaction removed it meanwhile.
            if let Some(v) = self.read_row(key, row)? {
                out.push(v);
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    fn changes(&self, after: Revision, limit: usize) -> Result<Vec<Change>, StorageError> {
        // The compaction revision's own changes are kept: replay may start right before it.
        let check = |compacted: Revision| {
            if after.saturating_add(1) < compacted {
                Err(StorageError::Compacted {
                    requested: after,
                    compacted,
                })
            } else {
                Ok(())
            }
        };
        check(self.compact_revision())?;
        // Rows above the published revision belong to a commit still in progress: its index
        // entries may not be there yet.
        let upto = self.revision();
        let mut out = Vec::new();
        let mut cursor = layout::change_key(after, u32::MAX);
        'scan: while out.len() < limit {
            let rows = self.raw.scan(layout::CHANGES, Some(&cursor), CHUNK)?;
            let last_round = rows.len() < CHUNK;
            for (k, v) in &rows {
                let rev = layout::parse_change_key(k)?;
                if rev > upto {
                    break 'scan;
                }
                let change = layout::parse_change_value(v)?;
                let key = change.key;
                let kv = match change.version()? {
                    Some(v) => Some(v),
                    // A small row: the version is current, or (the layout before) copied
                    // under `h/`. `None` only when compaction removed it meanwhile, which the
                    // check below reports.
                    None => match self.latest(key)?.filter(|v| v.mod_revision == rev) {
                        Some(v) => Some(v),
                        None => self.version_at(key, rev)?,
                    },
                };
                let Some(kv) = kv else { continue };
                let prev = match kv.prev_revision {
                    0 => None,
                    p => self.version_at(key, p)?,
                };
                out.push(Change { kv, prev });
                if out.len() == limit {
                    break;
                }
            }
            if last_round || out.len() == limit {
                break;
            }
            match rows.into_iter().next_back() {
                Some((k, _)) => cursor = k,
                None => break,
            }
        }
        check(self.compact_revision())?;
        Ok(out)
    }

    fn commit(&self, txn: Txn) -> Result<Committed, StorageError> {
        self.commit_group(vec![txn]).pop().unwrap_or_else(|| {
            Err(StorageError::Invalid(
                "a group of one transaction returned no result".into(),
            ))
        })
    }

    /// One backend batch for the whole group where it can: each transaction still gets its
    /// own revision and its own conditions, but the revision key, the backend's per-batch
    /// records (its lsn, the integrity intent and digest) and the log entry are written once.
    /// A transaction that touches a key an earlier one in the batch writes closes the batch
    /// first, so that its conditions and the versions it supersedes are read after those
    /// writes.
    fn commit_group(&self, txns: Vec<Txn>) -> Vec<Result<Committed, StorageError>> {
        let mut commit = self.lock_commit();
        let mut results: Vec<Option<Result<Committed, StorageError>>> =
            txns.iter().map(|_| None).collect();
        let mut group = Group::default();
        let now = unix_ms();
        for (index, txn) in txns.into_iter().enumerate() {
            let touches_staged = txn
                .conditions
                .iter()
                .map(|c| c.key.as_slice())
                .chain(txn.writes.iter().map(Write::key))
                .any(|k| group.keys.contains(k));
            if touches_staged {
                self.apply_group(&mut commit, &mut group, &mut results);
            }
            let revision = commit.last + group.revisions + 1;
            match self.stage(&commit.live, txn, revision, now) {
                Ok(staged) => group.add(index, staged),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        self.apply_group(&mut commit, &mut group, &mut results);
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StorageError::Invalid(
                        "a transaction of the group was not committed".into(),
                    ))
                })
            })
            .collect()
    }

    async fn compact(&self, revision: Revision) -> Result<(), StorageError> {
        if !self.keep_history {
            // Only what an earlier run with history left behind (its change index says what).
            if self.versions.load(Ordering::Relaxed) > 0 {
                self.remove_compacted(self.revision()).await?;
            }
            return Ok(());
        }
        let current = self.revision();
        if revision > current {
            return Err(StorageError::FutureRevision {
                requested: revision,
                current,
            });
        }
        let compacted = self.compact_revision();
        if revision < compacted {
            return Err(StorageError::Compacted {
                requested: revision,
                compacted,
            });
        }
        if revision > compacted {
            let mut batch = Batch::new();
            batch.put(layout::COMPACT_KEY, revision.to_be_bytes().to_vec());
            let lsn = self.raw.apply(batch)?;
            // Durable before anything is removed: a crash must not bring back a lower
            // compaction revision over versions already gone.
            self.raw.wait_durable(lsn).await?;
            self.compact.fetch_max(revision, Ordering::AcqRel);
        }
        self.remove_compacted(revision).await
    }

    fn revision_at_time(&self, unix_ms: u64) -> Result<Revision, StorageError> {
        let mut found = self.compact_revision();
        let mut cursor = layout::change_key(found, u32::MAX);
        loop {
            let rows = self.raw.scan(layout::CHANGES, Some(&cursor), CHUNK)?;
            let last_round = rows.len() < CHUNK;
            for (k, v) in &rows {
                let time = layout::parse_change_value(v)?.time;
                if time > unix_ms {
                    return Ok(found);
                }
                found = found.max(layout::parse_change_key(k)?);
            }
            match rows.into_iter().next_back() {
                Some((k, _)) if !last_round => cursor = k,
                _ => return Ok(found),
            }
        }
    }

    fn stats(&self) -> HistoryStats {
        HistoryStats {
            versions: self.versions.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            compact_revision: self.compact_revision(),
        }
    }

    fn stored_values(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StoredValue>, StorageError> {
        // In key order: the copies under `h/`, the current versions under `l/`, then the
        // superseded versions in their change rows under `r/` (a current version's row is
        // small: its value is the `l/` row's).
        let mut out = Vec::new();
        let mut cursor = after.map(<[u8]>::to_vec);
        for prefix in [layout::HISTORY, layout::LATEST, layout::CHANGES] {
            if cursor
                .as_deref()
                .is_some_and(|c| c > prefix && !c.starts_with(prefix))
            {
                continue;
            }
            loop {
                if out.len() >= limit {
                    return Ok(out);
                }
                let want = (limit - out.len()).min(CHUNK);
                let start = cursor.as_deref().filter(|c| c.starts_with(prefix));
                let rows = self.raw.scan(prefix, start, want)?;
                let last_round = rows.len() < want;
                for (k, raw) in &rows {
                    let Some((version, current)) = self.stored_at(k, raw)? else {
                        continue;
                    };
                    if !version.is_delete() {
                        out.push(StoredValue {
                            position: k.clone(),
                            current,
                            version,
                        });
                    }
                }
                cursor = rows.into_iter().next_back().map(|(k, _)| k).or(cursor);
                if last_round {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn replace_values(
        &self,
        replacements: Vec<(StoredValue, Vec<u8>)>,
    ) -> Result<(usize, Lsn), StorageError> {
        let _maintenance = self.lock_maintenance();
        let _commit = self.lock_commit();
        let mut batch = Batch::new();
        let mut delta = 0i64;
        let mut replaced = 0usize;
        // Rows whose entry length changed, for the index's byte counts.
        let mut reindexed = Vec::new();
        for (stored, value) in replacements {
            let Some(raw) = self.raw.get(&stored.position)? else {
                continue;
            };
            let key = &stored.version.key;
            let unchanged = |v: &Version| {
                v.mod_revision == stored.version.mod_revision && v.value == stored.version.value
            };
            if stored.position.starts_with(layout::CHANGES) {
                let change = layout::parse_change_value(&raw)?;
                let Some(mut v) = change.version()?.filter(|v| unchanged(v)) else {
                    continue;
                };
                v.value = value;
                let entry = Entry::encode(&v);
                let row = layout::change_value_with(change.time, key, &entry);
                delta += row.len() as i64 - raw.len() as i64;
                if let Ok(idx) = layout::parse_change_index(&stored.position) {
                    reindexed.push((
                        key.clone(),
                        Row {
                            revision: v.mod_revision,
                            place: Place::Change(idx),
                            bytes: entry.len() as u32,
                        },
                    ));
                }
                batch.put(stored.position, row);
                replaced += 1;
                continue;
            }
            let mut v = Entry::decode(key, &raw)?;
            if !unchanged(&v) {
                continue;
            }
            v.value = value;
            let encoded = Entry::encode(&v);
            if !stored.current {
                delta += encoded.len() as i64 - raw.len() as i64;
                reindexed.push((
                    key.clone(),
                    Row {
                        revision: v.mod_revision,
                        place: Place::History,
                        bytes: encoded.len() as u32,
                    },
                ));
            }
            batch.put(stored.position, encoded);
            replaced += 1;
        }
        if replaced == 0 {
            return Ok((0, self.raw.applied()));
        }
        let lsn = self.raw.apply(batch)?;
        let mut index = self.write_index();
        for (key, row) in reindexed {
            if index
                .exact(&key, row.revision)
                .is_some_and(|r| r.place == row.place)
            {
                index.insert(&key, row);
            }
        }
        drop(index);
        self.add_history(0, delta);
        Ok((replaced, lsn))
    }

    fn applied(&self) -> Lsn {
        self.raw.applied()
    }

    async fn wait_durable(&self, lsn: Lsn) -> Result<(), StorageError> {
        self.raw.wait_durable(lsn).await
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.raw.sync().await
    }

    fn is_failed(&self) -> bool {
        self.raw.is_failed()
    }

    fn backend(&self) -> &Arc<dyn Backend> {
        &self.raw
    }
}

/// What the commit lock guards.
#[derive(Debug)]
struct Committer {
    /// The last committed revision.
    last: Revision,
    /// Every key with a current version (its `l/` row), as etcd keeps its key index in memory:
    /// a create, or any condition on a key that does not exist, is answered without a backend
    /// read. sled's get of a key it does not hold walks the tree to a leaf, and was 8% of the
    /// server's CPU per durable Create (README, "The write path"). Its memory: one heap copy of
    /// each key, with a 16-byte handle and a hash-table slot (not measured on its own).
    live: HashSet<Box<[u8]>>,
}

/// Kept versions and bytes, counted at open.
/// One transaction of a group, turned into ops.
#[derive(Default)]
struct Staged {
    /// History copies and change index entries.
    history: Vec<Op>,
    /// The new current versions.
    current: Vec<Op>,
    /// Unversioned writes.
    meta: Vec<Op>,
    /// For each write, the version it replaced.
    prev: Vec<Option<Version>>,
    /// Versioned keys changed (0: the transaction takes no revision).
    changed: u32,
    /// Superseded versions kept, and their bytes.
    kept: i64,
    kept_bytes: i64,
    /// Every key it reads or writes.
    keys: Vec<Vec<u8>>,
    /// Keys that get a current version (`true`) or lose theirs (`false`).
    live: Vec<(Vec<u8>, bool)>,
    /// Rows that hold a version, for the index (entered before the batch is applied).
    indexed: Vec<(Vec<u8>, Row)>,
}

/// What a commit knows of a key's stored current entry, for [`Op::PutOver`]: `None` when the
/// backend keeps no digest; else the entry's value hash, `None` inside when absent.
type Prior = Option<Option<[u8; 32]>>;

/// The transactions of one backend batch.
#[derive(Default)]
struct Group {
    history: Vec<Op>,
    current: Vec<Op>,
    meta: Vec<Op>,
    /// (index in the group, revision, versions replaced).
    members: Vec<(usize, Revision, Vec<Option<Version>>)>,
    /// Revisions taken so far.
    revisions: u64,
    kept: i64,
    kept_bytes: i64,
    keys: HashSet<Vec<u8>>,
    live: Vec<(Vec<u8>, bool)>,
    indexed: Vec<(Vec<u8>, Row)>,
}

impl Group {
    /// Adds a staged transaction (its revision: the next one, when it changed a key; else the
    /// revision before it, as for a delete of absent keys).
    fn add(&mut self, index: usize, staged: Staged) {
        if staged.changed > 0 {
            self.revisions += 1;
        }
        self.history.extend(staged.history);
        self.current.extend(staged.current);
        self.meta.extend(staged.meta);
        self.kept += staged.kept;
        self.kept_bytes += staged.kept_bytes;
        self.keys.extend(staged.keys);
        self.live.extend(staged.live);
        self.indexed.extend(staged.indexed);
        self.members.push((index, self.revisions, staged.prev));
    }
}

/// The keys with a current version (the `l/` rows), for [`Committer::live`].
fn live_keys(raw: &dyn Backend) -> Result<HashSet<Box<[u8]>>, StorageError> {
    let mut live = HashSet::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let rows = raw.scan(layout::LATEST, cursor.as_deref(), CHUNK)?;
        let last_round = rows.len() < CHUNK;
        cursor = rows.last().map(|(k, _)| k.clone());
        live.extend(
            rows.into_iter()
                .map(|(k, _)| k[layout::LATEST.len()..].to_vec().into_boxed_slice()),
        );
        if last_round || cursor.is_none() {
            return Ok(live);
        }
    }
}

/// Builds the index of stored versions from the rows (`h/` copies, then the change rows), with
/// the count and bytes of the superseded ones. A change row whose version never became current
/// (a batch a crash cut short: the key's `l/` row is older, or absent after a put) is removed
/// here, so that it is never served, indexed or filled.
fn build_index(
    raw: &dyn Backend,
    live: &HashSet<Box<[u8]>>,
) -> Result<(KeyIndex, u64, u64), StorageError> {
    let mut index = KeyIndex::default();
    let (mut versions, mut bytes) = (0u64, 0u64);
    scan_all(raw, layout::HISTORY, |k, v| {
        let (key, revision) = layout::parse_history_key(k)?;
        index.insert(
            &key,
            Row {
                revision,
                place: Place::History,
                bytes: v.len() as u32,
            },
        );
        versions += 1;
        bytes += v.len() as u64;
        Ok(())
    })?;
    /// A change row as open finds it.
    struct Found {
        revision: Revision,
        idx: u32,
        /// The length of the entry it holds (0: a small row).
        entry: u32,
        tombstone: bool,
    }
    let mut changes: HashMap<Vec<u8>, Vec<Found>> = HashMap::new();
    scan_all(raw, layout::CHANGES, |k, v| {
        let change = layout::parse_change_value(v)?;
        let version = change.version()?;
        changes.entry(change.key.to_vec()).or_default().push(Found {
            revision: layout::parse_change_key(k)?,
            idx: layout::parse_change_index(k)?,
            entry: version.as_ref().map_or(0, |_| {
                layout::entry_len_in_change(v.len(), change.key) as u32
            }),
            tombstone: version.is_some_and(|v| v.is_delete()),
        });
        Ok(())
    })?;
    let mut cut_short = Batch::new();
    for (key, rows) in changes {
        let current = if live.contains(key.as_slice()) {
            match raw.get(&layout::latest_key(&key))? {
                Some(raw) => Some(Entry::decode(&key, &raw)?.mod_revision),
                None => None,
            }
        } else {
            None
        };
        let newest = rows.iter().map(|r| r.revision).max();
        for row in rows {
            let never_current = match current {
                Some(current) => row.revision > current,
                // A deleted key's newest row is its tombstone (in the layout before, copied
                // under `h/`); a put there never landed.
                None => {
                    Some(row.revision) == newest
                        && !row.tombstone
                        && index.exact(&key, row.revision).is_none()
                }
            };
            if never_current {
                cut_short.delete(layout::change_key(row.revision, row.idx));
                continue;
            }
            let is_current = Some(row.revision) == current;
            if row.entry == 0 && !is_current {
                // A small row of the layout before: its version was copied under `h/`.
                continue;
            }
            index.insert(
                &key,
                Row {
                    revision: row.revision,
                    place: Place::Change(row.idx),
                    bytes: row.entry,
                },
            );
            if !is_current {
                versions += 1;
                bytes += u64::from(row.entry);
            }
        }
    }
    if !cut_short.ops.is_empty() {
        raw.apply(cut_short)?;
    }
    Ok((index, versions, bytes))
}

/// Calls `each` for every row under `prefix`, in bounded rounds.
fn scan_all(
    raw: &dyn Backend,
    prefix: &[u8],
    mut each: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let rows = raw.scan(prefix, cursor.as_deref(), 1024)?;
        let last_round = rows.len() < 1024;
        for (k, v) in &rows {
            each(k, v)?;
        }
        cursor = rows.into_iter().next_back().map(|(k, _)| k);
        if last_round || cursor.is_none() {
            return Ok(());
        }
    }
}

fn sub_saturating(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{SledBackend, SledConfig};

    fn open(dir: &std::path::Path, keep_history: bool) -> KvMvcc {
        // A database just dropped may hold sled's file lock for a moment more.
        let raw = crate::storage::sled::retry_busy(|| SledBackend::open(SledConfig::new(dir)))
            .expect("sled");
        if raw.get(layout::REVISION_KEY).expect("get").is_none() {
            let mut batch = Batch::new();
            batch.put(b"k/unrelated".to_vec(), b"x".to_vec());
            raw.apply(batch).expect("apply");
        }
        KvMvcc::open(Arc::new(raw), keep_history).expect("mvcc")
    }

    #[test]
    fn a_new_keyspace_starts_at_revision_one_as_etcds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = SledBackend::open(SledConfig::new(dir.path())).expect("sled");
        let m = KvMvcc::open(Arc::new(raw), true).expect("mvcc");
        assert_eq!(m.revision(), 1);
        assert_eq!(put(&m, "a", "1"), 2);
        drop(m);
        let raw = SledBackend::open(SledConfig::new(dir.path())).expect("sled");
        let m = KvMvcc::open(Arc::new(raw), true).expect("mvcc");
        assert_eq!(m.revision(), 2, "kept across a reopen");
    }

    fn put_txn(key: &str, value: &str, expected: Option<Revision>) -> Txn {
        Txn {
            conditions: expected
                .map(|mod_revision| super::super::Condition {
                    key: key.into(),
                    mod_revision,
                })
                .into_iter()
                .collect(),
            writes: vec![Write::Put {
                key: key.into(),
                value: value.into(),
                lease: 0,
            }],
            ..Txn::default()
        }
    }

    #[test]
    fn a_group_commits_each_transaction_at_its_own_revision_in_one_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open(dir.path(), true);
        let a = put(&m, "a", "1");
        let lsn = m.applied();
        let results = m.commit_group(vec![
            put_txn("b", "1", Some(0)),
            // Fails its condition alone: "a" is at `a`, not 5.
            put_txn("a", "2", Some(5)),
            put_txn("c", "1", None),
            // A delete of an absent key takes no revision, as in etcd.
            Txn {
                writes: vec![Write::Delete { key: "zz".into() }],
                ..Txn::default()
            },
            put_txn("a", "3", Some(a)),
        ]);
        let revisions: Vec<_> = results
            .iter()
            .map(|r| r.as_ref().map(|c| c.revision).map_err(|e| e.to_string()))
            .collect();
        assert_eq!(revisions[0], Ok(a + 1));
        assert!(
            revisions[1]
                .as_ref()
                .is_err_and(|e| e.contains("condition failed")),
            "{revisions:?}"
        );
        assert_eq!(revisions[2], Ok(a + 2));
        assert_eq!(revisions[3], Ok(a + 2));
        assert_eq!(revisions[4], Ok(a + 3));
        // One backend batch for all of them.
        assert_eq!(m.applied(), lsn + 1);
        for r in results.iter().flatten() {
            assert_eq!(r.lsn, lsn + 1);
        }
        assert_eq!(m.revision(), a + 3);
        assert_eq!(value_at(&m, "a", None).as_deref(), Some("3"));
        assert_eq!(value_at(&m, "a", Some(a + 2)).as_deref(), Some("1"));
        assert_eq!(value_at(&m, "c", Some(a + 2)).as_deref(), Some("1"));
        assert_eq!(value_at(&m, "b", Some(a)), None);
        // Every change of the group replays in revision order.
        let changes: Vec<_> = m
            .changes(a, 10)
            .expect("changes")
            .into_iter()
            .map(|c| {
                (
                    String::from_utf8_lossy(&c.kv.key).into_owned(),
                    c.kv.mod_revision,
                )
            })
            .collect();
        assert_eq!(
            changes,
            [
                ("b".into(), a + 1),
                ("c".into(), a + 2),
                ("a".into(), a + 3)
            ]
        );
    }

    /// Over sled with integrity, a commit hands the backend the hash of each current entry it
    /// replaces (`Op::PutOver`) instead of the backend reading it again: every plan checks the
    /// hash against the stored value in debug builds, and the directory verifies afterwards.
    #[test]
    fn with_integrity_commits_pass_the_replaced_entries_hashes_and_the_digest_holds() {
        use crate::crypto::integrity::{IntegrityKeys, StoreId};
        use crate::storage::integrity::StoreIntegrity;
        let dir = tempfile::tempdir().expect("tempdir");
        let integrity = Arc::new(StoreIntegrity {
            store_id: StoreId([9; 16]),
            keys: IntegrityKeys::derive(&crate::crypto::Seed::from_slice(&[5; 32]).expect("seed")),
            wrapped: Default::default(),
        });
        let raw = Arc::new(
            SledBackend::open(SledConfig {
                integrity: Some(integrity.clone()),
                ..SledConfig::new(dir.path())
            })
            .expect("sled"),
        );
        let m = KvMvcc::open(raw.clone(), true).expect("mvcc");
        assert!(m.hash_prior, "sled with integrity digests its values");
        let a = put(&m, "a", "1");
        let results = m.commit_group(vec![
            put_txn("b", "1", Some(0)),
            put_txn("a", "2", Some(a)),
            // Reads "b" again after the batch before it: a new batch, and a fresh hash.
            put_txn("b", "2", None),
            Txn {
                writes: vec![Write::Delete { key: "a".into() }],
                ..Txn::default()
            },
            put_txn("a", "3", Some(0)),
        ]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        del(&m, "b");
        put(&m, "b", "3");
        assert_eq!(value_at(&m, "a", None).as_deref(), Some("3"));
        assert_eq!(value_at(&m, "b", None).as_deref(), Some("3"));
        drop(m);
        Arc::into_inner(raw)
            .expect("one owner")
            .close()
            .expect("close");
        let (report, _) = crate::storage::verify_dir(dir.path(), &integrity, None).expect("verify");
        assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
        let plain = open(tempfile::tempdir().expect("tempdir").path(), true);
        assert!(!plain.hash_prior, "no digest, no hashes");
    }

    /// The live-key set answers "absent" without a read, so it must follow every write and be
    /// rebuilt at open: a create of a live key fails its condition, of a deleted one succeeds,
    /// before and after a reopen.
    #[test]
    fn the_live_key_set_follows_writes_and_is_rebuilt_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = |m: &KvMvcc| {
            let mut keys: Vec<String> = m
                .lock_commit()
                .live
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            keys.sort();
            keys
        };
        let create = |m: &KvMvcc, key: &str| m.commit(put_txn(key, "new", Some(0)));
        {
            let m = open(dir.path(), true);
            put(&m, "a", "1");
            put(&m, "b", "1");
            put(&m, "a\0x", "1");
            del(&m, "b");
            assert_eq!(live(&m), ["a", "a\0x"]);
            assert!(matches!(
                create(&m, "a"),
                Err(StorageError::ConditionFailed { .. })
            ));
        }
        let m = open(dir.path(), true);
        assert_eq!(live(&m), ["a", "a\0x"]);
        assert!(matches!(
            create(&m, "a"),
            Err(StorageError::ConditionFailed { .. })
        ));
        create(&m, "b").expect("b was deleted");
        assert_eq!(value_at(&m, "b", None).as_deref(), Some("new"));
        assert_eq!(live(&m), ["a", "a\0x", "b"]);
    }

    #[test]
    fn a_group_starts_a_new_batch_where_a_transaction_reads_a_key_written_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open(dir.path(), true);
        let base = m.revision();
        let lsn = m.applied();
        let results = m.commit_group(vec![
            put_txn("k", "1", Some(0)),
            put_txn("other", "1", None),
            // Sees the first write (the batch before it was applied first).
            put_txn("k", "2", Some(base + 1)),
            put_txn("k", "stale", Some(base + 1)),
        ]);
        assert_eq!(results[0].as_ref().map(|c| c.lsn).ok(), Some(lsn + 1));
        assert_eq!(results[1].as_ref().map(|c| c.lsn).ok(), Some(lsn + 1));
        let third = results[2].as_ref().expect("third");
        assert_eq!((third.revision, third.lsn), (base + 3, lsn + 2));
        assert_eq!(
            third.prev[0].as_ref().map(|v| v.value.clone()),
            Some(b"1".to_vec())
        );
        assert!(matches!(
            results[3],
            Err(StorageError::ConditionFailed { current, .. }) if current == base + 3
        ));
        assert_eq!(value_at(&m, "k", None).as_deref(), Some("2"));
        assert_eq!(m.revision(), base + 3);
    }

    fn put(m: &KvMvcc, key: &str, value: &str) -> Revision {
        m.commit(Txn {
            writes: vec![Write::Put {
                key: key.into(),
                value: value.into(),
                lease: 0,
            }],
            ..Txn::default()
        })
        .expect("put")
        .revision
    }

    fn del(m: &KvMvcc, key: &str) -> Revision {
        m.commit(Txn {
            writes: vec![Write::Delete { key: key.into() }],
            ..Txn::default()
        })
        .expect("delete")
        .revision
    }

    fn value_at(m: &KvMvcc, key: &str, at: Option<Revision>) -> Option<String> {
        m.get(key.as_bytes(), at)
            .expect("get")
            .map(|v| String::from_utf8(v.value).expect("utf-8"))
    }

    fn keys_at(m: &KvMvcc, prefix: &str, at: Option<Revision>) -> Vec<String> {
        m.range(prefix.as_bytes(), None, at, 100)
            .expect("range")
            .into_iter()
            .map(|v| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&v.key),
                    String::from_utf8_lossy(&v.value)
                )
            })
            .collect()
    }

    #[test]
    fn every_revision_reads_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open(dir.path(), true);
        assert_eq!(put(&m, "a", "a1"), 1);
        assert_eq!(put(&m, "b", "b1"), 2);
        assert_eq!(put(&m, "a", "a2"), 3);
        assert_eq!(del(&m, "b"), 4);
        assert_eq!(put(&m, "b", "b2"), 5);
        assert_eq!(put(&m, "a\0x", "z"), 6);
        assert_eq!(value_at(&m, "a", Some(1)).as_deref(), Some("a1"));
        assert_eq!(value_at(&m, "a", Some(2)).as_deref(), Some("a1"));
        assert_eq!(value_at(&m, "a", Some(3)).as_deref(), Some("a2"));
        assert_eq!(value_at(&m, "b", Some(4)), None);
        assert_eq!(value_at(&m, "b", Some(5)).as_deref(), Some("b2"));
        assert_eq!(value_at(&m, "a", None).as_deref(), Some("a2"));
        assert_eq!(keys_at(&m, "", Some(1)), ["a=a1"]);
        assert_eq!(keys_at(&m, "", Some(2)), ["a=a1", "b=b1"]);
        assert_eq!(keys_at(&m, "", Some(4)), ["a=a2"]);
        assert_eq!(keys_at(&m, "", Some(6)), ["a=a2", "a\0x=z", "b=b2"]);
        assert_eq!(keys_at(&m, "", None), ["a=a2", "a\0x=z", "b=b2"]);
        assert_eq!(keys_at(&m, "a", Some(3)), ["a=a2"]);
        // A re-created key starts over: new create_revision, version 1.
        let b = m.get(b"b", None).expect("get").expect("b");
        assert_eq!((b.create_revision, b.mod_revision, b.version), (5, 5, 1));
        let a = m.get(b"a", None).expect("get").expect("a");
        assert_eq!(
            (
                a.create_revision,
                a.mod_revision,
                a.version,
                a.prev_revision
            ),
            (1, 3, 2, 1)
        );
        // Paging at a revision continues after a key.
        let page = m.range(b"", Some(b"a"), Some(2), 1).expect("range");
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].key, b"b");
        assert!(matches!(
            m.get(b"a", Some(7)),
            Err(StorageError::FutureRevision {
                requested: 7,
                current: 6
            })
        ));
    }

    #[test]
    fn history_and_changes_include_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open(dir.path(), true);
        put(&m, "k", "v1");
        put(&m, "other", "o");
        put(&m, "k", "v2");
        del(&m, "k");
        put(&m, "k", "v3");
        let h: Vec<_> = m
            .history(b"k", 10)
            .expect("history")
            .into_iter()
            .map(|v| (v.mod_revision, v.is_delete()))
            .collect();
        assert_eq!(h, [(5, false), (4, true), (3, false), (1, false)]);
        assert_eq!(m.history(b"k", 2).expect("history").len(), 2);
        let changes = m.changes(1, 100).expect("changes");
        let summary: Vec<_> = changes
            .iter()
            .map(|c| {
                (
                    c.kv.mod_revision,
                    String::from_utf8_lossy(&c.kv.key).into_owned(),
                    c.kv.is_delete(),
                    c.prev.as_ref().map(|p| p.mod_revision),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (2, "other".to_owned(), false, None),
                (3, "k".to_owned(), false, Some(1)),
                (4, "k".to_owned(), true, Some(3)),
                (5, "k".to_owned(), false, None),
            ]
        );
        assert_eq!(m.changes(3, 1).expect("changes")[0].kv.mod_revision, 4);
        assert!(m.changes(5, 10).expect("changes").is_empty());
    }

    #[test]
    fn conditions_and_duplicate_keys_refuse_the_whole_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open(dir.path(), true);
        put(&m, "k", "v1");
        let stale = m.commit(Txn {
            conditions: vec![super::super::Condition {
                key: b"k".to_vec(),
                mod_revision: 0,
            }],
            writes: vec![Write::Put {
                key: b"k".to_vec(),
                value: b"v2".to_vec(),
                lease: 0,
            }],
            ..Txn::default()
        });
        assert!(
            matches!(stale, Err(StorageError::ConditionFailed { current: 1, .. })),
            "{stale:?}"
        );
        let dup = m.commit(Txn {
            writes: vec![
                Write::Delete { key: b"k".to_vec() },
                Write::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    lease: 0,
                },
            ],
            ..Txn::default()
        });
        assert!(matches!(dup, Err(StorageError::Invalid(_))), "{dup:?}");
        // A delete of nothing changes nothing, as in etcd.
        assert_eq!(del(&m, "absent"), 1);
        assert_eq!(m.revision(), 1);
    }

    #[tokio::test]
    async fn compaction_removes_what_it_may_and_refuses_reads_below_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open(dir.path(), true);
        put(&m, "a", "a1"); // 1
        put(&m, "a", "a2"); // 2
        put(&m, "b", "b1"); // 3
        del(&m, "b"); // 4
        put(&m, "a", "a3"); // 5
        put(&m, "c", "c1"); // 6
        assert_eq!(m.stats().versions, 4, "a1, a2, b1 and b's tombstone");
        m.compact(4).await.expect("compact");
        assert_eq!(m.compact_revision(), 4);
        assert!(matches!(
            m.get(b"a", Some(3)),
            Err(StorageError::Compacted {
                requested: 3,
                compacted: 4
            })
        ));
        assert!(matches!(
            m.changes(2, 10),
            Err(StorageError::Compacted { .. })
        ));
        // A watch may start at the compaction revision, as in etcd. Its only change here was
        // b's delete, and a tombstone at or below the compaction revision goes with its key (as
        // etcd's compaction drops it too): the first change left is 5.
        let at_c = m
            .changes(3, 10)
            .expect("changes from the compaction revision");
        assert_eq!(at_c[0].kv.mod_revision, 5);
        // At 4 and later every read still answers exactly.
        assert_eq!(value_at(&m, "a", Some(4)).as_deref(), Some("a2"));
        assert_eq!(keys_at(&m, "", Some(4)), ["a=a2"]);
        assert_eq!(keys_at(&m, "", Some(5)), ["a=a3"]);
        let revs: Vec<_> = m
            .history(b"a", 10)
            .expect("history")
            .iter()
            .map(|v| v.mod_revision)
            .collect();
        assert_eq!(revs, [5, 2], "a1 is gone, a2 was current at 4");
        assert!(
            m.history(b"b", 10).expect("history").is_empty(),
            "b was deleted by 4"
        );
        assert_eq!(m.stats().versions, 1);
        assert_eq!(m.changes(4, 10).expect("changes").len(), 2);
        assert!(matches!(
            m.compact(3).await,
            Err(StorageError::Compacted { .. })
        ));
        assert!(matches!(
            m.compact(9).await,
            Err(StorageError::FutureRevision { .. })
        ));
        // Reopened: the compaction revision and the counts are kept.
        drop(m);
        let m = open(dir.path(), true);
        assert_eq!(
            (m.compact_revision(), m.revision(), m.stats().versions),
            (4, 6, 1)
        );
    }

    #[tokio::test]
    async fn compaction_of_a_hot_key_goes_in_bounded_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open(dir.path(), true);
        for i in 0..1500 {
            put(&m, "hot", &format!("v{i}"));
        }
        put(&m, "cold", "c");
        assert_eq!(m.stats().versions, 1499);
        m.compact(1400).await.expect("compact");
        // Versions 1400..=1500 remain (1400 was current at the compaction revision).
        assert_eq!(m.history(b"hot", 2000).expect("history").len(), 101);
        assert_eq!(m.stats().versions, 100);
        assert_eq!(value_at(&m, "hot", Some(1400)).as_deref(), Some("v1399"));
        let index = m.raw.scan(layout::CHANGES, None, 10_000).expect("scan");
        assert_eq!(
            index.len(),
            102,
            "the change index below the compaction revision is gone (1400 and later stay)"
        );
    }

    #[tokio::test]
    async fn retention_finds_the_revision_written_before_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open(dir.path(), true);
        put(&m, "a", "1");
        put(&m, "a", "2");
        let between = unix_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        put(&m, "a", "3");
        assert_eq!(m.revision_at_time(between).expect("at"), 2);
        assert_eq!(m.revision_at_time(0).expect("at"), 0);
        assert_eq!(m.revision_at_time(u64::MAX).expect("at"), 3);
    }

    #[tokio::test]
    async fn without_history_only_the_current_revision_is_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let m = open(dir.path(), false);
            put(&m, "a", "1");
            put(&m, "a", "2");
            assert_eq!(m.stats().versions, 0);
            assert_eq!(m.compact_revision(), 2);
            assert!(matches!(
                m.get(b"a", Some(1)),
                Err(StorageError::Compacted { .. })
            ));
            assert_eq!(value_at(&m, "a", Some(2)).as_deref(), Some("2"));
            assert_eq!(m.history(b"a", 10).expect("history").len(), 1);
        }
        // Turning history on later: nothing older than now can be read.
        let m = open(dir.path(), true);
        assert_eq!(m.compact_revision(), 2);
        put(&m, "a", "3");
        assert_eq!(value_at(&m, "a", Some(2)).as_deref(), Some("2"));
        assert_eq!(m.stats().versions, 1);
        drop(m);
        // And off again: what that run kept goes at the next compaction.
        let m = open(dir.path(), false);
        m.compact(m.revision()).await.expect("compact");
        assert_eq!(m.stats().versions, 0);
        assert!(
            m.raw
                .scan(layout::HISTORY, None, 10)
                .expect("scan")
                .is_empty()
        );
    }

    #[test]
    fn stored_values_cover_history_and_current_and_replace_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open(dir.path(), true);
        put(&m, "a", "old");
        put(&m, "a", "new");
        del(&m, "gone-never-existed");
        let all = m.stored_values(None, 100).expect("values");
        assert_eq!(
            all.len(),
            2,
            "the current version once, not also its change row"
        );
        assert!(all[0].current && !all[1].current, "{all:?}");
        let superseded = all[1].clone();
        let first = m.stored_values(None, 1).expect("values");
        let rest = m
            .stored_values(Some(&first[0].position), 100)
            .expect("values");
        assert_eq!(rest.len(), 1);
        let (n, _) = m
            .replace_values(vec![(superseded.clone(), b"OLD".to_vec())])
            .expect("replace");
        assert_eq!(n, 1);
        assert_eq!(value_at(&m, "a", Some(1)).as_deref(), Some("OLD"));
        // A value that changed since it was read is left alone.
        let (n, _) = m
            .replace_values(vec![(superseded, b"again".to_vec())])
            .expect("replace");
        assert_eq!(n, 0);
        assert_eq!(m.revision(), 2, "replacing values is not a write");
    }

    fn rows(m: &KvMvcc, prefix: &[u8]) -> Vec<Vec<u8>> {
        m.raw
            .scan(prefix, None, 1000)
            .expect("scan")
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    fn changes_of(m: &KvMvcc, after: Revision) -> Vec<(Revision, String, Option<Revision>)> {
        m.changes(after, 100)
            .expect("changes")
            .into_iter()
            .map(|c| {
                (
                    c.kv.mod_revision,
                    String::from_utf8_lossy(&c.kv.value).into_owned(),
                    c.prev.map(|p| p.mod_revision),
                )
            })
            .collect()
    }

    /// An update fills the superseded version's change row in place and copies nothing; reads
    /// at every revision find the old versions again after a reopen (the index is rebuilt
    /// from the change rows).
    #[test]
    fn an_update_fills_the_superseded_versions_change_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let m = open(dir.path(), true);
            assert_eq!(put(&m, "a", "a1"), 1);
            assert_eq!(put(&m, "a", "a2"), 2);
            assert_eq!(del(&m, "a"), 3);
            assert_eq!(put(&m, "a", "a3"), 4);
            assert!(rows(&m, layout::HISTORY).is_empty(), "no copies");
            assert_eq!(rows(&m, layout::CHANGES).len(), 4);
            assert_eq!(m.stats().versions, 3, "a1, a2 and the tombstone");
        }
        let m = open(dir.path(), true);
        assert_eq!(m.stats().versions, 3);
        assert_eq!(value_at(&m, "a", Some(1)).as_deref(), Some("a1"));
        assert_eq!(value_at(&m, "a", Some(2)).as_deref(), Some("a2"));
        assert_eq!(value_at(&m, "a", Some(3)), None);
        assert_eq!(value_at(&m, "a", Some(4)).as_deref(), Some("a3"));
        assert_eq!(
            changes_of(&m, 0),
            vec![
                (1, "a1".into(), None),
                (2, "a2".into(), Some(1)),
                (3, String::new(), Some(2)),
                (4, "a3".into(), None),
            ]
        );
        let history: Vec<_> = m
            .history(b"a", 10)
            .expect("history")
            .into_iter()
            .map(|v| v.mod_revision)
            .collect();
        assert_eq!(history, vec![4, 3, 2, 1]);
        assert_eq!(keys_at(&m, "", Some(2)), vec!["a=a2"]);
        assert!(keys_at(&m, "", Some(3)).is_empty());
    }

    /// A batch a crash cut short can leave change rows whose versions never became current
    /// (the `l/` rows come last in a batch): open removes them, and they are never served.
    #[test]
    fn a_change_row_whose_version_never_landed_is_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let m = open(dir.path(), true);
            assert_eq!(put(&m, "a", "a1"), 1);
            // The crash image: revision 2 updated "a" and created "c", and only the revision
            // and the change rows reached the disk.
            let mut batch = Batch::new();
            batch.put(layout::REVISION_KEY, 2u64.to_be_bytes().to_vec());
            batch.put(layout::change_key(2, 0), layout::change_value(0, b"a"));
            batch.put(layout::change_key(2, 1), layout::change_value(0, b"c"));
            m.raw.apply(batch).expect("apply");
        }
        let m = open(dir.path(), true);
        assert_eq!(rows(&m, layout::CHANGES), vec![layout::change_key(1, 0)]);
        assert_eq!(changes_of(&m, 0), vec![(1, "a1".into(), None)]);
        assert_eq!(value_at(&m, "a", Some(2)).as_deref(), Some("a1"));
        assert_eq!(value_at(&m, "c", Some(2)), None);
        assert_eq!(put(&m, "a", "a3"), 3);
        assert_eq!(value_at(&m, "a", Some(2)).as_deref(), Some("a1"));
        assert_eq!(m.history(b"a", 10).expect("history").len(), 2);
    }

    /// A data directory written by the layout before (a copy of every superseded version and
    /// tombstone under `h/`, change rows of time and key only) reads the same at every
    /// revision, takes new writes, and loses its old rows to compaction.
    #[tokio::test]
    async fn a_data_directory_of_the_layout_before_reads_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let m = open(dir.path(), true);
            let version = |key: &str, value: &str, kind, rev, create, n, prev| Version {
                key: key.into(),
                kind,
                create_revision: create,
                mod_revision: rev,
                version: n,
                lease: 0,
                prev_revision: prev,
                written_ms: rev * 1000,
                value: value.into(),
            };
            let (put_, del_) = (VersionKind::Put, VersionKind::Delete);
            let a1 = version("a", "a1", put_, 1, 1, 1, 0);
            let a2 = version("a", "a2", put_, 2, 1, 2, 1);
            let b3 = version("b", "b3", put_, 3, 3, 1, 0);
            let b4 = version("b", "", del_, 4, 3, 0, 3);
            let mut batch = Batch::new();
            batch.put(layout::REVISION_KEY, 4u64.to_be_bytes().to_vec());
            for (rev, key) in [(1, "a"), (2, "a"), (3, "b"), (4, "b")] {
                batch.put(
                    layout::change_key(rev, 0),
                    layout::change_value(rev * 1000, key.as_bytes()),
                );
            }
            for v in [&a1, &b3, &b4] {
                batch.put(
                    layout::history_key(&v.key, v.mod_revision),
                    Entry::encode(v),
                );
            }
            batch.put(layout::latest_key(b"a"), Entry::encode(&a2));
            m.raw.apply(batch).expect("apply");
        }
        let m = open(dir.path(), true);
        assert_eq!(m.revision(), 4);
        assert_eq!(m.stats().versions, 3);
        assert_eq!(value_at(&m, "a", Some(1)).as_deref(), Some("a1"));
        assert_eq!(value_at(&m, "a", Some(3)).as_deref(), Some("a2"));
        assert_eq!(value_at(&m, "b", Some(3)).as_deref(), Some("b3"));
        assert_eq!(value_at(&m, "b", Some(4)), None);
        assert_eq!(keys_at(&m, "", Some(3)), vec!["a=a2", "b=b3"]);
        assert_eq!(
            changes_of(&m, 0),
            vec![
                (1, "a1".into(), None),
                (2, "a2".into(), Some(1)),
                (3, "b3".into(), None),
                (4, String::new(), Some(3)),
            ]
        );
        assert_eq!(m.revision_at_time(2500).expect("time"), 2);
        // The current version of the layout before has its change row: the update that
        // supersedes it fills that row.
        assert_eq!(put(&m, "a", "a5"), 5);
        assert_eq!(value_at(&m, "a", Some(4)).as_deref(), Some("a2"));
        assert_eq!(rows(&m, layout::HISTORY).len(), 3, "a1, b3, b4");
        assert_eq!(m.stats().versions, 4);
        m.compact(5).await.expect("compact");
        assert!(rows(&m, layout::HISTORY).is_empty(), "all below a5 went");
        assert_eq!(
            rows(&m, layout::CHANGES),
            vec![layout::change_key(5, 0)],
            "the compaction revision's own change stays"
        );
        assert_eq!(m.stats().versions, 0);
        assert_eq!(value_at(&m, "a", Some(5)).as_deref(), Some("a5"));
    }

    /// Compaction keeps the small change row of a version that is still current (the write
    /// that supersedes it fills it) and the row of one superseded after the compaction
    /// revision; a version whose row is gone is copied under `h/` when it is superseded.
    #[tokio::test]
    async fn compaction_keeps_the_rows_a_read_or_a_write_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open(dir.path(), true);
        assert_eq!(put(&m, "quiet", "q1"), 1);
        assert_eq!(put(&m, "hot", "h1"), 2);
        assert_eq!(put(&m, "x", "x"), 3);
        assert_eq!(put(&m, "hot", "h2"), 4);
        assert_eq!(put(&m, "hot", "h3"), 5);
        m.compact(4).await.expect("compact");
        // quiet@1 is current; hot@4 was current at 4 and is superseded; hot@2 went.
        assert_eq!(
            rows(&m, layout::CHANGES),
            vec![
                layout::change_key(1, 0),
                layout::change_key(3, 0),
                layout::change_key(4, 0),
                layout::change_key(5, 0)
            ]
        );
        assert_eq!(value_at(&m, "hot", Some(4)).as_deref(), Some("h2"));
        assert_eq!(value_at(&m, "quiet", Some(4)).as_deref(), Some("q1"));
        assert_eq!(put(&m, "quiet", "q6"), 6);
        assert!(rows(&m, layout::HISTORY).is_empty(), "filled, not copied");
        assert_eq!(value_at(&m, "quiet", Some(5)).as_deref(), Some("q1"));
        assert_eq!(m.stats().versions, 2, "hot@4 and quiet@1");
        // A version whose change row is gone (as compaction left them before) is copied.
        let mut batch = Batch::new();
        batch.delete(layout::change_key(3, 0));
        m.raw.apply(batch).expect("apply");
        m.write_index().remove(b"x", 3);
        assert_eq!(put(&m, "x", "x7"), 7);
        assert_eq!(
            rows(&m, layout::HISTORY),
            vec![layout::history_key(b"x", 3)]
        );
        assert_eq!(value_at(&m, "x", Some(6)).as_deref(), Some("x"));
        m.compact(7).await.expect("compact");
        assert!(rows(&m, layout::HISTORY).is_empty());
        assert_eq!(m.stats().versions, 0);
        assert_eq!(value_at(&m, "hot", Some(7)).as_deref(), Some("h3"));
        assert_eq!(value_at(&m, "quiet", Some(7)).as_deref(), Some("q6"));
    }

    /// A read at an old revision, racing the writes that supersede the versions it reads (each
    /// write fills the version's change row, behind a compaction), always finds the version.
    #[tokio::test]
    async fn reads_at_an_old_revision_never_miss_a_version_being_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Arc::new(open(dir.path(), true));
        const KEYS: usize = 200;
        for i in 0..KEYS {
            put(&m, &format!("k{i:03}"), "old");
        }
        let base = m.revision();
        m.compact(base).await.expect("compact");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0usize;
                while !stop.load(Ordering::Relaxed) || reads == 0 {
                    for i in 0..KEYS {
                        let key = format!("k{i:03}");
                        assert_eq!(
                            value_at(&m, &key, Some(base)).as_deref(),
                            Some("old"),
                            "{key} at {base}"
                        );
                        reads += 1;
                    }
                }
                reads
            })
        };
        for i in 0..KEYS {
            put(&m, &format!("k{i:03}"), "new");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().expect("reader") > 0);
        assert!(rows(&m, layout::HISTORY).is_empty(), "filled in place");
    }
}
