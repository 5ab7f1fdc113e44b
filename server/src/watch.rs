//! The node's watch hub: a bounded history of applied events plus a live broadcast.
//!
//! Apply publishes each revision's events here (never blocking: the broadcast is bounded and a
//! watcher that falls behind is cut off, not waited for). A watch from revision R is served from
//! the history, then from the broadcast; both are taken under one lock, so nothing is missed or
//! repeated in between. Revisions at or below `floor` are unknown to this node (before its
//! snapshot, or dropped from the bounded history) and answer "compacted".

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use holdfast_core::Event;
use tokio::sync::broadcast;

/// Most revisions (entries that produced events) kept in memory for watchers that resume.
pub const WATCH_HISTORY_REVISIONS_MAX: usize = 16_384;
/// Revisions buffered for live watchers; a watcher further behind than this is cut off.
pub const WATCH_LIVE_BUFFER: usize = 4_096;
/// Most watch and observe streams one node serves at once; another is RESOURCE_EXHAUSTED.
pub const WATCHERS_PER_NODE_MAX: usize = 10_000;

/// The events one applied entry produced.
#[derive(Debug)]
pub struct Revision {
    pub revision: u64,
    pub events: Vec<Event>,
}

#[derive(Clone, Debug)]
pub enum Signal {
    Revision(Arc<Revision>),
    /// A snapshot replaced the state: everything up to `floor` is unknown here.
    Reset {
        floor: u64,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Compacted {
    /// The oldest revision this node can still deliver.
    pub oldest: u64,
}

/// Why a watch could not start.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The revision asked for is no longer (or not yet) in this node's history.
    Compacted(Compacted),
    /// [`WATCHERS_PER_NODE_MAX`] streams are open on this node.
    TooManyWatchers,
}

struct Inner {
    history: VecDeque<Arc<Revision>>,
    floor: u64,
}

pub struct WatchHub {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Signal>,
}

impl WatchHub {
    /// A hub whose history starts after `applied_index` (the state loaded at start).
    pub fn new(applied_index: u64) -> WatchHub {
        let inner = Inner {
            history: VecDeque::new(),
            floor: applied_index,
        };
        WatchHub {
            inner: Mutex::new(inner),
            live: broadcast::channel(WATCH_LIVE_BUFFER).0,
        }
    }

    pub fn publish(&self, revision: u64, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("watch hub lock");
        debug_assert!(
            inner
                .history
                .back()
                .is_none_or(|last| last.revision < revision)
        );
        let entry = Arc::new(Revision {
            revision,
            events: events.to_vec(),
        });
        inner.history.push_back(Arc::clone(&entry));
        if inner.history.len() > WATCH_HISTORY_REVISIONS_MAX
            && let Some(dropped) = inner.history.pop_front()
        {
            inner.floor = dropped.revision;
        }
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(Signal::Revision(entry));
    }

    pub fn reset(&self, floor: u64) {
        let mut inner = self.inner.lock().expect("watch hub lock");
        inner.history.clear();
        inner.floor = floor;
        let _ = self.live.send(Signal::Reset { floor });
    }

    /// The backlog from `from_revision` (0 = none) and a live subscription continuing it.
    pub fn subscribe(
        &self,
        from_revision: u64,
    ) -> Result<(Vec<Arc<Revision>>, broadcast::Receiver<Signal>), Refused> {
        let inner = self.inner.lock().expect("watch hub lock");
        // Each open stream holds one receiver; subscribing under the lock keeps the count exact.
        if self.live.receiver_count() >= WATCHERS_PER_NODE_MAX {
            return Err(Refused::TooManyWatchers);
        }
        if from_revision != 0 && from_revision <= inner.floor {
            return Err(Refused::Compacted(Compacted {
                oldest: inner.floor + 1,
            }));
        }
        let backlog = if from_revision == 0 {
            Vec::new()
        } else {
            inner
                .history
                .iter()
                .filter(|r| r.revision >= from_revision)
                .cloned()
                .collect()
        };
        Ok((backlog, self.live.subscribe()))
    }

    /// The last `limit` events of lock `name` still in the history, newest first, each with
    /// its revision. Bounded by the history's size (`WATCH_HISTORY_REVISIONS_MAX`).
    pub fn lock_history(&self, name: &str, limit: usize) -> Vec<(u64, Event)> {
        let inner = self.inner.lock().expect("watch hub lock");
        let mut found = Vec::new();
        for revision in inner.history.iter().rev() {
            for event in revision.events.iter().rev() {
                if found.len() >= limit {
                    return found;
                }
                if lock_of(event) == Some(name) {
                    found.push((revision.revision, event.clone()));
                }
            }
        }
        found
    }
}

/// The lock an event is about, if any.
fn lock_of(event: &Event) -> Option<&str> {
    match event {
        Event::Acquired { name, .. }
        | Event::Proclaimed { name, .. }
        | Event::Released { name, .. }
        | Event::Queued { name, .. }
        | Event::LeftQueue { name, .. }
        | Event::PolicyFault { name, .. }
        | Event::PolicyDisagreement { name, .. } => Some(name),
        Event::SessionOpened { .. }
        | Event::SessionClosed { .. }
        | Event::SessionExpired { .. }
        | Event::PolicyDeployed { .. }
        | Event::PolicyBound { .. }
        | Event::PolicyUnbound { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use holdfast_core::Event;

    use super::{Compacted, Refused, Signal, WATCHERS_PER_NODE_MAX, WatchHub};

    fn opened(session_id: u64) -> Vec<Event> {
        vec![Event::SessionOpened {
            session_id,
            principal: "p".into(),
        }]
    }

    #[test]
    fn resumes_from_history_then_live_without_gaps() {
        let hub = WatchHub::new(0);
        hub.publish(1, &opened(1));
        hub.publish(2, &[]);
        hub.publish(3, &opened(3));
        let (backlog, mut live) = hub.subscribe(2).unwrap();
        assert_eq!(
            backlog.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![3]
        );
        hub.publish(4, &opened(4));
        match live.try_recv().unwrap() {
            Signal::Revision(r) => assert_eq!(r.revision, 4),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn revisions_before_the_snapshot_or_history_are_compacted() {
        let hub = WatchHub::new(10);
        assert_eq!(
            hub.subscribe(10).unwrap_err(),
            Refused::Compacted(Compacted { oldest: 11 })
        );
        assert!(hub.subscribe(11).is_ok());
        for revision in 11..11 + super::WATCH_HISTORY_REVISIONS_MAX as u64 + 5 {
            hub.publish(revision, &opened(revision));
        }
        assert_eq!(
            hub.subscribe(12).unwrap_err(),
            Refused::Compacted(Compacted { oldest: 16 })
        );
        hub.reset(100_000);
        assert_eq!(
            hub.subscribe(99_999).unwrap_err(),
            Refused::Compacted(Compacted { oldest: 100_001 })
        );
    }

    #[test]
    fn a_locks_history_is_its_own_events_newest_first() {
        let hub = WatchHub::new(0);
        let queued = |name: &str, session_id| Event::Queued {
            name: name.into(),
            session_id,
            principal: "p".into(),
            position: 0,
        };
        hub.publish(1, &[queued("a", 1), queued("b", 2)]);
        hub.publish(2, &opened(3));
        hub.publish(3, &[queued("a", 4), queued("a", 5)]);
        let history = hub.lock_history("a", 2);
        assert_eq!(history, vec![(3, queued("a", 5)), (3, queued("a", 4))]);
        assert_eq!(hub.lock_history("a", 10).len(), 3);
        assert!(hub.lock_history("c", 10).is_empty());
    }

    #[test]
    fn watchers_per_node_are_bounded_and_a_closed_one_frees_its_slot() {
        let hub = WatchHub::new(0);
        let mut open: Vec<_> = (0..WATCHERS_PER_NODE_MAX)
            .map(|_| hub.subscribe(0).expect("under the limit"))
            .collect();
        assert_eq!(hub.subscribe(0).unwrap_err(), Refused::TooManyWatchers);
        drop(open.pop());
        assert!(hub.subscribe(0).is_ok());
    }
}
