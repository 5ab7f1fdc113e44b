//! Checker 2, fencing tokens: per lock, the record's grants carry strictly increasing tokens,
//! each equal to the revision (log index) that granted it, across crashes and leader changes;
//! and an acquire that began after another was acknowledged got a larger token.

use std::collections::BTreeMap;

use crate::history::{History, Micros, OpKind, Outcome};

use super::replay::Replay;

pub fn check(history: &History, replay: &Replay) -> Vec<String> {
    // Token = the grant's log index; with that, tokens in a lock's record increase with the
    // revisions that granted them (a token granted twice fails it at the second revision).
    let mut violations = Vec::new();
    for ((lock, token), (revision, _)) in &replay.grants {
        if token != revision {
            violations.push(format!(
                "lock {lock}: token {token} granted at revision {revision} (token must be the log index)"
            ));
        }
    }
    let mut by_lock: BTreeMap<&str, Vec<(Micros, Micros, u64, usize)>> = BTreeMap::new();
    for op in &history.ops {
        if let (OpKind::Acquire { .. }, Outcome::Acquired { token }) = (&op.kind, &op.outcome) {
            by_lock
                .entry(&op.lock)
                .or_default()
                .push((op.invoke, op.complete, *token, op.client));
        }
    }
    for (lock, acquires) in by_lock {
        for (client, token, before) in real_time_regressions(acquires) {
            violations.push(format!(
                "lock {lock}: client {client} got token {token} after token {before} had been acknowledged"
            ));
        }
    }
    violations.extend(reentries_repeat_a_current_hold(history, replay));
    violations
}

/// A re-entrant answer (`Reacquired`) repeats a hold the same session still has on that lock:
/// either the last token it was granted there, with no release of it acknowledged or refused
/// since (a release whose outcome is unknown may not have happened, so the hold may remain),
/// or — after an acquire of its own whose outcome was unknown, which may have been granted
/// unseen — a grant to that session the replicated record shows (found by the simulator: a
/// leader's failed fsync answered an acquire INTERNAL after the grant had committed).
fn reentries_repeat_a_current_hold(history: &History, replay: &Replay) -> Vec<String> {
    let mut ops: Vec<&crate::history::Op> = history.ops.iter().collect();
    ops.sort_by_key(|op| op.invoke);
    // (client, lock) → (session, token) of the hold it may still have.
    let mut holding: BTreeMap<(usize, &str), (u64, u64)> = BTreeMap::new();
    // (client, lock) → session whose acquire there had an unknown outcome.
    let mut unseen: BTreeMap<(usize, &str), u64> = BTreeMap::new();
    let granted_in_record = |lock: &str, token: u64, session: u64| {
        replay
            .grants
            .get(&(lock.to_owned(), token))
            .is_some_and(|(_, to)| *to == session)
    };
    let mut violations = Vec::new();
    for op in ops {
        let key = (op.client, op.lock.as_str());
        match (&op.kind, &op.outcome) {
            (OpKind::Acquire { .. }, Outcome::Acquired { token }) => {
                holding.insert(key, (op.session, *token));
                unseen.remove(&key);
            }
            (OpKind::Acquire { .. }, Outcome::Unknown(_)) => {
                unseen.insert(key, op.session);
            }
            (OpKind::Acquire { .. }, Outcome::Reacquired { token })
                if holding.get(&key) == Some(&(op.session, *token))
                    || (unseen.get(&key) == Some(&op.session)
                        && granted_in_record(&op.lock, *token, op.session)) =>
            {
                holding.insert(key, (op.session, *token));
                unseen.remove(&key);
            }
            (OpKind::Acquire { .. }, Outcome::Reacquired { token }) => {
                violations.push(format!(
                    "lock {}: client {} (session {}) was told it already held token {token}, \
                     but its hold there was {:?}",
                    op.lock,
                    op.client,
                    op.session,
                    holding.get(&key)
                ));
            }
            (OpKind::Release { token }, Outcome::Released { .. } | Outcome::Fail(_))
                if holding.get(&key).is_some_and(|(_, held)| held == token) =>
            {
                holding.remove(&key);
            }
            _ => {}
        }
    }
    violations
}

/// One lock's acknowledged acquires as (invoked, acknowledged, token, client), on any clock:
/// those that began after another had been acknowledged with a token at least as large, as
/// (client, token, that larger token). Sweeps acknowledgements in order, O(n log n).
pub(crate) fn real_time_regressions<T: Ord + Copy>(
    mut acquires: Vec<(T, T, u64, usize)>,
) -> Vec<(usize, u64, u64)> {
    acquires.sort_by_key(|a| a.1);
    let mut max_by_acknowledgement: Vec<(T, u64)> = Vec::with_capacity(acquires.len());
    let mut max_token = 0;
    for (_, acknowledged, token, _) in &acquires {
        max_token = max_token.max(*token);
        max_by_acknowledgement.push((*acknowledged, max_token));
    }
    let mut regressions = Vec::new();
    for (invoked, _, token, client) in &acquires {
        let before = max_by_acknowledgement.partition_point(|(at, _)| at < invoked);
        if before > 0 && *token <= max_by_acknowledgement[before - 1].1 {
            regressions.push((*client, *token, max_by_acknowledgement[before - 1].1));
        }
    }
    regressions
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
    fn a_reentrant_answer_must_repeat_the_sessions_current_hold() {
        let mut history = history_with_record(vec![]);
        let kind = OpKind::Acquire {
            mode: Mode::Exclusive,
            wait_ms: 0,
        };
        let reacquire = |span, token| op(0, "a", kind.clone(), span, Outcome::Reacquired { token });
        let release = |span, outcome| op(0, "a", OpKind::Release { token: 9 }, span, outcome);
        // The release's outcome was unknown: the hold may remain, and re-entering it is right.
        history.ops = vec![
            acquire(0, (0, 10), 9),
            release((20, 30), Outcome::Unknown("timeout".into())),
            reacquire((40, 50), 9),
        ];
        assert_eq!(check(&history, &Replay::of(&history)), Vec::<String>::new());
        // After an acknowledged release, the same answer is a stale grant.
        history.ops[1] = release((20, 30), Outcome::Released { at: 12 });
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].contains("already held token 9"),
            "{violations:?}"
        );
        // An acquire whose outcome was unknown may have been granted unseen: a re-entrant
        // answer with that grant (to this session, in the record) is right; with a token the
        // record gave another session, it is not.
        let mut history = history_with_record(vec![(7, vec![event(Acquired, "a", 1, 7)])]);
        let unknown = op(
            0,
            "a",
            kind.clone(),
            (0, 10),
            Outcome::Unknown("INTERNAL".into()),
        );
        history.ops = vec![unknown.clone(), reacquire((20, 30), 7)];
        assert_eq!(check(&history, &Replay::of(&history)), Vec::<String>::new());
        let mut history = history_with_record(vec![(7, vec![event(Acquired, "a", 2, 7)])]);
        history.ops = vec![unknown, reacquire((20, 30), 7)];
        assert_eq!(check(&history, &Replay::of(&history)).len(), 1);
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
