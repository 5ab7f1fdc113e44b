//! The fault-injection smoke run: a 3-node cluster, 12 clients (half their locks under wasm
//! policies that are redeployed and rebound meanwhile), a fault every 1.5–4 s for 100 s
//! (kills, pauses, partitions, clock jumps, a full disk…), then a quiet phase; every checker
//! must report 0 violations, replica digests included. `scripts/torture` runs the long version.

use std::time::Duration;

use holdfast_tests::torture::{self, Config};

/// The smoke run's fault phase.
const SMOKE_FAULT_SECS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smoke_run_finds_no_violation() {
    let seed = std::env::var("HOLDFAST_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    eprintln!("torture smoke: seed {seed} (rerun with HOLDFAST_TORTURE_SEED={seed})");
    let report = torture::run(Config::new(seed, Duration::from_secs(SMOKE_FAULT_SECS))).await;
    eprintln!("{report}");
    assert_eq!(
        report.violation_count(),
        0,
        "violations (seed {seed}):\n{report}"
    );
    let ops = report.history.ops.len();
    assert!(ops >= 5_000, "only {ops} operations (seed {seed})");
    // Policies were in force and changed during the faults, and replicas were compared.
    let changes = &report.history.policy_changes;
    let accepted = changes.iter().filter(|change| change.accepted).count();
    assert!(
        accepted >= 3,
        "only {accepted} policy changes took: {changes:?}"
    );
    let compared = holdfast_tests::checkers::digests::compared(&report.history);
    assert!(
        compared >= 3,
        "only {compared} checkpoints compared (seed {seed})"
    );
    let faults = report.history.faults.len();
    let kinds = report.fault_kinds().len();
    assert!(
        faults >= 20 && kinds >= 4,
        "only {faults} faults of {kinds} kinds (seed {seed})"
    );
}
