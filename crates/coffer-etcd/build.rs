//! Generates etcd's v3 gRPC clients (KV, Watch, Lease, Maintenance) from `proto/etcd` with the
//! vendored protoc, so a fresh machine needs only cargo. Values are ciphertext here, so the
//! default prost codec is used (the door's server-side code in coffer-server wipes instead).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = std::path::PathBuf::from("../../proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(false)
        .compile_with_config(
            config,
            &[proto.join("etcd/rpc.proto")],
            &[proto.clone(), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed=../../proto/etcd");
    Ok(())
}
