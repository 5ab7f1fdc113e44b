//! [`apply`]: one committed entry in, the new state and an [`Applied`] out.
//!
//! Every entry runs the same four phases, which fixes the order of events:
//!
//! 1. `Tick` only: renew the listed sessions (`expires_at = now + ttl`), so a keepalive that
//!    rides this tick saves a session whose deadline just passed.
//! 2. Fire every deadline due at `now`, in deadline-index order (time, then session expiry,
//!    lease expiry, wait timeout, lock-delay end, then key). This phase only *removes* holds
//!    and waiters and ends lock-delays; the locks it touches are marked dirty.
//! 3. The command. Only `Acquire` grants here (after first running the pending handoff of its
//!    own lock, so a try-lock sees the lock as it will be); `Release`, `CloseSession` and
//!    `CancelWait` only remove, marking locks dirty.
//! 4. Handoff: every dirty lock, by name, asks the policy whom to grant next (validated, FIFO
//!    fallback).
//!
//! Because every hold that ends in an entry ends before any grant of that entry on the same
//! lock, and every grant's fencing token is the entry's log index, a token is never reused
//! after its hold ended: tokens strictly increase per lock across holds.
//!
//! Rejections leave the state unchanged apart from `applied_index`, `now_ms`, the deadlines
//! that fell due, and the session's recorded outcome (so a retry gets the same rejection).
//!
//! Decisions where DESIGN.md is silent:
//! - Ending a session: its waiters leave (by lock name), its holds are released (by lock
//!   name), then `SessionClosed` / `SessionExpired`. Only expiry imposes lock-delay; a lock
//!   kept only by its lock-delay still exists (Describe shows it) until the delay ends.
//! - Idempotency: every Acquire/Release outcome with a non-zero request id is recorded,
//!   rejections included, in a window of `RECENT_REQUESTS_PER_SESSION_MAX` per session
//!   (smallest ids evicted; ids below the window are `RequestTooOld`). A queued Acquire's record
//!   follows the waiter: `Acquired` on grant, `Rejected(WaitTimedOut)` on timeout,
//!   `WaitCancelled` on cancel; while still queued a retry reports the current position.
//! - Re-entrancy: acquiring a held lock in the same mode (and capacity) returns the same hold;
//!   another mode is `ModeConflict` (no upgrade or downgrade). Likewise for a queued request.
//! - Shared capacity: `max_holders` (0 = `HOLDERS_PER_LOCK_MAX`) is pinned by the first shared
//!   holder or waiter and must match while any shared holder or waiter remains.

use std::collections::{BTreeMap, BTreeSet};

use crate::limits;
use crate::model::{
    AcquireRequest, Applied, Command, Entry, Event, FencingToken, LeaveReason, Mode, Outcome,
    Rejection, ReleaseReason, RequestId, SessionId,
};
use crate::policy::{self, AdmitDecision, AdmitInput, NextInput, PolicyRuntime};
use crate::state::{
    Deadline, DeadlineKind, Hold, Lock, Session, State, Waiter, label_is_valid, name_is_valid,
    position_u32,
};

/// Applies one committed entry. Same state + same entry (+ a deterministic policy) => same
/// result and same state bytes, on every replica. Never fails: bad input gives
/// `Outcome::Rejected`.
///
/// # Panics
/// If `entry.log_index` is not above `state.applied_index` (the shell applied out of order),
/// or if an internal invariant breaks: both are bugs, and a replica must stop rather than
/// diverge.
pub fn apply(state: &mut State, entry: &Entry, policy: &mut dyn PolicyRuntime) -> Applied {
    assert!(
        entry.log_index > state.applied_index,
        "entry {} applied after entry {}",
        entry.log_index,
        state.applied_index
    );
    let now_before = state.now_ms;
    state.applied_index = entry.log_index;
    state.now_ms = state.now_ms.max(entry.now_ms.min(limits::NOW_MS_MAX));
    assert!(state.now_ms >= now_before && state.now_ms <= limits::NOW_MS_MAX);

    let mut applier = Applier {
        state,
        policy,
        log_index: entry.log_index,
        events: Vec::new(),
        dirty: BTreeSet::new(),
    };
    let mut outcome = Outcome::None;
    if let Command::Tick { renewed } = &entry.command {
        outcome = applier.renew(renewed);
    }
    applier.fire_due_deadlines();
    match &entry.command {
        Command::Noop | Command::Tick { .. } => {}
        Command::OpenSession {
            ttl_ms,
            principal,
            labels,
        } => {
            outcome = applier.open_session(*ttl_ms, principal, labels);
        }
        Command::CloseSession { session_id } => outcome = applier.close_session(*session_id),
        Command::Acquire(request) => outcome = applier.acquire(request),
        Command::Release {
            session_id,
            request_id,
            name,
            token,
        } => {
            outcome = applier.release(*session_id, *request_id, name, *token);
        }
        Command::CancelWait { session_id, name } => {
            outcome = applier.cancel_wait(*session_id, name)
        }
        Command::Proclaim {
            session_id,
            name,
            token,
            value,
        } => outcome = applier.proclaim(*session_id, name, *token, value),
    }
    applier.handoff_dirty();
    Applied {
        outcome,
        events: applier.events,
    }
}

/// One entry being applied: the state, the policy, and what the entry produced so far.
struct Applier<'a, 'p> {
    state: &'a mut State,
    policy: &'a mut (dyn PolicyRuntime + 'p),
    log_index: u64,
    events: Vec<Event>,
    /// Locks that lost a holder or waiter, or whose lock-delay ended: handoff runs on them.
    dirty: BTreeSet<String>,
}

/// How a session ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    Closed,
    Expired,
}

impl Applier<'_, '_> {
    fn now_ms(&self) -> u64 {
        self.state.now_ms
    }

    // ---- phase 1 and 2: renewals and deadlines ------------------------------------------------

    fn renew(&mut self, renewed: &[SessionId]) -> Outcome {
        if renewed.len() > limits::RENEWALS_PER_TICK_MAX {
            // The shell splits renewals across ticks; a longer list is a shell bug, refused
            // whole so its cost stays bounded.
            return Outcome::Rejected(Rejection::LimitExceeded {
                limit: "renewals_per_tick_max".to_string(),
            });
        }
        let now_ms = self.now_ms();
        for session_id in renewed {
            let Some(session) = self.state.sessions.get_mut(session_id) else {
                continue;
            };
            let old = session.expires_at_ms;
            let new = old.max(now_ms + session.ttl_ms);
            session.expires_at_ms = new;
            let kind = DeadlineKind::SessionExpiry {
                session_id: *session_id,
            };
            assert!(self.state.deadlines.remove(&Deadline {
                at_ms: old,
                kind: kind.clone()
            }));
            self.state.deadlines.insert(Deadline { at_ms: new, kind });
        }
        Outcome::None
    }

    fn fire_due_deadlines(&mut self) {
        let now_ms = self.now_ms();
        while let Some(deadline) = self.state.deadlines.first() {
            if deadline.at_ms > now_ms {
                break;
            }
            let deadline = deadline.clone();
            match deadline.kind {
                DeadlineKind::SessionExpiry { session_id } => {
                    self.end_session(session_id, SessionEnd::Expired)
                }
                DeadlineKind::LeaseExpiry { name, session_id } => {
                    self.end_hold(&name, session_id, ReleaseReason::LeaseExpired);
                }
                DeadlineKind::WaitTimeout { name, session_id } => {
                    let request_id = self.remove_waiter(&name, session_id, LeaveReason::TimedOut);
                    let outcome = Outcome::Rejected(Rejection::WaitTimedOut { name: name.clone() });
                    self.update_record(session_id, request_id, outcome);
                }
                DeadlineKind::DelayEnd { name } => self.end_delay(&name),
            }
            assert!(
                self.state
                    .deadlines
                    .first()
                    .is_none_or(|first| first.at_ms >= deadline.at_ms)
            );
        }
        assert!(
            self.state
                .next_deadline_ms()
                .is_none_or(|at_ms| at_ms > now_ms)
        );
    }

    fn end_delay(&mut self, name: &str) {
        let lock = self
            .state
            .locks
            .get_mut(name)
            .expect("lock-delay deadline of a missing lock");
        let at_ms = lock
            .delayed_until_ms
            .take()
            .expect("lock-delay deadline of an undelayed lock");
        assert!(self.state.deadlines.remove(&Deadline {
            at_ms,
            kind: DeadlineKind::DelayEnd {
                name: name.to_string()
            }
        }));
        self.dirty.insert(name.to_string());
        self.remove_lock_if_empty(name);
    }

    // ---- sessions -------------------------------------------------------------------------------

    fn open_session(
        &mut self,
        ttl_ms: u64,
        principal: &str,
        labels: &BTreeMap<String, String>,
    ) -> Outcome {
        if !(limits::SESSION_TTL_MS_MIN..=limits::SESSION_TTL_MS_MAX).contains(&ttl_ms) {
            let reason = format!(
                "must be within {}..={} ms",
                limits::SESSION_TTL_MS_MIN,
                limits::SESSION_TTL_MS_MAX
            );
            return invalid("ttl_ms", reason);
        }
        if principal.len() > limits::PRINCIPAL_BYTES_MAX {
            return invalid(
                "principal",
                format!("longer than {} bytes", limits::PRINCIPAL_BYTES_MAX),
            );
        }
        if labels.len() > limits::LABELS_PER_SESSION_MAX {
            return invalid(
                "labels",
                format!("more than {}", limits::LABELS_PER_SESSION_MAX),
            );
        }
        if labels
            .iter()
            .any(|(key, value)| !label_is_valid(key, value))
        {
            return invalid(
                "labels",
                format!(
                    "empty key, or key or value over {} bytes",
                    limits::LABEL_BYTES_MAX
                ),
            );
        }
        if self.state.sessions.len() >= limits::SESSIONS_MAX {
            return Outcome::Rejected(Rejection::LimitExceeded {
                limit: "sessions_max".to_string(),
            });
        }
        let session_id = self.log_index;
        let expires_at_ms = self.now_ms() + ttl_ms;
        let session = Session {
            principal: principal.to_string(),
            labels: labels.clone(),
            ttl_ms,
            expires_at_ms,
            holds: Default::default(),
            waiting: Default::default(),
            recent: Default::default(),
            request_id_floor: 0,
        };
        assert!(self.state.sessions.insert(session_id, session).is_none());
        let kind = DeadlineKind::SessionExpiry { session_id };
        assert!(self.state.deadlines.insert(Deadline {
            at_ms: expires_at_ms,
            kind
        }));
        let principal = self.principal_of(session_id);
        self.events.push(Event::SessionOpened {
            session_id,
            principal,
        });
        Outcome::SessionOpened { session_id, ttl_ms }
    }

    fn close_session(&mut self, session_id: SessionId) -> Outcome {
        if !self.state.sessions.contains_key(&session_id) {
            return Outcome::Rejected(Rejection::UnknownSession { session_id });
        }
        self.end_session(session_id, SessionEnd::Closed);
        Outcome::SessionClosed { session_id }
    }

    /// Drops the session's waiters, then releases its holds (by lock name), then removes it.
    /// On expiry each released hold imposes its lock-delay.
    fn end_session(&mut self, session_id: SessionId, end: SessionEnd) {
        let session = self
            .state
            .sessions
            .get(&session_id)
            .expect("ending a missing session");
        let waiting: Vec<String> = session.waiting.iter().cloned().collect();
        let held: Vec<String> = session.holds.keys().cloned().collect();
        let (leave_reason, release_reason) = match end {
            SessionEnd::Closed => (LeaveReason::SessionClosed, ReleaseReason::SessionClosed),
            SessionEnd::Expired => (LeaveReason::SessionExpired, ReleaseReason::SessionExpired),
        };
        for name in &waiting {
            self.remove_waiter(name, session_id, leave_reason);
        }
        for name in &held {
            // Delay first, so the lock survives the end of its last hold.
            let lock_delay_ms = self.state.locks[name].holders[&session_id].lock_delay_ms;
            if end == SessionEnd::Expired && lock_delay_ms > 0 {
                self.delay_lock(name, self.now_ms() + lock_delay_ms);
            }
            self.end_hold(name, session_id, release_reason);
        }
        let session = self
            .state
            .sessions
            .remove(&session_id)
            .expect("session vanished");
        assert!(session.holds.is_empty() && session.waiting.is_empty());
        let kind = DeadlineKind::SessionExpiry { session_id };
        assert!(self.state.deadlines.remove(&Deadline {
            at_ms: session.expires_at_ms,
            kind
        }));
        let principal = session.principal;
        self.events.push(match end {
            SessionEnd::Closed => Event::SessionClosed {
                session_id,
                principal,
            },
            SessionEnd::Expired => Event::SessionExpired {
                session_id,
                principal,
            },
        });
    }

    /// Keeps the lock un-grantable until `until_ms` (or later, if it already was).
    fn delay_lock(&mut self, name: &str, until_ms: u64) {
        assert!(until_ms > self.now_ms());
        let lock = self
            .state
            .locks
            .get_mut(name)
            .expect("delaying a missing lock");
        let kind = DeadlineKind::DelayEnd {
            name: name.to_string(),
        };
        if let Some(old) = lock.delayed_until_ms {
            if old >= until_ms {
                return;
            }
            assert!(self.state.deadlines.remove(&Deadline {
                at_ms: old,
                kind: kind.clone()
            }));
        }
        lock.delayed_until_ms = Some(until_ms);
        assert!(self.state.deadlines.insert(Deadline {
            at_ms: until_ms,
            kind
        }));
    }

    // ---- idempotency ----------------------------------------------------------------------------

    /// The recorded outcome of a retried request, if any. A still-queued acquire reports its
    /// current position.
    fn recorded(
        &self,
        session_id: SessionId,
        request_id: RequestId,
        name: &str,
    ) -> Option<Outcome> {
        if request_id == 0 {
            return None;
        }
        let session = self.state.sessions.get(&session_id)?;
        if request_id < session.request_id_floor {
            return Some(Outcome::Rejected(Rejection::RequestTooOld { request_id }));
        }
        let outcome = session.recent.get(&request_id)?;
        if let Outcome::Queued { .. } = outcome
            && let Some(position) = self
                .state
                .locks
                .get(name)
                .and_then(|lock| lock.position_of(session_id))
        {
            return Some(Outcome::Queued {
                position: position_u32(position),
            });
        }
        Some(outcome.clone())
    }

    /// Records a new request's outcome, evicting the smallest request ids beyond the cap.
    fn record(&mut self, session_id: SessionId, request_id: RequestId, outcome: &Outcome) {
        if request_id == 0 {
            return;
        }
        let session = self
            .state
            .sessions
            .get_mut(&session_id)
            .expect("recording for a missing session");
        assert!(request_id >= session.request_id_floor);
        assert!(session.recent.insert(request_id, outcome.clone()).is_none());
        while session.recent.len() > limits::RECENT_REQUESTS_PER_SESSION_MAX {
            let (evicted, _) = session.recent.pop_first().expect("non-empty");
            session.request_id_floor = session.request_id_floor.max(evicted + 1);
        }
    }

    /// A queued acquire's fate is decided later: its record (if still kept) follows.
    fn update_record(&mut self, session_id: SessionId, request_id: RequestId, outcome: Outcome) {
        let Some(session) = self.state.sessions.get_mut(&session_id) else {
            return;
        };
        if let Some(recorded) = session.recent.get_mut(&request_id) {
            assert!(matches!(recorded, Outcome::Queued { .. }));
            *recorded = outcome;
        }
    }

    // ---- acquire --------------------------------------------------------------------------------

    fn acquire(&mut self, request: &AcquireRequest) -> Outcome {
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

    fn acquire_new(&mut self, request: &AcquireRequest) -> Outcome {
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
        if let AdmitDecision::Deny { reason } = self.ask_admit(request) {
            return Outcome::Rejected(Rejection::PolicyDenied {
                reason: policy::truncate_reason(reason),
            });
        }
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
        self.enqueue(request)
    }

    /// Re-entrant acquire, already-queued acquire, or a shared capacity that disagrees with
    /// the lock's: answered without asking the policy.
    fn acquire_existing(&self, request: &AcquireRequest) -> Option<Outcome> {
        let lock = self.state.locks.get(&request.name)?;
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

    fn ask_admit(&mut self, request: &AcquireRequest) -> AdmitDecision {
        let lock = self.state.locks.get(&request.name);
        let holders = lock.map(|lock| lock.holder_views()).unwrap_or_default();
        let waiters = lock.map(|lock| lock.waiter_views()).unwrap_or_default();
        let session = &self.state.sessions[&request.session_id];
        let input = AdmitInput {
            request,
            principal: &session.principal,
            labels: &session.labels,
            holders: &holders,
            waiters: &waiters,
            now_ms: self.state.now_ms,
            log_index: self.log_index,
        };
        self.policy.admit(&input)
    }

    /// Creates the lock if needed and pins its shared capacity to this request's when no
    /// shared holder or waiter pins it yet.
    fn pin_max_holders(&mut self, request: &AcquireRequest) {
        let max_holders = requested_max_holders(request);
        let lock = self
            .state
            .locks
            .entry(request.name.clone())
            .or_insert_with(|| Lock::new(max_holders));
        if request.mode == Mode::Shared && !lock.shared_in_use() {
            lock.max_holders = max_holders;
        }
        assert!(request.mode == Mode::Exclusive || lock.max_holders == max_holders);
    }

    fn enqueue(&mut self, request: &AcquireRequest) -> Outcome {
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
            .get_mut(&request.name)
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
        let kind = DeadlineKind::WaitTimeout {
            name: request.name.clone(),
            session_id: request.session_id,
        };
        assert!(self.state.deadlines.insert(Deadline {
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

    // ---- grants and removals --------------------------------------------------------------------

    /// Grants `request` now, with this entry's log index as the fencing token. The lock exists
    /// and the request fits (the caller checked); the session is not queued for it.
    fn grant(&mut self, request: &AcquireRequest) -> (FencingToken, u64) {
        let (lease, clamped) = policy::clamp_lease(self.ask_lease(request));
        self.state.policy_fault_count += u64::from(clamped);
        let now_ms = self.now_ms();
        let token = self.log_index;
        let lock = self
            .state
            .locks
            .get_mut(&request.name)
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
            value: request.value.clone(),
        };
        assert!(lock.holders.insert(request.session_id, hold).is_none());
        let session = self
            .state
            .sessions
            .get_mut(&request.session_id)
            .expect("grant to a missing session");
        assert!(!session.waiting.contains(&request.name));
        assert!(session.holds.insert(request.name.clone(), token).is_none());
        if let Some(at_ms) = lease_expires_at_ms {
            let kind = DeadlineKind::LeaseExpiry {
                name: request.name.clone(),
                session_id: request.session_id,
            };
            assert!(self.state.deadlines.insert(Deadline { at_ms, kind }));
        }
        self.events.push(Event::Acquired {
            name: request.name.clone(),
            session_id: request.session_id,
            principal: self.principal_of(request.session_id),
            token,
            mode: request.mode,
            lease_ms: lease.lease_ms,
            value: request.value.clone(),
        });
        (token, lease.lease_ms)
    }

    fn ask_lease(&mut self, request: &AcquireRequest) -> policy::LeaseDecision {
        let lock = &self.state.locks[&request.name];
        let holders = lock.holder_views();
        let waiters = lock.waiter_views();
        let session = &self.state.sessions[&request.session_id];
        let input = AdmitInput {
            request,
            principal: &session.principal,
            labels: &session.labels,
            holders: &holders,
            waiters: &waiters,
            now_ms: self.state.now_ms,
            log_index: self.log_index,
        };
        self.policy.lease_for(&input)
    }

    /// Ends a hold (release, close, expiry, lease expiry) and marks the lock for handoff.
    fn end_hold(&mut self, name: &str, session_id: SessionId, reason: ReleaseReason) {
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
        if let Some(at_ms) = hold.lease_expires_at_ms {
            let kind = DeadlineKind::LeaseExpiry {
                name: name.to_string(),
                session_id,
            };
            assert!(self.state.deadlines.remove(&Deadline { at_ms, kind }));
        }
        self.events.push(Event::Released {
            name: name.to_string(),
            session_id,
            principal: self.principal_of(session_id),
            token: hold.token,
            reason,
        });
        self.dirty.insert(name.to_string());
        self.remove_lock_if_empty(name);
    }

    /// Takes a waiter off the queue and marks the lock for handoff. Returns its request id.
    fn remove_waiter(
        &mut self,
        name: &str,
        session_id: SessionId,
        reason: LeaveReason,
    ) -> RequestId {
        let lock = self
            .state
            .locks
            .get_mut(name)
            .expect("removing a waiter of a missing lock");
        let position = lock
            .position_of(session_id)
            .expect("removing a missing waiter");
        let waiter = lock.waiters.remove(position).expect("position in range");
        let session = self
            .state
            .sessions
            .get_mut(&session_id)
            .expect("waiter of a missing session");
        assert!(session.waiting.remove(name));
        let kind = DeadlineKind::WaitTimeout {
            name: name.to_string(),
            session_id,
        };
        assert!(self.state.deadlines.remove(&Deadline {
            at_ms: waiter.deadline_ms,
            kind
        }));
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

    fn remove_lock_if_empty(&mut self, name: &str) {
        if self.state.locks.get(name).is_some_and(Lock::is_empty) {
            self.state.locks.remove(name);
        }
    }

    // ---- release and cancel ---------------------------------------------------------------------

    /// The principal of a live session ("" if it is gone), for events.
    fn principal_of(&self, session_id: SessionId) -> String {
        self.state
            .sessions
            .get(&session_id)
            .map(|s| s.principal.clone())
            .unwrap_or_default()
    }

    /// Replaces the value of the hold `token` of `session_id` on `name` (election Proclaim).
    fn proclaim(
        &mut self,
        session_id: SessionId,
        name: &str,
        token: FencingToken,
        value: &[u8],
    ) -> Outcome {
        if !self.state.sessions.contains_key(&session_id) {
            return Outcome::Rejected(Rejection::UnknownSession { session_id });
        }
        if value.len() > limits::VALUE_BYTES_MAX {
            return invalid(
                "value",
                format!("must be at most {} bytes", limits::VALUE_BYTES_MAX),
            );
        }
        match self.state.sessions[&session_id].holds.get(name) {
            None => {
                return Outcome::Rejected(Rejection::NotHeld {
                    name: name.to_string(),
                    session_id,
                });
            }
            Some(held) if *held != token => {
                return Outcome::Rejected(Rejection::StaleToken {
                    name: name.to_string(),
                    token,
                });
            }
            Some(_) => {}
        }
        let hold = self
            .state
            .locks
            .get_mut(name)
            .and_then(|lock| lock.holders.get_mut(&session_id))
            .expect("a session's hold is in its lock");
        assert_eq!(hold.token, token);
        hold.value = value.to_vec();
        self.events.push(Event::Proclaimed {
            name: name.to_string(),
            session_id,
            principal: self.principal_of(session_id),
            token,
            value: value.to_vec(),
        });
        Outcome::Proclaimed { token }
    }

    fn release(
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

    /// Removes a waiter. Its queued acquire's recorded outcome becomes `WaitCancelled`.
    fn cancel_wait(&mut self, session_id: SessionId, name: &str) -> Outcome {
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

    // ---- phase 4: handoff -----------------------------------------------------------------------

    fn handoff_dirty(&mut self) {
        while let Some(name) = self.dirty.pop_first() {
            self.handoff(&name);
        }
    }

    /// Grants whom the policy chooses among the waiters (validated; FIFO otherwise).
    fn handoff(&mut self, name: &str) {
        let Some(lock) = self.state.locks.get(name) else {
            return;
        };
        if lock.delayed_until_ms.is_some() || lock.waiters.is_empty() {
            return;
        }
        if !lock.waiters.iter().any(|waiter| lock.fits(waiter.mode)) {
            return; // Nobody could be granted: spare the policy call.
        }
        let holders = lock.holder_views();
        let waiters = lock.waiter_views();
        let max_holders = lock.max_holders;
        let input = NextInput {
            name,
            holders: &holders,
            waiters: &waiters,
            max_holders,
            now_ms: self.state.now_ms,
            log_index: self.log_index,
        };
        let mut choice = self.policy.choose_next(&input);
        let valid = policy::choice_is_valid(&holders, &waiters, max_holders, &choice);
        if !valid {
            choice = policy::fifo_choice(&holders, &waiters, max_holders);
        }
        assert!(!choice.is_empty() || !holders.is_empty());
        let chosen: Vec<Waiter> = choice
            .iter()
            .map(|&index| lock.waiters[index].clone())
            .collect();
        self.state.policy_fault_count += u64::from(!valid);
        for waiter in &chosen {
            self.grant_waiter(name, waiter, max_holders);
        }
    }

    /// Moves one waiter from the queue to the holders.
    fn grant_waiter(&mut self, name: &str, waiter: &Waiter, max_holders: u32) {
        let session_id = waiter.session_id;
        let lock = self
            .state
            .locks
            .get_mut(name)
            .expect("handoff on a missing lock");
        let position = lock
            .position_of(session_id)
            .expect("chosen waiter is queued");
        lock.waiters.remove(position);
        let session = self
            .state
            .sessions
            .get_mut(&session_id)
            .expect("waiter of a missing session");
        assert!(session.waiting.remove(name));
        let kind = DeadlineKind::WaitTimeout {
            name: name.to_string(),
            session_id,
        };
        assert!(self.state.deadlines.remove(&Deadline {
            at_ms: waiter.deadline_ms,
            kind
        }));
        let request = AcquireRequest {
            session_id,
            request_id: waiter.request_id,
            name: name.to_string(),
            mode: waiter.mode,
            max_holders,
            wait_timeout_ms: waiter.wait_timeout_ms,
            priority: waiter.priority,
            value: waiter.value.clone(),
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

/// A shared request's capacity, 0 meaning the maximum. Exclusive requests ignore the field.
fn requested_max_holders(request: &AcquireRequest) -> u32 {
    match request.mode {
        Mode::Shared if request.max_holders == 0 => limits::HOLDERS_PER_LOCK_MAX,
        Mode::Shared => request.max_holders,
        Mode::Exclusive => limits::HOLDERS_PER_LOCK_MAX,
    }
}

fn invalid(field: &str, reason: String) -> Outcome {
    Outcome::Rejected(Rejection::InvalidArgument {
        field: field.to_string(),
        reason,
    })
}
