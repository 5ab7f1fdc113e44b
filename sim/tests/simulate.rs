//! The simulator held to its promises, through its own command (`holdfast-sim`, each seed in a
//! process of its own, as `scripts/simulate` runs it) in the test command's debug build: one
//! seed gives one history, byte for byte; a slice of seeds breaks no checker; and each planted
//! past bug is found on a seed known to find it (`scripts/simulate --seeds N --plant BUG`
//! measures how many seeds that takes).

use std::process::Command;

/// Runs `holdfast-sim` with `args`; (succeeded, stdout).
fn simulate(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_holdfast-sim"))
        .args(args)
        .output()
        .expect("running holdfast-sim");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Operations in a run's summary line ("… · 6122 ops (6092 ok) · …").
fn ops(summary: &str) -> u64 {
    summary
        .split(" · ")
        .find_map(|part| part.strip_suffix(')')?.split_once(" ops ("))
        .and_then(|(ops, _)| ops.parse().ok())
        .unwrap_or(0)
}

#[test]
fn same_seed_same_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let history = |name: &str, seed: &str| {
        let path = dir.path().join(name);
        let (passed, out) = simulate(&[
            "--seed",
            seed,
            "--duration-s",
            "6",
            "--history",
            path.to_str().expect("utf-8 path"),
        ]);
        assert!(passed, "seed {seed} failed:\n{out}");
        assert!(ops(&out) > 500, "a run too small to prove anything:\n{out}");
        std::fs::read_to_string(&path).expect("history file")
    };
    // The three runs at once (each is a process of its own).
    let (first, again, other) = std::thread::scope(|scope| {
        let first = scope.spawn(|| history("first", "11"));
        let again = scope.spawn(|| history("again", "11"));
        let other = scope.spawn(|| history("other", "12"));
        let join = |run: std::thread::ScopedJoinHandle<'_, String>| run.join().expect("a run");
        (join(first), join(again), join(other))
    });
    if first != again {
        let line = first
            .lines()
            .zip(again.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "seed 11 ran twice gave two histories; first difference at line {line}:\n{}\n{}",
            first.lines().nth(line).unwrap_or(""),
            again.lines().nth(line).unwrap_or("")
        );
    }
    assert_ne!(other, first, "another seed, another history");
}

#[test]
fn a_slice_of_seeds_breaks_no_checker() {
    let (passed, out) = simulate(&[
        "--seeds",
        "3",
        "--first-seed",
        "100",
        "--duration-s",
        "6",
        "--jobs",
        "1",
    ]);
    assert!(passed && out.contains("0 failing seeds"), "{out}");
}

#[test]
fn finds_the_planted_stale_grant() {
    // Seed 3 is the first of seeds 1..16 to find it (5 of the 16 do).
    let (passed, out) = simulate(&["--seed", "3", "--plant", "stale-grant"]);
    assert!(!passed && out.contains("tokens increase: "), "{out}");
}

#[test]
fn finds_the_planted_leader_restore() {
    // Seed 1 is the first of seeds 1..16 to find it (10 of the 16 do).
    let (passed, out) = simulate(&["--seed", "1", "--plant", "leader-restore"]);
    // Its symptom: linearizable reads that miss acknowledged writes.
    assert!(!passed && out.contains("linearizability: "), "{out}");
}

#[test]
fn a_follower_restarted_while_a_snapshot_was_on_its_way_catches_up() {
    // Seed 2020 found it (vendor/openraft/HOLDFAST-PATCH.md): node 1 fail-stops on a failed
    // fsync right after installing a snapshot; the leader purges past it and sends a newer
    // snapshot; unpatched, the leader's replication task also restarted its old log stream and
    // read purged entries forever, so node 1 ended the run thousands of entries behind and the
    // final digest comparison failed. With the unpatched openraft this seed failed as of the
    // commit that added this test. The h2 patch (vendor/h2: reset streams on simulated time)
    // changed this seed's schedule since, and whether it still reaches that path was not
    // re-checked; `scripts/simulate --seeds N` remains the broader check.
    let (passed, out) = simulate(&["--seed", "2020"]);
    assert!(passed, "{out}");
}
