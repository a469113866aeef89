//! Leases of the etcd door's keys: a TTL, a deadline, and the keys attached.
//!
//! A lease is an unversioned row `k/lease/<id>` (its granted TTL and its deadline in wall-clock
//! milliseconds, so that a restart keeps the remaining time); which keys are attached is read
//! from the keys' own versions (the `lease` field, in clear) when the store opens, and followed
//! by every door write after that. Granting, revoking and refreshing take the store's
//! sequencing lock, like the writes that attach keys, so a put never attaches a key to a lease
//! being revoked. Revoking (or expiring) deletes every attached key in one revision.

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use super::raw::{RAW_PREFIX, RawWrite, door_key};
use super::{Store, StoreError};
use crate::storage::mvcc::{Mvcc, Revision, Version};
use crate::storage::{Backend, Op};

/// The backend prefix of the lease rows.
const LEASE_PREFIX: &[u8] = b"k/lease/";
/// etcd's largest TTL (`lease.MaxLeaseTTL`, seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// The smallest TTL a lease gets (etcd's minimum for its default election timeout).
pub const MIN_LEASE_TTL: i64 = 2;

/// What can go wrong with a lease (etcd's errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No lease has that id.
    #[error("requested lease not found")]
    NotFound,
    /// Grant of an id in use.
    #[error("lease already exists")]
    Exists,
    /// Grant of a TTL over [`MAX_LEASE_TTL`].
    #[error("too large lease TTL")]
    TtlTooLarge,
}

/// One lease, as TimeToLive reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The id.
    pub id: i64,
    /// Seconds left (rounded up), at least 0.
    pub remaining: i64,
    /// The TTL it was granted.
    pub granted: i64,
    /// The attached keys, in order.
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Lease {
    ttl: i64,
    deadline_ms: u64,
    /// Backend keys attached.
    keys: BTreeSet<Vec<u8>>,
}

/// The leases and their keys (kept current under the store's sequencing lock).
#[derive(Debug, Default)]
pub(crate) struct Leases {
    map: std::sync::Mutex<HashMap<i64, Lease>>,
}

impl Leases {
    /// Loads the lease rows and attaches every current door key to its lease.
    pub(crate) fn load(mvcc: &dyn Mvcc) -> Result<Self, StoreError> {
        let mut map = HashMap::new();
        let backend: &dyn Backend = mvcc.backend().as_ref();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let rows = backend.scan(LEASE_PREFIX, cursor.as_deref(), 256)?;
            let done = rows.len() < 256;
            for (k, v) in &rows {
                if let (Some(id), Some((ttl, deadline_ms))) =
                    (parse_id(&k[LEASE_PREFIX.len()..]), parse_row(v))
                {
                    map.insert(
                        id,
                        Lease {
                            ttl,
                            deadline_ms,
                            keys: BTreeSet::new(),
                        },
                    );
                }
            }
            cursor = rows.into_iter().next_back().map(|(k, _)| k);
            if done || cursor.is_none() {
                break;
            }
        }
        if !map.is_empty() {
            let mut cursor: Option<Vec<u8>> = None;
            loop {
                let rows = mvcc.range(RAW_PREFIX, cursor.as_deref(), None, 256)?;
                let done = rows.len() < 256;
                for v in &rows {
                    if v.lease != 0
                        && let Some(l) = map.get_mut(&v.lease)
                    {
                        l.keys.insert(v.key.clone());
                    }
                }
                cursor = rows.into_iter().next_back().map(|v| v.key);
                if done || cursor.is_none() {
                    break;
                }
            }
        }
        Ok(Self {
            map: std::sync::Mutex::new(map),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Lease>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows a committed write's attachments: `writes` are (backend key, the lease of a put
    /// or `None` for a delete), `prev` the versions they replaced.
    pub(crate) fn follow(&self, writes: &[(Vec<u8>, Option<i64>)], prev: &[Option<Version>]) {
        let mut map = self.lock();
        for (i, (key, lease)) in writes.iter().enumerate() {
            if let Some(Some(old)) = prev.get(i)
                && old.lease != 0
                && let Some(l) = map.get_mut(&old.lease)
            {
                l.keys.remove(key);
            }
            if let Some(id) = lease
                && *id != 0
                && let Some(l) = map.get_mut(id)
            {
                l.keys.insert(key.clone());
            }
        }
    }

    /// Whether a lease exists.
    pub(crate) fn exists(&self, id: i64) -> bool {
        self.lock().contains_key(&id)
    }
}

fn lease_row_key(id: i64) -> Vec<u8> {
    let mut k = LEASE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn parse_id(b: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(b.try_into().ok()?))
}

fn row(ttl: i64, deadline_ms: u64) -> Vec<u8> {
    let mut v = ttl.to_be_bytes().to_vec();
    v.extend_from_slice(&deadline_ms.to_be_bytes());
    v
}

fn parse_row(b: &[u8]) -> Option<(i64, u64)> {
    if b.len() != 16 {
        return None;
    }
    Some((
        i64::from_be_bytes(b[..8].try_into().ok()?),
        u64::from_be_bytes(b[8..].try_into().ok()?),
    ))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn deadline(ttl: i64) -> u64 {
    now_ms().saturating_add((ttl.max(0) as u64).saturating_mul(1000))
}

impl Store {
    /// Grants a lease of `ttl` seconds (raised to [`MIN_LEASE_TTL`]); `id` 0 picks a free
    /// id. Returns the id and the TTL granted.
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64), StoreError> {
        if ttl > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge.into());
        }
        let ttl = ttl.max(MIN_LEASE_TTL);
        let writer = self.raw_writer().await;
        let id = if id == 0 {
            loop {
                // Positive and never 0, as etcd's ids are.
                let candidate = (rand::random::<u64>() >> 1) as i64;
                if candidate != 0 && !self.leases.exists(candidate) {
                    break candidate;
                }
            }
        } else if self.leases.exists(id) {
            return Err(LeaseError::Exists.into());
        } else {
            id
        };
        let deadline_ms = deadline(ttl);
        self.leases.lock().insert(
            id,
            Lease {
                ttl,
                deadline_ms,
                keys: BTreeSet::new(),
            },
        );
        let meta = vec![Op::Put(lease_row_key(id), row(ttl, deadline_ms))];
        if let Err(e) = writer.commit(Vec::new(), meta).await {
            self.leases.lock().remove(&id);
            return Err(e);
        }
        Ok((id, ttl))
    }

    /// Revokes a lease: deletes its keys (one revision) and the lease. Returns the revision.
    pub async fn lease_revoke(&self, id: i64) -> Result<Revision, StoreError> {
        let writer = self.raw_writer().await;
        let keys = match self.leases.lock().get(&id) {
            Some(l) => l.keys.iter().cloned().collect::<Vec<_>>(),
            None => return Err(LeaseError::NotFound.into()),
        };
        let mut writes = Vec::with_capacity(keys.len());
        for bkey in keys {
            if let Some(key) = door_key(&bkey)
                && writer.current(key)?.is_some()
            {
                writes.push(RawWrite::Delete { key: key.to_vec() });
            }
        }
        let (revision, _) = writer
            .commit(writes, vec![Op::Delete(lease_row_key(id))])
            .await?;
        self.leases.lock().remove(&id);
        Ok(revision)
    }

    /// Refreshes a lease to its full TTL; `None` when it does not exist.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<Option<i64>, StoreError> {
        let writer = self.raw_writer().await;
        let ttl = match self.leases.lock().get_mut(&id) {
            Some(l) => {
                l.deadline_ms = deadline(l.ttl);
                (l.ttl, l.deadline_ms)
            }
            None => return Ok(None),
        };
        writer
            .commit(
                Vec::new(),
                vec![Op::Put(lease_row_key(id), row(ttl.0, ttl.1))],
            )
            .await?;
        Ok(Some(ttl.0))
    }

    /// A lease's remaining time and keys; `None` when it does not exist.
    pub fn lease_info(&self, id: i64) -> Option<LeaseInfo> {
        let map = self.leases.lock();
        let l = map.get(&id)?;
        let left_ms = l.deadline_ms.saturating_sub(now_ms());
        Some(LeaseInfo {
            id,
            remaining: left_ms.div_ceil(1000) as i64,
            granted: l.ttl,
            keys: l
                .keys
                .iter()
                .filter_map(|k| door_key(k).map(<[u8]>::to_vec))
                .collect(),
        })
    }

    /// Every lease id.
    pub fn lease_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Whether a lease exists.
    pub fn lease_exists(&self, id: i64) -> bool {
        self.leases.exists(id)
    }

    /// The leases whose deadline has passed.
    pub fn expired_leases(&self) -> Vec<i64> {
        let now = now_ms();
        self.leases
            .lock()
            .iter()
            .filter(|(_, l)| l.deadline_ms <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The earliest deadline of any lease, in milliseconds since the epoch.
    pub fn next_lease_deadline(&self) -> Option<u64> {
        self.leases.lock().values().map(|l| l.deadline_ms).min()
    }
}
