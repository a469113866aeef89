//! Coffer's servers: the gRPC Secret service and everything a request passes on its way to the
//! store.
//!
//! # Layout
//!
//! - [`proto`]: generated code of the public contract (`proto/coffer/v1`).
//! - [`server`]: the tonic services (Secrets, health, reflection), error-to-status mapping, the
//!   watch hub, metrics, limits, the bootstrap token cleaner, and `coffer serve`'s run loop.
//! - [`etcd`]: the etcd v3 door (KV, Watch, Lease, Maintenance, Cluster) over the same store.
//! - [`auth`]: authentication (mTLS, bearer tokens, unix peer uids), the authorization policy,
//!   per-connection info, and the gate every Secret RPC passes.
//! - [`audit`]: the audit log (JSON lines, no Secret data, HMACs for correlated values).
//! - [`throttle`]: the token bucket and the stream cap behind both the server-wide and the
//!   per-connection limits (a leaf: `server` and `auth` both use it).
//! - [`settings`]: how every settings struct of `coffer serve` is read: flags over the
//!   `--config` file over the defaults, durations through `humantime` (a leaf).
//!
//! Inside the crate the arrows point down too: `server` -> `auth` -> `audit`; no file imports
//! a file that imports it (checked by `crates/coffer/tests/layering.rs`).
//!
//! # What this crate may use
//!
//! `coffer-core` (the store it serves) and `coffer-kms` (the KMS client it dials, the wiping
//! codec, memory hygiene). Never the binary crate above it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod auth;
pub mod etcd;
pub mod proto;
pub mod server;
pub mod settings;
pub mod throttle;
