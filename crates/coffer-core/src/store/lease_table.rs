//! The lease table: every lease of the etcd door with its TTL, deadline and attached keys, kept
//! current under the store's sequencing lock (see [`super::lease`] for the operations).

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use super::StoreError;
use crate::storage::Backend;
use crate::storage::mvcc::{Mvcc, Version};

/// The backend prefix of the lease rows.
pub(super) const LEASE_PREFIX: &[u8] = b"k/lease/";
/// etcd's largest TTL (`lease.MaxLeaseTTL`, seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// The smallest TTL a lease gets (etcd's minimum for its default election timeout).
pub const MIN_LEASE_TTL: i64 = 2;

#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) ttl: i64,
    pub(super) deadline_ms: u64,
    /// Backend keys attached.
    pub(super) keys: BTreeSet<Vec<u8>>,
}

/// The leases and their keys (kept current under the store's sequencing lock).
#[derive(Debug, Default)]
pub(crate) struct Leases {
    map: std::sync::Mutex<HashMap<i64, Lease>>,
}

impl Leases {
    /// Loads the lease rows and attaches every current door key (under `door_prefixes`) to
    /// its lease.
    pub(crate) fn load(mvcc: &dyn Mvcc, door_prefixes: &[&[u8]]) -> Result<Self, StoreError> {
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
        // Door keys live under both prefixes (a Secret's key holds the Secret itself).
        let any = !map.is_empty();
        for door_prefix in door_prefixes.iter().filter(|_| any) {
            let mut cursor: Option<Vec<u8>> = None;
            loop {
                let rows = mvcc.range(door_prefix, cursor.as_deref(), None, 256)?;
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

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Lease>> {
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

pub(super) fn lease_row_key(id: i64) -> Vec<u8> {
    let mut k = LEASE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn parse_id(b: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(b.try_into().ok()?))
}

pub(super) fn row(ttl: i64, deadline_ms: u64) -> Vec<u8> {
    let mut v = ttl.to_be_bytes().to_vec();
    v.extend_from_slice(&deadline_ms.to_be_bytes());
    v
}

pub(super) fn parse_row(b: &[u8]) -> Option<(i64, u64)> {
    if b.len() != 16 {
        return None;
    }
    Some((
        i64::from_be_bytes(b[..8].try_into().ok()?),
        u64::from_be_bytes(b[8..].try_into().ok()?),
    ))
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn deadline(ttl: i64) -> u64 {
    now_ms().saturating_add((ttl.max(0) as u64).saturating_mul(1000))
}
