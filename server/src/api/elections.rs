//! holdfast.v1.Elections: leader election on top of locks (etcd v3election semantics). An
//! election is an exclusive lock whose holder is the leader; the hold's value is the leader's
//! proclamation and its fencing token the leader key's token.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use holdfast_core::{AcquireRequest, Command, Event, Mode, Outcome, State, limits};
use holdfast_proto::v1::{self as pb, elections_server::Elections};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::common::{header, read_state, write_command};
use super::locks::{Acquisition, acquire_and_wait};
use super::validate;
use crate::node::Node;
use crate::watch::{Refused, Signal};

/// Leader changes buffered per Observe stream before the sender waits for the client.
pub const OBSERVE_STREAM_BUFFER: usize = 64;

pub struct ElectionsApi {
    pub node: Arc<Node>,
}

fn value(value: &[u8]) -> Result<(), Status> {
    if value.len() > limits::VALUE_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "value: {} bytes, at most {} allowed",
            value.len(),
            limits::VALUE_BYTES_MAX
        )));
    }
    Ok(())
}

fn leader_key(key: Option<pb::LeaderKey>) -> Result<pb::LeaderKey, Status> {
    let key = key.ok_or_else(|| Status::invalid_argument("leader: must be set"))?;
    validate::lock_name("leader.name", &key.name)?;
    validate::session_id(key.session_id)?;
    validate::token(key.token)?;
    Ok(key)
}

/// The leader of election `name` in `state`.
fn leadership(state: &State, name: &str) -> Option<pb::Leadership> {
    let lock = state.lock(name)?;
    let holder = lock
        .holders
        .into_iter()
        .find(|h| h.mode == Mode::Exclusive)?;
    Some(pb::Leadership {
        key: Some(pb::LeaderKey {
            name: name.to_owned(),
            session_id: holder.session_id,
            token: holder.token,
        }),
        value: holder.value,
    })
}

/// Applies one revision's events for election `name` to the observed leadership.
fn observe_events(current: &mut Option<pb::Leadership>, name: &str, events: &[Event]) {
    for event in events {
        match event {
            Event::Acquired {
                name: lock,
                session_id,
                token,
                mode: Mode::Exclusive,
                value,
                ..
            } if lock == name => {
                *current = Some(pb::Leadership {
                    key: Some(pb::LeaderKey {
                        name: name.to_owned(),
                        session_id: *session_id,
                        token: *token,
                    }),
                    value: value.clone(),
                });
            }
            Event::Released {
                name: lock, token, ..
            } if lock == name
                && current
                    .as_ref()
                    .and_then(|l| l.key.as_ref())
                    .is_some_and(|k| k.token == *token) =>
            {
                *current = None;
            }
            Event::Proclaimed {
                name: lock,
                token,
                value,
                ..
            } if lock == name => {
                if let Some(leader) = current.as_mut()
                    && leader.key.as_ref().is_some_and(|k| k.token == *token)
                {
                    leader.value = value.clone();
                }
            }
            _ => {}
        }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::ObserveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Elections for ElectionsApi {
    #[tracing::instrument(level = "debug", skip_all, fields(lock = %request.get_ref().name, session_id = request.get_ref().session_id))]
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let caller = super::common::identity(&request);
        let request = request.into_inner();
        validate::session_id(request.session_id)?;
        validate::lock_name("name", &request.name)?;
        validate::wait_timeout_ms(request.wait_timeout_ms)?;
        value(&request.value)?;
        super::common::authorize_session(&self.node, caller.as_ref(), request.session_id).await?;
        let name = request.name.clone();
        let acquire = AcquireRequest {
            session_id: request.session_id,
            request_id: request.request_id,
            name: request.name,
            mode: Mode::Exclusive,
            max_holders: 0,
            wait_timeout_ms: request.wait_timeout_ms,
            priority: request.priority,
            value: request.value,
        };
        let response = match acquire_and_wait(&self.node, acquire).await? {
            Acquisition::Acquired {
                token,
                log_index,
                now_ms,
                ..
            } => pb::CampaignResponse {
                header: header(&self.node, log_index, now_ms),
                leader: Some(pb::LeaderKey {
                    name,
                    session_id: request.session_id,
                    token,
                }),
            },
            Acquisition::NotAcquired {
                log_index, now_ms, ..
            } => pb::CampaignResponse {
                header: header(&self.node, log_index, now_ms),
                leader: None,
            },
        };
        Ok(Response::new(response))
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let caller = super::common::identity(&request);
        let request = request.into_inner();
        let key = leader_key(request.leader)?;
        value(&request.value)?;
        super::common::authorize_session(&self.node, caller.as_ref(), key.session_id).await?;
        let command = Command::Proclaim {
            session_id: key.session_id,
            name: key.name,
            token: key.token,
            value: request.value,
        };
        let ((), header) = write_command(&self.node, "Proclaim", command, |outcome| {
            matches!(outcome, Outcome::Proclaimed { .. }).then_some(())
        })
        .await?;
        Ok(Response::new(pb::ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let request = request.into_inner();
        validate::lock_name("name", &request.name)?;
        let (leader, header) = read_state(&self.node, request.serializable, |s| {
            leadership(s, &request.name)
        })
        .await?;
        Ok(Response::new(pb::LeaderResponse { header, leader }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<pb::ObserveRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let name = request.into_inner().name;
        validate::lock_name("name", &name)?;
        // Subscribe first, then read the state: revisions at or below the state's index are
        // already reflected in it and are skipped; later ones arrive on the subscription.
        let (_, mut live) =
            self.node
                .shared
                .watch
                .subscribe(0)
                .map_err(|refused| match refused {
                    Refused::TooManyWatchers => super::watch::too_many_watchers(),
                    // A live subscription (from revision 0) is never compacted.
                    Refused::Compacted(_) => Status::internal("live watch refused"),
                })?;
        let read_now = {
            let shared = Arc::clone(&self.node.shared);
            let name = name.clone();
            move || shared.read(|s| (s.applied_index(), leadership(s, &name)))
        };
        let (tx, rx) = tokio::sync::mpsc::channel(OBSERVE_STREAM_BUFFER);
        tokio::spawn(async move {
            let (mut seen, mut current) = read_now();
            if tx
                .send(Ok(pb::ObserveResponse {
                    revision: seen,
                    leader: current.clone(),
                }))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let before = current.clone();
                match live.recv().await {
                    Ok(Signal::Revision(revision)) => {
                        if revision.revision <= seen {
                            continue;
                        }
                        seen = revision.revision;
                        observe_events(&mut current, &name, &revision.events);
                    }
                    Ok(Signal::Reset { .. }) => (seen, current) = read_now(),
                    Err(RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(Err(Status::resource_exhausted(
                                "this observer fell too far behind; observe again",
                            )))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
                if current != before
                    && tx
                        .send(Ok(pb::ObserveResponse {
                            revision: seen,
                            leader: current.clone(),
                        }))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let caller = super::common::identity(&request);
        let request = request.into_inner();
        let key = leader_key(request.leader)?;
        super::common::authorize_session(&self.node, caller.as_ref(), key.session_id).await?;
        let command = Command::Release {
            session_id: key.session_id,
            request_id: request.request_id,
            name: key.name,
            token: key.token,
        };
        let ((), header) = write_command(&self.node, "Resign", command, |outcome| {
            matches!(outcome, Outcome::Released { .. }).then_some(())
        })
        .await?;
        Ok(Response::new(pb::ResignResponse { header }))
    }
}
