//! Blocked Acquire RPCs waiting for their own node's apply to grant the lock.
//!
//! A handler registers `(session, lock)` *before* it proposes its Acquire, so a grant can never
//! slip between the proposal and the registration. The state machine hands every applied event
//! to [`Waiters::on_events`]; a grant or a queue exit for a registered key completes the wait.
//! One commit per handoff, no polling.

use std::collections::BTreeMap;
use std::sync::Mutex;

use holdfast_core::{Event, LeaveReason, SessionId, State};
use tokio::sync::oneshot;

/// How a queued Acquire ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitResult {
    Granted { token: u64, lease_ms: u64, log_index: u64 },
    Left { reason: LeaveReason, log_index: u64 },
    /// A snapshot replaced the state and the session neither holds nor waits for the lock.
    Lost { log_index: u64 },
}

type Key = (SessionId, String);

#[derive(Default)]
pub struct Waiters {
    waiting: Mutex<BTreeMap<Key, Vec<oneshot::Sender<WaitResult>>>>,
}

impl Waiters {
    pub fn register(&self, session_id: SessionId, name: &str) -> oneshot::Receiver<WaitResult> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().expect("waiters lock");
        let senders = waiting.entry((session_id, name.to_owned())).or_default();
        senders.retain(|s| !s.is_closed());
        senders.push(tx);
        rx
    }

    /// Drops registrations whose receivers are gone (handler finished or cancelled).
    pub fn forget(&self, session_id: SessionId, name: &str) {
        let mut waiting = self.waiting.lock().expect("waiters lock");
        let key = (session_id, name.to_owned());
        if let Some(senders) = waiting.get_mut(&key) {
            senders.retain(|s| !s.is_closed());
            if senders.is_empty() {
                waiting.remove(&key);
            }
        }
    }

    pub fn on_events(&self, log_index: u64, events: &[Event]) {
        let mut waiting = self.waiting.lock().expect("waiters lock");
        if waiting.is_empty() {
            return;
        }
        for event in events {
            let (key, result) = match event {
                Event::Acquired { name, session_id, token, lease_ms, .. } => (
                    (*session_id, name.clone()),
                    WaitResult::Granted { token: *token, lease_ms: *lease_ms, log_index },
                ),
                Event::LeftQueue { name, session_id, reason } => {
                    ((*session_id, name.clone()), WaitResult::Left { reason: *reason, log_index })
                }
                _ => continue,
            };
            if let Some(senders) = waiting.remove(&key) {
                for sender in senders {
                    let _ = sender.send(result.clone());
                }
            }
        }
    }

    /// After a snapshot install no events exist for the skipped entries: settle every wait from
    /// the new state instead.
    pub fn on_snapshot(&self, state: &State) {
        let mut waiting = self.waiting.lock().expect("waiters lock");
        let log_index = state.applied_index();
        let keys: Vec<Key> = waiting.keys().cloned().collect();
        for key in keys {
            let (session_id, name) = &key;
            let session = state.session(*session_id);
            let held = session.as_ref().and_then(|s| s.holds.iter().find(|(n, _)| n == name).map(|(_, t)| *t));
            let still_waiting = session.as_ref().is_some_and(|s| s.waiting.iter().any(|n| n == name));
            let result = match held {
                Some(token) => {
                    let lease_ms = state
                        .lock(name)
                        .and_then(|l| l.holders.into_iter().find(|h| h.token == token))
                        .and_then(|h| h.lease_expires_at_ms.map(|at| at.saturating_sub(h.since_ms)))
                        .unwrap_or(0);
                    WaitResult::Granted { token, lease_ms, log_index }
                }
                None if still_waiting => continue,
                None => WaitResult::Lost { log_index },
            };
            for sender in waiting.remove(&key).unwrap_or_default() {
                let _ = sender.send(result.clone());
            }
        }
    }
}
