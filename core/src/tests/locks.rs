//! Exclusive and shared locks: contention, queues, handoff, tokens, re-entrancy, idempotency.

use super::{assert_text, check, run};

#[test]
fn try_lock_contention() {
    check(
        "
        open
        open
        acquire 1 a
        acquire 2 a
        ?token a 3
        ?token a 4
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => acquired t3
               + acquired a s1 t3 x
            #4 => rejected WouldBlock { name: "a" }
            ?token a 3 => Some(1)
            ?token a 4 => None
        "#,
    );
}

#[test]
fn queued_fifo_handoff_token_is_release_index() {
    check(
        "
        open
        open
        open
        acquire 1 a
        acquire 2 a wait=5000
        acquire 3 a wait=5000
        ?lock a
        release 1 a 4
        ?lock a
        release 2 a 7
        ?token a 7
        ?token a 8
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
            ?lock a => x/1 holders=[s1:t4] waiters=[0:s2:x 1:s3:x]
            #7 => released t4 @7
               + released a s1 t4 Released
               + acquired a s2 t7 x
            ?lock a => x/1 holders=[s2:t7] waiters=[0:s3:x]
            #8 => released t7 @8
               + released a s2 t7 Released
               + acquired a s3 t8 x
            ?token a 7 => None
            ?token a 8 => Some(3)
        "#,
    );
}

#[test]
fn shared_up_to_max_holders() {
    check(
        "
        open
        open
        open
        open
        acquire 1 r shared max=3
        acquire 2 r shared max=3
        acquire 3 r shared max=3
        acquire 4 r shared max=3
        acquire 4 r shared max=3 wait=1000
        ?lock r
        release 2 r 6
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
            #5 => acquired t5
               + acquired r s1 t5 s
            #6 => acquired t6
               + acquired r s2 t6 s
            #7 => acquired t7
               + acquired r s3 t7 s
            #8 => rejected WouldBlock { name: "r" }
            #9 => queued pos=0
               + queued r s4 pos=0
            ?lock r => s/3 holders=[s1:t5 s2:t6 s3:t7] waiters=[0:s4:s]
            #10 => released t6 @10
               + released r s2 t6 Released
               + acquired r s4 t10 s
            ?lock r => s/3 holders=[s1:t5 s3:t7 s4:t10] waiters=[]
        "#,
    );
}

#[test]
fn readers_and_writers_wait_for_each_other_in_order() {
    // A writer queued behind readers is not overtaken by later readers; when it is done, the
    // readers queued behind it are granted together.
    check(
        "
        open
        open
        open
        open
        acquire 1 rw shared
        acquire 2 rw wait=1000
        acquire 3 rw shared wait=1000
        acquire 4 rw shared
        release 1 rw 5
        release 2 rw 9
        ?lock rw
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
            #5 => acquired t5
               + acquired rw s1 t5 s
            #6 => queued pos=0
               + queued rw s2 pos=0
            #7 => queued pos=1
               + queued rw s3 pos=1
            #8 => rejected WouldBlock { name: "rw" }
            #9 => released t5 @9
               + released rw s1 t5 Released
               + acquired rw s2 t9 x
            #10 => released t9 @10
               + released rw s2 t9 Released
               + acquired rw s3 t10 s
            ?lock rw => s/1024 holders=[s3:t10] waiters=[]
        "#,
    );
}

#[test]
fn mode_conflict_on_capacity_mismatch() {
    check(
        "
        open
        open
        acquire 1 sem shared max=2
        acquire 2 sem shared max=3 wait=1000
        acquire 2 sem shared wait=1000
        acquire 2 sem shared max=2
        acquire 1 sem
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => acquired t3
               + acquired sem s1 t3 s
            #4 => rejected ModeConflict { name: "sem", held: Shared, max_holders: 2 }
            #5 => rejected ModeConflict { name: "sem", held: Shared, max_holders: 2 }
            #6 => acquired t6
               + acquired sem s2 t6 s
            #7 => rejected ModeConflict { name: "sem", held: Shared, max_holders: 2 }
        "#,
    );
}

#[test]
fn capacity_is_free_again_once_no_shared_user_is_left() {
    check(
        "
        open
        open
        acquire 1 sem shared max=2
        release 1 sem 3
        acquire 1 sem
        acquire 2 sem shared max=5 wait=1000
        release 1 sem 5
        ?lock sem
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => acquired t3
               + acquired sem s1 t3 s
            #4 => released t3 @4
               + released sem s1 t3 Released
            #5 => acquired t5
               + acquired sem s1 t5 x
            #6 => queued pos=0
               + queued sem s2 pos=0
            #7 => released t5 @7
               + released sem s1 t5 Released
               + acquired sem s2 t7 s
            ?lock sem => s/5 holders=[s2:t7] waiters=[]
        "#,
    );
}

#[test]
fn reentrant_acquire_returns_the_same_hold() {
    check(
        "
        open
        acquire 1 a
        acquire 1 a wait=1000
        acquire 1 a shared
        release 1 a 2
        acquire 1 a
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => acquired t2
               + acquired a s1 t2 x
            #3 => acquired t2 reentrant
            #4 => rejected ModeConflict { name: "a", held: Exclusive, max_holders: 1 }
            #5 => released t2 @5
               + released a s1 t2 Released
            #6 => acquired t6
               + acquired a s1 t6 x
        "#,
    );
}

#[test]
fn already_queued_gets_its_position_not_a_second_entry() {
    check(
        "
        open
        open
        open
        acquire 1 a
        acquire 2 a wait=1000
        acquire 3 a wait=1000
        acquire 3 a wait=1000
        acquire 3 a shared wait=1000
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
            #7 => queued pos=1
            #8 => rejected ModeConflict { name: "a", held: Exclusive, max_holders: 1 }
            ?lock a => x/1 holders=[s1:t4] waiters=[0:s2:x 1:s3:x]
        "#,
    );
}

#[test]
fn idempotent_acquire_retry() {
    check(
        "
        open
        open
        acquire 1 a req=1
        acquire 1 a req=1
        acquire 2 a wait=1000 req=7
        acquire 2 a wait=1000 req=7
        release 1 a 3 req=2
        acquire 2 a wait=1000 req=7
        acquire 2 b req=8
        acquire 2 b req=8
        ?lock a
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => acquired t3
               + acquired a s1 t3 x
            #4 => acquired t3
            #5 => queued pos=0
               + queued a s2 pos=0
            #6 => queued pos=0
            #7 => released t3 @7
               + released a s1 t3 Released
               + acquired a s2 t7 x
            #8 => acquired t7
            #9 => acquired t9
               + acquired b s2 t9 x
            #10 => acquired t9
            ?lock a => x/1 holders=[s2:t7] waiters=[]
        "#,
    );
}

#[test]
fn idempotent_release_retry() {
    check(
        "
        open
        open
        acquire 1 a
        acquire 2 a wait=1000
        release 1 a 3 req=5
        release 1 a 3 req=5
        acquire 1 a wait=1000
        release 1 a 3 req=6
        ?lock a
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
            #6 => released t3 @5
            #7 => queued pos=0
               + queued a s1 pos=0
            #8 => rejected NotHeld { name: "a", session_id: 1 }
            ?lock a => x/1 holders=[s2:t5] waiters=[0:s1:x]
        "#,
    );
}

#[test]
fn rejected_requests_are_recorded_too() {
    check(
        "
        open
        open
        acquire 1 a
        acquire 2 a req=1
        release 1 a 3
        acquire 2 a req=1
        acquire 2 a req=2
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => acquired t3
               + acquired a s1 t3 x
            #4 => rejected WouldBlock { name: "a" }
            #5 => released t3 @5
               + released a s1 t3 Released
            #6 => rejected WouldBlock { name: "a" }
            #7 => acquired t7
               + acquired a s2 t7 x
        "#,
    );
}

#[test]
fn release_with_stale_token_or_without_hold() {
    check(
        "
        open
        open
        acquire 1 a
        release 1 a 2
        release 1 a 99
        release 2 a 3
        release 2 b 3
        release 1 a 3
        release 1 a 3
        ?token a 3
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => acquired t3
               + acquired a s1 t3 x
            #4 => rejected StaleToken { name: "a", token: 2 }
            #5 => rejected StaleToken { name: "a", token: 99 }
            #6 => rejected NotHeld { name: "a", session_id: 2 }
            #7 => rejected NotHeld { name: "b", session_id: 2 }
            #8 => released t3 @8
               + released a s1 t3 Released
            #9 => rejected NotHeld { name: "a", session_id: 1 }
            ?token a 3 => None
        "#,
    );
}

#[test]
fn cancel_wait_unblocks_readers_behind_a_writer() {
    check(
        "
        open
        open
        open
        acquire 1 rw shared
        acquire 2 rw wait=1000 req=4
        acquire 3 rw shared wait=1000
        cancel 2 rw
        cancel 2 rw
        acquire 2 rw wait=1000 req=4
        ?lock rw
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => opened s3 ttl=10000
               + session-opened s3
            #4 => acquired t4
               + acquired rw s1 t4 s
            #5 => queued pos=0
               + queued rw s2 pos=0
            #6 => queued pos=1
               + queued rw s3 pos=1
            #7 => wait-cancelled
               + left rw s2 Cancelled
               + acquired rw s3 t7 s
            #8 => rejected NotWaiting { name: "rw", session_id: 2 }
            #9 => wait-cancelled
            ?lock rw => s/1024 holders=[s1:t4 s3:t7] waiters=[]
        "#,
    );
}

#[test]
fn new_request_never_jumps_the_queue() {
    // s2 waits for an exclusive hold; a reader arriving while s1 reads must queue behind s2.
    check(
        "
        open
        open
        open
        acquire 1 a shared
        acquire 2 a wait=1000
        acquire 3 a shared
        acquire 3 a shared wait=1000
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
               + acquired a s1 t4 s
            #5 => queued pos=0
               + queued a s2 pos=0
            #6 => rejected WouldBlock { name: "a" }
            #7 => queued pos=1
               + queued a s3 pos=1
            ?lock a => s/1024 holders=[s1:t4] waiters=[0:s2:x 1:s3:s]
        "#,
    );
}

#[test]
fn request_ids_below_the_remembered_window_are_too_old() {
    // 130 recorded requests; the window keeps the newest 128 (3..=130).
    let mut script = String::from("open\n");
    for request_id in 1..=130 {
        script.push_str(&format!("acquire 1 k{request_id} req={request_id}\n"));
    }
    script.push_str(
        "acquire 1 k1 req=1\nacquire 1 k2 req=2\nacquire 1 k3 req=3\nrelease 1 k130 131 req=130\n",
    );
    let out = run(&mut crate::BuiltinFifo, &script);
    let tail: Vec<&str> = out
        .lines()
        .skip_while(|line| !line.starts_with("#131 "))
        .collect();
    assert_text(
        &tail.join("\n"),
        r#"
            #131 => acquired t131
               + acquired k130 s1 t131 x
            #132 => rejected RequestTooOld { request_id: 1 }
            #133 => rejected RequestTooOld { request_id: 2 }
            #134 => acquired t4
            #135 => acquired t131
        "#,
    );
}

#[test]
fn election_value_travels_with_the_hold_and_only_the_holder_proclaims() {
    check(
        "
        open
        open
        acquire 1 leader value=alpha
        acquire 2 leader wait=1000 value=beta
        proclaim 1 leader 3 alpha2
        proclaim 2 leader 3 nope
        proclaim 1 leader 99 stale
        ?lock leader
        release 1 leader 3
        ?lock leader
        proclaim 2 leader 8 beta2
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => acquired t3
               + acquired leader s1 t3 x value=alpha
            #4 => queued pos=0
               + queued leader s2 pos=0
            #5 => proclaimed t3
               + proclaimed leader s1 t3 value=alpha2
            #6 => rejected NotHeld { name: "leader", session_id: 2 }
            #7 => rejected StaleToken { name: "leader", token: 99 }
            ?lock leader => x/1 holders=[s1:t3=alpha2] waiters=[0:s2:x]
            #8 => released t3 @8
               + released leader s1 t3 Released
               + acquired leader s2 t8 x value=beta
            ?lock leader => x/1 holders=[s2:t8=beta] waiters=[]
            #9 => proclaimed t8
               + proclaimed leader s2 t8 value=beta2
        "#,
    );
}

#[test]
fn revoke_ends_anyones_hold_and_hands_the_lock_over() {
    check(
        "
        open
        open
        acquire 1 a
        acquire 2 a wait=5000
        revoke a 3
        revoke a 3
        revoke a 99
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
               + released a s1 t3 Revoked
               + acquired a s2 t5 x
            #6 => rejected StaleToken { name: "a", token: 3 }
            #7 => rejected StaleToken { name: "a", token: 99 }
        "#,
    );
}
