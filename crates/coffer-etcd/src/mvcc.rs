//! [`EtcdMvcc`]: the engine's versioned keyspace on etcd's own MVCC (see `docs/scale-out.md`).
//!
//! The versioned key `k` is the etcd key `PREFIX/v/k`; its value is `0xC6 | written_ms (u64
//! BE) | sealed record` (etcd keeps no write times; History shows them). Revisions,
//! `create_revision`, `mod_revision` and `version` are etcd's, so every replica over the same
//! etcd agrees on them.
//!
//! - Reads at the latest revision come from the watch-fed cache ([`crate::cache`]); the engine
//!   calls [`Mvcc::read_barrier`] first, which makes them linearizable.
//! - Reads at a revision are etcd Ranges at that revision.
//! - A commit is one etcd Txn: a condition is a compare on `create_revision == 0` (absent) or
//!   `mod_revision`, the writes are its success ops with `prev_kv`.
//! - History of a key and changes after a revision are read from an etcd watch started at the
//!   oldest revision wanted and followed up to etcd's current one.
//! - Compaction is etcd's Compact; the compaction revision is learnt from etcd.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use coffer_core::crypto::StateDigest;
use coffer_core::storage::integrity::{
    SHARED_DIGEST_SHARDS, StoreIntegrity, decode_shared_digest, encode_shared_digest,
    shared_digest_key, shared_digest_shard, shared_digest_update, shared_term_applies,
};
use coffer_core::storage::mvcc::{
    Change, Committed, HistoryStats, LeaseService, Mvcc, RangeGuard, Revision, StoredValue, Txn,
    Version, VersionKind, Write,
};
use coffer_core::storage::{Backend, Lsn, Op, StorageError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::backend::{EtcdBackend, delete_op, list_pinned, prefix_end, put_op};
use crate::barrier::Rounds;
use crate::cache::{Cache, unix_ms};
use crate::client::{EtcdClient, EtcdError, header_revision};
use crate::proto::{etcdserverpb as pb, mvccpb};

/// The first byte of a stored value.
const VALUE_MAGIC: u8 = 0xC6;
const VALUE_HEADER: usize = 9;
/// Keys per Range page of the initial list.
const LIST_PAGE: i64 = 1000;
/// etcd's error strings for reads outside the kept revisions.
const ERR_COMPACTED: &str = "required revision has been compacted";
const ERR_FUTURE: &str = "required revision is a future revision";

/// The versioned keyspace of one Coffer store on etcd, shared by every replica.
pub struct EtcdMvcc {
    client: EtcdClient,
    backend: Arc<dyn Backend>,
    /// `PREFIX/v/`.
    root: Vec<u8>,
    cache: Arc<Cache>,
    /// The current-revision requests of read barriers, batched.
    rounds: Rounds,
    /// The compaction revision as last learnt (etcd does not push it).
    compacted: AtomicU64,
    watch: tokio::task::JoinHandle<()>,
    /// Whether this replica holds the office of compaction and cleaning (see `election`).
    leader: tokio::sync::watch::Receiver<bool>,
    campaign: tokio::task::JoinHandle<()>,
    /// The door's leases: etcd's own (see [`crate::lease`]).
    leases: crate::lease::EtcdLeases,
    /// The store's integrity keys, once the store has unwrapped them: from then on every commit
    /// keeps the state digest key (see `crate::verify`) in its own Txn.
    integrity: std::sync::OnceLock<Arc<StoreIntegrity>>,
    /// One lock per digest shard: this replica's writes to keys of one shard plan and commit
    /// one at a time (they would only race on the shard key otherwise); writes to other shards
    /// go on meanwhile. Taken in shard order, after the engine's own lock where it has one.
    shard_locks: Vec<std::sync::Mutex<()>>,
}

impl std::fmt::Debug for EtcdMvcc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMvcc")
            .field("client", &self.client)
            .field("revision", &self.cache.revision())
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdMvcc {
    fn drop(&mut self) {
        self.watch.abort();
        self.campaign.abort();
    }
}

impl EtcdMvcc {
    /// Lists the keyspace from etcd, starts following it with one watch, and learns the
    /// compaction revision. Fails with [`StorageError::Unavailable`] when no quorum answers.
    pub async fn open(client: EtcdClient) -> Result<Self, StorageError> {
        Self::open_with_election_ttl(client, crate::election::DEFAULT_ELECTION_TTL).await
    }

    /// As [`EtcdMvcc::open`], with the TTL of the election lease (how long the office stays
    /// vacant after its holder dies).
    pub async fn open_with_election_ttl(
        client: EtcdClient,
        election_ttl: Duration,
    ) -> Result<Self, StorageError> {
        let root = format!("{}/v/", client.prefix()).into_bytes();
        let (kvs, revision) = {
            let (c, r) = (client.clone(), root.clone());
            client.run(async move { list_all(&c, &r).await }).await?
        };
        let cache = Arc::new(Cache::new(kvs, revision));
        let watch = client.spawn(follow(client.clone(), cache.clone(), root.clone()));
        // (The watch covers `PREFIX/`, so that the unversioned writes move the cache too.)
        let compacted = {
            let (c, r) = (client.clone(), root.clone());
            client
                .run(async move { find_compaction(&c, &r, revision).await })
                .await?
        };
        let (leader_tx, leader) = tokio::sync::watch::channel(false);
        let campaign = client.spawn(crate::election::campaign(
            client.clone(),
            "compactor",
            election_ttl,
            leader_tx,
        ));
        Ok(Self {
            leases: crate::lease::EtcdLeases::new(client.clone(), root.clone()),
            leader,
            campaign,
            backend: Arc::new(EtcdBackend::new(client.clone())),
            rounds: Rounds::new(client.clone(), cache.clone()),
            client,
            root,
            cache,
            compacted: AtomicU64::new(compacted),
            watch,
            integrity: std::sync::OnceLock::new(),
            shard_locks: (0..SHARED_DIGEST_SHARDS)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
        })
    }

    /// The rounds of read barriers run so far, one count-only Range each: concurrent barriers
    /// share a round (see `barrier`), so this grows slower than the number of reads under load.
    pub fn barrier_rounds(&self) -> u64 {
        self.rounds.rounds()
    }

    /// The quiet checks read barriers ran so far: proofs from etcd that nothing under the
    /// prefix changed while etcd's newest revisions were other keys'.
    pub fn barrier_quiet_checks(&self) -> u64 {
        self.rounds.quiet_checks()
    }

    /// The etcd client (for the election and tools).
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.root.clone();
        k.extend_from_slice(key);
        k
    }

    /// A Range read at revision `at` of `[key, range_end)`.
    fn range_at(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        at: Revision,
        limit: usize,
    ) -> Result<Vec<Version>, StorageError> {
        let client = self.client.clone();
        let limit = i64::try_from(limit).unwrap_or(0);
        let result = self.client.block_on(async move {
            client
                .read(move |mut kv| {
                    let req = pb::RangeRequest {
                        key: key.clone(),
                        range_end: range_end.clone(),
                        revision: at as i64,
                        limit,
                        ..Default::default()
                    };
                    async move { kv.range(req).await }
                })
                .await
        });
        let resp = result.map_err(|e| self.revision_error(e, at))?;
        let strip = self.root.len();
        resp.kvs
            .into_iter()
            .map(|kv| version_of(kv, strip, 0))
            .collect()
    }

    /// A range guard as an etcd compare: every key in the range has `mod_revision <
    /// not_after + 1` (an empty range holds, as etcd compares a missing key as zeros).
    fn guard_compare(&self, g: &RangeGuard) -> pb::Compare {
        pb::Compare {
            result: pb::compare::CompareResult::Less as i32,
            target: pb::compare::CompareTarget::Mod as i32,
            key: self.full(&g.start),
            range_end: match &g.end {
                Some(end) => self.full(end),
                None => prefix_end(&self.root),
            },
            target_union: Some(pb::compare::TargetUnion::ModRevision(
                i64::try_from(g.not_after).unwrap_or(i64::MAX - 1) + 1,
            )),
        }
    }

    /// etcd's refusal of a read at `at`, as the storage error the engine maps.
    fn revision_error(&self, e: EtcdError, at: Revision) -> StorageError {
        if let EtcdError::Refused(s) = &e {
            if s.message().contains(ERR_COMPACTED) {
                let compacted = self.refresh_compaction().max(at + 1);
                return StorageError::Compacted {
                    requested: at,
                    compacted,
                };
            }
            if s.message().contains(ERR_FUTURE) {
                return StorageError::FutureRevision {
                    requested: at,
                    current: self.cache.revision(),
                };
            }
        }
        e.into()
    }

    /// Learns the compaction revision again (another replica may have compacted).
    fn refresh_compaction(&self) -> Revision {
        let (c, r, rev) = (
            self.client.clone(),
            self.root.clone(),
            self.cache.revision(),
        );
        if let Ok(found) = self
            .client
            .block_on(async move { find_compaction(&c, &r, rev).await })
        {
            self.compacted.fetch_max(found, Ordering::Relaxed);
        }
        self.compacted.load(Ordering::Relaxed)
    }

    /// Every change of the versioned keys starting with `key` (one key when `exact`) after
    /// `after`, up to the newest event this replica has seen (at most `limit`), from an etcd
    /// watch on the whole prefix: it is sure to deliver that newest event, which ends it.
    fn watch_changes(
        &self,
        key: Vec<u8>,
        exact: bool,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<Change>, StorageError> {
        let (c, root) = (self.client.clone(), self.root.clone());
        let until = self.cache.last_event();
        let result = self.client.block_on(async move {
            collect_changes(&c, &root, key, exact, after + 1, until, limit).await
        });
        match result {
            Ok(Ok(changes)) => Ok(changes),
            Ok(Err(compacted)) => {
                self.compacted.fetch_max(compacted, Ordering::Relaxed);
                Err(StorageError::Compacted {
                    requested: after,
                    compacted,
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl EtcdMvcc {
    /// A digest shard key's etcd key (`PREFIX/u/i/digest/<shard>`).
    fn digest_key(&self, shard: u8) -> Vec<u8> {
        let mut k = format!("{}/u/", self.client.prefix()).into_bytes();
        k.extend_from_slice(&shared_digest_key(shard));
        k
    }

    /// Reads the digest shards of the keys `txn` writes and those keys at one revision, and
    /// plans the digest after `txn`: the compares that make the plan exact (each shard key's
    /// mod_revision, and each written key the engine set no condition on) and the shards' new
    /// values.
    fn plan_digest(
        &self,
        integrity: &StoreIntegrity,
        txn: &Txn,
        written: u64,
    ) -> Result<DigestStep, StorageError> {
        let shards: std::collections::BTreeSet<u8> = txn
            .writes
            .iter()
            .map(|w| shared_digest_shard(write_key(w)))
            .collect();
        let mut reads: Vec<pb::RequestOp> = shards
            .iter()
            .map(|s| range_op(self.digest_key(*s)))
            .collect();
        for w in &txn.writes {
            reads.push(range_op(self.full(write_key(w))));
        }
        let client = self.client.clone();
        let resp = self.client.block_on(async move {
            client
                .read(move |mut kv| {
                    let req = pb::TxnRequest {
                        compare: Vec::new(),
                        success: reads.clone(),
                        failure: Vec::new(),
                    };
                    async move { kv.txn(req).await }
                })
                .await
        })?;
        let mut found = resp.responses.into_iter().map(|r| match r.response {
            Some(pb::response_op::Response::ResponseRange(rr)) => rr.kvs.into_iter().next(),
            _ => None,
        });
        let (keys, store) = (&integrity.keys, &integrity.store_id);
        let mut digests = std::collections::BTreeMap::new();
        let mut compares = Vec::new();
        for shard in &shards {
            let dkey = self.digest_key(*shard);
            let current = found.next().flatten();
            digests.insert(
                *shard,
                match &current {
                    Some(kv) => decode_shared_digest(keys, store, *shard, &kv.value)?,
                    None => StateDigest::EMPTY,
                },
            );
            compares.push(match &current {
                Some(kv) => mod_compare(dkey, kv.mod_revision),
                None => created_compare(dkey),
            });
        }
        for w in &txn.writes {
            let key = write_key(w);
            let prev = found.next().flatten();
            let digest = digests
                .entry(shared_digest_shard(key))
                .or_insert(StateDigest::EMPTY);
            if let Some(p) = &prev
                && shared_term_applies(p.lease)
            {
                shared_digest_update(digest, keys, key, p.version as u64, &p.value, false);
            }
            if !txn.conditions.iter().any(|c| c.key == key) {
                compares.push(match &prev {
                    Some(p) => mod_compare(self.full(key), p.mod_revision),
                    None => created_compare(self.full(key)),
                });
            }
            if let Write::Put { value, lease, .. } = w
                && shared_term_applies(*lease)
            {
                // etcd's per-key version: the compare on the key fixes it before the Txn.
                let version = prev.as_ref().map_or(1, |p| p.version as u64 + 1);
                let stored = encode_value(written, value);
                shared_digest_update(digest, keys, key, version, &stored, true);
            }
        }
        Ok(DigestStep {
            compares,
            puts: digests
                .iter()
                .map(|(shard, d)| {
                    put_op(
                        self.digest_key(*shard),
                        encode_shared_digest(keys, store, *shard, d),
                    )
                })
                .collect(),
        })
    }

    /// Commits `txn` as one etcd Txn (with the digest `step`'s compares and put, if any, and
    /// the door's range `guards`), its values stamped `written`. `Ok(None)`: only the digest step's compares failed (another
    /// replica wrote in between): plan again.
    fn commit_with(
        &self,
        txn: &Txn,
        written: u64,
        step: Option<DigestStep>,
        guards: &[RangeGuard],
    ) -> Result<Option<Committed>, StorageError> {
        let mut compare: Vec<pb::Compare> = txn
            .conditions
            .iter()
            .map(|c| {
                let key = self.full(&c.key);
                if c.mod_revision == 0 {
                    pb::Compare {
                        result: pb::compare::CompareResult::Equal as i32,
                        target: pb::compare::CompareTarget::Create as i32,
                        key,
                        target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                        ..Default::default()
                    }
                } else {
                    pb::Compare {
                        result: pb::compare::CompareResult::Equal as i32,
                        target: pb::compare::CompareTarget::Mod as i32,
                        key,
                        target_union: Some(pb::compare::TargetUnion::ModRevision(
                            c.mod_revision as i64,
                        )),
                        ..Default::default()
                    }
                }
            })
            .collect();
        let mut success: Vec<pb::RequestOp> = Vec::with_capacity(txn.writes.len());
        for w in &txn.writes {
            success.push(match w {
                Write::Put { key, value, lease } => pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: self.full(key),
                        value: encode_value(written, value),
                        lease: *lease,
                        prev_kv: true,
                        ..Default::default()
                    })),
                },
                Write::Delete { key } => pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: self.full(key),
                            prev_kv: true,
                            ..Default::default()
                        },
                    )),
                },
            });
        }
        compare.extend(guards.iter().map(|g| self.guard_compare(g)));
        let had_step = step.is_some();
        if let Some(step) = step {
            compare.extend(step.compares);
            success.extend(step.puts);
        }
        let meta_root = format!("{}/u/", self.client.prefix()).into_bytes();
        for op in &txn.meta {
            let full = |k: &[u8]| {
                let mut f = meta_root.clone();
                f.extend_from_slice(k);
                f
            };
            success.push(match op {
                Op::Put(k, v) | Op::PutOver(k, v, _) => put_op(full(k), v.clone()),
                Op::Delete(k) => delete_op(full(k)),
            });
        }
        // On a failed compare: read each condition's key, to say which one failed and why.
        let failure: Vec<pb::RequestOp> = txn
            .conditions
            .iter()
            .map(|c| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: self.full(&c.key),
                    keys_only: true,
                    ..Default::default()
                })),
            })
            .collect();
        let client = self.client.clone();
        let resp = self.client.block_on(async move {
            client
                .write(move |mut kv| {
                    let req = pb::TxnRequest {
                        compare: compare.clone(),
                        success: success.clone(),
                        failure: failure.clone(),
                    };
                    async move { kv.txn(req).await }
                })
                .await
        })?;
        let revision = header_revision(resp.header.as_ref());
        let strip = self.root.len();
        if !resp.succeeded {
            for (c, r) in txn.conditions.iter().zip(&resp.responses) {
                let current = match &r.response {
                    Some(pb::response_op::Response::ResponseRange(rr)) => {
                        rr.kvs.first().map_or(0, |kv| kv.mod_revision.max(0) as u64)
                    }
                    _ => 0,
                };
                if current != c.mod_revision {
                    return Err(StorageError::ConditionFailed {
                        key: String::from_utf8_lossy(&c.key).into_owned(),
                        expected: c.mod_revision,
                        current,
                    });
                }
            }
            if had_step && guards.is_empty() {
                // Every condition of the engine held: the digest step's compares failed.
                return Ok(None);
            }
            // With range guards the failed compare may be a guard's (a key written in a range
            // the door read): the door evaluates its Txn again, digest included.
            // The compares failed but every key reads as expected now: it changed and changed
            // back in between. Report the first.
            let c = txn.conditions.first();
            return Err(StorageError::ConditionFailed {
                key: c.map_or_else(String::new, |c| {
                    String::from_utf8_lossy(&c.key).into_owned()
                }),
                expected: c.map_or(0, |c| c.mod_revision),
                current: 0,
            });
        }
        let mut prev = Vec::with_capacity(txn.writes.len());
        for r in resp.responses.into_iter().take(txn.writes.len()) {
            let kv = match r.response {
                Some(pb::response_op::Response::ResponsePut(p)) => p.prev_kv,
                Some(pb::response_op::Response::ResponseDeleteRange(d)) => {
                    d.prev_kvs.into_iter().next()
                }
                _ => None,
            };
            prev.push(kv.map(|kv| version_of(kv, strip, 0)).transpose()?);
        }
        Ok(Some(Committed {
            revision,
            lsn: revision,
            prev,
        }))
    }
}

#[async_trait]
impl Mvcc for EtcdMvcc {
    fn revision(&self) -> Revision {
        self.cache.revision()
    }

    fn compact_revision(&self) -> Revision {
        self.compacted.load(Ordering::Relaxed)
    }

    fn get(&self, key: &[u8], at: Option<Revision>) -> Result<Option<Version>, StorageError> {
        match at {
            None => Ok(self.cache.get(key)),
            Some(at) => Ok(self
                .range_at(self.full(key), Vec::new(), at, 1)?
                .into_iter()
                .next()),
        }
    }

    fn range(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        at: Option<Revision>,
        limit: usize,
    ) -> Result<Vec<Version>, StorageError> {
        let Some(at) = at else {
            return Ok(self.cache.range(prefix, start_after, limit));
        };
        let full_prefix = self.full(prefix);
        let start = match start_after {
            Some(a) if a >= prefix => {
                let mut k = self.full(a);
                k.push(0);
                k
            }
            _ => full_prefix.clone(),
        };
        self.range_at(start, prefix_end(&full_prefix), at, limit)
    }

    fn history(&self, key: &[u8], limit: usize) -> Result<Vec<Version>, StorageError> {
        let full = self.full(key);
        // O(changes since the compaction revision) per call: a key's versions are read from
        // a watch on the whole prefix (etcd has no per-key history call, and a one-key watch
        // gives no sign of having caught up; see `collect_changes`).
        let compacted = self.compact_revision();
        // The version live at the compaction revision is kept too (readable there).
        let mut out: Vec<Version> = if compacted > 0 {
            match self.range_at(full.clone(), Vec::new(), compacted, 1) {
                Ok(v) => v,
                Err(StorageError::Compacted { .. }) => Vec::new(),
                Err(e) => return Err(e),
            }
        } else {
            Vec::new()
        };
        let changes = self.watch_changes(key.to_vec(), true, compacted, usize::MAX)?;
        out.extend(changes.into_iter().map(|c| c.kv));
        out.reverse();
        out.truncate(limit);
        Ok(out)
    }

    fn changes(&self, after: Revision, limit: usize) -> Result<Vec<Change>, StorageError> {
        let compacted = self.compact_revision();
        if after.saturating_add(1) < compacted {
            return Err(StorageError::Compacted {
                requested: after,
                compacted,
            });
        }
        self.watch_changes(Vec::new(), false, after, limit)
    }

    fn commit(&self, txn: Txn) -> Result<Committed, StorageError> {
        self.commit_guarded(txn, &[])
    }

    fn commit_guarded(&self, txn: Txn, guards: &[RangeGuard]) -> Result<Committed, StorageError> {
        let Some(integrity) = self.integrity.get().cloned() else {
            return self
                .commit_with(&txn, unix_ms(), None, guards)?
                .ok_or_else(|| StorageError::Unavailable("lost a race with no digest".into()));
        };
        // This replica's writes to the same shards wait for each other here (in shard order).
        let shards: std::collections::BTreeSet<u8> = txn
            .writes
            .iter()
            .map(|w| shared_digest_shard(write_key(w)))
            .collect();
        let lock_all = || -> Vec<std::sync::MutexGuard<'_, ()>> {
            shards
                .iter()
                .filter_map(|s| self.shard_locks.get(usize::from(*s)))
                .map(|l| l.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
                .collect()
        };
        // Waiting blocks the thread, as the etcd calls below do: a worker hands its other
        // tasks over first.
        let _held = coffer_core::storage::off_worker(lock_all);
        // The digest shards are compared by mod_revision in the Txn: a write by another replica
        // in between fails the compare, and the digest is planned again from what it wrote.
        for _ in 0..DIGEST_TRIES {
            let written = unix_ms();
            let step = self.plan_digest(&integrity, &txn, written)?;
            if let Some(done) = self.commit_with(&txn, written, Some(step), guards)? {
                return Ok(done);
            }
        }
        Err(StorageError::Unavailable(format!(
            "the state digest changed on each of {DIGEST_TRIES} tries (other replicas write); retry"
        )))
    }

    fn set_integrity(&self, integrity: Arc<StoreIntegrity>) -> Result<(), StorageError> {
        let integrity = self.integrity.get_or_init(|| integrity).clone();
        let (c, prefix) = (self.client.clone(), self.client.prefix().to_owned());
        let snapshot = self
            .client
            .block_on(async move { crate::digest::snapshot(&c, &prefix).await })?;
        let computed = crate::digest::digest_of(&integrity, &snapshot, self.root.len());
        let (keys, store) = (&integrity.keys, &integrity.store_id);
        let mut missing = Vec::new();
        for (shard, computed) in (0..SHARED_DIGEST_SHARDS).zip(&computed) {
            match snapshot.digests.get(&shard) {
                Some(kv) => match decode_shared_digest(keys, store, shard, &kv.value) {
                    Ok(recorded) if recorded == *computed => {}
                    Ok(recorded) => tracing::error!(
                        revision = snapshot.revision,
                        shard,
                        recorded = %recorded.short(), recorded_records = recorded.count(),
                        computed = %computed.short(), computed_records = computed.count(),
                        "the state digest of the etcd keyspace does not match its records: \
                         records were put back, added or removed outside Coffer (run coffer \
                         verify --storage)"
                    ),
                    Err(e) => tracing::error!(error = %e, "a state digest key is refused"),
                },
                None => missing.push((shard, *computed)),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        // A new keyspace: its digest shards are made now, once (a replica that made one first
        // wins). Shards missing from a keyspace that has others, or whose records exist, were
        // deleted outside Coffer (every Coffer write keeps them): said loudly, then made from
        // the records so that writes go on; what changed there before is no longer told.
        let new_keyspace = snapshot.digests.is_empty() && snapshot.versioned.is_empty();
        if !new_keyspace {
            tracing::error!(
                shards = missing.len(),
                records = missing.iter().map(|(_, d)| d.count()).sum::<u64>(),
                revision = snapshot.revision,
                "state digest keys are missing from an etcd keyspace that had them or holds \
                 records: they were deleted outside Coffer; made again from the records"
            );
        }
        let (compare, success): (Vec<_>, Vec<_>) = missing
            .iter()
            .map(|(shard, d)| {
                let key = self.digest_key(*shard);
                (
                    created_compare(key.clone()),
                    put_op(key, encode_shared_digest(keys, store, *shard, d)),
                )
            })
            .unzip();
        let client = self.client.clone();
        self.client.block_on(async move {
            client
                .write(move |mut kv| {
                    let req = pb::TxnRequest {
                        compare: compare.clone(),
                        success: success.clone(),
                        failure: Vec::new(),
                    };
                    async move { kv.txn(req).await }
                })
                .await
        })?;
        Ok(())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StorageError> {
        let current = self.compact_revision();
        if revision < current {
            return Err(StorageError::Compacted {
                requested: revision,
                compacted: current,
            });
        }
        let client = self.client.clone();
        let result = self
            .client
            .run(async move {
                client
                    .write(move |mut kv| async move {
                        kv.compact(pb::CompactionRequest {
                            revision: revision as i64,
                            physical: false,
                        })
                        .await
                    })
                    .await
            })
            .await;
        match result {
            Ok(_) => {}
            // Another replica compacted as far already.
            Err(EtcdError::Refused(s)) if s.message().contains(ERR_COMPACTED) => {}
            Err(EtcdError::Refused(s)) if s.message().contains(ERR_FUTURE) => {
                return Err(StorageError::FutureRevision {
                    requested: revision,
                    current: self.cache.revision(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        self.compacted.fetch_max(revision, Ordering::Relaxed);
        Ok(())
    }

    fn revision_at_time(&self, unix_ms: u64) -> Result<Revision, StorageError> {
        Ok(self
            .cache
            .revision_at(unix_ms)
            .unwrap_or_else(|| self.compact_revision()))
    }

    fn stats(&self) -> HistoryStats {
        // etcd does not say how many superseded versions it keeps.
        HistoryStats {
            versions: 0,
            bytes: 0,
            compact_revision: self.compact_revision(),
        }
    }

    fn stored_values(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StoredValue>, StorageError> {
        // Only current versions: etcd's history cannot be rewritten in place.
        Ok(self
            .cache
            .all()
            .into_iter()
            .filter(|v| after.is_none_or(|a| v.key.as_slice() > a))
            .take(limit)
            .map(|v| StoredValue {
                position: v.key.clone(),
                current: true,
                version: v,
            })
            .collect())
    }

    fn replace_values(
        &self,
        _replacements: Vec<(StoredValue, Vec<u8>)>,
    ) -> Result<(usize, Lsn), StorageError> {
        Err(StorageError::Invalid(
            "coffer migrate cannot rewrite records in place on etcd storage (etcd's history is \
             immutable); not supported yet"
                .into(),
        ))
    }

    fn applied(&self) -> Lsn {
        self.cache.revision()
    }

    async fn wait_durable(&self, _lsn: Lsn) -> Result<(), StorageError> {
        // An acknowledged etcd Txn is committed on a quorum.
        Ok(())
    }

    async fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn is_failed(&self) -> bool {
        false
    }

    fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    fn shared(&self) -> bool {
        true
    }

    async fn read_barrier(&self) -> Result<(), StorageError> {
        self.rounds.barrier().await
    }

    fn take_feed(&self) -> Option<mpsc::UnboundedReceiver<Change>> {
        self.cache.take_feed()
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    fn leases(&self) -> Option<&dyn LeaseService> {
        Some(&self.leases)
    }
}

/// The sealed record inside a stored value (`None`: not a value Coffer wrote).
pub(crate) fn stored_record(value: &[u8]) -> Option<&[u8]> {
    (value.len() >= VALUE_HEADER && value[0] == VALUE_MAGIC).then(|| &value[VALUE_HEADER..])
}

/// `0xC6 | written_ms | record`.
fn encode_value(written_ms: u64, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(VALUE_HEADER + record.len());
    out.push(VALUE_MAGIC);
    out.extend_from_slice(&written_ms.to_be_bytes());
    out.extend_from_slice(record);
    out
}

/// A stored etcd key-value as a version (its key without the first `strip` bytes).
fn version_of(
    kv: mvccpb::KeyValue,
    strip: usize,
    prev_revision: u64,
) -> Result<Version, StorageError> {
    let key = kv.key.get(strip..).unwrap_or_default().to_vec();
    if kv.value.len() < VALUE_HEADER || kv.value[0] != VALUE_MAGIC {
        return Err(StorageError::Corrupt(format!(
            "etcd key {:?} holds a value Coffer did not write (bad header)",
            String::from_utf8_lossy(&kv.key)
        )));
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&kv.value[1..VALUE_HEADER]);
    let mut value = kv.value;
    value.drain(..VALUE_HEADER);
    Ok(Version {
        key,
        kind: VersionKind::Put,
        create_revision: kv.create_revision.max(0) as u64,
        mod_revision: kv.mod_revision.max(0) as u64,
        version: kv.version.max(0) as u64,
        lease: kv.lease,
        prev_revision,
        written_ms: u64::from_be_bytes(t),
        value,
    })
}

/// A watch event as a change.
fn change_of(ev: mvccpb::Event, strip: usize) -> Result<Option<Change>, StorageError> {
    let Some(kv) = ev.kv else { return Ok(None) };
    let prev = ev.prev_kv.map(|p| version_of(p, strip, 0)).transpose()?;
    let prev_revision = prev.as_ref().map_or(0, |p| p.mod_revision);
    let kv = if ev.r#type == mvccpb::event::EventType::Delete as i32 {
        Version {
            key: kv.key.get(strip..).unwrap_or_default().to_vec(),
            kind: VersionKind::Delete,
            create_revision: prev.as_ref().map_or(0, |p| p.create_revision),
            mod_revision: kv.mod_revision.max(0) as u64,
            version: 0,
            lease: 0,
            prev_revision,
            written_ms: 0,
            value: Vec::new(),
        }
    } else {
        version_of(kv, strip, prev_revision)?
    };
    Ok(Some(Change { kv, prev }))
}

/// The whole keyspace under `root` at one revision (pages pinned to the first page's).
async fn list_all(client: &EtcdClient, root: &[u8]) -> Result<(Vec<Version>, u64), StorageError> {
    let (kvs, revision) = list_pinned(client, root, LIST_PAGE).await?;
    let versions = kvs
        .into_iter()
        .map(|kv| version_of(kv, root.len(), 0))
        .collect::<Result<_, _>>()?;
    Ok((versions, revision))
}

/// The compaction revision: the oldest revision etcd still reads (0: never compacted), by
/// bisection with Ranges at revisions on one key.
async fn find_compaction(
    client: &EtcdClient,
    root: &[u8],
    current: u64,
) -> Result<u64, StorageError> {
    let probe = root.to_vec();
    let readable = |at: u64| {
        let probe = probe.clone();
        async move {
            let r = client
                .read(move |mut kv| {
                    let req = pb::RangeRequest {
                        key: probe.clone(),
                        revision: at as i64,
                        count_only: true,
                        ..Default::default()
                    };
                    async move { kv.range(req).await }
                })
                .await;
            match r {
                Ok(_) => Ok(true),
                Err(EtcdError::Refused(s)) if s.message().contains(ERR_COMPACTED) => Ok(false),
                Err(e) => Err(StorageError::from(e)),
            }
        }
    };
    if current <= 1 || readable(1).await? {
        return Ok(0);
    }
    // readable(lo) is false, readable(hi) is true.
    let (mut lo, mut hi) = (1u64, current);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if readable(mid).await? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// The changes of the versioned keys starting with `key` (exactly `key` when `exact`) from
/// revision `start` up to `until`, the revision of an event under the prefix this replica has
/// seen (at most `limit`); `Ok(Err(C))` when `start` is below the compaction revision C.
///
/// The watch covers the whole prefix because it must know when it is done: it is sure to
/// deliver an event at `until`. (etcd's progress requests cannot say so: before 3.4.24/3.5.8
/// their answer can overtake the events, and a watcher still catching up gets none.)
async fn collect_changes(
    client: &EtcdClient,
    root: &[u8],
    key: Vec<u8>,
    exact: bool,
    start: u64,
    until: u64,
    limit: usize,
) -> Result<Result<Vec<Change>, u64>, EtcdError> {
    let mut out = Vec::new();
    if start > until || limit == 0 {
        return Ok(Ok(out));
    }
    let all = format!("{}/", client.prefix()).into_bytes();
    let deadline = Instant::now() + client.timeout();
    let (i, mut wc) = client.watch_client();
    let (tx, rx) = mpsc::channel(1);
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                range_end: prefix_end(&all),
                key: all,
                start_revision: start as i64,
                prev_kv: true,
                ..Default::default()
            },
        )),
    };
    let _ = tx.send(create).await;
    let left = deadline.saturating_duration_since(Instant::now());
    let mut stream = match tokio::time::timeout(left, wc.watch(ReceiverStream::new(rx))).await {
        Ok(Ok(s)) => s.into_inner(),
        Ok(Err(s)) => {
            client.failed(i);
            return Err(EtcdError::Unavailable(format!("watch: {}", s.message())));
        }
        Err(_) => {
            client.failed(i);
            return Err(EtcdError::Unavailable("watch: no answer in time".into()));
        }
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let resp = match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) | Ok(Err(_)) => {
                client.failed(i);
                return Err(EtcdError::Unavailable("watch stream broke".into()));
            }
            Err(_) => {
                return Err(EtcdError::Unavailable(format!(
                    "watch did not reach revision {until} within {:?}",
                    client.timeout()
                )));
            }
        };
        if resp.compact_revision > 0 {
            return Ok(Err(resp.compact_revision as u64));
        }
        if resp.canceled {
            return Err(EtcdError::Unavailable(format!(
                "watch canceled: {}",
                resp.cancel_reason
            )));
        }
        for ev in resp.events {
            let rev = ev.kv.as_ref().map_or(0, |kv| kv.mod_revision.max(0) as u64);
            if rev > until {
                return Ok(Ok(out));
            }
            let wanted = ev.kv.as_ref().is_some_and(|kv| {
                kv.key.strip_prefix(root).is_some_and(|k| {
                    if exact {
                        k == key.as_slice()
                    } else {
                        k.starts_with(&key)
                    }
                })
            });
            if wanted {
                if let Some(c) =
                    change_of(ev, root.len()).map_err(|e| EtcdError::Unavailable(e.to_string()))?
                {
                    out.push(c);
                }
                if out.len() >= limit {
                    return Ok(Ok(out));
                }
            }
            if rev == until {
                return Ok(Ok(out));
            }
        }
    }
}

/// Follows the keyspace under `root` into `cache` for as long as the store lives: one etcd
/// watch (prev_kv, progress_notify) from the cache's revision + 1, made again on another
/// member when its stream breaks; after a compaction overtook it, the keyspace is listed again.
async fn follow(client: EtcdClient, cache: Arc<Cache>, root: Vec<u8>) {
    let mut pause = Duration::from_millis(20);
    loop {
        match watch_once(&client, &cache, &root).await {
            WatchEnd::Compacted => match list_all(&client, &root).await {
                Ok((kvs, revision)) => {
                    tracing::warn!(
                        revision,
                        "the etcd watch fell behind a compaction: listed the keyspace again"
                    );
                    cache.replace(kvs, revision);
                    pause = Duration::from_millis(20);
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "listing etcd again failed; retrying"),
            },
            WatchEnd::Broken(why) => {
                tracing::warn!(reason = %why, "the etcd watch broke; watching again");
            }
            WatchEnd::Healthy => pause = Duration::from_millis(20),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

enum WatchEnd {
    /// The watch ended after delivering something (try again at once).
    Healthy,
    /// The stream failed.
    Broken(String),
    /// The revision to resume from is compacted.
    Compacted,
}

async fn watch_once(client: &EtcdClient, cache: &Cache, root: &[u8]) -> WatchEnd {
    let all = format!("{}/", client.prefix()).into_bytes();
    let (i, mut wc) = client.watch_client();
    let (tx, rx) = mpsc::channel(1);
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                range_end: prefix_end(&all),
                key: all,
                start_revision: cache.revision() as i64 + 1,
                progress_notify: true,
                prev_kv: true,
                ..Default::default()
            },
        )),
    };
    let _ = tx.send(create).await;
    let mut stream =
        match tokio::time::timeout(client.timeout(), wc.watch(ReceiverStream::new(rx))).await {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(s)) => {
                client.failed(i);
                return WatchEnd::Broken(s.message().to_owned());
            }
            Err(_) => {
                client.failed(i);
                return WatchEnd::Broken("no answer in time".into());
            }
        };
    let strip = root.len();
    let mut delivered = false;
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                client.failed(i);
                return if delivered {
                    WatchEnd::Healthy
                } else {
                    WatchEnd::Broken("stream ended".into())
                };
            }
            Err(s) => {
                client.failed(i);
                return WatchEnd::Broken(s.message().to_owned());
            }
        };
        if resp.compact_revision > 0 {
            return WatchEnd::Compacted;
        }
        if resp.canceled {
            return WatchEnd::Broken(format!("canceled: {}", resp.cancel_reason));
        }
        if resp.created && resp.events.is_empty() {
            continue;
        }
        delivered = true;
        if resp.events.is_empty() {
            // A periodic progress notification: sent with the watch's id only once every
            // event up to its revision has been sent.
            if resp.watch_id >= 0 {
                cache.advance(header_revision(resp.header.as_ref()));
            }
            continue;
        }
        let mut changes = Vec::with_capacity(resp.events.len());
        let mut last = 0;
        for ev in resp.events {
            let Some(kv) = &ev.kv else { continue };
            last = last.max(kv.mod_revision.max(0) as u64);
            if !kv.key.starts_with(root) {
                // An unversioned key (a seed): it only moves the revision.
                continue;
            }
            match change_of(ev, strip) {
                Ok(Some(c)) => changes.push(c),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "skipped an etcd event Coffer cannot read"),
            }
        }
        cache.apply(changes, last);
    }
}

/// How often a commit plans the digest again after losing a race on the digest key.
const DIGEST_TRIES: usize = 16;

/// What a commit adds to its Txn to keep the state digest exact.
struct DigestStep {
    compares: Vec<pb::Compare>,
    /// The new value of each digest shard the write touches.
    puts: Vec<pb::RequestOp>,
}

/// The key a write touches.
fn write_key(w: &Write) -> &[u8] {
    match w {
        Write::Put { key, .. } | Write::Delete { key } => key,
    }
}

/// A Range of one key, as a Txn operation.
fn range_op(key: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key,
            ..Default::default()
        })),
    }
}

/// `key` is at `mod_revision`.
fn mod_compare(key: Vec<u8>, mod_revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key,
        target_union: Some(pb::compare::TargetUnion::ModRevision(mod_revision)),
        ..Default::default()
    }
}

/// `key` is absent.
fn created_compare(key: Vec<u8>) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key,
        target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
        ..Default::default()
    }
}
