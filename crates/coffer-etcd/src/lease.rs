//! The etcd door's leases on etcd storage: etcd's own leases, so that every replica sees the
//! same ones (a lease granted through one replica's door, a key attached through another's,
//! kept alive through either). etcd keeps the TTLs and deletes the attached keys when a lease
//! is revoked or expires; the deletions reach every replica through its watch, and the door's
//! watchers see them as delete events. The ids are etcd's, unchanged.
//!
//! A replica's own leases (its election lease) are marked by a key `PREFIX/u/lease/<id>`
//! attached to them: the door does not list them, and refuses to revoke them (as unknown).

use std::future::Future;

use async_trait::async_trait;
use coffer_core::storage::StorageError;
use coffer_core::storage::mvcc::{LeaseService, Revision, StoredLease};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{EtcdClient, EtcdError, header_revision};
use crate::proto::etcdserverpb as pb;

/// etcd's error strings for a lease that does not exist, or already does.
const ERR_NOT_FOUND: &str = "requested lease not found";
const ERR_EXISTS: &str = "lease already exists";

/// The key marking a lease as a replica's own.
pub(crate) fn own_lease_key(prefix: &str, id: i64) -> Vec<u8> {
    format!("{prefix}/u/lease/{id:016x}").into_bytes()
}

/// etcd's leases, seen through the versioned keys under `root` (`PREFIX/v/`).
#[derive(Debug)]
pub(crate) struct EtcdLeases {
    client: EtcdClient,
    root: Vec<u8>,
}

impl EtcdLeases {
    pub(crate) fn new(client: EtcdClient, root: Vec<u8>) -> Self {
        Self { client, root }
    }

    /// The ids of the replicas' own leases.
    async fn own(&self) -> Result<std::collections::BTreeSet<i64>, StorageError> {
        let start = format!("{}/u/lease/", self.client.prefix()).into_bytes();
        let end = crate::backend::prefix_end(&start);
        let c = self.client.clone();
        let resp = self
            .client
            .run(async move {
                c.read(move |mut kv| {
                    let req = pb::RangeRequest {
                        key: start.clone(),
                        range_end: end.clone(),
                        keys_only: true,
                        ..Default::default()
                    };
                    async move { kv.range(req).await }
                })
                .await
            })
            .await
            .map_err(StorageError::from)?;
        Ok(resp.kvs.into_iter().map(|kv| kv.lease).collect())
    }

    /// Runs one lease call on the client's runtime, within the call deadline.
    async fn call<T, F>(
        &self,
        what: &'static str,
        fut: F,
    ) -> Result<Result<T, tonic::Status>, StorageError>
    where
        F: Future<Output = Result<T, tonic::Status>> + Send + 'static,
        T: Send + 'static,
    {
        let timeout = self.client.timeout();
        self.client
            .run(async move {
                match tokio::time::timeout(timeout, fut).await {
                    Ok(r) => Ok::<_, EtcdError>(r),
                    Err(_) => Err(EtcdError::Unavailable(format!("{what}: no answer in time"))),
                }
            })
            .await
            .map_err(StorageError::from)
    }
}

/// A refusal that is not one the caller maps: unavailable when etcd could not answer, else
/// etcd's message.
fn refused(what: &str, s: &tonic::Status) -> StorageError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            StorageError::Unavailable(format!("etcd {what}: {}", s.message()))
        }
        _ => StorageError::Invalid(format!("etcd refused {what}: {}", s.message())),
    }
}

#[async_trait]
impl LeaseService for EtcdLeases {
    async fn grant(&self, id: i64, ttl: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let mut lease = self.client.lease_client();
        let answer = self
            .call("lease grant", async move {
                lease
                    .lease_grant(pb::LeaseGrantRequest { ttl, id })
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        match answer {
            Ok(r) if r.error.contains(ERR_EXISTS) => Ok(None),
            Ok(r) if !r.error.is_empty() => Err(StorageError::Invalid(format!(
                "etcd refused lease grant: {}",
                r.error
            ))),
            Ok(r) => Ok(Some((r.id, r.ttl))),
            Err(s) if s.message().contains(ERR_EXISTS) => Ok(None),
            Err(s) => Err(refused("lease grant", &s)),
        }
    }

    async fn revoke(&self, id: i64) -> Result<Option<Revision>, StorageError> {
        if self.own().await?.contains(&id) {
            return Ok(None);
        }
        let mut lease = self.client.lease_client();
        let answer = self
            .call("lease revoke", async move {
                lease
                    .lease_revoke(pb::LeaseRevokeRequest { id })
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        match answer {
            Ok(r) => Ok(Some(header_revision(r.header.as_ref()))),
            Err(s) if s.message().contains(ERR_NOT_FOUND) => Ok(None),
            Err(s) => Err(refused("lease revoke", &s)),
        }
    }

    async fn keep_alive(&self, id: i64) -> Result<Option<i64>, StorageError> {
        let mut lease = self.client.lease_client();
        let answer = self
            .call("lease keep-alive", async move {
                // One request on a stream of its own: the door's client holds the long-lived
                // stream, and each of its requests is answered from etcd.
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let _ = tx.send(pb::LeaseKeepAliveRequest { id }).await;
                let mut stream = lease
                    .lease_keep_alive(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                let reply = stream.message().await?;
                drop(tx);
                reply.ok_or_else(|| tonic::Status::unavailable("keep-alive stream ended"))
            })
            .await?;
        match answer {
            Ok(r) if r.ttl <= 0 => Ok(None),
            Ok(r) => Ok(Some(r.ttl)),
            Err(s) if s.message().contains(ERR_NOT_FOUND) => Ok(None),
            Err(s) => Err(refused("lease keep-alive", &s)),
        }
    }

    async fn time_to_live(&self, id: i64, keys: bool) -> Result<Option<StoredLease>, StorageError> {
        let mut lease = self.client.lease_client();
        let answer = self
            .call("lease time-to-live", async move {
                lease
                    .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys })
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        match answer {
            Ok(r) if r.ttl < 0 => Ok(None),
            Ok(r) => Ok(Some(StoredLease {
                remaining: r.ttl,
                granted: r.granted_ttl,
                // Only the versioned keys (a replica's election key is not the door's).
                keys: r
                    .keys
                    .iter()
                    .filter_map(|k| k.strip_prefix(self.root.as_slice()).map(<[u8]>::to_vec))
                    .collect(),
            })),
            Err(s) if s.message().contains(ERR_NOT_FOUND) => Ok(None),
            Err(s) => Err(refused("lease time-to-live", &s)),
        }
    }

    async fn list(&self) -> Result<Vec<i64>, StorageError> {
        let mut lease = self.client.lease_client();
        let answer = self
            .call("lease list", async move {
                lease
                    .lease_leases(pb::LeaseLeasesRequest {})
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        match answer {
            Ok(r) => {
                let own = self.own().await?;
                let mut ids: Vec<i64> = r
                    .leases
                    .into_iter()
                    .map(|l| l.id)
                    .filter(|id| !own.contains(id))
                    .collect();
                ids.sort_unstable();
                Ok(ids)
            }
            Err(s) => Err(refused("lease list", &s)),
        }
    }
}
