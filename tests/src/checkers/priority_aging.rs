//! The priority policy's aging bound holds under faults: a waiter of priority `p` is never
//! passed by a waiter queued more than `(max_priority - p) * aging_ms` after it (the bound the
//! policy documents). Judged on the sampled queues of the `torture/prio/` locks: when a sample
//! first shows B holding (granted at `g`) while A, queued at `qa < g`, still waits, and an
//! earlier sample showed B waiting (queued at `qb`), then `qb - qa` must be within A's bound.
//! Sampling misses some grants; what it misses can only hide a violation, not invent one
//! (while anyone waits, a new request queues, so B's last seen wait is at or before its real
//! one).

use std::collections::{BTreeMap, BTreeSet};

use crate::history::History;
use crate::torture::policies::{PRIORITY_AGING_MS, PRIORITY_MAX};

pub fn check(history: &History) -> Vec<String> {
    judge(history).0
}

/// How many (grant, waiter it passed) pairs the samples let the checker judge.
pub fn judged(history: &History) -> usize {
    judge(history).1
}

fn judge(history: &History) -> (Vec<String>, usize) {
    let mut pairs = 0;
    // (lock, session) → when its latest seen wait queued.
    let mut queued: BTreeMap<(&str, u64), u64> = BTreeMap::new();
    let mut judged: BTreeSet<(&str, u64)> = BTreeSet::new();
    let mut violations = Vec::new();
    for sample in &history.queue_samples {
        let lock = sample.lock.as_str();
        for &(holder, token, granted_at) in &sample.holders {
            if !judged.insert((lock, token)) {
                continue;
            }
            let Some(&holder_queued) = queued.get(&(lock, holder)) else {
                continue;
            };
            for &(waiter, priority, waiter_queued) in &sample.waiters {
                let priority = u64::try_from(priority).unwrap_or(0).min(PRIORITY_MAX);
                let bound = (PRIORITY_MAX - priority) * PRIORITY_AGING_MS;
                if waiter == holder || waiter_queued >= granted_at || holder_queued <= waiter_queued
                {
                    continue;
                }
                pairs += 1;
                if holder_queued > waiter_queued + bound {
                    violations.push(format!(
                        "lock {lock}: session {holder} (queued at {holder_queued} ms) was granted \
                         token {token} at {granted_at} ms over session {waiter} (priority \
                         {priority}, queued at {waiter_queued} ms): {} ms later, bound {bound} ms",
                        holder_queued - waiter_queued
                    ));
                }
            }
        }
        for &(waiter, _, waiter_queued) in &sample.waiters {
            queued.insert((lock, waiter), waiter_queued);
        }
    }
    (violations, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::QueueSample;

    fn sample(holders: &[(u64, u64, u64)], waiters: &[(u64, i32, u64)]) -> QueueSample {
        QueueSample {
            lock: "torture/prio/0".to_owned(),
            holders: holders.to_vec(),
            waiters: waiters.to_vec(),
        }
    }

    /// Session 1 holds; A (session 2, priority 5) queues at 1,000 ms, B (session 3) later.
    fn history(b_queued: u64) -> History {
        History {
            queue_samples: vec![
                sample(&[(1, 10, 0)], &[(2, 5, 1_000), (3, 10, b_queued)]),
                // B is granted at 9,000 ms while A still waits.
                sample(&[(3, 20, 9_000)], &[(2, 5, 1_000)]),
            ],
            ..History::default()
        }
    }

    /// A's bound: (max_priority - 5) * aging_ms.
    const BOUND: u64 = (PRIORITY_MAX - 5) * PRIORITY_AGING_MS;

    #[test]
    fn passing_within_the_aging_bound_is_allowed() {
        // B queued exactly the bound after A: allowed.
        assert_eq!(check(&history(1_000 + BOUND)), Vec::<String>::new());
        assert_eq!(judged(&history(1_000 + BOUND)), 1);
    }

    #[test]
    fn passing_beyond_the_aging_bound_is_caught() {
        let violations = check(&history(1_000 + BOUND + 1));
        assert_eq!(violations.len(), 1, "{violations:?}");
        let expected = format!("{} ms later, bound {BOUND} ms", BOUND + 1);
        assert!(violations[0].contains(&expected), "{violations:?}");
    }

    #[test]
    fn a_waiter_that_queued_after_the_grant_is_not_passed() {
        let mut history = history(5_000);
        history.queue_samples[1].waiters = vec![(2, 0, 9_500)];
        assert_eq!(check(&history), Vec::<String>::new());
    }
}
