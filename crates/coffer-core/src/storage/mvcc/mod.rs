//! The versioned keyspace the store writes to: etcd's MVCC model.
//!
//! One store revision counts every committed transaction. Each key has versions: a put makes a
//! new one (`create_revision` kept, `mod_revision` = the revision, `version` + 1), a delete ends
//! the key with a tombstone. Superseded versions and tombstones are kept until compaction: reads
//! at any revision at or above the compaction revision `C` see the keyspace exactly as it was
//! then; reads below `C` fail with [`StorageError::Compacted`], above the current revision with
//! [`StorageError::FutureRevision`]. A change index lets a watch replay every change after a
//! revision, in order, with the version each change replaced.
//!
//! Values are opaque here (the store puts sealed records in them); keys and revisions are in
//! clear, as etcd's are.
//!
//! [`Mvcc`] is the trait the store uses. [`KvMvcc`] implements it over any ordered key-value
//! [`Backend`] (the sled backend, the fault-injecting wrapper); an etcd backend implements it
//! directly on etcd's own Range-at-revision, `prev_kv`, watch and Compact, so that Coffer's
//! revisions are etcd's.

mod index;
mod kv;
pub mod layout;

use async_trait::async_trait;

pub use self::kv::KvMvcc;
use super::{Backend, Lsn, Op, StorageError};

/// A store revision.
pub type Revision = u64;

/// Whether a version holds a value or ends its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionKind {
    /// A put: the value is the key's content from `mod_revision` on.
    Put,
    /// A delete tombstone: the key did not exist from `mod_revision` on (value empty).
    Delete,
}

/// One version of a key.
#[derive(Clone, PartialEq, Eq)]
pub struct Version {
    /// The key.
    pub key: Vec<u8>,
    /// Put or delete.
    pub kind: VersionKind,
    /// The revision that created the key (kept by later puts, as etcd does).
    pub create_revision: Revision,
    /// The revision of this version.
    pub mod_revision: Revision,
    /// 1 for the put that created the key, + 1 per later put; 0 for a tombstone.
    pub version: u64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
    /// The `mod_revision` of the version this one replaced (0: none).
    pub prev_revision: Revision,
    /// When this version was written, in milliseconds since the Unix epoch (0: unknown).
    pub written_ms: u64,
    /// The stored value (a sealed record); empty for a tombstone.
    pub value: Vec<u8>,
}

impl std::fmt::Debug for Version {
    // The value is ciphertext, but there is no reason to print it either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("kind", &self.kind)
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("version", &self.version)
            .field("lease", &self.lease)
            .field("prev_revision", &self.prev_revision)
            .field("written_ms", &self.written_ms)
            .field("value_len", &self.value.len())
            .finish()
    }
}

impl Version {
    /// Whether this is a delete tombstone.
    pub fn is_delete(&self) -> bool {
        self.kind == VersionKind::Delete
    }
}

/// One write of a [`Txn`].
#[derive(Clone, PartialEq, Eq)]
pub enum Write {
    /// Sets `key` to `value` (a new version).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease to attach (0: none).
        lease: i64,
    },
    /// Deletes `key` (a tombstone version; nothing when the key does not exist).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Write::Put { key, value, lease } => write!(
                f,
                "Put({:?}, {} bytes, lease {lease})",
                String::from_utf8_lossy(key),
                value.len()
            ),
            Write::Delete { key } => write!(f, "Delete({:?})", String::from_utf8_lossy(key)),
        }
    }
}

impl Write {
    /// The key written.
    pub fn key(&self) -> &[u8] {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => key,
        }
    }
}

/// A condition a [`Txn`] needs: `key`'s current `mod_revision` is `mod_revision` (0: the key
/// does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The key.
    pub key: Vec<u8>,
    /// Its expected current `mod_revision` (0: absent).
    pub mod_revision: Revision,
}

/// Writes committed together at one revision, if every condition holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// All must hold, else nothing is written ([`StorageError::ConditionFailed`]).
    pub conditions: Vec<Condition>,
    /// The versioned writes (each key at most once).
    pub writes: Vec<Write>,
    /// Unversioned writes to the backend's own keys (seeds and such), applied in the same batch.
    pub meta: Vec<Op>,
}

/// A guard on a key range for [`Mvcc::commit_guarded`]: no key in `[start, end)` (`end`
/// `None`: every key from `start` on) has a `mod_revision` above `not_after`. With a
/// [`Condition`] on each key read, it makes a range read at `not_after` still current at the
/// commit (a key added to the range fails the guard, a key deleted fails its condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeGuard {
    /// The first key.
    pub start: Vec<u8>,
    /// The end (exclusive; `None`: no end).
    pub end: Option<Vec<u8>>,
    /// The revision the range was read at.
    pub not_after: Revision,
}

/// One lease as a storage with its own leases reports it ([`LeaseService::time_to_live`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    /// Seconds left.
    pub remaining: i64,
    /// The TTL granted.
    pub granted: i64,
    /// The versioned keys attached (when asked for), in order.
    pub keys: Vec<Vec<u8>>,
}

/// Leases kept by the storage itself, shared by every process over it (etcd's leases): a put
/// with a lease attaches the key, and the storage deletes the attached keys when the lease is
/// revoked or expires (the deletions reach the engine as changes, through the feed).
#[async_trait]
pub trait LeaseService: Send + Sync + std::fmt::Debug {
    /// Grants a lease (`id` 0: the storage picks one). `None`: the id is taken.
    async fn grant(&self, id: i64, ttl: i64) -> Result<Option<(i64, i64)>, StorageError>;
    /// Revokes a lease, deleting its keys; the revision of the deletion. `None`: no such lease.
    async fn revoke(&self, id: i64) -> Result<Option<Revision>, StorageError>;
    /// Refreshes a lease to its full TTL. `None`: no such lease.
    async fn keep_alive(&self, id: i64) -> Result<Option<i64>, StorageError>;
    /// A lease's time left and (with `keys`) its keys. `None`: no such lease.
    async fn time_to_live(&self, id: i64, keys: bool) -> Result<Option<StoredLease>, StorageError>;
    /// Every lease id.
    async fn list(&self) -> Result<Vec<i64>, StorageError>;
}

/// What a commit did.
#[derive(Debug)]
pub struct Committed {
    /// The revision of the transaction (the current revision, unchanged, when it changed no
    /// key: a delete of absent keys, as in etcd).
    pub revision: Revision,
    /// The backend position to wait on for durability.
    pub lsn: Lsn,
    /// For each write, the version it replaced (`None`: the key did not exist).
    pub prev: Vec<Option<Version>>,
}

/// One change, as a watch replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The new version (a tombstone for a delete).
    pub kv: Version,
    /// The version it replaced, when still kept.
    pub prev: Option<Version>,
}

/// How much history is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Superseded versions and tombstones kept.
    pub versions: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// The compaction revision.
    pub compact_revision: Revision,
}

/// A stored version's value as `coffer migrate` rewrites it: where it is, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// An opaque position (continue a scan after it; name it to replace the value).
    pub position: Vec<u8>,
    /// Whether this is the key's current version (not history).
    pub current: bool,
    /// The version.
    pub version: Version,
}

/// The versioned keyspace (see the module docs).
///
/// Reads are not snapshots of a moving store: pair them with [`Mvcc::applied`] and
/// [`Mvcc::wait_durable`] before showing data to a client, as with [`Backend`].
#[async_trait]
pub trait Mvcc: Send + Sync + std::fmt::Debug + 'static {
    /// The latest committed revision.
    fn revision(&self) -> Revision;

    /// The compaction revision: reads at revisions below it are refused.
    fn compact_revision(&self) -> Revision;

    /// `key`'s live version at revision `at` (`None`: the latest); `None` when it did not exist
    /// then (or was deleted).
    fn get(&self, key: &[u8], at: Option<Revision>) -> Result<Option<Version>, StorageError>;

    /// Up to `limit` live versions at revision `at` (`None`: the latest) of the keys starting
    /// with `prefix`, after `start_after`, in key order.
    fn range(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        at: Option<Revision>,
        limit: usize,
    ) -> Result<Vec<Version>, StorageError>;

    /// Up to `limit` kept versions of `key`, newest first, tombstones included.
    fn history(&self, key: &[u8], limit: usize) -> Result<Vec<Version>, StorageError>;

    /// Up to `limit` changes after revision `after`, in revision order (refused when `after`
    /// is below the compaction revision minus one: the compaction revision's own changes are
    /// kept, so a watch may start there, as in etcd).
    fn changes(&self, after: Revision, limit: usize) -> Result<Vec<Change>, StorageError>;

    /// Commits `txn` at the next revision (see [`Committed`]). Durability is not awaited.
    fn commit(&self, txn: Txn) -> Result<Committed, StorageError>;

    /// Commits each transaction as [`Mvcc::commit`] would, in order, each at its own revision
    /// and with its own result (a failed condition fails only its transaction); a keyspace
    /// that can write several at once in one step of its storage does (group commit).
    /// Default: one commit each.
    fn commit_group(&self, txns: Vec<Txn>) -> Vec<Result<Committed, StorageError>> {
        txns.into_iter().map(|t| self.commit(t)).collect()
    }

    /// Raises the compaction revision to `revision` (durably), then removes every version
    /// superseded at or before it, in bounded batches that never hold writers up.
    async fn compact(&self, revision: Revision) -> Result<(), StorageError>;

    /// The newest revision committed at or before `unix_ms` (milliseconds since the epoch), for
    /// retention by age; the compaction revision when there is none newer.
    fn revision_at_time(&self, unix_ms: u64) -> Result<Revision, StorageError>;

    /// How much history is kept.
    fn stats(&self) -> HistoryStats;

    /// Up to `limit` stored versions with a value (current ones and history) after `position`.
    fn stored_values(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StoredValue>, StorageError>;

    /// Replaces the values of stored versions in place (same key, revision and metadata), each
    /// only if it still holds `old` (`coffer migrate` resealing under a new key). Returns how
    /// many were replaced and the position to wait on.
    fn replace_values(
        &self,
        replacements: Vec<(StoredValue, Vec<u8>)>,
    ) -> Result<(usize, Lsn), StorageError>;

    /// The position of the latest applied write.
    fn applied(&self) -> Lsn;

    /// Resolves once everything up to `lsn` is on stable storage.
    async fn wait_durable(&self, lsn: Lsn) -> Result<(), StorageError>;

    /// Makes everything applied so far durable.
    async fn sync(&self) -> Result<(), StorageError>;

    /// Whether the storage has failed until restart.
    fn is_failed(&self) -> bool;

    /// The ordered key-value backend under this keyspace, for unversioned data (seeds).
    fn backend(&self) -> &std::sync::Arc<dyn Backend>;

    /// Whether other processes commit to this keyspace too (several replicas over one etcd):
    /// the storage assigns revisions (the engine cannot predict them), a condition may fail
    /// because of another writer, and changes reach the engine through [`Mvcc::take_feed`].
    /// Default `false`: the engine is the only writer.
    fn shared(&self) -> bool {
        false
    }

    /// Hands a shared keyspace the store's integrity keys (unwrapped through the KMS once the
    /// store opens), so that every commit from then on keeps the state digest key in its own
    /// transaction. Default: nothing (sled keeps its digest itself).
    fn set_integrity(
        &self,
        integrity: std::sync::Arc<crate::storage::integrity::StoreIntegrity>,
    ) -> Result<(), StorageError> {
        let _ = integrity;
        Ok(())
    }

    /// Waits until reads at the latest revision reflect every commit acknowledged (to anyone)
    /// before the call: what makes a read served from a local copy linearizable. Default:
    /// nothing to wait for (the only writer sees its own commits at once).
    async fn read_barrier(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// A shared keyspace's changes: every committed one, in revision order, once (the engine
    /// takes it at open and publishes them as its events). Default `None`: the engine publishes
    /// its own writes.
    fn take_feed(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Change>> {
        None
    }

    /// As [`Mvcc::commit`], and only if every guard holds too (else
    /// [`StorageError::ConditionFailed`]). Default: the guards are not checked, which is right
    /// for a keyspace with one writer that holds its sequencing lock from the reads to the
    /// commit (nothing else can have changed the ranges).
    fn commit_guarded(&self, txn: Txn, guards: &[RangeGuard]) -> Result<Committed, StorageError> {
        let _ = guards;
        self.commit(txn)
    }

    /// The storage's own leases, shared by every process ([`LeaseService`]). Default `None`:
    /// the engine keeps the leases itself (its lease table).
    fn leases(&self) -> Option<&dyn LeaseService> {
        None
    }

    /// Whether this process should do the keyspace-wide upkeep (compaction by retention, the
    /// bootstrap-token cleaner): on a shared keyspace only one process at a time, elected by
    /// the storage. Default `true`: the only writer.
    fn is_leader(&self) -> bool {
        true
    }
}
