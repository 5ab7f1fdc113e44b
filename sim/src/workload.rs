//! The torture suite's workload (`holdfast_tests::torture::workload`) on simulated hosts: the
//! same clients (labelled sessions; try-locks, queued waits, priorities and shared holds over
//! plain and policy-bound locks; writes to the fenced resource; linearizable reads), the same
//! policies deployed, rebound and redeployed as it runs (`torture::policies`), on simulated
//! time. A client's "pause" freezes its links: the driver holds them in the simulated network.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use holdfast_tests::history::Micros;
use holdfast_tests::torture::workload::Links;

/// Now, in simulated time since the run began.
pub fn now() -> Micros {
    turmoil::sim_elapsed().map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// A client's links as the driver sees them: while `frozen`, it holds every message between
/// the client's host and the nodes.
#[derive(Clone, Default)]
pub struct HeldLinks(pub Arc<AtomicBool>);

impl Links for HeldLinks {
    fn freeze(&self, frozen: bool) {
        self.0.store(frozen, Ordering::Relaxed);
    }
}

impl HeldLinks {
    pub fn frozen(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
