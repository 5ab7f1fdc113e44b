//! holdfast-core: the replicated state machine of Holdfast.
//!
//! One pure function, [`apply`], turns a committed log [`Entry`] into a new [`State`] plus an
//! [`Applied`] result (the outcome for the proposer and the watch events, in a defined order).
//! Same state + same entry gives the same result and the same bytes on every replica.
//!
//! Architecture invariant: this crate reads no clock, no randomness, no environment, does no I/O
//! and iterates only ordered collections. Time enters through `Entry::now_ms`, stamped by the
//! leader. Lock decisions (admission, who is next, lease lengths) go through [`PolicyRuntime`];
//! [`BuiltinFifo`] is the native default.

mod apply;
pub mod limits;
mod model;
mod policy;
mod snapshot;
mod state;
#[cfg(test)]
mod tests;
mod vec_map;

pub use apply::{apply, apply_between};
pub use model::*;
pub use policy::{
    AdmitDecision, AdmitInput, BoundModule, BuiltinFifo, CandidateView, Counters, ElectDecision,
    ElectInput, ExpireInput, HeldView, LeaseDecision, NextInput, POLICY_ABI_LIMITS, PolicyHost,
    PolicyRuntime,
};
pub use snapshot::{SNAPSHOT_FORMAT_VERSION, SnapshotAbandoned, SnapshotError, SnapshotWriter};
pub use state::views::{
    BindingView, HolderView, LockView, PolicyView, SessionView, WaiterInfo, WaiterView,
};
pub use state::{BUILTIN_POLICY, State};
pub use vec_map::VecMap;
