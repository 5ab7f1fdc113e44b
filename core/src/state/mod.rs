//! The replicated state: sessions, locks, the deadline index, deployed policies and bindings.
//! The read-only views the shell serves (Describe, List, CheckToken, session lookups) are in
//! `views.rs`; the from-scratch invariant checks in `invariants.rs`.
//!
//! Everything is an ordered collection, so iteration order, snapshot bytes and digests are the
//! same on every replica. Sessions and locks point at each other (a session lists the locks it
//! holds and waits for; a lock lists its holders and waiters); the deadline index lists every
//! pending deadline so `apply` fires the due ones in O(due · log n) without scanning.
//! [`State::check_invariants`] checks all of that cross-referencing after every apply in tests
//! and debug builds, and after decoding a snapshot.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::limits;
use crate::model::{
    BindMode, FencingToken, GrantedBy, Mode, Outcome, Rejection, RequestId, SessionId,
};
use crate::vec_map::VecMap;

pub(crate) mod counts;
mod invariants;
pub(crate) mod records;

pub(crate) mod views;

use records::{Record, Records, Sum};

/// Digest tags: which collection a record belongs to (see `records.rs`).
pub(crate) const HEADER_TAG: u8 = 0;
/// Boxed for the same reason as locks (a `Session` is 144 bytes; B-tree nodes are about half
/// full). Same encoding.
pub(crate) type Sessions = Records<SessionId, Box<Session>, 1>;
/// Keyed by boxed names: 8 bytes less per key than a `String`, same encoding.
pub(crate) type Locks = Records<Box<str>, Box<Lock>, 2>;
pub(crate) type Deadlines = Records<Deadline, (), 3>;
pub(crate) type Policies = Records<String, BTreeMap<u64, Deployed>, 4>;
pub(crate) type Bindings = Records<String, Binding, 5>;

/// The whole replicated state machine. Mutated only by [`crate::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Log index of the last applied entry (0 before the first).
    pub(crate) applied_index: u64,
    /// Cluster time: the max of all applied entries' `now_ms` (clamped to `NOW_MS_MAX`).
    pub(crate) now_ms: u64,
    pub(crate) sessions: Sessions,
    /// Boxed: a B-tree node has room for 11 entries and is about half full after ascending
    /// inserts, so an unboxed `Lock` (128 bytes) cost about twice its size; boxed, the node
    /// holds 8 bytes per lock. Same encoding (a `Box<T>` serializes as `T`).
    pub(crate) locks: Locks,
    /// Every pending deadline, ordered by time then kind then key. Derived data, kept in the
    /// snapshot so a restored replica fires in the same order without rebuilding it.
    pub(crate) deadlines: Deadlines,
    /// How many policy answers `apply` had to replace (invalid `choose_next`, out-of-range lease)
    /// or a policy runtime replaced with its fallback (guest failure).
    pub(crate) policy_fault_count: u64,
    /// Deployed policy modules: name -> version -> module.
    pub(crate) policies: Policies,
    /// Policy bindings by prefix ("" = every lock).
    pub(crate) bindings: Bindings,
    /// Open sessions per principal (for `SESSIONS_PER_PRINCIPAL_MAX`). Derived from
    /// `sessions`: not in the snapshot bytes, rebuilt when a snapshot is decoded, checked by
    /// `check_invariants`.
    #[serde(skip)]
    pub(crate) sessions_by_principal: BTreeMap<String, usize>,
    /// Policy counters per prefix where a deployed module is bound (`counts.rs`). Derived:
    /// not in the snapshot bytes, rebuilt when a snapshot is decoded, checked by
    /// `check_invariants`.
    #[serde(skip)]
    pub(crate) counts: BTreeMap<String, PrefixCounts>,
    /// Holds and waits over every lock. Derived like `counts`.
    #[serde(skip)]
    pub(crate) stakes: Tally,
    /// The digest sum of every session's parts: its holds, waits and recent outcomes, each a
    /// digest record of its own (`State::session_part`), so that a change to one costs O(1)
    /// whatever the session holds. Rebuilt when a snapshot is decoded.
    #[serde(skip)]
    pub(crate) session_parts: Sum,
}

impl Record for Box<Session> {
    /// A session without its parts (see `State::session_parts`).
    fn digest_form(&self) -> impl Serialize + '_ {
        (
            &self.principal,
            &self.labels,
            self.ttl_ms,
            self.expires_at_ms,
            self.request_id_floor,
        )
    }
}

impl Record for Box<Lock> {}
impl Record for BTreeMap<u64, Deployed> {}
impl Record for Binding {}

/// The name of the native FIFO policy in bindings (version 0, nothing deployed).
pub const BUILTIN_POLICY: &str = "builtin";

/// One deployed version of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Deployed {
    pub(crate) sha256: [u8; 32],
    pub(crate) wasm: Vec<u8>,
    pub(crate) deployed_at: u64,
    /// `name=` and `version=` of the module's metadata section.
    pub(crate) meta_name: String,
    pub(crate) meta_version: String,
    /// Exported hooks, by name, sorted.
    pub(crate) hooks: Vec<String>,
}

/// The policies bound at one prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Binding {
    pub(crate) enforce: Option<Bound>,
    pub(crate) shadow: Option<Bound>,
}

impl Binding {
    pub(crate) fn get(&self, mode: BindMode) -> Option<&Bound> {
        match mode {
            BindMode::Enforce => self.enforce.as_ref(),
            BindMode::Shadow => self.shadow.as_ref(),
        }
    }

    pub(crate) fn slot(&mut self, mode: BindMode) -> &mut Option<Bound> {
        match mode {
            BindMode::Enforce => &mut self.enforce,
            BindMode::Shadow => &mut self.shadow,
        }
    }
}

/// One policy version bound at a prefix, with what it did since.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bound {
    /// A deployed policy name, or [`BUILTIN_POLICY`] (version 0).
    pub(crate) policy: String,
    pub(crate) version: u64,
    pub(crate) config: Vec<u8>,
    pub(crate) bound_at: u64,
    /// Hook name -> fallbacks used.
    pub(crate) faults: BTreeMap<String, u64>,
    /// Shadow bindings: decisions where it disagreed with the enforcing policy.
    pub(crate) disagreements: u64,
    /// Shadow bindings: decisions compared.
    pub(crate) compared: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) principal: String,
    pub(crate) labels: VecMap<String, String>,
    pub(crate) ttl_ms: u64,
    pub(crate) expires_at_ms: u64,
    /// Lock name -> fencing token of this session's hold. A sorted `Vec` of boxed names: 24
    /// bytes a hold, where a `BTreeMap` of `String`s cost a ~400-byte node per session.
    pub(crate) holds: VecMap<Box<str>, FencingToken>,
    /// Locks this session is queued for.
    pub(crate) waiting: BTreeSet<String>,
    /// Outcomes of recent requests, for idempotent retries. A sorted `Vec`: a session's few
    /// records cost 32 bytes each instead of a B-tree node of ~1 KB.
    pub(crate) recent: VecMap<RequestId, Recorded>,
    /// Request ids below this were evicted from `recent`: a retry is `RequestTooOld`.
    pub(crate) request_id_floor: RequestId,
}

/// One lock. Encoded field by field as `LockFields` (the election timers inline), so the
/// boxing below changes nothing in the snapshot bytes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "LockFields")]
pub(crate) struct Lock {
    /// Capacity in shared mode; fixed by the first shared holder or waiter while any shared
    /// holder or waiter exists. Always in 1 ..= HOLDERS_PER_LOCK_MAX.
    pub(crate) max_holders: u32,
    pub(crate) holders: VecMap<SessionId, Hold>,
    /// Waiters in arrival order.
    pub(crate) waiters: VecDeque<Waiter>,
    /// Set when a hold ended by session expiry with a lock-delay: nothing is granted before.
    pub(crate) delayed_until_ms: Option<u64>,
    /// Highest fencing token ever granted on this lock.
    pub(crate) last_token: FencingToken,
    /// An election's timers, boxed: most locks are not elections, and inline they cost 40
    /// bytes a lock. None whenever both are None (so equal locks compare equal).
    timers: Option<Box<ElectionTimers>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ElectionTimers {
    /// A preemption its policy scheduled, (at, winner's session). Only while held.
    preempt: Option<(u64, SessionId)>,
    /// When its policy asked to decide again. Only while held.
    reevaluate_at_ms: Option<u64>,
}

/// `Lock` as encoded (format version 2).
#[derive(Serialize, Deserialize)]
struct LockFields<H = VecMap<SessionId, Hold>, W = VecDeque<Waiter>> {
    max_holders: u32,
    holders: H,
    waiters: W,
    delayed_until_ms: Option<u64>,
    last_token: FencingToken,
    preempt: Option<(u64, SessionId)>,
    reevaluate_at_ms: Option<u64>,
}

impl From<LockFields> for Lock {
    fn from(fields: LockFields) -> Lock {
        let mut lock = Lock {
            max_holders: fields.max_holders,
            holders: fields.holders,
            waiters: fields.waiters,
            delayed_until_ms: fields.delayed_until_ms,
            last_token: fields.last_token,
            timers: None,
        };
        lock.set_preempt(fields.preempt);
        lock.set_reevaluate_at_ms(fields.reevaluate_at_ms);
        lock
    }
}

impl Serialize for Lock {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        LockFields {
            max_holders: self.max_holders,
            holders: &self.holders,
            waiters: &self.waiters,
            delayed_until_ms: self.delayed_until_ms,
            last_token: self.last_token,
            preempt: self.preempt(),
            reevaluate_at_ms: self.reevaluate_at_ms(),
        }
        .serialize(serializer)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hold {
    pub(crate) token: FencingToken,
    pub(crate) mode: Mode,
    pub(crate) since_ms: u64,
    /// Lease length chosen at grant; 0 = while the session lives.
    pub(crate) lease_ms: u64,
    pub(crate) lease_expires_at_ms: Option<u64>,
    /// Lock-delay imposed if this hold ends by session expiry.
    pub(crate) lock_delay_ms: u64,
    /// What the hold carries (election value); empty for plain locks. A boxed slice: 8 bytes
    /// less than a `Vec`, same encoding.
    pub(crate) value: Box<[u8]>,
    /// The priority of the request that was granted (an election incumbent's).
    pub(crate) priority: i32,
    /// The policy that granted it; boxed, so a hold the built-in granted pays 8 bytes.
    pub(crate) granted_by: Option<Box<GrantedBy>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Waiter {
    pub(crate) session_id: SessionId,
    /// The queued Acquire's request id (0 = not recorded); its recorded outcome follows the
    /// waiter (Acquired on grant, WaitTimedOut on timeout, WaitCancelled on cancel).
    pub(crate) request_id: RequestId,
    pub(crate) mode: Mode,
    pub(crate) priority: i32,
    pub(crate) wait_timeout_ms: u64,
    pub(crate) queued_at_ms: u64,
    pub(crate) deadline_ms: u64,
    /// The value the hold will carry when granted.
    pub(crate) value: Vec<u8>,
}

/// Holds and waits under one prefix, by principal and by tenant (kept by `counts.rs`) (no zero entries, so equal
/// counts compare equal whatever history built them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PrefixCounts {
    pub(crate) principals: BTreeMap<String, Tally>,
    pub(crate) tenants: BTreeMap<String, Tally>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) holds: usize,
    pub(crate) waits: usize,
}

/// The recorded outcome of an Acquire or a Release: what a retry of it is answered with.
/// 24 bytes (an `Outcome` is 80); encoded as the `Outcome` it stands for, so the snapshot
/// bytes are those of the outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Outcome", try_from = "Outcome")]
pub(crate) enum Recorded {
    Acquired {
        token: FencingToken,
        lease_ms: u64,
        reentrant: bool,
    },
    Queued {
        position: u32,
    },
    Released {
        token: FencingToken,
        released_at: u64,
    },
    WaitCancelled,
    Rejected(Box<Rejection>),
}

impl From<Recorded> for Outcome {
    fn from(recorded: Recorded) -> Outcome {
        match recorded {
            Recorded::Acquired {
                token,
                lease_ms,
                reentrant,
            } => Outcome::Acquired {
                token,
                lease_ms,
                reentrant,
            },
            Recorded::Queued { position } => Outcome::Queued { position },
            Recorded::Released { token, released_at } => Outcome::Released { token, released_at },
            Recorded::WaitCancelled => Outcome::WaitCancelled,
            Recorded::Rejected(rejection) => Outcome::Rejected(*rejection),
        }
    }
}

impl TryFrom<Outcome> for Recorded {
    type Error = String;

    /// Only an Acquire's or a Release's outcome is recorded.
    fn try_from(outcome: Outcome) -> Result<Recorded, String> {
        Ok(match outcome {
            Outcome::Acquired {
                token,
                lease_ms,
                reentrant,
            } => Recorded::Acquired {
                token,
                lease_ms,
                reentrant,
            },
            Outcome::Queued { position } => Recorded::Queued { position },
            Outcome::Released { token, released_at } => Recorded::Released { token, released_at },
            Outcome::WaitCancelled => Recorded::WaitCancelled,
            Outcome::Rejected(rejection) => Recorded::Rejected(Box::new(rejection)),
            other => return Err(format!("{other:?} is not a recordable outcome")),
        })
    }
}

/// One pending deadline. Ordered by time, then kind (the declaration order below), then key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Deadline {
    pub(crate) at_ms: u64,
    pub(crate) kind: DeadlineKind,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) enum DeadlineKind {
    SessionExpiry { session_id: SessionId },
    LeaseExpiry { name: String, session_id: SessionId },
    WaitTimeout { name: String, session_id: SessionId },
    DelayEnd { name: String },
    ElectionPreempt { name: String },
    ElectionReevaluate { name: String },
}

impl State {
    /// Log index of the last applied entry (0 before the first).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Moves the applied index up to `index` (never down), for restoring a backup under a
    /// higher log index than it was taken at: every later entry, and so every later fencing
    /// token, is then above `index`. Only for the restore tool, never in apply.
    pub fn raise_applied_index(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    /// Cluster time as of the last applied entry.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Earliest pending deadline (session expiry, lease expiry, waiter timeout, lock-delay
    /// end). The leader proposes a `Tick` once its cluster clock reaches it.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.deadlines.keys().next().map(|deadline| deadline.at_ms)
    }

    /// TEST ONLY: changes the state without a log entry, as a divergent replica would (the
    /// determinism guard's tests use it through a test-only server setting).
    #[doc(hidden)]
    pub fn perturb_for_divergence_test(&mut self) {
        self.policy_fault_count += 1;
    }

    /// How many policy answers apply replaced with the built-in behaviour so far.
    pub fn policy_fault_count(&self) -> u64 {
        self.policy_fault_count
    }

    /// Whether any binding (either mode) uses version `version` of policy `name`.
    pub(crate) fn is_bound(&self, name: &str, version: u64) -> bool {
        self.bindings.values().any(|binding| {
            [&binding.enforce, &binding.shadow]
                .into_iter()
                .flatten()
                .any(|bound| bound.policy == name && bound.version == version)
        })
    }

    /// Who grants `name` now: its enforcing binding's deployed policy (`None` for the built-in).
    pub(crate) fn granted_by(&self, name: &str) -> Option<GrantedBy> {
        self.binding_for(name, BindMode::Enforce)
            .filter(|(_, bound)| bound.policy != BUILTIN_POLICY)
            .map(|(_, bound)| GrantedBy {
                policy: bound.policy.clone(),
                version: bound.version,
            })
    }

    /// The longest prefix of `name` with a `mode` binding. Any prefix of `name` sorts at or
    /// before it, and a longer prefix after a shorter one, so the first match walking back
    /// from `name` is the longest.
    pub(crate) fn binding_for(&self, name: &str, mode: BindMode) -> Option<(&str, &Bound)> {
        self.bindings
            .range::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(name)))
            .rev()
            .filter(|(prefix, _)| name.starts_with(prefix.as_str()))
            .find_map(|(prefix, binding)| binding.get(mode).map(|bound| (prefix.as_str(), bound)))
    }

    /// Recomputes the derived `sessions_by_principal` from `sessions`.
    pub(crate) fn count_sessions_by_principal(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for session in self.sessions.values() {
            *counts.entry(session.principal.clone()).or_insert(0) += 1;
        }
        counts
    }
}

impl Lock {
    pub(crate) fn new(max_holders: u32) -> Lock {
        assert!((1..=limits::HOLDERS_PER_LOCK_MAX).contains(&max_holders));
        Lock {
            max_holders,
            holders: VecMap::new(),
            waiters: VecDeque::new(),
            delayed_until_ms: None,
            last_token: 0,
            timers: None,
        }
    }

    /// Election: a preemption its policy scheduled, (at, winner's session). Only while held.
    pub(crate) fn preempt(&self) -> Option<(u64, SessionId)> {
        self.timers.as_ref().and_then(|timers| timers.preempt)
    }

    /// Election: when its policy asked to decide again. Only while held.
    pub(crate) fn reevaluate_at_ms(&self) -> Option<u64> {
        self.timers
            .as_ref()
            .and_then(|timers| timers.reevaluate_at_ms)
    }

    /// Sets the scheduled preemption; returns the previous one.
    pub(crate) fn set_preempt(
        &mut self,
        preempt: Option<(u64, SessionId)>,
    ) -> Option<(u64, SessionId)> {
        let timers = self.timers.get_or_insert_with(Box::default);
        let previous = std::mem::replace(&mut timers.preempt, preempt);
        self.drop_empty_timers();
        previous
    }

    /// Sets the re-evaluation time; returns the previous one.
    pub(crate) fn set_reevaluate_at_ms(&mut self, at_ms: Option<u64>) -> Option<u64> {
        let timers = self.timers.get_or_insert_with(Box::default);
        let previous = std::mem::replace(&mut timers.reevaluate_at_ms, at_ms);
        self.drop_empty_timers();
        previous
    }

    fn drop_empty_timers(&mut self) {
        if self.timers.as_deref() == Some(&ElectionTimers::default()) {
            self.timers = None;
        }
    }

    /// No holder, no waiter, no pending lock-delay: the lock should not exist.
    pub(crate) fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty() && self.delayed_until_ms.is_none()
    }

    pub(crate) fn holders_mode(&self) -> Option<Mode> {
        self.holders.values().next().map(|hold| hold.mode)
    }

    /// Whether `max_holders` is pinned: some holder or waiter is shared.
    pub(crate) fn shared_in_use(&self) -> bool {
        self.holders_mode() == Some(Mode::Shared)
            || self
                .waiters
                .iter()
                .any(|waiter| waiter.mode == Mode::Shared)
    }

    /// Whether one more holder in `mode` fits beside the current holders.
    pub(crate) fn fits(&self, mode: Mode) -> bool {
        match self.holders_mode() {
            None => true,
            Some(Mode::Exclusive) => false,
            Some(Mode::Shared) => {
                mode == Mode::Shared && self.holders.len() < self.max_holders as usize
            }
        }
    }

    pub(crate) fn position_of(&self, session_id: SessionId) -> Option<usize> {
        self.waiters
            .iter()
            .position(|waiter| waiter.session_id == session_id)
    }
}

/// A policy name: 1..=`POLICY_NAME_BYTES_MAX` bytes of `[a-z0-9._-]`, starting with a letter
/// or digit.
pub(crate) fn policy_name_is_valid(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= limits::POLICY_NAME_BYTES_MAX
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|&byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'.' | b'_' | b'-')
        })
}

/// Queue positions are bounded by `WAITERS_PER_LOCK_MAX`, far below `u32::MAX`.
pub(crate) fn position_u32(position: usize) -> u32 {
    const _: () = assert!(limits::WAITERS_PER_LOCK_MAX < u32::MAX as usize);
    u32::try_from(position).unwrap_or(u32::MAX)
}

pub(crate) fn name_is_valid(name: &str) -> bool {
    !name.is_empty() && name.len() <= limits::LOCK_NAME_BYTES_MAX
}

pub(crate) fn label_is_valid(key: &str, value: &str) -> bool {
    !key.is_empty()
        && key.len() <= limits::LABEL_BYTES_MAX
        && value.len() <= limits::LABEL_BYTES_MAX
}
