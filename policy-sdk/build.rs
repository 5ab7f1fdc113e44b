//! Generates the ABI message types from `proto/holdfast/policy/v1/policy.proto` (shared with
//! the host). Uses the vendored protoc, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Read at run time, not with env!(): with a target directory shared between checkouts,
    // cargo reuses this build script's binary, and a compile-time path would point at
    // whichever checkout built it first.
    let proto_root =
        std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let file = proto_root.join("holdfast/policy/v1/policy.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.compile_protos(&[file], &[proto_root])?;
    Ok(())
}
