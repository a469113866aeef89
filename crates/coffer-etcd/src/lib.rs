//! Coffer's etcd storage: the versioned keyspace ([`coffer_core::storage::mvcc::Mvcc`]) on an
//! etcd cluster's own MVCC, so that several Coffer replicas share one store revision (etcd's)
//! and etcd holds only ciphertext. See `docs/scale-out.md` for the design.
//!
//! # Layout
//!
//! - [`proto`]: etcd's v3 gRPC clients, generated from `proto/etcd` with the vendored protoc.
//! - [`url`]: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` and the TLS files.
//! - [`client`]: the connection: one lazily connected channel per endpoint, fail-over between
//!   them, per-call deadlines, and the private runtime the synchronous storage traits block on.
//! - [`backend`]: [`EtcdBackend`], the unversioned keys (wrapped seeds) under `PREFIX/u/`.
//! - [`mvcc`]: [`EtcdMvcc`], the versioned keys under `PREFIX/v/`: commits as one etcd Txn with
//!   compares, reads at a revision as etcd Range, history and changes as etcd watches.
//! - `lease`: the etcd door's leases as etcd's own (grant, revoke, keep-alive, time-to-live,
//!   list), shared by every replica.
//! - `election`: one replica, elected through an etcd lease, runs the work only one should
//!   (history compaction by retention, the bootstrap-token cleaner).
//! - `barrier`: etcd's current revision for read barriers, one Range per round shared by every
//!   reader waiting.
//! - [`verify`]: the state digest kept in etcd and `coffer verify --storage` (issue 17);
//!   `digest` recomputes it from the keys at one revision.
//! - [`cache`]: the watch-fed copy of the current keys that reads at the latest revision are
//!   served from once it has caught up with etcd (a linearizable read without a Range).
//!
//! # What this crate may use
//!
//! coffer-core below it, tonic for the wire; coffer-server builds on it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backend;
mod barrier;
mod cache;
pub mod client;
mod digest;
mod election;
mod lease;
pub mod mvcc;
pub mod proto;
pub mod url;
pub mod verify;

pub use self::backend::EtcdBackend;
pub use self::client::{EtcdClient, EtcdError};
pub use self::election::DEFAULT_ELECTION_TTL;
pub use self::mvcc::EtcdMvcc;
pub use self::url::{StorageTls, StorageUrl};
