//! Native test harness: build inputs by hand and call hooks without wasm.
//!
//! Call hooks directly (`MyPolicy.admit(&req)`) for plain unit tests, or through
//! [`call`] / [`admit`] / ... which encode the request, run [`dispatch`] (the
//! exact code path of the wasm export: decode, fresh `P::default()`, hook, encode) and decode
//! the reply — a check that the policy survives the protobuf round trip.
//!
//! ```
//! use holdfast_policy_sdk::prelude::*;
//! use holdfast_policy_sdk::testing::{self, holder, lock_request};
//!
//! #[derive(Default)]
//! struct NoShared;
//! impl Policy for NoShared {
//!     fn admit(&self, req: &AdmitRequest) -> AdmitReply {
//!         if req.lock_request().mode() == Mode::Shared {
//!             AdmitReply::deny("no shared locks here")
//!         } else {
//!             AdmitReply::grant_or_queue()
//!         }
//!     }
//! }
//!
//! let req = testing::admit_request(lock_request("a", Mode::Shared), "alice", &[])
//!     .with_holders(vec![holder(7, Mode::Shared)]);
//! assert!(testing::admit::<NoShared>(&req).is_deny());
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use prost::Message;

use crate::v1::{
    AdmitReply, AdmitRequest, Candidate, ChooseNextReply, ChooseNextRequest, Counters, ElectReply,
    ElectRequest, Holder, InitReply, InitRequest, Label, LeaseForReply, LeaseForRequest,
    LockRequest, Mode, OnSessionExpireReply, OnSessionExpireRequest, Waiter,
};
use crate::{Hook, Policy, dispatch};

/// Encodes `request`, runs `hook` of a fresh `P` through the ABI path and decodes the reply.
/// Panics if the reply does not decode as `Rep` (a bug in the SDK, not the policy).
pub fn call<P: Policy + Default, Req: Message, Rep: Message + Default>(
    hook: Hook,
    request: &Req,
) -> Rep {
    let output = dispatch::<P>(hook, &request.encode_to_vec()).expect("request decodes");
    Rep::decode(output.as_slice()).expect("reply decodes")
}

/// `init` through the ABI path.
pub fn init<P: Policy + Default>(config: &str, binding_prefix: &str) -> InitReply {
    let request = InitRequest {
        config: config.as_bytes().to_vec(),
        binding_prefix: binding_prefix.to_string(),
    };
    call::<P, _, _>(Hook::Init, &request)
}

/// `admit` through the ABI path.
pub fn admit<P: Policy + Default>(request: &AdmitRequest) -> AdmitReply {
    call::<P, _, _>(Hook::Admit, request)
}

/// `choose_next` through the ABI path.
pub fn choose_next<P: Policy + Default>(request: &ChooseNextRequest) -> ChooseNextReply {
    call::<P, _, _>(Hook::ChooseNext, request)
}

/// `lease_for` through the ABI path.
pub fn lease_for<P: Policy + Default>(request: &LeaseForRequest) -> LeaseForReply {
    call::<P, _, _>(Hook::LeaseFor, request)
}

/// `on_session_expire` through the ABI path.
pub fn on_session_expire<P: Policy + Default>(
    request: &OnSessionExpireRequest,
) -> OnSessionExpireReply {
    call::<P, _, _>(Hook::OnSessionExpire, request)
}

/// `elect` through the ABI path.
pub fn elect<P: Policy + Default>(request: &ElectRequest) -> ElectReply {
    call::<P, _, _>(Hook::Elect, request)
}

/// Labels from `(key, value)` pairs, sorted by key as the host sends them.
pub fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    let mut labels: Vec<Label> = pairs
        .iter()
        .map(|(key, value)| Label {
            key: key.to_string(),
            value: value.to_string(),
        })
        .collect();
    labels.sort_by(|a, b| a.key.cmp(&b.key));
    labels
}

/// A request for lock `name` in `mode`: waits 10 s, priority 0, `max_holders` 1 (exclusive)
/// or 8 (shared), session 1.
pub fn lock_request(name: &str, mode: Mode) -> LockRequest {
    LockRequest {
        name: name.to_string(),
        mode: mode as i32,
        max_holders: if mode == Mode::Shared { 8 } else { 1 },
        priority: 0,
        wait_timeout_ms: 10_000,
        session_id: 1,
    }
}

/// A holder: session `session_id`, token = session id + 1000, since 0, no lease.
pub fn holder(session_id: u64, mode: Mode) -> Holder {
    Holder {
        session_id,
        token: session_id + 1_000,
        mode: mode as i32,
        since_ms: 0,
        lease_expires_at_ms: 0,
        principal: String::new(),
        labels: Vec::new(),
    }
}

/// A waiter of session `session_id` with `priority`, queued at `queued_at_ms`.
pub fn waiter(session_id: u64, mode: Mode, priority: i32, queued_at_ms: u64) -> Waiter {
    Waiter {
        session_id,
        mode: mode as i32,
        priority,
        queued_at_ms,
        principal: String::new(),
        labels: Vec::new(),
    }
}

/// A candidate of session `session_id` campaigning since `since_ms`, with labels.
pub fn candidate(session_id: u64, since_ms: u64, pairs: &[(&str, &str)]) -> Candidate {
    Candidate {
        session_id,
        principal: String::new(),
        labels: labels(pairs),
        priority: 0,
        since_ms,
        token: session_id,
    }
}

/// An admit request for `request` by `principal` with labels, on a free lock, zero counters
/// (tenant taken from the `tenant` label), now 0, log index 1, empty config.
pub fn admit_request(
    request: LockRequest,
    principal: &str,
    pairs: &[(&str, &str)],
) -> AdmitRequest {
    let labels = labels(pairs);
    let tenant = crate::messages::label(&labels, "tenant")
        .unwrap_or_default()
        .to_string();
    AdmitRequest {
        config: Vec::new(),
        now_ms: 0,
        log_index: 1,
        request: Some(request),
        principal: principal.to_string(),
        labels,
        holders: Vec::new(),
        waiters: Vec::new(),
        waiters_truncated: 0,
        counters: Some(Counters {
            tenant,
            ..Counters::default()
        }),
    }
}

/// A lease_for request for `request` on a free lock, now 0, log index 1, empty config.
pub fn lease_for_request(request: LockRequest) -> LeaseForRequest {
    LeaseForRequest {
        log_index: 1,
        request: Some(request),
        ..LeaseForRequest::default()
    }
}

/// A choose_next request for lock `name`.
pub fn choose_next_request(
    name: &str,
    holders: Vec<Holder>,
    waiters: Vec<Waiter>,
    max_holders: u32,
) -> ChooseNextRequest {
    ChooseNextRequest {
        name: name.to_string(),
        holders,
        waiters,
        max_holders,
        log_index: 1,
        ..ChooseNextRequest::default()
    }
}

/// Builder-style setters for hand-built requests.
macro_rules! with_common {
    ($($ty:ty),*) => {$(
        impl $ty {
            /// Sets the binding config (text).
            #[must_use]
            pub fn with_config(mut self, config: &str) -> Self {
                self.config = config.as_bytes().to_vec();
                self
            }
            /// Sets `now_ms`.
            #[must_use]
            pub fn at(mut self, now_ms: u64) -> Self {
                self.now_ms = now_ms;
                self
            }
        }
    )*};
}
with_common!(
    AdmitRequest,
    ChooseNextRequest,
    LeaseForRequest,
    OnSessionExpireRequest,
    ElectRequest
);

impl AdmitRequest {
    /// Sets the holders.
    #[must_use]
    pub fn with_holders(mut self, holders: Vec<Holder>) -> Self {
        self.holders = holders;
        self
    }
    /// Sets the waiters.
    #[must_use]
    pub fn with_waiters(mut self, waiters: Vec<Waiter>) -> Self {
        self.waiters = waiters;
        self
    }
    /// Sets the tenant counters (holds, waits).
    #[must_use]
    pub fn with_tenant_counts(mut self, holds: u32, waits: u32) -> Self {
        let counters = self.counters.get_or_insert_with(Counters::default);
        counters.tenant_holds = holds;
        counters.tenant_waits = waits;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Admission, ElectAction};

    #[derive(Default)]
    struct Defaults;
    impl Policy for Defaults {}

    #[test]
    fn defaults_are_the_builtin_behaviour() {
        assert!(init::<Defaults>("anything", "").ok);
        let req = admit_request(lock_request("a", Mode::Exclusive), "p", &[]);
        assert_eq!(admit::<Defaults>(&req).admission(), Admission::GrantOrQueue);
        let lease = lease_for::<Defaults>(&lease_for_request(lock_request("a", Mode::Shared)));
        assert_eq!((lease.lease_ms, lease.lock_delay_ms), (0, 0));
        assert!(
            on_session_expire::<Defaults>(&OnSessionExpireRequest::default())
                .holds
                .is_empty()
        );

        // FIFO: head shared, shared run behind it up to capacity, never past a writer.
        let waiters = alloc::vec![
            waiter(1, Mode::Shared, 0, 0),
            waiter(2, Mode::Shared, 9, 1),
            waiter(3, Mode::Exclusive, 0, 2),
            waiter(4, Mode::Shared, 0, 3),
        ];
        let req = choose_next_request("a", Vec::new(), waiters.clone(), 8);
        assert_eq!(choose_next::<Defaults>(&req).grant, [0, 1]);
        let req = choose_next_request(
            "a",
            alloc::vec![holder(9, Mode::Shared)],
            waiters.clone(),
            2,
        );
        assert_eq!(choose_next::<Defaults>(&req).grant, [0]);
        let req = choose_next_request("a", alloc::vec![holder(9, Mode::Exclusive)], waiters, 8);
        assert!(choose_next::<Defaults>(&req).grant.is_empty());

        // Election: earliest candidate without an incumbent, keep one otherwise.
        let mut req = ElectRequest {
            candidates: alloc::vec![candidate(5, 10, &[]), candidate(6, 20, &[])],
            ..ElectRequest::default()
        };
        let reply = elect::<Defaults>(&req);
        assert_eq!((reply.action(), reply.winner), (ElectAction::Elect, 0));
        req.incumbent = Some(candidate(4, 0, &[]));
        assert_eq!(elect::<Defaults>(&req).action(), ElectAction::KeepIncumbent);
    }

    #[test]
    fn undecodable_input_is_an_error() {
        assert!(dispatch::<Defaults>(Hook::Admit, &[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn reply_helpers() {
        let reply = AdmitReply::deny("no").with_priority(3);
        assert!(reply.is_deny());
        assert_eq!(reply.priority, Some(3));
        let reply: InitReply = Err::<(), _>(String::from("bad")).into();
        assert!(!reply.ok);
        assert_eq!(reply.error, "bad");
    }
}
