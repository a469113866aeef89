//! Lease: Grant, Revoke, KeepAlive, TimeToLive, Leases; and the task that revokes expired
//! leases (deleting their keys, with delete events, in one revision each). On etcd storage the
//! leases are etcd's own (shared by every replica, expired by etcd: the task finds none).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::Door;
use crate::proto::etcd::etcdserverpb as pb;
use crate::server::status::etcd_store_error;
use coffer_core::store::Store;
use coffer_core::store::StoreError;
use coffer_core::store::lease::LeaseError;

/// The longest the expiry task sleeps between checks.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// Revokes leases as their deadlines pass, until shutdown.
pub async fn expire_leases(store: Arc<Store>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for id in store.expired_leases() {
            match store.lease_revoke(id).await {
                Ok(_) | Err(StoreError::Lease(LeaseError::NotFound)) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "cannot revoke expired lease"),
            }
        }
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for Door {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let (call, r) = self.admit(request, "etcd.LeaseGrant")?;
        let result = async {
            let (id, ttl) = self
                .store
                .lease_grant(r.id, r.ttl)
                .await
                .map_err(|e| etcd_store_error(&e))?;
            Ok(pb::LeaseGrantResponse {
                header: Some(self.header(self.store.revision())),
                id,
                ttl,
                error: String::new(),
            })
        }
        .await;
        self.finish(&call, result, |r| {
            r.header.as_ref().map_or(0, |h| h.revision)
        })
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let (call, r) = self.admit(request, "etcd.LeaseRevoke")?;
        let result = async {
            let revision = self
                .store
                .lease_revoke(r.id)
                .await
                .map_err(|e| etcd_store_error(&e))?;
            Ok(pb::LeaseRevokeResponse {
                header: Some(self.header(revision)),
            })
        }
        .await;
        self.finish(&call, result, |r| {
            r.header.as_ref().map_or(0, |h| h.revision)
        })
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (call, mut inbound) = self.admit(request, "etcd.LeaseKeepAlive")?;
        let (tx, rx) = mpsc::channel(16);
        let door = self.clone();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    _ = door.shutdown.cancelled() => return,
                    m = inbound.message() => match m {
                        Ok(Some(r)) => r,
                        _ => return,
                    },
                };
                let reply = match door.store.lease_keep_alive(req.id).await {
                    // An unknown lease is answered with TTL 0, as etcd does.
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(door.header(door.store.revision())),
                        id: req.id,
                        ttl: ttl.unwrap_or(0),
                    }),
                    Err(e) => Err(etcd_store_error(&e)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        self.finish(&call, Ok(ReceiverStream::new(rx)), |_| 0)
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let (call, r) = self.admit(request, "etcd.LeaseTimeToLive")?;
        let result = async {
            let info = self
                .store
                .lease_time_to_live(r.id, r.keys)
                .await
                .map_err(|e| etcd_store_error(&e))?;
            let header = Some(self.header(self.store.revision()));
            // An unknown lease: TTL -1, as etcd answers.
            Ok(match info {
                Some(info) => pb::LeaseTimeToLiveResponse {
                    header,
                    id: r.id,
                    ttl: info.remaining,
                    granted_ttl: info.granted,
                    keys: if r.keys { info.keys } else { Vec::new() },
                },
                None => pb::LeaseTimeToLiveResponse {
                    header,
                    id: r.id,
                    ttl: -1,
                    granted_ttl: 0,
                    keys: Vec::new(),
                },
            })
        }
        .await;
        self.finish(&call, result, |r| {
            r.header.as_ref().map_or(0, |h| h.revision)
        })
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let (call, _) = self.admit(request, "etcd.LeaseLeases")?;
        let result = async {
            let ids = self
                .store
                .lease_list()
                .await
                .map_err(|e| etcd_store_error(&e))?;
            Ok(pb::LeaseLeasesResponse {
                header: Some(self.header(self.store.revision())),
                leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
            })
        }
        .await;
        self.finish(&call, result, |r| {
            r.header.as_ref().map_or(0, |h| h.revision)
        })
    }
}
