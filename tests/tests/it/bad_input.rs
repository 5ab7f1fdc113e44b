//! Bad input gets a clear status naming the problem, and changes nothing.

use holdfast_proto::v1 as pb;
use holdfast_tests::cluster::Cluster;
use tonic::Code;

use crate::support::{acquire_request, raw_locks, raw_sessions};

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    match result {
        Ok(value) => panic!("expected {code:?} mentioning {needle:?}, got {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(needle),
                "message {:?} should mention {needle:?}",
                status.message()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_clear_statuses_and_change_nothing() {
    let cluster = Cluster::start(3).await;
    let addr = cluster.addr(cluster.ids()[1]).to_owned();
    let mut sessions = raw_sessions(&addr).await;
    let mut locks = raw_locks(&addr).await;
    let client = cluster.client();
    let session = client.open_session(60_000, "good").await.unwrap();
    let hold = session
        .acquire("held", holdfast_client::LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    let list = || async {
        let mut locks = raw_locks(&addr).await;
        let response = locks
            .list(pb::ListRequest {
                prefix: String::new(),
                limit: 0,
                serializable: false,
            })
            .await
            .unwrap();
        response.into_inner().locks
    };
    let before = list().await;

    let open = |ttl_ms| pb::OpenSessionRequest {
        ttl_ms,
        principal: "p".into(),
        labels: Default::default(),
    };
    assert_status(
        sessions.open(open(0)).await,
        Code::InvalidArgument,
        "ttl_ms",
    );
    assert_status(
        sessions.open(open(u64::MAX)).await,
        Code::InvalidArgument,
        "ttl_ms",
    );
    let oversize = "x".repeat(holdfast_core::limits::LOCK_NAME_BYTES_MAX + 1);
    assert_status(
        locks
            .acquire(acquire_request(session.id, 0, &oversize, 0))
            .await,
        Code::InvalidArgument,
        "name",
    );
    assert_status(
        locks.acquire(acquire_request(session.id, 0, "", 0)).await,
        Code::InvalidArgument,
        "name",
    );
    let mut bad_mode = acquire_request(session.id, 0, "m", 0);
    bad_mode.mode = 7;
    assert_status(locks.acquire(bad_mode).await, Code::InvalidArgument, "mode");
    assert_status(
        locks.acquire(acquire_request(0, 0, "m", 0)).await,
        Code::InvalidArgument,
        "session_id",
    );
    assert_status(
        locks.acquire(acquire_request(999_999, 0, "m", 0)).await,
        Code::NotFound,
        "session 999999",
    );

    let release = |name: &str, token| pb::ReleaseRequest {
        session_id: session.id,
        request_id: 0,
        name: name.into(),
        token,
    };
    assert_status(
        locks.release(release("held", hold.token + 1_000)).await,
        Code::FailedPrecondition,
        "token",
    );
    assert_status(
        locks.release(release("not-held", 5)).await,
        Code::FailedPrecondition,
        "not-held",
    );
    assert_status(
        locks.release(release("held", 0)).await,
        Code::InvalidArgument,
        "token",
    );

    let after = list().await;
    assert_eq!(before, after, "rejected requests changed the lock table");
    let check = client.check_token("held", hold.token).await.unwrap();
    assert!(check.current, "the good hold must be untouched");
}
