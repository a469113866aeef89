//! [`EtcdBackend`]: the unversioned keys of the engine (wrapped seeds, `k/seed/<id>`) as etcd
//! keys `PREFIX/u/<key>`.
//!
//! A batch is one etcd Txn (atomic, durable once acknowledged), so [`Backend::wait_durable`]
//! has nothing to wait for; the position of a batch is the etcd revision it committed at.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use coffer_core::storage::{Backend, Batch, KeyValues, Lsn, Op, StorageError};

use crate::client::{EtcdClient, EtcdError, header_revision};
use crate::proto::etcdserverpb as pb;

/// The unversioned keys of one Coffer store on etcd.
#[derive(Debug)]
pub struct EtcdBackend {
    client: EtcdClient,
    /// `PREFIX/u/`.
    root: Vec<u8>,
    /// The newest revision a batch of this backend committed at.
    applied: AtomicU64,
}

impl EtcdBackend {
    /// The unversioned keys under `client`'s prefix.
    pub fn new(client: EtcdClient) -> Self {
        let root = format!("{}/u/", client.prefix()).into_bytes();
        Self {
            client,
            root,
            applied: AtomicU64::new(0),
        }
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.root.clone();
        k.extend_from_slice(key);
        k
    }

    fn scan_dir(
        &self,
        prefix: &[u8],
        bound: Option<&[u8]>,
        limit: usize,
        descend: bool,
    ) -> Result<KeyValues, StorageError> {
        let full_prefix = self.full(prefix);
        let (key, range_end) = match (bound, descend) {
            (None, _) => (full_prefix.clone(), prefix_end(&full_prefix)),
            (Some(after), false) => {
                let mut k = self.full(after);
                k.push(0);
                (k, prefix_end(&full_prefix))
            }
            (Some(before), true) => (full_prefix.clone(), self.full(before)),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let root_len = self.root.len();
        let client = self.client.clone();
        let kvs = self.client.block_on(async move {
            let c = client.clone();
            c.read(move |mut kv| {
                let req = pb::RangeRequest {
                    key: key.clone(),
                    range_end: range_end.clone(),
                    limit: if limit == i64::MAX { 0 } else { limit },
                    sort_order: if descend {
                        pb::range_request::SortOrder::Descend as i32
                    } else {
                        pb::range_request::SortOrder::Ascend as i32
                    },
                    sort_target: pb::range_request::SortTarget::Key as i32,
                    ..Default::default()
                };
                async move { kv.range(req).await }
            })
            .await
        })?;
        Ok(kvs
            .kvs
            .into_iter()
            .filter(|kv| kv.key.starts_with(&full_prefix))
            .map(|kv| (kv.key[root_len..].to_vec(), kv.value))
            .collect())
    }

    fn note(&self, revision: u64) {
        self.applied.fetch_max(revision, Ordering::Relaxed);
    }
}

#[async_trait]
impl Backend for EtcdBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let full = self.full(key);
        let client = self.client.clone();
        let resp = self.client.block_on(async move {
            client
                .read(move |mut kv| {
                    let req = pb::RangeRequest {
                        key: full.clone(),
                        ..Default::default()
                    };
                    async move { kv.range(req).await }
                })
                .await
        })?;
        Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
    }

    fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        self.scan_dir(prefix, start_after, limit, false)
    }

    fn scan_rev(
        &self,
        prefix: &[u8],
        start_before: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        self.scan_dir(prefix, start_before, limit, true)
    }

    fn apply(&self, batch: Batch) -> Result<Lsn, StorageError> {
        let ops: Vec<pb::RequestOp> = batch
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put(k, v) | Op::PutOver(k, v, _) => put_op(self.full(&k), v),
                Op::Delete(k) => delete_op(self.full(&k)),
            })
            .collect();
        let client = self.client.clone();
        let resp = self.client.block_on(async move {
            client
                .write(move |mut kv| {
                    let req = pb::TxnRequest {
                        compare: Vec::new(),
                        success: ops.clone(),
                        failure: Vec::new(),
                    };
                    async move { kv.txn(req).await }
                })
                .await
        })?;
        let revision = header_revision(resp.header.as_ref());
        self.note(revision);
        Ok(revision)
    }

    /// One Txn comparing the key's `create_revision` with 0: replicas racing to create the
    /// same key (a new seed) agree on one winner.
    fn put_if_absent(&self, key: &[u8], value: Vec<u8>) -> Result<Option<Lsn>, StorageError> {
        let full = self.full(key);
        let client = self.client.clone();
        let resp = self.client.block_on(async move {
            client
                .write(move |mut kv| {
                    let req = pb::TxnRequest {
                        compare: vec![pb::Compare {
                            result: pb::compare::CompareResult::Equal as i32,
                            target: pb::compare::CompareTarget::Create as i32,
                            key: full.clone(),
                            target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                            ..Default::default()
                        }],
                        success: vec![put_op(full.clone(), value.clone())],
                        failure: Vec::new(),
                    };
                    async move { kv.txn(req).await }
                })
                .await
        })?;
        let revision = header_revision(resp.header.as_ref());
        self.note(revision);
        Ok(resp.succeeded.then_some(revision))
    }

    fn applied(&self) -> Lsn {
        self.applied.load(Ordering::Relaxed)
    }

    async fn wait_durable(&self, _lsn: Lsn) -> Result<(), StorageError> {
        // An acknowledged etcd Txn is committed on a quorum of members.
        Ok(())
    }

    async fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// A put as a Txn operation.
pub(crate) fn put_op(key: Vec<u8>, value: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

/// A one-key delete as a Txn operation.
pub(crate) fn delete_op(key: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key,
                ..Default::default()
            },
        )),
    }
}

/// Every key under `root` at one revision, read in pages of `page` keys pinned to the first
/// page's revision (so the pages are one snapshot); the keys and that revision.
pub(crate) async fn list_pinned(
    client: &EtcdClient,
    root: &[u8],
    page: i64,
) -> Result<(Vec<crate::proto::mvccpb::KeyValue>, u64), EtcdError> {
    let end = prefix_end(root);
    let mut start = root.to_vec();
    let mut revision = 0i64;
    let mut out = Vec::new();
    loop {
        let (key, range_end) = (start.clone(), end.clone());
        let resp = client
            .read(move |mut kv| {
                let req = pb::RangeRequest {
                    key: key.clone(),
                    range_end: range_end.clone(),
                    limit: page,
                    revision,
                    ..Default::default()
                };
                async move { kv.range(req).await }
            })
            .await?;
        if revision == 0 {
            revision = header_revision(resp.header.as_ref()) as i64;
        }
        if let Some(last) = resp.kvs.last() {
            start = last.key.clone();
            start.push(0);
        }
        let more = resp.more;
        out.extend(resp.kvs);
        if !more {
            return Ok((out, revision as u64));
        }
    }
}

/// The end of etcd's range of keys starting with `prefix` (the prefix with its last byte that
/// is not 0xFF incremented; `\0` for all keys).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl From<EtcdError> for coffer_core::store::StoreError {
    fn from(e: EtcdError) -> Self {
        coffer_core::store::StoreError::Storage(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
