//! Checker 4, no grant to a session that had already expired (etcd #11456): in the record, no
//! grant for a session comes after its expiry or close, and no client was told it acquired a
//! lock with a token past its session's end.

use crate::history::{History, OpKind, Outcome};

use super::replay::Replay;

pub fn check(history: &History, replay: &Replay) -> Vec<String> {
    let mut violations = Vec::new();
    for ((lock, token), (revision, session)) in &replay.grants {
        if let Some(end) = replay.session_ends.get(session)
            && revision > end
        {
            violations.push(format!(
                "lock {lock}: token {token} granted at revision {revision} to session {session}, which ended at revision {end}"
            ));
        }
    }
    for op in &history.ops {
        if let (OpKind::Acquire { .. }, Outcome::Acquired { token }) = (&op.kind, &op.outcome)
            && let Some(end) = replay.session_ends.get(&op.session)
            && token > end
        {
            violations.push(format!(
                "lock {}: client {} was granted token {token} for session {}, which ended at revision {end}",
                op.lock, op.client, op.session
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use holdfast_proto::v1::EventKind::{Acquired, SessionExpired};

    use super::*;
    use crate::history::{Mode, event, history_with_record, op};

    #[test]
    fn grants_before_the_expiry_pass() {
        let history = history_with_record(vec![
            (5, vec![event(Acquired, "a", 1, 5)]),
            (9, vec![event(SessionExpired, "", 1, 0)]),
        ]);
        assert_eq!(check(&history, &Replay::of(&history)), Vec::<String>::new());
    }

    #[test]
    fn a_grant_after_the_expiry_is_caught_in_the_record_and_at_the_client() {
        let mut history = history_with_record(vec![
            (5, vec![event(SessionExpired, "", 1, 0)]),
            (9, vec![event(Acquired, "a", 1, 9)]),
        ]);
        let kind = OpKind::Acquire {
            mode: Mode::Exclusive,
            wait_ms: 100,
        };
        history.ops = vec![op(0, "a", kind, (0, 1), Outcome::Acquired { token: 9 })];
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 2, "{violations:?}");
    }
}
