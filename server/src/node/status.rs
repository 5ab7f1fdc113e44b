//! What a node says of itself ([`Node::status`]) and what it gathers of every member
//! ([`Node::cluster_status`], over the peer `Status` call): the console's cluster page.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver as _;
use serde::{Deserialize, Serialize};

use super::Node;
use crate::metrics::{LatencySummary, NodeSample};
use crate::raft::NodeId;
use crate::raft::network::PeerRpc;

/// How long the cluster page waits for a member's status before showing it as unreachable.
pub const PEER_STATUS_TIMEOUT_MS: u64 = 800;

/// One node's view of itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// Raft indexes, counts, the determinism guard's checkpoint and the staleness flags.
    pub sample: NodeSample,
    /// What the node's gRPC health check answers (`NodeSample::serving_status`).
    pub serving: bool,
    /// Cluster time of this node's applied state (the leader's clock, as of the last entry).
    pub now_ms: u64,
    pub leader_changes: u64,
    /// Its recent log fsyncs (None: not measured, or none yet).
    pub fsync: Option<LatencySummary>,
    /// Hex digest of the state at `sample.checkpoint_index`.
    pub checkpoint_digest: String,
    /// The first digest mismatch with a peer, described; empty while the replicas agree.
    pub divergence: String,
    /// Recent decision latency of this replica's policy hooks, by hook.
    pub policy_latency: Vec<(String, LatencySummary)>,
    /// On the leader: each member's last replicated log index.
    pub matched: Vec<(NodeId, u64)>,
    /// Why Raft stopped here, if it did (a storage failure: the node fail-stops).
    pub fatal: Option<String>,
}

/// A member of the cluster as the cluster page shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerStatus {
    pub id: NodeId,
    /// Its client address in the membership.
    pub addr: String,
    pub voter: bool,
    /// Its own status, or why it could not be had (down, partitioned, too slow).
    pub status: Result<NodeStatus, String>,
}

/// A Raft role as the console and status pages name it.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Node {
    /// This node's status, from its own Raft metrics and applied state. Cheap: no I/O.
    pub fn status(&self) -> NodeStatus {
        let sample = self.sample();
        let (state, matched, fatal) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            let matched = metrics
                .replication
                .iter()
                .flatten()
                .map(|(id, log_id)| (*id, log_id.as_ref().map_or(0, |log_id| log_id.index)))
                .collect();
            let fatal = metrics.running_state.as_ref().err().map(|e| e.to_string());
            (metrics.state, matched, fatal)
        };
        let now_ms = self.shared.read(|state| state.now_ms());
        let (checkpoint_digest, divergence) = {
            let checkpoints = self.shared.checkpoints.lock().expect("checkpoints lock");
            let digest = checkpoints
                .latest()
                .map_or_else(String::new, |(_, digest)| {
                    crate::policy::module::hex(&digest)
                });
            (digest, checkpoints.divergence())
        };
        NodeStatus {
            id: self.id,
            role: role_name(state).to_owned(),
            serving: sample.serving_status() == tonic_health::ServingStatus::Serving,
            sample,
            now_ms,
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            fsync: self.fsyncs.as_ref().and_then(|recent| recent.summary()),
            checkpoint_digest,
            divergence,
            policy_latency: self
                .shared
                .policy_latency
                .summaries()
                .into_iter()
                .map(|(hook, summary)| (hook.to_owned(), summary))
                .collect(),
            matched,
            fatal,
        }
    }

    /// Every member's status: this node's own, the others' asked of them at once (each
    /// within [`PEER_STATUS_TIMEOUT_MS`]). By node id.
    pub async fn cluster_status(&self) -> Vec<PeerStatus> {
        let members: Vec<(NodeId, String, bool)> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            let membership = metrics.membership_config.membership();
            let voters: Vec<NodeId> = membership.voter_ids().collect();
            membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone(), voters.contains(id)))
                .collect()
        };
        let timeout = Duration::from_millis(PEER_STATUS_TIMEOUT_MS);
        let asks = members.into_iter().map(|(id, addr, voter)| async move {
            let status = if id == self.id {
                Ok(self.status())
            } else {
                self.peers
                    .call::<_, NodeStatus>(id, Some(&addr), PeerRpc::Status, &(), timeout)
                    .await
                    .map_err(|error| error.to_string())
            };
            PeerStatus {
                id,
                addr,
                voter,
                status,
            }
        });
        let mut all = futures::future::join_all(asks).await;
        all.sort_by_key(|member| member.id);
        all
    }
}
