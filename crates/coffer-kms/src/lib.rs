//! Coffer's KMS v2 wire: what a KMS plugin and Coffer's KMS client share, without the server.
//!
//! # Layout
//!
//! - [`proto`]: generated code of the Kubernetes KMS v2 plugin API (`proto/kms/v2`, package
//!   `v2`), wire-compatible with the API server's.
//! - [`grpc`]: [`GrpcKms`], the KMS v2 client over a unix socket (`--kms unix:///path`): a
//!   `coffer_core::kms::Kms`.
//! - [`plugin`]: the KMS v2 gRPC server over any `Kms`, which Coffer's plugins (`kms-plugins/`)
//!   and the tests' fake plugins serve.
//! - [`config`]: [`KmsConfig`], which KMS a data directory uses, shared by `coffer serve`,
//!   `coffer kms status` and `coffer migrate`.
//! - [`codec`]: the gRPC codec that wipes a message's plaintext once it is encoded (used by this
//!   crate's KMS v2 stubs and by the Secret service's).
//! - [`hygiene`]: core dumps off and memory locked for the processes that hold keys (`coffer
//!   serve` and both plugins); [`logging`]: the stderr log setup they share.
//! - [`net`]: the one accept loop of every Coffer server (Secret service, metrics, plugins) and
//!   the safe unix socket bind.
//! - [`code`]: the one table of gRPC code names (`INVALID_ARGUMENT`, ...).
//!
//! # What this crate may use
//!
//! `coffer-core` (the `Kms` trait it implements and serves) and the gRPC stack. Never the
//! server: a plugin links this crate and the engine, nothing above.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod code;
pub mod codec;
pub mod config;
pub mod grpc;
pub mod hygiene;
pub mod logging;
pub mod net;
pub mod plugin;

pub use self::config::{KmsConfig, KmsEndpoint};
pub use self::grpc::GrpcKms;

/// `v2`: the Kubernetes KMS v2 plugin API (`proto/kms/v2/api.proto`): the client Coffer dials
/// and the server its plugins serve.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("v2");

    /// The encoded file descriptor set (for a plugin that serves reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kms_v2_descriptor");
}
