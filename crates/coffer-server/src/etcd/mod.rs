//! The etcd v3 door: etcd's gRPC API over the same store as the Secret service, so that a
//! kube-apiserver (`--etcd-servers-overrides=/secrets#...`) keeps its Secrets in Coffer.
//!
//! # Layout
//!
//! - [`kv`]: Range, Put, DeleteRange, Txn, Compact (etcd's semantics over the store's versioned
//!   keyspace; every value sealed under the store's keys, see `coffer_core::store::raw`).
//! - `feed`: one task per server reads each published revision's changes once, decrypts the
//!   door's keys once, and routes them to the watch streams whose watches they concern.
//! - `watch`: Watch streams: many watches per stream, start revisions served from history,
//!   progress requests answered in order with the events, compaction cancels.
//! - `lease`: Grant, Revoke, KeepAlive, TimeToLive, Leases, and the expiry task.
//! - `maintenance`: Status, Alarm, HashKV, Defragment; Cluster's MemberList.
//!
//! Every call passes the same gate as the Secret service (authentication, the policy verb
//! `etcd`, rate limits, audit). Errors are etcd's own codes and messages
//! ([`crate::server::status::EtcdError`]).

mod feed;
pub mod kv;
mod lease;
mod maintenance;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::auth::Verb;
use crate::auth::gate::{Call, Gate, Target};
use crate::proto::etcd::etcdserverpb as pb;
use coffer_core::store::Store;

pub use self::feed::Feed;
pub use self::lease::expire_leases;

/// The version the door reports in Maintenance.Status: kube-apiserver turns on watch progress
/// requests (and with them consistent reads from its cache) only for etcd >= 3.5.13.
pub const REPORTED_VERSION: &str = "3.5.13";

/// Settings of the etcd door.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// The most operations in one transaction branch (etcd's `--max-txn-ops`). Default 128.
    pub max_txn_ops: usize,
    /// The largest write request (etcd's `--max-request-bytes`). Default 1.5 MiB.
    pub max_request_bytes: usize,
    /// The most bytes one Range may hold in memory (keys and values) before it is refused;
    /// a client should page with `limit`. Default 256 MiB.
    pub max_response_bytes: usize,
    /// How often a watch created with `progress_notify` hears the revision while idle
    /// (etcd's default: 10 min).
    pub progress_notify_interval: Duration,
    /// How many batches of changes a watch stream may have waiting before it reads what it
    /// missed from the store's history instead (its client reads too slowly). Default 1024.
    pub watch_inbox_batches: usize,
    /// kube-apiserver's `--etcd-prefix`: keys `<prefix>/secrets/<namespace>/<name>` are the
    /// Secrets the Secret service serves (see `coffer_core::store::raw`). Default `/registry`.
    pub prefix: String,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            max_txn_ops: 128,
            max_request_bytes: 1536 * 1024,
            max_response_bytes: 256 << 20,
            progress_notify_interval: Duration::from_secs(600),
            watch_inbox_batches: 1024,
            prefix: coffer_core::store::DEFAULT_ETCD_PREFIX.to_owned(),
        }
    }
}

/// The gRPC overhead etcd allows on top of `--max-request-bytes` before gRPC itself refuses a
/// message (etcd's `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The door's state, shared by its services.
#[derive(Debug, Clone)]
pub struct Door {
    store: Arc<Store>,
    gate: Gate,
    options: EtcdOptions,
    feed: Feed,
    /// The cluster and member id the headers carry (derived from the first listen address).
    cluster_id: u64,
    member_id: u64,
    /// The client URLs MemberList reports.
    client_urls: Vec<String>,
    shutdown: CancellationToken,
}

impl Door {
    /// A door over `store`. `client_urls` are what MemberList reports (the door's addresses).
    pub fn new(
        store: Arc<Store>,
        gate: Gate,
        options: EtcdOptions,
        client_urls: Vec<String>,
        shutdown: CancellationToken,
    ) -> Self {
        let feed = Feed::start(
            store.clone(),
            shutdown.clone(),
            options.watch_inbox_batches.max(1),
        );
        let id = fnv(client_urls.first().map_or(&b"coffer"[..], |u| u.as_bytes()));
        Self {
            store,
            gate,
            options,
            feed,
            cluster_id: id ^ 0x636f_6666_6572,
            member_id: id,
            client_urls,
            shutdown,
        }
    }

    /// The door's gRPC services (KV, Watch, Lease, Maintenance, Cluster).
    pub fn routes(&self) -> Routes {
        let limit = self.options.max_request_bytes + GRPC_OVERHEAD_BYTES;
        Routes::new(
            pb::kv_server::KvServer::new(self.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            pb::watch_server::WatchServer::new(self.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(pb::lease_server::LeaseServer::new(self.clone()))
        .add_service(pb::maintenance_server::MaintenanceServer::new(self.clone()))
        .add_service(pb::cluster_server::ClusterServer::new(self.clone()))
    }

    /// A response header at `revision`.
    fn header(&self, revision: u64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: revision as i64,
            raft_term: 1,
        }
    }

    /// Authenticates, authorizes (verb `etcd`), rate-limits and audits a call.
    fn admit<T>(&self, request: Request<T>, method: &'static str) -> Result<(Call, T), Status> {
        self.gate.admit(request, Verb::Etcd, method, |_| Target {
            namespace: String::new(),
            name: None,
            label_selector: String::new(),
            authorize: true,
        })
    }

    /// Audits the outcome and wraps it in a response.
    fn finish<T>(
        &self,
        call: &Call,
        result: Result<T, Status>,
        revision: impl FnOnce(&T) -> i64,
    ) -> Result<Response<T>, Status> {
        call.finish(result, |r| revision(r).max(0) as u64)
            .map(Response::new)
    }

    /// Refuses a write above `--etcd-max-request-bytes` with etcd's error.
    fn check_size<T: prost::Message>(&self, request: &Request<T>) -> Result<(), Status> {
        if request.get_ref().encoded_len() > self.options.max_request_bytes {
            return Err(crate::server::status::EtcdError::RequestTooLarge.status());
        }
        Ok(())
    }
}

/// FNV-1a: a stable id from the listen address (ids only need to be non-zero and stable).
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}
