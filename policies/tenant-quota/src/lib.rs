//! `tenant-quota`: admission by the session's `tenant` label.
//!
//! A request is denied, with a reason naming the tenant and the limit, when
//! - the session has no `tenant` label and `require_tenant = true` (the default);
//! - the lock name does not start with one of the tenant's allowed prefixes;
//! - the tenant already holds `max_holds` locks under the binding's prefix;
//! - the request would queue (the lock is not free for it and `wait_timeout_ms > 0`) and the
//!   tenant already has `max_waits` queued requests under the binding's prefix.
//!
//! Counts come from the request's `counters` (the host counts holds and waits per tenant over
//! the locks under the binding prefix). Hand-offs are not re-checked: a queued request was
//! admitted when it queued.
//!
//! Config (`key = value` lines):
//! ```text
//! require_tenant = true           # deny sessions without a tenant label (default true)
//! max_holds = 100                 # defaults for every tenant (absent = unlimited)
//! max_waits = 100
//! prefixes = tenants/{tenant}/    # allowed lock-name prefixes, comma-separated;
//!                                 # {tenant} is replaced by the tenant; absent = any name
//! tenant.acme.max_holds = 5       # per-tenant overrides of the three settings above
//! tenant.acme.max_waits = 10
//! tenant.acme.prefixes = acme/, shared/
//! ```
#![no_std]

use holdfast_policy_sdk::prelude::*;

/// The tenant-quota policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct TenantQuota;

/// The limits of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRules {
    pub max_holds: Option<u64>,
    pub max_waits: Option<u64>,
    /// Allowed prefixes with `{tenant}` substituted; `None` = any name.
    pub prefixes: Option<Vec<String>>,
}

/// Parsed config.
#[derive(Clone, Debug)]
pub struct Settings<'a> {
    config: Config<'a>,
    require_tenant: bool,
}

impl<'a> Settings<'a> {
    /// Parses and validates the binding config.
    pub fn parse(bytes: &'a [u8]) -> Result<Settings<'a>, ConfigError> {
        let config = Config::parse(bytes)?;
        for &(key, value) in config.entries() {
            let setting = match key.strip_prefix("tenant.") {
                Some(rest) => match rest.rsplit_once('.') {
                    Some((tenant, setting)) if !tenant.is_empty() => setting,
                    _ => {
                        return Err(ConfigError::new(format!(
                            "`{key}`: expected tenant.NAME.SETTING"
                        )));
                    }
                },
                None if key == "require_tenant" => continue,
                None => key,
            };
            match setting {
                "max_holds" | "max_waits" => {
                    holdfast_policy_sdk::config::parse_u64(value)
                        .map_err(|message| ConfigError::new(format!("{key}: {message}")))?;
                }
                "prefixes" => {}
                _ => return Err(ConfigError::new(format!("unknown key `{key}`"))),
            }
        }
        let require_tenant = config.bool_or("require_tenant", true)?;
        Ok(Settings {
            config,
            require_tenant,
        })
    }

    /// The rules for `tenant`: its overrides, else the defaults.
    pub fn rules(&self, tenant: &str) -> TenantRules {
        let lookup = |setting: &str| {
            let mut specific = String::from("tenant.");
            specific.push_str(tenant);
            specific.push('.');
            specific.push_str(setting);
            self.config
                .get(&specific)
                .or_else(|| self.config.get(setting))
        };
        let number = |setting: &str| {
            lookup(setting).map(|value| {
                holdfast_policy_sdk::config::parse_u64(value).expect("validated by parse")
            })
        };
        TenantRules {
            max_holds: number("max_holds"),
            max_waits: number("max_waits"),
            prefixes: lookup("prefixes").map(|value| {
                holdfast_policy_sdk::config::split_list(value)
                    .into_iter()
                    .map(|prefix| prefix.replace("{tenant}", tenant))
                    .collect()
            }),
        }
    }
}

/// Whether a request for `request` would be granted right away (so it cannot queue).
fn grantable_now(req: &AdmitRequest) -> bool {
    if !req.waiters.is_empty() || req.waiters_truncated > 0 {
        return false;
    }
    let mut fit = builtin::Fit::new(&req.holders, req.lock_request().max_holders);
    fit.admit(req.lock_request().mode())
}

impl Policy for TenantQuota {
    fn init(&self, req: &InitRequest) -> Result<(), String> {
        Settings::parse(&req.config)?;
        Ok(())
    }

    fn admit(&self, req: &AdmitRequest) -> AdmitReply {
        let settings = Settings::parse(&req.config).expect("config validated by init");
        let name = &req.lock_request().name;
        let Some(tenant) = req.label("tenant").filter(|tenant| !tenant.is_empty()) else {
            return if settings.require_tenant {
                AdmitReply::deny("session has no `tenant` label; this namespace requires one")
            } else {
                AdmitReply::grant_or_queue()
            };
        };
        let rules = settings.rules(tenant);
        if let Some(prefixes) = &rules.prefixes
            && !prefixes
                .iter()
                .any(|prefix| name.starts_with(prefix.as_str()))
        {
            return AdmitReply::deny(format!(
                "tenant {tenant} may not use lock {name} (allowed prefixes: {})",
                prefixes.join(", ")
            ));
        }
        let counters = req.counters();
        if let Some(max) = rules.max_holds
            && u64::from(counters.tenant_holds) >= max
        {
            return AdmitReply::deny(format!(
                "tenant {tenant} holds {} locks, its limit is {max}",
                counters.tenant_holds
            ));
        }
        let would_queue = req.lock_request().wait_timeout_ms > 0 && !grantable_now(req);
        if would_queue
            && let Some(max) = rules.max_waits
            && u64::from(counters.tenant_waits) >= max
        {
            return AdmitReply::deny(format!(
                "tenant {tenant} has {} queued requests, its limit is {max}",
                counters.tenant_waits
            ));
        }
        AdmitReply::grant_or_queue()
    }
}

export_policy!(TenantQuota, [init, admit]);

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_policy_sdk::testing::{self, holder, lock_request, waiter};

    const CONFIG: &str = "\
max_holds = 3
max_waits = 2
prefixes = tenants/{tenant}/
tenant.acme.max_holds = 5
tenant.acme.prefixes = acme/, shared/
";

    fn request(name: &str, tenant: &str) -> AdmitRequest {
        let labels: &[(&str, &str)] = if tenant.is_empty() {
            &[]
        } else {
            &[("tenant", tenant)]
        };
        testing::admit_request(lock_request(name, Mode::Exclusive), "p", labels).with_config(CONFIG)
    }

    fn reason(reply: AdmitReply) -> String {
        assert!(reply.is_deny(), "expected a deny");
        reply.reason
    }

    #[test]
    fn config_is_validated() {
        assert!(testing::init::<TenantQuota>(CONFIG, "").ok);
        assert!(testing::init::<TenantQuota>("", "").ok);
        assert!(!testing::init::<TenantQuota>("max_holds = lots", "").ok);
        assert!(!testing::init::<TenantQuota>("tenant.acme.colour = red", "").ok);
        assert!(!testing::init::<TenantQuota>("tenant.max_holds = 1", "").ok);
        assert!(!testing::init::<TenantQuota>("require_tenant = maybe", "").ok);
    }

    #[test]
    fn sessions_without_tenant() {
        let reply = testing::admit::<TenantQuota>(&request("tenants/x/a", ""));
        assert!(reason(reply).contains("no `tenant` label"));
        let lenient = request("x", "").with_config("require_tenant = false");
        assert!(!testing::admit::<TenantQuota>(&lenient).is_deny());
    }

    #[test]
    fn lock_name_prefixes() {
        assert!(
            !testing::admit::<TenantQuota>(&request("tenants/globex/jobs", "globex")).is_deny()
        );
        let reply = testing::admit::<TenantQuota>(&request("tenants/acme/jobs", "globex"));
        assert_eq!(
            reason(reply),
            "tenant globex may not use lock tenants/acme/jobs (allowed prefixes: tenants/globex/)"
        );
        assert!(!testing::admit::<TenantQuota>(&request("shared/cron", "acme")).is_deny());
        let reply = testing::admit::<TenantQuota>(&request("tenants/acme/jobs", "acme"));
        assert!(reason(reply).contains("allowed prefixes: acme/, shared/"));
    }

    #[test]
    fn max_holds_per_tenant() {
        let at_limit = request("tenants/globex/a", "globex").with_tenant_counts(3, 0);
        assert_eq!(
            reason(testing::admit::<TenantQuota>(&at_limit)),
            "tenant globex holds 3 locks, its limit is 3"
        );
        let below = request("tenants/globex/a", "globex").with_tenant_counts(2, 0);
        assert!(!testing::admit::<TenantQuota>(&below).is_deny());
        // acme's override: 5.
        let acme = request("acme/a", "acme").with_tenant_counts(4, 0);
        assert!(!testing::admit::<TenantQuota>(&acme).is_deny());
    }

    #[test]
    fn max_waits_only_when_the_request_would_queue() {
        let busy = request("tenants/globex/a", "globex")
            .with_tenant_counts(0, 2)
            .with_holders(vec![holder(9, Mode::Exclusive)]);
        assert_eq!(
            reason(testing::admit::<TenantQuota>(&busy)),
            "tenant globex has 2 queued requests, its limit is 2"
        );
        // Free lock: granted at once, the wait quota does not apply.
        let free = request("tenants/globex/a", "globex").with_tenant_counts(0, 2);
        assert!(!testing::admit::<TenantQuota>(&free).is_deny());
        // Try-lock never queues.
        let mut try_lock = busy.clone();
        try_lock.request.as_mut().unwrap().wait_timeout_ms = 0;
        assert!(!testing::admit::<TenantQuota>(&try_lock).is_deny());
        // Free of holders but with waiters: would queue.
        let queued = request("tenants/globex/a", "globex")
            .with_tenant_counts(0, 2)
            .with_waiters(vec![waiter(5, Mode::Exclusive, 0, 0)]);
        assert!(testing::admit::<TenantQuota>(&queued).is_deny());
    }
}
