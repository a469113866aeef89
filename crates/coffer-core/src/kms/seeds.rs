//! Seeds: the 32-byte secrets that the KMS wraps and that every data key derives from.
//!
//! One KMS `Encrypt` per seed, never per write. Seeds are persisted wrapped (with their key_id and
//! annotations) in the backend under `k/seed/<id>`, unwrapped once at start (one `Decrypt` each),
//! kept in memory in zeroizing boxes, and replaced for new writes when the KMS reports a new
//! key_id or the current seed reaches its age or write limit. Old seeds stay readable. The age
//! is the larger of the wall-clock age and the time the seed has been current in this process
//! (monotonic), and a seed dated in the future counts as expired, so that setting the clock back
//! cannot keep a seed in use forever.
//!
//! The outage policy lives here too, as the write gate: a write needs a good KMS `Status` within
//! the last [`OutagePolicy::grace`]; past it, the write asks the plugin for its `Status` itself
//! (so a returning plugin is noticed at once; writers that queue behind a probe share its
//! answer) and fails with [`KmsError::Unreachable`] if the plugin still does not answer well.
//! Reads never wait for the KMS while their seed is in memory.
//!
//! Seeds are bound to their store: the store has an id (`k/store`, made with the store, or given
//! by the data directory's integrity record), and each seed row carries a check value bound to
//! that id and the seed's id (`crypto::integrity::seed_check`), recomputed after every `Decrypt`
//! and once right after a seed is made, before its first use. A seed row copied from another
//! store that shares the KMS unwraps fine but fails its check, and the store refuses to open. A
//! store from before the binding gets its id and check values on its first start (every seed
//! must unwrap then); after that a row without a check value is refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Kms, KmsError, KmsStatus, Wrapped};
use crate::crypto::integrity::{seed_check, seed_check_ok};
use crate::crypto::{Seed, StoreId};
use crate::storage::{Backend, Batch, StorageError};

/// How far ahead of this machine's clock a seed's creation time may be (clocks of replicas
/// differ a little) before the seed counts as expired: one hour.
const MAX_CLOCK_SKEW_SECS: i64 = 3600;

/// The backend key prefix of the seeds table.
pub const SEED_PREFIX: &[u8] = b"k/seed/";
/// The backend key of the store id the seeds are bound to.
pub const STORE_ID_KEY: &[u8] = b"k/store";

/// When the current seed is replaced for new writes (besides a key_id change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedPolicy {
    /// Replace the seed once it is this old. Default: 30 days.
    pub max_age: Duration,
    /// Replace the seed after this many writes under it in this process. Default: 2^32 (random
    /// 32-byte HKDF infos make collisions negligible far beyond this).
    pub max_writes: u64,
}

impl Default for SeedPolicy {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_writes: 1 << 32,
        }
    }
}

/// Public facts about one seed (never the seed itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedInfo {
    /// The seed id records refer to.
    pub id: u32,
    /// The key_id of the KEK that wrapped it.
    pub key_id: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: i64,
    /// Whether it is unwrapped in memory (false when the KMS could not unwrap it yet).
    pub available: bool,
}

/// Errors of the seed manager.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The KMS failed.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The seeds table could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A seed that new writes use (or may use) cannot be retired.
    #[error("seed {id} is in use for new writes and cannot be retired")]
    InUse {
        /// The seed id.
        id: u32,
    },
    /// A stored seed row is damaged.
    #[error("seed {id} is damaged: {reason}")]
    Corrupt {
        /// The seed id.
        id: u32,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredSeed {
    #[prost(bytes = "vec", tag = "1")]
    wrapped: Vec<u8>,
    #[prost(string, tag = "2")]
    key_id: String,
    #[prost(btree_map = "string, bytes", tag = "3")]
    annotations: BTreeMap<String, Vec<u8>>,
    #[prost(int64, tag = "4")]
    created_unix: i64,
    /// `seed_check(seed, store id, seed id)`; empty in rows from before the binding.
    #[prost(bytes = "vec", tag = "5")]
    check: Vec<u8>,
}

impl StoredSeed {
    fn wrapped(&self) -> Wrapped {
        Wrapped {
            ciphertext: self.wrapped.clone(),
            key_id: self.key_id.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Unwrapped seeds by id.
    unwrapped: HashMap<u32, Arc<Seed>>,
    /// Every persisted seed, unwrapped or not.
    stored: BTreeMap<u32, StoredSeed>,
    /// The seed new writes use, if it is still valid.
    current: Option<u32>,
    /// Writes under `current` in this process.
    current_writes: u64,
    /// When `current` became current in this process (monotonic): the seed's age is also
    /// measured from here, so that a wall clock set back cannot keep a seed forever.
    current_since: Option<Instant>,
    /// The key_id the KMS last reported in a good Status.
    kms_key_id: Option<String>,
    /// The store the seeds are bound to.
    store_id: Option<StoreId>,
}

/// What the seed manager knows about the KMS's health.
#[derive(Debug, Default)]
struct Health {
    /// When the last good `Status` arrived.
    last_good: Option<Instant>,
    /// The last good `Status`.
    last_status: Option<KmsStatus>,
    /// Whether the last `Status` attempt was good.
    last_ok: bool,
    /// Why the last failed `Status` (or other KMS call) failed.
    last_error: Option<String>,
    /// How many `Status` probes of writes (past the grace period) have finished.
    probes: u64,
}

/// Public facts about the KMS's health, for `coffer kms status` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsHealth {
    /// The last good `Status`, if any.
    pub last_status: Option<KmsStatus>,
    /// How long ago it arrived.
    pub last_good_age: Option<Duration>,
    /// Whether the latest `Status` attempt was good.
    pub healthy: bool,
    /// Why the latest failed attempt failed.
    pub last_error: Option<String>,
    /// Whether writes are allowed now (a good `Status` within the grace period).
    pub writable: bool,
}

/// How the KMS is watched and how long writes outlive an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutagePolicy {
    /// Writes keep working this long after the last good `Status`, then fail with UNAVAILABLE
    /// ("KMS unreachable"); reads go on from the seeds in memory. Default 3 min.
    pub grace: Duration,
    /// The poll interval while the plugin answers well. Default 60 s.
    pub healthy_interval: Duration,
    /// The poll interval after a failed `Status`. Default 10 s.
    pub failing_interval: Duration,
}

impl Default for OutagePolicy {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(180),
            healthy_interval: Duration::from_secs(60),
            failing_interval: Duration::from_secs(10),
        }
    }
}

/// Owns the seeds: unwraps them at start, hands them out for reads and writes, makes new ones.
#[derive(Debug)]
pub struct SeedManager {
    kms: Arc<dyn Kms>,
    backend: Arc<dyn Backend>,
    policy: SeedPolicy,
    /// Status polling and the write grace period.
    outage: OutagePolicy,
    inner: RwLock<Inner>,
    /// Serialises seed creation so concurrent writers do not each make a seed.
    rotation: tokio::sync::Mutex<()>,
    /// The KMS's health; a std mutex, held for a few field updates only.
    health: std::sync::Mutex<Health>,
    /// Serialises the `Status` probes of writes past the grace period, so a crowd of writers
    /// makes one call, not one each.
    probe: tokio::sync::Mutex<()>,
    /// Whether the KMS is usable for writes (a good `Status` within the grace period), updated
    /// on every `Status`; the server mirrors it into its health status.
    ready: watch::Sender<bool>,
}

fn seed_key(id: u32) -> Vec<u8> {
    let mut k = SEED_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl SeedManager {
    /// Loads the seeds table and unwraps every seed (one KMS `Decrypt` each). A seed the KMS
    /// cannot unwrap now is kept and retried when a record needs it. Then asks the KMS for its
    /// status once, so the first write knows whether the newest seed is still current.
    pub async fn load(
        kms: Arc<dyn Kms>,
        backend: Arc<dyn Backend>,
        policy: SeedPolicy,
    ) -> Result<Self, SeedError> {
        Self::load_with(kms, backend, policy, OutagePolicy::default()).await
    }

    /// As [`SeedManager::load`], with an outage policy.
    pub async fn load_with(
        kms: Arc<dyn Kms>,
        backend: Arc<dyn Backend>,
        policy: SeedPolicy,
        outage: OutagePolicy,
    ) -> Result<Self, SeedError> {
        Self::load_bound(kms, backend, policy, outage, None, false).await
    }

    /// As [`SeedManager::load_with`], for the store `store` (a sled data directory's id, from
    /// its integrity record): the seeds table must be bound to it (one from before the binding
    /// is bound to it now). `None`: the id in the seeds table, or a new one. `rebind`: the data
    /// directory was adopted by integrity in this very open (its store id is new), so a seeds
    /// table bound to another id (by the unauthenticated backend path) is bound to `store` now,
    /// each seed's old check value verified first.
    pub async fn load_bound(
        kms: Arc<dyn Kms>,
        backend: Arc<dyn Backend>,
        policy: SeedPolicy,
        outage: OutagePolicy,
        store: Option<StoreId>,
        rebind: bool,
    ) -> Result<Self, SeedError> {
        let mut inner = Inner::default();
        let recorded = match backend.get(STORE_ID_KEY)? {
            Some(bytes) => Some(
                StoreId::from_slice(&bytes).ok_or_else(|| SeedError::Corrupt {
                    id: 0,
                    reason: format!("the store id has {} bytes, not 16", bytes.len()),
                })?,
            ),
            None => None,
        };
        let mut rebind_from = None;
        if let (Some(recorded), Some(store)) = (recorded, store)
            && recorded != store
        {
            if rebind {
                rebind_from = Some(recorded);
            } else {
                return Err(SeedError::Corrupt {
                    id: 0,
                    reason: format!(
                        "the seeds table belongs to store {recorded}, but the data directory is \
                     store {store}: its database was replaced by another store's"
                    ),
                });
            }
        }
        let bound = recorded.is_some() && rebind_from.is_none();
        let store_id = store.or(recorded).unwrap_or_else(StoreId::generate);
        // Rows from before the binding get their check value now (after a Decrypt).
        let mut upgrade = Batch::new();
        for (key, value) in backend.scan(SEED_PREFIX, None, usize::MAX)? {
            let id_bytes: [u8; 4] =
                key[SEED_PREFIX.len()..]
                    .try_into()
                    .map_err(|_| SeedError::Corrupt {
                        id: 0,
                        reason: "bad seed key".into(),
                    })?;
            let id = u32::from_be_bytes(id_bytes);
            let mut stored = StoredSeed::decode(&value[..]).map_err(|e| SeedError::Corrupt {
                id,
                reason: e.to_string(),
            })?;
            if stored.check.is_empty() {
                if bound {
                    return Err(SeedError::Corrupt {
                        id,
                        reason: format!(
                            "it has no check value, but the seeds of store {store_id} all have \
                             one: the row was put in from elsewhere, and is refused"
                        ),
                    });
                }
                let seed =
                    unwrap_unchecked(&*kms, &stored, id)
                        .await
                        .map_err(|e| SeedError::Corrupt {
                            id,
                            reason: format!(
                                "it must be bound to store {store_id} on this first start after \
                             the upgrade, which needs the KMS to unwrap it, and that failed: \
                             {e}. Start again once the KMS is reachable"
                            ),
                        })?;
                stored.check = seed_check(&seed, &store_id, id).to_vec();
                upgrade.put(key.clone(), stored.encode_to_vec());
                inner.unwrapped.insert(id, Arc::new(seed));
                inner.stored.insert(id, stored);
                continue;
            }
            if let Some(old) = rebind_from {
                // Checked against the id it was bound to, then bound to this store.
                let seed = unwrap(&*kms, &stored, id, &old)
                    .await
                    .map_err(|e| match e {
                        e @ SeedError::Corrupt { .. } => e,
                        other => SeedError::Corrupt {
                            id,
                            reason: format!(
                                "it must be bound to store {store_id} on this first authenticated \
                             start, which needs the KMS to unwrap it, and that failed: {other}. \
                             Start again once the KMS is reachable"
                            ),
                        },
                    })?;
                stored.check = seed_check(&seed, &store_id, id).to_vec();
                upgrade.put(key.clone(), stored.encode_to_vec());
                inner.unwrapped.insert(id, Arc::new(seed));
                inner.stored.insert(id, stored);
                continue;
            }
            match unwrap(&*kms, &stored, id, &store_id).await {
                Ok(seed) => {
                    inner.unwrapped.insert(id, Arc::new(seed));
                }
                Err(e @ SeedError::Corrupt { .. }) => return Err(e),
                Err(e) => tracing::warn!(seed = id, key_id = %stored.key_id, error = %e,
                    "cannot unwrap seed now; records under it will retry"),
            }
            inner.stored.insert(id, stored);
        }
        if !bound {
            if recorded.is_none() {
                // Create-if-absent, before any check value made with it is written: replicas
                // sharing the storage that start together on an empty store agree on one id,
                // and a loser loads again, bound to the winner's.
                match backend.put_if_absent(STORE_ID_KEY, store_id.0.to_vec())? {
                    Some(lsn) => backend.wait_durable(lsn).await?,
                    None => {
                        return Box::pin(Self::load_bound(
                            kms, backend, policy, outage, store, rebind,
                        ))
                        .await;
                    }
                }
            } else {
                upgrade.put(STORE_ID_KEY, store_id.0.to_vec());
            }
            let lsn = backend.apply(upgrade)?;
            backend.wait_durable(lsn).await?;
            if !inner.stored.is_empty() {
                tracing::info!(store = %store_id, seeds = inner.stored.len(),
                    "seeds bound to the store (check values written)");
            }
        }
        inner.store_id = Some(store_id);
        inner.current = inner
            .stored
            .keys()
            .next_back()
            .copied()
            .filter(|id| inner.unwrapped.contains_key(id));
        inner.current_since = Some(Instant::now());
        let mgr = Self {
            kms,
            backend,
            policy,
            outage,
            inner: RwLock::new(inner),
            rotation: tokio::sync::Mutex::new(()),
            health: std::sync::Mutex::new(Health::default()),
            probe: tokio::sync::Mutex::new(()),
            ready: watch::Sender::new(false),
        };
        if let Err(e) = mgr.refresh().await {
            tracing::warn!(error = %e, "KMS status check failed at start");
        }
        Ok(mgr)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the KMS for its status and records the key_id; a new key_id makes the next write
    /// create a new seed. A failure is recorded too (it starts the grace period's count-down
    /// from the last good status).
    pub async fn refresh(&self) -> Result<KmsStatus, KmsError> {
        let result = match self.kms.status().await {
            Ok(status) => status.check().map(|()| status),
            Err(e) => Err(e),
        };
        match &result {
            Ok(status) => self.observe_status(status),
            Err(e) => {
                let writable = {
                    let mut h = self.health();
                    h.last_ok = false;
                    h.last_error = Some(e.to_string());
                    self.within_grace(&h)
                };
                self.ready
                    .send_if_modified(|r| std::mem::replace(r, writable) != writable);
            }
        }
        result
    }

    /// Records a good status (from [`SeedManager::refresh`] or a poller): its key_id, and the
    /// time, from which the write grace period counts.
    pub fn observe_status(&self, status: &KmsStatus) {
        {
            let mut inner = self.write();
            if inner.kms_key_id.as_deref() != Some(status.key_id.as_str()) {
                tracing::info!(key_id = %status.key_id, "KMS key_id observed");
                inner.kms_key_id = Some(status.key_id.clone());
            }
        }
        {
            let mut h = self.health();
            h.last_good = Some(Instant::now());
            h.last_status = Some(status.clone());
            h.last_ok = true;
            h.last_error = None;
        }
        self.ready.send_if_modified(|r| !std::mem::replace(r, true));
    }

    fn within_grace(&self, h: &Health) -> bool {
        h.last_good
            .is_some_and(|t| t.elapsed() <= self.outage.grace)
    }

    /// The outage policy.
    pub fn outage_policy(&self) -> OutagePolicy {
        self.outage
    }

    /// Whether the latest `Status` was good.
    pub fn last_status_ok(&self) -> bool {
        self.health().last_ok
    }

    /// Whether writes are allowed now: a good `Status` within the grace period.
    pub fn is_writable(&self) -> bool {
        self.within_grace(&self.health())
    }

    /// Follows whether the KMS is usable for writes, as of the latest `Status` (see
    /// [`SeedManager::is_writable`]); `false` until the first good `Status`.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// What is known about the KMS's health.
    pub fn kms_health(&self) -> KmsHealth {
        let h = self.health();
        KmsHealth {
            last_status: h.last_status.clone(),
            last_good_age: h.last_good.map(|t| t.elapsed()),
            healthy: h.last_ok,
            last_error: h.last_error.clone(),
            writable: self.within_grace(&h),
        }
    }

    /// The key_id of the KMS's current KEK, as of the last good `Status`.
    pub fn current_key_id(&self) -> Option<String> {
        self.read().kms_key_id.clone()
    }

    /// The ids of the seeds wrapped under a KEK that is not the KMS's current one: the seeds
    /// whose records `coffer migrate` rewrites. Empty while the current key_id is unknown.
    pub fn stale_seed_ids(&self) -> std::collections::BTreeSet<u32> {
        let inner = self.read();
        let Some(current) = inner.kms_key_id.as_deref() else {
            return Default::default();
        };
        inner
            .stored
            .iter()
            .filter(|(_, s)| s.key_id != current)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The write gate of the outage policy (see the module docs).
    async fn check_writable(&self) -> Result<(), KmsError> {
        if self.is_writable() {
            return Ok(());
        }
        let seen = self.health().probes;
        let _probe = self.probe.lock().await;
        if self.is_writable() {
            return Ok(());
        }
        // A probe that finished while this writer waited (even one that had started before it
        // came) answers for it too: `probes` counts finished probes, so a crowd arriving during
        // an outage makes one Status call, not one each.
        let due = self.health().probes == seen;
        if due {
            let ok = self.refresh().await.is_ok();
            self.health().probes += 1;
            if ok {
                return Ok(());
            }
        }
        let h = self.health();
        let since = match h.last_good {
            Some(t) => format!("the last good Status was {}s ago", t.elapsed().as_secs()),
            None => "no good Status since start".to_owned(),
        };
        Err(KmsError::Unreachable(format!(
            "{since}, and writes are refused once that passes the {}s grace period (reads of \
             existing Secrets still work); last error: {}",
            self.outage.grace.as_secs_f64(),
            h.last_error.as_deref().unwrap_or("none")
        )))
    }

    /// Unwraps the seeds that could not be unwrapped before (the KMS was down at start, say);
    /// returns how many are still wrapped. Called by the poller after a good `Status`.
    pub async fn unwrap_pending(&self) -> usize {
        let pending: Vec<(u32, StoredSeed)> = {
            let inner = self.read();
            inner
                .stored
                .iter()
                .filter(|(id, _)| !inner.unwrapped.contains_key(id))
                .map(|(id, s)| (*id, s.clone()))
                .collect()
        };
        let mut left = 0;
        for (id, stored) in pending {
            match unwrap(&*self.kms, &stored, id, &self.store_id()).await {
                Ok(seed) => {
                    tracing::info!(seed = id, key_id = %stored.key_id, "seed unwrapped");
                    let mut inner = self.write();
                    inner.unwrapped.insert(id, Arc::new(seed));
                    // A newest seed that was wrapped at start becomes current again (it is
                    // re-checked against the key_id, age and write count before any use).
                    if inner.current.is_none() && inner.stored.keys().next_back() == Some(&id) {
                        inner.current = Some(id);
                        inner.current_since = Some(Instant::now());
                    }
                }
                Err(e @ SeedError::Corrupt { .. }) => {
                    left += 1;
                    tracing::error!(seed = id, error = %e, "seed refused");
                }
                Err(e) => {
                    left += 1;
                    tracing::debug!(seed = id, error = %e, "seed still cannot be unwrapped");
                }
            }
        }
        left
    }

    /// Deletes seed `id` from the seeds table. Only for a seed that no record refers to any
    /// more (after `coffer migrate`); refuses the newest seed and any seed under the KMS's
    /// current key_id, so that no write can be using it.
    pub async fn retire(&self, id: u32) -> Result<(), SeedError> {
        let _guard = self.rotation.lock().await;
        {
            let inner = self.read();
            let Some(stored) = inner.stored.get(&id) else {
                return Ok(());
            };
            let newest = inner.stored.keys().next_back() == Some(&id);
            let current_key = inner.kms_key_id.as_deref() == Some(stored.key_id.as_str());
            if inner.current == Some(id) || newest || current_key || inner.kms_key_id.is_none() {
                return Err(SeedError::InUse { id });
            }
        }
        let mut batch = Batch::new();
        batch.delete(seed_key(id));
        let lsn = self.backend.apply(batch)?;
        self.backend.wait_durable(lsn).await?;
        let mut inner = self.write();
        if let Some(s) = inner.stored.remove(&id) {
            tracing::info!(seed = id, key_id = %s.key_id, "seed retired: no record uses it");
        }
        inner.unwrapped.remove(&id);
        Ok(())
    }

    /// The unwrapped seed `id`, if it is in memory.
    pub fn seed(&self, id: u32) -> Option<Arc<Seed>> {
        self.read().unwrapped.get(&id).cloned()
    }

    /// The seed `id`, unwrapping it through the KMS if it is persisted but not yet in memory.
    /// `Ok(None)` when no such seed exists.
    pub async fn seed_for_read(&self, id: u32) -> Result<Option<Arc<Seed>>, SeedError> {
        if let Some(s) = self.seed(id) {
            return Ok(Some(s));
        }
        let known = self.read().stored.get(&id).cloned();
        let stored = match known {
            Some(s) => s,
            // Not known here: another process sharing the storage (a replica over the same
            // etcd) may have created it since this one loaded the seeds.
            None => match self.load_stored(id)? {
                Some(s) => s,
                None => return Ok(None),
            },
        };
        // Verified like any other: a row another replica created (or one put there by someone
        // who can write the storage) must carry this store's check value for this id.
        let seed = Arc::new(unwrap(&*self.kms, &stored, id, &self.store_id()).await?);
        let mut inner = self.write();
        inner.stored.entry(id).or_insert(stored);
        inner.unwrapped.insert(id, seed.clone());
        Ok(Some(seed))
    }

    /// Reads seed row `id` from the storage (`None`: absent).
    fn load_stored(&self, id: u32) -> Result<Option<StoredSeed>, SeedError> {
        let Some(raw) = self.backend.get(&seed_key(id))? else {
            return Ok(None);
        };
        StoredSeed::decode(&raw[..])
            .map(Some)
            .map_err(|e| SeedError::Corrupt {
                id,
                reason: e.to_string(),
            })
    }

    /// The seed for the next write: the current one while it is valid, else a new one (one KMS
    /// `Encrypt`, persisted durably before any record uses it).
    ///
    /// Fails with [`KmsError::Unreachable`] once the last good `Status` is older than the grace
    /// period (see [`OutagePolicy`]) and the KMS still does not answer well.
    pub async fn for_write(&self) -> Result<(u32, Arc<Seed>), SeedError> {
        self.check_writable().await?;
        if let Some(found) = self.current_valid() {
            return Ok(found);
        }
        let _guard = self.rotation.lock().await;
        if let Some(found) = self.current_valid() {
            return Ok(found);
        }
        self.create_seed().await
    }

    fn current_valid(&self) -> Option<(u32, Arc<Seed>)> {
        let mut inner = self.write();
        let id = inner.current?;
        let stored = inner.stored.get(&id)?;
        let expired_by_key = inner
            .kms_key_id
            .as_deref()
            .is_some_and(|k| k != stored.key_id);
        let now = now_unix();
        let age = now.saturating_sub(stored.created_unix).max(0) as u64;
        // A creation time ahead of the clock means the clock was set back (or the row was
        // written elsewhere with a wrong clock): the wall-clock age cannot be trusted.
        let future_dated = stored.created_unix > now.saturating_add(MAX_CLOCK_SKEW_SECS);
        let in_use = inner.current_since.map_or(Duration::ZERO, |t| t.elapsed());
        let expired = expired_by_key
            || future_dated
            || age >= self.policy.max_age.as_secs()
            || in_use >= self.policy.max_age
            || inner.current_writes >= self.policy.max_writes;
        if expired {
            inner.current = None;
            return None;
        }
        let seed = inner.unwrapped.get(&id)?.clone();
        inner.current_writes += 1;
        Some((id, seed))
    }

    async fn create_seed(&self) -> Result<(u32, Arc<Seed>), SeedError> {
        let seed = Seed::generate();
        let wrapped = self
            .kms
            .encrypt(&uuid::Uuid::new_v4().to_string(), seed.expose())
            .await?;
        // Whatever the implementation checked, nothing that breaks the KMS v2 contract becomes
        // a seed.
        wrapped.check()?;
        let expected = self.read().kms_key_id.clone();
        if let Some(expected) = expected
            && expected != wrapped.key_id
        {
            // The KEK may have rotated between the last Status and this Encrypt: ask again.
            let status = self.refresh().await?;
            if status.key_id != wrapped.key_id {
                return Err(KmsError::InvalidResponse(format!(
                    "Encrypt returned key_id {:?}, but Status reports {:?}",
                    wrapped.key_id, status.key_id
                ))
                .into());
            }
        }
        // Before its first use, the KMS must give the seed back.
        verify_roundtrip(&*self.kms, &seed, &wrapped).await?;
        let id = self
            .read()
            .stored
            .keys()
            .next_back()
            .map_or(1, |last| last + 1);
        // The check value travels in the same create-if-absent row as the wrapped seed, so no
        // replica ever sees a seed row without it.
        let stored = StoredSeed {
            wrapped: wrapped.ciphertext,
            key_id: wrapped.key_id,
            annotations: wrapped.annotations,
            created_unix: now_unix(),
            check: seed_check(&seed, &self.store_id(), id).to_vec(),
        };
        // Create-if-absent: processes sharing the storage (replicas over one etcd) that race
        // to create the same id agree on one winner, and the others adopt its seed, so no
        // record is ever sealed under a seed whose row was overwritten.
        let (id, stored, seed) = match self
            .backend
            .put_if_absent(&seed_key(id), stored.encode_to_vec())?
        {
            Some(lsn) => {
                self.backend.wait_durable(lsn).await?;
                tracing::info!(seed = id, key_id = %stored.key_id, "new seed in use for writes");
                (id, stored, seed)
            }
            None => {
                let winner = self.load_stored(id)?.ok_or_else(|| SeedError::Corrupt {
                    id,
                    reason: "the row another process created is gone".into(),
                })?;
                // The winner's seed is verified like any loaded seed (its check value against
                // this store id and this seed id) before it seals anything here.
                let seed = unwrap(&*self.kms, &winner, id, &self.store_id()).await?;
                tracing::info!(seed = id, key_id = %winner.key_id,
                    "another replica created this seed first; using it for writes");
                (id, winner, seed)
            }
        };
        let seed = Arc::new(seed);
        let mut inner = self.write();
        if inner.kms_key_id.is_none() {
            inner.kms_key_id = Some(stored.key_id.clone());
        }
        inner.stored.insert(id, stored);
        inner.unwrapped.insert(id, seed.clone());
        inner.current = Some(id);
        inner.current_writes = 1;
        inner.current_since = Some(Instant::now());
        Ok((id, seed))
    }

    /// Public facts about every persisted seed, oldest first.
    pub fn seeds(&self) -> Vec<SeedInfo> {
        let inner = self.read();
        inner
            .stored
            .iter()
            .map(|(id, s)| SeedInfo {
                id: *id,
                key_id: s.key_id.clone(),
                created_unix: s.created_unix,
                available: inner.unwrapped.contains_key(id),
            })
            .collect()
    }

    /// The id of the seed new writes use, if one is current.
    pub fn current_id(&self) -> Option<u32> {
        self.read().current
    }

    /// A one-line description of the KMS, for logs.
    pub fn describe_kms(&self) -> String {
        self.kms.describe()
    }

    /// The store the seeds are bound to.
    pub fn store_id(&self) -> StoreId {
        // Set by every loader before the manager exists.
        self.read().store_id.unwrap_or(StoreId([0; 16]))
    }
}

/// Checks the seeds table's rows (`k/seed/<id>` and `k/store`, as a scan returns them) against
/// store `store`, one KMS `Decrypt` per seed, for `coffer verify`: one line per failed check.
pub async fn verify_rows(
    kms: &dyn Kms,
    rows: &[(Vec<u8>, Vec<u8>)],
    store: &StoreId,
) -> Vec<String> {
    verify_and_unwrap_rows(kms, rows, store).await.1
}

/// As [`verify_rows`], also giving back the seeds that passed (by id), so that a verifier can
/// open records with them.
pub async fn verify_and_unwrap_rows(
    kms: &dyn Kms,
    rows: &[(Vec<u8>, Vec<u8>)],
    store: &StoreId,
) -> (std::collections::HashMap<u32, Seed>, Vec<String>) {
    let mut seeds = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (key, value) in rows {
        if key.as_slice() == STORE_ID_KEY {
            if value.as_slice() != store.0.as_slice() {
                out.push(format!(
                    "seeds: the seeds table is bound to store {}, not {store}",
                    hex::encode(value)
                ));
            }
            continue;
        }
        let Some(id) = key
            .strip_prefix(SEED_PREFIX)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
        else {
            out.push("seeds: a row has a malformed key".into());
            continue;
        };
        match StoredSeed::decode(&value[..]) {
            Err(e) => out.push(format!("seed {id}: does not decode: {e}")),
            Ok(stored) if stored.check.is_empty() => {
                out.push(format!("seed {id}: has no check value"))
            }
            Ok(stored) => match unwrap(kms, &stored, id, store).await {
                Ok(seed) => {
                    seeds.insert(id, seed);
                }
                Err(e @ SeedError::Corrupt { .. }) => out.push(e.to_string()),
                Err(e) => out.push(format!("seed {id}: cannot be checked now: {e}")),
            },
        }
    }
    (seeds, out)
}

/// Unwraps seed `id` and checks that it belongs to store `store` under that id.
async fn unwrap(
    kms: &dyn Kms,
    stored: &StoredSeed,
    id: u32,
    store: &StoreId,
) -> Result<Seed, SeedError> {
    let seed = unwrap_unchecked(kms, stored, id).await?;
    if !seed_check_ok(&seed, store, id, &stored.check) {
        return Err(SeedError::Corrupt {
            id,
            reason: format!(
                "its check value does not match store {store} and seed id {id}: the row was \
                 copied from another store sharing the KMS (or moved to another id), and is \
                 refused"
            ),
        });
    }
    Ok(seed)
}

/// Unwraps seed `id` (length-checked only).
async fn unwrap_unchecked(kms: &dyn Kms, stored: &StoredSeed, id: u32) -> Result<Seed, SeedError> {
    let bytes = kms
        .decrypt(&uuid::Uuid::new_v4().to_string(), &stored.wrapped())
        .await?;
    Seed::from_slice(&bytes).ok_or_else(|| SeedError::Corrupt {
        id,
        reason: format!("KMS returned {} bytes, expected 32", bytes.len()),
    })
}

/// Unwraps what `Encrypt` just returned and insists on getting `seed` back: a seed is never
/// used before the KMS has shown it can give it back.
pub(crate) async fn verify_roundtrip(
    kms: &dyn Kms,
    seed: &Seed,
    wrapped: &Wrapped,
) -> Result<(), SeedError> {
    let back = kms
        .decrypt(&uuid::Uuid::new_v4().to_string(), wrapped)
        .await?;
    if back.as_slice() != seed.expose().as_slice() {
        return Err(KmsError::InvalidResponse(
            "Decrypt of a seed just wrapped did not give it back".into(),
        )
        .into());
    }
    Ok(())
}
