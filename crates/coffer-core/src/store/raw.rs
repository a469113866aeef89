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
//!
//! On a shared keyspace (several replicas over etcd) the lock orders this process's writers
//! only. There a [`RawWriter`] records what the transaction read: each key's `mod_revision`
//! (0: absent) and, for ranges, a [`RangeGuard`] at the revision read; the commit makes them
//! conditions of the storage's own transaction, so that it applies only if nothing it read has
//! changed meanwhile. A lost race ([`lost_race`]) wrote nothing: the caller evaluates again.

use zeroize::Zeroizing;

use std::collections::VecDeque;
use std::sync::Arc;

use super::quota::QuotaUsage;
use super::{
    ChangeEvent, DoorMember, EventKind, Pending, QUOTA_PREFIX, SECRET_PREFIX, Store, StoreError,
    decode_usage, encode_usage, scan_usage_prefix,
};
use crate::crypto;
use crate::model::validation::{validate_name, validate_namespace};
use crate::model::{Secret, codec, k8s};
use crate::storage::mvcc::{
    Change, Committed, Condition, RangeGuard, Revision, Txn, Version, Write,
};
use crate::storage::{Op, StorageError};

pub use super::RAW_PREFIX;
/// Keys read from the keyspace per round of a range scan.
const CHUNK: usize = 256;

/// Whether `e` is a door transaction that lost a race with another replica on a shared
/// keyspace (something it read changed before it committed): nothing was written, and the
/// transaction may be evaluated again.
pub fn lost_race(e: &StoreError) -> bool {
    matches!(e, StoreError::Storage(StorageError::ConditionFailed { .. }))
}

/// The smallest key after every key starting with `prefix` (for a guard's end).
fn after_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

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

impl RawWrite {
    /// The key written.
    pub fn key(&self) -> &[u8] {
        match self {
            RawWrite::Put { key, .. } | RawWrite::Delete { key } => key,
        }
    }
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

/// The backend key of a door key that is not a Secret's.
fn backend_key(key: &[u8]) -> Vec<u8> {
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

impl Store {
    /// The Secret storage key (`namespace/name`) a door key names, if it names one.
    fn secret_of(&self, key: &[u8]) -> Option<String> {
        let rest = std::str::from_utf8(key.strip_prefix(self.door_secrets.as_slice())?).ok()?;
        let (namespace, name) = rest.split_once('/')?;
        (validate_namespace(namespace).is_ok() && validate_name(name).is_ok())
            .then(|| rest.to_owned())
    }

    /// The backend key holding a door key's versions.
    fn door_backend_key(&self, key: &[u8]) -> Vec<u8> {
        match self.secret_of(key) {
            Some(secret) => format!("{SECRET_PREFIX}{secret}").into_bytes(),
            None => backend_key(key),
        }
    }

    /// The door key of a backend key (`None` for rows that are not versioned keys).
    pub(crate) fn door_key_of(&self, backend_key: &[u8]) -> Option<Vec<u8>> {
        if let Some(k) = backend_key.strip_prefix(RAW_PREFIX) {
            return Some(k.to_vec());
        }
        let secret = backend_key.strip_prefix(SECRET_PREFIX.as_bytes())?;
        let mut k = Vec::with_capacity(self.door_secrets.len() + secret.len());
        k.extend_from_slice(&self.door_secrets);
        k.extend_from_slice(secret);
        Some(k)
    }

    /// A stored version re-keyed by its door key.
    fn as_door(&self, mut v: Version) -> Option<Version> {
        v.key = self.door_key_of(&v.key)?;
        Some(v)
    }

    /// Opens a stored version of a door key (its key a door key, as every read here gives it;
    /// the value decrypted when `with_value`).
    pub async fn open_raw(&self, v: &Version, with_value: bool) -> Result<RawKv, StoreError> {
        let value = if with_value && !v.is_delete() {
            self.door_value(v).await?
        } else {
            Zeroizing::new(Vec::new())
        };
        Ok(RawKv {
            key: v.key.clone(),
            create_revision: v.create_revision,
            mod_revision: v.mod_revision,
            version: v.version,
            lease: v.lease,
            value,
        })
    }

    /// The value a stored record shows through the door: the bytes written through it, or for
    /// a Secret written through the Secret service the Kubernetes protobuf object.
    async fn door_value(&self, v: &Version) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let (key, record) = (&v.key, &v.value);
        let Some(secret_key) = self.secret_of(key) else {
            let bkey = backend_key(key);
            let label = String::from_utf8_lossy(&bkey).into_owned();
            let plaintext = self.unseal(&label, &raw_aad(&bkey), record).await?;
            return Ok(plaintext.into_zeroizing());
        };
        let aad = self.secret_aad(&secret_key, v.version, v.create_revision);
        let plaintext = self.unseal(&secret_key, &aad, record).await?;
        let stored = codec::decode_stored(plaintext.expose())
            .map_err(|e| StoreError::data_loss(&secret_key, e))?;
        let (namespace, name, value) = match stored {
            codec::Stored::Door(d) => (d.namespace, d.name, d.value),
            codec::Stored::Native(s) => {
                let value = k8s::encode(&s);
                (s.metadata.namespace, s.metadata.name, value)
            }
        };
        if crate::model::storage_key(&namespace, &name) != secret_key {
            return Err(StoreError::data_loss(
                &secret_key,
                "record names another object",
            ));
        }
        Ok(value)
    }

    /// The stored version of one door key at `at` (`None`: the latest), undecrypted.
    pub fn raw_version(
        &self,
        key: &[u8],
        at: Option<Revision>,
    ) -> Result<Option<Version>, StoreError> {
        Ok(self
            .mvcc
            .get(&self.door_backend_key(key), at)?
            .and_then(|v| self.as_door(v)))
    }

    /// Scans the door keys in `range` at `at` in key order, calling `visit` with each live
    /// version (undecrypted, keyed by its door key) until it returns `false`. Reads in bounded
    /// chunks, from the door's own keys and the Secrets together.
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
            if let Some(v) = self.raw_version(k, at)? {
                visit(v);
            }
            return self.raw_settle().await;
        }
        let start = range.start();
        let mut sources = vec![Source::new(
            RAW_PREFIX,
            (!start.is_empty()).then(|| backend_key(start)),
        )];
        // The Secrets, when the range reaches into `<prefix>/secrets/`: door keys there map in
        // order onto `s/<namespace>/<name>`.
        let secrets = self.door_secrets.as_slice();
        let reaches_secrets = match range {
            KeyRange::Between(_, end) => end.as_slice() > secrets,
            _ => true,
        };
        if start <= secrets && reaches_secrets {
            sources.push(Source::new(SECRET_PREFIX.as_bytes(), None));
        } else if let Some(rest) = start.strip_prefix(secrets) {
            let mut first = SECRET_PREFIX.as_bytes().to_vec();
            first.extend_from_slice(rest);
            sources.push(Source::new(SECRET_PREFIX.as_bytes(), Some(first)));
        }
        loop {
            for s in &mut sources {
                if s.rows.is_empty() && !s.done {
                    s.fill(self, at)?;
                }
            }
            let next = sources
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.rows.front().map(|v| (i, v.key.as_slice())))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i);
            let Some(v) = next.and_then(|i| sources[i].rows.pop_front()) else {
                break;
            };
            if range.past_end(&v.key) || !visit(v) {
                break;
            }
        }
        self.raw_settle().await
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

    /// Takes the store's sequencing lock for one door transaction. On a shared keyspace the
    /// writer records what the transaction reads (see the module docs); call
    /// [`Store::raw_barrier`] first so that it reads every write acknowledged before.
    pub async fn raw_writer(&self) -> RawWriter<'_> {
        let seq = self.sequencer.lock().await;
        let reads = self.shared.then(|| self.reads_from_now());
        RawWriter {
            store: self,
            seq: Some(seq),
            reads,
        }
    }

    /// A door transaction that takes no lock while it reads and seals (on a shared keyspace,
    /// the same as [`Store::raw_writer`]). Its commit's conditions are everything it read,
    /// and it joins the Secret service's writes in the group commit, so that concurrent door
    /// writes share a storage batch instead of queueing for the lock one at a time. It fails
    /// as a lost race ([`lost_race`]) when something it read changed before the commit: the
    /// caller evaluates again, and takes [`Store::raw_writer`] for its last try or when
    /// [`RawWriter::needs_lock`] says so.
    pub async fn raw_writer_optimistic(&self) -> RawWriter<'_> {
        if self.shared {
            return self.raw_writer().await;
        }
        RawWriter {
            store: self,
            seq: None,
            reads: Some(self.reads_from_now()),
        }
    }

    fn reads_from_now(&self) -> std::sync::Mutex<Reads> {
        std::sync::Mutex::new(Reads {
            at: self.mvcc.revision(),
            keys: std::collections::BTreeMap::new(),
            guards: Vec::new(),
        })
    }

    /// Makes the door's next reads reflect every write acknowledged (to anyone) before the
    /// call (the storage's read barrier: a no-op with one writer); returns the revision they
    /// will read at.
    pub async fn raw_barrier(&self) -> Result<Revision, StoreError> {
        self.mvcc.read_barrier().await?;
        Ok(if self.shared {
            self.mvcc.revision().max(self.revision())
        } else {
            self.mvcc.revision()
        })
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

    /// Up to `limit` changes after `after`, keyed by door key (the Secrets' too), undecrypted,
    /// in revision order. [`StoreError::TooOld`] below the compaction revision.
    pub fn raw_changes(&self, after: Revision, limit: usize) -> Result<Vec<Change>, StoreError> {
        let changes = self.mvcc.changes(after, limit)?;
        Ok(changes
            .into_iter()
            .filter_map(|c| {
                Some(Change {
                    kv: self.as_door(c.kv)?,
                    prev: c.prev.and_then(|p| self.as_door(p)),
                })
            })
            .collect())
    }

    /// How many Secrets' current values the API server encrypted itself (`k8s:enc:`): the
    /// Secret service cannot show them, and `coffer kms status` reports them so that an
    /// operator can turn the API server's own encryption off. Decrypts every current Secret.
    pub async fn count_apiserver_encrypted(&self) -> Result<u64, StoreError> {
        let mut count = 0;
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let rows = self
                .mvcc
                .range(SECRET_PREFIX.as_bytes(), cursor.as_deref(), None, CHUNK)?;
            let done = rows.len() < CHUNK;
            for v in &rows {
                let key = String::from_utf8_lossy(&v.key[SECRET_PREFIX.len()..]).into_owned();
                let aad = self.secret_aad(&key, v.version, v.create_revision);
                let plaintext = self.unseal(&key, &aad, &v.value).await?;
                if let Ok(codec::Stored::Door(d)) = codec::decode_stored(plaintext.expose())
                    && k8s::is_apiserver_encrypted(&d.value)
                {
                    count += 1;
                }
            }
            cursor = rows.into_iter().next_back().map(|v| v.key);
            if done || cursor.is_none() {
                return Ok(count);
            }
        }
    }
}

/// One backend prefix's rows of a [`Store::raw_scan`], read a chunk at a time.
struct Source {
    prefix: &'static [u8],
    /// A first key to read on its own (the range's start is inclusive, `range` exclusive).
    first: Option<Vec<u8>>,
    /// Where the next chunk starts (exclusive).
    cursor: Option<Vec<u8>>,
    /// Rows read and not yet visited, keyed by door key.
    rows: VecDeque<Version>,
    done: bool,
}

impl Source {
    fn new(prefix: &'static [u8], first: Option<Vec<u8>>) -> Self {
        Self {
            prefix,
            cursor: first.clone(),
            first,
            rows: VecDeque::new(),
            done: false,
        }
    }

    fn fill(&mut self, store: &Store, at: Option<Revision>) -> Result<(), StoreError> {
        if let Some(first) = self.first.take()
            && let Some(v) = store.mvcc.get(&first, at)?
            && let Some(v) = store.as_door(v)
        {
            self.rows.push_back(v);
        }
        let rows = store
            .mvcc
            .range(self.prefix, self.cursor.as_deref(), at, CHUNK)?;
        self.done = rows.len() < CHUNK;
        if let Some(last) = rows.last() {
            self.cursor = Some(last.key.clone());
        }
        self.rows
            .extend(rows.into_iter().filter_map(|v| store.as_door(v)));
        Ok(())
    }
}

/// A door transaction in progress. Taken with [`Store::raw_writer`] it holds the store's
/// sequencing lock, so what it reads stays current until it commits (or is dropped, writing
/// nothing). Taken with [`Store::raw_writer_optimistic`] on the local keyspace it holds no
/// lock: what it reads becomes its commit's conditions, and the commit joins the group commit.
pub struct RawWriter<'a> {
    store: &'a Store,
    /// The sequencing lock (`None`: an optimistic writer on the local keyspace).
    seq: Option<tokio::sync::MutexGuard<'a, ()>>,
    /// On a shared keyspace, or without the lock: what the transaction read, for the commit's
    /// conditions.
    reads: Option<std::sync::Mutex<Reads>>,
}

/// What a door transaction read on a shared keyspace (or without the lock).
struct Reads {
    /// The revision the reads are at (the storage's when the writer was taken).
    at: Revision,
    /// Backend key -> the `mod_revision` read (0: absent).
    keys: std::collections::BTreeMap<Vec<u8>, Revision>,
    /// The ranges read.
    guards: Vec<RangeGuard>,
}

impl Reads {
    /// Whether a commit without the lock cannot stand behind these reads and writes: a range
    /// read (its guard is checked only under the lock), or a lease attached (a lease may be
    /// revoked between the check and the commit).
    fn need_lock(&self, writes: &[RawWrite]) -> bool {
        !self.guards.is_empty()
            || writes
                .iter()
                .any(|w| matches!(w, RawWrite::Put { lease, .. } if *lease != 0))
    }
}

impl std::fmt::Debug for RawWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawWriter")
    }
}

/// A door write as it is committed: its backend key, and for a Secret's key what the Secret
/// service sees change.
struct Prepared {
    write: Write,
    secret: Option<SecretWrite>,
}

/// A door write to a Secret's key, as the Secret service sees it.
struct SecretWrite {
    namespace: String,
    /// What the Secret service showed before (`None`: nothing, or a value it cannot show).
    before: Option<Secret>,
    /// The record length replaced (for the namespace's usage).
    old_len: Option<u64>,
    /// The `mod_revision` of the version replaced (0: none).
    old_revision: Revision,
    /// What it shows after (`None`: deleted, or a value it cannot show).
    after: Option<Secret>,
    /// The new record's length (`None`: a delete).
    new_len: Option<u64>,
}

impl RawWriter<'_> {
    /// The store.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Whether the commit picks the revision (a shared keyspace, or a writer without the
    /// lock): the writes may get a later one than [`RawWriter::revision`] + 1.
    pub fn revision_at_commit(&self) -> bool {
        self.reads.is_some()
    }

    /// Whether a writer without the lock cannot commit these writes after what it read: a
    /// range read (its guard is checked only under the lock), or a lease attached (a lease
    /// may be revoked between the check and the commit). Evaluate again with
    /// [`Store::raw_writer`].
    pub fn needs_lock(&self, writes: &[RawWrite]) -> bool {
        if self.seq.is_some() || self.store.shared {
            return false;
        }
        self.reads.as_ref().is_some_and(|r| {
            r.lock()
                .unwrap_or_else(|p| p.into_inner())
                .need_lock(writes)
        })
    }

    /// The revision the transaction reads at (a write gets a later one).
    pub fn revision(&self) -> Revision {
        match &self.reads {
            Some(reads) => reads.lock().unwrap_or_else(|p| p.into_inner()).at,
            None => self.store.revision(),
        }
    }

    /// The current version of a door key, undecrypted.
    pub fn current(&self, key: &[u8]) -> Result<Option<Version>, StoreError> {
        let v = self.store.raw_version(key, None)?;
        self.saw(key, v.as_ref());
        Ok(v)
    }

    /// Scans the current door keys in `range` (as [`Store::raw_scan`] at the latest revision),
    /// recording the range as read.
    pub async fn scan(
        &self,
        range: &KeyRange,
        mut visit: impl FnMut(Version) -> bool,
    ) -> Result<(), StoreError> {
        if self.reads.is_none() {
            return self.store.raw_scan(range, None, visit).await;
        }
        if let KeyRange::Single(k) = range {
            if let Some(v) = self.current(k)? {
                visit(v);
            }
            return Ok(());
        }
        self.guard(range);
        let mut seen = Vec::new();
        let result = self
            .store
            .raw_scan(range, None, |v| {
                seen.push((v.key.clone(), v.mod_revision));
                visit(v)
            })
            .await;
        if let Some(reads) = &self.reads {
            let mut reads = reads.lock().unwrap_or_else(|p| p.into_inner());
            for (key, rev) in seen {
                reads.keys.insert(self.store.door_backend_key(&key), rev);
            }
        }
        result
    }

    /// Records a key read (on a shared keyspace).
    fn saw(&self, key: &[u8], v: Option<&Version>) {
        if let Some(reads) = &self.reads {
            let mut reads = reads.lock().unwrap_or_else(|p| p.into_inner());
            reads.keys.insert(
                self.store.door_backend_key(key),
                v.map_or(0, |v| v.mod_revision),
            );
        }
    }

    /// Records a range read (on a shared keyspace): guards on the backend keys it covers (the
    /// door's own keys from the range's start; all the Secrets when it reaches them).
    fn guard(&self, range: &KeyRange) {
        let Some(reads) = &self.reads else { return };
        let mut reads = reads.lock().unwrap_or_else(|p| p.into_inner());
        let at = reads.at;
        let start = backend_key(range.start());
        let end = match range {
            KeyRange::Between(_, e) => backend_key(e),
            _ => after_prefix(RAW_PREFIX),
        };
        reads.guards.push(RangeGuard {
            start,
            end: Some(end),
            not_after: at,
        });
        let secrets = self.store.door_secrets.as_slice();
        let reaches = match range {
            KeyRange::Between(s, e) => {
                e.as_slice() > secrets && s.as_slice() < after_prefix(secrets).as_slice()
            }
            KeyRange::From(s) => {
                s.as_slice() < after_prefix(secrets).as_slice() || secrets.is_empty()
            }
            KeyRange::Single(_) => false,
        };
        if reaches {
            reads.guards.push(RangeGuard {
                start: SECRET_PREFIX.as_bytes().to_vec(),
                end: Some(after_prefix(SECRET_PREFIX.as_bytes())),
                not_after: at,
            });
        }
    }

    /// Seals and commits `writes` (each key at most once) with the unversioned `meta` rows, at
    /// the next revision when anything is written; waits for durability after releasing the
    /// lock. Returns the revision the writes got (the current one when `writes` is empty), and
    /// for each write the version it replaced. Writes to a Secret's key are published to the
    /// Secret service's watchers as the changes they make to what it shows.
    pub async fn commit(
        self,
        writes: Vec<RawWrite>,
        meta: Vec<Op>,
    ) -> Result<(Revision, Vec<Option<Version>>), StoreError> {
        let store = self.store;
        let Some(seq) = self.seq else {
            let reads = self
                .reads
                .map(|r| r.into_inner().unwrap_or_else(|p| p.into_inner()));
            return store.commit_optimistic(reads, writes, meta).await;
        };
        if let Some(reads) = self.reads {
            let reads = reads.into_inner().unwrap_or_else(|p| p.into_inner());
            return store.commit_shared(seq, reads, writes, meta).await;
        }
        let (revision, prev, lsn) = {
            let _seq = seq;
            let prepared = store.prepare_all(writes).await?;
            let mut door = Box::new(DoorTxn::new(Vec::new(), prepared, meta));
            let txn = door.take_txn();
            let committed = super::commit_sized(door.writes(), || store.mvcc.commit(txn))?;
            door.committed(store, &committed);
            (committed.revision, committed.prev, committed.lsn)
        };
        store.finish_write(lsn).await?;
        Ok((revision, prev))
    }
}

/// A door transaction for the storage, with what its commit changes beside the keyspace.
struct DoorTxn {
    txn: Txn,
    /// Each write's key and lease (`None`: a delete), for the lease table.
    leases: Vec<(Vec<u8>, Option<i64>)>,
    /// For each write to a Secret's key, what the Secret service sees change.
    secrets: Vec<Option<SecretWrite>>,
}

impl DoorTxn {
    fn new(conditions: Vec<Condition>, prepared: Vec<Prepared>, meta: Vec<Op>) -> Self {
        let leases = prepared
            .iter()
            .map(|p| match &p.write {
                Write::Put { key, lease, .. } => (key.clone(), Some(*lease)),
                Write::Delete { key } => (key.clone(), None),
            })
            .collect();
        let (writes, secrets) = prepared.into_iter().map(|p| (p.write, p.secret)).unzip();
        DoorTxn {
            txn: Txn {
                conditions,
                writes,
                meta,
            },
            leases,
            secrets,
        }
    }
}

impl DoorMember for DoorTxn {
    fn take_txn(&mut self) -> Txn {
        std::mem::take(&mut self.txn)
    }

    fn writes(&self) -> usize {
        self.leases.len() + self.txn.meta.len()
    }

    /// The lease table follows its writes, and its Secret events (or only its revision) are
    /// queued for publication.
    fn committed(self: Box<Self>, store: &Store, committed: &Committed) {
        let door = *self;
        store.leases.follow(&door.leases, &committed.prev);
        let mut events = Vec::new();
        for s in door.secrets.into_iter().flatten() {
            store.count_door_write(&s);
            if let Some(event) = s.event(committed.revision) {
                events.push(event);
            }
        }
        store.note_door_write(committed.lsn, committed.revision, events);
    }
}

impl Store {
    /// A door transaction's commit without the lock on the local keyspace: sealed outside any
    /// lock, then one group commit member whose conditions are everything it read (and each
    /// Secret key it writes at the version it was sealed against). A read-only transaction
    /// that read a key is checked the same way, so that what it answers was current together
    /// at one revision.
    async fn commit_optimistic(
        &self,
        reads: Option<Reads>,
        writes: Vec<RawWrite>,
        meta: Vec<Op>,
    ) -> Result<(Revision, Vec<Option<Version>>), StoreError> {
        let reads = reads.ok_or_else(|| StoreError::Unavailable("no reads recorded".into()))?;
        if reads.need_lock(&writes) || !meta.is_empty() {
            return Err(StoreError::Unavailable(
                "a door transaction with a range read, a lease or unversioned rows commits \
                 under the sequencing lock"
                    .into(),
            ));
        }
        // What it read must be the state at the revision it reads at (its responses say so):
        // a key written after that, while it ran, sends it round again.
        if let Some((key, &current)) = reads.keys.iter().find(|(_, r)| **r > reads.at) {
            return Err(StoreError::Storage(StorageError::ConditionFailed {
                key: String::from_utf8_lossy(key).into_owned(),
                expected: reads.at,
                current,
            }));
        }
        let mut keys = reads.keys;
        if writes.is_empty() && keys.is_empty() {
            return Ok((self.mvcc.revision(), Vec::new()));
        }
        let prepared = self.prepare_all(writes).await?;
        for p in &prepared {
            if let Some(s) = &p.secret {
                keys.entry(p.write.key().to_vec()).or_insert(s.old_revision);
            }
        }
        let conditions = keys
            .into_iter()
            .map(|(key, mod_revision)| Condition { key, mod_revision })
            .collect();
        let door = Box::new(DoorTxn::new(conditions, prepared, Vec::new()));
        let committed = self.submit(super::Queued::Door(door)).await?;
        self.finish_write(committed.lsn).await?;
        Ok((committed.revision, committed.prev))
    }

    /// A door transaction's commit on a shared keyspace: one storage transaction whose
    /// conditions are everything the door read (and the namespaces' quota counters it
    /// updates); the revision is the storage's. The Secret service's events come back through
    /// the feed, as every replica's writes do.
    async fn commit_shared(
        &self,
        seq: tokio::sync::MutexGuard<'_, ()>,
        reads: Reads,
        writes: Vec<RawWrite>,
        meta: Vec<Op>,
    ) -> Result<(Revision, Vec<Option<Version>>), StoreError> {
        if writes.is_empty() && meta.is_empty() {
            drop(seq);
            let at = reads.at.max(self.revision());
            if reads.keys.len() > 1 || !reads.guards.is_empty() {
                // Read-only: the local copy may have moved between the reads; the storage
                // checks that everything read is still as read (a compare-only transaction,
                // which writes nothing and takes no revision). One key read (kube-apiserver's
                // compare and failure-branch get of one key) is a snapshot by itself.
                let conditions = reads
                    .keys
                    .into_iter()
                    .map(|(key, mod_revision)| Condition { key, mod_revision })
                    .collect();
                self.mvcc.commit_guarded(
                    Txn {
                        conditions,
                        writes: Vec::new(),
                        meta: Vec::new(),
                    },
                    &reads.guards,
                )?;
            }
            return Ok((at, Vec::new()));
        }
        let committed = {
            let _seq = seq;
            let prepared = self.prepare_all(writes).await?;
            let mut keys = reads.keys;
            let mut counters: std::collections::BTreeMap<String, (QuotaUsage, Revision)> =
                std::collections::BTreeMap::new();
            let quotas = self.quota_state().enabled();
            for p in &prepared {
                if let Some(s) = &p.secret {
                    keys.entry(p.write.key().to_vec()).or_insert(s.old_revision);
                    if quotas {
                        let counted = match counters.remove(&s.namespace) {
                            Some(c) => c,
                            None => self.read_counter(&s.namespace)?,
                        };
                        counters.insert(s.namespace.clone(), (s.count(counted.0), counted.1));
                    }
                }
            }
            let mut conditions: Vec<Condition> = keys
                .into_iter()
                .map(|(key, mod_revision)| Condition { key, mod_revision })
                .collect();
            let mut writes: Vec<Write> = prepared.into_iter().map(|p| p.write).collect();
            for (namespace, (usage, rev)) in &counters {
                let key = format!("{QUOTA_PREFIX}{namespace}").into_bytes();
                conditions.push(Condition {
                    key: key.clone(),
                    mod_revision: *rev,
                });
                writes.push(Write::Put {
                    key,
                    value: encode_usage(*usage),
                    lease: 0,
                });
            }
            let n = writes.len() - counters.len();
            let mut committed = self
                .mvcc
                .commit_guarded(
                    Txn {
                        conditions,
                        writes,
                        meta,
                    },
                    &reads.guards,
                )
                .map_err(lease_gone)?;
            committed.prev.truncate(n);
            let mut quota = self.quota_state();
            for (namespace, (usage, _)) in counters {
                quota.set(&namespace, usage);
            }
            committed
        };
        self.finish_write(committed.lsn).await?;
        Ok((committed.revision, committed.prev))
    }

    /// A namespace's usage counter on a shared keyspace and its `mod_revision` (0: none yet,
    /// counted from the namespace's records).
    fn read_counter(&self, namespace: &str) -> Result<(QuotaUsage, Revision), StoreError> {
        let ckey = format!("{QUOTA_PREFIX}{namespace}");
        match self.mvcc.get(ckey.as_bytes(), None)? {
            Some(v) => Ok((decode_usage(&v.value, &ckey)?, v.mod_revision)),
            None => Ok((
                scan_usage_prefix(
                    self.mvcc.as_ref(),
                    format!("{SECRET_PREFIX}{namespace}/").as_bytes(),
                )?,
                0,
            )),
        }
    }
}

impl SecretWrite {
    /// The namespace's usage after this write (never refused: the API server admitted it).
    fn count(&self, usage: QuotaUsage) -> QuotaUsage {
        let mut usage = usage;
        if self.old_len.is_some() {
            usage.count = usage.count.saturating_sub(1);
            usage.bytes = usage.bytes.saturating_sub(self.old_len.unwrap_or(0));
        }
        if let Some(len) = self.new_len {
            usage.count = usage.count.saturating_add(1);
            usage.bytes = usage.bytes.saturating_add(len);
        }
        usage
    }

    /// The change the Secret service's watchers see (none when it showed nothing before and
    /// shows nothing after).
    fn event(self, revision: Revision) -> Option<Arc<ChangeEvent>> {
        let (kind, mut object) = match (self.before, self.after) {
            (None, Some(after)) => (EventKind::Added, after),
            (Some(_), Some(after)) => (EventKind::Modified, after),
            (Some(before), None) => (EventKind::Deleted, before),
            (None, None) => return None,
        };
        object.metadata.resource_version = revision;
        Some(Arc::new(ChangeEvent {
            kind,
            object,
            revision,
        }))
    }
}

impl Store {
    /// Seals a transaction's writes for the next revision (with the lock, the one they get;
    /// otherwise a prediction, sealed into a Secret's record, whose reads take the version's
    /// own). The seed is fetched only when something is sealed (a delete seals nothing).
    async fn prepare_all(&self, writes: Vec<RawWrite>) -> Result<Vec<Prepared>, StoreError> {
        let revision = self.mvcc.revision() + 1;
        let seed = if writes.iter().any(|w| matches!(w, RawWrite::Put { .. })) {
            Some(self.seeds.for_write().await?)
        } else {
            None
        };
        let mut prepared = Vec::with_capacity(writes.len());
        for w in writes {
            prepared.push(self.prepare(w, revision, seed.as_ref()).await?);
        }
        Ok(prepared)
    }

    /// Seals one door write (`revision` the one it will get, or a prediction).
    async fn prepare(
        &self,
        w: RawWrite,
        revision: Revision,
        seed: Option<&(u32, Arc<crypto::Seed>)>,
    ) -> Result<Prepared, StoreError> {
        let key = match &w {
            RawWrite::Put { key, .. } | RawWrite::Delete { key } => key.clone(),
        };
        let Some(secret_key) = self.secret_of(&key) else {
            let bkey = backend_key(&key);
            let write = match w {
                RawWrite::Put { value, lease, .. } => {
                    let (seed_id, seed) = seed.ok_or_else(no_seed)?;
                    let record =
                        crypto::seal(self.algorithm, *seed_id, seed, &raw_aad(&bkey), &value);
                    self.seals
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Write::Put {
                        key: bkey,
                        value: record,
                        lease,
                    }
                }
                RawWrite::Delete { .. } => Write::Delete { key: bkey },
            };
            return Ok(Prepared {
                write,
                secret: None,
            });
        };
        // A Secret's key: the Secret service sees what this write changes.
        let (namespace, name) = secret_key.split_once('/').unwrap_or_default();
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        let bkey = format!("{SECRET_PREFIX}{secret_key}").into_bytes();
        let old = self.mvcc.get(&bkey, None)?;
        let before = match &old {
            Some(v) => self.open_version(&secret_key, v).await?,
            None => None,
        };
        let old_len = old.as_ref().map(|v| v.value.len() as u64);
        let old_revision = old.as_ref().map_or(0, |v| v.mod_revision);
        let (write, after, new_len) = match w {
            RawWrite::Put { value, lease, .. } => {
                let (seed_id, seed) = seed.ok_or_else(no_seed)?;
                let after = match k8s::decode(&namespace, &name, &value) {
                    k8s::Decoded::Secret(mut s) => {
                        s.metadata.resource_version = revision;
                        Some(*s)
                    }
                    k8s::Decoded::Opaque(why) => {
                        self.tell_opaque(&secret_key, &value, why);
                        None
                    }
                };
                let plaintext = codec::encode_door(&namespace, &name, revision, &value);
                // Sealed for the version it will be stored at (on a shared keyspace the
                // commit's condition on this key's mod_revision fixes it; see `secret_aad`).
                let aad = self.secret_aad(
                    &secret_key,
                    old.as_ref().map_or(1, |v| v.version + 1),
                    old.as_ref().map_or(0, |v| v.create_revision),
                );
                let record = crypto::seal(self.algorithm, *seed_id, seed, &aad, &plaintext);
                self.seals
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let len = record.len() as u64;
                let write = Write::Put {
                    key: bkey,
                    value: record,
                    lease,
                };
                (write, after, Some(len))
            }
            RawWrite::Delete { .. } => (Write::Delete { key: bkey }, None, None),
        };
        Ok(Prepared {
            write,
            secret: Some(SecretWrite {
                namespace,
                before,
                old_len,
                old_revision,
                after,
                new_len,
            }),
        })
    }

    /// Logs a value written under a Secret's key that the Secret service cannot show (once per
    /// write; for values the API server encrypted itself, once per process). Never the value.
    fn tell_opaque(&self, secret_key: &str, value: &[u8], why: k8s::NotASecret) {
        if k8s::is_apiserver_encrypted(value) {
            if !self
                .told_apiserver_encrypted
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    secret = %secret_key,
                    "the API server encrypts Secrets itself (k8s:enc:): Coffer stores them sealed but \
                     serves them through the etcd door only; turn the API server's encryption of \
                     Secrets off to see them through Coffer (coffer kms status counts them)"
                );
            }
        } else {
            tracing::warn!(
                secret = %secret_key,
                reason = %why,
                "a value written through the etcd door under a Secret's key is not a Secret: kept \
                 as written and served through the etcd door only"
            );
        }
    }

    /// Keeps the namespace's usage current after a door write to a Secret's key (door writes
    /// are never refused for quota: the API server admitted them).
    fn count_door_write(&self, s: &SecretWrite) {
        let mut quota = self.quota_state();
        if !quota.enabled() {
            return;
        }
        let usage = match s.new_len {
            Some(len) => quota.after_put(&s.namespace, s.old_len, len),
            None => quota.after_delete(&s.namespace, s.old_len.unwrap_or(0)),
        };
        quota.set(&s.namespace, usage);
    }

    /// Queues the publication of a door write (under the sequencing lock): its Secret events,
    /// or only its revision.
    fn note_door_write(
        &self,
        lsn: crate::storage::Lsn,
        revision: Revision,
        events: Vec<Arc<ChangeEvent>>,
    ) {
        let mut pending = self.pending_events();
        if events.is_empty() {
            pending.push_back(Pending {
                lsn,
                revision,
                event: None,
            });
        }
        for event in events {
            pending.push_back(Pending {
                lsn,
                revision,
                event: Some(event),
            });
        }
    }
}

/// A put's lease that expired (or was revoked by another replica) after the door checked it:
/// the storage refuses the transaction as etcd does, and the door answers as etcd would.
fn lease_gone(e: StorageError) -> StoreError {
    match e {
        StorageError::Invalid(m) if m.contains(LEASE_NOT_FOUND) => {
            StoreError::Lease(super::lease::LeaseError::NotFound)
        }
        other => other.into(),
    }
}

/// etcd's message for a put with a lease it does not have.
const LEASE_NOT_FOUND: &str = "requested lease not found";

fn no_seed() -> StoreError {
    StoreError::Unavailable("no seed for a put".into())
}
