//! Starting and stopping one node: storage, Raft, the gRPC server and the leader's ticker.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use holdfast_proto::{internal::peer_server::PeerServer, v1};
use tokio::task::JoinHandle;

use crate::api::auth::{Auth, AuthLayer, SharedAuth};
use crate::api::{ClusterApi, ElectionsApi, LocksApi, PeerApi, PoliciesApi, SessionsApi, WatchApi};
use crate::config::NodeConfig;
use crate::node::Node;
use crate::raft::log_store::{LogStore, open_db};
use crate::raft::network::{Dial, NetworkFactory, PEER_MESSAGE_BYTES_MAX, PeerCredentials, Peers};
use crate::raft::state_machine::StateMachineStore;
use crate::raft::storage::SnapshotStore;
use crate::raft::{NodeInfo, Raft, TypeConfig};
use crate::tls::TlsPem;
use openraft::storage::{RaftLogReader, RaftLogStorage};

/// Largest client request or response message.
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long a stopping leader waits for its successor to take over.
pub const SHUTDOWN_TRANSFER_MS: u64 = 2_000;
/// openraft's deadline for sending a whole snapshot to a follower.
pub const SNAPSHOT_SEND_TIMEOUT_MS: u64 = 10_000;

pub struct RunningNode {
    pub node: Arc<Node>,
    /// Who may call what (the token file, reloaded on SIGHUP); the console checks it too.
    pub auth: SharedAuth,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    ticker: JoinHandle<()>,
    forwarder: JoinHandle<()>,
    nudger: JoinHandle<()>,
    guard: JoinHandle<()>,
    snapshots: JoinHandle<()>,
    sampler: JoinHandle<()>,
    shutdown: tokio::sync::oneshot::Sender<()>,
}

impl RunningNode {
    /// Stops serving, stops Raft, and waits for both. A leader first hands leadership to
    /// another voter (waiting up to `SHUTDOWN_TRANSFER_MS`), so the cluster does not wait an
    /// election timeout for a new one.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let successor = {
            let metrics = self.node.raft.metrics();
            let metrics = openraft::async_runtime::WatchReceiver::borrow_watched(&metrics);
            let leading = metrics.current_leader == Some(self.node.id);
            let voters = metrics.membership_config.membership().voter_ids();
            voters
                .filter(|id| *id != self.node.id)
                .min()
                .filter(|_| leading)
        };
        if let Some(to) = successor {
            let timeout = Duration::from_millis(SHUTDOWN_TRANSFER_MS);
            match self.node.transfer_leadership(to, timeout).await {
                Ok(Some(leader)) if leader == to => {
                    tracing::info!(to, "handed leadership over before stopping")
                }
                Ok(leader) => {
                    tracing::warn!(
                        to,
                        ?leader,
                        "leadership was not handed over before stopping"
                    )
                }
                Err(error) => {
                    tracing::warn!(to, %error, "leadership transfer before stopping failed")
                }
            }
        }
        self.stop().await
    }

    /// Stops serving, stops Raft, and waits for both, without handing leadership over (for
    /// stopping every node of a cluster at once).
    /// Resolves when Raft has stopped on a fatal error — in practice a storage failure (a
    /// failed write or fsync of the log, e.g. a full disk) — with its description. The node
    /// then serves nothing that needs the log: `holdfast serve` fail-stops (see
    /// `cli::EXIT_FAIL_STOP`) and recovers from its data dir on restart.
    ///
    /// Waits on openraft's server metrics, whose sender goes away when its core task ends:
    /// they change only with the vote, role, leader or membership, where the full metrics
    /// woke this task after nearly every step of openraft's loop.
    pub async fn failed(&self) -> String {
        use openraft::async_runtime::WatchReceiver as _;
        let mut server = self.node.raft.server_metrics();
        let fatal = || {
            let metrics = self.node.raft.metrics();
            let current = metrics.borrow_watched();
            current.running_state.as_ref().err().map(|e| e.to_string())
        };
        loop {
            if let Some(fatal) = fatal() {
                return fatal;
            }
            if server.changed().await.is_err() {
                return fatal().unwrap_or_else(|| "raft stopped".to_owned());
            }
        }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.ticker.abort();
        self.forwarder.abort();
        self.nudger.abort();
        self.guard.abort();
        self.snapshots.abort();
        self.sampler.abort();
        let _ = self.shutdown.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        self.node
            .raft
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
        Ok(())
    }
}

/// What a node runs on besides its configuration: its disk and its network. `holdfast serve`
/// ([`start`]) uses rocksdb and TCP; the simulator (crate `holdfast-sim`) its own of each.
pub struct Environment<L, I> {
    /// The Raft log (openraft's log storage; also read back by `Cluster.ReadLog`).
    pub log: L,
    /// Where the state machine keeps its last snapshot.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// The connections accepted by the node's gRPC listener.
    pub incoming: I,
    /// The network peer calls go over (`None`: TCP).
    pub dial: Option<Dial>,
    /// Where the log records how long its fsyncs take (`None`: it does not measure them).
    pub fsyncs: Option<Arc<crate::metrics::Recent>>,
    /// Compiled policy modules shared with the other nodes of this process (the simulator's;
    /// `None`: this node compiles its own).
    pub policy_modules: Option<Arc<crate::policy::cache::SharedModules>>,
}

/// Starts a node on its data dir (rocksdb) and a TCP listener on `config.listen`.
pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let db = open_db(&config.data_dir)
        .with_context(|| format!("opening rocksdb in {}", config.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    // TCP_NODELAY on every accepted connection: without it Nagle's algorithm holds small
    // answers back until the peer's delayed ACK (~40 ms) — p99 of one client's lock cycle was
    // 44 ms. (`Server::tcp_nodelay` is ignored by `serve_with_incoming`.)
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let fsyncs = Arc::new(crate::metrics::Recent::default());
    let environment = Environment {
        log: LogStore::new(Arc::clone(&db), config.id, Arc::clone(&fsyncs)),
        snapshots: db,
        incoming,
        dial: None,
        fsyncs: Some(fsyncs),
        policy_modules: None,
    };
    start_with(config, environment).await
}

/// Starts a node on `environment`'s disk and network.
pub async fn start_with<L, I, IO, IE>(
    config: NodeConfig,
    environment: Environment<L, I>,
) -> anyhow::Result<RunningNode>
where
    L: RaftLogStorage<TypeConfig> + RaftLogReader<TypeConfig> + Clone + Send + Sync + 'static,
    I: futures::Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    config.validate()?;
    let Environment {
        log: log_store,
        snapshots,
        incoming,
        dial,
        fsyncs,
        policy_modules,
    } = environment;
    let mut state_machine =
        StateMachineStore::open(snapshots, config.checkpoint_every_entries, config.id)
            .context("loading the last snapshot")?;
    if let Some(modules) = &policy_modules {
        state_machine = state_machine.with_shared_modules(Arc::clone(modules));
    }
    let precheck = Arc::new(match policy_modules {
        Some(modules) => crate::policy::Precheck::sharing(modules),
        None => crate::policy::Precheck::default(),
    });
    let shared = state_machine.shared();

    let timing = &config.raft;
    let raft_config = openraft::Config {
        cluster_name: "holdfast".to_owned(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_timeout_min_ms,
        election_timeout_max: timing.election_timeout_max_ms,
        // Snapshots follow cost instead (`Node::run_snapshot_scheduler`).
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: timing.snapshot_keep_entries,
        install_snapshot_timeout: SNAPSHOT_SEND_TIMEOUT_MS,
        enable_pre_vote: Some(true),
        // A restarted leader stands for election like any node. Restoring its leadership at
        // startup would serve linearizable reads from a read index built on the commit index it
        // persisted, which `LogStore::save_committed` lets a crash roll back: the full-restart
        // test then read a state without its last acknowledged writes. (The simulator can
        // plant that bug again: `planted::Bug::LeaderRestore`.)
        enable_leader_restore: Some(crate::planted::planted(crate::planted::Bug::LeaderRestore)),
        ..Default::default()
    }
    .validate()
    .context("raft configuration")?;

    let mut peer_addrs = config.peers.clone();
    peer_addrs.extend(config.routes.clone());
    peer_addrs.remove(&config.id);
    let tls = config.tls.as_ref().map(TlsPem::load).transpose()?;
    let auth = Arc::new(match &config.token_file {
        Some(path) => Auth::from_file(path)?,
        None => Auth::off(),
    });
    anyhow::ensure!(
        !auth.enabled() || auth.peer_token().is_some(),
        "the token file has no token with the peer role: nodes could not talk to each other"
    );
    let shared_auth: SharedAuth = Arc::new(std::sync::RwLock::new(Arc::clone(&auth)));
    if let Some(path) = config.token_file.clone() {
        tokio::spawn(reload_tokens_on_sighup(Arc::clone(&shared_auth), path));
    }
    let peers = Peers::new(
        peer_addrs,
        &PeerCredentials {
            from: config.id,
            cluster_id: config.cluster_id.clone(),
            token: auth.peer_token().map(str::to_owned),
            tls: tls.as_ref().map(TlsPem::peer_client),
        },
        dial,
    )?;
    let network = NetworkFactory {
        peers: Arc::clone(&peers),
    };
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        network,
        log_store.clone(),
        state_machine,
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting raft: {e}"))?;

    let node = Node::new(
        config.id,
        raft.clone(),
        shared,
        peers,
        Box::new(log_store),
        fsyncs,
    );

    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    // grpc.health.v1 (status set by the metrics sampler) and server reflection, so grpcurl and
    // load balancers work out of the box.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(holdfast_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder
            .tls_config(tls.server())
            .context("TLS configuration")?;
    }
    let router = builder
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        // One span per RPC (fixed field: method) and per-method/code metrics.
        .trace_fn(|request| tracing::info_span!("rpc", method = %request.uri().path()))
        .layer(crate::api::rpc_metrics::RpcMetricsLayer { node: config.id })
        .layer(AuthLayer {
            auth: Arc::clone(&shared_auth),
        })
        .add_service(
            v1::sessions_server::SessionsServer::new(SessionsApi {
                node: Arc::clone(&node),
            })
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX),
        )
        .add_service(
            v1::locks_server::LocksServer::new(LocksApi {
                node: Arc::clone(&node),
                allow_admin: config.allow_admin,
            })
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX),
        )
        .add_service(v1::elections_server::ElectionsServer::new(ElectionsApi {
            node: Arc::clone(&node),
        }))
        .add_service(v1::watch_server::WatchServer::new(WatchApi {
            node: Arc::clone(&node),
        }))
        .add_service(v1::cluster_server::ClusterServer::new(ClusterApi {
            node: Arc::clone(&node),
            allow_admin: config.allow_admin,
        }))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            v1::policies_server::PoliciesServer::new(PoliciesApi {
                node: Arc::clone(&node),
                allow_admin: config.allow_admin,
                precheck,
            })
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX),
        )
        .add_service(
            PeerServer::new(PeerApi {
                node: Arc::clone(&node),
                cluster_id: config.cluster_id.clone(),
                tls: tls.is_some(),
                verified_certificates: Default::default(),
            })
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
        );
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = shutdown_rx.await;
    }));

    // The lowest-numbered voter founds a brand-new cluster; everyone else waits to be contacted.
    let founder = config.peers.keys().next().copied() == Some(config.id);
    if founder
        && !raft
            .is_initialized()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        let members = config
            .peers
            .iter()
            .map(|(id, addr)| {
                (
                    *id,
                    NodeInfo {
                        addr: if *id == config.id {
                            config.advertise_addr().to_owned()
                        } else {
                            addr.clone()
                        },
                    },
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>();
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(node_id = config.id, "initialized a new cluster"),
            Err(e) => tracing::warn!(error = %e, "cluster initialization skipped"),
        }
    }

    #[cfg(feature = "runtime-stats")]
    tokio::spawn(print_runtime_stats_on_sigusr1(raft.clone()));
    let ticker = tokio::spawn(Arc::clone(&node).run_ticker());
    let forwarder = tokio::spawn(Arc::clone(&node).run_renew_forwarder());
    let nudger = tokio::spawn(Arc::clone(&node).run_election_nudger(
        timing.election_timeout_max_ms,
        timing.election_timeout_min_ms,
    ));
    let guard = tokio::spawn(Arc::clone(&node).run_divergence_guard());
    let snapshots =
        tokio::spawn(Arc::clone(&node).run_snapshot_scheduler(timing.snapshot_every_entries));
    let sampled = Arc::clone(&node);
    let sampler = tokio::spawn(crate::metrics::run_sampler(
        node.id,
        move || sampled.sample(),
        health,
    ));
    tracing::info!(
        node_id = config.id,
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        peers = ?config.peers,
        routes = ?config.routes,
        "node started"
    );
    Ok(RunningNode {
        node,
        auth: shared_auth,
        server,
        ticker,
        forwarder,
        nudger,
        guard,
        snapshots,
        sampler,
        shutdown,
    })
}

/// Reloads the token file on every SIGHUP (`kill -HUP PID`): new and removed tokens and roles
/// take effect from the next call; a broken file is logged and ignored.
async fn reload_tokens_on_sighup(auth: SharedAuth, path: std::path::PathBuf) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP: the token file will not be reloaded");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match crate::api::auth::reload(&auth, &path) {
            Ok(count) => {
                tracing::info!(file = %path.display(), entries = count, "token file reloaded")
            }
            Err(error) => {
                tracing::error!(file = %path.display(), error = format!("{error:#}"), "token file not reloaded; the previous one stays in force")
            }
        }
    }
}

/// Profiling builds (`--features runtime-stats`): prints openraft's runtime statistics (batch
/// sizes, per-stage latency of log entries) to stderr on every SIGUSR1.
#[cfg(feature = "runtime-stats")]
async fn print_runtime_stats_on_sigusr1(raft: crate::raft::Raft) {
    let Ok(mut signals) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
    else {
        return;
    };
    while signals.recv().await.is_some() {
        match raft.runtime_stats().await {
            Ok(stats) => eprintln!("{}", stats.display().human_readable()),
            Err(error) => eprintln!("runtime stats: {error}"),
        }
    }
}
