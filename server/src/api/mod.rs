//! The gRPC edge: the only place that knows protobuf. Every handler has the same steps (etcd's
//! v3rpc): validate the request's shape → write or read through [`Node`] → map rejections and
//! errors through `status` → fill the response header.

mod elections;
mod locks;
mod peer;
mod policies;
pub mod rpc_metrics;
mod sessions;
pub mod status;
mod validate;
mod watch;

use std::sync::Arc;

use holdfast_core::{Command, Outcome};
use holdfast_proto::v1::{self as pb, ResponseHeader};
use openraft::async_runtime::WatchReceiver as _;

use crate::node::Node;

pub use elections::ElectionsApi;
pub use locks::LocksApi;
pub use peer::PeerApi;
pub use policies::PoliciesApi;
pub use sessions::SessionsApi;
pub use watch::WatchApi;

/// Header for an answer computed at `revision` (a write's log index, or the applied index of a
/// read) with cluster time `now_ms`.
fn header(node: &Node, revision: u64, now_ms: u64) -> Option<ResponseHeader> {
    let (leader, _) = node.leader();
    Some(ResponseHeader {
        revision,
        node_id: node.id,
        leader_id: leader.unwrap_or(0),
        now_ms,
    })
}

/// Writes `command` (named `what` in errors) and takes from its outcome what `accept` picks. A
/// rejection becomes its status; any other outcome than the command's own is a bug, INTERNAL.
async fn write_command<T>(
    node: &Node,
    what: &str,
    command: Command,
    accept: impl FnOnce(&Outcome) -> Option<T>,
) -> Result<(T, Option<ResponseHeader>), tonic::Status> {
    let response = node.write(command).await?;
    let header = header(node, response.log_index, response.now_ms);
    match &response.outcome {
        Outcome::Rejected(rejection) => Err(status::rejection_status(rejection)),
        outcome => accept(outcome).map(|value| (value, header)).ok_or_else(|| {
            tonic::Status::internal(format!("unexpected outcome for {what}: {outcome:?}"))
        }),
    }
}

/// Reads the applied state, after a linearizable read barrier unless `serializable`, with the
/// header of exactly the revision that was read.
async fn read_state<T>(
    node: &Node,
    serializable: bool,
    read: impl FnOnce(&holdfast_core::State) -> T,
) -> Result<(T, Option<ResponseHeader>), tonic::Status> {
    if !serializable {
        node.read_barrier().await?;
    }
    let (value, revision, now_ms) = node
        .shared
        .read(|s| (read(s), s.applied_index(), s.now_ms()));
    Ok((value, header(node, revision, now_ms)))
}

pub struct ClusterApi {
    pub node: Arc<Node>,
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
            let divergence = checkpoints.first_mismatch().map_or_else(String::new, |m| {
                format!(
                    "state digest at log index {} differs from node {}'s ({} here, {} there)",
                    m.index,
                    m.peer,
                    crate::policy::module::hex(&m.ours),
                    crate::policy::module::hex(&m.theirs)
                )
            });
            (checkpoints.latest(), checkpoints.mismatches(), divergence)
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
}
