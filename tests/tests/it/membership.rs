//! Membership changes through the Cluster API: two nodes join as learners (catching up by
//! snapshot) and are promoted; the 5-node cluster keeps serving with two nodes down; a dead
//! node is removed; leadership is transferred on request and handed over when a leader stops
//! gracefully (SIGTERM).

use std::time::Duration;

use holdfast_client::LockMode;
use holdfast_tests::cluster::Cluster;
use tokio::time::Instant;
use tonic::Code;

async fn cycle(client: &holdfast_client::Client, name: &str) {
    let session = client
        .open_session(10_000, "membership")
        .await
        .expect("open");
    let hold = session
        .acquire(name, LockMode::Exclusive, 0)
        .await
        .expect("acquire")
        .expect("free");
    session.release(&hold).await.expect("release");
    session.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_to_five_survive_two_losses_remove_and_transfer() {
    // Frequent snapshots with a short tail, so the new nodes catch up by snapshot.
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--allow-admin",
            "--snapshot-every-entries=20",
            "--snapshot-keep-entries=5",
        ],
    )
    .await;
    let client = cluster.client();
    for round in 0..15 {
        cycle(&client, &format!("grow/{round}")).await;
    }
    for id in [4, 5] {
        let addr = cluster.add_node(id);
        let added = client.add_learner(id, &addr).await.expect("add learner");
        assert!(
            added.members.iter().any(|m| m.id == id && !m.voter),
            "{added:?}"
        );
        let promoted = client.promote(id).await.expect("promote");
        assert!(
            promoted.members.iter().any(|m| m.id == id && m.voter),
            "{promoted:?}"
        );
    }
    let members = client.members().await.unwrap();
    assert_eq!(
        members.members.iter().filter(|m| m.voter).count(),
        5,
        "{members:?}"
    );
    cluster.wait_converged(&[1, 2, 3, 4, 5]).await;

    // Two of five down, the leader among them: the other three elect and serve.
    let leader = cluster.wait_leader(&[1, 2, 3, 4, 5]).await;
    let other = [1, 2, 3, 4, 5]
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    cluster.kill(leader);
    cluster.kill(other);
    let alive: Vec<u64> = [1, 2, 3, 4, 5]
        .into_iter()
        .filter(|id| *id != leader && *id != other)
        .collect();
    cluster.wait_leader(&alive).await;
    // Every endpoint (two are dead): admin calls follow the leader hint to the leader.
    let survivor = cluster.client();
    cycle(&survivor, "grow/after-losses").await;

    // Remove one dead node; the membership shrinks to four.
    let removed = survivor.remove_member(other).await.expect("remove");
    assert!(
        !removed.members.iter().any(|m| m.id == other),
        "{removed:?}"
    );
    assert_eq!(removed.members.len(), 4);
    cycle(&survivor, "grow/after-remove").await;

    // Transfer leadership to a chosen live voter. Another voter may win the election the
    // transfer starts (ABORTED); then it is retried, at most a few times.
    let target = *alive.last().unwrap();
    let mut attempts = 0;
    let new_leader = loop {
        attempts += 1;
        match survivor.transfer_leader(target).await {
            Ok(leader) => break leader,
            Err(status) if status.code() == Code::Aborted && attempts < 5 => {
                cluster.wait_leader(&alive).await;
            }
            Err(status) => panic!("transfer after {attempts} attempts: {status:?}"),
        }
    };
    assert_eq!(new_leader, target);
    cluster.wait_leader(&alive).await;
    cycle(&survivor, "grow/after-transfer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_leader_hands_over_and_admin_calls_need_the_flag() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    let refused = client
        .transfer_leader(2)
        .await
        .expect_err("no --allow-admin");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = client.remove_member(3).await.expect_err("no --allow-admin");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    let leader = cluster.wait_leader(&cluster.ids()).await;
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    assert!(
        cluster.terminate(leader),
        "the leader stops by itself on SIGTERM"
    );
    // Handed over: a new leader well within one election timeout's worth of waiting.
    let started = Instant::now();
    let new_leader = cluster.wait_leader(&others).await;
    assert_ne!(new_leader, leader);
    assert_eq!(
        new_leader, others[0],
        "the successor is the lowest other voter"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let log = cluster.logs_hint();
    assert!(
        log.contains("handed leadership over before stopping"),
        "{log}"
    );
    cycle(&cluster.client_of(others[0]), "stop/after").await;
}
