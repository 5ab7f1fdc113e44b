//! Mutual exclusion and fencing under load, with and without a leader crash.

use std::sync::Arc;
use std::time::Duration;

use holdfast_client::LockMode;
use holdfast_tests::checkers::{exclusive_holds_do_not_overlap, tokens_increase_in_real_time};
use holdfast_tests::cluster::Cluster;

use crate::support::{Resource, WorkloadResult, run_workload};

const CLIENTS: usize = 16;
const LOCKS: usize = 4;
const LOAD_SECS: u64 = 10;

/// The background workload (`run_workload`) for `secs`, writing `resource`.
fn spawn_workload(
    client: &holdfast_client::Client,
    resource: &Arc<Resource>,
    secs: u64,
) -> tokio::task::JoinHandle<WorkloadResult> {
    let client = client.clone();
    let resource = Arc::clone(resource);
    tokio::spawn(async move {
        run_workload(&client, CLIENTS, LOCKS, Duration::from_secs(secs), resource).await
    })
}

/// A ledger: uncontended locks `prefix/N` taken one by one for `secs` by one session, every
/// third released at once. Returns the session and its acknowledged acquires and releases,
/// which must survive whatever happened meanwhile (`assert_ledger`).
fn spawn_ledger(
    client: &holdfast_client::Client,
    prefix: &'static str,
    secs: u64,
) -> tokio::task::JoinHandle<(
    holdfast_client::Session,
    Vec<holdfast_client::Hold>,
    Vec<holdfast_client::Hold>,
)> {
    let client = client.clone();
    tokio::spawn(async move {
        let session = client
            .open_session(30_000, "ledger")
            .await
            .expect("ledger session");
        let (mut acquired, mut released) = (Vec::new(), Vec::new());
        let start = tokio::time::Instant::now();
        for n in 0.. {
            if start.elapsed() > Duration::from_secs(secs) {
                break;
            }
            let name = format!("{prefix}/{n}");
            if let Ok(Some(hold)) = session.acquire(&name, LockMode::Exclusive, 0).await {
                if n % 3 == 0 {
                    if session.release(&hold).await.is_ok() {
                        released.push(hold);
                    }
                } else {
                    acquired.push(hold);
                }
            }
        }
        (session, acquired, released)
    })
}

/// Every acknowledged acquire of the ledger session is still held with its token; every
/// acknowledged release is no longer current; and the ledger made progress.
async fn assert_ledger(
    client: &holdfast_client::Client,
    session_id: u64,
    acquired: &[holdfast_client::Hold],
    released: &[holdfast_client::Hold],
) {
    for hold in acquired {
        let described = client.describe(&hold.name).await.expect("describe");
        let holders = described.lock.map(|l| l.holders).unwrap_or_default();
        assert!(
            holders
                .iter()
                .any(|h| h.session_id == session_id && h.token == hold.token),
            "acknowledged acquire of {} (token {}) is lost: holders {holders:?}",
            hold.name,
            hold.token
        );
    }
    for hold in released {
        let check = client
            .check_token(&hold.name, hold.token)
            .await
            .expect("check token");
        assert!(
            !check.current,
            "acknowledged release of {} (token {}) is lost",
            hold.name, hold.token
        );
    }
    assert!(
        acquired.len() >= 10 && !released.is_empty(),
        "ledger made too little progress: {} / {}",
        acquired.len(),
        released.len()
    );
}

fn assert_safe(result: &WorkloadResult, resource: &Resource) {
    let mut violations = exclusive_holds_do_not_overlap(&result.records);
    violations.extend(tokens_increase_in_real_time(&result.records));
    violations.extend(resource.violations.lock().unwrap().iter().cloned());
    assert!(
        violations.is_empty(),
        "{} safety violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_clients_four_locks_never_overlap() {
    let cluster = Cluster::start(3).await;
    let resource = Arc::new(Resource::default());
    let result = run_workload(
        &cluster.client(),
        CLIENTS,
        LOCKS,
        Duration::from_secs(LOAD_SECS),
        Arc::clone(&resource),
    )
    .await;
    assert_safe(&result, &resource);
    assert!(
        result.records.len() >= 100,
        "too little progress: {} holds in {LOAD_SECS} s",
        result.records.len()
    );
    assert_eq!(
        result.failed_ops, 0,
        "operations failed in a healthy cluster"
    );
    cluster.wait_converged(&cluster.ids()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_loses_no_acknowledged_operation() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    let resource = Arc::new(Resource::default());
    let load = spawn_workload(&client, &resource, LOAD_SECS);
    let ledger = spawn_ledger(&client, "ledger", LOAD_SECS);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = cluster.wait_leader(&cluster.ids()).await;
    cluster.kill(killed);
    let (session, acquired, released) = ledger.await.expect("ledger");
    let result = load.await.expect("workload");
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != killed)
        .collect();
    cluster.wait_leader(&others).await;

    assert_ledger(&client, session.id, &acquired, &released).await;
    assert_safe(&result, &resource);

    cluster.restart(killed);
    cluster.wait_leader(&cluster.ids()).await;
    cluster.wait_converged(&cluster.ids()).await;
}

/// A rolling restart (SIGTERM, restart, wait until it has caught up; node by node, the leader
/// too) under load: every acknowledged acquire and release survives, holds never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_load_loses_nothing() {
    const ROLLING_LOAD_SECS: u64 = 25;
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    let resource = Arc::new(Resource::default());
    let load = spawn_workload(&client, &resource, ROLLING_LOAD_SECS);
    let ledger = spawn_ledger(&client, "rolling", ROLLING_LOAD_SECS);

    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in cluster.ids() {
        assert!(cluster.terminate(id), "node {id} did not stop on SIGTERM");
        cluster.start_node(id);
        cluster.wait_leader(&cluster.ids()).await;
        cluster.wait_converged(&cluster.ids()).await;
    }

    let (session, acquired, released) = ledger.await.expect("ledger");
    let result = load.await.expect("workload");
    assert_ledger(&client, session.id, &acquired, &released).await;
    assert_safe(&result, &resource);
    cluster.wait_converged(&cluster.ids()).await;
}
