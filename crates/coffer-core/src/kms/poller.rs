//! Watching the KMS: the `Status` poller, on the intervals of the seed manager's
//! [`OutagePolicy`].
//!
//! The poller asks the plugin for its `Status` every [`OutagePolicy::healthy_interval`] (one
//! minute) while it answers well, and every [`OutagePolicy::failing_interval`] (10 s) after a
//! failure, as the Kubernetes API server does. A good answer records the time (the write gate of
//! [`SeedManager`] counts the grace period from it), hands a new key_id to the seed manager (the
//! next write makes a new seed under the new KEK), and unwraps seeds that could not be unwrapped
//! before (a start while the plugin was down). The outcome feeds [`SeedManager::readiness`], which
//! the server mirrors into its gRPC health status.
//!
//! [`OutagePolicy`]: super::OutagePolicy
//! [`OutagePolicy::healthy_interval`]: super::OutagePolicy::healthy_interval
//! [`OutagePolicy::failing_interval`]: super::OutagePolicy::failing_interval

use tokio_util::sync::CancellationToken;

use super::SeedManager;

/// Polls the KMS `Status` until `shutdown` is cancelled (see the module docs).
pub async fn run(seeds: &SeedManager, shutdown: CancellationToken) {
    let policy = seeds.outage_policy();
    let mut healthy = seeds.last_status_ok();
    loop {
        let interval = if healthy {
            policy.healthy_interval
        } else {
            policy.failing_interval.min(policy.healthy_interval)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match seeds.refresh().await {
            Ok(status) => {
                if !healthy {
                    tracing::info!(key_id = %status.key_id, "KMS healthy again");
                }
                healthy = true;
                seeds.unwrap_pending().await;
            }
            Err(e) => {
                if healthy {
                    tracing::warn!(error = %e, "KMS Status failed; polling every {:?}", policy.failing_interval);
                } else {
                    tracing::debug!(error = %e, "KMS Status still failing");
                }
                healthy = false;
            }
        }
    }
}
