//! Re-encryption of records under old seeds (what `coffer migrate` drives), and per-seed record
//! counts (what `coffer kms status` shows). Records are every stored version with a value: the
//! current ones and the history kept until compaction, so that a retired KEK is not needed to
//! read an old version either.
//!
//! A reseal rewrites a record's envelope only: the same plaintext bytes, sealed under the
//! current seed for the same storage key. The object, its `resource_version` and the store
//! revision do not change, so no watch event is published and no client sees a change. Each
//! batch runs under the sequencing lock (no write interleaves between the check that a record is
//! still under an old seed and its rewrite), is applied atomically, and is durable before the
//! call returns; a crash loses at most the batch in flight, and running again picks up where the
//! last durable batch ended, because the record headers themselves say what is left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use super::{SECRET_PREFIX, Store, StoreError};
use crate::crypto::{self, RecordHeader};

/// Rows read per scan round when counting.
const COUNT_CHUNK: usize = 1024;

/// How many records each seed protects, from the record headers (nothing is decrypted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Records per seed id.
    pub by_seed: BTreeMap<u32, u64>,
    /// Records whose header cannot be parsed (damaged, or of an unknown format version).
    pub unreadable: u64,
    /// Every record.
    pub total: u64,
}

/// The outcome of one [`Store::reseal_batch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResealBatch {
    /// Records looked at.
    pub scanned: usize,
    /// Records rewritten under the current seed.
    pub rewritten: usize,
    /// Records that could not be rewritten, as (storage key `namespace/name` with the
    /// revision, why); never any content.
    pub failed: Vec<(String, String)>,
    /// The position to continue after, or `None` when the scan reached the end.
    pub next: Option<Vec<u8>>,
}

impl Store {
    /// Counts the records per seed by reading their headers.
    pub fn records_per_seed(&self) -> Result<RecordCounts, StoreError> {
        let mut counts = RecordCounts::default();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let rows = self.mvcc.stored_values(cursor.as_deref(), COUNT_CHUNK)?;
            let done = rows.len() < COUNT_CHUNK;
            for r in &rows {
                counts.total += 1;
                match RecordHeader::parse(&r.version.value) {
                    Ok(h) => *counts.by_seed.entry(h.seed_id).or_default() += 1,
                    Err(_) => counts.unreadable += 1,
                }
            }
            cursor = rows.into_iter().next_back().map(|r| r.position);
            if done || cursor.is_none() {
                return Ok(counts);
            }
        }
    }

    /// Rewrites, under the seed new writes use, every record among the next `limit` records
    /// after position `after` (from the start when `None`) whose seed is in `stale`.
    /// A record that fails to open is reported in [`ResealBatch::failed`] and left as it is.
    pub async fn reseal_batch(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        stale: &BTreeSet<u32>,
    ) -> Result<ResealBatch, StoreError> {
        let limit = limit.max(1);
        let rows = self.mvcc.stored_values(after, limit)?;
        let mut out = ResealBatch {
            scanned: rows.len(),
            ..ResealBatch::default()
        };
        if rows.len() == limit {
            out.next = rows.last().map(|r| r.position.clone());
        }
        let candidates: Vec<_> = rows
            .into_iter()
            .filter(|r| {
                RecordHeader::parse(&r.version.value).is_ok_and(|h| stale.contains(&h.seed_id))
            })
            .collect();
        if candidates.is_empty() {
            return Ok(out);
        }
        let (seed_id, seed) = self.seeds.for_write().await?;
        if stale.contains(&seed_id) {
            return Err(StoreError::Unavailable(format!(
                "the seed for new writes ({seed_id}) is itself under an old key_id; check the KMS status"
            )));
        }
        let mut replacements = Vec::new();
        // Record lengths change when the AEAD (and so the nonce size) does: the namespaces'
        // stored bytes follow (current versions only: history does not count), once applied.
        let mut resized: Vec<(String, u64, u64)> = Vec::new();
        let lsn = {
            let _seq = self.sequencer.lock().await;
            for stored in candidates {
                // A Secret's record is sealed for `namespace/name`, a door key's for `\0e/<key>`.
                let bkey = &stored.version.key;
                let (key, aad) = if bkey.starts_with(super::RAW_PREFIX) {
                    (None, super::raw::raw_aad(bkey))
                } else if let Some(k) = std::str::from_utf8(bkey)
                    .ok()
                    .and_then(|k| k.strip_prefix(SECRET_PREFIX))
                {
                    (Some(k.to_owned()), k.as_bytes().to_vec())
                } else {
                    out.failed.push((
                        String::from_utf8_lossy(bkey).into_owned(),
                        "storage key is not a Secret's".into(),
                    ));
                    continue;
                };
                let label = format!(
                    "{}@{}",
                    key.clone()
                        .unwrap_or_else(|| String::from_utf8_lossy(bkey).into_owned()),
                    stored.version.mod_revision
                );
                let Ok(header) = RecordHeader::parse(&stored.version.value) else {
                    continue;
                };
                let old_seed = match self.seeds.seed_for_read(header.seed_id).await {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        out.failed
                            .push((label, format!("its seed {} is missing", header.seed_id)));
                        continue;
                    }
                    Err(e) => {
                        out.failed.push((label, e.to_string()));
                        continue;
                    }
                };
                let plaintext = match header.open(&old_seed, &aad) {
                    Ok(p) => p,
                    Err(e) => {
                        out.failed.push((label, e.to_string()));
                        continue;
                    }
                };
                let sealed = crypto::seal(self.algorithm, seed_id, &seed, &aad, plaintext.expose());
                if stored.current
                    && let Some(key) = &key
                {
                    resized.push((
                        super::quota::namespace_of(key).to_owned(),
                        stored.version.value.len() as u64,
                        sealed.len() as u64,
                    ));
                }
                replacements.push((stored, sealed));
            }
            if replacements.is_empty() {
                return Ok(out);
            }
            // Each is replaced only if it still holds what was read (a write or compaction may
            // have moved on since the scan).
            let (n, lsn) = self.mvcc.replace_values(replacements)?;
            out.rewritten = n;
            let mut quota = self.quota_state();
            if quota.enabled() {
                for (ns, old, new) in resized {
                    let mut u = quota.usage(&ns);
                    u.bytes = u.bytes.saturating_sub(old).saturating_add(new);
                    quota.set(&ns, u);
                }
            }
            lsn
        };
        self.mvcc.wait_durable(lsn).await?;
        self.seals
            .fetch_add(out.rewritten as u64, Ordering::Relaxed);
        Ok(out)
    }
}
