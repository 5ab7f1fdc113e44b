//! The one deterministic wasmtime [`Engine`] configuration for policy modules, and the limits
//! every policy call runs under (the host half of the execution environment, EEV).
//!
//! Every semantic knob is set explicitly (defaults drift between releases): NaN
//! canonicalization, SIMD and relaxed SIMD off (relaxed SIMD deterministic anyway), threads,
//! multi-memory and memory64 off, fuel metering (never epochs: they are wall-clock based), an
//! explicit target triple (no host-CPU feature inference), Cranelift `Speed`, a 1 MiB native
//! stack backstop and the pooling allocator with copy-on-write memory images. See
//! `/work/shared/research/wasm-policy.md` §1 and `docs/policy-abi.md` §7.

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OperatorCost, OptLevel,
    PoolingAllocationConfig,
};

/// Fuel for one hook call (≈ 1–2 ms of guest work). Set right before every call.
pub const POLICY_FUEL_PER_HOOK: u64 = 10_000_000;
/// Fuel for one `holdfast_alloc` call (its own budget, set right before it).
pub const POLICY_FUEL_PER_ALLOC: u64 = 1_000_000;
/// Largest linear memory of a policy instance, in 64 KiB wasm pages (core's limit: declared
/// memory is checked against the same number at deploy).
pub const POLICY_MEMORY_PAGES_MAX: u64 = holdfast_core::limits::POLICY_MEMORY_PAGES_MAX;
/// Bytes in one wasm page.
pub const WASM_PAGE_BYTES: u64 = 65_536;
/// Largest policy module accepted, in bytes.
pub const POLICY_MODULE_BYTES_MAX: usize = holdfast_core::limits::POLICY_MODULE_BYTES_MAX;
/// Largest reply a hook may return, in bytes.
pub const POLICY_REPLY_BYTES_MAX: usize = 64 << 10;
/// Input lists (waiters, candidates, held) are cut to this many entries, keeping the first.
pub const POLICY_LIST_MAX: usize = 256;
/// Largest table of a policy module, in elements (declared minimum and growth).
pub const POLICY_TABLE_ELEMENTS_MAX: usize =
    holdfast_core::limits::POLICY_TABLE_ELEMENTS_MAX as usize;
/// Native stack available to guest code: a backstop only, overflow depth is not deterministic
/// across builds (docs/policy-abi.md §7, stack).
pub const POLICY_NATIVE_STACK_BYTES: usize = 1 << 20;
/// Instances the pool can hold at once. A policy instance lives for one log entry; running
/// out is environmental (fail-stop), never a policy outcome.
pub const POLICY_POOL_INSTANCES: u32 = 64;
/// Bytes of a released instance's linear memory reset with `memset` (found by `PAGEMAP_SCAN`
/// where the kernel has it, Linux >= 6.7) instead of `madvise`, so the next instance in that
/// slot takes no page faults for them. Performance only: memory reads back as the module's
/// initial image either way.
pub const POLICY_MEMORY_KEEP_RESIDENT_BYTES: usize = 2 << 20;
/// Debug-log lines kept per hook call; more are dropped.
pub const POLICY_DEBUG_LINES_PER_CALL: u32 = 16;
/// Bytes of one debug-log line kept; the rest is dropped.
pub const POLICY_DEBUG_LINE_BYTES_MAX: usize = 1 << 10;
/// The only target policy code is compiled for (one architecture in v1; the explicit triple
/// stops Cranelift from inferring host CPU features).
pub const POLICY_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The engine configuration of the policy host. Separate engines (apply loop, leader
/// pre-checks) must all be built from this.
pub fn policy_config() -> wasmtime::Result<Config> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(POLICY_POOL_INSTANCES)
        .total_memories(POLICY_POOL_INSTANCES)
        .total_tables(POLICY_POOL_INSTANCES)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .table_elements(POLICY_TABLE_ELEMENTS_MAX)
        .max_memory_size(memory_bytes_max())
        .linear_memory_keep_resident(POLICY_MEMORY_KEEP_RESIDENT_BYTES)
        .table_keep_resident(POLICY_TABLE_ELEMENTS_MAX * 8)
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .cranelift_nan_canonicalization(true)
        .wasm_simd(false)
        .wasm_relaxed_simd(false)
        .relaxed_simd_deterministic(true)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        .consume_fuel(true)
        // Freeze today's per-operator fuel table (part of the EEV with the wasmtime version).
        .operator_cost(OperatorCost::new())
        .max_wasm_stack(POLICY_NATIVE_STACK_BYTES)
        .cranelift_opt_level(OptLevel::Speed)
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // `wasm_threads` does not exist without wasmtime's `threads` feature, which is not compiled
    // in: threads are off by construction (and rejected by the module check).
    // Epoch interruption stays off (the default): it is not deterministic.
    // The component model is not compiled in (feature off), so `concurrency_support` does not
    // apply.
    config.target(POLICY_TARGET)?;
    Ok(config)
}

/// Builds the policy engine. Fails only if the host cannot run the configuration (e.g. not
/// x86_64), which is environmental.
pub fn policy_engine() -> wasmtime::Result<Engine> {
    Engine::new(&policy_config()?)
}

/// [`POLICY_MEMORY_PAGES_MAX`] in bytes.
pub const fn memory_bytes_max() -> usize {
    (POLICY_MEMORY_PAGES_MAX * WASM_PAGE_BYTES) as usize
}
