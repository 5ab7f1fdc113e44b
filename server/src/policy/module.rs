//! Deploy-time checking and compilation of a policy module ([`PolicyModule::compile`]).
//!
//! The static checks are `holdfast_policy_abi::check` (shared with `holdfast-policy-check`):
//! size cap; validation with exactly Wasm 1.0 +
//! mutable-globals and no floats; imports ⊆ {`holdfast.debug_log`}; exports `memory`,
//! `holdfast_abi_v1`, `holdfast_alloc`, known hooks only, with their signatures; no start
//! function; memory and tables within the host's limits; the `holdfast:policy-abi-version`
//! and `holdfast:policy-meta` sections, whose `hooks=` must equal the exported hooks. Only
//! then is the module compiled by the policy engine and pre-linked with the host import.

use std::collections::BTreeSet;
use std::fmt;

pub use holdfast_core::POLICY_ABI_LIMITS;
pub use holdfast_policy_abi::{AbiError, Hook};
use sha2::{Digest, Sha256};
use wasmtime::{Engine, InstancePre, Linker, Module, ModuleExport};

use super::guest::{HostState, link_debug_log};

/// Why a module was rejected at deploy. Messages are for operators; never replicate them
/// (the engine's text is version-specific).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The module breaks ABI v1 or the host's limits (one [`AbiError`] variant per kind).
    #[error("policy module rejected: {0}")]
    Abi(#[from] AbiError),
    /// The engine refused to compile or pre-link a module that passed the static checks.
    #[error("policy module failed to compile: {0}")]
    Compile(String),
}

/// A checked, compiled policy module, ready to instantiate (one instance per log entry).
pub struct PolicyModule {
    pub(super) instance_pre: InstancePre<HostState>,
    pub(super) engine: Engine,
    hooks: BTreeSet<Hook>,
    name: String,
    version: String,
    sha256: [u8; 32],
    /// Export handles resolved once at compile time, so an instance per entry finds its
    /// memory and functions without looking names up.
    pub(super) exports: ExportIndexes,
}

/// Pre-resolved exports of a policy module.
pub(super) struct ExportIndexes {
    pub(super) memory: ModuleExport,
    pub(super) alloc: ModuleExport,
    /// By `Hook as usize`; `None` for hooks the module does not export.
    pub(super) hooks: [Option<ModuleExport>; Hook::ALL.len()],
}

impl fmt::Debug for PolicyModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyModule")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("hooks", &self.hooks)
            .field("sha256", &hex(&self.sha256))
            .finish_non_exhaustive()
    }
}

impl PolicyModule {
    /// Checks `bytes` against ABI v1 and compiles them with `engine` (built by
    /// [`policy_engine`](super::engine::policy_engine)).
    pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<PolicyModule, PolicyError> {
        let checked = holdfast_policy_abi::check(bytes, &POLICY_ABI_LIMITS)?;
        let module = Module::new(engine, bytes)
            .map_err(|error| PolicyError::Compile(format!("{error:#}")))?;
        let mut linker = Linker::new(engine);
        link_debug_log(&mut linker).map_err(|error| PolicyError::Compile(format!("{error:#}")))?;
        let instance_pre = linker
            .instantiate_pre(&module)
            .map_err(|error| PolicyError::Compile(format!("{error:#}")))?;
        let export = |name: &str| {
            module
                .get_export_index(name)
                .ok_or_else(|| PolicyError::Compile(format!("export {name} not found")))
        };
        let exports = ExportIndexes {
            memory: export("memory")?,
            alloc: export("holdfast_alloc")?,
            hooks: Hook::ALL.map(|hook| {
                checked
                    .hooks
                    .contains(&hook)
                    .then(|| module.get_export_index(hook.export_name()))
                    .flatten()
            }),
        };
        Ok(PolicyModule {
            exports,
            instance_pre,
            engine: engine.clone(),
            hooks: checked.hooks,
            name: checked.name,
            version: checked.version,
            sha256: Sha256::digest(bytes).into(),
        })
    }

    /// Whether the module exports `hook` (a missing hook means the built-in behaviour).
    pub fn exports(&self, hook: Hook) -> bool {
        self.hooks.contains(&hook)
    }

    /// The exported hooks.
    pub fn hooks(&self) -> &BTreeSet<Hook> {
        &self.hooks
    }

    /// `name` from the module's metadata.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `version` from the module's metadata.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// SHA-256 of the module bytes (its identity in the module cache and in state).
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
