//! The replicated state: sessions, locks, the deadline index, and the read-only views the shell
//! serves (Describe, List, CheckToken, session lookups).
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
use crate::model::{BindMode, FencingToken, Mode, Outcome, RequestId, SessionId};
use crate::policy::WaiterView;
use crate::vec_map::VecMap;

/// The whole replicated state machine. Mutated only by [`crate::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Log index of the last applied entry (0 before the first).
    pub(crate) applied_index: u64,
    /// Cluster time: the max of all applied entries' `now_ms` (clamped to `NOW_MS_MAX`).
    pub(crate) now_ms: u64,
    pub(crate) sessions: BTreeMap<SessionId, Session>,
    /// Boxed: a B-tree node has room for 11 entries and is about half full after ascending
    /// inserts, so an unboxed `Lock` (128 bytes) cost about twice its size; boxed, the node
    /// holds 8 bytes per lock. Same encoding (a `Box<T>` serializes as `T`).
    pub(crate) locks: BTreeMap<String, Box<Lock>>,
    /// Every pending deadline, ordered by time then kind then key. Derived data, kept in the
    /// snapshot so a restored replica fires in the same order without rebuilding it.
    pub(crate) deadlines: BTreeSet<Deadline>,
    /// How many policy answers `apply` had to replace (invalid `choose_next`, out-of-range lease)
    /// or a policy runtime replaced with its fallback (guest failure).
    pub(crate) policy_fault_count: u64,
    /// Deployed policy modules: name -> version -> module.
    pub(crate) policies: BTreeMap<String, BTreeMap<u64, Deployed>>,
    /// Policy bindings by prefix ("" = every lock).
    pub(crate) bindings: BTreeMap<String, Binding>,
    /// Open sessions per principal (for `SESSIONS_PER_PRINCIPAL_MAX`). Derived from
    /// `sessions`: not in the snapshot bytes, rebuilt when a snapshot is decoded, checked by
    /// `check_invariants`.
    #[serde(skip)]
    pub(crate) sessions_by_principal: BTreeMap<String, usize>,
}

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
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) ttl_ms: u64,
    pub(crate) expires_at_ms: u64,
    /// Lock name -> fencing token of this session's hold.
    pub(crate) holds: BTreeMap<String, FencingToken>,
    /// Locks this session is queued for.
    pub(crate) waiting: BTreeSet<String>,
    /// Outcomes of recent requests, for idempotent retries.
    pub(crate) recent: BTreeMap<RequestId, Outcome>,
    /// Request ids below this were evicted from `recent`: a retry is `RequestTooOld`.
    pub(crate) request_id_floor: RequestId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Election: a preemption its policy scheduled, (at, winner's session). Only while held.
    pub(crate) preempt: Option<(u64, SessionId)>,
    /// Election: when its policy asked to decide again. Only while held.
    pub(crate) reevaluate_at_ms: Option<u64>,
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
    /// What the hold carries (election value); empty for plain locks.
    pub(crate) value: Vec<u8>,
    /// The priority of the request that was granted (an election incumbent's).
    pub(crate) priority: i32,
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

/// A deployed policy version as List/Describe show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyView {
    pub name: String,
    pub version: u64,
    pub sha256: [u8; 32],
    pub module_bytes: usize,
    pub deployed_at: u64,
    pub meta_name: String,
    pub meta_version: String,
    pub hooks: Vec<String>,
}

/// A binding as List/Describe show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BindingView {
    pub prefix: String,
    pub mode: BindMode,
    pub policy: String,
    pub version: u64,
    pub config: Vec<u8>,
    pub bound_at: u64,
    /// Hook name -> fallbacks used, by hook name.
    pub faults: Vec<(String, u64)>,
    pub disagreements: u64,
    pub compared: u64,
}

/// A session as the shell sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionView {
    pub session_id: SessionId,
    pub principal: String,
    pub labels: BTreeMap<String, String>,
    pub ttl_ms: u64,
    pub expires_at_ms: u64,
    /// (lock name, fencing token), by name.
    pub holds: Vec<(String, FencingToken)>,
    /// Lock names, by name.
    pub waiting: Vec<String>,
}

/// A lock as Describe and List show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockView {
    pub name: String,
    /// Mode of the holders; with no holder, of the first waiter; with neither (a lock kept only
    /// by its lock-delay), `Exclusive`.
    pub mode: Mode,
    /// 1 in exclusive mode, else the shared capacity.
    pub max_holders: u32,
    /// By session id.
    pub holders: Vec<HolderView>,
    /// In queue order (`position` 0 first).
    pub waiters: Vec<WaiterInfo>,
    pub delayed_until_ms: Option<u64>,
}

/// One hold of a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HolderView {
    pub session_id: SessionId,
    pub token: FencingToken,
    pub mode: Mode,
    pub since_ms: u64,
    pub lease_expires_at_ms: Option<u64>,
    /// The value the hold carries (an election leader's proclamation).
    pub value: Vec<u8>,
}

/// One queued request of a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WaiterInfo {
    pub session_id: SessionId,
    pub mode: Mode,
    pub position: u32,
    pub priority: i32,
    pub queued_at_ms: u64,
    pub deadline_ms: u64,
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
        self.deadlines.first().map(|deadline| deadline.at_ms)
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

    /// Every deployed policy version, by name then version.
    pub fn policies(&self) -> Vec<PolicyView> {
        self.policies
            .iter()
            .flat_map(|(name, versions)| {
                versions.iter().map(|(version, deployed)| PolicyView {
                    name: name.clone(),
                    version: *version,
                    sha256: deployed.sha256,
                    module_bytes: deployed.wasm.len(),
                    deployed_at: deployed.deployed_at,
                    meta_name: deployed.meta_name.clone(),
                    meta_version: deployed.meta_version.clone(),
                    hooks: deployed.hooks.clone(),
                })
            })
            .collect()
    }

    /// The module bytes of a deployed version (`version` 0 = newest).
    pub fn policy_module(&self, name: &str, version: u64) -> Option<(u64, &[u8])> {
        let versions = self.policies.get(name)?;
        let (version, deployed) = if version == 0 {
            versions.last_key_value()?
        } else {
            versions.get_key_value(&version)?
        };
        Some((*version, &deployed.wasm))
    }

    /// Every binding, by prefix then mode (enforce first).
    pub fn bindings(&self) -> Vec<BindingView> {
        let mut views = Vec::new();
        for (prefix, binding) in &self.bindings {
            for mode in [BindMode::Enforce, BindMode::Shadow] {
                if let Some(bound) = binding.get(mode) {
                    views.push(bound.view(prefix, mode));
                }
            }
        }
        views
    }

    /// The bindings that decide for lock `name`: the enforcing one (None = built-in FIFO by
    /// default) and the shadow one, each the longest matching prefix of its mode.
    pub fn bindings_for(&self, name: &str) -> (Option<BindingView>, Option<BindingView>) {
        let view = |mode| {
            self.binding_for(name, mode)
                .map(|(prefix, bound)| bound.view(prefix, mode))
        };
        (view(BindMode::Enforce), view(BindMode::Shadow))
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

    pub fn session(&self, id: SessionId) -> Option<SessionView> {
        let session = self.sessions.get(&id)?;
        Some(SessionView {
            session_id: id,
            principal: session.principal.clone(),
            labels: session.labels.clone(),
            ttl_ms: session.ttl_ms,
            expires_at_ms: session.expires_at_ms,
            holds: session
                .holds
                .iter()
                .map(|(name, token)| (name.clone(), *token))
                .collect(),
            waiting: session.waiting.iter().cloned().collect(),
        })
    }

    /// Principal and labels of a live session (what policies see of holders and waiters).
    pub fn session_identity(&self, id: SessionId) -> Option<(&str, &BTreeMap<String, String>)> {
        self.sessions
            .get(&id)
            .map(|session| (session.principal.as_str(), &session.labels))
    }

    /// (locks, holds, waiters) over the whole lock table. O(locks).
    pub fn lock_counts(&self) -> (usize, usize, usize) {
        self.locks
            .values()
            .fold((0, 0, 0), |(locks, holds, waits), lock| {
                (
                    locks + 1,
                    holds + lock.holders.len(),
                    waits + lock.waiters.len(),
                )
            })
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn lock(&self, name: &str) -> Option<LockView> {
        self.locks.get(name).map(|lock| lock.view(name))
    }

    /// Locks whose name starts with `prefix`, ordered by name, at most
    /// `min(limit, LIST_LOCKS_MAX)`.
    pub fn locks(&self, prefix: &str, limit: usize) -> Vec<LockView> {
        let limit = limit.min(limits::LIST_LOCKS_MAX);
        self.locks
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(name, _)| name.starts_with(prefix))
            .take(limit)
            .map(|(name, lock)| lock.view(name))
            .collect()
    }

    /// Chubby's CheckSequencer: `Some(holder)` iff `token` is a current hold of lock `name`.
    /// Shared holders granted by the same entry share a token; the lowest session id is given.
    pub fn check_token(&self, name: &str, token: FencingToken) -> Option<SessionId> {
        let lock = self.locks.get(name)?;
        lock.holders
            .iter()
            .find(|(_, hold)| hold.token == token)
            .map(|(session_id, _)| *session_id)
    }

    /// Recomputes the derived `sessions_by_principal` from `sessions`.
    pub(crate) fn count_sessions_by_principal(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for session in self.sessions.values() {
            *counts.entry(session.principal.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Checks every structural invariant; `Err` names the first one broken. Runs after every
    /// apply in tests and debug builds, and on every decoded snapshot, so it must never panic
    /// whatever the state holds.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.sessions_by_principal != self.count_sessions_by_principal() {
            return Err("sessions_by_principal does not count the open sessions".to_string());
        }
        if self.now_ms > limits::NOW_MS_MAX {
            return Err(format!("now_ms {} above NOW_MS_MAX", self.now_ms));
        }
        if self.sessions.len() > limits::SESSIONS_MAX {
            return Err(format!(
                "{} sessions, above SESSIONS_MAX",
                self.sessions.len()
            ));
        }
        for (id, session) in &self.sessions {
            self.check_session(*id, session)
                .map_err(|broken| format!("session {id}: {broken}"))?;
        }
        let mut hold_count = 0usize;
        let mut waiter_count = 0usize;
        for (name, lock) in &self.locks {
            self.check_lock(name, lock)
                .map_err(|broken| format!("lock {name:?}: {broken}"))?;
            hold_count += lock.holders.len();
            waiter_count += lock.waiters.len();
        }
        // Each session-side reference was found on the lock side above; equal totals make
        // the correspondence one-to-one.
        let session_holds: usize = self
            .sessions
            .values()
            .map(|session| session.holds.len())
            .sum();
        let session_waits: usize = self
            .sessions
            .values()
            .map(|session| session.waiting.len())
            .sum();
        if session_holds != hold_count || session_waits != waiter_count {
            return Err(format!(
                "sessions list {session_holds} holds / {session_waits} waits, locks list {hold_count} / {waiter_count}"
            ));
        }
        self.check_policies()?;
        let expected = self.expected_deadlines();
        if expected != self.deadlines {
            return Err(format!(
                "deadline index out of sync: missing {:?}, extra {:?}",
                expected.difference(&self.deadlines).next(),
                self.deadlines.difference(&expected).next()
            ));
        }
        Ok(())
    }

    fn check_policies(&self) -> Result<(), String> {
        if self.policies.len() > limits::POLICIES_MAX
            || self.bindings.len() > limits::POLICY_BINDINGS_MAX
        {
            return Err("more policies or bindings than the limits".to_string());
        }
        for (name, versions) in &self.policies {
            if versions.is_empty()
                || versions.len() > limits::POLICY_VERSIONS_KEPT
                || !policy_name_is_valid(name)
                || versions.keys().any(|&version| version == 0)
                || versions.values().any(|deployed| {
                    deployed.wasm.len() > limits::POLICY_MODULE_BYTES_MAX
                        || deployed.deployed_at > self.applied_index
                })
            {
                return Err(format!("policy {name:?}: versions out of limits"));
            }
        }
        for (prefix, binding) in &self.bindings {
            if prefix.len() > limits::LOCK_NAME_BYTES_MAX {
                return Err(format!("binding prefix {prefix:?} too long"));
            }
            if binding.enforce.is_none() && binding.shadow.is_none() {
                return Err(format!("binding {prefix:?} is empty"));
            }
            for bound in [&binding.enforce, &binding.shadow].into_iter().flatten() {
                let exists = if bound.policy == BUILTIN_POLICY {
                    bound.version == 0
                } else {
                    self.policies
                        .get(&bound.policy)
                        .is_some_and(|versions| versions.contains_key(&bound.version))
                };
                if !exists
                    || bound.config.len() > limits::POLICY_CONFIG_BYTES_MAX
                    || bound.bound_at > self.applied_index
                    || bound.disagreements > bound.compared
                {
                    return Err(format!(
                        "binding {prefix:?}: {}@{} missing or inconsistent",
                        bound.policy, bound.version
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_session(&self, id: SessionId, session: &Session) -> Result<(), String> {
        if id == 0 || id > self.applied_index {
            return Err(format!("id outside 1..={}", self.applied_index));
        }
        if !(limits::SESSION_TTL_MS_MIN..=limits::SESSION_TTL_MS_MAX).contains(&session.ttl_ms) {
            return Err(format!("ttl_ms {} out of range", session.ttl_ms));
        }
        if session.expires_at_ms <= self.now_ms {
            return Err(format!(
                "alive past its expiry {} (now {})",
                session.expires_at_ms, self.now_ms
            ));
        }
        if session.expires_at_ms > self.now_ms.saturating_add(session.ttl_ms) {
            return Err(format!(
                "expires at {}, beyond now + ttl",
                session.expires_at_ms
            ));
        }
        if session.principal.len() > limits::PRINCIPAL_BYTES_MAX
            || session.labels.len() > limits::LABELS_PER_SESSION_MAX
            || session.labels.iter().any(|(k, v)| !label_is_valid(k, v))
        {
            return Err("principal or labels beyond limits".to_string());
        }
        if session.holds.len() + session.waiting.len() > limits::LOCKS_PER_SESSION_MAX {
            return Err("more locks than LOCKS_PER_SESSION_MAX".to_string());
        }
        if session.recent.len() > limits::RECENT_REQUESTS_PER_SESSION_MAX
            || session
                .recent
                .keys()
                .any(|&request_id| request_id == 0 || request_id < session.request_id_floor)
        {
            return Err("recent outcomes beyond limits or below the floor".to_string());
        }
        for (name, token) in &session.holds {
            let hold = self.locks.get(name).and_then(|lock| lock.holders.get(&id));
            if hold.map(|hold| hold.token) != Some(*token) {
                return Err(format!(
                    "holds {name:?} with token {token}, the lock disagrees"
                ));
            }
        }
        // Each queue entry is checked against its session in `check_lock_waiters`; with equal
        // totals (checked by the caller) that makes the two sides agree one-to-one.
        if let Some(name) = session
            .waiting
            .iter()
            .find(|name| session.holds.contains_key(*name))
        {
            return Err(format!("both holds and waits for {name:?}"));
        }
        Ok(())
    }

    fn check_lock(&self, name: &str, lock: &Lock) -> Result<(), String> {
        if !name_is_valid(name) {
            return Err("invalid name".to_string());
        }
        if lock.is_empty() {
            return Err(
                "no holder, no waiter and no lock-delay: should have been removed".to_string(),
            );
        }
        if lock.max_holders == 0 || lock.max_holders > limits::HOLDERS_PER_LOCK_MAX {
            return Err(format!("max_holders {} out of range", lock.max_holders));
        }
        if lock.last_token > self.applied_index {
            return Err(format!(
                "last token {} beyond applied index",
                lock.last_token
            ));
        }
        if lock
            .delayed_until_ms
            .is_some_and(|until| until <= self.now_ms)
        {
            return Err("lock-delay ended but still recorded".to_string());
        }
        self.check_lock_holders(name, lock)?;
        self.check_lock_waiters(name, lock)?;
        if lock.delayed_until_ms.is_none() && lock.holders.is_empty() && !lock.waiters.is_empty() {
            return Err("free and not delayed, yet waiters are queued".to_string());
        }
        let max_at = self.now_ms + limits::ELECTION_DELAY_MS_MAX;
        if (lock.preempt.is_some() || lock.reevaluate_at_ms.is_some()) && lock.holders.is_empty()
            || lock
                .preempt
                .is_some_and(|(at, _)| at <= self.now_ms || at > max_at)
            || lock
                .reevaluate_at_ms
                .is_some_and(|at| at <= self.now_ms || at > max_at)
        {
            return Err("election timers without a leader or out of range".to_string());
        }
        Ok(())
    }

    fn check_lock_holders(&self, name: &str, lock: &Lock) -> Result<(), String> {
        let mode = lock.holders_mode();
        if lock.holders.values().any(|hold| Some(hold.mode) != mode) {
            return Err("holders in different modes".to_string());
        }
        let count = lock.holders.len();
        if mode == Some(Mode::Exclusive) && count != 1 {
            return Err(format!("{count} exclusive holders"));
        }
        if count > lock.max_holders as usize {
            return Err(format!(
                "{count} shared holders, max_holders {}",
                lock.max_holders
            ));
        }
        for (session_id, hold) in &lock.holders {
            let session = self
                .sessions
                .get(session_id)
                .ok_or_else(|| format!("holder {session_id} has no session"))?;
            if session.holds.get(name) != Some(&hold.token) {
                return Err(format!(
                    "holder {session_id}: its session does not list the hold"
                ));
            }
            if hold.token == 0 || hold.token > lock.last_token || hold.since_ms > self.now_ms {
                return Err(format!(
                    "holder {session_id}: token {} / since beyond the lock's",
                    hold.token
                ));
            }
            let expected_expiry =
                (hold.lease_ms > 0).then(|| hold.since_ms.saturating_add(hold.lease_ms));
            if hold.lease_expires_at_ms != expected_expiry
                || hold.lease_expires_at_ms.is_some_and(|at| at <= self.now_ms)
                || hold.lease_ms > limits::LEASE_MS_MAX
                || hold.lock_delay_ms > limits::LOCK_DELAY_MS_MAX
            {
                return Err(format!(
                    "holder {session_id}: lease or lock-delay inconsistent"
                ));
            }
        }
        Ok(())
    }

    fn check_lock_waiters(&self, name: &str, lock: &Lock) -> Result<(), String> {
        if lock.waiters.len() > limits::WAITERS_PER_LOCK_MAX {
            return Err(format!(
                "{} waiters, above WAITERS_PER_LOCK_MAX",
                lock.waiters.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for waiter in &lock.waiters {
            let session_id = waiter.session_id;
            if !seen.insert(session_id) || lock.holders.contains_key(&session_id) {
                return Err(format!(
                    "session {session_id} queued twice or both holder and waiter"
                ));
            }
            let session = self
                .sessions
                .get(&session_id)
                .ok_or_else(|| format!("waiter {session_id} has no session"))?;
            if !session.waiting.contains(name) {
                return Err(format!(
                    "waiter {session_id}: its session does not list the wait"
                ));
            }
            if waiter.deadline_ms <= self.now_ms
                || waiter.queued_at_ms > self.now_ms
                || waiter.wait_timeout_ms == 0
                || waiter.wait_timeout_ms > limits::WAIT_TIMEOUT_MS_MAX
                || waiter.deadline_ms != waiter.queued_at_ms.saturating_add(waiter.wait_timeout_ms)
            {
                return Err(format!("waiter {session_id}: deadline inconsistent"));
            }
            if let Some(outcome) = session.recent.get(&waiter.request_id)
                && !matches!(outcome, Outcome::Queued { .. })
            {
                return Err(format!(
                    "waiter {session_id}: recorded outcome {outcome:?} is not Queued"
                ));
            }
        }
        Ok(())
    }

    /// The deadline index rebuilt from the data.
    fn expected_deadlines(&self) -> BTreeSet<Deadline> {
        let mut deadlines = BTreeSet::new();
        for (session_id, session) in &self.sessions {
            let kind = DeadlineKind::SessionExpiry {
                session_id: *session_id,
            };
            deadlines.insert(Deadline {
                at_ms: session.expires_at_ms,
                kind,
            });
        }
        for (name, lock) in &self.locks {
            for (session_id, hold) in &lock.holders {
                if let Some(at_ms) = hold.lease_expires_at_ms {
                    let kind = DeadlineKind::LeaseExpiry {
                        name: name.clone(),
                        session_id: *session_id,
                    };
                    deadlines.insert(Deadline { at_ms, kind });
                }
            }
            for waiter in &lock.waiters {
                let kind = DeadlineKind::WaitTimeout {
                    name: name.clone(),
                    session_id: waiter.session_id,
                };
                deadlines.insert(Deadline {
                    at_ms: waiter.deadline_ms,
                    kind,
                });
            }
            if let Some(at_ms) = lock.delayed_until_ms {
                deadlines.insert(Deadline {
                    at_ms,
                    kind: DeadlineKind::DelayEnd { name: name.clone() },
                });
            }
            if let Some((at_ms, _)) = lock.preempt {
                deadlines.insert(Deadline {
                    at_ms,
                    kind: DeadlineKind::ElectionPreempt { name: name.clone() },
                });
            }
            if let Some(at_ms) = lock.reevaluate_at_ms {
                deadlines.insert(Deadline {
                    at_ms,
                    kind: DeadlineKind::ElectionReevaluate { name: name.clone() },
                });
            }
        }
        deadlines
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
            preempt: None,
            reevaluate_at_ms: None,
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

    pub(crate) fn holder_views(&self) -> Vec<HolderView> {
        self.holders
            .iter()
            .map(|(session_id, hold)| HolderView {
                session_id: *session_id,
                token: hold.token,
                mode: hold.mode,
                since_ms: hold.since_ms,
                lease_expires_at_ms: hold.lease_expires_at_ms,
                value: hold.value.clone(),
            })
            .collect()
    }

    pub(crate) fn waiter_views(&self) -> Vec<WaiterView> {
        self.waiters
            .iter()
            .map(|waiter| WaiterView {
                session_id: waiter.session_id,
                mode: waiter.mode,
                priority: waiter.priority,
                queued_at_ms: waiter.queued_at_ms,
            })
            .collect()
    }

    pub(crate) fn view(&self, name: &str) -> LockView {
        let mode = self
            .holders_mode()
            .or(self.waiters.front().map(|waiter| waiter.mode))
            .unwrap_or(Mode::Exclusive);
        let waiters = self
            .waiters
            .iter()
            .enumerate()
            .map(|(position, waiter)| WaiterInfo {
                session_id: waiter.session_id,
                mode: waiter.mode,
                position: position_u32(position),
                priority: waiter.priority,
                queued_at_ms: waiter.queued_at_ms,
                deadline_ms: waiter.deadline_ms,
            })
            .collect();
        LockView {
            name: name.to_string(),
            mode,
            max_holders: if mode == Mode::Exclusive {
                1
            } else {
                self.max_holders
            },
            holders: self.holder_views(),
            waiters,
            delayed_until_ms: self.delayed_until_ms,
        }
    }
}

impl Bound {
    pub(crate) fn view(&self, prefix: &str, mode: BindMode) -> BindingView {
        BindingView {
            prefix: prefix.to_string(),
            mode,
            policy: self.policy.clone(),
            version: self.version,
            config: self.config.clone(),
            bound_at: self.bound_at,
            faults: self
                .faults
                .iter()
                .map(|(hook, count)| (hook.clone(), *count))
                .collect(),
            disagreements: self.disagreements,
            compared: self.compared,
        }
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
