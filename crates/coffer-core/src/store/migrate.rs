//! `coffer migrate`: rewrite every record still under a seed whose KEK (key_id) is no longer the
//! KMS's current one, so that the old KEK version can be removed from the plugin.
//!
//! The work is done in batches by [`Store::reseal_batch`] (each atomic, durable, and invisible to
//! clients: same object, same `resource_version`, no watch event). Progress is the data itself:
//! every record header names its seed, so a run after a crash skips what is done and rewrites
//! what is left. Once no record refers to a stale seed, that seed is retired (deleted from the
//! seeds table), so later starts need no `Decrypt` under the old KEK.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{Store, StoreError};
use crate::kms::KmsError;

/// Settings of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateOptions {
    /// Records per batch (each batch is one atomic, fsync'd write). Default 500.
    pub batch_size: usize,
    /// Delete stale seeds that no record uses any more. Default true.
    pub retire_seeds: bool,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            retire_seeds: true,
        }
    }
}

/// Progress after each batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrateProgress {
    /// Records under stale seeds when the run started.
    pub total: u64,
    /// Records looked at so far (all records, stale or not).
    pub scanned: u64,
    /// Records rewritten so far.
    pub rewritten: u64,
    /// Records that failed to open so far.
    pub failed: u64,
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateSummary {
    /// The KMS's current key_id.
    pub key_id: String,
    /// The seeds whose records were to be rewritten (wrapped under another key_id).
    pub stale_seeds: Vec<u32>,
    /// Every record looked at.
    pub scanned: u64,
    /// Records rewritten under the current seed.
    pub rewritten: u64,
    /// Records that could not be rewritten, as (storage key, why): at most the first 100.
    pub failed: Vec<(String, String)>,
    /// How many records could not be rewritten.
    pub failed_count: u64,
    /// Seeds deleted because no record uses them any more.
    pub retired_seeds: Vec<u32>,
    /// Records per seed after the run.
    pub records_per_seed: BTreeMap<u32, u64>,
    /// Records still under stale seeds after the run (0 when it succeeded).
    pub remaining: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl MigrateSummary {
    /// Records rewritten per second.
    pub fn records_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.rewritten as f64 / secs
        } else {
            0.0
        }
    }
}

/// Errors of a migration.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The KMS's current key_id is unknown (its `Status` failed), so stale seeds cannot be told.
    #[error("cannot migrate without the KMS's current key_id: {0}")]
    Kms(#[from] KmsError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// At most this many failures are listed in the summary.
const MAX_LISTED_FAILURES: usize = 100;

/// Migrates `store` (see the module docs), calling `progress` after each batch.
pub async fn migrate(
    store: &Store,
    options: &MigrateOptions,
    mut progress: impl FnMut(&MigrateProgress),
) -> Result<MigrateSummary, MigrateError> {
    let started = Instant::now();
    let status = store.seeds().refresh().await?;
    let stale: BTreeSet<u32> = store.seeds().stale_seed_ids();
    let before = store.records_per_seed()?;
    let total: u64 = stale.iter().filter_map(|id| before.by_seed.get(id)).sum();
    let mut p = MigrateProgress {
        total,
        ..MigrateProgress::default()
    };
    let mut failed = Vec::new();
    progress(&p);
    if total > 0 {
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let batch = store
                .reseal_batch(cursor.as_deref(), options.batch_size, &stale)
                .await?;
            p.scanned += batch.scanned as u64;
            p.rewritten += batch.rewritten as u64;
            p.failed += batch.failed.len() as u64;
            for f in batch.failed {
                tracing::warn!(key = %f.0, error = %f.1, "record not migrated");
                if failed.len() < MAX_LISTED_FAILURES {
                    failed.push(f);
                }
            }
            progress(&p);
            match batch.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    let after = store.records_per_seed()?;
    let mut retired = Vec::new();
    if options.retire_seeds {
        for id in &stale {
            if after.by_seed.get(id).copied().unwrap_or(0) == 0 {
                match store.seeds().retire(*id).await {
                    Ok(()) => retired.push(*id),
                    Err(e) => tracing::info!(seed = id, reason = %e, "seed kept"),
                }
            }
        }
    }
    let remaining = stale.iter().filter_map(|id| after.by_seed.get(id)).sum();
    Ok(MigrateSummary {
        key_id: status.key_id,
        stale_seeds: stale.into_iter().collect(),
        scanned: p.scanned,
        rewritten: p.rewritten,
        failed,
        failed_count: p.failed,
        retired_seeds: retired,
        records_per_seed: after.by_seed,
        remaining,
        elapsed: started.elapsed(),
    })
}
