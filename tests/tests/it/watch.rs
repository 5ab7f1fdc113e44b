//! Watch: every node streams the same events in the same order; a resume misses nothing; history
//! a node no longer has is answered with `compacted`.

use std::sync::Arc;
use std::time::Duration;

use holdfast_client::LockMode;
use holdfast_proto::v1 as pb;
use holdfast_tests::cluster::Cluster;
use tonic::Code;

use crate::support::{Resource, run_workload};

type Stream = tonic::Streaming<pb::WatchResponse>;

async fn watch(addr: &str, from_revision: u64) -> Result<Stream, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let request = pb::WatchRequest {
        prefix: String::new(),
        from_revision,
    };
    Ok(pb::watch_client::WatchClient::new(channel)
        .watch(request)
        .await?
        .into_inner())
}

/// Reads a stream until it has delivered revision `last`, checking revisions strictly increase.
async fn read_until(stream: &mut Stream, last: u64) -> Vec<pb::WatchResponse> {
    let mut seen: Vec<pb::WatchResponse> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.last().is_none_or(|r| r.revision < last) {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("watch stalled")
            .expect("watch failed");
        let response = next.expect("watch ended");
        if let Some(previous) = seen.last() {
            assert!(
                response.revision > previous.revision,
                "revision {} after {}",
                response.revision,
                previous.revision
            );
        }
        seen.push(response);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_streams_the_same_history_and_resumes_without_gaps() {
    let cluster = Cluster::start(3).await;
    let mut streams = Vec::new();
    for id in cluster.ids() {
        streams.push(watch(cluster.addr(id), 1).await.unwrap());
    }
    let client = cluster.client();
    let resource = Arc::new(Resource::default());
    let result = run_workload(&client, 8, 2, Duration::from_secs(3), resource).await;
    assert!(!result.records.is_empty());
    let marker = client.open_session(60_000, "marker").await.unwrap();
    let last = marker
        .acquire("watch/marker", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free")
        .revision;

    let mut histories = Vec::new();
    for stream in &mut streams {
        histories.push(read_until(stream, last).await);
    }
    assert!(
        histories[0].len() > 20,
        "too few revisions watched: {}",
        histories[0].len()
    );
    for (index, history) in histories.iter().enumerate().skip(1) {
        assert_eq!(
            &histories[0],
            history,
            "node {} streamed a different history",
            cluster.ids()[index]
        );
    }
    // Every grant and release the workload saw is in the stream.
    let acquired: Vec<u64> = histories[0]
        .iter()
        .flat_map(|r| &r.events)
        .filter(|e| e.kind == pb::EventKind::Acquired as i32)
        .map(|e| e.token)
        .collect();
    for record in &result.records {
        assert!(
            acquired.contains(&record.token),
            "grant {} missing from the watch",
            record.token
        );
    }
    // Every event names its session's principal.
    let principals: Vec<&str> = histories[0]
        .iter()
        .flat_map(|r| &r.events)
        .map(|e| e.principal.as_str())
        .collect();
    assert!(
        principals
            .iter()
            .all(|p| p.starts_with("client-") || *p == "marker"),
        "{principals:?}"
    );

    // Resume from the middle on another node: exactly the suffix.
    let middle = histories[0][histories[0].len() / 2].revision;
    let mut resumed = watch(cluster.addr(cluster.ids()[1]), middle).await.unwrap();
    let suffix = read_until(&mut resumed, last).await;
    let expected: Vec<pb::WatchResponse> = histories[0]
        .iter()
        .filter(|r| r.revision >= middle)
        .cloned()
        .collect();
    assert_eq!(suffix, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_before_a_restarted_nodes_snapshot_is_compacted() {
    let mut cluster = Cluster::start_with(
        3,
        &["--snapshot-every-entries=20", "--snapshot-keep-entries=5"],
    )
    .await;
    let client = cluster.client();
    let session = client.open_session(60_000, "churn").await.unwrap();
    for _ in 0..30 {
        let hold = session
            .acquire("compact/a", LockMode::Exclusive, 0)
            .await
            .unwrap()
            .expect("free");
        session.release(&hold).await.unwrap();
    }
    let id = cluster.ids()[0];
    cluster.wait_converged(&cluster.ids()).await;
    cluster.restart(id);
    cluster.wait_converged(&cluster.ids()).await;

    let status = watch(cluster.addr(id), 1)
        .await
        .expect_err("revision 1 predates the snapshot");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let oldest: u64 = status
        .metadata()
        .get("holdfast-compacted-revision")
        .expect("oldest revision")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(oldest > 1);
    // From the oldest available revision the watch works.
    let mut stream = watch(cluster.addr(id), oldest).await.unwrap();
    let hold = session
        .acquire("compact/b", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    let seen = read_until(&mut stream, hold.revision).await;
    assert!(seen.iter().any(|r| {
        r.events
            .iter()
            .any(|e| e.lock == "compact/b" && e.token == hold.token)
    }));
}
