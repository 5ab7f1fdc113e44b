//! The software of each kind of simulated host: the nodes (the real server on the simulated
//! disk and network), the admin (deploys the run's policies, then churns them and samples the
//! priority queues), the clients (the torture workload), one watcher per node, and the final
//! linearizable read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_server::config::{NodeConfig, RaftTiming};
use holdfast_server::policy::cache::SharedModules;
use holdfast_server::server::{Environment, start_with};
use holdfast_tests::history::{QueueSample, WatchStream};
use holdfast_tests::torture::workload::{ClientHandle, Shared};
use holdfast_tests::torture::{self, policies, watcher};

use crate::disk::Disk;
use crate::nemesis::Registry;
use crate::net;

/// A node snapshots (and purges its log up to `SNAPSHOT_KEEP_ENTRIES` behind) once this many
/// entries were applied since its last snapshot (or more, on a large state): lagging and
/// restarted nodes are then caught up by snapshot installs too.
const SNAPSHOT_EVERY_ENTRIES: u64 = 400;
const SNAPSHOT_KEEP_ENTRIES: u64 = 100;
/// The determinism guard records a state digest every this many entries.
const CHECKPOINT_EVERY_ENTRIES: u64 = 50;
/// Tries at deploying the run's policies before the run gives up.
const INSTALL_ATTEMPTS: u32 = 50;
const INSTALL_RETRY_MS: u64 = 200;
/// How often a client checks whether the policies are in place yet.
const INSTALLED_POLL_MS: u64 = 10;

pub(crate) fn node_config(id: u64, nodes: u64) -> NodeConfig {
    NodeConfig {
        id,
        listen: format!("0.0.0.0:{}", net::PORT),
        advertise: Some(net::node_addr(id)),
        peers: (1..=nodes)
            .map(|peer| (peer, net::node_addr(peer)))
            .collect(),
        routes: BTreeMap::new(),
        data_dir: std::path::PathBuf::from(format!("/simulated/n{id}")),
        raft: RaftTiming {
            // Snapshots and log purges every few hundred entries, so that lagging and
            // restarted nodes are caught up by snapshot installs too.
            snapshot_every_entries: SNAPSHOT_EVERY_ENTRIES,
            snapshot_keep_entries: SNAPSHOT_KEEP_ENTRIES,
            ..RaftTiming::default()
        },
        allow_admin: true,
        checkpoint_every_entries: CHECKPOINT_EVERY_ENTRIES,
        metrics_listen: None,
        token_file: None,
        tls: None,
        cluster_id: "holdfast-sim".to_owned(),
    }
}

/// One incarnation of node `id`: opens its disk (losing what was not synced), serves until
/// openraft stops on a storage error, then ends (the nemesis restarts it).
pub(crate) async fn run_node(
    id: u64,
    nodes: u64,
    disk: Disk,
    registry: Registry,
    modules: Arc<SharedModules>,
) -> turmoil::Result {
    let environment = Environment {
        log: disk.open(),
        snapshots: Arc::new(disk.clone()),
        incoming: net::incoming().await?,
        dial: Some(net::dial()),
        // The simulated disk's syncs take simulated time; nobody reads their latency.
        fsyncs: None,
        policy_modules: Some(modules),
    };
    let running = start_with(node_config(id, nodes), environment)
        .await
        .map_err(|error| format!("node {id} failed to start: {error:#}"))?;
    registry
        .lock()
        .expect("registry")
        .insert(id, Arc::clone(&running.node));
    let reason = running.failed().await;
    tracing::info!(node = id, %reason, "node stopped");
    registry.lock().expect("registry").remove(&id);
    Ok(())
}

/// The admin host: deploys and binds the run's policies (then sets `installed`), churns them
/// until `stop_churn`, and samples the priority queues until `stop_sampling`.
pub(crate) async fn run_admin(
    nodes: Vec<u64>,
    seed: u64,
    shared: Arc<Shared>,
    installed: Arc<AtomicBool>,
    stop_churn: Arc<AtomicBool>,
    stop_sampling: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<QueueSample>>>,
) -> turmoil::Result {
    let admin = net::client(&nodes, 0);
    let mut attempts = 0;
    while let Err(error) = policies::install(&admin).await {
        attempts += 1;
        if attempts == INSTALL_ATTEMPTS {
            return Err(format!("deploying the run's policies failed: {error}").into());
        }
        tokio::time::sleep(Duration::from_millis(INSTALL_RETRY_MS)).await;
    }
    installed.store(true, Ordering::Relaxed);
    let sampler = tokio::spawn(policies::sample_priority_queues(
        admin.clone(),
        stop_sampling,
    ));
    policies::churn(admin, shared, stop_churn, seed).await;
    *samples.lock().expect("samples") = sampler.await.unwrap_or_default();
    Ok(())
}

/// Client `index` of the torture workload, once the policies are in place.
pub(crate) async fn run_client(
    nodes: Vec<u64>,
    index: usize,
    seed: u64,
    shared: Arc<Shared>,
    handle: Arc<ClientHandle>,
    installed: Arc<AtomicBool>,
) -> turmoil::Result {
    while !installed.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(INSTALLED_POLL_MS)).await;
    }
    let client = net::client(&nodes, index);
    torture::workload::run_client(shared, handle, client, index, seed).await;
    Ok(())
}

/// The watcher of node `id`: its stream of the replicated record, from revision 1 on.
pub(crate) async fn run_watcher(
    id: u64,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<WatchStream>>>,
) -> turmoil::Result {
    let stream = watcher::watch_node(id, net::client(&[id], 0), stop).await;
    streams.lock().expect("streams").push(stream);
    Ok(())
}

/// The final linearizable read of every lock: (revision, lock → holders' tokens).
pub(crate) type FinalRead = Option<(u64, BTreeMap<String, Vec<u64>>)>;

pub(crate) async fn run_final_read(
    nodes: Vec<u64>,
    read: Arc<Mutex<FinalRead>>,
) -> turmoil::Result {
    let reader = net::client(&nodes, 0);
    *read.lock().expect("final read") = torture::read_every_lock(&reader).await.ok();
    Ok(())
}
