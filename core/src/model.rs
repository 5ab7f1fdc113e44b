//! The vocabulary of the state machine: commands in, outcomes and events out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A session id is the log index of the `OpenSession` entry that created it: unique forever.
pub type SessionId = u64;
/// A fencing token is the log index of the entry that granted the hold. Strictly increasing per
/// lock and globally.
pub type FencingToken = u64;
/// A client-chosen, per-session request id used to make retries idempotent. 0 means "not
/// idempotent" and is never recorded.
pub type RequestId = u64;

/// One committed log entry as `apply` sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Raft log index of this entry. Becomes the fencing token of any grant it makes.
    pub log_index: u64,
    /// Cluster time stamped by the leader that proposed the entry (0 for entries without time,
    /// e.g. Raft's own blank and membership entries). Apply uses `max(state.now_ms, now_ms)`.
    pub now_ms: u64,
    pub command: Command,
}

/// What a client (or the leader's own clock) asked for. Proposed by the shell, replicated
/// through the log, applied on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Carries no request; only advances `applied_index` and cluster time (Raft blank entries,
    /// membership entries).
    Noop,
    /// Opens a session. Its id is the entry's log index.
    OpenSession {
        ttl_ms: u64,
        principal: String,
        labels: BTreeMap<String, String>,
    },
    /// Closes a session: releases its holds (reason `SessionClosed`) and drops its waiters.
    CloseSession { session_id: SessionId },
    /// The leader's heartbeat into the state machine: advances cluster time (firing due
    /// deadlines) and renews the listed sessions (their keepalives since the last tick).
    /// Renewals apply before deadlines fire; unknown ids are skipped. More than
    /// `limits::RENEWALS_PER_TICK_MAX` ids: nothing is renewed and the outcome is
    /// `Rejected(LimitExceeded)` (the shell must split them across ticks).
    Tick { renewed: Vec<SessionId> },
    /// Acquires a lock, or queues for it.
    Acquire(AcquireRequest),
    /// Releases the hold identified by `token`.
    Release {
        session_id: SessionId,
        request_id: RequestId,
        name: String,
        token: FencingToken,
    },
    /// Removes a queued waiter (the client stopped waiting). The queued Acquire's recorded
    /// outcome becomes `Outcome::WaitCancelled`, so a retry of it does not queue again.
    CancelWait { session_id: SessionId, name: String },
    /// Replaces the value of the hold `token` (an election leader proclaiming). Only the current
    /// holder with that token may.
    Proclaim {
        session_id: SessionId,
        name: String,
        token: FencingToken,
        value: Vec<u8>,
    },
    /// Adds a version of policy `name` (validated again here: ABI v1 checks, then the host's
    /// `PolicyHost::prepare`). Versions count from 1 per name; deploying the bytes of the
    /// newest version again answers with that version (idempotent).
    DeployPolicy { name: String, wasm: Vec<u8> },
    /// Makes `policy` (`version` 0 = the newest, at this entry) decide for locks under
    /// `prefix` ("" = every lock), longest prefix first. `policy` "builtin" is the native FIFO.
    /// The policy's `init` must accept `config`. Decides from the next entry on.
    BindPolicy {
        prefix: String,
        policy: String,
        version: u64,
        config: Vec<u8>,
        mode: BindMode,
    },
    /// Removes the `mode` binding of `prefix`.
    Unbind { prefix: String, mode: BindMode },
    /// An administrator ends hold `token` of lock `name`, whoever holds it (release reason
    /// `Revoked`); the next waiter may be granted in the same entry. A token that is not a
    /// current hold is `Rejected(StaleToken)`. (Last variant: older logs still decode.)
    Revoke { name: String, token: FencingToken },
}

/// How a binding takes part in decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BindMode {
    /// Its answers are the decisions.
    Enforce,
    /// Asked beside the enforcing policy; where it answers differently a disagreement is
    /// counted and reported, the decision is unchanged.
    Shadow,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireRequest {
    pub session_id: SessionId,
    pub request_id: RequestId,
    pub name: String,
    pub mode: Mode,
    /// For shared locks: the most concurrent holders (0 = `limits::HOLDERS_PER_LOCK_MAX`).
    /// Fixed by the first holder or waiter of a lock; later requests must agree.
    pub max_holders: u32,
    /// 0 = try-lock: grant now or reject with `Rejection::WouldBlock`, never queue.
    pub wait_timeout_ms: u64,
    /// Passed to the policy; the built-in FIFO ignores it.
    pub priority: i32,
    /// What the hold carries once granted: an election candidate's value (empty for plain
    /// locks). At most `limits::VALUE_BYTES_MAX` bytes. A re-entrant acquire keeps the old value.
    pub value: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    Exclusive,
    Shared,
}

/// The replicated result of applying one entry, for the node that holds the client's RPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Nothing to report (Noop, Tick).
    None,
    SessionOpened {
        session_id: SessionId,
        ttl_ms: u64,
    },
    SessionClosed {
        session_id: SessionId,
    },
    /// The lock is held by the session with this fencing token. `lease_ms` 0 = while the session
    /// lives. `reentrant` is true when the session already held it.
    Acquired {
        token: FencingToken,
        lease_ms: u64,
        reentrant: bool,
    },
    /// Queued at `position` (0 = next in line).
    Queued {
        position: u32,
    },
    /// The hold `token` ended at log index `released_at` (a deduplicated retry answers with the
    /// original release's index, not its own).
    Released {
        token: FencingToken,
        released_at: u64,
    },
    /// The wait was cancelled: the answer to `CancelWait`, and the recorded outcome of the
    /// cancelled Acquire (what a retry of it returns).
    WaitCancelled,
    /// The hold `token` now carries the proclaimed value.
    Proclaimed {
        token: FencingToken,
    },
    PolicyDeployed {
        name: String,
        version: u64,
        sha256: [u8; 32],
        /// False when these bytes already were the newest version (nothing changed).
        created: bool,
    },
    PolicyBound {
        prefix: String,
        policy: String,
        version: u64,
        mode: BindMode,
    },
    PolicyUnbound {
        prefix: String,
        mode: BindMode,
    },
    Rejected(Rejection),
}

/// Why a command was refused. Deterministic: every replica rejects with the same value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("session {session_id} does not exist (never opened, closed or expired)")]
    UnknownSession { session_id: SessionId },
    #[error("{field} is invalid: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("lock {name} is held; try-lock does not wait")]
    WouldBlock { name: String },
    #[error("token {token} is not a current hold of lock {name} by this session")]
    StaleToken { name: String, token: FencingToken },
    #[error("lock {name} is not held by session {session_id}")]
    NotHeld { name: String, session_id: SessionId },
    #[error("session {session_id} is not waiting for lock {name}")]
    NotWaiting { name: String, session_id: SessionId },
    #[error(
        "lock {name} is held in {held:?} mode (max_holders {max_holders}); the request asked otherwise"
    )]
    ModeConflict {
        name: String,
        held: Mode,
        max_holders: u32,
    },
    #[error("limit reached: {limit}")]
    LimitExceeded { limit: String },
    #[error("wait for lock {name} timed out")]
    WaitTimedOut { name: String },
    #[error("request {request_id} is older than the outcomes this session remembers")]
    RequestTooOld { request_id: RequestId },
    /// A policy's `admit` said no. `policy@version` is the enforcing binding of `prefix` that
    /// decided (its fallback, `POLICY_ERROR`, when the guest failed).
    #[error("denied by policy {policy}@{version} (bound at {prefix:?}): {reason}")]
    PolicyDenied {
        reason: String,
        policy: String,
        version: u64,
        prefix: String,
    },
    #[error("the session ended while waiting for lock {name}")]
    SessionEnded { name: String },
    #[error("policy {name} version {version} is not deployed (version 0 = newest)")]
    UnknownPolicy { name: String, version: u64 },
    #[error("prefix {prefix:?} has no {mode:?} binding")]
    NotBound { prefix: String, mode: BindMode },
}

/// Why a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseReason {
    Released,
    SessionClosed,
    SessionExpired,
    LeaseExpired,
    /// An election's policy elected another candidate over this leader.
    Preempted,
    /// An administrator revoked the hold (`Command::Revoke`).
    Revoked,
}

/// Why a waiter left the queue without being granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaveReason {
    TimedOut,
    Cancelled,
    SessionClosed,
    SessionExpired,
}

/// The enforcing policy that granted a hold: a deployed policy's name and version. Holds the
/// built-in FIFO granted (no binding, or a binding to `builtin`) carry none.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GrantedBy {
    pub policy: String,
    pub version: u64,
}

/// A change, in the order apply made it. Watchers, blocked Acquire RPCs and tests consume these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    SessionOpened {
        session_id: SessionId,
        /// The session's principal.
        principal: String,
    },
    SessionClosed {
        session_id: SessionId,
        /// The session's principal.
        principal: String,
    },
    SessionExpired {
        session_id: SessionId,
        /// The session's principal.
        principal: String,
    },
    Acquired {
        name: String,
        session_id: SessionId,
        /// The session's principal.
        principal: String,
        token: FencingToken,
        mode: Mode,
        lease_ms: u64,
        /// The policy that decided the grant (`None`: the built-in FIFO).
        granted_by: Option<GrantedBy>,
        /// The value the hold carries (an election candidate's; empty for plain locks).
        value: Vec<u8>,
    },
    /// The holder of `token` replaced its value.
    Proclaimed {
        name: String,
        session_id: SessionId,
        /// The session's principal.
        principal: String,
        token: FencingToken,
        value: Vec<u8>,
    },
    Released {
        name: String,
        session_id: SessionId,
        /// The session's principal.
        principal: String,
        token: FencingToken,
        reason: ReleaseReason,
    },
    Queued {
        name: String,
        session_id: SessionId,
        /// The session's principal.
        principal: String,
        position: u32,
    },
    LeftQueue {
        name: String,
        session_id: SessionId,
        /// The session's principal.
        principal: String,
        reason: LeaveReason,
    },
    PolicyDeployed {
        name: String,
        version: u64,
    },
    PolicyBound {
        prefix: String,
        policy: String,
        version: u64,
        mode: BindMode,
    },
    PolicyUnbound {
        prefix: String,
        mode: BindMode,
    },
    /// A policy hook failed (trap, fuel, memory, bad reply) or answered out of range, while
    /// deciding for lock `name`; the hook's fallback was used.
    PolicyFault {
        name: String,
        prefix: String,
        policy: String,
        version: u64,
        mode: BindMode,
        hook: String,
    },
    /// The shadow policy of `prefix` answered differently from the enforcing one for lock
    /// `name` (the enforcing answer stood).
    PolicyDisagreement {
        name: String,
        prefix: String,
        policy: String,
        version: u64,
        hook: String,
    },
}

/// Everything one apply produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub outcome: Outcome,
    pub events: Vec<Event>,
}
