//! Tenant quotas hold under faults: in the record, no tenant ever holds more locks under the
//! tenant-quota binding than the largest `max_holds` the run bound it with. (The run admits no
//! waiting there, so every hold was admitted against the quota; sessions are labelled by
//! client, `policies::labels`.)

use std::collections::BTreeMap;

use crate::history::{History, OpKind, Outcome};
use crate::torture::policies::{QUOTA_MAX_HOLDS, QUOTA_PREFIX, TENANTS};

use super::replay::{LockState, Replay};

pub fn check(history: &History, replay: &Replay) -> Vec<String> {
    let tenant_of: BTreeMap<u64, usize> = history
        .ops
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::OpenSession, Outcome::Opened { session }) => {
                Some((*session, op.client % TENANTS))
            }
            _ => None,
        })
        .collect();
    // Every state change of every quota lock, in revision order.
    let mut changes: Vec<(u64, &str, &LockState)> = replay
        .timelines
        .iter()
        .filter(|(lock, _)| lock.starts_with(QUOTA_PREFIX))
        .flat_map(|(lock, timeline)| {
            timeline
                .iter()
                .map(move |(revision, state)| (*revision, lock.as_str(), state))
        })
        .collect();
    changes.sort_by_key(|(revision, _, _)| *revision);
    let mut current: BTreeMap<&str, &LockState> = BTreeMap::new();
    let mut violations = Vec::new();
    for (index, (revision, lock, state)) in changes.iter().enumerate() {
        current.insert(lock, state);
        // Judge once a revision's changes are all in.
        if changes
            .get(index + 1)
            .is_some_and(|next| next.0 == *revision)
        {
            continue;
        }
        let mut holds: BTreeMap<usize, Vec<(&str, u64)>> = BTreeMap::new();
        for (lock, state) in &current {
            for (token, (session, _)) in &state.holders {
                if let Some(tenant) = tenant_of.get(session) {
                    holds.entry(*tenant).or_default().push((lock, *token));
                }
            }
        }
        for (tenant, held) in holds {
            if held.len() > QUOTA_MAX_HOLDS {
                violations.push(format!(
                    "tenant t{tenant} held {} locks under {QUOTA_PREFIX} at revision {revision} \
                     (quota {QUOTA_MAX_HOLDS}): {held:?}",
                    held.len()
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
    use crate::history::{event, history_with_record, op};

    /// Client `client` opened `session` (tenant `client % TENANTS`).
    fn opened(client: usize, session: u64) -> crate::history::Op {
        op(
            client,
            "",
            OpKind::OpenSession,
            (0, 1),
            Outcome::Opened { session },
        )
    }

    fn quota(lock: u64) -> String {
        format!("{QUOTA_PREFIX}{lock}")
    }

    #[test]
    fn holds_within_the_quota_pass() {
        // Clients 0 and 3 share tenant t0: two holds at once is the largest quota.
        let mut history = history_with_record(vec![
            (5, vec![event(Acquired, &quota(0), 10, 5)]),
            (6, vec![event(Acquired, &quota(1), 13, 6)]),
            (7, vec![event(Released, &quota(0), 10, 5)]),
            (8, vec![event(Acquired, &quota(2), 10, 8)]),
        ]);
        history.ops = vec![opened(0, 10), opened(TENANTS, 13)];
        assert_eq!(check(&history, &Replay::of(&history)), Vec::<String>::new());
    }

    #[test]
    fn a_tenant_over_its_quota_is_caught() {
        let mut history = history_with_record(vec![
            (5, vec![event(Acquired, &quota(0), 10, 5)]),
            (6, vec![event(Acquired, &quota(1), 13, 6)]),
            (7, vec![event(Acquired, &quota(2), 16, 7)]),
            // Outside the prefix: not counted.
            (8, vec![event(Acquired, "torture/0", 10, 8)]),
        ]);
        history.ops = vec![opened(0, 10), opened(TENANTS, 13), opened(2 * TENANTS, 16)];
        let violations = check(&history, &Replay::of(&history));
        assert_eq!(violations.len(), 1, "revision 7 only: {violations:?}");
        assert!(violations[0].contains("tenant t0 held 3"), "{violations:?}");
    }
}
