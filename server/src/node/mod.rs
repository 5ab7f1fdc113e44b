//! One Holdfast node: the Raft handle, the applied state, the leader's clock and the paths every
//! request takes: writes (proposed here when leader, forwarded otherwise), keepalives (folded into
//! the leader's next `Tick`) and linearizable reads (read index from the leader, then local
//! apply). Its background loops (the leader's ticker, the keepalive forwarder, the election
//! nudger, the determinism guard) are in `tasks.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_core::{Command, SessionId};
use openraft::async_runtime::WatchReceiver as _;
use openraft::{Instant as _, ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::batch::{self, Batcher};
use crate::clock::LeaderClock;
use crate::raft::network::{PeerError, PeerRpc, Peers};
use crate::raft::state_machine::Shared;
use crate::raft::storage::ReadLog;
use crate::raft::{NodeId, Proposal, Raft, Response};

pub mod status;
mod tasks;

/// How long a write may take to commit before the caller gets UNAVAILABLE (the write may still
/// commit later; requests are idempotent, so a retry is safe).
pub const WRITE_TIMEOUT_MS: u64 = 5_000;
/// What a forwarded call may take beyond the leader's own deadline (the hop and its answer).
pub const FORWARD_MARGIN_MS: u64 = 500;
/// Deadline of a forwarded write, leader side work included.
pub const FORWARD_TIMEOUT_MS: u64 = WRITE_TIMEOUT_MS + FORWARD_MARGIN_MS;
/// How long a `DeployPolicy` may take to commit and apply: every replica compiles the module
/// while applying it, which takes seconds for a large module on a busy machine. Below the
/// client's own deadline for a deploy call (holdfast-client's `DEPLOY_TIMEOUT_MS`), so the
/// caller hears the outcome of its own call rather than of a retry (a retried deploy of the
/// same bytes answers `created: false`).
pub const DEPLOY_WRITE_TIMEOUT_MS: u64 = 60_000;

/// How long `command` may take to commit and apply before the caller gets UNAVAILABLE.
fn write_timeout_ms(command: &Command) -> u64 {
    match command {
        Command::DeployPolicy { .. } => DEPLOY_WRITE_TIMEOUT_MS,
        _ => WRITE_TIMEOUT_MS,
    }
}
/// Deadline of small peer calls (keepalive forwarding, read index).
pub const PEER_CALL_TIMEOUT_MS: u64 = 2_000;
/// A leader that has not heard from a quorum for this long refuses writes at once instead of
/// letting them time out: it is probably on the minority side of a partition.
pub const QUORUM_STALE_MS: u64 = 1_500;
/// How often a leadership transfer checks whether another node leads yet.
pub const LEADER_POLL_MS: u64 = 20;
/// How often the leader considers proposing a `Tick`.
pub const TICK_INTERVAL_MS: u64 = 50;
/// How often a follower checks whether its leader's lease ran out (see `run_election_nudger`).
pub const ELECTION_NUDGE_POLL_MS: u64 = 5;
/// Spacing of the nodes' election nudges after the lease ends.
pub const ELECTION_NUDGE_STAGGER_MS: u64 = 15;
/// While sessions exist, the leader ticks at least this often, so that little cluster time is
/// lost if it dies.
pub const TICK_IDLE_INTERVAL_MS: u64 = 1_000;
/// How often the snapshot scheduler compares the log since the last snapshot with the state.
pub const SNAPSHOT_POLL_MS: u64 = 100;
/// A snapshot is due once the entries applied since the last one reach the state's record
/// count divided by this (and `snapshot_every_entries`, the floor). A snapshot costs time in
/// proportion to the state, so this bounds its amortized cost to this many records encoded per
/// entry, and keeps a restart's log replay to 1/this of the state's size in entries. At 1M
/// locks: a snapshot every ~550k entries (8 gave one every ~140k and cost the load a third of
/// its rate on this 2-core machine; a restart replays ~550k entries in ~4 s).
pub const SNAPSHOT_RECORDS_PER_LOG_ENTRY: u64 = 2;
/// Most keepalives buffered on the leader between two ticks (and on a follower between two
/// forwards).
pub const PENDING_RENEWALS_MAX: usize = holdfast_core::limits::RENEWALS_PER_TICK_MAX;

/// Why a write or read could not be served. Every variant is retryable except `Fatal`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ServeError {
    #[error("this node is not the leader and cannot reach one (last known leader: {})", fmt_leader(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("the leader changed while the request was in flight; retry (requests are idempotent)")]
    LeaderChanged {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error(
        "no quorum: the write did not commit within {timeout_ms} ms; it may still commit, retry with the same request id"
    )]
    NoQuorum {
        timeout_ms: u64,
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("too many pending keepalives on the leader")]
    Overloaded,
    /// Raft stopped on this node (a storage failure: it fail-stops); the request may still
    /// have committed through the other nodes. Retryable elsewhere, with the same request id.
    #[error("this node stopped ({0}); retry on another node (requests are idempotent)")]
    Stopped(String),
    #[error("internal error: {0}")]
    Fatal(String),
}

fn fmt_leader(id: &Option<NodeId>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        (Some(id), None) => format!("node {id}"),
        _ => "none".to_owned(),
    }
}

impl ServeError {
    pub fn leader(&self) -> (Option<NodeId>, Option<&str>) {
        match self {
            ServeError::NotLeader {
                leader_id,
                leader_addr,
            }
            | ServeError::LeaderChanged {
                leader_id,
                leader_addr,
            }
            | ServeError::NoQuorum {
                leader_id,
                leader_addr,
                ..
            } => (*leader_id, leader_addr.as_deref()),
            ServeError::Overloaded | ServeError::Stopped(_) | ServeError::Fatal(_) => (None, None),
        }
    }
}

/// Result of renewing one session on the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Renewal {
    /// Alive in the leader's committed state, with `remaining_ms` of cluster time left when the
    /// leader looked; the renewal itself rides the leader's next Tick.
    Renewed {
        ttl_ms: u64,
        remaining_ms: u64,
    },
    Unknown,
}

/// What a forwarded batch of keepalives got from the leader, by session.
type Forwarded = Result<Arc<BTreeMap<SessionId, Renewal>>, ServeError>;

pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub peers: Arc<Peers>,
    /// A reader of this node's Raft log (`Cluster.ReadLog`).
    log: Box<dyn ReadLog>,
    clock: Mutex<LeaderClock>,
    /// On the leader: renewals waiting for the Tick that will carry them. A keepalive wakes
    /// the ticker, so it rides a Tick proposed at once; nobody waits for that Tick (the
    /// keepalive was answered from committed state, see [`Node::renew_as_leader`]).
    renewals: Batcher<Result<(), ServeError>>,
    /// On a follower: keepalives waiting for the `Renew` call that will forward them.
    forwards: Batcher<Forwarded>,
    /// When the leader last reached this node (an AppendEntries it accepted as current).
    leader_contact: Mutex<Option<tokio::time::Instant>>,
    /// The leader openraft reports, changed only when it changes (see [`watch_leader`]); ends
    /// (every receiver sees an error) when Raft stops.
    leader_watch: watch::Receiver<Option<NodeId>>,
    /// `holdfast_lock_wait_seconds` of this node (recorded by the Acquire path).
    pub(crate) lock_wait_seconds: metrics::Histogram,
    /// How many times this node has seen a new leader (counted by [`watch_leader`]).
    leader_changes: Arc<std::sync::atomic::AtomicU64>,
    /// How long this node's log fsyncs took lately (None: its disk does not measure them).
    fsyncs: Option<Arc<crate::metrics::Recent>>,
}

/// Copies openraft's `current_leader` into `leader` whenever it changes. openraft publishes
/// its whole metrics after nearly every step of its loop; a request waiting for a leader change
/// on that channel was woken each time (with 64 requests in flight, `notify_waiters` and the
/// re-checks were a visible share of the leader's CPU). Requests wait on `leader` instead, and
/// this task on openraft's server metrics, which change only with the vote, the role, the
/// leader or the membership (on `raft.metrics()` it too was woken at every step).
///
/// Each change to a known leader counts as a leader change (`holdfast_raft_leader_changes_total`
/// and `changes`), as etcd's `leader_changes_seen_total`.
async fn watch_leader(
    id: NodeId,
    raft: Raft,
    leader: watch::Sender<Option<NodeId>>,
    changes: Arc<std::sync::atomic::AtomicU64>,
) {
    let seen = metrics::counter!("holdfast_raft_leader_changes_total", "node" => id.to_string());
    let mut metrics = raft.server_metrics();
    loop {
        let current = metrics.borrow_watched().current_leader;
        let changed = leader.send_if_modified(|known| std::mem::replace(known, current) != current);
        if changed && current.is_some() {
            changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            seen.increment(1);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

impl Node {
    /// Must run inside the tokio runtime (it starts the leader watch task).
    pub fn new(
        id: NodeId,
        raft: Raft,
        shared: Arc<Shared>,
        peers: Arc<Peers>,
        log: Box<dyn ReadLog>,
        fsyncs: Option<Arc<crate::metrics::Recent>>,
    ) -> Arc<Node> {
        let known = raft.metrics().borrow_watched().current_leader;
        let (leader, leader_watch) = watch::channel(known);
        let leader_changes = Arc::new(std::sync::atomic::AtomicU64::from(u64::from(
            known.is_some(),
        )));
        tokio::spawn(watch_leader(
            id,
            raft.clone(),
            leader,
            Arc::clone(&leader_changes),
        ));
        Arc::new(Node {
            id,
            raft,
            shared,
            peers,
            log,
            clock: Mutex::new(LeaderClock::default()),
            renewals: Batcher::new(PENDING_RENEWALS_MAX),
            forwards: Batcher::new(PENDING_RENEWALS_MAX),
            leader_contact: Mutex::new(None),
            leader_watch,
            lock_wait_seconds: crate::metrics::lock_wait_seconds(id),
            leader_changes,
            fsyncs,
        })
    }

    pub(crate) fn note_leader_contact(&self) {
        *self.leader_contact.lock().expect("leader contact lock") =
            Some(tokio::time::Instant::now());
    }

    /// A follower that has not heard from its leader for `QUORUM_STALE_MS`: openraft keeps
    /// reporting the old leader while this node pre-votes (pre-votes change no term), so the
    /// leader it names may be long gone.
    pub(crate) fn leader_contact_is_stale(&self) -> bool {
        self.leader_contact
            .lock()
            .expect("leader contact lock")
            .is_none_or(|at| at.elapsed() > Duration::from_millis(QUORUM_STALE_MS))
    }

    /// What the metrics sampler shows of this node (`crate::metrics::run_sampler`).
    pub fn sample(&self) -> crate::metrics::NodeSample {
        let mut sample = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            crate::metrics::NodeSample {
                term: metrics.current_term,
                leader: metrics.current_leader,
                is_leader: metrics.current_leader == Some(self.id),
                last_log_index: metrics.last_log_index.unwrap_or(0),
                committed_index: metrics.local_committed.map_or(0, |log_id| log_id.index),
                applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
                ..Default::default()
            }
        };
        self.shared.read(|state| {
            (sample.locks, sample.holders, sample.waiters) = state.lock_counts();
            sample.sessions = state.session_count();
            sample.policy_faults = state.policy_fault_count();
            sample.bindings = state.bindings().len();
        });
        {
            let checkpoints = self.shared.checkpoints.lock().expect("checkpoints lock");
            sample.checkpoint_index = checkpoints.latest().map_or(0, |(index, _)| index);
            sample.digest_mismatches = checkpoints.mismatches();
        }
        sample.stale_leader = sample.is_leader && self.quorum_is_stale();
        sample.stale_follower = !sample.is_leader && self.leader_contact_is_stale();
        sample
    }

    /// The leader this node knows of and its client address.
    pub fn leader(&self) -> (Option<NodeId>, Option<String>) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let leader = metrics.current_leader;
        let addr = leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        (leader, addr)
    }

    fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        (metrics.state == ServerState::Leader && metrics.current_leader == Some(self.id))
            .then_some(metrics.current_term)
    }

    /// Whether `id` is another node of this cluster: a configured peer or in the membership
    /// (voter or learner).
    pub(crate) fn knows_peer(&self, id: NodeId) -> bool {
        if id == self.id {
            return false;
        }
        if self.peers.configured_addr(id).is_some() {
            return true;
        }
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics
            .membership_config
            .membership()
            .nodes()
            .any(|(node, _)| *node == id)
    }

    pub(crate) fn quorum_is_stale(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        // A single voter is its own quorum: nobody acknowledges it, and nobody needs to (it
        // commits on its own fsync). Without this a one-node cluster went stale 1.5 s after
        // its election and refused every write.
        let mut voters = metrics.membership_config.membership().voter_ids();
        if voters.next() == Some(self.id) && voters.next().is_none() {
            return false;
        }
        match &metrics.last_quorum_acked {
            Some(at) => at.elapsed() > Duration::from_millis(QUORUM_STALE_MS),
            None => false,
        }
    }

    /// `Err(NotLeader)` (with the leader hint) unless this node is the leader.
    pub(crate) fn ensure_leader(&self) -> Result<(), ServeError> {
        match self.leader_term() {
            Some(_) => Ok(()),
            None => Err(self.not_leader()),
        }
    }

    /// Asks openraft to hand leadership to `to` and waits up to `timeout` for a leader other
    /// than this node; returns the leader then known.
    pub async fn transfer_leadership(
        &self,
        to: NodeId,
        timeout: Duration,
    ) -> Result<Option<NodeId>, String> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|error| error.to_string())?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (leader, _) = self.leader();
            if leader.is_some_and(|leader| leader != self.id)
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(leader);
            }
            tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)).await;
        }
    }

    pub(crate) fn not_leader(&self) -> ServeError {
        let (leader_id, leader_addr) = self.leader();
        ServeError::NotLeader {
            leader_id,
            leader_addr,
        }
    }

    /// Resolves when the leader differs from `leader` (fail-fast for in-flight requests).
    async fn leader_changed(&self, leader: Option<NodeId>) {
        let mut watch = self.leader_watch.clone();
        // An error means the Raft task stopped, which also ends the request.
        let _ = watch.wait_for(|current| *current != leader).await;
    }

    /// Writes a command: proposes it here when this node leads, else forwards it to the leader.
    pub async fn write(&self, command: Command) -> Result<Response, ServeError> {
        let (leader_id, leader_addr) = self.leader();
        match leader_id {
            Some(id) if id == self.id => self.propose(command).await,
            Some(id) => {
                let timeout_ms = write_timeout_ms(&command) + FORWARD_MARGIN_MS;
                let forward = self.peers.call::<_, Result<Response, ServeError>>(
                    id,
                    leader_addr.as_deref(),
                    PeerRpc::Forward,
                    &command,
                    Duration::from_millis(timeout_ms),
                );
                tokio::select! {
                    biased;
                    reply = forward => match reply {
                        Ok(result) => result,
                        Err(PeerError::Timeout { timeout_ms, .. }) => Err(ServeError::NoQuorum { timeout_ms, leader_id, leader_addr }),
                        Err(_) => Err(ServeError::NotLeader { leader_id, leader_addr }),
                    },
                    () = self.leader_changed(leader_id) => {
                        let (leader_id, leader_addr) = self.leader();
                        Err(ServeError::LeaderChanged { leader_id, leader_addr })
                    }
                }
            }
            None => Err(self.not_leader()),
        }
    }

    /// Proposes a command as leader, stamped with cluster time; answers once it is applied here.
    pub async fn propose(&self, command: Command) -> Result<Response, ServeError> {
        let Some(term) = self.leader_term() else {
            return Err(self.not_leader());
        };
        if self.quorum_is_stale() {
            return Err(ServeError::NoQuorum {
                timeout_ms: QUORUM_STALE_MS,
                leader_id: Some(self.id),
                leader_addr: None,
            });
        }
        let now_ms = self.cluster_now_ms(term);
        let timeout_ms = write_timeout_ms(&command);
        let write = self.raft.client_write(Proposal { now_ms, command });
        let timeout = tokio::time::sleep(Duration::from_millis(timeout_ms));
        tokio::select! {
            biased;
            result = write => match result {
                Ok(response) => Ok(response.data),
                Err(e) => match e.forward_to_leader() {
                    Some(forward) => Err(ServeError::LeaderChanged {
                        leader_id: forward.leader_id,
                        leader_addr: forward.leader_node.as_ref().map(|n| n.addr.clone()),
                    }),
                    // Found by the simulator: a leader whose fsync failed answered INTERNAL
                    // for a write its followers went on to commit, and clients gave up on it.
                    None if matches!(e, openraft::errors::RaftError::Fatal(_)) => {
                        Err(ServeError::Stopped(e.to_string()))
                    }
                    None => Err(ServeError::Fatal(e.to_string())),
                },
            },
            () = self.leader_changed(Some(self.id)) => {
                let (leader_id, leader_addr) = self.leader();
                Err(ServeError::LeaderChanged { leader_id, leader_addr })
            }
            () = timeout => Err(ServeError::NoQuorum { timeout_ms, leader_id: Some(self.id), leader_addr: None }),
        }
    }

    fn cluster_now_ms(&self, term: u64) -> u64 {
        let applied_now_ms = self.shared.read(|s| s.now_ms());
        self.clock
            .lock()
            .expect("clock lock")
            .now_ms(term, applied_now_ms)
    }

    /// Renews sessions: buffered on the leader for its next Tick, forwarded from followers (in
    /// batches: every keepalive that arrived while earlier forwards were in flight shares one
    /// `Renew` call).
    pub async fn renew(&self, sessions: Vec<SessionId>) -> Result<Vec<Renewal>, ServeError> {
        match self.leader().0 {
            Some(id) if id == self.id => self.renew_as_leader(&sessions).await,
            Some(_) => {
                let outcome = self
                    .forwards
                    .join(&sessions)
                    .ok_or(ServeError::Overloaded)?;
                let wait = batch::wait(outcome);
                let renewed =
                    match tokio::time::timeout(Duration::from_millis(FORWARD_TIMEOUT_MS), wait)
                        .await
                    {
                        Ok(Some(result)) => result?,
                        _ => return Err(self.not_leader()),
                    };
                Ok(sessions
                    .iter()
                    .map(|id| renewed.get(id).copied().unwrap_or(Renewal::Unknown))
                    .collect())
            }
            None => Err(self.not_leader()),
        }
    }

    async fn forward_renewals(&self, sessions: &[SessionId]) -> Result<Vec<Renewal>, ServeError> {
        let (leader_id, leader_addr) = self.leader();
        let renewals = match leader_id {
            Some(id) if id == self.id => self.renew_as_leader(sessions).await,
            Some(id) => self
                .peers
                .call::<_, Result<Vec<Renewal>, ServeError>>(
                    id,
                    leader_addr.as_deref(),
                    PeerRpc::Renew,
                    &sessions,
                    // The leader answers once the Tick carrying the renewals commits.
                    Duration::from_millis(FORWARD_TIMEOUT_MS),
                )
                .await
                .unwrap_or(Err(ServeError::NotLeader {
                    leader_id,
                    leader_addr,
                })),
            None => Err(self.not_leader()),
        }?;
        if renewals.len() != sessions.len() {
            return Err(ServeError::Fatal(format!(
                "the leader answered {} renewals for {} sessions",
                renewals.len(),
                sessions.len()
            )));
        }
        Ok(renewals)
    }

    /// Answers keepalives at once from committed state: a session counts as alive if it is at
    /// the leader's cluster time now, and its answer is what it has left then (its committed
    /// expiry minus now). The renewals join the next Tick, which nobody waits for: the next
    /// keepalive's answer shows whether it committed.
    ///
    /// Why the answer is safe even from a leader that was already deposed: the remaining time
    /// comes from an expiry that is committed, and cluster time runs no faster on any later
    /// leader than on this one (a new leader starts from committed entries' time, see
    /// `clock.rs`), so no leader expires the session less than `remaining_ms` after this one
    /// looked, and the client's deadline (send time + `remaining_ms`) is conservative.
    pub async fn renew_as_leader(
        &self,
        sessions: &[SessionId],
    ) -> Result<Vec<Renewal>, ServeError> {
        let Some(term) = self.leader_term() else {
            return Err(self.not_leader());
        };
        // A leader cut off from its quorum would keep answering from a state that no longer
        // moves: refuse, so that clients go and find the new leader (as a write would).
        if self.quorum_is_stale() {
            return Err(ServeError::NoQuorum {
                timeout_ms: QUORUM_STALE_MS,
                leader_id: Some(self.id),
                leader_addr: None,
            });
        }
        let now_ms = self.cluster_now_ms(term);
        let answers: Vec<Renewal> = self.shared.read(|state| {
            sessions
                .iter()
                .map(|id| match state.session(*id) {
                    Some(session) if session.expires_at_ms > now_ms => Renewal::Renewed {
                        ttl_ms: session.ttl_ms,
                        remaining_ms: session.expires_at_ms - now_ms,
                    },
                    _ => Renewal::Unknown,
                })
                .collect()
        });
        let carried: Vec<SessionId> = sessions
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| matches!(answer, Renewal::Renewed { .. }))
            .map(|(id, _)| *id)
            .collect();
        if !carried.is_empty() {
            self.renewals.join(&carried).ok_or(ServeError::Overloaded)?;
        }
        Ok(answers)
    }

    /// Waits until this node has applied everything committed before the call (a linearizable
    /// read barrier), asking the leader for the read index when this node is a follower.
    pub async fn read_barrier(&self) -> Result<(), ServeError> {
        let (leader_id, leader_addr) = self.leader();
        let read_index = match leader_id {
            Some(id) if id == self.id => self.read_index_as_leader().await?,
            Some(id) => self
                .peers
                .call::<_, Result<u64, ServeError>>(
                    id,
                    leader_addr.as_deref(),
                    PeerRpc::ReadIndex,
                    &(),
                    Duration::from_millis(PEER_CALL_TIMEOUT_MS),
                )
                .await
                .unwrap_or(Err(ServeError::NotLeader {
                    leader_id,
                    leader_addr,
                }))?,
            None => return Err(self.not_leader()),
        };
        let mut applied = self.shared.applied_index.subscribe();
        let wait = applied.wait_for(|index| *index >= read_index);
        match tokio::time::timeout(Duration::from_millis(PEER_CALL_TIMEOUT_MS), wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ServeError::NoQuorum {
                timeout_ms: PEER_CALL_TIMEOUT_MS,
                leader_id,
                leader_addr: None,
            }),
        }
    }

    /// The leader's read index: confirmed with a quorum round (ReadIndex, not a clock lease).
    pub async fn read_index_as_leader(&self) -> Result<u64, ServeError> {
        if self.leader_term().is_none() {
            return Err(self.not_leader());
        }
        let read = self.raft.get_read_log_id(ReadPolicy::ReadIndex);
        match tokio::time::timeout(Duration::from_millis(PEER_CALL_TIMEOUT_MS), read).await {
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.index()),
            Ok(Err(e)) => match (e.forward_to_leader(), e.api_error()) {
                (Some(_), _) => Err(self.not_leader()),
                // The quorum round did not reach a majority (a partition, a paused peer): the
                // read is retryable, not an internal error. Found by the fault-injection suite
                // (a 5-node run saw INTERNAL "not enough for a quorum" on Describe).
                (None, Some(openraft::errors::LinearizableReadError::QuorumNotEnough(_))) => {
                    Err(ServeError::NoQuorum {
                        timeout_ms: PEER_CALL_TIMEOUT_MS,
                        leader_id: Some(self.id),
                        leader_addr: None,
                    })
                }
                (None, _) => Err(ServeError::Fatal(e.to_string())),
            },
            Err(_) => Err(ServeError::NoQuorum {
                timeout_ms: PEER_CALL_TIMEOUT_MS,
                leader_id: Some(self.id),
                leader_addr: None,
            }),
        }
    }
}

/// Why [`Node::read_log`] has no entries to give.
#[derive(Debug, thiserror::Error)]
pub enum ReadLogError {
    #[error(
        "log entry {from} was compacted into a snapshot (oldest entry kept: {oldest:?}); start from a newer backup"
    )]
    Compacted { from: u64, oldest: Option<u64> },
    #[error("reading the raft log: {0}")]
    Storage(String),
}

impl Node {
    /// The applied entries of this node's log from `from` on, at most `limit`, as apply sees
    /// them (`raft::types::core_entry`). `Compacted` when `from` is no longer in the log.
    pub async fn read_log(
        &self,
        from: u64,
        limit: u64,
    ) -> Result<Vec<holdfast_core::Entry>, ReadLogError> {
        let applied = self.shared.read(holdfast_core::State::applied_index);
        if from > applied || limit == 0 {
            return Ok(Vec::new());
        }
        let last = applied.min(from.saturating_add(limit - 1));
        let entries = self
            .log
            .entries(from..=last)
            .await
            .map_err(|error| ReadLogError::Storage(error.to_string()))?;
        match entries.first() {
            Some(first) if first.log_id.index == from => {}
            first => {
                return Err(ReadLogError::Compacted {
                    from,
                    oldest: first.map(|entry| entry.log_id.index),
                });
            }
        }
        Ok(entries
            .into_iter()
            .map(|entry| crate::raft::types::core_entry(entry).0)
            .collect())
    }
}
