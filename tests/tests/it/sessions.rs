//! Session liveness: expiry hands locks to the next waiter; renewal survives a leader crash.

use std::time::Duration;

use holdfast_client::LockMode;
use holdfast_tests::cluster::Cluster;
use tokio::time::Instant;

/// Short TTL so the tests are quick; still above the server's minimum.
const TTL_MS: u64 = 4_000;
/// Leader tick interval plus commit and scheduling slack on a loaded 2-core machine.
const EXPIRY_SLACK_MS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_session_expires_and_its_lock_goes_to_the_next_waiter() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let holder = client.open_session(TTL_MS, "holder").await.unwrap();
    let hold = holder
        .acquire("expiring", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free lock");
    let waiter = client.open_session(30_000, "waiter").await.unwrap();

    holder.stop_keepalive();
    let stopped = Instant::now();
    let granted = waiter
        .acquire("expiring", LockMode::Exclusive, 20_000)
        .await
        .unwrap()
        .expect("granted after expiry");
    let waited = stopped.elapsed();

    assert!(
        granted.token > hold.token,
        "token {} after {}",
        granted.token,
        hold.token
    );
    // The last keepalive may have been sent up to TTL/3 before we stopped renewing.
    assert!(
        waited >= Duration::from_millis(TTL_MS - TTL_MS / 3 - 100),
        "expired too early: after {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(TTL_MS + EXPIRY_SLACK_MS),
        "expired too late: after {waited:?}"
    );
    let check = client.check_token("expiring", hold.token).await.unwrap();
    assert!(!check.current, "the expired holder's token must be stale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewing_session_survives_a_leader_kill() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    let session = client.open_session(TTL_MS, "steady").await.unwrap();
    let hold = session
        .acquire("steady", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free lock");

    let leader = cluster.wait_leader(&cluster.ids()).await;
    cluster.kill(leader);
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    cluster.wait_leader(&others).await;
    tokio::time::sleep(Duration::from_millis(2 * TTL_MS)).await;

    assert!(
        session.is_alive(),
        "the server refused a keepalive of a renewing session"
    );
    let check = client.check_token("steady", hold.token).await.unwrap();
    assert!(
        check.current && check.session_id == session.id,
        "the renewing session lost its lock: {check:?}"
    );
    cluster.restart(leader);
    cluster.wait_converged(&cluster.ids()).await;
}

/// Regression: a one-node cluster went "stale" 1.5 s after its election (nobody acknowledged
/// its leadership) and refused every write with UNAVAILABLE. Found by hand while building the
/// disk-full test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_cluster_keeps_serving_writes() {
    let cluster = Cluster::start(1).await;
    // Well past the quorum staleness bound (QUORUM_STALE_MS = 1.5 s).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let session = cluster
        .client()
        .open_session(5_000, "alone")
        .await
        .expect("a single voter commits on its own");
    let guard = session
        .try_lock("alone/x")
        .await
        .expect("acquire")
        .expect("free lock");
    assert!(guard.token() > 0);
    guard.release().await.expect("release");
}

/// The leader answers a keepalive at once from its committed state: what the session had left
/// before this renewal. The renewal rides the next Tick and shows in the next answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalive_answers_from_committed_state_and_the_renewal_follows() {
    const TTL_MS: u64 = 10_000;
    const SILENT_MS: u64 = 2_000;
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let session = client.open_session(TTL_MS, "keepalive").await.unwrap();
    session.stop_keepalive();
    tokio::time::sleep(Duration::from_millis(SILENT_MS)).await;
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let mut sessions = crate::support::raw_sessions(cluster.addr(leader)).await;
    let session_id = session.id;
    let mut keep_alive = async || {
        let request = tokio_stream::iter([holdfast_proto::v1::KeepAliveRequest { session_id }]);
        sessions
            .keep_alive(request)
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .expect("an answer")
    };
    let first = keep_alive().await;
    assert_eq!(first.ttl_ms, TTL_MS);
    assert!(
        first.remaining_ms > 0 && first.remaining_ms <= TTL_MS - SILENT_MS,
        "the answer must come from the committed expiry, before this renewal: {first:?}"
    );
    // The first keepalive's renewal commits with the next Tick (at once: a keepalive wakes the
    // ticker).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let next = keep_alive().await;
        if next.remaining_ms > TTL_MS - SILENT_MS / 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewal never committed: {next:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
