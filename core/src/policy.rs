//! The seam between the state machine and lock policies: [`PolicyRuntime`], its plain-data
//! inputs, the native default [`BuiltinFifo`], and the checks `apply` runs on every answer.
//!
//! A policy decides *who* (admission, who is granted next) and *for how long* (lease,
//! lock-delay). It never decides *whether mutual exclusion holds*: `apply` validates every
//! `choose_next` answer against the lock's holders, mode and `max_holders` and falls back to
//! FIFO when the answer is out of range, duplicated, incompatible or would strand the queue;
//! lease and lock-delay lengths are clamped to [`limits`](crate::limits). A hostile or buggy
//! policy can therefore be unfair, never unsafe. The wasm host in `server` implements the same
//! trait; every replica calls it with the same inputs, so it must be a pure function of them.

use std::collections::BTreeSet;

use crate::limits;

/// The ABI v1 limits `DeployPolicy` checks modules against, in apply and on the proposing node:
/// integers only (no float instructions).
pub const POLICY_ABI_LIMITS: holdfast_policy_abi::Limits = holdfast_policy_abi::Limits {
    module_bytes_max: limits::POLICY_MODULE_BYTES_MAX,
    memory_pages_max: limits::POLICY_MEMORY_PAGES_MAX,
    table_elements_max: limits::POLICY_TABLE_ELEMENTS_MAX,
    allow_floats: false,
};
use crate::model::{AcquireRequest, FencingToken, Mode, SessionId};
use crate::state::State;
use crate::state::views::{HolderView, WaiterView};
use crate::vec_map::VecMap;

/// Lock decisions that are up to a policy. Called only while applying a committed entry, with
/// inputs built from replicated state, so every replica gets the same calls in the same order.
///
/// Implementations must be deterministic functions of their input: no clock, no randomness,
/// no state carried from one call to the next (a replica restarted from a snapshot makes the
/// same calls from that point on, but never saw the earlier ones).
pub trait PolicyRuntime {
    /// Admission: may this request proceed (grant-if-free / queue) or is it denied?
    /// Not called for re-entrant acquires or requests already queued.
    fn admit(&mut self, input: &AdmitInput<'_>) -> AdmitDecision;
    /// On release/expiry/revocation/lock-delay end: indexes into `input.waiters` to grant now,
    /// in order. Validated by `apply`; an invalid answer gives the FIFO choice instead.
    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize>;
    /// Lease and lock-delay for a grant about to be made. Clamped to
    /// `limits::LEASE_MS_MAX` / `limits::LOCK_DELAY_MS_MAX` by `apply`.
    fn lease_for(&mut self, input: &AdmitInput<'_>) -> LeaseDecision;
    /// A session expired holding `input.held` (the holds under this policy's binding): the
    /// lock-delay of each, in order, or `None` to keep the delays chosen at grant. An answer of
    /// another length counts as a fault and keeps them; delays are clamped to
    /// `limits::LOCK_DELAY_MS_MAX`. Default: `None`.
    fn on_session_expire(&mut self, input: &ExpireInput<'_>) -> Option<Vec<u64>> {
        let _ = input;
        None
    }
    /// Runs the lock as an election: who leads among `input.candidates` (the waiters), and
    /// whether a better candidate preempts `input.incumbent` (the holder). `None` = this policy
    /// has no `elect` hook: the lock is an ordinary lock (handoff by `choose_next`, no
    /// preemption). Validated by `apply` (fallback: earliest candidate without incumbent, keep
    /// the incumbent otherwise). Default: `None`.
    fn elect(&mut self, input: &ElectInput<'_>) -> Option<ElectDecision> {
        let _ = input;
        None
    }
    /// Validates a binding's `config` for locks under `prefix`; `Err(message)` refuses the
    /// binding. Default: any config.
    fn init(&mut self, config: &[u8], prefix: &str) -> Result<(), String> {
        let _ = (config, prefix);
        Ok(())
    }
    /// Guest failures so far (each gave its hook's fallback). `apply` reads it around every
    /// call to count faults per binding. Default: never fails.
    fn fault_count(&self) -> u64 {
        0
    }
}

/// Where `apply` gets the policy runtime for a decision: the built-in default (no binding) or
/// a deployed module with its binding's config. One host serves ONE entry; the shell makes a
/// fresh one per entry, so no instance state leaks between entries.
pub trait PolicyHost {
    /// Re-validates a module being deployed, deterministically (the server compiles it with the
    /// policy engine). `Err(message)` refuses the deploy on every replica alike.
    fn prepare(&mut self, sha256: &[u8; 32], wasm: &[u8]) -> Result<(), String> {
        let _ = (sha256, wasm);
        Ok(())
    }
    /// The runtime deciding for a lock bound to `module`; `None` = no binding (the root
    /// default, the built-in FIFO in production).
    fn runtime(&mut self, module: Option<&BoundModule<'_>>) -> &mut dyn PolicyRuntime;
}

/// One policy runtime decides everything: the test and tool form of a host.
impl PolicyHost for dyn PolicyRuntime + '_ {
    fn runtime(&mut self, _module: Option<&BoundModule<'_>>) -> &mut dyn PolicyRuntime {
        self
    }
}

impl PolicyHost for BuiltinFifo {
    fn runtime(&mut self, _module: Option<&BoundModule<'_>>) -> &mut dyn PolicyRuntime {
        self
    }
}

/// A deployed module as bound to a prefix: what a host needs to run it.
#[derive(Clone, Copy, Debug)]
pub struct BoundModule<'a> {
    pub policy: &'a str,
    pub version: u64,
    pub sha256: &'a [u8; 32],
    pub wasm: &'a [u8],
    pub config: &'a [u8],
    pub prefix: &'a str,
}

/// Holds and waits of the requester's principal and tenant (its `tenant` label) over the locks
/// under the deciding binding's prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub principal_holds: u32,
    pub principal_waits: u32,
    /// The requesting session's `tenant` label; "" when it has none (tenant counts are 0).
    pub tenant: String,
    pub tenant_holds: u32,
    pub tenant_waits: u32,
}

/// What a policy sees about one acquire request (admission) or one grant (lease).
#[derive(Clone, Debug)]
pub struct AdmitInput<'a> {
    /// The request. For a grant handed off to a waiter it is rebuilt from the queue entry.
    pub request: &'a AcquireRequest,
    /// Principal of the requesting session.
    pub principal: &'a str,
    /// Labels of the requesting session.
    pub labels: &'a VecMap<String, String>,
    /// Current holders of the lock, by session id.
    pub holders: Vec<HolderView>,
    /// Current waiters of the lock, in queue order.
    pub waiters: Vec<WaiterView>,
    /// The replicated state, read-only: where a policy host looks up the principal and labels
    /// of holders and waiters ([`State::session_identity`]).
    pub state: &'a State,
    /// Counts under the deciding binding's prefix, for `admit` of a deployed module (all zero
    /// for the built-in default and for `lease_for`, which do not read them).
    pub counters: Counters,
    pub now_ms: u64,
    pub log_index: u64,
}

/// What a policy sees when deciding an election (an exclusive lock whose bound policy has an
/// `elect` hook).
#[derive(Clone, Debug)]
pub struct ElectInput<'a> {
    pub election: &'a str,
    /// The waiters (campaigns), in queue order.
    pub candidates: Vec<CandidateView>,
    /// The current holder (leader), if any.
    pub incumbent: Option<CandidateView>,
    pub state: &'a State,
    pub now_ms: u64,
    pub log_index: u64,
}

/// A candidate or the incumbent of an election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateView {
    pub session_id: SessionId,
    pub priority: i32,
    /// Candidate: when it started campaigning. Incumbent: when it became leader.
    pub since_ms: u64,
    /// Incumbent: its leadership's fencing token; candidates: 0.
    pub token: FencingToken,
}

/// Answer of [`PolicyRuntime::elect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectDecision {
    /// Keep the incumbent; ask again at `reevaluate_at_ms` if set (must be in the future).
    KeepIncumbent { reevaluate_at_ms: Option<u64> },
    /// `candidates[winner]` leads: at once without an incumbent; with one, after
    /// `preempt_grace_ms` (0 = now), when the incumbent's hold is revoked.
    Elect {
        winner: usize,
        preempt_grace_ms: u64,
    },
}

/// What a policy sees when a session expires holding locks under its binding.
#[derive(Clone, Debug)]
pub struct ExpireInput<'a> {
    pub session_id: SessionId,
    pub principal: &'a str,
    pub labels: &'a VecMap<String, String>,
    /// The expired session's holds under the binding, by lock name.
    pub held: Vec<HeldView>,
    pub state: &'a State,
    pub now_ms: u64,
    pub log_index: u64,
}

/// One hold of an expiring session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldView {
    pub name: String,
    pub token: FencingToken,
    pub mode: Mode,
    pub since_ms: u64,
    /// The lock-delay chosen when it was granted.
    pub lock_delay_ms: u64,
}

/// Answer of [`PolicyRuntime::admit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdmitDecision {
    /// Proceed: grant if the lock is free, else queue (or `WouldBlock` for a try-lock).
    Admit,
    /// Proceed, with `priority` in place of the requested one (what a queued waiter carries
    /// and later `choose_next` calls see).
    AdmitWithPriority { priority: i32 },
    /// Reject with `Rejection::PolicyDenied` and `reason` (reason truncated to
    /// `limits::POLICY_REASON_BYTES_MAX`).
    Deny { reason: String },
}

/// Answer of [`PolicyRuntime::lease_for`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseDecision {
    /// How long the hold may last; 0 = while the session lives.
    pub lease_ms: u64,
    /// How long the lock stays un-grantable if this hold ends by session expiry; 0 = none.
    pub lock_delay_ms: u64,
}

/// What a policy sees when choosing whom to grant next.
#[derive(Clone, Debug)]
pub struct NextInput<'a> {
    pub name: &'a str,
    /// Current holders (possibly none), by session id.
    pub holders: &'a [HolderView],
    /// Waiters in queue order; the answer indexes into this slice.
    pub waiters: &'a [WaiterView],
    /// Capacity of the lock when held in shared mode (1 ..= `limits::HOLDERS_PER_LOCK_MAX`).
    pub max_holders: u32,
    /// The replicated state, read-only (see [`AdmitInput::state`]).
    pub state: &'a State,
    pub now_ms: u64,
    pub log_index: u64,
}

/// The native default policy: admit everything, grant in arrival order, no lease, no
/// lock-delay.
///
/// Handoff grants the head of the queue; when the head is shared it also grants the shared
/// waiters directly behind it, while capacity lasts (a reader/writer lock never lets a later
/// reader overtake a queued writer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuiltinFifo;

impl PolicyRuntime for BuiltinFifo {
    fn admit(&mut self, _input: &AdmitInput<'_>) -> AdmitDecision {
        AdmitDecision::Admit
    }

    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        fifo_choice(input.holders, input.waiters, input.max_holders)
    }

    fn lease_for(&mut self, _input: &AdmitInput<'_>) -> LeaseDecision {
        LeaseDecision::default()
    }
}

/// The FIFO handoff: the longest prefix of the queue that fits beside the current holders.
pub(crate) fn fifo_choice(
    holders: &[HolderView],
    waiters: &[WaiterView],
    max_holders: u32,
) -> Vec<usize> {
    let mut fit = Fit::new(holders, max_holders);
    let mut chosen = Vec::new();
    for (index, waiter) in waiters.iter().enumerate() {
        if !fit.admit(waiter.mode) {
            break;
        }
        chosen.push(index);
    }
    assert!(chosen.len() <= waiters.len());
    chosen
}

/// Whether a `choose_next` answer may be applied as is: every index in range and distinct,
/// the waiters compatible with the holders and with each other in the given order, and not
/// empty when the lock is free (nothing else would re-evaluate that queue).
pub(crate) fn choice_is_valid(
    holders: &[HolderView],
    waiters: &[WaiterView],
    max_holders: u32,
    choice: &[usize],
) -> bool {
    if choice.is_empty() {
        return !holders.is_empty();
    }
    let mut seen = BTreeSet::new();
    let mut fit = Fit::new(holders, max_holders);
    for &index in choice {
        let Some(waiter) = waiters.get(index) else {
            return false;
        };
        if !seen.insert(index) || !fit.admit(waiter.mode) {
            return false;
        }
    }
    true
}

/// Clamps a policy's lease answer into the limits. Returns the decision and whether it had to
/// be changed (a policy fault).
pub(crate) fn clamp_lease(decision: LeaseDecision) -> (LeaseDecision, bool) {
    let clamped = LeaseDecision {
        lease_ms: decision.lease_ms.min(limits::LEASE_MS_MAX),
        lock_delay_ms: decision.lock_delay_ms.min(limits::LOCK_DELAY_MS_MAX),
    };
    (clamped, clamped != decision)
}

/// Truncates a policy's deny reason to `limits::POLICY_REASON_BYTES_MAX`, on a char boundary.
pub(crate) fn truncate_reason(mut reason: String) -> String {
    if reason.len() > limits::POLICY_REASON_BYTES_MAX {
        let mut end = limits::POLICY_REASON_BYTES_MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    assert!(reason.len() <= limits::POLICY_REASON_BYTES_MAX);
    reason
}

/// Simulates granting waiters one after another beside the current holders.
struct Fit {
    mode: Option<Mode>,
    count: u64,
    max_holders: u64,
}

impl Fit {
    fn new(holders: &[HolderView], max_holders: u32) -> Fit {
        let mode = holders.first().map(|holder| holder.mode);
        Fit {
            mode,
            count: holders.len() as u64,
            max_holders: u64::from(max_holders.max(1)),
        }
    }

    /// Takes one more holder of `mode` if it fits; false (and unchanged) otherwise.
    fn admit(&mut self, mode: Mode) -> bool {
        let fits = match self.mode {
            None => true,
            Some(Mode::Exclusive) => false,
            Some(Mode::Shared) => mode == Mode::Shared && self.count < self.max_holders,
        };
        if fits {
            self.mode = Some(mode);
            self.count += 1;
        }
        fits
    }
}
