//! holdfast.v1.Sessions: open, keepalive stream, close.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use holdfast_core::{Command, Outcome};
use holdfast_proto::v1::{self as pb, sessions_server::Sessions};
use tonic::{Request, Response, Status, Streaming};

use super::{authorize_session, identity, validate, write_command};
use crate::node::{Node, Renewal};

/// Most keepalive responses buffered per stream before the client reads them.
pub const KEEPALIVE_STREAM_BUFFER: usize = 16;

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
        let mut requests = request.into_inner();
        let node = Arc::clone(&self.node);
        let (tx, rx) = tokio::sync::mpsc::channel(KEEPALIVE_STREAM_BUFFER);
        tokio::spawn(async move {
            while let Some(next) = requests.next().await {
                let reply = match next {
                    Err(status) => Err(status),
                    Ok(request) if request.session_id == 0 => {
                        Err(Status::invalid_argument("session_id: must be set"))
                    }
                    Ok(request)
                        if let Err(status) =
                            authorize_session(&node, caller.as_ref(), request.session_id).await =>
                    {
                        Err(status)
                    }
                    Ok(request) => match node.renew(vec![request.session_id]).await {
                        Ok(renewals) => match renewals.first() {
                            Some(Renewal::Renewed { ttl_ms }) => Ok(pb::KeepAliveResponse {
                                session_id: request.session_id,
                                ttl_ms: *ttl_ms,
                            }),
                            _ => Err(Status::not_found(format!(
                                "session {} does not exist (closed or expired)",
                                request.session_id
                            ))),
                        },
                        Err(e) => Err(e.into()),
                    },
                };
                let stop = reply
                    .as_ref()
                    .is_err_and(|s| s.code() == tonic::Code::NotFound);
                if tx.send(reply).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
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
