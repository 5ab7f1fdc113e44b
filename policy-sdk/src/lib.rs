//! Write Holdfast lock policies in Rust: implement [`Policy`], then [`export_policy!`].
//!
//! A policy is a deterministic WebAssembly module that every replica runs while applying a
//! committed log entry. It decides who may ask for a lock ([`Policy::admit`]), who is granted
//! next ([`Policy::choose_next`]), for how long ([`Policy::lease_for`]), what happens to the
//! holds of an expired session ([`Policy::on_session_expire`]) and who leads an election
//! ([`Policy::elect`]). Every hook has a default equal to the built-in behaviour, and a hook
//! that is not exported is never called (the host runs its built-in code instead).
//!
//! ```
//! //! Lets each tenant hold at most three locks.
//! #![no_std]
//! use holdfast_policy_sdk::prelude::*;
//!
//! #[derive(Default)]
//! pub struct MaxThreePerTenant;
//!
//! impl Policy for MaxThreePerTenant {
//!     fn admit(&self, req: &AdmitRequest) -> AdmitReply {
//!         match req.counters() {
//!             c if c.tenant_holds >= 3 => AdmitReply::deny("at most 3 locks per tenant"),
//!             _ => AdmitReply::grant_or_queue(),
//!         }
//!     }
//! }
//!
//! export_policy!(MaxThreePerTenant, [admit]);
//! # fn main() {}
//! ```
//!
//! Build it as a `cdylib` for `wasm32v1-none` with `holdfast policy build` (`holdfast policy new`
//! writes a crate set up for it); test it natively with [`testing`], no wasm needed.
//!
//! Rules a policy lives by (the host enforces the ones it can; see `docs/policy-abi.md`):
//! - Hooks take `&self` and the policy value is created with `Default` for every call: nothing
//!   survives between calls. Everything a policy knows comes from its input.
//! - No clock, randomness or I/O: time is the input's `now_ms`. The only outside effect is
//!   [`debug!`], a bounded log line the host may drop.
//! - Use integers, not floats. Keep work proportional to the input: every call is metered with
//!   fuel, and running out gives the hook's fallback.
//! - A panic (including a config error discovered late) traps: the host applies the hook's
//!   fallback. Validate config in [`Policy::init`] so bad config is rejected at bind time.
#![no_std]

extern crate alloc;
// The workspace renames the no_std prost to `prost-nostd`; the generated code says `::prost`.
extern crate prost_nostd as prost;

pub mod abi;
pub mod builtin;
pub mod config;
mod messages;
pub mod testing;

use alloc::string::String;
use alloc::vec::Vec;

pub use config::{Config, ConfigError};

/// The ABI message types, generated from `proto/holdfast/policy/v1/policy.proto`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/holdfast.policy.v1.rs"));
}

pub use v1::{
    Admission, AdmitReply, AdmitRequest, Candidate, ChooseNextReply, ChooseNextRequest, Counters,
    ElectAction, ElectReply, ElectRequest, HeldLock, HoldExpiry, Holder, InitReply, InitRequest,
    Label, LeaseForReply, LeaseForRequest, LockRequest, Mode, OnSessionExpireReply,
    OnSessionExpireRequest, Waiter,
};

/// The ABI version this SDK speaks; the module exports `holdfast_abi_v1`.
pub const ABI_VERSION: u32 = 1;
/// Version of this SDK, recorded in the module's metadata section.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Limits the host applies to answers; a policy may use them to validate its config.
pub mod limits {
    /// Longest lease the host grants (24 h); longer answers are clamped.
    pub const LEASE_MS_MAX: u64 = 24 * 3_600_000;
    /// Longest lock-delay the host applies (60 s); longer answers are clamped.
    pub const LOCK_DELAY_MS_MAX: u64 = 60_000;
    /// Longest deny reason kept (bytes); longer reasons are truncated on a char boundary.
    pub const REASON_BYTES_MAX: usize = 256;
    /// Longest `debug!` line passed to the host (bytes); the SDK truncates longer ones.
    pub const DEBUG_LINE_BYTES_MAX: usize = 1_024;
}

/// The hooks of ABI v1. The name is the suffix of the export (`holdfast_<name>`) and the word
/// used in `export_policy!` lists and the metadata section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    Init,
    Admit,
    ChooseNext,
    LeaseFor,
    OnSessionExpire,
    Elect,
}

impl Hook {
    /// Every hook, in ABI order.
    pub const ALL: [Hook; 6] = [
        Hook::Init,
        Hook::Admit,
        Hook::ChooseNext,
        Hook::LeaseFor,
        Hook::OnSessionExpire,
        Hook::Elect,
    ];

    /// The hook's name: `init`, `admit`, `choose_next`, `lease_for`, `on_session_expire`,
    /// `elect`.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Init => "init",
            Hook::Admit => "admit",
            Hook::ChooseNext => "choose_next",
            Hook::LeaseFor => "lease_for",
            Hook::OnSessionExpire => "on_session_expire",
            Hook::Elect => "elect",
        }
    }

    /// The wasm export that implements the hook.
    pub const fn export_name(self) -> &'static str {
        match self {
            Hook::Init => "holdfast_init",
            Hook::Admit => "holdfast_admit",
            Hook::ChooseNext => "holdfast_choose_next",
            Hook::LeaseFor => "holdfast_lease_for",
            Hook::OnSessionExpire => "holdfast_on_session_expire",
            Hook::Elect => "holdfast_elect",
        }
    }

    /// The hook called `name` (as in `export_policy!` lists and the metadata), if any.
    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|hook| hook.name() == name)
    }
}

impl core::fmt::Display for Hook {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A lock policy. Every hook has a default that behaves like the built-in policy, so a policy
/// overrides only what it changes (and lists only those hooks in [`export_policy!`]).
///
/// Implementations must be pure functions of their input.
pub trait Policy {
    /// Validates the binding's config (`req.config`). `Err(message)` rejects the binding.
    /// Default: accept any config.
    fn init(&self, req: &InitRequest) -> Result<(), String> {
        let _ = req;
        Ok(())
    }

    /// Admission of an acquire request. Default: [`AdmitReply::grant_or_queue`].
    fn admit(&self, req: &AdmitRequest) -> AdmitReply {
        let _ = req;
        AdmitReply::grant_or_queue()
    }

    /// Which waiters to grant now, as indexes into `req.waiters`, in grant order.
    /// Default: FIFO, see [`builtin::fifo_choice`].
    fn choose_next(&self, req: &ChooseNextRequest) -> ChooseNextReply {
        ChooseNextReply {
            grant: builtin::fifo_choice(&req.holders, &req.waiters, req.max_holders),
        }
    }

    /// Lease and lock-delay for a grant. Default: no lease, no lock-delay.
    fn lease_for(&self, req: &LeaseForRequest) -> LeaseForReply {
        let _ = req;
        LeaseForReply::default()
    }

    /// Lock-delays for the holds of an expired session (always released). Default: keep the
    /// delays chosen at grant (empty reply).
    fn on_session_expire(&self, req: &OnSessionExpireRequest) -> OnSessionExpireReply {
        let _ = req;
        OnSessionExpireReply::default()
    }

    /// Election: keep the incumbent or elect a candidate. Default: see [`builtin::elect`].
    fn elect(&self, req: &ElectRequest) -> ElectReply {
        builtin::elect(req)
    }
}

/// Runs `hook` of a fresh `P` on protobuf `input` and returns the encoded reply: exactly what
/// the wasm export does between reading its input and returning the reply pointer.
pub fn dispatch<P: Policy + Default>(
    hook: Hook,
    input: &[u8],
) -> Result<Vec<u8>, prost::DecodeError> {
    use prost::Message;
    let policy = P::default();
    Ok(match hook {
        Hook::Init => {
            let req = InitRequest::decode(input)?;
            InitReply::from(policy.init(&req)).encode_to_vec()
        }
        Hook::Admit => policy.admit(&AdmitRequest::decode(input)?).encode_to_vec(),
        Hook::ChooseNext => policy
            .choose_next(&ChooseNextRequest::decode(input)?)
            .encode_to_vec(),
        Hook::LeaseFor => policy
            .lease_for(&LeaseForRequest::decode(input)?)
            .encode_to_vec(),
        Hook::OnSessionExpire => policy
            .on_session_expire(&OnSessionExpireRequest::decode(input)?)
            .encode_to_vec(),
        Hook::Elect => policy.elect(&ElectRequest::decode(input)?).encode_to_vec(),
    })
}

/// Writes a debug line to the host's policy log (bounded to
/// [`limits::DEBUG_LINE_BYTES_MAX`]; the host may rate-limit or drop it, and it never affects a
/// decision). A no-op in native builds. Using it adds the module's only import,
/// `holdfast.debug_log(ptr: i32, len: i32)`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        $crate::abi::debug_log(&$crate::__private::format!($($arg)*))
    };
}

#[doc(hidden)]
pub mod __private {
    pub use alloc::format;
}

/// Generates the wasm exports of a policy: the ABI marker `holdfast_abi_v1`, the allocator
/// `holdfast_alloc`, one `holdfast_<hook>` per listed hook, the custom sections
/// `holdfast:policy-abi-version` and `holdfast:policy-meta`, a bump allocator and a panic
/// handler that traps. Put it at the crate root of a `#![no_std]` policy crate.
///
/// `export_policy!(MyPolicy, [admit, lease_for])` exports only the listed hooks: the host runs
/// its built-in code for the others without calling the module (cheaper). List exactly the
/// hooks you override (`init` too if you validate config). `export_policy!(MyPolicy)` exports
/// all six, which works (the defaults behave like the built-in) but costs a wasm call per hook.
///
/// Exports are generated only for `target_arch = "wasm32"`; in native builds the macro only
/// links `std` (for the panic handler), so tests and the rlib work as usual.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        $crate::export_policy!(
            $policy,
            [init, admit, choose_next, lease_for, on_session_expire, elect]
        );
    };
    ($policy:ty, [$($hook:ident),* $(,)?]) => {
        #[cfg(not(target_arch = "wasm32"))]
        extern crate std;

        #[allow(unsafe_code)]
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[global_allocator]
            static __HOLDFAST_ALLOCATOR: $crate::abi::BumpAllocator = $crate::abi::BumpAllocator;

            #[panic_handler]
            fn __holdfast_panic(_info: &::core::panic::PanicInfo<'_>) -> ! {
                ::core::arch::wasm32::unreachable()
            }

            /// ABI marker: its presence says "speaks ABI v1". Never called.
            #[unsafe(no_mangle)]
            pub extern "C" fn holdfast_abi_v1() {}

            /// Allocates `len` bytes for the host to write a hook's input into.
            #[unsafe(no_mangle)]
            pub extern "C" fn holdfast_alloc(len: i32) -> i32 {
                $crate::abi::alloc(len)
            }

            const __HOOKS: &[&str] = &[$(::core::stringify!($hook)),*];
            const __META_LEN: usize = $crate::abi::meta_len(
                ::core::env!("CARGO_PKG_NAME"),
                ::core::env!("CARGO_PKG_VERSION"),
                __HOOKS,
            );

            #[used]
            #[unsafe(link_section = "holdfast:policy-abi-version")]
            static __HOLDFAST_ABI_VERSION: [u8; 1] = *b"1";

            #[used]
            #[unsafe(link_section = "holdfast:policy-meta")]
            static __HOLDFAST_META: [u8; __META_LEN] = $crate::abi::meta::<__META_LEN>(
                ::core::env!("CARGO_PKG_NAME"),
                ::core::env!("CARGO_PKG_VERSION"),
                __HOOKS,
            );

            $( $crate::__export_hook!($policy, $hook); )*
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_hook {
    (@fn $policy:ty, $export:ident, $variant:ident) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn $export(ptr: i32, len: i32) -> i64 {
            $crate::abi::call::<$policy>($crate::Hook::$variant, ptr, len)
        }
    };
    ($policy:ty, init) => {
        $crate::__export_hook!(@fn $policy, holdfast_init, Init);
    };
    ($policy:ty, admit) => {
        $crate::__export_hook!(@fn $policy, holdfast_admit, Admit);
    };
    ($policy:ty, choose_next) => {
        $crate::__export_hook!(@fn $policy, holdfast_choose_next, ChooseNext);
    };
    ($policy:ty, lease_for) => {
        $crate::__export_hook!(@fn $policy, holdfast_lease_for, LeaseFor);
    };
    ($policy:ty, on_session_expire) => {
        $crate::__export_hook!(@fn $policy, holdfast_on_session_expire, OnSessionExpire);
    };
    ($policy:ty, elect) => {
        $crate::__export_hook!(@fn $policy, holdfast_elect, Elect);
    };
    ($policy:ty, $other:ident) => {
        ::core::compile_error!(::core::concat!(
            "unknown policy hook `",
            ::core::stringify!($other),
            "`; expected init, admit, choose_next, lease_for, on_session_expire or elect"
        ));
    };
}

/// Everything a policy needs: `use holdfast_policy_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::builtin;
    pub use crate::v1::{
        Admission, AdmitReply, AdmitRequest, Candidate, ChooseNextReply, ChooseNextRequest,
        Counters, ElectAction, ElectReply, ElectRequest, HeldLock, HoldExpiry, Holder, InitReply,
        InitRequest, Label, LeaseForReply, LeaseForRequest, LockRequest, Mode,
        OnSessionExpireReply, OnSessionExpireRequest, Waiter,
    };
    pub use crate::{Config, ConfigError, Hook, Policy, debug, export_policy, limits};
    pub use alloc::format;
    pub use alloc::string::{String, ToString};
    pub use alloc::vec;
    pub use alloc::vec::Vec;
}
