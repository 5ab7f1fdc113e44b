//! holdfast.v1.Cluster: each node's status, the membership, membership changes (through
//! openraft's joint consensus) and leadership transfer. Changes are admin calls
//! (`--allow-admin`) and run on the leader; another node answers UNAVAILABLE with the leader
//! hint, which the client library follows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use holdfast_proto::v1 as pb;
use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver as _;
use openraft::error::{ClientWriteError, RaftError};
use sha2::Digest as _;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::raft::state_machine::write_snapshot;
use crate::raft::{NodeInfo, TypeConfig};

/// How long AddLearner waits for the learner to catch up.
pub const ADD_LEARNER_TIMEOUT_MS: u64 = 60_000;
/// How long TransferLeader waits for the new leader to take over.
pub const TRANSFER_LEADER_TIMEOUT_MS: u64 = 10_000;

pub struct ClusterApi {
    pub node: Arc<Node>,
    /// Whether this node accepts membership changes and leadership transfer.
    pub allow_admin: bool,
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterApi {
    async fn status(
        &self,
        _request: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusResponse>, tonic::Status> {
        let node = &self.node;
        let (leader_id, leader_addr) = node.leader();
        let (term, last_log_index, voters) = {
            let metrics = node.raft.metrics();
            let metrics = metrics.borrow_watched();
            let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
            (
                metrics.current_term,
                metrics.last_log_index.unwrap_or(0),
                voters,
            )
        };
        let (applied_index, now_ms, session_count, digest) = node
            .shared
            .read(|s| (s.applied_index(), s.now_ms(), s.session_count(), s.digest()));
        let (checkpoint, digest_mismatches, divergence) = {
            let checkpoints = node.shared.checkpoints.lock().expect("checkpoints lock");
            (
                checkpoints.latest(),
                checkpoints.mismatches(),
                checkpoints.divergence(),
            )
        };
        Ok(tonic::Response::new(pb::StatusResponse {
            node_id: node.id,
            leader_id: leader_id.unwrap_or(0),
            leader_addr: leader_addr.unwrap_or_default(),
            term,
            last_log_index,
            applied_index,
            now_ms,
            voters,
            session_count: session_count as u64,
            state_digest: crate::policy::module::hex(&digest),
            checkpoint_index: checkpoint.map_or(0, |(index, _)| index),
            checkpoint_digest: checkpoint.map_or_else(String::new, |(_, digest)| {
                crate::policy::module::hex(&digest)
            }),
            digest_mismatches,
            divergence,
        }))
    }

    async fn members(
        &self,
        _request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let (leader, _) = self.node.leader();
        Ok(Response::new(pb::MembersResponse {
            leader_id: leader.unwrap_or(0),
            members: members(&self.node),
        }))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.admin("AddLearner", &request)?;
        let request = request.into_inner();
        if request.id == 0 || request.addr.is_empty() {
            return Err(Status::invalid_argument(
                "id must be > 0 and addr not empty",
            ));
        }
        self.node.ensure_leader()?;
        let node = NodeInfo { addr: request.addr };
        let added = tokio::time::timeout(
            Duration::from_millis(ADD_LEARNER_TIMEOUT_MS),
            self.node.raft.add_learner(request.id, node, true),
        )
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "node {} was added as a learner but did not catch up within {ADD_LEARNER_TIMEOUT_MS} ms",
                request.id
            ))
        })?;
        added.map_err(|error| self.membership_error(error))?;
        self.changed()
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.admin("Promote", &request)?;
        let id = request.into_inner().id;
        self.node.ensure_leader()?;
        self.node
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|error| self.membership_error(error))?;
        self.changed()
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.admin("Remove", &request)?;
        let id = request.into_inner().id;
        self.node.ensure_leader()?;
        let (voters, learners) = {
            let metrics = self.node.raft.metrics();
            let metrics = metrics.borrow_watched();
            let membership = metrics.membership_config.membership();
            (
                membership.voter_ids().collect::<BTreeSet<u64>>(),
                membership.learner_ids().collect::<BTreeSet<u64>>(),
            )
        };
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition("cannot remove the last voter"));
            }
            // retain = false: the removed voter leaves the membership entirely.
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if learners.contains(&id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(Status::not_found(format!("node {id} is not a member")));
        };
        self.node
            .raft
            .change_membership(change, false)
            .await
            .map_err(|error| self.membership_error(error))?;
        self.changed()
    }

    type SnapshotStream = SnapshotStream;

    async fn read_log(
        &self,
        request: Request<pb::ReadLogRequest>,
    ) -> Result<Response<pb::ReadLogResponse>, Status> {
        self.admin("ReadLog", &request)?;
        let request = request.into_inner();
        let limit = match request.limit {
            0 => READ_LOG_ENTRIES_MAX,
            limit => limit.min(READ_LOG_ENTRIES_MAX),
        };
        let entries = self
            .node
            .read_log(request.from_index, u64::from(limit))
            .await
            .map_err(|error| match error {
                crate::node::ReadLogError::Compacted { .. } => {
                    Status::failed_precondition(error.to_string())
                }
                crate::node::ReadLogError::Storage(_) => Status::internal(error.to_string()),
            })?;
        Ok(Response::new(pb::ReadLogResponse {
            entries: entries
                .into_iter()
                .map(|entry| pb::LogEntry {
                    index: entry.log_index,
                    now_ms: entry.now_ms,
                    command: crate::raft::codec::encode(&entry.command),
                })
                .collect(),
            applied_index: self.node.shared.read(holdfast_core::State::applied_index),
        }))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.admin("Snapshot", &request)?;
        // Everything acknowledged before this call is applied here after the barrier.
        self.node.read_barrier().await?;
        // Encoding a large state takes seconds: on the blocking pool, like building a snapshot,
        // so Raft's tasks on the runtime's workers keep running; and from a frozen view a chunk
        // at a time, so apply goes on meanwhile.
        let shared = Arc::clone(&self.node.shared);
        let written = crate::blocking::offload(move || write_snapshot(&shared))
            .await
            .map_err(|error| Status::internal(format!("encoding the snapshot: {error}")))?;
        let (log_id, state, now_ms) = (
            written.stored.meta.last_log_id,
            written.stored.data,
            written.now_ms,
        );
        let log_id = log_id.ok_or_else(|| Status::unavailable("nothing applied yet"))?;
        let header = pb::SnapshotHeader {
            index: log_id.index,
            term: log_id.leader_id.term,
            leader_node_id: log_id.leader_id.node_id,
            size_bytes: state.len() as u64,
            sha256: crate::policy::module::hex(&sha2::Sha256::digest(&state)),
            node_id: self.node.id,
            now_ms,
        };
        tracing::info!(
            index = header.index,
            bytes = header.size_bytes,
            "snapshot served"
        );
        // One chunk copied at a time, as the client reads (not a second copy of the state);
        // the first message carries the header, and an empty state still sends it.
        let mut header = Some(header);
        let count = state.len().div_ceil(SNAPSHOT_CHUNK_BYTES).max(1);
        let messages = (0..count).map(move |i| {
            let start = (i * SNAPSHOT_CHUNK_BYTES).min(state.len());
            let end = (start + SNAPSHOT_CHUNK_BYTES).min(state.len());
            Ok(pb::SnapshotResponse {
                header: header.take(),
                chunk: state[start..end].to_vec(),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.admin("TransferLeader", &request)?;
        let to = request.into_inner().to;
        self.node.ensure_leader()?;
        let is_voter = {
            let metrics = self.node.raft.metrics();
            let metrics = metrics.borrow_watched();
            metrics
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == to)
        };
        if !is_voter {
            return Err(Status::failed_precondition(format!(
                "node {to} is not a voter"
            )));
        }
        let leader = self
            .node
            .transfer_leadership(to, Duration::from_millis(TRANSFER_LEADER_TIMEOUT_MS))
            .await
            .map_err(|error| Status::internal(format!("transfer leader: {error}")))?;
        match leader {
            Some(leader) if leader == to => Ok(Response::new(pb::TransferLeaderResponse {
                leader_id: leader,
            })),
            // The election the transfer started can be won by another voter (e.g. when the
            // target's log was behind): the transfer did not happen; it may be retried.
            Some(leader) if leader != self.node.id => Err(Status::aborted(format!(
                "node {leader} won the election instead of node {to}; retry the transfer"
            ))),
            other => Err(Status::deadline_exceeded(format!(
                "node {to} did not take over within {TRANSFER_LEADER_TIMEOUT_MS} ms (leader: {other:?})"
            ))),
        }
    }
}

/// Bytes of state per message of a Snapshot stream.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Most log entries one `Cluster.ReadLog` answer carries.
pub const READ_LOG_ENTRIES_MAX: u32 = 1_000;

type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

impl ClusterApi {
    /// Admin calls: with authentication on, the auth layer has already checked the caller's
    /// admin role (an `Identity` is present); without it the node must allow them.
    fn admin<T>(&self, what: &str, request: &tonic::Request<T>) -> Result<(), Status> {
        if self.allow_admin || super::common::identity(request).is_some() {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{what} is an admin call and this node does not allow them (start it with --allow-admin)"
        )))
    }

    fn membership_error(
        &self,
        error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> Status {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                Status::from(self.node.not_leader())
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
                Status::failed_precondition(error.to_string())
            }
            // The leader changed while the change was in flight: it may or may not apply.
            RaftError::APIError(error @ ClientWriteError::LogEntryDiscarded(_)) => {
                Status::unavailable(error.to_string())
            }
            RaftError::APIError(error @ ClientWriteError::PreconditionFailed(_)) => {
                Status::failed_precondition(error.to_string())
            }
            RaftError::Fatal(error) => Status::internal(error.to_string()),
        }
    }

    fn changed(&self) -> Result<Response<pb::MembershipResponse>, Status> {
        Ok(Response::new(pb::MembershipResponse {
            members: members(&self.node),
        }))
    }
}

/// Voters and learners with their addresses, by id.
fn members(node: &Node) -> Vec<pb::Member> {
    let metrics = node.raft.metrics();
    let metrics = metrics.borrow_watched();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let nodes: BTreeMap<u64, String> = membership
        .nodes()
        .map(|(id, info)| (*id, info.addr.clone()))
        .collect();
    nodes
        .into_iter()
        .map(|(id, addr)| pb::Member {
            id,
            addr,
            voter: voters.contains(&id),
        })
        .collect()
}
