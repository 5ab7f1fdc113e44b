//! Policies: leases, lock-delay, custom handoff order, admission, and hostile answers. Whatever
//! a policy answers, the harness checks the invariants (mutual exclusion first) after every
//! entry.

use super::{check, check_with};
use crate::{AdmitDecision, AdmitInput, BuiltinFifo, LeaseDecision, NextInput, PolicyRuntime};

/// FIFO with a fixed lease and lock-delay for every grant.
struct Leasing {
    lease_ms: u64,
    lock_delay_ms: u64,
}

impl PolicyRuntime for Leasing {
    fn admit(&mut self, _input: &AdmitInput<'_>) -> AdmitDecision {
        AdmitDecision::Admit
    }
    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        BuiltinFifo.choose_next(input)
    }
    fn lease_for(&mut self, _input: &AdmitInput<'_>) -> LeaseDecision {
        LeaseDecision {
            lease_ms: self.lease_ms,
            lock_delay_ms: self.lock_delay_ms,
        }
    }
}

/// Answers `choose_next` with whatever the function says; admits everything; wild leases.
struct Hostile {
    choose: fn(&NextInput<'_>) -> Vec<usize>,
    lease: LeaseDecision,
}

impl PolicyRuntime for Hostile {
    fn admit(&mut self, _input: &AdmitInput<'_>) -> AdmitDecision {
        AdmitDecision::Admit
    }
    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        (self.choose)(input)
    }
    fn lease_for(&mut self, _input: &AdmitInput<'_>) -> LeaseDecision {
        self.lease
    }
}

fn hostile(choose: fn(&NextInput<'_>) -> Vec<usize>) -> Hostile {
    Hostile {
        choose,
        lease: LeaseDecision::default(),
    }
}

/// Grants the single highest-priority waiter that fits (earliest on ties); denies principal
/// "mallory".
struct PriorityAndDeny;

impl PolicyRuntime for PriorityAndDeny {
    fn admit(&mut self, input: &AdmitInput<'_>) -> AdmitDecision {
        if input.principal == "mallory" {
            return AdmitDecision::Deny {
                reason: "no mallory".to_string(),
            };
        }
        AdmitDecision::Admit
    }
    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        let exclusive_held = input
            .holders
            .iter()
            .any(|holder| holder.mode == crate::Mode::Exclusive);
        let best = input
            .waiters
            .iter()
            .enumerate()
            .filter(|(_, waiter)| {
                !exclusive_held && (input.holders.is_empty() || waiter.mode == crate::Mode::Shared)
            })
            .max_by_key(|(index, waiter)| (waiter.priority, std::cmp::Reverse(*index)));
        best.map(|(index, _)| vec![index]).unwrap_or_default()
    }
    fn lease_for(&mut self, _input: &AdmitInput<'_>) -> LeaseDecision {
        LeaseDecision::default()
    }
}

#[test]
fn lease_expiry_revokes_the_hold_and_hands_off() {
    check_with(
        &mut Leasing {
            lease_ms: 1000,
            lock_delay_ms: 0,
        },
        "
        @0 open
        open
        acquire 1 a
        acquire 2 a wait=5000
        ?lock a
        acquire 1 a
        @999 tick 1 2
        @1000 tick 1 2
        ?token a 3
        ?token a 7
        release 1 a 3
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => acquired t3 lease=1000
               + acquired a s1 t3 x lease=1000
            #4 => queued pos=0
               + queued a s2 pos=0
            ?lock a => x/1 holders=[s1:t3 lease-until=1000] waiters=[0:s2:x]
            #5 => acquired t3 lease=1000 reentrant
            #6 => ok
            #7 => ok
               + released a s1 t3 LeaseExpired
               + acquired a s2 t7 x lease=1000
            ?token a 3 => None
            ?token a 7 => Some(2)
            #8 => rejected NotHeld { name: "a", session_id: 1 }
        "#,
    );
}

#[test]
fn lock_delay_holds_the_lock_back_after_session_expiry() {
    check_with(
        &mut Leasing {
            lease_ms: 0,
            lock_delay_ms: 2000,
        },
        "
        @0 open ttl=3000
        open ttl=60000
        open ttl=60000
        acquire 1 a
        acquire 2 a wait=10000
        @3000 tick 2 3
        ?lock a
        acquire 3 a
        acquire 3 a wait=10000
        ?next
        @4999 tick 2 3
        @5000 tick 2 3
        ?lock a
        ",
        r#"
            #1 => opened s1 ttl=3000
               + session-opened s1
            #2 => opened s2 ttl=60000
               + session-opened s2
            #3 => opened s3 ttl=60000
               + session-opened s3
            #4 => acquired t4
               + acquired a s1 t4 x
            #5 => queued pos=0
               + queued a s2 pos=0
            #6 => ok
               + released a s1 t4 SessionExpired
               + session-expired s1
            ?lock a => x/1 holders=[] waiters=[0:s2:x] delayed-until=5000
            #7 => rejected WouldBlock { name: "a" }
            #8 => queued pos=1
               + queued a s3 pos=1
            ?next => Some(5000)
            #9 => ok
            #10 => ok
               + acquired a s2 t10 x
            ?lock a => x/1 holders=[s2:t10] waiters=[0:s3:x]
        "#,
    );
}

#[test]
fn lock_delay_ends_at_the_first_entry_at_or_after_it_whatever_the_command() {
    check_with(
        &mut Leasing {
            lease_ms: 0,
            lock_delay_ms: 2000,
        },
        "
        @0 open ttl=3000
        open ttl=60000
        acquire 1 a
        @3000 tick 2
        ?lock a
        acquire 2 a
        @5500 acquire 2 a
        ",
        r#"
            #1 => opened s1 ttl=3000
               + session-opened s1
            #2 => opened s2 ttl=60000
               + session-opened s2
            #3 => acquired t3
               + acquired a s1 t3 x
            #4 => ok
               + released a s1 t3 SessionExpired
               + session-expired s1
            ?lock a => x/1 holders=[] waiters=[] delayed-until=5000
            #5 => rejected WouldBlock { name: "a" }
            #6 => acquired t6
               + acquired a s2 t6 x
        "#,
    );
}

#[test]
fn lock_delay_keeps_an_otherwise_empty_lock_until_it_ends() {
    check_with(
        &mut Leasing {
            lease_ms: 0,
            lock_delay_ms: 2000,
        },
        "
        @0 open ttl=3000
        acquire 1 a
        @3000 tick
        ?lock a
        @5000 noop
        ?lock a
        ",
        r#"
            #1 => opened s1 ttl=3000
               + session-opened s1
            #2 => acquired t2
               + acquired a s1 t2 x
            #3 => ok
               + released a s1 t2 SessionExpired
               + session-expired s1
            ?lock a => x/1 holders=[] waiters=[] delayed-until=5000
            #4 => ok
            ?lock a => none
        "#,
    );
}

#[test]
fn no_lock_delay_after_release_or_close() {
    check_with(
        &mut Leasing {
            lease_ms: 0,
            lock_delay_ms: 2000,
        },
        "
        open
        open
        open
        acquire 1 a
        acquire 2 a wait=1000
        acquire 3 a wait=1000
        release 1 a 4
        close 2
        ?lock a
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => opened s3 ttl=10000
               + session-opened s3
            #4 => acquired t4
               + acquired a s1 t4 x
            #5 => queued pos=0
               + queued a s2 pos=0
            #6 => queued pos=1
               + queued a s3 pos=1
            #7 => released t4 @7
               + released a s1 t4 Released
               + acquired a s2 t7 x
            #8 => closed s2
               + released a s2 t7 SessionClosed
               + session-closed s2
               + acquired a s3 t8 x
            ?lock a => x/1 holders=[s3:t8] waiters=[]
        "#,
    );
}

#[test]
fn out_of_range_choice_falls_back_to_fifo() {
    check_with(
        &mut hostile(|_| vec![7, usize::MAX]),
        "
        open
        open
        open
        acquire 1 a
        acquire 2 a wait=1000
        acquire 3 a wait=1000
        release 1 a 4
        ?faults
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => opened s3 ttl=10000
               + session-opened s3
            #4 => acquired t4
               + acquired a s1 t4 x
            #5 => queued pos=0
               + queued a s2 pos=0
            #6 => queued pos=1
               + queued a s3 pos=1
            #7 => released t4 @7
               + released a s1 t4 Released
               + acquired a s2 t7 x
            ?faults => 1
        "#,
    );
}

#[test]
fn duplicate_or_incompatible_choice_falls_back_to_fifo() {
    check_with(
        &mut hostile(|input| {
            if input.waiters.len() > 1 {
                vec![1, 1]
            } else {
                vec![0, 0]
            }
        }),
        "
        open
        open
        open
        acquire 1 r shared max=2
        acquire 2 r wait=1000
        acquire 3 r shared max=2 wait=1000
        release 1 r 4
        release 2 r 7
        ?faults
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => opened s3 ttl=10000
               + session-opened s3
            #4 => acquired t4
               + acquired r s1 t4 s
            #5 => queued pos=0
               + queued r s2 pos=0
            #6 => queued pos=1
               + queued r s3 pos=1
            #7 => released t4 @7
               + released r s1 t4 Released
               + acquired r s2 t7 x
            #8 => released t7 @8
               + released r s2 t7 Released
               + acquired r s3 t8 s
            ?faults => 2
        "#,
    );
    // Two exclusive waiters at once would break mutual exclusion.
    check_with(
        &mut hostile(|input| (0..input.waiters.len()).collect()),
        "
        open
        open
        open
        acquire 1 a
        acquire 2 a wait=1000
        acquire 3 a wait=1000
        release 1 a 4
        ?faults
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => opened s3 ttl=10000
               + session-opened s3
            #4 => acquired t4
               + acquired a s1 t4 x
            #5 => queued pos=0
               + queued a s2 pos=0
            #6 => queued pos=1
               + queued a s3 pos=1
            #7 => released t4 @7
               + released a s1 t4 Released
               + acquired a s2 t7 x
            ?faults => 1
        "#,
    );
}

#[test]
fn empty_choice_on_a_free_lock_falls_back_to_fifo() {
    check_with(
        &mut hostile(|_| Vec::new()),
        "
        open
        open
        acquire 1 a
        acquire 2 a wait=1000
        release 1 a 3
        ?faults
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => acquired t3
               + acquired a s1 t3 x
            #4 => queued pos=0
               + queued a s2 pos=0
            #5 => released t3 @5
               + released a s1 t3 Released
               + acquired a s2 t5 x
            ?faults => 1
        "#,
    );
}

#[test]
fn out_of_range_lease_and_lock_delay_are_clamped() {
    check_with(
        &mut Hostile {
            choose: |_| Vec::new(),
            lease: LeaseDecision {
                lease_ms: u64::MAX,
                lock_delay_ms: u64::MAX,
            },
        },
        "
        @0 open ttl=3000
        acquire 1 a
        ?lock a
        @3000 tick
        ?lock a
        ?faults
        ",
        r#"
            #1 => opened s1 ttl=3000
               + session-opened s1
            #2 => acquired t2 lease=86400000
               + acquired a s1 t2 x lease=86400000
            ?lock a => x/1 holders=[s1:t2 lease-until=86400000] waiters=[]
            #3 => ok
               + released a s1 t2 SessionExpired
               + session-expired s1
            ?lock a => x/1 holders=[] waiters=[] delayed-until=63000
            ?faults => 1
        "#,
    );
}

#[test]
fn valid_policy_choice_is_honoured() {
    check_with(
        &mut PriorityAndDeny,
        "
        open
        open
        open
        acquire 1 a
        acquire 2 a wait=1000 prio=1
        acquire 3 a wait=1000 prio=5
        release 1 a 4
        ?lock a
        ?faults
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => opened s3 ttl=10000
               + session-opened s3
            #4 => acquired t4
               + acquired a s1 t4 x
            #5 => queued pos=0
               + queued a s2 pos=0
            #6 => queued pos=1
               + queued a s3 pos=1
            #7 => released t4 @7
               + released a s1 t4 Released
               + acquired a s3 t7 x
            ?lock a => x/1 holders=[s3:t7] waiters=[0:s2:x]
            ?faults => 0
        "#,
    );
}

#[test]
fn policy_may_deny_admission() {
    check_with(
        &mut PriorityAndDeny,
        "
        open principal=mallory
        acquire 1 a req=1
        acquire 1 a req=1
        ?lock a
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => rejected PolicyDenied { reason: "no mallory", policy: "", version: 0, prefix: "" }
            #3 => rejected PolicyDenied { reason: "no mallory", policy: "", version: 0, prefix: "" }
            ?lock a => none
        "#,
    );
}

#[test]
fn builtin_fifo_grants_consecutive_readers_up_to_capacity() {
    check(
        "
        open
        open
        open
        open
        open
        acquire 1 r
        acquire 2 r shared max=2 wait=1000
        acquire 3 r shared max=2 wait=1000
        acquire 4 r shared max=2 wait=1000
        acquire 5 r wait=1000
        release 1 r 6
        ?lock r
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => opened s3 ttl=10000
               + session-opened s3
            #4 => opened s4 ttl=10000
               + session-opened s4
            #5 => opened s5 ttl=10000
               + session-opened s5
            #6 => acquired t6
               + acquired r s1 t6 x
            #7 => queued pos=0
               + queued r s2 pos=0
            #8 => queued pos=1
               + queued r s3 pos=1
            #9 => queued pos=2
               + queued r s4 pos=2
            #10 => queued pos=3
               + queued r s5 pos=3
            #11 => released t6 @11
               + released r s1 t6 Released
               + acquired r s2 t11 s
               + acquired r s3 t11 s
            ?lock r => s/2 holders=[s2:t11 s3:t11] waiters=[0:s4:s 1:s5:x]
        "#,
    );
}

#[test]
fn long_deny_reasons_are_truncated_on_a_char_boundary() {
    let reason = format!("mallory: {}", "é".repeat(200));
    let truncated = crate::policy::truncate_reason(reason.clone());
    assert_eq!(truncated.len(), 255);
    assert!(reason.starts_with(&truncated));
    assert_eq!(crate::policy::truncate_reason("short".to_string()), "short");
}
