//! Sessions: opening (with its limits per machine and per principal), closing, and ending —
//! closed by the client or expired by a deadline.
//!
//! Invariants kept: a live session has exactly one `SessionExpiry` deadline, and
//! `State::sessions_by_principal` counts the live sessions of every principal (no zero
//! entries). Ending a session is ordered so every replica emits the same events: its waiters
//! leave (by lock name), then its holds are released (by lock name; on expiry each imposes its
//! lock-delay first, so the lock outlives its last hold), then `SessionClosed` or
//! `SessionExpired`. A session id is the log index of the entry that opened it.

use std::collections::BTreeMap;

use super::{Applier, SessionEnd, invalid};
use crate::limits;
use crate::model::{Event, LeaveReason, Outcome, Rejection, ReleaseReason, SessionId};
use crate::policy::PolicyHost;
use crate::snapshot::SessionPart;
use crate::state::{Deadline, DeadlineKind, Session, label_is_valid};

impl<H: PolicyHost + ?Sized> Applier<'_, H> {
    pub(super) fn open_session(
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
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ttl_ms,
            expires_at_ms,
            holds: Default::default(),
            waiting: Default::default(),
            recent: Default::default(),
            request_id_floor: 0,
        };
        assert!(
            self.state
                .sessions
                .insert(session_id, Box::new(session))
                .is_none()
        );
        let kind = DeadlineKind::SessionExpiry { session_id };
        assert!(self.state.deadlines.insert_key(Deadline {
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

    pub(super) fn close_session(&mut self, session_id: SessionId) -> Outcome {
        if !self.state.sessions.contains_key(&session_id) {
            return Outcome::Rejected(Rejection::UnknownSession { session_id });
        }
        self.end_session(session_id, SessionEnd::Closed);
        Outcome::SessionClosed { session_id }
    }

    /// Drops the session's waiters, then releases its holds (by lock name), then removes it.
    /// On expiry each released hold imposes its lock-delay.
    pub(super) fn end_session(&mut self, session_id: SessionId, end: SessionEnd) {
        let session = self
            .state
            .sessions
            .get(&session_id)
            .expect("ending a missing session");
        let waiting: Vec<String> = session.waiting.iter().cloned().collect();
        let held: Vec<String> = session.holds.keys().map(|name| name.to_string()).collect();
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
            let lock_delay_ms = delays.get(name).copied().unwrap_or_else(|| {
                self.state.locks[name.as_str()].holders[&session_id].lock_delay_ms
            });
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
        for (&request_id, recorded) in session.recent.iter() {
            let part = SessionPart::Recent(session_id, request_id, recorded);
            self.state.session_part(part, false);
        }
        let kind = DeadlineKind::SessionExpiry { session_id };
        assert!(self.state.deadlines.remove_key(&Deadline {
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
}
