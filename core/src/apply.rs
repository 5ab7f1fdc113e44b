//! [`apply`]: one committed entry in, the new state and an [`Applied`] out.
//!
//! Every entry runs the same four phases, which fixes the order of events:
//!
//! 1. `Tick` only: renew the listed sessions (`expires_at = now + ttl`), so a keepalive that
//!    rides this tick saves a session whose deadline just passed.
//! 2. Fire every deadline due at `now`, in deadline-index order (time, then session expiry,
//!    lease expiry, wait timeout, lock-delay end, election preemption, election re-evaluation,
//!    then key). This phase only *removes* holds and waiters (a due preemption revokes the
//!    leader's hold) and ends lock-delays; the locks it touches are marked dirty.
//! 3. The command. Only `Acquire` grants here (after first running the pending handoff of its
//!    own lock, so a try-lock sees the lock as it will be; and, for an election, a candidate
//!    the policy prefers to the leader may preempt it on arrival); `Release`, `CloseSession` and
//!    `CancelWait` only remove, marking locks dirty.
//! 4. Handoff: every dirty lock, by name, asks the policy whom to grant next (validated, FIFO
//!    fallback) — or, for an election (the bound policy has an `elect` hook), whom to elect.
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

use holdfast_policy_sdk::Hook;
use sha2::{Digest, Sha256};

use crate::limits;
use crate::model::{
    AcquireRequest, Applied, BindMode, Command, Entry, Event, FencingToken, LeaveReason, Mode,
    Outcome, Rejection, ReleaseReason, RequestId, SessionId,
};
use crate::policy::{
    self, AdmitDecision, AdmitInput, BoundModule, CandidateView, Counters, ElectDecision,
    ElectInput, ExpireInput, HeldView, NextInput, POLICY_ABI_LIMITS, PolicyHost, PolicyRuntime,
};
use crate::state::{
    BUILTIN_POLICY, Bound, Deadline, DeadlineKind, Deployed, Hold, Lock, Session, State, Waiter,
    label_is_valid, name_is_valid, policy_name_is_valid, position_u32,
};

/// Applies one committed entry. Same state + same entry (+ a deterministic policy) => same
/// result and same state bytes, on every replica. Never fails: bad input gives
/// `Outcome::Rejected`.
///
/// # Panics
/// If `entry.log_index` is not above `state.applied_index` (the shell applied out of order),
/// or if an internal invariant breaks: both are bugs, and a replica must stop rather than
/// diverge.
pub fn apply<H: PolicyHost + ?Sized>(state: &mut State, entry: &Entry, host: &mut H) -> Applied {
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
        host,
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
        Command::Revoke { name, token } => outcome = applier.revoke(name, *token),
        Command::Proclaim {
            session_id,
            name,
            token,
            value,
        } => outcome = applier.proclaim(*session_id, name, *token, value),
        Command::DeployPolicy { name, wasm } => outcome = applier.deploy_policy(name, wasm),
        Command::BindPolicy {
            prefix,
            policy,
            version,
            config,
            mode,
        } => {
            // Handoffs due before this entry's binding change decide under the old bindings.
            applier.handoff_dirty();
            outcome = applier.bind_policy(prefix, policy, *version, config, *mode);
        }
        Command::Unbind { prefix, mode } => {
            applier.handoff_dirty();
            outcome = applier.unbind(prefix, *mode);
        }
    }
    applier.handoff_dirty();
    Applied {
        outcome,
        events: applier.events,
    }
}

/// One entry being applied: the state, the policy host, and what the entry produced so far.
struct Applier<'a, H: PolicyHost + ?Sized> {
    state: &'a mut State,
    host: &'a mut H,
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

/// A binding deciding for a lock, by key (looked up again in state when used).
#[derive(Clone, Debug)]
struct Route {
    prefix: String,
    mode: BindMode,
}

impl<H: PolicyHost + ?Sized> Applier<'_, H> {
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
                DeadlineKind::ElectionPreempt { name } => self.fire_preempt(&name),
                DeadlineKind::ElectionReevaluate { name } => {
                    self.clear_reevaluate(&name);
                    self.dirty.insert(name);
                }
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
        let of_principal = self.state.sessions_by_principal.get(principal).copied();
        if of_principal.is_some_and(|count| count >= limits::SESSIONS_PER_PRINCIPAL_MAX) {
            return Outcome::Rejected(Rejection::LimitExceeded {
                limit: "sessions_per_principal_max".to_string(),
            });
        }
        *self
            .state
            .sessions_by_principal
            .entry(principal.to_string())
            .or_insert(0) += 1;
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
        let delays = if end == SessionEnd::Expired {
            self.expiry_delays(session_id, &held)
        } else {
            BTreeMap::new()
        };
        for name in &held {
            // Delay first, so the lock survives the end of its last hold.
            let lock_delay_ms = delays
                .get(name)
                .copied()
                .unwrap_or_else(|| self.state.locks[name].holders[&session_id].lock_delay_ms);
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
        match self.state.sessions_by_principal.get_mut(&session.principal) {
            Some(1) => {
                self.state.sessions_by_principal.remove(&session.principal);
            }
            Some(count) => *count -= 1,
            None => unreachable!("an open session's principal is counted"),
        }
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

    /// Lock-delays that the policies bound to the expiring session's locks chose instead of the
    /// grant-time ones: each enforcing binding is asked once, about the holds under it.
    fn expiry_delays(&mut self, session_id: SessionId, held: &[String]) -> BTreeMap<String, u64> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in held {
            if let (Some(route), _) = self.routes(name) {
                groups.entry(route.prefix).or_default().push(name.clone());
            }
        }
        let mut delays = BTreeMap::new();
        for (prefix, names) in groups {
            let route = Route {
                prefix,
                mode: BindMode::Enforce,
            };
            let log_index = self.log_index;
            let ask = |runtime: &mut dyn PolicyRuntime, state: &State, _counting: Option<&str>| {
                let session = &state.sessions[&session_id];
                let held = names
                    .iter()
                    .map(|name| {
                        let hold = &state.locks[name].holders[&session_id];
                        HeldView {
                            name: name.clone(),
                            token: hold.token,
                            mode: hold.mode,
                            since_ms: hold.since_ms,
                            lock_delay_ms: hold.lock_delay_ms,
                        }
                    })
                    .collect();
                runtime.on_session_expire(&ExpireInput {
                    session_id,
                    principal: &session.principal,
                    labels: &session.labels,
                    held,
                    state,
                    now_ms: state.now_ms,
                    log_index,
                })
            };
            let first = names[0].clone();
            let Some(answer) = self.run(Some(&route), &first, Hook::OnSessionExpire, ask) else {
                continue;
            };
            if answer.len() != names.len() {
                self.count_fault(Some(&route), &first, Hook::OnSessionExpire, 1);
                continue;
            }
            let mut clamped = false;
            for (name, delay) in names.into_iter().zip(answer) {
                clamped |= delay > limits::LOCK_DELAY_MS_MAX;
                delays.insert(name, delay.min(limits::LOCK_DELAY_MS_MAX));
            }
            if clamped {
                self.count_fault(Some(&route), &first, Hook::OnSessionExpire, 1);
            }
        }
        delays
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
        let prioritized;
        let request = match self.ask_admit(request) {
            AdmitDecision::Deny { reason } => {
                return Outcome::Rejected(Rejection::PolicyDenied {
                    reason: policy::truncate_reason(reason),
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
        let (enforce, shadow) = self.routes(&request.name);
        let log_index = self.log_index;
        let ask = |runtime: &mut dyn PolicyRuntime, state: &State, counting: Option<&str>| {
            runtime.admit(&admit_input(state, request, counting, log_index))
        };
        let decision = self.run(enforce.as_ref(), &request.name, Hook::Admit, ask);
        if let Some(shadow) = shadow {
            let candidate = self.run(Some(&shadow), &request.name, Hook::Admit, ask);
            let agree = matches!(
                (&decision, &candidate),
                (
                    AdmitDecision::Admit | AdmitDecision::AdmitWithPriority { .. },
                    AdmitDecision::Admit | AdmitDecision::AdmitWithPriority { .. }
                ) | (AdmitDecision::Deny { .. }, AdmitDecision::Deny { .. })
            );
            self.compare(&shadow, &request.name, Hook::Admit, agree);
        }
        decision
    }

    // ---- policy routing -------------------------------------------------------------------------

    /// The enforcing and the shadow binding deciding for lock `name` (None: no binding).
    fn routes(&self, name: &str) -> (Option<Route>, Option<Route>) {
        let route = |mode| {
            self.state.binding_for(name, mode).map(|(prefix, _)| Route {
                prefix: prefix.to_string(),
                mode,
            })
        };
        (route(BindMode::Enforce), route(BindMode::Shadow))
    }

    /// Asks the runtime of `route` (None = the host's default) through `ask`, which gets the
    /// runtime, the state and, for a deployed module, the prefix to count under. Guest
    /// failures the runtime reports are counted on the binding and reported as events.
    fn run<R>(
        &mut self,
        route: Option<&Route>,
        name: &str,
        hook: Hook,
        ask: impl FnOnce(&mut dyn PolicyRuntime, &State, Option<&str>) -> R,
    ) -> R {
        let state: &State = self.state;
        let module = route.and_then(|route| bound_module(state, route));
        let counting = module.as_ref().map(|module| module.prefix);
        let runtime = self.host.runtime(module.as_ref());
        let before = runtime.fault_count();
        let result = ask(&mut *runtime, state, counting);
        let faults = runtime.fault_count().saturating_sub(before);
        if faults > 0 {
            self.count_fault(route, name, hook, faults);
        }
        result
    }

    /// Counts `count` policy faults (fallbacks used) on `route`'s binding.
    fn count_fault(&mut self, route: Option<&Route>, name: &str, hook: Hook, count: u64) {
        self.state.policy_fault_count += count;
        let Some(route) = route else {
            return;
        };
        let bound = self.bound_mut(route);
        *bound.faults.entry(hook.name().to_string()).or_default() += count;
        let (policy, version) = (bound.policy.clone(), bound.version);
        self.events.push(Event::PolicyFault {
            name: name.to_string(),
            prefix: route.prefix.clone(),
            policy,
            version,
            mode: route.mode,
            hook: hook.name().to_string(),
        });
    }

    /// Records one shadow comparison on `route`'s binding.
    fn compare(&mut self, route: &Route, name: &str, hook: Hook, agree: bool) {
        let bound = self.bound_mut(route);
        bound.compared += 1;
        if agree {
            return;
        }
        bound.disagreements += 1;
        let (policy, version) = (bound.policy.clone(), bound.version);
        self.events.push(Event::PolicyDisagreement {
            name: name.to_string(),
            prefix: route.prefix.clone(),
            policy,
            version,
            hook: hook.name().to_string(),
        });
    }

    fn bound_mut(&mut self, route: &Route) -> &mut Bound {
        self.state
            .bindings
            .get_mut(&route.prefix)
            .and_then(|binding| binding.slot(route.mode).as_mut())
            .expect("a routed binding exists")
    }

    // ---- policy deployment ----------------------------------------------------------------------

    fn deploy_policy(&mut self, name: &str, wasm: &[u8]) -> Outcome {
        if !policy_name_is_valid(name) || name == BUILTIN_POLICY {
            let reason = format!(
                "must be 1..={} bytes of [a-z0-9._-] starting with a letter or digit, not {BUILTIN_POLICY:?}",
                limits::POLICY_NAME_BYTES_MAX
            );
            return invalid("name", reason);
        }
        let info = match holdfast_policy_abi::check(wasm, &POLICY_ABI_LIMITS) {
            Ok(info) => info,
            Err(error) => return invalid("wasm", error.to_string()),
        };
        let sha256: [u8; 32] = Sha256::digest(wasm).into();
        let versions = self.state.policies.get(name);
        if let Some((&version, newest)) = versions.and_then(|versions| versions.last_key_value())
            && newest.sha256 == sha256
        {
            return Outcome::PolicyDeployed {
                name: name.to_string(),
                version,
                sha256,
                created: false,
            };
        }
        if versions.is_none() && self.state.policies.len() >= limits::POLICIES_MAX {
            return Outcome::Rejected(Rejection::LimitExceeded {
                limit: "policies_max".to_string(),
            });
        }
        let version = versions
            .and_then(|versions| versions.last_key_value())
            .map_or(1, |(newest, _)| newest + 1);
        let evict = match versions {
            Some(versions) if versions.len() >= limits::POLICY_VERSIONS_KEPT => {
                match versions
                    .keys()
                    .find(|&&old| !self.state.is_bound(name, old))
                {
                    Some(&old) => Some(old),
                    None => {
                        return Outcome::Rejected(Rejection::LimitExceeded {
                            limit: "policy_versions_kept".to_string(),
                        });
                    }
                }
            }
            _ => None,
        };
        if let Err(reason) = self.host.prepare(&sha256, wasm) {
            return invalid("wasm", reason);
        }
        let deployed = Deployed {
            sha256,
            wasm: wasm.to_vec(),
            deployed_at: self.log_index,
            meta_name: info.name,
            meta_version: info.version,
            hooks: info
                .hooks
                .iter()
                .map(|hook| hook.name().to_string())
                .collect(),
        };
        let versions = self.state.policies.entry(name.to_string()).or_default();
        if let Some(old) = evict {
            versions.remove(&old);
        }
        assert!(versions.insert(version, deployed).is_none());
        assert!(versions.len() <= limits::POLICY_VERSIONS_KEPT);
        self.events.push(Event::PolicyDeployed {
            name: name.to_string(),
            version,
        });
        Outcome::PolicyDeployed {
            name: name.to_string(),
            version,
            sha256,
            created: true,
        }
    }

    fn bind_policy(
        &mut self,
        prefix: &str,
        policy: &str,
        version: u64,
        config: &[u8],
        mode: BindMode,
    ) -> Outcome {
        if prefix.len() > limits::LOCK_NAME_BYTES_MAX {
            let reason = format!("must be at most {} bytes", limits::LOCK_NAME_BYTES_MAX);
            return invalid("prefix", reason);
        }
        if config.len() > limits::POLICY_CONFIG_BYTES_MAX {
            let reason = format!("must be at most {} bytes", limits::POLICY_CONFIG_BYTES_MAX);
            return invalid("config", reason);
        }
        let unknown = || {
            Outcome::Rejected(Rejection::UnknownPolicy {
                name: policy.to_string(),
                version,
            })
        };
        let version = if policy == BUILTIN_POLICY {
            if version != 0 {
                return unknown();
            }
            0
        } else {
            match self.state.policy_module(policy, version) {
                Some((version, _)) => version,
                None => return unknown(),
            }
        };
        if !self.state.bindings.contains_key(prefix)
            && self.state.bindings.len() >= limits::POLICY_BINDINGS_MAX
        {
            return Outcome::Rejected(Rejection::LimitExceeded {
                limit: "policy_bindings_max".to_string(),
            });
        }
        if policy != BUILTIN_POLICY {
            let deployed = &self.state.policies[policy][&version];
            let module = BoundModule {
                policy,
                version,
                sha256: &deployed.sha256,
                wasm: &deployed.wasm,
                config,
                prefix,
            };
            if let Err(reason) = self.host.runtime(Some(&module)).init(config, prefix) {
                let reason = format!(
                    "policy {policy}@{version} refused it: {}",
                    policy::truncate_reason(reason)
                );
                return invalid("config", reason);
            }
        }
        let bound = Bound {
            policy: policy.to_string(),
            version,
            config: config.to_vec(),
            bound_at: self.log_index,
            faults: BTreeMap::new(),
            disagreements: 0,
            compared: 0,
        };
        *self
            .state
            .bindings
            .entry(prefix.to_string())
            .or_default()
            .slot(mode) = Some(bound);
        self.events.push(Event::PolicyBound {
            prefix: prefix.to_string(),
            policy: policy.to_string(),
            version,
            mode,
        });
        Outcome::PolicyBound {
            prefix: prefix.to_string(),
            policy: policy.to_string(),
            version,
            mode,
        }
    }

    fn unbind(&mut self, prefix: &str, mode: BindMode) -> Outcome {
        let Some(binding) = self.state.bindings.get_mut(prefix) else {
            return Outcome::Rejected(Rejection::NotBound {
                prefix: prefix.to_string(),
                mode,
            });
        };
        if binding.slot(mode).take().is_none() {
            return Outcome::Rejected(Rejection::NotBound {
                prefix: prefix.to_string(),
                mode,
            });
        }
        if binding.enforce.is_none() && binding.shadow.is_none() {
            self.state.bindings.remove(prefix);
        }
        self.events.push(Event::PolicyUnbound {
            prefix: prefix.to_string(),
            mode,
        });
        Outcome::PolicyUnbound {
            prefix: prefix.to_string(),
            mode,
        }
    }

    /// Creates the lock if needed and pins its shared capacity to this request's when no
    /// shared holder or waiter pins it yet.
    fn pin_max_holders(&mut self, request: &AcquireRequest) {
        let max_holders = requested_max_holders(request);
        let lock = self
            .state
            .locks
            .entry(request.name.clone())
            .or_insert_with(|| Box::new(Lock::new(max_holders)));
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
        let lease = self.ask_lease(request);
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
            priority: request.priority,
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

    /// The lease for a grant (clamped into the limits; clamping counts as a fault).
    fn ask_lease(&mut self, request: &AcquireRequest) -> policy::LeaseDecision {
        let (enforce, shadow) = self.routes(&request.name);
        let log_index = self.log_index;
        // `lease_for` inputs carry no counters: skip counting.
        let ask = |runtime: &mut dyn PolicyRuntime, state: &State, _counting: Option<&str>| {
            runtime.lease_for(&admit_input(state, request, None, log_index))
        };
        let (lease, clamped) =
            policy::clamp_lease(self.run(enforce.as_ref(), &request.name, Hook::LeaseFor, ask));
        if clamped {
            self.count_fault(enforce.as_ref(), &request.name, Hook::LeaseFor, 1);
        }
        if let Some(shadow) = shadow {
            let (candidate, _) =
                policy::clamp_lease(self.run(Some(&shadow), &request.name, Hook::LeaseFor, ask));
            self.compare(&shadow, &request.name, Hook::LeaseFor, candidate == lease);
        }
        lease
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
        if self.state.locks[name].holders.is_empty() {
            // Election timers belong to the leader that just left.
            self.clear_preempt(name);
            self.clear_reevaluate(name);
        }
        self.dirty.insert(name.to_string());
        self.remove_lock_if_empty(name);
    }

    // ---- elections --------------------------------------------------------------------------

    /// Runs the lock as an election if its enforcing policy has an `elect` hook: picks the
    /// leader among the waiters, or decides whether one preempts the holder. False when the
    /// lock is not an election (no binding, no hook, shared mode): the caller hands it off.
    fn elect(&mut self, name: &str) -> bool {
        let (Some(route), _) = self.routes(name) else {
            return false;
        };
        let lock = &self.state.locks[name];
        // Nobody to elect, or nobody electable before the lock-delay ends.
        if lock.waiters.is_empty() || lock.holders.is_empty() && lock.delayed_until_ms.is_some() {
            return false;
        }
        if lock.holders_mode() == Some(Mode::Shared)
            || lock
                .waiters
                .iter()
                .any(|waiter| waiter.mode == Mode::Shared)
        {
            return false;
        }
        let candidates: Vec<CandidateView> = lock
            .waiters
            .iter()
            .map(|waiter| CandidateView {
                session_id: waiter.session_id,
                priority: waiter.priority,
                since_ms: waiter.queued_at_ms,
                token: 0,
            })
            .collect();
        let incumbent = lock
            .holders
            .iter()
            .next()
            .map(|(session_id, hold)| CandidateView {
                session_id: *session_id,
                priority: hold.priority,
                since_ms: hold.since_ms,
                token: hold.token,
            });
        let log_index = self.log_index;
        let now_ms = self.now_ms();
        let ask = |runtime: &mut dyn PolicyRuntime, state: &State, _counting: Option<&str>| {
            runtime.elect(&ElectInput {
                election: name,
                candidates: candidates.clone(),
                incumbent: incumbent.clone(),
                state,
                now_ms: state.now_ms,
                log_index,
            })
        };
        let Some(decision) = self.run(Some(&route), name, Hook::Elect, ask) else {
            return false;
        };
        let in_range = |at: u64| at > now_ms && at <= now_ms + limits::ELECTION_DELAY_MS_MAX;
        let valid = match &decision {
            ElectDecision::KeepIncumbent { reevaluate_at_ms } => {
                incumbent.is_some() && reevaluate_at_ms.is_none_or(in_range)
            }
            ElectDecision::Elect {
                winner,
                preempt_grace_ms,
            } => *winner < candidates.len() && *preempt_grace_ms <= limits::ELECTION_DELAY_MS_MAX,
        };
        let decision = if valid {
            decision
        } else {
            self.count_fault(Some(&route), name, Hook::Elect, 1);
            match incumbent {
                Some(_) => ElectDecision::KeepIncumbent {
                    reevaluate_at_ms: None,
                },
                None => ElectDecision::Elect {
                    winner: 0,
                    preempt_grace_ms: 0,
                },
            }
        };
        match (decision, incumbent) {
            (ElectDecision::KeepIncumbent { reevaluate_at_ms }, _) => {
                if let Some(at_ms) = reevaluate_at_ms {
                    self.set_reevaluate(name, at_ms);
                }
            }
            (ElectDecision::Elect { winner, .. }, None) => {
                self.grant_candidate(name, candidates[winner].session_id);
            }
            (ElectDecision::Elect { .. }, Some(incumbent)) if incumbent.token == self.log_index => {
                // The leader was elected by this very entry: a hold never ends in the entry
                // that granted it. Decide again at the next tick.
                self.set_reevaluate(name, now_ms + 1);
            }
            (
                ElectDecision::Elect {
                    winner,
                    preempt_grace_ms: 0,
                },
                Some(incumbent),
            ) => self.preempt(name, incumbent.session_id, candidates[winner].session_id),
            (
                ElectDecision::Elect {
                    winner,
                    preempt_grace_ms,
                },
                Some(_),
            ) => self.schedule_preempt(
                name,
                now_ms + preempt_grace_ms,
                candidates[winner].session_id,
            ),
        }
        true
    }

    /// Grants the queued candidate `session_id` (the lock is free).
    fn grant_candidate(&mut self, name: &str, session_id: SessionId) {
        let lock = &self.state.locks[name];
        let position = lock.position_of(session_id).expect("candidate is queued");
        let waiter = lock.waiters[position].clone();
        let max_holders = lock.max_holders;
        self.grant_waiter(name, &waiter, max_holders);
        // Its other candidates were just considered.
        self.dirty.remove(name);
    }

    /// Revokes the leader's hold (reason `Preempted`) and grants the winner.
    fn preempt(&mut self, name: &str, incumbent: SessionId, winner: SessionId) {
        self.end_hold(name, incumbent, ReleaseReason::Preempted);
        self.grant_candidate(name, winner);
    }

    fn schedule_preempt(&mut self, name: &str, at_ms: u64, winner: SessionId) {
        self.clear_preempt(name);
        let lock = self.state.locks.get_mut(name).expect("election lock");
        lock.preempt = Some((at_ms, winner));
        let kind = DeadlineKind::ElectionPreempt {
            name: name.to_string(),
        };
        assert!(self.state.deadlines.insert(Deadline { at_ms, kind }));
    }

    /// A scheduled preemption falls due (phase 2): if the winner still campaigns, the leader's
    /// hold is revoked. Deadlines only remove, so the new leader is elected in the handoff
    /// phase, by asking the policy again (among the candidates still there).
    fn fire_preempt(&mut self, name: &str) {
        let (_, winner) = self.state.locks[name]
            .preempt
            .expect("preempt deadline of a lock without one");
        self.clear_preempt(name);
        let lock = &self.state.locks[name];
        let incumbent = lock.holders.keys().next().copied();
        if let Some(incumbent) = incumbent
            && lock.position_of(winner).is_some()
        {
            self.end_hold(name, incumbent, ReleaseReason::Preempted);
        }
        self.dirty.insert(name.to_string());
    }

    fn set_reevaluate(&mut self, name: &str, at_ms: u64) {
        self.clear_reevaluate(name);
        let lock = self.state.locks.get_mut(name).expect("election lock");
        lock.reevaluate_at_ms = Some(at_ms);
        let kind = DeadlineKind::ElectionReevaluate {
            name: name.to_string(),
        };
        assert!(self.state.deadlines.insert(Deadline { at_ms, kind }));
    }

    fn clear_preempt(&mut self, name: &str) {
        if let Some((at_ms, _)) = self
            .state
            .locks
            .get_mut(name)
            .and_then(|l| l.preempt.take())
        {
            let kind = DeadlineKind::ElectionPreempt {
                name: name.to_string(),
            };
            assert!(self.state.deadlines.remove(&Deadline { at_ms, kind }));
        }
    }

    fn clear_reevaluate(&mut self, name: &str) {
        let taken = self
            .state
            .locks
            .get_mut(name)
            .and_then(|lock| lock.reevaluate_at_ms.take());
        if let Some(at_ms) = taken {
            let kind = DeadlineKind::ElectionReevaluate {
                name: name.to_string(),
            };
            assert!(self.state.deadlines.remove(&Deadline { at_ms, kind }));
        }
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
        if self
            .state
            .locks
            .get(name)
            .is_some_and(|lock| lock.is_empty())
        {
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

    /// Ends hold `token` of `name` whoever holds it (an administrator's revoke).
    fn revoke(&mut self, name: &str, token: FencingToken) -> Outcome {
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
        let chosen: Vec<Waiter> = choice
            .iter()
            .map(|&index| lock.waiters[index].clone())
            .collect();
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

/// What a policy sees of an acquire request (admission, lease), built from `state`. Counters
/// are computed only for a deployed module (`counting` = its binding's prefix).
fn admit_input<'s>(
    state: &'s State,
    request: &'s AcquireRequest,
    counting: Option<&str>,
    log_index: u64,
) -> AdmitInput<'s> {
    let lock = state.locks.get(&request.name);
    let session = &state.sessions[&request.session_id];
    AdmitInput {
        request,
        principal: &session.principal,
        labels: &session.labels,
        holders: lock.map(|lock| lock.holder_views()).unwrap_or_default(),
        waiters: lock.map(|lock| lock.waiter_views()).unwrap_or_default(),
        state,
        counters: counting.map_or_else(Counters::default, |prefix| {
            counters(state, prefix, request.session_id)
        }),
        now_ms: state.now_ms,
        log_index,
    }
}

/// Holds and waits under `prefix` of `session_id`'s principal and of its tenant.
fn counters(state: &State, prefix: &str, session_id: SessionId) -> Counters {
    let session = &state.sessions[&session_id];
    let tenant = session.labels.get("tenant").cloned().unwrap_or_default();
    let under = |names: &mut dyn Iterator<Item = &String>| {
        names.filter(|name| name.starts_with(prefix)).count()
    };
    let (mut principal_holds, mut principal_waits) = (0usize, 0usize);
    let (mut tenant_holds, mut tenant_waits) = (0usize, 0usize);
    for other in state.sessions.values() {
        let same_principal = other.principal == session.principal;
        let same_tenant = !tenant.is_empty() && other.labels.get("tenant") == Some(&tenant);
        if !same_principal && !same_tenant {
            continue;
        }
        let holds = under(&mut other.holds.keys());
        let waits = under(&mut other.waiting.iter());
        if same_principal {
            principal_holds += holds;
            principal_waits += waits;
        }
        if same_tenant {
            tenant_holds += holds;
            tenant_waits += waits;
        }
    }
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Counters {
        principal_holds: count(principal_holds),
        principal_waits: count(principal_waits),
        tenant,
        tenant_holds: count(tenant_holds),
        tenant_waits: count(tenant_waits),
    }
}

/// The deployed module a route runs (None for the built-in policy).
fn bound_module<'s>(state: &'s State, route: &'s Route) -> Option<BoundModule<'s>> {
    let bound = state.bindings.get(&route.prefix)?.get(route.mode)?;
    if bound.policy == BUILTIN_POLICY {
        return None;
    }
    let deployed = &state.policies[&bound.policy][&bound.version];
    Some(BoundModule {
        policy: &bound.policy,
        version: bound.version,
        sha256: &deployed.sha256,
        wasm: &deployed.wasm,
        config: &bound.config,
        prefix: &route.prefix,
    })
}

fn invalid(field: &str, reason: String) -> Outcome {
    Outcome::Rejected(Rejection::InvalidArgument {
        field: field.to_string(),
        reason,
    })
}
