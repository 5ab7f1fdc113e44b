//! The nemesis: one fault every few seconds (chosen from the seed), healed after a while,
//! sometimes overlapping. At most one process fault (kill, pause, full disk) and one network
//! fault (partitions, blackholes, slow links) are active at once — on 3 nodes not both, so a
//! majority can still make progress between faults; client pauses and clock jumps overlap
//! with anything.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use holdfast_client::Client;
use tokio::time::Instant;

use super::rng::Rng;
use super::workload::{ClientHandle, Shared};
use crate::cluster::{Cluster, TEST_ELECTION_TIMEOUT_MAX_MS};
use crate::history::{Fault, FaultKind, Micros, NodeExit};
use crate::proxy::LinkMode;

/// A node that exits within this long after its disk was freed still counts as a disk-full
/// fail-stop (it may notice the failure late).
const DISK_FULL_GRACE_MS: u64 = 10_000;
/// How long a status call may take when looking for the leader.
const STATUS_TIMEOUT_MS: u64 = 500;
/// Chunk written while filling a disk.
const FILL_CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Process,
    Network,
    Independent,
}

fn class(kind: FaultKind) -> Class {
    match kind {
        FaultKind::KillNode
        | FaultKind::KillLeader
        | FaultKind::PauseLeader
        | FaultKind::DiskFull => Class::Process,
        FaultKind::IsolateLeader
        | FaultKind::PartitionMajority
        | FaultKind::PartitionBridge
        | FaultKind::OneWayPartition
        | FaultKind::Blackhole
        | FaultKind::SlowLinks => Class::Network,
        FaultKind::PauseClient | FaultKind::ClockJump => Class::Independent,
        FaultKind::SlowDisk | FaultKind::FailedFsync | FaultKind::LossyLinks => {
            unreachable!("{kind:?} is injected only by the simulator")
        }
    }
}

/// How an active fault is undone.
enum Heal {
    Restart(u64),
    Continue(u64),
    Links(Vec<(u64, u64)>),
    FreeDisk(u64),
    Clock(u64),
}

struct Active {
    fault: usize,
    class: Class,
    until: Instant,
    heal: Heal,
}

pub struct Nemesis {
    rng: Rng,
    kinds: Vec<FaultKind>,
    active: Vec<Active>,
    pub faults: Vec<Fault>,
    pub exits: Vec<NodeExit>,
    /// node → when its disk was last full (None = now).
    disk_full: BTreeMap<u64, Option<Instant>>,
    /// Nodes that exited on a full disk and wait for it to be freed.
    awaiting_disk: Vec<u64>,
    clients: Vec<Arc<ClientHandle>>,
    shared: Arc<Shared>,
}

impl Nemesis {
    pub fn new(
        seed: u64,
        kinds: Vec<FaultKind>,
        clients: Vec<Arc<ClientHandle>>,
        shared: Arc<Shared>,
    ) -> Nemesis {
        Nemesis {
            rng: Rng::new(seed),
            kinds,
            active: Vec::new(),
            faults: Vec::new(),
            exits: Vec::new(),
            disk_full: BTreeMap::new(),
            awaiting_disk: Vec::new(),
            clients,
            shared,
        }
    }

    fn now(&self) -> Micros {
        self.shared.now()
    }

    /// Heals what is due, notices nodes that exited by themselves (restarting them unless their
    /// disk is still full).
    pub fn tick(&mut self, cluster: &mut Cluster) {
        let now = Instant::now();
        let (due, keep): (Vec<Active>, Vec<Active>) =
            self.active.drain(..).partition(|a| a.until <= now);
        self.active = keep;
        for active in due {
            self.heal(cluster, active);
        }
        for id in cluster.ids() {
            if let Some(code) = cluster.exited(id) {
                let disk_full = match self.disk_full.get(&id) {
                    Some(None) => true,
                    Some(Some(freed)) => {
                        freed.elapsed() < Duration::from_millis(DISK_FULL_GRACE_MS)
                    }
                    None => false,
                };
                self.exits.push(NodeExit {
                    node: id,
                    at: self.now(),
                    code,
                    disk_full,
                });
                if self.disk_full.get(&id) == Some(&None) {
                    self.awaiting_disk.push(id);
                } else {
                    cluster.start_node(id);
                }
            }
        }
    }

    fn heal(&mut self, cluster: &mut Cluster, active: Active) {
        match active.heal {
            Heal::Restart(id) => cluster.start_node(id),
            Heal::Continue(id) => cluster.signal(id, "CONT"),
            Heal::Links(links) => {
                for (from, to) in links {
                    cluster.set_link(from, to, LinkMode::Pass);
                }
            }
            Heal::FreeDisk(id) => {
                if let Some(path) = cluster.disk_path(id) {
                    let _ = std::fs::remove_file(path.join("filler"));
                }
                self.disk_full.insert(id, Some(Instant::now()));
                if let Some(at) = self.awaiting_disk.iter().position(|n| *n == id) {
                    self.awaiting_disk.swap_remove(at);
                    cluster.start_node(id);
                }
            }
            Heal::Clock(id) => cluster.set_clock_offset(id, "+0"),
        }
        let end = self.now();
        self.faults[active.fault].end = Some(end);
    }

    /// Heals every active fault and waits until paused clients have resumed.
    pub async fn heal_all(&mut self, cluster: &mut Cluster) {
        for active in std::mem::take(&mut self.active) {
            self.heal(cluster, active);
        }
        for id in cluster.ids() {
            cluster.start_node(id);
        }
        for client in &self.clients {
            client.pause_ms.store(0, Ordering::Relaxed);
        }
        let deadline = Instant::now() + Duration::from_millis(self.shared.session_ttl_ms * 4);
        while self
            .clients
            .iter()
            .any(|c| c.paused.load(Ordering::Relaxed))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts one fault, if one whose class is free can run now.
    pub async fn inject(&mut self, cluster: &mut Cluster) {
        let busy: Vec<Class> = self.active.iter().map(|a| a.class).collect();
        let nodes = cluster.ids().len();
        let allowed = |kind: &FaultKind| {
            let class = class(*kind);
            match class {
                Class::Independent => !(kind == &FaultKind::ClockJump && busy.contains(&class)),
                _ if busy.contains(&class) => false,
                // On 3 nodes a process fault and a network fault together may leave no majority.
                _ => nodes >= 5 || !busy.iter().any(|c| *c != Class::Independent),
            }
        };
        let candidates: Vec<FaultKind> = self.kinds.iter().copied().filter(allowed).collect();
        if candidates.is_empty() {
            return;
        }
        let kind = *self.rng.pick(&candidates);
        let ids = cluster.ids();
        let leader = find_leader(cluster).await;
        let any = *self.rng.pick(&ids);
        let target = leader.unwrap_or(any);
        let others = |of: u64| ids.iter().copied().filter(move |id| *id != of);
        let election = TEST_ELECTION_TIMEOUT_MAX_MS;
        let (detail, hold_ms, heal) = match kind {
            FaultKind::KillNode | FaultKind::KillLeader => {
                let id = if kind == FaultKind::KillNode {
                    any
                } else {
                    target
                };
                cluster.kill(id);
                (
                    format!("kill -9 node {id}"),
                    self.rng.between(0, 3_000),
                    Heal::Restart(id),
                )
            }
            FaultKind::PauseLeader => {
                cluster.signal(target, "STOP");
                let ms = self.rng.between(election, 3 * election);
                (format!("SIGSTOP node {target}"), ms, Heal::Continue(target))
            }
            FaultKind::IsolateLeader | FaultKind::Blackhole => {
                let id = if kind == FaultKind::IsolateLeader {
                    target
                } else {
                    any
                };
                let mode = if kind == FaultKind::Blackhole {
                    LinkMode::Pause
                } else {
                    LinkMode::Sever
                };
                let mut links = Vec::new();
                for other in others(id) {
                    links.push((id, other));
                    links.push((other, id));
                }
                for (from, to) in &links {
                    cluster.set_link(*from, *to, mode);
                }
                let ms = self.rng.between(1_000, 4_000);
                (
                    format!("{mode:?} every link of node {id}"),
                    ms,
                    Heal::Links(links),
                )
            }
            FaultKind::PartitionMajority | FaultKind::PartitionBridge => {
                // Shuffle, then split into a minority and a majority; for a bridge, one node of
                // the majority keeps talking to both sides.
                let mut order = ids.clone();
                for i in (1..order.len()).rev() {
                    order.swap(i, self.rng.below(i + 1));
                }
                let minority: Vec<u64> = order[..order.len().div_ceil(2) - 1].to_vec();
                let majority: Vec<u64> = order[minority.len()..].to_vec();
                let bridge = (kind == FaultKind::PartitionBridge).then(|| majority[0]);
                let mut links = Vec::new();
                for a in &minority {
                    for b in &majority {
                        if Some(*b) != bridge {
                            links.push((*a, *b));
                            links.push((*b, *a));
                        }
                    }
                }
                for (from, to) in &links {
                    cluster.set_link(*from, *to, LinkMode::Sever);
                }
                let ms = self.rng.between(1_000, 4_000);
                let detail = format!("{minority:?} | {majority:?} (bridge {bridge:?})");
                (detail, ms, Heal::Links(links))
            }
            FaultKind::OneWayPartition => {
                // The leader's outgoing links cut, its incoming links up (or the reverse).
                let outgoing = self.rng.below(2) == 0;
                let links: Vec<(u64, u64)> = others(target)
                    .map(|other| {
                        if outgoing {
                            (target, other)
                        } else {
                            (other, target)
                        }
                    })
                    .collect();
                for (from, to) in &links {
                    cluster.set_link(*from, *to, LinkMode::Sever);
                }
                let ms = self.rng.between(1_000, 4_000);
                let direction = if outgoing { "from" } else { "to" };
                (
                    format!("links {direction} node {target} cut"),
                    ms,
                    Heal::Links(links),
                )
            }
            FaultKind::SlowLinks => {
                let delay = self.rng.between(10, 100);
                let mut links = Vec::new();
                for a in &ids {
                    for b in others(*a) {
                        links.push((*a, b));
                        cluster.set_link(*a, b, LinkMode::Delay(delay));
                    }
                }
                let ms = self.rng.between(2_000, 4_000);
                (
                    format!("every peer link +{delay} ms"),
                    ms,
                    Heal::Links(links),
                )
            }
            FaultKind::ClockJump => {
                let offset = *self.rng.pick(&["+5m", "-5m", "+1h", "-90s"]);
                cluster.set_clock_offset(any, offset);
                let ms = self.rng.between(2_000, 8_000);
                (
                    format!("node {any} wall clock {offset}"),
                    ms,
                    Heal::Clock(any),
                )
            }
            FaultKind::DiskFull => {
                let Some(path) = cluster.disk_path(any).map(Path::to_path_buf) else {
                    return;
                };
                self.disk_full.insert(any, None);
                let filled = fill(&path.join("filler"));
                // A running node writes into rocksdb's preallocated WAL for a while; half the
                // time it also crashes and must start again on the full disk.
                let crash = self.rng.below(2) == 0;
                if crash {
                    cluster.kill(any);
                    cluster.start_node(any);
                }
                let ms = self.rng.between(2_000, 4_000);
                let detail = format!(
                    "node {any} disk full ({filled} MiB filler){}",
                    if crash {
                        ", kill -9 and restart on it"
                    } else {
                        ""
                    }
                );
                (detail, ms, Heal::FreeDisk(any))
            }
            FaultKind::PauseClient => {
                // Recorded by the client when it actually pauses (holding a lock).
                let client = self.rng.pick(&self.clients).clone();
                let ms = self.shared.session_ttl_ms + self.rng.between(500, 3_000);
                client.pause_ms.store(ms, Ordering::Relaxed);
                return;
            }
            FaultKind::SlowDisk | FaultKind::FailedFsync | FaultKind::LossyLinks => {
                unreachable!("{kind:?} is injected only by the simulator")
            }
        };
        self.faults.push(Fault {
            kind,
            detail,
            start: self.now(),
            end: None,
        });
        self.active.push(Active {
            fault: self.faults.len() - 1,
            class: class(kind),
            until: Instant::now() + Duration::from_millis(hold_ms),
            heal,
        });
    }
}

/// Fills the filesystem holding `path` with one file until it is full; returns the MiB written.
pub fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let Ok(mut file) = std::fs::File::create(path) else {
        return 0;
    };
    let chunk = vec![0xA5u8; FILL_CHUNK_BYTES];
    let mut written = 0;
    while file.write_all(&chunk).is_ok() {
        written += 1;
    }
    // Whatever is left below a chunk.
    let _ = file.write_all(&[0u8; 4096]);
    let _ = file.sync_all();
    written
}

/// The leader as the running nodes see it (the most common answer), if any answers in time.
pub async fn find_leader(cluster: &Cluster) -> Option<u64> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for id in cluster.ids() {
        if !cluster.is_running(id) {
            continue;
        }
        let client = Client::connect(&[cluster.addr(id)]).ok()?;
        if let Ok(Ok(status)) =
            tokio::time::timeout(Duration::from_millis(STATUS_TIMEOUT_MS), client.status(0)).await
            && status.leader_id != 0
        {
            *votes.entry(status.leader_id).or_default() += 1;
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id)
}
