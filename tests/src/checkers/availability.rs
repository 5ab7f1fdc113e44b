//! Checker 7, availability: how long after a kill -9 of the leader the first acquire succeeded
//! (reported, p50 / p99 / max); after the last heal, how long until every client had an
//! operation succeed; and in the final quiet phase every operation must succeed.

use crate::history::{FaultKind, History, Micros, OpKind, Outcome};

/// Operations that began within this long of the quiet phase's start may still see the last
/// fault's effects (a client reconnecting, a session reopening).
pub const QUIET_SETTLE_MS: u64 = 5_000;
/// After the last heal every client must have succeeded at something within this long.
pub const HEAL_RECOVERY_MAX_MS: u64 = 10_000;

#[derive(Clone, Debug, Default)]
pub struct Availability {
    /// Per kill -9 of the leader: ms until the first successful acquire after it.
    pub leader_kill_recovery_ms: Vec<u64>,
    /// From the quiet phase's start until every client had succeeded at something.
    pub heal_recovery_ms: Option<u64>,
    /// Operations in the quiet phase (after the settle time) and how many failed.
    pub quiet_ops: usize,
    pub quiet_failures: usize,
}

impl Availability {
    pub fn percentile(&self, percent: usize) -> Option<u64> {
        let mut sorted = self.leader_kill_recovery_ms.clone();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        Some(sorted[(last * percent).div_ceil(100)])
    }
}

pub fn measure(history: &History) -> Availability {
    let mut acquired: Vec<Micros> = history
        .ops
        .iter()
        .filter(|op| {
            matches!(op.kind, OpKind::Acquire { .. })
                && matches!(op.outcome, Outcome::Acquired { .. })
        })
        .map(|op| op.complete)
        .collect();
    acquired.sort_unstable();
    let mut availability = Availability::default();
    for fault in &history.faults {
        if fault.kind == FaultKind::KillLeader {
            let next = acquired.partition_point(|at| *at < fault.start);
            if let Some(at) = acquired.get(next) {
                availability
                    .leader_kill_recovery_ms
                    .push((at - fault.start) / 1_000);
            }
        }
    }
    if let Some(quiet) = history.quiet_from {
        let clients: std::collections::BTreeSet<usize> =
            history.ops.iter().map(|op| op.client).collect();
        let mut latest = Some(0);
        for client in clients {
            let first = history
                .ops
                .iter()
                .filter(|op| op.client == client && op.invoke >= quiet && op.outcome.is_ok())
                .map(|op| op.complete)
                .min();
            latest = match (latest, first) {
                (Some(latest), Some(first)) => Some(latest.max(first - quiet)),
                _ => None,
            };
        }
        availability.heal_recovery_ms = latest.map(|us| us / 1_000);
        let settled = quiet + QUIET_SETTLE_MS * 1_000;
        for op in history.ops.iter().filter(|op| op.invoke >= settled) {
            availability.quiet_ops += 1;
            if !succeeded(op) {
                availability.quiet_failures += 1;
            }
        }
    }
    availability
}

/// Succeeded, or was refused by a policy's rules, which is a policy doing its job: a quota's
/// denial, or a release that found the policy had already ended the hold (a lease ran out, an
/// election preempted its leader).
fn succeeded(op: &crate::history::Op) -> bool {
    match &op.outcome {
        crate::history::Outcome::Fail(reason) => {
            reason.contains("denied by policy")
                || matches!(op.kind, OpKind::Release { .. })
                    && crate::torture::policies::policy_ends_holds(&op.lock)
                    && reason.starts_with("FailedPrecondition")
        }
        outcome => outcome.is_ok(),
    }
}

pub fn check(history: &History) -> Vec<String> {
    let availability = measure(history);
    let mut violations = Vec::new();
    if history.quiet_from.is_some() {
        match availability.heal_recovery_ms {
            Some(ms) if ms <= HEAL_RECOVERY_MAX_MS => {}
            other => violations.push(format!(
                "after the last heal not every client succeeded within {HEAL_RECOVERY_MAX_MS} ms ({other:?})"
            )),
        }
        if availability.quiet_failures > 0 {
            let failed: Vec<String> = history
                .ops
                .iter()
                .filter(|op| {
                    op.invoke >= history.quiet_from.unwrap_or(0) + QUIET_SETTLE_MS * 1_000
                        && !succeeded(op)
                })
                .take(3)
                .map(|op| {
                    format!(
                        "client {} {:?} on {}: {:?}",
                        op.client, op.kind, op.lock, op.outcome
                    )
                })
                .collect();
            violations.push(format!(
                "{} of {} operations failed in the quiet phase, e.g. {failed:?}",
                availability.quiet_failures, availability.quiet_ops
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Fault, Mode, op};

    const ACQUIRE: OpKind = OpKind::Acquire {
        mode: Mode::Exclusive,
        wait_ms: 0,
    };

    #[test]
    fn recovery_after_a_leader_kill_is_measured() {
        let mut history = History::default();
        history.faults.push(Fault {
            kind: FaultKind::KillLeader,
            detail: String::new(),
            start: 1_000_000,
            end: None,
        });
        history.ops = vec![
            op(
                0,
                "a",
                ACQUIRE,
                (0, 900_000),
                Outcome::Acquired { token: 3 },
            ),
            op(
                0,
                "a",
                ACQUIRE,
                (950_000, 1_400_000),
                Outcome::Acquired { token: 9 },
            ),
        ];
        assert_eq!(measure(&history).leader_kill_recovery_ms, vec![400]);
    }

    #[test]
    fn a_failure_in_the_quiet_phase_is_caught() {
        let mut history = History {
            quiet_from: Some(0),
            ..History::default()
        };
        let late = QUIET_SETTLE_MS * 1_000 + 1;
        history.ops = vec![
            op(0, "a", ACQUIRE, (0, 1), Outcome::NotAcquired),
            op(1, "a", ACQUIRE, (0, 1), Outcome::NotAcquired),
            op(
                0,
                "a",
                ACQUIRE,
                (late, late + 1),
                Outcome::Unknown("timeout".into()),
            ),
        ];
        let violations = check(&history);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("1 of 1 operations failed"));
    }

    #[test]
    fn a_policy_refusal_in_the_quiet_phase_is_not_a_failure() {
        let mut history = History {
            quiet_from: Some(0),
            ..History::default()
        };
        let late = QUIET_SETTLE_MS * 1_000 + 1;
        let denied = "PermissionDenied: denied by policy quota@1 (bound at \"q/\"): over quota";
        let lease = format!("{}0", crate::torture::policies::LEASE_PREFIX);
        let stale = "FailedPrecondition: lock is not held by session 3";
        history.ops = vec![
            op(0, "a", ACQUIRE, (0, 1), Outcome::NotAcquired),
            op(
                0,
                "q/0",
                ACQUIRE,
                (late, late + 1),
                Outcome::Fail(denied.into()),
            ),
            op(
                0,
                &lease,
                OpKind::Release { token: 4 },
                (late, late + 1),
                Outcome::Fail(stale.into()),
            ),
        ];
        assert_eq!(check(&history), Vec::<String>::new());
        // The same release on a lock without a lease is a failure.
        history.ops.push(op(
            0,
            "a",
            OpKind::Release { token: 4 },
            (late, late + 1),
            Outcome::Fail(stale.into()),
        ));
        assert_eq!(check(&history).len(), 1);
    }

    #[test]
    fn a_client_that_never_recovers_is_caught() {
        let mut history = History {
            quiet_from: Some(0),
            ..History::default()
        };
        history.ops = vec![
            op(0, "a", ACQUIRE, (0, 1), Outcome::NotAcquired),
            op(1, "a", ACQUIRE, (0, 1), Outcome::Fail("unavailable".into())),
        ];
        let violations = check(&history);
        assert_eq!(violations.len(), 1, "{violations:?}");
    }
}
