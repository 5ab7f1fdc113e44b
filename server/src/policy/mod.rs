//! The WebAssembly policy host: runs policy modules (docs/policy-abi.md, ABI v1) as the
//! [`PolicyRuntime`](holdfast_core::PolicyRuntime) of a log entry, deterministically.
//!
//! - [`engine`]: the one deterministic wasmtime configuration and every limit (fuel, memory,
//!   module, reply and list sizes).
//! - [`module`]: deploy-time checks and compilation ([`PolicyModule::compile`]).
//! - [`runtime`]: [`WasmPolicy`], one instance per log entry, fallbacks on guest failure.
//! - [`cache`]: compiled modules by SHA-256.
//!
//! Not wired into apply yet: the shell will create a `WasmPolicy` per entry once Deploy/Bind
//! exist.

pub mod cache;
pub mod engine;
pub mod module;
pub mod runtime;
#[cfg(test)]
mod tests;

pub use cache::ModuleCache;
pub use engine::policy_engine;
pub use module::{Hook, PolicyError, PolicyModule};
pub use runtime::{GuestFault, WasmPolicy};
