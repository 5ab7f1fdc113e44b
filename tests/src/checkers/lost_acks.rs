//! Checker 3, no acknowledged operation lost: every acquire a client was told succeeded is a
//! grant in the record with the same token and session; every acknowledged release is the end
//! of that hold at the index the client was given; no session got more grants of a lock than it
//! asked for with acquires that succeeded or might have (`Fail` means definitely not applied);
//! and the final linearizable read agrees with the record. `Unknown` operations may go either
//! way.

use std::collections::BTreeMap;

use holdfast_proto::v1 as pb;

use crate::history::{History, OpKind, Outcome, is_uncovered, uncovered};

use super::replay::Replay;

pub fn check(history: &History, replay: &Replay) -> Vec<String> {
    let mut violations = Vec::new();
    let gaps = uncovered(history);
    // (session, lock) → acquires that succeeded or may have.
    let mut asked: BTreeMap<(u64, &str), usize> = BTreeMap::new();
    for op in &history.ops {
        match (&op.kind, &op.outcome) {
            (OpKind::Acquire { .. }, Outcome::Acquired { token }) => {
                *asked.entry((op.session, &op.lock)).or_default() += 1;
                if is_uncovered(&gaps, *token) {
                    continue;
                }
                match replay.grants.get(&(op.lock.clone(), *token)) {
                    Some((_, session)) if *session == op.session => {}
                    Some((_, session)) => violations.push(format!(
                        "lock {}: client {} was granted token {token} for session {}, the record grants it to session {session}",
                        op.lock, op.client, op.session
                    )),
                    None => violations.push(format!(
                        "lock {}: client {} was granted token {token}, which the record does not have",
                        op.lock, op.client
                    )),
                }
            }
            (OpKind::Acquire { .. }, Outcome::Unknown(_)) => {
                *asked.entry((op.session, &op.lock)).or_default() += 1;
            }
            (OpKind::Release { token }, Outcome::Released { at }) => {
                if is_uncovered(&gaps, *at) {
                    continue;
                }
                match replay.ends.get(&(op.lock.clone(), *token)) {
                    Some((end, reason))
                        if end == at && *reason == pb::EventReason::Released as i32 => {}
                    other => violations.push(format!(
                        "lock {}: client {} released token {token} at {at}, the record has {other:?}",
                        op.lock, op.client
                    )),
                }
            }
            _ => {}
        }
    }
    let mut granted: BTreeMap<(u64, &str), usize> = BTreeMap::new();
    for ((lock, _), (_, session)) in &replay.grants {
        *granted.entry((*session, lock)).or_default() += 1;
    }
    for ((session, lock), count) in granted {
        let asked = asked.get(&(session, lock)).copied().unwrap_or(0);
        if count > asked {
            violations.push(format!(
                "lock {lock}: session {session} was granted it {count} times but asked {asked} times (failed acquires took effect)"
            ));
        }
    }
    if let Some((revision, locks)) = &history.final_read {
        for lock in replay.timelines.keys().chain(locks.keys()) {
            let read: Vec<u64> = locks.get(lock).cloned().unwrap_or_default();
            let record: Vec<u64> = replay.at(lock, *revision).0.into_iter().collect();
            if read != record {
                violations.push(format!(
                    "lock {lock}: the final read at revision {revision} shows holders {read:?}, the record {record:?}"
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

    const ACQUIRE: OpKind = OpKind::Acquire {
        mode: Mode::Exclusive,
        wait_ms: 0,
    };

    fn record() -> History {
        let mut released = event(Released, "a", 1, 5);
        released.reason = pb::EventReason::Released as i32;
        history_with_record(vec![
            (5, vec![event(Acquired, "a", 1, 5)]),
            (8, vec![released]),
        ])
    }

    #[test]
    fn acknowledged_operations_in_the_record_pass() {
        let mut history = record();
        history.ops = vec![
            op(0, "a", ACQUIRE, (0, 1), Outcome::Acquired { token: 5 }),
            op(
                0,
                "a",
                OpKind::Release { token: 5 },
                (2, 3),
                Outcome::Released { at: 8 },
            ),
        ];
        history.final_read = Some((9, BTreeMap::new()));
        assert_eq!(check(&history, &Replay::of(&history)), Vec::<String>::new());
    }

    #[test]
    fn a_lost_acquire_and_a_lost_release_are_caught() {
        let mut history = record();
        history.ops = vec![
            op(0, "a", ACQUIRE, (0, 1), Outcome::Acquired { token: 5 }),
            op(1, "a", ACQUIRE, (0, 1), Outcome::Acquired { token: 11 }),
            op(
                0,
                "a",
                OpKind::Release { token: 5 },
                (2, 3),
                Outcome::Released { at: 9 },
            ),
        ];
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 2, "{violations:?}");
    }

    #[test]
    fn a_failed_acquire_that_took_effect_is_caught() {
        let mut history = record();
        history.ops = vec![op(0, "a", ACQUIRE, (0, 1), Outcome::Fail("refused".into()))];
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("granted it 1 times but asked 0"));
    }

    #[test]
    fn a_final_read_that_disagrees_is_caught() {
        let mut history = record();
        history.ops = vec![op(
            0,
            "a",
            ACQUIRE,
            (0, 1),
            Outcome::Unknown("timeout".into()),
        )];
        history.final_read = Some((6, BTreeMap::new()));
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("final read"));
    }
}
