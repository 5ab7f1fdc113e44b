//! Compiled policy modules by SHA-256 of their bytes, so a later Deploy/Bind (or a replica
//! replaying the log) compiles each distinct module once.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Engine;

use super::module::{PolicyError, PolicyModule};

/// Compiled modules keyed by the SHA-256 of their bytes.
#[derive(Debug, Default)]
pub struct ModuleCache {
    modules: BTreeMap<[u8; 32], Arc<PolicyModule>>,
}

impl ModuleCache {
    pub fn new() -> ModuleCache {
        ModuleCache::default()
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
        let module = Arc::new(PolicyModule::compile(engine, bytes)?);
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
