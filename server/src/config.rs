//! Node configuration: command-line flags, an optional TOML file, `HOLDFAST_*` environment
//! variables (clap's `env`), in that order of precedence: flag > env > file > default.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Raft timing, in milliseconds. The defaults give a leader fail-over (kill -9 of the leader
/// to the first write committed by the new one) of about 0.4 s on loopback: a follower starts
/// its election once the leader's lease (`election_timeout_max_ms`) has passed without word
/// from it (see `Node::run_election_nudger`). On hosts that can stall a process for longer
/// than the lease (overloaded, or long GC-like pauses in co-located work), raise all three.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) after this many applied entries, or, for
    /// a large state, once the entries since the last one reach its record count / 2
    /// (`SNAPSHOT_RECORDS_PER_LOG_ENTRY`), whichever is more: the floor of the cadence.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind the last snapshot, so that a slightly lagging follower catches up
    /// from the log instead of receiving a whole snapshot. Must be > 0 (openraft #2116).
    pub snapshot_keep_entries: u64,
}

impl Default for RaftTiming {
    fn default() -> RaftTiming {
        RaftTiming {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_every_entries: 10_000,
            snapshot_keep_entries: 1_000,
        }
    }
}

/// Everything one node needs to start.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft node id, unique in the cluster, > 0.
    pub id: u64,
    /// Address the gRPC server listens on (client API and peer protocol).
    pub listen: String,
    /// Address other nodes and clients use to reach this node (defaults to `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Every voter of the initial cluster (this node included): id -> address. Peer traffic
    /// goes to these addresses.
    pub peers: BTreeMap<u64, String>,
    /// Optional per-peer route overrides: peer traffic to node `id` goes to this address instead
    /// (a test harness routes through its fault-injecting proxy this way).
    #[serde(default)]
    pub routes: BTreeMap<u64, String>,
    /// Directory of this node's rocksdb database.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub raft: RaftTiming,
    /// Accept admin calls on this node: policy Deploy/Bind/Unbind and membership changes
    /// (AddLearner, Promote, Remove, TransferLeader). Off by default: until authentication
    /// exists, whoever reaches the port could change lock semantics or the cluster.
    #[serde(default)]
    pub allow_admin: bool,
    /// Record a state digest every this many applied entries and compare it with the peers'
    /// (the determinism guard); 0 = off.
    #[serde(default = "default_checkpoint_every_entries")]
    pub checkpoint_every_entries: u64,
    /// Where the process serves Prometheus `/metrics` (installed by the binary, once per
    /// process; `None` = no metrics listener).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Tokens, principals and roles (`api::auth`); `None` = authentication off.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// TLS for clients and peers (`crate::tls`); `None` = plaintext.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsFiles>,
    /// Sent on every peer call and checked by the receiver: a node of another cluster (or a
    /// stray process) is refused.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
}

/// Longest cluster id.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;
/// Default cluster id.
pub const CLUSTER_ID_DEFAULT: &str = "holdfast";

fn default_cluster_id() -> String {
    CLUSTER_ID_DEFAULT.to_owned()
}

/// Default checkpoint interval of the determinism guard.
pub const CHECKPOINT_EVERY_ENTRIES_DEFAULT: u64 = 1_000;

fn default_checkpoint_every_entries() -> u64 {
    CHECKPOINT_EVERY_ENTRIES_DEFAULT
}

impl NodeConfig {
    pub fn advertise_addr(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.id > 0, "node id must be > 0");
        anyhow::ensure!(
            self.peers.contains_key(&self.id),
            "the peer list must include this node ({})",
            self.id
        );
        anyhow::ensure!(!self.peers.contains_key(&0), "node ids must be > 0");
        let timing = &self.raft;
        anyhow::ensure!(
            timing.heartbeat_ms > 0 && timing.heartbeat_ms < timing.election_timeout_min_ms,
            "heartbeat_ms must be > 0 and below election_timeout_min_ms"
        );
        anyhow::ensure!(
            timing.election_timeout_min_ms < timing.election_timeout_max_ms,
            "election_timeout_min_ms must be below election_timeout_max_ms"
        );
        anyhow::ensure!(
            timing.snapshot_every_entries > 0,
            "snapshot_every_entries must be > 0"
        );
        anyhow::ensure!(
            timing.snapshot_keep_entries > 0,
            "snapshot_keep_entries must be > 0 (openraft #2116)"
        );
        anyhow::ensure!(
            !self.cluster_id.is_empty()
                && self.cluster_id.len() <= CLUSTER_ID_BYTES_MAX
                && self
                    .cluster_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "cluster_id must be 1 to {CLUSTER_ID_BYTES_MAX} of [A-Za-z0-9._-]"
        );
        Ok(())
    }
}

/// Parses `ID=HOST:PORT`.
pub fn parse_peer(text: &str) -> Result<(u64, String), String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("expected ID=HOST:PORT, got {text:?}"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("peer id {id:?} is not a number"))?;
    if addr.trim().is_empty() {
        return Err(format!("peer {id} has an empty address"));
    }
    Ok((id, addr.trim().to_owned()))
}
