//! Compiles the Kubernetes KMS v2 plugin API with the vendored protoc, so a fresh machine needs
//! only cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let proto = std::path::PathBuf::from("../../proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The client Coffer dials and the server its plugins serve, both through the wiping codec
    // (src/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::WipingCodec")
        .file_descriptor_set_path(out.join("kms_v2_descriptor.bin"))
        .compile_with_config(
            config,
            &[proto.join("kms/v2/api.proto")],
            &[proto.clone(), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed=../../proto/kms");
    Ok(())
}
