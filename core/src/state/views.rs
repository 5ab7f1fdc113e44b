//! Read views: what the shell serves (Describe, List, CheckToken, session lookups, policy
//! listings) and what policies are shown of a lock's holders and waiters — copies taken out of
//! the state, so no caller holds a reference into it while apply goes on. Nothing here
//! mutates, and every listing is bounded (`LIST_LOCKS_MAX`) or sized by one lock or session.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Bound, DeadlineKind, Lock, State, position_u32};
use crate::limits;
use crate::model::GrantedBy;
use crate::model::{BindMode, FencingToken, Mode, SessionId};
use crate::vec_map::VecMap;

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
    /// The policy that granted it (`None`: the built-in FIFO).
    pub granted_by: Option<GrantedBy>,
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

/// One queued request as a policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaiterView {
    pub session_id: SessionId,
    pub mode: Mode,
    pub priority: i32,
    pub queued_at_ms: u64,
}

impl State {
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

    pub fn session(&self, id: SessionId) -> Option<SessionView> {
        let session = self.sessions.get(&id)?;
        Some(SessionView {
            session_id: id,
            principal: session.principal.clone(),
            labels: session
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ttl_ms: session.ttl_ms,
            expires_at_ms: session.expires_at_ms,
            holds: session
                .holds
                .iter()
                .map(|(name, token)| (name.to_string(), *token))
                .collect(),
            waiting: session.waiting.iter().cloned().collect(),
        })
    }

    /// Principal and labels of a live session (what policies see of holders and waiters).
    pub fn session_identity(&self, id: SessionId) -> Option<(&str, &VecMap<String, String>)> {
        self.sessions
            .get(&id)
            .map(|session| (session.principal.as_str(), &session.labels))
    }

    /// (locks, holds, waiters) over the whole lock table. O(1).
    pub fn lock_counts(&self) -> (usize, usize, usize) {
        (self.locks.len(), self.stakes.holds, self.stakes.waits)
    }

    /// Records in the state (sessions, locks, pending deadlines, policies, bindings): what a
    /// snapshot's size and build time grow with. O(1).
    pub fn record_count(&self) -> usize {
        self.sessions.len()
            + self.locks.len()
            + self.deadlines.len()
            + self.policies.len()
            + self.bindings.len()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn lock(&self, name: &str) -> Option<LockView> {
        self.locks.get(name).map(|lock| lock.view(name))
    }

    /// Until when lock `name` is in lock-delay, if it is. O(log n), no copy of the lock.
    pub fn lock_delayed_until_ms(&self, name: &str) -> Option<u64> {
        self.locks.get(name).and_then(|lock| lock.delayed_until_ms)
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

    /// A page of locks whose name starts with `prefix`, ordered by name, starting after
    /// `after` (None: from the first), at most `min(limit, LIST_LOCKS_MAX)`; and whether more
    /// follow. O(log n + page).
    pub fn locks_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<LockView>, bool) {
        let limit = limit.min(limits::LIST_LOCKS_MAX);
        let start = match after {
            Some(after) if after >= prefix => std::ops::Bound::Excluded(after),
            _ => std::ops::Bound::Included(prefix),
        };
        let mut names = self
            .locks
            .range::<str, _>((start, std::ops::Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix));
        let page = names
            .by_ref()
            .take(limit)
            .map(|(name, lock)| lock.view(name))
            .collect();
        (page, names.next().is_some())
    }

    /// Live sessions soonest to expire first (by the pending expiry deadlines, which order by
    /// time), those whose principal and labels `keep` accepts, at most `limit`, looking at no
    /// more than `scan_max` deadlines; and whether the scan stopped before the last deadline.
    /// Bounded work whatever the state's size: a session is copied only once kept.
    pub fn sessions_by_expiry(
        &self,
        keep: impl Fn(&str, &VecMap<String, String>) -> bool,
        limit: usize,
        scan_max: usize,
    ) -> (Vec<SessionView>, bool) {
        let mut page = Vec::new();
        let mut deadlines = self.deadlines.keys();
        for deadline in deadlines.by_ref().take(scan_max) {
            if let DeadlineKind::SessionExpiry { session_id } = deadline.kind
                && let Some((principal, labels)) = self.session_identity(session_id)
                && keep(principal, labels)
                && let Some(view) = self.session(session_id)
            {
                page.push(view);
                if page.len() >= limit {
                    break;
                }
            }
        }
        (page, deadlines.next().is_some())
    }

    /// Open sessions per principal, by principal, at most `limit` principals. O(page).
    pub fn sessions_per_principal(&self, limit: usize) -> Vec<(String, usize)> {
        self.sessions_by_principal
            .iter()
            .take(limit)
            .map(|(principal, count)| (principal.clone(), *count))
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
}

impl Lock {
    pub(crate) fn holder_views(&self) -> Vec<HolderView> {
        self.holders
            .iter()
            .map(|(session_id, hold)| HolderView {
                session_id: *session_id,
                token: hold.token,
                mode: hold.mode,
                since_ms: hold.since_ms,
                lease_expires_at_ms: hold.lease_expires_at_ms,
                value: hold.value.to_vec(),
                granted_by: hold.granted_by.as_deref().cloned(),
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
