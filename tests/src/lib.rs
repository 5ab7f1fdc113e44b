//! holdfast-tests: the multi-node test harness (real `holdfast serve` processes on 127.0.0.1)
//! and the safety checkers the cluster tests share.

pub mod checkers;
pub mod cluster;
pub mod hostile;
pub mod proxy;

/// The bytes of example policy `name` (e.g. "tenant_quota") as built by
/// `scripts/build-policies` into `$CARGO_TARGET_DIR/wasm32v1-none/release/`.
pub fn policy_wasm(name: &str) -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/root/.cache/holdfast/target"));
    let path = target
        .join("wasm32v1-none/release")
        .join(format!("holdfast_policy_{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read example policy {}: {error}; run scripts/build-policies first",
            path.display()
        )
    })
}
