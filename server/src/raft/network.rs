//! Peer transport over tonic: one cached, lazily connected channel per peer, a deadline on every
//! call. Raft RPCs, write forwarding, keepalive forwarding and read-index requests all use it.
//! Replication runs on one bidirectional stream per replication session (`AppendStream`), so
//! the leader sends new entries while earlier ones are still being made durable on the
//! follower, and no request pays for a new HTTP/2 stream.
//!
//! Payloads are bincode (`raft::codec`) inside a protobuf `Payload`: the peer protocol is
//! internal and versioned with the binary.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};

use holdfast_proto::internal::Payload;
use holdfast_proto::internal::peer_client::PeerClient;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
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
    Status,
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
    /// The peer does not serve this call (an older binary, during a rolling upgrade).
    #[error("node {node} does not serve {call}")]
    Unimplemented { node: NodeId, call: &'static str },
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

/// A byte stream to a peer, whatever carries it.
pub trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> PeerIo for T {}

/// Opens a byte stream to `host:port` on a network other than the OS's TCP: the simulator's
/// (crate `holdfast-sim`). `holdfast serve` has none, and its channels use tonic's own TCP
/// connector. Called once per connection, never per request.
pub type Dial =
    Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Box<dyn PeerIo>>> + Send + Sync>;

/// A lazily connected channel to `endpoint` whose connections `dial` opens.
pub fn dialed_channel(endpoint: Endpoint, dial: &Dial) -> Channel {
    endpoint.connect_with_connector_lazy(Dialer(Arc::clone(dial)))
}

/// [`Dial`] as the connector tonic takes.
#[derive(Clone)]
struct Dialer(Dial);

impl tower::Service<tonic::transport::Uri> for Dialer {
    type Response = hyper_util::rt::TokioIo<Box<dyn PeerIo>>;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, std::io::Result<Self::Response>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::transport::Uri) -> Self::Future {
        let dial = Arc::clone(&self.0);
        Box::pin(async move {
            let authority = uri.authority().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "no host in the URI")
            })?;
            let io = dial(authority.as_str().to_owned()).await?;
            Ok(hyper_util::rt::TokioIo::new(io))
        })
    }
}

/// Addresses and cached channels of every peer this node talks to.
pub struct Peers {
    /// (cluster id, from, authorization) as metadata values.
    credentials: (Ascii, Ascii, Option<Ascii>),
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Configured addresses (from `--peer`); they win over the addresses in the membership, so a
    /// test harness can route a node's peer traffic through its fault proxy.
    configured: BTreeMap<NodeId, String>,
    channels: Mutex<BTreeMap<NodeId, (String, Channel)>>,
    /// The simulator's network (`None`: the OS's TCP).
    dial: Option<Dial>,
}

impl Peers {
    pub fn new(
        configured: BTreeMap<NodeId, String>,
        credentials: &PeerCredentials,
        dial: Option<Dial>,
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
            dial,
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
        let channel = match &self.dial {
            None => endpoint.connect_lazy(),
            Some(dial) => dialed_channel(endpoint, dial),
        };
        channels.insert(node, (addr.to_owned(), channel.clone()));
        Ok(channel)
    }

    /// Adds who this node is (and its peer token) to a call's metadata.
    fn sign(&self, metadata: &mut tonic::metadata::MetadataMap) {
        let (cluster, from, authorization) = &self.credentials;
        metadata.insert(PEER_CLUSTER_HEADER, cluster.clone());
        metadata.insert(PEER_FROM_HEADER, from.clone());
        if let Some(authorization) = authorization {
            metadata.insert("authorization", authorization.clone());
        }
    }

    /// Opens an `AppendStream` to `node`: `requests` go out as they come; the answers come back
    /// in order. Opening must succeed within `timeout`; the stream itself has no deadline (it
    /// lives as long as the replication session, see [`PeerNetwork::stream_append`]).
    pub async fn append_stream(
        &self,
        node: NodeId,
        membership_addr: Option<&str>,
        requests: impl Stream<Item = Payload> + Send + 'static,
        timeout: Duration,
    ) -> Result<tonic::Streaming<Payload>, PeerError> {
        let channel = self.channel(node, membership_addr)?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        let mut message = tonic::Request::new(requests);
        self.sign(message.metadata_mut());
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        match tokio::time::timeout(timeout, client.append_stream(message)).await {
            Err(_) => Err(PeerError::Timeout { node, timeout_ms }),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                Err(PeerError::Unimplemented {
                    node,
                    call: "AppendStream",
                })
            }
            Ok(Err(status)) => Err(PeerError::Unreachable {
                node,
                message: status.message().to_owned(),
            }),
            Ok(Ok(answers)) => Ok(answers.into_inner()),
        }
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
        self.sign(message.metadata_mut());
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
                PeerRpc::Status => client.status(message).await,
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
    /// False once the target answered that it does not serve `AppendStream` (an older binary
    /// during a rolling upgrade): replication then uses one unary AppendEntries at a time.
    streams: bool,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        PeerNetwork {
            peers: Arc::clone(&self.peers),
            target,
            addr: node.addr.clone(),
            streams: true,
        }
    }
}

fn to_rpc_error(e: PeerError) -> RPCError<TypeConfig> {
    match e {
        PeerError::NoAddress(_)
        | PeerError::Unreachable { .. }
        | PeerError::Unimplemented { .. } => RPCError::Unreachable(Unreachable::new(&e)),
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

/// Requests sent and answers received on one append stream: an answer is overdue only while
/// more were sent than answered.
#[derive(Default)]
struct InFlight {
    sent: AtomicU64,
    answered: AtomicU64,
}

type StreamAnswers =
    BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

/// The answers of an append stream as openraft wants them. An answer counts as lost when none
/// came for `ttl` while one was owed (a paused or partitioned follower; a dead connection is
/// also caught by the channel's HTTP/2 keepalive): the stream then ends with a network error,
/// as a unary call past its deadline did, and openraft starts a new session. An idle stream
/// (nothing owed) waits without limit.
fn stream_answers(
    node: NodeId,
    answers: tonic::Streaming<Payload>,
    in_flight: Arc<InFlight>,
    ttl: Duration,
) -> StreamAnswers {
    let state = Some((answers, in_flight));
    futures::stream::unfold(state, move |state| async move {
        let (mut answers, in_flight) = state?;
        let mut overdue_checks = 0;
        let next = loop {
            let owed =
                in_flight.sent.load(Ordering::Acquire) > in_flight.answered.load(Ordering::Acquire);
            match tokio::time::timeout(ttl, answers.next()).await {
                Ok(next) => break next,
                // Owed for a whole `ttl` (or, if the request went out during this wait, for
                // the next one too).
                Err(_) if owed && overdue_checks > 0 => {
                    let timeout_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                    let error = PeerError::Timeout { node, timeout_ms };
                    return Some((Err(to_rpc_error(error)), None));
                }
                Err(_) => overdue_checks += usize::from(owed),
            }
        };
        in_flight.answered.fetch_add(1, Ordering::AcqRel);
        let answer = match next? {
            Ok(payload) => {
                match codec::decode::<Result<StreamAppendResult<TypeConfig>, String>>(&payload.data)
                {
                    Ok(Ok(result)) => Ok(result),
                    Ok(Err(remote)) => Err(remote_failed(remote)),
                    Err(e) => Err(to_rpc_error(PeerError::BadReply {
                        node,
                        message: e.to_string(),
                    })),
                }
            }
            Err(status) => Err(to_rpc_error(PeerError::Unreachable {
                node,
                message: status.message().to_owned(),
            })),
        };
        let more = answer.is_ok().then_some((answers, in_flight));
        Some((answer, more))
    })
    .boxed()
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = Vec<u8>;

    /// Replication on one `AppendStream`: openraft hands over each AppendEntries as soon as
    /// it has new entries (before they are durable here), several may be in flight, and the
    /// follower answers them in order.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        if !self.streams {
            return openraft::network::stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            // The first request before the connection: openraft's request stream sleeps out
            // its backoff before yielding it. Connecting first spun the replication loop
            // (~2,000 refused connects a second) while a peer was down.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(futures::stream::empty().boxed());
            };
            let in_flight = Arc::new(InFlight::default());
            let requests = {
                let in_flight = Arc::clone(&in_flight);
                futures::stream::once(std::future::ready(first))
                    .chain(input)
                    .map(move |rpc| {
                        in_flight.sent.fetch_add(1, Ordering::AcqRel);
                        Payload {
                            data: codec::encode(&rpc),
                        }
                    })
            };
            let ttl = option.soft_ttl();
            let answers = match self
                .peers
                .append_stream(self.target, Some(&self.addr), requests, ttl)
                .await
            {
                Ok(answers) => answers,
                Err(e) => {
                    if matches!(e, PeerError::Unimplemented { .. }) {
                        tracing::info!(
                            target = self.target,
                            "peer does not serve AppendStream; replicating to it with unary AppendEntries"
                        );
                        self.streams = false;
                    }
                    return Err(to_rpc_error(e));
                }
            };
            let answers: BoxStream<'s, _> = stream_answers(self.target, answers, in_flight, ttl);
            Ok(answers)
        })
    }

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
            biased;
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = call => reply,
        };
        match reply {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(StreamingError::Unreachable(Unreachable::from_string(
                format!("peer failed: {e}"),
            ))),
            Err(
                e @ (PeerError::NoAddress(_)
                | PeerError::Unreachable { .. }
                | PeerError::Unimplemented { .. }),
            ) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }
}
