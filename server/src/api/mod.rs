//! The gRPC edge: the only place that knows protobuf. Every handler has the same steps (etcd's
//! v3rpc): validate the request's shape → write or read through
//! [`Node`](crate::node::Node) → map rejections and errors through `status` → fill the
//! response header (the shared steps are in `common`).

pub mod auth;
mod cluster;
mod common;
mod elections;
mod locks;
mod peer;
mod policies;
pub mod rpc_metrics;
mod sessions;
pub mod status;
mod validate;
mod watch;

pub use cluster::ClusterApi;
pub use elections::ElectionsApi;
pub use locks::LocksApi;
pub use peer::PeerApi;
pub use policies::PoliciesApi;
pub use sessions::SessionsApi;
pub use watch::WatchApi;
