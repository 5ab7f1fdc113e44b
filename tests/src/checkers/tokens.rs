//! Checker 2, fencing tokens: per lock, the record's grants carry strictly increasing tokens,
//! each equal to the revision (log index) that granted it, across crashes and leader changes;
//! and an acquire that began after another was acknowledged got a larger token.

use std::collections::BTreeMap;

use crate::history::{History, Micros, OpKind, Outcome};

use super::replay::Replay;

pub fn check(history: &History, replay: &Replay) -> Vec<String> {
    let mut violations = Vec::new();
    for ((lock, token), (revision, _)) in &replay.grants {
        if token != revision {
            violations.push(format!(
                "lock {lock}: token {token} granted at revision {revision} (token must be the log index)"
            ));
        }
    }
    // `grants` is keyed by (lock, token): in token order per lock; the revisions must follow.
    let mut previous: BTreeMap<&str, u64> = BTreeMap::new();
    for ((lock, _), (revision, _)) in &replay.grants {
        if let Some(before) = previous.insert(lock, *revision)
            && *revision <= before
        {
            violations.push(format!(
                "lock {lock}: a larger token was granted at revision {revision}, not after {before}"
            ));
        }
    }

    // Real time: sweep acknowledgements in completion order per lock.
    let mut by_lock: BTreeMap<&str, Vec<(Micros, Micros, u64, usize)>> = BTreeMap::new();
    for op in &history.ops {
        if let (OpKind::Acquire { .. }, Outcome::Acquired { token }) = (&op.kind, &op.outcome) {
            by_lock
                .entry(&op.lock)
                .or_default()
                .push((op.invoke, op.complete, *token, op.client));
        }
    }
    for (lock, mut acquires) in by_lock {
        acquires.sort_by_key(|a| a.1);
        let mut max_by_completion: Vec<(Micros, u64)> = Vec::with_capacity(acquires.len());
        let mut max_token = 0;
        for (_, complete, token, _) in &acquires {
            max_token = max_token.max(*token);
            max_by_completion.push((*complete, max_token));
        }
        for (invoke, _, token, client) in &acquires {
            let before = max_by_completion.partition_point(|(at, _)| at < invoke);
            if before > 0 && *token <= max_by_completion[before - 1].1 {
                violations.push(format!(
                    "lock {lock}: client {client} got token {token} after token {} had been acknowledged",
                    max_by_completion[before - 1].1
                ));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use holdfast_proto::v1::EventKind::{Acquired, Released};

    use super::*;
    use crate::history::{Mode, event, history_with_record, op};

    fn acquire(client: usize, span: (Micros, Micros), token: u64) -> crate::history::Op {
        let kind = OpKind::Acquire {
            mode: Mode::Exclusive,
            wait_ms: 0,
        };
        op(client, "a", kind, span, Outcome::Acquired { token })
    }

    #[test]
    fn increasing_tokens_pass() {
        let mut history = history_with_record(vec![
            (5, vec![event(Acquired, "a", 1, 5)]),
            (
                9,
                vec![event(Released, "a", 1, 5), event(Acquired, "a", 2, 9)],
            ),
        ]);
        history.ops = vec![acquire(0, (0, 10), 5), acquire(1, (20, 30), 9)];
        assert_eq!(check(&history, &Replay::of(&history)), Vec::<String>::new());
    }

    #[test]
    fn a_token_that_is_not_its_revision_is_caught() {
        let history = history_with_record(vec![(5, vec![event(Acquired, "a", 1, 4)])]);
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 1, "{violations:?}");
    }

    #[test]
    fn a_token_going_back_in_real_time_is_caught() {
        let mut history = history_with_record(vec![]);
        history.ops = vec![acquire(0, (0, 10), 9), acquire(1, (20, 30), 5)];
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("got token 5 after token 9"));
    }
}
