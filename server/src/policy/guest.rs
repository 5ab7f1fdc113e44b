//! The boundary with one guest instance: its store data ([`HostState`]: the memory and table
//! limiter, the debug-log budget), the one import a module may use (`holdfast.debug_log`), and
//! how a failed call is classified — a [`GuestFault`] (the guest's doing: its hook gets its
//! fallback) or an environmental failure (the host's: fail-stop, never a decision).

use wasmtime::{Caller, Linker, ResourceLimiter, Store, Trap};

use super::engine::{
    POLICY_DEBUG_LINE_BYTES_MAX, POLICY_DEBUG_LINES_PER_CALL, POLICY_TABLE_ELEMENTS_MAX,
    memory_bytes_max,
};

/// Why a hook call gave its fallback. Kept on the node for diagnostics and tests; only the
/// count per hook is meant to be replicated (never an engine message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// Instantiation trapped (e.g. a data segment out of bounds).
    InstantiationTrap,
    /// The hook or `holdfast_alloc` trapped (including out of fuel and stack overflow).
    Trap(String),
    /// The guest asked for more memory than `POLICY_MEMORY_PAGES_MAX` and then trapped.
    MemoryLimit,
    /// `holdfast_alloc` returned a buffer outside memory.
    InputOutOfBounds,
    /// The reply is longer than `POLICY_REPLY_BYTES_MAX`.
    ReplyTooLarge(u32),
    /// The reply lies outside memory.
    ReplyOutOfBounds,
    /// The reply is not the hook's protobuf message.
    Undecodable,
    /// The reply decoded but failed validation.
    InvalidReply(&'static str),
}

impl GuestFault {
    /// A short, stable description (trap kinds by name, never engine message text).
    pub fn kind(&self) -> String {
        match self {
            GuestFault::Trap(trap) => format!("trap: {trap}"),
            other => other.kind_name().to_string(),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            GuestFault::InstantiationTrap => "instantiation trapped",
            GuestFault::Trap(_) => "trap",
            GuestFault::MemoryLimit => "memory limit",
            GuestFault::InputOutOfBounds => "input buffer out of bounds",
            GuestFault::ReplyTooLarge(_) => "reply too large",
            GuestFault::ReplyOutOfBounds => "reply out of bounds",
            GuestFault::Undecodable => "undecodable reply",
            GuestFault::InvalidReply(_) => "invalid reply",
        }
    }
}

/// Store data of a policy instance: the memory limiter and the debug-log budget.
#[derive(Debug, Default)]
pub struct HostState {
    pub(super) limiter: Limiter,
    pub(super) debug_lines: u32,
}

/// Caps linear memory and tables; tells "the guest asked too much" (a guest failure) from
/// "the host could not allocate" (environmental).
#[derive(Debug, Default)]
pub(super) struct Limiter {
    /// A `memory.grow` beyond the cap was refused.
    pub(super) guest_over_limit: bool,
    /// The host failed to provide memory the limiter had allowed.
    pub(super) host_grow_failed: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed =
            desired <= memory_bytes_max() && maximum.is_none_or(|maximum| desired <= maximum);
        if !allowed {
            self.guest_over_limit = true;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.host_grow_failed = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(
            desired <= POLICY_TABLE_ELEMENTS_MAX
                && maximum.is_none_or(|maximum| desired <= maximum),
        )
    }
}

/// Defines the one allowed import, `holdfast.debug_log(ptr, len)`: at most
/// `POLICY_DEBUG_LINES_PER_CALL` lines of `POLICY_DEBUG_LINE_BYTES_MAX` bytes per hook call,
/// to `tracing::trace!`; out-of-bounds lines are dropped. Never affects a decision.
pub(super) fn link_debug_log(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "holdfast",
        "debug_log",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| {
            if caller.data().debug_lines >= POLICY_DEBUG_LINES_PER_CALL {
                return;
            }
            caller.data_mut().debug_lines += 1;
            let Some(memory) = caller
                .get_export("memory")
                .and_then(|export| export.into_memory())
            else {
                return;
            };
            let len = (len as u32 as usize).min(POLICY_DEBUG_LINE_BYTES_MAX);
            let mut line = vec![0; len];
            if memory.read(&caller, ptr as u32 as usize, &mut line).is_ok() {
                tracing::trace!(target: "holdfast::policy", "{}", String::from_utf8_lossy(&line));
            }
        },
    )?;
    Ok(())
}

/// Sorts an error from a guest call: a trap is the guest's (memory-limit traps are told
/// apart); a host allocation failure or a non-trap error is environmental and panics.
pub(super) fn classify(store: &Store<HostState>, error: wasmtime::Error) -> GuestFault {
    let limiter = &store.data().limiter;
    if limiter.host_grow_failed {
        panic!("policy host: the host failed to allocate guest memory (fail-stop): {error:#}");
    }
    match error.downcast_ref::<Trap>() {
        Some(_) if limiter.guest_over_limit => GuestFault::MemoryLimit,
        // The trap kind only (stable), never the engine's message text.
        Some(trap) => GuestFault::Trap(format!("{trap:?}")),
        None => {
            panic!("policy host: a policy call failed without a guest trap (fail-stop): {error:#}")
        }
    }
}
