//! README ("Keys"): a seed older than 30 days (the default `SeedPolicy`) starts a new seed for
//! new writes, and the records under the old one still open; one 29 days old is kept. The
//! seed's age is its stored creation time, so the test rewrites that field of the stored seed
//! record (the same protobuf fields as `kms::seeds`) and reopens the store.

use coffer_testkit::engine as common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use coffer_core::kms::seeds::SEED_PREFIX;
use coffer_core::model::Secret;
use coffer_core::storage::{Backend, Batch};
use coffer_core::store::StoreConfig;
use common::{TestKms, open_store};
use prost::Message;

/// The stored seed record's fields (`kms::seeds::StoredSeed`).
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
    /// The check value binding the seed to its store (issue 17), kept as it is.
    #[prost(bytes = "vec", tag = "5")]
    check: Vec<u8>,
}

const DAY: i64 = 24 * 3600;

/// Writes one Secret, ages its seed by `days`, reopens, writes another; returns how many seeds
/// there are then and the KMS's Encrypt count.
async fn after_aging(days: i64) -> (usize, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kms = TestKms::open(dir.path(), 1);
    {
        let (store, backend) = open_store(dir.path(), kms.clone(), StoreConfig::default()).await;
        store
            .create(Secret::new("ns", "old").with_data("k", "old-value"))
            .await
            .expect("create");
        let seeds = store.seeds().seeds();
        assert_eq!(seeds.len(), 1);
        let mut key = SEED_PREFIX.to_vec();
        key.extend_from_slice(&seeds[0].id.to_be_bytes());
        let raw = backend.get(&key).expect("get").expect("the seed record");
        let mut stored = StoredSeed::decode(raw.as_slice()).expect("a seed record");
        assert_eq!(stored.created_unix, seeds[0].created_unix);
        stored.created_unix -= days * DAY;
        let mut batch = Batch::new();
        batch.put(key, stored.encode_to_vec());
        let lsn = backend.apply(batch).expect("apply");
        backend.wait_durable(lsn).await.expect("durable");
    }
    let (store, _) = open_store(dir.path(), kms.clone(), StoreConfig::default()).await;
    store
        .create(Secret::new("ns", "new").with_data("k", "new-value"))
        .await
        .expect("create");
    // The record under the aged seed still opens.
    assert_eq!(
        store.get("ns", "old").await.expect("old").data["k"].expose(),
        b"old-value"
    );
    (
        store.seeds().seeds().len(),
        kms.encrypts.load(Ordering::SeqCst),
    )
}

#[tokio::test]
async fn a_seed_older_than_30_days_is_replaced_for_new_writes() {
    assert_eq!(after_aging(31).await, (2, 2));
}

#[tokio::test]
async fn a_seed_29_days_old_is_kept() {
    assert_eq!(after_aging(29).await, (1, 1));
}
