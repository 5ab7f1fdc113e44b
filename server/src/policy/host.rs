//! The policy host of the apply loop: [`ApplyPolicies`] owns the policy engine and the compiled
//! modules; [`ApplyPolicies::for_entry`] gives `core::apply` a [`PolicyHost`] for ONE entry,
//! which instantiates each bound module at most once for that entry and drops every instance
//! with it (instances never carry state from one entry to the next).

use std::collections::BTreeMap;
use std::sync::Arc;

use holdfast_core::{
    Applied, BoundModule, BuiltinFifo, Command, Entry, PolicyHost, PolicyRuntime, State,
};
use wasmtime::Engine;

use super::cache::ModuleCache;
use super::engine::{POLICY_POOL_INSTANCES, policy_engine};
use super::module::hex;
use super::runtime::WasmPolicy;

/// Most instances one entry keeps alive at once (one per bound module and config it used).
/// Beyond it the first in key order is dropped and re-created if used again, so an entry that
/// touches many bindings (a Tick expiring a session that held locks under hundreds of
/// prefixes) never exhausts the instance pool, which would stop the replica. Deterministic:
/// every replica makes the same calls in the same order, so drops the same instances.
pub const POLICY_INSTANCES_PER_ENTRY_MAX: usize = 32;
const _: () = assert!(POLICY_INSTANCES_PER_ENTRY_MAX < POLICY_POOL_INSTANCES as usize);

/// Engine and compiled-module cache of the apply loop. Its own engine (and instance pool):
/// deploy pre-checks on the API side use another, so they can never exhaust this pool.
pub struct ApplyPolicies {
    engine: Engine,
    cache: ModuleCache,
    metrics: Option<Arc<crate::metrics::PolicyMetrics>>,
}

impl ApplyPolicies {
    pub fn new() -> anyhow::Result<ApplyPolicies> {
        let engine =
            policy_engine().map_err(|error| anyhow::anyhow!("policy engine: {error:#}"))?;
        Ok(ApplyPolicies {
            engine,
            cache: ModuleCache::new(),
            metrics: None,
        })
    }

    /// The apply loop of a node that shares compiled modules with the other nodes of its
    /// process (see [`SharedModules`]): their engine, and their modules before compiling.
    pub fn sharing(shared: Arc<super::cache::SharedModules>) -> ApplyPolicies {
        ApplyPolicies {
            engine: shared.engine().clone(),
            cache: ModuleCache::sharing(shared),
            metrics: None,
        }
    }

    /// Records decision latency per hook in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::PolicyMetrics>) -> ApplyPolicies {
        self.metrics = Some(metrics);
        self
    }

    /// Applies `command` to `state` as the next log entry at cluster time `now_ms`, with a
    /// fresh host: the apply path without Raft, for tools, examples and tests.
    pub fn apply_next(&mut self, state: &mut State, now_ms: u64, command: Command) -> Applied {
        let entry = Entry {
            log_index: state.applied_index() + 1,
            now_ms,
            command,
        };
        holdfast_core::apply(state, &entry, &mut self.for_entry())
    }

    /// The host for one entry.
    pub fn for_entry(&mut self) -> EntryHost<'_> {
        EntryHost {
            engine: &self.engine,
            cache: &mut self.cache,
            builtin: BuiltinFifo,
            live: BTreeMap::new(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The policy host of one log entry. See the module docs.
///
/// Dropping it drops the entry's instances, which returns their memory to the pool (a page
/// scan and reset, about 2 µs an instance): the apply loop calls [`EntryHost::retire`] under
/// the state lock instead and drops what it returns once the lock is released and the
/// proposer has its answer.
pub struct EntryHost<'a> {
    engine: &'a Engine,
    cache: &'a mut ModuleCache,
    builtin: BuiltinFifo,
    /// One runtime per (module, config) used by this entry.
    live: BTreeMap<([u8; 32], Vec<u8>), WasmPolicy>,
    metrics: Option<Arc<crate::metrics::PolicyMetrics>>,
}

impl EntryHost<'_> {
    /// Ends the entry: its instances, to be dropped by the caller when it suits it. Nothing in
    /// them is read again, so when they are dropped changes no outcome.
    pub fn retire(self) -> Retired {
        Retired(self.live.into_values().collect())
    }
}

/// The instances of an entry that has been applied (see [`EntryHost::retire`]); dropping it
/// returns them to the pool.
#[must_use = "dropping it returns the instances to the pool; keep it only until the answer is sent"]
pub struct Retired(#[allow(dead_code, reason = "held to be dropped")] Vec<WasmPolicy>);

impl PolicyHost for EntryHost<'_> {
    /// Compiles the module (cached by hash). The engine and the module bytes are the same on
    /// every replica, so the answer is too.
    fn prepare(&mut self, _sha256: &[u8; 32], wasm: &[u8]) -> Result<(), String> {
        self.cache
            .get_or_compile(self.engine, wasm)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    fn runtime(&mut self, module: Option<&BoundModule<'_>>) -> &mut dyn PolicyRuntime {
        let Some(module) = module else {
            return &mut self.builtin;
        };
        let key = (*module.sha256, module.config.to_vec());
        if !self.live.contains_key(&key) && self.live.len() >= POLICY_INSTANCES_PER_ENTRY_MAX {
            self.live.pop_first();
        }
        let (engine, cache, metrics) = (self.engine, &mut *self.cache, &self.metrics);
        self.live.entry(key).or_insert_with(|| {
            // Looked up by the hash state already holds: hashing the module bytes for every
            // entry would cost more than the policy call. It compiled when it was deployed,
            // with this engine, so failing now is environmental (or a changed engine, which
            // must be treated like a log-format change).
            let compiled = match cache.get(module.sha256) {
                Some(compiled) => compiled,
                None => cache
                    .get_or_compile(engine, module.wasm)
                    .unwrap_or_else(|error| {
                        panic!(
                            "policy {}@{} (sha256 {}) was deployed but does not compile here \
                         (fail-stop): {error}",
                            module.policy,
                            module.version,
                            hex(module.sha256)
                        )
                    }),
            };
            WasmPolicy::new(compiled, Arc::from(module.config)).with_metrics(metrics.clone())
        })
    }
}
