//! A full-cluster crash and restart brings back every hold, waiter and live session; a node that
//! fell behind the purged log catches up from a snapshot.

use holdfast_client::LockMode;
use holdfast_tests::cluster::Cluster;

use crate::support::wait_for_lock;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_restart_keeps_holds_waiters_and_sessions() {
    // Frequent snapshots, so the restart loads a snapshot and replays only the log behind it.
    let mut cluster = Cluster::start_with(
        3,
        &["--snapshot-every-entries=20", "--snapshot-keep-entries=5"],
    )
    .await;
    let client = cluster.client();
    churn(&client, "restart/churn", 40).await;
    let owner = client.open_session(60_000, "owner").await.unwrap();
    let queued = client.open_session(60_000, "queued").await.unwrap();
    let a = owner
        .acquire("restart/a", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    let b = owner
        .acquire("restart/b", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");

    // `queued` waits for restart/a in the background; its RPC dies with the cluster.
    let queued_id = queued.id;
    let wait_task = tokio::spawn(async move {
        let result = queued
            .acquire("restart/a", LockMode::Exclusive, 60_000)
            .await;
        (queued, result)
    });
    wait_for_lock(&client, "restart/a", |lock| {
        lock.is_some_and(|l| l.waiters.iter().any(|w| w.session_id == queued_id))
    })
    .await;
    let (_, before_digest) = cluster.wait_converged(&cluster.ids()).await;
    assert!(!before_digest.is_empty());

    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.restart(id);
    }
    cluster.wait_leader(&cluster.ids()).await;

    let lock_a = client
        .describe("restart/a")
        .await
        .unwrap()
        .lock
        .expect("restart/a survives");
    assert_eq!(lock_a.holders.len(), 1);
    assert_eq!(
        (lock_a.holders[0].session_id, lock_a.holders[0].token),
        (owner.id, a.token)
    );
    assert!(
        lock_a.waiters.iter().any(|w| w.session_id == queued_id),
        "waiter lost: {lock_a:?}"
    );
    let lock_b = client
        .describe("restart/b")
        .await
        .unwrap()
        .lock
        .expect("restart/b survives");
    assert_eq!(
        (lock_b.holders[0].session_id, lock_b.holders[0].token),
        (owner.id, b.token)
    );

    // The release hands the lock to the waiter. Its blocked RPC either rode out the restart
    // (the client retried with the same request id and rejoined the same queue entry) or gave up,
    // in which case asking again finds the grant (re-entrant: same hold, same token).
    owner.release(&a).await.unwrap();
    let (queued, first) = wait_task.await.unwrap();
    let granted = match first {
        Ok(Some(hold)) => hold,
        _ => queued
            .acquire("restart/a", LockMode::Exclusive, 30_000)
            .await
            .unwrap()
            .expect("handoff after restart"),
    };
    assert!(granted.token > a.token);
    assert!(owner.is_alive() && queued.is_alive());
    cluster.wait_converged(&cluster.ids()).await;
}

/// `count` try-lock + release cycles on one lock: log entries to snapshot and purge.
async fn churn(client: &holdfast_client::Client, name: &str, count: usize) {
    let session = client.open_session(60_000, "churn").await.unwrap();
    for _ in 0..count {
        let hold = session
            .acquire(name, LockMode::Exclusive, 0)
            .await
            .unwrap()
            .expect("uncontended");
        session.release(&hold).await.unwrap();
    }
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_behind_the_purged_log_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start_with(
        3,
        &["--snapshot-every-entries=20", "--snapshot-keep-entries=5"],
    )
    .await;
    let client = cluster.client();
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let lagging = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    cluster.kill(lagging);

    let session = client.open_session(60_000, "kept").await.unwrap();
    let kept = session
        .acquire("snapshot/kept", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    churn(&client, "snapshot/churn", 60).await;

    // The leader keeps log entries a replication still needs; a follower purges freely. So make
    // the remaining follower the leader: it can only bring the lagging node up with a snapshot.
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != lagging)
        .unwrap();
    cluster.wait_converged(&[leader, follower]).await;
    cluster.kill(leader);
    cluster.restart(lagging);
    assert_eq!(cluster.wait_leader(&[follower, lagging]).await, follower);
    cluster.wait_converged(&[follower, lagging]).await;
    cluster.restart(leader);
    cluster.wait_converged(&cluster.ids()).await;
    let mut locks = crate::support::raw_locks(cluster.addr(lagging)).await;
    let described = locks
        .describe(holdfast_proto::v1::DescribeRequest {
            name: "snapshot/kept".into(),
            serializable: true,
        })
        .await
        .unwrap()
        .into_inner();
    let holder = &described
        .lock
        .expect("the lagging node knows the lock")
        .holders[0];
    assert_eq!((holder.session_id, holder.token), (session.id, kept.token));
}
