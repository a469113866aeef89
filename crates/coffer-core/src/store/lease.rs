//! Leases of the etcd door's keys: a TTL, a deadline, and the keys attached.
//!
//! A lease is an unversioned row `k/lease/<id>` (its granted TTL and its deadline in wall-clock
//! milliseconds, so that a restart keeps the remaining time); which keys are attached is read
//! from the keys' own versions (the `lease` field, in clear) when the store opens, and followed
//! by every door write after that. Granting, revoking and refreshing take the store's
//! sequencing lock, like the writes that attach keys, so a put never attaches a key to a lease
//! being revoked. Revoking (or expiring) deletes every attached key in one revision.
//!
//! On a storage with leases of its own ([`crate::storage::mvcc::Mvcc::leases`]: etcd), every call here goes to them
//! instead: the leases are shared by every replica, the storage expires them and deletes their
//! keys (the deletions come back through the feed), and the lease table stays empty.

use std::collections::BTreeSet;

use super::lease_table::{Lease, deadline, lease_row_key, now_ms, row};
use super::raw::RawWrite;
use super::{Store, StoreError};
use crate::storage::Op;
use crate::storage::mvcc::Revision;

pub use super::error::LeaseError;
pub use super::lease_table::{MAX_LEASE_TTL, MIN_LEASE_TTL};

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

impl Store {
    /// Grants a lease of `ttl` seconds (raised to [`MIN_LEASE_TTL`]); `id` 0 picks a free
    /// id. Returns the id and the TTL granted.
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64), StoreError> {
        if ttl > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge.into());
        }
        let ttl = ttl.max(MIN_LEASE_TTL);
        if let Some(shared) = self.mvcc.leases() {
            return shared
                .grant(id, ttl)
                .await?
                .ok_or_else(|| LeaseError::Exists.into());
        }
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
        if let Some(shared) = self.mvcc.leases() {
            return shared
                .revoke(id)
                .await?
                .ok_or_else(|| LeaseError::NotFound.into());
        }
        let writer = self.raw_writer().await;
        let keys = match self.leases.lock().get(&id) {
            Some(l) => l.keys.iter().cloned().collect::<Vec<_>>(),
            None => return Err(LeaseError::NotFound.into()),
        };
        let mut writes = Vec::with_capacity(keys.len());
        for bkey in keys {
            if let Some(key) = self.door_key_of(&bkey)
                && writer.current(&key)?.is_some()
            {
                writes.push(RawWrite::Delete { key });
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
        if let Some(shared) = self.mvcc.leases() {
            return Ok(shared.keep_alive(id).await?);
        }
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

    /// A lease's remaining time and (with `keys`) its keys, from wherever the leases are kept
    /// (the storage's own leases, or the lease table); `None` when it does not exist.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<Option<LeaseInfo>, StoreError> {
        let Some(shared) = self.mvcc.leases() else {
            return Ok(self.lease_info(id).map(|mut info| {
                if !keys {
                    info.keys.clear();
                }
                info
            }));
        };
        Ok(shared.time_to_live(id, keys).await?.map(|l| {
            let mut keys: Vec<Vec<u8>> =
                l.keys.iter().filter_map(|k| self.door_key_of(k)).collect();
            // In order, as the lease table gives them (etcd's own order is its map's).
            keys.sort_unstable();
            LeaseInfo {
                id,
                remaining: l.remaining,
                granted: l.granted,
                keys,
            }
        }))
    }

    /// Every lease id, from wherever the leases are kept.
    pub async fn lease_list(&self) -> Result<Vec<i64>, StoreError> {
        match self.mvcc.leases() {
            Some(shared) => Ok(shared.list().await?),
            None => Ok(self.lease_ids()),
        }
    }

    /// Whether a lease exists, from wherever the leases are kept.
    pub async fn lease_check(&self, id: i64) -> Result<bool, StoreError> {
        match self.mvcc.leases() {
            Some(shared) => Ok(shared.time_to_live(id, false).await?.is_some()),
            None => Ok(self.lease_exists(id)),
        }
    }

    /// A lease's remaining time and keys in the lease table; `None` when it does not exist.
    pub fn lease_info(&self, id: i64) -> Option<LeaseInfo> {
        let map = self.leases.lock();
        let l = map.get(&id)?;
        let left_ms = l.deadline_ms.saturating_sub(now_ms());
        Some(LeaseInfo {
            id,
            remaining: left_ms.div_ceil(1000) as i64,
            granted: l.ttl,
            keys: l.keys.iter().filter_map(|k| self.door_key_of(k)).collect(),
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
