//! Locks: acquire (re-entrant, try-lock, queued), grant, release, revoke, cancel, and the
//! removals every other rule goes through (`end_hold`, `remove_waiter`, `dequeue`).
//!
//! Invariants kept: mutual exclusion — a grant happens only when the lock is free of
//! lock-delay and the request fits its holders (exclusive alone; shared up to the capacity
//! pinned by the first shared holder or waiter); a grant's fencing token is the entry's log
//! index and never below the lock's last token; a hold never ends in the entry that granted
//! it, so tokens strictly increase per lock across holds. A new request queues behind existing
//! waiters (no barging); only `Acquire` grants in phase 3, and a lock that lost a holder or
//! waiter is marked dirty for the handoff phase. A lock with no holder, waiter or delay is
//! removed. Each session's `holds` and `waiting` mirror the locks exactly.

use super::{Applier, invalid};
use crate::limits;
use crate::model::{
    AcquireRequest, BindMode, Event, FencingToken, LeaveReason, Mode, Outcome, Rejection,
    ReleaseReason, RequestId, SessionId,
};
use crate::policy::{self, AdmitDecision, PolicyHost};
use crate::state::counts::Stake;
use crate::state::{Deadline, DeadlineKind, Hold, Lock, Waiter, name_is_valid, position_u32};

impl<H: PolicyHost + ?Sized> Applier<'_, H> {
    pub(super) fn acquire(&mut self, request: &AcquireRequest) -> Outcome {
        let session_id = request.session_id;
        if !self.state.sessions.contains_key(&session_id) {
            return Outcome::Rejected(Rejection::UnknownSession { session_id });
        }
        if let Some(outcome) = self.recorded(session_id, request.request_id, &request.name) {
            return outcome;
        }
        let outcome = self.acquire_new(request);
        self.record(session_id, request.request_id, &outcome);
        outcome
    }

    pub(super) fn acquire_new(&mut self, request: &AcquireRequest) -> Outcome {
        let name = request.name.as_str();
        if !name_is_valid(name) {
            return invalid(
                "name",
                format!("must be 1..={} bytes", limits::LOCK_NAME_BYTES_MAX),
            );
        }
        if request.max_holders > limits::HOLDERS_PER_LOCK_MAX {
            return invalid(
                "max_holders",
                format!("must be at most {}", limits::HOLDERS_PER_LOCK_MAX),
            );
        }
        if request.value.len() > limits::VALUE_BYTES_MAX {
            return invalid(
                "value",
                format!("must be at most {} bytes", limits::VALUE_BYTES_MAX),
            );
        }
        if self.dirty.remove(name) {
            self.handoff(name);
        }
        if let Some(outcome) = self.acquire_existing(request) {
            return outcome;
        }
        let session = &self.state.sessions[&request.session_id];
        if session.holds.len() + session.waiting.len() >= limits::LOCKS_PER_SESSION_MAX {
            return Outcome::Rejected(Rejection::LimitExceeded {
                limit: "locks_per_session_max".to_string(),
            });
        }
        let prioritized;
        let request = match self.ask_admit(request) {
            AdmitDecision::Deny { reason } => {
                let (prefix, policy, version) = self
                    .state
                    .binding_for(name, BindMode::Enforce)
                    .map(|(prefix, bound)| {
                        (prefix.to_string(), bound.policy.clone(), bound.version)
                    })
                    .unwrap_or_default();
                return Outcome::Rejected(Rejection::PolicyDenied {
                    reason: policy::truncate_reason(reason),
                    policy,
                    version,
                    prefix,
                });
            }
            AdmitDecision::Admit => request,
            AdmitDecision::AdmitWithPriority { priority } => {
                prioritized = AcquireRequest {
                    priority,
                    ..request.clone()
                };
                &prioritized
            }
        };
        let grantable = self.state.locks.get(name).is_none_or(|lock| {
            lock.delayed_until_ms.is_none() && lock.waiters.is_empty() && lock.fits(request.mode)
        });
        if grantable {
            self.pin_max_holders(request);
            let (token, lease_ms) = self.grant(request);
            return Outcome::Acquired {
                token,
                lease_ms,
                reentrant: false,
            };
        }
        if request.wait_timeout_ms == 0 {
            return Outcome::Rejected(Rejection::WouldBlock {
                name: name.to_string(),
            });
        }
        if self.state.locks[name].waiters.len() >= limits::WAITERS_PER_LOCK_MAX {
            return Outcome::Rejected(Rejection::LimitExceeded {
                limit: "waiters_per_lock_max".to_string(),
            });
        }
        self.pin_max_holders(request);
        let outcome = self.enqueue(request);
        // A candidate joined while there is a leader: an election's policy may prefer it and
        // hand it the lock in this very entry; then that is the answer.
        if !self.state.locks[name].holders.is_empty() {
            self.elect(name);
        }
        let granted = self
            .state
            .locks
            .get(name)
            .and_then(|lock| lock.holders.get(&request.session_id));
        match granted {
            Some(hold) => Outcome::Acquired {
                token: hold.token,
                lease_ms: hold.lease_ms,
                reentrant: false,
            },
            None => outcome,
        }
    }

    /// Re-entrant acquire, already-queued acquire, or a shared capacity that disagrees with
    /// the lock's: answered without asking the policy.
    pub(super) fn acquire_existing(&self, request: &AcquireRequest) -> Option<Outcome> {
        let lock = self.state.locks.get(request.name.as_str())?;
        let max_holders = requested_max_holders(request);
        let conflict = |held: Mode| {
            let max_holders = if held == Mode::Exclusive {
                1
            } else {
                lock.max_holders
            };
            Some(Outcome::Rejected(Rejection::ModeConflict {
                name: request.name.clone(),
                held,
                max_holders,
            }))
        };
        let mismatched_capacity = request.mode == Mode::Shared && max_holders != lock.max_holders;
        if let Some(hold) = lock.holders.get(&request.session_id) {
            if hold.mode != request.mode || mismatched_capacity {
                return conflict(hold.mode);
            }
            return Some(Outcome::Acquired {
                token: hold.token,
                lease_ms: hold.lease_ms,
                reentrant: true,
            });
        }
        if let Some(position) = lock.position_of(request.session_id) {
            let queued_mode = lock.waiters[position].mode;
            if queued_mode != request.mode || mismatched_capacity {
                return conflict(queued_mode);
            }
            return Some(Outcome::Queued {
                position: position_u32(position),
            });
        }
        if mismatched_capacity && lock.shared_in_use() {
            return conflict(Mode::Shared);
        }
        None
    }

    /// Creates the lock if needed and pins its shared capacity to this request's when no
    /// shared holder or waiter pins it yet.
    pub(super) fn pin_max_holders(&mut self, request: &AcquireRequest) {
        let max_holders = requested_max_holders(request);
        let lock = self
            .state
            .locks
            .get_or_insert_with(request.name.as_str().into(), || {
                Box::new(Lock::new(max_holders))
            });
        if request.mode == Mode::Shared && !lock.shared_in_use() {
            lock.max_holders = max_holders;
        }
        assert!(request.mode == Mode::Exclusive || lock.max_holders == max_holders);
    }

    pub(super) fn enqueue(&mut self, request: &AcquireRequest) -> Outcome {
        let now_ms = self.now_ms();
        let wait_timeout_ms = request.wait_timeout_ms.min(limits::WAIT_TIMEOUT_MS_MAX);
        assert!(wait_timeout_ms > 0);
        let waiter = Waiter {
            session_id: request.session_id,
            request_id: request.request_id,
            mode: request.mode,
            priority: request.priority,
            wait_timeout_ms,
            queued_at_ms: now_ms,
            deadline_ms: now_ms + wait_timeout_ms,
            value: request.value.clone(),
        };
        let lock = self
            .state
            .locks
            .get_mut(request.name.as_str())
            .expect("enqueue on a missing lock");
        assert!(lock.waiters.len() < limits::WAITERS_PER_LOCK_MAX);
        let position = position_u32(lock.waiters.len());
        lock.waiters.push_back(waiter);
        let session = self
            .state
            .sessions
            .get_mut(&request.session_id)
            .expect("enqueue for a missing session");
        assert!(session.waiting.insert(request.name.clone()));
        self.state
            .count_stake(&request.name, request.session_id, Stake::Wait, true);
        let kind = DeadlineKind::WaitTimeout {
            name: request.name.clone(),
            session_id: request.session_id,
        };
        assert!(self.state.deadlines.insert_key(Deadline {
            at_ms: now_ms + wait_timeout_ms,
            kind
        }));
        self.events.push(Event::Queued {
            name: request.name.clone(),
            session_id: request.session_id,
            principal: self.principal_of(request.session_id),
            position,
        });
        Outcome::Queued { position }
    }

    /// Grants `request` now, with this entry's log index as the fencing token. The lock exists
    /// and the request fits (the caller checked); the session is not queued for it.
    pub(super) fn grant(&mut self, request: &AcquireRequest) -> (FencingToken, u64) {
        let lease = self.ask_lease(request);
        let now_ms = self.now_ms();
        let token = self.log_index;
        let granted_by = self.state.granted_by(&request.name);
        let lock = self
            .state
            .locks
            .get_mut(request.name.as_str())
            .expect("grant on a missing lock");
        assert!(lock.delayed_until_ms.is_none() && lock.fits(request.mode));
        assert!(
            token >= lock.last_token,
            "fencing token {token} below the lock's last {}",
            lock.last_token
        );
        lock.last_token = token;
        let lease_expires_at_ms = (lease.lease_ms > 0).then(|| now_ms + lease.lease_ms);
        let hold = Hold {
            token,
            mode: request.mode,
            since_ms: now_ms,
            lease_ms: lease.lease_ms,
            lease_expires_at_ms,
            lock_delay_ms: lease.lock_delay_ms,
            value: request.value.as_slice().into(),
            priority: request.priority,
            granted_by: granted_by.clone().map(Box::new),
        };
        assert!(lock.holders.insert(request.session_id, hold).is_none());
        let session = self
            .state
            .sessions
            .get_mut(&request.session_id)
            .expect("grant to a missing session");
        assert!(!session.waiting.contains(&request.name));
        assert!(
            session
                .holds
                .insert(request.name.as_str().into(), token)
                .is_none()
        );
        self.state.count_stake(
            &request.name,
            request.session_id,
            Stake::Hold { token },
            true,
        );
        if let Some(at_ms) = lease_expires_at_ms {
            let kind = DeadlineKind::LeaseExpiry {
                name: request.name.clone(),
                session_id: request.session_id,
            };
            assert!(self.state.deadlines.insert_key(Deadline { at_ms, kind }));
        }
        self.events.push(Event::Acquired {
            name: request.name.clone(),
            session_id: request.session_id,
            principal: self.principal_of(request.session_id),
            token,
            mode: request.mode,
            lease_ms: lease.lease_ms,
            granted_by,
            value: request.value.clone(),
        });
        (token, lease.lease_ms)
    }

    /// Ends a hold (release, close, expiry, lease expiry) and marks the lock for handoff.
    pub(super) fn end_hold(&mut self, name: &str, session_id: SessionId, reason: ReleaseReason) {
        let lock = self
            .state
            .locks
            .get_mut(name)
            .expect("ending a hold of a missing lock");
        let hold = lock
            .holders
            .remove(&session_id)
            .expect("ending a missing hold");
        // No hold granted by this entry ends in it: tokens are never reused (module docs).
        assert!(
            hold.token < self.log_index,
            "hold {} ends in the entry that granted it",
            hold.token
        );
        let session = self
            .state
            .sessions
            .get_mut(&session_id)
            .expect("hold of a missing session");
        assert_eq!(session.holds.remove(name), Some(hold.token));
        let stake = Stake::Hold { token: hold.token };
        self.state.count_stake(name, session_id, stake, false);
        if let Some(at_ms) = hold.lease_expires_at_ms {
            let kind = DeadlineKind::LeaseExpiry {
                name: name.to_string(),
                session_id,
            };
            assert!(self.state.deadlines.remove_key(&Deadline { at_ms, kind }));
        }
        self.events.push(Event::Released {
            name: name.to_string(),
            session_id,
            principal: self.principal_of(session_id),
            token: hold.token,
            reason,
        });
        if self.state.locks[name].holders.is_empty() {
            // Election timers belong to the leader that just left.
            self.clear_preempt(name);
            self.clear_reevaluate(name);
        }
        self.dirty.insert(name.to_string());
        self.remove_lock_if_empty(name);
    }

    /// Takes a waiter off the queue and marks the lock for handoff. Returns its request id.
    pub(super) fn remove_waiter(
        &mut self,
        name: &str,
        session_id: SessionId,
        reason: LeaveReason,
    ) -> RequestId {
        let waiter = self.dequeue(name, session_id);
        self.events.push(Event::LeftQueue {
            name: name.to_string(),
            session_id,
            principal: self.principal_of(session_id),
            reason,
        });
        self.dirty.insert(name.to_string());
        self.remove_lock_if_empty(name);
        waiter.request_id
    }

    /// Takes `session_id`'s waiter off lock `name`'s queue, off the session's waits and off
    /// the deadline index (its wait timeout), and returns it. The caller says what became of it.
    pub(super) fn dequeue(&mut self, name: &str, session_id: SessionId) -> Waiter {
        let lock = self
            .state
            .locks
            .get_mut(name)
            .expect("dequeuing a waiter of a missing lock");
        let position = lock
            .position_of(session_id)
            .expect("dequeuing a missing waiter");
        let waiter = lock.waiters.remove(position).expect("position in range");
        let session = self
            .state
            .sessions
            .get_mut(&session_id)
            .expect("waiter of a missing session");
        assert!(session.waiting.remove(name));
        self.state.count_stake(name, session_id, Stake::Wait, false);
        let kind = DeadlineKind::WaitTimeout {
            name: name.to_string(),
            session_id,
        };
        assert!(self.state.deadlines.remove_key(&Deadline {
            at_ms: waiter.deadline_ms,
            kind
        }));
        waiter
    }

    pub(super) fn remove_lock_if_empty(&mut self, name: &str) {
        if self
            .state
            .locks
            .get(name)
            .is_some_and(|lock| lock.is_empty())
        {
            self.state.locks.remove(name);
        }
    }

    pub(super) fn release(
        &mut self,
        session_id: SessionId,
        request_id: RequestId,
        name: &str,
        token: FencingToken,
    ) -> Outcome {
        if !self.state.sessions.contains_key(&session_id) {
            return Outcome::Rejected(Rejection::UnknownSession { session_id });
        }
        if let Some(outcome) = self.recorded(session_id, request_id, name) {
            return outcome;
        }
        let outcome = match self.state.sessions[&session_id].holds.get(name) {
            None => Outcome::Rejected(Rejection::NotHeld {
                name: name.to_string(),
                session_id,
            }),
            Some(held) if *held != token => Outcome::Rejected(Rejection::StaleToken {
                name: name.to_string(),
                token,
            }),
            Some(_) => {
                self.end_hold(name, session_id, ReleaseReason::Released);
                Outcome::Released {
                    token,
                    released_at: self.log_index,
                }
            }
        };
        self.record(session_id, request_id, &outcome);
        outcome
    }

    /// Ends hold `token` of `name` whoever holds it (an administrator's revoke).
    pub(super) fn revoke(&mut self, name: &str, token: FencingToken) -> Outcome {
        let holder = self.state.locks.get(name).and_then(|lock| {
            lock.holders
                .iter()
                .find(|(_, hold)| hold.token == token)
                .map(|(session_id, _)| *session_id)
        });
        match holder {
            None => Outcome::Rejected(Rejection::StaleToken {
                name: name.to_string(),
                token,
            }),
            Some(session_id) => {
                self.end_hold(name, session_id, ReleaseReason::Revoked);
                Outcome::Released {
                    token,
                    released_at: self.log_index,
                }
            }
        }
    }

    /// Removes a waiter. Its queued acquire's recorded outcome becomes `WaitCancelled`.
    pub(super) fn cancel_wait(&mut self, session_id: SessionId, name: &str) -> Outcome {
        let Some(session) = self.state.sessions.get(&session_id) else {
            return Outcome::Rejected(Rejection::UnknownSession { session_id });
        };
        if !session.waiting.contains(name) {
            return Outcome::Rejected(Rejection::NotWaiting {
                name: name.to_string(),
                session_id,
            });
        }
        let request_id = self.remove_waiter(name, session_id, LeaveReason::Cancelled);
        self.update_record(session_id, request_id, Outcome::WaitCancelled);
        Outcome::WaitCancelled
    }
}

/// A shared request's capacity, 0 meaning the maximum. Exclusive requests ignore the field.
pub(super) fn requested_max_holders(request: &AcquireRequest) -> u32 {
    match request.mode {
        Mode::Shared if request.max_holders == 0 => limits::HOLDERS_PER_LOCK_MAX,
        Mode::Shared => request.max_holders,
        Mode::Exclusive => limits::HOLDERS_PER_LOCK_MAX,
    }
}
