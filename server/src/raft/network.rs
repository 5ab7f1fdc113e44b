//! Peer transport over tonic: one cached, lazily connected channel per peer, a deadline on every
//! call. Raft RPCs, write forwarding, keepalive forwarding and read-index requests all use it.
//!
//! Payloads are bincode (`raft::codec`) inside a protobuf `Payload`: the peer protocol is
//! internal and versioned with the binary.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_proto::internal::Payload;
use holdfast_proto::internal::peer_client::PeerClient;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{Serialize, de::DeserializeOwned};
use tonic::transport::{Channel, Endpoint};

use super::types::{NodeId, NodeInfo, Snapshot, TypeConfig, Vote, codec};

/// How long to wait for a TCP connection to a peer.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 500;
/// Largest peer message (a whole snapshot travels in one).
pub const PEER_MESSAGE_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Which peer RPC to call.
#[derive(Clone, Copy, Debug)]
pub enum PeerRpc {
    AppendEntries,
    Vote,
    PreVote,
    InstallSnapshot,
    Forward,
    Renew,
    ReadIndex,
    Checkpoints,
    TransferLeader,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no address known for node {0}")]
    NoAddress(NodeId),
    #[error("node {node} unreachable: {message}")]
    Unreachable { node: NodeId, message: String },
    #[error("node {node} did not answer within {timeout_ms} ms")]
    Timeout { node: NodeId, timeout_ms: u64 },
    #[error("node {node} sent an undecodable reply: {message}")]
    BadReply { node: NodeId, message: String },
}

/// Metadata every peer call carries: the cluster id, the sending node, and (with
/// authentication on) the peer token.
pub const PEER_CLUSTER_HEADER: &str = "holdfast-cluster-id";
pub const PEER_FROM_HEADER: &str = "holdfast-peer-from";

/// Who this node says it is on its peer calls.
pub struct PeerCredentials {
    pub from: NodeId,
    pub cluster_id: String,
    pub token: Option<String>,
    /// TLS towards peers (with this node's certificate), when TLS is on.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

type Ascii = tonic::metadata::AsciiMetadataValue;

/// Addresses and cached channels of every peer this node talks to.
pub struct Peers {
    /// (cluster id, from, authorization) as metadata values.
    credentials: (Ascii, Ascii, Option<Ascii>),
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Configured addresses (from `--peer`); they win over the addresses in the membership, so a
    /// test harness can route a node's peer traffic through its fault proxy.
    configured: BTreeMap<NodeId, String>,
    channels: Mutex<BTreeMap<NodeId, (String, Channel)>>,
}

impl Peers {
    pub fn new(
        configured: BTreeMap<NodeId, String>,
        credentials: &PeerCredentials,
    ) -> anyhow::Result<Arc<Peers>> {
        let ascii = |text: String| -> anyhow::Result<Ascii> {
            text.parse()
                .map_err(|_| anyhow::anyhow!("peer metadata must be printable ASCII"))
        };
        let credentials_tls = credentials.tls.clone();
        let credentials = (
            ascii(credentials.cluster_id.clone())?,
            ascii(credentials.from.to_string())?,
            credentials
                .token
                .as_ref()
                .map(|token| ascii(format!("Bearer {token}")))
                .transpose()?,
        );
        Ok(Arc::new(Peers {
            tls: credentials_tls,
            credentials,
            configured,
            channels: Mutex::new(BTreeMap::new()),
        }))
    }

    pub fn configured_addr(&self, node: NodeId) -> Option<&str> {
        self.configured.get(&node).map(String::as_str)
    }

    fn channel(&self, node: NodeId, membership_addr: Option<&str>) -> Result<Channel, PeerError> {
        let addr = self
            .configured_addr(node)
            .or(membership_addr)
            .ok_or(PeerError::NoAddress(node))?;
        let mut channels = self.channels.lock().expect("peer channel cache lock");
        if let Some((cached_addr, channel)) = channels.get(&node)
            && cached_addr == addr
        {
            return Ok(channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| {
            PeerError::Unreachable {
                node,
                message: e.to_string(),
            }
        })?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| PeerError::Unreachable {
                    node,
                    message: e.to_string(),
                })?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2));
        let channel = endpoint.connect_lazy();
        channels.insert(node, (addr.to_owned(), channel.clone()));
        Ok(channel)
    }

    /// Calls `rpc` on `node` with `request`, decoding the reply as `Resp`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        node: NodeId,
        membership_addr: Option<&str>,
        rpc: PeerRpc,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let channel = self.channel(node, membership_addr)?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        let mut message = tonic::Request::new(Payload {
            data: codec::encode(request),
        });
        message.set_timeout(timeout);
        let (cluster, from, authorization) = &self.credentials;
        let metadata = message.metadata_mut();
        metadata.insert(PEER_CLUSTER_HEADER, cluster.clone());
        metadata.insert(PEER_FROM_HEADER, from.clone());
        if let Some(authorization) = authorization {
            metadata.insert("authorization", authorization.clone());
        }
        let call = async {
            match rpc {
                PeerRpc::AppendEntries => client.append_entries(message).await,
                PeerRpc::Vote => client.vote(message).await,
                PeerRpc::PreVote => client.pre_vote(message).await,
                PeerRpc::InstallSnapshot => client.install_snapshot(message).await,
                PeerRpc::Forward => client.forward(message).await,
                PeerRpc::Renew => client.renew(message).await,
                PeerRpc::ReadIndex => client.read_index(message).await,
                PeerRpc::Checkpoints => client.checkpoints(message).await,
                PeerRpc::TransferLeader => client.transfer_leader(message).await,
            }
        };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(PeerError::Timeout { node, timeout_ms }),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                return Err(PeerError::Timeout { node, timeout_ms });
            }
            Ok(Err(status)) => {
                return Err(PeerError::Unreachable {
                    node,
                    message: status.message().to_owned(),
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        codec::decode(&reply.data).map_err(|e| PeerError::BadReply {
            node,
            message: e.to_string(),
        })
    }
}

/// openraft's view of the transport.
pub struct NetworkFactory {
    pub peers: Arc<Peers>,
}

pub struct PeerNetwork {
    peers: Arc<Peers>,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        PeerNetwork {
            peers: Arc::clone(&self.peers),
            target,
            addr: node.addr.clone(),
        }
    }
}

fn to_rpc_error(e: PeerError) -> RPCError<TypeConfig> {
    match e {
        PeerError::NoAddress(_) | PeerError::Unreachable { .. } => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        PeerError::Timeout { .. } | PeerError::BadReply { .. } => {
            RPCError::Network(NetworkError::new(&e))
        }
    }
}

/// The remote answered with a Raft error (it is shutting down): treat it as unreachable.
fn remote_failed(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(format!("peer failed: {e}")))
}

impl PeerNetwork {
    /// A Raft RPC: transport failures become openraft's retry signals, and a remote Raft error
    /// (the peer is shutting down) counts as unreachable.
    async fn raft_rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: PeerRpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let reply: Result<Resp, String> = self
            .peers
            .call(
                self.target,
                Some(&self.addr),
                rpc,
                request,
                option.soft_ttl(),
            )
            .await
            .map_err(to_rpc_error)?;
        reply.map_err(remote_failed)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_rpc(PeerRpc::AppendEntries, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_rpc(PeerRpc::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_rpc(PeerRpc::PreVote, &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        rpc: openraft::raft::TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_rpc(PeerRpc::TransferLeader, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = (vote, snapshot.meta, snapshot.snapshot);
        let call = self
            .peers
            .call::<_, Result<SnapshotResponse<TypeConfig>, String>>(
                self.target,
                Some(&self.addr),
                PeerRpc::InstallSnapshot,
                &request,
                option.soft_ttl(),
            );
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = call => reply,
        };
        match reply {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(StreamingError::Unreachable(Unreachable::from_string(
                format!("peer failed: {e}"),
            ))),
            Err(e @ (PeerError::NoAddress(_) | PeerError::Unreachable { .. })) => {
                Err(StreamingError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }
}
