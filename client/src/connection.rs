//! The connection to a cluster: lazy channels to every endpoint, the bearer token every call
//! carries, TLS, and [`Client::retry`] — the one retry loop, which follows the server's leader
//! hint or tries the other endpoints on UNAVAILABLE and transport failures, within
//! [`RETRY_BUDGET_MS`]. Retrying is safe because every write it repeats is idempotent (lock
//! requests carry a per-session request id the server deduplicates).
//!
//! Reads start at the endpoint that last answered; writes ([`Client::retry_write`]) start at
//! the leader, as the last response header named it (`leader_addr`), so that no follower has
//! to forward them (one hop and one commit notice fewer per write).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use holdfast_proto::v1 as pb;
use pb::cluster_client::ClusterClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Default endpoints of `holdfast dev`.
pub const DEV_ENDPOINTS: [&str; 3] = ["127.0.0.1:7701", "127.0.0.1:7702", "127.0.0.1:7703"];

/// How long one call keeps retrying across endpoints before giving up.
pub const RETRY_BUDGET_MS: u64 = 15_000;

/// Pause between two rounds over all endpoints.
pub const RETRY_PAUSE_MS: u64 = 50;

/// Deadline of a single non-blocking RPC attempt.
pub const RPC_TIMEOUT_MS: u64 = 6_000;

/// Deadline of one policy Deploy call: the receiving node compiles and samples the module, and
/// every replica compiles it again while applying it.
pub const DEPLOY_TIMEOUT_MS: u64 = 120_000;

/// Connect timeout per endpoint.
pub const CONNECT_TIMEOUT_MS: u64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid endpoint {0:?}")]
    Endpoint(String),
    #[error("the token must be printable ASCII")]
    Token,
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error(transparent)]
    Status(#[from] Status),
}

/// A connection to a cluster (lazy channels to every endpoint).
#[derive(Clone)]
pub struct Client {
    channels: Arc<Vec<(String, Channel)>>,
    /// Where reads start: the endpoint that last answered.
    preferred: Arc<AtomicUsize>,
    /// Where writes start: the endpoint a response header last named as the leader
    /// (`NO_LEADER` until one did).
    leader: Arc<AtomicUsize>,
    credentials: Credentials,
}

/// `Client::leader` before any response named the leader.
const NO_LEADER: usize = usize::MAX;

/// A response that carries a [`pb::ResponseHeader`], whose `leader_addr` tells the client where
/// to send its next write.
pub trait Headed {
    fn response_header(&self) -> Option<&pb::ResponseHeader>;
}

macro_rules! headed {
    ($($response:ty),* $(,)?) => {$(
        impl Headed for $response {
            fn response_header(&self) -> Option<&pb::ResponseHeader> {
                self.header.as_ref()
            }
        }
    )*};
}

headed!(
    pb::OpenSessionResponse,
    pb::CloseSessionResponse,
    pb::AcquireResponse,
    pb::ReleaseResponse,
    pb::CampaignResponse,
    pb::ProclaimResponse,
    pb::ResignResponse,
);

/// Keepalive answers carry no header (a stream stays on the node it opened on).
impl Headed for pb::KeepAliveResponse {
    fn response_header(&self) -> Option<&pb::ResponseHeader> {
        None
    }
}

/// What every call carries: the bearer token, when the cluster requires one.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The transport every call goes through: a channel to one endpoint, with the credentials.
pub type Transport = tonic::service::interceptor::InterceptedService<Channel, Credentials>;

fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown)
        || status.message().contains("transport error")
        || transport_failure(status)
}

/// The connection failed under the call (e.g. its node was killed: hyper reports the request
/// as cancelled). Every retried request is idempotent (request ids), so another node may take it.
fn transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some_and(|source| source.is::<tonic::transport::Error>())
}

/// TLS towards the cluster: the CA that signs its nodes' certificates (PEM) and, for mutual
/// TLS, this client's certificate and key (PEM).
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Client {
    pub fn connect<S: AsRef<str>>(endpoints: &[S]) -> Result<Client, Error> {
        Client::connect_with(endpoints, None)
    }

    /// Connects over TLS (`https`) when `tls` is given.
    pub fn connect_with<S: AsRef<str>>(
        endpoints: &[S],
        tls: Option<&ClientTls>,
    ) -> Result<Client, Error> {
        let tls_config = tls.map(|tls| {
            let mut config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            config
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut channels = Vec::new();
        for endpoint in endpoints {
            let addr = endpoint.as_ref();
            let uri = if addr.contains("://") {
                addr.to_owned()
            } else {
                format!("{scheme}://{addr}")
            };
            let mut builder =
                Endpoint::from_shared(uri).map_err(|_| Error::Endpoint(addr.to_owned()))?;
            if let Some(config) = &tls_config {
                builder = builder
                    .tls_config(config.clone())
                    .map_err(|e| Error::Tls(e.to_string()))?;
            }
            let channel = builder
                .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                .tcp_nodelay(true)
                .connect_lazy();
            channels.push((addr.to_owned(), channel));
        }
        Client::from_channels(channels)
    }

    /// A client over channels built elsewhere, one per endpoint, named by the address the
    /// cluster's leader hints use (`host:port`): the simulator's (crate `holdfast-sim`), whose
    /// channels run over its own network.
    pub fn from_channels(channels: Vec<(String, Channel)>) -> Result<Client, Error> {
        if channels.is_empty() {
            return Err(Error::Endpoint(String::new()));
        }
        Ok(Client {
            channels: Arc::new(channels),
            preferred: Arc::new(AtomicUsize::new(0)),
            leader: Arc::new(AtomicUsize::new(NO_LEADER)),
            credentials: Credentials::default(),
        })
    }

    /// Sends `token` as `authorization: Bearer <token>` on every call (for nodes started with
    /// a token file).
    pub fn with_token(mut self, token: &str) -> Result<Client, Error> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Token)?;
        self.credentials.authorization = Some(value);
        Ok(self)
    }

    fn endpoint_of_leader_hint(&self, status: &Status, start: &AtomicUsize) -> Option<usize> {
        let hint = status
            .metadata()
            .get("holdfast-leader-addr")?
            .to_str()
            .ok()?;
        let index = self.endpoint_index(hint)?;
        (index != start.load(Ordering::Relaxed)).then_some(index)
    }

    fn endpoint_index(&self, addr: &str) -> Option<usize> {
        self.channels.iter().position(|(a, _)| a == addr)
    }

    /// Remembers the leader a response header names, if it is one of our endpoints.
    fn note_leader(&self, header: Option<&pb::ResponseHeader>) {
        if let Some(index) = header
            .filter(|h| !h.leader_addr.is_empty())
            .and_then(|h| self.endpoint_index(&h.leader_addr))
        {
            self.leader.store(index, Ordering::Relaxed);
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.channels.iter().map(|(a, _)| a.clone()).collect()
    }

    /// Runs `call` against the preferred endpoint, moving to the next one on retryable errors,
    /// until it succeeds, fails for good, or the retry budget is spent. For reads; writes go
    /// through [`Client::retry_write`].
    pub async fn retry<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnMut(Transport) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.retry_from(&self.preferred, call).await
    }

    /// [`Client::retry`] for a write: starts at the leader the last response header named (at
    /// the preferred endpoint until one did) and remembers the leader this answer names.
    pub async fn retry_write<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        T: Headed,
        F: FnMut(Transport) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let value = self.retry_at_leader(call).await?;
        self.note_leader(value.response_header());
        Ok(value)
    }

    /// [`Client::retry`] starting at the leader known from earlier writes (e.g. to open a
    /// keepalive stream there).
    pub async fn retry_at_leader<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnMut(Transport) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        if self.leader.load(Ordering::Relaxed) == NO_LEADER {
            self.leader
                .store(self.preferred.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.retry_from(&self.leader, call).await
    }

    /// The retry loop, starting at the endpoint in `start` and leaving there the one that
    /// answered (or that a leader hint named).
    async fn retry_from<T, F, Fut>(&self, start: &AtomicUsize, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Transport) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + Duration::from_millis(RETRY_BUDGET_MS);
        let count = self.channels.len();
        let mut attempt = 0usize;
        let mut followed_hint = false;
        loop {
            let index = (start.load(Ordering::Relaxed) % count + attempt) % count;
            let channel = self.channels[index].1.clone();
            let transport = Transport::new(channel, self.credentials.clone());
            match call(transport).await {
                Ok(value) => {
                    start.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(status) if retryable(&status) && Instant::now() < deadline => {
                    // Follow the server's leader hint (once per call) when it names one of our
                    // endpoints.
                    if !followed_hint
                        && let Some(leader) = self.endpoint_of_leader_hint(&status, start)
                    {
                        followed_hint = true;
                        start.store(leader, Ordering::Relaxed);
                        attempt = 0;
                        continue;
                    }
                    attempt += 1;
                    if attempt.is_multiple_of(count) {
                        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                    }
                }
                Err(status) => return Err(status),
            }
        }
    }

    pub async fn status(&self, endpoint: usize) -> Result<pb::StatusResponse, Status> {
        let channel = self.channels[endpoint % self.channels.len()].1.clone();
        let channel = Transport::new(channel, self.credentials.clone());
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
        Ok(ClusterClient::new(channel)
            .status(request)
            .await?
            .into_inner())
    }
}
