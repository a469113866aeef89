//! The state digest of a store on etcd, recomputed from its keys at one revision (see the
//! verify module for what it covers and why).

use coffer_core::crypto::StateDigest;
use coffer_core::storage::StorageError;
use std::collections::BTreeMap;

use coffer_core::storage::integrity::{
    SHARED_DIGEST_SHARDS, StoreIntegrity, shared_digest_key_shard, shared_digest_shard,
    shared_digest_update, shared_term_applies,
};

use crate::backend::list_pinned;
use crate::client::EtcdClient;
use crate::proto::mvccpb;

/// Keys per Range page.
const PAGE: i64 = 1000;

/// The store's keys at one revision.
pub(crate) struct Snapshot {
    /// The revision every key was read at.
    pub(crate) revision: u64,
    /// `PREFIX/v/...`, as stored.
    pub(crate) versioned: Vec<mvccpb::KeyValue>,
    /// `PREFIX/u/...` (the digest shard keys included).
    pub(crate) unversioned: Vec<mvccpb::KeyValue>,
    /// The digest shard keys there are, by shard.
    pub(crate) digests: BTreeMap<u8, mvccpb::KeyValue>,
}

/// Reads every key under `PREFIX/` at one revision (pages pinned to the first page's).
pub(crate) async fn snapshot(client: &EtcdClient, prefix: &str) -> Result<Snapshot, StorageError> {
    let root = format!("{prefix}/").into_bytes();
    let vroot = format!("{prefix}/v/").into_bytes();
    let uroot = format!("{prefix}/u/").into_bytes();
    let (kvs, revision) = list_pinned(client, &root, PAGE).await?;
    let mut out = Snapshot {
        revision,
        versioned: Vec::new(),
        unversioned: Vec::new(),
        digests: BTreeMap::new(),
    };
    for kv in kvs {
        if let Some(shard) = kv
            .key
            .strip_prefix(uroot.as_slice())
            .and_then(shared_digest_key_shard)
        {
            out.digests.insert(shard, kv.clone());
        }
        if kv.key.starts_with(&vroot) {
            out.versioned.push(kv);
        } else if kv.key.starts_with(&uroot) {
            out.unversioned.push(kv);
        }
    }
    Ok(out)
}

/// The state digest's shards recomputed from `snapshot`'s versioned keys (`strip`: the length
/// of `PREFIX/v/`), indexed by shard.
pub(crate) fn digest_of(
    integrity: &StoreIntegrity,
    snapshot: &Snapshot,
    strip: usize,
) -> Vec<StateDigest> {
    let mut shards = vec![StateDigest::EMPTY; usize::from(SHARED_DIGEST_SHARDS)];
    for kv in &snapshot.versioned {
        if shared_term_applies(kv.lease) {
            let key = kv.key.get(strip..).unwrap_or_default();
            let shard = usize::from(shared_digest_shard(key));
            shared_digest_update(
                &mut shards[shard],
                &integrity.keys,
                key,
                kv.version.max(0) as u64,
                &kv.value,
                true,
            );
        }
    }
    shards
}
