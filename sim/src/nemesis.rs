//! The simulation's faults, one at a time, drawn from the run's seed and injected between
//! simulation steps: crash-restarts that lose the unsynced log, a paused node (all its links
//! held, then released), partitions (isolated leader, a node cut from its peers, one-way),
//! slow and lossy links, a slow disk and a failed fsync.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use holdfast_server::node::Node;
use holdfast_tests::history::{Fault, FaultKind, Micros};
use holdfast_tests::torture::rng::Rng;
use holdfast_tests::torture::workload::ClientHandle;

use crate::disk::Disk;

/// Every fault kind the simulator injects.
pub const SIM_FAULTS: [FaultKind; 12] = [
    FaultKind::KillNode,
    FaultKind::KillLeader,
    FaultKind::PauseLeader,
    FaultKind::IsolateLeader,
    FaultKind::PartitionMajority,
    FaultKind::OneWayPartition,
    FaultKind::Blackhole,
    FaultKind::SlowLinks,
    FaultKind::LossyLinks,
    FaultKind::SlowDisk,
    FaultKind::FailedFsync,
    FaultKind::PauseClient,
];

/// Latency of a healthy link (ms, the most a message takes).
pub const LINK_MS: u64 = 2;
/// Latency of a slow link.
const SLOW_LINK_MS: u64 = 60;
/// Chance per step (1 ms) that a lossy link breaks for a step.
const LOSSY_FAIL_RATE: f64 = 0.02;
/// Extra time every fsync takes on a slow disk.
const SLOW_DISK_MS: u64 = 40;
/// How long a fault stays in force (ms).
const FAULT_HOLD_MS: (u64, u64) = (300, 3_000);
/// How far past its session's TTL a frozen client stays frozen (ms).
const PAUSE_PAST_TTL_MS: (u64, u64) = (500, 3_000);
/// How soon a quickly restarted node comes back (ms).
const QUICK_RESTART_MS: (u64, u64) = (20, 200);
/// Longest a client may wait for the grant after which it takes a requested pause.
const PAUSE_GRANT_WAIT_MS: u64 = 2_000;
/// How long a node that stopped (a failed fsync) stays down before it is restarted.
const RESTART_AFTER_FAILURE_MS: u64 = 300;

/// The running nodes, for the nemesis and the samplers (a node removes itself when it stops).
pub type Registry = Arc<Mutex<BTreeMap<u64, Arc<Node>>>>;

pub fn host(id: u64) -> String {
    format!("n{id}")
}

/// A fault in force and how to undo it.
struct Active {
    index: usize,
    heal_at: Micros,
    heal: Heal,
}

enum Heal {
    Restart(u64),
    Release(u64),
    Repair(Vec<(String, String)>),
    RepairOneWay(String, String),
    Latency(u64),
    Lossless(u64),
    FastDisk(u64),
    Nothing,
}

/// What the nemesis can strike.
pub struct Targets {
    pub nodes: Vec<u64>,
    /// Every host name (nodes, clients, watchers): an isolated node is cut from all of them.
    pub hosts: Vec<String>,
    pub disks: BTreeMap<u64, Disk>,
    pub registry: Registry,
    /// The workload's clients (a paused client stops past its session's TTL).
    pub clients: Vec<Arc<ClientHandle>>,
}

/// When and what it strikes.
pub struct Plan {
    pub kinds: Vec<FaultKind>,
    /// A new fault every `every_ms.0..=every_ms.1` ms once the last one healed.
    pub every_ms: (u64, u64),
    pub session_ttl_ms: u64,
    /// When the fault phase ends.
    pub fault_end: Micros,
}

pub struct Nemesis {
    rng: Rng,
    nodes: Vec<u64>,
    /// Every host name (nodes, clients, watchers): an isolated node is cut from all of them.
    hosts: Vec<String>,
    disks: BTreeMap<u64, Disk>,
    registry: Registry,
    kinds: Vec<FaultKind>,
    active: Option<Active>,
    next_at: Micros,
    every_ms: (u64, u64),
    /// Nodes found stopped (failed fsync) and when they were noticed.
    stopped: BTreeMap<u64, Micros>,
    /// The workload's clients (a paused client stops past its session's TTL).
    clients: Vec<Arc<ClientHandle>>,
    session_ttl_ms: u64,
    /// When the fault phase ends.
    fault_end: Micros,
    pub faults: Vec<Fault>,
}

impl Nemesis {
    pub fn new(seed: u64, targets: Targets, plan: Plan) -> Nemesis {
        let mut rng = Rng::new(seed ^ 0x006e_656d_6573_6973);
        let next_at = rng.between(plan.every_ms.0, plan.every_ms.1) * 1_000;
        Nemesis {
            rng,
            nodes: targets.nodes,
            hosts: targets.hosts,
            disks: targets.disks,
            registry: targets.registry,
            kinds: plan.kinds,
            active: None,
            next_at,
            every_ms: plan.every_ms,
            stopped: BTreeMap::new(),
            clients: targets.clients,
            session_ttl_ms: plan.session_ttl_ms,
            fault_end: plan.fault_end,
            faults: Vec::new(),
        }
    }

    fn leader(&self) -> Option<u64> {
        let registry = self.registry.lock().expect("registry");
        registry
            .values()
            .find(|node| node.leader().0 == Some(node.id))
            .map(|node| node.id)
    }

    fn any_node(&mut self) -> u64 {
        *self.rng.pick(&self.nodes)
    }

    fn others(&self, of: u64) -> Vec<u64> {
        self.nodes.iter().copied().filter(|id| *id != of).collect()
    }

    /// Restarts nodes that stopped on their own (a failed fsync) after a short while.
    fn restart_stopped(&mut self, sim: &mut turmoil::Sim<'_>, now: Micros) {
        for id in self.nodes.clone() {
            if !sim.is_host_running(host(id)) {
                let since = *self.stopped.entry(id).or_insert(now);
                let crashed = matches!(&self.active, Some(Active { heal: Heal::Restart(down), .. }) if *down == id);
                if !crashed && now >= since + RESTART_AFTER_FAILURE_MS * 1_000 {
                    sim.bounce(host(id));
                    self.stopped.remove(&id);
                }
            } else {
                self.stopped.remove(&id);
            }
        }
    }

    /// Heals what is due and injects the next fault when its time comes (`faults_on`: still in
    /// the fault phase).
    pub fn step(&mut self, sim: &mut turmoil::Sim<'_>, now: Micros) {
        let faults_on = now < self.fault_end;
        if !faults_on {
            // A pause requested but not yet taken is not taken any more.
            for client in &self.clients {
                client.pause_ms.store(0, Ordering::Relaxed);
            }
        }
        self.restart_stopped(sim, now);
        if self.active.as_ref().is_some_and(|a| now >= a.heal_at) {
            self.heal(sim, now);
        }
        if faults_on && self.active.is_none() && now >= self.next_at {
            self.inject(sim, now);
            self.next_at = now + self.rng.between(self.every_ms.0, self.every_ms.1) * 1_000;
        }
    }

    pub fn heal(&mut self, sim: &mut turmoil::Sim<'_>, now: Micros) {
        let Some(active) = self.active.take() else {
            return;
        };
        match active.heal {
            Heal::Restart(id) => sim.bounce(host(id)),
            Heal::Release(id) => {
                for other in self.hosts.iter().filter(|h| **h != host(id)) {
                    sim.release(host(id), other.as_str());
                }
            }
            Heal::Repair(pairs) => {
                for (a, b) in pairs {
                    sim.repair(a, b);
                }
            }
            Heal::RepairOneWay(from, to) => sim.repair_oneway(from, to),
            Heal::Latency(id) => {
                for other in self.others(id) {
                    sim.set_link_max_message_latency(
                        host(id),
                        host(other),
                        std::time::Duration::from_millis(LINK_MS),
                    );
                }
            }
            Heal::Lossless(id) => {
                for other in self.others(id) {
                    sim.set_link_fail_rate(host(id), host(other), 0.0);
                    sim.repair(host(id), host(other));
                }
            }
            Heal::FastDisk(id) => self.disks[&id].set_slow(0),
            Heal::Nothing => {}
        }
        self.faults[active.index].end = Some(now);
    }

    fn inject(&mut self, sim: &mut turmoil::Sim<'_>, now: Micros) {
        let kind = *self.rng.pick(&self.kinds);
        if kind == FaultKind::PauseClient {
            // Taken by the client right after its next exclusive grant, and recorded by it;
            // never so late that the pause could outlast the fault phase.
            let ms =
                self.session_ttl_ms + self.rng.between(PAUSE_PAST_TTL_MS.0, PAUSE_PAST_TTL_MS.1);
            if now + (ms + PAUSE_GRANT_WAIT_MS) * 1_000 < self.fault_end {
                let client = self.rng.pick(&self.clients);
                client.pause_ms.store(ms, Ordering::Relaxed);
            }
            return;
        }
        let leader = self.leader();
        let any = self.any_node();
        let target = leader.unwrap_or(any);
        let mut hold_ms = self.rng.between(FAULT_HOLD_MS.0, FAULT_HOLD_MS.1);
        let (detail, heal) = match kind {
            FaultKind::KillNode | FaultKind::KillLeader => {
                let id = if kind == FaultKind::KillNode {
                    any
                } else {
                    target
                };
                sim.crash(host(id));
                self.registry.lock().expect("registry").remove(&id);
                // A third of the crashes restart at once (a supervisor's restart), often
                // before the others notice the node was gone.
                if self.rng.below(3) == 0 {
                    hold_ms = self.rng.between(QUICK_RESTART_MS.0, QUICK_RESTART_MS.1);
                }
                (
                    format!("crashed node {id}, restarted after {hold_ms} ms"),
                    Heal::Restart(id),
                )
            }
            FaultKind::PauseLeader => {
                for other in self.hosts.iter().filter(|h| **h != host(target)) {
                    sim.hold(host(target), other.as_str());
                }
                (
                    format!("paused node {target} (links held)"),
                    Heal::Release(target),
                )
            }
            FaultKind::IsolateLeader | FaultKind::Blackhole => {
                let id = if kind == FaultKind::IsolateLeader {
                    target
                } else {
                    any
                };
                let pairs = self
                    .hosts
                    .iter()
                    .filter(|h| **h != host(id))
                    .map(|h| (host(id), h.clone()))
                    .collect();
                (format!("node {id} cut from every host"), cut(sim, pairs))
            }
            FaultKind::PartitionMajority => {
                let pairs = self
                    .others(any)
                    .into_iter()
                    .map(|other| (host(any), host(other)))
                    .collect();
                (format!("node {any} cut from its peers"), cut(sim, pairs))
            }
            FaultKind::OneWayPartition => {
                let others = self.others(any);
                let to = *self.rng.pick(&others);
                sim.partition_oneway(host(any), host(to));
                (
                    format!("node {any} cannot reach node {to}"),
                    Heal::RepairOneWay(host(any), host(to)),
                )
            }
            FaultKind::SlowLinks => {
                for other in self.others(any) {
                    sim.set_link_max_message_latency(
                        host(any),
                        host(other),
                        std::time::Duration::from_millis(SLOW_LINK_MS),
                    );
                }
                (
                    format!("node {any}'s links up to {SLOW_LINK_MS} ms"),
                    Heal::Latency(any),
                )
            }
            FaultKind::LossyLinks => {
                for other in self.others(any) {
                    sim.set_link_fail_rate(host(any), host(other), LOSSY_FAIL_RATE);
                }
                (format!("node {any}'s links lossy"), Heal::Lossless(any))
            }
            FaultKind::SlowDisk => {
                self.disks[&target].set_slow(SLOW_DISK_MS);
                (
                    format!("node {target}'s fsyncs take {SLOW_DISK_MS} ms more"),
                    Heal::FastDisk(target),
                )
            }
            FaultKind::FailedFsync => {
                self.disks[&target].fail_next_fsync();
                (format!("node {target}'s next fsync fails"), Heal::Nothing)
            }
            other => unreachable!("the simulator does not inject {other:?}"),
        };
        self.faults.push(Fault {
            kind,
            detail,
            start: now,
            end: None,
        });
        self.active = Some(Active {
            index: self.faults.len() - 1,
            heal_at: now + hold_ms * 1_000,
            heal,
        });
    }
}

/// Partitions every pair of `pairs`; how to heal it.
fn cut(sim: &mut turmoil::Sim<'_>, pairs: Vec<(String, String)>) -> Heal {
    for (a, b) in &pairs {
        sim.partition(a.as_str(), b.as_str());
    }
    Heal::Repair(pairs)
}
