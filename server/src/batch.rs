//! Keepalives that share one round: the leader carries every renewal that arrived since its last
//! `Tick` in the next one, and a follower forwards every keepalive that arrived since its last
//! forward in one `Renew` call. Each caller joins the open batch and waits for that batch's
//! outcome; the sender takes the batch (a new one opens at once) and publishes its outcome.
//! So a failed round fails exactly the callers that rode it, not those already waiting for the
//! next one.

use std::collections::BTreeSet;
use std::sync::Mutex;

use holdfast_core::SessionId;
use tokio::sync::{Notify, watch};

/// The outcome of one round, as its callers see it.
pub type Outcome<R> = watch::Receiver<Option<R>>;

pub struct Batcher<R> {
    open: Mutex<Open<R>>,
    /// Wakes the sender when a caller joins, so a round starts at once rather than at the
    /// sender's next interval.
    arrived: Notify,
    /// Most sessions in one batch (a Tick and a Renew call carry at most this many).
    capacity: usize,
}

struct Open<R> {
    sessions: BTreeSet<SessionId>,
    done: watch::Sender<Option<R>>,
}

impl<R> Open<R> {
    fn new() -> Self {
        Open {
            sessions: BTreeSet::new(),
            done: watch::channel(None).0,
        }
    }
}

/// A batch taken by its sender: the sessions to carry, and where their outcome goes.
pub struct Round<R> {
    pub sessions: Vec<SessionId>,
    done: watch::Sender<Option<R>>,
}

impl<R> Round<R> {
    /// Answers every caller of this round.
    pub fn finish(self, outcome: R) {
        self.done.send_replace(Some(outcome));
    }
}

impl<R: Clone> Batcher<R> {
    pub fn new(capacity: usize) -> Self {
        Batcher {
            open: Mutex::new(Open::new()),
            arrived: Notify::new(),
            capacity,
        }
    }

    /// Adds `sessions` to the open batch; `None` if the batch would exceed its capacity.
    pub fn join(&self, sessions: &[SessionId]) -> Option<Outcome<R>> {
        let mut open = self.open.lock().expect("batch lock");
        let new = sessions
            .iter()
            .filter(|id| !open.sessions.contains(id))
            .count();
        if open.sessions.len() + new > self.capacity {
            return None;
        }
        open.sessions.extend(sessions);
        let outcome = open.done.subscribe();
        drop(open);
        self.arrived.notify_one();
        Some(outcome)
    }

    pub fn is_empty(&self) -> bool {
        self.open.lock().expect("batch lock").sessions.is_empty()
    }

    /// Takes the open batch (possibly empty) and opens a new one.
    pub fn take(&self) -> Round<R> {
        let open = std::mem::replace(&mut *self.open.lock().expect("batch lock"), Open::new());
        Round {
            sessions: open.sessions.into_iter().collect(),
            done: open.done,
        }
    }

    /// Resolves when a caller has joined since the last call (or immediately if one joined
    /// while nobody was waiting).
    pub async fn arrived(&self) {
        self.arrived.notified().await;
    }
}

/// Waits for a round's outcome; `None` if the sender dropped the round without finishing it.
pub async fn wait<R: Clone>(mut outcome: Outcome<R>) -> Option<R> {
    match outcome.wait_for(Option::is_some).await {
        Ok(value) => value.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{Batcher, wait};

    #[tokio::test]
    async fn each_round_answers_exactly_its_own_callers() {
        let batcher: Batcher<Result<(), &str>> = Batcher::new(3);
        let first = batcher.join(&[1, 2]).expect("room");
        // The same session twice takes one place.
        let first_again = batcher.join(&[2]).expect("room");
        assert!(batcher.join(&[3, 4]).is_none(), "over capacity");
        let round = batcher.take();
        assert_eq!(round.sessions, vec![1, 2]);
        assert!(batcher.is_empty());

        // Joined while the first round is in flight: the next round.
        let second = batcher.join(&[3]).expect("room");
        let next = batcher.take();
        next.finish(Err("lost"));
        round.finish(Ok(()));
        assert_eq!(wait(first).await, Some(Ok(())));
        assert_eq!(wait(first_again).await, Some(Ok(())));
        assert_eq!(wait(second).await, Some(Err("lost")));

        // A round dropped without an outcome answers `None`, not a hang.
        let third = batcher.join(&[5]).expect("room");
        drop(batcher.take());
        assert_eq!(wait(third).await, None);
    }
}
