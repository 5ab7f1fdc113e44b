//! holdfast.v1.Sessions: open, keepalive stream, close.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use holdfast_core::{Command, Outcome};
use holdfast_proto::v1::{self as pb, sessions_server::Sessions};
use tonic::{Request, Response, Status, Streaming};

use super::common::{authorize_session, identity, write_command};
use super::validate;
use crate::node::{Node, Renewal};

pub struct SessionsApi {
    pub node: Arc<Node>,
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::KeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Sessions for SessionsApi {
    #[tracing::instrument(level = "debug", skip_all, fields(ttl_ms = request.get_ref().ttl_ms))]
    async fn open(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let caller = identity(&request);
        let mut request = request.into_inner();
        validate::ttl_ms(request.ttl_ms)?;
        validate::principal(&request.principal)?;
        // The authenticated principal is stamped into the session; a client cannot pick another.
        if let Some(caller) = caller {
            if !request.principal.is_empty() && request.principal != caller.principal {
                return Err(Status::permission_denied(format!(
                    "principal {:?} is not yours: this token authenticates {:?}",
                    request.principal, caller.principal
                )));
            }
            request.principal = caller.principal;
        }
        let labels = request.labels.into_iter().collect();
        validate::labels(&labels)?;
        let command = Command::OpenSession {
            ttl_ms: request.ttl_ms,
            principal: request.principal,
            labels,
        };
        let ((session_id, ttl_ms), header) = write_command(
            &self.node,
            "OpenSession",
            command,
            |outcome| match outcome {
                Outcome::SessionOpened { session_id, ttl_ms } => Some((*session_id, *ttl_ms)),
                _ => None,
            },
        )
        .await?;
        Ok(Response::new(pb::OpenSessionResponse {
            header,
            session_id,
            ttl_ms,
        }))
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let caller = identity(&request);
        let requests = request.into_inner();
        let node = Arc::clone(&self.node);
        // Each request is answered when the response stream is polled, by the task hyper runs
        // for this stream: no task of our own and no channel between them. A spawned task
        // plus an mpsc channel cost one more wake-up per keepalive; S3 (64 streams) is
        // CPU-bound, and that hop was measurable. A NotFound ends the stream.
        let responses =
            futures::stream::unfold(Some((requests, node, caller)), |state| async move {
                let (mut requests, node, caller) = state?;
                let reply = match requests.next().await? {
                    Err(status) => Err(status),
                    Ok(request) => keep_alive_one(&node, caller.as_ref(), request).await,
                };
                let stop = reply
                    .as_ref()
                    .is_err_and(|s| s.code() == tonic::Code::NotFound);
                let next = (!stop).then_some((requests, node, caller));
                Some((reply, next))
            });
        Ok(Response::new(Box::pin(responses)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(session_id = request.get_ref().session_id))]
    async fn close(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let caller = identity(&request);
        let request = request.into_inner();
        validate::session_id(request.session_id)?;
        authorize_session(&self.node, caller.as_ref(), request.session_id).await?;
        let command = Command::CloseSession {
            session_id: request.session_id,
        };
        let ((), header) = write_command(&self.node, "CloseSession", command, |outcome| {
            matches!(outcome, Outcome::SessionClosed { .. }).then_some(())
        })
        .await?;
        Ok(Response::new(pb::CloseSessionResponse { header }))
    }
}

/// One keepalive of a stream.
async fn keep_alive_one(
    node: &Node,
    caller: Option<&super::auth::Identity>,
    request: pb::KeepAliveRequest,
) -> Result<pb::KeepAliveResponse, Status> {
    if request.session_id == 0 {
        return Err(Status::invalid_argument("session_id: must be set"));
    }
    authorize_session(node, caller, request.session_id).await?;
    match node.renew(vec![request.session_id]).await?.first() {
        Some(Renewal::Renewed {
            ttl_ms,
            remaining_ms,
        }) => Ok(pb::KeepAliveResponse {
            session_id: request.session_id,
            ttl_ms: *ttl_ms,
            remaining_ms: *remaining_ms,
        }),
        _ => Err(Status::not_found(format!(
            "session {} does not exist (closed or expired)",
            request.session_id
        ))),
    }
}
