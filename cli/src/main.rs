//! The `holdfast` binary: `serve` runs one node, `dev` runs a local 3-node cluster in one process,
//! and the client commands (`status`, `describe`, `locks`, `watch`, `lock`) talk to a cluster.

// The doc comments of the clap types below are the commands' --help text, written for a
// terminal (`POLICY[@VERSION]`, `[raft]`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use holdfast_server::config::{NodeConfig, RaftTiming, parse_peer};
use holdfast_server::server;

mod commands;
mod history;
mod policy;
mod policy_author;
mod policy_replay;
mod policy_test;

/// jemalloc instead of glibc malloc: see the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Raft-replicated lock server with programmable lock policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: commands::Connection,
    /// Log lines (stderr) as text or as one JSON object per line. Filter with RUST_LOG.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "HOLDFAST_LOG_FORMAT", global = true)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster.
    Serve(Box<ServeArgs>),
    /// Run a local cluster in this process: 3 nodes (`--nodes 5` for five), client API on
    /// 127.0.0.1:7701 and up.
    Dev(DevArgs),
    /// Generate a CA and node and client certificates for trying TLS (PEM files in --out).
    Certs(CertsArgs),
    /// Each node's view: leader, term, applied index, state digest.
    Status,
    /// Holders and waiters of one lock.
    Describe { name: String },
    /// End hold TOKEN of lock NAME whoever holds it (admin; release reason "revoked").
    Revoke {
        name: String,
        /// The hold's fencing token (its own arg id: `token` is the global `--token`).
        #[arg(id = "hold_token", value_name = "TOKEN")]
        token: u64,
    },
    /// Locks whose names start with PREFIX.
    Locks {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Stream applied events (acquired, released, queued, sessions...).
    Watch {
        #[arg(default_value = "")]
        prefix: String,
        /// First revision to show (0 = from now).
        #[arg(long = "from", default_value_t = 0)]
        from_revision: u64,
    },
    /// Run a command while holding a lock: `holdfast lock NAME -- CMD ARGS...`. The command sees
    /// HOLDFAST_LOCK, HOLDFAST_FENCING_TOKEN and HOLDFAST_SESSION_ID. Exit code: the command's;
    /// 124 if the lock was not granted in time; 75 if the session was lost (the command got
    /// SIGTERM, then SIGKILL); 125 on other Holdfast errors.
    Lock(commands::LockArgs),
    /// Campaign in an election and lead until Ctrl-C (`holdfast elect NAME [VALUE]`), or print
    /// every leader change (`holdfast elect NAME --observe`).
    Elect(commands::ElectArgs),
    /// Deploy, bind, list and describe lock policies (wasm modules).
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Record a history for `holdfast policy replay` (admin): a backup, then every committed
    /// log entry after it, into the directory --out, until --duration, --entries or Ctrl-C.
    Record(history::RecordArgs),
    /// List the membership, or change it (admin): add a learner, promote, remove.
    Member {
        #[command(subcommand)]
        command: commands::MemberCommand,
    },
    /// Backups: `holdfast snapshot save FILE` (admin), `inspect FILE`, and
    /// `restore FILE --data-dir DIR --id N --peer ...` for each member of a new cluster.
    Snapshot {
        #[command(subcommand)]
        command: commands::SnapshotCommand,
    },
    /// Leadership: `holdfast leader transfer ID` (admin).
    Leader {
        #[command(subcommand)]
        command: commands::LeaderCommand,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML file with the same keys as the flags (id, listen, advertise, peers, routes, data_dir,
    /// [raft] heartbeat_ms ...). Flags and HOLDFAST_* variables override it.
    #[arg(long, env = "HOLDFAST_CONFIG")]
    config: Option<PathBuf>,
    /// Raft node id (> 0).
    #[arg(long, env = "HOLDFAST_ID")]
    id: Option<u64>,
    /// gRPC listen address.
    #[arg(long, env = "HOLDFAST_LISTEN")]
    listen: Option<String>,
    /// Address others use to reach this node (default: --listen).
    #[arg(long, env = "HOLDFAST_ADVERTISE")]
    advertise: Option<String>,
    /// A voter of the initial cluster, ID=HOST:PORT; repeat for each (include this node).
    #[arg(long = "peer", value_parser = parse_peer, env = "HOLDFAST_PEERS", value_delimiter = ',')]
    peers: Vec<(u64, String)>,
    /// Send peer traffic for node ID to another address, ID=HOST:PORT (fault-injection proxies).
    #[arg(long = "route", value_parser = parse_peer)]
    routes: Vec<(u64, String)>,
    /// Data directory (rocksdb).
    #[arg(long, env = "HOLDFAST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "HOLDFAST_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    #[arg(long, env = "HOLDFAST_ELECTION_TIMEOUT_MIN_MS")]
    election_timeout_min_ms: Option<u64>,
    #[arg(long, env = "HOLDFAST_ELECTION_TIMEOUT_MAX_MS")]
    election_timeout_max_ms: Option<u64>,
    /// Snapshot after this many applied entries.
    #[arg(long, env = "HOLDFAST_SNAPSHOT_EVERY_ENTRIES")]
    snapshot_every_entries: Option<u64>,
    /// Log entries kept behind the last snapshot for lagging followers.
    #[arg(long, env = "HOLDFAST_SNAPSHOT_KEEP_ENTRIES")]
    snapshot_keep_entries: Option<u64>,
    /// Accept admin calls on this node: policy Deploy/Bind/Unbind and membership changes (no
    /// authentication yet: anyone who can reach the port could use them).
    #[arg(long, env = "HOLDFAST_ALLOW_ADMIN")]
    allow_admin: bool,
    /// Determinism guard: digest the state every N applied entries and compare with the peers
    /// (0 = off; default 1000).
    #[arg(long, env = "HOLDFAST_CHECKPOINT_EVERY_ENTRIES")]
    checkpoint_every_entries: Option<u64>,
    /// Serve Prometheus metrics on http://ADDR/metrics and the read-only operator's console on
    /// http://ADDR/console (off when not given).
    #[arg(long, env = "HOLDFAST_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Require bearer tokens: a TOML file of `[[token]]` entries with token, principal and
    /// roles (read, client, admin, peer); see docs/operations.md.
    #[arg(long, env = "HOLDFAST_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Cluster id checked on every peer call (default "holdfast").
    #[arg(long, env = "HOLDFAST_CLUSTER_ID")]
    cluster_id: Option<String>,
}

#[derive(Args)]
struct CertsArgs {
    /// Directory to write ca.pem/ca.key, node-ID.pem/.key and client-NAME.pem/.key into.
    #[arg(long, default_value = "./holdfast-certs")]
    out: PathBuf,
    /// A node certificate: ID=HOST (HOST is the name or IP address peers and clients dial;
    /// localhost and 127.0.0.1 are always added).
    #[arg(long = "node", value_parser = parse_peer, required = true)]
    nodes: Vec<(u64, String)>,
    /// A client certificate with this common name (the principal it authenticates as).
    #[arg(long = "client")]
    clients: Vec<String>,
    /// Validity in days from today.
    #[arg(long, default_value_t = 365)]
    valid_days: i64,
    /// Also a client certificate with this common name that expired yesterday (to check that
    /// the nodes refuse it).
    #[arg(long = "expired-client")]
    expired_clients: Vec<String>,
}

fn certs(args: &CertsArgs) -> anyhow::Result<std::process::ExitCode> {
    let written = holdfast_server::tls::generate(&holdfast_server::tls::CertsRequest {
        out: args.out.clone(),
        nodes: args.nodes.clone(),
        clients: args.clients.clone(),
        valid_days: args.valid_days,
        expired_clients: args.expired_clients.clone(),
    })?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Args)]
struct DevArgs {
    /// How many nodes: 3 tolerate one failure, 5 tolerate two.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=DEV_NODES_MAX))]
    nodes: u64,
    /// Client port of node 1; the other nodes use the next ports.
    #[arg(long, default_value_t = 7701, env = "HOLDFAST_BASE_PORT")]
    base_port: u16,
    /// Where the nodes keep their data (node-1, node-2, ... inside).
    #[arg(long, default_value = "./holdfast-data", env = "HOLDFAST_DATA_DIR")]
    data_dir: PathBuf,
    /// Prometheus metrics of all nodes (label `node`) on http://ADDR/metrics and the
    /// operator's console on http://ADDR/console; "off" for none.
    #[arg(
        long,
        default_value = "127.0.0.1:9700",
        env = "HOLDFAST_METRICS_LISTEN"
    )]
    metrics_listen: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    listen: Option<String>,
    advertise: Option<String>,
    #[serde(default)]
    peers: BTreeMap<String, String>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    raft: RaftTiming,
    #[serde(default)]
    allow_admin: bool,
    checkpoint_every_entries: Option<u64>,
    metrics_listen: Option<String>,
    token_file: Option<PathBuf>,
    cluster_id: Option<String>,
    tls: Option<holdfast_server::tls::TlsFiles>,
}

fn parse_id_map(map: BTreeMap<String, String>) -> anyhow::Result<BTreeMap<u64, String>> {
    map.into_iter()
        .map(|(id, addr)| Ok((id.parse().with_context(|| format!("peer id {id:?}"))?, addr)))
        .collect()
}

fn node_config(
    args: ServeArgs,
    tls: Option<holdfast_server::tls::TlsFiles>,
) -> anyhow::Result<NodeConfig> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let mut peers = parse_id_map(file.peers)?;
    peers.extend(args.peers);
    let mut routes = parse_id_map(file.routes)?;
    routes.extend(args.routes);
    let mut raft = file.raft;
    raft.heartbeat_ms = args.heartbeat_ms.unwrap_or(raft.heartbeat_ms);
    raft.election_timeout_min_ms = args
        .election_timeout_min_ms
        .unwrap_or(raft.election_timeout_min_ms);
    raft.election_timeout_max_ms = args
        .election_timeout_max_ms
        .unwrap_or(raft.election_timeout_max_ms);
    raft.snapshot_every_entries = args
        .snapshot_every_entries
        .unwrap_or(raft.snapshot_every_entries);
    raft.snapshot_keep_entries = args
        .snapshot_keep_entries
        .unwrap_or(raft.snapshot_keep_entries);
    let id = args.id.or(file.id).context("--id is required")?;
    let listen = args
        .listen
        .or(file.listen)
        .context("--listen is required")?;
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(format!("./holdfast-data/node-{id}")));
    if peers.is_empty() {
        peers.insert(id, listen.clone());
    }
    Ok(NodeConfig {
        id,
        listen,
        advertise: args.advertise.or(file.advertise),
        peers,
        routes,
        data_dir,
        raft,
        allow_admin: args.allow_admin || file.allow_admin,
        checkpoint_every_entries: args
            .checkpoint_every_entries
            .or(file.checkpoint_every_entries)
            .unwrap_or(holdfast_server::config::CHECKPOINT_EVERY_ENTRIES_DEFAULT),
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
        token_file: args.token_file.or(file.token_file),
        // `holdfast serve --tls-cert NODE.pem --tls-key NODE.key --tls-ca CA.pem` (the global
        // TLS flags; for a node they name its own certificate).
        tls: tls.or(file.tls),
        cluster_id: args
            .cluster_id
            .or(file.cluster_id)
            .unwrap_or_else(|| holdfast_server::config::CLUSTER_ID_DEFAULT.to_owned()),
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

async fn serve(
    args: ServeArgs,
    tls: Option<holdfast_server::tls::TlsFiles>,
) -> anyhow::Result<std::process::ExitCode> {
    let config = node_config(args, tls)?;
    let console = match &config.metrics_listen {
        Some(addr) => {
            let console = http_listener(addr, config.tls.as_ref()).await?;
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            println!("console on {scheme}://{addr}/console, metrics on {scheme}://{addr}/metrics");
            Some(console)
        }
        None => None,
    };
    let running = server::start(config.clone()).await?;
    if let Some(console) = &console {
        console.register(Arc::clone(&running.node), Arc::clone(&running.auth));
    }
    println!(
        "holdfast node {} serving on {} (data in {})",
        config.id,
        config.listen,
        config.data_dir.display()
    );
    tokio::select! {
        () = shutdown_signal() => {}
        fatal = running.failed() => {
            tracing::error!(
                error = %fatal,
                "raft stopped on a fatal error (storage failure?): fail-stop; restart this node \
                 once the disk is fixed and it recovers from its data dir"
            );
            let _ = running.stop().await;
            return Ok(std::process::ExitCode::from(commands::EXIT_FAIL_STOP));
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Installs the metrics recorder and serves `/metrics` and the console on `addr` (HTTPS with
/// the node's certificate when it runs TLS).
async fn http_listener(
    addr: &str,
    tls: Option<&holdfast_server::tls::TlsFiles>,
) -> anyhow::Result<Arc<holdfast_server::console::Console>> {
    let handle = holdfast_server::metrics::install()?;
    let console = holdfast_server::console::Console::new(Some(handle));
    let tls = tls.map(holdfast_server::tls::https_acceptor).transpose()?;
    Arc::clone(&console)
        .serve(holdfast_server::metrics::parse_listen(addr)?, tls)
        .await?;
    Ok(console)
}

/// Most nodes `holdfast dev` runs.
const DEV_NODES_MAX: u64 = 7;

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let dev_nodes = args.nodes;
    // A data dir holds one cluster: started again with another size, the extra nodes would
    // never join (or the missing ones never vote).
    let existing = (1..=DEV_NODES_MAX)
        .filter(|id| args.data_dir.join(format!("node-{id}")).is_dir())
        .count() as u64;
    if existing > 0 && existing != dev_nodes {
        anyhow::bail!(
            "{} holds a {existing}-node dev cluster: run with --nodes {existing}, or use another --data-dir",
            args.data_dir.display()
        );
    }
    let console = if args.metrics_listen == "off" {
        None
    } else {
        Some(http_listener(&args.metrics_listen, None).await?)
    };
    let addr = |id: u64| format!("127.0.0.1:{}", u64::from(args.base_port) + id - 1);
    let peers: BTreeMap<u64, String> = (1..=dev_nodes).map(|id| (id, addr(id))).collect();
    let mut nodes = Vec::new();
    for id in 1..=dev_nodes {
        let config = NodeConfig {
            id,
            listen: addr(id),
            advertise: None,
            peers: peers.clone(),
            routes: BTreeMap::new(),
            data_dir: args.data_dir.join(format!("node-{id}")),
            raft: RaftTiming::default(),
            // The local tour deploys policies; `dev` listens on loopback only.
            allow_admin: true,
            checkpoint_every_entries: holdfast_server::config::CHECKPOINT_EVERY_ENTRIES_DEFAULT,
            // One listener for the whole process, installed above.
            metrics_listen: None,
            token_file: None,
            cluster_id: holdfast_server::config::CLUSTER_ID_DEFAULT.to_owned(),
            tls: None,
        };
        let running = server::start(config)
            .await
            .with_context(|| format!("starting node {id}"))?;
        if let Some(console) = &console {
            console.register(Arc::clone(&running.node), Arc::clone(&running.auth));
        }
        nodes.push(running);
    }
    println!(
        "holdfast dev cluster: {dev_nodes} nodes, data in {}",
        args.data_dir.display()
    );
    for (id, addr) in &peers {
        println!("  node {id}: http://{addr}");
    }
    if args.metrics_listen != "off" {
        println!("  console: http://{}/console", args.metrics_listen);
        println!("  metrics: http://{}/metrics", args.metrics_listen);
    }
    println!("Ctrl-C stops them all; running `holdfast dev` again resumes the same cluster.");
    shutdown_signal().await;
    println!("stopping");
    // All stop together: no leadership hand-over between them.
    for running in nodes {
        running.stop().await?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("holdfast: starting the tokio runtime: {e}");
            return std::process::ExitCode::from(commands::EXIT_ERROR);
        }
    };
    let connection = cli.connection;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args, connection.tls_files()?).await,
            Command::Dev(args) => dev(args).await.map(|()| std::process::ExitCode::SUCCESS),
            Command::Status => commands::status(&connection).await,
            Command::Describe { name } => commands::describe(&connection, &name).await,
            Command::Revoke { name, token } => commands::revoke(&connection, &name, token).await,
            Command::Locks { prefix } => commands::locks(&connection, &prefix).await,
            Command::Watch {
                prefix,
                from_revision,
            } => commands::watch(&connection, &prefix, from_revision).await,
            Command::Lock(args) => commands::lock(&connection, args).await,
            Command::Elect(args) => commands::elect(&connection, args).await,
            Command::Policy { command } => policy::run(&connection, command).await,
            Command::Member { command } => commands::member(&connection, command).await,
            Command::Record(args) => history::record(&connection, args).await,
            Command::Leader { command } => commands::leader(&connection, command).await,
            Command::Snapshot { command } => commands::snapshot(&connection, command).await,
            Command::Certs(args) => certs(&args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("holdfast: {e:#}");
            std::process::ExitCode::from(commands::EXIT_ERROR)
        }
    }
}
