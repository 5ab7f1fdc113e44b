//! Operations surface: Prometheus `/metrics` with the lock, Raft, fsync and policy series;
//! `grpc.health.v1` SERVING only while the node knows a leader and has applied what it knows
//! committed; server reflection lists the services.

use std::time::Duration;

use holdfast_client::LockMode;
use holdfast_tests::cluster::{Cluster, free_port};
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// `GET /metrics` (the body), which must answer 200.
async fn scrape(addr: &str) -> String {
    let (status, body) = crate::console::http(addr, "GET", "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the first sample of `series` (name with its labels, as rendered).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

async fn health(addr: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

async fn wait_health(addr: &str, wanted: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = health(addr).await;
        if status == Some(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health of {addr} stayed {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_health_and_reflection() {
    let mut cluster = Cluster::start_with(3, &["--allow-admin"]).await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    cluster.set_env(1, "HOLDFAST_METRICS_LISTEN", &metrics_addr);
    cluster.set_env(1, "HOLDFAST_LOG_FORMAT", "json");
    cluster.restart(1);
    cluster.wait_leader(&cluster.ids()).await;
    let client = cluster.client_of(1);
    // A wasm policy decides for ops/ locks, so the decision-latency histogram fills.
    client
        .deploy_policy("fifo", &holdfast_tests::policy_wasm("fifo"))
        .await
        .expect("deploy");
    client
        .bind_policy(holdfast_proto::v1::BindPolicyRequest {
            prefix: "ops/".into(),
            policy: "fifo".into(),
            version: 0,
            config: Vec::new(),
            mode: holdfast_proto::v1::BindMode::Enforce as i32,
        })
        .await
        .expect("bind");
    let session = client.open_session(30_000, "metrics").await.unwrap();
    for _ in 0..5 {
        let hold = session
            .acquire("ops/lock", LockMode::Exclusive, 0)
            .await
            .unwrap()
            .expect("free");
        session.release(&hold).await.unwrap();
    }
    // One handoff: a second session queues behind the first and gets the lock on release.
    let hold = session
        .acquire("ops/lock", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    let waiter = client.open_session(30_000, "metrics-waiter").await.unwrap();
    let waiting = tokio::spawn(async move {
        let granted = waiter
            .acquire("ops/lock", LockMode::Exclusive, 10_000)
            .await;
        (waiter, granted)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lock = client.describe("ops/lock").await.unwrap().lock;
        if lock.is_some_and(|lock| !lock.waiters.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    session.release(&hold).await.unwrap();
    let (waiter, granted) = waiting.await.unwrap();
    let handed = granted.unwrap().expect("granted on release");
    waiter.release(&handed).await.unwrap();
    waiter.close().await.unwrap();
    cluster.wait_converged(&cluster.ids()).await;
    // Gauges are sampled once a second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let metrics = scrape(&metrics_addr).await;
    let grants = sample(&metrics, r#"holdfast_lock_grants_total{node="1"}"#);
    assert!(grants.is_some_and(|n| n >= 7.0), "{grants:?}\n{metrics}");
    assert_eq!(
        sample(&metrics, r#"holdfast_lock_handoffs_total{node="1"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"holdfast_lock_wait_seconds_bucket{node="1""#),
        "{metrics}"
    );
    let releases = sample(
        &metrics,
        r#"holdfast_lock_releases_total{node="1",reason="released"}"#,
    );
    assert!(releases.is_some_and(|n| n >= 5.0), "{metrics}");
    assert!(sample(&metrics, r#"holdfast_raft_term{node="1"}"#).is_some_and(|t| t >= 1.0));
    assert_eq!(
        sample(&metrics, r#"holdfast_sessions{node="1"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, r#"holdfast_digest_mismatches{node="1"}"#),
        Some(0.0)
    );
    assert!(
        metrics.contains(r#"holdfast_wal_fsync_seconds_bucket{node="1""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"holdfast_apply_seconds_bucket{node="1""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"holdfast_applied_entries_total{node="1",command="acquire"}"#),
        "{metrics}"
    );
    let acquires = sample(
        &metrics,
        r#"holdfast_grpc_requests_total{node="1",method="/holdfast.v1.Locks/Acquire",code="Ok"}"#,
    );
    assert!(acquires.is_some_and(|n| n >= 5.0), "{metrics}");
    assert!(
        metrics.contains(
            r#"holdfast_grpc_seconds_bucket{node="1",method="/holdfast.v1.Locks/Acquire""#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"holdfast_policy_decision_seconds_bucket{node="1",hook="admit""#),
        "{metrics}"
    );
    // Node 1 logs JSON lines.
    let logs = cluster.logs_hint();
    let node_1 = logs
        .split("--- node 2 log")
        .next()
        .expect("node 1's section comes first");
    assert!(node_1.contains(r#"{"timestamp":"#), "{node_1}");

    // Health: serving with a leader; not serving once alone — checked on a follower, which
    // goes on naming its lost leader while it pre-votes (regression: it stayed SERVING).
    let leader = cluster.wait_leader(&cluster.ids()).await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    wait_health(cluster.addr(follower), ServingStatus::Serving).await;
    for id in cluster.ids().into_iter().filter(|id| *id != follower) {
        cluster.kill(id);
    }
    wait_health(cluster.addr(follower), ServingStatus::NotServing).await;

    // Reflection lists the API.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(follower)))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "holdfast.v1.Locks",
        "holdfast.v1.Policies",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|name| name == service), "{names:?}");
    }
}
