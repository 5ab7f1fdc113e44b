//! The one table that turns replicated rejections and shell errors into gRPC statuses
//! (etcd's `toGRPCErrorMap`). Messages are for humans; codes are for programs.

use holdfast_core::Rejection;
use tonic::{Code, Status};

use crate::node::ServeError;

/// Metadata key carrying the leader's node id on UNAVAILABLE answers.
pub const LEADER_ID_HEADER: &str = "holdfast-leader-id";
/// Metadata key carrying the leader's client address on UNAVAILABLE answers.
pub const LEADER_ADDR_HEADER: &str = "holdfast-leader-addr";

pub fn rejection_status(rejection: &Rejection) -> Status {
    if let Rejection::PolicyDenied {
        reason,
        policy,
        version,
        prefix,
    } = rejection
    {
        // The reason, and which binding decided, in the status details too (`PolicyDenial`).
        return holdfast_proto::policy_denied_status(
            rejection.to_string(),
            &holdfast_proto::v1::PolicyDenial {
                reason: reason.clone(),
                policy: policy.clone(),
                version: *version,
                prefix: prefix.clone(),
            },
        );
    }
    let code = match rejection {
        Rejection::UnknownSession { .. }
        | Rejection::SessionEnded { .. }
        | Rejection::UnknownPolicy { .. }
        | Rejection::NotBound { .. } => Code::NotFound,
        Rejection::InvalidArgument { .. } => Code::InvalidArgument,
        Rejection::StaleToken { .. }
        | Rejection::NotHeld { .. }
        | Rejection::NotWaiting { .. }
        | Rejection::ModeConflict { .. }
        | Rejection::RequestTooOld { .. } => Code::FailedPrecondition,
        Rejection::LimitExceeded { .. } => Code::ResourceExhausted,
        Rejection::PolicyDenied { .. } => Code::PermissionDenied,
        // Normally answered in the response body (status WOULD_BLOCK / TIMED_OUT), not as errors.
        Rejection::WouldBlock { .. } => Code::FailedPrecondition,
        Rejection::WaitTimedOut { .. } => Code::DeadlineExceeded,
    };
    Status::new(code, rejection.to_string())
}

pub fn serve_status(error: &ServeError) -> Status {
    let code = match error {
        ServeError::NotLeader { .. }
        | ServeError::LeaderChanged { .. }
        | ServeError::NoQuorum { .. }
        | ServeError::Stopped(_) => Code::Unavailable,
        ServeError::Overloaded => Code::ResourceExhausted,
        ServeError::Fatal(_) => Code::Internal,
    };
    let mut status = Status::new(code, error.to_string());
    let (leader_id, leader_addr) = error.leader();
    if let Some(id) = leader_id
        && let Ok(value) = id.to_string().parse()
    {
        status.metadata_mut().insert(LEADER_ID_HEADER, value);
    }
    if let Some(addr) = leader_addr
        && let Ok(value) = addr.parse()
    {
        status.metadata_mut().insert(LEADER_ADDR_HEADER, value);
    }
    status
}

impl From<ServeError> for Status {
    fn from(error: ServeError) -> Status {
        serve_status(&error)
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::serve_status;
    use crate::node::ServeError;

    /// Found by the simulator: a leader whose fsync failed answered its in-flight writes
    /// INTERNAL, which clients do not retry, though the followers went on to commit them.
    #[test]
    fn a_stopped_node_answers_unavailable_so_the_client_retries_elsewhere() {
        let status = serve_status(&ServeError::Stopped("fsync failed".to_owned()));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            serve_status(&ServeError::Fatal(String::new())).code(),
            Code::Internal
        );
    }
}
