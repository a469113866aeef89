//! The engine: validate -> seal -> write with a revision -> publish a change event.
//!
//! A Secret write reads the current version, checks and seals the new one without any lock,
//! then commits only if the key is still at the version it read (else an unconditional write
//! reads again; one with a precondition gets its conflict). Commits go through a group commit:
//! writers that arrive while one commits queue up, and the next group takes them all in one
//! storage batch under the sequencing lock, each at its own revision. Durability is waited for
//! *outside* the lock, so one log sync covers many writers. Change events are published in
//! revision order, only once the write they describe is durable.
//!
//! Secrets live in the versioned keyspace ([`crate::storage::mvcc`]) under the keys
//! `s/<namespace>/<name>`, each version's value a sealed record; the store revision is the
//! keyspace's. The wrapped seeds are unversioned backend keys `k/seed/<id>`.
//!
//! Every write keeps the version it supersedes (still sealed, under its own data key) until
//! compaction; see [`history`] for reads at a revision, the History call, change replay for
//! watches and retention.

pub mod continue_token;
mod error;
pub mod history;
pub mod lease;
mod lease_table;
pub mod migrate;
pub mod quota;
pub mod raw;
mod reseal;
mod upgrade;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use zeroize::Zeroizing;

pub use self::error::StoreError;
pub use self::history::{HistoryEntry, HistoryPage};
use self::quota::QuotaState;
pub use self::quota::{QuotaExceeded, QuotaLimits, QuotaUsage, Quotas};
pub use self::reseal::{RecordCounts, ResealBatch};
use crate::crypto::{self, Algorithm, RecordHeader};
use crate::kms::{Kms, LocalKek, OutagePolicy, SeedManager, SeedPolicy};
use crate::model::selector::{FieldSelector, LabelSelector};
use crate::model::validation::{
    self, FieldError, FieldErrorKind, ValidationErrors, validate_name, validate_namespace,
};
use crate::model::{Secret, codec, k8s};
use crate::storage::mvcc::{Committed, Condition, KvMvcc, Mvcc, Txn, Version, Write};
use crate::storage::{Backend, Durability, Lsn, SledBackend, SledConfig};

const SECRET_PREFIX: &str = "s/";
/// The backend prefix of the etcd door's keys (see [`raw`]).
pub const RAW_PREFIX: &[u8] = b"e/";
/// The default of [`StoreConfig::etcd_prefix`] (kube-apiserver's).
pub const DEFAULT_ETCD_PREFIX: &str = "/registry";
/// The default of [`StoreConfig::history_retention`]: one hour.
pub const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(3600);
/// Rows read from the backend per scan round of a list.
const SCAN_CHUNK: usize = 256;
/// The largest page a list returns when the caller sets no limit or a larger one.
pub const MAX_LIST_LIMIT: usize = 10_000;
/// The default of [`StoreConfig::list_scan_rows`]: the most records one list call opens.
pub const MAX_LIST_SCAN_ROWS: usize = 10_000;
/// How many times a write without a precondition is tried on a shared keyspace when other
/// processes keep writing the same object in between its read and its commit.
const SHARED_RETRIES: usize = 16;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted; the object is its last state.
    Deleted,
}

/// One change, published after it is durable, in revision order.
#[derive(Debug)]
pub struct ChangeEvent {
    /// What happened.
    pub kind: EventKind,
    /// The object after the change (its last state for a delete), with `resource_version` =
    /// `revision`.
    pub object: Secret,
    /// The store revision of the change.
    pub revision: u64,
}

/// Settings of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The AEAD for new records. Default AES-256-GCM.
    pub algorithm: Algorithm,
    /// When seeds are replaced.
    pub seed_policy: SeedPolicy,
    /// KMS `Status` polling and how long writes outlive a KMS outage.
    pub outage: OutagePolicy,
    /// How many change events a slow subscriber may lag before it is told it lagged.
    pub event_capacity: usize,
    /// Per-namespace quotas (see [`quota`]). Default: none.
    pub quotas: Quotas,
    /// How long a superseded version is kept (then compaction removes it). Zero keeps only the
    /// current version of each Secret, and no revision but the current one can be read. Default
    /// [`DEFAULT_HISTORY_RETENTION`].
    pub history_retention: Duration,
    /// For a sled data directory: checkpoint the write-ahead log once it grows past this many
    /// bytes. Default [`crate::storage::DEFAULT_WAL_CHECKPOINT_BYTES`] (64 MiB).
    pub wal_checkpoint_bytes: u64,
    /// The most records one list call opens (decrypts), matching or not: a selector that
    /// matches little ends the page early, with a continue token past the last record opened,
    /// so that no single call decrypts a whole large scope. Default [`MAX_LIST_SCAN_ROWS`].
    pub list_scan_rows: usize,
    /// The etcd door's key prefix (kube-apiserver's `--etcd-prefix`): door keys
    /// `<prefix>/secrets/<namespace>/<name>` are the Secrets themselves, shared with the Secret
    /// service. Default [`DEFAULT_ETCD_PREFIX`].
    pub etcd_prefix: String,
    /// For a sled data directory: `--anchor-file`, where every checkpoint also records the
    /// latest authenticated (lsn, state digest), best on another volume, so that putting back a
    /// whole older copy of the data directory is refused at start. Default: none.
    pub anchor_file: Option<PathBuf>,
    /// `--accept-rollback`: start from a data directory older than its anchor anyway (the
    /// anchor then moves back to it). Default: false.
    pub accept_rollback: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            seed_policy: SeedPolicy::default(),
            outage: OutagePolicy::default(),
            event_capacity: 4096,
            quotas: Quotas::unlimited(),
            history_retention: DEFAULT_HISTORY_RETENTION,
            wal_checkpoint_bytes: crate::storage::DEFAULT_WAL_CHECKPOINT_BYTES,
            list_scan_rows: MAX_LIST_SCAN_ROWS,
            etcd_prefix: DEFAULT_ETCD_PREFIX.to_owned(),
            anchor_file: None,
            accept_rollback: false,
        }
    }
}

/// List parameters.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Namespace, or empty for all.
    pub namespace: String,
    /// Kubernetes label selector syntax.
    pub label_selector: String,
    /// Kubernetes field selector syntax (`metadata.name`, `metadata.namespace`, `type`).
    pub field_selector: String,
    /// Page size; 0 means no limit (capped at [`MAX_LIST_LIMIT`]).
    pub limit: usize,
    /// The token from the previous page (it names the revision of the first page, and every
    /// later page is read at that revision).
    pub continue_token: String,
    /// 0: the latest state; N: the list exactly as it was at revision N.
    pub resource_version: u64,
    /// A soft cap on a page's size in bytes (by [`Secret::approx_size`]); 0 means no cap. A page
    /// always holds at least one item; once adding the next match would pass the cap the page
    /// ends with a continue token, so that one page of large Secrets stays within a response
    /// size that clients can read.
    pub max_bytes: usize,
}

/// Options of [`Store::update_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateOptions {
    /// The caller may not read the Secret (it lacks `get`): the answer must not depend on
    /// whether the data it sends matches the stored data. An immutable Secret then refuses the
    /// update as if the data differed, and a mutable one is always rewritten (a new
    /// resource_version) instead of returned unchanged.
    pub blind: bool,
}

/// Conditions a delete must meet; an unmet one fails with [`StoreError::Conflict`] or
/// [`StoreError::UidMismatch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// The object's current resource_version must be this; 0 means no condition.
    pub resource_version: u64,
    /// The object's uid must be this (so a Secret deleted and re-created under the same name is
    /// not deleted by mistake); `None` means no condition.
    pub uid: Option<String>,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListResult {
    /// The matching Secrets, in (namespace, name) order.
    pub items: Vec<Secret>,
    /// The store revision the list reflects; watch from here to see every later change.
    pub revision: u64,
    /// Non-empty when more items may follow.
    pub continue_token: String,
}

/// The engine: the API the gRPC service calls.
#[derive(Debug)]
pub struct Store {
    mvcc: Arc<dyn Mvcc>,
    seeds: SeedManager,
    algorithm: Algorithm,
    /// The sequencing lock: one write's read-check-write at a time (the keyspace assigns the
    /// revisions).
    sequencer: tokio::sync::Mutex<()>,
    /// Writes waiting for the group commit, and whether one of their writers leads it (see
    /// [`Store::submit`]).
    queue: std::sync::Mutex<WriteQueue>,
    /// See [`StoreConfig::history_retention`].
    retention: Duration,
    /// Writes applied but not yet published (they wait for durability): their log position,
    /// revision, and the Secret event (none for a write through the etcd door).
    pending: std::sync::Mutex<VecDeque<Pending>>,
    events: broadcast::Sender<Arc<ChangeEvent>>,
    /// The newest revision whose changes are durable (what the etcd door's watches follow).
    published: tokio::sync::watch::Sender<u64>,
    /// The etcd door's leases.
    leases: lease_table::Leases,
    /// Door keys under this prefix (`<etcd prefix>/secrets/`) name Secrets (see [`raw`]).
    door_secrets: Vec<u8>,
    /// Whether a value the API server encrypted itself was logged already (once is enough).
    told_apiserver_encrypted: std::sync::atomic::AtomicBool,
    /// Records sealed so far (for metrics).
    seals: AtomicU64,
    /// Records opened so far (for metrics).
    opens: AtomicU64,
    /// See [`StoreConfig::list_scan_rows`].
    list_scan_rows: usize,
    /// Quotas and per-namespace usage; checked and changed only while the sequencing lock is
    /// held, so a check and the write it admits are one step (a std mutex: never held across an
    /// await).
    quota: std::sync::Mutex<QuotaState>,
    /// Whether other processes write the keyspace too ([`Mvcc::shared`]: replicas over one
    /// etcd): revisions come from the storage, and events from its feed ([`Store::run_feed`]).
    shared: bool,
    /// A shared keyspace's feed of every committed change, until [`Store::run_feed`] takes it.
    feed: std::sync::Mutex<
        Option<tokio::sync::mpsc::UnboundedReceiver<crate::storage::mvcc::Change>>,
    >,
}

impl Store {
    /// Whether the storage backend failed (a failed log write or sync): every write and read is
    /// refused until restart.
    pub fn storage_failed(&self) -> bool {
        self.mvcc.is_failed()
    }

    /// Opens the embedded default: sled under `data_dir`, the local key-file KEK at
    /// `data_dir/kek.key` (created 0600 on first start; refused for a data directory made with
    /// a KMS plugin, see [`LocalKek::open_for_data_dir`]).
    pub async fn open_default(
        data_dir: impl Into<PathBuf>,
        durability: Durability,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
        Self::open_default_with_kms(data_dir, durability, config, |kms| kms).await
    }

    /// As [`Store::open_default`], but hands the local KEK to `wrap_kms` first, so that the
    /// caller can put a decorator (a call counter for metrics, say) between the store and it.
    pub async fn open_default_with_kms(
        data_dir: impl Into<PathBuf>,
        durability: Durability,
        config: StoreConfig,
        wrap_kms: impl FnOnce(Arc<dyn Kms>) -> Arc<dyn Kms>,
    ) -> Result<Self, StoreError> {
        let data_dir = data_dir.into();
        let kek = LocalKek::open_for_data_dir(&data_dir)?;
        Self::open_dir(data_dir, durability, config, wrap_kms(Arc::new(kek))).await
    }

    /// Opens sled under `data_dir` (as [`Store::open_default`]) with any KMS, such as a KMS v2
    /// plugin (`coffer_kms::GrpcKms`; see `coffer_kms::KmsConfig::open`).
    pub async fn open_dir(
        data_dir: impl Into<PathBuf>,
        durability: Durability,
        config: StoreConfig,
        kms: Arc<dyn Kms>,
    ) -> Result<Self, StoreError> {
        let mut sled = SledConfig::new(data_dir.into().join("db"));
        // The integrity key authenticates the log the backend replays: unwrapped first.
        let integrity = crate::kms::integrity::unlock_or_create(&sled.path, &*kms).await?;
        let store_id = integrity.store_id;
        sled.durability = durability;
        sled.wal_checkpoint_bytes = config.wal_checkpoint_bytes;
        sled.integrity = Some(integrity);
        sled.anchor = config.anchor_file.clone();
        sled.accept_rollback = config.accept_rollback;
        let backend = SledBackend::open(sled)?;
        let adopted = backend.adopted();
        Self::open_bound(Arc::new(backend), kms, config, Some(store_id), adopted).await
    }

    /// Opens a store over any ordered backend and KMS (the versioned keyspace is laid out in
    /// the backend by [`KvMvcc`]).
    pub async fn open(
        backend: Arc<dyn Backend>,
        kms: Arc<dyn Kms>,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
        Self::open_bound(backend, kms, config, None, false).await
    }

    /// As [`Store::open`], for the store `store_id` (its seeds must be bound to it).
    async fn open_bound(
        backend: Arc<dyn Backend>,
        kms: Arc<dyn Kms>,
        config: StoreConfig,
        store_id: Option<crate::crypto::StoreId>,
        rebind: bool,
    ) -> Result<Self, StoreError> {
        let mvcc = Arc::new(KvMvcc::open(backend, !config.history_retention.is_zero())?);
        let store = Self::open_mvcc_bound(mvcc.clone(), kms, config, store_id, rebind).await?;
        store.upgrade_from_unversioned(&mvcc).await?;
        Ok(store)
    }

    /// Opens a store over any versioned keyspace and KMS.
    pub async fn open_mvcc(
        mvcc: Arc<dyn Mvcc>,
        kms: Arc<dyn Kms>,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
        Self::open_mvcc_bound(mvcc, kms, config, None, false).await
    }

    async fn open_mvcc_bound(
        mvcc: Arc<dyn Mvcc>,
        kms: Arc<dyn Kms>,
        config: StoreConfig,
        store_id: Option<crate::crypto::StoreId>,
        rebind: bool,
    ) -> Result<Self, StoreError> {
        let mut store_id = store_id;
        if mvcc.shared() {
            // The shared keyspace's integrity keys (its digest key is kept by every commit)
            // and store id, made once for all replicas.
            let integrity =
                crate::kms::integrity::unlock_or_create_shared(mvcc.backend().as_ref(), &*kms)
                    .await?;
            store_id = Some(integrity.store_id);
            mvcc.set_integrity(integrity)?;
        }
        let seeds = SeedManager::load_bound(
            kms,
            mvcc.backend().clone(),
            config.seed_policy,
            config.outage,
            store_id,
            rebind,
        )
        .await?;
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let leases =
            lease_table::Leases::load(mvcc.as_ref(), &[RAW_PREFIX, SECRET_PREFIX.as_bytes()])?;
        let door_secrets = secrets_prefix(&config.etcd_prefix);
        let (published, _) = tokio::sync::watch::channel(mvcc.revision());
        let usage = if config.quotas.is_enabled() {
            scan_usage(mvcc.as_ref())?
        } else {
            HashMap::new()
        };
        Ok(Self {
            seeds,
            algorithm: config.algorithm,
            sequencer: tokio::sync::Mutex::new(()),
            queue: std::sync::Mutex::new(WriteQueue::default()),
            retention: config.history_retention,
            pending: std::sync::Mutex::new(VecDeque::new()),
            events,
            published,
            leases,
            door_secrets,
            told_apiserver_encrypted: std::sync::atomic::AtomicBool::new(false),
            seals: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            list_scan_rows: config.list_scan_rows.max(1),
            quota: std::sync::Mutex::new(QuotaState::new(config.quotas, usage)),
            shared: mvcc.shared(),
            feed: std::sync::Mutex::new(mvcc.take_feed()),
            mvcc,
        })
    }

    /// What `namespace` uses of its quota (always zero when no quota is configured).
    pub fn quota_usage(&self, namespace: &str) -> QuotaUsage {
        self.quota_state().usage(namespace)
    }

    /// Whether this process does the keyspace-wide upkeep (compaction by retention, the
    /// bootstrap-token cleaner): always on sled; on etcd storage, the one elected replica.
    pub fn is_leader(&self) -> bool {
        self.mvcc.is_leader()
    }

    /// The seed manager (for KMS status, rotation checks and `kms status` reports).
    pub fn seeds(&self) -> &SeedManager {
        &self.seeds
    }

    /// The AEAD used for new records.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The highest revision applied so far. On a shared keyspace: the newest revision whose
    /// changes this store has published (every change after it is still to come as an event,
    /// so a subscriber that reads it after subscribing misses nothing).
    pub fn revision(&self) -> u64 {
        if self.shared {
            *self.published.borrow()
        } else {
            self.mvcc.revision()
        }
    }

    /// The compaction revision: reads, lists and watches below it are refused with
    /// [`StoreError::TooOld`].
    pub fn compact_revision(&self) -> u64 {
        self.mvcc.compact_revision()
    }

    /// How many records this store has sealed (written) since it was opened.
    pub fn seal_count(&self) -> u64 {
        self.seals.load(Ordering::Relaxed)
    }

    /// How many records this store has opened (decrypted) since it was opened.
    pub fn open_count(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    /// Subscribes to change events (in revision order, each after it is durable).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeEvent>> {
        self.events.subscribe()
    }

    /// Makes everything written so far durable, whatever the durability mode (for shutdown).
    pub async fn sync(&self) -> Result<(), StoreError> {
        Ok(self.mvcc.sync().await?)
    }

    /// Creates a Secret. Sets uid, creation timestamp and resource_version.
    pub async fn create(&self, secret: Secret) -> Result<Secret, StoreError> {
        if self.shared {
            for _ in 1..SHARED_RETRIES {
                match self.create_once(secret.duplicate()).await {
                    Err(e) if counter_race(&e) => continue,
                    other => return other,
                }
            }
        }
        self.create_once(secret).await.map_err(give_up_race)
    }

    async fn create_once(&self, mut secret: Secret) -> Result<Secret, StoreError> {
        secret.merge_string_data();
        secret.apply_defaults();
        if secret.metadata.resource_version != 0 {
            return Err(invalid(
                "metadata.resourceVersion",
                FieldErrorKind::Invalid {
                    value: secret.metadata.resource_version.to_string(),
                    detail: "must be empty (0) on create".into(),
                },
            ));
        }
        validation::validate_secret(&secret)?;
        let key = secret.storage_key();
        // KMS calls (the outage probe, a new seed's Encrypt) happen before the sequencer: a
        // write waiting on the KMS must not hold up every other write. A failure is reported
        // where the write needs the seed, after the checks that come first (exists, ...).
        let seed = self.seeds.for_write().await;
        self.mvcc.read_barrier().await?;
        let seq = self.sequence().await;
        // On a local store the commit's condition (the key absent) answers the same; the read
        // is kept where it is cheaper than a failed commit (a shared keyspace's round trip)
        // or where it comes first (no seed for the write: exists is reported before that).
        let check_first = self.shared || seed.is_err();
        if check_first && self.mvcc.get(backend_key(&key).as_bytes(), None)?.is_some() {
            return Err(StoreError::AlreadyExists {
                namespace: secret.metadata.namespace,
                name: secret.metadata.name,
            });
        }
        secret.metadata.uid = uuid::Uuid::new_v4().to_string();
        secret.metadata.creation_timestamp = Some(now_unix());
        let change = Change::Put(&mut secret, EventKind::Added, seed, None);
        let prepared = self.seal_write(&key, change, None)?;
        let (lsn, revision) = self.commit_write(prepared, seq.is_some()).await?;
        drop(seq);
        secret.metadata.resource_version = revision;
        self.finish_write(lsn).await?;
        Ok(secret)
    }

    /// Replaces a Secret. A non-zero `metadata.resource_version` is a precondition; uid and
    /// creation timestamp are kept from the stored object. An update that changes nothing
    /// returns the stored object without a new revision, as Kubernetes does.
    pub async fn update(&self, secret: Secret) -> Result<Secret, StoreError> {
        self.update_with(secret, UpdateOptions::default()).await
    }

    /// As [`Store::update`], with options: a `blind` update (for a caller that may not read the
    /// Secret) answers the same whether or not the data it sends matches the stored data.
    pub async fn update_with(
        &self,
        secret: Secret,
        options: UpdateOptions,
    ) -> Result<Secret, StoreError> {
        // A write that got in between the read and the commit (another caller's here, or
        // another process's on a shared keyspace) is no conflict of the caller's when it named
        // no resource_version (nor is a race on the namespace's quota counter ever): read again
        // and retry. The last try holds the sequencer from the read to the commit, so a hot
        // Secret cannot starve an unconditional update (one process; on a shared keyspace other
        // processes can still get in, as before).
        let unconditional = secret.metadata.resource_version == 0;
        for _ in 1..SHARED_RETRIES {
            match self.update_once(secret.duplicate(), options, false).await {
                Err(StoreError::Conflict { .. }) if unconditional => continue,
                Err(e) if counter_race(&e) => continue,
                other => return other,
            }
        }
        self.update_once(secret, options, true)
            .await
            .map_err(give_up_race)
    }

    async fn update_once(
        &self,
        mut secret: Secret,
        options: UpdateOptions,
        locked: bool,
    ) -> Result<Secret, StoreError> {
        secret.merge_string_data();
        secret.apply_defaults();
        check_key_parts(&secret.metadata.namespace, &secret.metadata.name)?;
        let key = secret.storage_key();
        // KMS calls before the sequencer (see `create`); the stored version's seed too.
        let seed = self.seeds.for_write().await;
        self.mvcc.read_barrier().await?;
        let seq = self.sequence_read(&key, locked).await?;
        let (old, old_version, door_value) =
            self.read_current(&key)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    namespace: secret.metadata.namespace.clone(),
                    name: secret.metadata.name.clone(),
                })?;
        check_precondition(&old, secret.metadata.resource_version)?;
        if options.blind && old.immutable {
            // Judged as if the data differed: an immutable Secret refuses a blind update
            // whatever data it carries, with the error a wrong guess gets.
            let mut other = old.duplicate();
            other.data = if secret.data.is_empty() {
                std::iter::once((String::new(), crate::model::SecretValue::from(""))).collect()
            } else {
                Default::default()
            };
            validation::validate_update(&other, &secret)?;
        }
        validation::validate_update(&old, &secret)?;
        secret.metadata.uid = old.metadata.uid.clone();
        secret.metadata.creation_timestamp = old.metadata.creation_timestamp;
        // A blind update always writes (a new resource_version): keeping the old one on a
        // no-op would tell the caller its guess of the data was right.
        if !options.blind && unchanged(&old, &secret) {
            return Ok(old);
        }
        // A Secret the API server wrote stays in its form, every field kept.
        let change = Change::Put(&mut secret, EventKind::Modified, seed, door_value);
        let prepared = self.seal_write(&key, change, Some(&old_version))?;
        let (lsn, revision) = self.commit_write(prepared, seq.is_some()).await?;
        drop(seq);
        secret.metadata.resource_version = revision;
        self.finish_write(lsn).await?;
        Ok(secret)
    }

    /// Deletes a Secret; a non-zero `resource_version` is a precondition. Returns its last state
    /// with `resource_version` set to the delete's revision.
    pub async fn delete(
        &self,
        namespace: &str,
        name: &str,
        resource_version: u64,
    ) -> Result<Secret, StoreError> {
        let preconditions = Preconditions {
            resource_version,
            uid: None,
        };
        self.delete_with(namespace, name, &preconditions).await
    }

    /// Deletes a Secret if it meets `preconditions` (resource_version and/or uid). Returns its
    /// last state with `resource_version` set to the delete's revision.
    pub async fn delete_with(
        &self,
        namespace: &str,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Secret, StoreError> {
        // As in `update_with`: another write in between is no conflict of the caller's.
        let unconditional = preconditions.resource_version == 0;
        for _ in 1..SHARED_RETRIES {
            match self
                .delete_once(namespace, name, preconditions, false)
                .await
            {
                Err(StoreError::Conflict { .. }) if unconditional => continue,
                Err(e) if counter_race(&e) => continue,
                other => return other,
            }
        }
        self.delete_once(namespace, name, preconditions, true)
            .await
            .map_err(give_up_race)
    }

    async fn delete_once(
        &self,
        namespace: &str,
        name: &str,
        preconditions: &Preconditions,
        locked: bool,
    ) -> Result<Secret, StoreError> {
        check_key_parts(namespace, name)?;
        let key = crate::model::storage_key(namespace, name);
        self.mvcc.read_barrier().await?;
        let seq = self.sequence_read(&key, locked).await?;
        let (old, old_version, _) =
            self.read_current(&key)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })?;
        check_precondition(&old, preconditions.resource_version)?;
        if let Some(uid) = &preconditions.uid
            && *uid != old.metadata.uid
        {
            return Err(StoreError::UidMismatch {
                name: old.metadata.name.clone(),
                expected: uid.clone(),
                current: old.metadata.uid.clone(),
            });
        }
        let mut last = old.duplicate();
        let prepared = self.seal_write(&key, Change::Delete(Box::new(old)), Some(&old_version))?;
        let (lsn, revision) = self.commit_write(prepared, seq.is_some()).await?;
        drop(seq);
        last.metadata.resource_version = revision;
        self.finish_write(lsn).await?;
        Ok(last)
    }

    /// Reads one Secret (its latest version).
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Secret, StoreError> {
        self.get_at(namespace, name, 0).await
    }

    /// Reads one Secret as it was at `revision` (0: the latest): [`StoreError::NotFound`] when
    /// it did not exist then, [`StoreError::TooOld`] below the compaction revision,
    /// [`StoreError::TooLarge`] above the current one.
    pub async fn get_at(
        &self,
        namespace: &str,
        name: &str,
        revision: u64,
    ) -> Result<Secret, StoreError> {
        check_key_parts(namespace, name)?;
        let key = crate::model::storage_key(namespace, name);
        let at = (revision != 0).then_some(revision);
        if at.is_none() {
            self.mvcc.read_barrier().await?;
        }
        let version = self.mvcc.get(backend_key(&key).as_bytes(), at)?;
        self.mvcc.wait_durable(self.mvcc.applied()).await?;
        let secret = match version {
            Some(v) => self.open_version(&key, &v).await?,
            None => None,
        };
        // A value the API server encrypted itself is served through the etcd door only.
        secret.ok_or_else(|| StoreError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Lists Secrets by namespace and selectors, a page at a time.
    pub async fn list(&self, opts: &ListOptions) -> Result<ListResult, StoreError> {
        if !opts.namespace.is_empty() {
            validate_namespace(&opts.namespace)?;
        }
        let labels =
            LabelSelector::parse(&opts.label_selector).map_err(|e| StoreError::BadRequest {
                field: "labelSelector",
                message: e.to_string(),
            })?;
        let fields =
            FieldSelector::parse(&opts.field_selector).map_err(|e| StoreError::BadRequest {
                field: "fieldSelector",
                message: e.to_string(),
            })?;
        let namespace = match (opts.namespace.as_str(), fields.exact_namespace()) {
            ("", Some(ns)) => ns.to_owned(),
            (ns, _) => ns.to_owned(),
        };
        let prefix = if namespace.is_empty() {
            SECRET_PREFIX.to_owned()
        } else {
            format!("{SECRET_PREFIX}{namespace}/")
        };
        let limit = match opts.limit {
            0 => MAX_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        // Read the revision before scanning: everything up to it is visible to the scan, so a
        // watch from it misses nothing (it may repeat a change the list already shows). A list
        // at a revision (asked for, or named by a continue token) is exact.
        let (revision, at, mut cursor) = if opts.continue_token.is_empty() {
            match opts.resource_version {
                0 => {
                    self.mvcc.read_barrier().await?;
                    (self.mvcc.revision(), None, None)
                }
                rv => (rv, Some(rv), None),
            }
        } else {
            let (rv, start) = continue_token::decode(&opts.continue_token, &prefix)?;
            // A token names the revision of the list it continues, which cannot be newer than
            // the store: a forged one would report a revision that a watch cannot start from.
            if rv > self.mvcc.revision() {
                return Err(StoreError::BadRequest {
                    field: "continue",
                    message: "invalid continue token: its revision is newer than the store's"
                        .into(),
                });
            }
            (rv, Some(rv), Some(start))
        };
        let mut items = Vec::new();
        let mut page_bytes = 0usize;
        let mut more = false;
        let mut scanned = 0usize;
        'scan: loop {
            let rows = self.mvcc.range(
                prefix.as_bytes(),
                cursor.as_deref().map(str::as_bytes),
                at,
                SCAN_CHUNK,
            )?;
            self.mvcc.wait_durable(self.mvcc.applied()).await?;
            let exhausted = rows.len() < SCAN_CHUNK;
            for v in rows {
                let bkey = String::from_utf8(v.key.clone())
                    .map_err(|_| StoreError::data_loss("?", "storage key is not UTF-8"))?;
                let key = &bkey[SECRET_PREFIX.len()..];
                if items.len() == limit || scanned == self.list_scan_rows {
                    // A full page, or as many records opened as one call may: the next page
                    // starts after the last row read.
                    more = true;
                    break 'scan;
                }
                scanned += 1;
                let Some(secret) = self.open_version(key, &v).await? else {
                    // Served through the etcd door only.
                    cursor = Some(bkey);
                    continue;
                };
                if fields.matches(&secret) && labels.matches(&secret.metadata.labels) {
                    let size = secret.approx_size();
                    if opts.max_bytes > 0
                        && !items.is_empty()
                        && page_bytes.saturating_add(size) > opts.max_bytes
                    {
                        // The page is full: the next page starts at this row.
                        more = true;
                        break 'scan;
                    }
                    page_bytes = page_bytes.saturating_add(size);
                    items.push(secret);
                }
                cursor = Some(bkey);
            }
            if exhausted {
                break;
            }
        }
        let continue_token = match (more, cursor) {
            (true, Some(last)) => continue_token::encode(revision, &last),
            _ => String::new(),
        };
        Ok(ListResult {
            items,
            revision,
            continue_token,
        })
    }

    /// Seals one write against `old`, the version it replaces or deletes (`None` for a create:
    /// then the key must not exist), without any lock: [`Store::commit_write`] then writes it only
    /// if `old` is still the key's current version.
    ///
    /// The sealed object carries a predicted revision: the keyspace's next one when sealed.
    /// Other writes may commit first, so readers take every version's resource_version from
    /// the version itself (see [`Store::open_version`]), never from the sealed copy.
    fn seal_write(
        &self,
        key: &str,
        change: Change<'_>,
        old: Option<&Version>,
    ) -> Result<SealedWrite, StoreError> {
        let predicted = self.mvcc.revision() + 1;
        let bkey = backend_key(key).into_bytes();
        let (write, kind, object, new_len) = match change {
            Change::Put(secret, kind, seed, door_value) => {
                let (seed_id, seed) = seed?;
                secret.metadata.resource_version = predicted;
                let plaintext = match door_value {
                    Some(given) => {
                        let edited = k8s::edit(&given, secret)
                            .map_err(|e| StoreError::data_loss(key, e.to_string()))?;
                        let m = &secret.metadata;
                        codec::encode_door(&m.namespace, &m.name, predicted, &edited)
                    }
                    None => codec::encode(secret),
                };
                // On a shared keyspace the compare on `old` makes the key's next version known
                // now (the revision is not): the record is sealed for it.
                let aad = self.secret_aad(
                    key,
                    old.map_or(1, |v| v.version + 1),
                    old.map_or(0, |v| v.create_revision),
                );
                let record = crypto::seal(self.algorithm, seed_id, &seed, &aad, &plaintext);
                self.seals.fetch_add(1, Ordering::Relaxed);
                let new_len = record.len() as u64;
                // A lease attached through the etcd door stays attached.
                let write = Write::Put {
                    key: bkey,
                    value: record,
                    lease: old.map_or(0, |v| v.lease),
                };
                (write, kind, secret.duplicate(), Some(new_len))
            }
            Change::Delete(last) => (Write::Delete { key: bkey }, EventKind::Deleted, *last, None),
        };
        Ok(SealedWrite {
            key: key.to_owned(),
            expected: old.map_or(0, |v| v.mod_revision),
            old_len: old.map(|v| v.value.len() as u64),
            new_len,
            write,
            kind,
            object,
        })
    }

    /// Commits a prepared write; returns its log position and revision. `locked`: the caller
    /// holds the sequencer (a last try, or quotas on a shared keyspace). Otherwise a local
    /// store's write joins the group commit ([`Store::submit`]), and a shared keyspace's goes
    /// straight to the storage, whose compare is the precondition.
    async fn commit_write(
        &self,
        prepared: SealedWrite,
        locked: bool,
    ) -> Result<(Lsn, u64), StoreError> {
        if self.shared {
            return self.commit_write_shared(prepared);
        }
        let queued = Queued::Secret(prepared);
        let committed = if locked {
            self.commit_group_locked(vec![queued])
                .pop()
                .unwrap_or_else(not_committed)
        } else {
            self.submit(queued).await
        }?;
        Ok((committed.lsn, committed.revision))
    }

    /// The group commit: queues a prepared write (the Secret service's, or a door
    /// transaction's) and waits for its result. The first writer to find no leader leads: it
    /// takes the sequencer, then every queued write (up to [`MAX_GROUP`]), commits them as one
    /// storage batch ([`Mvcc::commit_group`]), answers each, and hands the lead to the oldest
    /// write still queued. The more writers wait, the larger the group, so one log write and
    /// one sync cover more of them as load grows.
    async fn submit(&self, prepared: Queued) -> Result<Committed, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut queue = self.write_queue();
            if queue.leading {
                queue.waiting.push_back((prepared, tx));
                None
            } else {
                queue.leading = true;
                Some(prepared)
            }
        };
        let own = match lead {
            Some(own) => own,
            None => match rx.await {
                Ok(Turn::Done(result)) => return result,
                Ok(Turn::Lead(own)) => *own,
                Err(_) => {
                    return Err(StoreError::Unavailable(
                        "the write was dropped before its commit".into(),
                    ));
                }
            },
        };
        // From here the lead passes on however this future ends (dropped while waiting for
        // the sequencer: its own write is simply not made).
        let _lead = Lead(self);
        let _seq = self.sequencer.lock().await;
        // No await from here on: every write taken from the queue is answered.
        let mut items = vec![own];
        let mut answer = Vec::new();
        {
            let mut queue = self.write_queue();
            let n = queue.waiting.len().min(MAX_GROUP - 1);
            for (p, tx) in queue.waiting.drain(..n) {
                items.push(p);
                answer.push(tx);
            }
        }
        let writes = items.iter().map(Queued::writes).sum();
        let mut results = commit_sized(writes, || self.commit_group_locked(items)).into_iter();
        let own = results.next().unwrap_or_else(not_committed);
        for (result, tx) in results.zip(answer) {
            // A caller that stopped waiting: its write is made all the same.
            let _ = tx.send(Turn::Done(result));
        }
        own
    }

    fn write_queue(&self) -> std::sync::MutexGuard<'_, WriteQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits prepared writes to the local keyspace, in order, each only if its conditions
    /// hold (a Secret service write: its key still at the version it was prepared against; a
    /// door transaction: every key it read still as read), under the sequencer (the caller
    /// holds it); queues their events. Quotas are checked here, one write after the other.
    fn commit_group_locked(&self, items: Vec<Queued>) -> Vec<Result<Committed, StoreError>> {
        let mut results: Vec<Option<Result<Committed, StoreError>>> =
            items.iter().map(|_| None).collect();
        let mut txns = Vec::with_capacity(items.len());
        let mut admitted = Vec::with_capacity(items.len());
        // Each namespace's usage with every Secret write admitted so far in this group; a
        // write is counted in the store's usage only once committed.
        let mut held = HashMap::new();
        let quotas = self.quota_state().enabled();
        for (index, item) in items.into_iter().enumerate() {
            let mut p = match item {
                Queued::Secret(p) => p,
                Queued::Door(mut d) => {
                    txns.push(d.take_txn());
                    admitted.push((index, Queued::Door(d)));
                    continue;
                }
            };
            match self.admit(&p, &mut held) {
                Ok(()) => {
                    // The sealed record moves into the transaction (no copy on the hot path).
                    let write = std::mem::replace(&mut p.write, Write::Delete { key: Vec::new() });
                    txns.push(Txn {
                        conditions: vec![Condition {
                            key: write.key().to_vec(),
                            mod_revision: p.expected,
                        }],
                        writes: vec![write],
                        meta: Vec::new(),
                    });
                    admitted.push((index, Queued::Secret(p)));
                }
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        let committed = self.mvcc.commit_group(txns);
        for ((index, item), outcome) in admitted.into_iter().zip(committed) {
            results[index] = Some(match (item, outcome) {
                (Queued::Secret(p), Ok(c)) => {
                    if quotas {
                        self.quota_state()
                            .count(quota::namespace_of(&p.key), p.old_len, p.new_len);
                    }
                    let mut object = p.object;
                    object.metadata.resource_version = c.revision;
                    self.pending_events().push_back(Pending {
                        lsn: c.lsn,
                        revision: c.revision,
                        event: Some(Arc::new(ChangeEvent {
                            kind: p.kind,
                            object,
                            revision: c.revision,
                        })),
                    });
                    Ok(c)
                }
                // An earlier member of the group wrote its key (a racing Create of the same
                // name): nothing was counted.
                (Queued::Secret(p), Err(e)) => Err(condition_error(&p.key, p.expected, e)),
                (Queued::Door(d), Ok(c)) => {
                    d.committed(self, &c);
                    Ok(c)
                }
                (Queued::Door(_), Err(e)) => Err(e.into()),
            });
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(not_committed))
            .collect()
    }

    /// Admits a prepared write to its namespace's quota over `held`, the group's usage with
    /// the writes admitted before it, and adds it there (quotas on only). The key's version is
    /// checked first, so that a write refused for its condition holds no room; the caller
    /// holds the sequencer, so nothing but the group changes it before the commit.
    fn admit(
        &self,
        p: &SealedWrite,
        held: &mut HashMap<String, QuotaUsage>,
    ) -> Result<(), StoreError> {
        let quota = self.quota_state();
        if !quota.enabled() {
            return Ok(());
        }
        let current = self
            .mvcc
            .get(p.write.key(), None)?
            .map_or(0, |v| v.mod_revision);
        if current != p.expected {
            return Err(condition_error(
                &p.key,
                p.expected,
                crate::storage::StorageError::ConditionFailed {
                    key: p.key.clone(),
                    expected: p.expected,
                    current,
                },
            ));
        }
        let namespace = quota::namespace_of(&p.key);
        let used = held
            .get(namespace)
            .copied()
            .unwrap_or_else(|| quota.usage(namespace));
        let after = match p.new_len {
            Some(len) => quota.admit_put_over(namespace, used, p.old_len, len)?,
            None => used.after(p.old_len, None),
        };
        held.insert(namespace.to_owned(), after);
        Ok(())
    }

    /// Commits a prepared write to a shared keyspace: the storage gives the revision, its
    /// compare on the key's version is the precondition across processes (a write another
    /// process got in first fails as the local check would have: `AlreadyExists` for a create,
    /// `Conflict` otherwise), and the event comes back through the feed. With quotas the
    /// namespace's usage is a counter key that the transaction checks and updates, so that
    /// replicas never overshoot together (the caller holds the sequencer then).
    fn commit_write_shared(&self, p: SealedWrite) -> Result<(Lsn, u64), StoreError> {
        let bkey = p.write.key().to_vec();
        let condition = Condition {
            key: bkey,
            mod_revision: p.expected,
        };
        let counter = if self.quota_state().enabled() {
            let namespace = quota::namespace_of(&p.key);
            let ckey = format!("{QUOTA_PREFIX}{namespace}").into_bytes();
            let (usage, revision) = match self.mvcc.get(&ckey, None)? {
                Some(v) => (decode_usage(&v.value, &p.key)?, v.mod_revision),
                None => (
                    scan_usage_prefix(
                        self.mvcc.as_ref(),
                        format!("{SECRET_PREFIX}{namespace}/").as_bytes(),
                    )?,
                    0,
                ),
            };
            self.quota_state().set(namespace, usage);
            Some(Condition {
                key: ckey,
                mod_revision: revision,
            })
        } else {
            None
        };
        let namespace = quota::namespace_of(&p.key);
        let quota_after = match p.new_len {
            Some(len) => self.quota_state().admit_put(namespace, p.old_len, len)?,
            None => self
                .quota_state()
                .after_delete(namespace, p.old_len.unwrap_or(0)),
        };
        let mut conditions = vec![condition];
        let mut writes = vec![p.write];
        if let Some(c) = counter {
            writes.push(Write::Put {
                key: c.key.clone(),
                value: encode_usage(quota_after),
                lease: 0,
            });
            conditions.push(c);
        }
        let committed = match self.mvcc.commit(Txn {
            conditions,
            writes,
            meta: Vec::new(),
        }) {
            Ok(c) => c,
            Err(crate::storage::StorageError::ConditionFailed {
                key: failed,
                expected,
                current,
            }) if failed.starts_with(QUOTA_PREFIX) => {
                // Another replica wrote in this namespace since the counter was read.
                return Err(StoreError::Storage(
                    crate::storage::StorageError::ConditionFailed {
                        key: failed,
                        expected,
                        current,
                    },
                ));
            }
            Err(e) => return Err(condition_error(&p.key, p.expected, e)),
        };
        let mut quota = self.quota_state();
        if quota.enabled() {
            quota.set(namespace, quota_after);
        }
        // Its event comes back through the feed, with every other process's.
        Ok((committed.lsn, committed.revision))
    }

    /// Waits for durability of `lsn`, then publishes every event up to it, in order, and the
    /// newest revision published.
    async fn finish_write(&self, lsn: Lsn) -> Result<(), StoreError> {
        self.mvcc.wait_durable(lsn).await?;
        let mut pending = self.pending_events();
        let mut newest = None;
        while pending.front().is_some_and(|p| p.lsn <= lsn) {
            if let Some(p) = pending.pop_front() {
                newest = Some(p.revision);
                if let Some(event) = p.event {
                    // No subscribers is fine: the event simply has no audience.
                    let _ = self.events.send(event);
                }
            }
        }
        if let Some(revision) = newest {
            self.published.send_if_modified(|r| {
                let newer = revision > *r;
                if newer {
                    *r = revision;
                }
                newer
            });
        }
        Ok(())
    }

    /// Takes the sequencing lock for a Secret write's read-check-write where the write needs
    /// it: on a shared keyspace with quotas (the namespace counter would make a replica's
    /// concurrent writes race each other). Elsewhere nothing needs writes one at a time from
    /// the read on: the commit's condition on the version read is the precondition (a local
    /// store's group commit checks it under the sequencer; a shared keyspace's storage
    /// compares it), and holding a lock across the read, the checks and the sealing would
    /// make every write wait for all of that in every other.
    async fn sequence(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.shared && self.quota_state().enabled() {
            return Some(self.sequencer.lock().await);
        }
        None
    }

    /// For a write that reads `key`'s stored version first: the sequencer when the write
    /// holds it from the read on (`locked`: a last try on a local store; or see
    /// [`Store::sequence`]), taken once the stored version's seed is in memory.
    async fn sequence_read(
        &self,
        key: &str,
        locked: bool,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>, StoreError> {
        if locked && !self.shared {
            self.prefetch_seed(key).await?;
            return Ok(Some(self.sequencer.lock().await));
        }
        if self.shared && self.quota_state().enabled() {
            self.prefetch_seed(key).await?;
        }
        Ok(self.sequence().await)
    }

    fn pending_events(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure the seed of the stored version of `key` is in memory, unwrapping it through
    /// the KMS if needed, before the caller takes the sequencer (a seed the KMS could not unwrap
    /// at start would otherwise be unwrapped, up to the KMS deadline, while every write waits).
    /// A record that does not parse is left to the locked read, which reports it. A write that
    /// takes no lock needs none of this: its read unwraps the seed while nobody waits.
    async fn prefetch_seed(&self, key: &str) -> Result<(), StoreError> {
        let Some(v) = self.mvcc.get(backend_key(key).as_bytes(), None)? else {
            return Ok(());
        };
        if let Ok(header) = RecordHeader::parse(&v.value)
            && self.seeds.seed(header.seed_id).is_none()
        {
            self.seeds.seed_for_read(header.seed_id).await?;
        }
        Ok(())
    }

    /// Reads the current object, its stored version and (for a Secret the API server wrote)
    /// the value as written, for a write to prepare against (no durability wait: the caller's
    /// own write comes later and is waited for; its commit's condition on the version makes
    /// sure nothing got in between). `None` also for a value only the door serves.
    async fn read_current(
        &self,
        key: &str,
    ) -> Result<Option<(Secret, Version, Option<Zeroizing<Vec<u8>>>)>, StoreError> {
        let Some(v) = self.mvcc.get(backend_key(key).as_bytes(), None)? else {
            return Ok(None);
        };
        let opened = self.open_stored_version(key, &v).await?;
        Ok(opened.secret.map(|mut s| {
            // As in `open_version`: the version's revision is the resource_version.
            s.metadata.resource_version = v.mod_revision;
            (s, v, opened.door_value)
        }))
    }

    fn quota_state(&self) -> std::sync::MutexGuard<'_, QuotaState> {
        self.quota.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a stored version of the Secret at storage key `key` (`namespace/name`); `None`
    /// for a value written through the etcd door that is not a Secret Coffer can show.
    ///
    /// Its resource_version is the version's revision: the same as the sealed copy's when this
    /// store is the only writer, and the storage's own on a shared keyspace (where the sealed
    /// copy names the revision the writer predicted).
    async fn open_version(
        &self,
        key: &str,
        version: &Version,
    ) -> Result<Option<Secret>, StoreError> {
        let mut shown = self.open_stored_version(key, version).await?.secret;
        if let Some(s) = &mut shown {
            s.metadata.resource_version = version.mod_revision;
        }
        Ok(shown)
    }

    /// Opens a record of the Secret at storage key `key`: what it shows, and the value as
    /// written when it came through the etcd door.
    async fn open_stored(&self, key: &str, record: &[u8]) -> Result<Opened, StoreError> {
        self.open_stored_with(key, key.as_bytes(), record).await
    }

    /// The associated data of a Secret's record under storage key `key`: the key, and on a
    /// shared keyspace also the per-key version the record is stored at and, from the second
    /// version on, the key's create_revision. Both are known before the write's transaction
    /// (its compare on the key's mod_revision fixes them), unlike the revision. A ciphertext
    /// put back later (etcdctl put of an older value) lands at another version, or another
    /// create_revision, and no longer opens.
    fn secret_aad(&self, key: &str, version: u64, create_revision: u64) -> Vec<u8> {
        if self.shared {
            shared_secret_aad(key, version, create_revision)
        } else {
            key.as_bytes().to_vec()
        }
    }

    /// Opens the stored version `v` of the Secret at storage key `key` (see
    /// [`Store::secret_aad`]). On a shared keyspace a record that does not open at its version
    /// is logged and answered as data loss naming the version.
    async fn open_stored_version(&self, key: &str, v: &Version) -> Result<Opened, StoreError> {
        let aad = self.secret_aad(key, v.version, v.create_revision);
        match self.open_stored_with(key, &aad, &v.value).await {
            Err(StoreError::DataLoss { key: k, reason }) if self.shared => {
                tracing::error!(key = %k, version = v.version, mod_revision = v.mod_revision,
                    create_revision = v.create_revision, error = %reason,
                    "a record does not open at its etcd version: an older ciphertext was put \
                     back (etcdctl put) or the record was altered");
                Err(StoreError::DataLoss {
                    key: k,
                    reason: format!(
                        "{reason}; the record does not belong at etcd version {} (mod_revision \
                         {}): an older ciphertext was put back or the record was altered",
                        v.version, v.mod_revision
                    ),
                })
            }
            other => other,
        }
    }

    async fn open_stored_with(
        &self,
        key: &str,
        aad: &[u8],
        record: &[u8],
    ) -> Result<Opened, StoreError> {
        let plaintext = self.unseal(key, aad, record).await?;
        let stored =
            codec::decode_stored(plaintext.expose()).map_err(|e| StoreError::data_loss(key, e))?;
        match stored {
            codec::Stored::Native(secret) => {
                if secret.storage_key() != key {
                    return Err(StoreError::data_loss(key, "record names another object"));
                }
                Ok(Opened {
                    secret: Some(secret),
                    door_value: None,
                })
            }
            codec::Stored::Door(door) => {
                if crate::model::storage_key(&door.namespace, &door.name) != key {
                    return Err(StoreError::data_loss(key, "record names another object"));
                }
                let secret = match k8s::decode(&door.namespace, &door.name, &door.value) {
                    k8s::Decoded::Secret(mut s) => {
                        s.metadata.resource_version = door.resource_version;
                        Some(*s)
                    }
                    k8s::Decoded::Opaque(_) => None,
                };
                Ok(Opened {
                    secret,
                    door_value: Some(door.value),
                })
            }
        }
    }
}

impl Store {
    /// Opens a sealed record with the associated data `aad`; `label` names it in errors.
    async fn unseal(
        &self,
        label: &str,
        aad: &[u8],
        record: &[u8],
    ) -> Result<crypto::Plaintext, StoreError> {
        let header = RecordHeader::parse(record).map_err(|e| StoreError::open_failed(label, e))?;
        let seed = self
            .seeds
            .seed_for_read(header.seed_id)
            .await?
            .ok_or_else(|| {
                StoreError::open_failed(label, crypto::OpenError::UnknownSeed(header.seed_id))
            })?;
        self.opens.fetch_add(1, Ordering::Relaxed);
        header
            .open(&seed, aad)
            .map_err(|e| StoreError::open_failed(label, e))
    }
}

/// The associated data of a Secret's record on a shared keyspace (see `Store::secret_aad`):
/// `namespace/name`, then `\0etcd version `, the key's version and (from version 2 on) its
/// create_revision, big-endian. A storage key never holds a NUL, so the binding cannot be
/// confused with a key.
pub fn shared_secret_aad(key: &str, version: u64, create_revision: u64) -> Vec<u8> {
    let mut aad = key.as_bytes().to_vec();
    aad.extend_from_slice(b"\0etcd version ");
    aad.extend_from_slice(&version.to_be_bytes());
    let created = if version <= 1 { 0 } else { create_revision };
    aad.extend_from_slice(&created.to_be_bytes());
    aad
}

/// `coffer verify --storage`: whether the record of the Secret at storage key `key`, stored at
/// etcd `version` (`create_revision`), opens there with one of `seeds`; the reason if not.
pub fn check_shared_record(
    seeds: &HashMap<u32, crate::crypto::Seed>,
    key: &str,
    version: u64,
    create_revision: u64,
    record: &[u8],
) -> Result<(), String> {
    let header = RecordHeader::parse(record).map_err(|e| e.to_string())?;
    let seed = seeds
        .get(&header.seed_id)
        .ok_or_else(|| format!("its seed {} is missing or was refused", header.seed_id))?;
    header
        .open(seed, &shared_secret_aad(key, version, create_revision))
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{e}: it does not open at etcd version {version}: an older ciphertext was put \
                 back or the record was altered"
            )
        })
}

/// A stored version opened: the Secret it shows (none for a door value that is not a Secret
/// Coffer can show, such as one the API server encrypted itself) and, for a value written
/// through the etcd door, the bytes as written.
struct Opened {
    secret: Option<Secret>,
    door_value: Option<Zeroizing<Vec<u8>>>,
}

/// A write waiting for durability before it is published.
#[derive(Debug)]
struct Pending {
    lsn: Lsn,
    revision: u64,
    event: Option<Arc<ChangeEvent>>,
}

/// One write, as the sequencer applies it.
enum Change<'a> {
    /// Seal and store this object under this seed (taken before the sequencer); publish it
    /// with this event kind. With the value the API server wrote (the version it replaces was
    /// written through the etcd door), that value is edited instead, every other field kept.
    Put(
        &'a mut Secret,
        EventKind,
        Result<(u32, Arc<crate::crypto::Seed>), crate::kms::SeedError>,
        Option<Zeroizing<Vec<u8>>>,
    ),
    /// Remove the object; publish this, its last state.
    Delete(Box<Secret>),
}

/// The most writes one group commit takes (the rest wait for the next).
const MAX_GROUP: usize = 256;

/// The number of writes above which a storage commit runs off the runtime's worker
/// ([`crate::storage::off_worker`]). A door DeleteRange of 9,000 keys (etcdctl's `check perf`
/// cleans up so) held a worker for seconds, and every connection waited with it. A batch this
/// small takes less time than handing the worker over would cost the write path.
const LARGE_BATCH: usize = 64;

/// Runs `commit`, a storage commit of `writes` writes, in place or, when large, off the
/// runtime's worker.
fn commit_sized<R>(writes: usize, commit: impl FnOnce() -> R) -> R {
    if writes > LARGE_BATCH {
        crate::storage::off_worker(commit)
    } else {
        commit()
    }
}

/// A write sealed outside the sequencer, with the version it was prepared against.
struct SealedWrite {
    /// The storage key (`namespace/name`).
    key: String,
    /// The key's `mod_revision` when read (0: absent): the commit's condition.
    expected: u64,
    /// The stored record's length before, and after (`None`: a delete), for quotas.
    old_len: Option<u64>,
    new_len: Option<u64>,
    /// What to write.
    write: Write,
    /// The event's kind and object (its resource_version set at the commit).
    kind: EventKind,
    object: Secret,
}

/// A write for the group commit. The Secret service's is unboxed: each moves through the queue
/// once, and boxing it would add an allocation to its hot path.
#[allow(clippy::large_enum_variant)]
enum Queued {
    /// The Secret service's write.
    Secret(SealedWrite),
    /// A door transaction.
    Door(Box<dyn DoorMember>),
}

/// A door transaction as the group commit takes it (the door's type lives with the door, which
/// builds on this module, not the other way round).
trait DoorMember: Send {
    /// The storage transaction, moved out for the commit.
    fn take_txn(&mut self) -> Txn;
    /// How many keys it writes.
    fn writes(&self) -> usize;
    /// What follows its commit, under the sequencing lock.
    fn committed(self: Box<Self>, store: &Store, committed: &Committed);
}

impl Queued {
    /// How many keys it writes (for [`commit_sized`]).
    fn writes(&self) -> usize {
        match self {
            Queued::Secret(_) => 1,
            Queued::Door(d) => d.writes(),
        }
    }
}

/// The answer to a write the group commit took and did not answer (never expected).
fn not_committed() -> Result<Committed, StoreError> {
    Err(StoreError::Unavailable(
        "the write was not committed".into(),
    ))
}

/// Writes waiting for the group commit.
#[derive(Default)]
struct WriteQueue {
    waiting: VecDeque<(Queued, tokio::sync::oneshot::Sender<Turn>)>,
    /// Whether a writer leads (takes the queue next).
    leading: bool,
}

impl std::fmt::Debug for WriteQueue {
    // The queued writes hold sealed records only, but a count says enough.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue")
            .field("waiting", &self.waiting.len())
            .field("leading", &self.leading)
            .finish()
    }
}

/// What a queued writer hears back.
enum Turn {
    /// Its write's result.
    Done(Result<Committed, StoreError>),
    /// Its write was not taken: it leads the next group, with this write in it.
    Lead(Box<Queued>),
}

/// Held by the group commit's leader: when dropped, the lead passes to the oldest queued
/// writer still waiting, or lapses when none is.
struct Lead<'a>(&'a Store);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.write_queue();
        while let Some((prepared, tx)) = queue.waiting.pop_front() {
            match tx.send(Turn::Lead(Box::new(prepared))) {
                Ok(()) => return,
                // That writer stopped waiting: its write is not made; try the next.
                Err(_) => continue,
            }
        }
        queue.leading = false;
    }
}

/// The answer to a write whose condition failed: the key changed since the write read it
/// (`AlreadyExists` for a create, `NotFound` once deleted, `Conflict` otherwise). Other
/// errors pass through.
fn condition_error(key: &str, expected: u64, e: crate::storage::StorageError) -> StoreError {
    match e {
        crate::storage::StorageError::ConditionFailed { current, .. } => {
            let (namespace, name) = key.split_once('/').unwrap_or(("", key));
            if expected == 0 {
                StoreError::AlreadyExists {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }
            } else if current == 0 {
                StoreError::NotFound {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }
            } else {
                StoreError::Conflict {
                    name: name.to_owned(),
                    expected,
                    current,
                }
            }
        }
        other => other.into(),
    }
}

/// The keys of the per-namespace usage counters on a shared keyspace (`q/<namespace>`).
const QUOTA_PREFIX: &str = "q/";

/// Whether `e` is a lost race on a namespace's usage counter (retried: nothing was written).
fn counter_race(e: &StoreError) -> bool {
    matches!(e, StoreError::Storage(crate::storage::StorageError::ConditionFailed { key, .. })
        if key.starts_with(QUOTA_PREFIX))
}

/// A counter race still lost after every retry: the namespace is too busy right now.
fn give_up_race(e: StoreError) -> StoreError {
    if counter_race(&e) {
        StoreError::Unavailable(
            "the namespace's quota counter changed on every try (other replicas write it); retry"
                .into(),
        )
    } else {
        e
    }
}

/// A usage counter's value: count and bytes, big-endian.
fn encode_usage(u: QuotaUsage) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&u.count.to_be_bytes());
    out.extend_from_slice(&u.bytes.to_be_bytes());
    out
}

fn decode_usage(raw: &[u8], key: &str) -> Result<QuotaUsage, StoreError> {
    let (count, bytes) = raw
        .split_first_chunk::<8>()
        .and_then(|(c, rest)| Some((*c, <[u8; 8]>::try_from(rest).ok()?)))
        .ok_or_else(|| StoreError::data_loss(key, "the namespace's quota counter is damaged"))?;
    Ok(QuotaUsage {
        count: u64::from_be_bytes(count),
        bytes: u64::from_be_bytes(bytes),
    })
}

/// One namespace's usage from its current records (`prefix` = `s/<namespace>/`).
fn scan_usage_prefix(mvcc: &dyn Mvcc, prefix: &[u8]) -> Result<QuotaUsage, StoreError> {
    let mut usage = QuotaUsage::default();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let rows = mvcc.range(prefix, cursor.as_deref(), None, SCAN_CHUNK)?;
        let done = rows.len() < SCAN_CHUNK;
        for v in &rows {
            usage.count += 1;
            usage.bytes += v.value.len() as u64;
        }
        cursor = rows.into_iter().next_back().map(|v| v.key);
        if done || cursor.is_none() {
            return Ok(usage);
        }
    }
}

/// Every namespace's usage, from the current records' keys and lengths (nothing is
/// decrypted; history does not count).
fn scan_usage(mvcc: &dyn Mvcc) -> Result<HashMap<String, QuotaUsage>, StoreError> {
    let mut usage: HashMap<String, QuotaUsage> = HashMap::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let rows = mvcc.range(
            SECRET_PREFIX.as_bytes(),
            cursor.as_deref(),
            None,
            SCAN_CHUNK,
        )?;
        let done = rows.len() < SCAN_CHUNK;
        for v in &rows {
            let key = String::from_utf8_lossy(&v.key[SECRET_PREFIX.len().min(v.key.len())..]);
            let u = usage
                .entry(quota::namespace_of(&key).to_owned())
                .or_default();
            u.count += 1;
            u.bytes += v.value.len() as u64;
        }
        cursor = rows.into_iter().next_back().map(|v| v.key);
        if done || cursor.is_none() {
            return Ok(usage);
        }
    }
}

/// The door keys that name Secrets start with this: `<etcd prefix>/secrets/`, the prefix
/// cleaned as kube-apiserver cleans it (`path.Join("/", prefix)`).
fn secrets_prefix(etcd_prefix: &str) -> Vec<u8> {
    let inner: Vec<&str> = etcd_prefix.split('/').filter(|p| !p.is_empty()).collect();
    let mut p = String::from("/");
    for part in inner {
        p.push_str(part);
        p.push('/');
    }
    p.push_str("secrets/");
    p.into_bytes()
}

fn backend_key(key: &str) -> String {
    format!("{SECRET_PREFIX}{key}")
}

fn invalid(field: &str, kind: FieldErrorKind) -> StoreError {
    StoreError::Invalid(ValidationErrors(vec![FieldError {
        field: field.to_owned(),
        kind,
    }]))
}

/// Namespace and name are checked on every call: they form the storage key.
fn check_key_parts(namespace: &str, name: &str) -> Result<(), StoreError> {
    let mut errors = Vec::new();
    if let Err(e) = validate_namespace(namespace) {
        errors.extend(e.0);
    }
    if let Err(e) = validate_name(name) {
        errors.extend(e.0);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(ValidationErrors(errors)))
    }
}

fn check_precondition(old: &Secret, expected: u64) -> Result<(), StoreError> {
    if expected != 0 && expected != old.metadata.resource_version {
        return Err(StoreError::Conflict {
            name: old.metadata.name.clone(),
            expected,
            current: old.metadata.resource_version,
        });
    }
    Ok(())
}

fn unchanged(old: &Secret, new: &Secret) -> bool {
    old.type_ == new.type_
        && old.immutable == new.immutable
        && old.data == new.data
        && old.metadata.labels == new.metadata.labels
        && old.metadata.annotations == new.metadata.annotations
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
