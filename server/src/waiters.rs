//! Blocked Acquire RPCs waiting for their own node's apply to grant the lock.
//!
//! A handler registers `(session, lock)` *before* it proposes its Acquire, so a grant can never
//! slip between the proposal and the registration. The state machine hands every applied event
//! to [`Waiters::on_events`], which records grants and queue exits for registered keys; the
//! handler then takes the first result applied *after* its own Acquire entry. (A node that is
//! catching up may apply an older grant to the same session after the registration; that one
//! belongs to an earlier request and must not answer this one.) One commit per handoff, no
//! polling.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use holdfast_core::{Event, LeaveReason, SessionId, State};
use tokio::sync::Notify;

use crate::planted::{Bug, planted};

/// How a queued Acquire ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitResult {
    Granted {
        token: u64,
        lease_ms: u64,
        log_index: u64,
    },
    Left {
        reason: LeaveReason,
        log_index: u64,
    },
    /// A snapshot replaced the state and the session neither holds nor waits for the lock.
    Lost {
        log_index: u64,
    },
}

impl WaitResult {
    fn log_index(&self) -> u64 {
        match self {
            WaitResult::Granted { log_index, .. }
            | WaitResult::Left { log_index, .. }
            | WaitResult::Lost { log_index } => *log_index,
        }
    }
}

type Key = (SessionId, String);

#[derive(Default)]
struct Slot {
    results: Mutex<Vec<WaitResult>>,
    notify: Notify,
}

/// One registered wait; dropping it unregisters.
pub struct Wait {
    slot: Arc<Slot>,
}

impl Wait {
    /// The first result applied after `queued_at` (the log index of the Acquire that queued).
    pub async fn after(&self, queued_at: u64) -> WaitResult {
        loop {
            let notified = self.slot.notify.notified();
            if let Some(result) = self
                .slot
                .results
                .lock()
                .expect("wait slot lock")
                .iter()
                .find(|r| r.log_index() > queued_at || planted(Bug::StaleGrant))
            {
                return result.clone();
            }
            notified.await;
        }
    }
}

#[derive(Default)]
pub struct Waiters {
    waiting: Mutex<BTreeMap<Key, Vec<Weak<Slot>>>>,
}

impl Waiters {
    pub fn register(&self, session_id: SessionId, name: &str) -> Wait {
        let slot = Arc::new(Slot::default());
        let mut waiting = self.waiting.lock().expect("waiters lock");
        let slots = waiting.entry((session_id, name.to_owned())).or_default();
        slots.retain(|s| s.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        Wait { slot }
    }

    fn deliver(waiting: &mut BTreeMap<Key, Vec<Weak<Slot>>>, key: &Key, result: &WaitResult) {
        let Some(slots) = waiting.get_mut(key) else {
            return;
        };
        slots.retain(|s| s.strong_count() > 0);
        for slot in slots.iter().filter_map(Weak::upgrade) {
            slot.results
                .lock()
                .expect("wait slot lock")
                .push(result.clone());
            slot.notify.notify_waiters();
        }
        if slots.is_empty() {
            waiting.remove(key);
        }
    }

    pub fn on_events(&self, log_index: u64, events: &[Event]) {
        let mut waiting = self.waiting.lock().expect("waiters lock");
        if waiting.is_empty() {
            return;
        }
        for event in events {
            let (key, result) = match event {
                Event::Acquired {
                    name,
                    session_id,
                    token,
                    lease_ms,
                    ..
                } => (
                    (*session_id, name.clone()),
                    WaitResult::Granted {
                        token: *token,
                        lease_ms: *lease_ms,
                        log_index,
                    },
                ),
                Event::LeftQueue {
                    name,
                    session_id,
                    reason,
                    ..
                } => (
                    (*session_id, name.clone()),
                    WaitResult::Left {
                        reason: *reason,
                        log_index,
                    },
                ),
                _ => continue,
            };
            Self::deliver(&mut waiting, &key, &result);
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
            let held = session
                .as_ref()
                .and_then(|s| s.holds.iter().find(|(n, _)| n == name).map(|(_, t)| *t));
            let still_waiting = session
                .as_ref()
                .is_some_and(|s| s.waiting.iter().any(|n| n == name));
            let result = match held {
                Some(token) => {
                    let lease_ms = state
                        .lock(name)
                        .and_then(|l| l.holders.into_iter().find(|h| h.token == token))
                        .and_then(|h| {
                            h.lease_expires_at_ms
                                .map(|at| at.saturating_sub(h.since_ms))
                        })
                        .unwrap_or(0);
                    WaitResult::Granted {
                        token,
                        lease_ms,
                        log_index,
                    }
                }
                None if still_waiting => continue,
                None => WaitResult::Lost { log_index },
            };
            Self::deliver(&mut waiting, &key, &result);
        }
    }
}

#[cfg(test)]
mod tests {
    use holdfast_core::{Event, Mode};

    use super::{WaitResult, Waiters};

    fn granted(name: &str, session_id: u64, token: u64) -> Event {
        Event::Acquired {
            name: name.into(),
            session_id,
            token,
            mode: Mode::Exclusive,
            lease_ms: 0,
            granted_by: None,
            value: Vec::new(),
            principal: "p".into(),
        }
    }

    #[tokio::test]
    async fn an_older_grant_applied_late_does_not_answer_a_newer_wait() {
        let waiters = Waiters::default();
        let wait = waiters.register(7, "a");
        // A lagging node applies the grant of an earlier request (index 10) after we registered.
        waiters.on_events(10, &[granted("a", 7, 10)]);
        // Our own Acquire queued at index 12, and the lock is granted to us at 15.
        waiters.on_events(15, &[granted("a", 7, 15)]);
        assert_eq!(
            wait.after(12).await,
            WaitResult::Granted {
                token: 15,
                lease_ms: 0,
                log_index: 15
            }
        );
    }

    #[tokio::test]
    async fn dropping_a_wait_unregisters_it() {
        let waiters = Waiters::default();
        drop(waiters.register(7, "a"));
        waiters.on_events(3, &[granted("a", 7, 3)]);
        assert!(waiters.waiting.lock().unwrap().is_empty());
    }
}
