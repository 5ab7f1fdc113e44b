//! Core inputs as ABI requests: what `holdfast-core` hands a policy hook (a lock request, the
//! holders and waiters, a session's identity) encoded as `holdfast.policy.v1` messages, with
//! labels sorted and lists truncated to `POLICY_LIST_MAX` as docs/policy-abi.md specifies.

use holdfast_core::VecMap;

use holdfast_core::{AdmitInput, HolderView, Mode, NextInput, State, WaiterView, limits};
use holdfast_proto::policy::v1 as pb;

use super::engine::POLICY_LIST_MAX;

pub(super) fn mode(mode: Mode) -> i32 {
    match mode {
        Mode::Exclusive => pb::Mode::Exclusive as i32,
        Mode::Shared => pb::Mode::Shared as i32,
    }
}

/// Labels as the ABI wants them: sorted by key (a `VecMap` already is).
pub(super) fn labels(labels: &VecMap<String, String>) -> Vec<pb::Label> {
    labels
        .iter()
        .map(|(key, value)| pb::Label {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// Principal and labels of session `id` as the ABI shows them ("" and none if it is gone).
pub(super) fn identity(state: &State, id: u64) -> (String, Vec<pb::Label>) {
    state
        .session_identity(id)
        .map_or_else(Default::default, |(principal, session_labels)| {
            (principal.to_string(), labels(session_labels))
        })
}

/// Holders in session-id order, with their principals and labels.
pub(super) fn holders(state: &State, holders: &[HolderView]) -> Vec<pb::Holder> {
    holders
        .iter()
        .map(|holder| {
            let (principal, labels) = identity(state, holder.session_id);
            pb::Holder {
                session_id: holder.session_id,
                token: holder.token,
                mode: mode(holder.mode),
                since_ms: holder.since_ms,
                lease_expires_at_ms: holder.lease_expires_at_ms.unwrap_or(0),
                principal,
                labels,
            }
        })
        .collect()
}

/// Waiters in queue order cut to `POLICY_LIST_MAX`, with their principals and labels, and how
/// many were left off.
pub(super) fn waiters(state: &State, waiters: &[WaiterView]) -> (Vec<pb::Waiter>, u32) {
    let kept = waiters.len().min(POLICY_LIST_MAX);
    let truncated = u32::try_from(waiters.len() - kept).unwrap_or(u32::MAX);
    let list = waiters[..kept]
        .iter()
        .map(|waiter| {
            let (principal, labels) = identity(state, waiter.session_id);
            pb::Waiter {
                session_id: waiter.session_id,
                mode: mode(waiter.mode),
                priority: waiter.priority,
                queued_at_ms: waiter.queued_at_ms,
                principal,
                labels,
            }
        })
        .collect();
    (list, truncated)
}

pub(super) fn lock_request(input: &AdmitInput<'_>) -> pb::LockRequest {
    let request = input.request;
    pb::LockRequest {
        name: request.name.clone(),
        mode: mode(request.mode),
        // Core's 0 means "the maximum"; the ABI always sends the effective capacity.
        max_holders: if request.max_holders == 0 {
            limits::HOLDERS_PER_LOCK_MAX
        } else {
            request.max_holders
        },
        priority: request.priority,
        wait_timeout_ms: request.wait_timeout_ms,
        session_id: request.session_id,
    }
}

pub(super) fn admit_request(config: &[u8], input: &AdmitInput<'_>) -> pb::AdmitRequest {
    let (waiters, waiters_truncated) = waiters(input.state, &input.waiters);
    let counters = &input.counters;
    pb::AdmitRequest {
        config: config.to_vec(),
        now_ms: input.now_ms,
        log_index: input.log_index,
        request: Some(lock_request(input)),
        principal: input.principal.to_string(),
        labels: labels(input.labels),
        holders: holders(input.state, &input.holders),
        waiters,
        waiters_truncated,
        counters: Some(pb::Counters {
            principal_holds: counters.principal_holds,
            principal_waits: counters.principal_waits,
            tenant: counters.tenant.clone(),
            tenant_holds: counters.tenant_holds,
            tenant_waits: counters.tenant_waits,
        }),
    }
}

pub(super) fn choose_next_request(config: &[u8], input: &NextInput<'_>) -> pb::ChooseNextRequest {
    let (waiters, waiters_truncated) = waiters(input.state, input.waiters);
    pb::ChooseNextRequest {
        config: config.to_vec(),
        now_ms: input.now_ms,
        log_index: input.log_index,
        name: input.name.to_string(),
        holders: holders(input.state, input.holders),
        waiters,
        waiters_truncated,
        max_holders: input.max_holders,
    }
}

pub(super) fn lease_for_request(config: &[u8], input: &AdmitInput<'_>) -> pb::LeaseForRequest {
    let (waiters, waiters_truncated) = waiters(input.state, &input.waiters);
    pb::LeaseForRequest {
        config: config.to_vec(),
        now_ms: input.now_ms,
        log_index: input.log_index,
        request: Some(lock_request(input)),
        principal: input.principal.to_string(),
        labels: labels(input.labels),
        holders: holders(input.state, &input.holders),
        waiters,
        waiters_truncated,
    }
}
