//! The integrity of a store on etcd (issue 17): its state digest and `coffer verify --storage`.
//!
//! Anyone with etcd access can write the store's keys. Two checks notice it:
//!
//! - Every Secret's record is sealed for the etcd `version` it is stored at (and, from the
//!   second version on, the key's `create_revision`; see `coffer_core::store::shared_secret_aad`):
//!   an older ciphertext put back with `etcdctl put` lands at a newer version and no longer
//!   opens. Replicas answer DATA_LOSS for it; this verifier reports it.
//! - The state digest, kept in 64 shard keys `PREFIX/u/i/digest/<shard>`: the keyed set hash
//!   (`coffer_core::crypto::StateDigest`) of every versioned key not under a lease, as
//!   (key, version, SHA-256 of the stored value), each key's term in the shard its key hashes
//!   to, each shard MAC'd with its number. Every commit updates the shards of the keys it writes
//!   in its own Txn, comparing their mod_revision (a lost race is planned again), so they stay
//!   exact with several replicas writing, which rarely race on one shard. A record added,
//!   removed or put back outside Coffer makes the digest recomputed from etcd differ from the
//!   recorded one.
//!
//! Not detected: the whole keyspace put back together with its digest keys (an etcd snapshot
//! restored), and a record deleted then put back at its first version with its first
//! ciphertext (the digest notices it unless its shard's digest key was put back too).

use coffer_core::crypto::StoreId;
use coffer_core::kms::seeds::{SEED_PREFIX, STORE_ID_KEY, verify_and_unwrap_rows};
use coffer_core::kms::{Kms, SeedError};
use coffer_core::storage::integrity::{
    SHARED_DIGEST_SHARDS, SHARED_INTEGRITY_KEY, decode_shared_digest,
};

use crate::client::EtcdClient;
use crate::digest::{digest_of, snapshot};
use crate::proto::mvccpb;

/// What `coffer verify --storage` found in a store on etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The store's id.
    pub store_id: Option<StoreId>,
    /// The etcd revision everything was read at.
    pub revision: u64,
    /// The versioned keys the digest covers.
    pub records: u64,
    /// The Secrets' records checked.
    pub secrets: u64,
    /// Every mismatch, one line each (empty: the store verifies).
    pub mismatches: Vec<String>,
}

/// Verifies the store on etcd that `client` names (read-only): unwraps its integrity row
/// through `kms`, recomputes the state digest from every versioned key and compares it with
/// the digest key, checks every seed's binding to the store, and opens every Secret's record at
/// its etcd version. Fails only when nothing can be checked (etcd or the KMS unreachable, no
/// integrity row).
pub async fn verify(client: &EtcdClient, kms: &dyn Kms) -> Result<VerifyReport, SeedError> {
    let (c, prefix) = (client.clone(), client.prefix().to_owned());
    let snap = client
        .run(async move { snapshot(&c, &prefix).await })
        .await?;
    let uroot = format!("{}/u/", client.prefix()).into_bytes();
    let vroot_len = format!("{}/v/", client.prefix()).len();
    let unversioned = |kv: &mvccpb::KeyValue| kv.key.get(uroot.len()..).map(<[u8]>::to_vec);
    let Some(row) = snap
        .unversioned
        .iter()
        .find(|kv| unversioned(kv).as_deref() == Some(SHARED_INTEGRITY_KEY))
    else {
        return Err(SeedError::Corrupt {
            id: 0,
            reason: format!(
                "{}: no integrity row ({}): no Coffer with integrity has opened this store yet",
                client.prefix(),
                String::from_utf8_lossy(SHARED_INTEGRITY_KEY)
            ),
        });
    };
    let integrity = coffer_core::kms::integrity::unlock_shared_row(kms, &row.value).await?;
    let mut report = VerifyReport {
        store_id: Some(integrity.store_id),
        revision: snap.revision,
        ..VerifyReport::default()
    };
    let computed = digest_of(&integrity, &snap, vroot_len);
    report.records = computed.iter().map(|d| d.count()).sum();
    for (shard, computed) in (0..SHARED_DIGEST_SHARDS).zip(&computed) {
        match snap.digests.get(&shard) {
            None => report.mismatches.push(format!(
                "state digest shard {shard:02x}: the digest key is missing ({} records there)",
                computed.count()
            )),
            Some(kv) => {
                match decode_shared_digest(&integrity.keys, &integrity.store_id, shard, &kv.value) {
                    Err(e) => report.mismatches.push(format!("state digest: {e}")),
                    Ok(recorded) if recorded != *computed => report.mismatches.push(format!(
                        "state digest shard {shard:02x}: the records give {} ({} records) but \
                         the digest key records {} ({} records): records were put back, added \
                         or removed outside Coffer",
                        computed.short(),
                        computed.count(),
                        recorded.short(),
                        recorded.count()
                    )),
                    Ok(_) => {}
                }
            }
        }
    }
    let rows: Vec<(Vec<u8>, Vec<u8>)> = snap
        .unversioned
        .iter()
        .filter_map(|kv| {
            let key = unversioned(kv)?;
            (key.starts_with(SEED_PREFIX) || key.as_slice() == STORE_ID_KEY)
                .then(|| (key, kv.value.clone()))
        })
        .collect();
    let (seeds, seed_mismatches) = verify_and_unwrap_rows(kms, &rows, &integrity.store_id).await;
    report.mismatches.extend(seed_mismatches);
    for kv in &snap.versioned {
        let rel = kv.key.get(vroot_len..).unwrap_or_default();
        let Some(key) = rel.strip_prefix(b"s/") else {
            continue;
        };
        report.secrets += 1;
        let label = String::from_utf8_lossy(key).into_owned();
        let Some(record) = crate::mvcc::stored_record(&kv.value) else {
            report.mismatches.push(format!(
                "record {label} (etcd version {}, mod_revision {}): not a value Coffer wrote",
                kv.version, kv.mod_revision
            ));
            continue;
        };
        if let Err(why) = coffer_core::store::check_shared_record(
            &seeds,
            &label,
            kv.version.max(0) as u64,
            kv.create_revision.max(0) as u64,
            record,
        ) {
            report.mismatches.push(format!(
                "record {label} (etcd version {}, mod_revision {}): {why}",
                kv.version, kv.mod_revision
            ));
        }
    }
    Ok(report)
}
