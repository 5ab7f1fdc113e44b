//! A node without a quorum grants nothing; the cluster heals by itself.

use std::time::Duration;

use holdfast_tests::cluster::Cluster;
use tonic::Code;

use crate::support::{acquire_request, raw_locks};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survivor_of_two_kills_grants_nothing_and_the_cluster_heals() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    let session = client.open_session(60_000, "survivor").await.unwrap();
    let ids = cluster.ids();
    let (survivor, killed) = (ids[2], [ids[0], ids[1]]);
    for id in killed {
        cluster.kill(id);
    }

    let mut locks = raw_locks(cluster.addr(survivor)).await;
    for attempt in 0..3 {
        let name = format!("minority-{attempt}");
        let result = locks
            .acquire(acquire_request(session.id, 100 + attempt, &name, 0))
            .await;
        match result {
            Err(status) => assert_eq!(
                status.code(),
                Code::Unavailable,
                "attempt {attempt}: {status:?}"
            ),
            Ok(response) => panic!("a node without quorum answered an acquire: {response:?}"),
        }
    }

    for id in killed {
        cluster.restart(id);
    }
    cluster.wait_leader(&cluster.ids()).await;
    let hold = session
        .acquire("healed", holdfast_client::LockMode::Exclusive, 0)
        .await
        .unwrap();
    assert!(hold.is_some(), "the healed cluster must grant a free lock");
    // Nothing from the minority period was granted.
    for attempt in 0..3 {
        let described = client
            .describe(&format!("minority-{attempt}"))
            .await
            .unwrap();
        assert!(
            described.lock.is_none(),
            "minority acquire {attempt} took effect: {described:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.wait_converged(&cluster.ids()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_leader_answers_unavailable_and_the_majority_moves_on() {
    let cluster = Cluster::start_partitionable(3).await;
    let client = cluster.client();
    let session = client.open_session(60_000, "partition").await.unwrap();
    let old_leader = cluster.wait_leader(&cluster.ids()).await;
    cluster.isolate(old_leader);
    // Let the proxies close the connections they carry (an append already in flight may land).
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The isolated leader cannot commit: it answers UNAVAILABLE (at once once it notices it has
    // lost its quorum, else when the write times out), never a grant.
    let mut minority = raw_locks(cluster.addr(old_leader)).await;
    // A linearizable read there cannot confirm its read index with a quorum: UNAVAILABLE, not
    // INTERNAL (regression: the fault-injection suite saw INTERNAL "not enough for a quorum").
    let read = minority
        .describe(holdfast_proto::v1::DescribeRequest {
            name: "partition/minority".into(),
            serializable: false,
        })
        .await;
    match read {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(response) => panic!("an isolated leader answered a linearizable read: {response:?}"),
    }
    for attempt in 0..2 {
        match minority
            .acquire(acquire_request(
                session.id,
                200 + attempt,
                "partition/minority",
                0,
            ))
            .await
        {
            Err(status) => assert_eq!(
                status.code(),
                Code::Unavailable,
                "attempt {attempt}: {status:?}"
            ),
            Ok(response) => panic!("an isolated leader answered an acquire: {response:?}"),
        }
    }

    // Keepalives: the isolated leader may answer from its committed state for a moment (the
    // session's remaining time, never extended: no renewal commits there), then refuses once it
    // sees its quorum is stale, so clients go and find the new leader.
    let mut minority_sessions = crate::support::raw_sessions(cluster.addr(old_leader)).await;
    let session_id = session.id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last_remaining = u64::MAX;
    loop {
        let request = tokio_stream::iter([holdfast_proto::v1::KeepAliveRequest { session_id }]);
        let answer = match minority_sessions.keep_alive(request).await {
            Ok(stream) => stream.into_inner().message().await,
            Err(status) => Err(status),
        };
        match answer {
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                break;
            }
            Ok(Some(answer)) => {
                assert!(
                    answer.remaining_ms <= last_remaining,
                    "an isolated leader extended a session: {answer:?} after {last_remaining}"
                );
                last_remaining = answer.remaining_ms;
            }
            Ok(None) => panic!("keepalive stream ended without an answer"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the isolated leader kept answering keepalives"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The majority elects a new leader and serves writes meanwhile.
    let majority: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != old_leader)
        .collect();
    let new_leader = cluster.wait_leader(&majority).await;
    assert_ne!(new_leader, old_leader);
    let majority_client = cluster.client_of(new_leader);
    let in_majority = majority_client
        .describe("partition/minority")
        .await
        .unwrap();
    assert!(
        in_majority.lock.is_none(),
        "the minority's acquire took effect: {in_majority:?}"
    );

    cluster.heal();
    cluster.wait_leader(&cluster.ids()).await;
    cluster.wait_converged(&cluster.ids()).await;
    let healed = client.describe("partition/minority").await.unwrap();
    assert!(
        healed.lock.is_none(),
        "the minority's acquire surfaced after healing: {healed:?}"
    );
}

/// Replication to a dead peer waits out openraft's backoff (200 ms) between connection
/// attempts. Before the first request was taken ahead of the connect, the stream session
/// re-dialled at once: about 2,000 refused connections and 4,000 warnings a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replication_to_a_dead_peer_backs_off() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let dead = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    cluster.kill(dead);
    let needle = format!("node {dead} unreachable");
    let before = cluster.log_text(leader).matches(&needle).count();
    // Writes keep the leader replicating (to the live follower and, in vain, to the dead one).
    let client = cluster.client();
    let session = client.open_session(10_000, "backoff").await.unwrap();
    let watch = std::time::Instant::now();
    for _ in 0..20 {
        let hold = session
            .acquire("backoff/lock", holdfast_client::LockMode::Exclusive, 0)
            .await
            .unwrap()
            .expect("uncontended");
        session.release(&hold).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = watch.elapsed();
    let attempts = cluster.log_text(leader).matches(&needle).count() - before;
    // Two lines per attempt; at one attempt per 200 ms that is 10 a second. Allow 5x.
    let bound = 100 * usize::try_from(elapsed.as_secs() + 1).unwrap();
    assert!(
        attempts <= bound,
        "{attempts} connection warnings about node {dead} in {elapsed:?} (at most {bound})"
    );
}
