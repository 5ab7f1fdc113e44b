//! What the receiving node checks before it proposes a `DeployPolicy`: the module compiles
//! with the policy engine (after the ABI v1 checks), and every exported hook runs on a sample
//! input under half the per-hook fuel budget without a guest failure. `init` runs first with
//! an empty config; if the policy refuses an empty config (it needs one), the other hooks are
//! not sampled, since they may assume a config `init` accepted. Apply re-validates the module
//! deterministically (ABI checks + compile); these sample runs only catch broken modules
//! (infinite loops, traps, memory bombs) before they reach the log.

use holdfast_core::VecMap;
use std::sync::{Arc, Mutex};

use holdfast_core::{
    AcquireRequest, AdmitInput, Counters, HolderView, Mode, NextInput, PolicyRuntime, State,
    WaiterView,
};
use wasmtime::Engine;

use super::cache::SharedModules;
use super::engine::{POLICY_FUEL_PER_HOOK, policy_engine};
use super::module::{Hook, PolicyError, PolicyModule};
use super::runtime::WasmPolicy;

/// Fuel of each sample hook call: half the real budget, so a module that passes has headroom.
pub const PRECHECK_FUEL_PER_HOOK: u64 = POLICY_FUEL_PER_HOOK / 2;

/// The deploy pre-check, with its own engine (built on first use), or the engine and compiled
/// modules its process's nodes share (the simulator's; see `cache::SharedModules`).
#[derive(Default)]
pub struct Precheck {
    engine: Mutex<Option<Engine>>,
    shared: Option<Arc<SharedModules>>,
}

/// Why a module failed the pre-check.
#[derive(Debug, thiserror::Error)]
pub enum PrecheckError {
    #[error("policy engine: {0}")]
    Engine(String),
    /// The ABI checks or the compilation refused it.
    #[error(transparent)]
    Module(#[from] PolicyError),
    /// A hook failed on its sample input.
    #[error("{0}")]
    Sample(String),
}

impl Precheck {
    /// A pre-check on the engine and modules of `shared`.
    pub fn sharing(shared: Arc<SharedModules>) -> Precheck {
        Precheck {
            engine: Mutex::new(None),
            shared: Some(shared),
        }
    }

    /// Checks `wasm`; `Err` is a message for the operator. CPU-bound (compiling takes from
    /// tens of milliseconds to seconds): call it off the async runtime.
    pub fn check(&self, wasm: &[u8]) -> Result<(), String> {
        self.check_module(wasm)
            .map(drop)
            .map_err(|error| error.to_string())
    }

    /// [`Precheck::check`], answering with the compiled module (its hooks, metadata and
    /// hash) or why it failed.
    pub fn check_module(&self, wasm: &[u8]) -> Result<Arc<PolicyModule>, PrecheckError> {
        // One check at a time (deploys are rare): concurrent checks could exhaust this
        // engine's instance pool.
        let mut slot = self.engine.lock().expect("precheck engine lock");
        let module = match &self.shared {
            Some(shared) => shared.get_or_compile(wasm)?,
            None => {
                if slot.is_none() {
                    *slot = Some(
                        policy_engine()
                            .map_err(|error| PrecheckError::Engine(format!("{error:#}")))?,
                    );
                }
                let engine = slot.as_ref().expect("built above");
                Arc::new(PolicyModule::compile(engine, wasm)?)
            }
        };
        let mut policy = WasmPolicy::new(Arc::clone(&module), Arc::from(&b""[..]))
            .with_fuel_per_hook(PRECHECK_FUEL_PER_HOOK);
        let sampled = |policy: &WasmPolicy, hook: Hook| -> Result<(), PrecheckError> {
            match policy.last_fault() {
                Some((faulted, fault)) if policy.fault_count() > 0 => {
                    Err(PrecheckError::Sample(format!(
                        "hook {faulted} failed on a sample input ({}){}",
                        fault.kind(),
                        if *faulted == hook {
                            String::new()
                        } else {
                            format!(" while sampling {hook}")
                        }
                    )))
                }
                _ => Ok(()),
            }
        };
        let accepts_empty_config = policy.init(b"", "").is_ok();
        sampled(&policy, Hook::Init)?;
        if accepts_empty_config {
            let request = AcquireRequest {
                session_id: 3,
                request_id: 1,
                name: "precheck/lock".to_string(),
                mode: Mode::Exclusive,
                max_holders: 0,
                wait_timeout_ms: 1_000,
                priority: 1,
                value: Vec::new(),
            };
            let state = State::default();
            let labels = VecMap::from_iter([("tenant".to_string(), "precheck".to_string())]);
            let holder = HolderView {
                session_id: 1,
                token: 2,
                mode: Mode::Exclusive,
                since_ms: 10,
                lease_expires_at_ms: None,
                value: Vec::new(),
                granted_by: None,
            };
            let waiters: Vec<WaiterView> = (4..7)
                .map(|session_id| WaiterView {
                    session_id,
                    mode: if session_id == 5 {
                        Mode::Shared
                    } else {
                        Mode::Exclusive
                    },
                    priority: session_id as i32 - 5,
                    queued_at_ms: session_id * 10,
                })
                .collect();
            let input = AdmitInput {
                request: &request,
                principal: "precheck",
                labels: &labels,
                holders: vec![holder],
                waiters: waiters.clone(),
                state: &state,
                counters: Counters {
                    tenant: "precheck".to_string(),
                    ..Counters::default()
                },
                now_ms: 100,
                log_index: 8,
            };
            policy.admit(&input);
            sampled(&policy, Hook::Admit)?;
            policy.lease_for(&input);
            sampled(&policy, Hook::LeaseFor)?;
            policy.choose_next(&NextInput {
                name: "precheck/lock",
                holders: &[],
                waiters: &waiters,
                max_holders: 1,
                state: &state,
                now_ms: 100,
                log_index: 8,
            });
            sampled(&policy, Hook::ChooseNext)?;
        }
        Ok(module)
    }
}
