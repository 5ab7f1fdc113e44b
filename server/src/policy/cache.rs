//! Compiled policy modules by SHA-256 of their bytes, so a later Deploy/Bind (or a replica
//! replaying the log) compiles each distinct module once; and [`SharedModules`], the same
//! across the nodes of one process that opt in (the simulator's).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

use super::module::{PolicyError, PolicyModule};

/// Compiled modules keyed by the SHA-256 of their bytes.
#[derive(Default)]
pub struct ModuleCache {
    modules: BTreeMap<[u8; 32], Arc<PolicyModule>>,
    /// Where a module this cache lacks is looked for before compiling it (None: compile).
    shared: Option<Arc<SharedModules>>,
}

/// Compiled modules shared by the nodes of one process that opt in: the simulator runs a
/// whole cluster in one process, whose nodes would otherwise compile every module once each,
/// and again at every restart — half of a simulated run's CPU went to Cranelift. One engine
/// for all of them (a module runs only on the engine that compiled it), so one instance pool:
/// fine where the nodes apply one entry at a time (the simulator's single thread). A module
/// compiles to the same code on every engine of the one configuration, so sharing changes no
/// decision. `holdfast serve` runs one node per process and shares nothing.
pub struct SharedModules {
    engine: Engine,
    modules: Mutex<BTreeMap<[u8; 32], Arc<PolicyModule>>>,
}

impl SharedModules {
    pub fn new() -> anyhow::Result<Arc<SharedModules>> {
        let engine = super::engine::policy_engine()
            .map_err(|error| anyhow::anyhow!("policy engine: {error:#}"))?;
        Ok(Arc::new(SharedModules {
            engine,
            modules: Mutex::default(),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The module for `bytes` (by hash), compiled with [`SharedModules::engine`] on first use.
    pub fn get_or_compile(&self, bytes: &[u8]) -> Result<Arc<PolicyModule>, PolicyError> {
        self.get_or_compile_hashed(Sha256::digest(bytes).into(), bytes)
    }

    /// [`SharedModules::get_or_compile`] of `bytes` whose SHA-256 is `sha256`.
    fn get_or_compile_hashed(
        &self,
        sha256: [u8; 32],
        bytes: &[u8],
    ) -> Result<Arc<PolicyModule>, PolicyError> {
        let mut modules = self.modules.lock().expect("shared modules lock");
        if let Some(module) = modules.get(&sha256) {
            return Ok(Arc::clone(module));
        }
        let module = Arc::new(PolicyModule::compile(&self.engine, bytes)?);
        modules.insert(sha256, Arc::clone(&module));
        Ok(module)
    }
}

impl ModuleCache {
    pub fn new() -> ModuleCache {
        ModuleCache::default()
    }

    /// A cache that takes modules from `shared` (compiled with `shared.engine()`) before
    /// compiling them itself.
    pub fn sharing(shared: Arc<SharedModules>) -> ModuleCache {
        ModuleCache {
            modules: BTreeMap::new(),
            shared: Some(shared),
        }
    }

    /// The compiled module for `bytes`, compiling (and caching) it on first use. Rejections are
    /// not cached.
    pub fn get_or_compile(
        &mut self,
        engine: &Engine,
        bytes: &[u8],
    ) -> Result<Arc<PolicyModule>, PolicyError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(module) = self.modules.get(&sha256) {
            return Ok(Arc::clone(module));
        }
        let module = match &self.shared {
            None => Arc::new(PolicyModule::compile(engine, bytes)?),
            Some(shared) => shared.get_or_compile_hashed(sha256, bytes)?,
        };
        self.modules.insert(sha256, Arc::clone(&module));
        Ok(module)
    }

    /// A module compiled earlier, by hash.
    pub fn get(&self, sha256: &[u8; 32]) -> Option<Arc<PolicyModule>> {
        self.modules.get(sha256).cloned()
    }

    /// Forgets a module (e.g. when no binding uses it any more).
    pub fn remove(&mut self, sha256: &[u8; 32]) -> Option<Arc<PolicyModule>> {
        self.modules.remove(sha256)
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}
