//! holdfast.v1.Watch: the node's applied events as a stream, from a revision.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use holdfast_core::{Event, LeaveReason, ReleaseReason};
use holdfast_proto::v1::{self as pb, watch_server::Watch};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::{locks::mode_to_pb, validate};
use crate::node::Node;
use crate::watch::{Refused, Revision, Signal, WATCHERS_PER_NODE_MAX};

/// Responses buffered per watch stream before the sender waits for the client.
pub const WATCH_STREAM_BUFFER: usize = 256;
/// Metadata key carrying the oldest revision still available, on a compacted answer.
pub const COMPACTED_REVISION_HEADER: &str = "holdfast-compacted-revision";

pub struct WatchApi {
    pub node: Arc<Node>,
}

fn compacted(oldest: u64, asked: u64) -> Status {
    let mut status = Status::out_of_range(format!(
        "revision {asked} is compacted on this node; the oldest available is {oldest}: re-sync with Describe/List and watch from there"
    ));
    if let Ok(value) = oldest.to_string().parse() {
        status
            .metadata_mut()
            .insert(COMPACTED_REVISION_HEADER, value);
    }
    status
}

/// RESOURCE_EXHAUSTED naming the limit (another node may have room: clients may retry there).
pub(super) fn too_many_watchers() -> Status {
    Status::resource_exhausted(format!(
        "watchers_per_node_max: this node already serves {WATCHERS_PER_NODE_MAX} watch and observe streams"
    ))
}

fn release_reason(reason: ReleaseReason) -> pb::EventReason {
    match reason {
        ReleaseReason::Released => pb::EventReason::Released,
        ReleaseReason::SessionClosed => pb::EventReason::SessionClosed,
        ReleaseReason::SessionExpired => pb::EventReason::SessionExpired,
        ReleaseReason::LeaseExpired => pb::EventReason::LeaseExpired,
        ReleaseReason::Preempted => pb::EventReason::Preempted,
        ReleaseReason::Revoked => pb::EventReason::Revoked,
    }
}

pub(super) fn bind_mode_to_pb(mode: holdfast_core::BindMode) -> pb::BindMode {
    match mode {
        holdfast_core::BindMode::Enforce => pb::BindMode::Enforce,
        holdfast_core::BindMode::Shadow => pb::BindMode::Shadow,
    }
}

fn leave_reason(reason: LeaveReason) -> pb::EventReason {
    match reason {
        LeaveReason::TimedOut => pb::EventReason::TimedOut,
        LeaveReason::Cancelled => pb::EventReason::Cancelled,
        LeaveReason::SessionClosed => pb::EventReason::SessionClosed,
        LeaveReason::SessionExpired => pb::EventReason::SessionExpired,
    }
}

/// The event as the API shows it, or None when it does not match `prefix`.
fn event_to_pb(event: &Event, prefix: &str) -> Option<pb::WatchEvent> {
    let principal = match event {
        Event::SessionOpened { principal, .. }
        | Event::SessionClosed { principal, .. }
        | Event::SessionExpired { principal, .. }
        | Event::Acquired { principal, .. }
        | Event::Proclaimed { principal, .. }
        | Event::Released { principal, .. }
        | Event::Queued { principal, .. }
        | Event::LeftQueue { principal, .. } => principal.as_str(),
        Event::PolicyDeployed { .. }
        | Event::PolicyBound { .. }
        | Event::PolicyUnbound { .. }
        | Event::PolicyFault { .. }
        | Event::PolicyDisagreement { .. } => "",
    };
    event_kind_to_pb(event, prefix).map(|e| pb::WatchEvent {
        principal: principal.to_owned(),
        ..e
    })
}

fn event_kind_to_pb(event: &Event, prefix: &str) -> Option<pb::WatchEvent> {
    let session = |kind: pb::EventKind, session_id: u64| {
        prefix.is_empty().then(|| pb::WatchEvent {
            kind: kind as i32,
            session_id,
            ..Default::default()
        })
    };
    let lock = |name: &str, kind: pb::EventKind, session_id: u64| {
        name.starts_with(prefix).then(|| pb::WatchEvent {
            kind: kind as i32,
            lock: name.to_owned(),
            session_id,
            ..Default::default()
        })
    };
    match event {
        Event::SessionOpened { session_id, .. } => {
            session(pb::EventKind::SessionOpened, *session_id)
        }
        Event::SessionClosed { session_id, .. } => {
            session(pb::EventKind::SessionClosed, *session_id)
        }
        Event::SessionExpired { session_id, .. } => {
            session(pb::EventKind::SessionExpired, *session_id)
        }
        Event::Acquired {
            name,
            session_id,
            token,
            mode,
            lease_ms,
            value,
            granted_by,
            ..
        } => lock(name, pb::EventKind::Acquired, *session_id).map(|e| {
            let (policy, policy_version) = super::locks::granted_by_to_pb(granted_by.as_ref());
            pb::WatchEvent {
                value: value.clone(),
                token: *token,
                mode: mode_to_pb(*mode),
                lease_ms: *lease_ms,
                policy,
                policy_version,
                ..e
            }
        }),
        Event::Proclaimed {
            name,
            session_id,
            token,
            value,
            ..
        } => lock(name, pb::EventKind::Proclaimed, *session_id).map(|e| pb::WatchEvent {
            token: *token,
            value: value.clone(),
            ..e
        }),
        Event::Released {
            name,
            session_id,
            token,
            reason,
            ..
        } => lock(name, pb::EventKind::Released, *session_id).map(|e| pb::WatchEvent {
            token: *token,
            reason: release_reason(*reason) as i32,
            ..e
        }),
        Event::Queued {
            name,
            session_id,
            position,
            ..
        } => lock(name, pb::EventKind::Queued, *session_id).map(|e| pb::WatchEvent {
            position: *position,
            ..e
        }),
        Event::LeftQueue {
            name,
            session_id,
            reason,
            ..
        } => lock(name, pb::EventKind::LeftQueue, *session_id).map(|e| pb::WatchEvent {
            reason: leave_reason(*reason) as i32,
            ..e
        }),
        Event::PolicyDeployed { name, version } => {
            session(pb::EventKind::PolicyDeployed, 0).map(|e| pb::WatchEvent {
                policy: name.clone(),
                policy_version: *version,
                ..e
            })
        }
        Event::PolicyBound {
            prefix: bound,
            policy,
            version,
            mode,
        } => lock(bound, pb::EventKind::PolicyBound, 0).map(|e| pb::WatchEvent {
            policy: policy.clone(),
            policy_version: *version,
            prefix: bound.clone(),
            bind_mode: bind_mode_to_pb(*mode) as i32,
            ..e
        }),
        Event::PolicyUnbound {
            prefix: bound,
            mode,
        } => lock(bound, pb::EventKind::PolicyUnbound, 0).map(|e| pb::WatchEvent {
            prefix: bound.clone(),
            bind_mode: bind_mode_to_pb(*mode) as i32,
            ..e
        }),
        Event::PolicyFault {
            name,
            prefix: bound,
            policy,
            version,
            mode,
            hook,
        } => lock(name, pb::EventKind::PolicyFault, 0).map(|e| pb::WatchEvent {
            policy: policy.clone(),
            policy_version: *version,
            prefix: bound.clone(),
            bind_mode: bind_mode_to_pb(*mode) as i32,
            hook: hook.clone(),
            ..e
        }),
        Event::PolicyDisagreement {
            name,
            prefix: bound,
            policy,
            version,
            hook,
        } => lock(name, pb::EventKind::PolicyDisagreement, 0).map(|e| pb::WatchEvent {
            policy: policy.clone(),
            policy_version: *version,
            prefix: bound.clone(),
            bind_mode: pb::BindMode::Shadow as i32,
            hook: hook.clone(),
            ..e
        }),
    }
}

fn revision_to_pb(revision: &Revision, prefix: &str) -> Option<pb::WatchResponse> {
    let events: Vec<pb::WatchEvent> = revision
        .events
        .iter()
        .filter_map(|e| event_to_pb(e, prefix))
        .collect();
    (!events.is_empty()).then_some(pb::WatchResponse {
        revision: revision.revision,
        events,
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchApi {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let request = request.into_inner();
        validate::prefix(&request.prefix)?;
        let (backlog, mut live) = self
            .node
            .shared
            .watch
            .subscribe(request.from_revision)
            .map_err(|refused| match refused {
                Refused::Compacted(c) => compacted(c.oldest, request.from_revision),
                Refused::TooManyWatchers => too_many_watchers(),
            })?;
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_STREAM_BUFFER);
        let prefix = request.prefix;
        tokio::spawn(async move {
            let mut last_sent = request.from_revision.saturating_sub(1);
            for revision in backlog {
                if let Some(response) = revision_to_pb(&revision, &prefix)
                    && tx.send(Ok(response)).await.is_err()
                {
                    return;
                }
                last_sent = revision.revision;
            }
            loop {
                let outcome = match live.recv().await {
                    Ok(Signal::Revision(revision)) => {
                        if revision.revision <= last_sent {
                            continue;
                        }
                        last_sent = revision.revision;
                        match revision_to_pb(&revision, &prefix) {
                            Some(response) => Ok(response),
                            None => continue,
                        }
                    }
                    Ok(Signal::Reset { floor }) => Err(compacted(floor + 1, last_sent + 1)),
                    Err(RecvError::Lagged(_)) => Err(Status::resource_exhausted(format!(
                        "this watcher fell too far behind; resume from revision {}",
                        last_sent + 1
                    ))),
                    Err(RecvError::Closed) => Err(Status::unavailable("the node is shutting down")),
                };
                let stop = outcome.is_err();
                if tx.send(outcome).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
