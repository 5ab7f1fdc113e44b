//! Checker 5, linearizability of acquire / release / describe per lock.
//!
//! Holdfast tells the client where each of these took effect: an acquire's token is the log
//! index that granted it, a release returns the index that ended the hold, a describe returns
//! the revision it read. The only order that can explain them is the log's, so the history is
//! linearizable exactly when (a) that order respects real time — an operation that began after
//! another had completed sits at a later index (a read at the same or a later one) — and (b)
//! each result is what the replicated record says at that index: a describe shows the holders
//! at its revision; a refused exclusive acquire, whose index the client does not learn, had a
//! moment within its window (after everything that completed before it began, up to anything
//! that began after it completed) when the lock was held or in its lock-delay.
//! Grants and releases themselves are matched to the record by `lost_acks`; linearizability is
//! local, so each lock is checked on its own, in O(n log n).

use std::collections::BTreeMap;

use crate::history::{History, Micros, Mode, Op, OpKind, Outcome};

use super::replay::Replay;

/// An operation whose log position the client learned.
struct Placed<'a> {
    op: &'a Op,
    position: u64,
    write: bool,
}

fn placed(op: &Op) -> Option<Placed<'_>> {
    let (position, write) = match (&op.kind, &op.outcome) {
        (OpKind::Acquire { .. }, Outcome::Acquired { token }) => (*token, true),
        (OpKind::Release { .. }, Outcome::Released { at }) => (*at, true),
        (OpKind::Describe, Outcome::Described { revision, .. }) => (*revision, false),
        _ => return None,
    };
    Some(Placed {
        op,
        position,
        write,
    })
}

pub fn check(history: &History, replay: &Replay) -> Vec<String> {
    let mut violations = Vec::new();
    let mut by_lock: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        if matches!(
            op.kind,
            OpKind::Acquire { .. } | OpKind::Release { .. } | OpKind::Describe
        ) {
            by_lock.entry(&op.lock).or_default().push(op);
        }
    }
    for (lock, ops) in by_lock {
        let placed: Vec<Placed> = ops.iter().filter_map(|op| placed(op)).collect();
        // (completion time, running max position) in completion order.
        let completions: Vec<(Micros, u64)> = {
            let mut by_completion: Vec<(Micros, u64)> =
                placed.iter().map(|p| (p.op.complete, p.position)).collect();
            by_completion.sort_unstable();
            let mut max = 0;
            by_completion
                .into_iter()
                .map(|(at, position)| {
                    max = max.max(position);
                    (at, max)
                })
                .collect()
        };
        // (invocation time, running min position) in reverse invocation order.
        let invocations: Vec<(Micros, u64)> = {
            let mut by_invocation: Vec<(Micros, u64)> =
                placed.iter().map(|p| (p.op.invoke, p.position)).collect();
            by_invocation.sort_unstable();
            let mut min = u64::MAX;
            let mut suffix: Vec<(Micros, u64)> = by_invocation
                .into_iter()
                .rev()
                .map(|(at, position)| {
                    min = min.min(position);
                    (at, min)
                })
                .collect();
            suffix.reverse();
            suffix
        };
        let lower_bound = |invoke: Micros, completions: &[(Micros, u64)]| {
            let before = completions.partition_point(|(at, _)| *at < invoke);
            (before > 0).then(|| completions[before - 1].1)
        };
        let upper_bound = |complete: Micros| {
            let after = invocations.partition_point(|(at, _)| *at <= complete);
            invocations.get(after).map(|(_, min)| *min)
        };

        for p in &placed {
            if let Some(lo) = lower_bound(p.op.invoke, &completions)
                && (p.position < lo || (p.write && p.position == lo))
            {
                violations.push(format!(
                    "lock {lock}: client {}'s {:?} took effect at index {} although an operation at index {lo} had completed before it began",
                    p.op.client, p.op.kind, p.position
                ));
            }
            if let Outcome::Described { revision, holders } = &p.op.outcome {
                let (record, _) = replay.at(lock, *revision);
                let record: Vec<u64> = record.into_iter().collect();
                if *holders != record {
                    violations.push(format!(
                        "lock {lock}: client {} read holders {holders:?} at revision {revision}, the record has {record:?}",
                        p.op.client
                    ));
                }
            }
        }

        for op in &ops {
            let refused_exclusive = matches!(
                (&op.kind, &op.outcome),
                (
                    OpKind::Acquire {
                        mode: Mode::Exclusive,
                        ..
                    },
                    Outcome::NotAcquired
                )
            );
            if !refused_exclusive {
                continue;
            }
            let lo = lower_bound(op.invoke, &completions).unwrap_or(0);
            let hi = upper_bound(op.complete).unwrap_or(u64::MAX);
            if !busy_within(replay, lock, lo, hi) {
                violations.push(format!(
                    "lock {lock}: client {}'s exclusive acquire was refused, but the record shows the lock free between indexes {lo} and {hi}",
                    op.client
                ));
            }
        }
    }
    violations
}

/// Whether `lock` was held (or lock-delayed) after some revision in `[lo, hi]`.
fn busy_within(replay: &Replay, lock: &str, lo: u64, hi: u64) -> bool {
    let (holders, delayed) = replay.at(lock, lo);
    if !holders.is_empty() || delayed {
        return true;
    }
    let Some(timeline) = replay.timelines.get(lock) else {
        return false;
    };
    let from = timeline.partition_point(|(r, _)| *r <= lo);
    timeline[from..]
        .iter()
        .take_while(|(r, _)| *r <= hi)
        .any(|(_, state)| !state.holders.is_empty() || state.delayed)
}

#[cfg(test)]
mod tests {
    use holdfast_proto::v1::EventKind::{Acquired, Released};

    use super::*;
    use crate::history::{event, history_with_record, op};

    const TRY: OpKind = OpKind::Acquire {
        mode: Mode::Exclusive,
        wait_ms: 0,
    };

    /// Token 5 held from revision 5 to 8, free afterwards.
    fn record() -> History {
        let mut released = event(Released, "a", 1, 5);
        released.reason = holdfast_proto::v1::EventReason::Released as i32;
        history_with_record(vec![
            (5, vec![event(Acquired, "a", 1, 5)]),
            (8, vec![released]),
        ])
    }

    fn described(revision: u64, holders: Vec<u64>) -> Outcome {
        Outcome::Described { revision, holders }
    }

    #[test]
    fn a_linearizable_history_passes() {
        let mut history = record();
        history.ops = vec![
            op(0, "a", TRY, (0, 10), Outcome::Acquired { token: 5 }),
            op(1, "a", OpKind::Describe, (11, 12), described(6, vec![5])),
            op(1, "a", TRY, (13, 14), Outcome::NotAcquired),
            op(
                0,
                "a",
                OpKind::Release { token: 5 },
                (15, 20),
                Outcome::Released { at: 8 },
            ),
            op(1, "a", OpKind::Describe, (21, 22), described(9, vec![])),
        ];
        assert_eq!(check(&history, &Replay::of(&history)), Vec::<String>::new());
    }

    #[test]
    fn a_stale_read_is_caught() {
        let mut history = record();
        history.ops = vec![
            op(
                0,
                "a",
                OpKind::Release { token: 5 },
                (15, 20),
                Outcome::Released { at: 8 },
            ),
            // Began after the release completed, yet read from before it.
            op(1, "a", OpKind::Describe, (21, 22), described(6, vec![5])),
        ];
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("index 6"));
    }

    #[test]
    fn a_read_that_disagrees_with_the_record_is_caught() {
        let mut history = record();
        history.ops = vec![op(1, "a", OpKind::Describe, (0, 1), described(9, vec![5]))];
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 1, "{violations:?}");
    }

    #[test]
    fn a_refusal_while_the_lock_was_free_is_caught() {
        let mut history = record();
        history.ops = vec![
            op(
                0,
                "a",
                OpKind::Release { token: 5 },
                (15, 20),
                Outcome::Released { at: 8 },
            ),
            op(1, "a", TRY, (21, 22), Outcome::NotAcquired),
        ];
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("refused"));
    }
}
