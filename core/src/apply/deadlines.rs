//! Phases 1 and 2 of an entry: keepalives carried by a `Tick`, then every deadline that falls
//! due, and the lock-delay that keeps a lock un-grantable after its holder's session expired.
//!
//! Owns the deadline index (`State::deadlines`) as seen from the clock's side. Invariants kept:
//! every deadline in the index mirrors exactly one live timer (a session's expiry, a hold's
//! lease, a waiter's timeout, a lock's delay, an election's preemption or re-evaluation), and
//! is removed when that timer goes; deadlines fire in index order (time, then kind, then key)
//! and only *remove* — holds, waiters, delays — marking the locks they touch dirty, so grants
//! happen later in the entry; after phase 2 no deadline at or before `now` remains. A
//! renewal only ever moves a session's expiry later.

use std::collections::BTreeMap;

use holdfast_policy_sdk::Hook;

use super::{Applier, Route, SessionEnd};
use crate::limits;
use crate::model::{BindMode, LeaveReason, Outcome, Rejection, ReleaseReason, SessionId};
use crate::policy::{ExpireInput, HeldView, PolicyHost, PolicyRuntime};
use crate::state::{Deadline, DeadlineKind, State};

impl<H: PolicyHost + ?Sized> Applier<'_, H> {
    pub(super) fn renew(&mut self, renewed: &[SessionId]) -> Outcome {
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
            assert!(self.state.deadlines.remove_key(&Deadline {
                at_ms: old,
                kind: kind.clone()
            }));
            self.state
                .deadlines
                .insert_key(Deadline { at_ms: new, kind });
        }
        Outcome::None
    }

    pub(super) fn fire_due_deadlines(&mut self) {
        let now_ms = self.now_ms();
        while let Some(deadline) = self.state.deadlines.keys().next() {
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
                    .keys()
                    .next()
                    .is_none_or(|first| first.at_ms >= deadline.at_ms)
            );
        }
        assert!(
            self.state
                .next_deadline_ms()
                .is_none_or(|at_ms| at_ms > now_ms)
        );
    }

    pub(super) fn end_delay(&mut self, name: &str) {
        let lock = self
            .state
            .locks
            .get_mut(name)
            .expect("lock-delay deadline of a missing lock");
        let at_ms = lock
            .delayed_until_ms
            .take()
            .expect("lock-delay deadline of an undelayed lock");
        assert!(self.state.deadlines.remove_key(&Deadline {
            at_ms,
            kind: DeadlineKind::DelayEnd {
                name: name.to_string()
            }
        }));
        self.dirty.insert(name.to_string());
        self.remove_lock_if_empty(name);
    }

    /// Keeps the lock un-grantable until `until_ms` (or later, if it already was).
    pub(super) fn delay_lock(&mut self, name: &str, until_ms: u64) {
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
            assert!(self.state.deadlines.remove_key(&Deadline {
                at_ms: old,
                kind: kind.clone()
            }));
        }
        lock.delayed_until_ms = Some(until_ms);
        assert!(self.state.deadlines.insert_key(Deadline {
            at_ms: until_ms,
            kind
        }));
    }

    /// Lock-delays that the policies bound to the expiring session's locks chose instead of the
    /// grant-time ones: each enforcing binding is asked once, about the holds under it.
    pub(super) fn expiry_delays(
        &mut self,
        session_id: SessionId,
        held: &[String],
    ) -> BTreeMap<String, u64> {
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
                        let hold = &state.locks[name.as_str()].holders[&session_id];
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
}
