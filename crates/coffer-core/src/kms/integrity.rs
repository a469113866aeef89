//! The integrity seed of a sled data directory: unwrapped through the KMS before the backend
//! opens (its keys authenticate the log the backend replays), or made for a new data directory
//! or one from before integrity.
//!
//! The seed is wrapped like any other seed (one KMS `Encrypt`), kept in the checkpoint record
//! with the store id and a check value bound to both (seed id 0), and checked after every
//! `Decrypt` and once right after it is made, so that a checkpoint record moved in from another
//! store sharing the KMS, or a KMS that answers with the wrong bytes, is refused.

use std::path::Path;
use std::sync::Arc;

use super::seeds::verify_roundtrip;
use super::{Kms, SeedError, Wrapped};
use crate::crypto::integrity::{seed_check, seed_check_ok};
use crate::crypto::{IntegrityKeys, Seed, StoreId};
use crate::storage::integrity::{StoreIntegrity, WrappedIntegritySeed};

/// The seed id the integrity seed's check value names (data seeds start at 1).
pub const INTEGRITY_SEED_ID: u32 = 0;

/// Unwraps the integrity seed of the sled data directory `db_dir` (its checkpoint record holds
/// it), or makes a new one when the directory has none yet (new, or from before integrity: the
/// backend then adopts it on open).
pub async fn unlock_or_create(
    db_dir: &Path,
    kms: &dyn Kms,
) -> Result<Arc<StoreIntegrity>, SeedError> {
    match crate::storage::integrity_seed(db_dir)? {
        Some((store_id, wrapped)) => unlock(kms, store_id, wrapped).await.map(Arc::new),
        None => create(kms).await.map(Arc::new),
    }
}

fn as_wrapped(w: &WrappedIntegritySeed) -> Wrapped {
    Wrapped {
        ciphertext: w.ciphertext.clone(),
        key_id: w.key_id.clone(),
        annotations: w.annotations.clone(),
    }
}

/// Unwraps and checks an integrity seed.
pub async fn unlock(
    kms: &dyn Kms,
    store_id: StoreId,
    wrapped: WrappedIntegritySeed,
) -> Result<StoreIntegrity, SeedError> {
    let bytes = kms
        .decrypt(&uuid::Uuid::new_v4().to_string(), &as_wrapped(&wrapped))
        .await?;
    let seed = Seed::from_slice(&bytes).ok_or_else(|| SeedError::Corrupt {
        id: INTEGRITY_SEED_ID,
        reason: format!(
            "the KMS unwrapped the integrity seed to {} bytes, expected 32",
            bytes.len()
        ),
    })?;
    if !seed_check_ok(&seed, &store_id, INTEGRITY_SEED_ID, &wrapped.check) {
        return Err(SeedError::Corrupt {
            id: INTEGRITY_SEED_ID,
            reason: format!(
                "the integrity seed in the checkpoint record does not belong to store \
                 {store_id} (its check value does not match): the record was copied from \
                 another store or replaced"
            ),
        });
    }
    let wrapped = rewrap_if_stale(kms, &seed, wrapped).await?;
    Ok(StoreIntegrity {
        store_id,
        keys: IntegrityKeys::derive(&seed),
        wrapped,
    })
}

/// After a KEK rotation, wraps the integrity seed again under the KMS's current key_id (one
/// `Encrypt`, checked by a `Decrypt`), so that the old KEK version can be removed once `coffer
/// migrate` has moved the records: the checkpoint record written at open then holds the new
/// wrapping. A KMS whose `Status` fails keeps the old wrapping (the next start tries again).
async fn rewrap_if_stale(
    kms: &dyn Kms,
    seed: &Seed,
    wrapped: WrappedIntegritySeed,
) -> Result<WrappedIntegritySeed, SeedError> {
    let current = match kms.status().await.and_then(|s| s.check().map(|()| s)) {
        Ok(status) => status.key_id,
        Err(e) => {
            tracing::warn!(error = %e, "KMS status unknown at start; the integrity seed keeps its wrapping");
            return Ok(wrapped);
        }
    };
    if current == wrapped.key_id {
        return Ok(wrapped);
    }
    let fresh = kms
        .encrypt(&uuid::Uuid::new_v4().to_string(), seed.expose())
        .await?;
    fresh.check()?;
    verify_roundtrip(kms, seed, &fresh).await?;
    tracing::info!(from = %wrapped.key_id, to = %fresh.key_id, "integrity seed wrapped under the current KEK");
    Ok(WrappedIntegritySeed {
        ciphertext: fresh.ciphertext,
        key_id: fresh.key_id,
        annotations: fresh.annotations,
        check: wrapped.check,
    })
}

/// Makes a new store id and integrity seed: one `Encrypt`, then one `Decrypt` that must give
/// the seed back before it is used.
pub async fn create(kms: &dyn Kms) -> Result<StoreIntegrity, SeedError> {
    let store_id = StoreId::generate();
    let seed = Seed::generate();
    let wrapped = kms
        .encrypt(&uuid::Uuid::new_v4().to_string(), seed.expose())
        .await?;
    wrapped.check()?;
    verify_roundtrip(kms, &seed, &wrapped).await?;
    let check = seed_check(&seed, &store_id, INTEGRITY_SEED_ID).to_vec();
    Ok(StoreIntegrity {
        store_id,
        keys: IntegrityKeys::derive(&seed),
        wrapped: WrappedIntegritySeed {
            ciphertext: wrapped.ciphertext,
            key_id: wrapped.key_id,
            annotations: wrapped.annotations,
            check,
        },
    })
}

/// The integrity material of a shared keyspace (etcd): unwraps the integrity row, or makes it
/// when there is none yet. Replicas starting together create it once
/// (`Backend::put_if_absent`); a loser unwraps the winner's. After a KEK rotation the row is
/// wrapped again under the current key (any replica may; every wrapping holds the same seed).
pub async fn unlock_or_create_shared(
    backend: &dyn crate::storage::Backend,
    kms: &dyn Kms,
) -> Result<Arc<StoreIntegrity>, SeedError> {
    use crate::storage::integrity::{
        SHARED_INTEGRITY_KEY, decode_shared_integrity, encode_shared_integrity,
    };
    for _ in 0..2 {
        if let Some(row) = backend.get(SHARED_INTEGRITY_KEY)? {
            let (store_id, wrapped) = decode_shared_integrity(&row)?;
            let before = wrapped.key_id.clone();
            let integrity = unlock(kms, store_id, wrapped).await?;
            if integrity.wrapped.key_id != before {
                let mut batch = crate::storage::Batch::new();
                batch.put(
                    SHARED_INTEGRITY_KEY,
                    encode_shared_integrity(&integrity.store_id, &integrity.wrapped),
                );
                let lsn = backend.apply(batch)?;
                backend.wait_durable(lsn).await?;
            }
            return Ok(Arc::new(integrity));
        }
        let made = create(kms).await?;
        let row = encode_shared_integrity(&made.store_id, &made.wrapped);
        if let Some(lsn) = backend.put_if_absent(SHARED_INTEGRITY_KEY, row)? {
            backend.wait_durable(lsn).await?;
            tracing::info!(store = %made.store_id, "integrity seed made for the shared keyspace");
            return Ok(Arc::new(made));
        }
        // Another replica made it first: use its row.
    }
    Err(SeedError::Corrupt {
        id: INTEGRITY_SEED_ID,
        reason: "the integrity row another replica created is gone".into(),
    })
}

/// Unwraps and checks a shared keyspace's integrity row (for `coffer verify --storage`).
pub async fn unlock_shared_row(kms: &dyn Kms, row: &[u8]) -> Result<StoreIntegrity, SeedError> {
    let (store_id, wrapped) = crate::storage::integrity::decode_shared_integrity(row)?;
    unlock(kms, store_id, wrapped).await
}

/// `coffer verify` of a sled data directory (`db_dir`, the server stopped): unwraps the
/// integrity seed, runs every storage check ([`crate::storage::verify_dir`]) and checks every
/// seed row's binding to the store. A directory that is not authenticated yet (from before
/// integrity, not started since) is an error that says so.
pub async fn verify_data_dir(
    db_dir: &Path,
    kms: &dyn Kms,
    anchor: Option<&Path>,
) -> Result<crate::storage::VerifyReport, SeedError> {
    let Some((store_id, wrapped)) = crate::storage::integrity_seed(db_dir)? else {
        return Err(SeedError::Corrupt {
            id: INTEGRITY_SEED_ID,
            reason: format!(
                "{} has no authenticated checkpoint record: it is new, from before integrity \
                 (start `coffer serve` on it once to adopt it), or its record was removed",
                db_dir.display()
            ),
        });
    };
    let integrity = unlock(kms, store_id, wrapped).await?;
    let (mut report, rows) = crate::storage::verify_dir(db_dir, &integrity, anchor)?;
    report
        .mismatches
        .extend(super::seeds::verify_rows(kms, &rows, &store_id).await);
    Ok(report)
}
