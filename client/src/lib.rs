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

mod admin;
mod connection;
mod elections;
mod locks;
mod session;
mod watch;

pub use connection::{
    CONNECT_TIMEOUT_MS, Client, ClientTls, Credentials, DEPLOY_TIMEOUT_MS, DEV_ENDPOINTS, Error,
    RETRY_BUDGET_MS, RETRY_PAUSE_MS, RPC_TIMEOUT_MS, Transport,
};
pub use locks::{AcquireStatus, Hold, LOCK_WAIT_MS_MAX, LockGuard, LockMode};
pub use session::{Health, Session};
