//! [`apply`]: one committed entry in, the new state and an [`Applied`] out.
//!
//! Every entry runs the same four phases, which fixes the order of events:
//!
//! 1. `Tick` only: renew the listed sessions (`expires_at = now + ttl`), so a keepalive that
//!    rides this tick saves a session whose deadline just passed.
//! 2. Fire every deadline due at `now`, in deadline-index order (time, then session expiry,
//!    lease expiry, wait timeout, lock-delay end, election preemption, election re-evaluation,
//!    then key). This phase only *removes* holds and waiters (a due preemption revokes the
//!    leader's hold) and ends lock-delays; the locks it touches are marked dirty.
//! 3. The command. Only `Acquire` grants here (after first running the pending handoff of its
//!    own lock, so a try-lock sees the lock as it will be; and, for an election, a candidate
//!    the policy prefers to the leader may preempt it on arrival); `Release`, `CloseSession` and
//!    `CancelWait` only remove, marking locks dirty.
//! 4. Handoff: every dirty lock, by name, asks the policy whom to grant next (validated, FIFO
//!    fallback) — or, for an election (the bound policy has an `elect` hook), whom to elect.
//!
//! Because every hold that ends in an entry ends before any grant of that entry on the same
//! lock, and every grant's fencing token is the entry's log index, a token is never reused
//! after its hold ended: tokens strictly increase per lock across holds.
//!
//! Rejections leave the state unchanged apart from `applied_index`, `now_ms`, the deadlines
//! that fell due, and the session's recorded outcome (so a retry gets the same rejection).
//!
//! Decisions where DESIGN.md is silent:
//! - Ending a session: its waiters leave (by lock name), its holds are released (by lock
//!   name), then `SessionClosed` / `SessionExpired`. Only expiry imposes lock-delay; a lock
//!   kept only by its lock-delay still exists (Describe shows it) until the delay ends.
//! - Idempotency: every Acquire/Release outcome with a non-zero request id is recorded,
//!   rejections included, in a window of `RECENT_REQUESTS_PER_SESSION_MAX` per session
//!   (smallest ids evicted; ids below the window are `RequestTooOld`). A queued Acquire's record
//!   follows the waiter: `Acquired` on grant, `Rejected(WaitTimedOut)` on timeout,
//!   `WaitCancelled` on cancel; while still queued a retry reports the current position.
//! - Re-entrancy: acquiring a held lock in the same mode (and capacity) returns the same hold;
//!   another mode is `ModeConflict` (no upgrade or downgrade). Likewise for a queued request.
//! - Shared capacity: `max_holders` (0 = `HOLDERS_PER_LOCK_MAX`) is pinned by the first shared
//!   holder or waiter and must match while any shared holder or waiter remains.

mod deadlines;
mod elections;
mod handoff;
mod idempotency;
mod locks;
mod policies;
mod sessions;

use std::collections::BTreeSet;

use crate::limits;
use crate::model::{Applied, BindMode, Command, Entry, Event, Outcome, Rejection, SessionId};
use crate::policy::PolicyHost;
use crate::state::State;

/// For tools asking "what if", never for a replica: applies a policy administration command
/// (`DeployPolicy`, `BindPolicy`, `Unbind`) between the last applied entry and the next one,
/// as if it were part of the last one: the applied index and cluster time stay as they were,
/// so a recorded log still applies after it index by index. `holdfast policy replay` binds a
/// candidate policy this way. Panics on any other command, or before the first entry.
pub fn apply_between<H: PolicyHost + ?Sized>(
    state: &mut State,
    command: Command,
    host: &mut H,
) -> Applied {
    assert!(
        matches!(
            command,
            Command::DeployPolicy { .. } | Command::BindPolicy { .. } | Command::Unbind { .. }
        ),
        "apply_between takes policy administration only"
    );
    let index = state.applied_index;
    assert!(index > 0, "apply_between before the first entry");
    state.applied_index = index - 1;
    let entry = Entry {
        log_index: index,
        now_ms: state.now_ms,
        command,
    };
    apply(state, &entry, host)
}

/// Applies one committed entry. Same state + same entry (+ a deterministic policy) => same
/// result and same state bytes, on every replica. Never fails: bad input gives
/// `Outcome::Rejected`.
///
/// # Panics
/// If `entry.log_index` is not above `state.applied_index` (the shell applied out of order),
/// or if an internal invariant breaks: both are bugs, and a replica must stop rather than
/// diverge.
pub fn apply<H: PolicyHost + ?Sized>(state: &mut State, entry: &Entry, host: &mut H) -> Applied {
    assert!(
        entry.log_index > state.applied_index,
        "entry {} applied after entry {}",
        entry.log_index,
        state.applied_index
    );
    let now_before = state.now_ms;
    state.applied_index = entry.log_index;
    state.now_ms = state.now_ms.max(entry.now_ms.min(limits::NOW_MS_MAX));
    assert!(state.now_ms >= now_before && state.now_ms <= limits::NOW_MS_MAX);

    let mut applier = Applier {
        state,
        host,
        log_index: entry.log_index,
        events: Vec::new(),
        dirty: BTreeSet::new(),
    };
    let mut outcome = Outcome::None;
    if let Command::Tick { renewed } = &entry.command {
        outcome = applier.renew(renewed);
    }
    applier.fire_due_deadlines();
    match &entry.command {
        Command::Noop | Command::Tick { .. } => {}
        Command::OpenSession {
            ttl_ms,
            principal,
            labels,
        } => {
            outcome = applier.open_session(*ttl_ms, principal, labels);
        }
        Command::CloseSession { session_id } => outcome = applier.close_session(*session_id),
        Command::Acquire(request) => outcome = applier.acquire(request),
        Command::Release {
            session_id,
            request_id,
            name,
            token,
        } => {
            outcome = applier.release(*session_id, *request_id, name, *token);
        }
        Command::CancelWait { session_id, name } => {
            outcome = applier.cancel_wait(*session_id, name)
        }
        Command::Revoke { name, token } => outcome = applier.revoke(name, *token),
        Command::Proclaim {
            session_id,
            name,
            token,
            value,
        } => outcome = applier.proclaim(*session_id, name, *token, value),
        Command::DeployPolicy { name, wasm } => outcome = applier.deploy_policy(name, wasm),
        Command::BindPolicy {
            prefix,
            policy,
            version,
            config,
            mode,
        } => {
            // Handoffs due before this entry's binding change decide under the old bindings.
            applier.handoff_dirty();
            outcome = applier.bind_policy(prefix, policy, *version, config, *mode);
        }
        Command::Unbind { prefix, mode } => {
            applier.handoff_dirty();
            outcome = applier.unbind(prefix, *mode);
        }
    }
    applier.handoff_dirty();
    let events = applier.events;
    state.settle();
    Applied { outcome, events }
}

/// One entry being applied: the state, the policy host, and what the entry produced so far.
struct Applier<'a, H: PolicyHost + ?Sized> {
    state: &'a mut State,
    host: &'a mut H,
    log_index: u64,
    events: Vec<Event>,
    /// Locks that lost a holder or waiter, or whose lock-delay ended: handoff runs on them.
    dirty: BTreeSet<String>,
}

/// How a session ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    Closed,
    Expired,
}

/// A binding deciding for a lock, by key (looked up again in state when used).
#[derive(Clone, Debug)]
struct Route {
    prefix: String,
    mode: BindMode,
}

impl<H: PolicyHost + ?Sized> Applier<'_, H> {
    fn now_ms(&self) -> u64 {
        self.state.now_ms
    }

    /// The principal of a live session ("" if it is gone), for events.
    fn principal_of(&self, session_id: SessionId) -> String {
        self.state
            .sessions
            .get(&session_id)
            .map(|s| s.principal.clone())
            .unwrap_or_default()
    }
}

fn invalid(field: &str, reason: String) -> Outcome {
    Outcome::Rejected(Rejection::InvalidArgument {
        field: field.to_string(),
        reason,
    })
}
