//! Safety checkers. Each returns the violations it found (empty = safe), so a run can print
//! all of them at once.
//!
//! The fault-injection checkers (one per file, each with unit tests that feed it a known-bad
//! history) read a `History`; the two functions here check the simpler `HoldRecord`s of the
//! cluster tests' workload.

pub mod availability;
pub mod digests;
pub mod disk_full;
pub mod expired_sessions;
pub mod linearizable;
pub mod lost_acks;
pub mod mutual_exclusion;
pub mod priority_aging;
pub mod replay;
pub mod tenant_quota;
pub mod tokens;
pub mod watch_streams;

/// Every fault-injection checker's violations, by name, in the order.
pub fn check_history(history: &crate::history::History) -> Vec<(&'static str, Vec<String>)> {
    let replay = replay::Replay::of(history);
    vec![
        (
            "mutual exclusion",
            mutual_exclusion::check(history, &replay),
        ),
        ("tokens increase", tokens::check(history, &replay)),
        (
            "no lost acknowledgement",
            lost_acks::check(history, &replay),
        ),
        (
            "no grant to an expired session",
            expired_sessions::check(history, &replay),
        ),
        ("linearizability", linearizable::check(history, &replay)),
        ("watch streams", watch_streams::check(history)),
        ("availability", availability::check(history)),
        ("disk full", disk_full::check(history)),
        (
            "replicas agree at every checkpoint",
            digests::check(history),
        ),
        ("tenant quotas", tenant_quota::check(history, &replay)),
        ("priority aging bound", priority_aging::check(history)),
    ]
}

use std::collections::BTreeMap;
use std::time::Instant;

/// One hold as a client saw it: granted with `token` (the log index of the grant) and, if the
/// release was acknowledged, released at log index `released_at`.
#[derive(Clone, Debug)]
pub struct HoldRecord {
    pub client: usize,
    pub lock: String,
    pub token: u64,
    pub released_at: Option<u64>,
    /// When the client sent the acquire and when the grant reached it (harness clock).
    pub invoked: Instant,
    pub acknowledged: Instant,
}

/// Mutual exclusion by the grant/release record: for each lock, ordered by token (= grant
/// index), no hold may be granted before the previous hold's release index. A handoff grants in
/// the very entry that releases, so `token == released_at` is the normal, safe case. A hold whose
/// release was never acknowledged (the client gave up and closed its session) has no known end,
/// so it only constrains token uniqueness.
pub fn exclusive_holds_do_not_overlap(records: &[HoldRecord]) -> Vec<String> {
    let mut violations = Vec::new();
    let mut by_lock: BTreeMap<&str, Vec<&HoldRecord>> = BTreeMap::new();
    for record in records {
        by_lock.entry(&record.lock).or_default().push(record);
    }
    for (lock, mut holds) in by_lock {
        holds.sort_by_key(|h| h.token);
        for pair in holds.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            if earlier.token == later.token {
                violations.push(format!(
                    "lock {lock}: token {} granted twice (clients {} and {})",
                    later.token, earlier.client, later.client
                ));
                continue;
            }
            if let Some(released_at) = earlier.released_at
                && later.token < released_at
            {
                violations.push(format!(
                    "lock {lock}: token {} granted at index {} while token {} was held until index {released_at}",
                    later.token, later.token, earlier.token
                ));
            }
        }
    }
    violations
}

/// Fencing tokens never go backwards in real time: if acquire B was sent after acquire A was
/// acknowledged (on the same lock), B's token must be larger.
pub fn tokens_increase_in_real_time(records: &[HoldRecord]) -> Vec<String> {
    let mut by_lock: BTreeMap<&str, Vec<(Instant, Instant, u64, usize)>> = BTreeMap::new();
    for record in records {
        by_lock.entry(&record.lock).or_default().push((
            record.invoked,
            record.acknowledged,
            record.token,
            record.client,
        ));
    }
    let mut violations = Vec::new();
    for (lock, holds) in by_lock {
        for (client, token, before) in tokens::real_time_regressions(holds) {
            violations.push(format!(
                "lock {lock}: client {client} got token {token} after token {before} had been acknowledged"
            ));
        }
    }
    violations
}
