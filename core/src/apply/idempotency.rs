//! Idempotency records: the outcome of every Acquire and Release with a non-zero request id,
//! so a client's retry (after a lost reply or a leader change) gets the same answer instead of a
//! second effect.
//!
//! Invariants kept: at most `RECENT_REQUESTS_PER_SESSION_MAX` records per session, evicting the
//! smallest ids, and `request_id_floor` above every evicted id (older ids answer
//! `RequestTooOld`, never a fresh effect). A queued Acquire's record follows its waiter: it
//! becomes `Acquired`, `WaitTimedOut` or `WaitCancelled` when the waiter's fate is decided, and
//! while it waits a retry reports its current position.

use super::Applier;
use crate::limits;
use crate::model::{Outcome, Rejection, RequestId, SessionId};
use crate::policy::PolicyHost;
use crate::snapshot::SessionPart;
use crate::state::{Recorded, position_u32};

impl<H: PolicyHost + ?Sized> Applier<'_, H> {
    /// The recorded outcome of a retried request, if any. A still-queued acquire reports its
    /// current position.
    pub(super) fn recorded(
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
        let recorded = session.recent.get(&request_id)?;
        if let Recorded::Queued { .. } = recorded
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
        Some(recorded.clone().into())
    }

    /// Records a new request's outcome, evicting the smallest request ids beyond the cap.
    pub(super) fn record(
        &mut self,
        session_id: SessionId,
        request_id: RequestId,
        outcome: &Outcome,
    ) {
        if request_id == 0 {
            return;
        }
        let session = self
            .state
            .sessions
            .get_mut(&session_id)
            .expect("recording for a missing session");
        assert!(request_id >= session.request_id_floor);
        let recorded = Recorded::try_from(outcome.clone()).expect("an acquire or release outcome");
        assert!(
            session
                .recent
                .insert(request_id, recorded.clone())
                .is_none()
        );
        let mut evicted = Vec::new();
        while session.recent.len() > limits::RECENT_REQUESTS_PER_SESSION_MAX {
            let (request_id, recorded) = session.recent.pop_first().expect("non-empty");
            session.request_id_floor = session.request_id_floor.max(request_id + 1);
            evicted.push((request_id, recorded));
        }
        let part = SessionPart::Recent(session_id, request_id, &recorded);
        self.state.session_part(part, true);
        for (request_id, recorded) in &evicted {
            let part = SessionPart::Recent(session_id, *request_id, recorded);
            self.state.session_part(part, false);
        }
    }

    /// A queued acquire's fate is decided later: its record (if still kept) follows.
    pub(super) fn update_record(
        &mut self,
        session_id: SessionId,
        request_id: RequestId,
        outcome: Outcome,
    ) {
        let Some(session) = self.state.sessions.get_mut(&session_id) else {
            return;
        };
        let Some(recorded) = session.recent.get_mut(&request_id) else {
            return;
        };
        assert!(matches!(recorded, Recorded::Queued { .. }));
        let now = Recorded::try_from(outcome).expect("a queued acquire's outcome");
        let before = std::mem::replace(recorded, now.clone());
        let part = SessionPart::Recent(session_id, request_id, &before);
        self.state.session_part(part, false);
        let part = SessionPart::Recent(session_id, request_id, &now);
        self.state.session_part(part, true);
    }
}
