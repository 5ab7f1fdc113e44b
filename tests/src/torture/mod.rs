//! The fault-injection run ("torture"): a real cluster of `holdfast serve` processes on
//! 127.0.0.1 with every peer and client link behind the harness's proxies, a workload of
//! clients writing to a fenced resource (half of its locks under wasm policies that are
//! redeployed and rebound as it runs), a nemesis injecting faults from a seed, one watcher per
//! node recording the replicated record and a poller recording every node's checkpoint
//! digests, then a quiet phase, a final linearizable read and the checkers
//! (`crate::checkers`). Used by the smoke test (`tests/it/torture.rs`) and the long-run
//! command (`src/bin/torture.rs`).

pub mod nemesis;
pub mod policies;
pub mod resource;
pub mod rng;
pub mod watcher;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use holdfast_client::Client;
use tokio::time::Instant;

use crate::checkers;
use crate::cluster::{Cluster, ClusterOptions, LIBFAKETIME, can_mount_tmpfs};
use crate::history::{FaultKind, History, Outcome};
use nemesis::Nemesis;
use workload::{ClientHandle, LOCK_PREFIX, Shared};

/// Size of each node's tmpfs data disk (the disk-full fault fills it).
pub const DISK_MB: u64 = 512;
/// How long the end of the run waits for every node to reach the same applied index and digest.
const CONVERGE_TIMEOUT_MS: u64 = 60_000;
/// After convergence, how long the watchers get to deliver the last revisions.
const WATCH_DRAIN_MS: u64 = 2_000;

pub const ALL_FAULTS: [FaultKind; 12] = [
    FaultKind::KillNode,
    FaultKind::KillLeader,
    FaultKind::PauseLeader,
    FaultKind::PauseClient,
    FaultKind::IsolateLeader,
    FaultKind::PartitionMajority,
    FaultKind::PartitionBridge,
    FaultKind::OneWayPartition,
    FaultKind::Blackhole,
    FaultKind::SlowLinks,
    FaultKind::ClockJump,
    FaultKind::DiskFull,
];

#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub nodes: u64,
    /// The fault phase.
    pub duration: Duration,
    /// The final quiet phase (no faults; every operation must succeed).
    pub quiet: Duration,
    pub clients: usize,
    pub locks: usize,
    pub session_ttl_ms: u64,
    /// A new fault every `fault_every_ms.0..=fault_every_ms.1` ms.
    pub fault_every_ms: (u64, u64),
    pub kinds: Vec<FaultKind>,
}

impl Config {
    pub fn new(seed: u64, duration: Duration) -> Config {
        Config {
            seed,
            nodes: 3,
            duration,
            quiet: Duration::from_secs(12),
            clients: 12,
            locks: 4,
            session_ttl_ms: 3_000,
            fault_every_ms: (1_500, 4_000),
            kinds: ALL_FAULTS.to_vec(),
        }
    }
}

pub struct Report {
    pub config: Config,
    pub history: History,
    pub skipped: Vec<(FaultKind, String)>,
    pub violations: Vec<(&'static str, Vec<String>)>,
    pub elapsed: Duration,
}

impl Report {
    pub fn violation_count(&self) -> usize {
        self.violations.iter().map(|(_, v)| v.len()).sum()
    }

    pub fn fault_kinds(&self) -> BTreeMap<FaultKind, usize> {
        let mut kinds = BTreeMap::new();
        for fault in &self.history.faults {
            *kinds.entry(fault.kind).or_default() += 1;
        }
        kinds
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "torture seed {} · {} nodes · {} clients on {} locks · faults {:.0} s + quiet {:.0} s · took {:.0} s",
            c.seed,
            c.nodes,
            c.clients,
            c.locks,
            c.duration.as_secs_f64(),
            c.quiet.as_secs_f64(),
            self.elapsed.as_secs_f64()
        )?;
        let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
        for op in &self.history.ops {
            let name = match op.outcome {
                Outcome::Fail(_) => "fail",
                Outcome::Unknown(_) => "unknown",
                _ => "ok",
            };
            *outcomes.entry(name).or_default() += 1;
        }
        let rejected = self
            .history
            .ops
            .iter()
            .filter(|op| op.outcome == Outcome::Written { accepted: false })
            .count();
        let reentrant = self
            .history
            .ops
            .iter()
            .filter(|op| matches!(op.outcome, Outcome::Reacquired { .. }))
            .count();
        writeln!(
            f,
            "operations: {} ({outcomes:?}); stale writes the fenced resource rejected: {rejected}; \
             re-entrant answers (a hold whose release did not take): {reentrant}",
            self.history.ops.len()
        )?;
        // The commonest reasons for operations that did not succeed (message digits dropped so
        // that indexes and durations do not split them).
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for op in &self.history.ops {
            if let Outcome::Fail(reason) | Outcome::Unknown(reason) = &op.outcome {
                let reason: String = reason
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .take(90)
                    .collect();
                *reasons.entry(reason).or_default() += 1;
            }
        }
        let mut reasons: Vec<(String, usize)> = reasons.into_iter().collect();
        reasons.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        for (reason, count) in reasons.iter().take(5) {
            writeln!(f, "  {count:>6} × {reason}")?;
        }
        writeln!(
            f,
            "faults: {} {:?}",
            self.history.faults.len(),
            self.fault_kinds()
        )?;
        for (kind, reason) in &self.skipped {
            writeln!(f, "  skipped {kind:?}: {reason}")?;
        }
        let exits = &self.history.exits;
        writeln!(
            f,
            "node exits on their own: {} ({} fail-stops and {} refused starts on a full disk)",
            exits.len(),
            exits
                .iter()
                .filter(|e| e.disk_full && e.code == Some(74))
                .count(),
            exits
                .iter()
                .filter(|e| e.disk_full && e.code == Some(125))
                .count()
        )?;
        let availability = checkers::availability::measure(&self.history);
        writeln!(
            f,
            "unavailability after kill -9 of the leader (ms to the first acquire): n={} p50={:?} p99={:?} max={:?}",
            availability.leader_kill_recovery_ms.len(),
            availability.percentile(50),
            availability.percentile(99),
            availability.leader_kill_recovery_ms.iter().max()
        )?;
        writeln!(
            f,
            "after the last heal every client succeeded within {:?} ms; quiet phase: {} operations, {} failed",
            availability.heal_recovery_ms, availability.quiet_ops, availability.quiet_failures
        )?;
        let changes = &self.history.policy_changes;
        writeln!(
            f,
            "policies: {} deploys/rebinds during the faults ({} accepted); {} checkpoint indexes compared across replicas; \
             priority queues: {} samples, {} grants judged against a waiter they passed",
            changes.len(),
            changes.iter().filter(|change| change.accepted).count(),
            checkers::digests::compared(&self.history),
            self.history.queue_samples.len(),
            checkers::priority_aging::judged(&self.history)
        )?;
        let record = crate::history::merged_record(&self.history);
        writeln!(
            f,
            "record: {} revisions with events, uncovered ranges {:?}",
            record.len(),
            crate::history::uncovered(&self.history)
        )?;
        for (name, violations) in &self.violations {
            writeln!(f, "checker {name}: {} violations", violations.len())?;
            for violation in violations.iter().take(5) {
                writeln!(f, "    {violation}")?;
            }
        }
        Ok(())
    }
}

/// Runs one fault-injection run and checks it.
pub async fn run(config: Config) -> Report {
    let started = std::time::Instant::now();
    let mut kinds = Vec::new();
    let mut skipped = Vec::new();
    let faketime = std::path::Path::new(LIBFAKETIME).exists();
    let disk = can_mount_tmpfs();
    for kind in &config.kinds {
        match kind {
            FaultKind::ClockJump if !faketime => {
                skipped.push((*kind, format!("{LIBFAKETIME} missing (run scripts/setup)")))
            }
            FaultKind::DiskFull if disk.is_err() => skipped.push((
                *kind,
                format!("cannot mount a tmpfs: {}", disk.clone().unwrap_err()),
            )),
            FaultKind::PartitionBridge if config.nodes < 3 => {
                skipped.push((*kind, "needs 3 or more nodes".into()))
            }
            _ => kinds.push(*kind),
        }
    }
    let mut cluster = Cluster::start_opts(ClusterOptions {
        size: config.nodes,
        // The harness deploys and rebinds policies (admin calls) during the run.
        extra_args: vec!["--allow-admin".to_owned()],
        partitionable: true,
        faketime,
        tmpfs_mb: kinds.contains(&FaultKind::DiskFull).then_some(DISK_MB),
        ..ClusterOptions::default()
    })
    .await;

    let nodes: BTreeMap<u64, String> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.addr(id).to_owned()))
        .collect();
    let addrs: Vec<String> = nodes.values().cloned().collect();
    let admin = Client::connect(&addrs).expect("admin client");
    if let Err(error) = policies::install(&admin).await {
        panic!("deploying the run's policies failed: {error}");
    }
    let stop_watchers = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = cluster
        .ids()
        .into_iter()
        .map(|id| {
            let client = Client::connect(&[cluster.addr(id)]).expect("watch client");
            tokio::spawn(watcher::watch_node(id, client, Arc::clone(&stop_watchers)))
        })
        .collect();
    let shared = Arc::new(Shared {
        clock: Shared::clock_from_now(),
        ops: Default::default(),
        faults: Default::default(),
        resource: Default::default(),
        stop: AtomicBool::new(false),
        session_ttl_ms: config.session_ttl_ms,
        locks: config.locks,
        policy_changes: Default::default(),
    });
    let sampler = tokio::spawn(policies::sample_priority_queues(
        admin.clone(),
        Arc::clone(&stop_watchers),
    ));
    let poller = tokio::spawn(policies::poll_checkpoints(
        nodes,
        Arc::clone(&stop_watchers),
    ));
    let stop_churn = Arc::new(AtomicBool::new(false));
    let churn = tokio::spawn(policies::churn(
        admin,
        Arc::clone(&shared),
        Arc::clone(&stop_churn),
        config.seed,
    ));
    let mut handles = Vec::new();
    let mut clients = Vec::new();
    for index in 0..config.clients {
        let (handle, client) = ClientHandle::with_proxies(&addrs, index).await;
        let handle = Arc::new(handle);
        handles.push(Arc::clone(&handle));
        clients.push(tokio::spawn(workload::run_client(
            Arc::clone(&shared),
            handle,
            client,
            index,
            config.seed.wrapping_mul(1_000).wrapping_add(index as u64),
        )));
    }

    let mut nemesis = Nemesis::new(config.seed, kinds, handles, Arc::clone(&shared));
    let fault_phase_end = Instant::now() + config.duration;
    let mut rng = rng::Rng::new(config.seed ^ 0x5EED);
    let mut next_fault = Instant::now()
        + Duration::from_millis(rng.between(config.fault_every_ms.0, config.fault_every_ms.1));
    while Instant::now() < fault_phase_end {
        nemesis.tick(&mut cluster);
        if Instant::now() >= next_fault {
            nemesis.inject(&mut cluster).await;
            next_fault = Instant::now()
                + Duration::from_millis(
                    rng.between(config.fault_every_ms.0, config.fault_every_ms.1),
                );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nemesis.heal_all(&mut cluster).await;
    // The quiet phase runs without policy changes too.
    stop_churn.store(true, Ordering::Relaxed);
    let _ = churn.await;
    let quiet_from = shared.now();
    let quiet_end = Instant::now() + config.quiet;
    while Instant::now() < quiet_end {
        nemesis.tick(&mut cluster);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }

    // The final linearizable read, then every node's (applied, digest) once they agree.
    let endpoints: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let reader = Client::connect(&endpoints).expect("client");
    let final_read = match read_every_lock(&reader).await {
        Ok(read) => Some(read),
        Err(status) => {
            eprintln!("torture: the final read failed: {status}");
            None
        }
    };
    let final_digests = final_digests(&cluster).await;
    tokio::time::sleep(Duration::from_millis(WATCH_DRAIN_MS)).await;
    stop_watchers.store(true, Ordering::Relaxed);
    let mut streams = Vec::new();
    for watcher in watchers {
        if let Ok(stream) = watcher.await {
            streams.push(stream);
        }
    }
    let checkpoints = poller.await.unwrap_or_default();
    let queue_samples = sampler.await.unwrap_or_default();

    let mut faults = nemesis.faults.clone();
    faults.extend(shared.faults.lock().expect("faults").iter().cloned());
    faults.sort_by_key(|f| f.start);
    let history = History {
        ops: std::mem::take(&mut *shared.ops.lock().expect("ops")),
        streams,
        faults,
        exits: nemesis.exits.clone(),
        resource: shared.resource.contents(),
        final_read,
        quiet_from: Some(quiet_from),
        end: shared.now(),
        final_digests,
        checkpoints,
        policy_changes: std::mem::take(&mut *shared.policy_changes.lock().expect("changes")),
        queue_samples,
    };
    let violations = checkers::check_history(&history);
    let report = Report {
        config,
        history,
        skipped,
        violations,
        elapsed: started.elapsed(),
    };
    if report.violation_count() > 0 {
        eprintln!("{}", cluster.logs_hint());
        // Keep the node logs for the post-mortem.
        cluster.keep_dir();
    }
    report
}

/// A linearizable read of every lock of the workload: (revision, lock → holders' tokens), the
/// locks without holders left out.
pub async fn read_every_lock(
    client: &Client,
) -> Result<(u64, BTreeMap<String, Vec<u64>>), tonic::Status> {
    let list = client.list(LOCK_PREFIX, 0).await?;
    let locks = list
        .locks
        .into_iter()
        .map(|lock| {
            let mut tokens: Vec<u64> = lock.holders.iter().map(|h| h.token).collect();
            tokens.sort_unstable();
            (lock.name, tokens)
        })
        .filter(|(_, tokens)| !tokens.is_empty())
        .collect();
    Ok((list.header.map_or(0, |h| h.revision), locks))
}

/// Polls every node's (applied index, digest) until they agree or the timeout passes; returns
/// the last views.
async fn final_digests(cluster: &Cluster) -> BTreeMap<u64, (u64, String)> {
    let deadline = Instant::now() + Duration::from_millis(CONVERGE_TIMEOUT_MS);
    loop {
        let mut views = BTreeMap::new();
        for id in cluster.ids() {
            let client = Client::connect(&[cluster.addr(id)]).expect("client");
            if let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(2), client.status(0)).await
            {
                views.insert(id, (status.applied_index, status.state_digest));
            }
        }
        let agreed = views.len() == cluster.ids().len()
            && views.values().all(|v| Some(v) == views.values().next());
        if agreed || Instant::now() >= deadline {
            return views;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
