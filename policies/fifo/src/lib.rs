//! `fifo`: the wasm twin of Holdfast's built-in policy. Admits every request, hands a lock to
//! the longest prefix of the queue that fits beside the holders (the head; if it is shared,
//! the shared waiters directly behind it while capacity lasts), no lease, no lock-delay.
//!
//! It exists to measure the cost of running a policy in wasm against the native built-in, and
//! for differential tests (same command stream, same outcomes and state digests). No config.
#![no_std]

use holdfast_policy_sdk::prelude::*;

/// The FIFO policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fifo;

impl Policy for Fifo {
    fn init(&self, req: &InitRequest) -> Result<(), String> {
        if req.config.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err("fifo takes no config".into())
        }
    }

    fn admit(&self, _req: &AdmitRequest) -> AdmitReply {
        AdmitReply::grant_or_queue()
    }

    fn choose_next(&self, req: &ChooseNextRequest) -> ChooseNextReply {
        ChooseNextReply {
            grant: builtin::fifo_choice(&req.holders, &req.waiters, req.max_holders),
        }
    }

    fn lease_for(&self, _req: &LeaseForRequest) -> LeaseForReply {
        LeaseForReply::new(0, 0)
    }
}

export_policy!(Fifo, [init, admit, choose_next, lease_for]);

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_policy_sdk::testing::{self, holder, lock_request, waiter};

    #[test]
    fn admits_everything_without_lease() {
        let req = testing::admit_request(lock_request("a", Mode::Exclusive), "p", &[])
            .with_holders(vec![holder(1, Mode::Exclusive)]);
        assert_eq!(
            testing::admit::<Fifo>(&req).admission(),
            Admission::GrantOrQueue
        );
        let lease = testing::lease_for::<Fifo>(&testing::lease_for_request(lock_request(
            "a",
            Mode::Shared,
        )));
        assert_eq!((lease.lease_ms, lease.lock_delay_ms), (0, 0));
    }

    #[test]
    fn rejects_config() {
        assert!(testing::init::<Fifo>("", "").ok);
        assert!(testing::init::<Fifo>(" \n", "").ok);
        assert!(!testing::init::<Fifo>("x = 1", "").ok);
    }

    #[test]
    fn exclusive_head_is_granted_alone() {
        let waiters = vec![
            waiter(1, Mode::Exclusive, 0, 0),
            waiter(2, Mode::Exclusive, 0, 1),
        ];
        let req = testing::choose_next_request("a", vec![], waiters, 1);
        assert_eq!(testing::choose_next::<Fifo>(&req).grant, [0]);
    }

    #[test]
    fn shared_run_is_granted_up_to_capacity_and_never_past_a_writer() {
        let waiters = vec![
            waiter(1, Mode::Shared, 0, 0),
            waiter(2, Mode::Shared, 0, 1),
            waiter(3, Mode::Shared, 0, 2),
            waiter(4, Mode::Exclusive, 0, 3),
            waiter(5, Mode::Shared, 0, 4),
        ];
        let free = testing::choose_next_request("a", vec![], waiters.clone(), 8);
        assert_eq!(testing::choose_next::<Fifo>(&free).grant, [0, 1, 2]);
        let capped =
            testing::choose_next_request("a", vec![holder(9, Mode::Shared)], waiters.clone(), 3);
        assert_eq!(testing::choose_next::<Fifo>(&capped).grant, [0, 1]);
        let full = testing::choose_next_request(
            "a",
            vec![holder(8, Mode::Shared), holder(9, Mode::Shared)],
            waiters.clone(),
            2,
        );
        assert!(testing::choose_next::<Fifo>(&full).grant.is_empty());
        let writer_held =
            testing::choose_next_request("a", vec![holder(9, Mode::Exclusive)], waiters, 8);
        assert!(testing::choose_next::<Fifo>(&writer_held).grant.is_empty());
    }

    #[test]
    fn shared_holders_do_not_admit_a_writer_head() {
        let waiters = vec![
            waiter(4, Mode::Exclusive, 0, 3),
            waiter(5, Mode::Shared, 0, 4),
        ];
        let req = testing::choose_next_request("a", vec![holder(9, Mode::Shared)], waiters, 8);
        assert!(testing::choose_next::<Fifo>(&req).grant.is_empty());
    }
}
