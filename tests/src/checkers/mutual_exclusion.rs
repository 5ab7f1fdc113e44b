//! Checker 1, mutual exclusion: in the replicated record no grant of a lock comes before the
//! end of a conflicting hold; the fenced resource never accepted a lower token after a higher
//! one; every append it acknowledged is in its list exactly once.

use std::collections::BTreeMap;

use crate::history::{History, OpKind, Outcome};

use super::replay::Replay;

pub fn check(history: &History, replay: &Replay) -> Vec<String> {
    let mut violations = replay.violations.clone();
    let mut acknowledged: BTreeMap<(usize, u64), &str> = BTreeMap::new();
    for op in &history.ops {
        if let (OpKind::Write { seq, .. }, Outcome::Written { accepted: true }) =
            (&op.kind, &op.outcome)
        {
            acknowledged.insert((op.client, *seq), &op.lock);
        }
    }
    let mut present: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    for (lock, appends) in &history.resource {
        for pair in appends.windows(2) {
            if pair[1].token < pair[0].token {
                violations.push(format!(
                    "resource {lock}: accepted token {} after token {}",
                    pair[1].token, pair[0].token
                ));
            }
        }
        for append in appends {
            *present.entry((append.client, append.seq)).or_default() += 1;
        }
    }
    for ((client, seq), lock) in &acknowledged {
        match present.get(&(*client, *seq)).copied().unwrap_or(0) {
            1 => {}
            count => violations.push(format!(
                "resource {lock}: acknowledged append {seq} of client {client} is present {count} times"
            )),
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use holdfast_proto::v1::EventKind::{Acquired, Released};

    use super::*;
    use crate::history::{Append, event, history_with_record, op};

    #[test]
    fn a_clean_handoff_passes() {
        let history = history_with_record(vec![
            (5, vec![event(Acquired, "a", 1, 5)]),
            (
                9,
                vec![event(Released, "a", 1, 5), event(Acquired, "a", 2, 9)],
            ),
        ]);
        assert_eq!(check(&history, &Replay::of(&history)), Vec::<String>::new());
    }

    #[test]
    fn an_overlapping_grant_is_caught() {
        let history = history_with_record(vec![
            (5, vec![event(Acquired, "a", 1, 5)]),
            (7, vec![event(Acquired, "a", 2, 7)]),
            (9, vec![event(Released, "a", 1, 5)]),
        ]);
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("token 7"), "{violations:?}");
    }

    #[test]
    fn a_lower_token_after_a_higher_and_a_lost_append_are_caught() {
        let mut history = history_with_record(vec![]);
        let append = |token, client, seq| Append { token, client, seq };
        history.resource.insert(
            "a".into(),
            vec![append(9, 1, 1), append(5, 2, 1), append(9, 1, 1)],
        );
        history.ops = vec![
            op(
                1,
                "a",
                OpKind::Write { token: 9, seq: 1 },
                (0, 1),
                Outcome::Written { accepted: true },
            ),
            op(
                3,
                "a",
                OpKind::Write { token: 9, seq: 7 },
                (0, 1),
                Outcome::Written { accepted: true },
            ),
        ];
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 3, "{violations:?}");
        assert!(violations[0].contains("accepted token 5 after token 9"));
        assert!(
            violations
                .iter()
                .any(|v| v.contains("append 1 of client 1 is present 2 times"))
        );
        assert!(
            violations
                .iter()
                .any(|v| v.contains("append 7 of client 3 is present 0 times"))
        );
    }
}
