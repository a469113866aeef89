//! Coffer's engine: everything that stores a Secret, and nothing that serves one.
//!
//! # Layout
//!
//! - [`model`]: the Secret object, Kubernetes validation, selectors, manifests, RFC 3339
//!   timestamps, the plaintext encoding that the envelope seals, and Kubernetes' own storage
//!   encodings of a Secret (`model::k8s`: what kube-apiserver writes through the etcd door).
//! - [`crypto`]: the AEADs, zeroizing key types, HKDF per-write keys, the sealed-record format.
//! - [`kms`]: the `Kms` trait (KMS v2 semantics), the local key-file KEK, the seed manager that
//!   keeps KMS calls off the write path, and its `Status` poller.
//! - [`storage`]: the `Backend` trait (ordered KV, atomic batches, explicit durability) and the
//!   sled backend with its group-committed write-ahead log and checkpoint record; a
//!   fault-injecting wrapper for tests (`storage::fault`, only with the `fault-injection`
//!   feature, which only the tests' crates turn on).
//! - [`store`]: the engine: validate -> seal -> write with a revision -> publish a change event;
//!   quotas, resealing and `coffer migrate`; the etcd door's keyspace (`store::raw`), where
//!   `<prefix>/secrets/<ns>/<name>` is the Secret itself.
//!
//! # What this crate may use
//!
//! The bottom layer: it names no other Coffer crate, and no gRPC, HTTP, TLS or command-line
//! crate (tonic, hyper, rustls, clap). The KMS v2 wire (`coffer-kms`), the servers
//! (`coffer-server`) and the binary (`coffer`) build on it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod crypto;
pub mod kms;
pub mod model;
pub mod storage;
pub mod store;
