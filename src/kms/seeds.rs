//! Seeds: the 32-byte secrets that the KMS wraps and that every data key derives from.
//!
//! One KMS `Encrypt` per seed, never per write. Seeds are persisted wrapped (with their key_id and
//! annotations) in the backend under `k/seed/<id>`, unwrapped once at start (one `Decrypt` each),
//! kept in memory in zeroizing boxes, and replaced for new writes when the KMS reports a new
//! key_id or the current seed reaches its age or write limit. Old seeds stay readable.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::{Kms, KmsError, KmsStatus, Wrapped, check_key_id};
use crate::crypto::Seed;
use crate::storage::{Backend, Batch, StorageError};

/// The backend key prefix of the seeds table.
pub const SEED_PREFIX: &[u8] = b"k/seed/";

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
#[non_exhaustive]
pub enum SeedError {
    /// The KMS failed.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The seeds table could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
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
    /// The key_id the KMS last reported in a good Status.
    kms_key_id: Option<String>,
}

/// Owns the seeds: unwraps them at start, hands them out for reads and writes, makes new ones.
#[derive(Debug)]
pub struct SeedManager {
    kms: Arc<dyn Kms>,
    backend: Arc<dyn Backend>,
    policy: SeedPolicy,
    inner: RwLock<Inner>,
    /// Serialises seed creation so concurrent writers do not each make a seed.
    rotation: tokio::sync::Mutex<()>,
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
        let mut inner = Inner::default();
        for (key, value) in backend.scan(SEED_PREFIX, None, usize::MAX)? {
            let id_bytes: [u8; 4] =
                key[SEED_PREFIX.len()..]
                    .try_into()
                    .map_err(|_| SeedError::Corrupt {
                        id: 0,
                        reason: "bad seed key".into(),
                    })?;
            let id = u32::from_be_bytes(id_bytes);
            let stored = StoredSeed::decode(&value[..]).map_err(|e| SeedError::Corrupt {
                id,
                reason: e.to_string(),
            })?;
            match unwrap(&*kms, &stored, id).await {
                Ok(seed) => {
                    inner.unwrapped.insert(id, Arc::new(seed));
                }
                Err(e) => tracing::warn!(seed = id, key_id = %stored.key_id, error = %e,
                    "cannot unwrap seed now; records under it will retry"),
            }
            inner.stored.insert(id, stored);
        }
        inner.current = inner
            .stored
            .keys()
            .next_back()
            .copied()
            .filter(|id| inner.unwrapped.contains_key(id));
        let mgr = Self {
            kms,
            backend,
            policy,
            inner: RwLock::new(inner),
            rotation: tokio::sync::Mutex::new(()),
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

    /// Asks the KMS for its status and records the key_id; a new key_id makes the next write
    /// create a new seed.
    pub async fn refresh(&self) -> Result<KmsStatus, KmsError> {
        let status = self.kms.status().await?;
        status.check()?;
        self.observe_status(&status);
        Ok(status)
    }

    /// Records a good status (from [`SeedManager::refresh`] or a poller).
    pub fn observe_status(&self, status: &KmsStatus) {
        let mut inner = self.write();
        if inner.kms_key_id.as_deref() != Some(status.key_id.as_str()) {
            tracing::info!(key_id = %status.key_id, "KMS key_id observed");
            inner.kms_key_id = Some(status.key_id.clone());
        }
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
        let Some(stored) = self.read().stored.get(&id).cloned() else {
            return Ok(None);
        };
        let seed = Arc::new(unwrap(&*self.kms, &stored, id).await?);
        self.write().unwrapped.insert(id, seed.clone());
        Ok(Some(seed))
    }

    /// The seed for the next write: the current one while it is valid, else a new one (one KMS
    /// `Encrypt`, persisted durably before any record uses it).
    pub async fn for_write(&self) -> Result<(u32, Arc<Seed>), SeedError> {
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
        let age = now_unix().saturating_sub(stored.created_unix).max(0) as u64;
        let expired = expired_by_key
            || age >= self.policy.max_age.as_secs()
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
        check_key_id(&wrapped.key_id)?;
        if wrapped.ciphertext.is_empty() || wrapped.ciphertext.len() >= 1024 {
            return Err(KmsError::InvalidResponse(format!(
                "Encrypt returned a {}-byte ciphertext; it must be non-empty and under 1024",
                wrapped.ciphertext.len()
            ))
            .into());
        }
        let stored = StoredSeed {
            wrapped: wrapped.ciphertext,
            key_id: wrapped.key_id,
            annotations: wrapped.annotations,
            created_unix: now_unix(),
        };
        let id = self
            .read()
            .stored
            .keys()
            .next_back()
            .map_or(1, |last| last + 1);
        let mut batch = Batch::new();
        batch.put(seed_key(id), stored.encode_to_vec());
        let lsn = self.backend.apply(batch)?;
        self.backend.wait_durable(lsn).await?;
        tracing::info!(seed = id, key_id = %stored.key_id, "new seed in use for writes");
        let seed = Arc::new(seed);
        let mut inner = self.write();
        if inner.kms_key_id.is_none() {
            inner.kms_key_id = Some(stored.key_id.clone());
        }
        inner.stored.insert(id, stored);
        inner.unwrapped.insert(id, seed.clone());
        inner.current = Some(id);
        inner.current_writes = 1;
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
}

async fn unwrap(kms: &dyn Kms, stored: &StoredSeed, id: u32) -> Result<Seed, SeedError> {
    let bytes = kms
        .decrypt(&uuid::Uuid::new_v4().to_string(), &stored.wrapped())
        .await?;
    Seed::from_slice(&bytes).ok_or_else(|| SeedError::Corrupt {
        id,
        reason: format!("KMS returned {} bytes, expected 32", bytes.len()),
    })
}
