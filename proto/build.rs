//! Generates the avlm.v1 types and the file descriptor set used by gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("avlm_descriptor.bin"))
        .codec_path("crate::codec::AvlmCodec")
        .compile_protos(&["avlm.proto"], &["."])?;
    println!("cargo:rerun-if-changed=avlm.proto");
    Ok(())
}
