//! The built-in behaviours, as reusable pieces: what the host does for a hook a policy does
//! not export, and the capacity logic a custom `choose_next` needs.

use alloc::vec::Vec;

use crate::v1::{ElectReply, ElectRequest, Holder, Mode, Waiter};

/// Simulates granting waiters one after another beside the current holders: an exclusive
/// holder excludes everyone; shared holders admit shared waiters up to `max_holders`.
/// The same rule the host uses to validate a `choose_next` answer.
#[derive(Clone, Debug)]
pub struct Fit {
    mode: Option<Mode>,
    count: u64,
    max_holders: u64,
}

impl Fit {
    /// Starts from the lock's current holders.
    pub fn new(holders: &[Holder], max_holders: u32) -> Fit {
        Fit {
            mode: holders.first().map(Holder::mode),
            count: holders.len() as u64,
            max_holders: u64::from(max_holders.max(1)),
        }
    }

    /// Takes one more holder of `mode` if it fits; returns false (and stays unchanged)
    /// otherwise.
    pub fn admit(&mut self, mode: Mode) -> bool {
        let fits = match self.mode {
            None => true,
            Some(Mode::Shared) => mode == Mode::Shared && self.count < self.max_holders,
            Some(_) => false,
        };
        if fits {
            self.mode = Some(mode);
            self.count += 1;
        }
        fits
    }
}

/// Grants waiters in the given `order` (indexes into `waiters`) while they fit beside the
/// holders, stopping at the first that does not: the longest fitting prefix of `order`.
/// Never overtakes a waiter that does not fit (a later reader never passes a queued writer).
pub fn grant_in_order(
    holders: &[Holder],
    waiters: &[Waiter],
    max_holders: u32,
    order: impl IntoIterator<Item = usize>,
) -> Vec<u32> {
    let mut fit = Fit::new(holders, max_holders);
    let mut chosen = Vec::new();
    for index in order {
        let Some(waiter) = waiters.get(index) else {
            break;
        };
        if !fit.admit(waiter.mode()) {
            break;
        }
        chosen.push(index as u32);
    }
    chosen
}

/// The built-in FIFO handoff: the longest prefix of the queue that fits beside the current
/// holders (the head; if it is shared, the shared waiters directly behind it while capacity
/// lasts). Same answer as `holdfast_core`'s `BuiltinFifo`.
pub fn fifo_choice(holders: &[Holder], waiters: &[Waiter], max_holders: u32) -> Vec<u32> {
    grant_in_order(holders, waiters, max_holders, 0..waiters.len())
}

/// The built-in election: keep the incumbent if there is one, else elect the earliest
/// candidate (index 0; candidates come in campaign order).
pub fn elect(req: &ElectRequest) -> ElectReply {
    if req.incumbent.is_some() || req.candidates.is_empty() {
        ElectReply::keep_incumbent(0)
    } else {
        ElectReply::elect(0, 0)
    }
}
