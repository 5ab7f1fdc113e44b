//! Phase 4: every lock marked dirty in this entry, by name, is handed to whom its policy
//! chooses among the waiters — or, for an election, to whom its policy elects.
//!
//! Invariants kept: a policy's choice is validated (each index a distinct waiter, the set fits
//! the lock's mode and capacity, nobody skipped who is granted anyway) and replaced by FIFO on
//! nonsense, counted as a fault, so no policy can break mutual exclusion; a lock under
//! lock-delay is not handed off; a shadow binding's choice is only compared, never granted.

use holdfast_policy_sdk::Hook;

use super::Applier;
use crate::model::{AcquireRequest, Outcome, SessionId};
use crate::policy::{self, NextInput, PolicyHost, PolicyRuntime};
use crate::state::State;

impl<H: PolicyHost + ?Sized> Applier<'_, H> {
    pub(super) fn handoff_dirty(&mut self) {
        while let Some(name) = self.dirty.pop_first() {
            self.handoff(&name);
        }
    }

    /// Grants whom the policy chooses among the waiters (validated; FIFO otherwise).
    pub(super) fn handoff(&mut self, name: &str) {
        let Some(lock) = self.state.locks.get(name) else {
            return;
        };
        if lock.delayed_until_ms.is_some() || lock.waiters.is_empty() {
            return;
        }
        if self.elect(name) {
            return;
        }
        let lock = &self.state.locks[name];
        if !lock.waiters.iter().any(|waiter| lock.fits(waiter.mode)) {
            return; // Nobody could be granted: spare the policy call.
        }
        let holders = lock.holder_views();
        let waiters = lock.waiter_views();
        let max_holders = lock.max_holders;
        let (enforce, shadow) = self.routes(name);
        let log_index = self.log_index;
        let ask = |runtime: &mut dyn PolicyRuntime, state: &State, _counting: Option<&str>| {
            runtime.choose_next(&NextInput {
                name,
                holders: &holders,
                waiters: &waiters,
                max_holders,
                state,
                now_ms: state.now_ms,
                log_index,
            })
        };
        let mut choice = self.run(enforce.as_ref(), name, Hook::ChooseNext, ask);
        if !policy::choice_is_valid(&holders, &waiters, max_holders, &choice) {
            choice = policy::fifo_choice(&holders, &waiters, max_holders);
            self.count_fault(enforce.as_ref(), name, Hook::ChooseNext, 1);
        }
        assert!(!choice.is_empty() || !holders.is_empty());
        if let Some(shadow) = shadow {
            let candidate = self.run(Some(&shadow), name, Hook::ChooseNext, ask);
            self.compare(&shadow, name, Hook::ChooseNext, candidate == choice);
        }
        let lock = &self.state.locks[name];
        let chosen: Vec<SessionId> = choice
            .iter()
            .map(|&index| lock.waiters[index].session_id)
            .collect();
        for session_id in chosen {
            self.grant_waiter(name, session_id, max_holders);
        }
    }

    /// Moves `session_id`'s waiter from the queue to the holders.
    pub(super) fn grant_waiter(&mut self, name: &str, session_id: SessionId, max_holders: u32) {
        let waiter = self.dequeue(name, session_id);
        let request = AcquireRequest {
            session_id,
            request_id: waiter.request_id,
            name: name.to_string(),
            mode: waiter.mode,
            max_holders,
            wait_timeout_ms: waiter.wait_timeout_ms,
            priority: waiter.priority,
            value: waiter.value,
        };
        let (token, lease_ms) = self.grant(&request);
        self.update_record(
            session_id,
            waiter.request_id,
            Outcome::Acquired {
                token,
                lease_ms,
                reentrant: false,
            },
        );
    }
}
