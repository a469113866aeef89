//! Opening a data directory written before history existed.
//!
//! That layout kept one sealed record per Secret at `s/<namespace>/<name>`, with the object's
//! resource_version only inside the ciphertext. On the first open with history, each record is
//! opened (to learn its resource_version) and moved, sealed as it is, to the versioned keyspace
//! as the Secret's current version. Nothing older than the current versions exists, so the
//! compaction revision starts at the current revision. A crash part-way leaves the rest for the
//! next open: each record moves in one atomic batch.

use super::{SECRET_PREFIX, Store, StoreError};
use crate::storage::mvcc::KvMvcc;

/// Records moved per batch.
const CHUNK: usize = 256;

impl Store {
    /// Moves every record of the layout before history into `mvcc` (see the module docs).
    pub(super) async fn upgrade_from_unversioned(&self, mvcc: &KvMvcc) -> Result<(), StoreError> {
        let store = self;
        let raw = mvcc.raw();
        let mut moved = 0usize;
        loop {
            let rows = raw.scan(SECRET_PREFIX.as_bytes(), None, CHUNK)?;
            if rows.is_empty() {
                break;
            }
            for (raw_key, record) in rows {
                let Some(key) = std::str::from_utf8(&raw_key[SECRET_PREFIX.len()..])
                    .ok()
                    .map(str::to_owned)
                else {
                    return Err(StoreError::data_loss("?", "storage key is not UTF-8"));
                };
                // Unversioned records predate the etcd door: always Coffer's own form.
                let secret = store
                    .open_stored(&key, &record)
                    .await?
                    .secret
                    .ok_or_else(|| StoreError::data_loss(&key, "not a Secret"))?;
                let lsn = mvcc.import_current(
                    &raw_key,
                    raw_key.clone(),
                    secret.metadata.resource_version,
                    record,
                )?;
                mvcc.wait_durable_raw(lsn).await?;
                moved += 1;
            }
        }
        if moved > 0 {
            tracing::info!(
                secrets = moved,
                "data directory upgraded to keep history; versions before now are not kept"
            );
        }
        Ok(())
    }
}
