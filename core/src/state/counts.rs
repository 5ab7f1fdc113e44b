//! Counters kept current by `apply`: the holds and waits over all locks (for metrics), and,
//! the policy counters: for every prefix where a deployed module is bound,
//! how many locks under it each principal and each tenant holds and waits for. A module's
//! `admit` reads them (`Counters`) in O(log n) instead of a scan of every session.
//!
//! Derived data, like `sessions_by_principal`: not in the snapshot bytes or the digest,
//! rebuilt when a snapshot is decoded, and compared with a from-scratch recount by
//! `check_invariants`. Updated where a session starts or stops holding or waiting (grant,
//! `end_hold`, enqueue, `dequeue`), in O(counted prefixes of the lock's name · log n). Binding
//! a module at a new prefix counts the locks under it once, O(locks under the prefix); the
//! counts of a prefix are dropped when no deployed module is bound there any more.

use std::collections::BTreeMap;

use super::{BUILTIN_POLICY, PrefixCounts, Session, State, Tally};
use crate::model::{FencingToken, SessionId};
use crate::snapshot::SessionPart;

impl Tally {
    fn adjust(&mut self, stake: Stake, began: bool) {
        let count = match stake {
            Stake::Hold { .. } => &mut self.holds,
            Stake::Wait => &mut self.waits,
        };
        *count = if began {
            *count + 1
        } else {
            count.checked_sub(1).expect("counted stake ends once")
        };
    }
}

/// What began or ended for a session on a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stake {
    Hold { token: FencingToken },
    Wait,
}

/// The tenant a session counts under: its `tenant` label ("" = none, counted nowhere).
fn tenant_of(session: &Session) -> &str {
    session.labels.get("tenant").map_or("", String::as_str)
}

impl PrefixCounts {
    fn adjust(&mut self, session: &Session, stake: Stake, began: bool) {
        adjust(&mut self.principals, &session.principal, stake, began);
        let tenant = tenant_of(session);
        if !tenant.is_empty() {
            adjust(&mut self.tenants, tenant, stake, began);
        }
    }
}

fn adjust(tallies: &mut BTreeMap<String, Tally>, key: &str, stake: Stake, began: bool) {
    if !tallies.contains_key(key) {
        tallies.insert(key.to_string(), Tally::default());
    }
    let tally = tallies.get_mut(key).expect("inserted above");
    tally.adjust(stake, began);
    if *tally == Tally::default() {
        tallies.remove(key);
    }
}

impl State {
    /// `session_id` began (or ended) holding or waiting for lock `name`: adjusts the totals, the
    /// counts of every counted prefix of `name`, and the session's part of the digest. The
    /// session must exist.
    pub(crate) fn count_stake(
        &mut self,
        name: &str,
        session_id: SessionId,
        stake: Stake,
        began: bool,
    ) {
        self.stakes.adjust(stake, began);
        let part = match stake {
            Stake::Hold { token } => SessionPart::Hold(session_id, name, token),
            Stake::Wait => SessionPart::Wait(session_id, name),
        };
        self.session_part(part, began);
        if self.counts.is_empty() {
            return;
        }
        let session = &self.sessions[&session_id];
        // Every prefix of `name` sorts at or before it.
        for (prefix, counts) in self
            .counts
            .range_mut::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(name)))
        {
            if name.starts_with(prefix.as_str()) {
                counts.adjust(session, stake, began);
            }
        }
    }

    /// Whether the counters of `prefix` are kept: a deployed module is bound there (in either
    /// mode). The built-in policy reads no counters.
    fn is_counted(&self, prefix: &str) -> bool {
        self.bindings.get(prefix).is_some_and(|binding| {
            [&binding.enforce, &binding.shadow]
                .into_iter()
                .flatten()
                .any(|bound| bound.policy != BUILTIN_POLICY)
        })
    }

    /// After the binding at `prefix` changed: starts counting under it (one pass over the locks
    /// under it) or stops.
    pub(crate) fn refresh_counts(&mut self, prefix: &str) {
        match (self.is_counted(prefix), self.counts.contains_key(prefix)) {
            (true, false) => {
                let counts = self.count_from_scratch(prefix);
                self.counts.insert(prefix.to_string(), counts);
            }
            (false, true) => {
                self.counts.remove(prefix);
            }
            _ => {}
        }
    }

    /// Holds and waits over every lock, from scratch: O(locks).
    pub(crate) fn stakes_from_scratch(&self) -> Tally {
        self.locks
            .values()
            .fold(Tally::default(), |total, lock| Tally {
                holds: total.holds + lock.holders.len(),
                waits: total.waits + lock.waiters.len(),
            })
    }

    /// Every counted prefix's counts, from scratch: O(state). For decoding a snapshot and the
    /// invariant check.
    pub(crate) fn all_counts_from_scratch(&self) -> BTreeMap<String, PrefixCounts> {
        self.bindings
            .keys()
            .filter(|prefix| self.is_counted(prefix))
            .map(|prefix| (prefix.clone(), self.count_from_scratch(prefix)))
            .collect()
    }

    /// The counts under `prefix` from the locks' holders and waiters: O(locks under it).
    fn count_from_scratch(&self, prefix: &str) -> PrefixCounts {
        let mut counts = PrefixCounts::default();
        let under = self
            .locks
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(name, _)| name.starts_with(prefix));
        for (_, lock) in under {
            let stakes = (lock.holders.iter())
                .map(|(id, hold)| (*id, Stake::Hold { token: hold.token }))
                .chain(lock.waiters.iter().map(|w| (w.session_id, Stake::Wait)));
            for (session_id, stake) in stakes {
                if let Some(session) = self.sessions.get(&session_id) {
                    counts.adjust(session, stake, true);
                }
            }
        }
        counts
    }

    /// The holds and waits under `prefix` of `session_id`'s principal and of its tenant, and
    /// the tenant ("" = none, with zero counts): what a module bound at `prefix` sees.
    ///
    /// # Panics
    /// If `prefix` is not counted (no deployed module bound there) or the session is missing:
    /// callers ask only for the prefix of the deployed module deciding a live session's
    /// request.
    pub(crate) fn stakes_under(&self, prefix: &str, session_id: SessionId) -> (Tally, Tally, &str) {
        let session = &self.sessions[&session_id];
        let counts = self
            .counts
            .get(prefix)
            .expect("counters asked for a prefix with a deployed module bound");
        let tenant = tenant_of(session);
        let principal = counts.principals.get(&session.principal).copied();
        let of_tenant = (!tenant.is_empty())
            .then(|| counts.tenants.get(tenant).copied())
            .flatten();
        (
            principal.unwrap_or_default(),
            of_tenant.unwrap_or_default(),
            tenant,
        )
    }
}
