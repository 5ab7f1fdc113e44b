//! Generates the gRPC code for the public API (holdfast.v1) and the internal peer protocol.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY (not `unsafe` code, but set_var is only sound single-threaded): build scripts are
    // single-threaded at this point.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("holdfast_descriptor.bin"))
        .compile_protos(
            &[
                "holdfast/v1/common.proto",
                "holdfast/v1/sessions.proto",
                "holdfast/v1/locks.proto",
                "holdfast/v1/cluster.proto",
                "holdfast/v1/watch.proto",
                "holdfast/v1/elections.proto",
                "holdfast/v1/policies.proto",
                "holdfast/internal/v1/raft.proto",
                "holdfast/policy/v1/policy.proto",
            ],
            &["."],
        )?;
    Ok(())
}
