//! Shared pieces of the cluster tests: the lock workload and raw (non-retrying) RPC helpers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_client::{Client, LockMode, Session};
use holdfast_proto::v1 as pb;
use holdfast_tests::checkers::HoldRecord;
use holdfast_tests::cluster::{Cluster, holdfast_bin};
use tokio::time::Instant;
use tonic::transport::Channel;

/// Session TTL of workload clients.
pub const WORKLOAD_TTL_MS: u64 = 10_000;
/// How long a workload client waits in a lock's queue.
pub const WORKLOAD_WAIT_MS: u64 = 2_000;

/// A shared resource the workload "writes" while holding a lock: it notices two clients inside
/// at once (a mutual-exclusion failure seen in real time) and fences stale tokens.
#[derive(Default)]
pub struct Resource {
    inside: Mutex<BTreeMap<String, (usize, u64)>>,
    max_token: Mutex<BTreeMap<String, u64>>,
    pub violations: Mutex<Vec<String>>,
}

impl Resource {
    pub fn enter(&self, lock: &str, client: usize, token: u64) {
        let mut max_token = self.max_token.lock().unwrap();
        let seen = max_token.entry(lock.to_owned()).or_default();
        if token <= *seen {
            self.violations.lock().unwrap().push(format!(
                "lock {lock}: client {client} wrote with token {token} after token {seen}"
            ));
        }
        *seen = token.max(*seen);
        let mut inside = self.inside.lock().unwrap();
        if let Some((other, other_token)) = inside.get(lock) {
            self.violations.lock().unwrap().push(format!(
                "lock {lock}: client {client} (token {token}) entered while client {other} (token {other_token}) was inside"
            ));
        }
        inside.insert(lock.to_owned(), (client, token));
    }

    pub fn leave(&self, lock: &str, client: usize) {
        let mut inside = self.inside.lock().unwrap();
        if inside.get(lock).is_some_and(|(c, _)| *c == client) {
            inside.remove(lock);
        }
    }
}

/// What a workload run observed.
#[derive(Default)]
pub struct WorkloadResult {
    pub records: Vec<HoldRecord>,
    pub failed_ops: usize,
}

/// `clients` tasks hammer `locks` lock names for `duration`: acquire (queued), write the
/// resource, release. A client whose request fails for good abandons its session (closing it
/// best-effort) and opens a new one, so no hold is left behind unknowingly.
pub async fn run_workload(
    client: &Client,
    clients: usize,
    locks: usize,
    duration: Duration,
    resource: Arc<Resource>,
) -> WorkloadResult {
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for index in 0..clients {
        let client = client.clone();
        let resource = Arc::clone(&resource);
        tasks.push(tokio::spawn(async move {
            workload_client(index, client, locks, end, resource).await
        }));
    }
    let mut result = WorkloadResult::default();
    for task in tasks {
        let (records, failed) = task.await.expect("workload client panicked");
        result.records.extend(records);
        result.failed_ops += failed;
    }
    result
}

async fn workload_client(
    index: usize,
    client: Client,
    locks: usize,
    end: Instant,
    resource: Arc<Resource>,
) -> (Vec<HoldRecord>, usize) {
    let mut records = Vec::new();
    let mut failed = 0;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (index as u64 + 1);
    let mut session: Option<Session> = None;
    while Instant::now() < end {
        let current = match &session {
            Some(s) => s,
            None => match client
                .open_session(WORKLOAD_TTL_MS, &format!("client-{index}"))
                .await
            {
                Ok(s) => session.insert(s),
                Err(_) => {
                    failed += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let lock = format!("lock-{}", rng % locks as u64);
        let invoked = std::time::Instant::now();
        match current
            .acquire(&lock, LockMode::Exclusive, WORKLOAD_WAIT_MS)
            .await
        {
            Ok(Some(hold)) => {
                let acknowledged = std::time::Instant::now();
                resource.enter(&lock, index, hold.token);
                tokio::time::sleep(Duration::from_millis(1 + rng % 3)).await;
                resource.leave(&lock, index);
                let released_at = current.release(&hold).await.ok();
                records.push(HoldRecord {
                    client: index,
                    lock,
                    token: hold.token,
                    released_at,
                    invoked,
                    acknowledged,
                });
                if released_at.is_none() {
                    failed += 1;
                    abandon(&mut session).await;
                }
            }
            Ok(None) => {}
            Err(_) => {
                failed += 1;
                abandon(&mut session).await;
            }
        }
    }
    if let Some(s) = session.take() {
        let _ = s.close().await;
    }
    (records, failed)
}

async fn abandon(session: &mut Option<Session>) {
    if let Some(s) = session.take() {
        let _ = s.close().await;
    }
}

/// A raw Locks client on one node, without retries (to observe exact statuses).
pub async fn raw_locks(addr: &str) -> pb::locks_client::LocksClient<Channel> {
    pb::locks_client::LocksClient::new(raw_channel(addr).await)
}

pub async fn raw_sessions(addr: &str) -> pb::sessions_client::SessionsClient<Channel> {
    pb::sessions_client::SessionsClient::new(raw_channel(addr).await)
}

async fn raw_channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

pub fn acquire_request(
    session_id: u64,
    request_id: u64,
    name: &str,
    wait_timeout_ms: u64,
) -> pb::AcquireRequest {
    pb::AcquireRequest {
        session_id,
        request_id,
        name: name.to_owned(),
        mode: pb::LockMode::Exclusive as i32,
        max_holders: 0,
        wait_timeout_ms,
        priority: 0,
    }
}

/// Waits (bounded) until `done` holds for the lock's Describe answer (`None` = no such lock).
pub async fn wait_for_lock(
    client: &holdfast_client::Client,
    name: &str,
    done: impl Fn(Option<&pb::LockInfo>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lock = client.describe(name).await.expect("describe").lock;
        if done(lock.as_ref()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lock {name} never reached the awaited state: {lock:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `holdfast` CLI pointed at every node of `cluster` (killed if the test drops it).
pub fn holdfast_cli(cluster: &Cluster) -> tokio::process::Command {
    let endpoints: Vec<&str> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.addr(id))
        .collect();
    let mut command = tokio::process::Command::new(holdfast_bin());
    command
        .env("HOLDFAST_ENDPOINTS", endpoints.join(","))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    command
}
