//! `election-preference`: prefer leaders in preferred zones, with a sticky incumbent and a
//! minimum tenure before preemption.
//!
//! Candidates are ranked by (zone rank, priority descending, campaign start, campaign order),
//! where the zone rank is the position of the candidate's zone label in `preferred_zones`
//! (a zone not listed, or no label, ranks after every listed zone).
//! - No incumbent: the best candidate wins.
//! - An incumbent is kept unless the best candidate is in a strictly better zone (with
//!   `sticky = true`, the default), or strictly better by (zone rank, priority) with
//!   `sticky = false`. A better candidate preempts only once the incumbent has led for
//!   `min_tenure_ms`; before that the incumbent is kept and the reply asks to be re-evaluated
//!   when the tenure ends. A preemption hands over after `preempt_grace_ms`.
//!
//! Config (`key = value` lines):
//! ```text
//! preferred_zones = eu-west-1a, eu-west-1b   # most preferred first
//! zone_label = zone                          # label holding the zone (default `zone`)
//! min_tenure_ms = 30000                      # default 0
//! preempt_grace_ms = 2000                    # default 0
//! sticky = true                              # default true
//! ```
#![no_std]

use holdfast_policy_sdk::prelude::*;

/// The election-preference policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct ElectionPreference;

/// Parsed config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings<'a> {
    pub preferred_zones: Vec<&'a str>,
    pub zone_label: &'a str,
    pub min_tenure_ms: u64,
    pub preempt_grace_ms: u64,
    pub sticky: bool,
}

impl<'a> Settings<'a> {
    /// Parses and validates the binding config.
    pub fn parse(bytes: &'a [u8]) -> Result<Settings<'a>, ConfigError> {
        let config = Config::parse(bytes)?;
        for (key, _) in config.entries() {
            if !matches!(
                *key,
                "preferred_zones" | "zone_label" | "min_tenure_ms" | "preempt_grace_ms" | "sticky"
            ) {
                return Err(ConfigError::new(format!("unknown key `{key}`")));
            }
        }
        let zone_label = config.get("zone_label").unwrap_or("zone");
        if zone_label.is_empty() {
            return Err(ConfigError::new("zone_label must not be empty"));
        }
        Ok(Settings {
            preferred_zones: config.list("preferred_zones"),
            zone_label,
            min_tenure_ms: config.u64_or("min_tenure_ms", 0)?,
            preempt_grace_ms: config.u64_or("preempt_grace_ms", 0)?,
            sticky: config.bool_or("sticky", true)?,
        })
    }

    /// Position of the candidate's zone in `preferred_zones`; unlisted zones rank last.
    pub fn zone_rank(&self, candidate: &Candidate) -> usize {
        candidate
            .label(self.zone_label)
            .and_then(|zone| {
                self.preferred_zones
                    .iter()
                    .position(|preferred| *preferred == zone)
            })
            .unwrap_or(self.preferred_zones.len())
    }

    /// What makes a leader preferable, smallest first.
    fn preference(&self, candidate: &Candidate) -> (usize, i64) {
        (self.zone_rank(candidate), -i64::from(candidate.priority))
    }
}

impl Policy for ElectionPreference {
    fn init(&self, req: &InitRequest) -> Result<(), String> {
        Settings::parse(&req.config)?;
        Ok(())
    }

    fn elect(&self, req: &ElectRequest) -> ElectReply {
        let settings = Settings::parse(&req.config).expect("config validated by init");
        let best = req
            .candidates
            .iter()
            .enumerate()
            .min_by_key(|(index, candidate)| {
                (settings.preference(candidate), candidate.since_ms, *index)
            })
            .map(|(index, _)| index);
        let Some(best) = best else {
            return ElectReply::keep_incumbent(0);
        };
        let Some(incumbent) = &req.incumbent else {
            return ElectReply::elect(best as u32, 0);
        };
        let challenger = settings.preference(&req.candidates[best]);
        let defender = settings.preference(incumbent);
        let better = if settings.sticky {
            challenger.0 < defender.0
        } else {
            challenger < defender
        };
        if !better {
            return ElectReply::keep_incumbent(0);
        }
        let tenure_ends_ms = incumbent.since_ms.saturating_add(settings.min_tenure_ms);
        if req.now_ms < tenure_ends_ms {
            return ElectReply::keep_incumbent(tenure_ends_ms);
        }
        ElectReply::elect(best as u32, settings.preempt_grace_ms)
    }
}

export_policy!(ElectionPreference, [init, elect]);

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_policy_sdk::testing::{self, candidate};

    const CONFIG: &str = "\
preferred_zones = eu-west-1a, eu-west-1b
min_tenure_ms = 30000
preempt_grace_ms = 2000
";

    fn elect(
        config: &str,
        now_ms: u64,
        candidates: Vec<Candidate>,
        incumbent: Option<Candidate>,
    ) -> ElectReply {
        let req = ElectRequest {
            election: "leader/db".into(),
            candidates,
            incumbent,
            ..ElectRequest::default()
        }
        .with_config(config)
        .at(now_ms);
        testing::elect::<ElectionPreference>(&req)
    }

    #[test]
    fn config_is_validated() {
        assert!(testing::init::<ElectionPreference>(CONFIG, "").ok);
        assert!(testing::init::<ElectionPreference>("", "").ok);
        assert!(!testing::init::<ElectionPreference>("zones = a", "").ok);
        assert!(!testing::init::<ElectionPreference>("sticky = 1", "").ok);
        assert!(!testing::init::<ElectionPreference>("min_tenure_ms = 30s", "").ok);
    }

    #[test]
    fn without_incumbent_prefers_zone_then_priority_then_age() {
        let candidates = vec![
            candidate(1, 10, &[("zone", "us-east-1a")]),
            candidate(2, 30, &[("zone", "eu-west-1b")]),
            candidate(3, 20, &[("zone", "eu-west-1b")]),
            candidate(4, 5, &[]),
        ];
        let reply = elect(CONFIG, 100, candidates.clone(), None);
        assert_eq!((reply.action(), reply.winner), (ElectAction::Elect, 2));
        let mut prioritized = candidates;
        prioritized[1].priority = 5;
        let reply = elect(CONFIG, 100, prioritized, None);
        assert_eq!(reply.winner, 1);
        // No preferences at all: the earliest campaigner, like the built-in.
        let plain = vec![candidate(1, 10, &[]), candidate(2, 5, &[])];
        assert_eq!(elect("", 100, plain, None).winner, 1);
    }

    #[test]
    fn sticky_incumbent_is_kept_against_equal_zone_and_priority() {
        let incumbent = candidate(9, 0, &[("zone", "eu-west-1b")]);
        let mut challenger = candidate(1, 10, &[("zone", "eu-west-1b")]);
        challenger.priority = 7;
        let reply = elect(
            CONFIG,
            100_000,
            vec![challenger.clone()],
            Some(incumbent.clone()),
        );
        assert_eq!(reply.action(), ElectAction::KeepIncumbent);
        // Not sticky: higher priority in the same zone preempts.
        let loose = "preferred_zones = eu-west-1a, eu-west-1b\nsticky = false";
        let reply = elect(loose, 100_000, vec![challenger], Some(incumbent));
        assert_eq!((reply.action(), reply.winner), (ElectAction::Elect, 0));
    }

    #[test]
    fn better_zone_preempts_only_after_min_tenure() {
        let incumbent = candidate(9, 1_000, &[("zone", "us-east-1a")]);
        let challenger = candidate(1, 2_000, &[("zone", "eu-west-1a")]);
        let early = elect(
            CONFIG,
            10_000,
            vec![challenger.clone()],
            Some(incumbent.clone()),
        );
        assert_eq!(early.action(), ElectAction::KeepIncumbent);
        assert_eq!(early.reevaluate_at_ms, 31_000);
        let later = elect(CONFIG, 31_000, vec![challenger], Some(incumbent));
        assert_eq!(later.action(), ElectAction::Elect);
        assert_eq!((later.winner, later.preempt_grace_ms), (0, 2_000));
    }

    #[test]
    fn no_candidates_keeps_whatever_there_is() {
        assert_eq!(
            elect(CONFIG, 0, vec![], None).action(),
            ElectAction::KeepIncumbent
        );
    }
}
