//! holdfast-client: the Rust client for Holdfast.
//!
//! [`Client`] talks to any node of a cluster and retries on UNAVAILABLE (no leader, leader
//! changed, node down) by following the server's leader hint or trying the other endpoints,
//! which is safe because lock requests carry a per-session request id that the server
//! deduplicates. [`Session`] keeps a session alive in the background and reports its
//! [`Health`] from the client's own conservative deadline.
//!
//! Locks, with a guard that carries the fencing token:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use holdfast_client::{Client, DEV_ENDPOINTS};
//! let client = Client::connect(&DEV_ENDPOINTS)?;
//! let session = client.open_session(10_000, "billing-worker").await?;
//! let guard = session.lock("billing/invoices").await?;
//! println!("writing with fencing token {}", guard.token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! Elections and watches:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! # let client = holdfast_client::Client::connect(&holdfast_client::DEV_ENDPOINTS)?;
//! # let session = client.open_session(10_000, "scheduler").await?;
//! if let Some(leadership) = session.campaign("scheduler/leader", b"host-a", 30_000).await? {
//!     session.proclaim(&leadership, b"host-a:ready").await?;
//!     session.resign(&leadership).await?;
//! }
//! let mut changes = client.watch("billing/", 0).await?;
//! while let Some(change) = changes.message().await? {
//!     println!("revision {}: {} events", change.revision, change.events.len());
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use holdfast_proto::v1 as pb;
pub use holdfast_proto::v1::{AcquireStatus, LockMode};
use pb::cluster_client::ClusterClient;
use pb::locks_client::LocksClient;
use pb::policies_client::PoliciesClient;
use pb::sessions_client::SessionsClient;
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
    preferred: Arc<AtomicUsize>,
    credentials: Credentials,
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
        if channels.is_empty() {
            return Err(Error::Endpoint(String::new()));
        }
        Ok(Client {
            channels: Arc::new(channels),
            preferred: Arc::new(AtomicUsize::new(0)),
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

    fn endpoint_of_leader_hint(&self, status: &Status) -> Option<usize> {
        let hint = status
            .metadata()
            .get("holdfast-leader-addr")?
            .to_str()
            .ok()?;
        let index = self.channels.iter().position(|(addr, _)| addr == hint)?;
        (index != self.preferred.load(Ordering::Relaxed)).then_some(index)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.channels.iter().map(|(a, _)| a.clone()).collect()
    }

    /// Runs `call` against the preferred endpoint, moving to the next one on retryable errors,
    /// until it succeeds, fails for good, or the retry budget is spent.
    pub async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Transport) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + Duration::from_millis(RETRY_BUDGET_MS);
        let count = self.channels.len();
        let mut attempt = 0usize;
        let mut followed_hint = false;
        loop {
            let index = (self.preferred.load(Ordering::Relaxed) + attempt) % count;
            let channel = self.channels[index].1.clone();
            let transport = Transport::new(channel, self.credentials.clone());
            match call(transport).await {
                Ok(value) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(status) if retryable(&status) && Instant::now() < deadline => {
                    // Follow the server's leader hint (once per call) when it names one of our
                    // endpoints.
                    if !followed_hint && let Some(leader) = self.endpoint_of_leader_hint(&status) {
                        followed_hint = true;
                        self.preferred.store(leader, Ordering::Relaxed);
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

    /// Opens a session and starts renewing it every TTL/3 in the background.
    pub async fn open_session(&self, ttl_ms: u64, principal: &str) -> Result<Session, Status> {
        self.open_session_with_labels(ttl_ms, principal, &[]).await
    }

    /// [`Client::open_session`] with labels (policies see them, e.g. `tenant`).
    pub async fn open_session_with_labels(
        &self,
        ttl_ms: u64,
        principal: &str,
        labels: &[(&str, &str)],
    ) -> Result<Session, Status> {
        let sent = Instant::now();
        let labels: std::collections::HashMap<String, String> = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        let labels = &labels;
        let response = self
            .retry(|channel| async move {
                let mut request = tonic::Request::new(pb::OpenSessionRequest {
                    ttl_ms,
                    principal: principal.to_owned(),
                    labels: labels.clone(),
                });
                request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
                Ok(SessionsClient::new(channel)
                    .open(request)
                    .await?
                    .into_inner())
            })
            .await?;
        let session_id = response.session_id;
        let ttl = Duration::from_millis(response.ttl_ms);
        let state = Arc::new(SessionState {
            next_request_id: AtomicU64::new(1),
            alive: tokio::sync::watch::channel(true).0,
            health: tokio::sync::watch::channel(Health::Healthy).0,
            deadline: std::sync::Mutex::new(sent + ttl),
            ttl,
        });
        let keepalive = tokio::spawn(keep_alive(
            self.clone(),
            session_id,
            response.ttl_ms,
            Arc::clone(&state),
        ));
        Ok(Session {
            client: self.clone(),
            id: session_id,
            ttl_ms: response.ttl_ms,
            state,
            keepalive,
        })
    }

    pub async fn describe(&self, name: &str) -> Result<pb::DescribeResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::DescribeRequest {
                name: name.to_owned(),
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(LocksClient::new(channel)
                .describe(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// The cluster's voters and learners (from the node answering).
    pub async fn members(&self) -> Result<pb::MembersResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::MembersRequest {});
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(ClusterClient::new(channel)
                .members(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// A consistent copy of the applied state for backups (admin): the header and the state's
    /// bytes, whole (a download cut off midway is retried from the start, on any node).
    pub async fn snapshot(&self) -> Result<(pb::SnapshotHeader, Vec<u8>), Status> {
        self.retry(|channel| async move {
            let mut stream = ClusterClient::new(channel)
                .snapshot(pb::SnapshotRequest {})
                .await?
                .into_inner();
            let mut header = None;
            let mut data = Vec::new();
            while let Some(message) = stream.message().await? {
                if let Some(first) = message.header {
                    data.reserve(usize::try_from(first.size_bytes).unwrap_or(0));
                    header = Some(first);
                }
                data.extend_from_slice(&message.chunk);
            }
            let header =
                header.ok_or_else(|| Status::data_loss("snapshot stream had no header"))?;
            if data.len() as u64 != header.size_bytes {
                return Err(Status::unavailable(format!(
                    "snapshot stream ended after {} of {} bytes",
                    data.len(),
                    header.size_bytes
                )));
            }
            Ok((header, data))
        })
        .await
    }

    /// Adds node `id` (serving at `addr`) as a learner and waits until it caught up (admin).
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<pb::MembershipResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::AddLearnerRequest {
                id,
                addr: addr.to_owned(),
            });
            request.set_timeout(Duration::from_millis(DEPLOY_TIMEOUT_MS));
            Ok(ClusterClient::new(channel)
                .add_learner(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Makes learner `id` a voter (admin).
    pub async fn promote(&self, id: u64) -> Result<pb::MembershipResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::PromoteRequest { id });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(ClusterClient::new(channel)
                .promote(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Removes node `id` from the cluster (admin).
    pub async fn remove_member(&self, id: u64) -> Result<pb::MembershipResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::RemoveRequest { id });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(ClusterClient::new(channel)
                .remove(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Hands leadership to voter `to`; returns the new leader (admin).
    pub async fn transfer_leader(&self, to: u64) -> Result<u64, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::TransferLeaderRequest { to });
            request.set_timeout(Duration::from_millis(2 * RPC_TIMEOUT_MS));
            Ok(ClusterClient::new(channel)
                .transfer_leader(request)
                .await?
                .into_inner()
                .leader_id)
        })
        .await
    }

    /// Deploys a policy module as the next version of `name` (admin; see holdfast.v1.Policies).
    pub async fn deploy_policy(
        &self,
        name: &str,
        wasm: &[u8],
    ) -> Result<pb::DeployPolicyResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::DeployPolicyRequest {
                name: name.to_owned(),
                wasm: wasm.to_vec(),
            });
            request.set_timeout(Duration::from_millis(DEPLOY_TIMEOUT_MS));
            Ok(PoliciesClient::new(channel)
                .deploy(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Binds `policy` (`version` 0 = newest; "builtin" = the native FIFO) to `prefix` (admin).
    pub async fn bind_policy(
        &self,
        request: pb::BindPolicyRequest,
    ) -> Result<pb::BindPolicyResponse, Status> {
        let request = &request;
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(PoliciesClient::new(channel)
                .bind(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Removes the `mode` binding of `prefix` (admin).
    pub async fn unbind_policy(
        &self,
        prefix: &str,
        mode: pb::BindMode,
    ) -> Result<pb::UnbindPolicyResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::UnbindPolicyRequest {
                prefix: prefix.to_owned(),
                mode: mode as i32,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(PoliciesClient::new(channel)
                .unbind(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Deployed policy versions and bindings (linearizable).
    pub async fn list_policies(&self) -> Result<pb::ListPoliciesResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::ListPoliciesRequest {
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(PoliciesClient::new(channel)
                .list(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Which bindings decide for lock `name` (linearizable).
    pub async fn describe_policy(&self, name: &str) -> Result<pb::DescribePolicyResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::DescribePolicyRequest {
                lock: name.to_owned(),
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(PoliciesClient::new(channel)
                .describe(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Ends hold `token` of `name` whoever holds it (an admin call; release reason `Revoked`).
    /// Returns the log index at which the hold ended.
    pub async fn revoke(&self, name: &str, token: u64) -> Result<u64, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::RevokeRequest {
                name: name.to_owned(),
                token,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(LocksClient::new(channel)
                .revoke(request)
                .await?
                .into_inner()
                .released_at)
        })
        .await
    }

    /// Locks whose names start with `prefix`, in name order (linearizable).
    pub async fn list(&self, prefix: &str, limit: u32) -> Result<pb::ListResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::ListRequest {
                prefix: prefix.to_owned(),
                limit,
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(LocksClient::new(channel).list(request).await?.into_inner())
        })
        .await
    }

    /// The current leader of election `name` (linearizable), or None.
    pub async fn leader(&self, name: &str) -> Result<Option<pb::Leadership>, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::LeaderRequest {
                name: name.to_owned(),
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(pb::elections_client::ElectionsClient::new(channel)
                .leader(request)
                .await?
                .into_inner()
                .leader)
        })
        .await
    }

    /// The current leader of election `name`, then every change (None = no leader).
    pub async fn observe(
        &self,
        name: &str,
    ) -> Result<tonic::Streaming<pb::ObserveResponse>, Status> {
        self.retry(|channel| async move {
            let request = pb::ObserveRequest {
                name: name.to_owned(),
            };
            Ok(pb::elections_client::ElectionsClient::new(channel)
                .observe(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Streams applied events for `prefix` from `from_revision` (0 = from now) from one node.
    pub async fn watch(
        &self,
        prefix: &str,
        from_revision: u64,
    ) -> Result<tonic::Streaming<pb::WatchResponse>, Status> {
        self.retry(|channel| async move {
            let request = pb::WatchRequest {
                prefix: prefix.to_owned(),
                from_revision,
            };
            Ok(pb::watch_client::WatchClient::new(channel)
                .watch(request)
                .await?
                .into_inner())
        })
        .await
    }

    pub async fn check_token(
        &self,
        name: &str,
        token: u64,
    ) -> Result<pb::CheckTokenResponse, Status> {
        self.retry(|channel| async move {
            let mut request = tonic::Request::new(pb::CheckTokenRequest {
                name: name.to_owned(),
                token,
                serializable: false,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(LocksClient::new(channel)
                .check_token(request)
                .await?
                .into_inner())
        })
        .await
    }
}

/// How safe it is to act as the session's lock holder, judged by the client alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Renewals are being acknowledged.
    Healthy,
    /// The last acknowledged keepalive is more than two renewal periods old: stop starting new
    /// work under the session's locks.
    AtRisk,
    /// The conservative deadline (send time of the last acknowledged keepalive + TTL) has passed,
    /// or the server said the session is gone: the server may have expired it, so its locks may
    /// belong to someone else. Stop using them. (Recovers to Healthy if a later keepalive is
    /// acknowledged, i.e. the server had not expired it after all, unless the server said so.)
    Lost,
}

struct SessionState {
    next_request_id: AtomicU64,
    /// False once a keepalive was refused with NOT_FOUND: the server expired or closed it.
    alive: tokio::sync::watch::Sender<bool>,
    health: tokio::sync::watch::Sender<Health>,
    /// Send time of the last acknowledged keepalive (or of the Open request) + TTL.
    deadline: std::sync::Mutex<Instant>,
    ttl: Duration,
}

impl SessionState {
    fn deadline(&self) -> Instant {
        *self.deadline.lock().expect("deadline lock")
    }

    fn acknowledged(&self, sent: Instant) {
        let mut deadline = self.deadline.lock().expect("deadline lock");
        *deadline = (*deadline).max(sent + self.ttl);
    }

    /// Re-judges health now; returns when it should next be re-judged.
    fn refresh_health(&self) -> Instant {
        let now = Instant::now();
        let deadline = self.deadline();
        let at_risk_from = deadline - self.ttl / 3;
        let (health, next) = if !*self.alive.borrow() || now >= deadline {
            (Health::Lost, now + self.ttl)
        } else if now >= at_risk_from {
            (Health::AtRisk, deadline)
        } else {
            (Health::Healthy, at_risk_from)
        };
        self.health
            .send_if_modified(|current| std::mem::replace(current, health) != health);
        next
    }
}

/// An open session, renewed in the background until dropped or closed.
pub struct Session {
    client: Client,
    pub id: u64,
    pub ttl_ms: u64,
    state: Arc<SessionState>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// A granted lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub name: String,
    pub token: u64,
    pub lease_ms: u64,
    /// Log index at which the grant was applied.
    pub revision: u64,
}

/// Longest wait `Session::lock` asks for (the server's `WAIT_TIMEOUT_MS_MAX`).
pub const LOCK_WAIT_MS_MAX: u64 = 3_600_000;

async fn release_hold(
    client: &Client,
    session_id: u64,
    request_id: u64,
    hold: &Hold,
) -> Result<u64, Status> {
    let response = client
        .retry(|channel| async move {
            let mut request = tonic::Request::new(pb::ReleaseRequest {
                session_id,
                request_id,
                name: hold.name.clone(),
                token: hold.token,
            });
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            Ok(LocksClient::new(channel)
                .release(request)
                .await?
                .into_inner())
        })
        .await?;
    Ok(response.released_at)
}

/// A held lock, released by [`LockGuard::release`] or, best-effort in the background, on drop.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = holdfast_client::Client::connect(&holdfast_client::DEV_ENDPOINTS)?;
/// let session = client.open_session(10_000, "docs").await?;
/// let guard = session.lock("reports/nightly").await?;
/// println!("fencing token {}", guard.token()); // pass it to the resource you write
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub struct LockGuard<'s> {
    session: &'s Session,
    hold: Option<Hold>,
}

impl LockGuard<'_> {
    /// The fencing token of this hold.
    pub fn token(&self) -> u64 {
        self.hold.as_ref().map_or(0, |h| h.token)
    }

    pub fn hold(&self) -> &Hold {
        self.hold.as_ref().expect("a guard holds until released")
    }

    /// Releases the lock; returns the log index at which the hold ended.
    pub async fn release(mut self) -> Result<u64, Status> {
        let hold = self.hold.take().expect("a guard holds until released");
        self.session.release(&hold).await
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            let client = self.session.client.clone();
            let session_id = self.session.id;
            let request_id = self.session.next_request_id();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = release_hold(&client, session_id, request_id, &hold).await;
                });
            }
        }
    }
}

async fn keep_alive(client: Client, session_id: u64, ttl_ms: u64, state: Arc<SessionState>) {
    let period = Duration::from_millis((ttl_ms / 3).max(1));
    loop {
        let sent = Instant::now();
        let renew = client.retry(|channel| async move {
            let mut request =
                tonic::Request::new(tokio_stream::iter([pb::KeepAliveRequest { session_id }]));
            request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
            let mut responses = SessionsClient::new(channel)
                .keep_alive(request)
                .await?
                .into_inner();
            match responses.message().await? {
                Some(response) => Ok(response),
                None => Err(Status::unavailable("keepalive stream closed")),
            }
        });
        tokio::pin!(renew);
        // Health changes with time even while a renewal hangs.
        let result = loop {
            let next_check = state.refresh_health();
            tokio::select! {
                result = &mut renew => break result,
                () = tokio::time::sleep_until(next_check) => {}
            }
        };
        match result {
            Ok(_) => state.acknowledged(sent),
            Err(status) if status.code() == Code::NotFound => {
                state.alive.send_replace(false);
                state.refresh_health();
                return;
            }
            Err(_) => {}
        }
        let wake = Instant::now() + period;
        loop {
            let next_check = state.refresh_health().min(wake);
            tokio::time::sleep_until(next_check).await;
            if Instant::now() >= wake {
                break;
            }
        }
    }
}

impl Session {
    /// Stops renewing (as if the client hung), without closing the session.
    pub fn stop_keepalive(&self) {
        self.keepalive.abort();
    }

    /// False once the server reported the session gone.
    pub fn is_alive(&self) -> bool {
        *self.state.alive.borrow()
    }

    /// The session's health as the client judges it (see [`Health`]).
    pub fn health(&self) -> Health {
        *self.state.health.borrow()
    }

    /// Watches health changes (e.g. to stop work when it turns `AtRisk` or `Lost`).
    pub fn health_watch(&self) -> tokio::sync::watch::Receiver<Health> {
        self.state.health.subscribe()
    }

    fn next_request_id(&self) -> u64 {
        self.state.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Acquires `name` exclusively, waiting up to `wait_timeout_ms` (0 = try-lock). Returns
    /// `None` if not granted (busy or timed out).
    pub async fn acquire(
        &self,
        name: &str,
        mode: LockMode,
        wait_timeout_ms: u64,
    ) -> Result<Option<Hold>, Status> {
        self.acquire_with_priority(name, mode, wait_timeout_ms, 0)
            .await
    }

    /// [`Session::acquire`] with a priority (the built-in FIFO ignores it; policies such as
    /// `priority` order waiters by it).
    pub async fn acquire_with_priority(
        &self,
        name: &str,
        mode: LockMode,
        wait_timeout_ms: u64,
        priority: i32,
    ) -> Result<Option<Hold>, Status> {
        let request_id = self.next_request_id();
        let session_id = self.id;
        let response = self
            .client
            .retry(|channel| async move {
                let mut request = tonic::Request::new(pb::AcquireRequest {
                    session_id,
                    request_id,
                    name: name.to_owned(),
                    mode: mode as i32,
                    max_holders: 0,
                    wait_timeout_ms,
                    priority,
                });
                request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS + wait_timeout_ms));
                Ok(LocksClient::new(channel)
                    .acquire(request)
                    .await?
                    .into_inner())
            })
            .await?;
        if response.status == AcquireStatus::Acquired as i32 {
            Ok(Some(Hold {
                name: name.to_owned(),
                token: response.token,
                lease_ms: response.lease_ms,
                revision: response.header.map_or(0, |h| h.revision),
            }))
        } else {
            Ok(None)
        }
    }

    /// Releases a hold; returns the log index at which it ended.
    pub async fn release(&self, hold: &Hold) -> Result<u64, Status> {
        release_hold(&self.client, self.id, self.next_request_id(), hold).await
    }

    /// Waits (up to the server's longest wait, 1 h) for `name`, exclusively.
    pub async fn lock(&self, name: &str) -> Result<LockGuard<'_>, Status> {
        self.lock_with_timeout(name, Duration::from_millis(LOCK_WAIT_MS_MAX))
            .await?
            .ok_or_else(|| Status::deadline_exceeded(format!("lock {name} not granted within 1 h")))
    }

    /// Takes `name` exclusively if it is free now.
    pub async fn try_lock(&self, name: &str) -> Result<Option<LockGuard<'_>>, Status> {
        self.lock_with_timeout(name, Duration::ZERO).await
    }

    /// Waits up to `timeout` for `name`, exclusively; None if not granted in time.
    pub async fn lock_with_timeout(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<LockGuard<'_>>, Status> {
        self.guard(name, LockMode::Exclusive, timeout).await
    }

    /// Waits up to `timeout` for a shared hold of `name`.
    pub async fn lock_shared(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<LockGuard<'_>>, Status> {
        self.guard(name, LockMode::Shared, timeout).await
    }

    async fn guard(
        &self,
        name: &str,
        mode: LockMode,
        timeout: Duration,
    ) -> Result<Option<LockGuard<'_>>, Status> {
        let wait_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .min(LOCK_WAIT_MS_MAX);
        let hold = self.acquire(name, mode, wait_ms).await?;
        Ok(hold.map(|hold| LockGuard {
            session: self,
            hold: Some(hold),
        }))
    }

    /// Campaigns in election `name` with `value`, waiting up to `wait_timeout_ms` to be elected.
    /// Returns the leadership as a `Hold` (its token is the leader key's token), or None.
    pub async fn campaign(
        &self,
        name: &str,
        value: &[u8],
        wait_timeout_ms: u64,
    ) -> Result<Option<Hold>, Status> {
        let request_id = self.next_request_id();
        let session_id = self.id;
        let response = self
            .client
            .retry(|channel| async move {
                let mut request = tonic::Request::new(pb::CampaignRequest {
                    session_id,
                    request_id,
                    name: name.to_owned(),
                    value: value.to_vec(),
                    wait_timeout_ms,
                });
                request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS + wait_timeout_ms));
                Ok(pb::elections_client::ElectionsClient::new(channel)
                    .campaign(request)
                    .await?
                    .into_inner())
            })
            .await?;
        Ok(response.leader.map(|key| Hold {
            name: key.name,
            token: key.token,
            lease_ms: 0,
            revision: response.header.map_or(0, |h| h.revision),
        }))
    }

    fn leader_key(&self, leadership: &Hold) -> pb::LeaderKey {
        pb::LeaderKey {
            name: leadership.name.clone(),
            session_id: self.id,
            token: leadership.token,
        }
    }

    /// Replaces the leader's value; refused unless `leadership` is still the current leader key.
    pub async fn proclaim(&self, leadership: &Hold, value: &[u8]) -> Result<(), Status> {
        let key = self.leader_key(leadership);
        self.client
            .retry(|channel| {
                let key = key.clone();
                async move {
                    let mut request = tonic::Request::new(pb::ProclaimRequest {
                        leader: Some(key),
                        value: value.to_vec(),
                    });
                    request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
                    pb::elections_client::ElectionsClient::new(channel)
                        .proclaim(request)
                        .await
                        .map(|_| ())
                }
            })
            .await
    }

    /// Gives up leadership (the next candidate is elected).
    pub async fn resign(&self, leadership: &Hold) -> Result<(), Status> {
        let request_id = self.next_request_id();
        let key = self.leader_key(leadership);
        self.client
            .retry(|channel| {
                let key = key.clone();
                async move {
                    let mut request = tonic::Request::new(pb::ResignRequest {
                        leader: Some(key),
                        request_id,
                    });
                    request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
                    pb::elections_client::ElectionsClient::new(channel)
                        .resign(request)
                        .await
                        .map(|_| ())
                }
            })
            .await
    }

    /// Closes the session, releasing everything it holds.
    pub async fn close(self) -> Result<(), Status> {
        self.keepalive.abort();
        let session_id = self.id;
        self.client
            .retry(|channel| async move {
                let mut request = tonic::Request::new(pb::CloseSessionRequest { session_id });
                request.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
                SessionsClient::new(channel)
                    .close(request)
                    .await
                    .map(|_| ())
            })
            .await
    }
}
