//! The WebAssembly policy host: runs policy modules (docs/policy-abi.md, ABI v1) as the
//! [`PolicyRuntime`](holdfast_core::PolicyRuntime) of a log entry, deterministically.
//!
//! - [`engine`]: the one deterministic wasmtime configuration and every limit (fuel, memory,
//!   module, reply and list sizes).
//! - [`module`]: deploy-time checks and compilation ([`PolicyModule::compile`]).
//! - [`runtime`]: [`WasmPolicy`], one instance per log entry, fallbacks on guest failure.
//! - [`guest`]: the instance's store data and limiter, the debug-log import, and how a failed
//!   call is told apart: a [`GuestFault`] or an environmental failure (fail-stop).
//! - `requests`: core inputs encoded as ABI request messages.
//! - [`cache`]: compiled modules by SHA-256.
//! - [`host`]: the apply loop's `PolicyHost` (one per entry) over its own engine and cache.
//! - [`precheck`]: what the receiving node checks before proposing a `DeployPolicy`.

pub mod cache;
pub mod engine;
pub mod guest;
pub mod host;
pub mod module;
pub mod precheck;
mod requests;
pub mod runtime;
#[cfg(test)]
mod tests;

pub use cache::ModuleCache;
pub use engine::policy_engine;
pub use guest::GuestFault;
pub use host::ApplyPolicies;
pub use module::{Hook, PolicyError, PolicyModule};
pub use precheck::{Precheck, PrecheckError};
pub use runtime::WasmPolicy;
