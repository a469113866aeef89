//! Compiles the Secret service's contract (`proto/coffer/v1`) with the vendored protoc, so a
//! fresh machine needs only cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let proto = std::path::PathBuf::from("../../proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The vendored protoc ships the well-known types (google/protobuf/timestamp.proto). The
    // codec wipes a message's plaintext once it is encoded (coffer-kms's codec, with this
    // crate's `Wipe` impls in src/proto/wipe.rs).
    tonic_prost_build::configure()
        .codec_path("coffer_kms::codec::WipingCodec")
        .file_descriptor_set_path(out.join("coffer_descriptor.bin"))
        .compile_with_config(
            config,
            &[proto.join("coffer/v1/secrets.proto")],
            &[proto.clone(), protoc_bin_vendored::include_path()?],
        )?;
    // The etcd v3 API the door serves (proto/etcd: etcd's own files, options stripped). The
    // clients are generated too: the differential tests drive a real etcd and the door with
    // the same calls.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .codec_path("coffer_kms::codec::WipingCodec")
        .compile_with_config(
            config,
            &[proto.join("etcd/rpc.proto")],
            &[proto.clone(), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed=../../proto/coffer");
    println!("cargo:rerun-if-changed=../../proto/etcd");
    Ok(())
}
