//! KV: Range, Put, DeleteRange, Txn and Compact, with etcd's semantics over the store's
//! versioned keyspace.
//!
//! Reads run without the store's sequencing lock: a range over more than one key reads at one
//! revision (a snapshot), a single key reads the latest version. Writes (and transactions,
//! whose compares and reads must see the state they write over) run under the lock through a
//! [`RawWriter`]; every write of one request gets one revision. Inside a transaction a later
//! operation sees the writes of the earlier ones, as in etcd.

use std::collections::{BTreeMap, HashSet};

use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::Door;
use crate::proto::etcd::etcdserverpb as pb;
use crate::proto::etcd::mvccpb;
use crate::server::status::{EtcdError, etcd_store_error};
use coffer_core::storage::mvcc::{Revision, Version};
use coffer_core::store::raw::{KeyRange, RawKv, RawWrite, RawWriter, lost_race};
use coffer_core::store::{Store, StoreError};

/// etcd's `RangeRequest.SortOrder` and `SortTarget` values.
const SORT_NONE: i32 = 0;
const SORT_ASCEND: i32 = 1;
const SORT_DESCEND: i32 = 2;
const TARGET_KEY: i32 = 0;
const TARGET_VERSION: i32 = 1;
const TARGET_CREATE: i32 = 2;
const TARGET_MOD: i32 = 3;
const TARGET_VALUE: i32 = 4;

/// etcd's `Compare.CompareResult` and `Compare.CompareTarget` values.
const CMP_EQUAL: i32 = 0;
const CMP_GREATER: i32 = 1;
const CMP_LESS: i32 = 2;
const CMP_NOT_EQUAL: i32 = 3;
const CMP_VERSION: i32 = 0;
const CMP_CREATE: i32 = 1;
const CMP_MOD: i32 = 2;
const CMP_VALUE: i32 = 3;
const CMP_LEASE: i32 = 4;

fn se(e: StoreError) -> Status {
    etcd_store_error(&e)
}

fn to_pb(kv: RawKv) -> mvccpb::KeyValue {
    let mut kv = kv;
    mvccpb::KeyValue {
        key: std::mem::take(&mut kv.key),
        create_revision: kv.create_revision as i64,
        mod_revision: kv.mod_revision as i64,
        version: kv.version as i64,
        // Moved out of the zeroizing buffer, not copied: the codec wipes it once encoded.
        value: std::mem::take(&mut *kv.value),
        lease: kv.lease,
    }
}

/// Checks a request's shape before anything runs (etcd's `checkRangeRequest` and friends).
pub(super) fn check_range(r: &pb::RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey.status());
    }
    // As etcd 3.4: an unknown sort order sorts nothing, an unknown target sorts by key.
    Ok(())
}

fn check_put(r: &pb::PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey.status());
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided.status());
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided.status());
    }
    Ok(())
}

fn check_delete(r: &pb::DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey.status());
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: operation counts (recursively) and each operation's shape.
pub(super) fn check_txn(r: &pb::TxnRequest, max_ops: usize) -> Result<(), Status> {
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(EtcdError::TooManyOps.status());
    }
    for c in &r.compare {
        if c.key.is_empty() {
            return Err(EtcdError::EmptyKey.status());
        }
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(pb::request_op::Request::RequestRange(q)) => check_range(q)?,
            Some(pb::request_op::Request::RequestPut(q)) => check_put(q)?,
            Some(pb::request_op::Request::RequestDeleteRange(q)) => check_delete(q)?,
            Some(pb::request_op::Request::RequestTxn(t)) => check_txn(t, max_ops)?,
            None => {}
        }
    }
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// etcd's `checkIntervals`: within one branch no key is put twice, and no put falls in a
/// deleted range; a nested transaction's two branches may share keys (only one runs).
fn check_intervals(ops: &[pb::RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<KeyRange>), Status> {
    let dup = || Err(EtcdError::DuplicateKey.status());
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    let mut dels: Vec<KeyRange> = Vec::new();
    for op in ops {
        match &op.request {
            Some(pb::request_op::Request::RequestDeleteRange(d)) => {
                dels.push(KeyRange::from_etcd(&d.key, &d.range_end));
            }
            Some(pb::request_op::Request::RequestPut(p)) if !puts.insert(p.key.clone()) => {
                return dup();
            }
            Some(pb::request_op::Request::RequestTxn(t)) => {
                let (then_puts, then_dels) = check_intervals(&t.success)?;
                let (else_puts, else_dels) = check_intervals(&t.failure)?;
                for k in then_puts.iter().chain(&else_puts) {
                    if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                        return dup();
                    }
                }
                puts.extend(then_puts);
                puts.extend(else_puts);
                dels.extend(then_dels);
                dels.extend(else_dels);
            }
            _ => {}
        }
    }
    if puts.iter().any(|k| dels.iter().any(|d| d.contains(k))) {
        return dup();
    }
    Ok((puts, dels))
}

/// What a range returns, before it becomes a response.
struct RangeResult {
    kvs: Vec<RawKv>,
    count: i64,
    more: bool,
}

/// Sorts, filters and limits a range's versions (etcd's order: sort, then the min/max
/// filters, then the limit); `count` is every key in the range, as etcd counts it.
fn shape(
    mut versions: Vec<Version>,
    r: &pb::RangeRequest,
    values: Option<&BTreeMap<Vec<u8>, Zeroizing<Vec<u8>>>>,
) -> (Vec<Version>, i64, bool) {
    let count = versions.len() as i64;
    let mut order = r.sort_order;
    if r.sort_target != TARGET_KEY && order == SORT_NONE {
        order = SORT_ASCEND;
    }
    if order != SORT_NONE {
        match r.sort_target {
            TARGET_VERSION => versions.sort_by_key(|v| v.version),
            TARGET_CREATE => versions.sort_by_key(|v| v.create_revision),
            TARGET_MOD => versions.sort_by_key(|v| v.mod_revision),
            TARGET_VALUE => {
                if let Some(values) = values {
                    versions.sort_by(|a, b| {
                        let va = values.get(&a.key).map(|v| v.as_slice());
                        let vb = values.get(&b.key).map(|v| v.as_slice());
                        va.cmp(&vb)
                    });
                }
            }
            _ => {}
        }
        match order {
            SORT_ASCEND => {}
            SORT_DESCEND => versions.reverse(),
            // An unknown order: etcd leaves the keys as they are.
            _ => versions.sort_by(|a, b| a.key.cmp(&b.key)),
        }
    }
    versions.retain(|v| {
        (r.min_mod_revision == 0 || v.mod_revision as i64 >= r.min_mod_revision)
            && (r.max_mod_revision == 0 || v.mod_revision as i64 <= r.max_mod_revision)
            && (r.min_create_revision == 0 || v.create_revision as i64 >= r.min_create_revision)
            && (r.max_create_revision == 0 || v.create_revision as i64 <= r.max_create_revision)
    });
    let mut more = false;
    if r.limit > 0 && versions.len() > r.limit as usize {
        versions.truncate(r.limit as usize);
        more = true;
    }
    (versions, count, more)
}

impl Door {
    /// A Range outside a transaction. Returns the result and the revision it reflects.
    ///
    /// Memory stays bounded: without sorting or filters only `limit` versions are held (the
    /// rest of the range is counted); otherwise, and without a limit, the versions held are
    /// capped at `--etcd-max-response-bytes`.
    async fn read_range(&self, r: &pb::RangeRequest) -> Result<(RangeResult, Revision), Status> {
        let store = &self.store;
        let range = KeyRange::from_etcd(&r.key, &r.range_end);
        // On a shared keyspace: after every write acknowledged before (linearizable, as etcd).
        let current = store.raw_barrier().await.map_err(se)?;
        let at = match r.revision {
            rev if rev <= 0 => None,
            rev => Some(rev as u64),
        };
        // One key: its latest version. More: a snapshot at one revision.
        let read_at = match (&range, at) {
            (_, Some(at)) => Some(at),
            (KeyRange::Single(_), None) => None,
            (_, None) => Some(current),
        };
        let plain = r.sort_order == SORT_NONE
            && r.sort_target == TARGET_KEY
            && r.min_mod_revision == 0
            && r.max_mod_revision == 0
            && r.min_create_revision == 0
            && r.max_create_revision == 0;
        // Without sorting and filters the first `limit` keys are the answer (one more tells
        // `more`); the rest is only counted.
        let keep = match (r.count_only, plain, r.limit) {
            (true, _, _) => 0,
            (false, true, l) if l > 0 => l as usize,
            _ => usize::MAX,
        };
        let mut versions = Vec::new();
        let mut count = 0i64;
        let mut bytes = 0usize;
        let cap = self.options.max_response_bytes;
        let mut too_large = false;
        let keys_only = r.keys_only || r.count_only;
        store
            .raw_scan(&range, read_at, |v| {
                count += 1;
                if versions.len() < keep {
                    bytes += v.key.len() + if keys_only { 0 } else { v.value.len() };
                    if bytes > cap {
                        too_large = true;
                        return false;
                    }
                    versions.push(without_value_if(v, keys_only));
                }
                true
            })
            .await
            .map_err(se)?;
        if too_large {
            return Err(Status::resource_exhausted(format!(
                "etcdserver: range response would exceed {cap} bytes (--etcd-max-response-bytes): use a limit"
            )));
        }
        let header_rev = store.revision().max(current);
        if r.count_only {
            return Ok((
                RangeResult {
                    kvs: Vec::new(),
                    count,
                    more: false,
                },
                header_rev,
            ));
        }
        let mut result = self.finish_range(versions, r, None).await?;
        if plain {
            result.more = r.limit > 0 && count > r.limit;
            result.count = count;
        }
        Ok((result, header_rev))
    }

    /// Sorts, filters, limits and decrypts a range's versions (read by the caller).
    async fn finish_range(
        &self,
        versions: Vec<Version>,
        r: &pb::RangeRequest,
        overlay: Option<&Overlay>,
    ) -> Result<RangeResult, Status> {
        let store = &self.store;
        let with_values = !(r.keys_only || r.count_only);
        // Sorting by value needs every value first.
        let mut values = None;
        if r.sort_target == TARGET_VALUE && !r.count_only {
            let mut map = BTreeMap::new();
            for v in &versions {
                map.insert(v.key.clone(), open_value(store, overlay, v).await?);
            }
            values = Some(map);
        }
        let (versions, count, more) = shape(versions, r, values.as_ref());
        let mut kvs = Vec::new();
        if !r.count_only {
            for v in versions {
                let mut kv = store.open_raw(&v, false).await.map_err(se)?;
                if with_values {
                    kv.value = match values.as_mut().and_then(|m| m.remove(&v.key)) {
                        Some(value) => value,
                        None => open_value(store, overlay, &v).await?,
                    };
                }
                kvs.push(kv);
            }
        }
        Ok(RangeResult { kvs, count, more })
    }
}

fn without_value_if(mut v: Version, drop: bool) -> Version {
    if drop {
        // Keys only: the sealed value is not needed (and not held).
        v.value = Vec::new();
        v.kind = coffer_core::storage::mvcc::VersionKind::Put;
    }
    v
}

/// A value, from the transaction's own writes or the store.
async fn open_value(
    store: &Store,
    overlay: Option<&Overlay>,
    v: &Version,
) -> Result<Zeroizing<Vec<u8>>, Status> {
    if let Some(Some(w)) = overlay.and_then(|o| o.writes.get(&v.key)) {
        return Ok(w.value.clone());
    }
    Ok(store.open_raw(v, true).await.map_err(se)?.value)
}

/// A transaction's own writes so far: key (the door's) -> its new state (`None`: deleted).
#[derive(Default)]
struct Overlay {
    writes: BTreeMap<Vec<u8>, Option<RawKv>>,
    /// The writes, in order, for the commit.
    order: Vec<Vec<u8>>,
}

/// Executes one (possibly nested) transaction under the sequencing lock.
struct TxnRun<'w, 's> {
    writer: &'w RawWriter<'s>,
    door: &'w Door,
    /// The revision the writes will get.
    next: Revision,
    overlay: Overlay,
    /// Whether each transaction's compares held, in the order the transactions run (the
    /// outer one first, then nested ones depth first): etcd evaluates every compare on the
    /// state before the transaction, nested ones included.
    decisions: std::vec::IntoIter<bool>,
}

impl TxnRun<'_, '_> {
    /// A key's current state inside the transaction (undecrypted for stored versions).
    fn current(&self, key: &[u8]) -> Result<Option<Version>, Status> {
        match self.overlay.writes.get(key) {
            Some(Some(kv)) => Ok(Some(Version {
                key: key.to_vec(),
                kind: coffer_core::storage::mvcc::VersionKind::Put,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                lease: kv.lease,
                prev_revision: 0,
                written_ms: 0,
                value: Vec::new(),
            })),
            Some(None) => Ok(None),
            None => self.writer.current(key).map_err(se),
        }
    }

    /// The current versions of the keys in `range` inside the transaction, in key order.
    async fn current_range(&self, range: &KeyRange) -> Result<Vec<Version>, Status> {
        let mut found: BTreeMap<Vec<u8>, Version> = BTreeMap::new();
        let mut bytes = 0usize;
        let cap = self.door.options.max_response_bytes;
        let mut too_large = false;
        self.writer
            .scan(range, |v| {
                bytes += v.key.len() + v.value.len();
                if bytes > cap {
                    too_large = true;
                    return false;
                }
                let key = v.key.clone();
                found.insert(key, v);
                true
            })
            .await
            .map_err(se)?;
        if too_large {
            return Err(Status::resource_exhausted(format!(
                "etcdserver: range response would exceed {cap} bytes (--etcd-max-response-bytes)"
            )));
        }
        // Then the transaction's own writes.
        let mut out = found;
        for (k, w) in &self.overlay.writes {
            if !range.contains(k) {
                continue;
            }
            match w {
                Some(_) => {
                    if let Some(v) = self.current(k)? {
                        out.insert(k.clone(), v);
                    }
                }
                None => {
                    out.remove(k);
                }
            }
        }
        Ok(out.into_values().collect())
    }

    fn compare(&self, c: &pb::Compare, kvs: &[(Version, Option<Zeroizing<Vec<u8>>>)]) -> bool {
        use pb::compare::TargetUnion;
        let target = c.target;
        if kvs.is_empty() {
            if target == CMP_VALUE {
                return false;
            }
            return compare_one(c, 0, &[]);
        }
        kvs.iter().all(|(v, value)| {
            let n = match target {
                CMP_VERSION => v.version as i64,
                CMP_CREATE => v.create_revision as i64,
                CMP_MOD => v.mod_revision as i64,
                CMP_LEASE => v.lease,
                _ => 0,
            };
            match (&c.target_union, target) {
                (Some(TargetUnion::Value(_)), CMP_VALUE) => {
                    compare_one(c, 0, value.as_deref().map_or(&[][..], |v| v.as_slice()))
                }
                _ => compare_one(c, n, &[]),
            }
        })
    }

    async fn evaluate(&self, compares: &[pb::Compare]) -> Result<bool, Status> {
        for c in compares {
            let range = KeyRange::from_etcd(&c.key, &c.range_end);
            let versions = match &range {
                KeyRange::Single(k) => self.current(k)?.into_iter().collect(),
                _ => self.current_range(&range).await?,
            };
            let mut kvs = Vec::with_capacity(versions.len());
            for v in versions {
                let value = if c.target == CMP_VALUE {
                    Some(match self.overlay.writes.get(&v.key) {
                        Some(Some(kv)) => kv.value.clone(),
                        _ => {
                            self.writer
                                .store()
                                .open_raw(&v, true)
                                .await
                                .map_err(se)?
                                .value
                        }
                    })
                } else {
                    None
                };
                kvs.push((v, value));
            }
            if !self.compare(c, &kvs) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The revision a response inside the transaction reports: the next one once something is
    /// written, the current one before (etcd's `txn.Rev()`).
    fn rev(&self) -> Revision {
        if self.overlay.writes.is_empty() {
            self.next - 1
        } else {
            self.next
        }
    }

    /// Evaluates the compares of a transaction and of the nested transactions on the branch
    /// it takes, before anything runs (etcd's `compareToPath`).
    fn decide<'a>(
        &'a self,
        compares: &'a [pb::Compare],
        success: &'a [pb::RequestOp],
        failure: &'a [pb::RequestOp],
        out: &'a mut Vec<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + Send + 'a>> {
        Box::pin(async move {
            let ok = self.evaluate(compares).await?;
            out.push(ok);
            for op in if ok { success } else { failure } {
                if let Some(pb::request_op::Request::RequestTxn(t)) = &op.request {
                    self.decide(&t.compare, &t.success, &t.failure, out).await?;
                }
            }
            Ok(())
        })
    }

    fn execute<'a>(
        &'a mut self,
        ops: &'a [pb::RequestOp],
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<pb::ResponseOp>, Status>> + Send + 'a>,
    > {
        Box::pin(async move {
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                use pb::request_op::Request;
                use pb::response_op::Response;
                let response = match &op.request {
                    Some(Request::RequestRange(r)) => {
                        let range = KeyRange::from_etcd(&r.key, &r.range_end);
                        let versions = if r.revision > 0 {
                            let mut vs = Vec::new();
                            self.writer
                                .store()
                                .raw_scan(&range, Some(r.revision as u64), |v| {
                                    vs.push(v);
                                    true
                                })
                                .await
                                .map_err(se)?;
                            vs
                        } else {
                            self.current_range(&range).await?
                        };
                        let result = self
                            .door
                            .finish_range(versions, r, Some(&self.overlay))
                            .await?;
                        Response::ResponseRange(pb::RangeResponse {
                            header: Some(self.door.header(self.rev())),
                            kvs: result.kvs.into_iter().map(to_pb).collect(),
                            more: result.more,
                            count: result.count,
                        })
                    }
                    Some(Request::RequestPut(p)) => {
                        let prev = self.put(p).await?;
                        Response::ResponsePut(pb::PutResponse {
                            header: Some(self.door.header(self.rev())),
                            prev_kv: if p.prev_kv { prev.map(to_pb) } else { None },
                        })
                    }
                    Some(Request::RequestDeleteRange(d)) => {
                        let (deleted, prev) = self.delete(d).await?;
                        Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                            header: Some(self.door.header(self.rev())),
                            deleted,
                            prev_kvs: prev.into_iter().map(to_pb).collect(),
                        })
                    }
                    Some(Request::RequestTxn(t)) => {
                        let succeeded = self.decisions.next().unwrap_or(false);
                        let branch = if succeeded { &t.success } else { &t.failure };
                        let responses = self.execute(branch).await?;
                        // etcd leaves a nested transaction's header empty.
                        Response::ResponseTxn(pb::TxnResponse {
                            header: Some(pb::ResponseHeader::default()),
                            succeeded,
                            responses,
                        })
                    }
                    None => continue,
                };
                out.push(pb::ResponseOp {
                    response: Some(response),
                });
            }
            Ok(out)
        })
    }

    /// A put inside the transaction; returns the version it replaces (decrypted).
    async fn put(&mut self, p: &pb::PutRequest) -> Result<Option<RawKv>, Status> {
        let old = self.current(&p.key)?;
        if (p.ignore_value || p.ignore_lease) && old.is_none() {
            return Err(EtcdError::KeyNotFound.status());
        }
        let lease = if p.ignore_lease {
            old.as_ref().map_or(0, |o| o.lease)
        } else {
            p.lease
        };
        if lease != 0 && !self.writer.store().lease_check(lease).await.map_err(se)? {
            return Err(EtcdError::LeaseNotFound.status());
        }
        // The old value is opened only when it is returned or kept.
        let old_kv = match &old {
            Some(o) if p.prev_kv || p.ignore_value => Some(self.open_current(&p.key, o).await?),
            _ => None,
        };
        let value = if p.ignore_value {
            old_kv.as_ref().map(|k| k.value.clone()).unwrap_or_default()
        } else {
            Zeroizing::new(p.value.clone())
        };
        let kv = RawKv {
            key: p.key.clone(),
            create_revision: old.as_ref().map_or(self.next, |o| o.create_revision),
            mod_revision: self.next,
            version: old.as_ref().map_or(1, |o| o.version + 1),
            lease,
            value,
        };
        self.record(p.key.clone(), Some(kv));
        Ok(old_kv)
    }

    /// A delete inside the transaction; returns how many keys it deleted and their last
    /// versions (decrypted only when `prev_kv`).
    async fn delete(&mut self, d: &pb::DeleteRangeRequest) -> Result<(i64, Vec<RawKv>), Status> {
        let range = KeyRange::from_etcd(&d.key, &d.range_end);
        let versions = match &range {
            KeyRange::Single(k) => self.current(k)?.into_iter().collect(),
            _ => self.current_range(&range).await?,
        };
        let mut prev = Vec::new();
        let mut deleted = 0;
        for v in versions {
            let key = v.key.clone();
            if d.prev_kv {
                prev.push(self.open_current(&key, &v).await?);
            }
            self.record(key, None);
            deleted += 1;
        }
        Ok((deleted, prev))
    }

    /// Opens a key's current version (from the transaction's writes or the store).
    async fn open_current(&self, key: &[u8], v: &Version) -> Result<RawKv, Status> {
        if let Some(Some(kv)) = self.overlay.writes.get(key) {
            return Ok(kv.clone());
        }
        self.writer.store().open_raw(v, true).await.map_err(se)
    }

    fn record(&mut self, key: Vec<u8>, state: Option<RawKv>) {
        if !self.overlay.writes.contains_key(&key) {
            self.overlay.order.push(key.clone());
        }
        self.overlay.writes.insert(key, state);
    }

    /// The writes to commit, in order (a delete of a key the transaction created is none).
    fn into_writes(self) -> Vec<RawWrite> {
        let TxnRun {
            mut overlay,
            writer,
            ..
        } = self;
        let mut writes = Vec::with_capacity(overlay.order.len());
        for key in overlay.order {
            match overlay.writes.remove(&key) {
                Some(Some(kv)) => writes.push(RawWrite::Put {
                    key,
                    value: kv.value,
                    lease: kv.lease,
                }),
                Some(None) if writer.current(&key).ok().flatten().is_some() => {
                    writes.push(RawWrite::Delete { key });
                }
                Some(None) => {}
                None => {}
            }
        }
        writes
    }
}

fn compare_one(c: &pb::Compare, n: i64, value: &[u8]) -> bool {
    use pb::compare::TargetUnion;
    let ord = match (&c.target_union, c.target) {
        (Some(TargetUnion::Value(v)), CMP_VALUE) => value.cmp(v.as_slice()),
        (Some(TargetUnion::Version(x)), _)
        | (Some(TargetUnion::CreateRevision(x)), _)
        | (Some(TargetUnion::ModRevision(x)), _)
        | (Some(TargetUnion::Lease(x)), _) => n.cmp(x),
        (None, CMP_VALUE) => value.cmp(&[][..]),
        (None, _) => n.cmp(&0),
        (Some(TargetUnion::Value(_)), _) => n.cmp(&0),
    };
    match c.result {
        CMP_EQUAL => ord.is_eq(),
        CMP_GREATER => ord.is_gt(),
        CMP_LESS => ord.is_lt(),
        CMP_NOT_EQUAL => ord.is_ne(),
        _ => false,
    }
}

/// How many times a transaction is evaluated while other writers keep changing what it reads:
/// on a shared keyspace, other replicas; on the local one, other writers while it runs without
/// the lock (its last try takes the lock, so it never fails for this).
const SHARED_TRIES: usize = 16;

/// Whether a transaction reads a range or attaches a lease on some branch, so that it cannot
/// commit without the lock (`RawWriter::needs_lock` decides; this saves the evaluation that
/// would find out).
fn needs_lock(
    compares: &[pb::Compare],
    success: &[pb::RequestOp],
    failure: &[pb::RequestOp],
) -> bool {
    use pb::request_op::Request;
    compares.iter().any(|c| !c.range_end.is_empty())
        || success.iter().chain(failure).any(|op| match &op.request {
            Some(Request::RequestRange(r)) => !r.range_end.is_empty(),
            Some(Request::RequestPut(p)) => p.lease != 0 || p.ignore_lease,
            Some(Request::RequestDeleteRange(d)) => !d.range_end.is_empty(),
            Some(Request::RequestTxn(t)) => needs_lock(&t.compare, &t.success, &t.failure),
            None => false,
        })
}

/// How one evaluation of a transaction ended.
enum Once {
    /// Committed (or read-only and current): whether the compares held, the responses, the
    /// revision.
    Done((bool, Vec<pb::ResponseOp>, Revision)),
    /// Something it read changed before the commit; nothing was written.
    Changed,
    /// It cannot commit without the lock (see `RawWriter::needs_lock`); nothing was written.
    NeedsLock,
}

/// Whether a response holds key-values (a range read, perhaps in a nested transaction).
fn holds_kvs(r: &pb::ResponseOp) -> bool {
    use pb::response_op::Response;
    match &r.response {
        Some(Response::ResponseRange(rr)) => !rr.kvs.is_empty(),
        Some(Response::ResponseTxn(t)) => t.responses.iter().any(holds_kvs),
        _ => false,
    }
}

/// Replaces the predicted revision `from` of a transaction's own writes by the one the storage
/// gave them, in a response (and the responses of nested transactions). `written`: the keys
/// the transaction wrote, whose versions read back inside it carry the predicted revision (a
/// key another writer gave that same revision keeps it); empty for a read-only transaction,
/// whose headers alone move (to the revision its reads were checked at).
fn renumber(r: &mut pb::ResponseOp, from: Revision, to: Revision, written: &HashSet<&[u8]>) {
    use pb::response_op::Response;
    let (from_rev, to_rev) = (from, to);
    let (from, to) = (from as i64, to as i64);
    let header = |h: &mut Option<pb::ResponseHeader>| {
        if let Some(h) = h
            && h.revision == from
        {
            h.revision = to;
        }
    };
    match &mut r.response {
        Some(Response::ResponseRange(rr)) => {
            header(&mut rr.header);
            for kv in rr
                .kvs
                .iter_mut()
                .filter(|kv| written.contains(kv.key.as_slice()))
            {
                if kv.mod_revision == from {
                    kv.mod_revision = to;
                }
                if kv.create_revision == from {
                    kv.create_revision = to;
                }
            }
        }
        Some(Response::ResponsePut(p)) => header(&mut p.header),
        Some(Response::ResponseDeleteRange(d)) => header(&mut d.header),
        Some(Response::ResponseTxn(t)) => {
            header(&mut t.header);
            for r in &mut t.responses {
                renumber(r, from_rev, to_rev, written);
            }
        }
        None => {}
    }
}

impl Door {
    /// Runs `ops` as one transaction (compares first when given); returns whether the compares
    /// held, the responses, and the revision of the transaction.
    async fn transact(
        &self,
        compares: &[pb::Compare],
        success: &[pb::RequestOp],
        failure: &[pb::RequestOp],
    ) -> Result<(bool, Vec<pb::ResponseOp>, Revision), Status> {
        // Without the lock first, so that concurrent transactions share the group commit; with
        // it when that cannot commit, and for the last try.
        let mut locked = needs_lock(compares, success, failure);
        for attempt in 1..=SHARED_TRIES {
            let lock = locked || attempt == SHARED_TRIES;
            match self.transact_once(compares, success, failure, lock).await? {
                Once::Done(done) => return Ok(done),
                Once::Changed => {}
                Once::NeedsLock => locked = true,
            }
        }
        Err(Status::unavailable(format!(
            "etcdserver: the transaction's keys changed on every one of {SHARED_TRIES} tries \
             (other replicas write them); retry"
        )))
    }

    /// One evaluation of a transaction, with the store's sequencing lock (`lock`) or without.
    async fn transact_once(
        &self,
        compares: &[pb::Compare],
        success: &[pb::RequestOp],
        failure: &[pb::RequestOp],
        lock: bool,
    ) -> Result<Once, Status> {
        self.store.raw_barrier().await.map_err(se)?;
        let writer = if lock {
            self.store.raw_writer().await
        } else {
            self.store.raw_writer_optimistic().await
        };
        let next = writer.revision() + 1;
        let mut run = TxnRun {
            writer: &writer,
            door: self,
            next,
            overlay: Overlay::default(),
            decisions: Vec::new().into_iter(),
        };
        let mut decisions = Vec::new();
        run.decide(compares, success, failure, &mut decisions)
            .await?;
        run.decisions = decisions.into_iter();
        let succeeded = run.decisions.next().unwrap_or(false);
        let branch = if succeeded { success } else { failure };
        let mut responses = run.execute(branch).await?;
        let writes = run.into_writes();
        if writer.needs_lock(&writes) {
            return Ok(Once::NeedsLock);
        }
        let wrote = !writes.is_empty();
        let at_commit = writer.revision_at_commit();
        // Kept only when a read inside the transaction may have seen its own writes.
        let written_keys: Vec<Vec<u8>> = if at_commit && responses.iter().any(holds_kvs) {
            writes.iter().map(|w| w.key().to_vec()).collect()
        } else {
            Vec::new()
        };
        let revision = match writer.commit(writes, Vec::new()).await {
            Ok((revision, _)) => revision,
            Err(e) if lost_race(&e) => return Ok(Once::Changed),
            Err(e) => return Err(se(e)),
        };
        let predicted = if wrote { next } else { next - 1 };
        if revision != predicted {
            if !at_commit {
                return Err(Status::internal(format!(
                    "transaction committed at revision {revision}, expected {predicted}"
                )));
            }
            // The storage chose the revision (other writers commit too): what the responses
            // said of the transaction's own writes, or of its reads, names it.
            let written = written_keys.iter().map(Vec::as_slice).collect();
            for r in &mut responses {
                renumber(r, predicted, revision, &written);
            }
        }
        Ok(Once::Done((succeeded, responses, revision)))
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for Door {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let (call, r) = self.admit(request, "etcd.Range")?;
        let result = async {
            check_range(&r)?;
            let (result, revision) = self.read_range(&r).await?;
            Ok(pb::RangeResponse {
                header: Some(self.header(revision)),
                kvs: result.kvs.into_iter().map(to_pb).collect(),
                more: result.more,
                count: result.count,
            })
        }
        .await;
        self.finish(&call, result, |r| {
            r.header.as_ref().map_or(0, |h| h.revision)
        })
    }

    async fn range_stream(
        &self,
        _request: Request<pb::RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        // etcd 3.7's streaming range; kube-apiserver falls back to Range on Unimplemented.
        Err(Status::unimplemented(
            "RangeStream is not served by Coffer's etcd door",
        ))
    }

    type RangeStreamStream = futures::stream::Empty<Result<pb::RangeStreamResponse, Status>>;

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        self.check_size(&request)?;
        let (call, r) = self.admit(request, "etcd.Put")?;
        let result = async {
            check_put(&r)?;
            let op = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(r)),
            };
            let (_, mut responses, revision) =
                self.transact(&[], std::slice::from_ref(&op), &[]).await?;
            match responses.pop().and_then(|r| r.response) {
                Some(pb::response_op::Response::ResponsePut(mut p)) => {
                    p.header = Some(self.header(revision));
                    Ok(p)
                }
                _ => Err(Status::internal("put produced no response")),
            }
        }
        .await;
        self.finish(&call, result, |r| {
            r.header.as_ref().map_or(0, |h| h.revision)
        })
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let (call, r) = self.admit(request, "etcd.DeleteRange")?;
        let result = async {
            check_delete(&r)?;
            let op = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(r)),
            };
            let (_, mut responses, revision) =
                self.transact(&[], std::slice::from_ref(&op), &[]).await?;
            match responses.pop().and_then(|r| r.response) {
                Some(pb::response_op::Response::ResponseDeleteRange(mut d)) => {
                    d.header = Some(self.header(revision));
                    Ok(d)
                }
                _ => Err(Status::internal("delete produced no response")),
            }
        }
        .await;
        self.finish(&call, result, |r| {
            r.header.as_ref().map_or(0, |h| h.revision)
        })
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        self.check_size(&request)?;
        let (call, r) = self.admit(request, "etcd.Txn")?;
        let result = async {
            check_txn(&r, self.options.max_txn_ops)?;
            let (succeeded, responses, revision) =
                self.transact(&r.compare, &r.success, &r.failure).await?;
            Ok(pb::TxnResponse {
                header: Some(self.header(revision)),
                succeeded,
                responses,
            })
        }
        .await;
        self.finish(&call, result, |r| {
            r.header.as_ref().map_or(0, |h| h.revision)
        })
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let (call, r) = self.admit(request, "etcd.Compact")?;
        let result = async {
            // On a shared keyspace: a revision another replica just gave out is not future.
            let current = self.store.raw_barrier().await.map_err(se)?;
            let rev = r.revision;
            if rev > current as i64 {
                return Err(EtcdError::FutureRev.status());
            }
            if rev <= self.store.compact_revision() as i64 {
                return Err(EtcdError::Compacted.status());
            }
            self.store.compact(rev as u64).await.map_err(se)?;
            Ok(pb::CompactionResponse {
                header: Some(self.header(self.store.revision())),
            })
        }
        .await;
        self.finish(&call, result, |r| {
            r.header.as_ref().map_or(0, |h| h.revision)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::response_op::Response;

    fn kv(key: &str, create: i64, modified: i64) -> mvccpb::KeyValue {
        mvccpb::KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision: create,
            mod_revision: modified,
            version: 1,
            ..Default::default()
        }
    }

    fn range(kvs: Vec<mvccpb::KeyValue>, revision: i64) -> pb::ResponseOp {
        pb::ResponseOp {
            response: Some(Response::ResponseRange(pb::RangeResponse {
                header: Some(pb::ResponseHeader {
                    revision,
                    ..Default::default()
                }),
                count: kvs.len() as i64,
                kvs,
                more: false,
            })),
        }
    }

    fn kvs(r: &pb::ResponseOp) -> Vec<(String, i64, i64)> {
        match &r.response {
            Some(Response::ResponseRange(rr)) => rr
                .kvs
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        kv.create_revision,
                        kv.mod_revision,
                    )
                })
                .collect(),
            Some(Response::ResponseTxn(t)) => t.responses.iter().flat_map(kvs).collect(),
            _ => Vec::new(),
        }
    }

    /// A transaction predicted revision 8 and committed at 10: its own write read back moves
    /// to 10; a key another writer (a replica on the same etcd) gave revision 8 keeps it.
    #[test]
    fn only_the_transactions_own_writes_are_renumbered() {
        let nested = pb::ResponseOp {
            response: Some(Response::ResponseTxn(pb::TxnResponse {
                header: Some(pb::ResponseHeader {
                    revision: 8,
                    ..Default::default()
                }),
                succeeded: true,
                responses: vec![range(vec![kv("/mine", 8, 8), kv("/theirs", 8, 8)], 8)],
            })),
        };
        let mut responses = vec![
            range(vec![kv("/mine", 8, 8), kv("/theirs", 3, 8)], 8),
            nested,
        ];
        assert!(responses.iter().all(holds_kvs));
        let written = HashSet::from([&b"/mine"[..]]);
        for r in &mut responses {
            renumber(r, 8, 10, &written);
        }
        assert_eq!(
            kvs(&responses[0]),
            [("/mine".into(), 10, 10), ("/theirs".into(), 3, 8)]
        );
        assert_eq!(
            kvs(&responses[1]),
            [("/mine".into(), 10, 10), ("/theirs".into(), 8, 8)]
        );
        let Some(Response::ResponseTxn(t)) = &responses[1].response else {
            panic!("a txn response")
        };
        assert_eq!(t.header.as_ref().map(|h| h.revision), Some(10));

        // Read-only: headers move, no kv does.
        let mut read = range(vec![kv("/mine", 9, 9)], 9);
        renumber(&mut read, 9, 12, &HashSet::new());
        assert_eq!(kvs(&read), [("/mine".into(), 9, 9)]);
        let Some(Response::ResponseRange(rr)) = &read.response else {
            panic!("a range response")
        };
        assert_eq!(rr.header.as_ref().map(|h| h.revision), Some(12));
    }
}
