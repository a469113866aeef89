//! Generated protobuf and gRPC code of the public contract (`proto/coffer/v1`), and what the
//! wiping codec zeroizes in its messages.

mod wipe;

/// `coffer.v1`: the Secret service.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("coffer.v1");

    /// The encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coffer_descriptor");
}
