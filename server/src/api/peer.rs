//! The internal peer service: Raft RPCs, and the leader's side of forwarded writes, keepalives
//! and read-index requests. Payloads are `raft::codec` bincode.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use holdfast_core::{Command, SessionId};
use holdfast_proto::internal::{Payload, peer_server::Peer};
use openraft::raft::{AppendEntriesRequest, StreamAppendError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status, Streaming};

use crate::node::{Node, Renewal, ServeError};
use crate::raft::network::{PEER_CLUSTER_HEADER, PEER_FROM_HEADER};
use crate::raft::{SnapshotMeta, TypeConfig, Vote, codec};

pub struct PeerApi {
    pub node: Arc<Node>,
    pub cluster_id: String,
    /// TLS is on: a peer call must come with the calling node's certificate.
    pub tls: bool,
    /// node → the certificate (DER) it last presented and passed the check: every
    /// AppendEntries of a connection carries the same one, so it is parsed once, not per call.
    pub verified_certificates: std::sync::Mutex<std::collections::BTreeMap<u64, Vec<u8>>>,
}

impl PeerApi {
    /// Refuses a peer call for another cluster, or from a node that is neither a configured
    /// peer nor in the membership. (With authentication on, the auth layer has already
    /// required a `peer` token.)
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let cluster = header(PEER_CLUSTER_HEADER);
        if cluster != Some(self.cluster_id.as_str()) {
            return Err(Status::permission_denied(format!(
                "peer call for cluster {cluster:?}; this node belongs to {:?}",
                self.cluster_id
            )));
        }
        let from = header(PEER_FROM_HEADER).and_then(|id| id.parse::<u64>().ok());
        let Some(from) = from.filter(|from| self.node.knows_peer(*from)) else {
            return Err(Status::permission_denied(format!(
                "peer call from node {from:?}, which is not a member of this cluster"
            )));
        };
        if self.tls {
            let certificates = request.peer_certs();
            let der = certificates
                .as_ref()
                .and_then(|certificates| certificates.first())
                .map(|certificate| certificate.as_ref());
            let mut verified = self
                .verified_certificates
                .lock()
                .expect("verified certificates lock");
            if der.is_none() || verified.get(&from).map(Vec::as_slice) != der {
                let expected = crate::tls::node_common_name(from);
                let presented = der.and_then(crate::tls::common_name);
                if presented.as_deref() != Some(expected.as_str()) {
                    return Err(Status::permission_denied(format!(
                        "a peer call from node {from} must present its certificate (CN {expected}); got {presented:?}"
                    )));
                }
                verified.insert(from, der.map(<[u8]>::to_vec).unwrap_or_default());
            }
        }
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(request: Request<Payload>) -> Result<T, Status> {
    codec::decode(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable peer payload: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<Payload>, Status> {
    Ok(Response::new(Payload {
        data: codec::encode(value),
    }))
}

type AppendStream = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerApi {
    type AppendStreamStream = AppendStream;

    /// The follower's side of a pipelined replication stream: requests go to openraft as they
    /// arrive, answers come back in order. A request that does not decode (or a broken input
    /// stream) ends the input; openraft answers what came before and ends the stream.
    async fn append_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<AppendStream>, Status> {
        self.admit(&request)?;
        let requests = request.into_inner().scan((), |(), item| {
            let decoded = item
                .map_err(|status| status.message().to_owned())
                .and_then(|payload| {
                    codec::decode::<AppendEntriesRequest<TypeConfig>>(&payload.data)
                        .map_err(|e| e.to_string())
                });
            if let Err(error) = &decoded {
                tracing::debug!(%error, "append stream: input ended");
            }
            std::future::ready(decoded.ok())
        });
        let node = Arc::clone(&self.node);
        let answers = self.node.raft.stream_append(requests).map(move |result| {
            // Any answer but "your vote is stale" means the sender is our current leader.
            if let Ok(answer) = &result
                && !matches!(answer, Err(StreamAppendError::HigherVote(_)))
            {
                node.note_leader_contact();
            }
            let result = result.map_err(|fatal| fatal.to_string());
            Ok(Payload {
                data: codec::encode(&result),
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn append_entries(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&request)?;
        let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = decode(request)?;
        let result = self
            .node
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| e.to_string());
        // Any answer but "your vote is stale" means the sender is our current leader.
        if matches!(&result, Ok(response) if !matches!(response, openraft::raft::AppendEntriesResponse::HigherVote(_)))
        {
            self.node.note_leader_contact();
        }
        reply(&result)
    }

    async fn vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&request)?;
        let rpc: openraft::raft::VoteRequest<TypeConfig> = decode(request)?;
        let result = self.node.raft.vote(rpc).await.map_err(|e| e.to_string());
        reply(&result)
    }

    async fn pre_vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&request)?;
        let rpc: openraft::raft::VoteRequest<TypeConfig> = decode(request)?;
        let result = self
            .node
            .raft
            .pre_vote(rpc)
            .await
            .map_err(|e| e.to_string());
        reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<Payload>, Status> {
        self.admit(&request)?;
        let (vote, meta, data): (Vote, SnapshotMeta, Vec<u8>) = decode(request)?;
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: data,
        };
        let result = self
            .node
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string());
        reply(&result)
    }

    async fn forward(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&request)?;
        let command: Command = decode(request)?;
        let result = self.node.propose(command).await;
        reply(&result)
    }

    async fn renew(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&request)?;
        let sessions: Vec<SessionId> = decode(request)?;
        if sessions.len() > holdfast_core::limits::RENEWALS_PER_TICK_MAX {
            return Err(Status::invalid_argument("too many sessions in one renewal"));
        }
        let result: Result<Vec<Renewal>, ServeError> = self.node.renew_as_leader(&sessions).await;
        reply(&result)
    }

    async fn read_index(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&request)?;
        let () = decode(request)?;
        let result = self.node.read_index_as_leader().await;
        reply(&result)
    }

    async fn transfer_leader(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<Payload>, Status> {
        self.admit(&request)?;
        let rpc: openraft::raft::TransferLeaderRequest<TypeConfig> = decode(request)?;
        let result = self
            .node
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| e.to_string());
        reply(&result)
    }

    async fn checkpoints(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&request)?;
        let () = decode(request)?;
        let recent = self
            .node
            .shared
            .checkpoints
            .lock()
            .expect("checkpoints lock")
            .recent();
        reply(&recent)
    }

    async fn status(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&request)?;
        let () = decode(request)?;
        reply(&self.node.status())
    }
}
