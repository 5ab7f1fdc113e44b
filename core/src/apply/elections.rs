//! Elections on locks: the lock's enforcing policy has an `elect` hook, the waiters are
//! candidates, and the policy picks the leader or decides that a candidate preempts the
//! current one (at once or after a grace period), or that it re-evaluates later; and Proclaim,
//! which replaces the leader's value.
//!
//! Invariants kept: an election is exclusive (a shared holder or candidate makes the lock an
//! ordinary one); an invalid decision counts a fault and keeps the incumbent (or elects the
//! first candidate); a leader elected by this very entry is not preempted in it (its hold
//! cannot end where it was granted); preemption and re-evaluation timers exist only while
//! their lock has a leader, each with exactly one deadline; a preemption that falls due only
//! revokes, and the new leader is elected in the handoff phase among the candidates still there.

use holdfast_policy_sdk::Hook;

use super::{Applier, invalid};
use crate::limits;
use crate::model::{Event, FencingToken, Mode, Outcome, Rejection, ReleaseReason, SessionId};
use crate::policy::{CandidateView, ElectDecision, ElectInput, PolicyHost, PolicyRuntime};
use crate::state::{Deadline, DeadlineKind, State};

impl<H: PolicyHost + ?Sized> Applier<'_, H> {
    /// Runs the lock as an election if its enforcing policy has an `elect` hook: picks the
    /// leader among the waiters, or decides whether one preempts the holder. False when the
    /// lock is not an election (no binding, no hook, shared mode): the caller hands it off.
    pub(super) fn elect(&mut self, name: &str) -> bool {
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
    pub(super) fn grant_candidate(&mut self, name: &str, session_id: SessionId) {
        let lock = &self.state.locks[name];
        assert!(
            lock.position_of(session_id).is_some(),
            "candidate is queued"
        );
        let max_holders = lock.max_holders;
        self.grant_waiter(name, session_id, max_holders);
        // Its other candidates were just considered.
        self.dirty.remove(name);
    }

    /// Revokes the leader's hold (reason `Preempted`) and grants the winner.
    pub(super) fn preempt(&mut self, name: &str, incumbent: SessionId, winner: SessionId) {
        self.end_hold(name, incumbent, ReleaseReason::Preempted);
        self.grant_candidate(name, winner);
    }

    pub(super) fn schedule_preempt(&mut self, name: &str, at_ms: u64, winner: SessionId) {
        self.clear_preempt(name);
        let lock = self.state.locks.get_mut(name).expect("election lock");
        lock.set_preempt(Some((at_ms, winner)));
        let kind = DeadlineKind::ElectionPreempt {
            name: name.to_string(),
        };
        assert!(self.state.deadlines.insert_key(Deadline { at_ms, kind }));
    }

    /// A scheduled preemption falls due (phase 2): if the winner still campaigns, the leader's
    /// hold is revoked. Deadlines only remove, so the new leader is elected in the handoff
    /// phase, by asking the policy again (among the candidates still there).
    pub(super) fn fire_preempt(&mut self, name: &str) {
        let (_, winner) = self.state.locks[name]
            .preempt()
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

    pub(super) fn set_reevaluate(&mut self, name: &str, at_ms: u64) {
        self.clear_reevaluate(name);
        let lock = self.state.locks.get_mut(name).expect("election lock");
        lock.set_reevaluate_at_ms(Some(at_ms));
        let kind = DeadlineKind::ElectionReevaluate {
            name: name.to_string(),
        };
        assert!(self.state.deadlines.insert_key(Deadline { at_ms, kind }));
    }

    pub(super) fn clear_preempt(&mut self, name: &str) {
        if let Some((at_ms, _)) = self
            .state
            .locks
            .get_mut(name)
            .and_then(|l| l.set_preempt(None))
        {
            let kind = DeadlineKind::ElectionPreempt {
                name: name.to_string(),
            };
            assert!(self.state.deadlines.remove_key(&Deadline { at_ms, kind }));
        }
    }

    pub(super) fn clear_reevaluate(&mut self, name: &str) {
        let taken = self
            .state
            .locks
            .get_mut(name)
            .and_then(|lock| lock.set_reevaluate_at_ms(None));
        if let Some(at_ms) = taken {
            let kind = DeadlineKind::ElectionReevaluate {
                name: name.to_string(),
            };
            assert!(self.state.deadlines.remove_key(&Deadline { at_ms, kind }));
        }
    }

    /// Replaces the value of the hold `token` of `session_id` on `name` (election Proclaim).
    pub(super) fn proclaim(
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
        hold.value = value.into();
        self.events.push(Event::Proclaimed {
            name: name.to_string(),
            session_id,
            principal: self.principal_of(session_id),
            token,
            value: value.to_vec(),
        });
        Outcome::Proclaimed { token }
    }
}
