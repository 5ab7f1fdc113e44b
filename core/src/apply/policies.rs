//! Policies in apply: deploy, bind and unbind; routing a lock to the binding of its longest
//! matching prefix; asking a policy (admission, lease) through the host's runtime; and counting
//! what went wrong (faults) or differed (a shadow binding's disagreements).
//!
//! Invariants kept: a module is checked again here (ABI, then `PolicyHost::prepare`), so a
//! deploy succeeds or fails identically on every replica; a binding names a deployed version
//! and is checked by the module's `init` before it takes effect; a bound version is never
//! evicted; every guest failure the runtime reports, and every clamped answer, is counted on
//! its binding and reported as a `PolicyFault` event; a shadow binding is asked the same
//! question and only its agreement is recorded.

use std::collections::BTreeMap;

use holdfast_policy_sdk::Hook;
use sha2::{Digest, Sha256};

use super::{Applier, Route, invalid};
use crate::limits;
use crate::model::{AcquireRequest, BindMode, Event, Outcome, Rejection, SessionId};
use crate::policy::{
    self, AdmitDecision, AdmitInput, BoundModule, Counters, POLICY_ABI_LIMITS, PolicyHost,
    PolicyRuntime,
};
use crate::state::{BUILTIN_POLICY, Binding, Bound, Deployed, State, policy_name_is_valid};

impl<H: PolicyHost + ?Sized> Applier<'_, H> {
    /// The enforcing and the shadow binding deciding for lock `name` (None: no binding).
    pub(super) fn routes(&self, name: &str) -> (Option<Route>, Option<Route>) {
        let route = |mode| {
            self.state.binding_for(name, mode).map(|(prefix, _)| Route {
                prefix: prefix.to_string(),
                mode,
            })
        };
        (route(BindMode::Enforce), route(BindMode::Shadow))
    }

    /// Asks the runtime of `route` (None = the host's default) through `ask`, which gets the
    /// runtime, the state and, for a deployed module, the prefix to count under. Guest
    /// failures the runtime reports are counted on the binding and reported as events.
    pub(super) fn run<R>(
        &mut self,
        route: Option<&Route>,
        name: &str,
        hook: Hook,
        ask: impl FnOnce(&mut dyn PolicyRuntime, &State, Option<&str>) -> R,
    ) -> R {
        let state: &State = self.state;
        let module = route.and_then(|route| bound_module(state, route));
        let counting = module.as_ref().map(|module| module.prefix);
        let runtime = self.host.runtime(module.as_ref());
        let before = runtime.fault_count();
        let result = ask(&mut *runtime, state, counting);
        let faults = runtime.fault_count().saturating_sub(before);
        if faults > 0 {
            self.count_fault(route, name, hook, faults);
        }
        result
    }

    /// Counts `count` policy faults (fallbacks used) on `route`'s binding.
    pub(super) fn count_fault(
        &mut self,
        route: Option<&Route>,
        name: &str,
        hook: Hook,
        count: u64,
    ) {
        self.state.policy_fault_count += count;
        let Some(route) = route else {
            return;
        };
        let bound = self.bound_mut(route);
        *bound.faults.entry(hook.name().to_string()).or_default() += count;
        let (policy, version) = (bound.policy.clone(), bound.version);
        self.events.push(Event::PolicyFault {
            name: name.to_string(),
            prefix: route.prefix.clone(),
            policy,
            version,
            mode: route.mode,
            hook: hook.name().to_string(),
        });
    }

    /// Records one shadow comparison on `route`'s binding.
    pub(super) fn compare(&mut self, route: &Route, name: &str, hook: Hook, agree: bool) {
        let bound = self.bound_mut(route);
        bound.compared += 1;
        if agree {
            return;
        }
        bound.disagreements += 1;
        let (policy, version) = (bound.policy.clone(), bound.version);
        self.events.push(Event::PolicyDisagreement {
            name: name.to_string(),
            prefix: route.prefix.clone(),
            policy,
            version,
            hook: hook.name().to_string(),
        });
    }

    pub(super) fn bound_mut(&mut self, route: &Route) -> &mut Bound {
        self.state
            .bindings
            .get_mut(&route.prefix)
            .and_then(|binding| binding.slot(route.mode).as_mut())
            .expect("a routed binding exists")
    }

    pub(super) fn deploy_policy(&mut self, name: &str, wasm: &[u8]) -> Outcome {
        if !policy_name_is_valid(name) || name == BUILTIN_POLICY {
            let reason = format!(
                "must be 1..={} bytes of [a-z0-9._-] starting with a letter or digit, not {BUILTIN_POLICY:?}",
                limits::POLICY_NAME_BYTES_MAX
            );
            return invalid("name", reason);
        }
        let info = match holdfast_policy_abi::check(wasm, &POLICY_ABI_LIMITS) {
            Ok(info) => info,
            Err(error) => return invalid("wasm", error.to_string()),
        };
        let sha256: [u8; 32] = Sha256::digest(wasm).into();
        let versions = self.state.policies.get(name);
        if let Some((&version, newest)) = versions.and_then(|versions| versions.last_key_value())
            && newest.sha256 == sha256
        {
            return Outcome::PolicyDeployed {
                name: name.to_string(),
                version,
                sha256,
                created: false,
            };
        }
        if versions.is_none() && self.state.policies.len() >= limits::POLICIES_MAX {
            return Outcome::Rejected(Rejection::LimitExceeded {
                limit: "policies_max".to_string(),
            });
        }
        let version = versions
            .and_then(|versions| versions.last_key_value())
            .map_or(1, |(newest, _)| newest + 1);
        let evict = match versions {
            Some(versions) if versions.len() >= limits::POLICY_VERSIONS_KEPT => {
                match versions
                    .keys()
                    .find(|&&old| !self.state.is_bound(name, old))
                {
                    Some(&old) => Some(old),
                    None => {
                        return Outcome::Rejected(Rejection::LimitExceeded {
                            limit: "policy_versions_kept".to_string(),
                        });
                    }
                }
            }
            _ => None,
        };
        if let Err(reason) = self.host.prepare(&sha256, wasm) {
            return invalid("wasm", reason);
        }
        let deployed = Deployed {
            sha256,
            wasm: wasm.to_vec(),
            deployed_at: self.log_index,
            meta_name: info.name,
            meta_version: info.version,
            hooks: info
                .hooks
                .iter()
                .map(|hook| hook.name().to_string())
                .collect(),
        };
        let versions = self
            .state
            .policies
            .get_or_insert_with(name.to_string(), BTreeMap::new);
        if let Some(old) = evict {
            versions.remove(&old);
        }
        assert!(versions.insert(version, deployed).is_none());
        assert!(versions.len() <= limits::POLICY_VERSIONS_KEPT);
        self.events.push(Event::PolicyDeployed {
            name: name.to_string(),
            version,
        });
        Outcome::PolicyDeployed {
            name: name.to_string(),
            version,
            sha256,
            created: true,
        }
    }

    pub(super) fn bind_policy(
        &mut self,
        prefix: &str,
        policy: &str,
        version: u64,
        config: &[u8],
        mode: BindMode,
    ) -> Outcome {
        if prefix.len() > limits::LOCK_NAME_BYTES_MAX {
            let reason = format!("must be at most {} bytes", limits::LOCK_NAME_BYTES_MAX);
            return invalid("prefix", reason);
        }
        if config.len() > limits::POLICY_CONFIG_BYTES_MAX {
            let reason = format!("must be at most {} bytes", limits::POLICY_CONFIG_BYTES_MAX);
            return invalid("config", reason);
        }
        let unknown = || {
            Outcome::Rejected(Rejection::UnknownPolicy {
                name: policy.to_string(),
                version,
            })
        };
        let version = if policy == BUILTIN_POLICY {
            if version != 0 {
                return unknown();
            }
            0
        } else {
            match self.state.policy_module(policy, version) {
                Some((version, _)) => version,
                None => return unknown(),
            }
        };
        if !self.state.bindings.contains_key(prefix)
            && self.state.bindings.len() >= limits::POLICY_BINDINGS_MAX
        {
            return Outcome::Rejected(Rejection::LimitExceeded {
                limit: "policy_bindings_max".to_string(),
            });
        }
        if policy != BUILTIN_POLICY {
            let deployed = &self.state.policies[policy][&version];
            let module = BoundModule {
                policy,
                version,
                sha256: &deployed.sha256,
                wasm: &deployed.wasm,
                config,
                prefix,
            };
            if let Err(reason) = self.host.runtime(Some(&module)).init(config, prefix) {
                let reason = format!(
                    "policy {policy}@{version} refused it: {}",
                    policy::truncate_reason(reason)
                );
                return invalid("config", reason);
            }
        }
        let bound = Bound {
            policy: policy.to_string(),
            version,
            config: config.to_vec(),
            bound_at: self.log_index,
            faults: BTreeMap::new(),
            disagreements: 0,
            compared: 0,
        };
        *self
            .state
            .bindings
            .get_or_insert_with(prefix.to_string(), Binding::default)
            .slot(mode) = Some(bound);
        self.state.refresh_counts(prefix);
        self.events.push(Event::PolicyBound {
            prefix: prefix.to_string(),
            policy: policy.to_string(),
            version,
            mode,
        });
        Outcome::PolicyBound {
            prefix: prefix.to_string(),
            policy: policy.to_string(),
            version,
            mode,
        }
    }

    pub(super) fn unbind(&mut self, prefix: &str, mode: BindMode) -> Outcome {
        let Some(binding) = self.state.bindings.get_mut(prefix) else {
            return Outcome::Rejected(Rejection::NotBound {
                prefix: prefix.to_string(),
                mode,
            });
        };
        if binding.slot(mode).take().is_none() {
            return Outcome::Rejected(Rejection::NotBound {
                prefix: prefix.to_string(),
                mode,
            });
        }
        if binding.enforce.is_none() && binding.shadow.is_none() {
            self.state.bindings.remove(prefix);
        }
        self.state.refresh_counts(prefix);
        self.events.push(Event::PolicyUnbound {
            prefix: prefix.to_string(),
            mode,
        });
        Outcome::PolicyUnbound {
            prefix: prefix.to_string(),
            mode,
        }
    }

    pub(super) fn ask_admit(&mut self, request: &AcquireRequest) -> AdmitDecision {
        let (enforce, shadow) = self.routes(&request.name);
        let log_index = self.log_index;
        let ask = |runtime: &mut dyn PolicyRuntime, state: &State, counting: Option<&str>| {
            runtime.admit(&admit_input(state, request, counting, log_index))
        };
        let decision = self.run(enforce.as_ref(), &request.name, Hook::Admit, ask);
        if let Some(shadow) = shadow {
            let candidate = self.run(Some(&shadow), &request.name, Hook::Admit, ask);
            let agree = matches!(
                (&decision, &candidate),
                (
                    AdmitDecision::Admit | AdmitDecision::AdmitWithPriority { .. },
                    AdmitDecision::Admit | AdmitDecision::AdmitWithPriority { .. }
                ) | (AdmitDecision::Deny { .. }, AdmitDecision::Deny { .. })
            );
            self.compare(&shadow, &request.name, Hook::Admit, agree);
        }
        decision
    }

    /// The lease for a grant (clamped into the limits; clamping counts as a fault).
    pub(super) fn ask_lease(&mut self, request: &AcquireRequest) -> policy::LeaseDecision {
        let (enforce, shadow) = self.routes(&request.name);
        let log_index = self.log_index;
        // `lease_for` inputs carry no counters: skip counting.
        let ask = |runtime: &mut dyn PolicyRuntime, state: &State, _counting: Option<&str>| {
            runtime.lease_for(&admit_input(state, request, None, log_index))
        };
        let (lease, clamped) =
            policy::clamp_lease(self.run(enforce.as_ref(), &request.name, Hook::LeaseFor, ask));
        if clamped {
            self.count_fault(enforce.as_ref(), &request.name, Hook::LeaseFor, 1);
        }
        if let Some(shadow) = shadow {
            let (candidate, _) =
                policy::clamp_lease(self.run(Some(&shadow), &request.name, Hook::LeaseFor, ask));
            self.compare(&shadow, &request.name, Hook::LeaseFor, candidate == lease);
        }
        lease
    }
}

/// What a policy sees of an acquire request (admission, lease), built from `state`. Counters
/// are computed only for a deployed module (`counting` = its binding's prefix).
pub(super) fn admit_input<'s>(
    state: &'s State,
    request: &'s AcquireRequest,
    counting: Option<&str>,
    log_index: u64,
) -> AdmitInput<'s> {
    let lock = state.locks.get(request.name.as_str());
    let session = &state.sessions[&request.session_id];
    AdmitInput {
        request,
        principal: &session.principal,
        labels: &session.labels,
        holders: lock.map(|lock| lock.holder_views()).unwrap_or_default(),
        waiters: lock.map(|lock| lock.waiter_views()).unwrap_or_default(),
        state,
        counters: counting.map_or_else(Counters::default, |prefix| {
            counters(state, prefix, request.session_id)
        }),
        now_ms: state.now_ms,
        log_index,
    }
}

/// Holds and waits under `prefix` of `session_id`'s principal and of its tenant, as apply
/// keeps them (`state/counts.rs`).
pub(super) fn counters(state: &State, prefix: &str, session_id: SessionId) -> Counters {
    let (principal, tenant, name) = state.stakes_under(prefix, session_id);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Counters {
        principal_holds: count(principal.holds),
        principal_waits: count(principal.waits),
        tenant: name.to_string(),
        tenant_holds: count(tenant.holds),
        tenant_waits: count(tenant.waits),
    }
}

/// The deployed module a route runs (None for the built-in policy).
pub(super) fn bound_module<'s>(state: &'s State, route: &'s Route) -> Option<BoundModule<'s>> {
    let bound = state.bindings.get(&route.prefix)?.get(route.mode)?;
    if bound.policy == BUILTIN_POLICY {
        return None;
    }
    let deployed = &state.policies[&bound.policy][&bound.version];
    Some(BoundModule {
        policy: &bound.policy,
        version: bound.version,
        sha256: &deployed.sha256,
        wasm: &deployed.wasm,
        config: &bound.config,
        prefix: &route.prefix,
    })
}
