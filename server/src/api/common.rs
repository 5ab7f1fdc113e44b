//! The steps every handler shares: write a command and take its outcome, read the applied
//! state (after a read barrier unless serializable), fill the response header, and check that
//! the caller may use a session.

use holdfast_core::{Command, Outcome};
use holdfast_proto::v1::ResponseHeader;

use super::{auth, status};
use crate::node::Node;

/// Header for an answer computed at `revision` (a write's log index, or the applied index of a
/// read) with cluster time `now_ms`.
pub(super) fn header(node: &Node, revision: u64, now_ms: u64) -> Option<ResponseHeader> {
    let (leader, leader_addr) = node.leader();
    Some(ResponseHeader {
        revision,
        node_id: node.id,
        leader_id: leader.unwrap_or(0),
        now_ms,
        leader_addr: leader_addr.unwrap_or_default(),
    })
}

/// Writes `command` (named `what` in errors) and takes from its outcome what `accept` picks. A
/// rejection becomes its status; any other outcome than the command's own is a bug, INTERNAL.
pub(super) async fn write_command<T>(
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

/// The caller's identity (present only when authentication is on).
pub(super) fn identity<T>(request: &tonic::Request<T>) -> Option<auth::Identity> {
    request.extensions().get::<auth::Identity>().cloned()
}

/// With authentication on, refuses a call on session `session_id` by anyone but the session's
/// principal or an admin. A session not applied here yet is looked up again after a read
/// barrier (a session id is the log index that opened it, so one that does not exist then
/// did not exist when the call was made); if it still does not exist the answer is NOT_FOUND,
/// as apply would say.
pub(super) async fn authorize_session(
    node: &Node,
    identity: Option<&auth::Identity>,
    session_id: u64,
) -> Result<(), tonic::Status> {
    let Some(identity) = identity else {
        return Ok(());
    };
    let owner = || {
        node.shared
            .read(|s| s.session_identity(session_id).map(|(p, _)| p.to_owned()))
    };
    let owner = match owner() {
        Some(owner) => Some(owner),
        None => {
            node.read_barrier().await?;
            owner()
        }
    };
    match owner {
        Some(owner) if auth::may_use_session(Some(identity), &owner) => Ok(()),
        Some(owner) => Err(tonic::Status::permission_denied(format!(
            "session {session_id} belongs to principal {owner:?}, not to {:?}",
            identity.principal
        ))),
        None => Err(tonic::Status::not_found(format!(
            "session {session_id} does not exist (never opened, closed or expired)"
        ))),
    }
}

/// Reads the applied state, after a linearizable read barrier unless `serializable`, with the
/// header of exactly the revision that was read.
pub(super) async fn read_state<T>(
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
