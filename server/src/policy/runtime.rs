//! [`WasmPolicy`]: a compiled policy module run as the [`PolicyRuntime`] of ONE log entry.
//!
//! The shell creates one `WasmPolicy` per entry; it instantiates the module lazily on the
//! first hook call that needs wasm (fresh `Store` + instance, never reused across entries) and
//! may serve several hooks of that entry from the same instance (the SDK keeps no state). Each
//! call follows `docs/policy-abi.md` §4: encode the request, `holdfast_alloc`, write the input,
//! `set_fuel` right before the hook, call, bounds-check and decode the reply, validate it
//! (§6). Any guest failure — trap, out of fuel, memory limit, bad pointer or length,
//! undecodable or invalid reply — gives the hook's documented fallback and is counted
//! ([`PolicyRuntime::fault_count`]); the faulted instance is dropped and a later hook of the same
//! entry starts a fresh one. A hook the module does not export runs [`BuiltinFifo`] without
//! touching wasm. Environmental failures (instantiation failing for a reason that is not a
//! guest trap, an exhausted pool, the host failing to allocate guest memory) panic: a replica
//! must stop rather than turn them into a decision. Nothing host-dependent reaches an output.

use std::collections::BTreeMap;
use std::sync::Arc;

use holdfast_core::{
    AdmitDecision, AdmitInput, BuiltinFifo, CandidateView, ElectDecision, ElectInput, ExpireInput,
    HolderView, LeaseDecision, Mode, NextInput, PolicyRuntime, WaiterView, limits,
};
use holdfast_proto::policy::v1 as pb;
use prost::Message;
use wasmtime::{Instance, Memory, Store, Trap, TypedFunc};

use super::engine::{
    POLICY_FUEL_PER_ALLOC, POLICY_FUEL_PER_HOOK, POLICY_LIST_MAX, POLICY_REPLY_BYTES_MAX,
};
use super::guest::{GuestFault, HostState, classify};
use super::module::{Hook, PolicyModule};
use super::requests::{
    admit_request, choose_next_request, identity, labels, lease_for_request, mode,
};

/// Deny reason when `admit` fails (fail closed).
pub const POLICY_ERROR_REASON: &str = "POLICY_ERROR";
/// Deny reason used when a policy denies with an empty reason.
pub const EMPTY_DENY_REASON: &str = "denied by policy";
/// Fuel given to instantiation, which is never metered (fuel use there is platform-dependent,
/// wasmtime #14331); it is bounded by the module's size since there is no start function.
const UNMETERED_FUEL: u64 = i64::MAX as u64;

/// A live instance for the current entry.
struct Live {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    instance: Instance,
    /// Hook functions typed on first use in this instance, by `Hook as usize`.
    hooks: [Option<TypedFunc<(i32, i32), i64>>; Hook::ALL.len()],
}

/// A policy module as the [`PolicyRuntime`] of one log entry. See the module docs.
pub struct WasmPolicy {
    module: Arc<PolicyModule>,
    config: Arc<[u8]>,
    fuel_per_hook: u64,
    live: Option<Live>,
    faults: BTreeMap<Hook, u64>,
    last_fault: Option<(Hook, GuestFault)>,
    metrics: Option<Arc<crate::metrics::PolicyMetrics>>,
}

impl WasmPolicy {
    /// A policy for one entry: `module` with its binding's `config` bytes.
    pub fn new(module: Arc<PolicyModule>, config: Arc<[u8]>) -> WasmPolicy {
        WasmPolicy {
            module,
            config,
            fuel_per_hook: POLICY_FUEL_PER_HOOK,
            live: None,
            faults: BTreeMap::new(),
            last_fault: None,
            metrics: None,
        }
    }

    /// Records every hook's decision latency (not a replicated value: metrics only).
    pub fn with_metrics(mut self, metrics: Option<Arc<crate::metrics::PolicyMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs every hook with `fuel` instead of `POLICY_FUEL_PER_HOOK` (deploy pre-checks use
    /// a fraction of the budget, so a module that passes them has headroom in apply).
    pub fn with_fuel_per_hook(mut self, fuel: u64) -> WasmPolicy {
        self.fuel_per_hook = fuel;
        self
    }

    /// Guest failures so far, per hook.
    pub fn faults(&self) -> &BTreeMap<Hook, u64> {
        &self.faults
    }

    /// The most recent guest failure, for diagnostics.
    pub fn last_fault(&self) -> Option<&(Hook, GuestFault)> {
        self.last_fault.as_ref()
    }

    /// Whether this entry has a live instance (a hook needed wasm and did not fault).
    pub fn instantiated(&self) -> bool {
        self.live.is_some()
    }

    fn record_fault(&mut self, hook: Hook, fault: GuestFault) {
        tracing::debug!(policy = self.module.name(), %hook, ?fault, "policy fault, fallback applied");
        // Never reuse an instance after a fault (a trap may leave it in any state); a later
        // hook of this entry gets a fresh one.
        self.live = None;
        *self.faults.entry(hook).or_default() += 1;
        self.last_fault = Some((hook, fault));
    }

    /// The live instance, instantiating it if needed.
    fn live(&mut self) -> Result<&mut Live, GuestFault> {
        if self.live.is_none() {
            self.live = Some(instantiate(&self.module)?);
        }
        Ok(self.live.as_mut().expect("instantiated above"))
    }

    /// Runs `hook` on `request` and decodes its reply; a guest failure drops the instance.
    fn call<R: Message + Default>(
        &mut self,
        hook: Hook,
        request: &impl Message,
    ) -> Result<R, GuestFault> {
        let started = std::time::Instant::now();
        let input = request.encode_to_vec();
        let fuel = self.fuel_per_hook;
        let module = Arc::clone(&self.module);
        let reply = self
            .live()
            .and_then(|live| call_raw(&module, live, hook, &input, fuel));
        let decoded = reply
            .and_then(|reply| R::decode(reply.as_slice()).map_err(|_| GuestFault::Undecodable));
        if let Some(metrics) = &self.metrics {
            metrics.record(hook, started.elapsed());
        }
        decoded
    }

    fn init_wasm(&mut self, prefix: &str) -> Result<Result<(), String>, GuestFault> {
        let request = pb::InitRequest {
            config: self.config.to_vec(),
            binding_prefix: prefix.to_string(),
        };
        let reply: pb::InitReply = self.call(Hook::Init, &request)?;
        Ok(if reply.ok {
            Ok(())
        } else if reply.error.is_empty() {
            Err("config refused".to_string())
        } else {
            Err(reply.error)
        })
    }

    fn on_session_expire_wasm(&mut self, input: &ExpireInput<'_>) -> Result<Vec<u64>, GuestFault> {
        let kept = input.held.len().min(POLICY_LIST_MAX);
        let request = pb::OnSessionExpireRequest {
            config: self.config.to_vec(),
            now_ms: input.now_ms,
            log_index: input.log_index,
            session_id: input.session_id,
            principal: input.principal.to_string(),
            labels: labels(input.labels),
            held: input.held[..kept]
                .iter()
                .map(|held| pb::HeldLock {
                    name: held.name.clone(),
                    token: held.token,
                    mode: mode(held.mode),
                    since_ms: held.since_ms,
                    lock_delay_ms: held.lock_delay_ms,
                })
                .collect(),
            held_truncated: u32::try_from(input.held.len() - kept).unwrap_or(u32::MAX),
        };
        let reply: pb::OnSessionExpireReply = self.call(Hook::OnSessionExpire, &request)?;
        if reply.holds.is_empty() {
            // Keep the grant-time delays.
            return Ok(input.held.iter().map(|held| held.lock_delay_ms).collect());
        }
        if reply.holds.len() != kept {
            return Err(GuestFault::InvalidReply(
                "holds neither empty nor one per held lock",
            ));
        }
        // Holds past the truncation keep their grant-time delays.
        Ok(reply
            .holds
            .iter()
            .map(|hold| hold.lock_delay_ms)
            .chain(input.held[kept..].iter().map(|held| held.lock_delay_ms))
            .collect())
    }

    fn elect_wasm(&mut self, input: &ElectInput<'_>) -> Result<ElectDecision, GuestFault> {
        let candidate = |view: &CandidateView| {
            let (principal, labels) = identity(input.state, view.session_id);
            pb::Candidate {
                session_id: view.session_id,
                principal,
                labels,
                priority: view.priority,
                since_ms: view.since_ms,
                token: view.token,
            }
        };
        let kept = input.candidates.len().min(POLICY_LIST_MAX);
        let request = pb::ElectRequest {
            config: self.config.to_vec(),
            now_ms: input.now_ms,
            log_index: input.log_index,
            election: input.election.to_string(),
            candidates: input.candidates[..kept].iter().map(candidate).collect(),
            candidates_truncated: u32::try_from(input.candidates.len() - kept).unwrap_or(u32::MAX),
            incumbent: input.incumbent.as_ref().map(candidate),
        };
        let reply: pb::ElectReply = self.call(Hook::Elect, &request)?;
        let reevaluate_at_ms = (reply.reevaluate_at_ms != 0).then_some(reply.reevaluate_at_ms);
        if reevaluate_at_ms.is_some_and(|at| at <= input.now_ms) {
            return Err(GuestFault::InvalidReply(
                "reevaluate_at_ms not in the future",
            ));
        }
        match pb::ElectAction::try_from(reply.action) {
            Ok(pb::ElectAction::KeepIncumbent) if input.incumbent.is_some() => {
                Ok(ElectDecision::KeepIncumbent { reevaluate_at_ms })
            }
            Ok(pb::ElectAction::Elect) if (reply.winner as usize) < kept => {
                Ok(ElectDecision::Elect {
                    winner: reply.winner as usize,
                    preempt_grace_ms: reply.preempt_grace_ms,
                })
            }
            Ok(pb::ElectAction::KeepIncumbent) => {
                Err(GuestFault::InvalidReply("keep incumbent without one"))
            }
            Ok(pb::ElectAction::Elect) => Err(GuestFault::InvalidReply("winner out of range")),
            Ok(pb::ElectAction::Unspecified) | Err(_) => Err(GuestFault::InvalidReply(
                "elect action unspecified or unknown",
            )),
        }
    }

    fn admit_wasm(&mut self, input: &AdmitInput<'_>) -> Result<AdmitDecision, GuestFault> {
        let request = admit_request(&self.config, input);
        let reply: pb::AdmitReply = self.call(Hook::Admit, &request)?;
        match pb::Admission::try_from(reply.admission) {
            Ok(pb::Admission::GrantOrQueue) => Ok(match reply.priority {
                Some(priority) => AdmitDecision::AdmitWithPriority { priority },
                None => AdmitDecision::Admit,
            }),
            Ok(pb::Admission::Deny) => Ok(AdmitDecision::Deny {
                reason: if reply.reason.is_empty() {
                    EMPTY_DENY_REASON.to_string()
                } else {
                    reply.reason
                },
            }),
            Ok(pb::Admission::Unspecified) | Err(_) => {
                Err(GuestFault::InvalidReply("admission unspecified or unknown"))
            }
        }
    }

    fn choose_next_wasm(&mut self, input: &NextInput<'_>) -> Result<Vec<usize>, GuestFault> {
        let request = choose_next_request(&self.config, input);
        let reply: pb::ChooseNextReply = self.call(Hook::ChooseNext, &request)?;
        let waiters = &input.waiters[..input.waiters.len().min(POLICY_LIST_MAX)];
        let choice: Vec<usize> = reply.grant.iter().map(|&index| index as usize).collect();
        validate_choice(input.holders, waiters, input.max_holders, &choice)?;
        Ok(choice)
    }

    fn lease_for_wasm(&mut self, input: &AdmitInput<'_>) -> Result<LeaseDecision, GuestFault> {
        let request = lease_for_request(&self.config, input);
        let reply: pb::LeaseForReply = self.call(Hook::LeaseFor, &request)?;
        Ok(LeaseDecision {
            lease_ms: reply.lease_ms,
            lock_delay_ms: reply.lock_delay_ms,
        })
    }
}

impl PolicyRuntime for WasmPolicy {
    /// Runs `init` on the binding's config (the one this policy was created with; `config` is
    /// the same bytes). A guest failure refuses the binding.
    fn init(&mut self, config: &[u8], prefix: &str) -> Result<(), String> {
        debug_assert_eq!(config, &*self.config);
        if !self.module.exports(Hook::Init) {
            return Ok(());
        }
        self.init_wasm(prefix).unwrap_or_else(|fault| {
            self.record_fault(Hook::Init, fault.clone());
            Err(format!(
                "{POLICY_ERROR_REASON}: init failed ({})",
                fault.kind()
            ))
        })
    }

    fn fault_count(&self) -> u64 {
        self.faults.values().sum()
    }

    /// Fallback on a guest failure: keep the incumbent, or elect the earliest candidate.
    fn elect(&mut self, input: &ElectInput<'_>) -> Option<ElectDecision> {
        if !self.module.exports(Hook::Elect) {
            return None;
        }
        Some(self.elect_wasm(input).unwrap_or_else(|fault| {
            self.record_fault(Hook::Elect, fault);
            match input.incumbent {
                Some(_) => ElectDecision::KeepIncumbent {
                    reevaluate_at_ms: None,
                },
                None => ElectDecision::Elect {
                    winner: 0,
                    preempt_grace_ms: 0,
                },
            }
        }))
    }

    /// Fallback on a guest failure: `None`, the delays chosen at grant.
    fn on_session_expire(&mut self, input: &ExpireInput<'_>) -> Option<Vec<u64>> {
        if !self.module.exports(Hook::OnSessionExpire) {
            return None;
        }
        match self.on_session_expire_wasm(input) {
            Ok(delays) => Some(delays),
            Err(fault) => {
                self.record_fault(Hook::OnSessionExpire, fault);
                None
            }
        }
    }

    fn admit(&mut self, input: &AdmitInput<'_>) -> AdmitDecision {
        if !self.module.exports(Hook::Admit) {
            return BuiltinFifo.admit(input);
        }
        self.admit_wasm(input).unwrap_or_else(|fault| {
            self.record_fault(Hook::Admit, fault);
            AdmitDecision::Deny {
                reason: POLICY_ERROR_REASON.to_string(),
            }
        })
    }

    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        if !self.module.exports(Hook::ChooseNext) {
            return BuiltinFifo.choose_next(input);
        }
        self.choose_next_wasm(input).unwrap_or_else(|fault| {
            self.record_fault(Hook::ChooseNext, fault);
            BuiltinFifo.choose_next(input)
        })
    }

    fn lease_for(&mut self, input: &AdmitInput<'_>) -> LeaseDecision {
        if !self.module.exports(Hook::LeaseFor) {
            return BuiltinFifo.lease_for(input);
        }
        match self.lease_for_wasm(input) {
            Ok(decision) => {
                let clamped = LeaseDecision {
                    lease_ms: decision.lease_ms.min(limits::LEASE_MS_MAX),
                    lock_delay_ms: decision.lock_delay_ms.min(limits::LOCK_DELAY_MS_MAX),
                };
                if clamped != decision {
                    // Clamped values are used, and counted as a fault (docs/policy-abi.md §6).
                    self.record_fault(
                        Hook::LeaseFor,
                        GuestFault::InvalidReply("lease above limits"),
                    );
                }
                clamped
            }
            Err(fault) => {
                self.record_fault(Hook::LeaseFor, fault);
                LeaseDecision::default()
            }
        }
    }
}

/// A fresh store and instance. A trap during instantiation is a guest failure; anything else
/// (pool exhausted, host out of memory) is environmental and panics.
fn instantiate(module: &PolicyModule) -> Result<Live, GuestFault> {
    let mut store = Store::new(&module.engine, HostState::default());
    store.limiter(|state| &mut state.limiter);
    store
        .set_fuel(UNMETERED_FUEL)
        .expect("policy engine meters fuel");
    let instance = match module.instance_pre.instantiate(&mut store) {
        Ok(instance) => instance,
        Err(error)
            if error.downcast_ref::<Trap>().is_some() && !store.data().limiter.host_grow_failed =>
        {
            return Err(GuestFault::InstantiationTrap);
        }
        Err(error) => panic!(
            "policy host: instantiating policy module {} failed for an environmental reason \
             (fail-stop, never a policy decision): {error:#}",
            module.name()
        ),
    };
    let memory = instance
        .get_module_export(&mut store, &module.exports.memory)
        .and_then(|export| export.into_memory())
        .expect("checked at compile: memory export");
    let alloc = instance
        .get_module_export(&mut store, &module.exports.alloc)
        .and_then(|export| export.into_func())
        .and_then(|func| func.typed::<i32, i32>(&store).ok())
        .expect("checked at compile: holdfast_alloc: (i32) -> i32");
    Ok(Live {
        store,
        memory,
        alloc,
        instance,
        hooks: std::array::from_fn(|_| None),
    })
}

/// One call following the ABI's calling convention; returns the raw reply bytes.
fn call_raw(
    module: &PolicyModule,
    live: &mut Live,
    hook: Hook,
    input: &[u8],
    fuel: u64,
) -> Result<Vec<u8>, GuestFault> {
    let hook_func = match &live.hooks[hook as usize] {
        Some(func) => func.clone(),
        None => {
            let export = module.exports.hooks[hook as usize]
                .as_ref()
                .expect("only exported hooks are called");
            let func = live
                .instance
                .get_module_export(&mut live.store, export)
                .and_then(|export| export.into_func())
                .and_then(|func| func.typed::<(i32, i32), i64>(&live.store).ok())
                .expect("checked at compile: hook signature (i32, i32) -> i64");
            live.hooks[hook as usize] = Some(func.clone());
            func
        }
    };
    // Inputs are far below 2 GiB (lists truncated, lock names and labels bounded by core).
    let len = i32::try_from(input.len()).expect("policy input below 2 GiB");
    // Per-call state: the debug-log budget and the memory-limit flag (so a refused grow that
    // the guest handled in an earlier call does not label a later trap).
    live.store.data_mut().debug_lines = 0;
    live.store.data_mut().limiter.guest_over_limit = false;

    live.store
        .set_fuel(POLICY_FUEL_PER_ALLOC)
        .expect("policy engine meters fuel");
    let ptr = live
        .alloc
        .call(&mut live.store, len)
        .map_err(|error| classify(&live.store, error))?;
    live.memory
        .write(&mut live.store, ptr as u32 as usize, input)
        .map_err(|_| GuestFault::InputOutOfBounds)?;

    live.store
        .set_fuel(fuel)
        .expect("policy engine meters fuel");
    let packed = hook_func
        .call(&mut live.store, (ptr, len))
        .map_err(|error| classify(&live.store, error))? as u64;
    let (out_ptr, out_len) = ((packed >> 32) as u32, packed as u32);
    if out_len as usize > POLICY_REPLY_BYTES_MAX {
        return Err(GuestFault::ReplyTooLarge(out_len));
    }
    let mut reply = vec![0; out_len as usize];
    live.memory
        .read(&live.store, out_ptr as usize, &mut reply)
        .map_err(|_| GuestFault::ReplyOutOfBounds)?;
    Ok(reply)
}

/// Full validation of a `choose_next` answer (docs/policy-abi.md §6): indexes in range and
/// distinct, at most one per waiter, compatible with the holders, each other and
/// `max_holders`, and not empty while the lock is free. (`core::apply` checks again.)
fn validate_choice(
    holders: &[HolderView],
    waiters: &[WaiterView],
    max_holders: u32,
    choice: &[usize],
) -> Result<(), GuestFault> {
    if choice.len() > waiters.len() {
        return Err(GuestFault::InvalidReply("more grants than waiters"));
    }
    if choice.is_empty() {
        return if holders.is_empty() && !waiters.is_empty() {
            Err(GuestFault::InvalidReply(
                "empty grant while the lock is free",
            ))
        } else {
            Ok(())
        };
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut mode = holders.first().map(|holder| holder.mode);
    let capacity = u64::from(max_holders.max(1));
    for (granted, &index) in choice.iter().enumerate() {
        // Holders if this waiter is granted too: the current ones plus those granted before it.
        let count = (holders.len() + granted) as u64;
        let waiter = waiters
            .get(index)
            .ok_or(GuestFault::InvalidReply("grant index out of range"))?;
        if !seen.insert(index) {
            return Err(GuestFault::InvalidReply("grant index repeated"));
        }
        let fits = match mode {
            None => true,
            Some(Mode::Exclusive) => false,
            Some(Mode::Shared) => waiter.mode == Mode::Shared && count < capacity,
        };
        if !fits {
            return Err(GuestFault::InvalidReply("grant incompatible with holders"));
        }
        mode = Some(waiter.mode);
    }
    Ok(())
}
