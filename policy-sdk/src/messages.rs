//! Convenience methods on the generated ABI messages.

use alloc::string::String;

use crate::v1::{
    Admission, AdmitReply, AdmitRequest, Candidate, Counters, ElectAction, ElectReply,
    ElectRequest, Holder, InitReply, Label, LeaseForReply, LeaseForRequest, LockRequest, Waiter,
};

/// The value of `key` in a label list (sorted by key, keys unique), if present.
pub fn label<'a>(labels: &'a [Label], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|label| label.key == key)
        .map(|label| label.value.as_str())
}

static EMPTY_REQUEST: LockRequest = LockRequest {
    name: String::new(),
    mode: 0,
    max_holders: 0,
    priority: 0,
    wait_timeout_ms: 0,
    session_id: 0,
};

static EMPTY_COUNTERS: Counters = Counters {
    principal_holds: 0,
    principal_waits: 0,
    tenant: String::new(),
    tenant_holds: 0,
    tenant_waits: 0,
};

impl AdmitRequest {
    /// The acquire request (an empty one if the host left it out, which it never does).
    pub fn lock_request(&self) -> &LockRequest {
        self.request.as_ref().unwrap_or(&EMPTY_REQUEST)
    }

    /// The requester's counters (all zero if absent).
    pub fn counters(&self) -> &Counters {
        self.counters.as_ref().unwrap_or(&EMPTY_COUNTERS)
    }

    /// A label of the requesting session.
    pub fn label(&self, key: &str) -> Option<&str> {
        label(&self.labels, key)
    }
}

impl LeaseForRequest {
    /// The request being granted.
    pub fn lock_request(&self) -> &LockRequest {
        self.request.as_ref().unwrap_or(&EMPTY_REQUEST)
    }

    /// A label of the session being granted.
    pub fn label(&self, key: &str) -> Option<&str> {
        label(&self.labels, key)
    }
}

impl Holder {
    /// A label of the holding session.
    pub fn label(&self, key: &str) -> Option<&str> {
        label(&self.labels, key)
    }
}

impl Waiter {
    /// A label of the waiting session.
    pub fn label(&self, key: &str) -> Option<&str> {
        label(&self.labels, key)
    }
}

impl Candidate {
    /// A label of the candidate's session.
    pub fn label(&self, key: &str) -> Option<&str> {
        label(&self.labels, key)
    }
}

impl AdmitReply {
    /// Proceed: grant if free, else queue.
    pub fn grant_or_queue() -> AdmitReply {
        AdmitReply {
            admission: Admission::GrantOrQueue as i32,
            reason: String::new(),
            priority: None,
        }
    }

    /// Deny with a reason shown to the client (truncated by the host to
    /// [`limits::REASON_BYTES_MAX`](crate::limits::REASON_BYTES_MAX) bytes).
    pub fn deny(reason: impl Into<String>) -> AdmitReply {
        AdmitReply {
            admission: Admission::Deny as i32,
            reason: reason.into(),
            priority: None,
        }
    }

    /// Replaces the request's priority for queueing.
    #[must_use]
    pub fn with_priority(mut self, priority: i32) -> AdmitReply {
        self.priority = Some(priority);
        self
    }

    /// True for a deny.
    pub fn is_deny(&self) -> bool {
        self.admission() == Admission::Deny
    }
}

impl LeaseForReply {
    /// A lease of `lease_ms` (0 = while the session lives) and a lock-delay of `lock_delay_ms`.
    pub fn new(lease_ms: u64, lock_delay_ms: u64) -> LeaseForReply {
        LeaseForReply {
            lease_ms,
            lock_delay_ms,
        }
    }
}

impl ElectReply {
    /// Keep the incumbent; optionally ask to be called again at `reevaluate_at_ms` (0 = no).
    pub fn keep_incumbent(reevaluate_at_ms: u64) -> ElectReply {
        ElectReply {
            action: ElectAction::KeepIncumbent as i32,
            winner: 0,
            preempt_grace_ms: 0,
            reevaluate_at_ms,
        }
    }

    /// Elect `candidates[winner]` (preempting the incumbent, if any, after `preempt_grace_ms`).
    pub fn elect(winner: u32, preempt_grace_ms: u64) -> ElectReply {
        ElectReply {
            action: ElectAction::Elect as i32,
            winner,
            preempt_grace_ms,
            reevaluate_at_ms: 0,
        }
    }
}

impl ElectRequest {
    /// Cluster time for which the incumbent has led (0 without an incumbent).
    pub fn incumbent_tenure_ms(&self) -> u64 {
        self.incumbent.as_ref().map_or(0, |incumbent| {
            self.now_ms.saturating_sub(incumbent.since_ms)
        })
    }
}

impl From<Result<(), String>> for InitReply {
    fn from(result: Result<(), String>) -> InitReply {
        match result {
            Ok(()) => InitReply {
                ok: true,
                error: String::new(),
            },
            Err(error) => InitReply { ok: false, error },
        }
    }
}
