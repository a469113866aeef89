//! The etcd door's keyspace: arbitrary keys with opaque values, each value sealed like a Secret.
//!
//! The etcd v3 door (`coffer-server`'s `etcd` module) stores what clients put under backend
//! keys `e/<key>`, in the same versioned keyspace, revision, history and compaction as the
//! Secrets (`s/<namespace>/<name>`). A value is sealed with the associated data `\0e/<key>`:
//! no Secret's storage key starts with a NUL byte, so a record moved between the two kinds of
//! key fails to open.
//!
//! Reads go straight to the keyspace (a range is read in chunks; counting a range reads no
//! value). Writes take the store's sequencing lock through a [`RawWriter`], so that a door
//! transaction's compares, reads and writes are one step and share the revision with the
//! Secret service's writes; leases ([`super::lease`]) are checked and kept under the same lock.

use zeroize::Zeroizing;

use super::{Store, StoreError};
use crate::crypto::{self, RecordHeader};
use crate::storage::Op;
use crate::storage::mvcc::{Revision, Txn, Version, Write};

pub use super::RAW_PREFIX;
/// Keys read from the keyspace per round of a range scan.
const CHUNK: usize = 256;

/// One key's version, as the door shows it (the value decrypted, wiped on drop).
#[derive(Clone)]
pub struct RawKv {
    /// The client's key (without the backend prefix).
    pub key: Vec<u8>,
    /// The revision that created the key.
    pub create_revision: Revision,
    /// The revision of this version.
    pub mod_revision: Revision,
    /// 1 at creation, + 1 per put.
    pub version: u64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
    /// The value (empty when not asked for).
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for RawKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKv")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("version", &self.version)
            .field("lease", &self.lease)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

/// Which keys a range covers (etcd's `key` / `range_end`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// One key.
    Single(Vec<u8>),
    /// Keys `>= start` and `< end`.
    Between(Vec<u8>, Vec<u8>),
    /// Keys `>= start` (etcd's `range_end = "\0"`; an empty start is every key).
    From(Vec<u8>),
}

impl KeyRange {
    /// etcd's encoding: an empty `range_end` is one key, `"\0"` every key from `key` on,
    /// anything else the half-open interval.
    pub fn from_etcd(key: &[u8], range_end: &[u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::From(if key == [0] { Vec::new() } else { key.to_vec() }),
            end => KeyRange::Between(key.to_vec(), end.to_vec()),
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k == key,
            KeyRange::Between(s, e) => key >= s.as_slice() && key < e.as_slice(),
            KeyRange::From(s) => key >= s.as_slice(),
        }
    }

    fn start(&self) -> &[u8] {
        match self {
            KeyRange::Single(k) | KeyRange::Between(k, _) | KeyRange::From(k) => k,
        }
    }

    /// Whether `key` lies past the range's end (a scan in key order can stop).
    fn past_end(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => key > k.as_slice(),
            KeyRange::Between(_, e) => key >= e.as_slice(),
            KeyRange::From(_) => false,
        }
    }

    /// Whether the range is empty by construction (`end <= start`).
    fn is_empty(&self) -> bool {
        matches!(self, KeyRange::Between(s, e) if e <= s)
    }
}

/// One write of a door transaction.
pub enum RawWrite {
    /// Sets a key (a new version; `lease` 0 detaches it).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value (sealed before it is stored).
        value: Zeroizing<Vec<u8>>,
        /// The lease to attach.
        lease: i64,
    },
    /// Deletes a key (it must exist).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl std::fmt::Debug for RawWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawWrite::Put { key, lease, .. } => write!(
                f,
                "Put({:?}, [REDACTED], lease {lease})",
                String::from_utf8_lossy(key)
            ),
            RawWrite::Delete { key } => write!(f, "Delete({:?})", String::from_utf8_lossy(key)),
        }
    }
}

/// The backend key of a door key.
pub fn backend_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(RAW_PREFIX.len() + key.len());
    k.extend_from_slice(RAW_PREFIX);
    k.extend_from_slice(key);
    k
}

/// The associated data a door value is sealed with: `\0` + its backend key.
pub(crate) fn raw_aad(backend_key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + backend_key.len());
    aad.push(0);
    aad.extend_from_slice(backend_key);
    aad
}

/// The door key of a backend key, when it is one.
pub fn door_key(backend_key: &[u8]) -> Option<&[u8]> {
    backend_key.strip_prefix(RAW_PREFIX)
}

impl Store {
    /// Opens a stored version of a door key (its value decrypted when `with_value`).
    pub async fn open_raw(&self, v: &Version, with_value: bool) -> Result<RawKv, StoreError> {
        let key = door_key(&v.key)
            .ok_or_else(|| StoreError::data_loss("?", "not a key of the etcd keyspace"))?
            .to_vec();
        let value = if with_value && !v.is_delete() {
            let label = String::from_utf8_lossy(&v.key).into_owned();
            let header =
                RecordHeader::parse(&v.value).map_err(|e| StoreError::open_failed(&label, e))?;
            let seed = self
                .seeds
                .seed_for_read(header.seed_id)
                .await?
                .ok_or_else(|| {
                    StoreError::open_failed(&label, crypto::OpenError::UnknownSeed(header.seed_id))
                })?;
            self.opens
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            header
                .open(&seed, &raw_aad(&v.key))
                .map_err(|e| StoreError::open_failed(&label, e))?
                .into_zeroizing()
        } else {
            Zeroizing::new(Vec::new())
        };
        Ok(RawKv {
            key,
            create_revision: v.create_revision,
            mod_revision: v.mod_revision,
            version: v.version,
            lease: v.lease,
            value,
        })
    }

    /// The stored version of one door key at `at` (`None`: the latest), undecrypted.
    pub fn raw_version(
        &self,
        key: &[u8],
        at: Option<Revision>,
    ) -> Result<Option<Version>, StoreError> {
        Ok(self.mvcc.get(&backend_key(key), at)?)
    }

    /// Scans the door keys in `range` at `at` in key order, calling `visit` with each live
    /// version (undecrypted) until it returns `false`. Reads in bounded chunks.
    pub async fn raw_scan(
        &self,
        range: &KeyRange,
        at: Option<Revision>,
        mut visit: impl FnMut(Version) -> bool,
    ) -> Result<(), StoreError> {
        if let Some(at) = at {
            self.check_revision(at)?;
        }
        if range.is_empty() {
            return Ok(());
        }
        if let KeyRange::Single(k) = range {
            if let Some(v) = self.mvcc.get(&backend_key(k), at)? {
                visit(v);
            }
            self.mvcc.wait_durable(self.mvcc.applied()).await?;
            return Ok(());
        }
        // The start is inclusive and `range` takes an exclusive cursor: read it on its own.
        let start = range.start();
        let mut cursor = None;
        if !start.is_empty() {
            let bkey = backend_key(start);
            if let Some(v) = self.mvcc.get(&bkey, at)?
                && !visit(v)
            {
                return Ok(());
            }
            cursor = Some(bkey);
        }
        loop {
            let rows = self.mvcc.range(RAW_PREFIX, cursor.as_deref(), at, CHUNK)?;
            let done = rows.len() < CHUNK;
            cursor = rows.last().map(|v| v.key.clone());
            for v in rows {
                let Some(key) = door_key(&v.key) else {
                    return Ok(());
                };
                if range.past_end(key) {
                    self.mvcc.wait_durable(self.mvcc.applied()).await?;
                    return Ok(());
                }
                if !visit(v) {
                    self.mvcc.wait_durable(self.mvcc.applied()).await?;
                    return Ok(());
                }
            }
            if done || cursor.is_none() {
                self.mvcc.wait_durable(self.mvcc.applied()).await?;
                return Ok(());
            }
        }
    }

    /// Refuses a read at a compacted or future revision (etcd's order of checks).
    fn check_revision(&self, at: Revision) -> Result<(), StoreError> {
        let current = self.mvcc.revision();
        if at > current {
            return Err(StoreError::TooLarge {
                requested: at,
                current,
            });
        }
        let compacted = self.mvcc.compact_revision();
        if at < compacted {
            return Err(StoreError::TooOld {
                requested: at,
                compacted,
            });
        }
        Ok(())
    }

    /// The bytes the storage occupies on disk (0 when the backend cannot tell).
    pub fn size_on_disk(&self) -> u64 {
        self.mvcc.backend().size_on_disk()
    }

    /// Takes the store's sequencing lock for one door transaction.
    pub async fn raw_writer(&self) -> RawWriter<'_> {
        RawWriter {
            store: self,
            _seq: self.sequencer.lock().await,
        }
    }

    /// Waits until everything applied is durable (before showing what was read).
    pub async fn raw_settle(&self) -> Result<(), StoreError> {
        Ok(self.mvcc.wait_durable(self.mvcc.applied()).await?)
    }

    /// A receiver of the newest published revision: every change at or below it is durable
    /// and readable through [`Store::raw_changes`].
    pub fn published(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.published.subscribe()
    }

    /// Up to `limit` changes after `after` (every kind of key; door keys decrypted), in
    /// revision order. [`StoreError::TooOld`] below the compaction revision.
    pub fn raw_changes(
        &self,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<crate::storage::mvcc::Change>, StoreError> {
        Ok(self.mvcc.changes(after, limit)?)
    }
}

/// A door transaction in progress: it holds the store's sequencing lock, so what it reads
/// stays current until it commits (or is dropped, writing nothing).
pub struct RawWriter<'a> {
    store: &'a Store,
    _seq: tokio::sync::MutexGuard<'a, ()>,
}

impl std::fmt::Debug for RawWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawWriter")
    }
}

impl RawWriter<'_> {
    /// The store.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// The current version of a door key, undecrypted.
    pub fn current(&self, key: &[u8]) -> Result<Option<Version>, StoreError> {
        Ok(self.store.mvcc.get(&backend_key(key), None)?)
    }

    /// Seals and commits `writes` (each key at most once) with the unversioned `meta` rows, at
    /// the next revision when anything is written; waits for durability after releasing the
    /// lock. Returns the revision the writes got (the current one when `writes` is empty), and
    /// for each write the version it replaced.
    pub async fn commit(
        self,
        writes: Vec<RawWrite>,
        meta: Vec<Op>,
    ) -> Result<(Revision, Vec<Option<Version>>), StoreError> {
        let store = self.store;
        let (revision, prev, lsn) = {
            let _seq = self._seq;
            // The seed is fetched only when something is sealed (a delete seals nothing).
            let seed = if writes.iter().any(|w| matches!(w, RawWrite::Put { .. })) {
                Some(store.seeds.for_write().await?)
            } else {
                None
            };
            let mut sealed = Vec::with_capacity(writes.len());
            for w in writes {
                sealed.push(match w {
                    RawWrite::Put { key, value, lease } => {
                        // Always fetched above when a put is present.
                        let Some((seed_id, seed)) = &seed else {
                            return Err(StoreError::Unavailable("no seed for a put".into()));
                        };
                        let bkey = backend_key(&key);
                        let record =
                            crypto::seal(store.algorithm, *seed_id, seed, &raw_aad(&bkey), &value);
                        store
                            .seals
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Write::Put {
                            key: bkey,
                            value: record,
                            lease,
                        }
                    }
                    RawWrite::Delete { key } => Write::Delete {
                        key: backend_key(&key),
                    },
                });
            }
            let leases: Vec<(Vec<u8>, Option<i64>)> = sealed
                .iter()
                .map(|w| match w {
                    Write::Put { key, lease, .. } => (key.clone(), Some(*lease)),
                    Write::Delete { key } => (key.clone(), None),
                })
                .collect();
            let committed = store.mvcc.commit(Txn {
                conditions: Vec::new(),
                writes: sealed,
                meta,
            })?;
            store.leases.follow(&leases, &committed.prev);
            store.note_raw_write(committed.lsn, committed.revision);
            (committed.revision, committed.prev, committed.lsn)
        };
        store.finish_write(lsn).await?;
        Ok((revision, prev))
    }
}
