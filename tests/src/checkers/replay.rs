//! Replays the replicated record (the merged watch streams) into each lock's holders over
//! revisions, for the checkers that compare what clients saw with what was applied.

use std::collections::{BTreeMap, BTreeSet};

use holdfast_proto::v1 as pb;

use crate::history::{History, event_kind, merged_record};

/// One lock's state after one revision that changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockState {
    /// token → (session, exclusive)
    pub holders: BTreeMap<u64, (u64, bool)>,
    /// The last hold to end did so because its session or lease expired (a lock-delay may then
    /// refuse grants although nobody holds the lock).
    pub delayed: bool,
}

#[derive(Debug, Default)]
pub struct Replay {
    /// lock → (revision, state after it), in revision order.
    pub timelines: BTreeMap<String, Vec<(u64, LockState)>>,
    /// Grants that overlapped a conflicting hold, and releases of holds the record never granted.
    pub violations: Vec<String>,
    /// session → revision at which it expired or was closed.
    pub session_ends: BTreeMap<u64, u64>,
    /// (lock, token) → (revision of the grant, session)
    pub grants: BTreeMap<(String, u64), (u64, u64)>,
    /// (lock, token) → (revision of the end, reason)
    pub ends: BTreeMap<(String, u64), (u64, i32)>,
}

impl Replay {
    pub fn of(history: &History) -> Replay {
        let mut replay = Replay::default();
        let gaps = crate::history::uncovered(history);
        let mut current: BTreeMap<String, LockState> = BTreeMap::new();
        for (revision, events) in merged_record(history) {
            for event in &events {
                let lock = event.lock.clone();
                match event_kind(event) {
                    pb::EventKind::Acquired => {
                        let state = current.entry(lock.clone()).or_insert(LockState {
                            holders: BTreeMap::new(),
                            delayed: false,
                        });
                        let exclusive = event.mode != pb::LockMode::Shared as i32;
                        let conflicting: Vec<u64> = state
                            .holders
                            .iter()
                            .filter(|(_, (_, held_exclusive))| exclusive || *held_exclusive)
                            .map(|(token, _)| *token)
                            .collect();
                        if !conflicting.is_empty() {
                            replay.violations.push(format!(
                                "lock {lock}: token {} (session {}) granted at revision {revision} \
                                 while token(s) {conflicting:?} held it",
                                event.token, event.session_id
                            ));
                        }
                        state
                            .holders
                            .insert(event.token, (event.session_id, exclusive));
                        replay
                            .grants
                            .insert((lock.clone(), event.token), (revision, event.session_id));
                        replay
                            .timelines
                            .entry(lock)
                            .or_default()
                            .push((revision, state.clone()));
                    }
                    pb::EventKind::Released => {
                        let state = current.entry(lock.clone()).or_insert(LockState {
                            holders: BTreeMap::new(),
                            delayed: false,
                        });
                        if state.holders.remove(&event.token).is_none()
                            && !crate::history::is_uncovered(&gaps, event.token)
                        {
                            replay.violations.push(format!(
                                "lock {lock}: token {} released at revision {revision} but the \
                                 record never granted it",
                                event.token
                            ));
                        }
                        let expired = [
                            pb::EventReason::SessionExpired as i32,
                            pb::EventReason::LeaseExpired as i32,
                        ];
                        state.delayed = expired.contains(&event.reason);
                        replay
                            .ends
                            .insert((lock.clone(), event.token), (revision, event.reason));
                        replay
                            .timelines
                            .entry(lock)
                            .or_default()
                            .push((revision, state.clone()));
                    }
                    pb::EventKind::SessionExpired | pb::EventKind::SessionClosed => {
                        replay.session_ends.insert(event.session_id, revision);
                    }
                    _ => {}
                }
            }
        }
        replay
    }

    /// The holders' tokens of `lock` after applying `revision`, and whether it was delayed.
    pub fn at(&self, lock: &str, revision: u64) -> (BTreeSet<u64>, bool) {
        let Some(timeline) = self.timelines.get(lock) else {
            return (BTreeSet::new(), false);
        };
        let after = timeline.partition_point(|(r, _)| *r <= revision);
        if after == 0 {
            return (BTreeSet::new(), false);
        }
        let state = &timeline[after - 1].1;
        (state.holders.keys().copied().collect(), state.delayed)
    }
}
