//! holdfast-sim: whole Holdfast clusters in one process, on a simulated network, clock and
//! disk, every choice drawn from one seed.
//!
//! Each node is the real server (`holdfast_server::server::start_with`: openraft, the request
//! paths of `node.rs`, the watch hub, the wasm policy host, the gRPC API) on a turmoil host,
//! its log on a simulated disk ([`disk`]) and its connections on turmoil's TCP ([`net`]).
//! Clients are the real Rust client library on turmoil hosts of their own ([`workload`]), one
//! watcher per node records the replicated record, and the nemesis ([`nemesis`]) injects
//! faults between steps. The fault-injection suite's checkers (`holdfast_tests::checkers`)
//! judge the history.
//!
//! Determinism — every source of it, and how it was brought under the seed:
//! - Scheduling and time: turmoil runs every host on this one thread, in a fixed order, on
//!   simulated time; each host has its own current-thread tokio runtime with a paused clock.
//!   The server reads time only through tokio (`LeaderClock`, leader contact, openraft's
//!   instants); it reads the wall clock on no decision path (`std::time::Instant` only times
//!   metrics).
//! - The network: turmoil draws latencies and lossy-link failures from the seed.
//! - tokio's own generator (which branch of a `select!` is polled first, which waiter a
//!   `watch` channel wakes first): turmoil seeds each host's runtime from the seed
//!   (`Builder::rng_seed`, available under `--cfg tokio_unstable`, set in
//!   `.cargo/config.toml`). Holdfast's own `select!`s are `biased` besides.
//! - openraft's election timeouts: drawn from `server::raft::runtime`'s generator, which
//!   [`run`] seeds for its thread.
//! - Threads outside the simulation: work that `holdfast serve` offloads to tokio's blocking
//!   pool (compiling a policy at deploy, encoding a snapshot) runs inline on a current-thread
//!   runtime (`server::blocking`); the simulated disk has no flusher thread.
//! - Left uncontrolled, and why it does not matter: hyper stamps each response with a `Date`
//!   header from the wall clock, which changes the bytes HPACK writes but not the number of
//!   writes (each write is one turmoil segment, whatever its size); h2 expires locally reset
//!   streams after 30 s of real time, longer than any frame of theirs stays in flight here.
//!   The test `same_seed_same_history` runs a seed twice, tens of seconds apart.

pub mod disk;
mod hosts;
pub mod nemesis;
pub mod net;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use holdfast_server::planted::Bug;
use holdfast_server::policy::cache::SharedModules;
use holdfast_server::policy::module::hex;
use holdfast_tests::checkers;
use holdfast_tests::history::{Checkpoint, FaultKind, History, Micros};
use holdfast_tests::torture::workload::{ClientHandle, Shared};
use sha2::Digest as _;

use disk::Disk;
use nemesis::{Nemesis, Registry, host};
use workload::HeldLinks;

/// One simulated run.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub nodes: u64,
    pub clients: usize,
    pub locks: usize,
    pub session_ttl_ms: u64,
    /// The fault phase, in simulated time.
    pub duration: Duration,
    /// The quiet phase after it (no faults; every operation must succeed).
    pub quiet: Duration,
    /// A new fault every `fault_every_ms.0..=fault_every_ms.1` ms (one at a time).
    pub fault_every_ms: (u64, u64),
    pub kinds: Vec<FaultKind>,
    /// A past bug re-introduced for this run (`holdfast_server::planted`).
    pub plant: Option<Bug>,
}

impl Config {
    pub fn new(seed: u64) -> Config {
        Config {
            seed,
            nodes: 3,
            clients: 6,
            locks: 4,
            session_ttl_ms: 3_000,
            duration: Duration::from_secs(20),
            quiet: Duration::from_secs(8),
            fault_every_ms: (500, 2_000),
            kinds: nemesis::SIM_FAULTS.to_vec(),
            plant: None,
        }
    }
}

/// Simulated time between checkpoint samples.
const SAMPLE_EVERY_MS: u64 = 250;
/// After the clients stop: how long the nodes get to converge and the watchers to drain.
const DRAIN_MS: u64 = 2_000;
/// Beyond the run's phases, simulated time turmoil allows before it calls the run stuck.
const OVERRUN_MS: u64 = 60_000;

pub struct Report {
    pub config: Config,
    pub history: History,
    pub violations: Vec<(&'static str, Vec<String>)>,
    /// Simulated time the run covered.
    pub simulated: Duration,
    /// Wall-clock time it took.
    pub elapsed: Duration,
    /// (fsyncs, log entries lost to crashes) over every node.
    pub disk: (u64, u64),
    /// The run could not finish (the simulation failed or overran); the reason.
    pub aborted: Option<String>,
}

impl Report {
    pub fn violation_count(&self) -> usize {
        self.violations.iter().map(|(_, v)| v.len()).sum::<usize>()
            + usize::from(self.aborted.is_some())
    }

    /// Everything the run observed, as text: equal seeds must give equal bytes.
    pub fn history_text(&self) -> String {
        let h = &self.history;
        let mut text = String::new();
        for op in &h.ops {
            let _ = writeln!(text, "{op:?}");
        }
        for stream in &h.streams {
            let _ = writeln!(text, "{stream:?}");
        }
        for fault in &h.faults {
            let _ = writeln!(text, "{fault:?}");
        }
        let _ = writeln!(text, "{:?}", h.resource);
        let _ = writeln!(text, "{:?}", h.final_read);
        let _ = writeln!(text, "{:?}", h.final_digests);
        for checkpoint in &h.checkpoints {
            let _ = writeln!(text, "{checkpoint:?}");
        }
        text
    }

    pub fn history_hash(&self) -> String {
        hex(&sha2::Sha256::digest(self.history_text().as_bytes())[..8])
    }

    pub fn fault_kinds(&self) -> BTreeMap<FaultKind, usize> {
        let mut kinds = BTreeMap::new();
        for fault in &self.history.faults {
            *kinds.entry(fault.kind).or_default() += 1;
        }
        kinds
    }

    /// One line: seed, counts, hash, violations.
    pub fn summary(&self) -> String {
        let ok = self
            .history
            .ops
            .iter()
            .filter(|op| op.outcome.is_ok())
            .count();
        let planted = self
            .config
            .plant
            .map_or(String::new(), |bug| format!(" (planted: {})", bug.name()));
        format!(
            "seed {}{planted} · {:.0} s simulated in {:.2} s · {} ops ({} ok) · {} faults · {} fsyncs, {} unsynced entries lost · history {} · {}",
            self.config.seed,
            self.simulated.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.history.ops.len(),
            ok,
            self.history.faults.len(),
            self.disk.0,
            self.disk.1,
            self.history_hash(),
            match (&self.aborted, self.violation_count()) {
                (Some(reason), _) => format!("ABORTED: {reason}"),
                (None, 0) => "0 violations".to_owned(),
                (None, n) => format!("{n} VIOLATIONS"),
            }
        )
    }

    /// The violations, one per line, under their checker's name.
    pub fn violations_text(&self) -> String {
        let mut text = String::new();
        if let Some(reason) = &self.aborted {
            let _ = writeln!(text, "aborted: {reason}");
        }
        for (checker, violations) in &self.violations {
            for violation in violations.iter().take(10) {
                let _ = writeln!(text, "{checker}: {violation}");
            }
        }
        text
    }
}

/// Holds (or releases) every link between a client's host and the nodes when the client
/// freezes (or thaws) its links: the client "pause" of the torture workload.
fn freeze_paused_clients(
    sim: &mut turmoil::Sim<'_>,
    links: &[(String, HeldLinks)],
    frozen: &mut BTreeMap<String, bool>,
    nodes: &[u64],
) {
    for (client, held) in links {
        let now_frozen = held.frozen();
        let was = frozen.insert(client.clone(), now_frozen).unwrap_or(false);
        if now_frozen != was {
            for node in nodes {
                if now_frozen {
                    sim.hold(client.as_str(), host(*node));
                } else {
                    sim.release(client.as_str(), host(*node));
                }
            }
        }
    }
}

/// Records every running node's checkpoints not seen before.
fn sample_checkpoints(registry: &Registry, seen: &mut BTreeMap<(u64, u64), String>) {
    for (id, node) in registry.lock().expect("registry").iter() {
        let recent = node
            .shared
            .checkpoints
            .lock()
            .expect("checkpoints")
            .recent();
        for (index, digest) in recent {
            seen.entry((*id, index)).or_insert_with(|| hex(&digest));
        }
    }
}

/// tokio numbers tasks from one process-wide counter, and which tasks of a host run or are shut
/// down first depends on their ids modulo tokio's shard count: seed 2003's history changed with
/// the number of tasks spawned in the process before it — by 1, 2 or 3, not by 4, 8 or 64. So
/// every run starts the counter where a fresh process starts it (1, modulo
/// [`TASK_ID_MODULUS`]): seeds run one after another in one process give the histories they
/// give alone.
pub fn align_task_ids() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let probe = tokio::spawn(async {});
        let id: u64 = probe
            .id()
            .to_string()
            .parse()
            .expect("a task id is a number");
        let _ = probe.await;
        // The next task would get id + 1; spawn until it gets 1 (mod TASK_ID_MODULUS).
        for _ in 0..(TASK_ID_MODULUS - id % TASK_ID_MODULUS) % TASK_ID_MODULUS {
            let _ = tokio::spawn(async {}).await;
        }
    });
}

/// A multiple of tokio's task shard count (4 on a current-thread runtime), with room to spare.
pub const TASK_ID_MODULUS: u64 = 64;

/// Runs one seed to the end and judges its history.
pub fn run(config: Config) -> Report {
    let started = std::time::Instant::now();
    align_task_ids();
    holdfast_server::raft::runtime::seed_thread_rng(Some(config.seed));
    holdfast_server::planted::plant(config.plant);
    let fault_end = config.duration.as_micros() as Micros;
    let quiet_end = fault_end + config.quiet.as_micros() as Micros;
    let drain_end = quiet_end + DRAIN_MS * 1_000;
    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::ZERO)
        .max_message_latency(Duration::from_millis(nemesis::LINK_MS))
        .simulation_duration(Duration::from_micros(drain_end) + Duration::from_millis(OVERRUN_MS))
        .build();

    let node_ids: Vec<u64> = (1..=config.nodes).collect();
    let registry: Registry = Arc::default();
    let disks: BTreeMap<u64, Disk> = node_ids.iter().map(|id| (*id, Disk::default())).collect();
    let mut host_names = Vec::new();
    // One compiled copy of each policy module for the whole run (a fresh store per seed: no
    // state crosses from one seed to the next).
    let modules = SharedModules::new().expect("the policy engine");
    for &id in &node_ids {
        let (disk, registry, nodes) = (disks[&id].clone(), Arc::clone(&registry), config.nodes);
        let modules = Arc::clone(&modules);
        sim.host(host(id), move || {
            hosts::run_node(
                id,
                nodes,
                disk.clone(),
                Arc::clone(&registry),
                Arc::clone(&modules),
            )
        });
        host_names.push(host(id));
    }
    let shared = Arc::new(Shared {
        clock: Box::new(workload::now),
        ops: Default::default(),
        faults: Default::default(),
        resource: Default::default(),
        stop: AtomicBool::new(false),
        session_ttl_ms: config.session_ttl_ms,
        locks: config.locks,
        policy_changes: Default::default(),
    });
    // The policies are deployed and bound before any client starts (the checkers judge the
    // policy-bound locks by their policies' rules for the whole run).
    let installed = Arc::new(AtomicBool::new(false));
    let stop_watchers = Arc::new(AtomicBool::new(false));
    let stop_churn = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    sim.client(
        "admin",
        hosts::run_admin(
            node_ids.clone(),
            config.seed,
            Arc::clone(&shared),
            Arc::clone(&installed),
            Arc::clone(&stop_churn),
            Arc::clone(&stop_watchers),
            Arc::clone(&samples),
        ),
    );
    host_names.push("admin".to_owned());
    let mut links = Vec::new();
    let mut handles = Vec::new();
    for index in 0..config.clients {
        let name = format!("c{index}");
        let held = HeldLinks::default();
        links.push((name.clone(), held.clone()));
        let handle = Arc::new(ClientHandle::new(Box::new(held)));
        handles.push(Arc::clone(&handle));
        let seed = config.seed.wrapping_mul(1_000).wrapping_add(index as u64);
        sim.client(
            name.as_str(),
            hosts::run_client(
                node_ids.clone(),
                index,
                seed,
                Arc::clone(&shared),
                handle,
                Arc::clone(&installed),
            ),
        );
        host_names.push(name);
    }
    let streams = Arc::new(Mutex::new(Vec::new()));
    for &id in &node_ids {
        let name = format!("w{id}");
        let watcher = hosts::run_watcher(id, Arc::clone(&stop_watchers), Arc::clone(&streams));
        sim.client(name.as_str(), watcher);
        host_names.push(name);
    }
    let final_read = Arc::new(Mutex::new(None));
    let targets = nemesis::Targets {
        nodes: node_ids.clone(),
        hosts: host_names,
        disks: disks.clone(),
        registry: Arc::clone(&registry),
        clients: handles,
    };
    let plan = nemesis::Plan {
        kinds: config.kinds.clone(),
        every_ms: config.fault_every_ms,
        session_ttl_ms: config.session_ttl_ms,
        fault_end,
    };
    let mut nemesis = Nemesis::new(config.seed, targets, plan);

    let mut frozen: BTreeMap<String, bool> = BTreeMap::new();
    let mut checkpoints = BTreeMap::new();
    let mut next_sample = 0;
    let mut healed = false;
    let mut reader_started = false;
    let mut aborted = None;
    loop {
        let now = sim.elapsed().as_micros() as Micros;
        nemesis.step(&mut sim, now);
        if now >= fault_end && !healed {
            nemesis.heal(&mut sim, now);
            stop_churn.store(true, Ordering::Relaxed);
            healed = true;
        }
        freeze_paused_clients(&mut sim, &links, &mut frozen, &node_ids);
        if now >= quiet_end && !reader_started {
            shared.stop.store(true, Ordering::Relaxed);
            reader_started = true;
            let read = hosts::run_final_read(node_ids.clone(), Arc::clone(&final_read));
            sim.client("final", read);
        }
        if now >= drain_end {
            stop_watchers.store(true, Ordering::Relaxed);
        }
        if now >= next_sample {
            sample_checkpoints(&registry, &mut checkpoints);
            next_sample = now + SAMPLE_EVERY_MS * 1_000;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                aborted = Some(error.to_string());
                break;
            }
        }
    }
    sample_checkpoints(&registry, &mut checkpoints);
    let simulated = sim.elapsed();
    let final_digests = registry
        .lock()
        .expect("registry")
        .iter()
        .map(|(id, node)| {
            let view = node
                .shared
                .read(|state| (state.applied_index(), hex(&state.digest())));
            (*id, view)
        })
        .collect();
    let mut faults = nemesis.faults.clone();
    faults.extend(shared.faults.lock().expect("faults").iter().cloned());
    faults.sort_by_key(|f| f.start);
    let mut streams = std::mem::take(&mut *streams.lock().expect("streams"));
    streams.sort_by_key(|stream| stream.node);
    let history = History {
        ops: std::mem::take(&mut *shared.ops.lock().expect("ops")),
        streams,
        faults,
        exits: Vec::new(),
        resource: shared.resource.contents(),
        final_read: final_read.lock().expect("final read").take(),
        quiet_from: Some(fault_end),
        end: simulated.as_micros() as Micros,
        final_digests,
        checkpoints: checkpoints
            .into_iter()
            .map(|((node, index), digest)| Checkpoint {
                node,
                index,
                digest,
            })
            .collect(),
        policy_changes: std::mem::take(&mut *shared.policy_changes.lock().expect("changes")),
        queue_samples: std::mem::take(&mut *samples.lock().expect("samples")),
    };
    let violations = checkers::check_history(&history);
    let disk = disks.values().fold((0, 0), |(fsyncs, lost), disk| {
        let (f, l) = disk.counters();
        (fsyncs + f, lost + l)
    });
    drop(sim);
    holdfast_server::raft::runtime::seed_thread_rng(None);
    holdfast_server::planted::plant(None);
    Report {
        config,
        history,
        violations,
        simulated,
        elapsed: started.elapsed(),
        disk,
        aborted,
    }
}
