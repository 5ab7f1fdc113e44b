//! The state's structural invariants, checked from scratch: sessions and locks point at each
//! other exactly (a session's holds and waits mirror the locks' holders and waiters), every
//! pending timer has exactly one deadline in the index and the index nothing else, shared
//! capacities and fencing tokens are consistent, bindings name deployed versions, and the
//! derived per-principal session counts match. Runs after every apply in tests and debug
//! builds and on every decoded snapshot, so it returns the first broken invariant and never
//! panics, whatever the state holds.

use std::collections::BTreeSet;

use super::{
    BUILTIN_POLICY, Deadline, DeadlineKind, Lock, Recorded, Session, State, label_is_valid,
    name_is_valid, policy_name_is_valid,
};
use crate::limits;
use crate::model::{Mode, SessionId};

impl State {
    /// Checks every structural invariant; `Err` names the first one broken. Runs after every
    /// apply in tests and debug builds, and on every decoded snapshot, so it must never panic
    /// whatever the state holds.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.sessions_by_principal != self.count_sessions_by_principal() {
            return Err("sessions_by_principal does not count the open sessions".to_string());
        }
        if self.now_ms > limits::NOW_MS_MAX {
            return Err(format!("now_ms {} above NOW_MS_MAX", self.now_ms));
        }
        if self.sessions.len() > limits::SESSIONS_MAX {
            return Err(format!(
                "{} sessions, above SESSIONS_MAX",
                self.sessions.len()
            ));
        }
        for (id, session) in &self.sessions {
            self.check_session(*id, session)
                .map_err(|broken| format!("session {id}: {broken}"))?;
        }
        let mut hold_count = 0usize;
        let mut waiter_count = 0usize;
        for (name, lock) in &self.locks {
            self.check_lock(name, lock)
                .map_err(|broken| format!("lock {name:?}: {broken}"))?;
            hold_count += lock.holders.len();
            waiter_count += lock.waiters.len();
        }
        // Each session-side reference was found on the lock side above; equal totals make
        // the correspondence one-to-one.
        let session_holds: usize = self
            .sessions
            .values()
            .map(|session| session.holds.len())
            .sum();
        let session_waits: usize = self
            .sessions
            .values()
            .map(|session| session.waiting.len())
            .sum();
        if session_holds != hold_count || session_waits != waiter_count {
            return Err(format!(
                "sessions list {session_holds} holds / {session_waits} waits, locks list {hold_count} / {waiter_count}"
            ));
        }
        self.check_policies()?;
        if self.stakes != self.stakes_from_scratch() {
            return Err("hold and waiter totals do not count the locks".to_string());
        }
        if self.counts != self.all_counts_from_scratch() {
            return Err("policy counters do not count the holds and waits".to_string());
        }
        let expected = self.expected_deadlines();
        if !expected.iter().eq(self.deadlines.keys()) {
            let indexed: BTreeSet<&Deadline> = self.deadlines.keys().collect();
            return Err(format!(
                "deadline index out of sync: missing {:?}, extra {:?}",
                expected.iter().find(|deadline| !indexed.contains(deadline)),
                indexed.iter().find(|deadline| !expected.contains(deadline))
            ));
        }
        Ok(())
    }

    fn check_policies(&self) -> Result<(), String> {
        if self.policies.len() > limits::POLICIES_MAX
            || self.bindings.len() > limits::POLICY_BINDINGS_MAX
        {
            return Err("more policies or bindings than the limits".to_string());
        }
        for (name, versions) in &self.policies {
            if versions.is_empty()
                || versions.len() > limits::POLICY_VERSIONS_KEPT
                || !policy_name_is_valid(name)
                || versions.keys().any(|&version| version == 0)
                || versions.values().any(|deployed| {
                    deployed.wasm.len() > limits::POLICY_MODULE_BYTES_MAX
                        || deployed.deployed_at > self.applied_index
                })
            {
                return Err(format!("policy {name:?}: versions out of limits"));
            }
        }
        for (prefix, binding) in &self.bindings {
            if prefix.len() > limits::LOCK_NAME_BYTES_MAX {
                return Err(format!("binding prefix {prefix:?} too long"));
            }
            if binding.enforce.is_none() && binding.shadow.is_none() {
                return Err(format!("binding {prefix:?} is empty"));
            }
            for bound in [&binding.enforce, &binding.shadow].into_iter().flatten() {
                let exists = if bound.policy == BUILTIN_POLICY {
                    bound.version == 0
                } else {
                    self.policies
                        .get(&bound.policy)
                        .is_some_and(|versions| versions.contains_key(&bound.version))
                };
                if !exists
                    || bound.config.len() > limits::POLICY_CONFIG_BYTES_MAX
                    || bound.bound_at > self.applied_index
                    || bound.disagreements > bound.compared
                {
                    return Err(format!(
                        "binding {prefix:?}: {}@{} missing or inconsistent",
                        bound.policy, bound.version
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_session(&self, id: SessionId, session: &Session) -> Result<(), String> {
        if id == 0 || id > self.applied_index {
            return Err(format!("id outside 1..={}", self.applied_index));
        }
        if !(limits::SESSION_TTL_MS_MIN..=limits::SESSION_TTL_MS_MAX).contains(&session.ttl_ms) {
            return Err(format!("ttl_ms {} out of range", session.ttl_ms));
        }
        if session.expires_at_ms <= self.now_ms {
            return Err(format!(
                "alive past its expiry {} (now {})",
                session.expires_at_ms, self.now_ms
            ));
        }
        if session.expires_at_ms > self.now_ms.saturating_add(session.ttl_ms) {
            return Err(format!(
                "expires at {}, beyond now + ttl",
                session.expires_at_ms
            ));
        }
        if session.principal.len() > limits::PRINCIPAL_BYTES_MAX
            || session.labels.len() > limits::LABELS_PER_SESSION_MAX
            || session.labels.iter().any(|(k, v)| !label_is_valid(k, v))
        {
            return Err("principal or labels beyond limits".to_string());
        }
        if session.holds.len() + session.waiting.len() > limits::LOCKS_PER_SESSION_MAX {
            return Err("more locks than LOCKS_PER_SESSION_MAX".to_string());
        }
        if session.recent.len() > limits::RECENT_REQUESTS_PER_SESSION_MAX
            || session
                .recent
                .keys()
                .any(|&request_id| request_id == 0 || request_id < session.request_id_floor)
        {
            return Err("recent outcomes beyond limits or below the floor".to_string());
        }
        for (name, token) in &session.holds {
            let hold = self
                .locks
                .get(&**name)
                .and_then(|lock| lock.holders.get(&id));
            if hold.map(|hold| hold.token) != Some(*token) {
                return Err(format!(
                    "holds {name:?} with token {token}, the lock disagrees"
                ));
            }
        }
        // Each queue entry is checked against its session in `check_lock_waiters`; with equal
        // totals (checked by the caller) that makes the two sides agree one-to-one.
        if let Some(name) = session
            .waiting
            .iter()
            .find(|name| session.holds.contains_key(name.as_str()))
        {
            return Err(format!("both holds and waits for {name:?}"));
        }
        Ok(())
    }

    fn check_lock(&self, name: &str, lock: &Lock) -> Result<(), String> {
        if !name_is_valid(name) {
            return Err("invalid name".to_string());
        }
        if lock.is_empty() {
            return Err(
                "no holder, no waiter and no lock-delay: should have been removed".to_string(),
            );
        }
        if lock.max_holders == 0 || lock.max_holders > limits::HOLDERS_PER_LOCK_MAX {
            return Err(format!("max_holders {} out of range", lock.max_holders));
        }
        if lock.last_token > self.applied_index {
            return Err(format!(
                "last token {} beyond applied index",
                lock.last_token
            ));
        }
        if lock
            .delayed_until_ms
            .is_some_and(|until| until <= self.now_ms)
        {
            return Err("lock-delay ended but still recorded".to_string());
        }
        self.check_lock_holders(name, lock)?;
        self.check_lock_waiters(name, lock)?;
        if lock.delayed_until_ms.is_none() && lock.holders.is_empty() && !lock.waiters.is_empty() {
            return Err("free and not delayed, yet waiters are queued".to_string());
        }
        let max_at = self.now_ms + limits::ELECTION_DELAY_MS_MAX;
        if (lock.preempt().is_some() || lock.reevaluate_at_ms().is_some())
            && lock.holders.is_empty()
            || lock
                .preempt()
                .is_some_and(|(at, _)| at <= self.now_ms || at > max_at)
            || lock
                .reevaluate_at_ms()
                .is_some_and(|at| at <= self.now_ms || at > max_at)
        {
            return Err("election timers without a leader or out of range".to_string());
        }
        Ok(())
    }

    fn check_lock_holders(&self, name: &str, lock: &Lock) -> Result<(), String> {
        let mode = lock.holders_mode();
        if lock.holders.values().any(|hold| Some(hold.mode) != mode) {
            return Err("holders in different modes".to_string());
        }
        let count = lock.holders.len();
        if mode == Some(Mode::Exclusive) && count != 1 {
            return Err(format!("{count} exclusive holders"));
        }
        if count > lock.max_holders as usize {
            return Err(format!(
                "{count} shared holders, max_holders {}",
                lock.max_holders
            ));
        }
        for (session_id, hold) in &lock.holders {
            let session = self
                .sessions
                .get(session_id)
                .ok_or_else(|| format!("holder {session_id} has no session"))?;
            if session.holds.get(name) != Some(&hold.token) {
                return Err(format!(
                    "holder {session_id}: its session does not list the hold"
                ));
            }
            if hold.token == 0 || hold.token > lock.last_token || hold.since_ms > self.now_ms {
                return Err(format!(
                    "holder {session_id}: token {} / since beyond the lock's",
                    hold.token
                ));
            }
            let expected_expiry =
                (hold.lease_ms > 0).then(|| hold.since_ms.saturating_add(hold.lease_ms));
            if hold.lease_expires_at_ms != expected_expiry
                || hold.lease_expires_at_ms.is_some_and(|at| at <= self.now_ms)
                || hold.lease_ms > limits::LEASE_MS_MAX
                || hold.lock_delay_ms > limits::LOCK_DELAY_MS_MAX
            {
                return Err(format!(
                    "holder {session_id}: lease or lock-delay inconsistent"
                ));
            }
        }
        Ok(())
    }

    fn check_lock_waiters(&self, name: &str, lock: &Lock) -> Result<(), String> {
        if lock.waiters.len() > limits::WAITERS_PER_LOCK_MAX {
            return Err(format!(
                "{} waiters, above WAITERS_PER_LOCK_MAX",
                lock.waiters.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for waiter in &lock.waiters {
            let session_id = waiter.session_id;
            if !seen.insert(session_id) || lock.holders.contains_key(&session_id) {
                return Err(format!(
                    "session {session_id} queued twice or both holder and waiter"
                ));
            }
            let session = self
                .sessions
                .get(&session_id)
                .ok_or_else(|| format!("waiter {session_id} has no session"))?;
            if !session.waiting.contains(name) {
                return Err(format!(
                    "waiter {session_id}: its session does not list the wait"
                ));
            }
            if waiter.deadline_ms <= self.now_ms
                || waiter.queued_at_ms > self.now_ms
                || waiter.wait_timeout_ms == 0
                || waiter.wait_timeout_ms > limits::WAIT_TIMEOUT_MS_MAX
                || waiter.deadline_ms != waiter.queued_at_ms.saturating_add(waiter.wait_timeout_ms)
            {
                return Err(format!("waiter {session_id}: deadline inconsistent"));
            }
            if let Some(outcome) = session.recent.get(&waiter.request_id)
                && !matches!(outcome, Recorded::Queued { .. })
            {
                return Err(format!(
                    "waiter {session_id}: recorded outcome {outcome:?} is not Queued"
                ));
            }
        }
        Ok(())
    }

    /// The deadline index rebuilt from the data.
    fn expected_deadlines(&self) -> BTreeSet<Deadline> {
        let mut deadlines = BTreeSet::new();
        for (session_id, session) in &self.sessions {
            let kind = DeadlineKind::SessionExpiry {
                session_id: *session_id,
            };
            deadlines.insert(Deadline {
                at_ms: session.expires_at_ms,
                kind,
            });
        }
        for (name, lock) in &self.locks {
            for (session_id, hold) in &lock.holders {
                if let Some(at_ms) = hold.lease_expires_at_ms {
                    let kind = DeadlineKind::LeaseExpiry {
                        name: name.to_string(),
                        session_id: *session_id,
                    };
                    deadlines.insert(Deadline { at_ms, kind });
                }
            }
            for waiter in &lock.waiters {
                let kind = DeadlineKind::WaitTimeout {
                    name: name.to_string(),
                    session_id: waiter.session_id,
                };
                deadlines.insert(Deadline {
                    at_ms: waiter.deadline_ms,
                    kind,
                });
            }
            if let Some(at_ms) = lock.delayed_until_ms {
                deadlines.insert(Deadline {
                    at_ms,
                    kind: DeadlineKind::DelayEnd {
                        name: name.to_string(),
                    },
                });
            }
            if let Some((at_ms, _)) = lock.preempt() {
                deadlines.insert(Deadline {
                    at_ms,
                    kind: DeadlineKind::ElectionPreempt {
                        name: name.to_string(),
                    },
                });
            }
            if let Some(at_ms) = lock.reevaluate_at_ms() {
                deadlines.insert(Deadline {
                    at_ms,
                    kind: DeadlineKind::ElectionReevaluate {
                        name: name.to_string(),
                    },
                });
            }
        }
        deadlines
    }
}
