//! The election of one replica for the work only one should do (history compaction by
//! retention, the bootstrap-token cleaner): whoever creates `PREFIX/u/elect/<name>` attached
//! to its own etcd lease holds the office, for as long as it keeps the lease alive.
//!
//! A replica that dies stops its keep-alives; the lease expires after its TTL, the key goes with
//! it, and another replica takes over. A holder whose keep-alive fails steps down at once (its
//! lease may expire at etcd before it hears); the work guarded by the office is idempotent
//! (compaction to a revision, deletes with preconditions), so the short overlap that remains
//! possible does no harm.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{EtcdClient, EtcdError};
use crate::proto::etcdserverpb as pb;

/// The default lease TTL of the office.
pub const DEFAULT_ELECTION_TTL: Duration = Duration::from_secs(10);

/// Campaigns for `name` until the task is aborted; `leader` says whether this replica holds
/// the office.
pub(crate) async fn campaign(
    client: EtcdClient,
    name: &'static str,
    ttl: Duration,
    leader: watch::Sender<bool>,
) {
    let key = format!("{}/u/elect/{name}", client.prefix()).into_bytes();
    let id = replica_id();
    loop {
        if let Err(e) = hold(&client, &key, &id, ttl, &leader).await
            && *leader.borrow()
        {
            tracing::warn!(office = name, error = %e, "stepping down: the election lease was lost");
        }
        leader.send_replace(false);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One lease: keeps it alive, and tries for the office each round while not holding it.
async fn hold(
    client: &EtcdClient,
    key: &[u8],
    id: &str,
    ttl: Duration,
    leader: &watch::Sender<bool>,
) -> Result<(), EtcdError> {
    let ttl_secs = ttl.as_secs().max(1) as i64;
    let mut lease = client.lease_client();
    let granted = tokio::time::timeout(
        client.timeout(),
        lease.lease_grant(pb::LeaseGrantRequest {
            ttl: ttl_secs,
            id: 0,
        }),
    )
    .await
    .map_err(|_| EtcdError::Unavailable("lease grant: no answer in time".into()))?
    .map_err(|s| EtcdError::Unavailable(format!("lease grant: {}", s.message())))?
    .into_inner();
    let lease_id = granted.id;
    let (tx, rx) = mpsc::channel(1);
    // The first keep-alive goes before the call: etcd answers the stream's headers with its
    // first response.
    let _ = tx.send(pb::LeaseKeepAliveRequest { id: lease_id }).await;
    let mut alive = tokio::time::timeout(
        client.timeout(),
        lease.lease_keep_alive(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| EtcdError::Unavailable("lease keep-alive: no answer in time".into()))?
    .map_err(|s| EtcdError::Unavailable(format!("lease keep-alive: {}", s.message())))?
    .into_inner();
    let period = (ttl / 3).max(Duration::from_millis(100));
    tokio::time::timeout(ttl, alive.message())
        .await
        .map_err(|_| EtcdError::Unavailable("lease keep-alive: no answer in time".into()))?
        .map_err(|s| EtcdError::Unavailable(format!("lease keep-alive: {}", s.message())))?
        .ok_or_else(|| EtcdError::Unavailable("lease keep-alive stream ended".into()))?;
    loop {
        if !*leader.borrow() {
            let (k, v) = (key.to_vec(), id.as_bytes().to_vec());
            let resp = client
                .write(move |mut kv| {
                    let req = pb::TxnRequest {
                        compare: vec![pb::Compare {
                            result: pb::compare::CompareResult::Equal as i32,
                            target: pb::compare::CompareTarget::Create as i32,
                            key: k.clone(),
                            target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                            ..Default::default()
                        }],
                        success: vec![pb::RequestOp {
                            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                                key: k.clone(),
                                value: v.clone(),
                                lease: lease_id,
                                ..Default::default()
                            })),
                        }],
                        failure: Vec::new(),
                    };
                    async move { kv.txn(req).await }
                })
                .await?;
            if resp.succeeded {
                tracing::info!("this replica now runs history compaction and the token cleaner");
                leader.send_replace(true);
            }
        }
        tokio::time::sleep(period).await;
        tx.send(pb::LeaseKeepAliveRequest { id: lease_id })
            .await
            .map_err(|_| EtcdError::Unavailable("lease keep-alive stream closed".into()))?;
        let answer = tokio::time::timeout(ttl, alive.message())
            .await
            .map_err(|_| EtcdError::Unavailable("lease keep-alive: no answer in time".into()))?
            .map_err(|s| EtcdError::Unavailable(format!("lease keep-alive: {}", s.message())))?
            .ok_or_else(|| EtcdError::Unavailable("lease keep-alive stream ended".into()))?;
        if answer.ttl <= 0 {
            return Err(EtcdError::Unavailable("the election lease expired".into()));
        }
    }
}

/// A name for this replica in the office's key (for operators reading etcd).
fn replica_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("pid-{}-{nanos:08x}", std::process::id())
}
