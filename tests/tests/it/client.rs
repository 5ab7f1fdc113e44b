//! The client library: a session survives the loss of the node it talks to, and reports `Lost`
//! from its own conservative deadline when the whole cluster is gone.

use std::time::Duration;

use holdfast_client::{Health, LockMode};
use holdfast_tests::cluster::Cluster;
use tokio::time::Instant;

/// Long enough that, after the outage, the restarted cluster still has seconds of the session's
/// TTL left (in cluster time) when the test checks the hold.
const TTL_MS: u64 = 6_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_outlives_its_node_and_reports_loss_before_the_server_could_expire_it() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    let session = client.open_session(TTL_MS, "client").await.unwrap();
    let hold = session
        .acquire("client/a", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");

    // The client talks to the first endpoint; kill it. Keepalives fail over.
    let first = cluster.ids()[0];
    cluster.kill(first);
    tokio::time::sleep(Duration::from_millis(2 * TTL_MS)).await;
    assert_eq!(session.health(), Health::Healthy);
    let check = client.check_token("client/a", hold.token).await.unwrap();
    assert!(check.current && check.session_id == session.id, "{check:?}");

    // The whole cluster stops: the client must give up on its own, within its deadline.
    let mut health = session.health_watch();
    let stopped = Instant::now();
    for id in cluster.ids() {
        cluster.kill(id);
    }
    tokio::time::timeout(
        Duration::from_millis(TTL_MS + 2_000),
        health.wait_for(|h| *h == Health::Lost),
    )
    .await
    .expect("Lost within the TTL")
    .unwrap();
    assert!(
        stopped.elapsed() <= Duration::from_millis(TTL_MS + 500),
        "Lost only after {:?}",
        stopped.elapsed()
    );

    // Cluster time paused while nobody led: the server had not expired the session, so Lost came
    // first.
    for id in cluster.ids() {
        cluster.restart(id);
    }
    cluster.wait_leader(&cluster.ids()).await;
    let check = client.check_token("client/a", hold.token).await.unwrap();
    assert!(
        check.current,
        "the session's hold must survive the outage: {check:?}"
    );
    // (The session may still expire later, in cluster time, if no keepalive reaches the new
    // leader within its remaining TTL: that would be the server being right, not the client.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_guard_releases_explicitly_or_on_drop() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let session = client.open_session(60_000, "guard").await.unwrap();
    let other = client.open_session(60_000, "other").await.unwrap();

    let guard = session.lock("guard/a").await.unwrap();
    assert!(
        other.try_lock("guard/a").await.unwrap().is_none(),
        "held by the guard"
    );
    let token = guard.token();
    let released_at = guard.release().await.unwrap();
    assert!(released_at > token);

    {
        let _dropped = session
            .lock_with_timeout("guard/b", Duration::from_secs(5))
            .await
            .unwrap()
            .expect("free");
    }
    // The drop released it in the background: the other session gets it within its wait.
    let taken = other
        .lock_with_timeout("guard/b", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(taken.is_some(), "a dropped guard must release its lock");
}

/// Writes go straight to the leader: a client whose first endpoint is a follower has its first
/// write forwarded, learns the leader from that answer's header, and sends the next ones there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_go_to_the_leader_named_in_response_headers() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let mut order: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    order.push(leader);
    let endpoints: Vec<&str> = order.iter().map(|id| cluster.addr(*id)).collect();
    let client = holdfast_client::Client::connect(&endpoints).unwrap();
    let session = client.open_session(60_000, "route").await.unwrap();
    for request_id in 1..=3 {
        let session_id = session.id;
        let response = client
            .retry_write(|channel| async move {
                let request = crate::support::acquire_request(
                    session_id,
                    request_id,
                    &format!("route/{request_id}"),
                    0,
                );
                holdfast_proto::v1::locks_client::LocksClient::new(channel)
                    .acquire(request)
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await
            .unwrap();
        let header = response.header.expect("a header");
        assert_eq!(header.leader_addr, cluster.addr(leader));
        assert_eq!(
            header.node_id, leader,
            "write {request_id} was answered by a follower"
        );
    }
}
