//! etcd's v3 API as a client (`proto/etcd`: etcd's own files, options stripped; the package
//! names make the gRPC paths etcd's own).

/// `mvccpb`: keys and events.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
/// `authpb`: users and roles (unused, but `etcdserverpb` names it).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod authpb {
    tonic::include_proto!("authpb");
}
/// `etcdserverpb`: the KV, Watch, Lease, Cluster and Maintenance clients.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
