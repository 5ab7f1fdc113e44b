//! `priority`: waiters are granted by priority, with aging so nobody starves.
//!
//! A waiter's score is `priority * aging_ms + (now_ms - queued_at_ms)`: every `aging_ms` of
//! waiting is worth one priority step (`aging_ms = 0`: the score is the priority alone, strict
//! priority that can starve). Highest score first; ties go to the earlier waiter.
//! The grant is the longest prefix of that order that fits beside the holders (so a shared
//! run is granted together, and nobody is passed by a waiter that does not fit yet).
//!
//! Bound: a waiter of priority `p` is never passed by a waiter queued more than
//! `(max_priority - p) * aging_ms` after it, so it waits at most for the waiters queued before
//! it or within that window.
//!
//! Admission clamps the requested priority into `[min_priority, max_priority]` (priority
//! override), so no client can buy infinite precedence.
//!
//! Config (`key = value` lines, all optional):
//! ```text
//! aging_ms = 1000       # waiting time worth one priority step; 0 = strict priority, no aging
//! min_priority = 0      # requested priorities are clamped into [min_priority, max_priority]
//! max_priority = 10
//! ```
#![no_std]

use core::cmp::Reverse;

use holdfast_policy_sdk::prelude::*;

/// The priority-with-aging policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct Priority;

/// Largest priority magnitude accepted in config (keeps scores within i64).
const PRIORITY_LIMIT: u64 = 1_000_000;
/// Largest `aging_ms` accepted (about 11.5 days per step).
const AGING_MS_LIMIT: u64 = 1_000_000_000;

/// Parsed config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub aging_ms: u64,
    pub min_priority: i32,
    pub max_priority: i32,
}

impl Settings {
    /// Parses and validates the binding config.
    pub fn parse(bytes: &[u8]) -> Result<Settings, ConfigError> {
        let config = Config::parse(bytes)?;
        for (key, _) in config.entries() {
            if !matches!(*key, "aging_ms" | "min_priority" | "max_priority") {
                return Err(ConfigError::new(format!("unknown key `{key}`")));
            }
        }
        let aging_ms = config.u64_or("aging_ms", 1_000)?;
        if aging_ms > AGING_MS_LIMIT {
            return Err(ConfigError::new(format!(
                "aging_ms must be <= {AGING_MS_LIMIT}"
            )));
        }
        let min_priority = signed(&config, "min_priority", 0)?;
        let max_priority = signed(&config, "max_priority", 10)?;
        if min_priority > max_priority {
            return Err(ConfigError::new("min_priority must be <= max_priority"));
        }
        Ok(Settings {
            aging_ms,
            min_priority,
            max_priority,
        })
    }

    /// The aging score of a waiter at `now_ms` (its clamped priority when `aging_ms` is 0).
    pub fn score(&self, waiter: &Waiter, now_ms: u64) -> i64 {
        let priority = i64::from(waiter.priority.clamp(self.min_priority, self.max_priority));
        if self.aging_ms == 0 {
            return priority;
        }
        let age = now_ms
            .saturating_sub(waiter.queued_at_ms)
            .min(i64::MAX as u64 / 4) as i64;
        priority
            .saturating_mul(self.aging_ms as i64)
            .saturating_add(age)
    }
}

/// A signed integer `key` (an optional leading `-`), within `PRIORITY_LIMIT`.
fn signed(config: &Config<'_>, key: &str, default: i32) -> Result<i32, ConfigError> {
    let Some(value) = config.get(key) else {
        return Ok(default);
    };
    let (negative, digits) = match value.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, value),
    };
    let magnitude = holdfast_policy_sdk::config::parse_u64(digits)
        .map_err(|message| ConfigError::new(format!("{key}: {message}")))?;
    if magnitude > PRIORITY_LIMIT {
        return Err(ConfigError::new(format!(
            "{key}: magnitude must be <= {PRIORITY_LIMIT}"
        )));
    }
    let magnitude = magnitude as i32;
    Ok(if negative { -magnitude } else { magnitude })
}

impl Policy for Priority {
    fn init(&self, req: &InitRequest) -> Result<(), String> {
        Settings::parse(&req.config)?;
        Ok(())
    }

    fn admit(&self, req: &AdmitRequest) -> AdmitReply {
        let settings = Settings::parse(&req.config).expect("config validated by init");
        let requested = req.lock_request().priority;
        AdmitReply::grant_or_queue()
            .with_priority(requested.clamp(settings.min_priority, settings.max_priority))
    }

    fn choose_next(&self, req: &ChooseNextRequest) -> ChooseNextReply {
        let settings = Settings::parse(&req.config).expect("config validated by init");
        let mut order: Vec<usize> = (0..req.waiters.len()).collect();
        // Stable sort: equal keys keep queue order.
        order.sort_by_key(|&index| {
            let waiter = &req.waiters[index];
            (
                Reverse(settings.score(waiter, req.now_ms)),
                waiter.queued_at_ms,
            )
        });
        ChooseNextReply {
            grant: builtin::grant_in_order(&req.holders, &req.waiters, req.max_holders, order),
        }
    }
}

export_policy!(Priority, [init, admit, choose_next]);

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_policy_sdk::testing::{self, holder, lock_request, waiter};

    const CONFIG: &str = "aging_ms = 100\nmin_priority = 0\nmax_priority = 10\n";

    #[test]
    fn config_is_validated() {
        assert!(testing::init::<Priority>("", "").ok);
        assert!(testing::init::<Priority>(CONFIG, "").ok);
        assert!(testing::init::<Priority>("min_priority = -5", "").ok);
        assert!(!testing::init::<Priority>("aging = 1", "").ok);
        assert!(!testing::init::<Priority>("min_priority = 5\nmax_priority = 1", "").ok);
        assert!(!testing::init::<Priority>("max_priority = 99999999999", "").ok);
        assert!(!testing::init::<Priority>("aging_ms = -1", "").ok);
    }

    #[test]
    fn admit_clamps_priority() {
        let mut request = lock_request("jobs/a", Mode::Exclusive);
        request.priority = 1_000;
        let req = testing::admit_request(request, "p", &[]).with_config(CONFIG);
        let reply = testing::admit::<Priority>(&req);
        assert_eq!(reply.admission(), Admission::GrantOrQueue);
        assert_eq!(reply.priority, Some(10));
    }

    #[test]
    fn higher_priority_first_then_older() {
        let waiters = vec![
            waiter(1, Mode::Exclusive, 1, 0),
            waiter(2, Mode::Exclusive, 5, 50),
            waiter(3, Mode::Exclusive, 5, 40),
        ];
        let req = testing::choose_next_request("a", vec![], waiters, 1)
            .with_config(CONFIG)
            .at(60);
        // Scores: 1*100+60 = 160, 5*100+10 = 510, 5*100+20 = 520.
        assert_eq!(testing::choose_next::<Priority>(&req).grant, [2]);
    }

    #[test]
    fn shared_waiters_are_granted_together_in_score_order() {
        let waiters = vec![
            waiter(1, Mode::Shared, 0, 0),
            waiter(2, Mode::Exclusive, 3, 0),
            waiter(3, Mode::Shared, 9, 0),
            waiter(4, Mode::Shared, 8, 0),
        ];
        let req = testing::choose_next_request("a", vec![], waiters.clone(), 8).with_config(CONFIG);
        // Order: 3 (9), 4 (8), 2 (3, exclusive: stops), 1.
        assert_eq!(testing::choose_next::<Priority>(&req).grant, [2, 3]);
        // Held exclusively: nobody fits.
        let req = testing::choose_next_request("a", vec![holder(9, Mode::Exclusive)], waiters, 8)
            .with_config(CONFIG);
        assert!(testing::choose_next::<Priority>(&req).grant.is_empty());
    }

    /// One exclusive lock, a steady stream of top-priority waiters (one arrives per handoff,
    /// holds last `hold_ms`), and one priority-0 waiter queued behind `initial` of them.
    /// Returns after how many handoffs the low waiter was granted (None: not within `limit`).
    fn handoffs_until_low_is_granted(
        config: &str,
        initial: u64,
        hold_ms: u64,
        limit: u64,
    ) -> Option<u64> {
        const LOW: u64 = 1;
        let mut waiters: Vec<Waiter> = (0..initial)
            .map(|i| waiter(100 + i, Mode::Exclusive, 10, 0))
            .collect();
        waiters.push(waiter(LOW, Mode::Exclusive, 0, 0));
        for handoff in 1..=limit {
            let now = handoff * hold_ms;
            waiters.push(waiter(100 + initial + handoff, Mode::Exclusive, 10, now));
            let req = testing::choose_next_request("a", vec![], waiters.clone(), 1)
                .with_config(config)
                .at(now);
            let grant = testing::choose_next::<Priority>(&req).grant;
            assert_eq!(
                grant.len(),
                1,
                "a free exclusive lock grants exactly one waiter"
            );
            let granted = waiters.remove(grant[0] as usize);
            if granted.session_id == LOW {
                return Some(handoff);
            }
        }
        None
    }

    #[test]
    fn aging_bounds_the_wait_of_a_low_priority_waiter() {
        // Window: (10 - 0) * 100 ms = 1000 ms = 10 handoffs of 100 ms. The low waiter can be
        // passed only by the 5 waiters queued before it and those queued within the window.
        let bound = 5 + 10 + 1;
        let granted_after = handoffs_until_low_is_granted(CONFIG, 5, 100, 1_000)
            .expect("the low-priority waiter must not starve");
        assert!(
            granted_after <= bound,
            "granted after {granted_after} handoffs, bound {bound}"
        );
        // And aging did something: strictly by priority it would wait forever, and a much
        // longer window (slower aging) makes it wait longer.
        let slow = handoffs_until_low_is_granted("aging_ms = 1000\n", 5, 100, 1_000).unwrap();
        assert!(
            slow > granted_after && slow <= 5 + 100 + 1,
            "slow aging: {slow}"
        );
    }

    #[test]
    fn without_aging_the_low_priority_waiter_starves() {
        let strict = "aging_ms = 0\n";
        assert_eq!(handoffs_until_low_is_granted(strict, 5, 100, 1_000), None);
    }
}
