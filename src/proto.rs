//! Generated protobuf and gRPC code for the public contract (`proto/coffer/v1`).
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// `coffer.v1`: the Secret service.
pub mod v1 {
    tonic::include_proto!("coffer.v1");

    /// The encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coffer_descriptor");
}
