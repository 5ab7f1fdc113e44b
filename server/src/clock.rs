//! Cluster time, as only the leader computes it (DESIGN.md §2 "Time").
//!
//! The leader's cluster time is the cluster time at which it took office plus the *monotonic*
//! time elapsed since then on its own clock. Never the wall clock: a leader whose wall clock is an
//! hour ahead must not expire every session. Between leaders no entries are stamped, so cluster
//! time pauses while there is no leader and a session's remaining TTL survives a fail-over.

use tokio::time::Instant;

/// The leader's clock for one term.
#[derive(Debug, Default)]
pub struct LeaderClock {
    office: Option<Office>,
}

#[derive(Debug)]
struct Office {
    term: u64,
    base_cluster_ms: u64,
    base: Instant,
}

impl LeaderClock {
    /// Cluster time now for the leader of `term`, never below `applied_now_ms` (the cluster time
    /// of the last applied entry). A new term (or an applied state ahead of this clock, e.g. the
    /// previous leader's entries applied after we took office) re-bases the clock.
    pub fn now_ms(&mut self, term: u64, applied_now_ms: u64) -> u64 {
        let now = Instant::now();
        let office = match &mut self.office {
            Some(office) if office.term == term => office,
            slot => slot.insert(Office {
                term,
                base_cluster_ms: applied_now_ms,
                base: now,
            }),
        };
        let elapsed_ms =
            u64::try_from(now.duration_since(office.base).as_millis()).unwrap_or(u64::MAX);
        let cluster_ms = office.base_cluster_ms.saturating_add(elapsed_ms);
        if cluster_ms < applied_now_ms {
            office.base_cluster_ms = applied_now_ms;
            office.base = now;
            return applied_now_ms;
        }
        cluster_ms
    }
}

#[cfg(test)]
mod tests {
    use super::LeaderClock;

    #[test]
    fn starts_at_applied_time_and_never_goes_back() {
        let mut clock = LeaderClock::default();
        let first = clock.now_ms(1, 5_000);
        assert!((5_000..5_000 + 1_000).contains(&first));
        // The previous leader's entries, applied late, are ahead of us: jump forward.
        assert!(clock.now_ms(1, 9_000) >= 9_000);
        assert!(clock.now_ms(1, 0) >= 9_000);
        // A new term starts from the applied time, not from this leader's old clock.
        assert!(clock.now_ms(2, 20_000) >= 20_000);
    }
}
