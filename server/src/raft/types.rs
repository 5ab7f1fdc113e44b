//! The types openraft is configured with: what an entry carries ([`Proposal`]), what applying
//! it answers ([`Response`]), how peers reach a node ([`NodeInfo`]), the aliases of openraft's
//! generic types, and [`codec`], the one encoding of everything persisted or sent to peers.

use holdfast_core::{Command, Outcome};
use serde::{Deserialize, Serialize};

/// What the leader proposes: a command stamped with cluster time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Cluster time at the leader when it proposed this entry (see `clock`).
    pub now_ms: u64,
    pub command: Command,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}@{}", self.command, self.now_ms)
    }
}

/// What applying a proposal produced, for the node that proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub log_index: u64,
    pub now_ms: u64,
    pub outcome: Outcome,
}

/// How peers reach a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// gRPC address (host:port) serving both the client API and the peer protocol.
    pub addr: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    /// Holdfast's openraft configuration.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        AsyncRuntime = super::runtime::Runtime,
);

pub type NodeId = u64;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;

/// A log entry as apply sees it, and the membership it carries: Raft's own blank and
/// membership entries are `Noop`s without cluster time. The state machine and
/// `Cluster.ReadLog` (what `holdfast policy replay` applies again) share this one reading.
pub fn core_entry(entry: Entry) -> (holdfast_core::Entry, Option<Membership>) {
    let (now_ms, command, membership) = match entry.payload {
        openraft::EntryPayload::Normal(proposal) => (proposal.now_ms, proposal.command, None),
        openraft::EntryPayload::Blank => (0, Command::Noop, None),
        openraft::EntryPayload::Membership(membership) => (0, Command::Noop, Some(membership)),
    };
    let entry = holdfast_core::Entry {
        log_index: entry.log_id.index,
        now_ms,
        command,
    };
    (entry, membership)
}

/// bincode with a fixed configuration: the encoding of everything we persist or send to peers.
pub mod codec {
    use std::io;

    use serde::{Serialize, de::DeserializeOwned};

    const CONFIG: bincode::config::Configuration = bincode::config::standard();

    pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        // Encoding into a Vec fails only for types serde cannot represent, which is a bug.
        bincode::serde::encode_to_vec(value, CONFIG)
            .expect("bincode encoding of an in-memory value")
    }

    pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
        let (value, read) = bincode::serde::decode_from_slice(bytes, CONFIG)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if read != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "trailing bytes after value",
            ));
        }
        Ok(value)
    }
}
