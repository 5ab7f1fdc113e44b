//! Work that takes seconds of CPU (compiling a policy module, encoding a large snapshot) runs
//! off the runtime's worker threads, so Raft's tasks (heartbeats) keep running meanwhile.
//!
//! On a current-thread runtime it runs inline instead. `holdfast serve` never uses one; the
//! simulator (crate `holdfast-sim`) does for each simulated host, and there a thread outside
//! the simulation would finish after as many simulated steps as the machine happened to take,
//! and two runs of one seed would differ.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work` on the blocking pool (inline on a current-thread runtime); `Err` if it panicked.
pub async fn offload<T, F>(work: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await
}
