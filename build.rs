//! Compiles the protobuf contracts with the vendored protoc, so a fresh machine needs only cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The vendored protoc ships the well-known types (google/protobuf/timestamp.proto).
    let include = protoc_bin_vendored::include_path()?;
    // Both services use Coffer's codec: prost encoding that wipes a message's plaintext once it
    // is encoded (src/proto/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::proto::codec::WipingCodec")
        .file_descriptor_set_path(out.join("coffer_descriptor.bin"))
        .compile_with_config(
            config,
            &[std::path::PathBuf::from("proto/coffer/v1/secrets.proto")],
            &[std::path::PathBuf::from("proto"), include.clone()],
        )?;
    // The Kubernetes KMS v2 plugin API (package `v2`): the client Coffer dials and the server its
    // plugins serve. Its own descriptor set, so the Secret service's reflection does not list it.
    let mut kms_config = tonic_prost_build::Config::new();
    kms_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .codec_path("crate::proto::codec::WipingCodec")
        .file_descriptor_set_path(out.join("kms_v2_descriptor.bin"))
        .compile_with_config(
            kms_config,
            &[std::path::PathBuf::from("proto/kms/v2/api.proto")],
            &[std::path::PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
