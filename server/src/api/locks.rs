//! holdfast.v1.Locks: acquire (try or queued), release, check token, describe, list.

use std::sync::Arc;

use holdfast_core::{
    AcquireRequest, Command, HolderView, LeaveReason, LockView, Mode, Outcome, Rejection,
    WaiterInfo,
};
use holdfast_proto::v1::{self as pb, locks_server::Locks};
use tonic::{Request, Response, Status};

use super::common::{header, read_state, write_command};
use super::status::rejection_status;
use super::validate;
use crate::node::Node;
use crate::waiters::WaitResult;

pub struct LocksApi {
    pub node: Arc<Node>,
    /// Whether this node accepts Revoke without authentication (`--allow-admin`).
    pub allow_admin: bool,
}

fn mode_from_pb(mode: i32) -> Result<Mode, Status> {
    match pb::LockMode::try_from(mode) {
        Ok(pb::LockMode::Exclusive) => Ok(Mode::Exclusive),
        Ok(pb::LockMode::Shared) => Ok(Mode::Shared),
        Err(_) => Err(Status::invalid_argument(format!(
            "mode: unknown lock mode {mode}"
        ))),
    }
}

pub(super) fn mode_to_pb(mode: Mode) -> i32 {
    match mode {
        Mode::Exclusive => pb::LockMode::Exclusive as i32,
        Mode::Shared => pb::LockMode::Shared as i32,
    }
}

pub(super) fn holder_to_pb(holder: &HolderView) -> pb::Holder {
    let (policy, policy_version) = granted_by_to_pb(holder.granted_by.as_ref());
    pb::Holder {
        session_id: holder.session_id,
        token: holder.token,
        mode: mode_to_pb(holder.mode),
        since_ms: holder.since_ms,
        lease_expires_at_ms: holder.lease_expires_at_ms.unwrap_or(0),
        value: holder.value.clone(),
        policy,
        policy_version,
    }
}

/// The policy and version clients see for the policy that granted a hold ("builtin", 0, for
/// the built-in FIFO): in Describe's holders and the watch's ACQUIRED events.
pub(super) fn granted_by_to_pb(granted_by: Option<&holdfast_core::GrantedBy>) -> (String, u64) {
    granted_by.map_or_else(
        || (holdfast_core::BUILTIN_POLICY.to_owned(), 0),
        |by| (by.policy.clone(), by.version),
    )
}

fn waiter_to_pb(waiter: &WaiterInfo) -> pb::Waiter {
    pb::Waiter {
        session_id: waiter.session_id,
        mode: mode_to_pb(waiter.mode),
        position: waiter.position,
        priority: waiter.priority,
        queued_at_ms: waiter.queued_at_ms,
        deadline_ms: waiter.deadline_ms,
    }
}

fn lock_to_pb(lock: &LockView) -> pb::LockInfo {
    pb::LockInfo {
        name: lock.name.clone(),
        mode: mode_to_pb(lock.mode),
        max_holders: lock.max_holders,
        holders: lock.holders.iter().map(holder_to_pb).collect(),
        waiters: lock.waiters.iter().map(waiter_to_pb).collect(),
        delayed_until_ms: lock.delayed_until_ms.unwrap_or(0),
    }
}

/// Removes the queue entry when the client stops waiting (its RPC is dropped) before an answer.
struct CancelOnDrop {
    node: Arc<Node>,
    session_id: u64,
    name: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let node = Arc::clone(&self.node);
        let command = Command::CancelWait {
            session_id: self.session_id,
            name: std::mem::take(&mut self.name),
        };
        tokio::spawn(async move {
            if let Err(e) = node.write(command).await {
                tracing::debug!(error = %e, "cancelling an abandoned wait failed; it will time out");
            }
        });
    }
}

/// How an acquire (or an election campaign) ended, when it did not fail.
pub(super) enum Acquisition {
    Acquired {
        token: u64,
        lease_ms: u64,
        reentrant: bool,
        log_index: u64,
        now_ms: u64,
    },
    NotAcquired {
        status: pb::AcquireStatus,
        log_index: u64,
        now_ms: u64,
    },
}

/// Proposes an Acquire and, when it queues, waits for this node's own apply to grant it (or to
/// drop it from the queue). Cancelling the caller's future removes the queue entry.
/// Writes a Release or Revoke and answers with the index at which the hold ended.
async fn release_command(
    node: &Node,
    what: &str,
    command: Command,
) -> Result<Response<pb::ReleaseResponse>, Status> {
    let (released_at, header) = write_command(node, what, command, |outcome| match outcome {
        Outcome::Released { released_at, .. } => Some(*released_at),
        _ => None,
    })
    .await?;
    Ok(Response::new(pb::ReleaseResponse {
        header,
        released_at,
    }))
}

pub(super) async fn acquire_and_wait(
    node: &Arc<Node>,
    request: AcquireRequest,
) -> Result<Acquisition, Status> {
    let session_id = request.session_id;
    let name = request.name.clone();
    // Register before proposing, so that a grant applied before we start waiting is not missed.
    let wait =
        (request.wait_timeout_ms > 0).then(|| node.shared.waiters.register(session_id, &name));
    let mut guard = CancelOnDrop {
        node: Arc::clone(node),
        session_id,
        name: name.clone(),
        armed: false,
    };
    let proposed = std::time::Instant::now();
    let response = node.write(Command::Acquire(request)).await?;
    let now_ms = || node.shared.read(|s| s.now_ms());
    match response.outcome {
        Outcome::Acquired {
            token,
            lease_ms,
            reentrant,
        } => Ok(Acquisition::Acquired {
            token,
            lease_ms,
            reentrant,
            log_index: response.log_index,
            now_ms: response.now_ms,
        }),
        Outcome::Queued { .. } => {
            let Some(wait) = wait else {
                return Err(Status::internal("queued a try-lock"));
            };
            guard.armed = true;
            let result = wait.after(response.log_index).await;
            guard.armed = false;
            match result {
                WaitResult::Granted {
                    token,
                    lease_ms,
                    log_index,
                } => {
                    node.lock_wait_seconds
                        .record(proposed.elapsed().as_secs_f64());
                    Ok(Acquisition::Acquired {
                        token,
                        lease_ms,
                        reentrant: false,
                        log_index,
                        now_ms: now_ms(),
                    })
                }
                WaitResult::Left {
                    reason: LeaveReason::TimedOut,
                    log_index,
                } => Ok(Acquisition::NotAcquired {
                    status: pb::AcquireStatus::TimedOut,
                    log_index,
                    now_ms: now_ms(),
                }),
                WaitResult::Left {
                    reason: LeaveReason::Cancelled,
                    ..
                } => Err(Status::cancelled(format!(
                    "the wait for lock {name} was cancelled"
                ))),
                WaitResult::Left {
                    reason: LeaveReason::SessionClosed | LeaveReason::SessionExpired,
                    ..
                } => Err(rejection_status(&Rejection::SessionEnded { name })),
                WaitResult::Lost { .. } => Err(Status::aborted(format!(
                    "this node installed a snapshot and session {session_id} no longer waits for lock {name}; describe the lock or retry"
                ))),
            }
        }
        Outcome::Rejected(Rejection::WouldBlock { .. }) => Ok(Acquisition::NotAcquired {
            status: pb::AcquireStatus::WouldBlock,
            log_index: response.log_index,
            now_ms: response.now_ms,
        }),
        Outcome::Rejected(Rejection::WaitTimedOut { .. }) => Ok(Acquisition::NotAcquired {
            status: pb::AcquireStatus::TimedOut,
            log_index: response.log_index,
            now_ms: response.now_ms,
        }),
        // A retry of a request whose wait was cancelled (its RPC ended, e.g. the connection
        // broke) gets the recorded cancellation: the client should ask again, as a new request.
        Outcome::WaitCancelled => Err(Status::aborted(format!(
            "the wait for lock {name} by session {session_id} was cancelled when an earlier attempt of this request ended; send it again with a new request id"
        ))),
        Outcome::Rejected(rejection) => Err(rejection_status(&rejection)),
        other => Err(Status::internal(format!(
            "unexpected outcome for Acquire: {other:?}"
        ))),
    }
}

#[tonic::async_trait]
impl Locks for LocksApi {
    #[tracing::instrument(level = "debug", skip_all, fields(lock = %request.get_ref().name, session_id = request.get_ref().session_id))]
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let caller = super::common::identity(&request);
        let request = request.into_inner();
        validate::session_id(request.session_id)?;
        validate::lock_name("name", &request.name)?;
        validate::wait_timeout_ms(request.wait_timeout_ms)?;
        validate::max_holders(request.max_holders)?;
        super::common::authorize_session(&self.node, caller.as_ref(), request.session_id).await?;
        let mode = mode_from_pb(request.mode)?;
        let name = request.name.clone();
        let request = AcquireRequest {
            session_id: request.session_id,
            request_id: request.request_id,
            name: request.name,
            mode,
            max_holders: request.max_holders,
            wait_timeout_ms: request.wait_timeout_ms,
            priority: request.priority,
            value: Vec::new(),
        };
        let response = match acquire_and_wait(&self.node, request).await? {
            Acquisition::Acquired {
                token,
                lease_ms,
                reentrant,
                log_index,
                now_ms,
            } => pb::AcquireResponse {
                header: header(&self.node, log_index, now_ms),
                status: pb::AcquireStatus::Acquired as i32,
                token,
                lease_ms,
                reentrant,
                delayed_until_ms: 0,
            },
            Acquisition::NotAcquired {
                status,
                log_index,
                now_ms,
            } => pb::AcquireResponse {
                header: header(&self.node, log_index, now_ms),
                status: status as i32,
                // Why it was not granted, when the lock is in lock-delay: as this node's state
                // has it now (at or after `log_index`).
                delayed_until_ms: self
                    .node
                    .shared
                    .read(|s| s.lock_delayed_until_ms(&name).unwrap_or(0)),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(lock = %request.get_ref().name, fencing_token = request.get_ref().token))]
    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = super::common::identity(&request);
        let request = request.into_inner();
        validate::session_id(request.session_id)?;
        validate::lock_name("name", &request.name)?;
        validate::token(request.token)?;
        super::common::authorize_session(&self.node, caller.as_ref(), request.session_id).await?;
        let command = Command::Release {
            session_id: request.session_id,
            request_id: request.request_id,
            name: request.name,
            token: request.token,
        };
        release_command(&self.node, "Release", command).await
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        // With authentication on, the auth layer has required the admin role.
        if !self.allow_admin && super::common::identity(&request).is_none() {
            return Err(Status::permission_denied(
                "Revoke is an admin call and this node does not allow them (start it with \
                 --allow-admin, or authenticate with an admin token)",
            ));
        }
        let request = request.into_inner();
        validate::lock_name("name", &request.name)?;
        validate::token(request.token)?;
        let command = Command::Revoke {
            name: request.name,
            token: request.token,
        };
        release_command(&self.node, "Revoke", command).await
    }

    async fn check_token(
        &self,
        request: Request<pb::CheckTokenRequest>,
    ) -> Result<Response<pb::CheckTokenResponse>, Status> {
        let request = request.into_inner();
        validate::lock_name("name", &request.name)?;
        let (holder, header) = read_state(&self.node, request.serializable, |s| {
            s.check_token(&request.name, request.token)
        })
        .await?;
        Ok(Response::new(pb::CheckTokenResponse {
            header,
            current: holder.is_some(),
            session_id: holder.unwrap_or(0),
        }))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        let request = request.into_inner();
        validate::lock_name("name", &request.name)?;
        let (lock, header) =
            read_state(&self.node, request.serializable, |s| s.lock(&request.name)).await?;
        Ok(Response::new(pb::DescribeResponse {
            header,
            lock: lock.as_ref().map(lock_to_pb),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let request = request.into_inner();
        validate::prefix(&request.prefix)?;
        let limit = validate::list_limit(request.limit);
        let (locks, header) = read_state(&self.node, request.serializable, |s| {
            s.locks(&request.prefix, limit)
        })
        .await?;
        Ok(Response::new(pb::ListResponse {
            header,
            locks: locks.iter().map(lock_to_pb).collect(),
        }))
    }
}
