//! The console's JSON: one function per page, each a bounded read of the node's applied state
//! (one read lock, copies out) stamped with its freshness. Durations are computed against the
//! state's cluster time (`now_ms`), the same clock the leases and TTLs run on.

use holdfast_core::{Event, HolderView, LockView, State, VecMap, WaiterInfo, limits};
use openraft::async_runtime::WatchReceiver as _;
use serde_json::{Value, json};

use super::query::{ApiError, Query};
use crate::node::Node;
use crate::node::status::role_name;
use crate::policy::module::hex;

/// Locks per page of the lock list (default 50).
pub const CONSOLE_LOCKS_PAGE_MAX: usize = 200;
/// Holders listed per lock in the lock list (the lock's own page lists them all).
pub const CONSOLE_HOLDERS_LISTED_MAX: usize = 8;
/// Waiters listed on a lock's page, in queue order; the count covers the rest.
pub const CONSOLE_WAITERS_LISTED_MAX: usize = 256;
/// Events of a lock's recent history (from the watch hub's in-memory history).
pub const CONSOLE_LOCK_HISTORY_MAX: usize = 50;
/// Sessions per page of the session list (default 50).
pub const CONSOLE_SESSIONS_PAGE_MAX: usize = 200;
/// Pending deadlines the session list looks through for the soonest expiries.
pub const CONSOLE_DEADLINES_SCANNED_MAX: usize = 100_000;
/// Principals listed with their session counts.
pub const CONSOLE_PRINCIPALS_MAX: usize = 200;
/// Holds and waits listed per session in the session list.
pub const CONSOLE_SESSION_LOCKS_LISTED_MAX: usize = 16;
/// Bytes of a hold's value or a binding's config shown (as text, lossy).
pub const CONSOLE_VALUE_SHOWN_BYTES_MAX: usize = 256;
/// The session label the tenant-quota policy (and the session page's tenant filter) reads.
pub const TENANT_LABEL: &str = "tenant";

/// How fresh an answer is: which node, in what role, at which applied index and cluster time.
pub fn freshness(node: &Node) -> Value {
    let (state, term) = {
        let metrics = node.raft.metrics();
        let metrics = metrics.borrow_watched();
        (metrics.state, metrics.current_term)
    };
    let (leader, _) = node.leader();
    let (applied_index, now_ms) = node.shared.read(|s| (s.applied_index(), s.now_ms()));
    json!({
        "node": node.id,
        "role": role_name(state),
        "term": term,
        "leader": leader,
        "applied_index": applied_index,
        "now_ms": now_ms,
    })
}

pub async fn cluster(node: &Node) -> Value {
    let members = node.cluster_status().await;
    json!({ "freshness": freshness(node), "members": members })
}

pub fn locks(node: &Node, query: &Query) -> Result<Value, ApiError> {
    let prefix = name_param(query, "prefix")?.unwrap_or("");
    let after = name_param(query, "after")?.filter(|after| !after.is_empty());
    let limit = query.number("limit", 50, CONSOLE_LOCKS_PAGE_MAX)?;
    let page = node.shared.read(|state| {
        let now = state.now_ms();
        let (locks, more) = state.locks_page(prefix, after, limit);
        let (all_locks, holds, waits) = state.lock_counts();
        json!({
            "prefix": prefix,
            "more": more,
            "next_after": if more { locks.last().map(|lock| lock.name.clone()) } else { None },
            "totals": { "locks": all_locks, "holds": holds, "waits": waits },
            "locks": locks.iter().map(|lock| {
                let mut summary = lock_json(state, lock, now, CONSOLE_HOLDERS_LISTED_MAX, 0);
                summary["first_waiters"] = lock.waiters.iter().take(3)
                    .map(|waiter| waiter_json(state, waiter, now)).collect();
                summary
            }).collect::<Vec<_>>(),
        })
    });
    Ok(with_freshness(node, page))
}

pub fn lock(node: &Node, query: &Query) -> Result<Value, ApiError> {
    let name =
        name_param(query, "name")?.ok_or_else(|| ApiError::bad_request("name= is required"))?;
    let page = node.shared.read(|state| {
        let now = state.now_ms();
        let (enforce, shadow) = state.bindings_for(name);
        let binding = |view: Option<holdfast_core::BindingView>| {
            view.map(|view| json!({ "prefix": view.prefix, "policy": view.policy, "version": view.version }))
        };
        json!({
            "name": name,
            "lock": state.lock(name).map(|lock| {
                lock_json(state, &lock, now, usize::MAX, CONSOLE_WAITERS_LISTED_MAX)
            }),
            "enforce": binding(enforce),
            "shadow": binding(shadow),
        })
    });
    let history: Vec<Value> = node
        .shared
        .watch
        .lock_history(name, CONSOLE_LOCK_HISTORY_MAX)
        .into_iter()
        .map(|(revision, event)| event_json(revision, &event))
        .collect();
    let mut page = with_freshness(node, page);
    page["history"] = history.into();
    Ok(page)
}

pub fn sessions(node: &Node, query: &Query) -> Result<Value, ApiError> {
    let principal = query.get("principal").filter(|p| !p.is_empty());
    let tenant = query.get("tenant").filter(|t| !t.is_empty());
    if principal.is_some_and(|p| p.len() > limits::PRINCIPAL_BYTES_MAX)
        || tenant.is_some_and(|t| t.len() > limits::LABEL_BYTES_MAX)
    {
        return Err(ApiError::bad_request(
            "principal or tenant longer than any session can have",
        ));
    }
    let limit = query.number("limit", 50, CONSOLE_SESSIONS_PAGE_MAX)?;
    let keep = |session_principal: &str, labels: &VecMap<String, String>| {
        principal.is_none_or(|p| session_principal == p)
            && tenant.is_none_or(|t| labels.get(TENANT_LABEL).map(String::as_str) == Some(t))
    };
    let page = node.shared.read(|state| {
        let now = state.now_ms();
        let (sessions, more) = state.sessions_by_expiry(keep, limit, CONSOLE_DEADLINES_SCANNED_MAX);
        json!({
            "principal": principal,
            "tenant": tenant,
            "total": state.session_count(),
            "more": more,
            "principals": state.sessions_per_principal(CONSOLE_PRINCIPALS_MAX).into_iter()
                .map(|(principal, sessions)| json!({ "principal": principal, "sessions": sessions }))
                .collect::<Vec<_>>(),
            "sessions": sessions.iter().map(|session| json!({
                "session_id": session.session_id,
                "principal": session.principal,
                "tenant": session.labels.get(TENANT_LABEL),
                "labels": session.labels,
                "ttl_ms": session.ttl_ms,
                "ttl_left_ms": session.expires_at_ms.saturating_sub(now),
                "hold_count": session.holds.len(),
                "holds": session.holds.iter().take(CONSOLE_SESSION_LOCKS_LISTED_MAX)
                    .map(|(name, token)| json!({ "name": name, "token": token }))
                    .collect::<Vec<_>>(),
                "wait_count": session.waiting.len(),
                "waiting": session.waiting.iter().take(CONSOLE_SESSION_LOCKS_LISTED_MAX)
                    .collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    });
    Ok(with_freshness(node, page))
}

pub fn policies(node: &Node) -> Value {
    let page = node.shared.read(|state| {
        json!({
            "fault_count": state.policy_fault_count(),
            "policies": state.policies().into_iter().map(|policy| json!({
                "name": policy.name,
                "version": policy.version,
                "sha256": hex(&policy.sha256),
                "module_bytes": policy.module_bytes,
                "deployed_at_ms": policy.deployed_at,
                "meta_name": policy.meta_name,
                "meta_version": policy.meta_version,
                "hooks": policy.hooks,
            })).collect::<Vec<_>>(),
            "bindings": state.bindings().into_iter().map(|binding| json!({
                "prefix": binding.prefix,
                "mode": binding.mode,
                "policy": binding.policy,
                "version": binding.version,
                "config": shown(&binding.config),
                "bound_at_ms": binding.bound_at,
                "faults": binding.faults,
                "disagreements": binding.disagreements,
                "compared": binding.compared,
            })).collect::<Vec<_>>(),
        })
    });
    let mut page = with_freshness(node, page);
    page["latency"] = node
        .shared
        .policy_latency
        .summaries()
        .into_iter()
        .map(|(hook, summary)| json!({ "hook": hook, "recent": summary }))
        .collect::<Vec<_>>()
        .into();
    page
}

/// A name-like parameter, refused past the longest lock name.
fn name_param<'q>(query: &'q Query, key: &str) -> Result<Option<&'q str>, ApiError> {
    match query.get(key) {
        Some(value) if value.len() > limits::LOCK_NAME_BYTES_MAX => {
            Err(ApiError::bad_request(format!(
                "{key} of {} bytes; lock names are at most {}",
                value.len(),
                limits::LOCK_NAME_BYTES_MAX
            )))
        }
        other => Ok(other),
    }
}

fn with_freshness(node: &Node, mut page: Value) -> Value {
    page["freshness"] = freshness(node);
    page
}

fn lock_json(
    state: &State,
    lock: &LockView,
    now: u64,
    holders_max: usize,
    waiters_max: usize,
) -> Value {
    json!({
        "name": lock.name,
        "mode": lock.mode,
        "max_holders": lock.max_holders,
        "holder_count": lock.holders.len(),
        "holders": lock.holders.iter().take(holders_max)
            .map(|holder| holder_json(state, holder, now)).collect::<Vec<_>>(),
        "waiter_count": lock.waiters.len(),
        "waiters": lock.waiters.iter().take(waiters_max)
            .map(|waiter| waiter_json(state, waiter, now)).collect::<Vec<_>>(),
        "delayed_until_ms": lock.delayed_until_ms,
        "delay_left_ms": lock.delayed_until_ms.map(|until| until.saturating_sub(now)),
    })
}

fn holder_json(state: &State, holder: &HolderView, now: u64) -> Value {
    let (principal, tenant) = identity(state, holder.session_id);
    json!({
        "session_id": holder.session_id,
        "principal": principal,
        "tenant": tenant,
        "token": holder.token,
        "mode": holder.mode,
        "held_for_ms": now.saturating_sub(holder.since_ms),
        "lease_left_ms": holder.lease_expires_at_ms.map(|at| at.saturating_sub(now)),
        "granted_by": holder.granted_by,
        "value": shown(&holder.value),
    })
}

fn waiter_json(state: &State, waiter: &WaiterInfo, now: u64) -> Value {
    let (principal, tenant) = identity(state, waiter.session_id);
    json!({
        "position": waiter.position,
        "session_id": waiter.session_id,
        "principal": principal,
        "tenant": tenant,
        "mode": waiter.mode,
        "priority": waiter.priority,
        "waited_ms": now.saturating_sub(waiter.queued_at_ms),
        "deadline_left_ms": waiter.deadline_ms.saturating_sub(now),
    })
}

fn identity(state: &State, session_id: u64) -> (Option<String>, Option<String>) {
    match state.session_identity(session_id) {
        Some((principal, labels)) => (
            Some(principal.to_owned()),
            labels.get(TENANT_LABEL).cloned(),
        ),
        None => (None, None),
    }
}

/// An event as `{revision, kind, ...its fields}`.
fn event_json(revision: u64, event: &Event) -> Value {
    let mut fields = json!({ "revision": revision });
    if let Ok(Value::Object(tagged)) = serde_json::to_value(event)
        && let Some((kind, Value::Object(body))) = tagged.into_iter().next()
    {
        fields["kind"] = kind.into();
        for (key, value) in body {
            if key == "value" {
                continue;
            }
            fields[key] = value;
        }
    }
    fields
}

/// Bytes as text for a person: lossy UTF-8, cut at [`CONSOLE_VALUE_SHOWN_BYTES_MAX`].
fn shown(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(CONSOLE_VALUE_SHOWN_BYTES_MAX)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if cut.len() < bytes.len() {
        text.push('…');
    }
    text
}
