//! Seeds run one after another in one process give the histories they give alone. tokio
//! numbers tasks from one process-wide counter, and a simulated host's tasks run and shut down
//! in an order that depends on their ids modulo tokio's shard count; `run` realigns the counter
//! first (`align_task_ids`). A test binary of its own: no other test spawns tasks meanwhile.

use holdfast_sim::{Config, TASK_ID_MODULUS, align_task_ids, run};

fn next_task_id() -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let task = tokio::spawn(async {});
        let id = task
            .id()
            .to_string()
            .parse()
            .expect("a task id is a number");
        let _ = task.await;
        id
    })
}

#[test]
fn a_seed_gives_its_own_history_whatever_ran_before_it_in_the_process() {
    // Whatever was spawned before, the next task id is where a fresh process's is.
    for spawned_before in [0, 1, 2, 3, 5, 64, 100] {
        for _ in 0..spawned_before {
            next_task_id();
        }
        align_task_ids();
        assert_eq!(next_task_id() % TASK_ID_MODULUS, 1);
    }
    // Seed 2003's history changed with the number of tasks spawned before it, modulo 4
    // (before the realignment). Run it alone (a process of its own, at the same time) and here
    // with the counter moved to where it gave another history: 1 past a fresh process's,
    // modulo 4.
    let alone = std::thread::spawn(|| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast-sim"))
            .args(["--seed", "2003"])
            .stderr(std::process::Stdio::null())
            .output()
            .expect("running holdfast-sim");
        String::from_utf8_lossy(&output.stdout).into_owned()
    });
    let next = next_task_id() + 1;
    for _ in 0..(4 + 2 - next % 4) % 4 {
        next_task_id();
    }
    let here = run(Config::new(2003)).history_hash();
    let alone = alone.join().expect("holdfast-sim --seed 2003");
    assert!(
        alone.contains(&format!("history {here} ")),
        "seed 2003 here gave history {here}; alone:\n{alone}"
    );
}
