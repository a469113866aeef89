//! The storage layer under the engine: an ordered key-value store with batches and explicit
//! durability.
//!
//! The engine never talks to sled directly; it goes through [`Backend`], so that an etcd backend
//! (or a fault-injecting one in tests) can take its place.
//!
//! Visibility and durability are separate on purpose. [`Backend::apply`] makes a batch visible to
//! readers at once and returns its [`Lsn`]; [`Backend::wait_durable`] resolves once that batch
//! has reached stable storage. Writers apply under the engine's sequencing lock (so a precondition
//! check and the write are atomic) and wait for durability *outside* it, which lets one sync cover
//! many writers (group commit). Readers wait for the position they observed, so nobody ever sees a
//! write that a crash could still take back.

mod checkpoint_file;
#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;
pub mod integrity;
pub mod mvcc;
pub mod sled;
mod wal;

use async_trait::async_trait;

pub use self::sled::{
    DEFAULT_WAL_CHECKPOINT_BYTES, Durability, SledBackend, SledConfig, VerifyReport,
    integrity_seed, sled_tuning, verify_dir,
};
pub use self::wal::decode_log as decode_wal;

/// Runs synchronous storage work that may hold its thread for long (a large batch, a wait on
/// a lock that such work holds) from async code. On a multi-threaded runtime's worker, the
/// worker first hands its other tasks, and its turn at polling the I/O driver, to another
/// thread (tokio's `block_in_place`): a worker that runs a large batch in place stalls every
/// connection whose readiness only it would have polled, so pings go unanswered and clients
/// drop their connections (etcdctl's keepalive gives up after 6 s). Anywhere else (a
/// current-thread runtime, no runtime) `work` simply runs.
pub fn off_worker<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// A position in the backend's log of applied batches; grows by one per batch.
pub type Lsn = u64;

/// Key-value pairs as a scan returns them.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// One write inside a [`Batch`].
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key` (a no-op when absent).
    Delete(Vec<u8>),
    /// Set `key` to `value`, from a writer that read the key's stored value under the lock it
    /// writes under: `prior` is the [`crate::crypto::integrity::value_hash`] of that value
    /// (`None`: the key was absent). A backend that keeps a digest of its values
    /// ([`Backend::digests_values`]) takes the old value's hash from here instead of reading
    /// the key again; to every other backend, and in the write-ahead log, it is an
    /// [`Op::Put`].
    PutOver(Vec<u8>, Vec<u8>, Option<[u8; 32]>),
}

impl Op {
    /// The key the op writes.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put(k, _) | Op::Delete(k) | Op::PutOver(k, _, _) => k,
        }
    }
}

impl std::fmt::Debug for Op {
    // Values are ciphertext, but there is no reason to print them either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Put(k, v) | Op::PutOver(k, v, _) => write!(
                f,
                "Put({:?}, {} bytes)",
                String::from_utf8_lossy(k),
                v.len()
            ),
            Op::Delete(k) => write!(f, "Delete({:?})", String::from_utf8_lossy(k)),
        }
    }
}

/// Writes applied together, in order.
///
/// Atomic where it matters: once [`Backend::wait_durable`] has confirmed a batch, a crash keeps
/// all of it. A batch that was never confirmed may survive a crash whole, not at all, or as a
/// prefix of its ops, so put first the ops whose presence alone is harmless. Concurrent readers
/// may observe a batch while it is being applied; writers serialise above the backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O error from the operating system.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// On-disk data that cannot be read back (a damaged log or database).
    #[error("storage is corrupt: {0}")]
    Corrupt(String),
    /// A previous sync failed; the backend refuses further writes because the state of the file
    /// after a failed fsync is unknown. Restart the process to recover from the log.
    #[error("storage failed earlier and refuses writes until restart: {0}")]
    Failed(String),
    /// A read at a revision below the compaction revision: those versions are gone.
    #[error("required revision {requested} has been compacted (compaction revision {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The compaction revision.
        compacted: u64,
    },
    /// A read at a revision the store has not reached.
    #[error("required revision {requested} is a future revision (current {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The current revision.
        current: u64,
    },
    /// A transaction's condition did not hold: nothing was written.
    #[error("condition failed on {key}: mod_revision {current}, expected {expected}")]
    ConditionFailed {
        /// The key.
        key: String,
        /// The mod_revision the transaction expected (0: absent).
        expected: u64,
        /// The key's mod_revision (0: absent).
        current: u64,
    },
    /// The data directory is older than its anchor (`--anchor-file`): a whole older copy was
    /// put back. The message names both positions and `--accept-rollback`.
    #[error("{0}")]
    RolledBack(String),
    /// A request the storage cannot carry out as given.
    #[error("invalid storage request: {0}")]
    Invalid(String),
    /// A networked storage (etcd) cannot be reached or did not answer in time; nothing is
    /// known to be broken, so a retry may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// An ordered key-value store with atomic batches and explicit durability.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// The latest applied value of `key` (possibly not yet durable: pair with
    /// [`Backend::applied`] and [`Backend::wait_durable`] before showing it to a client).
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Up to `limit` entries whose key starts with `prefix`, in key order, beginning after
    /// `start_after` when given.
    fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyValues, StorageError>;

    /// Up to `limit` entries whose key starts with `prefix`, in reverse key order, beginning
    /// before `start_before` when given (the versioned keyspace finds "the newest version at or
    /// below a revision" with one of these).
    fn scan_rev(
        &self,
        prefix: &[u8],
        start_before: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyValues, StorageError>;

    /// Applies `batch` (see [`Batch`] for its crash atomicity) and makes it visible to readers;
    /// returns its position.
    /// Durability is not awaited here: see [`Backend::wait_durable`].
    fn apply(&self, batch: Batch) -> Result<Lsn, StorageError>;

    /// The position of the latest applied batch.
    fn applied(&self) -> Lsn;

    /// Resolves once every batch up to `lsn` has reached stable storage (at once in relaxed mode).
    async fn wait_durable(&self, lsn: Lsn) -> Result<(), StorageError>;

    /// Makes everything applied so far durable, in any mode (used at shutdown).
    async fn sync(&self) -> Result<(), StorageError>;

    /// Puts `key` = `value` only if `key` is absent: the position to wait on, or `None` when
    /// the key existed (nothing written). A backend other processes write too (etcd) makes this
    /// one atomic step, so that processes racing to create a key (a new seed) agree on one
    /// winner; the default reads then applies, which is atomic for a single writer only.
    fn put_if_absent(&self, key: &[u8], value: Vec<u8>) -> Result<Option<Lsn>, StorageError> {
        if self.get(key)?.is_some() {
            return Ok(None);
        }
        let mut batch = Batch::new();
        batch.put(key, value);
        self.apply(batch).map(Some)
    }

    /// Whether a failed write or sync has closed the backend until restart (health reports it).
    fn is_failed(&self) -> bool {
        false
    }

    /// The bytes the backend occupies on disk (0 when unknown), for status reports.
    fn size_on_disk(&self) -> u64 {
        0
    }

    /// Whether the backend keeps a digest of its values (sled with integrity), and so has a use
    /// for the old value's hash an [`Op::PutOver`] carries.
    fn digests_values(&self) -> bool {
        false
    }
}
