//! Storage failures fail-stop a node without losing an acknowledged write, and a restart once
//! the disk is fixed recovers it: an fsync failure injected on the leader (exit 74), and a
//! follower restarted on a full tmpfs (rocksdb cannot open: exit 125).

use std::time::Duration;

use holdfast_tests::checkers::disk_full::{EXIT_CANNOT_START, EXIT_FAIL_STOP};
use holdfast_tests::cluster::{Cluster, ClusterOptions, can_mount_tmpfs};
use tokio::time::Instant;

/// How long a node may take to notice its storage failed and exit.
const EXIT_TIMEOUT_MS: u64 = 20_000;
const TTL_MS: u64 = 10_000;

async fn wait_exit(cluster: &mut Cluster, id: u64) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_millis(EXIT_TIMEOUT_MS);
    loop {
        if let Some(code) = cluster.exited(id) {
            return code;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} kept running on failed storage\n{}",
            cluster.logs_hint()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes `count` fresh locks through `session`; returns (name, token) of each acknowledged one.
async fn take_locks(
    session: &holdfast_client::Session,
    prefix: &str,
    count: usize,
) -> Vec<(String, u64)> {
    let mut taken = Vec::new();
    for i in 0..count {
        let name = format!("{prefix}/{i}");
        if let Ok(Some(hold)) = session
            .acquire(&name, holdfast_client::LockMode::Exclusive, 0)
            .await
        {
            taken.push((name, hold.token));
        }
    }
    taken
}

async fn assert_held(cluster: &Cluster, taken: &[(String, u64)]) {
    let client = cluster.client();
    for (name, token) in taken {
        let lock = client.describe(name).await.expect("describe").lock;
        let tokens: Vec<u64> = lock
            .iter()
            .flat_map(|l| l.holders.iter().map(|h| h.token))
            .collect();
        assert_eq!(tokens, vec![*token], "acknowledged grant of {name} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_fsync_on_the_leader_fail_stops_it_and_loses_nothing() {
    let mut cluster = Cluster::start(3).await;
    let dir = cluster.dir().to_path_buf();
    let cluster_dir_file = move |id: u64| dir.join(format!("fail-fsync-{id}"));
    // Restart everyone with a per-node failpoint armed (not triggered).
    for id in cluster.ids() {
        let file = cluster_dir_file(id);
        cluster.set_env(
            id,
            "HOLDFAST_TEST_ONLY_FSYNC_FAIL_FILE",
            file.to_str().unwrap(),
        );
        cluster.restart(id);
    }
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let client = cluster.client();
    let session = client.open_session(TTL_MS, "disk").await.expect("session");
    let mut taken = take_locks(&session, "before", 5).await;
    assert_eq!(taken.len(), 5);

    // The leader's disk starts failing; writes go on. The leader must stop (it cannot
    // persist), the others elect a new leader, and every acknowledged grant survives.
    std::fs::write(cluster_dir_file(leader), b"").unwrap();
    let writer = tokio::spawn(async move {
        let taken = take_locks(&session, "during", 5).await;
        (session, taken)
    });
    let code = wait_exit(&mut cluster, leader).await;
    assert_eq!(
        code,
        Some(EXIT_FAIL_STOP),
        "leader exit\n{}",
        cluster.logs_hint()
    );
    let (session, during) = writer.await.unwrap();
    taken.extend(during);
    assert_held(&cluster, &taken).await;

    // The disk is fixed; the node recovers from its data dir.
    std::fs::remove_file(cluster_dir_file(leader)).unwrap();
    cluster.start_node(leader);
    cluster.wait_converged(&cluster.ids()).await;
    assert_held(&cluster, &taken).await;
    drop(session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_restarted_on_a_full_disk_refuses_to_start_then_recovers() {
    if let Err(reason) = can_mount_tmpfs() {
        eprintln!("skipped: {reason}");
        return;
    }
    let mut cluster = Cluster::start_opts(ClusterOptions {
        size: 3,
        tmpfs_mb: Some(256),
        ..ClusterOptions::default()
    })
    .await;
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let victim = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let client = cluster.client();
    let session = client.open_session(TTL_MS, "disk").await.expect("session");
    let mut taken = take_locks(&session, "before", 5).await;

    let disk = cluster.disk_path(victim).unwrap().to_path_buf();
    let filler = disk.join("filler");
    assert!(
        holdfast_tests::torture::nemesis::fill(&filler) > 0,
        "nothing filled"
    );
    cluster.kill(victim);
    cluster.start_node(victim);
    let code = wait_exit(&mut cluster, victim).await;
    assert_eq!(code, Some(EXIT_CANNOT_START), "{}", cluster.logs_hint());
    // The other two keep serving.
    taken.extend(take_locks(&session, "while-full", 5).await);
    assert_eq!(taken.len(), 10);

    std::fs::remove_file(&filler).unwrap();
    cluster.start_node(victim);
    cluster.wait_converged(&cluster.ids()).await;
    assert_held(&cluster, &taken).await;
    // The recovered node answers from its own state.
    let own = cluster.client_of(victim);
    let status = own.status(0).await.expect("status");
    assert!(status.applied_index >= taken.last().unwrap().1);
}
