//! holdfast-tests: the multi-node test harness (real `holdfast serve` processes on 127.0.0.1)
//! and the safety checkers the cluster tests share.

pub mod browser;
pub mod checkers;
pub mod cluster;
pub mod history;
pub mod hostile;
pub mod proxy;
pub mod torture;

/// Where `scripts/build-policies` puts example policy `name` (e.g. "tenant_quota"):
/// `$CARGO_TARGET_DIR/wasm32v1-none/release/`.
pub fn policy_wasm_path(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/root/.cache/holdfast/target"));
    target
        .join("wasm32v1-none/release")
        .join(format!("holdfast_policy_{name}.wasm"))
}

/// The repository root, read at run time (cargo test sets CARGO_MANIFEST_DIR; a binary reused
/// from a shared target directory may have been built in another checkout).
pub fn repo_root() -> std::path::PathBuf {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
    std::path::Path::new(&manifest_dir)
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// The bytes of example policy `name`, built by `scripts/build-policies`.
pub fn policy_wasm(name: &str) -> Vec<u8> {
    let path = policy_wasm_path(name);
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read example policy {}: {error}; run scripts/build-policies first",
            path.display()
        )
    })
}
