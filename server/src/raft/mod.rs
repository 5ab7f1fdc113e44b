//! The consensus layer: openraft's type configuration, the rocksdb log store, the in-memory state
//! machine that wraps `holdfast-core`, and the tonic transport between peers.
//!
//! Architecture invariant: openraft types stay inside `server`; the public gRPC API never
//! exposes them.

pub mod log_store;
pub mod network;
pub mod recent_log;
pub mod runtime;
pub mod snapshot_file;
pub mod state_machine;
pub mod storage;
pub mod types;

pub use types::{
    Entry, LogId, NodeId, NodeInfo, Proposal, Response, Snapshot, SnapshotMeta, StoredMembership,
    TypeConfig, Vote, codec,
};

/// The Raft node: openraft over Holdfast's types and state machine.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachineStore>;

#[cfg(test)]
mod storage_tests;
