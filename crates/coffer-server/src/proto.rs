//! Generated protobuf and gRPC code of the public contract (`proto/coffer/v1`), and what the
//! wiping codec zeroizes in its messages.

mod wipe;
mod wipe_etcd;

/// `coffer.v1`: the Secret service.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("coffer.v1");

    /// The encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coffer_descriptor");
}

/// etcd's v3 API (`proto/etcd`, package names as etcd's, so the gRPC paths are
/// `/etcdserverpb.KV/Range` and so on), served by the etcd door.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod etcd {
    /// `mvccpb`: keys and events.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// `authpb`: users and roles (the door serves no Auth service).
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    /// `etcdserverpb`: the KV, Watch, Lease, Cluster and Maintenance services.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}
