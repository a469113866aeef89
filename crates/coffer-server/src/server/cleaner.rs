//! The bootstrap token cleaner, as the Kubernetes `tokencleaner` controller: Secrets of type
//! `bootstrap.kubernetes.io/token` whose data `expiration` (RFC 3339) is in the past, or cannot be
//! parsed, are deleted. A token without `expiration` never expires.
//!
//! Each delete carries preconditions on the uid and the resource_version the cleaner saw, so a
//! token re-created or updated (say, its expiration extended) since the list is left alone; the
//! next round looks at it again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use coffer_core::model::timestamp::parse_rfc3339;
use coffer_core::model::validation::SECRET_TYPE_BOOTSTRAP_TOKEN;
use coffer_core::store::{ListOptions, Preconditions, Store, StoreError};

/// The data key holding a bootstrap token's expiry time.
pub const EXPIRATION_KEY: &str = "expiration";

/// What one cleaning round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Bootstrap tokens looked at.
    pub examined: usize,
    /// Tokens deleted.
    pub deleted: usize,
}

/// Runs [`clean_once`] every `interval` until `shutdown` is cancelled.
pub(crate) async fn run(store: Arc<Store>, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !store.is_leader() {
            // On etcd storage another replica, the elected one, cleans.
            continue;
        }
        match clean_once(&store, SystemTime::now()).await {
            Ok(r) if r.deleted > 0 => {
                tracing::info!(
                    deleted = r.deleted,
                    examined = r.examined,
                    "expired bootstrap tokens deleted"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "bootstrap token cleaner round failed"),
        }
    }
}

/// One round: lists every bootstrap token and deletes those expired at `now`.
pub async fn clean_once(store: &Store, now: SystemTime) -> Result<CleanReport, StoreError> {
    let mut report = CleanReport::default();
    let mut opts = ListOptions {
        field_selector: format!("type={SECRET_TYPE_BOOTSTRAP_TOKEN}"),
        limit: 500,
        ..ListOptions::default()
    };
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos()));
    loop {
        let page = store.list(&opts).await?;
        for token in &page.items {
            report.examined += 1;
            let expired = match token.data.get(EXPIRATION_KEY) {
                None => false,
                Some(v) => std::str::from_utf8(v.expose())
                    .ok()
                    .and_then(parse_rfc3339)
                    .is_none_or(|t| t < now),
            };
            if !expired {
                continue;
            }
            let m = &token.metadata;
            let pre = Preconditions {
                resource_version: m.resource_version,
                uid: Some(m.uid.clone()),
            };
            match store.delete_with(&m.namespace, &m.name, &pre).await {
                Ok(_) => {
                    report.deleted += 1;
                    tracing::info!(namespace = %m.namespace, name = %m.name, "deleted expired bootstrap token");
                }
                // Changed or gone since the list: the next round decides again.
                Err(
                    StoreError::NotFound { .. }
                    | StoreError::Conflict { .. }
                    | StoreError::UidMismatch { .. },
                ) => {}
                Err(e) => return Err(e),
            }
        }
        if page.continue_token.is_empty() {
            return Ok(report);
        }
        opts.continue_token = page.continue_token;
    }
}
