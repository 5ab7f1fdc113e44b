//! Blocking acquire: a handoff answers the waiting RPC; a cancelled wait leaves the queue, and a
//! retry of the cancelled request says so.

use std::time::Duration;

use holdfast_client::LockMode;
use holdfast_tests::cluster::Cluster;

use crate::support::{acquire_request, raw_locks, wait_for_lock};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_wait_leaves_the_queue() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let holder = client.open_session(60_000, "holder").await.unwrap();
    let hold = holder
        .acquire("cancel/a", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    let waiter = client.open_session(60_000, "waiter").await.unwrap();

    // The waiter's RPC goes to a follower-or-leader node and is abandoned after 1 s.
    let mut locks = raw_locks(cluster.addr(cluster.ids()[2])).await;
    let abandoned = tokio::time::timeout(
        Duration::from_secs(1),
        locks.acquire(acquire_request(waiter.id, 1, "cancel/a", 60_000)),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the lock is held; the acquire must still be waiting"
    );

    wait_for_lock(&client, "cancel/a", |lock| {
        lock.is_some_and(|l| l.waiters.is_empty())
    })
    .await;
    // A client that retries that request (same session and request id, e.g. because the
    // connection broke under it) learns the wait was cancelled: ABORTED, which clients answer
    // by asking again with a new request id. (It was INTERNAL, found by the torture run.)
    let retried = locks
        .acquire(acquire_request(waiter.id, 1, "cancel/a", 100))
        .await
        .expect_err("the request's recorded outcome is the cancellation");
    assert_eq!(retried.code(), tonic::Code::Aborted, "{retried:?}");
    assert!(retried.message().contains("new request id"), "{retried:?}");
    // With the waiter gone, a release leaves the lock free rather than handing it over.
    holder.release(&hold).await.unwrap();
    assert!(client.describe("cancel/a").await.unwrap().lock.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_hands_the_lock_to_the_waiting_rpc_in_one_commit() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let holder = client.open_session(60_000, "holder").await.unwrap();
    let waiter = client.open_session(60_000, "waiter").await.unwrap();
    let hold = holder
        .acquire("handoff/a", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    let waiting = tokio::spawn(async move {
        (
            waiter
                .acquire("handoff/a", LockMode::Exclusive, 30_000)
                .await,
            waiter,
        )
    });
    wait_for_lock(&client, "handoff/a", |lock| {
        lock.is_some_and(|l| !l.waiters.is_empty())
    })
    .await;
    let released_at = holder.release(&hold).await.unwrap();
    let (granted, waiter) = waiting.await.unwrap();
    let granted = granted.unwrap().expect("handed over");
    // The grant happened in the very entry that released: its token is the release's index.
    assert_eq!(granted.token, released_at);
    let check = client
        .check_token("handoff/a", granted.token)
        .await
        .unwrap();
    assert!(check.current && check.session_id == waiter.id);
}
