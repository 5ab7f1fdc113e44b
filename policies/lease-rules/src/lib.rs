//! `lease-rules`: lease and lock-delay lengths by lock-name prefix.
//!
//! For a grant of lock `name`, `lease_ms` is the value of the longest `lease_ms.PREFIX` whose
//! PREFIX starts `name`, else `lease_ms` (default 0 = held while the session lives); the same
//! for `lock_delay_ms`. On session expiry it applies the current rules again, so a config
//! change also covers holds granted before it.
//!
//! Config (`key = value` lines; prefixes contain no whitespace or `=`):
//! ```text
//! lease_ms = 0                    # default lease (0 = while the session lives)
//! lock_delay_ms = 0               # default lock-delay after a session expiry
//! lease_ms.batch/ = 30000         # batch jobs hold at most 30 s
//! lock_delay_ms.payments/ = 5000  # payments locks wait 5 s after their holder's session dies
//! ```
//! Values must be within the host's limits (lease <= 24 h, lock-delay <= 60 s).
#![no_std]

use holdfast_policy_sdk::prelude::*;

/// The lease-rules policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeaseRules;

/// Parsed config: `(setting, prefix, value)` rules; the defaults have prefix "".
#[derive(Clone, Debug, Default)]
pub struct Rules<'a> {
    rules: Vec<(&'a str, &'a str, u64)>,
}

impl<'a> Rules<'a> {
    /// Parses and validates the binding config.
    pub fn parse(bytes: &'a [u8]) -> Result<Rules<'a>, ConfigError> {
        let config = Config::parse(bytes)?;
        let mut rules = Vec::new();
        for &(key, value) in config.entries() {
            let (setting, prefix) = key.split_once('.').unwrap_or((key, ""));
            let max = match setting {
                "lease_ms" => limits::LEASE_MS_MAX,
                "lock_delay_ms" => limits::LOCK_DELAY_MS_MAX,
                _ => return Err(ConfigError::new(format!("unknown key `{key}`"))),
            };
            if key.ends_with('.') {
                return Err(ConfigError::new(format!(
                    "`{key}`: empty prefix (use `{setting}`)"
                )));
            }
            let value = holdfast_policy_sdk::config::parse_u64(value)
                .map_err(|message| ConfigError::new(format!("{key}: {message}")))?;
            if value > max {
                return Err(ConfigError::new(format!(
                    "{key}: {value} exceeds the host limit {max}"
                )));
            }
            rules.push((setting, prefix, value));
        }
        Ok(Rules { rules })
    }

    /// The value of `setting` for lock `name`: longest matching prefix, later lines winning
    /// ties; 0 when nothing matches.
    pub fn value(&self, setting: &str, name: &str) -> u64 {
        let mut best: Option<(usize, u64)> = None;
        for &(rule_setting, prefix, value) in &self.rules {
            if rule_setting == setting
                && name.starts_with(prefix)
                && best.is_none_or(|(length, _)| prefix.len() >= length)
            {
                best = Some((prefix.len(), value));
            }
        }
        best.map_or(0, |(_, value)| value)
    }
}

impl Policy for LeaseRules {
    fn init(&self, req: &InitRequest) -> Result<(), String> {
        Rules::parse(&req.config)?;
        Ok(())
    }

    fn lease_for(&self, req: &LeaseForRequest) -> LeaseForReply {
        let rules = Rules::parse(&req.config).expect("config validated by init");
        let name = &req.lock_request().name;
        LeaseForReply::new(
            rules.value("lease_ms", name),
            rules.value("lock_delay_ms", name),
        )
    }

    fn on_session_expire(&self, req: &OnSessionExpireRequest) -> OnSessionExpireReply {
        let rules = Rules::parse(&req.config).expect("config validated by init");
        OnSessionExpireReply {
            holds: req
                .held
                .iter()
                .map(|held| HoldExpiry {
                    lock_delay_ms: rules.value("lock_delay_ms", &held.name),
                })
                .collect(),
        }
    }
}

export_policy!(LeaseRules, [init, lease_for, on_session_expire]);

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_policy_sdk::testing::{self, lock_request};

    const CONFIG: &str = "\
lease_ms = 600000
lease_ms.batch/ = 30000
lease_ms.batch/long/ = 3600000
lock_delay_ms.payments/ = 5000
";

    fn lease(name: &str) -> (u64, u64) {
        let req =
            testing::lease_for_request(lock_request(name, Mode::Exclusive)).with_config(CONFIG);
        let reply = testing::lease_for::<LeaseRules>(&req);
        (reply.lease_ms, reply.lock_delay_ms)
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(lease("batch/nightly"), (30_000, 0));
        assert_eq!(lease("batch/long/reindex"), (3_600_000, 0));
        assert_eq!(lease("payments/ledger"), (600_000, 5_000));
        assert_eq!(lease("other"), (600_000, 0));
    }

    #[test]
    fn empty_config_is_the_builtin_default() {
        let req = testing::lease_for_request(lock_request("batch/x", Mode::Shared));
        let reply = testing::lease_for::<LeaseRules>(&req);
        assert_eq!((reply.lease_ms, reply.lock_delay_ms), (0, 0));
    }

    #[test]
    fn config_is_validated() {
        assert!(testing::init::<LeaseRules>(CONFIG, "").ok);
        assert!(!testing::init::<LeaseRules>("lease_ms.batch/ = 30s", "").ok);
        assert!(!testing::init::<LeaseRules>("lease_seconds = 3", "").ok);
        assert!(!testing::init::<LeaseRules>("lock_delay_ms.x/ = 60001", "").ok);
        assert!(!testing::init::<LeaseRules>("lease_ms.x/ = 86400001", "").ok);
        assert!(!testing::init::<LeaseRules>("lease_ms. = 5", "").ok);
    }

    #[test]
    fn session_expiry_applies_current_lock_delays() {
        let held = |name: &str| HeldLock {
            name: name.into(),
            token: 1,
            mode: Mode::Exclusive as i32,
            since_ms: 0,
            lock_delay_ms: 0,
        };
        let req = OnSessionExpireRequest {
            held: vec![held("payments/a"), held("batch/b")],
            ..OnSessionExpireRequest::default()
        }
        .with_config(CONFIG);
        let reply = testing::on_session_expire::<LeaseRules>(&req);
        let delays: Vec<u64> = reply.holds.iter().map(|hold| hold.lock_delay_ms).collect();
        assert_eq!(delays, [5_000, 0]);
    }
}
