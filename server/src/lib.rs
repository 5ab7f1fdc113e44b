//! holdfast-server: the shell around `holdfast-core`. Raft (openraft) with a rocksdb log, the
//! tonic gRPC API, the leader's clock and ticker, the wasm policy host. The `holdfast` binary
//! (crate `holdfast-cli`) runs it with `serve` and `dev`.

pub mod api;
pub mod backup;
pub mod batch;
pub mod blocking;
pub mod clock;
pub mod config;
pub mod console;
pub mod guard;
pub mod metrics;
pub mod node;
pub mod planted;
pub mod policy;
pub mod raft;
pub mod server;
pub mod tls;
pub mod waiters;
pub mod watch;
