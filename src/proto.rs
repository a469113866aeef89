//! Generated protobuf and gRPC code: the public contract (`proto/coffer/v1`) and the KMS v2
//! plugin API (`proto/kms/v2`).
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

pub mod codec;

/// `coffer.v1`: the Secret service.
pub mod v1 {
    tonic::include_proto!("coffer.v1");

    /// The encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coffer_descriptor");
}

/// `v2`: the Kubernetes KMS v2 plugin API (`proto/kms/v2/api.proto`), wire-compatible with the
/// API server's: the client Coffer dials and the server its plugins serve.
pub mod kms_v2 {
    tonic::include_proto!("v2");

    /// The encoded file descriptor set (for a plugin that serves reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kms_v2_descriptor");
}
