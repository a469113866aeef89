//! Coffer: an encrypted-at-rest store for Kubernetes-style Secrets.
//!
//! # Layout
//!
//! - [`model`]: the Secret object, Kubernetes validation, selectors, and the plaintext encoding
//!   that the envelope seals.
//! - [`crypto`]: the AEADs, zeroizing key types, HKDF per-write keys, the sealed-record format.
//! - [`kms`]: the `Kms` trait (KMS v2 semantics), the local key-file KEK, and the seed manager
//!   that keeps KMS calls off the write path.
//! - [`storage`]: the `Backend` trait (ordered KV, atomic batches, explicit durability) and the
//!   sled backend with its group-committed write-ahead log and checkpoint record; a
//!   fault-injecting wrapper for tests (`storage::fault`).
//! - [`store`]: the engine: validate -> seal -> write with a revision -> publish a change event.
//! - [`proto`]: generated code for the public gRPC contract.
//! - [`server`]: the tonic services (Secrets, health, reflection), error-to-status mapping,
//!   watch window, metrics, the bootstrap token cleaner, and `coffer serve`.
//! - [`auth`]: authentication (mTLS, bearer tokens, unix peer uids), the authorization policy,
//!   per-connection info and limits, and the gate every Secret RPC passes.
//! - [`audit`]: the audit log (JSON lines, no Secret data, HMACs for correlated values).
//! - [`mount`]: the mount agent (Secrets as files, kept current, in the kubelet's atomic-writer
//!   layout) and environment variables from Secrets (`coffer exec`).
//! - [`hygiene`]: core dumps off and memory locked for the processes that hold keys.
//! - [`cli`]: the `coffer` binary's commands (thin: they call the library or the gRPC API).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod auth;
pub mod cli;
pub mod crypto;
pub mod hygiene;
pub mod kms;
pub mod model;
pub mod mount;
pub mod proto;
pub mod server;
pub mod storage;
pub mod store;
